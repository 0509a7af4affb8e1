//! The receiver in process against a real sender on loopback: an
//! `np_agent::http::Server` over mutual TLS (throwaway PKI) that serves
//! discovery, a token endpoint and a small FHIR data set with paging. The
//! receiver's own token client and mTLS HTTP client do the talking; the
//! inbox, spool, audit trail and pull reports are real files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::TempDir;
use common::agent::{Party, World};
use np_agent::audit::AuditLog;
use np_agent::config::{self, Config, Vars};
use np_agent::http::client::ClientTimeouts;
use np_agent::http::partners::Partners;
use np_agent::http::{self, Handler, Peer, Request, Response};
use np_agent::ids::OrgId;
use np_agent::jose::{Alg, SigningKey};
use np_agent::oauth::client::TokenClient;
use np_agent::oauth::grants::Grant;
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion};
use np_agent::receiver::{self, Receiver};
use np_agent::spool::{self, Item, Outcome, Spool, State};
use np_agent::util::time::now_unix;
use serde_json::{Value, json};

// ---------------------------------------------------------------- the sender

/// Knobs and records of the test sender.
#[derive(Default)]
struct SenderState {
    /// Every request target the sender saw, in order.
    seen: Vec<String>,
    tokens_issued: usize,
    live_tokens: HashSet<String>,
    /// Claims of the last authorization assertion.
    last_claims: Option<Value>,
    /// Answer the token endpoint with `invalid_grant`.
    invalid_grant: bool,
    /// Answer the next data request with 401 and forget its token.
    revoke_next: bool,
    /// Answer the next data request with 503 and this `Retry-After`.
    busy_next: Option<&'static str>,
    /// Replace Condition c4 on the last page (to see a re-pull replace the file).
    c4_status: Option<&'static str>,
}

struct SenderHandler {
    base: String,
    state: Arc<Mutex<SenderState>>,
}

fn fhir(status: u16, v: Value) -> Response {
    Response::new(status).body("application/fhir+json", v.to_string())
}

fn searchset(entries: Vec<Value>, next: Option<String>) -> Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": entries.into_iter().map(|r| {
            let mode = if r["resourceType"] == "OperationOutcome" { "outcome" } else { "match" };
            json!({"resource": r, "search": {"mode": mode}})
        }).collect::<Vec<_>>(),
        "link": [{"relation": "self", "url": "ignored"}]
    });
    if let Some(n) = next {
        b["link"]
            .as_array_mut()
            .unwrap()
            .push(json!({"relation": "next", "url": n}));
    }
    b
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999990"}]})
}

fn condition(id: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "subject": {"reference": "Patient/p1"}, "note": [{"text": "decimal 1.50"}]})
}

impl Handler for SenderHandler {
    fn handle(&self, req: &Request) -> Response {
        let target = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let mut st = self.state.lock().unwrap();
        st.seen.push(target.clone());
        match req.path.as_str() {
            "/fhir/.well-known/smart-configuration" => {
                return Response::new(200).body(
                    "application/json",
                    format!(
                        r#"{{"token_endpoint":"{}/oauth/token"}}"#,
                        origin(&self.base)
                    ),
                );
            }
            "/oauth/token" => {
                let form = String::from_utf8_lossy(&req.body).to_string();
                let assertion = form
                    .split('&')
                    .find_map(|p| p.strip_prefix("assertion="))
                    .unwrap()
                    .to_string();
                let payload = assertion.split('.').nth(1).unwrap();
                st.last_claims = Some(
                    serde_json::from_slice(&np_agent::util::b64::decode(payload).unwrap()).unwrap(),
                );
                if st.invalid_grant {
                    return Response::new(400).body(
                        "application/json",
                        r#"{"error":"invalid_grant","error_description":"authorization_base unknown or expired"}"#,
                    );
                }
                st.tokens_issued += 1;
                let token = format!("tok-{}", st.tokens_issued);
                st.live_tokens.insert(token.clone());
                return Response::new(200).body(
                    "application/json",
                    format!(
                        r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":300}}"#
                    ),
                );
            }
            _ => {}
        }
        // Data: a live bearer token is required.
        let token = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        if !st.live_tokens.contains(&token) {
            return fhir(401, json!({"resourceType": "OperationOutcome"}))
                .header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
        }
        if std::mem::take(&mut st.revoke_next) {
            st.live_tokens.remove(&token);
            return fhir(401, json!({"resourceType": "OperationOutcome"}));
        }
        if let Some(after) = st.busy_next.take() {
            return fhir(503, json!({"resourceType": "OperationOutcome"}))
                .header("Retry-After", after);
        }
        assert_eq!(req.header("accept"), Some("application/fhir+json"));
        let page = |n: &str| format!("{}?_getpages=cond&page={n}", self.base);
        match target.as_str() {
            "/fhir/Patient/p1" => fhir(200, patient()),
            "/fhir/Bundle/b1" => fhir(
                200,
                json!({"resourceType": "Bundle", "id": "b1", "type": "transaction", "entry": [
                    {"resource": {"resourceType": "ReferralRequest", "id": "r1"}, "request": {"method": "PUT", "url": "ReferralRequest/r1"}}
                ]}),
            ),
            "/fhir/Binary/missing" => fhir(404, json!({"resourceType": "OperationOutcome"})),
            "/fhir/Condition" => fhir(
                200,
                searchset(
                    vec![condition("c1"), condition("c2"), patient()],
                    Some(page("2")),
                ),
            ),
            "/fhir?_getpages=cond&page=2" => fhir(
                200,
                searchset(
                    vec![
                        condition("c3"),
                        patient(),
                        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}),
                    ],
                    Some(page("3")),
                ),
            ),
            "/fhir?_getpages=cond&page=3" => {
                let mut c4 = condition("c4");
                if let Some(s) = st.c4_status {
                    c4["clinicalStatus"] = json!(s);
                }
                fhir(200, searchset(vec![c4], None))
            }
            // The query arrives with only its illegal `|` encoded.
            "/fhir/Observation/$lastn?code=http://loinc.org%7C85354-9" => {
                let page = searchset(
                    vec![
                        json!({"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": "DECIMAL"}}),
                    ],
                    // Same server, other host name: must not be followed.
                    Some(self.base.replace("localhost", "127.0.0.1") + "/Observation?page=2"),
                );
                // A decimal with a trailing zero, as a FHIR server writes it.
                let text = page.to_string().replace("\"DECIMAL\"", "120.50");
                Response::new(200).body("application/fhir+json", text)
            }
            "/fhir/Task/wf-1" => fhir(
                200,
                json!({"resourceType": "Task", "id": "wf-1", "status": "requested", "intent": "order", "input": [
                    {"type": {"coding": [{"system": "http://loinc.org", "code": "11450-4"}]}, "valueString": "Condition"}
                ]}),
            ),
            _ => fhir(404, json!({"resourceType": "OperationOutcome"})),
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "sender"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

fn origin(base: &str) -> String {
    np_agent::util::url::Url::parse(base).unwrap().origin()
}

// ---------------------------------------------------------------- the log

/// Every line logged in this test binary (all tests share one logger).
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("np_agent") {
            let line = format!("level={} {}", record.level(), record.args());
            self.0.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        c
    })
}

/// The lines logged so far, after checking that none holds a BSN, a token,
/// an authorization base, a query or resource content.
fn log_lines() -> Vec<String> {
    let lines = capture().0.lock().unwrap().clone();
    for line in &lines {
        for secret in [
            "999999990",
            "999999151",
            "tok-",
            "Bearer",
            "base/",
            "loinc",
            "snomed",
            "120.50",
            "evil.example",
        ] {
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
    }
    lines
}

// ---------------------------------------------------------------- the harness

struct Harness {
    _tmp: TempDir,
    server: Option<http::Server>,
    addr: SocketAddr,
    state: Arc<Mutex<SenderState>>,
    config: Arc<Config>,
    spool: Arc<Spool>,
    receiver: Arc<Receiver>,
    client: Arc<TokenClient>,
    http: Arc<Partners>,
    inbox: PathBuf,
    state_dir: PathBuf,
}

impl Harness {
    fn new(label: &str) -> Harness {
        capture();
        let tmp = TempDir::new(label);
        let world = World::new();
        let a = Party::new(&world, tmp.path(), "hospa", "12345678", &[]);
        let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("https://localhost:{}/fhir", addr.port());
        let state = Arc::new(Mutex::new(SenderState::default()));
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(
                pki::server_config(&a.material, MinVersion::Tls13).unwrap(),
            )),
            Arc::new(SenderHandler {
                base: base.clone(),
                state: state.clone(),
            }),
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();

        let inbox = tmp.join("inbox");
        let state_dir = tmp.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let signing_pem = np_agent::jose::generate_pkcs8_pem(Alg::Es256).unwrap();
        let signing = tmp.join("b-signing.pem");
        np_agent::util::durable::write_atomic(&signing, signing_pem.as_bytes()).unwrap();
        let mut v = Vars::new();
        let mut set = |k: &str, val: String| {
            v.insert(k.into(), (val, None));
        };
        set("NP_PUBLIC_URL", "https://np.hospital-b.example".into());
        set("NP_TLS_CERT", b.tls.cert.display().to_string());
        set("NP_TLS_KEY", b.tls.key.display().to_string());
        set("NP_TLS_TRUST", b.tls.trust.display().to_string());
        set("NP_SIGNING_KEY", signing.display().to_string());
        set("NP_SIGNING_ALG", "ES256".into());
        set("NP_ORG_URA", "87654321".into());
        set("NP_ORG_AGB", "44446666".into());
        set("NP_INBOX", inbox.display().to_string());
        set("NP_STATE_DIR", state_dir.display().to_string());
        set("NP_PARTNERS", "hospa".into());
        set("NP_PARTNER_HOSPA_FHIR_BASE", base);
        set("NP_PARTNER_HOSPA_ORG", "ura:12345678".into());
        set("NP_PARTNER_HOSPA_CERT", "ura:12345678".into());
        set("NP_PARTNER_HOSPA_SEND_BSN", "true".into());
        let config = Arc::new(config::from_vars(&v).unwrap());

        let (spool, _) = Spool::open(&state_dir).unwrap();
        let spool = Arc::new(spool);
        let audit = Arc::new(AuditLog::open(&state_dir).unwrap());
        let receiver = Arc::new(Receiver::new(config.clone(), spool.clone(), audit).unwrap());
        let tls = pki::client_config(&b.material, MinVersion::Tls13).unwrap();
        let http = Arc::new(Partners::new(tls, ClientTimeouts::default()));
        let key = Arc::new(SigningKey::from_pkcs8_pem(&signing_pem, Alg::Es256, None).unwrap());
        let client = Arc::new(TokenClient::new(config.clone(), key, http.clone()));
        Harness {
            _tmp: tmp,
            server: Some(server),
            addr,
            state,
            config,
            spool,
            receiver,
            client,
            http,
            inbox,
            state_dir,
        }
    }

    fn partner(&self) -> config::TwiinPartner<'_> {
        self.config.twiin_partner("hospa").unwrap()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SenderState> {
        self.state.lock().unwrap()
    }

    fn notify(&self, task: &Value) -> Response {
        self.receiver.notify(
            self.partner(),
            &grant(),
            &request("POST", "/fhir/Task", None, task.to_string().into_bytes()),
            now_unix(),
        )
    }

    fn cancel(&self, query: &str, task: &Value) -> Response {
        self.receiver.cancel(
            self.partner(),
            &grant(),
            &request(
                "PUT",
                "/fhir/Task",
                Some(query),
                task.to_string().into_bytes(),
            ),
            now_unix(),
        )
    }

    /// Claims the item and runs the pull worker on it, as the dispatcher would.
    fn pull(&self, id: &str) -> (Item, Outcome) {
        let item = self.spool.claim(id).unwrap();
        let outcome = self
            .receiver
            .pull(&item, &self.client, self.http.as_ref(), now_unix());
        (item, outcome)
    }

    fn settle(&self, item: Item, outcome: Outcome) -> State {
        spool::settle(&self.spool, item, outcome, now_unix(), 72 * 3_600, 0).unwrap()
    }

    fn data_file(&self, group: &str, task: &str) -> PathBuf {
        self.inbox
            .join("hospa")
            .join(group)
            .join(format!("{task}.json"))
    }

    fn report(&self, id: &str) -> Value {
        let path = self
            .state_dir
            .join("receiver/pulls")
            .join(format!("{id}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn data_requests(&self) -> Vec<String> {
        self.state()
            .seen
            .iter()
            .filter(|t| !t.starts_with("/oauth") && !t.contains("well-known"))
            .cloned()
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

fn grant() -> Grant {
    Grant::notify(
        "hospa",
        "hospa-client",
        OrgId::Ura("12345678".into()),
        Some(OrgId::Ura("87654321".into())),
        None,
    )
    .valid(0, i64::MAX)
}

fn request(method: &str, path: &str, query: Option<&str>, body: Vec<u8>) -> Request {
    Request {
        method: method.into(),
        target: match query {
            Some(q) => format!("{path}?{q}"),
            None => path.into(),
        },
        path: path.into(),
        query: query.map(String::from),
        headers: vec![("content-type".into(), b"application/fhir+json".to_vec())],
        body,
        request_id: "rid-test".into(),
        peer: Peer::new(
            SocketAddr::from(([127, 0, 0, 1], 40_000)),
            Arc::new(Vec::new()),
            "TLSv1.3",
        ),
    }
}

fn input(system: &str, code: &str, value: Value) -> Value {
    let mut i = json!({"type": {"coding": [{"system": system, "code": code}]}});
    i.as_object_mut()
        .unwrap()
        .extend(value.as_object().unwrap().clone());
    i
}

const TP: &str = "http://fhir.nl/fhir/NamingSystem/TaskParameter";
const GROUP: &str = "484639e6-e647-464c-8722-6e8a73cda4e0";

fn task(uuid: &str, inputs: Vec<Value>) -> Value {
    let end = np_agent::util::time::rfc3339(now_unix() + 7 * 86_400);
    // Each case has its own base (tokens are cached per base).
    let base = format!("base/{}+==", &uuid[..8]);
    let mut all = vec![input(
        TP,
        "authorization-base",
        json!({ "valueString": base }),
    )];
    all.extend(inputs);
    json!({
        "resourceType": "Task",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{uuid}")}],
        "groupIdentifier": {"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{GROUP}")},
        "status": "requested",
        "intent": "proposal",
        "code": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskCode", "code": "pull-notification"}]},
        "for": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999990"}},
        "restriction": {"period": {"end": end}},
        "requester": {"onBehalfOf": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "12345678"}}},
        "owner": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "87654321"}},
        "input": all,
    })
}

fn full_task(uuid: &str) -> Value {
    task(
        uuid,
        vec![
            input(TP, "read-resource", json!({"valueString": "Patient/p1"})),
            input(
                TP,
                "read-available-resource",
                json!({"valueReference": {"reference": "Bundle/b1"}}),
            ),
            input(
                TP,
                "read-resource",
                json!({"valueString": "Binary/missing"}),
            ),
            input(
                "http://loinc.org",
                "11450-4",
                json!({"valueString": "Condition"}),
            ),
            input(
                "http://loinc.org",
                "85354-9",
                json!({"valueString": "Observation/$lastn?code=http://loinc.org|85354-9"}),
            ),
        ],
    )
}

fn body(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap()
}

fn item_id_of(resp: &Response) -> String {
    let location = resp
        .headers
        .iter()
        .find(|(k, _)| k == "Location")
        .map(|(_, v)| v.clone())
        .unwrap();
    location.rsplit('/').next().unwrap().to_string()
}

fn kinds(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- the tests

#[test]
fn full_pull_pages_to_the_end_dedups_records_the_missing_and_replaces_on_repull() {
    let h = Harness::new("pull-full");
    let t = full_task("6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe");

    // Intake: 201 + Location, then the same identifier again is 200, nothing duplicated.
    let first = h.notify(&t);
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let id = item_id_of(&first);
    assert!(id.starts_with("pull-"));
    let again = h.notify(&t);
    assert_eq!(again.status, 200);
    assert_eq!(body(&again), body(&first));
    assert_eq!(h.spool.ids(State::Queued).unwrap(), vec![id.clone()]);
    let queued = h.spool.load(State::Queued, &id).unwrap();
    assert_eq!(queued.kind, "pull");
    let give_up = queued.give_up_at.unwrap();
    assert!(
        (give_up - (now_unix() + 7 * 86_400)).abs() <= 5,
        "give_up_at is the restriction end"
    );

    // The pull.
    let (item, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(h.settle(item, outcome), State::Done);

    let done_line = format!(
        "event=pull.done partner=hospa item={id} group={GROUP} task=6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe resources=7 not_available=2 ms="
    );
    let lines = log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("level=INFO ") && l.contains(&done_line)),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains(&format!(
        "event=pull.unavailable partner=hospa item={id} input=read:2 type=Binary status=404"
    ))));
    assert!(lines.iter().any(|l| l.contains(&format!(
        "event=pull.next_refused partner=hospa item={id} query=1 page=1"
    ))));
    let file = h.data_file(GROUP, "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe");
    let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    assert_eq!(
        bundle["entry"][0]["resource"], t,
        "the notification Task comes first, as received"
    );
    assert_eq!(
        kinds(&bundle),
        [
            "Task/-",
            "Patient/p1",
            "Bundle/b1",
            "Condition/c1",
            "Condition/c2",
            "Condition/c3",
            "Condition/c4",
            "Observation/o1",
        ],
        "searchsets unwrapped across all pages, Patient/p1 once, no OperationOutcome"
    );
    let raw = String::from_utf8(std::fs::read(&file).unwrap()).unwrap();
    assert!(raw.contains("120.50"), "decimals keep their digits");
    let base = h.partner().fhir_base.clone();
    assert_eq!(bundle["entry"][1]["fullUrl"], format!("{base}/Patient/p1"));

    // What went over the wire: the plan in order, queries verbatim but for the illegal `|`,
    // every page of Condition, and never the next link that named another host.
    assert_eq!(
        h.data_requests(),
        [
            "/fhir/Patient/p1",
            "/fhir/Bundle/b1",
            "/fhir/Binary/missing",
            "/fhir/Condition",
            "/fhir?_getpages=cond&page=2",
            "/fhir?_getpages=cond&page=3",
            "/fhir/Observation/$lastn?code=http://loinc.org%7C85354-9",
        ]
    );
    // The token request carried the Task's authorization base verbatim and the §3.3 claims.
    let claims = h.state().last_claims.clone().unwrap();
    assert_eq!(claims["authorization_base"], "base/6128cfe7+==");
    assert_eq!(claims["sub"], "urn:oid:2.16.528.1.1007.3.3.87654321");
    assert_eq!(claims["authorizer"], "urn:oid:2.16.528.1.1007.3.3.12345678");
    assert_eq!(
        claims["patient"],
        "urn:oid:2.16.840.1.113883.2.4.6.3.999999990"
    );
    assert_eq!(h.state().tokens_issued, 1, "one token for the whole pull");

    // The 404 is recorded as not available; the next link to another host as stopped.
    let report = h.report(&id);
    assert_eq!(report["resources"], 7);
    assert_eq!(report["not_available"], 2);
    let inputs = report["inputs"].as_array().unwrap();
    let missing = inputs
        .iter()
        .find(|i| i["kind"] == "read" && i["index"] == 2)
        .unwrap();
    assert_eq!(
        (missing["result"].as_str(), missing["status"].as_u64()),
        (Some("not-available"), Some(404))
    );
    let cond = inputs
        .iter()
        .find(|i| i["kind"] == "query" && i["index"] == 0)
        .unwrap();
    assert_eq!(
        (cond["result"].as_str(), cond["pages"].as_u64()),
        (Some("ok"), Some(3))
    );
    let obs = inputs
        .iter()
        .find(|i| i["kind"] == "query" && i["index"] == 1)
        .unwrap();
    assert_eq!(obs["result"], "stopped");
    let report_text = serde_json::to_string(&report).unwrap();
    assert!(!report_text.contains("999999990") && !report_text.contains("loinc"));

    // The audit trail has the intake and the pull, with the patient.
    let audit_dir = h.state_dir.join("audit");
    let audit: String = files_in(&audit_dir)
        .iter()
        .map(|f| std::fs::read_to_string(audit_dir.join(f)).unwrap())
        .collect();
    assert!(audit.contains("\"action\":\"task.received\""));
    assert!(audit.contains("\"action\":\"task.duplicate\""));
    assert!(audit.contains("\"action\":\"pull.completed\"") && audit.contains("999999990"));

    // A re-pull (the item requeued) replaces the file: same name, new content, no leftovers.
    h.state().c4_status = Some("resolved");
    assert_eq!(h.spool.requeue_dead(None, now_unix()).unwrap(), 0);
    let done = h.spool.load(State::Done, &id).unwrap();
    std::fs::remove_file(h.state_dir.join("spool/done").join(format!("{id}.json"))).unwrap();
    h.spool.enqueue(&done).unwrap();
    let (item, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    h.settle(item, outcome);
    let dir = h.inbox.join("hospa").join(GROUP);
    assert_eq!(
        files_in(&dir),
        ["6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe.json"]
    );
    let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 8);
    assert_eq!(bundle["entry"][6]["resource"]["clinicalStatus"], "resolved");

    // An update: the same group, a new identifier, pulled as its own item into its own file.
    let update = task(
        "a3c1e0f4-7b2d-4e8a-9c6f-2d1b0a9e8f70",
        vec![input(
            TP,
            "read-resource",
            json!({"valueString": "Patient/p1"}),
        )],
    );
    let resp = h.notify(&update);
    assert_eq!(resp.status, 201);
    let id2 = item_id_of(&resp);
    assert_ne!(id2, id);
    let (item, outcome) = h.pull(&id2);
    assert_eq!(outcome, Outcome::Done);
    h.settle(item, outcome);
    assert_eq!(
        files_in(&dir),
        [
            "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe.json",
            "a3c1e0f4-7b2d-4e8a-9c6f-2d1b0a9e8f70.json"
        ]
    );
}

#[test]
fn workflow_task_inputs_are_pulled_too() {
    let h = Harness::new("pull-workflow");
    let mut t = task(
        "2c3d4e5f-6a7b-4c8d-8e9f-0a1b2c3d4e5f",
        vec![input(
            TP,
            "get-workflow-task",
            json!({"valueBoolean": true}),
        )],
    );
    t["basedOn"] = json!([{"reference": "Task/wf-1"}]);
    let resp = h.notify(&t);
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let (_, outcome) = h.pull(&item_id_of(&resp));
    assert_eq!(outcome, Outcome::Done);
    let bundle: Value = serde_json::from_slice(
        &std::fs::read(h.data_file(GROUP, "2c3d4e5f-6a7b-4c8d-8e9f-0a1b2c3d4e5f")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kinds(&bundle),
        [
            "Task/-",
            "Task/wf-1",
            "Condition/c1",
            "Condition/c2",
            "Patient/p1",
            "Condition/c3",
            "Condition/c4"
        ]
    );
}

#[test]
fn a_401_gets_one_fresh_token_503_retries_as_told_invalid_grant_is_final() {
    let h = Harness::new("pull-failures");
    let resp = h.notify(&task(
        "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a",
        vec![input(
            TP,
            "read-resource",
            json!({"valueString": "Patient/p1"}),
        )],
    ));
    assert_eq!(resp.status, 201);
    let id = item_id_of(&resp);

    // 503 with Retry-After: the attempt ends with Retry as the sender said.
    h.state().busy_next = Some("7");
    let (item, outcome) = h.pull(&id);
    match &outcome {
        Outcome::Retry {
            reason,
            retry_after,
        } => {
            assert_eq!(*retry_after, Some(7));
            assert!(
                reason.starts_with("partner hospa: GET read 0 (Patient) answered 503"),
                "{reason}"
            );
            assert!(!reason.contains("999999990"));
        }
        other => panic!("{other:?}"),
    }
    let before = now_unix();
    assert_eq!(h.settle(item, outcome), State::Retry);
    let retry = h.spool.load(State::Retry, &id).unwrap();
    assert!(retry.not_before >= before + 7, "Retry-After honoured");
    assert!(
        !h.data_file(GROUP, "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a")
            .exists()
    );

    // 401 once: the token is invalidated, a fresh one fetched, the request repeated.
    h.state().revoke_next = true;
    let issued = h.state().tokens_issued;
    let (item, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        h.state().tokens_issued,
        issued + 1,
        "exactly one fresh token"
    );
    assert_eq!(
        h.data_requests()
            .iter()
            .filter(|r| *r == "/fhir/Patient/p1")
            .count(),
        3,
        "503, 401, then 200"
    );
    h.settle(item, outcome);
    assert!(
        h.data_file(GROUP, "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a")
            .exists()
    );

    // invalid_grant at the token endpoint: the case is over at the sender.
    let resp = h.notify(&task(
        "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b",
        vec![input(
            TP,
            "read-resource",
            json!({"valueString": "Patient/p1"}),
        )],
    ));
    let id = item_id_of(&resp);
    h.state().invalid_grant = true;
    let (item, outcome) = h.pull(&id);
    match &outcome {
        Outcome::Dead(reason) => {
            assert!(
                reason.starts_with("cancelled or expired at the sender"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.settle(item, outcome), State::Dead);

    // The sender is down: transport failure, retried later.
    h.state().invalid_grant = false;
    let resp = h.notify(&task(
        "5f6a7b8c-9d0e-4f1a-8b2c-3d4e5f6a7b8c",
        vec![input(
            TP,
            "read-resource",
            json!({"valueString": "Patient/p1"}),
        )],
    ));
    let id = item_id_of(&resp);
    let addr = h.addr;
    let mut h = h;
    h.server
        .take()
        .unwrap()
        .shutdown(Duration::from_millis(100));
    let (_, outcome) = h.pull(&id);
    assert!(
        matches!(
            &outcome,
            Outcome::Retry {
                retry_after: None,
                ..
            }
        ),
        "{outcome:?} ({addr})"
    );
}

#[test]
fn cancellation_stops_a_queued_pull_and_lands_in_the_inbox() {
    let h = Harness::new("pull-cancel");
    let uuid = "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d";
    let t = full_task(uuid);
    let resp = h.notify(&t);
    assert_eq!(resp.status, 201);
    let id = item_id_of(&resp);

    // Unknown identifier: 404.
    let mut cancel = t.clone();
    cancel["status"] = json!("cancelled");
    let r = h.cancel(
        "identifier=urn:ietf:rfc:3986%7Curn:uuid:00000000-0000-4000-8000-000000000000",
        &json!({"resourceType": "Task", "status": "cancelled"}),
    );
    assert_eq!(r.status, 404);
    // A body that names another Task than the URL: 400.
    let r = h.cancel(
        "identifier=urn:ietf:rfc:3986|urn:uuid:00000000-0000-4000-8000-000000000000",
        &cancel,
    );
    assert_eq!(
        (r.status, body(&r)["issue"][0]["expression"][0].as_str()),
        (400, Some("Task.identifier"))
    );
    // Not a cancellation: 400 naming the status.
    let r = h.cancel(&format!("identifier=urn:ietf:rfc:3986|urn:uuid:{uuid}"), &t);
    assert_eq!(
        (r.status, body(&r)["issue"][0]["expression"][0].as_str()),
        (400, Some("Task.status"))
    );

    // The real one: 200 with the cancelled Task, durable record, inbox file.
    let r = h.cancel(
        &format!("identifier=urn%3Aietf%3Arfc%3A3986%7Curn%3Auuid%3A{uuid}"),
        &cancel,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(body(&r)["status"], "cancelled");
    assert_eq!(body(&r)["id"], id.as_str());
    assert!(h.receiver.is_cancelled(&id));
    let cancelled = h
        .inbox
        .join("hospa")
        .join(GROUP)
        .join(format!("{uuid}.cancelled.json"));
    let written: Value = serde_json::from_slice(&std::fs::read(&cancelled).unwrap()).unwrap();
    assert_eq!(written, cancel);
    // Again: still 200 (idempotent).
    assert_eq!(
        h.cancel(
            &format!("identifier=urn:ietf:rfc:3986|urn:uuid:{uuid}"),
            &cancel
        )
        .status,
        200
    );

    // The queued pull now ends without touching the sender or writing data.
    let (item, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    h.settle(item, outcome);
    assert!(h.state().seen.is_empty(), "{:?}", h.state().seen);
    assert_eq!(
        files_in(&h.inbox.join("hospa").join(GROUP)),
        [format!("{uuid}.cancelled.json")]
    );

    // A POST with status cancelled is a cancellation too (spec §14 #14).
    let uuid2 = "7b8c9d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e";
    let t2 = full_task(uuid2);
    let id2 = item_id_of(&h.notify(&t2));
    let mut c2 = t2.clone();
    c2["status"] = json!("cancelled");
    let r = h.notify(&c2);
    assert_eq!(r.status, 200);
    assert!(h.receiver.is_cancelled(&id2));

    // Another partner's grant cannot cancel it; a pull token cannot either.
    let other = Grant::notify(
        "someoneelse",
        "hospa-client",
        OrgId::Ura("12345678".into()),
        None,
        None,
    )
    .valid(0, i64::MAX);
    let r = h.receiver.cancel(
        h.partner(),
        &other,
        &request(
            "PUT",
            "/fhir/Task",
            Some(&format!("identifier=urn:ietf:rfc:3986|urn:uuid:{uuid}")),
            cancel.to_string().into_bytes(),
        ),
        now_unix(),
    );
    assert_eq!(r.status, 403);
    let pull_token = Grant::pull(
        "hospa",
        "hospa-client",
        OrgId::Ura("12345678".into()),
        None,
        np_agent::oauth::CaseBinding {
            authorization_base: "b".into(),
            case_id: "c".into(),
        },
        np_agent::ids::Bsn::parse("999999151").unwrap(),
    )
    .valid(0, i64::MAX);
    let r = h.receiver.notify(
        h.partner(),
        &pull_token,
        &request("POST", "/fhir/Task", None, t.to_string().into_bytes()),
        now_unix(),
    );
    assert_eq!(r.status, 403);
    let lines = log_lines();
    assert!(lines.iter().any(|l| l.contains(&format!(
        "event=task.cancelled partner=hospa item={id} group={GROUP} task={uuid}"
    ))));
    assert!(lines.iter().any(|l| l.contains(&format!(
        "event=pull.skipped partner=hospa item={id} task={uuid} reason=cancelled"
    ))));
}

#[test]
fn intake_refusals_and_formats() {
    let h = Harness::new("intake");
    // 400 naming the element, as an OperationOutcome.
    let mut bad = full_task("8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f");
    bad["input"][4]["valueString"] = json!("https://evil.example/Condition");
    let r = h.notify(&bad);
    assert_eq!(r.status, 400);
    assert_eq!(
        body(&r)["issue"][0]["expression"][0],
        "Task.input[4].valueString"
    );
    // 403: the Task speaks for another organisation than the token.
    let mut other = full_task("8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e1f");
    other["requester"]["onBehalfOf"]["identifier"]["value"] = json!("11111111");
    assert_eq!(h.notify(&other).status, 403);
    // 415: not a FHIR media type.
    let mut req = request("POST", "/fhir/Task", None, b"{}".to_vec());
    req.headers = vec![("content-type".into(), b"text/plain".to_vec())];
    assert_eq!(
        h.receiver
            .notify(h.partner(), &grant(), &req, now_unix())
            .status,
        415
    );
    // Nothing was queued by any of them.
    assert!(h.spool.ids(State::Queued).unwrap().is_empty());

    // XML in, XML out (the answer follows the request's format), Location on our base.
    let xml = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/valid/stu3-task.xml"),
    )
    .unwrap();
    let mut req = request("POST", "/fhir/Task", None, xml);
    req.headers = vec![("content-type".into(), b"application/fhir+xml".to_vec())];
    let r = h
        .receiver
        .notify(h.partner(), &grant(), &req, 1_795_348_800);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("<Task xmlns=\"http://hl7.org/fhir\">"));
    let location = r
        .headers
        .iter()
        .find(|(k, _)| k == "Location")
        .unwrap()
        .1
        .clone();
    assert!(
        location.starts_with("https://np.hospital-b.example/fhir/Task/pull-"),
        "{location}"
    );
    // … and JSON when asked for it.
    req.headers
        .push(("accept".into(), b"application/fhir+json".to_vec()));
    let r = h
        .receiver
        .notify(h.partner(), &grant(), &req, 1_795_348_800);
    assert_eq!(r.status, 200);
    assert_eq!(body(&r)["resourceType"], "Task");
    // The stored order keeps the plan verbatim.
    let order = h.receiver.order(&item_id_of_location(&location)).unwrap();
    assert_eq!(
        order.plan().queries,
        ["Condition?clinical-status=active&_count=50"]
    );
    assert_eq!(order.inbox_group(), "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b");
    assert!(receiver::item_id("hospa", order.identifier()).starts_with("pull-"));
    let lines = log_lines();
    assert!(lines.iter().any(|l| l.contains(
        "event=task.refused partner=hospa method=POST status=400 element=Task.input[4].valueString"
    )));
}

fn item_id_of_location(location: &str) -> String {
    location.rsplit('/').next().unwrap().to_string()
}

#[test]
fn the_dispatcher_runs_pulls_through_the_pull_worker() {
    use np_agent::worker::{Dispatcher, Handler as Work, Settings};
    let h = Harness::new("pull-dispatch");
    let worker: Arc<dyn Work> = Arc::new(receiver::PullWorker {
        receiver: h.receiver.clone(),
        tokens: h.client.clone(),
        http: h.http.clone(),
    });
    let dispatcher = Dispatcher::start(
        h.spool.clone(),
        [(receiver::KIND_PULL.to_string(), worker)]
            .into_iter()
            .collect(),
        Settings {
            tick: Duration::from_millis(50),
            ..Settings::default()
        },
    )
    .unwrap();
    let uuid = "9d0e1f2a-3b4c-4d5e-8f6a-7b8c9d0e1f2a";
    let resp = h.notify(&full_task(uuid));
    assert_eq!(resp.status, 201);
    dispatcher.wake();
    let id = item_id_of(&resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.spool.find(&id) != Some(State::Done) {
        assert!(
            std::time::Instant::now() < deadline,
            "not done: {:?}",
            h.spool.find(&id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    dispatcher.shutdown(Duration::from_secs(2));
    assert!(h.data_file(GROUP, uuid).exists());
}

/// A restart (fresh spool recovery and receiver on the same folders) between
/// the steps of intake, pull and cancellation: the same Task again is a
/// `200` with one pull item, a pull interrupted after its inbox file was
/// written replaces that file under the same name, and a cancellation whose
/// inbox file was lost is written again when the sender repeats it.
#[test]
fn a_restart_between_steps_duplicates_nothing() {
    let h = Harness::new("pull-restart");
    let uuid = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let t = full_task(uuid);
    let first = h.notify(&t);
    assert_eq!(first.status, 201);
    let id = item_id_of(&first);
    let restart = || {
        let (spool, recovery) = Spool::open(&h.state_dir).unwrap();
        let audit = Arc::new(AuditLog::open(&h.state_dir).unwrap());
        let r = Receiver::new(h.config.clone(), Arc::new(spool), audit).unwrap();
        (r, recovery)
    };

    // Stored, the 201 lost with the process: the sender's resend is a duplicate.
    let (receiver, _) = restart();
    let again = receiver.notify(
        h.partner(),
        &grant(),
        &request("POST", "/fhir/Task", None, t.to_string().into_bytes()),
        now_unix(),
    );
    assert_eq!(again.status, 200);
    assert_eq!(h.spool.ids(State::Queued).unwrap(), vec![id.clone()]);

    // Pulled and written, killed before the item settled.
    let (_, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    let group = h.inbox.join("hospa").join(GROUP);
    let written = files_in(&group);
    assert_eq!(written, [format!("{uuid}.json")]);
    let (_, recovery) = restart();
    assert_eq!(recovery.requeued, 1);
    let (item, outcome) = h.pull(&id);
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(item.attempts, 1, "the interrupted attempt counted");
    h.settle(item, outcome);
    assert_eq!(files_in(&group), written, "replaced, not duplicated");

    // Cancelled, the inbox file lost before the 200 left: the repeat writes it.
    let mut cancel = t.clone();
    cancel["status"] = json!("cancelled");
    let query = format!("identifier=urn:ietf:rfc:3986|urn:uuid:{uuid}");
    assert_eq!(h.cancel(&query, &cancel).status, 200);
    let file = group.join(format!("{uuid}.cancelled.json"));
    std::fs::remove_file(&file).unwrap();
    restart();
    assert_eq!(h.cancel(&query, &cancel).status, 200);
    assert!(file.exists());
    assert_eq!(files_in(&group).len(), 2);
}

/// Long after a pull finished, only its item's identity is kept
/// (`NP_RETENTION`): the same Task sent again is still a `200` duplicate,
/// answered with the Task as it came, and nothing is pulled twice.
#[test]
fn a_task_resent_after_its_item_was_pruned_is_still_a_duplicate() {
    let h = Harness::new("pull-pruned");
    let t = full_task("0b4c6a0e-2f0e-4b8e-9a51-3f1c2d4e5f60");
    let first = h.notify(&t);
    assert_eq!(first.status, 201);
    let id = item_id_of(&first);
    let (item, outcome) = h.pull(&id);
    assert_eq!(h.settle(item, outcome), State::Done);
    // Past its restriction end (7 days) and a retention of 1 day: a stub.
    let horizons = spool::retention::Horizons::new(
        Duration::from_secs(86_400),
        Duration::from_secs(90 * 86_400),
    );
    let pruned = h.spool.prune(&horizons, now_unix() + 8 * 86_400).unwrap();
    assert_eq!((pruned.stripped, pruned.removed), (1, 0));
    let done = h.state_dir.join("spool/done").join(format!("{id}.json"));
    assert!(!std::fs::read_to_string(done).unwrap().contains("999999990"));

    let again = h.notify(&t);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(body(&again), body(&first));
    assert!(
        h.spool.ids(State::Queued).unwrap().is_empty(),
        "nothing pulled again"
    );
}
