//! The receiver's edge to the FHIR wire format: reading request bodies and
//! partner responses into their JSON form, and writing responses and inbox
//! files. The one place that knows how bodies are parsed.

use serde_json::Value;

use super::task::Refusal;
use crate::http::{Request, Response};

/// Largest notification or cancellation Task accepted (spec §7.5: 1 MB).
pub const MAX_TASK_BODY: usize = 1024 * 1024;

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

/// Reads a Task body: format from `Content-Type` (415 when it is not FHIR
/// JSON or XML), sniffed when absent; size and structure checked (413/400).
pub fn read_task_body(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<(Value, Format), Refusal> {
    if bytes.len() > MAX_TASK_BODY {
        return Err(Refusal::new(
            413,
            "too-long",
            format!("the body is larger than {MAX_TASK_BODY} bytes"),
            None,
        ));
    }
    let format = match content_type {
        Some(ct) => format_of(ct).ok_or_else(|| {
            Refusal::new(
                415,
                "not-supported",
                "content-type must be a FHIR JSON or XML media type",
                None,
            )
        })?,
        None => sniff(bytes).ok_or_else(|| {
            Refusal::new(400, "structure", "the body is neither JSON nor XML", None)
        })?,
    };
    let value = match format {
        Format::Json => serde_json::from_slice::<Value>(bytes).map_err(|e| {
            Refusal::new(
                400,
                "structure",
                format!("malformed json at line {} column {}", e.line(), e.column()),
                None,
            )
        })?,
        Format::Xml => {
            return Err(Refusal::new(
                415,
                "not-supported",
                "XML Tasks are not read yet",
                None,
            ));
        }
    };
    if !value.is_object() {
        return Err(Refusal::new(
            400,
            "structure",
            "the body is not a FHIR resource",
            None,
        ));
    }
    Ok((value, format))
}

/// Reads a partner's response body (a resource or a searchset Bundle).
pub fn read_partner_body(bytes: &[u8], content_type: Option<&str>) -> Result<Value, String> {
    let format = match content_type {
        Some(ct) => format_of(ct).ok_or("the response is not FHIR JSON or XML")?,
        None => sniff(bytes).ok_or("the response is neither JSON nor XML")?,
    };
    match format {
        Format::Json => serde_json::from_slice::<Value>(bytes)
            .map_err(|e| format!("malformed json at line {} column {}", e.line(), e.column())),
        Format::Xml => Err("xml responses are not read yet".into()),
    }
    .and_then(|v| match v.get("resourceType") {
        Some(Value::String(_)) => Ok(v),
        _ => Err("the response is not a FHIR resource".into()),
    })
}

/// The response format a request asks for (`_format`, then `Accept`), with
/// `default` when it says nothing usable.
pub fn response_format(req: &Request, default: Format) -> Format {
    let _ = req;
    default
}

/// A FHIR response with `value` as body.
pub fn resource_response(status: u16, value: &Value, format: Format) -> Response {
    let _ = format;
    Response::new(status).body("application/fhir+json; charset=utf-8", to_bytes(value))
}

/// An OperationOutcome response for a refusal.
pub fn refusal_response(r: &Refusal, format: Format) -> Response {
    let mut issue = serde_json::Map::new();
    issue.insert("severity".into(), Value::String("error".into()));
    issue.insert("code".into(), Value::String(r.code.into()));
    issue.insert("diagnostics".into(), Value::String(r.diagnostics.clone()));
    if let Some(e) = &r.expression {
        issue.insert(
            "expression".into(),
            Value::Array(vec![Value::String(e.clone())]),
        );
    }
    let oo =
        serde_json::json!({"resourceType": "OperationOutcome", "issue": [Value::Object(issue)]});
    resource_response(r.status, &oo, format)
}

/// The JSON bytes of a resource (inbox files, responses).
pub fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn format_of(content_type: &str) -> Option<Format> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/fhir+json" | "application/json+fhir" | "application/json" | "text/json" => {
            Some(Format::Json)
        }
        "application/fhir+xml" | "application/xml+fhir" | "application/xml" | "text/xml" => {
            Some(Format::Xml)
        }
        _ => None,
    }
}

fn sniff(bytes: &[u8]) -> Option<Format> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Some(Format::Json),
        Some(b'<') => Some(Format::Xml),
        _ => None,
    }
}
