//! Functions' outbound `fetch`: only hosts on the function's allow-list, never a private address
//! unless named exactly (also after a redirect), a capped response, a timeout inside the
//! invocation's time; from a WAT guest and from the AssemblyScript SDK.

use crate::functions::{assemblyscript, call, deploy, eventually, invocations, replying, start};
use crate::webhooks::read_request;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP server on loopback for functions to fetch from. `/hello` answers JSON (and records
/// the request), `/big` 2 MiB with a length, `/stream` 2 MiB without one, `/slow` after 10 s,
/// `/redirect?<url>` a 302 to `<url>`.
pub(crate) struct Upstream {
    pub(crate) port: u16,
    pub(crate) got: Arc<Mutex<Vec<crate::webhooks::Received>>>,
}

fn answer(mut stream: &TcpStream, path: &str) {
    let big = "x".repeat(2 << 20);
    let reply = match path.split_once('?').map_or(path, |(p, _)| p) {
        "/hello" => {
            let body = r#"{"hi":"there"}"#;
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: yes\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        "/big" => format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
            big.len()
        ),
        "/stream" => format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{big}"),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(10));
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()
        }
        "/redirect" => format!(
            "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            path.split_once('?').map_or("", |(_, to)| to)
        ),
        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    };
    let _ = stream.write_all(reply.as_bytes());
}

impl Upstream {
    pub(crate) fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<crate::webhooks::Received>>> = Arc::default();
        let seen = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let Some(received) = read_request(&stream) else {
                        return;
                    };
                    let path = received
                        .line
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().unwrap().push(received);
                    answer(&stream, &path);
                });
            }
        });
        Upstream { port, got }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// A function that makes one fetch request and answers with the host's reply as its body.
fn fetcher(request: Value) -> Vec<u8> {
    let mut request = request;
    request["op"] = json!("fetch");
    replying(&request)
}

/// The reply a function that fetches `request` got, with the config's `fetch` section.
fn fetched(srv: &crate::common::TestServer, name: &str, request: Value, fetch: Value) -> Value {
    let mut config = json!({"triggers": [{"on": "http"}]});
    if !fetch.is_null() {
        config["fetch"] = fetch;
    }
    deploy(srv, name, &fetcher(request), config);
    call(srv, name, None, &json!({})).expect(200).json
}

fn refused(reply: &Value, code: &str, says: &str) {
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} does not say {says:?}");
}

#[test]
fn fetch_reaches_only_allowed_hosts_within_its_limits() {
    let srv = start();
    let up = Upstream::start();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let allow_up = json!({"allow": [format!("127.0.0.1:{}", up.port)]});

    // An allowed host, named exactly, may be on loopback: method, headers and body go out, the
    // status, headers and body come back, and the bytes are counted.
    let reply = fetched(
        &srv,
        "ok",
        json!({"method": "POST", "url": up.url("/hello"), "headers": {"x-token": "t1"},
            "body": "{\"q\":1}"}),
        allow_up.clone(),
    );
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"], r#"{"hi":"there"}"#);
    assert_eq!(reply["headers"]["x-upstream"], "yes");
    {
        let got = up.got.lock().unwrap();
        let last = got.last().unwrap();
        assert!(last.line.starts_with("POST /hello "), "{}", last.line);
        assert_eq!(last.headers["x-token"], "t1");
        assert_eq!(last.body, r#"{"q":1}"#);
    }
    let record = eventually("the record", || invocations(&srv, "ok").first().cloned());
    assert_eq!(record["status"], "ok");
    assert!(record["fetch_bytes"].as_u64().unwrap() >= 21, "{record}");
    let usage = srv
        .get("/v1/admin/functions/ok/usage?days=1")
        .expect(200)
        .json;
    assert!(usage["days"][0]["fetch_bytes"].as_u64().unwrap() >= 21);
    let metrics = srv.get("/metrics").expect(200).text;
    assert!(metrics.contains("function_fetch_bytes_total{function=\"ok\"}"));

    // No allow-list, no fetch; a host or port off the list is refused.
    let reply = fetched(&srv, "none", json!({"url": up.url("/hello")}), Value::Null);
    refused(&reply, "forbidden", "fetch.allow");
    let reply = fetched(
        &srv,
        "offlist",
        json!({"url": format!("http://127.0.0.1:{other_port}/")}),
        allow_up.clone(),
    );
    refused(&reply, "forbidden", "not on the allow-list");
    let reply = fetched(
        &srv,
        "otherhost",
        json!({"url": "http://example.com/"}),
        allow_up.clone(),
    );
    refused(&reply, "forbidden", "not on the allow-list");

    // A wildcard reaches public hosts only: loopback by address or by name is refused (the
    // name after it resolves), and so is the cloud metadata address.
    let any = json!({"allow": ["*"]});
    for (name, url) in [
        ("literal", up.url("/hello")),
        ("byname", format!("http://localhost:{}/hello", up.port)),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".into(),
        ),
    ] {
        let reply = fetched(&srv, name, json!({ "url": url }), any.clone());
        refused(&reply, "forbidden", "private");
    }

    // A redirect is checked like the first URL: off the list, or to a private address.
    for (name, to) in [
        ("tooff", format!("http://127.0.0.1:{other_port}/")),
        ("tometa", "http://169.254.169.254/".to_string()),
    ] {
        let reply = fetched(
            &srv,
            name,
            json!({"url": up.url(&format!("/redirect?{to}"))}),
            allow_up.clone(),
        );
        refused(&reply, "forbidden", "");
    }
    let followed = fetched(
        &srv,
        "toallowed",
        json!({"url": up.url(&format!("/redirect?{}", up.url("/hello")))}),
        allow_up.clone(),
    );
    assert_eq!(followed["body"], r#"{"hi":"there"}"#);

    // The response cap holds with and without a length.
    let capped = json!({"allow": [format!("127.0.0.1:{}", up.port)], "max_response_bytes": 1000});
    for (name, path) in [("big", "/big"), ("stream", "/stream")] {
        let reply = fetched(&srv, name, json!({ "url": up.url(path) }), capped.clone());
        refused(&reply, "payload_too_large", "1000 bytes");
    }

    // The fetch timeout, and the invocation's own, stop a slow host; the server keeps serving.
    let started = Instant::now();
    let reply = fetched(
        &srv,
        "slow",
        json!({"url": up.url("/slow")}),
        json!({"allow": [format!("127.0.0.1:{}", up.port)], "timeout_ms": 300}),
    );
    refused(&reply, "unavailable", "within 300 ms");
    assert!(started.elapsed() < Duration::from_secs(8));
    deploy(
        &srv,
        "slowrun",
        &fetcher(json!({"url": up.url("/slow")})),
        json!({"triggers": [{"on": "http"}], "timeout_ms": 500, "fetch": allow_up}),
    );
    // The request gives up just before the invocation's own time does: the guest hears it
    // (or, on a loaded machine, the run is stopped as a timeout), long before the host answers.
    let started = Instant::now();
    let reply = call(&srv, "slowrun", None, &json!({}));
    match reply.status {
        200 => refused(&reply.json, "unavailable", "did not answer within"),
        _ => assert!(reply.text.contains("timed out"), "{}", reply.text),
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    srv.get("/v1/health").expect(200);

    // Settings are checked when the config is put.
    for (fetch, field) in [
        (json!({"allow": ["http://x/"]}), "fetch.allow"),
        (json!({"allow": ["*example.com"]}), "fetch.allow"),
        (
            json!({"allow": ["*"], "max_response_bytes": 0}),
            "fetch.max_response_bytes",
        ),
        (json!({"allow": ["*"], "timeout_ms": 0}), "fetch.timeout_ms"),
    ] {
        let resp = srv
            .put(
                "/v1/admin/functions/ok/config",
                &json!({"triggers": [{"on": "http"}], "fetch": fetch}),
            )
            .expect(400);
        assert_eq!(
            resp.json["error"]["details"]["field"], field,
            "{}",
            resp.text
        );
    }
    drop(other);
}

/// The AssemblyScript SDK's `http.fetch`, in the status-check example, with its URL in a secret.
#[test]
fn the_status_check_example_fetches_from_assemblyscript() {
    let Some(wasm) = assemblyscript("status-check") else {
        return;
    };
    let srv = start();
    let up = Upstream::start();
    deploy(
        &srv,
        "status-check",
        &wasm,
        json!({"triggers": [{"on": "http"}],
            "fetch": {"allow": [format!("127.0.0.1:{}", up.port)]}}),
    );
    let unset = call(&srv, "status-check", None, &json!({})).expect(503);
    assert_eq!(unset.json["error"]["code"], "not_configured");
    srv.put(
        "/v1/admin/functions/status-check/secrets/STATUS_URL",
        &json!({"value": up.url("/hello")}),
    )
    .expect(200);
    let up_now = call(&srv, "status-check", None, &json!({})).expect(200);
    assert_eq!(
        up_now.json,
        json!({"up": true, "upstream_status": 200, "length": 14})
    );
    assert_eq!(
        up.got.lock().unwrap().last().unwrap().headers["accept"],
        "application/json"
    );
    srv.put(
        "/v1/admin/functions/status-check/secrets/STATUS_URL",
        &json!({"value": "http://127.0.0.1:1/"}),
    )
    .expect(200);
    let refused = call(&srv, "status-check", None, &json!({})).expect(502);
    assert_eq!(refused.json["error"]["code"], "forbidden");
    assert!(refused.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not on the allow-list"));
}
