//! JavaScript functions: ES modules uploaded as source, run by the engine the server ships,
//! under the same limits as any module.

use crate::common::*;
use crate::functions::{call, eventually, invocations, start};
use serde_json::{json, Value};

pub(crate) fn upload_js(srv: &TestServer, name: &str, source: &str) -> Resp {
    let req = srv
        .admin("PUT", &format!("/v1/admin/functions/{name}"))
        .set("Content-Type", "text/javascript");
    send(req, Some(source.as_bytes()))
}

pub(crate) fn deploy_js(srv: &TestServer, name: &str, source: &str, config: Value) {
    upload_js(srv, name, source).expect(200);
    srv.put(&format!("/v1/admin/functions/{name}/config"), &config)
        .expect(200);
}

fn http(srv: &TestServer, name: &str, source: &str) {
    deploy_js(srv, name, source, json!({"triggers": [{"on": "http"}]}));
}

#[test]
fn a_trigger_reads_and_writes_through_the_emberbase_global() {
    let srv = start();
    deploy_js(
        &srv,
        "audit",
        r#"
        export default async function handle(event) {
          const post = await emberbase.db.get("posts", event.id);
          console.log("saw", event.trigger, post.data.title);
          await emberbase.db.create("audit", { post: event.id, title: post.data.title, version: post.version });
          const { items } = await emberbase.db.query("audit", { filter: `data.post == "${event.id}"` });
          console.warn("audited", items.length);
        }
        "#,
        json!({"triggers": [{"on": "create", "collection": "posts"}]}),
    );
    let info = srv.get("/v1/admin/functions/audit").expect(200);
    assert_eq!(info.json["language"], "javascript");
    srv.put("/v1/collections/posts/docs/p1", &json!({"title": "Hello"}))
        .expect(201);
    let audit = eventually("the audit document", || {
        let list = srv.get("/v1/collections/audit/docs").expect(200);
        list.json["items"].as_array()?.first().cloned()
    });
    assert_eq!(audit["data"]["post"], "p1");
    assert_eq!(audit["data"]["title"], "Hello");
    let record = eventually("the invocation", || {
        invocations(&srv, "audit")
            .into_iter()
            .find(|r| r["status"] == "ok")
    });
    let logs: Vec<(String, String)> = record["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_string(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        logs,
        [
            ("info".to_string(), "saw create Hello".to_string()),
            ("warn".to_string(), "audited 1".to_string())
        ]
    );
}

#[test]
fn an_http_function_answers_and_each_event_starts_fresh() {
    let srv = start();
    http(
        &srv,
        "counter",
        r#"
        let calls = 0;
        const started = Date.now();
        export default function handle(event) {
          calls += 1;
          return {
            status: 201,
            body: { calls, echo: event.body, method: event.method, random: Math.random(),
                    now: Date.now(), loadedAt: started },
          };
        }
        "#,
    );
    let first = call(&srv, "counter", None, &json!({"n": 1})).expect(201);
    let second = call(&srv, "counter", None, &json!({"n": 2})).expect(201);
    // Module state does not carry over: each event starts from the loaded module.
    assert_eq!(first.json["calls"], 1);
    assert_eq!(second.json["calls"], 1);
    assert_eq!(second.json["echo"], json!({"n": 2}));
    assert_eq!(first.json["method"], "POST");
    // Randomness and the clock are the event's own, not the snapshot's.
    assert_ne!(first.json["random"], second.json["random"]);
    let now = first.json["now"].as_f64().unwrap();
    assert!(now >= first.json["loadedAt"].as_f64().unwrap());
}

#[test]
fn a_schedule_fires_a_javascript_function() {
    let srv = start();
    deploy_js(
        &srv,
        "tick",
        r#"export default async (event) => {
             await emberbase.db.set("ticks", "last", { cron: event.cron, at: event.scheduled_for });
           }"#,
        json!({"triggers": [{"on": "schedule", "cron": "* * * * * *"}]}),
    );
    let tick = eventually("a tick", || {
        let r = srv.get("/v1/collections/ticks/docs/last");
        (r.status == 200).then_some(r.json)
    });
    assert_eq!(tick["data"]["cron"], "* * * * * *");
}

#[test]
fn a_thrown_error_fails_the_invocation_with_its_message_and_stack() {
    let srv = start();
    http(
        &srv,
        "thrower",
        "function check(n) {\n  if (n > 1) throw new RangeError(`too big: ${n}`);\n}\nexport default async function handle(event) {\n  check(event.body.n);\n  return { ok: true };\n}\n",
    );
    let failed = call(&srv, "thrower", None, &json!({"n": 5}));
    failed.expect_error(502, "function_failed");
    let record = eventually("the failed invocation", || {
        invocations(&srv, "thrower")
            .into_iter()
            .find(|r| r["status"] == "error")
    });
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("RangeError: too big: 5"), "{error}");
    assert!(error.contains("at check (function.js:2"), "{error}");
    assert!(error.contains("at handle (function.js:5"), "{error}");
    assert_eq!(record["failure"], "thrown");

    // A store refusal rejects with the API's code, which the function can catch.
    http(
        &srv,
        "catcher",
        r#"export default async function handle() {
             try {
               await emberbase.db.update("nothing", "missing", { a: 1 });
             } catch (e) {
               return { status: 200, body: { code: e.code, name: e.name, isError: e instanceof Error } };
             }
           }"#,
    );
    let caught = call(&srv, "catcher", None, &json!({})).expect(200);
    assert_eq!(
        caught.json,
        json!({"code": "not_found", "name": "EmberbaseError", "isError": true})
    );
}

#[test]
fn source_that_does_not_load_is_refused_with_where() {
    let srv = start();
    let refused = upload_js(
        &srv,
        "broken",
        "export default function (event) {\n  return {;\n}\n",
    )
    .expect_error(400, "bad_request");
    let message = refused.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("SyntaxError"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    let no_default =
        upload_js(&srv, "nodefault", "export const x = 1;\n").expect_error(400, "bad_request");
    assert!(
        no_default.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("default"),
        "{}",
        no_default.text
    );
    let top_level_throw = upload_js(&srv, "thrower", "throw new Error('at load');\n")
        .expect_error(400, "bad_request");
    assert!(
        top_level_throw.text.contains("at load"),
        "{}",
        top_level_throw.text
    );
    // JavaScript sent without its content type is taken for a module, and told so.
    let untyped = crate::functions::upload(&srv, "untyped", b"export default () => 1;")
        .expect_error(400, "bad_request");
    assert!(untyped.text.contains("text/javascript"), "{}", untyped.text);
    assert_eq!(
        srv.get("/v1/admin/functions").expect(200).json["items"],
        json!([])
    );
}

#[test]
fn limits_stop_a_javascript_guest_while_the_server_answers() {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.functions.workers = 2;
    });
    let cases = [
        ("spin", "export default function () { for (;;) {} }", json!({}), "fuel"),
        (
            "hog",
            "export default function () { const keep = []; for (;;) keep.push(new Array(100000).fill(1)); }",
            json!({"memory_mb": 16}),
            "thrown",
        ),
        (
            "flood",
            "export default async function () { for (;;) await emberbase.db.get('posts', 'x'); }",
            json!({}),
            "host_calls",
        ),
    ];
    for (name, source, limits, failure) in cases {
        let mut config = json!({"triggers": [{"on": "http"}]});
        for (k, v) in limits.as_object().unwrap() {
            config[k] = v.clone();
        }
        deploy_js(&srv, name, source, config);
        call(&srv, name, None, &json!({})).expect_error(502, "function_failed");
        srv.get("/v1/health").expect(200);
        let record = eventually("the failed invocation", || {
            invocations(&srv, name).into_iter().next()
        });
        assert_eq!(record["failure"], failure, "{name}: {record}");
    }
    // A loop with a generous fuel budget is cut by the wall-clock limit instead.
    deploy_js(
        &srv,
        "slow",
        "export default function () { for (;;) {} }",
        json!({"triggers": [{"on": "http"}], "timeout_ms": 300, "fuel": 1_000_000_000_000u64}),
    );
    call(&srv, "slow", None, &json!({})).expect_error(502, "function_failed");
    let record = eventually("the timed-out invocation", || {
        invocations(&srv, "slow").into_iter().next()
    });
    assert_eq!(record["status"], "timeout", "{record}");
    srv.get("/v1/health").expect(200);
}

#[test]
fn javascript_fetches_reads_secrets_and_sends_mail() {
    let srv = start();
    let up = crate::fetch::Upstream::start();
    deploy_js(
        &srv,
        "integrations",
        r#"
        export default async function handle(event) {
          const key = emberbase.env.get("API_KEY");
          const res = await emberbase.fetch(event.body.url, {
            method: "POST", headers: { "x-token": key }, body: { q: 1 },
          });
          let refused = null;
          try {
            await emberbase.fetch("http://169.254.169.254/latest/meta-data");
          } catch (e) {
            refused = e.code;
          }
          const sent = await emberbase.mail.send({ to: "ada@example.com", subject: "Hi", text: "Hello" });
          return { status: 200, body: {
            status: res.status, ok: res.ok, data: await res.json(), header: res.headers["x-upstream"],
            missing: emberbase.env.get("NOPE"), refused, delivery: sent.delivery, keyLength: key.length,
          } };
        }
        "#,
        json!({"triggers": [{"on": "http"}], "fetch": {"allow": [format!("127.0.0.1:{}", up.port)]}}),
    );
    srv.put(
        "/v1/admin/functions/integrations/secrets/API_KEY",
        &json!({"value": "sk_live_abc"}),
    )
    .expect(200);
    let reply = call(
        &srv,
        "integrations",
        None,
        &json!({"url": up.url("/hello")}),
    )
    .expect(200)
    .json;
    assert_eq!(
        reply,
        json!({"status": 200, "ok": true, "data": {"hi": "there"}, "header": "yes",
            "missing": null, "refused": "forbidden", "delivery": "outbox", "keyLength": 11})
    );
    let got = up.got.lock().unwrap();
    let request = got.last().unwrap();
    assert_eq!(request.headers["x-token"], "sk_live_abc");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.body, r#"{"q":1}"#);
}

#[test]
fn a_javascript_hook_reshapes_and_refuses_writes() {
    let srv = start();
    deploy_js(
        &srv,
        "guard",
        r#"
        export default function handle(event) {
          if (event.trigger === "before_delete") {
            return event.before.data.locked ? { ok: false, status: 403, error: "locked" } : null;
          }
          const title = String(event.data.title ?? "").trim();
          if (!title) return { ok: false, status: 400, error: "a title is needed" };
          return { ok: true, data: { ...event.data, title, slug: title.toLowerCase().replace(/[^a-z0-9]+/g, "-") } };
        }
        "#,
        json!({"triggers": [
            {"on": "before_create", "collection": "posts"},
            {"on": "before_delete", "collection": "posts"}]}),
    );
    let made = srv
        .put(
            "/v1/collections/posts/docs/p1",
            &json!({"title": "  Hello World ", "locked": true}),
        )
        .expect(201);
    assert_eq!(made.json["data"]["slug"], "hello-world");
    assert_eq!(made.json["data"]["title"], "Hello World");
    let refused = srv
        .post("/v1/collections/posts/docs", &json!({"title": " "}))
        .expect_error(400, "validation_failed");
    assert_eq!(
        refused.json["error"]["details"]["message"],
        "a title is needed"
    );
    srv.delete("/v1/collections/posts/docs/p1")
        .expect_error(403, "forbidden");

    // Host writes from JavaScript go through the same hook, and transforms apply.
    http(
        &srv,
        "writer",
        r#"export default async function handle() {
             await emberbase.db.set("posts", "p2", { title: "From JS", likes: 1 });
             const after = await emberbase.db.update("posts", "p2", {}, { transforms: { likes: { $inc: 2 } } });
             return { status: 200, body: after.data };
           }"#,
    );
    let written = call(&srv, "writer", None, &json!({})).expect(200);
    assert_eq!(written.json["slug"], "from-js");
    assert_eq!(written.json["likes"], 3);
}

#[test]
fn functions_invoke_runs_a_javascript_file_against_a_server() {
    let srv = start();
    let files = tempfile::tempdir().unwrap();
    let source = files.path().join("counter.js");
    std::fs::write(
        &source,
        r#"export default async function handle(event) {
             const doc = await emberbase.db.create("seen", { id: event.id });
             console.log("saw", event.id);
             return { ok: true, created: doc.id.length > 0 };
           }"#,
    )
    .unwrap();
    let event = files.path().join("event.json");
    std::fs::write(
        &event,
        json!({"trigger": "create", "collection": "orders", "id": "o1", "before": null,
            "after": {"id": "o1", "data": {}}})
        .to_string(),
    )
    .unwrap();
    let url = format!("http://{}", srv.addr);
    let (ok, stdout, stderr) = crate::functions::invoke_cli(
        &[
            "counter",
            "--event",
            event.to_str().unwrap(),
            "--module",
            source.to_str().unwrap(),
            "--url",
            &url,
        ],
        &[("EB_SERVICE_KEY", &srv.key)],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("saw o1"), "{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer, json!({"ok": true, "created": true}));
    let seen = srv.get("/v1/collections/seen/docs").expect(200);
    assert_eq!(seen.json["items"][0]["data"]["id"], "o1");
}

#[test]
fn a_javascript_function_runs_again_after_a_restart() {
    let srv = start();
    http(
        &srv,
        "kept",
        "export default (event) => ({ status: 200, body: { twice: event.body.n * 2 } });",
    );
    call(&srv, "kept", None, &json!({"n": 2})).expect(200);
    // The stored snapshot is loaded at start (the engine compiled for it then).
    let srv = TestServer::start_in(srv.stop(), fast);
    let answer = call(&srv, "kept", None, &json!({"n": 21})).expect(200);
    assert_eq!(answer.json, json!({"twice": 42}));
}
