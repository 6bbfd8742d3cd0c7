//! `GET /v1/realtime`: events in order, read rules per subscriber, resuming, slow consumers,
//! heartbeats, token expiry and shutdown; and connections, which carry many subscriptions
//! added and removed on one stream.

use crate::common::{
    enc, fast, send, share, signup, signup_token, with_token, Resp, Spawned, TestServer,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

/// One SSE event, or a comment line.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// A client reading an event stream line by line.
pub(crate) struct Sse {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
}

impl Sse {
    /// Opens a stream; an error status comes back as the response.
    pub(crate) fn open(
        srv: &TestServer,
        query: &str,
        token: Option<&str>,
        last: Option<u64>,
    ) -> Result<Sse, Resp> {
        Sse::open_url(&srv.url(&format!("/v1/realtime?{query}")), token, last)
    }

    /// Opens the stream at `url`; an error status comes back as the response.
    pub(crate) fn open_url(url: &str, token: Option<&str>, last: Option<u64>) -> Result<Sse, Resp> {
        let agent = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(20))
            .build();
        let mut req = agent.get(url);
        if let Some(token) = token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        if let Some(last) = last {
            req = req.set("Last-Event-ID", &last.to_string());
        }
        match req.call() {
            Ok(resp) => {
                assert_eq!(resp.content_type(), "text/event-stream");
                Ok(Sse {
                    reader: BufReader::new(resp.into_reader()),
                })
            }
            Err(ureq::Error::Status(_, resp)) => {
                let status = resp.status();
                let text = resp.into_string().unwrap_or_default();
                Err(Resp {
                    status,
                    json: serde_json::from_str(&text).unwrap_or(Value::Null),
                    text,
                    ..Resp::default()
                })
            }
            Err(e) => panic!("transport error: {e}"),
        }
    }

    /// Opens a stream that must succeed, and waits until it is live.
    pub(crate) fn live(srv: &TestServer, query: &str, token: Option<&str>) -> (Sse, u64) {
        let mut sse = Sse::open(srv, query, token, None).unwrap_or_else(|r| panic!("{}", r.text));
        let ready = sse.next_event().expect("a ready event");
        assert_eq!(ready.event, "ready", "{ready:?}");
        (sse, ready.id.expect("ready has an id"))
    }

    /// The next event, skipping comments; `None` when the stream ended.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.next_item()? {
                Item::Comment(_) => continue,
                Item::Event(e) => return Some(e),
            }
        }
    }

    fn next_item(&mut self) -> Option<Item> {
        let mut event = Event {
            id: None,
            event: "message".into(),
            data: Value::Null,
        };
        let mut seen = false;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("the stream stalled");
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if seen {
                    return Some(Item::Event(event));
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                return Some(Item::Comment(comment.trim().to_string()));
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => event.id = Some(value.parse().expect("numeric id")),
                "event" => event.event = value.to_string(),
                "data" => event.data = serde_json::from_str(value).expect("JSON data"),
                "retry" => continue,
                other => panic!("unexpected field {other}"),
            }
            seen = true;
        }
    }

    /// The next `n` change events.
    pub(crate) fn take(&mut self, n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| self.next_event().expect("an event"))
            .collect()
    }
}

enum Item {
    Comment(String),
    Event(Event),
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().unwrap().to_string()
}

fn create_as(srv: &TestServer, token: &str, collection: &str, data: Value) -> Value {
    let req = srv
        .anon("POST", &format!("/v1/collections/{collection}/docs"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json");
    send(req, Some(data.to_string().as_bytes()))
        .expect(201)
        .json
}

#[test]
fn create_update_delete_arrive_in_order() {
    let srv = TestServer::start_with(fast);
    share(&srv, "posts");
    let user = token(&signup(&srv, "reader@example.com"));
    let (mut all, head) = Sse::live(&srv, "subscribe=posts", Some(&user));

    let doc = srv
        .post("/v1/collections/posts/docs", &json!({"n": 1}))
        .expect(201)
        .json;
    let id = doc["id"].as_str().unwrap();
    let (mut one, one_head) = Sse::live(&srv, &format!("subscribe=posts/{id}"), Some(&user));
    srv.post("/v1/collections/other/docs", &json!({"n": 0}))
        .expect(201);
    srv.post("/v1/collections/posts/docs", &json!({"n": 9}))
        .expect(201);
    srv.patch(
        &format!("/v1/collections/posts/docs/{id}"),
        &json!({"n": 2}),
    )
    .expect(200);
    srv.delete(&format!("/v1/collections/posts/docs/{id}"))
        .expect(204);

    let events = all.take(4);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["create", "create", "update", "delete"]);
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(
        ids[0] > head && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    assert_eq!(events[0].data["collection"], "posts");
    assert_eq!(events[0].data["id"], id);
    assert_eq!(events[0].data["doc"], doc, "the event carries the envelope");
    assert_eq!(events[2].data["doc"]["data"]["n"], 2);
    assert_eq!(events[2].data["doc"]["version"], 2);
    // A delete carries the envelope as it was.
    assert_eq!(events[3].data["doc"]["version"], 2);
    assert_eq!(events[3].data["doc"]["data"]["n"], 2);

    // The document topic sees only its document: every change to it after the stream's
    // `ready` id. The create was acknowledged before it subscribed, but the hub may not have
    // fanned it out yet, in which case it is after `ready` and delivered too.
    let expected: Vec<(&str, u64)> = [&events[0], &events[2], &events[3]]
        .iter()
        .map(|e| (e.event.as_str(), e.id.unwrap()))
        .filter(|&(_, seq)| seq > one_head)
        .collect();
    assert!(expected.len() >= 2, "{expected:?}");
    let mine = one.take(expected.len());
    let got: Vec<(&str, u64)> = mine
        .iter()
        .map(|e| (e.event.as_str(), e.id.unwrap()))
        .collect();
    assert_eq!(got, expected);
    assert!(mine.iter().all(|e| e.data["id"] == id));
}

#[test]
fn read_rules_decide_per_subscriber() {
    let srv = TestServer::start_with(fast);
    srv.put(
        "/v1/admin/collections/notes",
        &json!({"rules": {"read": "doc.owner == auth.id", "create": "auth != null",
                          "update": "doc.owner == auth.id", "delete": "doc.owner == auth.id"}}),
    )
    .expect(200);
    let alice = token(&signup(&srv, "alice@example.com"));
    let bob = token(&signup(&srv, "bob@example.com"));
    let (mut a, _) = Sse::live(&srv, "subscribe=notes", Some(&alice));
    let (mut b, _) = Sse::live(&srv, "subscribe=notes", Some(&bob));
    // The rule looks at each document, so an anonymous caller may connect but sees nothing.
    let (mut anon, _) = Sse::live(&srv, "subscribe=notes", None);

    create_as(&srv, &alice, "notes", json!({"text": "a1"}));
    let b1 = create_as(&srv, &bob, "notes", json!({"text": "b1"}));
    create_as(&srv, &alice, "notes", json!({"text": "a2"}));
    create_as(&srv, &bob, "notes", json!({"text": "b2"}));
    srv.delete(&format!(
        "/v1/collections/notes/docs/{}",
        b1["id"].as_str().unwrap()
    ))
    .expect(204);
    srv.post("/v1/collections/notes/docs", &json!({"text": "nobody's"}))
        .expect(201);
    create_as(&srv, &alice, "notes", json!({"text": "a3"}));

    let texts = |events: Vec<Event>| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.event,
                    e.data["doc"]["data"]["text"].as_str().unwrap()
                )
            })
            .collect()
    };
    // Alice's stream goes straight from a2 to a3: nothing of Bob's or the service's between.
    assert_eq!(texts(a.take(3)), ["create a1", "create a2", "create a3"]);
    assert_eq!(texts(b.take(3)), ["create b1", "create b2", "delete b1"]);

    // The anonymous stream got only what an anonymous GET can read: under this rule, the
    // document without an owner (`null == null`). Closing the service then ends it.
    let ownerless = anon.next_event().unwrap();
    assert_eq!(ownerless.data["doc"]["data"]["text"], "nobody's");
    let id = ownerless.data["id"].as_str().unwrap();
    send(
        srv.anon("GET", &format!("/v1/collections/notes/docs/{id}")),
        None,
    )
    .expect(200);
    srv.server().realtime().close();
    let last = anon.next_event().expect("a close event");
    assert_eq!(last.event, "close");
    assert_eq!(last.data["reason"], "shutdown");
    assert!(anon.next_event().is_none());
    Sse::open(&srv, "subscribe=notes", Some(&alice), None)
        .err()
        .expect("refused while shutting down")
        .expect_error(503, "unavailable");

    // Under the shipped (private) default rule an anonymous subscriber is refused at once:
    // the rule says no to it whatever a document holds.
    let srv = TestServer::start_with(fast);
    let refused = Sse::open(&srv, "subscribe=posts", None, None)
        .err()
        .expect("refused");
    refused.expect_error(403, "forbidden");
}

#[test]
fn last_event_id_resumes_exactly_after_the_last_event_seen() {
    let srv = TestServer::start();
    let (mut sse, head) = Sse::live(&srv, "subscribe=items", Some(&srv.key));
    for n in 0..2 {
        srv.post("/v1/collections/items/docs", &json!({"n": n}))
            .expect(201);
    }
    let seen = sse.take(2);
    drop(sse);
    for n in 2..5 {
        srv.post("/v1/collections/items/docs", &json!({"n": n}))
            .expect(201);
    }
    srv.post("/v1/collections/elsewhere/docs", &json!({}))
        .expect(201);

    let last = seen[1].id.unwrap();
    let mut resumed = Sse::open(&srv, "subscribe=items", Some(&srv.key), Some(last)).unwrap();
    let missed = resumed.take(3);
    let ns: Vec<i64> = missed
        .iter()
        .map(|e| e.data["doc"]["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [2, 3, 4], "exactly the missed events, in order");
    assert!(missed[0].id.unwrap() > last);
    let ready = resumed.next_event().unwrap();
    assert_eq!(ready.event, "ready");
    // Live events continue after the replay, with nothing twice.
    srv.post("/v1/collections/items/docs", &json!({"n": 5}))
        .expect(201);
    let live = resumed.next_event().unwrap();
    assert_eq!(live.data["doc"]["data"]["n"], 5);
    assert!(live.id.unwrap() > ready.id.unwrap());

    // A stream that saw no change resumes from its `ready` id.
    let mut from_head = Sse::open(&srv, "subscribe=items", Some(&srv.key), Some(head)).unwrap();
    let all: Vec<i64> = from_head
        .take(6)
        .iter()
        .map(|e| e.data["doc"]["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(all, [0, 1, 2, 3, 4, 5]);

    // The query parameter works like the header.
    let q = format!("subscribe=items&last_event_id={}", missed[2].id.unwrap());
    let mut by_query = Sse::open(&srv, &q, Some(&srv.key), None).unwrap();
    assert_eq!(by_query.next_event().unwrap().data["doc"]["data"]["n"], 5);
}

#[test]
fn a_resume_from_before_the_retention_window_gets_reset() {
    let srv = TestServer::start_with(|c| c.store.change_retention_count = 3);
    let (_, head) = Sse::live(&srv, "subscribe=items", Some(&srv.key));
    for n in 0..10 {
        srv.post("/v1/collections/items/docs", &json!({"n": n}))
            .expect(201);
    }
    // The writer prunes at most once a second, after a write.
    std::thread::sleep(Duration::from_millis(1100));
    srv.post("/v1/collections/items/docs", &json!({"n": 10}))
        .expect(201);
    std::thread::sleep(Duration::from_millis(200));

    let mut sse = Sse::open(&srv, "subscribe=items", Some(&srv.key), Some(head)).unwrap();
    let reset = sse.next_event().unwrap();
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.id.unwrap() > head);
    assert_eq!(sse.next_event().unwrap().event, "ready");
    srv.post("/v1/collections/items/docs", &json!({"n": 11}))
        .expect(201);
    assert_eq!(sse.next_event().unwrap().data["doc"]["data"]["n"], 11);

    // An id from the future (another data directory) is a reset too.
    let mut sse = Sse::open(&srv, "subscribe=items", Some(&srv.key), Some(head + 1_000)).unwrap();
    assert_eq!(sse.next_event().unwrap().event, "reset");
}

#[test]
fn bad_requests_and_tokens_are_refused() {
    let srv = TestServer::start_with(fast);
    let open_err =
        |q: &str, token: Option<&str>| Sse::open(&srv, q, token, None).err().expect("refused");
    open_err("subscribe=posts", Some("not-a-jwt")).expect_error(401, "unauthenticated");
    open_err("subscribe=posts&access_token=forged.jwt.value", None)
        .expect_error(401, "unauthenticated");
    for q in [
        "",
        "subscribe=",
        "subscribe=po%20sts",
        "subscribe=posts/a/b",
        "subscribe=posts&filter=data.n%20%3E",
    ] {
        open_err(q, Some(&srv.key)).expect_error(400, "bad_request");
    }
    let many = (0..65)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    open_err(&format!("subscribe={many}"), Some(&srv.key)).expect_error(400, "bad_request");
    let resp = srv
        .admin("GET", "/v1/realtime?subscribe=posts")
        .set("Last-Event-ID", "yesterday");
    send(resp, None).expect_error(400, "bad_request");

    // A valid token works in the query parameter too.
    let user = token(&signup(&srv, "q@example.com"));
    let mut sse = Sse::open(
        &srv,
        &format!("subscribe=posts&access_token={}", enc(&user)),
        None,
        None,
    )
    .unwrap();
    assert_eq!(sse.next_event().unwrap().event, "ready");
}

#[test]
fn a_filter_selects_events_and_shows_documents_leaving_it() {
    let srv = TestServer::start();
    let (mut sse, _) = Sse::live(
        &srv,
        &format!("subscribe=tasks&filter={}", enc("data.done == false")),
        Some(&srv.key),
    );
    let open = srv
        .post(
            "/v1/collections/tasks/docs",
            &json!({"done": false, "t": "open"}),
        )
        .expect(201)
        .json;
    srv.post(
        "/v1/collections/tasks/docs",
        &json!({"done": true, "t": "finished"}),
    )
    .expect(201);
    let id = open["id"].as_str().unwrap();
    srv.patch(
        &format!("/v1/collections/tasks/docs/{id}"),
        &json!({"done": true}),
    )
    .expect(200);
    srv.post(
        "/v1/collections/tasks/docs",
        &json!({"done": false, "t": "next"}),
    )
    .expect(201);

    let events = sse.take(3);
    assert_eq!(events[0].event, "create");
    assert_eq!(events[0].data["doc"]["data"]["t"], "open");
    assert_eq!(
        events[1].event, "update",
        "the update that made it leave the filter"
    );
    assert_eq!(events[1].data["doc"]["data"]["done"], true);
    assert_eq!(events[2].data["doc"]["data"]["t"], "next");
}

#[test]
fn heartbeats_expiry_and_shutdown_end_streams_cleanly() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.realtime.heartbeat_secs = 1;
        c.auth.access_token_ttl_secs = 3;
        c.realtime.max_subscribers = 1;
    });
    let user = token(&signup(&srv, "short@example.com"));
    let (mut sse, _) = Sse::live(&srv, "subscribe=posts", Some(&user));
    match sse.next_item() {
        Some(Item::Comment(text)) => assert_eq!(text, "ping"),
        _ => panic!("expected a heartbeat comment"),
    }
    // The stream ends when the access token does, with a final event saying so.
    let close = sse.next_event().unwrap();
    assert_eq!(close.event, "close");
    assert_eq!(close.data["reason"], "expired");
    assert!(sse.next_event().is_none());

    let (mut admin, _) = Sse::live(&srv, "subscribe=posts", Some(&srv.key));
    assert_eq!(srv.server().realtime().subscribers(), 1);
    Sse::open(&srv, "subscribe=posts", Some(&srv.key), None)
        .err()
        .expect("over max_subscribers")
        .expect_error(503, "unavailable");
    // A graceful shutdown ends open streams first; they would otherwise hold it up until its
    // timeout.
    let stopping = std::thread::spawn(move || drop(srv));
    let close = admin.next_event().unwrap();
    assert_eq!(close.data["reason"], "shutdown");
    assert!(admin.next_event().is_none());
    stopping.join().unwrap();
}

#[test]
fn a_slow_consumer_is_disconnected_and_resumes() {
    const TOTAL: usize = 200;
    let srv = TestServer::start_with(|c| c.realtime.queue = 4);
    let (mut sse, _) = Sse::live(&srv, "subscribe=big", Some(&srv.key));
    // Events of ~200 KiB each, written while the client reads nothing: the socket buffers fill,
    // then the subscriber's queue, and the hub drops it instead of holding more.
    let blob = "x".repeat(200 * 1024);
    for _ in 0..TOTAL / 10 {
        let ops: Vec<Value> = (0..10)
            .map(|_| json!({"op": "create", "collection": "big", "data": {"blob": blob}}))
            .collect();
        srv.post("/v1/batch", &json!({"ops": ops})).expect(200);
    }
    let mut received = 0;
    let mut last_id = 0;
    let close = loop {
        let event = sse
            .next_event()
            .expect("the stream ends with a close event");
        if event.event == "close" {
            break event;
        }
        received += 1;
        last_id = event.id.unwrap();
    };
    assert_eq!(close.data["reason"], "overflow");
    assert!(
        received < TOTAL,
        "the slow consumer was cut off, after {received} events"
    );
    assert!(sse.next_event().is_none());
    let metrics = srv.get("/metrics").expect(200).text;
    assert!(
        metrics.contains("emberbase_realtime_events_total{outcome=\"overflow\"} 1"),
        "{metrics}"
    );

    // It resumes where it was cut off and gets every remaining event, once each: replayed,
    // then live. (A node of a cluster may still be publishing the burst while the replay goes
    // out, and cut the tiny queue off again: the client then resumes again, as any does.)
    let mut rest = Vec::new();
    while rest.len() < TOTAL - received {
        let mut resumed = Sse::open(&srv, "subscribe=big", Some(&srv.key), Some(last_id)).unwrap();
        while rest.len() < TOTAL - received {
            let event = resumed
                .next_event()
                .expect("a create, ready or close event");
            match event.event.as_str() {
                "create" => {
                    last_id = event.id.unwrap();
                    rest.push(last_id);
                }
                "ready" => {}
                _ => {
                    assert_eq!(event.data["reason"], "overflow", "{event:?}");
                    break;
                }
            }
        }
    }
    assert!(rest.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
}

/// Opens a connection at `base` (a server's address) with `subscriptions`; returns the stream
/// (past `connected` and `ready`), its id and the `ready` sequence.
pub(crate) fn connect(
    base: &str,
    subscriptions: &Value,
    token: &str,
    last: Option<u64>,
) -> (Sse, String, u64) {
    let url = format!(
        "{base}/v1/realtime/connection?subscriptions={}",
        enc(&subscriptions.to_string())
    );
    let mut sse = Sse::open_url(&url, Some(token), last).unwrap_or_else(|r| panic!("{}", r.text));
    let connected = sse.next_event().expect("connected");
    assert_eq!(connected.event, "connected", "{connected:?}");
    let id = connected.data["connection"].as_str().unwrap().to_string();
    let mut replayed = Vec::new();
    loop {
        let event = sse.next_event().expect("ready");
        if event.event == "ready" {
            assert!(replayed.is_empty(), "unexpected replay {replayed:?}");
            return (sse, id, event.id.unwrap());
        }
        replayed.push(event);
    }
}

/// The next change event's document id and the subscriptions it names.
fn change(sse: &mut Sse) -> (String, Vec<String>) {
    let event = sse.next_event().expect("an event");
    let names = event.data["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("no subscriptions in {event:?}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    (event.data["id"].as_str().unwrap().to_string(), names)
}

#[test]
fn one_connection_carries_subscriptions_added_and_removed_live() {
    let srv = TestServer::start_with(fast);
    share(&srv, "alpha");
    share(&srv, "beta");
    let token = signup_token(&srv, "multi@example.com");
    let (mut sse, connection, _) = connect(
        &srv.url(""),
        &json!([{"name": "a", "subscribe": "alpha"}]),
        &token,
        None,
    );
    let put = |doc: &str, collection: &str, data: Value| {
        srv.put(&format!("/v1/collections/{collection}/docs/{doc}"), &data)
            .expect(201);
    };
    put("x1", "alpha", json!({}));
    assert_eq!(change(&mut sse), ("x1".into(), vec!["a".into()]));

    // Add a filtered subscription to another collection, on the live stream.
    let path = |name: &str| format!("/v1/realtime/connection/{connection}/subscriptions/{name}");
    let body = json!({"subscribe": "beta", "filter": "data.n > 1"});
    let added = with_token(&srv, "PUT", &path("b"), &token, Some(&body)).expect(200);
    assert_eq!(added.json["applied"], true);
    let confirmed = sse.next_event().unwrap();
    assert_eq!(confirmed.event, "subscribed");
    assert_eq!(confirmed.data["subscription"], "b");
    put("y0", "beta", json!({"n": 0}));
    put("y2", "beta", json!({"n": 2}));
    assert_eq!(change(&mut sse), ("y2".into(), vec!["b".into()]));

    // Two subscriptions that match one change: one event naming both.
    let both = json!({"subscribe": "alpha"});
    with_token(&srv, "PUT", &path("c"), &token, Some(&both)).expect(200);
    assert_eq!(sse.next_event().unwrap().event, "subscribed");
    put("x2", "alpha", json!({}));
    assert_eq!(
        change(&mut sse),
        ("x2".into(), vec!["a".into(), "c".into()])
    );

    // Remove one; the other still delivers.
    with_token(&srv, "DELETE", &path("a"), &token, None).expect(200);
    let removed = sse.next_event().unwrap();
    assert_eq!(
        (removed.event.as_str(), &removed.data["subscription"]),
        ("unsubscribed", &json!("a"))
    );
    put("x3", "alpha", json!({}));
    assert_eq!(change(&mut sse), ("x3".into(), vec!["c".into()]));

    // Only the user who opened it may change it; mistakes are clear.
    let other = signup_token(&srv, "other@example.com");
    with_token(&srv, "PUT", &path("d"), &other, Some(&both)).expect_error(404, "not_found");
    // An unknown connection of this node (another node's would be forwarded in a cluster).
    let node = connection.split('.').next().unwrap();
    with_token(
        &srv,
        "PUT",
        &format!("/v1/realtime/connection/{node}.unknown/subscriptions/d"),
        &token,
        Some(&both),
    )
    .expect_error(404, "not_found");
    with_token(&srv, "PUT", &path("bad name"), &token, Some(&both))
        .expect_error(400, "bad_request");
    let bad_filter = json!({"subscribe": "alpha", "filter": "data.n >"});
    with_token(&srv, "PUT", &path("d"), &token, Some(&bad_filter)).expect(400);
    srv.put(
        "/v1/admin/collections/private",
        &json!({"rules": {"read": null}}),
    )
    .expect(200);
    let denied = json!({"subscribe": "private"});
    with_token(&srv, "PUT", &path("d"), &token, Some(&denied)).expect_error(403, "forbidden");
    let bad = Sse::open_url(
        &srv.url("/v1/realtime/connection?subscriptions=%5B1%5D"),
        Some(&token),
        None,
    );
    assert_eq!(bad.err().map(|r| r.status), Some(400));
}

#[test]
fn a_connection_resumes_every_subscription_once_after_kill_9() {
    let Some(node) = Spawned::start(&[], None) else {
        return;
    };
    let base = format!("http://{}", node.addr);
    let key = node.key.clone();
    // a: all of alpha; b: alpha's big ones and all of beta.
    let subscriptions = json!([
        {"name": "a", "subscribe": "alpha"},
        {"name": "b", "subscribe": "alpha,beta", "filter": "data.n > 5"},
    ]);
    let (mut sse, _, _) = connect(&base, &subscriptions, &key, None);
    node.json("PUT", "/v1/collections/alpha/docs/x1", &json!({"n": 1}))
        .expect(201);
    let seen = sse.next_event().unwrap();
    assert_eq!(seen.data["subscriptions"], json!(["a"]));
    let last = seen.id.unwrap();
    drop(sse);
    // Missed while away: one for a, one for both, one for b.
    node.json("PUT", "/v1/collections/alpha/docs/x2", &json!({"n": 2}))
        .expect(201);
    node.json("PUT", "/v1/collections/alpha/docs/x9", &json!({"n": 9}))
        .expect(201);
    node.json("PUT", "/v1/collections/beta/docs/y1", &json!({"n": 100}))
        .expect(201);
    let dir = node.stop();
    let node = Spawned::start_in(dir, &[], None).unwrap();
    let base = format!("http://{}", node.addr);
    let url = format!(
        "{base}/v1/realtime/connection?subscriptions={}",
        enc(&subscriptions.to_string())
    );
    let mut sse =
        Sse::open_url(&url, Some(&key), Some(last)).unwrap_or_else(|r| panic!("{}", r.text));
    assert_eq!(sse.next_event().unwrap().event, "connected");
    let mut replayed = Vec::new();
    loop {
        let event = sse.next_event().unwrap();
        if event.event == "ready" {
            break;
        }
        replayed.push((
            event.data["id"].as_str().unwrap().to_string(),
            event.data["subscriptions"].clone(),
        ));
    }
    assert_eq!(
        replayed,
        [
            ("x2".to_string(), json!(["a"])),
            ("x9".to_string(), json!(["a", "b"])),
            ("y1".to_string(), json!(["b"])),
        ]
    );
}

#[test]
fn the_every_collection_topic_is_for_admins_and_sees_each_change_once() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.realtime.max_topics = 2;
    });
    share(&srv, "alpha");
    let user = signup_token(&srv, "curious@example.com");
    let refused = Sse::open(&srv, "subscribe=*", Some(&user), None)
        .err()
        .expect("a user cannot watch every collection");
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(
        Sse::open(&srv, "subscribe=*", None, None)
            .err()
            .map(|r| r.status),
        Some(401)
    );

    // `*` is not counted against the topic limit, and a stream with `*` and an alpha topic gets
    // every alpha change, once.
    let (mut tail, _) = Sse::live(&srv, "subscribe=*,alpha/a9,gamma", Some(&srv.key));
    let (mut conn, _, _) = connect(
        &srv.url(""),
        &json!([{"name": "all", "subscribe": "*"}, {"name": "a", "subscribe": "alpha"}]),
        &srv.key,
        None,
    );
    srv.put("/v1/collections/alpha/docs/a1", &json!({"n": 1}))
        .expect(201);
    srv.put("/v1/collections/beta/docs/b1", &json!({"n": 2}))
        .expect(201);
    srv.delete("/v1/collections/alpha/docs/a1").expect(204);
    let events = tail.take(3);
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.event.as_str(),
                e.data["collection"].as_str().unwrap(),
                e.data["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("create", "alpha", "a1"),
            ("create", "beta", "b1"),
            ("delete", "alpha", "a1")
        ]
    );
    assert_eq!(
        change(&mut conn),
        ("a1".into(), vec!["a".into(), "all".into()])
    );
    assert_eq!(change(&mut conn), ("b1".into(), vec!["all".into()]));
    assert_eq!(
        change(&mut conn),
        ("a1".into(), vec!["a".into(), "all".into()])
    );
}
