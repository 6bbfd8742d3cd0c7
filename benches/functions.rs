//! Function runtime benchmarks: compiling a module with metering, loading a cached artifact,
//! and one invocation (fresh store + instance, call of a trivial handler) on the calling thread
//! and through the worker pool, from one and from several concurrent async callers.
//! JavaScript: loading a source into the engine (an upload's work), and one invocation of a
//! trivial JavaScript function (a fresh engine instance with the function's snapshot written
//! over its memory) on the calling thread.
//! `cargo bench --bench functions --features internals` (the sandbox is not public API).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emberbase::internals::runtime::{self, Host, Limits, Runtime};
use std::sync::Arc;
use std::time::Duration;

/// The smallest handler: a bump allocator and a `handle` that returns no result.
const TRIVIAL: &str = r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "handle") (param i32 i32) (result i64) (i64.const 0)))"#;

struct NoHost;

impl Host for NoHost {
    fn call(&self, _: &serde_json::Value) -> Option<Vec<u8>> {
        None
    }

    fn log(&self, _: &str, _: &str) -> bool {
        true
    }
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 64 * 1024 * 1024,
        timeout: Duration::from_secs(5),
        fuel: 1_000_000_000,
        host_calls: 1000,
        max_io_bytes: 1024 * 1024,
        max_log_lines: 100,
        max_log_bytes: 4096,
        max_log_total: 16 * 1024,
    }
}

fn compile_and_load(c: &mut Criterion) {
    let wasm = wat::parse_str(TRIVIAL).expect("wat");
    c.bench_function("compile_trivial_module", |b| {
        b.iter(|| runtime::compile(&wasm).expect("compile"))
    });
    let (_, artifact) = runtime::compile(&wasm).expect("compile");
    // An engine keeps the code of every module it loaded until it is dropped, so this uses a
    // fresh runtime every 500 loads (the server loads an artifact per upload or restart).
    c.bench_function("load_cached_artifact", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let rt = Runtime::start(1, 0, 16).expect("runtime");
                for _ in 0..left.min(500) {
                    let started = std::time::Instant::now();
                    let module = rt.load(&artifact).expect("load");
                    total += started.elapsed();
                    drop(module);
                }
                left = left.saturating_sub(500);
                rt.stop();
            }
            total
        })
    });
}

fn invoke(c: &mut Criterion) {
    let wasm = wat::parse_str(TRIVIAL).expect("wat");
    let (_, artifact) = runtime::compile(&wasm).expect("compile");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let mut group = c.benchmark_group("instantiate_and_call");
    {
        let rt = Runtime::start(1, 0, 16).expect("runtime");
        let module = rt.load(&artifact).expect("load");
        let host: Arc<dyn Host> = Arc::new(NoHost);
        group.throughput(Throughput::Elements(1));
        group.bench_function("on_the_calling_thread", |b| {
            b.iter(|| {
                let outcome = rt.invoke_blocking(
                    module.clone(),
                    b"{\"v\":1}".to_vec(),
                    limits(),
                    host.clone(),
                );
                assert!(outcome.result.is_ok());
            })
        });
        rt.stop();
    }
    for (workers, callers) in [(1usize, 1usize), (2, 8)] {
        let rt = Runtime::start(workers, 0, 1024).expect("runtime");
        let module = rt.load(&artifact).expect("load");
        let host: Arc<dyn Host> = Arc::new(NoHost);
        group.throughput(Throughput::Elements(callers as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{workers}_workers"), callers),
            &callers,
            |b, &callers| {
                b.iter(|| {
                    tokio.block_on(async {
                        let calls: Vec<_> = (0..callers)
                            .map(|_| {
                                let (rt, module, host) = (rt.clone(), module.clone(), host.clone());
                                tokio::spawn(async move {
                                    let event = b"{\"v\":1}".to_vec();
                                    let outcome = rt
                                        .invoke(runtime::Lane::Http, module, event, limits(), host)
                                        .await
                                        .expect("invoke");
                                    assert!(outcome.result.is_ok());
                                })
                            })
                            .collect();
                        for call in calls {
                            call.await.expect("join");
                        }
                    })
                })
            },
        );
        rt.stop();
    }
    group.finish();
}

/// The smallest JavaScript function that reads its event and answers.
const JS_TRIVIAL: &str =
    "export default function handle(event) { return { status: 200, body: { v: event.v } }; }";

fn javascript(c: &mut Criterion) {
    let rt = Runtime::start(1, 0, 16).expect("runtime");
    let source = JS_TRIVIAL.as_bytes();
    let artifact = rt.build(source, limits(), 10_000).expect("load the source");
    let mut group = c.benchmark_group("javascript");
    group.bench_function("load_source", |b| {
        b.iter(|| rt.build(source, limits(), 10_000).expect("load the source"))
    });
    let program = rt.load(&artifact).expect("load the snapshot");
    let host: Arc<dyn Host> = Arc::new(NoHost);
    group.throughput(Throughput::Elements(1));
    group.bench_function("invoke_trivial_on_the_calling_thread", |b| {
        b.iter(|| {
            let outcome = rt.invoke_blocking(
                program.clone(),
                b"{\"v\":1}".to_vec(),
                limits(),
                host.clone(),
            );
            assert!(
                matches!(outcome.result, Ok(Some(_))),
                "{:?}",
                outcome.result
            );
        })
    });
    group.finish();
    rt.stop();
}

criterion_group!(benches, compile_and_load, invoke, javascript);
criterion_main!(benches);
