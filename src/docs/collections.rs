//! Collection configuration: rules and indexes, as admins set and read them.

use super::error::invalid;
use super::{check_collection, CompiledRules, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::{CollectionConfig, CollectionInfo, RuleError};
use crate::query::{self, Rule};
use crate::store::Store;

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

impl Documents {
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
        let state = self
            .inner
            .store
            .collection(collection)
            .ok_or_else(|| DocsError::NotConfigured(collection.into()))?;
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
