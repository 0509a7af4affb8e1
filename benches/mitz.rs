//! Mitz consent notification intake against a real `np-agent run` process:
//! distinct notifications POSTed over kept-alive mTLS from several client
//! threads (as the broker's guaranteed delivery would), timed from the first
//! request until every one is in the inbox. Each accepted notification is a
//! parse and validation, a durable spool item, an audit line with
//! fdatasync, then the worker's inbox file and consent view update (temp +
//! fsync + rename each), so the numbers are fsync-bound: report the machine
//! and disk with them.
//!
//! `cargo bench --bench mitz` prints a markdown table (about 30 s). Without
//! `--bench` (as `cargo test --all-targets` does) it runs a handful of
//! requests as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use support::visible_files as inbox_count;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let tmp = TempDir::new("bench-mitz");
    let world = World::new();
    let broker = Arc::new(Party::new(&world, tmp.path(), "broker", "55555555", &[]));
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospb", "87654321");
    setup
        .env
        .set("NP_PARTNERS", "mitz")
        .set("NP_PARTNER_MITZ_KIND", "mitz")
        .set("NP_PARTNER_MITZ_CERT", "ura:55555555")
        .set("NP_LOG", "warn");
    let agent = setup.start();
    let url = setup.url("/fhir/R4");
    let inbox = setup.inbox("mitz");

    println!(
        "| client threads | notifications | answered in (s) | answers/s | all in the inbox after (s) | stored/s | agent RSS after (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let runs: &[(usize, u64)] = if full {
        &[(1, 1000), (4, 2000)]
    } else {
        &[(1, 5)]
    };
    let serial = Arc::new(AtomicU64::new(0));
    for &(threads, count) in runs {
        let before = inbox_count(&inbox);
        let started = Instant::now();
        let per_thread = count / threads as u64;
        // Distinct bytes: a newer consent state each time.
        support::post_mitz_notifications(&broker, &url, &serial, threads, per_thread);
        let answered = started.elapsed().as_secs_f64();
        let total = per_thread * threads as u64;
        let want = before + total as usize;
        let deadline = Instant::now() + Duration::from_secs(300);
        while inbox_count(&inbox) < want {
            assert!(
                Instant::now() < deadline,
                "not all notifications were stored"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stored = started.elapsed().as_secs_f64();
        println!(
            "| {threads} | {total} | {answered:.1} | {:.0} | {stored:.1} | {:.0} | {:.1} |",
            total as f64 / answered,
            total as f64 / stored,
            agent.rss_kib() as f64 / 1024.0
        );
    }
    let status = agent.stop();
    assert!(status.success());
}
