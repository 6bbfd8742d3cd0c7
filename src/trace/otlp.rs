//! The span exporter: finished spans of sampled traces, batched and sent to an OpenTelemetry
//! collector as OTLP over HTTP (protobuf, `POST <endpoint>/v1/traces`).
//!
//! Spans wait in a bounded queue; one task sends them every `telemetry.export_interval_ms`,
//! or as soon as a batch is full. A span that finds the queue full, and the spans of an
//! export the collector refuses or that fails, are dropped and counted
//! (`emberbase_trace_spans_total{outcome}`), never retried without bound: tracing must not
//! cost the server memory or time when the collector is away.

use super::{Kind, Span, SpanData, TraceContext, Value};
use crate::config::TelemetryConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Status,
};
use prometheus::IntCounterVec;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// Spans waiting for export at most; more are dropped.
const QUEUE: usize = 8192;
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last export.
const FINAL_EXPORT: Duration = Duration::from_secs(5);

/// Starts spans and hands the finished ones to the exporter, if one is configured. Cheap to
/// clone; every service of a server shares one.
#[derive(Clone, Default)]
pub(crate) struct Tracer {
    exporter: Option<Arc<Exporter>>,
}

pub(crate) struct Exporter {
    queue: mpsc::Sender<SpanData>,
    sample_ratio: f64,
    spans: IntCounterVec,
    stop: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl Tracer {
    /// A tracer that only makes ids (no `telemetry.otlp_endpoint`).
    pub(crate) fn ids_only() -> Tracer {
        Tracer::default()
    }

    /// The tracer `config` asks for: exporting to its endpoint, or ids only. Starts the export
    /// task on the current runtime. `spans` counts exported and dropped spans by outcome.
    pub(crate) fn start(config: &TelemetryConfig, spans: IntCounterVec) -> Result<Tracer, String> {
        if config.otlp_endpoint.is_empty() {
            return Ok(Tracer::ids_only());
        }
        let url = traces_url(&config.otlp_endpoint)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.otlp_headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("telemetry.otlp_headers: {name:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| format!("telemetry.otlp_headers: the value of {name}: {e}"))?;
            headers.insert(name, value);
        }
        crate::tls::install_default_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(EXPORT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the OTLP client: {e}"))?;
        let (queue, spans_in) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel();
        let sender = Sender {
            client,
            url: url.clone(),
            resource: resource(&config.service_name),
            spans: spans.clone(),
            last_warning: None,
        };
        let interval = Duration::from_millis(config.export_interval_ms);
        let task = tokio::spawn(export(spans_in, stopped, sender, interval));
        tracing::info!(endpoint = %url, "exporting trace spans over OTLP");
        Ok(Tracer {
            exporter: Some(Arc::new(Exporter {
                queue,
                sample_ratio: config.sample_ratio,
                spans,
                stop: Mutex::new(Some((stop, task))),
            })),
        })
    }

    /// The context of new work that no caller traced: a new trace, sampled at
    /// `telemetry.sample_ratio` when spans are exported.
    pub(crate) fn root(&self) -> TraceContext {
        let sampled = match &self.exporter {
            Some(e) => e.sample_ratio >= 1.0 || rand::random::<f64>() < e.sample_ratio,
            None => true,
        };
        TraceContext::root(sampled)
    }

    /// Starts a span: a child of `parent`, or the root of a new trace. It ends, and is
    /// exported if recorded, when dropped.
    pub(crate) fn span(
        &self,
        name: impl Into<String>,
        kind: Kind,
        parent: Option<TraceContext>,
    ) -> Span {
        let context = match parent {
            Some(parent) => parent.child(),
            None => self.root(),
        };
        let recording = self
            .exporter
            .as_ref()
            .filter(|_| context.sampled())
            .map(|exporter| {
                (
                    Box::new(SpanData {
                        context,
                        parent: parent.map(|p| p.span_id),
                        name: name.into(),
                        kind,
                        start: SystemTime::now(),
                        end: SystemTime::UNIX_EPOCH,
                        attributes: Vec::new(),
                        error: None,
                    }),
                    exporter.clone(),
                )
            });
        Span { context, recording }
    }

    /// Sends what is queued and stops exporting (at shutdown), waiting a few seconds at most.
    pub(crate) async fn shutdown(&self) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let stop = exporter.stop.lock().ok().and_then(|mut s| s.take());
        if let Some((stop, task)) = stop {
            let _ = stop.send(());
            let _ = tokio::time::timeout(FINAL_EXPORT, task).await;
        }
    }
}

impl Exporter {
    pub(super) fn finish(&self, mut data: SpanData) {
        data.end = SystemTime::now();
        if self.queue.try_send(data).is_err() {
            self.spans.with_label_values(&["dropped"]).inc();
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((data, exporter)) = self.recording.take() {
            exporter.finish(*data);
        }
    }
}

/// The traces URL of an OTLP/HTTP endpoint: `<endpoint>/v1/traces`, as the
/// `OTEL_EXPORTER_OTLP_ENDPOINT` convention has it (a URL already ending in `/v1/traces` is
/// kept).
pub(crate) fn traces_url(endpoint: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(endpoint).map_err(|e| format!("{endpoint:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{endpoint:?} is not an http or https URL"));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    })
}

struct Sender {
    client: reqwest::Client,
    url: String,
    resource: Resource,
    spans: IntCounterVec,
    last_warning: Option<Instant>,
}

/// Sends the queued spans every `interval`, or when a batch is full; on `stopped`, sends
/// what is left and returns.
async fn export(
    mut queue: mpsc::Receiver<SpanData>,
    mut stopped: oneshot::Receiver<()>,
    mut sender: Sender,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            span = queue.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= MAX_BATCH {
                        sender.send(std::mem::take(&mut batch)).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    sender.send(std::mem::take(&mut batch)).await;
                }
            }
            _ = &mut stopped => break,
        }
    }
    while let Ok(span) = queue.try_recv() {
        batch.push(span);
    }
    for chunk in batch.chunks(MAX_BATCH) {
        sender.send(chunk.to_vec()).await;
    }
}

impl Sender {
    async fn send(&mut self, batch: Vec<SpanData>) {
        let count = batch.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "emberbase".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: batch.into_iter().map(encode).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("the collector answered {}", response.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => self.spans.with_label_values(&["exported"]).inc_by(count),
            Some(error) => {
                self.spans.with_label_values(&["dropped"]).inc_by(count);
                // One warning a minute at most: a collector that is down must not flood the log.
                if self
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    self.last_warning = Some(Instant::now());
                    tracing::warn!(url = %self.url, %error, spans = count,
                        "cannot export trace spans; they are dropped");
                }
            }
        }
    }
}

fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            attribute("service.name", Value::Str(service_name.to_string())),
            attribute("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
            attribute("telemetry.sdk.name", Value::from("emberbase")),
            attribute("telemetry.sdk.language", Value::from("rust")),
        ],
        ..Default::default()
    }
}

fn attribute(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn encode(span: SpanData) -> opentelemetry_proto::tonic::trace::v1::Span {
    let kind = match span.kind {
        Kind::Internal => SpanKind::Internal,
        Kind::Server => SpanKind::Server,
        Kind::Client => SpanKind::Client,
        Kind::Consumer => SpanKind::Consumer,
    };
    let status = match span.error {
        Some(message) => Status {
            message,
            code: StatusCode::Error as i32,
        },
        None => Status::default(),
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: span.context.trace_id.to_vec(),
        span_id: span.context.span_id.to_vec(),
        parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(span.context.flags),
        name: span.name,
        kind: kind as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: span
            .attributes
            .into_iter()
            .map(|(k, v)| attribute(k, v))
            .collect(),
        status: Some(status),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_follows_the_endpoint_convention() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/base/").unwrap(),
            "https://otel.example/base/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("grpc://c:4317").is_err());
        assert!(traces_url("not a url").is_err());
    }

    #[test]
    fn an_unexported_span_records_nothing_and_a_child_joins_its_parent_s_trace() {
        let tracer = Tracer::ids_only();
        let parent = TraceContext::root(true);
        let mut span = tracer.span("work", Kind::Internal, Some(parent));
        span.set("key", "value");
        assert!(!span.recording());
        assert_eq!(span.context().trace_id(), parent.trace_id());
        assert_ne!(span.context().span_id(), parent.span_id());
    }
}
