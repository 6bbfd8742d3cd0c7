//! Functions' `mail` host operation: messages land in the outbox (and go over SMTP in the
//! background, also after a restart, tried again while the relay defers them), checked, and
//! limited per function per hour.

use crate::auth::{smtp_relay, smtp_sink};
use crate::common::{fast, TestServer};
use crate::functions::{call, deploy, eventually, replying, start};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::time::Duration;

fn mailer(request: Value) -> Vec<u8> {
    let mut request = request;
    request["op"] = json!("mail");
    replying(&request)
}

/// The outbox's record of a mail.
fn outboxed(srv: &TestServer, id: &str) -> Value {
    let items = srv.get("/v1/admin/outbox?limit=100").expect(200).json["items"].clone();
    items
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn functions_send_mail_through_the_outbox_within_their_hourly_limit() {
    let srv = start();
    let message = json!({"to": ["ada@example.com", "bob@example.com"], "subject": "Your order",
        "text": "It shipped.", "html": "<p>It <b>shipped</b>.</p>"});
    deploy(
        &srv,
        "notify",
        &mailer(message),
        json!({"triggers": [{"on": "http"}], "mail_per_hour": 2}),
    );
    let first = call(&srv, "notify", None, &json!({})).expect(200).json;
    assert_eq!(first["delivery"], "outbox", "{first}");
    let mail = outboxed(&srv, first["id"].as_str().unwrap());
    assert_eq!(mail["function"], "notify");
    assert_eq!(mail["to"], "ada@example.com, bob@example.com");
    assert_eq!(mail["subject"], "Your order");
    assert_eq!(mail["body"], "It shipped.");
    assert_eq!(mail["html"], "<p>It <b>shipped</b>.</p>");

    // The third in an hour is refused; nothing more reaches the outbox.
    call(&srv, "notify", None, &json!({})).expect(200);
    let third = call(&srv, "notify", None, &json!({})).expect(200).json;
    assert_eq!(third["error"]["code"], "rate_limited", "{third}");
    let from_notify = srv.get("/v1/admin/outbox?limit=100").expect(200).json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["function"] == "notify")
        .count();
    assert_eq!(from_notify, 2);

    // 0 forbids mail; the server's default applies otherwise; the config is checked.
    deploy(
        &srv,
        "mute",
        &mailer(json!({"to": "ada@example.com", "subject": "x", "text": "y"})),
        json!({"triggers": [{"on": "http"}], "mail_per_hour": 0}),
    );
    let muted = call(&srv, "mute", None, &json!({})).expect(200).json;
    assert_eq!(muted["error"]["code"], "rate_limited");
    srv.put(
        "/v1/admin/functions/mute/config",
        &json!({"triggers": [{"on": "http"}], "mail_per_hour": 100_001}),
    )
    .expect(400);

    // Bad messages are refused with what is wrong.
    for (name, message, says) in [
        (
            "noaddr",
            json!({"to": "not an address", "subject": "s", "text": "t"}),
            "not an email address",
        ),
        (
            "named",
            json!({"to": "Ada <ada@example.com>", "subject": "s", "text": "t"}),
            "not an email address",
        ),
        (
            "nobody",
            json!({"to": "ada@example.com", "subject": "s"}),
            "text",
        ),
        (
            "twolines",
            json!({"to": "ada@example.com", "subject": "a\r\nBcc: eve@example.com", "text": "t"}),
            "one line",
        ),
        (
            "nolist",
            json!({"to": [], "subject": "s", "text": "t"}),
            "1 to 50",
        ),
    ] {
        deploy(
            &srv,
            name,
            &mailer(message),
            json!({"triggers": [{"on": "http"}]}),
        );
        let reply = call(&srv, name, None, &json!({})).expect(200).json;
        assert_eq!(reply["error"]["code"], "bad_request", "{name}: {reply}");
        let text = reply["error"]["message"].as_str().unwrap();
        assert!(text.contains(says), "{name}: {text}");
    }
}

#[test]
fn a_queued_mail_goes_over_smtp_in_the_background_and_after_a_restart() {
    // A relay that takes connections and never answers: the mail stays queued.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    let message = json!({"to": "ada@example.com", "subject": "Welcome", "text": "Hello.",
        "html": "<p>Hello.</p>"});
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.mail.smtp_url = format!("smtp://127.0.0.1:{stalled_port}");
    });
    deploy(
        &srv,
        "welcome",
        &mailer(message),
        json!({"triggers": [{"on": "http"}]}),
    );
    let sent = call(&srv, "welcome", None, &json!({})).expect(200).json;
    assert_eq!(sent["delivery"], "queued", "{sent}");
    let id = sent["id"].as_str().unwrap().to_string();
    assert_eq!(outboxed(&srv, &id)["delivery"], "queued");
    let dir = srv.stop();

    // The next start delivers it to a relay that works, as a text and HTML alternative.
    let (port, received) = smtp_sink();
    let srv = TestServer::start_in(dir, |c| {
        fast(c);
        c.mail.smtp_url = format!("smtp://127.0.0.1:{port}");
    });
    let transcript = received.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        transcript.contains("RCPT TO:<ada@example.com>"),
        "{transcript}"
    );
    assert!(transcript.contains("Subject: Welcome"), "{transcript}");
    assert!(transcript.contains("multipart/alternative"), "{transcript}");
    assert!(transcript.contains("<p>Hello.</p>"), "{transcript}");
    eventually("the record says sent", || {
        (outboxed(&srv, &id)["delivery"] == "sent").then_some(())
    });
    drop(stalled);
}

/// A server whose mail goes to the relay on `port` (with the rest of `[mail]` from `mail`), and
/// its HTTP function `notify`, which sends one receipt per call.
fn notifier(port: u16, mail: impl FnOnce(&mut emberbase::config::MailConfig)) -> TestServer {
    let srv = TestServer::start_with(|c| {
        fast(c);
        c.mail.smtp_url = format!("smtp://127.0.0.1:{port}");
        mail(&mut c.mail);
    });
    deploy(
        &srv,
        "notify",
        &mailer(json!({"to": "ada@example.com", "subject": "Receipt", "text": "Thanks."})),
        json!({"triggers": [{"on": "http"}]}),
    );
    srv
}

/// Calls `notify`; returns the id of the mail it queued.
fn send_receipt(srv: &TestServer) -> String {
    let sent = call(srv, "notify", None, &json!({})).expect(200).json;
    assert_eq!(sent["delivery"], "queued", "{sent}");
    sent["id"].as_str().unwrap().to_string()
}

#[test]
fn a_relay_that_never_answers_fails_each_attempt_at_the_timeout_and_frees_its_slot() {
    // Connections complete in the kernel's backlog and nothing ever answers, not even the
    // greeting: without a bound on the whole attempt, four such sends held every slot for good.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stalled.local_addr().unwrap().port();
    let srv = notifier(port, |mail| {
        mail.timeout_ms = 300;
        mail.retry_base_ms = 50;
        mail.max_attempts = 2;
    });
    // More messages than the four sending slots: each is tried twice, and fails.
    let ids: Vec<String> = (0..6).map(|_| send_receipt(&srv)).collect();
    for id in &ids {
        let failed = eventually("the stalled mail failed after its attempts", || {
            let mail = outboxed(&srv, id);
            (mail["delivery"] != "queued").then_some(mail)
        });
        assert_eq!(failed["attempts"], 2, "{failed}");
        assert!(
            failed["delivery"]
                .as_str()
                .unwrap()
                .contains("did not finish within 300 ms (mail.timeout_ms)"),
            "{failed}"
        );
    }
    drop(stalled);
}

#[test]
fn a_deferred_mail_is_tried_again_and_a_refused_one_fails_at_once() {
    let deferred = "451 4.7.1 greylisted, try again later";
    // Message 1 is deferred once, then accepted; message 2 is refused; message 3 is deferred
    // on every attempt.
    let (port, transcripts) = smtp_relay(vec![
        deferred,
        "",
        "550 5.1.1 no such mailbox",
        deferred,
        deferred,
        deferred,
    ]);
    let srv = notifier(port, |mail| {
        mail.retry_base_ms = 50;
        mail.max_attempts = 3;
    });
    let send = || send_receipt(&srv);
    let first = send();
    let record = eventually("the deferred mail sent on its second attempt", || {
        let mail = outboxed(&srv, &first);
        (mail["delivery"] == "sent").then_some(mail)
    });
    assert_eq!(record["attempts"], 2, "{record}");
    assert!(record.get("last_error").is_none(), "{record}");
    let relayed = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| transcripts.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect()
    };
    let tried = relayed(2);
    assert!(!tried[0].contains("DATA"), "{}", tried[0]);
    assert!(tried[1].contains("Subject: Receipt"), "{}", tried[1]);

    let second = send();
    let refused = eventually("the refused mail failed", || {
        let mail = outboxed(&srv, &second);
        (mail["delivery"] != "queued").then_some(mail)
    });
    let delivery = refused["delivery"].as_str().unwrap();
    assert!(delivery.starts_with("failed: "), "{refused}");
    assert!(delivery.contains("no such mailbox"), "{refused}");
    assert_eq!(refused["attempts"], 1, "{refused}");

    let third = send();
    let waiting = eventually("the deferred mail waiting for its retry", || {
        let mail = outboxed(&srv, &third);
        (mail["attempts"] == 1).then_some(mail)
    });
    assert_eq!(waiting["delivery"], "queued", "{waiting}");
    assert!(
        waiting["last_error"]
            .as_str()
            .unwrap()
            .contains("greylisted"),
        "{waiting}"
    );
    let gave_up = eventually("the deferred mail failed after its last attempt", || {
        let mail = outboxed(&srv, &third);
        (mail["delivery"] != "queued").then_some(mail)
    });
    assert_eq!(gave_up["attempts"], 3, "{gave_up}");
    assert!(
        gave_up["delivery"].as_str().unwrap().contains("greylisted"),
        "{gave_up}"
    );
    // One attempt for the refused mail, three for the deferred one, and none after.
    relayed(4);
    assert!(transcripts
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}

#[test]
fn queued_mails_outlive_pruning_and_those_an_older_version_left_are_sent() {
    if crate::common::cluster_backend() {
        return;
    }
    let deferred = "451 4.3.0 mailbox busy, try again later";
    // The refused mail, then the first attempts of the three others; from there on it accepts.
    let (port, transcripts) = smtp_relay(vec![
        "550 5.1.1 no such mailbox",
        deferred,
        deferred,
        deferred,
    ]);
    let configure = move |c: &mut emberbase::config::Config| {
        fast(c);
        c.mail.smtp_url = format!("smtp://127.0.0.1:{port}");
        // A deferred mail waits about an hour for its next attempt: longer than this test.
        c.mail.retry_base_ms = 3_600_000;
        c.mail.outbox_kept = 1;
        c.auth.prune_interval_secs = 1;
    };
    let srv = TestServer::start_with(configure);
    for (name, subject) in [
        ("refused", "Refused"),
        ("adopted", "Adopted"),
        ("waiting", "Waiting"),
    ] {
        deploy(
            &srv,
            name,
            &mailer(json!({"to": "ada@example.com", "subject": subject, "text": "Hello."})),
            json!({"triggers": [{"on": "http"}]}),
        );
    }
    let send = |function: &str, settled: &dyn Fn(&Value) -> bool| -> String {
        let sent = call(&srv, function, None, &json!({})).expect(200).json;
        let id = sent["id"].as_str().unwrap().to_string();
        eventually("the mail's first attempt", || {
            settled(&outboxed(&srv, &id)).then_some(())
        });
        id
    };
    let waiting_retry = |mail: &Value| mail["delivery"] == "queued" && mail["attempts"] == 1;
    let refused = send("refused", &|mail| {
        mail["delivery"]
            .as_str()
            .is_some_and(|d| d.starts_with("failed"))
    });
    let adopted = send("adopted", &waiting_retry);
    let waiting = [
        send("waiting", &waiting_retry),
        send("waiting", &waiting_retry),
    ];

    // Only one mail is kept, but pruning takes only the finished one; the queued ones stay.
    eventually("the refused mail pruned", || {
        outboxed(&srv, &refused).is_null().then_some(())
    });
    for id in waiting.iter().chain([&adopted]) {
        assert_eq!(outboxed(&srv, id)["delivery"], "queued");
    }

    // An earlier version kept no queue: one of its queued mails has only its record.
    let dir = srv.stop();
    let entry = format!("mailq:{adopted}");
    crate::common::edit_stopped_store(dir.path(), |engine| async move {
        use emberbase::engine::{Engine, Keyspace};
        assert!(engine
            .get(Keyspace::System, entry.as_bytes())
            .await
            .unwrap()
            .is_some());
        let mut txn = engine.begin().await.unwrap();
        txn.delete(Keyspace::System, entry.into_bytes());
        txn.commit(None).await.unwrap();
    });
    let srv = TestServer::start_in(dir, configure);
    // It is sent at the start, as its second attempt; the others wait for their retry time.
    let relayed: Vec<String> = (0..5)
        .map(|_| transcripts.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    assert!(relayed[4].contains("Subject: Adopted"), "{}", relayed[4]);
    assert!(transcripts
        .recv_timeout(Duration::from_millis(300))
        .is_err());
    // Sent, it is pruned like any finished mail; the waiting ones are still kept.
    eventually("the adopted mail pruned once sent", || {
        outboxed(&srv, &adopted).is_null().then_some(())
    });
    for id in &waiting {
        let mail = outboxed(&srv, id);
        assert_eq!(mail["delivery"], "queued", "{mail}");
        assert_eq!(mail["attempts"], 1, "{mail}");
    }
}
