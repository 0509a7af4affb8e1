//! Notified Pull end to end between two real `np-agent run` processes on
//! loopback, each with its own PKI identity and configuration: an export in
//! A's outbox becomes a Task at B, B pulls from A, and B's inbox equals the
//! export resource for resource. JSON and XML exports, updates, cancellation,
//! and a sender that is down while the receiver wants to pull.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, World};
use common::folders::{export, files, wait_files};
use common::proxy::Proxy;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn sample() -> Value {
    serde_json::from_str(np_agent::demo::SAMPLE).unwrap()
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

struct Pair {
    _tmp: TempDir,
    a: AgentSetup,
    b: AgentSetup,
}

fn pair(label: &str) -> Pair {
    let tmp = TempDir::new(label);
    let world = World::new();
    let (a, b) = AgentSetup::pair(&world, tmp.path(), "info");
    Pair { _tmp: tmp, a, b }
}

#[test]
fn a_json_export_arrives_unchanged_then_an_update_then_the_cancellation() {
    let p = pair("exchange-json");
    let a = p.a.start();
    let b = p.b.start();
    let data = sample();
    export(
        &p.a.outbox("hospb"),
        "case-1.json",
        data.to_string().as_bytes(),
    );

    let first = wait_files(&p.b.inbox("hospa"), ".json", 1, &[&a, &b]);
    let pulled = read(&first[0]);
    np_agent::demo::check_same(&data, &pulled).unwrap_or_else(|e| panic!("{e}"));
    // Readable by the EHR's group, not by others.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&first[0]), 0o640);
    assert_eq!(mode(first[0].parent().unwrap()), 0o750);
    let task = &pulled["entry"][0]["resource"];
    assert_eq!(task["status"], "requested");
    let group = first[0].parent().unwrap().to_path_buf();
    assert_eq!(
        format!("urn:uuid:{}", group.file_name().unwrap().to_string_lossy()),
        task["groupIdentifier"]["value"].as_str().unwrap()
    );
    assert!(
        !p.a.outbox("hospb").join("case-1.json").exists(),
        "left the outbox once stored"
    );

    // An update: same group, a new Task, the new data.
    let mut updated = data.clone();
    updated["entry"][6]["resource"]["valueQuantity"]["value"] = serde_json::json!(70.9);
    export(
        &p.a.outbox("hospb"),
        "case-1.json",
        updated.to_string().as_bytes(),
    );
    let both = wait_files(&group, ".json", 2, &[&a, &b]);
    let second = both.iter().find(|f| **f != first[0]).unwrap();
    let pulled2 = read(second);
    np_agent::demo::check_same(&updated, &pulled2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pulled2["entry"][0]["resource"]["groupIdentifier"],
        task["groupIdentifier"]
    );
    assert_ne!(
        pulled2["entry"][0]["resource"]["identifier"],
        task["identifier"]
    );

    // The cancellation reaches B's inbox.
    export(&p.a.outbox("hospb"), "case-1.cancel", b"");
    let cancelled = wait_files(&group, ".cancelled.json", 1, &[&a, &b]);
    assert_eq!(read(&cancelled[0])["status"], "cancelled");
    assert!(a.log().contains("event=notify.sent"), "{}", a.log());

    // Nothing duplicated: exactly the two Tasks' files and one cancellation per cancelled Task.
    assert_eq!(files(&p.b.inbox("hospa"), ".json").len(), 2);
    assert!(a.stop().success());
    assert!(b.stop().success());
}

#[test]
fn an_xml_export_arrives_unchanged() {
    let p = pair("exchange-xml");
    let a = p.a.start();
    let b = p.b.start();
    let data = sample();
    let xml = np_agent::fhir::json_to_xml(&data, np_agent::fhir::FhirVersion::Stu3).unwrap();
    export(&p.a.outbox("hospb"), "case-x.xml", xml.as_bytes());
    let first = wait_files(&p.b.inbox("hospa"), ".json", 1, &[&a, &b]);
    np_agent::demo::check_same(&data, &read(&first[0])).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_notification_whose_sender_is_down_is_pulled_when_it_returns_without_duplicates() {
    let mut p = pair("exchange-down");
    // B reaches A only through a proxy that can be switched off; A's public
    // URL (its token endpoint and FHIR base) is the proxy's address.
    let proxy = Proxy::start(p.a.port);
    let public = format!("https://localhost:{}", proxy.port);
    p.a.env.set("NP_PUBLIC_URL", public.clone());
    p.b.env
        .set("NP_PARTNER_HOSPA_FHIR_BASE", format!("{public}/fhir"));
    // B verifies A's notify token with A's keys, fetched directly: only the
    // pull (discovery, token, reads) goes through the proxy.
    p.b.env.set(
        "NP_PARTNER_HOSPA_JWKS_URL",
        format!("https://localhost:{}/.well-known/jwks.json", p.a.port),
    );
    proxy.set_up(false);
    let a = p.a.start();
    let b = p.b.start();
    export(
        &p.a.outbox("hospb"),
        "case-2.json",
        sample().to_string().as_bytes(),
    );
    // B has the notification (A → B is direct) but cannot reach A.
    let deadline = Instant::now() + TIMEOUT;
    while proxy.refused.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "B never tried to pull:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(files(&p.b.inbox("hospa"), ".json").is_empty());
    assert!(b.log().contains("event=work.retry"), "{}", b.log());
    // A comes back: the pull completes, once.
    proxy.set_up(true);
    let arrived = wait_files(&p.b.inbox("hospa"), ".json", 1, &[&a, &b]);
    np_agent::demo::check_same(&sample(), &read(&arrived[0])).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        files(&p.b.inbox("hospa"), ".json").len(),
        1,
        "no duplicates"
    );
}

#[test]
fn np_agent_demo_runs_and_succeeds() {
    let tmp = TempDir::new("demo-run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["demo", "--dir"])
        .arg(tmp.join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("identical to the export"), "{stdout}");
    // The Zorgviewer step ran to its end: the patient subscribed at the
    // stand-in Mitz, the closed question denied, a notification, the
    // question asked again and permitted, the record served, all audited.
    assert!(
        stdout.contains("made B subscribe the patient at Mitz"),
        "{stdout}"
    );
    assert!(stdout.contains("answered 201 with Location"), "{stdout}");
    assert!(
        stdout.contains("B asked Mitz the closed question") && stdout.contains("answered Deny"),
        "{stdout}"
    );
    assert!(stdout.contains("an empty searchset"), "{stdout}");
    assert!(
        stdout.contains("its closed-question cache forgot the patient"),
        "{stdout}"
    );
    assert!(
        stdout.contains("B asked Mitz the same closed question again"),
        "{stdout}"
    );
    assert!(stdout.contains("now return the record"), "{stdout}");
    assert!(
        stdout.contains("consent_source=closed-question"),
        "{stdout}"
    );
    assert!(stdout.contains("as refused (consent=deny"), "{stdout}");
    assert!(stdout.contains("Done:"), "{stdout}");
}
