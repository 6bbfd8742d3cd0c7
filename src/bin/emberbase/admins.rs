//! `emberbase admin create`: an admin made in a data directory that no server holds open, or
//! on a running server through its admin API.

use crate::common::{fail, install_tls, load_config, runtime, service_key};
use crate::project::admin::Admin;
use emberbase::config::Overrides;
use std::path::PathBuf;
use std::process::ExitCode;

/// `admin create`: against `url` when given, otherwise in the data directory of the
/// configuration.
pub(crate) fn create(
    email: String,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    url: Option<String>,
) -> ExitCode {
    match url {
        Some(url) => create_remote(&email, &url),
        None => create_local(email, config, data_dir),
    }
}

fn create_local(email: String, config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let overrides = Overrides {
        bind: None,
        data_dir,
    };
    let (config, password, runtime) = match load_config(config.as_deref(), &overrides)
        .and_then(|(config, _)| Ok((config, read_password()?, runtime()?)))
    {
        Ok(all) => all,
        Err(code) => return code,
    };
    let dir = config.server.data_dir.display().to_string();
    match runtime.block_on(emberbase::ServerBuilder::new(config).create_admin(&email, password)) {
        Ok((user, created)) => {
            report(
                user.email.as_deref().unwrap_or_default(),
                &user.id,
                created,
                &dir,
            );
            ExitCode::SUCCESS
        }
        Err(e @ emberbase::StartError::Store { .. }) => fail(
            &format!("{e}\nemberbase: to add an admin while the server runs, pass --url and the service key in EB_SERVICE_KEY"),
            1,
        ),
        Err(e) => fail(&e.to_string(), 1),
    }
}

/// `admin create --url`: asks a running server, as its service key.
fn create_remote(email: &str, url: &str) -> ExitCode {
    let key = match service_key() {
        Ok(key) => key,
        Err(e) => return fail(&e, 2),
    };
    let (password, runtime) = match read_password().and_then(|p| Ok((p, runtime()?))) {
        Ok(both) => both,
        Err(code) => return code,
    };
    install_tls();
    let body = serde_json::json!({"email": email, "password": password});
    let answer = runtime.block_on(Admin::new(url, &key).post_created("/v1/admin/admins", &body));
    match answer {
        Ok((user, created)) => {
            let shown = |field: &str| user[field].as_str().unwrap_or("?").to_string();
            report(&shown("email"), &shown("id"), created, url);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}

/// What `admin create` did, in `place` (a data directory or a server's URL).
fn report(email: &str, id: &str, created: bool, place: &str) {
    if created {
        println!("created admin {email} ({id}) in {place}");
    } else {
        println!("{email} ({id}) is now an admin, with the new password");
    }
}

/// The first line of standard input, without its line ending.
fn read_password() -> Result<String, ExitCode> {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        return Err(fail("cannot read the password from standard input", 2));
    }
    Ok(password.trim_end_matches(['\r', '\n']).to_string())
}
