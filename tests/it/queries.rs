//! Filters, sorts, cursors, indexes and batches over HTTP.

use crate::common::{enc, TestServer};
use serde_json::{json, Value};

fn list(srv: &TestServer, collection: &str, query: &str) -> Value {
    srv.get(&format!("/v1/collections/{collection}/docs?{query}"))
        .expect(200)
        .json
}

fn ns(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["data"]["n"].as_i64().unwrap_or(-1))
        .collect()
}

fn seed(srv: &TestServer, collection: &str, count: i64) {
    let ops: Vec<Value> = (0..count)
        .map(|n| {
            json!({"op": "create", "collection": collection,
                   "data": {"n": n, "tag": if n % 2 == 0 { "even" } else { "odd" }, "title": format!("t{n}")}})
        })
        .collect();
    srv.post("/v1/batch", &json!({ "ops": ops })).expect(200);
}

#[test]
fn filters_and_sorts() {
    let srv = TestServer::start();
    seed(&srv, "nums", 20);
    let page = list(
        &srv,
        "nums",
        &format!(
            "filter={}&sort=-data.n",
            enc("data.n >= 15 && data.tag == \"odd\"")
        ),
    );
    assert_eq!(ns(&page), [19, 17, 15]);
    let page = list(
        &srv,
        "nums",
        &format!(
            "filter={}",
            enc("data.n in [3, 1, 2] || data.title contains \"19\"")
        ),
    );
    assert_eq!(ns(&page), [1, 2, 3, 19]);
    let page = list(
        &srv,
        "nums",
        &format!(
            "filter={}&sort=data.tag,-data.n&limit=3",
            enc("!(data.n < 16)")
        ),
    );
    assert_eq!(ns(&page), [18, 16, 19]);

    let bad = |q: &str| {
        srv.get(&format!("/v1/collections/nums/docs?{q}"))
            .expect_error(400, "bad_request")
    };
    let err = bad(&format!("filter={}", enc("data.n >> 3")));
    assert_eq!(err.json["error"]["details"]["column"], 9, "{}", err.text);
    bad(&format!("filter={}", enc("title == 1")));
    bad(&format!("sort={}", enc("data.n,-")));
    bad("limit=0");
    bad("limit=1001");
    bad("limit=ten");
    bad("cursor=%21%21");
    bad(&format!("filter={}", enc(&"data.n == 1 || ".repeat(500))));
}

#[test]
fn cursor_pagination_returns_everything_once_while_inserting() {
    let srv = TestServer::start();
    seed(&srv, "feed", 95);
    for sort in ["", "-data.n", "data.tag,-data.n"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut inserted = 0;
        loop {
            let mut query = format!(
                "limit=10&sort={}&filter={}",
                enc(sort),
                enc("data.n < 1000")
            );
            if let Some(c) = &cursor {
                query.push_str(&format!("&cursor={c}"));
            }
            let page = list(&srv, "feed", &query);
            seen.extend(ns(&page));
            // Writers keep inserting between pages, both before and after the cursor.
            srv.post("/v1/collections/feed/docs", &json!({"n": 1000 + inserted}))
                .expect(201);
            srv.post(
                "/v1/collections/feed/docs",
                &json!({"n": -1 - inserted, "tag": "aaa"}),
            )
            .expect(201);
            inserted += 1;
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut original: Vec<i64> = seen
            .iter()
            .copied()
            .filter(|n| (0..95).contains(n))
            .collect();
        let len = original.len();
        original.sort();
        original.dedup();
        assert_eq!(len, original.len(), "sort {sort:?}: duplicates");
        assert_eq!(
            original,
            (0..95).collect::<Vec<_>>(),
            "sort {sort:?}: every original once"
        );
    }
}

#[test]
fn a_cursor_belongs_to_its_sort() {
    let srv = TestServer::start();
    seed(&srv, "c", 5);
    let page = list(&srv, "c", "limit=2&sort=-data.n");
    let cursor = page["next_cursor"].as_str().unwrap();
    srv.get(&format!(
        "/v1/collections/c/docs?limit=2&sort=data.n&cursor={cursor}"
    ))
    .expect_error(400, "bad_request");
}

#[test]
fn indexes_are_declared_built_and_used() {
    let srv = TestServer::start();
    seed(&srv, "idx", 30);
    let config = json!({"indexes": [["data.n"], ["data.tag", "data.n"]]});
    let stored = srv
        .put("/v1/admin/collections/idx", &config)
        .expect(200)
        .json;
    assert_eq!(stored["name"], "idx");
    assert_eq!(stored["indexes"], config["indexes"]);
    // The same config (the indexes' states move on in the background).
    let read = srv.get("/v1/admin/collections/idx").expect(200).json;
    for field in ["name", "rules", "indexes", "documents"] {
        assert_eq!(read[field], stored[field], "{field}");
    }
    let all = srv.get("/v1/admin/collections").expect(200).json;
    assert_eq!(all["items"][0]["name"], "idx");

    // Writes after the index exists maintain it, including updates and deletes.
    srv.post(
        "/v1/collections/idx/docs",
        &json!({"n": 100, "tag": "even"}),
    )
    .expect(201);
    let doc = list(&srv, "idx", &format!("filter={}", enc("data.n == 4")));
    let id = doc["items"][0]["id"].as_str().unwrap().to_string();
    srv.patch(&format!("/v1/collections/idx/docs/{id}"), &json!({"n": 44}))
        .expect(200);
    let last = list(&srv, "idx", &format!("filter={}", enc("data.n == 29")));
    srv.delete(&format!(
        "/v1/collections/idx/docs/{}",
        last["items"][0]["id"].as_str().unwrap()
    ))
    .expect(204);

    let page = list(
        &srv,
        "idx",
        &format!(
            "filter={}&sort=-data.n&limit=4",
            enc("data.tag == \"even\" && data.n > 10")
        ),
    );
    assert_eq!(ns(&page), [100, 44, 28, 26]);
    assert!(
        list(&srv, "idx", &format!("filter={}", enc("data.n == 4")))["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let page = list(
        &srv,
        "idx",
        &format!("filter={}&sort=data.n", enc("data.n >= 27")),
    );
    assert_eq!(ns(&page), [27, 28, 44, 100]);

    // Indexes can be dropped; queries keep answering the same.
    srv.put("/v1/admin/collections/idx", &json!({})).expect(200);
    let page = list(
        &srv,
        "idx",
        &format!("filter={}&sort=data.n", enc("data.n >= 27")),
    );
    assert_eq!(ns(&page), [27, 28, 44, 100]);

    srv.put("/v1/admin/collections/idx", &json!({"indexes": [["nope"]]}))
        .expect_error(400, "validation_failed");
    srv.put("/v1/admin/collections/idx", &json!({"indexes": [[]]}))
        .expect_error(400, "validation_failed");
    srv.put("/v1/admin/collections/idx", &json!({"unknown": 1}))
        .expect_error(400, "validation_failed");
    let err = srv
        .put(
            "/v1/admin/collections/idx",
            &json!({"rules": {"read": "auth.id == "}}),
        )
        .expect_error(400, "bad_request");
    assert_eq!(err.json["error"]["details"]["rule"], "read");
    assert!(err.json["error"]["details"]["column"].is_number());
    srv.get("/v1/admin/collections/never")
        .expect_error(404, "not_found");
}

#[test]
fn batch_applies_all_or_nothing() {
    let srv = TestServer::start();
    srv.put("/v1/collections/b/docs/keep", &json!({"v": 1}))
        .expect(201);
    let ok = srv
        .post(
            "/v1/batch",
            &json!({"ops": [
                {"op": "create", "collection": "b", "id": "new1", "data": {"v": 1}},
                {"op": "set", "collection": "b", "id": "keep", "data": {"v": 2}},
                {"op": "update", "collection": "b", "id": "new1", "data": {"w": 3}},
                {"op": "create", "collection": "other", "data": {"x": 1}},
                {"op": "delete", "collection": "b", "id": "new1"},
            ]}),
        )
        .expect(200)
        .json;
    let results = ok["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["version"], 1);
    assert_eq!(results[1]["version"], 2);
    assert_eq!(results[2]["data"], json!({"v": 1, "w": 3}));
    assert_eq!(results[4], Value::Null);

    let before = srv.get("/v1/collections/b/docs").expect(200).json;
    for (failing, status, code) in [
        (
            json!({"op": "create", "collection": "b", "id": "keep", "data": {}}),
            409,
            "conflict",
        ),
        (
            json!({"op": "update", "collection": "b", "id": "ghost", "data": {}}),
            404,
            "not_found",
        ),
        (
            json!({"op": "delete", "collection": "b", "id": "keep", "if_version": 9}),
            412,
            "precondition_failed",
        ),
        (
            json!({"op": "set", "collection": "b", "data": {}}),
            400,
            "validation_failed",
        ),
        (
            json!({"op": "set", "collection": "bad name", "id": "x", "data": {}}),
            400,
            "bad_request",
        ),
        (
            json!({"op": "set", "collection": "b", "id": "x", "data": [1]}),
            400,
            "validation_failed",
        ),
    ] {
        let err = srv
            .post(
                "/v1/batch",
                &json!({"ops": [
                    {"op": "create", "collection": "b", "id": "ghost1", "data": {"v": 1}},
                    {"op": "set", "collection": "b", "id": "keep", "data": {"v": 100}},
                    failing,
                ]}),
            )
            .expect_error(status, code);
        assert_eq!(err.json["error"]["details"]["op"], 2, "{}", err.text);
        assert_eq!(
            srv.get("/v1/collections/b/docs").expect(200).json,
            before,
            "no trace of a failed batch"
        );
    }
    srv.post("/v1/batch", &json!({"ops": []}))
        .expect_error(400, "validation_failed");
    srv.post(
        "/v1/batch",
        &json!({"ops": [{"op": "explode", "collection": "b"}]}),
    )
    .expect_error(400, "validation_failed");
    srv.post("/v1/batch", &json!({"nope": []}))
        .expect_error(400, "validation_failed");
}
