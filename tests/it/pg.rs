//! A real PostgreSQL for the tests: Debian's server binaries, one cluster per test process in a
//! temporary directory on a free loopback port below the ephemeral range, and a fresh database
//! per test. The cluster stops, and its directory goes, when the test process exits (its shell
//! reads the process's end from a pipe). As root, the server runs as the `postgres` user through
//! `runuser`, since `initdb` and `postgres` refuse to run as root.

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    bin: PathBuf,
    pub port: u16,
    dir: PathBuf,
    /// Held open for the process's life: its end stops the server.
    _lifeline: ChildStdin,
    databases: AtomicUsize,
}

/// The directory with `initdb` and `postgres`, newest version first.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args` as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Cluster {
    /// A cluster of its own, for a test that stops and starts it.
    pub fn start() -> Result<Cluster, String> {
        Self::start_with(false)
    }

    /// A cluster of its own that also takes TLS connections, with a certificate for
    /// 127.0.0.1 signed by a CA of its own, `<ca_file()>`.
    pub fn start_tls() -> Result<Cluster, String> {
        Self::start_with(true)
    }

    /// The PEM certificate of the CA that signed a TLS cluster's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn start_with(tls: bool) -> Result<Cluster, String> {
        let bin = server_bin()
            .ok_or("PostgreSQL's server is not installed (apt-get install postgresql)")?;
        let dir = tempfile::Builder::new()
            .prefix("eb-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        if tls {
            make_certificates(&dir)?;
        }
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !owned.success() {
                return Err("could not give the cluster directory to the postgres user".into());
            }
        }
        let data = dir.join("data");
        let init = as_owner(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(|e| e.to_string())?;
        if !init.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        let [port] = crate::common::service_ports();
        let ssl = if tls {
            format!(
                "-c ssl=on -c ssl_cert_file='{0}/server.pem' -c ssl_key_file='{0}/server.key'",
                dir.display()
            )
        } else {
            String::new()
        };
        // fsync off: the tests kill Emberbase and restart PostgreSQL, never the machine.
        let script = format!(
            "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
             -c fsync=off -c full_page_writes=off -c max_connections=400 {ssl} \
             -c shared_buffers=64MB >'{dir}/log' 2>&1 & read _; \
             '{pg_ctl}' -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            postgres = bin.join("postgres").display(),
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let mut shell = as_owner(Path::new("sh"));
        shell.args(["-c", &script]);
        let lifeline = crate::common::run_for_life(shell)?;
        let cluster = Cluster {
            bin,
            port,
            dir,
            _lifeline: lifeline,
            databases: AtomicUsize::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.psql("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default();
                return Err(format!("PostgreSQL did not start: {log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// Runs `sql` in `database` with `psql`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database's URL.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("eb_test_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating a database: {e}"));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (as a crash would), or starts it again.
    pub fn pg_ctl(&self, action: &str) {
        let mut command = as_owner(&self.bin.join("pg_ctl"));
        command
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w"]);
        if action == "start" {
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
                self.port,
                self.dir.display()
            );
            command
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("log2"));
        }
        let status = command
            .arg(action)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("pg_ctl {action}: {e}"));
        assert!(status.success(), "pg_ctl {action} failed");
    }
}

/// A CA and a certificate for 127.0.0.1 it signed, made with the `openssl` command.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("openssl: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=emberbase test CA",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| e.to_string())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| e.to_string())
}

/// The test process's cluster, started on first use; `None` (and the test says SKIPPED) when
/// PostgreSQL is not installed here. On CI (`CI` set) a missing PostgreSQL fails the test.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    crate::common::started_once(&CLUSTER, Cluster::start, "PostgreSQL")
}

/// A fresh database on the test cluster (see [`cluster`]).
pub fn database() -> Option<String> {
    cluster().map(Cluster::database)
}
