//! The document service: the API of `API.md`'s Documents section as plain Rust, used by the
//! HTTP layer and by programs that embed Emberbase in-process. It validates names and bodies,
//! enforces access rules (in the writer, against the exact stored state, for writes), and turns
//! queries into store calls with opaque cursors.

mod rules;

pub use rules::{CompiledRules, RuleScope};

use crate::auth::Principal;
use crate::config::LimitsConfig;
use crate::error::{Error, Result};
use crate::model::{CollectionConfig, CollectionInfo, Document, RuleError, Rules};
use crate::query::{self, plan::effective_sort, Dialect, Expr, Rule, SortKey};
use crate::store::{
    Access, BatchFailure, CollectionState, QueryResult, QuerySpec, RawDocument, Store, WriteGuard,
    WriteOp, WriteRequest, Written,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Names of collections (and buckets, and functions): `[A-Za-z0-9_-]{1,64}`.
pub fn valid_collection_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(is_name_byte)
}

/// Document ids: `[A-Za-z0-9_-]{1,128}`.
pub fn valid_document_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

pub fn check_collection(name: &str) -> Result<()> {
    if valid_collection_name(name) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "invalid collection name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

pub fn check_id(id: &str) -> Result<()> {
    if valid_document_id(id) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "invalid document id {id:?}: use 1 to 128 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// The nesting depth of a JSON value: 0 for a scalar, 1 for a flat array or object.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// One op of `POST /v1/batch`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    pub op: BatchOpKind,
    pub collection: String,
    /// Required for `set`, `update` and `delete`; optional for `create`.
    #[serde(default)]
    pub id: Option<String>,
    /// The data (`create`, `set`) or merge patch (`update`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    #[serde(default)]
    pub if_version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchOpKind {
    Create,
    Set,
    Update,
    Delete,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListParams<'a> {
    pub filter: Option<&'a str>,
    pub sort: Option<&'a str>,
    pub limit: Option<usize>,
    pub cursor: Option<&'a str>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub items: Vec<Document>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;

/// A list request, validated and parsed (see [`Documents::prepare_list`]).
pub struct PreparedList {
    collection: String,
    filter: Option<query::Expr>,
    sort: Vec<SortKey>,
    effective: Vec<SortKey>,
    signature: String,
    limit: usize,
    after: Option<Vec<Value>>,
}

/// A page of stored documents, serialised without parsing them again.
pub struct RawPage {
    pub items: Vec<RawDocument>,
    pub next_cursor: Option<String>,
}

impl RawPage {
    /// The page as `{"items": [...], "next_cursor": ...}`.
    pub fn to_json(&self) -> Vec<u8> {
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
        out.push(b'}');
        out
    }
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

struct Inner {
    store: Store,
    limits: LimitsConfig,
    default_rules: Arc<CompiledRules>,
    /// Compiled rules per collection, with the configuration snapshot they were compiled from.
    rules: RwLock<HashMap<String, CachedRules>>,
}

/// Rules compiled from one configuration snapshot (`None`: the collection has no config).
struct CachedRules {
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

/// A collection's configuration as the API shows it, with the stored rules that do not compile
/// (each such collection is admin-only until they are fixed).
fn collection_info(name: &str, config: CollectionConfig, store: &Store) -> CollectionInfo {
    let mut info = CollectionInfo {
        name: name.to_string(),
        rules: config.rules,
        indexes: config.indexes,
        rule_errors: Vec::new(),
        index_states: store.index_states(name),
    };
    if let Some(rules) = &info.rules {
        info.rule_errors = [
            ("read", &rules.read),
            ("create", &rules.create),
            ("update", &rules.update),
            ("delete", &rules.delete),
        ]
        .into_iter()
        .filter_map(|(name, src)| {
            Rule::compile(src.as_deref()).err().map(|e| RuleError {
                rule: name.to_string(),
                message: e.to_string(),
            })
        })
        .collect();
    }
    info
}

/// The document service. Cheap to clone.
#[derive(Clone)]
pub struct Documents {
    inner: Arc<Inner>,
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
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> std::result::Result<(), String> {
        let rules = self.docs.rules_for(collection);
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
    pub fn new(store: Store, limits: LimitsConfig, default_rules: &Rules) -> Result<Documents> {
        let compiled = CompiledRules::compile(default_rules)
            .map_err(|(name, e)| Error::bad_request(format!("default {name} rule: {e}")))?;
        Ok(Documents {
            inner: Arc::new(Inner {
                store,
                limits,
                default_rules: Arc::new(compiled),
                rules: RwLock::new(HashMap::new()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The compiled rules of a collection: its own, or the defaults.
    fn rules_for(&self, collection: &str) -> Arc<CompiledRules> {
        // The cache entry is valid only for the exact configuration snapshot it was compiled
        // from, so a rule change takes effect on the next request, with no invalidation that a
        // concurrent request could undo by caching the old rules after it.
        let source = self.inner.store.collection(collection);
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

    fn guard(&self, who: &Principal) -> Option<Arc<dyn WriteGuard>> {
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
    fn may_read(
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

    /// Checks a body that must be a JSON object within the nesting limit.
    fn check_data(&self, data: Value, field: &str) -> Result<Map<String, Value>> {
        let depth = json_depth(&data);
        let limit = self.inner.limits.max_json_depth;
        if depth > limit {
            return Err(Error::validation(
                format!("{field} is nested {depth} levels deep, over the limit of {limit}"),
                field,
            ));
        }
        match data {
            Value::Object(map) => Ok(map),
            _ => Err(Error::validation(
                format!("{field} must be a JSON object"),
                field,
            )),
        }
    }

    async fn write(
        &self,
        who: &Principal,
        ops: Vec<WriteOp>,
    ) -> std::result::Result<Vec<Written>, BatchFailure> {
        self.inner
            .store
            .write(WriteRequest {
                ops,
                actor: who.actor(),
                depth: who.depth(),
                guard: self.guard(who),
            })
            .await
    }

    async fn write_one(&self, who: &Principal, op: WriteOp) -> Result<Written> {
        match self.write(who, vec![op]).await {
            Ok(mut results) => results
                .pop()
                .ok_or_else(|| Error::internal("a write returned no result")),
            Err(failure) => Err(failure.error.into()),
        }
    }

    /// Creates a document with a generated id.
    pub async fn create(&self, who: &Principal, collection: &str, data: Value) -> Result<Document> {
        check_collection(collection)?;
        let data = self.check_data(data, "data")?;
        let op = WriteOp::Create {
            collection: collection.into(),
            id: None,
            data,
        };
        self.write_one(who, op)
            .await?
            .document
            .ok_or_else(|| Error::internal("create returned no document"))
    }

    /// Creates or replaces a document. Returns it and whether it was created.
    pub async fn set(
        &self,
        who: &Principal,
        collection: &str,
        id: &str,
        data: Value,
        if_version: Option<u64>,
    ) -> Result<(Document, bool)> {
        check_collection(collection)?;
        check_id(id)?;
        let data = self.check_data(data, "data")?;
        let op = WriteOp::Set {
            collection: collection.into(),
            id: id.into(),
            data,
            if_version,
        };
        let written = self.write_one(who, op).await?;
        let doc = written
            .document
            .ok_or_else(|| Error::internal("set returned no document"))?;
        Ok((doc, written.created))
    }

    /// Applies a JSON merge patch to an existing document.
    pub async fn update(
        &self,
        who: &Principal,
        collection: &str,
        id: &str,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Document> {
        check_collection(collection)?;
        check_id(id)?;
        let patch = self.check_data(patch, "patch")?;
        let op = WriteOp::Update {
            collection: collection.into(),
            id: id.into(),
            patch,
            if_version,
        };
        self.write_one(who, op)
            .await?
            .document
            .ok_or_else(|| Error::internal("update returned no document"))
    }

    pub async fn delete(
        &self,
        who: &Principal,
        collection: &str,
        id: &str,
        if_version: Option<u64>,
    ) -> Result<()> {
        check_collection(collection)?;
        check_id(id)?;
        let op = WriteOp::Delete {
            collection: collection.into(),
            id: id.into(),
            if_version,
        };
        self.write_one(who, op).await.map(|_| ())
    }

    fn denied(collection: &str) -> Error {
        Error::forbidden(format!("the read rule of {collection} denies this"))
    }

    /// Reads a document.
    pub async fn get(&self, who: &Principal, collection: &str, id: &str) -> Result<Document> {
        check_collection(collection)?;
        check_id(id)?;
        let doc = self.inner.store.get(collection, id).await?;
        let rules = self.rules_for(collection);
        if !Self::may_read(&rules, who, &who.auth_value(), doc.as_ref()) {
            return Err(Self::denied(collection));
        }
        doc.ok_or_else(|| Error::not_found(format!("document {collection}/{id} does not exist")))
    }

    /// Reads a document as stored bytes, parsing it only when a rule needs to look inside.
    pub async fn get_raw(
        &self,
        who: &Principal,
        collection: &str,
        id: &str,
    ) -> Result<RawDocument> {
        check_collection(collection)?;
        check_id(id)?;
        let raw = self.inner.store.get_raw(collection, id).await?;
        if !who.is_admin() {
            let rules = self.rules_for(collection);
            let needs_doc = matches!(&rules.read, Rule::Expr { uses_doc: true, .. });
            let doc = match &raw {
                Some(r) if needs_doc => Some(r.decode()?),
                _ => None,
            };
            if !Self::may_read(&rules, who, &who.auth_value(), doc.as_ref()) {
                return Err(Self::denied(collection));
            }
        }
        raw.ok_or_else(|| Error::not_found(format!("document {collection}/{id} does not exist")))
    }

    /// Validates and parses a list request.
    pub fn prepare_list(&self, collection: &str, params: &ListParams<'_>) -> Result<PreparedList> {
        check_collection(collection)?;
        let max = self.inner.limits.max_filter_length;
        for (name, value) in [("filter", params.filter), ("sort", params.sort)] {
            if value.is_some_and(|v| v.len() > max) {
                return Err(Error::bad_request(format!(
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
            return Err(Error::bad_request(format!(
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
        })
    }

    /// Whether a prepared list reads a bounded part of the collection: an ordered scan (it
    /// stops after `limit` matches) with no filter, or within an index or id range. Such a list
    /// is cheap enough to run on an async worker; others belong on a blocking thread.
    pub fn is_bounded(&self, who: &Principal, list: &PreparedList) -> bool {
        let owned = self.owned_filter(who, list);
        let filter = owned.as_ref().or(list.filter.as_ref());
        let plan = self.inner.store.plan(&list.collection, filter, &list.sort);
        let narrowed = !matches!(
            plan.access,
            crate::query::plan::Access::Primary { range: None }
        );
        plan.ordered && (filter.is_none() || narrowed)
    }

    /// The list's filter with `owner == <caller>` added, when the collection's read rule
    /// requires `doc.owner == auth.id` of this caller: only their own documents can pass it, so
    /// the query may say so, and the planner then reads them from the owner index instead of
    /// scanning the collection. `None` when the rule does not (or the caller is an admin).
    fn owned_filter(&self, who: &Principal, list: &PreparedList) -> Option<Expr> {
        let Principal::User {
            id, admin: false, ..
        } = who
        else {
            return None;
        };
        let rules = self.rules_for(&list.collection);
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
        Some(match &list.filter {
            Some(filter) => Expr::And(vec![filter.clone(), mine]),
            None => mine,
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
        // A read rule that does not look at the document, or says no to this caller whatever
        // the document holds, is decided once for the whole list.
        let rules = self.rules_for(collection);
        let per_doc = !who.is_admin() && matches!(&rules.read, Rule::Expr { uses_doc: true, .. });
        let auth = who.auth_value();
        let read = ReadCheck {
            rules: rules.clone(),
        };
        if read.denies_all(who, &auth) {
            return Err(Self::denied(collection));
        }
        let visible = |doc: &Document| !per_doc || Self::may_read(&rules, who, &auth, Some(doc));
        let owned = self.owned_filter(who, list);
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
                    visible: &visible,
                },
            )
            .await?;
        let next_cursor = match (result.has_more, result.items.last()) {
            (true, Some(last)) => Some(encode_cursor(&Cursor {
                s: list.signature.clone(),
                k: query::plan::sort_values(last, &list.effective),
            })),
            _ => None,
        };
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
        let (result, next_cursor) = self.run_list(who, &list).await?;
        Ok(Page {
            items: result.items,
            next_cursor,
        })
    }

    /// Like [`Documents::list`], as the stored bytes of each document, for serving.
    pub async fn list_raw(&self, who: &Principal, list: &PreparedList) -> Result<RawPage> {
        let (result, next_cursor) = self.run_list(who, list).await?;
        Ok(RawPage {
            items: result.raw,
            next_cursor,
        })
    }

    /// Applies a batch of ops, all or nothing.
    pub async fn batch(&self, who: &Principal, ops: Vec<BatchOp>) -> Result<Vec<Option<Document>>> {
        let max = self.inner.limits.max_batch_ops;
        if ops.is_empty() || ops.len() > max {
            return Err(Error::validation(
                format!("a batch holds 1 to {max} ops"),
                "ops",
            ));
        }
        let mut write_ops = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            write_ops.push(self.batch_op(op).map_err(|e| e.with_detail("op", i))?);
        }
        let written = self.write(who, write_ops).await.map_err(Error::from)?;
        Ok(written.into_iter().map(|w| w.document).collect())
    }

    fn batch_op(&self, op: BatchOp) -> Result<WriteOp> {
        check_collection(&op.collection)?;
        if let Some(id) = &op.id {
            check_id(id)?;
        }
        let need_id = || {
            op.id
                .clone()
                .ok_or_else(|| Error::validation("this op needs an id", "id"))
        };
        let need_data = |field: &str| match op.data.clone() {
            Some(d) => self.check_data(d, field),
            None => Err(Error::validation("this op needs data", "data")),
        };
        Ok(match op.op {
            BatchOpKind::Create => WriteOp::Create {
                collection: op.collection.clone(),
                id: op.id.clone(),
                data: need_data("data")?,
            },
            BatchOpKind::Set => WriteOp::Set {
                collection: op.collection.clone(),
                id: need_id()?,
                data: need_data("data")?,
                if_version: op.if_version,
            },
            BatchOpKind::Update => WriteOp::Update {
                collection: op.collection.clone(),
                id: need_id()?,
                patch: need_data("data")?,
                if_version: op.if_version,
            },
            BatchOpKind::Delete => {
                if op.data.is_some() {
                    return Err(Error::validation("a delete takes no data", "data"));
                }
                WriteOp::Delete {
                    collection: op.collection.clone(),
                    id: need_id()?,
                    if_version: op.if_version,
                }
            }
        })
    }

    /// Sets a collection's rules and indexes (admins only).
    pub async fn configure(
        &self,
        who: &Principal,
        collection: &str,
        config: CollectionConfig,
    ) -> Result<CollectionInfo> {
        who.require_admin("configure collections")?;
        check_collection(collection)?;
        if let Some(rules) = &config.rules {
            CompiledRules::compile(rules).map_err(|(name, e)| {
                Error::bad_request(format!("rule {name}: {e}"))
                    .with_details(serde_json::json!({ "rule": name, "column": e.column }))
            })?;
        }
        if config.indexes.len() > 16 {
            return Err(Error::validation(
                "at most 16 indexes per collection",
                "indexes",
            ));
        }
        for fields in &config.indexes {
            if fields.is_empty() || fields.len() > 8 {
                return Err(Error::validation("an index has 1 to 8 fields", "indexes"));
            }
            for field in fields {
                query::parse_path(field).map_err(|e| {
                    Error::validation(format!("index field {field:?}: {}", e.message), "indexes")
                })?;
            }
        }
        self.inner
            .store
            .configure(collection, config.clone())
            .await?;
        Ok(collection_info(collection, config, &self.inner.store))
    }

    /// A collection's stored configuration (admins only).
    pub fn collection_config(&self, who: &Principal, collection: &str) -> Result<CollectionInfo> {
        who.require_admin("read collection configs")?;
        check_collection(collection)?;
        let state = self.inner.store.collection(collection).ok_or_else(|| {
            Error::not_found(format!("collection {collection} has no configuration"))
        })?;
        Ok(collection_info(
            collection,
            state.config.clone(),
            &self.inner.store,
        ))
    }

    /// Every configured collection (admins only).
    pub fn collections(&self, who: &Principal) -> Result<Vec<CollectionInfo>> {
        who.require_admin("read collection configs")?;
        Ok(self
            .inner
            .store
            .collections()
            .into_iter()
            .map(|(name, config)| collection_info(&name, config, &self.inner.store))
            .collect())
    }

    /// The collections that hold documents but have no rules of their own, so the configured
    /// defaults apply to them.
    pub async fn collections_on_default_rules(&self) -> Result<Vec<String>> {
        let store = &self.inner.store;
        Ok(store
            .document_collections()
            .await?
            .into_iter()
            .filter(|c| {
                store
                    .collection(c)
                    .is_none_or(|state| state.config.rules.is_none())
            })
            .collect())
    }

    /// The read rule of a collection as configured now, to check many documents against (the
    /// realtime fan-out checks every event for every subscriber).
    pub fn read_check(&self, collection: &str) -> ReadCheck {
        ReadCheck {
            rules: self.rules_for(collection),
        }
    }

    /// Parses a filter over the envelope (the `filter` of lists and subscriptions).
    pub fn parse_filter(&self, src: &str) -> Result<Expr> {
        let max = self.inner.limits.max_filter_length;
        if src.len() > max {
            return Err(Error::bad_request(format!(
                "filter is longer than {max} bytes"
            )));
        }
        Ok(query::parse_expr(src, Dialect::Document)?)
    }

    /// Every change committed from now on (see [`Store::subscribe`]).
    pub fn subscribe(&self) -> crate::store::ChangeReceiver {
        self.inner.store.subscribe()
    }
}

/// A collection's read rule, fixed at one moment.
pub struct ReadCheck {
    rules: Arc<CompiledRules>,
}

impl ReadCheck {
    /// Whether `who` (with `auth` its rule binding) may read `doc`.
    pub fn allows(&self, who: &Principal, auth: &Value, doc: &Document) -> bool {
        Documents::may_read(&self.rules, who, auth, Some(doc))
    }

    /// Whether the rule denies `who` every document, whatever it holds: it says no without
    /// looking at the document (`auth != null && doc.owner == auth.id` for an anonymous
    /// caller).
    pub fn denies_all(&self, who: &Principal, auth: &Value) -> bool {
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

fn encode_cursor(cursor: &Cursor) -> String {
    let json = serde_json::to_vec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(src: &str, signature: &str, keys: usize) -> Result<Vec<Value>> {
    let bad = || Error::bad_request("invalid cursor");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(src)
        .map_err(|_| bad())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if cursor.s != signature || cursor.k.len() != keys {
        return Err(Error::bad_request(
            "the cursor belongs to a query with another sort",
        ));
    }
    Ok(cursor.k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[tokio::test]
    async fn the_rules_cache_holds_configured_collections_only() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            path: dir.path().join("db"),
            cache_bytes: 1 << 20,
            max_document_bytes: 1 << 20,
            retention_count: 100,
            retention_age: std::time::Duration::from_secs(3600),
            change_buffer_bytes: 1 << 20,
            tombstone_age: std::time::Duration::from_secs(3600),
            max_scan_documents: 1000,
        };
        let store = Store::open(options, Arc::new(crate::metrics::Metrics::new().unwrap()))
            .await
            .unwrap();
        let docs = Documents::new(store, LimitsConfig::default(), &Rules::default()).unwrap();
        let cached = || docs.inner.rules.read().unwrap().len();
        // Names a client makes up cost nothing to remember.
        for i in 0..1000 {
            docs.rules_for(&format!("made-up-{i}"));
        }
        assert_eq!(cached(), 0);
        let config = CollectionConfig {
            rules: Some(Rules::default()),
            indexes: Vec::new(),
        };
        docs.configure(&Principal::Service, "real", config)
            .await
            .unwrap();
        docs.rules_for("real");
        assert_eq!(cached(), 1);
    }
}
