//! What every command shares: how a failure is reported (a message on standard error and an
//! exit status: 2 for what the user gave, 1 for what went wrong), the runtime, the
//! configuration, the service key of `--url`, and the progress bar of bytes.

use emberbase::config::{Config, Overrides};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints `message` and gives the exit status `code`.
pub(crate) fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("emberbase: {message}");
    ExitCode::from(code)
}

/// A multi-threaded runtime for the command to act in.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the runtime: {e}"), 1))
}

/// The configuration (`file`, or the default file when it exists) with `overrides`, and the
/// file it was read from.
pub(crate) fn load_config(
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<(Config, Option<PathBuf>), ExitCode> {
    Config::load(file, overrides).map_err(|e| fail(&e.to_string(), 2))
}

/// The service key for `--url`, from `EB_SERVICE_KEY`.
pub(crate) fn service_key() -> Result<String, String> {
    std::env::var("EB_SERVICE_KEY")
        .ok()
        .map(|key| key.trim().to_string())
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            "--url needs the server's service key in EB_SERVICE_KEY (for example EB_SERVICE_KEY=$(cat emberbase_data/service_key))".to_string()
        })
}

/// Makes reqwest's TLS provider the process's, as the library's clients do.
pub(crate) fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A progress bar of bytes, drawn only for a person at a terminal.
pub(crate) fn bytes_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}} left)"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
