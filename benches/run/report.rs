//! Figures of the runs, their medians, the targets, and the two
//! outputs: `results.json` (every figure with median, min, max and the
//! values of each run) and the markdown table.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::Options;

/// The figures of one run of one section, by dotted key
/// (`fhir_read.ratio_to_nginx`). Ratios are computed inside the run.
#[derive(Default)]
pub struct Run {
    values: BTreeMap<String, f64>,
    notes: BTreeMap<String, String>,
}

impl Run {
    pub fn set(&mut self, key: &str, value: f64) {
        assert!(value.is_finite(), "{key} = {value}");
        self.values.insert(key.to_string(), value);
    }

    /// A word rather than a number (which bound binds, which build).
    pub fn note(&mut self, key: &str, text: &str) {
        self.notes.insert(key.to_string(), text.to_string());
    }
}

/// Median, minimum and maximum of one figure over the runs.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// One of the targets the figures are held to.
struct Target {
    what: &'static str,
    key: &'static str,
    /// `true`: the figure must be at least `limit`; `false`: at most.
    at_least: bool,
    limit: f64,
}

const TARGETS: &[Target] = &[
    Target {
        what: "token endpoint, 16 clients ≥ 0.7 of the crypto bound",
        key: "token.c16.ratio_to_crypto_bound",
        at_least: true,
        limit: 0.7,
    },
    Target {
        what: "FHIR read ≥ 0.6 of nginx",
        key: "fhir_read.ratio_to_nginx",
        at_least: true,
        limit: 0.6,
    },
    Target {
        what: "new connections ≥ 0.8 of nginx",
        key: "new_connections.ratio_to_nginx",
        at_least: true,
        limit: 0.8,
    },
    Target {
        what: "notify + pull cycles ≥ 0.5 of the lower bound",
        key: "cycles.ratio_to_bound",
        at_least: true,
        limit: 0.5,
    },
    Target {
        what: "outbox intake ≥ 2× the raw durable write",
        key: "intake.ratio_to_durable_write",
        at_least: true,
        limit: 2.0,
    },
    Target {
        what: "idle RSS ≤ 4 MiB",
        key: "memory.idle_rss_mib",
        at_least: false,
        limit: 4.0,
    },
    Target {
        what: "RSS with 256 open connections ≤ 32 MiB",
        key: "memory.rss_256_connections_mib",
        at_least: false,
        limit: 32.0,
    },
    Target {
        what: "binary ≤ 4 MiB",
        key: "memory.binary_mib",
        at_least: false,
        limit: 4.0,
    },
    Target {
        what: "connection flood: RSS ≤ 32 MiB",
        key: "overload.rss_max_mib",
        at_least: false,
        limit: 32.0,
    },
    Target {
        what: "connection flood: daemon healthy",
        key: "overload.healthy",
        at_least: true,
        limit: 1.0,
    },
    Target {
        what: "connection flood: a partner served within 1 s",
        key: "overload.partner_served_within_1s",
        at_least: true,
        limit: 1.0,
    },
];

/// Every run's figures, then their spreads.
pub struct Results {
    values: BTreeMap<String, Vec<f64>>,
    notes: BTreeMap<String, Vec<String>>,
    spreads: BTreeMap<String, Spread>,
    context: Value,
}

impl Results {
    pub fn new(opts: &Options) -> Results {
        Results {
            values: BTreeMap::new(),
            notes: BTreeMap::new(),
            spreads: BTreeMap::new(),
            context: context(opts),
        }
    }

    pub fn add(&mut self, run: Run) {
        for (k, v) in run.values {
            self.values.entry(k).or_default().push(v);
        }
        for (k, v) in run.notes {
            self.notes.entry(k).or_default().push(v);
        }
    }

    /// Computes the spreads; notes the load at the end.
    pub fn finish(&mut self) {
        self.spreads = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Spread::of(v)))
            .collect();
        self.context["load_average_end"] = json!(load_average());
    }

    fn spread(&self, key: &str) -> Option<Spread> {
        self.spreads.get(key).copied()
    }

    fn note(&self, key: &str) -> Option<String> {
        let v = self.notes.get(key)?;
        let mut distinct: Vec<&String> = v.iter().collect();
        distinct.sort();
        distinct.dedup();
        Some(
            distinct
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    pub fn json(&self) -> Value {
        let mut root = Map::new();
        root.insert("context".into(), self.context.clone());
        for (key, values) in &self.values {
            let s = self.spreads[key];
            insert(
                &mut root,
                key,
                json!({"median": round(s.median), "min": round(s.min), "max": round(s.max),
                    "runs": values.iter().map(|v| round(*v)).collect::<Vec<_>>()}),
            );
        }
        for (key, v) in &self.notes {
            insert(&mut root, key, json!(v));
        }
        let targets: Vec<Value> = TARGETS
            .iter()
            .filter_map(|t| {
                let s = self.spread(t.key)?;
                Some(json!({"target": t.what, "key": t.key, "limit": t.limit,
                    "median": round(s.median), "met": met(t, s.median),
                    "median_over_limit": round(s.median / t.limit)}))
            })
            .collect();
        root.insert("targets".into(), json!(targets));
        Value::Object(root)
    }

    /// The markdown table: np-agent's figure, what it is measured against in
    /// the same run, the ratio; then the targets.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.context;
        out.push_str(&format!(
            "Machine: {} cores ({}), {} GiB RAM, {}; kernel {}; build {}; {}; load average {} at start, {} at end; {} run(s), median (min–max).\n\n",
            c["cores"],
            c["cpu"].as_str().unwrap_or("?"),
            c["memory_gib"],
            c["disk"].as_str().unwrap_or("?"),
            c["kernel"].as_str().unwrap_or("?"),
            c["build"].as_str().unwrap_or("?"),
            c["date"].as_str().unwrap_or("?"),
            c["load_average_start"].as_str().unwrap_or("?"),
            c["load_average_end"].as_str().unwrap_or("?"),
            c["runs"],
        ));
        out.push_str("| figure | np-agent | measured against, same run | ratio |\n");
        out.push_str("|---|---:|---:|---:|\n");
        let rows: Vec<[String; 4]> = ROWS.iter().filter_map(|row| self.row(row)).collect();
        for r in rows {
            out.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
        }
        out.push_str("\n| target | median | met | median ÷ target |\n|---|---:|---|---:|\n");
        for t in TARGETS {
            let Some(s) = self.spread(t.key) else {
                continue;
            };
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} |\n",
                t.what,
                number(s.median),
                if met(t, s.median) { "yes" } else { "**no**" },
                s.median / t.limit
            ));
        }
        out
    }

    fn cell(&self, key: &str, unit: &str) -> Option<String> {
        let s = self.spread(key)?;
        Some(if self.values[key].len() == 1 || s.min == s.max {
            format!("{}{unit}", number(s.median))
        } else {
            format!(
                "{}{unit} ({}–{})",
                number(s.median),
                number(s.min),
                number(s.max)
            )
        })
    }

    /// `label` with `{files}`, `{cycles}` and `{flood}` replaced by this
    /// run's counts (`10,000`).
    fn label(&self, label: &str) -> String {
        let count = |key: &str| {
            let n = self.context[key].as_u64().unwrap_or(0).to_string();
            let mut out = String::new();
            for (i, c) in n.chars().enumerate() {
                if i > 0 && (n.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        };
        label
            .replace("{files}", &count("files"))
            .replace("{cycles}", &count("cycles_per_run"))
            .replace("{flood}", &count("flood"))
    }

    fn row(&self, row: &Row) -> Option<[String; 4]> {
        let value = row
            .values
            .iter()
            .filter_map(|(k, unit)| self.cell(k, unit))
            .collect::<Vec<_>>();
        if value.is_empty() {
            return None;
        }
        let mut against: Vec<String> = row
            .against
            .iter()
            .filter_map(|(label, k, unit)| Some(format!("{label} {}", self.cell(k, unit)?)))
            .collect();
        if let Some((label, n)) = row.note.and_then(|(l, k)| Some((l, self.note(k)?))) {
            against.push(format!("{label}: {n}"));
        }
        let ratio = row
            .ratio
            .and_then(|k| self.cell(k, ""))
            .unwrap_or_else(|| "—".into());
        Some([
            self.label(row.label),
            value.join(", "),
            if against.is_empty() {
                "—".into()
            } else {
                against.join("; ")
            },
            ratio,
        ])
    }
}

/// One line of the table: np-agent's figures (key, unit), what they are
/// measured against (label, key, unit), the ratio key and a note key.
struct Row {
    label: &'static str,
    values: &'static [(&'static str, &'static str)],
    against: &'static [(&'static str, &'static str, &'static str)],
    ratio: Option<&'static str>,
    note: Option<(&'static str, &'static str)>,
}

const ROWS: &[Row] = &[
    Row {
        label: "FHIR read `GET /fhir/Condition/<id>` with a pull token, 16 kept-alive connections",
        values: &[
            ("fhir_read.req_per_s", " req/s"),
            ("fhir_read.p50_ms", " ms p50"),
            ("fhir_read.p99_ms", " ms p99"),
            ("fhir_read.cpu_us_per_req", " µs CPU/req"),
        ],
        against: &[
            ("nginx", "fhir_read.nginx_req_per_s", " req/s"),
            ("p99", "fhir_read.nginx_p99_ms", " ms"),
            ("CPU", "fhir_read.nginx_cpu_us_per_req", " µs/req"),
        ],
        ratio: Some("fhir_read.ratio_to_nginx"),
        note: None,
    },
    Row {
        label: "FHIR search `Observation?patient=…` (20 results), 16 kept-alive connections",
        values: &[
            ("fhir_search.req_per_s", " req/s"),
            ("fhir_search.p50_ms", " ms p50"),
            ("fhir_search.p99_ms", " ms p99"),
            ("fhir_search.cpu_us_per_req", " µs CPU/req"),
        ],
        against: &[],
        ratio: None,
        note: None,
    },
    Row {
        label: "new mTLS connections (handshake + one read), 16 at a time",
        values: &[
            ("new_connections.per_s", "/s"),
            ("new_connections.p99_ms", " ms p99"),
            ("new_connections.cpu_us_per_conn", " µs CPU each"),
        ],
        against: &[
            ("nginx", "new_connections.nginx_per_s", "/s"),
            ("CPU", "new_connections.nginx_cpu_us_per_conn", " µs each"),
        ],
        ratio: Some("new_connections.ratio_to_nginx"),
        note: None,
    },
    Row {
        label: "token endpoint, 1 client (ES256, two verifications each)",
        values: &[("token.c1.req_per_s", " req/s")],
        against: &[("crypto bound", "token.crypto_bound_req_per_s", " req/s")],
        ratio: Some("token.c1.ratio_to_crypto_bound"),
        note: None,
    },
    Row {
        label: "token endpoint, 4 clients",
        values: &[("token.c4.req_per_s", " req/s")],
        against: &[("crypto bound", "token.crypto_bound_req_per_s", " req/s")],
        ratio: Some("token.c4.ratio_to_crypto_bound"),
        note: None,
    },
    Row {
        label: "token endpoint, 16 clients",
        values: &[
            ("token.c16.req_per_s", " req/s"),
            ("token.fsyncs_per_request", " fsyncs/req"),
            ("token.c16.agent_cpu_us_per_req", " µs CPU/req"),
            ("token.c16.driver_cpu_us_per_req", " µs driver CPU/req"),
        ],
        against: &[
            ("crypto bound", "token.crypto_bound_req_per_s", " req/s"),
            (
                "of which verification",
                "token.verify_us_per_req",
                " µs/req",
            ),
            ("fsync bound", "token.fsync_bound_req_per_s", " req/s"),
        ],
        ratio: Some("token.c16.ratio_to_crypto_bound"),
        note: None,
    },
    Row {
        label: "notify + pull cycles between two agents",
        values: &[
            ("cycles.per_s", " cycles/s"),
            ("cycles.fsyncs_per_cycle", " fsyncs/cycle"),
            ("cycles.tokens_per_cycle", " tokens/cycle"),
        ],
        against: &[
            ("crypto bound", "cycles.crypto_bound_per_s", "/s"),
            ("fsync bound", "cycles.fsync_bound_per_s", "/s"),
        ],
        ratio: Some("cycles.ratio_to_bound"),
        note: Some(("binds", "cycles.binding")),
    },
    Row {
        label: "outbox intake of {files} exports",
        values: &[("intake.files_per_s", " files/s")],
        against: &[("raw durable write", "intake.durable_writes_per_s", "/s")],
        ratio: Some("intake.ratio_to_durable_write"),
        note: None,
    },
    Row {
        label: "one scan pass over {files} unchanged (deferred) outbox files",
        values: &[("scan.pass_ms", " ms"), ("scan.files_per_s", " files/s")],
        against: &[("`find` + `stat`", "scan.find_ms", " ms")],
        ratio: Some("scan.ratio_to_find"),
        note: None,
    },
    Row {
        label: "Mitz notifications stored, 4 clients",
        values: &[
            ("mitz.stored_per_s", "/s"),
            ("mitz.answered_per_s", "/s answered"),
        ],
        against: &[("raw durable write", "mitz.durable_writes_per_s", "/s")],
        ratio: Some("mitz.ratio_to_durable_write"),
        note: None,
    },
    Row {
        label: "binary (stripped)",
        values: &[("memory.binary_mib", " MiB")],
        against: &[],
        ratio: None,
        note: Some(("build", "memory.build")),
    },
    Row {
        label: "idle RSS, one partner",
        values: &[
            ("memory.idle_rss_mib", " MiB"),
            ("memory.idle_threads", " threads"),
        ],
        against: &[],
        ratio: None,
        note: None,
    },
    Row {
        label: "RSS with 256 open connections",
        values: &[("memory.rss_256_connections_mib", " MiB")],
        against: &[],
        ratio: None,
        note: None,
    },
    Row {
        label: "RSS after {cycles} cycles (sender A, receiver B)",
        values: &[
            ("cycles.rss_a_mib", " MiB A"),
            ("cycles.rss_b_mib", " MiB B"),
            ("cycles.count", " cycles"),
        ],
        against: &[],
        ratio: None,
        note: None,
    },
    Row {
        label: "{flood} connection attempts, `NP_MAX_CONNECTIONS=256`",
        values: &[
            ("overload.rss_max_mib", " MiB max RSS"),
            ("overload.healthy", " healthy"),
            ("overload.partner_served_within_1s", " served ≤ 1 s"),
            ("overload.partner_first_served_s", " s to first served"),
        ],
        against: &[],
        ratio: None,
        note: None,
    },
];

fn met(t: &Target, v: f64) -> bool {
    if t.at_least {
        v >= t.limit
    } else {
        v <= t.limit
    }
}

/// A readable number: 3 significant digits below 100, whole numbers above.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn insert(root: &mut Map<String, Value>, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut node = root;
    for p in parts {
        node = node
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .unwrap();
    }
    node.insert(last.to_string(), value);
}

/// The machine and the build, for the record.
fn context(opts: &Options) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let tmp = std::env::temp_dir();
    let disk = output("findmnt", &["-n", "-o", "SOURCE,FSTYPE", "-T"], Some(&tmp))
        .map(|s| {
            format!(
                "{} on {}",
                tmp.display(),
                s.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .unwrap_or_else(|| tmp.display().to_string());
    json!({
        "date": output("date", &["-u", "+%Y-%m-%d"], None).unwrap_or_default(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": (mem_kib / 1024.0 / 1024.0).round(),
        "disk": disk,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "build": opts.tools.build,
        "agent": opts.tools.agent.display().to_string(),
        "oha": output(&opts.tools.oha.display().to_string(), &["--version"], None),
        "nginx": opts.tools.nginx_version(),
        "runs": opts.runs,
        "load_seconds": opts.load.as_secs(),
        "cycles_per_run": opts.cycles,
        "files": opts.files,
        "flood": opts.flood,
        "notifications": opts.notifications,
        "load_average_start": load_average(),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The trimmed stdout of a command, if it ran and succeeded.
pub fn output(cmd: &str, args: &[&str], path: Option<&std::path::Path>) -> Option<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(p) = path {
        c.arg(p);
    }
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
