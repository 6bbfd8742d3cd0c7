//! The storage engine conformance suite, run against every backend.

use async_trait::async_trait;
use emberbase::engine::conformance::{self, Backend};
use emberbase::engine::postgres::{PostgresEngine, PostgresOptions};
use emberbase::engine::sled::{SledEngine, SledOptions};
use emberbase::engine::Engine;
use std::sync::{Arc, Mutex};

/// The sled backend in a temporary directory.
struct Sled {
    dir: tempfile::TempDir,
    last: Mutex<Option<SledEngine>>,
}

impl Sled {
    fn with_last(&self, f: impl FnOnce(&SledEngine)) -> bool {
        self.last.lock().unwrap().as_ref().map(f).is_some()
    }
}

#[async_trait]
impl Backend for Sled {
    async fn open(&self) -> Arc<dyn Engine> {
        let options = SledOptions {
            path: self.dir.path().join("db"),
            cache_bytes: 16 << 20,
        };
        let engine = SledEngine::open(options, None).unwrap_or_else(|e| panic!("open: {e}"));
        *self.last.lock().unwrap() = Some(engine.clone());
        Arc::new(engine)
    }

    fn fail_next_flush(&self) -> bool {
        self.with_last(|engine| engine.fail_next_flushes(1))
    }

    fn hold_flushes(&self, hold: bool) -> bool {
        self.with_last(|engine| engine.hold_flushes(hold))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_passes_the_engine_conformance_suite() {
    let backend = Sled {
        dir: tempfile::tempdir().unwrap(),
        last: Mutex::new(None),
    };
    conformance::run(&backend).await;
}

/// A database on the test cluster; every open connects to it again.
struct Postgres {
    url: String,
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&self) -> Arc<dyn Engine> {
        let engine = PostgresEngine::open(PostgresOptions::new(&self.url))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        Arc::new(engine)
    }

    fn fail_next_flush(&self) -> bool {
        false
    }

    fn hold_flushes(&self, _hold: bool) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_engine_conformance_suite() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    conformance::run(&Postgres { url }).await;
}

/// Nodes starting together on an empty database create the schema once, and all open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_starting_together_migrate_once() {
    let Some(url) = crate::pg::database() else {
        return;
    };
    let opened = futures_util::future::join_all(
        (0..4).map(|_| PostgresEngine::open(PostgresOptions::new(&url))),
    )
    .await;
    for engine in opened {
        let engine = engine.unwrap_or_else(|e| panic!("open: {e}"));
        engine.close().await.unwrap();
    }
    let version = crate::pg::cluster()
        .unwrap()
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT version FROM eb_schema",
        )
        .unwrap();
    assert_eq!(version, "1");
}
