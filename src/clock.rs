//! The time that schedules and `now()` in rules read: the system's, moved forward by the dev
//! clock (`POST /v1/admin/dev/clock`, only under `emberbase dev`). The offset is
//! process-wide, as `now()` in the rule language has no server to ask; a process that moves
//! it runs one server, the dev one. Everything else (tokens, timestamps, retention) keeps the
//! system's time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How far the dev clock is ahead of the system's, in milliseconds.
static AHEAD_MS: AtomicU64 = AtomicU64::new(0);

/// How far the clock is ahead of the system's.
pub(crate) fn ahead() -> Duration {
    Duration::from_millis(AHEAD_MS.load(Ordering::SeqCst))
}

/// Now, by the clock.
pub(crate) fn now() -> SystemTime {
    SystemTime::now() + ahead()
}

/// Now, by the clock, as a UTC date-time.
pub(crate) fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + ahead()
}

/// Moves the clock forward; returns how far ahead it is now.
pub(crate) fn advance(by: Duration) -> Duration {
    let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    let before = AHEAD_MS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ms| {
            Some(ms.saturating_add(by))
        })
        .unwrap_or_else(|ms| ms);
    Duration::from_millis(before.saturating_add(by))
}
