//! Collection schemas: every write path checks them, a schema change reports the stored
//! documents that do not conform (paged), and can refuse when any does not.

use crate::common::*;
use crate::functions::{call, deploy, guest};
use serde_json::{json, Value};

/// The guestbook's schema: a message of at most 500 characters, optional stars from 1 to 5,
/// nothing else.
fn guestbook() -> Value {
    json!({
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 500},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "author": {"$ref": "#/$defs/person"}
        },
        "additionalProperties": false,
        "$defs": {"person": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}}}}
    })
}

/// The pointers of a refusal's violations.
fn pointers(resp: &Resp) -> Vec<String> {
    let mut out: Vec<String> = resp.json["error"]["details"]["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations: {}", resp.text))
        .iter()
        .map(|v| v["pointer"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn every_write_path_checks_the_schema() {
    let srv = TestServer::start();
    let stored = srv
        .put(
            "/v1/admin/collections/book",
            &json!({"rules": {"read": "", "create": "", "update": "", "delete": ""}, "schema": guestbook()}),
        )
        .expect(200)
        .json;
    assert_eq!(stored["schema"], guestbook());
    assert_eq!(stored["schema_report"]["checked"], 0);

    // Create: each failing field by pointer, with a reason.
    let bad = srv.post(
        "/v1/collections/book/docs",
        &json!({"text": "x".repeat(501), "stars": 6, "extra": true, "author": {"email": "nope"}}),
    );
    let bad = bad.expect_error(400, "validation_failed");
    assert_eq!(bad.json["error"]["details"]["field"], "data");
    assert_eq!(
        pointers(&bad),
        ["", "/author", "/author/email", "/stars", "/text"]
    );
    let messages = bad.json["error"]["details"]["violations"].to_string();
    assert!(messages.contains("longer than 500"), "{messages}");
    // Unicode lengths count characters, not bytes.
    srv.post(
        "/v1/collections/book/docs",
        &json!({"text": "é".repeat(500)}),
    )
    .expect(201);
    let good = srv
        .post(
            "/v1/collections/book/docs",
            &json!({"text": "hello", "stars": 5, "author": {"name": "Ada", "email": "ada@example.com"}}),
        )
        .expect(201)
        .json;
    let id = good["id"].as_str().unwrap();

    // Set (create or replace).
    let resp = srv.put("/v1/collections/book/docs/mine", &json!({"stars": 2}));
    assert_eq!(pointers(&resp.expect_error(400, "validation_failed")), [""]);
    srv.put("/v1/collections/book/docs/mine", &json!({"text": "mine"}))
        .expect(201);
    // Update: the merged result is checked (removing a required field fails).
    let path = format!("/v1/collections/book/docs/{id}");
    let resp = srv.patch(&path, &json!({"text": null}));
    assert_eq!(pointers(&resp.expect_error(400, "validation_failed")), [""]);
    let resp = srv.patch(&path, &json!({"stars": 0}));
    assert_eq!(
        pointers(&resp.expect_error(400, "validation_failed")),
        ["/stars"]
    );
    srv.patch(&path, &json!({"stars": 3})).expect(200);
    assert_eq!(srv.get(&path).expect(200).json["data"]["stars"], 3);

    // A batch with one bad op applies nothing and names the op.
    let resp = srv.post(
        "/v1/batch",
        &json!({"ops": [
            {"op": "create", "collection": "book", "id": "b1", "data": {"text": "fine"}},
            {"op": "create", "collection": "book", "id": "b2", "data": {"text": 7}},
        ]}),
    );
    let resp = resp.expect_error(400, "validation_failed");
    assert_eq!(resp.json["error"]["details"]["op"], 1);
    assert_eq!(pointers(&resp), ["/text"]);
    srv.get("/v1/collections/book/docs/b1").expect(404);

    // A function's write is checked too, and the refusal reaches the guest.
    let request = r#"{"op":"create","collection":"book","data":{"text":""}}"#;
    let body =
        "(local.set $qn (call $call (call $str_ptr (i32.const 0)) (call $str_len (i32.const 0))))
         (local.set $q (call $alloc (local.get $qn)))
         (call $result_read (local.get $q))
         (call $pack (local.get $q) (local.get $qn))";
    deploy(
        &srv,
        "writer",
        &guest(&[request], "", body),
        json!({"triggers": [{"on": "http"}]}),
    );
    let reply = call(&srv, "writer", None, &json!({})).expect(200).json;
    assert_eq!(reply["error"]["code"], "validation_failed", "{reply}");
    assert_eq!(
        srv.get("/v1/admin/collections/book").expect(200).json["documents"],
        3
    );

    // Removing the schema lets anything in again.
    srv.put(
        "/v1/admin/collections/book",
        &json!({"rules": {"read": "", "create": "", "update": "", "delete": ""}}),
    )
    .expect(200);
    srv.post("/v1/collections/book/docs", &json!({"anything": [1, 2]}))
        .expect(201);
}

#[test]
fn a_schema_change_reports_and_can_refuse_what_does_not_conform() {
    let srv = TestServer::start();
    // 30 documents, one in three without a text.
    let ops: Vec<Value> = (0..30)
        .map(|i| {
            let data = if i % 3 == 0 {
                json!({"stars": 1})
            } else {
                json!({"text": format!("note {i}")})
            };
            json!({"op": "create", "collection": "notes", "id": format!("n{i:02}"), "data": data})
        })
        .collect();
    srv.post("/v1/batch", &json!({ "ops": ops })).expect(200);

    // Refused with require_conforming: nothing changes.
    let strict = srv.put(
        "/v1/admin/collections/notes?require_conforming=true",
        &json!({"schema": guestbook()}),
    );
    let strict = strict.expect_error(400, "validation_failed");
    assert!(strict.text.contains("10 of the 30"), "{}", strict.text);
    srv.put(
        "/v1/collections/notes/docs/zz-free",
        &json!({"free": "form"}),
    )
    .expect(201);

    // Accepted otherwise, with a report; the documents stay.
    let info = srv
        .put(
            "/v1/admin/collections/notes",
            &json!({"schema": guestbook()}),
        )
        .expect(200)
        .json;
    let report = &info["schema_report"];
    assert_eq!(report["checked"], 31);
    assert_eq!(report["nonconforming"], 11);
    assert_eq!(report["complete"], true);
    assert_eq!(report["examples"].as_array().unwrap().len(), 11);
    assert_eq!(report["examples"][0]["id"], "n00");
    assert_eq!(report["examples"][0]["violations"][0]["pointer"], "");
    assert_eq!(info["documents"], 31);

    // Paged, in id order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = srv
            .get(&format!(
                "/v1/admin/collections/notes/nonconforming?limit=4{cursor}"
            ))
            .expect(200)
            .json;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).step_by(3).map(|i| format!("n{i:02}")).collect();
    assert_eq!(seen[..10], expected[..]);
    assert_eq!(seen.len(), 11);
    srv.get("/v1/admin/collections/notes/nonconforming?limit=0")
        .expect_error(400, "bad_request");
    srv.get("/v1/admin/collections/plain/nonconforming")
        .expect_error(400, "validation_failed");
}

#[test]
fn schemas_are_checked_and_bounded_when_declared() {
    let srv = TestServer::start();
    let put = |schema: Value| srv.put("/v1/admin/collections/c", &json!({ "schema": schema }));
    let resp = put(json!({"type": 5})).expect_error(400, "validation_failed");
    assert_eq!(resp.json["error"]["details"]["field"], "schema");
    put(json!("a string")).expect_error(400, "validation_failed");
    // Nothing is fetched: a remote $ref does not compile.
    put(json!({"$ref": "https://example.com/schema.json"})).expect_error(400, "validation_failed");
    let huge: serde_json::Map<String, Value> = (0..5000)
        .map(|i| (format!("field{i}"), json!({"type": "string"})))
        .collect();
    let resp = put(json!({"type": "object", "properties": huge}));
    assert!(resp
        .expect_error(400, "validation_failed")
        .text
        .contains("limit"));

    // A pathological pattern runs in linear time: this answers at once instead of
    // backtracking for ages.
    put(json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}))
        .expect(200);
    let text = format!("{}b", "a".repeat(10_000));
    let resp = srv.post("/v1/collections/c/docs", &json!({ "s": text }));
    assert_eq!(
        pointers(&resp.expect_error(400, "validation_failed")),
        ["/s"]
    );
    srv.post("/v1/collections/c/docs", &json!({"s": "aaaa"}))
        .expect(201);
}

#[test]
fn a_stored_schema_that_no_longer_compiles_refuses_writes_until_fixed() {
    if cluster_backend() {
        return;
    }
    let srv = TestServer::start();
    srv.post("/v1/collections/c/docs", &json!({"n": 1}))
        .expect(201);
    // As a config stored by a version that accepted more, written straight into the stopped
    // server's database.
    let dir = srv.stop();
    edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        let mut txn = engine.begin().await.unwrap();
        let config = json!({"indexes": [], "schema": {"type": 5}});
        txn.put(
            Keyspace::Meta,
            b"coll:c".to_vec(),
            config.to_string().into_bytes(),
        );
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, |_| {});
    let info = srv.get("/v1/admin/collections/c").expect(200).json;
    assert!(info["schema_error"].is_string(), "{info}");
    let refused = srv.post("/v1/collections/c/docs", &json!({"n": 2}));
    assert!(refused
        .expect_error(400, "validation_failed")
        .text
        .contains("does not compile"));
    srv.get("/v1/collections/c/docs?limit=10").expect(200);
    srv.put(
        "/v1/admin/collections/c",
        &json!({"schema": {"type": "object"}}),
    )
    .expect(200);
    srv.post("/v1/collections/c/docs", &json!({"n": 2}))
        .expect(201);
}

#[test]
fn the_served_api_document_describes_each_schema() {
    let srv = TestServer::start();
    let plain = srv.get("/v1/openapi.json").expect(200).json;
    srv.put(
        "/v1/admin/collections/book",
        &json!({ "schema": guestbook() }),
    )
    .expect(200);
    let served = srv.get("/v1/openapi.json").expect(200).json;
    let component = &served["components"]["schemas"]["CollectionData_book"];
    assert_eq!(component["required"], json!(["text"]));
    // References inside the schema point inside its component.
    assert_eq!(
        component["properties"]["author"]["$ref"],
        "#/components/schemas/CollectionData_book/$defs/person"
    );
    assert!(served
        .pointer("/components/schemas/CollectionData_book/$defs/person/properties/name")
        .is_some());
    // The rest of the document is unchanged, and `emberbase openapi` (the committed
    // document) has no collection schema.
    let mut without = served.clone();
    without["components"]["schemas"]
        .as_object_mut()
        .unwrap()
        .remove("CollectionData_book");
    assert_eq!(without, plain);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let names = committed["components"]["schemas"].as_object().unwrap();
    assert!(names
        .keys()
        .all(|name| !name.starts_with("CollectionData_")));
}

#[test]
fn rules_and_filters_use_the_functions() {
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {
            "read": "",
            "create": "auth != null && size(request.data.text) <= 10 && matches(request.data.text, \"^[a-zé ]+$\")",
            "update": "!changed(\"data.author\") && time(request.data.due) < now() + duration(\"P7D\")",
            "delete": null,
        }}),
    )
    .expect(200);
    let token = signup_token(&srv, "fn@example.com");
    let create = |data: Value| {
        with_token(
            &srv,
            "POST",
            "/v1/collections/notes/docs",
            &token,
            Some(&data),
        )
    };
    create(json!({"text": "héllo", "author": "ada"})).expect(201);
    create(json!({"text": "far too long text"})).expect_error(403, "forbidden");
    create(json!({"text": "UPPER"})).expect_error(403, "forbidden");
    create(json!({"text": 5})).expect_error(403, "forbidden");
    let id = create(json!({"text": "plan", "author": "ada"}))
        .expect(201)
        .json["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/collections/notes/docs/{id}");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let patch = |data: Value| with_token(&srv, "PATCH", &path, &token, Some(&data));
    patch(json!({ "due": soon })).expect(200);
    patch(json!({"due": "2099-01-01T00:00:00Z"})).expect_error(403, "forbidden");
    patch(json!({"author": "eve", "due": soon})).expect_error(403, "forbidden");

    // Filters too, alone or beside an indexed condition.
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {"read": "", "create": "", "update": "", "delete": ""}, "indexes": [["data.author"]]}),
    )
    .expect(200);
    let list = |filter: &str| {
        srv.get(&format!(
            "/v1/collections/notes/docs?filter={}",
            enc(filter)
        ))
        .expect(200)
        .json["items"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(list("startsWith(data.text, \"hé\")"), 1);
    assert_eq!(list("data.author == \"ada\" && size(data.text) == 4"), 1);
    assert_eq!(list("type(data.due) == \"string\""), 1);
    srv.get(&format!(
        "/v1/collections/notes/docs?filter={}",
        enc("size(data.text, 1) == 2")
    ))
    .expect_error(400, "bad_request");
}
