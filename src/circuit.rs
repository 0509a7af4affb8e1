//! Per-partner circuit breakers, so one partner that is down or overloaded
//! does not slow the work for the others.
//!
//! ```text
//!            N consecutive transient failures
//!   Closed ───────────────────────────────────▶ Open ──(cool-down over)──▶ HalfOpen
//!     ▲  ▲                                       ▲                          │ one probe
//!     │  └────────────── success ────────────────┼──────────────────────────┤
//!     │                                          └──── failure (cool-down ×2)┘
//! ```
//!
//! [`Breaker`] is the sans-IO state machine: it takes `now` and what happened
//! and returns a decision or a [`Transition`]; its tests run without clocks or
//! sockets. [`Circuits`] holds one breaker per partner for the process (across
//! reloads), logs transitions and keeps the metrics. [`CircuitHttp`] feeds it:
//! it wraps the partner HTTP client and reports every answer, so the circuit
//! sees the partner's health whatever the work (notify, cancel, pull, token,
//! JWKS). The spool dispatcher asks [`Circuits::admit`] before it claims an
//! item: an open circuit's items are not claimed (they stay queued or in
//! retry), so the workers serve other partners.
//!
//! Transient, for the circuit, is what a retry could cure: a transport error
//! (refused, reset, timed out, TLS failure), `408`, `429` or `5xx`. Any other
//! answer, `4xx` included, shows the partner is there and counts as success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::http::partners::{HttpReply, Outgoing, PartnerHttp};
use crate::ops::metrics::{self, Metrics};
use crate::util::time::now_unix;

/// Consecutive transient failures that open a circuit (`NP_CIRCUIT_FAILURES`).
pub const DEFAULT_FAILURES: u32 = 5;
/// First wait before a probe (`NP_CIRCUIT_COOLDOWN`); doubles after every
/// failed probe up to [`MAX_COOLDOWN_SECS`].
pub const DEFAULT_COOLDOWN_SECS: i64 = 30;
/// Longest cool-down: the back-off cap.
pub const MAX_COOLDOWN_SECS: i64 = crate::spool::BACKOFF_CAP_SECS as i64;

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive transient failures that open the circuit (at least 1).
    pub failures: u32,
    /// Seconds open before the first probe.
    pub cooldown_secs: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failures: DEFAULT_FAILURES,
            cooldown_secs: DEFAULT_COOLDOWN_SECS,
        }
    }
}

impl Policy {
    /// The cool-down after the circuit opened `reopens` times in a row
    /// without a success in between (0 = first opening).
    pub fn cooldown(&self, reopens: u32) -> i64 {
        let base = self.cooldown_secs.clamp(1, MAX_COOLDOWN_SECS);
        base.saturating_mul(1i64 << reopens.min(20))
            .min(MAX_COOLDOWN_SECS)
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Work flows; `failures` consecutive transient failures so far.
    Closed { failures: u32 },
    /// No work until `until` (Unix seconds); `reopens` failed probes so far.
    Open { until: i64, reopens: u32 },
    /// The cool-down is over: one probe may run; `probing` while it does.
    HalfOpen { probing: bool, reopens: u32 },
}

/// May work for this partner start now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes (closed).
    Yes,
    /// Yes, as the one probe: report [`Breaker::probe_done`] when it ends.
    Probe,
    /// No: the circuit is open (until `retry_at`) or a probe is running.
    No { retry_at: Option<i64> },
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open after `failures` consecutive transient failures.
    Opened { failures: u32, retry_in_s: i64 },
    /// The probe failed: open again for a longer cool-down.
    Reopened { retry_in_s: i64 },
    /// A success closed an open or half-open circuit.
    Closed,
}

/// One partner's circuit: a sans-IO state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    policy: Policy,
    state: State,
}

impl Breaker {
    pub fn new(policy: Policy) -> Breaker {
        Breaker {
            policy,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// True unless closed.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Asks to start one piece of work at `now`. Moves an open circuit whose
    /// cool-down is over to half-open and hands out its single probe.
    pub fn admit(&mut self, now: i64) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until, reopens } if now >= until => {
                self.state = State::HalfOpen {
                    probing: true,
                    reopens,
                };
                Admit::Probe
            }
            State::Open { until, .. } => Admit::No {
                retry_at: Some(until),
            },
            State::HalfOpen {
                probing: false,
                reopens,
            } => {
                self.state = State::HalfOpen {
                    probing: true,
                    reopens,
                };
                Admit::Probe
            }
            State::HalfOpen { probing: true, .. } => Admit::No { retry_at: None },
        }
    }

    /// The partner answered (anything but a transient failure).
    pub fn on_success(&mut self) -> Option<Transition> {
        let was_open = self.is_open();
        self.state = State::Closed { failures: 0 };
        was_open.then_some(Transition::Closed)
    }

    /// A transient failure (transport error, 408, 429, 5xx) at `now`.
    pub fn on_failure(&mut self, now: i64) -> Option<Transition> {
        match self.state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.policy.failures.max(1) {
                    let retry_in_s = self.policy.cooldown(0);
                    self.state = State::Open {
                        until: now.saturating_add(retry_in_s),
                        reopens: 0,
                    };
                    Some(Transition::Opened {
                        failures,
                        retry_in_s,
                    })
                } else {
                    self.state = State::Closed { failures };
                    None
                }
            }
            State::HalfOpen { reopens, .. } => {
                let reopens = reopens.saturating_add(1);
                let retry_in_s = self.policy.cooldown(reopens);
                self.state = State::Open {
                    until: now.saturating_add(retry_in_s),
                    reopens,
                };
                Some(Transition::Reopened { retry_in_s })
            }
            // A request that started before the circuit opened: already counted.
            State::Open { .. } => None,
        }
    }

    /// The probe's work ended. When none of its requests decided (it made
    /// none, e.g. it was waiting for other work), the next item may probe.
    pub fn probe_done(&mut self) {
        if let State::HalfOpen {
            probing: true,
            reopens,
        } = self.state
        {
            self.state = State::HalfOpen {
                probing: false,
                reopens,
            };
        }
    }

    /// Takes a new policy (reload); the state stays.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }
}

/// Is this answer a transient failure for the circuit?
pub fn is_transient(result: &Result<HttpReply, String>) -> bool {
    match result {
        Err(_) => true,
        Ok(r) => matches!(r.status, 408 | 429) || (500..600).contains(&r.status),
    }
}

/// The process's breakers, one per partner, created on first use.
pub struct Circuits {
    policy: Mutex<Policy>,
    breakers: Mutex<HashMap<String, Breaker>>,
    metrics: Arc<Metrics>,
}

impl Circuits {
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Circuits {
        metrics.describe_gauge(
            metrics::CIRCUIT_OPEN,
            "1 while a partner's circuit is open or half-open (its work waits), by partner.",
        );
        Circuits {
            policy: Mutex::new(policy),
            breakers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A new policy for every breaker (SIGHUP); states stay.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = policy;
        let mut map = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        for b in map.values_mut() {
            b.set_policy(policy);
        }
    }

    fn with<T>(&self, partner: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let policy = *self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut map = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        let breaker = map
            .entry(partner.to_string())
            .or_insert_with(|| Breaker::new(policy));
        f(breaker)
    }

    /// May work for `partner` start at `now`? See [`Breaker::admit`].
    pub fn admit(&self, partner: &str, now: i64) -> Admit {
        let admit = self.with(partner, |b| b.admit(now));
        if admit == Admit::Probe {
            log::info!("event=circuit.probe partner={partner}");
        }
        admit
    }

    /// The probe for `partner` ended; see [`Breaker::probe_done`].
    pub fn probe_done(&self, partner: &str) {
        self.with(partner, Breaker::probe_done);
    }

    /// Reports one answer (or transport failure) from `partner`.
    pub fn record(&self, partner: &str, transient: bool, now: i64) {
        let change = self.with(partner, |b| {
            if transient {
                b.on_failure(now)
            } else {
                b.on_success()
            }
        });
        let Some(change) = change else {
            return;
        };
        let label = metrics::intern(partner);
        match change {
            Transition::Opened {
                failures,
                retry_in_s,
            } => {
                log::warn!(
                    "event=circuit.open partner={partner} failures={failures} retry_in_s={retry_in_s}"
                );
                self.opened(label);
            }
            Transition::Reopened { retry_in_s } => {
                log::warn!(
                    "event=circuit.open partner={partner} failures=1 probe=failed retry_in_s={retry_in_s}"
                );
                self.opened(label);
            }
            Transition::Closed => {
                log::info!("event=circuit.closed partner={partner}");
                self.metrics
                    .gauge(metrics::CIRCUIT_OPEN, &[("partner", label)])
                    .set(0);
            }
        }
    }

    fn opened(&self, label: &'static str) {
        self.metrics
            .gauge(metrics::CIRCUIT_OPEN, &[("partner", label)])
            .set(1);
        self.metrics
            .inc(metrics::CIRCUIT_OPENED, &[("partner", label)]);
    }

    /// The state of `partner`'s circuit (closed when never used).
    pub fn state(&self, partner: &str) -> State {
        self.with(partner, |b| b.state())
    }
}

/// A [`PartnerHttp`] that reports every outcome to the partner's circuit.
pub struct CircuitHttp {
    pub inner: Arc<dyn PartnerHttp>,
    pub circuits: Arc<Circuits>,
}

impl CircuitHttp {
    fn observe(
        &self,
        partner: &str,
        result: Result<HttpReply, String>,
    ) -> Result<HttpReply, String> {
        self.circuits
            .record(partner, is_transient(&result), now_unix());
        result
    }
}

impl PartnerHttp for CircuitHttp {
    fn get(&self, partner: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
        let result = self.inner.get(partner, url, headers);
        self.observe(partner, result)
    }

    fn send(
        &self,
        partner: &str,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, String> {
        let result = self
            .inner
            .send(partner, method, url, content_type, body, headers);
        self.observe(partner, result)
    }

    fn send_within(
        &self,
        partner: &str,
        request: &Outgoing<'_>,
        timeout: std::time::Duration,
    ) -> Result<HttpReply, String> {
        let result = self.inner.send_within(partner, request, timeout);
        self.observe(partner, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            failures: 3,
            cooldown_secs: 30,
        }
    }

    #[test]
    fn opens_after_n_consecutive_failures_and_a_success_resets_the_count() {
        let mut b = Breaker::new(policy());
        assert_eq!(b.on_failure(100), None);
        assert_eq!(b.on_failure(101), None);
        assert_eq!(b.on_success(), None, "closed stays closed: no transition");
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert_eq!(b.on_failure(102), None);
        assert_eq!(b.on_failure(103), None);
        assert_eq!(b.admit(103), Admit::Yes);
        assert_eq!(
            b.on_failure(104),
            Some(Transition::Opened {
                failures: 3,
                retry_in_s: 30
            })
        );
        assert_eq!(
            b.admit(104),
            Admit::No {
                retry_at: Some(134)
            }
        );
        assert_eq!(
            b.admit(133),
            Admit::No {
                retry_at: Some(134)
            }
        );
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_and_success_closes() {
        let mut b = Breaker::new(policy());
        for t in 0..3 {
            b.on_failure(t);
        }
        assert_eq!(b.admit(32), Admit::Probe);
        assert_eq!(b.admit(32), Admit::No { retry_at: None });
        assert_eq!(b.admit(40), Admit::No { retry_at: None });
        assert_eq!(b.on_success(), Some(Transition::Closed));
        assert_eq!(b.admit(40), Admit::Yes);
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() {
        let mut b = Breaker::new(policy());
        for t in 0..3 {
            b.on_failure(t);
        }
        let mut now = 2;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let until = match b.state() {
                State::Open { until, .. } => until,
                s => panic!("{s:?}"),
            };
            now = until;
            assert_eq!(b.admit(now), Admit::Probe);
            match b.on_failure(now) {
                Some(Transition::Reopened { retry_in_s }) => waits.push(retry_in_s),
                t => panic!("{t:?}"),
            }
        }
        assert_eq!(waits, vec![60, 120, 240, 480, 900, 900, 900, 900]);
        assert!(matches!(b.state(), State::Open { .. }));
        let _ = now;
    }

    #[test]
    fn a_probe_that_decided_nothing_lets_the_next_item_probe() {
        let mut b = Breaker::new(policy());
        for t in 0..3 {
            b.on_failure(t);
        }
        assert_eq!(b.admit(100), Admit::Probe);
        b.probe_done();
        assert_eq!(b.admit(100), Admit::Probe);
        // probe_done after the probe decided changes nothing.
        b.on_success();
        b.probe_done();
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn stragglers_while_open_do_not_extend_it_and_a_late_success_closes() {
        let mut b = Breaker::new(policy());
        for t in 0..3 {
            b.on_failure(t);
        }
        let open = b.state();
        assert_eq!(b.on_failure(10), None);
        assert_eq!(b.state(), open);
        assert_eq!(b.on_success(), Some(Transition::Closed));
    }

    #[test]
    fn a_threshold_of_zero_means_one() {
        let mut b = Breaker::new(Policy {
            failures: 0,
            cooldown_secs: 0,
        });
        assert_eq!(
            b.on_failure(5),
            Some(Transition::Opened {
                failures: 1,
                retry_in_s: 1
            })
        );
    }

    #[test]
    fn transient_is_transport_408_429_and_5xx() {
        let reply = |status| {
            Ok(HttpReply {
                status,
                body: Vec::new(),
                content_type: None,
                cache_control: None,
                retry_after: None,
                location: None,
            })
        };
        assert!(is_transient(&Err("connection reset".into())));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(&reply(s)), "{s}");
        }
        for s in [200, 201, 400, 401, 403, 404, 410] {
            assert!(!is_transient(&reply(s)), "{s}");
        }
    }

    #[test]
    fn circuits_keep_one_breaker_per_partner_and_export_metrics() {
        let metrics = Arc::new(Metrics::new());
        let c = Circuits::new(policy(), metrics.clone());
        for t in 0..3 {
            c.record("dead", true, t);
        }
        c.record("alive", true, 3);
        assert!(matches!(c.state("dead"), State::Open { .. }));
        assert_eq!(c.state("alive"), State::Closed { failures: 1 });
        assert_eq!(c.admit("alive", 4), Admit::Yes);
        assert!(matches!(c.admit("dead", 4), Admit::No { .. }));
        let dead = metrics::intern("dead");
        assert_eq!(
            metrics.gauge_value(metrics::CIRCUIT_OPEN, &[("partner", dead)]),
            1
        );
        assert_eq!(
            metrics.get(metrics::CIRCUIT_OPENED, &[("partner", dead)]),
            1
        );
        assert_eq!(c.admit("dead", 40), Admit::Probe);
        c.record("dead", false, 41);
        assert_eq!(
            metrics.gauge_value(metrics::CIRCUIT_OPEN, &[("partner", dead)]),
            0
        );
        c.set_policy(Policy {
            failures: 1,
            cooldown_secs: 5,
        });
        c.record("alive", true, 50);
        assert_eq!(
            c.state("alive"),
            State::Open {
                until: 55,
                reopens: 0
            }
        );
    }
}
