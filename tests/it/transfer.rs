//! Moving data between servers and in from other systems: accounts with their password
//! hashes (argon2id from Emberbase, bcrypt from PocketBase and others).

use crate::common::{login_token, send, signup, TestServer};
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
