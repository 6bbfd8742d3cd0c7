//! Store benchmarks: durable writes at several concurrencies (group commit), point reads,
//! and indexed versus scanned queries. `cargo bench --bench store`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emberbase::{Config, ListParams, Principal, Server, ServerBuilder};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn start(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Server {
    rt.block_on(
        ServerBuilder::new(Config::default())
            .data_dir(dir)
            .bind("127.0.0.1:0")
            .start(),
    )
    .expect("server")
}

fn durable_writes(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&rt, dir.path());
    let docs = server.documents().clone();
    let mut group = c.benchmark_group("durable_create");
    for writers in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(writers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| {
                b.iter(|| {
                    let docs = docs.clone();
                    rt.block_on(async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|i| {
                                let docs = docs.clone();
                                tokio::spawn(async move {
                                    docs.create(
                                        &Principal::Service,
                                        "bench",
                                        json!({"i": i, "title": "hello"}),
                                    )
                                    .await
                                    .expect("create")
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
    }
    group.finish();
    rt.block_on(server.shutdown());
}

fn reads_and_queries(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&rt, dir.path());
    let docs = server.documents().clone();
    let config = serde_json::from_value(json!({"indexes": [["data.n"]]})).expect("config");
    rt.block_on(docs.configure(&Principal::Service, "indexed", config))
        .expect("configure");
    let mut last = String::new();
    // Batches hold at most 500 ops: 250 documents in each of the two collections.
    for chunk in 0..40 {
        let ops = (0..250)
            .flat_map(|i| {
                let n = chunk * 250 + i;
                ["indexed", "plain"].map(|c| {
                    serde_json::from_value(json!({"op": "create", "collection": c, "data": {"n": n, "title": format!("t{n}")}}))
                        .expect("op")
                })
            })
            .collect();
        let results = rt
            .block_on(docs.batch(&Principal::Service, ops))
            .expect("seed");
        last = results
            .last()
            .cloned()
            .flatten()
            .map(|d| d.id)
            .unwrap_or_default();
    }
    c.bench_function("get_by_id", |b| {
        b.iter(|| {
            rt.block_on(docs.get(&Principal::Service, "plain", &last))
                .expect("get")
        })
    });
    let filter = "data.n >= 5000 && data.n < 5050";
    for collection in ["indexed", "plain"] {
        c.bench_function(&format!("list_range_sorted/{collection}"), |b| {
            b.iter(|| {
                let params = ListParams {
                    filter: Some(filter),
                    sort: Some("-data.n"),
                    limit: Some(20),
                    ..Default::default()
                };
                rt.block_on(docs.list(&Principal::Service, collection, &params))
                    .expect("list")
            })
        });
    }
    rt.block_on(server.shutdown());
}

criterion_group!(benches, durable_writes, reads_and_queries);
criterion_main!(benches);
