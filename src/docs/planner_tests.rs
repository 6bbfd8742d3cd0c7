//! The query planner never changes an answer: random documents and random filters and sorts
//! give the same pages with indexes, without them, and by naive evaluation.

use super::{open_for_test, AggregateParams, Documents, ListParams};
use crate::auth::Principal;
use crate::model::{CollectionConfig, Document};
use crate::query::plan::{compare_positions, effective_sort, sort_values};
use crate::query::{matches, parse_expr, parse_sort, Dialect};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-4i64..4).prop_map(Value::from),
        (-8i64..8).prop_map(|h| json!(h as f64 / 2.0)),
        prop::sample::select(vec!["", "a", "b", "ab", "B"]).prop_map(Value::from),
    ]
}

fn doc_data() -> impl Strategy<Value = Value> {
    (
        prop::option::of(scalar()),
        prop::option::of(scalar()),
        prop::option::of(prop::sample::select(vec!["x", "y", "z"])),
        prop::collection::vec(prop::sample::select(vec!["p", "q"]), 0..3),
    )
        .prop_map(|(n, m, tag, list)| {
            let mut data = serde_json::Map::new();
            if let Some(n) = n {
                data.insert("n".into(), n);
            }
            if let Some(m) = m {
                data.insert("m".into(), m);
            }
            if let Some(tag) = tag {
                data.insert("tag".into(), tag.into());
            }
            data.insert("list".into(), json!(list));
            Value::Object(data)
        })
}

fn leaf() -> impl Strategy<Value = String> {
    let path = prop::sample::select(vec![
        "data.n",
        "data.m",
        "data.tag",
        "version",
        "id",
        "data.missing",
    ]);
    let op = prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]);
    let id = (0..12u32).prop_map(|i| json!(format!("d{i:02}")));
    let literal = prop_oneof![
        scalar(),
        prop::sample::select(vec!["x", "y"]).prop_map(Value::from),
        id
    ];
    prop_oneof![
        4 => (path.clone(), op, literal.clone()).prop_map(|(p, o, l)| format!("{p} {o} {l}")),
        1 => (literal.clone(), path.clone()).prop_map(|(l, p)| format!("{l} < {p}")),
        1 => (path, prop::collection::vec(literal, 0..3))
            .prop_map(|(p, ls)| format!("{p} in {}", Value::Array(ls))),
        1 => prop::sample::select(vec!["p", "q"]).prop_map(|v| format!("data.list contains \"{v}\"")),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

fn sort() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "data.n",
        "-data.n",
        "data.tag,data.n",
        "data.tag,-data.n",
        "-data.tag,-data.n",
        "data.m",
        "-id",
        "version,-data.n",
        "data.n,data.m",
    ])
}

/// Every page of a query, following cursors to the end.
fn all_pages(
    rt: &tokio::runtime::Runtime,
    docs: &Documents,
    collection: &str,
    filter: &str,
    sort: &str,
    limit: usize,
) -> Vec<Document> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = ListParams {
            filter: Some(filter),
            sort: Some(sort),
            limit: Some(limit),
            cursor: cursor.as_deref(),
            count: false,
        };
        let page = rt
            .block_on(docs.list(&Principal::Service, collection, &params))
            .unwrap();
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[test]
fn planner_agrees_with_naive_evaluation() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let docs = rt.block_on(open_for_test(dir.path()));
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (
        prop::collection::vec(doc_data(), 0..12),
        prop::collection::vec((filter(), sort(), 1usize..5), 6),
    );
    runner
        .run(&strategy, |(datas, queries)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let plain = format!("plain{case}");
            let indexed = format!("indexed{case}");
            let config: CollectionConfig = serde_json::from_value(json!({
                "indexes": [["data.n"], ["data.tag", "data.n"], ["data.m"], ["data.tag"], ["version", "data.n"]]
            }))
            .unwrap();
            rt.block_on(docs.configure(&Principal::Service, &indexed, config)).unwrap();
            for (i, data) in datas.iter().enumerate() {
                for collection in [&plain, &indexed] {
                    rt.block_on(docs.set(&Principal::Service, collection, &format!("d{i:02}"), data.clone(), None))
                        .unwrap();
                }
            }
            // Some documents get a second version.
            for i in (0..datas.len()).step_by(3) {
                for collection in [&plain, &indexed] {
                    rt.block_on(docs.update(&Principal::Service, collection, &format!("d{i:02}"), json!({"v2": true}), None))
                        .unwrap();
                }
            }
            let everything = all_pages(&rt, &docs, &plain, "", "", 1000);
            for (filter, sort, limit) in &queries {
                let expr = parse_expr(filter, Dialect::Document).unwrap();
                let keys = effective_sort(&if sort.is_empty() { vec![] } else { parse_sort(sort).unwrap() });
                let mut expected: Vec<&Document> = everything.iter().filter(|d| matches(&expr, *d)).collect();
                expected.sort_by(|a, b| compare_positions(&sort_values(*a, &keys), &sort_values(*b, &keys), &keys));
                let expected: Vec<&str> = expected.iter().map(|d| d.id.as_str()).collect();
                for collection in [&plain, &indexed] {
                    let got = all_pages(&rt, &docs, collection, filter, sort, *limit);
                    let got: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
                    prop_assert_eq!(&got, &expected, "{} filter {:?} sort {:?} limit {}", collection, filter, sort, limit);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// `v` with every number as a float: the filter language, and so grouping, minima and maxima,
/// hold `2` and `2.0` equal, so either may represent a group.
fn norm(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(norm).collect()),
        other => other.clone(),
    }
}

/// What an aggregate should answer, computed naively from every document the caller may read:
/// `{group key: [count, sum of data.n, count of data.m, min of data.n, max of data.m]}`.
fn naive_aggregate(
    docs: &[&Document],
    group_by: &[&str],
) -> std::collections::BTreeMap<String, Vec<Value>> {
    use crate::query::order::total_cmp;
    let mut groups: std::collections::BTreeMap<String, Vec<&Document>> = Default::default();
    for doc in docs {
        let key: Vec<Value> = group_by
            .iter()
            .map(|p| {
                doc.data
                    .get(p.trim_start_matches("data."))
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect();
        groups
            .entry(serde_json::to_string(&norm(&json!(key))).unwrap())
            .or_default()
            .push(doc);
    }
    if group_by.is_empty() && groups.is_empty() {
        groups.insert("[]".into(), Vec::new());
    }
    let field = |d: &Document, f: &str| d.data.get(f).filter(|v| !v.is_null()).cloned();
    groups
        .into_iter()
        .map(|(key, members)| {
            let ns: Vec<Value> = members.iter().filter_map(|d| field(d, "n")).collect();
            let ms: Vec<Value> = members.iter().filter_map(|d| field(d, "m")).collect();
            let sum: f64 = ns.iter().filter_map(Value::as_f64).sum();
            let min = ns
                .iter()
                .min_by(|a, b| total_cmp(a, b))
                .cloned()
                .unwrap_or(Value::Null);
            let max = ms
                .iter()
                .max_by(|a, b| total_cmp(a, b))
                .cloned()
                .unwrap_or(Value::Null);
            (
                key,
                vec![
                    json!(members.len()),
                    json!(sum),
                    json!(ms.len()),
                    norm(&min),
                    norm(&max),
                ],
            )
        })
        .collect()
}

#[test]
fn aggregates_agree_with_naive_computation() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let docs = rt.block_on(open_for_test(dir.path()));
    // A signed-in user whom the read rule hides every document tagged "z" from.
    let user = Principal::User {
        id: "u1".into(),
        email: "u1@example.com".into(),
        admin: false,
        profile: Default::default(),
        anonymous: false,
    };
    let rules = json!({"read": "doc.data.tag != \"z\"", "create": "true", "update": "true", "delete": "true"});
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let group_bys = prop::sample::select(vec!["", "data.tag", "data.n", "data.tag,data.m"]);
    let strategy = (
        prop::collection::vec(doc_data(), 0..16),
        prop::collection::vec((filter(), group_bys), 4),
    );
    runner
        .run(&strategy, |(datas, queries)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let plain = format!("aplain{case}");
            let indexed = format!("aindexed{case}");
            for (collection, indexes) in [
                (&plain, json!([])),
                (
                    &indexed,
                    json!([["data.n"], ["data.tag", "data.n"], ["data.m"]]),
                ),
            ] {
                let config: CollectionConfig =
                    serde_json::from_value(json!({"rules": rules, "indexes": indexes})).unwrap();
                rt.block_on(docs.configure(&Principal::Service, collection, config))
                    .unwrap();
                for (i, data) in datas.iter().enumerate() {
                    rt.block_on(docs.set(
                        &Principal::Service,
                        collection,
                        &format!("d{i:02}"),
                        data.clone(),
                        None,
                    ))
                    .unwrap();
                }
            }
            let everything = all_pages(&rt, &docs, &plain, "", "", 1000);
            let readable: Vec<&Document> = everything
                .iter()
                .filter(|d| d.data.get("tag") != Some(&json!("z")))
                .collect();
            for (filter, group_by) in &queries {
                let expr = parse_expr(filter, Dialect::Document).unwrap();
                let matching: Vec<&Document> = readable
                    .iter()
                    .copied()
                    .filter(|d| matches(&expr, *d))
                    .collect();
                let paths: Vec<&str> = group_by.split(',').filter(|p| !p.is_empty()).collect();
                let expected = naive_aggregate(&matching, &paths);
                let params = AggregateParams {
                    filter: Some(filter),
                    group_by: Some(group_by),
                    ops: Some("count,sum:data.n,count:data.m,min:data.n,max:data.m"),
                };
                for collection in [&plain, &indexed] {
                    let got = rt
                        .block_on(docs.aggregate(&user, collection, &params))
                        .unwrap();
                    let got: std::collections::BTreeMap<String, Vec<Value>> = got
                        .groups
                        .iter()
                        .map(|g| {
                            let key: Vec<Value> = paths.iter().map(|p| g.key[*p].clone()).collect();
                            let v = &g.values;
                            let sum = json!(v["sum:data.n"].as_f64().unwrap());
                            let row = vec![
                                v["count"].clone(),
                                sum,
                                v["count:data.m"].clone(),
                                norm(&v["min:data.n"]),
                                norm(&v["max:data.m"]),
                            ];
                            (serde_json::to_string(&norm(&json!(key))).unwrap(), row)
                        })
                        .collect();
                    prop_assert_eq!(
                        &got,
                        &expected,
                        "{} filter {:?} group_by {:?}",
                        collection,
                        filter,
                        group_by
                    );
                    // The count alone, and a list's total, agree with the naive count.
                    let count = AggregateParams {
                        filter: Some(filter),
                        ..Default::default()
                    };
                    let counted = rt
                        .block_on(docs.aggregate(&user, collection, &count))
                        .unwrap();
                    prop_assert_eq!(&counted.groups[0].values["count"], &json!(matching.len()));
                    let list = ListParams {
                        filter: Some(filter),
                        count: true,
                        limit: Some(1),
                        ..Default::default()
                    };
                    let page = rt.block_on(docs.list(&user, collection, &list)).unwrap();
                    prop_assert_eq!(page.total, Some(matching.len() as u64));
                    // An admin's count is the collection's counter without a filter, and counts
                    // the index's entries without reading documents when an index serves it.
                    let all = everything.iter().filter(|d| matches(&expr, *d)).count();
                    let page = rt
                        .block_on(docs.list(&Principal::Service, collection, &list))
                        .unwrap();
                    prop_assert_eq!(page.total, Some(all as u64));
                    let unfiltered = ListParams {
                        count: true,
                        ..Default::default()
                    };
                    let page = rt
                        .block_on(docs.list(&Principal::Service, collection, &unfiltered))
                        .unwrap();
                    prop_assert_eq!(page.total, Some(everything.len() as u64));
                }
            }
            Ok(())
        })
        .unwrap();
}
