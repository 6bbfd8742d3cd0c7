//! The admin console (`console/`): the build the binary embeds is the one its source makes,
//! and its browser test (headless Chromium through playwright-core) passes against the binary
//! this suite built, leaving a screenshot of each page in `target/screenshots/console-*.png`.

use crate::common::{npm_ci, skip};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Installs what the console builds with: its own packages and the SDK's, whose source it
/// bundles. `None` (after saying SKIPPED) without npm.
fn installed() -> Option<PathBuf> {
    let console = root().join("console");
    for (dir, marker) in [
        (root().join("sdk/typescript"), ".bin/tsc"),
        (console.clone(), ".bin/vite"),
    ] {
        if let Err(e) = npm_ci(&dir, marker) {
            skip(&format!("the console needs npm: {e}"));
            return None;
        }
    }
    Some(console)
}

/// Every file under `dir`, by its path inside it.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                found.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    found
}

#[test]
fn the_embedded_console_is_what_its_source_builds() {
    let Some(console) = installed() else { return };
    let out = tempfile::tempdir().unwrap();
    let built = Command::new("npm")
        .args(["run", "build", "--", "--outDir"])
        .arg(out.path())
        .arg("--emptyOutDir")
        .current_dir(&console)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the console does not build:\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let committed = files(&console.join("dist"));
    let fresh = files(out.path());
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert!(
        committed == fresh,
        "console/dist is not the build of console/ (committed {:?}, built {:?}): run \
         `npm ci && npm run build` in console/ and commit dist/",
        names(&committed),
        names(&fresh)
    );
}

#[test]
fn the_console_works_in_a_browser() {
    let Some(console) = installed() else { return };
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&console)
        .env("SDK_TEST_BIN", env!("CARGO_BIN_EXE_emberbase"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && report.contains("# fail 0"),
        "the console's browser test failed (output above)"
    );
    for line in report.lines() {
        if let Some(reason) = line.trim().strip_prefix("SKIPPED: ") {
            skip(reason);
        }
    }
}
