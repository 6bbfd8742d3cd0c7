//! The document routes, endpoint by endpoint, over HTTP.

use crate::common::{send, TestServer};
use serde_json::{json, Value};

#[test]
fn create_get_replace_patch_delete() {
    let srv = TestServer::start();
    let created = srv
        .post(
            "/v1/collections/posts/docs",
            &json!({"title": "hi", "n": 7}),
        )
        .expect(201);
    let doc = created.json.clone();
    let id = doc["id"].as_str().unwrap().to_string();
    assert_eq!(doc["collection"], "posts");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["owner"], Value::Null);
    assert_eq!(doc["data"], json!({"title": "hi", "n": 7}));
    assert_eq!(created.header("etag"), Some("\"1\""));
    let created_at = doc["created_at"].as_str().unwrap();
    assert_eq!(
        created_at.len(),
        24,
        "RFC 3339 with milliseconds: {created_at}"
    );
    assert!(created_at.ends_with('Z'));

    let path = format!("/v1/collections/posts/docs/{id}");
    let got = srv.get(&path).expect(200);
    assert_eq!(got.json, doc);
    assert_eq!(got.header("etag"), Some("\"1\""));

    let replaced = srv.put(&path, &json!({"title": "new"})).expect(200);
    assert_eq!(replaced.json["version"], 2);
    assert_eq!(replaced.json["data"], json!({"title": "new"}));
    assert_eq!(replaced.json["created_at"], doc["created_at"]);

    let patched = srv
        .json(
            "PATCH",
            &path,
            &json!({"n": 1, "title": null, "tags": {"a": true}}),
        )
        .expect(200);
    assert_eq!(patched.json["version"], 3);
    assert_eq!(patched.json["data"], json!({"n": 1, "tags": {"a": true}}));

    // The merge-patch media type is accepted too.
    let req = srv
        .admin("PATCH", &path)
        .set("Content-Type", "application/merge-patch+json");
    let patched = send(req, Some(br#"{"tags": {"b": 1}}"#)).expect(200);
    assert_eq!(patched.json["data"]["tags"], json!({"a": true, "b": 1}));

    srv.delete(&path).expect(204);
    srv.get(&path).expect_error(404, "not_found");
    srv.delete(&path).expect_error(404, "not_found");
    srv.patch(&path, &json!({"n": 2}))
        .expect_error(404, "not_found");
}

#[test]
fn put_creates_with_the_given_id() {
    let srv = TestServer::start();
    let created = srv
        .put("/v1/collections/users/docs/alice", &json!({"age": 30}))
        .expect(201);
    assert_eq!(created.json["id"], "alice");
    assert_eq!(created.json["version"], 1);
    srv.put("/v1/collections/users/docs/alice", &json!({"age": 31}))
        .expect(200);
}

#[test]
fn if_match_guards_every_write() {
    let srv = TestServer::start();
    let path = "/v1/collections/c/docs/d1";
    srv.put(path, &json!({"v": 1})).expect(201);
    let with = |method: &str, tag: &str, body: Option<&str>| {
        let mut req = srv.admin(method, path).set("If-Match", tag);
        if body.is_some() {
            req = req.set("Content-Type", "application/json");
        }
        send(req, body.map(str::as_bytes))
    };
    let err = with("PUT", "\"7\"", Some(r#"{"v": 2}"#)).expect_error(412, "precondition_failed");
    assert_eq!(err.json["error"]["details"]["version"], 1);
    with("PATCH", "\"2\"", Some(r#"{"v": 2}"#)).expect_error(412, "precondition_failed");
    with("DELETE", "\"2\"", None).expect_error(412, "precondition_failed");
    with("PUT", "\"1\"", Some(r#"{"v": 2}"#)).expect(200);
    // Leniently, a bare number.
    with("PATCH", "2", Some(r#"{"v": 3}"#)).expect(200);
    with("DELETE", "\"nope\"", None).expect_error(400, "bad_request");
    with("DELETE", "\"3\"", None).expect(204);
    // If-Match on a document that does not exist never matches.
    with("PUT", "\"1\"", Some(r#"{"v": 1}"#)).expect_error(412, "precondition_failed");
}

#[test]
fn system_fields_cannot_be_set_through_data() {
    let srv = TestServer::start();
    let body = json!({"id": "x", "owner": "mallory", "version": 99, "created_at": "1970", "collection": "other"});
    let doc = srv.post("/v1/collections/c/docs", &body).expect(201).json;
    assert_ne!(doc["id"], "x");
    assert_eq!(doc["owner"], Value::Null);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["collection"], "c");
    assert_ne!(doc["created_at"], "1970");
    // The client's fields stay inside data, where they belong.
    assert_eq!(doc["data"], body);
    let path = format!("/v1/collections/c/docs/{}", doc["id"].as_str().unwrap());
    let patched = srv
        .patch(&path, &json!({"version": 1000, "owner": "eve"}))
        .expect(200)
        .json;
    assert_eq!(patched["version"], 2);
    assert_eq!(patched["owner"], Value::Null);
}

#[test]
fn server_ids_increase_in_creation_order() {
    let srv = TestServer::start();
    let ids: Vec<String> = (0..50)
        .map(|i| {
            srv.post("/v1/collections/seq/docs", &json!({"i": i}))
                .expect(201)
                .json["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "strictly increasing");
}

#[test]
fn names_and_ids_are_validated() {
    let srv = TestServer::start();
    let long_name = "a".repeat(65);
    let long_id = "a".repeat(129);
    for path in [
        "/v1/collections/bad.name/docs".to_string(),
        "/v1/collections/bad%20name/docs".to_string(),
        format!("/v1/collections/{long_name}/docs"),
        "/v1/collections/a%2Fb/docs".to_string(),
    ] {
        srv.post(&path, &json!({})).expect_error(400, "bad_request");
        srv.get(&path).expect_error(400, "bad_request");
    }
    for path in [
        "/v1/collections/c/docs/a.b".to_string(),
        "/v1/collections/c/docs/%C3%A9".to_string(),
        format!("/v1/collections/c/docs/{long_id}"),
    ] {
        srv.get(&path).expect_error(400, "bad_request");
        srv.put(&path, &json!({})).expect_error(400, "bad_request");
        srv.delete(&path).expect_error(400, "bad_request");
    }
    // The limits themselves are fine.
    srv.put(
        &format!(
            "/v1/collections/{}/docs/{}",
            "a".repeat(64),
            "b".repeat(128)
        ),
        &json!({}),
    )
    .expect(201);
}

#[test]
fn listing_a_collection_never_written_is_empty() {
    let srv = TestServer::start();
    let page = srv.get("/v1/collections/nothing/docs").expect(200).json;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));
}

#[test]
fn bodies_are_checked() {
    let srv = TestServer::start_with(|c| {
        c.http.max_body_bytes = 64 * 1024;
        c.limits.max_document_bytes = 1000;
    });
    let post = |ct: Option<&str>, body: &[u8]| {
        let mut req = srv.admin("POST", "/v1/collections/c/docs");
        if let Some(ct) = ct {
            req = req.set("Content-Type", ct);
        }
        send(req, Some(body))
    };
    post(Some("application/json"), b"{not json").expect_error(400, "bad_request");
    post(Some("application/json"), b"").expect_error(400, "bad_request");
    post(Some("application/json"), b"[1, 2]").expect_error(400, "validation_failed");
    post(Some("application/json"), b"\"text\"").expect_error(400, "validation_failed");
    post(Some("text/plain"), b"{}").expect_error(415, "unsupported_media_type");
    post(Some("application/x-www-form-urlencoded"), b"a=1")
        .expect_error(415, "unsupported_media_type");
    // No Content-Type at all is read as JSON.
    post(None, b"{}").expect(201);

    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    let err = post(
        Some("application/json"),
        format!("{{\"a\": {deep}}}").as_bytes(),
    )
    .expect_error(400, "validation_failed");
    assert!(err.text.contains("nested"), "{}", err.text);
    let very_deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    post(
        Some("application/json"),
        format!("{{\"a\": {very_deep}}}").as_bytes(),
    )
    .expect_error(400, "validation_failed");

    let big_doc = json!({"s": "x".repeat(2000)}).to_string();
    let err =
        post(Some("application/json"), big_doc.as_bytes()).expect_error(400, "validation_failed");
    assert_eq!(err.json["error"]["details"]["field"], "data");

    let huge = json!({"s": "x".repeat(100 * 1024)}).to_string();
    post(Some("application/json"), huge.as_bytes()).expect_error(413, "payload_too_large");

    // A patch that would grow a document past the limit is refused too.
    let doc = srv
        .post("/v1/collections/c/docs", &json!({"s": "small"}))
        .expect(201)
        .json;
    let path = format!("/v1/collections/c/docs/{}", doc["id"].as_str().unwrap());
    srv.patch(&path, &json!({"t": "y".repeat(990)}))
        .expect_error(400, "validation_failed");
}

#[test]
fn oversized_chunked_body_is_refused_while_streaming() {
    use std::io::{Read, Write};
    let srv = TestServer::start_with(|c| c.http.max_body_bytes = 1024);
    let mut stream = std::net::TcpStream::connect(srv.addr).unwrap();
    let head = format!(
        "POST /v1/collections/c/docs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        srv.key
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = "a".repeat(600);
    for _ in 0..4 {
        let _ = stream.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
}

#[test]
fn unknown_routes_and_methods() {
    let srv = TestServer::start();
    srv.get("/v1/nope").expect_error(404, "not_found");
    srv.get("/v2/collections/c/docs")
        .expect_error(404, "not_found");
    let resp = srv
        .post("/v1/health", &json!({}))
        .expect_error(405, "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("GET"));
    let resp = srv
        .put("/v1/collections/c/docs", &json!({}))
        .expect_error(405, "method_not_allowed");
    assert!(resp.header("allow").unwrap().contains("POST"));
    srv.post("/v1/collections/c/docs/x", &json!({}))
        .expect_error(405, "method_not_allowed");
}
