//! `emberbase functions`: `new` makes a function project, `invoke` runs a function once on an
//! event from a file.

use crate::common::{fail, load_config, runtime, service_key};
use crate::scaffold;
use emberbase::config::Overrides;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where `functions invoke` sends the host calls.
pub(crate) enum Target {
    DataDir(Option<PathBuf>),
    Url(String),
}

/// `functions invoke`.
pub(crate) fn invoke(
    name: &str,
    event: &Path,
    module: Option<PathBuf>,
    config: Option<PathBuf>,
    target: Target,
) -> ExitCode {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| fail(&format!("cannot read {}: {e}", path.display()), 2))
    };
    let event = match read(event) {
        Ok(bytes) => bytes,
        Err(code) => return code,
    };
    let mut event: serde_json::Value = match serde_json::from_slice(&event) {
        Ok(serde_json::Value::Object(event)) => serde_json::Value::Object(event),
        Ok(_) => return fail("the event must be a JSON object", 2),
        Err(e) => return fail(&format!("the event is not JSON: {e}"), 2),
    };
    let defaults = [
        ("v", serde_json::json!(1)),
        ("event_id", serde_json::json!(ulid_now())),
        ("attempt", serde_json::json!(1)),
        ("time", serde_json::json!(now_text())),
    ];
    for (key, value) in defaults {
        if event.get(key).is_none() {
            event[key] = value;
        }
    }
    let module = match module.as_deref().map(read).transpose() {
        Ok(module) => module,
        Err(code) => return code,
    };
    let overrides = match &target {
        Target::DataDir(dir) => Overrides {
            bind: None,
            data_dir: dir.clone(),
        },
        Target::Url(_) => Overrides::default(),
    };
    let config = match load_config(config.as_deref(), &overrides) {
        Ok((config, _)) => config,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ran = match target {
        Target::Url(url) => {
            let key = match service_key() {
                Ok(key) => key,
                Err(e) => return fail(&e, 2),
            };
            let Some(module) = module else {
                return fail("--url needs --module: the module runs here", 2);
            };
            runtime
                .block_on(emberbase::invoke_remote(
                    &url,
                    &key,
                    name,
                    module,
                    event,
                    &config.functions,
                ))
                .map_err(|e| e.to_string())
        }
        Target::DataDir(_) => runtime
            .block_on(emberbase::ServerBuilder::new(config).invoke_function(name, module, event))
            .map_err(|e| e.to_string()),
    };
    let ran = match ran {
        Ok(ran) => ran,
        Err(e) => return fail(&e, 1),
    };
    let record = &ran.invocation;
    for line in &record.logs {
        eprintln!("{} {:5} {}", line.at, line.level, line.message);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&ran.result).unwrap_or_default()
    );
    let version = record.version.map_or_else(
        || "the given module".to_string(),
        |v| format!("version {v}"),
    );
    eprintln!(
        "{}: {} in {:.1} ms ({version}){}",
        name,
        record.status,
        record.duration_us as f64 / 1000.0,
        record
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    if record.status == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn ulid_now() -> String {
    ulid::Ulid::new().to_string()
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn new(name: &str, lang: scaffold::Lang, dir: Option<PathBuf>) -> ExitCode {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    match scaffold::create(name, lang, &dir) {
        Ok((files, readme)) => {
            println!("made {} in {}:", name, dir.display());
            for file in files {
                println!("  {}", file.display());
            }
            println!("\nNext, in {} (from its README.md):\n", dir.display());
            let commands = readme
                .split("```sh\n")
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .unwrap_or_default();
            print!("{commands}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 2),
    }
}
