//! Evaluation of filter and rule expressions.
//!
//! Semantics (docs/http-api.md and the README): a missing field is `null`; `==` between values of different JSON
//! types is false and `!=` is its negation; `<` `<=` `>` `>=` compare numbers numerically and
//! strings by bytes, and are false for any other pair; `in` tests membership in an array;
//! `contains` tests an array for an element or a string for a substring. A value is "true" as a
//! condition only if it is the boolean `true`.

use super::ast::{CmpOp, Expr, Path};
use super::order;
use serde_json::Value;
use std::borrow::Cow;

/// Something paths can be resolved against: a document envelope, or the bindings of a rule.
pub(crate) trait Scope {
    /// The value at `path`, or `None` when it is missing (which compares as `null`).
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>>;
}

/// Walks `segments` into `value`: object keys, and decimal indexes into arrays.
pub(crate) fn walk<'a>(mut value: &'a Value, segments: &[String]) -> Option<&'a Value> {
    for seg in segments {
        value = match value {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

impl Scope for Value {
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>> {
        walk(self, &path.segments).map(Cow::Borrowed)
    }
}

static NULL: Value = Value::Null;

/// Evaluates `expr` to a value.
pub(crate) fn eval<'s>(expr: &'s Expr, scope: &'s dyn Scope) -> Cow<'s, Value> {
    match expr {
        Expr::Literal(v) => Cow::Borrowed(v),
        Expr::Path(p) => scope.lookup(p).unwrap_or(Cow::Borrowed(&NULL)),
        Expr::Not(inner) => Cow::Owned(Value::Bool(!truthy(&eval(inner, scope)))),
        Expr::And(all) => Cow::Owned(Value::Bool(all.iter().all(|e| matches(e, scope)))),
        Expr::Or(any) => Cow::Owned(Value::Bool(any.iter().any(|e| matches(e, scope)))),
        Expr::Compare(a, op, b) => {
            Cow::Owned(Value::Bool(compare(&eval(a, scope), *op, &eval(b, scope))))
        }
    }
}

/// Whether `expr` reads any path under `root`.
pub(crate) fn mentions(expr: &Expr, root: &str) -> bool {
    match expr {
        Expr::Path(p) => p.root() == root,
        Expr::Literal(_) => false,
        Expr::Not(a) => mentions(a, root),
        Expr::And(all) | Expr::Or(all) => all.iter().any(|e| mentions(e, root)),
        Expr::Compare(a, _, b) => mentions(a, root) || mentions(b, root),
    }
}

/// Whether `expr` holds whatever the paths under `unknown` hold: `Some` when the rest of the
/// expression decides it (`auth != null && doc.owner == auth.id` is false for an anonymous
/// caller, whatever the document), `None` when it depends on them.
pub(crate) fn decide(expr: &Expr, scope: &dyn Scope, unknown: &str) -> Option<bool> {
    match expr {
        Expr::Not(inner) => decide(inner, scope, unknown).map(|b| !b),
        Expr::And(all) => decide_all(all, scope, unknown, false),
        Expr::Or(any) => decide_all(any, scope, unknown, true),
        e if mentions(e, unknown) => None,
        e => Some(matches(e, scope)),
    }
}

/// `&&` (`wins` false) or `||` (`wins` true): one decided operand equal to `wins` decides it.
fn decide_all(operands: &[Expr], scope: &dyn Scope, unknown: &str, wins: bool) -> Option<bool> {
    let mut undecided = false;
    for e in operands {
        match decide(e, scope, unknown) {
            Some(b) if b == wins => return Some(wins),
            Some(_) => {}
            None => undecided = true,
        }
    }
    (!undecided).then_some(!wins)
}

/// Whether `expr` holds for `scope`.
pub(crate) fn matches(expr: &Expr, scope: &dyn Scope) -> bool {
    truthy(&eval(expr, scope))
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

/// Equality as the filter language defines it: numbers by value, different types never equal.
pub(crate) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => order::number(x) == order::number(y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Applies a comparison operator.
pub(crate) fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    use std::cmp::Ordering::*;
    let ordered = || match (a, b) {
        (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_)) => {
            Some(order::total_cmp(a, b))
        }
        _ => None,
    };
    match op {
        CmpOp::Eq => equal(a, b),
        CmpOp::Ne => !equal(a, b),
        CmpOp::Lt => ordered() == Some(Less),
        CmpOp::Le => matches!(ordered(), Some(Less | Equal)),
        CmpOp::Gt => ordered() == Some(Greater),
        CmpOp::Ge => matches!(ordered(), Some(Greater | Equal)),
        CmpOp::In => match b {
            Value::Array(items) => items.iter().any(|item| equal(a, item)),
            _ => false,
        },
        CmpOp::Contains => match (a, b) {
            (Value::Array(items), _) => items.iter().any(|item| equal(item, b)),
            (Value::String(hay), Value::String(needle)) => hay.contains(needle.as_str()),
            _ => false,
        },
    }
}
