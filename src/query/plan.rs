//! The query planner: given a filter, a sort and the declared indexes of a collection, choose
//! how to read the collection.
//!
//! Every query has an *effective sort*: the requested keys, then `id` as the final tie-breaker
//! in the direction of the last requested key (ascending when none was requested), so that the
//! order is total and a cursor names one position in it.
//!
//! The planner looks only at the top-level `&&` conjuncts of the filter of the form
//! `path op literal` (or `literal op path`) with a scalar literal. For each index it counts the
//! leading fields fixed by `==`, adds a range on the next field if there is one, and checks
//! whether the scan order of the index equals the effective sort. The best access is the one
//! that fixes the most fields, then has a range, then yields the order; the primary (by id)
//! scan wins ties. The whole filter is still evaluated on every document the scan returns, so
//! the planner can only make a query faster, never change its answer; the one exception is a
//! plan that applies every conjunct exactly (`Plan::exact`), where evaluating them again
//! could not reject anything the scan yields.

use super::ast::{CmpOp, Expr, Path, SortKey};
use super::order;
use serde_json::Value;
use std::collections::HashMap;

/// One end of a range over one field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bound {
    pub value: Value,
    pub inclusive: bool,
}

/// A range over one field. Both ends, when present, hold values of the same kind, and the range
/// never leaves that kind (`x > 5` does not match strings).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Range {
    pub kind: u8,
    pub lower: Option<Bound>,
    pub upper: Option<Bound>,
}

/// How to read the collection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Access {
    /// Documents in id order, optionally within a range of ids.
    Primary { range: Option<Range> },
    /// Entries of one declared index: the leading fields equal `equal`, the next one within
    /// `range`.
    Index {
        index: usize,
        equal: Vec<Value>,
        range: Option<Range>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub access: Access,
    /// Whether scanning `access` (reversed when `descending`) yields the effective sort order,
    /// so the scan can stop after `limit` matches.
    pub ordered: bool,
    pub descending: bool,
    /// Whether every document the access yields matches the filter: no filter, or one whose
    /// every conjunct the access applies exactly, so evaluating it again changes nothing.
    pub exact: bool,
}

/// The effective sort of a request (see the module docs).
pub(crate) fn effective_sort(requested: &[SortKey]) -> Vec<SortKey> {
    let mut keys = Vec::with_capacity(requested.len() + 1);
    for key in requested {
        keys.push(key.clone());
        if is_id(&key.path) {
            return keys;
        }
    }
    keys.push(SortKey {
        path: id_path(),
        descending: requested.last().is_some_and(|k| k.descending),
    });
    keys
}

fn id_path() -> Path {
    Path {
        segments: vec!["id".to_string()],
    }
}

fn is_id(path: &Path) -> bool {
    path.segments.len() == 1 && path.segments[0] == "id"
}

/// The constraints a scan can use, from the top-level conjuncts of a filter.
#[derive(Default)]
struct Constraints {
    equal: HashMap<Path, Value>,
    ranges: HashMap<Path, Range>,
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

impl Constraints {
    fn collect(filter: Option<&Expr>) -> Self {
        let mut c = Constraints::default();
        if let Some(expr) = filter {
            c.visit(expr);
        }
        c
    }

    fn visit(&mut self, expr: &Expr) {
        match expr {
            Expr::And(all) => {
                for e in all {
                    self.visit(e);
                }
            }
            Expr::Compare(a, op, b) => match (a.as_ref(), b.as_ref()) {
                (Expr::Path(p), Expr::Literal(v)) => self.add(p, *op, v),
                (Expr::Literal(v), Expr::Path(p)) => {
                    if let Some(op) = op.flipped() {
                        self.add(p, op, v)
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn add(&mut self, path: &Path, op: CmpOp, value: &Value) {
        if !is_scalar(value) {
            return;
        }
        let bound = || Bound {
            value: value.clone(),
            inclusive: matches!(op, CmpOp::Le | CmpOp::Ge),
        };
        match op {
            CmpOp::Eq => {
                self.equal
                    .entry(path.clone())
                    .or_insert_with(|| value.clone());
            }
            CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                // Ordering comparisons only hold between numbers or between strings.
                if !matches!(value, Value::Number(_) | Value::String(_)) {
                    return;
                }
                let kind = order::kind_tag(value);
                let range = self.ranges.entry(path.clone()).or_insert(Range {
                    kind,
                    lower: None,
                    upper: None,
                });
                if range.kind != kind {
                    return;
                }
                let lower = matches!(op, CmpOp::Gt | CmpOp::Ge);
                let slot = if lower {
                    &mut range.lower
                } else {
                    &mut range.upper
                };
                let tighter = match slot {
                    None => true,
                    Some(old) => {
                        let ord = order::total_cmp(value, &old.value);
                        if lower {
                            ord.is_gt() || (ord.is_eq() && !bound().inclusive)
                        } else {
                            ord.is_lt() || (ord.is_eq() && !bound().inclusive)
                        }
                    }
                };
                if tighter {
                    *slot = Some(bound());
                }
            }
            CmpOp::Ne | CmpOp::In | CmpOp::Contains => {}
        }
    }

    /// The range to scan for `path`: a point for `==`, else the collected range.
    fn range_for(&self, path: &Path) -> Option<Range> {
        if let Some(v) = self.equal.get(path) {
            let point = Bound {
                value: v.clone(),
                inclusive: true,
            };
            return Some(Range {
                kind: order::kind_tag(v),
                lower: Some(point.clone()),
                upper: Some(point),
            });
        }
        self.ranges.get(path).cloned()
    }
}

/// Whether `keys` equals `fields` followed by `id`, all in one direction; returns it.
fn uniform_direction(keys: &[&SortKey], fields: &[Path]) -> Option<bool> {
    if keys.len() != fields.len() + 1 {
        return None;
    }
    let descending = keys.first()?.descending;
    let fields_match = keys.iter().zip(fields).all(|(k, f)| &k.path == f);
    let last_is_id = keys.last().is_some_and(|k| is_id(&k.path));
    let one_direction = keys.iter().all(|k| k.descending == descending);
    (fields_match && last_is_id && one_direction).then_some(descending)
}

/// The fields of an index that would serve a query: the fields its filter fixes with `==`,
/// then its sort keys (or, without a sort, the field it bounds with a range). Empty when the
/// query constrains nothing an index could use.
pub(crate) fn suggest_index(filter: Option<&Expr>, sort: &[SortKey]) -> Vec<Path> {
    let constraints = Constraints::collect(filter);
    let mut fields: Vec<Path> = constraints.equal.keys().cloned().collect();
    fields.sort_by_key(|p| p.to_string());
    let sorted: Vec<Path> = sort
        .iter()
        .map(|k| k.path.clone())
        .take_while(|p| !is_id(p))
        .collect();
    if sorted.is_empty() {
        let mut ranged: Vec<&Path> = constraints
            .ranges
            .keys()
            .filter(|p| !constraints.equal.contains_key(*p))
            .collect();
        ranged.sort_by_key(|p| p.to_string());
        fields.extend(ranged.first().map(|p| (*p).clone()));
    } else {
        fields.extend(
            sorted
                .into_iter()
                .filter(|p| !constraints.equal.contains_key(p)),
        );
    }
    fields.retain(|p| !is_id(p));
    fields
}

/// Chooses the access path for a query. `indexes` lists the fields of each declared index.
pub(crate) fn plan(filter: Option<&Expr>, sort: &[SortKey], indexes: &[&[Path]]) -> Plan {
    let constraints = Constraints::collect(filter);
    let effective = effective_sort(sort);

    let primary_order = uniform_direction(&effective.iter().collect::<Vec<_>>(), &[]);
    let primary_range = constraints.range_for(&id_path());
    let mut best = Plan {
        ordered: primary_order.is_some(),
        descending: primary_order.unwrap_or(false),
        access: Access::Primary {
            range: primary_range.clone(),
        },
        exact: filter.is_none(),
    };
    let mut best_score = (
        usize::from(constraints.equal.contains_key(&id_path())),
        primary_range.is_some(),
        best.ordered,
    );

    for (index, fields) in indexes.iter().enumerate() {
        let fixed = fields
            .iter()
            .take_while(|f| constraints.equal.contains_key(*f))
            .count();
        let equal: Vec<Value> = fields[..fixed]
            .iter()
            .filter_map(|f| constraints.equal.get(f).cloned())
            .collect();
        let range = fields
            .get(fixed)
            .and_then(|f| constraints.ranges.get(f).cloned());
        let remaining: Vec<&SortKey> = effective
            .iter()
            .filter(|k| !fields[..fixed].contains(&k.path))
            .collect();
        let order = uniform_direction(&remaining, &fields[fixed..]);
        let score = (fixed, range.is_some(), order.is_some());
        if score > best_score {
            best_score = score;
            let exact = applies_exactly(filter, fields, &equal, range.as_ref());
            best = Plan {
                access: Access::Index {
                    index,
                    equal,
                    range,
                },
                ordered: order.is_some(),
                descending: order.unwrap_or(false),
                exact,
            };
        }
    }
    best
}

/// Whether an index scan over `fields` with its leading fields equal to `equal` and the next
/// one within `range` yields only documents that match `filter`: every top-level conjunct is
/// `field == literal` on a leading field with that very value, or an ordering comparison on
/// the ranged field with a literal of the range's kind (the range is the tightest of them, so
/// it implies each). Index entries encode a missing field as `null` and order values as the
/// evaluator compares them, so such a conjunct holds for every entry in the scanned range.
fn applies_exactly(
    filter: Option<&Expr>,
    fields: &[Path],
    equal: &[Value],
    range: Option<&Range>,
) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    let conjuncts = match filter {
        Expr::And(all) => all.iter().collect(),
        single => vec![single],
    };
    conjuncts.into_iter().all(|conjunct| {
        let Some((path, op, value)) = comparison(conjunct) else {
            return false;
        };
        match fields.iter().position(|f| f == path) {
            Some(i) if i < equal.len() => {
                op == CmpOp::Eq && is_scalar(value) && super::eval::equal(&equal[i], value)
            }
            Some(i) if i == equal.len() => {
                matches!(op, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge)
                    && matches!(value, Value::Number(_) | Value::String(_))
                    && range.is_some_and(|r| r.kind == order::kind_tag(value))
            }
            _ => false,
        }
    })
}

/// A conjunct of the form `path op literal`, with `literal op path` turned around.
fn comparison(expr: &Expr) -> Option<(&Path, CmpOp, &Value)> {
    let Expr::Compare(a, op, b) = expr else {
        return None;
    };
    match (a.as_ref(), b.as_ref()) {
        (Expr::Path(p), Expr::Literal(v)) => Some((p, *op, v)),
        (Expr::Literal(v), Expr::Path(p)) => Some((p, op.flipped()?, v)),
        _ => None,
    }
}

/// The values of `keys` for one document: its position in the sort order.
pub(crate) fn sort_values(doc: &dyn super::Scope, keys: &[SortKey]) -> Vec<Value> {
    keys.iter()
        .map(|k| {
            doc.lookup(&k.path)
                .map(|v| v.into_owned())
                .unwrap_or(Value::Null)
        })
        .collect()
}

/// Compares two positions (from [`sort_values`]) under `keys`.
pub(crate) fn compare_positions(a: &[Value], b: &[Value], keys: &[SortKey]) -> std::cmp::Ordering {
    for ((x, y), key) in a.iter().zip(b).zip(keys) {
        let ord = order::total_cmp(x, y);
        let ord = if key.descending { ord.reverse() } else { ord };
        if ord.is_ne() {
            return ord;
        }
    }
    std::cmp::Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{parse_expr, parse_path, parse_sort, Dialect};

    /// A compact description of a plan: `primary`, or `index N eq=K range`, then `ordered`
    /// and `desc` when they hold.
    fn describe(filter: &str, sort: &str, indexes: &[&[&str]]) -> String {
        let filter = (!filter.is_empty()).then(|| parse_expr(filter, Dialect::Document).unwrap());
        let sort = if sort.is_empty() {
            vec![]
        } else {
            parse_sort(sort).unwrap()
        };
        let indexes: Vec<Vec<Path>> = indexes
            .iter()
            .map(|fields| fields.iter().map(|f| parse_path(f).unwrap()).collect())
            .collect();
        let fields: Vec<&[Path]> = indexes.iter().map(Vec::as_slice).collect();
        let p = plan(filter.as_ref(), &sort, &fields);
        let mut out = match &p.access {
            Access::Primary { range } => {
                format!("primary{}", if range.is_some() { " range" } else { "" })
            }
            Access::Index {
                index,
                equal,
                range,
            } => format!(
                "index {index} eq={}{}",
                equal.len(),
                if range.is_some() { " range" } else { "" }
            ),
        };
        if p.ordered {
            out.push_str(" ordered");
        }
        if p.descending {
            out.push_str(" desc");
        }
        out
    }

    #[test]
    fn chooses_access_paths() {
        let n: &[&str] = &["data.n"];
        let tag_n: &[&str] = &["data.tag", "data.n"];
        let cases: &[(&str, &str, &[&[&str]], &str)] = &[
            ("", "", &[], "primary ordered"),
            ("", "-id", &[], "primary ordered desc"),
            ("", "data.n", &[], "primary"),
            ("id == \"x\"", "", &[], "primary range ordered"),
            (
                "id > \"a\" && id <= \"m\"",
                "",
                &[n],
                "primary range ordered",
            ),
            ("data.n > 5", "", &[n], "index 0 eq=0 range"),
            ("data.n > 5", "data.n", &[n], "index 0 eq=0 range ordered"),
            (
                "data.n > 5",
                "-data.n",
                &[n],
                "index 0 eq=0 range ordered desc",
            ),
            ("", "data.n", &[n], "index 0 eq=0 ordered"),
            ("", "data.n,-id", &[n], "primary"),
            (
                "data.tag == \"a\" && data.n >= 1",
                "-data.n",
                &[n, tag_n],
                "index 1 eq=1 range ordered desc",
            ),
            (
                "data.tag == \"a\"",
                "data.tag,data.n",
                &[tag_n],
                "index 0 eq=1 ordered",
            ),
            (
                "data.tag == \"a\" && data.n == 3",
                "",
                &[tag_n],
                "index 0 eq=2 ordered",
            ),
            (
                "data.tag == \"a\" || data.n == 3",
                "",
                &[n, tag_n],
                "primary ordered",
            ),
            ("5 < data.n", "", &[n], "index 0 eq=0 range"),
            ("data.n > true", "", &[n], "primary ordered"),
            ("data.n in [1, 2]", "", &[n], "primary ordered"),
            ("!(data.n > 5)", "", &[n], "primary ordered"),
        ];
        for (filter, sort, indexes, expected) in cases {
            assert_eq!(
                &describe(filter, sort, indexes),
                expected,
                "filter {filter:?} sort {sort:?}"
            );
        }
    }
}
