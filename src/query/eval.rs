//! Evaluation of filter and rule expressions.
//!
//! Semantics (docs/http-api.md and the README): a missing field is `null`; `==` between values of different JSON
//! types is false and `!=` is its negation; `<` `<=` `>` `>=` compare numbers numerically and
//! strings by bytes, and are false for any other pair; `in` tests membership in an array;
//! `contains` tests an array for an element or a string for a substring. A value is "true" as a
//! condition only if it is the boolean `true`.

use super::ast::{ArithOp, CmpOp, Expr, Func, Path};
use super::{functions, order};
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

/// A value while an expression is evaluated: JSON, or a time or duration (from `now()`,
/// `time(x)`, `duration("P7D")` and `+`/`-` between them), in nanoseconds.
#[derive(Debug, Clone)]
pub(crate) enum Val<'s> {
    Json(Cow<'s, Value>),
    Time(i128),
    Duration(i128),
}

/// Evaluates `expr`.
pub(crate) fn eval<'s>(expr: &'s Expr, scope: &'s dyn Scope) -> Val<'s> {
    let boolean = |b: bool| Val::Json(Cow::Owned(Value::Bool(b)));
    match expr {
        Expr::Literal(v) => Val::Json(Cow::Borrowed(v)),
        Expr::Path(p) => Val::Json(scope.lookup(p).unwrap_or(Cow::Borrowed(&NULL))),
        Expr::Not(inner) => boolean(!truthy(&eval(inner, scope))),
        Expr::And(all) => boolean(all.iter().all(|e| matches(e, scope))),
        Expr::Or(any) => boolean(any.iter().any(|e| matches(e, scope))),
        Expr::Compare(a, op, b) => boolean(compare_vals(&eval(a, scope), *op, &eval(b, scope))),
        Expr::Arith(a, op, b) => arith(&eval(a, scope), *op, &eval(b, scope)),
        Expr::Call(Func::Changed(field), _) => boolean(changed(field, scope)),
        Expr::Call(func, args) => {
            let args: Vec<Val<'s>> = args.iter().map(|a| eval(a, scope)).collect();
            functions::call(func, &args)
        }
    }
}

/// `changed("data.f")`: whether the stored document's field differs from what the write
/// leaves (`doc.data.f` against `request.data.f`).
fn changed(field: &[String], scope: &dyn Scope) -> bool {
    let at = |root: &[&str]| {
        let segments = root
            .iter()
            .map(|s| s.to_string())
            .chain(field.iter().cloned())
            .collect();
        scope
            .lookup(&Path { segments })
            .map(Cow::into_owned)
            .unwrap_or(Value::Null)
    };
    !equal(&at(&["doc", "data"]), &at(&["request", "data"]))
}

/// `+` and `-` between times and durations; anything else is `null`.
fn arith<'s>(a: &Val<'s>, op: ArithOp, b: &Val<'s>) -> Val<'s> {
    let sign = match op {
        ArithOp::Add => 1,
        ArithOp::Sub => -1,
    };
    let time = |v: &Val<'_>| match v {
        Val::Time(t) => Some(*t),
        Val::Json(j) => j.as_str().and_then(functions::parse_time),
        Val::Duration(_) => None,
    };
    match (a, b) {
        (Val::Duration(x), Val::Duration(y)) => Val::Duration(x.saturating_add(sign * y)),
        (_, Val::Duration(d)) => match time(a) {
            Some(t) => Val::Time(t.saturating_add(sign * d)),
            None => Val::Json(Cow::Owned(Value::Null)),
        },
        (Val::Duration(d), _) if op == ArithOp::Add => match time(b) {
            Some(t) => Val::Time(t.saturating_add(*d)),
            None => Val::Json(Cow::Owned(Value::Null)),
        },
        _ => match (time(a), time(b)) {
            (Some(x), Some(y)) if op == ArithOp::Sub && (is_time(a) || is_time(b)) => {
                Val::Duration(x.saturating_sub(y))
            }
            _ => Val::Json(Cow::Owned(Value::Null)),
        },
    }
}

fn is_time(v: &Val<'_>) -> bool {
    matches!(v, Val::Time(_))
}

/// A comparison where a time meets a time, or an RFC 3339 string (compared by instant), or a
/// duration meets a duration; otherwise the JSON comparison.
fn compare_vals(a: &Val<'_>, op: CmpOp, b: &Val<'_>) -> bool {
    use std::cmp::Ordering;
    let instant = |v: &Val<'_>| match v {
        Val::Time(t) => Some(*t),
        Val::Json(j) => j.as_str().and_then(functions::parse_time),
        Val::Duration(_) => None,
    };
    let ordering: Option<Option<Ordering>> = match (a, b) {
        (Val::Json(x), Val::Json(y)) => return compare(x, op, y),
        (Val::Duration(x), Val::Duration(y)) => Some(Some(x.cmp(y))),
        (Val::Time(_), _) | (_, Val::Time(_)) => {
            Some(instant(a).zip(instant(b)).map(|(x, y)| x.cmp(&y)))
        }
        _ => Some(None),
    };
    let ordering = ordering.flatten();
    match op {
        CmpOp::Eq => ordering == Some(Ordering::Equal),
        CmpOp::Ne => ordering != Some(Ordering::Equal),
        CmpOp::Lt => ordering == Some(Ordering::Less),
        CmpOp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ordering == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
        CmpOp::In | CmpOp::Contains => false,
    }
}

/// Whether `expr` reads any path under `root`.
pub(crate) fn mentions(expr: &Expr, root: &str) -> bool {
    match expr {
        Expr::Path(p) => p.root() == root,
        Expr::Literal(_) => false,
        Expr::Not(a) => mentions(a, root),
        Expr::And(all) | Expr::Or(all) => all.iter().any(|e| mentions(e, root)),
        Expr::Compare(a, _, b) | Expr::Arith(a, _, b) => mentions(a, root) || mentions(b, root),
        Expr::Call(Func::Changed(_), _) => root == "doc" || root == "request",
        Expr::Call(_, args) => args.iter().any(|e| mentions(e, root)),
    }
}

/// Whether `expr` calls `now()`: its value changes with time, not only with the documents.
pub(crate) fn reads_clock(expr: &Expr) -> bool {
    match expr {
        Expr::Call(Func::Now, _) => true,
        Expr::Path(_) | Expr::Literal(_) => false,
        Expr::Not(a) => reads_clock(a),
        Expr::And(all) | Expr::Or(all) => all.iter().any(reads_clock),
        Expr::Compare(a, _, b) | Expr::Arith(a, _, b) => reads_clock(a) || reads_clock(b),
        Expr::Call(_, args) => args.iter().any(reads_clock),
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

fn truthy(v: &Val<'_>) -> bool {
    matches!(v, Val::Json(j) if matches!(j.as_ref(), Value::Bool(true)))
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
