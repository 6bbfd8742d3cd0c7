//! The built-in functions of the filter and rule language: what their literal arguments
//! compile to (patterns, durations) and what they compute.
//!
//! Every function costs time linear in its input: `matches` runs on the `regex` crate's
//! automata (no backtracking), with a size limit on the pattern and on what it compiles to.

use super::ast::Func;
use super::eval::Val;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The longest pattern `matches` accepts, in bytes.
const MAX_PATTERN: usize = 512;

/// What a pattern may compile to, in bytes.
const MAX_COMPILED: usize = 256 * 1024;

/// Compiled patterns kept for reuse (a filter is parsed on every request).
const CACHED_PATTERNS: usize = 256;

/// A compiled pattern, from the cache when it was compiled before.
pub(crate) fn regex(pattern: &str) -> Result<Arc<regex::Regex>, String> {
    if pattern.len() > MAX_PATTERN {
        return Err(format!("a pattern is at most {MAX_PATTERN} bytes"));
    }
    static CACHE: Mutex<Option<HashMap<String, Arc<regex::Regex>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(compiled) = cache.get(pattern) {
        return Ok(compiled.clone());
    }
    let compiled = regex::RegexBuilder::new(pattern)
        .size_limit(MAX_COMPILED)
        .dfa_size_limit(MAX_COMPILED)
        .build()
        .map(Arc::new)
        .map_err(|e| format!("invalid pattern: {e}"))?;
    if cache.len() >= CACHED_PATTERNS {
        cache.clear();
    }
    cache.insert(pattern.to_string(), compiled.clone());
    Ok(compiled)
}

const SECOND: i128 = 1_000_000_000;

/// An ISO 8601 duration in weeks, days, hours, minutes and seconds (`P7D`, `PT1H30M`,
/// `PT0.5S`, `P1W`), in nanoseconds. Years and months are refused: their length varies.
pub(crate) fn duration(text: &str) -> Result<i128, String> {
    let bad = || format!("invalid duration {text:?}: use for example P7D, PT1H30M or PT0.5S");
    let rest = text.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(bad()),
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    let mut add = |part: &str, units: &[(char, i128)]| -> Result<(), String> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            if c == 'Y' || (c == 'M' && units.iter().any(|u| u.0 == 'D')) {
                return Err(format!(
                    "invalid duration {text:?}: years and months have no fixed length; use days"
                ));
            }
            let scale = units.iter().find(|u| u.0 == c).ok_or_else(bad)?.1;
            let value: f64 = number.parse().map_err(|_| bad())?;
            if !value.is_finite() || value > 1e12 {
                return Err(bad());
            }
            total += (value * scale as f64) as i128;
            number.clear();
        }
        if number.is_empty() {
            Ok(())
        } else {
            Err(bad())
        }
    };
    add(date, &[('W', 7 * 86_400 * SECOND), ('D', 86_400 * SECOND)])?;
    if let Some(time) = time {
        add(
            time,
            &[('H', 3_600 * SECOND), ('M', 60 * SECOND), ('S', SECOND)],
        )?;
    }
    Ok(total)
}

/// A time as nanoseconds since the Unix epoch, from an RFC 3339 string.
pub(crate) fn parse_time(text: &str) -> Option<i128> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp_nanos())
}

/// Now (by `crate::clock`, which the dev clock moves), as nanoseconds since the Unix epoch.
fn now() -> i128 {
    crate::clock::now_utc().unix_timestamp_nanos()
}

fn json<'s>(v: Value) -> Val<'s> {
    Val::Json(Cow::Owned(v))
}

/// The string an argument holds, if it is one.
fn text<'a>(v: &'a Val<'_>) -> Option<&'a str> {
    match v {
        Val::Json(j) => j.as_str(),
        _ => None,
    }
}

/// Applies `func` to its evaluated arguments. `changed` is evaluated by the caller, which
/// has the scope.
pub(crate) fn call<'s>(func: &Func, args: &[Val<'s>]) -> Val<'s> {
    let arg = |i: usize| args.get(i);
    let null = || json(Value::Null);
    match func {
        Func::Size => match arg(0) {
            Some(Val::Json(v)) => match v.as_ref() {
                Value::String(s) => json(Value::from(s.chars().count())),
                Value::Array(a) => json(Value::from(a.len())),
                Value::Object(o) => json(Value::from(o.len())),
                _ => null(),
            },
            _ => null(),
        },
        Func::StartsWith | Func::EndsWith => {
            let holds = match (arg(0).and_then(text), arg(1).and_then(text)) {
                (Some(s), Some(affix)) if matches!(func, Func::StartsWith) => s.starts_with(affix),
                (Some(s), Some(affix)) => s.ends_with(affix),
                _ => false,
            };
            json(Value::Bool(holds))
        }
        Func::Lower => arg(0)
            .and_then(text)
            .map_or_else(null, |s| json(Value::String(s.to_lowercase()))),
        Func::Upper => arg(0)
            .and_then(text)
            .map_or_else(null, |s| json(Value::String(s.to_uppercase()))),
        Func::Matches(re) => json(Value::Bool(
            arg(0).and_then(text).is_some_and(|s| re.is_match(s)),
        )),
        Func::Has => {
            let holds = match (arg(0), arg(1).and_then(text)) {
                (Some(Val::Json(v)), Some(key)) => {
                    v.as_object().is_some_and(|o| o.contains_key(key))
                }
                _ => false,
            };
            json(Value::Bool(holds))
        }
        Func::Keys => match arg(0) {
            Some(Val::Json(v)) => v.as_object().map_or_else(null, |o| {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                json(Value::Array(
                    keys.into_iter().map(|k| Value::String(k.clone())).collect(),
                ))
            }),
            _ => null(),
        },
        Func::Type => json(Value::String(
            match arg(0) {
                Some(Val::Time(_)) => "time",
                Some(Val::Duration(_)) => "duration",
                Some(Val::Json(v)) => match v.as_ref() {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                },
                None => "null",
            }
            .into(),
        )),
        Func::Now => Val::Time(now()),
        Func::Time => match arg(0) {
            Some(Val::Time(t)) => Val::Time(*t),
            Some(v) => text(v).and_then(parse_time).map_or_else(null, Val::Time),
            None => null(),
        },
        Func::Duration(nanos) => Val::Duration(*nanos),
        Func::Changed(_) => json(Value::Bool(false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("P7D"), Ok(7 * 86_400 * SECOND));
        assert_eq!(duration("P1W"), Ok(7 * 86_400 * SECOND));
        assert_eq!(duration("PT1H30M"), Ok(5_400 * SECOND));
        assert_eq!(duration("PT0.5S"), Ok(SECOND / 2));
        assert_eq!(duration("P1DT1S"), Ok(86_401 * SECOND));
        for bad in ["", "P", "7D", "PT", "P1Y", "P1M", "P1X", "PT1", "P1.5.5D"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
