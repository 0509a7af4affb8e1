//! Token endpoint requests per second against a real `np-agent run` process,
//! over kept-alive mTLS connections from several client threads, each request
//! carrying two freshly signed ES256 assertions (as partners send them).
//!
//! `cargo bench --bench token_endpoint` prints a markdown table (about 20 s).
//! Without `--bench` (as `cargo test --all-targets` does) it runs a handful of
//! requests as a smoke test. Every issued token is durably stored, each jti
//! durably recorded and each issue audited with fdatasync, so the numbers
//! include the disk's fsync latency: report the machine and disk with them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use np_agent::jose::Alg;
use support::TokenRequest;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let tmp = TempDir::new("bench-token");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
    let jwks = b.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.add_partner(&b, &jwks);
    setup.env.set("NP_LOG", "warn");
    let agent = setup.start();
    let b = Arc::new(b);
    let endpoint = setup.token_endpoint();
    let issuer = jwks.base();

    println!("| client threads | requests | seconds | requests/s | agent RSS after (MiB) |");
    println!("|---:|---:|---:|---:|---:|");
    let runs: &[usize] = if full { &[1, 4, 16] } else { &[1] };
    for &threads in runs {
        let budget = if full {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        };
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (b, endpoint, issuer, done, stop) = (
                    b.clone(),
                    endpoint.clone(),
                    issuer.clone(),
                    done.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    // One agent per thread: its connection is kept alive across requests.
                    let http = b.client();
                    let key = b.key(Alg::Es256);
                    let mut n = 0;
                    loop {
                        let request = TokenRequest::new(&b, key, &issuer, &endpoint, "12345678");
                        assert_eq!(request.post(&http, &endpoint), 200);
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) || (n >= 3 && budget.is_zero()) {
                            break;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(budget);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        println!(
            "| {threads} | {n} | {secs:.1} | {:.0} | {:.1} |",
            n as f64 / secs,
            agent.rss_kib() as f64 / 1024.0
        );
    }
    let status = agent.stop();
    assert!(status.success());
}
