//! The OpenAPI document tells the truth: Schemathesis (pinned in `.ci/run`) fuzzes every
//! operation but the SSE stream against the real binary, as a signed-in user and then with the
//! service key, and any failure of its checks fails the suite.

use crate::common::{agent, send, Spawned};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Schemathesis: `$SCHEMATHESIS`, the virtualenv `.ci/run` makes under `target/`, or `PATH`.
fn schemathesis() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("SCHEMATHESIS").map(PathBuf::from),
        Some(root.join("target/schemathesis/bin/schemathesis")),
        Some(PathBuf::from("schemathesis")),
    ];
    candidates.into_iter().flatten().find(|path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// One run with `token`; the report's tail when it fails.
fn run(bin: &PathBuf, url: &str, token: &str, report: &std::path::Path) -> Result<(), String> {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let mut child = Command::new(bin)
        .arg("--config-file")
        .arg(config)
        .arg("--no-color")
        .args(["run", &format!("{url}/v1/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection",
        ])
        .args(["--seed", "20261129", "--max-examples", "50", "--request-timeout", "10"])
        // One worker: Hypothesis's source caches are not thread-safe, and two workers now and
        // then end a run with an internal error ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        // The two event streams: they end only when cut, and each event is a JSON object that
        // Schemathesis checks against the `text/event-stream` body's string schema.
        .args(["--exclude-path", "/v1/realtime"])
        .args(["--exclude-path", "/v1/realtime/connection"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .current_dir(report.parent().unwrap_or(std::path::Path::new(".")))
        .stdout(std::fs::File::create(report).map_err(|e| e.to_string())?)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    // The whole run is capped, as the seed and example count already bound it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("Schemathesis ran past its 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(report).unwrap_or_default();
    if status.success() {
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("generated"))
            .unwrap_or("");
        println!("schemathesis: {}", summary.trim());
        Ok(())
    } else {
        let tail: Vec<&str> = text.lines().rev().take(400).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

#[test]
fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let Some(bin) = schemathesis() else {
        crate::common::skip("Schemathesis is not installed (.ci/run installs it)");
        return;
    };
    let env = [
        ("EMBERBASE_AUTH__ARGON2_MEMORY_KIB", "1024"),
        ("EMBERBASE_AUTH__ARGON2_ITERATIONS", "1"),
    ];
    let srv = Spawned::start(&env, None).expect("no memory limit was asked for");
    let url = format!("http://{}", srv.addr);
    let body = json!({"email": "fuzz@example.com", "password": "correct horse battery"});
    let req = agent()
        .post(&format!("{url}/v1/auth/signup"))
        .set("Content-Type", "application/json");
    let session = send(req, Some(body.to_string().as_bytes()))
        .expect(201)
        .json;
    let user = session["access_token"].as_str().unwrap().to_string();
    // The user first: the service key's run may disable or delete users, and rotate keys.
    for (who, token) in [("user", user.as_str()), ("service key", srv.key.as_str())] {
        let report = srv
            .dir
            .path()
            .join(format!("schemathesis-{}.txt", who.replace(' ', "-")));
        if let Err(tail) = run(&bin, &url, token, &report) {
            panic!("Schemathesis failed as the {who}:\n{tail}");
        }
    }
}
