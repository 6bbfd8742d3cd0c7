//! The plan: what would make a server match a project file, as items a person reads (added,
//! changed, removed; a diff of each; which are destructive) and the admin API calls that
//! make each one. `apply` makes the calls in order and stops at the first failure.

use super::admin::{Admin, ApiError, State};
use super::file::{CodeKind, FunctionSpec, Project};
use emberbase::config::OAuthProviderConfig;
use emberbase::{
    BucketConfig, CollectionConfig, FunctionConfig, SecretComparison, WebhookInfo, WebhookSpec,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The longest value a diff line shows before it is cut.
const SHOWN: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Add,
    Change,
    Remove,
}

impl Action {
    fn sign(self) -> char {
        match self {
            Action::Add => '+',
            Action::Change => '~',
            Action::Remove => '-',
        }
    }
}

/// One thing the plan changes: a collection, bucket, function, webhook or provider.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) action: Action,
    /// The readable diff, one line each.
    pub(crate) lines: Vec<String>,
    /// Why it needs `--allow-delete`; empty when it does not.
    pub(crate) destructive: Vec<String>,
    ops: Vec<Op>,
}

/// One admin API call.
#[derive(Debug)]
enum Op {
    Put(String, Value),
    /// A create whose answer may carry a secret shown only then.
    Post(String, Value),
    Delete(String),
    Upload(String, CodeKind, Vec<u8>),
}

/// Every change, in the order `apply` makes them: additions and changes (collections,
/// buckets, functions, webhooks, providers: what a later one names exists first), then
/// removals in the opposite order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) items: Vec<Item>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn destructive(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| !i.destructive.is_empty())
    }

    fn count(&self, action: Action) -> usize {
        self.items.iter().filter(|i| i.action == action).count()
    }

    /// The plan as a person reads it.
    pub(crate) fn render(&self) -> String {
        if self.is_empty() {
            return "No changes: the server matches the project.\n".into();
        }
        let mut out = String::new();
        for item in &self.items {
            let _ = writeln!(out, "{}", item.title());
            for line in &item.lines {
                let _ = writeln!(out, "    {line}");
            }
            for why in &item.destructive {
                let _ = writeln!(out, "    ! destructive: {why}");
            }
        }
        let destructive = self.destructive().count();
        let _ = writeln!(
            out,
            "\nPlan: {} to add, {} to change, {} to remove{}.",
            self.count(Action::Add),
            self.count(Action::Change),
            self.count(Action::Remove),
            if destructive > 0 {
                format!(" ({destructive} destructive: apply them with --allow-delete)")
            } else {
                String::new()
            }
        );
        out
    }
}

impl Item {
    pub(crate) fn title(&self) -> String {
        format!("{} {} {}", self.action.sign(), self.kind, self.name)
    }

    /// Makes the item's calls; returns what a person must see of the answers (a new
    /// webhook's signing secret).
    pub(crate) async fn apply(&self, admin: &Admin) -> Result<Vec<String>, ApiError> {
        let mut notes = Vec::new();
        for op in &self.ops {
            match op {
                Op::Put(path, body) => {
                    admin.put(path, body).await?;
                }
                Op::Post(path, body) => {
                    let answer = admin.post(path, body).await?;
                    if let Some(secret) = answer["secret"].as_str() {
                        notes.push(format!(
                            "its signing secret (shown once; `POST /v1/admin/webhooks/{}/rotate-secret` makes a new one): {secret}",
                            answer["id"].as_str().unwrap_or_default()
                        ));
                    }
                }
                Op::Delete(path) => admin.delete(path).await?,
                Op::Upload(path, kind, bytes) => {
                    admin
                        .put_bytes(path, kind.content_type(), bytes.clone())
                        .await?
                }
            }
        }
        Ok(notes)
    }
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A value on one line, cut when long.
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= SHOWN {
        return text;
    }
    let cut: String = text.chars().take(SHOWN).collect();
    format!("{cut}…")
}

/// Whether a member says nothing: null, or an empty list (every list of the API's types
/// defaults to empty).
fn is_unset(value: &Value) -> bool {
    value.is_null() || value.as_array().is_some_and(Vec::is_empty)
}

/// The differences between two JSON values as lines (`+ path: value`, `- path: value`,
/// `~ path: old → new`), going into objects; an unset member is the same as a missing one.
fn diff(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    let old = old.filter(|v| !is_unset(v));
    let new = new.filter(|v| !is_unset(v));
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff(&join(key), a.get(key), b.get(key), out);
            }
        }
        (None, Some(v)) => out.push(format!("+ {path}: {}", show(v))),
        (Some(v), None) => out.push(format!("- {path}: {}", show(v))),
        (Some(a), Some(b)) if a != b => out.push(format!("~ {path}: {} → {}", show(a), show(b))),
        _ => {}
    }
}

/// The lines of a change: each changed field; of an addition or a removal, each field set
/// (an empty text is a default too, there).
fn diff_lines<T: Serialize>(old: Option<&T>, new: Option<&T>) -> Vec<String> {
    let empty = Value::Object(serde_json::Map::new());
    let set = |value: Value| match value {
        Value::Object(mut map) => {
            map.retain(|_, v| !is_unset(v) && v.as_str() != Some(""));
            Value::Object(map)
        }
        other => other,
    };
    let old = old.map(|v| set(to_json(v)));
    let new = new.map(|v| set(to_json(v)));
    let mut out = Vec::new();
    diff(
        "",
        Some(old.as_ref().unwrap_or(&empty)),
        Some(new.as_ref().unwrap_or(&empty)),
        &mut out,
    );
    out
}

/// The SHA-256 of bytes, lower-case hex (as the server names a function's code).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares a project with a server's state. Function code must already be built.
pub(crate) async fn make(project: &Project, state: &State, admin: &Admin) -> Result<Plan, String> {
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    configs(
        "collection",
        "/v1/admin/collections",
        &project.collections,
        &state.collections,
        &mut adds,
        &mut removes,
        |have: &CollectionConfig, want: &CollectionConfig| {
            have.indexes
                .iter()
                .filter(|index| !want.indexes.contains(index))
                .map(|index| format!("drops the index {}", show(&to_json(index))))
                .collect()
        },
        "its rules, indexes, schema and relations go back to the defaults (its documents stay)",
    );
    configs(
        "bucket",
        "/v1/admin/buckets",
        &project.buckets,
        &state.buckets,
        &mut adds,
        &mut removes,
        |_: &BucketConfig, _: &BucketConfig| Vec::new(),
        "its rules and limits go back to the defaults (its files stay)",
    );
    for (name, spec) in &project.functions {
        if let Some(item) = function(name, spec, state, admin).await? {
            adds.push(item);
        }
    }
    for name in state.functions.keys() {
        if !project.functions.contains_key(name) {
            removes.push(removal(
                "function",
                name,
                format!("/v1/admin/functions/{name}"),
                "deletes the function with its kept versions, pending events, invocation log and secrets",
            ));
        }
    }
    webhooks(project, &state.webhooks, &mut adds, &mut removes);
    providers(project, state, admin, &mut adds, &mut removes).await?;
    removes.reverse();
    adds.extend(removes);
    Ok(Plan { items: adds })
}

fn removal(kind: &'static str, name: &str, path: String, why: &str) -> Item {
    Item {
        kind,
        name: name.to_string(),
        action: Action::Remove,
        lines: Vec::new(),
        destructive: vec![why.to_string()],
        ops: vec![Op::Delete(path)],
    }
}

/// Collections and buckets: a configuration set with `PUT {base}/{name}`; one the project
/// leaves out goes back to the default (`{}`), which is how the server shows none.
#[allow(clippy::too_many_arguments)]
fn configs<T: Serialize + PartialEq + Default>(
    kind: &'static str,
    base: &str,
    want: &BTreeMap<String, T>,
    have: &BTreeMap<String, T>,
    adds: &mut Vec<Item>,
    removes: &mut Vec<Item>,
    dropped: impl Fn(&T, &T) -> Vec<String>,
    reset: &str,
) {
    let default = T::default();
    for (name, config) in want {
        let current = have.get(name).unwrap_or(&default);
        if current == config {
            continue;
        }
        adds.push(Item {
            kind,
            name: name.clone(),
            action: if have.contains_key(name) {
                Action::Change
            } else {
                Action::Add
            },
            lines: diff_lines(have.get(name), Some(config)),
            destructive: dropped(current, config),
            ops: vec![Op::Put(format!("{base}/{name}"), to_json(config))],
        });
    }
    for (name, config) in have {
        if !want.contains_key(name) {
            removes.push(Item {
                kind,
                name: name.clone(),
                action: Action::Remove,
                lines: diff_lines(Some(config), None),
                destructive: vec![reset.to_string()],
                ops: vec![Op::Put(format!("{base}/{name}"), to_json(&default))],
            });
        }
    }
}

async fn function(
    name: &str,
    spec: &FunctionSpec,
    state: &State,
    admin: &Admin,
) -> Result<Option<Item>, String> {
    let kind = CodeKind::of(&spec.source)?;
    let code = std::fs::read(&spec.source).map_err(|e| {
        format!(
            "functions.{name}: cannot read {}: {e}",
            spec.source.display()
        )
    })?;
    let sha = sha256_hex(&code);
    let base = format!("/v1/admin/functions/{name}");
    let mut lines = Vec::new();
    let mut ops = Vec::new();
    let mut destructive = Vec::new();
    let (action, have_config, have_secrets) = match state.functions.get(name) {
        None => {
            lines.push(format!(
                "+ source: {} ({} bytes, sha256 {})",
                spec.source_name,
                code.len(),
                &sha[..12]
            ));
            ops.push(Op::Upload(base.clone(), kind, code));
            (Action::Add, FunctionConfig::default(), Vec::new())
        }
        Some((info, secrets)) => {
            if info.sha256 != sha {
                lines.push(format!(
                    "~ source: {} (sha256 {} → {}: a new version)",
                    spec.source_name,
                    info.sha256.get(..12).unwrap_or(&info.sha256),
                    &sha[..12]
                ));
                ops.push(Op::Upload(base.clone(), kind, code));
            }
            let names = secrets.iter().map(|s| s.name.clone()).collect();
            (Action::Change, info.config.clone(), names)
        }
    };
    if have_config != spec.config {
        lines.extend(diff_lines(Some(&have_config), Some(&spec.config)));
        ops.push(Op::Put(format!("{base}/config"), to_json(&spec.config)));
    }
    let compared = if have_secrets.is_empty() || spec.secrets.is_empty() {
        BTreeMap::new()
    } else {
        admin
            .compare_function_secrets(name, &spec.secrets)
            .await
            .map_err(|e| e.to_string())?
    };
    for (secret, value) in &spec.secrets {
        let line = match compared.get(secret).copied() {
            Some(SecretComparison::Same) => continue,
            Some(SecretComparison::Different) => format!("~ secret {secret} (a new value)"),
            Some(SecretComparison::Absent) | None => format!("+ secret {secret}"),
        };
        lines.push(line);
        ops.push(Op::Put(
            format!("{base}/secrets/{secret}"),
            serde_json::json!({ "value": value }),
        ));
    }
    for secret in have_secrets {
        if !spec.secrets.contains_key(&secret) {
            lines.push(format!("- secret {secret}"));
            destructive.push(format!("deletes the secret {secret}"));
            ops.push(Op::Delete(format!("{base}/secrets/{secret}")));
        }
    }
    Ok((!ops.is_empty()).then(|| Item {
        kind: "function",
        name: name.to_string(),
        action,
        lines,
        destructive,
        ops,
    }))
}

/// Webhooks, known by name; one without a name by its id (as `pull` writes it), and it
/// keeps having none.
fn webhooks(
    project: &Project,
    have: &[WebhookInfo],
    adds: &mut Vec<Item>,
    removes: &mut Vec<Item>,
) {
    let matched = |key: &str| {
        have.iter()
            .find(|w| w.spec.name.as_deref() == Some(key))
            .or_else(|| have.iter().find(|w| w.spec.name.is_none() && w.id == key))
    };
    let mut kept = BTreeSet::new();
    for (key, spec) in &project.webhooks {
        let mut want = spec.clone();
        match matched(key) {
            None => {
                want.name = Some(key.clone());
                adds.push(Item {
                    kind: "webhook",
                    name: key.clone(),
                    action: Action::Add,
                    lines: diff_lines(None, Some(&unnamed(&want))),
                    destructive: Vec::new(),
                    ops: vec![Op::Post("/v1/admin/webhooks".into(), to_json(&want))],
                });
            }
            Some(current) => {
                kept.insert(current.id.clone());
                want.name.clone_from(&current.spec.name);
                if current.spec != want {
                    adds.push(Item {
                        kind: "webhook",
                        name: key.clone(),
                        action: Action::Change,
                        lines: diff_lines(Some(&current.spec), Some(&want)),
                        destructive: Vec::new(),
                        ops: vec![Op::Put(
                            format!("/v1/admin/webhooks/{}", current.id),
                            to_json(&want),
                        )],
                    });
                }
            }
        }
    }
    for hook in have.iter().filter(|w| !kept.contains(&w.id)) {
        removes.push(removal(
            "webhook",
            hook.spec.name.as_deref().unwrap_or(&hook.id),
            format!("/v1/admin/webhooks/{}", hook.id),
            "deletes the webhook with its queued messages and delivery log",
        ));
    }
}

fn unnamed(spec: &WebhookSpec) -> WebhookSpec {
    WebhookSpec {
        name: None,
        ..spec.clone()
    }
}

/// A provider's settings without its secrets, as the server shows them.
fn without_secrets(config: &OAuthProviderConfig) -> OAuthProviderConfig {
    OAuthProviderConfig {
        client_secret: String::new(),
        apple_private_key: String::new(),
        ..config.clone()
    }
}

async fn providers(
    project: &Project,
    state: &State,
    admin: &Admin,
    adds: &mut Vec<Item>,
    removes: &mut Vec<Item>,
) -> Result<(), String> {
    for (name, want) in &project.providers {
        let path = format!("/v1/admin/auth/providers/{name}");
        let Some(current) = state.providers.get(name) else {
            adds.push(Item {
                kind: "auth provider",
                name: name.clone(),
                action: Action::Add,
                lines: diff_lines(None, Some(&without_secrets(want))),
                destructive: Vec::new(),
                ops: vec![Op::Put(path, to_json(want))],
            });
            continue;
        };
        if current.source != "api" {
            return Err(format!(
                "auth.providers.{name}: the server's config file sets this provider; change it there, or leave it out of the project"
            ));
        }
        let mut lines = diff_lines(Some(&current.settings), Some(&without_secrets(want)));
        let compared = admin
            .compare_provider_secrets(name, want)
            .await
            .map_err(|e| e.to_string())?;
        for (field, comparison) in compared {
            match comparison {
                SecretComparison::Same => {}
                SecretComparison::Different => lines.push(format!("~ {field} (a new value)")),
                SecretComparison::Absent => lines.push(format!("+ {field}")),
            }
        }
        if !lines.is_empty() {
            adds.push(Item {
                kind: "auth provider",
                name: name.clone(),
                action: Action::Change,
                lines,
                destructive: Vec::new(),
                ops: vec![Op::Put(path, to_json(want))],
            });
        }
    }
    for (name, current) in &state.providers {
        if current.source == "api" && !project.providers.contains_key(name) {
            removes.push(removal(
                "auth provider",
                name,
                format!("/v1/admin/auth/providers/{name}"),
                "removes the sign-in provider (linked identities stay, and sign in again if it returns)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_path() {
        let mut out = Vec::new();
        diff(
            "",
            Some(&json!({"rules": {"read": "true", "create": null}, "indexes": [["a"]]})),
            Some(
                &json!({"rules": {"read": "auth != null", "update": "true"}, "indexes": [["a"]], "max": 3}),
            ),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "+ max: 3",
                "~ rules.read: \"true\" → \"auth != null\"",
                "+ rules.update: \"true\"",
            ]
        );
        let long = json!("x".repeat(500));
        assert!(show(&long).ends_with('…') && show(&long).chars().count() == SHOWN + 1);
    }
}
