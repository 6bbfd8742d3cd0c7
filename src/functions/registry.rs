//! The registry: uploading a module (compile with metering, ABI check, durable module and
//! artifact), configuring, listing and deleting functions, and loading them at start.

use super::error::internal;
use super::records::Armed;
use super::{
    check_name, dispatch, runtime, FunctionConfig, FunctionInfo, FunctionRecord, FunctionVersion,
    Functions, FunctionsError, Language, Loaded, Result,
};
use crate::auth::Principal;
use crate::model::now_rfc3339;
use crate::store::{KvWrite, Space};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads of the stored functions a reload makes before it gives up for now, when local
/// changes keep coming in between.
const RELOAD_ATTEMPTS: usize = 8;

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A module ready to run: its hash, its artifact's key and hash, and the loaded module.
type Prepared = (String, String, String, runtime::Program);

/// The key of a function's version record.
fn version_key(name: &str, version: u32) -> Vec<u8> {
    let mut key = dispatch::function_prefix(name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(internal)
}

pub(super) fn artifact_key(module_sha: &str) -> String {
    let mut h = Sha256::new();
    h.update(module_sha.as_bytes());
    h.update(b"\0");
    h.update(runtime::COMPILE_VERSION.as_bytes());
    // A JavaScript function's artifact is the shipped engine's memory.
    h.update(b"\0");
    h.update(super::js::engine_sha256().as_bytes());
    hex(&h.finalize())
}

/// The modules a single node keeps in its data directory: `(sha256, file)`.
pub(crate) fn stored_modules(data_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let dir = data_dir.join("functions").join("modules");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut modules = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if let Some(sha) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wasm"))
        {
            modules.push((sha.to_string(), path));
        }
    }
    Ok(modules)
}

fn artifact_path_of(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.bin"))
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
    /// missing, was built by another wasmer or compile setting, or does not match its hash. In
    /// a cluster the record is shared but each node compiles its own artifacts, so a node
    /// keeps their hashes beside them (`<key>.sha256`) rather than in the record.
    pub(super) async fn load(
        &self,
        mut record: FunctionRecord,
    ) -> std::result::Result<Loaded, String> {
        let shared = self.inner.store.is_shared();
        let key = artifact_key(&record.info.sha256);
        let path = artifact_path_of(&self.inner.artifacts_dir, &key);
        let sidecar = path.with_extension("sha256");
        let recorded =
            (!shared && key == record.artifact_key).then(|| record.artifact_sha256.clone());
        // Files are read, hashed and written, and artifacts loaded (the first JavaScript one
        // compiles the engine), on the blocking pool: a reload can run in a write's path, on an
        // HTTP worker.
        let (cached_path, cached_sidecar) = (path.clone(), sidecar.clone());
        let runtime = self.inner.runtime.clone();
        let cached = tokio::task::spawn_blocking(move || {
            let expected = match recorded {
                Some(sha) => sha,
                None if shared => std::fs::read_to_string(&cached_sidecar).ok()?,
                None => return None,
            };
            let bytes = std::fs::read(&cached_path).ok()?;
            (hex(&Sha256::digest(&bytes)) == expected.trim()).then(|| runtime.load(&bytes))
        })
        .await
        .map_err(|e| e.to_string())?;
        match cached {
            Some(Ok(module)) => return Ok(Loaded { record, module }),
            Some(Err(e)) => {
                tracing::warn!(function = %record.info.name, error = %e, "the artifact does not load")
            }
            None => {}
        }
        tracing::info!(function = %record.info.name, "compiling the function's artifact");
        let source = self.module_bytes(&record.info.sha256).await?;
        let (runtime, limits) = (self.inner.runtime.clone(), self.limits(&record.info.config));
        let max_table_elements = self.inner.config.max_table_elements;
        let (artifact, artifact_sha256) = tokio::task::spawn_blocking(move || {
            let artifact = runtime.build(&source, limits, max_table_elements)?;
            write_durably(&path, &artifact)
                .map_err(|e| format!("cannot write the artifact: {e}"))?;
            let sha = hex(&Sha256::digest(&artifact));
            if shared {
                write_durably(&sidecar, sha.as_bytes())
                    .map_err(|e| format!("cannot write the artifact's hash: {e}"))?;
            }
            Ok::<_, String>((artifact, sha))
        })
        .await
        .map_err(|e| e.to_string())??;
        let module = self.inner.runtime.load(&artifact)?;
        if shared {
            return Ok(Loaded { record, module });
        }
        record.artifact_key = key;
        record.artifact_sha256 = artifact_sha256;
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

    /// A module's bytes: the local copy, or in a cluster the shared store's (then kept
    /// locally).
    async fn module_bytes(&self, sha: &str) -> std::result::Result<Vec<u8>, String> {
        let path = self.module_path(sha);
        let local = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(local))
            .await
            .map_err(|e| e.to_string())?;
        match read {
            Ok(bytes) => return Ok(bytes),
            Err(e) if !self.inner.store.is_shared() => {
                return Err(format!("cannot read the module: {e}"))
            }
            Err(_) => {}
        }
        let wasm = self
            .inner
            .store
            .kv_get(Space::Modules, sha.as_bytes())
            .await
            .map_err(|e| format!("cannot read the module: {e}"))?
            .ok_or("the module is missing from the shared store")?;
        if hex(&Sha256::digest(&wasm)) != sha {
            return Err("the stored module does not match its hash".into());
        }
        let kept = wasm.clone();
        tokio::task::spawn_blocking(move || write_durably(&path, &kept))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot keep the module: {e}"))?;
        Ok(wasm)
    }

    /// Brings the loaded functions in line with their records, which another node of a
    /// cluster changed: new and changed functions are loaded, deleted ones stop.
    pub(super) async fn reload(&self) {
        for _ in 0..RELOAD_ATTEMPTS {
            let start = *self.generation();
            let records = match self
                .inner
                .store
                .kv_scan(Space::Functions, None, usize::MAX)
                .await
            {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload the functions");
                    return;
                }
            };
            let mut present = std::collections::HashSet::new();
            let mut installs = Vec::new();
            for (_, bytes) in records {
                let Ok(record) = serde_json::from_slice::<FunctionRecord>(&bytes) else {
                    continue;
                };
                let name = record.info.name.clone();
                present.insert(name.clone());
                let loaded = match self.loaded(&name) {
                    Some(current)
                        if current.record.info.sha256 == record.info.sha256
                            && current.record.info.updated_at == record.info.updated_at =>
                    {
                        continue
                    }
                    Some(current) if current.record.info.sha256 == record.info.sha256 => {
                        Ok(Loaded {
                            record,
                            module: current.module.clone(),
                        })
                    }
                    _ => self.load(record).await,
                };
                match loaded {
                    Ok(loaded) => installs.push(loaded),
                    Err(e) => tracing::error!(function = %name, error = %e, "cannot load function"),
                }
            }
            let generation = self.generation();
            if *generation != start {
                // Changed here meanwhile: what was read may predate it.
                continue;
            }
            for loaded in installs {
                self.install(loaded);
            }
            let gone: Vec<String> = match self.inner.loaded.read() {
                Ok(map) => map
                    .keys()
                    .filter(|n| !present.contains(*n))
                    .cloned()
                    .collect(),
                Err(_) => Vec::new(),
            };
            for name in gone {
                self.unload(&name);
            }
            drop(generation);
            return;
        }
        tracing::warn!("functions kept changing while they were reloaded; the next reload follows");
    }

    fn generation(&self) -> std::sync::MutexGuard<'_, u64> {
        self.inner
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change this node made to its loaded functions (after its store write), so
    /// that a reload in flight reads again instead of undoing it.
    fn change_locally<T>(&self, change: impl FnOnce() -> T) -> T {
        let mut generation = self.generation();
        let out = change();
        *generation += 1;
        out
    }

    /// Stops a function on this node: no new invocations, triggers or deliveries.
    fn unload(&self, name: &str) -> Option<Arc<Loaded>> {
        let removed = match self.inner.loaded.write() {
            Ok(mut map) => map.remove(name),
            Err(_) => None,
        };
        self.rebuild_triggers();
        self.inner.dispatch.remove(name);
        if let Ok(mut budgets) = self.inner.log_budgets.lock() {
            budgets.remove(name);
        }
        self.forget_fetch_access(name);
        if let Ok(mut budgets) = self.inner.mail_budgets.lock() {
            budgets.remove(name);
        }
        removed
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
        let all: Vec<(String, Armed)> = match self.inner.loaded.read() {
            Ok(map) => map
                .iter()
                .flat_map(|(name, l)| {
                    l.record
                        .info
                        .config
                        .triggers
                        .iter()
                        .map(move |t| (name.clone(), Armed::new(t.clone())))
                })
                .collect(),
            Err(_) => return,
        };
        if let Ok(mut slot) = self.inner.triggers.write() {
            *slot = Arc::new(all);
        }
    }

    /// Validates and compiles a module against a function's config, and keeps the module and
    /// its artifact (in a cluster, the module also in the shared store). Returns the module's
    /// hash, its artifact's key and hash, and the loaded module.
    async fn prepare_module(&self, config: &FunctionConfig, wasm: Vec<u8>) -> Result<Prepared> {
        let (runtime, limits) = (self.inner.runtime.clone(), self.limits(config));
        let max_table_elements = self.inner.config.max_table_elements;
        let sha = hex(&Sha256::digest(&wasm));
        let (module_path, key) = (self.module_path(&sha), artifact_key(&sha));
        let artifact_path = artifact_path_of(&self.inner.artifacts_dir, &key);
        // In a cluster the module goes to the shared store before its record, as a file's
        // bytes go before its record.
        let shared_copy = self.inner.store.is_shared().then(|| wasm.clone());
        let artifact = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let artifact = runtime
                .build(&wasm, limits, max_table_elements)
                .map_err(FunctionsError::InvalidModule)?;
            write_durably(&module_path, &wasm).map_err(internal)?;
            write_durably(&artifact_path, &artifact).map_err(internal)?;
            Ok(artifact)
        })
        .await
        .map_err(internal)??;
        let artifact_sha256 = hex(&Sha256::digest(&artifact));
        if let Some(wasm) = shared_copy {
            let module = KvWrite::default().put(Space::Modules, sha.as_bytes(), wasm);
            self.inner.store.kv_write(module).await?;
            let sidecar =
                artifact_path_of(&self.inner.artifacts_dir, &key).with_extension("sha256");
            write_durably(&sidecar, artifact_sha256.as_bytes()).map_err(internal)?;
        }
        let module = self.inner.runtime.load(&artifact).map_err(internal)?;
        Ok((sha, key, artifact_sha256, module))
    }

    /// Uploads (or replaces) a function's WebAssembly module as its next version, and activates
    /// it. The config of an existing function is kept; the oldest versions beyond
    /// `functions.versions_kept` are dropped.
    pub async fn upload(&self, who: &Principal, name: &str, wasm: Vec<u8>) -> Result<FunctionInfo> {
        self.upload_source(who, name, wasm, Language::Wasm).await
    }

    /// Uploads (or replaces) a function's JavaScript source (an ES module whose default export
    /// handles each event), as [`upload`](Self::upload) does a module: it is loaded into the
    /// engine, its top-level code run, before this returns.
    pub async fn upload_javascript(
        &self,
        who: &Principal,
        name: &str,
        source: Vec<u8>,
    ) -> Result<FunctionInfo> {
        self.upload_source(who, name, source, Language::JavaScript)
            .await
    }

    /// Uploads a function's source, declared to be in `declared`.
    pub(crate) async fn upload_source(
        &self,
        who: &Principal,
        name: &str,
        wasm: Vec<u8>,
        declared: Language,
    ) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        let max = self.inner.config.max_module_bytes;
        if wasm.len() > max {
            return Err(FunctionsError::TooLarge { max });
        }
        let language = Language::of(&wasm);
        match (declared, language) {
            (Language::Wasm, Language::JavaScript) => {
                let reason = runtime::check_header(&wasm).err().unwrap_or_default();
                return Err(FunctionsError::InvalidModule(format!(
                    "{reason}; JavaScript source is uploaded with `Content-Type: text/javascript`"
                )));
            }
            (Language::JavaScript, Language::Wasm) => {
                return Err(FunctionsError::InvalidModule(
                    "the body is a WebAssembly module, not JavaScript: upload it with \
                     `Content-Type: application/wasm`"
                        .into(),
                ))
            }
            _ => {}
        }
        let previous = self.loaded(name);
        let config = previous
            .as_ref()
            .map(|l| l.record.info.config.clone())
            .unwrap_or_default();
        let size = wasm.len() as u64;
        let (sha, key, artifact_sha256, module) = self.prepare_module(&config, wasm).await?;
        let now = now_rfc3339();
        let version = previous.as_ref().map_or(1, |l| l.record.latest_version + 1);
        let record = FunctionRecord {
            info: FunctionInfo {
                name: name.to_string(),
                sha256: sha.clone(),
                size,
                language,
                version,
                config,
                created_at: previous
                    .as_ref()
                    .map_or_else(|| now.clone(), |l| l.record.info.created_at.clone()),
                updated_at: now.clone(),
            },
            artifact_key: key,
            artifact_sha256,
            latest_version: version,
        };
        let mut write = KvWrite::default();
        if let Some(previous) = &previous {
            // A function stored before versions existed gets its first version recorded.
            let info = &previous.record.info;
            let key = version_key(name, info.version);
            if self
                .inner
                .store
                .kv_get(Space::FunctionVersions, &key)
                .await?
                .is_none()
            {
                let kept = FunctionVersion {
                    version: info.version,
                    sha256: info.sha256.clone(),
                    size: info.size,
                    created_at: info.updated_at.clone(),
                    active: false,
                };
                write = write.put(Space::FunctionVersions, key, to_json(&kept)?);
            }
        }
        let kept = FunctionVersion {
            version,
            sha256: sha,
            size,
            created_at: now,
            active: false,
        };
        write = write.put(
            Space::FunctionVersions,
            version_key(name, version),
            to_json(&kept)?,
        );
        self.save_with(&record, write).await?;
        let info = record.info.clone();
        self.change_locally(|| self.install(Loaded { record, module }));
        self.drop_old_versions(name, version).await?;
        Ok(info)
    }

    /// A function's kept versions, newest first.
    pub async fn versions(&self, who: &Principal, name: &str) -> Result<Vec<FunctionVersion>> {
        Self::require_admin(who)?;
        check_name(name)?;
        let current = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let mut versions: Vec<FunctionVersion> = self
            .stored_versions(name)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        if versions.is_empty() {
            // Stored before versions existed: its one module.
            let info = &current.record.info;
            versions.push(FunctionVersion {
                version: info.version,
                sha256: info.sha256.clone(),
                size: info.size,
                created_at: info.updated_at.clone(),
                active: false,
            });
        }
        for v in &mut versions {
            v.active = v.version == current.record.info.version;
        }
        Ok(versions)
    }

    /// Makes a kept version the active one: later events and calls run its module. The config
    /// stays as it is, and is checked against the module as an upload is.
    pub async fn activate(
        &self,
        who: &Principal,
        name: &str,
        version: u32,
    ) -> Result<FunctionInfo> {
        Self::require_admin(who)?;
        check_name(name)?;
        let current = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let config = current.record.info.config.clone();
        let (kept, (sha, key, artifact_sha256, module)) =
            self.load_version(name, version, &config).await?;
        let mut record = current.record.clone();
        record.info.sha256 = sha;
        record.info.size = kept.size;
        record.info.version = version;
        record.info.updated_at = now_rfc3339();
        record.artifact_key = key;
        record.artifact_sha256 = artifact_sha256;
        self.save(&record).await?;
        let info = record.info.clone();
        self.change_locally(|| self.install(Loaded { record, module }));
        Ok(info)
    }

    /// A function's version records with their keys, newest first.
    async fn stored_versions(&self, name: &str) -> Result<Vec<(Vec<u8>, FunctionVersion)>> {
        let rows = self
            .inner
            .store
            .kv_prefix_last(
                Space::FunctionVersions,
                &dispatch::function_prefix(name),
                usize::MAX,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, bytes)| Some((key, serde_json::from_slice(&bytes).ok()?)))
            .collect())
    }

    /// A kept version of a function with its module, checked against `config` as an upload is.
    pub(super) async fn load_version(
        &self,
        name: &str,
        version: u32,
        config: &FunctionConfig,
    ) -> Result<(FunctionVersion, Prepared)> {
        let kept = self.version(name, version).await?;
        let wasm = self.module_bytes(&kept.sha256).await.map_err(internal)?;
        let prepared = self.prepare_module(config, wasm).await?;
        Ok((kept, prepared))
    }

    /// A kept version of a function.
    pub(super) async fn version(&self, name: &str, version: u32) -> Result<FunctionVersion> {
        let missing = || FunctionsError::NotFound(format!("{name} version {version}"));
        let bytes = match self
            .inner
            .store
            .kv_get(Space::FunctionVersions, &version_key(name, version))
            .await?
        {
            Some(bytes) => bytes,
            None => {
                // Stored before versions existed: only its active module.
                let current = self.loaded(name).ok_or_else(missing)?;
                let info = &current.record.info;
                if info.version != version {
                    return Err(missing());
                }
                return Ok(FunctionVersion {
                    version,
                    sha256: info.sha256.clone(),
                    size: info.size,
                    created_at: info.updated_at.clone(),
                    active: true,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(internal)
    }

    /// Drops a function's oldest versions beyond `functions.versions_kept`, never the `active`
    /// one, and the modules no function refers to any more.
    async fn drop_old_versions(&self, name: &str, active: u32) -> Result<()> {
        let stored = self.stored_versions(name).await?;
        let mut dropped = Vec::new();
        let mut write = KvWrite::default();
        for (key, old) in stored.into_iter().skip(self.inner.config.versions_kept) {
            if old.version != active {
                write = write.delete(Space::FunctionVersions, key);
                dropped.push(old.sha256);
            }
        }
        if dropped.is_empty() {
            return Ok(());
        }
        self.inner.store.kv_write(write).await?;
        self.drop_unused_modules(dropped).await
    }

    /// Removes the modules (and artifacts) among `shas` that no function's active module or
    /// kept version uses.
    async fn drop_unused_modules(&self, shas: Vec<String>) -> Result<()> {
        let mut used: std::collections::HashSet<String> = self
            .list(&Principal::Service)?
            .into_iter()
            .map(|f| f.sha256)
            .collect();
        for (_, bytes) in self
            .inner
            .store
            .kv_scan(Space::FunctionVersions, None, usize::MAX)
            .await?
        {
            if let Ok(v) = serde_json::from_slice::<FunctionVersion>(&bytes) {
                used.insert(v.sha256);
            }
        }
        for sha in shas.into_iter().filter(|sha| !used.contains(sha)) {
            if self.inner.store.is_shared() {
                let module = KvWrite::default().delete(Space::Modules, sha.as_bytes());
                self.inner.store.kv_write(module).await?;
            }
            let module = self.module_path(&sha);
            let artifact = artifact_path_of(&self.inner.artifacts_dir, &artifact_key(&sha));
            // Off the async workers: this runs in an upload's or a delete's request. While a
            // backup reads, the module file waits for it.
            let work = async move {
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_file(module);
                    let _ = std::fs::remove_file(artifact.with_extension("sha256"));
                    let _ = std::fs::remove_file(artifact);
                })
                .await;
            };
            self.inner.store.delete_outside(Box::pin(work)).await;
        }
        Ok(())
    }

    pub(super) async fn save(&self, record: &FunctionRecord) -> Result<()> {
        self.save_with(record, KvWrite::default()).await
    }

    /// Saves a function's record with the rest of a write.
    async fn save_with(&self, record: &FunctionRecord, write: KvWrite) -> Result<()> {
        let write = write.put(
            Space::Functions,
            record.info.name.as_bytes(),
            to_json(record)?,
        );
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
        self.change_locally(|| {
            self.install(Loaded {
                record,
                module: current.module.clone(),
            })
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

    /// The active version's code (admins only): the module, or the JavaScript source, as
    /// uploaded.
    pub async fn source(&self, who: &Principal, name: &str) -> Result<(FunctionInfo, Vec<u8>)> {
        let info = self.get(who, name)?;
        let bytes = self.module_bytes(&info.sha256).await.map_err(internal)?;
        Ok((info, bytes))
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

    /// Deletes a function, its pending events, its invocation log and its secrets.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        Self::require_admin(who)?;
        check_name(name)?;
        if self.loaded(name).is_none() {
            return Err(FunctionsError::NotFound(name.into()));
        }
        let mut write = KvWrite::default().delete(Space::Functions, name.as_bytes());
        let prefix = dispatch::function_prefix(name);
        let mut modules = Vec::new();
        for space in [
            Space::Events,
            Space::Invocations,
            Space::Schedules,
            Space::FunctionVersions,
            Space::FunctionSecrets,
        ] {
            for (key, bytes) in self
                .inner
                .store
                .kv_prefix(space, &prefix, usize::MAX)
                .await?
            {
                if space == Space::FunctionVersions {
                    if let Ok(v) = serde_json::from_slice::<FunctionVersion>(&bytes) {
                        modules.push(v.sha256);
                    }
                }
                write = write.delete(space, key);
            }
        }
        write = write.delete(Space::Schedules, name.as_bytes());
        self.inner.store.kv_write(write).await?;
        let Some(removed) = self.change_locally(|| self.unload(name)) else {
            // Deleted meanwhile by another call.
            return Ok(());
        };
        modules.push(removed.record.info.sha256.clone());
        self.drop_unused_modules(modules).await?;
        Ok(())
    }
}
