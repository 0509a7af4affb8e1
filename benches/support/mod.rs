//! What partners and the EHR send an agent in the benches, shared by the
//! `cargo bench` tables and `bench/run`: token requests with fresh
//! assertions, export files, Mitz consent notifications, and the sender's
//! outbox intake run in process. [`raw`] holds the machine's own limits
//! (ring signatures, durable writes) that the figures are divided by.
//!
//! Use with `mod common;` (the integration-test helpers) beside
//! `#[path = "support/mod.rs"] mod support;` in a bench.
#![allow(dead_code)]

pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use np_agent::audit::AuditLog;
use np_agent::cases::CaseStore;
use np_agent::config::{self, Config, Vars};
use np_agent::ids::{Bsn, OrgId};
use np_agent::jose::SigningKey;
use np_agent::oauth::TokenStore;
use np_agent::oauth::client::{Purpose, TokenClient};
use np_agent::pki::TlsFiles;
use np_agent::records::RecordStore;
use np_agent::sender::{ScanReport, Sender};
use np_agent::spool::Spool;
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{random, time::now_unix};
use serde_json::{Value, json};

use crate::common::agent::{AgentProcess, AgentSetup, Party, World};
use crate::common::folders;

/// A jwt-bearer token request as a Twiin partner sends it: a client
/// assertion and an authorization assertion, both freshly signed (new `jti`,
/// `iat` now, 60 s life), so the agent's replay check accepts every one.
pub struct TokenRequest {
    pub client: String,
    pub authz: String,
}

impl TokenRequest {
    /// `party`'s assertions for the token endpoint `endpoint` of the agent
    /// with URA `authorizer_ura`; `issuer` is the party's issuer URL.
    pub fn new(
        party: &Party,
        key: &SigningKey,
        issuer: &str,
        endpoint: &str,
        authorizer_ura: &str,
    ) -> TokenRequest {
        let now = now_unix();
        let sign = |sub: &str, extra: serde_json::Value| {
            let mut c = json!({"iss": issuer, "sub": sub, "aud": endpoint,
                "iat": now, "exp": now + 60, "jti": random::uuid_v4().unwrap()});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            key.sign_jwt(c.to_string().as_bytes()).unwrap()
        };
        TokenRequest {
            client: sign(&format!("{}-client", party.name), json!({})),
            authz: sign(
                &format!("urn:oid:2.16.528.1.1007.3.3.{}", party.ura),
                json!({"authorizer": format!("urn:oid:2.16.528.1.1007.3.3.{authorizer_ura}")}),
            ),
        }
    }

    /// The `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> String {
        format!(
            "grant_type={}&assertion={}&client_assertion_type={}&client_assertion={}",
            encode("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            self.authz,
            encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            self.client
        )
    }

    /// POSTs the request over `http` and returns the status (the body is read).
    pub fn post(&self, http: &ureq::Agent, endpoint: &str) -> u16 {
        let resp = http
            .post(endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(self.form().as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().read_to_vec().unwrap();
        status
    }
}

/// A small valid export for case `i`: an STU3 Bundle with a Patient, a
/// Condition and an Observation.
pub fn export_json(i: usize) -> String {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": format!("p{i}"),
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999151"}]}},
        {"resource": {"resourceType": "Condition", "id": format!("c{i}"), "clinicalStatus": "active",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "subject": {"reference": format!("Patient/p{i}")}}},
        {"resource": {"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": format!("Patient/p{i}")},
            "valueQuantity": {"value": 71.5, "unit": "kg"}}}
    ]})
    .to_string()
}

/// Writes exports `first..first + n` (`case-<i>.json`) into `dir` the way an
/// EHR must (temp name, then rename).
pub fn drop_exports(dir: &Path, first: usize, n: usize) {
    for i in first..first + n {
        folders::export(dir, &format!("case-{i}.json"), export_json(i).as_bytes());
    }
}

/// The sender of agent `hospa` run in this process over its own state
/// directory, with one Twiin partner `hospb` (never contacted: only the
/// intake runs here).
pub struct OutboxRig {
    pub sender: Sender,
    /// `NP_OUTBOX/hospb`.
    pub outbox: PathBuf,
    pub state: PathBuf,
}

impl OutboxRig {
    pub fn new(world: &World, root: &Path) -> OutboxRig {
        let setup = AgentSetup::new(world, root, "hospa", "12345678");
        let mut v = Vars::new();
        for (k, val) in &setup.env.vars {
            v.insert(k.clone(), (val.clone(), None));
        }
        for (k, val) in [
            ("NP_PARTNERS", "hospb"),
            ("NP_PARTNER_HOSPB_FHIR_BASE", "https://localhost:1/fhir"),
            ("NP_PARTNER_HOSPB_ORG", "ura:87654321"),
            ("NP_PARTNER_HOSPB_CERT", "ura:87654321"),
        ] {
            v.insert(k.into(), (val.into(), None));
        }
        let cfg = Arc::new(config::from_vars(&v).unwrap());
        let state = cfg.state_dir.clone();
        std::fs::create_dir_all(&state).unwrap();
        let (spool, _) = Spool::open(&state).unwrap();
        let sender = Sender::new(
            cfg.clone(),
            Arc::new(CaseStore::open(&state).unwrap()),
            Arc::new(RecordStore::open(&state).unwrap()),
            Arc::new(spool),
            Arc::new(TokenStore::open(&state, now_unix()).unwrap()),
            Arc::new(AuditLog::open(&state).unwrap()),
        );
        let outbox = cfg.outbox.join("hospb");
        std::fs::create_dir_all(&outbox).unwrap();
        OutboxRig {
            sender,
            outbox,
            state,
        }
    }

    /// Scans until `n` exports are accepted (none may be refused) and returns
    /// the seconds it took.
    pub fn intake(&self, n: usize) -> f64 {
        let started = std::time::Instant::now();
        let mut accepted = 0;
        let mut passes = 0;
        while accepted < n {
            let r = self.sender.scan(now_unix());
            assert_eq!(r.rejected, 0, "{r:?}");
            accepted += r.accepted;
            passes += 1;
            assert!(passes < 1_000, "stuck at {accepted}/{n}");
        }
        started.elapsed().as_secs_f64()
    }

    /// One scan pass.
    pub fn scan(&self) -> ScanReport {
        self.sender.scan(now_unix())
    }
}

/// The Mitz sample notification with consent time `n` (distinct bytes, a
/// newer consent state each time).
pub fn mitz_notification(n: u64) -> String {
    const SAMPLE: &str = include_str!("../../src/mitz/sample-notification.json");
    SAMPLE.replace(
        "2026-11-18T10:51:16.8967927Z",
        &format!("2026-11-18T10:51:16.{n:07}Z"),
    )
}

/// `threads` client threads, each POSTing `per_thread` distinct
/// notifications ([`mitz_notification`], numbered from `serial`) as
/// `broker` to `url` over one kept-alive connection; returns once every one
/// was answered 200.
pub fn post_mitz_notifications(
    broker: &Arc<Party>,
    url: &str,
    serial: &Arc<std::sync::atomic::AtomicU64>,
    threads: usize,
    per_thread: u64,
) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (broker, url, serial) = (broker.clone(), url.to_string(), serial.clone());
            std::thread::spawn(move || {
                let http = broker.client();
                for _ in 0..per_thread {
                    let n = serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let resp = http
                        .post(&url)
                        .header("Content-Type", "application/fhir+json")
                        .send(mitz_notification(n).as_bytes())
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                    let _ = resp.into_body().read_to_vec().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Files in `dir` whose names do not start with `.`.
pub fn visible_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

/// A case of agent `a` notified to agent `b` and pulled by it, and `b`'s
/// identity (its env file, TLS material and signing key) to get pull
/// tokens for that case the way `b`'s own token client does.
pub struct PulledCase {
    client: TokenClient,
    cfg: Config,
    /// The authorization base `a` gave the case.
    pub base: String,
    bsn: Bsn,
    a_name: String,
    a_ura: String,
    b_ura: String,
}

impl PulledCase {
    /// Drops `export` (patient `bsn`) into `a`'s outbox for `b` and waits
    /// (up to 60 s) until `b`'s inbox holds the pulled Bundle.
    pub fn new(
        a: &AgentSetup,
        b: &AgentSetup,
        agents: &[&AgentProcess],
        export: &[u8],
        bsn: &str,
    ) -> PulledCase {
        folders::export(&a.outbox(&b.name), "case-0.json", export);
        let inbox = folders::wait_files(&b.inbox(&a.name), ".json", 1, agents);
        let bundle: Value = serde_json::from_slice(&std::fs::read(&inbox[0]).unwrap()).unwrap();
        let task = &bundle["entry"][0]["resource"];
        let base = task["input"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"]["coding"][0]["code"] == "authorization-base")
            .and_then(|i| i["valueString"].as_str())
            .unwrap_or_else(|| panic!("no authorization base in the Task: {task}"))
            .to_string();
        let crate::common::agent::AsAgent { cfg, client, .. } = b.as_client();
        PulledCase {
            client,
            cfg,
            base,
            bsn: Bsn::parse(bsn).unwrap(),
            a_name: a.name.clone(),
            a_ura: a.ura.clone(),
            b_ura: b.ura.clone(),
        }
    }

    /// A fresh pull token for the case at `a`, as `b` asks for it.
    pub fn token(&self) -> String {
        let partner = self.cfg.twiin_partner(&self.a_name).unwrap();
        let (me, authorizer) = (
            OrgId::Ura(self.b_ura.clone()),
            OrgId::Ura(self.a_ura.clone()),
        );
        let purpose = Purpose::Pull {
            authorization_base: &self.base,
            requesting: &me,
            authorizer: Some(&authorizer),
            patient: Some(&self.bsn),
        };
        self.client.invalidate(partner, &purpose);
        self.client
            .token(partner, &purpose, now_unix())
            .unwrap()
            .token
    }
}

/// The TLS files an agent was set up with (certificate chain, key, trust).
pub fn tls_files(setup: &AgentSetup) -> TlsFiles {
    let path = |k: &str| PathBuf::from(&setup.env.vars[k]);
    TlsFiles {
        cert: path("NP_TLS_CERT"),
        key: path("NP_TLS_KEY"),
        trust: path("NP_TLS_TRUST"),
        crl_dir: None,
    }
}
