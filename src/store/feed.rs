//! The in-process change feed: every committed change, to live consumers (realtime, triggers,
//! embedding programs), bounded by bytes as well as by count. It keeps the newest changes in
//! memory; a consumer that falls further behind than they reach gets `Lagged` and catches up
//! from the stored change records (`Store::changes_after`), as with a tokio broadcast channel,
//! whose errors it reuses. A burst of large changes therefore costs at most `max_bytes` of
//! memory, however many there are.

use crate::model::Change;
use prometheus::IntGauge;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

/// Changes kept at most, whatever their size.
const MAX_CHANGES: usize = 4096;

pub(super) struct ChangeFeed {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    /// Bytes held, reported as a metric.
    gauge: IntGauge,
}

struct State {
    /// The newest changes, oldest first, with their encoded size.
    recent: VecDeque<(Arc<Change>, usize)>,
    bytes: usize,
    /// The sequence of the last change published, and of the last one dropped from memory.
    last: u64,
    dropped_through: u64,
    closed: bool,
}

impl ChangeFeed {
    /// A feed whose next change follows `last`.
    pub(super) fn new(last: u64, max_bytes: usize, gauge: IntGauge) -> Arc<ChangeFeed> {
        Arc::new(ChangeFeed {
            state: Mutex::new(State {
                recent: VecDeque::new(),
                bytes: 0,
                last,
                dropped_through: last,
                closed: false,
            }),
            notify: Notify::new(),
            max_bytes,
            gauge,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a committed change of `size` encoded bytes. The newest change is always
    /// kept, so a consumer that keeps up receives even one larger than the bound.
    pub(super) fn publish(&self, change: Change, size: usize) {
        let mut s = self.lock();
        s.last = change.seq;
        s.bytes += size;
        s.recent.push_back((Arc::new(change), size));
        while s.recent.len() > 1 && (s.bytes > self.max_bytes || s.recent.len() > MAX_CHANGES) {
            if let Some((old, size)) = s.recent.pop_front() {
                s.bytes -= size;
                s.dropped_through = old.seq;
            }
        }
        self.gauge.set(s.bytes as i64);
        drop(s);
        self.notify.notify_waiters();
    }

    /// The sequence of the last change published.
    pub(super) fn last(&self) -> u64 {
        self.lock().last
    }

    /// Ends the feed: receivers get `Closed` once they have taken what is in memory.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// A receiver of every change published from now on.
    pub(super) fn subscribe(self: &Arc<Self>) -> ChangeReceiver {
        let next = self.lock().last + 1;
        ChangeReceiver {
            feed: self.clone(),
            next,
        }
    }
}

/// One consumer's position in the feed.
pub struct ChangeReceiver {
    feed: Arc<ChangeFeed>,
    /// The sequence of the next change this consumer wants.
    next: u64,
}

impl ChangeReceiver {
    /// The next change; `Lagged(n)` when `n` changes it wanted are no longer in memory (it
    /// continues after them, and reads them from the store if it needs them); `Closed` when
    /// the store closed.
    pub async fn recv(&mut self) -> Result<Arc<Change>, RecvError> {
        let feed = self.feed.clone();
        loop {
            let notified = feed.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.try_next() {
                return result;
            }
            notified.await;
        }
    }

    fn try_next(&mut self) -> Option<Result<Arc<Change>, RecvError>> {
        let s = self.feed.lock();
        if self.next <= s.dropped_through {
            let missed = s.dropped_through + 1 - self.next;
            self.next = s.dropped_through + 1;
            return Some(Err(RecvError::Lagged(missed)));
        }
        let at = s.recent.partition_point(|(c, _)| c.seq < self.next);
        if let Some((change, _)) = s.recent.get(at) {
            self.next = change.seq + 1;
            return Some(Ok(change.clone()));
        }
        s.closed.then_some(Err(RecvError::Closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeKind, Subject};

    fn change(seq: u64) -> Change {
        Change {
            seq,
            kind: ChangeKind::Create,
            subject: Subject::Document {
                collection: "c".into(),
                id: format!("d{seq}"),
                before: None,
                after: None,
            },
            time: String::new(),
            actor: None,
            depth: 0,
            trace: None,
        }
    }

    #[tokio::test]
    async fn bounded_by_bytes_with_lag_reported() {
        let feed = ChangeFeed::new(0, 100, IntGauge::new("f", "f").unwrap());
        let mut rx = feed.subscribe();
        for seq in 1..=5 {
            feed.publish(change(seq), 40);
        }
        assert_eq!(feed.gauge.get(), 80, "two changes of 40 bytes fit in 100");
        assert!(matches!(rx.recv().await, Err(RecvError::Lagged(3))));
        assert_eq!(rx.recv().await.unwrap().seq, 4);
        assert_eq!(rx.recv().await.unwrap().seq, 5);
        feed.publish(change(6), 1000);
        assert_eq!(
            rx.recv().await.unwrap().seq,
            6,
            "the newest is kept whatever its size"
        );
        feed.close();
        assert!(matches!(rx.recv().await, Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let feed = ChangeFeed::new(7, 1 << 20, IntGauge::new("f", "f").unwrap());
        let mut rx = feed.subscribe();
        let publisher = feed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            publisher.publish(change(8), 10);
        });
        assert_eq!(rx.recv().await.unwrap().seq, 8);
    }
}
