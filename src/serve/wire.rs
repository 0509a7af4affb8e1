//! The one place the serving side meets the wire format: negotiation and
//! rendering through [`crate::fhir`], always STU3 (refusals are
//! [`crate::fhir::Refusal`]s).

use serde_json::Value;

use crate::fhir::{self, FhirVersion};
pub(crate) use crate::fhir::{Format, IssueType};

/// The response format from `_format` (decoded) and `Accept`; JSON when
/// neither says anything; `None`: answer 406.
pub(crate) fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Option<Format> {
    fhir::negotiate(format_param, accept, Format::Json)
}

/// `Content-Type` (with charset) and body of `value` in `format`. The error
/// names an element path at most, never content.
pub(crate) fn render(value: &Value, format: Format) -> Result<(&'static str, Vec<u8>), String> {
    fhir::render(value, format, FhirVersion::Stu3)
        .map(|r| (r.content_type, r.body))
        .map_err(|e| e.to_string())
}

/// True for an STU3 resource type name.
pub(crate) fn is_resource_type(name: &str) -> bool {
    fhir::table::table(FhirVersion::Stu3)
        .resource(name)
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stu3_resource_types() {
        for t in [
            "Patient",
            "Observation",
            "ProcedureRequest",
            "Binary",
            "Bundle",
        ] {
            assert!(is_resource_type(t), "{t}");
        }
        for t in [
            "ServiceRequest",
            "Foo",
            "patient",
            "Resource",
            "DomainResource",
            "Coding",
        ] {
            assert!(!is_resource_type(t), "{t}");
        }
    }
}
