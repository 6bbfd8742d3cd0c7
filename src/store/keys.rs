//! The key layout of the one sled tree. Keeping everything in one tree lets one `sled::Batch`
//! commit a document, its index entries and its change record atomically.
//!
//! | prefix | key                                              | value                       |
//! |--------|--------------------------------------------------|-----------------------------|
//! | `D`    | collection `00` id                               | version (u64 BE) + envelope JSON |
//! | `I`    | collection `00` index signature `00` values… id  | id                          |
//! | `C`    | seq (u64 BE)                                     | change record JSON          |
//! | `M`    | `coll:` collection                               | collection config JSON      |
//! | `S`    | space tag, key (see `kv::Space`)                 | system record               |
//! | `F`    | bucket `00` path                                 | file record (see `files`)   |
//! | `H`    | collection `00` id `00` seq (u64 BE)             | empty: a retained change of the document (see `records`) |
//!
//! Collection and bucket names, ids and file paths never contain `00`, so `collection 00` and
//! `bucket 00` are exact prefixes.

use crate::model::Document;
use crate::query::{ast::Path, order, Scope};
use serde_json::Value;

pub const DOC: u8 = b'D';
pub const INDEX: u8 = b'I';
pub const CHANGE: u8 = b'C';
pub const META: u8 = b'M';
pub const SYSTEM: u8 = b'S';
pub const FILE: u8 = b'F';
pub const HISTORY: u8 = b'H';

pub fn doc_prefix(collection: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + 2);
    k.push(DOC);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k
}

pub fn doc_key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = doc_prefix(collection);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn file_prefix(bucket: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 2);
    k.push(FILE);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k
}

pub fn file_key(bucket: &str, path: &str) -> Vec<u8> {
    let mut k = file_prefix(bucket);
    k.extend_from_slice(path.as_bytes());
    k
}

/// An index's signature: its field paths joined by `,`.
pub fn index_signature(fields: &[Path]) -> String {
    fields
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn index_prefix(collection: &str, signature: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + signature.len() + 3);
    k.push(INDEX);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(signature.as_bytes());
    k.push(0);
    k
}

/// The index entry key of `doc` in the index with `fields`.
pub fn index_key(prefix: &[u8], fields: &[Path], doc: &Document) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for field in fields {
        let v = doc.lookup(field);
        order::encode(v.as_deref().unwrap_or(&Value::Null), &mut k);
    }
    k.extend_from_slice(doc.id.as_bytes());
    k
}

/// The prefix of a document's history entries: the retained changes of one document.
pub fn history_prefix(collection: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(collection.len() + id.len() + 11);
    k.push(HISTORY);
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

pub fn history_key(collection: &str, id: &str, seq: u64) -> Vec<u8> {
    let mut k = history_prefix(collection, id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn change_key(seq: u64) -> [u8; 9] {
    let mut k = [CHANGE; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn config_prefix() -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(b"coll:");
    k
}

pub fn config_key(collection: &str) -> Vec<u8> {
    let mut k = config_prefix();
    k.extend_from_slice(collection.as_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xFF; 16]
}

/// The smallest key greater than `key` itself.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}
