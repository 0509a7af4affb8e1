//! Two numbers for the README:
//!
//! 1. **Spool throughput**: items per second through the real spool API,
//!    `enqueue` → `claim` → `complete`, every step durable (temp file, fsync,
//!    rename, directory fsync shared by the threads writing that folder at
//!    the same time), with 1 and 4 threads (the dispatcher's
//!    default pool) on this machine's disk. An item carries a body the size
//!    of a notification Task (~2 KiB).
//! 2. **Recovery**: the time `Spool::open` takes over a spool of 100,000
//!    items (60 % done, 5 % dead, 10 % retry, 15 % queued, 10 % in flight):
//!    it removes temp files, resolves duplicates, reads every item, and
//!    requeues the in-flight ones durably. The fixture is written directly
//!    (no fsync) and synced once; the page cache is warm, as after a
//!    process restart (not after a reboot).
//!
//! `cargo bench --bench spool` (a couple of minutes: fsync-bound). Without
//! `--bench` it runs with tiny counts as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::TempDir;
use np_agent::spool::{Item, Spool, State};
use np_agent::util::time::now_unix;

fn item(id: String, partner: &str) -> Item {
    Item {
        id,
        kind: "notify".into(),
        partner: partner.into(),
        created_at: now_unix(),
        attempts: 0,
        not_before: 0,
        give_up_at: None,
        last_error: None,
        body: serde_json::json!({
            "case_id": "case-0001",
            "task_id": "3f1e2d4c-0000-4000-8000-000000000000",
            "patient": "999999151",
            "task": {"resourceType": "Task", "padding": "x".repeat(2_000)},
        }),
    }
}

fn throughput(threads: usize, per_thread: usize) {
    let tmp = TempDir::new("bench-spool");
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let spool = Arc::new(spool);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let it = item(format!("t{t}-{i:06}"), "hospb");
                    assert!(spool.enqueue(&it).unwrap());
                    let claimed = spool.claim(&it.id).unwrap();
                    spool.complete(&claimed).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = threads * per_thread;
    assert_eq!(spool.counts(now_unix()).unwrap().done, n);
    println!(
        "| enqueue → claim → complete, {threads} thread(s) | {n} items | {secs:.1} s | {:.0} items/s | {:.2} ms per item per thread |",
        n as f64 / secs,
        secs * 1000.0 * threads as f64 / n as f64
    );
}

fn recovery(n: usize) {
    let tmp = TempDir::new("bench-recovery");
    let root = tmp.path().join("spool");
    for s in State::ALL {
        std::fs::create_dir_all(root.join(s.dir())).unwrap();
    }
    let mut in_flight = 0;
    let write_started = Instant::now();
    for i in 0..n {
        let state = match i % 20 {
            0..=11 => State::Done,
            12 => State::Dead,
            13 | 14 => State::Retry,
            15..=17 => State::Queued,
            _ => State::InFlight,
        };
        if state == State::InFlight {
            in_flight += 1;
        }
        let it = item(
            format!("r-{i:07}"),
            if i % 2 == 0 { "hospb" } else { "vip" },
        );
        std::fs::write(
            root.join(state.dir()).join(format!("{}.json", it.id)),
            serde_json::to_vec(&it).unwrap(),
        )
        .unwrap();
    }
    let _ = std::process::Command::new("sync").status();
    let written = write_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (spool, rec) = Spool::open(tmp.path()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(rec.requeued, in_flight);
    assert_eq!(spool.ids(State::InFlight).unwrap().len(), 0);
    println!(
        "| `Spool::open` recovery | {n} items, {in_flight} in flight | {secs:.1} s | {:.0} items/s | requeued {}; fixture written in {written:.0} s |",
        n as f64 / secs,
        rec.requeued
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    println!("| what | count | time | rate | note |");
    println!("|---|---:|---:|---:|---|");
    throughput(1, if full { 2_000 } else { 20 });
    throughput(4, if full { 1_000 } else { 10 });
    recovery(if full { 100_000 } else { 200 });
}
