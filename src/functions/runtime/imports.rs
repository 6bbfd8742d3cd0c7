//! The host functions a guest imports: the guest ABI's `log`, `call` and `result_read`, and
//! what only the shipped JavaScript engine may import (`throw` and a few WASI functions). Each
//! charges fuel and counts against the invocation's limits.

use super::super::js;
use super::{Failure, Host, Limits, LogLine};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use wasmer::{FunctionEnv, FunctionEnvMut, Memory, RuntimeError, Store};

/// Metering points every host call costs, on top of the guest's own instructions: a call does
/// real work (a read or a durable write), so a loop of calls must run out of fuel too.
const HOST_CALL_FUEL: u64 = 10_000;

/// The state host functions see.
pub(super) struct Env {
    pub(super) memory: Option<Memory>,
    /// The metering globals: remaining points and the exhausted flag.
    pub(super) fuel: Option<(wasmer::Global, wasmer::Global)>,
    pub(super) host: Arc<dyn Host>,
    pub(super) limits: Limits,
    pub(super) calls: u32,
    pub(super) reply: Vec<u8>,
    pub(super) logs: Vec<LogLine>,
    /// Bytes of the lines in `logs`, and lines refused by a limit.
    pub(super) log_bytes: usize,
    pub(super) logs_dropped: u64,
    pub(super) failure: Option<Failure>,
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

pub(super) fn host_log(
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

pub(super) fn host_call(
    mut env: FunctionEnvMut<Env>,
    ptr: i32,
    len: i32,
) -> Result<i32, RuntimeError> {
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

pub(super) fn host_result_read(env: FunctionEnvMut<Env>, dst: i32) -> Result<(), RuntimeError> {
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

pub(super) fn host_throw(
    mut env: FunctionEnvMut<Env>,
    ptr: i32,
    len: i32,
) -> Result<(), RuntimeError> {
    let len = len.min(env.data().limits.max_io_bytes as i32);
    let report = read_guest(&env, ptr, len).unwrap_or_default();
    env.data_mut().failure = Some(Failure::Thrown(js::thrown(&report)));
    Err(RuntimeError::user(Box::new(Abort)))
}

/// WASI's `EBADF`: the JavaScript engine has no files (its libc asks about standard output).
pub(super) const WASI_EBADF: i32 = 8;

/// `clock_time_get(id, precision, *time)` of WASI, for the JavaScript engine: the real time for
/// clock 0, otherwise a monotonic clock.
pub(super) fn wasi_clock_time_get(
    env: FunctionEnvMut<Env>,
    id: i32,
    _precision: i64,
    out: i32,
) -> i32 {
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
pub(super) fn wasi_random_get(env: FunctionEnvMut<Env>, buf: i32, len: i32) -> i32 {
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
pub(super) fn new_env(store: &mut Store, host: Arc<dyn Host>, limits: Limits) -> FunctionEnv<Env> {
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
