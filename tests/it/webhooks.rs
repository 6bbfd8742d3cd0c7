//! Outbound webhooks against a receiver the test runs on loopback: signatures checked with the
//! Standard Webhooks reference library (PyPI `standardwebhooks`, installed by `.ci/run`),
//! filters decided in the commit, retries, dead letters, redelivery, secret rotation, address
//! safety, parallel delivery with per-document order, and `kill -9` between commit and delivery.

use crate::common::{agent, fast, login_token, send, signup, skip, Resp, Spawned, TestServer};
use crate::functions::eventually;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The request line: `POST /hook HTTP/1.1`.
    pub(crate) line: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: String,
}

impl Received {
    fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// What the receiver answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Answers 200, but only after this long.
    Slow(Duration),
}

#[derive(Default)]
struct State {
    got: Vec<Received>,
    /// Answers for the next requests, in order; then `usual`.
    script: VecDeque<Reply>,
    usual: Option<Reply>,
}

/// An HTTP receiver on loopback: records every request, answers as scripted, and counts the
/// requests in flight at once (overall, and per document id).
pub(crate) struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    overlaps: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            in_flight: Arc::default(),
            peak: Arc::default(),
            overlaps: Arc::default(),
        };
        let state = receiver.state.clone();
        let (in_flight, peak) = (receiver.in_flight.clone(), receiver.peak.clone());
        let overlaps = receiver.overlaps.clone();
        let busy_docs: Arc<Mutex<Vec<String>>> = Arc::default();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, in_flight, peak) = (state.clone(), in_flight.clone(), peak.clone());
                let (overlaps, busy_docs) = (overlaps.clone(), busy_docs.clone());
                std::thread::spawn(move || {
                    let Some(received) = read_request(&stream) else {
                        return;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let doc = received.json()["data"]["id"].as_str().map(str::to_string);
                    if let Some(doc) = &doc {
                        let mut busy = busy_docs.lock().unwrap();
                        if busy.contains(doc) {
                            overlaps.lock().unwrap().push(doc.clone());
                        }
                        busy.push(doc.clone());
                    }
                    let reply = {
                        let mut s = state.lock().unwrap();
                        s.got.push(received);
                        let usual = s.usual.unwrap_or(Reply::Status(200));
                        s.script.pop_front().unwrap_or(usual)
                    };
                    let code = match reply {
                        Reply::Status(code) => code,
                        Reply::Slow(pause) => {
                            std::thread::sleep(pause);
                            200
                        }
                    };
                    if let Some(doc) = &doc {
                        let mut busy = busy_docs.lock().unwrap();
                        if let Some(i) = busy.iter().position(|d| d == doc) {
                            busy.remove(i);
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let body = format!("answered {code}");
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        receiver
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn script(&self, replies: &[Reply]) {
        self.state.lock().unwrap().script.extend(replies);
    }

    fn usually(&self, reply: Reply) {
        self.state.lock().unwrap().usual = Some(reply);
    }

    fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// Waits until at least `n` requests arrived, and returns them.
    pub(crate) fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} requests, got {}: {got:#?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 request from `stream` (a body only with `Content-Length`).
pub(crate) fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let request_line = line.trim_end().to_string();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = match headers.get("content-length") {
        Some(n) => n.parse().ok()?,
        None => 0,
    };
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        line: request_line,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// The Standard Webhooks reference verifier, or `None` (with a skip) when it is not installed.
fn verifier() -> Option<PathBuf> {
    let python = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/standardwebhooks/bin/python"
    ));
    if python.exists() {
        Some(python)
    } else {
        skip("the Standard Webhooks verifier is not installed (.ci/run installs it under target/standardwebhooks)");
        None
    }
}

/// Whether the reference library accepts the request with each secret.
fn verify(python: &PathBuf, secrets: &[&str], received: &Received) -> Vec<bool> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
d = json.load(sys.stdin)
out = []
for secret in d["secrets"]:
    try:
        Webhook(secret).verify(d["body"], d["headers"])
        out.append(True)
    except Exception:
        out.append(False)
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({"secrets": secrets, "body": received.body, "headers": received.headers});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn start() -> TestServer {
    TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.webhooks.retry_base_ms = 50;
        c.webhooks.timeout_ms = 1000;
    })
}

fn create(srv: &TestServer, spec: Value) -> (String, String) {
    let made = srv.post("/v1/admin/webhooks", &spec).expect(201);
    assert!(made.json["secret"].as_str().unwrap().starts_with("whsec_"));
    (
        made.json["id"].as_str().unwrap().to_string(),
        made.json["secret"].as_str().unwrap().to_string(),
    )
}

fn log(srv: &TestServer, id: &str, what: &str, query: &str) -> Vec<Value> {
    srv.get(&format!("/v1/admin/webhooks/{id}/{what}?{query}"))
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn webhooks_send_signed_messages_that_their_filter_chose_in_the_commit() {
    let Some(python) = verifier() else { return };
    let srv = start();
    let receiver = Receiver::start();
    let (id, secret) = create(
        &srv,
        json!({"url": receiver.url(), "collection": "orders", "events": ["create", "update"],
               "when": "after.data.status == \"paid\" && before.data.status != \"paid\"",
               "description": "paid orders"}),
    );
    let info = srv
        .get(&format!("/v1/admin/webhooks/{id}"))
        .expect(200)
        .json;
    assert_eq!(
        info["when"],
        "after.data.status == \"paid\" && before.data.status != \"paid\""
    );
    assert!(info.get("secret").is_none(), "{info}");
    assert!(srv.get("/v1/admin/webhooks").expect(200).json["items"][0]
        .get("secret")
        .is_none());

    let paid = srv
        .post(
            "/v1/collections/orders/docs",
            &json!({"status": "paid", "n": 1}),
        )
        .expect(201);
    let open = srv
        .post(
            "/v1/collections/orders/docs",
            &json!({"status": "open", "n": 2}),
        )
        .expect(201);
    let open_id = open.json["id"].as_str().unwrap();
    srv.patch(
        &format!("/v1/collections/orders/docs/{open_id}"),
        &json!({"status": "paid"}),
    )
    .expect(200);
    // Not a match: paid again, an unpaid order, a delete, another collection.
    srv.patch(
        &format!("/v1/collections/orders/docs/{open_id}"),
        &json!({"note": "still paid"}),
    )
    .expect(200);
    srv.post("/v1/collections/orders/docs", &json!({"status": "open"}))
        .expect(201);
    srv.delete(&format!("/v1/collections/orders/docs/{open_id}"))
        .expect(204);
    srv.post("/v1/collections/other/docs", &json!({"status": "paid"}))
        .expect(201);
    let marker = srv
        .post(
            "/v1/collections/orders/docs",
            &json!({"status": "paid", "n": 3}),
        )
        .expect(201);

    let got = receiver.wait_for(3);
    std::thread::sleep(Duration::from_millis(300));
    let got_now = receiver.got();
    assert_eq!(got_now.len(), 3, "{got_now:#?}");
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let mut seen: Vec<(String, String)> = bodies
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["data"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (
            "document.created".to_string(),
            paid.json["id"].as_str().unwrap().to_string(),
        ),
        (
            "document.created".to_string(),
            marker.json["id"].as_str().unwrap().to_string(),
        ),
        ("document.updated".to_string(), open_id.to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let update = bodies
        .iter()
        .find(|b| b["type"] == "document.updated")
        .unwrap();
    assert_eq!(update["data"]["collection"], "orders");
    assert_eq!(update["data"]["before"]["data"]["status"], "open");
    assert_eq!(update["data"]["after"]["data"]["status"], "paid");
    assert!(update["timestamp"].is_string());
    assert_eq!(update["data"]["actor"]["role"], "service", "{update}");

    // Each request verifies with the reference library, and not with another secret.
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    for r in &got {
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.id().starts_with("msg_"));
        assert_eq!(verify(&python, &[&secret, other], r), vec![true, false]);
    }
    let mut tampered = got[0].clone();
    tampered.body = tampered.body.replace("paid", "free");
    assert_eq!(verify(&python, &[&secret], &tampered), vec![false]);

    // The delivery log: each attempt, its answer and latency; the messages, kept.
    let deliveries = eventually("three recorded deliveries", || {
        let d = log(&srv, &id, "deliveries", "");
        (d.len() == 3).then_some(d)
    });
    for d in &deliveries {
        assert_eq!(d["status"], "delivered");
        assert_eq!(d["response_status"], 200);
        assert_eq!(d["response"], "answered 200");
        assert_eq!(d["attempt"], 1);
        assert!(d["latency_ms"].is_u64());
    }
    let messages = log(&srv, &id, "messages", "status=delivered");
    assert_eq!(messages.len(), 3);
    let ids: Vec<&str> = got.iter().map(Received::id).collect();
    assert!(messages
        .iter()
        .all(|m| ids.contains(&m["id"].as_str().unwrap())));
    assert!(got
        .iter()
        .any(|r| messages.iter().any(|m| m["body"] == r.body)));

    // Admin only; clear errors.
    let token = signup(&srv, "ada@example.com")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let req = srv
        .anon("GET", "/v1/admin/webhooks")
        .set("Authorization", &format!("Bearer {token}"));
    send(req, None).expect_error(403, "forbidden");
    srv.get("/v1/admin/webhooks/nope")
        .expect_error(404, "not_found");
    srv.get(&format!("/v1/admin/webhooks/{id}/deliveries?status=odd"))
        .expect(400);
    srv.post(
        &format!("/v1/admin/webhooks/{id}/messages/msg_nope/redeliver"),
        &json!({}),
    )
    .expect_error(404, "not_found");
    srv.post(
        "/v1/admin/webhooks",
        &json!({"url": receiver.url(), "collection": "orders", "when": "after.data.x =="}),
    )
    .expect(400);

    // Disabled: nothing new is queued. Deleted: gone with its log.
    let mut spec = info.clone();
    for k in ["id", "created_at", "updated_at"] {
        spec.as_object_mut().unwrap().remove(k);
    }
    spec["enabled"] = json!(false);
    let updated = srv
        .put(&format!("/v1/admin/webhooks/{id}"), &spec)
        .expect(200);
    assert_eq!(updated.json["enabled"], false);
    srv.post("/v1/collections/orders/docs", &json!({"status": "paid"}))
        .expect(201);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.got().len(), 3);
    assert!(log(&srv, &id, "messages", "status=pending").is_empty());
    srv.delete(&format!("/v1/admin/webhooks/{id}")).expect(204);
    srv.get(&format!("/v1/admin/webhooks/{id}/deliveries"))
        .expect(404);
}

#[test]
fn failed_deliveries_are_retried_then_dead_lettered_and_redelivered_with_their_id() {
    let srv = start();
    let receiver = Receiver::start();
    let (id, _) = create(
        &srv,
        json!({"url": receiver.url(), "collection": "jobs", "max_attempts": 3}),
    );
    // A 500, then a timeout (the receiver answers after the server's 1 s), then success.
    receiver.script(&[Reply::Status(500), Reply::Slow(Duration::from_millis(1500))]);
    srv.post("/v1/collections/jobs/docs", &json!({"n": 1}))
        .expect(201);
    let got = receiver.wait_for(3);
    assert!(got.iter().all(|r| r.id() == got[0].id()), "{got:#?}");
    let deliveries = eventually("three attempts recorded", || {
        let d = log(&srv, &id, "deliveries", "");
        (d.len() == 3).then_some(d)
    });
    // Newest first.
    assert_eq!(deliveries[0]["status"], "delivered");
    assert_eq!(deliveries[0]["attempt"], 3);
    assert_eq!(deliveries[1]["status"], "failed");
    assert!(deliveries[1]["response_status"].is_null());
    let error = deliveries[1]["error"].as_str().unwrap();
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert_eq!(deliveries[2]["status"], "failed");
    assert_eq!(deliveries[2]["response_status"], 500);
    assert_eq!(deliveries[2]["response"], "answered 500");

    // Every attempt fails: dead after the third, kept with its exact body.
    receiver.usually(Reply::Status(503));
    srv.post("/v1/collections/jobs/docs", &json!({"n": 2}))
        .expect(201);
    let dead = eventually("a dead message", || {
        log(&srv, &id, "messages", "status=dead").into_iter().next()
    });
    assert_eq!(dead["attempts"], 3);
    assert_eq!(log(&srv, &id, "deliveries", "status=dead").len(), 1);
    let tries: Vec<Received> = receiver
        .got()
        .into_iter()
        .filter(|r| r.id() == dead["id"])
        .collect();
    assert_eq!(tries.len(), 3);
    assert_eq!(tries[0].body, dead["body"].as_str().unwrap());

    // Fixed: redelivered once, with the same id and body.
    receiver.usually(Reply::Status(204));
    let again = srv
        .post(
            &format!(
                "/v1/admin/webhooks/{id}/messages/{}/redeliver",
                dead["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .expect(202);
    assert_eq!(again.json["status"], "pending");
    let delivered = eventually("the redelivery", || {
        log(&srv, &id, "messages", "status=delivered")
            .into_iter()
            .find(|m| m["id"] == dead["id"])
    });
    assert_eq!(delivered["body"], dead["body"]);
    let last = receiver.got().pop().unwrap();
    assert_eq!(last.id(), dead["id"].as_str().unwrap());
    assert_eq!(last.body, dead["body"].as_str().unwrap());
    // Redelivering a queued message is refused: it is not kept while it waits.
    assert!(log(&srv, &id, "messages", "status=dead").is_empty());
}

#[test]
fn a_listing_shows_every_message_once_while_deliveries_move_them() {
    let srv = start();
    let receiver = Receiver::start();
    receiver.usually(Reply::Status(204));
    let (id, _) = create(&srv, json!({"url": receiver.url(), "collection": "moves"}));
    for n in 0..10 {
        srv.post("/v1/collections/moves/docs", &json!({"n": n}))
            .expect(201);
    }
    let ids: std::collections::BTreeSet<String> = eventually("ten delivered", || {
        let kept = log(&srv, &id, "messages", "status=delivered");
        (kept.len() == 10).then(|| {
            kept.iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        })
    });
    // Redeliveries move messages from the kept ones to the queue, and deliveries back, while
    // the messages are listed: each listing shows each message exactly once.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let moved = std::thread::scope(|scope| {
        let mover = scope.spawn(|| {
            let mut moved = 0;
            while !stop.load(Ordering::SeqCst) {
                for message in &ids {
                    let path = format!("/v1/admin/webhooks/{id}/messages/{message}/redeliver");
                    match srv.admin("POST", &path).send_json(json!({})) {
                        Ok(_) => moved += 1,
                        // Queued again and not yet delivered: not kept, so not redelivered.
                        Err(ureq::Error::Status(404, _)) => {}
                        Err(e) => panic!("redeliver {message}: {e}"),
                    }
                }
            }
            moved
        });
        for _ in 0..150 {
            let mut listed: Vec<String> = log(&srv, &id, "messages", "")
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect();
            listed.sort();
            if listed != ids.iter().cloned().collect::<Vec<_>>() {
                stop.store(true, Ordering::SeqCst);
                panic!("listed {listed:?}, not each of {ids:?} once");
            }
        }
        stop.store(true, Ordering::SeqCst);
        mover.join().unwrap()
    });
    assert!(moved > 0, "nothing was moved while listing");
}

#[test]
fn a_rotated_secret_and_its_predecessor_both_sign_during_the_grace() {
    let Some(python) = verifier() else { return };
    let srv = start();
    let receiver = Receiver::start();
    let (id, old) = create(&srv, json!({"url": receiver.url(), "collection": "notes"}));
    let rotated = srv
        .post(
            &format!("/v1/admin/webhooks/{id}/rotate-secret"),
            &json!({}),
        )
        .expect(200)
        .json;
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    srv.post("/v1/collections/notes/docs", &json!({"n": 1}))
        .expect(201);
    let got = receiver.wait_for(1);
    assert_eq!(got[0].headers["webhook-signature"].split(' ').count(), 2);
    assert_eq!(verify(&python, &[new, &old], &got[0]), vec![true, true]);

    // Without a grace period, only the new secret signs.
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.webhooks.rotation_grace_secs = 0;
    });
    let receiver = Receiver::start();
    let (id, old) = create(&srv, json!({"url": receiver.url(), "collection": "notes"}));
    let rotated = srv
        .post(
            &format!("/v1/admin/webhooks/{id}/rotate-secret"),
            &json!({}),
        )
        .expect(200)
        .json;
    assert!(rotated.get("previous_secret_expires_at").is_none());
    srv.post("/v1/collections/notes/docs", &json!({"n": 1}))
        .expect(201);
    let got = receiver.wait_for(1);
    let new = rotated["secret"].as_str().unwrap();
    assert_eq!(verify(&python, &[new, &old], &got[0]), vec![true, false]);
}

#[test]
fn private_addresses_are_refused_unless_allow_listed() {
    let srv = TestServer::start_with(fast);
    let receiver = Receiver::start();
    let port = receiver.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://[::1]/hook".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.8/".to_string(),
        "http://2130706433/".to_string(),
        "file:///etc/passwd".to_string(),
    ] {
        let refused = srv
            .post(
                "/v1/admin/webhooks",
                &json!({"url": url, "collection": "orders"}),
            )
            .expect_error(400, "validation_failed");
        assert_eq!(refused.json["error"]["details"]["field"], "url", "{url}");
    }
    // A name is checked where it resolves: localhost is loopback, so nothing is sent.
    let (id, _) = create(
        &srv,
        json!({"url": format!("http://localhost:{port}/hook"), "collection": "orders", "max_attempts": 1}),
    );
    srv.post("/v1/collections/orders/docs", &json!({"n": 1}))
        .expect(201);
    let attempt = eventually("the refused attempt", || {
        log(&srv, &id, "deliveries", "").into_iter().next()
    });
    assert_eq!(attempt["status"], "dead");
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("private or reserved"), "{error}");
    assert!(receiver.got().is_empty());

    // Allow-listed with a port: that port only.
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.outbound.allow_private_hosts = vec![format!("localhost:{port}")];
    });
    create(
        &srv,
        json!({"url": format!("http://localhost:{port}/hook"), "collection": "orders"}),
    );
    srv.post(
        "/v1/admin/webhooks",
        &json!({"url": format!("http://localhost:{}/hook", port + 1), "collection": "orders"}),
    )
    .expect(400);
    srv.post("/v1/collections/orders/docs", &json!({"n": 1}))
        .expect(201);
    receiver.wait_for(1);
}

#[test]
fn account_and_file_events_reach_their_webhooks_in_order() {
    let srv = start();
    let receiver = Receiver::start();
    let (accounts, _) = create(&srv, json!({"url": receiver.url(), "accounts": true}));
    create(
        &srv,
        json!({"url": receiver.url(), "accounts": true, "events": ["signup"],
               "when": "after.email == \"grace@example.com\""}),
    );
    create(
        &srv,
        json!({"url": receiver.url(), "bucket": "media", "events": ["create", "delete"]}),
    );
    let session = signup(&srv, "ada@example.com");
    let user = session["user"]["id"].as_str().unwrap().to_string();
    login_token(&srv, "ada@example.com");
    srv.delete(&format!("/v1/admin/users/{user}")).expect(204);
    signup(&srv, "grace@example.com");
    let put = srv
        .admin("PUT", "/v1/files/media/a.txt")
        .set("Content-Type", "text/plain");
    send(put, Some(b"hello")).expect(201);
    srv.delete("/v1/files/media/a.txt").expect(204);

    // Ada: signup, login, delete (one key, in order); Grace twice (both account webhooks);
    // the file twice.
    let got = receiver.wait_for(7);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.got().len(), 7, "{:#?}", receiver.got());
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    let ada: Vec<&str> = bodies
        .iter()
        .filter(|b| b["data"]["user"]["id"] == user.as_str())
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(ada, ["account.signup", "account.login", "account.delete"]);
    let grace = bodies
        .iter()
        .filter(|b| b["data"]["user"]["email"] == "grace@example.com")
        .count();
    assert_eq!(grace, 2);
    assert!(bodies
        .iter()
        .all(|b| b["data"]["user"].get("password_hash").is_none()));
    let files: Vec<&str> = bodies
        .iter()
        .filter(|b| b["data"]["bucket"] == "media")
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["file.created", "file.deleted"]);
    assert_eq!(log(&srv, &accounts, "deliveries", "").len(), 4);
}

#[test]
fn deliveries_run_in_parallel_across_documents_and_in_order_within_each() {
    let srv = start();
    let receiver = Receiver::start();
    receiver.usually(Reply::Slow(Duration::from_millis(50)));
    create(
        &srv,
        json!({"url": receiver.url(), "collection": "tasks", "concurrency": 4}),
    );
    let mut ids = Vec::new();
    for d in 0..8 {
        let doc = srv
            .post("/v1/collections/tasks/docs", &json!({"step": 0, "doc": d}))
            .expect(201);
        ids.push(doc.json["id"].as_str().unwrap().to_string());
    }
    for step in 1..5 {
        for id in &ids {
            srv.patch(
                &format!("/v1/collections/tasks/docs/{id}"),
                &json!({"step": step}),
            )
            .expect(200);
        }
    }
    // Delivery is at least once: an attempt that timed out on a loaded machine is sent again
    // before the next step, so a step may repeat, but never out of order. Each document's
    // steps, repeats folded, once all 40 distinct messages are in.
    let steps_of = |got: &[Received], id: &str| {
        let mut steps: Vec<i64> = got
            .iter()
            .map(Received::json)
            .filter(|b| b["data"]["id"] == id)
            .map(|b| b["data"]["after"]["data"]["step"].as_i64().unwrap())
            .collect();
        steps.dedup();
        steps
    };
    receiver.wait_for(40);
    let got = eventually("every document's five steps", || {
        let got = receiver.got();
        let all = ids.iter().map(|id| steps_of(&got, id).len()).sum::<usize>();
        (all >= 40).then_some(got)
    });
    for id in &ids {
        assert_eq!(steps_of(&got, id), [0, 1, 2, 3, 4], "document {id}");
    }
    let peak = receiver.peak.load(Ordering::SeqCst);
    assert!((2..=4).contains(&peak), "peak concurrency {peak}");
    assert!(receiver.overlaps.lock().unwrap().is_empty());
}

#[test]
fn messages_committed_before_a_kill_9_are_delivered_after_restart() {
    // A slow receiver, so that messages wait in the queue.
    let receiver = Receiver::start();
    receiver.usually(Reply::Slow(Duration::from_secs(2)));
    let env = [
        ("EMBERBASE_OUTBOUND__ALLOW_PRIVATE_HOSTS", "[\"127.0.0.1\"]"),
        ("EMBERBASE_WEBHOOKS__RETRY_BASE_MS", "100"),
    ];
    let server = Spawned::start(&env, None).unwrap();
    server
        .json(
            "POST",
            "/v1/admin/webhooks",
            &json!({"url": receiver.url(), "collection": "orders", "concurrency": 1}),
        )
        .expect(201);
    let mut ids = Vec::new();
    for i in 0..20 {
        let made: Resp = server
            .json("POST", "/v1/collections/orders/docs", &json!({"i": i}))
            .expect(201);
        ids.push(made.json["id"].as_str().unwrap().to_string());
    }
    let dir = server.stop();
    receiver.usually(Reply::Status(200));
    let server = Spawned::start_in(dir, &env, None).unwrap();
    eventually("every message delivered", || {
        let delivered: Vec<String> = receiver
            .got()
            .iter()
            .filter_map(|r| r.json()["data"]["id"].as_str().map(str::to_string))
            .collect();
        ids.iter().all(|id| delivered.contains(id)).then_some(())
    });
    let req = agent()
        .get(&server.url("/v1/admin/webhooks"))
        .set("Authorization", &format!("Bearer {}", server.key));
    assert_eq!(
        send(req, None).expect(200).json["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_cluster_queues_on_every_node_and_delivers_each_message_once() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let node = || {
        TestServer::start_with(|c| {
            fast(c);
            c.store.url = url.clone();
            c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        })
    };
    let (a, b) = (node(), node());
    let receiver = Receiver::start();
    // Made on A; B queues for it in the commits of its own writes.
    create(&a, json!({"url": receiver.url(), "collection": "notes"}));
    create(&a, json!({"url": receiver.url(), "accounts": true}));
    let mut written = Vec::new();
    for i in 0..10 {
        for srv in [&a, &b] {
            let doc = srv
                .post("/v1/collections/notes/docs", &json!({"i": i}))
                .expect(201);
            written.push(doc.json["id"].as_str().unwrap().to_string());
        }
    }
    signup(&b, "ada@example.com");
    let got = receiver.wait_for(21);
    std::thread::sleep(Duration::from_millis(500));
    let got_all = receiver.got();
    let mut ids: Vec<&str> = got_all.iter().map(Received::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got_all.len(), "a message was delivered twice");
    let docs: Vec<String> = got
        .iter()
        .filter_map(|r| r.json()["data"]["id"].as_str().map(str::to_string))
        .collect();
    assert!(written.iter().all(|id| docs.contains(id)));
    assert!(got.iter().any(|r| r.json()["type"] == "account.signup"));
}
