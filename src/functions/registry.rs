//! The registry: uploading a module (compile with metering, ABI check, durable module and
//! artifact), configuring, listing and deleting functions, and loading them at start.

use super::error::internal;
use super::{
    check_name, dispatch, runtime, FunctionConfig, FunctionInfo, FunctionRecord, Functions,
    FunctionsError, Loaded, Result, Trigger,
};
use crate::auth::Principal;
use crate::model::now_rfc3339;
use crate::store::{KvWrite, Space};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn artifact_key(module_sha: &str) -> String {
    let mut h = Sha256::new();
    h.update(module_sha.as_bytes());
    h.update(b"\0");
    h.update(runtime::COMPILE_VERSION.as_bytes());
    hex(&h.finalize())
}

pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Functions {
    /// Loads a function's artifact, or recompiles it from the module when the artifact is
    /// missing, was built by another wasmer or compile setting, or does not match its hash.
    pub(super) fn load(&self, mut record: FunctionRecord) -> std::result::Result<Loaded, String> {
        let key = artifact_key(&record.info.sha256);
        let path = self.inner.artifacts_dir.join(format!("{key}.bin"));
        if key == record.artifact_key {
            if let Ok(bytes) = std::fs::read(&path) {
                if hex(&Sha256::digest(&bytes)) == record.artifact_sha256 {
                    match self.inner.runtime.load(&bytes) {
                        Ok(module) => return Ok(Loaded { record, module }),
                        Err(e) => {
                            tracing::warn!(function = %record.info.name, error = %e, "the artifact does not load")
                        }
                    }
                }
            }
        }
        tracing::info!(function = %record.info.name, "recompiling the function's artifact");
        let wasm = std::fs::read(self.module_path(&record.info.sha256))
            .map_err(|e| format!("cannot read the module: {e}"))?;
        let (_, artifact) = runtime::compile(&wasm)?;
        write_durably(&path, &artifact).map_err(|e| format!("cannot write the artifact: {e}"))?;
        record.artifact_key = key;
        record.artifact_sha256 = hex(&Sha256::digest(&artifact));
        let module = self.inner.runtime.load(&artifact)?;
        let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let (store, name) = (self.inner.store.clone(), record.info.name.clone());
        // The record is rewritten in the background: the artifact is valid either way.
        self.inner.tokio.spawn(async move {
            let write = KvWrite::default().put(Space::Functions, name.as_bytes(), bytes);
            if let Err(e) = store.kv_write(write).await {
                tracing::warn!(function = %name, error = %e, "cannot record the new artifact");
            }
        });
        Ok(Loaded { record, module })
    }

    pub(super) fn module_path(&self, sha: &str) -> PathBuf {
        self.inner.modules_dir.join(format!("{sha}.wasm"))
    }

    /// Makes a loaded function current: new invocations use it, triggers follow its config,
    /// and its dispatcher runs.
    pub(super) fn install(&self, loaded: Loaded) {
        let name = loaded.record.info.name.clone();
        if let Ok(mut map) = self.inner.loaded.write() {
            map.insert(name.clone(), Arc::new(loaded));
        }
        self.rebuild_triggers();
        dispatch::ensure(self, &name);
    }

    pub(super) fn rebuild_triggers(&self) {
        let all: Vec<(String, Trigger)> = match self.inner.loaded.read() {
            Ok(map) => map
                .iter()
                .flat_map(|(name, l)| {
                    l.record
                        .info
                        .config
                        .triggers
                        .iter()
                        .map(move |t| (name.clone(), t.clone()))
                })
                .collect(),
            Err(_) => return,
        };
        if let Ok(mut slot) = self.inner.triggers.write() {
            *slot = Arc::new(all);
        }
    }

    /// Uploads (or replaces) a function's module. The config of an existing function is kept.
    pub async fn upload(&self, who: &Principal, name: &str, wasm: Vec<u8>) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        let max = self.inner.config.max_module_bytes;
        if wasm.len() > max {
            return Err(FunctionsError::TooLarge { max });
        }
        let previous = self.loaded(name);
        let config = previous
            .as_ref()
            .map(|l| l.record.info.config.clone())
            .unwrap_or_default();
        let memory = self.limits(&config).memory_bytes;
        let max_table_elements = self.inner.config.max_table_elements;
        let sha = hex(&Sha256::digest(&wasm));
        let (module_path, key) = (self.module_path(&sha), artifact_key(&sha));
        let artifact_path = self.inner.artifacts_dir.join(format!("{key}.bin"));
        let size = wasm.len() as u64;
        let artifact = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let (module, artifact) =
                runtime::compile(&wasm).map_err(FunctionsError::InvalidModule)?;
            runtime::check_abi(&module, memory, max_table_elements)
                .map_err(FunctionsError::InvalidModule)?;
            write_durably(&module_path, &wasm).map_err(internal)?;
            write_durably(&artifact_path, &artifact).map_err(internal)?;
            Ok(artifact)
        })
        .await
        .map_err(internal)??;
        let module = self.inner.runtime.load(&artifact).map_err(internal)?;
        let now = now_rfc3339();
        let record = FunctionRecord {
            info: FunctionInfo {
                name: name.to_string(),
                sha256: sha,
                size,
                config,
                created_at: previous
                    .as_ref()
                    .map_or_else(|| now.clone(), |l| l.record.info.created_at.clone()),
                updated_at: now,
            },
            artifact_key: key,
            artifact_sha256: hex(&Sha256::digest(&artifact)),
        };
        self.save(&record).await?;
        let info = record.info.clone();
        self.install(Loaded { record, module });
        Ok(info)
    }

    pub(super) async fn save(&self, record: &FunctionRecord) -> Result<()> {
        let bytes = serde_json::to_vec(record).map_err(internal)?;
        let write = KvWrite::default().put(Space::Functions, record.info.name.as_bytes(), bytes);
        Ok(self.inner.store.kv_write(write).await?)
    }

    /// Sets a function's triggers and limits.
    pub async fn configure(
        &self,
        who: &Principal,
        name: &str,
        config: FunctionConfig,
    ) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        self.check_config(&config)?;
        let current = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let mut record = current.record.clone();
        record.info.config = config;
        record.info.updated_at = now_rfc3339();
        self.save(&record).await?;
        let info = record.info.clone();
        self.install(Loaded {
            record,
            module: current.module.clone(),
        });
        Ok(info)
    }

    pub fn get(&self, who: &Principal, name: &str) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        self.loaded(name)
            .map(|l| l.record.info.clone())
            .ok_or_else(|| FunctionsError::NotFound(name.into()))
    }

    pub fn list(&self, who: &Principal) -> Result<Vec<FunctionInfo>> {
        Self::require_admin(who)?;
        let mut items: Vec<FunctionInfo> = match self.inner.loaded.read() {
            Ok(map) => map.values().map(|l| l.record.info.clone()).collect(),
            Err(_) => Vec::new(),
        };
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(items)
    }

    /// Deletes a function, its pending events and its invocation log.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        Self::require_admin(who)?;
        check_name(name)?;
        let removed = match self.inner.loaded.write() {
            Ok(mut map) => map.remove(name),
            Err(_) => None,
        };
        let Some(removed) = removed else {
            return Err(FunctionsError::NotFound(name.into()));
        };
        self.rebuild_triggers();
        self.inner.dispatch.remove(name);
        if let Ok(mut budgets) = self.inner.log_budgets.lock() {
            budgets.remove(name);
        }
        let mut write = KvWrite::default().delete(Space::Functions, name.as_bytes());
        let prefix = dispatch::function_prefix(name);
        for space in [Space::Events, Space::Invocations, Space::Schedules] {
            for (key, _) in self
                .inner
                .store
                .kv_prefix(space, &prefix, usize::MAX)
                .await?
            {
                write = write.delete(space, key);
            }
        }
        write = write.delete(Space::Schedules, name.as_bytes());
        self.inner.store.kv_write(write).await?;
        let still_used = self
            .list(&Principal::Service)?
            .iter()
            .any(|f| f.sha256 == removed.record.info.sha256);
        if !still_used {
            let _ = std::fs::remove_file(self.module_path(&removed.record.info.sha256));
            let _ = std::fs::remove_file(
                self.inner
                    .artifacts_dir
                    .join(format!("{}.bin", removed.record.artifact_key)),
            );
        }
        Ok(())
    }
}
