//! Outgoing mail: the account flows' messages and functions' `mail.send`. Every message is kept
//! in the outbox (a system record, listed by `GET /v1/admin/outbox`), so the flows work on a
//! laptop with no mail server; when `mail.smtp_url` is set it is also delivered over SMTP with
//! lettre, and the record says whether delivery worked.
//!
//! With SMTP, a message is recorded `queued` together with an entry of the mail queue, in one
//! durable write, and the serving process's dispatcher (`delivery::drive`, as for webhooks; one
//! node of a cluster at a time) sends it in the background. So a flow or a run never waits on
//! the relay, and a message it was told is sent is on disk. A failure that may pass (the relay
//! busy or unreachable, a `4xx` answer) is tried again with backoff, up to `mail.max_attempts`;
//! a permanent refusal (`5xx`, an address the relay rejects) marks the message failed at once.
//! Delivery is at least once: a crash between the relay's answer and the record's update sends
//! it again.

use crate::config::MailConfig;
use crate::delivery::{self, Dispatchers, Head, Queue, Round, LOOK_AHEAD};
use crate::store::{KvWrite, Space, Store, StoreError};
use futures_util::future::BoxFuture;
use lettre::message::{MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The mail queue's name, for its dispatcher and its lease in a cluster.
const QUEUE: &str = "mail:outbox";
/// Messages sent at once.
const CONCURRENCY: usize = 4;

/// One outgoing message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mail {
    pub id: String,
    /// The recipient; several are separated by `, `.
    pub to: String,
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The HTML body, when the message has one (sent as an alternative to `body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The function that sent it; absent for the server's own account mails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub created_at: String,
    /// `outbox` (no SMTP configured), `queued` (waiting for SMTP, or for its next attempt after
    /// a failure that may pass), `sent`, or `failed: <reason>`.
    pub delivery: String,
    /// SMTP attempts made so far; absent before the first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Why the last attempt failed, while the message waits for its next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A message to send, before it has an id.
pub(crate) struct Outgoing {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub function: Option<String>,
}

/// An entry of the mail queue: a message waiting for its next attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    /// The message's id, also its key in the outbox and in the queue.
    id: String,
    /// Attempts made so far.
    attempts: u32,
    /// Not before when the next one may start (Unix milliseconds).
    not_before: u64,
}

impl Queued {
    /// The entry of a message not tried yet.
    fn new(id: String) -> Queued {
        Queued {
            id,
            attempts: 0,
            not_before: 0,
        }
    }
}

/// Why an attempt failed.
enum Failure {
    /// It may pass: the message is tried again.
    Transient(String),
    /// It will not: the message is marked failed.
    Permanent(String),
}

/// A finished attempt, to record.
struct Attempt {
    key: Vec<u8>,
    queued: Queued,
    /// The message as stored; `None` when it is gone (pruned) or could not be read.
    mail: Option<Mail>,
    failure: Option<Failure>,
}

#[derive(Clone)]
pub(crate) struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    from: String,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    retry_base_ms: u64,
    max_attempts: u32,
    /// The longest one attempt may take.
    timeout: Duration,
    dispatch: Dispatchers,
}

/// A plain-SMTP transport to a relay from `smtp://[user:pass@]host[:port]`.
fn smtp_transport(url: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let invalid = || format!("mail.smtp_url: expected smtp://[user:pass@]host[:port], got {url:?}");
    let rest = url.strip_prefix("smtp://").ok_or_else(invalid)?;
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((creds, address)) => (Some(creds), address),
        None => (None, rest),
    };
    let address = address.trim_end_matches('/');
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid())?),
        None => (address, 25),
    };
    if host.is_empty() {
        return Err(invalid());
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port);
    if let Some(creds) = credentials {
        let (user, pass) = creds.split_once(':').unwrap_or((creds, ""));
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.to_string(),
            pass.to_string(),
        ));
    }
    Ok(builder.build())
}

/// Whether `address` is one plain address (`name@example.com`, no display name).
pub(crate) fn is_address(address: &str) -> bool {
    address.parse::<lettre::Address>().is_ok()
}

/// Whether a stored outbox record is a message still waiting to be sent over SMTP.
pub(crate) fn is_queued(record: &[u8]) -> bool {
    serde_json::from_slice::<Mail>(record).is_ok_and(|mail| mail.delivery == "queued")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Mailer {
    pub(crate) fn new(store: Store, config: &MailConfig) -> Result<Mailer, String> {
        let smtp = match config.smtp_url.trim() {
            "" => None,
            url => Some(smtp_transport(url)?),
        };
        Ok(Mailer {
            inner: Arc::new(Inner {
                store,
                from: config.from.clone(),
                smtp,
                retry_base_ms: config.retry_base_ms,
                max_attempts: config.max_attempts,
                timeout: Duration::from_millis(config.timeout_ms),
                dispatch: Dispatchers::default(),
            }),
        })
    }

    /// Starts sending the queued messages in the background, with SMTP configured: this
    /// process delivers (a server; in a cluster, whichever node holds the queue's lease).
    /// `node` names this process in that lease. Messages that an earlier version recorded
    /// `queued` without a queue entry get one.
    pub(crate) async fn start_delivery(&self, node: String) -> Result<(), StoreError> {
        if self.inner.smtp.is_none() {
            return Ok(());
        }
        self.inner.dispatch.ensure(QUEUE, |notify| {
            let queue = MailQueue {
                mailer: self.clone(),
            };
            tokio::spawn(delivery::drive(
                queue,
                self.inner.store.clone(),
                node,
                notify,
            ))
        });
        let adopted = self.adopt_queued().await?;
        if adopted > 0 {
            tracing::info!(
                mails = adopted,
                "queued mails left by an earlier version will be sent"
            );
            self.inner.dispatch.notify(QUEUE);
        }
        Ok(())
    }

    /// Stops sending; what is queued stays queued for the next start.
    pub(crate) fn stop(&self) {
        self.inner.dispatch.stop();
    }

    /// Gives a queue entry to each `queued` message that has none; how many got one.
    async fn adopt_queued(&self) -> Result<usize, StoreError> {
        let store = &self.inner.store;
        let mut adopted = 0;
        for (key, bytes) in store.kv_scan(Space::Outbox, None, usize::MAX).await? {
            let Ok(mail) = serde_json::from_slice::<Mail>(&bytes) else {
                continue;
            };
            if mail.delivery != "queued" || store.kv_get(Space::MailQueue, &key).await?.is_some() {
                continue;
            }
            // The attempts its record counts go on counting towards `max_attempts`.
            let entry = Queued {
                attempts: mail.attempts,
                ..Queued::new(mail.id)
            };
            // Unless the message was sent (and its entry removed) since it was read.
            let write = KvWrite::default()
                .check(Space::Outbox, key.clone(), Some(bytes))
                .check(Space::MailQueue, key.clone(), None)
                .put(Space::MailQueue, key, encode(&entry)?);
            match store.kv_write(write).await {
                Ok(()) => adopted += 1,
                Err(StoreError::CasFailed) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(adopted)
    }

    /// Records an account mail, to `to`, in the outbox (and the queue, with SMTP).
    pub(crate) async fn send(
        &self,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), StoreError> {
        self.queue(Outgoing {
            to: vec![to.to_string()],
            subject: subject.to_string(),
            text: body,
            html: None,
            function: None,
        })
        .await
        .map(|_| ())
    }

    /// Records a message in the outbox and, with SMTP configured, in the mail queue, durably
    /// before this returns; the dispatcher sends it.
    pub(crate) async fn queue(&self, message: Outgoing) -> Result<Mail, StoreError> {
        let smtp = self.inner.smtp.is_some();
        let mail = Mail {
            id: ulid::Ulid::new().to_string(),
            to: message.to.join(", "),
            subject: message.subject,
            body: message.text,
            html: message.html,
            function: message.function,
            created_at: crate::model::now_rfc3339(),
            delivery: if smtp { "queued" } else { "outbox" }.into(),
            attempts: 0,
            last_error: None,
        };
        let key = mail.id.as_bytes().to_vec();
        let mut write = KvWrite::default().put(Space::Outbox, key.clone(), encode(&mail)?);
        if smtp {
            let entry = Queued::new(mail.id.clone());
            write = write.put(Space::MailQueue, key, encode(&entry)?);
        }
        self.inner.store.kv_write(write).await?;
        if smtp {
            self.inner.dispatch.notify(QUEUE);
        } else if mail.function.is_none() {
            tracing::info!(to = %mail.to, subject = %mail.subject, "mail queued in the outbox (GET /v1/admin/outbox)");
        }
        Ok(mail)
    }

    /// Makes one attempt at a queued message.
    async fn attempt(&self, key: Vec<u8>, queued: Queued) -> Attempt {
        let mut attempt = Attempt {
            key,
            queued,
            mail: None,
            failure: None,
        };
        let stored = self
            .inner
            .store
            .kv_get(Space::Outbox, attempt.queued.id.as_bytes())
            .await;
        match stored {
            Ok(Some(bytes)) => match serde_json::from_slice::<Mail>(&bytes) {
                Ok(mail) => {
                    attempt.failure = self.try_deliver(&mail).await.err();
                    attempt.mail = Some(mail);
                }
                Err(e) => {
                    tracing::warn!(id = %attempt.queued.id, error = %e, "a queued mail cannot be read; it is dropped");
                }
            },
            // Pruned from the outbox meanwhile: nothing to send.
            Ok(None) => {}
            Err(e) => attempt.failure = Some(Failure::Transient(e.to_string())),
        }
        attempt
    }

    /// The write that records finished attempts: each message's record, and its queue entry
    /// removed or rescheduled; and whether one was rescheduled.
    fn outcome(&self, attempts: Vec<Attempt>) -> (KvWrite, bool) {
        let mut write = KvWrite::default();
        let mut rescheduled = false;
        for Attempt {
            key,
            mut queued,
            mail,
            failure,
        } in attempts
        {
            queued.attempts += 1;
            let retry = match &failure {
                Some(Failure::Transient(reason)) if queued.attempts < self.inner.max_attempts => {
                    Some(reason.clone())
                }
                _ => None,
            };
            if let Some(reason) = &retry {
                let delay = delivery::backoff(self.inner.retry_base_ms, queued.attempts);
                queued.not_before = delivery::unix_ms(SystemTime::now() + delay);
                tracing::warn!(id = %queued.id, attempt = queued.attempts, %reason, retry_in_ms = delay.as_millis() as u64, "mail delivery failed; it will be tried again");
                match encode(&queued) {
                    Ok(entry) => {
                        write = write.put(Space::MailQueue, key.clone(), entry);
                        rescheduled = true;
                    }
                    Err(_) => write = write.delete(Space::MailQueue, key.clone()),
                }
            } else {
                write = write.delete(Space::MailQueue, key.clone());
            }
            let Some(mut mail) = mail else {
                continue;
            };
            mail.attempts = queued.attempts;
            mail.last_error = None;
            match (failure, retry) {
                (None, _) => mail.delivery = "sent".into(),
                (Some(_), Some(reason)) => {
                    mail.delivery = "queued".into();
                    mail.last_error = Some(reason);
                }
                (Some(Failure::Transient(reason) | Failure::Permanent(reason)), None) => {
                    tracing::warn!(id = %mail.id, to = %mail.to, attempts = mail.attempts, %reason, "mail delivery failed");
                    mail.delivery = format!("failed: {reason}");
                }
            }
            if let Ok(record) = encode(&mail) {
                write = write.put(Space::Outbox, key, record);
            }
        }
        (write, rescheduled)
    }

    async fn try_deliver(&self, mail: &Mail) -> Result<(), Failure> {
        let Some(smtp) = &self.inner.smtp else {
            return Err(Failure::Permanent("no SMTP relay is configured".into()));
        };
        let permanent =
            |what: &str, e: &dyn std::fmt::Display| Failure::Permanent(format!("{what}: {e}"));
        let from = self
            .inner
            .from
            .parse()
            .map_err(|e| permanent("from address", &e))?;
        let mut builder = Message::builder().from(from);
        for to in mail.to.split(", ") {
            builder = builder.to(to.parse().map_err(|e| permanent("to address", &e))?);
        }
        let builder = builder.subject(mail.subject.clone());
        let message = match &mail.html {
            None => builder.body(mail.body.clone()),
            Some(html) if mail.body.is_empty() => {
                builder.singlepart(SinglePart::html(html.clone()))
            }
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                mail.body.clone(),
                html.clone(),
            )),
        }
        .map_err(|e| permanent("message", &e))?;
        // lettre bounds only the connection: a relay that accepts it and never answers would
        // hold this sending slot for good.
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, smtp.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.is_permanent() => Err(Failure::Permanent(e.to_string())),
            Ok(Err(e)) => Err(Failure::Transient(e.to_string())),
            Err(_) => Err(Failure::Transient(format!(
                "the relay did not finish within {} ms (mail.timeout_ms)",
                timeout.as_millis()
            ))),
        }
    }

    /// The newest messages first, at most `limit`.
    pub(crate) async fn outbox(&self, limit: usize) -> Result<Vec<Mail>, StoreError> {
        Ok(self
            .inner
            .store
            .kv_scan_last(Space::Outbox, limit)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}

/// The mail queue, as `delivery::drive` delivers it: every message its own ordering key.
struct MailQueue {
    mailer: Mailer,
}

impl Queue for MailQueue {
    type Entry = Queued;
    type Done = Attempt;

    fn name(&self) -> &str {
        QUEUE
    }

    fn prepare(&mut self) -> impl Future<Output = Option<Round>> + Send {
        std::future::ready(Some(Round::new(None, CONCURRENCY)))
    }

    async fn head(&self) -> Result<Head<Queued>, StoreError> {
        let rows = self
            .mailer
            .inner
            .store
            .kv_scan(Space::MailQueue, None, LOOK_AHEAD)
            .await?;
        Ok(delivery::parse_head(rows))
    }

    fn schedule<'a>(&self, entry: &'a Queued) -> (&'a str, u64) {
        (&entry.id, entry.not_before)
    }

    fn deliver(&self, key: Vec<u8>, entry: Queued) -> BoxFuture<'static, Attempt> {
        let mailer = self.mailer.clone();
        Box::pin(async move { mailer.attempt(key, entry).await })
    }

    fn key<'a>(&self, done: &'a Attempt) -> &'a [u8] {
        &done.key
    }

    fn outcome(&self, done: Vec<Attempt>) -> impl Future<Output = (KvWrite, bool)> + Send {
        std::future::ready(self.mailer.outcome(done))
    }

    fn drop_unreadable(&self, keys: Vec<Vec<u8>>) -> KvWrite {
        keys.into_iter()
            .fold(KvWrite::default(), |w, key| w.delete(Space::MailQueue, key))
    }

    fn committed(&mut self, _: usize, _: bool) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
