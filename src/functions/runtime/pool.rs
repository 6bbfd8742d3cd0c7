//! The worker threads and the queues they take invocations from: a lane each for HTTP calls,
//! events and before-write hooks, with hook workers of their own and stand-ins for hook
//! workers that wait on I/O.

use super::run::run;
use super::watchdog::Watchdog;
use super::{Host, Limits, Outcome, Program};
use std::sync::{Arc, Condvar, Mutex};
use wasmer::Engine;

/// One invocation: what to run, on what, within which limits.
pub(super) struct Call {
    pub(super) program: Program,
    pub(super) input: Vec<u8>,
    pub(super) limits: Limits,
    pub(super) host: Arc<dyn Host>,
}

/// An invocation waiting for a worker, and where its outcome goes.
pub(super) struct Job {
    pub(super) call: Call,
    pub(super) reply: tokio::sync::oneshot::Sender<Outcome>,
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
pub(super) struct Lanes<T> {
    pub(super) http: std::collections::VecDeque<T>,
    pub(super) events: std::collections::VecDeque<T>,
    pub(super) hooks: std::collections::VecDeque<T>,
    /// Set by `stop`: workers finish what is queued, then exit.
    pub(super) stopped: bool,
    /// Hook threads alive, and those of them waiting on I/O for their guest (`while_waiting`).
    /// The others, the hook workers at work or free, are kept at the configured number.
    pub(super) hook_threads: usize,
    pub(super) hook_waiting: usize,
}

impl<T> Lanes<T> {
    pub(super) fn new() -> Self {
        Lanes {
            http: Default::default(),
            events: Default::default(),
            hooks: Default::default(),
            stopped: false,
            hook_threads: 0,
            hook_waiting: 0,
        }
    }

    pub(super) fn queue(&mut self, lane: Lane) -> &mut std::collections::VecDeque<T> {
        match lane {
            Lane::Http => &mut self.http,
            Lane::Events => &mut self.events,
            Lane::Hooks => &mut self.hooks,
        }
    }

    /// The next job of a general worker, from the lane after `last` when both have one.
    pub(super) fn take(&mut self, last: Lane) -> Option<(Lane, T)> {
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
pub(super) struct Pool {
    pub(super) lanes: Mutex<Lanes<Job>>,
    /// Wakes a general worker (HTTP calls and events).
    pub(super) ready: Condvar,
    /// Wakes a hook worker.
    pub(super) hook_ready: Condvar,
    /// Hook workers to keep free of waits, and what a thread that replaces one needs.
    pub(super) hook_workers: usize,
    pub(super) engine: Engine,
    pub(super) watchdog: Arc<Watchdog>,
    /// Threads started to stand in for hook workers that wait (joined at `stop`).
    pub(super) stand_ins: Mutex<Vec<std::thread::JoinHandle<()>>>,
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
pub(crate) fn while_waiting<T>(wait: impl FnOnce() -> T) -> T {
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
pub(super) fn spawn_worker(
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

#[cfg(test)]
mod tests {
    use super::*;

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
