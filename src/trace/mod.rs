//! Trace context across the whole chain of work one request starts: the HTTP request, the
//! changes it commits, the trigger events and webhook messages those changes queue, the
//! function runs that handle the events, and the writes those runs make in turn.
//!
//! A [`TraceContext`] is the W3C `traceparent` of one piece of work (trace id, span id,
//! sampled flag). It is carried explicitly where work outlives its task (a change record, an
//! outbox event, a webhook message) and in a task-local (`current`, `scope`) from the request
//! middleware down to where writes are built. Ids always flow, whether or not spans are
//! exported; with `telemetry.otlp_endpoint` set, finished spans of sampled traces also go to
//! an OpenTelemetry collector (`otlp`).

mod otlp;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::future::Future;
use std::time::SystemTime;

pub(crate) use otlp::{traces_url, Tracer};

/// Where a piece of work sits in a distributed trace: the W3C Trace Context `traceparent`
/// (`00-<trace id>-<span id>-<flags>`). Stored and shown in that text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

const SAMPLED: u8 = 1;

/// The length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// Writes `bytes` as lower-case hex into the front of `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// ASCII bytes as a `String`, in one allocation.
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}

/// Lower-case hex only, as the specification requires.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

impl TraceContext {
    /// Reads a `traceparent` header. Version `00` is read exactly; a later version by its
    /// first four fields, as the specification asks. All-zero ids and version `ff` are
    /// invalid. `None` when it is not a valid traceparent.
    pub fn parse(text: &str) -> Option<TraceContext> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = unhex::<1>(parts.next()?)?[0];
        let trace_id = unhex::<16>(parts.next()?)?;
        let span_id = unhex::<8>(parts.next()?)?;
        let flags = unhex::<1>(parts.next()?)?[0];
        let rest_ok = match version {
            0 => parts.next().is_none(),
            0xff => false,
            _ => true,
        };
        let valid = rest_ok && trace_id != [0; 16] && span_id != [0; 8];
        valid.then_some(TraceContext {
            trace_id,
            span_id,
            flags: flags & SAMPLED,
        })
    }

    /// A new trace, sampled or not.
    pub(crate) fn root(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: random_nonzero(),
            span_id: random_nonzero(),
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// A new span in this trace, with this one as its parent.
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random_nonzero(),
            ..*self
        }
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        ascii(&self.encode()[3..35])
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        ascii(&self.encode()[36..52])
    }

    /// Whether the trace's spans are recorded (and exported, when an exporter is configured).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` text as ASCII bytes, without allocating (every response carries it).
    pub(crate) fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // Hex digits and dashes only.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for TraceContext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TraceContext::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a traceparent: {text:?}")))
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the work the current task is doing: the request, or the function
/// run's host call, that it serves. `None` outside any (background work of the server's own).
pub(crate) fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `work` with `context` as the current trace context.
pub(crate) async fn scope<F: Future>(context: TraceContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The role of a span, as OpenTelemetry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Internal,
    /// Handling a request (HTTP).
    Server,
    /// Sending a request (a webhook delivery).
    Client,
    /// Handling a queued message (a trigger event).
    Consumer,
}

/// An attribute value of a span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

/// A finished span, as the exporter sends it.
#[derive(Debug, Clone)]
pub(crate) struct SpanData {
    pub context: TraceContext,
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// The error that ended it, if one did.
    pub error: Option<String>,
}

/// A span being timed. Its context exists whether or not it is recorded; what it records
/// (attributes, times) is kept only when the trace is sampled and an exporter is configured,
/// so an unexported span costs two ids.
pub(crate) struct Span {
    context: TraceContext,
    recording: Option<(Box<SpanData>, std::sync::Arc<otlp::Exporter>)>,
}

impl Span {
    /// The context this span's work runs in, and that its children name as their parent.
    pub(crate) fn context(&self) -> TraceContext {
        self.context
    }

    /// Whether attributes are kept: callers may skip building costly ones otherwise.
    pub(crate) fn recording(&self) -> bool {
        self.recording.is_some()
    }

    pub(crate) fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some((data, _)) = &mut self.recording {
            data.attributes.push((key, value.into()));
        }
    }

    pub(crate) fn rename(&mut self, name: impl Into<String>) {
        if let Some((data, _)) = &mut self.recording {
            data.name = name.into();
        }
    }

    /// Marks the span as failed, with a message.
    pub(crate) fn fail(&mut self, message: impl Into<String>) {
        if let Some((data, _)) = &mut self.recording {
            data.error = Some(message.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_invalid_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(text).unwrap();
        assert_eq!(context.to_string(), text);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert!(context.sampled());
        let unsampled = TraceContext::parse(&text.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
        // A later version may carry more fields; only its first four are read.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-ever";
        assert_eq!(TraceContext::parse(later).unwrap().to_string(), text);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_its_flags_with_a_new_span() {
        let root = TraceContext::root(false);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert!(!child.sampled());
        let json = serde_json::to_string(&child).unwrap();
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), child);
    }

    #[tokio::test]
    async fn the_current_context_is_the_scope_s() {
        assert_eq!(current(), None);
        let context = TraceContext::root(true);
        assert_eq!(scope(context, async { current() }).await, Some(context));
    }
}
