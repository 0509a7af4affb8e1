//! Delivery of notifications and cancellations (`Sender::deliver`) against a
//! real partner on loopback: an mTLS HTTPS server (our own `http::Server`)
//! with a SMART discovery document, a token endpoint that issues tokens, and
//! a `Task` endpoint whose answers each test scripts. Export files go through
//! the real outbox scan first, so the items delivered are the ones the
//! scanner queued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TempDir;
use common::agent::{Party, World, key_pem_for};
use np_agent::audit::AuditLog;
use np_agent::cases::CaseStore;
use np_agent::config::{self, Config, Vars};
use np_agent::http::client::ClientTimeouts;
use np_agent::http::partners::{PartnerHttp, Partners};
use np_agent::http::{self, Handler, Request, Response};
use np_agent::jose::{Alg, SigningKey};
use np_agent::oauth::TokenStore;
use np_agent::oauth::client::TokenClient;
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion};
use np_agent::records::RecordStore;
use np_agent::sender::Sender;
use np_agent::spool::{self, Item, Outcome, Spool, State};
use np_agent::util::time::{self, now_unix};
use serde_json::{Value, json};

const BSN: &str = "999999151";

/// One request the partner received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    accept: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// A scripted answer: status, extra headers, body.
type Answer = (u16, Vec<(String, String)>, String);

/// The partner: discovery, token endpoint, Task endpoint.
#[derive(Default)]
struct Partner {
    base: Mutex<String>,
    tokens_issued: Mutex<u32>,
    token_answers: Mutex<VecDeque<Answer>>,
    task_answers: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<Seen>>,
}

impl Handler for Partner {
    fn handle(&self, req: &Request) -> Response {
        let base = self.base.lock().unwrap().clone();
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/fhir/.well-known/smart-configuration") => Response::new(200).body(
                "application/json",
                json!({"token_endpoint": format!("{base}/oauth/token")}).to_string(),
            ),
            ("POST", "/oauth/token") => {
                if let Some(a) = self.token_answers.lock().unwrap().pop_front() {
                    return answer(a);
                }
                let form = String::from_utf8_lossy(&req.body).into_owned();
                assert!(
                    form.contains(
                        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
                    )
                );
                assert!(form.contains("client_assertion="));
                let mut n = self.tokens_issued.lock().unwrap();
                *n += 1;
                Response::new(200).header("Cache-Control", "no-store").body(
                    "application/json",
                    json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 300})
                        .to_string(),
                )
            }
            (_, "/fhir/Task") => {
                self.seen.lock().unwrap().push(Seen {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    content_type: req.header("content-type").map(String::from),
                    accept: req.header("accept").map(String::from),
                    authorization: req.header("authorization").map(String::from),
                    body: req.body.clone(),
                });
                let next = self.task_answers.lock().unwrap().pop_front();
                answer(next.unwrap_or((201, Vec::new(), String::new())))
            }
            _ => Response::new(404),
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "test"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

fn answer((status, headers, body): Answer) -> Response {
    let mut r = Response::new(status);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    if body.is_empty() {
        r
    } else {
        r.body("application/fhir+json", body)
    }
}

/// Everything one test needs: the partner server, our stores and clients.
struct Rig {
    _tmp: TempDir,
    server: Option<http::Server>,
    partner: Arc<Partner>,
    config: Arc<Config>,
    spool: Arc<Spool>,
    sender: Sender,
    client: TokenClient,
    http: Arc<dyn PartnerHttp>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

fn rig(label: &str) -> Rig {
    let tmp = TempDir::new(label);
    let world = World::new();
    let us = Party::new(&world, tmp.path(), "hospa", "12345678", &[]);
    let them = Party::new(&world, tmp.path(), "hospb", "87654321", &[]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("https://localhost:{port}");
    let partner = Arc::new(Partner::default());
    *partner.base.lock().unwrap() = base.clone();
    let server = http::Server::start(
        listener,
        Arc::new(http::TlsSlot::new(
            pki::server_config(&them.material, MinVersion::Tls13).unwrap(),
        )),
        partner.clone(),
        http::Limits::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();

    let signing_pem = key_pem_for(Alg::Es256);
    let signing = tmp.join("signing.pem");
    np_agent::util::durable::write_atomic(&signing, signing_pem.as_bytes()).unwrap();
    let mut v = Vars::new();
    let mut set = |k: &str, val: String| {
        v.insert(k.into(), (val, None));
    };
    set("NP_PUBLIC_URL", "https://localhost:1".into());
    set("NP_TLS_CERT", us.tls.cert.display().to_string());
    set("NP_TLS_KEY", us.tls.key.display().to_string());
    set("NP_TLS_TRUST", us.tls.trust.display().to_string());
    set("NP_SIGNING_KEY", signing.display().to_string());
    set("NP_SIGNING_ALG", "ES256".into());
    set("NP_ORG_URA", us.ura.clone());
    set("NP_OUTBOX", tmp.join("outbox").display().to_string());
    set("NP_INBOX", tmp.join("inbox").display().to_string());
    set("NP_STATE_DIR", tmp.join("state").display().to_string());
    set("NP_PARTNERS", "hospb".into());
    set("NP_PARTNER_HOSPB_FHIR_BASE", format!("{base}/fhir"));
    set("NP_PARTNER_HOSPB_ORG", "ura:87654321".into());
    set("NP_PARTNER_HOSPB_CERT", "ura:87654321".into());
    set("NP_PARTNER_HOSPB_SEND_BSN", "true".into());
    let config = Arc::new(config::from_vars(&v).unwrap());
    std::fs::create_dir_all(config.outbox.join("hospb")).unwrap();

    let state = &config.state_dir;
    std::fs::create_dir_all(state).unwrap();
    let spool = Arc::new(Spool::open(state).unwrap().0);
    let sender = Sender::new(
        config.clone(),
        Arc::new(CaseStore::open(state).unwrap()),
        Arc::new(RecordStore::open(state).unwrap()),
        spool.clone(),
        Arc::new(TokenStore::open(state, now_unix()).unwrap()),
        Arc::new(AuditLog::open(state).unwrap()),
    );
    let tls = pki::client_config(&us.material, MinVersion::Tls13).unwrap();
    let http: Arc<dyn PartnerHttp> = Arc::new(Partners::new(tls, ClientTimeouts::default()));
    let key = Arc::new(SigningKey::from_pkcs8_pem(&signing_pem, Alg::Es256, None).unwrap());
    let client = TokenClient::new(config.clone(), key, http.clone());
    Rig {
        _tmp: tmp,
        server: Some(server),
        partner,
        config,
        spool,
        sender,
        client,
        http,
    }
}

fn bundle() -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}},
        {"resource": {"resourceType": "Condition", "id": "c1"}},
    ]})
}

impl Rig {
    fn export(&self, case: &str) {
        let path = self
            .config
            .outbox
            .join("hospb")
            .join(format!("{case}.json"));
        std::fs::write(path, serde_json::to_vec(&bundle()).unwrap()).unwrap();
        let r = self.sender.scan(now_unix());
        assert_eq!(r.accepted + r.updated, 1, "{r:?}");
    }

    fn cancel(&self, case: &str) {
        let path = self
            .config
            .outbox
            .join("hospb")
            .join(format!("{case}.cancel"));
        std::fs::write(path, b"").unwrap();
        assert_eq!(self.sender.scan(now_unix()).cancelled, 1);
    }

    fn script(&self, answers: Vec<Answer>) {
        self.partner.task_answers.lock().unwrap().extend(answers);
    }

    /// The one due item of `kind`, claimed as a worker would.
    fn claim(&self, kind: &str) -> Item {
        let due: Vec<Item> = self
            .spool
            .due(i64::MAX / 4)
            .unwrap()
            .into_iter()
            .filter(|i| i.kind == kind)
            .collect();
        assert_eq!(due.len(), 1, "{kind}: {due:?}");
        self.spool.claim(&due[0].id).unwrap()
    }

    fn deliver(&self, item: &Item) -> Outcome {
        self.sender
            .deliver(item, &self.client, self.http.as_ref(), now_unix())
    }

    /// Delivers and settles the due item of `kind`; returns outcome and final state.
    fn run(&self, kind: &str) -> (Outcome, State, Item) {
        let item = self.claim(kind);
        self.settle(item)
    }

    fn settle(&self, item: Item) -> (Outcome, State, Item) {
        let outcome = self.deliver(&item);
        let state = spool::settle(
            &self.spool,
            item.clone(),
            outcome.clone(),
            now_unix(),
            72 * 3_600,
            7,
        )
        .unwrap();
        let settled = self.spool.load(state, &item.id).unwrap();
        (outcome, state, settled)
    }

    fn seen(&self) -> Vec<Seen> {
        self.partner.seen.lock().unwrap().clone()
    }

    fn audit(&self) -> String {
        let dir = self.config.state_dir.join("audit");
        let mut text = String::new();
        for e in std::fs::read_dir(dir).unwrap() {
            text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        text
    }
}

fn oo(code: &str) -> String {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code,
        "diagnostics": format!("patient {BSN} unknown")}]})
    .to_string()
}

#[test]
fn notify_201_is_done_with_the_right_request() {
    let r = rig("deliver-201");
    r.export("c1");
    let (outcome, state, item) = r.run("notify");
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(state, State::Done);
    let seen = r.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/fhir/Task"));
    assert_eq!(s.query, None);
    assert_eq!(s.content_type.as_deref(), Some("application/fhir+json"));
    assert_eq!(s.accept.as_deref(), Some("application/fhir+json"));
    assert_eq!(s.authorization.as_deref(), Some("Bearer tok-1"));
    let task: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        task, item.body["task"],
        "the stored Task, byte for byte in meaning"
    );
    assert_eq!(task["status"], "requested");
    assert_eq!(task["for"]["identifier"]["value"], BSN);
    let audit = r.audit();
    assert!(
        audit.contains("\"action\":\"notification.sent\""),
        "{audit}"
    );
}

#[test]
fn server_errors_retry_and_honour_retry_after() {
    let r = rig("deliver-5xx");
    r.export("c1");
    r.script(vec![
        (500, Vec::new(), oo("exception")),
        (
            503,
            vec![("Retry-After".into(), "120".into())],
            String::new(),
        ),
        (429, vec![("Retry-After".into(), "7".into())], String::new()),
        (
            503,
            vec![("Retry-After".into(), time::http_date(now_unix() + 60))],
            String::new(),
        ),
    ]);
    let item = r.claim("notify");
    match r.deliver(&item) {
        Outcome::Retry {
            reason,
            retry_after,
        } => {
            assert_eq!(retry_after, None);
            assert!(
                reason.starts_with("partner hospb: POST https://localhost:"),
                "{reason}"
            );
            assert!(
                reason.contains("/fhir/Task answered 500 (OperationOutcome exception)"),
                "{reason}"
            );
            assert!(!reason.contains(BSN), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let outcome = r.deliver(&item);
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                retry_after: Some(120),
                ..
            }
        ),
        "{outcome:?}"
    );
    let now = now_unix();
    let state = spool::settle(&r.spool, item.clone(), outcome, now, 72 * 3_600, 1).unwrap();
    assert_eq!(state, State::Retry);
    let parked = r.spool.load(State::Retry, &item.id).unwrap();
    assert!(parked.not_before >= now + 120, "Retry-After is honoured");
    let item = r.spool.claim(&item.id).unwrap();
    assert!(matches!(
        r.deliver(&item),
        Outcome::Retry {
            retry_after: Some(7),
            ..
        }
    ));
    // An HTTP-date counts as well as seconds.
    match r.deliver(&item) {
        Outcome::Retry {
            retry_after: Some(secs),
            ..
        } => assert!((55..=60).contains(&secs), "{secs}"),
        other => panic!("{other:?}"),
    }
    // Then the partner is back.
    assert_eq!(r.deliver(&item), Outcome::Done);
    assert_eq!(r.seen().len(), 5);
    assert_eq!(
        *r.partner.tokens_issued.lock().unwrap(),
        1,
        "the token is reused across attempts"
    );
}

#[test]
fn a_401_gets_a_new_token_and_succeeds_in_the_same_attempt() {
    let r = rig("deliver-401");
    r.export("c1");
    r.script(vec![(
        401,
        vec![("WWW-Authenticate".into(), "Bearer".into())],
        String::new(),
    )]);
    let (outcome, _, _) = r.run("notify");
    assert_eq!(outcome, Outcome::Done);
    let seen = r.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer tok-2"));
    assert_eq!(seen[0].body, seen[1].body, "the same Task");
    assert_eq!(*r.partner.tokens_issued.lock().unwrap(), 2);
}

#[test]
fn a_second_401_is_dead() {
    let r = rig("deliver-401-twice");
    r.export("c1");
    r.script(vec![
        (401, Vec::new(), String::new()),
        (401, Vec::new(), String::new()),
    ]);
    let (outcome, state, item) = r.run("notify");
    assert_eq!(state, State::Dead);
    let Outcome::Dead(reason) = outcome else {
        panic!()
    };
    assert!(
        reason.ends_with("/fhir/Task answered 401 after a fresh token"),
        "{reason}"
    );
    assert_eq!(item.last_error.as_deref(), Some(reason.as_str()));
}

#[test]
fn a_400_is_dead_with_a_reason() {
    let r = rig("deliver-400");
    r.export("c1");
    r.script(vec![(400, Vec::new(), oo("invalid"))]);
    let (outcome, state, _) = r.run("notify");
    assert_eq!(state, State::Dead);
    let Outcome::Dead(reason) = outcome else {
        panic!()
    };
    let base = r.config.twiin_partner("hospb").unwrap().fhir_base.clone();
    assert_eq!(
        reason,
        format!("partner hospb: POST {base}/Task answered 400 (OperationOutcome invalid)")
    );
    assert!(r.audit().contains("\"outcome\":\"error\""));
}

#[test]
fn token_endpoint_refusals_and_outages() {
    let r = rig("deliver-token");
    r.export("c1");
    r.partner.token_answers.lock().unwrap().extend([
        (
            503,
            vec![("Retry-After".into(), "30".into())],
            String::new(),
        ),
        (
            400,
            Vec::new(),
            json!({"error": "invalid_grant", "error_description": "no"}).to_string(),
        ),
    ]);
    let item = r.claim("notify");
    let outcome = r.deliver(&item);
    assert!(
        matches!(
            outcome,
            Outcome::Retry {
                retry_after: Some(30),
                ..
            }
        ),
        "{outcome:?}"
    );
    match r.deliver(&item) {
        Outcome::Dead(reason) => {
            assert!(
                reason.starts_with("partner hospb: token endpoint https://localhost:"),
                "{reason}"
            );
            assert!(
                reason.contains("/oauth/token answered 400 invalid_grant"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(r.seen().is_empty(), "no Task without a token");
}

#[test]
fn a_partner_that_is_down_is_retried() {
    let mut r = rig("deliver-down");
    r.export("c1");
    r.export("c2");
    r.script(vec![(503, Vec::new(), String::new())]);
    let due = r.spool.due(i64::MAX / 4).unwrap();
    let first = r.spool.claim(&due[0].id).unwrap();
    let second = r.spool.claim(&due[1].id).unwrap();
    // One attempt while the partner is up: a token is cached.
    assert!(matches!(r.deliver(&first), Outcome::Retry { .. }));
    if let Some(s) = r.server.take() {
        s.shutdown(Duration::from_millis(100));
    }
    // The token is still good; the POST cannot reach the partner.
    match r.deliver(&first) {
        Outcome::Retry { reason, .. } => {
            assert!(
                reason.starts_with("partner hospb: POST https://localhost:"),
                "{reason}"
            );
            assert!(reason.contains("/fhir/Task failed: "), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // After a restart the client must discover the token endpoint first: the partner is down.
    let _ = second;
    let fresh = TokenClient::new(
        r.config.clone(),
        Arc::new(SigningKey::from_pkcs8_pem(&key_pem_for(Alg::Es256), Alg::Es256, None).unwrap()),
        r.http.clone(),
    );
    match r
        .sender
        .deliver(&second, &fresh, r.http.as_ref(), now_unix())
    {
        Outcome::Retry { reason, .. } => {
            assert!(
                reason.starts_with("partner hospb: discovery at https://localhost:"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancellation_is_a_conditional_put_after_the_notification() {
    let r = rig("deliver-cancel");
    r.export("c1");
    let (_, _, notify) = r.run("notify");
    let task_id = notify.body["task_id"].as_str().unwrap().to_string();
    r.cancel("c1");
    let (outcome, state, _) = r.run("cancel");
    assert_eq!((outcome, state), (Outcome::Done, State::Done));
    let seen = r.seen();
    assert_eq!(seen.len(), 2);
    let put = &seen[1];
    assert_eq!(
        (put.method.as_str(), put.path.as_str()),
        ("PUT", "/fhir/Task")
    );
    assert_eq!(
        put.query.as_deref(),
        Some(format!("identifier=urn:ietf:rfc:3986%7Curn:uuid:{task_id}").as_str())
    );
    assert_eq!(put.content_type.as_deref(), Some("application/fhir+json"));
    assert!(
        put.authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer tok-")
    );
    let task: Value = serde_json::from_slice(&put.body).unwrap();
    assert_eq!(task["status"], "cancelled");
    let mut sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    sent["status"] = json!("cancelled");
    sent["lastModified"] = task["lastModified"].clone();
    assert_eq!(task, sent, "the same Task, cancelled");
    assert!(r.audit().contains("\"action\":\"cancellation.sent\""));
}

#[test]
fn a_cancellation_waits_for_its_notification_and_skips_an_undelivered_one() {
    let r = rig("deliver-cancel-wait");
    r.export("c1");
    r.cancel("c1");
    // The notification is still queued: the cancellation waits, which is
    // not an attempt.
    let cancel = r.claim("cancel");
    let outcome = r.deliver(&cancel);
    assert!(
        matches!(&outcome, Outcome::Wait { reason, after_secs: 2 } if reason.contains("waiting for notification")),
        "{outcome:?}"
    );
    spool::settle(&r.spool, cancel, outcome, now_unix(), 72 * 3_600, 1).unwrap();
    let waiting = r.spool.ids(State::Retry).unwrap();
    assert_eq!(r.spool.load(State::Retry, &waiting[0]).unwrap().attempts, 0);
    // The notification of a cancelled case is not sent at all …
    let (outcome, state, _) = r.run("notify");
    assert_eq!(state, State::Dead);
    assert!(
        matches!(&outcome, Outcome::Dead(reason) if reason.ends_with("was cancelled before the notification was delivered; not sent")),
        "{outcome:?}"
    );
    // … so the cancellation has nothing to cancel.
    let (outcome, state, _) = r.run("cancel");
    assert_eq!((outcome, state), (Outcome::Done, State::Done));
    assert!(r.seen().is_empty(), "the partner never heard of the case");
}

/// Regression: the notification's POST reached the partner, then the agent
/// was killed before it recorded the delivery. After the restart the case
/// was cancelled, the notification was (rightly) not sent again, and the
/// cancellation was skipped as "never delivered": the partner kept a Task
/// for a cancelled case and never got its cancellation.
#[test]
fn a_cancellation_reaches_the_partner_when_a_crash_hid_the_delivery_of_its_notification() {
    for partner_has_it in [true, false] {
        let r = rig("deliver-cancel-crash");
        r.export("c1");
        let notify = r.claim("notify");
        if partner_has_it {
            // Delivered; the kill comes before the spool hears of it.
            assert_eq!(r.deliver(&notify), Outcome::Done);
        }
        // The restart: the interrupted attempt counts.
        let (_, rec) = Spool::open(&r.config.state_dir).unwrap();
        assert_eq!(rec.requeued, 1);
        r.cancel("c1");
        let (outcome, state, _) = r.run("notify");
        assert_eq!(state, State::Dead);
        assert!(
            matches!(&outcome, Outcome::Dead(reason) if reason.contains("an earlier attempt may have reached the partner")),
            "{outcome:?}"
        );
        if !partner_has_it {
            r.script(vec![(404, vec![], oo("not-found"))]);
        }
        let (outcome, state, _) = r.run("cancel");
        assert_eq!(
            (outcome, state),
            (Outcome::Done, State::Done),
            "{partner_has_it}"
        );
        let methods: Vec<String> = r.seen().iter().map(|s| s.method.clone()).collect();
        let want = if partner_has_it {
            vec!["POST", "PUT"]
        } else {
            vec!["PUT"]
        };
        assert_eq!(methods, want, "the cancellation was sent");
        let put: Value = serde_json::from_slice(&r.seen().last().unwrap().body).unwrap();
        assert_eq!(put["status"], "cancelled");
    }
}

#[test]
fn dead_items_name_the_partner_and_step() {
    let r = rig("deliver-odd");
    let mut item = Item {
        id: "notify-x".into(),
        kind: "notify".into(),
        partner: "gone".into(),
        created_at: 0,
        attempts: 0,
        not_before: 0,
        give_up_at: None,
        last_error: None,
        body: json!({}),
    };
    assert_eq!(
        r.deliver(&item),
        Outcome::Dead("partner gone is not configured".into())
    );
    item.partner = "hospb".into();
    assert!(
        matches!(r.deliver(&item), Outcome::Dead(reason) if reason.starts_with("spool item notify-x: unreadable body"))
    );
}

#[test]
fn one_case_s_notifications_go_out_in_order() {
    let r = rig("deliver-order");
    r.export("c1");
    r.export("c1");
    let mut due = r.spool.due(i64::MAX / 4).unwrap();
    due.sort_by_key(|i| i.body["version"].as_u64());
    let v1 = r.spool.claim(&due[0].id).unwrap();
    let v2 = r.spool.claim(&due[1].id).unwrap();
    // v1 is in flight: v2 waits for it (not an attempt).
    match r.deliver(&v2) {
        Outcome::Wait { reason, after_secs } => {
            assert!(
                reason.contains(&format!("waiting for the earlier notification {}", v1.id)),
                "{reason}"
            );
            assert_eq!(after_secs, 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.deliver(&v1), Outcome::Done);
    r.spool.complete(&v1).unwrap();
    assert_eq!(r.deliver(&v2), Outcome::Done);
    let versions: Vec<String> = r
        .seen()
        .iter()
        .map(|s| {
            let t: Value = serde_json::from_slice(&s.body).unwrap();
            t["identifier"][0]["value"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            v1.body["task"]["identifier"][0]["value"]
                .as_str()
                .unwrap()
                .to_string(),
            v2.body["task"]["identifier"][0]["value"]
                .as_str()
                .unwrap()
                .to_string(),
        ]
    );
}
