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
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, World};
use common::folders;
use support::OutboxRig;

fn outbox_intake(n: usize) {
    let tmp = TempDir::new("bench-outbox");
    let world = World::new();
    let rig = OutboxRig::new(&world, tmp.path());
    support::drop_exports(&rig.outbox, 0, n);
    let secs = rig.intake(n);
    println!(
        "| outbox intake | {n} files | {secs:.1} s | {:.0} files/s | {:.2} ms/file |",
        n as f64 / secs,
        secs * 1000.0 / n as f64
    );
}

fn cycles(n: usize) {
    let tmp = TempDir::new("bench-cycles");
    let world = World::new();
    let (a, b) = AgentSetup::pair(&world, tmp.path(), "warn");
    let pa = a.start();
    let pb = b.start();
    let outbox = a.outbox("hospb");
    let started = Instant::now();
    support::drop_exports(&outbox, 0, n);
    let inbox = b.inbox("hospa");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = folders::files(&inbox, ".json").len();
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
