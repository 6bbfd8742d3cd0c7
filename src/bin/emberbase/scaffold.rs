//! `emberbase functions new`: a function project in a folder of the user's, with the guest SDK
//! written into it from this binary (nothing is read from a checkout of Emberbase), and a README
//! whose commands build and upload it.

use std::path::{Path, PathBuf};

/// The languages a project can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// AssemblyScript, built with npm (`asc` and the `emberbase-functions` package).
    Assemblyscript,
    /// Rust, built with cargo for `wasm32-unknown-unknown` (the `emberbase-function` crate).
    Rust,
    /// JavaScript, uploaded as it is: the server runs it in the engine it ships. (TypeScript:
    /// bundle and upload with the TypeScript SDK's `npx emberbase functions deploy`.)
    Javascript,
}

/// The AssemblyScript compiler version the SDK is built and tested with.
const ASSEMBLYSCRIPT: &str = "0.28.20";

const AS_SDK: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../../../sdk/functions/assemblyscript/package.json"),
    ),
    (
        "index.ts",
        include_str!("../../../sdk/functions/assemblyscript/index.ts"),
    ),
    (
        "json.ts",
        include_str!("../../../sdk/functions/assemblyscript/json.ts"),
    ),
    (
        "README.md",
        include_str!("../../../sdk/functions/assemblyscript/README.md"),
    ),
];

const RUST_SDK: &str = include_str!("../../../sdk/functions/rust/src/lib.rs");

/// Refuses what cannot name both a function and a package.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if starts && rest && name.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1 to 64 of a-z 0-9 - _, starting with a letter"
        ))
    }
}

/// The commands that build `name` and deploy `file` (of `content_type`) as an HTTP function,
/// for its README.
fn deploy_commands(name: &str, build: &str, file: &str, content_type: &str) -> String {
    format!(
        r#"```sh
{build}
# Upload it and make it answer POST /v1/functions/{name}. EB_URL is the server
# (http://127.0.0.1:7070 for `emberbase serve`), EB_SERVICE_KEY its service key
# (in emberbase_data/service_key).
curl -sSf -w '\n' -X PUT "$EB_URL/v1/admin/functions/{name}" -H "Authorization: Bearer $EB_SERVICE_KEY" \
  -H 'Content-Type: {content_type}' --data-binary @{file}
curl -sSf -w '\n' -X PUT "$EB_URL/v1/admin/functions/{name}/config" -H "Authorization: Bearer $EB_SERVICE_KEY" \
  -H 'Content-Type: application/json' -d '{{"triggers": [{{"on": "http"}}]}}'
curl -sSf -w '\n' -X POST "$EB_URL/v1/functions/{name}" -H 'Content-Type: application/json' -d '{{"name": "Ada"}}'
```"#
    )
}

fn readme(name: &str, what: &str, commands: &str) -> String {
    format!(
        "# {name}\n\n\
An Emberbase function in {what}, made by `emberbase functions new`. It answers\n\
`POST /v1/functions/{name} {{\"name\": \"Ada\"}}` with a greeting and who called. Functions act\n\
as admins for their database calls; see the functions guide in Emberbase's `docs/functions.md`\n\
for events, triggers, limits and the SDK.\n\n\
{commands}\n\n\
To fire it on data changes instead, set its config to, for example,\n\
`{{\"triggers\": [{{\"on\": \"write\", \"collection\": \"comments\"}}]}}`, or on a schedule with\n\
`{{\"triggers\": [{{\"on\": \"schedule\", \"cron\": \"*/5 * * * *\"}}]}}`.\n"
    )
}

fn assemblyscript(name: &str) -> Vec<(PathBuf, String)> {
    let mut files = vec![
        (
            "package.json".into(),
            format!(
                r#"{{
  "name": "{name}",
  "private": true,
  "scripts": {{
    "build": "asc index.ts --config asconfig.json -o {name}.wasm"
  }},
  "devDependencies": {{
    "assemblyscript": "{ASSEMBLYSCRIPT}",
    "emberbase-functions": "file:./vendor/emberbase-functions"
  }}
}}
"#
            ),
        ),
        (
            "asconfig.json".into(),
            r#"{
  "options": {
    "runtime": "stub",
    "optimizeLevel": 3,
    "shrinkLevel": 1,
    "use": ["abort=~lib/emberbase-functions/index/abort"]
  }
}
"#
            .into(),
        ),
        (
            "index.ts".into(),
            r#"// An HTTP function: answers {"name": "Ada"} with a greeting and who called.
import { register, log, quote, JSONValue } from "emberbase-functions";
export { alloc, handle } from "emberbase-functions";

register((event: JSONValue): string | null => {
  const name = event.path("body.name").asString("world");
  const caller = event.path("auth.email").asString("anonymous");
  log("greeting " + name);
  return '{"status":200,"body":{"greeting":' + quote("hello, " + name) + ',"caller":' + quote(caller) + "}}";
});
"#
            .into(),
        ),
        (".gitignore".into(), "node_modules/\n*.wasm\n".into()),
        (
            "README.md".into(),
            readme(
                name,
                "AssemblyScript",
                &deploy_commands(
                    name,
                    "npm install\nnpm run build",
                    &format!("{name}.wasm"),
                    "application/wasm",
                ),
            ),
        ),
    ];
    for (file, text) in AS_SDK {
        files.push((
            Path::new("vendor/emberbase-functions").join(file),
            text.to_string(),
        ));
    }
    files
}

fn rust(name: &str) -> Vec<(PathBuf, String)> {
    let artifact = name.replace('-', "_");
    vec![
        (
            "Cargo.toml".into(),
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

# Built on its own for wasm32-unknown-unknown, apart from any workspace around it.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
emberbase-function = {{ path = "vendor/emberbase-function" }}

[profile.release]
opt-level = "s"
lto = true
"#
            ),
        ),
        (
            "src/lib.rs".into(),
            r#"//! An HTTP function: answers {"name": "Ada"} with a greeting and who called.

use emberbase_function::{function, json, log, Value};

function!(|event: Value| -> Option<Value> {
    let name = event["body"]["name"].as_str().unwrap_or("world").to_string();
    let caller = event["auth"]["email"].as_str().unwrap_or("anonymous").to_string();
    log::info(&format!("greeting {name}"));
    Some(json!({"status": 200, "body": {"greeting": format!("hello, {name}"), "caller": caller}}))
});
"#
            .into(),
        ),
        (".gitignore".into(), "/target\n".into()),
        (
            "README.md".into(),
            readme(
                name,
                "Rust",
                &deploy_commands(
                    name,
                    "rustup target add wasm32-unknown-unknown   # once\n\
                     cargo build --release --target wasm32-unknown-unknown",
                    &format!("target/wasm32-unknown-unknown/release/{artifact}.wasm"),
                    "application/wasm",
                ),
            ),
        ),
        (
            "vendor/emberbase-function/Cargo.toml".into(),
            r#"[package]
name = "emberbase-function"
version = "0.1.0"
edition = "2021"
license = "Apache-2.0"
description = "Write Emberbase functions in Rust: register a handler, read the event, use the database, log."

[dependencies]
serde_json = "1"
"#
            .into(),
        ),
        (
            "vendor/emberbase-function/src/lib.rs".into(),
            RUST_SDK.into(),
        ),
    ]
}

fn javascript(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (
            "index.js".into(),
            r#"// An HTTP function: answers {"name": "Ada"} with a greeting and who called. The global
// `emberbase` is the host API (db, fetch, env, mail); console lines go to the invocation log.
export default async function handle(event) {
  const name = event.body?.name ?? "world";
  const caller = event.auth?.email ?? "anonymous";
  console.log(`greeting ${name}`);
  return { status: 200, body: { greeting: `hello, ${name}`, caller } };
}
"#
            .into(),
        ),
        (
            "README.md".into(),
            readme(
                name,
                "JavaScript",
                &deploy_commands(
                    name,
                    "# No build step: the server runs the source in the JavaScript engine it ships.",
                    "index.js",
                    "text/javascript",
                ),
            ),
        ),
    ]
}

/// Writes a new function project `name` in `dir`, which must not exist or be empty; returns
/// the files written and the README's text.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<(Vec<PathBuf>, String), String> {
    check_name(name)?;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(format!("{} exists and is not empty", dir.display()));
        }
    }
    let files = match lang {
        Lang::Assemblyscript => assemblyscript(name),
        Lang::Rust => rust(name),
        Lang::Javascript => javascript(name),
    };
    let mut written = Vec::new();
    let mut readme = String::new();
    for (file, text) in files {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, &text)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if file == Path::new("README.md") {
            readme = text;
        }
        written.push(path);
    }
    Ok((written, readme))
}
