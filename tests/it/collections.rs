//! `/v1/admin/collections`: every collection with its exact document count, and deleting a
//! collection in the background while writes go on.

use crate::common::*;
use crate::realtime::Sse;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn create(srv: &TestServer, collection: &str, data: Value) -> String {
    srv.post(&format!("/v1/collections/{collection}/docs"), &data)
        .expect(201)
        .json["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Creates `n` documents in batches of 500.
fn seed(srv: &TestServer, collection: &str, n: usize) {
    for start in (0..n).step_by(500) {
        let ops: Vec<Value> = (start..n.min(start + 500))
            .map(|i| json!({"op": "create", "collection": collection, "data": {"n": i}}))
            .collect();
        srv.post("/v1/batch", &json!({ "ops": ops })).expect(200);
    }
}

fn listed(srv: &TestServer) -> Vec<(String, u64)> {
    srv.get("/v1/admin/collections").expect(200).json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["documents"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_collection_is_listed_with_its_exact_count() {
    let srv = TestServer::start();
    // Created by writes alone, with no config.
    for i in 0..5 {
        create(&srv, "notes", json!({ "i": i }));
    }
    // Configured, with no documents.
    srv.put(
        "/v1/admin/collections/empty",
        &json!({"indexes": [["data.n"]]}),
    )
    .expect(200);
    // Creates, a delete, a replace and an update: only creates and deletes count.
    let a = create(&srv, "tasks", json!({}));
    let b = create(&srv, "tasks", json!({}));
    create(&srv, "tasks", json!({}));
    srv.delete(&format!("/v1/collections/tasks/docs/{a}"))
        .expect(204);
    srv.put(&format!("/v1/collections/tasks/docs/{b}"), &json!({"x": 1}))
        .expect(200);
    srv.put("/v1/collections/tasks/docs/by-set", &json!({"x": 1}))
        .expect(201);
    // A batch that creates in one collection and deletes in another.
    srv.post(
        "/v1/batch",
        &json!({"ops": [
            {"op": "create", "collection": "notes", "data": {}},
            {"op": "delete", "collection": "tasks", "id": b},
        ]}),
    )
    .expect(200);
    // Every document of a collection deleted: it drops out of the list.
    let gone = create(&srv, "gone", json!({}));
    srv.delete(&format!("/v1/collections/gone/docs/{gone}"))
        .expect(204);

    // Concurrent creates never lose a count.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let auth = srv.admin("POST", "/v1/collections/busy/docs");
            std::thread::spawn(move || {
                for i in 0..25 {
                    let req = auth.clone().set("Content-Type", "application/json");
                    send(req, Some(json!({ "i": i }).to_string().as_bytes())).expect(201);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    assert_eq!(
        listed(&srv),
        [
            ("busy".to_string(), 200),
            ("empty".to_string(), 0),
            ("notes".to_string(), 6),
            ("tasks".to_string(), 2),
        ]
    );
    let one = srv.get("/v1/admin/collections/notes").expect(200).json;
    assert_eq!(one["documents"], 6);
    assert_eq!(one["rules"], Value::Null);
    srv.get("/v1/admin/collections/gone")
        .expect_error(404, "not_found");
    srv.get("/v1/admin/collections/never")
        .expect_error(404, "not_found");

    // Counts survive a restart.
    let dir = srv.stop();
    let srv = TestServer::start_in(dir, |_| {});
    assert_eq!(listed(&srv).len(), 4);
    assert_eq!(
        srv.get("/v1/admin/collections/busy").expect(200).json["documents"],
        200
    );
}

#[test]
fn a_large_collection_is_deleted_in_the_background_while_writes_go_on() {
    const SEEDED: usize = 3000;
    let srv = TestServer::start();
    srv.put(
        "/v1/admin/collections/big",
        &json!({"rules": {"read": "true"}, "indexes": [["data.n"]]}),
    )
    .expect(200);
    seed(&srv, "big", SEEDED);
    seed(&srv, "other", 10);
    let (mut events, _) = Sse::live(&srv, "subscribe=big", Some(&srv.key));

    // A writer creates documents in the collection and in another one all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let big = srv.admin("POST", "/v1/collections/big/docs");
        let other = srv.admin("POST", "/v1/collections/other/docs");
        std::thread::spawn(move || {
            let mut created = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) || i < 20 {
                let body = json!({ "late": i }).to_string();
                let doc = send(
                    big.clone().set("Content-Type", "application/json"),
                    Some(body.as_bytes()),
                )
                .expect(201);
                created.push(doc.json["id"].as_str().unwrap().to_string());
                send(
                    other.clone().set("Content-Type", "application/json"),
                    Some(body.as_bytes()),
                )
                .expect(201);
                i += 1;
            }
            created
        })
    };
    // Documents created before the delete starts are deleted, whenever the writer made them.
    std::thread::sleep(Duration::from_millis(50));
    let started = srv.delete("/v1/admin/collections/big").expect(202).json;
    assert_eq!(started["deleting"], true);
    assert!(started["documents"].as_u64().unwrap() >= SEEDED as u64);
    // Asking again while it runs changes nothing.
    srv.delete("/v1/admin/collections/big").expect(202);

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = srv.get("/v1/admin/collections/big");
        if info.status == 404 || info.json["deleting"] != true {
            break;
        }
        assert!(Instant::now() < deadline, "the delete did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let late = writer.join().unwrap();

    // What is left is exactly the documents created after the delete started.
    let mut left = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = srv
            .get(&format!("/v1/collections/big/docs?limit=500{cursor}"))
            .expect(200)
            .json;
        for doc in page["items"].as_array().unwrap() {
            assert!(
                doc["data"]["late"].is_number(),
                "a seeded document survived: {doc}"
            );
            left.insert(doc["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let info = srv.get("/v1/admin/collections/big");
    let counted = if info.status == 404 {
        0
    } else {
        info.json["documents"].as_u64().unwrap()
    };
    assert_eq!(counted, left.len() as u64);
    let deleted_late = late.iter().filter(|id| !left.contains(*id)).count();
    assert!(left.iter().all(|id| late.contains(id)));
    // The rules and indexes went with it.
    if info.status == 200 {
        assert_eq!(info.json["rules"], Value::Null);
        assert_eq!(info.json["indexes"], json!([]));
    }
    // The other collection was not touched.
    let other = srv.get("/v1/admin/collections/other").expect(200).json;
    assert_eq!(other["documents"].as_u64().unwrap(), 10 + late.len() as u64);

    // Every deleted document had its delete change, which subscribers saw.
    let deletes = SEEDED + deleted_late;
    let mut seen = 0;
    while seen < deletes {
        let event = events.next_event().expect("an event");
        if event.event == "delete" {
            seen += 1;
        }
    }
}

#[test]
fn a_store_written_before_counts_is_counted_when_it_opens() {
    if cluster_backend() {
        return;
    }
    let srv = TestServer::start();
    seed(&srv, "old", 700);
    create(&srv, "older", json!({}));
    // Remove every counter and the marker, as in a data directory of an earlier version.
    let dir = srv.stop();
    edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Direction, Engine, KeyRange, Keyspace};
        let mut txn = engine.begin().await.unwrap();
        let counters = engine
            .scan(
                Keyspace::Meta,
                &KeyRange::prefix(b"count:"),
                Direction::Forward,
                100,
            )
            .await
            .unwrap();
        assert_eq!(counters.len(), 2);
        for (key, _) in counters {
            txn.delete(Keyspace::Meta, key.to_vec());
        }
        txn.delete(Keyspace::Meta, b"builtin:counts".to_vec());
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, |_| {});
    assert_eq!(
        listed(&srv),
        [("old".to_string(), 700), ("older".to_string(), 1)]
    );
    create(&srv, "old", json!({}));
    assert_eq!(
        srv.get("/v1/admin/collections/old").expect(200).json["documents"],
        701
    );
}
