//! The change feed as embedding programs see it: every committed change to a document or a
//! file, in commit order, live or replayed from the retained records.

use crate::error::StorageError;
use crate::model::Change;
use crate::store::{ChangeReceiver, Store, StoreError};

/// The change feed of a running server ([`Server::changes`](crate::Server::changes)). Cheap
/// to clone.
///
/// A change is published only once it is durable, so nothing received here can be lost by a
/// crash. Live receivers are fed from memory; one that falls too far behind gets
/// `RecvError::Lagged` and reads what it missed with [`Changes::after`], as long as the
/// records are retained (`store.change_retention_count`, `store.change_retention_hours`).
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use emberbase::{ChangeKind, Principal, Server, Subject};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir()?;
/// let server = Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// let mut changes = server.changes().subscribe();
///
/// let doc = server
///     .documents()
///     .create(&Principal::Service, "notes", json!({"text": "hi"}))
///     .await?;
/// let change = changes.recv().await?;
/// assert_eq!(change.kind, ChangeKind::Create);
/// assert!(matches!(&change.subject, Subject::Document { id, .. } if *id == doc.id));
///
/// // The same change, read back from the retained feed.
/// let replayed = server.changes().after(change.seq - 1, 10).await?;
/// assert_eq!(replayed[0].seq, change.seq);
/// assert_eq!(server.changes().last_seq(), change.seq);
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Changes {
    store: Store,
}

impl Changes {
    pub(crate) fn new(store: Store) -> Changes {
        Changes { store }
    }

    /// A receiver of every change committed from now on, in commit order.
    pub fn subscribe(&self) -> ChangeReceiver {
        self.store.subscribe()
    }

    /// The sequence of the newest durable change (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.store.last_seq()
    }

    /// The sequence of the oldest retained change, if any: a consumer that last saw `n` can
    /// catch up with [`Changes::after`] only if this is at most `n + 1`.
    pub async fn first_retained_seq(&self) -> Result<Option<u64>, StorageError> {
        self.store.first_retained_seq().await.map_err(storage)
    }

    /// Up to `limit` retained changes after sequence `seq`, oldest first.
    pub async fn after(&self, seq: u64, limit: usize) -> Result<Vec<Change>, StorageError> {
        self.store.changes_after(seq, limit).await.map_err(storage)
    }
}

/// Reading the feed fails only in the engine, or on a record it cannot decode.
fn storage(e: StoreError) -> StorageError {
    match e {
        StoreError::Engine(e) => e.into(),
        other => StorageError::Corrupt(other.to_string()),
    }
}
