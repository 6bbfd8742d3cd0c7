//! Uploads: a body streamed into a temp file while it is hashed and counted, made durable,
//! stored as a blob (see `blobs`), and only then committed as the file's record.

use super::buckets::{request_value, rule_allows};
use super::error::{internal, invalid};
use super::{
    check_bucket, check_path, io_error, joined, looks_like_markup, safety, Files, FilesError,
    Result,
};
use crate::auth::Principal;
use crate::model::FileInfo;
use crate::store::{FileOp, FileWrite, Recorded};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

/// Uploads are written to disk in pieces of this size.
pub(super) const WRITE_CHUNK: usize = 256 * 1024;

pub(super) const MAX_CONTENT_TYPE: usize = 255;

pub(super) fn valid_content_type(ct: &str) -> bool {
    ct.len() <= MAX_CONTENT_TYPE
        && ct.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && safety::check_type_pattern(&safety::essence(ct))
        && !safety::essence(ct).ends_with("/*")
}

pub(super) fn check_size(size: u64, max: u64) -> Result<()> {
    if size > max {
        Err(FilesError::TooLarge { max })
    } else {
        Ok(())
    }
}

/// The open temp file of an upload and the hash of what was written to it.
pub(super) struct Sink {
    file: std::fs::File,
    hasher: Sha256,
}

/// An upload in progress. Feed it the body with [`Upload::write`], then [`Upload::commit`].
/// Dropped before the commit (an error, a limit, a client that went away), it removes its
/// temp file.
pub struct Upload {
    files: Files,
    who: Principal,
    bucket: String,
    path: String,
    content_type: String,
    max_size: u64,
    tmp_path: PathBuf,
    /// `None` while a piece is being written on the blocking pool.
    sink: Option<Sink>,
    buf: Vec<u8>,
    head: Vec<u8>,
    size: u64,
    /// An import: the owner and times to keep (see [`Files::begin_import`]).
    recorded: Option<Recorded>,
}

impl Upload {
    /// Adds a piece of the body. Fails with `413` as soon as the size passes the limit.
    pub async fn write(&mut self, piece: &[u8]) -> Result<()> {
        self.size = self.size.saturating_add(piece.len() as u64);
        check_size(self.size, self.max_size)?;
        let room = safety::SNIFF_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&piece[..room.min(piece.len())]);
        self.buf.extend_from_slice(piece);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| internal("an upload was written after a failure"))?;
        let buf = std::mem::take(&mut self.buf);
        let (sink, mut buf) = joined(
            tokio::task::spawn_blocking(move || {
                sink.hasher.update(&buf);
                sink.file.write_all(&buf).map(|()| (sink, buf))
            })
            .await,
        )?
        .map_err(io_error)?;
        buf.clear();
        self.buf = buf;
        self.sink = Some(sink);
        Ok(())
    }

    /// Makes the bytes durable, moves them into place and commits the record (after the write
    /// rule, checked by the writer). Returns the metadata and whether the file is new.
    pub async fn commit(mut self) -> Result<(FileInfo, bool)> {
        self.flush().await?;
        let sink = self
            .sink
            .take()
            .ok_or_else(|| internal("an upload was committed after a failure"))?;
        let sha256: String = sink
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let blob = ulid::Ulid::new();
        let file = sink.file;
        joined(tokio::task::spawn_blocking(move || file.sync_all()).await)?.map_err(io_error)?;
        self.files
            .inner
            .blobs
            .store(&self.tmp_path, blob)
            .await
            .map_err(io_error)?;
        let write = FileWrite {
            bucket: self.bucket.clone(),
            path: self.path.clone(),
            op: FileOp::Put {
                blob,
                size: self.size,
                sha256,
                content_type: self.content_type.clone(),
                markup: looks_like_markup(&self.head),
                recorded: self.recorded.clone(),
            },
            actor: self.who.actor(),
            depth: self.who.depth(),
            trace: crate::trace::current(),
            guard: self.files.guard(&self.who, &self.bucket).await?,
        };
        let files = self.files.clone();
        // Detached, so a client that disconnects now cannot leave the blob half-committed.
        joined(tokio::spawn(async move { files.commit_blob(write, blob).await }).await)?
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a commit the temp file has been renamed away and this finds nothing.
        match std::fs::remove_file(&self.tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.tmp_path.display(), error = %e, "could not remove an upload's temp file")
            }
        }
    }
}

impl Files {
    /// Starts an upload to `bucket/path`: checks names, type, declared size and (when the size
    /// is declared) the write rule, before a byte of the body is read.
    pub async fn begin_upload(
        &self,
        who: &Principal,
        bucket: &str,
        path: &str,
        content_type: Option<&str>,
        declared_size: Option<u64>,
    ) -> Result<Upload> {
        check_bucket(bucket)?;
        check_path(path)?;
        let content_type = content_type
            .map(str::trim)
            .filter(|ct| !ct.is_empty())
            .unwrap_or("application/octet-stream");
        if !valid_content_type(content_type) {
            return Err(FilesError::UnsupportedMediaType(format!(
                "invalid Content-Type {content_type:?}"
            )));
        }
        let policy = self.policy(bucket).await?;
        if let Some(allowed) = &policy.content_types {
            if !safety::type_allowed(content_type, allowed) {
                return Err(FilesError::UnsupportedMediaType(format!(
                    "bucket {bucket} accepts {}, not {content_type}",
                    allowed.join(", ")
                )));
            }
        }
        if let Some(size) = declared_size {
            check_size(size, policy.max_size)?;
            if !who.is_admin() {
                let current = self.inner.store.file_get(bucket, path).await?;
                let request = request_value(size, content_type, path);
                let info = current.as_ref().map(|r| &r.info);
                if !rule_allows(&policy.write, &who.auth_value(), info, Some(request)) {
                    return Err(FilesError::Forbidden(format!(
                        "the write rule of bucket {bucket} denies this"
                    )));
                }
            }
        }
        let tmp_path = self.inner.tmp.join(format!("{}.part", ulid::Ulid::new()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(io_error)?;
        Ok(Upload {
            files: self.clone(),
            who: who.clone(),
            bucket: bucket.to_string(),
            path: path.to_string(),
            content_type: content_type.to_string(),
            max_size: policy.max_size,
            tmp_path,
            sink: Some(Sink {
                file,
                hasher: Sha256::new(),
            }),
            buf: Vec::with_capacity(WRITE_CHUNK),
            head: Vec::with_capacity(safety::SNIFF_BYTES),
            size: 0,
            recorded: None,
        })
    }

    /// Starts an import of `bucket/path` as its source recorded it (admins only): the owner
    /// and times are kept, the path must be free (`409` otherwise), and no trigger or webhook
    /// fires for it.
    pub(crate) async fn begin_import(
        &self,
        who: &Principal,
        target: (&str, &str),
        content_type: Option<&str>,
        declared_size: Option<u64>,
        recorded: Recorded,
    ) -> Result<Upload> {
        who.require_admin("import files")?;
        let owner = recorded.owner.as_deref();
        if owner.is_some_and(|o| !crate::docs::valid_document_id(o)) {
            return Err(invalid(crate::docs::BAD_OWNER, "owner"));
        }
        for (at, field) in [
            (&recorded.created_at, "created_at"),
            (&recorded.updated_at, "updated_at"),
        ] {
            if crate::query::parse_time(at).is_none() {
                return Err(invalid(format!("{at:?} is not an RFC 3339 time"), field));
            }
        }
        let (bucket, path) = target;
        let mut upload = self
            .begin_upload(who, bucket, path, content_type, declared_size)
            .await?;
        upload.recorded = Some(recorded);
        Ok(upload)
    }

    /// Commits an uploaded blob's record, then removes the blob it replaced (or, if the commit
    /// failed, the new blob).
    pub(super) async fn commit_blob(
        &self,
        write: FileWrite,
        blob: ulid::Ulid,
    ) -> Result<(FileInfo, bool)> {
        match self.inner.store.file_write(write).await {
            Ok(written) => {
                if let Some(old) = &written.before {
                    self.remove_blob(old.blob).await;
                }
                let info = written
                    .after
                    .ok_or_else(|| internal("a file put stored no record"))?;
                Ok((info, written.before.is_none()))
            }
            Err(e) => {
                self.remove_blob(blob).await;
                Err(e.into())
            }
        }
    }
}
