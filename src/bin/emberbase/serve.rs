//! `emberbase serve` and `emberbase dev`: the server until a signal, and what the process
//! around it does (logging, returning freed memory).

use crate::common::{fail, load_config};
use crate::project;
use emberbase::config::{Config, LogFormat, Overrides, DEFAULT_CONFIG_FILE};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub(crate) async fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bind: Option<String>,
) -> ExitCode {
    let overrides = Overrides { bind, data_dir };
    let (config, file) = match load_config(config.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    init_logging(&config);
    match &file {
        Some(path) => tracing::info!(path = %path.display(), "loaded config"),
        None => tracing::info!("no {DEFAULT_CONFIG_FILE} found; using built-in defaults"),
    }
    let server = match emberbase::ServerBuilder::new(config).start().await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return fail(&e.to_string(), 1);
        }
    };
    release_freed_memory();
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and writes");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Gives memory that glibc holds freed back to the system: two seconds after startup (each
/// HTTP worker builds its routes, and throws away their OpenAPI description, once the server
/// runs) and every ten seconds after, so that a burst of work does not leave the server holding
/// its peak for good. glibc keeps freed blocks in its arenas otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trimmer = std::thread::Builder::new()
            .name("emberbase-trim".into())
            .spawn(|| {
                std::thread::sleep(std::time::Duration::from_secs(2));
                loop {
                    // SAFETY: `malloc_trim` takes no pointers; it only returns free pages to
                    // the system.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    std::thread::sleep(std::time::Duration::from_secs(10));
                }
            });
        if let Err(e) = trimmer {
            tracing::warn!(error = %e, "cannot start the thread that returns freed memory");
        }
    }
}

/// `emberbase dev`.
pub(crate) async fn dev(
    file: PathBuf,
    data_dir: Option<PathBuf>,
    seed: Option<PathBuf>,
    bind: Option<String>,
    config: Option<PathBuf>,
) -> ExitCode {
    let temporary = data_dir.is_none();
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("emberbase-dev-{}", ulid::Ulid::new()))
    });
    let fresh = std::fs::read_dir(&data_dir).map_or(true, |mut d| d.next().is_none());
    let overrides = Overrides {
        bind,
        data_dir: Some(data_dir.clone()),
    };
    let config = match load_config(config.as_deref(), &overrides) {
        Ok((config, _)) => config,
        Err(code) => return code,
    };
    init_logging(&config);
    let server = match emberbase::ServerBuilder::new(config)
        .dev_clock(true)
        .start()
        .await
    {
        Ok(server) => server,
        Err(e) => return fail(&e.to_string(), 1),
    };
    println!(
        "emberbase dev: http://{} with the service key {} and data in {}{}",
        server.local_addr(),
        server.service_key(),
        data_dir.display(),
        if temporary { " (removed on exit)" } else { "" }
    );
    let session = project::dev::Dev::new(&server, file);
    let applied = session.apply().await;
    if let (Some(seed), true) = (seed, fresh) {
        if let Err(e) = session.seed(&seed).await {
            eprintln!("emberbase dev: {e}");
        }
    }
    let watcher = tokio::spawn(session.watch(applied));
    wait_for_signal().await;
    watcher.abort();
    server.shutdown().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    ExitCode::SUCCESS
}
