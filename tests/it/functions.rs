//! Wasm functions: upload checks, HTTP calls, triggers with depth, limits, retries, dead
//! letters, schedules and a crash before dispatch. Guests are written in WAT (the `wat` crate).

use crate::common::{agent, fast, send, signup, signup_token, with_token, Resp, TestServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// WAT string literal for bytes.
fn wat_str(s: &str) -> String {
    s.bytes().map(|b| format!("\\{b:02x}")).collect()
}

/// A guest module: the ABI imports, a bump allocator, helpers, constant strings as data
/// segments (`$s0`, `$s1`, ... as offset/length pairs in `$str_ptr`/`$str_len`), and `handle`.
pub(crate) fn guest(strings: &[&str], locals: &str, body: &str) -> Vec<u8> {
    let mut data = String::new();
    let mut ptrs = Vec::new();
    let mut at = 1024u32;
    for s in strings {
        data.push_str(&format!("(data (i32.const {at}) \"{}\")\n", wat_str(s)));
        ptrs.push((at, s.len() as u32));
        at += s.len() as u32 + 8;
    }
    let table = |pick: fn(&(u32, u32)) -> u32| {
        ptrs.iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "(if (i32.eq (local.get $i) (i32.const {i})) (then (return (i32.const {}))))",
                    pick(p)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let src = format!(
        r#"(module
  (import "emberbase" "log" (func $log (param i32 i32 i32)))
  (import "emberbase" "call" (func $call (param i32 i32) (result i32)))
  (import "emberbase" "result_read" (func $result_read (param i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  {data}
  (func $str_ptr (param $i i32) (result i32) {ptr_table} (i32.const 0))
  (func $str_len (param $i i32) (result i32) {len_table} (i32.const 0))
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $n)) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 1))) (i32.const -1))
        (then (return (i32.const 0))))))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
  (func $str (param $i i32) (result i64) (call $pack (call $str_ptr (local.get $i)) (call $str_len (local.get $i))))
  ;; string $a + input + string $b, in fresh memory
  (func $wrap (param $a i32) (param $p i32) (param $n i32) (param $b i32) (result i32 i32)
    (local $out i32) (local $total i32)
    (local.set $total (i32.add (i32.add (call $str_len (local.get $a)) (local.get $n)) (call $str_len (local.get $b))))
    (local.set $out (call $alloc (local.get $total)))
    (memory.copy (local.get $out) (call $str_ptr (local.get $a)) (call $str_len (local.get $a)))
    (memory.copy (i32.add (local.get $out) (call $str_len (local.get $a))) (local.get $p) (local.get $n))
    (memory.copy (i32.add (i32.add (local.get $out) (call $str_len (local.get $a))) (local.get $n))
      (call $str_ptr (local.get $b)) (call $str_len (local.get $b)))
    (local.get $out) (local.get $total))
  ;; whether string $s occurs in p..p+n
  (func $contains (param $p i32) (param $n i32) (param $s i32) (result i32)
    (local $i i32) (local $j i32) (local $m i32) (local $sp i32)
    (local.set $m (call $str_len (local.get $s)))
    (local.set $sp (call $str_ptr (local.get $s)))
    (block $done
      (loop $outer
        (br_if $done (i32.gt_u (i32.add (local.get $i) (local.get $m)) (local.get $n)))
        (local.set $j (i32.const 0))
        (block $miss
          (loop $inner
            (if (i32.eq (local.get $j) (local.get $m)) (then (return (i32.const 1))))
            (br_if $miss (i32.ne (i32.load8_u (i32.add (i32.add (local.get $p) (local.get $i)) (local.get $j)))
                                 (i32.load8_u (i32.add (local.get $sp) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const 0))
  (func $recurse (call $recurse))
  (func (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (local $q i32) (local $qn i32) {locals}
    {body})
)"#,
        data = data,
        ptr_table = table(|p| p.0),
        len_table = table(|p| p.1),
        locals = locals,
        body = body,
    );
    wat::parse_str(&src).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

/// Answers with a constant JSON.
pub(crate) fn respond(json: &str) -> Vec<u8> {
    guest(&[json], "", "(call $str (i32.const 0))")
}

/// Answers with its own event.
pub(crate) fn echo() -> Vec<u8> {
    guest(&[], "", "(call $pack (local.get $ptr) (local.get $len))")
}

/// Creates a document `{"event": <the event>}` in `collection`, logs, and succeeds. With
/// `succeed_on` set, fails (`ok: false`) unless the event contains that text.
pub(crate) fn recorder(collection: &str, succeed_on: Option<&str>) -> Vec<u8> {
    let prefix = format!(r#"{{"op":"create","collection":"{collection}","data":{{"event":"#);
    let strings = [
        prefix.as_str(),
        "}}",
        "recorded",
        succeed_on.unwrap_or("\u{0}never"),
        r#"{"ok":false,"error":"not yet"}"#,
    ];
    let check = if succeed_on.is_some() {
        "(if (i32.eqz (call $contains (local.get $ptr) (local.get $len) (i32.const 3))) (then (return (call $str (i32.const 4)))))"
    } else {
        ""
    };
    let body = format!(
        "(call $wrap (i32.const 0) (local.get $ptr) (local.get $len) (i32.const 1))
         (local.set $qn) (local.set $q)
         (drop (call $call (local.get $q) (local.get $qn)))
         (call $log (i32.const 1) (call $str_ptr (i32.const 2)) (call $str_len (i32.const 2)))
         {check}
         (i64.const 0)"
    );
    guest(&strings, "", &body)
}

/// Creates an empty document in `collection` on every event.
pub(crate) fn writer_to(collection: &str) -> Vec<u8> {
    let request = format!(r#"{{"op":"create","collection":"{collection}","data":{{}}}}"#);
    guest(
        &[&request],
        "",
        "(drop (call $call (call $str_ptr (i32.const 0)) (call $str_len (i32.const 0)))) (i64.const 0)",
    )
}

pub(crate) fn upload(srv: &TestServer, name: &str, wasm: &[u8]) -> Resp {
    let req = srv
        .admin("PUT", &format!("/v1/admin/functions/{name}"))
        .set("Content-Type", "application/wasm");
    send(req, Some(wasm))
}

fn configure(srv: &TestServer, name: &str, config: Value) -> Resp {
    srv.put(&format!("/v1/admin/functions/{name}/config"), &config)
}

pub(crate) fn deploy(srv: &TestServer, name: &str, wasm: &[u8], config: Value) {
    upload(srv, name, wasm).expect(200);
    configure(srv, name, config).expect(200);
}

pub(crate) fn call(srv: &TestServer, name: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut req = srv
        .anon("POST", &format!("/v1/functions/{name}"))
        .set("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    send(req, Some(body.to_string().as_bytes()))
}

/// Every kept invocation of a function, oldest first.
fn invocations_all(srv: &TestServer, name: &str) -> Vec<Value> {
    let mut all = srv
        .get(&format!(
            "/v1/admin/functions/{name}/invocations?limit=1000"
        ))
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .clone();
    all.reverse();
    all
}

pub(crate) fn invocations(srv: &TestServer, name: &str) -> Vec<Value> {
    srv.get(&format!("/v1/admin/functions/{name}/invocations?limit=100"))
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn docs(srv: &TestServer, collection: &str) -> Vec<Value> {
    srv.get(&format!("/v1/collections/{collection}/docs?limit=1000"))
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until `check` holds (or panics after 20 s with `what`).
pub(crate) fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn start() -> TestServer {
    TestServer::start_with(|c| {
        fast(c);
        c.functions.retry_base_ms = 50;
        c.functions.workers = 2;
    })
}

#[test]
fn uploads_are_checked_against_the_abi() {
    let srv = TestServer::start_with(|c| c.functions.max_module_bytes = 64 * 1024);
    let ok = upload(&srv, "hello", &respond(r#"{"hi":1}"#)).expect(200);
    assert_eq!(ok.json["name"], "hello");
    assert_eq!(ok.json["sha256"].as_str().unwrap().len(), 64);
    let listed = srv.get("/v1/admin/functions").expect(200);
    assert_eq!(listed.json["items"][0]["name"], "hello");
    assert_eq!(
        srv.get("/v1/admin/functions/hello").expect(200).json["config"]["triggers"],
        json!([])
    );

    // Every refusal is one line that says what is wrong.
    let bad = |wasm: &[u8], needle: &str| {
        let resp = upload(&srv, "bad", wasm).expect_error(400, "bad_request");
        let message = resp.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle) && !message.contains('\n'),
            "{}",
            resp.text
        );
    };
    bad(
        b"not wasm at all",
        "does not start with the `\\0asm` header",
    );
    bad(b"\0asm\x0d\0\x01\0", "binary format version 65549");
    bad(b"\0asm\x01\0\0\0\x01\x05\x01\x60", "invalid module");
    let no_handle = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    bad(&no_handle, "handle");
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
           (memory (export "memory") 1)
           (func (export "alloc") (param i32) (result i32) (i32.const 0))
           (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    bad(&wasi, "wasi_snapshot_preview1.fd_write");
    let huge_memory = wat::parse_str(
        r#"(module (memory (export "memory") 2000)
           (func (export "alloc") (param i32) (result i32) (i32.const 0))
           (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    bad(&huge_memory, "over the limit");
    let wrong_type = wat::parse_str(
        r#"(module (memory (export "memory") 1)
           (func (export "alloc") (param i32) (result i32) (i32.const 0))
           (func (export "handle") (param i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    bad(&wrong_type, "(i32, i32) -> i64");
    let oversized = vec![0u8; 65 * 1024];
    upload(&srv, "big", &oversized).expect_error(413, "payload_too_large");
    srv.get("/v1/admin/functions/bad")
        .expect_error(404, "not_found");

    // Config is validated, and needs an existing function.
    configure(&srv, "nope", json!({"triggers": []})).expect_error(404, "not_found");
    for bad in [
        json!({"triggers": [{"on": "explode"}]}),
        json!({"triggers": [{"on": "create"}]}),
        json!({"triggers": [{"on": "create", "collection": "bad name"}]}),
        json!({"triggers": [{"on": "schedule", "cron": "not cron"}]}),
        json!({"triggers": [], "timeout_ms": 0}),
        json!({"triggers": [], "memory_mb": -1}),
    ] {
        let resp = configure(&srv, "hello", bad.clone());
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
    }
    // Admins only: without a token, 401 (one is required).
    send(srv.anon("GET", "/v1/admin/functions"), None).expect_error(401, "unauthenticated");
    srv.delete("/v1/admin/functions/hello").expect(204);
    srv.get("/v1/admin/functions/hello")
        .expect_error(404, "not_found");
}

#[test]
fn http_functions_answer_with_and_without_auth() {
    let srv = start();
    deploy(&srv, "echo", &echo(), json!({"triggers": [{"on": "http"}]}));
    let anon = call(&srv, "echo", None, &json!({"q": 1})).expect(200);
    assert_eq!(anon.json["trigger"], "http");
    assert_eq!(anon.json["body"], json!({"q": 1}));
    assert!(anon.json["auth"].is_null());
    let session = signup(&srv, "caller@example.com");
    let token = session["access_token"].as_str().unwrap();
    let authed = call(&srv, "echo", Some(token), &json!([1, 2])).expect(200);
    assert_eq!(authed.json["auth"]["email"], "caller@example.com");
    assert_eq!(authed.json["auth"]["role"], "user");
    call(&srv, "echo", Some("garbage"), &json!({})).expect_error(401, "unauthenticated");

    // A result with a status is passed through as the function wrote it.
    deploy(
        &srv,
        "teapot",
        &respond(r#"{"status":418,"body":{"short":"and stout"}}"#),
        json!({"triggers": [{"on": "http"}]}),
    );
    let resp = call(&srv, "teapot", None, &json!({}));
    assert_eq!(resp.status, 418);
    assert_eq!(resp.json, json!({"short": "and stout"}));
    // No http trigger: not callable.
    deploy(&srv, "private", &echo(), json!({"triggers": []}));
    call(&srv, "private", None, &json!({})).expect_error(404, "not_found");
    let logged = eventually("two invocation records", || {
        let logged = invocations(&srv, "echo");
        (logged.len() == 2).then_some(logged)
    });
    assert_eq!(logged[0]["trigger"], "http");
    assert_eq!(logged[0]["status"], "ok");
    // Prometheus counts invocations per function and status, with a duration histogram.
    let metrics = srv.get("/metrics").expect(200).text;
    assert!(
        metrics.contains(r#"emberbase_function_invocations_total{function="echo",status="ok"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"emberbase_function_duration_seconds_count{function="echo"} 2"#));
}

#[test]
fn triggers_fire_with_before_after_and_auth_up_to_the_depth_limit() {
    let srv = start();
    deploy(
        &srv,
        "rec",
        &recorder("seen", None),
        json!({"triggers": [{"on": "write", "collection": "posts"}]}),
    );
    let session = signup(&srv, "writer@example.com");
    let token = session["access_token"].as_str().unwrap().to_string();
    let user_id = session["user"]["id"].clone();
    let with_token = |method: &str, path: &str, body: Option<Value>| {
        let mut req = srv
            .anon(method, path)
            .set("Authorization", &format!("Bearer {token}"));
        if body.is_some() {
            req = req.set("Content-Type", "application/json");
        }
        send(req, body.map(|b| b.to_string().into_bytes()).as_deref())
    };
    let post = with_token(
        "POST",
        "/v1/collections/posts/docs",
        Some(json!({"title": "a"})),
    )
    .expect(201);
    let id = post.json["id"].as_str().unwrap().to_string();
    with_token(
        "PATCH",
        &format!("/v1/collections/posts/docs/{id}"),
        Some(json!({"title": "b"})),
    )
    .expect(200);
    with_token("DELETE", &format!("/v1/collections/posts/docs/{id}"), None).expect(204);

    let seen = eventually("three events", || {
        let seen = docs(&srv, "seen");
        (seen.len() == 3).then_some(seen)
    });
    let events: Vec<&Value> = seen.iter().map(|d| &d["data"]["event"]).collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["create", "update", "delete"]);
    assert!(events[0]["before"].is_null());
    assert_eq!(events[0]["after"]["data"]["title"], "a");
    assert_eq!(
        (
            events[1]["before"]["version"].as_u64(),
            events[1]["after"]["version"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(events[2]["before"]["data"]["title"], "b");
    assert!(events[2]["after"].is_null());
    for e in &events {
        assert_eq!(e["auth"]["id"], user_id);
        assert_eq!(e["auth"]["role"], "user");
        assert_eq!(e["depth"], 0);
        assert_eq!(e["attempt"], 1);
        assert_eq!(e["collection"], "posts");
        assert_eq!(e["event_id"].as_str().unwrap().len(), 26);
    }
    // The function's own write carries its identity and the next depth.
    assert_eq!(seen[0]["owner"], Value::Null);
    let logs = eventually("three invocation records", || {
        let logs = invocations(&srv, "rec");
        (logs.len() == 3).then_some(logs)
    });
    assert_eq!(logs[0]["logs"][0]["message"], "recorded");
    assert_eq!(logs[0]["logs"][0]["level"], "info");

    // A function that writes to its own trigger collection stops at the depth limit.
    deploy(
        &srv,
        "looper",
        &writer_to("loop"),
        json!({"triggers": [{"on": "create", "collection": "loop"}]}),
    );
    srv.post("/v1/collections/loop/docs", &json!({}))
        .expect(201);
    let dropped = eventually("a dropped event", || {
        let records = invocations(&srv, "looper");
        records.iter().find(|r| r["status"] == "dropped").cloned()
    });
    assert!(
        dropped["error"].as_str().unwrap().contains("depth 5"),
        "{dropped}"
    );
    assert_eq!(
        docs(&srv, "loop").len(),
        6,
        "the client's write and five function writes"
    );

    // File uploads fire bucket triggers.
    deploy(
        &srv,
        "onfile",
        &recorder("seen_files", None),
        json!({"triggers": [{"on": "create", "bucket": "uploads"}]}),
    );
    let req = srv
        .admin("PUT", "/v1/files/uploads/a.txt")
        .set("Content-Type", "text/plain");
    send(req, Some(b"hello")).expect(201);
    let file_event = eventually("a file event", || docs(&srv, "seen_files").first().cloned());
    assert_eq!(file_event["data"]["event"]["bucket"], "uploads");
    assert_eq!(file_event["data"]["event"]["path"], "a.txt");
    assert_eq!(file_event["data"]["event"]["after"]["size"], 5);
}

#[test]
fn trigger_filters_decide_in_the_commit_on_create_update_and_delete() {
    let srv = start();
    let paid = r#"after.data.status == "paid" && before.data.status != "paid""#;
    deploy(
        &srv,
        "filtered",
        &recorder("seen", None),
        json!({"triggers": [
            {"on": "create", "collection": "orders", "when": "after.data.total > 100"},
            {"on": "update", "collection": "orders", "when": paid},
            {"on": "delete", "collection": "orders", "when": r#"before.data.status == "paid""#},
            {"on": "write", "bucket": "uploads", "when": "after.size > 3"},
        ]}),
    );
    let small = srv
        .post(
            "/v1/collections/orders/docs",
            &json!({"status": "open", "total": 50}),
        )
        .expect(201)
        .json;
    let big = srv
        .post(
            "/v1/collections/orders/docs",
            &json!({"status": "open", "total": 500}),
        )
        .expect(201)
        .json;
    let at = |doc: &Value| {
        format!(
            "/v1/collections/orders/docs/{}",
            doc["id"].as_str().unwrap()
        )
    };
    srv.patch(&at(&small), &json!({"status": "paid"}))
        .expect(200);
    // Already paid: no event.
    srv.patch(&at(&small), &json!({"note": "thanks"}))
        .expect(200);
    // Not paid: no event.
    srv.delete(&at(&big)).expect(204);
    srv.delete(&at(&small)).expect(204);
    for (path, body) in [("a.txt", &b"hi"[..]), ("b.txt", &b"hello"[..])] {
        let req = srv
            .admin("PUT", &format!("/v1/files/uploads/{path}"))
            .set("Content-Type", "text/plain");
        send(req, Some(body)).expect(201);
    }

    let seen = eventually("four events", || {
        let seen = docs(&srv, "seen");
        (seen.len() >= 4).then_some(seen)
    });
    let events: Vec<(String, String)> = seen
        .iter()
        .map(|d| {
            let e = &d["data"]["event"];
            let what = e["after"]["data"]["total"]
                .as_u64()
                .or(e["before"]["data"]["total"].as_u64())
                .map_or_else(
                    || e["path"].as_str().unwrap_or("").to_string(),
                    |t| t.to_string(),
                );
            (e["trigger"].as_str().unwrap_or("").to_string(), what)
        })
        .collect();
    let pair = |(a, b): &(&str, &str)| (a.to_string(), b.to_string());
    // Events about one document keep their order; about different ones, a run that failed and
    // is retried may let the next document's event go first (under load, a timeout).
    let mut all = events.clone();
    all.sort();
    let mut expected: Vec<(String, String)> = [
        ("create", "500"),
        ("update", "50"),
        ("delete", "50"),
        ("create", "b.txt"),
    ]
    .iter()
    .map(pair)
    .collect();
    expected.sort();
    assert_eq!(all, expected);
    let fifty: Vec<&(String, String)> = events.iter().filter(|(_, what)| what == "50").collect();
    assert_eq!(fifty, [&pair(&("update", "50")), &pair(&("delete", "50"))]);
    // Nothing was queued for the changes that did not match: no invocation of any kind (each
    // record commits just after its run's own write).
    eventually("four invocations", || {
        (invocations(&srv, "filtered").len() == 4).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(invocations(&srv, "filtered").len(), 4);

    // A `when` is checked like a filter, with its column, and only where it means something.
    let bad = configure(
        &srv,
        "filtered",
        json!({"triggers": [{"on": "create", "collection": "orders", "when": "after.data.n >"}]}),
    );
    let bad = bad.expect_error(400, "validation_failed");
    assert!(bad.text.contains("column 15"), "{}", bad.text);
    let unknown = configure(
        &srv,
        "filtered",
        json!({"triggers": [{"on": "create", "collection": "orders", "when": "doc.x == 1"}]}),
    );
    assert!(unknown
        .expect_error(400, "validation_failed")
        .text
        .contains("before"));
    configure(
        &srv,
        "filtered",
        json!({"triggers": [{"on": "http", "when": "after != null"}]}),
    )
    .expect_error(400, "validation_failed");
}

#[test]
fn runaway_functions_are_stopped_and_the_server_keeps_serving() {
    let srv = start();
    let spin = guest(&[], "", "(loop $l (br $l)) (i64.const 0)");
    deploy(
        &srv,
        "fuel",
        &spin,
        json!({"triggers": [{"on": "http"}], "fuel": 20_000_000}),
    );
    deploy(
        &srv,
        "clock",
        &spin,
        json!({"triggers": [{"on": "http"}], "fuel": 10_000_000_000_000u64, "timeout_ms": 300}),
    );
    let host_loop = guest(&["x"], "", "(loop $l (drop (call $call (call $str_ptr (i32.const 0)) (i32.const 1))) (br $l)) (i64.const 0)");
    deploy(
        &srv,
        "chatty",
        &host_loop,
        json!({"triggers": [{"on": "http"}], "max_host_calls": 50}),
    );
    // Host calls are charged fuel too: 20 M points pay for over a million iterations of
    // the loop alone, past the quota, yet at 10,000 points a call it runs out of fuel first.
    deploy(
        &srv,
        "costly",
        &host_loop,
        json!({"triggers": [{"on": "http"}], "max_host_calls": 1_000_000, "fuel": 20_000_000}),
    );
    let grow = guest(&[], "", "(if (i32.eq (memory.grow (i32.const 2000)) (i32.const -1)) (then unreachable)) (i64.const 0)");
    deploy(
        &srv,
        "grow",
        &grow,
        json!({"triggers": [{"on": "http"}], "memory_mb": 16}),
    );
    let deep = guest(&[], "", "(call $recurse) (i64.const 0)");
    deploy(&srv, "deep", &deep, json!({"triggers": [{"on": "http"}]}));

    for (name, failure) in [
        ("fuel", "fuel"),
        ("clock", "timeout"),
        ("chatty", "host_calls"),
        ("costly", "fuel"),
        ("grow", "trap"),
        ("deep", "trap"),
    ] {
        let resp = call(&srv, name, None, &json!({})).expect_error(502, "function_failed");
        let record = eventually("an invocation record", || {
            invocations(&srv, name).first().cloned()
        });
        assert_eq!(
            record["failure"], failure,
            "{name}: {} / {record}",
            resp.text
        );
        let expected_status = if failure == "timeout" {
            "timeout"
        } else {
            "error"
        };
        assert_eq!(record["status"], expected_status, "{name}");
    }

    // Two runaways at once: health still answers while both run.
    deploy(
        &srv,
        "slow",
        &spin,
        json!({"triggers": [{"on": "http"}], "fuel": 10_000_000_000_000u64, "timeout_ms": 3000}),
    );
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let url = srv.url("/v1/functions/slow");
            std::thread::spawn(move || {
                agent()
                    .post(&url)
                    .set("Content-Type", "application/json")
                    .send_string("{}")
                    .err()
                    .map(|e| match e {
                        ureq::Error::Status(code, _) => code,
                        _ => 0,
                    })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        srv.get("/v1/health").expect(200);
    }
    assert!(
        runners.iter().all(|r| !r.is_finished()),
        "the runaways stopped before health was checked"
    );
    for r in runners {
        assert_eq!(r.join().unwrap(), Some(502));
    }
}

/// Instances reuse the address space of earlier ones (`functions/memories.rs`): a fresh
/// instance must still see only zeros, and nothing past its own size.
#[test]
fn each_invocation_gets_zeroed_memory_that_ends_at_its_size() {
    let srv = start();
    // Grow to 3 pages (cleared by writing zeros) or 8 (cleared by the kernel), fill every
    // byte, and answer nothing.
    for (name, grow) in [("dirty3", 1), ("dirty8", 6)] {
        let dirty = guest(
            &[],
            "",
            &format!(
                "(drop (memory.grow (i32.const {grow})))
                 (memory.fill (i32.const 0) (i32.const 90) (i32.mul (memory.size) (i32.const 65536)))
                 (i64.const 0)"
            ),
        );
        deploy(&srv, name, &dirty, json!({"triggers": [{"on": "http"}]}));
    }
    // Reads bytes of its two pages that neither its data nor its event occupy.
    let probe = guest(
        &[
            r#"{"status":200,"body":"zero"}"#,
            r#"{"status":200,"body":"dirty"}"#,
        ],
        "",
        "(if (i64.eqz (i64.or (i64.or (i64.load (i32.const 8192)) (i64.load (i32.const 65528)))
                              (i64.or (i64.load (i32.const 100000)) (i64.load (i32.const 131064)))))
           (then (return (call $str (i32.const 0)))))
         (call $str (i32.const 1))",
    );
    deploy(&srv, "probe", &probe, json!({"triggers": [{"on": "http"}]}));
    // Loads from the third page, which its memory of two does not have.
    let beyond = guest(
        &[],
        "",
        "(drop (i32.load (i32.const 131088))) (i64.const 0)",
    );
    deploy(
        &srv,
        "beyond",
        &beyond,
        json!({"triggers": [{"on": "http"}]}),
    );

    // One call at a time, so the probe most likely takes the region the dirty run left.
    for round in 0..3 {
        for name in ["dirty3", "dirty8"] {
            call(&srv, name, None, &json!({})).expect(200);
            let probed = call(&srv, "probe", None, &json!({})).expect(200);
            assert_eq!(probed.json, json!("zero"), "after {name}, round {round}");
            call(&srv, name, None, &json!({})).expect(200);
            call(&srv, "beyond", None, &json!({})).expect_error(502, "function_failed");
        }
    }
    let record = eventually("a record of the load past the memory", || {
        invocations(&srv, "beyond").first().cloned()
    });
    assert_eq!(record["failure"], "trap", "{record}");
}

#[test]
fn the_invocation_log_keeps_the_latest_records() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.functions.invocations_kept = 5;
    });
    deploy(
        &srv,
        "copier",
        &writer_to("copies"),
        json!({"triggers": [{"on": "create", "collection": "originals"}]}),
    );
    for i in 0..20 {
        srv.post("/v1/collections/originals/docs", &json!({"i": i}))
            .expect(201);
    }
    eventually("every copy", || {
        (docs(&srv, "copies").len() == 20).then_some(())
    });
    let kept = eventually("the log pruned to its limit", || {
        let records = invocations(&srv, "copier");
        (records.len() <= 5).then_some(records)
    });
    assert_eq!(kept.len(), 5);
    assert!(kept.iter().all(|r| r["status"] == "ok"));
}

#[test]
fn failed_events_are_retried_with_one_event_id_then_dead_lettered() {
    let srv = start();
    deploy(
        &srv,
        "flaky",
        &recorder("attempts", Some("\"attempt\":3")),
        json!({"triggers": [{"on": "create", "collection": "jobs"}], "max_retries": 5}),
    );
    srv.post("/v1/collections/jobs/docs", &json!({"n": 1}))
        .expect(201);
    let attempts = eventually("three attempts", || {
        let records = invocations(&srv, "flaky");
        (records.len() == 3 && records[0]["status"] == "ok").then_some(records)
    });
    let statuses: Vec<&str> = attempts
        .iter()
        .rev()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["error", "error", "ok"]);
    let ids: std::collections::HashSet<&str> = attempts
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one event id across retries");
    let seen = docs(&srv, "attempts");
    let numbers: Vec<u64> = seen
        .iter()
        .map(|d| d["data"]["event"]["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);

    deploy(
        &srv,
        "doomed",
        &respond(r#"{"ok":false,"error":"always"}"#),
        json!({"triggers": [{"on": "create", "collection": "tasks"}], "max_retries": 2}),
    );
    srv.post("/v1/collections/tasks/docs", &json!({}))
        .expect(201);
    let records = eventually("a dead letter", || {
        let records = invocations(&srv, "doomed");
        (records.first().map(|r| r["status"] == "dead") == Some(true)).then_some(records)
    });
    assert_eq!(records.len(), 3, "one attempt and two retries");
    assert_eq!(records[0]["attempt"], 3);
    assert_eq!(records[0]["error"], "always");
    // The log filtered by status: the dead letter alone, then the two failed attempts.
    let only = |status: &str, limit: u32| -> Vec<Value> {
        srv.get(&format!(
            "/v1/admin/functions/doomed/invocations?status={status}&limit={limit}"
        ))
        .expect(200)
        .json["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    let dead = only("dead", 50);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], records[0]["id"]);
    let attempts: Vec<u64> = only("error", 50)
        .iter()
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [2, 1], "newest first");
    assert_eq!(only("error", 1).len(), 1);
    assert!(only("ok", 50).is_empty());
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        invocations(&srv, "doomed").len(),
        3,
        "no attempt after the dead letter"
    );
}

/// Spins, records its event in `ran`, and fails (`ok: false`) when the event is a create with
/// `"fail":true` in it.
fn slow_recorder() -> Vec<u8> {
    guest(
        &[
            r#"{"op":"create","collection":"ran","data":{"event":"#,
            "}}",
            r#""fail":true"#,
            r#"{"ok":false,"error":"refused"}"#,
            r#""trigger":"create""#,
        ],
        "(local $i i32)",
        "(loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 3000000))))
         (call $wrap (i32.const 0) (local.get $ptr) (local.get $len) (i32.const 1))
         (local.set $qn) (local.set $q)
         (drop (call $call (local.get $q) (local.get $qn)))
         (if (i32.and (call $contains (local.get $ptr) (local.get $len) (i32.const 2))
                      (call $contains (local.get $ptr) (local.get $len) (i32.const 4)))
           (then (return (call $str (i32.const 3)))))
         (i64.const 0)",
    )
}

#[test]
fn trigger_events_run_in_parallel_across_documents_and_in_order_within_each() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.functions.retry_base_ms = 50;
        // More workers than the function's concurrency, so that its cap is what limits it.
        c.functions.workers = 6;
        c.functions.invocations_kept = 1000;
    });
    deploy(
        &srv,
        "steps",
        &slow_recorder(),
        json!({"triggers": [{"on": "write", "collection": "tasks"}], "concurrency": 4, "max_retries": 4}),
    );
    // 20 documents, 10 events each (a create and nine updates). The first document's create
    // fails every attempt until it is dead; its later events must wait for that, the other
    // documents' events must not.
    let mut ids = Vec::new();
    for d in 0..20 {
        let doc = srv
            .post(
                "/v1/collections/tasks/docs",
                &json!({"step": 0, "fail": d == 0}),
            )
            .expect(201);
        ids.push(doc.json["id"].as_str().unwrap().to_string());
    }
    for step in 1..10 {
        for id in &ids {
            srv.patch(
                &format!("/v1/collections/tasks/docs/{id}"),
                &json!({"step": step, "fail": false}),
            )
            .expect(200);
        }
    }
    let records = eventually("every event run", || {
        let records = invocations_all(&srv, "steps");
        let done = records
            .iter()
            .filter(|r| r["status"] == "ok" || r["status"] == "dead");
        (done.count() == 200).then_some(records)
    });
    // Oldest first. Every document's events ran in commit order.
    let ran = docs(&srv, "ran");
    for id in &ids {
        let mut steps: Vec<i64> = ran
            .iter()
            .filter(|d| d["data"]["event"]["id"] == id.as_str())
            .map(|d| {
                d["data"]["event"]["after"]["data"]["step"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        steps.dedup();
        assert_eq!(steps, (0..10).collect::<Vec<_>>(), "document {id}");
    }
    // While the first document's create failed, other documents' events ran.
    let first_fail = ran
        .iter()
        .position(|d| d["data"]["event"]["id"] == ids[0].as_str())
        .unwrap();
    let dead_at = ran
        .iter()
        .rposition(|d| {
            d["data"]["event"]["id"] == ids[0].as_str()
                && d["data"]["event"]["after"]["data"]["step"] == 0
        })
        .unwrap();
    assert!(
        dead_at - first_fail >= 4,
        "five attempts of the failing create"
    );
    let others_between = ran[first_fail..dead_at]
        .iter()
        .filter(|d| d["data"]["event"]["id"] != ids[0].as_str())
        .count();
    assert!(
        others_between > 0,
        "the failing document held the others back"
    );
    assert_eq!(records.iter().filter(|r| r["status"] == "dead").count(), 1);
    // Runs overlapped: at least two at once, never more than the concurrency. A record's `at`
    // is its end truncated to the millisecond, so each run is taken to start a millisecond
    // after `at` minus its duration: two runs that seem to overlap then truly did.
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for r in &records {
        let end = time::OffsetDateTime::parse(
            r["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let end_us = (end.unix_timestamp_nanos() / 1000) as i64;
        let start_us = end_us - r["duration_us"].as_i64().unwrap() + 1000;
        edges.push((start_us, 1));
        edges.push((end_us, -1));
    }
    edges.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    assert!((2..=4).contains(&peak), "peak concurrency {peak}");
}

#[test]
fn versions_roll_back_and_a_dead_event_replays_after_a_fix() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.functions.retry_base_ms = 50;
        c.functions.versions_kept = 3;
    });
    let trigger = json!({"triggers": [{"on": "create", "collection": "jobs"}]});
    deploy(&srv, "worker", &writer_to("out_v1"), trigger.clone());
    let job = |n: u64| {
        srv.post("/v1/collections/jobs/docs", &json!({"n": n}))
            .expect(201)
    };
    let ran = |collection: &str, n: usize| {
        eventually(collection, || {
            (docs(&srv, collection).len() == n).then_some(())
        })
    };
    job(1);
    ran("out_v1", 1);
    // A second upload is version 2 and runs from now on.
    let info = upload(&srv, "worker", &writer_to("out_v2"))
        .expect(200)
        .json;
    assert_eq!(info["version"], 2);
    job(2);
    ran("out_v2", 1);
    let versions = srv
        .get("/v1/admin/functions/worker/versions")
        .expect(200)
        .json["items"]
        .clone();
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["active"], true);
    assert_eq!(versions[1]["version"], 1);
    assert_eq!(versions[1]["active"], false);
    // Roll back: the module of version 1, the config as it is.
    let back = srv
        .post("/v1/admin/functions/worker/versions/1/activate", &json!({}))
        .expect(200)
        .json;
    assert_eq!(back["version"], 1);
    assert_eq!(back["config"]["triggers"], trigger["triggers"]);
    job(3);
    ran("out_v1", 2);
    assert_eq!(docs(&srv, "out_v2").len(), 1);
    let records = eventually("three records", || {
        let r = invocations(&srv, "worker");
        (r.len() == 3).then_some(r)
    });
    let named: Vec<u64> = records
        .iter()
        .rev()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(named, [1, 2, 1]);
    srv.post("/v1/admin/functions/worker/versions/9/activate", &json!({}))
        .expect_error(404, "not_found");
    // Only the last three versions are kept (and the active one).
    for _ in 0..3 {
        upload(&srv, "worker", &writer_to("out_v1")).expect(200);
    }
    let kept: Vec<u64> = srv
        .get("/v1/admin/functions/worker/versions")
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, [5, 4, 3]);
    srv.post("/v1/admin/functions/worker/versions/1/activate", &json!({}))
        .expect(404);

    // A function that fails every event; its event dies.
    deploy(
        &srv,
        "billing",
        &respond(r#"{"ok":false,"error":"bug"}"#),
        json!({"triggers": [{"on": "create", "collection": "invoices"}], "max_retries": 1}),
    );
    srv.post("/v1/collections/invoices/docs", &json!({"total": 42}))
        .expect(201);
    let dead = eventually("a dead event", || {
        invocations(&srv, "billing")
            .into_iter()
            .find(|r| r["status"] == "dead")
    });
    assert_eq!(dead["event"]["after"]["data"]["total"], 42);
    let event_id = dead["event_id"].as_str().unwrap();
    // The fix, uploaded; the dead event replayed on it, with its id and payload.
    upload(&srv, "billing", &recorder("billed", None)).expect(200);
    let replayed = srv
        .post(
            "/v1/admin/functions/billing/replay",
            &json!({"event_id": event_id}),
        )
        .expect(200)
        .json;
    assert_eq!(replayed["status"], "ok", "{replayed}");
    assert_eq!(replayed["event_id"], event_id);
    assert_eq!(replayed["replay"], true);
    assert_eq!(replayed["version"], 2);
    let billed = docs(&srv, "billed");
    assert_eq!(billed.len(), 1);
    assert_eq!(billed[0]["data"]["event"]["event_id"], event_id);
    assert_eq!(billed[0]["data"]["event"]["after"]["data"]["total"], 42);
    // On the old version it still fails.
    let again = srv
        .post(
            "/v1/admin/functions/billing/replay",
            &json!({"event_id": event_id, "version": 1}),
        )
        .expect(200)
        .json;
    assert_eq!(
        (again["status"].as_str(), again["version"].as_u64()),
        (Some("error"), Some(1))
    );
    srv.post(
        "/v1/admin/functions/billing/replay",
        &json!({"event_id": "01NOSUCHEVENT"}),
    )
    .expect_error(404, "not_found");
}

/// `emberbase functions invoke` with `args`, in an empty folder; its exit, stdout and stderr.
pub(crate) fn invoke_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(["functions", "invoke"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn functions_invoke_runs_an_event_against_a_data_directory_or_a_server() {
    let files = tempfile::tempdir().unwrap();
    let event = files.path().join("event.json");
    std::fs::write(
        &event,
        json!({"trigger": "create", "collection": "orders", "id": "o1",
               "before": null, "after": {"id": "o1", "data": {"total": 7}}})
        .to_string(),
    )
    .unwrap();
    let event = event.to_str().unwrap();
    let module = files.path().join("recorder.wasm");
    std::fs::write(&module, recorder("remote_seen", None)).unwrap();
    let module = module.to_str().unwrap();

    // Against a running server: the module runs here, its writes land there.
    let srv = start();
    let url = format!("http://{}", srv.addr);
    let (ok, stdout, stderr) = invoke_cli(
        &[
            "recorder", "--event", event, "--module", module, "--url", &url,
        ],
        &[("EB_SERVICE_KEY", &srv.key)],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("recorded"), "the log line: {stderr}");
    assert!(stderr.contains("recorder: ok"), "{stderr}");
    assert_eq!(stdout.trim(), "null");
    let seen = docs(&srv, "remote_seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["data"]["event"]["after"]["data"]["total"], 7);
    assert!(seen[0]["data"]["event"]["event_id"].is_string());
    let (ok, _, stderr) = invoke_cli(
        &["recorder", "--event", event, "--url", &url],
        &[("EB_SERVICE_KEY", &srv.key)],
    );
    assert!(!ok && stderr.contains("--module"), "{stderr}");
    // Secrets stay on the server; aggregates are read through its API.
    let reader = files.path().join("env.wasm");
    std::fs::write(&reader, env_reader("API_KEY")).unwrap();
    let (ok, stdout, stderr) = invoke_cli(
        &[
            "recorder",
            "--event",
            event,
            "--module",
            reader.to_str().unwrap(),
            "--url",
            &url,
        ],
        &[("EB_SERVICE_KEY", &srv.key)],
    );
    assert!(
        ok && stdout.contains("never leave the server"),
        "{stdout}\n{stderr}"
    );
    let counter = files.path().join("count.wasm");
    let request = r#"{"op":"aggregate","collection":"remote_seen","ops":"count"}"#;
    std::fs::write(&counter, answer_of(request)).unwrap();
    let (ok, stdout, stderr) = invoke_cli(
        &[
            "recorder",
            "--event",
            event,
            "--module",
            counter.to_str().unwrap(),
            "--url",
            &url,
        ],
        &[("EB_SERVICE_KEY", &srv.key)],
    );
    assert!(ok && stdout.contains(r#""count": 1"#), "{stdout}\n{stderr}");
    if crate::common::cluster_backend() {
        return;
    }

    // Against a data directory no server holds: the deployed module, then another one.
    deploy(
        &srv,
        "billing",
        &recorder("billed", Some("\"total\":7")),
        json!({"triggers": [{"on": "create", "collection": "invoices"}]}),
    );
    let dir = srv.stop();
    let data = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = invoke_cli(&["billing", "--event", event, "--data-dir", data], &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("recorded") && stderr.contains("(version 1)"),
        "{stderr}"
    );
    let other = files.path().join("event2.json");
    std::fs::write(
        &other,
        json!({"trigger": "create", "after": {"data": {"total": 8}}}).to_string(),
    )
    .unwrap();
    let (ok, stdout, stderr) = invoke_cli(
        &[
            "billing",
            "--event",
            other.to_str().unwrap(),
            "--data-dir",
            data,
        ],
        &[],
    );
    assert!(!ok, "a failing run exits 1: {stdout}\n{stderr}");
    assert!(
        stderr.contains("billing: error") && stderr.contains("not yet"),
        "{stderr}"
    );
    assert!(stdout.contains("\"ok\": false"), "the result: {stdout}");
    let (ok, _, stderr) = invoke_cli(
        &[
            "billing",
            "--event",
            event,
            "--data-dir",
            data,
            "--module",
            module,
        ],
        &[],
    );
    assert!(ok && stderr.contains("(the given module)"), "{stderr}");
    let (ok, _, stderr) = invoke_cli(&["nobody", "--event", event, "--data-dir", data], &[]);
    assert!(!ok && stderr.contains("does not exist"), "{stderr}");

    // The writes are in the directory; the invocation log has only the server's runs.
    let srv = TestServer::start_in(dir, fast);
    assert_eq!(docs(&srv, "billed").len(), 2);
    assert_eq!(docs(&srv, "remote_seen").len(), 2);
    assert!(invocations(&srv, "billing").is_empty());
}

/// Opens a function's log tail (resuming after `last`), as a line reader.
fn tail(srv: &TestServer, name: &str, last: Option<&str>) -> impl std::io::BufRead {
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(20))
        .build();
    let mut req = agent
        .get(&srv.url(&format!("/v1/admin/functions/{name}/logs")))
        .set("Authorization", &format!("Bearer {}", srv.key));
    if let Some(last) = last {
        req = req.set("Last-Event-ID", last);
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.content_type(), "text/event-stream");
    std::io::BufReader::new(resp.into_reader())
}

/// The next `invocation` event's record.
fn next_record(stream: &mut impl std::io::BufRead) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "the tail ended");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data.trim()).unwrap();
        }
    }
}

#[test]
fn the_log_tail_streams_each_new_invocation_and_resumes() {
    let srv = start();
    deploy(
        &srv,
        "tailed",
        &recorder("tail_out", None),
        json!({"triggers": [{"on": "create", "collection": "tail_src"}]}),
    );
    srv.post("/v1/collections/tail_src/docs", &json!({"n": 0}))
        .expect(201);
    eventually("the first run", || {
        (invocations(&srv, "tailed").len() == 1).then_some(())
    });
    // From now: the run before is not sent.
    let mut stream = tail(&srv, "tailed", None);
    for n in 1..=2 {
        srv.post("/v1/collections/tail_src/docs", &json!({"n": n}))
            .expect(201);
    }
    let first = next_record(&mut stream);
    let second = next_record(&mut stream);
    for (record, n) in [(&first, 1), (&second, 2)] {
        assert_eq!(record["status"], "ok");
        assert_eq!(record["logs"][0]["message"], "recorded");
        assert_eq!(record["event"]["after"]["data"]["n"], n, "{record}");
        assert_eq!(record["version"], 1);
    }
    // Resuming after the first sends the second again, and then what is new.
    let mut again = tail(&srv, "tailed", first["id"].as_str());
    assert_eq!(next_record(&mut again)["id"], second["id"]);
    srv.post("/v1/collections/tail_src/docs", &json!({"n": 3}))
        .expect(201);
    assert_eq!(next_record(&mut again)["event"]["after"]["data"]["n"], 3);
    assert_eq!(next_record(&mut stream)["event"]["after"]["data"]["n"], 3);

    srv.get("/v1/admin/functions/nobody/logs")
        .expect_error(404, "not_found");
    let req = srv
        .anon("GET", "/v1/admin/functions/tailed/logs")
        .set("Last-Event-ID", "not-an-id")
        .set("Authorization", &format!("Bearer {}", srv.key));
    send(req, None).expect(400);
    let token = signup(&srv, "ada@example.com")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let req = srv
        .anon("GET", "/v1/admin/functions/tailed/logs")
        .set("Authorization", &format!("Bearer {token}"));
    send(req, None).expect_error(403, "forbidden");
}

#[test]
fn usage_is_recorded_per_run_and_per_day_and_a_quota_pauses_without_loss() {
    let srv = start();
    let http = json!({"triggers": [{"on": "http"}]});
    deploy(&srv, "noop", &respond(r#"{"ok":true}"#), http.clone());
    let looper = guest(
        &[r#"{"ok":true}"#],
        "(local $i i32)",
        "(loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
         (call $str (i32.const 0))",
    );
    deploy(&srv, "looper", &looper, http.clone());
    for name in ["noop", "looper", "looper"] {
        call(&srv, name, None, &json!({})).expect(200);
    }
    let noop = eventually("the noop's record", || invocations(&srv, "noop").pop());
    let looped = eventually("the loops' records", || {
        let records = invocations(&srv, "looper");
        (records.len() == 2).then_some(records)
    });
    let fuel = |r: &Value| r["fuel"].as_u64().unwrap();
    assert!(fuel(&noop) > 0, "{noop}");
    assert!(
        fuel(&looped[0]) > 1_000_000 && fuel(&looped[0]) > 100 * fuel(&noop),
        "{looped:?}"
    );
    assert!(looped[0]["cpu_us"].as_u64().unwrap() > 0);
    assert!(noop["memory_bytes"].as_u64().unwrap() >= 65_536, "{noop}");
    assert_eq!(noop["host_calls"], 0);
    // Per day, through the API and Prometheus.
    let usage = srv
        .get("/v1/admin/functions/looper/usage?days=7")
        .expect(200)
        .json;
    let today = &usage["days"][0];
    assert_eq!(today["invocations"], 2);
    assert_eq!(today["failures"], 0);
    assert_eq!(
        today["fuel"].as_u64().unwrap(),
        fuel(&looped[0]) + fuel(&looped[1])
    );
    assert!(usage.get("paused_until").is_none());
    let metrics = srv.get("/metrics").text;
    let spent = crate::common::metric(
        &metrics,
        "emberbase_function_fuel_total{function=\"looper\"}",
    );
    assert!(
        spent >= (fuel(&looped[0]) + fuel(&looped[1])) as f64,
        "{spent}"
    );
    srv.get("/v1/admin/functions/looper/usage?days=0")
        .expect(400);

    // A quota of three runs a day: three events run, the rest wait.
    deploy(
        &srv,
        "limited",
        &recorder("limited_out", None),
        json!({"triggers": [{"on": "create", "collection": "limited_src"}],
               "daily_quota": {"invocations": 3}}),
    );
    for n in 0..6 {
        srv.post("/v1/collections/limited_src/docs", &json!({"n": n}))
            .expect(201);
    }
    eventually("three runs", || {
        (docs(&srv, "limited_out").len() >= 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(docs(&srv, "limited_out").len(), 3, "the quota held");
    let usage = srv
        .get("/v1/admin/functions/limited/usage")
        .expect(200)
        .json;
    assert!(usage["paused_until"].is_string(), "{usage}");
    assert_eq!(usage["daily_quota"]["invocations"], 3);
    // Raised: the waiting events run, none lost.
    configure(
        &srv,
        "limited",
        json!({"triggers": [{"on": "create", "collection": "limited_src"}],
               "daily_quota": {"invocations": 100}}),
    )
    .expect(200);
    eventually("every event", || {
        (docs(&srv, "limited_out").len() == 6).then_some(())
    });
    // An HTTP function over its quota is refused.
    deploy(
        &srv,
        "once",
        &respond(r#"{"ok":true}"#),
        json!({"triggers": [{"on": "http"}], "daily_quota": {"invocations": 1}}),
    );
    call(&srv, "once", None, &json!({})).expect(200);
    eventually("the refusal", || {
        (call(&srv, "once", None, &json!({})).status == 429).then_some(())
    });
    configure(
        &srv,
        "once",
        json!({"triggers": [{"on": "http"}], "daily_quota": {"fuel": 0}}),
    )
    .expect_error(400, "validation_failed");
}

#[test]
fn schedules_fire_on_time() {
    let srv = start();
    deploy(
        &srv,
        "tick",
        &recorder("ticks", None),
        json!({"triggers": [{"on": "schedule", "cron": "* * * * * *"}]}),
    );
    let ticks = eventually("two ticks", || {
        let ticks = docs(&srv, "ticks");
        (ticks.len() >= 2).then_some(ticks)
    });
    let event = &ticks[0]["data"]["event"];
    assert_eq!(event["trigger"], "schedule");
    assert_eq!(event["cron"], "* * * * * *");
    assert!(event["scheduled_for"].as_str().unwrap().ends_with('Z'));
}

#[cfg(unix)]
#[test]
fn events_committed_before_a_kill_9_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::crash::spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let auth = format!("Bearer {}", key.trim());
    let put = |path: &str, body: &[u8], ct: &str| {
        let req = agent()
            .put(&format!("http://{addr}{path}"))
            .set("Authorization", &auth)
            .set("Content-Type", ct);
        send(req, Some(body))
    };
    // A slow recorder, so that events pile up in the outbox.
    // Spins through a counted loop of 20 M iterations before recording.
    let slow = {
        guest(
            &[r#"{"op":"create","collection":"delivered","data":{"event":"#, "}}"],
            "(local $i i32)",
            "(loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 20000000))))
             (call $wrap (i32.const 0) (local.get $ptr) (local.get $len) (i32.const 1))
             (local.set $qn) (local.set $q)
             (drop (call $call (local.get $q) (local.get $qn)))
             (i64.const 0)",
        )
    };
    put("/v1/admin/functions/slow", &slow, "application/wasm").expect(200);
    put(
        "/v1/admin/functions/slow/config",
        br#"{"triggers": [{"on": "create", "collection": "orders"}]}"#,
        "application/json",
    )
    .expect(200);
    let mut ids = Vec::new();
    for i in 0..30 {
        let req = agent()
            .post(&format!("http://{addr}/v1/collections/orders/docs"))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json");
        let resp = send(req, Some(json!({"i": i}).to_string().as_bytes())).expect(201);
        ids.push(resp.json["id"].as_str().unwrap().to_string());
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, addr) = crate::crash::spawn(dir.path());
    let delivered = eventually("every event delivered", || {
        let req = agent()
            .get(&format!(
                "http://{addr}/v1/collections/delivered/docs?limit=1000"
            ))
            .set("Authorization", &auth);
        let items = send(req, None).json["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let seen: std::collections::HashSet<String> = items
            .iter()
            .filter_map(|d| d["data"]["event"]["id"].as_str().map(str::to_string))
            .collect();
        ids.iter()
            .all(|id| seen.contains(id))
            .then_some(items.len())
    });
    assert!(delivered >= ids.len());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Builds an AssemblyScript example as a user's project builds: in `examples/functions`, whose
/// `package.json` has the compiler and the `emberbase-functions` package (installed with
/// `npm ci` on first use), or `None` when npm is not installed (`.ci/run` installs it).
pub(crate) fn assemblyscript(example: &str) -> Option<Vec<u8>> {
    assemblyscript_source(&format!("{example}/index.ts"))
}

/// Builds an AssemblyScript source (a path from `examples/functions`) as [`assemblyscript`]
/// builds an example.
fn assemblyscript_source(source: &str) -> Option<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = root.join("examples/functions");
    let asc = project.join("node_modules/.bin/asc");
    if !asc.exists() {
        let npm = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&project)
            .status();
        match npm {
            Ok(status) => assert!(status.success(), "npm ci failed in {}", project.display()),
            Err(e) => {
                crate::common::skip(&format!("AssemblyScript examples need npm ({e})"));
                return None;
            }
        }
    }
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = std::process::Command::new(&asc)
        .arg(source)
        .args(["--config", "asconfig.json", "--path", "node_modules", "-o"])
        .arg(out.path())
        .current_dir(&project)
        .status()
        .unwrap();
    assert!(status.success(), "asc failed on {source}");
    Some(std::fs::read(out.path()).unwrap())
}

#[test]
fn the_assemblyscript_sdk_parses_and_writes_json_as_serde_does() {
    let Some(guest) = assemblyscript_source("../../tests/guests/json_roundtrip.ts") else {
        return;
    };
    let srv = start();
    deploy(&srv, "json", &guest, json!({"triggers": [{"on": "http"}]}));
    let s = "a\"b\\c\nd\u{e9}\u{1} tab\t\u{1F600}/";
    let body = json!({
        "s": s,
        "k\"ey": "v",
        "n": [-12, 0, 3.5, 1000, -0.25, 123456789012345u64, 9007199254740991u64, -7, 1.5e-7],
        "nested": {"a": [true, false, null, {}, []], "empty": "", "\u{2028}": "x"},
    });
    let resp = call(&srv, "json", None, &body).expect(200);
    assert_eq!(resp.json["echo"], body);
    assert_eq!(resp.json["quoted"], s);
    assert_eq!(resp.json["built"], json!([{"x": "1"}, {"y": s}, null]));
    // The server hands the body over as serde_json writes it: 1e3 arrives as 1000.0, which
    // takes the parser's path for fractions, and comes back as the integer it is.
    let req = srv
        .anon("POST", "/v1/functions/json")
        .set("Content-Type", "application/json");
    let resp = send(req, Some(br#"{"n":[1e3,-2E2,0.5e1,-0]}"#)).expect(200);
    assert_eq!(resp.json["echo"]["n"], json!([1000, -200, 5, 0]));
}

#[test]
fn assemblyscript_examples_build_and_work() {
    let Some(counter) = assemblyscript("comment-counter") else {
        return;
    };
    let hello = assemblyscript("http-hello").unwrap();
    let cleanup = assemblyscript("session-cleanup").unwrap();
    let srv = start();

    // The counter follows creates, moves and deletes of comments.
    deploy(
        &srv,
        "counter",
        &counter,
        json!({"triggers": [{"on": "write", "collection": "comments"}]}),
    );
    let mut ids = Vec::new();
    for post in ["p1", "p1", "p1", "p2"] {
        let c = srv
            .post(
                "/v1/collections/comments/docs",
                &json!({"post": post, "text": "hi \"there\""}),
            )
            .expect(201);
        ids.push(c.json["id"].as_str().unwrap().to_string());
    }
    srv.delete(&format!("/v1/collections/comments/docs/{}", ids[0]))
        .expect(204);
    srv.patch(
        &format!("/v1/collections/comments/docs/{}", ids[1]),
        &json!({"post": "p2"}),
    )
    .expect(200);
    let counts = eventually("the counts", || {
        let p1 = srv.get("/v1/collections/post_stats/docs/p1");
        let p2 = srv.get("/v1/collections/post_stats/docs/p2");
        let counts = (
            p1.json["data"]["comments"].as_u64(),
            p2.json["data"]["comments"].as_u64(),
        );
        (counts == (Some(1), Some(2))).then_some(counts)
    });
    assert_eq!(counts, (Some(1), Some(2)));
    let logged = invocations(&srv, "counter");
    assert!(logged.iter().all(|r| r["status"] == "ok"), "{logged:?}");
    assert!(logged[0]["logs"][0]["message"]
        .as_str()
        .unwrap()
        .contains("comments"));

    // The HTTP function greets and sees its caller.
    deploy(&srv, "hello", &hello, json!({"triggers": [{"on": "http"}]}));
    let session = signup(&srv, "ada@example.com");
    let resp = call(
        &srv,
        "hello",
        session["access_token"].as_str(),
        &json!({"name": "Ada"}),
    )
    .expect(200);
    assert_eq!(
        resp.json,
        json!({"greeting": "hello, Ada", "caller": "ada@example.com"})
    );
    assert_eq!(
        call(&srv, "hello", None, &json!({})).json["caller"],
        "anonymous"
    );

    // The cleanup removes expired sessions on its schedule, and only those.
    srv.put(
        "/v1/collections/sessions/docs/old",
        &json!({"expires_at": "2000-01-01T00:00:00.000Z"}),
    )
    .expect(201);
    srv.put(
        "/v1/collections/sessions/docs/new",
        &json!({"expires_at": "2999-01-01T00:00:00.000Z"}),
    )
    .expect(201);
    deploy(
        &srv,
        "cleanup",
        &cleanup,
        json!({"triggers": [{"on": "schedule", "cron": "* * * * * *"}]}),
    );
    eventually("the expired session removed", || {
        (srv.get("/v1/collections/sessions/docs/old").status == 404).then_some(())
    });
    srv.get("/v1/collections/sessions/docs/new").expect(200);
}

#[test]
fn replacing_a_module_lets_in_flight_calls_finish_on_the_old_one() {
    let srv = start();
    let slow_v1 = guest(
        &[r#"{"v":1}"#],
        "(local $i i32)",
        "(loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 300000000))))
         (call $str (i32.const 0))",
    );
    deploy(
        &srv,
        "swap",
        &slow_v1,
        json!({"triggers": [{"on": "http"}], "fuel": 10_000_000_000u64}),
    );
    let url = srv.url("/v1/functions/swap");
    let in_flight = std::thread::spawn(move || {
        let resp = agent()
            .post(&url)
            .set("Content-Type", "application/json")
            .send_string("{}")
            .unwrap();
        resp.into_json::<Value>().unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    upload(&srv, "swap", &respond(r#"{"v":2}"#)).expect(200);
    assert_eq!(
        call(&srv, "swap", None, &json!({})).expect(200).json,
        json!({"v": 2})
    );
    assert_eq!(
        in_flight.join().unwrap(),
        json!({"v": 1}),
        "the in-flight call ran the old module"
    );
    // The config survived the replacement.
    assert_eq!(
        srv.get("/v1/admin/functions/swap").json["config"]["fuel"],
        10_000_000_000u64
    );
}

#[cfg(unix)]
#[test]
fn a_tampered_artifact_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::crash::spawn(dir.path());
    let key = std::fs::read_to_string(dir.path().join("service_key")).unwrap();
    let auth = format!("Bearer {}", key.trim());
    let put = |addr: &str, path: &str, body: &[u8], ct: &str| {
        let req = agent()
            .put(&format!("http://{addr}{path}"))
            .set("Authorization", &auth)
            .set("Content-Type", ct);
        send(req, Some(body))
    };
    put(
        &addr,
        "/v1/admin/functions/hi",
        &respond(r#"{"hi":true}"#),
        "application/wasm",
    )
    .expect(200);
    put(
        &addr,
        "/v1/admin/functions/hi/config",
        br#"{"triggers": [{"on": "http"}]}"#,
        "application/json",
    )
    .expect(200);
    child.kill().unwrap();
    child.wait().unwrap();

    let artifacts = dir.path().join("functions/artifacts");
    let files: Vec<_> = std::fs::read_dir(&artifacts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    std::fs::write(&files[0], b"not an artifact this server wrote").unwrap();

    let (mut child, addr) = crate::crash::spawn(dir.path());
    let req = agent()
        .post(&format!("http://{addr}/v1/functions/hi"))
        .set("Content-Type", "application/json");
    assert_eq!(send(req, Some(b"{}")).expect(200).json, json!({"hi": true}));
    let rewritten = std::fs::read(&files[0]).unwrap();
    assert_ne!(
        rewritten, b"not an artifact this server wrote",
        "the artifact was recompiled"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Makes one host request, logs the reply and answers with it.
pub(crate) fn answer_of(request: &str) -> Vec<u8> {
    guest(
        &[request],
        "",
        "(local.set $qn (call $call (call $str_ptr (i32.const 0)) (call $str_len (i32.const 0))))
         (local.set $q (call $alloc (local.get $qn)))
         (call $result_read (local.get $q))
         (call $log (i32.const 1) (local.get $q) (local.get $qn))
         (call $pack (local.get $q) (local.get $qn))",
    )
}

/// Makes one host request and answers an HTTP call with the reply as its body.
pub(crate) fn replying(request: &Value) -> Vec<u8> {
    guest(
        &[&request.to_string(), r#"{"status":200,"body":"#, "}"],
        "",
        "(local.set $qn (call $call (call $str_ptr (i32.const 0)) (call $str_len (i32.const 0))))
         (local.set $q (call $alloc (local.get $qn)))
         (call $result_read (local.get $q))
         (call $wrap (i32.const 1) (local.get $q) (local.get $qn) (i32.const 2))
         (local.set $qn) (local.set $q)
         (call $pack (local.get $q) (local.get $qn))",
    )
}

/// Reads secret `name` with the `env` host operation, logs the reply and answers with it.
pub(crate) fn env_reader(name: &str) -> Vec<u8> {
    answer_of(&format!(r#"{{"op":"env","name":"{name}"}}"#))
}

/// Whether any file under `dir` contains `needle`.
fn found_in_files(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found_in_files(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[test]
fn secrets_are_sealed_write_only_readable_by_the_guest_and_kept_out_of_its_output() {
    const VALUE: &str = "sk_live_51Hx9secretvalue";
    let srv = start();
    deploy(
        &srv,
        "envy",
        &env_reader("API_KEY"),
        json!({"triggers": [{"on": "http"}]}),
    );
    let secret = |name: &str| format!("/v1/admin/functions/envy/secrets/{name}");
    let set = srv
        .put(&secret("API_KEY"), &json!({"value": VALUE}))
        .expect(200);
    assert_eq!(set.json["name"], "API_KEY");
    assert!(!set.text.contains(VALUE));
    let listed = srv.get("/v1/admin/functions/envy/secrets").expect(200);
    assert_eq!(listed.json.as_array().unwrap().len(), 1);
    assert_eq!(listed.json[0]["name"], "API_KEY");
    assert!(!listed.text.contains(VALUE));

    // The guest reads it; what the run answers, logs and records says [secret] instead.
    let answer = call(&srv, "envy", None, &json!({})).expect(200);
    assert!(!answer.text.contains(VALUE), "{}", answer.text);
    assert!(answer.text.contains("[secret]"), "{}", answer.text);
    let records = eventually("the run's record", || {
        Some(invocations(&srv, "envy")).filter(|r| !r.is_empty())
    });
    let record = records[0].to_string();
    assert!(!record.contains(VALUE), "{record}");
    assert_eq!(records[0]["logs"][0]["message"], r#"{"value":"[secret]"}"#);
    // Sealed at rest: the value is nowhere in the data directory.
    assert!(!found_in_files(srv.dir.path(), VALUE.as_bytes()));

    // Names are like environment variables; values are capped; admins only.
    srv.put(&secret("lower"), &json!({"value": "x"}))
        .expect_error(400, "validation_failed");
    srv.put(&secret("BIG"), &json!({"value": "x".repeat(9000)}))
        .expect_error(400, "validation_failed");
    srv.put(
        "/v1/admin/functions/nope/secrets/API_KEY",
        &json!({"value": "x"}),
    )
    .expect_error(404, "not_found");
    let user = signup_token(&srv, "envy@example.com");
    with_token(&srv, "GET", "/v1/admin/functions/envy/secrets", &user, None).expect(403);

    // Removed: the guest reads null. Deleting the function removes its secrets.
    srv.delete(&secret("API_KEY")).expect(204);
    srv.delete(&secret("API_KEY"))
        .expect_error(400, "validation_failed");
    let answer = call(&srv, "envy", None, &json!({})).expect(200);
    assert!(answer.text.contains(r#"{"value":null}"#), "{}", answer.text);
    srv.put(&secret("OTHER"), &json!({"value": "kept"}))
        .expect(200);
    srv.delete("/v1/admin/functions/envy").expect(204);
    deploy(
        &srv,
        "envy",
        &env_reader("OTHER"),
        json!({"triggers": [{"on": "http"}]}),
    );
    assert_eq!(
        srv.get("/v1/admin/functions/envy/secrets").expect(200).json,
        json!([])
    );

    // A cluster's nodes must share the key: it is required with store.url.
    let mut config = emberbase::Config::default();
    config.store.url = "postgres://localhost/none".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("functions.secrets_key"), "{err}");
    config.functions.secrets_key = "short".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("32 bytes"), "{err}");

    if crate::common::cluster_backend() {
        // A cluster's key is the configured one; the rest is about a single node's key file.
        return;
    }
    srv.put(&secret("OTHER"), &json!({"value": VALUE}))
        .expect(200);
    // The key outlives a restart (a file in the data directory, owner-only).
    let dir = srv.stop();
    let key_file = dir.path().join("functions/secrets_key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let srv = TestServer::start_in(dir, fast);
    let answer = call(&srv, "envy", None, &json!({})).expect(200);
    assert!(answer.text.contains("[secret]"), "{}", answer.text);
    // Under another key, the value cannot be opened: the guest hears an error, not garbage.
    let dir = srv.stop();
    let srv = TestServer::start_in(dir, |c| {
        fast(c);
        c.functions.secrets_key = crate::common::SECRETS_KEY.into();
    });
    let refused = call(&srv, "envy", None, &json!({})).expect(200);
    assert!(refused.text.contains("another key"), "{}", refused.text);
}

#[test]
fn a_guest_aggregates_as_the_http_api_does() {
    let srv = start();
    for n in [1, 2, 3] {
        srv.post("/v1/collections/sums/docs", &json!({"n": n}))
            .expect(201);
    }
    let request = r#"{"op":"aggregate","collection":"sums","ops":"count,sum:data.n"}"#;
    deploy(
        &srv,
        "summer",
        &answer_of(request),
        json!({"triggers": [{"on": "http"}]}),
    );
    let answer = call(&srv, "summer", None, &json!({})).expect(200).json;
    assert_eq!(answer["groups"][0]["values"]["count"], 3, "{answer}");
    assert_eq!(answer["groups"][0]["values"]["sum:data.n"], 6.0, "{answer}");
}
