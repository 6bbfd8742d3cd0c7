//! The project file (`emberbase.project.toml`): reading it (environment references expanded,
//! schemas and function code found beside it) and writing one from a server's state (`pull`).
//!
//! Every table holds what the admin API takes, so the file cannot drift from the server's
//! types: `[collections.NAME]` is a collection's config, `[buckets.NAME]` a bucket's,
//! `[functions.NAME]` a function's config plus `source`, `build` and `secrets`,
//! `[webhooks.NAME]` a webhook (named by its key), `[auth.providers.NAME]` a sign-in provider.

use emberbase::config::OAuthProviderConfig;
use emberbase::{BucketConfig, CollectionConfig, FunctionConfig, WebhookSpec};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file `plan`, `apply` and `pull` use when none is named.
pub(crate) const DEFAULT_FILE: &str = "emberbase.project.toml";
/// The JSON Schema `pull` writes beside the project file, for editors.
pub(crate) const SCHEMA_FILE: &str = "emberbase.project.schema.json";

/// The folder a project file's paths are relative to (where commands run).
pub(crate) fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A project file, read and checked.
#[derive(Debug, Default)]
pub(crate) struct Project {
    pub(crate) collections: BTreeMap<String, CollectionConfig>,
    pub(crate) buckets: BTreeMap<String, BucketConfig>,
    pub(crate) functions: BTreeMap<String, FunctionSpec>,
    pub(crate) webhooks: BTreeMap<String, WebhookSpec>,
    pub(crate) providers: BTreeMap<String, OAuthProviderConfig>,
}

/// A function as the project declares it.
#[derive(Debug)]
pub(crate) struct FunctionSpec {
    /// The code to upload: a `.wasm` module or a `.js`/`.mjs` ES module (resolved against the
    /// project file's folder).
    pub(crate) source: PathBuf,
    /// `source` as the file writes it.
    pub(crate) source_name: String,
    /// A shell command run in the project file's folder before `source` is read.
    pub(crate) build: Option<String>,
    pub(crate) config: FunctionConfig,
    /// Secret name to its value (from the environment).
    pub(crate) secrets: BTreeMap<String, String>,
}

/// What code a file holds, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeKind {
    Wasm,
    JavaScript,
}

impl CodeKind {
    pub(crate) fn of(path: &Path) -> Result<CodeKind, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => Ok(CodeKind::Wasm),
            Some("js" | "mjs") => Ok(CodeKind::JavaScript),
            Some("ts" | "mts") => Err(format!(
                "{}: bundle TypeScript first: set `build` to a command that writes JavaScript (for example `npx esbuild {} --bundle --format=esm --outfile=dist/index.js`) and `source` to its output",
                path.display(),
                path.display()
            )),
            _ => Err(format!(
                "{}: `source` is a .wasm module or a .js or .mjs file",
                path.display()
            )),
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            CodeKind::Wasm => "application/wasm",
            CodeKind::JavaScript => "text/javascript",
        }
    }

    pub(crate) fn extension(self) -> &'static str {
        match self {
            CodeKind::Wasm => "wasm",
            CodeKind::JavaScript => "js",
        }
    }
}

/// Fields whose values are secrets: they must be a `${VAR}` reference, never a value.
fn is_secret_field(path: &[&str]) -> bool {
    matches!(path, ["functions", _, "secrets", _])
        || matches!(
            path,
            [
                "auth",
                "providers",
                _,
                "client_secret" | "apple_private_key"
            ]
        )
}

/// Reads a project file: `${VAR}` references in its strings are replaced by the environment's
/// values (an unset variable is an error), and every table is checked against the type the
/// admin API takes.
pub(crate) fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Project, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let dir = folder_of(path);
    let mut root: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    expand_table(&mut root, &mut Vec::new(), env)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse(root, &dir).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(mut root: toml::Table, dir: &Path) -> Result<Project, String> {
    let mut project = Project::default();
    let mut auth = take_table(&mut root, "auth", "")?;
    if let Some(key) = root
        .keys()
        .find(|k| !["collections", "buckets", "functions", "webhooks"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown table `{key}`: a project has collections, buckets, functions, webhooks and auth.providers"
        ));
    }
    for (name, value) in take_table(&mut root, "collections", "")? {
        let at = format!("collections.{name}");
        let mut table = into_table(value, &at)?;
        if let Some(toml::Value::String(file)) = table.get("schema") {
            let schema_path = dir.join(file);
            let text = std::fs::read_to_string(&schema_path)
                .map_err(|e| format!("{at}.schema: cannot read {}: {e}", schema_path.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{at}.schema: {} is not JSON: {e}", schema_path.display()))?;
            table.insert("schema".into(), json_to_toml(&schema, &at)?);
        }
        project
            .collections
            .insert(name, typed(toml::Value::Table(table), &at)?);
    }
    for (name, value) in take_table(&mut root, "buckets", "")? {
        let at = format!("buckets.{name}");
        project.buckets.insert(name, typed(value, &at)?);
    }
    for (name, value) in take_table(&mut root, "functions", "")? {
        let at = format!("functions.{name}");
        let mut table = into_table(value, &at)?;
        let source_name = match table.remove("source") {
            Some(toml::Value::String(source)) => source,
            Some(_) => return Err(format!("{at}.source: a path")),
            None => {
                return Err(format!(
                    "{at}: `source` is missing (the .wasm, .js or .mjs file to upload)"
                ))
            }
        };
        let source = dir.join(&source_name);
        CodeKind::of(&source).map_err(|e| format!("{at}.source: {e}"))?;
        let build = match table.remove("build") {
            Some(toml::Value::String(command)) => Some(command),
            Some(_) => return Err(format!("{at}.build: a shell command")),
            None => None,
        };
        let secrets = match table.remove("secrets") {
            Some(value) => typed(value, &format!("{at}.secrets"))?,
            None => BTreeMap::new(),
        };
        let config = typed(toml::Value::Table(table), &at)?;
        project.functions.insert(
            name,
            FunctionSpec {
                source,
                source_name,
                build,
                config,
                secrets,
            },
        );
    }
    for (name, value) in take_table(&mut root, "webhooks", "")? {
        let at = format!("webhooks.{name}");
        let table = into_table(value, &at)?;
        if table.contains_key("name") {
            return Err(format!(
                "{at}.name: a webhook's name is its table's key; leave `name` out"
            ));
        }
        project
            .webhooks
            .insert(name, typed(toml::Value::Table(table), &at)?);
    }
    let providers = take_table(&mut auth, "providers", "auth.")?;
    if let Some(key) = auth.keys().next() {
        return Err(format!(
            "unknown table `auth.{key}`: the project's auth section has `providers`"
        ));
    }
    for (name, value) in providers {
        let at = format!("auth.providers.{name}");
        project.providers.insert(name, typed(value, &at)?);
    }
    Ok(project)
}

/// Removes a table from its parent (empty when absent).
fn take_table(parent: &mut toml::Table, key: &str, prefix: &str) -> Result<toml::Table, String> {
    match parent.remove(key) {
        None => Ok(toml::Table::new()),
        Some(value) => into_table(value, &format!("{prefix}{key}")),
    }
}

fn into_table(value: toml::Value, at: &str) -> Result<toml::Table, String> {
    match value {
        toml::Value::Table(table) => Ok(table),
        other => Err(format!("{at}: a table, not {}", other.type_str())),
    }
}

/// A TOML value as one of the API's types, with the place of what does not fit.
fn typed<T: serde::de::DeserializeOwned>(value: toml::Value, at: &str) -> Result<T, String> {
    let json = serde_json::to_value(value).map_err(|e| format!("{at}: {e}"))?;
    serde_json::from_value(json).map_err(|e| format!("{at}: {e}"))
}

/// Replaces `${VAR}` references in every string of a table.
fn expand_table(
    table: &mut toml::Table,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        expand_value(value, path, env)?;
        path.pop();
    }
    Ok(())
}

fn expand_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        toml::Value::String(text) => {
            let at = path.join(".");
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            if is_secret_field(&parts) && !is_reference(text) {
                return Err(format!(
                    "{at}: a secret comes from the environment: write \"${{VARIABLE}}\", never the value"
                ));
            }
            *text = expand(text, env).map_err(|e| format!("{at}: {e}"))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_value(item, path, env)?;
                path.pop();
            }
        }
        toml::Value::Table(table) => expand_table(table, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Whether a string is exactly one `${VAR}` reference.
fn is_reference(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(valid_variable)
}

fn valid_variable(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` with each `${VAR}` replaced by the variable's value; `$${` is a literal `${`.
pub(crate) fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or("an unclosed `${`: write `${VARIABLE}`, or `$${` for a literal `${`")?;
            let name = &tail[..end];
            if !valid_variable(name) {
                return Err(format!(
                    "`${{{name}}}` is not a variable name (letters, digits and _)"
                ));
            }
            let value =
                env(name).ok_or_else(|| format!("the environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A JSON value as TOML: `null` members are left out (TOML has no null, and every optional
/// field of the API reads a missing key as null); a null inside an array cannot be written.
pub(crate) fn json_to_toml(value: &Value, at: &str) -> Result<toml::Value, String> {
    Ok(match value {
        Value::Null => {
            return Err(format!(
                "{at}: a null inside an array cannot be written in TOML"
            ))
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|item| json_to_toml(item, at))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok((k.clone(), json_to_toml(v, &format!("{at}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk_live_1".into()),
            "HOST" => Some("api.example.com".into()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_and_unset_ones_are_errors() {
        assert_eq!(
            expand("https://${HOST}/x?k=${KEY}", &env).as_deref(),
            Ok("https://api.example.com/x?k=sk_live_1")
        );
        assert_eq!(
            expand("cost $5, $${HOST}", &env).as_deref(),
            Ok("cost $5, ${HOST}")
        );
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand("${HOST", &env).unwrap_err().contains("unclosed"));
        assert!(expand("${1X}", &env)
            .unwrap_err()
            .contains("not a variable"));
    }

    #[test]
    fn secrets_must_be_references() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join(DEFAULT_FILE);
        let write = |text: &str| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        write("[functions.pay]\nsource = \"pay.js\"\nsecrets = { STRIPE = \"sk_live_1\" }\n");
        let err = load(&file, &env).unwrap_err();
        assert!(err.contains("functions.pay.secrets.STRIPE"), "{err}");
        write("[functions.pay]\nsource = \"pay.js\"\nsecrets = { STRIPE = \"${KEY}\" }\n");
        let project = load(&file, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(project.functions["pay"].secrets["STRIPE"], "sk_live_1");
        write("[auth.providers.gh]\nkind = \"github\"\nclient_secret = \"plain\"\n");
        assert!(load(&file, &env).unwrap_err().contains("client_secret"));
    }

    #[test]
    fn unknown_fields_are_named_with_their_place() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join(DEFAULT_FILE);
        std::fs::write(&file, "[collections.posts]\nrulez = {}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = load(&file, &env).unwrap_err();
        assert!(
            err.contains("collections.posts") && err.contains("rulez"),
            "{err}"
        );
        std::fs::write(&file, "[storage]\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(load(&file, &env)
            .unwrap_err()
            .contains("unknown table `storage`"));
    }
}
