//! `expand`: documents returned with the documents their relation fields reference, each
//! checked against its own collection's read rule (an unreadable or missing one is `null`).
//!
//! `expand=author,comments.author` names chains of relation fields. A chain is resolved one
//! collection at a time: at each step the longest declared relation field that starts the rest
//! of the chain is taken (so a relation declared as `meta.editor` is reached as
//! `meta.editor`), and the remainder continues in the referenced collection. Documents are
//! fetched level by level, each level's ids at once.

use super::{DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::Document;
use crate::query::Scope;
use crate::store::RelationDef;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The most chains one `expand` may name.
const MAX_CHAINS: usize = 8;
/// The most relations a chain may follow.
const MAX_DEPTH: usize = 3;
/// The most documents one request may embed.
pub(super) const MAX_EXPANDED: usize = 1000;

/// A document with the documents its relation fields reference, as `expand` asked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExpandedDocument {
    #[serde(flatten)]
    pub document: Document,
    /// With `expand`: each expanded relation field, holding the referenced document (itself
    /// expanded further when asked) or `null` when it is gone or the caller may not read it;
    /// an array for a field that holds several ids.
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub expand: Map<String, Value>,
}

/// Relations to follow from one collection, each with what to follow from its target.
#[derive(Default)]
struct Tree {
    children: BTreeMap<String, (RelationDef, Tree)>,
}

/// Splits an `expand` parameter into its chains, each a list of field names.
fn chains(src: &str) -> Result<Vec<Vec<String>>> {
    let chains: Vec<Vec<String>> = src
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.split('.').map(str::to_string).collect())
        .collect();
    if chains.len() > MAX_CHAINS {
        return Err(DocsError::BadRequest(format!(
            "expand names at most {MAX_CHAINS} relations"
        )));
    }
    if chains.iter().flatten().any(String::is_empty) {
        return Err(DocsError::BadRequest(
            "expand is a comma list of relation fields, nested with dots: author,comments.author"
                .into(),
        ));
    }
    Ok(chains)
}

impl Documents {
    /// The relations of `collection` that `chain` follows, added to `tree`.
    fn resolve(
        &self,
        tree: &mut Tree,
        collection: &str,
        chain: &[String],
        depth: usize,
    ) -> Result<()> {
        if chain.is_empty() {
            return Ok(());
        }
        if depth == MAX_DEPTH {
            return Err(DocsError::BadRequest(format!(
                "expand follows at most {MAX_DEPTH} relations in a row"
            )));
        }
        let relations = self
            .inner
            .store
            .collection(collection)
            .map(|s| s.relations.clone())
            .unwrap_or_default();
        let found = (1..=chain.len()).rev().find_map(|n| {
            let field = chain[..n].join(".");
            relations
                .iter()
                .find(|r| r.field == field)
                .map(|r| (n, r.clone()))
        });
        let Some((n, relation)) = found else {
            return Err(DocsError::BadRequest(format!(
                "expand: {} is not a relation of collection {collection}",
                chain.join(".")
            )));
        };
        let target = relation.target.clone();
        let (_, subtree) = tree
            .children
            .entry(relation.field.clone())
            .or_insert_with(|| (relation, Tree::default()));
        self.resolve(subtree, &target, &chain[n..], depth + 1)
    }

    /// `docs` of `collection` with what `expand` names embedded, for `who`.
    pub async fn expand(
        &self,
        who: &Principal,
        collection: &str,
        docs: Vec<Document>,
        expand: &str,
    ) -> Result<Vec<ExpandedDocument>> {
        let mut tree = Tree::default();
        for chain in chains(expand)? {
            self.resolve(&mut tree, collection, &chain, 0)?;
        }
        let mut budget = MAX_EXPANDED;
        self.expand_level(who, docs, &tree, &mut budget).await
    }

    /// Expands one level of `tree` for `docs`, then the levels below.
    async fn expand_level(
        &self,
        who: &Principal,
        docs: Vec<Document>,
        tree: &Tree,
        budget: &mut usize,
    ) -> Result<Vec<ExpandedDocument>> {
        let mut out: Vec<ExpandedDocument> = docs
            .into_iter()
            .map(|document| ExpandedDocument {
                document,
                expand: Map::new(),
            })
            .collect();
        let auth = who.auth_value();
        for (field, (relation, subtree)) in &tree.children {
            // The ids of every document at once; a malformed field expands to nothing.
            let per_doc: Vec<(bool, Vec<String>)> = out
                .iter()
                .map(|d| {
                    let many = matches!(
                        d.document.lookup(&relation.path).as_deref(),
                        Some(Value::Array(_))
                    );
                    let ids =
                        crate::store::references(&d.document, &relation.path).unwrap_or_default();
                    (many, ids)
                })
                .collect();
            let mut ids: Vec<String> = per_doc.iter().flat_map(|(_, ids)| ids.clone()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() > *budget {
                return Err(DocsError::BadRequest(format!(
                    "expand would embed more than {MAX_EXPANDED} documents; ask for fewer documents or relations"
                )));
            }
            *budget -= ids.len();
            let rules = self.rules_for(&relation.target);
            let fetched = self.inner.store.get_many(&relation.target, &ids).await?;
            let readable: Vec<Document> = fetched
                .into_iter()
                .flatten()
                .filter(|doc| Self::may_read(&rules, who, &auth, Some(doc)))
                .collect();
            let expanded = Box::pin(self.expand_level(who, readable, subtree, budget)).await?;
            let by_id: HashMap<&str, Value> = expanded
                .iter()
                .map(|e| {
                    (
                        e.document.id.as_str(),
                        serde_json::to_value(e).unwrap_or(Value::Null),
                    )
                })
                .collect();
            let embed = |id: &String| by_id.get(id.as_str()).cloned().unwrap_or(Value::Null);
            for (doc, (many, ids)) in out.iter_mut().zip(per_doc) {
                let value = if many {
                    Value::Array(ids.iter().map(embed).collect())
                } else {
                    match ids.first() {
                        Some(id) => embed(id),
                        None => Value::Null,
                    }
                };
                doc.expand.insert(field.clone(), value);
            }
        }
        Ok(out)
    }
}
