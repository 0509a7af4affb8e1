//! Size and memory of the binary under test, and the daemon under a
//! connection flood.
//!
//! - **Memory.** Per run a fresh agent with one Twiin partner: its RSS and
//!   threads 2 s after `READY=1`; then 256 mutual-TLS connections from the
//!   partner, each served one request (`GET /fhir/metadata`) and kept open,
//!   and the RSS 1 s later (`np_open_connections` must say 256).
//! - **Overload.** Per run a fresh agent with `NP_MAX_CONNECTIONS=256`;
//!   `--flood` plain TCP connections opened as fast as they go and held
//!   open, never starting TLS (what costs an attacker least). Meanwhile: the
//!   highest RSS (sampled every 20 ms); whether `/healthz` answers 200
//!   within 1 s; whether a partner's mutual-TLS request is answered within
//!   1 s; and when it is first answered, trying again each second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use np_agent::jose::Alg;
use np_agent::pki::{self, MinVersion};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::Options;
use crate::common::TempDir;
use crate::common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World};
use crate::common::observe::{metrics, sample};
use crate::report::Run;
use crate::tools::{rss_mib, status_field};

/// Connections held open for the RSS figure.
const HELD: usize = 256;
/// The longest a partner may wait under the flood.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

pub fn measure(opts: &Options) -> Vec<Run> {
    let bytes = std::fs::metadata(&opts.tools.agent).unwrap().len() as f64;
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: memory run {}/{}", i + 1, opts.runs);
        let agent = OnePartner::start(&[]);
        std::thread::sleep(Duration::from_secs(2));
        let mut run = Run::default();
        run.set("memory.binary_bytes", bytes);
        run.set("memory.binary_mib", bytes / 1024.0 / 1024.0);
        run.note("memory.build", &opts.tools.build);
        run.set("memory.idle_rss_mib", rss_mib(agent.process.pid));
        run.set(
            "memory.idle_threads",
            status_field(agent.process.pid, "Threads"),
        );
        let held: Vec<_> = (0..HELD).map(|_| agent.request(None).unwrap()).collect();
        std::thread::sleep(Duration::from_secs(1));
        let open = sample(&metrics(agent.setup.admin_port), "np_open_connections");
        assert_eq!(open, Some(HELD as f64), "the agent holds every connection");
        run.set("memory.rss_256_connections_mib", rss_mib(agent.process.pid));
        run.set(
            "memory.threads_256_connections",
            status_field(agent.process.pid, "Threads"),
        );
        drop(held);
        runs.push(run);
        agent.stop();
    }
    runs
}

pub fn overload(opts: &Options) -> Vec<Run> {
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: overload run {}/{}", i + 1, opts.runs);
        let agent = OnePartner::start(&[("NP_MAX_CONNECTIONS", "256")]);
        let pid = agent.process.pid;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut max = 0.0f64;
                while !stop.load(Ordering::Relaxed) {
                    max = max.max(rss_mib(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
                max
            })
        };
        let addr: SocketAddr = ([127, 0, 0, 1], agent.setup.port).into();
        let started = Instant::now();
        let mut flood = Vec::with_capacity(opts.flood);
        let mut failed = 0;
        for _ in 0..opts.flood {
            match TcpStream::connect_timeout(&addr, SERVED_WITHIN) {
                Ok(s) => flood.push(s),
                Err(_) => failed += 1,
            }
        }
        let flood_secs = started.elapsed().as_secs_f64();
        let healthy = health(agent.setup.admin_port);
        let first = Instant::now();
        let served_at_once = agent.request(Some(SERVED_WITHIN)).is_ok();
        let within = served_at_once && first.elapsed() <= SERVED_WITHIN;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = served_at_once;
        while !served && Instant::now() < deadline {
            let t = Instant::now();
            served = agent.request(Some(SERVED_WITHIN)).is_ok();
            if !served {
                std::thread::sleep(SERVED_WITHIN.saturating_sub(t.elapsed()));
            }
        }
        let first_served = first.elapsed().as_secs_f64();
        let refused = sample(
            &metrics(agent.setup.admin_port),
            "np_connections_refused_total",
        )
        .unwrap_or(0.0);
        drop(flood);
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        let rss_max = sampler.join().unwrap();
        let mut run = Run::default();
        run.set("overload.attempts", opts.flood as f64);
        run.set("overload.connect_failures", failed as f64);
        run.set("overload.flood_s", flood_secs);
        run.set("overload.refused", refused);
        run.set("overload.rss_max_mib", rss_max);
        run.set(
            "overload.healthy",
            f64::from(u8::from(healthy && health(agent.setup.admin_port))),
        );
        run.set(
            "overload.partner_served_within_1s",
            f64::from(u8::from(within)),
        );
        run.set(
            "overload.partner_first_served_s",
            if served {
                first_served
            } else {
                f64::from(u16::MAX)
            },
        );
        runs.push(run);
        agent.stop();
    }
    runs
}

/// `GET /healthz` on the admin listener answered 200 within 1 s.
fn health(admin_port: u16) -> bool {
    let started = Instant::now();
    let attempt = || -> std::io::Result<bool> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], admin_port).into(), SERVED_WITHIN)?;
        s.set_read_timeout(Some(SERVED_WITHIN))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out.starts_with(b"HTTP/1.1 200"))
    };
    attempt().unwrap_or(false) && started.elapsed() <= SERVED_WITHIN
}

/// An agent with one Twiin partner, and that partner's TLS client.
struct OnePartner {
    setup: AgentSetup,
    process: AgentProcess,
    tls: Arc<ClientConfig>,
    _jwks: JwksServer,
    _tmp: TempDir,
}

impl OnePartner {
    fn start(env: &[(&str, &str)]) -> OnePartner {
        let tmp = TempDir::new("bench-memory");
        let world = World::new();
        let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
        let jwks = b.serve_jwks();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
        setup.add_partner(&b, &jwks);
        setup.env.set("NP_LOG", "warn");
        for (k, v) in env {
            setup.env.set(k, *v);
        }
        let process = setup.start();
        OnePartner {
            tls: pki::client_config(&b.material, MinVersion::Tls13).unwrap(),
            setup,
            process,
            _jwks: jwks,
            _tmp: tmp,
        }
    }

    /// A new mutual-TLS connection that has been answered `GET /fhir/metadata`
    /// (and stays open), every step within `limit` if one is given.
    fn request(
        &self,
        limit: Option<Duration>,
    ) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.setup.port).into();
        let tcp = match limit {
            Some(l) => TcpStream::connect_timeout(&addr, l)?,
            None => TcpStream::connect(addr)?,
        };
        tcp.set_read_timeout(limit)?;
        tcp.set_write_timeout(limit)?;
        let conn =
            ClientConnection::new(self.tls.clone(), ServerName::try_from("localhost").unwrap())
                .map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        stream.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        read_response(&mut stream)?;
        Ok(stream)
    }

    fn stop(self) {
        assert!(self.process.stop().success());
    }
}

/// Reads one response with a `Content-Length` body; an error unless `200`.
fn read_response(stream: &mut impl Read) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
