//! The admin listener (`NP_ADMIN_LISTEN`, loopback by default): plain HTTP for process
//! supervision and scraping.
//!
//! - `GET /healthz`: 200 `ok` while the process serves at all;
//! - `GET /readyz`: 200 `ready` once the daemon says so, else 503 `not ready`;
//! - `GET /metrics`: the [`Metrics`] in Prometheus text format 0.0.4;
//! - `HEAD` on the same paths; another method there: 405; any other path: 404.
//!
//! Small by design: one request per connection (always `Connection: close`), heads up to
//! 8 KiB, no request bodies (413), 5 s to send the request and 5 s to read the answer, at
//! most [`MAX_ADMIN_CONNECTIONS`] connections at once, one short thread per connection.
//! Requests are logged at `debug` only: scrapers poll often.
//!
//! A health check is answered even when every slot is taken by a connection that sends
//! nothing: a new connection at the cap closes the oldest one still waiting for its
//! request (its thread sees end-of-stream and ends). Only when every slot is busy
//! answering is a new connection closed at once (`admin.connection_refused`, debug).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Response;
use super::parse::{ReaderLimits, RequestReader, Step};
use super::server::{remaining, wake_acceptor};
use super::wire::{self, Framing};
use crate::ops::logging::Rid;
use crate::ops::metrics::Metrics;
use crate::util::time;

/// Connections served at once; at the cap a new one displaces the oldest connection that
/// has not sent its request yet, or is closed at once when there is none.
pub const MAX_ADMIN_CONNECTIONS: usize = 8;
/// Threads at most: the cap plus displaced connections that have not ended yet.
const MAX_ADMIN_THREADS: usize = 2 * MAX_ADMIN_CONNECTIONS;
/// Deadline for receiving a request, and separately for sending the answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lingering close: how long and how much to drain after answering.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;
const ADMIN_LIMITS: ReaderLimits = ReaderLimits {
    max_header_bytes: 8 * 1024,
    max_headers: 32,
    max_target_bytes: 1024,
    max_body: 0,
};

/// The running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    shared: Arc<AdminShared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct AdminShared {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stopping: AtomicBool,
    /// Connection threads alive (only the acceptor adds to it).
    active: AtomicUsize,
    /// Connections that have not sent a complete request yet, oldest first: the ones a new
    /// connection at the cap may displace.
    waiting: Mutex<VecDeque<(u64, TcpStream)>>,
    next_id: AtomicU64,
}

impl AdminShared {
    fn lock_waiting(&self) -> MutexGuard<'_, VecDeque<(u64, TcpStream)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shuts down the oldest connection still waiting for its request; false when there
    /// is none.
    fn displace_oldest(&self) -> bool {
        let Some((_, tcp)) = self.lock_waiting().pop_front() else {
            return false;
        };
        let _ = tcp.shutdown(Shutdown::Both);
        true
    }

    /// Connection `id` sent its request (or ended): it may no longer be displaced.
    fn done_waiting(&self, id: u64) {
        self.lock_waiting().retain(|(waiting, _)| *waiting != id);
    }
}

impl AdminServer {
    /// Serves `listener` until [`shutdown`](Self::shutdown). `ready` is read on every
    /// `/readyz`; the daemon flips it once it can do its work.
    pub fn start(
        listener: TcpListener,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> io::Result<AdminServer> {
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(AdminShared {
            metrics,
            ready,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            waiting: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("np-admin-accept".into())
            .spawn(move || accept_loop(&acceptor_shared, &listener))?;
        log::info!("event=admin.listening addr={addr}");
        Ok(AdminServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; requests in flight finish on their own (they are bounded by the
    /// admin timeouts).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            if wake_acceptor(self.addr) {
                let _ = acceptor.join();
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<AdminShared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    log::debug!(
                        "event=admin.accept_failed error={}",
                        wire::log_value(&e.to_string())
                    );
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        // Only this thread adds to `active`, so the count cannot grow behind this check.
        let active = shared.active.load(Ordering::SeqCst);
        if active >= MAX_ADMIN_THREADS
            || (active >= MAX_ADMIN_CONNECTIONS && !shared.displace_oldest())
        {
            log::debug!("event=admin.connection_refused reason=limit");
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Listed before its thread runs, so the next connection can already displace it.
        if let Ok(handle) = tcp.try_clone() {
            shared.lock_waiting().push_back((id, handle));
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("np-admin".into())
            .spawn(move || {
                let _slot = ActiveGuard {
                    shared: &conn_shared,
                    id,
                };
                serve(&conn_shared, id, &tcp);
            });
        if spawned.is_err() {
            shared.done_waiting(id);
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Frees a connection's slot however serving ends.
struct ActiveGuard<'a> {
    shared: &'a AdminShared,
    id: u64,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.shared.done_waiting(self.id);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(shared: &AdminShared, id: u64, tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    let mut reader = RequestReader::new(ADMIN_LIMITS);
    let mut buf = Vec::new();
    let (resp, head_only, rid) = loop {
        let (used, step) = reader.advance(&buf);
        buf.drain(..used);
        match step {
            Step::Complete(req) => {
                shared.done_waiting(id);
                let head_only = req.head.method == "HEAD";
                let rid = wire::request_id(&req.head.headers);
                break (
                    route(shared, &req.head.method, &req.head.path),
                    head_only,
                    rid,
                );
            }
            Step::Reject(r) => {
                break (
                    Response::text(r.status, r.reason),
                    false,
                    wire::new_request_id(),
                );
            }
            // No admin request has a body (max_body 0), so this never happens; waiting for
            // the body is the safe reading.
            Step::SendContinue | Step::NeedMore => {}
        }
        let Some(wait) = remaining(deadline) else {
            break (
                Response::text(408, "request not received in time"),
                false,
                wire::new_request_id(),
            );
        };
        if tcp.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        let mut chunk = [0u8; 4096];
        match (&mut &*tcp).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    };
    let framing = Framing {
        request_id: &rid,
        close: true,
        head_only,
        now: time::now_unix(),
    };
    let out =
        wire::serialize(&resp, framing).unwrap_or_else(|_| wire::fallback_500(&rid, framing.now));
    let _ = tcp.set_write_timeout(Some(ADMIN_TIMEOUT));
    let _ = (&mut &*tcp).write_all(&out.bytes);
    let _ = tcp.shutdown(Shutdown::Write);
    linger(tcp);
    log::debug!(
        "event=admin.request rid={} status={}",
        Rid(&rid),
        resp.status
    );
}

/// Reads and drops what the client still sends for a moment, so unread request bytes do
/// not make the kernel reset the connection before the client has read our answer.
fn linger(tcp: &TcpStream) {
    let end = Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    let mut scratch = [0u8; 4096];
    while let Some(wait) = remaining(end) {
        if tcp.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        match (&mut &*tcp).read(&mut scratch) {
            Ok(n) if n > 0 && dropped + n <= LINGER_BYTES => dropped += n,
            _ => return,
        }
    }
}

fn route(shared: &AdminShared, method: &str, path: &str) -> Response {
    let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
    if known && method != "GET" && method != "HEAD" {
        return Response::text(405, "method not allowed").header("Allow", "GET, HEAD");
    }
    let resp = match path {
        "/healthz" => Response::text(200, "ok"),
        "/readyz" if shared.ready.load(Ordering::SeqCst) => Response::text(200, "ready"),
        "/readyz" => Response::text(503, "not ready"),
        "/metrics" => Response::new(200).body(
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => Response::text(404, "not found"),
    };
    resp.header("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_health_ready_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.connection_refused();
        let ready = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = AdminServer::start(listener, Arc::clone(&metrics), Arc::clone(&ready)).unwrap();
        let addr = admin.local_addr();

        let r = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok"),
            "{r}"
        );
        assert!(r.contains("Connection: close\r\n"));
        let r = get(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        ready.store(true, Ordering::SeqCst);
        let r = get(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Request-Id: probe-1\r\n\r\n",
        );
        assert!(
            r.starts_with("HTTP/1.1 200 ") && r.contains("X-Request-Id: probe-1\r\n"),
            "{r}"
        );
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{r}"
        );
        assert!(r.contains("\nnp_connections_refused_total 1\n"), "{r}");
        let r = get(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.ends_with("\r\n\r\n") && !r.contains("np_connections"),
            "{r}"
        );
        let r = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"),
            "{r}"
        );
        let r = get(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = get(
            addr,
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
        let r = get(
            addr,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
                "a".repeat(9000)
            ),
        );
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        admin.shutdown();
        assert!(TcpStream::connect(addr).is_err());
    }
}
