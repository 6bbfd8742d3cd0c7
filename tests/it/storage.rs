//! The storage engine under the whole server: versions across a delete, background index
//! builds, bounded sorts, and storage failures that leave no trace.

use crate::common::{agent, metric, send, signup_token, with_token, TestServer, Tmpfs};
use emberbase::engine::faulty::FaultyEngine;
use emberbase::engine::sled::{SledEngine, SledOptions};
use emberbase::Principal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn versions_continue_after_a_delete_so_a_stale_if_match_never_matches() {
    let srv = TestServer::start();
    let path = "/v1/collections/v/docs/x";
    assert_eq!(
        srv.put(path, &json!({"n": 1})).expect(201).json["version"],
        1
    );
    assert_eq!(
        srv.put(path, &json!({"n": 2})).expect(200).json["version"],
        2
    );
    srv.delete(path).expect(204);
    let again = srv.put(path, &json!({"n": 3})).expect(201).json;
    assert_eq!(
        again["version"], 3,
        "the re-created id continues its versions"
    );
    for stale in ["\"1\"", "\"2\""] {
        let req = srv
            .admin("PATCH", path)
            .set("If-Match", stale)
            .set("Content-Type", "application/json");
        send(req, Some(br#"{"n": 4}"#)).expect_error(412, "precondition_failed");
    }
    // Deleted and created again in one batch: the version still goes on.
    let batch = json!({"ops": [
        {"op": "delete", "collection": "v", "id": "x"},
        {"op": "create", "collection": "v", "id": "x", "data": {"n": 5}},
    ]});
    let results = srv.post("/v1/batch", &batch).expect(200).json;
    assert_eq!(results["results"][1]["version"], 4, "{results}");
    // An id never used starts at 1.
    assert_eq!(
        srv.put("/v1/collections/v/docs/fresh", &json!({}))
            .expect(201)
            .json["version"],
        1
    );
}

/// Seeds `n` documents `d{i}` with `{"n": i, "m": (i * 7919) % n, "g": i % 10}`, in batches.
fn seed(srv: &TestServer, collection: &str, n: u64) {
    let docs = srv.server().documents().clone();
    for start in (0..n).step_by(500) {
        let ops = (start..(start + 500).min(n))
            .map(|i| {
                serde_json::from_value(json!({"op": "set", "collection": collection,
                    "id": format!("d{i}"), "data": {"n": i, "m": (i * 7919) % n, "g": i % 10}}))
                .unwrap()
            })
            .collect();
        srv.block_on(docs.batch(&Principal::Service, ops)).unwrap();
    }
}

/// The ids of every document matching `filter`, following cursors.
fn ids_matching(srv: &TestServer, collection: &str, filter: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let mut path = format!(
            "/v1/collections/{collection}/docs?limit=1000&filter={}",
            crate::common::enc(filter)
        );
        if !cursor.is_empty() {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = srv.get(&path).expect(200).json;
        for item in page["items"].as_array().unwrap() {
            ids.insert(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return ids,
        }
    }
}

#[test]
fn a_sort_without_an_index_holds_one_match_and_an_index_builds_while_writes_go_on() {
    const N: u64 = 100_000;
    let srv = TestServer::start_with(|c| c.limits.max_scan_documents = 10 * N);
    seed(&srv, "big", N);

    // An unindexed sort with limit=1 examines every document but holds at most two.
    let examined = || {
        metric(
            &srv.get("/metrics").expect(200).text,
            "emberbase_store_scan_examined_total",
        )
    };
    let before = examined();
    let first = srv
        .get("/v1/collections/big/docs?sort=data.m&limit=1")
        .expect(200)
        .json;
    assert_eq!(first["items"][0]["data"]["m"], 0);
    assert!(first["next_cursor"].is_string());
    let text = srv.get("/metrics").expect(200).text;
    assert!(
        examined() - before >= N as f64,
        "the sort examined every document"
    );
    let held = metric(&text, "emberbase_store_query_held_peak");
    assert!(
        held <= 2.0,
        "an unindexed sort held {held} documents for limit=1"
    );

    // Writers run while an index on data.g is declared and built.
    let truth: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(
        (0..N).map(|i| (format!("d{i}"), i % 10)).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (stop, acked, truth) = (stop.clone(), acked.clone(), truth.clone());
            let (url, key) = (srv.url("/v1/collections/big/docs"), srv.key.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // New documents, and moves of seeded ones to another group.
                    let id = if i.is_multiple_of(2) {
                        format!("w{w}-{i}")
                    } else {
                        format!("d{}", (i * 31 + w) % N)
                    };
                    let g = (i + w) % 10;
                    let body = json!({"n": i, "m": i, "g": g}).to_string();
                    let resp = agent
                        .put(&format!("{url}/{id}"))
                        .set("Authorization", &format!("Bearer {key}"))
                        .set("Content-Type", "application/json")
                        .send_string(&body)
                        .unwrap();
                    assert!(resp.status() == 200 || resp.status() == 201);
                    truth.lock().unwrap().insert(id, g);
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let info = srv
        .put(
            "/v1/admin/collections/big",
            &json!({"indexes": [["data.g"]]}),
        )
        .expect(200)
        .json;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "declaring the index waited for its build"
    );
    assert_eq!(info["index_states"][0]["fields"], json!(["data.g"]));
    let acked_at_declare = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut saw_building = info["index_states"][0]["state"] == "building";
    loop {
        let state = srv.get("/v1/admin/collections/big").expect(200).json["index_states"][0]
            ["state"]
            .clone();
        if state == "ready" {
            break;
        }
        assert_eq!(state, "building");
        saw_building = true;
        assert!(Instant::now() < deadline, "the index never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        saw_building,
        "a 100k-document build was never seen in progress"
    );
    assert!(
        acked.load(Ordering::Relaxed) > acked_at_declare,
        "no write was acknowledged while the index was building"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // Through the index, every group holds exactly the documents the writes left in it.
    let truth = truth.lock().unwrap().clone();
    for g in [0u64, 3, 9] {
        let expected: BTreeSet<String> = truth
            .iter()
            .filter(|(_, group)| **group == g)
            .map(|(id, _)| id.clone())
            .collect();
        let found = ids_matching(&srv, "big", &format!("data.g == {g}"));
        assert_eq!(found.len(), expected.len(), "group {g}");
        assert!(found == expected, "group {g} differs from the writes");
    }
}

/// The sled backend of a server, wrapped so that commits can be made to fail.
struct Engines {
    sled: SledEngine,
    faulty: FaultyEngine,
}

fn start_on_engines(db: impl Fn(&Path) -> std::path::PathBuf) -> (TestServer, Engines) {
    start_on_engines_with(db, |_| {})
}

fn start_on_engines_with(
    db: impl Fn(&Path) -> std::path::PathBuf,
    configure: impl FnOnce(&mut emberbase::config::Config),
) -> (TestServer, Engines) {
    let slot: Arc<Mutex<Option<Engines>>> = Arc::default();
    let taken = slot.clone();
    let srv = TestServer::start_built(configure, move |builder, dir| {
        let sled = SledEngine::open(
            SledOptions {
                path: db(dir),
                cache_bytes: 16 << 20,
            },
            None,
        )
        .unwrap();
        let faulty = FaultyEngine::new(Arc::new(sled.clone()));
        *taken.lock().unwrap() = Some(Engines {
            sled,
            faulty: faulty.clone(),
        });
        builder.engine(Arc::new(faulty))
    });
    let engines = slot.lock().unwrap().take().unwrap();
    (srv, engines)
}

fn blob_count(srv: &TestServer) -> usize {
    std::fs::read_dir(srv.dir.path().join("files/blobs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn failed_commits_and_flushes_leave_no_trace_and_the_server_recovers() {
    let (srv, engines) = start_on_engines(|dir| dir.join("db"));
    let store = srv.server().changes().clone();
    srv.put("/v1/collections/f/docs/kept", &json!({"v": 1}))
        .expect(201);
    let seq = store.last_seq();

    // A commit that fails: 503, nothing visible, no change in the feed.
    engines.faulty.fail_commits(1);
    srv.put("/v1/collections/f/docs/lost", &json!({"v": 1}))
        .expect_error(503, "unavailable");
    srv.get("/v1/collections/f/docs/lost").expect(404);
    assert_eq!(store.last_seq(), seq, "a failed write appended a change");
    srv.put("/v1/collections/f/docs/after", &json!({"v": 1}))
        .expect(201);
    assert_eq!(store.last_seq(), seq + 1);

    // A file whose record fails to commit leaves no record and no blob.
    let blobs = blob_count(&srv);
    engines.faulty.fail_commits(1);
    let upload = srv
        .admin("PUT", "/v1/files/b/a.txt")
        .set("Content-Type", "text/plain");
    send(upload, Some(b"hello")).expect_error(503, "unavailable");
    srv.get("/v1/files/b/a.txt").expect(404);
    assert_eq!(blob_count(&srv), blobs, "the failed upload left its blob");

    // A flush that fails on the real sled backend: the write fails and leaves no trace, and
    // the store takes writes again once it has recovered.
    engines.sled.fail_next_flushes(1);
    srv.put("/v1/collections/f/docs/unflushed", &json!({"v": 1}))
        .expect_error(503, "unavailable");
    srv.get("/v1/collections/f/docs/unflushed").expect(404);
    srv.get("/v1/collections/f/docs/kept").expect(200);
    until(
        Duration::from_secs(20),
        "the store did not recover",
        || srv.put("/v1/collections/f/docs/recovered", &json!({"v": 2})),
        (201, 503, "unavailable"),
    );
    srv.get("/v1/collections/f/docs/unflushed").expect(404);
    assert_eq!(
        store.last_seq(),
        seq + 2,
        "the failed flush left a change behind"
    );
    let listed = srv.get("/v1/collections/f/docs?limit=10").expect(200).json;
    let expected: BTreeSet<String> = ["after", "kept", "recovered"].map(String::from).into();
    assert_eq!(ids(&listed), expected);
}

#[test]
fn a_function_write_lost_to_a_failed_flush_fails_its_run_and_the_event_runs_again() {
    let (srv, engines) =
        start_on_engines_with(|dir| dir.join("db"), |c| c.functions.retry_base_ms = 50);
    // A loopback server that holds the first request it gets until the test says so.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (asked, first_asked) = std::sync::mpsc::channel();
    let (go, first_go) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            use std::io::Write;
            crate::webhooks::read_request(&stream);
            if n == 0 {
                asked.send(()).unwrap();
                first_go.recv().unwrap();
            }
            let _ = (&stream)
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    crate::javascript::deploy_js(
        &srv,
        "receipt",
        &format!(
            r#"export default async function handle(event) {{
                 await emberbase.fetch("http://127.0.0.1:{port}/");
                 await emberbase.db.create("receipts", {{ order: event.id }});
               }}"#
        ),
        json!({"triggers": [{"on": "create", "collection": "orders"}],
            "fetch": {"allow": [format!("127.0.0.1:{port}")]}}),
    );
    srv.put("/v1/collections/orders/docs/o1", &json!({"total": 5}))
        .expect(201);
    // The run is at its fetch: from here on nothing flushes, so its write is applied and
    // the run ends while the write waits. Then that flush fails.
    first_asked
        .recv_timeout(Duration::from_secs(20))
        .expect("the function did not fetch");
    engines.sled.hold_flushes(true);
    go.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !engines.sled.unflushed() {
        assert!(
            Instant::now() < deadline,
            "the function's write was not applied"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    engines.sled.fail_next_flushes(1);
    engines.sled.hold_flushes(false);

    // The run failed (its record may be lost with the flush too) and the event runs again
    // once the store has recovered, writing the receipt once.
    crate::functions::eventually("a run after the lost one", || {
        let runs = crate::functions::invocations(&srv, "receipt");
        runs.iter().any(|r| r["status"] == "ok").then_some(())
    });
    let failed = r#"emberbase_function_invocations_total{function="receipt",status="error"}"#;
    let metrics = send(srv.admin("GET", "/metrics"), None).expect(200).text;
    assert!(metric(&metrics, failed) >= 1.0, "the lost run did not fail");
    let receipts = srv.get("/v1/collections/receipts/docs").expect(200).json;
    let items = receipts["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{receipts}");
    assert_eq!(items[0]["data"]["order"], "o1");
}

/// Repeats `attempt` until it answers `done.0`; meanwhile each answer must be the error
/// `done.1`/`done.2`. Fails with `what` after `within`. Returns the final answer.
fn until(
    within: Duration,
    what: &str,
    attempt: impl Fn() -> crate::common::Resp,
    done: (u16, u16, &str),
) -> crate::common::Resp {
    let deadline = Instant::now() + within;
    loop {
        let resp = attempt();
        if resp.status == done.0 {
            return resp;
        }
        resp.expect_error(done.1, done.2);
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fills the file system under `dir` until it refuses more.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[test]
fn a_full_disk_fails_writes_without_trace_and_they_succeed_once_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("size=24m") else {
        crate::common::skip("cannot mount a tmpfs here (needs root)");
        return;
    };
    let disk = tmpfs.0.path().to_path_buf();
    let db = disk.join("db");
    let (srv, _engines) = start_on_engines(move |_| db.clone());
    srv.put("/v1/collections/d/docs/first", &json!({"v": 1}))
        .expect(201);
    let filler = fill(&disk);
    let body = json!({"pad": "x".repeat(8000)});
    let mut failed = None;
    for i in 0..5000 {
        let resp = srv.put(&format!("/v1/collections/d/docs/n{i}"), &body);
        if resp.status == 503 {
            failed = Some(format!("n{i}"));
            break;
        }
        resp.expect(201);
    }
    let failed = failed.expect("the full disk never failed a write");
    srv.get(&format!("/v1/collections/d/docs/{failed}"))
        .expect(404);
    srv.get("/v1/collections/d/docs/first").expect(200);
    std::fs::remove_file(filler).unwrap();
    until(
        Duration::from_secs(30),
        "writes did not resume once space returned",
        || srv.put("/v1/collections/d/docs/later", &json!({"v": 2})),
        (201, 503, "unavailable"),
    );
    srv.get(&format!("/v1/collections/d/docs/{failed}"))
        .expect(404);
    srv.get("/v1/collections/d/docs/later").expect(200);
    let _: Value = srv.get("/v1/collections/d/docs?limit=5").expect(200).json;
}

/// The ids in a list response.
fn ids(page: &Value) -> BTreeSet<String> {
    crate::common::ids(page).into_iter().collect()
}

#[test]
fn owner_rules_read_from_the_owner_index_and_unindexed_scans_are_bounded() {
    let srv = TestServer::start_with(|c| c.limits.max_scan_documents = 500);
    // 2,000 documents nobody owns, and three of a user's (the default rules are private).
    seed(&srv, "notes", 2000);
    let token = signup_token(&srv, "owner@example.com");
    let mut mine = BTreeSet::new();
    for i in 0..3 {
        let doc = with_token(
            &srv,
            "POST",
            "/v1/collections/notes/docs",
            &token,
            Some(&json!({"i": i})),
        )
        .expect(201)
        .json;
        mine.insert(doc["id"].as_str().unwrap().to_string());
    }
    // The user's list reads their documents through the owner index: no scan of the 2,003.
    let page = with_token(
        &srv,
        "GET",
        "/v1/collections/notes/docs?sort=-data.i",
        &token,
        None,
    )
    .expect(200)
    .json;
    assert_eq!(ids(&page), mine);
    let filtered = with_token(
        &srv,
        "GET",
        &format!(
            "/v1/collections/notes/docs?filter={}",
            crate::common::enc("data.i >= 1")
        ),
        &token,
        None,
    )
    .expect(200)
    .json;
    assert_eq!(ids(&filtered).len(), 2);

    // An unindexed filter over more documents than the budget is refused, naming the index.
    let path = format!(
        "/v1/collections/notes/docs?filter={}&sort=data.m",
        crate::common::enc("data.g == 3")
    );
    let refused = srv.get(&path).expect_error(400, "bad_request");
    let message = refused.json["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(r#"["data.g", "data.m"]"#), "{message}");
    // A list in id order stops after its page, whatever the collection's size.
    srv.get("/v1/collections/notes/docs?limit=10").expect(200);
    // Once the index is declared and built, the same query is served from it.
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"indexes": [["data.g", "data.m"]]}),
    )
    .expect(200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.get("/v1/admin/collections/notes").expect(200).json["index_states"][0]["state"]
        != "ready"
    {
        assert!(Instant::now() < deadline, "the index never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = srv.get(&format!("{path}&limit=1000")).expect(200).json;
    assert_eq!(ids(&served).len(), 200);
}

#[test]
fn documents_stored_before_the_owner_index_are_indexed_on_start() {
    // About upgrading a sled data directory written by an earlier version.
    if crate::common::cluster_backend() {
        return;
    }
    let srv = TestServer::start_with(|c| c.limits.max_scan_documents = 500);
    seed(&srv, "old", 1000);
    let token = signup_token(&srv, "old@example.com");
    for i in 0..2 {
        with_token(
            &srv,
            "POST",
            "/v1/collections/old/docs",
            &token,
            Some(&json!({"i": i})),
        )
        .expect(201);
    }
    // Make the data directory look like one written before the owner index existed.
    let dir = srv.stop();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use emberbase::engine::{Direction, Engine, KeyRange, Keyspace};
            let engine = SledEngine::open(
                SledOptions {
                    path: dir.path().join("db"),
                    cache_bytes: 16 << 20,
                },
                None,
            )
            .unwrap();
            let entries = engine
                .scan(
                    Keyspace::Indexes,
                    &KeyRange::prefix(b"old\0@owner\0"),
                    Direction::Forward,
                    usize::MAX,
                )
                .await
                .unwrap();
            assert_eq!(entries.len(), 1002, "every document had its owner entry");
            let mut txn = engine.begin().await.unwrap();
            for (key, _) in entries {
                txn.delete(Keyspace::Indexes, key.to_vec());
            }
            txn.delete(Keyspace::Meta, b"builtin:owner".to_vec());
            txn.commit(None).await.unwrap();
            engine.close().await.unwrap();
        });
    }
    let srv = TestServer::start_in(dir, |c| c.limits.max_scan_documents = 500);
    let token = crate::common::login_token(&srv, "old@example.com");
    // Until the owner index is back, the list scans, and 1,002 documents pass the budget.
    let listed = until(
        Duration::from_secs(30),
        "the owner index was never rebuilt",
        || with_token(&srv, "GET", "/v1/collections/old/docs", &token, None),
        (200, 400, "bad_request"),
    );
    assert_eq!(listed.json["items"].as_array().unwrap().len(), 2);
}
