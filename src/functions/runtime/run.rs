//! One invocation on a worker thread: a fresh store and instance (with a JavaScript function's
//! snapshot written over its memory), `handle` called under the fuel and the watchdog's
//! deadline, and the outcome with what the run used.

use super::super::js::Snapshot;
use super::super::metering;
use super::super::tunables::with_limits;
use super::imports::{
    host_call, host_log, host_result_read, host_throw, new_env, wasi_clock_time_get,
    wasi_random_get, Env, WASI_EBADF,
};
use super::pool::Call;
use super::watchdog::Watchdog;
use super::{Failure, Limits, LogLine, Outcome, Program, Usage};
use std::time::Instant;
use wasmer::{Engine, Function, FunctionEnv, Imports, Instance, Memory, Store};

/// Instantiates a program under its memory limit, with every host function: the guest ABI's,
/// and the few the JavaScript engine also imports (uploaded modules may not import those:
/// `check_abi`). A JavaScript function's snapshot is then written over the fresh memory.
pub(super) fn instantiate(
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
pub(super) fn bind(
    store: &mut Store,
    env: &FunctionEnv<Env>,
    instance: &Instance,
) -> Result<Memory, String> {
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
pub(super) fn run(engine: &Engine, watchdog: &Watchdog, job: &Call) -> Outcome {
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
        ended: time::OffsetDateTime::now_utc(),
        usage,
    }
}

/// Copies `input` in through `alloc`, calls `export` (`handle`, or the JavaScript engine's
/// `load`, which have the same shape), and copies its result out.
pub(super) fn call_export(
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

#[cfg(test)]
mod tests {
    use super::super::{compile, Loading, Runtime};
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

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
        // alloc: i32.const; handle: i64.const (an `end` costs nothing).
        let straight = run_handle("(i64.const 0)", 1_000);
        assert_eq!(straight.result, Ok(None));
        assert_eq!(straight.usage.fuel, 2);
        // alloc 1; handle: i32.const 1, call 10, drop 1, i64.const 1; the callee's local.get 1.
        let called = run_handle("(drop (call $work (i32.const 1))) (i64.const 0)", 1_000);
        assert_eq!(called.usage.fuel, 1 + 13 + 1);
        // Both arms of an `if` pay for what they run, the branch taken and the operators
        // before it once.
        let branched = run_handle(
            "(if (result i64) (i32.const 1) (then (i64.const 1)) (else (i64.const 2) (drop) (i64.const 3)))",
            1_000,
        );
        assert_eq!(branched.usage.fuel, 1 + 2 + 1);
        let branched = run_handle(
            "(if (result i64) (i32.const 0) (then (i64.const 1)) (else (i64.const 2) (drop) (i64.const 3)))",
            1_000,
        );
        assert_eq!(branched.usage.fuel, 1 + 2 + 3);
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
}
