//! Mitz's answer to the closed question (sans-IO): a SOAP 1.2 envelope
//! whose body is a SOAP `Fault` or holds one XACML 3.0 `Response` (directly,
//! or inside the SAML `Response`/`Assertion` of the XACML-SAML profile),
//! with a `Result` per data category.
//!
//! Read with the hardened reader of [`crate::fhir::xml`] (no DTD, no entity
//! declarations, no processing instructions, UTF-8 only, depth capped) after
//! a size cap of [`MAX_REPLY`]. Then, in this order:
//!
//! 1. the root is a SOAP 1.2 `Envelope` with one `Body`; a `wsa:RelatesTo`
//!    in the header, when present, names our `MessageID`;
//! 2. a `Fault` in the body → [`Reply::Fault`] with its code and subcodes;
//! 3. exactly one XACML `Response` under the body, with at least one
//!    `Result`, each with a `Decision` of `Permit`, `Deny`, `NotApplicable`
//!    or `Indeterminate`; a `Result` that echoes the patient
//!    (`resource-id`) must echo ours;
//! 4. results are matched to the categories asked by the `event-code` they
//!    echo; a single `Result` naming no category answers a question about
//!    a single category. A category no result names, or that results
//!    answer differently, is `Indeterminate`.
//!
//! Texts taken from the answer (fault codes, XACML status codes) are kept
//! to bounded printable ASCII; free text (fault reasons, status messages)
//! is not kept at all, as it could repeat the patient's BSN.

use crate::fhir::Limits;
use crate::fhir::xml::{self, Element, Node};
use crate::ids::{BSN_OID_ROOT, Bsn};

use super::request::{
    CATEGORY_ACTION, CATEGORY_RESOURCE, DATA_CATEGORY_SYSTEM, EVENT_CODE, HL7_NS, RESOURCE_ID,
    SOAP_NS, WSA_NS, XACML_NS,
};

/// Largest answer read (a few results are a few KiB).
pub const MAX_REPLY: usize = 256 * 1024;
/// Deepest nesting read (the SAML-wrapped form is about 12 levels deep).
pub const MAX_DEPTH: usize = 32;
/// Longest code kept from the answer.
const MAX_CODE: usize = 128;

/// What was asked, to check the answer against.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The UUID of our `wsa:MessageID`.
    pub message_id: &'a str,
    pub patient: &'a Bsn,
    pub categories: &'a [&'a str],
}

/// An XACML decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Permit,
    Deny,
    NotApplicable,
    Indeterminate,
}

impl Decision {
    fn parse(text: &str) -> Option<Decision> {
        Some(match text {
            "Permit" => Decision::Permit,
            "Deny" => Decision::Deny,
            "NotApplicable" => Decision::NotApplicable,
            "Indeterminate" => Decision::Indeterminate,
            _ => return None,
        })
    }

    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Permit => "permit",
            Decision::Deny => "deny",
            Decision::NotApplicable => "not-applicable",
            Decision::Indeterminate => "indeterminate",
        }
    }
}

/// The decision about one asked category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryDecision {
    pub category: String,
    pub decision: Decision,
    /// The XACML `StatusCode` of its result (e.g.
    /// `urn:oasis:names:tc:xacml:1.0:status:missing-attribute`), or why the
    /// decision is `Indeterminate` when no single result gave it.
    pub status: Option<String>,
}

/// A SOAP 1.2 fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `Code/Value`, e.g. `s:Sender`.
    pub code: String,
    /// `Subcode/Value`s, outermost first.
    pub subcodes: Vec<String>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.code)?;
        for s in &self.subcodes {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// A well-formed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// One decision per asked category, in the order asked.
    Decided(Vec<CategoryDecision>),
    Fault(Fault),
}

/// Why an answer could not be read. Names the element, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    TooLarge,
    /// Not XML we read (hostile constructs included).
    Xml(String),
    /// The root is not a SOAP 1.2 `Envelope`.
    NotSoap12 {
        root: String,
    },
    /// No `Body`, or more than one.
    Body,
    /// `wsa:RelatesTo` names another message.
    OtherMessage,
    /// No XACML `Response` in the body, or more than one.
    Response {
        found: usize,
    },
    /// A `Response` without any `Result`.
    NoResult,
    /// Result `n` (from 1) has no `Decision`, or one of another value.
    Decision {
        result: usize,
    },
    /// Result `n` (from 1) is about another patient.
    OtherPatient {
        result: usize,
    },
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::TooLarge => write!(f, "answer larger than {MAX_REPLY} bytes"),
            ReplyError::Xml(e) => write!(f, "answer is not acceptable xml: {e}"),
            ReplyError::NotSoap12 { root } => {
                write!(f, "answer is not a soap 1.2 envelope (root element {root})")
            }
            ReplyError::Body => f.write_str("answer has not exactly one soap Body"),
            ReplyError::OtherMessage => f.write_str("answer's wsa:RelatesTo names another message"),
            ReplyError::Response { found } => write!(
                f,
                "answer holds {found} xacml Response elements, expected one"
            ),
            ReplyError::NoResult => f.write_str("answer's xacml Response has no Result"),
            ReplyError::Decision { result } => write!(
                f,
                "answer's Result {result} has no Decision of Permit, Deny, NotApplicable or Indeterminate"
            ),
            ReplyError::OtherPatient { result } => {
                write!(f, "answer's Result {result} is about another patient")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

/// Reads Mitz's answer to the question `asked`.
pub fn parse(body: &[u8], asked: &Asked<'_>) -> Result<Reply, ReplyError> {
    if body.len() > MAX_REPLY {
        return Err(ReplyError::TooLarge);
    }
    let limits = Limits {
        max_bytes: MAX_REPLY,
        max_depth: MAX_DEPTH,
    };
    let (envelope, _) = xml::parse(body, &limits).map_err(|e| ReplyError::Xml(e.to_string()))?;
    if !envelope.is(SOAP_NS, "Envelope") {
        return Err(ReplyError::NotSoap12 {
            root: code(&envelope.name),
        });
    }
    if let Some(header) = children(&envelope, SOAP_NS, "Header").next() {
        let ours = format!("urn:uuid:{}", asked.message_id);
        if children(header, WSA_NS, "RelatesTo").any(|r| text(r).trim() != ours) {
            return Err(ReplyError::OtherMessage);
        }
    }
    let bodies: Vec<&Element> = children(&envelope, SOAP_NS, "Body").collect();
    let [body] = bodies.as_slice() else {
        return Err(ReplyError::Body);
    };
    if let Some(fault) = children(body, SOAP_NS, "Fault").next() {
        return Ok(Reply::Fault(read_fault(fault)));
    }
    let mut responses = Vec::new();
    descendants(body, XACML_NS, "Response", &mut responses);
    let [response] = responses.as_slice() else {
        return Err(ReplyError::Response {
            found: responses.len(),
        });
    };
    let results: Vec<&Element> = children(response, XACML_NS, "Result").collect();
    if results.is_empty() {
        return Err(ReplyError::NoResult);
    }
    let mut read = Vec::with_capacity(results.len());
    for (i, r) in results.iter().enumerate() {
        read.push(read_result(r, i + 1, asked.patient)?);
    }
    Ok(Reply::Decided(match_categories(&read, asked.categories)))
}

/// One `Result` as read.
struct ReadResult {
    decision: Decision,
    status: Option<String>,
    /// The data categories its `event-code` attributes echo.
    categories: Vec<String>,
    /// It echoes an `event-code` at all (of any code system).
    named: bool,
}

fn read_result(result: &Element, n: usize, patient: &Bsn) -> Result<ReadResult, ReplyError> {
    let decisions: Vec<&Element> = children(result, XACML_NS, "Decision").collect();
    let decision = match decisions.as_slice() {
        [d] => Decision::parse(text(d).trim()),
        _ => None,
    }
    .ok_or(ReplyError::Decision { result: n })?;
    let status = children(result, XACML_NS, "Status")
        .flat_map(|s| children(s, XACML_NS, "StatusCode"))
        .find_map(|c| c.attr("Value"))
        .map(code);
    let mut categories = Vec::new();
    let mut named = false;
    for attributes in children(result, XACML_NS, "Attributes") {
        let category = attributes.attr("Category").unwrap_or_default();
        for attribute in children(attributes, XACML_NS, "Attribute") {
            let id = attribute.attr("AttributeId").unwrap_or_default();
            for value in values(attribute) {
                if category == CATEGORY_ACTION && id == EVENT_CODE {
                    named = true;
                    let ours = value
                        .attr("codeSystem")
                        .is_none_or(|s| s == DATA_CATEGORY_SYSTEM);
                    if let Some(c) = value.attr("code").filter(|_| ours) {
                        categories.push(c.to_string());
                    }
                }
                if category == CATEGORY_RESOURCE && id == RESOURCE_ID {
                    let about_bsn = value.attr("root").is_none_or(|r| r == BSN_OID_ROOT);
                    if about_bsn && value.attr("extension") != Some(patient.as_str()) {
                        return Err(ReplyError::OtherPatient { result: n });
                    }
                }
            }
        }
    }
    Ok(ReadResult {
        decision,
        status,
        categories,
        named,
    })
}

/// The HL7v3 values (`InstanceIdentifier`, `CodedValue`, …) of an `Attribute`.
fn values(attribute: &Element) -> impl Iterator<Item = &Element> {
    children(attribute, XACML_NS, "AttributeValue").flat_map(|v| {
        v.children.iter().filter_map(|n| match n {
            Node::Element(e) if &*e.uri == HL7_NS => Some(e),
            _ => None,
        })
    })
}

fn match_categories(results: &[ReadResult], asked: &[&str]) -> Vec<CategoryDecision> {
    let unnamed = results.iter().all(|r| !r.named);
    asked
        .iter()
        .map(|&category| {
            let answers: Vec<&ReadResult> = if unnamed && results.len() == 1 && asked.len() == 1 {
                results.iter().collect()
            } else {
                results
                    .iter()
                    .filter(|r| r.categories.iter().any(|c| c == category))
                    .collect()
            };
            let (decision, status) = match answers.as_slice() {
                [] => (
                    Decision::Indeterminate,
                    Some("no result for the category".to_string()),
                ),
                [first, rest @ ..] => {
                    if rest.iter().all(|r| r.decision == first.decision) {
                        (first.decision, first.status.clone())
                    } else {
                        (
                            Decision::Indeterminate,
                            Some("results disagree about the category".to_string()),
                        )
                    }
                }
            };
            CategoryDecision {
                category: category.to_string(),
                decision,
                status,
            }
        })
        .collect()
}

fn read_fault(fault: &Element) -> Fault {
    let mut codes = Vec::new();
    let mut at = children(fault, SOAP_NS, "Code").next();
    while let Some(c) = at {
        if codes.len() >= 8 {
            break;
        }
        let value = children(c, SOAP_NS, "Value")
            .next()
            .map(|v| code(text(v).trim()))
            .unwrap_or_else(|| "-".to_string());
        codes.push(value);
        at = children(c, SOAP_NS, "Subcode").next();
    }
    let mut codes = codes.into_iter();
    Fault {
        code: codes.next().unwrap_or_else(|| "-".to_string()),
        subcodes: codes.collect(),
    }
}

/// Child elements `uri`:`name` of `el`.
fn children<'e>(el: &'e Element, uri: &'e str, name: &'e str) -> impl Iterator<Item = &'e Element> {
    el.children.iter().filter_map(move |n| match n {
        Node::Element(e) if e.is(uri, name) => Some(e),
        _ => None,
    })
}

/// Every descendant `uri`:`name` of `el`, not looking inside a match (the
/// tree is depth-capped, so the recursion is bounded).
fn descendants<'e>(el: &'e Element, uri: &str, name: &str, out: &mut Vec<&'e Element>) {
    for n in &el.children {
        if let Node::Element(e) = n {
            if e.is(uri, name) {
                out.push(e);
            } else {
                descendants(e, uri, name, out);
            }
        }
    }
}

/// The character data directly in `el`.
fn text(el: &Element) -> String {
    el.children
        .iter()
        .filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        })
        .collect()
}

/// A code from the answer, safe to log: printable ASCII without quotes or
/// backslashes, at most [`MAX_CODE`] characters; anything else is `?`.
fn code(s: &str) -> String {
    s.chars()
        .take(MAX_CODE)
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitz::closed::request::{self, ACTION, Query, Requester};

    const MID: &str = "7c0f5a52-3a1e-4a6b-9d0c-2f6c1e8b4d11";
    const PATIENT: &str = "900203638";

    fn bsn() -> Bsn {
        Bsn::parse(PATIENT).unwrap()
    }

    fn ask<'a>(p: &'a Bsn, categories: &'a [&'a str]) -> Asked<'a> {
        Asked {
            message_id: MID,
            patient: p,
            categories,
        }
    }

    /// One `Result` echoing `category` (and the patient, when given).
    fn result(decision: &str, category: Option<&str>, patient: Option<&str>) -> String {
        let mut s = format!("<Result><Decision>{decision}</Decision>");
        if let Some(p) = patient {
            s.push_str(&format!(
                r#"<Attributes Category="{CATEGORY_RESOURCE}"><Attribute AttributeId="{RESOURCE_ID}" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#II"><h:InstanceIdentifier xmlns:h="urn:hl7-org:v3" root="2.16.840.1.113883.2.4.6.3" extension="{p}"/></AttributeValue></Attribute></Attributes>"#
            ));
        }
        if let Some(c) = category {
            s.push_str(&format!(
                r#"<Attributes Category="{CATEGORY_ACTION}" xml:id="action0"><Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#CV"><ns9:CodedValue code="{c}" codeSystem="{DATA_CATEGORY_SYSTEM}" xmlns:ns9="urn:hl7-org:v3"/></AttributeValue></Attribute></Attributes>"#
            ));
        }
        s.push_str("</Result>");
        s
    }

    fn envelope(results: &[String]) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing">
  <s:Header>
    <a:Action s:mustUnderstand="1">http://schemas.otv.nl/toestemmingsregister/XACMLAuthzDecisionQuery/IGeslotenAutorisatievraagService/XACMLAuthzDecisionQueryResponse</a:Action>
    <a:RelatesTo>urn:uuid:{MID}</a:RelatesTo>
  </s:Header>
  <s:Body>
    <Response xmlns="urn:oasis:names:tc:xacml:3.0:core:schema:wd-17">{}</Response>
  </s:Body>
</s:Envelope>"#,
            results.concat()
        )
    }

    fn decided(body: &str, categories: &[&str]) -> Vec<(String, Decision)> {
        let p = bsn();
        match parse(body.as_bytes(), &ask(&p, categories)).unwrap() {
            Reply::Decided(d) => d.into_iter().map(|c| (c.category, c.decision)).collect(),
            Reply::Fault(f) => panic!("fault {f}"),
        }
    }

    fn err(body: &str) -> ReplyError {
        let p = bsn();
        parse(body.as_bytes(), &ask(&p, &["GGC002"])).unwrap_err()
    }

    #[test]
    fn every_decision_is_read() {
        for (text, decision) in [
            ("Permit", Decision::Permit),
            ("Deny", Decision::Deny),
            ("NotApplicable", Decision::NotApplicable),
            ("Indeterminate", Decision::Indeterminate),
            (" Permit\n", Decision::Permit),
        ] {
            let body = envelope(&[result(text, Some("GGC002"), Some(PATIENT))]);
            assert_eq!(
                decided(&body, &["GGC002"]),
                [("GGC002".to_string(), decision)],
                "{text:?}"
            );
        }
        for bad in ["permit", "Allow", "", "Permit Deny"] {
            let body = envelope(&[result(bad, Some("GGC002"), None)]);
            assert_eq!(err(&body), ReplyError::Decision { result: 1 }, "{bad:?}");
        }
        let two = envelope(&[
            "<Result><Decision>Permit</Decision><Decision>Deny</Decision></Result>".into(),
        ]);
        assert_eq!(err(&two), ReplyError::Decision { result: 1 });
    }

    #[test]
    fn results_are_matched_to_the_categories_asked() {
        let body = envelope(&[
            result("Deny", Some("GGC013"), None),
            result("Permit", Some("GGC002"), None),
            result("Permit", Some("GGC099"), None),
        ]);
        assert_eq!(
            decided(&body, &["GGC002", "GGC012", "GGC013"]),
            [
                ("GGC002".to_string(), Decision::Permit),
                ("GGC012".to_string(), Decision::Indeterminate),
                ("GGC013".to_string(), Decision::Deny),
            ]
        );
        // Disagreeing results about one category: not a permit.
        let body = envelope(&[
            result("Permit", Some("GGC002"), None),
            result("Deny", Some("GGC002"), None),
        ]);
        assert_eq!(
            decided(&body, &["GGC002"]),
            [("GGC002".to_string(), Decision::Indeterminate)]
        );
        // A result naming no category answers only a one-category question.
        let body = envelope(&[result("Permit", None, None)]);
        assert_eq!(
            decided(&body, &["GGC002"]),
            [("GGC002".to_string(), Decision::Permit)]
        );
        assert_eq!(
            decided(&body, &["GGC002", "GGC013"]),
            [
                ("GGC002".to_string(), Decision::Indeterminate),
                ("GGC013".to_string(), Decision::Indeterminate),
            ]
        );
        let body = envelope(&[result("Permit", None, None), result("Permit", None, None)]);
        assert_eq!(
            decided(&body, &["GGC002"]),
            [("GGC002".to_string(), Decision::Indeterminate)]
        );
        // A code of another code system is not a data category.
        let body = envelope(&[result("Permit", Some("GGC002"), None)
            .replace(DATA_CATEGORY_SYSTEM, "2.16.840.1.113883.6.96")]);
        assert_eq!(
            decided(&body, &["GGC002"]),
            [("GGC002".to_string(), Decision::Indeterminate)]
        );
    }

    #[test]
    fn the_status_of_an_indeterminate_result_is_kept_as_a_code() {
        let body = envelope(&[
            r#"<Result><Decision>Indeterminate</Decision><Status><StatusCode Value="urn:oasis:names:tc:xacml:1.0:status:missing-attribute"/><StatusMessage>BSN 900203638 "missing"</StatusMessage></Status></Result>"#
            .to_string()]);
        let p = bsn();
        let Reply::Decided(d) = parse(body.as_bytes(), &ask(&p, &["GGC002"])).unwrap() else {
            panic!()
        };
        assert_eq!(
            d[0].status.as_deref(),
            Some("urn:oasis:names:tc:xacml:1.0:status:missing-attribute")
        );
        assert_eq!(code("a b\"c\\d\u{e9}"), "a?b?c?d?");
        assert_eq!(code(&"x".repeat(1000)).len(), MAX_CODE);
    }

    #[test]
    fn a_result_about_another_patient_is_refused() {
        let body = envelope(&[
            result("Permit", Some("GGC002"), Some(PATIENT)),
            result("Permit", Some("GGC002"), Some("900203651")),
        ]);
        assert_eq!(err(&body), ReplyError::OtherPatient { result: 2 });
    }

    #[test]
    fn the_saml_wrapped_form_is_read() {
        let body = format!(
            r#"<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_1" Version="2.0" IssueInstant="2026-01-01T00:00:00Z">
 <samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>
 <saml:Assertion ID="_2" Version="2.0" IssueInstant="2026-01-01T00:00:00Z">
  <saml:Statement xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xacml-saml="urn:oasis:names:tc:xacml:3.0:profile:saml2.0:v2:schema:assertion:wd-14" xsi:type="xacml-saml:XACMLAuthzDecisionStatementType">
   <xacml-context:Response xmlns:xacml-context="urn:oasis:names:tc:xacml:3.0:core:schema:wd-17">
    <xacml-context:Result>
     <xacml-context:Decision>Deny</xacml-context:Decision>
     <xacml-context:Attributes Category="{CATEGORY_ACTION}">
      <xacml-context:Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true">
       <xacml-context:AttributeValue DataType="urn:hl7-org:v3#CV"><hl7:CodedValue xmlns:hl7="urn:hl7-org:v3" code="GGC002"/></xacml-context:AttributeValue>
      </xacml-context:Attribute>
     </xacml-context:Attributes>
    </xacml-context:Result>
   </xacml-context:Response>
  </saml:Statement>
 </saml:Assertion>
</samlp:Response></soap:Body></soap:Envelope>"#
        );
        assert_eq!(
            decided(&body, &["GGC002"]),
            [("GGC002".to_string(), Decision::Deny)]
        );
    }

    #[test]
    fn a_soap_fault_is_read_with_its_codes() {
        let body = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
<env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>m:InvalidBsn</env:Value></env:Subcode></env:Code>
<env:Reason><env:Text xml:lang="nl">BSN 900203638 onbekend</env:Text></env:Reason>
</env:Fault></env:Body></env:Envelope>"#;
        let p = bsn();
        let fault = match parse(body.as_bytes(), &ask(&p, &["GGC002"])).unwrap() {
            Reply::Fault(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(fault.code, "env:Sender");
        assert_eq!(fault.subcodes, ["m:InvalidBsn"]);
        assert_eq!(fault.to_string(), "env:Sender/m:InvalidBsn");
        assert!(
            !format!("{fault:?}").contains(PATIENT),
            "no reason text kept"
        );
        let bare = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault/></s:Body></s:Envelope>"#;
        let Reply::Fault(f) = parse(bare.as_bytes(), &ask(&p, &["GGC002"])).unwrap() else {
            panic!()
        };
        assert_eq!(f.code, "-");
    }

    #[test]
    fn malformed_answers_are_refused_by_what_is_wrong() {
        let soap11 = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#;
        assert!(matches!(err(soap11), ReplyError::NotSoap12 { .. }));
        assert!(matches!(err("<Response/>"), ReplyError::NotSoap12 { .. }));
        let no_body = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>"#;
        assert_eq!(err(no_body), ReplyError::Body);
        let two_bodies = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/><s:Body/></s:Envelope>"#;
        assert_eq!(err(two_bodies), ReplyError::Body);
        let empty = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>"#;
        assert_eq!(err(empty), ReplyError::Response { found: 0 });
        let wrong_ns = envelope(&[result("Permit", Some("GGC002"), None)])
            .replace("core:schema:wd-17", "core:schema:wd-16");
        assert_eq!(err(&wrong_ns), ReplyError::Response { found: 0 });
        let two = envelope(&[]).replace(
            "<Response xmlns=\"urn:oasis:names:tc:xacml:3.0:core:schema:wd-17\"></Response>",
            "<x><Response xmlns=\"urn:oasis:names:tc:xacml:3.0:core:schema:wd-17\"/></x><Response xmlns=\"urn:oasis:names:tc:xacml:3.0:core:schema:wd-17\"/>",
        );
        assert_eq!(err(&two), ReplyError::Response { found: 2 });
        assert_eq!(err(&envelope(&[])), ReplyError::NoResult);
        let other = envelope(&[result("Permit", Some("GGC002"), None)])
            .replace(MID, "11111111-2222-4333-8444-555555555555");
        assert_eq!(err(&other), ReplyError::OtherMessage);
        for garbage in [
            "",
            "garbage",
            "{\"decision\":\"Permit\"}",
            "<s:Envelope",
            "\u{feff}",
        ] {
            assert!(matches!(err(garbage), ReplyError::Xml(_)), "{garbage:?}");
        }
    }

    #[test]
    fn hostile_xml_is_refused() {
        let permit = envelope(&[result("Permit", Some("GGC002"), None)]);
        let with_dtd = permit.replacen(
            "<s:Envelope",
            "<!DOCTYPE s:Envelope [<!ENTITY x \"Permit\">]><s:Envelope",
            1,
        );
        let e = err(&with_dtd);
        assert!(
            matches!(&e, ReplyError::Xml(m) if m.contains("doctype")),
            "{e:?}"
        );
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&lol2;</s:Body></s:Envelope>"#;
        assert!(matches!(err(bomb), ReplyError::Xml(_)));
        let entity = permit.replace("<Decision>Permit", "<Decision>&permit;");
        assert!(matches!(&err(&entity), ReplyError::Xml(m) if m.contains("entity")));
        let xxe = permit.replacen(
            "<s:Envelope",
            "<!DOCTYPE s:Envelope SYSTEM \"file:///etc/passwd\"><s:Envelope",
            1,
        );
        assert!(matches!(err(&xxe), ReplyError::Xml(_)));
        let pi = permit.replace("<s:Body>", "<s:Body><?php echo 1; ?>");
        assert!(matches!(&err(&pi), ReplyError::Xml(m) if m.contains("processing instruction")));
        let latin1 = permit.replace("encoding=\"utf-8\"", "encoding=\"ISO-8859-1\"");
        assert!(matches!(err(&latin1), ReplyError::Xml(_)));
        let huge = permit.replace(
            "<s:Body>",
            &format!("<s:Body><!--{}-->", "x".repeat(MAX_REPLY)),
        );
        assert_eq!(err(&huge), ReplyError::TooLarge);
        let deep = permit.replace(
            "<s:Body>",
            &format!(
                "<s:Body>{}{}",
                "<a>".repeat(MAX_DEPTH),
                "</a>".repeat(MAX_DEPTH)
            ),
        );
        let e = err(&deep);
        assert!(
            matches!(&e, ReplyError::Xml(m) if m.contains("deep")),
            "{e:?}"
        );
    }

    #[test]
    fn every_truncated_prefix_is_refused_without_panic() {
        let permit = envelope(&[result("Permit", Some("GGC002"), Some(PATIENT))]);
        let p = bsn();
        let bytes = permit.as_bytes();
        for n in 0..bytes.len() {
            assert!(
                parse(&bytes[..n], &ask(&p, &["GGC002"])).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        assert!(parse(bytes, &ask(&p, &["GGC002"])).is_ok());
    }

    #[test]
    fn our_own_question_is_not_an_answer() {
        // The request shares the namespaces but holds no XACML Response.
        let p = bsn();
        let q = Query {
            message_id: MID,
            to: "https://mitz.test/x",
            now: 0,
            patient: &p,
            holder_ura: "00000659",
            holder_category: "Z3",
            data_categories: &["GGC002"],
            requester: Requester {
                ura: None,
                category: "V6",
                role: None,
                uzi: None,
            },
        };
        let bytes = request::build(&q).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(ACTION));
        assert_eq!(
            parse(&bytes, &ask(&p, &["GGC002"])).unwrap_err(),
            ReplyError::Response { found: 0 }
        );
    }
}
