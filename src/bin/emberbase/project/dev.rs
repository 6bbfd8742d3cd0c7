//! `emberbase dev`: the project applied to a development server on start and again whenever a
//! file of the project changes (function sources rebuilt and uploaded), seed data loaded into
//! a fresh data directory, and the dev clock.

use super::admin::Admin;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the project's files are looked at.
const POLL: Duration = Duration::from_millis(400);

/// The files of a project as last looked at: each one's size and modification time.
pub(crate) type Fingerprint = BTreeMap<PathBuf, (u64, SystemTime)>;

/// Folders of a project that are never its sources.
const IGNORED: [&str; 3] = ["node_modules", "target", "emberbase_data"];

/// Seed data: documents by collection and id, and accounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    #[serde(default)]
    collections: BTreeMap<String, BTreeMap<String, Value>>,
    #[serde(default)]
    users: Vec<SeedUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedUser {
    email: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

/// The development loop of one server.
pub(crate) struct Dev {
    admin: Admin,
    file: PathBuf,
    /// The server's data directory, left out of what is watched.
    data_dir: PathBuf,
}

impl Dev {
    pub(crate) fn new(server: &emberbase::Server, file: PathBuf) -> Dev {
        Dev {
            admin: Admin::new(
                &format!("http://{}", server.local_addr()),
                server.service_key(),
            ),
            file,
            data_dir: std::fs::canonicalize(server.data_dir())
                .unwrap_or_else(|_| server.data_dir().to_path_buf()),
        }
    }

    /// Applies the project (destructive changes too: the file is the truth here), printing
    /// what changed; a failure is printed and waits for the next change. Returns the project's
    /// files as they were once its builds had run: what the builds wrote is not a change for
    /// [`Dev::watch`], and an edit made while the plan was applied still is.
    pub(crate) async fn apply(&self) -> Fingerprint {
        let file = self.file.clone();
        let (dir, data_dir) = (super::file::folder_of(&self.file), self.data_dir.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let project = super::load_and_build(&file);
            (project, fingerprint(&dir, &data_dir))
        })
        .await;
        let (project, files) = match loaded {
            Ok((Ok(project), files)) => (project, files),
            Ok((Err(e), files)) => {
                eprintln!("emberbase dev: {e}");
                return files;
            }
            Err(e) => {
                eprintln!("emberbase dev: {e}");
                return self.files();
            }
        };
        let plan = match self.admin.state().await {
            Ok(state) => super::plan::make(&project, &state, &self.admin).await,
            Err(e) => Err(e.to_string()),
        };
        match plan {
            Ok(plan) if plan.is_empty() => {
                println!("emberbase dev: the server matches the project")
            }
            Ok(plan) => {
                let _ = super::apply_plan(&plan, &self.admin, true).await;
            }
            Err(e) => eprintln!("emberbase dev: {e}"),
        }
        files
    }

    fn files(&self) -> Fingerprint {
        fingerprint(&super::file::folder_of(&self.file), &self.data_dir)
    }

    /// Loads seed data: each document with `PUT` (so a second load replaces, never
    /// duplicates), each account as a signup or an admin.
    pub(crate) async fn seed(&self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let seed: Seed =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut documents = 0;
        for (collection, docs) in &seed.collections {
            for (id, data) in docs {
                self.admin
                    .put(&format!("/v1/collections/{collection}/docs/{id}"), data)
                    .await
                    .map_err(|e| e.to_string())?;
                documents += 1;
            }
        }
        for user in &seed.users {
            let body = serde_json::json!({"email": user.email, "password": user.password});
            let path = if user.admin {
                "/v1/admin/admins"
            } else {
                "/v1/auth/signup"
            };
            self.admin
                .post(path, &body)
                .await
                .map_err(|e| e.to_string())?;
        }
        println!(
            "emberbase dev: seeded {documents} documents and {} accounts from {}",
            seed.users.len(),
            path.display()
        );
        Ok(())
    }

    /// Applies the project each time a file under its folder differs from `seen` (what the
    /// last [`Dev::apply`] returned). Changes a build makes are taken in after it, so a
    /// build's output does not start another.
    pub(crate) async fn watch(self, mut seen: Fingerprint) {
        loop {
            tokio::time::sleep(POLL).await;
            if self.files() == seen {
                continue;
            }
            println!("emberbase dev: the project changed; applying it");
            seen = self.apply().await;
        }
    }
}

/// Every file under `dir` (but hidden ones, logs, ignored folders and the data directory)
/// with its size and modification time.
fn fingerprint(dir: &Path, data_dir: &Path) -> Fingerprint {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.ends_with(".log") || IGNORED.contains(&name.as_ref()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if std::fs::canonicalize(&path).is_ok_and(|p| p == data_dir) {
                    continue;
                }
                pending.push(path);
            } else {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.insert(path, (meta.len(), modified));
            }
        }
    }
    files
}
