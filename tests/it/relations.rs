//! Relations: references checked on write, `expand` with each collection's read rule, and
//! what deleting a referenced document does (restrict, set null, cascade), including a job a
//! crash left.

use crate::common::*;
use serde_json::{json, Value};

/// people <- posts.author (restrict); posts <- comments.post (cascade); people <-
/// comments.author (set null); comments <- likes.comment (cascade). Signed-in users read
/// everything but hidden people.
fn configure(srv: &TestServer) {
    let open = json!({"read": "auth != null", "create": "auth != null", "update": "auth != null", "delete": "auth != null"});
    srv.put(
        "/v1/admin/collections/people",
        &json!({"rules": {"read": "auth != null && doc.data.hidden != true", "create": "auth != null", "update": null, "delete": null}}),
    )
    .expect(200);
    srv.put(
        "/v1/admin/collections/posts",
        &json!({"rules": open, "relations": {"author": {"collection": "people", "on_delete": "restrict"}}}),
    )
    .expect(200);
    let comments = srv
        .put(
            "/v1/admin/collections/comments",
            &json!({"rules": open, "relations": {
                "post": {"collection": "posts", "on_delete": "cascade"},
                "author": {"collection": "people", "on_delete": "set_null"},
            }}),
        )
        .expect(200)
        .json;
    assert_eq!(comments["relations"]["post"]["on_delete"], "cascade");
    srv.put(
        "/v1/admin/collections/likes",
        &json!({"rules": open, "relations": {"comment": {"collection": "comments", "on_delete": "cascade"}, "who": {"collection": "people"}}}),
    )
    .expect(200);
}

fn put(srv: &TestServer, collection: &str, id: &str, data: Value) -> Resp {
    srv.put(&format!("/v1/collections/{collection}/docs/{id}"), &data)
}

/// Waits until deleting `people/ada` is refused for a reference rather than for an index
/// still being built (the reverse indexes of a new relation build in the background).
fn wait_for_reverse_indexes(srv: &TestServer, probe: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = srv.delete(probe);
        assert_eq!(resp.status, 409, "{}", resp.text);
        if !resp.text.contains("being indexed") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never indexed: {}",
            resp.text
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn expand_embeds_what_each_rule_lets_the_caller_read() {
    let srv = TestServer::start_with(fast);
    configure(&srv);
    put(&srv, "people", "ada", json!({"name": "Ada"})).expect(201);
    put(
        &srv,
        "people",
        "bob",
        json!({"name": "Bob", "hidden": true}),
    )
    .expect(201);
    put(
        &srv,
        "posts",
        "p1",
        json!({"title": "hello", "author": "ada"}),
    )
    .expect(201);
    put(
        &srv,
        "comments",
        "c1",
        json!({"post": "p1", "author": "ada"}),
    )
    .expect(201);
    put(
        &srv,
        "comments",
        "c2",
        json!({"post": "p1", "author": "bob"}),
    )
    .expect(201);
    put(
        &srv,
        "likes",
        "l1",
        json!({"comment": "c2", "who": ["ada", "bob"]}),
    )
    .expect(201);
    let token = signup_token(&srv, "reader@example.com");

    // Nested, with a hidden person coming back as null.
    let like = with_token(
        &srv,
        "GET",
        "/v1/collections/likes/docs/l1?expand=comment.post.author,comment.author,who",
        &token,
        None,
    )
    .expect(200)
    .json;
    let comment = &like["expand"]["comment"];
    assert_eq!(comment["id"], "c2");
    assert_eq!(comment["data"]["author"], "bob", "the data keeps the id");
    assert_eq!(
        comment["expand"]["author"],
        Value::Null,
        "bob is hidden from users"
    );
    assert_eq!(comment["expand"]["post"]["id"], "p1");
    assert_eq!(
        comment["expand"]["post"]["expand"]["author"]["data"]["name"],
        "Ada"
    );
    assert_eq!(like["expand"]["who"][0]["id"], "ada");
    assert_eq!(like["expand"]["who"][1], Value::Null);
    // The service key reads everyone.
    let admin = srv
        .get("/v1/collections/likes/docs/l1?expand=who")
        .expect(200)
        .json;
    assert_eq!(admin["expand"]["who"][1]["data"]["name"], "Bob");

    // Lists expand every item, with the page and total intact.
    let page = with_token(
        &srv,
        "GET",
        "/v1/collections/comments/docs?expand=author&count=true&sort=id",
        &token,
        None,
    )
    .expect(200)
    .json;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["expand"]["author"]["id"], "ada");
    assert_eq!(page["items"][1]["expand"]["author"], Value::Null);
    // Without expand nothing is embedded.
    let plain = with_token(
        &srv,
        "GET",
        "/v1/collections/comments/docs/c1",
        &token,
        None,
    )
    .expect(200)
    .json;
    assert!(plain.get("expand").is_none());

    for (query, says) in [
        (
            "expand=title",
            "title is not a relation of collection likes",
        ),
        ("expand=comment.post.author.name", "at most 3"),
        ("expand=comment..post", "comma list"),
        ("expand=a,b,c,d,e,f,g,h,i", "at most 8"),
    ] {
        let resp = srv
            .get(&format!("/v1/collections/likes/docs/l1?{query}"))
            .expect_error(400, "bad_request");
        assert!(resp.text.contains(says), "{query}: {}", resp.text);
    }
}

#[test]
fn references_must_name_existing_documents() {
    let srv = TestServer::start();
    configure(&srv);
    put(&srv, "people", "ada", json!({})).expect(201);
    for (data, says) in [
        (
            json!({"author": "nobody"}),
            "there is no document people/nobody",
        ),
        (json!({"author": 7}), "holds a document id"),
        (
            json!({"author": ["ada", {"id": "ada"}]}),
            "holds a document id",
        ),
    ] {
        let resp = put(&srv, "posts", "p", data.clone()).expect_error(400, "validation_failed");
        assert!(resp.text.contains(says), "{data}: {}", resp.text);
    }
    let many: Vec<String> = (0..101).map(|i| format!("p{i}")).collect();
    put(&srv, "likes", "l", json!({"who": many})).expect_error(400, "validation_failed");
    // The ids of a list are read together; the one missing among them is named.
    put(&srv, "people", "bob", json!({})).expect(201);
    let resp = put(&srv, "likes", "l", json!({"who": ["ada", "ghost", "bob"]}))
        .expect_error(400, "validation_failed");
    assert!(
        resp.text.contains("there is no document people/ghost"),
        "{}",
        resp.text
    );
    put(&srv, "likes", "l", json!({"who": ["ada", "bob"]})).expect(201);
    put(&srv, "posts", "p", json!({"author": null})).expect(201);
    // A batch may create the target and the reference together.
    srv.post(
        "/v1/batch",
        &json!({"ops": [
            {"op": "create", "collection": "people", "id": "new", "data": {}},
            {"op": "update", "collection": "posts", "id": "p", "data": {"author": "new"}},
        ]}),
    )
    .expect(200);
    let bad = srv.put(
        "/v1/admin/collections/x",
        &json!({"relations": {"a..b": {"collection": "people"}}}),
    );
    bad.expect_error(400, "validation_failed");
    srv.put(
        "/v1/admin/collections/x",
        &json!({"relations": {"a": {"collection": "no such!"}}}),
    )
    .expect_error(400, "validation_failed");
}

#[test]
fn deletes_restrict_set_null_and_cascade() {
    let srv = TestServer::start();
    configure(&srv);
    put(&srv, "people", "ada", json!({})).expect(201);
    put(&srv, "people", "bob", json!({})).expect(201);
    put(&srv, "posts", "p1", json!({"author": "ada"})).expect(201);
    put(&srv, "posts", "p2", json!({"author": "ada"})).expect(201);
    put(
        &srv,
        "comments",
        "c1",
        json!({"post": "p1", "author": "bob"}),
    )
    .expect(201);
    // 250 comments on p1 and a like on each of the first ten: more than one chunk.
    let ops: Vec<Value> = (0..250)
        .map(|i| json!({"op": "create", "collection": "comments", "id": format!("m{i:03}"), "data": {"post": "p1", "author": "ada"}}))
        .collect();
    srv.post("/v1/batch", &json!({"ops": ops})).expect(200);
    let likes: Vec<Value> = (0..10)
        .map(|i| json!({"op": "create", "collection": "likes", "data": {"comment": format!("m{i:03}")}}))
        .collect();
    srv.post("/v1/batch", &json!({"ops": likes})).expect(200);
    put(
        &srv,
        "comments",
        "c2",
        json!({"post": "p2", "author": "bob"}),
    )
    .expect(201);

    // Restrict: ada has posts.
    wait_for_reverse_indexes(&srv, "/v1/collections/people/docs/ada");
    let refused = srv
        .delete("/v1/collections/people/docs/ada")
        .expect_error(409, "conflict");
    assert!(
        refused.text.contains("referenced by posts/p"),
        "{}",
        refused.text
    );

    // Set null: deleting bob empties the author of his comments, with a new version.
    srv.delete("/v1/collections/people/docs/bob").expect(204);
    let c1 = srv.get("/v1/collections/comments/docs/c1").expect(200).json;
    assert_eq!(c1["data"]["author"], Value::Null);
    assert_eq!(c1["version"], 2);

    // Cascade: deleting p1 deletes its 251 comments and their likes before it answers.
    srv.delete("/v1/collections/posts/docs/p1").expect(204);
    let left = srv
        .get("/v1/collections/comments/aggregate")
        .expect(200)
        .json;
    assert_eq!(
        left["groups"][0]["values"]["count"], 1,
        "only c2 (on p2) is left"
    );
    let likes = srv.get("/v1/collections/likes/aggregate").expect(200).json;
    assert_eq!(likes["groups"][0]["values"]["count"], 0);

    // A collection that a restrict relation references cannot be deleted.
    let refused = srv
        .delete("/v1/admin/collections/people")
        .expect_error(409, "conflict");
    assert!(refused.text.contains("posts.author"), "{}", refused.text);

    // A batch may delete the referencing document and then the referenced one.
    srv.post(
        "/v1/batch",
        &json!({"ops": [
            {"op": "delete", "collection": "posts", "id": "p2"},
            {"op": "delete", "collection": "people", "id": "ada"},
        ]}),
    )
    .expect(200);
    assert_eq!(
        srv.get("/v1/collections/comments/aggregate")
            .expect(200)
            .json["groups"][0]["values"]["count"],
        0
    );
}

#[test]
fn a_relation_declared_on_stored_documents_is_indexed_then_enforced() {
    let srv = TestServer::start();
    put(&srv, "people", "ada", json!({})).expect(201);
    for i in 0..600 {
        put(&srv, "posts", &format!("p{i}"), json!({"author": "ada"})).expect(201);
    }
    srv.put(
        "/v1/admin/collections/posts",
        &json!({"relations": {"author": {"collection": "people", "on_delete": "restrict"}}}),
    )
    .expect(200);
    wait_for_reverse_indexes(&srv, "/v1/collections/people/docs/ada");
    srv.delete("/v1/collections/people/docs/ada")
        .expect_error(409, "conflict");
}

#[test]
fn a_dereference_left_by_a_crash_runs_when_the_server_starts() {
    if cluster_backend() {
        return;
    }
    let srv = TestServer::start();
    configure(&srv);
    put(&srv, "people", "bob", json!({})).expect(201);
    put(&srv, "comments", "c1", json!({"author": "bob"})).expect(201);
    let dir = srv.stop();
    // What a crash right after the delete's commit leaves: bob gone, his job recorded.
    edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        let mut txn = engine.begin().await.unwrap();
        txn.delete(Keyspace::Documents, b"people\0bob".to_vec());
        txn.put(Keyspace::Meta, b"deref:people\0bob".to_vec(), Vec::new());
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, |_| {});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while srv.get("/v1/collections/comments/docs/c1").json["data"]["author"] != Value::Null {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
