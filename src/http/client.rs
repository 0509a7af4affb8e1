//! The mTLS client for partner calls: ureq 3 over our own rustls `ClientConfig`.
//!
//! ureq's built-in rustls connector builds its own `ClientConfig` (its own roots, every TLS
//! version, no CRLs, no client certificate from our key store), so [`MtlsConnector`] plugs
//! the caller's `Arc<ClientConfig>` (trust bundle, CRLs, minimum version, our client
//! certificate) into ureq's transport chain instead: TCP from ureq's [`TcpConnector`], TLS
//! from us.
//!
//! [`agent`] builds an `Agent` with every timeout set explicitly, no redirects, no proxy,
//! HTTPS only and `http_status_as_error(false)` so callers see every status. An `Agent` keeps
//! a pool of idle connections: keep one per partner to reuse connections. Response bodies
//! must be read with a limit: [`read_body_limited`].

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};

/// Every timeout of a partner call. All are set explicitly on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Name resolution.
    pub resolve: Duration,
    /// TCP connect and TLS handshake together.
    pub connect: Duration,
    /// Sending the request head.
    pub send_request: Duration,
    /// Waiting for `100 Continue` before sending a body anyway.
    pub await_100: Duration,
    /// Sending the request body.
    pub send_body: Duration,
    /// Receiving the response head.
    pub recv_response: Duration,
    /// Receiving the response body.
    pub recv_body: Duration,
    /// Any single socket read or write.
    pub per_io: Duration,
    /// The whole call, end to end.
    pub global: Duration,
    /// How long an idle pooled connection is kept for reuse.
    pub idle_connection: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            resolve: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            send_request: Duration::from_secs(10),
            await_100: Duration::from_secs(1),
            send_body: Duration::from_secs(30),
            recv_response: Duration::from_secs(30),
            recv_body: Duration::from_secs(60),
            per_io: Duration::from_secs(30),
            global: Duration::from_secs(120),
            idle_connection: Duration::from_secs(15),
        }
    }
}

/// Idle connections kept per agent, and per host.
const MAX_IDLE_CONNECTIONS: usize = 8;
const MAX_IDLE_PER_HOST: usize = 4;
/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A ureq agent that speaks HTTPS only, through `tls`, under timeouts `t`.
pub fn agent(tls: Arc<ClientConfig>, t: ClientTimeouts) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .https_only(true)
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .proxy(None)
        .user_agent("np-agent")
        .max_response_header_size(MAX_RESPONSE_HEAD)
        .max_idle_connections(MAX_IDLE_CONNECTIONS)
        .max_idle_connections_per_host(MAX_IDLE_PER_HOST)
        .max_idle_age(t.idle_connection)
        .timeout_global(Some(t.global))
        .timeout_per_call(Some(t.global))
        .timeout_resolve(Some(t.resolve))
        .timeout_connect(Some(t.connect))
        .timeout_send_request(Some(t.send_request))
        .timeout_await_100(Some(t.await_100))
        .timeout_send_body(Some(t.send_body))
        .timeout_recv_response(Some(t.recv_response))
        .timeout_recv_body(Some(t.recv_body))
        .timeout_per_read(Some(t.per_io))
        .timeout_per_write(Some(t.per_io))
        .build();
    let connector = TcpConnector::default().chain(MtlsConnector::new(tls));
    ureq::Agent::with_parts(config, connector, DefaultResolver::default())
}

/// Why a response body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// The body is (or says it is) larger than the caller's limit.
    TooLarge {
        /// The limit in bytes.
        max: u64,
    },
    /// The transport failed or timed out while reading.
    Read(ureq::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { max } => write!(f, "response body larger than {max} bytes"),
            BodyError::Read(e) => write!(f, "reading response body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::TooLarge { .. } => None,
            BodyError::Read(e) => Some(e),
        }
    }
}

/// Reads the whole response body, refusing more than `max` bytes. A `Content-Length` above
/// `max` is refused before reading anything.
pub fn read_body_limited(
    resp: &mut ureq::http::Response<ureq::Body>,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    let declared = resp
        .headers()
        .get(ureq::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge { max });
    }
    resp.body_mut()
        .with_config()
        .limit(max)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => BodyError::TooLarge { max },
            e => BodyError::Read(e),
        })
}

/// A ureq connector that wraps the chained TCP transport in TLS with the caller's
/// `ClientConfig`. Plain `http://` is refused.
pub struct MtlsConnector {
    config: Arc<ClientConfig>,
}

impl MtlsConnector {
    /// A connector using `config` for every connection.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        MtlsConnector { config }
    }
}

impl fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MtlsConnector")
    }
}

impl<In: Transport> Connector<In> for MtlsConnector {
    type Out = Either<In, MtlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Err(ureq::Error::Tls("no TCP connection to wrap in TLS"));
        };
        if transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        if !details.needs_tls() {
            return Err(ureq::Error::Tls(
                "plain http is not allowed for partner calls",
            ));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("no host in URL"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(host)
            .map_err(|_| ureq::Error::Tls("host is not a valid DNS name or IP address"))?
            .to_owned();
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(MtlsTransport {
            buffers,
            stream: StreamOwned::new(conn, sock),
        })))
    }
}

/// A TLS transport over a chained ureq transport.
pub struct MtlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for MtlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsTransport")
            .field("inner", &self.stream.sock.get_ref())
            .finish()
    }
}

impl Transport for MtlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.sock.set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        self.stream.flush()?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.sock.set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let n = self.stream.read(input)?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.sock.get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}
