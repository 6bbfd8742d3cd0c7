//! TLS for every client Emberbase opens (S3, PostgreSQL, the CLI's calls to a server): rustls
//! with the ring provider.

use std::sync::Arc;

/// The crypto provider of every TLS connection.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, which clients that build their own TLS
/// configuration (reqwest, under object_store) use. Harmless when one is installed already.
pub(crate) fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
