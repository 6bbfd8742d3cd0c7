//! `docs/`: the route reference in `docs/http-api.md` is the OpenAPI document rendered (so it
//! cannot drift; `EB_UPDATE_DOCS=1` rewrites it), and the guest ABI's example module in
//! `docs/functions.md` runs.

use crate::common::*;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

const MARKER: &str = "<!-- The rest of this file is generated";

/// The name of a `$ref`.
fn ref_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// A schema as a short type: a link to a named schema, `[T]`, `map of T`, `T or null`.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = ref_name(reference);
        return format!("[`{name}`](#{})", name.to_lowercase());
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            return options.iter().map(type_of).collect::<Vec<_>>().join(" or ");
        }
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    if kind.starts_with("array") {
        return format!("[{}]", type_of(&schema["items"]));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
        return values.join(" \\| ");
    }
    match (&schema["additionalProperties"], kind.as_str()) {
        (Value::Object(inner), "object") if !inner.is_empty() => {
            format!("map of {}", type_of(&schema["additionalProperties"]))
        }
        (Value::Object(_), "object") => "JSON object".into(),
        _ => kind,
    }
}

/// Markdown table cell text: one line, no bare `|`.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn render_operation(out: &mut String, path: &str, method: &str, op: &Value) {
    let _ = writeln!(out, "### `{} {path}`\n", method.to_uppercase());
    for key in ["summary", "description"] {
        if let Some(text) = op[key].as_str() {
            let _ = writeln!(out, "{text}\n");
        }
    }
    let secured = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
    if secured {
        let _ = writeln!(out, "Sends `Authorization: Bearer <token>`.\n");
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "| parameter | in | type | required | description |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
                type_of(&p["schema"]),
                if p["required"] == true { "yes" } else { "no" },
                cell(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push('\n');
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = writeln!(out, "Body (`{media}`): {}\n", type_of(&body["schema"]));
        }
    }
    if let Some(responses) = op["responses"].as_object() {
        let _ = writeln!(out, "| status | description | body |");
        let _ = writeln!(out, "|---|---|---|");
        for (status, response) in responses {
            let body = response["content"]
                .as_object()
                .and_then(|c| c.iter().next())
                .map(|(media, c)| match c.get("schema") {
                    Some(schema) => format!("{} (`{media}`)", type_of(schema)),
                    None => format!("`{media}`"),
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| {status} | {} | {body} |",
                cell(response["description"].as_str().unwrap_or(""))
            );
        }
        out.push('\n');
    }
}

fn render_schema(out: &mut String, name: &str, schema: &Value) {
    let _ = writeln!(out, "### {name}\n");
    if let Some(text) = schema["description"].as_str() {
        let _ = writeln!(out, "{text}\n");
    }
    match schema["properties"].as_object() {
        Some(properties) => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(out, "| field | type | required | description |");
            let _ = writeln!(out, "|---|---|---|---|");
            for (field, property) in properties {
                let _ = writeln!(
                    out,
                    "| `{field}` | {} | {} | {} |",
                    type_of(property),
                    if required.contains(&field.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                    cell(property["description"].as_str().unwrap_or(""))
                );
            }
        }
        None => {
            let _ = writeln!(out, "{}", type_of(schema));
        }
    }
    out.push('\n');
}

/// The generated part of `docs/http-api.md`: every route by tag, then every schema.
fn render(api: &Value) -> String {
    let mut out = String::new();
    let mut routes: Vec<(String, &str, &str, &Value)> = Vec::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tag = op["tags"][0].as_str().unwrap_or("other").to_string();
            routes.push((tag, path, method, op));
        }
    }
    for tag in api["tags"].as_array().unwrap() {
        let name = tag["name"].as_str().unwrap();
        let _ = writeln!(out, "## {name}\n");
        if let Some(text) = tag["description"].as_str() {
            let _ = writeln!(out, "{text}.\n");
        }
        for (_, path, method, op) in routes.iter().filter(|r| r.0 == name) {
            render_operation(&mut out, path, method, op);
        }
    }
    let _ = writeln!(out, "## Schemas\n");
    for (name, schema) in api["components"]["schemas"].as_object().unwrap() {
        render_schema(&mut out, name, schema);
    }
    out
}

#[test]
fn the_route_reference_is_the_openapi_document() {
    let srv = TestServer::start();
    let api = srv.get("/v1/openapi.json").expect(200).json;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/http-api.md");
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find(MARKER).expect("the generated-part marker");
    let end = start + text[start..].find("-->").unwrap() + "-->\n".len();
    let expected = format!("{}\n{}", &text[..end], render(&api));
    if std::env::var_os("EB_UPDATE_DOCS").is_some() {
        std::fs::write(&file, &expected).unwrap();
        return;
    }
    assert!(
        text == expected,
        "docs/http-api.md is stale: run `EB_UPDATE_DOCS=1 cargo test --test it docs::`"
    );
}

#[test]
fn the_guest_abi_example_module_answers() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/functions.md"))
            .unwrap();
    let source = guide
        .split("```wat\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a wat block");
    let wasm = wat::parse_str(source).unwrap();
    let srv = TestServer::start();
    crate::functions::deploy(&srv, "empty", &wasm, json!({"triggers": [{"on": "http"}]}));
    let answer = crate::functions::call(&srv, "empty", None, &json!({"name": "Ada"}));
    assert_eq!(answer.expect(200).json, json!({}));
}
