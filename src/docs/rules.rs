//! Access rules: compiled from the filter language, evaluated with `auth`, `doc` and
//! `request.data` bound.

use crate::model::{Document, Rules};
use crate::query::{self, ast::Path, eval::walk, Dialect, Expr, ParseError, Scope};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The longest rule accepted, in bytes (a rule is evaluated for every document a list reads).
pub const MAX_RULE_LENGTH: usize = 16 * 1024;

/// One compiled rule.
#[derive(Debug, Clone)]
pub enum Rule {
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
    pub fn compile(src: Option<&str>) -> Result<Rule, ParseError> {
        Self::compile_in(src, Dialect::Rule)
    }

    /// Compiles a rule of a dialect (`Dialect::Rule` or `Dialect::FileRule`).
    pub fn compile_in(src: Option<&str>, dialect: Dialect) -> Result<Rule, ParseError> {
        match src {
            None => Ok(Rule::AdminOnly),
            Some(s) if s.trim().is_empty() => Ok(Rule::Everyone),
            Some(s) if s.len() > MAX_RULE_LENGTH => Err(ParseError {
                column: 1,
                message: format!("a rule is at most {MAX_RULE_LENGTH} bytes"),
            }),
            Some(s) => {
                let expr = query::parse_expr(s, dialect)?;
                let item = match dialect {
                    Dialect::FileRule => "file",
                    Dialect::Rule | Dialect::Document => "doc",
                };
                let uses_doc = query::mentions(&expr, item);
                Ok(Rule::Expr { expr, uses_doc })
            }
        }
    }
}

impl Rule {
    /// Whether the rule requires `doc.owner == auth.id` (a top-level conjunct, either way
    /// round): then only the caller's own documents can pass it.
    pub fn requires_owner(&self) -> bool {
        let Rule::Expr { expr, .. } = self else {
            return false;
        };
        let is = |e: &Expr, root: &str, field: &str| matches!(e, Expr::Path(Path { segments }) if segments.len() == 2 && segments[0] == root && segments[1] == field);
        let owner_eq = |e: &Expr| match e {
            Expr::Compare(a, query::ast::CmpOp::Eq, b) => {
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

/// The four rules of a collection, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub read: Rule,
    pub create: Rule,
    pub update: Rule,
    pub delete: Rule,
}

impl CompiledRules {
    /// Rules that allow admins only: what a collection whose stored rules do not compile gets.
    pub fn admin_only() -> CompiledRules {
        CompiledRules {
            read: Rule::AdminOnly,
            create: Rule::AdminOnly,
            update: Rule::AdminOnly,
            delete: Rule::AdminOnly,
        }
    }

    /// Compiles every rule; the error names the rule that failed.
    pub fn compile(rules: &Rules) -> Result<CompiledRules, (&'static str, ParseError)> {
        let one = |name: &'static str, src: &Option<String>| {
            Rule::compile(src.as_deref()).map_err(|e| (name, e))
        };
        Ok(CompiledRules {
            read: one("read", &rules.read)?,
            create: one("create", &rules.create)?,
            update: one("update", &rules.update)?,
            delete: one("delete", &rules.delete)?,
        })
    }
}

/// The names a rule can see.
pub struct RuleScope<'a> {
    pub auth: &'a Value,
    pub doc: Option<&'a Document>,
    pub request_data: Option<&'a Map<String, Value>>,
}

impl Scope for RuleScope<'_> {
    fn lookup(&self, path: &Path) -> Option<Cow<'_, Value>> {
        let segments = &path.segments;
        match segments.first().map(String::as_str) {
            Some("auth") => walk(self.auth, &segments[1..]).map(Cow::Borrowed),
            Some("doc") if segments.len() == 1 => {
                serde_json::to_value(self.doc?).ok().map(Cow::Owned)
            }
            Some("doc") => self.doc?.lookup_segments(&segments[1..]),
            Some("request") => {
                let data = self.request_data?;
                match segments.get(1..) {
                    Some([d]) if d == "data" => Some(Cow::Owned(Value::Object(data.clone()))),
                    Some([d, first, rest @ ..]) if d == "data" => {
                        walk(data.get(first)?, rest).map(Cow::Borrowed)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Whether `rule` allows the caller with `auth` (admins are decided before this is called).
pub fn allows(rule: &Rule, scope: &dyn Scope) -> bool {
    match rule {
        Rule::AdminOnly => false,
        Rule::Everyone => true,
        Rule::Expr { expr, .. } => query::matches(expr, scope),
    }
}
