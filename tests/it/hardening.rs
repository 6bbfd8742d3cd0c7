//! The hardening reproductions: what a hostile user, module or rule did to the server, and the
//! bound that now holds, at its shipped default. Those that measure a process (its memory, its
//! log file) run the real binary, inside a memory cgroup where the machine offers one.

use crate::common::{
    agent, raw_http, send, signup, signup_token, stream_until_refused, with_token, Resp, Spawned,
    TestServer,
};
use crate::functions::{call, deploy, guest, upload};
use emberbase::config::{AuthConfig, Config, RealtimeConfig};
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// A module with the ABI's exports around `extra` declarations and a `handle` body.
fn module(extra: &str, handle: &str) -> Vec<u8> {
    let src = format!(
        r#"(module
  (memory (export "memory") 1)
  {extra}
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64) {handle}))"#
    );
    wat::parse_str(&src).unwrap()
}

#[test]
fn wasm_tables_and_memories_stay_within_memory_mb() {
    let srv = TestServer::start();
    // 100 tables of 10 M entries (8 GB of host memory at instantiation): refused at upload.
    let tables = "(table 10000000 funcref)\n".repeat(100);
    let refused = upload(&srv, "tables", &module(&tables, "(i64.const 0)"));
    assert!(
        refused
            .expect_error(400, "bad_request")
            .text
            .contains("tables declare"),
        "the reason names the tables"
    );
    // One table over the default of 100,000 elements, likewise.
    upload(
        &srv,
        "table",
        &module("(table 200000 funcref)", "(i64.const 0)"),
    )
    .expect_error(400, "bad_request");
    // Sixteen extra memories of 64 MiB: multi-memory is off, so the module does not validate.
    let memories = "(memory 1024)\n".repeat(16);
    upload(&srv, "memories", &module(&memories, "(i64.const 0)")).expect_error(400, "bad_request");

    // A table cannot grow: `table.grow` answers -1, and the handler traps if it did not.
    let grow = module(
        "(table 1 funcref)",
        "(if (i32.ne (table.grow 0 (ref.null func) (i32.const 10000000)) (i32.const -1))
           (then unreachable))
         (i64.const 0)",
    );
    deploy(&srv, "grow", &grow, json!({"triggers": [{"on": "http"}]}));
    let grown = call(&srv, "grow", Some(&srv.key), &json!({}));
    assert_eq!(grown.status, 200, "table.grow was refused: {}", grown.text);
    // A loop that keeps asking for more runs out of fuel (502), and the server serves on.
    let looping = module(
        "(table 1 funcref)",
        "(loop $l (drop (table.grow 0 (ref.null func) (i32.const 1000000))) (br $l)) (i64.const 0)",
    );
    deploy(
        &srv,
        "loop",
        &looping,
        json!({"triggers": [{"on": "http"}], "fuel": 20_000_000}),
    );
    call(&srv, "loop", Some(&srv.key), &json!({})).expect_error(502, "function_failed");
    send(srv.anon("GET", "/v1/health"), None).expect(200);
}

#[test]
fn guest_log_floods_are_bounded_in_the_server_log_and_the_records() {
    let Some(srv) = Spawned::start(&[], Some(1024 * MIB)) else {
        return;
    };
    // 1,000 lines of 64 KiB per call, 50 calls: 3.2 GB before the bounds.
    let line = "x".repeat(64 * 1024);
    let flood = guest(
        &[&line],
        "",
        "(loop $l
           (call $log (i32.const 1) (call $str_ptr (i32.const 0)) (call $str_len (i32.const 0)))
           (local.set $q (i32.add (local.get $q) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $q) (i32.const 1000))))
         (i64.const 0)",
    );
    let put = srv
        .admin("PUT", "/v1/admin/functions/flood")
        .set("Content-Type", "application/wasm");
    send(put, Some(&flood)).expect(200);
    srv.json(
        "PUT",
        "/v1/admin/functions/flood/config",
        &json!({"triggers": [{"on": "http"}]}),
    )
    .expect(200);
    let (log_before, data_before) = (srv.log_bytes(), srv.data_bytes());
    for _ in 0..50 {
        srv.json("POST", "/v1/functions/flood", &json!({}))
            .expect(200);
    }

    let defaults = Config::default().functions;
    // The server log: one minute's budget of guest lines (the run may straddle two minutes),
    // plus the request lines.
    let logged = srv.log_bytes() - log_before;
    assert!(
        logged <= 2 * defaults.log_bytes_per_minute + 64 * 1024,
        "the server log grew by {logged} bytes"
    );
    // Each record keeps at most `max_log_bytes` of lines, and says how many were dropped. An
    // HTTP call's record is written after its response, so the last ones may still be coming.
    let deadline = Instant::now() + Duration::from_secs(20);
    let items = loop {
        let records = send(
            srv.admin("GET", "/v1/admin/functions/flood/invocations?limit=100"),
            None,
        )
        .expect(200)
        .json;
        let items = records["items"].as_array().unwrap().clone();
        if items.len() == 50 || Instant::now() > deadline {
            break items;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(items.len(), 50);
    for record in &items {
        let logs = record["logs"].as_array().unwrap();
        let (last, kept) = logs.split_last().unwrap();
        let bytes: usize = kept
            .iter()
            .map(|l| l["message"].as_str().unwrap().len())
            .sum();
        assert!(bytes <= defaults.max_log_bytes, "{bytes} bytes of log kept");
        assert!(
            last["message"].as_str().unwrap().contains("dropped"),
            "{last}"
        );
    }
    // The data directory grows by the records, not by the flood.
    let grown = srv.data_bytes().saturating_sub(data_before);
    println!("measured: server log +{logged} bytes, data directory +{grown} bytes");
    assert!(grown < 64 * MIB, "the data directory grew by {grown} bytes");
}

#[test]
fn tiny_patches_of_a_large_document_are_bounded_in_memory_and_on_disk() {
    let Some(srv) = Spawned::start(&[], Some(1536 * MIB)) else {
        return;
    };
    let blob = "y".repeat(900 * 1024);
    let doc = srv
        .json(
            "POST",
            "/v1/collections/big/docs",
            &json!({"blob": blob, "n": 0}),
        )
        .expect(201)
        .json;
    let path = format!("/v1/collections/big/docs/{}", doc["id"].as_str().unwrap());
    let feed_limit = Config::default().store.change_buffer_bytes as f64;
    let mut feed_peak = 0f64;
    for i in 1..=1500 {
        srv.json("PATCH", &path, &json!({"n": i})).expect(200);
        if i % 100 == 0 {
            feed_peak = feed_peak.max(srv.metric("emberbase_store_change_feed_bytes"));
        }
    }
    // The in-process change feed holds at most its byte bound (one change may exceed it).
    assert!(feed_peak > 0.0);
    assert!(
        feed_peak <= feed_limit + 2.0 * 1024.0 * 1024.0,
        "the change feed held {feed_peak} bytes"
    );
    // Resident memory stays far below the 2.7 GiB this once took (a generous margin for
    // sled's cache and the allocator).
    let rss = srv.rss_bytes();
    let data = srv.data_bytes();
    println!(
        "measured: change feed peak {feed_peak} bytes, RSS {} MiB, data directory {} MiB",
        rss / MIB,
        data / MIB
    );
    assert!(rss < 512 * MIB, "resident memory is {} MiB", rss / MIB);
    // Change records store what changed: 1,500 of them are far smaller than 1,500 copies of
    // a 900 KB document (8.3 GB once).
    assert!(data < 512 * MIB, "the data directory is {} MiB", data / MIB);
    let last = send(srv.admin("GET", &path), None).expect(200).json;
    assert_eq!(last["data"]["n"], 1500);
    assert_eq!(last["version"], 1501);
}

#[test]
fn change_records_reproduce_exact_envelopes_across_pruning() {
    // A short retention, so pruning carries documents' states past the records it drops: the
    // oldest record kept is an update, whose `before` pruning must store whole.
    const KEPT: usize = 5;
    let srv = TestServer::start_with(|c| c.store.change_retention_count = KEPT);
    let mut expected: Vec<(Option<Value>, Option<Value>)> = Vec::new();
    let bodies = [
        json!({"a": 1, "nested": {"x": [1, 2], "y": null}}),
        json!({"a": null, "nested": {"x": [1, 2, 3]}}),
        json!({"nested": {"x": "now a string", "z": {"deep": true}}}),
        json!({"a": 2.5, "nested": null}),
    ];
    let doc = srv
        .post("/v1/collections/exact/docs", &bodies[0])
        .expect(201)
        .json;
    let id = doc["id"].as_str().unwrap().to_string();
    let path = format!("/v1/collections/exact/docs/{id}");
    expected.push((None, Some(doc.clone())));
    let mut current = Some(doc);
    let head = srv.server().changes().last_seq();
    for round in 0..6 {
        for body in &bodies[1..] {
            let after = if round % 2 == 0 {
                srv.put(&path, body).expect(200).json
            } else {
                srv.patch(&path, body).expect(200).json
            };
            expected.push((current.clone(), Some(after.clone())));
            current = Some(after);
        }
        if round == 3 {
            srv.delete(&path).expect(204);
            expected.push((current.take(), None));
            let again = srv.put(&path, &bodies[0]).expect(201).json;
            expected.push((None, Some(again.clone())));
            current = Some(again);
        }
    }
    // Wait for the writer's pruning round (once a second) to leave the last `KEPT`.
    let feed = srv.server().changes().clone();
    let total = expected.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.block_on(feed.first_retained_seq()).unwrap().unwrap() < head + total - KEPT as u64 {
        assert!(Instant::now() < deadline, "the feed was not pruned");
        std::thread::sleep(Duration::from_millis(50));
    }
    let changes = srv.block_on(feed.after(0, 100)).unwrap();
    assert_eq!(changes.len(), KEPT);
    for (change, (before, after)) in changes.iter().zip(&expected[expected.len() - KEPT..]) {
        let emberbase::Subject::Document {
            before: b,
            after: a,
            ..
        } = &change.subject
        else {
            panic!("not a document change");
        };
        assert_eq!(
            b.as_ref().map(|d| serde_json::to_value(d).unwrap()),
            *before
        );
        assert_eq!(a.as_ref().map(|d| serde_json::to_value(d).unwrap()), *after);
    }
}

/// Opens an SSE stream on a raw socket and never reads it.
fn stalled_stream(addr: &str, key: &str, topic: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "GET /v1/realtime?subscribe={topic} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

#[test]
fn stalled_subscribers_are_bounded_and_cut() {
    let Some(srv) = Spawned::start(&[], Some(1024 * MIB)) else {
        return;
    };
    let defaults = RealtimeConfig::default();
    let streams: Vec<_> = ["c1", "c2", "c3", "quiet"]
        .iter()
        .map(|topic| stalled_stream(&srv.addr, &srv.key, topic))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.metric("emberbase_realtime_subscribers") < 4.0 {
        assert!(Instant::now() < deadline, "the streams did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 60 documents of 200 KB per busy collection (12 MB each), 2 on the quiet one.
    let blob = "z".repeat(200 * 1024);
    let mut peak = 0f64;
    for i in 0..60 {
        for c in ["c1", "c2", "c3"] {
            srv.json(
                "POST",
                &format!("/v1/collections/{c}/docs"),
                &json!({"i": i, "b": blob}),
            )
            .expect(201);
        }
        if i < 2 {
            srv.json(
                "POST",
                "/v1/collections/quiet/docs",
                &json!({"i": i, "b": blob}),
            )
            .expect(201);
        }
        if i % 10 == 9 {
            peak = peak.max(srv.metric("emberbase_realtime_queued_bytes"));
        }
    }
    let bound = 4.0 * (defaults.queue_bytes as f64 + 300.0 * 1024.0);
    assert!(peak <= bound, "{peak} bytes queued for four subscribers");
    assert!(srv.metric("emberbase_realtime_events_total{outcome=\"overflow\"}") >= 3.0);
    // Past the stall limit every queue is freed, the quiet one's too.
    let deadline = Instant::now() + Duration::from_secs(defaults.stall_secs + 30);
    while srv.metric("emberbase_realtime_queued_bytes") > 0.0 {
        assert!(Instant::now() < deadline, "stalled queues were not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss = srv.rss_bytes();
    println!("measured: peak queued {peak} bytes, RSS {} MiB", rss / MIB);
    assert!(rss < 400 * MIB, "resident memory is {} MiB", rss / MIB);
    drop(streams);
}

#[test]
fn one_client_cannot_take_every_realtime_slot() {
    let srv = TestServer::start();
    let cap = RealtimeConfig::default().max_subscribers_per_client;
    let open = |n: usize| {
        (0..n)
            .map(|_| stalled_stream(&srv.addr.to_string(), &srv.key, "posts"))
            .collect::<Vec<_>>()
    };
    let held = open(cap);
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.server().realtime().subscribers() < cap {
        assert!(Instant::now() < deadline, "the streams did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = send(srv.admin("GET", "/v1/realtime?subscribe=posts"), None)
        .expect_error(429, "rate_limited");
    assert!(refused.header("retry-after").is_some());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.server().realtime().subscribers() > 0 {
        assert!(
            Instant::now() < deadline,
            "closed streams were not released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn long_rule_chains_are_refused_or_evaluated_flat_and_bad_stored_rules_fail_closed() {
    let srv = TestServer::start_with(crate::common::fast);
    let chain = |n: usize| {
        (0..n)
            .map(|i| format!("auth.id == \"u{i}\""))
            .collect::<Vec<_>>()
            .join(" || ")
    };
    let rules = |read: String| json!({"rules": {"read": read, "create": "auth != null"}});
    let refused = srv
        .put("/v1/admin/collections/chains", &rules(chain(20_000)))
        .expect_error(400, "bad_request");
    assert!(refused.text.contains("at most"), "{}", refused.text);
    // 499 comparisons (998 terms) and one that lets the owner in: stored, and evaluated
    // without a deep tree.
    let read = format!("{} || doc.owner == auth.id", chain(499));
    srv.put("/v1/admin/collections/chains", &rules(read))
        .expect(200);
    let user = signup(&srv, "chains@example.com");
    let token = user["access_token"].as_str().unwrap();
    let as_user = |method: &str, path: &str, body: Option<&Value>| {
        with_token(&srv, method, path, token, body)
    };
    let doc = as_user(
        "POST",
        "/v1/collections/chains/docs",
        Some(&json!({"n": 1})),
    )
    .expect(201)
    .json;
    let path = format!(
        "/v1/collections/chains/docs/{}",
        doc["id"].as_str().unwrap()
    );
    as_user("GET", &path, None).expect(200);
    as_user("GET", "/v1/collections/chains/docs", None).expect(200);
    // A rule nested as deep as the parser allows evaluates too.
    let deep = format!("{}doc.owner == auth.id{}", "(".repeat(60), ")".repeat(60));
    srv.put("/v1/admin/collections/chains", &rules(deep))
        .expect(200);
    as_user("GET", &path, None).expect(200);

    // A stored rule that no longer compiles (as one stored before the limits would), written
    // straight into the stopped server's database: admins only, reported, never the defaults.
    let bad = json!({"rules": {"read": chain(20_000), "create": "auth != null"}, "indexes": []});
    let dir = srv.stop();
    crate::common::edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        let mut txn = engine.begin().await.unwrap();
        txn.put(
            Keyspace::Meta,
            b"coll:chains".to_vec(),
            bad.to_string().into_bytes(),
        );
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, crate::common::fast);
    let as_user = |method: &str, path: &str, body: Option<&Value>| {
        with_token(&srv, method, path, token, body)
    };
    as_user("GET", &path, None).expect_error(403, "forbidden");
    as_user("POST", "/v1/collections/chains/docs", Some(&json!({}))).expect_error(403, "forbidden");
    srv.get(&path).expect(200);
    let config = srv.get("/v1/admin/collections/chains").expect(200).json;
    assert_eq!(config["rule_errors"][0]["rule"], "read", "{config}");
    send(srv.anon("GET", "/v1/health"), None).expect(200);
}

#[test]
fn made_up_methods_add_no_metric_labels() {
    let srv = TestServer::start();
    for i in 0..200 {
        let request = format!("FOO{i} /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw_http(srv.addr, request.as_bytes());
    }
    let text = srv.get("/metrics").expect(200).text;
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("emberbase_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    assert!(methods.len() <= 8, "{methods:?}");
}

/// A server with the shipped throttling limits (the test harness raises them).
fn shipped_limits() -> TestServer {
    TestServer::start_with(|c| {
        crate::common::fast(c);
        let shipped = AuthConfig::default();
        c.auth.signups_per_ip_per_hour = shipped.signups_per_ip_per_hour;
        c.auth.mails_per_address_per_hour = shipped.mails_per_address_per_hour;
        c.auth.mail_requests_per_ip_per_hour = shipped.mail_requests_per_ip_per_hour;
    })
}

fn anon_post(srv: &TestServer, path: &str, body: &Value) -> Resp {
    let req = srv
        .anon("POST", path)
        .set("Content-Type", "application/json");
    send(req, Some(body.to_string().as_bytes()))
}

/// Logs in and returns the access token.
fn login_token(srv: &TestServer, email: &str, password: &str) -> String {
    let body = json!({"email": email, "password": password});
    let session = anon_post(srv, "/v1/auth/login", &body).expect(200).json;
    session["access_token"].as_str().unwrap().to_string()
}

#[test]
fn signups_and_reset_mails_are_throttled() {
    let srv = shipped_limits();
    let shipped = AuthConfig::default();
    let password = "correct horse battery";
    for i in 0..shipped.signups_per_ip_per_hour {
        let body = json!({"email": format!("s{i}@example.com"), "password": password});
        anon_post(&srv, "/v1/auth/signup", &body).expect(201);
    }
    let body = json!({"email": "one-too-many@example.com", "password": password});
    let refused = anon_post(&srv, "/v1/auth/signup", &body).expect_error(429, "rate_limited");
    assert!(refused.header("retry-after").is_some());

    // Reset mails: the same limit for a registered address and an unknown one, so a 429
    // tells nothing either.
    for email in ["s0@example.com", "nobody@example.com"] {
        for _ in 0..shipped.mails_per_address_per_hour {
            anon_post(
                &srv,
                "/v1/auth/password/reset/request",
                &json!({"email": email}),
            )
            .expect(202);
        }
        anon_post(
            &srv,
            "/v1/auth/password/reset/request",
            &json!({"email": email}),
        )
        .expect_error(429, "rate_limited");
    }
    // Verification mails count against the same limits.
    let session = login_token(&srv, "s1@example.com", password);
    for i in 0..=shipped.mails_per_address_per_hour {
        let req = srv
            .anon("POST", "/v1/auth/verify/request")
            .set("Authorization", &format!("Bearer {session}"));
        let resp = send(req, None);
        if i < shipped.mails_per_address_per_hour {
            resp.expect(202);
        } else {
            resp.expect_error(429, "rate_limited");
        }
    }
    // Per client address as well, across addresses.
    let mut statuses = Vec::new();
    for i in 0..shipped.mail_requests_per_ip_per_hour {
        let body = json!({"email": format!("other{i}@example.com")});
        statuses.push(anon_post(&srv, "/v1/auth/password/reset/request", &body).status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // At most the allowed mails went out for the registered address.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mails = loop {
        let outbox = srv.get("/v1/admin/outbox?limit=1000").expect(200).json;
        let n = outbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["to"] == "s0@example.com")
            .count();
        if n >= shipped.mails_per_address_per_hour || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mails, shipped.mails_per_address_per_hour);

    // An email over 254 bytes is refused before anything else, everywhere.
    let long = format!("{}@example.com", "a".repeat(250));
    for path in ["/v1/auth/signup", "/v1/auth/login"] {
        anon_post(&srv, path, &json!({"email": long, "password": password}))
            .expect_error(400, "validation_failed");
    }
    anon_post(
        &srv,
        "/v1/auth/password/reset/request",
        &json!({"email": long}),
    )
    .expect_error(400, "validation_failed");
}

#[test]
fn concurrent_wrong_logins_cannot_pass_the_limit() {
    let srv = shipped_limits();
    signup(&srv, "target@example.com");
    let url = srv.url("/v1/auth/login");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let body =
                        json!({"email": "target@example.com", "password": "wrong guess here"});
                    let req = agent().post(&url).set("Content-Type", "application/json");
                    send(req, Some(body.to_string().as_bytes())).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every 401 is one password verified; every 429 was refused before hashing.
    let verified = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(verified + refused, 50, "{statuses:?}");
    assert!(
        verified <= AuthConfig::default().max_failures_per_account,
        "{verified} passwords were verified"
    );
}

#[test]
fn a_refused_json_body_stops_being_read() {
    let srv = TestServer::start();
    // 100 MiB of chunked JSON against the 4 MiB limit: answered with 413, and the connection
    // closed instead of the rest being read.
    let head = format!(
        "POST /v1/collections/c/docs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        srv.key
    );
    let (text, stopped) = stream_until_refused(srv.addr, &head, 100 * MIB as usize);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(stopped, "the server kept reading the refused body");
    // A declared length over the limit is refused before a byte is read, and closes too.
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(srv.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/collections/c/docs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        srv.key,
        100 * MIB
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}

#[test]
fn unknown_query_parameters_are_refused_by_name() {
    let srv = TestServer::start();
    srv.post("/v1/collections/posts/docs", &json!({"n": 1}))
        .expect(201);
    for query in ["total=true", "include=author", "limit=5&sortt=id"] {
        let resp = srv
            .get(&format!("/v1/collections/posts/docs?{query}"))
            .expect_error(400, "bad_request");
        let name = query.rsplit('&').next().unwrap().split('=').next().unwrap();
        assert_eq!(
            resp.json["error"]["details"]["parameter"], name,
            "{}",
            resp.text
        );
    }
    srv.get("/v1/health?verbose=1")
        .expect_error(400, "bad_request");
    srv.get("/v1/collections/posts/docs?limit=5&sort=-id")
        .expect(200);
}

#[test]
fn config_refuses_values_that_would_overflow_or_break_the_store() {
    type Set = fn(&mut Config);
    let cases: [(&str, Set); 4] = [
        ("store.change_retention_hours", |c| {
            c.store.change_retention_hours = u64::MAX
        }),
        ("limits.max_json_depth", |c| c.limits.max_json_depth = 1000),
        ("realtime.heartbeat_secs", |c| {
            c.realtime.heartbeat_secs = u64::MAX
        }),
        ("functions.memory_mb", |c| {
            c.functions.memory_mb = u64::MAX / 1024
        }),
    ];
    for (key, set) in cases {
        let mut config = Config::default();
        set(&mut config);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    assert!(Config::default().validate().is_ok());
}

#[test]
fn shipped_defaults_are_private_and_the_startup_log_names_collections_on_them() {
    let srv = TestServer::start_with(crate::common::fast);
    let a = signup_token(&srv, "a@example.com");
    let b = signup_token(&srv, "b@example.com");
    let as_user = |token: &str, method: &str, path: &str, body: Option<Value>| {
        with_token(&srv, method, path, token, body.as_ref())
    };
    let todo = as_user(
        &a,
        "POST",
        "/v1/collections/todos/docs",
        Some(json!({"t": "mine"})),
    )
    .expect(201)
    .json;
    let path = format!(
        "/v1/collections/todos/docs/{}",
        todo["id"].as_str().unwrap()
    );
    as_user(&b, "GET", &path, None).expect_error(403, "forbidden");
    let listed = as_user(&b, "GET", "/v1/collections/todos/docs", None).expect(200);
    assert_eq!(listed.json["items"], json!([]));
    as_user(&a, "GET", &path, None).expect(200);
    // Files likewise.
    let put = srv
        .anon("PUT", "/v1/files/notes/a.txt")
        .set("Authorization", &format!("Bearer {a}"))
        .set("Content-Type", "text/plain");
    send(put, Some(b"a's")).expect(201);
    as_user(&b, "GET", "/v1/files/notes/a.txt", None).expect_error(403, "forbidden");
    as_user(&a, "GET", "/v1/files/notes/a.txt", None).expect(200);
    // A rule can still tell a missing document (404) from another's (403).
    srv.put(
        "/v1/admin/collections/lists",
        &json!({"rules": {"read": "auth != null && (doc == null || doc.owner == auth.id)",
                          "create": "auth != null"}}),
    )
    .expect(200);
    as_user(&b, "GET", "/v1/collections/lists/docs/missing", None).expect_error(404, "not_found");
    let list = as_user(&a, "POST", "/v1/collections/lists/docs", Some(json!({})))
        .expect(201)
        .json;
    let list_path = format!(
        "/v1/collections/lists/docs/{}",
        list["id"].as_str().unwrap()
    );
    as_user(&b, "GET", &list_path, None).expect_error(403, "forbidden");
    as_user(&a, "GET", &list_path, None).expect(200);

    // An existing data directory keeps its data on the private defaults, and says so.
    let Some(first) = Spawned::start(&[], Some(1024 * MIB)) else {
        return;
    };
    first
        .json("POST", "/v1/collections/legacy/docs", &json!({}))
        .expect(201);
    let Some(again) = Spawned::start_in(first.stop(), &[], Some(1024 * MIB)) else {
        return;
    };
    // "listening on" is logged before the rest of the start-up lines, so wait for this one.
    let line = crate::functions::eventually("the line about default rules", || {
        again
            .log_text()
            .lines()
            .find(|l| l.contains("run on the default rules"))
            .map(str::to_string)
    });
    assert!(line.contains("legacy"), "{line}");
}

#[test]
fn ended_logins_expired_tokens_and_old_mail_are_pruned() {
    use emberbase::engine::sled::{SledEngine, SledOptions};
    use emberbase::engine::{Direction, Engine, KeyRange, Keyspace};
    use std::sync::{Arc, Mutex};
    // The records are read through the engine the server runs on: the account records are
    // system records under one prefix per kind.
    let engine = Arc::new(Mutex::new(None));
    let slot = engine.clone();
    let srv = TestServer::start_built(
        |c| {
            crate::common::fast(c);
            c.auth.prune_interval_secs = 1;
            c.auth.reset_token_ttl_secs = 1;
            c.mail.outbox_kept = 2;
        },
        move |builder, dir| {
            let options = SledOptions {
                path: dir.join("db"),
                cache_bytes: 16 << 20,
            };
            let sled = Arc::new(SledEngine::open(options, None).unwrap());
            *slot.lock().unwrap() = Some(sled.clone());
            builder.engine(sled)
        },
    );
    let engine = engine.lock().unwrap().take().unwrap();
    let session = signup(&srv, "prune@example.com");
    let login = |password: &str| {
        anon_post(
            &srv,
            "/v1/auth/login",
            &json!({"email": "prune@example.com", "password": password}),
        )
    };
    let second = login("correct horse battery").expect(200).json;
    // Log the second login out: its family is revoked.
    let logout = srv
        .anon("POST", "/v1/auth/logout")
        .set(
            "Authorization",
            &format!("Bearer {}", second["access_token"].as_str().unwrap()),
        )
        .set("Content-Type", "application/json");
    send(
        logout,
        Some(
            json!({"refresh_token": second["refresh_token"]})
                .to_string()
                .as_bytes(),
        ),
    )
    .expect(204);
    for _ in 0..4 {
        anon_post(
            &srv,
            "/v1/auth/password/reset/request",
            &json!({"email": "prune@example.com"}),
        )
        .expect(202);
    }
    let count = |prefix: &str| {
        let range = KeyRange::prefix(prefix.as_bytes());
        srv.block_on(engine.scan(Keyspace::System, &range, Direction::Forward, 10_000))
            .unwrap()
            .len()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = count("family:") == 1
            && count("refresh:") == 1
            && count("etoken:") == 0
            && count("outbox:") == 2;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: {} families, {} refresh tokens, {} email tokens, {} mails",
            count("family:"),
            count("refresh:"),
            count("etoken:"),
            count("outbox:")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The live login still refreshes.
    anon_post(
        &srv,
        "/v1/auth/refresh",
        &json!({"refresh_token": session["refresh_token"]}),
    )
    .expect(200);
}

#[test]
fn bodies_are_read_as_documented_and_admin_routes_want_a_token() {
    let srv = TestServer::start_with(crate::common::fast);
    // A struct must be an object, at any depth: serde alone would take `[null, null]` as the
    // fields of `rules` in order.
    srv.put("/v1/admin/collections/c", &json!({"rules": [null, null]}))
        .expect_error(400, "validation_failed");
    srv.put("/v1/admin/buckets/b", &json!([null, null]))
        .expect_error(400, "validation_failed");
    srv.put(
        "/v1/admin/buckets/b",
        &json!({"max_size": 9223372036854775808u64}),
    )
    .expect_error(400, "validation_failed");
    let login = json!(["someone@example.com", "a password that is long"]);
    anon_post(&srv, "/v1/auth/login", &login).expect_error(400, "validation_failed");
    // A missing token on an admin route is 401; a user's token is 403.
    send(srv.anon("GET", "/v1/admin/collections"), None).expect_error(401, "unauthenticated");
    send(srv.anon("GET", "/v1/admin/users"), None).expect_error(401, "unauthenticated");
    send(srv.anon("GET", "/metrics"), None).expect_error(401, "unauthenticated");
    let user = signup(&srv, "plain@example.com");
    let req = srv.anon("GET", "/v1/admin/collections").set(
        "Authorization",
        &format!("Bearer {}", user["access_token"].as_str().unwrap()),
    );
    send(req, None).expect_error(403, "forbidden");
}
