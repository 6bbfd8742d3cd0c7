//! Counts and aggregates over HTTP: the read rule per document, groups, `count=true` on lists,
//! the limits, and clear errors. (The property test against a naive computation is in
//! `docs::planner_tests`.)

use crate::common::*;
use serde_json::{json, Value};

/// Writes `docs` into `collection` with the service key, in batches.
fn seed(srv: &TestServer, collection: &str, docs: &[Value]) {
    for chunk in docs.chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|d| json!({"op": "create", "collection": collection, "data": d}))
            .collect();
        srv.post("/v1/batch", &json!({"ops": ops})).expect(200);
    }
}

fn aggregate(srv: &TestServer, token: Option<&str>, collection: &str, query: &str) -> Resp {
    let path = format!("/v1/collections/{collection}/aggregate?{query}");
    match token {
        Some(t) => with_token(srv, "GET", &path, t, None),
        None => srv.get(&path),
    }
}

#[test]
fn aggregates_apply_the_read_rule_and_group() {
    let srv = TestServer::start_with(fast);
    // Everyone signed in reads the orders that are not drafts.
    srv.put(
        "/v1/admin/collections/orders",
        &json!({"rules": {"read": "auth != null && doc.data.status != \"draft\""}}),
    )
    .expect(200);
    seed(
        &srv,
        "orders",
        &[
            json!({"status": "paid", "country": "fr", "total": 10, "at": "2026-01-02T00:00:00Z"}),
            json!({"status": "paid", "country": "fr", "total": 2.5, "at": "2026-01-01T00:00:00Z"}),
            json!({"status": "paid", "country": "de", "total": 7}),
            json!({"status": "open", "country": "de", "total": 1}),
            json!({"status": "draft", "country": "fr", "total": 1000}),
            json!({"status": "open", "total": "n/a"}),
        ],
    );
    let token = signup_token(&srv, "ann@example.com");
    let ops =
        "ops=count,sum:data.total,avg:data.total,min:data.at,max:data.total,count:data.country";

    // Ungrouped: one group, the draft hidden, the non-number ignored by sum and avg.
    let all = aggregate(&srv, Some(&token), "orders", ops)
        .expect(200)
        .json;
    assert_eq!(
        all,
        json!({"groups": [{"key": {}, "values": {
            "count": 5, "sum:data.total": 20.5, "avg:data.total": 5.125,
            "min:data.at": "2026-01-01T00:00:00Z", "max:data.total": "n/a", "count:data.country": 4
        }}]})
    );

    // Grouped, with a filter: groups ordered by key, a missing key is null.
    let query = format!(
        "{ops}&group_by=data.country&filter={}",
        enc("data.status != \"x\"")
    );
    let grouped = aggregate(&srv, Some(&token), "orders", &query)
        .expect(200)
        .json;
    let groups = grouped["groups"].as_array().unwrap();
    let keys: Vec<&Value> = groups.iter().map(|g| &g["key"]["data.country"]).collect();
    assert_eq!(keys, [&Value::Null, &json!("de"), &json!("fr")]);
    assert_eq!(groups[2]["values"]["count"], 2);
    assert_eq!(groups[2]["values"]["sum:data.total"], 12.5);
    assert_eq!(groups[1]["values"]["sum:data.total"], 8);
    assert_eq!(groups[0]["values"]["avg:data.total"], Value::Null);

    // Two paths, and the service key sees the draft.
    let two = aggregate(&srv, None, "orders", "group_by=data.status,data.country")
        .expect(200)
        .json;
    let rows: Vec<(Value, Value, Value)> = two["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"]["data.status"].clone(),
                g["key"]["data.country"].clone(),
                g["values"]["count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!("draft"), json!("fr"), json!(1)),
            (json!("open"), Value::Null, json!(1)),
            (json!("open"), json!("de"), json!(1)),
            (json!("paid"), json!("de"), json!(1)),
            (json!("paid"), json!("fr"), json!(2)),
        ]
    );

    // Nothing matches: without group_by still one group, with zero counts.
    let none = aggregate(
        &srv,
        Some(&token),
        "orders",
        &format!(
            "ops=count,sum:data.total,max:data.total&filter={}",
            enc("data.total > 5000")
        ),
    )
    .expect(200)
    .json;
    assert_eq!(
        none["groups"],
        json!([{"key": {}, "values": {"count": 0, "sum:data.total": 0, "max:data.total": null}}])
    );

    // A list's total counts what the caller may read, over all pages.
    let page = with_token(
        &srv,
        "GET",
        "/v1/collections/orders/docs?count=true&limit=2",
        &token,
        None,
    )
    .expect(200)
    .json;
    assert_eq!(page["total"], 5);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        srv.get("/v1/collections/orders/docs?count=true")
            .expect(200)
            .json["total"],
        6
    );
    // Without count=true there is no total.
    assert!(srv
        .get("/v1/collections/orders/docs")
        .expect(200)
        .json
        .get("total")
        .is_none());

    // Anonymous callers are refused outright, as for lists.
    aggregate(&srv, Some("not-a-token"), "orders", "").expect_error(401, "unauthenticated");
    let anon = srv.anon("GET", "/v1/collections/orders/aggregate");
    send(anon, None).expect_error(403, "forbidden");
}

#[test]
fn aggregates_over_an_index_and_a_scan_agree_and_are_bounded() {
    let srv = TestServer::start_with(|c| c.limits.max_scan_documents = 300);
    srv.put(
        "/v1/admin/collections/indexed",
        &json!({"indexes": [["data.n"]]}),
    )
    .expect(200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while srv.get("/v1/admin/collections/indexed").json["index_states"][0]["state"] != "ready" {
        assert!(
            std::time::Instant::now() < deadline,
            "the index was never built"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let docs: Vec<Value> = (0..400)
        .map(|i| json!({"n": i % 200, "odd": i % 2 == 1}))
        .collect();
    seed(&srv, "indexed", &docs);
    seed(&srv, "plain", &docs);
    let filter = enc("data.n >= 10 && data.n < 60");
    for collection in ["indexed", "plain"] {
        let path = format!("/v1/collections/{collection}/docs?count=true&limit=1&filter={filter}");
        let resp = srv.get(&path);
        if collection == "plain" {
            // 400 documents to examine without an index: over the budget, naming the index.
            let refused = resp.expect_error(400, "bad_request");
            assert!(refused.text.contains("data.n"), "{}", refused.text);
            continue;
        }
        assert_eq!(resp.expect(200).json["total"], 100);
        // Asked again, the total is the kept count; every write that changes it shows.
        let total = || srv.get(&path).expect(200).json["total"].clone();
        assert_eq!(total(), 100);
        let made = srv
            .post("/v1/collections/indexed/docs", &json!({"n": 20}))
            .expect(201)
            .json;
        assert_eq!(total(), 101);
        let doc = format!(
            "/v1/collections/indexed/docs/{}",
            made["id"].as_str().unwrap()
        );
        srv.patch(&doc, &json!({"n": 70})).expect(200);
        assert_eq!(total(), 100);
        srv.patch(&doc, &json!({"n": 59})).expect(200);
        assert_eq!(total(), 101);
        srv.delete(&doc).expect(204);
        assert_eq!(total(), 100);
        let query = format!("filter={filter}&group_by=data.odd&ops=count,sum:data.n");
        let grouped = aggregate(&srv, None, collection, &query).expect(200).json;
        assert_eq!(
            grouped["groups"],
            json!([
                {"key": {"data.odd": false}, "values": {"count": 50, "sum:data.n": 1700}},
                {"key": {"data.odd": true}, "values": {"count": 50, "sum:data.n": 1750}},
            ])
        );
    }
    // Unfiltered, the count is the collection's counter: no scan, no budget.
    let all = aggregate(&srv, None, "plain", "").expect(200).json;
    assert_eq!(all["groups"][0]["values"]["count"], 400);
    // An index range wider than the budget is refused too, since an aggregate reads it all.
    let wide = aggregate(
        &srv,
        None,
        "indexed",
        &format!("ops=sum:data.n&filter={}", enc("data.n >= 0")),
    );
    let wide = wide.expect_error(400, "bad_request");
    assert!(wide.text.contains("more than 300"), "{}", wide.text);
}

#[test]
fn bad_aggregates_get_clear_errors() {
    let srv = TestServer::start();
    let cases = [
        ("ops=median:data.n", "median:data.n"),
        ("ops=sum", "sum"),
        ("ops=sum:data..n", "sum:data..n"),
        ("group_by=data.a,data.b,data.c,data.d,data.e", "at most 4"),
    ];
    for (query, says) in cases {
        let resp = aggregate(&srv, None, "c", query).expect(400);
        assert!(resp.text.contains(says), "{query}: {}", resp.text);
    }
    let resp = aggregate(&srv, None, "c", "filter=data.n%20%3E").expect(400);
    assert!(
        resp.json["error"]["details"]["column"].is_number(),
        "{}",
        resp.text
    );
    srv.get("/v1/collections/c/docs?count=maybe")
        .expect_error(400, "bad_request");
    aggregate(&srv, None, "c", "sort=id").expect_error(400, "bad_request");
    aggregate(&srv, None, "bad name!", "").expect_error(400, "bad_request");

    // More than 1000 groups.
    let docs: Vec<Value> = (0..1001).map(|i| json!({"i": i})).collect();
    seed(&srv, "many", &docs);
    let resp = aggregate(&srv, None, "many", "group_by=data.i").expect_error(400, "bad_request");
    assert!(resp.text.contains("1000 groups"), "{}", resp.text);
    let ok = aggregate(
        &srv,
        None,
        "many",
        &format!("group_by=data.i&filter={}", enc("data.i < 3")),
    )
    .expect(200)
    .json;
    assert_eq!(ok["groups"].as_array().unwrap().len(), 3);
}
