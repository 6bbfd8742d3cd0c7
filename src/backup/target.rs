//! Where archives are kept: a directory, or a prefix of an S3-compatible bucket. An archive is
//! first written to a staging file on local disk and published only once it is complete and on
//! disk, so a listed archive is always whole.

use crate::files::{BlobReader, ObjectDir};
use futures_util::stream::BoxStream;
use std::io;
use std::path::{Path, PathBuf};

/// How long a staging file must have been left alone before a start removes it.
const STALE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Clone)]
pub(super) enum Target {
    Dir(PathBuf),
    Bucket(ObjectDir),
}

/// An archive a target holds.
pub(super) struct Stored {
    pub name: String,
    pub size: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl Target {
    /// The target `backups.dir` or `backups.url` names (`<data_dir>/backups` when neither).
    pub(super) fn from_config(
        config: &crate::config::BackupsConfig,
        data_dir: &Path,
    ) -> Result<Target, String> {
        if config.url.is_empty() {
            // Made by the first backup: a server that never makes one leaves no folder.
            let dir = match config.dir.as_str() {
                "" => data_dir.join("backups"),
                dir => PathBuf::from(dir),
            };
            return Ok(Target::Dir(dir));
        }
        ObjectDir::open(
            &config.url,
            &config.access_key_id,
            &config.secret_access_key,
        )
        .map(Target::Bucket)
        .map_err(|e| format!("backups.url: {e}"))
    }

    /// Where the archives are, for the log.
    pub(super) fn location(&self) -> String {
        match self {
            Target::Dir(dir) => dir.display().to_string(),
            Target::Bucket(bucket) => bucket.location(),
        }
    }

    /// The file an archive is written to before it is published: beside the archives in a
    /// directory (a rename publishes it), or under `staging` for a bucket.
    pub(super) fn staging_path(&self, staging: &Path, name: &str) -> PathBuf {
        match self {
            Target::Dir(dir) => dir.join(format!(".{name}.partial")),
            Target::Bucket(_) => staging.join(format!("{name}.partial")),
        }
    }

    /// Removes the staging files a backup interrupted by a crash left (at start). Only files
    /// untouched for `STALE`: another node sharing the directory may be writing one now, and a
    /// running backup writes to its file all the time.
    pub(super) fn sweep_staging(&self, staging: &Path) {
        let dirs: Vec<&Path> = match self {
            Target::Dir(dir) => vec![dir, staging],
            Target::Bucket(_) => vec![staging],
        };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age >= STALE);
                if stale && entry.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Publishes the staged (complete and synced) archive as `name`, and removes the staging
    /// file.
    pub(super) async fn publish(&self, staged: &Path, name: &str) -> io::Result<()> {
        match self {
            Target::Dir(dir) => {
                let (staged, dest, dir) = (staged.to_path_buf(), dir.join(name), dir.clone());
                blocking(move || {
                    std::fs::rename(&staged, &dest)?;
                    std::fs::File::open(&dir)?.sync_all()
                })
                .await
            }
            Target::Bucket(bucket) => {
                bucket.put_file(name, staged).await?;
                let staged = staged.to_path_buf();
                blocking(move || std::fs::remove_file(staged)).await
            }
        }
    }

    /// The archives (not the staging files, nor anything else beside them).
    pub(super) async fn list(&self) -> io::Result<Vec<Stored>> {
        let found = match self {
            Target::Dir(dir) => {
                let dir = dir.clone();
                blocking(move || {
                    let mut found = Vec::new();
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(entries) => entries,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
                        Err(e) => return Err(e),
                    };
                    for entry in entries {
                        let entry = entry?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        // Only archives: a staging file may be renamed away meanwhile.
                        if super::created_at(&name).is_none() {
                            continue;
                        }
                        match entry.metadata() {
                            Ok(meta) => found.push((name, meta.len())),
                            // Deleted since the directory was read.
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(found)
                })
                .await?
            }
            Target::Bucket(bucket) => bucket.list().await?,
        };
        Ok(found
            .into_iter()
            .filter(|(name, _)| super::created_at(name).is_some())
            .map(|(name, size)| Stored { name, size })
            .collect())
    }

    /// The bytes of archive `name` and its size; `NotFound` if there is no such archive.
    pub(super) async fn open(
        &self,
        name: &str,
    ) -> io::Result<(u64, BoxStream<'static, io::Result<bytes::Bytes>>)> {
        let (size, reader) = match self {
            Target::Dir(dir) => {
                let path = dir.join(name);
                blocking(move || {
                    let file = std::fs::File::open(path)?;
                    let size = file.metadata()?.len();
                    Ok((size, BlobReader::file(file)))
                })
                .await?
            }
            Target::Bucket(bucket) => bucket.read(name).await?,
        };
        Ok((size, reader.stream(0, size)))
    }

    /// Deletes archive `name` (absent already is fine).
    pub(super) async fn delete(&self, name: &str) -> io::Result<()> {
        match self {
            Target::Dir(dir) => {
                let path = dir.join(name);
                match blocking(move || std::fs::remove_file(path)).await {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
            Target::Bucket(bucket) => bucket.delete(name).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_staging_files_left_alone_for_a_while_are_swept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, age: std::time::Duration| {
            let path = dir.path().join(name);
            let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
            file.set_modified(std::time::SystemTime::now() - age)
                .unwrap_or_else(|e| panic!("{e}"));
            path
        };
        let crashed = write(".backup-a.tar.gz.partial", STALE * 2);
        let running = write(".backup-b.tar.gz.partial", std::time::Duration::ZERO);
        let archive = write("backup-c.tar.gz", STALE * 2);
        Target::Dir(dir.path().to_path_buf()).sweep_staging(dir.path());
        assert!(!crashed.exists());
        assert!(
            running.exists(),
            "another node's backup in progress is left alone"
        );
        assert!(archive.exists());
    }
}
