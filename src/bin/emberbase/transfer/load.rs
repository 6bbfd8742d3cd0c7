//! Loads a source's items into a server: accounts and documents in batches of up to 1000
//! through the import endpoints, files one by one, streamed from disk. Items the server
//! refuses (an id that exists, data that breaks a schema) are skipped with the reason and the
//! rest goes on; a server that stops answering stops the import.

use super::progress::{count, counter};
use super::{Item, Source, SourceFile, Totals};
use crate::project::admin::{Admin, ApiError};
use emberbase::{
    DocumentImportReport, FileInfo, ImportReport, PortableDocument, PortableUser,
    MAX_IMPORT_DOCUMENTS,
};
use indicatif::{HumanBytes, ProgressBar};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The most accounts one import request takes (the server's limit).
const MAX_IMPORT_USERS: usize = 1000;

/// A batch is sent before its JSON passes this size, well under the server's default body
/// limit (`http.max_body_bytes`, 4 MiB), whatever the items weigh.
const BATCH_BYTES: usize = 1024 * 1024;

/// An item's size as JSON.
fn json_size<T: serde::Serialize>(item: &T) -> usize {
    serde_json::to_vec(item).map_or(0, |v| v.len())
}

/// Reasons shown in the summary; the rest are counted.
const SHOWN: usize = 20;

/// What an import did.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    source: String,
    users: u64,
    documents: u64,
    collections: BTreeSet<String>,
    files: u64,
    bytes: u64,
    /// The first reasons items were skipped for.
    skipped: Vec<String>,
    skipped_count: u64,
    left_out: Vec<String>,
    took: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "imported {}, {} in {} and {} ({}) from {} in {:.1} s",
            count(self.users, "account"),
            count(self.documents, "document"),
            count(self.collections.len() as u64, "collection"),
            count(self.files, "file"),
            HumanBytes(self.bytes),
            self.source,
            self.took.as_secs_f64()
        )?;
        for line in &self.left_out {
            writeln!(f, "left out: {line}")?;
        }
        if self.skipped_count > 0 {
            writeln!(f, "skipped {}:", self.skipped_count)?;
            for line in &self.skipped {
                writeln!(f, "  {line}")?;
            }
            let unshown = self.skipped_count.saturating_sub(self.skipped.len() as u64);
            if unshown > 0 {
                writeln!(f, "  and {unshown} more")?;
            }
        }
        Ok(())
    }
}

impl Summary {
    /// Whether everything the source handed over was made.
    pub(crate) fn complete(&self) -> bool {
        self.skipped_count == 0
    }

    fn skip(&mut self, what: String) {
        self.skipped_count += 1;
        if self.skipped.len() < SHOWN {
            self.skipped.push(what);
        }
    }
}

/// A refusal skips what was refused; anything else (no answer) stops the import.
fn refused(e: ApiError) -> Result<String, String> {
    if e.is_refusal() {
        Ok(e.message)
    } else {
        Err(e.message)
    }
}

struct Loader<'a> {
    admin: &'a Admin,
    totals: Totals,
    users: Vec<PortableUser>,
    documents: Option<(String, Vec<PortableDocument>)>,
    /// The JSON size of the batch being gathered (accounts or documents).
    batched: usize,
    bars: [Option<ProgressBar>; 3],
    summary: Summary,
}

impl Loader<'_> {
    /// The bar of a kind of item (0 accounts, 1 documents, 2 files), made when it is first
    /// needed; the bars before it are finished.
    fn bar(&mut self, kind: usize) -> ProgressBar {
        for earlier in self.bars.iter().take(kind).flatten() {
            earlier.finish();
        }
        let (what, total) = match kind {
            0 => ("accounts", self.totals.users),
            1 => ("documents", self.totals.documents),
            _ => ("files", self.totals.files),
        };
        self.bars[kind]
            .get_or_insert_with(|| counter(what, total))
            .clone()
    }

    async fn take(&mut self, item: Item) -> Result<(), String> {
        match item {
            Item::User(user) => {
                self.flush_documents().await?;
                let size = json_size(&user);
                if self.batched + size > BATCH_BYTES {
                    self.flush_users().await?;
                }
                self.batched += size;
                self.users.push(user);
                if self.users.len() == MAX_IMPORT_USERS {
                    self.flush_users().await?;
                }
            }
            Item::Document {
                collection,
                document,
            } => {
                self.flush_users().await?;
                let size = json_size(&document);
                let elsewhere = self
                    .documents
                    .as_ref()
                    .is_some_and(|(current, _)| *current != collection);
                if elsewhere || self.batched + size > BATCH_BYTES {
                    self.flush_documents().await?;
                }
                self.batched += size;
                let (_, batch) = self
                    .documents
                    .get_or_insert_with(|| (collection, Vec::new()));
                batch.push(document);
                if batch.len() == MAX_IMPORT_DOCUMENTS {
                    self.flush_documents().await?;
                }
            }
            Item::File(file) => {
                self.flush_users().await?;
                self.flush_documents().await?;
                self.file(file).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.flush_users().await?;
        self.flush_documents().await
    }

    async fn flush_users(&mut self) -> Result<(), String> {
        if self.users.is_empty() {
            return Ok(());
        }
        let bar = self.bar(0);
        self.batched = 0;
        let users = std::mem::take(&mut self.users);
        let n = users.len() as u64;
        let answer = self
            .admin
            .post("/v1/admin/import/users", &json!({ "users": users }))
            .await;
        match answer {
            Ok(answer) => {
                let report: ImportReport = serde_json::from_value(answer)
                    .map_err(|e| format!("an import report that does not parse: {e}"))?;
                self.summary.users += report.imported as u64;
                for skipped in report.skipped {
                    self.summary
                        .skip(format!("account {}: {}", skipped.email, skipped.reason));
                }
            }
            Err(e) => {
                let reason = refused(e)?;
                for user in &users {
                    self.summary
                        .skip(format!("account {}: {reason}", user.email));
                }
            }
        }
        bar.inc(n);
        Ok(())
    }

    async fn flush_documents(&mut self) -> Result<(), String> {
        let Some((collection, documents)) = self.documents.take() else {
            return Ok(());
        };
        let bar = self.bar(1);
        self.batched = 0;
        let n = documents.len() as u64;
        let answer = self
            .admin
            .post(
                &format!("/v1/admin/import/collections/{collection}"),
                &json!({ "documents": documents }),
            )
            .await;
        match answer {
            Ok(answer) => {
                let report: DocumentImportReport = serde_json::from_value(answer)
                    .map_err(|e| format!("an import report that does not parse: {e}"))?;
                if report.imported > 0 {
                    self.summary.collections.insert(collection.clone());
                }
                self.summary.documents += report.imported as u64;
                for skipped in report.skipped {
                    self.summary.skip(format!(
                        "document {collection}/{}: {}",
                        skipped.id, skipped.reason
                    ));
                }
            }
            Err(e) => {
                let reason = refused(e)?;
                for doc in &documents {
                    self.summary
                        .skip(format!("document {collection}/{}: {reason}", doc.id));
                }
            }
        }
        bar.inc(n);
        Ok(())
    }

    async fn file(&mut self, file: SourceFile) -> Result<(), String> {
        let bar = self.bar(2);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("owner", &file.owner),
            ("created_at", &file.created_at),
            ("updated_at", &file.updated_at),
        ] {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        let path = format!(
            "/v1/admin/import/files/{}/{}?{}",
            file.bucket,
            file.path,
            query.finish()
        );
        let answer = self
            .admin
            .put_file::<FileInfo>(&path, &file.content_type, &file.local)
            .await;
        match answer {
            Ok(info) => {
                self.summary.files += 1;
                self.summary.bytes += info.size;
            }
            Err(e) => {
                let reason = refused(e)?;
                self.summary
                    .skip(format!("file {}/{}: {reason}", file.bucket, file.path));
            }
        }
        bar.inc(1);
        Ok(())
    }
}

/// Reads `source` on a thread of its own and loads what it hands over.
pub(crate) async fn load(admin: &Admin, mut source: Box<dyn Source>) -> Result<Summary, String> {
    let started = Instant::now();
    let totals = source.totals()?;
    let describe = source.describe();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(256);
    let reader = std::thread::spawn(move || {
        let mut out = |item| {
            tx.blocking_send(item)
                .map_err(|_| "the import stopped".to_string())
        };
        let read = source.read(&mut out);
        (read, source.left_out())
    });
    let mut loader = Loader {
        admin,
        totals,
        users: Vec::new(),
        documents: None,
        batched: 0,
        bars: [None, None, None],
        summary: Summary {
            source: describe,
            ..Summary::default()
        },
    };
    let mut stopped = Ok(());
    while let Some(item) = rx.recv().await {
        stopped = loader.take(item).await;
        if stopped.is_err() {
            break;
        }
    }
    if stopped.is_ok() {
        stopped = loader.flush().await;
    }
    drop(rx);
    for bar in loader.bars.iter().flatten() {
        bar.finish_and_clear();
    }
    let (read, left_out) = reader
        .join()
        .map_err(|_| "reading the source failed unexpectedly".to_string())?;
    stopped?;
    read?;
    let mut summary = loader.summary;
    summary.left_out = left_out;
    summary.took = started.elapsed();
    Ok(summary)
}
