//! The document service: the HTTP API's document routes as plain Rust, used by the
//! HTTP layer and by programs that embed Emberbase in-process. It validates names and bodies,
//! enforces access rules (in the writer, against the exact stored state, for writes), and turns
//! queries into store calls with opaque cursors.

mod aggregate;
mod batch;
mod collections;
mod error;
mod expand;
mod hooks;
mod import;
mod list;
mod names;
mod rules;
mod trial;

pub use aggregate::{AggregateParams, Aggregates, Group};
pub use batch::{BatchOp, BatchOpKind};
pub use error::DocsError;
pub use expand::ExpandedDocument;
pub(crate) use hooks::{HookCall, HookKind, Verdict, WriteHooks};
pub(crate) use import::BAD_OWNER;
pub use import::MAX_IMPORT_DOCUMENTS;
pub use list::{ListParams, Page};
pub(crate) use names::{check_collection, check_id, json_depth, valid_document_id};
pub(crate) use rules::{CompiledRules, ReadCheck};
pub use trial::{ExpressionCheck, ExpressionKind, RuleOperation, RuleTrial, RuleTrialInput};

use crate::auth::Principal;
use crate::config::LimitsConfig;
use crate::error::StorageError;
use crate::model::{Document, Rules};
use crate::query::{self, Dialect, Expr, Rule};
use crate::store::{BatchFailure, RawDocument, Store, WriteOp, WriteRequest, Written};
use rules::CachedRules;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The result of a document operation.
pub(crate) type Result<T, E = DocsError> = std::result::Result<T, E>;

struct Inner {
    store: Store,
    limits: LimitsConfig,
    default_rules: Arc<CompiledRules>,
    /// Compiled rules per collection, with the configuration snapshot they were compiled from.
    rules: RwLock<HashMap<String, CachedRules>>,
    /// Counts of matches for callers who see every document, by (collection, filter), with
    /// the change sequence they were counted at (see [`Documents::count`]).
    counts: std::sync::Mutex<HashMap<(String, String), (u64, u64)>>,
    /// The before-write hooks every write runs (see `hooks`), once functions are loaded.
    hooks: RwLock<Option<Arc<dyn WriteHooks>>>,
}

/// The document service ([`Server::documents`](crate::Server::documents)): create, read,
/// replace, patch, delete, list and batch, with the collection's rules applied to the caller
/// exactly as over HTTP. Cheap to clone.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = emberbase::Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// use emberbase::{DocsError, ListParams, Principal};
/// use serde_json::json;
///
/// let docs = server.documents();
/// // The service key acts as an admin; a user is held to the rules (by default, private).
/// let alice = Principal::user("alice", "alice@example.com", false);
/// let bob = Principal::user("bob", "bob@example.com", false);
///
/// let note = docs.create(&alice, "notes", json!({"text": "mine", "n": 1})).await?;
/// assert_eq!(note.owner.as_deref(), Some("alice"));
/// let patched = docs.update(&alice, "notes", &note.id, json!({"n": 2}), Some(1)).await?;
/// assert_eq!((patched.version, &patched.data["n"]), (2, &json!(2)));
///
/// // Bob may not read it, and a stale version is refused.
/// let denied = docs.get(&bob, "notes", &note.id).await;
/// assert!(matches!(denied, Err(DocsError::Forbidden(_))));
/// let stale = docs.update(&alice, "notes", &note.id, json!({"n": 3}), Some(1)).await;
/// assert!(matches!(stale, Err(DocsError::VersionMismatch { actual: 2, .. })));
///
/// let params = ListParams { filter: Some("data.n >= 2"), sort: Some("-created_at"), ..Default::default() };
/// assert_eq!(docs.list(&alice, "notes", &params).await?.items.len(), 1);
/// assert!(docs.list(&bob, "notes", &params).await?.items.is_empty());
/// docs.delete(&alice, "notes", &note.id, None).await?;
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Documents {
    inner: Arc<Inner>,
}

impl Documents {
    pub(crate) fn new(
        store: Store,
        limits: LimitsConfig,
        default_rules: &Rules,
    ) -> Result<Documents> {
        let compiled =
            CompiledRules::compile(default_rules).map_err(|(name, e)| DocsError::InvalidRule {
                rule: format!("default {name}"),
                message: e.message,
                column: e.column,
            })?;
        Ok(Documents {
            inner: Arc::new(Inner {
                store,
                limits,
                default_rules: Arc::new(compiled),
                rules: RwLock::new(HashMap::new()),
                counts: std::sync::Mutex::new(HashMap::new()),
                hooks: RwLock::new(None),
            }),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The storage backend's name, and whether it answers a read within `within`.
    pub(crate) async fn check_storage(
        &self,
        within: std::time::Duration,
    ) -> (&'static str, std::result::Result<(), String>) {
        let store = &self.inner.store;
        (store.backend(), store.check(within).await)
    }

    /// Checks a body that must be a JSON object within the nesting limit.
    fn check_data(&self, data: Value, field: &str) -> Result<Map<String, Value>> {
        let depth = json_depth(&data);
        let limit = self.inner.limits.max_json_depth;
        if depth > limit {
            return Err(DocsError::Invalid {
                message: format!(
                    "{field} is nested {depth} levels deep, over the limit of {limit}"
                ),
                field: field.into(),
            });
        }
        match data {
            Value::Object(map) => Ok(map),
            _ => Err(error::invalid(
                format!("{field} must be a JSON object"),
                field,
            )),
        }
    }

    /// Commits `ops` (their hooks already run) as one store write.
    async fn commit(
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
                trace: crate::trace::current(),
                guard: self.guard(who),
            })
            .await
    }

    async fn write_one(&self, who: &Principal, op: WriteOp) -> Result<Written> {
        match self.write(who, vec![op]).await {
            Ok(mut results) => results.pop().ok_or_else(|| {
                DocsError::Storage(StorageError::Corrupt("a write returned no result".into()))
            }),
            Err((_, error)) => Err(error),
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
        self.write_one(who, op).await?.document.ok_or_else(|| {
            DocsError::Storage(StorageError::Corrupt("create returned no document".into()))
        })
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
        let doc = written.document.ok_or_else(|| {
            DocsError::Storage(StorageError::Corrupt("set returned no document".into()))
        })?;
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
        self.update_with(who, collection, id, Some(patch), None, if_version)
            .await
    }

    /// Applies a JSON merge patch (if any), then atomic field transforms (if any) to an
    /// existing document. `transforms` is `{"path": {"$op": argument}}` with the operations
    /// `$inc`, `$serverTime`, `$arrayUnion`, `$arrayRemove` and `$delete`; each applies in the
    /// commit to the stored value, so concurrent increments never lose one another. The update
    /// rule and the schema see the result.
    pub async fn update_with(
        &self,
        who: &Principal,
        collection: &str,
        id: &str,
        patch: Option<Value>,
        transforms: Option<&Value>,
        if_version: Option<u64>,
    ) -> Result<Document> {
        check_collection(collection)?;
        check_id(id)?;
        let op = self.update_op(collection, id, patch, transforms, if_version)?;
        self.write_one(who, op).await?.document.ok_or_else(|| {
            DocsError::Storage(StorageError::Corrupt("update returned no document".into()))
        })
    }

    /// The write op of an update, its patch and transforms checked.
    fn update_op(
        &self,
        collection: &str,
        id: &str,
        patch: Option<Value>,
        transforms: Option<&Value>,
        if_version: Option<u64>,
    ) -> Result<WriteOp> {
        if patch.is_none() && transforms.is_none() {
            return Err(error::invalid(
                "an update needs data, transforms or both",
                "data",
            ));
        }
        let patch = match patch {
            Some(patch) => self.check_data(patch, "patch")?,
            None => Map::new(),
        };
        let transforms = match transforms {
            Some(t) => crate::transforms::parse(t)
                .map_err(|message| error::invalid(message, "transforms"))?,
            None => Vec::new(),
        };
        Ok(WriteOp::Update {
            collection: collection.into(),
            id: id.into(),
            patch,
            transforms,
            if_version,
        })
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

    fn denied(collection: &str) -> DocsError {
        DocsError::Forbidden(format!("the read rule of {collection} denies this"))
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
        doc.ok_or_else(|| not_found(collection, id))
    }

    /// Reads a document as stored bytes, parsing it only when a rule needs to look inside.
    pub(crate) async fn get_raw(
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
        raw.ok_or_else(|| not_found(collection, id))
    }

    /// Parses a filter over the envelope (the `filter` of lists and subscriptions).
    pub(crate) fn parse_filter(&self, src: &str) -> Result<Expr> {
        let max = self.inner.limits.max_filter_length;
        if src.len() > max {
            return Err(DocsError::BadRequest(format!(
                "filter is longer than {max} bytes"
            )));
        }
        Ok(query::parse_expr(src, Dialect::Document)?)
    }

    /// Every change committed from now on (see [`Store::subscribe`]).
    pub(crate) fn subscribe(&self) -> crate::store::ChangeReceiver {
        self.inner.store.subscribe()
    }
}

fn not_found(collection: &str, id: &str) -> DocsError {
    DocsError::NotFound {
        collection: collection.into(),
        id: id.into(),
    }
}

#[cfg(test)]
mod planner_tests;

/// A document service over a fresh store in `dir`, with the default limits and rules.
#[cfg(test)]
pub(crate) async fn open_for_test(dir: &std::path::Path) -> Documents {
    let options = crate::store::StoreOptions {
        path: dir.join("db"),
        cache_bytes: 1 << 20,
        max_document_bytes: 1 << 20,
        retention_count: 100,
        retention_age: std::time::Duration::from_secs(3600),
        change_buffer_bytes: 1 << 20,
        tombstone_age: std::time::Duration::from_secs(3600),
        max_scan_documents: 1000,
        config_poll: std::time::Duration::from_secs(1),
    };
    let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
    let store = Store::open(options, metrics).await.unwrap();
    Documents::new(store, LimitsConfig::default(), &Rules::default()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CollectionConfig;

    #[tokio::test]
    async fn the_rules_cache_holds_configured_collections_only() {
        let dir = tempfile::tempdir().unwrap();
        let docs = open_for_test(dir.path()).await;
        let cached = || docs.inner.rules.read().unwrap().len();
        // Names a client makes up cost nothing to remember.
        for i in 0..1000 {
            docs.rules_for(&format!("made-up-{i}"));
        }
        assert_eq!(cached(), 0);
        let config = CollectionConfig {
            rules: Some(Rules::default()),
            indexes: Vec::new(),
            schema: None,
            relations: Default::default(),
        };
        docs.configure(&Principal::Service, "real", config)
            .await
            .unwrap();
        docs.rules_for("real");
        assert_eq!(cached(), 1);
    }
}
