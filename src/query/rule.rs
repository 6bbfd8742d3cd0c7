//! Access rules: an expression of the filter language that guards an action, or one of the two
//! fixed rules (admins only, everyone). Compiled here; evaluated with whatever scope the guarded
//! item provides (`docs` binds `auth`, `doc` and `request.data`; `files` binds `file`).

use super::{ast::Path, parse_expr, Dialect, Expr, ParseError, Scope};

/// The longest rule accepted, in bytes (a rule is evaluated for every document a list reads).
pub(crate) const MAX_RULE_LENGTH: usize = 16 * 1024;

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    /// `null`: admins only.
    AdminOnly,
    /// `""`: everyone, signed in or not.
    Everyone,
    /// An expression; `uses_doc` says whether it reads the item it guards (`doc`, or `file` in
    /// a bucket rule) at all, so a rule that does not can be decided once for a whole list.
    Expr { expr: Expr, uses_doc: bool },
}

impl Rule {
    /// Compiles a collection rule.
    pub(crate) fn compile(src: Option<&str>) -> Result<Rule, ParseError> {
        Self::compile_in(src, Dialect::Rule)
    }

    /// Compiles a rule of a dialect (`Dialect::Rule` or `Dialect::FileRule`).
    pub(crate) fn compile_in(src: Option<&str>, dialect: Dialect) -> Result<Rule, ParseError> {
        match src {
            None => Ok(Rule::AdminOnly),
            Some(s) if s.trim().is_empty() => Ok(Rule::Everyone),
            Some(s) if s.len() > MAX_RULE_LENGTH => Err(ParseError {
                column: 1,
                message: format!("a rule is at most {MAX_RULE_LENGTH} bytes"),
            }),
            Some(s) => {
                let expr = parse_expr(s, dialect)?;
                let item = match dialect {
                    Dialect::FileRule => "file",
                    Dialect::Rule | Dialect::Document | Dialect::Trigger => "doc",
                };
                let uses_doc = super::mentions(&expr, item);
                Ok(Rule::Expr { expr, uses_doc })
            }
        }
    }
}

impl Rule {
    /// Whether the rule requires `doc.owner == auth.id` (a top-level conjunct, either way
    /// round): then only the caller's own documents can pass it.
    pub(crate) fn requires_owner(&self) -> bool {
        let Rule::Expr { expr, .. } = self else {
            return false;
        };
        let is = |e: &Expr, root: &str, field: &str| matches!(e, Expr::Path(Path { segments }) if segments.len() == 2 && segments[0] == root && segments[1] == field);
        let owner_eq = |e: &Expr| match e {
            Expr::Compare(a, super::ast::CmpOp::Eq, b) => {
                (is(a, "doc", "owner") && is(b, "auth", "id"))
                    || (is(a, "auth", "id") && is(b, "doc", "owner"))
            }
            _ => false,
        };
        match expr {
            Expr::And(all) => all.iter().any(owner_eq),
            e => owner_eq(e),
        }
    }
}

/// Whether `rule` allows the caller with `auth` (admins are decided before this is called).
pub(crate) fn allows(rule: &Rule, scope: &dyn Scope) -> bool {
    match rule {
        Rule::AdminOnly => false,
        Rule::Everyone => true,
        Rule::Expr { expr, .. } => super::matches(expr, scope),
    }
}
