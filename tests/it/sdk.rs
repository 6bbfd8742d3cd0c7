//! The TypeScript SDK (`sdk/typescript`): its generated layer matches `sdk/openapi.json`, it
//! builds, and its own tests (Node's test runner) pass against the binary this suite built,
//! including `examples/todo-web` in headless Chromium where one is installed.

use std::path::Path;
use std::process::Command;

fn npm(sdk: &Path, args: &[&str]) -> std::process::Output {
    Command::new("npm")
        .args(args)
        .current_dir(sdk)
        .output()
        .unwrap_or_else(|e| panic!("npm {args:?}: {e}"))
}

#[track_caller]
fn check(what: &str, out: &std::process::Output) {
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed (output above)");
}

#[test]
fn typescript_sdk_builds_and_passes_its_tests() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/typescript");
    if let Err(e) = crate::common::npm_ci(&sdk, ".bin/tsc") {
        crate::common::skip(&format!("the TypeScript SDK needs npm: {e}"));
        return;
    }
    check(
        "npm run check:generated",
        &npm(&sdk, &["run", "check:generated"]),
    );
    check("npm run build", &npm(&sdk, &["run", "build"]));
    // The sign-in provider test starts the providers of tests/oidc (npm packages of their own).
    let oidc = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if let Err(e) = crate::common::npm_ci(&oidc, "oidc-provider") {
        panic!("{e}");
    }
    let echo = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(echo.path(), crate::functions::echo()).unwrap();
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&sdk)
        .env("SDK_TEST_BIN", env!("CARGO_BIN_EXE_emberbase"))
        .env("SDK_TEST_ECHO_WASM", echo.path())
        .env("SDK_TEST_OIDC_DIR", &oidc)
        .output()
        .unwrap();
    check("npm test", &out);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("# fail 0"), "{report}");
    for line in report.lines() {
        if let Some(reason) = line.trim().strip_prefix("SKIPPED: ") {
            crate::common::skip(reason);
        }
    }
}
