//! A collection's access rules: the four compiled rules, the scope they are evaluated in
//! (`auth`, `doc` and `request.data`), the cache of compiled rules per configuration snapshot,
//! the guard that checks writes inside their transaction, and the read check.

use super::Documents;
use crate::auth::Principal;
use crate::model::{Document, Rules};
use crate::query::{self, ast::Path, eval::walk, ParseError, Rule, Scope};
use crate::store::{Access, CollectionState, WriteGuard};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// The four rules of a collection, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRules {
    pub read: Rule,
    pub create: Rule,
    pub update: Rule,
    pub delete: Rule,
}

impl CompiledRules {
    /// Rules that allow admins only: what a collection whose stored rules do not compile gets.
    pub(crate) fn admin_only() -> CompiledRules {
        CompiledRules {
            read: Rule::AdminOnly,
            create: Rule::AdminOnly,
            update: Rule::AdminOnly,
            delete: Rule::AdminOnly,
        }
    }

    /// Compiles every rule; the error names the rule that failed.
    pub(crate) fn compile(rules: &Rules) -> Result<CompiledRules, (&'static str, ParseError)> {
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
pub(super) struct RuleScope<'a> {
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

/// Rules compiled from one configuration snapshot (`None`: the collection has no config).
pub(super) struct CachedRules {
    source: Option<Arc<CollectionState>>,
    rules: Arc<CompiledRules>,
}

fn same_snapshot(a: &Option<Arc<CollectionState>>, b: &Option<Arc<CollectionState>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The writer's access check: evaluates the rules of each op's collection for one caller.
struct RuleGuard {
    docs: Documents,
    auth: Value,
}

impl WriteGuard for RuleGuard {
    fn check(
        &self,
        access: Access,
        collection: &str,
        state: Option<&Arc<CollectionState>>,
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> std::result::Result<(), String> {
        let rules = self.docs.rules_of(collection, state.cloned());
        let (rule, verb) = match access {
            Access::Create => (&rules.create, "create"),
            Access::Update => (&rules.update, "update"),
            Access::Delete => (&rules.delete, "delete"),
        };
        let scope = RuleScope {
            auth: &self.auth,
            doc: before,
            request_data: after.map(|d| &d.data),
        };
        if query::allows(rule, &scope) {
            Ok(())
        } else {
            Err(format!("the {verb} rule of {collection} denies this"))
        }
    }
}

impl Documents {
    /// The compiled rules of a collection: its own, or the defaults.
    pub(super) fn rules_for(&self, collection: &str) -> Arc<CompiledRules> {
        self.rules_of(collection, self.inner.store.collection(collection))
    }

    /// The compiled rules of a collection configured as `source` (`None`: not configured).
    fn rules_of(
        &self,
        collection: &str,
        source: Option<Arc<CollectionState>>,
    ) -> Arc<CompiledRules> {
        // The cache entry is valid only for the exact configuration snapshot it was compiled
        // from, so a rule change takes effect on the next request, with no invalidation that a
        // concurrent request could undo by caching the old rules after it.
        if let Ok(cache) = self.inner.rules.read() {
            if let Some(cached) = cache.get(collection) {
                if same_snapshot(&cached.source, &source) {
                    return cached.rules.clone();
                }
            }
        }
        // Only configured collections are cached, so the cache holds at most one entry per
        // configuration an admin stored, whatever names clients send.
        let Some(rules) = source
            .as_ref()
            .and_then(|state| state.config.rules.as_ref())
        else {
            return self.inner.default_rules.clone();
        };
        let compiled = Arc::new(CompiledRules::compile(rules).unwrap_or_else(|(name, e)| {
            // Fail closed: a stored rule that no longer compiles denies everyone but admins,
            // never falls back to the (possibly wider) defaults.
            tracing::error!(collection, rule = name, error = %e, "a stored rule does not compile; the collection allows admins only until it is fixed");
            CompiledRules::admin_only()
        }));
        if let Ok(mut cache) = self.inner.rules.write() {
            cache.insert(
                collection.to_string(),
                CachedRules {
                    source,
                    rules: compiled.clone(),
                },
            );
        }
        compiled
    }

    pub(super) fn guard(&self, who: &Principal) -> Option<Arc<dyn WriteGuard>> {
        if who.is_admin() {
            None
        } else {
            Some(Arc::new(RuleGuard {
                docs: self.clone(),
                auth: who.auth_value(),
            }))
        }
    }

    /// Whether `who` (with `auth` its rule binding) may read `doc`, or, with `None`, a document
    /// that does not exist, under `rules`.
    pub(super) fn may_read(
        rules: &CompiledRules,
        who: &Principal,
        auth: &Value,
        doc: Option<&Document>,
    ) -> bool {
        who.is_admin()
            || query::allows(
                &rules.read,
                &RuleScope {
                    auth,
                    doc,
                    request_data: None,
                },
            )
    }

    /// The read rule of a collection as configured now, to check many documents against (the
    /// realtime fan-out checks every event for every subscriber).
    pub(crate) fn read_check(&self, collection: &str) -> ReadCheck {
        ReadCheck {
            rules: self.rules_for(collection),
        }
    }
}

/// A collection's read rule, fixed at one moment.
pub(crate) struct ReadCheck {
    pub(super) rules: Arc<CompiledRules>,
}

impl ReadCheck {
    /// Whether `who` (with `auth` its rule binding) may read `doc`.
    pub(crate) fn allows(&self, who: &Principal, auth: &Value, doc: &Document) -> bool {
        Documents::may_read(&self.rules, who, auth, Some(doc))
    }

    /// Whether the rule denies `who` every document, whatever it holds: it says no without
    /// looking at the document (`auth != null && doc.owner == auth.id` for an anonymous
    /// caller).
    pub(crate) fn denies_all(&self, who: &Principal, auth: &Value) -> bool {
        match &self.rules.read {
            Rule::Expr {
                expr,
                uses_doc: true,
            } if !who.is_admin() => {
                let scope = RuleScope {
                    auth,
                    doc: None,
                    request_data: None,
                };
                query::decide(expr, &scope, "doc") == Some(false)
            }
            _ => !Documents::may_read(&self.rules, who, auth, None),
        }
    }
}
