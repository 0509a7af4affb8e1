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
use std::collections::{BTreeMap, BTreeSet};
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
///
/// Two passes: [`NoDuplicates`] walks the document checking member names only,
/// then serde_json builds the value. This keeps us independent of how
/// serde_json hands numbers to visitors (with its `arbitrary_precision`
/// feature, which the FHIR layer needs, a number arrives as a private one-member
/// map; the key check passes it through unharmed and `serde_json::Value`
/// decodes it properly).
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Object, String> {
    // serde_json's own messages ("expected value", "EOF while parsing …",
    // "recursion limit exceeded", …) never quote input, and the only
    // data-category error the check can raise is our own duplicate report.
    serde_json::from_slice::<NoDuplicates>(bytes).map_err(|e| format!("invalid json: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid json: {e}"))?;
    match convert(value) {
        Value::Object(object) => Ok(object),
        other => Err(format!("expected a json object, found {}", other.kind())),
    }
}

fn convert(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Number(n),
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(items) => Value::Array(items.into_iter().map(convert).collect()),
        serde_json::Value::Object(map) => Value::Object(Object(
            map.into_iter().map(|(k, v)| (k, convert(v))).collect(),
        )),
    }
}

/// Walks any JSON document and fails on a duplicate member name in any
/// object, compared after unescaping (`"alg"` and `"\u0061lg"` are the same).
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NoDuplicates, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut names = BTreeSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if names.contains(&name) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member {}",
                    super::shown(&name)
                )));
            }
            map.next_value::<NoDuplicates>()?;
            names.insert(name);
        }
        Ok(NoDuplicates)
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
    fn numbers_are_numbers_whatever_serde_json_features_are_on() {
        // Regression: with serde_json's arbitrary_precision a number reaches a
        // visitor as a private one-member map; it must still be a number here.
        let o = parse_object(
            br#"{"n":1.50,"big":123456789012345678901234567890,"e":1e999,"a":[1,{"x":2}]}"#,
        )
        .unwrap();
        for k in ["n", "big", "e"] {
            assert_eq!(o.get(k).map(Value::kind), Some("a number"), "{k}");
        }
        assert!(
            parse_object(br#"{"a":[1,{"x":2,"x":3}]}"#)
                .unwrap_err()
                .contains("duplicate member")
        );
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
