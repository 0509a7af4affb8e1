//! Percent-encoding (RFC 3986 §2.1), in the two forms we meet, named as such:
//!
//! | form | `+` when decoding | a space when encoding | who uses it |
//! |---|---|---|---|
//! | form: `application/x-www-form-urlencoded` | a space | `+` | token request bodies; the FHIR search queries we serve (read as servlet containers read them) |
//! | query: RFC 3986 query or path component | a `+` | `%20` | the receiver's query parameters (`identifier`, `_format`), path segments, our own links |
//!
//! Decoding is strict and the same in both forms: a `%` not followed by two
//! hex digits (`%zz`, `%4`, a lone `%`, `%+1`), decoded bytes that are not
//! UTF-8 (overlong forms such as `%C0%AF` and encoded surrogates included),
//! any control character in the result (`%00`, `%0A`, DEL, C1) and input
//! longer than [`MAX_INPUT`] are errors, never guessed at or passed through.
//! A path segment is also refused when it decodes to a `/` or `\`
//! ([`decode_segment`]), so `%2F` can never address another path.
//!
//! [`encode_illegal`] is the third encoder: it writes a value received
//! verbatim (a Task's query) into a URL, encoding only what may not appear
//! there and keeping existing encodings as they are.

use std::fmt;

/// Longest input any decoder reads; every caller bounds its own input more
/// tightly (a served query 16 KiB, a token request body 64 KiB).
pub const MAX_INPUT: usize = 64 * 1024;

/// Why a percent-encoded text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` at this byte offset is not followed by two hex digits.
    BadEscape { at: usize },
    /// The decoded bytes are not UTF-8 (this includes overlong forms and
    /// encoded surrogates).
    NotUtf8,
    /// The decoded text holds a control character (`%00`, `%0A`, DEL, C1).
    Control,
    /// A path segment decodes to a `/` or `\`.
    EncodedSeparator,
    /// The input is longer than [`MAX_INPUT`].
    TooLong,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadEscape { at } => {
                write!(f, "the % at byte {at} is not followed by two hex digits")
            }
            DecodeError::NotUtf8 => f.write_str("the decoded bytes are not UTF-8"),
            DecodeError::Control => f.write_str("the decoded text holds a control character"),
            DecodeError::EncodedSeparator => f.write_str("a path segment holds an encoded / or \\"),
            DecodeError::TooLong => write!(f, "the text is longer than {MAX_INPUT} bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space.
pub fn decode_form(raw: &str) -> Result<String, DecodeError> {
    decode(raw, Plus::Space)
}

/// Decodes one RFC 3986 query component: `+` stays a `+`.
pub fn decode_query(raw: &str) -> Result<String, DecodeError> {
    decode(raw, Plus::Plus)
}

/// Decodes one path segment (query rules), refusing a segment that holds a
/// `/` or `\`, raw or encoded: a segment stays one segment.
pub fn decode_segment(raw: &str) -> Result<String, DecodeError> {
    let text = decode(raw, Plus::Plus)?;
    if text.contains(['/', '\\']) {
        return Err(DecodeError::EncodedSeparator);
    }
    Ok(text)
}

/// Encodes one `application/x-www-form-urlencoded` component: unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) stay, a space becomes `+`, every
/// other byte `%XX`.
pub fn encode_form(value: &str) -> String {
    encode(value, is_unreserved, true)
}

/// Encodes one RFC 3986 query component (a parameter name or value):
/// unreserved characters and `: / @ ,` stay (readable URLs and FHIR token
/// values), every other byte, `+ & = % #` and the space included, `%XX`.
pub fn encode_query(value: &str) -> String {
    encode(value, |b| is_unreserved(b) || b":/@,".contains(&b), false)
}

/// `value` with every byte that may not appear in a URL outside its fragment
/// (controls, space, `"#<>[\]^`{|}`, non-ASCII) written as `%XX`. Everything
/// else, `%` included, is kept: existing encodings, even broken ones, go out
/// as received.
pub fn encode_illegal(value: &str) -> String {
    encode(value, is_url_byte, false)
}

/// True when every `%` in `value` starts a valid escape (`%` and two hex
/// digits).
pub fn escapes_are_valid(value: &str) -> bool {
    let b = value.as_bytes();
    (0..b.len()).all(|i| b[i] != b'%' || escaped_byte(b, i).is_some())
}

/// The `name=value` pairs of a query or form body, still encoded: split on
/// `&`, empty pairs skipped, a pair without `=` has an empty value.
pub fn split_pairs(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Characters allowed in a URL outside a fragment: path characters and `?`.
pub(crate) fn is_url_byte(b: u8) -> bool {
    is_path_byte(b) || b == b'?'
}

/// URL path characters (RFC 3986 `pchar` and `/`), with `%` for escapes.
pub(crate) fn is_path_byte(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/%".contains(&b)
}

/// The byte a valid escape at `i` (`b[i] == b'%'`) stands for.
pub(crate) fn escaped_byte(b: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*b.get(i + 1)?)?;
    let lo = hex_value(*b.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

// ---- helpers ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plus {
    Space,
    Plus,
}

fn decode(raw: &str, plus: Plus) -> Result<String, DecodeError> {
    if raw.len() > MAX_INPUT {
        return Err(DecodeError::TooLong);
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                out.push(escaped_byte(b, i).ok_or(DecodeError::BadEscape { at: i })?);
                i += 3;
            }
            b'+' if plus == Plus::Space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(DecodeError::Control);
    }
    Ok(text)
}

fn encode(value: &str, keep: impl Fn(u8) -> bool, space_as_plus: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_forms_differ_only_in_plus_and_space() {
        assert_eq!(decode_form("a+b%2Bc").unwrap(), "a b+c");
        assert_eq!(decode_query("a+b%2Bc").unwrap(), "a+b+c");
        assert_eq!(encode_form("a b+c"), "a+b%2Bc");
        assert_eq!(encode_query("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn decoding_is_case_insensitive_in_hex_and_keeps_utf8() {
        assert_eq!(
            decode_query("urn%3aietf%3Arfc%3A3986%7curn%3Auuid%3A1").unwrap(),
            "urn:ietf:rfc:3986|urn:uuid:1"
        );
        assert_eq!(decode_form("caf%C3%A9+%E2%82%AC").unwrap(), "café €");
        assert_eq!(decode_query("café").unwrap(), "café");
        assert_eq!(decode_query("").unwrap(), "");
    }

    #[test]
    fn malformed_escapes_name_their_offset() {
        assert_eq!(decode_query("ab%zz"), Err(DecodeError::BadEscape { at: 2 }));
        assert_eq!(decode_query("%4"), Err(DecodeError::BadEscape { at: 0 }));
        assert_eq!(decode_query("x%"), Err(DecodeError::BadEscape { at: 1 }));
        // `u8::from_str_radix` would read `+1` as a number: not an escape.
        assert_eq!(decode_query("%+1"), Err(DecodeError::BadEscape { at: 0 }));
        assert_eq!(decode_form("%-1"), Err(DecodeError::BadEscape { at: 0 }));
        assert_eq!(decode_query("%é"), Err(DecodeError::BadEscape { at: 0 }));
    }

    #[test]
    fn segments_stay_segments() {
        assert_eq!(decode_segment("a%2Fb"), Err(DecodeError::EncodedSeparator));
        assert_eq!(decode_segment("a%5cb"), Err(DecodeError::EncodedSeparator));
        assert_eq!(decode_segment("a/b"), Err(DecodeError::EncodedSeparator));
        assert_eq!(decode_segment("a+b%2E").unwrap(), "a+b.");
    }

    #[test]
    fn encoders_round_trip_through_their_decoders() {
        let mut all = String::new();
        for c in (1u8..0x7f).map(char::from).chain(['é', '€', '𝄞']) {
            all.push(c);
        }
        let printable: String = all.chars().filter(|c| !c.is_control()).collect();
        assert_eq!(decode_form(&encode_form(&printable)).unwrap(), printable);
        assert_eq!(decode_query(&encode_query(&printable)).unwrap(), printable);
        assert_eq!(decode_form(&encode_query(&printable)).unwrap(), printable);
        assert_eq!(encode_form("a.b-c_d~"), "a.b-c_d~");
        assert_eq!(
            encode_query("http://loinc.org|8302-2,x@y"),
            "http://loinc.org%7C8302-2,x@y"
        );
        for encoded in [encode_form(&all), encode_query(&all)] {
            assert!(
                !encoded.contains(['&', '=', '#', ' ', '?', '|']),
                "{encoded}"
            );
        }
        assert!(!encode_query(&all).contains('+'));
        assert_eq!(encode_form(&all).matches('+').count(), 1, "the one space");
    }

    #[test]
    fn only_illegal_characters_are_encoded() {
        assert_eq!(
            encode_illegal("Observation/$lastn?code=http://loinc.org|85354-9"),
            "Observation/$lastn?code=http://loinc.org%7C85354-9"
        );
        assert_eq!(
            encode_illegal("MedicationStatement?category=urn%3Aoid%3A2.16%7C6&_include=x:y"),
            "MedicationStatement?category=urn%3Aoid%3A2.16%7C6&_include=x:y"
        );
        assert_eq!(encode_illegal("a b\"c{d}é#"), "a%20b%22c%7Bd%7D%C3%A9%23");
        assert_eq!(
            encode_illegal("Encounter?class=x%hl7.org|IMP"),
            "Encounter?class=x%hl7.org%7CIMP"
        );
        assert_eq!(encode_illegal("a\u{0}\n[]"), "a%00%0A%5B%5D");
    }

    #[test]
    fn broken_escapes_are_noticed() {
        assert!(!escapes_are_valid("x%hl7.org"));
        assert!(!escapes_are_valid("x%7"));
        assert!(!escapes_are_valid("%"));
        assert!(escapes_are_valid("x%7Cy%3a"));
        assert!(escapes_are_valid(""));
    }

    #[test]
    fn pairs_are_split_not_decoded() {
        assert_eq!(
            split_pairs("a=1&&b&c=x=y&=z&d%3D=%26").collect::<Vec<_>>(),
            vec![
                ("a", "1"),
                ("b", ""),
                ("c", "x=y"),
                ("", "z"),
                ("d%3D", "%26")
            ]
        );
        assert_eq!(split_pairs("").count(), 0);
    }

    #[test]
    fn input_is_bounded() {
        let at_limit = "a".repeat(MAX_INPUT);
        assert_eq!(decode_query(&at_limit).unwrap().len(), MAX_INPUT);
        assert_eq!(
            decode_form(&format!("{at_limit}a")),
            Err(DecodeError::TooLong)
        );
    }
}
