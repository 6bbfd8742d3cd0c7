//! Outgoing mail (verification and password reset). Every message is kept in the outbox (a
//! system record, listed by `GET /v1/admin/outbox`), so the flows work on a laptop with no mail
//! server; when `mail.smtp_url` is set it is also delivered over SMTP with lettre, and the
//! outbox records whether delivery worked.

use super::error::{internal, AuthError};
use crate::config::MailConfig;
use crate::store::{KvWrite, Space, Store};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

/// One outgoing message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mail {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: String,
    /// `outbox` (no SMTP configured), `sent`, or `failed: <reason>`.
    pub delivery: String,
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

    /// Records a message in the outbox and, with SMTP configured, delivers it.
    pub(crate) async fn send(
        &self,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), AuthError> {
        let mut mail = Mail {
            id: ulid::Ulid::new().to_string(),
            to: to.to_string(),
            subject: subject.to_string(),
            body,
            created_at: crate::model::now_rfc3339(),
            delivery: "outbox".into(),
        };
        if let Some(smtp) = &self.smtp {
            mail.delivery = match self.deliver(smtp, &mail).await {
                Ok(()) => "sent".into(),
                Err(reason) => {
                    tracing::warn!(to = %mail.to, %reason, "mail delivery failed");
                    format!("failed: {reason}")
                }
            };
        } else {
            tracing::info!(to = %mail.to, subject = %mail.subject, "mail queued in the outbox (GET /v1/admin/outbox)");
        }
        let json = serde_json::to_vec(&mail).map_err(internal)?;
        self.store
            .kv_write(KvWrite::default().put(Space::Outbox, mail.id.as_bytes(), json))
            .await
            .map_err(AuthError::from)
    }

    async fn deliver(
        &self,
        smtp: &AsyncSmtpTransport<Tokio1Executor>,
        mail: &Mail,
    ) -> Result<(), String> {
        let message = Message::builder()
            .from(
                self.from
                    .parse()
                    .map_err(|e| format!("from address: {e}"))?,
            )
            .to(mail.to.parse().map_err(|e| format!("to address: {e}"))?)
            .subject(mail.subject.clone())
            .body(mail.body.clone())
            .map_err(|e| e.to_string())?;
        smtp.send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The newest messages first, at most `limit`.
    pub(crate) async fn outbox(&self, limit: usize) -> Result<Vec<Mail>, AuthError> {
        Ok(self
            .store
            .kv_scan_last(Space::Outbox, limit)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}
