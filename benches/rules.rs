//! Rule evaluation, per evaluation: plain comparisons against `size(...)` and against
//! `matches(...)` (the linear-time regex engine), as a create rule sees a request.
//! `cargo bench --bench rules --features internals` (the rule language is not public API).

use criterion::{criterion_group, criterion_main, Criterion};
use emberbase::internals::rules::CompiledRule;
use serde_json::json;

fn rules(c: &mut Criterion) {
    let scope = json!({
        "auth": {"id": "u1", "email": "ada@example.com", "role": "user", "profile": {}},
        "doc": null,
        "request": {"data": {"text": "hello, this is a message for the guestbook", "email": "ada@example.com"}},
    });
    let mut group = c.benchmark_group("rule");
    for (name, src) in [
        (
            "comparisons",
            r#"auth != null && request.data.text != "" && request.data.email == auth.email"#,
        ),
        ("size", r#"auth != null && size(request.data.text) <= 500"#),
        (
            "matches",
            r#"auth != null && matches(request.data.email, "^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$")"#,
        ),
    ] {
        let rule = CompiledRule::compile(src).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(rule.allows(&scope), "{name} should allow the request");
        group.bench_function(name, |b| {
            b.iter(|| rule.allows(std::hint::black_box(&scope)))
        });
    }
    group.finish();
}

criterion_group!(benches, rules);
criterion_main!(benches);
