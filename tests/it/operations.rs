//! Health, metrics, OpenAPI, request ids, CORS, config, service key and default rules.

use crate::common::{send, TestServer};
use serde_json::json;

#[test]
fn health_answers_without_auth() {
    let srv = TestServer::start();
    let resp = crate::common::send(srv.anon("GET", "/v1/health"), None).expect(200);
    assert_eq!(resp.json["status"], "ok");
    assert_eq!(resp.json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(resp.json["storage"], json!({"backend": "sled", "ok": true}));
    assert_eq!(resp.header("x-request-id").map(str::len), Some(26));
    let with_id = send(
        srv.anon("GET", "/v1/health").set("X-Request-Id", "abc-123"),
        None,
    );
    assert_eq!(with_id.header("x-request-id"), Some("abc-123"));
}

#[test]
fn metrics_need_an_admin_unless_public() {
    let srv = TestServer::start();
    srv.post("/v1/collections/m/docs", &json!({})).expect(201);
    send(srv.anon("GET", "/metrics"), None).expect_error(401, "unauthenticated");
    send(
        srv.anon("GET", "/metrics")
            .set("Authorization", "Bearer wrong"),
        None,
    )
    .expect_error(401, "unauthenticated");
    srv.get("/v1/files/pictures/2026/cat.png").expect(404);
    let text = srv.get("/metrics").expect(200).text;
    // Routes are named by their documented patterns; others (like this one) by actix's.
    for series in [
        "{method=\"POST\",route=\"/v1/collections/{collection}/docs\",status=\"201\"} 1",
        "{method=\"GET\",route=\"/v1/files/{bucket}/{path}\",status=\"404\"} 1",
        "{method=\"GET\",route=\"/metrics\",status=\"401\"} 2",
    ] {
        let line = format!("emberbase_http_requests_total{series}");
        assert!(text.contains(&line), "no {line}: {text}");
    }
    assert!(text.contains("emberbase_http_request_duration_seconds_bucket"));
    assert!(text.contains("emberbase_store_ops_total{op=\"create\"} 1"));
    assert!(text.contains("emberbase_store_commit_group_size_count"));
    // The process's own, under their standard names, with plausible values.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {text}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("emberbase_store_bytes") > 0.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_threads") >= 2.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);

    let public = TestServer::start_with(|c| c.metrics.public = true);
    send(public.anon("GET", "/metrics"), None).expect(200);
}

/// The committed `sdk/openapi.json` is what the code generates; regenerate it with
/// `cargo run -- openapi > sdk/openapi.json`.
#[test]
fn committed_openapi_is_current() {
    let generated = emberbase::openapi().to_pretty_json().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed.trim() == generated.trim(),
        "sdk/openapi.json is stale: run `cargo run -- openapi > sdk/openapi.json`"
    );
    let srv = TestServer::start();
    let served = send(srv.anon("GET", "/v1/openapi.json"), None).expect(200);
    assert_eq!(served.text.trim(), generated.trim());
    assert!(served.json["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/collections/{collection}/docs",
        "/v1/batch",
        "/v1/admin/collections/{collection}",
        "/v1/health",
    ] {
        assert!(served.json["paths"][path].is_object(), "{path} documented");
    }
    assert!(served.json["components"]["securitySchemes"]["bearer"].is_object());
    // Generated clients name methods by operation id: two alike would collide.
    let mut ids: Vec<&str> = served.json["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids are unique");
    send(srv.anon("GET", "/docs/"), None).expect(200);
    // ureq follows the redirect from /docs to /docs/.
    let ui = send(srv.anon("GET", "/docs"), None).expect(200);
    assert!(ui.text.to_lowercase().contains("swagger"), "{}", ui.text);
}

#[test]
fn cors_allows_any_origin_by_default_and_narrows_when_configured() {
    let srv = TestServer::start();
    let preflight = |srv: &TestServer, origin: &str| {
        send(
            srv.anon("OPTIONS", "/v1/collections/c/docs")
                .set("Origin", origin)
                .set("Access-Control-Request-Method", "POST")
                .set(
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                ),
            None,
        )
    };
    let open = preflight(&srv, "https://app.example");
    assert_eq!(open.status, 200);
    assert!(open.header("access-control-allow-origin").is_some());
    let narrow =
        TestServer::start_with(|c| c.http.cors_origins = vec!["https://good.example".into()]);
    assert_eq!(preflight(&narrow, "https://good.example").status, 200);
    let refused = preflight(&narrow, "https://evil.example");
    assert!(refused.header("access-control-allow-origin").is_none());
}

#[cfg(unix)]
#[test]
fn service_key_file_is_owner_only_and_stable() {
    use std::os::unix::fs::PermissionsExt;
    let srv = TestServer::start();
    let path = srv.dir.path().join("service_key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(srv.key.starts_with("ebsk_") && srv.key.len() > 40);
    // A restart keeps the key: the old one still acts as an admin.
    let key = srv.key.clone();
    let srv = TestServer::start_in(srv.stop(), |_| {});
    let status = srv
        .anon("GET", "/v1/admin/collections")
        .set("Authorization", &format!("Bearer {key}"))
        .call()
        .map(|r| r.status())
        .unwrap_or_else(|e| match e {
            ureq::Error::Status(code, _) => code,
            other => panic!("{other}"),
        });
    assert_eq!(status, 200);
}

#[test]
fn default_rules_refuse_anonymous_callers() {
    let srv = TestServer::start();
    // The private defaults refuse an anonymous list at once (the rule denies it whatever the
    // documents hold), as a GET of any document.
    let doc = srv
        .post("/v1/collections/posts/docs", &json!({"t": 1}))
        .expect(201)
        .json;
    let path = format!("/v1/collections/posts/docs/{}", doc["id"].as_str().unwrap());
    let anon = |method: &str, path: &str, body: Option<&str>| {
        let mut req = srv.anon(method, path);
        if body.is_some() {
            req = req.set("Content-Type", "application/json");
        }
        send(req, body.map(str::as_bytes))
    };
    anon("GET", &path, None).expect_error(403, "forbidden");
    anon("GET", "/v1/collections/posts/docs/missing", None).expect_error(403, "forbidden");
    anon("GET", "/v1/collections/posts/docs", None).expect_error(403, "forbidden");
    anon("POST", "/v1/collections/posts/docs", Some("{}")).expect_error(403, "forbidden");
    anon("PATCH", &path, Some("{}")).expect_error(403, "forbidden");
    anon("DELETE", &path, None).expect_error(403, "forbidden");
    // Admin routes want a token: without one, 401.
    anon("PUT", "/v1/admin/collections/posts", Some("{}")).expect_error(401, "unauthenticated");
    anon("GET", "/v1/admin/collections", None).expect_error(401, "unauthenticated");
    let err = anon(
        "POST",
        "/v1/batch",
        Some(r#"{"ops": [{"op": "create", "collection": "posts", "data": {}}]}"#),
    )
    .expect_error(403, "forbidden");
    assert_eq!(err.json["error"]["details"]["op"], 0);
    let bad_token = send(
        srv.anon("GET", &path).set("Authorization", "Bearer forged"),
        None,
    );
    bad_token.expect_error(401, "unauthenticated");
    send(
        srv.anon("GET", &path).set("Authorization", "Basic abc"),
        None,
    )
    .expect_error(401, "unauthenticated");

    // A public rule lets everyone in; a rule on the document filters lists.
    srv.put(
        "/v1/admin/collections/posts",
        &json!({"rules": {"read": "doc.data.public == true", "create": ""}}),
    )
    .expect(200);
    srv.post(
        "/v1/collections/posts/docs",
        &json!({"public": true, "t": 2}),
    )
    .expect(201);
    let listed = anon("GET", "/v1/collections/posts/docs", None)
        .expect(200)
        .json;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["data"]["t"], 2);
    anon("GET", &path, None).expect_error(403, "forbidden");
    let created = anon(
        "POST",
        "/v1/collections/posts/docs",
        Some(r#"{"public": true}"#),
    )
    .expect(201)
    .json;
    assert_eq!(created["owner"], serde_json::Value::Null);
    // update and delete are null in that config: admins only.
    let own = format!(
        "/v1/collections/posts/docs/{}",
        created["id"].as_str().unwrap()
    );
    anon("DELETE", &own, None).expect_error(403, "forbidden");
    srv.delete(&own).expect(204);
}

#[test]
fn config_layers_and_unknown_keys() {
    use emberbase::config::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eb.toml");
    std::fs::write(
        &file,
        "[server]\nbind = \"127.0.0.1:9999\"\n[limits]\nmax_batch_ops = 7\n",
    )
    .unwrap();
    let (config, loaded) = Config::load(Some(&file), &Overrides::default()).unwrap();
    assert_eq!(loaded.as_deref(), Some(file.as_path()));
    assert_eq!(config.server.bind, "127.0.0.1:9999");
    assert_eq!(config.limits.max_batch_ops, 7);
    assert_eq!(config.limits.max_json_depth, 64);
    let overrides = Overrides {
        bind: Some("127.0.0.1:1".into()),
        data_dir: Some("/tmp/x".into()),
    };
    let (config, _) = Config::load(Some(&file), &overrides).unwrap();
    assert_eq!(config.server.bind, "127.0.0.1:1");
    assert_eq!(config.server.data_dir, std::path::PathBuf::from("/tmp/x"));

    std::fs::write(&file, "[server]\nbnd = \"x\"\n").unwrap();
    let err = Config::load(Some(&file), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bnd"), "{err}");
    std::fs::write(&file, "[rules]\nread = \"auth ==\"\n").unwrap();
    let err = Config::load(Some(&file), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules.read"), "{err}");
    let missing = dir.path().join("missing.toml");
    assert!(Config::load(Some(&missing), &Overrides::default()).is_err());

    // The shipped file parses and matches the built-in defaults.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/emberbase.toml");
    let (config, _) =
        Config::load(Some(std::path::Path::new(shipped)), &Overrides::default()).unwrap();
    let defaults = Config::default();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
}

/// The environment layer, through the real binary (the process environment is global, so it
/// is not changed inside this test process).
#[test]
fn environment_overrides_and_unknown_variables() {
    let bin = env!("CARGO_BIN_EXE_emberbase");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("EMBERBASE_SERVER__BNID", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bnid"), "{stderr}");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("serve") && help.contains("openapi") && help.contains("EMBERBASE_"),
        "{help}"
    );
}

/// Request logs in JSON format through the real binary: every line is JSON, each request is
/// logged with its path, and neither the bearer token nor an `access_token` query parameter
/// ever reaches the log.
#[cfg(unix)]
#[test]
fn json_request_logs_never_contain_tokens() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("EMBERBASE_LOG__FORMAT", "json")
        .env("EMBERBASE_LOG__LEVEL", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = loop {
        let line = lines.next().expect("server exited").unwrap();
        let entry: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let message = entry["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        log.push(line);
        if let Some(addr) = message.strip_prefix("listening on http://") {
            break addr.to_string();
        }
    };
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let key = key.trim();
    send(
        crate::common::agent().get(&format!("http://{addr}/v1/health")),
        None,
    )
    .expect(200);
    // A query parameter the endpoint does not take is refused, and not logged either.
    send(
        crate::common::agent()
            .get(&format!(
                "http://{addr}/v1/collections/c/docs?access_token=SECRETQUERYTOKEN"
            ))
            .set("Authorization", &format!("Bearer {key}")),
        None,
    )
    .expect_error(400, "bad_request");
    // Realtime takes its token from the query for clients that cannot set headers.
    send(
        crate::common::agent().get(&format!(
            "http://{addr}/v1/realtime?subscribe=posts&access_token=SECRETQUERYTOKEN"
        )),
        None,
    )
    .expect_error(401, "unauthenticated");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    log.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success());
    for line in &log {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(
            !line.contains("SECRETQUERYTOKEN") && !line.contains(key),
            "token in the log: {line}"
        );
    }
    let requests: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("\"message\":\"request\""))
        .collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("\"path\":\"/v1/health\"") && l.contains("\"status\":200")),
        "{log:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains("\"path\":\"/v1/collections/c/docs\"")),
        "{log:#?}"
    );
}

/// What an operator meets at the command line: `--version` names the commit, logs carry no
/// colour codes when they do not go to a terminal, and a server that cannot listen leaves no
/// data directory behind.
#[test]
fn version_plain_logs_and_the_port_checked_first() {
    use std::io::{BufRead, BufReader};
    let bin = env!("CARGO_BIN_EXE_emberbase");
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")) && version.contains("(commit "),
        "{version}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(bin)
        .args(["serve", "--bind", &addr, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(
        !data.exists(),
        "a server that could not listen created its data directory"
    );

    let mut child = std::process::Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("EMBERBASE_LOG__LEVEL", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let listening = line.contains("listening on http://");
        log.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(log.contains("listening on http://"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

/// A data directory the server cannot use says why: another server holds it, or it is
/// read-only.
#[test]
fn unusable_data_directories_say_why() {
    let bin = env!("CARGO_BIN_EXE_emberbase");
    let serve = |dir: &std::path::Path| {
        let out = std::process::Command::new(bin)
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let running = crate::common::Spawned::start(&[], None).unwrap();
    let stderr = serve(&running.dir.path().join("data"));
    assert!(
        stderr.contains("is another emberbase using this data directory?"),
        "{stderr}"
    );
    drop(running.stop());

    let Some(read_only) = crate::common::Tmpfs::mount("ro,size=1m") else {
        crate::common::skip("cannot mount a read-only tmpfs here (needs root)");
        return;
    };
    let stderr = serve(read_only.0.path());
    assert!(
        stderr.contains("cannot use data directory") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}
