//! A stand-in Mitz for tests and the demo: the Mitz API on
//! `np_agent::http::Server` over mutual TLS (the party's certificate, the
//! client's required), under [`BASE_PATH`] like Mitz TST
//! (`https://tst-api.mijn-mitz.nl/tst-us/mitz/`), and a broker that pushes
//! consent notifications to the channel endpoint an agent subscribed with.
//!
//! - `POST {base}/abonnementen/fhir/Subscription` ([`SUBSCRIPTION_PATH`]):
//!   checks the `mitz-Subscription` (400 with an OperationOutcome when it
//!   is not one), answers `201` with `Location: {base}/abonnementen/fhir/Subscription/<id>`
//!   for a new (patient, source system), and `202` with the existing
//!   Subscription (its `id`, no `Location`) for the same pair again.
//! - `POST {base}/geslotenautorisatievraag/xacml3` ([`CLOSED_QUESTION_PATH`],
//!   mounted with [`StandInMitz::route`] like any added endpoint): the
//!   closed question, a SOAP 1.2 XACML question, answered as Mitz TST does
//!   for its fixed patients — `Permit` for [`PERMIT_BSN`], `Deny` for
//!   [`DENY_BSN`], `NotApplicable` for anyone else — one `Result` per data
//!   category asked, each echoing its category, relating to the question's
//!   `MessageID`. A question it cannot read ([`read_question`]) gets a SOAP
//!   `Sender` fault.
//! - Faults on demand, per endpoint, in order: [`StandInMitz::fault`] (a
//!   status with an OperationOutcome, `503` with `Retry-After`, the
//!   endpoint's own answer late, any bytes, a SOAP fault, another decision
//!   of the closed question).
//! - Every request is recorded: [`StandInMitz::requests`]; the closed
//!   questions: [`StandInMitz::questions`].
//! - Other endpoints are added with [`StandInMitz::route`]. Faults queued
//!   for a route's path are answered before its handler runs, and its
//!   requests are recorded the same way.
//! - [`StandInMitz::notify`] posts a consent notification (made by
//!   [`notification`] from the fixture of tests/mitz.rs) to the channel
//!   endpoint of a patient's subscription, with the stand-in's certificate,
//!   as the broker does.
//!
//! XML (the question, and what tests check of it) is read with quick-xml's
//! namespace-resolving reader into an [`XmlElement`] tree: by namespace and
//! attribute id, not by string search, and by another parser than the
//! agent's own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use np_agent::http::{self, Handler, Request, Response};
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion, TlsMaterial};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::{Value, json};

use super::agent::AgentSetup;

/// Where the API lives on the stand-in's origin (as on Mitz TST).
pub const BASE_PATH: &str = "/tst-us/mitz";
/// The Subscription endpoint, under the base.
pub const SUBSCRIPTION_PATH: &str = "/abonnementen/fhir/Subscription";
/// The closed question, under the base.
pub const CLOSED_QUESTION_PATH: &str = "/geslotenautorisatievraag/xacml3";
/// The Subscription profile Mitz accepts.
pub const PROFILE: &str = "http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription";
/// Our identity as [`StandInMitz::configure`] sets it.
pub const ORG_CATEGORY: &str = "Z3";
pub const HOME_COMMUNITY_ID: &str = "2.16.840.1.113883.2.4.6.6.90000017";
pub const SOURCE_ID: &str = "2.16.528.1.1007.3.3.90000017.1";
/// Mitz TST's fixed patients: always permit, always deny.
pub const PERMIT_BSN: &str = "900203638";
pub const DENY_BSN: &str = "900203651";

/// The namespaces and attribute ids of the closed question (spec
/// mitz-and-aorta.md §7), as the stand-in and the tests read it.
pub mod xacml {
    pub const SOAP_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
    pub const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
    pub const XACML_SAML_NS: &str =
        "urn:oasis:names:tc:xacml:3.0:profile:saml2.0:v2:schema:protocol:wd-14";
    pub const XACML_NS: &str = "urn:oasis:names:tc:xacml:3.0:core:schema:wd-17";
    pub const HL7_NS: &str = "urn:hl7-org:v3";
    pub const CATEGORY_RESOURCE: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:resource";
    pub const CATEGORY_ACTION: &str = "urn:oasis:names:tc:xacml:3.0:attribute-category:action";
    pub const CATEGORY_SUBJECT: &str =
        "urn:oasis:names:tc:xacml:1.0:subject-category:access-subject";
    pub const CATEGORY_ENVIRONMENT: &str =
        "urn:oasis:names:tc:xacml:3.0:attribute-category:environment";
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
    pub const ACTION_RESPONSE: &str = "http://schemas.otv.nl/toestemmingsregister/XACMLAuthzDecisionQuery/IGeslotenAutorisatievraagService/XACMLAuthzDecisionQueryResponse";
    /// The data category code system.
    pub const DATA_CATEGORY_SYSTEM: &str = "2.16.840.1.113883.2.4.3.111.5.10.1";
}

const FHIR_JSON: &str = "application/fhir+json";
const SOAP_XML: &str = "application/soap+xml; charset=utf-8";
const NOTIFICATION_FIXTURE: &[u8] = include_bytes!("../fixtures/mitz/notification.json");

/// A fault for the next request to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This status with an OperationOutcome (`issue.code`, `diagnostics`).
    Status {
        status: u16,
        code: &'static str,
        diagnostics: String,
    },
    /// `503` with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// The endpoint's own answer, after this long: longer than the agent's
    /// timeout is no answer in time.
    Delay(Duration),
    /// This status with these bytes as `application/fhir+json` (garbage).
    Raw { status: u16, body: Vec<u8> },
    /// `500` with a SOAP 1.2 `Receiver` fault.
    Soap,
    /// The closed question: this decision (`Deny`, `NotApplicable`,
    /// `Indeterminate`, …) for every category asked, whoever the patient.
    Decide(&'static str),
}

impl Fault {
    /// `status` with a plain OperationOutcome.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            code: if status >= 500 {
                "transient"
            } else {
                "invalid"
            },
            diagnostics: format!("stand-in fault {status}"),
        }
    }

    /// `200` with a body that is neither JSON nor XML.
    pub fn garbage() -> Fault {
        Fault::Raw {
            status: 200,
            body: b"<html><body>oops".to_vec(),
        }
    }
}

/// One request as it arrived, and what it was answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub method: String,
    /// The path under [`BASE_PATH`].
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What it was answered (0 while the answer is being made).
    pub status: u16,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The closed question the body carries, as the stand-in reads it.
    pub fn question(&self) -> Option<Question> {
        read_question(&self.body)
    }
}

/// What an added endpoint answers, given the request and the fault queued
/// for it that only the endpoint can answer ([`Fault::Decide`]).
pub type Route = Box<dyn Fn(&Request, Option<Fault>) -> Response + Send + Sync>;

/// One subscription the stand-in holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub patient: String,
    /// The `SourceSystem` extension's `valueOid`, if sent.
    pub source: Option<String>,
    /// `channel.endpoint`.
    pub endpoint: String,
}

#[derive(Default)]
struct State {
    faults: HashMap<String, VecDeque<Fault>>,
    seen: Vec<Seen>,
    /// (patient, source system) → subscription.
    held: BTreeMap<(String, Option<String>), Held>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    routes: RwLock<Vec<(String, String, Route)>>,
    origin: String,
    stop: AtomicBool,
}

/// The stand-in, serving until dropped.
pub struct StandInMitz {
    server: Option<http::Server>,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Presents the stand-in's certificate (it notifies with it).
    client: ureq::Agent,
    pub ura: String,
}

impl StandInMitz {
    /// Serves with `party`'s certificate on a free loopback port.
    pub fn start(party: &super::agent::Party) -> StandInMitz {
        StandInMitz::start_with(&party.material, &party.ura)
    }

    /// Serves with `material` (a certificate the agent may not trust) as
    /// the organisation `ura`.
    pub fn start_with(material: &TlsMaterial, ura: &str) -> StandInMitz {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            routes: RwLock::new(Vec::new()),
            origin: format!("https://localhost:{}", addr.port()),
            stop: AtomicBool::new(false),
        });
        let cfg = pki::server_config(material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(cfg)),
            Arc::new(Api(shared.clone())),
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let client_cfg = pki::client_config(material, MinVersion::Tls13).unwrap();
        let mitz = StandInMitz {
            server: Some(server),
            addr,
            shared,
            client: http::client::agent(client_cfg, http::client::ClientTimeouts::default()),
            ura: ura.to_string(),
        };
        mitz.route("POST", CLOSED_QUESTION_PATH, Box::new(closed_question));
        mitz
    }

    /// The API base an agent's `NP_PARTNER_<NAME>_URL` names.
    pub fn base(&self) -> String {
        format!("{}{BASE_PATH}", self.shared.origin)
    }

    /// The API base as reached through another port of this host (a
    /// proxy in front of the stand-in).
    pub fn base_via(&self, port: u16) -> String {
        format!("https://localhost:{port}{BASE_PATH}")
    }

    /// Makes `setup` know the stand-in as Mitz partner `name`: its
    /// certificate (it also posts notifications), its `URL`, and our Mitz
    /// identity ([`ORG_CATEGORY`], [`HOME_COMMUNITY_ID`], [`SOURCE_ID`]).
    pub fn configure(&self, setup: &mut AgentSetup, name: &str) {
        let upper = name.to_ascii_uppercase();
        let mut names: Vec<String> = setup
            .env
            .vars
            .get("NP_PARTNERS")
            .map(|s| {
                s.split(',')
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        names.push(name.to_string());
        setup
            .env
            .set("NP_PARTNERS", names.join(","))
            .set(&format!("NP_PARTNER_{upper}_KIND"), "mitz")
            .set(
                &format!("NP_PARTNER_{upper}_CERT"),
                format!("ura:{}", self.ura),
            )
            .set(&format!("NP_PARTNER_{upper}_URL"), self.base())
            .set("NP_ORG_CATEGORY", ORG_CATEGORY)
            .set("NP_HOME_COMMUNITY_ID", HOME_COMMUNITY_ID)
            .set("NP_SOURCE_ID", SOURCE_ID);
    }

    /// Answers the next requests to `path` (under the base) with `faults`,
    /// in order, before the endpoint itself answers again.
    pub fn fault(&self, path: &str, faults: &[Fault]) {
        self.shared
            .state
            .lock()
            .unwrap()
            .faults
            .entry(path.to_string())
            .or_default()
            .extend(faults.iter().cloned());
    }

    /// Adds an endpoint: `method` `path` (under the base) answered by `route`.
    pub fn route(&self, method: &str, path: &str, route: Route) {
        self.shared
            .routes
            .write()
            .unwrap()
            .push((method.to_string(), path.to_string(), route));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state.lock().unwrap().seen.clone()
    }

    /// The requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path == path)
            .collect()
    }

    /// The closed questions asked so far, in order.
    pub fn questions(&self) -> Vec<Seen> {
        self.requests_to(CLOSED_QUESTION_PATH)
    }

    /// The subscriptions held, by patient.
    pub fn held(&self) -> Vec<Held> {
        self.shared
            .state
            .lock()
            .unwrap()
            .held
            .values()
            .cloned()
            .collect()
    }

    /// Holds a subscription of `patient` (with our [`SOURCE_ID`]) made
    /// before, so the next one is answered `202`; returns its id.
    pub fn preload(&self, patient: &str, endpoint: &str) -> String {
        let mut s = self.shared.state.lock().unwrap();
        s.next_id += 1;
        let id = format!("earlier-{}", s.next_id);
        let source = Some(format!("urn:oid:{SOURCE_ID}"));
        s.held.insert(
            (patient.to_string(), source.clone()),
            Held {
                id: id.clone(),
                patient: patient.to_string(),
                source,
                endpoint: endpoint.to_string(),
            },
        );
        id
    }

    /// Posts `bundle` (a consent notification) to the channel endpoint of
    /// `patient`'s subscription, as the broker: returns the status.
    pub fn notify(&self, patient: &str, bundle: &[u8]) -> u16 {
        let endpoint = self
            .held()
            .into_iter()
            .find(|h| h.patient == patient)
            .unwrap_or_else(|| panic!("no subscription of the patient to notify"))
            .endpoint;
        self.notify_at(&endpoint, bundle)
    }

    /// Posts `bundle` to `endpoint` with the stand-in's certificate.
    pub fn notify_at(&self, endpoint: &str, bundle: &[u8]) -> u16 {
        let resp = self
            .client
            .post(endpoint)
            .header("Content-Type", FHIR_JSON)
            .header("Accept", FHIR_JSON)
            .send(bundle)
            .unwrap();
        resp.status().as_u16()
    }
}

impl Drop for StandInMitz {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

/// A consent notification (Consent-Mitz-Notify 3.8.0, JSON) from the
/// fixture of tests/mitz.rs: for `patient` held by `holder_ura`, data
/// category `GGC002`, the provider categories in `permitted` with consent
/// (an active Consent with `provision.type` permit) and the fixture's other
/// ones without (an inactive Consent), both dated `date_time`.
pub fn notification(
    patient: &str,
    holder_ura: &str,
    permitted: &[&str],
    date_time: &str,
) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(NOTIFICATION_FIXTURE).unwrap();
    let entries = v["entry"].as_array_mut().unwrap();
    let code = |ext: &Value| {
        ext["valueCodeableConcept"]["coding"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let all: Vec<Value> = entries[..2]
        .iter()
        .flat_map(|e| e["resource"]["extension"].as_array().unwrap().clone())
        .collect();
    let (with, without): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|ext| permitted.contains(&code(ext).as_str()));
    assert_eq!(
        with.len(),
        permitted.len(),
        "unknown provider category in {permitted:?}"
    );
    entries[0]["resource"]["extension"] = Value::Array(with.clone());
    entries[1]["resource"]["extension"] = Value::Array(without.clone());
    for e in entries.iter_mut() {
        let r = &mut e["resource"];
        match r["resourceType"].as_str().unwrap() {
            "Consent" => r["dateTime"] = json!(date_time),
            "Patient" => r["identifier"][0]["value"] = json!(patient),
            "Organization" => r["identifier"][0]["value"] = json!(holder_ura),
            _ => {}
        }
    }
    // A Consent without categories says nothing: leave it out.
    if without.is_empty() {
        entries.remove(1);
    }
    if with.is_empty() {
        entries.remove(0);
    }
    v["id"] = json!(np_agent::util::random::uuid_v4().unwrap());
    serde_json::to_vec_pretty(&v).unwrap()
}

struct Api(Arc<Shared>);

impl Api {
    fn answer(&self, req: &Request, path: &str) -> Response {
        let fault = self
            .0
            .state
            .lock()
            .unwrap()
            .faults
            .get_mut(path)
            .and_then(VecDeque::pop_front);
        // The faults the stand-in answers itself; the rest go to the endpoint.
        let left = match fault {
            Some(Fault::Status {
                status,
                code,
                diagnostics,
            }) => return outcome(status, code, &diagnostics),
            Some(Fault::RetryAfter(secs)) => {
                return outcome(503, "transient", "busy").header("Retry-After", secs.to_string());
            }
            Some(Fault::Raw { status, body }) => {
                return Response::new(status).body(FHIR_JSON, body);
            }
            Some(Fault::Soap) => return soap(500, soap_fault("s:Receiver", "internal error")),
            Some(Fault::Delay(d)) => {
                let until = Instant::now() + d;
                while Instant::now() < until && !self.0.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                None
            }
            other => other,
        };
        if req.method == "POST" && path == SUBSCRIPTION_PATH {
            return self.subscribe(req);
        }
        let routes = self.0.routes.read().unwrap();
        match routes
            .iter()
            .find(|(m, p, _)| *m == req.method && p == path)
        {
            Some((_, _, route)) => route(req, left),
            None => outcome(404, "not-found", "no such endpoint"),
        }
    }

    /// The Subscription endpoint: 201 for a new (patient, source system),
    /// 202 with the existing one for the same pair again.
    fn subscribe(&self, req: &Request) -> Response {
        let s: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => return outcome(400, "invalid", "not JSON"),
        };
        let criteria = s["criteria"].as_str().unwrap_or_default();
        let params: BTreeMap<&str, &str> = criteria
            .strip_prefix("Consent?")
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
            .collect();
        let checks = [
            (s["resourceType"] == "Subscription", "not a Subscription"),
            (
                s["meta"]["profile"][0] == PROFILE,
                "not a mitz-Subscription",
            ),
            (s["status"] == "requested", "status is not requested"),
            (s["reason"] == "OTV", "reason is not OTV"),
            (
                params.get("_query") == Some(&"otv"),
                "criteria: _query is not otv",
            ),
            (
                params.get("patientid").is_some_and(|p| p.len() == 9),
                "criteria: no patientid",
            ),
            (params.contains_key("providerid"), "criteria: no providerid"),
            (
                params.contains_key("providertype"),
                "criteria: no providertype",
            ),
            (
                s["channel"]["type"] == "rest-hook",
                "channel is not rest-hook",
            ),
            (
                s["channel"]["endpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("https://")),
                "channel endpoint is not https",
            ),
        ];
        if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
            return outcome(400, "invalid", why);
        }
        let patient = params["patientid"].to_string();
        let source = s["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == "http://fhir.nl/StructureDefinition/SourceSystem")
            .and_then(|e| e["valueOid"].as_str())
            .map(String::from);
        let endpoint = s["channel"]["endpoint"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut state = self.0.state.lock().unwrap();
        let key = (patient.clone(), source.clone());
        if let Some(held) = state.held.get(&key) {
            let mut existing = s.clone();
            existing["id"] = json!(held.id);
            existing["status"] = json!("active");
            return Response::new(202).body(FHIR_JSON, existing.to_string());
        }
        state.next_id += 1;
        let id = format!("sub-{}", state.next_id);
        state.held.insert(
            key,
            Held {
                id: id.clone(),
                patient,
                source,
                endpoint,
            },
        );
        let mut created = s.clone();
        created["id"] = json!(id);
        Response::new(201)
            .header(
                "Location",
                format!("{}{BASE_PATH}{SUBSCRIPTION_PATH}/{id}", self.0.origin),
            )
            .body(FHIR_JSON, created.to_string())
    }
}

fn outcome(status: u16, code: &str, diagnostics: &str) -> Response {
    Response::new(status).body(
        FHIR_JSON,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
        })
        .to_string(),
    )
}

impl Handler for Api {
    fn handle(&self, req: &Request) -> Response {
        let path = req
            .path
            .strip_prefix(BASE_PATH)
            .unwrap_or(&req.path)
            .to_string();
        let headers = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        // Recorded as it arrives: a late answer is already seen.
        let index = {
            let mut state = self.0.state.lock().unwrap();
            state.seen.push(Seen {
                at: Instant::now(),
                method: req.method.clone(),
                path: path.clone(),
                headers,
                body: req.body.clone(),
                status: 0,
            });
            state.seen.len() - 1
        };
        let resp = self.answer(req, &path);
        self.0.state.lock().unwrap().seen[index].status = resp.status;
        resp
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "mitz"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

// ---------------------------------------------------------------------------
// The closed question
// ---------------------------------------------------------------------------

/// The parts of a closed question the stand-in answers by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// `wsa:MessageID`.
    pub message_id: String,
    /// `wsa:To`.
    pub to: String,
    /// The BSN (`resource-id`).
    pub patient: String,
    /// The data categories (the `event-code` of each action block).
    pub categories: Vec<String>,
}

/// The closed-question endpoint: Mitz TST's decision for the patient, or
/// the one a [`Fault::Decide`] asks for.
fn closed_question(req: &Request, fault: Option<Fault>) -> Response {
    let Some(q) = read_question(&req.body) else {
        return soap(500, soap_fault("s:Sender", "the question cannot be read"));
    };
    let decision = match fault {
        Some(Fault::Decide(d)) => d,
        _ => match q.patient.as_str() {
            PERMIT_BSN => "Permit",
            DENY_BSN => "Deny",
            _ => "NotApplicable",
        },
    };
    soap(200, decision_answer(&q, decision))
}

fn soap(status: u16, body: String) -> Response {
    Response::new(status).body(SOAP_XML, body)
}

/// The answer: one `Result` per category with `decision`, echoing the
/// category, relating to the question.
fn decision_answer(q: &Question, decision: &str) -> String {
    use quick_xml::escape::escape;
    use xacml::*;
    let results: String = q
        .categories
        .iter()
        .map(|c| {
            format!(
                r#"<Result><Decision>{decision}</Decision><Attributes Category="{CATEGORY_ACTION}" xml:id="action0"><Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#CV"><ns9:CodedValue code="{}" codeSystem="{DATA_CATEGORY_SYSTEM}" xmlns:ns9="{HL7_NS}"/></AttributeValue></Attribute></Attributes></Result>"#,
                escape(c.as_str())
            )
        })
        .collect();
    format!(
        r#"<s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="{WSA_NS}"><s:Header><a:Action s:mustUnderstand="1">{ACTION_RESPONSE}</a:Action><a:RelatesTo>{}</a:RelatesTo></s:Header><s:Body><Response xmlns="{XACML_NS}">{results}</Response></s:Body></s:Envelope>"#,
        escape(q.message_id.as_str())
    )
}

fn soap_fault(code: &str, reason: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="{}"><s:Body><s:Fault><s:Code><s:Value>{code}</s:Value></s:Code><s:Reason><s:Text xml:lang="en">{reason}</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#,
        xacml::SOAP_NS
    )
}

/// Reads a closed question: `MessageID`, `To`, the BSN (`resource-id`) and
/// the data categories (`event-code`s of the action blocks).
pub fn read_question(body: &[u8]) -> Option<Question> {
    use xacml::*;
    let envelope = parse_xml(body)?;
    if !envelope.is(SOAP_NS, "Envelope") {
        return None;
    }
    let header = envelope.child(SOAP_NS, "Header")?;
    let request = envelope
        .child(SOAP_NS, "Body")?
        .child(XACML_SAML_NS, "XACMLAuthzDecisionQuery")?
        .child(XACML_NS, "Request")?;
    let mut patient = None;
    let mut categories = Vec::new();
    for attributes in request.children(XACML_NS, "Attributes") {
        let category = attributes.attr("Category")?;
        for attribute in attributes.children(XACML_NS, "Attribute") {
            let id = attribute.attr("AttributeId")?;
            let hl7 = attribute
                .child(XACML_NS, "AttributeValue")?
                .children
                .iter()
                .find(|e| e.ns == HL7_NS)?;
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
        message_id: header.child(WSA_NS, "MessageID")?.text.clone(),
        to: header.child(WSA_NS, "To")?.text.clone(),
        patient: patient?,
        categories,
    })
}

// ---------------------------------------------------------------------------
// XML as a namespace-aware parser reads it
// ---------------------------------------------------------------------------

/// An element as quick-xml's namespace-resolving reader reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlElement {
    /// The namespace URI (empty: none).
    pub ns: String,
    /// The local name.
    pub name: String,
    /// (namespace URI or empty, local name, value); no `xmlns` declarations.
    pub attrs: Vec<(String, String, String)>,
    pub children: Vec<XmlElement>,
    /// The text directly inside, entities resolved, trimmed.
    pub text: String,
}

impl XmlElement {
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The attribute `name` in no namespace.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attr_ns("", name)
    }

    pub fn attr_ns(&self, ns: &str, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, l, _)| n == ns && l == name)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn children<'e>(
        &'e self,
        ns: &'e str,
        name: &'e str,
    ) -> impl Iterator<Item = &'e XmlElement> + 'e {
        self.children.iter().filter(move |e| e.is(ns, name))
    }

    pub fn child(&self, ns: &str, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|e| e.is(ns, name))
    }
}

/// `body` as an element tree; `None` when it is not well-formed XML, uses
/// a prefix it does not declare, or has a DOCTYPE.
pub fn parse_xml(body: &[u8]) -> Option<XmlElement> {
    let mut reader = NsReader::from_reader(body);
    let mut stack: Vec<XmlElement> = Vec::new();
    let mut root = None;
    loop {
        let (resolved, event) = reader.read_resolved_event().ok()?;
        let ns = namespace_uri(&resolved)?;
        let done = match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let mut el = XmlElement {
                    ns,
                    name: String::from_utf8(e.local_name().as_ref().to_vec()).ok()?,
                    ..XmlElement::default()
                };
                for a in e.attributes() {
                    let a = a.ok()?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (r, local) = reader.resolver().resolve_attribute(a.key);
                    el.attrs.push((
                        namespace_uri(&r)?,
                        String::from_utf8(local.as_ref().to_vec()).ok()?,
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .ok()?
                            .into_owned(),
                    ));
                }
                if matches!(event, Event::Start(_)) {
                    stack.push(el);
                    None
                } else {
                    Some(el)
                }
            }
            Event::End(_) => Some(stack.pop()?),
            Event::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&t.decode().ok()?);
                }
                None
            }
            Event::CData(t) => {
                stack.last_mut()?.text.push_str(&t.decode().ok()?);
                None
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().ok()? {
                    Some(c) => c.to_string(),
                    None => {
                        quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)?.to_string()
                    }
                };
                stack.last_mut()?.text.push_str(&c);
                None
            }
            Event::DocType(_) => return None,
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => None,
        };
        if let Some(mut el) = done {
            el.text = el.text.trim().to_string();
            match stack.last_mut() {
                Some(parent) => parent.children.push(el),
                None if root.is_none() => root = Some(el),
                None => return None,
            }
        }
    }
    if stack.is_empty() { root } else { None }
}

fn namespace_uri(r: &ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Unbound => Some(String::new()),
        ResolveResult::Bound(ns) => String::from_utf8(ns.as_ref().to_vec()).ok(),
        ResolveResult::Unknown(_) => None,
    }
}
