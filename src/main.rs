//! The `emberbase` command: a thin CLI over the library.

use clap::{Parser, Subcommand};
use emberbase::config::{Config, LogFormat, Overrides, DEFAULT_CONFIG_FILE};
use std::path::PathBuf;
use std::process::ExitCode;

/// Emberbase: auth, JSON documents, files and WebAssembly functions in one binary.
///
/// Start a server with `emberbase serve`. Every setting lives in `config/emberbase.toml`
/// (read from the working directory when present) and can be overridden by an environment
/// variable `EMBERBASE_<SECTION>__<KEY>` (for example `EMBERBASE_SERVER__BIND=0.0.0.0:7070`)
/// and then by the flags below.
#[derive(Parser)]
#[command(name = "emberbase", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM, then shut down gracefully.
    ///
    /// On first start it creates the data directory and a service key (an admin secret for
    /// scripts) in `<data-dir>/service_key`; the log says where.
    Serve {
        /// Config file [default: config/emberbase.toml when it exists].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where data lives [default: ./emberbase_data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7070]; port 0 picks a free port.
        #[arg(long, value_name = "HOST:PORT")]
        bind: Option<String>,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API (the same as GET /v1/openapi.json).
    Openapi,
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
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

async fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bind: Option<String>,
) -> ExitCode {
    let overrides = Overrides { bind, data_dir };
    let (config, file) = match Config::load(config.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("emberbase: {e}");
            return ExitCode::from(2);
        }
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
            eprintln!("emberbase: {e}");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and writes");
    server.shutdown().await;
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => match emberbase::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("emberbase: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            data_dir,
            bind,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("emberbase: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(config, data_dir, bind))
        }
    }
}
