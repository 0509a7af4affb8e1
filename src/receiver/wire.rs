//! The receiver's edge to the FHIR wire format: its limits on Task bodies and
//! partner responses, read into their JSON form through
//! [`crate::fhir::wire`] (size, depth, duplicate keys, hostile XML and
//! narratives all checked there), and the bytes of inbox files.

use serde_json::Value;

pub use crate::fhir::Format;
use crate::fhir::wire::{self as fhir_wire, Release};
pub use crate::fhir::wire::{Body, format_param, resource_response, response_format};
use crate::fhir::{self, FhirVersion, Limits, Refusal};
use crate::http::Response;

/// Largest notification or cancellation Task accepted (spec §7.5: 1 MB).
pub const MAX_TASK_BODY: usize = 1024 * 1024;

/// Limits for what partners answer to our pulls: the HTTP client already
/// caps a body at [`crate::http::partners::MAX_RESPONSE_BODY`].
pub const PARTNER_LIMITS: Limits = Limits {
    max_bytes: crate::http::partners::MAX_RESPONSE_BODY as usize,
    max_depth: Limits::DEFAULT.max_depth,
};

/// Reads a Task body with [`fhir_wire::read_body`]: 413 over
/// [`MAX_TASK_BODY`], then 415 for a `Content-Type` that is not a FHIR JSON
/// or XML type (sniffed when absent), then 400 for anything malformed or
/// hostile. XML is read as STU3, or as R4 when the media type says
/// `fhirVersion=4.0` or when the STU3 definitions do not fit it.
pub fn read_task_body(bytes: &[u8], content_type: Option<&str>) -> Result<Body, Refusal> {
    fhir_wire::read_body(bytes, content_type, MAX_TASK_BODY, Release::Either)
}

/// Reads a partner's response body (a resource or a searchset Bundle),
/// JSON or XML; the error names what is wrong, never the content.
pub fn read_partner_body(bytes: &[u8], content_type: Option<&str>) -> Result<Value, String> {
    fhir_wire::parse_body(bytes, content_type, Release::Either, &PARTNER_LIMITS)
        .map(|b| b.value)
        .map_err(|e| e.to_string())
}

/// The OperationOutcome response for a refusal of a Task (STU3).
pub fn refusal_response(r: &Refusal, format: Format) -> Response {
    r.response(format, FhirVersion::Stu3)
}

/// The JSON bytes of a resource (inbox files, stored records): numbers as
/// received, `resourceType` first.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    fhir::to_json_string(value).into_bytes()
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
        assert_eq!(
            read_partner_body(XML_R4, Some("application/fhir+xml")).unwrap()["intent"],
            "proposal"
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
