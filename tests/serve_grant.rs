//! The sender refuses every pull outside the grant, end to end: two real
//! agents exchange two cases (two patients); the test then acts as hospital B
//! with B's own certificate and signing key, gets pull tokens at A with the
//! authorization bases from B's inbox, and tries to read what it must not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, World};
use common::folders::{export, wait_files};
use np_agent::config::{self};
use np_agent::ids::Bsn;
use np_agent::ids::OrgId;
use np_agent::oauth::client::{Purpose, TokenClient};
use np_agent::util::time::now_unix;
use serde_json::{Value, json};

/// The case export for a patient, with an unreferenced Binary in it.
fn case(patient_id: &str, bsn: &str) -> Value {
    let mut v: Value = serde_json::from_str(np_agent::demo::SAMPLE).unwrap();
    let entries = v["entry"].as_array_mut().unwrap();
    for e in entries.iter_mut() {
        let r = &mut e["resource"];
        if r["resourceType"] == "Patient" {
            r["id"] = json!(patient_id);
            r["identifier"][0]["value"] = json!(bsn);
        }
        for k in ["subject", "patient"] {
            if r.get(k).is_some() {
                r[k]["reference"] = json!(format!("Patient/{patient_id}"));
            }
        }
        let id = r["id"].as_str().unwrap().to_string();
        if r["resourceType"] != "Patient" {
            r["id"] = json!(format!("{patient_id}-{id}"));
        }
        if r["resourceType"] == "DocumentReference" {
            r["content"][0]["attachment"]["url"] = json!(format!("Binary/{patient_id}-bin-1"));
        }
        if r["resourceType"] == "MedicationStatement" {
            r["medicationReference"]["reference"] = json!(format!("Medication/{patient_id}-med-1"));
        }
    }
    entries.push(
        json!({"resource": {"resourceType": "Binary", "id": format!("{patient_id}-orphan"),
        "contentType": "text/plain", "content": "bm90IGZvciB5b3U="}}),
    );
    v
}

/// The authorization base in a notification Task.
fn base_of(task: &Value) -> String {
    task["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "authorization-base")
        .and_then(|i| i["valueString"].as_str())
        .unwrap()
        .to_string()
}

struct AsB {
    client: TokenClient,
    http: ureq::Agent,
    cfg: config::Config,
}

impl AsB {
    /// Hospital B's own identity, loaded from B's env file and key files.
    fn new(b: &AgentSetup) -> AsB {
        let common::agent::AsAgent {
            cfg, client, http, ..
        } = b.as_client();
        AsB { client, http, cfg }
    }

    fn pull_token(&self, base: &str, bsn: &Bsn) -> Result<String, String> {
        let partner = self.cfg.twiin_partner("hospa").unwrap();
        let (me, a) = (OrgId::Ura("87654321".into()), OrgId::Ura("12345678".into()));
        let purpose = Purpose::Pull {
            authorization_base: base,
            requesting: &me,
            authorizer: Some(&a),
            patient: Some(bsn),
        };
        self.client.invalidate(partner, &purpose);
        self.client
            .token(partner, &purpose, now_unix())
            .map(|t| t.token)
            .map_err(|e| e.oauth_error().unwrap_or("other").to_string())
    }

    fn notify_token(&self) -> String {
        let partner = self.cfg.twiin_partner("hospa").unwrap();
        self.client
            .token(partner, &Purpose::Notify { patient: None }, now_unix())
            .unwrap()
            .token
    }

    fn get(&self, url: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(url).header("Accept", "application/fhir+json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.call().unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().read_to_vec().unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[test]
fn the_sender_refuses_every_pull_outside_the_grant() {
    let tmp = TempDir::new("serve-grant");
    let world = World::new();
    let (mut a, b) = AgentSetup::pair(&world, tmp.path(), "info");
    // Notifications live 20 s, so expiry can be seen within the test.
    a.env.set("NP_NOTIFICATION_TTL", "20s");
    let pa = a.start();
    let pb = b.start();
    let (bsn1, bsn2) = (
        Bsn::parse("999999151").unwrap(),
        Bsn::parse("999999990").unwrap(),
    );
    export(
        &a.outbox("hospb"),
        "case-1.json",
        case("pat-1", bsn1.as_str()).to_string().as_bytes(),
    );
    export(
        &a.outbox("hospb"),
        "case-2.json",
        case("pat-2", bsn2.as_str()).to_string().as_bytes(),
    );
    let inbox = wait_files(&b.inbox("hospa"), ".json", 2, &[&pa, &pb]);
    let notified_at = Instant::now();
    let tasks: Vec<Value> = inbox
        .iter()
        .map(|f| serde_json::from_slice::<Value>(&std::fs::read(f).unwrap()).unwrap()["entry"][0]["resource"].clone())
        .collect();
    let task1 = tasks
        .iter()
        .find(|t| t["for"]["identifier"]["value"] == bsn1.as_str())
        .unwrap();
    let base1 = base_of(task1);

    let as_b = AsB::new(&b);
    let url = |p: &str| a.url(&format!("/fhir{p}"));
    let t1 = as_b.pull_token(&base1, &bsn1).unwrap();

    // Inside the grant: served.
    let (s, body) = as_b.get(&url("/Patient/pat-1"), Some(&t1));
    assert_eq!((s, body["id"].as_str()), (200, Some("pat-1")));
    let (s, body) = as_b.get(&url("/Condition"), Some(&t1));
    assert_eq!(s, 200);
    assert_eq!(body["total"], 1, "only the bound patient's data: {body}");
    assert_eq!(
        body["entry"][0]["resource"]["subject"]["reference"],
        "Patient/pat-1"
    );
    let (s, _) = as_b.get(&url("/Binary/pat-1-bin-1"), Some(&t1));
    assert_eq!(s, 200, "a Binary the case's DocumentReference refers to");

    // Outside it: refused.
    let refusals: &[(&str, u16)] = &[
        ("/Patient/pat-2", 404),                   // another patient's resource by id
        ("/Condition/pat-2-cond-1", 404),          // another case's resource by id
        ("/Condition?patient=Patient/pat-2", 403), // a search naming another patient
        (
            "/Condition?patient=http://fhir.nl/fhir/NamingSystem/bsn%7C999999990",
            403,
        ),
        ("/Binary/pat-1-orphan", 404), // a Binary no DocumentReference refers to
        ("/MedicationStatement?_revinclude=Provenance:target", 400),
        ("/MedicationStatement?_include=Condition:subject", 400), // an _include that is not the searched type's
        ("/Observation?frobnicate=1", 400),
    ];
    for (path, want) in refusals {
        let (s, body) = as_b.get(&url(path), Some(&t1));
        assert_eq!(s, *want, "{path}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
    }
    // _include stays inside the case.
    let (s, body) = as_b.get(
        &url("/MedicationStatement?_include=MedicationStatement:medication"),
        Some(&t1),
    );
    assert_eq!(s, 200);
    for e in body["entry"].as_array().unwrap() {
        assert!(
            e["resource"]["id"].as_str().unwrap().starts_with("pat-1"),
            "{e}"
        );
    }

    // No token, a made-up token, a notify token: refused by the router.
    let (s, _) = as_b.get(&url("/Patient/pat-1"), None);
    assert_eq!(s, 401);
    let (s, _) = as_b.get(
        &url("/Patient/pat-1"),
        Some("bm90LWEtdG9rZW4tYXQtYWxsLWp1c3QtYS1ndWVzcy0xMjM0"),
    );
    assert_eq!(s, 401);
    let (s, _) = as_b.get(&url("/Patient/pat-1"), Some(&as_b.notify_token()));
    assert_eq!(s, 403);
    // A base issued for B's case cannot be used for anything else: a guessed base gives a notify token only.
    let guessed = as_b.pull_token("made-up-base", &bsn1).unwrap();
    let (s, _) = as_b.get(&url("/Patient/pat-1"), Some(&guessed));
    assert_eq!(s, 403);

    // Cancel case 1: its token stops working at once, and no new one is issued.
    export(&a.outbox("hospb"), "case-1.cancel", b"");
    wait_files(&b.inbox("hospa"), ".cancelled.json", 1, &[&pa, &pb]);
    let (s, _) = as_b.get(&url("/Patient/pat-1"), Some(&t1));
    assert!(s == 401 || s == 403, "cancelled case still served: {s}");
    assert_eq!(as_b.pull_token(&base1, &bsn1).unwrap_err(), "invalid_grant");

    // Case 2's notification expires: its pulls and tokens end with it.
    let task2 = tasks
        .iter()
        .find(|t| t["for"]["identifier"]["value"] == bsn2.as_str())
        .unwrap();
    let base2 = base_of(task2);
    let t2 = as_b.pull_token(&base2, &bsn2).unwrap();
    assert_eq!(as_b.get(&url("/Patient/pat-2"), Some(&t2)).0, 200);
    // The other case's token does not open this case either.
    assert_eq!(as_b.get(&url("/Patient/pat-2"), Some(&t1)).0 / 100, 4);
    let expiry = notified_at + Duration::from_secs(22);
    while Instant::now() < expiry {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        as_b.get(&url("/Patient/pat-2"), Some(&t2)).0,
        403,
        "expired notification still served"
    );
    assert_eq!(as_b.pull_token(&base2, &bsn2).unwrap_err(), "invalid_grant");
}
