//! Counts and aggregates over the documents of a collection that a caller may read: the same
//! filter, read rule and planner as lists, folded into groups instead of pages.

use super::list::QueryRead;
use super::{check_collection, DocsError, Documents, Result};
use crate::auth::Principal;
use crate::model::Document;
use crate::query::ast::Path;
use crate::query::order::{number, total_cmp};
use crate::query::{self, reads_clock, Expr, Scope};
use crate::store::Matched;
use serde::Serialize;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What to aggregate.
#[derive(Debug, Clone, Default)]
pub struct AggregateParams<'a> {
    /// Which documents, in the filter language (all by default).
    pub filter: Option<&'a str>,
    /// A comma list of at most 4 paths to group by (one group of everything by default).
    pub group_by: Option<&'a str>,
    /// A comma list of at most 16 operations: `count`, `count:PATH` (documents with a non-null
    /// value there), `sum:PATH`, `avg:PATH`, `min:PATH` and `max:PATH` (`count` by default).
    pub ops: Option<&'a str>,
}

/// The groups of an aggregate, in the order of their keys (the sort order of the values).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Aggregates {
    pub groups: Vec<Group>,
}

/// One group: the values of the `group_by` paths its documents share, and each operation's
/// result under the operation as written (`count`, `sum:data.n`, ...).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Group {
    /// `{path: value}` for each `group_by` path (`null` where documents have none); `{}`
    /// without `group_by`.
    #[schema(value_type = Object)]
    pub key: Map<String, Value>,
    /// `{operation: result}`: counts are integers; a sum is `0` and an average, minimum or
    /// maximum `null` when no document of the group has a value there.
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
}

/// The most groups an aggregate may return.
pub(super) const MAX_GROUPS: usize = 1000;
const MAX_GROUP_BY: usize = 4;
const MAX_OPS: usize = 16;
/// Counts kept for reuse (see [`Documents::count`]); the map is cleared when full.
const CACHED_COUNTS: usize = 1024;
/// The longest filter (as the cache keys it) whose count is kept: the kept keys stay within
/// about 1 MiB.
const CACHED_FILTER_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    CountOf,
    Sum,
    Avg,
    Min,
    Max,
}

/// One operation as requested.
struct Op {
    name: String,
    kind: Kind,
    path: Option<Path>,
}

/// An operation's running state within one group.
#[derive(Clone)]
enum Acc {
    Count(u64),
    /// Integers are summed exactly while every value is one; a fraction switches to floats.
    Sum {
        exact: Option<i128>,
        float: f64,
    },
    Avg {
        total: f64,
        n: u64,
    },
    Extreme(Option<Value>),
}

impl Acc {
    fn new(kind: Kind) -> Acc {
        match kind {
            Kind::Count | Kind::CountOf => Acc::Count(0),
            Kind::Sum => Acc::Sum {
                exact: Some(0),
                float: 0.0,
            },
            Kind::Avg => Acc::Avg { total: 0.0, n: 0 },
            Kind::Min | Kind::Max => Acc::Extreme(None),
        }
    }

    /// Folds in one document's value at the operation's path (`None` for `count`).
    fn add(&mut self, kind: Kind, value: Option<&Value>) {
        let value = value.filter(|v| !v.is_null());
        match (self, kind) {
            (Acc::Count(n), Kind::Count) => *n += 1,
            (Acc::Count(n), _) => *n += u64::from(value.is_some()),
            (Acc::Sum { exact, float }, _) => {
                if let Some(Value::Number(x)) = value {
                    *float += number(x);
                    *exact = match (*exact, x.as_i64()) {
                        (Some(sum), Some(i)) => Some(sum + i128::from(i)),
                        _ => None,
                    };
                }
            }
            (Acc::Avg { total, n }, _) => {
                if let Some(Value::Number(x)) = value {
                    *total += number(x);
                    *n += 1;
                }
            }
            (Acc::Extreme(best), kind) => {
                let Some(v) = value else { return };
                let wanted = if kind == Kind::Min {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                if best.as_ref().is_none_or(|b| total_cmp(v, b) == wanted) {
                    *best = Some(v.clone());
                }
            }
        }
    }

    fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum { exact, float } => match exact.map(i64::try_from) {
                Some(Ok(i)) => Value::from(i),
                _ => float_value(*float),
            },
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { total, n } => float_value(total / *n as f64),
            Acc::Extreme(v) => v.clone().unwrap_or(Value::Null),
        }
    }
}

/// A float as JSON; one that JSON cannot hold (an overflowed sum) as `null`.
fn float_value(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A group's key, ordered value by value in the sort order.
#[derive(PartialEq, Eq)]
struct Key(Vec<Value>);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| total_cmp(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A parsed aggregate request.
struct Plan {
    filter: Option<Expr>,
    group_by: Vec<Path>,
    ops: Vec<Op>,
}

impl Plan {
    /// Whether counting matches is all it needs: no group, no operation that reads a value.
    fn counts_only(&self) -> bool {
        self.group_by.is_empty() && self.ops.iter().all(|o| o.kind == Kind::Count)
    }
}

fn parse_list(src: Option<&str>) -> Vec<&str> {
    src.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn parse_op(src: &str) -> Result<Op> {
    let (kind, path) = match src.split_once(':') {
        None if src == "count" => (Kind::Count, None),
        Some((name, path)) => {
            let kind = match name.trim() {
                "count" => Kind::CountOf,
                "sum" => Kind::Sum,
                "avg" => Kind::Avg,
                "min" => Kind::Min,
                "max" => Kind::Max,
                _ => return Err(bad_op(src)),
            };
            let path = query::parse_path(path.trim())
                .map_err(|e| DocsError::BadRequest(format!("ops: `{src}`: {}", e.message)))?;
            (kind, Some(path))
        }
        None => return Err(bad_op(src)),
    };
    Ok(Op {
        name: src.to_string(),
        kind,
        path,
    })
}

fn bad_op(src: &str) -> DocsError {
    DocsError::BadRequest(format!(
        "ops: `{src}` is not an operation; use count, count:PATH, sum:PATH, avg:PATH, min:PATH or max:PATH"
    ))
}

impl Documents {
    fn prepare_aggregate(&self, collection: &str, params: &AggregateParams<'_>) -> Result<Plan> {
        check_collection(collection)?;
        let filter = match params.filter.filter(|f| !f.trim().is_empty()) {
            Some(src) => Some(self.parse_filter(src)?),
            None => None,
        };
        let group_by = parse_list(params.group_by)
            .into_iter()
            .map(|p| {
                query::parse_path(p)
                    .map_err(|e| DocsError::BadRequest(format!("group_by: `{p}`: {}", e.message)))
            })
            .collect::<Result<Vec<_>>>()?;
        if group_by.len() > MAX_GROUP_BY {
            return Err(DocsError::BadRequest(format!(
                "group_by takes at most {MAX_GROUP_BY} paths"
            )));
        }
        let mut ops = parse_list(params.ops)
            .into_iter()
            .map(parse_op)
            .collect::<Result<Vec<_>>>()?;
        if ops.is_empty() {
            ops.push(Op {
                name: "count".into(),
                kind: Kind::Count,
                path: None,
            });
        }
        if ops.len() > MAX_OPS {
            return Err(DocsError::BadRequest(format!(
                "ops takes at most {MAX_OPS} operations"
            )));
        }
        Ok(Plan {
            filter,
            group_by,
            ops,
        })
    }

    /// Counts and aggregates the documents of `collection` that match `params.filter` and that
    /// `who` may read, in groups. The read rule applies per document exactly as for lists;
    /// the filter uses an index where one serves it; whatever the plan, an aggregate examines
    /// at most `limits.max_scan_documents` documents.
    pub async fn aggregate(
        &self,
        who: &Principal,
        collection: &str,
        params: &AggregateParams<'_>,
    ) -> Result<Aggregates> {
        let plan = self.prepare_aggregate(collection, params)?;
        if plan.counts_only() {
            let n = self.count(who, collection, plan.filter.as_ref()).await?;
            let values = plan
                .ops
                .iter()
                .map(|op| (op.name.clone(), Value::from(n)))
                .collect();
            return Ok(Aggregates {
                groups: vec![Group {
                    key: Map::new(),
                    values,
                }],
            });
        }
        let read = self.query_read(who, collection)?;
        let visible = |doc: &Document| read.visible(who, doc);
        let owned = self.owned_filter(who, collection, plan.filter.as_ref());
        let mut groups: BTreeMap<Key, Vec<Acc>> = BTreeMap::new();
        let mut too_many = false;
        let fresh: Vec<Acc> = plan.ops.iter().map(|op| Acc::new(op.kind)).collect();
        let mut each = |matched: Matched<'_>| {
            let Matched::Document(doc) = matched else {
                return;
            };
            let key = Key(plan
                .group_by
                .iter()
                .map(|p| doc.lookup(p).map_or(Value::Null, Cow::into_owned))
                .collect());
            if !groups.contains_key(&key) && groups.len() >= MAX_GROUPS {
                too_many = true;
                return;
            }
            let accs = groups.entry(key).or_insert_with(|| fresh.clone());
            for (acc, op) in accs.iter_mut().zip(&plan.ops) {
                let value = op.path.as_ref().and_then(|p| doc.lookup(p));
                acc.add(op.kind, value.as_deref());
            }
        };
        self.inner
            .store
            .visit(
                collection,
                owned.as_ref().or(plan.filter.as_ref()),
                read.per_doc.then_some(&visible as _),
                false,
                &mut each,
            )
            .await?;
        if too_many {
            return Err(DocsError::BadRequest(format!(
                "the aggregate has more than {MAX_GROUPS} groups; narrow the filter or group by fewer paths"
            )));
        }
        // Without `group_by`, everything is one group, even when nothing matched.
        if plan.group_by.is_empty() && groups.is_empty() {
            groups.insert(Key(Vec::new()), fresh);
        }
        let names: Vec<String> = plan.group_by.iter().map(|p| p.to_string()).collect();
        let groups = groups
            .into_iter()
            .map(|(key, accs)| Group {
                key: names.iter().cloned().zip(key.0).collect(),
                values: plan
                    .ops
                    .iter()
                    .zip(&accs)
                    .map(|(op, acc)| (op.name.clone(), acc.result()))
                    .collect(),
            })
            .collect();
        Ok(Aggregates { groups })
    }

    /// How many documents of `collection` match `filter` and may be read by `who`. Without a
    /// filter, for a caller the read rule lets see every document, it is the collection's
    /// counter; otherwise a scan that counts an index's entries without reading the documents
    /// when the index serves the whole filter. For such a caller, on a single node, the count
    /// is kept and served again until the next change anywhere in the store (a pager asks for
    /// the same total on every page); a filter that reads the clock is always counted afresh.
    pub(crate) async fn count(
        &self,
        who: &Principal,
        collection: &str,
        filter: Option<&Expr>,
    ) -> Result<u64> {
        let read = self.query_read(who, collection)?;
        if filter.is_none() && !read.per_doc {
            return Ok(self.inner.store.document_count(collection).await?);
        }
        // Not in a cluster: another node's change reaches this one's sequence a moment after
        // it answered, and a count must include every write acknowledged before it.
        let cached =
            (!read.per_doc && !filter.is_some_and(reads_clock) && !self.inner.store.is_shared())
                .then(|| (collection.to_string(), format!("{filter:?}")))
                .filter(|(_, filter)| filter.len() <= CACHED_FILTER_BYTES);
        // Read before counting: a change committed meanwhile moves it, and the count it may
        // or may not include is never served again.
        let seq = self.inner.store.last_seq();
        if let Some(key) = &cached {
            let counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&(at, n)) = counts.get(key) {
                if at == seq {
                    return Ok(n);
                }
            }
        }
        let n = self.count_matches(who, collection, filter, &read).await?;
        if let Some(key) = cached {
            let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
            if counts.len() >= CACHED_COUNTS {
                counts.clear();
            }
            counts.insert(key, (seq, n));
        }
        Ok(n)
    }

    async fn count_matches(
        &self,
        who: &Principal,
        collection: &str,
        filter: Option<&Expr>,
        read: &QueryRead,
    ) -> Result<u64> {
        let visible = |doc: &Document| read.visible(who, doc);
        let owned = self.owned_filter(who, collection, filter);
        let mut n = 0u64;
        self.inner
            .store
            .visit(
                collection,
                owned.as_ref().or(filter),
                read.per_doc.then_some(&visible as _),
                true,
                &mut |_| n += 1,
            )
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_parse_or_say_what_is_wrong() {
        assert!(parse_op("sum:data.n").is_ok());
        assert!(parse_op("count").is_ok());
        assert!(parse_op("count:owner").is_ok());
        for bad in ["median:data.n", "sum", "sum:", "sum:data..n", "total"] {
            let Err(DocsError::BadRequest(message)) = parse_op(bad) else {
                panic!("{bad} parsed");
            };
            assert!(message.contains(bad), "{message}");
        }
    }

    #[test]
    fn sums_stay_exact_for_integers_and_averages_ignore_non_numbers() {
        let mut sum = Acc::new(Kind::Sum);
        let mut avg = Acc::new(Kind::Avg);
        let big = Value::from(i64::MAX);
        for v in [&big, &Value::from(1), &Value::from(-1), &Value::from("x")] {
            sum.add(Kind::Sum, Some(v));
        }
        assert_eq!(sum.result(), Value::from(i64::MAX));
        sum.add(Kind::Sum, Some(&Value::from(0.5)));
        assert!(sum.result().is_f64());
        assert_eq!(avg.result(), Value::Null);
        for v in [
            Value::from(1),
            Value::from(2),
            Value::Null,
            Value::from(true),
        ] {
            avg.add(Kind::Avg, Some(&v));
        }
        assert_eq!(avg.result(), serde_json::json!(1.5));
        let mut min = Acc::new(Kind::Min);
        for v in [
            Value::from("b"),
            Value::from(3),
            Value::Null,
            Value::from("a"),
        ] {
            min.add(Kind::Min, Some(&v));
        }
        assert_eq!(min.result(), Value::from(3));
    }
}
