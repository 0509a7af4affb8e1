//! The outside programs of the benchmark: nginx as the reference server, oha
//! as the independent load generator, strace to count flushes, and reading
//! `/proc`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use np_agent::pki::TlsFiles;
use serde_json::Value;

use crate::common::agent::{agent_bin, free_port};
use crate::common::observe::cpu_seconds;

/// Where the tools are (`bench/run` passes them in the environment).
pub struct Tools {
    /// The np-agent binary under test (`NP_BENCH_AGENT_BIN`).
    pub agent: PathBuf,
    /// Which build that is (`NP_BENCH_BUILD`: musl or glibc).
    pub build: String,
    pub oha: PathBuf,
    pub nginx: PathBuf,
    pub strace: PathBuf,
}

impl Tools {
    pub fn from_env() -> Tools {
        let path = |var: &str, default: &str| {
            std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Tools {
            agent: agent_bin(),
            build: std::env::var("NP_BENCH_BUILD").unwrap_or_else(|_| "cargo bench build".into()),
            oha: path("NP_BENCH_OHA", "oha"),
            nginx: path("NP_BENCH_NGINX", "nginx"),
            strace: path("NP_BENCH_STRACE", "strace"),
        }
    }

    /// `nginx -v` (it prints to stderr).
    pub fn nginx_version(&self) -> Option<String> {
        let out = Command::new(&self.nginx).arg("-v").output().ok()?;
        Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A line of `/proc/<pid>/status` as a number (`VmRSS` in kB, `Threads`).
pub fn status_field(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_field(pid, "VmRSS") / 1024.0
}

/// nginx serving `root` over mutual TLS with the same certificate, key and
/// client CA as the agent, and the same TLS policy: TLS 1.3 only, the
/// agent's suites and groups in its order, no session resumption (no
/// tickets, no cache), a client certificate required. One worker process
/// per core, access log off, 1000 requests per kept-alive connection (the
/// agent's limit too).
pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    pub pid: u32,
}

impl Nginx {
    pub fn start(tools: &Tools, dir: &Path, tls: &TlsFiles, root: &Path) -> Nginx {
        let port = free_port();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let root_user = crate::report::output("id", &["-u"], None).as_deref() == Some("0");
        let conf = format!(
            r#"# written by bench/run
{user}worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_requests 1000;
    keepalive_timeout 30s;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {trust};
        ssl_verify_client on;
        ssl_verify_depth 3;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_prefer_server_ciphers on;
        ssl_session_tickets off;
        ssl_session_cache off;
        root {root};
        location / {{ default_type "application/fhir+json;charset=utf-8"; }}
    }}
}}
"#,
            // Workers run as `nobody` under a root master; the bench's
            // directories are private to the user running it.
            user = if root_user { "user root;\n" } else { "" },
            dir = dir.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            trust = tls.trust.display(),
            root = root.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new(&tools.nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tools.nginx.display()));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "nginx exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child: Some(child),
            port,
            pid,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// CPU seconds of the master and its workers.
    pub fn cpu_seconds(&self) -> f64 {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .chain([self.pid])
            .map(cpu_seconds)
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // TERM to the master stops its workers too; SIGKILL would orphan them.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One load from oha: `connections` concurrent connections for `secs`.
pub struct Load<'a> {
    pub url: &'a str,
    pub connections: usize,
    pub secs: Duration,
    /// `false`: a new connection (TLS handshake) for every request.
    pub keepalive: bool,
    pub bearer: Option<&'a str>,
    /// The client's certificate, key and the CA to check the server with.
    pub client: &'a TlsFiles,
}

/// What oha measured. Every answer must have been `200`.
pub struct LoadResult {
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: f64,
    pub bytes_per_request: f64,
}

/// Runs oha and reads its JSON summary; panics on any error or non-200.
pub fn oha(tools: &Tools, load: &Load<'_>) -> LoadResult {
    let port = load
        .url
        .split("://localhost:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap();
    let mut cmd = Command::new(&tools.oha);
    // `-w`: requests under way at the deadline are finished, not counted as errors.
    cmd.args([
        "-w",
        "--no-tui",
        "--output-format",
        "json",
        "--http-version",
        "1.1",
    ])
    .arg("-z")
    .arg(format!("{}s", load.secs.as_secs()))
    .arg("-c")
    .arg(load.connections.to_string())
    .arg("--cacert")
    .arg(&load.client.trust)
    .arg("--cert")
    .arg(&load.client.cert)
    .arg("--key")
    .arg(&load.client.key)
    // The certificates name `localhost`; connect to IPv4 loopback whatever
    // `localhost` resolves to.
    .arg("--connect-to")
    .arg(format!("localhost:{port}:127.0.0.1:{port}"))
    .args(["-H", "Accept: application/fhir+json"]);
    if let Some(token) = load.bearer {
        cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    if !load.keepalive {
        cmd.arg("--disable-keepalive");
    }
    cmd.arg(load.url);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tools.oha.display()));
    assert!(
        out.status.success(),
        "oha failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oha's output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let codes = v["statusCodeDistribution"].as_object().unwrap();
    let errors = v["errorDistribution"].as_object().map_or(0, |e| e.len());
    let ok = codes.get("200").and_then(Value::as_f64).unwrap_or(0.0);
    let all: f64 = codes.values().filter_map(Value::as_f64).sum();
    assert!(
        ok > 0.0 && ok == all && errors == 0,
        "{}: not every answer was 200: {} {}",
        load.url,
        v["statusCodeDistribution"],
        v["errorDistribution"]
    );
    let summary = &v["summary"];
    let pct = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap() * 1000.0;
    LoadResult {
        per_s: summary["requestsPerSec"].as_f64().unwrap(),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        requests: ok,
        bytes_per_request: summary["sizePerRequest"].as_f64().unwrap_or(0.0),
    }
}

/// strace attached to running processes, counting their flush calls
/// (`fsync`, `fdatasync`, `sync_file_range`, `syncfs`) until [`finish`](Self::finish).
pub struct FlushCount {
    child: Child,
    out: PathBuf,
}

const FLUSH_CALLS: &[&str] = &["fsync", "fdatasync", "sync_file_range", "syncfs"];

impl FlushCount {
    /// Attaches to every thread of each of `pids` (and threads they start)
    /// and returns once strace says all are attached.
    pub fn attach(tools: &Tools, pids: &[u32], dir: &Path) -> FlushCount {
        let out = dir.join(format!("strace-{}.txt", pids[0]));
        let mut cmd = Command::new(&tools.strace);
        cmd.args(["-f", "-c", "-e"])
            .arg(format!("trace={}", FLUSH_CALLS.join(",")))
            .arg("-o")
            .arg(&out);
        for pid in pids {
            cmd.arg("-p").arg(pid.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tools.strace.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut attached = 0;
        let mut seen = Vec::new();
        while attached < pids.len() {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    if line.contains("attached") {
                        attached += 1;
                    }
                    seen.push(line);
                }
                Err(_) => panic!(
                    "strace did not attach to {pids:?} (as a user other than root it needs \
                     kernel.yama.ptrace_scope=0): {}",
                    seen.join("\n")
                ),
            }
        }
        FlushCount { child, out }
    }

    /// Detaches and returns the number of each flush call made meanwhile.
    pub fn finish(mut self) -> BTreeMap<String, u64> {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut calls = BTreeMap::new();
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(name), Some(n)) = (cols.last(), cols.get(3)) {
                if FLUSH_CALLS.contains(name) {
                    calls.insert(name.to_string(), n.parse().unwrap_or(0));
                }
            }
        }
        calls
    }
}

/// The sum of the counts.
pub fn total(calls: &BTreeMap<String, u64>) -> f64 {
    calls.values().sum::<u64>() as f64
}
