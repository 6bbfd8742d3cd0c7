//! An exact difference between two JSON objects (a document's data before and after a
//! change), for change records that do not copy what a change left alone. A diff is a list of
//! edits at object paths: set a value, or remove a key.
//! It descends only into objects present on both sides; any other changed value (an array, a
//! scalar, a change of type) is set whole. Unlike an RFC 7386 merge patch it can set `null`,
//! so `apply(before, diff(before, after)) == after` always holds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One edit: `set` the value at `path`, or remove the key at `path` when `set` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Edit {
    #[serde(rename = "p")]
    pub path: Vec<String>,
    #[serde(
        rename = "s",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub set: Option<Value>,
}

/// A present `s`, even `null`, is a value to set (serde would read `null` as `None`: a
/// removal); only an absent `s` is a removal.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The edits that turn `before` into `after`.
pub(super) fn diff(before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<Edit> {
    let mut edits = Vec::new();
    diff_objects(before, after, &mut Vec::new(), &mut edits);
    edits
}

fn diff_into(before: &Value, after: &Value, path: &mut Vec<String>, out: &mut Vec<Edit>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => diff_objects(b, a, path, out),
        _ if before == after => {}
        _ => out.push(Edit {
            path: path.clone(),
            set: Some(after.clone()),
        }),
    }
}

fn diff_objects(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    path: &mut Vec<String>,
    out: &mut Vec<Edit>,
) {
    for (key, old) in before {
        path.push(key.clone());
        match after.get(key) {
            Some(new) => diff_into(old, new, path, out),
            None => out.push(Edit {
                path: path.clone(),
                set: None,
            }),
        }
        path.pop();
    }
    for (key, new) in after {
        if !before.contains_key(key) {
            path.push(key.clone());
            out.push(Edit {
                path: path.clone(),
                set: Some(new.clone()),
            });
            path.pop();
        }
    }
}

/// Applies `edits` to `map` in place. Fails (naming the path) when an edit does not fit: the
/// map is not the one the diff was made from.
pub(super) fn apply(map: &mut Map<String, Value>, edits: &[Edit]) -> Result<(), String> {
    for edit in edits {
        let misfit = || format!("the edit at {} does not fit", edit.path.join("."));
        let (last, parents) = edit.path.split_last().ok_or_else(misfit)?;
        let mut target = &mut *map;
        for key in parents {
            target = target
                .get_mut(key)
                .and_then(Value::as_object_mut)
                .ok_or_else(misfit)?;
        }
        match &edit.set {
            Some(v) => {
                target.insert(last.clone(), v.clone());
            }
            None => {
                target.remove(last).ok_or_else(misfit)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn small_changes_make_small_diffs() {
        let before = object(json!({"big": "x".repeat(1000), "n": 1, "gone": true, "o": {"a": 1}}));
        let after = object(json!({"big": "x".repeat(1000), "n": null, "new": [1], "o": {"a": 2}}));
        let edits = diff(&before, &after);
        assert!(serde_json::to_vec(&edits).unwrap().len() < 200, "{edits:?}");
        let mut v = before.clone();
        apply(&mut v, &edits).unwrap();
        assert_eq!(v, after);
        assert!(diff(&after, &after).is_empty());
        let mut wrong = object(json!({"o": 1}));
        assert!(apply(&mut wrong, &edits).is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|n| json!(n)),
            "[ab]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[abc]", json_value(), 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn apply_of_diff_is_exact(before in json_object(), after in json_object()) {
            // Through the stored form, as change records keep it.
            let stored = serde_json::to_vec(&diff(&before, &after)).unwrap();
            let edits: Vec<Edit> = serde_json::from_slice(&stored).unwrap();
            let mut v = before.clone();
            apply(&mut v, &edits).unwrap();
            prop_assert_eq!(v, after);
        }
    }
}
