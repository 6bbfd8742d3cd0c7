//! Data in and out of a server, through its admin API: `emberbase export` writes documents,
//! accounts and files to a folder of JSON Lines and file bytes; `emberbase import` loads such
//! a folder, a PocketBase data directory or a Firestore JSON export into a server. Like the
//! project commands, it works the same on a remote server (`--url`) and on a data directory
//! (an in-process server). This belongs to the binary: it uses the library's public types and
//! its HTTP API only.
//!
//! Every source is read on a thread of its own and handed over item by item (accounts, then
//! each collection's documents, then files), so a source larger than memory streams through.

mod export;
mod firestore;
mod folder;
mod load;
mod pocketbase;
mod progress;

use crate::common::{fail, runtime};
use crate::project::admin::Admin;
use crate::project::{Connection, ServerArgs};
use emberbase::{PortableDocument, PortableUser};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a source holds, read before its items so progress bars have totals (`None`: not
/// known ahead).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    users: Option<u64>,
    documents: Option<u64>,
    files: Option<u64>,
}

/// One thing to import.
pub(crate) enum Item {
    User(PortableUser),
    Document {
        collection: String,
        document: PortableDocument,
    },
    File(SourceFile),
}

/// A file to import: where its bytes are on this machine, and what to keep of it.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    bucket: String,
    path: String,
    content_type: String,
    local: PathBuf,
    owner: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// Where the items come from. `read` hands them to `out` in order (accounts, then documents
/// grouped by collection, then files); `out` fails once nobody takes them any more.
pub(crate) trait Source: Send {
    /// What the source is, for the summary.
    fn describe(&self) -> String;
    fn totals(&mut self) -> Result<Totals, String>;
    fn read(&mut self, out: &mut dyn FnMut(Item) -> Result<(), String>) -> Result<(), String>;
    /// What the source holds that is not imported, and why, for the summary.
    fn left_out(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What `import` reads from: exactly one of these.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct ImportFrom {
    /// A folder written by `emberbase export`.
    #[arg(value_name = "FOLDER")]
    folder: Option<PathBuf>,
    /// A PocketBase data directory (`pb_data`, PocketBase 0.23 or newer, not in use): its
    /// collections, records, files and users (who keep their passwords).
    #[arg(long, value_name = "PB_DATA")]
    pocketbase: Option<PathBuf>,
    /// A Firestore export in the JSON format of `node-firestore-import-export`.
    #[arg(long, value_name = "FILE")]
    firestore: Option<PathBuf>,
}

/// Runs `work` on the admin API of the target, then closes it (stopping the server started
/// for a data directory); failures are printed, with exit code 2 when the target cannot be
/// reached and 1 otherwise.
fn on_target<T>(
    server: &ServerArgs,
    work: impl AsyncFnOnce(&Admin) -> Result<T, String>,
) -> Result<T, ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let connection = Connection::open(server).await.map_err(|e| fail(&e, 2))?;
        let done = work(&connection.admin).await;
        connection.close().await;
        done.map_err(|e| fail(&e, 1))
    })
}

/// `emberbase export`.
pub(crate) fn export(server: &ServerArgs, out: &Path) -> ExitCode {
    if let Err(e) = export::check_target(out) {
        return fail(&e, 2);
    }
    match on_target(server, async |admin| export::export(admin, out).await) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `emberbase import`; `owner_field`: with --pocketbase, the field whose value becomes each
/// record's owner.
pub(crate) fn import(
    server: &ServerArgs,
    from: ImportFrom,
    owner_field: Option<String>,
) -> ExitCode {
    let opened: Result<Box<dyn Source>, String> = match from {
        ImportFrom {
            pocketbase: Some(dir),
            ..
        } => pocketbase::PocketBase::open(&dir, owner_field).map(|s| Box::new(s) as _),
        ImportFrom {
            firestore: Some(file),
            ..
        } => firestore::Firestore::open(&file).map(|s| Box::new(s) as _),
        ImportFrom {
            folder: Some(dir), ..
        } => folder::Folder::open(&dir).map(|s| Box::new(s) as _),
        ImportFrom { .. } => {
            Err("say what to import: a folder, --pocketbase or --firestore".into())
        }
    };
    let source = match opened {
        Ok(source) => source,
        Err(e) => return fail(&e, 2),
    };
    match on_target(server, async |admin| load::load(admin, source).await) {
        Ok(summary) => {
            print!("{summary}");
            if summary.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(code) => code,
    }
}
