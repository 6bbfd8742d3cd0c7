//! The watchdog: one thread that interrupts stores running past their deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Interrupts stores that run past their deadline. One thread for the whole runtime; it sleeps
/// until the nearest deadline and keeps interrupting an overdue store until it is disarmed
/// (an interrupt is not delivered while the guest is inside a host function).
pub(super) struct Watchdog {
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
pub(super) struct Ticket(u64, Arc<AtomicBool>);

impl Watchdog {
    pub(super) fn start() -> Result<Arc<Watchdog>, String> {
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

    pub(super) fn arm(&self, interrupter: wasmer::Interrupter, deadline: Instant) -> Ticket {
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
    pub(super) fn disarm(&self, ticket: Ticket) -> bool {
        if let Ok(mut state) = self.state.lock() {
            state.armed.remove(&ticket.0);
        }
        ticket.1.load(Ordering::SeqCst)
    }

    pub(super) fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stopped = true;
        }
        self.wake.notify_one();
    }
}
