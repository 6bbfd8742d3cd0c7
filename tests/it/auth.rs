//! Identity and tokens, email flows, throttling, admins and access rules, over HTTP.

use crate::common::{fast, send, signup, signup_token, with_token, Resp, TestServer};
use base64::Engine;
use serde_json::{json, Value};

fn start() -> TestServer {
    TestServer::start_with(fast)
}

fn post_json(srv: &TestServer, path: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut req = srv
        .anon("POST", path)
        .set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    send(req, Some(body.to_string().as_bytes()))
}

fn login(srv: &TestServer, email: &str, password: &str) -> Resp {
    post_json(
        srv,
        "/v1/auth/login",
        None,
        &json!({"email": email, "password": password}),
    )
}

fn token(session: &Value) -> &str {
    session["access_token"].as_str().unwrap()
}

fn me(srv: &TestServer, token: &str) -> Resp {
    with_token(srv, "GET", "/v1/auth/me", token, None)
}

#[test]
fn signup_login_refresh_logout() {
    let srv = start();
    let session = signup(&srv, "  Alice@Example.COM ");
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    let user = &session["user"];
    assert_eq!(user["email"], "Alice@example.com");
    assert_eq!(user["role"], "user");
    assert_eq!(user["email_verified"], false);
    assert!(user["created_at"].is_string());
    assert!(
        !session.to_string().contains("argon2"),
        "never a hash: {session}"
    );
    assert!(session["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("ebrt_"));

    assert_eq!(me(&srv, token(&session)).expect(200).json, *user);
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "Alice@example.com", "password": "another fine passphrase"}),
    )
    .expect_error(409, "conflict");
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "not-an-email", "password": "correct horse battery"}),
    )
    .expect_error(400, "validation_failed");

    let logged = login(
        &srv,
        "alice@EXAMPLE.com".replace("alice", "Alice").as_str(),
        "correct horse battery",
    )
    .expect(200)
    .json;
    assert_eq!(logged["user"]["id"], user["id"]);

    // Rotation: the old refresh token stops working, and reusing it revokes the family.
    let r1 = logged["refresh_token"].as_str().unwrap();
    let rotated = post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": r1}),
    )
    .expect(200)
    .json;
    let r2 = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    me(&srv, token(&rotated)).expect(200);
    post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": r1}),
    )
    .expect_error(401, "unauthenticated");
    post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": r2}),
    )
    .expect_error(401, "unauthenticated");
    // The first login's family is untouched by that.
    let other = session["refresh_token"].as_str().unwrap();
    let again = post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": other}),
    )
    .expect(200)
    .json;

    // Logout revokes that login.
    let r3 = again["refresh_token"].as_str().unwrap();
    post_json(&srv, "/v1/auth/logout", None, &json!({"refresh_token": r3}))
        .expect_error(401, "unauthenticated");
    post_json(
        &srv,
        "/v1/auth/logout",
        Some(token(&again)),
        &json!({"refresh_token": r3}),
    )
    .expect(204);
    post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": r3}),
    )
    .expect_error(401, "unauthenticated");
    post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": "ebrt_nope"}),
    )
    .expect_error(401, "unauthenticated");
}

#[test]
fn password_policy() {
    let srv = start();
    for weak in ["short", "password", "12345678", "qwertyuiop", "aaaaaaaa"] {
        let err = post_json(
            &srv,
            "/v1/auth/signup",
            None,
            &json!({"email": "p@example.com", "password": weak}),
        )
        .expect_error(400, "validation_failed");
        assert_eq!(err.json["error"]["details"]["field"], "password", "{weak}");
    }
    let long = "x".repeat(1025);
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "p@example.com", "password": long}),
    )
    .expect_error(400, "validation_failed");
    let passphrase = "a long passphrase that nobody guesses ".repeat(3);
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "p@example.com", "password": passphrase}),
    )
    .expect(201);
}

#[test]
fn password_change_revokes_every_old_token() {
    let srv = start();
    let s1 = signup(&srv, "c@example.com");
    let s2 = login(&srv, "c@example.com", "correct horse battery")
        .expect(200)
        .json;
    let body = json!({"current_password": "wrong password here", "new_password": "a brand new passphrase"});
    with_token(
        &srv,
        "POST",
        "/v1/auth/password/change",
        token(&s1),
        Some(&body),
    )
    .expect_error(403, "forbidden");
    let body = json!({"current_password": "correct horse battery", "new_password": "a brand new passphrase"});
    let fresh = with_token(
        &srv,
        "POST",
        "/v1/auth/password/change",
        token(&s1),
        Some(&body),
    )
    .expect(200)
    .json;
    me(&srv, token(&s1)).expect_error(401, "unauthenticated");
    me(&srv, token(&s2)).expect_error(401, "unauthenticated");
    me(&srv, token(&fresh)).expect(200);
    for old in [&s1, &s2] {
        post_json(
            &srv,
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": old["refresh_token"]}),
        )
        .expect_error(401, "unauthenticated");
    }
    login(&srv, "c@example.com", "correct horse battery").expect_error(401, "unauthenticated");
    login(&srv, "c@example.com", "a brand new passphrase").expect(200);
}

/// The server's current signing key, read from the data directory.
fn signing_key(srv: &TestServer) -> (String, Vec<u8>) {
    let keys: Value =
        serde_json::from_slice(&std::fs::read(srv.dir.path().join("jwt_keys.json")).unwrap())
            .unwrap();
    let key = keys["keys"].as_array().unwrap().last().unwrap();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key["secret"].as_str().unwrap())
        .unwrap();
    (key["kid"].as_str().unwrap().to_string(), secret)
}

fn sign(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[test]
fn jwt_matrix_every_bad_token_is_401() {
    let srv = start();
    let session = signup(&srv, "jwt@example.com");
    let good = token(&session).to_string();
    me(&srv, &good).expect(200);
    let (kid, secret) = signing_key(&srv);
    let user_id = session["user"]["id"].as_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |change: &dyn Fn(&mut Value)| {
        let mut c = json!({"sub": user_id, "email": "jwt@example.com", "role": "user", "exp": now + 600,
                           "iat": now, "nbf": now, "iss": "emberbase", "aud": "emberbase", "typ": "access", "tv": 1});
        change(&mut c);
        c
    };
    // A token made with the real key and the right claims works: the matrix below tests the
    // checks, not a mistake in the test's own signing.
    me(&srv, &sign(&kid, &secret, &claims(&|_| {}))).expect(200);

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    tampered_payload["role"] = json!("admin");
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not.a.jwt".into()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
                b64(&claims(&|_| {}))
            ),
        ),
        (
            "other key",
            sign(
                &kid,
                b"a completely different secret key!!",
                &claims(&|_| {}),
            ),
        ),
        ("unknown kid", sign("nope", &secret, &claims(&|_| {}))),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered_payload), parts[2]),
        ),
        (
            "expired",
            sign(&kid, &secret, &claims(&|c| c["exp"] = json!(now - 60))),
        ),
        (
            "nbf in the future",
            sign(&kid, &secret, &claims(&|c| c["nbf"] = json!(now + 120))),
        ),
        (
            "wrong iss",
            sign(
                &kid,
                &secret,
                &claims(&|c| c["iss"] = json!("someone-else")),
            ),
        ),
        (
            "wrong aud",
            sign(&kid, &secret, &claims(&|c| c["aud"] = json!("another-app"))),
        ),
        (
            "wrong typ",
            sign(&kid, &secret, &claims(&|c| c["typ"] = json!("refresh"))),
        ),
        (
            "stale token version",
            sign(&kid, &secret, &claims(&|c| c["tv"] = json!(0))),
        ),
        (
            "no exp",
            sign(
                &kid,
                &secret,
                &claims(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
        ),
        (
            "refresh token as access token",
            session["refresh_token"].as_str().unwrap().to_string(),
        ),
    ];
    for (name, bad) in &cases {
        let resp = me(&srv, bad);
        assert_eq!(resp.status, 401, "{name}: {}", resp.text);
        assert_eq!(resp.code(), "unauthenticated", "{name}");
        // Bad tokens are 401 everywhere, not only on /me.
        let resp = with_token(&srv, "GET", "/v1/collections/x/docs", bad, None);
        assert_eq!(resp.status, 401, "{name} on a list");
    }
    send(srv.anon("GET", "/v1/auth/me"), None).expect_error(401, "unauthenticated");

    // A token of a disabled, then of a deleted, user.
    let admin = srv.key.clone();
    with_token(
        &srv,
        "POST",
        &format!("/v1/admin/users/{user_id}/disable"),
        &admin,
        None,
    )
    .expect(200);
    me(&srv, &good).expect_error(401, "unauthenticated");
    login(&srv, "jwt@example.com", "correct horse battery").expect_error(403, "forbidden");
    with_token(
        &srv,
        "POST",
        &format!("/v1/admin/users/{user_id}/enable"),
        &admin,
        None,
    )
    .expect(200);
    let fresh = login(&srv, "jwt@example.com", "correct horse battery")
        .expect(200)
        .json;
    me(&srv, token(&fresh)).expect(200);
    with_token(
        &srv,
        "DELETE",
        &format!("/v1/admin/users/{user_id}"),
        &admin,
        None,
    )
    .expect(204);
    me(&srv, token(&fresh)).expect_error(401, "unauthenticated");
    login(&srv, "jwt@example.com", "correct horse battery").expect_error(401, "unauthenticated");
}

#[test]
fn unknown_email_and_wrong_password_look_the_same() {
    let srv = TestServer::start();
    signup(&srv, "known@example.com");
    let unknown = login(&srv, "unknown@example.com", "correct horse battery").expect(401);
    let wrong = login(&srv, "known@example.com", "not the password").expect(401);
    assert_eq!(unknown.text, wrong.text);
    // Both paths hash: time them (a generous bound, since this is a correctness check of the
    // dummy-hash path, not a benchmark).
    let time = |email: &str| {
        let started = std::time::Instant::now();
        for _ in 0..3 {
            login(&srv, email, "not the password").expect(401);
        }
        started.elapsed()
    };
    let (u, w) = (time("unknown2@example.com"), time("known@example.com"));
    assert!(u * 3 > w && w * 3 > u, "unknown {u:?} vs wrong {w:?}");
}

#[test]
fn failed_logins_are_throttled_per_account_and_per_ip() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.auth.max_failures_per_account = 3;
        c.auth.max_failures_per_ip = 6;
        c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    signup(&srv, "victim@example.com");
    signup(&srv, "bystander@example.com");
    let attempt = |email: &str, password: &str, ip: &str| {
        let req = srv
            .anon("POST", "/v1/auth/login")
            .set("Content-Type", "application/json")
            .set("X-Forwarded-For", ip);
        send(
            req,
            Some(
                json!({"email": email, "password": password})
                    .to_string()
                    .as_bytes(),
            ),
        )
    };
    for _ in 0..3 {
        attempt("victim@example.com", "wrong password!", "10.0.0.1")
            .expect_error(401, "unauthenticated");
    }
    let throttled = attempt("victim@example.com", "correct horse battery", "10.0.0.2")
        .expect_error(429, "rate_limited");
    let retry: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry));
    // Another account from the same address still signs in.
    attempt("bystander@example.com", "correct horse battery", "10.0.0.1").expect(200);
    // Per address: failures on many accounts from one address.
    for i in 0..3 {
        attempt(
            &format!("nobody{i}@example.com"),
            "wrong password!",
            "10.0.0.1",
        )
        .expect_error(401, "unauthenticated");
    }
    attempt("bystander@example.com", "correct horse battery", "10.0.0.1")
        .expect_error(429, "rate_limited");
    attempt("bystander@example.com", "correct horse battery", "10.0.0.3").expect(200);
}

#[test]
fn fifty_concurrent_signups_with_one_email_make_one_account() {
    let srv = start();
    let addr = srv.addr;
    let statuses: Vec<u16> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let req = crate::common::agent()
                    .post(&format!("http://{addr}/v1/auth/signup"))
                    .set("Content-Type", "application/json");
                send(
                    req,
                    Some(br#"{"email": "race@example.com", "password": "correct horse battery"}"#),
                )
                .status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        49,
        "{statuses:?}"
    );
    let users = srv.get("/v1/admin/users").expect(200).json;
    assert_eq!(users["items"].as_array().unwrap().len(), 1);
}

/// The token of the newest mail to `to` with `subject`, waiting for it: reset mails are sent
/// off the request path.
pub(crate) fn mailed_token(srv: &TestServer, to: &str, subject: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mail = loop {
        let outbox = srv.get("/v1/admin/outbox").expect(200).json;
        let found = outbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["to"] == to && m["subject"] == subject)
            .cloned();
        match found {
            Some(mail) => break mail,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            None => panic!("no mail to {to}: {outbox}"),
        }
    };
    assert_eq!(mail["delivery"], "outbox");
    let body = mail["body"].as_str().unwrap();
    body.split_whitespace()
        .find(|w| w.starts_with("ebet_"))
        .unwrap()
        .to_string()
}

#[test]
fn verify_and_reset_through_the_outbox() {
    let srv = start();
    let session = signup(&srv, "mail@example.com");
    with_token(
        &srv,
        "POST",
        "/v1/auth/verify/request",
        token(&session),
        None,
    )
    .expect(202);
    let verify = mailed_token(&srv, "mail@example.com", "Confirm your email");
    let user = post_json(
        &srv,
        "/v1/auth/verify/confirm",
        None,
        &json!({"token": verify}),
    )
    .expect(200)
    .json;
    assert_eq!(user["email_verified"], true);
    post_json(
        &srv,
        "/v1/auth/verify/confirm",
        None,
        &json!({"token": verify}),
    )
    .expect_error(400, "bad_request");
    send(srv.anon("POST", "/v1/auth/verify/request"), None).expect_error(401, "unauthenticated");

    // The reset request answers alike for known and unknown emails.
    let known = post_json(
        &srv,
        "/v1/auth/password/reset/request",
        None,
        &json!({"email": "mail@example.com"}),
    )
    .expect(202);
    let unknown = post_json(
        &srv,
        "/v1/auth/password/reset/request",
        None,
        &json!({"email": "ghost@example.com"}),
    )
    .expect(202);
    assert_eq!(known.text, unknown.text);
    let outbox = srv.get("/v1/admin/outbox").expect(200).json;
    assert!(outbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["to"] != "ghost@example.com"));

    let reset = mailed_token(&srv, "mail@example.com", "Reset your password");
    assert_ne!(reset, verify);
    // A verify token is not a reset token, and a weak password is refused without using it up.
    post_json(
        &srv,
        "/v1/auth/password/reset/confirm",
        None,
        &json!({"token": verify, "new_password": "the new secret phrase"}),
    )
    .expect_error(400, "bad_request");
    post_json(
        &srv,
        "/v1/auth/password/reset/confirm",
        None,
        &json!({"token": reset, "new_password": "password"}),
    )
    .expect_error(400, "validation_failed");
    post_json(
        &srv,
        "/v1/auth/password/reset/confirm",
        None,
        &json!({"token": reset, "new_password": "the new secret phrase"}),
    )
    .expect(204);
    post_json(
        &srv,
        "/v1/auth/password/reset/confirm",
        None,
        &json!({"token": reset, "new_password": "yet another phrase!"}),
    )
    .expect_error(400, "bad_request");
    me(&srv, token(&session)).expect_error(401, "unauthenticated");
    login(&srv, "mail@example.com", "correct horse battery").expect_error(401, "unauthenticated");
    login(&srv, "mail@example.com", "the new secret phrase").expect(200);
}

#[test]
fn admin_user_management() {
    let srv = start();
    let a = signup(&srv, "a@example.com");
    for i in 0..4 {
        signup(&srv, &format!("u{i}@example.com"));
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = srv
            .get(&format!("/v1/admin/users?limit=2{cursor}"))
            .expect(200)
            .json;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["email"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let id = a["user"]["id"].as_str().unwrap();
    assert_eq!(
        srv.get(&format!("/v1/admin/users/{id}")).expect(200).json["email"],
        "a@example.com"
    );
    srv.get("/v1/admin/users/nope")
        .expect_error(404, "not_found");

    // A user is not an admin...
    with_token(&srv, "GET", "/v1/admin/users", token(&a), None).expect_error(403, "forbidden");
    with_token(&srv, "GET", "/v1/admin/outbox", token(&a), None).expect_error(403, "forbidden");
    with_token(
        &srv,
        "PUT",
        "/v1/admin/collections/x",
        token(&a),
        Some(&json!({})),
    )
    .expect_error(403, "forbidden");
    // ...until promoted; the role applies to tokens already issued.
    srv.put(
        &format!("/v1/admin/users/{id}/role"),
        &json!({"role": "admin"}),
    )
    .expect(200);
    with_token(
        &srv,
        "PUT",
        "/v1/admin/collections/x",
        token(&a),
        Some(&json!({})),
    )
    .expect(200);
    srv.put(
        &format!("/v1/admin/users/{id}/role"),
        &json!({"role": "root"}),
    )
    .expect_error(400, "validation_failed");

    // Rotating the signing key signs nobody out.
    let kid = srv
        .post("/v1/admin/auth/rotate-key", &json!({}))
        .expect(200)
        .json["kid"]
        .clone();
    me(&srv, token(&a)).expect(200);
    let newer = login(&srv, "a@example.com", "correct horse battery")
        .expect(200)
        .json;
    let header = token(&newer).split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid);
    me(&srv, token(&newer)).expect(200);
}

#[test]
fn owner_rules_matrix() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.admin.email = "boss@example.com".into();
        c.admin.password = "the boss passphrase".into();
    });
    let a = signup(&srv, "a@example.com");
    let b = signup(&srv, "b@example.com");
    let boss = login(&srv, "boss@example.com", "the boss passphrase")
        .expect(200)
        .json;
    assert_eq!(boss["user"]["role"], "admin");
    let owner_only = json!({"rules": {
        "read": "auth != null && doc.owner == auth.id",
        "create": "auth != null",
        "update": "auth != null && doc.owner == auth.id",
        "delete": "auth != null && doc.owner == auth.id"}});
    srv.put("/v1/admin/collections/notes", &owner_only)
        .expect(200);

    let create = |s: &Value, body: Value| {
        with_token(
            &srv,
            "POST",
            "/v1/collections/notes/docs",
            token(s),
            Some(&body),
        )
        .expect(201)
        .json
    };
    let a_doc = create(&a, json!({"text": "a's", "owner": "b"}));
    assert_eq!(
        a_doc["owner"], a["user"]["id"],
        "owner is the caller, whatever data says"
    );
    let b_doc = create(&b, json!({"text": "b's"}));
    let b_path = format!(
        "/v1/collections/notes/docs/{}",
        b_doc["id"].as_str().unwrap()
    );
    let a_path = format!(
        "/v1/collections/notes/docs/{}",
        a_doc["id"].as_str().unwrap()
    );

    with_token(&srv, "GET", &b_path, token(&a), None).expect_error(403, "forbidden");
    with_token(
        &srv,
        "PATCH",
        &b_path,
        token(&a),
        Some(&json!({"text": "mine now"})),
    )
    .expect_error(403, "forbidden");
    with_token(
        &srv,
        "PUT",
        &b_path,
        token(&a),
        Some(&json!({"text": "mine now"})),
    )
    .expect_error(403, "forbidden");
    with_token(&srv, "DELETE", &b_path, token(&a), None).expect_error(403, "forbidden");
    let listed = with_token(&srv, "GET", "/v1/collections/notes/docs", token(&a), None)
        .expect(200)
        .json;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a_doc["id"].as_str().unwrap()]);
    // A filter cannot widen what the read rule allows.
    let filtered = with_token(
        &srv,
        "GET",
        &format!(
            "/v1/collections/notes/docs?filter={}",
            crate::common::enc("owner != null")
        ),
        token(&a),
        None,
    )
    .expect(200)
    .json;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);

    // A cannot take B's document through a batch either, nor set an owner.
    let batch = json!({"ops": [
        {"op": "create", "collection": "notes", "data": {"x": 1}},
        {"op": "update", "collection": "notes", "id": b_doc["id"], "data": {"text": "stolen"}},
    ]});
    let err = with_token(&srv, "POST", "/v1/batch", token(&a), Some(&batch))
        .expect_error(403, "forbidden");
    assert_eq!(err.json["error"]["details"]["op"], 1);
    let batch =
        json!({"ops": [{"op": "create", "collection": "notes", "data": {"x": 1}, "owner": "b"}]});
    with_token(&srv, "POST", "/v1/batch", token(&a), Some(&batch))
        .expect_error(400, "validation_failed");
    let own = with_token(
        &srv,
        "PATCH",
        &a_path,
        token(&a),
        Some(&json!({"owner": "b"})),
    )
    .expect(200)
    .json;
    assert_eq!(own["owner"], a["user"]["id"]);

    // Admins and the service key bypass rules.
    with_token(&srv, "GET", &b_path, token(&boss), None).expect(200);
    with_token(
        &srv,
        "PATCH",
        &b_path,
        token(&boss),
        Some(&json!({"by": "boss"})),
    )
    .expect(200);
    let all = with_token(
        &srv,
        "GET",
        "/v1/collections/notes/docs",
        token(&boss),
        None,
    )
    .expect(200)
    .json;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    srv.get(&b_path).expect(200);
    with_token(&srv, "DELETE", &b_path, token(&b), None).expect(204);

    // Public rules work without a token.
    srv.put(
        "/v1/admin/collections/public",
        &json!({"rules": {"read": "", "create": ""}}),
    )
    .expect(200);
    let anon = send(
        srv.anon("POST", "/v1/collections/public/docs")
            .set("Content-Type", "application/json"),
        Some(b"{\"hi\": 1}"),
    )
    .expect(201)
    .json;
    assert_eq!(anon["owner"], Value::Null);
    send(srv.anon("GET", "/v1/collections/public/docs"), None).expect(200);

    // Default rules are private: signed-in users create, and only owners read, update and
    // delete.
    let d = with_token(
        &srv,
        "POST",
        "/v1/collections/defaults/docs",
        token(&a),
        Some(&json!({"n": 1})),
    )
    .expect(201)
    .json;
    let d_path = format!(
        "/v1/collections/defaults/docs/{}",
        d["id"].as_str().unwrap()
    );
    with_token(&srv, "GET", &d_path, token(&b), None).expect_error(403, "forbidden");
    with_token(&srv, "GET", &d_path, token(&a), None).expect(200);
    let b_list = with_token(
        &srv,
        "GET",
        "/v1/collections/defaults/docs",
        token(&b),
        None,
    );
    assert_eq!(
        b_list.expect(200).json["items"],
        json!([]),
        "b lists nothing of a's"
    );
    with_token(&srv, "PATCH", &d_path, token(&b), Some(&json!({"n": 2})))
        .expect_error(403, "forbidden");
    with_token(&srv, "PATCH", &d_path, token(&a), Some(&json!({"n": 2}))).expect(200);
    send(srv.anon("GET", &d_path), None).expect_error(403, "forbidden");
}

/// Runs `emberbase admin create --email <email> --password-stdin <args>` with `password` on
/// its standard input.
fn admin_create(
    email: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    password: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(["admin", "create", "--email", email, "--password-stdin"])
        .args(args)
        .env_remove("EB_SERVICE_KEY")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The command may refuse (and exit) before it reads the password.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn admin_create_command_and_default_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let on_dir = [std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()];
    let run = |password: &str| admin_create("root@example.com", &on_dir, &[], password);
    let out = run("password");
    assert!(!out.status.success(), "a weak password is refused");
    let out = run("root passphrase one");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin root@example.com"));
    let out = run("root passphrase two");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is now an admin"));

    // The server on that directory (with the default, OWASP-strength hashing) signs the admin in.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(
            emberbase::ServerBuilder::new(emberbase::Config::default())
                .data_dir(dir.path())
                .bind("127.0.0.1:0")
                .start(),
        )
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let login = |email: &str, password: &str| {
        let req = crate::common::agent()
            .post(&format!("{base}/v1/auth/login"))
            .set("Content-Type", "application/json");
        let body = json!({"email": email, "password": password}).to_string();
        send(req, Some(body.as_bytes()))
    };
    let session = login("root@example.com", "root passphrase two").expect(200);
    assert_eq!(session.json["user"]["role"], "admin");
    assert!(session.json["user"]["created_at"].is_string());

    // While the server runs, the data directory is its own: the command says to use --url.
    let out = run("root passphrase three");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With --url, it asks the running server, as the service key from EB_SERVICE_KEY.
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let remote = [std::ffi::OsStr::new("--url"), std::ffi::OsStr::new(&base)];
    let out = admin_create("ops@example.com", &remote, &[], "ops passphrase one");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EB_SERVICE_KEY"));
    let out = admin_create(
        "ops@example.com",
        &remote,
        &[("EB_SERVICE_KEY", "ebsk_wrong")],
        "ops passphrase one",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let with_key = [("EB_SERVICE_KEY", key.trim())];
    let out = admin_create("ops@example.com", &remote, &with_key, "ops passphrase one");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created admin ops@example.com"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        login("ops@example.com", "ops passphrase one")
            .expect(200)
            .json["user"]["role"],
        "admin"
    );
    // An existing user is promoted and given the new password.
    let user = login("root@example.com", "root passphrase two").json;
    assert_eq!(user["user"]["role"], "admin");
    let req = crate::common::agent()
        .post(&format!("{base}/v1/auth/signup"))
        .set("Content-Type", "application/json");
    send(
        req,
        Some(br#"{"email": "eve@example.com", "password": "eve passphrase one"}"#),
    )
    .expect(201);
    let out = admin_create("eve@example.com", &remote, &with_key, "eve passphrase two");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is now an admin"));
    login("eve@example.com", "eve passphrase one").expect(401);
    assert_eq!(
        login("eve@example.com", "eve passphrase two")
            .expect(200)
            .json["user"]["role"],
        "admin"
    );
    let out = admin_create("eve@example.com", &remote, &with_key, "short");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
    rt.block_on(server.shutdown());
}

/// A minimal SMTP server that accepts one message and hands back what it received.
pub(crate) fn smtp_sink() -> (u16, std::sync::mpsc::Receiver<String>) {
    smtp_relay(Vec::new())
}

/// A minimal SMTP server: connection `i` answers `MAIL FROM` with `refusals[i]` (a `4xx` or
/// `5xx` line); an empty one, and connections past the list, accept their message. Hands back the
/// transcript of each connection, in order.
pub(crate) fn smtp_relay(refusals: Vec<&'static str>) -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0.. {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let refusal = refusals.get(i).copied().filter(|r| !r.is_empty());
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut say = |line: &str| {
                let _ = writer.write_all(format!("{line}\r\n").as_bytes());
            };
            say("220 sink ESMTP");
            let mut transcript = String::new();
            let mut in_data = false;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                transcript.push_str(&line);
                let command = line.trim_end().to_ascii_uppercase();
                if in_data {
                    if command == "." {
                        in_data = false;
                        say("250 queued");
                    }
                } else if command.starts_with("EHLO") || command.starts_with("HELO") {
                    say("250 sink");
                } else if let Some(refusal) = refusal.filter(|_| command.starts_with("MAIL")) {
                    say(refusal);
                } else if command.starts_with("DATA") {
                    in_data = true;
                    say("354 go ahead");
                } else if command.starts_with("QUIT") {
                    say("221 bye");
                    break;
                } else {
                    say("250 ok");
                }
                line.clear();
            }
            if tx.send(transcript).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn mail_is_delivered_over_smtp_when_configured() {
    let (port, received) = smtp_sink();
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.mail.smtp_url = format!("smtp://127.0.0.1:{port}");
        c.mail.from = "Emberbase <noreply@example.com>".into();
    });
    signup(&srv, "smtp@example.com");
    post_json(
        &srv,
        "/v1/auth/password/reset/request",
        None,
        &json!({"email": "smtp@example.com"}),
    )
    .expect(202);
    let transcript = received
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(
        transcript.contains("RCPT TO:<smtp@example.com>"),
        "{transcript}"
    );
    assert!(
        transcript.contains("Subject: Reset your password"),
        "{transcript}"
    );
    assert!(transcript.contains("ebet_"), "{transcript}");
    // The mail is sent in the background: its record says so once the relay answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let outbox = loop {
        let outbox = srv.get("/v1/admin/outbox").expect(200).json;
        if outbox["items"][0]["delivery"] == "sent" || std::time::Instant::now() > deadline {
            break outbox;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(outbox["items"][0]["delivery"], "sent", "{outbox}");
    assert_eq!(outbox["items"][0]["attempts"], 1, "{outbox}");
}

#[test]
fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.auth.max_failures_per_ip = 2;
    });
    signup(&srv, "ok@example.com");
    let attempt = |email: &str, password: &str, forwarded: &str| {
        let req = srv
            .anon("POST", "/v1/auth/login")
            .set("Content-Type", "application/json")
            .set("X-Forwarded-For", forwarded);
        send(
            req,
            Some(
                json!({"email": email, "password": password})
                    .to_string()
                    .as_bytes(),
            ),
        )
    };
    // Each attempt claims another address, but without a trusted proxy the socket's address
    // (127.0.0.1) is the one counted.
    attempt("x1@example.com", "wrong password!", "10.1.0.1").expect_error(401, "unauthenticated");
    attempt("x2@example.com", "wrong password!", "10.1.0.2").expect_error(401, "unauthenticated");
    attempt("ok@example.com", "correct horse battery", "10.1.0.3")
        .expect_error(429, "rate_limited");
}

#[test]
fn profiles_at_signup_in_me_and_in_rules() {
    let srv = start();
    let profile = json!({"name": "Ada", "avatar": "https://example.com/ada.png", "team": "red"});
    let session = post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "ada@example.com", "password": "correct horse battery", "profile": profile}),
    )
    .expect(201)
    .json;
    assert_eq!(session["user"]["profile"], profile);
    let ada = token(&session).to_string();
    assert_eq!(me(&srv, &ada).expect(200).json["profile"], profile);

    // Without a profile, it is empty; one over 4 KiB is refused and creates no account.
    let bob = signup(&srv, "bob@example.com");
    assert_eq!(bob["user"]["profile"], json!({}));
    let bob = token(&bob).to_string();
    let big = json!({"bio": "x".repeat(5000)});
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "big@example.com", "password": "correct horse battery", "profile": big}),
    )
    .expect_error(400, "validation_failed");
    login(&srv, "big@example.com", "correct horse battery").expect(401);
    // A profile that is not an object is a clear 400.
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "list@example.com", "password": "correct horse battery", "profile": [1]}),
    )
    .expect(400);

    // PATCH /v1/auth/me merges: null removes a key, others are set.
    let patch =
        |token: &str, body: &Value| with_token(&srv, "PATCH", "/v1/auth/me", token, Some(body));
    let updated = patch(
        &ada,
        &json!({"profile": {"avatar": null, "name": "Ada L."}}),
    )
    .expect(200)
    .json;
    assert_eq!(updated["profile"], json!({"name": "Ada L.", "team": "red"}));
    assert_eq!(
        me(&srv, &ada).expect(200).json["profile"],
        updated["profile"]
    );
    patch(&ada, &big).expect(400);
    patch(&ada, &json!({"profile": null})).expect(400);
    patch(&ada, &json!({"profile": "Ada"})).expect(400);
    patch(&ada, &json!({"profile": big})).expect_error(400, "validation_failed");
    assert_eq!(
        me(&srv, &ada).expect(200).json["profile"],
        updated["profile"]
    );
    with_token(
        &srv,
        "PATCH",
        "/v1/auth/me",
        &srv.key,
        Some(&json!({"profile": {}})),
    )
    .expect(400);
    send(
        srv.anon("PATCH", "/v1/auth/me")
            .set("Content-Type", "application/json"),
        Some(br#"{"profile": {}}"#),
    )
    .expect(401);

    // Rules read the profile as `auth.profile`, as it is now, not as it was at sign-in.
    srv.put(
        "/v1/admin/collections/red",
        &json!({"rules": {"create": "auth.profile.team == \"red\"", "read": "auth != null"}}),
    )
    .expect(200);
    let create = |token: &str| {
        with_token(
            &srv,
            "POST",
            "/v1/collections/red/docs",
            token,
            Some(&json!({})),
        )
    };
    create(&ada).expect(201);
    create(&bob).expect_error(403, "forbidden");
    patch(&bob, &json!({"profile": {"team": "red"}})).expect(200);
    create(&bob).expect(201);
    patch(&ada, &json!({"profile": {"team": null}})).expect(200);
    create(&ada).expect_error(403, "forbidden");
}

#[test]
fn an_address_is_one_account_whatever_its_case() {
    let srv = start();
    let session = signup(&srv, "Ada.Lovelace@Example.com");
    let id = session["user"]["id"].clone();
    // Kept as typed (the domain lower-cased) for display and mail.
    assert_eq!(session["user"]["email"], "Ada.Lovelace@example.com");
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "ada.lovelace@EXAMPLE.COM", "password": "another fine passphrase"}),
    )
    .expect_error(409, "conflict");
    for typed in ["ada.lovelace@example.com", "ADA.LOVELACE@example.com"] {
        let logged = login(&srv, typed, "correct horse battery").expect(200);
        assert_eq!(logged.json["user"]["id"], id);
    }
    // A reset asked in another case goes to the stored address.
    post_json(
        &srv,
        "/v1/auth/password/reset/request",
        None,
        &json!({"email": "ADA.lovelace@example.com"}),
    )
    .expect(202);
    mailed_token(&srv, "Ada.Lovelace@example.com", "Reset your password");
    // An admin gives another address; the old one (in any case) is free again.
    let path = format!("/v1/admin/users/{}/email", id.as_str().unwrap());
    let renamed = srv
        .put(&path, &json!({"email": "countess@example.com"}))
        .expect(200);
    assert_eq!(renamed.json["email"], "countess@example.com");
    assert_eq!(renamed.json["email_verified"], false);
    login(&srv, "Countess@Example.com", "correct horse battery").expect(200);
    login(&srv, "ada.lovelace@example.com", "correct horse battery").expect(401);
    signup(&srv, "ADA.LOVELACE@example.com");
    srv.put(&path, &json!({"email": "Ada.LOVELACE@example.com"}))
        .expect_error(409, "conflict");
}

#[test]
fn a_data_directory_with_case_sensitive_addresses_is_migrated_and_collisions_are_listed() {
    if crate::common::cluster_backend() {
        return;
    }
    let srv = start();
    let ada = signup(&srv, "Ada@example.com")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = signup(&srv, "Bob@example.com")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = srv.stop();
    // As an earlier version left them: keyed by the address as typed, and a second account
    // whose address differs from Ada's only in case.
    let twin = "01JZZZZZZZZZZZZZZZZZZZZZZZ".to_string();
    let (ada_c, bob_c, twin_c) = (ada.clone(), bob.clone(), twin.clone());
    crate::common::edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        let user = engine
            .get(Keyspace::System, format!("user:{ada_c}").as_bytes())
            .await
            .unwrap()
            .unwrap();
        let mut record: Value = serde_json::from_slice(&user).unwrap();
        record["id"] = json!(twin_c);
        record["email"] = json!("ada@example.com");
        let mut txn = engine.begin().await.unwrap();
        txn.put(
            Keyspace::System,
            format!("user:{twin_c}").into_bytes(),
            serde_json::to_vec(&record).unwrap(),
        );
        txn.put(
            Keyspace::System,
            b"email:ada@example.com".to_vec(),
            twin_c.clone().into_bytes(),
        );
        txn.put(
            Keyspace::System,
            b"email:Ada@example.com".to_vec(),
            ada_c.into_bytes(),
        );
        txn.delete(Keyspace::System, b"email:bob@example.com".to_vec());
        txn.put(
            Keyspace::System,
            b"email:Bob@example.com".to_vec(),
            bob_c.into_bytes(),
        );
        txn.delete(
            Keyspace::System,
            b"accmeta:emails-case-insensitive".to_vec(),
        );
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, fast);
    let password = "correct horse battery";
    // Bob's address moved to its lower-case key: any case finds him.
    for typed in ["bob@example.com", "Bob@example.com", "BOB@example.com"] {
        assert_eq!(
            login(&srv, typed, password).expect(200).json["user"]["id"],
            bob
        );
    }
    // Ada and her twin collide: each signs in with its exact address, and an admin sees both.
    assert_eq!(
        login(&srv, "Ada@example.com", password).expect(200).json["user"]["id"],
        ada
    );
    assert_eq!(
        login(&srv, "ada@example.com", password).expect(200).json["user"]["id"],
        twin
    );
    let listed = srv.get("/v1/admin/email-collisions").expect(200).json;
    assert_eq!(
        listed["items"],
        json!([{"email": "ada@example.com", "users": [
            {"id": ada, "email": "Ada@example.com"},
            {"id": twin, "email": "ada@example.com"}]}])
    );
    post_json(
        &srv,
        "/v1/auth/signup",
        None,
        &json!({"email": "ADA@example.com", "password": "another fine passphrase"}),
    )
    .expect_error(409, "conflict");
    // Deleting the twin settles it: Ada takes the lower-case key.
    srv.delete(&format!("/v1/admin/users/{twin}")).expect(204);
    assert_eq!(
        srv.get("/v1/admin/email-collisions").expect(200).json["items"],
        json!([])
    );
    for typed in ["ada@example.com", "ADA@example.com"] {
        assert_eq!(
            login(&srv, typed, password).expect(200).json["user"]["id"],
            ada
        );
    }
    // A restart migrates nothing again.
    let dir = srv.stop();
    let srv = TestServer::start_in(dir, fast);
    assert_eq!(
        login(&srv, "bob@example.com", password).expect(200).json["user"]["id"],
        bob
    );
}

/// The code an authenticator app shows for `secret` (base32) at `step` steps from now.
pub(crate) fn totp_code(secret: &str, steps_from_now: i64) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_string())
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        bytes,
        None,
        String::new(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    totp.generate((now + 30 * steps_from_now) as u64)
}

fn verify_mfa(srv: &TestServer, body: &Value) -> Resp {
    post_json(srv, "/v1/auth/mfa/verify", None, body)
}

#[test]
fn totp_turns_a_login_into_a_challenge_that_a_code_or_a_recovery_code_answers_once() {
    let srv = start();
    let session = signup(&srv, "mfa@example.com");
    let t = token(&session).to_string();
    let id = session["user"]["id"].as_str().unwrap().to_string();
    let password = "correct horse battery";

    let enrolled = with_token(&srv, "POST", "/v1/auth/mfa/totp/enroll", &t, None)
        .expect(200)
        .json;
    let secret = enrolled["secret"].as_str().unwrap().to_string();
    let uri = enrolled["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(enrolled["qr_svg"].as_str().unwrap().contains("<svg"));
    // Pending: login is unchanged, and a wrong code does not confirm.
    assert!(login(&srv, "mfa@example.com", password).expect(200).json["access_token"].is_string());
    let wrong = json!({"code": totp_code(&secret, -10)});
    with_token(&srv, "POST", "/v1/auth/mfa/totp/confirm", &t, Some(&wrong)).expect(401);
    let code = totp_code(&secret, 0);
    let confirmed = with_token(
        &srv,
        "POST",
        "/v1/auth/mfa/totp/confirm",
        &t,
        Some(&json!({"code": code})),
    )
    .expect(200)
    .json;
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(me(&srv, &t).expect(200).json["mfa_enabled"], true);
    with_token(&srv, "POST", "/v1/auth/mfa/totp/enroll", &t, None).expect(409);

    // A right password now answers a challenge, not tokens.
    let challenge = login(&srv, "mfa@example.com", password).expect(200).json;
    assert_eq!(challenge["mfa_required"], true);
    assert!(challenge["access_token"].is_null());
    assert_eq!(challenge["methods"], json!(["totp", "recovery_code"]));
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_string();
    // The code that confirmed cannot be replayed; neither code nor both is a 400.
    verify_mfa(&srv, &json!({"mfa_token": mfa_token, "code": code})).expect(401);
    verify_mfa(&srv, &json!({"mfa_token": mfa_token})).expect(400);
    // A recovery code works, once; so does the challenge.
    let signed_in = verify_mfa(
        &srv,
        &json!({"mfa_token": mfa_token, "recovery_code": recovery[0]}),
    )
    .expect(200)
    .json;
    assert_eq!(signed_in["user"]["id"], id);
    me(&srv, token(&signed_in)).expect(200);
    verify_mfa(
        &srv,
        &json!({"mfa_token": mfa_token, "recovery_code": recovery[1]}),
    )
    .expect(401);
    let again = login(&srv, "mfa@example.com", password).expect(200).json["mfa_token"].clone();
    verify_mfa(
        &srv,
        &json!({"mfa_token": again, "recovery_code": recovery[0]}),
    )
    .expect(401);

    // Five wrong codes void a challenge, even for the right answer after them.
    let doomed = login(&srv, "mfa@example.com", password).expect(200).json["mfa_token"].clone();
    for _ in 0..5 {
        verify_mfa(&srv, &json!({"mfa_token": doomed, "code": "000000x"})).expect(401);
    }
    verify_mfa(
        &srv,
        &json!({"mfa_token": doomed, "recovery_code": recovery[2]}),
    )
    .expect(401);

    // The next step's code is taken (clock drift), after which the current one is old.
    let next = totp_code(&secret, 1);
    let token_now = login(&srv, "mfa@example.com", password).expect(200).json["mfa_token"].clone();
    verify_mfa(&srv, &json!({"mfa_token": token_now, "code": next})).expect(200);

    // Off with a recovery code; then a password alone signs in again.
    let off = json!({"recovery_code": recovery[3]});
    with_token(&srv, "DELETE", "/v1/auth/mfa/totp", &t, Some(&off)).expect(204);
    assert!(login(&srv, "mfa@example.com", password).expect(200).json["access_token"].is_string());

    // An admin turns it off for a user who lost everything.
    let enrolled = with_token(&srv, "POST", "/v1/auth/mfa/totp/enroll", &t, None)
        .expect(200)
        .json;
    let code = totp_code(enrolled["secret"].as_str().unwrap(), 0);
    with_token(
        &srv,
        "POST",
        "/v1/auth/mfa/totp/confirm",
        &t,
        Some(&json!({"code": code})),
    )
    .expect(200);
    assert_eq!(
        login(&srv, "mfa@example.com", password).expect(200).json["mfa_required"],
        true
    );
    let reset = srv
        .post(&format!("/v1/admin/users/{id}/mfa/reset"), &json!({}))
        .expect(200);
    assert_eq!(reset.json["mfa_enabled"], false);
    assert!(login(&srv, "mfa@example.com", password).expect(200).json["access_token"].is_string());
}

/// The newest sign-in mail to `to`: its code and its link token.
fn sign_in_mail(srv: &TestServer, to: &str, seen: usize) -> (String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let outbox = srv.get("/v1/admin/outbox?limit=1000").expect(200).json;
        let mails: Vec<Value> = outbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["to"] == to && m["subject"] == "Your sign-in code")
            .cloned()
            .collect();
        if mails.len() > seen {
            // Newest first.
            let body = mails[0]["body"].as_str().unwrap().to_string();
            let words: Vec<&str> = body.split_whitespace().collect();
            let code = words
                .iter()
                .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
                .unwrap()
                .to_string();
            let token = words
                .iter()
                .find_map(|w| {
                    w.split("token=")
                        .last()
                        .filter(|t| t.starts_with("eblink_"))
                })
                .or_else(|| words.iter().copied().find(|w| w.starts_with("eblink_")))
                .unwrap()
                .trim_end_matches([')', '.', '"'])
                .to_string();
            return (code, token);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sign-in mail to {to}: {outbox}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn passwordless(srv: &TestServer, body: &Value) -> Resp {
    post_json(srv, "/v1/auth/passwordless/request", None, body)
}

fn passwordless_verify(srv: &TestServer, body: &Value) -> Resp {
    post_json(srv, "/v1/auth/passwordless/verify", None, body)
}

#[test]
fn a_code_or_a_link_from_a_mail_signs_in_once() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.auth.redirect_urls = vec!["https://app.example.com/auth/".into()];
    });
    let known = signup(&srv, "Known@example.com");
    let id = known["user"]["id"].clone();

    // Known and unknown addresses get the same answer.
    let a = passwordless(&srv, &json!({"email": "known@EXAMPLE.com"})).expect(202);
    let b = passwordless(&srv, &json!({"email": "new@example.com"})).expect(202);
    assert_eq!((a.status, a.text.clone()), (b.status, b.text.clone()));

    // The code signs in as the account (the mail went to its stored address), once.
    let (code, _) = sign_in_mail(&srv, "Known@example.com", 0);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    passwordless_verify(&srv, &json!({"email": "known@example.com", "code": wrong})).expect(401);
    let session = passwordless_verify(&srv, &json!({"email": "known@example.com", "code": code}))
        .expect(200)
        .json;
    assert_eq!(session["user"]["id"], id);
    assert_eq!(session["user"]["email_verified"], true);
    me(&srv, token(&session)).expect(200);
    passwordless_verify(&srv, &json!({"email": "known@example.com", "code": code})).expect(401);

    // An unknown address gets its account by its link, which works once; it has no password.
    let (_, link) = sign_in_mail(&srv, "new@example.com", 0);
    let made = passwordless_verify(&srv, &json!({"token": link}))
        .expect(200)
        .json;
    assert_eq!(made["user"]["email"], "new@example.com");
    assert_eq!(made["user"]["email_verified"], true);
    passwordless_verify(&srv, &json!({"token": link})).expect(401);
    login(&srv, "new@example.com", "").expect(401);

    // A redirect URL must be allowed; the link goes there.
    passwordless(
        &srv,
        &json!({"email": "known@example.com", "redirect_url": "https://evil.example.com/"}),
    )
    .expect(400);
    passwordless(
        &srv,
        &json!({"email": "known@example.com", "redirect_url": "https://app.example.com/auth/done"}),
    )
    .expect(202);
    let mails = srv.get("/v1/admin/outbox?limit=1000").expect(200).json;
    let newest = mails["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["to"] == "Known@example.com" && m["subject"] == "Your sign-in code")
        .cloned();
    let newest = eventually_mail(&srv, newest);
    assert!(
        newest.contains("https://app.example.com/auth/done?token=eblink_"),
        "{newest}"
    );

    // Five wrong codes void the mail; a new request replaces the old one.
    let (code, link) = sign_in_mail(&srv, "Known@example.com", 1);
    for _ in 0..5 {
        passwordless_verify(
            &srv,
            &json!({"email": "known@example.com", "code": "12345x"}),
        )
        .expect(401);
    }
    passwordless_verify(&srv, &json!({"email": "known@example.com", "code": code})).expect(401);
    passwordless_verify(&srv, &json!({"token": link})).expect(401);
    passwordless_verify(&srv, &json!({"code": "123456"})).expect(400);

    // With TOTP on, a mail's code answers with the MFA challenge, like a password.
    let t = token(&session).to_string();
    let enrolled = with_token(&srv, "POST", "/v1/auth/mfa/totp/enroll", &t, None)
        .expect(200)
        .json;
    let first = json!({"code": totp_code(enrolled["secret"].as_str().unwrap(), 0)});
    with_token(&srv, "POST", "/v1/auth/mfa/totp/confirm", &t, Some(&first)).expect(200);
    passwordless(&srv, &json!({"email": "known@example.com"})).expect(202);
    let (code, _) = sign_in_mail(&srv, "Known@example.com", 2);
    let challenge = passwordless_verify(&srv, &json!({"email": "known@example.com", "code": code}))
        .expect(200)
        .json;
    assert_eq!(challenge["mfa_required"], true);
    assert!(challenge["access_token"].is_null());
}

/// The newest mail's body, once it exists.
fn eventually_mail(srv: &TestServer, first: Option<Value>) -> String {
    if let Some(mail) = first.filter(|m| m["body"].as_str().unwrap().contains("app.example.com")) {
        return mail["body"].as_str().unwrap().to_string();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mails = srv.get("/v1/admin/outbox?limit=1000").expect(200).json;
        if let Some(body) = mails["items"].as_array().unwrap().iter().find_map(|m| {
            m["body"]
                .as_str()
                .filter(|b| b.contains("app.example.com"))
                .map(str::to_string)
        }) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no mail with the redirect"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sign_in_mails_expire_and_are_throttled_alike_for_known_and_unknown_addresses() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.auth.passwordless_ttl_secs = 1;
        c.auth.mails_per_address_per_hour = 2;
    });
    passwordless(&srv, &json!({"email": "late@example.com"})).expect(202);
    let (code, _) = sign_in_mail(&srv, "late@example.com", 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    passwordless_verify(&srv, &json!({"email": "late@example.com", "code": code})).expect(401);
    // The address's window is full; an unknown address's fills the same way.
    passwordless(&srv, &json!({"email": "late@example.com"})).expect(202);
    let known = passwordless(&srv, &json!({"email": "LATE@example.com"})).expect(429);
    passwordless(&srv, &json!({"email": "nobody@example.com"})).expect(202);
    passwordless(&srv, &json!({"email": "nobody@example.com"})).expect(202);
    let unknown = passwordless(&srv, &json!({"email": "nobody@example.com"})).expect(429);
    assert_eq!(known.json, unknown.json);
}

#[test]
fn anonymous_accounts_are_seen_by_rules_upgrade_in_place_and_expire() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        // Deadlines are whole seconds: 4 leaves a refresh (which moves a deadline with less
        // than half left) a second before the pruning could see it passed.
        c.auth.anonymous_ttl_secs = 4;
        c.auth.prune_interval_secs = 1;
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
    });
    // Account deletions reach webhooks, a pruned guest's too.
    let deletions = crate::webhooks::Receiver::start();
    srv.post(
        "/v1/admin/webhooks",
        &json!({"url": deletions.url(), "accounts": true, "events": ["delete"]}),
    )
    .expect(201);
    srv.put(
        "/v1/admin/collections/drafts",
        &json!({"rules": {
            "read": "auth != null && doc.owner == auth.id",
            "create": "auth != null",
            "update": "auth != null && doc.owner == auth.id",
            "delete": "auth != null && doc.owner == auth.id",
        }}),
    )
    .expect(200);
    srv.put(
        "/v1/admin/collections/posts",
        &json!({"rules": {"read": "true", "create": "auth != null && !auth.anonymous",
            "update": "false", "delete": "false"}}),
    )
    .expect(200);

    let guest = post_json(&srv, "/v1/auth/anonymous", None, &json!({}))
        .expect(201)
        .json;
    let t = token(&guest).to_string();
    let id = guest["user"]["id"].clone();
    assert_eq!(guest["user"]["email"], Value::Null);
    assert_eq!(guest["user"]["anonymous"], true);
    let draft = with_token(
        &srv,
        "POST",
        "/v1/collections/drafts/docs",
        &t,
        Some(&json!({"data": {"text": "hi"}})),
    )
    .expect(201)
    .json;
    assert_eq!(draft["owner"], id);
    with_token(
        &srv,
        "POST",
        "/v1/collections/posts/docs",
        &t,
        Some(&json!({"data": {}})),
    )
    .expect(403);

    // Upgrading keeps the id (and so the draft), and the session; rules see a regular user.
    post_json(
        &srv,
        "/v1/auth/upgrade",
        Some(&t),
        &json!({"email": "Known@example.com", "password": "correct horse battery"}),
    )
    .expect(200);
    let upgraded = me(&srv, &t).expect(200).json;
    assert_eq!(upgraded["id"], id);
    assert_eq!(upgraded["anonymous"], false);
    assert_eq!(upgraded["email"], "Known@example.com");
    let path = format!(
        "/v1/collections/drafts/docs/{}",
        draft["id"].as_str().unwrap()
    );
    with_token(&srv, "GET", &path, &t, None).expect(200);
    with_token(
        &srv,
        "POST",
        "/v1/collections/posts/docs",
        &t,
        Some(&json!({"data": {}})),
    )
    .expect(201);
    assert_eq!(
        login(&srv, "known@example.com", "correct horse battery")
            .expect(200)
            .json["user"]["id"],
        id
    );
    // An address that has an account cannot be taken by another guest.
    let other = post_json(&srv, "/v1/auth/anonymous", None, &json!({}))
        .expect(201)
        .json;
    post_json(
        &srv,
        "/v1/auth/upgrade",
        Some(token(&other)),
        &json!({"email": "known@EXAMPLE.com", "password": "correct horse battery"}),
    )
    .expect_error(409, "conflict");

    // A passwordless sign-in sent with a guest's token upgrades that guest.
    let by_link = post_json(&srv, "/v1/auth/anonymous", None, &json!({}))
        .expect(201)
        .json;
    passwordless(&srv, &json!({"email": "linked@example.com"})).expect(202);
    let (code, _) = sign_in_mail(&srv, "linked@example.com", 0);
    let signed = post_json(
        &srv,
        "/v1/auth/passwordless/verify",
        Some(token(&by_link)),
        &json!({"email": "linked@example.com", "code": code}),
    )
    .expect(200)
    .json;
    assert_eq!(signed["user"]["id"], by_link["user"]["id"]);
    assert_eq!(signed["user"]["email_verified"], true);

    // A guest nobody refreshes is deleted after its time; one that refreshes, and the upgraded
    // ones, stay.
    // Made now, so its first refresh comes before its deadline whatever the steps above took.
    let kept = post_json(&srv, "/v1/auth/anonymous", None, &json!({}))
        .expect(201)
        .json;
    let mut kept_refresh = kept["refresh_token"].as_str().unwrap().to_string();
    let other_id = other["user"]["id"].as_str().unwrap().to_string();
    let mut refresh_kept = || {
        let next = post_json(
            &srv,
            "/v1/auth/refresh",
            None,
            &json!({"refresh_token": kept_refresh}),
        )
        .expect(200)
        .json;
        kept_refresh = next["refresh_token"].as_str().unwrap().to_string();
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while srv.get(&format!("/v1/admin/users/{other_id}")).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest was not pruned"
        );
        refresh_kept();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Longer than the deadline: only the refreshes keep it.
    for _ in 0..20 {
        refresh_kept();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    srv.get(&format!(
        "/v1/admin/users/{}",
        kept["user"]["id"].as_str().unwrap()
    ))
    .expect(200);
    me(&srv, token(&other)).expect(401);
    let deleted = deletions.wait_for(1)[0].json();
    assert_eq!(deleted["type"], "account.delete");
    assert_eq!(deleted["data"]["user"]["id"], other_id.as_str());
    srv.get(&format!("/v1/admin/users/{}", id.as_str().unwrap()))
        .expect(200);
    with_token(&srv, "GET", &path, &t, None).expect(200);
}

/// Signs in `email` from a device named by its `User-Agent`; returns the session.
fn login_from(srv: &TestServer, email: &str, agent: &str) -> Value {
    let body = json!({"email": email, "password": "correct horse battery"});
    let req = srv
        .anon("POST", "/v1/auth/login")
        .set("Content-Type", "application/json")
        .set("User-Agent", agent);
    send(req, Some(body.to_string().as_bytes()))
        .expect(200)
        .json
}

#[test]
fn sessions_are_listed_per_user_and_revoked_one_by_one_or_all_at_once() {
    let srv = start();
    let user = signup(&srv, "devices@example.com")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    signup(&srv, "other@example.com");
    let phone = login_from(&srv, "devices@example.com", "Phone/1.0");
    let laptop = login_from(&srv, "devices@example.com", "Laptop/2.0");
    let token = |s: &Value, k: &str| s[k].as_str().unwrap().to_string();
    let listed = |path: &str, bearer: Option<&str>| -> Vec<Value> {
        let resp = match bearer {
            Some(t) => with_token(&srv, "GET", path, t, None),
            None => srv.get(path),
        };
        resp.expect(200).json["items"].as_array().unwrap().clone()
    };
    let admin_path = format!("/v1/admin/users/{user}/sessions");

    // Newest first, with where and when each began; the signup's login is the third.
    let sessions = listed(&admin_path, None);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(sessions[0]["user_agent"], "Laptop/2.0");
    assert_eq!(sessions[1]["user_agent"], "Phone/1.0");
    assert_eq!(sessions[0]["ip"], "127.0.0.1");
    for s in &sessions {
        for field in ["id", "created_at", "last_used_at", "expires_at"] {
            assert!(s[field].is_string(), "{field} in {s}");
        }
    }
    let phone_session = token(&sessions[1], "id");
    // The user sees the same list; another user sees neither it nor ends its sessions.
    let own = listed("/v1/auth/sessions", Some(&token(&laptop, "access_token")));
    assert_eq!(own, sessions);
    let other = crate::common::login_token(&srv, "other@example.com");
    with_token(&srv, "GET", &admin_path, &other, None).expect_error(403, "forbidden");
    with_token(
        &srv,
        "DELETE",
        &format!("/v1/auth/sessions/{phone_session}"),
        &other,
        None,
    )
    .expect_error(404, "not_found");
    send(srv.anon("GET", "/v1/auth/sessions"), None).expect(401);

    // A refresh keeps the session and records its use.
    let refreshed = post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": token(&phone, "refresh_token")}),
    )
    .expect(200)
    .json;
    assert_eq!(listed(&admin_path, None).len(), 3);

    // Ending the phone's session stops its refresh token; the others keep working.
    srv.delete(&format!("{admin_path}/{phone_session}"))
        .expect(204);
    post_json(
        &srv,
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": token(&refreshed, "refresh_token")}),
    )
    .expect(401);
    let left = listed(&admin_path, None);
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|s| s["id"] != phone_session.as_str()));
    srv.delete(&format!("{admin_path}/{phone_session}"))
        .expect_error(404, "not_found");

    // A user ends one of their own sessions.
    let laptop_session = token(&left[0], "id");
    with_token(
        &srv,
        "DELETE",
        &format!("/v1/auth/sessions/{laptop_session}"),
        &token(&laptop, "access_token"),
        None,
    )
    .expect(204);
    assert_eq!(listed(&admin_path, None).len(), 1);

    // Ending all of them stops every access token at once too.
    let fresh = login_from(&srv, "devices@example.com", "Tablet/3.0");
    srv.delete(&admin_path).expect(204);
    assert!(listed(&admin_path, None).is_empty());
    with_token(
        &srv,
        "GET",
        "/v1/auth/me",
        &token(&fresh, "access_token"),
        None,
    )
    .expect(401);
    srv.delete("/v1/admin/users/nobody/sessions")
        .expect_error(404, "not_found");
}

#[test]
fn logins_from_before_sessions_were_listed_are_indexed_at_start() {
    let srv = start();
    let user = signup(&srv, "early@example.com")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/admin/users/{user}/sessions");
    let before = srv.get(&path).expect(200).json["items"].clone();
    assert_eq!(before.as_array().unwrap().len(), 1);
    let family = before[0]["id"].as_str().unwrap().to_string();
    let dir = srv.stop();
    // As an earlier version left it: the family, but no per-user index.
    crate::common::edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        let mut txn = engine.begin().await.unwrap();
        let mut key = format!("userfamily:{user}").into_bytes();
        key.push(0);
        key.extend_from_slice(family.as_bytes());
        txn.delete(Keyspace::System, key);
        txn.delete(Keyspace::System, b"accmeta:families-indexed".to_vec());
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, fast);
    assert_eq!(srv.get(&path).expect(200).json["items"], before);
}

#[test]
fn admins_create_users_and_find_them_by_the_start_of_their_address() {
    let srv = start();
    let made = srv
        .post(
            "/v1/admin/users",
            &json!({"email": "Zed@Example.com", "password": "correct horse battery", "role": "admin",
                    "profile": {"name": "Zed"}, "email_verified": true}),
        )
        .expect(201)
        .json;
    assert_eq!(made["role"], "admin");
    assert_eq!(made["email_verified"], true);
    assert_eq!(made["profile"]["name"], "Zed");
    // No session started for them; they sign in themselves.
    assert!(made.get("access_token").is_none());
    post_json(
        &srv,
        "/v1/auth/login",
        None,
        &json!({"email": "zed@example.com", "password": "correct horse battery"}),
    )
    .expect(200);
    srv.post(
        "/v1/admin/users",
        &json!({"email": "zed@example.com", "password": "correct horse battery"}),
    )
    .expect_error(409, "conflict");
    srv.post(
        "/v1/admin/users",
        &json!({"email": "x@example.com", "password": "correct horse battery", "role": "root"}),
    )
    .expect(400);
    srv.post(
        "/v1/admin/users",
        &json!({"email": "x@example.com", "password": "short"}),
    )
    .expect(400);
    let user = signup_token(&srv, "ann-0@example.com");
    with_token(
        &srv,
        "POST",
        "/v1/admin/users",
        &user,
        Some(&json!({"email": "y@example.com", "password": "correct horse battery"})),
    )
    .expect_error(403, "forbidden");

    for n in 1..3 {
        srv.post(
            "/v1/admin/users",
            &json!({"email": format!("Ann-{n}@example.com"), "password": "correct horse battery"}),
        )
        .expect(201);
    }
    signup(&srv, "bob@example.com");
    let emails = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_lowercase())
            .collect()
    };
    let first = srv
        .get("/v1/admin/users?email=ANN&limit=2")
        .expect(200)
        .json;
    assert_eq!(emails(&first), ["ann-0@example.com", "ann-1@example.com"]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = srv
        .get(&format!(
            "/v1/admin/users?email=ann&limit=2&cursor={cursor}"
        ))
        .expect(200)
        .json;
    assert_eq!(emails(&rest), ["ann-2@example.com"]);
    assert!(rest["next_cursor"].is_null());
    let none = srv.get("/v1/admin/users?email=nobody").expect(200).json;
    assert!(none["items"].as_array().unwrap().is_empty());
}
