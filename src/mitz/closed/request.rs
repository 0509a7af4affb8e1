//! The closed question as sent (sans-IO): a SOAP 1.2 envelope with
//! WS-Addressing around an `XACMLAuthzDecisionQuery` (XACML-SAML profile
//! wd-14) holding an XACML 3.0 `Request` (core wd-17), values as HL7v3
//! `InstanceIdentifier` (II) and `CodedValue` (CV). Spec mitz-and-aorta.md §7.
//!
//! | category | attribute | value |
//! |---|---|---|
//! | resource | `…:2.0:resource:resource-id` | II: BSN (root `2.16.840.1.113883.2.4.6.3`) |
//! | resource | `…:document-entry:healthcare-facility-type-code` | CV: our category (`NP_ORG_CATEGORY`, code system `2.16.840.1.113883.2.4.15.1060`) |
//! | resource | `…:author-institution:id` | II: our URA (root `2.16.528.1.1007.3.3`) |
//! | action, one block per data category | `…:document-entry:event-code` | CV: `GGC…` (code system `2.16.840.1.113883.2.4.3.111.5.10.1`), `IncludeInResult` so each `Result` names its category |
//! | access-subject | `…:2.0:subject:role` | CV: the user's role, when it is a RoleCodeNL or SNOMED CT code |
//! | access-subject | `…:xua:2017:subject:provider-identifier` | II: the user's UZI number, when the user id is one |
//! | access-subject | `…:subject:provider-institution` | II: the requester's URA, when known |
//! | access-subject | `…:subject:consulting-healthcare-facility-type-code` | CV: the requester's category (the partner's `PROVIDER_CATEGORY`) |
//! | environment | `…:xspa:1.0:subject:purposeofuse` | CV: `TREAT` (code system `2.16.840.1.113883.1.11.20448`) |
//!
//! What is unknown is left out rather than guessed: a role that is neither
//! a RoleCodeNL code (`01.015`) nor a SNOMED CT concept id, a user id that
//! is not a 9-digit UZI number, a requester without a URA. Mitz then decides
//! on what it has; an `Indeterminate` for a missing attribute releases
//! nothing, like every answer but `Permit`.
//!
//! The requester's category goes out as given, in the zorgaanbiedercategorie
//! code system (`V6`, `Z3`, …), the form both public Mitz clients send.
//! `PROVIDER_CATEGORY` defaults to `RPZAC104`, the consulting-provider
//! grouping of the consent notifications; Mitz may not read that code here,
//! and answers `Indeterminate` then (no release).
//!
//! The XML is written by quick-xml's `Writer`, which escapes every value;
//! values are also checked to be printable text (no control characters), so
//! nothing a request context carries can change the document's structure.

use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use crate::ids::{BSN_OID_ROOT, Bsn, URA_OID_ROOT};
use crate::util::time;

/// SOAP 1.2 envelope namespace.
pub const SOAP_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Addressing 1.0.
pub const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
/// SAML 2.0 profile of XACML 3.0, protocol schema (wd-14).
pub const XACML_SAML_NS: &str =
    "urn:oasis:names:tc:xacml:3.0:profile:saml2.0:v2:schema:protocol:wd-14";
/// XACML 3.0 core context schema (wd-17).
pub const XACML_NS: &str = "urn:oasis:names:tc:xacml:3.0:core:schema:wd-17";
/// HL7 version 3 (the II and CV values).
pub const HL7_NS: &str = "urn:hl7-org:v3";

/// `wsa:Action` of the question.
pub const ACTION: &str = "XACMLAuthorizationDecisionQueryRequest";
/// `wsa:ReplyTo/wsa:Address`: answer on this connection.
pub const ANONYMOUS: &str = "http://www.w3.org/2005/08/addressing/anonymous";

/// XACML attribute categories.
pub const CATEGORY_RESOURCE: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:resource";
pub const CATEGORY_ACTION: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:action";
pub const CATEGORY_SUBJECT: &str = "urn:oasis:names:tc:xacml:1.0:subject-category:access-subject";
pub const CATEGORY_ENVIRONMENT: &str =
    "urn:oasis:names:tc:xacml:3.0:attribute-category:environment";

/// Attribute ids (spec §7).
pub const RESOURCE_ID: &str = "urn:oasis:names:tc:xacml:2.0:resource:resource-id";
pub const FACILITY_TYPE: &str =
    "urn:ihe:iti:appc:2016:document-entry:healthcare-facility-type-code";
pub const AUTHOR_INSTITUTION: &str = "urn:ihe:iti:appc:2016:author-institution:id";
pub const EVENT_CODE: &str = "urn:ihe:iti:appc:2016:document-entry:event-code";
pub const SUBJECT_ROLE: &str = "urn:oasis:names:tc:xacml:2.0:subject:role";
pub const PROVIDER_IDENTIFIER: &str = "urn:ihe:iti:xua:2017:subject:provider-identifier";
pub const PROVIDER_INSTITUTION: &str = "urn:nl:otv:names:tc:1.0:subject:provider-institution";
pub const CONSULTING_FACILITY_TYPE: &str =
    "urn:nl:otv:names:tc:1.0:subject:consulting-healthcare-facility-type-code";
pub const PURPOSE_OF_USE: &str = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse";

/// XACML data types of the HL7v3 values.
pub const DATA_TYPE_II: &str = "urn:hl7-org:v3#II";
pub const DATA_TYPE_CV: &str = "urn:hl7-org:v3#CV";

/// Code systems and identifier roots.
pub const FACILITY_TYPE_SYSTEM: &str = "2.16.840.1.113883.2.4.15.1060";
pub const DATA_CATEGORY_SYSTEM: &str = "2.16.840.1.113883.2.4.3.111.5.10.1";
pub const ROLE_CODE_NL_SYSTEM: &str = "2.16.840.1.113883.2.4.15.111";
pub const SNOMED_CT_SYSTEM: &str = "2.16.840.1.113883.6.96";
pub const PURPOSE_OF_USE_SYSTEM: &str = "2.16.840.1.113883.1.11.20448";
pub const UZI_ROOT: &str = "2.16.528.1.1007.3.1";
/// Purpose of use: treatment with the patient's explicit consent.
pub const TREAT: &str = "TREAT";
/// Assigning authority of URA and UZI numbers.
const CIBG: &str = "CIBG";

/// Longest value accepted in any attribute (codes, identifiers, the URL).
pub const MAX_VALUE_LEN: usize = 2048;

/// A coded value: `code` in `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coded<'a> {
    pub code: &'a str,
    pub system: &'static str,
}

/// Who asks: the subject block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester<'a> {
    /// The requesting organisation's URA (8 digits), when known.
    pub ura: Option<&'a str>,
    /// Its category: the partner's `PROVIDER_CATEGORY`.
    pub category: &'a str,
    /// The user's role, when it is a code Mitz can read.
    pub role: Option<Coded<'a>>,
    /// The user's UZI number, when the user id is one.
    pub uzi: Option<&'a str>,
}

/// One closed question, as sent.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// A UUID: `wsa:MessageID` is `urn:uuid:<it>`, the query's SAML `ID` `_<it>`.
    pub message_id: &'a str,
    /// The endpoint URL (`wsa:To`).
    pub to: &'a str,
    /// Unix seconds (the SAML `IssueInstant`).
    pub now: i64,
    pub patient: &'a Bsn,
    /// Our URA.
    pub holder_ura: &'a str,
    /// Our category (`NP_ORG_CATEGORY`).
    pub holder_category: &'a str,
    /// The data categories asked about, one action block each.
    pub data_categories: &'a [&'a str],
    pub requester: Requester<'a>,
}

/// Why a question could not be written. Names the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// No data category to ask about.
    NoCategory,
    /// The field is empty, too long, or holds characters that are not
    /// printable text.
    Unsendable(&'static str),
    /// The writer failed (it writes to memory: not expected).
    Write(String),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::NoCategory => f.write_str("closed question: no data category to ask"),
            QueryError::Unsendable(field) => write!(
                f,
                "closed question: {field} is empty, longer than {MAX_VALUE_LEN} characters or not printable text"
            ),
            QueryError::Write(e) => write!(f, "closed question: writing the xml: {e}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// The SOAP envelope of `query`, UTF-8.
pub fn build(query: &Query<'_>) -> Result<Vec<u8>, QueryError> {
    check(query)?;
    let mut w = Xml(Writer::new(Cursor::new(Vec::with_capacity(4096))));
    w.event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.open(
        "soap:Envelope",
        &[("xmlns:soap", SOAP_NS), ("xmlns:wsa", WSA_NS)],
    )?;
    header(&mut w, query)?;
    w.open("soap:Body", &[])?;
    let id = format!("_{}", query.message_id);
    let instant = time::rfc3339(query.now);
    w.open(
        "xacml-saml:XACMLAuthzDecisionQuery",
        &[
            ("xmlns:xacml-saml", XACML_SAML_NS),
            ("xmlns:xacml-context", XACML_NS),
            ("xmlns:hl7", HL7_NS),
            ("ID", &id),
            ("Version", "2.0"),
            ("IssueInstant", &instant),
        ],
    )?;
    w.open(
        "xacml-context:Request",
        &[
            ("ReturnPolicyIdList", "false"),
            ("CombinedDecision", "false"),
        ],
    )?;
    resource(&mut w, query)?;
    for (i, category) in query.data_categories.iter().enumerate() {
        let xml_id = format!("action{i}");
        w.open(
            "xacml-context:Attributes",
            &[("Category", CATEGORY_ACTION), ("xml:id", &xml_id)],
        )?;
        w.cv(
            EVENT_CODE,
            true,
            Coded {
                code: category,
                system: DATA_CATEGORY_SYSTEM,
            },
        )?;
        w.close("xacml-context:Attributes")?;
    }
    subject(&mut w, &query.requester)?;
    w.open(
        "xacml-context:Attributes",
        &[
            ("Category", CATEGORY_ENVIRONMENT),
            ("xml:id", "environment"),
        ],
    )?;
    w.cv(
        PURPOSE_OF_USE,
        false,
        Coded {
            code: TREAT,
            system: PURPOSE_OF_USE_SYSTEM,
        },
    )?;
    w.close("xacml-context:Attributes")?;
    w.close("xacml-context:Request")?;
    w.close("xacml-saml:XACMLAuthzDecisionQuery")?;
    w.close("soap:Body")?;
    w.close("soap:Envelope")?;
    Ok(w.0.into_inner().into_inner())
}

/// The role as a code Mitz can read: `NN.NNN` is RoleCodeNL (the UZI role
/// codes, `01.015` huisarts), a SNOMED CT concept id (6–18 digits,
/// `62247001` huisarts, as Zorgviewer sends it) is SNOMED CT. Anything else
/// is not sent.
pub fn role_code(role: &str) -> Option<Coded<'_>> {
    let b = role.as_bytes();
    let role_code_nl = b.len() == 6
        && b.get(2) == Some(&b'.')
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit());
    if role_code_nl {
        return Some(Coded {
            code: role,
            system: ROLE_CODE_NL_SYSTEM,
        });
    }
    let snomed = (6..=18).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) && b[0] != b'0';
    snomed.then_some(Coded {
        code: role,
        system: SNOMED_CT_SYSTEM,
    })
}

/// The user id as a UZI number (9 digits), or nothing.
pub fn uzi_number(user: &str) -> Option<&str> {
    crate::ids::is_digits(user, 9).then_some(user)
}

/// The URA of an organisation OID `2.16.528.1.1007.3.3.<URA>` (bare or
/// `urn:oid:`), written with 8 digits.
pub fn ura_of_oid(oid: &str) -> Option<String> {
    let n = oid
        .strip_prefix("urn:oid:")
        .unwrap_or(oid)
        .strip_prefix(URA_OID_ROOT)?
        .strip_prefix('.')?;
    let ok = (1..=8).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| format!("{n:0>8}"))
}

fn header(w: &mut Xml, query: &Query<'_>) -> Result<(), QueryError> {
    w.open("soap:Header", &[])?;
    w.text_element("wsa:Action", &[("soap:mustUnderstand", "true")], ACTION)?;
    w.text_element(
        "wsa:MessageID",
        &[],
        &format!("urn:uuid:{}", query.message_id),
    )?;
    w.text_element("wsa:To", &[("soap:mustUnderstand", "true")], query.to)?;
    w.open("wsa:ReplyTo", &[])?;
    w.text_element("wsa:Address", &[], ANONYMOUS)?;
    w.close("wsa:ReplyTo")?;
    w.close("soap:Header")
}

fn resource(w: &mut Xml, query: &Query<'_>) -> Result<(), QueryError> {
    w.open(
        "xacml-context:Attributes",
        &[("Category", CATEGORY_RESOURCE), ("xml:id", "resource")],
    )?;
    w.ii(RESOURCE_ID, BSN_OID_ROOT, query.patient.as_str(), None)?;
    w.cv(
        FACILITY_TYPE,
        false,
        Coded {
            code: query.holder_category,
            system: FACILITY_TYPE_SYSTEM,
        },
    )?;
    w.ii(
        AUTHOR_INSTITUTION,
        URA_OID_ROOT,
        query.holder_ura,
        Some(CIBG),
    )?;
    w.close("xacml-context:Attributes")
}

fn subject(w: &mut Xml, requester: &Requester<'_>) -> Result<(), QueryError> {
    w.open(
        "xacml-context:Attributes",
        &[("Category", CATEGORY_SUBJECT), ("xml:id", "subject")],
    )?;
    if let Some(role) = requester.role {
        w.cv(SUBJECT_ROLE, false, role)?;
    }
    if let Some(uzi) = requester.uzi {
        w.ii(PROVIDER_IDENTIFIER, UZI_ROOT, uzi, Some(CIBG))?;
    }
    if let Some(ura) = requester.ura {
        w.ii(PROVIDER_INSTITUTION, URA_OID_ROOT, ura, Some(CIBG))?;
    }
    w.cv(
        CONSULTING_FACILITY_TYPE,
        false,
        Coded {
            code: requester.category,
            system: FACILITY_TYPE_SYSTEM,
        },
    )?;
    w.close("xacml-context:Attributes")
}

/// Every value that goes into the document is printable text of bounded
/// length (the writer escapes markup; this keeps out what escaping cannot:
/// control characters, and attribute-value normalisation of tabs and line
/// ends).
fn check(query: &Query<'_>) -> Result<(), QueryError> {
    if query.data_categories.is_empty() {
        return Err(QueryError::NoCategory);
    }
    let r = &query.requester;
    let fields: [(&'static str, Option<&str>); 9] = [
        ("the message id", Some(query.message_id)),
        ("the endpoint url", Some(query.to)),
        ("our ura", Some(query.holder_ura)),
        (
            "our category (NP_ORG_CATEGORY)",
            Some(query.holder_category),
        ),
        ("the requester's ura", r.ura),
        (
            "the requester's category (PROVIDER_CATEGORY)",
            Some(r.category),
        ),
        ("the user's role", r.role.map(|c| c.code)),
        ("the user's uzi number", r.uzi),
        ("the patient", Some(query.patient.as_str())),
    ];
    for (name, value) in fields {
        if value.is_some_and(|v| !sendable(v)) {
            return Err(QueryError::Unsendable(name));
        }
    }
    if !query.data_categories.iter().all(|c| sendable(c)) {
        return Err(QueryError::Unsendable("a data category"));
    }
    Ok(())
}

fn sendable(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value
            .chars()
            .all(|c| !c.is_control() && crate::fhir::xml::is_xml_char(c))
}

/// quick-xml's writer with the few shapes the question needs.
struct Xml(Writer<Cursor<Vec<u8>>>);

impl Xml {
    fn event(&mut self, event: Event<'_>) -> Result<(), QueryError> {
        self.0
            .write_event(event)
            .map_err(|e| QueryError::Write(e.to_string()))
    }

    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), QueryError> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.event(Event::Start(start))
    }

    fn close(&mut self, name: &str) -> Result<(), QueryError> {
        self.event(Event::End(BytesEnd::new(name)))
    }

    fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), QueryError> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.event(Event::Empty(start))
    }

    fn text_element(
        &mut self,
        name: &str,
        attrs: &[(&str, &str)],
        text: &str,
    ) -> Result<(), QueryError> {
        self.open(name, attrs)?;
        self.event(Event::Text(BytesText::new(text)))?;
        self.close(name)
    }

    /// An `Attribute` whose value is an HL7v3 II.
    fn ii(
        &mut self,
        id: &str,
        root: &str,
        extension: &str,
        authority: Option<&str>,
    ) -> Result<(), QueryError> {
        self.attribute(id, false, DATA_TYPE_II, |w| {
            let mut attrs = vec![("root", root), ("extension", extension)];
            if let Some(a) = authority {
                attrs.push(("assigningAuthorityName", a));
            }
            w.empty("hl7:InstanceIdentifier", &attrs)
        })
    }

    /// An `Attribute` whose value is an HL7v3 CV.
    fn cv(&mut self, id: &str, in_result: bool, coded: Coded<'_>) -> Result<(), QueryError> {
        self.attribute(id, in_result, DATA_TYPE_CV, |w| {
            w.empty(
                "hl7:CodedValue",
                &[("code", coded.code), ("codeSystem", coded.system)],
            )
        })
    }

    fn attribute(
        &mut self,
        id: &str,
        in_result: bool,
        data_type: &str,
        value: impl FnOnce(&mut Xml) -> Result<(), QueryError>,
    ) -> Result<(), QueryError> {
        let include = if in_result { "true" } else { "false" };
        self.open(
            "xacml-context:Attribute",
            &[("AttributeId", id), ("IncludeInResult", include)],
        )?;
        self.open("xacml-context:AttributeValue", &[("DataType", data_type)])?;
        value(self)?;
        self.close("xacml-context:AttributeValue")?;
        self.close("xacml-context:Attribute")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Limits;
    use crate::fhir::xml::{self, Element, Node};

    const MESSAGE_ID: &str = "0b5e3c44-9a51-4d3e-8f5a-6a8d2f1c7e90";
    const TO: &str = "https://mitz.test/tst-us/mitz/geslotenautorisatievraag/xacml3";

    fn patient() -> Bsn {
        Bsn::parse("900203638").unwrap()
    }

    fn query<'a>(
        patient: &'a Bsn,
        categories: &'a [&'a str],
        requester: Requester<'a>,
    ) -> Query<'a> {
        Query {
            message_id: MESSAGE_ID,
            to: TO,
            now: 1_767_225_600,
            patient,
            holder_ura: "00000659",
            holder_category: "Z3",
            data_categories: categories,
            requester,
        }
    }

    fn full_requester() -> Requester<'static> {
        Requester {
            ura: Some("00000666"),
            category: "V6",
            role: role_code("01.015"),
            uzi: uzi_number("000095254"),
        }
    }

    fn parse(bytes: &[u8]) -> Element {
        xml::parse(bytes, &Limits::default()).unwrap().0
    }

    fn kids<'e>(el: &'e Element, uri: &'e str, name: &'e str) -> impl Iterator<Item = &'e Element> {
        el.children.iter().filter_map(move |n| match n {
            Node::Element(e) if e.is(uri, name) => Some(e),
            _ => None,
        })
    }

    fn one<'e>(el: &'e Element, uri: &'static str, name: &'static str) -> &'e Element {
        let all: Vec<&Element> = kids(el, uri, name).collect();
        assert_eq!(all.len(), 1, "{name} under {}", el.name);
        all[0]
    }

    fn text(el: &Element) -> String {
        el.children
            .iter()
            .map(|n| match n {
                Node::Text(t) => t.as_str(),
                Node::Element(_) => "",
            })
            .collect()
    }

    /// One `Attribute`: AttributeId, IncludeInResult, DataType, value element.
    type Attr = (String, String, String, Element);

    /// The request's `Attributes` blocks as (Category, attributes).
    fn blocks(request: &Element) -> Vec<(String, Vec<Attr>)> {
        kids(request, XACML_NS, "Attributes")
            .map(|a| {
                let attrs = kids(a, XACML_NS, "Attribute")
                    .map(|at| {
                        let value = one(at, XACML_NS, "AttributeValue");
                        let elements: Vec<&Element> = value
                            .children
                            .iter()
                            .filter_map(|n| match n {
                                Node::Element(e) => Some(e),
                                Node::Text(_) => None,
                            })
                            .collect();
                        assert_eq!(elements.len(), 1);
                        (
                            at.attr("AttributeId").unwrap().to_string(),
                            at.attr("IncludeInResult").unwrap().to_string(),
                            value.attr("DataType").unwrap().to_string(),
                            elements[0].clone(),
                        )
                    })
                    .collect();
                (a.attr("Category").unwrap().to_string(), attrs)
            })
            .collect()
    }

    fn ii(el: &Element) -> (&str, &str) {
        assert!(el.is(HL7_NS, "InstanceIdentifier"), "{}", el.name);
        (el.attr("root").unwrap(), el.attr("extension").unwrap())
    }

    fn cv(el: &Element) -> (&str, &str) {
        assert!(el.is(HL7_NS, "CodedValue"), "{}", el.name);
        (el.attr("code").unwrap(), el.attr("codeSystem").unwrap())
    }

    #[test]
    fn the_envelope_is_soap_12_with_ws_addressing() {
        let p = patient();
        let bytes = build(&query(&p, &["GGC002"], full_requester())).unwrap();
        let envelope = parse(&bytes);
        assert!(envelope.is(SOAP_NS, "Envelope"));
        let header = one(&envelope, SOAP_NS, "Header");
        let action = one(header, WSA_NS, "Action");
        assert_eq!(text(action), ACTION);
        assert_eq!(
            text(one(header, WSA_NS, "MessageID")),
            format!("urn:uuid:{MESSAGE_ID}")
        );
        assert_eq!(text(one(header, WSA_NS, "To")), TO);
        let reply_to = one(header, WSA_NS, "ReplyTo");
        assert_eq!(text(one(reply_to, WSA_NS, "Address")), ANONYMOUS);
        let must = action
            .attrs
            .iter()
            .find(|a| a.name == "mustUnderstand")
            .unwrap();
        assert_eq!(must.value, "true");
        let body = one(&envelope, SOAP_NS, "Body");
        let q = one(body, XACML_SAML_NS, "XACMLAuthzDecisionQuery");
        assert_eq!(q.attr("ID"), Some(format!("_{MESSAGE_ID}").as_str()));
        assert_eq!(q.attr("Version"), Some("2.0"));
        assert_eq!(q.attr("IssueInstant"), Some("2026-01-01T00:00:00Z"));
        let request = one(q, XACML_NS, "Request");
        assert_eq!(request.attr("CombinedDecision"), Some("false"));
        assert_eq!(request.attr("ReturnPolicyIdList"), Some("false"));
    }

    #[test]
    fn the_xacml_request_carries_the_attributes_of_spec_7() {
        let p = patient();
        let categories = ["GGC002", "GGC012"];
        let bytes = build(&query(&p, &categories, full_requester())).unwrap();
        let envelope = parse(&bytes);
        let request = one(
            one(
                one(&envelope, SOAP_NS, "Body"),
                XACML_SAML_NS,
                "XACMLAuthzDecisionQuery",
            ),
            XACML_NS,
            "Request",
        );
        let b = blocks(request);
        let cats: Vec<&str> = b.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            cats,
            [
                CATEGORY_RESOURCE,
                CATEGORY_ACTION,
                CATEGORY_ACTION,
                CATEGORY_SUBJECT,
                CATEGORY_ENVIRONMENT
            ]
        );

        let resource = &b[0].1;
        let ids: Vec<&str> = resource.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(ids, [RESOURCE_ID, FACILITY_TYPE, AUTHOR_INSTITUTION]);
        assert_eq!(resource[0].2, DATA_TYPE_II);
        assert_eq!(
            ii(&resource[0].3),
            ("2.16.840.1.113883.2.4.6.3", "900203638")
        );
        assert_eq!(resource[1].2, DATA_TYPE_CV);
        assert_eq!(cv(&resource[1].3), ("Z3", "2.16.840.1.113883.2.4.15.1060"));
        assert_eq!(ii(&resource[2].3), ("2.16.528.1.1007.3.3", "00000659"));

        for (block, category) in b[1..3].iter().zip(categories) {
            assert_eq!(block.1.len(), 1);
            let (id, include, dt, value) = &block.1[0];
            assert_eq!(id, EVENT_CODE);
            assert_eq!(include, "true", "each Result names its category");
            assert_eq!(dt, DATA_TYPE_CV);
            assert_eq!(cv(value), (category, "2.16.840.1.113883.2.4.3.111.5.10.1"));
        }

        let subject = &b[3].1;
        let ids: Vec<&str> = subject.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(
            ids,
            [
                SUBJECT_ROLE,
                PROVIDER_IDENTIFIER,
                PROVIDER_INSTITUTION,
                CONSULTING_FACILITY_TYPE
            ]
        );
        assert_eq!(
            cv(&subject[0].3),
            ("01.015", "2.16.840.1.113883.2.4.15.111")
        );
        assert_eq!(ii(&subject[1].3), ("2.16.528.1.1007.3.1", "000095254"));
        assert_eq!(ii(&subject[2].3), ("2.16.528.1.1007.3.3", "00000666"));
        assert_eq!(cv(&subject[3].3), ("V6", "2.16.840.1.113883.2.4.15.1060"));

        let environment = &b[4].1;
        assert_eq!(environment.len(), 1);
        assert_eq!(environment[0].0, PURPOSE_OF_USE);
        assert_eq!(
            cv(&environment[0].3),
            ("TREAT", "2.16.840.1.113883.1.11.20448")
        );
        for (_, attrs) in [&b[0], &b[3], &b[4]] {
            assert!(attrs.iter().all(|a| a.1 == "false"), "nothing else echoed");
        }
    }

    #[test]
    fn unknown_requester_facts_are_left_out() {
        let p = patient();
        let requester = Requester {
            ura: None,
            category: "RPZAC104",
            role: None,
            uzi: None,
        };
        let bytes = build(&query(&p, &["GGC002"], requester)).unwrap();
        let envelope = parse(&bytes);
        let request = one(
            one(
                one(&envelope, SOAP_NS, "Body"),
                XACML_SAML_NS,
                "XACMLAuthzDecisionQuery",
            ),
            XACML_NS,
            "Request",
        );
        let b = blocks(request);
        let subject: Vec<&str> = b[2].1.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(b[2].0, CATEGORY_SUBJECT);
        assert_eq!(subject, [CONSULTING_FACILITY_TYPE]);
    }

    #[test]
    fn values_are_escaped_by_the_writer() {
        // Markup in a value (say a configured category) stays a value.
        let p = patient();
        let requester = Requester {
            category: "a\"b<c>&d'e",
            ..full_requester()
        };
        let to = "https://mitz.test/x?a=1&b=<2>";
        let q = Query {
            to,
            ..query(&p, &["GGC002"], requester)
        };
        let bytes = build(&q).unwrap();
        let envelope = parse(&bytes);
        let header = one(&envelope, SOAP_NS, "Header");
        assert_eq!(text(one(header, WSA_NS, "To")), to);
        let request = one(
            one(
                one(&envelope, SOAP_NS, "Body"),
                XACML_SAML_NS,
                "XACMLAuthzDecisionQuery",
            ),
            XACML_NS,
            "Request",
        );
        let b = blocks(request);
        let last = b[2].1.last().unwrap();
        assert_eq!(cv(&last.3).0, "a\"b<c>&d'e");
    }

    #[test]
    fn unsendable_values_are_refused_by_name() {
        let p = patient();
        for (bad, field) in [
            ("", "the requester's category (PROVIDER_CATEGORY)"),
            ("V6\n", "the requester's category (PROVIDER_CATEGORY)"),
            ("V\u{0}6", "the requester's category (PROVIDER_CATEGORY)"),
            ("V\u{85}6", "the requester's category (PROVIDER_CATEGORY)"),
        ] {
            let requester = Requester {
                category: bad,
                ..full_requester()
            };
            assert_eq!(
                build(&query(&p, &["GGC002"], requester)).unwrap_err(),
                QueryError::Unsendable(field)
            );
        }
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        let q = Query {
            to: &long,
            ..query(&p, &["GGC002"], full_requester())
        };
        assert_eq!(
            build(&q).unwrap_err(),
            QueryError::Unsendable("the endpoint url")
        );
        assert_eq!(
            build(&query(&p, &["GGC\t002"], full_requester())).unwrap_err(),
            QueryError::Unsendable("a data category")
        );
        assert_eq!(
            build(&query(&p, &[], full_requester())).unwrap_err(),
            QueryError::NoCategory
        );
        let e = QueryError::Unsendable("the user's role").to_string();
        assert!(e.contains("the user's role"), "{e}");
    }

    #[test]
    fn roles_and_user_ids_are_classified() {
        assert_eq!(
            role_code("01.015"),
            Some(Coded {
                code: "01.015",
                system: ROLE_CODE_NL_SYSTEM
            })
        );
        assert_eq!(
            role_code("62247001"),
            Some(Coded {
                code: "62247001",
                system: SNOMED_CT_SYSTEM
            })
        );
        for other in [
            "huisarts", "1.015", "01-015", "01.0150", "012345", "12345", "", "0124.5",
        ] {
            assert_eq!(role_code(other), None, "{other}");
        }
        assert_eq!(uzi_number("000095254"), Some("000095254"));
        for other in ["95254", "0000952540", "larts", "00009525x", ""] {
            assert_eq!(uzi_number(other), None, "{other}");
        }
        assert_eq!(
            ura_of_oid("2.16.528.1.1007.3.3.00000666").as_deref(),
            Some("00000666")
        );
        assert_eq!(
            ura_of_oid("urn:oid:2.16.528.1.1007.3.3.15123").as_deref(),
            Some("00015123")
        );
        for other in [
            "2.16.528.1.1007.3.3",
            "2.16.528.1.1007.3.3.",
            "2.16.528.1.1007.3.3.123456789",
            "2.16.528.1.1007.3.31.1",
            "2.16.840.1.113883.2.4.6.1.12345678",
            "2.16.528.1.1007.3.3.1a",
        ] {
            assert_eq!(ura_of_oid(other), None, "{other}");
        }
    }
}
