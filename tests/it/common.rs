//! The test harness: a real server on `127.0.0.1:0` with a temporary data directory, driven
//! over HTTP.

use emberbase::{Config, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key of functions' secrets every node of a test cluster shares (32 bytes, base64).
pub const SECRETS_KEY: &str = "c2VjcmV0cyBvZiB0aGUgdGVzdCBjbHVzdGVyIC4uLi4=";

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub key: String,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<Server>,
    pub dir: tempfile::TempDir,
}

/// A response: status, headers and body (parsed as JSON when it is JSON).
#[derive(Debug, Default)]
pub struct Resp {
    pub status: u16,
    pub json: Value,
    pub text: String,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and, for errors, that the body has the error shape.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        if status >= 400 {
            assert!(
                self.json["error"]["code"].is_string(),
                "error shape: {}",
                self.text
            );
            assert!(
                self.json["error"]["message"].is_string(),
                "error shape: {}",
                self.text
            );
        }
        self
    }

    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        let resp = self.expect(status);
        assert_eq!(resp.code(), code, "body: {}", resp.text);
        resp
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// Sends a request and collects the response, whatever its status.
pub fn send(req: ureq::Request, body: Option<&[u8]>) -> Resp {
    let result = match body {
        Some(bytes) => req.send_bytes(bytes),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|n| response.header(&n).map(|v| (n.clone(), v.to_string())))
        .collect();
    let text = response.into_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        json,
        text,
        headers,
    }
}

/// Whether the suite runs on the cluster's backends: `EB_TEST_BACKEND=cluster` starts every
/// test server on a fresh PostgreSQL database and S3 bucket instead of sled and a directory.
pub fn cluster_backend() -> bool {
    std::env::var("EB_TEST_BACKEND").as_deref() == Ok("cluster")
}

/// The name of the file that records a test server's database and bucket.
pub const BACKEND_MARKER: &str = ".test-backend";

/// Points a test server's config at a database and a bucket of its own: new ones the first
/// time, the same ones when it restarts on the same data directory.
fn on_cluster_backend(config: &mut Config, dir: &Path) {
    let marker = dir.join(BACKEND_MARKER);
    let (store, files) = match std::fs::read_to_string(&marker) {
        Ok(saved) => {
            let (store, files) = saved.split_once('\n').unwrap();
            (store.to_string(), files.to_string())
        }
        Err(_) => {
            let store = crate::pg::database().expect("EB_TEST_BACKEND=cluster needs PostgreSQL");
            let files = crate::s3::server()
                .expect("EB_TEST_BACKEND=cluster needs SeaweedFS")
                .bucket();
            std::fs::write(&marker, format!("{store}\n{files}")).unwrap();
            (store, files)
        }
    };
    config.store.url = store;
    config.files.url = files;
    config.files.access_key_id = crate::s3::ACCESS_KEY.into();
    config.files.secret_access_key = crate::s3::SECRET_KEY.into();
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_built(configure, |builder, _| builder)
    }

    /// Starts a server whose builder `build` adjusts (given the data directory).
    pub fn start_built(
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(emberbase::ServerBuilder, &Path) -> emberbase::ServerBuilder,
    ) -> TestServer {
        Self::start_on(tempfile::tempdir().unwrap(), configure, build)
    }

    /// Starts a server on a data directory an earlier one left (see [`TestServer::stop`]).
    pub fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(dir, configure, |builder, _| builder)
    }

    /// Shuts the server down gracefully and hands over its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        if let (Some(rt), Some(server)) = (self.runtime.take(), self.server.take()) {
            rt.block_on(server.shutdown());
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    fn start_on(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Config),
        build: impl FnOnce(emberbase::ServerBuilder, &Path) -> emberbase::ServerBuilder,
    ) -> TestServer {
        let mut config = Config::default();
        config.server.workers = 2;
        config.server.shutdown_timeout_secs = 5;
        // Tests sign up many users and ask for many mails from one address; the throttling
        // tests put the shipped limits back.
        config.auth.signups_per_ip_per_hour = 100_000;
        config.auth.mails_per_address_per_hour = 100_000;
        config.auth.mail_requests_per_ip_per_hour = 100_000;
        configure(&mut config);
        if cluster_backend() && config.store.url.is_empty() {
            on_cluster_backend(&mut config, dir.path());
        }
        if !config.store.url.is_empty() && config.functions.secrets_key.is_empty() {
            config.functions.secrets_key = SECRETS_KEY.into();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let builder = emberbase::ServerBuilder::new(config)
            .data_dir(dir.path())
            .bind("127.0.0.1:0");
        let server = runtime
            .block_on(build(builder, dir.path()).start())
            .unwrap();
        let key = std::fs::read_to_string(dir.path().join("service_key"))
            .unwrap_or_default()
            .trim()
            .to_string();
        TestServer {
            addr: server.local_addr(),
            key,
            runtime: Some(runtime),
            server: Some(server),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }

    /// A request with no credentials.
    pub fn anon(&self, method: &str, path: &str) -> ureq::Request {
        agent().request(method, &self.url(path))
    }

    /// A request with the service key (an admin).
    pub fn admin(&self, method: &str, path: &str) -> ureq::Request {
        self.anon(method, path)
            .set("Authorization", &format!("Bearer {}", self.key))
    }

    pub fn get(&self, path: &str) -> Resp {
        send(self.admin("GET", path), None)
    }

    pub fn delete(&self, path: &str) -> Resp {
        send(self.admin("DELETE", path), None)
    }

    pub fn json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let req = self
            .admin(method, path)
            .set("Content-Type", "application/json");
        send(req, Some(body.to_string().as_bytes()))
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.json("POST", path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.json("PUT", path, body)
    }

    pub fn patch(&self, path: &str, body: &Value) -> Resp {
        self.json("PATCH", path, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let (Some(rt), Some(server)) = (self.runtime.take(), self.server.take()) {
            rt.block_on(server.shutdown());
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// `application/x-www-form-urlencoded`-safe query encoding of one value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A request with a bearer token and an optional JSON body.
pub fn with_token(
    srv: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Resp {
    let mut req = srv
        .anon(method, path)
        .set("Authorization", &format!("Bearer {token}"));
    if body.is_some() {
        req = req.set("Content-Type", "application/json");
    }
    send(req, body.map(|b| b.to_string().into_bytes()).as_deref())
}

/// Gives a collection the rules the server shipped with before its defaults became private:
/// any signed-in user reads and creates, owners update and delete. For tests about sharing,
/// realtime fan-out and the like, which need documents that others can read.
pub fn share(srv: &TestServer, collection: &str) {
    srv.put(
        &format!("/v1/admin/collections/{collection}"),
        &serde_json::json!({"rules": {
            "read": "auth != null",
            "create": "auth != null",
            "update": "auth != null && doc.owner == auth.id",
            "delete": "auth != null && doc.owner == auth.id",
        }}),
    )
    .expect(200);
}

/// Cheap password hashing, so that tests that sign up many users stay fast.
pub fn fast(config: &mut Config) {
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
}

/// Signs up a user with a fixed good password; returns the session.
pub fn signup(srv: &TestServer, email: &str) -> Value {
    let body = serde_json::json!({"email": email, "password": "correct horse battery"});
    let req = srv
        .anon("POST", "/v1/auth/signup")
        .set("Content-Type", "application/json");
    send(req, Some(body.to_string().as_bytes()))
        .expect(201)
        .json
}

/// Logs in a user that [`signup`] created; returns its access token.
pub fn login_token(srv: &TestServer, email: &str) -> String {
    let body = serde_json::json!({"email": email, "password": "correct horse battery"});
    let req = srv
        .anon("POST", "/v1/auth/login")
        .set("Content-Type", "application/json");
    send(req, Some(body.to_string().as_bytes()))
        .expect(200)
        .json["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Signs up a user with a fixed good password; returns its access token.
pub fn signup_token(srv: &TestServer, email: &str) -> String {
    signup(srv, email)["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends raw bytes on a fresh connection and reads until the server closes it: for requests
/// an HTTP client would normalise or refuse to send. Returns the status and the whole response.
pub fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends `head` (a request with `Transfer-Encoding: chunked`), then a body of `total` bytes in
/// 64 KiB chunks at a steady pace (5 ms apart), while reading the response. Returns the
/// response's head and whether the server stopped reading before the body ended, as it must
/// once it has refused the body.
pub fn stream_until_refused(
    addr: std::net::SocketAddr,
    head: &str,
    total: usize,
) -> (String, bool) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'z'; 64 * 1024];
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        for _ in 0..total.div_ceil(chunk.len()) {
            if writer.write_all(&framed).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let stopped = sender.join().unwrap();
    (String::from_utf8_lossy(&response).into_owned(), stopped)
}

/// A memory cgroup (v1) that the server runs in, so that a regression cannot take the machine
/// down with it. Removed when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(limit: u64) -> Option<Cgroup> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/memory/emberbase-test-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir(&path).ok()?;
        let cgroup = Cgroup(path);
        std::fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(cgroup)
    }

    fn add(&self, pid: u32) -> bool {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).is_ok()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The real binary, its log in a file, in a memory cgroup of `memory_limit` bytes when given.
pub struct Spawned {
    child: Child,
    pub addr: String,
    pub key: String,
    log: PathBuf,
    pub dir: tempfile::TempDir,
    _cgroup: Option<Cgroup>,
}

impl Spawned {
    /// `None` (with a note) when a memory limit is asked for and no memory cgroup can be
    /// made: reproductions that once took gigabytes must not run unbounded on a shared machine.
    pub fn start(env: &[(&str, &str)], memory_limit: Option<u64>) -> Option<Spawned> {
        Self::start_in(tempfile::tempdir().unwrap(), env, memory_limit)
    }

    /// Starts on the data directory under `dir` (a new one, or one a stopped server left).
    pub fn start_in(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        memory_limit: Option<u64>,
    ) -> Option<Spawned> {
        let cgroup = match memory_limit.map(Cgroup::new) {
            None => None,
            Some(Some(cgroup)) => Some(cgroup),
            Some(None) => {
                skip("no memory cgroup could be made (needs root and cgroup v1)");
                return None;
            }
        };
        let log = dir.path().join("server.log");
        let data = dir.path().join("data");
        let mut command = Command::new(env!("CARGO_BIN_EXE_emberbase"));
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("EMBERBASE_LOG__LEVEL", "info")
            .env("EMBERBASE_AUTH__ARGON2_MEMORY_KIB", "1024")
            .env("EMBERBASE_AUTH__ARGON2_ITERATIONS", "1")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        if cgroup.as_ref().is_some_and(|c| !c.add(child.id())) {
            let _ = child.kill();
            let _ = child.wait();
            skip("the server could not be put in a memory cgroup");
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = std::fs::read_to_string(data.join("service_key"))
            .unwrap()
            .trim()
            .to_string();
        Some(Spawned {
            child,
            addr,
            key,
            log,
            dir,
            _cgroup: cgroup,
        })
    }

    /// Stops the server (`kill -9`) and hands back its directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin(&self, method: &str, path: &str) -> ureq::Request {
        agent()
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.key))
    }

    pub fn json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let req = self
            .admin(method, path)
            .set("Content-Type", "application/json");
        send(req, Some(body.to_string().as_bytes()))
    }

    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.dir.path().join("data"))
    }

    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The server's resident memory, from `/proc`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// The sum of every series of a Prometheus metric.
    pub fn metric(&self, name: &str) -> f64 {
        metric(
            &send(self.admin("GET", "/metrics"), None).expect(200).text,
            name,
        )
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A small tmpfs, mounted for the test and unmounted when dropped.
pub struct Tmpfs(pub tempfile::TempDir);

impl Tmpfs {
    /// `None` where mounting is not allowed (it needs root). `options` as for `mount -o`.
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Reports that the running test cannot do its work on this machine, and why. It writes to the
/// process's standard error directly, which the test harness does not capture, so the line
/// `SKIPPED <test>: <reason>` shows in the suite's output even though the test then passes.
///
/// On CI (`CI` set) a skip fails the test, unless its reason contains one of the
/// comma-separated phrases in `EB_ALLOW_SKIP`: `.ci/run` allows only what the machine it runs
/// on cannot do (for example "needs root"), and says so.
pub fn skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
    if std::env::var_os("CI").is_some() {
        let allowed = std::env::var("EB_ALLOW_SKIP").unwrap_or_default();
        assert!(
            allowed
                .split(',')
                .any(|phrase| !phrase.trim().is_empty() && reason.contains(phrase.trim())),
            "CI must run {test}, which was skipped: {reason}"
        );
    }
}

/// Opens the sled store of a stopped server's data directory, runs `edit` on it (to put there
/// what an earlier version would have left), and closes it.
pub fn edit_stopped_store<F, Fut>(dir: &Path, edit: F)
where
    F: FnOnce(emberbase::engine::sled::SledEngine) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use emberbase::engine::sled::{SledEngine, SledOptions};
    use emberbase::engine::Engine;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let options = SledOptions {
            path: dir.join("db"),
            cache_bytes: 1 << 20,
        };
        let engine = SledEngine::open(options, None).unwrap();
        edit(engine.clone()).await;
        engine.close().await.unwrap();
    });
}

/// Whether rustup has the `wasm32-unknown-unknown` target, which Rust guests build for; a
/// test that needs it and finds it missing says SKIPPED with a reason CI may allow.
pub fn wasm32_target() -> bool {
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
        .unwrap_or(false);
    if !installed {
        skip("Rust guests need `rustup target add wasm32-unknown-unknown`");
    }
    installed
}

/// Held while a test builds a Rust guest: two release builds of a guest at once (each
/// compiling serde_json with LTO) starve the servers of the tests running beside them.
pub fn guest_build() -> std::sync::MutexGuard<'static, ()> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BUILD.lock().unwrap_or_else(|p| p.into_inner())
}

/// A service the tests share (PostgreSQL, SeaweedFS), started by `start` on first use. `None`
/// when it cannot run here, after the calling test says SKIPPED and why; on CI (`CI` set) that
/// fails the test instead, since CI installs every service.
pub fn started_once<T>(
    cell: &'static std::sync::OnceLock<Result<T, String>>,
    start: fn() -> Result<T, String>,
    what: &str,
) -> Option<&'static T> {
    match cell.get_or_init(start) {
        Ok(service) => Some(service),
        Err(reason) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs {what}: {reason}"
            );
            skip(reason);
            None
        }
    }
}

/// The ids in a list response, in its order.
pub fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// Starts `command` (a shell that runs a server, then waits on `read`, then stops it) with its
/// standard input on a pipe, and returns the pipe's writing end: the server lives until the
/// test process exits and the pipe closes.
pub fn run_for_life(mut command: Command) -> Result<std::process::ChildStdin, String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or_else(|| "no pipe to the server".to_string())
}

/// `N` distinct loopback ports for a service a test starts on fixed ports (PostgreSQL,
/// SeaweedFS), free when chosen and below the kernel's ephemeral range. A port taken from that
/// range (`bind` to port 0) can be handed to a client socket of the busy test process before the
/// service binds it, or between a stop and a restart; ports below it only collide with another
/// service that chose the same one, which its start then reports.
pub fn service_ports<const N: usize>() -> [u16; N] {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10000;
    let span = u64::from(ephemeral_low.saturating_sub(LOWEST).max(1000));
    let random = RandomState::new();
    let mut ports = [0; N];
    let mut chosen = 0;
    let mut draw = 0u64;
    while chosen < N {
        let port = LOWEST + (random.hash_one(draw) % span) as u16;
        draw += 1;
        if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports[chosen] = port;
            chosen += 1;
        }
    }
    ports
}

/// Runs the binary with `args`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emberbase"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `npm ci` in `dir` (a folder of the repository with a `package-lock.json`) unless its
/// `node_modules` already holds `marker`: once per test run, and one folder at a time, so that
/// tests sharing a folder (the SDK's, which the console builds from) never install into it at
/// once.
pub fn npm_ci(dir: &Path, marker: &str) -> Result<(), String> {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if done.iter().any(|d| d == dir) || dir.join("node_modules").join(marker).exists() {
        done.push(dir.to_path_buf());
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .map_err(|e| format!("npm is needed in {} ({e})", dir.display()))?;
    if !status.success() {
        return Err(format!("npm ci failed in {}", dir.display()));
    }
    done.push(dir.to_path_buf());
    Ok(())
}
