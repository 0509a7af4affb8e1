//! Localisation end to end (spec vad-prs-nvi.md section 0, DESIGN.md "PRS /
//! NVI"): a real agent publishing data, and the stand-in OAuth server, PRS
//! and NVI of `np_agent::demo::localisation::standin` over mutual TLS.
//! A published patient is registered once (more records, a Twiin export, a
//! resend, a restart, `kill -9` between the PRS and the NVI call and after
//! the NVI call); withdrawing the last published data removes the referral;
//! outages are retried and refusals end dead with their reason; `np-agent
//! nvi localize` finds our URA; the debug log holds no BSN, blind factor,
//! JWE, pseudonym or token; without prs/nvi partners nothing of it runs.
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
use np_agent::demo::localisation::standin::{Fault, Service, StandIns, thumbprint};
use np_agent::jose::Alg;
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

/// Everything secret the exchange carried: BSNs, tokens, the blinded
/// elements, the JWEs, the blind factors and the pseudonyms. None of it
/// may be in the log, at any level.
fn assert_log_holds_no_secret(site: &Site, log: &str) {
    let mut secrets: Vec<String> = [BSN, OTHER, THIRD].map(String::from).to_vec();
    secrets.extend(site.services.tokens().into_iter().map(|(t, _)| t));
    secrets.extend(site.services.pseudonyms().into_iter().map(|(n, _)| n));
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
            secrets.push(v.to_string());
            let inner: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE.decode(v).unwrap(),
            )
            .unwrap();
            secrets.push(inner["evaluated_output"].as_str().unwrap().to_string());
            secrets.push(inner["blind_factor"].as_str().unwrap().to_string());
        }
    }
    assert!(secrets.len() > 6, "{secrets:?}");
    for secret in secrets {
        // A base64 value is also looked for without its padding, and a
        // long one by a piece of it.
        let needle = secret.trim_end_matches('=');
        let needle = &needle[..needle.len().min(40)];
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            panic!("the log holds a secret ({needle}): {line}");
        }
    }
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
    assert_log_holds_no_secret(&site, &agent.log());
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
    for name in [
        "partner.prs.tls",
        "partner.prs.token",
        "partner.nvi.tls",
        "partner.nvi.token",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name}:\n{out}"));
        assert!(line.starts_with("OK"), "{line}");
    }
    let tokens = site.services.tokens();
    assert_eq!(tokens.len(), 2, "one token per service");
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
