//! Where file bytes live: blobs named by the server (a ULID), never by a client's path, either
//! in `<data_dir>/files/blobs` or in an S3-compatible bucket (`files.url`), which the nodes of
//! a cluster share. An upload is first written to a local temp file (hashed and counted as it
//! streams), then stored as a blob, and only then gets its record, so a record never points at
//! bytes that are not there. To S3 a blob goes as a multipart upload read from the temp file a
//! part at a time: never whole in memory.

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use ulid::Ulid;

/// Pieces a blob is read in (from a file, or from the temp file into an S3 part).
const PIECE: usize = 256 * 1024;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Where a server keeps its file bytes.
#[derive(Clone)]
pub(super) enum Blobs {
    Local(PathBuf),
    S3 {
        store: Arc<AmazonS3>,
        bucket: String,
        /// Where in the bucket the blobs are: `<prefix>/blobs/<ULID>`.
        prefix: String,
    },
}

/// `files.url`: `s3://bucket[/prefix]?endpoint=...&region=...`.
#[derive(Clone)]
pub(super) struct S3Url {
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    region: Option<String>,
}

impl S3Url {
    pub(super) fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or("it must start with s3://")?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err("it names no bucket".into());
        }
        let mut parsed = S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "endpoint" => parsed.endpoint = Some(value),
                "region" => parsed.region = Some(value),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(parsed)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or("a bad %-escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape")?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "it is not UTF-8".to_string())
}

fn s3_error(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        other => std::io::Error::other(format!("object storage: {other}")),
    }
}

/// A client of the bucket `url` names: credentials as given, or (when empty) from the usual
/// `AWS_*` variables.
fn s3_client(
    url: &S3Url,
    access_key_id: &str,
    secret_access_key: &str,
) -> Result<Arc<AmazonS3>, String> {
    crate::tls::install_default_provider();
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
    if let Some(endpoint) = &url.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &url.region {
        builder = builder.with_region(region);
    }
    if !access_key_id.is_empty() {
        builder = builder
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key);
    }
    builder.build().map(Arc::new).map_err(|e| e.to_string())
}

/// Uploads the file at `path` to `key` as a multipart upload, a part at a time.
async fn upload_file(store: &AmazonS3, key: &ObjectPath, path: &Path) -> std::io::Result<()> {
    let upload = store.put_multipart(key).await.map_err(s3_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let opening = path.to_path_buf();
    let mut file = tokio::task::spawn_blocking(move || std::fs::File::open(opening))
        .await
        .map_err(std::io::Error::other)??;
    let sent = async {
        loop {
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(s3_error)?;
            let (back, piece) = tokio::task::spawn_blocking(move || {
                let mut piece = vec![0; PIECE];
                let n = file.read(&mut piece)?;
                piece.truncate(n);
                Ok::<_, std::io::Error>((file, piece))
            })
            .await
            .map_err(std::io::Error::other)??;
            file = back;
            if piece.is_empty() {
                return Ok::<_, std::io::Error>(());
            }
            writer.put(Bytes::from(piece));
        }
    }
    .await;
    match sent {
        Ok(()) => writer.finish().await.map(drop).map_err(s3_error),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// A prefix of an S3-compatible bucket that holds named objects (backup archives).
#[derive(Clone)]
pub(crate) struct ObjectDir {
    store: Arc<AmazonS3>,
    url: S3Url,
}

impl ObjectDir {
    /// The prefix `url` (`s3://bucket[/prefix]?endpoint=...`) names.
    pub(crate) fn open(
        url: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<ObjectDir, String> {
        let url = S3Url::parse(url)?;
        let store = s3_client(&url, access_key_id, secret_access_key)?;
        Ok(ObjectDir { store, url })
    }

    /// The file bytes of a server whose `files.url` is this prefix (the same keys `Blobs`
    /// uses: `<prefix>/blobs/<ULID>`).
    pub(crate) fn blobs(&self) -> ObjectDir {
        let mut url = self.url.clone();
        url.prefix = match url.prefix.as_str() {
            "" => "blobs".to_string(),
            prefix => format!("{prefix}/blobs"),
        };
        ObjectDir {
            store: self.store.clone(),
            url,
        }
    }

    /// `s3://bucket/prefix`, for the log.
    pub(crate) fn location(&self) -> String {
        format!("s3://{}/{}", self.url.bucket, self.url.prefix)
    }

    fn key(&self, name: &str) -> ObjectPath {
        ObjectPath::from(self.url.prefix.as_str()).join(name)
    }

    /// Uploads the file at `path` as `name`.
    pub(crate) async fn put_file(&self, name: &str, path: &Path) -> std::io::Result<()> {
        upload_file(&self.store, &self.key(name), path).await
    }

    /// The objects directly under the prefix (not deeper), with their sizes.
    pub(crate) async fn list(&self) -> std::io::Result<Vec<(String, u64)>> {
        let prefix = ObjectPath::from(self.url.prefix.as_str());
        let listed = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(s3_error)?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| Some((o.location.filename()?.to_string(), o.size)))
            .collect())
    }

    /// Object `name`'s size and bytes; `NotFound` if there is none.
    pub(crate) async fn read(&self, name: &str) -> std::io::Result<(u64, BlobReader)> {
        let key = self.key(name);
        let meta = self.store.head(&key).await.map_err(s3_error)?;
        Ok((
            meta.size,
            BlobReader(Source::Object(self.store.clone(), key)),
        ))
    }

    /// Deletes object `name` (absent already is fine).
    pub(crate) async fn delete(&self, name: &str) -> std::io::Result<()> {
        match self.store.delete(&self.key(name)).await {
            Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }
}

impl Blobs {
    /// Blobs in a bucket: credentials from the configuration if given, else from the usual
    /// `AWS_*` variables.
    pub(super) fn s3(
        url: &S3Url,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Blobs, String> {
        let store = s3_client(url, access_key_id, secret_access_key)
            .map_err(|e| format!("files.url: {e}"))?;
        Ok(Blobs::S3 {
            store,
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
        })
    }

    /// `local` or `s3`.
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Blobs::Local(_) => "local",
            Blobs::S3 { .. } => "s3",
        }
    }

    /// Where the blobs are, for the startup log.
    pub(crate) fn location(&self) -> String {
        match self {
            Blobs::Local(dir) => dir.display().to_string(),
            Blobs::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.blobs_prefix()),
        }
    }

    /// The key prefix of every blob in the bucket.
    fn blobs_prefix(&self) -> ObjectPath {
        match self {
            Blobs::S3 { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(prefix.as_str()).join("blobs")
            }
            _ => ObjectPath::from("blobs"),
        }
    }

    fn key(&self, blob: Ulid) -> ObjectPath {
        self.blobs_prefix().join(blob.to_string())
    }

    /// Stores a finished, flushed temp file as `blob` (durably), then removes the temp file.
    pub(super) async fn store(&self, tmp: &Path, blob: Ulid) -> std::io::Result<()> {
        match self {
            Blobs::Local(dir) => {
                let (tmp, dest, dir) = (tmp.to_path_buf(), dir.join(blob.to_string()), dir.clone());
                tokio::task::spawn_blocking(move || {
                    std::fs::rename(&tmp, &dest)?;
                    super::sync_dir(&dir)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            Blobs::S3 { store, .. } => {
                upload_file(store, &self.key(blob), tmp).await?;
                let tmp = tmp.to_path_buf();
                tokio::task::spawn_blocking(move || std::fs::remove_file(tmp))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }

    /// Deletes a blob (absent already is fine).
    pub(super) async fn remove(&self, blob: Ulid) -> std::io::Result<()> {
        match self {
            Blobs::Local(dir) => {
                let path = dir.join(blob.to_string());
                match tokio::task::spawn_blocking(move || std::fs::remove_file(path))
                    .await
                    .map_err(std::io::Error::other)?
                {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
            Blobs::S3 { store, .. } => match store.delete(&self.key(blob)).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(s3_error(e)),
            },
        }
    }

    /// Every blob, with when it was last written.
    pub(super) async fn list(&self) -> std::io::Result<Vec<(Option<Ulid>, String, SystemTime)>> {
        match self {
            Blobs::Local(dir) => {
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let modified = entry.metadata()?.modified()?;
                    out.push((Ulid::from_string(&name).ok(), name, modified));
                }
                Ok(out)
            }
            Blobs::S3 { store, .. } => {
                let prefix = self.blobs_prefix();
                let objects: Vec<_> = store
                    .list(Some(&prefix))
                    .try_collect()
                    .await
                    .map_err(s3_error)?;
                Ok(objects
                    .into_iter()
                    .map(|meta| {
                        let name = meta.location.filename().unwrap_or_default().to_string();
                        let modified = SystemTime::UNIX_EPOCH
                            + Duration::from_millis(
                                meta.last_modified.timestamp_millis().max(0) as u64
                            );
                        (
                            Ulid::from_string(&name).ok(),
                            meta.location.to_string(),
                            modified,
                        )
                    })
                    .collect())
            }
        }
    }

    /// Deletes what [`Blobs::list`] named `name` (a blob or a stray object).
    pub(super) async fn remove_named(&self, name: &str) -> std::io::Result<()> {
        match self {
            Blobs::Local(dir) => std::fs::remove_file(dir.join(name)),
            Blobs::S3 { store, .. } => store
                .delete(&ObjectPath::from(name))
                .await
                .map_err(s3_error),
        }
    }

    /// Opens a blob for reading; `NotFound` if it is not there (it was replaced meanwhile).
    pub(super) async fn open(&self, blob: Ulid) -> std::io::Result<BlobReader> {
        match self {
            Blobs::Local(dir) => Ok(BlobReader(Source::File(std::fs::File::open(
                dir.join(blob.to_string()),
            )?))),
            Blobs::S3 { store, .. } => {
                let key = self.key(blob);
                store.head(&key).await.map_err(s3_error)?;
                Ok(BlobReader(Source::Object(store.clone(), key)))
            }
        }
    }

    /// Whether the blob storage answers, for the health check.
    pub(crate) async fn check(&self) -> Result<(), String> {
        match self {
            Blobs::Local(dir) => std::fs::metadata(dir).map(drop).map_err(|e| e.to_string()),
            Blobs::S3 { store, .. } => {
                match store.head(&self.blobs_prefix().join("health-check")).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

enum Source {
    File(std::fs::File),
    Object(Arc<AmazonS3>, ObjectPath),
}

/// A stored file's bytes, opened for reading ([`OpenFile::body`](crate::OpenFile)).
pub struct BlobReader(Source);

impl BlobReader {
    pub(crate) fn file(file: std::fs::File) -> BlobReader {
        BlobReader(Source::File(file))
    }

    /// The bytes `start..start + len` as a stream read a piece at a time, so memory stays flat
    /// whatever the file's size.
    pub fn stream(self, start: u64, len: u64) -> BoxStream<'static, std::io::Result<Bytes>> {
        if len == 0 {
            return futures_util::stream::empty().boxed();
        }
        match self.0 {
            Source::File(file) => file_stream(file, start, len).boxed(),
            Source::Object(store, key) => futures_util::stream::once(async move {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(start..start + len)),
                    ..GetOptions::default()
                };
                store.get_opts(&key, options).await.map_err(s3_error)
            })
            .map_ok(|got| got.into_stream().map_err(s3_error))
            .try_flatten()
            .boxed(),
        }
    }

    /// The whole file, in memory: for small files.
    pub async fn read_all(self, len: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut pieces = self.stream(0, len);
        while let Some(piece) = pieces.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }
}

fn file_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::try_unfold((file, start, len), |(mut file, at, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(PIECE as u64);
        let (file, buf) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut buf = vec![0; n as usize];
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut buf)?;
            Ok((file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Some((Bytes::from(buf), (file, at + n, left - n))))
    })
}
