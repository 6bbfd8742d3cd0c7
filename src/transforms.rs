//! Atomic field transforms: changes to a document's fields that are computed in the commit from
//! the stored value, so that concurrent writers never lose one another's update (two clients
//! that each add 1 to `likes` leave it 2 higher).
//!
//! A transform names a field of the data by a dotted path (`likes`, `stats.views`) and says
//! what to do with it: `{"$inc": n}` adds `n` (negative to subtract; a missing field counts as
//! 0), `{"$serverTime": true}` sets the commit's time (the document's `updated_at`),
//! `{"$arrayUnion": [...]}` appends each value not already there, `{"$arrayRemove": [...]}`
//! removes every element equal to one of the values, and `{"$delete": true}` removes the field.
//! Transforms travel beside a merge patch, never inside it, so that `$`-keys in data stay data.

use crate::query::eval::equal;
use serde_json::{Map, Number, Value};

/// The most transforms one update may carry.
pub(crate) const MAX_TRANSFORMS: usize = 64;
/// The most segments of a transform's path.
const MAX_DEPTH: usize = 16;

/// One transform: a field of the data and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transform {
    pub path: Vec<String>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Increment(Number),
    ServerTime,
    ArrayUnion(Vec<Value>),
    ArrayRemove(Vec<Value>),
    Delete,
}

/// Parses the `transforms` object of an update: `{path: {"$op": argument}}`. The error says
/// which path is wrong and how.
pub(crate) fn parse(value: &Value) -> Result<Vec<Transform>, String> {
    let Value::Object(map) = value else {
        return Err("transforms must be an object of {\"path\": {\"$op\": value}}".into());
    };
    if map.len() > MAX_TRANSFORMS {
        return Err(format!("at most {MAX_TRANSFORMS} transforms per update"));
    }
    map.iter()
        .map(|(path, spec)| {
            let at = |message: &str| format!("transforms.{path}: {message}");
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) || segments.len() > MAX_DEPTH {
                return Err(at(&format!(
                    "a path is up to {MAX_DEPTH} non-empty field names joined by dots"
                )));
            }
            let Some((name, argument)) = spec
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
            else {
                return Err(at(
                    "give exactly one of $inc, $serverTime, $arrayUnion, $arrayRemove, $delete",
                ));
            };
            let op = match (name.as_str(), argument) {
                ("$inc", Value::Number(n)) => Op::Increment(n.clone()),
                ("$inc", _) => return Err(at("$inc takes a number")),
                ("$serverTime", Value::Bool(true)) => Op::ServerTime,
                ("$delete", Value::Bool(true)) => Op::Delete,
                ("$serverTime" | "$delete", _) => return Err(at(&format!("{name} takes true"))),
                ("$arrayUnion", Value::Array(items)) => Op::ArrayUnion(items.clone()),
                ("$arrayRemove", Value::Array(items)) => Op::ArrayRemove(items.clone()),
                ("$arrayUnion" | "$arrayRemove", _) => {
                    return Err(at(&format!("{name} takes an array of values")))
                }
                _ => return Err(at(&format!("unknown transform {name}"))),
            };
            Ok(Transform { path: segments, op })
        })
        .collect()
}

/// Applies `transforms` in order to `data` (the stored data after the update's merge patch),
/// with `now` the commit's time. Missing objects on a path are created; the error says which
/// stored value a transform cannot apply to.
pub(crate) fn apply(
    data: &mut Map<String, Value>,
    transforms: &[Transform],
    now: &str,
) -> Result<(), String> {
    for t in transforms {
        let path = t.path.join(".");
        let Some((last, parents)) = t.path.split_last() else {
            continue;
        };
        let mut object = &mut *data;
        for name in parents {
            let slot = object
                .entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(inner) = slot else {
                return Err(format!(
                    "transforms.{path}: {name} holds {}, not an object",
                    kind(slot)
                ));
            };
            object = inner;
        }
        match &t.op {
            Op::Delete => {
                object.remove(last);
            }
            Op::ServerTime => {
                object.insert(last.clone(), Value::String(now.to_string()));
            }
            Op::Increment(by) => {
                let sum = match object.get(last) {
                    None | Some(Value::Null) => Value::Number(by.clone()),
                    Some(Value::Number(n)) => {
                        add(n, by).ok_or_else(|| format!("transforms.{path}: the sum overflows"))?
                    }
                    Some(other) => {
                        return Err(format!(
                            "transforms.{path}: $inc needs a number, the field holds {}",
                            kind(other)
                        ))
                    }
                };
                object.insert(last.clone(), sum);
            }
            Op::ArrayUnion(items) | Op::ArrayRemove(items) => {
                let slot = object
                    .entry(last.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if slot.is_null() {
                    *slot = Value::Array(Vec::new());
                }
                let Value::Array(array) = slot else {
                    return Err(format!(
                        "transforms.{path}: the field holds {}, not an array",
                        kind(slot)
                    ));
                };
                if matches!(t.op, Op::ArrayUnion(_)) {
                    for item in items {
                        if !array.iter().any(|v| equal(v, item)) {
                            array.push(item.clone());
                        }
                    }
                } else {
                    array.retain(|v| !items.iter().any(|item| equal(v, item)));
                }
            }
        }
    }
    Ok(())
}

/// `a + b`: exact for integers, a float otherwise; `None` when it overflows.
fn add(a: &Number, b: &Number) -> Option<Value> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x.checked_add(y).map(Value::from);
    }
    let sum = a.as_f64()? + b.as_f64()?;
    Number::from_f64(sum).map(Value::Number)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(data: Value, transforms: Value) -> Result<Value, String> {
        let mut data = data.as_object().cloned().unwrap_or_default();
        apply(&mut data, &parse(&transforms)?, "2026-11-29T00:00:00Z")?;
        Ok(Value::Object(data))
    }

    #[test]
    fn each_transform_applies_to_the_stored_value() {
        let out = run(
            json!({"likes": 2, "ratio": 0.5, "tags": ["a", "b", 2], "gone": 1, "stats": {"views": 1}}),
            json!({
                "likes": {"$inc": 3}, "ratio": {"$inc": 1}, "fresh": {"$inc": -1},
                "tags": {"$arrayUnion": ["b", "c", "c"]}, "gone": {"$delete": true},
                "stats.views": {"$inc": 1}, "deep.er.at": {"$serverTime": true},
                "none": {"$arrayRemove": [1]},
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"likes": 5, "ratio": 1.5, "fresh": -1, "tags": ["a", "b", 2, "c"],
                   "stats": {"views": 2}, "deep": {"er": {"at": "2026-11-29T00:00:00Z"}}, "none": []})
        );
        // Removal compares as the filter language does: 2 and 2.0 are equal.
        let out = run(
            json!({"tags": ["a", 2, "a", 3]}),
            json!({"tags": {"$arrayRemove": ["a", 2.0]}}),
        );
        assert_eq!(out.unwrap(), json!({"tags": [3]}));
    }

    #[test]
    fn bad_transforms_and_stored_values_are_refused_with_the_path() {
        for (transforms, says) in [
            (json!([]), "must be an object"),
            (json!({"a": {"$inc": "1"}}), "takes a number"),
            (json!({"a": {"$inc": 1, "$delete": true}}), "exactly one"),
            (json!({"a": {"$push": 1}}), "unknown transform $push"),
            (json!({"a..b": {"$delete": true}}), "non-empty"),
            (json!({"a": {"$serverTime": false}}), "takes true"),
            (json!({"a": {"$arrayUnion": 1}}), "array of values"),
        ] {
            let error = parse(&transforms).unwrap_err();
            assert!(error.contains(says), "{transforms}: {error}");
        }
        let stored = json!({"s": "x", "n": i64::MAX, "o": 1});
        for (transforms, says) in [
            (
                json!({"s": {"$inc": 1}}),
                "transforms.s: $inc needs a number, the field holds a string",
            ),
            (json!({"n": {"$inc": 1}}), "overflows"),
            (json!({"s": {"$arrayUnion": [1]}}), "not an array"),
            (
                json!({"o.x": {"$inc": 1}}),
                "o holds a number, not an object",
            ),
        ] {
            let error = run(stored.clone(), transforms.clone()).unwrap_err();
            assert!(error.contains(says), "{transforms}: {error}");
        }
    }
}
