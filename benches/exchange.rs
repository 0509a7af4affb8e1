//! Two numbers for the README:
//!
//! 1. **Outbox intake**: the time for `Sender::scan` (in process, on this
//!    machine's disk) to take in an outbox of 10,000 export files: each is
//!    validated, stored durably (data, case record, spool item: temp + fsync +
//!    rename + directory fsync each) and removed from the outbox.
//! 2. **Notify + pull cycles per second** between two real `np-agent run`
//!    processes (release build) on loopback: N exports dropped into A's outbox
//!    at once, timed until B's inbox holds all N pulled Bundles.
//!
//! `cargo bench --bench exchange` (a few minutes: fsync-bound). Without
//! `--bench` it runs with tiny counts as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, World};
use np_agent::audit::AuditLog;
use np_agent::cases::CaseStore;
use np_agent::config::{self, Vars};
use np_agent::oauth::TokenStore;
use np_agent::records::RecordStore;
use np_agent::sender::Sender;
use np_agent::spool::Spool;
use np_agent::util::time::now_unix;
use serde_json::json;

fn export_json(i: usize) -> String {
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

fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn outbox_intake(n: usize) {
    let tmp = TempDir::new("bench-outbox");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
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
    for i in 0..n {
        drop_file(
            &outbox,
            &format!("case-{i}.json"),
            export_json(i).as_bytes(),
        );
    }
    let started = Instant::now();
    let mut accepted = 0;
    let mut passes = 0;
    while accepted < n {
        let r = sender.scan(now_unix());
        assert_eq!(r.rejected, 0);
        accepted += r.accepted;
        passes += 1;
        assert!(passes < 1_000, "stuck at {accepted}/{n}");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| outbox intake | {n} files | {secs:.1} s | {:.0} files/s | {:.2} ms/file |",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );
}

fn cycles(n: usize) {
    let tmp = TempDir::new("bench-cycles");
    let world = World::new();
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    let mut b = AgentSetup::new(&world, tmp.path(), "hospb", "87654321");
    a.add_agent(&b);
    b.add_agent(&a);
    for s in [&mut a, &mut b] {
        s.env.set("NP_POLL_INTERVAL", "1s").set("NP_LOG", "warn");
    }
    let pa = a.start();
    let pb = b.start();
    let outbox = a.outbox("hospb");
    std::fs::create_dir_all(&outbox).unwrap();
    let started = Instant::now();
    for i in 0..n {
        drop_file(
            &outbox,
            &format!("case-{i}.json"),
            export_json(i).as_bytes(),
        );
    }
    let inbox = b.inbox("hospa");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = std::fs::read_dir(&inbox)
            .map(|groups| {
                groups
                    .flatten()
                    .filter_map(|g| std::fs::read_dir(g.path()).ok())
                    .flat_map(|files| files.flatten())
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        if done >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done}/{n} arrived:\n{}\n{}",
            pa.log(),
            pb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| notify + pull cycles | {n} cases | {secs:.1} s | {:.1} cycles/s | A {:.1} MiB, B {:.1} MiB RSS |",
        n as f64 / secs,
        pa.rss_kib() as f64 / 1024.0,
        pb.rss_kib() as f64 / 1024.0
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    println!("| what | count | time | rate | note |");
    println!("|---|---:|---:|---:|---|");
    outbox_intake(if full { 10_000 } else { 20 });
    cycles(if full { 300 } else { 3 });
}
