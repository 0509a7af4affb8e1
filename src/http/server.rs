//! The partner listener: accept loop, bounded worker pool, TLS I/O and the request loop.
//!
//! Threads: one acceptor, one reporter (the rate-limited summary of refused connections),
//! plus at most `max_connections` workers. A worker serves one connection from accept to
//! close, then waits (up to [`WORKER_IDLE_TTL`]) for the next one before it exits.
//!
//! The acceptor asks [`Admission`] about each new connection (see `admission` for the
//! rules): it is refused (closed at once: nothing queues for a slot), or admitted, possibly
//! after closing unfinished handshakes that it displaces (their sockets are shut down; their
//! workers see the handshake fail and end). A worker tells [`Admission`] when its handshake
//! completes; a displaced connection learns there that it has to close.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use super::admission::{Admission, Closed, Decision, RefusalTally, Source};
use super::parse::{ParsedRequest, Reject, RequestReader, Step};
use super::wire::{self, Framing};
use super::{Handler, Limits, Peer, Request, Response};
use crate::ops::logging::Rid;
use crate::ops::metrics::Metrics;
use crate::util::time;

/// How long an idle worker thread waits for a new connection before it exits.
const WORKER_IDLE_TTL: Duration = Duration::from_secs(30);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest lingering close: reading and dropping what the peer still sends after our last
/// response, so the kernel does not answer unread data with a reset that destroys it.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes dropped during a lingering close.
const LINGER_BYTES: usize = 256 * 1024;
/// Longest wait to deliver a close_notify.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// After the grace period, how long `shutdown` waits for forcibly closed connections.
const FORCE_WAIT: Duration = Duration::from_secs(2);

/// Maps a rustls error to a short, fixed reason label for metrics and logs.
pub type TlsErrorClassifier = fn(&rustls::Error) -> &'static str;

/// The current TLS server configuration. Reloads (SIGHUP, CRL refresh) [`set`](Self::set) a
/// new one; each new connection takes the configuration current at its accept, and
/// connections already open keep theirs.
pub struct TlsSlot(RwLock<Arc<ServerConfig>>);

impl TlsSlot {
    /// A slot holding `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsSlot(RwLock::new(config))
    }

    /// The current configuration.
    pub fn get(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

impl fmt::Debug for TlsSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsSlot")
    }
}

/// The partner-facing mTLS HTTP/1.1 server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    reporter: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Starts serving `listener` with the default TLS error classifier
    /// ([`classify_tls_error`]).
    pub fn start(
        listener: TcpListener,
        tls: Arc<TlsSlot>,
        handler: Arc<dyn Handler>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> io::Result<Server> {
        Self::start_with_classifier(listener, tls, handler, limits, metrics, classify_tls_error)
    }

    /// Starts serving `listener`; handshake failures are labelled by `classify`.
    pub fn start_with_classifier(
        listener: TcpListener,
        tls: Arc<TlsSlot>,
        handler: Arc<dyn Handler>,
        limits: Limits,
        metrics: Arc<Metrics>,
        classify: TlsErrorClassifier,
    ) -> io::Result<Server> {
        limits
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        listener.set_nonblocking(false)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            tls,
            handler,
            metrics,
            classify,
            stopping: AtomicBool::new(false),
            pool: Mutex::new(PoolState {
                open: 0,
                threads: 0,
                idle: 0,
                queue: VecDeque::new(),
                stopping: false,
                admission: Admission::new(limits.admission()),
            }),
            work: Condvar::new(),
            drained: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            tally: Mutex::new(RefusalTally::new(limits.refusal_log_interval)),
            report: Condvar::new(),
            limits,
        });
        let reporter_shared = Arc::clone(&shared);
        let reporter = thread::Builder::new()
            .name("np-http-report".into())
            .spawn(move || report_loop(&reporter_shared))?;
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("np-http-accept".into())
            .spawn(move || accept_loop(&acceptor_shared, &listener));
        let acceptor = match acceptor {
            Ok(acceptor) => acceptor,
            Err(e) => {
                shared.stop_reporter(reporter);
                return Err(e);
            }
        };
        log::info!("event=http.listening addr={addr}");
        Ok(Server {
            addr,
            shared,
            acceptor: Some(acceptor),
            reporter: Some(reporter),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections currently open (being served).
    pub fn open_connections(&self) -> usize {
        self.shared.lock_pool().open
    }

    /// Stops accepting, closes idle keep-alive connections, lets requests in flight finish
    /// for up to `grace` (their responses carry `Connection: close`), then closes the rest.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.stop_accepting();
        self.shared.close_connections(false);
        self.shared.wait_drained(deadline);
        self.shared.close_connections(true);
        self.shared.wait_drained(Instant::now() + FORCE_WAIT);
        log::info!("event=http.stopped addr={}", self.addr);
    }

    fn stop_accepting(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.lock_pool().stopping = true;
        self.shared.work.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            if wake_acceptor(self.addr) {
                let _ = acceptor.join();
            } else {
                log::warn!(
                    "event=http.stop_incomplete addr={} reason=\"accept loop could not be woken\"",
                    self.addr
                );
            }
        }
        if let Some(reporter) = self.reporter.take() {
            self.shared.stop_reporter(reporter);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop_accepting();
            self.shared.close_connections(true);
        }
    }
}

/// The default classifier of TLS handshake errors: a fixed set of labels, a subset of
/// the vocabulary of `pki::classify_tls_error` (which the daemon passes instead). Besides
/// these, the server itself reports `timeout`, `eof` and `io`.
pub fn classify_tls_error(e: &rustls::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e {
        Error::NoCertificatesPresented => "no_client_cert",
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::UnknownRevocationStatus => "revocation_unknown",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "crl_expired",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_purpose"
            }
            _ => "bad_cert",
        },
        Error::InvalidCertRevocationList(_) => "crl_invalid",
        Error::AlertReceived(_) => "peer_alert",
        Error::PeerIncompatible(_) => "protocol_version",
        Error::NoApplicationProtocol => "alpn",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_)
        | Error::PeerSentOversizedRecord
        | Error::DecryptError => "protocol_error",
        _ => "other",
    }
}

/// Connects to our own listener so a blocking `accept` returns and sees the stop flag.
pub(crate) fn wake_acceptor(addr: SocketAddr) -> bool {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), Duration::from_secs(1)).is_ok()
}

/// Time left until `deadline`, or `None` when it has passed.
pub(crate) fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

struct Shared {
    tls: Arc<TlsSlot>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    metrics: Arc<Metrics>,
    classify: TlsErrorClassifier,
    stopping: AtomicBool,
    pool: Mutex<PoolState>,
    /// Signals queued work to idle workers.
    work: Condvar,
    /// Signals that a connection finished.
    drained: Condvar,
    /// Open connections (queued ones included), so shutdown and eviction can close them.
    conns: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_conn: AtomicU64,
    /// Connections closed by the admission rules, for the reporter.
    tally: Mutex<RefusalTally>,
    /// Signals the reporter: something was counted, or the server stops.
    report: Condvar,
}

struct PoolState {
    /// Connections queued or being served; above `max_connections` only for the moment
    /// that displaced connections take to end.
    open: usize,
    /// Worker threads alive; never above `max_connections`.
    threads: usize,
    /// Workers waiting for work.
    idle: usize,
    queue: VecDeque<Job>,
    stopping: bool,
    /// Which connection holds which slot.
    admission: Admission,
}

struct Job {
    id: u64,
    tracked: Arc<Tracked>,
    addr: SocketAddr,
    accepted: Instant,
}

/// An open connection as shutdown sees it.
struct Tracked {
    tcp: TcpStream,
    /// False while waiting for the next request on a keep-alive connection.
    busy: AtomicBool,
}

impl Shared {
    fn lock_pool(&self) -> MutexGuard<'_, PoolState> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_tally(&self) -> MutexGuard<'_, RefusalTally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts connections closed by the admission rules and wakes the reporter.
    fn closed_by_admission(&self, closed: &[Source], how: Closed) {
        if closed.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut tally = self.lock_tally();
        for source in closed {
            self.metrics.connection_refused();
            tally.record(*source, how, now);
        }
        drop(tally);
        self.report.notify_one();
    }

    /// Makes the reporter write what is left and end (`stopping` must be set).
    fn stop_reporter(&self, reporter: JoinHandle<()>) {
        drop(self.lock_tally());
        self.report.notify_all();
        let _ = reporter.join();
    }

    /// Shuts down the sockets of idle connections (all of them with `all`): blocked reads
    /// return end-of-stream and the workers close.
    fn close_connections(&self, all: bool) {
        for tracked in self.lock_conns().values() {
            if all {
                let _ = tracked.tcp.shutdown(Shutdown::Both);
            } else if !tracked.busy.load(Ordering::SeqCst) {
                let _ = tracked.tcp.shutdown(Shutdown::Read);
            }
        }
    }

    fn wait_drained(&self, deadline: Instant) {
        let mut pool = self.lock_pool();
        while pool.open > 0 {
            let Some(wait) = remaining(deadline) else {
                break;
            };
            pool = self
                .drained
                .wait_timeout(pool, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((tcp, addr)) => dispatch(shared, tcp, addr),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    log::warn!(
                        "event=http.accept_failed error={}",
                        wire::log_value(&e.to_string())
                    );
                    last_warning = Some(Instant::now());
                }
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Admits a connection and hands it to a worker (closing the handshakes it displaces), or
/// closes it at once.
fn dispatch(shared: &Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    let max = shared.limits.max_connections;
    let accepted = Instant::now();
    let source = Source::of(addr);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut pool = shared.lock_pool();
    if pool.stopping {
        return;
    }
    let evict = match pool.admission.admit(id, source, accepted) {
        Decision::Admit { evict } => evict,
        Decision::Refuse => {
            drop(pool);
            drop(tcp);
            shared.closed_by_admission(&[source], Closed::Refused);
            return;
        }
    };
    let tracked = Arc::new(Tracked {
        tcp,
        busy: AtomicBool::new(true),
    });
    // Registered before a worker can see the job, so it can be displaced from the queue.
    let displaced: Vec<Arc<Tracked>> = {
        let mut conns = shared.lock_conns();
        conns.insert(id, Arc::clone(&tracked));
        evict
            .iter()
            .filter_map(|(victim, _)| conns.get(victim).cloned())
            .collect()
    };
    pool.open += 1;
    shared.metrics.connection_accepted();
    shared.metrics.connection_opened();
    pool.queue.push_back(Job {
        id,
        tracked,
        addr,
        accepted,
    });
    // Enough waiting workers for the queue: wake one. Otherwise add a thread while under
    // the cap; at the cap a worker is between connections and takes the job (jobs queued
    // plus running never exceed `max` = threads, but for displaced ones ending).
    let spawn = pool.queue.len() > pool.idle && pool.threads < max;
    if spawn {
        pool.threads += 1;
    }
    drop(pool);
    shared.work.notify_one();
    for victim in &displaced {
        let _ = victim.tcp.shutdown(Shutdown::Both);
    }
    let sources: Vec<Source> = evict.iter().map(|(_, source)| *source).collect();
    shared.closed_by_admission(&sources, Closed::Evicted);
    if spawn {
        let worker_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("np-http".into())
            .spawn(move || worker(&worker_shared));
        if let Err(e) = spawned {
            let mut pool = shared.lock_pool();
            pool.threads -= 1;
            // With no thread at all nobody would serve the queue: close what waits.
            let orphans: Vec<Job> = if pool.threads == 0 {
                pool.queue.drain(..).collect()
            } else {
                Vec::new()
            };
            pool.open -= orphans.len();
            for orphan in &orphans {
                pool.admission.release(orphan.id);
            }
            drop(pool);
            let mut conns = shared.lock_conns();
            for orphan in &orphans {
                conns.remove(&orphan.id);
            }
            drop(conns);
            for _ in &orphans {
                shared.metrics.connection_closed();
                shared.metrics.connection_refused();
            }
            log::warn!(
                "event=http.spawn_failed error={}",
                wire::log_value(&e.to_string())
            );
        }
    }
}

/// Writes the summary of connections closed by the admission rules: the first at once,
/// then at most one per `refusal_log_interval`; what is left when the server stops.
fn report_loop(shared: &Shared) {
    let mut tally = shared.lock_tally();
    loop {
        let stopping = shared.stopping.load(Ordering::SeqCst);
        if let Some(summary) = tally.take(Instant::now(), stopping) {
            drop(tally);
            log::warn!("event=http.connection_refused {}", summary.fields());
            tally = shared.lock_tally();
            continue;
        }
        if stopping {
            return;
        }
        tally = match tally.due() {
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                shared
                    .report
                    .wait_timeout(tally, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .report
                .wait(tally)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// A worker thread: serves connections until it has been idle for [`WORKER_IDLE_TTL`].
fn worker(shared: &Arc<Shared>) {
    let mut thread_guard = ThreadGuard {
        shared,
        counted: true,
    };
    loop {
        match next_job(shared) {
            Some(job) => {
                let _slot = SlotGuard { shared, id: job.id };
                serve(shared, job);
            }
            None => {
                // `next_job` already took this thread off the count, under the same lock
                // as the decision to exit, so `dispatch` never relies on a leaving thread.
                thread_guard.counted = false;
                return;
            }
        }
    }
}

fn next_job(shared: &Shared) -> Option<Job> {
    let mut pool = shared.lock_pool();
    loop {
        if let Some(job) = pool.queue.pop_front() {
            return Some(job);
        }
        if pool.stopping {
            pool.threads -= 1;
            return None;
        }
        pool.idle += 1;
        let (guard, wait) = shared
            .work
            .wait_timeout(pool, WORKER_IDLE_TTL)
            .unwrap_or_else(PoisonError::into_inner);
        pool = guard;
        pool.idle -= 1;
        if wait.timed_out() && pool.queue.is_empty() {
            pool.threads -= 1;
            return None;
        }
    }
}

/// Releases a connection slot however serving ends, a panic included.
struct SlotGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut pool = self.shared.lock_pool();
        pool.open -= 1;
        pool.admission.release(self.id);
        drop(pool);
        self.shared.metrics.connection_closed();
        self.shared.drained.notify_all();
    }
}

/// Takes a dying worker off the thread count (the panic path; a normal exit is counted
/// in `next_job`).
struct ThreadGuard<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl Drop for ThreadGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.lock_pool().threads -= 1;
        }
    }
}

/// Removes a connection from the shutdown table when it ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.lock_conns().remove(&self.id);
    }
}

/// Serves one connection from handshake to close.
fn serve(shared: &Shared, job: Job) {
    let Job {
        id,
        tracked,
        addr,
        accepted,
    } = job;
    let _registration = Registration { shared, id };
    let _ = tracked.tcp.set_nodelay(true);
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }

    let deadline = accepted + shared.limits.handshake_timeout;
    let mut conn = match Conn::handshake(&tracked.tcp, shared.tls.get(), deadline) {
        Ok(conn) => conn,
        Err(e) => {
            // A displaced handshake (no longer booked) was counted when it was closed.
            if shared.lock_pool().admission.release(id) {
                let reason = match &e {
                    IoFail::Timeout => "timeout",
                    IoFail::Eof => "eof",
                    IoFail::Io(_) => "io",
                    IoFail::Tls(t) => (shared.classify)(t),
                };
                shared.metrics.tls_handshake_failure(reason);
                log::debug!("event=tls.handshake_failed peer={addr} reason={reason}");
            }
            return;
        }
    };
    let certificate = conn.tls.peer_certificates().is_some_and(|c| !c.is_empty());
    if !shared
        .lock_pool()
        .admission
        .established(id, certificate, Instant::now())
    {
        // Displaced while its handshake finished: it was counted when it was closed.
        return;
    }
    let peer = Peer::new(
        addr,
        Arc::new(
            conn.tls
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        ),
        match conn.tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        },
    );
    let close = serve_requests(shared, &tracked, &mut conn, &peer, accepted);
    conn.close(close, shared.limits.read_timeout.min(LINGER_TIME));
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Send close_notify and close (idle timeout, peer closed, shutdown).
    Quiet,
    /// After a response that announced `Connection: close`: also drain what the peer
    /// still sends for a moment (lingering close).
    Linger,
    /// The transport failed: just close.
    Abort,
}

/// Why reading a request stopped short of a complete request.
enum ReadFail {
    Reject(Reject),
    Io(IoFail),
}

fn serve_requests(
    shared: &Shared,
    tracked: &Tracked,
    conn: &mut Conn<'_>,
    peer: &Peer,
    accepted: Instant,
) -> Close {
    let limits = &shared.limits;
    let age_deadline = accepted + limits.max_connection_age;
    let mut served: u32 = 0;
    loop {
        tracked.busy.store(false, Ordering::SeqCst);
        if shared.stopping.load(Ordering::SeqCst) {
            return Close::Quiet;
        }
        let now = Instant::now();
        if now >= age_deadline {
            return Close::Quiet;
        }
        if conn.rbuf.is_empty() {
            let idle_deadline = (now + limits.idle_timeout).min(age_deadline);
            match conn.read_more(idle_deadline, limits.idle_timeout) {
                Ok(()) => {}
                Err(IoFail::Timeout | IoFail::Eof) => return Close::Quiet,
                Err(e) => {
                    log_conn_error(peer, &e);
                    return Close::Abort;
                }
            }
        }
        tracked.busy.store(true, Ordering::SeqCst);

        let started = Instant::now();
        let mut reader = RequestReader::new(limits.reader());
        let handler = &*shared.handler;
        let answer = match read_request(limits, conn, &mut reader, started) {
            Ok(parsed) => {
                served += 1;
                let mut answer = answer_request(handler, parsed, peer);
                answer.close = answer.close
                    || served >= limits.max_requests_per_connection
                    || Instant::now() >= age_deadline
                    || shared.stopping.load(Ordering::SeqCst);
                answer
            }
            Err(ReadFail::Reject(r)) => answer_reject(handler, &reader, r, peer),
            Err(ReadFail::Io(IoFail::Eof)) => return Close::Quiet,
            Err(ReadFail::Io(e)) => {
                log_conn_error(peer, &e);
                return Close::Abort;
            }
        };
        match send_answer(shared, conn, answer, peer, started) {
            Ok(false) => {}
            Ok(true) => return Close::Linger,
            Err(()) => return Close::Abort,
        }
    }
}

/// A response on its way out, with what the access log and metrics need.
struct Answer {
    resp: Response,
    close: bool,
    request_id: String,
    path: Option<String>,
    head_only: bool,
    endpoint: &'static str,
    method: &'static str,
    /// Why the server answered instead of the handler.
    reason: Option<&'static str>,
}

/// Runs the handler on a complete request.
fn answer_request(handler: &dyn Handler, parsed: ParsedRequest, peer: &Peer) -> Answer {
    let ParsedRequest { head, body } = parsed;
    let req = Request {
        request_id: wire::request_id(&head.headers),
        method: head.method,
        target: head.target,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body,
        peer: peer.clone(),
    };
    let resp = handler.handle(&req);
    Answer {
        close: head.close || wire::wants_close(&resp),
        resp,
        endpoint: handler.endpoint_label(&req.path),
        head_only: req.method == "HEAD",
        method: wire::method_label(&req.method),
        request_id: req.request_id,
        path: Some(req.path),
        reason: None,
    }
}

/// The server's own answer to a request it refused (always closing). A body over the limit
/// (413) whose head was read is first offered to [`Handler::refuse_by_head`].
fn answer_reject(handler: &dyn Handler, reader: &RequestReader, r: Reject, peer: &Peer) -> Answer {
    let path = reader.path_hint();
    let head = reader.head();
    let request_id = head.map_or_else(wire::new_request_id, |h| wire::request_id(&h.headers));
    let by_head = match head {
        Some(h) if r.status == 413 => handler.refuse_by_head(&Request {
            method: h.method.clone(),
            target: h.target.clone(),
            path: h.path.clone(),
            query: h.query.clone(),
            headers: h.headers.clone(),
            body: Vec::new(),
            request_id: request_id.clone(),
            peer: peer.clone(),
        }),
        _ => None,
    };
    Answer {
        resp: by_head.unwrap_or_else(|| handler.error_response(path, r.status, r.reason)),
        close: true,
        request_id,
        path: path.map(str::to_string),
        head_only: head.is_some_and(|h| h.method == "HEAD"),
        endpoint: path.map_or("none", |p| handler.endpoint_label(p)),
        method: head.map_or("-", |h| wire::method_label(&h.method)),
        reason: Some(r.reason),
    }
}

/// Serializes and writes an answer, counts it and logs it. `Ok(true)` when the connection
/// closes now; `Err` when the write failed.
fn send_answer(
    shared: &Shared,
    conn: &mut Conn<'_>,
    answer: Answer,
    peer: &Peer,
    started: Instant,
) -> Result<bool, ()> {
    let rid = &answer.request_id;
    let framing = Framing {
        request_id: rid,
        close: answer.close,
        head_only: answer.head_only,
        now: time::now_unix(),
    };
    let (out, close) = match wire::serialize(&answer.resp, framing) {
        Ok(out) => (out, answer.close),
        Err(why) => {
            log::warn!(
                "event=http.invalid_response rid={} endpoint={} reason={}",
                Rid(rid),
                wire::log_value(answer.endpoint),
                wire::log_value(why)
            );
            let fallback =
                shared
                    .handler
                    .error_response(answer.path.as_deref(), 500, "invalid response");
            let closing = Framing {
                close: true,
                ..framing
            };
            let out = wire::serialize(&fallback, closing)
                .unwrap_or_else(|_| wire::fallback_500(rid, framing.now));
            (out, true)
        }
    };
    let status = status_of(&out.bytes);
    let written = conn.write_all(&out.bytes, Instant::now() + shared.limits.write_timeout);
    shared.metrics.http_request(answer.endpoint, status);
    let reason = answer
        .reason
        .map(|r| format!(" reason={}", wire::log_value(r)));
    log::info!(
        "event=http.request rid={} method={} endpoint={} status={status} ms={} bytes={} peer={}{}",
        Rid(rid),
        answer.method,
        wire::log_value(answer.endpoint),
        started.elapsed().as_millis(),
        out.body_len,
        peer.addr,
        reason.as_deref().unwrap_or("")
    );
    match written {
        Ok(()) => Ok(close),
        Err(e) => {
            log_conn_error(peer, &e);
            Err(())
        }
    }
}

/// Reads one request under the header and body deadlines, answering `100 Continue` when
/// the reader asks for it.
fn read_request(
    limits: &Limits,
    conn: &mut Conn<'_>,
    reader: &mut RequestReader,
    started: Instant,
) -> Result<ParsedRequest, ReadFail> {
    let head_deadline = started + limits.header_timeout;
    let mut body_deadline: Option<Instant> = None;
    loop {
        let (used, step) = reader.advance(&conn.rbuf);
        conn.rbuf.drain(..used);
        match step {
            Step::Complete(parsed) => return Ok(parsed),
            Step::Reject(r) => return Err(ReadFail::Reject(r)),
            Step::SendContinue => conn
                .write_all(wire::CONTINUE, Instant::now() + limits.write_timeout)
                .map_err(ReadFail::Io)?,
            Step::NeedMore => {
                let deadline = if reader.in_head() {
                    head_deadline
                } else {
                    *body_deadline.get_or_insert_with(|| Instant::now() + limits.body_timeout)
                };
                match conn.read_more(deadline, limits.read_timeout) {
                    Ok(()) => {}
                    Err(IoFail::Timeout) => {
                        return Err(ReadFail::Reject(Reject {
                            status: 408,
                            reason: "request not received in time",
                        }));
                    }
                    Err(e) => return Err(ReadFail::Io(e)),
                }
            }
        }
    }
}

/// The status code of a serialized response (`HTTP/1.1 NNN …`).
fn status_of(bytes: &[u8]) -> u16 {
    bytes
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

fn log_conn_error(peer: &Peer, e: &IoFail) {
    let reason = match e {
        IoFail::Timeout => "write_timeout",
        IoFail::Eof => "eof",
        IoFail::Io(_) => "io",
        IoFail::Tls(_) => "tls",
    };
    match e {
        IoFail::Io(err) => log::debug!(
            "event=http.connection_failed peer={} reason={reason} error={}",
            peer.addr,
            wire::log_value(&err.to_string())
        ),
        IoFail::Tls(err) => log::debug!(
            "event=http.connection_failed peer={} reason={reason} error={}",
            peer.addr,
            wire::log_value(&err.to_string())
        ),
        _ => log::debug!(
            "event=http.connection_failed peer={} reason={reason}",
            peer.addr
        ),
    }
}

/// What went wrong on the transport.
#[derive(Debug)]
enum IoFail {
    /// A deadline passed.
    Timeout,
    /// The peer closed (TCP end-of-stream or TLS close_notify).
    Eof,
    /// A socket error.
    Io(io::Error),
    /// A TLS protocol error.
    Tls(rustls::Error),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One TLS connection over a borrowed socket, with deadline-bounded blocking I/O.
struct Conn<'a> {
    tcp: &'a TcpStream,
    tls: ServerConnection,
    /// Plaintext received and not yet consumed by the request reader.
    rbuf: Vec<u8>,
}

impl<'a> Conn<'a> {
    /// Runs the TLS handshake; every byte of it must arrive before `deadline`.
    fn handshake(
        tcp: &'a TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<Self, IoFail> {
        let tls = ServerConnection::new(config).map_err(IoFail::Tls)?;
        let mut conn = Conn {
            tcp,
            tls,
            rbuf: Vec::new(),
        };
        while conn.tls.is_handshaking() {
            if conn.tls.wants_write() {
                conn.flush(deadline)?;
                continue;
            }
            let wait = remaining(deadline).ok_or(IoFail::Timeout)?;
            if conn.receive(wait)? {
                return Err(IoFail::Eof);
            }
        }
        conn.flush(deadline)?;
        Ok(conn)
    }

    /// Reads TLS records once (waiting at most `wait`) and processes them. Returns true at
    /// TCP end-of-stream.
    fn receive(&mut self, wait: Duration) -> Result<bool, IoFail> {
        self.tcp
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(IoFail::Io)?;
        let mut source = self.tcp;
        let n = loop {
            match self.tls.read_tls(&mut source) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(IoFail::Timeout),
                Err(e) => return Err(IoFail::Io(e)),
            }
        };
        if let Err(e) = self.tls.process_new_packets() {
            // Tell the peer why (the alert rustls queued), without waiting long.
            let _ = self.flush(Instant::now() + CLOSE_FLUSH);
            return Err(IoFail::Tls(e));
        }
        Ok(n == 0)
    }

    /// Appends at least one byte of plaintext to `rbuf`, waiting at most `per_read` for any
    /// single read and never past `deadline`.
    fn read_more(&mut self, deadline: Instant, per_read: Duration) -> Result<(), IoFail> {
        let mut eof = false;
        loop {
            let mut got = false;
            let mut chunk = [0u8; 8192];
            loop {
                match self.tls.reader().read(&mut chunk) {
                    Ok(0) if got => return Ok(()),
                    Ok(0) => return Err(IoFail::Eof),
                    Ok(n) => {
                        self.rbuf.extend_from_slice(&chunk[..n]);
                        got = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return if got { Ok(()) } else { Err(IoFail::Eof) };
                    }
                    Err(e) => return Err(IoFail::Io(e)),
                }
            }
            if got {
                return Ok(());
            }
            if eof {
                return Err(IoFail::Eof);
            }
            if self.tls.wants_write() {
                self.flush(deadline)?;
            }
            let wait = remaining(deadline).ok_or(IoFail::Timeout)?;
            eof = self.receive(wait.min(per_read))?;
        }
    }

    /// Writes `data` through TLS and flushes it, all before `deadline`.
    fn write_all(&mut self, data: &[u8], deadline: Instant) -> Result<(), IoFail> {
        let mut off = 0;
        while off < data.len() {
            let n = io::Write::write(&mut self.tls.writer(), &data[off..]).map_err(IoFail::Io)?;
            if n == 0 && !self.tls.wants_write() {
                return Err(IoFail::Io(io::ErrorKind::WriteZero.into()));
            }
            off += n;
            self.flush(deadline)?;
        }
        self.flush(deadline)
    }

    /// Sends all pending TLS records before `deadline`.
    fn flush(&mut self, deadline: Instant) -> Result<(), IoFail> {
        while self.tls.wants_write() {
            let wait = remaining(deadline).ok_or(IoFail::Timeout)?;
            self.tcp
                .set_write_timeout(Some(wait.max(Duration::from_millis(1))))
                .map_err(IoFail::Io)?;
            let mut sink = self.tcp;
            match self.tls.write_tls(&mut sink) {
                Ok(0) => return Err(IoFail::Io(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(IoFail::Timeout),
                Err(e) => return Err(IoFail::Io(e)),
            }
        }
        Ok(())
    }

    /// Closes the connection the way `how` says.
    fn close(mut self, how: Close, linger: Duration) {
        if how != Close::Abort {
            self.tls.send_close_notify();
            let _ = self.flush(Instant::now() + CLOSE_FLUSH);
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
        if how == Close::Linger {
            let end = Instant::now() + linger;
            let mut dropped = 0;
            let mut scratch = [0u8; 4096];
            while let Some(wait) = remaining(end) {
                if self.tcp.set_read_timeout(Some(wait)).is_err() {
                    break;
                }
                match (&mut &*self.tcp).read(&mut scratch) {
                    Ok(n) if n > 0 && dropped + n <= LINGER_BYTES => dropped += n,
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_serialized_responses() {
        assert_eq!(status_of(b"HTTP/1.1 413 Content Too Large\r\n"), 413);
        assert_eq!(status_of(b"HTTP/1.1"), 0);
    }

    #[test]
    fn remaining_time() {
        assert!(remaining(Instant::now() + Duration::from_secs(5)).is_some());
        assert!(remaining(Instant::now()).is_none());
    }

    #[test]
    fn classifies_common_handshake_errors() {
        use rustls::{CertificateError, Error};
        assert_eq!(
            classify_tls_error(&Error::NoCertificatesPresented),
            "no_client_cert"
        );
        assert_eq!(
            classify_tls_error(&Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "unknown_ca"
        );
        assert_eq!(
            classify_tls_error(&Error::InvalidCertificate(CertificateError::Revoked)),
            "revoked"
        );
        assert_eq!(classify_tls_error(&Error::General("x".into())), "other");
    }
}
