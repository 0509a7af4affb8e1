//! HTTP/1.1 over mutual TLS on std sockets: the partner-facing server, the admin listener
//! and the mTLS client.
//!
//! The server ([`Server`]) is a bounded worker pool over a `TcpListener`: one thread per open
//! connection, created on demand up to [`Limits::max_connections`] and reused when idle.
//! Which connection may hold a slot is decided by the pure `admission` module: each
//! unfinished TLS handshake has [`Limits::handshake_timeout`], one source address holds at
//! most [`Limits::max_handshakes_per_source`] of them, and handshakes from addresses that
//! have not recently completed one with a client certificate leave
//! [`Limits::reserved_connections`] to those that have. A connection that does not fit
//! displaces the oldest unfinished handshake of the busiest address, or is closed at once
//! when only established connections are in its way. Each connection then reads requests
//! with the sans-IO [`parse::RequestReader`], hands them to the application's [`Handler`]
//! and writes each response as one buffer.
//!
//! What the server guarantees the handler:
//! - the peer presented a certificate chain accepted by the `ServerConfig` in the
//!   [`TlsSlot`] (the config decides whether a client certificate is required);
//! - the request is framed unambiguously and within the [`Limits`]; the body is complete
//!   and de-chunked;
//! - every request has a request id ([`Request::request_id`]), echoed as `X-Request-Id`.
//!
//! A body over the limit is refused (413) before it is read; the handler may answer such a
//! request from its head instead ([`Handler::refuse_by_head`]) when its endpoint checks
//! some headers before the size.
//!
//! What the server does with the handler's [`Response`]: it adds `Date`, `X-Request-Id`,
//! `Content-Length` (except on 204 and 304) and `Connection: close` when closing, and drops
//! any `Content-Length`, `Transfer-Encoding`, `Connection`, `Keep-Alive`, `Upgrade`,
//! `Trailer`, `Date`, `Server` and `X-Request-Id` the handler set. A header name or value
//! that could split the response (CR, LF, other controls, non-ASCII) turns the response
//! into a 500 from [`Handler::error_response`].
//!
//! `HEAD`: the request reaches the handler with method `HEAD`; a handler answers it like
//! `GET` (or with 405). The server sends the status and headers, with `Content-Length` of
//! the body the handler returned, and never body bytes. Bodies of 204 and 304 responses are
//! never sent either.
//!
//! HTTP/1.0 requests are served and the connection is closed after the response
//! (no HTTP/1.0 keep-alive).
//!
//! Logging: one `info` line per request (`event=http.request`) with request id, method
//! (a fixed set, else `other`), endpoint label, status, milliseconds, body bytes and peer
//! address. Never the request-target, query, headers or body. Handshake and connection
//! failures are logged at `debug` with a reason label. Connections closed by the admission
//! rules are counted, not logged one by one: one `warn` summary
//! (`event=http.connection_refused`) at the first, then at most one per
//! [`Limits::refusal_log_interval`], with the counts and the most refused addresses.

pub mod admin;
mod admission;
pub mod client;
pub mod parse;
pub mod partners;
mod server;
mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::pki::PeerIdentity;

pub use self::server::{Server, TlsErrorClassifier, TlsSlot, classify_tls_error};

/// One request, complete and checked against the [`Limits`].
///
/// Its `Debug` output shows the method, path, header names, body length, request id and
/// peer address only: queries, header values and bodies may hold patient data or tokens.
#[derive(Clone)]
pub struct Request {
    /// The method token as sent (`GET`, `POST`, …; case-sensitive).
    pub method: String,
    /// The raw request-target (origin-form as sent, or absolute-form).
    pub target: String,
    /// The raw path: percent-encoded, without the query.
    pub path: String,
    /// The raw query without `?`: undecoded, may hold patient numbers, never log it.
    pub query: Option<String>,
    /// Header fields in arrival order; names in lower case, values as bytes with
    /// surrounding whitespace removed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The request id: the client's `X-Request-Id` when acceptable, else a random one.
    pub request_id: String,
    /// Who is asking.
    pub peer: Peer,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .field("request_id", &self.request_id)
            .field("peer", &self.peer.addr)
            .finish()
    }
}

impl Request {
    /// The first value of header `name` (case-insensitive) as text; `None` when absent or
    /// when it holds anything but visible ASCII, space and tab. Use
    /// [`header_count`](Self::header_count) to refuse repeated fields where that matters.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = self.header_bytes(name)?;
        if value
            .iter()
            .all(|b| *b == b'\t' || (0x20..=0x7e).contains(b))
        {
            std::str::from_utf8(value).ok()
        } else {
            None
        }
    }

    /// The first value of header `name` (case-insensitive) as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// How many field lines named `name` (case-insensitive) the request carried.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// The other end of a connection, as the TLS handshake established it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote socket address.
    pub addr: SocketAddr,
    /// The certificate chain the peer presented, end entity first (empty only when the
    /// `ServerConfig` does not ask for client certificates).
    pub certs: Arc<Vec<CertificateDer<'static>>>,
    /// The negotiated protocol: `TLSv1.3` or `TLSv1.2`.
    pub tls_version: &'static str,
    /// The end entity's identity, decoded once per connection: every
    /// request on a kept-alive connection asks for it.
    identity: Arc<OnceLock<Option<PeerIdentity>>>,
}

impl Peer {
    pub fn new(
        addr: SocketAddr,
        certs: Arc<Vec<CertificateDer<'static>>>,
        tls_version: &'static str,
    ) -> Peer {
        Peer {
            addr,
            certs,
            tls_version,
            identity: Arc::new(OnceLock::new()),
        }
    }

    /// The identity fields of the end-entity certificate; `None` without a
    /// certificate or when it does not decode.
    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.identity
            .get_or_init(|| {
                self.certs
                    .first()
                    .and_then(|leaf| crate::pki::peer_identity(leaf.as_ref()).ok())
            })
            .as_ref()
    }
}

/// A response from the handler. The server adds framing headers (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 200–599.
    pub status: u16,
    /// Header fields to send, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body and its `Content-Type` (replacing an earlier `Content-Type`).
    pub fn body(mut self, content_type: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        self.headers
            .push(("Content-Type".to_string(), content_type.to_string()));
        self.body = bytes.into();
        self
    }

    /// A `text/plain` response: for handlers and tests that need no structured errors.
    pub fn text(status: u16, text: &str) -> Self {
        Response::new(status).body("text/plain; charset=utf-8", text.as_bytes())
    }
}

/// The application behind the server. Called from many worker threads at once.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Must not panic on any input.
    fn handle(&self, req: &Request) -> Response;

    /// A bounded-cardinality label for metrics and the access log
    /// (e.g. `/oauth/token`, `/fhir/{type}`, `other`), from the raw path.
    fn endpoint_label(&self, path: &str) -> &'static str;

    /// The body for an error the server produces itself before (or instead of) the handler:
    /// 400 malformed, 408, 413, 414, 417, 431, 500 (invalid handler response), 501, 505.
    /// `path` is the raw request path when it could be read, so `/oauth/token` can answer
    /// OAuth JSON and FHIR paths an OperationOutcome. `reason` is a short fixed phrase
    /// without request data. The status returned should be `status`.
    fn error_response(&self, path: Option<&str>, status: u16, reason: &str) -> Response;

    /// A refusal decided from the head alone that takes precedence over the server's 413
    /// for a body over [`Limits::max_body`], for endpoints whose contract checks some
    /// headers before the size (the Mitz intake: `Accept` 406, then `Content-Type` 415).
    /// The request passed has the head and an empty body; no body byte has been read into
    /// it. `None` (the default) keeps the 413 from [`error_response`](Self::error_response).
    fn refuse_by_head(&self, _req: &Request) -> Option<Response> {
        None
    }
}

/// Resource limits of the partner listener. Every timeout is a hard deadline: a peer
/// cannot extend it by trickling bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, unfinished handshakes included (each holds one worker thread).
    pub max_connections: usize,
    /// Of `max_connections`, the slots unfinished handshakes may not take unless their
    /// address completed a handshake with a client certificate within the last day: room
    /// for established connections and known partners under a flood. Below
    /// `max_connections`.
    pub reserved_connections: usize,
    /// Unfinished handshakes one address (an IPv6 /64) may hold; its next connection
    /// closes its oldest.
    pub max_handshakes_per_source: usize,
    /// Deadline for the TLS handshake, from accept.
    pub handshake_timeout: Duration,
    /// At most one summary of the connections closed by the admission rules per interval.
    pub refusal_log_interval: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest wait for any single read while a request is arriving.
    pub read_timeout: Duration,
    /// Deadline for the whole head of a request, from its first byte (slowloris: 408).
    pub header_timeout: Duration,
    /// Deadline for the whole body, from the end of the head (408 when missed).
    pub body_timeout: Duration,
    /// Deadline for writing one whole response (slow readers are cut off).
    pub write_timeout: Duration,
    /// Largest request head (request line and fields): 431 above it.
    pub max_header_bytes: usize,
    /// Most header fields: 431 above it.
    pub max_headers: usize,
    /// Longest request-target: 414 above it.
    pub max_target_bytes: usize,
    /// Largest request body (`NP_MAX_BODY`): 413 above it.
    pub max_body: u64,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: u32,
    /// No new request starts on a connection older than this; it also bounds idle waits.
    /// 5 minutes by default: AORTA wants ephemeral keys renewed every 5 minutes
    /// through renegotiation, which TLS 1.3 does not have and rustls never does;
    /// a new connection is a new handshake with new ephemeral keys (spec mitz §2).
    pub max_connection_age: Duration,
}

impl Default for Limits {
    /// Production defaults: `NP_MAX_CONNECTIONS` 256 (a quarter reserved), 16 unfinished
    /// handshakes per address, 5 s per handshake and `NP_MAX_BODY` 16 MiB.
    fn default() -> Self {
        Limits {
            max_connections: 256,
            reserved_connections: 64,
            max_handshakes_per_source: 16,
            handshake_timeout: Duration::from_secs(5),
            refusal_log_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_target_bytes: 8 * 1024,
            max_body: 16 * 1024 * 1024,
            max_requests_per_connection: 1000,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// Checks that the limits can work together; names the first field that cannot.
    pub fn validate(&self) -> Result<(), String> {
        let zero = |d: Duration| d.is_zero();
        let problem = if self.max_connections == 0 {
            Some("max_connections must be at least 1")
        } else if self.reserved_connections >= self.max_connections {
            Some("reserved_connections must be below max_connections")
        } else if self.max_handshakes_per_source == 0 {
            Some("max_handshakes_per_source must be at least 1")
        } else if [
            self.handshake_timeout,
            self.refusal_log_interval,
            self.idle_timeout,
            self.read_timeout,
            self.header_timeout,
            self.body_timeout,
            self.write_timeout,
            self.max_connection_age,
        ]
        .into_iter()
        .any(zero)
        {
            Some("timeouts, intervals and max_connection_age must be above zero")
        } else if self.max_headers == 0 {
            Some("max_headers must be at least 1")
        } else if self.max_header_bytes < 64 {
            Some("max_header_bytes must be at least 64")
        } else if self.max_target_bytes == 0 || self.max_target_bytes > self.max_header_bytes {
            Some("max_target_bytes must be between 1 and max_header_bytes")
        } else if self.max_requests_per_connection == 0 {
            Some("max_requests_per_connection must be at least 1")
        } else {
            None
        };
        match problem {
            Some(p) => Err(format!("http limits: {p}")),
            None => Ok(()),
        }
    }

    pub(crate) fn admission(&self) -> admission::Rules {
        admission::Rules {
            max_connections: self.max_connections,
            reserved: self.reserved_connections,
            per_source: self.max_handshakes_per_source,
        }
    }

    pub(crate) fn reader(&self) -> parse::ReaderLimits {
        parse::ReaderLimits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_target_bytes: self.max_target_bytes,
            max_body: self.max_body,
        }
    }
}

#[cfg(test)]
impl Request {
    /// `GET /` from 127.0.0.1 without a client certificate, with these header
    /// fields: for unit tests of request handling only.
    pub(crate) fn insecure_test(headers: &[(&str, &[u8])]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            path: "/".into(),
            query: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            body: Vec::new(),
            request_id: "r".into(),
            peer: Peer::new(
                SocketAddr::from(([127, 0, 0, 1], 1)),
                Arc::new(Vec::new()),
                "TLSv1.3",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_access() {
        let r = Request::insecure_test(&[
            ("authorization", b"Bearer abc"),
            ("x-bin", b"caf\xe9"),
            ("x-ctl", b"a\x01"),
            ("x-dup", b"1"),
            ("x-dup", b"2"),
        ]);
        assert_eq!(r.header("Authorization"), Some("Bearer abc"));
        assert_eq!(r.header("x-bin"), None);
        assert_eq!(r.header_bytes("X-Bin"), Some(&b"caf\xe9"[..]));
        assert_eq!(r.header("x-ctl"), None);
        assert_eq!(r.header("absent"), None);
        assert_eq!((r.header("X-DUP"), r.header_count("x-dup")), (Some("1"), 2));
    }

    #[test]
    fn debug_output_redacts_query_values_and_body() {
        let mut r = Request::insecure_test(&[("authorization", b"Bearer secret-token")]);
        r.query = Some("patient=999999990".into());
        r.body = b"{\"bsn\":\"999999990\"}".to_vec();
        let text = format!("{r:?}");
        assert!(
            text.contains("authorization") && text.contains("<redacted>"),
            "{text}"
        );
        assert!(
            !text.contains("secret") && !text.contains("999999990"),
            "{text}"
        );
    }

    #[test]
    fn response_builder() {
        let r = Response::new(200)
            .header("Content-Type", "x")
            .header("Cache-Control", "no-store")
            .body("application/json", b"{}".to_vec());
        assert_eq!(
            r.headers,
            vec![
                ("Cache-Control".to_string(), "no-store".to_string()),
                ("Content-Type".to_string(), "application/json".to_string())
            ]
        );
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn limits_validation() {
        assert!(Limits::default().validate().is_ok());
        let bad = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert!(bad.validate().is_err_and(|e| e.contains("max_connections")));
        let bad = Limits {
            max_connections: 4,
            reserved_connections: 4,
            ..Limits::default()
        };
        assert!(
            bad.validate()
                .is_err_and(|e| e.contains("reserved_connections"))
        );
        let bad = Limits {
            max_handshakes_per_source: 0,
            ..Limits::default()
        };
        assert!(bad.validate().is_err());
        let bad = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(bad.validate().is_err());
    }
}
