//! The one error type of the FHIR layer.
//!
//! Messages name what went wrong and where (element path, line and column),
//! never the content: a value may be a BSN. Names taken from the input (JSON
//! keys, XML element names) only appear when they look like FHIR element names
//! (see [`safe_name`]); anything else is shown as `?`.

use std::fmt;

/// Where in a document something was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Element path such as `Bundle.entry[2].resource.name[0]`; for plain
    /// JSON structure `$.entry[2]`. Empty when unknown.
    pub path: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column in characters, 0 when unknown.
    pub column: usize,
}

impl Location {
    /// A location known by path only.
    pub fn path(path: impl Into<String>) -> Location {
        Location {
            path: path.into(),
            line: 0,
            column: 0,
        }
    }

    /// A location known by byte offset into `text` (and maybe a path).
    pub fn at(text: &str, offset: usize, path: impl Into<String>) -> Location {
        let (line, column) = line_column(text, offset);
        Location {
            path: path.into(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (true, 0) => f.write_str("at an unknown position"),
            (false, 0) => write!(f, "at {}", self.path),
            (true, l) => write!(f, "at line {l} column {}", self.column),
            (false, l) => write!(f, "at {} (line {l} column {})", self.path, self.column),
        }
    }
}

/// Which syntax a syntax error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Xml,
}

/// Why a FHIR document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FhirError {
    /// The document is larger than the limit (HTTP 413).
    TooLarge { limit: usize },
    /// Nested deeper than the limit.
    TooDeep { limit: usize, at: Location },
    /// Bytes that are not UTF-8, at this byte offset.
    InvalidUtf8 { offset: usize },
    /// Not well-formed JSON or XML.
    Syntax {
        syntax: Syntax,
        at: Location,
        reason: &'static str,
    },
    /// A JSON object repeats a key.
    DuplicateKey { at: Location },
    /// An XML construct refused as hostile: DOCTYPE, entity declarations or
    /// references, processing instructions, external references, encodings
    /// other than UTF-8.
    Forbidden { at: Location, what: &'static str },
    /// The root is not a FHIR resource of a known type.
    NotAResource { at: Location, reason: &'static str },
    /// An element or property the definitions do not have.
    UnknownElement { at: Location },
    /// Content that does not fit its definition: wrong JSON type, a repeated
    /// single element, a malformed primitive, wrong namespace, stray text.
    Invalid { at: Location, reason: &'static str },
    /// Narrative XHTML outside the allowed subset (scripts, event handlers,
    /// `javascript:` URLs, forms, frames, embedded objects, foreign elements).
    UnsafeNarrative { at: Location, reason: &'static str },
    /// A `Content-Type` this layer does not read (HTTP 415).
    UnsupportedMediaType { reason: &'static str },
}

impl FhirError {
    /// The `OperationOutcome.issue.code` that fits this error.
    pub fn issue_code(&self) -> super::IssueType {
        use super::IssueType;
        match self {
            FhirError::TooLarge { .. } => IssueType::TooLong,
            FhirError::TooDeep { .. }
            | FhirError::InvalidUtf8 { .. }
            | FhirError::Forbidden { .. }
            | FhirError::DuplicateKey { .. }
            | FhirError::UnsafeNarrative { .. } => IssueType::Security,
            FhirError::Syntax { .. }
            | FhirError::NotAResource { .. }
            | FhirError::UnknownElement { .. } => IssueType::Structure,
            FhirError::Invalid { .. } => IssueType::Value,
            FhirError::UnsupportedMediaType { .. } => IssueType::NotSupported,
        }
    }

    /// The element path the error is about, if any (for
    /// `OperationOutcome.issue.expression`).
    pub fn path(&self) -> Option<&str> {
        let at = match self {
            FhirError::TooDeep { at, .. }
            | FhirError::Syntax { at, .. }
            | FhirError::DuplicateKey { at }
            | FhirError::Forbidden { at, .. }
            | FhirError::NotAResource { at, .. }
            | FhirError::UnknownElement { at }
            | FhirError::Invalid { at, .. }
            | FhirError::UnsafeNarrative { at, .. } => at,
            _ => return None,
        };
        (!at.path.is_empty() && !at.path.starts_with('$')).then_some(at.path.as_str())
    }
}

impl fmt::Display for FhirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FhirError::TooLarge { limit } => {
                write!(f, "the document is larger than {limit} bytes")
            }
            FhirError::TooDeep { limit, at } => {
                write!(f, "the document nests deeper than {limit} levels {at}")
            }
            FhirError::InvalidUtf8 { offset } => {
                write!(f, "the document is not valid utf-8 at byte {offset}")
            }
            FhirError::Syntax { syntax, at, reason } => {
                let s = match syntax {
                    Syntax::Json => "json",
                    Syntax::Xml => "xml",
                };
                write!(f, "malformed {s} {at}: {reason}")
            }
            FhirError::DuplicateKey { at } => write!(f, "duplicate json key {at}"),
            FhirError::Forbidden { at, what } => write!(f, "{what} not allowed {at}"),
            FhirError::NotAResource { at, reason } => {
                write!(f, "not a fhir resource {at}: {reason}")
            }
            FhirError::UnknownElement { at } => write!(f, "unknown element {at}"),
            FhirError::Invalid { at, reason } => write!(f, "invalid content {at}: {reason}"),
            FhirError::UnsafeNarrative { at, reason } => {
                write!(f, "narrative refused {at}: {reason}")
            }
            FhirError::UnsupportedMediaType { reason } => {
                write!(f, "unsupported media type: {reason}")
            }
        }
    }
}

impl std::error::Error for FhirError {}

/// `name` when it looks like a FHIR element or type name (ASCII letter, then
/// letters, digits, `_`, `-`; at most 64 bytes), `?` otherwise. Keeps hostile
/// or personal data out of error messages while keeping paths useful.
pub fn safe_name(name: &str) -> &str {
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { name } else { "?" }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, 7), (2, 4));
        assert_eq!(line_column(t, 6), (2, 3));
        assert_eq!(line_column(t, 100), (3, 2));
    }

    #[test]
    fn names_that_could_be_data_are_hidden() {
        assert_eq!(safe_name("valueQuantity"), "valueQuantity");
        assert_eq!(safe_name("_birthDate"), "_birthDate");
        assert_eq!(safe_name("999999990"), "?");
        assert_eq!(safe_name("a b"), "?");
        assert_eq!(safe_name(""), "?");
        assert_eq!(safe_name(&"a".repeat(65)), "?");
    }

    #[test]
    fn messages_are_lower_case_and_carry_the_place() {
        let e = FhirError::UnknownElement {
            at: Location {
                path: "Patient.foo".into(),
                line: 3,
                column: 5,
            },
        };
        assert_eq!(
            e.to_string(),
            "unknown element at Patient.foo (line 3 column 5)"
        );
        assert_eq!(e.path(), Some("Patient.foo"));
        let e = FhirError::Forbidden {
            at: Location {
                path: String::new(),
                line: 1,
                column: 1,
            },
            what: "doctype declaration",
        };
        assert_eq!(
            e.to_string(),
            "doctype declaration not allowed at line 1 column 1"
        );
    }
}
