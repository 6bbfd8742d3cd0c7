//! The `mail` host operation (`mail.send` in the guest SDKs): a message through the server's
//! outbox and SMTP (see `crate::mail`), at most `mail_per_hour` per function on each node.

use super::Functions;
use crate::error::{Error, ErrorCode};
use crate::mail::{is_address, Outgoing};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_RECIPIENTS: usize = 50;
const MAX_SUBJECT_CHARS: usize = 998;
/// The text and HTML bodies together.
const MAX_BODY_BYTES: usize = 256 * 1024;
const HOUR: Duration = Duration::from_secs(3600);

/// What one function may still send: the times of its mails in the last hour.
pub(super) struct MailBudget {
    per_hour: u32,
    sent: Mutex<VecDeque<Instant>>,
}

impl MailBudget {
    /// Counts one mail; false when the last hour's are already `per_hour`.
    pub(super) fn take(&self) -> bool {
        let Ok(mut sent) = self.sent.lock() else {
            return false;
        };
        let now = Instant::now();
        while sent.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            sent.pop_front();
        }
        if sent.len() >= self.per_hour as usize {
            return false;
        }
        sent.push_back(now);
        true
    }

    pub(super) fn per_hour(&self) -> u32 {
        self.per_hour
    }
}

impl Functions {
    /// The mail budget of a function allowed `per_hour`, shared by all its runs (a new limit
    /// starts a new count).
    pub(super) fn mail_budget(&self, name: &str, per_hour: u32) -> Arc<MailBudget> {
        let fresh = || {
            Arc::new(MailBudget {
                per_hour,
                sent: Mutex::new(VecDeque::new()),
            })
        };
        let Ok(mut budgets) = self.inner.mail_budgets.lock() else {
            return Arc::new(MailBudget {
                per_hour: 0,
                sent: Mutex::new(VecDeque::new()),
            });
        };
        let budget = budgets.entry(name.to_string()).or_insert_with(fresh);
        if budget.per_hour != per_hour {
            *budget = fresh();
        }
        budget.clone()
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

fn text(request: &Value, name: &str) -> Result<Option<String>, Error> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{name}` must be a string"))),
    }
}

/// `{"op": "mail", "to": "a@example.com" | [...], "subject", "text"?, "html"?}` as a message
/// from `function`, checked.
pub(super) fn outgoing(request: &Value, function: &str) -> Result<Outgoing, Error> {
    let to: Vec<String> = match request.get("to") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`to` must be an address or a list of addresses"))?,
        _ => return Err(bad("`to` must be an address or a list of addresses")),
    };
    if to.is_empty() || to.len() > MAX_RECIPIENTS {
        return Err(bad(format!("`to` takes 1 to {MAX_RECIPIENTS} addresses")));
    }
    if let Some(wrong) = to.iter().find(|a| !is_address(a)) {
        return Err(bad(format!("{wrong:?} is not an email address")));
    }
    let subject = text(request, "subject")?.unwrap_or_default();
    if subject.trim().is_empty()
        || subject.chars().count() > MAX_SUBJECT_CHARS
        || subject.contains(['\r', '\n'])
    {
        return Err(bad(format!(
            "`subject` must be 1 to {MAX_SUBJECT_CHARS} characters on one line"
        )));
    }
    let plain = text(request, "text")?;
    let html = text(request, "html")?;
    if plain.is_none() && html.is_none() {
        return Err(bad("give `text`, `html` or both"));
    }
    let size = plain.as_ref().map_or(0, String::len) + html.as_ref().map_or(0, String::len);
    if size > MAX_BODY_BYTES {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!("a mail's text and html are at most {MAX_BODY_BYTES} bytes together"),
        ));
    }
    Ok(Outgoing {
        to,
        subject,
        text: plain.unwrap_or_default(),
        html,
        function: Some(function.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_over_the_cap_are_refused_and_the_budget_slides() {
        let half = "x".repeat(MAX_BODY_BYTES / 2 + 1);
        let request = json!({"to": "a@example.com", "subject": "s", "text": half, "html": half});
        let refused = outgoing(&request, "f").err().map(|e| e.code);
        assert_eq!(refused, Some(ErrorCode::PayloadTooLarge));
        let fits = json!({"to": "a@example.com", "subject": "s", "text": "t", "html": half});
        assert!(outgoing(&fits, "f").is_ok());

        // A mail an hour old no longer counts (on a machine up for an hour at least).
        let hour_ago = Instant::now().checked_sub(HOUR);
        let budget = MailBudget {
            per_hour: 2,
            sent: Mutex::new(hour_ago.into_iter().collect()),
        };
        assert!(budget.take());
        assert!(budget.take());
        assert!(!budget.take());
    }
}
