//! The one refusal of every FHIR endpoint (Task intake, serving, Mitz
//! intake, the router's checks, backpressure): what to answer, rendered as an
//! OperationOutcome in the negotiated format.
//!
//! A [`Refusal`] holds the status, the issue code, a *reason* that is safe to
//! log (fixed text, or text that names elements and limits, never content),
//! optionally a *subject* taken from the request (a parameter name, a
//! `Type/id`; it goes to the partner and the audit trail, never to the log),
//! the FHIRPath `expression` of the element it is about, and the headers the
//! status calls for (`Allow`, `WWW-Authenticate`, `Retry-After`).
//!
//! The OperationOutcome has one issue, severity `error`:
//! `diagnostics` = `<subject>: <reason>` (or the reason alone), `expression`
//! = the element. [`Refusal::response`] writes it with
//! [`super::wire::resource_response`], JSON when it cannot be written as XML.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::error::FhirError;
use super::media::Format;
use super::outcome::{IssueType, Severity, operation_outcome};
use super::{FhirVersion, wire};
use crate::http::Response;

/// Why a request to a FHIR endpoint is refused, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// `OperationOutcome.issue.code`.
    pub code: IssueType,
    /// `OperationOutcome.issue.expression`: FHIRPath of the element, e.g.
    /// `Task.input[3].valueString`.
    pub expression: Option<String>,
    reason: Cow<'static, str>,
    subject: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// Any status and issue code. `reason` must hold no patient data or
    /// request content: it is logged.
    pub fn new(status: u16, code: IssueType, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status,
            code,
            expression: None,
            reason: reason.into(),
            subject: None,
            headers: Vec::new(),
        }
    }

    /// 400 `required`: a required element is missing.
    pub fn required(
        expression: impl Into<String>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Refusal {
        Refusal::new(400, IssueType::Required, reason).at(expression)
    }

    /// 400 `value`: an element is there but its value is wrong.
    pub fn value(expression: impl Into<String>, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(400, IssueType::Value, reason).at(expression)
    }

    /// 400 `invalid`: the request or its content does not make sense.
    pub fn invalid(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(400, IssueType::Invalid, reason)
    }

    /// 401 `login`: no valid credentials; `challenge` is the
    /// `WWW-Authenticate` value (`Bearer`, `Bearer error="invalid_token"`).
    pub fn login(challenge: impl Into<String>, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(401, IssueType::Login, reason).header("WWW-Authenticate", challenge)
    }

    /// 403 `forbidden`: understood, but not for this caller.
    pub fn forbidden(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(403, IssueType::Forbidden, reason)
    }

    /// 404 `not-found`.
    pub fn not_found(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(404, IssueType::NotFound, reason)
    }

    /// 405 `not-supported` with `Allow: <allow>`.
    pub fn method_not_allowed(
        allow: impl Into<String>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Refusal {
        Refusal::new(405, IssueType::NotSupported, reason).header("Allow", allow)
    }

    /// 406 `not-supported`: nothing the request accepts is a format we write.
    pub fn not_acceptable(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(406, IssueType::NotSupported, reason)
    }

    /// 413 `too-long`: the body is over `limit` bytes.
    pub fn too_long(limit: usize) -> Refusal {
        Refusal::from_fhir(&FhirError::TooLarge { limit })
    }

    /// 415 `not-supported`: a `Content-Type` we do not read.
    pub fn unsupported_media_type(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(415, IssueType::NotSupported, reason)
    }

    /// 500 `exception`: our failure, nothing the caller can change.
    pub fn exception(reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(500, IssueType::Exception, reason)
    }

    /// 503 `transient` with `Retry-After: <retry_after_secs>`.
    pub fn transient(retry_after_secs: u64, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(503, IssueType::Transient, reason)
            .header("Retry-After", retry_after_secs.to_string())
    }

    /// The refusal of a document the FHIR layer would not read: 413 too
    /// large, 415 media type, else 400; the error's issue code, message and
    /// element path.
    pub fn from_fhir(e: &FhirError) -> Refusal {
        let status = match e {
            FhirError::TooLarge { .. } => 413,
            FhirError::UnsupportedMediaType { .. } => 415,
            _ => 400,
        };
        let r = Refusal::new(status, e.issue_code(), e.to_string());
        match e.path() {
            Some(p) => r.at(p),
            None => r,
        }
    }

    /// The FHIRPath of the element the refusal is about.
    pub fn at(mut self, expression: impl Into<String>) -> Refusal {
        self.expression = Some(expression.into());
        self
    }

    /// Names what the refusal is about, from the request (a parameter name,
    /// `Type/id`): shown to the partner before the reason, never logged.
    pub fn about(mut self, subject: impl Into<String>) -> Refusal {
        self.subject = Some(subject.into());
        self
    }

    /// Adds a header to the answer.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Refusal {
        self.headers.push((name, value.into()));
        self
    }

    /// The reason alone: what the log gets.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// `OperationOutcome.issue.diagnostics`: `<subject>: <reason>`, or the
    /// reason.
    pub fn diagnostics(&self) -> Cow<'_, str> {
        match &self.subject {
            Some(s) => Cow::Owned(format!("{s}: {}", self.reason)),
            None => Cow::Borrowed(&self.reason),
        }
    }

    /// The headers the answer carries besides `Content-Type`.
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }

    /// The OperationOutcome (one issue, severity `error`).
    pub fn outcome(&self) -> Value {
        operation_outcome(
            Severity::Error,
            self.code,
            &self.diagnostics(),
            self.expression.as_deref(),
        )
    }

    /// The answer: the OperationOutcome in `format` (JSON when it cannot be
    /// written as XML of `version`), with this refusal's status and headers.
    pub fn response(&self, format: Format, version: FhirVersion) -> Response {
        let mut response = wire::resource_response(self.status, &self.outcome(), format, version);
        for (name, value) in &self.headers {
            response = response.header(*name, value.as_str());
        }
        response
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.diagnostics())?;
        if let Some(e) = &self.expression {
            write!(f, " at {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{Limits, parse_json, xml_to_json};

    fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
        resp.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A refusal, its status and issue code, and the one header it carries.
    type Row = (
        Refusal,
        u16,
        &'static str,
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn constructors_set_status_code_and_headers() {
        let table: Vec<Row> = vec![
            (Refusal::required("Task.code", "x"), 400, "required", None),
            (Refusal::value("Task.intent", "x"), 400, "value", None),
            (Refusal::invalid("x"), 400, "invalid", None),
            (
                Refusal::login("Bearer error=\"invalid_token\"", "x"),
                401,
                "login",
                Some(("WWW-Authenticate", "Bearer error=\"invalid_token\"")),
            ),
            (Refusal::forbidden("x"), 403, "forbidden", None),
            (Refusal::not_found("x"), 404, "not-found", None),
            (
                Refusal::method_not_allowed("GET, HEAD", "x"),
                405,
                "not-supported",
                Some(("Allow", "GET, HEAD")),
            ),
            (Refusal::not_acceptable("x"), 406, "not-supported", None),
            (Refusal::too_long(1024), 413, "too-long", None),
            (
                Refusal::unsupported_media_type("x"),
                415,
                "not-supported",
                None,
            ),
            (Refusal::exception("x"), 500, "exception", None),
            (
                Refusal::transient(60, "x"),
                503,
                "transient",
                Some(("Retry-After", "60")),
            ),
        ];
        for (r, status, code, header_expected) in table {
            assert_eq!((r.status, r.code.as_str()), (status, code), "{r}");
            let resp = r.response(Format::Json, FhirVersion::Stu3);
            assert_eq!(resp.status, status);
            let v = parse_json(&resp.body, &Limits::default()).unwrap();
            assert_eq!(v["issue"][0]["code"], code);
            assert_eq!(v["issue"][0]["severity"], "error");
            match header_expected {
                Some((name, value)) => {
                    assert_eq!(r.headers().len(), 1, "{r}");
                    assert_eq!(header(&resp, name), Some(value), "{r}");
                }
                None => assert!(r.headers().is_empty(), "{r}"),
            }
        }
        assert_eq!(
            Refusal::too_long(1024).diagnostics(),
            "the document is larger than 1024 bytes"
        );
    }

    #[test]
    fn fhir_errors_map_to_413_415_and_400() {
        let too_large = FhirError::TooLarge { limit: 10 };
        assert_eq!(Refusal::from_fhir(&too_large), Refusal::too_long(10));
        let media = FhirError::UnsupportedMediaType {
            reason: "not a fhir json or xml media type",
        };
        let r = Refusal::from_fhir(&media);
        assert_eq!((r.status, r.code), (415, IssueType::NotSupported));
        assert_eq!(
            r.reason(),
            "unsupported media type: not a fhir json or xml media type"
        );
        let e = xml_to_json(
            b"<Patient xmlns=\"http://hl7.org/fhir\"><foo/></Patient>",
            FhirVersion::R4,
            &Limits::default(),
        )
        .unwrap_err();
        let r = Refusal::from_fhir(&e);
        assert_eq!((r.status, r.code), (400, IssueType::Structure));
        assert_eq!(r.expression.as_deref(), Some("Patient.foo"));
        let e = parse_json(br#"{"a":1,"a":2}"#, &Limits::default()).unwrap_err();
        let r = Refusal::from_fhir(&e);
        assert_eq!((r.status, r.code), (400, IssueType::Security));
        assert_eq!(r.expression, None, "json structure paths are not fhirpath");
    }

    #[test]
    fn the_subject_goes_to_the_partner_not_to_the_reason() {
        let r = Refusal::not_found("not in the case").about("Patient/p1");
        assert_eq!(r.reason(), "not in the case");
        assert_eq!(r.diagnostics(), "Patient/p1: not in the case");
        assert_eq!(r.to_string(), "404 Patient/p1: not in the case");
        let v = r.outcome();
        assert_eq!(v["issue"][0]["diagnostics"], "Patient/p1: not in the case");
        assert!(v["issue"][0].get("expression").is_none());
    }

    #[test]
    fn renders_in_json_and_xml_for_both_releases() {
        let r = Refusal::value("Task.input[3].valueString", "the query is absolute")
            .header("X-Test", "1");
        assert_eq!(
            r.to_string(),
            "400 the query is absolute at Task.input[3].valueString"
        );
        let expected = serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "value",
                "diagnostics": "the query is absolute",
                "expression": ["Task.input[3].valueString"],
            }],
        });
        for version in [FhirVersion::Stu3, FhirVersion::R4] {
            let j = r.response(Format::Json, version);
            assert_eq!(j.status, 400);
            assert_eq!(
                header(&j, "content-type"),
                Some("application/fhir+json; charset=utf-8")
            );
            assert_eq!(header(&j, "x-test"), Some("1"));
            assert!(
                j.body
                    .starts_with(b"{\"resourceType\":\"OperationOutcome\"")
            );
            assert_eq!(parse_json(&j.body, &Limits::default()).unwrap(), expected);
            let x = r.response(Format::Xml, version);
            assert_eq!(x.status, 400);
            assert_eq!(
                header(&x, "content-type"),
                Some("application/fhir+xml; charset=utf-8")
            );
            assert_eq!(header(&x, "x-test"), Some("1"));
            assert_eq!(
                xml_to_json(&x.body, version, &Limits::default()).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn headers_keep_their_order_after_the_content_type() {
        let resp = Refusal::login("Bearer", "a bearer token is required")
            .header("Cache-Control", "no-store")
            .response(Format::Json, FhirVersion::Stu3);
        let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Content-Type", "WWW-Authenticate", "Cache-Control"]);
    }
}
