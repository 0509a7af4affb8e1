//! A stand-in for Mitz's closed question on `np_agent::http::Server` over
//! mTLS: `POST <base>/geslotenautorisatievraag/xacml3` with a SOAP 1.2
//! XACML question, answered as Mitz TST does for its fixed patients —
//! `Permit` for BSN `900203638`, `Deny` for `900203651`, `NotApplicable`
//! for anyone else — one `Result` per data category asked, each echoing its
//! category and relating to the question's `MessageID`.
//!
//! Other answers on demand ([`Behaviour`]), from a script and then a sticky
//! default: `NotApplicable`, `Indeterminate`, a SOAP fault (500), a bare
//! status, garbage, or the normal answer after a delay. Every request is
//! recorded with its body and headers.
//!
//! The question is read with the agent's hardened XML reader, by namespace
//! and attribute id, not by string search; a question it cannot read is
//! answered with a SOAP `Sender` fault and still recorded.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use np_agent::fhir::Limits;
use np_agent::fhir::xml::{self, Element, Node};
use np_agent::http::{self, Handler, Request, Response};
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion, TlsMaterial};

use super::agent::Party;

/// Mitz TST's patient that always has consent.
pub const PERMIT_BSN: &str = "900203638";
/// Mitz TST's patient that never has consent.
pub const DENY_BSN: &str = "900203651";
/// The path of the Mitz API base on the stand-in.
pub const BASE_PATH: &str = "/tst-us/mitz/";

const SOAP_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
const XACML_SAML_NS: &str = "urn:oasis:names:tc:xacml:3.0:profile:saml2.0:v2:schema:protocol:wd-14";
const XACML_NS: &str = "urn:oasis:names:tc:xacml:3.0:core:schema:wd-17";
const HL7_NS: &str = "urn:hl7-org:v3";
const RESOURCE_ID: &str = "urn:oasis:names:tc:xacml:2.0:resource:resource-id";
const EVENT_CODE: &str = "urn:ihe:iti:appc:2016:document-entry:event-code";
const CATEGORY_ACTION: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:action";
const CATEGORY_RESOURCE: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:resource";
const ACTION_RESPONSE: &str = "http://schemas.otv.nl/toestemmingsregister/XACMLAuthzDecisionQuery/IGeslotenAutorisatievraagService/XACMLAuthzDecisionQueryResponse";

/// How the stand-in answers one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Permit / Deny / NotApplicable by BSN, as Mitz TST.
    Normal,
    /// This decision for every category, whoever the patient.
    Decide(&'static str),
    /// `500` with a SOAP 1.2 `Receiver` fault.
    Fault,
    /// This status with a short text body.
    Status(u16),
    /// `200` with a body that is not XML.
    Garbage,
    /// The normal answer after this delay.
    Delay(Duration),
}

/// One question as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub content_type: Option<String>,
    pub request_id: Option<String>,
    pub body: Vec<u8>,
    /// What the stand-in read from it (None: unreadable).
    pub question: Option<Question>,
}

/// The parts of a question the stand-in answers by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub message_id: String,
    pub to: String,
    pub patient: String,
    pub categories: Vec<String>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Behaviour>,
    default: Option<Behaviour>,
    seen: Vec<Seen>,
}

/// The stand-in; stops when dropped.
pub struct StandInMitz {
    server: Option<http::Server>,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl StandInMitz {
    /// Serves with `party`'s certificate on a free loopback port, requiring
    /// client certificates of the same test CA.
    pub fn start(party: &Party) -> StandInMitz {
        StandInMitz::start_with(&party.material)
    }

    /// Serves with `material` (a certificate the agent may not trust).
    pub fn start_with(material: &TlsMaterial) -> StandInMitz {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let cfg = pki::server_config(material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(cfg)),
            Arc::new(Stand {
                state: state.clone(),
            }),
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        StandInMitz {
            server: Some(server),
            addr,
            state,
        }
    }

    /// The Mitz API base (what `NP_PARTNER_<NAME>_URL` names).
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}{BASE_PATH}", self.addr.port())
    }

    /// Behaviours for the next questions, in order.
    pub fn push(&self, behaviours: &[Behaviour]) {
        self.state.lock().unwrap().script.extend(behaviours);
    }

    /// The behaviour once the script is used up (initially [`Behaviour::Normal`]).
    pub fn set_default(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().default = Some(behaviour);
    }

    /// Every question received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn questions(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
}

impl Drop for StandInMitz {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

struct Stand {
    state: Arc<Mutex<State>>,
}

impl Handler for Stand {
    fn handle(&self, req: &Request) -> Response {
        let path = format!("{BASE_PATH}geslotenautorisatievraag/xacml3");
        if req.path != path {
            return Response::new(404);
        }
        if req.method != "POST" {
            return Response::new(405);
        }
        let question = read_question(&req.body);
        let behaviour = {
            let mut s = self.state.lock().unwrap();
            s.seen.push(Seen {
                at: Instant::now(),
                content_type: req.header("content-type").map(str::to_string),
                request_id: req.header("x-request-id").map(str::to_string),
                body: req.body.clone(),
                question: question.clone(),
            });
            s.script
                .pop_front()
                .or(s.default)
                .unwrap_or(Behaviour::Normal)
        };
        let Some(q) = question else {
            return soap(500, fault("s:Sender", "the question cannot be read"));
        };
        match behaviour {
            Behaviour::Normal => soap(200, answer(&q, normal(&q.patient))),
            Behaviour::Decide(d) => soap(200, answer(&q, d)),
            Behaviour::Fault => soap(500, fault("s:Receiver", "internal error")),
            Behaviour::Status(status) => Response::text(status, "stand-in status"),
            Behaviour::Garbage => Response::new(200).body("text/html", "<html><body>oops"),
            Behaviour::Delay(d) => {
                std::thread::sleep(d);
                soap(200, answer(&q, normal(&q.patient)))
            }
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "mitz-closed"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

fn normal(patient: &str) -> &'static str {
    match patient {
        PERMIT_BSN => "Permit",
        DENY_BSN => "Deny",
        _ => "NotApplicable",
    }
}

fn soap(status: u16, body: String) -> Response {
    Response::new(status).body("application/soap+xml; charset=utf-8", body)
}

/// The answer: one `Result` per category with `decision`, echoing the
/// category, relating to the question.
fn answer(q: &Question, decision: &str) -> String {
    let results: String = q
        .categories
        .iter()
        .map(|c| {
            format!(
                r#"<Result><Decision>{decision}</Decision><Attributes Category="{CATEGORY_ACTION}" xml:id="action0"><Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#CV"><ns9:CodedValue code="{c}" codeSystem="2.16.840.1.113883.2.4.3.111.5.10.1" xmlns:ns9="{HL7_NS}"/></AttributeValue></Attribute></Attributes></Result>"#
            )
        })
        .collect();
    format!(
        r#"<s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="{WSA_NS}"><s:Header><a:Action s:mustUnderstand="1">{ACTION_RESPONSE}</a:Action><a:RelatesTo>{}</a:RelatesTo></s:Header><s:Body><Response xmlns="{XACML_NS}">{results}</Response></s:Body></s:Envelope>"#,
        q.message_id
    )
}

fn fault(code: &str, reason: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="{SOAP_NS}"><s:Body><s:Fault><s:Code><s:Value>{code}</s:Value></s:Code><s:Reason><s:Text xml:lang="en">{reason}</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#
    )
}

/// Reads a question: `MessageID`, `To`, the BSN (`resource-id`) and the
/// data categories (`event-code`s of the action blocks).
pub fn read_question(body: &[u8]) -> Option<Question> {
    let (envelope, _) = xml::parse(body, &Limits::default()).ok()?;
    if !envelope.is(SOAP_NS, "Envelope") {
        return None;
    }
    let header = child(&envelope, SOAP_NS, "Header")?;
    let message_id = text(child(header, WSA_NS, "MessageID")?);
    let to = text(child(header, WSA_NS, "To")?);
    let request = child(
        child(
            child(&envelope, SOAP_NS, "Body")?,
            XACML_SAML_NS,
            "XACMLAuthzDecisionQuery",
        )?,
        XACML_NS,
        "Request",
    )?;
    let mut patient = None;
    let mut categories = Vec::new();
    for attributes in children(request, XACML_NS, "Attributes") {
        let category = attributes.attr("Category")?;
        for attribute in children(attributes, XACML_NS, "Attribute") {
            let id = attribute.attr("AttributeId")?;
            let value = child(attribute, XACML_NS, "AttributeValue")?;
            let hl7 = value.children.iter().find_map(|n| match n {
                Node::Element(e) if &*e.uri == HL7_NS => Some(e),
                _ => None,
            })?;
            match (category, id) {
                (CATEGORY_RESOURCE, RESOURCE_ID) => {
                    patient = hl7.attr("extension").map(str::to_string)
                }
                (CATEGORY_ACTION, EVENT_CODE) => categories.push(hl7.attr("code")?.to_string()),
                _ => {}
            }
        }
    }
    Some(Question {
        message_id,
        to,
        patient: patient?,
        categories,
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
