//! `emberbase migrate-storage`: a single node's data directory copied into a cluster's
//! PostgreSQL database, with a progress bar.

use crate::common::{fail, runtime};
use std::path::Path;
use std::process::ExitCode;

/// Copies the sled data directory of `from` (`sled:DIR`) into the database at `to`.
pub(crate) fn migrate_storage(from: &str, to: &str) -> ExitCode {
    let Some(dir) = from.strip_prefix("sled:") else {
        return fail("--from must be sled:<data directory>", 2);
    };
    if !to.starts_with("postgres://") && !to.starts_with("postgresql://") {
        return fail("--to must be a postgres:// URL", 2);
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} copying [{bar:40}] {pos}/{len} keys ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = runtime.block_on(async {
        let options = emberbase::engine::postgres::PostgresOptions::new(to);
        let engine = emberbase::engine::postgres::PostgresEngine::open(options)
            .await
            .map_err(|e| format!("cannot open the target database: {e}"))?;
        let migrated = emberbase::migrate_storage(Path::new(dir), &engine, &progress)
            .await
            .map_err(|e| e.to_string());
        let _ = emberbase::engine::Engine::close(&engine).await;
        migrated
    });
    bar.finish_and_clear();
    match result {
        Ok(m) => {
            println!(
                "copied {} keys, {} secrets and {} function modules from {dir}",
                m.keys, m.secrets, m.modules
            );
            println!(
                "file bytes stay in {dir}/files/blobs: copy them to the bucket's blobs/ prefix"
            );
            let key = Path::new(&dir).join("functions/secrets_key");
            if key.exists() {
                println!(
                    "functions' secrets are sealed with {}: set functions.secrets_key (EMBERBASE_FUNCTIONS__SECRETS_KEY) to its contents on every node",
                    key.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}
