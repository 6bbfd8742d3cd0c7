//! Trace context through the whole chain (request → change → trigger event → function run →
//! the run's write → webhook delivery), in records, headers and spans exported over OTLP/HTTP
//! to a collector the test starts on loopback (`tests/otlp/collector.py`, which decodes with
//! the protocol's reference bindings from PyPI, installed by `.ci/run` under `target/otlp`).

use crate::common::{fast, metric, send, skip, Resp, Spawned, TestServer};
use crate::functions::{call, deploy, eventually, recorder, respond, writer_to};
use crate::webhooks::Receiver;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The test collector, running until dropped.
struct Collector {
    child: Child,
    port: u16,
}

impl Collector {
    /// Starts it, or `None` (with a skip) when its Python environment is not installed.
    fn start() -> Option<Collector> {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/otlp/bin/python");
        if !std::path::Path::new(python).exists() {
            skip(
                "the OTLP test collector is not installed (.ci/run installs it under target/otlp)",
            );
            return None;
        }
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/otlp/collector.py"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the collector prints its port");
        Some(Collector { child, port })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        let text = ureq::get(&format!("{}/spans", self.endpoint()))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until a span of `trace` satisfying `check` arrived, and returns it.
    fn wait_for(&self, what: &str, trace: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || {
            self.spans()
                .into_iter()
                .find(|s| s["trace_id"] == trace && check(s))
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn traced(collector: &Collector) -> TestServer {
    let endpoint = collector.endpoint();
    TestServer::start_with(move |c| {
        fast(c);
        c.outbound.allow_private_hosts = vec!["127.0.0.1".into()];
        c.telemetry.otlp_endpoint = endpoint;
        c.telemetry.service_name = "emberbase-test".into();
        c.telemetry.export_interval_ms = 50;
    })
}

/// A POST with a `traceparent` header.
fn post_traced(srv: &TestServer, path: &str, traceparent: &str, body: &Value) -> Resp {
    let req = srv
        .admin("POST", path)
        .set("Content-Type", "application/json")
        .set("traceparent", traceparent);
    send(req, Some(body.to_string().as_bytes()))
}

/// The parts of a `traceparent`-shaped header: trace id, span id, flags.
fn parts(header: &str) -> (String, String, String) {
    let fields: Vec<&str> = header.split('-').collect();
    assert_eq!(fields.len(), 4, "{header}");
    assert_eq!(fields[0], "00", "{header}");
    (fields[1].into(), fields[2].into(), fields[3].into())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn one_trace_links_a_request_to_its_function_run_the_run_s_write_and_the_webhook() {
    let Some(collector) = Collector::start() else {
        return;
    };
    let srv = traced(&collector);
    let receiver = Receiver::start();
    deploy(
        &srv,
        "audit",
        &writer_to("audit_log"),
        json!({"triggers": [{"on": "create", "collection": "orders"}]}),
    );
    let hook = srv
        .post(
            "/v1/admin/webhooks",
            &json!({"url": receiver.url(), "collection": "audit_log"}),
        )
        .expect(201);
    let hook_id = hook.json["id"].as_str().unwrap().to_string();

    let created = post_traced(
        &srv,
        "/v1/collections/orders/docs",
        &format!("00-{TRACE}-{CALLER_SPAN}-01"),
        &json!({"data": {"total": 5}}),
    )
    .expect(201);
    let (trace, request_span, flags) = parts(created.header("traceresponse").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(request_span, CALLER_SPAN);

    // The event carries the request's context; the run's record names the trace and its span.
    let run = eventually("the function's run", || {
        srv.get("/v1/admin/functions/audit/invocations?limit=10")
            .expect(200)
            .json["items"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    });
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(run["trace_id"], TRACE);
    assert_eq!(
        run["event"]["traceparent"],
        format!("00-{TRACE}-{request_span}-01")
    );
    let run_span = run["span_id"].as_str().unwrap().to_string();

    // The run's write queues a webhook message in the same trace; the delivery sends its own
    // span as `traceparent`, and the log names both.
    let got = receiver.wait_for(1);
    let (sent_trace, delivery_span, _) = parts(&got[0].headers["traceparent"]);
    assert_eq!(sent_trace, TRACE);
    let attempts = eventually("the delivery's record", || {
        let log = srv
            .get(&format!("/v1/admin/webhooks/{hook_id}/deliveries"))
            .expect(200);
        let items = log.json["items"].as_array().unwrap().clone();
        (!items.is_empty()).then_some(items)
    });
    assert_eq!(attempts[0]["trace_id"], TRACE);
    assert_eq!(attempts[0]["span_id"], delivery_span);
    let messages = srv
        .get(&format!("/v1/admin/webhooks/{hook_id}/messages"))
        .expect(200);
    assert_eq!(messages.json["items"][0]["trace_id"], TRACE);

    // The collector has the chain: request (child of the caller's span), run (child of the
    // request), the run's write (child of the run), the delivery (child of the write).
    let request = collector.wait_for("the request's span", TRACE, |s| {
        s["span_id"] == request_span.as_str()
    });
    assert_eq!(request["parent_span_id"], CALLER_SPAN);
    assert_eq!(request["kind"], "SPAN_KIND_SERVER");
    assert_eq!(request["name"], "POST /v1/collections/{collection}/docs");
    assert_eq!(request["attributes"]["http.response.status_code"], 201);
    assert_eq!(request["service"], "emberbase-test");
    assert_eq!(request["scope"], "emberbase");
    assert!(request["end"].as_u64() >= request["start"].as_u64());
    let function = collector.wait_for("the run's span", TRACE, |s| {
        s["span_id"] == run_span.as_str()
    });
    assert_eq!(function["parent_span_id"], request_span.as_str());
    assert_eq!(function["kind"], "SPAN_KIND_CONSUMER");
    assert_eq!(function["name"], "function audit");
    assert_eq!(function["attributes"]["emberbase.status"], "ok");
    assert_eq!(
        function["attributes"]["emberbase.event_id"],
        run["event_id"]
    );
    let write = collector.wait_for("the run's write", TRACE, |s| {
        s["parent_span_id"] == run_span.as_str()
    });
    assert_eq!(write["name"], "create audit_log");
    assert_eq!(write["kind"], "SPAN_KIND_INTERNAL");
    let delivery = collector.wait_for("the delivery's span", TRACE, |s| {
        s["span_id"] == delivery_span.as_str()
    });
    assert_eq!(delivery["parent_span_id"], write["span_id"]);
    assert_eq!(delivery["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(delivery["name"], "webhook document.created");
    assert_eq!(delivery["attributes"]["http.response.status_code"], 200);
    assert_eq!(delivery["status"], "STATUS_CODE_UNSET");

    // The change feed an embedding program reads carries the context too.
    let changes = srv.block_on(srv.server().changes().after(0, 100)).unwrap();
    let order = changes
        .iter()
        .find(|c| matches!(&c.subject, emberbase::Subject::Document { collection, .. } if collection == "orders"))
        .unwrap();
    assert_eq!(
        order.trace.map(|t| t.to_string()),
        Some(format!("00-{TRACE}-{request_span}-01"))
    );
}

#[test]
fn requests_without_a_usable_traceparent_start_a_trace_and_unsampled_ones_export_nothing() {
    let Some(collector) = Collector::start() else {
        return;
    };
    let srv = traced(&collector);
    deploy(
        &srv,
        "hello",
        &respond(r#"{"status":200,"body":"hi"}"#),
        json!({"triggers": [{"on": "http"}]}),
    );

    // Unsampled: the ids flow (the answer and the run's record name the caller's trace)...
    let quiet = "5bf92f3577b34da6a3ce929d0e0e4736";
    let answered = post_traced(
        &srv,
        "/v1/functions/hello",
        &format!("00-{quiet}-{CALLER_SPAN}-00"),
        &json!({}),
    )
    .expect(200);
    let (trace, _, flags) = parts(answered.header("traceresponse").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (quiet, "00"));

    // No traceparent, and an invalid one: each request starts a new, sampled trace.
    let plain = call(&srv, "hello", None, &json!({})).expect(200);
    let (fresh, fresh_span, flags) = parts(plain.header("traceresponse").unwrap());
    assert_eq!(flags, "01");
    let invalid = post_traced(
        &srv,
        "/v1/functions/hello",
        &format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32)),
        &json!({}),
    )
    .expect(200);
    let (other, _, _) = parts(invalid.header("traceresponse").unwrap());
    assert_ne!(other, fresh);
    assert_ne!(other, "0".repeat(32));

    let request = collector.wait_for("the new trace's request", &fresh, |s| {
        s["span_id"] == fresh_span.as_str()
    });
    assert_eq!(request["parent_span_id"], "");
    assert_eq!(request["name"], "POST /v1/functions/{name}");
    let run = collector.wait_for("the HTTP run", &fresh, |s| {
        s["parent_span_id"] == fresh_span.as_str()
    });
    assert_eq!(run["kind"], "SPAN_KIND_SERVER");
    collector.wait_for("the invalid one's request", &other, |_| true);

    let runs = srv
        .get("/v1/admin/functions/hello/invocations?limit=10")
        .expect(200)
        .json["items"]
        .as_array()
        .unwrap()
        .clone();
    let traces: Vec<&str> = runs.iter().filter_map(|r| r["trace_id"].as_str()).collect();
    assert!(
        traces.contains(&quiet) && traces.contains(&fresh.as_str()),
        "{runs:#?}"
    );
    // Everything sent after the unsampled request has arrived; none of its spans did.
    assert!(collector.spans().iter().all(|s| s["trace_id"] != quiet));
}

#[test]
fn a_collector_that_is_away_costs_spans_not_requests() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = TestServer::start_with(move |c| {
        fast(c);
        c.telemetry.otlp_endpoint = format!("http://127.0.0.1:{port}");
        c.telemetry.export_interval_ms = 20;
    });
    for i in 0..5 {
        srv.post("/v1/collections/notes/docs", &json!({"data": {"i": i}}))
            .expect(201);
    }
    eventually("the dropped spans to be counted", || {
        let text = send(srv.admin("GET", "/metrics"), None).expect(200).text;
        let dropped = metric(&text, "emberbase_trace_spans_total{outcome=\"dropped\"}");
        (dropped >= 5.0).then_some(())
    });
}

#[test]
fn a_bad_telemetry_endpoint_is_refused_at_start() {
    let mut config = emberbase::Config::default();
    config.telemetry.otlp_endpoint = "grpc://127.0.0.1:4317".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
    config.telemetry.otlp_endpoint = String::new();
    config.telemetry.sample_ratio = 1.5;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("telemetry.sample_ratio"), "{err}");
}

#[test]
fn log_lines_of_a_request_and_of_the_function_run_it_caused_name_its_trace() {
    let Some(srv) = Spawned::start(&[], None) else {
        return;
    };
    let upload = srv
        .admin("PUT", "/v1/admin/functions/logger")
        .set("Content-Type", "application/wasm");
    send(upload, Some(&recorder("seen", None))).expect(200);
    srv.json(
        "PUT",
        "/v1/admin/functions/logger/config",
        &json!({"triggers": [{"on": "create", "collection": "orders"}]}),
    )
    .expect(200);
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let req = srv
        .admin("POST", "/v1/collections/orders/docs")
        .set("Content-Type", "application/json")
        .set("traceparent", &format!("00-{trace}-{CALLER_SPAN}-01"));
    send(req, Some(br#"{"data": {}}"#)).expect(201);
    eventually("both log lines", || {
        let log = srv.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(trace)).collect();
        let request = lines
            .iter()
            .any(|l| l.contains("/v1/collections/orders/docs"));
        let run = lines.iter().any(|l| l.contains("recorded"));
        (request && run).then_some(())
    });
}
