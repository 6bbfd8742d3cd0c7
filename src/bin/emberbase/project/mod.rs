//! The backend as code: `emberbase plan`, `apply` and `pull` compare a project file
//! (`emberbase.project.toml`) with a server and make the difference through the admin API,
//! the same against a remote server (`--url`), a cluster node, or a data directory (an
//! in-process server on a loopback port, so there is one code path). `project-schema` prints
//! the file's JSON Schema. This belongs to the binary: it uses the library's public types and
//! its HTTP API only.

pub(crate) mod admin;
pub(crate) mod dev;
mod file;
mod plan;
mod pull;
mod schema;

use crate::common::{fail, install_tls, runtime, service_key};
use admin::Admin;
use emberbase::config::{Config, Overrides};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where a project is applied, and which project.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The project file.
    #[arg(long, short = 'f', value_name = "FILE", default_value = file::DEFAULT_FILE)]
    file: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

/// A server to work on: a running one, or a data directory.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// A running server (a single node or any node of a cluster); its service key is read
    /// from the `EB_SERVICE_KEY` environment variable.
    #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "config"])]
    url: Option<String>,
    /// Instead of --url: a data directory that no running server holds open [default:
    /// ./emberbase_data]. A server is started on it, on a loopback port, for the command.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file, with a data directory [default: config/emberbase.toml when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The admin API of the target, and the server started for a data directory.
pub(crate) struct Connection {
    pub(crate) admin: Admin,
    server: Option<emberbase::Server>,
}

impl Connection {
    pub(crate) async fn open(target: &ServerArgs) -> Result<Connection, String> {
        install_tls();
        if let Some(url) = &target.url {
            return Ok(Connection {
                admin: Admin::new(url, &service_key()?),
                server: None,
            });
        }
        let overrides = Overrides {
            bind: Some("127.0.0.1:0".into()),
            data_dir: target.data_dir.clone(),
        };
        let (config, _) =
            Config::load(target.config.as_deref(), &overrides).map_err(|e| e.to_string())?;
        let dir = config.server.data_dir.display().to_string();
        let server = emberbase::ServerBuilder::new(config)
            .start()
            .await
            .map_err(|e| match e {
                emberbase::StartError::Store { .. } => format!(
                    "{e}\nto change a running server, pass --url and its service key in EB_SERVICE_KEY"
                ),
                e => format!("cannot open {dir}: {e}"),
            })?;
        Ok(Connection {
            admin: Admin::new(
                &format!("http://{}", server.local_addr()),
                server.service_key(),
            ),
            server: Some(server),
        })
    }

    pub(crate) async fn close(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

/// Reads the project file and runs its functions' build commands.
fn load_and_build(path: &Path) -> Result<file::Project, String> {
    let project = file::load(path, &|name| std::env::var(name).ok())?;
    let dir = file::folder_of(path);
    let mut built = BTreeSet::new();
    for (name, function) in &project.functions {
        let Some(command) = &function.build else {
            continue;
        };
        if !built.insert(command.clone()) {
            continue;
        }
        eprintln!("building {name}: {command}");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&dir)
            .stdout(std::io::stderr())
            .status()
            .map_err(|e| format!("functions.{name}.build: cannot run sh: {e}"))?;
        if !status.success() {
            return Err(format!(
                "functions.{name}.build: `{command}` failed ({status})"
            ));
        }
    }
    Ok(project)
}

/// The plan for a target, and the connection it was made over.
async fn plan_for(
    target: &Target,
    project: &file::Project,
) -> Result<(plan::Plan, Connection), String> {
    let connection = Connection::open(&target.server).await?;
    let made = async {
        let state = connection.admin.state().await.map_err(|e| e.to_string())?;
        plan::make(project, &state, &connection.admin).await
    }
    .await;
    match made {
        Ok(plan) => Ok((plan, connection)),
        Err(e) => {
            connection.close().await;
            Err(e)
        }
    }
}

/// The project, read and built, and a runtime to compare it with the target in.
fn prepare(target: &Target) -> Result<(file::Project, tokio::runtime::Runtime), ExitCode> {
    let project = load_and_build(&target.file).map_err(|e| fail(&e, 2))?;
    let runtime = runtime()?;
    Ok((project, runtime))
}

/// `emberbase plan`: prints what `apply` would change.
pub(crate) fn plan(target: &Target) -> ExitCode {
    let (project, runtime) = match prepare(target) {
        Ok(both) => both,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match plan_for(target, &project).await {
            Ok((plan, connection)) => {
                connection.close().await;
                print!("{}", plan.render());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        }
    })
}

/// `emberbase apply`: makes the plan's changes, in order, stopping at the first failure.
pub(crate) fn apply(target: &Target, allow_delete: bool) -> ExitCode {
    let (project, runtime) = match prepare(target) {
        Ok(both) => both,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let (plan, connection) = match plan_for(target, &project).await {
            Ok(both) => both,
            Err(e) => return fail(&e, 1),
        };
        let code = apply_plan(&plan, &connection.admin, allow_delete).await;
        connection.close().await;
        code
    })
}

async fn apply_plan(plan: &plan::Plan, admin: &Admin, allow_delete: bool) -> ExitCode {
    print!("{}", plan.render());
    if plan.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !allow_delete {
        let refused: Vec<String> = plan.destructive().map(plan::Item::title).collect();
        if !refused.is_empty() {
            return fail(
                &format!(
                    "nothing was changed: the plan has destructive changes ({}); apply them with --allow-delete",
                    refused.join(", ")
                ),
                2,
            );
        }
    }
    println!();
    let total = plan.items.len();
    for (done, item) in plan.items.iter().enumerate() {
        match item.apply(admin).await {
            Ok(notes) => {
                println!("applied {}", item.title());
                for note in notes {
                    println!("    {note}");
                }
            }
            Err(e) => {
                println!("failed  {}: {e}", item.title());
                let applied: Vec<String> =
                    plan.items[..done].iter().map(plan::Item::title).collect();
                return fail(
                    &format!(
                        "stopped at the first failure: {done} of {total} changes were applied{}",
                        if applied.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", applied.join(", "))
                        }
                    ),
                    1,
                );
            }
        }
    }
    println!("\nApplied {total} changes.");
    ExitCode::SUCCESS
}

/// `emberbase pull`: writes the project file (and its schemas, function code and JSON Schema
/// beside it) from what the server has.
pub(crate) fn pull(target: &Target, force: bool) -> ExitCode {
    if target.file.exists() && !force {
        return fail(
            &format!(
                "{} exists; pass --force to replace it",
                target.file.display()
            ),
            2,
        );
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let connection = match Connection::open(&target.server).await {
            Ok(c) => c,
            Err(e) => return fail(&e, 1),
        };
        let pulled = pull::pull(&connection.admin, &target.file).await;
        connection.close().await;
        match pulled {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        }
    })
}

/// `emberbase project-schema`.
pub(crate) fn print_schema() -> ExitCode {
    print!("{}", schema::project_schema_text());
    ExitCode::SUCCESS
}
