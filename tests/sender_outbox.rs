//! The outbox through the public `Sender` façade, with real files in a
//! fresh directory: accept, update, cancel, quarantine, temp names, and an
//! EHR writing while the agent scans without a single export going missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use np_agent::audit::AuditLog;
use np_agent::cases::{CaseStatus, CaseStore};
use np_agent::config::{self, Config, Vars};
use np_agent::oauth::TokenStore;
use np_agent::records::RecordStore;
use np_agent::sender::{ScanReport, Sender};
use np_agent::spool::{Item, Spool, State};
use np_agent::util::time::now_unix;
use serde_json::{Value, json};

const BSN: &str = "999999151";

struct Rig {
    tmp: TempDir,
    config: Arc<Config>,
    cases: Arc<CaseStore>,
    spool: Arc<Spool>,
    sender: Sender,
}

fn rig(label: &str) -> Rig {
    let tmp = TempDir::new(label);
    for (name, mode) in [
        ("cert.pem", 0o644),
        ("key.pem", 0o600),
        ("trust.pem", 0o644),
        ("signing.pem", 0o600),
    ] {
        std::fs::write(tmp.join(name), "unused here").unwrap();
        std::fs::set_permissions(tmp.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut v = Vars::new();
    let p = |n: &str| tmp.join(n).display().to_string();
    for (k, val) in [
        ("NP_PUBLIC_URL", "https://np.a.example".to_string()),
        ("NP_TLS_CERT", p("cert.pem")),
        ("NP_TLS_KEY", p("key.pem")),
        ("NP_TLS_TRUST", p("trust.pem")),
        ("NP_SIGNING_KEY", p("signing.pem")),
        ("NP_ORG_URA", "12345678".into()),
        ("NP_OUTBOX", p("outbox")),
        ("NP_INBOX", p("inbox")),
        ("NP_STATE_DIR", p("state")),
        ("NP_PARTNERS", "hospb".into()),
        (
            "NP_PARTNER_HOSPB_FHIR_BASE",
            "https://b.example/fhir".into(),
        ),
        ("NP_PARTNER_HOSPB_ORG", "ura:87654321".into()),
        ("NP_PARTNER_HOSPB_CERT", "ura:87654321".into()),
    ] {
        v.insert(k.into(), (val, None));
    }
    let config = Arc::new(config::from_vars(&v).unwrap());
    std::fs::create_dir_all(config.outbox.join("hospb")).unwrap();
    let state = config.state_dir.clone();
    std::fs::create_dir_all(&state).unwrap();
    let cases = Arc::new(CaseStore::open(&state).unwrap());
    let spool = Arc::new(Spool::open(&state).unwrap().0);
    let sender = Sender::new(
        config.clone(),
        cases.clone(),
        Arc::new(RecordStore::open(&state).unwrap()),
        spool.clone(),
        Arc::new(TokenStore::open(&state, now_unix()).unwrap()),
        Arc::new(AuditLog::open(&state).unwrap()),
    );
    Rig {
        tmp,
        config,
        cases,
        spool,
        sender,
    }
}

fn bundle(extra: &str) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}},
        {"resource": {"resourceType": "Condition", "id": extra}},
    ]})
}

impl Rig {
    fn folder(&self) -> PathBuf {
        self.config.outbox.join("hospb")
    }

    /// Writes like a well-behaved EHR: a temp name, then a rename.
    fn drop_file(&self, name: &str, bytes: &[u8]) {
        let tmp = self.folder().join(format!(".{name}.part"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.folder().join(name)).unwrap();
    }

    fn notify_tasks(&self) -> Vec<Value> {
        let mut out: Vec<(i64, String, Value)> = Vec::new();
        for id in self.spool.ids(State::Queued).unwrap() {
            let item: Item = self.spool.load(State::Queued, &id).unwrap();
            if item.kind == "notify" {
                out.push((
                    item.body["version"].as_i64().unwrap(),
                    item.id,
                    item.body["task"].clone(),
                ));
            }
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out.into_iter().map(|(_, _, t)| t).collect()
    }

    fn visible(&self) -> Vec<String> {
        names(&self.folder())
            .into_iter()
            .filter(|n| n != ".np-claimed" && n != ".rejected")
            .collect()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn accept_update_cancel_and_quarantine() {
    let r = rig("outbox-flow");
    // In the middle of being written: never touched.
    std::fs::write(r.folder().join("c1.json.tmp"), b"{\"resourceType\":").unwrap();
    std::fs::write(r.folder().join(".c1.json"), b"{").unwrap();
    r.drop_file("c1.json", &serde_json::to_vec(&bundle("a")).unwrap());
    let report = r.sender.scan(now_unix());
    assert_eq!(
        report,
        ScanReport {
            accepted: 1,
            ..ScanReport::default()
        }
    );
    assert_eq!(r.visible(), vec![".c1.json", "c1.json.tmp"]);

    // An update: same groupIdentifier, new identifier.
    r.drop_file("c1.json", &serde_json::to_vec(&bundle("b")).unwrap());
    assert_eq!(r.sender.scan(now_unix()).updated, 1);
    let tasks = r.notify_tasks();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["groupIdentifier"], tasks[1]["groupIdentifier"]);
    assert_ne!(tasks[0]["identifier"], tasks[1]["identifier"]);
    let case = r.cases.get("hospb", "c1").unwrap();
    assert_eq!(case.version, 2);
    assert_eq!(
        tasks[1]["groupIdentifier"]["value"],
        format!("urn:uuid:{}", case.group_id)
    );

    // A broken export next to it is quarantined with its reason.
    r.drop_file(
        "c2.json",
        b"{\"resourceType\": \"Bundle\", \"type\": \"message\"}",
    );
    assert_eq!(r.sender.scan(now_unix()).rejected, 1);
    let rejected = r.folder().join(".rejected");
    assert_eq!(names(&rejected), vec!["c2.json", "c2.json.error.txt"]);
    assert_eq!(
        std::fs::read_to_string(rejected.join("c2.json.error.txt")).unwrap(),
        "c2.json: wrong Bundle type: Bundle.type must be one of collection, document, transaction, searchset\n"
    );

    // Cancel: both Tasks get a cancellation; the case stops being served.
    r.drop_file("c1.cancel", b"");
    assert_eq!(r.sender.scan(now_unix()).cancelled, 1);
    assert_eq!(
        r.cases.get("hospb", "c1").unwrap().status,
        CaseStatus::Cancelled
    );
    let cancels = r
        .spool
        .ids(State::Queued)
        .unwrap()
        .into_iter()
        .filter(|id| id.starts_with("cancel-"))
        .count();
    assert_eq!(cancels, 2);
    assert_eq!(r.visible(), vec![".c1.json", "c1.json.tmp"]);
    assert!(r.tmp.path().exists());
}

/// An EHR drops exports (each written to a temp name and renamed) while
/// the agent scans as fast as it can: every export is accepted exactly
/// once, every bad one is quarantined, no temp file is ever read.
#[test]
fn nothing_is_lost_while_the_ehr_writes_during_scans() {
    let r = Arc::new(rig("outbox-race"));
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let r = r.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut total = ScanReport::default();
            loop {
                let done = stop.load(Ordering::SeqCst);
                let s = r.sender.scan(now_unix());
                total.accepted += s.accepted;
                total.updated += s.updated;
                total.rejected += s.rejected;
                total.deferred += s.deferred;
                if done {
                    return total;
                }
            }
        })
    };
    const CASES: usize = 6;
    const ROUNDS: usize = 5;
    let mut bad = 0;
    for round in 0..ROUNDS {
        for case in 0..CASES {
            let name = format!("case-{case}.json");
            // A careful EHR writes the next version once the last one was taken.
            let deadline = Instant::now() + Duration::from_secs(30);
            while r.folder().join(&name).exists() {
                assert!(Instant::now() < deadline, "{name} never taken");
                std::thread::sleep(Duration::from_millis(1));
            }
            let body = serde_json::to_vec(&bundle(&format!("r{round}"))).unwrap();
            r.drop_file(&name, &body);
            if case == 0 {
                r.drop_file(&format!("bad-{round}.json"), b"{ not json");
                bad += 1;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r.visible().is_empty() {
        assert!(Instant::now() < deadline, "left over: {:?}", r.visible());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    let total = scanner.join().unwrap();
    assert_eq!(total.accepted, CASES);
    assert_eq!(total.updated, CASES * (ROUNDS - 1));
    assert_eq!(total.rejected, bad);
    let mut versions = BTreeMap::new();
    for case in 0..CASES {
        let c = r.cases.get("hospb", &format!("case-{case}")).unwrap();
        versions.insert(case, c.version);
        let last = r.cases.data("hospb", &c.case_id, c.version).unwrap();
        assert_eq!(
            last["entry"][1]["resource"]["id"],
            format!("r{}", ROUNDS - 1),
            "the last export is the latest version"
        );
    }
    assert!(
        versions.values().all(|v| *v as usize == ROUNDS),
        "{versions:?}"
    );
    assert_eq!(r.notify_tasks().len(), CASES * ROUNDS);
    assert_eq!(
        names(&r.folder().join(".rejected")).len(),
        2 * bad,
        "each bad file with its reason"
    );
    assert!(names(&r.folder().join(".np-claimed")).is_empty());
}

/// A real `np-agent run` with one twiin partner `hospb` (never contacted:
/// nothing here is accepted), scanning every second.
fn daemon_setup(tmp: &TempDir) -> common::agent::AgentSetup {
    let world = common::agent::World::new();
    let mut setup = common::agent::AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup
        .env
        .set("NP_PARTNERS", "hospb")
        .set("NP_PARTNER_HOSPB_FHIR_BASE", "https://localhost:9/fhir")
        .set("NP_PARTNER_HOSPB_ORG", "ura:87654321")
        .set("NP_PARTNER_HOSPB_CERT", "ura:87654321")
        .set("NP_POLL_INTERVAL", "1s");
    std::fs::create_dir_all(setup.outbox("hospb")).unwrap();
    setup
}

/// Writes a file with a raw (maybe not UTF-8) name.
fn put_raw(dir: &Path, name: &[u8], bytes: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), bytes).unwrap();
}

/// The names in `dir` as raw bytes.
fn raw_names(dir: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().into_vec()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_for(what: &str, agent: &common::agent::AgentProcess, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s; the log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn error_lines(log: &str, event: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("level=error") && l.contains(&format!("event={event} ")))
        .count()
}

/// Names the agent cannot keep — not UTF-8, 250 and 255 bytes long (the
/// `.error.txt` beside them would pass NAME_MAX) — are quarantined under
/// generated names with the original, escaped, in the reason; one of them
/// was left in `.np-claimed` by an earlier run, as after a restart.
#[test]
fn the_daemon_quarantines_names_it_cannot_keep_also_after_a_restart() {
    let tmp = TempDir::new("outbox-names");
    let setup = daemon_setup(&tmp);
    let folder = setup.outbox("hospb");
    let long_250 = format!("{}.json", "x".repeat(245));
    let long_255 = format!("{}.xml", "y".repeat(251));
    put_raw(&folder.join(".np-claimed"), b"left\xffover.json", b"{}");
    put_raw(&folder, long_250.as_bytes(), b"{}");
    put_raw(&folder, long_255.as_bytes(), b"<x/>");
    put_raw(&folder, b"\xfe\xff\n.json", b"{}");
    let agent = setup.start();
    let rejected = folder.join(".rejected");
    wait_for("four files quarantined", &agent, || {
        raw_names(&rejected).len() == 8
    });
    assert!(raw_names(&folder.join(".np-claimed")).is_empty());
    let mut reasons: Vec<String> = names(&rejected)
        .into_iter()
        .filter(|n| n.ends_with(".error.txt"))
        .map(|n| {
            assert!(n.starts_with("bad-name-"), "{n}");
            std::fs::read_to_string(rejected.join(n)).unwrap()
        })
        .collect();
    reasons.sort();
    let bad_id = "bad case-id: the name before the extension must match [A-Za-z0-9._-]{1,64}";
    assert_eq!(
        reasons,
        vec![
            format!("\\xfe\\xff\\x0a.json: {bad_id}\n"),
            format!("left\\xffover.json: {bad_id}\n"),
            format!("{long_250}: {bad_id}\n"),
            format!("{long_255}: {bad_id}\n"),
        ]
    );
    let log = agent.log();
    assert!(!log.contains("event=outbox.quarantine_failed"), "{log}");
    assert_eq!(log.matches("event=outbox.rejected ").count(), 4, "{log}");
    assert!(agent.stop().success());
}

/// A quarantine that cannot succeed (`.rejected` is a file) is tried again
/// only after its back-off and alerts once, not on every poll; a restart
/// alerts once more, not once per poll either.
#[test]
fn a_failing_quarantine_alerts_once_not_every_poll() {
    let tmp = TempDir::new("outbox-alert");
    let setup = daemon_setup(&tmp);
    let folder = setup.outbox("hospb");
    std::fs::write(folder.join(".rejected"), b"in the way").unwrap();
    put_raw(&folder, b"c1.txt", b"x");
    put_raw(&folder, b"c\xff.json", b"y");
    for round in 0..2 {
        let agent = setup.start();
        wait_for("the first alert", &agent, || {
            agent.log().contains("event=outbox.quarantine_failed")
        });
        // Several polls: each stray file directly in NP_OUTBOX is rejected
        // by one (into NP_OUTBOX/.rejected, which works).
        for i in 0..3 {
            let name = format!("stray-{round}-{i}.json");
            let outbox = folder.parent().unwrap();
            std::fs::write(outbox.join(&name), b"{}").unwrap();
            wait_for("a later poll", &agent, || {
                outbox
                    .join(".rejected")
                    .join(format!("{name}.error.txt"))
                    .exists()
            });
        }
        let log = agent.log();
        assert_eq!(
            error_lines(&log, "outbox.quarantine_failed"),
            1,
            "one alert for the folder, not one per file or poll:\n{log}"
        );
        assert_eq!(raw_names(&folder.join(".np-claimed")).len(), 2);
        assert!(agent.stop().success());
    }
}
