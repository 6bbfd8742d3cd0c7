//! Records the commit the binary is built from, for `emberbase --version`, and rebuilds when the
//! embedded console changes.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    // Not `EMBERBASE_*`: cargo also sets this variable for `cargo run` and `cargo test`, and
    // `serve` reads every `EMBERBASE_*` variable as configuration.
    println!("cargo:rustc-env=EB_BUILD_COMMIT={commit}");
    // A new commit moves HEAD or the branch it points at; both are files under .git.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(reference) = head.strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{}", reference.trim());
        }
    }
    println!("cargo:rerun-if-changed=.git/packed-refs");
    // The admin console's build, which `api/console.rs` embeds.
    println!("cargo:rerun-if-changed=console/dist");
}
