//! Process metrics: atomic counters and gauges, rendered as Prometheus text format 0.0.4.
//!
//! Every label value is a `&'static str`, so the number of series is fixed by the code and
//! the configuration (partner names and work kinds go through [`intern`], which is capped)
//! and cannot grow with what peers send. Counters are lock-free on the hot path once a series
//! exists (a read lock and two map look-ups; the write lock is taken only the first time a
//! label combination is seen).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// One label: `(name, value)`, both fixed at compile time.
pub type Label = (&'static str, &'static str);

/// HTTP requests answered, by endpoint label and status code.
pub const HTTP_REQUESTS: &str = "np_http_requests_total";
/// TLS handshakes that failed on the partner listener, by reason.
pub const TLS_HANDSHAKE_FAILURES: &str = "np_tls_handshake_failures_total";
/// Connections accepted by the partner listener and handed to a worker.
pub const CONNECTIONS_ACCEPTED: &str = "np_connections_accepted_total";
/// Connections closed at once because `NP_MAX_CONNECTIONS` were open.
pub const CONNECTIONS_REFUSED: &str = "np_connections_refused_total";
/// Connections currently open on the partner listener (gauge).
pub const OPEN_CONNECTIONS: &str = "np_open_connections";
/// Access tokens issued by our token endpoint, by kind.
pub const TOKENS_ISSUED: &str = "np_tokens_issued_total";
/// Token requests refused by our token endpoint, by reason.
pub const TOKENS_REFUSED: &str = "np_tokens_refused_total";
/// Spool items per state folder (gauge, refreshed when `/metrics` is read).
pub const SPOOL_ITEMS: &str = "np_spool_items";
/// Attempts at spool work that failed and were scheduled again, by kind.
pub const WORK_RETRIES: &str = "np_work_retries_total";
/// Spool work given up (moved to `dead`), by kind.
pub const WORK_DEAD: &str = "np_work_dead_total";
/// Spool work finished, by kind.
pub const WORK_DONE: &str = "np_work_done_total";
/// 1 while a partner's circuit is open or half-open (gauge), by partner.
pub const CIRCUIT_OPEN: &str = "np_circuit_open";
/// Times a partner's circuit opened (also re-opened after a failed probe), by partner.
pub const CIRCUIT_OPENED: &str = "np_circuit_opened_total";
/// 1 while new work is refused for lack of resources (gauge), by reason (`disk`).
pub const BACKPRESSURE: &str = "np_backpressure";
/// Requests answered 503 because of backpressure, by endpoint.
pub const BACKPRESSURE_REFUSED: &str = "np_backpressure_refused_total";
/// Mitz closed questions answered, by decision (`permit`, `deny`, …, or why none came).
pub const MITZ_DECISIONS: &str = "np_mitz_decisions_total";
/// Consent questions answered from the closed-question cache without asking Mitz.
pub const MITZ_DECISION_CACHE_HITS: &str = "np_mitz_decision_cache_hits_total";

/// Refreshes gauges right before the registry is rendered (e.g. counts spool folders).
pub type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The process's metrics registry. Share it as `Arc<Metrics>`.
pub struct Metrics {
    families: RwLock<BTreeMap<&'static str, Family>>,
    gauges: RwLock<BTreeMap<&'static str, GaugeFamily>>,
    open_connections: AtomicI64,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A handle on one gauge series.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct GaugeFamily {
    help: &'static str,
    series: BTreeMap<Vec<Label>, Arc<AtomicI64>>,
}

/// Most distinct values [`intern`] hands out; later ones become `other`.
pub const INTERN_CAP: usize = 512;

/// A `&'static str` for a label value that comes from the configuration
/// (a partner name, a work kind). Each distinct value is leaked once; past
/// [`INTERN_CAP`] values the answer is `other`, so a bug cannot grow memory
/// or series without bound.
pub fn intern(value: &str) -> &'static str {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = seen.iter().find(|v| **v == value) {
        return v;
    }
    if seen.len() >= INTERN_CAP {
        return "other";
    }
    let leaked: &'static str = Box::leak(value.to_string().into_boxed_str());
    seen.push(leaked);
    leaked
}

/// A handle on one counter series; cheap to clone and to keep for a hot path.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    series: BTreeMap<Vec<Label>, Arc<AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the built-in families described (they render with their
    /// `# HELP`/`# TYPE` lines even before the first increment).
    pub fn new() -> Self {
        let m = Metrics {
            families: RwLock::new(BTreeMap::new()),
            gauges: RwLock::new(BTreeMap::new()),
            open_connections: AtomicI64::new(0),
            collectors: Mutex::new(Vec::new()),
        };
        m.describe(
            HTTP_REQUESTS,
            "HTTP requests answered on the partner listener, by endpoint and status.",
        );
        m.describe(
            TLS_HANDSHAKE_FAILURES,
            "TLS handshakes that failed on the partner listener, by reason.",
        );
        m.describe(
            CONNECTIONS_ACCEPTED,
            "Connections accepted on the partner listener and handed to a worker.",
        );
        m.describe(
            CONNECTIONS_REFUSED,
            "Connections closed at once because the connection limit was reached.",
        );
        m.describe(TOKENS_ISSUED, "Access tokens issued, by kind.");
        m.describe(TOKENS_REFUSED, "Token requests refused, by reason.");
        m.describe(
            WORK_RETRIES,
            "Spool work attempts that failed and were scheduled again, by kind.",
        );
        m.describe(WORK_DEAD, "Spool work given up (moved to dead), by kind.");
        m.describe(WORK_DONE, "Spool work finished, by kind.");
        m.describe(
            CIRCUIT_OPENED,
            "Times a partner's circuit opened or re-opened after a failed probe, by partner.",
        );
        m.describe(
            BACKPRESSURE_REFUSED,
            "Requests answered 503 because new work is refused (backpressure), by endpoint.",
        );
        m.describe(
            MITZ_DECISIONS,
            "Mitz closed questions, by decision or by why none came (fault, timeout, ...).",
        );
        m.describe(
            MITZ_DECISION_CACHE_HITS,
            "Consent questions answered from the closed-question cache.",
        );
        m.describe_gauge(
            SPOOL_ITEMS,
            "Spool items per state folder (queued, in_flight, retry, done, dead).",
        );
        m.describe_gauge(
            CIRCUIT_OPEN,
            "1 while a partner's circuit is open or half-open (its work waits), by partner.",
        );
        m.describe_gauge(
            BACKPRESSURE,
            "1 while new work is refused for lack of resources, by reason.",
        );
        m.gauge(BACKPRESSURE, &[("reason", "disk")]);
        // Unlabelled counters exist from the start so they render as 0.
        m.counter(CONNECTIONS_ACCEPTED, &[]);
        m.counter(CONNECTIONS_REFUSED, &[]);
        m
    }

    /// Registers (or re-describes) a counter family with its `# HELP` text.
    /// Families used without a description get their name as help text.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        if !valid_metric_name(name) {
            log::warn!("event=metrics.invalid_name name={name}");
            return;
        }
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        families
            .entry(name)
            .and_modify(|f| f.help = help)
            .or_insert_with(|| Family {
                help,
                series: BTreeMap::new(),
            });
    }

    /// The counter series `name{labels}`, created at zero on first use. Label order is
    /// kept as given, so always pass labels in the same order. An invalid metric or label
    /// name yields a detached counter that is never rendered (and a warning), so a
    /// programming mistake cannot corrupt the exposition.
    pub fn counter(&self, name: &'static str, labels: &[Label]) -> Counter {
        if !valid_metric_name(name) || !labels.iter().all(|(k, _)| valid_label_name(k)) {
            log::warn!("event=metrics.invalid_name name={name}");
            return Counter(Arc::new(AtomicU64::new(0)));
        }
        {
            let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = families.get(name).and_then(|f| f.series.get(labels)) {
                return Counter(Arc::clone(series));
            }
        }
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let family = families.entry(name).or_insert_with(|| Family {
            help: name,
            series: BTreeMap::new(),
        });
        let series = family
            .series
            .entry(labels.to_vec())
            .or_insert_with(|| Arc::new(AtomicU64::new(0)));
        Counter(Arc::clone(series))
    }

    /// Registers (or re-describes) a gauge family with its `# HELP` text.
    pub fn describe_gauge(&self, name: &'static str, help: &'static str) {
        if !valid_metric_name(name) {
            log::warn!("event=metrics.invalid_name name={name}");
            return;
        }
        let mut gauges = self.gauges.write().unwrap_or_else(PoisonError::into_inner);
        gauges
            .entry(name)
            .and_modify(|f| f.help = help)
            .or_insert_with(|| GaugeFamily {
                help,
                series: BTreeMap::new(),
            });
    }

    /// The gauge series `name{labels}`, created at zero on first use (same
    /// rules as [`Metrics::counter`]).
    pub fn gauge(&self, name: &'static str, labels: &[Label]) -> Gauge {
        if !valid_metric_name(name) || !labels.iter().all(|(k, _)| valid_label_name(k)) {
            log::warn!("event=metrics.invalid_name name={name}");
            return Gauge(Arc::new(AtomicI64::new(0)));
        }
        {
            let gauges = self.gauges.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = gauges.get(name).and_then(|f| f.series.get(labels)) {
                return Gauge(Arc::clone(series));
            }
        }
        let mut gauges = self.gauges.write().unwrap_or_else(PoisonError::into_inner);
        let family = gauges.entry(name).or_insert_with(|| GaugeFamily {
            help: name,
            series: BTreeMap::new(),
        });
        let series = family
            .series
            .entry(labels.to_vec())
            .or_insert_with(|| Arc::new(AtomicI64::new(0)));
        Gauge(Arc::clone(series))
    }

    /// The current value of gauge `name{labels}` (0 when the series does not exist).
    pub fn gauge_value(&self, name: &str, labels: &[Label]) -> i64 {
        let gauges = self.gauges.read().unwrap_or_else(PoisonError::into_inner);
        gauges
            .get(name)
            .and_then(|f| f.series.get(labels))
            .map_or(0, |g| g.load(Ordering::Relaxed))
    }

    /// Runs `collector` before every render, to refresh gauges that are
    /// cheaper to read on demand than to keep current.
    pub fn add_collector(&self, collector: Collector) {
        self.collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(collector);
    }

    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &'static str, labels: &[Label]) {
        self.counter(name, labels).inc();
    }

    /// The current value of `name{labels}` (0 when the series does not exist).
    pub fn get(&self, name: &str, labels: &[Label]) -> u64 {
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        families
            .get(name)
            .and_then(|f| f.series.get(labels))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// One HTTP request answered.
    pub fn http_request(&self, endpoint: &'static str, status: u16) {
        self.inc(
            HTTP_REQUESTS,
            &[("endpoint", endpoint), ("status", status_label(status))],
        );
    }

    /// One failed TLS handshake, with a reason label from a fixed set.
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.inc(TLS_HANDSHAKE_FAILURES, &[("reason", reason)]);
    }

    /// One connection accepted and handed to a worker.
    pub fn connection_accepted(&self) {
        self.inc(CONNECTIONS_ACCEPTED, &[]);
    }

    /// One connection closed at once because the limit was reached.
    pub fn connection_refused(&self) {
        self.inc(CONNECTIONS_REFUSED, &[]);
    }

    /// The open-connection gauge goes up by one.
    pub fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The open-connection gauge goes down by one.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections currently open on the partner listener.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// One access token issued (`kind` e.g. `notify`, `pull`, `zorgviewer`).
    pub fn token_issued(&self, kind: &'static str) {
        self.inc(TOKENS_ISSUED, &[("kind", kind)]);
    }

    /// One token request refused (`reason` e.g. `invalid_client`, `replay`).
    pub fn token_refused(&self, reason: &'static str) {
        self.inc(TOKENS_REFUSED, &[("reason", reason)]);
    }

    /// The whole registry in Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        {
            let collectors = self
                .collectors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for c in collectors.iter() {
                c(self);
            }
        }
        let mut out = String::with_capacity(4096);
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        let gauges = self.gauges.read().unwrap_or_else(PoisonError::into_inner);
        let open = self.open_connections.load(Ordering::Relaxed);
        // Every family once, in name order, whatever its type.
        let mut names: Vec<&'static str> = families.keys().chain(gauges.keys()).copied().collect();
        names.push(OPEN_CONNECTIONS);
        names.sort_unstable();
        names.dedup();
        for name in names {
            if name == OPEN_CONNECTIONS {
                render_gauge(&mut out, open);
            } else if let Some(family) = families.get(name) {
                render_family(
                    &mut out,
                    name,
                    family.help,
                    "counter",
                    &family.series,
                    |v| v.load(Ordering::Relaxed).to_string(),
                );
            } else if let Some(family) = gauges.get(name) {
                render_family(&mut out, name, family.help, "gauge", &family.series, |v| {
                    v.load(Ordering::Relaxed).to_string()
                });
            }
        }
        out
    }
}

fn render_family<V>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    series: &BTreeMap<Vec<Label>, Arc<V>>,
    value: impl Fn(&V) -> String,
) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in series {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, lv)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label_value(lv));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", value(v));
    }
}

fn render_gauge(out: &mut String, value: i64) {
    let _ = writeln!(
        out,
        "# HELP {OPEN_CONNECTIONS} Connections currently open on the partner listener."
    );
    let _ = writeln!(out, "# TYPE {OPEN_CONNECTIONS} gauge");
    let _ = writeln!(out, "{OPEN_CONNECTIONS} {value}");
}

/// A fixed label for an HTTP status code: the code itself for the ones we use, else its
/// class (`2xx` …), so a handler bug cannot create unbounded series.
pub fn status_label(status: u16) -> &'static str {
    if let Some((_, label)) = KNOWN_STATUSES.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

const KNOWN_STATUSES: [(u16, &str); 35] = [
    (100, "100"),
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (301, "301"),
    (302, "302"),
    (303, "303"),
    (304, "304"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (409, "409"),
    (410, "410"),
    (411, "411"),
    (412, "412"),
    (413, "413"),
    (414, "414"),
    (415, "415"),
    (417, "417"),
    (422, "422"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
];

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not reserved (`__` prefix).
fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    !name.starts_with("__")
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Label values escape `\`, `"` and line feed.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes `\` and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_builtin_families_with_help_and_type() {
        let m = Metrics::new();
        m.http_request("/oauth/token", 200);
        m.http_request("/oauth/token", 200);
        m.http_request("/fhir/{type}", 799);
        m.tls_handshake_failure("no_client_cert");
        m.connection_refused();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.token_issued("pull");
        m.token_refused("invalid_client");
        let text = m.render();
        for line in [
            "# HELP np_http_requests_total HTTP requests answered on the partner listener, by endpoint and status.",
            "# TYPE np_http_requests_total counter",
            "np_http_requests_total{endpoint=\"/oauth/token\",status=\"200\"} 2",
            "np_http_requests_total{endpoint=\"/fhir/{type}\",status=\"other\"} 1",
            "np_tls_handshake_failures_total{reason=\"no_client_cert\"} 1",
            "np_connections_refused_total 1",
            "np_connections_accepted_total 0",
            "# TYPE np_open_connections gauge",
            "np_open_connections 1",
            "np_tokens_issued_total{kind=\"pull\"} 1",
            "np_tokens_refused_total{reason=\"invalid_client\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family announced before it.
        let mut typed = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(typed.last().map(String::as_str), Some(name), "{l}");
            }
        }
        assert_eq!(
            m.get(
                HTTP_REQUESTS,
                &[("endpoint", "/oauth/token"), ("status", "200")]
            ),
            2
        );
    }

    #[test]
    fn gauges_render_as_gauges_in_name_order_and_collectors_refresh_them() {
        let m = Metrics::new();
        m.add_collector(Box::new(|m: &Metrics| {
            m.gauge(SPOOL_ITEMS, &[("state", "queued")]).set(7);
        }));
        m.gauge(CIRCUIT_OPEN, &[("partner", intern("hospb"))])
            .set(1);
        m.inc(WORK_RETRIES, &[("kind", "notify")]);
        let text = m.render();
        for line in [
            "# TYPE np_spool_items gauge",
            "np_spool_items{state=\"queued\"} 7",
            "# TYPE np_circuit_open gauge",
            "np_circuit_open{partner=\"hospb\"} 1",
            "np_backpressure{reason=\"disk\"} 0",
            "np_work_retries_total{kind=\"notify\"} 1",
            "# TYPE np_open_connections gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        let mut sorted = types.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(types, sorted, "each family once, in name order");
        assert_eq!(m.gauge_value(SPOOL_ITEMS, &[("state", "queued")]), 7);
    }

    #[test]
    fn intern_returns_the_same_str_and_is_capped() {
        let a = intern("partner-x");
        let b = intern(&String::from("partner-x"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "partner-x");
    }

    #[test]
    fn escapes_label_values_and_help() {
        let m = Metrics::new();
        m.describe("np_test_total", "a \\ b\nc");
        m.inc("np_test_total", &[("v", "q\"uo\\te\nx")]);
        let text = m.render();
        assert!(
            text.contains("# HELP np_test_total a \\\\ b\\nc\n"),
            "{text}"
        );
        assert!(
            text.contains("np_test_total{v=\"q\\\"uo\\\\te\\nx\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn generic_counters_and_invalid_names() {
        let m = Metrics::new();
        let c = m.counter("np_spool_items_total", &[("state", "queued")]);
        c.inc();
        c.add(4);
        assert_eq!(m.get("np_spool_items_total", &[("state", "queued")]), 5);
        assert!(
            m.render()
                .contains("# HELP np_spool_items_total np_spool_items_total\n")
        );
        let bad = m.counter("np bad", &[]);
        bad.inc();
        let bad_label = m.counter("np_ok_total", &[("__x", "y")]);
        bad_label.inc();
        let text = m.render();
        assert!(!text.contains("np bad") && !text.contains("__x"), "{text}");
    }
}
