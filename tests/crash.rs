//! The crash harness: two real agents on loopback — hospital A
//! exporting to hospital B, and a smaller stream from B to A — a stream of
//! exports, updates and cancellations dropped into the outboxes over time,
//! and `kill -9` of A, B or both at random moments:
//!
//! - a random delay (0–300 ms) after a drop;
//! - the instant a step of the exchange shows on disk: a file claimed in A's
//!   outbox (mid-acceptance), a notification queued at A (before the claimed
//!   file is removed), a Task stored at B (before its `201` reached A), a
//!   notification or cancellation in flight at A (mid-request, mid-response),
//!   a pull running at B (A serving it), an inbox file (or its temp file)
//!   written at B (before the pull is settled);
//! - during start-up, while an agent is still recovering its state.
//!
//! Every kill is followed by a restart with the same configuration and
//! folders. Then both agents run until nothing is left to do, stop, and the
//! audit checks what hospitals judge us on: every export reached the partner
//! exactly once with identical content, every cancellation was applied,
//! nothing is stuck outside `done` or `dead` (and every `dead` item has a
//! reason we can justify), and no temp file or unprocessed export is left.
//!
//! Settings: `NP_CRASH_SEED` (default [`DEFAULT_SEED`]) and `NP_CRASH_KILLS`
//! (default [`DEFAULT_KILLS`]). The seed fixes every decision the harness
//! makes (what is dropped, when, which trigger, which agent); the operating
//! system's scheduling still varies between runs, so a failure is reproduced
//! by running the same seed a few times. A failed audit keeps its directory
//! and says which case, which file and what differs.
//!
//! ```sh
//! NP_CRASH_SEED=42 NP_CRASH_KILLS=200 cargo test --release --test crash -- --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, World};
use np_agent::cases::{Case, CaseStatus};
use np_agent::spool::{Item, Spool, State};
use serde_json::{Value, json};

/// The seed when `NP_CRASH_SEED` is not set.
const DEFAULT_SEED: u64 = 20_251_202;
/// Kills when `NP_CRASH_KILLS` is not set (what CI runs).
const DEFAULT_KILLS: usize = 50;
/// How long a watched step may take to show before the kill happens anyway.
const WATCH_LIMIT: Duration = Duration::from_millis(1_500);
/// How long both agents get to finish everything after the last kill.
const QUIESCE_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn crash_harness() {
    let seed = env_number("NP_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = env_number("NP_CRASH_KILLS").map_or(DEFAULT_KILLS, |k| k as usize);
    eprintln!("crash harness: seed {seed}, {kills} kills (NP_CRASH_SEED, NP_CRASH_KILLS)");
    let mut h = Harness::new(seed, kills);
    let started = Instant::now();
    h.run();
    let stream_secs = started.elapsed().as_secs_f64();
    let quiesce = h.quiesce();
    h.stop_all();
    let mut problems = Vec::new();
    if let Err(stuck) = quiesce {
        problems.push(stuck);
    }
    for d in h.directions() {
        problems.extend(d.audit());
    }
    problems.extend(h.audit_files());
    let summary = h.summary(started.elapsed().as_secs_f64(), stream_secs);
    if problems.is_empty() {
        eprintln!("{summary}");
        return;
    }
    let mut msg = format!(
        "crash audit failed: {} problem(s)\n{summary}\n",
        problems.len()
    );
    for p in &problems {
        let _ = writeln!(msg, "  - {p}");
    }
    let dir = h.tmp.take().map(TempDir::keep);
    let _ = writeln!(
        msg,
        "kept in {} (agent logs: */agent-*.log)\nrerun: NP_CRASH_SEED={seed} NP_CRASH_KILLS={kills} cargo test --release --test crash -- --nocapture",
        dir.map(|d| d.display().to_string()).unwrap_or_default()
    );
    panic!("{msg}");
}

fn env_number(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{key}={v:?} is not a number")))
}

// ---- the deterministic random source ----

/// xorshift64* seeded through splitmix64 (so that seeds 1, 2, 3 give
/// unrelated streams). Not for anything but choosing test moves.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---- what the EHRs exported ----

/// One case as the exporting EHR knows it.
struct CaseModel {
    id: String,
    bsn: String,
    /// Every export dropped for the case, in order, with when it was dropped.
    exports: Vec<(Value, f64)>,
    /// When the `.cancel` was dropped.
    cancelled: Option<f64>,
}

/// One direction of the exchange: who exports, who receives, and the cases.
struct Flow {
    /// Index into `Harness::setups` of the sender and the receiver.
    sender: usize,
    receiver: usize,
    cases: Vec<CaseModel>,
}

/// Which agent a kill hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    A,
    B,
    Both,
}

/// When a kill happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Trigger {
    /// A random delay after the last drop.
    Delay,
    /// A file sits in A's `.np-claimed` (acceptance under way).
    ClaimedAtA,
    /// A new notification was queued at A (the claimed file not yet removed).
    QueuedAtA,
    /// A notification is in flight at A (request or response under way).
    NotifyInFlightAtA,
    /// A new Task was stored at B (its answer not yet with A).
    StoredAtB,
    /// A pull is running at B (A serving it).
    PullingAtB,
    /// An inbox file (or its temp file) appeared at B (the pull not yet settled).
    InboxAtB,
    /// A cancellation is in flight at A.
    CancelInFlightAtA,
    /// An agent is killed again while it recovers on start-up.
    StartUp,
}

/// The triggers that follow a drop into A's outbox for B.
const WATCHED: [Trigger; 7] = [
    Trigger::Delay,
    Trigger::ClaimedAtA,
    Trigger::QueuedAtA,
    Trigger::NotifyInFlightAtA,
    Trigger::StoredAtB,
    Trigger::PullingAtB,
    Trigger::InboxAtB,
];

/// What a drop was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    Export,
    Cancel,
}

struct Harness {
    seed: u64,
    rng: Rng,
    tmp: Option<TempDir>,
    /// A (hospa) and B (hospb).
    setups: [AgentSetup; 2],
    procs: [Option<AgentProcess>; 2],
    flows: [Flow; 2],
    target_kills: usize,
    /// Kill rounds by victim.
    kills: BTreeMap<&'static str, usize>,
    /// Extra kills of an agent while it was starting up.
    startup_kills: usize,
    /// Cases cancelled while A was down right after a notification was cut off.
    scenarios: usize,
    triggers: BTreeMap<Trigger, (usize, usize)>,
    plan: Plan,
    epoch: Instant,
    quiesce_secs: f64,
}

/// How many drops of each kind are still to come, per flow.
struct Plan {
    exports: [usize; 2],
    updates: [usize; 2],
    cancels: [usize; 2],
}

impl Plan {
    fn remaining(&self) -> usize {
        (0..2)
            .map(|f| self.exports[f] + self.updates[f] + self.cancels[f])
            .sum()
    }
}

const A: usize = 0;
const B: usize = 1;

impl Harness {
    fn new(seed: u64, target_kills: usize) -> Harness {
        let tmp = TempDir::new("crash");
        let world = World::new();
        let (a, b) = AgentSetup::pair(&world, tmp.path(), "info");
        let exports = (target_kills * 3 / 5).max(12);
        let back = (exports / 5).max(2);
        let plan = Plan {
            exports: [exports, back],
            updates: [exports / 3, back / 2],
            cancels: [(exports / 6).max(2), 1],
        };
        let pa = a.start();
        let pb = b.start();
        Harness {
            seed,
            rng: Rng::new(seed),
            tmp: Some(tmp),
            setups: [a, b],
            procs: [Some(pa), Some(pb)],
            flows: [
                Flow {
                    sender: A,
                    receiver: B,
                    cases: Vec::new(),
                },
                Flow {
                    sender: B,
                    receiver: A,
                    cases: Vec::new(),
                },
            ],
            target_kills,
            kills: BTreeMap::new(),
            startup_kills: 0,
            scenarios: 0,
            triggers: BTreeMap::new(),
            plan,
            epoch: Instant::now(),
            quiesce_secs: 0.0,
        }
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The stream: drops and kills, interleaved. Each round lets time pass,
    /// drops a few files and then kills, so that a watched step is usually
    /// the consequence of a drop of that very round.
    fn run(&mut self) {
        for k in 0..self.target_kills {
            std::thread::sleep(Duration::from_millis(self.rng.below(400)));
            let left = self.target_kills - k;
            let due = self.plan.remaining().div_ceil(left);
            let n = if due == 0 {
                0
            } else {
                1 + self.rng.below(due as u64 * 2) as usize
            };
            let mut last = None;
            for i in 0..n.min(self.plan.remaining()) {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(self.rng.below(100)));
                }
                last = self.drop_one();
            }
            self.kill_one(last);
            if k % 10 == 9 {
                eprintln!(
                    "[{:7.2}s] {} kills, {} drops left",
                    self.now(),
                    k + 1,
                    self.plan.remaining()
                );
            }
        }
        while self.plan.remaining() > 0 {
            self.drop_one();
        }
    }

    // ---- drops ----

    /// Drops one export, update or cancellation, as the plan allows, and
    /// says what it dropped (and in which flow).
    fn drop_one(&mut self) -> Option<(usize, Dropped)> {
        let flow = if self.plan.exports[1] + self.plan.updates[1] + self.plan.cancels[1] > 0
            && (self.rng.percent(20)
                || self.plan.exports[0] + self.plan.updates[0] + self.plan.cancels[0] == 0)
        {
            1
        } else {
            0
        };
        let updatable: Vec<usize> = (0..self.flows[flow].cases.len())
            .filter(|&i| self.can_update(flow, i))
            .collect();
        let cancellable: Vec<usize> = (0..self.flows[flow].cases.len())
            .filter(|&i| self.flows[flow].cases[i].cancelled.is_none())
            .collect();
        let roll = self.rng.below(100);
        if self.plan.cancels[flow] > 0
            && !cancellable.is_empty()
            && (roll < 15 || self.plan.exports[flow] + self.plan.updates[flow] == 0)
        {
            // Now and then the newest case, often before it could be delivered.
            let i = if self.rng.percent(40) {
                *cancellable.last().unwrap()
            } else {
                *self.rng.pick(&cancellable)
            };
            self.drop_cancel(flow, i);
            self.plan.cancels[flow] -= 1;
            Some((flow, Dropped::Cancel))
        } else if self.plan.updates[flow] > 0
            && !updatable.is_empty()
            && (roll < 45 || self.plan.exports[flow] == 0)
        {
            let i = *self.rng.pick(&updatable);
            self.drop_export(flow, i);
            self.plan.updates[flow] -= 1;
            Some((flow, Dropped::Export))
        } else if self.plan.exports[flow] > 0 {
            let n = self.flows[flow].cases.len();
            let prefix = if flow == 0 { "ab" } else { "ba" };
            let bsn = self.bsn();
            self.flows[flow].cases.push(CaseModel {
                id: format!("{prefix}-{n:04}"),
                bsn,
                exports: Vec::new(),
                cancelled: None,
            });
            self.drop_export(flow, n);
            self.plan.exports[flow] -= 1;
            Some((flow, Dropped::Export))
        } else if self.plan.updates[flow] > 0 {
            // Every case is waiting for its previous file: let it go.
            self.plan.updates[flow] -= 1;
            None
        } else {
            self.plan.cancels[flow] = 0;
            None
        }
    }

    /// An update may be dropped when the case is live and its previous file
    /// has left the outbox (an EHR replacing its own unread export would make
    /// the first one legitimately never sent).
    fn can_update(&self, flow: usize, i: usize) -> bool {
        let c = &self.flows[flow].cases[i];
        c.cancelled.is_none() && !self.outbox(flow).join(format!("{}.json", c.id)).exists()
    }

    fn outbox(&self, flow: usize) -> PathBuf {
        let f = &self.flows[flow];
        self.setups[f.sender].outbox(&self.setups[f.receiver].name)
    }

    fn drop_export(&mut self, flow: usize, i: usize) {
        let version = self.flows[flow].cases[i].exports.len() + 1;
        let bundle = {
            let c = &self.flows[flow].cases[i];
            let (id, bsn) = (c.id.clone(), c.bsn.clone());
            export_bundle(&mut self.rng, &id, &bsn, version)
        };
        let name = format!("{}.json", self.flows[flow].cases[i].id);
        write_like_an_ehr(&self.outbox(flow), &name, bundle.to_string().as_bytes());
        let at = self.now();
        self.flows[flow].cases[i].exports.push((bundle, at));
    }

    fn drop_cancel(&mut self, flow: usize, i: usize) {
        let name = format!("{}.cancel", self.flows[flow].cases[i].id);
        write_like_an_ehr(&self.outbox(flow), &name, b"");
        let at = self.now();
        self.flows[flow].cases[i].cancelled = Some(at);
    }

    /// A BSN that passes the 11-test.
    fn bsn(&mut self) -> String {
        loop {
            let digits: Vec<u64> = (0..8).map(|_| self.rng.below(10)).collect();
            let sum: u64 = digits.iter().zip((2..=9).rev()).map(|(d, w)| d * w).sum();
            let last = sum % 11;
            if last == 10 || digits[0] == 0 {
                continue;
            }
            let text: String = digits
                .iter()
                .chain(std::iter::once(&last))
                .map(|d| char::from(b'0' + *d as u8))
                .collect();
            if np_agent::ids::Bsn::parse(&text).is_some() {
                return text;
            }
        }
    }

    // ---- kills ----

    /// One kill (and restart) at a moment chosen by a trigger that fits
    /// what was just dropped.
    fn kill_one(&mut self, last: Option<(usize, Dropped)>) {
        let trigger = if self.rng.percent(12) {
            Trigger::StartUp
        } else {
            match last {
                Some((0, Dropped::Cancel)) if self.rng.percent(60) => Trigger::CancelInFlightAtA,
                Some((0, _)) => *self.rng.pick(&WATCHED),
                _ => Trigger::Delay,
            }
        };
        let victim = match trigger {
            Trigger::ClaimedAtA => {
                if self.rng.percent(80) {
                    Victim::A
                } else {
                    Victim::Both
                }
            }
            Trigger::InboxAtB => {
                if self.rng.percent(80) {
                    Victim::B
                } else {
                    Victim::Both
                }
            }
            Trigger::QueuedAtA
            | Trigger::NotifyInFlightAtA
            | Trigger::StoredAtB
            | Trigger::PullingAtB
            | Trigger::CancelInFlightAtA
            | Trigger::Delay
            | Trigger::StartUp => *self.rng.pick(&[Victim::A, Victim::B, Victim::Both]),
        };
        let seen = match trigger {
            Trigger::Delay | Trigger::StartUp => {
                std::thread::sleep(Duration::from_millis(self.rng.below(301)));
                true
            }
            _ => self.watch(trigger),
        };
        // A little jitter around the moment itself (fsync windows are short).
        if self.rng.percent(50) {
            std::thread::sleep(Duration::from_micros(self.rng.below(3_000)));
        }
        let hit: &[usize] = match victim {
            Victim::A => &[A],
            Victim::B => &[B],
            Victim::Both => &[A, B],
        };
        for &who in hit {
            if let Some(p) = self.procs[who].take() {
                p.kill9();
            }
        }
        *self
            .kills
            .entry(match victim {
                Victim::A => "A",
                Victim::B => "B",
                Victim::Both => "both",
            })
            .or_default() += 1;
        let t = self.triggers.entry(trigger).or_default();
        t.0 += 1;
        if seen {
            t.1 += 1;
        }
        // The EHR cancels the case whose notification was just cut off, while
        // A is down: after the restart A may not know whether B has the Task.
        if hit.contains(&A)
            && matches!(trigger, Trigger::NotifyInFlightAtA | Trigger::StoredAtB)
            && self.plan.cancels[0] > 0
            && self.rng.percent(50)
        {
            if let Some(i) = self.flows[0]
                .cases
                .iter()
                .rposition(|c| c.cancelled.is_none() && !c.exports.is_empty())
            {
                self.drop_cancel(0, i);
                self.plan.cancels[0] -= 1;
                self.scenarios += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(self.rng.below(250)));
        for &who in hit {
            if trigger == Trigger::StartUp {
                // Killed again while recovering: state half-recovered.
                let p = self.setups[who].start_unwaited();
                std::thread::sleep(Duration::from_millis(self.rng.below(60)));
                p.kill9();
                self.startup_kills += 1;
            }
            self.procs[who] = Some(self.setups[who].start());
        }
    }

    /// Waits (polling) until the step `trigger` names shows on disk. False
    /// when it did not within [`WATCH_LIMIT`] (the kill happens anyway).
    fn watch(&self, trigger: Trigger) -> bool {
        let a = &self.setups[A];
        let b = &self.setups[B];
        let a_spool = a.dir.join("state/spool");
        let b_spool = b.dir.join("state/spool");
        let claimed = a.outbox("hospb").join(".np-claimed");
        let inbox = b.inbox("hospa");
        let queued_before = names(&a_spool.join("queued"));
        let stored_before = names(&b_spool.join("queued"));
        let inbox_before = tree_count(&inbox);
        let deadline = Instant::now() + WATCH_LIMIT;
        while Instant::now() < deadline {
            let hit = match trigger {
                Trigger::ClaimedAtA => !names(&claimed).is_empty(),
                Trigger::QueuedAtA => names(&a_spool.join("queued"))
                    .iter()
                    .any(|n| n.starts_with("notify-") && !queued_before.contains(n)),
                Trigger::NotifyInFlightAtA => names(&a_spool.join("in-flight"))
                    .iter()
                    .any(|n| n.starts_with("notify-")),
                Trigger::CancelInFlightAtA => names(&a_spool.join("in-flight"))
                    .iter()
                    .any(|n| n.starts_with("cancel-")),
                Trigger::StoredAtB => names(&b_spool.join("queued"))
                    .iter()
                    .any(|n| n.starts_with("pull-") && !stored_before.contains(n)),
                Trigger::PullingAtB => names(&b_spool.join("in-flight"))
                    .iter()
                    .any(|n| n.starts_with("pull-")),
                Trigger::InboxAtB => tree_count(&inbox) != inbox_before,
                Trigger::Delay | Trigger::StartUp => true,
            };
            if hit {
                return true;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        false
    }

    // ---- the end ----

    /// Lets both agents finish: no spool item queued, in flight or waiting
    /// for a retry, and no file left in an outbox, three looks in a row.
    fn quiesce(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut calm = 0;
        loop {
            let busy = self.busy();
            if busy.is_empty() {
                calm += 1;
                if calm >= 3 {
                    self.quiesce_secs = started.elapsed().as_secs_f64();
                    return Ok(());
                }
            } else {
                calm = 0;
            }
            if started.elapsed() > QUIESCE_LIMIT {
                self.quiesce_secs = started.elapsed().as_secs_f64();
                return Err(format!(
                    "not quiescent after {QUIESCE_LIMIT:?}: {}",
                    busy.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// What is still to be done, named.
    fn busy(&self) -> Vec<String> {
        let mut out = Vec::new();
        let now = np_agent::util::time::now_unix();
        for s in &self.setups {
            let spool = Spool::at(&s.dir.join("state")).unwrap();
            for state in [State::Queued, State::InFlight, State::Retry] {
                for id in spool.ids(state).unwrap_or_default() {
                    let detail = spool
                        .load(state, &id)
                        .map(|i| {
                            format!(
                                "attempt {} due in {} s: {}",
                                i.attempts,
                                i.not_before - now,
                                i.last_error.unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    out.push(format!("{}: {id} is {} ({detail})", s.name, state.dir()));
                }
            }
        }
        for f in 0..2 {
            let dir = self.outbox(f);
            for sub in [dir.clone(), dir.join(".np-claimed")] {
                for n in names(&sub) {
                    if sub.join(&n).is_file() {
                        out.push(format!("{} still holds {n}", sub.display()));
                    }
                }
            }
        }
        out
    }

    fn stop_all(&mut self) {
        for who in [A, B] {
            if let Some(p) = self.procs[who].take() {
                let log = p.log_path.clone();
                let status = p.stop();
                assert!(
                    status.success(),
                    "{} did not stop cleanly ({status}); log {}",
                    self.setups[who].name,
                    log.display()
                );
            }
        }
    }

    fn directions(&self) -> Vec<Direction<'_>> {
        self.flows
            .iter()
            .map(|f| Direction {
                sender: &self.setups[f.sender],
                receiver: &self.setups[f.receiver],
                cases: &f.cases,
            })
            .collect()
    }

    /// No temp file anywhere, no rejected or unprocessed export.
    fn audit_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for s in &self.setups {
            for sub in ["state", "inbox", "outbox"] {
                for path in walk(&s.dir.join(sub)) {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    if name.starts_with(".np-") && name.ends_with(".tmp") {
                        problems.push(format!("temp file left: {}", path.display()));
                    }
                }
            }
        }
        for f in 0..2 {
            let dir = self.outbox(f);
            for path in walk(&dir) {
                let rel = path.strip_prefix(&dir).unwrap();
                if rel.starts_with(".rejected") && path.extension().is_some_and(|e| e == "txt") {
                    problems.push(format!(
                        "export rejected: {} says {:?}",
                        path.display(),
                        std::fs::read_to_string(&path).unwrap_or_default().trim()
                    ));
                } else if !rel.starts_with(".rejected") {
                    problems.push(format!(
                        "unprocessed file left in the outbox: {}",
                        path.display()
                    ));
                }
            }
        }
        problems
    }

    fn summary(&self, total_secs: f64, stream_secs: f64) -> String {
        let exports: usize = self
            .flows
            .iter()
            .flat_map(|f| &f.cases)
            .map(|c| c.exports.len().min(1))
            .sum();
        let updates: usize = self
            .flows
            .iter()
            .flat_map(|f| &f.cases)
            .map(|c| c.exports.len().saturating_sub(1))
            .sum();
        let cancels = self
            .flows
            .iter()
            .flat_map(|f| &f.cases)
            .filter(|c| c.cancelled.is_some())
            .count();
        let rounds: usize = self.kills.values().sum();
        let processes = rounds + self.kills.get("both").copied().unwrap_or(0) + self.startup_kills;
        let by_kind: Vec<String> = self.kills.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let by_trigger: Vec<String> = self
            .triggers
            .iter()
            .map(|(t, (n, seen))| format!("{t:?} {n} (seen {seen})"))
            .collect();
        format!(
            "crash harness summary: seed {} | {rounds} kill rounds ({}), {} more during start-up: {processes} processes killed with SIGKILL | triggers: {} | {exports} exports, {updates} updates, {cancels} cancellations ({} while A was down after cutting off a notification; A→B {} cases, B→A {} cases) | stream {stream_secs:.1} s, quiescent after {:.1} s, total {total_secs:.1} s",
            self.seed,
            by_kind.join(", "),
            self.startup_kills,
            by_trigger.join(", "),
            self.scenarios,
            self.flows[0].cases.len(),
            self.flows[1].cases.len(),
            self.quiesce_secs
        )
    }
}

impl Drop for Harness {
    /// A harness that panics (an agent that would not start, say) keeps its
    /// directory for a look at the logs, like a failed audit.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("crash harness: kept {}", tmp.keep().display());
            }
        }
    }
}

// ---- the audit ----

/// One direction's audit: the sender's case records and spool, the
/// receiver's spool and inbox, against what the EHR exported.
struct Direction<'a> {
    sender: &'a AgentSetup,
    receiver: &'a AgentSetup,
    cases: &'a [CaseModel],
}

/// A Task the sender created, with the export it carries.
struct Announced {
    task: String,
    version: u32,
    /// Index of the export (in the EHR's order) whose data the Task announced.
    export: Option<usize>,
}

impl Direction<'_> {
    fn audit(&self) -> Vec<String> {
        let mut p = Vec::new();
        let s_state = self.sender.dir.join("state");
        let r_state = self.receiver.dir.join("state");
        let s_spool = Spool::at(&s_state).unwrap();
        let r_spool = Spool::at(&r_state).unwrap();
        let partner_at_sender = &self.receiver.name;
        let partner_at_receiver = &self.sender.name;
        let inbox = self.receiver.inbox(partner_at_receiver);
        let arrow = format!("{}→{}", self.sender.name, self.receiver.name);

        // The receiver's pull items by inbox Task name.
        let mut pulls: BTreeMap<String, (State, Item)> = BTreeMap::new();
        for state in State::ALL {
            for id in r_spool.ids(state).unwrap() {
                let item = r_spool.load(state, &id).unwrap();
                if item.kind == "pull" && item.partner == *partner_at_receiver {
                    let task = item.body["inbox_task"].as_str().unwrap_or("").to_string();
                    pulls.insert(task, (state, item));
                }
            }
        }
        let mut known_groups = BTreeSet::new();
        let mut known_tasks = BTreeSet::new();

        for model in self.cases {
            let cid = &model.id;
            let dir = s_state.join("cases").join(partner_at_sender).join(cid);
            let case: Case = match std::fs::read(dir.join("case.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
                Err(e) => {
                    p.push(format!(
                        "{arrow} case {cid}: the sender has no case record ({e}) although {} export(s) were dropped",
                        model.exports.len()
                    ));
                    continue;
                }
            };
            known_groups.insert(case.group_id.clone());
            // 1. Every export accepted exactly once, in order.
            let mut announced = Vec::new();
            for t in &case.tasks {
                known_tasks.insert(t.task_id.clone());
                let data = dir.join(format!("v{}.json", t.version));
                let export = match std::fs::read(&data) {
                    Ok(bytes) => {
                        let stored = resources(&serde_json::from_slice(&bytes).unwrap());
                        let found = model
                            .exports
                            .iter()
                            .position(|(e, _)| resources(e) == stored);
                        if found.is_none() {
                            p.push(format!(
                                "{arrow} case {cid}: Task {} (version {}) announces {}, which matches none of the {} export(s) dropped",
                                t.task_id,
                                t.version,
                                data.display(),
                                model.exports.len()
                            ));
                        }
                        found
                    }
                    Err(e) => {
                        p.push(format!(
                            "{arrow} case {cid}: Task {} (version {}): {} cannot be read: {e}",
                            t.task_id,
                            t.version,
                            data.display()
                        ));
                        None
                    }
                };
                announced.push(Announced {
                    task: t.task_id.clone(),
                    version: t.version,
                    export,
                });
            }
            for (i, (_, at)) in model.exports.iter().enumerate() {
                let tasks: Vec<String> = announced
                    .iter()
                    .filter(|a| a.export == Some(i))
                    .map(|a| format!("{} (version {})", a.task, a.version))
                    .collect();
                match tasks.len() {
                    1 => {}
                    0 => p.push(format!(
                        "{arrow} case {cid}: export #{} (dropped at {at:.2} s) was never accepted: no Task announces it",
                        i + 1
                    )),
                    n => p.push(format!(
                        "{arrow} case {cid}: export #{} (dropped at {at:.2} s) was accepted {n} times, so the partner is notified {n} times for one export: Tasks {}",
                        i + 1,
                        tasks.join(", ")
                    )),
                }
            }
            let order: Vec<usize> = announced.iter().filter_map(|a| a.export).collect();
            if order.windows(2).any(|w| w[0] >= w[1]) {
                p.push(format!(
                    "{arrow} case {cid}: Tasks announce the exports in the order {:?}, not one after the other",
                    order.iter().map(|i| i + 1).collect::<Vec<_>>()
                ));
            }
            let cancelled = model.cancelled.is_some();
            match (cancelled, case.status) {
                (true, CaseStatus::Cancelled) | (false, CaseStatus::Live) => {}
                (want, got) => p.push(format!(
                    "{arrow} case {cid}: status {got:?}, but the EHR {} it",
                    if want { "cancelled" } else { "did not cancel" }
                )),
            }
            if cancelled {
                p.extend(self.audit_not_served(&s_state, &case, &arrow));
            }

            // 2. The sender's spool: every notification delivered, or dead for a reason.
            let last = announced.len().saturating_sub(1);
            let group_dir = inbox.join(&case.group_id);
            for (n, a) in announced.iter().enumerate() {
                let task = &a.task;
                let notify = find(&s_spool, &format!("notify-{task}"));
                let delivered = matches!(notify, Some((State::Done, _)));
                match (&notify, cancelled) {
                    (None, _) => p.push(format!(
                        "{arrow} case {cid}: the notification of Task {task} was never queued"
                    )),
                    (Some((State::Done, _)), _) => {}
                    (Some((State::Dead, item)), true)
                        if item
                            .last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("was cancelled")) => {}
                    (Some((state, item)), _) => p.push(format!(
                        "{arrow} case {cid}: the notification of Task {task} ended {} ({})",
                        state.dir(),
                        item.last_error.as_deref().unwrap_or("no reason")
                    )),
                }
                let pull = pulls.get(task);
                if delivered && pull.is_none() {
                    p.push(format!(
                        "{arrow} case {cid}: Task {task} was delivered, but the receiver has no pull for it"
                    ));
                }
                let data_file = group_dir.join(format!("{task}.json"));
                let cancel_file = group_dir.join(format!("{task}.cancelled.json"));
                if !cancelled {
                    // 3. Live: exactly one inbox file per Task, identical to an export
                    // no older than the one it announced; the latest export arrived.
                    match pull {
                        Some((State::Done, _)) => {}
                        Some((state, item)) => p.push(format!(
                            "{arrow} case {cid}: the pull of Task {task} ended {} ({})",
                            state.dir(),
                            item.last_error.as_deref().unwrap_or("no reason")
                        )),
                        None => {}
                    }
                    if cancel_file.exists() {
                        p.push(format!(
                            "{arrow} case {cid}: {} exists, but the case was never cancelled",
                            cancel_file.display()
                        ));
                    }
                    let Some(from) = a.export else { continue };
                    // The latest Task carries the latest export whole. An
                    // earlier one pulled after an update gets the newer data
                    // (DESIGN: "the new data replaces the old for pulls"), as
                    // far as its own reads and searches reach: always one
                    // export's data, never a mixture, never older.
                    let earliest = if n == last {
                        model.exports.len() - 1
                    } else {
                        from
                    };
                    match read_inbox(&data_file, task) {
                        Err(e) => p.push(format!("{arrow} case {cid}: {e}")),
                        Ok((got, selection)) => {
                            let fits = (earliest..model.exports.len()).rev().find(|&j| {
                                let all = resources(&model.exports[j].0);
                                let want = if j == from || n == last {
                                    all
                                } else {
                                    selection.select(all)
                                };
                                want == got
                            });
                            if fits.is_none() {
                                let want = resources(&model.exports[earliest].0);
                                p.push(format!(
                                    "{arrow} case {cid}: {} (Task {task}, export #{}{}) is not identical to export #{}{}: {}",
                                    data_file.display(),
                                    from + 1,
                                    if n == last { ", the latest Task" } else { "" },
                                    earliest + 1,
                                    if earliest + 1 < model.exports.len() {
                                        " (nor, as far as the Task reaches, to a later one)"
                                    } else {
                                        ""
                                    },
                                    differences(&want, &got)
                                ));
                            }
                        }
                    }
                } else {
                    // 4. Cancelled: every Task the receiver got has its cancellation; a
                    // pull may have ended dead (the sender refused it once cancelled).
                    if let Some((state, item)) = pull {
                        if !cancel_file.exists() {
                            p.push(format!(
                                "{arrow} case {cid}: the receiver got Task {task} but not its cancellation ({} is missing)",
                                cancel_file.display()
                            ));
                        } else {
                            let c = read_json(&cancel_file);
                            if c["status"] != "cancelled"
                                || c["identifier"][0]["value"] != format!("urn:uuid:{task}")
                            {
                                p.push(format!(
                                    "{arrow} case {cid}: {} is not the cancellation of Task {task}",
                                    cancel_file.display()
                                ));
                            }
                        }
                        match state {
                            State::Done => {}
                            State::Dead
                                if item
                                    .last_error
                                    .as_deref()
                                    .is_some_and(|e| e.contains("invalid_grant")) => {}
                            _ => p.push(format!(
                                "{arrow} case {cid}: the pull of cancelled Task {task} ended {} ({})",
                                state.dir(),
                                item.last_error.as_deref().unwrap_or("no reason")
                            )),
                        }
                        if delivered {
                            match find(&s_spool, &format!("cancel-{task}")) {
                                Some((State::Done, _)) => {}
                                Some((state, item)) => p.push(format!(
                                    "{arrow} case {cid}: the cancellation of Task {task} ended {} ({})",
                                    state.dir(),
                                    item.last_error.as_deref().unwrap_or("no reason")
                                )),
                                None => p.push(format!(
                                    "{arrow} case {cid}: Task {task} was delivered but no cancellation was queued for it"
                                )),
                            }
                        }
                    } else if cancel_file.exists() {
                        p.push(format!(
                            "{arrow} case {cid}: {} exists, but the receiver never got Task {task}",
                            cancel_file.display()
                        ));
                    }
                    let report = r_state.join("receiver/pulls").join(format!(
                        "{}.json",
                        pull.map(|(_, i)| i.id.as_str()).unwrap_or("-")
                    ));
                    if report.exists() && !data_file.exists() {
                        p.push(format!(
                            "{arrow} case {cid}: the receiver pulled Task {task} ({}), but {} is missing",
                            report.display(),
                            data_file.display()
                        ));
                    }
                    if data_file.exists() {
                        // Pulled before the cancellation: what is there is one
                        // export's data (resources may be missing once the sender
                        // stopped serving mid-pull), never a mixture.
                        if let (Ok((got, _)), Some(from)) = (read_inbox(&data_file, task), a.export)
                        {
                            let fits = (from..model.exports.len()).any(|j| {
                                let want = resources(&model.exports[j].0);
                                got.iter().all(|(k, v)| want.get(k) == Some(v))
                            });
                            if !fits {
                                p.push(format!(
                                    "{arrow} case {cid}: {} (Task {task}) holds resources of no single export #{} or later",
                                    data_file.display(),
                                    from + 1
                                ));
                            }
                        }
                    }
                }
            }
            // 5. Nothing else in the group's folder: no second file for a Task.
            let allowed: BTreeSet<String> = announced
                .iter()
                .flat_map(|a| {
                    [
                        format!("{}.json", a.task),
                        format!("{}.cancelled.json", a.task),
                    ]
                })
                .collect();
            for n in names(&group_dir) {
                if !allowed.contains(&n) {
                    p.push(format!(
                        "{arrow} case {cid}: unexpected file {}",
                        group_dir.join(&n).display()
                    ));
                }
            }
        }
        for g in names(&inbox) {
            if !known_groups.contains(&g) {
                p.push(format!(
                    "{arrow}: {} belongs to no case the sender has",
                    inbox.join(&g).display()
                ));
            }
        }
        // 6. Nothing stuck, nothing dead without a reason we can name.
        for (spool, side) in [(&s_spool, self.sender), (&r_spool, self.receiver)] {
            for state in [State::Queued, State::InFlight, State::Retry] {
                for id in spool.ids(state).unwrap() {
                    p.push(format!(
                        "{}: spool item {id} is stuck in {}",
                        side.name,
                        state.dir()
                    ));
                }
            }
            for n in names(&side.dir.join("state/spool/dead")) {
                if !n.ends_with(".json") {
                    p.push(format!(
                        "{}: spool/dead/{n} is not an item (corrupt?)",
                        side.name
                    ));
                }
            }
        }
        for (task, (_, item)) in &pulls {
            if !known_tasks.contains(task) {
                p.push(format!(
                    "{arrow}: the receiver's pull {} is for Task {task}, which the sender never created",
                    item.id
                ));
            }
        }
        p
    }

    /// A cancelled case is not served: its base is refused and no token for
    /// it is left.
    fn audit_not_served(&self, s_state: &Path, case: &Case, arrow: &str) -> Vec<String> {
        let mut p = Vec::new();
        if case.is_live(np_agent::util::time::now_unix()) {
            p.push(format!(
                "{arrow} case {}: cancelled, but the sender would still serve it",
                case.case_id
            ));
        }
        let now = np_agent::util::time::now_unix();
        let grants = match np_agent::oauth::grants::TokenStore::grants_at(s_state) {
            Ok(g) => g,
            Err(e) => {
                p.push(format!("{arrow}: the token store cannot be read: {e}"));
                Vec::new()
            }
        };
        for grant in grants {
            if grant.authorization_base() == Some(case.authorization_base.as_str())
                && grant.expires_at() > now
            {
                p.push(format!(
                    "{arrow} case {}: a live pull token for the cancelled case remains",
                    case.case_id
                ));
            }
        }
        p
    }
}

/// What a notification Task asks to be pulled: the types it searches and
/// the resources it reads.
struct Selection {
    searched: BTreeSet<String>,
    read: BTreeSet<String>,
}

impl Selection {
    fn of(task: &Value) -> Selection {
        let mut sel = Selection {
            searched: BTreeSet::new(),
            read: BTreeSet::new(),
        };
        for input in task["input"].as_array().into_iter().flatten() {
            let code = input["type"]["coding"][0]["code"].as_str().unwrap_or("");
            let Some(v) = input["valueString"].as_str() else {
                continue;
            };
            if matches!(code, "authorization-base" | "get-workflow-task") {
                continue;
            }
            if code == "read-resource" {
                sel.read.insert(v.to_string());
            } else {
                sel.searched
                    .insert(v.split('?').next().unwrap_or("").to_string());
            }
        }
        sel
    }

    /// The resources of an export that these reads and searches return.
    fn select(&self, all: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        all.into_iter()
            .filter(|(k, _)| {
                self.read.contains(k)
                    || self
                        .searched
                        .contains(k.split('/').next().unwrap_or_default())
            })
            .collect()
    }
}

/// An inbox data file's resources (the Task entry checked and left out) and
/// what its Task asked for.
fn read_inbox(path: &Path, task: &str) -> Result<(BTreeMap<String, Value>, Selection), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let first = &v["entry"][0]["resource"];
    if v["type"] != "collection" || first["resourceType"] != "Task" {
        return Err(format!(
            "{} is not a collection Bundle starting with the Task",
            path.display()
        ));
    }
    if first["identifier"][0]["value"] != format!("urn:uuid:{task}") {
        return Err(format!(
            "{} starts with Task {}, not {task}",
            path.display(),
            first["identifier"][0]["value"]
        ));
    }
    let mut r = resources(&v);
    r.retain(|k, _| !k.starts_with("Task/"));
    Ok((r, Selection::of(first)))
}

/// A Bundle's resources by `Type/id`.
fn resources(bundle: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        let key = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap_or("?"),
            r["id"].as_str().unwrap_or("?")
        );
        out.insert(key, r.clone());
    }
    out
}

/// What differs between two resource sets, by `Type/id`.
fn differences(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>) -> String {
    let mut d = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => d.push(format!("{k} missing")),
            Some(g) if g != v => d.push(format!("{k} differs")),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        d.push(format!("{k} not exported"));
    }
    if d.is_empty() {
        "identical to it".into()
    } else {
        d.join(", ")
    }
}

fn find(spool: &Spool, id: &str) -> Option<(State, Item)> {
    let state = spool.find(id)?;
    Some((state, spool.load(state, id).ok()?))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or(Value::Null)
}

// ---- files ----

/// Writes an export the way an EHR must: temp name, then rename.
fn write_like_an_ehr(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Entry names of a directory (empty when it does not exist).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Entries one and two levels below `dir` (group folders and their files).
fn tree_count(dir: &Path) -> usize {
    names(dir)
        .iter()
        .map(|g| 1 + names(&dir.join(g)).len())
        .sum()
}

/// Every file below `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

// ---- exports ----

/// A small BgZ export: the demo sample's resources, a random subset of them,
/// every one marked with the case, the version and random values, so that
/// no two exports are alike.
fn export_bundle(rng: &mut Rng, case: &str, bsn: &str, version: usize) -> Value {
    let sample: Value = serde_json::from_str(np_agent::demo::SAMPLE).unwrap();
    let mut out = Vec::new();
    let mark = format!("{case} v{version} {:08x}", rng.next() as u32);
    let by_id = |id: &str| {
        sample["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["id"] == id)
            .unwrap()
    };
    let mut patient = by_id("pat-1");
    patient["identifier"][0]["value"] = json!(bsn);
    patient["name"][0]["text"] = json!(format!("Crash {mark}"));
    out.push(patient);
    // Resources that belong together come together.
    let groups: [&[&str]; 6] = [
        &["cond-1"],
        &["allergy-1"],
        &["med-1", "medstat-1"],
        &["bp-1"],
        &["weight-1"],
        &["doc-1", "bin-1"],
    ];
    for group in groups {
        if !rng.percent(65) {
            continue;
        }
        for id in group {
            let mut r = by_id(id);
            match *id {
                "cond-1" | "allergy-1" | "medstat-1" => {
                    r["note"] = json!([{"text": format!("note {mark}")}]);
                }
                "weight-1" => {
                    let grams = 40_000 + rng.below(80_000);
                    let value = format!("{}.{}", grams / 1000, (grams % 1000) / 100);
                    r["valueQuantity"]["value"] = serde_json::from_str(&value).unwrap();
                    r["comment"] = json!(format!("weighed {mark}"));
                }
                _ => {}
            }
            out.push(r);
        }
    }
    // A few extra diagnoses with their own ids.
    for k in 0..rng.below(3) {
        let mut r = by_id("cond-1");
        r["id"] = json!(format!("cond-x{k}"));
        r["note"] = json!([{"text": format!("extra {k} {mark}")}]);
        out.push(r);
    }
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": out.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
    })
}

#[test]
fn the_random_source_is_deterministic_and_spread() {
    let (mut a, mut b) = (Rng::new(42), Rng::new(42));
    let xs: Vec<u64> = (0..1000).map(|_| a.next()).collect();
    assert!(xs.iter().all(|x| *x == b.next()));
    assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    let mut r = Rng::new(7);
    let mut hist = [0usize; 10];
    for _ in 0..10_000 {
        hist[r.below(10) as usize] += 1;
    }
    assert!(hist.iter().all(|n| (800..1200).contains(n)), "{hist:?}");
}

#[test]
fn generated_exports_are_valid_and_distinct() {
    let mut rng = Rng::new(3);
    let rules = np_agent::sender::export::Rules {
        max_bytes: 1 << 20,
        twiin_partners: vec!["hospb".into()],
        zorgviewer_partners: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for v in 1..=20 {
        let b = export_bundle(&mut rng, "ab-0001", "999999151", v);
        let bytes = b.to_string();
        np_agent::sender::export::validate(b"ab-0001.json", bytes.as_bytes(), "hospb", &rules)
            .unwrap_or_else(|r| panic!("{r}"));
        assert!(seen.insert(bytes), "export {v} repeats an earlier one");
    }
}
