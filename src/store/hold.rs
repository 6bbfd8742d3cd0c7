//! Deletions that wait while a backup reads. File blobs and a single node's module files live
//! outside the store, and a record removed after a backup's snapshot still points at its bytes
//! in that snapshot: deleting them at once would leave the archive a record without its file.
//! So while a backup holds deletions, the work that deletes such bytes (`Store::delete_outside`)
//! is kept and runs once no backup holds them any more.
//!
//! In a cluster, a backup on one node must hold the other nodes' deletions too: the hold is also
//! a lease record in the shared store (`Space::Leases`, key `\0backup`), renewed while the
//! backup runs, which every node reads before deleting. A node reads it after the commit that
//! removed the record, and a backup writes it before taking its snapshot, so a record the
//! snapshot holds is never missing its bytes. Deferred work is kept in memory: a crash leaves
//! an orphan that the startup sweep removes.

use super::{KvWrite, Space, Store, StoreError};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lease key of a cluster-wide hold (no function or webhook lease starts with `00`).
const LEASE_KEY: &[u8] = b"\0backup";
/// How long a cluster-wide hold lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a running backup renews it.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often deferred work checks whether the hold was released.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Holds {
    state: Mutex<State>,
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Backups of this process holding deletions.
    local: usize,
    deferred: Vec<BoxFuture<'static, ()>>,
    /// Whether a task waits to run the deferred work.
    waiting: bool,
}

impl Holds {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Holds deletions until dropped.
pub(crate) struct DeletionHold {
    holds: Arc<Holds>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for DeletionHold {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let mut state = self.holds.state();
        state.local = state.local.saturating_sub(1);
        drop(state);
        self.holds.released.notify_waiters();
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Holds deletions of bytes outside the store until the returned guard drops: on this
    /// node, and in a cluster on every node. Take it before the snapshot it protects.
    pub(crate) async fn hold_deletions(&self) -> Result<DeletionHold, StoreError> {
        let holds = self.shared.holds.clone();
        holds.state().local += 1;
        let mut hold = DeletionHold {
            holds,
            renewer: None,
        };
        if self.is_shared() {
            renew_lease(self).await?;
            let store = self.clone();
            hold.renewer = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if let Err(e) = renew_lease(&store).await {
                        tracing::warn!(error = %e, "cannot renew the backup's hold on deletions");
                    }
                }
            }));
        }
        Ok(hold)
    }

    /// Runs `work` (which deletes bytes outside the store that no record points at any more)
    /// now, or once no backup holds deletions.
    pub(crate) async fn delete_outside(&self, work: BoxFuture<'static, ()>) {
        let cluster_held = self.is_shared() && self.lease_held().await;
        let work = {
            let mut state = self.shared.holds.state();
            if state.local == 0 && !cluster_held {
                Some(work)
            } else {
                state.deferred.push(work);
                let start_waiter = !state.waiting;
                state.waiting = true;
                if start_waiter {
                    let store = self.clone();
                    tokio::spawn(async move { store.run_deferred().await });
                }
                None
            }
        };
        if let Some(work) = work {
            work.await;
        }
    }

    /// Waits until nothing holds deletions, then runs what was deferred.
    async fn run_deferred(&self) {
        let holds = self.shared.holds.clone();
        loop {
            let released = holds.released.notified();
            let cluster_held = self.is_shared() && self.lease_held().await;
            let work = {
                let mut state = holds.state();
                (state.local == 0 && !cluster_held).then(|| {
                    state.waiting = false;
                    std::mem::take(&mut state.deferred)
                })
            };
            if let Some(work) = work {
                for w in work {
                    w.await;
                }
                return;
            }
            let _ = tokio::time::timeout(RECHECK, released).await;
        }
    }

    /// Whether a backup, here or on another node, holds deletions now.
    pub(crate) async fn deletions_held(&self) -> bool {
        self.shared.holds.state().local > 0 || (self.is_shared() && self.lease_held().await)
    }

    /// Whether a backup anywhere in the cluster holds deletions. An unreadable lease counts
    /// as held: the deletion waits rather than risk a backup.
    async fn lease_held(&self) -> bool {
        match self.kv_get(Space::Leases, LEASE_KEY).await {
            Ok(Some(until)) => <[u8; 8]>::try_from(until.as_slice())
                .is_ok_and(|b| u64::from_be_bytes(b) > unix_ms(SystemTime::now())),
            Ok(None) => false,
            Err(_) => true,
        }
    }
}

/// Moves the cluster-wide hold's end to `LEASE_TTL` from now (never earlier than another
/// backup's).
async fn renew_lease(store: &Store) -> Result<(), StoreError> {
    loop {
        let stored = store.kv_get(Space::Leases, LEASE_KEY).await?;
        let current = stored
            .as_deref()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        let until = current.max(unix_ms(SystemTime::now() + LEASE_TTL));
        let write = KvWrite::default()
            .check(Space::Leases, LEASE_KEY, stored)
            .put(Space::Leases, LEASE_KEY, until.to_be_bytes().to_vec());
        match store.kv_write(write).await {
            // Another backup renewed it meanwhile: read it again.
            Err(StoreError::CasFailed) => continue,
            other => return other,
        }
    }
}
