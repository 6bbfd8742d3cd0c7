//! A Firestore export in the JSON format of the npm package `node-firestore-import-export`
//! (`{"__collections__": {"<collection>": {"<id>": {fields..., "__collections__": {...}}}}}`)
//! as a source for `import`:
//!
//! - a top-level collection's documents keep their collection name and ids;
//! - a subcollection becomes the collection of its path's collection names joined with `_`
//!   (`users/{uid}/orders/{id}` goes to `users_orders`), each document with `_parent`, the
//!   path of the document it was under (`users/{uid}`);
//! - typed values: a timestamp becomes an RFC 3339 time (UTC, milliseconds), a geopoint
//!   `{"latitude", "longitude"}`, a document reference its path.

use super::{Item, Source, Totals};
use emberbase::PortableDocument;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const COLLECTIONS: &str = "__collections__";

pub(crate) struct Firestore {
    path: PathBuf,
    /// Documents by collection, in the order they are imported.
    collections: BTreeMap<String, Vec<PortableDocument>>,
}

/// A timestamp's `value`: `{"_seconds", "_nanoseconds"}`, or a time as text.
fn timestamp(value: &Value) -> Value {
    let seconds = value["_seconds"].as_i64();
    let nanos = value["_nanoseconds"].as_i64().unwrap_or(0);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    match seconds {
        Some(seconds) => time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
        )
        .ok()
        .and_then(|t| t.format(format).ok())
        .map_or(Value::Null, Value::String),
        None => value.clone(),
    }
}

/// A field's value with Firestore's typed values made plain JSON.
fn plain(value: Value) -> Value {
    match value {
        Value::Object(mut map) => {
            let typed = map
                .get("__datatype__")
                .and_then(Value::as_str)
                .map(str::to_string);
            match (typed.as_deref(), map.remove("value")) {
                (Some("timestamp"), Some(v)) => timestamp(&v),
                (Some("geopoint"), Some(v)) => serde_json::json!({
                    "latitude": v["_latitude"],
                    "longitude": v["_longitude"],
                }),
                (Some("documentReference"), Some(v)) => v,
                (_, value) => {
                    if let Some(value) = value {
                        map.insert("value".into(), value);
                    }
                    Value::Object(map.into_iter().map(|(k, v)| (k, plain(v))).collect())
                }
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(plain).collect()),
        other => other,
    }
}

/// Adds the documents of `collections` (a `__collections__` object) under `prefix` (the
/// collection names so far) and `parent` (the path of the document they are under).
fn walk(
    collections: Map<String, Value>,
    prefix: &str,
    parent: Option<&str>,
    out: &mut BTreeMap<String, Vec<PortableDocument>>,
) -> Result<(), String> {
    for (name, documents) in collections {
        let Value::Object(documents) = documents else {
            return Err(format!("collection {name}: not an object of documents"));
        };
        let collection = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}_{name}")
        };
        for (id, fields) in documents {
            let Value::Object(mut fields) = fields else {
                return Err(format!("document {name}/{id}: not an object"));
            };
            let path = match parent {
                Some(parent) => format!("{parent}/{name}/{id}"),
                None => format!("{name}/{id}"),
            };
            if let Some(Value::Object(nested)) = fields.remove(COLLECTIONS) {
                walk(nested, &collection, Some(&path), out)?;
            }
            let mut data: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k, plain(v))).collect();
            if let Some(parent) = parent {
                data.insert("_parent".into(), Value::String(parent.to_string()));
            }
            out.entry(collection.clone())
                .or_default()
                .push(PortableDocument {
                    id,
                    data,
                    owner: None,
                    version: 1,
                    created_at: None,
                    updated_at: None,
                });
        }
    }
    Ok(())
}

impl Firestore {
    pub(crate) fn open(path: &Path) -> Result<Firestore, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let root: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let Some(Value::Object(collections)) = root.get(COLLECTIONS).cloned() else {
            return Err(format!(
                "{}: no {COLLECTIONS} object at the top (export the whole database with node-firestore-import-export)",
                path.display()
            ));
        };
        let mut out = BTreeMap::new();
        walk(collections, "", None, &mut out).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Firestore {
            path: path.to_path_buf(),
            collections: out,
        })
    }
}

impl Source for Firestore {
    fn describe(&self) -> String {
        format!("the Firestore export {}", self.path.display())
    }

    fn totals(&mut self) -> Result<Totals, String> {
        Ok(Totals {
            users: Some(0),
            documents: Some(self.collections.values().map(|d| d.len() as u64).sum()),
            files: Some(0),
        })
    }

    fn read(&mut self, out: &mut dyn FnMut(Item) -> Result<(), String>) -> Result<(), String> {
        for (collection, documents) in std::mem::take(&mut self.collections) {
            for document in documents {
                out(Item::Document {
                    collection: collection.clone(),
                    document,
                })?;
            }
        }
        Ok(())
    }
}
