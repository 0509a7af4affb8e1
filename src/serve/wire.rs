//! The one place the serving side turns JSON into response bytes.
//!
//! Temporary: JSON only until `crate::fhir` is merged, then this delegates to
//! `fhir::negotiate`, `fhir::render` and `fhir::operation_outcome`.

use serde_json::{Value, json};

/// A response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Xml is produced once crate::fhir is merged.
pub(crate) enum Format {
    Json,
    Xml,
}

/// `OperationOutcome.issue.code` values we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IssueType {
    Invalid,
    Forbidden,
    NotFound,
    NotSupported,
    Security,
    Exception,
    Transient,
    Expired,
}

impl IssueType {
    fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Forbidden => "forbidden",
            IssueType::NotFound => "not-found",
            IssueType::NotSupported => "not-supported",
            IssueType::Security => "security",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Expired => "expired",
        }
    }
}

/// The response format from `_format` and `Accept`; `None`: answer 406.
pub(crate) fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Option<Format> {
    let _ = (format_param, accept);
    Some(Format::Json)
}

/// A one-issue error OperationOutcome.
pub(crate) fn operation_outcome(code: IssueType, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code.as_str(), "diagnostics": diagnostics}]
    })
}

/// Content type and body of `value` in `format`; the error names the element
/// path that could not be written, never content.
pub(crate) fn render(value: &Value, format: Format) -> Result<(&'static str, Vec<u8>), String> {
    match format {
        Format::Json => serde_json::to_vec(value)
            .map(|b| ("application/fhir+json; charset=utf-8", b))
            .map_err(|e| e.to_string()),
        Format::Xml => Err("xml is not available yet".into()),
    }
}
