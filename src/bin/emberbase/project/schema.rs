//! The JSON Schema of the project file, for editors (Taplo and the VS Code TOML extensions
//! read it from a `#:schema` line): built from the OpenAPI document's schemas of the types the
//! admin API takes, so it says exactly what the server accepts.

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The project file's JSON Schema (draft 2020-12).
pub(crate) fn project_schema() -> Value {
    let api = serde_json::to_value(emberbase::openapi()).unwrap_or(Value::Null);
    let mut defs = api["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // A collection's `schema` may also name a JSON file beside the project file.
    if let Some(properties) = defs
        .get_mut("CollectionConfig")
        .and_then(|c| c["properties"].as_object_mut())
    {
        properties.insert(
            "schema".into(),
            json!({
                "description": "A JSON Schema (draft 2020-12) every document's `data` must satisfy: inline, or the path of a JSON file relative to the project file.",
                "oneOf": [{"type": "string"}, {"type": "object"}, {"type": "boolean"}]
            }),
        );
    }
    let mut function = defs
        .get("FunctionConfig")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    if let Some(properties) = function["properties"].as_object_mut() {
        properties.insert(
            "source".into(),
            json!({
                "type": "string",
                "description": "The code to upload, relative to the project file: a .wasm module, or a .js or .mjs ES module."
            }),
        );
        properties.insert(
            "build".into(),
            json!({
                "type": "string",
                "description": "A shell command run in the project file's folder before `source` is read (by plan, apply and dev), e.g. `npm run build`."
            }),
        );
        properties.insert(
            "secrets".into(),
            json!({
                "type": "object",
                "description": "Secret name to a reference to the environment variable that holds its value: `{ STRIPE_KEY = \"${STRIPE_KEY}\" }`.",
                "additionalProperties": {"type": "string", "pattern": "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$"}
            }),
        );
    }
    function["required"] = json!(["source"]);
    function["additionalProperties"] = json!(false);
    defs.insert("ProjectFunction".into(), function);
    let mut webhook = defs
        .get("WebhookSpec")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    if let Some(properties) = webhook["properties"].as_object_mut() {
        properties.remove("name");
    }
    defs.insert("ProjectWebhook".into(), webhook);
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://emberbase.dev/schemas/emberbase.project.schema.json",
        "title": "Emberbase project",
        "description": "A backend as code: `emberbase plan` shows what would change on a server, `emberbase apply` changes it, `emberbase pull` writes this file from a server. Strings may use ${VARIABLE} from the environment ($${ for a literal ${); secrets must.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "collections": {
                "description": "Collections by name: rules, indexes, schema and relations.",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/CollectionConfig"}
            },
            "buckets": {
                "description": "File buckets by name: rules, size limit and content types.",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/BucketConfig"}
            },
            "functions": {
                "description": "Functions by name: their code, triggers, limits and secrets.",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/ProjectFunction"}
            },
            "webhooks": {
                "description": "Webhooks by name.",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/ProjectWebhook"}
            },
            "auth": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "providers": {
                        "description": "Sign-in providers by name (those of the server's config file are not managed here).",
                        "type": "object",
                        "additionalProperties": {"$ref": "#/$defs/OAuthProviderConfig"}
                    }
                }
            }
        },
    });
    let mut defs = Value::Object(defs);
    rewrite_refs(&mut defs);
    let Value::Object(defs) = defs else {
        return schema;
    };
    schema["$defs"] = Value::Object(reachable(&schema, defs));
    schema
}

/// The definitions that the schema reaches, directly or through one another.
fn reachable(root: &Value, defs: Map<String, Value>) -> Map<String, Value> {
    let mut wanted = BTreeSet::new();
    let mut pending = Vec::new();
    refs(root, &mut pending);
    while let Some(name) = pending.pop() {
        if wanted.insert(name.clone()) {
            if let Some(def) = defs.get(&name) {
                refs(def, &mut pending);
            }
        }
    }
    defs.into_iter()
        .filter(|(name, _)| wanted.contains(name))
        .collect()
}

/// The names of the definitions a value refers to.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|t| t.strip_prefix("#/$defs/"))
            {
                out.push(name.to_string());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Points OpenAPI component references at `$defs`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                if let Some(name) = target.strip_prefix("#/components/schemas/") {
                    *target = format!("#/$defs/{name}");
                }
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// The schema as the file `pull` writes and the repository publishes.
pub(crate) fn project_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&project_schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_and_only_those_are_kept() {
        let schema = project_schema();
        let defs = schema["$defs"].as_object().unwrap_or_else(|| panic!());
        let mut names = Vec::new();
        refs(&schema, &mut names);
        for name in &names {
            assert!(defs.contains_key(name), "{name}");
        }
        assert!(defs.keys().all(|k| names.contains(k)));
        for kept in [
            "CollectionConfig",
            "ProjectFunction",
            "Trigger",
            "OAuthProviderConfig",
        ] {
            assert!(defs.contains_key(kept), "{kept}");
        }
    }
}
