//! The four rules of a collection, and the scope they are evaluated in: `auth`, `doc` and
//! `request.data` bound.

use crate::model::{Document, Rules};
use crate::query::{ast::Path, eval::walk, ParseError, Rule, Scope};
use serde_json::{Map, Value};
use std::borrow::Cow;

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
