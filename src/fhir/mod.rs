//! FHIR resources on the wire: JSON and XML, in and out, for STU3 (3.0.2,
//! Twiin notified pull) and R4 (4.0.1, Mitz consent notifications).
//!
//! Everything that arrives is hostile until this module has read it:
//!
//! * [`parse_json`] caps size and nesting, refuses duplicate keys and invalid
//!   UTF-8, wants a root object with `resourceType`, checks narratives, and
//!   keeps decimals exactly as written.
//! * [`xml_to_json`] reads XML with a hardened reader (no DOCTYPE, no entities
//!   beyond the predefined five, no processing instructions, UTF-8 only, depth
//!   and size caps) and converts it to the JSON form by the official element
//!   definitions, refusing unknown elements with their path.
//! * [`json_to_xml`] writes the XML form of a JSON resource in definition
//!   order.
//! * [`check_narrative`] is the narrative XHTML rule both directions use.
//! * [`media`] parses `Content-Type` and negotiates the response format;
//!   [`render`] writes a resource in that format; [`operation_outcome`]
//!   builds error bodies.
//! * [`Refusal`] is the one refusal of every FHIR endpoint, answered as an
//!   OperationOutcome; [`wire`] reads request bodies, the `_format`
//!   parameter and the response format, and writes resource responses.
//!
//! The JSON form (`serde_json::Value`) is the one in-memory representation;
//! XML only exists at the edges. The element tables are generated from the
//! FHIR StructureDefinitions (see [`table`]).

pub mod binary;
pub mod convert;
pub mod error;
pub mod json;
pub mod media;
pub mod narrative;
pub mod outcome;
pub mod refusal;
pub mod table;
#[rustfmt::skip]
mod table_r4;
#[rustfmt::skip]
mod table_stu3;
pub mod wire;
pub mod xml;

use serde_json::Value;

pub use binary::binary_content;
pub use convert::{json_to_xml, xml_to_json};
pub use error::{FhirError, Location, Syntax};
pub use json::{parse_json, to_json_string};
pub use media::{ContentType, Format, accept_names_fhir, negotiate, parse_content_type};
pub use narrative::check_narrative;
pub use outcome::{IssueType, Rendered, Severity, operation_outcome, outcome_for, render};
pub use refusal::Refusal;

/// A FHIR release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FhirVersion {
    /// 3.0.2: Twiin TA Notified Pull Tasks and Bundles.
    Stu3,
    /// 4.0.1: Mitz consent notification Bundles.
    R4,
}

impl FhirVersion {
    /// The full version number.
    pub fn number(self) -> &'static str {
        match self {
            FhirVersion::Stu3 => "3.0.2",
            FhirVersion::R4 => "4.0.1",
        }
    }

    /// The release a `fhirVersion` media type parameter names (`3.0`, `4.0`,
    /// or a full version number), if it is one of ours.
    pub fn from_mime_parameter(value: &str) -> Option<FhirVersion> {
        let mut parts = value.split('.');
        match (parts.next(), parts.next()) {
            (Some("3"), Some("0")) => Some(FhirVersion::Stu3),
            (Some("4"), Some("0")) => Some(FhirVersion::R4),
            _ => None,
        }
    }
}

/// Caps applied to every document read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest document in bytes.
    pub max_bytes: usize,
    /// Deepest nesting: JSON objects and arrays, or XML elements. (serde_json
    /// itself stops at 128 levels, so JSON deeper than that is refused
    /// whatever this says.)
    pub max_depth: usize,
}

impl Limits {
    /// 16 MiB (the `NP_MAX_BODY` default) and 32 levels (the Mitz intake rule).
    pub const DEFAULT: Limits = Limits {
        max_bytes: 16 * 1024 * 1024,
        max_depth: 32,
    };

    /// The same depth cap with another size cap (e.g. 1 MB for Mitz).
    pub fn with_max_bytes(max_bytes: usize) -> Limits {
        Limits {
            max_bytes,
            ..Limits::DEFAULT
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Reads a resource in either format into its JSON form.
pub fn parse(
    bytes: &[u8],
    format: Format,
    version: FhirVersion,
    limits: &Limits,
) -> Result<Value, FhirError> {
    match format {
        Format::Json => parse_json(bytes, limits),
        Format::Xml => xml_to_json(bytes, version, limits),
    }
}

/// The format a body without `Content-Type` looks like: the first byte that
/// is not white space (after a UTF-8 byte order mark) is `{` or `<`.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Some(Format::Json),
        Some(b'<') => Some(Format::Xml),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_mime_parameters() {
        assert_eq!(
            FhirVersion::from_mime_parameter("3.0"),
            Some(FhirVersion::Stu3)
        );
        assert_eq!(
            FhirVersion::from_mime_parameter("4.0.1"),
            Some(FhirVersion::R4)
        );
        assert_eq!(FhirVersion::from_mime_parameter("4.3"), None);
        assert_eq!(FhirVersion::from_mime_parameter(""), None);
        assert_eq!(FhirVersion::R4.number(), "4.0.1");
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"  \n{}"), Some(Format::Json));
        assert_eq!(sniff(b"\xEF\xBB\xBF<a/>"), Some(Format::Xml));
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"x"), None);
    }

    #[test]
    fn parse_dispatches_on_format() {
        let j = parse(
            br#"{"resourceType":"Patient","id":"a"}"#,
            Format::Json,
            FhirVersion::R4,
            &Limits::default(),
        )
        .unwrap();
        let x = parse(
            br#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/></Patient>"#,
            Format::Xml,
            FhirVersion::R4,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(j, x);
        assert_eq!(Limits::with_max_bytes(10).max_depth, 32);
    }
}
