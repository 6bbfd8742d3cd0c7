//! `emberbase backup --url` (a backup made by a running server, then downloaded) and
//! `emberbase restore` (an archive into a data directory or a cluster).

use crate::common::{bytes_bar, fail, install_tls, load_config, runtime, service_key};
use crate::project::admin::Admin;
use emberbase::config::Overrides;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const BACKUPS: &str = "/v1/admin/backups";

/// `backup --url`: starts a backup on the server, waits for it, downloads it to `out` (or a
/// file named like the backup).
pub(crate) fn backup(url: &str, out: Option<PathBuf>) -> ExitCode {
    let key = match service_key() {
        Ok(key) => key,
        Err(e) => return fail(&e, 2),
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    install_tls();
    let admin = Admin::new(url, &key);
    let result = runtime.block_on(async {
        let (name, size) = made(&admin).await?;
        let path = out.unwrap_or_else(|| PathBuf::from(&name));
        let size = download(&admin, &name, size, &path).await?;
        Ok::<_, String>((name, path, size))
    });
    match result {
        Ok((name, path, size)) => {
            println!("backup {name} saved to {} ({size} bytes)", path.display());
            println!(
                "restore it with: emberbase restore {} --data-dir DIR",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}

/// Starts a backup and waits until the server has written it; its name and size. One backup
/// runs at a time: when another is running (a scheduled one, say), it waits for that first.
async fn made(admin: &Admin) -> Result<(String, u64), String> {
    // Cleared however this ends, so an error is not printed after a stale frame.
    let spinner =
        indicatif::ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndClear);
    let name = loop {
        let refusal = match admin.post(BACKUPS, &serde_json::json!({})).await {
            Ok(started) => break started["name"].as_str().unwrap_or_default().to_string(),
            Err(e) => e,
        };
        let Some(running) = refusal
            .refused_as("conflict")
            .and_then(|error| error["details"]["running"].as_str())
        else {
            return Err(refusal.message);
        };
        spinner.suspend(|| {
            eprintln!("backup {running} is running on the server; waiting for it to finish first")
        });
        settled(admin, running, &spinner).await?;
    };
    spinner.set_message(format!("writing {name} on the server"));
    let item = settled(admin, &name, &spinner).await?;
    spinner.finish_and_clear();
    match item {
        Some(item) if item["state"] == "ready" => Ok((name, item["size"].as_u64().unwrap_or(0))),
        Some(item) => {
            let why = item["error"].as_str().unwrap_or("?");
            Err(format!("backup {name} failed: {why}"))
        }
        None => Err(format!("backup {name} is no longer listed")),
    }
}

/// Waits until backup `name` no longer runs; its entry in the list then (`None`: not listed).
async fn settled(
    admin: &Admin,
    name: &str,
    spinner: &indicatif::ProgressBar,
) -> Result<Option<Value>, String> {
    loop {
        spinner.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut list: Value = admin.get(BACKUPS).await.map_err(|e| e.to_string())?;
        let item = list["items"]
            .as_array_mut()
            .and_then(|items| items.iter_mut().find(|i| i["name"] == name))
            .map(Value::take);
        if item.as_ref().is_none_or(|i| i["state"] != "running") {
            return Ok(item);
        }
    }
}

/// Downloads backup `name` (`size` bytes) to `path`, through a file beside it that is renamed
/// once it is all on disk (and removed if it is not); the bytes written.
async fn download(admin: &Admin, name: &str, size: u64, path: &Path) -> Result<u64, String> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let bar = bytes_bar("downloading");
    bar.set_length(size);
    let downloaded = admin
        .download(&format!("/v1/admin/backups/{name}"), &mut |piece| {
            bar.inc(piece.len() as u64);
            file.write_all(piece)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|()| {
            file.sync_all()
                .and_then(|()| std::fs::rename(&partial, path))
                .map_err(|e| format!("cannot save {}: {e}", path.display()))
        });
    bar.finish_and_clear();
    if downloaded.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    downloaded.map(|()| bar.position())
}

/// Where `restore` puts an archive.
pub(crate) enum RestoreInto {
    /// A data directory, and whether one that holds data may be moved aside.
    DataDir(PathBuf, bool),
    /// The cluster of a configuration (file, or the default one).
    Cluster(Option<PathBuf>),
}

/// `restore`: an archive into a data directory or a cluster.
pub(crate) fn restore(archive: &Path, into: RestoreInto) -> ExitCode {
    let bar = bytes_bar("checking");
    let phase = std::sync::Mutex::new("checking");
    let progress = |p: emberbase::RestoreProgress| {
        let mut shown = phase.lock().unwrap_or_else(|e| e.into_inner());
        if *shown != p.phase {
            *shown = p.phase;
            bar.set_style(bytes_bar(p.phase).style());
        }
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let (result, target) = match into {
        RestoreInto::DataDir(dir, force) => (
            emberbase::restore(archive, &dir, force, &progress),
            dir.display().to_string(),
        ),
        RestoreInto::Cluster(config) => {
            let config = match load_config(config.as_deref(), &Overrides::default()) {
                Ok((config, _)) => config,
                Err(code) => return code,
            };
            (
                emberbase::restore_cluster(archive, &config, &progress),
                "the cluster's database".to_string(),
            )
        }
    };
    bar.finish_and_clear();
    match result {
        Ok(r) => {
            println!(
                "restored {} (taken {}) into {target}: {} keys, {} files, {} function modules, {} server keys",
                r.name, r.created_at, r.keys, r.files, r.modules, r.secrets
            );
            if let Some(aside) = r.replaced {
                println!(
                    "the data directory that was there is now {}",
                    aside.display()
                );
            }
            for note in r.notes {
                println!("note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(
            e @ (emberbase::RestoreError::NotEmpty(_)
            | emberbase::RestoreError::InUse(_)
            | emberbase::RestoreError::Target(_)),
        ) => fail(&e.to_string(), 2),
        Err(e) => fail(&e.to_string(), 1),
    }
}
