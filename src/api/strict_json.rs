//! Deserialising request bodies strictly. serde's derived structs also accept a JSON array of
//! their fields in order, so `{"rules": [null, null]}` would be taken as rules; an API whose
//! document says "object" must refuse it. This deserialises from a parsed `Value` exactly as
//! serde_json would, except that a struct must be an object.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Error, Value};

/// Deserialises `T` from `value`, refusing an array where `T` has a struct.
pub(super) fn from_value<T: de::DeserializeOwned>(value: &Value) -> Result<T, Error> {
    T::deserialize(Strict(value))
}

/// A `Value` whose structs must be objects, at every depth.
#[derive(Clone, Copy)]
struct Strict<'a>(&'a Value);

impl<'de> IntoDeserializer<'de, Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Strict<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Strict));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(map) => {
                let mut entries =
                    MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))));
                let value = visitor.visit_map(&mut entries)?;
                entries.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &name)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Unit variants, as strings: the only enums request bodies have.
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(unexpected(other), &"a string")),
        }
    }

    fn is_human_readable(&self) -> bool {
        true
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: Option<String>,
        #[serde(default)]
        n: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        One,
        Two,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        inner: Option<Inner>,
        kinds: Vec<Kind>,
        lists: Vec<Vec<String>>,
        any: Value,
    }

    #[test]
    fn structs_must_be_objects_at_every_depth() {
        let ok = json!({"inner": {"a": "x", "n": 3}, "kinds": ["one", "two"],
                        "lists": [["p"]], "any": [1, {"b": null}]});
        let outer: Outer = from_value(&ok).unwrap();
        assert_eq!(
            outer.inner,
            Some(Inner {
                a: Some("x".into()),
                n: 3
            })
        );
        assert_eq!(outer.kinds, [Kind::One, Kind::Two]);
        assert_eq!(outer.any, json!([1, {"b": null}]));
        for bad in [
            json!([null, [], [], null]),
            json!({"inner": [null, 1], "kinds": [], "lists": [], "any": 1}),
            json!({"inner": {"a": "x", "z": 1}, "kinds": [], "lists": [], "any": 1}),
            json!({"inner": null, "kinds": ["three"], "lists": [], "any": 1}),
        ] {
            assert!(from_value::<Outer>(&bad).is_err(), "{bad}");
        }
        let inner: Inner = from_value(&json!({"a": null})).unwrap();
        assert_eq!(inner, Inner { a: None, n: 0 });
        assert!(from_value::<Inner>(&json!({"n": -1})).is_err());
        assert!(from_value::<Inner>(&json!({"n": 1.5})).is_err());
    }
}
