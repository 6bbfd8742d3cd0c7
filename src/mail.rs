//! Outgoing mail: the account flows' messages and functions' `mail.send`. Every message is kept
//! in the outbox (a system record, listed by `GET /v1/admin/outbox`), so the flows work on a
//! laptop with no mail server; when `mail.smtp_url` is set it is also delivered over SMTP with
//! lettre, and the record says whether delivery worked.
//!
//! Account mails are delivered, then recorded (their flows already run off the request path).
//! A function's mail is recorded first, `queued`, and delivered in the background, so a run
//! never waits on SMTP and a message it was told is sent is on disk; one still `queued` when
//! the server stops is delivered at the next start (at least once: a crash between the SMTP
//! answer and the record's update sends it again).

use crate::config::MailConfig;
use crate::store::{KvWrite, Space, Store, StoreError};
use lettre::message::{MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

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
    /// `outbox` (no SMTP configured), `queued` (waiting for SMTP), `sent`, or
    /// `failed: <reason>`.
    pub delivery: String,
}

/// A message to send, before it has an id.
pub(crate) struct Outgoing {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub function: Option<String>,
}

#[derive(Clone)]
pub(crate) struct Mailer {
    store: Store,
    from: String,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
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

fn record(mail: &Mail) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(mail).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Mailer {
    pub(crate) fn new(store: Store, config: &MailConfig) -> Result<Mailer, String> {
        let smtp = match config.smtp_url.trim() {
            "" => None,
            url => Some(smtp_transport(url)?),
        };
        Ok(Mailer {
            store,
            from: config.from.clone(),
            smtp,
        })
    }

    /// Records an account mail in the outbox and, with SMTP configured, delivers it first.
    pub(crate) async fn send(
        &self,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), StoreError> {
        let mut mail = Mail {
            id: ulid::Ulid::new().to_string(),
            to: to.to_string(),
            subject: subject.to_string(),
            body,
            html: None,
            function: None,
            created_at: crate::model::now_rfc3339(),
            delivery: "outbox".into(),
        };
        if let Some(smtp) = &self.smtp {
            mail.delivery = self.deliver(smtp, &mail).await;
        } else {
            tracing::info!(to = %mail.to, subject = %mail.subject, "mail queued in the outbox (GET /v1/admin/outbox)");
        }
        self.store
            .kv_write(KvWrite::default().put(Space::Outbox, mail.id.as_bytes(), record(&mail)?))
            .await
    }

    /// Records a message in the outbox (durably, before this returns) and, with SMTP
    /// configured, delivers it in the background.
    pub(crate) async fn queue(&self, message: Outgoing) -> Result<Mail, StoreError> {
        let mail = Mail {
            id: ulid::Ulid::new().to_string(),
            to: message.to.join(", "),
            subject: message.subject,
            body: message.text,
            html: message.html,
            function: message.function,
            created_at: crate::model::now_rfc3339(),
            delivery: if self.smtp.is_some() {
                "queued".into()
            } else {
                "outbox".into()
            },
        };
        self.store
            .kv_write(KvWrite::default().put(Space::Outbox, mail.id.as_bytes(), record(&mail)?))
            .await?;
        if self.smtp.is_some() {
            let mailer = self.clone();
            let queued = mail.clone();
            tokio::spawn(async move { mailer.deliver_queued(queued).await });
        }
        Ok(mail)
    }

    /// Delivers the messages left `queued` (by a server that stopped before it sent them).
    pub(crate) async fn resume(&self) -> Result<usize, StoreError> {
        if self.smtp.is_none() {
            return Ok(0);
        }
        let queued: Vec<Mail> = self
            .store
            .kv_scan(Space::Outbox, None, usize::MAX)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Mail>(&v).ok())
            .filter(|m| m.delivery == "queued")
            .collect();
        let count = queued.len();
        for mail in queued {
            self.deliver_queued(mail).await;
        }
        Ok(count)
    }

    /// Sends a queued message and records how it went, unless its record changed meanwhile
    /// (another node sent it, or it was pruned).
    async fn deliver_queued(&self, mail: Mail) {
        let Some(smtp) = &self.smtp else {
            return;
        };
        let Ok(before) = record(&mail) else {
            return;
        };
        let mut done = mail;
        done.delivery = self.deliver(smtp, &done).await;
        let Ok(after) = record(&done) else {
            return;
        };
        let key = done.id.as_bytes().to_vec();
        let write = KvWrite::default()
            .check(Space::Outbox, key.clone(), Some(before))
            .put(Space::Outbox, key, after);
        match self.store.kv_write(write).await {
            Ok(()) | Err(StoreError::CasFailed) => {}
            Err(e) => tracing::warn!(id = %done.id, error = %e, "cannot record a mail's delivery"),
        }
    }

    /// Sends one message: `sent`, or `failed: <reason>`.
    async fn deliver(&self, smtp: &AsyncSmtpTransport<Tokio1Executor>, mail: &Mail) -> String {
        match self.try_deliver(smtp, mail).await {
            Ok(()) => "sent".into(),
            Err(reason) => {
                tracing::warn!(to = %mail.to, %reason, "mail delivery failed");
                format!("failed: {reason}")
            }
        }
    }

    async fn try_deliver(
        &self,
        smtp: &AsyncSmtpTransport<Tokio1Executor>,
        mail: &Mail,
    ) -> Result<(), String> {
        let mut builder = Message::builder().from(
            self.from
                .parse()
                .map_err(|e| format!("from address: {e}"))?,
        );
        for to in mail.to.split(", ") {
            builder = builder.to(to.parse().map_err(|e| format!("to address: {e}"))?);
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
        .map_err(|e| e.to_string())?;
        smtp.send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The newest messages first, at most `limit`.
    pub(crate) async fn outbox(&self, limit: usize) -> Result<Vec<Mail>, StoreError> {
        Ok(self
            .store
            .kv_scan_last(Space::Outbox, limit)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}
