//! Localisation end to end (spec vad-prs-nvi.md section 0, DESIGN.md "PRS /
//! NVI"): a real agent publishing data, and the stand-in OAuth server, PRS
//! and NVI of `np_agent::demo::localisation::standin` over mutual TLS.
//! A published patient is registered once (more records, a Twiin export, a
//! resend, a restart, `kill -9` between the PRS and the NVI call and after
//! the NVI call); withdrawing the last published data removes the referral;
//! outages are retried and refusals end dead with their reason; `np-agent
//! nvi register|deregister|localize` work through the binary; the debug log
//! holds no BSN, blind factor, JWE, pseudonym or token; without prs/nvi
//! partners nothing of it runs. The stand-ins themselves are held to what
//! the tests rely on: tokens bound to the certificate they were asked over,
//! one point per BSN whatever the blind, another point for another scope.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World};
use common::folders::export;
use common::observe::{events, wait_until};
use np_agent::demo::localisation::standin::{
    Fault, NVI_OIN, PSEUDONYM_SCOPE, Service, StandIns, thumbprint,
};
use np_agent::ids::Bsn;
use np_agent::jose::Alg;
use np_agent::nvi::oprf::{self, Recipient};
use np_agent::spool::{Spool, State};
use np_agent::util::time::{date, now_unix};
use serde_json::{Value, json};

const URA: &str = "12345678";
const OIN: &str = "00000001123456780000";
const SOURCE_ID: &str = "2.16.528.1.1007.3.3.12345678.1";
const BSN: &str = "999911120";
const OTHER: &str = "999999151";
const THIRD: &str = "999999163";
const LIMIT: Duration = Duration::from_secs(60);

/// Hospital A with Zorgviewer partner `zv`, Twiin partner `hospb`, and the
/// stand-ins as partners `prs` and `nvi`.
struct Site {
    setup: AgentSetup,
    services: StandIns,
    _jwks: JwksServer,
    tmp: TempDir,
    world: World,
}

impl Site {
    fn new(label: &str, api: &str) -> Site {
        let tmp = TempDir::new(label);
        let world = World::new();
        let zv = Party::new(&world, tmp.path(), "zv", "33334444", &[Alg::Es384]);
        let jwks = zv.serve_jwks();
        let hospb = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
        let gf = Party::new(&world, tmp.path(), "gf", "90000099", &[]);
        let services = StandIns::start(&gf.material).unwrap();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", URA);
        setup
            .env
            .set("NP_POLL_INTERVAL", "1s")
            .set("NP_RETRY_FIRST", "1s")
            .set("NP_CIRCUIT_COOLDOWN", "1s");
        setup.add_zorgviewer(&zv, &jwks);
        setup.add_partner(&hospb, &jwks);
        add_localisation(&mut setup, &services, api);
        Site {
            setup,
            services,
            _jwks: jwks,
            tmp,
            world,
        }
    }

    /// The EHR publishes record `id` of `bsn` to `zv`.
    fn publish(&self, id: &str, bsn: &str) {
        export(
            &self.setup.outbox("zv"),
            &format!("{id}.json"),
            bundle(bsn, id).to_string().as_bytes(),
        );
    }

    /// The EHR exports case `id` of `bsn` to Twiin partner `hospb`.
    fn export_case(&self, id: &str, bsn: &str) {
        export(
            &self.setup.outbox("hospb"),
            &format!("{id}.json"),
            bundle(bsn, id).to_string().as_bytes(),
        );
    }

    fn cancel(&self, partner: &str, id: &str) {
        export(&self.setup.outbox(partner), &format!("{id}.cancel"), b"");
    }

    fn state(&self) -> PathBuf {
        self.setup.dir.join("state")
    }

    fn np(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_np-agent"))
            .args(args)
            .arg("--env-file")
            .arg(self.setup.env_file())
            .output()
            .unwrap()
    }

    fn dead(&self) -> Vec<np_agent::spool::Item> {
        let spool = Spool::at(&self.state()).unwrap();
        spool
            .ids(State::Dead)
            .unwrap()
            .into_iter()
            .map(|id| spool.load(State::Dead, &id).unwrap())
            .collect()
    }

    fn audit(&self, action: &str) -> Vec<Value> {
        let path = self
            .state()
            .join("audit")
            .join(format!("{}.jsonl", date(now_unix())));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["action"] == action)
            .collect()
    }

    /// Registrations the NVI received (`POST`s that created or found one).
    fn registrations(&self) -> usize {
        self.services
            .requests_to(Service::Nvi)
            .iter()
            .filter(|s| s.method == "POST" && s.path != "/localize")
            .count()
    }

    /// `np-agent nvi localize --bsn <bsn> --json`.
    fn localized(&self, bsn: &str) -> Vec<Value> {
        let o = self.np(&["nvi", "localize", "--bsn", bsn, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn add_localisation(setup: &mut AgentSetup, services: &StandIns, api: &str) {
    let names = setup
        .env
        .vars
        .get("NP_PARTNERS")
        .cloned()
        .unwrap_or_default();
    let names = if names.is_empty() {
        "prs,nvi".to_string()
    } else {
        format!("{names},prs,nvi")
    };
    setup.env.set("NP_PARTNERS", names);
    for (k, v) in services.env(api, OIN, SOURCE_ID) {
        setup.env.set(&k, v);
    }
}

fn bundle(bsn: &str, id: &str) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": format!("p-{bsn}"),
         "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]}},
        {"resource": {"resourceType": "Condition", "id": format!("c-{id}")}}
    ]})
}

fn wait_logged(agent: &AgentProcess, event: &str, with: &[(&str, &str)], n: usize) {
    wait_until(
        LIMIT,
        || events(&agent.log(), event, with).len() >= n,
        || format!("{n} x {event} {with:?}:\n{}", agent.log()),
    );
}

/// What the exchange carried that only the services may see: tokens, the
/// blinded elements, the JWEs, the blind factors and the pseudonyms.
fn exchanged_secrets(site: &Site) -> Vec<String> {
    let mut secrets = Vec::new();
    secrets.extend(site.services.tokens().into_iter().map(|(t, _)| t));
    secrets.extend(site.services.pseudonyms().into_iter().map(|(n, _)| n));
    // The List subject's value: base64url of the JWE and the blind factor.
    let subject = |v: &str, secrets: &mut Vec<String>| {
        secrets.push(v.to_string());
        let inner: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .unwrap(),
        )
        .unwrap();
        secrets.push(inner["evaluated_output"].as_str().unwrap().to_string());
        secrets.push(inner["blind_factor"].as_str().unwrap().to_string());
    };
    for seen in site.services.requests() {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        for k in ["encryptedPersonalId", "pseudonym", "oprf_key"] {
            if let Some(s) = body[k].as_str() {
                secrets.push(s.to_string());
            }
        }
        if let Some(v) = body
            .pointer("/subject/identifier/value")
            .and_then(Value::as_str)
        {
            subject(v, &mut secrets);
        }
        // A removal or a localisation carries the pseudonym in its query.
        for (k, v) in query_pairs(seen.query.as_deref().unwrap_or_default()) {
            match k.as_str() {
                "pseudonym" | "oprf_key" => secrets.push(v),
                "subject:identifier" => {
                    subject(v.split_once('|').unwrap().1, &mut secrets);
                }
                _ => {}
            }
        }
    }
    assert!(secrets.len() > 3, "{secrets:?}");
    secrets
}

/// What a secret is looked for by: a base64 value without its padding, a
/// long one by its first and its last 40 characters (a JWE's first ones are
/// its header, the same in every JWE).
fn needles(secret: &str) -> Vec<&str> {
    let s = secret.trim_end_matches('=');
    if s.len() <= 40 {
        return vec![s];
    }
    vec![&s[..40], &s[s.len() - 40..]]
}

/// The BSNs and everything of [`exchanged_secrets`]: none of it may be in
/// the log, at any level.
fn assert_log_holds_no_secret(site: &Site, log: &str) {
    let mut secrets: Vec<String> = [BSN, OTHER, THIRD].map(String::from).to_vec();
    secrets.extend(exchanged_secrets(site));
    for needle in secrets.iter().flat_map(|s| needles(s)) {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            panic!("the log holds a secret ({needle}): {line}");
        }
    }
}

/// Nothing of [`exchanged_secrets`] in any file under `NP_STATE_DIR` (the
/// spool and the records hold the BSN, which is state; never the blind
/// factor, the JWE, a token or a pseudonym).
fn assert_state_holds_no_secret(site: &Site) {
    fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                files(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    // The daemon still runs: a file listed may be renamed or removed before
    // it is read (a spool item moving on). Then list again, until one
    // listing reads whole.
    let mut contents = None;
    for _ in 0..50 {
        let mut all = Vec::new();
        let read: Result<Vec<(PathBuf, Vec<u8>)>, _> =
            files(&site.state(), &mut all).and_then(|()| {
                all.into_iter()
                    .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
                    .collect()
            });
        match read {
            Ok(r) => {
                contents = Some(r);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reading the state: {e}"),
        }
    }
    let contents = contents.expect("no listing of the state read whole in 50 tries");
    assert!(
        contents
            .iter()
            .any(|(p, _)| p.starts_with(site.state().join("nvi")))
    );
    let secrets = exchanged_secrets(site);
    for (path, bytes) in contents {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for needle in secrets.iter().flat_map(|s| needles(s)) {
            assert!(
                !text.contains(needle),
                "{} holds a secret ({needle})",
                path.display()
            );
        }
    }
}

/// A query's pairs, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    use np_agent::util::percent;
    percent::split_pairs(query)
        .map(|(k, v)| {
            (
                percent::decode_query(k).unwrap(),
                percent::decode_query(v).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_published_patient_is_registered_once_and_localised() {
    let site = Site::new("nvi-once", "fhir");
    let agent = site.setup.start();
    site.publish("r1", BSN);
    wait_logged(
        &agent,
        "nvi.registered",
        &[("partner", "nvi"), ("status", "201")],
        1,
    );

    // The List as the NVI received it.
    let post = site
        .services
        .requests_to(Service::Nvi)
        .into_iter()
        .find(|s| s.method == "POST")
        .unwrap();
    let list: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(
        list["extension"][0]["valueReference"]["identifier"]["value"],
        URA
    );
    assert_eq!(
        list["source"]["identifier"],
        json!({"system": "urn:ietf:rfc:3986", "value": format!("urn:oid:{SOURCE_ID}")})
    );
    // Tokens: bound to our certificate, organisation per service.
    let ours = {
        use rustls_pki_types::pem::PemObject;
        let path = site.setup.env.vars.get("NP_TLS_CERT").unwrap();
        thumbprint(
            rustls_pki_types::CertificateDer::from_pem_file(path)
                .unwrap()
                .as_ref(),
        )
    };
    let tokens = site.services.tokens();
    let prs = tokens
        .iter()
        .find(|(_, t)| t.scope == ["prs:read"])
        .unwrap();
    assert_eq!(prs.1.organization_id, format!("oin:{OIN}"));
    assert_eq!(prs.1.x5t_s256, ours);
    let nvi = tokens
        .iter()
        .find(|(_, t)| t.scope.contains(&"nvi:create".into()))
        .unwrap();
    assert_eq!(nvi.1.organization_id, URA);
    assert_eq!(nvi.1.source_id.as_deref(), Some(SOURCE_ID));
    assert_eq!(nvi.1.audience, site.services.origin(Service::Nvi));

    // More data of the patient, a Twiin export, a resend, a restart: no
    // second registration.
    site.publish("r2", BSN);
    site.export_case("c1", BSN);
    site.publish("r1", BSN);
    wait_until(
        LIMIT,
        || events(&agent.log(), "record.published", &[]).len() >= 3,
        || agent.log(),
    );
    let log = agent.log();
    agent.stop();
    let agent = site.setup.start();
    site.publish("r3", BSN);
    site.publish("o1", OTHER);
    wait_logged(&agent, "nvi.registered", &[("partner", "nvi")], 1);
    assert_eq!(site.registrations(), 2, "one per patient");
    let held = site.services.held();
    assert_eq!(held.len(), 2);
    assert_ne!(
        held[0].pseudonym, held[1].pseudonym,
        "two patients, two pseudonyms"
    );
    assert!(
        held.iter()
            .all(|h| h.ura == URA && h.source_id == format!("urn:oid:{SOURCE_ID}"))
    );

    // Localisation through a fresh pseudonym finds our URA, and the index
    // derived the same pseudonym from a different blind.
    let found = site.localized(BSN);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["ura"], URA);
    assert_eq!(found[0]["source_id"], format!("urn:oid:{SOURCE_ID}"));
    assert!(found[0]["created_at"].as_str().unwrap().starts_with("20"));
    let derived = site.services.pseudonyms();
    let of_bsn: Vec<&String> = derived
        .iter()
        .filter(|(n, _)| *n == held[0].pseudonym)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        of_bsn.len(),
        2,
        "registered and localised: one pseudonym {derived:?}"
    );
    let o = site.np(&["nvi", "localize", "--bsn", BSN]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with(&format!("{URA} urn:oid:{SOURCE_ID} 20")),
        "{text}"
    );
    assert!(site.localized(THIRD).is_empty());

    let audit = site.audit("nvi.registered");
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["patient"], BSN);
    assert_eq!(audit[0]["outcome"], "success");
    let log = format!("{log}{}", agent.log());
    assert_log_holds_no_secret(&site, &log);
    assert_state_holds_no_secret(&site);
}

#[test]
fn the_json_form_registers_and_a_duplicate_is_done() {
    let site = Site::new("nvi-json", "json");
    let agent = site.setup.start();
    site.publish("r1", BSN);
    wait_logged(&agent, "nvi.registered", &[("status", "200")], 1);
    // A second installation of the same hospital (same URA and source)
    // registers the same patient: the index answers 409, which is done.
    let mut second = AgentSetup::new(&site.world, site.tmp.path(), "hospa2", URA);
    second.env.set("NP_POLL_INTERVAL", "1s");
    second.env.set("NP_PARTNERS", "");
    add_localisation(&mut second, &site.services, "json");
    let other = second.start();
    let o = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["nvi", "register", "--bsn", BSN, "--env-file"])
        .arg(second.env_file())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_logged(&other, "nvi.registered", &[("status", "409")], 1);
    assert_eq!(site.services.held().len(), 1);
    let found = site.localized(BSN);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["ura"], URA);

    // The patient objects: removed (204), and a new record does not
    // register it again until `nvi register`.
    let o = site.np(&["nvi", "deregister", "--bsn", BSN]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_logged(
        &agent,
        "nvi.deregistered",
        &[("status", "204"), ("origin", "objection")],
        1,
    );
    assert!(site.services.held().is_empty());
    site.publish("r2", BSN);
    wait_until(
        LIMIT,
        || events(&agent.log(), "record.published", &[]).len() >= 2,
        || agent.log(),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(site.services.held().is_empty(), "the objection holds");
    let o = site.np(&["nvi", "register", "--bsn", BSN]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_logged(&agent, "nvi.registered", &[("status", "200")], 2);
    assert_eq!(site.services.held().len(), 1);
    assert_log_holds_no_secret(&site, &agent.log());
    assert_state_holds_no_secret(&site);
}

#[test]
fn withdrawing_the_last_published_data_removes_the_referral() {
    let site = Site::new("nvi-withdraw", "fhir");
    let agent = site.setup.start();
    site.publish("r1", BSN);
    site.export_case("c1", BSN);
    wait_logged(&agent, "nvi.registered", &[], 1);
    site.cancel("zv", "r1");
    wait_logged(&agent, "record.withdrawn", &[], 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        site.services.held().len(),
        1,
        "the Twiin case is still live"
    );
    site.cancel("hospb", "c1");
    wait_logged(
        &agent,
        "nvi.deregistered",
        &[("status", "201"), ("origin", "withdrawn")],
        1,
    );
    assert!(site.services.held().is_empty());
    let del = site
        .services
        .requests_to(Service::Nvi)
        .into_iter()
        .find(|s| s.method == "DELETE")
        .unwrap();
    assert!(del.query.unwrap().contains("source:identifier="));
    assert_eq!(site.audit("nvi.deregistered")[0]["patient"], BSN);
    // Published again: registered again, in a new round.
    site.publish("r2", BSN);
    wait_logged(&agent, "nvi.registered", &[], 2);
    assert_eq!(site.services.held().len(), 1);

    // A patient with only a Twiin export: registered, and removed when
    // the case is cancelled.
    site.export_case("c2", OTHER);
    wait_logged(&agent, "nvi.registered", &[], 3);
    assert_eq!(site.services.held().len(), 2);
    site.cancel("hospb", "c2");
    wait_logged(&agent, "nvi.deregistered", &[("origin", "withdrawn")], 2);
    assert_eq!(site.services.held().len(), 1);
    let patients: Vec<Value> = site
        .audit("nvi.deregistered")
        .into_iter()
        .map(|a| a["patient"].clone())
        .collect();
    assert_eq!(patients, [BSN, OTHER]);
    assert_log_holds_no_secret(&site, &agent.log());
    assert_state_holds_no_secret(&site);
}

#[test]
fn outages_are_retried_until_done() {
    let mut site = Site::new("nvi-outage", "fhir");
    let agent = site.setup.start();
    // The PRS is down.
    site.services.stop(Service::Prs);
    site.publish("r1", BSN);
    wait_logged(
        &agent,
        "nvi.attempt_failed",
        &[("step", "evaluate"), ("retry", "true")],
        1,
    );
    site.services.restart(Service::Prs).unwrap();
    wait_logged(&agent, "nvi.registered", &[], 1);
    // The NVI answers 503 twice.
    site.services
        .fault(Service::Nvi, &[Fault::Status(503), Fault::RetryAfter(1)]);
    site.publish("o1", OTHER);
    wait_logged(&agent, "nvi.registered", &[], 2);
    assert!(
        events(
            &agent.log(),
            "nvi.attempt_failed",
            &[("step", "index"), ("retry", "true")]
        )
        .len()
            >= 2
    );
    // The token endpoint refuses.
    site.services
        .fault(Service::OAuth, &[Fault::Status(503), Fault::Status(400)]);
    // The cached tokens must go: a 401 from the PRS makes the agent ask again.
    site.services.fault(Service::Prs, &[Fault::Status(401)]);
    site.publish("t1", THIRD);
    wait_logged(&agent, "nvi.registered", &[], 3);
    assert!(events(&agent.log(), "nvi.attempt_failed", &[("step", "token")]).len() >= 2);
    assert_eq!(site.services.held().len(), 3);
    assert!(site.dead().is_empty());
    // Each attempt evaluated afresh: no pseudonym was sent twice.
    let sent: Vec<Value> = site
        .services
        .requests_to(Service::Nvi)
        .into_iter()
        .filter(|s| s.method == "POST")
        .map(|s| serde_json::from_slice::<Value>(&s.body).unwrap()["subject"].clone())
        .collect();
    assert!(
        sent.len() >= 5,
        "three registrations and two 503s: {}",
        sent.len()
    );
    let distinct: std::collections::BTreeSet<String> = sent.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), sent.len());
    assert_log_holds_no_secret(&site, &agent.log());
}

#[test]
fn refusals_end_dead_with_their_reason_and_one_401_refreshes_the_token() {
    let site = Site::new("nvi-refused", "fhir");
    let agent = site.setup.start();
    // 401 once: a new token, then done.
    site.services.fault(Service::Nvi, &[Fault::Status(401)]);
    site.publish("r1", BSN);
    wait_logged(&agent, "nvi.registered", &[], 1);
    assert_eq!(
        events(&agent.log(), "nvi.token_refreshed", &[("partner", "nvi")]).len(),
        1
    );
    // 401 twice, 400, 422: dead, each with its status in the reason.
    for (i, (bsn, faults)) in [
        (OTHER, vec![Fault::Status(401), Fault::Status(401)]),
        (THIRD, vec![Fault::Status(400)]),
        ("999999175", vec![Fault::Status(422)]),
    ]
    .into_iter()
    .enumerate()
    {
        site.services.fault(Service::Nvi, &faults);
        site.publish(&format!("x{i}"), bsn);
        wait_until(LIMIT, || site.dead().len() > i, || agent.log());
    }
    let mut reasons: Vec<String> = site
        .dead()
        .into_iter()
        .map(|i| i.last_error.unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3);
    for (reason, status) in reasons.iter().zip(["400", "401", "422"]) {
        assert!(
            reason.starts_with(&format!(
                "partner nvi: POST {}/fhir/List answered {status}",
                site.services.origin(Service::Nvi)
            )),
            "{reason}"
        );
    }
    let refused = site.audit("nvi.registered");
    assert_eq!(
        refused.iter().filter(|a| a["outcome"] == "error").count(),
        3
    );
    assert_eq!(site.services.held().len(), 1);

    // The cause put right, `retry-dead` requeues them: registered.
    let o = site.np(&["retry-dead", "--partner", "nvi"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_logged(&agent, "nvi.registered", &[("status", "201")], 4);
    assert_eq!(site.services.held().len(), 4);
    assert!(site.dead().is_empty());
    assert_log_holds_no_secret(&site, &agent.log());
}

/// `kill -9` while the PRS evaluates (before the NVI call), and while the
/// NVI registers (after it): after the restart the patient is registered,
/// and the index holds one referral.
#[test]
fn a_kill_between_the_prs_and_the_nvi_call_registers_once() {
    let site = Site::new("nvi-kill", "fhir");
    let agent = site.setup.start();
    site.services
        .fault(Service::Prs, &[Fault::Delay(Duration::from_secs(2))]);
    site.publish("r1", BSN);
    wait_until(
        LIMIT,
        || site.services.arrived(Service::Prs) >= 1,
        || agent.log(),
    );
    agent.kill9();
    assert_eq!(site.services.arrived(Service::Nvi), 0);
    let agent = site.setup.start();
    wait_logged(&agent, "nvi.registered", &[("status", "201")], 1);
    assert_eq!(site.services.held().len(), 1);
    assert_eq!(site.registrations(), 1);

    // Killed while the NVI registers: it completes the registration; the
    // agent, restarted, registers again and is answered 409: done.
    site.services
        .fault(Service::Nvi, &[Fault::Delay(Duration::from_secs(2))]);
    let before = site.services.arrived(Service::Nvi);
    site.publish("o1", OTHER);
    wait_until(
        LIMIT,
        || site.services.arrived(Service::Nvi) > before,
        || agent.log(),
    );
    agent.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let agent = site.setup.start();
    wait_logged(&agent, "nvi.registered", &[("status", "409")], 1);
    assert_eq!(site.services.held().len(), 2);
}

#[test]
fn without_prs_and_nvi_partners_nothing_of_localisation_runs() {
    let tmp = TempDir::new("nvi-off");
    let world = World::new();
    let zv = Party::new(&world, tmp.path(), "zv", "33334444", &[Alg::Es384]);
    let jwks = zv.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", URA);
    setup.env.set("NP_POLL_INTERVAL", "1s");
    setup.add_zorgviewer(&zv, &jwks);
    let agent = setup.start();
    export(
        &setup.outbox("zv"),
        "r1.json",
        bundle(BSN, "r1").to_string().as_bytes(),
    );
    wait_logged(&agent, "record.published", &[], 1);
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert!(!log.contains("event=nvi."), "{log}");
    let state = setup.dir.join("state");
    assert!(!state.join("nvi").exists());
    let spool = Spool::at(&state).unwrap();
    for s in State::ALL {
        assert!(
            spool
                .ids(s)
                .unwrap()
                .iter()
                .all(|id| !id.starts_with("nvi-"))
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["nvi", "localize", "--bsn", BSN, "--env-file"])
        .arg(setup.env_file())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn doctor_reaches_both_services_and_gets_tokens() {
    let site = Site::new("nvi-doctor", "fhir");
    site.setup.env.write(&site.setup.env_file());
    let o = site.np(&["check-config"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = site.np(&["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name}:\n{out}"))
            .to_string()
    };
    for name in ["partner.prs.tls", "partner.nvi.tls"] {
        // Whatever the certificates' expiry makes doctor say, the
        // handshake works: never a FAIL.
        let l = line(&out, name);
        assert!(l.contains("mutual TLS handshake OK"), "{l}");
        assert!(!l.starts_with("FAIL"), "{l}");
    }
    for name in ["partner.prs.token", "partner.nvi.token"] {
        let l = line(&out, name);
        assert!(l.starts_with("OK"), "{l}");
    }
    let tokens = site.services.tokens();
    assert_eq!(tokens.len(), 2, "one token per service");
    for (token, _) in &tokens {
        assert!(!out.contains(&token[..20]), "doctor shows a token:\n{out}");
    }

    // The OAuth server refuses the PRS's token: that line fails, naming
    // the setting to check; the NVI's still passes.
    site.services.fault(Service::OAuth, &[Fault::Status(400)]);
    let o = site.np(&["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_ne!(o.status.code(), Some(0), "{out}");
    let prs = line(&out, "partner.prs.token");
    assert!(prs.starts_with("FAIL") && prs.contains("400"), "{prs}");
    assert!(prs.contains("NP_PARTNER_PRS_TOKEN_URL"), "{prs}");
    assert!(line(&out, "partner.nvi.token").starts_with("OK"));

    // check-config knows what an nvi partner needs.
    let mut env = site.setup.env.clone();
    env.remove("NP_PARTNER_NVI_OIN").remove("NP_ORG_OIN");
    env.set("NP_PARTNER_NVI_API", "soap");
    let broken = site.tmp.join("broken.env");
    env.write(&broken);
    let o = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["check-config", "--env-file"])
        .arg(&broken)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let out = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(o.status.code(), Some(78), "{out}");
    for key in ["NP_PARTNER_NVI_OIN", "NP_ORG_OIN", "NP_PARTNER_NVI_API"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("config error: {key}:"))),
            "no line for {key}:\n{out}"
        );
    }
}

#[test]
fn np_agent_demo_with_localisation_registers_and_localises() {
    let tmp = TempDir::new("nvi-demo");
    let out = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["demo", "--with-localisation", "--dir"])
        .arg(tmp.join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("one referral, URA 87654321"), "{stdout}");
    assert!(stdout.contains("answered B's URA 87654321"), "{stdout}");
    assert!(stdout.contains("Done:"), "{stdout}");
}

/// `np-agent nvi register --from-file`: one BSN a line, blank lines
/// skipped, a bad line named and skipped (exit 1); each patient registered
/// once, a second run has nothing to do. The usage errors. `nvi localize`
/// in its text form, and under another pseudonym scope, which the index
/// derives to another point and so knows nothing of.
#[test]
fn nvi_register_from_a_file_backfills_each_patient_once() {
    let site = Site::new("nvi-file", "fhir");
    let agent = site.setup.start();
    let file = site.tmp.join("patients.txt");
    std::fs::write(&file, format!("{BSN}\n\n  {OTHER}  \n123456789\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let mut said = String::new();
    let o = site.np(&["nvi", "register", "--from-file", file_arg]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("line 4: not a valid BSN"), "{err}");
    assert!(
        out.starts_with("queued 2 registration(s), 0 with nothing to do"),
        "{out}"
    );
    said.push_str(&err);
    wait_logged(
        &agent,
        "nvi.registered",
        &[("status", "201"), ("origin", "backfill")],
        2,
    );
    assert_eq!(site.services.held().len(), 2);

    // Again, and a publication of one of them: nothing new at the index.
    std::fs::write(&file, format!("{BSN}\n{OTHER}\n")).unwrap();
    let o = site.np(&["nvi", "register", "--from-file", file_arg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.starts_with("queued 0 registration(s), 2 with nothing to do"),
        "{out}"
    );
    site.publish("r1", BSN);
    wait_logged(&agent, "record.published", &[], 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(site.registrations(), 2);

    // Usage errors: 64, nothing queued.
    for args in [
        &["nvi", "register", "--bsn", "123456789"][..],
        &["nvi", "register"],
        &["nvi", "register", "--bsn", BSN, "--from-file", file_arg],
        &["nvi", "deregister"],
        &["nvi", "localize", "--bsn", "12345"],
    ] {
        let o = site.np(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}");
        said.push_str(&String::from_utf8_lossy(&o.stderr));
    }

    // The text form: one line per organisation.
    let o = site.np(&["nvi", "localize", "--bsn", OTHER]);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields[..2], [URA, &format!("urn:oid:{SOURCE_ID}")]);
    assert!(
        fields[2].starts_with("20") && fields[2].ends_with('Z'),
        "{text}"
    );
    said.push_str(&String::from_utf8_lossy(&o.stderr));

    // Another pseudonym scope (one the PRS evaluates for): another point,
    // unknown to the index.
    site.services.register_scope("other");
    let mut env = site.setup.env.clone();
    env.set("NP_PARTNER_NVI_PSEUDONYM_SCOPE", "other");
    let other_env = site.tmp.join("other-scope.env");
    env.write(&other_env);
    let o = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["nvi", "localize", "--bsn", BSN, "--json", "--env-file"])
        .arg(&other_env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
    let (point, call) = site.services.pseudonyms().pop().unwrap();
    assert_eq!(call, "GET /fhir/List");
    let held = site.services.held();
    assert!(held.iter().all(|h| h.pseudonym != point), "{held:?}");
    // The agreed scope again: found.
    assert_eq!(site.localized(BSN).len(), 1);
    let (again, _) = site.services.pseudonyms().pop().unwrap();
    assert!(held.iter().any(|h| h.pseudonym == again));

    said.push_str(&agent.log());
    assert_log_holds_no_secret(&site, &said);
}

/// A party of the world the stand-ins trust asks the OAuth stand-in for a
/// token.
fn token_for(services: &StandIns, party: &Party, scope: &str, org: &str) -> String {
    let body = format!(
        "grant_type=client_credentials&scope={}&target_audience={}&organization_id={}&source_id={SOURCE_ID}",
        scope.replace(' ', "+"),
        services.origin(Service::Nvi),
        org.replace(':', "%3A"),
    );
    let resp = party
        .client()
        .post(services.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = serde_json::from_slice(&resp.into_body().read_to_vec().unwrap()).unwrap();
    assert_eq!(status, 200, "{v}");
    v["access_token"].as_str().unwrap().to_string()
}

/// `POST url` with a JSON body and a bearer token, over `party`'s
/// certificate.
fn post(party: &Party, token: &str, url: &str, body: &Value) -> (u16, Value) {
    let resp = party
        .client()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {token}"))
        .send(body.to_string().as_bytes())
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_vec().unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The `/oprf/eval` body of `bsn` for the stand-in NVI under `scope`,
/// blinded with a fixed seed, and the blind factor.
fn evaluation(bsn: &str, scope: &str, seed: u8) -> (Value, String) {
    let recipient = Recipient::oin(NVI_OIN, scope);
    let x = oprf::input(&Bsn::parse(bsn).unwrap(), &recipient).unwrap();
    let b = oprf::blind(&x, [seed; 64]).unwrap();
    let body = json!({
        "encryptedPersonalId": b.element_wire(),
        "recipientOrganization": format!("oin:{NVI_OIN}"),
        "recipientScope": scope,
    });
    (body, b.factor.to_wire())
}

fn cert_thumbprint(party: &Party) -> String {
    use rustls_pki_types::pem::PemObject;
    thumbprint(
        rustls_pki_types::CertificateDer::from_pem_file(&party.tls.cert)
            .unwrap()
            .as_ref(),
    )
}

/// The stand-in OAuth server binds each token to the certificate it was
/// asked over (`cnf.x5t#S256`); the PRS and the NVI accept it only over
/// that certificate, and only for their own scope.
#[test]
fn the_stand_ins_accept_a_token_only_over_the_certificate_it_is_bound_to() {
    let tmp = TempDir::new("nvi-bound");
    let world = World::new();
    let gf = Party::new(&world, tmp.path(), "gf", "90000099", &[]);
    let ours = Party::new(&world, tmp.path(), "hospa", URA, &[]);
    let theirs = Party::new(&world, tmp.path(), "hospb", "87654321", &[]);
    let services = StandIns::start(&gf.material).unwrap();
    let prs_token = token_for(&services, &ours, "prs:read", &format!("oin:{OIN}"));
    let nvi_token = token_for(&services, &ours, "nvi:create nvi:localize", URA);
    let their_token = token_for(&services, &theirs, "prs:read", "oin:00000001876543210000");
    let issued = services.tokens();
    let bound = |t: &str| {
        issued
            .iter()
            .find(|(k, _)| k == t)
            .unwrap()
            .1
            .x5t_s256
            .clone()
    };
    assert_eq!(bound(&prs_token), cert_thumbprint(&ours));
    assert_eq!(bound(&nvi_token), cert_thumbprint(&ours));
    assert_eq!(bound(&their_token), cert_thumbprint(&theirs));
    assert_ne!(cert_thumbprint(&ours), cert_thumbprint(&theirs));

    let prs = format!("{}/oprf/eval", services.origin(Service::Prs));
    let (body, factor) = evaluation(BSN, PSEUDONYM_SCOPE, 1);
    assert_eq!(
        post(&theirs, &prs_token, &prs, &body).0,
        401,
        "ours, over theirs"
    );
    assert_eq!(
        post(&ours, &their_token, &prs, &body).0,
        401,
        "theirs, over ours"
    );
    assert_eq!(post(&ours, "not-a-token", &prs, &body).0, 401);
    assert_eq!(post(&ours, &nvi_token, &prs, &body).0, 403, "not prs:read");
    let (status, answer) = post(&ours, &prs_token, &prs, &body);
    assert_eq!(status, 200, "{answer}");

    let nvi = format!("{}/registrations", services.origin(Service::Nvi));
    let registration = json!({"pseudonym": answer["jwe"], "oprf_key": factor});
    assert_eq!(post(&theirs, &nvi_token, &nvi, &registration).0, 401);
    assert_eq!(post(&ours, &prs_token, &nvi, &registration).0, 403);
    assert!(services.held().is_empty());
    let (status, held) = post(&ours, &nvi_token, &nvi, &registration);
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["ura_number"], URA);
    assert_eq!(held["source_id"], SOURCE_ID);
}

/// The PRS's key fixed as in the unit tests of `nvi::oprf`: `k` = 7, 42,
/// then zeros (little endian).
const OPRF_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    k[0] = 7;
    k[1] = 42;
    k
};

/// `k·H(x)` for `OPRF_KEY` and `x` the input of BSN 999999151 for
/// `oin:<NVI_OIN>|nvi|v1`: the fixed vector of the `nvi::oprf` unit tests.
const POINT: &str = "e817784d85ac55286e3e2926fce8067eef037092cd88379af076631495aaca1c";

/// Through the stand-in PRS and NVI, with the PRS's key fixed: one BSN,
/// blinded twice, unblinds to the fixed point both times (the second
/// registration is a duplicate, 409); another scope or another BSN gives
/// another point.
#[test]
fn through_the_stand_ins_one_bsn_is_one_point_and_another_scope_or_bsn_another() {
    let tmp = TempDir::new("nvi-points");
    let world = World::new();
    let gf = Party::new(&world, tmp.path(), "gf", "90000099", &[]);
    let ours = Party::new(&world, tmp.path(), "hospa", URA, &[]);
    let services = StandIns::start_with_oprf_key(&gf.material, &OPRF_KEY).unwrap();
    let prs_token = token_for(&services, &ours, "prs:read", &format!("oin:{OIN}"));
    let nvi_token = token_for(&services, &ours, "nvi:create", URA);
    let prs = format!("{}/oprf/eval", services.origin(Service::Prs));
    let nvi = format!("{}/registrations", services.origin(Service::Nvi));
    let register = |bsn: &str, scope: &str, seed: u8| {
        let (body, factor) = evaluation(bsn, scope, seed);
        let (status, answer) = post(&ours, &prs_token, &prs, &body);
        assert_eq!(status, 200, "{answer}");
        let registration = json!({"pseudonym": answer["jwe"], "oprf_key": factor});
        post(&ours, &nvi_token, &nvi, &registration).0
    };
    assert_eq!(register(OTHER, PSEUDONYM_SCOPE, 1), 200);
    assert_eq!(
        register(OTHER, PSEUDONYM_SCOPE, 2),
        409,
        "another blind, the same point: a duplicate"
    );
    let derived = services.pseudonyms();
    assert_eq!(derived.len(), 2);
    assert!(derived.iter().all(|(n, _)| n == POINT), "{derived:?}");

    // Another scope: the PRS has no key of the NVI's for it until one is
    // registered; then another point.
    let (body, _) = evaluation(OTHER, "other", 3);
    assert_eq!(post(&ours, &prs_token, &prs, &body).0, 404);
    services.register_scope("other");
    assert_eq!(register(OTHER, "other", 3), 200);
    assert_eq!(register(THIRD, PSEUDONYM_SCOPE, 4), 200);
    let points: std::collections::BTreeSet<String> =
        services.held().into_iter().map(|h| h.pseudonym).collect();
    assert_eq!(points.len(), 3, "{points:?}");
    assert!(points.contains(POINT));
}
