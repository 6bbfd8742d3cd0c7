//! What a webhook is, as the API shows it and as it is stored; what a valid one is; which
//! changes and account events it takes (in the commit); and the messages it sends.

use super::error::{invalid, Result};
use crate::docs::check_collection;
use crate::model::{AccountEvent, Change, ChangeKind, Subject};
use crate::outbound::Policy;
use crate::trace::TraceContext;
use crate::when::{self, When};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The longest URL of a webhook, in bytes.
const MAX_URL: usize = 2048;
/// The longest description, in bytes.
const MAX_DESCRIPTION: usize = 1024;

/// What creates a webhook or replaces its configuration. Exactly one of `collection`, `bucket`
/// and `accounts` says what it listens to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// A name to know it by (`A-Z a-z 0-9 _ -`, at most 64), unique among webhooks: what a
    /// project file calls it (`emberbase plan`). Optional; the id always works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where deliveries are POSTed: an `http` or `https` URL. Hosts that are (or resolve to)
    /// loopback, private or link-local addresses are refused unless allow-listed in
    /// `outbound.allow_private_hosts`.
    pub url: String,
    /// Document events of this collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// File events of this bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Account events: `signup`, `login`, `delete`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accounts: bool,
    /// Which events: `create`, `update`, `delete` for a collection or bucket; `signup`,
    /// `login`, `delete` for accounts. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// A condition in the filter language over `before` and `after` (the document, file or
    /// account as it was and as it is, null when absent), decided in the commit: an event that
    /// does not meet it is not sent. For example `after.data.status == "paid"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A disabled webhook queues nothing new and holds what is queued (default `true`).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Attempts of a message before it is dead (default `webhooks.max_attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Deliveries in flight at once (default `webhooks.concurrency`); messages about the same
    /// document, file or account always go one after the other, in commit order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

fn yes() -> bool {
    true
}

/// A webhook as the API shows it (never its secrets).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookInfo {
    pub id: String,
    #[serde(flatten)]
    pub spec: WebhookSpec,
    pub created_at: String,
    pub updated_at: String,
    /// After a rotation, until when the previous secret also signs deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
}

/// A webhook and its signing secret, as creating it and rotating the secret answer: the only
/// times the secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookInfo,
    /// `whsec_` and the base64 of the key that signs deliveries (Standard Webhooks).
    pub secret: String,
}

/// The stored record: the public info and the secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WebhookRecord {
    #[serde(flatten)]
    pub(super) info: WebhookInfo,
    pub(super) secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) previous_secret: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) previous_until: Option<u64>,
}

impl WebhookRecord {
    /// The keys that sign a delivery at `now` (Unix seconds): the secret's, and the previous
    /// one's during its grace period.
    pub(super) fn signing_keys(&self, now: u64) -> Vec<Vec<u8>> {
        let previous = self
            .previous_secret
            .as_ref()
            .filter(|_| self.previous_until.is_some_and(|until| now < until));
        std::iter::once(&self.secret)
            .chain(previous)
            .filter_map(|s| secret_key(s))
            .collect()
    }
}

/// A new signing secret.
pub(super) fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The key bytes of a `whsec_` secret.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()
}

/// One delivery attempt, as the delivery log shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    pub id: String,
    /// The message's id, sent as `webhook-id`: the same for every attempt of a message.
    pub message_id: String,
    /// The event type, e.g. `document.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// 1 for the first attempt; a redelivery starts again at 1.
    pub attempt: u32,
    /// `delivered`, `failed` (retried later) or `dead` (the last attempt failed).
    pub status: String,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// The first KiB of the receiver's answer, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Why the attempt failed without an answer (refused address, timeout, connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From sending the request to the end of the answer's excerpt, in milliseconds.
    pub latency_ms: u64,
    pub at: String,
    /// The trace of the message (see `WebhookMessage::trace_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The attempt's own span, sent to the receiver in the `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// A message of a webhook: queued until it is delivered or dead, then kept for redelivery.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookMessage {
    /// `msg_` and a ULID, sent as `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The body as sent (`{"type", "timestamp", "data"}`), byte for byte on every attempt.
    pub body: String,
    pub created_at: String,
    /// The trace of the work that caused the message (the request, or the function run's
    /// write), 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A message as stored, queued or kept: the message, and what orders its delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Queued {
    #[serde(flatten)]
    pub(super) message: WebhookMessage,
    /// Messages with the same key (a document, file or account) are delivered one after the
    /// other.
    pub(super) order: String,
    /// Not before this time (Unix milliseconds).
    #[serde(default)]
    pub(super) not_before: u64,
    /// The trace context of the work that caused the message: each attempt's span is its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<TraceContext>,
}

/// The events a webhook may name, by what it listens to.
const DATA_EVENTS: [&str; 3] = ["create", "update", "delete"];
const ACCOUNT_EVENTS: [&str; 3] = ["signup", "login", "delete"];

/// Checks a webhook's configuration.
pub(super) fn check_spec(spec: &WebhookSpec, policy: &Policy) -> Result<()> {
    if let Some(name) = &spec.name {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(invalid("name is 1 to 64 of A-Z, a-z, 0-9, _ and -", "name"));
        }
    }
    if spec.url.len() > MAX_URL {
        return Err(invalid(format!("url is at most {MAX_URL} bytes"), "url"));
    }
    let url = reqwest::Url::parse(&spec.url)
        .map_err(|e| invalid(format!("url is not a URL: {e}"), "url"))?;
    policy
        .check(&url)
        .map_err(|refused| invalid(format!("url: {refused}"), "url"))?;
    let allowed: &[&str] = match (&spec.collection, &spec.bucket, spec.accounts) {
        (Some(name), None, false) | (None, Some(name), false) => {
            if check_collection(name).is_err() {
                let field = if spec.collection.is_some() {
                    "collection"
                } else {
                    "bucket"
                };
                return Err(invalid(format!("invalid {field} name {name:?}"), field));
            }
            &DATA_EVENTS
        }
        (None, None, true) => &ACCOUNT_EVENTS,
        _ => {
            return Err(invalid(
                "name exactly one of `collection`, `bucket` and `accounts: true`",
                "collection",
            ))
        }
    };
    for (i, event) in spec.events.iter().enumerate() {
        if !allowed.contains(&event.as_str()) {
            return Err(invalid(
                format!("unknown event {event:?}: use {}", allowed.join(", ")),
                &format!("events[{i}]"),
            ));
        }
    }
    if let Some(src) = &spec.when {
        when::compile(src).map_err(|e| invalid(format!("invalid `when`: {e}"), "when"))?;
    }
    if spec
        .description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return Err(invalid(
            format!("description is at most {MAX_DESCRIPTION} bytes"),
            "description",
        ));
    }
    if spec.max_attempts.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(invalid("max_attempts must be 1 to 100", "max_attempts"));
    }
    if spec.concurrency.is_some_and(|n| !(1..=256).contains(&n)) {
        return Err(invalid("concurrency must be 1 to 256", "concurrency"));
    }
    Ok(())
}

/// A webhook as the commit matches it.
#[derive(Debug, Clone)]
pub(super) struct Armed {
    pub(super) id: String,
    spec: WebhookSpec,
    when: When,
}

impl Armed {
    pub(super) fn new(info: &WebhookInfo) -> Armed {
        Armed {
            id: info.id.clone(),
            when: When::new(info.spec.when.as_deref()),
            spec: info.spec.clone(),
        }
    }

    /// Whether it listens to account events.
    pub(super) fn takes_accounts(&self) -> bool {
        self.spec.accounts
    }

    /// Whether a change is about what it listens to (before its events and `when` decide).
    pub(super) fn concerns(&self, change: &Change) -> bool {
        match &change.subject {
            Subject::Document { collection, .. } => {
                self.spec.collection.as_deref() == Some(collection.as_str())
            }
            Subject::File { bucket, .. } => self.spec.bucket.as_deref() == Some(bucket.as_str()),
        }
    }

    fn takes(&self, event: &str) -> bool {
        self.spec.events.is_empty() || self.spec.events.iter().any(|e| e == event)
    }

    /// The message a document or file change makes for this webhook, if it takes it.
    pub(super) fn message_for_change(&self, change: &Change) -> Option<Queued> {
        let (noun, order, data) = match &change.subject {
            Subject::Document {
                collection,
                id,
                before,
                after,
            } if self.spec.collection.as_deref() == Some(collection.as_str()) => (
                "document",
                format!("d\0{collection}\0{id}"),
                json!({"collection": collection, "id": id, "before": before, "after": after}),
            ),
            Subject::File {
                bucket,
                path,
                before,
                after,
            } if self.spec.bucket.as_deref() == Some(bucket.as_str()) => (
                "file",
                format!("f\0{bucket}\0{path}"),
                json!({"bucket": bucket, "path": path, "before": before, "after": after}),
            ),
            _ => return None,
        };
        let verb = change.kind.as_str();
        if !self.takes(verb) || !self.when.matches_change(change) {
            return None;
        }
        let past = match change.kind {
            ChangeKind::Create => "created",
            ChangeKind::Update => "updated",
            ChangeKind::Delete => "deleted",
        };
        let mut data = data;
        data["actor"] = serde_json::to_value(&change.actor).unwrap_or(Value::Null);
        Some(message(
            format!("{noun}.{past}"),
            order,
            &change.time,
            data,
            change.trace,
        ))
    }

    /// The message an account event makes for this webhook, if it takes it.
    pub(super) fn message_for_account(&self, event: &AccountEvent) -> Option<Queued> {
        if !self.spec.accounts || !self.takes(event.kind) {
            return None;
        }
        let (before, after) = match event.kind {
            "signup" => (Value::Null, event.user.clone()),
            "delete" => (event.user.clone(), Value::Null),
            _ => (event.user.clone(), event.user.clone()),
        };
        if !self.when.matches_values(&before, &after) {
            return None;
        }
        let id = event.user.get("id").and_then(Value::as_str).unwrap_or("");
        Some(message(
            format!("account.{}", event.kind),
            format!("a\0{id}"),
            &event.time,
            json!({"user": event.user}),
            event.trace,
        ))
    }
}

/// A new message with its body, in the Standard Webhooks shape.
fn message(
    event_type: String,
    order: String,
    time: &str,
    data: Value,
    trace: Option<TraceContext>,
) -> Queued {
    let body = json!({"type": event_type, "timestamp": time, "data": data}).to_string();
    Queued {
        message: WebhookMessage {
            id: format!("msg_{}", ulid::Ulid::new()),
            event_type,
            status: "pending".into(),
            attempts: 0,
            body,
            created_at: time.to_string(),
            trace_id: trace.map(|t| t.trace_id()),
        },
        order,
        not_before: 0,
        trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> WebhookSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn specs_are_checked() {
        let policy = Policy::default();
        let ok = |v: Value| check_spec(&spec(v), &policy);
        assert!(ok(json!({"url": "https://example.com/h", "collection": "orders"})).is_ok());
        assert!(ok(
            json!({"url": "https://example.com/h", "accounts": true, "events": ["signup"]})
        )
        .is_ok());
        let field = |v: Value| match ok(v) {
            Err(super::super::WebhooksError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(json!({"url": "http://10.0.0.1/h", "collection": "o"})),
            "url"
        );
        assert_eq!(field(json!({"url": "not a url", "collection": "o"})), "url");
        assert_eq!(
            field(json!({"url": "https://e.com", "collection": "o", "bucket": "b"})),
            "collection"
        );
        assert_eq!(field(json!({"url": "https://e.com"})), "collection");
        assert_eq!(
            field(
                json!({"url": "https://e.com", "collection": "o", "events": ["create", "login"]})
            ),
            "events[1]"
        );
        assert_eq!(
            field(json!({"url": "https://e.com", "accounts": true, "events": ["update"]})),
            "events[0]"
        );
        assert_eq!(
            field(json!({"url": "https://e.com", "collection": "o", "when": "after.data.x =="})),
            "when"
        );
        assert_eq!(
            field(json!({"url": "https://e.com", "collection": "o", "concurrency": 0})),
            "concurrency"
        );
    }

    #[test]
    fn signing_keys_include_the_previous_secret_during_its_grace() {
        let record = WebhookRecord {
            info: WebhookInfo {
                id: "w".into(),
                spec: WebhookSpec::default(),
                created_at: String::new(),
                updated_at: String::new(),
                previous_secret_expires_at: None,
            },
            secret: new_secret(),
            previous_secret: Some(new_secret()),
            previous_until: Some(100),
        };
        assert_eq!(record.signing_keys(99).len(), 2);
        assert_eq!(record.signing_keys(100).len(), 1);
        assert_eq!(record.signing_keys(100)[0].len(), 32);
    }
}
