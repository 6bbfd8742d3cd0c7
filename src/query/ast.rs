//! The syntax tree of the filter language.

use serde_json::Value;
use std::sync::Arc;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Literal(Value),
    Path(Path),
    Not(Box<Expr>),
    /// Two or more operands, all of which must hold (a chain is one node, not a deep tree).
    And(Vec<Expr>),
    /// Two or more operands, one of which must hold.
    Or(Vec<Expr>),
    Compare(Box<Expr>, CmpOp, Box<Expr>),
    /// A call of a built-in function.
    Call(Func, Vec<Expr>),
    /// `a + b` or `a - b`: times and durations.
    Arith(Box<Expr>, ArithOp, Box<Expr>),
}

/// A built-in function. Arguments that must be literals are taken apart when parsed.
#[derive(Debug, Clone)]
pub(crate) enum Func {
    /// `size(x)`: characters of a string, items of an array, keys of an object.
    Size,
    /// `startsWith(s, prefix)`.
    StartsWith,
    /// `endsWith(s, suffix)`.
    EndsWith,
    Lower,
    Upper,
    /// `matches(s, "pattern")`, the pattern compiled once (linear-time engine).
    Matches(Arc<regex::Regex>),
    /// `has(object, "key")`.
    Has,
    /// `keys(object)`: its keys, as an array.
    Keys,
    /// `type(x)`: `null`, `boolean`, `number`, `string`, `array`, `object`, `time`, `duration`.
    Type,
    /// `now()`: the time of the evaluation.
    Now,
    /// `time(x)`: an RFC 3339 string as a time, compared by instant.
    Time,
    /// `duration("P7D")`, in nanoseconds.
    Duration(i128),
    /// `changed("data.field")`: in an update rule, whether the write changes that field.
    Changed(Vec<String>),
}

impl PartialEq for Func {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Func::Matches(a), Func::Matches(b)) => a.as_str() == b.as_str(),
            (Func::Duration(a), Func::Duration(b)) => a == b,
            (Func::Changed(a), Func::Changed(b)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
}

/// A dotted name such as `data.author.name`; the first segment is the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Path {
    pub segments: Vec<String>,
}

impl Path {
    pub(crate) fn root(&self) -> &str {
        self.segments.first().map(String::as_str).unwrap_or("")
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
}

impl CmpOp {
    /// The operator with its operands swapped (`5 < x` is `x > 5`), if it has one.
    pub(crate) fn flipped(self) -> Option<CmpOp> {
        Some(match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::In | CmpOp::Contains => return None,
        })
    }
}

/// One key of a sort specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SortKey {
    pub path: Path,
    pub descending: bool,
}
