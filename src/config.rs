//! Configuration: one struct, layered as defaults < `config/emberbase.toml` (or `--config`) <
//! `EMBERBASE_<SECTION>__<KEY>` environment variables < command-line flags. Every struct denies
//! unknown fields, so a misspelt key is an error that names it instead of a silent default.

use crate::model::{BucketRules, Rules};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file loaded when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/emberbase.toml";
/// The prefix of environment variables; `__` separates a section from its key.
pub const ENV_PREFIX: &str = "EMBERBASE_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub mail: MailConfig,
    /// Access rules of collections that have no configuration of their own.
    pub rules: Rules,
    pub files: FilesConfig,
    pub functions: FunctionsConfig,
    pub realtime: RealtimeConfig,
    pub webhooks: WebhooksConfig,
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
    pub backups: BackupsConfig,
}

/// The deepest JSON nesting `limits.max_json_depth` may allow: serde_json reads at most 128
/// levels, and a stored envelope wraps `data` in two more.
pub const MAX_JSON_DEPTH: u64 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    /// Seconds between heartbeat comments on an idle stream (keeps proxies from closing it).
    pub heartbeat_secs: u64,
    /// Events queued for one subscriber that has not read them yet; past this it is a slow
    /// consumer and is disconnected with a final `close` event (it resumes with `Last-Event-ID`).
    pub queue: usize,
    /// Bytes of events queued for one subscriber (one event larger than this is still
    /// delivered to an empty queue); past this it is a slow consumer, likewise.
    pub queue_bytes: usize,
    /// Seconds a subscriber may leave queued events unread before it is disconnected the
    /// same way, so a client that stops reading holds nothing for long.
    pub stall_secs: u64,
    /// Open streams the server accepts at once; more get `503`.
    pub max_subscribers: usize,
    /// Open streams one client address may hold; more get `429`.
    pub max_subscribers_per_client: usize,
    /// Topics one stream may subscribe to.
    pub max_topics: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            heartbeat_secs: 15,
            queue: 1024,
            queue_bytes: 4 * 1024 * 1024,
            stall_secs: 30,
            max_subscribers: 10_000,
            max_subscribers_per_client: 100,
            max_topics: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Threads that run functions; 0 means four per CPU core (a run keeps its thread while
    /// its writes become durable).
    pub workers: usize,
    /// Invocations that may wait for a worker before new ones are refused (`503`).
    pub queue: usize,
    /// The largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// The key that seals functions' secrets: 32 bytes in base64 (`openssl rand -base64 32`).
    /// Required with `store.url` (every node must open what another sealed). Empty on a single
    /// node: a key made on first start in `<data_dir>/functions/secrets_key`, owner-only.
    pub secrets_key: String,
    /// Defaults of a function's own config.
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub max_retries: u32,
    /// Metering points per invocation (every operator costs at least 1).
    pub fuel: u64,
    /// Host calls (`call`) per invocation.
    pub max_host_calls: u32,
    /// Events caused by writes deeper than this in a chain of functions are dropped.
    pub max_depth: u32,
    /// The first retry's delay in milliseconds; each next one doubles, up to 60 s.
    pub retry_base_ms: u64,
    /// Invocation records kept per function.
    pub invocations_kept: usize,
    /// Table elements a module may declare, all tables together (each costs 8 bytes of the
    /// function's memory limit; tables do not grow).
    pub max_table_elements: u64,
    /// Log bytes one invocation keeps (in its record and the server log); later lines are
    /// dropped and counted.
    pub max_log_bytes: usize,
    /// Log bytes one function may write per minute across all its invocations.
    pub log_bytes_per_minute: u64,
    /// Uploaded versions kept per function (the active one always is), to activate again.
    pub versions_kept: usize,
    /// Trigger events of one function run at once (a function may set its own); events about
    /// the same document or file always run one after the other. 1 keeps a function's runs
    /// one at a time, which read-then-write code relies on.
    pub concurrency: usize,
    /// Mails one function may send per hour with `mail.send` (a function may set its own).
    pub mail_per_hour: u32,
    /// Threads that run only before-write hooks, so a write never waits behind other runs.
    pub hook_workers: usize,
    /// A before-write hook's wall time and fuel (a function may set its own).
    pub hook_timeout_ms: u64,
    pub hook_fuel: u64,
}

/// Backups: where archives go, and when they are made without being asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsConfig {
    /// A directory for archives. Empty: `<data_dir>/backups` (unless `url` is set).
    pub dir: String,
    /// An S3-compatible bucket for archives instead of a directory:
    /// `s3://bucket[/prefix]?endpoint=https://...&region=...`.
    pub url: String,
    /// The bucket's credentials; empty: the usual `AWS_*` environment variables.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When to make a backup on its own, as a cron expression in UTC (five fields, or six
    /// with seconds), for example `"0 3 * * *"`. Empty: only when asked. In a cluster each
    /// tick makes one backup, on one node.
    pub schedule: String,
    /// Scheduled archives kept; older ones are deleted after each scheduled backup. Archives
    /// made on request are kept until deleted.
    pub keep: usize,
}

impl Default for BackupsConfig {
    fn default() -> Self {
        BackupsConfig {
            dir: String::new(),
            url: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            schedule: String::new(),
            keep: 7,
        }
    }
}

/// Outbound webhooks: how their deliveries are timed, retried and kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// How long one delivery may take (connecting, sending, and the answer's headers and
    /// excerpt), in milliseconds.
    pub timeout_ms: u64,
    /// The first retry's delay in milliseconds; each next one is four times longer, up to an
    /// hour, with jitter.
    pub retry_base_ms: u64,
    /// Attempts of a message before it is dead (a webhook may set its own).
    pub max_attempts: u32,
    /// Deliveries in flight at once per webhook (a webhook may set its own); messages about
    /// the same document, file or account are always delivered one after the other.
    pub concurrency: usize,
    /// Delivery attempts, and delivered or dead messages, kept per webhook.
    pub log_kept: usize,
    /// How long a rotated-out secret still signs deliveries, in seconds.
    pub rotation_grace_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            timeout_ms: 10_000,
            retry_base_ms: 5_000,
            max_attempts: 8,
            concurrency: 8,
            log_kept: 1_000,
            rotation_grace_secs: 86_400,
        }
    }
}

/// Requests the server sends on a user's behalf (webhook deliveries).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Hosts that may be reached at loopback, private or link-local addresses, which are
    /// refused otherwise: `host`, `host:port` (that port only) or an IP address.
    pub allow_private_hosts: Vec<String>,
}

/// Trace spans exported to an OpenTelemetry collector. Trace ids flow through requests,
/// changes, events, function runs and webhook deliveries whether or not this is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP endpoint (`http://127.0.0.1:4318`); spans go to
    /// `<endpoint>/v1/traces` as protobuf. Empty: no export.
    pub otlp_endpoint: String,
    /// Headers sent with every export (an API key of a hosted collector).
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of new traces (those a request does not bring with `traceparent`) whose spans
    /// are exported, from 0 to 1. A request's own `traceparent` decides for its trace.
    pub sample_ratio: f64,
    /// How often queued spans are sent, in milliseconds.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            otlp_headers: Default::default(),
            service_name: "emberbase".into(),
            sample_ratio: 1.0,
            export_interval_ms: 1_000,
        }
    }
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            workers: 0,
            queue: 1024,
            max_module_bytes: 8 * 1024 * 1024,
            secrets_key: String::new(),
            timeout_ms: 5_000,
            memory_mb: 64,
            max_retries: 3,
            fuel: 1_000_000_000,
            max_host_calls: 1_000,
            max_depth: 4,
            retry_base_ms: 1_000,
            invocations_kept: 200,
            max_table_elements: 100_000,
            max_log_bytes: 16 * 1024,
            log_bytes_per_minute: 256 * 1024,
            versions_kept: 10,
            concurrency: 1,
            mail_per_hour: 100,
            hook_workers: 2,
            hook_timeout_ms: 50,
            hook_fuel: 50_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// An S3-compatible bucket to keep file bytes in, shared by every node that names it:
    /// `s3://bucket[/prefix]?endpoint=https://...&region=...`. Empty: `<data_dir>/files`.
    pub url: String,
    /// The bucket's credentials; empty: the usual `AWS_*` environment variables.
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The largest upload, in bytes, for buckets that set no `max_size` of their own.
    pub max_size: u64,
    /// Access rules of buckets that have no configuration of their own.
    pub rules: BucketRules,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            url: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            max_size: 100 * 1024 * 1024,
            rules: BucketRules::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `HOST:PORT` to listen on; port 0 picks a free port.
    pub bind: String,
    /// Where the database, keys and files live.
    pub data_dir: PathBuf,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Seconds that graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:7070".into(),
            data_dir: PathBuf::from("./emberbase_data"),
            workers: 0,
            shutdown_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins allowed by CORS; empty allows any origin.
    pub cors_origins: Vec<String>,
    /// The largest JSON request body, in bytes.
    pub max_body_bytes: usize,
    /// Proxies (IP addresses) whose `X-Forwarded-For` header names the client. Without them the
    /// client address is the socket's peer.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest `data` of one document, as JSON bytes.
    pub max_document_bytes: usize,
    /// The deepest nesting of arrays and objects in a JSON body.
    pub max_json_depth: usize,
    /// The longest `filter` or `sort` parameter, in bytes.
    pub max_filter_length: usize,
    /// The most ops in one `POST /v1/batch`.
    pub max_batch_ops: usize,
    /// The most documents a query may examine without an index serving its filter or sort;
    /// past that it answers `400`, naming the index to declare.
    pub max_scan_documents: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_document_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_filter_length: 4096,
            max_batch_ops: 500,
            max_scan_documents: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A PostgreSQL database to store everything in, shared by every node that names it
    /// (`postgres://user:password@host:5432/db`). Empty: the embedded sled database in the
    /// data directory.
    pub url: String,
    /// Connections to `url` each node keeps at most.
    pub pool_size: usize,
    /// Follow other nodes' changes through PostgreSQL's `LISTEN/NOTIFY` (with `false`, only
    /// through the timer of `poll_ms`).
    pub notify: bool,
    /// How often, in milliseconds, a node reads the cluster's newest change whatever the
    /// notifications say: the latency when one is lost.
    pub poll_ms: u64,
    /// With `sslmode=require` in `url`: a PEM file of the CA certificates that may sign the
    /// database's certificate. Empty: the system's roots.
    pub ca_file: String,
    /// sled's page cache, in MiB.
    pub cache_mb: u64,
    /// Change records kept for realtime replay and triggers: at most this many...
    pub change_retention_count: usize,
    /// ...and none older than this many hours.
    pub change_retention_hours: u64,
    /// Bytes of recent changes held in memory for live consumers (realtime, triggers); one
    /// that falls further behind reads the stored change records instead.
    pub change_buffer_bytes: usize,
    /// Days a deleted document's version is remembered, so that creating its id again
    /// continues the version sequence (a stale `If-Match` older than this is not protected).
    pub tombstone_days: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: String::new(),
            pool_size: 16,
            notify: true,
            poll_ms: 250,
            ca_file: String::new(),
            cache_mb: 64,
            change_retention_count: 10_000,
            change_retention_hours: 24,
            change_buffer_bytes: 16 * 1024 * 1024,
            tombstone_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `emberbase=debug,actix_web=warn`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Plain,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` without a token.
    pub public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The service key. When empty, one is generated on first start into
    /// `<data_dir>/service_key`, readable only by its owner.
    pub service_key: String,
    /// The HS256 secret for access tokens (at least 32 bytes). When empty, keys are generated
    /// into `<data_dir>/jwt_keys.json` and can be rotated.
    pub jwt_secret: String,
    /// The `iss` and `aud` of access tokens.
    pub issuer: String,
    pub audience: String,
    /// Lifetime of an access token, in seconds.
    pub access_token_ttl_secs: u64,
    /// Absolute lifetime of a login (its refresh tokens), in days.
    pub refresh_token_ttl_days: u64,
    /// argon2id cost: memory in KiB, iterations, lanes (OWASP minimum: 19456, 2, 1).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; 0 means one per CPU core.
    pub hash_concurrency: usize,
    /// Failed logins allowed per account, and per client IP, within the window.
    pub max_failures_per_account: usize,
    pub max_failures_per_ip: usize,
    pub failure_window_secs: u64,
    /// Signups per client address per hour, counted whether they succeed or not.
    pub signups_per_ip_per_hour: usize,
    /// Reset and verification mails asked for per email address per hour, and per client
    /// address per hour.
    pub mails_per_address_per_hour: usize,
    pub mail_requests_per_ip_per_hour: usize,
    /// Seconds between passes that remove ended logins, their refresh tokens, expired email
    /// tokens and old mail.
    pub prune_interval_secs: u64,
    /// Lifetime of email verification and password reset tokens, in seconds.
    pub verify_token_ttl_secs: u64,
    pub reset_token_ttl_secs: u64,
    /// The public base URL of this server, used in mails.
    pub public_url: String,
    /// Where links in sign-in mails may send the browser: each an exact URL, or a prefix
    /// ending in `/`. A request naming another is refused.
    pub redirect_urls: Vec<String>,
    /// Lifetime of a passwordless sign-in code and link, in seconds.
    pub passwordless_ttl_secs: u64,
    /// Whether a passwordless sign-in of an unknown address makes its account.
    pub passwordless_signup: bool,
    /// Seconds an anonymous account lasts without a refresh before it is deleted.
    pub anonymous_ttl_secs: u64,
    /// Sign-in providers (OAuth2 and OpenID Connect) by name, the name their URLs use
    /// (`/v1/auth/oauth/{name}/...`). More can be added through the admin API.
    pub providers: std::collections::BTreeMap<String, OAuthProviderConfig>,
    /// Clock skew allowed when checking a provider's ID token (`exp`, `iat`), in seconds.
    pub id_token_leeway_secs: u64,
    /// Sign-ins with a provider started per client address per hour.
    pub oauth_starts_per_ip_per_hour: usize,
}

/// A sign-in provider: `[auth.providers.<name>]` in the config file, or the body of
/// `PUT /v1/admin/auth/providers/{name}`. Secrets can come from the environment
/// (`EMBERBASE_AUTH__PROVIDERS__<NAME>__CLIENT_SECRET`) and are never shown back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthProviderConfig {
    /// `oidc` (any OpenID Connect provider, by `issuer`) or a preset: `google`, `apple`,
    /// `microsoft`, `gitlab` (OpenID Connect), `github`, `discord` (OAuth2 without ID tokens).
    /// Empty: the provider's name when that is a preset, else `oidc`.
    pub kind: String,
    /// The name to show on a sign-in button. Empty: the kind's (`Google`...) or the name.
    pub display_name: String,
    /// The OpenID issuer; its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`. Presets set it; `oidc` needs it.
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// The client secret. Write-only: the API says whether one is set, never what it is.
    pub client_secret: String,
    /// Scopes to ask for. Empty: the kind's (`openid email profile` for OpenID Connect).
    pub scopes: Vec<String>,
    /// Where a redirect sign-in may end (the app's page that exchanges the code): each an
    /// exact URL, or a prefix ending in `/`. Empty: `auth.redirect_urls`.
    pub redirect_urls: Vec<String>,
    /// More `aud` values accepted in ID tokens that apps exchange (`POST
    /// /v1/auth/oauth/{provider}/token`): the client ids of their platform SDKs.
    pub audiences: Vec<String>,
    /// This server's callback as registered with the provider. Empty:
    /// `{auth.public_url}/v1/auth/oauth/{name}/callback`.
    pub callback_url: String,
    /// OAuth2 endpoints of `github` and `discord` (set them for GitHub Enterprise). OpenID
    /// Connect providers publish theirs in discovery.
    pub authorization_url: String,
    pub token_url: String,
    pub userinfo_url: String,
    /// `microsoft`: the tenant (`common`, `organizations`, `consumers` or a tenant id). Empty:
    /// `common`.
    pub tenant: String,
    /// `apple`: instead of a `client_secret`, the key that signs one: the team id, the key id
    /// and the private key (PEM, from the Apple developer account).
    pub apple_team_id: String,
    pub apple_key_id: String,
    /// Write-only, like `client_secret`.
    pub apple_private_key: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service_key: String::new(),
            jwt_secret: String::new(),
            issuer: "emberbase".into(),
            audience: "emberbase".into(),
            access_token_ttl_secs: 900,
            refresh_token_ttl_days: 30,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            max_failures_per_account: 10,
            max_failures_per_ip: 100,
            failure_window_secs: 900,
            signups_per_ip_per_hour: 20,
            mails_per_address_per_hour: 5,
            mail_requests_per_ip_per_hour: 30,
            prune_interval_secs: 3600,
            verify_token_ttl_secs: 86_400,
            reset_token_ttl_secs: 3_600,
            public_url: "http://127.0.0.1:7070".into(),
            redirect_urls: Vec::new(),
            passwordless_ttl_secs: 900,
            passwordless_signup: true,
            anonymous_ttl_secs: 30 * 86_400,
            providers: Default::default(),
            id_token_leeway_secs: 60,
            oauth_starts_per_ip_per_hour: 300,
        }
    }
}

/// An admin created on start if it does not exist (`EMBERBASE_ADMIN__EMAIL`,
/// `EMBERBASE_ADMIN__PASSWORD`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtp://user:pass@host:port` of a relay; empty keeps mail in the outbox only.
    pub smtp_url: String,
    /// The sender of verification and reset mails.
    pub from: String,
    /// Mails kept in the outbox (`GET /v1/admin/outbox`); older ones are removed, once sent or
    /// failed.
    pub outbox_kept: usize,
    /// The delay before a mail's first retry after the relay failed for a reason that may pass
    /// (busy, unreachable, `4xx`), in milliseconds; each next one is four times longer, up to
    /// an hour, with jitter.
    pub retry_base_ms: u64,
    /// Attempts of a mail before it is marked failed; a relay's permanent refusal (`5xx`)
    /// ends them at once.
    pub max_attempts: u32,
    /// How long one attempt may take, from the connection to the relay's last answer, in
    /// milliseconds. A relay that stalls past it counts as one that may answer later: the
    /// attempt fails, frees its sending slot and is retried.
    pub timeout_ms: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: String::new(),
            from: "Emberbase <noreply@localhost>".into(),
            outbox_kept: 1000,
            retry_base_ms: 30_000,
            max_attempts: 8,
            timeout_ms: 30_000,
        }
    }
}

/// Values given on the command line, applied over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration from every layer. Returns it with the file it read, if any.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let file = match file {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.to_path_buf())),
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        if let Some(bind) = &overrides.bind {
            figment = figment.merge(Serialized::default("server.bind", bind));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("server.data_dir", dir));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok((config, file))
    }

    /// Checks what serde cannot: values in range, rules that parse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.http.max_body_bytes == 0 {
            return invalid("http.max_body_bytes", "must be positive");
        }
        // Every number a computation scales (seconds into instants, MiB into bytes, depths into
        // recursion) has an upper bound, so no value can overflow or store what cannot be read
        // back; the message names the key.
        const DAY: u64 = 86_400;
        let (a, f, rt, st) = (&self.auth, &self.functions, &self.realtime, &self.store);
        let w = &self.webhooks;
        let ranges: [(&str, u64, u64, u64); 60] = [
            (
                "store.change_buffer_bytes",
                st.change_buffer_bytes as u64,
                1,
                1 << 32,
            ),
            ("auth.prune_interval_secs", a.prune_interval_secs, 1, DAY),
            ("mail.outbox_kept", self.mail.outbox_kept as u64, 1, 1 << 20),
            ("mail.retry_base_ms", self.mail.retry_base_ms, 1, 3_600_000),
            ("mail.timeout_ms", self.mail.timeout_ms, 1, 3_600_000),
            (
                "mail.max_attempts",
                u64::from(self.mail.max_attempts),
                1,
                100,
            ),
            (
                "limits.max_document_bytes",
                self.limits.max_document_bytes as u64,
                1,
                64 << 20,
            ),
            // serde_json reads at most 128 levels; a stored envelope adds two.
            (
                "limits.max_json_depth",
                self.limits.max_json_depth as u64,
                1,
                MAX_JSON_DEPTH,
            ),
            (
                "limits.max_filter_length",
                self.limits.max_filter_length as u64,
                1,
                1 << 20,
            ),
            (
                "limits.max_batch_ops",
                self.limits.max_batch_ops as u64,
                1,
                10_000,
            ),
            (
                "limits.max_scan_documents",
                self.limits.max_scan_documents,
                1,
                1 << 40,
            ),
            ("store.cache_mb", st.cache_mb, 1, 1 << 20),
            ("store.pool_size", st.pool_size as u64, 2, 1000),
            ("store.poll_ms", st.poll_ms, 10, 60_000),
            ("store.tombstone_days", st.tombstone_days, 1, 36_500),
            (
                "store.change_retention_count",
                st.change_retention_count as u64,
                1,
                1 << 32,
            ),
            (
                "store.change_retention_hours",
                st.change_retention_hours,
                1,
                24 * 3650,
            ),
            (
                "server.shutdown_timeout_secs",
                self.server.shutdown_timeout_secs,
                0,
                3600,
            ),
            (
                "auth.access_token_ttl_secs",
                a.access_token_ttl_secs,
                1,
                30 * DAY,
            ),
            (
                "auth.refresh_token_ttl_days",
                a.refresh_token_ttl_days,
                1,
                3650,
            ),
            ("auth.failure_window_secs", a.failure_window_secs, 1, DAY),
            (
                "auth.max_failures_per_account",
                a.max_failures_per_account as u64,
                1,
                1 << 20,
            ),
            (
                "auth.max_failures_per_ip",
                a.max_failures_per_ip as u64,
                1,
                1 << 20,
            ),
            (
                "auth.signups_per_ip_per_hour",
                a.signups_per_ip_per_hour as u64,
                1,
                1 << 20,
            ),
            (
                "auth.anonymous_ttl_secs",
                a.anonymous_ttl_secs,
                1,
                10 * 365 * 86_400,
            ),
            ("auth.id_token_leeway_secs", a.id_token_leeway_secs, 0, 3600),
            (
                "auth.oauth_starts_per_ip_per_hour",
                a.oauth_starts_per_ip_per_hour as u64,
                1,
                1 << 20,
            ),
            (
                "auth.passwordless_ttl_secs",
                a.passwordless_ttl_secs,
                1,
                86_400,
            ),
            (
                "auth.mails_per_address_per_hour",
                a.mails_per_address_per_hour as u64,
                1,
                1 << 20,
            ),
            (
                "auth.mail_requests_per_ip_per_hour",
                a.mail_requests_per_ip_per_hour as u64,
                1,
                1 << 20,
            ),
            (
                "auth.verify_token_ttl_secs",
                a.verify_token_ttl_secs,
                1,
                30 * DAY,
            ),
            (
                "auth.reset_token_ttl_secs",
                a.reset_token_ttl_secs,
                1,
                30 * DAY,
            ),
            ("realtime.heartbeat_secs", rt.heartbeat_secs, 1, 3600),
            ("realtime.queue", rt.queue as u64, 1, 1 << 20),
            ("realtime.queue_bytes", rt.queue_bytes as u64, 1, 1 << 30),
            ("realtime.stall_secs", rt.stall_secs, 1, DAY),
            (
                "realtime.max_subscribers",
                rt.max_subscribers as u64,
                1,
                1 << 24,
            ),
            (
                "realtime.max_subscribers_per_client",
                rt.max_subscribers_per_client as u64,
                1,
                1 << 24,
            ),
            ("realtime.max_topics", rt.max_topics as u64, 1, 4096),
            ("functions.timeout_ms", f.timeout_ms, 1, 3_600_000),
            ("functions.memory_mb", f.memory_mb, 1, 4096),
            ("functions.retry_base_ms", f.retry_base_ms, 1, 60_000),
            ("functions.max_depth", u64::from(f.max_depth), 0, 64),
            (
                "functions.max_table_elements",
                f.max_table_elements,
                0,
                u64::from(u32::MAX),
            ),
            (
                "functions.max_log_bytes",
                f.max_log_bytes as u64,
                0,
                16 << 20,
            ),
            (
                "functions.log_bytes_per_minute",
                f.log_bytes_per_minute,
                0,
                1 << 30,
            ),
            (
                "functions.invocations_kept",
                f.invocations_kept as u64,
                1,
                1 << 20,
            ),
            ("functions.concurrency", f.concurrency as u64, 1, 256),
            ("functions.versions_kept", f.versions_kept as u64, 1, 1000),
            (
                "functions.mail_per_hour",
                u64::from(f.mail_per_hour),
                0,
                100_000,
            ),
            ("functions.hook_workers", f.hook_workers as u64, 1, 256),
            ("functions.hook_timeout_ms", f.hook_timeout_ms, 1, 10_000),
            ("functions.hook_fuel", f.hook_fuel, 1, 1 << 40),
            ("webhooks.timeout_ms", w.timeout_ms, 1, 300_000),
            ("webhooks.retry_base_ms", w.retry_base_ms, 1, 3_600_000),
            ("webhooks.max_attempts", u64::from(w.max_attempts), 1, 100),
            ("webhooks.concurrency", w.concurrency as u64, 1, 256),
            ("webhooks.log_kept", w.log_kept as u64, 1, 1 << 20),
            (
                "webhooks.rotation_grace_secs",
                w.rotation_grace_secs,
                0,
                30 * DAY,
            ),
            ("backups.keep", self.backups.keep as u64, 1, 10_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return invalid(key, &format!("must be from {min} to {max}, not {value}"));
            }
        }
        if !self.backups.dir.is_empty() && !self.backups.url.is_empty() {
            return invalid("backups.url", "set backups.dir or backups.url, not both");
        }
        let t = &self.telemetry;
        if !t.otlp_endpoint.is_empty() {
            if let Err(e) = crate::trace::traces_url(&t.otlp_endpoint) {
                return invalid("telemetry.otlp_endpoint", &e);
            }
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return invalid("telemetry.sample_ratio", "must be from 0 to 1");
        }
        if !(10..=60_000).contains(&t.export_interval_ms) {
            return invalid(
                "telemetry.export_interval_ms",
                &format!("must be from 10 to 60000, not {}", t.export_interval_ms),
            );
        }
        if let Err(e) = crate::outbound::Policy::new(&self.outbound.allow_private_hosts) {
            return invalid("outbound.allow_private_hosts", &e);
        }
        let secrets_key = &self.functions.secrets_key;
        if secrets_key.is_empty() && !self.store.url.is_empty() {
            return invalid(
                "functions.secrets_key",
                "is required with store.url: every node must open the secrets another sealed (openssl rand -base64 32)",
            );
        }
        if !secrets_key.is_empty() {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD.decode(secrets_key);
            if decoded.map(|k| k.len()) != Ok(32) {
                return invalid(
                    "functions.secrets_key",
                    "must be 32 bytes in base64 (openssl rand -base64 32)",
                );
            }
        }
        let key = &self.auth.service_key;
        if !key.is_empty() && key.len() < 24 {
            return invalid("auth.service_key", "must be at least 24 characters");
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return invalid("auth.jwt_secret", "must be at least 32 bytes");
        }
        if self.admin.email.is_empty() != self.admin.password.is_empty() {
            return invalid("admin", "set both email and password, or neither");
        }
        for (name, rule) in [
            ("rules.read", &self.rules.read),
            ("rules.create", &self.rules.create),
            ("rules.update", &self.rules.update),
            ("rules.delete", &self.rules.delete),
        ] {
            if let Err(e) = crate::query::Rule::compile(rule.as_deref()) {
                return invalid(name, &e.to_string());
            }
        }
        for (name, rule) in [
            ("files.rules.read", &self.files.rules.read),
            ("files.rules.write", &self.files.rules.write),
            ("files.rules.delete", &self.files.rules.delete),
        ] {
            let dialect = crate::query::Dialect::FileRule;
            if let Err(e) = crate::query::Rule::compile_in(rule.as_deref(), dialect) {
                return invalid(name, &e.to_string());
            }
        }
        if self.files.max_size == 0 {
            return invalid("files.max_size", "must be positive");
        }
        if f.queue == 0 || f.max_module_bytes == 0 || f.fuel == 0 || f.max_host_calls == 0 {
            return invalid(
                "functions",
                "queue, max_module_bytes, fuel and max_host_calls must be positive",
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid("log.level", "not a valid level or filter");
        }
        Ok(())
    }
}
