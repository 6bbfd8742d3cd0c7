//! One total order over JSON values, and a byte encoding that sorts the same way.
//!
//! Sorting (`sort=`), cursors and index keys all use this order, so an index scan returns
//! documents in exactly the order an in-memory sort would. The order is:
//! `null < false < true < numbers < strings < arrays and objects`. Numbers compare as `f64`;
//! strings by bytes; arrays and objects by their JSON text.

use serde_json::Value;
use std::cmp::Ordering;

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 1,
        Value::Bool(false) => 2,
        Value::Bool(true) => 3,
        Value::Number(_) => 4,
        Value::String(_) => 5,
        Value::Array(_) | Value::Object(_) => 6,
    }
}

/// A number as `f64`, with `-0.0` folded into `0.0` so that equal numbers encode equally.
pub(crate) fn number(v: &serde_json::Number) -> f64 {
    let f = v.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

/// The total order used for sorting.
pub(crate) fn total_cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number(x).total_cmp(&number(y)),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => {
            a.to_string().cmp(&b.to_string())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Appends the order-preserving encoding of `v` to `out`. Encodings are self-delimiting, so a
/// sequence of encoded values sorts like the tuple of values.
pub(crate) fn encode(v: &Value, out: &mut Vec<u8>) {
    out.push(rank(v));
    match v {
        Value::Null | Value::Bool(_) => {}
        Value::Number(n) => {
            let bits = number(n).to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::String(s) => encode_bytes(s.as_bytes(), out),
        Value::Array(_) | Value::Object(_) => encode_bytes(v.to_string().as_bytes(), out),
    }
}

/// Bytes with `00` escaped as `00 FF`, terminated by `00 01`: a prefix sorts first, and the
/// terminator never appears inside.
fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The rank byte that starts every encoding of a value of the same kind as `v`: a range
/// condition on a number never leaves the numbers.
pub(crate) fn kind_tag(v: &Value) -> u8 {
    rank(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out);
        out
    }

    #[test]
    fn encoding_sorts_like_total_cmp() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-2.5),
            json!(-0.0),
            json!(0),
            json!(1),
            json!(1.5),
            json!(1e300),
            json!(""),
            json!("a"),
            json!("a\u{0}"),
            json!("a\u{1}"),
            json!("ab"),
            json!("b"),
            json!([1, 2]),
            json!({"a": 1}),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(total_cmp(a, b), enc(a).cmp(&enc(b)), "order of {a} and {b}");
            }
        }
    }

    #[test]
    fn tuples_sort_like_their_first_difference() {
        let mut ab = enc(&json!("a"));
        encode(&json!(9), &mut ab);
        let mut a_b = enc(&json!("ab"));
        encode(&json!(1), &mut a_b);
        assert!(ab < a_b);
    }
}
