//! Notified Pull end to end between two agents, the outbox intake, and a
//! scan pass over an outbox that has not changed.
//!
//! - **Cycles.** Per run two fresh agents; first 50 cycles with strace on
//!   both counting their flushes, then `--cycles` exports dropped into A's
//!   outbox at once, timed until B has finished pulling every one
//!   (`np_work_done_total{kind="pull"}`). The bounds of the same run: the
//!   crypto bound from the signatures a cycle makes and checks (two per
//!   token on each side, two signed and four checked per TLS handshake; the
//!   counts from both agents' `/metrics`, the rates from ring on one
//!   thread), and the fsync bound (two flushes per raw durable write of A's
//!   state directory, divided by the flushes per cycle).
//! - **Intake.** `Sender::scan` in this process over `--files` exports
//!   against the raw durable-write rate of the same state directory.
//! - **Scan.** `--files` exports claimed and deferred (the case store made
//!   unwritable, as by a failing disk); then one pass that finds all of
//!   them unchanged, against `find -printf` stat-ing the same files.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use np_agent::jose::Alg;

use crate::Options;
use crate::common::TempDir;
use crate::common::agent::{AgentSetup, World, key_pem_for};
use crate::common::folders;
use crate::common::observe::metrics;
use crate::report::Run;
use crate::support::raw::{Raw, durable_writes_per_sec, rate};
use crate::support::{OutboxRig, drop_exports};
use crate::tools::{FlushCount, rss_mib, total};

/// Cycles counted under strace before the timed ones.
const TRACED: usize = 50;
/// Size of the raw durable writes (the exports and records are of this order).
const WRITE_BYTES: usize = 2048;

pub fn cycles(opts: &Options) -> Vec<Run> {
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: cycles run {}/{}", i + 1, opts.runs);
        let tmp = TempDir::new("bench-cycles");
        let world = World::new();
        let (a, b) = AgentSetup::pair(&world, tmp.path(), "warn");
        let pa = a.start();
        let pb = b.start();
        let outbox = a.outbox("hospb");
        let pulled = || counter(b.admin_port, "np_work_done_total{kind=\"pull\"}");
        let wait_pulled = |n: f64, limit: Duration| {
            let deadline = Instant::now() + limit;
            while pulled() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} pulled:\n{}\n{}",
                    pulled(),
                    pa.log(),
                    pb.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };

        let count = FlushCount::attach(&opts.tools, &[pa.pid, pb.pid], tmp.path());
        drop_exports(&outbox, 0, TRACED);
        wait_pulled(TRACED as f64, Duration::from_secs(300));
        // B settles its spool item after the pull; A records the Task done.
        std::thread::sleep(Duration::from_secs(2));
        let flushes = total(&count.finish()) / TRACED as f64;

        let mut run = Run::default();
        let writes =
            durable_writes_per_sec(&a.dir.join("state"), WRITE_BYTES, Duration::from_secs(2))
                .unwrap();
        let (sign, verify) = es256_rates();
        let before = Counts::of(&a, &b);
        let n = opts.cycles;
        let started = Instant::now();
        drop_exports(&outbox, TRACED, n);
        wait_pulled((TRACED + n) as f64, Duration::from_secs(3600));
        let secs = started.elapsed().as_secs_f64();
        let after = Counts::of(&a, &b);
        assert_eq!(
            folders::files(&b.inbox("hospa"), ".json").len(),
            TRACED + n,
            "every pulled case is in B's inbox"
        );
        let per_cycle = |x: f64, y: f64| (y - x) / n as f64;
        let tokens = per_cycle(before.tokens, after.tokens);
        let handshakes = per_cycle(before.handshakes, after.handshakes);
        let signs = 2.0 * tokens + 2.0 * handshakes;
        let verifies = 2.0 * tokens + 4.0 * handshakes;
        let crypto_bound = 1.0 / (signs / sign + verifies / verify);
        let fsync_bound = 2.0 * writes / flushes;
        let bound = crypto_bound.min(fsync_bound);
        let cycles = n as f64 / secs;
        run.set("cycles.count", n as f64);
        run.set("cycles.per_s", cycles);
        run.set("cycles.tokens_per_cycle", tokens);
        run.set("cycles.handshakes_per_cycle", handshakes);
        run.set("cycles.fsyncs_per_cycle", flushes);
        run.set("cycles.es256_sign_per_s", sign);
        run.set("cycles.es256_verify_per_s", verify);
        run.set("cycles.durable_writes_per_s", writes);
        run.set("cycles.crypto_bound_per_s", crypto_bound);
        run.set("cycles.fsync_bound_per_s", fsync_bound);
        run.set("cycles.bound_per_s", bound);
        run.set("cycles.ratio_to_bound", cycles / bound);
        run.note(
            "cycles.binding",
            if fsync_bound <= crypto_bound {
                "fsync"
            } else {
                "crypto"
            },
        );
        run.set("cycles.rss_a_mib", rss_mib(pa.pid));
        run.set("cycles.rss_b_mib", rss_mib(pb.pid));
        runs.push(run);
        assert!(pa.stop().success());
        assert!(pb.stop().success());
    }
    runs
}

pub fn intake(opts: &Options) -> Vec<Run> {
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: intake run {}/{}", i + 1, opts.runs);
        let tmp = TempDir::new("bench-intake");
        let rig = OutboxRig::new(&World::new(), tmp.path());
        drop_exports(&rig.outbox, 0, opts.files);
        let writes =
            durable_writes_per_sec(&rig.state, WRITE_BYTES, Duration::from_secs(2)).unwrap();
        let secs = rig.intake(opts.files);
        let per_s = opts.files as f64 / secs;
        let mut run = Run::default();
        run.set("intake.files", opts.files as f64);
        run.set("intake.files_per_s", per_s);
        run.set("intake.durable_writes_per_s", writes);
        run.set("intake.ratio_to_durable_write", per_s / writes);
        runs.push(run);
    }
    runs
}

pub fn scan(opts: &Options) -> Vec<Run> {
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: scan run {}/{}", i + 1, opts.runs);
        let tmp = TempDir::new("bench-scan");
        let rig = OutboxRig::new(&World::new(), tmp.path());
        let n = opts.files;
        drop_exports(&rig.outbox, 0, n);
        // A case store that cannot be written: every export is claimed,
        // read, validated and deferred for 30 s.
        let cases = rig.state.join("cases");
        std::fs::remove_dir_all(&cases).unwrap();
        std::fs::write(&cases, b"not a folder").unwrap();
        let first = rig.scan();
        assert_eq!((first.deferred, first.accepted), (n, 0), "{first:?}");
        let started = Instant::now();
        let pass = rig.scan();
        let pass_secs = started.elapsed().as_secs_f64();
        assert_eq!((pass.deferred, pass.accepted), (n, 0), "{pass:?}");
        let started = Instant::now();
        let found = Command::new("find")
            .arg(&rig.outbox)
            .args(["-type", "f", "-printf", "%s %T@ %i\n"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let find_secs = started.elapsed().as_secs_f64();
        assert_eq!(
            found.stdout.iter().filter(|b| **b == b'\n').count(),
            n,
            "find lists every file"
        );
        let mut run = Run::default();
        run.set("scan.files", n as f64);
        run.set("scan.pass_ms", pass_secs * 1000.0);
        run.set("scan.files_per_s", n as f64 / pass_secs);
        run.set("scan.find_ms", find_secs * 1000.0);
        run.set("scan.find_files_per_s", n as f64 / find_secs);
        run.set("scan.ratio_to_find", find_secs / pass_secs);
        runs.push(run);
    }
    runs
}

/// ES256 signatures and verifications per second with ring, one thread, on
/// an assertion-sized input.
fn es256_rates() -> (f64, f64) {
    let raw = Raw::new(&key_pem_for(Alg::Es256), Alg::Es256).unwrap();
    let input = vec![b'e'; 600];
    let signature = raw.sign(&input).unwrap();
    let budget = Duration::from_secs(1);
    let sign = rate(budget, || raw.sign(&input).map(drop)).unwrap();
    let verify = rate(budget, || raw.verify(&input, &signature)).unwrap();
    (sign, verify)
}

/// Both agents' tokens issued and TLS connections accepted so far.
struct Counts {
    tokens: f64,
    handshakes: f64,
}

impl Counts {
    fn of(a: &AgentSetup, b: &AgentSetup) -> Counts {
        let both = |series: &str| counter(a.admin_port, series) + counter(b.admin_port, series);
        Counts {
            tokens: both("np_tokens_issued_total"),
            handshakes: both("np_connections_accepted_total"),
        }
    }
}

/// The sum of every sample of `series` (a metric name, or a name with its
/// labels) on the agent's `/metrics`.
fn counter(admin_port: u16, series: &str) -> f64 {
    metrics(admin_port)
        .lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
