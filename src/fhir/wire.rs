//! FHIR over HTTP, shared by every endpoint that reads or answers FHIR:
//! reading a request body (size, media type, release) into its JSON form,
//! the `_format` parameter, choosing the response format, and writing a
//! resource as a response. The order of the checks around these calls is
//! each endpoint's own (DESIGN.md gives the Mitz intake's).

use serde_json::Value;

use super::error::{FhirError, Location, Syntax};
use super::media::Format;
use super::refusal::Refusal;
use super::{FhirVersion, Limits};
use crate::http::{Request, Response};
use crate::util::percent;

/// A body read from the wire.
#[derive(Debug, Clone)]
pub struct Body {
    /// The JSON form.
    pub value: Value,
    /// The format it came in.
    pub format: Format,
    /// The FHIR release it was read as.
    pub version: FhirVersion,
}

/// Which FHIR release a body is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// This one, whatever the media type says (the caller checked it).
    Only(FhirVersion),
    /// The one the media type's `fhirVersion` names; else STU3, and XML
    /// whose elements do not fit STU3 is read again as R4.
    Either,
}

/// Reads a request body: 413 over `max_bytes`; the format from
/// `content_type` (415 when it is not a FHIR JSON or XML type), sniffed when
/// absent (400 when the body is neither); then [`super::parse`] (400 for
/// anything malformed or hostile, with the element's path).
pub fn read_body(
    bytes: &[u8],
    content_type: Option<&str>,
    max_bytes: usize,
    release: Release,
) -> Result<Body, Refusal> {
    if bytes.len() > max_bytes {
        return Err(Refusal::too_long(max_bytes));
    }
    parse_body(
        bytes,
        content_type,
        release,
        &Limits::with_max_bytes(max_bytes),
    )
    .map_err(|e| Refusal::from_fhir(&e))
}

/// [`read_body`] for a body already bounded by `limits` (a partner's
/// answer): the error names what is wrong, never the content.
pub fn parse_body(
    bytes: &[u8],
    content_type: Option<&str>,
    release: Release,
    limits: &Limits,
) -> Result<Body, FhirError> {
    let (format, declared) = format_of(bytes, content_type)?;
    let (value, version) = match release {
        Release::Only(version) => (super::parse(bytes, format, version, limits)?, version),
        Release::Either => parse_either(bytes, format, declared, limits)?,
    };
    Ok(Body {
        value,
        format,
        version,
    })
}

/// The first `_format` query parameter, percent-decoded by the RFC 3986
/// query rules ([`percent::decode_query`]); `None` when absent or not
/// validly encoded.
pub fn format_param(req: &Request) -> Option<String> {
    let (_, value) = percent::split_pairs(req.query.as_deref()?)
        .find(|(name, _)| percent::decode_query(name).is_ok_and(|n| n == "_format"))?;
    percent::decode_query(value).ok()
}

/// The response format a request asks for (`_format`, then `Accept`), with
/// `default` when it names nothing we write.
pub fn response_format(req: &Request, default: Format) -> Format {
    super::negotiate(format_param(req).as_deref(), req.header("accept"), default).unwrap_or(default)
}

/// A response with `value` as body in `format` (JSON when the resource
/// cannot be written as XML of `version`).
pub fn resource_response(
    status: u16,
    value: &Value,
    format: Format,
    version: FhirVersion,
) -> Response {
    let rendered = super::render(value, format, version)
        .or_else(|_| super::render(value, Format::Json, version));
    match rendered {
        Ok(r) => Response::new(status).body(r.content_type, r.body),
        Err(_) => Response::new(status).body(
            Format::Json.content_type(),
            super::to_json_string(value).into_bytes(),
        ),
    }
}

/// The format `content_type` names with the release its `fhirVersion`
/// names (if one of ours), or the sniffed format when it is absent.
fn format_of(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(Format, Option<FhirVersion>), FhirError> {
    match content_type {
        Some(ct) => {
            let ct = super::parse_content_type(ct)?;
            let version = ct
                .fhir_version
                .as_deref()
                .and_then(FhirVersion::from_mime_parameter);
            Ok((ct.format, version))
        }
        None => super::sniff(bytes)
            .map(|f| (f, None))
            .ok_or(FhirError::Syntax {
                syntax: Syntax::Json,
                at: Location::default(),
                reason: "the body is neither json nor xml",
            }),
    }
}

fn parse_either(
    bytes: &[u8],
    format: Format,
    declared: Option<FhirVersion>,
    limits: &Limits,
) -> Result<(Value, FhirVersion), FhirError> {
    let first = declared.unwrap_or(FhirVersion::Stu3);
    match super::parse(bytes, format, first, limits) {
        Ok(v) => Ok((v, first)),
        // STU3 and R4 differ in elements only: retry XML that did not fit.
        Err(e @ (FhirError::UnknownElement { .. } | FhirError::Invalid { .. }))
            if format == Format::Xml && declared.is_none() =>
        {
            super::parse(bytes, format, FhirVersion::R4, limits)
                .map(|v| (v, FhirVersion::R4))
                .map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::IssueType;

    /// A Patient that is valid R4 and STU3 in XML.
    const PATIENT_XML: &[u8] =
        br#"<Patient xmlns="http://hl7.org/fhir"><id value="p1"/></Patient>"#;
    /// An R4-only Task element (`Task.requester.identifier` does not exist in STU3).
    const TASK_R4_XML: &[u8] = br#"<Task xmlns="http://hl7.org/fhir"><status value="requested"/><intent value="proposal"/><requester><identifier><value value="1"/></identifier></requester></Task>"#;

    fn request(query: Option<&str>, accept: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            target: "/fhir/Patient".into(),
            path: "/fhir/Patient".into(),
            query: query.map(String::from),
            headers: accept
                .map(|a| ("accept".to_string(), a.as_bytes().to_vec()))
                .into_iter()
                .collect(),
            body: Vec::new(),
            request_id: "rid-1".into(),
            peer: crate::http::Peer::new(
                "127.0.0.1:1".parse().unwrap(),
                std::sync::Arc::new(Vec::new()),
                "TLSv1.3",
            ),
        }
    }

    #[test]
    fn size_then_media_type_then_content() {
        let r = read_body(&[b' '; 11], Some("text/plain"), 10, Release::Either).unwrap_err();
        assert_eq!((r.status, r.code), (413, IssueType::TooLong));
        let r = read_body(b"{}", Some("text/plain"), 10, Release::Either).unwrap_err();
        assert_eq!((r.status, r.code), (415, IssueType::NotSupported));
        let r = read_body(b"hello", None, 10, Release::Either).unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::Structure));
        assert_eq!(
            r.reason(),
            "malformed json at an unknown position: the body is neither json nor xml"
        );
        let dup = br#"{"resourceType":"Patient","id":"a","id":"b"}"#;
        let r = read_body(dup, None, 100, Release::Either).unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::Security));
    }

    #[test]
    fn releases() {
        let b = read_body(TASK_R4_XML, None, 4096, Release::Either).unwrap();
        assert_eq!((b.format, b.version), (Format::Xml, FhirVersion::R4));
        let declared = Some("application/fhir+xml; fhirVersion=3.0");
        let r = read_body(TASK_R4_XML, declared, 4096, Release::Either).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(
            r.expression
                .is_some_and(|p| p.starts_with("Task.requester"))
        );
        let b = read_body(PATIENT_XML, None, 4096, Release::Either).unwrap();
        assert_eq!(b.version, FhirVersion::Stu3);
        // `Only` ignores what the media type says: the caller decided.
        let b = read_body(PATIENT_XML, declared, 4096, Release::Only(FhirVersion::R4)).unwrap();
        assert_eq!((b.format, b.version), (Format::Xml, FhirVersion::R4));
        assert_eq!(b.value["id"], "p1");
        let e = parse_body(
            PATIENT_XML,
            None,
            Release::Only(FhirVersion::R4),
            &Limits::with_max_bytes(10),
        )
        .unwrap_err();
        assert!(matches!(e, FhirError::TooLarge { limit: 10 }), "{e}");
    }

    #[test]
    fn the_format_parameter_is_query_decoded_and_wins_over_accept() {
        assert_eq!(format_param(&request(None, None)), None);
        assert_eq!(
            format_param(&request(Some("a=1&_format=application%2Ffhir%2Bxml"), None)).as_deref(),
            Some("application/fhir+xml")
        );
        assert_eq!(format_param(&request(Some("_format=%zz"), None)), None);
        let xml = request(Some("_format=xml"), Some("application/fhir+json"));
        assert_eq!(response_format(&xml, Format::Json), Format::Xml);
        let accept = request(None, Some("application/fhir+xml"));
        assert_eq!(response_format(&accept, Format::Json), Format::Xml);
        let nothing_we_write = request(None, Some("text/html"));
        assert_eq!(response_format(&nothing_we_write, Format::Xml), Format::Xml);
    }

    #[test]
    fn a_resource_that_has_no_xml_form_goes_out_as_json() {
        let v = serde_json::json!({"resourceType": "NotAType", "id": "x"});
        let resp = resource_response(200, &v, Format::Xml, FhirVersion::Stu3);
        assert_eq!(resp.status, 200);
        assert!(
            resp.headers
                .iter()
                .any(|(n, v)| n == "Content-Type" && v == Format::Json.content_type())
        );
        assert_eq!(resp.body, br#"{"resourceType":"NotAType","id":"x"}"#);
    }
}
