//! Mitz consent notifications: distinct notifications POSTed by the broker
//! over kept-alive mutual TLS from 4 client threads, timed until every one
//! is in the inbox (stored/s), against the raw durable-write rate of the
//! agent's state directory in the same run.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::Options;
use crate::common::TempDir;
use crate::common::agent::{AgentSetup, Party, World};
use crate::report::Run;
use crate::support::raw::durable_writes_per_sec;
use crate::support::{post_mitz_notifications, visible_files};

const CLIENTS: usize = 4;

pub fn measure(opts: &Options) -> Vec<Run> {
    let tmp = TempDir::new("bench-mitz");
    let world = World::new();
    let broker = Arc::new(Party::new(&world, tmp.path(), "broker", "55555555", &[]));
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospb", "87654321");
    setup.add_mitz(&broker);
    setup.env.set("NP_LOG", "warn");
    let agent = setup.start();
    let url = setup.url("/fhir/R4");
    let inbox = setup.inbox(&broker.name);
    let serial = Arc::new(AtomicU64::new(0));
    let per_client = opts.notifications / CLIENTS;
    let count = per_client * CLIENTS;
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: mitz run {}/{}", i + 1, opts.runs);
        let writes =
            durable_writes_per_sec(&setup.dir.join("state"), 2048, Duration::from_secs(2)).unwrap();
        let want = visible_files(&inbox) + count;
        let started = Instant::now();
        post_mitz_notifications(&broker, &url, &serial, CLIENTS, per_client as u64);
        let answered = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(600);
        while visible_files(&inbox) < want {
            assert!(
                Instant::now() < deadline,
                "not every notification was stored"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stored = count as f64 / started.elapsed().as_secs_f64();
        let mut run = Run::default();
        run.set("mitz.notifications", count as f64);
        run.set("mitz.answered_per_s", count as f64 / answered);
        run.set("mitz.stored_per_s", stored);
        run.set("mitz.durable_writes_per_s", writes);
        run.set("mitz.ratio_to_durable_write", stored / writes);
        run.set("mitz.agent_rss_mib", crate::tools::rss_mib(agent.pid));
        runs.push(run);
    }
    assert!(agent.stop().success());
    runs
}
