//! The token endpoint: jwt-bearer requests with two fresh ES256 assertions
//! each from 1, 4 and 16 client threads over kept-alive mutual TLS, against
//! the crypto bound of the same run: ring verifying the same two signatures
//! on one thread. The clients sign their assertions before each load starts
//! (as a load generator replays prepared requests), so the driver's share
//! of the two cores during the load is TLS and HTTP only.
//!
//! For the record, not a target: the flushes each request costs (strace on
//! the agent over 200 requests from 4 clients) and the fsync bound they
//! imply (two flushes per raw durable write of the agent's state directory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use np_agent::jose::Alg;

use crate::Options;
use crate::common::TempDir;
use crate::common::agent::{AgentSetup, Party, World};
use crate::common::observe::cpu_seconds;
use crate::report::Run;
use crate::support::TokenRequest;
use crate::support::raw::{Raw, durable_writes_per_sec, jws_parts, rate};
use crate::tools::{FlushCount, total};

const A_URA: &str = "12345678";
const CLIENTS: &[usize] = &[1, 4, 16];
/// Requests counted under strace.
const TRACED: usize = 200;

pub fn measure(opts: &Options) -> Vec<Run> {
    let tmp = TempDir::new("bench-token");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
    let jwks = b.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
    setup.add_partner(&b, &jwks);
    setup.env.set("NP_LOG", "warn");
    let agent = setup.start();
    let state = setup.dir.join("state");
    let target = Target {
        party: Arc::new(b),
        endpoint: setup.token_endpoint(),
        issuer: jwks.base(),
    };
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: token run {}/{}", i + 1, opts.runs);
        let mut run = Run::default();
        let sample = target.request();
        let raw = Raw::new(target.party.pem(Alg::Es256), Alg::Es256).unwrap();
        let (client, authz) = (
            jws_parts(&sample.client).unwrap(),
            jws_parts(&sample.authz).unwrap(),
        );
        let pairs = rate(Duration::from_secs(1), || {
            raw.verify(&client.0, &client.1)?;
            raw.verify(&authz.0, &authz.1)
        })
        .unwrap();
        run.set("token.es256_verify_per_s", pairs * 2.0);
        run.set("token.crypto_bound_req_per_s", pairs);
        for &c in CLIENTS {
            let load = target.load(c, opts.load, None, pairs, agent.pid);
            run.set(&format!("token.c{c}.req_per_s"), load.per_s);
            run.set(
                &format!("token.c{c}.ratio_to_crypto_bound"),
                load.per_s / pairs,
            );
            // Where the two cores went: the agent, and this driver (TLS and
            // HTTP for its clients; their assertions were signed beforehand).
            let per_req_us = |s: f64| s / load.requests.max(1) as f64 * 1e6;
            run.set(
                &format!("token.c{c}.agent_cpu_us_per_req"),
                per_req_us(load.agent_cpu),
            );
            run.set(
                &format!("token.c{c}.driver_cpu_us_per_req"),
                per_req_us(load.driver_cpu),
            );
        }
        run.set("token.verify_us_per_req", 1e6 / pairs);
        let count = FlushCount::attach(&opts.tools, &[agent.pid], tmp.path());
        target.load(4, Duration::ZERO, Some(TRACED / 4), pairs, agent.pid);
        let flushes = total(&count.finish()) / TRACED as f64;
        let writes = durable_writes_per_sec(&state, 2048, Duration::from_secs(2)).unwrap();
        run.set("token.fsyncs_per_request", flushes);
        run.set("token.durable_writes_per_s", writes);
        run.set("token.fsync_bound_req_per_s", 2.0 * writes / flushes);
        run.set("token.agent_rss_mib", crate::tools::rss_mib(agent.pid));
        runs.push(run);
    }
    assert!(agent.stop().success());
    runs
}

/// What one load measured.
struct Loaded {
    per_s: f64,
    requests: u64,
    /// CPU seconds of the agent and of this driver while it ran.
    agent_cpu: f64,
    driver_cpu: f64,
}

/// The agent's token endpoint and the partner that asks it.
struct Target {
    party: Arc<Party>,
    endpoint: String,
    issuer: String,
}

impl Target {
    fn request(&self) -> TokenRequest {
        TokenRequest::new(
            &self.party,
            self.party.key(Alg::Es256),
            &self.issuer,
            &self.endpoint,
            A_URA,
        )
    }

    /// `threads` clients, each on its own kept-alive connection, for
    /// `budget` (or `each` requests per client); returns requests per second
    /// and how many were made, with the CPU the agent and this driver spent
    /// meanwhile.
    ///
    /// Like a load generator replaying prepared requests, each client signs
    /// its assertions before the clock starts (enough for `bound` requests a
    /// second over the whole budget, at most; a client that runs out signs
    /// on the fly), so the agent's rate is not capped by the driver signing
    /// on the same two cores. The assertions live 60 s: the budget is far
    /// shorter.
    fn load(
        &self,
        threads: usize,
        budget: Duration,
        each: Option<usize>,
        bound: f64,
        agent_pid: u32,
    ) -> Loaded {
        let per_client = each
            .unwrap_or_else(|| (bound * budget.as_secs_f64() / threads as f64).ceil() as usize + 1);
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(std::sync::Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (party, endpoint, issuer, done, stop, ready) = (
                    self.party.clone(),
                    self.endpoint.clone(),
                    self.issuer.clone(),
                    done.clone(),
                    stop.clone(),
                    ready.clone(),
                );
                std::thread::spawn(move || {
                    let target = Target {
                        party,
                        endpoint,
                        issuer,
                    };
                    let http = target.party.client();
                    let mut prepared: Vec<TokenRequest> =
                        (0..per_client).map(|_| target.request()).collect();
                    ready.wait();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) && each.is_none_or(|e| n < e) {
                        let request = prepared.pop().unwrap_or_else(|| target.request());
                        let status = request.post(&http, &target.endpoint);
                        assert_eq!(status, 200, "token request refused");
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        let cpu = (cpu_seconds(agent_pid), cpu_seconds(std::process::id()));
        if each.is_none() {
            std::thread::sleep(budget);
            stop.store(true, Ordering::Relaxed);
        }
        for h in handles {
            h.join().unwrap();
        }
        let requests = done.load(Ordering::Relaxed);
        Loaded {
            per_s: requests as f64 / started.elapsed().as_secs_f64(),
            requests,
            agent_cpu: cpu_seconds(agent_pid) - cpu.0,
            driver_cpu: cpu_seconds(std::process::id()) - cpu.1,
        }
    }
}
