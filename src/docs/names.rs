//! Names and bodies: what a collection name, a document id and a JSON body may be.

use super::DocsError;
use serde_json::Value;

/// Names of collections (and buckets, and functions): `[A-Za-z0-9_-]{1,64}`.
pub(super) fn valid_collection_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(is_name_byte)
}

/// Document ids (and the user ids an import records as owners): `[A-Za-z0-9_-]{1,128}`.
pub(crate) fn valid_document_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A collection name, or a `BadRequest` that says what a name may be.
pub(crate) fn check_collection(name: &str) -> Result<(), DocsError> {
    if valid_collection_name(name) {
        Ok(())
    } else {
        Err(DocsError::BadRequest(format!(
            "invalid collection name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// A document id, or a `BadRequest` that says what an id may be.
pub(crate) fn check_id(id: &str) -> Result<(), DocsError> {
    if valid_document_id(id) {
        Ok(())
    } else {
        Err(DocsError::BadRequest(format!(
            "invalid document id {id:?}: use 1 to 128 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// The nesting depth of a JSON value: 0 for a scalar, 1 for a flat array or object.
pub(crate) fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}
