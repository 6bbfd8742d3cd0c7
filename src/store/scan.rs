//! Query execution: runs the plan that `query::plan` chooses against the key layout, reading
//! the engine in chunks. An unordered scan (a sort no index serves) keeps only the best
//! `limit + 1` matches in a bounded heap, whatever the collection's size.

use super::keys::{self, prefix_end, successor};
use super::{decode_doc, CollectionState, RawDocument, Store, StoreError};
use crate::engine::{Bytes, Direction, KeyRange, Keyspace};
use crate::model::Document;
use crate::query::ast::{Expr, SortKey};
use crate::query::matches;
use crate::query::order;
use crate::query::plan::{self, compare_positions, effective_sort, sort_values, Access, Range};
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A query over one collection.
pub(crate) struct QuerySpec<'a> {
    pub filter: Option<&'a Expr>,
    /// The requested sort; the effective sort adds `id` (see `query::plan`).
    pub sort: &'a [SortKey],
    pub limit: usize,
    /// Start strictly after this position: the effective-sort values of the last item seen.
    pub after: Option<&'a [Value]>,
    /// Whether the caller may see a document (the read rule), applied with the filter; `None`
    /// when the caller may see every document.
    pub visible: Option<&'a (dyn Fn(&Document) -> bool + Send + Sync + 'a)>,
}

/// One document a query found: its stored bytes, and the document itself when the scan had to
/// parse it (to evaluate the filter or the read rule).
type Found = (Option<Document>, RawDocument);

pub(crate) struct QueryResult {
    found: Vec<Found>,
    /// Whether more matching documents follow the last item.
    pub has_more: bool,
}

impl QueryResult {
    /// The last document of the page (for the next page's cursor).
    pub(crate) fn last_document(&self) -> Result<Option<Document>, StoreError> {
        match self.found.last() {
            Some((Some(doc), _)) => Ok(Some(doc.clone())),
            Some((None, raw)) => raw.decode().map(Some),
            None => Ok(None),
        }
    }

    /// The documents of the page, parsed.
    pub(crate) fn into_documents(self) -> Result<Vec<Document>, StoreError> {
        self.found
            .into_iter()
            .map(|(doc, raw)| doc.map_or_else(|| raw.decode(), Ok))
            .collect()
    }

    /// The stored bytes of the page's documents, for serving without re-serialising.
    pub(crate) fn into_raw(self) -> Vec<RawDocument> {
        self.found.into_iter().map(|(_, raw)| raw).collect()
    }
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

/// Entries read from the engine per step of a scan.
const CHUNK: usize = 256;

/// Index entries read per step when counting them (no document is read with them).
const COUNT_CHUNK: usize = 1024;

/// A match of an unordered scan, ordered by its position in the effective sort.
struct Candidate<'a> {
    position: Vec<Value>,
    found: Found,
    sort: &'a [SortKey],
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate<'_> {}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_positions(&self.position, &other.position, self.sort)
    }
}

/// The error of a query that examined more than `budget` documents without an index, naming
/// the index that would serve it.
fn over_budget(collection: &str, budget: u64, spec: &QuerySpec<'_>) -> StoreError {
    let fields = plan::suggest_index(spec.filter, spec.sort);
    let advice = if fields.is_empty() {
        "narrow the filter with `==` or a range on a field, and declare an index on it".to_string()
    } else {
        let list: Vec<String> = fields
            .iter()
            .map(|f| format!("{:?}", f.to_string()))
            .collect();
        format!(
            "declare an index on [{}] (PUT /v1/admin/collections/{collection} with \"indexes\")",
            list.join(", ")
        )
    };
    StoreError::ScanBudget(format!(
        "this query would examine more than {budget} documents of {collection} without an index; {advice}"
    ))
}

/// Where a plan reads: a keyspace and the `[lo, hi)` range of its entries, below `base` (the
/// collection's documents, or an index with its fixed equal values).
struct Reach {
    ks: Keyspace,
    base: Vec<u8>,
    lo: Vec<u8>,
    hi: Vec<u8>,
    /// How many leading index fields the equal values fix.
    fixed: usize,
}

/// The range `plan` reads, or `None` when it is empty.
fn reach(
    collection: &str,
    ready: &[Cow<'_, super::IndexDef>],
    plan: &plan::Plan,
) -> Result<Option<Reach>, StoreError> {
    let (ks, base, range, fixed) = match &plan.access {
        Access::Primary { range } => {
            let base = keys::doc_prefix(collection);
            let range = primary_range(&base, range.as_ref());
            (Keyspace::Documents, base, range, 0)
        }
        Access::Index {
            index,
            equal,
            range,
        } => {
            let Some(def) = ready.get(*index) else {
                return Err(StoreError::Corrupt(format!(
                    "planned index {index} is gone"
                )));
            };
            let mut base = def.prefix.clone();
            for v in equal {
                order::encode(v, &mut base);
            }
            let range = index_range(&base, range.as_ref());
            (Keyspace::Indexes, base, Some(range), equal.len())
        }
    };
    Ok(range.map(|(lo, hi)| Reach {
        ks,
        base,
        lo,
        hi,
        fixed,
    }))
}

/// One stored document a scan step met: its bytes, and whether the entry that led to it still
/// describes it (an index entry of the document's current version, or the document itself).
struct Met {
    bytes: Bytes,
    current: bool,
}

/// Reads the next `chunk` entries of `cursor` (moving it past them) and the documents they name
/// (an index chunk's documents at once: one round trip on a database server). Entries whose
/// document is gone are left out. The flag says whether the range ended.
async fn step(
    store: &Store,
    collection: &str,
    ks: Keyspace,
    cursor: &mut KeyRange,
    direction: Direction,
    chunk: usize,
) -> Result<(Vec<Met>, bool), StoreError> {
    let entries = store.engine.scan(ks, cursor, direction, chunk).await?;
    let exhausted = entries.len() < chunk;
    if let Some((last, _)) = entries.last() {
        match direction {
            Direction::Forward => cursor.start = successor(last),
            Direction::Reverse => cursor.end = Some(last.to_vec()),
        }
    }
    if ks != Keyspace::Indexes {
        let met = entries
            .into_iter()
            .map(|(_, bytes)| Met {
                bytes,
                current: true,
            })
            .collect();
        return Ok((met, exhausted));
    }
    let doc_keys: Vec<Vec<u8>> = entries
        .iter()
        .map(|(_, value)| {
            let (id, _) = keys::parse_index_value(value);
            keys::doc_key(collection, &String::from_utf8_lossy(id))
        })
        .collect();
    let documents = store
        .engine
        .get_many(Keyspace::Documents, &doc_keys)
        .await?;
    let mut met = Vec::with_capacity(entries.len());
    for ((_, value), bytes) in entries.iter().zip(documents) {
        let Some(bytes) = bytes else { continue };
        let (_, version) = keys::parse_index_value(value);
        let current = version.is_some_and(|v| RawDocument::stored_version(&bytes) == v);
        met.push(Met { bytes, current });
    }
    Ok((met, exhausted))
}

pub(super) async fn run(
    store: &Store,
    collection: &str,
    state: Option<&CollectionState>,
    spec: &QuerySpec<'_>,
) -> Result<QueryResult, StoreError> {
    let ready = store.plannable(collection, state);
    let fields: Vec<_> = ready.iter().map(|i| i.fields.as_slice()).collect();
    let plan = plan::plan(spec.filter, spec.sort, &fields);
    let effective = effective_sort(spec.sort);
    let empty = || QueryResult {
        found: Vec::new(),
        has_more: false,
    };
    let Some(Reach {
        ks,
        base,
        mut lo,
        mut hi,
        fixed,
    }) = reach(collection, &ready, &plan)?
    else {
        return Ok(empty());
    };

    // In an ordered scan, a cursor becomes a seek: the key of the last item seen.
    if let (true, Some(after)) = (plan.ordered, spec.after) {
        let seek = match &plan.access {
            Access::Primary { .. } => {
                let id = after.last().and_then(Value::as_str).unwrap_or("");
                [base.as_slice(), id.as_bytes()].concat()
            }
            Access::Index { index, .. } => {
                let fields = ready.get(*index).map(|d| &d.fields[..fixed]).unwrap_or(&[]);
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

    let accept = |doc: &Document| {
        spec.filter.is_none_or(|f| matches(f, doc)) && spec.visible.is_none_or(|v| v(doc))
    };
    // An ordered scan whose access applies the whole filter, for a caller who may see every
    // document, serves what it reads without parsing it: when the entry it followed still
    // describes the document (same version), the document matches.
    let unparsed = plan.ordered && plan.exact && spec.visible.is_none();
    let direction = if plan.descending {
        Direction::Reverse
    } else {
        Direction::Forward
    };
    let narrowed = !matches!(plan.access, Access::Primary { range: None });
    let budget = store.shared.options.max_scan_documents;
    let mut cursor = KeyRange::new(lo, hi);
    // An ordered scan usually stops after its page (and one more, to tell whether there is
    // a next page): read that much first, then more.
    let page = (spec.limit + 1).min(CHUNK);
    let mut chunk = if plan.ordered { page } else { CHUNK };
    let mut examined = 0u64;
    let mut found: Vec<Found> = Vec::with_capacity(if plan.ordered { page } else { 0 });
    let mut heap: BinaryHeap<Candidate<'_>> = BinaryHeap::new();
    let mut held = 0;
    'scan: loop {
        let (met, exhausted) = step(store, collection, ks, &mut cursor, direction, chunk).await?;
        chunk = CHUNK;
        for Met { bytes, current } in met {
            examined += 1;
            if examined > budget && !narrowed {
                return Err(over_budget(collection, budget, spec));
            }
            if unparsed && current {
                found.push((None, RawDocument(bytes)));
                held = held.max(found.len());
                if found.len() > spec.limit {
                    break 'scan;
                }
                continue;
            }
            let doc = decode_doc(&bytes)?;
            if !accept(&doc) {
                continue;
            }
            let raw = RawDocument(bytes);
            if plan.ordered {
                found.push((Some(doc), raw));
                held = held.max(found.len());
                if found.len() > spec.limit {
                    break 'scan;
                }
                continue;
            }
            let position = sort_values(&doc, &effective);
            let after_cursor = spec
                .after
                .is_none_or(|after| compare_positions(&position, after, &effective).is_gt());
            if !after_cursor {
                continue;
            }
            heap.push(Candidate {
                position,
                found: (Some(doc), raw),
                sort: &effective,
            });
            if heap.len() > spec.limit + 1 {
                heap.pop();
            }
            held = held.max(heap.len());
        }
        if exhausted {
            break;
        }
    }
    let metrics = &store.shared.metrics;
    metrics.scan_examined.inc_by(examined);
    if held as i64 > metrics.query_held_peak.get() {
        metrics.query_held_peak.set(held as i64);
    }
    if !plan.ordered {
        found = heap
            .into_sorted_vec()
            .into_iter()
            .map(|c| c.found)
            .collect();
    }
    let has_more = found.len() > spec.limit;
    found.truncate(spec.limit);
    Ok(QueryResult { found, has_more })
}

/// What [`visit`] passes on for each matching document: the document, or only the fact that one
/// matched, when the caller asked for counts and the scan knows without parsing it.
pub(crate) enum Matched<'a> {
    Document(&'a Document),
    Counted,
}

/// Every document of `collection` that matches `filter` and `visible`, in no particular order,
/// passed to `each`, for aggregates. It reads the whole range the plan reads, so it examines at
/// most `max_scan_documents`, indexed or not. With `counting`, for a caller who may see every
/// document, a plan that applies the whole filter yields [`Matched::Counted`] without parsing:
/// through an index, one per entry, without reading the documents at all.
pub(crate) async fn visit(
    store: &Store,
    collection: &str,
    state: Option<&CollectionState>,
    filter: Option<&Expr>,
    visible: Option<&(dyn Fn(&Document) -> bool + Send + Sync)>,
    counting: bool,
    each: &mut (dyn FnMut(Matched<'_>) + Send),
) -> Result<(), StoreError> {
    let ready = store.plannable(collection, state);
    let fields: Vec<_> = ready.iter().map(|i| i.fields.as_slice()).collect();
    let plan = plan::plan(filter, &[], &fields);
    let Some(reach) = reach(collection, &ready, &plan)? else {
        return Ok(());
    };
    if reach.lo >= reach.hi {
        return Ok(());
    }
    let unparsed = counting && plan.exact && visible.is_none();
    let narrowed = !matches!(plan.access, Access::Primary { range: None });
    let budget = store.shared.options.max_scan_documents;
    let over = |examined: u64| {
        store.shared.metrics.scan_examined.inc_by(examined);
        if !narrowed {
            let spec = QuerySpec {
                filter,
                sort: &[],
                limit: 0,
                after: None,
                visible: None,
            };
            return over_budget(collection, budget, &spec);
        }
        StoreError::ScanBudget(format!(
            "this aggregate would examine more than {budget} documents of {collection}; narrow the filter"
        ))
    };
    let mut cursor = KeyRange::new(reach.lo, reach.hi);
    let mut examined = 0u64;
    if unparsed && reach.ks == Keyspace::Indexes {
        // Counting through an index that applies the whole filter, for a caller who may see
        // every document: each entry is one matching document (a commit changes a document
        // and its entries together), so the entries are counted and no document is read.
        loop {
            let entries = store
                .engine
                .scan(reach.ks, &cursor, Direction::Forward, COUNT_CHUNK)
                .await?;
            for _ in &entries {
                examined += 1;
                if examined > budget {
                    return Err(over(examined));
                }
                each(Matched::Counted);
            }
            match entries.last() {
                Some((last, _)) if entries.len() == COUNT_CHUNK => cursor.start = successor(last),
                _ => break,
            }
        }
        store.shared.metrics.scan_examined.inc_by(examined);
        return Ok(());
    }
    loop {
        let (met, exhausted) = step(
            store,
            collection,
            reach.ks,
            &mut cursor,
            Direction::Forward,
            CHUNK,
        )
        .await?;
        for Met { bytes, current } in met {
            examined += 1;
            if examined > budget {
                return Err(over(examined));
            }
            if unparsed && current {
                each(Matched::Counted);
                continue;
            }
            let doc = decode_doc(&bytes)?;
            if filter.is_none_or(|f| matches(f, &doc)) && visible.is_none_or(|v| v(&doc)) {
                each(Matched::Document(&doc));
            }
        }
        if exhausted {
            break;
        }
    }
    store.shared.metrics.scan_examined.inc_by(examined);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::auth::Principal;
    use crate::docs::{open_for_test, ListParams};
    use crate::engine::{Direction, KeyRange, Keyspace};
    use crate::model::CollectionConfig;
    use serde_json::json;

    /// An index entry left over from an earlier version of its document (as a scan can meet
    /// while a write moves the entry) is checked against the document, never trusted: the
    /// fast path that serves exact index scans without parsing applies only to entries whose
    /// version is the document's.
    #[tokio::test]
    async fn a_stale_index_entry_is_checked_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let docs = open_for_test(dir.path()).await;
        let config = CollectionConfig {
            rules: None,
            indexes: vec![vec!["data.n".into()]],
            schema: None,
            relations: Default::default(),
        };
        docs.configure(&Principal::Service, "c", config)
            .await
            .unwrap();
        // Until its build is done the planner does not use the index.
        docs.store().indexes_built("c").await;
        let engine = docs.store().engine.clone();
        // The entries of the `data.n` index (the built-in owner index has its own).
        let entries = || async {
            let all = engine
                .scan(Keyspace::Indexes, &KeyRange::all(), Direction::Forward, 100)
                .await
                .unwrap();
            all.into_iter()
                .filter(|(key, _)| key.windows(6).any(|w| w == b"data.n"))
                .collect::<Vec<_>>()
        };
        docs.set(&Principal::Service, "c", "d", json!({"n": 1}), None)
            .await
            .unwrap();
        let stale = entries().await;
        assert_eq!(stale.len(), 1);
        docs.set(&Principal::Service, "c", "d", json!({"n": 50}), None)
            .await
            .unwrap();
        let mut txn = engine.begin().await.unwrap();
        txn.put(Keyspace::Indexes, stale[0].0.to_vec(), stale[0].1.to_vec());
        txn.commit(None).await.unwrap();
        assert_eq!(entries().await.len(), 2);

        let list = |filter: &'static str| {
            let docs = docs.clone();
            async move {
                let params = ListParams {
                    filter: Some(filter),
                    sort: Some("data.n"),
                    ..Default::default()
                };
                let page = docs.list(&Principal::Service, "c", &params).await.unwrap();
                page.items
                    .iter()
                    .map(|d| d.data["n"].clone())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list("data.n == 1").await, Vec::<serde_json::Value>::new());
        assert_eq!(list("data.n < 10").await, Vec::<serde_json::Value>::new());
        assert_eq!(list("data.n == 50").await, vec![json!(50)]);
    }
}
