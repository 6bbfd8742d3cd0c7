//! Collection schemas: a JSON Schema (draft 2020-12) that every document's `data` must
//! satisfy, compiled once per stored configuration and checked in the commit of every write
//! (create, replace, merge patch, batch, function), against the data as the write leaves it.
//!
//! Compiled with no way to fetch anything (the validator is built without its HTTP and file
//! resolvers, so a remote `$ref` does not compile), with `pattern` on the linear-time `regex`
//! engine, and with `format` asserted (`"format": "email"` refuses what is not an address).

use crate::model::Violation;
use serde_json::Value;
use std::sync::Arc;

/// The largest schema accepted, as JSON.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// The most failing fields one refusal lists.
const MAX_VIOLATIONS: usize = 50;

/// A compiled collection schema.
#[derive(Clone)]
pub(crate) struct Schema(Arc<jsonschema::Validator>);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles a schema, or says what is wrong with it.
    pub(crate) fn compile(schema: &Value) -> Result<Schema, String> {
        let size = serde_json::to_vec(schema).map_or(usize::MAX, |v| v.len());
        if size > MAX_SCHEMA_BYTES {
            return Err(format!(
                "the schema is {size} bytes as JSON, over the limit of {MAX_SCHEMA_BYTES}"
            ));
        }
        if !schema.is_object() && !schema.is_boolean() {
            return Err("a schema is a JSON object (or true or false)".into());
        }
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .should_validate_formats(true)
            .build(schema)
            .map(|v| Schema(Arc::new(v)))
            .map_err(|e| format!("the schema does not compile: {e}"))
    }

    /// Every way `data` breaks the schema (at most 50), or none.
    pub(crate) fn violations(&self, data: &Value) -> Vec<Violation> {
        if self.0.is_valid(data) {
            return Vec::new();
        }
        self.0
            .iter_errors(data)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect()
    }
}
