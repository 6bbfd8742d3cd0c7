//! Emberbase: a Firebase-style backend in one binary, and the library that is that binary.
//!
//! An embedding program starts a [`Server`] with [`Server::builder`] and gets, besides the
//! HTTP API, every service in-process, with the same rules, limits and change events as over
//! HTTP and no HTTP in between:
//!
//! - [`Server::documents`]: the JSON document store ([`Documents`]);
//! - [`Server::files`]: file storage in buckets ([`Files`]);
//! - [`Server::accounts`]: users, sessions and the admin operations on them ([`Accounts`]);
//! - [`Server::functions`]: sandboxed WebAssembly functions ([`Functions`]);
//! - [`Server::changes`]: the durable change feed, live or replayed ([`Changes`]);
//! - [`Server::realtime`]: the Server-Sent Events hub ([`Realtime`]).
//!
//! Every call names its caller as a [`Principal`]: [`Principal::Service`] acts as an admin and
//! skips the rules; a [`Principal::User`] is held to them. Each service has its own error enum
//! ([`DocsError`], [`FilesError`], [`AuthError`], [`FunctionsError`], [`RealtimeError`]) to
//! match on; each converts into the public [`Error`] that HTTP answers with.
//! [`Server::shutdown`] stops gracefully and makes everything durable.
//!
//! The storage engine is a trait ([`engine::Engine`]); the embedded sled backend is the
//! default, and [`ServerBuilder::engine`] takes any other.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use emberbase::{Principal, Server};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! let server = Server::builder()
//!     .data_dir(dir.path())
//!     .bind("127.0.0.1:0")
//!     .start()
//!     .await?;
//! println!("listening on {}", server.local_addr());
//!
//! let note = server
//!     .documents()
//!     .create(&Principal::Service, "notes", json!({"text": "hello"}))
//!     .await?;
//! assert_eq!(note.version, 1);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `server`: the composition root: [`ServerBuilder::start`] opens a data directory and serves.
//! - `api`: the HTTP layer, the only module that knows actix.
//! - `docs`, `files`, `auth`, `functions`, `realtime`, `changes`: the domain services above.
//! - `store`: the commit engine over [`engine::Engine`]; only `engine/sled.rs` knows sled.
//! - `query`: the filter language: parser, evaluator, order, planner.
//! - [`config`], `model`, `metrics`, `error`: what every layer shares.

// Unsafe code is allowed only where wasmer requires it (`functions::tunables`, loading
// artifacts), each with its safety argument.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod auth;
mod backup;
mod changes;
mod clock;
pub mod config;
mod delivery;
mod docs;
pub mod engine;
mod error;
mod files;
mod functions;
mod lease;
mod mail;
mod metrics;
mod migrate;
mod model;
mod outbound;
mod query;
mod realtime;
mod secrets;
mod server;
mod signing;
mod store;
mod tls;
mod trace;
mod transforms;
mod webhooks;
mod when;

pub use api::openapi;
pub use auth::{
    Accounts, AuthError, CollidingUser, EmailCollision, LinkedIdentity, LoginResult, MfaAnswer,
    MfaChallenge, OAuthProviderInfo, PasswordlessProof, Principal, ProviderSecrets, RecoveryCodes,
    Session, SignInProvider, TotpEnrollment, User, UserPage,
};
pub use auth::{
    ImportReport, NewUser, PortableUser, PortableUserPage, SessionInfo, SessionList, Skipped,
};
pub use backup::{
    restore, restore_cluster, BackupError, BackupInfo, BackupState, Backups, RestoreError,
    RestoreProgress, Restored,
};
pub use changes::Changes;
pub use config::Config;
pub use docs::{
    AggregateParams, Aggregates, BatchOp, BatchOpKind, DocsError, Documents, ExpandedDocument,
    ExpressionCheck, ExpressionKind, Group, ListParams, Page, RuleOperation, RuleTrial,
    RuleTrialInput, MAX_IMPORT_DOCUMENTS,
};
pub use error::{Error, ErrorCode, StorageError};
pub use files::{BlobReader, FilePage, Files, FilesError, OpenFile, SignedUrl, Upload};
pub use functions::{
    invoke_remote, DailyQuota, DailyUsage, FetchConfig, FunctionConfig, FunctionInfo,
    FunctionSecret, FunctionVersion, Functions, FunctionsError, HttpResult, Invocation, Language,
    LocalRun, LogLine, LogTail, Trigger, UsageReport,
};
pub use migrate::{migrate_storage, MigrateError, Migrated};
pub use model::{
    Actor, BucketConfig, BucketInfo, BucketRules, Change, ChangeKind, CollectionConfig,
    CollectionInfo, Document, DocumentImportReport, FileInfo, IndexState, PortableDocument,
    RuleError, Rules, SecretComparison, SkippedDocument, Subject,
};
pub use realtime::{
    Applied, ConnectRequest, Realtime, RealtimeError, SubscribeRequest, Subscription,
    SubscriptionSpec,
};
pub use server::{Server, ServerBuilder, StartError};
pub use store::ChangeReceiver;
pub use trace::TraceContext;
pub use webhooks::{
    WebhookDelivery, WebhookInfo, WebhookMessage, WebhookSpec, WebhookWithSecret, Webhooks,
    WebhooksError,
};

/// The function sandbox's and the rule language's internals, for the project's own benchmarks
/// (`benches/functions.rs`, `benches/rules.rs`, built with `--features internals`). Not API: it
/// may change in any release.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::functions::runtime;
    pub use crate::query::bench as rules;
}
