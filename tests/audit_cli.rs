//! `np-agent audit --patient` as a privacy officer runs it: the real binary
//! over a state folder whose audit trail holds a Twiin pull and a Zorgviewer
//! read of one patient, another patient's read, an unreadable line and a
//! file that is not a day of the trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;
use common::agent::{AgentSetup, World};
use np_agent::audit::{ConsentDecision, ConsentSource, Event, ResourceList, ZORGVIEWER_READ};
use serde_json::Value;

const BSN: &str = "999999151";
const OTHER: &str = "999998286";
/// Passes the 11-test; nobody in the trail.
const NOBODY: &str = "999997245";

struct Trail {
    _tmp: TempDir,
    env: PathBuf,
    audit: PathBuf,
}

/// A configured agent whose audit trail has two days of records.
fn trail() -> Trail {
    let tmp = TempDir::new("audit-cli");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.env.write(&setup.env_file());
    let audit = PathBuf::from(&setup.env.vars["NP_STATE_DIR"]).join("audit");
    std::fs::create_dir_all(&audit).unwrap();

    // Day one: hospital B pulls the patient's case (records as the Twiin
    // side writes them), and reads another patient's.
    let day1 = [
        format!(
            r#"{{"when":"2026-03-01T09:00:00Z","action":"token.issued","outcome":"success","partner":"hospb","who_org":"urn:oid:2.16.528.1.1007.3.3.87654321","who_system":"hospb-client","patient":"{BSN}","object":"token:pull","request_id":"r-tok"}}"#
        ),
        format!(
            r#"{{"when":"2026-03-01T09:00:01Z","action":"fhir.search","outcome":"success","partner":"hospb","who_org":"urn:oid:2.16.528.1.1007.3.3.87654321","who_system":"hospb-client","patient":"{BSN}","object":"/fhir/Condition?patient=Patient/p1","request_id":"r-1","results":2}}"#
        ),
        "{\"when\":\"2026-03-01T09:00:02Z\",\"action\":\"fhir.re".to_string(),
        format!(
            r#"{{"when":"2026-03-01T09:30:00Z","action":"fhir.read","outcome":"success","partner":"hospb","patient":"{OTHER}","object":"Patient/q9","results":1}}"#
        ),
        format!(
            r#"{{"when":"2026-03-01T09:40:00Z","action":"pull.completed","outcome":"success","partner":"hospb","patient":"{BSN}","object":"pull-1","reason":"5 resources; 0 of 3 inputs not available"}}"#
        ),
    ];
    std::fs::write(audit.join("2026-03-01.jsonl"), day1.join("\n") + "\n").unwrap();

    // Day two: the Zorgviewer reads the patient, written by the writer's own type.
    let mut list = ResourceList::new();
    list.push("Patient", "p1");
    let zv = Event {
        when: "2026-03-02T14:15:00Z".into(),
        action: ZORGVIEWER_READ,
        outcome: "success",
        partner: Some("zorgviewer"),
        who_org: Some("2.16.528.1.1007.3.3.11223344"),
        who_ura: Some("11223344"),
        who_system: Some("zv-client"),
        who_user: Some("dr-jansen"),
        who_role: Some("01.015"),
        patient: Some(BSN),
        query: Some("/fhir/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151"),
        request_id: Some("r-zv"),
        correlation_id: Some("c-zv"),
        aorta_id: Some("rid:1;cid:2"),
        cert_sha256: Some("ab"),
        context_verified: Some(true),
        consent: Some(ConsentDecision::Permit),
        consent_source: Some(ConsentSource::View),
        status: Some(200),
        ..Event::default()
    }
    .returned(&list);
    let other_zv = Event {
        when: "2026-03-02T14:20:00Z".into(),
        action: ZORGVIEWER_READ,
        outcome: "refused",
        partner: Some("zorgviewer"),
        patient: Some(OTHER),
        consent: Some(ConsentDecision::Deny),
        status: Some(404),
        ..Event::default()
    };
    let day2 = [
        serde_json::to_string(&zv).unwrap(),
        serde_json::to_string(&other_zv).unwrap(),
    ];
    std::fs::write(audit.join("2026-03-02.jsonl"), day2.join("\n") + "\n").unwrap();
    // Not a day of the trail: never read, even though it names the patient.
    std::fs::write(
        audit.join("notes.jsonl"),
        format!(r#"{{"when":"2026-03-01T00:00:00Z","action":"x","patient":"{BSN}"}}"#),
    )
    .unwrap();
    Trail {
        env: setup.env_file(),
        audit,
        _tmp: tmp,
    }
}

fn audit(env: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .arg("audit")
        .args(["--env-file", env.to_str().unwrap()])
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The ACTION column of each data line of the plain output.
fn actions(out: &str) -> Vec<String> {
    let mut lines = out.lines();
    let heading = lines.next().unwrap();
    let at = heading.find("ACTION").unwrap();
    lines
        .map(|l| l[at..].split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn prints_the_twiin_pull_and_the_zorgviewer_read_of_one_patient_only() {
    let t = trail();
    let o = audit(&t.env, &["--patient", BSN]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        actions(&out),
        [
            "token.issued",
            "fhir.search",
            "pull.completed",
            "zorgviewer.read"
        ],
        "{out}"
    );
    assert!(!out.contains("Patient/q9") && !out.contains(OTHER), "{out}");
    let zv = out.lines().last().unwrap();
    for needle in [
        "2026-03-02T14:15:00Z",
        "zorgviewer",
        "2.16.528.1.1007.3.3.11223344",
        "dr-jansen/01.015",
        "/fhir/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151",
        "success 200 consent=permit/view",
        "Patient/p1",
    ] {
        assert!(zv.contains(needle), "{needle} missing in {zv}");
    }
    // The cut line is counted on stderr, which never names the patient.
    assert!(
        err.contains("2026-03-01.jsonl: skipped 1 line(s) that are not audit records"),
        "{err}"
    );
    assert!(!err.contains(BSN), "{err}");
}

#[test]
fn json_output_is_the_records_as_written() {
    let t = trail();
    let o = audit(&t.env, &["--patient", BSN, "--json"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    // Each record byte for byte as the trail holds it, one a line.
    assert!(
        out.lines().nth(1).unwrap().starts_with(
            r#"{"when":"2026-03-01T09:00:00Z","action":"token.issued","outcome":"success","partner":"hospb""#
        ),
        "{out}"
    );
    let got: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "token.issued",
            "fhir.search",
            "pull.completed",
            "zorgviewer.read"
        ]
    );
    assert!(records.iter().all(|r| r["patient"] == BSN));
    let zv = &records[3];
    assert_eq!(
        (
            &zv["correlation_id"],
            &zv["context_verified"],
            &zv["status"]
        ),
        (&Value::from("c-zv"), &Value::from(true), &Value::from(200))
    );
    assert_eq!(zv["resources"], serde_json::json!(["Patient/p1"]));
}

#[test]
fn date_bounds_choose_the_days() {
    let t = trail();
    let only = |args: &[&str]| {
        let mut all = vec!["--patient", BSN];
        all.extend_from_slice(args);
        let o = audit(&t.env, &all);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
        if out.is_empty() {
            (Vec::new(), err)
        } else {
            (actions(&out), err)
        }
    };
    assert_eq!(only(&["--from", "2026-03-02"]).0, ["zorgviewer.read"]);
    assert_eq!(
        only(&["--to", "2026-03-01"]).0,
        ["token.issued", "fhir.search", "pull.completed"]
    );
    assert_eq!(
        only(&["--from", "2026-03-01", "--to", "2026-03-02"])
            .0
            .len(),
        4
    );
    // Only day two is read: day one's cut line is not reported.
    assert!(
        !only(&["--from=2026-03-02", "--to=2026-03-02"])
            .1
            .contains("skipped")
    );
    // Nothing in range: exit 0, empty output, said on stderr.
    let (rows, err) = only(&["--from", "2026-04-01"]);
    assert!(rows.is_empty());
    assert!(
        err.contains("no audit record names this patient from 2026-04-01"),
        "{err}"
    );
}

#[test]
fn a_patient_without_records_prints_nothing_and_exits_0() {
    let t = trail();
    let o = audit(&t.env, &["--patient", NOBODY]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(0), ""), "{err}");
    assert!(err.contains("no audit record names this patient"), "{err}");
    let o = audit(&t.env, &["--patient", NOBODY, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap(),
        Vec::<Value>::new()
    );
}

#[test]
fn bad_usage_exits_64_configuration_78_and_an_unreadable_trail_1() {
    let t = trail();
    for args in [
        vec!["--patient", "999999152"],
        vec!["--patient", "12345"],
        vec![],
        vec!["--patient", BSN, "--from", "2026-02-30"],
        vec!["--patient", BSN, "--to", "yesterday"],
        vec![
            "--patient",
            BSN,
            "--from",
            "2026-03-02",
            "--to",
            "2026-03-01",
        ],
        vec!["--patient", BSN, "--partner", "hospb"],
    ] {
        let o = audit(&t.env, &args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            out.is_empty() && err.contains("usage: np-agent audit"),
            "{err}"
        );
    }
    // The rejected value is not echoed: it may be a mistyped BSN.
    let o = audit(&t.env, &["--patient", "999999152"]);
    assert!(!text(&o).1.contains("999999152"));

    let o = audit(Path::new("/nonexistent/np-agent.env"), &["--patient", BSN]);
    assert_eq!(o.status.code(), Some(78), "{}", text(&o).1);

    std::fs::remove_dir_all(&t.audit).unwrap();
    let o = audit(&t.env, &["--patient", BSN]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("cannot read the audit trail") && err.contains(t.audit.to_str().unwrap()),
        "{err}"
    );
}
