//! `emberbase export`: every account, document and file of a server into a folder, page by
//! page through the admin API:
//!
//! ```text
//! manifest.json              what is in the folder, written last
//! users.jsonl                one account per line, with its password hash
//! collections/<name>.jsonl   one document per line: id, data, owner, version and times
//! files.jsonl                one file's metadata per line
//! files/<bucket>/<path>      the file's bytes, checked against its SHA-256
//! ```
//!
//! The server keeps serving while it runs, so a write made meanwhile may or may not be in the
//! folder; a backup is the consistent snapshot.

use super::progress::{count, counter};
use crate::project::admin::Admin;
use emberbase::{CollectionInfo, Document, FileInfo, PortableDocument, PortableUser};
use indicatif::HumanBytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `import` recognises a folder by.
pub(super) const FORMAT: &str = "emberbase-export";
pub(super) const VERSION: u32 = 1;

const PAGE: usize = 1000;

/// The folder's table of contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) exported_at: String,
    /// The version of Emberbase that wrote it.
    pub(super) emberbase: String,
    pub(super) users: u64,
    /// Documents per collection.
    pub(super) collections: BTreeMap<String, u64>,
    pub(super) files: u64,
    pub(super) bytes: u64,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

/// The folder must be new or empty, so an export never mixes with another.
pub(super) fn check_target(out: &Path) -> Result<(), String> {
    match std::fs::read_dir(out).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(format!(
            "{} is not empty; export into a new folder",
            out.display()
        )),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot use {}: {e}", out.display())),
    }
}

/// The pages of a listing, one at a time.
struct Pager<'a> {
    admin: &'a Admin,
    path: String,
    /// `None` once the last page was read.
    cursor: Option<Option<String>>,
}

impl Pager<'_> {
    fn new<'a>(admin: &'a Admin, path: &str) -> Pager<'a> {
        Pager {
            admin,
            path: path.to_string(),
            cursor: Some(None),
        }
    }

    async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Vec<T>>, String> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let mut url = format!("{}?limit={PAGE}", self.path);
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.extend(url::form_urlencoded::byte_serialize(cursor.as_bytes()));
        }
        let page: Page<T> = self.admin.get(&url).await.map_err(|e| e.to_string())?;
        self.cursor = page.next_cursor.map(Some);
        Ok(Some(page.items))
    }
}

/// A JSON Lines file being written.
struct Lines {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl Lines {
    fn create(path: PathBuf) -> Result<Lines, String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Lines {
            path,
            out: std::io::BufWriter::new(file),
        })
    }

    fn write<T: Serialize>(&mut self, item: &T) -> Result<(), String> {
        let fail = |e: String| format!("cannot write {}: {e}", self.path.display());
        serde_json::to_writer(&mut self.out, item).map_err(|e| fail(e.to_string()))?;
        self.out.write_all(b"\n").map_err(|e| fail(e.to_string()))
    }

    fn finish(mut self) -> Result<(), String> {
        self.out
            .flush()
            .and_then(|()| self.out.get_ref().sync_all())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// Downloads a file's bytes to `to`, checking them against the SHA-256 the server gave.
async fn download(admin: &Admin, info: &FileInfo, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut sink = |piece: &[u8]| {
        hasher.update(piece);
        file.write_all(piece)
    };
    admin
        .download(
            &format!("/v1/files/{}/{}", info.bucket, info.path),
            &mut sink,
        )
        .await
        .map_err(|e| e.to_string())?;
    file.flush()
        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sha256 != info.sha256 {
        return Err(format!(
            "file {}/{} changed while it was downloaded; export again",
            info.bucket, info.path
        ));
    }
    Ok(())
}

/// Writes the export; returns the summary line.
pub(super) async fn export(admin: &Admin, out: &Path) -> Result<String, String> {
    let started = Instant::now();
    let exported_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        exported_at,
        emberbase: env!("CARGO_PKG_VERSION").into(),
        users: 0,
        collections: BTreeMap::new(),
        files: 0,
        bytes: 0,
    };

    let bar = counter("accounts", None);
    let mut lines = Lines::create(out.join("users.jsonl"))?;
    let mut pager = Pager::new(admin, "/v1/admin/export/users");
    while let Some(users) = pager.next::<PortableUser>().await? {
        for user in &users {
            lines.write(user)?;
        }
        manifest.users += users.len() as u64;
        bar.inc(users.len() as u64);
    }
    lines.finish()?;
    bar.finish_and_clear();

    let collections: Items<CollectionInfo> = admin
        .get("/v1/admin/collections")
        .await
        .map_err(|e| e.to_string())?;
    let collections: Vec<CollectionInfo> = collections
        .items
        .into_iter()
        .filter(|c| !c.deleting && c.documents > 0)
        .collect();
    let bar = counter(
        "documents",
        Some(collections.iter().map(|c| c.documents).sum()),
    );
    for collection in &collections {
        let name = &collection.name;
        let mut lines = Lines::create(out.join("collections").join(format!("{name}.jsonl")))?;
        let mut n = 0;
        let mut pager = Pager::new(admin, &format!("/v1/collections/{name}/docs"));
        while let Some(docs) = pager.next::<Document>().await? {
            n += docs.len() as u64;
            bar.inc(docs.len() as u64);
            for doc in docs {
                lines.write(&PortableDocument::from(doc))?;
            }
        }
        lines.finish()?;
        manifest.collections.insert(name.clone(), n);
    }
    bar.finish_and_clear();

    let buckets: Items<String> = admin
        .get("/v1/admin/export/buckets")
        .await
        .map_err(|e| e.to_string())?;
    let bar = counter("files", None);
    let mut lines = Lines::create(out.join("files.jsonl"))?;
    for bucket in &buckets.items {
        let mut pager = Pager::new(admin, &format!("/v1/files/{bucket}"));
        while let Some(files) = pager.next::<FileInfo>().await? {
            for info in files {
                let to = out.join("files").join(&info.bucket).join(&info.path);
                download(admin, &info, &to).await?;
                lines.write(&info)?;
                manifest.files += 1;
                manifest.bytes += info.size;
                bar.inc(1);
            }
        }
    }
    lines.finish()?;
    bar.finish_and_clear();

    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(out.join("manifest.json"), bytes)
        .map_err(|e| format!("cannot write the manifest: {e}"))?;
    let documents: u64 = manifest.collections.values().sum();
    Ok(format!(
        "exported {}, {} in {} and {} ({}) to {} in {:.1} s",
        count(manifest.users, "account"),
        count(documents, "document"),
        count(manifest.collections.len() as u64, "collection"),
        count(manifest.files, "file"),
        HumanBytes(manifest.bytes),
        out.display(),
        started.elapsed().as_secs_f64()
    ))
}
