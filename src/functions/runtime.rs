//! The Wasm sandbox. Modules are compiled with Cranelift and the fuel middleware (`metering`:
//! every operator costs at least 1 point), serialised as artifacts, and run on a bounded pool of
//! worker threads, never on the async workers. Every invocation gets a fresh `Store` and
//! `Instance`, so nothing leaks from one event to the next, with four limits: fuel (metering),
//! linear memory (the engine's tunables), wall-clock time (a watchdog that interrupts the
//! store) and host calls (counted by the host functions). JavaScript runs in the shipped engine
//! module (`super::js`): a function's artifact is then the engine's memory after its source
//! loaded, written over each fresh instance's memory before `handle`.

// Public for `emberbase::internals` (the benchmarks); otherwise only the crate reaches it.
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use super::js::{self, Language, Snapshot};
use super::metering::{self, Fuel};
use super::tunables::{table_bytes, with_limits, CappedTunables, TABLE_ELEMENT_BYTES};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use wasmer::sys::{CompilerConfig, Cranelift, EngineBuilder, NativeEngineExt};
use wasmer::wasmparser::Operator;
use wasmer::{
    Engine, ExternType, Function, FunctionEnv, FunctionEnvMut, Imports, Instance, Memory, Module,
    RuntimeError, Store, Type,
};

/// Part of every artifact's key: the wasmer line, our version and the compile settings (bumped
/// whenever the cost function or settings change), so old artifacts are recompiled.
pub const COMPILE_VERSION: &str = concat!(
    "wasmer-7.4/emberbase-",
    env!("CARGO_PKG_VERSION"),
    "/ebfn-3"
);

/// Metering points every host call costs, on top of the guest's own instructions: a call does
/// real work (a read or a durable write), so a loop of calls must run out of fuel too.
const HOST_CALL_FUEL: u64 = 10_000;

/// Metering points for a module's start function (its global initialisers and top-level code).
const START_FUEL: u64 = 100_000_000;

/// The cost of one operator: at least 1 for every operator, so even `loop br 0` runs out.
fn cost(op: &Operator) -> u64 {
    match op {
        Operator::Call { .. } | Operator::CallIndirect { .. } => 10,
        Operator::MemoryGrow { .. } | Operator::MemoryFill { .. } | Operator::MemoryCopy { .. } => {
            100
        }
        _ => 1,
    }
}

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

/// The Wasm features a module may use. Every proposal that would let a module hold memory
/// outside the one capped linear memory is off: several memories, 64-bit memories, shared
/// (threads) memories and exception objects.
fn features() -> wasmer::sys::Features {
    let mut features = wasmer::sys::Features::new();
    features
        .multi_memory(false)
        .memory64(false)
        .threads(false)
        .exceptions(false);
    features
}

/// Compiles a module with metering, for the runtime engine. Returns the module (to inspect)
/// and its serialised artifact. CPU-heavy: call it off the async workers.
pub fn compile(bytes: &[u8]) -> Result<(Module, Vec<u8>), String> {
    // One metering middleware instance can compile only one module. The initial points are
    // what the module's start function (run by `Instance::new`) may use; `handle` then gets the
    // function's own fuel.
    let metering = Arc::new(Fuel::new(START_FUEL, cost));
    let mut compiler = Cranelift::default();
    compiler.push_middleware(metering);
    let engine: Engine = EngineBuilder::new(compiler)
        .set_features(Some(features()))
        .engine()
        .into();
    check_header(bytes)?;
    Module::validate(&engine, bytes).map_err(|e| one_line(&format!("invalid module: {e}")))?;
    let module =
        Module::new(&engine, bytes).map_err(|e| one_line(&format!("cannot compile: {e}")))?;
    let artifact = module
        .serialize()
        .map_err(|e| format!("cannot serialise: {e}"))?;
    Ok((module, artifact.to_vec()))
}

/// Refuses what is not a core WebAssembly module in one sentence, before the validator (whose
/// message for a bad header prints both headers as multi-line byte arrays).
pub(super) fn check_header(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', a, b, c, d]) => Err(format!(
            "not a core WebAssembly module: binary format version {} (components and other \
             versions are not supported; build a core module for wasm32)",
            u32::from_le_bytes([*a, *b, *c, *d])
        )),
        _ => Err(
            "not a WebAssembly module: it does not start with the `\\0asm` header (upload the \
             compiled .wasm binary, not its text or source)"
                .to_string(),
        ),
    }
}

/// A message with every run of whitespace (line breaks included) made one space.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a compiled module against ABI v1: the exports it must have and the imports it may
/// have; its tables' declared sizes within `max_table_elements`; and its memory minimum plus
/// its tables within `memory_bytes`.
pub fn check_abi(
    module: &Module,
    memory_bytes: u64,
    max_table_elements: u64,
) -> Result<(), String> {
    use wasmer::FunctionType;
    let func =
        |params: &[Type], results: &[Type]| FunctionType::new(params.to_vec(), results.to_vec());
    let mut memory = None;
    let mut alloc = None;
    let mut handle = None;
    for export in module.exports() {
        match (export.name(), export.ty()) {
            ("memory", ExternType::Memory(m)) => memory = Some(*m),
            ("alloc", ExternType::Function(f)) => alloc = Some(f.clone()),
            ("handle", ExternType::Function(f)) => handle = Some(f.clone()),
            _ => {}
        }
    }
    let memory = memory.ok_or("the module must export its memory as `memory`")?;
    match alloc {
        Some(f) if f == func(&[Type::I32], &[Type::I32]) => {}
        Some(f) => return Err(format!("`alloc` must be (i32) -> i32, not {f}")),
        None => return Err("the module must export `alloc: (i32) -> i32`".into()),
    }
    match handle {
        Some(f) if f == func(&[Type::I32, Type::I32], &[Type::I64]) => {}
        Some(f) => return Err(format!("`handle` must be (i32, i32) -> i64, not {f}")),
        None => return Err("the module must export `handle: (i32, i32) -> i64`".into()),
    }
    let allowed = [
        ("log", func(&[Type::I32, Type::I32, Type::I32], &[])),
        ("call", func(&[Type::I32, Type::I32], &[Type::I32])),
        ("result_read", func(&[Type::I32], &[])),
    ];
    for import in module.imports() {
        let ok = import.module() == "emberbase"
            && allowed.iter().any(|(name, ty)| {
                import.name() == *name && matches!(import.ty(), ExternType::Function(f) if f == ty)
            });
        if !ok {
            return Err(format!(
                "import `{}.{}` ({:?}) is not allowed; a module may import emberbase.log, emberbase.call and emberbase.result_read",
                import.module(),
                import.name(),
                import.ty()
            ));
        }
    }
    let tables = table_bytes(module);
    let elements = tables / TABLE_ELEMENT_BYTES;
    if elements > max_table_elements {
        return Err(format!(
            "the module's tables declare {elements} elements, over the limit of {max_table_elements}"
        ));
    }
    let min_bytes = memory.minimum.bytes().0 as u64;
    if min_bytes + tables > memory_bytes {
        return Err(format!(
            "the module's memory starts at {} MiB and its tables take {} KiB, over the limit of {} MiB",
            min_bytes / (1024 * 1024),
            tables / 1024,
            memory_bytes / (1024 * 1024)
        ));
    }
    Ok(())
}

/// What an invocation runs: a compiled module, and for a JavaScript function the engine's
/// memory after the function's source loaded, written over each fresh instance's memory.
#[derive(Clone)]
pub struct Program {
    module: Module,
    snapshot: Option<Arc<Snapshot>>,
}

/// One invocation: what to run, on what, within which limits.
struct Call {
    program: Program,
    input: Vec<u8>,
    limits: Limits,
    host: Arc<dyn Host>,
}

/// An invocation waiting for a worker, and where its outcome goes.
struct Job {
    call: Call,
    reply: tokio::sync::oneshot::Sender<Outcome>,
}

/// Which queue an invocation waits in. HTTP calls (which anyone an `http` trigger lets in can
/// make) and events (triggers and schedules) have separate queues, and workers take from them
/// in turn, so a flood of calls can neither fill the events' queue nor starve their delivery.
/// Before-write hooks have workers of their own, so a write never waits behind either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Http,
    Events,
    Hooks,
}

/// The queues the workers take jobs (`T`) from.
struct Lanes<T> {
    http: std::collections::VecDeque<T>,
    events: std::collections::VecDeque<T>,
    hooks: std::collections::VecDeque<T>,
    /// Set by `stop`: workers finish what is queued, then exit.
    stopped: bool,
    /// Hook threads alive, and those of them waiting on I/O for their guest (`while_waiting`).
    /// The others, the hook workers at work or free, are kept at the configured number.
    hook_threads: usize,
    hook_waiting: usize,
}

impl<T> Lanes<T> {
    fn new() -> Self {
        Lanes {
            http: Default::default(),
            events: Default::default(),
            hooks: Default::default(),
            stopped: false,
            hook_threads: 0,
            hook_waiting: 0,
        }
    }

    fn queue(&mut self, lane: Lane) -> &mut std::collections::VecDeque<T> {
        match lane {
            Lane::Http => &mut self.http,
            Lane::Events => &mut self.events,
            Lane::Hooks => &mut self.hooks,
        }
    }

    /// The next job of a general worker, from the lane after `last` when both have one.
    fn take(&mut self, last: Lane) -> Option<(Lane, T)> {
        let order = match last {
            Lane::Http => [Lane::Events, Lane::Http],
            Lane::Events | Lane::Hooks => [Lane::Http, Lane::Events],
        };
        order
            .into_iter()
            .find_map(|lane| self.queue(lane).pop_front().map(|job| (lane, job)))
    }
}

/// The queues, and a signal for each kind of worker.
struct Pool {
    lanes: Mutex<Lanes<Job>>,
    /// Wakes a general worker (HTTP calls and events).
    ready: Condvar,
    /// Wakes a hook worker.
    hook_ready: Condvar,
    /// Hook workers to keep free of waits, and what a thread that replaces one needs.
    hook_workers: usize,
    engine: Engine,
    watchdog: Arc<Watchdog>,
    /// Threads started to stand in for hook workers that wait (joined at `stop`).
    stand_ins: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Hook threads that may wait on I/O at once; past that a waiting hook keeps its worker.
const MAX_WAITING_HOOKS: usize = 64;

thread_local! {
    /// The pool of the hook worker running on this thread, for `while_waiting`.
    static HOOK_POOL: std::cell::RefCell<Option<Arc<Pool>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `wait`, a blocking wait for I/O on a guest's behalf (an outbound fetch). On a hook
/// worker, another thread takes the worker's place meanwhile, so that before-write hooks never
/// queue behind a fetch; the waiting thread finishes its hook and then exits if the workers are
/// complete without it.
pub(super) fn while_waiting<T>(wait: impl FnOnce() -> T) -> T {
    let pool = HOOK_POOL.with(|p| p.borrow().clone());
    let Some(pool) = pool else {
        return wait();
    };
    let stand_in = match pool.lanes.lock() {
        Ok(mut lanes) if lanes.hook_waiting < MAX_WAITING_HOOKS => {
            lanes.hook_waiting += 1;
            let short = lanes.hook_threads.saturating_sub(lanes.hook_waiting) < pool.hook_workers;
            if short {
                lanes.hook_threads += 1;
            }
            Some(short)
        }
        _ => None,
    };
    if stand_in == Some(true) {
        match spawn_worker(&pool, "emberbase-hook-stand-in".into(), true) {
            Ok(handle) => {
                if let Ok(mut stand_ins) = pool.stand_ins.lock() {
                    stand_ins.retain(|h| !h.is_finished());
                    stand_ins.push(handle);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a hook worker to stand in for one that waits");
                if let Ok(mut lanes) = pool.lanes.lock() {
                    lanes.hook_threads -= 1;
                }
            }
        }
    }
    let out = wait();
    if stand_in.is_some() {
        if let Ok(mut lanes) = pool.lanes.lock() {
            lanes.hook_waiting -= 1;
        }
    }
    out
}

/// Starts a worker thread: a general one, or (`hooks_only`) a hook worker, counted by the
/// caller in `hook_threads`.
fn spawn_worker(
    pool: &Arc<Pool>,
    name: String,
    hooks_only: bool,
) -> Result<std::thread::JoinHandle<()>, String> {
    let pool = pool.clone();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if hooks_only {
                HOOK_POOL.with(|p| *p.borrow_mut() = Some(pool.clone()));
            }
            let mut last = Lane::Events;
            while let Some((lane, job)) = next_job(&pool, last, hooks_only) {
                last = lane;
                let outcome = run(&pool.engine, &pool.watchdog, &job.call);
                let _ = job.reply.send(outcome);
            }
        })
        .map_err(|e| format!("cannot start a function worker: {e}"))?;
    Ok(handle)
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
        run(&self.engine, &self.watchdog, &call)
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

/// Waits for the next job of a general worker (`hooks_only`: of a hook worker); `None` once
/// the runtime is stopped and its lanes are empty.
fn next_job(pool: &Pool, last: Lane, hooks_only: bool) -> Option<(Lane, Job)> {
    let mut guard = pool.lanes.lock().ok()?;
    loop {
        // A hook thread back from a wait while another stood in for it is one too many.
        if hooks_only && guard.hook_threads.saturating_sub(guard.hook_waiting) > pool.hook_workers {
            guard.hook_threads -= 1;
            return None;
        }
        let next = if hooks_only {
            guard.hooks.pop_front().map(|job| (Lane::Hooks, job))
        } else {
            guard.take(last)
        };
        if let Some(next) = next {
            return Some(next);
        }
        if guard.stopped {
            return None;
        }
        let signal = if hooks_only {
            &pool.hook_ready
        } else {
            &pool.ready
        };
        guard = signal.wait(guard).ok()?;
    }
}

/// The state host functions see.
struct Env {
    memory: Option<Memory>,
    /// The metering globals: remaining points and the exhausted flag.
    fuel: Option<(wasmer::Global, wasmer::Global)>,
    host: Arc<dyn Host>,
    limits: Limits,
    calls: u32,
    reply: Vec<u8>,
    logs: Vec<LogLine>,
    /// Bytes of the lines in `logs`, and lines refused by a limit.
    log_bytes: usize,
    logs_dropped: u64,
    failure: Option<Failure>,
}

#[derive(Debug)]
struct Abort;

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "aborted by the host")
    }
}

impl std::error::Error for Abort {}

fn read_guest(env: &FunctionEnvMut<Env>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let (ptr, len) = (u32::try_from(ptr).ok()?, u32::try_from(len).ok()?);
    let memory = env.data().memory.as_ref()?;
    let view = memory.view(env);
    let mut buf = vec![0; len as usize];
    view.read(ptr as u64, &mut buf).ok()?;
    Some(buf)
}

fn host_log(
    mut env: FunctionEnvMut<Env>,
    level: i32,
    ptr: i32,
    len: i32,
) -> Result<(), RuntimeError> {
    // A log line does real work (a copy, a server log line), so a loop of them must run out
    // of fuel like any loop.
    if !charge(&mut env, HOST_CALL_FUEL) {
        env.data_mut().failure = Some(Failure::Fuel);
        return Err(RuntimeError::user(Box::new(Abort)));
    }
    let limits = env.data().limits;
    let len = len.min(limits.max_log_bytes as i32);
    let Some(bytes) = read_guest(&env, ptr, len) else {
        env.data_mut().failure = Some(Failure::Trap(
            "log: pointer or length outside memory".into(),
        ));
        return Err(RuntimeError::user(Box::new(Abort)));
    };
    let level = match level {
        0 => "debug",
        1 => "info",
        2 => "warn",
        _ => "error",
    };
    let data = env.data_mut();
    let within = data.logs.len() < limits.max_log_lines
        && data.log_bytes + bytes.len() <= limits.max_log_total;
    let message = String::from_utf8_lossy(&bytes).into_owned();
    if within && data.host.log(level, &message) {
        data.log_bytes += bytes.len();
        data.logs.push(LogLine {
            level: level.into(),
            message,
            at: crate::model::now_rfc3339(),
        });
    } else {
        data.logs_dropped += 1;
    }
    Ok(())
}

/// Takes `points` from the guest's fuel; false when there are not that many left (the guest is
/// then out of fuel, as if it had run out itself).
fn charge(env: &mut FunctionEnvMut<Env>, points: u64) -> bool {
    let Some((remaining, exhausted)) = env.data().fuel.clone() else {
        return true;
    };
    let (_, mut store) = env.data_and_store_mut();
    // Below zero (a path that went past the fuel since the last check) is none left.
    let left = match remaining.get(&mut store) {
        wasmer::Value::I64(v) => u64::try_from(v).unwrap_or(0),
        _ => return true,
    };
    if left < points {
        let _ = remaining.set(&mut store, wasmer::Value::I64(0));
        let _ = exhausted.set(&mut store, wasmer::Value::I32(1));
        return false;
    }
    let _ = remaining.set(&mut store, wasmer::Value::I64((left - points) as i64));
    true
}

fn host_call(mut env: FunctionEnvMut<Env>, ptr: i32, len: i32) -> Result<i32, RuntimeError> {
    let data = env.data_mut();
    data.calls += 1;
    if data.calls > data.limits.host_calls {
        data.failure = Some(Failure::HostCalls);
        return Err(RuntimeError::user(Box::new(Abort)));
    }
    let max = data.limits.max_io_bytes as i32;
    if !charge(&mut env, HOST_CALL_FUEL) {
        env.data_mut().failure = Some(Failure::Fuel);
        return Err(RuntimeError::user(Box::new(Abort)));
    }
    if len > max {
        return Ok(-2);
    }
    let Some(bytes) = read_guest(&env, ptr, len) else {
        return Ok(-2);
    };
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(-1);
    };
    let host = env.data().host.clone();
    match host.call(&request) {
        Some(reply) => {
            let n = reply.len() as i32;
            env.data_mut().reply = reply;
            Ok(n)
        }
        None => Ok(-1),
    }
}

fn host_result_read(env: FunctionEnvMut<Env>, dst: i32) -> Result<(), RuntimeError> {
    let data = env.data();
    let written = match (&data.memory, u32::try_from(dst)) {
        (Some(memory), Ok(dst)) => memory.view(&env).write(dst as u64, &data.reply).is_ok(),
        _ => false,
    };
    if written {
        Ok(())
    } else {
        Err(RuntimeError::new("result_read: destination outside memory"))
    }
}

fn host_throw(mut env: FunctionEnvMut<Env>, ptr: i32, len: i32) -> Result<(), RuntimeError> {
    let len = len.min(env.data().limits.max_io_bytes as i32);
    let report = read_guest(&env, ptr, len).unwrap_or_default();
    env.data_mut().failure = Some(Failure::Thrown(js::thrown(&report)));
    Err(RuntimeError::user(Box::new(Abort)))
}

/// WASI's `EBADF`: the JavaScript engine has no files (its libc asks about standard output).
const WASI_EBADF: i32 = 8;

/// `clock_time_get(id, precision, *time)` of WASI, for the JavaScript engine: the real time for
/// clock 0, otherwise a monotonic clock.
fn wasi_clock_time_get(env: FunctionEnvMut<Env>, id: i32, _precision: i64, out: i32) -> i32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let nanos = if id == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    } else {
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
    };
    write_guest(&env, out, &nanos.to_le_bytes())
}

/// `random_get(*buf, len)` of WASI, for up to 64 KiB (the engine asks for 8 bytes per event);
/// more is WASI's `EINVAL` (28).
fn wasi_random_get(env: FunctionEnvMut<Env>, buf: i32, len: i32) -> i32 {
    let Some(len) = usize::try_from(len).ok().filter(|n| *n <= 1 << 16) else {
        return 28;
    };
    let mut bytes = vec![0; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    write_guest(&env, buf, &bytes)
}

/// Writes `bytes` at `ptr` of the guest's memory: WASI's 0, or its `EFAULT` (21).
fn write_guest(env: &FunctionEnvMut<Env>, ptr: i32, bytes: &[u8]) -> i32 {
    let written = match (&env.data().memory, u32::try_from(ptr)) {
        (Some(memory), Ok(ptr)) => memory.view(env).write(ptr as u64, bytes).is_ok(),
        _ => false,
    };
    if written {
        0
    } else {
        21
    }
}

/// A fresh invocation state.
fn new_env(store: &mut Store, host: Arc<dyn Host>, limits: Limits) -> FunctionEnv<Env> {
    FunctionEnv::new(
        store,
        Env {
            memory: None,
            fuel: None,
            host,
            limits,
            calls: 0,
            reply: Vec::new(),
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            failure: None,
        },
    )
}

/// Instantiates a program under its memory limit, with every host function: the guest ABI's,
/// and the few the JavaScript engine also imports (uploaded modules may not import those:
/// `check_abi`). A JavaScript function's snapshot is then written over the fresh memory.
fn instantiate(
    store: &mut Store,
    env: &FunctionEnv<Env>,
    program: &Program,
    limits: Limits,
) -> Result<Instance, String> {
    // Only what the module imports: each host function is an allocation in the fresh store.
    let mut imports = Imports::new();
    for import in program.module.imports() {
        let (module, name) = (import.module(), import.name());
        let function = match (module, name) {
            ("emberbase", "log") => Function::new_typed_with_env(store, env, host_log),
            ("emberbase", "call") => Function::new_typed_with_env(store, env, host_call),
            ("emberbase", "result_read") => {
                Function::new_typed_with_env(store, env, host_result_read)
            }
            ("emberbase", "throw") => Function::new_typed_with_env(store, env, host_throw),
            ("wasi_snapshot_preview1", "clock_time_get") => {
                Function::new_typed_with_env(store, env, wasi_clock_time_get)
            }
            ("wasi_snapshot_preview1", "random_get") => {
                Function::new_typed_with_env(store, env, wasi_random_get)
            }
            ("wasi_snapshot_preview1", "fd_close") => {
                Function::new_typed(store, |_: i32| WASI_EBADF)
            }
            ("wasi_snapshot_preview1", "fd_fdstat_get") => {
                Function::new_typed(store, |_: i32, _: i32| WASI_EBADF)
            }
            ("wasi_snapshot_preview1", "fd_seek") => {
                Function::new_typed(store, |_: i32, _: i64, _: i32, _: i32| WASI_EBADF)
            }
            ("wasi_snapshot_preview1", "fd_write") => {
                Function::new_typed(store, |_: i32, _: i32, _: i32, _: i32| WASI_EBADF)
            }
            // `Instance::new` names what is missing (uploads are checked against the ABI first).
            _ => continue,
        };
        imports.define(module, name, function);
    }
    let instance = with_limits(limits.memory_bytes, &program.module, || {
        Instance::new(store, &program.module, &imports).map_err(|e| e.to_string())
    })??;
    if let Some(snapshot) = &program.snapshot {
        let memory = bind(store, env, &instance)?;
        restore(store, &memory, snapshot, limits)?;
    }
    Ok(instance)
}

/// Writes a JavaScript function's snapshot over a fresh engine's memory.
fn restore(
    store: &mut Store,
    memory: &Memory,
    snapshot: &Snapshot,
    limits: Limits,
) -> Result<(), String> {
    // The memory's maximum is the function's limit (the tunables capped it when it was made).
    let have = memory.view(store).size().0;
    if snapshot.pages > have {
        memory.grow(store, snapshot.pages - have).map_err(|_| {
            format!(
                "the JavaScript function's loaded memory ({} KiB) is over its limit of {} MiB",
                snapshot.pages as u64 * 64,
                limits.memory_bytes / (1024 * 1024)
            )
        })?;
    }
    let view = memory.view(store);
    for (offset, bytes) in &snapshot.runs {
        view.write(*offset as u64, bytes)
            .map_err(|_| "the JavaScript snapshot does not fit the engine's memory")?;
    }
    Ok(())
}

/// Gives the host functions the instance's memory and metering globals; returns the memory.
fn bind(store: &mut Store, env: &FunctionEnv<Env>, instance: &Instance) -> Result<Memory, String> {
    let memory = instance
        .exports
        .get_memory("memory")
        .map_err(|e| e.to_string())?
        .clone();
    env.as_mut(store).memory = Some(memory.clone());
    let global = |name: &str| instance.exports.get_global(name).ok().cloned();
    env.as_mut(store).fuel =
        global("wasmer_metering_remaining_points").zip(global("wasmer_metering_points_exhausted"));
    Ok(memory)
}

/// Runs one invocation on the current (worker) thread.
fn run(engine: &Engine, watchdog: &Watchdog, job: &Call) -> Outcome {
    let started = Instant::now();
    let cpu = cpu_time::ThreadTime::now();
    let mut fuel = 0;
    let mut store = Store::new(engine.clone());
    let env = new_env(&mut store, job.host.clone(), job.limits);
    // The deadline covers the start function too.
    let armed = watchdog.arm(store.interrupter(), started + job.limits.timeout);
    let instance = instantiate(&mut store, &env, &job.program, job.limits);
    let result = match instance {
        Err(e) => {
            let timed_out = watchdog.disarm(armed);
            Err(if timed_out {
                Failure::Timeout
            } else {
                Failure::Instantiate(e)
            })
        }
        Ok(instance) => {
            metering::set(&mut store, &instance, job.limits.fuel);
            let called = bind(&mut store, &env, &instance)
                .and_then(|_| call_export(&mut store, &instance, "handle", &job.input, job.limits));
            let timed_out = watchdog.disarm(armed);
            let left = metering::remaining(&mut store, &instance);
            fuel = left.map_or(job.limits.fuel, |left| job.limits.fuel.saturating_sub(left));
            called.map_err(|trap| {
                if let Some(failure) = env.as_mut(&mut store).failure.take() {
                    failure
                } else if timed_out {
                    Failure::Timeout
                } else if left.is_none() {
                    Failure::Fuel
                } else {
                    Failure::Trap(trap)
                }
            })
        }
    };
    let memory_bytes = env
        .as_ref(&store)
        .memory
        .clone()
        .map_or(0, |memory| memory.view(&store).data_size());
    let env = env.as_mut(&mut store);
    let usage = Usage {
        fuel,
        cpu_us: cpu.elapsed().as_micros() as u64,
        memory_bytes,
        host_calls: env.calls,
        fetch_bytes: 0,
    };
    let mut logs = std::mem::take(&mut env.logs);
    if env.logs_dropped > 0 {
        logs.push(LogLine {
            level: "warn".into(),
            message: format!(
                "{} more log lines were dropped: an invocation keeps at most {} lines and {} bytes, within the function's log budget per minute",
                env.logs_dropped, job.limits.max_log_lines, job.limits.max_log_total
            ),
            at: crate::model::now_rfc3339(),
        });
    }
    Outcome {
        result,
        logs,
        duration: started.elapsed(),
        usage,
    }
}

/// Copies `input` in through `alloc`, calls `export` (`handle`, or the JavaScript engine's
/// `load`, which have the same shape), and copies its result out.
fn call_export(
    store: &mut Store,
    instance: &Instance,
    export: &str,
    input: &[u8],
    limits: Limits,
) -> Result<Option<Vec<u8>>, String> {
    let memory = instance
        .exports
        .get_memory("memory")
        .map_err(|e| e.to_string())?
        .clone();
    let alloc = instance
        .exports
        .get_typed_function::<i32, i32>(store, "alloc")
        .map_err(|e| e.to_string())?;
    let handle = instance
        .exports
        .get_typed_function::<(i32, i32), i64>(store, export)
        .map_err(|e| e.to_string())?;
    let len = i32::try_from(input.len()).map_err(|_| "the event is too large")?;
    let ptr = alloc.call(store, len).map_err(|e| e.message())?;
    if ptr == 0 {
        return Err("alloc returned 0 for the event".into());
    }
    memory
        .view(store)
        .write(ptr as u32 as u64, input)
        .map_err(|_| "alloc returned memory outside the module's memory")?;
    let packed = handle.call(store, ptr, len).map_err(|e| e.message())?;
    if packed == 0 {
        return Ok(None);
    }
    let (out_ptr, out_len) = ((packed as u64 >> 32) as u32, packed as u64 as u32);
    if out_len as usize > limits.max_io_bytes {
        return Err(format!(
            "the result is {out_len} bytes, over the limit of {}",
            limits.max_io_bytes
        ));
    }
    let mut out = vec![0; out_len as usize];
    memory
        .view(store)
        .read(out_ptr as u64, &mut out)
        .map_err(|_| "the result is outside the module's memory")?;
    Ok(Some(out))
}

/// Interrupts stores that run past their deadline. One thread for the whole runtime; it sleeps
/// until the nearest deadline and keeps interrupting an overdue store until it is disarmed
/// (an interrupt is not delivered while the guest is inside a host function).
struct Watchdog {
    state: Mutex<WatchState>,
    wake: Condvar,
    next_id: AtomicU64,
}

struct Armed {
    deadline: Instant,
    interrupter: wasmer::Interrupter,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct WatchState {
    armed: HashMap<u64, Armed>,
    /// When the watchdog thread will next wake by itself (`None`: only when notified).
    wakes_at: Option<Instant>,
    stopped: bool,
}

/// A handle on an armed deadline.
struct Ticket(u64, Arc<AtomicBool>);

impl Watchdog {
    fn start() -> Result<Arc<Watchdog>, String> {
        let dog = Arc::new(Watchdog {
            state: Mutex::new(WatchState::default()),
            wake: Condvar::new(),
            next_id: AtomicU64::new(1),
        });
        let worker = dog.clone();
        std::thread::Builder::new()
            .name("emberbase-fn-watchdog".into())
            .spawn(move || worker.run())
            .map_err(|e| format!("cannot start the watchdog: {e}"))?;
        Ok(dog)
    }

    fn run(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        loop {
            if state.stopped {
                return;
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for armed in state.armed.values() {
                if armed.deadline <= now {
                    armed.fired.store(true, Ordering::SeqCst);
                    armed.interrupter.interrupt();
                    // Retry soon: the interrupt may have landed inside a host call.
                    next = Some(next.map_or(now + Duration::from_millis(5), |n| {
                        n.min(now + Duration::from_millis(5))
                    }));
                } else {
                    next = Some(next.map_or(armed.deadline, |n| n.min(armed.deadline)));
                }
            }
            state.wakes_at = next;
            state = match next {
                Some(at) => match self
                    .wake
                    .wait_timeout(state, at.saturating_duration_since(now))
                {
                    Ok((s, _)) => s,
                    Err(_) => return,
                },
                None => match self.wake.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
        }
    }

    fn arm(&self, interrupter: wasmer::Interrupter, deadline: Instant) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fired = Arc::new(AtomicBool::new(false));
        let mut wake = true;
        if let Ok(mut state) = self.state.lock() {
            state.armed.insert(
                id,
                Armed {
                    deadline,
                    interrupter,
                    fired: fired.clone(),
                },
            );
            // Wake the thread only if it would sleep past this deadline: most invocations end
            // long before their deadline, and waking on every one costs a context switch.
            wake = state.wakes_at.is_none_or(|at| deadline < at);
            if wake {
                state.wakes_at = Some(deadline);
            }
        }
        if wake {
            self.wake.notify_one();
        }
        Ticket(id, fired)
    }

    /// Disarms a deadline; whether it fired.
    fn disarm(&self, ticket: Ticket) -> bool {
        if let Ok(mut state) = self.state.lock() {
            state.armed.remove(&ticket.0);
        }
        ticket.1.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stopped = true;
        }
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `handle` of a module whose `alloc` returns 16, with `fuel`.
    fn run_handle(body: &str, fuel: u64) -> Outcome {
        let wasm = wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "alloc") (param i32) (result i32) (i32.const 16))
                 (func $work (param i32) (result i32) (local.get 0))
                 (func (export "handle") (param i32 i32) (result i64) {body}))"#
        ))
        .expect("wat");
        let runtime = Runtime::start(1, 0, 4).expect("runtime");
        let program = runtime
            .load(&compile(&wasm).expect("compile").1)
            .expect("load");
        let limits = Limits {
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
            fuel,
            host_calls: 10,
            max_io_bytes: 1 << 20,
            max_log_lines: 10,
            max_log_bytes: 100,
            max_log_total: 1000,
        };
        let call = Call {
            program,
            input: b"{}".to_vec(),
            limits,
            host: Arc::new(Loading),
        };
        let outcome = run(&runtime.engine, &runtime.watchdog, &call);
        runtime.stop();
        outcome
    }

    #[test]
    fn fuel_counts_every_operator_and_runs_out_in_a_loop() {
        // alloc: i32.const, end; handle: i64.const, end.
        let straight = run_handle("(i64.const 0)", 1_000);
        assert_eq!(straight.result, Ok(None));
        assert_eq!(straight.usage.fuel, 4);
        // alloc 2; handle: i32.const 1, call 10, drop 1, i64.const 1, end 1; the callee 2.
        let called = run_handle("(drop (call $work (i32.const 1))) (i64.const 0)", 1_000);
        assert_eq!(called.usage.fuel, 2 + 14 + 2);
        // An endless loop is stopped at its head once the fuel is spent, and charged all of it.
        let looped = run_handle("(loop $l (br $l)) (i64.const 0)", 100_000);
        assert_eq!(looped.result, Err(Failure::Fuel));
        assert_eq!(looped.usage.fuel, 100_000);
        // So is a loop of calls, whose callee checks at its entry.
        let calls = run_handle(
            "(loop $l (drop (call $work (i32.const 1))) (br $l)) (i64.const 0)",
            100_000,
        );
        assert_eq!(calls.result, Err(Failure::Fuel));
    }

    #[test]
    fn lanes_are_served_in_turn() {
        let mut lanes = Lanes::new();
        for n in 0..3 {
            lanes.queue(Lane::Http).push_back(n);
        }
        lanes.queue(Lane::Events).push_back(10);
        lanes.queue(Lane::Events).push_back(11);
        let mut last = Lane::Events;
        let mut order = Vec::new();
        while let Some((lane, n)) = lanes.take(last) {
            last = lane;
            order.push(n);
        }
        // A backlog of HTTP calls does not hold events up: they alternate.
        assert_eq!(order, [0, 10, 1, 11, 2]);
    }
}
