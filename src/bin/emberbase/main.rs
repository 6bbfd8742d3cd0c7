//! The `emberbase` command: a thin CLI over the library.

mod admins;
mod backup;
mod common;
mod functions;
mod migrate;
mod project;
mod scaffold;
mod serve;
mod transfer;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// With `--features mimalloc`: faster allocation for more resident memory (README: "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// (`[backups]` in the config). A server writes one backup at a time: when another is
    /// running (a scheduled one), this waits for it, then makes its own.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => match emberbase::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => common::fail(&e.to_string(), 1),
        },
        Command::MigrateStorage { from, to } => migrate::migrate_storage(&from, &to),
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
        } => match common::runtime() {
            Ok(rt) => rt.block_on(serve::dev(file, data_dir, seed, bind, config)),
            Err(code) => code,
        },
        Command::Backup { url, out } => backup::backup(&url, out),
        Command::Restore {
            archive,
            data_dir,
            force,
            cluster,
            config,
        } => {
            let into = if cluster {
                backup::RestoreInto::Cluster(config)
            } else {
                backup::RestoreInto::DataDir(
                    data_dir.unwrap_or_else(|| PathBuf::from("emberbase_data")),
                    force,
                )
            };
            backup::restore(&archive, into)
        }
        Command::Functions {
            command: FunctionsCommand::New { name, lang, dir },
        } => functions::new(&name, lang, dir),
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
                Some(url) => functions::Target::Url(url),
                None => functions::Target::DataDir(data_dir),
            };
            functions::invoke(&name, &event, module, config, target)
        }
        Command::Serve {
            config,
            data_dir,
            bind,
        } => match common::runtime() {
            Ok(rt) => rt.block_on(serve::serve(config, data_dir, bind)),
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
        } => admins::create(email, config, data_dir, url),
    }
}
