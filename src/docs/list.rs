//! Lists: parameters, validation and parsing (`prepare_list`), the caller's own-documents
//! condition that lets the planner use the owner index, pages and their opaque cursors.

use super::{check_collection, CompiledRules, DocsError, Documents, ReadCheck, Result};
use crate::auth::Principal;
use crate::model::Document;
use crate::query::{self, plan::effective_sort, Dialect, Expr, Rule, SortKey};
use crate::store::{QueryResult, QuerySpec, RawDocument};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListParams<'a> {
    pub filter: Option<&'a str>,
    pub sort: Option<&'a str>,
    pub limit: Option<usize>,
    pub cursor: Option<&'a str>,
    /// Also count every matching document the caller may read (`total`).
    pub count: bool,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub items: Vec<Document>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// With `count=true`: how many documents match the filter and may be read, over all pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

pub(super) const DEFAULT_PAGE: usize = 50;

pub(super) const MAX_PAGE: usize = 1000;

/// A list request, validated and parsed (see [`Documents::prepare_list`]).
pub(crate) struct PreparedList {
    collection: String,
    filter: Option<query::Expr>,
    sort: Vec<SortKey>,
    effective: Vec<SortKey>,
    signature: String,
    limit: usize,
    after: Option<Vec<Value>>,
    count: bool,
}

impl PreparedList {
    pub(crate) fn collection(&self) -> &str {
        &self.collection
    }
}

/// A page of stored documents, serialised without parsing them again.
pub(crate) struct RawPage {
    pub items: Vec<RawDocument>,
    pub next_cursor: Option<String>,
    pub total: Option<u64>,
}

impl RawPage {
    /// The page as `{"items": [...], "next_cursor": ...}`.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let size: usize = self.items.iter().map(|d| d.json().len() + 1).sum();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(b"{\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item.json());
        }
        out.extend_from_slice(b"],\"next_cursor\":");
        // A cursor is URL-safe base64, so its JSON form is itself in quotes.
        match &self.next_cursor {
            Some(c) => {
                out.push(b'"');
                out.extend_from_slice(c.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        if let Some(total) = self.total {
            out.extend_from_slice(format!(",\"total\":{total}").as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// A collection's read rule as a query applies it for one caller.
pub(super) struct QueryRead {
    rules: Arc<CompiledRules>,
    auth: Value,
    /// Whether each document must be checked (see [`checks_each`]); otherwise the rule was
    /// decided once, for every document.
    pub(super) per_doc: bool,
}

impl QueryRead {
    /// Whether `who` may read `doc`.
    pub(super) fn visible(&self, who: &Principal, doc: &Document) -> bool {
        Documents::may_read(&self.rules, who, &self.auth, Some(doc))
    }
}

/// Whether a query must check `rules` against each document for `who`: the read rule looks at
/// the document and the caller is not an admin.
fn checks_each(who: &Principal, rules: &CompiledRules) -> bool {
    !who.is_admin() && matches!(&rules.read, Rule::Expr { uses_doc: true, .. })
}

/// The opaque content of a cursor: the effective sort it belongs to and the position of the
/// last item returned.
#[derive(Serialize, Deserialize)]
struct Cursor {
    s: String,
    k: Vec<Value>,
}

fn sort_signature(keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "" }, k.path))
        .collect::<Vec<_>>()
        .join(",")
}

impl Documents {
    /// Validates and parses a list request.
    pub(crate) fn prepare_list(
        &self,
        collection: &str,
        params: &ListParams<'_>,
    ) -> Result<PreparedList> {
        check_collection(collection)?;
        let max = self.inner.limits.max_filter_length;
        for (name, value) in [("filter", params.filter), ("sort", params.sort)] {
            if value.is_some_and(|v| v.len() > max) {
                return Err(DocsError::BadRequest(format!(
                    "{name} is longer than {max} bytes"
                )));
            }
        }
        let filter = match params.filter.filter(|f| !f.trim().is_empty()) {
            Some(src) => Some(query::parse_expr(src, Dialect::Document)?),
            None => None,
        };
        let sort = match params.sort.filter(|s| !s.trim().is_empty()) {
            Some(src) => query::parse_sort(src)?,
            None => Vec::new(),
        };
        let limit = params.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(DocsError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let effective = effective_sort(&sort);
        let signature = sort_signature(&effective);
        let after = match params.cursor.filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_cursor(c, &signature, effective.len())?),
            None => None,
        };
        Ok(PreparedList {
            collection: collection.to_string(),
            filter,
            sort,
            effective,
            signature,
            limit,
            after,
            count: params.count,
        })
    }

    /// Whether a prepared list reads a bounded part of the collection: an ordered scan (it
    /// stops after `limit` matches) with no filter, or within an index or id range, and a
    /// count (if asked) within an index or id range. Such a list is cheap enough to run on an
    /// async worker; others belong on a blocking thread.
    pub(crate) fn is_bounded(&self, who: &Principal, list: &PreparedList) -> bool {
        let owned = self.owned_filter(who, &list.collection, list.filter.as_ref());
        let filter = owned.as_ref().or(list.filter.as_ref());
        let plan = self.inner.store.plan(&list.collection, filter, &list.sort);
        let narrowed = |plan: &crate::query::plan::Plan| {
            !matches!(
                plan.access,
                crate::query::plan::Access::Primary { range: None }
            )
        };
        // A count reads every match: bounded when an index or id range narrows it, or when
        // it is the collection's counter.
        let per_doc = checks_each(who, &self.rules_for(&list.collection));
        let count_bounded = !list.count
            || (filter.is_none() && !per_doc)
            || narrowed(&self.inner.store.plan(&list.collection, filter, &[]));
        plan.ordered && (filter.is_none() || narrowed(&plan)) && count_bounded
    }

    /// The list's filter with `owner == <caller>` added, when the collection's read rule
    /// requires `doc.owner == auth.id` of this caller: only their own documents can pass it, so
    /// the query may say so, and the planner then reads them from the owner index instead of
    /// scanning the collection. `None` when the rule does not (or the caller is an admin).
    pub(super) fn owned_filter(
        &self,
        who: &Principal,
        collection: &str,
        filter: Option<&Expr>,
    ) -> Option<Expr> {
        let Principal::User {
            id, admin: false, ..
        } = who
        else {
            return None;
        };
        let rules = self.rules_for(collection);
        if !matches!(&rules.read, Rule::Expr { uses_doc: true, .. }) || !rules.read.requires_owner()
        {
            return None;
        }
        let mine = Expr::Compare(
            Box::new(Expr::Path(query::ast::Path {
                segments: vec!["owner".into()],
            })),
            query::ast::CmpOp::Eq,
            Box::new(Expr::Literal(Value::String(id.clone()))),
        );
        Some(match filter {
            Some(filter) => Expr::And(vec![filter.clone(), mine]),
            None => mine,
        })
    }

    /// How a query over `collection` applies its read rule for `who`; `forbidden` when the rule
    /// says no to this caller whatever a document holds.
    pub(super) fn query_read(&self, who: &Principal, collection: &str) -> Result<QueryRead> {
        let rules = self.rules_for(collection);
        let per_doc = checks_each(who, &rules);
        let auth = who.auth_value();
        let check = ReadCheck {
            rules: rules.clone(),
        };
        if check.denies_all(who, &auth) {
            return Err(Self::denied(collection));
        }
        Ok(QueryRead {
            rules,
            auth,
            per_doc,
        })
    }

    /// Runs a prepared list for `who`: the matching documents it may read, and the cursor of
    /// the next page.
    async fn run_list(
        &self,
        who: &Principal,
        list: &PreparedList,
    ) -> Result<(QueryResult, Option<String>)> {
        let collection = &list.collection;
        let read = self.query_read(who, collection)?;
        let visible = |doc: &Document| read.visible(who, doc);
        let owned = self.owned_filter(who, collection, list.filter.as_ref());
        let result = self
            .inner
            .store
            .query(
                collection,
                &QuerySpec {
                    filter: owned.as_ref().or(list.filter.as_ref()),
                    sort: &list.sort,
                    limit: list.limit,
                    after: list.after.as_deref(),
                    visible: read.per_doc.then_some(&visible as _),
                },
            )
            .await?;
        let last = match result.has_more {
            true => result.last_document()?,
            false => None,
        };
        let next_cursor = last.map(|last| {
            encode_cursor(&Cursor {
                s: list.signature.clone(),
                k: query::plan::sort_values(&last, &list.effective),
            })
        });
        Ok((result, next_cursor))
    }

    /// Lists the documents of a collection that match `params` and that `who` may read.
    pub async fn list(
        &self,
        who: &Principal,
        collection: &str,
        params: &ListParams<'_>,
    ) -> Result<Page> {
        let list = self.prepare_list(collection, params)?;
        self.list_prepared(who, &list).await
    }

    /// Runs a prepared list (see [`Documents::prepare_list`]).
    pub(crate) async fn list_prepared(&self, who: &Principal, list: &PreparedList) -> Result<Page> {
        let (result, next_cursor) = self.run_list(who, list).await?;
        Ok(Page {
            items: result.into_documents()?,
            next_cursor,
            total: self.list_total(who, list).await?,
        })
    }

    /// Like [`Documents::list`], as the stored bytes of each document, for serving.
    pub(crate) async fn list_raw(&self, who: &Principal, list: &PreparedList) -> Result<RawPage> {
        let (result, next_cursor) = self.run_list(who, list).await?;
        Ok(RawPage {
            items: result.into_raw(),
            next_cursor,
            total: self.list_total(who, list).await?,
        })
    }

    /// The `total` of a list that asked for it.
    async fn list_total(&self, who: &Principal, list: &PreparedList) -> Result<Option<u64>> {
        if !list.count {
            return Ok(None);
        }
        let total = self
            .count(who, &list.collection, list.filter.as_ref())
            .await?;
        Ok(Some(total))
    }
}

fn encode_cursor(cursor: &Cursor) -> String {
    let json = serde_json::to_vec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(src: &str, signature: &str, keys: usize) -> Result<Vec<Value>> {
    let bad = || DocsError::BadRequest("invalid cursor".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(src)
        .map_err(|_| bad())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if cursor.s != signature || cursor.k.len() != keys {
        return Err(DocsError::BadRequest(
            "the cursor belongs to a query with another sort".into(),
        ));
    }
    Ok(cursor.k)
}
