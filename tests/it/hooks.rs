//! Before-write hooks: allow, refuse with the guest's message, reshape the data (which the
//! rules then judge as client data), fail closed on a trap or a timeout, never write, run on
//! every write path, and run again when a concurrent writer changes the document first.

use crate::common::{signup_token, with_token, TestServer};
use crate::functions::{
    answer_of, assemblyscript, deploy, eventually, guest, invocations, respond, start,
};
use serde_json::{json, Value};
use std::time::Duration;

fn hook(on: &str, collection: &str) -> Value {
    json!({"triggers": [{"on": on, "collection": collection}]})
}

/// Asserts a refusal by a hook: its status, code and details.
fn refused_by(resp: &crate::common::Resp, status: u16, function: &str, hook: &str) {
    assert_eq!(resp.status, status, "{}", resp.text);
    let details = if resp.json["error"]["details"]["function"].is_null() {
        &resp.json["error"]["details"]["error"]
    } else {
        &resp.json["error"]["details"]
    };
    assert_eq!(details["function"], function, "{}", resp.text);
    assert_eq!(details["hook"], hook, "{}", resp.text);
}

#[test]
fn hooks_allow_refuse_and_reshape_writes_on_every_path() {
    let srv = start();

    // Refused with the guest's message, on every path that creates: POST, PUT, a batch, a
    // user's token, and a trigger function's host write.
    deploy(
        &srv,
        "no-notes",
        &respond(r#"{"ok":false,"error":"no notes today","status":400}"#),
        hook("before_create", "notes"),
    );
    let post = srv.post("/v1/collections/notes/docs", &json!({"t": 1}));
    refused_by(&post, 400, "no-notes", "before_create");
    assert_eq!(post.json["error"]["code"], "validation_failed");
    assert_eq!(post.json["error"]["details"]["message"], "no notes today");
    let put = srv.put("/v1/collections/notes/docs/n1", &json!({"t": 1}));
    refused_by(&put, 400, "no-notes", "before_create");
    let batch = srv.post(
        "/v1/batch",
        &json!({"ops": [{"op": "create", "collection": "other", "data": {}},
                        {"op": "create", "collection": "notes", "data": {}}]}),
    );
    assert_eq!(batch.status, 400, "{}", batch.text);
    assert_eq!(batch.json["error"]["details"]["op"], 1, "{}", batch.text);
    let user = signup_token(&srv, "ada@example.com");
    let by_user = with_token(
        &srv,
        "POST",
        "/v1/collections/notes/docs",
        &user,
        Some(&json!({"t": 1})),
    );
    refused_by(&by_user, 400, "no-notes", "before_create");
    deploy(
        &srv,
        "note-taker",
        &answer_of(r#"{"op":"create","collection":"notes","data":{}}"#),
        json!({"triggers": [{"on": "create", "collection": "inbox"}]}),
    );
    srv.post("/v1/collections/inbox/docs", &json!({}))
        .expect(201);
    let taker = eventually("the trigger's run", || {
        invocations(&srv, "note-taker").into_iter().next()
    });
    assert!(
        taker["logs"].to_string().contains("no notes today"),
        "{taker}"
    );
    assert!(
        srv.get("/v1/collections/notes/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        srv.get("/v1/collections/other/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let record = eventually("the hook's record", || {
        invocations(&srv, "no-notes")
            .into_iter()
            .find(|r| r["status"] == "rejected")
    });
    assert_eq!(record["trigger"], "before_create");

    // A delete refused (403 by default); an update with no hook bound goes through.
    deploy(
        &srv,
        "keep-tags",
        &respond(r#"{"ok":false,"error":"tags stay"}"#),
        hook("before_delete", "tags"),
    );
    srv.put("/v1/collections/tags/docs/t1", &json!({"n": 1}))
        .expect(201);
    let delete = srv.delete("/v1/collections/tags/docs/t1");
    refused_by(&delete, 403, "keep-tags", "before_delete");
    assert_eq!(delete.json["error"]["code"], "forbidden");
    srv.patch("/v1/collections/tags/docs/t1", &json!({"n": 2}))
        .expect(200);

    // Changed data replaces the client's (a patch, for an update), and the collection's write
    // rule judges what the hook returned.
    deploy(
        &srv,
        "stamp",
        &respond(r#"{"ok":true,"data":{"stamped":true}}"#),
        json!({"triggers": [{"on": "before_create", "collection": "stamped"},
                            {"on": "before_update", "collection": "stamped"}]}),
    );
    let created = srv
        .post("/v1/collections/stamped/docs", &json!({"x": 1}))
        .expect(201);
    assert_eq!(created.json["data"], json!({"stamped": true}));
    let id = created.json["id"].as_str().unwrap();
    let patched = srv
        .patch(
            &format!("/v1/collections/stamped/docs/{id}"),
            &json!({"stamped": false, "y": 2}),
        )
        .expect(200);
    assert_eq!(patched.json["data"], json!({"stamped": true}));
    // Silent runs that let a write through are counted in the daily usage, not recorded one
    // by one (that would be a second store write per client write).
    let runs = eventually("the stamp hook's usage", || {
        let usage = srv
            .get("/v1/admin/functions/stamp/usage?days=1")
            .expect(200)
            .json;
        let runs = usage["days"][0]["invocations"].as_u64().unwrap_or(0);
        (runs >= 2).then_some(runs)
    });
    assert_eq!(runs, 2);
    assert!(invocations(&srv, "stamp").is_empty());
    srv.put(
        "/v1/admin/collections/stamped",
        &json!({"rules": {"create": "auth.id != null && request.data.stamped != true"}}),
    )
    .expect(200);
    let ruled = with_token(
        &srv,
        "POST",
        "/v1/collections/stamped/docs",
        &user,
        Some(&json!({"stamped": false})),
    );
    assert_eq!(ruled.status, 403, "{}", ruled.text);

    // A hook may read but not write: its write is refused, the client's goes through.
    deploy(
        &srv,
        "sneaky",
        &answer_of(r#"{"op":"create","collection":"side","data":{}}"#),
        hook("before_create", "plain"),
    );
    srv.post("/v1/collections/plain/docs", &json!({}))
        .expect(201);
    assert!(
        srv.get("/v1/collections/side/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let sneaky = eventually("the sneaky record", || {
        invocations(&srv, "sneaky").into_iter().next()
    });
    assert!(
        sneaky["logs"]
            .to_string()
            .contains("may read but not write"),
        "{sneaky}"
    );

    // Hooks are checked when configured.
    for bad in [
        json!({"triggers": [{"on": "before_create", "bucket": "b"}]}),
        json!({"triggers": [{"on": "before_update", "collection": "c", "when": "true"}]}),
        json!({"triggers": [{"on": "before_create", "collection": "c"}], "hook_timeout_ms": 0}),
    ] {
        srv.put("/v1/admin/functions/stamp/config", &bad)
            .expect(400);
    }
}

#[test]
fn a_hook_that_traps_or_runs_out_refuses_the_write() {
    let srv = start();
    deploy(
        &srv,
        "trapper",
        &guest(&[], "", "(unreachable)"),
        hook("before_create", "traps"),
    );
    let trapped = srv.post("/v1/collections/traps/docs", &json!({}));
    refused_by(&trapped, 502, "trapper", "before_create");
    assert_eq!(trapped.json["error"]["code"], "function_failed");

    // An endless loop stops at the hook's own small budget, not the function's 30 s.
    deploy(
        &srv,
        "spinner",
        &guest(&[], "", "(loop $l (br $l)) (i64.const 0)"),
        json!({"triggers": [{"on": "before_update", "collection": "spins"}],
               "timeout_ms": 30000, "fuel": 100000000000u64}),
    );
    srv.put("/v1/collections/spins/docs/s1", &json!({"n": 1}))
        .expect(201);
    let started = std::time::Instant::now();
    let spun = srv.patch("/v1/collections/spins/docs/s1", &json!({"n": 2}));
    refused_by(&spun, 502, "spinner", "before_update");
    assert!(started.elapsed() < Duration::from_secs(10));
    srv.get("/v1/health").expect(200);
    assert_eq!(
        srv.get("/v1/collections/spins/docs/s1").expect(200).json["data"]["n"],
        1
    );
    assert!(
        srv.get("/v1/collections/traps/docs").expect(200).json["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A result that is not a verdict refuses too.
    deploy(
        &srv,
        "babbler",
        &respond(r#"{"ok":"maybe"}"#),
        hook("before_create", "babble"),
    );
    let babbled = srv.post("/v1/collections/babble/docs", &json!({}));
    refused_by(&babbled, 502, "babbler", "before_create");
}

/// Two writers patch one document at once: each hook run starts from the document it was
/// shown, and the one that loses the commit runs its hook again on the winner's version.
#[test]
fn a_concurrent_change_runs_the_hook_again_on_the_fresh_document() {
    let srv = TestServer::start_with(|c| {
        crate::common::fast(c);
        c.functions.hook_workers = 2;
    });
    // Logs its event, then spins for a while, so that both writers read before either commits.
    deploy(
        &srv,
        "slow-hook",
        &guest(
            &[],
            "",
            "(call $log (i32.const 1) (local.get $ptr) (local.get $len))
             (local.set $q (i32.const 0))
             (loop $spin
               (local.set $q (i32.add (local.get $q) (i32.const 1)))
               (br_if $spin (i32.lt_u (local.get $q) (i32.const 20000000))))
             (i64.const 0)",
        ),
        json!({"triggers": [{"on": "before_update", "collection": "race"}],
               "hook_timeout_ms": 5000, "hook_fuel": 10000000000u64}),
    );
    srv.put("/v1/collections/race/docs/r1", &json!({"a": 0, "b": 0}))
        .expect(201);
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|field| {
            let (url, key) = (srv.url("/v1/collections/race/docs/r1"), srv.key.clone());
            std::thread::spawn(move || {
                crate::common::agent()
                    .request("PATCH", &url)
                    .set("Authorization", &format!("Bearer {key}"))
                    .set("Content-Type", "application/json")
                    .send_string(&json!({ field: 1 }).to_string())
                    .map(|r| r.status())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        })
        .collect();
    for w in writers {
        assert_eq!(w.join().unwrap(), 200);
    }
    let doc = srv.get("/v1/collections/race/docs/r1").expect(200).json;
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["data"], json!({"a": 1, "b": 1}));

    // Three runs: both saw version 1, and the loser ran again on version 2.
    let runs = eventually("three hook records", || {
        let runs = invocations(&srv, "slow-hook");
        (runs.len() == 3).then_some(runs)
    });
    let seen: Vec<u64> = runs
        .iter()
        .map(|r| {
            let event: Value =
                serde_json::from_str(r["logs"][0]["message"].as_str().unwrap()).unwrap();
            event["before"]["version"].as_u64().unwrap()
        })
        .collect();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 1, 2], "{seen:?}");
}

/// The post-guard example: AssemblyScript hooks that refuse, reshape and protect.
#[test]
fn the_post_guard_example_checks_titles_adds_slugs_and_keeps_locked_posts() {
    let Some(wasm) = assemblyscript("post-guard") else {
        return;
    };
    let srv = start();
    deploy(
        &srv,
        "post-guard",
        &wasm,
        json!({"triggers": [{"on": "before_create", "collection": "posts"},
                            {"on": "before_update", "collection": "posts"},
                            {"on": "before_delete", "collection": "posts"}]}),
    );
    let untitled = srv.post("/v1/collections/posts/docs", &json!({"title": "  "}));
    refused_by(&untitled, 400, "post-guard", "before_create");
    assert_eq!(
        untitled.json["error"]["details"]["message"],
        "a post needs a title"
    );
    let post = srv
        .post(
            "/v1/collections/posts/docs",
            &json!({"title": "Hello, World!", "locked": true}),
        )
        .expect(201);
    assert_eq!(post.json["data"]["slug"], "hello-world");
    let id = post.json["id"].as_str().unwrap();
    let renamed = srv
        .patch(
            &format!("/v1/collections/posts/docs/{id}"),
            &json!({"title": "Second Try"}),
        )
        .expect(200);
    assert_eq!(renamed.json["data"]["slug"], "second-try");
    let long = srv.patch(
        &format!("/v1/collections/posts/docs/{id}"),
        &json!({"title": "x".repeat(121)}),
    );
    refused_by(&long, 400, "post-guard", "before_update");
    let locked = srv.delete(&format!("/v1/collections/posts/docs/{id}"));
    refused_by(&locked, 403, "post-guard", "before_delete");
    srv.patch(
        &format!("/v1/collections/posts/docs/{id}"),
        &json!({"locked": false}),
    )
    .expect(200);
    srv.delete(&format!("/v1/collections/posts/docs/{id}"))
        .expect(204);
}

#[test]
fn a_hook_waiting_on_a_fetch_does_not_hold_up_other_hooks() {
    // One hook worker: without the hand-off, the second write would wait for the first's fetch.
    let srv = TestServer::start_with(|c| {
        crate::common::fast(c);
        c.functions.hook_workers = 1;
    });
    let up = crate::fetch::Upstream::start();
    let slow = format!(
        "export default async function handle() {{\n  await emberbase.fetch({:?}).catch(() => null);\n  return null;\n}}\n",
        up.url("/slow")
    );
    crate::javascript::deploy_js(
        &srv,
        "waits",
        &slow,
        json!({"triggers": [{"on": "before_create", "collection": "slow"}],
            "hook_timeout_ms": 10_000, "fetch": {"allow": [format!("127.0.0.1:{}", up.port)]}}),
    );
    crate::javascript::deploy_js(
        &srv,
        "checks",
        "export default function handle(event) { return { ok: true, data: { ...event.data, checked: true } }; }",
        hook("before_create", "fast"),
    );
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| srv.post("/v1/collections/slow/docs", &json!({"a": 1})));
        crate::functions::eventually("the hook's fetch to reach the upstream", || {
            let got = up.got.lock().unwrap();
            got.iter()
                .any(|r| r.line.starts_with("GET /slow "))
                .then_some(())
        });
        let fast = srv
            .post("/v1/collections/fast/docs", &json!({"b": 2}))
            .expect(201);
        assert_eq!(fast.json["data"]["checked"], true);
        assert!(
            !waiting.is_finished(),
            "the first write's hook should still be waiting on its fetch"
        );
        // The waiting hook ends with its deadline (the upstream answers after 10 s): the write
        // goes through, or is refused as a hook that ran out of time is.
        let status = waiting.join().unwrap().status;
        assert!(status == 201 || status == 502, "{status}");
    });
    // Back to one hook worker: more hooked writes are served as before.
    for n in 0..3 {
        srv.post("/v1/collections/fast/docs", &json!({"n": n}))
            .expect(201);
    }
}
