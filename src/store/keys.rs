//! The key layout, per engine keyspace (see `crate::engine::Keyspace`).
//!
//! | keyspace    | key                                              | value                       |
//! |-------------|--------------------------------------------------|-----------------------------|
//! | `Documents` | collection `00` id                               | version (u64 BE) + envelope JSON |
//! | `Indexes`   | collection `00` index signature `00` values… id  | id `00` version (u64 BE); older entries: id |
//! | `Changes`   | seq (u64 BE)                                     | change record JSON          |
//! | `History`   | collection `00` id `00` seq (u64 BE)             | empty: a retained change of the document (see `records`) |
//! | `Meta`      | `coll:` collection                               | collection config JSON      |
//! | `Meta`      | `build:` collection `00` index signature         | an index build's progress (see `indexes`) |
//! | `Meta`      | `count:` collection                              | its number of documents (i64 BE, see `collections`) |
//! | `Meta`      | `drop:` collection                               | a collection delete in progress (see `collections`) |
//! | `System`    | space tag, key (see `kv::Space`)                 | system record               |
//! | `System`    | `tomb:` collection `00` id                       | a deleted document's last version (see `commit`) |
//! | `Files`     | bucket `00` path                                 | file record (see `files`)   |
//!
//! Collection and bucket names, ids and file paths never contain `00`, so `collection 00` and
//! `bucket 00` are exact prefixes.

use crate::model::Document;
use crate::query::{ast::Path, order, Scope};
use serde_json::Value;

/// `name 00 rest`, allocated once (a document read builds one per request).
fn joined(name: &str, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1 + rest.len());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(rest.as_bytes());
    k
}

pub(super) fn doc_prefix(collection: &str) -> Vec<u8> {
    joined(collection, "")
}

pub(super) fn doc_key(collection: &str, id: &str) -> Vec<u8> {
    joined(collection, id)
}

pub(super) fn file_key(bucket: &str, path: &str) -> Vec<u8> {
    joined(bucket, path)
}

/// An index's signature: its field paths joined by `,`.
pub(super) fn index_signature(fields: &[Path]) -> String {
    fields
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn index_prefix(collection: &str, signature: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + signature.len() + 2);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(signature.as_bytes());
    k.push(0);
    k
}

/// The index entry key of `doc` in the index with `fields`.
pub(super) fn index_key(prefix: &[u8], fields: &[Path], doc: &Document) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for field in fields {
        let v = doc.lookup(field);
        order::encode(v.as_deref().unwrap_or(&Value::Null), &mut k);
    }
    k.extend_from_slice(doc.id.as_bytes());
    k
}

/// The value of an index entry: the document's id, a 0 byte and its version (u64 BE), so that
/// a scan can tell whether the document it then reads is still the one the entry describes.
/// Ids never contain a 0 byte.
pub(super) fn index_value(doc: &Document) -> Vec<u8> {
    let mut v = Vec::with_capacity(doc.id.len() + 9);
    v.extend_from_slice(doc.id.as_bytes());
    v.push(0);
    v.extend_from_slice(&doc.version.to_be_bytes());
    v
}

/// The id of an index entry's document and the version it was written for (`None` in entries
/// written before versions were recorded: the id alone).
pub(super) fn parse_index_value(value: &[u8]) -> (&[u8], Option<u64>) {
    match value.iter().position(|&b| b == 0) {
        Some(at) => {
            let version = value
                .get(at + 1..)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes);
            (&value[..at], version)
        }
        None => (value, None),
    }
}

/// The prefix of a document's history entries: the retained changes of one document.
pub(super) fn history_prefix(collection: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + id.len() + 10);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

pub(super) fn history_key(collection: &str, id: &str, seq: u64) -> Vec<u8> {
    let mut k = history_prefix(collection, id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn change_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence of a change key, or of the history key it ends.
pub(super) fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = key.len().checked_sub(8).and_then(|start| key.get(start..)) {
        b.copy_from_slice(tail);
    }
    u64::from_be_bytes(b)
}

pub(super) const CONFIG_PREFIX: &[u8] = b"coll:";

pub(super) const COUNT_PREFIX: &[u8] = b"count:";

/// The key of a collection's document counter.
pub(super) fn count_key(collection: &str) -> Vec<u8> {
    let mut k = COUNT_PREFIX.to_vec();
    k.extend_from_slice(collection.as_bytes());
    k
}

/// The `Meta` key that every configuration change rewrites, so that other nodes reload.
pub(super) const EPOCH_KEY: &[u8] = b"epoch";

/// The key of an index build in progress.
pub(super) fn build_key(collection: &str, signature: &str) -> Vec<u8> {
    let mut k = b"build:".to_vec();
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(signature.as_bytes());
    k
}

/// The key of a deleted document's tombstone.
pub(super) fn tombstone_key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = b"tomb:".to_vec();
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn config_key(collection: &str) -> Vec<u8> {
    let mut k = CONFIG_PREFIX.to_vec();
    k.extend_from_slice(collection.as_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    crate::engine::prefix_end(prefix).unwrap_or_else(|| vec![0xFF; 16])
}

pub(super) use crate::engine::successor;
