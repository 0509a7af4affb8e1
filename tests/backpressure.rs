//! Disk-full behaviour of two real agents, each with its
//! `NP_STATE_DIR` on a small tmpfs of its own: with A's disk nearly full an
//! export stays in A's outbox; with B's nearly full B answers A's
//! notification `503` with `Retry-After`, and a Mitz consent notification
//! too; once space returns both resume by themselves and the data arrives.
//!
//! Mounting needs root; otherwise the test prints why and passes without
//! running (as it does where mounting is not allowed, e.g. a container
//! without CAP_SYS_ADMIN).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use common::observe::{self, events, wait_until};

const LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: usize) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs {
                path: path.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}

fn export(dir: &Path, case: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{case}.json.part"));
    std::fs::write(&tmp, np_agent::demo::SAMPLE).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{case}.json"))).unwrap();
}

fn pulled(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += pulled(&p);
            } else if p.extension().is_some_and(|x| x == "json") {
                n += 1;
            }
        }
    }
    n
}

/// POSTs the sample consent notification to `agent` as `broker`: the status
/// and `Retry-After`.
fn post_mitz(broker: &Party, agent: &AgentSetup) -> (u16, Option<String>) {
    let resp = broker
        .client()
        .post(&agent.url("/fhir/R4"))
        .header("Content-Type", "application/fhir+json")
        .send(include_str!("../src/mitz/sample-notification.json"))
        .unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (resp.status().as_u16(), retry_after)
}

#[test]
fn a_nearly_full_disk_holds_exports_and_refuses_notifications_until_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs for NP_STATE_DIR needs root");
        return;
    }
    let tmp = TempDir::new("backpressure");
    let (fs_a, fs_b) = match (
        Tmpfs::mount(&tmp.join("fs-a"), 32),
        Tmpfs::mount(&tmp.join("fs-b"), 32),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let world = World::new();
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    let mut b = AgentSetup::new(&world, tmp.path(), "hospb", "87654321");
    a.add_agent(&b);
    b.add_agent(&a);
    // A Mitz broker, known to B by its certificate only.
    let broker = Party::new(&world, tmp.path(), "broker", "55555555", &[]);
    let partners = format!("{},mitz", b.env.vars["NP_PARTNERS"]);
    b.env
        .set("NP_PARTNERS", partners)
        .set("NP_PARTNER_MITZ_KIND", "mitz")
        .set("NP_PARTNER_MITZ_CERT", "ura:55555555");
    for (s, fs) in [(&mut a, &fs_a), (&mut b, &fs_b)] {
        s.env
            .set("NP_STATE_DIR", fs.path.join("state").display().to_string())
            .set("NP_MIN_FREE_DISK", "16MiB")
            .set("NP_POLL_INTERVAL", "1s")
            .set("NP_RETRY_FIRST", "1s")
            .set("NP_RETRY_CAP", "8s")
            .set("NP_LOG", "info");
    }
    let agent_a = a.start();
    let agent_b = b.start();
    let logs = || format!("{}\n----\n{}", agent_a.log(), agent_b.log());

    // A's disk nearly full: 20 of 32 MiB taken, 12 MiB free < 16 MiB.
    std::fs::write(fs_a.path.join("filler"), vec![0u8; 20 * MIB]).unwrap();
    wait_until(
        LIMIT,
        || !events(&agent_a.log(), "backpressure.on", &[("reason", "disk")]).is_empty(),
        logs,
    );
    let on = events(&agent_a.log(), "backpressure.on", &[])[0].clone();
    assert_eq!(on.get("min"), Some("16777216"), "{}", on.raw);
    assert!(on.get("free").unwrap().parse::<u64>().unwrap() < 16 * MIB as u64);
    export(&a.outbox("hospb"), "held");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        a.outbox("hospb").join("held.json").exists(),
        "the export stays in the outbox: {}",
        agent_a.log()
    );
    assert!(events(&agent_a.log(), "export.accepted", &[]).is_empty());
    assert_eq!(
        events(&agent_a.log(), "backpressure.on", &[]).len(),
        1,
        "logged once"
    );
    let m = observe::metrics(a.admin_port);
    assert_eq!(
        observe::sample(&m, "np_backpressure{reason=\"disk\"}"),
        Some(1.0),
        "{m}"
    );

    // B's disk nearly full too; then A gets space back.
    std::fs::write(fs_b.path.join("filler"), vec![0u8; 20 * MIB]).unwrap();
    wait_until(
        LIMIT,
        || !events(&agent_b.log(), "backpressure.on", &[]).is_empty(),
        logs,
    );
    std::fs::remove_file(fs_a.path.join("filler")).unwrap();
    wait_until(
        LIMIT,
        || !events(&agent_a.log(), "backpressure.off", &[("reason", "disk")]).is_empty(),
        logs,
    );
    wait_until(
        LIMIT,
        || !a.outbox("hospb").join("held.json").exists(),
        logs,
    );
    // A notifies B, which answers 503 with Retry-After: 60 (A waits its
    // cap of 8 s instead of its 1 s first back-off).
    wait_until(
        LIMIT,
        || !events(&agent_a.log(), "notify.failed", &[("status", "503")]).is_empty(),
        logs,
    );
    let refused = events(&agent_b.log(), "task.refused", &[("status", "503")]);
    assert!(
        refused
            .iter()
            .all(|l| l.get("reason") == Some("backpressure") && l.get("cause") == Some("disk")),
        "{refused:?}"
    );
    assert!(!refused.is_empty(), "{}", agent_b.log());
    let retry = events(&agent_a.log(), "work.retry", &[("kind", "notify")]);
    let in_s: i64 = retry[0].get("in_s").unwrap().parse().unwrap();
    assert!(
        in_s >= 7,
        "Retry-After honoured up to the cap: {}",
        retry[0].raw
    );
    let m = observe::metrics(b.admin_port);
    assert!(
        observe::sample(&m, "np_backpressure_refused_total{endpoint=\"/fhir/Task\"}").unwrap()
            >= 1.0,
        "{m}"
    );
    assert_eq!(pulled(&b.inbox("hospa")), 0);
    // The Mitz broker gets the same answer, and nothing is stored.
    let (status, retry_after) = post_mitz(&broker, &b);
    assert_eq!((status, retry_after.as_deref()), (503, Some("60")));
    assert!(
        !events(
            &agent_b.log(),
            "mitz.refused",
            &[("status", "503"), ("reason", "backpressure")]
        )
        .is_empty(),
        "{}",
        agent_b.log()
    );
    assert!(!b.inbox("mitz").exists() || std::fs::read_dir(b.inbox("mitz")).unwrap().count() == 0);

    // B gets space back: the retried notification is taken and pulled.
    std::fs::remove_file(fs_b.path.join("filler")).unwrap();
    wait_until(LIMIT, || pulled(&b.inbox("hospa")) == 1, logs);
    // The broker's resend is taken now.
    assert_eq!(post_mitz(&broker, &b).0, 200);
    wait_until(
        LIMIT,
        || std::fs::read_dir(b.inbox("mitz")).is_ok_and(|d| d.count() == 1),
        logs,
    );
    assert!(!events(&agent_b.log(), "backpressure.off", &[]).is_empty());
    let m = observe::metrics(b.admin_port);
    assert_eq!(
        observe::sample(&m, "np_backpressure{reason=\"disk\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(agent_a.stop().code(), Some(0));
    assert_eq!(agent_b.stop().code(), Some(0));
    drop((fs_a, fs_b));
}
