//! The storage engine alone: durable commits per second at 1, 8 and 32 concurrent writers, and
//! how many commits each flush made durable (group commit). `cargo bench --bench engine`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emberbase::engine::sled::{SledEngine, SledOptions};
use emberbase::engine::{ChangeAppend, Engine, Keyspace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn commits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let flushes = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    let (f, b) = (flushes.clone(), batches.clone());
    let engine: Arc<dyn Engine> = Arc::new(
        SledEngine::open(
            SledOptions {
                path: dir.path().join("db"),
                cache_bytes: 64 << 20,
            },
            Some(Box::new(move |_, n| {
                f.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(n, Ordering::Relaxed);
            })),
        )
        .expect("open"),
    );
    let next = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("engine_commit");
    for writers in [1u64, 8, 32] {
        group.throughput(Throughput::Elements(writers));
        let (f0, b0) = (
            flushes.load(Ordering::Relaxed),
            batches.load(Ordering::Relaxed),
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |bench, &w| {
                bench.iter(|| {
                    rt.block_on(async {
                        let tasks: Vec<_> = (0..w)
                            .map(|_| {
                                let (engine, next) = (engine.clone(), next.clone());
                                tokio::spawn(async move {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    let mut txn = engine.begin().await.expect("begin");
                                    let key = format!("bench\0{i:016}").into_bytes();
                                    let _ = txn.get(Keyspace::Documents, &key).await.expect("get");
                                    txn.put(Keyspace::Documents, key, vec![b'x'; 200]);
                                    txn.put(
                                        Keyspace::Indexes,
                                        format!("bench\0n\0{i:016}").into_bytes(),
                                        vec![],
                                    );
                                    txn.append_change(ChangeAppend {
                                        payload: vec![b'c'; 200],
                                        stamped: Vec::new(),
                                    });
                                    txn.commit(None).await.expect("commit");
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("join");
                        }
                    })
                })
            },
        );
        let (f1, b1) = (
            flushes.load(Ordering::Relaxed),
            batches.load(Ordering::Relaxed),
        );
        if f1 > f0 {
            println!(
                "engine_commit/{writers}: {:.1} commits per flush",
                (b1 - b0) as f64 / (f1 - f0) as f64
            );
        }
    }
    group.finish();
    rt.block_on(engine.close()).expect("close");
}

criterion_group!(benches, commits);
criterion_main!(benches);
