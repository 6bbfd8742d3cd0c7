//! `emberbase pull`: a project file from what a server has, which `plan` then finds nothing to
//! change against. Collection schemas go to `schemas/NAME.json` and function code to
//! `functions/NAME.js` or `.wasm` beside it; secrets become references to environment
//! variables of their names.

use super::admin::{Admin, State};
use super::file::{json_to_toml, CodeKind, SCHEMA_FILE};
use super::schema::project_schema_text;
use emberbase::Language;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// What `pull` wrote, as lines for the person who ran it.
pub(crate) async fn pull(admin: &Admin, path: &Path) -> Result<String, String> {
    let state = admin.state().await.map_err(|e| e.to_string())?;
    let dir = super::file::folder_of(path);
    let mut written = Vec::new();
    let mut variables = Vec::new();
    let mut root = toml::Table::new();
    let mut write = |relative: &str, bytes: &[u8]| -> Result<(), String> {
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, bytes)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        written.push(relative.to_string());
        Ok(())
    };

    let mut collections = toml::Table::new();
    for (name, config) in &state.collections {
        let mut json = to_json(config);
        if config.indexes.is_empty() {
            drop_member(&mut json, "indexes");
        }
        if let Some(schema) = json.get("schema").filter(|s| !s.is_null()) {
            let relative = format!("schemas/{name}.json");
            let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
            text.push('\n');
            write(&relative, text.as_bytes())?;
            json["schema"] = Value::String(relative);
        }
        collections.insert(
            name.clone(),
            json_to_toml(&json, &format!("collections.{name}"))?,
        );
    }
    insert(&mut root, "collections", collections);

    let mut buckets = toml::Table::new();
    for (name, config) in &state.buckets {
        buckets.insert(
            name.clone(),
            json_to_toml(&to_json(config), &format!("buckets.{name}"))?,
        );
    }
    insert(&mut root, "buckets", buckets);

    let mut functions = toml::Table::new();
    for (name, (info, secrets)) in &state.functions {
        let at = format!("functions.{name}");
        let kind = match info.language {
            Language::Wasm => CodeKind::Wasm,
            Language::JavaScript => CodeKind::JavaScript,
        };
        let relative = format!("functions/{name}.{}", kind.extension());
        let code = admin
            .function_source(name)
            .await
            .map_err(|e| e.to_string())?;
        write(&relative, &code)?;
        let mut table = toml::Table::new();
        table.insert("source".into(), toml::Value::String(relative));
        let mut config = to_json(&info.config);
        if info.config.triggers.is_empty() {
            drop_member(&mut config, "triggers");
        }
        if let toml::Value::Table(config) = json_to_toml(&config, &at)? {
            table.extend(config);
        }
        if !secrets.is_empty() {
            let mut refs = toml::Table::new();
            for secret in secrets {
                refs.insert(
                    secret.name.clone(),
                    toml::Value::String(format!("${{{}}}", secret.name)),
                );
                variables.push(secret.name.clone());
            }
            table.insert("secrets".into(), toml::Value::Table(refs));
        }
        functions.insert(name.clone(), toml::Value::Table(table));
    }
    insert(&mut root, "functions", functions);

    let mut webhooks = toml::Table::new();
    for hook in &state.webhooks {
        let key = hook.spec.name.clone().unwrap_or_else(|| hook.id.clone());
        let mut json = to_json(&hook.spec);
        drop_member(&mut json, "name");
        webhooks.insert(
            key.clone(),
            json_to_toml(&json, &format!("webhooks.{key}"))?,
        );
    }
    insert(&mut root, "webhooks", webhooks);

    let mut providers = toml::Table::new();
    for (name, info) in state.providers.iter().filter(|(_, p)| p.source == "api") {
        let at = format!("auth.providers.{name}");
        let toml::Value::Table(mut table) = json_to_toml(&settings_json(&info.settings), &at)?
        else {
            continue;
        };
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        for (field, set) in [
            ("client_secret", info.has_client_secret),
            ("apple_private_key", info.has_apple_private_key),
        ] {
            if set {
                let variable = format!("{prefix}_{}", field.to_ascii_uppercase());
                table.insert(
                    field.into(),
                    toml::Value::String(format!("${{{variable}}}")),
                );
                variables.push(variable);
            }
        }
        providers.insert(name.clone(), toml::Value::Table(table));
    }
    if !providers.is_empty() {
        let mut auth = toml::Table::new();
        auth.insert("providers".into(), toml::Value::Table(providers));
        root.insert("auth".into(), toml::Value::Table(auth));
    }

    let body = toml::to_string(&root).map_err(|e| e.to_string())?;
    let header = format!(
        "#:schema ./{SCHEMA_FILE}\n# The Emberbase project: `emberbase plan` shows what would change on a server, and\n# `emberbase apply` changes it. Written by `emberbase pull`.\n\n"
    );
    write(SCHEMA_FILE, project_schema_text().as_bytes())?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| super::file::DEFAULT_FILE.into());
    write(&file_name, format!("{header}{body}").as_bytes())?;
    Ok(summary(&state, &dir, &written, &variables))
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A provider's settings as a project writes them: only what differs from the defaults.
fn settings_json(settings: &emberbase::config::OAuthProviderConfig) -> Value {
    let mut json = to_json(settings);
    if let Some(map) = json.as_object_mut() {
        map.retain(|_, v| match v {
            Value::String(s) => !s.is_empty(),
            Value::Array(items) => !items.is_empty(),
            _ => true,
        });
    }
    json
}

fn drop_member(json: &mut Value, key: &str) {
    if let Some(map) = json.as_object_mut() {
        map.remove(key);
    }
}

fn insert(root: &mut toml::Table, key: &str, table: toml::Table) {
    if !table.is_empty() {
        root.insert(key.into(), toml::Value::Table(table));
    }
}

fn summary(state: &State, dir: &Path, written: &[String], variables: &[String]) -> String {
    let mut out = format!(
        "pulled {} collections, {} buckets, {} functions, {} webhooks and {} auth providers into {}:\n",
        state.collections.len(),
        state.buckets.len(),
        state.functions.len(),
        state.webhooks.len(),
        state
            .providers
            .values()
            .filter(|p| p.source == "api")
            .count(),
        dir.display()
    );
    for file in written {
        let _ = writeln!(out, "  {file}");
    }
    if !variables.is_empty() {
        let _ = writeln!(
            out,
            "secrets are not read back: set {} in the environment before `emberbase plan`",
            variables.join(", ")
        );
    }
    out
}
