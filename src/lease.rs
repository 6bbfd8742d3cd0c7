//! Which node delivers a queue in a cluster (a function's events, a webhook's messages): the
//! holder of the queue's lease, a record in the shared store that names the node and when the
//! lease ends. The holder renews it while it delivers; a node that stops renewing (one that was
//! killed) loses it when it ends, and another node takes it over and delivers from the first
//! entry not committed as done: at least once, with the same ids, in order. Every delivery
//! commit checks that its node still holds the lease, so a node that lost it cannot commit what
//! the new holder delivers too. A single node needs no lease.

use crate::store::{KvWrite, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a lease lasts without renewal: how long a dead node's queues wait.
const TTL: Duration = Duration::from_secs(10);
/// How long a holder goes without renewing.
const RENEW_AFTER: Duration = Duration::from_secs(3);
/// How long to wait after losing a race for a free lease.
const RACE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Serialize, Deserialize)]
struct Record {
    node: String,
    /// Unix milliseconds.
    until: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) struct Lease {
    /// The queue: a function's name, or `webhook:` and a webhook's id.
    name: String,
    node: String,
    /// The stored record while this node holds the lease.
    held: Option<Vec<u8>>,
    renewed: Instant,
}

impl Lease {
    pub(crate) fn new(name: &str, node: &str) -> Lease {
        Lease {
            name: name.to_string(),
            node: node.to_string(),
            held: None,
            renewed: Instant::now(),
        }
    }

    /// Takes or renews the lease as needed. `None`: this node holds it; `Some(t)`: another
    /// node does, until `t` at the latest.
    pub(crate) async fn hold(&mut self, store: &Store) -> Result<Option<SystemTime>, StoreError> {
        if self.held.is_some() && self.renewed.elapsed() < RENEW_AFTER {
            return Ok(None);
        }
        let key = self.name.as_bytes();
        let stored = store.kv_get(Space::Leases, key).await?;
        let now = SystemTime::now();
        if let Some(other) = stored
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Record>(b).ok())
            .filter(|r| r.node != self.node && r.until > unix_ms(now))
        {
            self.held = None;
            return Ok(Some(UNIX_EPOCH + Duration::from_millis(other.until)));
        }
        let record = Record {
            node: self.node.clone(),
            until: unix_ms(now + TTL),
        };
        let fresh = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let write = KvWrite::default().check(Space::Leases, key, stored).put(
            Space::Leases,
            key,
            fresh.clone(),
        );
        match store.kv_write(write).await {
            Ok(()) => {
                self.held = Some(fresh);
                self.renewed = Instant::now();
                Ok(None)
            }
            Err(StoreError::CasFailed) => {
                self.held = None;
                Ok(Some(now + RACE_PAUSE))
            }
            Err(e) => Err(e),
        }
    }

    /// Makes a write commit only while this node still holds the lease.
    pub(crate) fn fence(&self, write: KvWrite) -> KvWrite {
        write.check(Space::Leases, self.name.as_bytes(), self.held.clone())
    }

    /// Forgets the lease after a fenced write failed: another node took it.
    pub(crate) fn lost(&mut self) {
        self.held = None;
    }
}
