//! Mitz subscriptions end to end (spec §8, DESIGN `NP_PARTNER_<NAME>_URL`
//! and `np-agent mitz`): a real agent publishing records to a Zorgviewer
//! partner with consent `mitz`, the stand-in Mitz of `tests/common/mitz.rs`
//! over mutual TLS. A published patient is subscribed exactly once (also
//! after more records, a resend and a restart); a `503` and then a `202`
//! end with one recorded subscription; a `400` goes dead with its reason;
//! `np-agent mitz subscribe` back-fills and `np-agent mitz subscriptions`
//! lists; `np-agent doctor` reaches the Mitz API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World, free_port};
use common::folders::{export, wait_files};
use common::mitz::{
    Fault, HOME_COMMUNITY_ID, SOURCE_ID, SUBSCRIPTION_PATH, StandInMitz, notification,
};
use common::observe::{events, wait_until};
use np_agent::jose::Alg;
use np_agent::spool::{Spool, State};
use np_agent::util::time::{date, now_unix};
use serde_json::{Value, json};

/// Our URA.
const URA: &str = "12345678";
const BSN: &str = "999911120";
const OTHER: &str = "999999151";
const LIMIT: Duration = Duration::from_secs(60);

/// An agent (hospital A) with Zorgviewer partner `zv` (consent `mitz`, the
/// default) and the stand-in as Mitz partner `mitz` with a `URL`.
struct Site {
    setup: AgentSetup,
    mitz: StandInMitz,
    _jwks: JwksServer,
    _tmp: TempDir,
}

impl Site {
    fn new(label: &str) -> Site {
        let tmp = TempDir::new(label);
        let world = World::new();
        let zv = Party::new(&world, tmp.path(), "zv", "33334444", &[Alg::Es384]);
        let jwks = zv.serve_jwks();
        let mitz_party = Party::new(&world, tmp.path(), "mitz", "90000017", &[]);
        let mitz = StandInMitz::start(&mitz_party);
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", URA);
        setup
            .env
            .set("NP_POLL_INTERVAL", "1s")
            .set("NP_RETRY_FIRST", "1s");
        setup.add_zorgviewer(&zv, &jwks);
        mitz.configure(&mut setup, "mitz");
        Site {
            setup,
            mitz,
            _jwks: jwks,
            _tmp: tmp,
        }
    }

    /// The EHR publishes record `id` of `bsn` to `zv`.
    fn publish(&self, id: &str, bsn: &str, condition: &str) {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": format!("p-{bsn}"),
             "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]}},
            {"resource": {"resourceType": "Condition", "id": condition}}
        ]});
        export(
            &self.setup.outbox("zv"),
            &format!("{id}.json"),
            bundle.to_string().as_bytes(),
        );
    }

    fn state(&self) -> PathBuf {
        self.setup.dir.join("state")
    }

    /// `np-agent <args> --env-file <ours>`.
    fn np(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_np-agent"))
            .args(args)
            .arg("--env-file")
            .arg(self.setup.env_file())
            .output()
            .unwrap()
    }

    /// Spool item ids in every state.
    fn spool_items(&self) -> Vec<(State, String)> {
        let spool = Spool::at(&self.state()).unwrap();
        State::ALL
            .into_iter()
            .flat_map(|s| spool.ids(s).unwrap().into_iter().map(move |id| (s, id)))
            .collect()
    }

    fn subscription_requests(&self) -> usize {
        self.mitz.requests_to(SUBSCRIPTION_PATH).len()
    }

    fn audit(&self) -> Vec<Value> {
        let path = self
            .state()
            .join("audit")
            .join(format!("{}.jsonl", date(now_unix())));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `np-agent mitz subscriptions --json`.
    fn listed(&self) -> Vec<Value> {
        let o = self.np(&["mitz", "subscriptions", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn wait_logged(agent: &AgentProcess, event: &str, with: &[(&str, &str)], n: usize) {
    wait_until(
        LIMIT,
        || events(&agent.log(), event, with).len() >= n,
        || format!("{n} x {event} {with:?}:\n{}", agent.log()),
    );
}

fn assert_no_bsn(log: &str) {
    for bsn in [BSN, OTHER] {
        if let Some(line) = log.lines().find(|l| l.contains(bsn)) {
            panic!("the log holds a BSN: {line}");
        }
    }
}

#[test]
fn a_published_patient_is_subscribed_exactly_once() {
    let site = Site::new("mitz-sub-once");
    let agent = site.setup.start();
    site.publish("r1", BSN, "c1");
    wait_logged(&agent, "mitz.subscribed", &[("partner", "mitz")], 1);

    // The Subscription as Mitz received it, over mTLS.
    let seen = site.mitz.requests_to(SUBSCRIPTION_PATH);
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.header("content-type"), Some("application/fhir+json"));
    assert!(
        np_agent::util::random::is_uuid(s.header("x-request-id").unwrap()),
        "{:?}",
        s.headers
    );
    let body = s.json();
    assert_eq!(
        body,
        json!({
            "resourceType": "Subscription",
            "meta": {"profile": ["http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription"]},
            "extension": [
                {"url": "http://fhir.nl/StructureDefinition/GatewaySystem",
                 "valueOid": format!("urn:oid:{HOME_COMMUNITY_ID}")},
                {"url": "http://fhir.nl/StructureDefinition/SourceSystem",
                 "valueOid": format!("urn:oid:{SOURCE_ID}")}
            ],
            "status": "requested",
            "reason": "OTV",
            "criteria": format!("Consent?_query=otv&patientid={BSN}&providerid={URA}&providertype=Z3"),
            "channel": {
                "type": "rest-hook",
                "endpoint": site.setup.url("/mitz/fhir"),
                "payload": "application/fhir+json"
            }
        })
    );
    let log = agent.log();
    let line = &events(&log, "mitz.subscribed", &[])[0];
    assert_eq!(
        (
            line.get("status"),
            line.get("subscription"),
            line.get("origin")
        ),
        (Some("201"), Some("p:sub-1"), Some("published")),
        "Mitz's id is logged marked as Mitz's"
    );
    assert_eq!(line.get("rid"), s.header("x-request-id"));

    // More records of the patient, a new version and the same bytes again:
    // published, and nothing more queued or sent.
    site.publish("r1", BSN, "c2");
    site.publish("r2", BSN, "c3");
    wait_logged(&agent, "record.published", &[], 3);
    site.publish("r2", BSN, "c3");
    wait_logged(&agent, "record.published", &[], 4);
    assert_eq!(site.spool_items().len(), 1, "{:?}", site.spool_items());
    assert_eq!(site.subscription_requests(), 1);

    // After a restart, a resend of the record: still one subscription.
    assert!(agent.stop().success());
    let agent = site.setup.start();
    site.publish("r1", BSN, "c2");
    wait_logged(&agent, "record.published", &[], 1);
    assert_eq!(site.spool_items().len(), 1);
    assert_eq!(site.subscription_requests(), 1);

    // Another patient is another subscription.
    site.publish("r3", OTHER, "c4");
    wait_logged(&agent, "mitz.subscribed", &[("subscription", "p:sub-2")], 1);
    assert_eq!(site.subscription_requests(), 2);
    let state = Spool::at(&site.state())
        .unwrap()
        .counts(now_unix())
        .unwrap();
    assert_eq!((state.done, state.dead, state.queued), (2, 0, 0));

    // Recorded, listed (BSN on stdout only), audited with the patient.
    let listed = site.listed();
    let pairs: Vec<(&str, &str, &str, u64)> = listed
        .iter()
        .map(|r| {
            (
                r["partner"].as_str().unwrap(),
                r["patient"].as_str().unwrap(),
                r["subscription"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [("mitz", BSN, "sub-1", 201), ("mitz", OTHER, "sub-2", 201)]
    );
    let o = site.np(&["mitz", "subscriptions"]);
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(o.status.success());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("partner  patient"), "{table}");
    assert!(
        lines[1].starts_with(&format!("mitz     {BSN}  sub-1")) && lines[1].ends_with("201"),
        "{table}"
    );
    let audit = site.audit();
    let audited: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "mitz.subscribed")
        .collect();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert_eq!(
        (
            &audited[0]["outcome"],
            &audited[0]["patient"],
            &audited[0]["object"]
        ),
        (&json!("success"), &json!(BSN), &json!("Subscription/sub-1"))
    );

    // The stand-in, as the broker, notifies on the subscription's channel:
    // the agent stores the notification.
    let bundle = notification(BSN, URA, &["RPZAC104"], "2026-01-02T03:04:05.1234567Z");
    assert_eq!(site.mitz.notify(BSN, &bundle), 200);
    let files = wait_files(&site.setup.inbox("mitz"), ".json", 1, &[&agent]);
    assert_eq!(std::fs::read(&files[0]).unwrap(), bundle);
    assert_no_bsn(&agent.log());
}

#[test]
fn a_503_and_then_a_202_end_with_one_recorded_subscription() {
    let site = Site::new("mitz-sub-503");
    // Mitz holds the patient already (another connector run, say), and is
    // busy once.
    let earlier = site.mitz.preload(BSN, &site.setup.url("/mitz/fhir"));
    site.mitz.fault(SUBSCRIPTION_PATH, &[Fault::RetryAfter(2)]);
    let agent = site.setup.start();
    site.publish("r1", BSN, "c1");
    wait_logged(&agent, "mitz.subscribed", &[("status", "202")], 1);

    let seen = site.mitz.requests_to(SUBSCRIPTION_PATH);
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 202]);
    assert!(
        seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(1900),
        "Retry-After: 2 honoured ({:?})",
        seen[1].at.duration_since(seen[0].at)
    );
    assert_eq!(
        seen[0].json(),
        seen[1].json(),
        "the same Subscription again"
    );
    assert_ne!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id"),
        "a request id per attempt"
    );
    let log = agent.log();
    let failed = events(&log, "mitz.subscribe_failed", &[("partner", "mitz")]);
    assert_eq!(failed.len(), 1, "{log}");
    assert_eq!(
        (failed[0].get("status"), failed[0].get("retry")),
        (Some("503"), Some("true"))
    );
    let subscribed = events(&log, "mitz.subscribed", &[]);
    assert_eq!(subscribed.len(), 1);
    assert_eq!(
        subscribed[0].get("subscription"),
        Some(format!("p:{earlier}").as_str())
    );

    let listed = site.listed();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["subscription"], &listed[0]["status"]),
        (&json!(earlier), &json!(202))
    );
    let counts = Spool::at(&site.state())
        .unwrap()
        .counts(now_unix())
        .unwrap();
    assert_eq!((counts.done, counts.retry, counts.dead), (1, 0, 0));
    assert_no_bsn(&log);
}

#[test]
fn a_refused_subscription_goes_dead_with_its_reason() {
    let site = Site::new("mitz-sub-400");
    site.mitz.fault(
        SUBSCRIPTION_PATH,
        &[Fault::Status {
            status: 400,
            code: "invalid",
            diagnostics: format!("patientid {BSN} is not valid for this connector"),
        }],
    );
    let agent = site.setup.start();
    site.publish("r1", BSN, "c1");
    wait_logged(&agent, "mitz.subscribe_failed", &[("retry", "false")], 1);
    wait_until(
        LIMIT,
        || site.spool_items().iter().any(|(s, _)| *s == State::Dead),
        || agent.log(),
    );

    // `np-agent status` counts it; the item says why.
    let o = site.np(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&status["dead"], &status["done"]), (&json!(1), &json!(0)));
    let (_, id) = site
        .spool_items()
        .into_iter()
        .find(|(s, _)| *s == State::Dead)
        .unwrap();
    let item = Spool::at(&site.state())
        .unwrap()
        .load(State::Dead, &id)
        .unwrap();
    let reason = item.last_error.unwrap();
    assert_eq!(
        reason,
        format!(
            "partner mitz: POST {}{SUBSCRIPTION_PATH} answered 400 (OperationOutcome invalid: patientid <number> is not valid for this connector)",
            site.mitz.base()
        )
    );
    assert_eq!(site.subscription_requests(), 1, "not tried again");
    assert!(site.listed().is_empty(), "nothing recorded");
    let audited: Vec<Value> = site
        .audit()
        .into_iter()
        .filter(|a| a["action"] == "mitz.subscribed")
        .collect();
    assert_eq!(audited.len(), 1);
    assert_eq!(
        (
            &audited[0]["outcome"],
            &audited[0]["patient"],
            &audited[0]["reason"]
        ),
        (&json!("error"), &json!(BSN), &json!(reason))
    );

    // Once the cause is fixed, retry-dead makes it.
    let o = site.np(&["retry-dead", "--partner", "mitz"]);
    assert!(o.status.success());
    wait_logged(&agent, "mitz.subscribed", &[("status", "201")], 1);
    assert_eq!(site.listed().len(), 1);
    assert_no_bsn(&agent.log());
}

#[test]
fn mitz_subscribe_back_fills_and_mitz_subscriptions_lists() {
    let site = Site::new("mitz-sub-cli");
    let agent = site.setup.start();
    let o = site.np(&["mitz", "subscribe", "--bsn", BSN]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "queued 1 subscription(s), 0 already recorded, 0 already queued (Mitz partner(s): mitz; 1 patient(s))\n"
    );
    wait_logged(&agent, "mitz.subscribed", &[("origin", "backfill")], 1);

    // A file: the known patient, a bad line, a new one, a short one.
    let file = site.setup.dir.join("patients.txt");
    std::fs::write(&file, format!("{BSN}\n\n999911121\n {OTHER} \r\n12345\n")).unwrap();
    let o = site.np(&["mitz", "subscribe", "--from-file", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a bad line makes it fail");
    let stderr = String::from_utf8(o.stderr).unwrap();
    let bad: Vec<&str> = stderr.lines().collect();
    assert_eq!(bad.len(), 2, "{stderr}");
    assert!(bad[0].ends_with("line 3: not a valid BSN (9 digits passing the 11-test); skipped"));
    assert!(bad[1].contains("line 5: not a valid BSN"));
    assert!(!stderr.contains("999911121") && !stderr.contains("12345\n"));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "queued 1 subscription(s), 1 already recorded, 0 already queued (Mitz partner(s): mitz; 2 patient(s))\n"
    );
    wait_logged(&agent, "mitz.subscribed", &[("origin", "backfill")], 2);
    let patients: Vec<Value> = site.listed().iter().map(|r| r["patient"].clone()).collect();
    assert_eq!(patients, [json!(BSN), json!(OTHER)]);
    assert_eq!(site.subscription_requests(), 2);

    // A bad --bsn is a usage error; without a Mitz URL there is nothing to do.
    let o = site.np(&["mitz", "subscribe", "--bsn", "999911121"]);
    assert_eq!(o.status.code(), Some(64));
    let o = site.np(&["mitz", "subscribe"]);
    assert_eq!(o.status.code(), Some(64));
    let mut no_url = site.setup.env.clone();
    no_url.remove("NP_PARTNER_MITZ_URL");
    let env = site.setup.dir.join("no-url.env");
    no_url.write(&env);
    let o = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["mitz", "subscribe", "--bsn", BSN, "--env-file"])
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no mitz partner has a URL"));
    assert_no_bsn(&agent.log());
}

#[test]
fn check_config_and_doctor_know_the_mitz_api() {
    use np_agent::config::Source;
    use np_agent::doctor::{Context, Owner, Status, diagnose};
    let site = Site::new("mitz-sub-doctor");
    let mut setup_env = site.setup.env.clone();
    let env = site.setup.env_file();
    setup_env.write(&env);
    let context = Context {
        owner: Owner::current(),
        ..Context::system()
    };
    let checks = diagnose(&Source::File(env.clone()), &context);
    let check = |name: &str| checks.iter().find(|c| c.name == name).cloned();
    let tls = check("partner.mitz.tls").unwrap_or_else(|| panic!("{checks:#?}"));
    assert_eq!(tls.status, Status::Ok, "{tls}");
    assert!(tls.message.contains("mutual TLS handshake OK"), "{tls}");
    assert!(
        check("partner.mitz.jwks").is_none(),
        "Mitz publishes no keys"
    );

    // Unreachable: a FAIL naming the key to check.
    setup_env.set(
        "NP_PARTNER_MITZ_URL",
        format!("https://localhost:{}/tst-us/mitz", free_port()),
    );
    setup_env.write(&env);
    let checks = diagnose(&Source::File(env.clone()), &context);
    let tls = checks
        .iter()
        .find(|c| c.name == "partner.mitz.tls")
        .unwrap();
    assert_eq!(tls.status, Status::Fail, "{tls}");
    assert!(
        tls.fix.as_deref().unwrap().contains("NP_PARTNER_MITZ_URL"),
        "{tls}"
    );

    // check-config names a missing category.
    setup_env.remove("NP_ORG_CATEGORY");
    setup_env.write(&env);
    let o = site.np(&["check-config"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "config error: NP_ORG_CATEGORY: required when a mitz partner has a URL (NP_PARTNER_MITZ_URL)"
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
