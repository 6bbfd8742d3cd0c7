//! Sliding-window limits per key: failed logins per account and per client address, and
//! every signup or mail request per client address and per email address.
//!
//! Rate-limiter crates such as governor cannot take back a cell, and login throttling must
//! count an attempt *before* the (expensive) password hash, so that concurrent attempts cannot
//! all pass the check, then take it back when the password was right. So this is a small
//! sliding window per key, in memory. Keys are bounded by their callers (emails are at most
//! 254 bytes; addresses are short), and the map is swept of keys whose events all left the
//! window whenever it has doubled since the last sweep, so memory stays proportional to the
//! keys active within one window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept before the first sweep.
const FIRST_SWEEP: usize = 10_000;

pub(crate) struct WindowLimiter {
    max: usize,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    events: HashMap<String, VecDeque<Instant>>,
    sweep_at: usize,
}

impl WindowLimiter {
    /// At most `max` events per key within `window`.
    pub(crate) fn new(max: usize, window: Duration) -> Self {
        WindowLimiter {
            max,
            window,
            state: Mutex::new(State {
                events: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// How long until `key` may act again, if it is at its limit now.
    fn wait(&self, times: &mut VecDeque<Instant>, now: Instant) -> Option<Duration> {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() < self.max {
            return None;
        }
        let oldest = *times.front()?;
        Some(
            self.window
                .saturating_sub(now.duration_since(oldest))
                .max(Duration::from_secs(1)),
        )
    }

    /// How long until `key` may act again, if it is at its limit now; counts nothing.
    #[cfg(test)]
    pub(crate) fn blocked_for(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.with(|s| {
            let times = s.events.get_mut(key)?;
            self.wait(times, now)
        })
    }

    /// Counts one event of `key` if it is under its limit (all in one step, so concurrent
    /// callers cannot exceed it); otherwise says how long to wait.
    pub(crate) fn acquire(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        self.with(|s| {
            if s.events.len() >= s.sweep_at {
                s.events.retain(|_, times| {
                    times
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < self.window)
                });
                s.sweep_at = (s.events.len() * 2).max(FIRST_SWEEP);
            }
            let times = s.events.entry(key.to_string()).or_default();
            if let Some(wait) = self.wait(times, now) {
                return Err(wait);
            }
            times.push_back(now);
            Ok(())
        })
    }

    /// Takes back the newest event of `key` (an attempt that turned out to be allowed).
    pub(crate) fn release(&self, key: &str) {
        self.with(|s| {
            if let Some(times) = s.events.get_mut(key) {
                times.pop_back();
                if times.is_empty() {
                    s.events.remove(key);
                }
            }
        })
    }

    /// Forgets every event of `key` (an account's failures after a successful login).
    pub(crate) fn clear(&self, key: &str) {
        self.with(|s| s.events.remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_events_within_the_window() {
        let limiter = WindowLimiter::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(limiter.blocked_for("a").is_none());
            limiter.acquire("a").unwrap();
        }
        let wait = limiter.acquire("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(limiter.blocked_for("a").is_some());
        assert!(limiter.blocked_for("b").is_none());
        limiter.release("a");
        limiter.acquire("a").unwrap();
        std::thread::sleep(Duration::from_millis(220));
        assert!(limiter.blocked_for("a").is_none());
        limiter.acquire("a").unwrap();
        limiter.clear("a");
        assert!(limiter.blocked_for("a").is_none());
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let limiter = std::sync::Arc::new(WindowLimiter::new(10, Duration::from_secs(60)));
        let granted: usize = (0..50)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || l.acquire("k").is_ok() as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 10);
    }
}
