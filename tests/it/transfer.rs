//! Moving data between servers and in from other systems: accounts with their password
//! hashes (argon2id from Emberbase, bcrypt from PocketBase and others).

use crate::common::{login_token, send, signup, with_token, TestServer};
use serde_json::{json, Value};

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
    assert_eq!(reasons.len(), 3, "{reasons:?}");
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
