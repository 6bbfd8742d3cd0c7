//! `emberbase functions new`: a project made in a folder outside the repository builds and
//! deploys with the commands its README prints, with nothing from the checkout.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The first `sh` block of a README.
fn readme_commands(dir: &Path) -> String {
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has an sh block")
        .to_string()
}

/// Makes `name` in a new temporary folder; returns the folder (kept alive by the guard).
fn new_project(name: &str, lang: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(["functions", "new", name, "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It prints the README's commands.
    assert!(stdout.contains(&readme_commands(&dir)), "{stdout}");
    (parent, dir)
}

/// Runs the README's commands in `dir` against `srv`; returns what the last one printed.
fn run_readme(srv: &TestServer, dir: &Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(readme_commands(dir))
        .current_dir(dir)
        .env("EB_URL", format!("http://{}", srv.addr))
        .env("EB_SERVICE_KEY", &srv.key)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The greeting the README's last command got, and the function's log line.
fn check_deployed(srv: &TestServer, name: &str, output: &str) {
    let last = output.lines().last().unwrap_or_default();
    let answer: Value = serde_json::from_str(last).unwrap_or_else(|_| panic!("{output}"));
    assert_eq!(answer["greeting"], "hello, Ada");
    assert_eq!(answer["caller"], "anonymous");
    // The invocation's record is written just after the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let run = loop {
        let runs = srv
            .get(&format!("/v1/admin/functions/{name}/invocations"))
            .expect(200)
            .json;
        if runs["items"][0].is_object() {
            break runs["items"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no invocation record");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(run["status"], "ok");
    assert_eq!(run["logs"][0]["message"], "greeting Ada");
}

#[test]
fn an_assemblyscript_project_made_anywhere_builds_and_deploys() {
    if let Err(e) = Command::new("npm").arg("--version").output() {
        skip(&format!("AssemblyScript projects need npm ({e})"));
        return;
    }
    let (_guard, dir) = new_project("greet-as", "assemblyscript");
    assert!(dir.join("vendor/emberbase-functions/index.ts").exists());
    let srv = TestServer::start();
    let output = run_readme(&srv, &dir);
    check_deployed(&srv, "greet-as", &output);
}

#[test]
fn a_rust_project_made_anywhere_builds_and_deploys() {
    if !wasm32_target() {
        return;
    }
    let (_guard, dir) = new_project("greet-rs", "rust");
    let srv = TestServer::start();
    let output = {
        let _build = guest_build();
        run_readme(&srv, &dir)
    };
    check_deployed(&srv, "greet-rs", &output);
}

#[test]
fn a_javascript_project_made_anywhere_deploys() {
    let (_guard, dir) = new_project("greet-js", "javascript");
    assert!(dir.join("index.js").exists());
    let srv = TestServer::start();
    let output = run_readme(&srv, &dir);
    check_deployed(&srv, "greet-js", &output);
}

#[test]
fn a_project_is_not_made_over_existing_files_or_with_a_bad_name() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(parent.path().join("keep.txt"), "mine").unwrap();
    let run = |name: &str, dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_emberbase"))
            .args(["functions", "new", name, "--lang", "rust", "--dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = run("fine", parent.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(parent.path().join("keep.txt")).unwrap(),
        "mine"
    );
    let out = run("Bad Name", &parent.path().join("new"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid name"));
    assert!(!parent.path().join("new").exists());
}
