//! Throttling of failed logins: at most `max` failures per key within a sliding window.
//!
//! Rate-limiter crates such as governor count every request and cannot ask "is this key
//! blocked?" without spending a cell; login throttling must count only failures and check
//! before the (expensive) password hash. So this is a small sliding window per key, in memory,
//! with the map bounded: keys whose failures all left the window are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys kept before a sweep of expired ones.
const SWEEP_AT: usize = 10_000;

pub struct FailureLimiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        FailureLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, VecDeque<Instant>>) -> T) -> T {
        match self.failures.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// How long until `key` may try again, if it is blocked now.
    pub fn blocked_for(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.with(|map| {
            let times = map.get_mut(key)?;
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
            Some(self.window.saturating_sub(now.duration_since(oldest)))
        })
    }

    /// Counts one failure of `key`.
    pub fn record_failure(&self, key: &str) {
        let now = Instant::now();
        self.with(|map| {
            if map.len() >= SWEEP_AT {
                map.retain(|_, times| {
                    times
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < self.window)
                });
            }
            let times = map.entry(key.to_string()).or_default();
            times.push_back(now);
            while times.len() > self.max {
                times.pop_front();
            }
        })
    }

    /// Forgets the failures of `key` (after a successful login).
    pub fn clear(&self, key: &str) {
        self.with(|map| map.remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_within_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(limiter.blocked_for("a").is_none());
            limiter.record_failure("a");
        }
        let wait = limiter.blocked_for("a").unwrap();
        assert!(wait <= Duration::from_millis(200));
        assert!(limiter.blocked_for("b").is_none());
        std::thread::sleep(Duration::from_millis(220));
        assert!(limiter.blocked_for("a").is_none());
        limiter.record_failure("a");
        limiter.clear("a");
        assert!(limiter.blocked_for("a").is_none());
    }
}
