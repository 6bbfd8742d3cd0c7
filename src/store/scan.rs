//! Query execution: runs the plan that `query::plan` chooses against the key layout.

use super::keys::{self, prefix_end, successor};
use super::{decode_doc, CollectionState, RawDocument, StoreError};
use crate::model::Document;
use crate::query::ast::{Expr, SortKey};
use crate::query::matches;
use crate::query::order;
use crate::query::plan::{
    self, compare_positions, effective_sort, sort_values, Access, Plan, Range,
};
use serde_json::Value;

/// A query over one collection.
pub struct QuerySpec<'a> {
    pub filter: Option<&'a Expr>,
    /// The requested sort; the effective sort adds `id` (see `query::plan`).
    pub sort: &'a [SortKey],
    pub limit: usize,
    /// Start strictly after this position: the effective-sort values of the last item seen.
    pub after: Option<&'a [Value]>,
    /// Whether the caller may see a document (the read rule); applied with the filter.
    pub visible: &'a (dyn Fn(&Document) -> bool + 'a),
}

pub struct QueryResult {
    pub items: Vec<Document>,
    /// The stored bytes of each item, in the same order, for serving without re-serialising.
    pub raw: Vec<RawDocument>,
    /// Whether more matching documents follow the last item.
    pub has_more: bool,
    pub plan: Plan,
}

/// Appends the encoding of `bound` to `base`.
fn bound_key(base: &[u8], value: &Value) -> Vec<u8> {
    let mut k = base.to_vec();
    order::encode(value, &mut k);
    k
}

/// The `[lo, hi)` keys of an index range below `base`.
fn index_range(base: &[u8], range: Option<&Range>) -> (Vec<u8>, Vec<u8>) {
    let Some(r) = range else {
        return (base.to_vec(), prefix_end(base));
    };
    let lo = match &r.lower {
        None => [base, &[r.kind]].concat(),
        Some(b) if b.inclusive => bound_key(base, &b.value),
        Some(b) => prefix_end(&bound_key(base, &b.value)),
    };
    let hi = match &r.upper {
        None => [base, &[r.kind + 1]].concat(),
        Some(b) if b.inclusive => prefix_end(&bound_key(base, &b.value)),
        Some(b) => bound_key(base, &b.value),
    };
    (lo, hi)
}

/// The `[lo, hi)` keys of an id range among a collection's documents. Ids are strings, so a
/// range of any other kind is empty.
fn primary_range(base: &[u8], range: Option<&Range>) -> Option<(Vec<u8>, Vec<u8>)> {
    let Some(r) = range else {
        return Some((base.to_vec(), prefix_end(base)));
    };
    if r.kind != order::kind_tag(&Value::String(String::new())) {
        return None;
    }
    let raw = |v: &Value| [base, v.as_str().unwrap_or("").as_bytes()].concat();
    let lo = match &r.lower {
        None => base.to_vec(),
        Some(b) if b.inclusive => raw(&b.value),
        Some(b) => successor(&raw(&b.value)),
    };
    let hi = match &r.upper {
        None => prefix_end(base),
        Some(b) if b.inclusive => successor(&raw(&b.value)),
        Some(b) => raw(&b.value),
    };
    Some((lo, hi))
}

pub fn run(
    db: &sled::Db,
    collection: &str,
    state: Option<&CollectionState>,
    spec: &QuerySpec<'_>,
) -> Result<QueryResult, StoreError> {
    let plan = plan::plan(spec.filter, spec.sort, &super::index_fields(state));
    let effective = effective_sort(spec.sort);
    let doc_base = keys::doc_prefix(collection);

    let (base, range, fixed) = match &plan.access {
        Access::Primary { range } => (
            doc_base.clone(),
            primary_range(&doc_base, range.as_ref()),
            0,
        ),
        Access::Index {
            index,
            equal,
            range,
        } => {
            let def = state.and_then(|s| s.indexes.get(*index));
            let Some(def) = def else {
                return Err(StoreError::Corrupt(format!(
                    "planned index {index} is gone"
                )));
            };
            let mut base = def.prefix.clone();
            for v in equal {
                order::encode(v, &mut base);
            }
            let range = index_range(&base, range.as_ref());
            (base, Some(range), equal.len())
        }
    };
    let empty = || QueryResult {
        items: Vec::new(),
        raw: Vec::new(),
        has_more: false,
        plan: plan.clone(),
    };
    let Some((mut lo, mut hi)) = range else {
        return Ok(empty());
    };

    // In an ordered scan, a cursor becomes a seek: the key of the last item seen.
    if let (true, Some(after)) = (plan.ordered, spec.after) {
        let seek = match &plan.access {
            Access::Primary { .. } => {
                let id = after.last().and_then(Value::as_str).unwrap_or("");
                [doc_base.as_slice(), id.as_bytes()].concat()
            }
            Access::Index { index, .. } => {
                let fields = state
                    .and_then(|s| s.indexes.get(*index))
                    .map(|d| &d.fields[..fixed])
                    .unwrap_or(&[]);
                let mut k = base.clone();
                for (key, value) in effective.iter().zip(after) {
                    if fields.contains(&key.path) {
                        continue;
                    }
                    match value {
                        Value::String(id) if key.path.segments == ["id"] => {
                            k.extend_from_slice(id.as_bytes())
                        }
                        v => order::encode(v, &mut k),
                    }
                }
                k
            }
        };
        if plan.descending {
            hi = hi.min(seek);
        } else {
            lo = lo.max(successor(&seek));
        }
    }
    if lo >= hi {
        return Ok(empty());
    }

    let by_index = matches!(plan.access, Access::Index { .. });
    let load = |value: sled::IVec| -> Result<Option<(Document, RawDocument)>, StoreError> {
        let bytes = if by_index {
            let id = String::from_utf8_lossy(&value);
            match db.get(keys::doc_key(collection, &id))? {
                Some(bytes) => bytes,
                None => return Ok(None),
            }
        } else {
            value
        };
        Ok(Some((decode_doc(&bytes)?, RawDocument(bytes))))
    };
    let accept =
        |doc: &Document| spec.filter.is_none_or(|f| matches(f, doc)) && (spec.visible)(doc);

    let iter = db.range(lo..hi);
    let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if plan.descending
    {
        Box::new(iter.rev())
    } else {
        Box::new(iter)
    };

    if plan.ordered {
        let mut found = Vec::with_capacity(spec.limit.min(1024) + 1);
        for entry in iter {
            let (_, value) = entry?;
            if let Some((doc, raw)) = load(value)? {
                if accept(&doc) {
                    found.push((doc, raw));
                    if found.len() > spec.limit {
                        break;
                    }
                }
            }
        }
        let has_more = found.len() > spec.limit;
        found.truncate(spec.limit);
        let (items, raw) = found.into_iter().unzip();
        return Ok(QueryResult {
            items,
            raw,
            has_more,
            plan,
        });
    }

    type Match = (Vec<Value>, (Document, RawDocument));
    let mut matched: Vec<Match> = Vec::new();
    for entry in iter {
        let (_, value) = entry?;
        if let Some((doc, raw)) = load(value)? {
            if accept(&doc) {
                let position = sort_values(&doc, &effective);
                let after_cursor = spec
                    .after
                    .is_none_or(|after| compare_positions(&position, after, &effective).is_gt());
                if after_cursor {
                    matched.push((position, (doc, raw)));
                }
            }
        }
    }
    let by_position = |a: &Match, b: &Match| compare_positions(&a.0, &b.0, &effective);
    if matched.len() > spec.limit + 1 {
        matched.select_nth_unstable_by(spec.limit, by_position);
        matched.truncate(spec.limit + 1);
    }
    matched.sort_by(by_position);
    let has_more = matched.len() > spec.limit;
    matched.truncate(spec.limit);
    let (items, raw) = matched.into_iter().map(|(_, found)| found).unzip();
    Ok(QueryResult {
        items,
        raw,
        has_more,
        plan,
    })
}
