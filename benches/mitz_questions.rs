//! Zorgviewer searches per second with Mitz's closed question on, against
//! a real `np-agent run` process (release build) over kept-alive mTLS.
//!
//! The agent has a Zorgviewer partner (`CONSENT=mitz`) and a Mitz partner
//! with a `URL`: a stand-in Mitz API in this process ([`InstantMitz`]),
//! over mTLS on loopback, that answers every closed question `Permit` at
//! once and every Subscription `201`. So a search asks Mitz unless the
//! agent's decision cache (`NP_MITZ_DECISION_TTL`) answers it; the rows
//! show what asking costs and what the cache saves.
//!
//! The bench publishes [`PATIENTS`] BgZ-like records (those of
//! `benches/zorgviewer.rs`, see `zv_load`) and waits until the agent
//! subscribed each patient at the stand-in. The searches are those of a
//! Zorgviewer screen (`Patient?identifier`, laboratory `Observation`s,
//! `Condition`s, current `DocumentReference`s), each client thread one
//! user session on its own kept-alive connection.
//!
//! Rows, each 5 s:
//! - cold cache, 1/4/16 clients: `NP_MITZ_DECISION_TTL=1s` (the least) and
//!   every request about the next patient of a rotation shared by all
//!   clients, so a patient comes back only after all the others: every
//!   search asks Mitz while the agent answers fewer than [`PATIENTS`]
//!   searches a second (the questions column shows whether it did);
//! - cold cache with the stand-in answering after 20 ms, as Mitz across
//!   the internet would, 16 clients: more questions wait at once, so more
//!   connections to Mitz are open at once than the agent keeps idle;
//! - visits with `TTL=1s`, 16 clients: random patients, four searches
//!   each, so the first search of a screen asks and the other three find
//!   its decision;
//! - warm cache, 1/4/16 clients: after a restart with `TTL=1h` and one pass
//!   over every patient, the same rotation: every decision from the cache;
//! - no consent check, 16 clients: the rotation after a restart with the
//!   Zorgviewer partner's `CONSENT=none`, the baseline.
//!
//! Besides rate and latency each row gives the agent's CPU time per request
//! (user + system from /proc, all threads), the closed questions the
//! stand-in answered during the row, and the TLS connections it accepted.
//! The agent keeps its connections to Mitz alive, at most 4 idle ones; the
//! stand-in (np-agent's own server) closes a connection after 1000
//! requests, so a few new connections per row are expected.
//!
//! `cargo bench --bench mitz_questions` prints a markdown table (about a
//! minute of rows after a few of setup). Without `--bench` (as
//! `cargo test --all-targets` does) it runs a few requests per row as a
//! smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod zv_load;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, Party, World};
use common::observe::{metrics, sample, wait_until};
use np_agent::consent::DATA_CATEGORY;
use np_agent::http::{self, Handler, Request, Response};
use np_agent::jose::Alg;
use np_agent::mitz::closed::request::{
    CATEGORY_ACTION, DATA_CATEGORY_SYSTEM, EVENT_CODE, HL7_NS, SOAP_NS, WSA_NS, XACML_NS,
};
use np_agent::ops::metrics::{CONNECTIONS_ACCEPTED, Metrics};
use np_agent::pki::{self, MinVersion};
use zv_load::{A_URA, BROKER_URA, Row, ZV_URA, ZvClient, measure, publish};

/// Published patients, one record each: the rotation's length, so more than
/// the agent answers searches in a second. Also more than its parsed-data
/// cache holds (64 MiB of record files), so in every row each search reads
/// and parses its record file, as for most patients at a hospital.
const PATIENTS: usize = 2000;
/// A round trip to Mitz over the internet, for one row: the stand-in's
/// answers are otherwise immediate.
const WAN_DELAY: Duration = Duration::from_millis(20);
/// The Mitz API base path on the stand-in (Mitz TST's).
const BASE_PATH: &str = "/tst-us/mitz/";
/// `wsa:Action` of Mitz's answer.
const ACTION_RESPONSE: &str = "http://schemas.otv.nl/toestemmingsregister/XACMLAuthzDecisionQuery/IGeslotenAutorisatievraagService/XACMLAuthzDecisionQueryResponse";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let patients = if full { PATIENTS } else { 8 };
    let budget = if full {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let tmp = TempDir::new("bench-mitz-questions");
    let world = World::new();
    let zv = Arc::new(Party::new(&world, tmp.path(), "zv", ZV_URA, &[Alg::Rs384]));
    let mitz = Party::new(&world, tmp.path(), "mitz", BROKER_URA, &[]);
    let stand_in = InstantMitz::start(&mitz);
    let jwks = zv.serve_jwks();
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
    a.add_zorgviewer(&zv, &jwks);
    a.add_mitz(&mitz);
    a.env
        .set("NP_PARTNER_MITZ_URL", stand_in.base_url())
        .set("NP_ORG_CATEGORY", "Z3")
        .set("NP_MITZ_DECISION_TTL", "1s")
        .set("NP_POLL_INTERVAL", "1s")
        .set("NP_LOG", "warn");
    let mut pa = a.start();
    let people = publish(&a, &pa, patients);
    wait_subscribed(&a, &pa, &stand_in, patients);

    println!(
        "| what | client threads | requests | seconds | requests/s | p50 (ms) | p99 (ms) | agent CPU per request (µs) | closed questions | questions per request | Mitz TLS connections |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let runs: &[usize] = if full { &[1, 4, 16] } else { &[1] };
    let busiest = *runs.last().unwrap();
    let turn = Arc::new(AtomicUsize::new(0));

    // Cold: every search about another patient than the last PATIENTS - 1.
    let client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
    for &threads in runs {
        let row = stand_in
            .counting(|| measure(&pa, threads, budget, |i| client.rotation(i, turn.clone())));
        row.print("cold cache (TTL 1s), every search another patient", threads);
    }
    stand_in.set_delay(WAN_DELAY);
    let row =
        stand_in.counting(|| measure(&pa, busiest, budget, |i| client.rotation(i, turn.clone())));
    row.print(
        &format!(
            "cold cache (TTL 1s), Mitz answering after {} ms",
            WAN_DELAY.as_millis()
        ),
        busiest,
    );
    stand_in.set_delay(Duration::ZERO);
    let row = stand_in.counting(|| measure(&pa, busiest, budget, |i| client.session(i)));
    row.print("visits (TTL 1s), four searches per patient", busiest);

    // Warm: every patient's decision kept, asked once before the rows.
    assert!(pa.stop().success());
    a.env.set("NP_MITZ_DECISION_TTL", "1h");
    pa = a.start();
    let client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
    let before = stand_in.questions();
    one_pass(&client, &turn, patients);
    assert!(
        stand_in.questions() - before >= patients as u64,
        "the pass asked for every patient"
    );
    for &threads in runs {
        let row = stand_in
            .counting(|| measure(&pa, threads, budget, |i| client.rotation(i, turn.clone())));
        row.print("warm cache (TTL 1h), every search another patient", threads);
    }

    // The baseline: no consent check at all.
    assert!(pa.stop().success());
    a.env.set("NP_PARTNER_ZV_CONSENT", "none");
    pa = a.start();
    let client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
    let row =
        stand_in.counting(|| measure(&pa, busiest, budget, |i| client.rotation(i, turn.clone())));
    row.print("no consent check, every search another patient", busiest);
    assert!(pa.stop().success());
}

/// Waits until the agent subscribed every published patient at the
/// stand-in and its spool is idle again, so no background work runs into
/// the rows.
fn wait_subscribed(a: &AgentSetup, pa: &AgentProcess, stand_in: &InstantMitz, n: usize) {
    let idle = || {
        let text = metrics(a.admin_port);
        ["queued", "in_flight", "retry"].iter().all(|state| {
            sample(&text, &format!("np_spool_items{{state=\"{state}\"}}")).unwrap_or(0.0) == 0.0
        })
    };
    wait_until(
        Duration::from_secs(300),
        || stand_in.subscriptions() >= n as u64 && idle(),
        || {
            format!(
                "{} of {n} subscriptions, spool busy:\n{}",
                stand_in.subscriptions(),
                pa.log()
            )
        },
    );
}

/// Four clients through the rotation until it came round once: one search
/// per patient.
fn one_pass(client: &ZvClient, turn: &Arc<AtomicUsize>, patients: usize) {
    let end = turn.load(Ordering::Relaxed) + patients;
    std::thread::scope(|s| {
        for i in 0..4 {
            let mut one = client.rotation(i, turn.clone());
            s.spawn(move || {
                while turn.load(Ordering::Relaxed) < end {
                    one();
                }
            });
        }
    });
}

/// A row with what the stand-in saw meanwhile.
struct Counted {
    row: Row,
    questions: u64,
    connections: u64,
}

impl Counted {
    fn print(&self, what: &str, threads: usize) {
        let r = &self.row;
        println!(
            "| {what} | {threads} | {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {:.2} | {} |",
            r.requests,
            r.secs,
            r.rate(),
            r.percentile_ms(0.50),
            r.percentile_ms(0.99),
            r.cpu_micros(),
            self.questions,
            self.questions as f64 / r.requests as f64,
            self.connections
        );
    }
}

/// A stand-in Mitz API on `np_agent::http::Server` over mTLS: the closed
/// question answered `Permit` for the category we ask, relating to the
/// question's `MessageID`, as Mitz answers (no checks, no delay); a
/// Subscription answered `201` with a `Location`. Counts both; stops when
/// dropped.
struct InstantMitz {
    server: Option<http::Server>,
    port: u16,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Counts {
    questions: AtomicU64,
    subscriptions: AtomicU64,
    /// How long a question waits for its answer, milliseconds.
    delay_ms: AtomicU64,
}

impl InstantMitz {
    /// Serves with `party`'s certificate on a free loopback port, requiring
    /// client certificates of the same test CA.
    fn start(party: &Party) -> InstantMitz {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let metrics = Arc::new(Metrics::new());
        let cfg = pki::server_config(&party.material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(cfg)),
            Arc::new(Answers {
                counts: counts.clone(),
            }),
            http::Limits::default(),
            metrics.clone(),
        )
        .unwrap();
        InstantMitz {
            server: Some(server),
            port,
            counts,
            metrics,
        }
    }

    /// The Mitz API base (what `NP_PARTNER_<NAME>_URL` names).
    fn base_url(&self) -> String {
        format!("https://localhost:{}{BASE_PATH}", self.port)
    }

    /// Answers questions after `delay` from now on.
    fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.counts.delay_ms.store(ms, Ordering::Relaxed);
    }

    fn questions(&self) -> u64 {
        self.counts.questions.load(Ordering::Relaxed)
    }

    fn subscriptions(&self) -> u64 {
        self.counts.subscriptions.load(Ordering::Relaxed)
    }

    fn connections(&self) -> u64 {
        self.metrics.get(CONNECTIONS_ACCEPTED, &[])
    }

    /// Runs `f`, with the questions and connections the stand-in got meanwhile.
    fn counting(&self, f: impl FnOnce() -> Row) -> Counted {
        let (questions, connections) = (self.questions(), self.connections());
        let row = f();
        Counted {
            row,
            questions: self.questions() - questions,
            connections: self.connections() - connections,
        }
    }
}

impl Drop for InstantMitz {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

struct Answers {
    counts: Arc<Counts>,
}

impl Handler for Answers {
    fn handle(&self, req: &Request) -> Response {
        let Some(path) = req.path.strip_prefix(BASE_PATH) else {
            return Response::new(404);
        };
        if req.method != "POST" {
            return Response::new(405);
        }
        if path == np_agent::mitz::closed::PATH {
            let Some(message_id) = message_id(&req.body) else {
                return Response::text(400, "no wsa:MessageID");
            };
            self.counts.questions.fetch_add(1, Ordering::Relaxed);
            let delay = self.counts.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            return Response::new(200)
                .body("application/soap+xml; charset=utf-8", permit(message_id));
        }
        if Some(path) == np_agent::mitz::subscription::PATH.strip_prefix('/') {
            let n = self.counts.subscriptions.fetch_add(1, Ordering::Relaxed) + 1;
            return Response::new(201).header(
                "Location",
                format!("{BASE_PATH}abonnementen/fhir/Subscription/bench-{n}"),
            );
        }
        Response::new(404)
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "mitz"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

/// The text of the question's `wsa:MessageID` (`urn:uuid:…`), when it is
/// one a `RelatesTo` can repeat as it is.
fn message_id(body: &[u8]) -> Option<&str> {
    let xml = std::str::from_utf8(body).ok()?;
    let element = &xml[xml.find("MessageID")?..];
    let text = &element[element.find('>')? + 1..];
    let id = text[..text.find('<')?].trim();
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-')
        .then_some(id)
}

/// Mitz's answer: one `Result`, `Permit`, echoing the category.
fn permit(message_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP_NS}" xmlns:a="{WSA_NS}"><s:Header><a:Action s:mustUnderstand="1">{ACTION_RESPONSE}</a:Action><a:RelatesTo>{message_id}</a:RelatesTo></s:Header><s:Body><Response xmlns="{XACML_NS}"><Result><Decision>Permit</Decision><Attributes Category="{CATEGORY_ACTION}" xml:id="action0"><Attribute AttributeId="{EVENT_CODE}" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#CV"><ns9:CodedValue code="{DATA_CATEGORY}" codeSystem="{DATA_CATEGORY_SYSTEM}" xmlns:ns9="{HL7_NS}"/></AttributeValue></Attribute></Attributes></Result></Response></s:Body></s:Envelope>"#
    )
}
