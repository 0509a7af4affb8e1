//! Records published to a Zorgviewer partner, end to end with the real
//! daemon: the EHR writes into `NP_OUTBOX/<zorgviewer partner>/`, the agent
//! takes each file in (published, rejected with a reason, or withdrawn by a
//! `.cancel`), never sends anything to anybody, and what it stored is found
//! by patient by the record store after the agent stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use common::folders::export;
use common::observe::{events, wait_until};
use common::partner::ScriptedPartner;
use np_agent::ids::Bsn;
use np_agent::jose::Alg;
use np_agent::records::{RecordStatus, RecordStore};
use np_agent::spool::Spool;
use np_agent::util::time::{date, now_unix};
use serde_json::{Value, json};

const BSN: &str = "999999151";

fn record(patient_id: &str, conditions: &[&str]) -> Value {
    let mut entries = vec![
        json!({"resource": {"resourceType": "Patient", "id": patient_id,
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}}),
    ];
    for id in conditions {
        entries.push(json!({"resource": {"resourceType": "Condition", "id": id}}));
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

#[test]
fn published_records_are_taken_in_withdrawn_and_never_sent() {
    let tmp = TempDir::new("published-records");
    let world = World::new();
    let zv = Party::new(&world, tmp.path(), "zv", "33334444", &[Alg::Es384]);
    // The Zorgviewer stand-in: its JWKS host records every Task posted to
    // it and every token asked of it.
    let stand_in = ScriptedPartner::start(&zv);
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.env.set("NP_POLL_INTERVAL", "1s");
    let jwks_url = format!("https://localhost:{}/jwks", stand_in.addr.port());
    setup.add_zorgviewer_at(&zv, &jwks_url);
    let agent = setup.start();
    let folder = setup.outbox("zv");
    let logged = |event: &str| events(&agent.log(), event, &[("partner", "zv")]).len();
    let limit = Duration::from_secs(30);

    export(
        &folder,
        "r1.json",
        record("p1", &["c1"]).to_string().as_bytes(),
    );
    export(
        &folder,
        "r2.json",
        record("p1", &["c2", "c3"]).to_string().as_bytes(),
    );
    export(&folder, "bad.json", b"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"p9\"}}]}");
    let error = folder.join(".rejected/bad.json.error.txt");
    wait_until(
        limit,
        || logged("record.published") == 2 && error.exists(),
        || agent.log(),
    );
    assert!(!folder.join("r1.json").exists() && !folder.join("r2.json").exists());
    assert!(
        std::fs::read_to_string(&error)
            .unwrap()
            .starts_with("bad.json: the Patient has no BSN identifier"),
        "the reason is beside the rejected file"
    );
    let log = agent.log();
    let r2 = events(&log, "record.published", &[("record", "r2")]);
    assert_eq!(r2.len(), 1, "{log}");
    assert_eq!(
        (r2[0].get("version"), r2[0].get("resources")),
        (Some("1"), Some("3"))
    );

    // A newer r1 replaces it; r1.cancel then withdraws it.
    export(
        &folder,
        "r1.json",
        record("p1", &["c1", "c4"]).to_string().as_bytes(),
    );
    wait_until(limit, || logged("record.published") == 3, || agent.log());
    export(&folder, "r1.cancel", b"");
    wait_until(limit, || logged("record.withdrawn") == 1, || agent.log());
    assert!(!folder.join("r1.cancel").exists());
    let log = agent.log();
    let withdrawn = events(&log, "record.withdrawn", &[("record", "r1")]);
    assert_eq!(withdrawn[0].get("version"), Some("2"), "{log}");

    // Nothing was sent, and nothing waits to be sent.
    let spool = Spool::at(&setup.dir.join("state")).unwrap();
    assert!(
        spool.sizes().unwrap().iter().all(|(_, n)| *n == 0),
        "no spool item in any state"
    );
    assert!(stand_in.hits().is_empty(), "no Task posted");
    assert_eq!(stand_in.tokens_issued(), 0, "no token asked");
    assert!(events(&log, "notify.sent", &[]).is_empty());
    assert!(!log.contains(BSN), "no BSN in the log");

    let audit = std::fs::read_to_string(
        setup
            .dir
            .join("state/audit")
            .join(format!("{}.jsonl", date(now_unix()))),
    )
    .unwrap();
    for action in ["record.published", "record.withdrawn"] {
        let line = audit
            .lines()
            .find(|l| l.contains(&format!("\"action\":\"{action}\"")))
            .unwrap_or_else(|| panic!("no {action} in {audit}"));
        assert!(
            line.contains("\"partner\":\"zv\"") && line.contains(BSN),
            "{line}"
        );
    }

    // After the agent stopped, the store rebuilt from disk holds r2 only.
    assert!(agent.stop().success());
    let store = RecordStore::open(&setup.dir.join("state")).unwrap();
    let bsn = Bsn::parse(BSN).unwrap();
    let served = store.records_of_patient("zv", &bsn).unwrap();
    assert_eq!(served.len(), 1);
    assert_eq!((served[0].record_id.as_str(), served[0].version), ("r2", 1));
    assert_eq!(*served[0].bundle, record("p1", &["c2", "c3"]));
    assert_eq!(store.patient_by_id("zv", "p1"), Some(bsn.clone()));
    assert_eq!(
        store.patients_holding("zv", "Condition", "c3"),
        vec![(bsn.clone(), "p1".to_string())]
    );
    assert!(
        store.patients_holding("zv", "Condition", "c4").is_empty(),
        "only in the withdrawn record"
    );
    assert_eq!(
        store.get("zv", "r1").unwrap().status,
        RecordStatus::Withdrawn
    );
    assert!(
        !store.data_path("zv", "r1", 2).exists(),
        "withdrawn data is removed"
    );
}
