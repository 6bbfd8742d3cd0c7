//! Rules and filters tried before they are stored: whether an expression compiles (and at
//! which column it does not), checked by the server's own parser as an editor types, and what
//! a collection rule decides for a chosen user, document and write, evaluated in the same
//! scope as a real request's.

use super::rules::RuleScope;
use super::{check_collection, check_id, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::Document;
use crate::query::{self, Dialect, ParseError, Rule};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What an expression is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpressionKind {
    /// A collection's access rule (`auth`, `doc`, `request.data`).
    CollectionRule,
    /// A bucket's access rule (`auth`, `file`, `request.size`, `request.content_type`,
    /// `request.path`).
    BucketRule,
    /// A list or subscription filter over a document (`id`, `owner`, `data.<field>`, ...).
    Filter,
    /// A trigger's or webhook's `when` (`before`, `after`).
    When,
}

/// Whether an expression compiles; where and why it does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ExpressionCheck {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// 1-based, in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl From<std::result::Result<(), ParseError>> for ExpressionCheck {
    fn from(parsed: std::result::Result<(), ParseError>) -> Self {
        match parsed {
            Ok(()) => ExpressionCheck {
                valid: true,
                message: None,
                column: None,
            },
            Err(e) => ExpressionCheck {
                valid: false,
                message: Some(e.message),
                column: Some(e.column),
            },
        }
    }
}

/// The operation a rule is tried for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleOperation {
    Read,
    Create,
    Update,
    Delete,
}

/// What a rule decided, and what it saw.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleTrial {
    /// Whether the rule allows it.
    pub allowed: bool,
    /// The user is an admin, whom rules never stop (whatever `allowed` says).
    pub admin: bool,
    /// `auth` as the rule saw it: null for an anonymous caller.
    #[schema(value_type = Object)]
    pub auth: Value,
    /// `doc` as the rule saw it: the stored document, or null (a create, or no such id).
    pub document: Option<Document>,
}

/// A trial of a collection rule: the rule (absent: the collection's own for the operation),
/// the document it is about and the data a write would leave.
#[derive(Debug, Clone, Default)]
pub struct RuleTrialInput<'a> {
    pub rule: Option<&'a str>,
    pub document_id: Option<&'a str>,
    /// `request.data`: the document's data as a create or update would leave it.
    pub data: Option<Map<String, Value>>,
}

impl Documents {
    /// Whether `source` compiles as `kind`, with the limits the server applies when it is
    /// stored or sent (admins only).
    pub fn check_expression(
        &self,
        who: &Principal,
        kind: ExpressionKind,
        source: &str,
    ) -> Result<ExpressionCheck> {
        who.require_admin("check rules")?;
        let too_long = |max: usize| ParseError {
            column: 1,
            message: format!("at most {max} bytes"),
        };
        let parsed = match kind {
            ExpressionKind::CollectionRule => Rule::compile(Some(source)).map(drop),
            ExpressionKind::BucketRule => {
                Rule::compile_in(Some(source), Dialect::FileRule).map(drop)
            }
            ExpressionKind::Filter => match self.inner.limits.max_filter_length {
                max if source.len() > max => Err(too_long(max)),
                _ => query::parse_expr(source, Dialect::Document).map(drop),
            },
            ExpressionKind::When => match crate::when::MAX_WHEN {
                max if source.len() > max => Err(too_long(max)),
                _ => query::parse_expr(source, Dialect::Trigger).map(drop),
            },
        };
        Ok(parsed.into())
    }

    /// What a collection rule decides for `user` (absent: an anonymous caller), in the scope
    /// a real request of `operation` would give it (admins only).
    pub async fn try_rule(
        &self,
        who: &Principal,
        collection: &str,
        operation: RuleOperation,
        user: Option<&Principal>,
        input: RuleTrialInput<'_>,
    ) -> Result<RuleTrial> {
        who.require_admin("try rules")?;
        check_collection(collection)?;
        let rule = match input.rule {
            Some(source) => Rule::compile(Some(source)).map_err(|e| DocsError::InvalidRule {
                rule: "rule".into(),
                message: e.message,
                column: e.column,
            })?,
            None => {
                let rules = self.rules_for(collection);
                match operation {
                    RuleOperation::Read => rules.read.clone(),
                    RuleOperation::Create => rules.create.clone(),
                    RuleOperation::Update => rules.update.clone(),
                    RuleOperation::Delete => rules.delete.clone(),
                }
            }
        };
        let document = match input.document_id {
            Some(id) if operation != RuleOperation::Create => {
                check_id(id)?;
                self.inner.store.get(collection, id).await?
            }
            _ => None,
        };
        let data = match operation {
            RuleOperation::Create | RuleOperation::Update => input.data,
            RuleOperation::Read | RuleOperation::Delete => None,
        };
        let caller = user.cloned().unwrap_or(Principal::Anonymous);
        let auth = caller.auth_value();
        let scope = RuleScope {
            auth: &auth,
            doc: document.as_ref(),
            request_data: data.as_ref(),
        };
        Ok(RuleTrial {
            allowed: query::allows(&rule, &scope),
            admin: caller.is_admin(),
            auth,
            document,
        })
    }
}
