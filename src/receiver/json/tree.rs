//! A compact JSON tree that borrows from the body: strings without escapes point into it,
//! objects are vectors of pairs rather than maps. `serde_json::Value` costs about 48 times
//! a body made of small OTLP points (a `String` per key, a map node per object); this tree
//! costs a few times the body, and reads the same (`docs/design.md`, "Bad input and
//! limits").
//!
//! Parsing is serde_json's, with its nesting limit; only the tree is ours.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that may borrow from the text it was read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    Object(Object<'a>),
}

/// A JSON number, as serde_json reads one without arbitrary precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Uint(u64),
    Float(f64),
}

/// A JSON object: its members in the order written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a>(Vec<(Cow<'a, str>, Value<'a>)>);

impl<'a> Object<'a> {
    /// The member named `key`; the last one when the name is written more than once, as
    /// serde_json's map would keep it.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }
}

impl Number {
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Number::Int(value) => Some(value),
            Number::Uint(value) => i64::try_from(value).ok(),
            Number::Float(_) => None,
        }
    }

    pub fn as_u64(self) -> Option<u64> {
        match self {
            Number::Int(value) => u64::try_from(value).ok(),
            Number::Uint(value) => Some(value),
            Number::Float(_) => None,
        }
    }

    pub fn as_f64(self) -> Option<f64> {
        Some(match self {
            Number::Int(value) => value as f64,
            Number::Uint(value) => value as f64,
            Number::Float(value) => value,
        })
    }
}

impl<'a> Value<'a> {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Value::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(value) => write!(f, "{value}"),
            Number::Uint(value) => write!(f, "{value}"),
            Number::Float(value) => write!(f, "{value}"),
        }
    }
}

/// Scalars as JSON; arrays and objects by kind only, as error messages want them.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(flag) => write!(f, "{flag}"),
            Value::Number(number) => write!(f, "{number}"),
            Value::String(text) => write!(f, "{text:?}"),
            Value::Array(_) => f.write_str("an array"),
            Value::Object(_) => f.write_str("an object"),
        }
    }
}

/// Reads `body` into a tree.
///
/// # Errors
/// serde_json's error when the body is not JSON (or nests past its limit).
pub fn parse(body: &[u8]) -> Result<Value<'_>, serde_json::Error> {
    serde_json::from_slice(body)
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value<'de>, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value<'de>, E> {
        Ok(Value::Number(Number::Int(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value<'de>, E> {
        Ok(Value::Number(Number::Uint(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value<'de>, E> {
        Ok(Value::Number(Number::Float(value)))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text.to_string())))
    }

    fn visit_string<E>(self, text: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = seq.next_element()? {
            values.push(value);
        }
        values.shrink_to_fit();
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        members.shrink_to_fit();
        Ok(Value::Object(Object(members)))
    }
}

/// An object's key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        match deserializer.deserialize_str(ValueVisitor)? {
            Value::String(text) => Ok(Key(text)),
            _ => Err(de::Error::custom("an object key is not a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = br#"{"a": [1, -2, 18446744073709551615, 1.5, "x\"y", "plain", true, null],
                       "b": {"a": 1, "a": 2}}"#;
        let tree = parse(text).expect("JSON");
        let object = tree.as_object().expect("an object");
        let Some(Value::Array(values)) = object.get("a") else {
            panic!("an array: {tree:?}");
        };
        assert_eq!(
            values,
            &[
                Value::Number(Number::Uint(1)),
                Value::Number(Number::Int(-2)),
                Value::Number(Number::Uint(u64::MAX)),
                Value::Number(Number::Float(1.5)),
                Value::String(Cow::Owned("x\"y".into())),
                Value::String(Cow::Borrowed("plain")),
                Value::Bool(true),
                Value::Null,
            ]
        );
        assert!(
            matches!(&values[5], Value::String(Cow::Borrowed(_))),
            "no copy without escapes"
        );
        let inner = object.get("b").and_then(Value::as_object).expect("b");
        assert_eq!(
            inner.get("a"),
            Some(&Value::Number(Number::Uint(2))),
            "the last wins"
        );
        assert_eq!(inner.get("c"), None);
    }

    #[test]
    fn bad_and_deep_json_is_an_error() {
        assert!(parse(b"{\"a\": ").is_err());
        assert!(parse(b"[1, 2,]").is_err());
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(
            parse(deep.as_bytes()).is_err(),
            "serde_json's nesting limit holds"
        );
    }
}
