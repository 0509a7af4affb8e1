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
//! - Faults on demand, per endpoint, in order: [`StandInMitz::fault`] (a
//!   status with an OperationOutcome, `503` with `Retry-After`, a hang,
//!   any bytes).
//! - Every request is recorded: [`StandInMitz::requests`].
//! - Other endpoints are added with [`StandInMitz::route`]: the closed
//!   question, say, as `route("POST", "/geslotenautorisatievraag/xacml3", …)`.
//!   Faults queued for that path are answered before its handler runs, and
//!   its requests are recorded the same way.
//! - [`StandInMitz::notify`] posts a consent notification (made by
//!   [`notification`] from the fixture of tests/mitz.rs) to the channel
//!   endpoint of a patient's subscription, with the stand-in's certificate,
//!   as the broker does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use np_agent::http::{self, Handler, Request, Response};
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion};
use serde_json::{Value, json};

use super::agent::{AgentSetup, Party};

/// Where the API lives on the stand-in's origin (as on Mitz TST).
pub const BASE_PATH: &str = "/tst-us/mitz";
/// The Subscription endpoint, under the base.
pub const SUBSCRIPTION_PATH: &str = "/abonnementen/fhir/Subscription";
/// The Subscription profile Mitz accepts.
pub const PROFILE: &str = "http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription";
/// Our identity as [`StandInMitz::configure`] sets it.
pub const ORG_CATEGORY: &str = "Z3";
pub const HOME_COMMUNITY_ID: &str = "2.16.840.1.113883.2.4.6.6.90000017";
pub const SOURCE_ID: &str = "2.16.528.1.1007.3.3.90000017.1";
/// Mitz TST's fixed patients: always permit, always deny.
pub const PERMIT_BSN: &str = "900203638";
pub const DENY_BSN: &str = "900203651";

const FHIR_JSON: &str = "application/fhir+json";
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
    /// No answer for this long (then `503`); the agent's timeout decides.
    Hang(Duration),
    /// This status with these bytes as `application/fhir+json` (garbage).
    Raw { status: u16, body: Vec<u8> },
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
}

/// What an added endpoint answers, given the request (its path relative to
/// [`BASE_PATH`] in `Seen::path` terms is the route's path).
pub type Route = Box<dyn Fn(&Request) -> Response + Send + Sync>;

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
    /// The party whose certificate the stand-in serves and notifies with.
    client: ureq::Agent,
    pub ura: String,
}

impl StandInMitz {
    /// Serves with `party`'s certificate on a free loopback port.
    pub fn start(party: &Party) -> StandInMitz {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            routes: RwLock::new(Vec::new()),
            origin: format!("https://localhost:{}", addr.port()),
            stop: AtomicBool::new(false),
        });
        let cfg = pki::server_config(&party.material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(cfg)),
            Arc::new(Api(shared.clone())),
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        StandInMitz {
            server: Some(server),
            addr,
            shared,
            client: party.client(),
            ura: party.ura.clone(),
        }
    }

    /// The API base an agent's `NP_PARTNER_<NAME>_URL` names.
    pub fn base(&self) -> String {
        format!("{}{BASE_PATH}", self.shared.origin)
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
        if let Some(fault) = fault {
            return self.fault(fault);
        }
        if req.method == "POST" && path == SUBSCRIPTION_PATH {
            return self.subscribe(req);
        }
        let routes = self.0.routes.read().unwrap();
        match routes
            .iter()
            .find(|(m, p, _)| *m == req.method && p == path)
        {
            Some((_, _, route)) => route(req),
            None => outcome(404, "not-found", "no such endpoint"),
        }
    }

    fn fault(&self, fault: Fault) -> Response {
        match fault {
            Fault::Status {
                status,
                code,
                diagnostics,
            } => outcome(status, code, &diagnostics),
            Fault::RetryAfter(secs) => {
                outcome(503, "transient", "busy").header("Retry-After", secs.to_string())
            }
            Fault::Hang(d) => {
                let until = Instant::now() + d;
                while Instant::now() < until && !self.0.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                outcome(503, "transient", "the stand-in hung")
            }
            Fault::Raw { status, body } => Response::new(status).body(FHIR_JSON, body),
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
        let resp = self.answer(req, &path);
        let headers = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        self.0.state.lock().unwrap().seen.push(Seen {
            at: Instant::now(),
            method: req.method.clone(),
            path,
            headers,
            body: req.body.clone(),
            status: resp.status,
        });
        resp
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "mitz"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}
