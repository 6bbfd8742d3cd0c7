//! Starting and stopping a server: the composition root that opens the store, builds the
//! services and runs the HTTP layer on a listener it is given or binds.

use crate::api::{self, AppState, RouteHook, Services};
use crate::auth::password::PasswordHasherPool;
use crate::auth::tokens::TokenIssuer;
use crate::auth::{self, Accounts, Authenticator};
use crate::backup::Backups;
use crate::changes::Changes;
use crate::config::Config;
use crate::docs::Documents;
use crate::engine::postgres::{PostgresEngine, PostgresOptions};
use crate::engine::Engine;
use crate::files::Files;
use crate::functions::{self, Functions};
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::realtime::Realtime;
use crate::secrets::Secrets;
use crate::store::{Store, StoreOptions};
use crate::trace::Tracer;
use crate::webhooks::Webhooks;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a server could not start (or an admin could not be created on a data directory).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {source}")]
    Store {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database of `store.url` (which is not repeated: it may hold a password).
    #[error("cannot open the store at store.url: {source}")]
    Database {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Configures a server before it starts.
pub struct ServerBuilder {
    config: Config,
    listener: Option<TcpListener>,
    routes: Option<RouteHook>,
    engine: Option<Arc<dyn Engine>>,
    dev_clock: bool,
}

impl ServerBuilder {
    pub fn new(config: Config) -> Self {
        ServerBuilder {
            config,
            listener: None,
            routes: None,
            engine: None,
            dev_clock: false,
        }
    }

    /// Serves `POST /v1/admin/dev/clock`, which moves the clock of schedules and of `now()` in
    /// rules forward (process-wide), for `emberbase dev`. Never for a server that serves users.
    pub fn dev_clock(mut self, on: bool) -> Self {
        self.dev_clock = on;
        self
    }

    /// Stores everything in this storage engine instead of the embedded sled database in the
    /// data directory (which still holds keys and file blobs).
    pub fn engine(mut self, engine: Arc<dyn Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Where the database, keys and files live.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.server.data_dir = dir.into();
        self
    }

    /// `HOST:PORT` to listen on (port 0 picks a free one).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.config.server.bind = addr.into();
        self
    }

    /// Serve on a listener the caller already bound.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Adds routes of the embedding program's own, served beside the API.
    pub fn routes(
        mut self,
        hook: impl Fn(&mut actix_web::web::ServiceConfig) + Send + Sync + 'static,
    ) -> Self {
        self.routes = Some(Arc::new(hook));
        self
    }

    /// Creates an admin, or promotes an existing user with that email and sets its password,
    /// on a data directory no server holds open (`emberbase admin create`). Returns the user
    /// and whether it was created.
    pub async fn create_admin(
        self,
        email: &str,
        password: String,
    ) -> Result<(crate::auth::User, bool), StartError> {
        let config = self.config;
        config.validate()?;
        let (data_dir, store, _) = open_data_dir(&config, self.engine).await?;
        let mailer = Mailer::new(store.clone(), &config.mail).map_err(StartError::Other)?;
        let accounts = open_accounts(&store, &config, &data_dir, mailer).await?;
        let result = accounts
            .upsert_admin(email, password)
            .await
            .map_err(|e| StartError::Other(e.to_string()));
        store.close().await;
        result
    }

    /// Runs a function once on `event` against the data directory (or the given engine), which
    /// no running server may hold open: `module`, checked but not stored, or the deployed
    /// function `name`'s active module. Its host calls read and write the data as a delivery's
    /// would; the events and webhook messages its writes queue stay queued for the server.
    /// Nothing is added to the function's log.
    pub async fn invoke_function(
        self,
        name: &str,
        module: Option<Vec<u8>>,
        event: serde_json::Value,
    ) -> Result<crate::functions::LocalRun, StartError> {
        let config = self.config;
        config.validate()?;
        let (data_dir, store, metrics) = open_data_dir(&config, self.engine).await?;
        let docs = Documents::new(store.clone(), config.limits.clone(), &config.rules)
            .map_err(|e| StartError::Other(e.to_string()))?;
        let webhooks = Webhooks::start(
            store.clone(),
            &config.webhooks,
            &config.outbound,
            metrics.clone(),
            Tracer::ids_only(),
            false,
        )
        .await
        .map_err(StartError::Other)?;
        let services = functions::Services {
            store: store.clone(),
            docs,
            metrics,
            tracer: Tracer::ids_only(),
            mailer: Mailer::new(store.clone(), &config.mail).map_err(StartError::Other)?,
        };
        let functions = Functions::start(&data_dir, services, &config.functions, false)
            .await
            .map_err(StartError::Other)?;
        let result = functions
            .invoke_once(name, module, event)
            .await
            .map_err(|e| StartError::Other(e.to_string()));
        webhooks.stop();
        let _ = tokio::task::spawn_blocking(move || functions.stop()).await;
        store.close().await;
        result
    }

    /// Binds the HTTP listener (unless one was given), opens the data directory (or the given
    /// engine) and starts the services. The server runs until [`Server::shutdown`]. Must be
    /// called inside a tokio runtime.
    pub async fn start(self) -> Result<Server, StartError> {
        let config = self.config;
        config.validate()?;
        // Sign-in providers are checked by the account service, which knows their presets
        // (the config module knows no domain).
        for (name, provider) in &config.auth.providers {
            crate::auth::oauth::Provider::resolve(name, provider, &config.auth).map_err(|e| {
                crate::config::ConfigError::Invalid(format!("auth.providers.{name}: {e}"))
            })?;
        }
        // The port first: a server that cannot listen leaves no data directory or keys behind.
        let listener = match self.listener {
            Some(l) => l,
            None => TcpListener::bind(&config.server.bind).map_err(|source| StartError::Bind {
                addr: config.server.bind.clone(),
                source,
            })?,
        };
        let (data_dir, store, metrics) = open_data_dir(&config, self.engine).await?;

        let secrets = Secrets::new(data_dir.clone(), &store);
        let (service_key, key_source) = if config.auth.service_key.is_empty() {
            let (key, place) = auth::load_or_create_service_key(&secrets, &data_dir)
                .await
                .map_err(|source| StartError::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
            (key, Some(place))
        } else {
            (config.auth.service_key.clone(), None)
        };
        let docs = Documents::new(store.clone(), config.limits.clone(), &config.rules)
            .map_err(|e| StartError::Other(e.to_string()))?;
        let (files, swept) = Files::start(&data_dir, &secrets, store.clone(), &config.files)
            .await
            .map_err(StartError::Other)?;
        if swept.temp_files + swept.orphan_blobs > 0 {
            tracing::info!(
                temp_files = swept.temp_files,
                orphan_blobs = swept.orphan_blobs,
                "removed what an interrupted upload or delete left behind"
            );
        }
        let backups = Backups::start(
            &data_dir,
            store.clone(),
            files.clone(),
            &config.backups,
            metrics.clone(),
        )
        .map_err(StartError::Other)?;
        let tracer = Tracer::start(&config.telemetry, metrics.trace_spans.clone())
            .map_err(StartError::Other)?;
        // Before functions, whose first deliveries may write: every change queues its messages.
        let webhooks = Webhooks::start(
            store.clone(),
            &config.webhooks,
            &config.outbound,
            metrics.clone(),
            tracer.clone(),
            true,
        )
        .await
        .map_err(StartError::Other)?;
        let mailer = Mailer::new(store.clone(), &config.mail).map_err(StartError::Other)?;
        let services = functions::Services {
            store: store.clone(),
            docs: docs.clone(),
            metrics: metrics.clone(),
            tracer: tracer.clone(),
            mailer: mailer.clone(),
        };
        let functions = Functions::start(&data_dir, services, &config.functions, true)
            .await
            .map_err(StartError::Other)?;
        if let Err(e) = mailer.start_delivery(ulid::Ulid::new().to_string()).await {
            tracing::warn!(error = %e, "cannot read the mail outbox");
        }
        let realtime = Realtime::start(docs.clone(), &config.realtime, metrics.clone())
            .map_err(|e| StartError::Other(e.to_string()))?;
        let accounts = Arc::new(open_accounts(&store, &config, &data_dir, mailer.clone()).await?);
        tokio::spawn(prune_accounts(
            Arc::downgrade(&accounts),
            Duration::from_secs(config.auth.prune_interval_secs),
            config.mail.outbox_kept,
        ));
        if store.is_shared() {
            tokio::spawn(follow_configuration(
                store.config_epoch(),
                Arc::downgrade(&accounts),
            ));
        }
        if !config.admin.email.is_empty() {
            bootstrap_admin(&accounts, &config.admin.email, &config.admin.password).await?;
        }

        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.bind.clone(),
            source,
        })?;
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let shutdown_timeout = config.server.shutdown_timeout_secs;
        let config = Arc::new(config);
        let mut state = AppState::new(
            Services {
                docs: docs.clone(),
                files: files.clone(),
                functions: functions.clone(),
                webhooks: webhooks.clone(),
                realtime: realtime.clone(),
                backups: backups.clone(),
                auth: Arc::new(Authenticator::new(service_key.clone(), accounts.clone())),
            },
            metrics,
            tracer.clone(),
            config.clone(),
        );
        state.dev_clock = self.dev_clock;
        let state = actix_web::web::Data::new(state);
        let hook = self.routes;
        let http = actix_web::HttpServer::new(move || api::app(state.clone(), hook.clone()))
            .workers(workers)
            // Streamed bodies go out as separate writes after the headers; with Nagle's
            // algorithm each waits for the client's delayed ACK (~40 ms on a keep-alive
            // connection).
            .tcp_nodelay(true)
            .shutdown_timeout(shutdown_timeout)
            .disable_signals()
            .listen(listener)
            .map_err(|source| StartError::Bind {
                addr: addr.to_string(),
                source,
            })?
            .run();
        let handle = http.handle();
        let task = tokio::spawn(http);

        tracing::info!(address = %addr, "listening on http://{addr}");
        tracing::info!(path = %data_dir.display(), "data directory");
        tracing::info!(backend = store.backend(), "storage engine");
        tracing::info!(at = %files.blob_location(), "file bytes");
        tracing::info!(at = %backups.location(), schedule = %config.backups.schedule, "backups");
        match &key_source {
            Some(place) => tracing::info!(at = %place, "service key (owner-only)"),
            None => tracing::info!("service key from the configuration"),
        }
        log_default_rules(&docs, &config.rules).await;
        let changes = Changes::new(store.clone());
        Ok(Server {
            addr,
            data_dir,
            service_key,
            http: handle,
            task,
            store,
            docs,
            files,
            functions,
            webhooks,
            realtime,
            accounts,
            changes,
            backups,
            mailer,
            tracer,
        })
    }
}

/// Removes account records that can no longer be used, every `every`, until the accounts are
/// dropped.
async fn prune_accounts(accounts: std::sync::Weak<Accounts>, every: Duration, outbox_kept: usize) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(accounts) = accounts.upgrade() else {
            return;
        };
        match accounts.prune(outbox_kept).await {
            Ok(pruned) if pruned.total() > 0 => tracing::info!(
                families = pruned.families,
                refresh_tokens = pruned.refresh_tokens,
                email_tokens = pruned.email_tokens,
                mails = pruned.mails,
                throttle_windows = pruned.throttle_windows,
                "removed ended logins, expired tokens, old mail and old throttling windows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune account records"),
        }
    }
}

/// Reloads what the services cache of the shared configuration each time another node of the
/// cluster changes it, until the server stops.
async fn follow_configuration(
    mut epoch: tokio::sync::watch::Receiver<u64>,
    accounts: std::sync::Weak<Accounts>,
) {
    while epoch.changed().await.is_ok() {
        let Some(accounts) = accounts.upgrade() else {
            return;
        };
        if let Err(e) = accounts.reload_keys().await {
            tracing::warn!(error = %e, "cannot reload the token signing keys");
        }
    }
}

/// Says which collections holding documents have no rules of their own, and so run on the
/// configured defaults (private unless the config widens them).
async fn log_default_rules(docs: &Documents, defaults: &crate::model::Rules) {
    let names = match docs.collections_on_default_rules().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the collections on default rules");
            return;
        }
    };
    if names.is_empty() {
        return;
    }
    const SHOWN: usize = 20;
    let mut list = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    let rule = |r: &Option<String>| r.clone().unwrap_or_else(|| "admins only".into());
    tracing::info!(
        read = %rule(&defaults.read),
        create = %rule(&defaults.create),
        update = %rule(&defaults.update),
        delete = %rule(&defaults.delete),
        "{} collections run on the default rules (set rules with PUT /v1/admin/collections/{{c}}): {list}",
        names.len()
    );
}

/// The account service over an open store.
pub(crate) async fn open_accounts(
    store: &Store,
    config: &Config,
    data_dir: &Path,
    mailer: Mailer,
) -> Result<Accounts, StartError> {
    let hasher = PasswordHasherPool::new(&config.auth).map_err(StartError::Other)?;
    let secrets = Secrets::new(data_dir.to_path_buf(), store);
    let tokens = TokenIssuer::load(
        &secrets,
        &config.auth.jwt_secret,
        &config.auth.issuer,
        &config.auth.audience,
        config.auth.access_token_ttl_secs,
    )
    .await
    .map_err(|source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let outbound = crate::outbound::Policy::new(&config.outbound.allow_private_hosts)
        .map_err(|e| StartError::Other(format!("outbound.allow_private_hosts: {e}")))?;
    let accounts = Accounts::new(
        store.clone(),
        hasher,
        tokens,
        config.auth.clone(),
        mailer,
        &outbound,
    );
    accounts
        .migrate_email_case()
        .await
        .map_err(|e| StartError::Other(format!("cannot migrate the email index: {e}")))?;
    accounts
        .index_families()
        .await
        .map_err(|e| StartError::Other(format!("cannot index the logins by user: {e}")))?;
    Ok(accounts)
}

/// Creates the configured admin unless a user with that email exists.
async fn bootstrap_admin(
    accounts: &Accounts,
    email: &str,
    password: &str,
) -> Result<(), StartError> {
    let exists = accounts
        .email_exists(email)
        .await
        .map_err(|e| StartError::Other(format!("admin.email: {}", e)))?;
    if exists {
        return Ok(());
    }
    let (user, _) = accounts
        .upsert_admin(email, password.to_string())
        .await
        .map_err(|e| StartError::Other(format!("admin bootstrap: {}", e)))?;
    tracing::info!(email, id = %user.id, "created the configured admin");
    Ok(())
}

/// Whether files can be made in `dir`: a read-only directory or file system is reported as
/// such, not as whatever the database first fails on.
fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".emberbase-write-check");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Creates the data directory if needed and opens the store: on `engine` if given, else on the
/// PostgreSQL database of `store.url` if set, otherwise on the embedded database in
/// `<data_dir>/db`.
async fn open_data_dir(
    config: &Config,
    engine: Option<Arc<dyn Engine>>,
) -> Result<(PathBuf, Store, Arc<Metrics>), StartError> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    check_writable(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::new().map_err(|e| StartError::Other(e.to_string()))?);
    let db_path = data_dir.join("db");
    let options = store_options(config, db_path.clone());
    let engine = match engine {
        Some(engine) => Some(engine),
        None if !config.store.url.is_empty() => Some(open_postgres(&config.store).await?),
        None => None,
    };
    let store = match engine {
        Some(engine) => Store::on_engine(engine, options, metrics.clone()).await,
        None => Store::open(options, metrics.clone()).await,
    }
    .map_err(|source| StartError::Store {
        path: db_path,
        source: source.into(),
    })?;
    Ok((data_dir, store, metrics))
}

async fn open_postgres(store: &crate::config::StoreConfig) -> Result<Arc<dyn Engine>, StartError> {
    let engine = PostgresEngine::open(PostgresOptions::from_config(store))
        .await
        .map_err(|e| StartError::Database { source: e.into() })?;
    Ok(Arc::new(engine))
}

fn store_options(config: &Config, path: PathBuf) -> StoreOptions {
    StoreOptions {
        path,
        cache_bytes: config.store.cache_mb * 1024 * 1024,
        max_document_bytes: config.limits.max_document_bytes,
        retention_count: config.store.change_retention_count,
        retention_age: Duration::from_secs(config.store.change_retention_hours * 3600),
        change_buffer_bytes: config.store.change_buffer_bytes,
        tombstone_age: Duration::from_secs(config.store.tombstone_days * 86_400),
        max_scan_documents: config.limits.max_scan_documents,
        config_poll: Duration::from_millis(config.store.poll_ms),
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    data_dir: PathBuf,
    service_key: String,
    http: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    store: Store,
    docs: Documents,
    files: Files,
    functions: Functions,
    webhooks: Webhooks,
    realtime: Realtime,
    accounts: Arc<Accounts>,
    changes: Changes,
    backups: Backups,
    mailer: Mailer,
    tracer: Tracer,
}

impl Server {
    /// A builder with the default configuration.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new(Config::default())
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The service key: the bearer token that acts as an admin over HTTP (what `emberbase
    /// plan --data-dir` uses to talk to the server it starts).
    pub fn service_key(&self) -> &str {
        &self.service_key
    }

    /// The in-process document API: the same semantics, rules and change events as HTTP,
    /// without HTTP.
    pub fn documents(&self) -> &Documents {
        &self.docs
    }

    /// The in-process file API (uploads, downloads, signed URLs), with the same rules as HTTP.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// The function service: upload, configure and call functions in-process.
    pub fn functions(&self) -> &Functions {
        &self.functions
    }

    /// The webhook service: configure webhooks, read their delivery log, redeliver.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The realtime service.
    pub fn realtime(&self) -> &Realtime {
        &self.realtime
    }

    /// The account service: signup, login, sessions, and the admin operations on users.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The durable change feed of documents and files, live or replayed.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The backup service: make, list, download and delete backups.
    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the shutdown
    /// timeout), then commits every queued write and closes the database.
    pub async fn shutdown(self) {
        // Open event streams would otherwise hold the graceful stop until its timeout.
        self.realtime.close();
        self.functions.close_streams();
        self.http.stop(true).await;
        let _ = self.task.await;
        self.webhooks.stop();
        self.mailer.stop();
        self.backups.stop();
        let functions = self.functions;
        let _ = tokio::task::spawn_blocking(move || functions.stop()).await;
        self.store.close().await;
        self.tracer.shutdown().await;
        tracing::info!("stopped");
    }
}
