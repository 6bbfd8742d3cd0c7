//! Ordered, parallel, at-least-once delivery of a durable queue (a function's trigger events, a
//! webhook's messages): one task per queue reads the queue's head in commit order and keeps up
//! to `concurrency` deliveries in flight, never two with the same ordering key (a document, a
//! file, an account, a schedule), and never one whose key has an earlier entry still waiting
//! (in flight, or failed and waiting for its retry). So a slow or failing entry holds back only
//! its own key's later entries. Finished deliveries are committed together, with what the queue
//! makes of them (a record, the entry removed or rescheduled); in a cluster only while this node
//! holds the queue's lease. A crash between a delivery and its commit means it is delivered
//! again.

use crate::lease::Lease;
use crate::model::Change;
use crate::store::{ChangeReceiver, KvEntry, KvWrite, Store, StoreError};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How far ahead in a queue the dispatcher looks for entries it may deliver.
pub(crate) const LOOK_AHEAD: usize = 512;
/// The longest wait between two looks at an idle queue: how late an entry no local change
/// announces (another node's, a redelivery) is at most.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The retry delay after failed attempt `n` (1-based): `base_ms` times 4^(n-1), at most an
/// hour, with ±20% jitter.
pub(crate) fn backoff(base_ms: u64, n: u32) -> Duration {
    let factor = 4u64.saturating_pow(n.saturating_sub(1).min(20));
    let delay = Duration::from_millis(base_ms.saturating_mul(factor)).min(MAX_BACKOFF);
    delay.mul_f64(rand::random::<f64>() * 0.4 + 0.8)
}

/// Unix milliseconds.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A delivery task and the signal that wakes it.
type Task = (Arc<Notify>, tokio::task::JoinHandle<()>);

/// A service's running delivery tasks, by queue, and the task that wakes them on changes.
#[derive(Default)]
pub(crate) struct Dispatchers {
    tasks: Mutex<HashMap<String, Task>>,
    waker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Dispatchers {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes a queue's task: entries were added.
    pub(crate) fn notify(&self, queue: &str) {
        if let Some((notify, _)) = self.tasks().get(queue) {
            notify.notify_one();
        }
    }

    /// Wakes every queue's task.
    pub(crate) fn notify_all(&self) {
        for (notify, _) in self.tasks().values() {
            notify.notify_one();
        }
    }

    /// Starts a queue's task with `start` (given the signal that will wake it) unless it runs;
    /// wakes it otherwise (its configuration may have changed).
    pub(crate) fn ensure(
        &self,
        queue: &str,
        start: impl FnOnce(Arc<Notify>) -> tokio::task::JoinHandle<()>,
    ) {
        let mut tasks = self.tasks();
        if let Some((notify, task)) = tasks.get(queue) {
            if !task.is_finished() {
                notify.notify_one();
                return;
            }
        }
        let notify = Arc::new(Notify::new());
        let task = start(notify.clone());
        tasks.insert(queue.to_string(), (notify, task));
    }

    /// Stops a queue's task.
    pub(crate) fn remove(&self, queue: &str) {
        if let Some((_, task)) = self.tasks().remove(queue) {
            task.abort();
        }
    }

    /// Stops the tasks of the queues not in `queues`.
    pub(crate) fn retain(&self, queues: &[String]) {
        self.tasks().retain(|queue, (_, task)| {
            let keep = queues.contains(queue);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// Stops every task.
    pub(crate) fn stop(&self) {
        for (_, (_, task)) in self.tasks().drain() {
            task.abort();
        }
        if let Some(waker) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            waker.abort();
        }
    }

    /// Follows the change feed: `wake` is told of each change (whose entries are queued when
    /// it is broadcast), or of nothing when the follower fell behind (wake every queue then).
    pub(crate) fn follow(
        &self,
        tokio: &tokio::runtime::Handle,
        mut changes: ChangeReceiver,
        wake: impl Fn(Option<&Change>) + Send + 'static,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        let task = tokio.spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(change) => wake(Some(&change)),
                    Err(RecvError::Lagged(_)) => wake(None),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

/// An entry of a queue's head, as the scheduler sees it.
#[derive(Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub(crate) order: &'a str,
    pub(crate) not_before: u64,
    pub(crate) in_flight: bool,
}

/// Which of the head's entries (in commit order) to deliver now: at most `slots`, each the
/// first of its ordering key that is not in flight and due; a key whose first entry waits (in
/// flight, or for its retry) holds back its later ones, and no other. Returns their indexes,
/// and when the first held-back retry seen is due (Unix milliseconds).
///
/// The candidates are built as they are looked at, and the look stops at the entry that fills
/// the last slot: a delivery that ends brings another look, which finds a retry further on.
/// So a busy queue costs each look the entries up to its last pick, not its whole head.
pub(crate) fn pick<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    now: u64,
    slots: usize,
) -> (Vec<usize>, Option<u64>) {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut picked = Vec::new();
    let mut due: Option<u64> = None;
    for (i, c) in candidates.into_iter().enumerate() {
        if !seen.insert(c.order) || c.in_flight {
            continue;
        }
        if c.not_before > now {
            due = Some(due.map_or(c.not_before, |d| d.min(c.not_before)));
        } else if picked.len() < slots {
            picked.push(i);
            if picked.len() == slots {
                break;
            }
        }
    }
    (picked, due)
}

/// What a queue allows in one look at it.
pub(crate) struct Round {
    /// At most how long to wait before the next look.
    pub(crate) wait: Option<Duration>,
    /// How many deliveries may be in flight (0: paused).
    pub(crate) concurrency: usize,
    /// How many may start now, when something else than `concurrency` limits it (a quota).
    pub(crate) budget: Option<usize>,
}

impl Round {
    pub(crate) fn new(wait: Option<Duration>, concurrency: usize) -> Round {
        Round {
            wait,
            concurrency,
            budget: None,
        }
    }
}

/// The first entries of a queue with their keys; `None` for an entry that cannot be read.
pub(crate) type Head<E> = Vec<(Vec<u8>, Option<E>)>;

/// A queue's head from its stored JSON entries.
pub(crate) fn parse_head<E: serde::de::DeserializeOwned>(rows: Vec<KvEntry>) -> Head<E> {
    rows.into_iter()
        .map(|(key, bytes)| (key, serde_json::from_slice(&bytes).ok()))
        .collect()
}

/// A durable queue that [`drive`] delivers.
pub(crate) trait Queue: Send + 'static {
    /// A stored entry, parsed.
    type Entry: Clone + Send + 'static;
    /// A finished delivery, for [`Queue::outcome`].
    type Done: Send + 'static;

    /// What the log and the lease call the queue.
    fn name(&self) -> &str;

    /// Called before each look at the queue (a function fires its due schedule ticks here).
    /// `None` stops the dispatcher: the queue is gone.
    fn prepare(&mut self) -> impl Future<Output = Option<Round>> + Send;

    /// The queue's first entries, at most [`LOOK_AHEAD`], in commit order, with their keys;
    /// `None` for an entry that cannot be read (it is removed).
    fn head(&self) -> impl Future<Output = Result<Head<Self::Entry>, StoreError>> + Send;

    /// An entry's ordering key, and not before when it may be delivered (Unix milliseconds).
    fn schedule<'a>(&self, entry: &'a Self::Entry) -> (&'a str, u64);

    /// Delivers one entry.
    fn deliver(&self, key: Vec<u8>, entry: Self::Entry) -> BoxFuture<'static, Self::Done>;

    /// The key of the entry a delivery was about.
    fn key<'a>(&self, done: &'a Self::Done) -> &'a [u8];

    /// The write that commits finished deliveries: their records, and their entries removed
    /// or rescheduled; and whether any was rescheduled.
    fn outcome(&self, done: Vec<Self::Done>) -> impl Future<Output = (KvWrite, bool)> + Send;

    /// The write that removes unreadable entries.
    fn drop_unreadable(&self, keys: Vec<Vec<u8>>) -> KvWrite;

    /// Called after each commit of outcomes, with how many it recorded, and whether nothing is
    /// delivering or committing any more (for pruning).
    fn committed(&mut self, count: usize, idle: bool) -> impl Future<Output = ()> + Send;
}

/// What a commit of outcomes settles: the entries' keys, whether one was rescheduled, and the
/// commit's result.
type Settled = (Vec<Vec<u8>>, bool, Result<(), StoreError>);

/// Delivers a queue until [`Queue::prepare`] says it is gone. `notify` wakes it when entries
/// are added; `node` names this process in the queue's lease, in a cluster.
///
/// The head is read once and then consumed from memory, read again only when an entry is
/// rescheduled, a retry is due, a commit failed, or nothing in it can go.
/// A finished delivery's commit runs while the next deliveries start (the engine groups
/// concurrent commits into one flush); its entry and key stay taken until it is durable.
pub(crate) async fn drive<Q: Queue>(mut queue: Q, store: Store, node: String, notify: Arc<Notify>) {
    let mut lease = store.is_shared().then(|| Lease::new(queue.name(), &node));
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Q::Done>> = FuturesUnordered::new();
    let mut committing: FuturesUnordered<BoxFuture<'static, Settled>> = FuturesUnordered::new();
    // Entries taken: delivering, or committing what their delivery did.
    let mut taken: HashSet<Vec<u8>> = HashSet::new();
    let mut head: Vec<(Vec<u8>, Q::Entry)> = Vec::new();
    let mut stale = true;
    loop {
        let Some(round) = queue.prepare().await else {
            return;
        };
        let concurrency = round.concurrency;
        let mut wait = round.wait.map_or(IDLE_POLL, |n| n.min(IDLE_POLL));
        let holding = match lease.as_mut() {
            None => true,
            Some(lease) => match lease.hold(&store).await {
                Ok(None) => true,
                Ok(Some(until)) => {
                    wait = until
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        .clamp(Duration::from_millis(50), Duration::from_secs(60));
                    false
                }
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, "cannot take the queue's lease");
                    false
                }
            },
        };
        if !holding {
            // Another node may deliver meanwhile: what is in memory is not to be trusted.
            stale = true;
        } else if in_flight.len() < concurrency {
            // From the head in memory; read again when it is stale, or when it yields nothing
            // (consumed, or all held back) and entries may have come after it.
            for read in [stale, true] {
                if read {
                    match read_head(&queue, &store).await {
                        Ok(entries) => {
                            head = entries;
                            stale = false;
                        }
                        Err(e) => {
                            tracing::warn!(queue = queue.name(), error = %e, "cannot read the queue");
                            break;
                        }
                    }
                }
                let candidates = head.iter().map(|(key, entry)| {
                    let (order, not_before) = queue.schedule(entry);
                    Candidate {
                        order,
                        not_before,
                        in_flight: taken.contains(key),
                    }
                });
                let now = unix_ms(SystemTime::now());
                let slots = concurrency - in_flight.len();
                let slots = round.budget.map_or(slots, |budget| budget.min(slots));
                let (picked, due) = pick(candidates, now, slots);
                if let Some(due) = due {
                    wait = wait.min(Duration::from_millis(due.saturating_sub(now)));
                }
                let found = !picked.is_empty();
                for i in picked {
                    let (key, entry) = head[i].clone();
                    taken.insert(key.clone());
                    in_flight.push(queue.deliver(key, entry));
                }
                if found || read {
                    break;
                }
            }
        }
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut finished = vec![done];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    finished.push(more);
                }
                let keys: Vec<Vec<u8>> = finished.iter().map(|d| queue.key(d).to_vec()).collect();
                let (write, rescheduled) = queue.outcome(finished).await;
                let write = match &lease {
                    Some(lease) => lease.fence(write),
                    None => write,
                };
                let store = store.clone();
                committing.push(Box::pin(async move {
                    let result = store.kv_write(write).await;
                    (keys, rescheduled, result)
                }));
            }
            Some((keys, rescheduled, result)) = committing.next(), if !committing.is_empty() => {
                match (result, lease.as_mut()) {
                    (Ok(()), _) => {}
                    (Err(StoreError::CasFailed), Some(lease)) => {
                        tracing::info!(queue = queue.name(), "another node took over the queue");
                        lease.lost();
                        stale = true;
                    }
                    (Err(e), _) => {
                        tracing::warn!(queue = queue.name(), error = %e, "cannot record deliveries; they run again");
                        stale = true;
                    }
                }
                // A rescheduled entry is read again with its new time; a delivered one is gone.
                stale |= rescheduled;
                head.retain(|(key, _)| !keys.contains(key));
                for key in &keys {
                    taken.remove(key);
                }
                let idle = in_flight.is_empty() && committing.is_empty();
                queue.committed(keys.len(), idle).await;
            }
            // New entries come after the head in memory: it is read again once it yields
            // nothing. A due retry or a quiet second reads it again anyway.
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => stale = true,
        }
    }
}

/// Reads a queue's head, removing the entries that cannot be read.
async fn read_head<Q: Queue>(
    queue: &Q,
    store: &Store,
) -> Result<Vec<(Vec<u8>, Q::Entry)>, StoreError> {
    let rows = queue.head().await?;
    let (readable, unreadable): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|(_, entry)| entry.is_some());
    if !unreadable.is_empty() {
        tracing::error!(
            queue = queue.name(),
            count = unreadable.len(),
            "dropping unreadable queue entries"
        );
        let keys = unreadable.into_iter().map(|(key, _)| key).collect();
        if let Err(e) = store.kv_write(queue.drop_unreadable(keys)).await {
            tracing::warn!(queue = queue.name(), error = %e, "cannot drop unreadable queue entries");
        }
    }
    Ok(readable
        .into_iter()
        .filter_map(|(key, entry)| Some((key, entry?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(order: &str, not_before: u64, in_flight: bool) -> Candidate<'_> {
        Candidate {
            order,
            not_before,
            in_flight,
        }
    }

    #[test]
    fn retries_back_off_four_times_longer_each_up_to_an_hour() {
        assert!(backoff(1000, 1) <= Duration::from_millis(1200));
        assert!(backoff(1000, 3) >= Duration::from_millis(12_800));
        assert!(backoff(1000, 50) <= MAX_BACKOFF.mul_f64(1.2));
    }

    #[test]
    fn each_key_goes_in_order_and_a_waiting_key_holds_back_only_itself() {
        let queue = [
            c("a", 0, false),
            c("b", 0, true),
            c("a", 0, false),
            c("b", 0, false),
            c("c", 500, false),
            c("c", 0, false),
            c("d", 0, false),
            c("e", 0, false),
        ];
        let pick = |now, slots| pick(queue.iter().copied(), now, slots);
        // a's second, b's second (b in flight), c's second (c's first waits) stay back.
        assert_eq!(pick(100, 10), (vec![0, 6, 7], Some(500)));
        assert_eq!(pick(600, 10), (vec![0, 4, 6, 7], None));
        assert_eq!(pick(600, 0), (vec![], None));
        // The look stops at the last slot filled: a retry after it is found by a later look.
        assert_eq!(pick(100, 2), (vec![0, 6], Some(500)));
        assert_eq!(pick(100, 1), (vec![0], None));
        assert_eq!(pick(600, 2), (vec![0, 4], None));
    }
}
