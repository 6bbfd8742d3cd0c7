//! `when`: the condition a trigger or a webhook may carry, in the filter language over
//! `before` and `after` (what the change found and what it left, null when absent), decided in
//! the commit, so a change that does not meet it queues nothing.

use crate::model::{Change, Subject};
use crate::query::ast::Path;
use crate::query::eval::walk;
use crate::query::{self, Dialect, Expr, Scope};
use serde_json::Value;
use std::borrow::Cow;

/// The longest `when`, in bytes.
pub(crate) const MAX_WHEN: usize = 4096;

/// Compiles a `when`, or says why it does not compile.
pub(crate) fn compile(src: &str) -> Result<Expr, String> {
    if src.len() > MAX_WHEN {
        return Err(format!("`when` is at most {MAX_WHEN} bytes"));
    }
    query::parse_expr(src, Dialect::Trigger).map_err(|e| e.to_string())
}

/// A compiled `when`, or none.
#[derive(Debug, Clone)]
pub(crate) struct When(
    /// `None` without a condition; `Some(None)` when the stored one no longer compiles (it then
    /// matches nothing, rather than everything).
    Option<Option<Expr>>,
);

impl When {
    /// Compiles a stored condition; one that no longer compiles is logged and matches nothing.
    pub(crate) fn new(src: Option<&str>) -> When {
        When(src.map(|src| match compile(src) {
            Ok(expr) => Some(expr),
            Err(e) => {
                tracing::warn!(when = src, error = %e, "a stored `when` does not compile: it matches nothing");
                None
            }
        }))
    }

    /// Whether a document or file change meets the condition.
    pub(crate) fn matches_change(&self, change: &Change) -> bool {
        self.decide(&ChangeScope(change))
    }

    /// Whether a change between two JSON values (an account as it was and is) meets it.
    pub(crate) fn matches_values(&self, before: &Value, after: &Value) -> bool {
        self.decide(&ValueScope { before, after })
    }

    fn decide(&self, scope: &dyn Scope) -> bool {
        match &self.0 {
            None => true,
            Some(Some(expr)) => query::matches(expr, scope),
            Some(None) => false,
        }
    }
}

/// `before` or `after`, and the rest of the path.
fn split(path: &Path) -> Option<(bool, &[String])> {
    let (root, rest) = path.segments.split_first()?;
    match root.as_str() {
        "before" => Some((false, rest)),
        "after" => Some((true, rest)),
        _ => None,
    }
}

/// `before` and `after` of a change.
struct ChangeScope<'a>(&'a Change);

impl Scope for ChangeScope<'_> {
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>> {
        let (after, rest) = split(path)?;
        match &self.0.subject {
            Subject::Document {
                before, after: now, ..
            } => {
                let Some(doc) = (if after { now } else { before }) else {
                    return rest.is_empty().then_some(Cow::Owned(Value::Null));
                };
                if rest.is_empty() {
                    serde_json::to_value(doc).ok().map(Cow::Owned)
                } else {
                    doc.lookup_segments(rest)
                }
            }
            Subject::File {
                before, after: now, ..
            } => {
                let file = serde_json::to_value(if after { now } else { before }).ok()?;
                walk(&file, rest).cloned().map(Cow::Owned)
            }
        }
    }
}

struct ValueScope<'a> {
    before: &'a Value,
    after: &'a Value,
}

impl Scope for ValueScope<'_> {
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>> {
        let (after, rest) = split(path)?;
        let value = if after { self.after } else { self.before };
        walk(value, rest).map(Cow::Borrowed)
    }
}
