//! The file service: the HTTP API's files routes as plain Rust, used by the HTTP layer
//! and by embedding programs.
//!
//! Bytes live in blobs named by the server and never by the client's path (see `blobs`: a
//! directory of the data directory, or an S3-compatible bucket), so no path can reach outside
//! them. An upload streams into `<data_dir>/files/tmp/<ULID>.part` while it is hashed and
//! counted, is made durable and stored as a blob, and only then is its record committed in a
//! store transaction (with a change record, like a document). The blob a record replaced or
//! removed is deleted after the commit; a startup sweep removes temp files and blobs that no
//! record points at, so a crash at any step leaves neither a partial file visible nor an orphan
//! for long.

mod blobs;
mod buckets;
mod error;
mod safety;
mod upload;

pub use blobs::BlobReader;
pub(crate) use blobs::ObjectDir;
pub(crate) use buckets::check_bucket;
pub use error::FilesError;
pub(crate) use error::Result;
pub(crate) use safety::{check_path, inline_type, looks_like_markup};
pub use upload::Upload;

use blobs::{Blobs, S3Url};
use buckets::BucketPolicy;

use crate::auth::Principal;
use crate::config::FilesConfig;
use crate::model::{BucketConfig, BucketRules, FileInfo};
use crate::query::Rule;
use crate::signing::{Signed, UrlSigner};
use crate::store::{FileOp, FileWrite, Store};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use error::{internal, invalid};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How old an unreferenced blob in a shared bucket must be before the startup sweep removes it.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// The longest a signed URL may live: 7 days.
pub(crate) const MAX_SIGNED_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_LIST_LIMIT: usize = 100;

type PolicyCache = HashMap<String, (Vec<u8>, Arc<BucketPolicy>)>;

struct Inner {
    store: Store,
    blobs: Blobs,
    tmp: PathBuf,
    defaults: BucketRules,
    max_size: u64,
    default_policy: Arc<BucketPolicy>,
    /// Compiled policies, with the stored configuration bytes they were compiled from.
    policies: RwLock<PolicyCache>,
    signer: UrlSigner,
}

/// The file service ([`Server::files`](crate::Server::files)): streamed uploads into buckets,
/// downloads, listings and signed URLs, with each bucket's rules and limits applied to the
/// caller exactly as over HTTP. Cheap to clone.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = emberbase::Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// use emberbase::{FilesError, Principal};
///
/// let files = server.files();
/// let alice = Principal::user("alice", "alice@example.com", false);
///
/// // An upload is streamed in pieces; it exists only once committed (and is then durable).
/// let mut upload = files.begin_upload(&alice, "avatars", "alice/me.txt", Some("text/plain"), None).await?;
/// upload.write(b"hello ").await?;
/// upload.write(b"world").await?;
/// let (info, created) = upload.commit().await?;
/// assert!(created);
/// assert_eq!((info.size, info.owner.as_deref()), (11, Some("alice")));
///
/// let opened = files.open(&alice, "avatars", "alice/me.txt").await?;
/// let text = String::from_utf8(opened.body.read_all(opened.info.size).await?)?;
/// assert_eq!(text, "hello world");
///
/// // Anyone else is refused by the default rules, unless given a signed URL.
/// let anonymous = files.open(&Principal::Anonymous, "avatars", "alice/me.txt").await;
/// assert!(matches!(anonymous, Err(FilesError::Forbidden(_))));
/// let url = files.sign(&alice, "avatars", "alice/me.txt", 600).await?;
/// assert!(url.path_and_query.starts_with("/v1/files/avatars/alice/me.txt?expires="));
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

/// A file opened for reading: its metadata, whether it may be shown inline, and the bytes.
pub struct OpenFile {
    pub info: FileInfo,
    pub inline: bool,
    pub body: BlobReader,
}

/// One page of a bucket listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FilePage {
    pub items: Vec<FileInfo>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A signed URL: the path and query to append to the server's address, and when it expires.
pub struct SignedUrl {
    pub path_and_query: String,
    pub expires_at: String,
}

/// What sweeping the file directories at startup removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub temp_files: usize,
    pub orphan_blobs: usize,
}

fn io_error(e: std::io::Error) -> FilesError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        FilesError::DiskFull
    } else {
        internal(format!("file storage: {e}"))
    }
}

fn joined<T>(r: std::result::Result<T, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| internal(format!("file task failed: {e}")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Files {
    /// Opens the file directories under `data_dir`, loads the URL signing key and sweeps what a
    /// crash may have left behind.
    pub(crate) async fn start(
        data_dir: &Path,
        secrets: &crate::secrets::Secrets,
        store: Store,
        config: &FilesConfig,
    ) -> std::result::Result<(Files, Swept), String> {
        let root = data_dir.join("files");
        let tmp = root.join("tmp");
        let blobs = if config.url.is_empty() {
            let dir = root.join("blobs");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            Blobs::Local(dir)
        } else {
            let url = S3Url::parse(&config.url).map_err(|e| format!("files.url: {e}"))?;
            Blobs::s3(&url, &config.access_key_id, &config.secret_access_key)?
        };
        std::fs::create_dir_all(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let signer = UrlSigner::load_or_create(secrets)
            .await
            .map_err(|e| format!("cannot read or create the URL signing key: {e}"))?;
        let default_policy =
            BucketPolicy::compile(&BucketConfig::default(), &config.rules, config.max_size)
                .map_err(|(name, e)| format!("files.rules.{name}: {e}"))?;
        let files = Files {
            inner: Arc::new(Inner {
                store,
                blobs,
                tmp,
                defaults: config.rules.clone(),
                max_size: config.max_size,
                default_policy: Arc::new(default_policy),
                policies: RwLock::new(HashMap::new()),
                signer,
            }),
        };
        let swept = files
            .sweep()
            .await
            .map_err(|e| format!("cannot sweep the file directories: {e}"))?;
        Ok((files, swept))
    }

    /// Removes every temp file, and every blob that no record points at. Runs before the
    /// server accepts requests, so no upload of this node is in flight; in a shared bucket,
    /// another node's may be (its blob is stored before its record), so there only blobs older
    /// than an hour go, and none while a backup holds deletions.
    async fn sweep(&self) -> std::result::Result<Swept, String> {
        let mut swept = Swept::default();
        let tmp = &self.inner.tmp;
        for entry in std::fs::read_dir(tmp).map_err(|e| format!("{}: {e}", tmp.display()))? {
            let entry = entry.map_err(|e| e.to_string())?;
            std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
            swept.temp_files += 1;
        }
        if swept.temp_files > 0 {
            sync_dir(tmp).map_err(|e| e.to_string())?;
        }
        let referenced = self
            .inner
            .store
            .file_blobs()
            .await
            .map_err(|e| e.to_string())?;
        let blobs = &self.inner.blobs;
        // Another node's backup may still read a blob whose record went after its snapshot.
        if self.inner.store.deletions_held().await {
            return Ok(swept);
        }
        let settled = match blobs {
            Blobs::Local(_) => SystemTime::now(),
            Blobs::S3 { .. } => SystemTime::now() - ORPHAN_AGE,
        };
        for (blob, name, modified) in blobs.list().await.map_err(|e| e.to_string())? {
            let known = blob.is_some_and(|id| referenced.contains(&id));
            if !known && modified <= settled {
                blobs.remove_named(&name).await.map_err(|e| e.to_string())?;
                swept.orphan_blobs += 1;
            }
        }
        if let (Blobs::Local(dir), true) = (blobs, swept.orphan_blobs > 0) {
            sync_dir(dir).map_err(|e| e.to_string())?;
        }
        Ok(swept)
    }

    /// Deletes a blob no record points at any more. A failure only leaves an orphan for the
    /// next startup sweep. (A local blob stays readable by a download that opened it; in a
    /// bucket, such a download ends early, short of its `Content-Length`.) While a backup
    /// reads, the removal waits for it (see `Store::delete_outside`).
    async fn remove_blob(&self, blob: ulid::Ulid) {
        let blobs = self.inner.blobs.clone();
        let work = async move {
            if let Err(e) = blobs.remove(blob).await {
                tracing::warn!(%blob, error = %e, "could not remove a replaced blob; the next start sweeps it");
            }
        };
        self.inner.store.delete_outside(Box::pin(work)).await;
    }

    /// Opens the bytes of `blob` (for a backup, which reads the records itself).
    pub(crate) async fn open_blob(&self, blob: ulid::Ulid) -> std::io::Result<BlobReader> {
        self.inner.blobs.open(blob).await
    }

    /// The blob storage's backend (`local` or `s3`), and whether it answers within `within`.
    pub(crate) async fn check_storage(
        &self,
        within: Duration,
    ) -> (&'static str, std::result::Result<(), String>) {
        let checked = tokio::time::timeout(within, self.inner.blobs.check())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", within.as_millis())));
        (self.inner.blobs.backend(), checked)
    }

    /// Where the blobs are, for the startup log.
    pub(crate) fn blob_location(&self) -> String {
        self.inner.blobs.location()
    }

    /// Opens `bucket/path` for `who`, after the bucket's read rule.
    pub async fn open(&self, who: &Principal, bucket: &str, path: &str) -> Result<OpenFile> {
        check_bucket(bucket)?;
        check_path(path)?;
        let policy = self.policy(bucket).await?;
        self.open_checked(bucket, path, |info| {
            if self.may(who, &policy.read, info) {
                Ok(())
            } else {
                Err(FilesError::Forbidden(format!(
                    "the read rule of bucket {bucket} denies this"
                )))
            }
        })
        .await
    }

    /// The key that signs URLs, which backup download links share.
    pub(crate) fn signer(&self) -> &UrlSigner {
        &self.inner.signer
    }

    /// Opens `bucket/path` through a signed URL: no token and no rule, only a valid, unexpired
    /// signature.
    pub async fn open_signed(
        &self,
        bucket: &str,
        path: &str,
        expires: &str,
        signature: &str,
    ) -> Result<OpenFile> {
        check_bucket(bucket)?;
        check_path(path)?;
        if !self
            .inner
            .signer
            .verify(&Signed::File { bucket, path }, expires, signature)
        {
            return Err(FilesError::Forbidden(
                "the signed URL is invalid or has expired".into(),
            ));
        }
        self.open_checked(bucket, path, |_| Ok(())).await
    }

    /// Reads the record, applies `check`, and opens its blob. A blob removed between the two
    /// (the file was replaced) is retried with the new record.
    async fn open_checked(
        &self,
        bucket: &str,
        path: &str,
        check: impl Fn(Option<&FileInfo>) -> Result<()>,
    ) -> Result<OpenFile> {
        let missing = || not_found(bucket, path);
        for _ in 0..3 {
            let record = self.inner.store.file_get(bucket, path).await?;
            check(record.as_ref().map(|r| &r.info))?;
            let record = record.ok_or_else(missing)?;
            match self.inner.blobs.open(record.blob).await {
                Ok(body) => {
                    let inline = inline_type(&record.info.content_type) && !record.markup;
                    return Ok(OpenFile {
                        info: record.info,
                        inline,
                        body,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
        Err(internal(format!("the blob of {bucket}/{path} is missing")))
    }

    /// A URL that serves `bucket/path` without a token for `expires_in` seconds. The caller
    /// needs read access, and the file must exist.
    pub async fn sign(
        &self,
        who: &Principal,
        bucket: &str,
        path: &str,
        expires_in: u64,
    ) -> Result<SignedUrl> {
        check_bucket(bucket)?;
        check_path(path)?;
        if !(1..=MAX_SIGNED_SECS).contains(&expires_in) {
            return Err(invalid(
                format!("expires_in must be 1 to {MAX_SIGNED_SECS} seconds"),
                "expires_in",
            ));
        }
        let policy = self.policy(bucket).await?;
        let record = self.inner.store.file_get(bucket, path).await?;
        if !self.may(who, &policy.read, record.as_ref().map(|r| &r.info)) {
            return Err(FilesError::Forbidden(format!(
                "the read rule of bucket {bucket} denies this"
            )));
        }
        if record.is_none() {
            return Err(not_found(bucket, path));
        }
        let signature = self
            .inner
            .signer
            .sign(&Signed::File { bucket, path }, expires_in);
        Ok(SignedUrl {
            path_and_query: format!("/v1/files/{bucket}/{path}?{}", signature.query),
            expires_at: signature.expires_at,
        })
    }

    /// A page of a bucket's files in path order, those the read rule allows.
    pub async fn list(
        &self,
        who: &Principal,
        bucket: &str,
        prefix: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<FilePage> {
        check_bucket(bucket)?;
        let prefix = prefix.unwrap_or("");
        safety::check_prefix(prefix)?;
        let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=1000).contains(&limit) {
            return Err(FilesError::BadRequest("limit must be 1 to 1000".into()));
        }
        let after = cursor
            .map(|c| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|p| check_path(p).is_ok())
                    .ok_or_else(|| FilesError::BadRequest("invalid cursor".into()))
            })
            .transpose()?;
        let policy = self.policy(bucket).await?;
        let denied =
            || FilesError::Forbidden(format!("the read rule of bucket {bucket} denies this"));
        let per_file = match &policy.read {
            _ if who.is_admin() => false,
            // A rule that looks at each file but says no to this caller whatever the file
            // holds is decided once, as for documents.
            Rule::Expr {
                expr,
                uses_doc: true,
            } => {
                let scope = json!({"auth": who.auth_value(), "file": null, "request": null});
                if crate::query::decide(expr, &scope, "file") == Some(false) {
                    return Err(denied());
                }
                true
            }
            rule => {
                if !self.may(who, rule, None) {
                    return Err(denied());
                }
                false
            }
        };
        const PAGE: usize = 256;
        let mut items = Vec::new();
        let mut more = false;
        let mut after = after;
        'scan: loop {
            let page = self
                .inner
                .store
                .file_scan(bucket, prefix, after.as_deref(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            after = page.last().map(|r| r.info.path.clone());
            for stored in page {
                let info = stored.info;
                if per_file && !self.may(who, &policy.read, Some(&info)) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break 'scan;
                }
                items.push(info);
            }
            if !full {
                break;
            }
        }
        let next_cursor = match (more, items.last()) {
            (true, Some(last)) => Some(URL_SAFE_NO_PAD.encode(&last.path)),
            _ => None,
        };
        Ok(FilePage { items, next_cursor })
    }

    /// Deletes a file: its record (with a change record), then its blob.
    pub async fn delete(&self, who: &Principal, bucket: &str, path: &str) -> Result<()> {
        check_bucket(bucket)?;
        check_path(path)?;
        let write = FileWrite {
            bucket: bucket.to_string(),
            path: path.to_string(),
            op: FileOp::Delete,
            actor: who.actor(),
            depth: who.depth(),
            trace: crate::trace::current(),
            guard: self.guard(who, bucket).await?,
        };
        let files = self.clone();
        // Detached, so a client that disconnects cannot stop the blob's removal half way.
        joined(
            tokio::spawn(async move {
                let written = files.inner.store.file_write(write).await?;
                if let Some(old) = written.before {
                    files.remove_blob(old.blob).await;
                }
                Ok(())
            })
            .await,
        )?
    }
}

fn not_found(bucket: &str, path: &str) -> FilesError {
    FilesError::NotFound {
        bucket: bucket.into(),
        path: path.into(),
    }
}
