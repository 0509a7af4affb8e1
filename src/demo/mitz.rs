//! The demo's stand-in Mitz: one party with one certificate from the demo
//! CA, in the two roles hospital B meets (spec mitz-and-aorta.md §3–§4,
//! §7–§8).
//!
//! - **The Mitz API**, served over mutual TLS on loopback under
//!   [`BASE_PATH`] (the shape of Mitz TST's base), answering only a caller
//!   whose certificate names a URA:
//!   - `POST …/abonnementen/fhir/Subscription`: a Subscription naming a
//!     patient is kept and answered `201` with its id in `Location`, the same
//!     patient again `202` with the id it has; the demo checks what was sent
//!     ([`check_subscription`]);
//!   - `POST …/geslotenautorisatievraag/xacml3`: the SOAP/XACML question is
//!     read with the hardened XML reader ([`crate::fhir::xml`]) and answered
//!     with the decision the demo set for the patient ([`StandIn::answer`]),
//!     one `Result` per data category asked, echoing the category and
//!     relating to the question's `MessageID`; a question it cannot read gets
//!     a SOAP `Sender` fault. Every question is kept ([`StandIn::questions`]).
//! - **The notification broker**: it `POST`s consent notifications to B
//!   ([`StandIn::notify`]), to B's FHIR base or to the channel endpoint a
//!   subscription names.
//!
//! The integration tests have their own stand-in with faults, delays and
//! fixed TST patients on demand (`tests/common/mitz.rs`); this one answers
//! only what the demo shows.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Context, DemoError, fail};
use crate::fhir::Limits;
use crate::fhir::xml::{self, Element, Node, escape_attr, escape_text};
use crate::http::{self, Request, Response};
use crate::mitz::closed::reply::Decision;
use crate::mitz::closed::request::{
    CATEGORY_ACTION, DATA_CATEGORY_SYSTEM, DATA_TYPE_CV, EVENT_CODE, HL7_NS, RESOURCE_ID, SOAP_NS,
    WSA_NS, XACML_NS, XACML_SAML_NS,
};
use crate::pki::throwaway::{Ca, LeafSpec, write_files};
use crate::pki::{self, MinVersion, TlsMaterial};
use crate::util::random;

/// The partner's name at B (its `NP_PARTNER_` keys).
pub(super) const PARTNER: &str = "mitz";
/// B's zorgaanbiedercategorie (`NP_ORG_CATEGORY`): V4, ziekenhuis.
pub(super) const ORG_CATEGORY: &str = "V4";
/// B's gateway and source system (`NP_HOME_COMMUNITY_ID`, `NP_SOURCE_ID`).
pub(super) const HOME_COMMUNITY_ID: &str = "2.16.840.1.113883.2.4.6.6.87654321";
pub(super) const SOURCE_ID: &str = "2.16.528.1.1007.3.3.87654321.1";
/// Where the API lives on the stand-in's origin.
pub(super) const BASE_PATH: &str = "/tst-us/mitz";
/// The Subscription endpoint, under the base.
pub(super) const SUBSCRIPTION_PATH: &str = "/abonnementen/fhir/Subscription";
/// The closed question, under the base.
pub(super) const QUESTION_PATH: &str = "/geslotenautorisatievraag/xacml3";
/// `wsa:Action` of Mitz's answer.
const ACTION_RESPONSE: &str = "http://schemas.otv.nl/toestemmingsregister/XACMLAuthzDecisionQuery/IGeslotenAutorisatievraagService/XACMLAuthzDecisionQueryResponse";
const FHIR_JSON: &str = "application/fhir+json";
const SOAP_XML: &str = "application/soap+xml; charset=utf-8";
/// Largest answer of B read.
const MAX_ANSWER: u64 = 1 << 20;

/// One Subscription as it arrived.
#[derive(Debug, Clone)]
pub(super) struct Subscribed {
    /// The URA in the caller's certificate.
    pub caller: String,
    /// The id given (`sub-<n>`).
    pub id: String,
    /// `201` (new) or `202` (the patient was subscribed already).
    pub status: u16,
    /// The Subscription as sent.
    pub body: Value,
}

impl Subscribed {
    /// `channel.endpoint`: where Mitz notifies.
    pub fn endpoint(&self) -> &str {
        self.body["channel"]["endpoint"]
            .as_str()
            .unwrap_or_default()
    }
}

/// One closed question as the stand-in read it, and its answer.
#[derive(Debug, Clone)]
pub(super) struct Question {
    /// The URA in the caller's certificate.
    pub caller: String,
    pub sent: Sent,
    /// What the stand-in answered.
    pub answered: Decision,
}

/// What a closed question holds.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// `wsa:MessageID`.
    pub message_id: String,
    /// `wsa:To`.
    pub to: String,
    /// Every attribute of the XACML `Request`: (`AttributeId`, value), the
    /// value an II's `extension` or a CV's `code`.
    pub attributes: Vec<(String, String)>,
}

impl Sent {
    /// The values of attribute `id`, in order.
    pub fn values(&self, id: &str) -> Vec<&str> {
        self.attributes
            .iter()
            .filter(|(k, _)| k == id)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Each of `want` (`AttributeId`, value) is the attribute's one value.
    pub fn check(&self, want: &[(&str, &str)]) -> Result<(), DemoError> {
        for (id, value) in want {
            let got = self.values(id);
            if got != [*value] {
                return fail(format!(
                    "the closed question's {id} is {got:?}, expected {value:?}"
                ));
            }
        }
        Ok(())
    }
}

/// What the demo expects in B's Subscription: its configuration.
pub(super) struct Expected<'a> {
    pub patient: &'a str,
    pub ura: &'a str,
    pub category: &'a str,
    pub endpoint: &'a str,
    pub home_community_id: &'a str,
    pub source_id: &'a str,
}

/// B's Subscription is the `mitz-Subscription` of spec §8 for `want`,
/// element for element.
pub(super) fn check_subscription(s: &Value, want: &Expected<'_>) -> Result<(), DemoError> {
    let criteria = format!(
        "Consent?_query=otv&patientid={}&providerid={}&providertype={}",
        want.patient, want.ura, want.category
    );
    let extension = |url: &str| -> Value {
        s["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == url)
            .map_or(Value::Null, |e| e["valueOid"].clone())
    };
    let checks = [
        ("resourceType", s["resourceType"].clone(), "Subscription"),
        (
            "meta.profile",
            s["meta"]["profile"][0].clone(),
            "http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription",
        ),
        ("status", s["status"].clone(), "requested"),
        ("reason", s["reason"].clone(), "OTV"),
        ("criteria", s["criteria"].clone(), &criteria),
        ("channel.type", s["channel"]["type"].clone(), "rest-hook"),
        (
            "channel.endpoint",
            s["channel"]["endpoint"].clone(),
            want.endpoint,
        ),
        (
            "channel.payload",
            s["channel"]["payload"].clone(),
            FHIR_JSON,
        ),
        (
            "the GatewaySystem extension",
            extension("http://fhir.nl/StructureDefinition/GatewaySystem"),
            &format!("urn:oid:{}", want.home_community_id),
        ),
        (
            "the SourceSystem extension",
            extension("http://fhir.nl/StructureDefinition/SourceSystem"),
            &format!("urn:oid:{}", want.source_id),
        ),
    ];
    for (name, got, expected) in checks {
        if got != expected {
            return fail(format!(
                "B's Subscription: {name} is {got}, expected {expected:?}"
            ));
        }
    }
    Ok(())
}

#[derive(Default)]
struct State {
    /// The closed question's answer per patient (anyone else: `NotApplicable`).
    answers: BTreeMap<String, Decision>,
    subscriptions: Vec<Subscribed>,
    /// Patient → subscription id.
    held: BTreeMap<String, String>,
    questions: Vec<Question>,
    /// Requests refused, with why (the demo fails on the first).
    refused: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    origin: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in Mitz, serving until dropped.
pub(super) struct StandIn {
    /// Its TLS client (the broker's connections).
    client: ureq::Agent,
    /// `sha256:<hex>` of its certificate: B's `CERT` selector for it.
    selector: String,
    shared: Arc<Shared>,
    server: Option<http::Server>,
}

impl StandIn {
    /// Issues its certificate from the demo CA and starts serving the API
    /// on a loopback port. Files go under `dir`.
    pub(super) fn new(ca: &Ca, dir: &Path) -> Result<StandIn, DemoError> {
        let leaf = ca
            .issue(&LeafSpec::localhost("mitz.demo.invalid"))
            .ctx("issue the Mitz certificate")?;
        let files =
            write_files(&dir.join("tls"), &leaf, &[ca]).ctx("write the Mitz certificate")?;
        let material = TlsMaterial::load(&files).ctx("load the Mitz certificate")?;
        let client = http::client::agent(
            pki::client_config(&material, MinVersion::Tls13).ctx("Mitz TLS client")?,
            http::client::ClientTimeouts::default(),
        );
        let selector = format!(
            "sha256:{}",
            pki::peer_identity(leaf.der.as_ref())
                .ctx("Mitz certificate")?
                .fingerprint()
        );
        let listener = TcpListener::bind("127.0.0.1:0").ctx("Mitz API listener")?;
        let port = listener.local_addr().ctx("Mitz API listener")?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            origin: format!("https://localhost:{port}"),
        });
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(
                pki::server_config(&material, MinVersion::Tls13).ctx("Mitz TLS server")?,
            )),
            Arc::new(Api(shared.clone())),
            http::Limits::default(),
            Arc::new(crate::ops::metrics::Metrics::new()),
        )
        .ctx("serve the Mitz API")?;
        Ok(StandIn {
            client,
            selector,
            shared,
            server: Some(server),
        })
    }

    /// The API base B's `NP_PARTNER_MITZ_URL` names.
    pub(super) fn base(&self) -> String {
        format!("{}{BASE_PATH}", self.shared.origin)
    }

    /// B's keys for Mitz: the partner (its certificate, with which it also
    /// posts notifications, and its API base) and B's identity at Mitz.
    pub(super) fn env(&self) -> Vec<(String, String)> {
        let k = |f: &str| format!("NP_PARTNER_{}_{f}", PARTNER.to_ascii_uppercase());
        vec![
            (k("KIND"), "mitz".into()),
            (k("CERT"), self.selector.clone()),
            (k("URL"), self.base()),
            ("NP_ORG_CATEGORY".into(), ORG_CATEGORY.into()),
            ("NP_HOME_COMMUNITY_ID".into(), HOME_COMMUNITY_ID.into()),
            ("NP_SOURCE_ID".into(), SOURCE_ID.into()),
        ]
    }

    /// From now on the closed question about `patient` is answered `decision`.
    pub(super) fn answer(&self, patient: &str, decision: Decision) {
        self.shared
            .lock()
            .answers
            .insert(patient.to_string(), decision);
    }

    /// Every Subscription received, in order.
    pub(super) fn subscriptions(&self) -> Vec<Subscribed> {
        self.shared.lock().subscriptions.clone()
    }

    /// Every closed question received, in order.
    pub(super) fn questions(&self) -> Vec<Question> {
        self.shared.lock().questions.clone()
    }

    /// Why the first refused request was refused, if one was.
    pub(super) fn refused(&self) -> Option<String> {
        self.shared.lock().refused.first().cloned()
    }

    /// As the broker: `POST`s a consent notification (`media_type`
    /// `application/fhir+json` or `+xml`) to `url`; B must answer 200 with a
    /// `transaction-response`.
    pub(super) fn notify(&self, url: &str, media_type: &str, body: &[u8]) -> Result<(), DemoError> {
        let request_id = random::uuid_v4().ctx("random")?;
        let mut resp = self
            .client
            .post(url)
            .header("Content-Type", media_type)
            .header("Accept", media_type)
            .header(
                "AORTA-ID",
                format!("initialRequestID={request_id}; requestID={request_id}"),
            )
            .send(body)
            .ctx(&format!("POST the consent notification to {url}"))?;
        let status = resp.status().as_u16();
        let answer = http::client::read_body_limited(&mut resp, MAX_ANSWER).unwrap_or_default();
        let answer = String::from_utf8_lossy(&answer);
        if status != 200 || !answer.contains("transaction-response") {
            return fail(format!(
                "B answered the consent notification to {url} with {status}: {answer}"
            ));
        }
        Ok(())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_millis(100));
        }
    }
}

/// The Mitz API.
struct Api(Arc<Shared>);

impl http::Handler for Api {
    fn handle(&self, req: &Request) -> Response {
        let Some(caller) = req
            .peer
            .certs
            .first()
            .and_then(|c| pki::peer_identity(c.as_ref()).ok())
            .and_then(|id| id.ura)
        else {
            return self.refuse(403, "the client certificate names no URA".into());
        };
        let path = req.path.strip_prefix(BASE_PATH).unwrap_or_default();
        match (req.method.as_str(), path) {
            ("POST", SUBSCRIPTION_PATH) => self.subscribe(req, caller),
            ("POST", QUESTION_PATH) => self.question(req, caller),
            _ => self.refuse(404, format!("no endpoint {} {}", req.method, req.path)),
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "mitz"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

impl Api {
    fn refuse(&self, status: u16, why: String) -> Response {
        let response = Response::new(status).body(
            FHIR_JSON,
            json!({"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": why}]})
            .to_string(),
        );
        self.0
            .lock()
            .refused
            .push(format!("the stand-in Mitz answered {status}: {why}"));
        response
    }

    /// `201` with a new id for a new patient, `202` with its id again.
    fn subscribe(&self, req: &Request, caller: String) -> Response {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let patient = body["criteria"]
            .as_str()
            .and_then(|c| c.strip_prefix("Consent?"))
            .and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("patientid="))
                    .map(str::to_string)
            });
        let Some(patient) = patient.filter(|_| body["resourceType"] == "Subscription") else {
            return self.refuse(400, "not a Subscription with a patientid".into());
        };
        let mut state = self.0.lock();
        let (status, id) = match state.held.get(&patient) {
            Some(id) => (202, id.clone()),
            None => {
                let id = format!("sub-{}", state.subscriptions.len() + 1);
                state.held.insert(patient, id.clone());
                (201, id)
            }
        };
        state.subscriptions.push(Subscribed {
            caller,
            id: id.clone(),
            status,
            body: body.clone(),
        });
        drop(state);
        let mut answered = body;
        answered["id"] = json!(id);
        let response = Response::new(status).body(FHIR_JSON, answered.to_string());
        if status == 201 {
            response.header(
                "Location",
                format!("{}{BASE_PATH}{SUBSCRIPTION_PATH}/{id}", self.0.origin),
            )
        } else {
            response
        }
    }

    /// The decision set for the patient, for every category asked.
    fn question(&self, req: &Request, caller: String) -> Response {
        let Some(sent) = read_question(&req.body) else {
            self.0
                .lock()
                .refused
                .push("the stand-in Mitz could not read a closed question".into());
            return Response::new(400).body(SOAP_XML, fault("soap:Sender"));
        };
        let mut state = self.0.lock();
        let decision = sent
            .values(RESOURCE_ID)
            .first()
            .and_then(|p| state.answers.get(*p).copied())
            .unwrap_or(Decision::NotApplicable);
        let answer = decided(&sent.message_id, &sent.values(EVENT_CODE), decision);
        state.questions.push(Question {
            caller,
            sent,
            answered: decision,
        });
        Response::new(200).body(SOAP_XML, answer)
    }
}

/// Reads a closed question: `wsa:MessageID`, `wsa:To` and every attribute
/// of the XACML `Request` in the `XACMLAuthzDecisionQuery`.
fn read_question(body: &[u8]) -> Option<Sent> {
    let limits = Limits {
        max_bytes: 256 * 1024,
        max_depth: 32,
    };
    let (envelope, _) = xml::parse(body, &limits).ok()?;
    if !envelope.is(SOAP_NS, "Envelope") {
        return None;
    }
    let header = child(&envelope, SOAP_NS, "Header")?;
    let message_id = text(child(header, WSA_NS, "MessageID")?);
    let to = text(child(header, WSA_NS, "To")?);
    let query = child(
        child(&envelope, SOAP_NS, "Body")?,
        XACML_SAML_NS,
        "XACMLAuthzDecisionQuery",
    )?;
    let request = child(query, XACML_NS, "Request")?;
    let mut attributes = Vec::new();
    for block in children(request, XACML_NS, "Attributes") {
        for attribute in children(block, XACML_NS, "Attribute") {
            let id = attribute.attr("AttributeId")?;
            for value in children(attribute, XACML_NS, "AttributeValue") {
                let hl7 = value.children.iter().find_map(|n| match n {
                    Node::Element(e) if &*e.uri == HL7_NS => Some(e),
                    _ => None,
                })?;
                let v = hl7.attr("extension").or_else(|| hl7.attr("code"))?;
                attributes.push((id.to_string(), v.to_string()));
            }
        }
    }
    Some(Sent {
        message_id,
        to,
        attributes,
    })
}

fn children<'e>(el: &'e Element, uri: &'e str, name: &'e str) -> impl Iterator<Item = &'e Element> {
    el.children.iter().filter_map(move |n| match n {
        Node::Element(e) if e.is(uri, name) => Some(e),
        _ => None,
    })
}

fn child<'e>(el: &'e Element, uri: &'e str, name: &'e str) -> Option<&'e Element> {
    children(el, uri, name).next()
}

fn text(el: &Element) -> String {
    el.children
        .iter()
        .filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The XACML text of a decision.
fn xacml(decision: Decision) -> &'static str {
    match decision {
        Decision::Permit => "Permit",
        Decision::Deny => "Deny",
        Decision::NotApplicable => "NotApplicable",
        Decision::Indeterminate => "Indeterminate",
    }
}

/// Mitz's answer: one `Result` with `decision` per category, echoing it,
/// related to `message_id`. Values from the question are escaped.
fn decided(message_id: &str, categories: &[&str], decision: Decision) -> String {
    let mut out = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="{WSA_NS}"><s:Header><a:Action s:mustUnderstand="1">{ACTION_RESPONSE}</a:Action><a:RelatesTo>"#
    );
    escape_text(&mut out, message_id);
    out.push_str(&format!(
        r#"</a:RelatesTo></s:Header><s:Body><Response xmlns="{XACML_NS}">"#
    ));
    for category in categories {
        out.push_str(&format!(
            r#"<Result><Decision>{}</Decision><Attributes Category="{CATEGORY_ACTION}"><Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true"><AttributeValue DataType="{DATA_TYPE_CV}"><hl7:CodedValue xmlns:hl7="{HL7_NS}" codeSystem="{DATA_CATEGORY_SYSTEM}" code=""#,
            xacml(decision)
        ));
        escape_attr(&mut out, category);
        out.push_str(r#""/></AttributeValue></Attribute></Attributes></Result>"#);
    }
    out.push_str("</Response></s:Body></s:Envelope>");
    out
}

/// A SOAP 1.2 fault with `code`.
fn fault(code: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="{SOAP_NS}"><s:Body><s:Fault><s:Code><s:Value>{code}</s:Value></s:Code><s:Reason><s:Text xml:lang="en">the question cannot be read</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Bsn;
    use crate::mitz::closed::reply::{self, Asked, Reply};
    use crate::mitz::closed::request::{self, Query, Requester};
    use crate::mitz::subscription::Subscriber;

    const BSN: &str = "999999151";
    const MID: &str = "0b6f1c1e-8d7a-4e55-9c1b-5d2a7e0f3a41";

    fn question(categories: &[&str]) -> Vec<u8> {
        let bsn = Bsn::parse(BSN).unwrap();
        request::build(&Query {
            message_id: MID,
            to: "https://localhost:1/tst-us/mitz/geslotenautorisatievraag/xacml3",
            now: 1_800_000_000,
            patient: &bsn,
            holder_ura: "87654321",
            holder_category: "V4",
            data_categories: categories,
            requester: Requester {
                ura: Some("33334444"),
                category: "RPZAC001",
                role: request::role_code("62247001"),
                uzi: None,
            },
        })
        .unwrap()
    }

    #[test]
    fn the_question_the_agent_writes_is_read_and_its_answer_is_what_the_agent_reads() {
        let read = read_question(&question(&["GGC002", "GGC013"])).unwrap();
        assert_eq!(read.message_id, format!("urn:uuid:{MID}"));
        assert_eq!(read.values(RESOURCE_ID), [BSN]);
        assert_eq!(read.values(EVENT_CODE), ["GGC002", "GGC013"]);
        assert_eq!(read.values(request::PROVIDER_INSTITUTION), ["33334444"]);
        assert_eq!(read.values(request::PURPOSE_OF_USE), ["TREAT"]);
        let bsn = Bsn::parse(BSN).unwrap();
        let asked = Asked {
            message_id: MID,
            patient: &bsn,
            categories: &["GGC002", "GGC013"],
        };
        for decision in [Decision::Permit, Decision::Deny, Decision::NotApplicable] {
            let answer = decided(&read.message_id, &read.values(EVENT_CODE), decision);
            let Reply::Decided(d) = reply::parse(answer.as_bytes(), &asked).unwrap() else {
                panic!("a fault");
            };
            assert_eq!(d.len(), 2);
            assert!(d.iter().all(|c| c.decision == decision), "{d:?}");
        }
    }

    #[test]
    fn an_answer_escapes_what_it_echoes() {
        let answer = decided("urn:uuid:<x>&", &["GG\"C<"], Decision::Deny);
        let (root, _) = xml::parse(answer.as_bytes(), &Limits::default()).unwrap();
        assert!(root.is(SOAP_NS, "Envelope"));
        assert!(answer.contains("urn:uuid:&lt;x&gt;&amp;"));
        assert!(answer.contains(r#"code="GG&quot;C&lt;""#));
    }

    #[test]
    fn what_is_not_a_question_is_not_read() {
        for body in [
            &b""[..],
            b"<x/>",
            br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>"#,
            br#"<!DOCTYPE x [<!ENTITY e "e">]><x>&e;</x>"#,
        ] {
            assert!(read_question(body).is_none());
        }
        assert!(read_question(&question(&["GGC002"])[..200]).is_none());
    }

    #[test]
    fn the_subscription_check_holds_the_agent_to_its_configuration() {
        let (gateway, source) = (
            crate::ids::Oid::parse("2.16.840.1.113883.2.4.6.6.87654321").unwrap(),
            crate::ids::Oid::parse("2.16.528.1.1007.3.3.87654321.1").unwrap(),
        );
        let subscriber = Subscriber {
            ura: "87654321",
            category: "V4",
            endpoint: "https://localhost:2/mitz/fhir",
            gateway: Some(&gateway),
            source: Some(&source),
        };
        let s = subscriber.subscription(&Bsn::parse(BSN).unwrap());
        let want = Expected {
            patient: BSN,
            ura: "87654321",
            category: "V4",
            endpoint: "https://localhost:2/mitz/fhir",
            home_community_id: "2.16.840.1.113883.2.4.6.6.87654321",
            source_id: "2.16.528.1.1007.3.3.87654321.1",
        };
        check_subscription(&s, &want).unwrap();
        for (pointer, bad) in [
            ("/status", json!("active")),
            ("/reason", json!("other")),
            ("/channel/endpoint", json!("https://elsewhere/mitz/fhir")),
            ("/channel/payload", json!("application/fhir+xml")),
            ("/extension/1/valueOid", json!("urn:oid:1.2.3")),
        ] {
            let mut changed = s.clone();
            *changed.pointer_mut(pointer).unwrap() = bad;
            assert!(check_subscription(&changed, &want).is_err(), "{pointer}");
        }
        let other = Expected {
            category: "Z3",
            ..want
        };
        assert!(check_subscription(&s, &other).is_err());
    }
}
