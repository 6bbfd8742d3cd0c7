//! The syntax tree of the filter language.

use serde_json::Value;

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
