//! Following a shared store. In a cluster other nodes commit too: their changes reach this
//! node only as stored change records and a moving [`Engine::watch`](crate::engine::Engine),
//! and their configuration changes only as a new configuration epoch. The follower reads the
//! records in sequence order as the watch moves and publishes them to the in-process feed (as
//! the commits of a single node publish their own), and reloads the collections'
//! configuration when the epoch changes.
//!
//! The timer only bounds how stale a node's caches are for reads. Writes are fenced: a
//! document write's first attempt expects the epoch this node loaded (the commit checks it,
//! without a read before), and any other try reads the epoch in its transaction and, if this
//! node has not loaded it, reloads before it decides. So no write is checked against rules,
//! or misses a trigger, that another node already replaced; a configuration change committed
//! meanwhile makes it run again.

use super::{keys, records, Store, StoreError};
use crate::engine::{Keyspace, Transaction};
use std::time::Duration;

/// Change records read at a time.
const PAGE: usize = 256;

/// Marks a configuration change for the other nodes, in the transaction that makes it.
pub(super) fn touch_epoch(txn: &mut dyn Transaction) {
    let epoch = ulid::Ulid::new().to_bytes().to_vec();
    txn.put(Keyspace::Meta, keys::EPOCH_KEY.to_vec(), epoch);
}

/// Starts the follower of a shared store (see the module documentation).
pub(super) fn start(store: Store, poll: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = store.engine.watch();
        let mut last = store.shared.changes.last();
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let target = *watch.borrow_and_update();
            if target > last {
                match store.publish_after(last, target).await {
                    Ok(published) => last = published,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the cluster's changes; retrying");
                        tokio::time::sleep(poll).await;
                    }
                }
                continue;
            }
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticks.tick() => match store.read_epoch().await {
                    Ok(now) if now != *store.shared.loaded_epoch.lock().await => {
                        if let Err(e) = store.reload().await {
                            tracing::warn!(error = %e, "cannot reload the configuration");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the configuration epoch"),
                },
            }
        }
    })
}

impl Store {
    /// Publishes the stored changes after `last` up to `target` (some of which retention may
    /// have removed); returns the last sequence published.
    async fn publish_after(&self, last: u64, target: u64) -> Result<u64, StoreError> {
        let changes = self.changes_after(last, PAGE).await?;
        if changes.is_empty() {
            // Every change up to `target` is visible once the watch shows it: none is left.
            return Ok(target);
        }
        let mut published = last;
        for change in changes {
            if change.seq > published + 1 {
                tracing::warn!(
                    from = published + 1,
                    to = change.seq - 1,
                    "changes were pruned before this node read them"
                );
            }
            published = change.seq;
            let size = records::json_size(&change)?;
            self.shared.changes.publish(change, size);
        }
        self.shared.metrics.change_seq.set(published as i64);
        Ok(published)
    }

    pub(super) async fn read_epoch(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .engine
            .get(Keyspace::Meta, keys::EPOCH_KEY)
            .await?
            .map(|b| b.to_vec()))
    }

    /// Reads the configuration epoch in a write's transaction and, if this node has not
    /// loaded it, reloads first (see the module documentation).
    pub(super) async fn fence(&self, txn: &mut dyn Transaction) -> Result<(), StoreError> {
        if !self.engine.shared() {
            return Ok(());
        }
        let epoch = txn.get(Keyspace::Meta, keys::EPOCH_KEY).await?;
        if epoch.as_deref() == self.shared.loaded_epoch.lock().await.as_deref() {
            return Ok(());
        }
        self.reload().await
    }

    /// The fence of a write's first attempt on a shared store: rather than read the epoch (a
    /// round trip), the transaction expects the loaded one, which the commit checks with the
    /// group's other reads. Whether it did so: then the configurations cached at that epoch
    /// stand for the stored ones (every configuration change moves the epoch, and the cache
    /// is loaded after the epoch is read), and a change since fails the commit with a
    /// conflict, after which the write runs again with [`fence`](Store::fence).
    pub(super) async fn expect_epoch(&self, txn: &mut dyn Transaction) -> bool {
        if !self.engine.shared() {
            return false;
        }
        let loaded = self.shared.loaded_epoch.lock().await.clone();
        txn.expect(Keyspace::Meta, keys::EPOCH_KEY.to_vec(), loaded);
        true
    }

    /// Reloads every collection's configuration and the commit hooks' (index builds stay with
    /// the node that started them, or resume when a node starts), then tells the services
    /// that cache more.
    async fn reload(&self) -> Result<(), StoreError> {
        let mut loaded = self.shared.loaded_epoch.lock().await;
        let epoch = self.read_epoch().await?;
        if epoch == *loaded {
            return Ok(());
        }
        self.load_configs().await?;
        for (_, hook) in self.shared.hooks().iter() {
            hook.reload().await;
        }
        *loaded = epoch;
        drop(loaded);
        self.shared.epoch.send_modify(|n| *n += 1);
        Ok(())
    }
}
