//! Rules and filters checked and tried before they are stored (`/v1/admin/rules/...`), with
//! the server's own parser and in the scope a real request gives a rule.

use crate::common::{signup, signup_token, with_token, TestServer};
use serde_json::{json, Value};

fn check(srv: &TestServer, kind: &str, expression: &str) -> Value {
    srv.post(
        "/v1/admin/rules/check",
        &json!({"kind": kind, "expression": expression}),
    )
    .expect(200)
    .json
}

#[test]
fn expressions_are_checked_as_what_they_are_with_the_column_of_an_error() {
    let srv = TestServer::start();
    assert_eq!(
        check(
            &srv,
            "collection_rule",
            "auth != null && doc.owner == auth.id"
        ),
        json!({"valid": true})
    );
    let broken = check(&srv, "collection_rule", "auth != null &&");
    assert_eq!(broken["valid"], false, "{broken}");
    assert!(broken["message"].is_string(), "{broken}");
    assert_eq!(broken["column"], 16, "{broken}");
    // Each kind has its own names: a bucket rule sees `file`, a `when` sees `before`/`after`,
    // a filter sees the document's fields.
    assert_eq!(
        check(&srv, "bucket_rule", "file == null || file.owner == auth.id")["valid"],
        true
    );
    assert_eq!(
        check(&srv, "bucket_rule", "doc.owner == auth.id")["valid"],
        false
    );
    assert_eq!(
        check(&srv, "when", "after.data.status == \"paid\"")["valid"],
        true
    );
    assert_eq!(check(&srv, "when", "auth != null")["valid"], false);
    assert_eq!(
        check(&srv, "filter", "data.n >= 3 && owner == \"u1\"")["valid"],
        true
    );
    let filter = check(&srv, "filter", "data.n >= ");
    assert_eq!(
        (filter["valid"].clone(), filter["column"].clone()),
        (json!(false), json!(11))
    );
    // An empty collection rule allows everyone, as stored.
    assert_eq!(check(&srv, "collection_rule", "")["valid"], true);
    // The limits of a stored rule apply.
    let long = format!("auth.id == \"{}\"", "x".repeat(17 * 1024));
    assert_eq!(check(&srv, "collection_rule", &long)["valid"], false);

    srv.post(
        "/v1/admin/rules/check",
        &json!({"kind": "sql", "expression": "1"}),
    )
    .expect_error(400, "validation_failed");
    let user = signup_token(&srv, "eve@example.com");
    with_token(
        &srv,
        "POST",
        "/v1/admin/rules/check",
        &user,
        Some(&json!({"kind": "filter", "expression": "true"})),
    )
    .expect_error(403, "forbidden");
}

#[test]
fn a_rule_is_tried_for_a_user_a_document_and_the_data_of_a_write() {
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {"read": "doc.owner == auth.id",
                          "create": "auth != null && request.data.title != \"\""}}),
    )
    .expect(200);
    let ada = signup(&srv, "ada@example.com");
    let ada_id = ada["user"]["id"].as_str().unwrap().to_string();
    let bob_id = signup(&srv, "bob@example.com")["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let note = with_token(
        &srv,
        "POST",
        "/v1/collections/notes/docs",
        ada["access_token"].as_str().unwrap(),
        Some(&json!({"title": "mine"})),
    )
    .expect(201)
    .json;
    let note_id = note["id"].as_str().unwrap();
    let trial = |body: Value| srv.post("/v1/admin/rules/test", &body).expect(200).json;

    // The collection's own read rule, as each caller.
    let as_ada = trial(json!({"collection": "notes", "operation": "read",
                              "document_id": note_id, "user_id": ada_id}));
    assert_eq!(as_ada["allowed"], true, "{as_ada}");
    assert_eq!(as_ada["admin"], false);
    assert_eq!(as_ada["auth"]["email"], "ada@example.com");
    assert_eq!(as_ada["document"]["id"], note_id);
    let as_bob = trial(json!({"collection": "notes", "operation": "read",
                              "document_id": note_id, "user_id": bob_id}));
    assert_eq!(as_bob["allowed"], false, "{as_bob}");
    let anonymous =
        trial(json!({"collection": "notes", "operation": "read", "document_id": note_id}));
    assert_eq!(
        (anonymous["allowed"].clone(), anonymous["auth"].clone()),
        (json!(false), Value::Null)
    );
    // A create sees the data it would write, and no stored document.
    for (title, allowed) in [("", false), ("x", true)] {
        let create = trial(json!({"collection": "notes", "operation": "create",
                                  "data": {"title": title}, "user_id": bob_id}));
        assert_eq!(create["allowed"], allowed, "{create}");
        assert_eq!(create["document"], Value::Null);
    }
    // A rule not stored yet, before it is saved.
    let draft = trial(json!({"collection": "notes", "operation": "update",
                             "rule": "auth.email == \"bob@example.com\"",
                             "document_id": note_id, "data": {"title": "b"}, "user_id": bob_id}));
    assert_eq!(draft["allowed"], true, "{draft}");
    // The update rule is unset: admins only, so a user is refused and an admin is told so.
    let update = trial(json!({"collection": "notes", "operation": "update",
                              "document_id": note_id, "user_id": ada_id}));
    assert_eq!(update["allowed"], false, "{update}");
    srv.put(
        &format!("/v1/admin/users/{bob_id}/role"),
        &json!({"role": "admin"}),
    )
    .expect(200);
    let admin = trial(json!({"collection": "notes", "operation": "update", "user_id": bob_id}));
    assert_eq!(admin["admin"], true, "{admin}");

    // What cannot be tried says why.
    let bad = srv
        .post(
            "/v1/admin/rules/test",
            &json!({"collection": "notes", "operation": "read", "rule": "doc.owner =="}),
        )
        .expect(400)
        .json;
    assert!(bad["error"]["details"]["column"].is_number(), "{bad}");
    srv.post(
        "/v1/admin/rules/test",
        &json!({"collection": "notes", "operation": "read", "user_id": "nobody"}),
    )
    .expect(404);
    srv.post(
        "/v1/admin/rules/test",
        &json!({"collection": "notes", "operation": "read", "data": []}),
    )
    .expect(400);
}
