//! The backend as code: `emberbase plan`, `apply` and `pull` against a running server (and a
//! data directory), from an empty server to a full project and back.

use crate::common::{cli, cluster_backend, send, TestServer};
use crate::functions::{call, eventually};
use serde_json::{json, Value};
use std::path::Path;

/// A project: a collection with rules, indexes and a schema file, one with admin-only rules,
/// a bucket, a JavaScript function built by a command and reading a secret, a webhook and a
/// sign-in provider.
const PROJECT: &str = r#"
[collections.posts]
rules = { read = "true", create = "auth != null" }
indexes = [["data.tag"], ["data.n"]]
schema = "schemas/posts.json"

[collections.people]
rules = {}

[buckets.avatars]
max_size = 1024
content_types = ["image/png"]

[functions.hello]
source = "dist/hello.js"
build = "mkdir -p dist && cp src/hello.js dist/hello.js"
triggers = [{ on = "http" }]
timeout_ms = 2000
secrets = { GREETING = "${EB_TEST_GREETING}" }

[webhooks.audit]
url = "https://hooks.example.com/audit"
collection = "posts"
events = ["create"]

[auth.providers.gh]
kind = "github"
client_id = "client-1"
client_secret = "${EB_TEST_GH_SECRET}"
"#;

/// The function's code: answers the length of its secret (a value it read would be redacted
/// from what it returns).
fn hello(version: u32) -> String {
    format!(
        r#"export default function handle(event) {{
  return {{ status: 200, body: {{ v: {version}, length: emberbase.env.get("GREETING").length }} }};
}}
"#
    )
}

/// Uploads the first `hello` through the API, with `hi` as its secret.
fn upload_hello(srv: &TestServer) {
    send(
        srv.admin("PUT", "/v1/admin/functions/hello")
            .set("Content-Type", "text/javascript"),
        Some(hello(1).as_bytes()),
    )
    .expect(200);
    srv.put(
        "/v1/admin/functions/hello/secrets/GREETING",
        &json!({"value": "hi"}),
    )
    .expect(200);
}

/// A project folder with the file, its schema and the function's source.
fn project_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("schemas/posts.json"),
        json!({"type": "object", "properties": {"title": {"type": "string", "maxLength": 80}}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("src/hello.js"), hello(1)).unwrap();
    std::fs::write(dir.path().join("emberbase.project.toml"), text).unwrap();
    dir
}

/// Runs `emberbase <command> --url <server> -f <dir>/emberbase.project.toml <extra>` with the
/// server's key and the given environment.
fn run(
    srv: &TestServer,
    command: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let url = srv.url("");
    let file = dir.join("emberbase.project.toml");
    let mut args = vec![command, "--url", &url, "-f", file.to_str().unwrap()];
    args.extend(extra);
    let mut env = env.to_vec();
    env.push(("EB_SERVICE_KEY", &srv.key));
    cli(&args, &env)
}

const SECRETS_1: [(&str, &str); 2] = [("EB_TEST_GREETING", "hello"), ("EB_TEST_GH_SECRET", "s1")];
const SECRETS_2: [(&str, &str); 2] = [
    ("EB_TEST_GREETING", "bonjour!"),
    ("EB_TEST_GH_SECRET", "s1"),
];

fn function_version(srv: &TestServer) -> u64 {
    srv.get("/v1/admin/functions/hello").expect(200).json["version"]
        .as_u64()
        .unwrap()
}

#[test]
fn plan_and_apply_take_an_empty_server_to_a_project_and_back() {
    let srv = TestServer::start();
    let dir = project_dir(PROJECT);

    let (code, out, err) = run(&srv, "plan", dir.path(), &[], &SECRETS_1);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "+ collection posts",
        "+ schema: {\"properties\"",
        "+ collection people",
        "+ bucket avatars",
        "+ function hello",
        "+ secret GREETING",
        "+ webhook audit",
        "+ auth provider gh",
        "Plan: 6 to add, 0 to change, 0 to remove.",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(err.contains("building hello"), "{err}");
    // A plan changes nothing.
    srv.get("/v1/admin/functions/hello").expect(404);

    let (code, out, err) = run(&srv, "apply", dir.path(), &[], &SECRETS_1);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Applied 6 changes."), "{out}");
    assert!(out.contains("its signing secret"), "{out}");
    let posts = srv.get("/v1/admin/collections/posts").expect(200).json;
    assert_eq!(posts["rules"]["read"], "true");
    assert_eq!(posts["indexes"], json!([["data.tag"], ["data.n"]]));
    assert_eq!(posts["schema"]["properties"]["title"]["maxLength"], 80);
    let people = srv.get("/v1/admin/collections/people").expect(200).json;
    assert_eq!(
        people["rules"],
        json!({"read": null, "create": null, "update": null, "delete": null})
    );
    let bucket = srv.get("/v1/admin/buckets/avatars").expect(200).json;
    assert_eq!(bucket["max_size"], 1024);
    let reply = call(&srv, "hello", None, &json!({})).expect(200).json;
    assert_eq!(reply, json!({"v": 1, "length": 5}));
    let hooks = srv.get("/v1/admin/webhooks").expect(200).json;
    assert_eq!(hooks["items"][0]["name"], "audit");
    assert_eq!(hooks["items"][0]["events"], json!(["create"]));
    let providers = srv.get("/v1/admin/auth/providers").expect(200).json;
    assert_eq!(providers[0]["name"], "gh");
    assert_eq!(providers[0]["has_client_secret"], true);

    // A second apply finds nothing to do and uploads nothing.
    let (code, out, _) = run(&srv, "apply", dir.path(), &[], &SECRETS_1);
    assert_eq!(code, 0);
    assert!(out.contains("No changes"), "{out}");
    assert_eq!(function_version(&srv), 1);

    // Edits: a rule, a dropped index (destructive), the code and a secret's value.
    let edited = PROJECT
        .replace("read = \"true\"", "read = \"auth != null\"")
        .replace(
            "indexes = [[\"data.tag\"], [\"data.n\"]]",
            "indexes = [[\"data.tag\"]]",
        );
    std::fs::write(dir.path().join("emberbase.project.toml"), edited).unwrap();
    std::fs::write(dir.path().join("src/hello.js"), hello(2)).unwrap();
    let (code, out, _) = run(&srv, "plan", dir.path(), &[], &SECRETS_2);
    assert_eq!(code, 0);
    for line in [
        "~ collection posts",
        "~ rules.read: \"true\" → \"auth != null\"",
        "~ indexes: [[\"data.tag\"],[\"data.n\"]] → [[\"data.tag\"]]",
        "! destructive: drops the index [\"data.n\"]",
        "~ function hello",
        "~ source: dist/hello.js",
        "~ secret GREETING (a new value)",
        "Plan: 0 to add, 2 to change, 0 to remove (1 destructive",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(
        !out.contains("auth provider gh"),
        "an unchanged secret is no change:\n{out}"
    );
    // Destructive changes are refused without the flag, and then nothing changes.
    let (code, _, err) = run(&srv, "apply", dir.path(), &[], &SECRETS_2);
    assert_eq!(code, 2);
    assert!(
        err.contains("nothing was changed") && err.contains("--allow-delete"),
        "{err}"
    );
    let posts = srv.get("/v1/admin/collections/posts").expect(200).json;
    assert_eq!(posts["rules"]["read"], "true");
    assert_eq!(function_version(&srv), 1);
    let (code, out, err) = run(&srv, "apply", dir.path(), &["--allow-delete"], &SECRETS_2);
    assert_eq!(code, 0, "{out}{err}");
    let posts = srv.get("/v1/admin/collections/posts").expect(200).json;
    assert_eq!(posts["rules"]["read"], "auth != null");
    assert_eq!(posts["indexes"], json!([["data.tag"]]));
    assert_eq!(function_version(&srv), 2);
    let reply = call(&srv, "hello", None, &json!({})).expect(200).json;
    assert_eq!(reply, json!({"v": 2, "length": 8}));
    let (_, out, _) = run(&srv, "plan", dir.path(), &[], &SECRETS_2);
    assert!(out.contains("No changes"), "{out}");

    // And back to an empty server.
    std::fs::write(dir.path().join("emberbase.project.toml"), "").unwrap();
    let (code, out, _) = run(&srv, "plan", dir.path(), &[], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Plan: 0 to add, 0 to change, 6 to remove (6 destructive"),
        "{out}"
    );
    let (code, _, _) = run(&srv, "apply", dir.path(), &[], &[]);
    assert_eq!(code, 2);
    let (code, out, err) = run(&srv, "apply", dir.path(), &["--allow-delete"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    srv.get("/v1/admin/functions/hello").expect(404);
    assert_eq!(
        srv.get("/v1/admin/webhooks").expect(200).json["items"],
        json!([])
    );
    assert_eq!(
        srv.get("/v1/admin/auth/providers").expect(200).json,
        json!([])
    );
    // A bucket or collection the project no longer has keeps no configuration of its own.
    let buckets = srv.get("/v1/admin/buckets").expect(200).json;
    for item in buckets["items"].as_array().unwrap() {
        assert_eq!(
            item,
            &json!({"name": item["name"], "rules": null, "max_size": null, "content_types": null})
        );
    }
    let collections = srv.get("/v1/admin/collections").expect(200).json;
    for item in collections["items"].as_array().unwrap() {
        assert_eq!(item["rules"], Value::Null, "{item}");
        assert_eq!(item["indexes"], json!([]), "{item}");
    }
    let (_, out, _) = run(&srv, "plan", dir.path(), &[], &[]);
    assert!(out.contains("No changes"), "{out}");
}

#[test]
fn a_failed_apply_stops_and_says_what_was_applied() {
    let srv = TestServer::start();
    let dir = project_dir(
        r#"
[collections.notes]
rules = { read = "true" }

[functions.broken]
source = "broken.js"
triggers = [{ on = "http" }]

[webhooks.later]
url = "https://hooks.example.com/later"
collection = "notes"
"#,
    );
    std::fs::write(
        dir.path().join("broken.js"),
        "export default function handle( {",
    )
    .unwrap();
    let (code, out, err) = run(&srv, "apply", dir.path(), &[], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("applied + collection notes"), "{out}");
    assert!(out.contains("failed  + function broken"), "{out}");
    assert!(out.contains("400"), "the server's answer is shown:\n{out}");
    assert!(
        err.contains("1 of 3 changes were applied (+ collection notes)"),
        "{err}"
    );
    assert_eq!(
        srv.get("/v1/admin/collections/notes").expect(200).json["rules"]["read"],
        "true"
    );
    assert_eq!(
        srv.get("/v1/admin/webhooks").expect(200).json["items"],
        json!([])
    );

    // A project that does not read is refused before anything is asked of the server.
    std::fs::write(
        dir.path().join("emberbase.project.toml"),
        "[functions.pay]\nsource = \"pay.js\"\nsecrets = { KEY = \"sk_live_in_the_file\" }\n",
    )
    .unwrap();
    let (code, _, err) = run(&srv, "plan", dir.path(), &[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("functions.pay.secrets.KEY"), "{err}");
}

#[test]
fn pull_writes_a_project_that_plans_no_change() {
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/people",
        &json!({"rules": {"read": "auth != null"}, "indexes": [["data.name"]],
                "schema": {"type": "object", "required": ["name"]},
                "relations": {"friend": {"collection": "people", "on_delete": "set_null"}}}),
    )
    .expect(200);
    srv.put(
        "/v1/admin/buckets/docs",
        &json!({"content_types": ["application/pdf"]}),
    )
    .expect(200);
    upload_hello(&srv);
    srv.put(
        "/v1/admin/functions/hello/config",
        &json!({"triggers": [{"on": "schedule", "cron": "0 3 * * *"}, {"on": "http"}], "memory_mb": 32}),
    )
    .expect(200);
    // One webhook without a name: the project knows it by its id.
    let hook = srv
        .post(
            "/v1/admin/webhooks",
            &json!({"url": "https://hooks.example.com/a", "accounts": true, "when": "after != null"}),
        )
        .expect(201)
        .json;
    let id = hook["id"].as_str().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(&srv, "pull", dir.path(), &[], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("set GREETING in the environment"), "{out}");
    let text = std::fs::read_to_string(dir.path().join("emberbase.project.toml")).unwrap();
    assert!(
        text.starts_with("#:schema ./emberbase.project.schema.json"),
        "{text}"
    );
    assert!(text.contains("GREETING = \"${GREETING}\""), "{text}");
    assert!(text.contains(&format!("[webhooks.{id}]")), "{text}");
    assert!(
        !text.contains("\"hi\""),
        "no secret value in the file:\n{text}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("functions/hello.js")).unwrap(),
        hello(1)
    );
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("schemas/people.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema["required"], json!(["name"]));
    assert!(dir.path().join("emberbase.project.schema.json").exists());

    let (code, _, err) = run(&srv, "pull", dir.path(), &[], &[]);
    assert_eq!(code, 2, "an existing file is kept without --force");
    assert!(err.contains("--force"), "{err}");

    let same = [("GREETING", "hi")];
    let (code, out, err) = run(&srv, "plan", dir.path(), &[], &same);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("No changes"), "{out}");
    let (code, out, _) = run(&srv, "apply", dir.path(), &[], &same);
    assert_eq!(code, 0);
    assert!(out.contains("No changes"), "{out}");
    let (_, out, _) = run(&srv, "plan", dir.path(), &[], &[("GREETING", "hello")]);
    assert!(out.contains("~ secret GREETING (a new value)"), "{out}");

    if cluster_backend() {
        return;
    }
    // The same file against the data directory, with the server stopped.
    let data = srv.stop();
    let file = dir.path().join("emberbase.project.toml");
    let (code, out, err) = cli(
        &[
            "plan",
            "--data-dir",
            data.path().to_str().unwrap(),
            "-f",
            file.to_str().unwrap(),
        ],
        &same,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("No changes"), "{out}");
}

/// The published JSON Schema is what the binary prints, and the example project follows it.
#[test]
fn the_project_schema_is_published_and_the_example_follows_it() {
    let (code, printed, _) = cli(&["project-schema"], &[]);
    assert_eq!(code, 0);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sdk/emberbase.project.schema.json"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == printed,
        "sdk/emberbase.project.schema.json is stale: run `cargo run -- project-schema > sdk/emberbase.project.schema.json`"
    );
    let schema: Value = serde_json::from_str(&printed).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/project/emberbase.project.toml"
    );
    let example: toml::Value = toml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let example = serde_json::to_value(example).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&example)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let wrong = json!({"collections": {"posts": {"rulez": {}}}});
    assert!(!validator.is_valid(&wrong));
}

/// The example project applies to a fresh server as it is.
#[test]
fn the_example_project_applies() {
    let srv = TestServer::start();
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/project"));
    let env = [
        ("STRIPE_KEY", "sk_test_123"),
        ("GITHUB_CLIENT_SECRET", "gh-secret"),
    ];
    let (code, out, err) = run(&srv, "apply", dir, &[], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(&srv, "plan", dir, &[], &env);
    assert!(out.contains("No changes"), "{out}");
}

/// The admin API `plan` uses: secrets compared without being shown, a function's code
/// served back, webhooks named once.
#[test]
fn secrets_are_compared_code_is_served_and_webhook_names_are_unique() {
    let srv = TestServer::start();
    upload_hello(&srv);
    let compared = srv
        .post(
            "/v1/admin/functions/hello/secrets/compare",
            &json!({"values": {"GREETING": "hi", "OTHER": "x"}}),
        )
        .expect(200)
        .json;
    assert_eq!(compared, json!({"GREETING": "same", "OTHER": "absent"}));
    let compared = srv
        .post(
            "/v1/admin/functions/hello/secrets/compare",
            &json!({"values": {"GREETING": "hello"}}),
        )
        .expect(200)
        .json;
    assert_eq!(compared, json!({"GREETING": "different"}));
    srv.post(
        "/v1/admin/functions/hello/secrets/compare",
        &json!({"values": {"not a name": "x"}}),
    )
    .expect(400);
    srv.post(
        "/v1/admin/functions/nobody/secrets/compare",
        &json!({"values": {}}),
    )
    .expect(404);
    send(
        srv.anon("POST", "/v1/admin/functions/hello/secrets/compare")
            .set("Content-Type", "application/json"),
        Some(br#"{"values": {"GREETING": "hi"}}"#),
    )
    .expect(401);

    let code = srv.get("/v1/admin/functions/hello/source").expect(200);
    assert_eq!(code.text, hello(1));
    assert!(code
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let info = srv.get("/v1/admin/functions/hello").expect(200).json;
    assert_eq!(
        code.header("etag").unwrap(),
        format!("\"{}\"", info["sha256"].as_str().unwrap())
    );
    srv.get("/v1/admin/functions/nobody/source").expect(404);

    let hook = |name: &str| json!({"name": name, "url": "https://hooks.example.com/x", "collection": "posts"});
    let first = srv
        .post("/v1/admin/webhooks", &hook("audit"))
        .expect(201)
        .json;
    srv.post("/v1/admin/webhooks", &hook("audit"))
        .expect_error(409, "conflict");
    srv.post("/v1/admin/webhooks", &hook("no spaces"))
        .expect(400);
    let second = srv
        .post("/v1/admin/webhooks", &hook("billing"))
        .expect(201)
        .json;
    let id = second["id"].as_str().unwrap();
    srv.put(&format!("/v1/admin/webhooks/{id}"), &hook("audit"))
        .expect_error(409, "conflict");
    // Its own name is no clash.
    srv.put(
        &format!("/v1/admin/webhooks/{}", first["id"].as_str().unwrap()),
        &hook("audit"),
    )
    .expect(200);

    srv.put(
        "/v1/admin/auth/providers/gh",
        &json!({"kind": "github", "client_id": "c", "client_secret": "s1"}),
    )
    .expect(200);
    let compared = srv
        .post(
            "/v1/admin/auth/providers/gh/compare",
            &json!({"client_secret": "s1", "apple_private_key": "k"}),
        )
        .expect(200)
        .json;
    assert_eq!(
        compared,
        json!({"client_secret": "same", "apple_private_key": "absent"})
    );
    let compared = srv
        .post(
            "/v1/admin/auth/providers/gh/compare",
            &json!({"client_secret": "s2"}),
        )
        .expect(200)
        .json;
    assert_eq!(compared, json!({"client_secret": "different"}));
    srv.post("/v1/admin/auth/providers/nope/compare", &json!({}))
        .expect(404);
}

/// A running `emberbase dev`: its address, key and output file.
struct DevServer {
    child: std::process::Child,
    url: String,
    key: String,
    data: std::path::PathBuf,
    _out: tempfile::TempDir,
}

impl DevServer {
    fn start(project: &Path, seed: &Path) -> DevServer {
        let out = tempfile::tempdir().unwrap();
        let log = out.path().join("dev.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
            .args(["dev", "--bind", "127.0.0.1:0", "-f"])
            .arg(project.join("emberbase.project.toml"))
            .arg("--seed")
            .arg(seed)
            .env("EMBERBASE_AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("EMBERBASE_AUTH__ARGON2_ITERATIONS", "1")
            .env("EB_TEST_GREETING", "hello")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let line = eventually("the dev server's first line", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.starts_with("emberbase dev: http://"))
                .map(str::to_string)
        });
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |i: usize| words.get(i).unwrap().to_string();
        let dev = DevServer {
            child,
            url: at(2),
            key: at(7),
            data: std::path::PathBuf::from(at(11)),
            _out: out,
        };
        eventually("the project applied and the seed loaded", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("emberbase dev: seeded").then_some(())
        });
        dev
    }

    fn request(&self, method: &str, path: &str, admin: bool) -> ureq::Request {
        let req = crate::common::agent().request(method, &format!("{}{path}", self.url));
        if admin {
            req.set("Authorization", &format!("Bearer {}", self.key))
        } else {
            req
        }
    }

    /// Stops it the way Ctrl-C does (dropped, it is killed).
    fn stop(mut self) -> std::path::PathBuf {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
        self.data.clone()
    }
}

/// A test that fails before [`DevServer::stop`] must not leave the server running: it would
/// hold the test's output open (the cluster suites read it to its end).
impl Drop for DevServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn dev_mode_applies_edits_rebuilds_functions_and_moves_the_clock() {
    let dir = project_dir(
        r#"
[collections.notes]
rules = { read = "true" }

[functions.hello]
source = "dist/hello.js"
build = "mkdir -p dist && cp src/hello.js dist/hello.js"
triggers = [{ on = "http" }]
secrets = { GREETING = "${EB_TEST_GREETING}" }

[functions.daily]
source = "daily.js"
triggers = [{ on = "schedule", cron = "0 3 * * *" }]
"#,
    );
    std::fs::write(
        dir.path().join("daily.js"),
        "export default async function handle(event) {\n  await emberbase.db.create(\"ticks\", { at: event.scheduled_for });\n}\n",
    )
    .unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        json!({"collections": {"notes": {"n1": {"text": "hi"}}},
               "users": [{"email": "ada@example.com", "password": "correct horse battery staple", "admin": true}]})
        .to_string(),
    )
    .unwrap();
    let dev = DevServer::start(dir.path(), &seed);

    // The seed is in, and the project's rules apply to it.
    let note = send(
        dev.request("GET", "/v1/collections/notes/docs/n1", false),
        None,
    )
    .expect(200);
    assert_eq!(note.json["data"]["text"], "hi");
    let login = send(
        dev.request("POST", "/v1/auth/login", false)
            .set("Content-Type", "application/json"),
        Some(br#"{"email": "ada@example.com", "password": "correct horse battery staple"}"#),
    )
    .expect(200);
    assert_eq!(login.json["user"]["role"], "admin");
    let answer = |expected: u64| {
        eventually("the function's answer", || {
            let reply = send(
                dev.request("POST", "/v1/functions/hello", false)
                    .set("Content-Type", "application/json"),
                Some(b"{}"),
            );
            (reply.status == 200 && reply.json["v"] == expected).then_some(reply.json)
        })
    };
    assert_eq!(answer(1)["length"], 5);

    // Editing a rule takes effect without a restart.
    let file = dir.path().join("emberbase.project.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("read = \"true\"", "read = \"auth != null\""),
    )
    .unwrap();
    eventually("the new read rule", || {
        let status = send(
            dev.request("GET", "/v1/collections/notes/docs/n1", false),
            None,
        )
        .status;
        (status == 401 || status == 403).then_some(())
    });

    // Editing a function's source rebuilds and uploads it.
    std::fs::write(dir.path().join("src/hello.js"), hello(2)).unwrap();
    answer(2);
    let versions = send(dev.request("GET", "/v1/admin/functions/hello", true), None).expect(200);
    assert_eq!(versions.json["version"], 2);

    // The dev clock fires a daily schedule at once.
    let moved = send(
        dev.request("POST", "/v1/admin/dev/clock", true)
            .set("Content-Type", "application/json"),
        Some(br#"{"advance_secs": 90000}"#),
    )
    .expect(200);
    assert_eq!(moved.json["ahead_secs"], 90000);
    let tick = eventually("the daily tick", || {
        let list = send(dev.request("GET", "/v1/collections/ticks/docs", true), None).expect(200);
        list.json["items"].as_array()?.first().cloned()
    });
    assert!(
        tick["data"]["at"]
            .as_str()
            .unwrap()
            .ends_with("T03:00:00.000Z"),
        "{tick}"
    );
    send(
        dev.request("POST", "/v1/admin/dev/clock", false)
            .set("Content-Type", "application/json"),
        Some(br#"{"advance_secs": 1}"#),
    )
    .expect(401);
    send(
        dev.request("POST", "/v1/admin/dev/clock", true)
            .set("Content-Type", "application/json"),
        Some(br#"{"to": "2001-01-01T00:00:00Z"}"#),
    )
    .expect(400);

    let data = dev.stop();
    assert!(
        !data.exists(),
        "the temporary data directory is removed on exit"
    );

    // The clock exists only under `emberbase dev`.
    let srv = TestServer::start();
    send(
        srv.admin("POST", "/v1/admin/dev/clock")
            .set("Content-Type", "application/json"),
        Some(br#"{"advance_secs": 90000}"#),
    )
    .expect(404);
}
