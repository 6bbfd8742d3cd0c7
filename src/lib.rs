//! Emberbase: a Firebase-style backend in one binary.
//!
//! # Layout
//!
//! - [`server`]: the composition root. [`Server::builder`] opens a data directory and serves;
//!   [`Server::shutdown`] stops gracefully.
//! - `api`: the HTTP layer, the only module that knows actix.
//! - [`docs`]: the document service, the in-process API that HTTP handlers call.
//! - [`store`]: the storage layer, the only module that knows sled.
//! - [`files`]: the file service: streamed uploads into blobs, rules, signed URLs.
//! - [`functions`]: Wasm functions: registry, sandbox, triggers, schedules, HTTP calls.
//! - [`realtime`]: Server-Sent Events fed by the change feed, with read rules per event.
//! - [`query`]: the filter language: parser, evaluator, order, planner.
//! - [`auth`]: principals and the service key.
//! - [`config`], [`model`], [`metrics`], [`error`]: what every layer shares.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = emberbase::Server::builder()
//!     .data_dir("./emberbase_data")
//!     .bind("127.0.0.1:0")
//!     .start()
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

// Unsafe code is allowed only where wasmer requires it (`functions::tunables`, loading
// artifacts), each with its safety argument.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;
pub mod auth;
pub mod config;
pub mod docs;
pub mod engine;
pub mod error;
pub mod files;
pub mod functions;
pub mod metrics;
pub mod model;
pub mod query;
pub mod realtime;
pub mod server;
pub mod store;

pub use api::openapi;
pub use auth::Principal;
pub use config::Config;
pub use docs::{DocsError, Documents, ListParams, Page};
pub use error::{Error, ErrorCode};
pub use model::{Change, ChangeKind, Document, FileInfo, Subject};
pub use server::{Server, ServerBuilder, StartError};
