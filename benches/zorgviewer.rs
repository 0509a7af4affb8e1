//! Zorgviewer searches per second against a real `np-agent run` process
//! (release build) over kept-alive mTLS, beside Twiin reads of the same
//! agent, so the two can be compared.
//!
//! The agent has a Zorgviewer partner (`CONSENT=mitz`, the default), a Mitz
//! broker and another real agent as Twiin partner. The bench publishes
//! [`PATIENTS`] BgZ-like records (31 resources of 10 types each, three PDF
//! documents; about 75 KB of JSON), sends one Mitz permit per patient as
//! the broker, checks that nothing was served before it and everything
//! after, and gets a `client_credentials` token. Each client thread is one Zorgviewer user
//! session: its own kept-alive connection, its own `X-Correlation-Id`, the
//! `X-ZV-*` headers and an `X-ZV-Context` it signs once and reuses for four
//! of its five minutes, as a real client does. A session visits random
//! patients; a visit is the four searches of a Zorgviewer screen:
//! `Patient?identifier=<BSN>`, `Observation?patient&category=laboratory`,
//! `Condition?patient`, `DocumentReference?patient&status=current`. Every
//! request verifies the context's signature, asks the consent view, serves
//! from the published record and writes one audit record (fdatasync).
//!
//! Rows: the mix with 1, 4 and 16 clients; the mix with the context signed
//! ES384 instead of RS384; Twiin reads (`GET /fhir/Condition/<id>` with a
//! pull token) with 1, 4 and 16 clients; and the mix after a restart with
//! `CONSENT=none`. Besides rate and latency each row gives the agent's CPU
//! time per request (user + system from /proc, all threads), which other
//! load on the machine disturbs less than the rate.
//!
//! `cargo bench --bench zorgviewer` prints a markdown table (about a
//! minute). Without `--bench` (as `cargo test --all-targets` does) it runs a
//! few requests per row as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod zv_load;

use std::sync::Arc;
use std::time::Duration;

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, Party, World};
use common::folders::{export, wait_files};
use np_agent::config::{self, Source};
use np_agent::http::client::ClientTimeouts;
use np_agent::http::partners::Partners;
use np_agent::ids::{Bsn, OrgId};
use np_agent::jose::{Alg, SigningKey};
use np_agent::oauth::client::{Purpose, TokenClient};
use np_agent::pki::{self, MinVersion, TlsMaterial};
use np_agent::util::time::now_unix;
use serde_json::Value;
use zv_load::{
    A_URA, BROKER_URA, Person, TWIIN_BSN, ZV_URA, ZvClient, contains, entries, measure,
    patient_search, publish, record,
};

const B_URA: &str = "87654321";
const MITZ_SAMPLE: &str = include_str!("../src/mitz/sample-notification.json");
/// Published patients: more than the agent keeps parsed in memory, as at a
/// hospital, so the first search of most visits reads its record from disk.
const PATIENTS: usize = 500;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let patients = if full { PATIENTS } else { 3 };
    let budget = if full {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let tmp = TempDir::new("bench-zorgviewer");
    let world = World::new();
    let zv = Arc::new(Party::new(
        &world,
        tmp.path(),
        "zv",
        ZV_URA,
        &[Alg::Rs384, Alg::Es384],
    ));
    let broker = Party::new(&world, tmp.path(), "broker", BROKER_URA, &[]);
    let jwks = zv.serve_jwks();
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
    let mut b = AgentSetup::new(&world, tmp.path(), "hospb", B_URA);
    a.add_zorgviewer(&zv, &jwks);
    a.add_mitz(&broker);
    a.add_agent(&b);
    b.add_agent(&a);
    for s in [&mut a, &mut b] {
        s.env.set("NP_POLL_INTERVAL", "1s").set("NP_LOG", "warn");
    }
    let pb = b.start();
    let mut pa = a.start();

    // The Zorgviewer side: published records, then no data before consent.
    let people = publish(&a, &pa, patients);
    let zv_client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
    let first = &people[0];
    let (status, body) = zv_client.get(
        &zv.client(),
        &patient_search(&first.bsn),
        &zv_client.context(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(entries(&body), 0, "served before consent: {body}");
    permit(&a, &pa, &broker, &people);
    zv_client.check_all();

    // The Twiin side: one case notified to B and pulled by it; B's identity
    // then gets a pull token of its own.
    let twiin = TwiinCase::new(&a, &b, &pa, &pb);

    println!(
        "| what | client threads | requests | seconds | requests/s | p50 (ms) | p99 (ms) | agent CPU per request (µs) | agent RSS after (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let runs: &[usize] = if full { &[1, 4, 16] } else { &[1] };
    let busiest = *runs.last().unwrap();
    for &threads in runs {
        let client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
        let row = measure(&pa, threads, budget, |i| client.session(i));
        row.print("Zorgviewer mix, consent mitz", threads, &pa);
    }
    let client = ZvClient::new(&zv, &a, Alg::Es384, &people);
    let row = measure(&pa, busiest, budget, |i| client.session(i));
    row.print("Zorgviewer mix, consent mitz, context ES384", busiest, &pa);
    for &threads in runs {
        let client = twiin.client(&a);
        let row = measure(&pa, threads, budget, |_| client.session());
        row.print("Twiin read `Condition/<id>`, pull token", threads, &pa);
    }

    // The same mix without the consent check.
    assert!(pa.stop().success());
    a.env.set("NP_PARTNER_ZV_CONSENT", "none");
    pa = a.start();
    let client = ZvClient::new(&zv, &a, Alg::Rs384, &people);
    client.check_all();
    let row = measure(&pa, busiest, budget, |i| client.session(i));
    row.print("Zorgviewer mix, consent none", busiest, &pa);

    assert!(pa.stop().success());
    assert!(pb.stop().success());
}

/// One Mitz permit (GGC002, RPZAC104) per patient, POSTed as the broker;
/// waits until every one is in the consent view's inbox.
fn permit(a: &AgentSetup, pa: &AgentProcess, broker: &Party, people: &[Person]) {
    let http = broker.client();
    let url = a.url("/mitz/fhir");
    for p in people {
        let body = MITZ_SAMPLE.replace("999999151", &p.bsn).replace(
            "\"value\": \"87654321\"",
            &format!("\"value\": \"{A_URA}\""),
        );
        let resp = http
            .post(&url)
            .header("Content-Type", "application/fhir+json")
            .send(body.as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let _ = resp.into_body().read_to_vec().unwrap();
    }
    wait_files(&a.inbox("broker"), "", people.len(), &[pa]);
}

/// A Twiin case of A notified to B, and B's identity to pull it with.
struct TwiinCase {
    client: TokenClient,
    tls: Arc<rustls::ClientConfig>,
    cfg: config::Config,
    base: String,
    bsn: Bsn,
}

impl TwiinCase {
    fn new(a: &AgentSetup, b: &AgentSetup, pa: &AgentProcess, pb: &AgentProcess) -> TwiinCase {
        let bsn = Bsn::parse(TWIIN_BSN).unwrap();
        let person = Person {
            bsn: bsn.as_str().to_string(),
            id: "tw-1".into(),
        };
        export(
            &a.outbox("hospb"),
            "case-1.json",
            record(&person).to_string().as_bytes(),
        );
        let inbox = wait_files(&b.inbox("hospa"), ".json", 1, &[pa, pb]);
        let pulled: Value = serde_json::from_slice(&std::fs::read(&inbox[0]).unwrap()).unwrap();
        let base = pulled["entry"][0]["resource"]["input"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"]["coding"][0]["code"] == "authorization-base")
            .and_then(|i| i["valueString"].as_str())
            .unwrap()
            .to_string();
        let cfg = config::load(&Source::File(b.env_file())).unwrap();
        let material = TlsMaterial::load(&pki::TlsFiles {
            cert: cfg.tls_cert.clone(),
            key: cfg.tls_key.clone(),
            trust: cfg.tls_trust.clone(),
            crl_dir: None,
        })
        .unwrap();
        let tls = pki::client_config(&material, MinVersion::Tls13).unwrap();
        let key = SigningKey::from_pkcs8_pem(&b.signing_pem, Alg::Es256, None).unwrap();
        let client = TokenClient::new(
            Arc::new(cfg.clone()),
            Arc::new(key),
            Arc::new(Partners::new(tls.clone(), ClientTimeouts::default())),
        );
        TwiinCase {
            client,
            tls,
            cfg,
            base,
            bsn,
        }
    }

    /// A fresh pull token for the case, shared by the sessions of one row.
    fn client(&self, a: &AgentSetup) -> TwiinClient {
        let partner = self.cfg.twiin_partner("hospa").unwrap();
        let (me, them) = (OrgId::Ura(B_URA.into()), OrgId::Ura(A_URA.into()));
        let purpose = Purpose::Pull {
            authorization_base: &self.base,
            requesting: &me,
            authorizer: Some(&them),
            patient: Some(&self.bsn),
        };
        self.client.invalidate(partner, &purpose);
        let token = self.client.token(partner, &purpose, now_unix()).unwrap();
        TwiinClient {
            tls: self.tls.clone(),
            token: Arc::new(token.token),
            url: Arc::new(a.url("/fhir/Condition/tw-1-cond-0")),
        }
    }
}

struct TwiinClient {
    tls: Arc<rustls::ClientConfig>,
    token: Arc<String>,
    url: Arc<String>,
}

impl TwiinClient {
    /// A kept-alive connection reading the case's first Condition.
    fn session(&self) -> impl FnMut() + Send + 'static {
        let http = np_agent::http::client::agent(self.tls.clone(), ClientTimeouts::default());
        let (token, url) = (self.token.clone(), self.url.clone());
        move || {
            let resp = http
                .get(url.as_str())
                .header("Accept", "application/fhir+json")
                .header("Authorization", format!("Bearer {token}"))
                .call()
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().read_to_vec().unwrap();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert!(contains(&body, b"\"tw-1-cond-0\""));
        }
    }
}
