//! OperationOutcome bodies and rendering any resource in the negotiated format.

use serde_json::{Map, Value, json};

use super::error::FhirError;
use super::media::Format;
use super::{FhirVersion, convert, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (the IssueType codes we use; same in STU3 and R4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    NotFound,
    TooLong,
    TooCostly,
    BusinessRule,
    Conflict,
    Transient,
    Exception,
    Timeout,
    Throttled,
    Informational,
}

impl IssueType {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::NotFound => "not-found",
            IssueType::TooLong => "too-long",
            IssueType::TooCostly => "too-costly",
            IssueType::BusinessRule => "business-rule",
            IssueType::Conflict => "conflict",
            IssueType::Transient => "transient",
            IssueType::Exception => "exception",
            IssueType::Timeout => "timeout",
            IssueType::Throttled => "throttled",
            IssueType::Informational => "informational",
        }
    }
}

/// An OperationOutcome with one issue (valid in STU3 and R4). `diagnostics`
/// goes out to the peer as is: never put patient data in it.
pub fn operation_outcome(
    severity: Severity,
    code: IssueType,
    diagnostics: &str,
    expression: Option<&str>,
) -> Value {
    let mut issue = Map::new();
    issue.insert("severity".into(), Value::String(severity.as_str().into()));
    issue.insert("code".into(), Value::String(code.as_str().into()));
    if !diagnostics.is_empty() {
        issue.insert("diagnostics".into(), Value::String(diagnostics.into()));
    }
    if let Some(e) = expression.filter(|e| !e.is_empty()) {
        issue.insert("expression".into(), json!([e]));
    }
    json!({
        "resourceType": "OperationOutcome",
        "issue": [Value::Object(issue)],
    })
}

/// The OperationOutcome for a [`FhirError`]: severity `error`, the error's
/// issue code, its message as diagnostics and its path as expression.
pub fn outcome_for(error: &FhirError) -> Value {
    operation_outcome(
        Severity::Error,
        error.issue_code(),
        &error.to_string(),
        error.path(),
    )
}

/// A body ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The `Content-Type` header value.
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Renders a resource in `format` for `version`, with the matching
/// `Content-Type`.
pub fn render(value: &Value, format: Format, version: FhirVersion) -> Result<Rendered, FhirError> {
    let body = match format {
        Format::Json => json::to_json_string(value),
        Format::Xml => convert::json_to_xml(value, version)?,
    };
    Ok(Rendered {
        content_type: format.content_type(),
        body: body.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{Limits, parse_json, xml_to_json};

    #[test]
    fn outcome_shape() {
        let oo = operation_outcome(
            Severity::Error,
            IssueType::Required,
            "task identifier is missing",
            Some("Task.identifier"),
        );
        assert_eq!(
            oo,
            json!({"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"required","diagnostics":"task identifier is missing","expression":["Task.identifier"]}]})
        );
        let bare = operation_outcome(Severity::Information, IssueType::Informational, "", None);
        assert_eq!(bare["issue"][0].as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn outcomes_render_in_both_formats_and_versions() {
        let oo = operation_outcome(
            Severity::Fatal,
            IssueType::Security,
            "a < b & c",
            Some("Bundle.entry[0]"),
        );
        for version in [FhirVersion::Stu3, FhirVersion::R4] {
            let j = render(&oo, Format::Json, version).unwrap();
            assert_eq!(j.content_type, "application/fhir+json; charset=utf-8");
            assert!(
                j.body
                    .starts_with(b"{\"resourceType\":\"OperationOutcome\"")
            );
            assert_eq!(parse_json(&j.body, &Limits::default()).unwrap(), oo);
            let x = render(&oo, Format::Xml, version).unwrap();
            assert_eq!(x.content_type, "application/fhir+xml; charset=utf-8");
            assert_eq!(
                xml_to_json(&x.body, version, &Limits::default()).unwrap(),
                oo
            );
        }
    }

    #[test]
    fn outcome_for_an_error() {
        let e = parse_json(
            b"{\"resourceType\":\"Patient\",\"a\":1,\"a\":2}",
            &Limits::default(),
        )
        .unwrap_err();
        let oo = outcome_for(&e);
        assert_eq!(oo["issue"][0]["code"], "security");
        assert!(
            oo["issue"][0].get("expression").is_none(),
            "json structure paths are not fhirpath"
        );
        let e = xml_to_json(
            b"<Patient xmlns=\"http://hl7.org/fhir\"><foo/></Patient>",
            FhirVersion::R4,
            &Limits::default(),
        )
        .unwrap_err();
        let oo = outcome_for(&e);
        assert_eq!(oo["issue"][0]["code"], "structure");
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.foo");
    }
}
