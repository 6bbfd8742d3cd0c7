//! Before-write hooks, as the document service runs them. A write to a collection with hooks
//! bound (`before_create`, `before_update`, `before_delete`) runs them first, each op of a
//! batch in turn, on the stored document as it is before the write; a hook may allow the op,
//! refuse it, or give it other data. The write then commits with a version check on each
//! hooked document, so a concurrent change makes the hooks run again on the fresh document;
//! after three such conflicts the write answers `409`. What a hook returns goes through the
//! commit as client data does: transforms, merge, schema and write rule. The hooks themselves
//! are functions (`crate::functions` installs them).

use super::{DocsError, Documents};
use crate::auth::Principal;
use crate::model::Document;
use crate::store::{StoreError, WriteOp, Written};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Commits of a hooked write before a conflict is the caller's.
const ATTEMPTS: usize = 3;

/// Which hook an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    Create,
    Update,
    Delete,
}

impl HookKind {
    /// The trigger that binds a function to this hook.
    pub(crate) fn trigger(self) -> &'static str {
        match self {
            HookKind::Create => "before_create",
            HookKind::Update => "before_update",
            HookKind::Delete => "before_delete",
        }
    }
}

/// What the hooks of one op are shown.
#[derive(Clone, Copy)]
pub(crate) struct HookCall<'a> {
    pub kind: HookKind,
    pub collection: &'a str,
    /// Absent for a create whose id the store will choose.
    pub id: Option<&'a str>,
    /// The stored document (updates and deletes).
    pub before: Option<&'a Document>,
    /// The data of a create or replace, the patch of an update; none for a delete.
    pub data: Option<&'a Map<String, Value>>,
    pub who: &'a Principal,
}

/// What the hooks of one op decided.
pub(crate) enum Verdict {
    Allow,
    /// Go ahead with this data (or patch) instead.
    Replace(Map<String, Value>),
    /// Refused by a hook, or a hook failed (which refuses too).
    Refuse(DocsError),
}

/// The hooks bound to collections.
#[async_trait]
pub(crate) trait WriteHooks: Send + Sync {
    /// Whether any hook of `kind` is bound to `collection`.
    fn wants(&self, collection: &str, kind: HookKind) -> bool;
    /// Runs every hook of the call's kind bound to its collection, in turn.
    async fn run(&self, call: HookCall<'_>) -> Verdict;
}

/// The hook kinds an op may run (a replace creates or updates, as it finds the document).
fn kinds(op: &WriteOp) -> &'static [HookKind] {
    match op {
        WriteOp::Create { .. } => &[HookKind::Create],
        WriteOp::Set { .. } => &[HookKind::Create, HookKind::Update],
        WriteOp::Update { .. } => &[HookKind::Update],
        WriteOp::Delete { .. } => &[HookKind::Delete],
        WriteOp::Dereference { .. } | WriteOp::Import { .. } => &[],
    }
}

fn collection_of(op: &WriteOp) -> &str {
    match op {
        WriteOp::Create { collection, .. }
        | WriteOp::Set { collection, .. }
        | WriteOp::Update { collection, .. }
        | WriteOp::Delete { collection, .. }
        | WriteOp::Dereference { collection, .. }
        | WriteOp::Import { collection, .. } => collection,
    }
}

/// Whether a failed commit lost a race on a document the hooks read.
fn lost_race(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::VersionMismatch { .. } | StoreError::Conflict { .. }
    )
}

impl Documents {
    /// Installs the hooks every write runs.
    pub(crate) fn set_write_hooks(&self, hooks: Arc<dyn WriteHooks>) {
        if let Ok(mut slot) = self.inner.hooks.write() {
            *slot = Some(hooks);
        }
    }

    fn write_hooks(&self) -> Option<Arc<dyn WriteHooks>> {
        self.inner.hooks.read().ok().and_then(|h| h.clone())
    }

    /// Writes `ops` all or nothing after their hooks; a failure names its op.
    pub(super) async fn write(
        &self,
        who: &Principal,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Written>, (usize, DocsError)> {
        let hooks = self.write_hooks().filter(|hooks| {
            ops.iter().any(|op| {
                kinds(op)
                    .iter()
                    .any(|kind| hooks.wants(collection_of(op), *kind))
            })
        });
        let Some(hooks) = hooks else {
            return self
                .commit(who, ops)
                .await
                .map_err(|f| (f.op, f.error.into()));
        };
        // The hooks read the documents as durably stored: a function's own writes first.
        crate::store::deferred::settle_current()
            .await
            .map_err(|e| (0, e.into()))?;
        let mut attempt = 1;
        loop {
            let mut hooked = Vec::with_capacity(ops.len());
            let mut guarded = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                let (op, ours) = self.hook(&*hooks, who, op).await.map_err(|e| (i, e))?;
                hooked.push(op);
                guarded.push(ours);
            }
            match self.commit(who, hooked).await {
                Err(f) if guarded.get(f.op) == Some(&true) && lost_race(&f.error) => {
                    if attempt == ATTEMPTS {
                        return Err((
                            f.op,
                            DocsError::HookContention(format!(
                                "the document changed while its before-write hooks ran, {ATTEMPTS} times; try again"
                            )),
                        ));
                    }
                    attempt += 1;
                }
                done => return done.map_err(|f| (f.op, f.error.into())),
            }
        }
    }

    /// Runs an op's hooks; returns the op to commit, with a version check on the document the
    /// hooks saw, and whether that check is ours (not the caller's `if_version`), so that a
    /// conflict on it means running the hooks again.
    async fn hook(
        &self,
        hooks: &dyn WriteHooks,
        who: &Principal,
        op: &WriteOp,
    ) -> Result<(WriteOp, bool), DocsError> {
        let collection = collection_of(op);
        if !kinds(op).iter().any(|kind| hooks.wants(collection, *kind)) {
            return Ok((op.clone(), false));
        }
        let id = match op {
            WriteOp::Create { id, .. } => id.as_deref(),
            WriteOp::Set { id, .. } | WriteOp::Update { id, .. } | WriteOp::Delete { id, .. } => {
                Some(id.as_str())
            }
            WriteOp::Dereference { .. } | WriteOp::Import { .. } => return Ok((op.clone(), false)),
        };
        let before = match id {
            Some(id) => self.inner.store.get(collection, id).await?,
            None => None,
        };
        // The version the hooks saw; 0 when the document is absent (a replace that expects 0
        // creates, and an update or delete that expects it finds nothing or conflicts).
        let seen = before.as_ref().map_or(0, |d| d.version);
        let guard =
            |if_version: &Option<u64>| (Some(if_version.unwrap_or(seen)), if_version.is_none());
        let base = HookCall {
            kind: HookKind::Create,
            collection,
            id,
            before: before.as_ref(),
            data: None,
            who,
        };
        let run = |kind, data| HookCall { kind, data, ..base };
        match op {
            // An existing id: the store refuses it without the hooks.
            WriteOp::Create { .. } if before.is_some() => Ok((op.clone(), false)),
            WriteOp::Create {
                collection,
                id,
                data,
            } => {
                let data =
                    self.verdict(hooks.run(run(HookKind::Create, Some(data))).await, data)?;
                let op = WriteOp::Create {
                    collection: collection.clone(),
                    id: id.clone(),
                    data,
                };
                // A chosen id taken meanwhile conflicts: run again, and refuse it then.
                Ok((op, id.is_some()))
            }
            WriteOp::Set {
                collection,
                id,
                data,
                if_version,
            } => {
                let kind = if before.is_some() {
                    HookKind::Update
                } else {
                    HookKind::Create
                };
                let data = if hooks.wants(collection, kind) {
                    self.verdict(hooks.run(run(kind, Some(data))).await, data)?
                } else {
                    data.clone()
                };
                let (if_version, ours) = guard(if_version);
                let op = WriteOp::Set {
                    collection: collection.clone(),
                    id: id.clone(),
                    data,
                    if_version,
                };
                Ok((op, ours))
            }
            WriteOp::Update {
                collection,
                id,
                patch,
                transforms,
                if_version,
            } => {
                let patch = if before.is_some() {
                    self.verdict(hooks.run(run(HookKind::Update, Some(patch))).await, patch)?
                } else {
                    patch.clone()
                };
                let (if_version, ours) = guard(if_version);
                let op = WriteOp::Update {
                    collection: collection.clone(),
                    id: id.clone(),
                    patch,
                    transforms: transforms.clone(),
                    if_version,
                };
                Ok((op, ours))
            }
            WriteOp::Delete {
                collection,
                id,
                if_version,
            } => {
                if before.is_some() {
                    if let Verdict::Refuse(e) = hooks.run(run(HookKind::Delete, None)).await {
                        return Err(e);
                    }
                }
                let (if_version, ours) = guard(if_version);
                let op = WriteOp::Delete {
                    collection: collection.clone(),
                    id: id.clone(),
                    if_version,
                };
                Ok((op, ours))
            }
            WriteOp::Dereference { .. } | WriteOp::Import { .. } => Ok((op.clone(), false)),
        }
    }

    /// The data an op goes ahead with, checked as client data is.
    fn verdict(
        &self,
        verdict: Verdict,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>, DocsError> {
        match verdict {
            Verdict::Allow => Ok(data.clone()),
            Verdict::Replace(changed) => self.check_data(Value::Object(changed), "data"),
            Verdict::Refuse(e) => Err(e),
        }
    }
}
