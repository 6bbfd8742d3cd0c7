//! Collection configuration: rules and indexes, as admins set and read them.

use super::error::invalid;
use super::{check_collection, CompiledRules, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::{CollectionConfig, CollectionInfo, Nonconforming, RuleError, SchemaReport};
use crate::query::{self, Rule};
use crate::store::{Schema, Store};

/// The nonconforming documents a schema change's report lists.
const REPORT_EXAMPLES: usize = 20;

/// The most documents one page of `nonconforming` checks.
const NONCONFORMING_PAGE_BUDGET: usize = 10_000;
use std::collections::{BTreeMap, BTreeSet};

/// A collection as the API shows it: its configuration (`None`: it has none, so the server's
/// defaults apply), the stored rules that do not compile (each such collection is admin-only
/// until they are fixed), its document count and whether it is being deleted.
fn collection_info(
    name: &str,
    config: Option<CollectionConfig>,
    documents: u64,
    deleting: bool,
    store: &Store,
) -> CollectionInfo {
    let schema_error = store.collection(name).and_then(|s| s.schema_error.clone());
    let config = config.unwrap_or_default();
    let mut info = CollectionInfo {
        name: name.to_string(),
        rules: config.rules,
        indexes: config.indexes,
        rule_errors: Vec::new(),
        index_states: store.index_states(name),
        documents,
        deleting,
        schema: config.schema,
        schema_error,
        schema_report: None,
        relations: config.relations,
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

impl Documents {
    /// Sets a collection's rules, indexes and schema (admins only). With a schema, the
    /// answer reports how the documents already stored measure up against it (see
    /// [`Documents::configure_strict`] to refuse a schema some of them break).
    pub async fn configure(
        &self,
        who: &Principal,
        collection: &str,
        config: CollectionConfig,
    ) -> Result<CollectionInfo> {
        self.configure_strict(who, collection, config, false).await
    }

    /// [`Documents::configure`]; with `require_conforming`, a schema that any stored document
    /// (of those the check reaches, `limits.max_scan_documents`) breaks is refused, and nothing
    /// changes.
    pub async fn configure_strict(
        &self,
        who: &Principal,
        collection: &str,
        config: CollectionConfig,
        require_conforming: bool,
    ) -> Result<CollectionInfo> {
        who.require_admin("configure collections")?;
        check_collection(collection)?;
        let schema = match &config.schema {
            Some(schema) => Some(Schema::compile(schema).map_err(|e| invalid(e, "schema"))?),
            None => None,
        };
        if let Some(rules) = &config.rules {
            CompiledRules::compile(rules).map_err(|(name, e)| DocsError::InvalidRule {
                rule: name.into(),
                message: e.message,
                column: e.column,
            })?;
        }
        if config.indexes.len() > 16 {
            return Err(invalid("at most 16 indexes per collection", "indexes"));
        }
        for fields in &config.indexes {
            if fields.is_empty() || fields.len() > 8 {
                return Err(invalid("an index has 1 to 8 fields", "indexes"));
            }
            for field in fields {
                query::parse_path(field).map_err(|e| {
                    invalid(format!("index field {field:?}: {}", e.message), "indexes")
                })?;
            }
        }
        if config.relations.len() > 16 {
            return Err(invalid("at most 16 relations per collection", "relations"));
        }
        for (field, relation) in &config.relations {
            crate::store::relation_path(field)
                .map_err(|e| invalid(format!("relation {field:?}: {e}"), "relations"))?;
            check_collection(&relation.collection).map_err(|_| {
                invalid(
                    format!(
                        "relation {field:?}: {:?} is not a collection name",
                        relation.collection
                    ),
                    "relations",
                )
            })?;
        }
        let store = &self.inner.store;
        let budget = usize::try_from(self.inner.limits.max_scan_documents).unwrap_or(usize::MAX);
        let report = match &schema {
            Some(schema) => {
                let page = store
                    .nonconforming(collection, schema, None, REPORT_EXAMPLES, budget)
                    .await?;
                let complete = page.next.is_none();
                let mut report = SchemaReport {
                    checked: page.checked,
                    nonconforming: page.items.len() as u64,
                    complete,
                    examples: page.items,
                };
                // Past the examples, count the rest without keeping them.
                let mut after = report.examples.last().map(|n| n.id.clone());
                while report.examples.len() == REPORT_EXAMPLES && after.is_some() {
                    let left = budget.saturating_sub(report.checked as usize);
                    if left == 0 {
                        report.complete = false;
                        break;
                    }
                    let more = store
                        .nonconforming(collection, schema, after.as_deref(), usize::MAX, left)
                        .await?;
                    report.checked += more.checked;
                    report.nonconforming += more.items.len() as u64;
                    report.complete = more.next.is_none();
                    after = more.next;
                }
                Some(report)
            }
            None => None,
        };
        if let Some((report, first)) = report
            .as_ref()
            .and_then(|r| r.examples.first().map(|first| (r, first)))
        {
            if require_conforming {
                return Err(invalid(
                    format!(
                        "{} of the {} documents checked do not conform to the schema (the first, {}: {}); nothing was changed",
                        report.nonconforming,
                        report.checked,
                        first.id,
                        first.violations.first().map(|v| format!("{} {}", v.pointer, v.message)).unwrap_or_default()
                    ),
                    "schema",
                ));
            }
        }
        store.configure(collection, config.clone()).await?;
        let documents = store.document_count(collection).await?;
        let deleting = store.deleting_collections().await?;
        let mut info = collection_info(
            collection,
            Some(config),
            documents,
            deleting.iter().any(|c| c == collection),
            store,
        );
        info.schema_report = report;
        Ok(info)
    }

    /// The stored documents of `collection` that do not conform to its schema, in id order,
    /// after the id `cursor` (admins only). A page stops at `limit` such documents or after
    /// checking 10,000; `next` continues it.
    pub async fn nonconforming(
        &self,
        who: &Principal,
        collection: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Nonconforming>, Option<String>)> {
        who.require_admin("read collection configs")?;
        check_collection(collection)?;
        if !(1..=1000).contains(&limit) {
            return Err(DocsError::BadRequest("limit must be 1 to 1000".into()));
        }
        let state = self.inner.store.collection(collection);
        let Some(schema) = state.as_ref().and_then(|s| s.schema.clone()) else {
            return Err(invalid(
                format!("collection {collection} has no schema"),
                "schema",
            ));
        };
        let page = self
            .inner
            .store
            .nonconforming(
                collection,
                &schema,
                cursor,
                limit,
                NONCONFORMING_PAGE_BUDGET,
            )
            .await?;
        Ok((page.items, page.next))
    }

    /// A collection's configuration and document count (admins only); `404` for a collection
    /// with neither a configuration nor documents.
    pub async fn collection_config(
        &self,
        who: &Principal,
        collection: &str,
    ) -> Result<CollectionInfo> {
        who.require_admin("read collection configs")?;
        check_collection(collection)?;
        let store = &self.inner.store;
        let config = store.collection(collection).map(|s| s.config.clone());
        let documents = store.document_count(collection).await?;
        let deleting = store
            .deleting_collections()
            .await?
            .iter()
            .any(|c| c == collection);
        if config.is_none() && documents == 0 && !deleting {
            return Err(DocsError::NotConfigured(collection.into()));
        }
        Ok(collection_info(
            collection, config, documents, deleting, store,
        ))
    }

    /// Every collection that has documents, a configuration or a delete under way, by name
    /// (admins only).
    pub async fn collections(&self, who: &Principal) -> Result<Vec<CollectionInfo>> {
        who.require_admin("read collection configs")?;
        let store = &self.inner.store;
        let mut configs: BTreeMap<String, CollectionConfig> =
            store.collections().into_iter().collect();
        let counts = store.document_counts().await?;
        let deleting = store.deleting_collections().await?;
        let mut names: BTreeSet<String> = configs.keys().cloned().collect();
        names.extend(
            counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, _)| c.clone()),
        );
        names.extend(deleting.iter().cloned());
        Ok(names
            .into_iter()
            .map(|name| {
                let config = configs.remove(&name);
                let documents = counts.get(&name).copied().unwrap_or(0);
                let dropping = deleting.contains(&name);
                collection_info(&name, config, documents, dropping, store)
            })
            .collect())
    }

    /// Deletes a collection (admins only): its documents, each with a delete change that
    /// realtime and triggers see, then its rules and indexes, in the background. Documents
    /// created after the call survive it.
    pub async fn delete_collection(&self, who: &Principal, collection: &str) -> Result<()> {
        who.require_admin("delete collections")?;
        check_collection(collection)?;
        self.inner
            .store
            .delete_collection(collection, who.actor())
            .await?;
        Ok(())
    }

    /// Every collection's JSON Schema, by collection name (for the served OpenAPI document).
    pub(crate) fn schemas(&self) -> Vec<(String, serde_json::Value)> {
        self.inner
            .store
            .collections()
            .into_iter()
            .filter_map(|(name, config)| config.schema.map(|schema| (name, schema)))
            .collect()
    }

    /// The collections that hold documents but have no rules of their own, so the configured
    /// defaults apply to them.
    pub(crate) async fn collections_on_default_rules(&self) -> Result<Vec<String>> {
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
}
