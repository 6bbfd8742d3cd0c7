//! Wasm cloud functions: the registry (upload, config, artifacts), HTTP calls, durable
//! triggers and the invocation log.
//!
//! - A module is validated against the guest ABI (`runtime::check_abi`), compiled with metering,
//!   and stored as `functions/modules/<sha256>.wasm` plus an artifact
//!   `functions/artifacts/<key>.bin`, where the key covers the module's hash, the wasmer
//!   version and the compile settings; the artifact's own SHA-256 is kept in the function's
//!   record, and an artifact is loaded only if it matches (otherwise it is recompiled).
//! - Trigger events are written by the store's writer in the same batch as the change that
//!   causes them (`Outbox`, a `CommitHook`), one per matching function, then delivered by one
//!   dispatcher task per function, in commit order, at least once: an event leaves the outbox
//!   only in the same commit as its invocation record.

mod dispatch;
mod error;
mod host;
pub mod runtime;
mod tunables;

pub use error::{FunctionsError, Result};

use crate::auth::Principal;
use crate::config::FunctionsConfig;
use crate::docs::{check_collection, Documents};
use error::{internal, invalid};
use crate::metrics::Metrics;
use crate::model::{now_rfc3339, Change, Subject};
use crate::store::{CommitHook, HookRecord, KvWrite, Space, Store};
use runtime::{Failure, Lane, Limits, LogLine, Outcome, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The most memory a function may be given, in MiB.
const MAX_MEMORY_MB: u64 = 4096;

/// What makes a function run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// `create`, `update`, `delete` or `write` (all three) on a collection or bucket; `http`;
    /// `schedule`.
    pub on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// For `schedule`: a five-field cron expression, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
}

impl Trigger {
    /// Whether a change fires this trigger.
    fn matches(&self, change: &Change) -> bool {
        let kind_ok = self.on == "write" || self.on == change.kind.as_str();
        kind_ok
            && match &change.subject {
                Subject::Document { collection, .. } => {
                    self.collection.as_deref() == Some(collection.as_str())
                }
                Subject::File { bucket, .. } => self.bucket.as_deref() == Some(bucket.as_str()),
            }
    }
}

/// A function's configuration; every field but `triggers` is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Metering points per invocation (default `functions.fuel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Host calls per invocation (default `functions.max_host_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_host_calls: Option<u32>,
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
    pub config: FunctionConfig,
    pub created_at: String,
    pub updated_at: String,
}

/// The stored record: the public info and the artifact it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FunctionRecord {
    #[serde(flatten)]
    info: FunctionInfo,
    /// The artifact's file key and the SHA-256 of its bytes.
    artifact_key: String,
    artifact_sha256: String,
}

/// One run of a function (or an event that was not delivered).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invocation {
    pub id: String,
    pub event_id: String,
    /// `create`, `update`, `delete`, `http` or `schedule`.
    pub trigger: String,
    /// `ok`, `error`, `timeout`, `dead` (the last failed attempt) or `dropped` (over the depth
    /// limit).
    pub status: String,
    pub attempt: u32,
    pub duration_us: u64,
    /// For failures: `trap`, `fuel`, `timeout`, `host_calls`, `instantiate` or `result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
    pub at: String,
}

/// A loaded function, ready to run. Replacing a function swaps this `Arc`; invocations in
/// flight keep the one they started with.
struct Loaded {
    record: FunctionRecord,
    module: wasmer::Module,
}

struct Inner {
    store: Store,
    docs: Documents,
    runtime: Arc<Runtime>,
    modules_dir: PathBuf,
    artifacts_dir: PathBuf,
    config: FunctionsConfig,
    metrics: Arc<Metrics>,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    /// Every trigger of every function, for the commit hook (which runs on the writer thread).
    triggers: RwLock<Arc<Vec<(String, Trigger)>>>,
    dispatch: dispatch::Dispatchers,
    tokio: tokio::runtime::Handle,
    /// Each loaded function's log budget (entries go with their function).
    log_budgets: Mutex<HashMap<String, Arc<host::LogBudget>>>,
}

/// The function service. Cheap to clone.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

pub fn check_name(name: &str) -> Result<()> {
    check_collection(name).map_err(|_| {
        FunctionsError::BadRequest(format!(
            "invalid function name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn artifact_key(module_sha: &str) -> String {
    let mut h = Sha256::new();
    h.update(module_sha.as_bytes());
    h.update(b"\0");
    h.update(runtime::COMPILE_VERSION.as_bytes());
    hex(&h.finalize())
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn failure_kind(f: &Failure) -> &'static str {
    match f {
        Failure::Trap(_) => "trap",
        Failure::Fuel => "fuel",
        Failure::Timeout => "timeout",
        Failure::HostCalls => "host_calls",
        Failure::Instantiate(_) => "instantiate",
    }
}

/// The result of an HTTP call of a function.
pub struct HttpResult {
    pub status: u16,
    pub body: Value,
}

impl Functions {
    /// Opens the function directories, loads every stored function (recompiling artifacts that
    /// are missing, stale or do not match their recorded hash), installs the outbox hook and
    /// starts one dispatcher per function. Must run inside the tokio runtime.
    pub async fn start(
        data_dir: &Path,
        store: Store,
        docs: Documents,
        config: &FunctionsConfig,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Functions, String> {
        let root = data_dir.join("functions");
        let modules_dir = root.join("modules");
        let artifacts_dir = root.join("artifacts");
        for dir in [&modules_dir, &artifacts_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let runtime = Runtime::start(workers, config.queue)?;
        let functions = Functions {
            inner: Arc::new(Inner {
                store: store.clone(),
                docs,
                runtime,
                modules_dir,
                artifacts_dir,
                config: config.clone(),
                metrics,
                loaded: RwLock::new(HashMap::new()),
                triggers: RwLock::new(Arc::new(Vec::new())),
                dispatch: dispatch::Dispatchers::default(),
                tokio: tokio::runtime::Handle::current(),
                log_budgets: Mutex::new(HashMap::new()),
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
            match functions.load(record) {
                Ok(loaded) => functions.install(loaded),
                Err(e) => tracing::error!(function = %name, error = %e, "cannot load function"),
            }
        }
        store.set_commit_hook(Some(Arc::new(Outbox(functions.clone()))));
        dispatch::start_waker(&functions);
        Ok(functions)
    }

    /// Stops the dispatchers and the worker threads, and detaches the outbox from the store
    /// (which also ends the reference cycle between them).
    pub fn stop(&self) {
        self.inner.store.set_commit_hook(None);
        self.inner.dispatch.stop();
        self.inner.runtime.stop();
    }

    /// Loads a function's artifact, or recompiles it from the module when the artifact is
    /// missing, was built by another wasmer or compile setting, or does not match its hash.
    fn load(&self, mut record: FunctionRecord) -> std::result::Result<Loaded, String> {
        let key = artifact_key(&record.info.sha256);
        let path = self.inner.artifacts_dir.join(format!("{key}.bin"));
        if key == record.artifact_key {
            if let Ok(bytes) = std::fs::read(&path) {
                if hex(&Sha256::digest(&bytes)) == record.artifact_sha256 {
                    match self.inner.runtime.load(&bytes) {
                        Ok(module) => return Ok(Loaded { record, module }),
                        Err(e) => {
                            tracing::warn!(function = %record.info.name, error = %e, "the artifact does not load")
                        }
                    }
                }
            }
        }
        tracing::info!(function = %record.info.name, "recompiling the function's artifact");
        let wasm = std::fs::read(self.module_path(&record.info.sha256))
            .map_err(|e| format!("cannot read the module: {e}"))?;
        let (_, artifact) = runtime::compile(&wasm)?;
        write_durably(&path, &artifact).map_err(|e| format!("cannot write the artifact: {e}"))?;
        record.artifact_key = key;
        record.artifact_sha256 = hex(&Sha256::digest(&artifact));
        let module = self.inner.runtime.load(&artifact)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let (store, name) = (self.inner.store.clone(), record.info.name.clone());
        // The record is rewritten in the background: the artifact is valid either way.
        self.inner.tokio.spawn(async move {
            let write = KvWrite::default().put(Space::Functions, name.as_bytes(), bytes);
            if let Err(e) = store.kv_write(write).await {
                tracing::warn!(function = %name, error = %e, "cannot record the new artifact");
            }
        });
        Ok(Loaded { record, module })
    }

    fn module_path(&self, sha: &str) -> PathBuf {
        self.inner.modules_dir.join(format!("{sha}.wasm"))
    }

    /// Makes a loaded function current: new invocations use it, triggers follow its config,
    /// and its dispatcher runs.
    fn install(&self, loaded: Loaded) {
        let name = loaded.record.info.name.clone();
        if let Ok(mut map) = self.inner.loaded.write() {
            map.insert(name.clone(), Arc::new(loaded));
        }
        self.rebuild_triggers();
        dispatch::ensure(self, &name);
    }

    fn rebuild_triggers(&self) {
        let all: Vec<(String, Trigger)> = match self.inner.loaded.read() {
            Ok(map) => map
                .iter()
                .flat_map(|(name, l)| {
                    l.record
                        .info
                        .config
                        .triggers
                        .iter()
                        .map(move |t| (name.clone(), t.clone()))
                })
                .collect(),
            Err(_) => return,
        };
        if let Ok(mut slot) = self.inner.triggers.write() {
            *slot = Arc::new(all);
        }
    }

    fn loaded(&self, name: &str) -> Option<Arc<Loaded>> {
        self.inner.loaded.read().ok()?.get(name).cloned()
    }

    fn require_admin(who: &Principal) -> Result<()> {
        Ok(who.require_admin("manage functions")?)
    }

    /// The log budget of a loaded function, shared by all its invocations.
    fn log_budget(&self, name: &str) -> Arc<host::LogBudget> {
        let per_minute = self.inner.config.log_bytes_per_minute;
        match self.inner.log_budgets.lock() {
            Ok(mut budgets) => budgets
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(host::LogBudget::new(per_minute)))
                .clone(),
            Err(_) => Arc::new(host::LogBudget::new(0)),
        }
    }

    /// The limits of one invocation of a function with `config`.
    fn limits(&self, config: &FunctionConfig) -> Limits {
        let c = &self.inner.config;
        Limits {
            memory_bytes: config.memory_mb.unwrap_or(c.memory_mb) * 1024 * 1024,
            timeout: Duration::from_millis(config.timeout_ms.unwrap_or(c.timeout_ms)),
            fuel: config.fuel.unwrap_or(c.fuel),
            host_calls: config.max_host_calls.unwrap_or(c.max_host_calls),
            max_io_bytes: 1024 * 1024,
            max_log_lines: 100,
            max_log_bytes: 4096,
            max_log_total: c.max_log_bytes,
        }
    }

    /// Uploads (or replaces) a function's module. The config of an existing function is kept.
    pub async fn upload(&self, who: &Principal, name: &str, wasm: Vec<u8>) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        let max = self.inner.config.max_module_bytes;
        if wasm.len() > max {
            return Err(FunctionsError::TooLarge { max });
        }
        let previous = self.loaded(name);
        let config = previous
            .as_ref()
            .map(|l| l.record.info.config.clone())
            .unwrap_or_default();
        let memory = self.limits(&config).memory_bytes;
        let max_table_elements = self.inner.config.max_table_elements;
        let sha = hex(&Sha256::digest(&wasm));
        let (module_path, key) = (self.module_path(&sha), artifact_key(&sha));
        let artifact_path = self.inner.artifacts_dir.join(format!("{key}.bin"));
        let size = wasm.len() as u64;
        let artifact = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let (module, artifact) = runtime::compile(&wasm).map_err(FunctionsError::InvalidModule)?;
            runtime::check_abi(&module, memory, max_table_elements)
                .map_err(FunctionsError::InvalidModule)?;
            write_durably(&module_path, &wasm).map_err(internal)?;
            write_durably(&artifact_path, &artifact).map_err(internal)?;
            Ok(artifact)
        })
        .await
        .map_err(internal)??;
        let module = self
            .inner
            .runtime
            .load(&artifact)
            .map_err(internal)?;
        let now = now_rfc3339();
        let record = FunctionRecord {
            info: FunctionInfo {
                name: name.to_string(),
                sha256: sha,
                size,
                config,
                created_at: previous
                    .as_ref()
                    .map_or_else(|| now.clone(), |l| l.record.info.created_at.clone()),
                updated_at: now,
            },
            artifact_key: key,
            artifact_sha256: hex(&Sha256::digest(&artifact)),
        };
        self.save(&record).await?;
        let info = record.info.clone();
        self.install(Loaded { record, module });
        Ok(info)
    }

    async fn save(&self, record: &FunctionRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(internal)?;
        let write = KvWrite::default().put(Space::Functions, record.info.name.as_bytes(), bytes);
        Ok(self.inner.store.kv_write(write).await?)
    }

    /// Sets a function's triggers and limits.
    pub async fn configure(
        &self,
        who: &Principal,
        name: &str,
        config: FunctionConfig,
    ) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        self.check_config(&config)?;
        let current = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let mut record = current.record.clone();
        record.info.config = config;
        record.info.updated_at = now_rfc3339();
        self.save(&record).await?;
        let info = record.info.clone();
        self.install(Loaded {
            record,
            module: current.module.clone(),
        });
        Ok(info)
    }

    fn check_config(&self, config: &FunctionConfig) -> Result<()> {
        for (i, t) in config.triggers.iter().enumerate() {
            let field = format!("triggers[{i}]");
            let bad = |why: &str| Err(invalid(format!("{field}: {why}"), &field));
            match t.on.as_str() {
                "create" | "update" | "delete" | "write" => {
                    match (&t.collection, &t.bucket) {
                        (Some(c), None) | (None, Some(c)) => {
                            if check_collection(c).is_err() {
                                return bad("invalid collection or bucket name");
                            }
                        }
                        _ => return bad("name exactly one of `collection` and `bucket`"),
                    }
                    if t.cron.is_some() {
                        return bad("`cron` is only for schedule triggers");
                    }
                }
                "http" => {
                    if t.collection.is_some() || t.bucket.is_some() || t.cron.is_some() {
                        return bad("an http trigger takes no other field");
                    }
                }
                "schedule" => {
                    let Some(cron) = &t.cron else {
                        return bad("a schedule trigger needs `cron`");
                    };
                    if let Err(e) = dispatch::parse_cron(cron) {
                        return bad(&format!("invalid cron {cron:?}: {e}"));
                    }
                    if t.collection.is_some() || t.bucket.is_some() {
                        return bad("a schedule trigger takes no collection or bucket");
                    }
                }
                other => {
                    return bad(&format!(
                        "unknown trigger {other:?}: use create, update, delete, write, http or schedule"
                    ))
                }
            }
        }
        if config.timeout_ms == Some(0) || config.timeout_ms.is_some_and(|t| t > 600_000) {
            return Err(invalid(
                "timeout_ms must be 1 to 600000",
                "timeout_ms",
            ));
        }
        if config.memory_mb == Some(0) || config.memory_mb.is_some_and(|m| m > MAX_MEMORY_MB) {
            return Err(invalid(
                format!("memory_mb must be 1 to {MAX_MEMORY_MB}"),
                "memory_mb",
            ));
        }
        if config.fuel == Some(0) || config.max_host_calls == Some(0) {
            return Err(invalid(
                "fuel and max_host_calls must be positive",
                "fuel",
            ));
        }
        if config.max_retries.is_some_and(|r| r > 100) {
            return Err(invalid(
                "max_retries must be 0 to 100",
                "max_retries",
            ));
        }
        Ok(())
    }

    pub fn get(&self, who: &Principal, name: &str) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        self.loaded(name)
            .map(|l| l.record.info.clone())
            .ok_or_else(|| FunctionsError::NotFound(name.into()))
    }

    pub fn list(&self, who: &Principal) -> Result<Vec<FunctionInfo>> {
        Self::require_admin(who)?;
        let mut items: Vec<FunctionInfo> = match self.inner.loaded.read() {
            Ok(map) => map.values().map(|l| l.record.info.clone()).collect(),
            Err(_) => Vec::new(),
        };
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    /// Deletes a function, its pending events and its invocation log.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        Self::require_admin(who)?;
        check_name(name)?;
        let removed = match self.inner.loaded.write() {
            Ok(mut map) => map.remove(name),
            Err(_) => None,
        };
        let Some(removed) = removed else {
            return Err(FunctionsError::NotFound(name.into()));
        };
        self.rebuild_triggers();
        self.inner.dispatch.remove(name);
        if let Ok(mut budgets) = self.inner.log_budgets.lock() {
            budgets.remove(name);
        }
        let mut write = KvWrite::default().delete(Space::Functions, name.as_bytes());
        let prefix = dispatch::function_prefix(name);
        for space in [Space::Events, Space::Invocations, Space::Schedules] {
            for (key, _) in self
                .inner
                .store
                .kv_prefix(space, &prefix, usize::MAX)
                .await?
            {
                write = write.delete(space, key);
            }
        }
        write = write.delete(Space::Schedules, name.as_bytes());
        self.inner.store.kv_write(write).await?;
        let still_used = self
            .list(&Principal::Service)?
            .iter()
            .any(|f| f.sha256 == removed.record.info.sha256);
        if !still_used {
            let _ = std::fs::remove_file(self.module_path(&removed.record.info.sha256));
            let _ = std::fs::remove_file(
                self.inner
                    .artifacts_dir
                    .join(format!("{}.bin", removed.record.artifact_key)),
            );
        }
        Ok(())
    }

    /// The latest invocations of a function, newest first.
    pub async fn invocations(
        &self,
        who: &Principal,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Invocation>> {
        Self::require_admin(who)?;
        check_name(name)?;
        if self.loaded(name).is_none() {
            return Err(FunctionsError::NotFound(name.into()));
        }
        if !(1..=1000).contains(&limit) {
            return Err(FunctionsError::BadRequest("limit must be 1 to 1000".into()));
        }
        self.inner
            .store
            .kv_prefix_last(Space::Invocations, &dispatch::function_prefix(name), limit)
            .await?
            .into_iter()
            .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(internal))
            .collect()
    }

    /// Runs one invocation of `function` with an event, as the function's principal.
    async fn run(&self, lane: Lane, loaded: &Loaded, event: &Value, depth: u32) -> Result<Outcome> {
        let name = loaded.record.info.name.clone();
        let host = Arc::new(host::DocumentHost {
            docs: self.inner.docs.clone(),
            who: Principal::Function {
                name: name.clone(),
                depth,
            },
            runtime: self.inner.tokio.clone(),
            function: name.clone(),
            log_budget: self.log_budget(&name),
        });
        let input = serde_json::to_vec(event).map_err(internal)?;
        let limits = self.limits(&loaded.record.info.config);
        let outcome = self
            .inner
            .runtime
            .invoke(lane, loaded.module.clone(), input, limits, host)
            .await
            .map_err(FunctionsError::Busy)?;
        let status = match &outcome.result {
            Ok(_) => "ok",
            Err(Failure::Timeout) => "timeout",
            Err(_) => "error",
        };
        let m = &self.inner.metrics;
        m.function_invocations
            .with_label_values(&[name.as_str(), status])
            .inc();
        m.function_duration
            .with_label_values(&[name.as_str()])
            .observe(outcome.duration.as_secs_f64());
        Ok(outcome)
    }

    /// Calls a function that has an `http` trigger, with `auth` from the caller.
    pub async fn call_http(&self, who: &Principal, name: &str, body: Value) -> Result<HttpResult> {
        check_name(name)?;
        let loaded = self
            .loaded(name)
            .filter(|l| l.record.info.config.triggers.iter().any(|t| t.on == "http"))
            .ok_or_else(|| FunctionsError::NoHttpTrigger(name.into()))?;
        let event = json!({"v": 1, "trigger": "http", "method": "POST", "body": body,
            "auth": who.auth_value(), "time": now_rfc3339()});
        let outcome = self.run(Lane::Http, &loaded, &event, 1).await?;
        let event_id = ulid::Ulid::new().to_string();
        let (status, failure, error) = outcome_status(&outcome.result);
        let record = Invocation {
            id: ulid::Ulid::new().to_string(),
            event_id,
            trigger: "http".into(),
            status: status.into(),
            attempt: 1,
            duration_us: outcome.duration.as_micros() as u64,
            failure,
            error: error.clone(),
            logs: outcome.logs,
            at: now_rfc3339(),
        };
        let functions = self.clone();
        let fname = name.to_string();
        tokio::spawn(async move {
            let write = functions
                .record_invocation(KvWrite::default(), &fname, &record)
                .await;
            if let Err(e) = functions.inner.store.kv_write(write).await {
                tracing::warn!(function = %fname, error = %e, "cannot record an invocation");
            }
        });
        let result = outcome.result.map_err(|f| {
            FunctionsError::Failed(format!("function {name} failed: {f}"))
        })?;
        let value = match result {
            None => Value::Null,
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                FunctionsError::Failed(format!("function {name} returned invalid JSON: {e}"))
            })?,
        };
        let status = value
            .get("status")
            .and_then(Value::as_u64)
            .filter(|s| (200..=599).contains(s));
        Ok(match status {
            Some(status) => HttpResult {
                status: status as u16,
                body: value.get("body").cloned().unwrap_or(Value::Null),
            },
            None => HttpResult {
                status: 200,
                body: value,
            },
        })
    }

    /// Adds an invocation record (and the pruning of the oldest beyond the limit) to a write.
    async fn record_invocation(&self, write: KvWrite, name: &str, record: &Invocation) -> KvWrite {
        let mut key = dispatch::function_prefix(name);
        key.extend_from_slice(record.id.as_bytes());
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        let mut write = write.put(Space::Invocations, key, bytes);
        let kept = self.inner.config.invocations_kept;
        if let Ok(old) = self
            .inner
            .store
            .kv_prefix_last(
                Space::Invocations,
                &dispatch::function_prefix(name),
                kept + 16,
            )
            .await
        {
            for (key, _) in old.into_iter().skip(kept.saturating_sub(1)) {
                write = write.delete(Space::Invocations, key);
            }
        }
        write
    }
}

/// The invocation status, failure kind and error message of a result.
fn outcome_status(
    result: &std::result::Result<Option<Vec<u8>>, Failure>,
) -> (&'static str, Option<String>, Option<String>) {
    match result {
        Ok(_) => ("ok", None, None),
        Err(Failure::Timeout) => (
            "timeout",
            Some("timeout".into()),
            Some(Failure::Timeout.to_string()),
        ),
        Err(f) => ("error", Some(failure_kind(f).into()), Some(f.to_string())),
    }
}

/// The outbox: for each committed change, one pending event per function it triggers, written
/// in the same batch as the change (or, past the depth limit, a `dropped` record).
struct Outbox(Functions);

impl CommitHook for Outbox {
    fn records(&self, change: &Change) -> Vec<HookRecord> {
        let triggers = match self.0.inner.triggers.read() {
            Ok(t) => t.clone(),
            Err(_) => return Vec::new(),
        };
        let mut names: Vec<&str> = triggers
            .iter()
            .filter(|(_, t)| t.matches(change))
            .map(|(name, _)| name.as_str())
            .collect();
        names.dedup();
        names
            .into_iter()
            .map(|name| dispatch::outbox_record(&self.0, name, change))
            .collect()
    }
}
