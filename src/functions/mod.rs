//! Wasm cloud functions: the registry (upload, config, artifacts), HTTP calls, durable
//! triggers and the invocation log.
//!
//! - A module is validated against the guest ABI (`runtime::check_abi`), compiled with metering,
//!   and stored as `functions/modules/<sha256>.wasm` plus an artifact
//!   `functions/artifacts/<key>.bin`, where the key covers the module's hash, the wasmer
//!   version and the compile settings; the artifact's own SHA-256 is kept in the function's
//!   record, and an artifact is loaded only if it matches (otherwise it is recompiled).
//! - Trigger events are written in the same transaction as the change that causes them (`Outbox`, a `CommitHook`), one per matching function, then delivered by one
//!   dispatcher task per function, in commit order, at least once: an event leaves the outbox
//!   only in the same commit as its invocation record.

mod dispatch;
mod error;
mod fetch;
mod hooks;
mod host;
mod invoke;
mod js;
mod local;
mod mail;
mod memories;
mod metering;
mod records;
mod registry;
pub mod runtime;
mod secrets;
mod tail;
mod tunables;
mod usage;

pub(crate) use dispatch::parse_cron;
pub use error::FunctionsError;
pub(crate) use error::Result;
pub use invoke::HttpResult;
pub use js::Language;
pub use local::{invoke_remote, LocalRun};
pub(crate) use records::check_name;
pub use records::{
    DailyQuota, DailyUsage, FetchConfig, FunctionConfig, FunctionInfo, FunctionVersion, Invocation,
    Trigger,
};
pub(crate) use registry::stored_modules;
pub use runtime::LogLine;
pub use secrets::FunctionSecret;
pub use tail::LogTail;
pub use usage::UsageReport;

use invoke::Outbox;
use records::FunctionRecord;

use crate::auth::Principal;
use crate::config::FunctionsConfig;
use crate::docs::Documents;
use crate::metrics::Metrics;
use crate::store::{Space, Store};
use crate::trace::Tracer;
use runtime::{Lane, Runtime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A loaded function, ready to run. Replacing a function swaps this `Arc`; invocations in
/// flight keep the one they started with.
struct Loaded {
    record: FunctionRecord,
    module: runtime::Program,
}

struct Inner {
    store: Store,
    docs: Documents,
    runtime: Arc<Runtime>,
    modules_dir: PathBuf,
    artifacts_dir: PathBuf,
    config: FunctionsConfig,
    metrics: Arc<Metrics>,
    tracer: Tracer,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    /// Counts the changes this node makes to `loaded` (upload, configure, delete), each made
    /// after its store write. A reload applies what it read only if none happened meanwhile,
    /// else it reads again: a function deleted here never comes back from an earlier read.
    generation: Mutex<u64>,
    /// Every trigger of every function, for the commit hook (which runs on the writer thread).
    triggers: RwLock<Arc<Vec<(String, records::Armed)>>>,
    dispatch: crate::delivery::Dispatchers,
    tokio: tokio::runtime::Handle,
    /// Each loaded function's log budget (entries go with their function).
    log_budgets: Mutex<HashMap<String, Arc<host::LogBudget>>>,
    /// Each function's `fetch` client, built for its allow-list.
    fetchers: Mutex<HashMap<String, Arc<fetch::Access>>>,
    /// Where `mail.send` goes, and what each function may still send this hour.
    mailer: crate::mail::Mailer,
    mail_budgets: Mutex<HashMap<String, Arc<mail::MailBudget>>>,
    /// The usage of silent before-write hook runs, until it is stored.
    hook_usage: hooks::PendingUsage,
    /// This process, as named in the leases it holds in a cluster (see `lease`).
    node: String,
    /// Whether this process delivers events (a server) or only queues them (a CLI run).
    deliver: bool,
    /// Set when the server stops, to end the log tails.
    streams_closed: tokio::sync::watch::Sender<bool>,
    /// The keys of the functions' secrets.
    secrets: Arc<secrets::SecretBox>,
}

/// The function service ([`Server::functions`](crate::Server::functions)): upload a
/// WebAssembly module (or JavaScript, [`upload_javascript`](Self::upload_javascript)),
/// configure its triggers and limits, call it, and read its invocations.
/// Every call runs in a fresh sandboxed instance, metered and memory-capped. Cheap to clone.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = emberbase::Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// use emberbase::{FunctionConfig, FunctionsError, Principal, Trigger};
/// use serde_json::json;
///
/// // The smallest guest: `alloc`, and a `handle` that answers with a fixed JSON response.
/// let wasm = wat::parse_str(r#"(module
///   (memory (export "memory") 1)
///   (data (i32.const 16) "{\"status\":200,\"body\":{\"hello\":\"world\"}}")
///   (global $heap (mut i32) (i32.const 1024))
///   (func (export "alloc") (param $n i32) (result i32)
///     (local $p i32)
///     (local.set $p (global.get $heap))
///     (global.set $heap (i32.add (local.get $p) (local.get $n)))
///     (local.get $p))
///   (func (export "handle") (param i32 i32) (result i64)
///     (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 39))))"#)?;
///
/// let functions = server.functions();
/// functions.upload(&Principal::Service, "hello", wasm).await?;
/// let http = Trigger { on: "http".into(), collection: None, bucket: None, cron: None, when: None };
/// let config = FunctionConfig { triggers: vec![http], ..Default::default() };
/// functions.configure(&Principal::Service, "hello", config).await?;
///
/// let answer = functions.call_http(&Principal::Anonymous, "hello", json!({})).await?;
/// assert_eq!((answer.status, answer.body), (200, json!({"hello": "world"})));
/// let missing = functions.call_http(&Principal::Anonymous, "nope", json!({})).await;
/// assert!(matches!(missing, Err(FunctionsError::NoHttpTrigger(_))));
///
/// // The same function in JavaScript, run by the engine the server ships.
/// let source = b"export default (event) => ({ status: 200, body: { hello: 'world' } });";
/// let info = functions.upload_javascript(&Principal::Service, "hello", source.to_vec()).await?;
/// assert_eq!(info.language, emberbase::Language::JavaScript);
/// let answer = functions.call_http(&Principal::Anonymous, "hello", json!({})).await?;
/// assert_eq!(answer.body, json!({"hello": "world"}));
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

/// The server's services a function runs against.
pub(crate) struct Services {
    pub store: Store,
    pub docs: Documents,
    pub metrics: Arc<Metrics>,
    pub tracer: Tracer,
    /// Where `mail.send` goes.
    pub mailer: crate::mail::Mailer,
}

impl Functions {
    /// Opens the function directories, loads every stored function (recompiling artifacts that
    /// are missing, stale or do not match their recorded hash), installs the outbox hook and,
    /// when it is to `deliver`, starts one dispatcher per function. Must run inside the tokio
    /// runtime.
    pub(crate) async fn start(
        data_dir: &Path,
        services: Services,
        config: &FunctionsConfig,
        deliver: bool,
    ) -> std::result::Result<Functions, String> {
        let Services {
            store,
            docs,
            metrics,
            tracer,
            mailer,
        } = services;
        let root = data_dir.join("functions");
        // `registry::stored_modules` reads this layout too.
        let modules_dir = root.join("modules");
        let artifacts_dir = root.join("artifacts");
        for dir in [&modules_dir, &artifacts_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let workers = match config.workers {
            // A run holds its thread while each of its writes is flushed, which is I/O, not
            // CPU: four per core let runs overlap those waits (measured: 1.5k to 2.2k events/s
            // at concurrency 8 on two cores, where one per core kept two writes in flight).
            0 => 4 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let secrets = Arc::new(secrets::SecretBox::load(&config.secrets_key, data_dir)?);
        let runtime = Runtime::start(workers, config.hook_workers, config.queue)?;
        let functions = Functions {
            inner: Arc::new(Inner {
                store: store.clone(),
                docs,
                runtime,
                modules_dir,
                artifacts_dir,
                config: config.clone(),
                metrics,
                tracer,
                loaded: RwLock::new(HashMap::new()),
                generation: Mutex::new(0),
                triggers: RwLock::new(Arc::new(Vec::new())),
                dispatch: crate::delivery::Dispatchers::default(),
                tokio: tokio::runtime::Handle::current(),
                log_budgets: Mutex::new(HashMap::new()),
                fetchers: Mutex::new(HashMap::new()),
                mailer,
                mail_budgets: Mutex::new(HashMap::new()),
                hook_usage: Default::default(),
                node: ulid::Ulid::new().to_string(),
                deliver,
                streams_closed: tokio::sync::watch::Sender::new(false),
                secrets,
            }),
        };
        let records = store
            .kv_scan(Space::Functions, None, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
        for (_, bytes) in records {
            let record: FunctionRecord =
                serde_json::from_slice(&bytes).map_err(|e| format!("function record: {e}"))?;
            let name = record.info.name.clone();
            match functions.load(record).await {
                Ok(loaded) => functions.install(loaded),
                Err(e) => tracing::error!(function = %name, error = %e, "cannot load function"),
            }
        }
        store.set_commit_hook("functions", Some(Arc::new(Outbox(functions.clone()))));
        functions
            .inner
            .docs
            .set_write_hooks(Arc::new(hooks::Hooks(Arc::downgrade(&functions.inner))));
        functions.flush_hook_usage();
        if deliver {
            dispatch::start_waker(&functions);
        }
        Ok(functions)
    }

    /// Stops the dispatchers and the worker threads, and detaches the outbox from the store
    /// (which also ends the reference cycle between them).
    pub(crate) fn stop(&self) {
        self.inner.store.set_commit_hook("functions", None);
        self.inner.dispatch.stop();
        self.inner.runtime.stop();
    }

    fn loaded(&self, name: &str) -> Option<Arc<Loaded>> {
        self.inner.loaded.read().ok()?.get(name).cloned()
    }

    fn require_admin(who: &Principal) -> Result<()> {
        Ok(who.require_admin("manage functions")?)
    }
}
