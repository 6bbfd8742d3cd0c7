//! The `emberbase` command: a thin CLI over the library.

mod project;
mod scaffold;
mod transfer;

use clap::{Parser, Subcommand};
use emberbase::config::{Config, LogFormat, Overrides, DEFAULT_CONFIG_FILE};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// The version and the commit it was built from (`build.rs`; `unknown` outside a git checkout).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EB_BUILD_COMMIT"),
    ")"
);

/// Emberbase: auth, JSON documents, files and WebAssembly functions in one binary.
///
/// Start a server with `emberbase serve`. Every setting lives in `config/emberbase.toml`
/// (read from the working directory when present) and can be overridden by an environment
/// variable `EMBERBASE_<SECTION>__<KEY>` (for example `EMBERBASE_SERVER__BIND=0.0.0.0:7070`)
/// and then by the flags below.
#[derive(Parser)]
#[command(name = "emberbase", version = VERSION, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM, then shut down gracefully.
    ///
    /// On first start it creates the data directory and a service key (an admin secret for
    /// scripts) in `<data-dir>/service_key`; the log says where.
    Serve {
        /// Config file [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where data lives [default: ./emberbase_data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7070]; port 0 picks a free port.
        #[arg(long, value_name = "HOST:PORT")]
        bind: Option<String>,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API (the same as GET /v1/openapi.json).
    Openapi,
    /// Manage admins: on a running server (`--url`, with its service key in `EB_SERVICE_KEY`),
    /// or on a data directory that no running server holds open.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Work on functions: make a new function project, or run one on an event.
    Functions {
        #[command(subcommand)]
        command: FunctionsCommand,
    },
    /// Make a backup of a running server and download it.
    ///
    /// One archive with every document,
    /// file, account, function, configuration and server key, as one consistent snapshot taken
    /// while the server keeps serving. The archive also stays where the server keeps backups
    /// (`[backups]` in the config).
    ///
    /// Example: `EB_SERVICE_KEY=$(cat emberbase_data/service_key) emberbase backup --url
    /// http://127.0.0.1:7070 --out backup.tar.gz`
    Backup {
        /// The running server; its service key is read from the `EB_SERVICE_KEY` environment
        /// variable.
        #[arg(long, value_name = "URL")]
        url: String,
        /// Where to save the archive [default: its name, in the working directory].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Restore a backup archive into a data directory or a cluster.
    ///
    /// The whole archive is checked against its checksums before anything is written; the restored directory is built beside the
    /// target and takes its place only when complete. Stop the server first.
    ///
    /// Example: `emberbase restore backup.tar.gz --data-dir ./emberbase_data`
    Restore {
        /// The archive (`emberbase backup`, or downloaded from `GET /v1/admin/backups/{name}`).
        archive: PathBuf,
        /// The data directory to restore into [default: ./emberbase_data]; it must not exist
        /// or be empty, unless --force.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Restore over a data directory that holds data: it is moved aside to
        /// `<DIR>.before-restore-<time>`, never deleted.
        #[arg(long, conflicts_with = "cluster")]
        force: bool,
        /// Restore into a cluster instead: the empty PostgreSQL database of `store.url`, and
        /// the bucket of `files.url` for file bytes (from the config file and `EMBERBASE_*`
        /// variables).
        #[arg(long, conflicts_with = "data_dir")]
        cluster: bool,
        /// Config file, with --cluster [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE", requires = "cluster")]
        config: Option<PathBuf>,
    },
    /// Show what `apply` would change to make a server match the project file.
    ///
    /// Each collection, bucket, function, webhook and sign-in provider added, changed or
    /// removed, with a diff, and which changes are destructive. Changes nothing.
    ///
    /// Functions' `build` commands run first, so the code compared is the code `apply` would
    /// upload. Secrets are compared on the server, by a keyed hash; they are never read back.
    ///
    /// Examples: `emberbase plan` (the data directory ./emberbase_data, no server running),
    /// or `EB_SERVICE_KEY=... emberbase plan --url https://api.example.com`
    Plan {
        #[command(flatten)]
        target: project::Target,
    },
    /// Make the changes `plan` shows, to make a server match the project file.
    ///
    /// The changes are made in order; the first failure stops it, saying what was applied
    /// before. A second apply finds nothing to do. Destructive changes (removing a
    /// function, webhook or provider; dropping an index; resetting a collection or bucket the
    /// file no longer has; removing a secret) are refused unless --allow-delete; then nothing
    /// is changed.
    ///
    /// A new webhook's signing secret is printed once.
    Apply {
        #[command(flatten)]
        target: project::Target,
        /// Also make destructive changes.
        #[arg(long)]
        allow_delete: bool,
    },
    /// Write the project file from what a server has.
    ///
    /// Every configured collection, bucket, function (its code goes to functions/), webhook
    /// and sign-in provider; collection schemas to
    /// schemas/, and the file's JSON Schema beside it for editors. Secrets are written as
    /// `${NAME}` references to environment variables; set them before `plan`.
    Pull {
        #[command(flatten)]
        target: project::Target,
        /// Replace a project file that exists.
        #[arg(long)]
        force: bool,
    },
    /// Write every account, document and file of a server to a folder, to move or keep them.
    ///
    /// The folder holds JSON Lines (`users.jsonl` with password hashes,
    /// `collections/<name>.jsonl`, `files.jsonl`), the files' bytes under `files/`, and
    /// `manifest.json`, written last. The server keeps serving meanwhile: a write made during
    /// the export may or may not be in it (a backup is the consistent snapshot). Configuration
    /// is not data: `emberbase pull` writes it.
    ///
    /// Example: `emberbase export --out ./export` (the data directory ./emberbase_data), or
    /// `EB_SERVICE_KEY=... emberbase export --url https://api.example.com --out ./export`
    Export {
        #[command(flatten)]
        server: project::ServerArgs,
        /// The folder to write; it must not exist or be empty.
        #[arg(long, value_name = "FOLDER")]
        out: PathBuf,
    },
    /// Load accounts, documents and files into a server: from an export, a PocketBase data
    /// directory or a Firestore JSON export.
    ///
    /// Ids, owners, versions and times are kept; accounts keep their passwords (a bcrypt hash
    /// from PocketBase is accepted at the next sign-in and replaced by an argon2id one).
    /// Imports run no before-write hook, trigger or webhook. Anything that exists already or
    /// that the server refuses is skipped and listed at the end (then the exit code is 1), so
    /// running an import again after a failure completes it.
    ///
    /// Examples: `emberbase import ./export`, `emberbase import --pocketbase ./pb_data`,
    /// `emberbase import --firestore firestore.json --url https://api.example.com`
    Import {
        #[command(flatten)]
        from: transfer::ImportFrom,
        /// With --pocketbase: a relation field (to users) whose value becomes each record's
        /// and file's owner, so the default rules let that user read it.
        #[arg(long, value_name = "FIELD", requires = "pocketbase")]
        owner_field: Option<String>,
        #[command(flatten)]
        server: project::ServerArgs,
    },
    /// A development server that applies the project file as you edit it.
    ///
    /// The project file is applied on start and again whenever a file of the project changes
    /// (functions' `build` commands run and changed code is uploaded); seed data is loaded
    /// into a fresh data directory; a dev clock moves schedules forward.
    ///
    /// The data lives in a temporary directory, removed on exit, unless --data-dir. `POST
    /// /v1/admin/dev/clock {"advance_secs": 86400}` (or `{"to": "<RFC 3339 time>"}`) moves the
    /// clock of schedules and of `now()` in rules forward, so a daily function runs at once;
    /// that endpoint exists only here.
    ///
    /// Example: `emberbase dev --seed seed.json`, then edit emberbase.project.toml.
    Dev {
        /// The project file.
        #[arg(
            long,
            short = 'f',
            value_name = "FILE",
            default_value = "emberbase.project.toml"
        )]
        file: PathBuf,
        /// Keep the data in this directory [default: a temporary one, removed on exit].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Seed data loaded when the data directory is new: `{"collections": {"posts":
        /// {"p1": {"title": "Hello"}}}, "users": [{"email": "...", "password": "...",
        /// "admin": true}]}`.
        #[arg(long, value_name = "FILE")]
        seed: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7070]; port 0 picks a free port.
        #[arg(long, value_name = "HOST:PORT")]
        bind: Option<String>,
        /// Config file [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the project file, for editors.
    ///
    /// A `#:schema ./emberbase.project.schema.json` line at the top of
    /// `emberbase.project.toml` points Taplo and the TOML extensions of VS Code at it.
    ProjectSchema,
    /// Copy a single node into a cluster's PostgreSQL database.
    ///
    /// The database must be empty. Copied: documents, indexes, accounts and sessions, rules, buckets and file records, functions
    /// with their modules, and the secrets (service key, token signing keys), so that tokens
    /// issued before keep working. Stop the server first.
    ///
    /// The change history starts afresh (a realtime client resuming from before gets `reset`).
    /// File bytes are not copied: sync `<DIR>/files/blobs` to the bucket's `blobs/` prefix
    /// (for example `aws s3 sync ./emberbase_data/files/blobs s3://bucket/blobs`).
    ///
    /// Example: `emberbase migrate-storage --from sled:./emberbase_data --to "$DATABASE_URL"`
    MigrateStorage {
        /// The single node: `sled:<data directory>`.
        #[arg(long, value_name = "sled:DIR")]
        from: String,
        /// The cluster's database: `postgres://user:password@host:5432/db`.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin, or promote the user with this email to admin and set its password.
    ///
    /// Examples:
    ///
    /// `echo "$PASSWORD" | emberbase admin create --email me@example.com --password-stdin`
    /// (the server stopped), or against a running server:
    ///
    /// `echo "$PASSWORD" | EB_SERVICE_KEY=$(cat emberbase_data/service_key) emberbase admin
    /// create --url http://127.0.0.1:7070 --email me@example.com --password-stdin`
    Create {
        /// The admin's email.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input (required, so that it never
        /// appears in the shell history or the process list).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Config file [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where data lives [default: ./emberbase_data].
        #[arg(long, value_name = "DIR", conflicts_with = "url")]
        data_dir: Option<PathBuf>,
        /// A running server to ask instead of opening the data directory; the service key is
        /// read from the `EB_SERVICE_KEY` environment variable.
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum FunctionsCommand {
    /// Make a function project in a new folder: an HTTP function that greets, the guest SDK
    /// (written from this binary, so nothing else is needed), and a README whose commands build
    /// it and upload it to a server.
    ///
    /// Example: `emberbase functions new greet --lang assemblyscript`, then follow
    /// `greet/README.md`.
    New {
        /// The function's name (a-z 0-9 - _, starting with a letter).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        /// Where to make it [default: ./NAME]; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run a function once on an event from a file, and print its log lines, its result and
    /// how it went (exit status 1 when it failed). For trying a change before uploading it, or
    /// finding out why an event failed (`event` of an invocation record is such a file).
    ///
    /// Its host calls (reads and writes) go to a data directory that no server holds open
    /// (`--data-dir`, the default), or to a running server's HTTP API as its service key
    /// (`--url`, with the key in `EB_SERVICE_KEY`); either way the writes are real. Nothing is
    /// added to the function's invocation log.
    ///
    /// Examples:
    ///
    /// `emberbase functions invoke counter --event event.json --module build/counter.wasm`
    ///
    /// `EB_SERVICE_KEY=$(cat emberbase_data/service_key) emberbase functions invoke counter
    /// --event event.json --module build/counter.wasm --url http://127.0.0.1:7070`
    Invoke {
        /// The function's name; its deployed module runs unless --module is given.
        name: String,
        /// The event, as JSON: what a trigger, schedule or HTTP call gives the function (see
        /// docs/functions.md). `event_id`, `attempt` and `time` are filled in when absent.
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// A module to run instead of the deployed one (needed with --url).
        #[arg(long, value_name = "FILE")]
        module: Option<PathBuf>,
        /// Config file, for the limits [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory the host calls use [default: ./emberbase_data].
        #[arg(long, value_name = "DIR", conflicts_with = "url")]
        data_dir: Option<PathBuf>,
        /// A running server the host calls go to instead; its service key is read from the
        /// `EB_SERVICE_KEY` environment variable.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// Where `functions invoke` sends the host calls.
enum Target {
    DataDir(Option<PathBuf>),
    Url(String),
}

/// `functions invoke`.
fn functions_invoke(
    name: &str,
    event: &std::path::Path,
    module: Option<PathBuf>,
    config: Option<PathBuf>,
    target: Target,
) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            eprintln!("emberbase: cannot read {}: {e}", path.display());
            ExitCode::from(2)
        })
    };
    let event = match read(event) {
        Ok(bytes) => bytes,
        Err(code) => return code,
    };
    let mut event: serde_json::Value = match serde_json::from_slice(&event) {
        Ok(serde_json::Value::Object(event)) => serde_json::Value::Object(event),
        Ok(_) => {
            eprintln!("emberbase: the event must be a JSON object");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("emberbase: the event is not JSON: {e}");
            return ExitCode::from(2);
        }
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
    let config = match Config::load(config.as_deref(), &overrides) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ran = match target {
        Target::Url(url) => {
            let Some(key) = std::env::var("EB_SERVICE_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
            else {
                eprintln!("emberbase: --url needs the server's service key in EB_SERVICE_KEY");
                return ExitCode::from(2);
            };
            let Some(module) = module else {
                eprintln!("emberbase: --url needs --module: the module runs here");
                return ExitCode::from(2);
            };
            runtime
                .block_on(emberbase::invoke_remote(
                    &url,
                    key.trim(),
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
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::FAILURE;
        }
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

fn functions_new(name: &str, lang: scaffold::Lang, dir: Option<PathBuf>) -> ExitCode {
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
        Err(e) => {
            eprintln!("emberbase: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("emberbase: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// The password from standard input, and a runtime to act with.
fn password_and_runtime() -> Result<(String, tokio::runtime::Runtime), ExitCode> {
    Ok((read_password()?, runtime()?))
}

/// What `admin create` did, in `place` (a data directory or a server's URL).
fn report_admin(email: &str, id: &str, created: bool, place: &str) {
    if created {
        println!("created admin {email} ({id}) in {place}");
    } else {
        println!("{email} ({id}) is now an admin, with the new password");
    }
}

/// The first line of standard input, without its line ending.
fn read_password() -> Result<String, ExitCode> {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("emberbase: cannot read the password from standard input");
        return Err(ExitCode::from(2));
    }
    Ok(password.trim_end_matches(['\r', '\n']).to_string())
}

fn admin_create(
    email: String,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    url: Option<String>,
) -> ExitCode {
    if let Some(url) = url {
        return admin_create_remote(&email, &url);
    }
    let overrides = Overrides {
        bind: None,
        data_dir,
    };
    let config = match Config::load(config.as_deref(), &overrides) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::from(2);
        }
    };
    let (password, runtime) = match password_and_runtime() {
        Ok(both) => both,
        Err(code) => return code,
    };
    let dir = config.server.data_dir.display().to_string();
    match runtime.block_on(emberbase::ServerBuilder::new(config).create_admin(&email, password)) {
        Ok((user, created)) => {
            report_admin(
                user.email.as_deref().unwrap_or_default(),
                &user.id,
                created,
                &dir,
            );
            ExitCode::SUCCESS
        }
        Err(e @ emberbase::StartError::Store { .. }) => {
            eprintln!("emberbase: {e}\nemberbase: to add an admin while the server runs, pass --url and the service key in EB_SERVICE_KEY");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("emberbase: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The service key for `--url`, from `EB_SERVICE_KEY`.
fn service_key_from_env() -> Result<String, ExitCode> {
    match std::env::var("EB_SERVICE_KEY") {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => {
            eprintln!("emberbase: --url needs the server's service key in EB_SERVICE_KEY (for example EB_SERVICE_KEY=$(cat emberbase_data/service_key))");
            Err(ExitCode::from(2))
        }
    }
}

/// A progress bar of bytes, drawn only for a person at a terminal.
fn bytes_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}} left)"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// The error message of a JSON error answer, or the text itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// `backup --url`: starts a backup on the server, waits for it, downloads it.
fn backup(url: &str, out: Option<PathBuf>) -> ExitCode {
    let key = match service_key_from_env() {
        Ok(key) => key,
        Err(code) => return code,
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = format!("{}/v1/admin/backups", url.trim_end_matches('/'));
    let result = runtime.block_on(async {
        let client = reqwest::Client::new();
        let fail = |e: reqwest::Error| format!("cannot reach {base}: {e}");
        let started = client
            .post(&base)
            .bearer_auth(&key)
            .send()
            .await
            .map_err(fail)?;
        let status = started.status();
        let text = started.text().await.map_err(fail)?;
        if status.as_u16() != 202 {
            return Err(format!(
                "the server answered {status}: {}",
                error_message(&text)
            ));
        }
        let info: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let name = info["name"].as_str().unwrap_or_default().to_string();
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(format!("writing {name} on the server"));
        let ready = loop {
            spinner.tick();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let listed = client
                .get(&base)
                .bearer_auth(&key)
                .send()
                .await
                .map_err(fail)?;
            let list: serde_json::Value =
                serde_json::from_str(&listed.text().await.map_err(fail)?).unwrap_or_default();
            let item = list["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["name"] == name.as_str()).cloned());
            match item.as_ref().and_then(|i| i["state"].as_str()) {
                Some("running") => continue,
                Some("ready") => break item.unwrap_or_default(),
                Some(_) => {
                    let why = item
                        .as_ref()
                        .and_then(|i| i["error"].as_str())
                        .unwrap_or("?");
                    return Err(format!("backup {name} failed: {why}"));
                }
                None => return Err(format!("backup {name} is no longer listed")),
            }
        };
        spinner.finish_and_clear();
        let path = out.clone().unwrap_or_else(|| PathBuf::from(&name));
        let partial = path.with_extension("partial");
        let mut response = client
            .get(format!("{base}/{name}"))
            .bearer_auth(&key)
            .send()
            .await
            .map_err(fail)?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(format!(
                "the server answered {status}: {}",
                error_message(&text)
            ));
        }
        let bar = bytes_bar("downloading");
        bar.set_length(ready["size"].as_u64().unwrap_or(0));
        let mut file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            std::io::Write::write_all(&mut file, &chunk)
                .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
            bar.inc(chunk.len() as u64);
        }
        file.sync_all()
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        bar.finish_and_clear();
        Ok((name, path, bar.position()))
    });
    match result {
        Ok((name, path, size)) => {
            println!("backup {name} saved to {} ({size} bytes)", path.display());
            println!(
                "restore it with: emberbase restore {} --data-dir DIR",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emberbase: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where `restore` puts an archive.
enum RestoreInto {
    /// A data directory, and whether one that holds data may be moved aside.
    DataDir(PathBuf, bool),
    /// The cluster of a configuration (file, or the default one).
    Cluster(Option<PathBuf>),
}

/// `restore`: an archive into a data directory or a cluster.
fn restore(archive: &std::path::Path, into: RestoreInto) -> ExitCode {
    let bar = bytes_bar("checking");
    let phase = std::sync::Mutex::new("checking");
    let progress = |p: emberbase::RestoreProgress| {
        let mut shown = phase.lock().unwrap_or_else(|e| e.into_inner());
        if *shown != p.phase {
            *shown = p.phase;
            bar.set_style(bytes_bar(p.phase).style());
        }
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let (result, target) = match into {
        RestoreInto::DataDir(dir, force) => (
            emberbase::restore(archive, &dir, force, &progress),
            dir.display().to_string(),
        ),
        RestoreInto::Cluster(config) => {
            let config = match Config::load(config.as_deref(), &Overrides::default()) {
                Ok((config, _)) => config,
                Err(e) => {
                    eprintln!("emberbase: {e}");
                    return ExitCode::from(2);
                }
            };
            (
                emberbase::restore_cluster(archive, &config, &progress),
                "the cluster's database".to_string(),
            )
        }
    };
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!(
                "restored {} (taken {}) into {target}: {} keys, {} files, {} function modules, {} server keys",
                r.name, r.created_at, r.keys, r.files, r.modules, r.secrets
            );
            if let Some(aside) = r.replaced {
                println!(
                    "the data directory that was there is now {}",
                    aside.display()
                );
            }
            for note in r.notes {
                println!("note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(
            e @ (emberbase::RestoreError::NotEmpty(_)
            | emberbase::RestoreError::InUse(_)
            | emberbase::RestoreError::Target(_)),
        ) => {
            eprintln!("emberbase: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("emberbase: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `admin create --url`: asks a running server, as its service key.
fn admin_create_remote(email: &str, url: &str) -> ExitCode {
    let key = match service_key_from_env() {
        Ok(key) => key,
        Err(code) => return code,
    };
    let (password, runtime) = match password_and_runtime() {
        Ok(both) => both,
        Err(code) => return code,
    };
    // reqwest takes its TLS provider from the process, as the library's S3 client does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = format!("{}/v1/admin/admins", url.trim_end_matches('/'));
    let body = serde_json::json!({"email": email, "password": password}).to_string();
    let answer = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&endpoint)
            .bearer_auth(key.trim())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    });
    let (status, text) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("emberbase: cannot reach {endpoint}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let shown = |field: &str| json[field].as_str().unwrap_or("?").to_string();
    match status.as_u16() {
        code @ (200 | 201) => report_admin(&shown("email"), &shown("id"), code == 201, url),
        _ => {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or(text);
            eprintln!("emberbase: the server answered {status}: {message}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn migrate_storage(from: &str, to: &str) -> ExitCode {
    let Some(dir) = from.strip_prefix("sled:") else {
        eprintln!("emberbase: --from must be sled:<data directory>");
        return ExitCode::from(2);
    };
    if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
        eprintln!("emberbase: --to must be a postgres:// URL");
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} copying [{bar:40}] {pos}/{len} keys ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = runtime.block_on(async {
        let options = emberbase::engine::postgres::PostgresOptions::new(to);
        let engine = emberbase::engine::postgres::PostgresEngine::open(options)
            .await
            .map_err(|e| format!("cannot open the target database: {e}"))?;
        let migrated = emberbase::migrate_storage(std::path::Path::new(dir), &engine, &progress)
            .await
            .map_err(|e| e.to_string());
        let _ = emberbase::engine::Engine::close(&engine).await;
        migrated
    });
    bar.finish_and_clear();
    match result {
        Ok(m) => {
            println!(
                "copied {} keys, {} secrets and {} function modules from {dir}",
                m.keys, m.secrets, m.modules
            );
            println!(
                "file bytes stay in {dir}/files/blobs: copy them to the bucket's blobs/ prefix"
            );
            let key = std::path::Path::new(&dir).join("functions/secrets_key");
            if key.exists() {
                println!(
                    "functions' secrets are sealed with {}: set functions.secrets_key (EMBERBASE_FUNCTIONS__SECRETS_KEY) to its contents on every node",
                    key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emberbase: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bind: Option<String>,
) -> ExitCode {
    let overrides = Overrides { bind, data_dir };
    let (config, file) = match Config::load(config.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    match &file {
        Some(path) => tracing::info!(path = %path.display(), "loaded config"),
        None => tracing::info!("no {DEFAULT_CONFIG_FILE} found; using built-in defaults"),
    }
    let server = match emberbase::ServerBuilder::new(config).start().await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("emberbase: {e}");
            return ExitCode::FAILURE;
        }
    };
    release_freed_memory();
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and writes");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Gives memory that glibc holds freed back to the system: two seconds after startup (each
/// HTTP worker builds its routes, and throws away their OpenAPI description, once the server
/// runs) and every ten seconds after, so that a burst of work does not leave the server holding
/// its peak for good. glibc keeps freed blocks in its arenas otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trimmer = std::thread::Builder::new()
            .name("emberbase-trim".into())
            .spawn(|| {
                std::thread::sleep(std::time::Duration::from_secs(2));
                loop {
                    // SAFETY: `malloc_trim` takes no pointers; it only returns free pages to
                    // the system.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    std::thread::sleep(std::time::Duration::from_secs(10));
                }
            });
        if let Err(e) = trimmer {
            tracing::warn!(error = %e, "cannot start the thread that returns freed memory");
        }
    }
}

/// `emberbase dev`.
async fn dev(
    file: PathBuf,
    data_dir: Option<PathBuf>,
    seed: Option<PathBuf>,
    bind: Option<String>,
    config: Option<PathBuf>,
) -> ExitCode {
    let temporary = data_dir.is_none();
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("emberbase-dev-{}", ulid::Ulid::new()))
    });
    let fresh = std::fs::read_dir(&data_dir).map_or(true, |mut d| d.next().is_none());
    let overrides = Overrides {
        bind,
        data_dir: Some(data_dir.clone()),
    };
    let (config, _) = match Config::load(config.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let server = match emberbase::ServerBuilder::new(config)
        .dev_clock(true)
        .start()
        .await
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "emberbase dev: http://{} with the service key {} and data in {}{}",
        server.local_addr(),
        server.service_key(),
        data_dir.display(),
        if temporary { " (removed on exit)" } else { "" }
    );
    let session = project::dev::Dev::new(&server, file);
    let applied = session.apply().await;
    if let (Some(seed), true) = (seed, fresh) {
        if let Err(e) = session.seed(&seed).await {
            eprintln!("emberbase dev: {e}");
        }
    }
    let watcher = tokio::spawn(session.watch(applied));
    wait_for_signal().await;
    watcher.abort();
    server.shutdown().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => match emberbase::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("emberbase: {e}");
                ExitCode::FAILURE
            }
        },
        Command::MigrateStorage { from, to } => migrate_storage(&from, &to),
        Command::Plan { target } => project::plan(&target),
        Command::Apply {
            target,
            allow_delete,
        } => project::apply(&target, allow_delete),
        Command::Pull { target, force } => project::pull(&target, force),
        Command::ProjectSchema => project::print_schema(),
        Command::Export { server, out } => transfer::export(&server, &out),
        Command::Import {
            from,
            owner_field,
            server,
        } => transfer::import(&server, from, owner_field),
        Command::Dev {
            file,
            data_dir,
            seed,
            bind,
            config,
        } => match runtime() {
            Ok(rt) => rt.block_on(dev(file, data_dir, seed, bind, config)),
            Err(code) => code,
        },
        Command::Backup { url, out } => backup(&url, out),
        Command::Restore {
            archive,
            data_dir,
            force,
            cluster,
            config,
        } => {
            let into = if cluster {
                RestoreInto::Cluster(config)
            } else {
                RestoreInto::DataDir(
                    data_dir.unwrap_or_else(|| PathBuf::from("emberbase_data")),
                    force,
                )
            };
            restore(&archive, into)
        }
        Command::Functions {
            command: FunctionsCommand::New { name, lang, dir },
        } => functions_new(&name, lang, dir),
        Command::Functions {
            command:
                FunctionsCommand::Invoke {
                    name,
                    event,
                    module,
                    config,
                    data_dir,
                    url,
                },
        } => {
            let target = match url {
                Some(url) => Target::Url(url),
                None => Target::DataDir(data_dir),
            };
            functions_invoke(&name, &event, module, config, target)
        }
        Command::Serve {
            config,
            data_dir,
            bind,
        } => match runtime() {
            Ok(rt) => rt.block_on(serve(config, data_dir, bind)),
            Err(code) => code,
        },
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password_stdin: _,
                    config,
                    data_dir,
                    url,
                },
        } => admin_create(email, config, data_dir, url),
    }
}
