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
//!
//! The nodes of a cluster share their windows, so that spreading attempts over nodes gains an
//! attacker nothing: each key's window is then a record of the shared store (its events' Unix
//! milliseconds), changed by compare-and-set, and pruned with the other account records once
//! its newest event has left every window. If the store cannot be reached, a shared window
//! lets the attempt through: the request fails on the store anyway.

use crate::store::{KvWrite, Space, Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keys kept before the first sweep.
const FIRST_SWEEP: usize = 10_000;

/// Compare-and-set attempts on one shared window before the event is refused for a second.
const SHARED_ATTEMPTS: usize = 16;

pub(crate) struct WindowLimiter {
    max: usize,
    window: Duration,
    state: Mutex<State>,
    /// The shared store and this limiter's name in it, in a cluster.
    shared: Option<(Store, &'static str)>,
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
            shared: None,
        }
    }

    /// The same limits, kept in `store` as `name` when other nodes share it.
    pub(crate) fn shared_in(mut self, store: &Store, name: &'static str) -> Self {
        if store.is_shared() {
            self.shared = Some((store.clone(), name));
        }
        self
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
    pub(crate) async fn acquire(&self, key: &str) -> Result<(), Duration> {
        match &self.shared {
            Some((store, name)) => self.acquire_shared(store, name, key).await,
            None => self.acquire_local(key),
        }
    }

    /// Takes back the newest event of `key` (an attempt that turned out to be allowed).
    pub(crate) async fn release(&self, key: &str) {
        match &self.shared {
            Some((store, name)) => self.release_shared(store, name, key).await,
            None => self.release_local(key),
        }
    }

    /// Forgets every event of `key` (an account's failures after a successful login).
    pub(crate) async fn clear(&self, key: &str) {
        match &self.shared {
            Some((store, name)) => {
                let write = KvWrite::default().delete(Space::Throttle, shared_key(name, key));
                if let Err(e) = store.kv_write(write).await {
                    tracing::debug!(error = %e, "cannot clear a shared throttling window");
                }
            }
            None => self.clear_local(key),
        }
    }

    /// The events of a shared window still inside it, and the stored bytes they came from.
    async fn read_shared(
        &self,
        store: &Store,
        key: &[u8],
        now: u64,
    ) -> Result<(Vec<u64>, Option<Vec<u8>>), StoreError> {
        let stored = store.kv_get(Space::Throttle, key).await?;
        let window = self.window.as_millis() as u64;
        let times = decode(stored.as_deref().unwrap_or_default())
            .into_iter()
            .filter(|t| now.saturating_sub(*t) < window)
            .collect();
        Ok((times, stored))
    }

    async fn acquire_shared(&self, store: &Store, name: &str, key: &str) -> Result<(), Duration> {
        let record = shared_key(name, key);
        for _ in 0..SHARED_ATTEMPTS {
            let now = unix_ms();
            let Ok((mut times, stored)) = self.read_shared(store, &record, now).await else {
                return Ok(());
            };
            if times.len() >= self.max {
                let oldest = times.first().copied().unwrap_or(now);
                let left = (self.window.as_millis() as u64).saturating_sub(now - oldest);
                return Err(Duration::from_millis(left).max(Duration::from_secs(1)));
            }
            times.push(now);
            let write = KvWrite::default()
                .check(Space::Throttle, record.clone(), stored)
                .put(Space::Throttle, record.clone(), encode(&times));
            match store.kv_write(write).await {
                Ok(()) => return Ok(()),
                Err(StoreError::CasFailed) => continue,
                Err(_) => return Ok(()),
            }
        }
        Err(Duration::from_secs(1))
    }

    async fn release_shared(&self, store: &Store, name: &str, key: &str) {
        let record = shared_key(name, key);
        for _ in 0..SHARED_ATTEMPTS {
            let Ok((mut times, stored)) = self.read_shared(store, &record, unix_ms()).await else {
                return;
            };
            if times.pop().is_none() {
                return;
            }
            let write = KvWrite::default()
                .check(Space::Throttle, record.clone(), stored)
                .put(Space::Throttle, record.clone(), encode(&times));
            if !matches!(store.kv_write(write).await, Err(StoreError::CasFailed)) {
                return;
            }
        }
    }

    fn acquire_local(&self, key: &str) -> Result<(), Duration> {
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

    fn release_local(&self, key: &str) {
        self.with(|s| {
            if let Some(times) = s.events.get_mut(key) {
                times.pop_back();
                if times.is_empty() {
                    s.events.remove(key);
                }
            }
        })
    }

    fn clear_local(&self, key: &str) {
        self.with(|s| s.events.remove(key));
    }
}

fn shared_key(name: &str, key: &str) -> Vec<u8> {
    [name.as_bytes(), b"\0", key.as_bytes()].concat()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(times: &[u64]) -> Vec<u8> {
    times.iter().flat_map(|t| t.to_be_bytes()).collect()
}

fn decode(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect()
}

/// The newest event of a stored shared window (Unix milliseconds), for pruning.
pub(crate) fn newest_event(bytes: &[u8]) -> Option<u64> {
    decode(bytes).last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_events_within_the_window() {
        let limiter = WindowLimiter::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(limiter.blocked_for("a").is_none());
            limiter.acquire_local("a").unwrap();
        }
        let wait = limiter.acquire_local("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(limiter.blocked_for("a").is_some());
        assert!(limiter.blocked_for("b").is_none());
        limiter.release_local("a");
        limiter.acquire_local("a").unwrap();
        std::thread::sleep(Duration::from_millis(220));
        assert!(limiter.blocked_for("a").is_none());
        limiter.acquire_local("a").unwrap();
        limiter.clear_local("a");
        assert!(limiter.blocked_for("a").is_none());
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let limiter = std::sync::Arc::new(WindowLimiter::new(10, Duration::from_secs(60)));
        let granted: usize = (0..50)
            .map(|_| {
                let l = limiter.clone();
                std::thread::spawn(move || l.acquire_local("k").is_ok() as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 10);
    }
}
