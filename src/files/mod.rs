//! The file service: the API of `API.md`'s Files section as plain Rust, used by the HTTP layer
//! and by embedding programs.
//!
//! Bytes live in blobs under `<data_dir>/files/blobs/<ULID>`, named by the server and never by
//! the client's path, so no path can reach outside that directory. An upload streams into
//! `<data_dir>/files/tmp/<ULID>.part` while it is hashed and counted, is made durable and renamed
//! into place, and only then is its record committed through the store's writer (with a change
//! record, like a document). The blob a record replaced or removed is deleted after the commit;
//! a startup sweep removes temp files and blobs that no record points at, so a crash at any
//! step leaves neither a partial file visible nor an orphan on disk for long.

mod error;
mod safety;
mod signing;

pub use error::{FilesError, Result};
pub use safety::{check_path, inline_type, looks_like_markup};

use crate::auth::Principal;
use crate::config::FilesConfig;
use crate::docs::check_collection;
use crate::query::{allows, Rule};
use error::{internal, invalid};
use crate::model::{BucketConfig, BucketInfo, BucketRules, FileInfo};
use crate::query::Dialect;
use crate::store::{Access, FileGuard, FileOp, FileWrite, KvWrite, Space, Store};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Uploads are written to disk in pieces of this size.
const WRITE_CHUNK: usize = 256 * 1024;
/// The longest a signed URL may live: 7 days.
pub const MAX_SIGNED_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_CONTENT_TYPE: usize = 255;

/// A bucket's rules and limits, compiled.
struct BucketPolicy {
    read: Rule,
    write: Rule,
    delete: Rule,
    max_size: u64,
    content_types: Option<Vec<String>>,
}

impl BucketPolicy {
    fn compile(
        config: &BucketConfig,
        defaults: &BucketRules,
        max_size: u64,
    ) -> std::result::Result<Self, (&'static str, crate::query::ParseError)> {
        let rules = config.rules.as_ref().unwrap_or(defaults);
        let one = |name: &'static str, src: &Option<String>| {
            Rule::compile_in(src.as_deref(), Dialect::FileRule).map_err(|e| (name, e))
        };
        Ok(BucketPolicy {
            read: one("read", &rules.read)?,
            write: one("write", &rules.write)?,
            delete: one("delete", &rules.delete)?,
            max_size: config.max_size.unwrap_or(max_size),
            content_types: config.content_types.clone(),
        })
    }
}

type PolicyCache = HashMap<String, (Vec<u8>, Arc<BucketPolicy>)>;

struct Inner {
    store: Store,
    blobs: PathBuf,
    tmp: PathBuf,
    defaults: BucketRules,
    max_size: u64,
    default_policy: Arc<BucketPolicy>,
    /// Compiled policies, with the stored configuration bytes they were compiled from.
    policies: RwLock<PolicyCache>,
    signer: signing::UrlSigner,
}

/// The file service. Cheap to clone.
#[derive(Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

/// A file opened for reading: its metadata, whether it may be shown inline, and the bytes.
pub struct OpenFile {
    pub info: FileInfo,
    pub inline: bool,
    pub file: std::fs::File,
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
pub struct Swept {
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

pub fn check_bucket(name: &str) -> Result<()> {
    check_collection(name).map_err(|_| {
        FilesError::BadRequest(format!(
            "invalid bucket name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The writer's access check for one caller's file write.
struct BucketGuard {
    policy: Arc<BucketPolicy>,
    /// The stored configuration the policy was compiled from (`None`: the defaults).
    source: Option<Vec<u8>>,
    bucket: String,
    auth: Value,
}

impl FileGuard for BucketGuard {
    fn check(
        &self,
        access: Access,
        before: Option<&FileInfo>,
        after: Option<&FileInfo>,
    ) -> std::result::Result<(), String> {
        let policy = &self.policy;
        let (rule, verb) = match access {
            Access::Create | Access::Update => (&policy.write, "write"),
            Access::Delete => (&policy.delete, "delete"),
        };
        let request = after.map(|a| request_value(a.size, &a.content_type, &a.path));
        if rule_allows(rule, &self.auth, before, request) {
            Ok(())
        } else {
            Err(format!(
                "the {verb} rule of bucket {} denies this",
                self.bucket
            ))
        }
    }

    fn depends_on(&self) -> (Space, Vec<u8>, Option<Vec<u8>>) {
        (
            Space::Buckets,
            self.bucket.as_bytes().to_vec(),
            self.source.clone(),
        )
    }
}

fn request_value(size: u64, content_type: &str, path: &str) -> Value {
    json!({"size": size, "content_type": content_type, "path": path})
}

/// Evaluates a bucket rule with `auth`, `file` and `request` bound.
fn rule_allows(rule: &Rule, auth: &Value, file: Option<&FileInfo>, request: Option<Value>) -> bool {
    let file = file.map_or(Value::Null, |f| {
        serde_json::to_value(f).unwrap_or(Value::Null)
    });
    let scope = json!({"auth": auth, "file": file, "request": request.unwrap_or(Value::Null)});
    allows(rule, &scope)
}

fn valid_content_type(ct: &str) -> bool {
    ct.len() <= MAX_CONTENT_TYPE
        && ct.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        && safety::check_type_pattern(&safety::essence(ct))
        && !safety::essence(ct).ends_with("/*")
}

impl Files {
    /// Opens the file directories under `data_dir`, loads the URL signing key and sweeps what a
    /// crash may have left behind.
    pub async fn start(
        data_dir: &Path,
        store: Store,
        config: &FilesConfig,
    ) -> std::result::Result<(Files, Swept), String> {
        let root = data_dir.join("files");
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        for dir in [&blobs, &tmp] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let signer = signing::UrlSigner::load_or_create(data_dir)
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
    /// server accepts requests, so no upload is in flight.
    async fn sweep(&self) -> std::result::Result<Swept, String> {
        let mut swept = Swept::default();
        let entries =
            |dir: &Path| std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()));
        for entry in entries(&self.inner.tmp)? {
            let entry = entry.map_err(|e| e.to_string())?;
            std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
            swept.temp_files += 1;
        }
        let referenced = self
            .inner
            .store
            .file_blobs()
            .await
            .map_err(|e| e.to_string())?;
        for entry in entries(&self.inner.blobs)? {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name();
            let known = name
                .to_str()
                .and_then(|n| ulid::Ulid::from_string(n).ok())
                .is_some_and(|id| referenced.contains(&id));
            if !known {
                std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
                swept.orphan_blobs += 1;
            }
        }
        if swept != Swept::default() {
            sync_dir(&self.inner.tmp).map_err(|e| e.to_string())?;
            sync_dir(&self.inner.blobs).map_err(|e| e.to_string())?;
        }
        Ok(swept)
    }

    fn blob_path(&self, blob: ulid::Ulid) -> PathBuf {
        self.inner.blobs.join(blob.to_string())
    }

    /// Deletes a blob no record points at any more. A failure only leaves an orphan for the
    /// next startup sweep.
    async fn remove_blob(&self, blob: ulid::Ulid) {
        let path = self.blob_path(blob);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
            tracing::warn!(%blob, error = %e, "could not remove a replaced blob; the next start sweeps it");
        }
    }

    /// The compiled rules and limits of a bucket: its own configuration, or the defaults.
    async fn policy(&self, bucket: &str) -> Result<Arc<BucketPolicy>> {
        Ok(self.policy_with_source(bucket).await?.0)
    }

    /// Like [`Files::policy`], with the stored configuration it comes from.
    async fn policy_with_source(
        &self,
        bucket: &str,
    ) -> Result<(Arc<BucketPolicy>, Option<Vec<u8>>)> {
        let Some(bytes) = self
            .inner
            .store
            .kv_get(Space::Buckets, bucket.as_bytes())
            .await?
        else {
            return Ok((self.inner.default_policy.clone(), None));
        };
        if let Ok(cache) = self.inner.policies.read() {
            if let Some((source, policy)) = cache.get(bucket) {
                if *source == bytes {
                    return Ok((policy.clone(), Some(bytes)));
                }
            }
        }
        let config: BucketConfig = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("bucket {bucket} config: {e}")))?;
        let policy = BucketPolicy::compile(&config, &self.inner.defaults, self.inner.max_size)
            .unwrap_or_else(|(name, e)| {
                // Fail closed, as collections do: admins only until the rule is fixed.
                tracing::error!(bucket, rule = name, error = %e, "a stored bucket rule does not compile; the bucket allows admins only until it is fixed");
                BucketPolicy {
                    read: Rule::AdminOnly,
                    write: Rule::AdminOnly,
                    delete: Rule::AdminOnly,
                    max_size: 0,
                    content_types: None,
                }
            });
        let policy = Arc::new(policy);
        if let Ok(mut cache) = self.inner.policies.write() {
            cache.insert(bucket.to_string(), (bytes.clone(), policy.clone()));
        }
        Ok((policy, Some(bytes)))
    }

    async fn guard(&self, who: &Principal, bucket: &str) -> Result<Option<Arc<dyn FileGuard>>> {
        if who.is_admin() {
            Ok(None)
        } else {
            let (policy, source) = self.policy_with_source(bucket).await?;
            Ok(Some(Arc::new(BucketGuard {
                policy,
                source,
                bucket: bucket.to_string(),
                auth: who.auth_value(),
            })))
        }
    }

    fn may(&self, who: &Principal, rule: &Rule, file: Option<&FileInfo>) -> bool {
        who.is_admin() || rule_allows(rule, &who.auth_value(), file, None)
    }

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
        })
    }

    /// Commits an uploaded blob's record, then removes the blob it replaced (or, if the commit
    /// failed, the new blob).
    async fn commit_blob(&self, write: FileWrite, blob: ulid::Ulid) -> Result<(FileInfo, bool)> {
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
        let invalid = || FilesError::Forbidden("the signed URL is invalid or has expired".into());
        let expires: u64 = expires.parse().map_err(|_| invalid())?;
        if !self.inner.signer.verify(bucket, path, expires, signature)
            || expires < crate::model::unix_secs()
        {
            return Err(invalid());
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
            match std::fs::File::open(self.blob_path(record.blob)) {
                Ok(file) => {
                    let inline = inline_type(&record.info.content_type) && !record.markup;
                    return Ok(OpenFile {
                        info: record.info,
                        inline,
                        file,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
        Err(internal(format!(
            "the blob of {bucket}/{path} is missing"
        )))
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
        let expires = crate::model::unix_secs().saturating_add(expires_in);
        let signature = self.inner.signer.sign(bucket, path, expires);
        let expires_at = time::OffsetDateTime::from_unix_timestamp(expires as i64)
            .map(crate::model::format_time)
            .map_err(|e| internal(format!("expiry out of range: {e}")))?;
        Ok(SignedUrl {
            path_and_query: format!(
                "/v1/files/{bucket}/{path}?expires={expires}&signature={signature}"
            ),
            expires_at,
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
        let denied = || FilesError::Forbidden(format!("the read rule of bucket {bucket} denies this"));
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

    /// Sets a bucket's rules and limits (admins only).
    pub async fn configure(
        &self,
        who: &Principal,
        bucket: &str,
        config: BucketConfig,
    ) -> Result<BucketInfo> {
        who.require_admin("configure buckets")?;
        check_bucket(bucket)?;
        BucketPolicy::compile(&config, &self.inner.defaults, self.inner.max_size).map_err(
            |(name, e)| FilesError::InvalidRule {
                rule: name.into(),
                message: e.message,
                column: e.column,
            },
        )?;
        if config
            .max_size
            .is_some_and(|n| n == 0 || n > i64::MAX as u64)
        {
            return Err(invalid(
                format!("max_size must be from 1 to {}", i64::MAX),
                "max_size",
            ));
        }
        if let Some(types) = &config.content_types {
            if let Some(bad) = types.iter().find(|t| !safety::check_type_pattern(t)) {
                return Err(invalid(
                    format!("content type {bad:?} is not `type/subtype` or `type/*`"),
                    "content_types",
                ));
            }
        }
        let bytes = serde_json::to_vec(&config).map_err(internal)?;
        self.inner
            .store
            .kv_write(KvWrite::default().put(Space::Buckets, bucket.as_bytes(), bytes))
            .await?;
        Ok(BucketInfo::new(bucket, config))
    }

    /// A bucket's stored configuration (admins only).
    pub async fn bucket_config(&self, who: &Principal, bucket: &str) -> Result<BucketInfo> {
        who.require_admin("read bucket configs")?;
        check_bucket(bucket)?;
        let bytes = self
            .inner
            .store
            .kv_get(Space::Buckets, bucket.as_bytes())
            .await?
            .ok_or_else(|| FilesError::NotConfigured(bucket.into()))?;
        let config = serde_json::from_slice(&bytes).map_err(internal)?;
        Ok(BucketInfo::new(bucket, config))
    }

    /// Every configured bucket (admins only).
    pub async fn buckets(&self, who: &Principal) -> Result<Vec<BucketInfo>> {
        who.require_admin("read bucket configs")?;
        self.inner
            .store
            .kv_scan(Space::Buckets, None, usize::MAX)
            .await?
            .into_iter()
            .map(|(name, bytes)| {
                let config = serde_json::from_slice(&bytes).map_err(internal)?;
                Ok(BucketInfo::new(&String::from_utf8_lossy(&name), config))
            })
            .collect()
    }
}

fn not_found(bucket: &str, path: &str) -> FilesError {
    FilesError::NotFound {
        bucket: bucket.into(),
        path: path.into(),
    }
}

fn check_size(size: u64, max: u64) -> Result<()> {
    if size > max {
        Err(FilesError::TooLarge { max })
    } else {
        Ok(())
    }
}

/// The open temp file of an upload and the hash of what was written to it.
struct Sink {
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

    async fn flush(&mut self) -> Result<()> {
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
        let dest = self.files.blob_path(blob);
        let (tmp, blobs) = (self.tmp_path.clone(), self.files.inner.blobs.clone());
        let file = sink.file;
        joined(
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                file.sync_all()?;
                drop(file);
                std::fs::rename(&tmp, &dest)?;
                sync_dir(&blobs)
            })
            .await,
        )?
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
            },
            actor: self.who.actor(),
            depth: self.who.depth(),
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
