//! FHIR JSON in and out.
//!
//! Parsing happens in two passes over the text. The first is our own strict
//! RFC 8259 scanner: it refuses duplicate keys (serde_json silently keeps the
//! last one, and two parsers that disagree on which one counts is how
//! smuggling starts), nesting deeper than the limit, lone surrogates and
//! anything after the root value, and it knows line and column for each
//! error. The second builds the `serde_json::Value` from text already known to
//! be good; with serde_json's `arbitrary_precision` every number keeps its
//! exact text, so a decimal `1.50` stays `1.50`.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::Limits;
use super::error::{FhirError, Location, Syntax, safe_name};
use super::narrative;

/// Parses a FHIR JSON resource: size and nesting caps, no duplicate keys,
/// valid UTF-8 (a UTF-8 byte order mark is skipped), a root object with a
/// string `resourceType`, and narrative `div`s within the allowed XHTML subset.
pub fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Value, FhirError> {
    if bytes.len() > limits.max_bytes {
        return Err(FhirError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| FhirError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    Scanner::new(text, limits.max_depth).run()?;
    let value: Value = serde_json::from_str(text).map_err(|e| FhirError::Syntax {
        syntax: Syntax::Json,
        at: Location {
            path: String::new(),
            line: e.line(),
            column: e.column(),
        },
        reason: "rejected by the value parser",
    })?;
    let Value::Object(root) = &value else {
        return Err(not_a_resource("the root is not an object"));
    };
    match root.get("resourceType") {
        Some(Value::String(t)) if !t.is_empty() => {}
        Some(_) => return Err(not_a_resource("resourceType is not a string")),
        None => return Err(not_a_resource("resourceType is missing")),
    }
    check_narratives(&value, &mut String::from("$"))?;
    Ok(value)
}

/// Serialises a resource as compact JSON with `resourceType` first in every
/// object that has one (FHIR does not require it, but many readers stream and
/// like to know the type before the content). Numbers keep their text.
pub fn to_json_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn not_a_resource(reason: &'static str) -> FhirError {
    FhirError::NotAResource {
        at: Location::path("$"),
        reason,
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::String(s) => write_str(out, s),
        Value::Number(n) => {
            // Writing into a String cannot fail.
            let _ = write!(out, "{n}");
        }
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Null => out.push_str("null"),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    let first = map.get_key_value("resourceType");
    let rest = map.iter().filter(|(k, _)| k.as_str() != "resourceType");
    for (i, (k, v)) in first.into_iter().chain(rest).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

/// A JSON string, escaped as serde_json escapes it (`"`, `\\`, the short
/// forms `\b \f \n \r \t`, other control characters as `\u00xx`),
/// straight into `out`: a resource is written on every read, and a copy per
/// key and value was most of what reads allocated.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Checks every `text.div` string in the document against the narrative rules.
fn check_narratives(value: &Value, path: &mut String) -> Result<(), FhirError> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let len = path.len();
                path.push('.');
                path.push_str(safe_name(k));
                if k == "text" {
                    if let Some(Value::String(div)) = v.as_object().and_then(|o| o.get("div")) {
                        let at = format!("{path}.div");
                        narrative::check_narrative_at(div, &at)?;
                    }
                }
                check_narratives(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_narratives(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One open container while scanning.
enum Frame {
    Object { keys: HashSet<String>, key: String },
    Array { index: usize },
}

/// Strict JSON grammar check with depth and duplicate-key limits.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
    stack: Vec<Frame>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str, max_depth: usize) -> Scanner<'a> {
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            max_depth,
            stack: Vec::new(),
        }
    }

    fn run(mut self) -> Result<(), FhirError> {
        'value: loop {
            self.skip_ws();
            match self.peek() {
                Some(b'{') => {
                    self.open(Frame::Object {
                        keys: HashSet::new(),
                        key: String::new(),
                    })?;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        self.stack.pop();
                    } else {
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.open(Frame::Array { index: 0 })?;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        self.stack.pop();
                    } else {
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string(false)?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                None => return Err(self.syntax("unexpected end of input")),
                Some(_) => return Err(self.syntax("expected a value")),
            }
            // After a complete value: close containers or move to the next member.
            loop {
                self.skip_ws();
                let next = self.peek();
                match self.stack.last_mut() {
                    None => {
                        return match next {
                            None => Ok(()),
                            Some(_) => Err(self.syntax("trailing characters after the root value")),
                        };
                    }
                    Some(Frame::Object { .. }) => match next {
                        Some(b',') => {
                            self.pos += 1;
                            self.skip_ws();
                            self.key()?;
                            continue 'value;
                        }
                        Some(b'}') => {
                            self.pos += 1;
                            self.stack.pop();
                        }
                        None => return Err(self.syntax("unexpected end of input")),
                        Some(_) => return Err(self.syntax("expected ',' or '}'")),
                    },
                    Some(Frame::Array { index }) => match next {
                        Some(b',') => {
                            *index += 1;
                            self.pos += 1;
                            continue 'value;
                        }
                        Some(b']') => {
                            self.pos += 1;
                            self.stack.pop();
                        }
                        None => return Err(self.syntax("unexpected end of input")),
                        Some(_) => return Err(self.syntax("expected ',' or ']'")),
                    },
                }
            }
        }
    }

    fn open(&mut self, frame: Frame) -> Result<(), FhirError> {
        if self.stack.len() >= self.max_depth {
            return Err(FhirError::TooDeep {
                limit: self.max_depth,
                at: Location::at(self.text, self.pos, self.path()),
            });
        }
        self.pos += 1;
        self.stack.push(frame);
        Ok(())
    }

    /// An object key and its colon; refuses a key seen before in this object.
    fn key(&mut self) -> Result<(), FhirError> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax("expected a string key"));
        }
        let start = self.pos;
        let key = self.string(true)?;
        if let Some(Frame::Object { keys, key: current }) = self.stack.last_mut() {
            if !keys.insert(key.clone()) {
                current.clear();
                current.push_str(&key);
                return Err(FhirError::DuplicateKey {
                    at: Location::at(self.text, start, self.path()),
                });
            }
            *current = key;
        }
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.syntax("expected ':'"));
        }
        self.pos += 1;
        Ok(())
    }

    /// A string; returns its decoded content when `decode` (keys only).
    fn string(&mut self, decode: bool) -> Result<String, FhirError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if decode {
                out.push_str(self.text.get(start..self.pos).unwrap_or(""));
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    if decode {
                        out.push(c);
                    }
                }
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    /// One escape after the backslash.
    fn escape(&mut self) -> Result<char, FhirError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let hi = self.hex4()?;
                return match hi {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.syntax("lone surrogate in a \\u escape"));
                        }
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(self.syntax("lone surrogate in a \\u escape"));
                        }
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(cp).ok_or_else(|| self.syntax("bad \\u escape"))
                    }
                    0xDC00..=0xDFFF => Err(self.syntax("lone surrogate in a \\u escape")),
                    _ => char::from_u32(hi).ok_or_else(|| self.syntax("bad \\u escape")),
                };
            }
            _ => return Err(self.syntax("bad escape in a string")),
        };
        self.pos += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, FhirError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax("short \\u escape"))?;
        let mut v = 0u32;
        for d in digits {
            let n = (*d as char)
                .to_digit(16)
                .ok_or_else(|| self.syntax("bad \\u escape"))?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), FhirError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("expected a value"))
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), FhirError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("bad number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("bad number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn syntax(&self, reason: &'static str) -> FhirError {
        FhirError::Syntax {
            syntax: Syntax::Json,
            at: Location::at(self.text, self.pos, self.path()),
            reason,
        }
    }

    /// `$.entry[2].resource`: where the scanner is, with unsafe names hidden.
    fn path(&self) -> String {
        let mut p = String::from("$");
        for f in &self.stack {
            match f {
                Frame::Object { key, .. } if !key.is_empty() => {
                    p.push('.');
                    p.push_str(safe_name(key));
                }
                Frame::Object { .. } => {}
                Frame::Array { index } => p.push_str(&format!("[{index}]")),
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Value, FhirError> {
        parse_json(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn a_resource_parses() {
        let v = parse(r#"{"resourceType":"Patient","active":true,"x":[1,2.50,-0.0e+1]}"#).unwrap();
        assert_eq!(v["resourceType"], "Patient");
        assert_eq!(v["x"][1].to_string(), "2.50");
        assert_eq!(v["x"][2].to_string(), "-0.0e+1");
    }

    #[test]
    fn decimals_keep_their_text() {
        let v = parse(r#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#).unwrap();
        assert_eq!(v["valueQuantity"]["value"].to_string(), "1.50");
        assert_eq!(
            to_json_string(&v),
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#
        );
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut every: String = (0u8..0x80).map(char::from).collect();
        every.push_str("é€𝄞\u{7f}\u{2028}");
        for s in [every.as_str(), "", "plain", "\"", "a\\b", "\u{1}x\u{1f}"] {
            let mut out = String::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
        let v = serde_json::json!({
            "b": [true, false, null, "x\ny"], "resourceType": "Basic", "k\"ey": {"n": 1}
        });
        let written = to_json_string(&v);
        assert!(
            written.starts_with(r#"{"resourceType":"Basic","#),
            "{written}"
        );
        assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), v);
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_place() {
        let e = parse(
            "{\"resourceType\":\"Patient\",\n \"name\":[{\"family\":\"a\",\"family\":\"b\"}]}",
        )
        .unwrap_err();
        match &e {
            FhirError::DuplicateKey { at } => {
                assert_eq!(at.path, "$.name[0].family");
                assert_eq!((at.line, at.column), (2, 24));
            }
            other => panic!("{other:?}"),
        }
        // An escaped spelling of the same key is the same key.
        let e = parse(r#"{"resourceType":"Patient","a":1,"\u0061":2}"#).unwrap_err();
        assert!(matches!(e, FhirError::DuplicateKey { .. }), "{e:?}");
        // The same key in different objects is fine.
        parse(r#"{"resourceType":"Patient","a":{"b":1},"c":{"b":1}}"#).unwrap();
    }

    #[test]
    fn depth_is_capped() {
        let limits = Limits::default();
        let ok = format!(
            "{{\"resourceType\":\"X\",\"a\":{}1{}}}",
            "[".repeat(limits.max_depth - 1),
            "]".repeat(limits.max_depth - 1)
        );
        parse(&ok).unwrap();
        let deep = format!(
            "{{\"resourceType\":\"X\",\"a\":{}1{}}}",
            "[".repeat(limits.max_depth),
            "]".repeat(limits.max_depth)
        );
        assert!(matches!(
            parse(&deep),
            Err(FhirError::TooDeep { limit: 32, .. })
        ));
        // A million open brackets: refused early, no stack overflow.
        let huge = "[".repeat(1_000_000);
        assert!(matches!(
            parse_json(huge.as_bytes(), &Limits::default()),
            Err(FhirError::TooDeep { .. })
        ));
    }

    #[test]
    fn size_is_capped() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            parse_json(br#"{"resourceType":"Patient"}"#, &limits),
            Err(FhirError::TooLarge { limit: 10 })
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let e = parse_json(
            b"{\"resourceType\":\"Pat\xC3\x28ient\"}",
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e, FhirError::InvalidUtf8 { offset: 20 });
        // A byte order mark is fine.
        parse_json(
            b"\xEF\xBB\xBF{\"resourceType\":\"Patient\"}",
            &Limits::default(),
        )
        .unwrap();
    }

    #[test]
    fn grammar_is_strict() {
        for bad in [
            "",
            " ",
            "{",
            "{\"resourceType\":\"P\",}",
            "{\"resourceType\":\"P\"} x",
            "{\"resourceType\":\"P\"}{}",
            "{'resourceType':'P'}",
            "{\"resourceType\":\"P\",\"a\":01}",
            "{\"resourceType\":\"P\",\"a\":1.}",
            "{\"resourceType\":\"P\",\"a\":.5}",
            "{\"resourceType\":\"P\",\"a\":+1}",
            "{\"resourceType\":\"P\",\"a\":1e}",
            "{\"resourceType\":\"P\",\"a\":NaN}",
            "{\"resourceType\":\"P\",\"a\":tru}",
            "{\"resourceType\":\"P\",\"a\":\"\\x\"}",
            "{\"resourceType\":\"P\",\"a\":\"\\ud800\"}",
            "{\"resourceType\":\"P\",\"a\":\"\\udc00\\ud800\"}",
            "{\"resourceType\":\"P\",\"a\":\"tab\there\"}",
            "{\"resourceType\":\"P\",\"a\":[1,]}",
            "{\"resourceType\":\"P\" \"a\":1}",
            "{\"resourceType\":\"P\",\"a\" 1}",
            "{\"resourceType\":\"P\",1:1}",
            "{\"resourceType\":\"P\",\"a\":\"/* */\"}/* */",
        ] {
            let r = parse(bad);
            assert!(matches!(r, Err(FhirError::Syntax { .. })), "{bad:?}: {r:?}");
        }
        parse("{\"resourceType\":\"P\",\"a\":\"\\ud83d\\ude00 \\/ \\u00e9\"}").unwrap();
    }

    #[test]
    fn the_root_must_be_a_resource() {
        for (doc, reason) in [
            ("[]", "the root is not an object"),
            ("\"x\"", "the root is not an object"),
            ("{}", "resourceType is missing"),
            ("{\"resourceType\":1}", "resourceType is not a string"),
            ("{\"resourceType\":\"\"}", "resourceType is not a string"),
        ] {
            match parse(doc) {
                Err(FhirError::NotAResource { reason: r, .. }) => assert_eq!(r, reason, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn narratives_are_checked() {
        let doc = r#"{"resourceType":"Patient","contained":[{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>"}}]}"#;
        match parse(doc) {
            Err(FhirError::UnsafeNarrative { at, .. }) => {
                assert_eq!(at.path, "$.contained[0].text.div")
            }
            other => panic!("{other:?}"),
        }
        let ok = r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>ok</p></div>"}}"#;
        parse(ok).unwrap();
    }

    #[test]
    fn errors_never_echo_values() {
        let e = parse(r#"{"resourceType":"Patient","999999990":1,"999999990":2}"#).unwrap_err();
        assert!(!e.to_string().contains("999999990"), "{e}");
        let e = parse(r#"{"resourceType":"Patient","a":"999999990" x}"#).unwrap_err();
        assert!(!e.to_string().contains("999999990"), "{e}");
    }

    #[test]
    fn every_truncated_prefix_is_an_error() {
        let doc = r#"{"resourceType":"Patient","id":"p1","active":true,"name":[{"family":"Jansen","given":["Jan","K."]}],"multipleBirthInteger":2,"x":-1.5e3,"y":null,"z":"\u00e9\"\\"}"#;
        parse(doc).unwrap();
        for end in 0..doc.len() {
            assert!(
                parse_json(&doc.as_bytes()[..end], &Limits::default()).is_err(),
                "{end}"
            );
        }
    }
}
