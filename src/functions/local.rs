//! One run of a function outside delivery, for `emberbase functions invoke`: a module (or a
//! deployed function) run once on an event from a file, with its host calls going to a data
//! directory (`Functions::invoke_once`, through the document service as a delivery's do) or to
//! a running server's HTTP API as its service key (`invoke_remote`). Nothing is recorded in
//! the function's log; the caller prints the record and the result.

use super::error::internal;
use super::invoke::limits_of;
use super::runtime::{Host, Lane, Outcome, Runtime};
use super::{
    check_name, dispatch, FunctionConfig, FunctionInfo, FunctionRecord, Functions, FunctionsError,
    Invocation, Language, Loaded, Result,
};
use crate::config::FunctionsConfig;
use crate::model::now_rfc3339;
use crate::trace::TraceContext;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::sync::Arc;

/// What one run outside delivery did: its invocation record (status, duration, error, logs,
/// the version of a deployed function) and the result it returned.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalRun {
    pub invocation: Invocation,
    /// The function's result as JSON (`null` when it returned none or failed).
    pub result: Value,
}

/// The lane and depth an event runs with: HTTP calls on the HTTP lane, the rest as events, one
/// level deeper than the event.
fn lane_and_depth(event: &Value) -> (Lane, u32) {
    let lane = match event.get("trigger").and_then(Value::as_str) {
        Some("http") => Lane::Http,
        _ => Lane::Events,
    };
    let depth = event.get("depth").and_then(Value::as_u64).unwrap_or(0) as u32;
    (lane, depth + 1)
}

fn local_run(
    event: &Value,
    outcome: Outcome,
    version: Option<u32>,
    trace: Option<TraceContext>,
) -> LocalRun {
    let result = match &outcome.result {
        Ok(Some(bytes)) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let attempt = event.get("attempt").and_then(Value::as_u64).unwrap_or(1) as u32;
    let (invocation, _) = dispatch::judge(event, attempt, outcome, now_rfc3339(), version, trace);
    LocalRun { invocation, result }
}

impl Functions {
    /// Runs a module once on `event`, its host calls reading and writing this store as the
    /// function's would: `module`, checked against the ABI but not stored, or else the
    /// deployed function `name`'s active module. The writes queue events and webhook messages
    /// as any write does; the caller decides whether this process delivers them.
    pub(crate) async fn invoke_once(
        &self,
        name: &str,
        module: Option<Vec<u8>>,
        event: Value,
    ) -> Result<LocalRun> {
        check_name(name)?;
        let deployed = self.loaded(name);
        let loaded = match (module, deployed) {
            (None, Some(deployed)) => deployed,
            (None, None) => return Err(FunctionsError::NotFound(name.into())),
            (Some(wasm), deployed) => {
                let config = deployed
                    .map(|d| d.record.info.config.clone())
                    .unwrap_or_default();
                let limits = limits_of(&self.inner.config, &config);
                let artifact = self
                    .inner
                    .runtime
                    .build(&wasm, limits, self.inner.config.max_table_elements)
                    .map_err(FunctionsError::InvalidModule)?;
                let module = self.inner.runtime.load(&artifact).map_err(internal)?;
                Arc::new(Loaded {
                    record: unstored(name, config, &wasm),
                    module,
                })
            }
        };
        let version = (loaded.record.latest_version > 0).then_some(loaded.record.info.version);
        let (lane, depth) = lane_and_depth(&event);
        let parent = dispatch::event_trace(&event);
        let (outcome, trace) = self.run(lane, &loaded, &event, depth, parent).await?;
        Ok(local_run(&event, outcome, version, Some(trace)))
    }
}

/// The record of a module run without being stored (its `latest_version` 0 says so).
fn unstored(name: &str, config: FunctionConfig, wasm: &[u8]) -> FunctionRecord {
    let now = now_rfc3339();
    FunctionRecord {
        info: FunctionInfo {
            name: name.to_string(),
            sha256: super::registry::hex(&sha2::Sha256::digest(wasm)),
            size: wasm.len() as u64,
            language: Language::of(wasm),
            version: 0,
            config,
            created_at: now.clone(),
            updated_at: now,
        },
        artifact_key: String::new(),
        artifact_sha256: String::new(),
        latest_version: 0,
    }
}

/// Runs a module once on `event` on this machine, with its host calls sent to the server at
/// `url` as its service `key` (rules do not apply, as for a function; the writes are the
/// service's, at depth 0), under the limits of `config`.
pub async fn invoke_remote(
    url: &str,
    key: &str,
    name: &str,
    wasm: Vec<u8>,
    event: Value,
    config: &FunctionsConfig,
) -> std::result::Result<LocalRun, FunctionsError> {
    check_name(name)?;
    crate::tls::install_default_provider();
    let function = FunctionConfig::default();
    let runtime = Runtime::start(1, 0, 4).map_err(internal)?;
    let limits = limits_of(config, &function);
    let artifact = runtime
        .build(&wasm, limits, config.max_table_elements)
        .map_err(FunctionsError::InvalidModule)?;
    let module = runtime.load(&artifact).map_err(internal)?;
    let host = Arc::new(HttpHost {
        client: reqwest::Client::new(),
        base: url.trim_end_matches('/').to_string(),
        key: key.to_string(),
        tokio: tokio::runtime::Handle::current(),
        function: name.to_string(),
    });
    let input = serde_json::to_vec(&event).map_err(internal)?;
    let (lane, _) = lane_and_depth(&event);
    let outcome = runtime
        .invoke(lane, module, input, limits, host)
        .await
        .map_err(FunctionsError::Busy);
    runtime.stop();
    Ok(local_run(&event, outcome?, None, None))
}

/// The host side of `call` over a server's HTTP API.
struct HttpHost {
    client: reqwest::Client,
    base: String,
    key: String,
    tokio: tokio::runtime::Handle,
    function: String,
}

impl HttpHost {
    /// Sends one request and answers what the guest receives: the body of a success, `null`
    /// for a document not found, or the server's `{"error": ...}`.
    fn send(&self, op: &str, request: &Value) -> std::result::Result<Value, String> {
        let text = |name: &str| request.get(name).and_then(Value::as_str);
        let collection = text("collection").ok_or("`collection` must be a string")?;
        let docs = format!("{}/v1/collections/{}/docs", self.base, encode(collection));
        let doc = || -> std::result::Result<String, String> {
            let id = text("id").ok_or("`id` must be a string")?;
            Ok(format!("{docs}/{}", encode(id)))
        };
        let data = request.get("data").cloned().unwrap_or(Value::Null);
        let client = &self.client;
        let json_body = |builder: reqwest::RequestBuilder| {
            builder
                .header("content-type", "application/json")
                .body(data.to_string())
        };
        let builder = match op {
            "get" => client.get(doc()?),
            "create" => json_body(client.post(&docs)),
            "set" => json_body(client.put(doc()?)),
            "update" => match request.get("transforms") {
                Some(transforms) => client
                    .patch(doc()?)
                    .header("content-type", "application/vnd.emberbase.update+json")
                    .body(
                        json!({"data": request.get("data"), "transforms": transforms}).to_string(),
                    ),
                None => client
                    .patch(doc()?)
                    .header("content-type", "application/merge-patch+json")
                    .body(data.to_string()),
            },
            "delete" => client.delete(doc()?),
            "query" => {
                let mut query: Vec<(&str, String)> = ["filter", "sort", "cursor"]
                    .into_iter()
                    .filter_map(|k| text(k).map(|v| (k, v.to_string())))
                    .collect();
                if let Some(limit) = request.get("limit").and_then(Value::as_u64) {
                    query.push(("limit", limit.to_string()));
                }
                if request.get("count").and_then(Value::as_bool) == Some(true) {
                    query.push(("count", "true".into()));
                }
                let url = reqwest::Url::parse_with_params(&docs, &query)
                    .map_err(|e| format!("bad query: {e}"))?;
                client.get(url)
            }
            "aggregate" => {
                let query: Vec<(&str, &str)> = ["filter", "group_by", "ops"]
                    .into_iter()
                    .filter_map(|k| text(k).map(|v| (k, v)))
                    .collect();
                let url = reqwest::Url::parse_with_params(
                    &format!(
                        "{}/v1/collections/{}/aggregate",
                        self.base,
                        encode(collection)
                    ),
                    &query,
                )
                .map_err(|e| format!("bad query: {e}"))?;
                client.get(url)
            }
            other => return Err(format!("unknown op {other:?}")),
        };
        let builder = match request.get("if_version").and_then(Value::as_u64) {
            Some(v) => builder.header("if-match", format!("\"{v}\"")),
            None => builder,
        };
        let answer = self.tokio.block_on(async {
            let response = builder.bearer_auth(&self.key).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = answer.map_err(|e| format!("cannot reach the server: {e}"))?;
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(match (op, status.as_u16()) {
            ("get", 404) => Value::Null,
            ("delete", 204) => json!({"deleted": true}),
            (_, 200..=299) => parsed,
            _ if parsed.get("error").is_some() => parsed,
            (_, code) => {
                json!({"error": {"code": "internal", "message": format!("the server answered {code}")}})
            }
        })
    }
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Host for HttpHost {
    fn call(&self, request: &Value) -> Option<Vec<u8>> {
        let op = request.get("op").and_then(Value::as_str)?;
        let unavailable = match op {
            // No API gives a secret's value back, by design.
            "env" => Some("secrets are not read over --url (their values never leave the server); run with --data-dir"),
            // The allow-list and the mail budget are the server's, and so is the address the
            // request would come from.
            "fetch" | "mail" => Some("fetch and mail are not made over --url (the function's config on the server governs them); run with --data-dir"),
            _ => None,
        };
        if let Some(message) = unavailable {
            return serde_json::to_vec(
                &json!({"error": {"code": "bad_request", "message": message}}),
            )
            .ok();
        }
        if !matches!(
            op,
            "get" | "create" | "set" | "update" | "delete" | "query" | "aggregate"
        ) {
            return None;
        }
        let reply = self.send(op, request).unwrap_or_else(
            |message| json!({"error": {"code": "unavailable", "message": message}}),
        );
        serde_json::to_vec(&reply).ok()
    }

    fn log(&self, level: &str, message: &str) -> bool {
        super::host::log_line(&self.function, level, message);
        true
    }
}
