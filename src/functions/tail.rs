//! A live tail of a function's invocation log as Server-Sent Events: each new record (status,
//! duration, error, log lines, version) as an `invocation` event, whichever node of a cluster
//! ran it, since the tail reads the stored log rather than this node's runs. Records can commit
//! slightly out of id order (commits run concurrently), so each read looks a few seconds back
//! and skips what it has sent.

use super::{check_name, dispatch, Functions, FunctionsError, Invocation, Result};
use crate::auth::Principal;
use crate::store::Space;
use bytes::Bytes;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the log is read.
const POLL: Duration = Duration::from_millis(250);
/// How far back each read looks for records committed after later ones.
const LOOK_BACK: Duration = Duration::from_secs(5);
/// A comment on a quiet stream, so proxies keep it open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The most records one read looks at.
const READ: usize = 200;

/// The id floor `back` before `at`: ULIDs sort by their time.
fn floor_at(at: SystemTime) -> String {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ulid::Ulid::from_parts(ms, 0).to_string()
}

/// A function's log as it grows.
pub struct LogTail {
    functions: Functions,
    name: String,
    /// Records at or below this id are not sent: those before the start (or `Last-Event-ID`),
    /// then those older than the look-back.
    after: String,
    /// Ids sent above `after`.
    sent: BTreeSet<String>,
    ready: VecDeque<Bytes>,
    quiet_since: Instant,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Functions {
    /// Follows a function's invocation log from now, or from after the record `after` (a
    /// reconnecting client's `Last-Event-ID`).
    pub async fn tail(&self, who: &Principal, name: &str, after: Option<&str>) -> Result<LogTail> {
        Self::require_admin(who)?;
        check_name(name)?;
        if self.loaded(name).is_none() {
            return Err(FunctionsError::NotFound(name.into()));
        }
        let after = match after {
            Some(id) => ulid::Ulid::from_string(id)
                .map_err(|_| FunctionsError::BadRequest("Last-Event-ID is not a record id".into()))?
                .to_string(),
            None => floor_at(SystemTime::now()),
        };
        Ok(LogTail {
            functions: self.clone(),
            name: name.to_string(),
            after,
            sent: BTreeSet::new(),
            ready: VecDeque::new(),
            quiet_since: Instant::now(),
            closed: self.inner.streams_closed.subscribe(),
        })
    }

    /// Ends every log tail (the server is stopping).
    pub(crate) fn close_streams(&self) {
        self.inner.streams_closed.send_replace(true);
    }
}

impl LogTail {
    /// The next bytes of the stream; `None` when it ends (the function was deleted, or the
    /// server is stopping).
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.ready.pop_front() {
                return Some(bytes);
            }
            if *self.closed.borrow() || self.functions.loaded(&self.name).is_none() {
                return None;
            }
            self.read().await;
            if !self.ready.is_empty() {
                self.quiet_since = Instant::now();
                continue;
            }
            if self.quiet_since.elapsed() >= HEARTBEAT {
                self.quiet_since = Instant::now();
                return Some(Bytes::from_static(b": heartbeat\n\n"));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.closed.changed() => {}
            }
        }
    }

    /// Reads the newest records and queues those not sent yet, oldest first.
    async fn read(&mut self) {
        let rows = match self
            .functions
            .inner
            .store
            .kv_prefix_last(
                Space::Invocations,
                &dispatch::function_prefix(&self.name),
                READ,
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "cannot read the invocation log");
                return;
            }
        };
        let mut fresh: Vec<Invocation> = rows
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<Invocation>(&bytes).ok())
            .filter(|r| r.id > self.after && !self.sent.contains(&r.id))
            .collect();
        fresh.sort_by(|a, b| a.id.cmp(&b.id));
        for record in fresh {
            let Ok(json) = serde_json::to_string(&record) else {
                continue;
            };
            self.ready.push_back(Bytes::from(format!(
                "id: {}\nevent: invocation\ndata: {json}\n\n",
                record.id
            )));
            self.sent.insert(record.id);
        }
        // What is older than the look-back is taken as complete: later reads skip it.
        let window = floor_at(SystemTime::now() - LOOK_BACK);
        if window > self.after {
            self.after = window;
            self.sent = self.sent.split_off(&self.after);
        }
    }
}
