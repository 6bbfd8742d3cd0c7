//! The backup archive: one gzip-compressed tar file that any `tar -xzf` can open.
//!
//! - `store/<keyspace>/<NNNNNN>`: the snapshot's keys and values, in key order, in pieces of
//!   about 8 MiB; each record is a 4-byte big-endian key length, the key, a 4-byte value
//!   length and the value.
//! - `secrets/<name>`: the server's keys (service key, token signing keys, URL signing key, and
//!   the function secrets' sealing key when it is a file of the data directory).
//! - `modules/<sha256>.wasm`: function modules (and JavaScript sources).
//! - `blobs/<ULID>`: the bytes of every file the snapshot has a record of.
//! - `manifest.json`, last: what the archive is, and the size and SHA-256 of every other entry.
//!
//! A reader checks every entry against the manifest, and refuses an archive with an entry
//! missing, added, reordered or changed, or without its manifest (a truncated archive).

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// `format` in every manifest.
pub(crate) const FORMAT: &str = "emberbase-backup";
/// The archive layout version this build writes and reads.
pub(crate) const VERSION: u32 = 1;
pub(crate) const MANIFEST: &str = "manifest.json";
/// The largest manifest a reader accepts.
const MAX_MANIFEST: u64 = 256 << 20;
/// The size a piece of the store grows to before it is written as an entry.
pub(crate) const PIECE: usize = 8 << 20;

/// One entry of the archive, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntrySum {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What an archive holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: String,
    pub version: u32,
    pub name: String,
    /// RFC 3339, when the snapshot was taken.
    pub created_at: String,
    /// The version of Emberbase that wrote it.
    pub emberbase: String,
    /// The storage engine it was taken from (`sled` or `postgres`).
    pub backend: String,
    /// The sequence of the newest change the snapshot holds.
    pub seq: u64,
    pub keys: u64,
    pub files: u64,
    pub modules: u64,
    pub secrets: u64,
    pub entries: Vec<EntrySum>,
}

impl Manifest {
    /// The manifest of a new archive, with nothing counted yet.
    pub(crate) fn new(name: &str, created_at: String, backend: &str) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            name: name.to_string(),
            created_at,
            emberbase: env!("CARGO_PKG_VERSION").into(),
            backend: backend.into(),
            seq: 0,
            keys: 0,
            files: 0,
            modules: 0,
            secrets: 0,
            entries: Vec::new(),
        }
    }
}

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    /// The archive's bytes are not what its manifest says, or it ends early.
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    /// Something other than reading the archive failed (writing what it restores).
    #[error("{0}")]
    Io(io::Error),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts and hashes what is read through it, and remembers whether reading failed.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    failed: bool,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
            failed: false,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Writes an archive entry by entry.
pub(crate) struct ArchiveWriter<W: Write> {
    tar: tar::Builder<GzEncoder<W>>,
    entries: Vec<EntrySum>,
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

impl<W: Write> ArchiveWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        ArchiveWriter {
            tar: tar::Builder::new(GzEncoder::new(out, flate2::Compression::fast())),
            entries: Vec::new(),
        }
    }

    /// Adds `path` with the `size` bytes `data` gives; fails if it gives fewer.
    pub(crate) fn add(&mut self, path: &str, size: u64, data: impl Read) -> io::Result<()> {
        let mut hashing = Hashing::new(data.take(size));
        self.tar
            .append_data(&mut header(size), path, &mut hashing)?;
        if hashing.count != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: {} bytes of {size}", hashing.count),
            ));
        }
        self.entries.push(EntrySum {
            path: path.to_string(),
            size,
            sha256: hex(&hashing.hasher.finalize()),
        });
        Ok(())
    }

    pub(crate) fn add_bytes(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.add(path, bytes.len() as u64, bytes)
    }

    /// Writes the manifest (with the list of entries) and ends the archive.
    pub(crate) fn finish(mut self, mut manifest: Manifest) -> io::Result<W> {
        manifest.entries = std::mem::take(&mut self.entries);
        let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        self.tar
            .append_data(&mut header(json.len() as u64), MANIFEST, json.as_slice())?;
        self.tar.into_inner()?.finish()
    }
}

/// A piece of the store: records appended until it reaches [`PIECE`] bytes.
#[derive(Default)]
pub(crate) struct StorePiece {
    pub bytes: Vec<u8>,
    pub records: u64,
}

impl StorePiece {
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) {
        for part in [key, value] {
            self.bytes
                .extend_from_slice(&(part.len() as u32).to_be_bytes());
            self.bytes.extend_from_slice(part);
        }
        self.records += 1;
    }

    pub(crate) fn is_full(&self) -> bool {
        self.bytes.len() >= PIECE
    }
}

/// Reads the records of a piece of the store, calling `record(key, value)` for each.
pub(crate) fn read_records(
    mut piece: impl Read,
    mut record: impl FnMut(Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        match piece.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut key = vec![0; u32::from_be_bytes(len) as usize];
        piece.read_exact(&mut key)?;
        piece.read_exact(&mut len)?;
        let mut value = vec![0; u32::from_be_bytes(len) as usize];
        piece.read_exact(&mut value)?;
        record(key, value)?;
    }
}

/// Reads an archive, handing every entry but the manifest to `visit` (which may read it, all or
/// part, or not), and checks each against the manifest. Returns the manifest once every entry
/// matched. `visit` sees an entry before it is checked: what it writes must stay aside until
/// this returns.
pub(crate) fn read_archive(
    input: impl Read,
    mut visit: impl FnMut(&str, &mut dyn Read) -> io::Result<()>,
) -> Result<Manifest, ArchiveError> {
    let damaged = |e: io::Error| ArchiveError::Damaged(e.to_string());
    let mut archive = tar::Archive::new(GzDecoder::new(input));
    let mut seen = Vec::new();
    let mut manifest: Option<Manifest> = None;
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry
            .path()
            .map_err(damaged)?
            .to_string_lossy()
            .into_owned();
        if manifest.is_some() {
            return Err(ArchiveError::Damaged(format!(
                "{path} comes after the manifest"
            )));
        }
        if path == MANIFEST {
            if entry.size() > MAX_MANIFEST {
                return Err(ArchiveError::Damaged("the manifest is too large".into()));
            }
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map_err(damaged)?;
            let parsed: Manifest = serde_json::from_slice(&json)
                .map_err(|e| ArchiveError::Damaged(format!("the manifest: {e}")))?;
            if parsed.format != FORMAT {
                return Err(ArchiveError::Damaged(format!(
                    "not an Emberbase backup (format {:?})",
                    parsed.format
                )));
            }
            if parsed.version != VERSION {
                return Err(ArchiveError::Damaged(format!(
                    "archive version {} (this build reads version {VERSION})",
                    parsed.version
                )));
            }
            manifest = Some(parsed);
            continue;
        }
        let mut hashing = Hashing::new(&mut entry);
        let visited = visit(&path, &mut hashing)
            .and_then(|()| io::copy(&mut hashing, &mut io::sink()).map(drop));
        if let Err(e) = visited {
            return Err(if hashing.failed {
                damaged(e)
            } else {
                ArchiveError::Io(e)
            });
        }
        seen.push(EntrySum {
            path,
            size: hashing.count,
            sha256: hex(&hashing.hasher.finalize()),
        });
    }
    // The tar ends before the gzip stream does: read to its end, where its CRC-32 over the
    // whole archive (the manifest too) is checked.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(damaged)?;
    let manifest = manifest.ok_or_else(|| {
        ArchiveError::Damaged("it has no manifest (it is truncated, or not a backup)".into())
    })?;
    if let Some((i, listed)) = manifest
        .entries
        .iter()
        .enumerate()
        .find(|(i, listed)| seen.get(*i) != Some(*listed))
    {
        let found = seen.get(i).filter(|s| s.path == listed.path);
        return Err(ArchiveError::Damaged(match found {
            Some(_) => format!("{} does not match its checksum", listed.path),
            None => format!("{} is missing", listed.path),
        }));
    }
    if let Some(extra) = seen.get(manifest.entries.len()) {
        return Err(ArchiveError::Damaged(format!(
            "{} is not in the manifest",
            extra.path
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut w = ArchiveWriter::new(Vec::new());
        let mut piece = StorePiece::default();
        piece.push(b"k1", b"v1");
        piece.push(b"k2", b"");
        w.add_bytes("store/documents/000001", &piece.bytes).unwrap();
        w.add_bytes("blobs/x", &[7; 5000]).unwrap();
        w.finish(Manifest::new("test", String::new(), "sled"))
            .unwrap()
    }

    #[test]
    fn an_archive_reads_back_with_its_records() {
        let mut records = Vec::new();
        let mut blob = Vec::new();
        let manifest = read_archive(archive().as_slice(), |path, r| match path {
            "store/documents/000001" => read_records(r, |k, v| {
                records.push((k, v));
                Ok(())
            }),
            _ => r.read_to_end(&mut blob).map(drop),
        })
        .unwrap();
        assert_eq!(manifest.entries.len(), 2);
        assert_eq!(
            records,
            vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![])]
        );
        assert_eq!(blob, vec![7; 5000]);
    }

    #[test]
    fn a_changed_or_truncated_archive_is_refused() {
        let good = archive();
        // Uncompressed, change a byte of the blob and compress again: the gzip is valid, the
        // checksum is not.
        let mut tar = Vec::new();
        GzDecoder::new(good.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        let at = tar.windows(3).position(|w| w == [7, 7, 7]).unwrap();
        tar[at] = 8;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let changed = gz.finish().unwrap();
        let err = read_archive(changed.as_slice(), |_, _| Ok(())).unwrap_err();
        assert!(
            err.to_string()
                .contains("blobs/x does not match its checksum"),
            "{err}"
        );
        let err = read_archive(&good[..good.len() / 2], |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, ArchiveError::Damaged(_)), "{err}");
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xFF;
        assert!(read_archive(flipped.as_slice(), |_, _| Ok(())).is_err());
    }
}
