//! Strict JSON for JOSE headers and JWK Sets.
//!
//! Why serde_json with our own value type, and not serde-json-core: JOSE
//! objects are open-shaped (a header may carry `x5c` arrays, a JWK `x5t`,
//! `key_ops`, vendor members), which fixed-shape heapless structs cannot skip
//! over generically, and RFC 7515 §4 / RFC 7517 §4 want duplicate member
//! names refused, which neither serde_json's `Value` (last one wins) nor
//! derived structs (unknown members are not checked) do. So [`parse_object`]
//! builds a [`Value`] tree that refuses a duplicate member name at every
//! depth, compared after unescaping (`"alg"` and `"\u0061lg"` are the same).
//!
//! Caps: callers bound the input (16 KiB token, 64 KiB JWKS) before parsing,
//! which bounds memory to a small multiple of that; nesting depth is bounded
//! by serde_json's recursion limit (128). serde_json also refuses trailing
//! data, invalid UTF-8, lone surrogates and out-of-range numbers.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

/// A JSON value whose objects had no duplicate member names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object whose member names were unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Object(BTreeMap<String, Value>);

impl Object {
    /// The member's value, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// True when the member is present (with any value, `null` included).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The member as a string: `Ok(None)` when absent, `Err` when present but
    /// not a string.
    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<&str>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("must be a string, found {}", other.kind())),
        }
    }
}

impl Value {
    /// The JSON type name, for error messages (never the value itself).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Parses bytes that must hold one JSON object without duplicate member
/// names at any depth. The error is a short lower-case description that names
/// a position and, for a duplicate, the (escaped, cut) member name; it never
/// quotes other input.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Object, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!("expected a json object, found {}", other.kind())),
        // serde_json's own messages ("expected value", "EOF while parsing …",
        // "recursion limit exceeded", …) never quote input, and the only
        // data-category error a `Value` can raise is our own duplicate report.
        Err(e) => Err(format!("invalid json: {e}")),
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            match members.entry(name) {
                Entry::Occupied(dup) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate member {}",
                        super::shown(dup.key())
                    )));
                }
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value::<Value>()?);
                }
            }
        }
        Ok(Value::Object(Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects_and_refuses_duplicates_at_any_depth() {
        let o = parse_object(br#"{"a":1,"b":[true,null,{"c":"d"}],"e":-1.5}"#).unwrap();
        assert!(o.contains("a") && o.contains("b") && !o.contains("c"));
        assert_eq!(
            o.opt_str("a").unwrap_err(),
            "must be a string, found a number"
        );
        assert_eq!(o.opt_str("zz").unwrap(), None);

        let e = parse_object(br#"{"alg":"ES256","alg":"none"}"#).unwrap_err();
        assert!(e.contains("duplicate member \"alg\""), "{e}");
        let e = parse_object(br#"{"alg":"ES256","\u0061lg":"none"}"#).unwrap_err();
        assert!(e.contains("duplicate member \"alg\""), "escaped twin: {e}");
        let e = parse_object(br#"{"keys":[{"kty":"EC","kty":"RSA"}]}"#).unwrap_err();
        assert!(e.contains("duplicate member \"kty\""), "nested: {e}");
    }

    #[test]
    fn refuses_non_objects_and_broken_json() {
        for (input, want) in [
            (&b"[]"[..], "expected a json object, found an array"),
            (b"\"x\"", "expected a json object, found a string"),
            (b"{\"a\":1} x", "invalid json"),
            (b"{\"a\":1", "invalid json"),
            (b"", "invalid json"),
            (b"\xef\xbb\xbf{}", "invalid json"),
            (b"{\"a\":\"\xff\"}", "invalid json"),
            (b"{\"a\":\"\\ud800\"}", "invalid json"),
            (b"{\"a\":1e999}", "invalid json"),
        ] {
            let e = parse_object(input).unwrap_err();
            assert!(e.starts_with(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_object(deep.as_bytes()).unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
    }

    #[test]
    fn errors_never_quote_input_values() {
        let e = parse_object(br#"{"a":"secret-value" "b":1}"#).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn every_truncated_prefix_is_refused_without_panic() {
        let full = br#"{"alg":"PS256","typ":"JWT","kid":"k","x":[1,{"y":null}]}"#;
        assert!(parse_object(full).is_ok());
        for end in 0..full.len() {
            assert!(parse_object(&full[..end]).is_err(), "prefix {end}");
        }
    }
}
