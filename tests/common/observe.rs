//! Reading what a running agent shows: its log lines (logfmt with `ts=`),
//! its CPU time from `/proc`, and its `/metrics`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One logfmt line: its time in Unix milliseconds and its fields.
#[derive(Debug, Clone)]
pub struct Line {
    pub ts_ms: i64,
    pub fields: BTreeMap<String, String>,
    pub raw: String,
}

impl Line {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Splits a logfmt line into fields (`"…"` values unquoted, `\"` unescaped).
pub fn parse_line(raw: &str) -> Option<Line> {
    let mut fields = BTreeMap::new();
    let mut rest = raw.trim_end();
    while !rest.is_empty() {
        rest = rest.trim_start();
        let eq = rest.find('=')?;
        let key = rest[..eq].to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &q[end.min(q.len())..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        fields.insert(key, value);
    }
    let ts = fields.get("ts")?;
    let (secs, ms) = ts.trim_end_matches('Z').split_once('.')?;
    let secs = np_agent::util::time::parse_rfc3339(&format!("{secs}Z"))?;
    let ms: i64 = ms.parse().ok()?;
    Some(Line {
        ts_ms: secs * 1000 + ms,
        fields,
        raw: raw.to_string(),
    })
}

/// The lines of `log` with `event=<event>` (and every `key=value` in `with`).
pub fn events(log: &str, event: &str, with: &[(&str, &str)]) -> Vec<Line> {
    log.lines()
        .filter_map(parse_line)
        .filter(|l| l.get("event") == Some(event))
        .filter(|l| with.iter().all(|(k, v)| l.get(k) == Some(*v)))
        .collect()
}

/// CPU time (user + system) the process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok());
    out.unwrap_or(100.0)
}

/// The share of one core the process used over `window` (sleeping through it).
pub fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_seconds(pid);
    let started = Instant::now();
    std::thread::sleep(window);
    let used = cpu_seconds(pid) - before;
    used / started.elapsed().as_secs_f64()
}

/// `GET /metrics` on the admin listener (plain HTTP on loopback).
pub fn metrics(admin_port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of one sample line (`name{labels}`) in a metrics text, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `f` every 100 ms until it is true; panics with `what()` after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}: {}",
            what()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
