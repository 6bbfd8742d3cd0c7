//! Writes whose durability is waited for later: inside [`Deferred::scope`], a document write
//! returns once its commit is applied (ordered, and seen by every later transaction) instead of
//! once it is durable, and the scope's owner waits for all of them with
//! [`Deferred::settle`] before anything that rests on them leaves it.
//!
//! A function run writes this way: its worker goes on with the guest while the write's flush
//! is shared with other runs' writes, and the run's outcome (its answer, its invocation record,
//! the removal of its event) waits for the flush off the worker. The guest sees its own writes
//! before they are durable, so whatever would show them to anyone else waits first: the run's
//! reads (the engine's reads show only durable data), its `fetch` and `mail`, a before-write
//! hook, and the end of the run. A write lost to a failed flush leaves no trace and fails the
//! run, so its event runs again.

use super::StoreError;
use crate::engine::EngineError;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

tokio::task_local! {
    static DEFERRED: Deferred;
}

/// The writes of one scope still to become durable. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Deferred {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    waiting: Vec<BoxFuture<'static, Result<(), EngineError>>>,
    /// Why a write of this scope was lost; every later `settle` fails with it.
    lost: Option<EngineError>,
}

impl Deferred {
    /// Runs `work` with its document writes deferred to this scope.
    pub(crate) async fn scope<F: Future>(&self, work: F) -> F::Output {
        DEFERRED.scope(self.clone(), work).await
    }

    /// Waits until every write deferred so far is durable; fails if any was lost.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        let waiting = std::mem::take(&mut self.state().waiting);
        let mut lost = None;
        for durable in waiting {
            if let Err(e) = durable.await {
                lost.get_or_insert(e);
            }
        }
        let mut state = self.state();
        if let Some(e) = lost {
            state.lost.get_or_insert(e);
        }
        match &state.lost {
            Some(e) => Err(e.clone().into()),
            None => Ok(()),
        }
    }

    /// Adds a write whose commit `durable` waits for.
    pub(super) fn push(&self, durable: BoxFuture<'static, Result<(), EngineError>>) {
        self.state().waiting.push(durable);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The scope a write runs in, if its durability is deferred.
pub(super) fn current() -> Option<Deferred> {
    DEFERRED.try_with(Clone::clone).ok()
}

/// Waits for the writes of the current scope, if any, before a read or a decision that must
/// see them.
pub(crate) async fn settle_current() -> Result<(), StoreError> {
    match current() {
        Some(deferred) => deferred.settle().await,
        None => Ok(()),
    }
}
