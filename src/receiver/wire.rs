//! The receiver's edge to the FHIR wire format: reading request bodies and
//! partner responses into their JSON form through [`crate::fhir`] (size,
//! depth, duplicate keys, hostile XML and narratives all checked there), and
//! writing responses and inbox files.

use serde_json::Value;

pub use crate::fhir::Format;
use crate::fhir::{self, FhirError, FhirVersion, IssueType, Limits, Severity};

use super::task::Refusal;
use crate::http::{Request, Response};
use crate::util::percent;

/// Largest notification or cancellation Task accepted (spec §7.5: 1 MB).
pub const MAX_TASK_BODY: usize = 1024 * 1024;

/// Limits for what partners answer to our pulls: the HTTP client already
/// caps a body at [`crate::http::partners::MAX_RESPONSE_BODY`].
pub const PARTNER_LIMITS: Limits = Limits {
    max_bytes: crate::http::partners::MAX_RESPONSE_BODY as usize,
    max_depth: Limits::DEFAULT.max_depth,
};

/// A Task body read from the wire.
#[derive(Debug, Clone)]
pub struct Body {
    /// The JSON form.
    pub value: Value,
    /// The format it came in.
    pub format: Format,
    /// The FHIR release it was read as (STU3 unless the media type or the
    /// XML said R4).
    pub version: FhirVersion,
}

/// Reads a Task body: format from `Content-Type` (415 when it is not a FHIR
/// JSON or XML type), sniffed when absent; then [`fhir::parse`] (413 over
/// [`MAX_TASK_BODY`], 400 for anything malformed or hostile). XML is read as
/// STU3, or as R4 when the media type says `fhirVersion=4.0` or when the
/// STU3 definitions do not fit it.
pub fn read_task_body(bytes: &[u8], content_type: Option<&str>) -> Result<Body, Refusal> {
    if bytes.len() > MAX_TASK_BODY {
        return Err(refusal(&FhirError::TooLarge {
            limit: MAX_TASK_BODY,
        }));
    }
    let limits = Limits::with_max_bytes(MAX_TASK_BODY);
    let (format, version) = format_of(bytes, content_type).map_err(|e| refusal(&e))?;
    let (value, version) = parse(bytes, format, version, &limits).map_err(|e| refusal(&e))?;
    Ok(Body {
        value,
        format,
        version,
    })
}

/// Reads a partner's response body (a resource or a searchset Bundle),
/// JSON or XML; the error names what is wrong, never the content.
pub fn read_partner_body(bytes: &[u8], content_type: Option<&str>) -> Result<Value, String> {
    let (format, version) = format_of(bytes, content_type).map_err(|e| e.to_string())?;
    parse(bytes, format, version, &PARTNER_LIMITS)
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// The response format a request asks for (`_format`, then `Accept`), with
/// `default` when it names nothing we write.
pub fn response_format(req: &Request, default: Format) -> Format {
    fhir::negotiate(format_param(req).as_deref(), req.header("accept"), default).unwrap_or(default)
}

/// The first `_format` query parameter, percent-decoded by the RFC 3986
/// query rules ([`percent::decode_query`]); `None` when absent or not
/// validly encoded.
pub fn format_param(req: &Request) -> Option<String> {
    let (_, value) = percent::split_pairs(req.query.as_deref()?)
        .find(|(name, _)| percent::decode_query(name).is_ok_and(|n| n == "_format"))?;
    percent::decode_query(value).ok()
}

/// A FHIR response with `value` as body, in `format` (JSON when the
/// resource cannot be written as XML of `version`).
pub fn resource_response(
    status: u16,
    value: &Value,
    format: Format,
    version: FhirVersion,
) -> Response {
    let rendered = fhir::render(value, format, version)
        .or_else(|_| fhir::render(value, Format::Json, version));
    match rendered {
        Ok(r) => Response::new(status).body(r.content_type, r.body),
        Err(_) => Response::new(status).body(Format::Json.content_type(), to_bytes(value)),
    }
}

/// An OperationOutcome response for a refusal.
pub fn refusal_response(r: &Refusal, format: Format) -> Response {
    let oo = fhir::operation_outcome(
        Severity::Error,
        r.code,
        &r.diagnostics,
        r.expression.as_deref(),
    );
    resource_response(r.status, &oo, format, FhirVersion::Stu3)
}

/// The JSON bytes of a resource (inbox files, stored records): numbers as
/// received, `resourceType` first.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    fhir::to_json_string(value).into_bytes()
}

fn format_of(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(Format, Option<FhirVersion>), FhirError> {
    match content_type {
        Some(ct) => {
            let ct = fhir::parse_content_type(ct)?;
            let version = ct
                .fhir_version
                .as_deref()
                .and_then(FhirVersion::from_mime_parameter);
            Ok((ct.format, version))
        }
        None => fhir::sniff(bytes)
            .map(|f| (f, None))
            .ok_or(FhirError::Syntax {
                syntax: fhir::Syntax::Json,
                at: fhir::Location::default(),
                reason: "the body is neither json nor xml",
            }),
    }
}

fn parse(
    bytes: &[u8],
    format: Format,
    version: Option<FhirVersion>,
    limits: &Limits,
) -> Result<(Value, FhirVersion), FhirError> {
    let first = version.unwrap_or(FhirVersion::Stu3);
    match fhir::parse(bytes, format, first, limits) {
        Ok(v) => Ok((v, first)),
        // STU3 and R4 differ in elements only: retry XML that did not fit.
        Err(e @ (FhirError::UnknownElement { .. } | FhirError::Invalid { .. }))
            if format == Format::Xml && version.is_none() =>
        {
            fhir::parse(bytes, format, FhirVersion::R4, limits)
                .map(|v| (v, FhirVersion::R4))
                .map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// The refusal for a FHIR read error: 413 too large, 415 media type, else 400.
pub fn refusal(e: &FhirError) -> Refusal {
    let status = match e {
        FhirError::TooLarge { .. } => 413,
        FhirError::UnsupportedMediaType { .. } => 415,
        _ => 400,
    };
    let code = match e {
        FhirError::UnsupportedMediaType { .. } => IssueType::NotSupported,
        other => other.issue_code(),
    };
    Refusal::new(status, code, e.to_string(), e.path().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML_R4: &[u8] = br#"<Task xmlns="http://hl7.org/fhir"><status value="requested"/><intent value="proposal"/><requester><identifier><system value="http://fhir.nl/fhir/NamingSystem/ura"/><value value="12345678"/></identifier></requester></Task>"#;

    #[test]
    fn xml_falls_back_to_r4_when_stu3_does_not_fit() {
        let b = read_task_body(XML_R4, Some("application/fhir+xml")).unwrap();
        assert_eq!(b.version, FhirVersion::R4);
        assert_eq!(b.value["requester"]["identifier"]["value"], "12345678");
        let e = read_task_body(XML_R4, Some("application/fhir+xml; fhirVersion=3.0")).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.expression
                .is_some_and(|p| p.starts_with("Task.requester"))
        );
    }

    #[test]
    fn statuses_for_wire_problems() {
        let big = vec![b' '; MAX_TASK_BODY + 1];
        assert_eq!(read_task_body(&big, None).unwrap_err().status, 413);
        assert_eq!(
            read_task_body(b"{}", Some("text/plain"))
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(read_task_body(b"hello", None).unwrap_err().status, 400);
        let dup = br#"{"resourceType":"Task","status":"requested","status":"cancelled"}"#;
        assert_eq!(read_task_body(dup, None).unwrap_err().status, 400);
        let doctype = br#"<!DOCTYPE x [<!ENTITY a "b">]><Task xmlns="http://hl7.org/fhir"/>"#;
        assert_eq!(read_task_body(doctype, None).unwrap_err().status, 400);
    }

    #[test]
    fn refusals_render_as_operation_outcomes() {
        let r = Refusal::value("Task.input[3].valueString", "the query is absolute");
        let resp = refusal_response(&r, Format::Json);
        assert_eq!(resp.status, 400);
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["issue"][0]["expression"][0], "Task.input[3].valueString");
        assert_eq!(v["issue"][0]["code"], "value");
        let x = refusal_response(&r, Format::Xml);
        assert!(String::from_utf8_lossy(&x.body).contains("<OperationOutcome"));
        assert!(
            x.headers
                .iter()
                .any(|(_, v)| v.starts_with("application/fhir+xml"))
        );
    }
}
