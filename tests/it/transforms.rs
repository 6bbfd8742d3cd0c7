//! Atomic field transforms: applied in the commit to the stored values (no lost increments),
//! in PATCH and in batches, seen by rules and schemas, and kept apart from merge patches.

use crate::common::*;
use serde_json::{json, Value};

const TRANSFORM: &str = "application/vnd.emberbase.update+json";

/// PATCH with transforms, as `token` (the service key when `None`).
fn transform(srv: &TestServer, path: &str, token: Option<&str>, body: &Value) -> Resp {
    let req = match token {
        Some(t) => srv
            .anon("PATCH", path)
            .set("Authorization", &format!("Bearer {t}")),
        None => srv.admin("PATCH", path),
    };
    send(
        req.set("Content-Type", TRANSFORM),
        Some(body.to_string().as_bytes()),
    )
}

#[test]
fn concurrent_increments_are_never_lost() {
    let srv = TestServer::start();
    srv.put("/v1/collections/counters/docs/likes", &json!({"n": 0}))
        .expect(201);
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| {
                for _ in 0..100 {
                    transform(
                        &srv,
                        "/v1/collections/counters/docs/likes",
                        None,
                        &json!({"transforms": {"n": {"$inc": 1}}}),
                    )
                    .expect(200);
                }
            });
        }
    });
    let doc = srv
        .get("/v1/collections/counters/docs/likes")
        .expect(200)
        .json;
    assert_eq!(doc["data"]["n"], 2000);
    assert_eq!(doc["version"], 2001);
}

#[test]
fn every_transform_in_a_patch_and_in_a_batch() {
    let srv = TestServer::start();
    let path = "/v1/collections/posts/docs/p";
    srv.put(
        path,
        &json!({"likes": 1, "tags": ["a", "b"], "draft": true, "title": "t"}),
    )
    .expect(201);
    let doc = transform(
        &srv,
        path,
        None,
        &json!({
            "data": {"title": "new"},
            "transforms": {
                "likes": {"$inc": 2}, "stats.views": {"$inc": 1.5}, "seen_at": {"$serverTime": true},
                "tags": {"$arrayUnion": ["b", "c"]}, "draft": {"$delete": true},
            }
        }),
    )
    .expect(200)
    .json;
    assert_eq!(
        doc["data"],
        json!({"likes": 3, "stats": {"views": 1.5}, "seen_at": doc["updated_at"], "tags": ["a", "b", "c"], "title": "new"})
    );

    // The same transforms as batch updates, beside other ops, all in one commit.
    let result = srv
        .post(
            "/v1/batch",
            &json!({"ops": [
                {"op": "update", "collection": "posts", "id": "p",
                 "transforms": {"likes": {"$inc": -3}, "tags": {"$arrayRemove": ["a", "c"]}}},
                {"op": "create", "collection": "posts", "id": "q", "data": {"n": 1}},
                {"op": "update", "collection": "posts", "id": "q", "data": {"m": 2},
                 "transforms": {"n": {"$inc": 1}, "at": {"$serverTime": true}, "m": {"$delete": true}}},
            ]}),
        )
        .expect(200)
        .json;
    let p = &result["results"][0]["data"];
    assert_eq!(p["likes"], 0);
    assert_eq!(p["tags"], json!(["b"]));
    let q = &result["results"][2];
    assert_eq!(q["data"], json!({"n": 2, "at": q["updated_at"]}));

    // A transform that does not fit the stored value fails the whole batch, naming the op.
    let failed = srv.post(
        "/v1/batch",
        &json!({"ops": [
            {"op": "update", "collection": "posts", "id": "q", "transforms": {"n": {"$inc": 1}}},
            {"op": "update", "collection": "posts", "id": "p", "transforms": {"tags": {"$inc": 1}}},
        ]}),
    );
    let failed = failed.expect(400);
    assert_eq!(failed.json["error"]["details"]["op"], 1, "{}", failed.text);
    assert!(failed.text.contains("holds an array"), "{}", failed.text);
    let q = srv.get("/v1/collections/posts/docs/q").expect(200).json;
    assert_eq!(q["data"]["n"], 2, "nothing of the failed batch applied");

    // Transforms belong to updates only.
    srv.post(
        "/v1/batch",
        &json!({"ops": [{"op": "set", "collection": "posts", "id": "r", "data": {}, "transforms": {}}]}),
    )
    .expect(400);
}

#[test]
fn rules_and_schemas_see_the_result_and_dollar_keys_stay_data() {
    let srv = TestServer::start_with(fast);
    // Signed-in users may like a post, but a post has at most 3 likes.
    srv.put(
        "/v1/admin/collections/posts",
        &json!({
            "rules": {"read": "auth != null", "create": "auth != null",
                      "update": "auth != null && request.data.likes <= 3", "delete": null},
            "schema": {"type": "object", "properties": {"likes": {"type": "integer", "minimum": 0}}}
        }),
    )
    .expect(200);
    let token = signup_token(&srv, "liker@example.com");
    let path = "/v1/collections/posts/docs/p";
    with_token(&srv, "PUT", path, &token, Some(&json!({"likes": 2}))).expect(201);
    let like = json!({"transforms": {"likes": {"$inc": 1}}});
    transform(&srv, path, Some(&token), &like).expect(200);
    transform(&srv, path, Some(&token), &like).expect_error(403, "forbidden");
    // The schema checks the result: below zero is refused.
    let unlike = json!({"transforms": {"likes": {"$inc": -4}}});
    let refused = transform(&srv, path, None, &unlike).expect_error(400, "validation_failed");
    assert!(refused.text.contains("/likes"), "{}", refused.text);
    assert_eq!(srv.get(path).expect(200).json["data"]["likes"], 3);

    // A plain merge patch keeps `$` keys as data.
    let patched = srv
        .patch(path, &json!({"likes": 1, "note": {"$inc": 1}}))
        .expect(200)
        .json;
    assert_eq!(patched["data"]["note"], json!({"$inc": 1}));

    // If-Match still applies.
    transform(&srv, path, None, &like).expect(200);
    let stale = srv
        .admin("PATCH", path)
        .set("Content-Type", TRANSFORM)
        .set("If-Match", "\"1\"");
    send(stale, Some(like.to_string().as_bytes())).expect_error(412, "precondition_failed");
}

#[test]
fn bad_transforms_get_clear_errors() {
    let srv = TestServer::start();
    let path = "/v1/collections/posts/docs/p";
    srv.put(path, &json!({"title": "x"})).expect(201);
    for (body, says) in [
        (
            json!({"transforms": {"n": {"$inc": "1"}}}),
            "transforms.n: $inc takes a number",
        ),
        (
            json!({"transforms": {"n": {"$push": [1]}}}),
            "unknown transform $push",
        ),
        (
            json!({"transforms": {"title": {"$inc": 1}}}),
            "holds a string",
        ),
        (json!({"transforms": []}), "must be an object"),
        (json!({}), "needs data, transforms or both"),
        (json!({"transform": {}}), "unknown field"),
    ] {
        let resp = transform(&srv, path, None, &body).expect(400);
        assert!(resp.text.contains(says), "{body}: {}", resp.text);
    }
    // An update of a missing document is still a 404.
    transform(
        &srv,
        "/v1/collections/posts/docs/missing",
        None,
        &json!({"transforms": {"n": {"$inc": 1}}}),
    )
    .expect_error(404, "not_found");
}
