//! One subscriber's queue of formatted events, bounded by count and by bytes, with a record of
//! when its reader last made progress. The hub pushes; the subscriber's stream pops. Either
//! side can close it with a reason; closing frees what was queued at once, so a client that
//! stopped reading holds no events, whatever the state of its socket.

use bytes::Bytes;
use prometheus::IntGauge;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Why a stream ended, sent as the final `close` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    /// The reader fell too far behind (count, bytes or time).
    Overflow,
    Expired,
    Shutdown,
}

pub(super) struct Queue {
    state: Mutex<State>,
    notify: Notify,
    max_events: usize,
    max_bytes: usize,
    /// The server-wide count of queued bytes.
    gauge: IntGauge,
}

struct State {
    events: VecDeque<Bytes>,
    bytes: usize,
    /// Set once; nothing is queued after.
    closed: Option<CloseReason>,
    /// When the reader last took an event or found the queue empty.
    progress: Instant,
}

/// What the reader gets.
pub(super) enum Next {
    Event(Bytes),
    Closed(CloseReason),
}

impl Queue {
    pub(super) fn new(max_events: usize, max_bytes: usize, gauge: IntGauge) -> Queue {
        Queue {
            state: Mutex::new(State {
                events: VecDeque::new(),
                bytes: 0,
                closed: None,
                progress: Instant::now(),
            }),
            notify: Notify::new(),
            max_events,
            max_bytes,
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event; false when the queue is (now) closed. A push over either bound closes
    /// it as a slow consumer. One event larger than the byte bound still goes to an empty
    /// queue, so a large document reaches a reader that keeps up.
    pub(super) fn push(&self, event: Bytes) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() {
            return false;
        }
        let fits = s.events.is_empty()
            || (s.events.len() < self.max_events && s.bytes + event.len() <= self.max_bytes);
        if !fits {
            self.close_locked(&mut s, CloseReason::Overflow);
            return false;
        }
        if s.events.is_empty() {
            s.progress = Instant::now();
        }
        s.bytes += event.len();
        self.gauge.add(event.len() as i64);
        s.events.push_back(event);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Closes the queue and frees what it held; the reader gets `reason` next.
    pub(super) fn close(&self, reason: CloseReason) {
        let mut s = self.lock();
        self.close_locked(&mut s, reason);
        drop(s);
        self.notify.notify_one();
    }

    fn close_locked(&self, s: &mut State, reason: CloseReason) {
        if s.closed.is_none() {
            s.closed = Some(reason);
        }
        self.gauge.sub(s.bytes as i64);
        s.events.clear();
        s.bytes = 0;
    }

    /// Closes the queue as a slow consumer if it has held unread events for longer than
    /// `limit`; whether it did.
    pub(super) fn close_if_stalled(&self, limit: Duration) -> bool {
        let mut s = self.lock();
        if s.closed.is_none() && !s.events.is_empty() && s.progress.elapsed() > limit {
            self.close_locked(&mut s, CloseReason::Overflow);
            drop(s);
            self.notify.notify_one();
            return true;
        }
        false
    }

    /// Waits for the next event, or the reason the queue closed.
    pub(super) async fn next(&self) -> Next {
        loop {
            {
                let mut s = self.lock();
                s.progress = Instant::now();
                if let Some(event) = s.events.pop_front() {
                    s.bytes -= event.len();
                    self.gauge.sub(event.len() as i64);
                    return Next::Event(event);
                }
                if let Some(reason) = s.closed {
                    return Next::Closed(reason);
                }
            }
            // A notification sent between the check and this wait is kept as a permit.
            self.notify.notified().await;
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let s = self.lock();
        self.gauge.sub(s.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(events: usize, bytes: usize) -> Queue {
        Queue::new(events, bytes, IntGauge::new("q", "q").unwrap())
    }

    #[tokio::test]
    async fn bounded_by_bytes_and_count() {
        let q = queue(3, 10);
        assert!(
            q.push(Bytes::from_static(b"0123456789abc")),
            "one large event fits an empty queue"
        );
        assert!(!q.push(Bytes::from_static(b"x")), "but nothing after it");
        assert_eq!(q.gauge.get(), 0, "closing frees the queue");
        assert!(matches!(
            q.next().await,
            Next::Closed(CloseReason::Overflow)
        ));

        let q = queue(2, 100);
        assert!(q.push(Bytes::from_static(b"a")));
        assert!(q.push(Bytes::from_static(b"b")));
        assert_eq!(q.gauge.get(), 2);
        assert!(matches!(q.next().await, Next::Event(e) if e == "a"));
        assert!(q.push(Bytes::from_static(b"c")));
        assert!(!q.push(Bytes::from_static(b"d")));
    }

    #[tokio::test]
    async fn stalled_readers_are_closed() {
        let q = queue(10, 100);
        assert!(
            !q.close_if_stalled(Duration::ZERO),
            "an empty queue is not stalled"
        );
        assert!(q.push(Bytes::from_static(b"a")));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!q.close_if_stalled(Duration::from_secs(60)));
        assert!(q.close_if_stalled(Duration::from_millis(1)));
        assert!(matches!(
            q.next().await,
            Next::Closed(CloseReason::Overflow)
        ));
    }
}
