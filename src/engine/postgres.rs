//! The cluster backend: every keyspace in one PostgreSQL table, shared by any number of
//! Emberbase nodes.
//!
//! **Layout.** `eb_kv (ks, k, v)` holds every key, its primary key `(ks, k)` ordering keys
//! bytewise as the trait requires (`bytea` compares as `memcmp`). `eb_seq` is one row, the
//! sequence of the newest change. `eb_schema` records the migrations applied; they run under
//! an advisory lock, so nodes starting together migrate once.
//!
//! **Commits.** A transaction reads through the pool, buffers its writes and records what it
//! read, as on sled. `commit` hands it to the node's committer task, which takes every
//! transaction waiting (up to 256) as one group and runs one PostgreSQL transaction for it:
//! lock the `eb_seq` row (the cluster's commit lock: a group on another node waits here), read
//! the current value of every key the group read, check each transaction in order against those
//! values and the group's earlier writes (optimistic concurrency, exactly as on sled), give the
//! change records of the transactions that passed their dense sequence numbers, write
//! everything in two statements, advance `eb_seq`, `NOTIFY`, and commit. The row lock is held
//! until the commit is durable, so sequence numbers are dense and in commit order across every
//! node: a reader that sees `eb_seq = n` sees every change up to `n`.
//!
//! **Durable before visible.** PostgreSQL shows a commit to other sessions only once it is
//! flushed (`synchronous_commit` on, its default), so reads need no correction here.
//!
//! **Watching.** Each node follows `eb_seq` from its own commits, from a `LISTEN` connection
//! woken by the commits of other nodes, and from a timer that reads it whatever happens: a lost
//! notification costs latency, never a change.
//!
//! **TLS.** With `sslmode=require` in the URL, connections use TLS (rustls) and verify the
//! server's certificate against the system's roots, or against `ca_file` when given (a private
//! CA, a self-signed server); other modes connect in the clear.

use super::overlay::{self, in_range};
use super::{
    Bytes, ChangeAppend, Committed, Direction, Engine, EngineError, Entry, KeyRange, Keyspace,
    OnDurable, RangeScan, Snapshot, Transaction,
};
use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Timeouts,
};
use futures_util::future::try_join_all;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The most transactions the committer writes as one PostgreSQL transaction.
const MAX_GROUP: usize = 256;

/// The channel commits are announced on.
const CHANNEL: &str = "emberbase_changes";

/// How long a read or a group commit may take before it fails as unavailable (a database that
/// hangs rather than refuses: requests answer `503` instead of waiting with it).
const TIMEOUT: Duration = Duration::from_secs(10);

/// `work`, failed as an I/O error if it takes longer than [`TIMEOUT`].
async fn timed<T>(
    work: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(EngineError::Io("postgresql did not answer in time".into())))
}

/// The advisory lock key that serialises migrations ("emberbas" in ASCII).
const MIGRATION_LOCK: i64 = 0x656d_6265_7262_6173;

/// Each migration, in order; `eb_schema.version` says how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE eb_kv (
        ks smallint NOT NULL,
        k bytea NOT NULL,
        v bytea NOT NULL,
        PRIMARY KEY (ks, k)
    );
    CREATE TABLE eb_seq (id smallint PRIMARY KEY, last bigint NOT NULL);
    INSERT INTO eb_seq VALUES (1, 0);"];

/// How the PostgreSQL backend is opened.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` (or a key=value connection string).
    pub url: String,
    /// Connections in the pool, besides the listener's.
    pub pool_size: usize,
    /// How long a request waits for a connection, or for a new one to connect, before it
    /// fails.
    pub connect_timeout: Duration,
    /// Follow other nodes' commits through `LISTEN/NOTIFY` (else the timer alone).
    pub listen: bool,
    /// How often `eb_seq` is read whatever the notifications say.
    pub poll_interval: Duration,
    /// A PEM file of the certificates that may sign the server's, for TLS; `None`: the
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            listen: true,
            poll_interval: Duration::from_millis(250),
            ca_file: None,
        }
    }

    /// The options `[store]` of the configuration sets.
    pub fn from_config(store: &crate::config::StoreConfig) -> PostgresOptions {
        let mut options = PostgresOptions::new(&store.url);
        options.pool_size = store.pool_size;
        options.listen = store.notify;
        options.poll_interval = Duration::from_millis(store.poll_ms);
        options.ca_file =
            (!store.ca_file.is_empty()).then(|| std::path::PathBuf::from(&store.ca_file));
        options
    }
}

fn ks_id(ks: Keyspace) -> i16 {
    // The letters the sled backend uses as prefixes, so that both layouts read alike.
    (match ks {
        Keyspace::Documents => b'D',
        Keyspace::Indexes => b'I',
        Keyspace::Changes => b'C',
        Keyspace::History => b'H',
        Keyspace::Meta => b'M',
        Keyspace::System => b'S',
        Keyspace::Files => b'F',
    }) as i16
}

/// How connections are made: in the clear, or with TLS.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

impl Tls {
    /// TLS when the URL asks for it (`sslmode=require`), with the roots to verify against.
    fn for_config(
        config: &tokio_postgres::Config,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Tls, EngineError> {
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Tls::None);
        }
        let bad = |e: String| EngineError::Io(format!("postgresql TLS: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Rustls(MakeRustlsConnect::new(client)))
    }

    fn manager(&self, config: tokio_postgres::Config, manager: ManagerConfig) -> Manager {
        match self {
            Tls::None => Manager::from_config(config, NoTls, manager),
            Tls::Rustls(tls) => Manager::from_config(config, tls.clone(), manager),
        }
    }
}

fn db_error(e: tokio_postgres::Error) -> EngineError {
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            EngineError::Conflict
        }
        _ => EngineError::Io(format!("postgresql: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> EngineError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => EngineError::Io(format!("postgresql: {other}")),
    }
}

/// A key of one keyspace, as the committer tracks it.
type FullKey = (i16, Vec<u8>);

/// The SQL of a scan: bounded or open-ended, in either direction.
fn scan_sql(bounded: bool, direction: Direction) -> &'static str {
    match (bounded, direction) {
        (true, Direction::Forward) => {
            "SELECT k, v FROM eb_kv WHERE ks = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4"
        }
        (true, Direction::Reverse) => {
            "SELECT k, v FROM eb_kv WHERE ks = $1 AND k >= $2 AND k < $3 ORDER BY k DESC LIMIT $4"
        }
        (false, Direction::Forward) => {
            "SELECT k, v FROM eb_kv WHERE ks = $1 AND k >= $2 ORDER BY k LIMIT $3"
        }
        (false, Direction::Reverse) => {
            "SELECT k, v FROM eb_kv WHERE ks = $1 AND k >= $2 ORDER BY k DESC LIMIT $3"
        }
    }
}

fn entries(rows: Vec<Row>) -> Result<Vec<Entry>, EngineError> {
    rows.into_iter()
        .map(|row| {
            let k: Vec<u8> = row.try_get(0).map_err(db_error)?;
            let v: Vec<u8> = row.try_get(1).map_err(db_error)?;
            Ok((Bytes::from(k), Bytes::from(v)))
        })
        .collect()
}

/// Reads at most `limit` entries of a range through `client`.
async fn scan_on(
    client: &impl GenericClient,
    ks: i16,
    range: &KeyRange,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Entry>, EngineError> {
    timed(scan_untimed(client, ks, range, direction, limit)).await
}

async fn scan_untimed(
    client: &impl GenericClient,
    ks: i16,
    range: &KeyRange,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Entry>, EngineError> {
    if range.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = scan_sql(range.end.is_some(), direction);
    let statement = client.prepare_cached(sql).await.map_err(db_error)?;
    let rows = match &range.end {
        Some(end) => {
            client
                .query(&statement, &[&ks, &range.start, end, &limit])
                .await
        }
        None => client.query(&statement, &[&ks, &range.start, &limit]).await,
    };
    entries(rows.map_err(db_error)?)
}

/// One scan of [`scan_ranges`].
struct Ranged<'a> {
    ks: i16,
    range: &'a KeyRange,
    direction: Direction,
    limit: usize,
}

/// The kinds of scan, one statement each in [`scan_ranges`]: bounded or open-ended, in either
/// direction.
const SCAN_KINDS: [(bool, Direction); 4] = [
    (true, Direction::Forward),
    (true, Direction::Reverse),
    (false, Direction::Forward),
    (false, Direction::Reverse),
];

/// The SQL of every scan of one kind at once: each element of the arrays is one scan, and each
/// entry comes back with the scan's position in them.
fn scan_many_sql(bounded: bool, direction: Direction) -> &'static str {
    match (bounded, direction) {
        (true, Direction::Forward) => {
            "SELECT r.i, e.k, e.v \
             FROM unnest($1::int2[], $2::bytea[], $3::bytea[], $4::int8[]) \
                 WITH ORDINALITY AS r(ks, lo, hi, n, i) \
             CROSS JOIN LATERAL (SELECT k, v FROM eb_kv \
                 WHERE ks = r.ks AND k >= r.lo AND k < r.hi ORDER BY k LIMIT r.n) e"
        }
        (true, Direction::Reverse) => {
            "SELECT r.i, e.k, e.v \
             FROM unnest($1::int2[], $2::bytea[], $3::bytea[], $4::int8[]) \
                 WITH ORDINALITY AS r(ks, lo, hi, n, i) \
             CROSS JOIN LATERAL (SELECT k, v FROM eb_kv \
                 WHERE ks = r.ks AND k >= r.lo AND k < r.hi ORDER BY k DESC LIMIT r.n) e"
        }
        (false, Direction::Forward) => {
            "SELECT r.i, e.k, e.v \
             FROM unnest($1::int2[], $2::bytea[], $3::int8[]) WITH ORDINALITY AS r(ks, lo, n, i) \
             CROSS JOIN LATERAL (SELECT k, v FROM eb_kv \
                 WHERE ks = r.ks AND k >= r.lo ORDER BY k LIMIT r.n) e"
        }
        (false, Direction::Reverse) => {
            "SELECT r.i, e.k, e.v \
             FROM unnest($1::int2[], $2::bytea[], $3::int8[]) WITH ORDINALITY AS r(ks, lo, n, i) \
             CROSS JOIN LATERAL (SELECT k, v FROM eb_kv \
                 WHERE ks = r.ks AND k >= r.lo ORDER BY k DESC LIMIT r.n) e"
        }
    }
}

/// The entries of each of `scans`, in their order, as [`scan_untimed`] reads one: a statement
/// per kind of scan among them (at most four), sent together.
async fn scan_ranges(
    client: &impl GenericClient,
    scans: &[Ranged<'_>],
) -> Result<Vec<Vec<Entry>>, EngineError> {
    // The positions in `scans` of each kind's scans.
    let mut kinds: [Vec<usize>; 4] = Default::default();
    for (at, scan) in scans.iter().enumerate() {
        if scan.range.is_empty() || scan.limit == 0 {
            continue;
        }
        let bounded = scan.range.end.is_some();
        if let Some(kind) = SCAN_KINDS
            .iter()
            .position(|&kind| kind == (bounded, scan.direction))
        {
            kinds[kind].push(at);
        }
    }
    let queries = SCAN_KINDS
        .iter()
        .zip(&kinds)
        .filter(|(_, members)| !members.is_empty())
        .map(|(&(bounded, direction), members)| async move {
            let statement = client
                .prepare_cached(scan_many_sql(bounded, direction))
                .await
                .map_err(db_error)?;
            let of = |at: &usize| &scans[*at];
            let ks: Vec<i16> = members.iter().map(|at| of(at).ks).collect();
            let lo: Vec<&[u8]> = members
                .iter()
                .map(|at| of(at).range.start.as_slice())
                .collect();
            let n: Vec<i64> = members
                .iter()
                .map(|at| i64::try_from(of(at).limit).unwrap_or(i64::MAX))
                .collect();
            let rows = if bounded {
                let hi: Vec<&[u8]> = members
                    .iter()
                    .map(|at| of(at).range.end.as_deref().unwrap_or_default())
                    .collect();
                client.query(&statement, &[&ks, &lo, &hi, &n]).await
            } else {
                client.query(&statement, &[&ks, &lo, &n]).await
            };
            Ok::<_, EngineError>((members, rows.map_err(db_error)?))
        });
    let mut found = vec![Vec::new(); scans.len()];
    for (members, rows) in try_join_all(queries).await? {
        for row in rows {
            let i: i64 = row.try_get(0).map_err(db_error)?;
            let k: Vec<u8> = row.try_get(1).map_err(db_error)?;
            let v: Vec<u8> = row.try_get(2).map_err(db_error)?;
            let at = usize::try_from(i - 1)
                .ok()
                .and_then(|i| members.get(i))
                .ok_or_else(|| EngineError::Io(format!("a scan came back as number {i}")))?;
            found[*at].push((Bytes::from(k), Bytes::from(v)));
        }
    }
    // A statement's rows need not come in each scan's order.
    for (entries, scan) in found.iter_mut().zip(scans) {
        match scan.direction {
            Direction::Forward => entries.sort_by(|a, b| a.0.cmp(&b.0)),
            Direction::Reverse => entries.sort_by(|a, b| b.0.cmp(&a.0)),
        }
    }
    Ok(found)
}

async fn get_on(
    client: &impl GenericClient,
    ks: i16,
    key: &[u8],
) -> Result<Option<Bytes>, EngineError> {
    timed(get_untimed(client, ks, key)).await
}

/// The values of `keys` in their order (`None` for an absent one), in one statement.
async fn get_many_on(
    client: &impl GenericClient,
    ks: i16,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Bytes>>, EngineError> {
    let read = async {
        let statement = client
            .prepare_cached("SELECT k, v FROM eb_kv WHERE ks = $1 AND k = ANY($2::bytea[])")
            .await
            .map_err(db_error)?;
        let wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let rows = client
            .query(&statement, &[&ks, &wanted])
            .await
            .map_err(db_error)?;
        let found: std::collections::HashMap<Bytes, Bytes> = entries(rows)?.into_iter().collect();
        Ok(keys
            .iter()
            .map(|k| found.get(k.as_slice()).cloned())
            .collect())
    };
    timed(read).await
}

async fn get_untimed(
    client: &impl GenericClient,
    ks: i16,
    key: &[u8],
) -> Result<Option<Bytes>, EngineError> {
    let statement = client
        .prepare_cached("SELECT v FROM eb_kv WHERE ks = $1 AND k = $2")
        .await
        .map_err(db_error)?;
    let row = client
        .query_opt(&statement, &[&ks, &key])
        .await
        .map_err(db_error)?;
    match row {
        Some(row) => {
            let v: Vec<u8> = row.try_get(0).map_err(db_error)?;
            Ok(Some(Bytes::from(v)))
        }
        None => Ok(None),
    }
}

/// A range a transaction scanned, and what it saw.
struct ScanRead {
    ks: i16,
    range: KeyRange,
    direction: Direction,
    limit: usize,
    seen: Vec<Entry>,
}

/// A transaction handed to the committer.
struct Job {
    reads: Vec<(FullKey, Option<Bytes>)>,
    scans: Vec<ScanRead>,
    expects: Vec<(FullKey, Option<Vec<u8>>)>,
    writes: BTreeMap<FullKey, Option<Vec<u8>>>,
    adds: Vec<(FullKey, i64)>,
    changes: Vec<ChangeAppend>,
    on_durable: Option<OnDurable>,
    reply: oneshot::Sender<Result<Option<u64>, EngineError>>,
}

/// The group's writes so far, per keyspace, as the overlay reads them.
type GroupWrites = BTreeMap<i16, BTreeMap<Vec<u8>, Option<Bytes>>>;

struct Inner {
    pool: Pool,
    seq: watch::Sender<u64>,
    commits: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The PostgreSQL backend (see the module documentation).
pub struct PostgresEngine {
    inner: Arc<Inner>,
}

impl PostgresEngine {
    /// Connects, creates or migrates the schema, and starts the committer and the watcher.
    pub async fn open(options: PostgresOptions) -> Result<PostgresEngine, EngineError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| EngineError::Io(format!("invalid store.url: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("emberbase");
        let tls = Tls::for_config(&config, options.ca_file.as_deref())?;
        let manager = tls.manager(
            config.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .timeouts(Timeouts {
                wait: Some(options.connect_timeout),
                create: Some(options.connect_timeout),
                recycle: Some(options.connect_timeout),
            })
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| EngineError::Io(format!("postgresql pool: {e}")))?;
        migrate(&pool).await?;
        let last = read_seq(&pool).await?;
        let (seq, _) = watch::channel(last);
        let (commits, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pool,
            seq,
            commits: Mutex::new(Some(commits)),
            tasks: Mutex::new(Vec::new()),
        });
        let committer = tokio::spawn(run_committer(inner.clone(), queue));
        let poller = tokio::spawn(run_poller(inner.clone(), options.poll_interval));
        let mut tasks = vec![committer, poller];
        if options.listen {
            tasks.push(tokio::spawn(run_listener(inner.clone(), config, tls)));
        }
        *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(PostgresEngine { inner })
    }
}

impl Inner {
    async fn client(&self) -> Result<Object, EngineError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Moves the watched sequence forward (never back).
    fn advance(&self, last: u64) {
        self.seq.send_if_modified(|current| {
            if last > *current {
                *current = last;
                true
            } else {
                false
            }
        });
    }
}

async fn read_seq(pool: &Pool) -> Result<u64, EngineError> {
    let client = pool.get().await.map_err(pool_error)?;
    let row = client
        .query_one("SELECT last FROM eb_seq WHERE id = 1", &[])
        .await
        .map_err(db_error)?;
    let last: i64 = row.try_get(0).map_err(db_error)?;
    Ok(last as u64)
}

/// Applies the migrations not yet applied, under an advisory lock held by one node at a time.
async fn migrate(pool: &Pool) -> Result<(), EngineError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let txn = client.transaction().await.map_err(db_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS eb_schema (version integer NOT NULL)")
        .await
        .map_err(db_error)?;
    let applied: i64 = match txn
        .query_opt("SELECT version::bigint FROM eb_schema", &[])
        .await
        .map_err(db_error)?
    {
        Some(row) => row.try_get(0).map_err(db_error)?,
        None => {
            txn.execute("INSERT INTO eb_schema VALUES (0)", &[])
                .await
                .map_err(db_error)?;
            0
        }
    };
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(EngineError::Corrupt(format!(
            "the database has schema version {applied}, newer than this emberbase knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        txn.batch_execute(sql).await.map_err(db_error)?;
        let version = i as i32 + 1;
        txn.execute("UPDATE eb_schema SET version = $1", &[&version])
            .await
            .map_err(db_error)?;
        tracing::info!(version, "postgresql schema migrated");
    }
    txn.commit().await.map_err(db_error)
}

/// Takes every waiting transaction as a group and commits it, until the engine closes.
async fn run_committer(inner: Arc<Inner>, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&inner, group).await;
    }
}

/// What the committer decided for one transaction of a group.
struct Decided {
    job: Job,
    /// The sequence of its first change, if it passed and appended any.
    passed: Option<Option<u64>>,
}

async fn commit_group(inner: &Inner, jobs: Vec<Job>) {
    let mut decided: Vec<Decided> = jobs
        .into_iter()
        .map(|job| Decided { job, passed: None })
        .collect();
    // A timeout leaves the outcome unknown, like a lost connection: the commits fail, and
    // whatever did commit is read back from the database, never acknowledged twice.
    match timed(write_group(inner, &mut decided)).await {
        Ok(last) => {
            inner.advance(last);
            for d in decided {
                let answer = match d.passed {
                    Some(first_seq) => {
                        if let (Some(callback), Some(seq)) = (d.job.on_durable, first_seq) {
                            callback(seq);
                        }
                        Ok(first_seq)
                    }
                    None => Err(EngineError::Conflict),
                };
                let _ = d.job.reply.send(answer);
            }
        }
        Err(error) => {
            for d in decided {
                let _ = d.job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// The statements of a group commit, prepared once per connection (deadpool caches them).
const LOCK_SEQ: &str = "SELECT last FROM eb_seq WHERE id = 1 FOR UPDATE";
const READ_KEYS: &str =
    "SELECT ks, k, v FROM eb_kv WHERE (ks, k) IN (SELECT * FROM unnest($1::int2[], $2::bytea[]))";
const PUT_KEYS: &str =
    "INSERT INTO eb_kv (ks, k, v) SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[]) \
     ON CONFLICT (ks, k) DO UPDATE SET v = excluded.v";
const DELETE_KEYS: &str =
    "DELETE FROM eb_kv WHERE (ks, k) IN (SELECT * FROM unnest($1::int2[], $2::bytea[]))";
const ADVANCE_SEQ: &str = "UPDATE eb_seq SET last = $1 WHERE id = 1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Validates and writes a group in one PostgreSQL transaction; returns the new `eb_seq`.
///
/// Round trips are what a group costs, and every transaction waiting meanwhile waits for them:
/// the statements are prepared once per connection, and those that do not need an answer
/// before the next are sent together (PostgreSQL runs a pipeline in order, so the reads still
/// run after the lock is taken). Besides `BEGIN` and `COMMIT`, a group takes two round trips:
/// the lock with every read, then every write.
async fn write_group(inner: &Inner, group: &mut [Decided]) -> Result<u64, EngineError> {
    let mut client = inner.client().await?;
    let txn = client.transaction().await.map_err(db_error)?;
    let prepare = |sql: &'static str| {
        let txn = &txn;
        async move { txn.prepare_cached(sql).await.map_err(db_error) }
    };
    let (lock_seq, read_keys, put_keys, delete_keys, advance_seq, notify) = futures_util::try_join!(
        prepare(LOCK_SEQ),
        prepare(READ_KEYS),
        prepare(PUT_KEYS),
        prepare(DELETE_KEYS),
        prepare(ADVANCE_SEQ),
        prepare(NOTIFY),
    )?;

    // The current value of every key the group read or expects.
    let mut wanted: Vec<&FullKey> = Vec::new();
    for d in group.iter() {
        wanted.extend(d.job.reads.iter().map(|(k, _)| k));
        wanted.extend(d.job.expects.iter().map(|(k, _)| k));
        wanted.extend(d.job.adds.iter().map(|(k, _)| k));
    }
    let wanted_ks: Vec<i16> = wanted.iter().map(|(ks, _)| *ks).collect();
    let wanted_k: Vec<&[u8]> = wanted.iter().map(|(_, k)| k.as_slice()).collect();
    let lock = async {
        let row = txn.query_one(&lock_seq, &[]).await.map_err(db_error)?;
        row.try_get::<_, i64>(0).map_err(db_error)
    };
    let stored = async {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        txn.query(&read_keys, &[&wanted_ks, &wanted_k])
            .await
            .map_err(db_error)
    };
    // The live rows each scan's check needs, read before any group write is known: enough
    // that the group's writes, laid over them, still show each scan's whole page.
    let written: BTreeSet<(i16, &[u8])> = group
        .iter()
        .flat_map(|d| d.job.writes.keys())
        .map(|(ks, k)| (*ks, k.as_slice()))
        .collect();
    let checks: Vec<Ranged> = group
        .iter()
        .flat_map(|d| &d.job.scans)
        .map(|scan| Ranged {
            ks: scan.ks,
            range: &scan.range,
            direction: scan.direction,
            limit: overlay::fetch_for(scan.limit, written_in(&written, scan.ks, &scan.range)),
        })
        .collect();
    let scans = scan_ranges(&txn, &checks);
    let (last, stored, scans) = futures_util::try_join!(lock, stored, scans)?;
    let stored = stored_values(stored)?;
    let mut next_seq = last as u64 + 1;
    let fetched: Vec<usize> = checks.iter().map(|check| check.limit).collect();
    let mut scans = fetched.into_iter().zip(scans);

    let mut writes = GroupWrites::new();
    for d in group.iter_mut() {
        let job = &d.job;
        let current = |key: &FullKey, writes: &GroupWrites| -> Option<Bytes> {
            match writes.get(&key.0).and_then(|w| w.get(&key.1)) {
                Some(value) => value.clone(),
                None => stored.get(key).cloned(),
            }
        };
        let mut valid = job
            .reads
            .iter()
            .all(|(key, seen)| current(key, &writes).as_deref() == seen.as_deref())
            && job
                .expects
                .iter()
                .all(|(key, want)| current(key, &writes).as_deref() == want.as_deref());
        for scan in &job.scans {
            let Some((fetch, rows)) = scans.next() else {
                return Err(EngineError::Io("a scan check went missing".into()));
            };
            if !valid {
                continue;
            }
            let empty = BTreeMap::new();
            let mine = writes.get(&scan.ks).unwrap_or(&empty);
            let pre_images = |r: &KeyRange| {
                in_range(mine, r)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            let (now, rest) = overlay::merge_page(
                &scan.range,
                scan.direction,
                scan.limit,
                fetch,
                rows,
                pre_images,
            );
            // One page always covers a scan's limit (see `fetch_for`); anything else is a
            // change, so the transaction runs again rather than trusting a partial check.
            valid = now == scan.seen && (rest.is_none() || now.len() == scan.limit);
        }
        if !valid {
            continue;
        }
        for ((ks, key), value) in &job.writes {
            writes
                .entry(*ks)
                .or_default()
                .insert(key.clone(), value.clone().map(Bytes::from));
        }
        for (key, delta) in &job.adds {
            let sum = crate::engine::counter_plus(current(key, &writes).as_deref(), *delta)?;
            writes
                .entry(key.0)
                .or_default()
                .insert(key.1.clone(), Some(Bytes::from(sum)));
        }
        let first = (!job.changes.is_empty()).then_some(next_seq);
        for change in &job.changes {
            let key = next_seq.to_be_bytes().to_vec();
            writes
                .entry(ks_id(Keyspace::Changes))
                .or_default()
                .insert(key, Some(Bytes::from(change.payload.clone())));
            for stamped in &change.stamped {
                writes.entry(ks_id(stamped.keyspace)).or_default().insert(
                    stamped.key(next_seq),
                    Some(Bytes::from(stamped.value.clone())),
                );
            }
            next_seq += 1;
        }
        d.passed = Some(first);
    }

    let mut put_ks = Vec::new();
    let mut put_k = Vec::new();
    let mut put_v = Vec::new();
    let mut del_ks = Vec::new();
    let mut del_k = Vec::new();
    for (ks, keys) in &writes {
        for (key, value) in keys {
            match value {
                Some(value) => {
                    put_ks.push(*ks);
                    put_k.push(key.as_slice());
                    put_v.push(value.as_ref());
                }
                None => {
                    del_ks.push(*ks);
                    del_k.push(key.as_slice());
                }
            }
        }
    }
    let new_last = next_seq - 1;
    let stored_last = new_last as i64;
    let payload = new_last.to_string();
    let advanced = new_last as i64 != last;
    let put = async {
        if !put_k.is_empty() {
            txn.execute(&put_keys, &[&put_ks, &put_k, &put_v])
                .await
                .map_err(db_error)?;
        }
        Ok(())
    };
    let delete = async {
        if !del_k.is_empty() {
            txn.execute(&delete_keys, &[&del_ks, &del_k])
                .await
                .map_err(db_error)?;
        }
        Ok(())
    };
    let advance = async {
        if advanced {
            txn.execute(&advance_seq, &[&stored_last])
                .await
                .map_err(db_error)?;
        }
        Ok(())
    };
    // Delivered when the transaction commits.
    let announce = async {
        if advanced {
            txn.execute(&notify, &[&CHANNEL, &payload])
                .await
                .map_err(db_error)?;
        }
        Ok::<_, EngineError>(())
    };
    futures_util::try_join!(put, delete, advance, announce)?;
    txn.commit().await.map_err(db_error)?;
    Ok(new_last)
}

/// The values of the rows `READ_KEYS` returned, by key.
fn stored_values(rows: Vec<Row>) -> Result<BTreeMap<FullKey, Bytes>, EngineError> {
    let mut out = BTreeMap::new();
    for row in rows {
        let ks: i16 = row.try_get(0).map_err(db_error)?;
        let k: Vec<u8> = row.try_get(1).map_err(db_error)?;
        let v: Vec<u8> = row.try_get(2).map_err(db_error)?;
        out.insert((ks, k), Bytes::from(v));
    }
    Ok(out)
}

/// How many of a group's written keys fall in a scanned range.
fn written_in(written: &BTreeSet<(i16, &[u8])>, ks: i16, range: &KeyRange) -> usize {
    if range.is_empty() {
        return 0;
    }
    let end = match (&range.end, ks.checked_add(1)) {
        (Some(end), _) => Bound::Excluded((ks, end.as_slice())),
        (None, Some(next)) => Bound::Excluded((next, &[][..])),
        (None, None) => Bound::Unbounded,
    };
    written
        .range((Bound::Included((ks, range.start.as_slice())), end))
        .count()
}

/// Reads `eb_seq` every `interval`: the fallback that delivers what notifications miss.
async fn run_poller(inner: Arc<Inner>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match read_seq(&inner.pool).await {
            Ok(last) => inner.advance(last),
            Err(e) => tracing::debug!(error = %e, "reading the change sequence failed"),
        }
    }
}

/// Listens for other nodes' commits on a connection of its own, reconnecting after failures.
async fn run_listener(inner: Arc<Inner>, config: tokio_postgres::Config, tls: Tls) {
    loop {
        let listened = match &tls {
            Tls::None => listen_once(&inner, &config, NoTls).await,
            Tls::Rustls(tls) => listen_once(&inner, &config, tls.clone()).await,
        };
        if let Err(e) = listened {
            tracing::warn!(error = %e, "the postgresql change listener stopped; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once<T>(
    inner: &Inner,
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<(), EngineError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(db_error)?;
    let (tx, mut notes) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    if tx.send(note.payload().parse::<u64>().ok()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listening = client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(db_error);
    if listening.is_ok() {
        // Whatever committed before the LISTEN took effect is read by the poller.
        while let Some(payload) = notes.recv().await {
            if let Some(last) = payload {
                inner.advance(last);
            }
        }
    }
    driver.abort();
    listening.map(drop)
}

#[async_trait]
impl Engine for PostgresEngine {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn stored_bytes(&self) -> Result<Option<u64>, EngineError> {
        let client = self.inner.client().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .map_err(db_error)?;
        let bytes: i64 = row.try_get(0).map_err(db_error)?;
        Ok(u64::try_from(bytes).ok())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let client = self.inner.client().await?;
        get_on(&client, ks_id(ks), key).await
    }

    async fn get_many(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.inner.client().await?;
        get_many_on(&client, ks_id(ks), keys).await
    }

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let client = self.inner.client().await?;
        scan_on(&client, ks_id(ks), range, direction, limit).await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>, EngineError> {
        if self.inner.is_closed() {
            return Err(EngineError::Closed);
        }
        Ok(Box::new(PostgresTransaction {
            inner: self.inner.clone(),
            reads: Vec::new(),
            scans: Vec::new(),
            expects: Vec::new(),
            writes: BTreeMap::new(),
            adds: Vec::new(),
            changes: Vec::new(),
        }))
    }

    async fn snapshot(&self) -> Result<Box<dyn Snapshot>, EngineError> {
        let client = self.inner.client().await?;
        // The snapshot is taken by the first statement after BEGIN.
        let begin =
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1");
        if let Err(e) = timed(async { begin.await.map_err(db_error) }).await {
            // Its state is unknown: the connection leaves the pool.
            drop(Object::take(client));
            return Err(e);
        }
        Ok(Box::new(PostgresSnapshot {
            client: Some(client),
        }))
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.inner.seq.subscribe()
    }

    async fn resume_sequence(&self) -> Result<u64, EngineError> {
        let client = self.inner.client().await?;
        let newest = client
            .query_opt(
                "SELECT k FROM eb_kv WHERE ks = $1 ORDER BY k DESC LIMIT 1",
                &[&ks_id(Keyspace::Changes)],
            )
            .await
            .map_err(db_error)?;
        let last = match newest {
            Some(row) => {
                let key: Vec<u8> = row.try_get(0).map_err(db_error)?;
                <[u8; 8]>::try_from(key.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| EngineError::Corrupt("a change key is not 8 bytes".into()))?
            }
            None => 0,
        };
        client
            .execute(
                "UPDATE eb_seq SET last = GREATEST(last, $1) WHERE id = 1",
                &[&(last as i64)],
            )
            .await
            .map_err(db_error)?;
        self.inner.advance(last);
        Ok(last)
    }

    async fn close(&self) -> Result<(), EngineError> {
        let commits = self
            .inner
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(commits);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tasks = tasks.into_iter();
        // The committer finishes the commits already queued; the watchers just stop.
        if let Some(committer) = tasks.next() {
            let _ = committer.await;
        }
        for task in tasks {
            task.abort();
        }
        self.inner.pool.close();
        Ok(())
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}

struct PostgresTransaction {
    inner: Arc<Inner>,
    reads: Vec<(FullKey, Option<Bytes>)>,
    scans: Vec<ScanRead>,
    expects: Vec<(FullKey, Option<Vec<u8>>)>,
    writes: BTreeMap<FullKey, Option<Vec<u8>>>,
    adds: Vec<(FullKey, i64)>,
    changes: Vec<ChangeAppend>,
}

#[async_trait]
impl Transaction for PostgresTransaction {
    async fn get(&mut self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let client = self.inner.client().await?;
        let value = get_on(&client, ks_id(ks), key).await?;
        self.reads.push(((ks_id(ks), key.to_vec()), value.clone()));
        Ok(value)
    }

    async fn get_many(
        &mut self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.inner.client().await?;
        let values = get_many_on(&client, ks_id(ks), keys).await?;
        for (key, value) in keys.iter().zip(&values) {
            self.reads.push(((ks_id(ks), key.clone()), value.clone()));
        }
        Ok(values)
    }

    async fn scan(
        &mut self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let client = self.inner.client().await?;
        let seen = scan_on(&client, ks_id(ks), range, direction, limit).await?;
        self.scans.push(ScanRead {
            ks: ks_id(ks),
            range: range.clone(),
            direction,
            limit,
            seen: seen.clone(),
        });
        Ok(seen)
    }

    async fn scan_many(
        &mut self,
        ks: Keyspace,
        scans: &[RangeScan],
    ) -> Result<Vec<Vec<Entry>>, EngineError> {
        let ks = ks_id(ks);
        let ranged: Vec<Ranged> = scans
            .iter()
            .map(|scan| Ranged {
                ks,
                range: &scan.range,
                direction: scan.direction,
                limit: scan.limit,
            })
            .collect();
        let client = self.inner.client().await?;
        let found = timed(scan_ranges(&client, &ranged)).await?;
        for (scan, seen) in scans.iter().zip(&found) {
            self.scans.push(ScanRead {
                ks,
                range: scan.range.clone(),
                direction: scan.direction,
                limit: scan.limit,
                seen: seen.clone(),
            });
        }
        Ok(found)
    }

    fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((ks_id(ks), key), Some(value));
    }

    fn delete(&mut self, ks: Keyspace, key: Vec<u8>) {
        self.writes.insert((ks_id(ks), key), None);
    }

    fn expect(&mut self, ks: Keyspace, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.expects.push(((ks_id(ks), key), value));
    }

    fn add(&mut self, ks: Keyspace, key: Vec<u8>, delta: i64) {
        self.adds.push(((ks_id(ks), key), delta));
    }

    fn append_change(&mut self, change: ChangeAppend) {
        self.changes.push(change);
    }

    async fn commit(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Committed, EngineError> {
        // What a transaction read was committed, hence durable: one that only read is done.
        if self.writes.is_empty()
            && self.adds.is_empty()
            && self.changes.is_empty()
            && self.expects.is_empty()
        {
            return Ok(Committed { first_seq: None });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            reads: self.reads,
            scans: self.scans,
            expects: self.expects,
            writes: self.writes,
            adds: self.adds,
            changes: self.changes,
            on_durable,
            reply,
        };
        let sent = match &*self.inner.commits.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(commits) => commits.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(EngineError::Closed);
        }
        let first_seq = answer.await.map_err(|_| EngineError::Closed)??;
        Ok(Committed { first_seq })
    }
}

/// A REPEATABLE READ transaction on a connection of its own, rolled back when dropped.
struct PostgresSnapshot {
    client: Option<Object>,
}

impl PostgresSnapshot {
    fn client(&self) -> Result<&Object, EngineError> {
        self.client.as_ref().ok_or(EngineError::Closed)
    }
}

#[async_trait]
impl Snapshot for PostgresSnapshot {
    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        get_on(self.client()?, ks_id(ks), key).await
    }

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        scan_on(self.client()?, ks_id(ks), range, direction, limit).await
    }
}

impl Drop for PostgresSnapshot {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // The connection goes back to the pool only once its transaction has ended.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}
