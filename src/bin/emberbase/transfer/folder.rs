//! A folder written by `emberbase export`, as a source for `import`.

use super::export::{Manifest, FORMAT, VERSION};
use super::{Item, Source, SourceFile, Totals};
use emberbase::{FileInfo, PortableDocument, PortableUser};
use serde::de::DeserializeOwned;
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub(crate) struct Folder {
    dir: PathBuf,
    manifest: Manifest,
}

/// Each line of a JSON Lines file, parsed; a missing file has none.
fn each_line<T: DeserializeOwned>(
    path: &Path,
    each: &mut dyn FnMut(T) -> Result<(), String>,
) -> Result<(), String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        each(item)?;
    }
    Ok(())
}

/// A bucket or collection name, or a file path, that stays inside the folder when joined to
/// it: the characters the server allows, and no `.` or `..` segment.
fn stays_inside(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|segment| {
            !matches!(segment, "" | "." | "..")
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

impl Folder {
    pub(crate) fn open(dir: &Path) -> Result<Folder, String> {
        let at = dir.join("manifest.json");
        let bytes = std::fs::read(&at).map_err(|e| {
            format!(
                "cannot read {}: {e} (is {} a folder written by `emberbase export`, and did the export finish?)",
                at.display(),
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not an export manifest: {e}", at.display()))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(format!(
                "{}: format {} version {}; this Emberbase reads {FORMAT} version {VERSION}",
                at.display(),
                manifest.format,
                manifest.version
            ));
        }
        if let Some(bad) = manifest.collections.keys().find(|c| !stays_inside(c)) {
            return Err(format!("{}: a bad collection name {bad:?}", at.display()));
        }
        Ok(Folder {
            dir: dir.to_path_buf(),
            manifest,
        })
    }
}

impl Source for Folder {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn totals(&mut self) -> Result<Totals, String> {
        Ok(Totals {
            users: Some(self.manifest.users),
            documents: Some(self.manifest.collections.values().sum()),
            files: Some(self.manifest.files),
        })
    }

    fn read(&mut self, out: &mut dyn FnMut(Item) -> Result<(), String>) -> Result<(), String> {
        each_line(&self.dir.join("users.jsonl"), &mut |user: PortableUser| {
            out(Item::User(user))
        })?;
        for collection in self.manifest.collections.keys() {
            let path = self
                .dir
                .join("collections")
                .join(format!("{collection}.jsonl"));
            each_line(&path, &mut |document: PortableDocument| {
                out(Item::Document {
                    collection: collection.clone(),
                    document,
                })
            })?;
        }
        let files = self.dir.join("files.jsonl");
        each_line(&files, &mut |info: FileInfo| {
            if !stays_inside(&info.bucket) || !stays_inside(&info.path) {
                return Err(format!(
                    "{}: a bad file name {}/{}",
                    files.display(),
                    info.bucket,
                    info.path
                ));
            }
            out(Item::File(SourceFile {
                local: self.dir.join("files").join(&info.bucket).join(&info.path),
                bucket: info.bucket,
                path: info.path,
                content_type: info.content_type,
                owner: info.owner,
                created_at: Some(info.created_at),
                updated_at: Some(info.updated_at),
            }))
        })
    }
}
