//! Backpressure: when the filesystem holding `NP_STATE_DIR` is
//! nearly full (`NP_MIN_FREE_DISK`), the agent takes no new work — exports
//! stay in the outbox (safe: the EHR's file is only removed once it is
//! durably in the spool), incoming notifications get `503` with
//! `Retry-After` — and resumes by itself when space returns.
//!
//! Every intake asks the one [`DiskGuard`] of the process (the outbox scan,
//! `POST /fhir/Task`, the Mitz intake) and answers [`Pressure::refusal`]
//! when it says no. The decision is sans-IO ([`decide`]: a reading and
//! the current state in, refuse or not out); the guard reads free space with
//! `statvfs(2)` at most every [`CHECK_INTERVAL`] and logs each change once:
//! `event=backpressure.on reason=disk free=… min=…` and
//! `event=backpressure.off reason=disk free=… min=…`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::fhir::Refusal;
use crate::ops::logging::Q;
use crate::ops::metrics::{self, Metrics};

/// Free space is read at most this often.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// What a refused request is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 60;
/// Largest hysteresis: once refusing, work resumes at `min + min/16`, at most
/// `min + 64 MiB`, so a level hovering at the limit does not flap.
pub const MAX_SLACK: u64 = 64 << 20;

/// Should new work be refused, given `free` bytes, the minimum `min` and
/// whether we are refusing now? `min == 0` turns the guard off.
pub fn decide(free: u64, min: u64, refusing: bool) -> bool {
    if min == 0 {
        return false;
    }
    if refusing {
        free < min.saturating_add((min / 16).min(MAX_SLACK))
    } else {
        free < min
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Why new work is refused now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// `disk`.
    pub reason: &'static str,
    pub free: u64,
    pub min: u64,
}

impl Pressure {
    /// What a refused request is answered: `503` `transient` with
    /// `Retry-After`.
    pub fn refusal(&self) -> Refusal {
        Refusal::transient(
            RETRY_AFTER_SECS,
            "temporarily not accepting new work (low on storage); try again later",
        )
    }
}

/// Reads free bytes for a path (statvfs in production, a script in tests).
pub type Reader = Box<dyn Fn(&Path) -> io::Result<u64> + Send + Sync>;

/// The process's disk guard for `NP_STATE_DIR`.
pub struct DiskGuard {
    path: PathBuf,
    min_free: AtomicU64,
    interval: Duration,
    reader: Reader,
    state: Mutex<Reading>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Reading {
    at: Option<Instant>,
    free: u64,
    refusing: bool,
    read_failed: bool,
}

impl DiskGuard {
    /// A guard on the filesystem of `path` with `statvfs`.
    pub fn new(path: &Path, min_free: u64, metrics: Arc<Metrics>) -> DiskGuard {
        DiskGuard::with_reader(
            path,
            min_free,
            CHECK_INTERVAL,
            Box::new(free_bytes),
            metrics,
        )
    }

    /// A guard with its own reader and interval (tests).
    pub fn with_reader(
        path: &Path,
        min_free: u64,
        interval: Duration,
        reader: Reader,
        metrics: Arc<Metrics>,
    ) -> DiskGuard {
        metrics.describe_gauge(
            metrics::BACKPRESSURE,
            "1 while new work is refused for lack of resources, by reason.",
        );
        metrics.gauge(metrics::BACKPRESSURE, &[("reason", "disk")]);
        DiskGuard {
            path: path.to_path_buf(),
            min_free: AtomicU64::new(min_free),
            interval,
            reader,
            state: Mutex::new(Reading::default()),
            metrics,
        }
    }

    /// A new minimum (SIGHUP); applies at the next reading.
    pub fn set_min_free(&self, min: u64) {
        self.min_free.store(min, Ordering::Relaxed);
    }

    /// `None` when new work may be taken; re-reads free space when the last
    /// reading is older than the interval.
    pub fn check(&self) -> Option<Pressure> {
        self.check_at(Instant::now())
    }

    /// [`DiskGuard::check`] at `now`.
    pub fn check_at(&self, now: Instant) -> Option<Pressure> {
        let min = self.min_free.load(Ordering::Relaxed);
        let mut r = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let stale =
            r.at.is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if stale {
            r.at = Some(now);
            match (self.reader)(&self.path) {
                Ok(free) => {
                    r.free = free;
                    r.read_failed = false;
                    let refusing = decide(free, min, r.refusing);
                    if refusing != r.refusing {
                        r.refusing = refusing;
                        self.metrics
                            .gauge(metrics::BACKPRESSURE, &[("reason", "disk")])
                            .set(i64::from(refusing));
                        if refusing {
                            log::warn!(
                                "event=backpressure.on reason=disk free={free} min={min} path={} action=\"exports stay in the outbox, notifications get 503\"",
                                Q(&self.path.display().to_string())
                            );
                        } else {
                            log::info!(
                                "event=backpressure.off reason=disk free={free} min={min} path={}",
                                Q(&self.path.display().to_string())
                            );
                        }
                    }
                }
                Err(e) => {
                    // Fail open: the durable writes themselves still fail
                    // cleanly when the disk is really full.
                    if !r.read_failed {
                        log::warn!(
                            "event=backpressure.check_failed path={} error={}",
                            Q(&self.path.display().to_string()),
                            Q(&e.to_string())
                        );
                    }
                    r.read_failed = true;
                }
            }
        }
        r.refusing.then_some(Pressure {
            reason: "disk",
            free: r.free,
            min,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn refuses_below_the_minimum_and_resumes_above_it_with_slack() {
        let mib = 1u64 << 20;
        assert!(!decide(600 * mib, 512 * mib, false));
        assert!(decide(511 * mib, 512 * mib, false));
        assert!(!decide(512 * mib, 512 * mib, false));
        // Refusing: needs min + min/16 = 544 MiB to resume.
        assert!(decide(540 * mib, 512 * mib, true));
        assert!(!decide(544 * mib, 512 * mib, true));
        // Slack is capped at 64 MiB.
        assert!(!decide(10 * 1024 * mib + 64 * mib, 10 * 1024 * mib, true));
        assert!(decide(10 * 1024 * mib + 63 * mib, 10 * 1024 * mib, true));
        // 0 turns it off.
        assert!(!decide(0, 0, true));
    }

    #[test]
    fn the_guard_reads_at_most_every_interval_and_exports_a_gauge() {
        let free = Arc::new(AtomicU64::new(1_000));
        let reads = Arc::new(AtomicU64::new(0));
        let (f, n) = (free.clone(), reads.clone());
        let metrics = Arc::new(Metrics::new());
        let guard = DiskGuard::with_reader(
            Path::new("/state"),
            500,
            Duration::from_secs(2),
            Box::new(move |_| {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(f.load(Ordering::SeqCst))
            }),
            metrics.clone(),
        );
        let t0 = Instant::now();
        assert_eq!(guard.check_at(t0), None);
        free.store(100, Ordering::SeqCst);
        assert_eq!(guard.check_at(t0 + Duration::from_secs(1)), None, "cached");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let pressure = guard.check_at(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((pressure.free, pressure.min), (100, 500));
        assert_eq!(
            metrics.gauge_value(metrics::BACKPRESSURE, &[("reason", "disk")]),
            1
        );
        let resp = pressure
            .refusal()
            .response(crate::fhir::Format::Json, crate::fhir::FhirVersion::Stu3);
        assert_eq!(resp.status, 503);
        assert!(
            resp.headers
                .iter()
                .any(|(k, v)| k == "Retry-After" && v == "60")
        );
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["issue"][0]["code"], "transient");
        assert_eq!(
            body["issue"][0]["diagnostics"],
            "temporarily not accepting new work (low on storage); try again later"
        );
        free.store(520, Ordering::SeqCst);
        assert!(
            guard.check_at(t0 + Duration::from_secs(4)).is_some(),
            "hysteresis"
        );
        free.store(600, Ordering::SeqCst);
        assert_eq!(guard.check_at(t0 + Duration::from_secs(6)), None);
        assert_eq!(
            metrics.gauge_value(metrics::BACKPRESSURE, &[("reason", "disk")]),
            0
        );
        guard.set_min_free(10_000);
        assert!(guard.check_at(t0 + Duration::from_secs(8)).is_some());
    }

    #[test]
    fn an_unreadable_filesystem_fails_open() {
        let guard = DiskGuard::with_reader(
            Path::new("/nowhere"),
            500,
            Duration::ZERO,
            Box::new(|_| Err(io::Error::from(io::ErrorKind::NotFound))),
            Arc::new(Metrics::new()),
        );
        assert_eq!(guard.check(), None);
        assert_eq!(guard.check(), None);
    }

    #[test]
    fn statvfs_reads_the_temp_directory() {
        let free = free_bytes(&std::env::temp_dir()).unwrap();
        assert!(free > 0);
    }
}
