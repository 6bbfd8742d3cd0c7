//! The Wasm sandbox. Modules are compiled with Cranelift and the fuel middleware (`metering`:
//! every operator costs at least 1 point), serialised as artifacts, and run on a bounded pool of
//! worker threads, never on the async workers. Every invocation gets a fresh `Store` and
//! `Instance`, so nothing leaks from one event to the next, with four limits: fuel (metering),
//! linear memory (the engine's tunables), wall-clock time (a watchdog that interrupts the
//! store) and host calls (counted by the host functions). JavaScript runs in the shipped engine
//! module (`super::js`): a function's artifact is then the engine's memory after its source
//! loaded, written over each fresh instance's memory before `handle`.
//!
//! `compile` builds and checks modules, `pool` holds the worker threads and their queues, `run`
//! is one invocation on a worker, `imports` the host functions a guest calls, and `watchdog`
//! the deadlines.

// Public for `emberbase::internals` (the benchmarks); otherwise only the crate reaches it.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

mod compile;
mod imports;
mod pool;
mod run;
mod watchdog;

pub(super) use compile::check_header;
pub use compile::{check_abi, compile};
pub(super) use pool::while_waiting;
pub use pool::Lane;

use super::js::{self, Language, Snapshot};
use super::metering;
use super::tunables::CappedTunables;
use imports::new_env;
use pool::{spawn_worker, Call, Job, Lanes, Pool};
use run::{bind, call_export, instantiate};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmer::sys::NativeEngineExt;
use wasmer::{Engine, Module, Store};
use watchdog::Watchdog;

/// Part of every artifact's key: the wasmer line, our version and the compile settings (bumped
/// whenever the cost function or settings change), so old artifacts are recompiled.
pub const COMPILE_VERSION: &str = concat!(
    "wasmer-7.4/emberbase-",
    env!("CARGO_PKG_VERSION"),
    "/ebfn-4"
);

/// What one invocation may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub fuel: u64,
    pub host_calls: u32,
    pub max_io_bytes: usize,
    /// Lines kept per invocation, bytes kept of one line, and bytes of all lines kept.
    pub max_log_lines: usize,
    pub max_log_bytes: usize,
    pub max_log_total: usize,
}

/// One line a function logged.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    pub at: String,
}

/// How an invocation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A trap, a misuse of the ABI, or a result the host cannot read.
    Trap(String),
    /// The fuel ran out.
    Fuel,
    /// The wall-clock limit passed.
    Timeout,
    /// More host calls than allowed.
    HostCalls,
    /// The module needs more memory than allowed, or failed to instantiate.
    Instantiate(String),
    /// A JavaScript function threw (or its promise rejected): the message and stack.
    Thrown(String),
    /// A write the run made was lost before it became durable (a failed flush): the run
    /// counts for nothing and its event runs again.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(m) => write!(f, "trap: {m}"),
            Failure::Fuel => write!(f, "out of fuel"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::HostCalls => write!(f, "too many host calls"),
            Failure::Instantiate(m) => write!(f, "instantiation failed: {m}"),
            Failure::Thrown(m) => write!(f, "uncaught exception: {m}"),
            Failure::Lost(m) => write!(f, "its writes could not be made durable: {m}"),
        }
    }
}

/// What an invocation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The result JSON bytes (`None`: no result), or how it failed.
    pub result: Result<Option<Vec<u8>>, Failure>,
    pub logs: Vec<LogLine>,
    pub duration: Duration,
    /// The wall-clock time the run ended, read on its worker thread (the dispatcher may get
    /// to the outcome later on a busy machine).
    pub ended: time::OffsetDateTime,
    pub usage: Usage,
}

/// What one run used, besides its wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Metering points spent (host calls cost some too).
    pub fuel: u64,
    /// CPU time of the worker thread, in microseconds.
    pub cpu_us: u64,
    /// The linear memory's size at the end, which is its peak (it only grows), in bytes.
    pub memory_bytes: u64,
    pub host_calls: u32,
    /// Bytes sent and received by `fetch` (the host fills this in).
    pub fetch_bytes: u64,
}

/// The host side of `call`: answers one request (JSON) with a reply (JSON). Runs on the
/// worker thread and may block.
pub trait Host: Send + Sync {
    fn call(&self, request: &serde_json::Value) -> Option<Vec<u8>>;
    /// Where a log line goes besides the invocation record; false when the function is over
    /// its log budget, and the line is dropped.
    fn log(&self, level: &str, message: &str) -> bool;
}

/// What an invocation runs: a compiled module, and for a JavaScript function the engine's
/// memory after the function's source loaded, written over each fresh instance's memory.
#[derive(Clone)]
pub struct Program {
    module: Module,
    snapshot: Option<Arc<Snapshot>>,
}

/// The runtime: one engine for loading artifacts, a pool of worker threads and a watchdog.
pub struct Runtime {
    engine: Engine,
    pool: Arc<Pool>,
    /// Jobs each lane may hold waiting for a worker.
    queue: usize,
    hook_workers: usize,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    watchdog: Arc<Watchdog>,
    /// The JavaScript engine, loaded into `engine` when a JavaScript function first needs it.
    javascript: OnceLock<Result<Module, String>>,
}

/// The JavaScript engine's artifact, compiled once per process (a few seconds of Cranelift).
fn engine_artifact() -> Result<&'static [u8], String> {
    static ARTIFACT: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    ARTIFACT
        .get_or_init(|| {
            compile(js::ENGINE)
                .map(|(_, artifact)| artifact)
                .map_err(|e| format!("the JavaScript engine does not compile: {e}"))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// The host of a JavaScript module's top-level code, which runs once at upload: the engine
/// refuses host calls then, and its log lines are not kept.
struct Loading;

impl Host for Loading {
    fn call(&self, _: &serde_json::Value) -> Option<Vec<u8>> {
        None
    }

    fn log(&self, _: &str, _: &str) -> bool {
        false
    }
}

impl Runtime {
    /// Starts `workers` worker threads for HTTP calls and events, and `hook_workers` for
    /// before-write hooks only, with room for `queue` waiting invocations per lane.
    pub fn start(
        workers: usize,
        hook_workers: usize,
        queue: usize,
    ) -> Result<Arc<Runtime>, String> {
        let mut engine = Engine::headless();
        engine.set_tunables(CappedTunables::new());
        let watchdog = Watchdog::start()?;
        let mut lanes = Lanes::new();
        lanes.hook_threads = hook_workers;
        let pool = Arc::new(Pool {
            lanes: Mutex::new(lanes),
            ready: Condvar::new(),
            hook_ready: Condvar::new(),
            hook_workers,
            engine: engine.clone(),
            watchdog: watchdog.clone(),
            stand_ins: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::with_capacity(workers + hook_workers);
        for i in 0..workers.max(1) + hook_workers {
            let hooks_only = i >= workers.max(1);
            let name = if hooks_only {
                format!("emberbase-hook-{i}")
            } else {
                format!("emberbase-fn-{i}")
            };
            handles.push(spawn_worker(&pool, name, hooks_only)?);
        }
        Ok(Arc::new(Runtime {
            engine,
            pool,
            queue,
            hook_workers,
            workers: Mutex::new(handles),
            watchdog,
            javascript: OnceLock::new(),
        }))
    }

    /// Loads an artifact this server built (its hash checked by the caller): a compiled module,
    /// or a JavaScript function's snapshot.
    pub fn load(&self, artifact: &[u8]) -> Result<Program, String> {
        if Snapshot::is_snapshot(artifact) {
            return Ok(Program {
                module: self.javascript()?,
                snapshot: Some(Snapshot::decode(artifact)?),
            });
        }
        Ok(Program {
            module: self.deserialize(artifact)?,
            snapshot: None,
        })
    }

    fn deserialize(&self, artifact: &[u8]) -> Result<Module, String> {
        // SAFETY: `Module::deserialize` maps the artifact's machine code as executable. Only
        // artifacts this server compiled are passed here: the JavaScript engine's, compiled by
        // this process, and functions' after their SHA-256 was checked against the hash
        // recorded in the store when they were written.
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(&self.engine, artifact.to_vec()) };
        module.map_err(|e| format!("cannot load the artifact: {e}"))
    }

    /// The JavaScript engine module, compiled and loaded at its first use.
    fn javascript(&self) -> Result<Module, String> {
        self.javascript
            .get_or_init(|| self.deserialize(engine_artifact()?))
            .clone()
    }

    /// Builds a function's artifact from its source, as an upload does; blocks (compiling takes
    /// a while). WebAssembly is compiled with metering and checked against the guest ABI and
    /// `limits`; JavaScript is loaded into the engine under `limits`, and its snapshot taken.
    pub fn build(
        &self,
        source: &[u8],
        limits: Limits,
        max_table_elements: u64,
    ) -> Result<Vec<u8>, String> {
        match Language::of(source) {
            Language::Wasm => {
                let (module, artifact) = compile(source)?;
                check_abi(&module, limits.memory_bytes, max_table_elements)?;
                Ok(artifact)
            }
            Language::JavaScript => self.load_javascript(source, limits),
        }
    }

    /// Loads JavaScript source into a fresh engine (its top-level code runs, under `limits`,
    /// without host calls) and returns the snapshot of what that changed in its memory.
    fn load_javascript(&self, source: &[u8], limits: Limits) -> Result<Vec<u8>, String> {
        let fail = |reason: String| format!("the JavaScript module does not load: {reason}");
        std::str::from_utf8(source).map_err(|e| fail(format!("the source is not UTF-8 ({e})")))?;
        let program = Program {
            module: self.javascript()?,
            snapshot: None,
        };
        let started = Instant::now();
        let mut store = Store::new(self.engine.clone());
        let env = new_env(&mut store, Arc::new(Loading), limits);
        let armed = self
            .watchdog
            .arm(store.interrupter(), started + limits.timeout);
        let loaded = instantiate(&mut store, &env, &program, limits).and_then(|instance| {
            let memory = bind(&mut store, &env, &instance)?;
            let fresh = memory
                .view(&store)
                .copy_to_vec()
                .map_err(|e| e.to_string())?;
            metering::set(&mut store, &instance, limits.fuel);
            let report = call_export(&mut store, &instance, "load", source, limits)?;
            if let Some(report) = report {
                return Err(js::load_error(&report));
            }
            let view = memory.view(&store);
            let loaded = view.copy_to_vec().map_err(|e| e.to_string())?;
            Ok(Snapshot::between(&fresh, &loaded, view.size().0))
        });
        let timed_out = self.watchdog.disarm(armed);
        let snapshot = loaded.map_err(|e| match env.as_mut(&mut store).failure.take() {
            Some(failure) => fail(format!("its top-level code stopped: {failure}")),
            None if timed_out => fail(format!("its top-level code stopped: {}", Failure::Timeout)),
            None if e.starts_with("the JavaScript module") => e,
            None => fail(e),
        })?;
        Ok(snapshot.encode())
    }

    /// Runs `handle` of `module` with `input`; waits for a worker. Fails at once when the
    /// queue is full.
    pub async fn invoke(
        &self,
        lane: Lane,
        program: Program,
        input: Vec<u8>,
        limits: Limits,
        host: Arc<dyn Host>,
    ) -> Result<Outcome, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            call: Call {
                program,
                input,
                limits,
                host,
            },
            reply,
        };
        if lane == Lane::Hooks && self.hook_workers == 0 {
            return Err("this runtime runs no before-write hooks".into());
        }
        {
            let mut lanes = self
                .pool
                .lanes
                .lock()
                .map_err(|_| "the runtime is stopped")?;
            if lanes.stopped {
                return Err("the runtime is stopped".into());
            }
            let waiting = lanes.queue(lane);
            if waiting.len() >= self.queue {
                return Err("every function worker is busy and the queue is full".into());
            }
            waiting.push_back(job);
        }
        match lane {
            Lane::Hooks => self.pool.hook_ready.notify_one(),
            Lane::Http | Lane::Events => self.pool.ready.notify_one(),
        }
        rx.await
            .map_err(|_| "the function worker stopped".to_string())
    }

    /// Runs an invocation on the calling thread, which it blocks: for measuring the sandbox
    /// without the pool (`benches/functions.rs`).
    #[cfg(feature = "internals")]
    pub fn invoke_blocking(
        &self,
        program: Program,
        input: Vec<u8>,
        limits: Limits,
        host: Arc<dyn Host>,
    ) -> Outcome {
        let call = Call {
            program,
            input,
            limits,
            host,
        };
        run::run(&self.engine, &self.watchdog, &call)
    }

    /// Stops the workers after the invocations already queued.
    pub fn stop(&self) {
        if let Ok(mut lanes) = self.pool.lanes.lock() {
            lanes.stopped = true;
        }
        self.pool.ready.notify_all();
        self.pool.hook_ready.notify_all();
        let mut handles = match self.workers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => Vec::new(),
        };
        if let Ok(mut stand_ins) = self.pool.stand_ins.lock() {
            handles.append(&mut stand_ins);
        }
        for handle in handles {
            let _ = handle.join();
        }
        self.watchdog.stop();
    }
}
