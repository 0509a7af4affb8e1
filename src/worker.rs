//! Runs spool items: a scheduler claims due items and hands them to a bounded
//! pool of worker threads, at most `per_partner` at a time for one partner so
//! a slow or dead partner cannot occupy every worker. Each worker runs the
//! handler registered for the item's kind and settles the outcome (done,
//! retry with back-off, dead) in the spool, counting it in the metrics
//! (`np_work_done_total`, `np_work_retries_total`, `np_work_dead_total`).
//!
//! Before claiming an item the scheduler asks the partner's circuit
//! ([`crate::circuit`]): while it is open the partner's items are not claimed
//! (they stay where they are, untouched), and after the cool-down exactly one
//! item goes out as the probe. So a partner that is down costs one request
//! per cool-down, not one per item, and the workers serve the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::circuit::{Admit, Circuits};
use crate::ops::logging::Q;
use crate::ops::metrics::{self, Metrics};
use crate::spool::{self, Item, Outcome, Spool, State};
use crate::util::time::now_unix;

/// Work for one kind of spool item.
pub trait Handler: Send + Sync {
    fn run(&self, item: &Item, now: i64) -> Outcome;
}

/// Dispatcher settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    pub per_partner: usize,
    /// How often the scheduler looks for due items when nothing woke it.
    pub tick: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 4,
            per_partner: 2,
            tick: Duration::from_millis(500),
        }
    }
}

/// What the dispatcher reports to and asks: the partners' circuits, the
/// metrics registry, and the retry policy (`NP_RETRY_FIRST`, `NP_RETRY_CAP`,
/// `NP_RETRY_MAX_AGE`). Shared with the rest of the process, so a reload
/// changes them for the next attempt.
#[derive(Clone)]
pub struct Guards {
    pub circuits: Arc<Circuits>,
    pub metrics: Arc<Metrics>,
    pub retry: Arc<RwLock<spool::RetryPolicy>>,
}

impl Default for Guards {
    fn default() -> Self {
        let metrics = Arc::new(Metrics::new());
        Guards {
            circuits: Arc::new(Circuits::new(
                crate::circuit::Policy::default(),
                metrics.clone(),
            )),
            metrics,
            retry: Arc::new(RwLock::new(spool::RetryPolicy::default())),
        }
    }
}

/// One claimed item on its way to a worker.
struct Job {
    item: Item,
    /// The partner's circuit let this item through as its probe.
    probe: bool,
}

struct Shared {
    spool: Arc<Spool>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    settings: Settings,
    guards: Guards,
    busy: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
    wake: (Mutex<bool>, Condvar),
}

/// The running dispatcher.
pub struct Dispatcher {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts the scheduler and the workers with circuits and metrics of
    /// their own (tests; the daemon uses [`Dispatcher::start_with`]).
    pub fn start(
        spool: Arc<Spool>,
        handlers: HashMap<String, Arc<dyn Handler>>,
        settings: Settings,
    ) -> std::io::Result<Dispatcher> {
        Dispatcher::start_with(spool, handlers, settings, Guards::default())
    }

    /// Starts the scheduler and the workers, reporting to `guards`.
    pub fn start_with(
        spool: Arc<Spool>,
        handlers: HashMap<String, Arc<dyn Handler>>,
        settings: Settings,
        guards: Guards,
    ) -> std::io::Result<Dispatcher> {
        let shared = Arc::new(Shared {
            spool,
            handlers,
            settings,
            guards,
            busy: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
        });
        let (tx, rx) = mpsc::sync_channel::<Job>(settings.workers.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for n in 0..settings.workers.max(1) {
            let (s, rx) = (shared.clone(), rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{n}"))
                    .spawn(move || worker(s, rx))?,
            );
        }
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("scheduler".into())
                .spawn(move || scheduler(s, tx))?,
        );
        Ok(Dispatcher { shared, threads })
    }

    /// Asks the scheduler to look for due items now (after an enqueue).
    pub fn wake(&self) {
        wake(&self.shared);
    }

    /// A handle that wakes the scheduler from elsewhere (the outbox scan,
    /// the Task intake).
    pub fn waker(&self) -> Waker {
        Waker(self.shared.clone())
    }

    /// Stops taking new items and waits up to `grace` for running ones; items
    /// still running then stay in `in-flight` and are requeued on the next start.
    pub fn shutdown(self, grace: Duration) {
        self.shared.stop.store(true, Ordering::SeqCst);
        wake(&self.shared);
        let deadline = std::time::Instant::now() + grace;
        for t in self.threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Wakes the scheduler of a [`Dispatcher`].
#[derive(Clone)]
pub struct Waker(Arc<Shared>);

impl Waker {
    pub fn wake(&self) {
        wake(&self.0);
    }
}

fn wake(shared: &Shared) {
    let (lock, cv) = &shared.wake;
    *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_all();
}

/// Longest the scheduler sleeps when nothing wakes it and nothing falls
/// due: it then looks again anyway (work requeued by `np-agent retry-dead`
/// from another process).
pub const MAX_IDLE: Duration = Duration::from_secs(5);

fn scheduler(shared: Arc<Shared>, tx: SyncSender<Job>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let now = now_unix();
        // When to look again unless woken: the next item falling due, the
        // next circuit probe, or a failed claim (next tick).
        let mut next: Option<i64> = None;
        let mut soon = false;
        match shared.spool.waiting(now) {
            Ok((items, next_due)) => {
                next = next_due;
                for item in items {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let probe = match reserve(&shared, &item.partner, now) {
                        Reserve::Taken { probe } => probe,
                        // A worker finishing wakes us.
                        Reserve::Busy => continue,
                        Reserve::Open { retry_at } => {
                            let at = retry_at.unwrap_or(now + 1);
                            next = Some(next.map_or(at, |n| n.min(at)));
                            continue;
                        }
                    };
                    let claimed = match shared.spool.claim(&item.id) {
                        Ok(c) => c,
                        Err(e) => {
                            release(&shared, &item.partner, probe);
                            soon = true;
                            log::warn!(
                                "event=spool.claim_failed item={} error={}",
                                item.id,
                                Q(&e.to_string())
                            );
                            continue;
                        }
                    };
                    if tx
                        .send(Job {
                            item: claimed,
                            probe,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                soon = true;
                log::error!("event=spool.scan_failed error={}", Q(&e.to_string()));
            }
        }
        let wait = if soon {
            shared.settings.tick
        } else {
            idle_wait(next, crate::util::time::now_unix_ms(), shared.settings.tick)
        };
        let (lock, cv) = &shared.wake;
        let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !*woken {
            woken = cv
                .wait_timeout(woken, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *woken = false;
    }
}

/// How long the scheduler sleeps when not woken: until `next` (Unix
/// seconds), at least `tick`, at most [`MAX_IDLE`].
fn idle_wait(next: Option<i64>, now_ms: u128, tick: Duration) -> Duration {
    let Some(next) = next else {
        return MAX_IDLE.max(tick);
    };
    let next_ms = u128::try_from(next.max(0)).unwrap_or(0) * 1000;
    let until =
        Duration::from_millis(u64::try_from(next_ms.saturating_sub(now_ms)).unwrap_or(u64::MAX));
    until.clamp(tick, MAX_IDLE.max(tick))
}

enum Reserve {
    /// A slot is taken; `probe` when the circuit let the item out as its probe.
    Taken { probe: bool },
    /// The partner has `per_partner` items running.
    Busy,
    /// The partner's circuit is open (until `retry_at`) or probing.
    Open { retry_at: Option<i64> },
}

/// Takes a worker slot of `partner` if its limit and its circuit allow.
fn reserve(shared: &Shared, partner: &str, now: i64) -> Reserve {
    let mut busy = shared.busy.lock().unwrap_or_else(|p| p.into_inner());
    let n = busy.entry(partner.to_string()).or_insert(0);
    if *n >= shared.settings.per_partner {
        return Reserve::Busy;
    }
    let probe = match shared.guards.circuits.admit(partner, now) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No { retry_at } => return Reserve::Open { retry_at },
    };
    *n += 1;
    Reserve::Taken { probe }
}

fn release(shared: &Shared, partner: &str, probe: bool) {
    if probe {
        shared.guards.circuits.probe_done(partner);
    }
    let mut busy = shared.busy.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = busy.get_mut(partner) {
        *n = n.saturating_sub(1);
    }
}

fn worker(shared: Arc<Shared>, rx: Arc<Mutex<Receiver<Job>>>) {
    loop {
        let next = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv_timeout(Duration::from_millis(200))
        };
        let Job { item, probe } = match next {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let started = std::time::Instant::now();
        let outcome = match shared.handlers.get(&item.kind) {
            Some(h) => h.run(&item, now_unix()),
            None => Outcome::Dead(format!("no handler for kind {:?}", item.kind)),
        };
        let (id, partner, kind) = (item.id.clone(), item.partner.clone(), item.kind.clone());
        let kind_label = metrics::intern(&kind);
        let random = crate::util::random::bytes::<4>()
            .map(u32::from_le_bytes)
            .unwrap_or(0);
        // `not_before` is in whole seconds: count from the next full second,
        // so a wait (a `Retry-After`) is never cut short by the rounding.
        let settled_at = i64::try_from(crate::util::time::now_unix_ms().div_ceil(1000))
            .unwrap_or_else(|_| now_unix());
        match spool::settle_with(
            &shared.spool,
            item,
            outcome,
            settled_at,
            &shared
                .guards
                .retry
                .read()
                .map_or_else(|p| *p.into_inner(), |g| *g),
            random,
        ) {
            Ok(State::Dead) => {
                shared
                    .guards
                    .metrics
                    .inc(metrics::WORK_DEAD, &[("kind", kind_label)]);
                let reason = shared
                    .spool
                    .load(State::Dead, &id)
                    .ok()
                    .and_then(|i| i.last_error)
                    .unwrap_or_default();
                log::warn!(
                    "event=work.dead item={id} kind={kind} partner={partner} reason={}",
                    Q(&reason)
                );
            }
            Ok(State::Retry) => {
                shared
                    .guards
                    .metrics
                    .inc(metrics::WORK_RETRIES, &[("kind", kind_label)]);
                let it = shared.spool.load(State::Retry, &id).ok();
                log::info!(
                    "event=work.retry item={id} kind={kind} partner={partner} attempt={} in_s={} reason={}",
                    it.as_ref().map_or(0, |i| i.attempts),
                    it.as_ref().map_or(0, |i| i.not_before - now_unix()),
                    Q(it.as_ref()
                        .and_then(|i| i.last_error.as_deref())
                        .unwrap_or(""))
                );
            }
            Ok(_) => {
                shared
                    .guards
                    .metrics
                    .inc(metrics::WORK_DONE, &[("kind", kind_label)]);
                log::debug!(
                    "event=work.done item={id} kind={kind} partner={partner} ms={}",
                    started.elapsed().as_millis()
                );
            }
            Err(e) => log::error!(
                "event=spool.settle_failed item={id} error={}",
                Q(&e.to_string())
            ),
        }
        release(&shared, &partner, probe);
        wake(&shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Flaky {
        calls: AtomicUsize,
        concurrent: AtomicUsize,
        max_seen: AtomicUsize,
    }

    impl Handler for Flaky {
        fn run(&self, item: &Item, _now: i64) -> Outcome {
            let c = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_seen.fetch_max(c, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            self.concurrent.fetch_sub(1, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            match item.body["mode"].as_str() {
                Some("dead") => Outcome::Dead("refused".into()),
                Some("retry") if item.attempts == 0 => Outcome::Retry {
                    reason: "503".into(),
                    retry_after: Some(0),
                },
                _ => Outcome::Done,
            }
        }
    }

    fn item(id: &str, partner: &str, mode: &str) -> Item {
        Item {
            id: id.into(),
            kind: "test".into(),
            partner: partner.into(),
            created_at: now_unix(),
            attempts: 0,
            not_before: 0,
            give_up_at: None,
            last_error: None,
            body: serde_json::json!({"mode": mode}),
        }
    }

    #[test]
    fn runs_items_with_a_per_partner_limit_and_settles_them() {
        let dir = std::env::temp_dir().join(format!(
            "np-worker-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let (spool, _) = Spool::open(&dir).unwrap();
        let spool = Arc::new(spool);
        for i in 0..6 {
            spool
                .enqueue(&item(&format!("a{i}"), "slow", "ok"))
                .unwrap();
        }
        spool.enqueue(&item("d", "other", "dead")).unwrap();
        spool.enqueue(&item("r", "other", "retry")).unwrap();
        let handler = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            concurrent: AtomicUsize::new(0),
            max_seen: AtomicUsize::new(0),
        });
        let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
        handlers.insert("test".into(), handler.clone());
        let settings = Settings {
            workers: 4,
            per_partner: 1,
            tick: Duration::from_millis(20),
        };
        let d = Dispatcher::start(spool.clone(), handlers, settings).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The retried item waits at least the 1 s back-off floor.
        while spool.counts(now_unix()).unwrap().done < 7 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                spool.counts(now_unix())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d.shutdown(Duration::from_secs(2));
        let c = spool.counts(now_unix()).unwrap();
        assert_eq!(
            (c.done, c.dead, c.queued, c.retry, c.in_flight),
            (7, 1, 0, 0, 0)
        );
        assert_eq!(
            handler.calls.load(Ordering::SeqCst),
            9,
            "6 + dead + retry twice"
        );
        assert!(
            handler.max_seen.load(Ordering::SeqCst) <= 2,
            "one per partner, two partners"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_open_circuit_keeps_its_partners_items_queued_while_others_run() {
        let dir = std::env::temp_dir().join(format!(
            "np-worker-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let (spool, _) = Spool::open(&dir).unwrap();
        let spool = Arc::new(spool);
        for i in 0..3 {
            spool
                .enqueue(&item(&format!("d{i}"), "down", "ok"))
                .unwrap();
            spool.enqueue(&item(&format!("u{i}"), "up", "ok")).unwrap();
        }
        let guards = Guards::default();
        guards.circuits.set_policy(crate::circuit::Policy {
            failures: 2,
            cooldown_secs: 3_600,
        });
        guards.circuits.record("down", true, now_unix());
        guards.circuits.record("down", true, now_unix());
        let handler = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            concurrent: AtomicUsize::new(0),
            max_seen: AtomicUsize::new(0),
        });
        let mut handlers: HashMap<String, Arc<dyn Handler>> = HashMap::new();
        handlers.insert("test".into(), handler.clone());
        let settings = Settings {
            tick: Duration::from_millis(20),
            ..Settings::default()
        };
        let d = Dispatcher::start_with(spool.clone(), handlers, settings, guards.clone()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while spool.counts(now_unix()).unwrap().done < 3 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        // A few more scheduler passes: the open partner's items stay put.
        std::thread::sleep(Duration::from_millis(200));
        d.shutdown(Duration::from_secs(2));
        assert_eq!(spool.ids(State::Queued).unwrap(), vec!["d0", "d1", "d2"]);
        assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            guards
                .metrics
                .get(metrics::WORK_DONE, &[("kind", metrics::intern("test"))]),
            3
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_scheduler_sleeps_until_the_next_due_item_within_tick_and_max_idle() {
        let tick = Duration::from_millis(500);
        assert_eq!(idle_wait(None, 0, tick), MAX_IDLE);
        assert_eq!(idle_wait(Some(10), 8_000, tick), Duration::from_secs(2));
        assert_eq!(idle_wait(Some(10), 9_900, tick), tick, "at least a tick");
        assert_eq!(idle_wait(Some(10), 20_000, tick), tick, "overdue");
        assert_eq!(idle_wait(Some(100), 0, tick), MAX_IDLE, "at most MAX_IDLE");
    }
}
