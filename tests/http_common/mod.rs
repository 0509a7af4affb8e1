//! Shared pieces of the HTTP integration tests: a throwaway PKI made with rcgen, TLS
//! configurations, a raw TLS client that sends exact bytes, and a small handler.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use np_agent::http::{Handler, Limits, Request, Response, Server, TlsSlot};
use np_agent::ops::metrics::Metrics;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

/// A test CA that issues leaf certificates.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain (leaf only) and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` and 127.0.0.1, usable as server and as client certificate.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(roots)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config presenting `leaf` and requiring client certificates from `client_ca`.
pub fn server_config(leaf: &Leaf, client_ca: &Ca) -> Arc<ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(client_ca.roots(), provider())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .unwrap();
    Arc::new(config)
}

/// A client config trusting `server_ca`, presenting `leaf` when given.
pub fn client_config(server_ca: &Ca, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(server_ca.roots());
    let config = match leaf {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One CA for everything, a server leaf and a client leaf.
pub struct World {
    pub ca: Ca,
    pub server_leaf: Leaf,
    pub client_leaf: Leaf,
}

impl World {
    pub fn new() -> World {
        let ca = Ca::new("np test CA");
        let server_leaf = ca.leaf("server");
        let client_leaf = ca.leaf("client");
        World {
            ca,
            server_leaf,
            client_leaf,
        }
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        server_config(&self.server_leaf, &self.ca)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca, Some(&self.client_leaf))
    }
}

/// Limits with short timeouts for tests.
pub fn test_limits() -> Limits {
    Limits {
        max_connections: 16,
        reserved_connections: 0,
        max_handshakes_per_source: 16,
        handshake_timeout: Duration::from_secs(5),
        refusal_log_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        max_header_bytes: 4096,
        max_headers: 32,
        max_target_bytes: 1024,
        max_body: 1024,
        max_requests_per_connection: 100,
        max_connection_age: Duration::from_secs(60),
    }
}

/// A running server with its metrics.
pub struct TestServer {
    pub server: Server,
    pub metrics: Arc<Metrics>,
    pub tls: Arc<TlsSlot>,
}

impl TestServer {
    pub fn start(config: Arc<ServerConfig>, limits: Limits) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics = Arc::new(Metrics::new());
        let tls = Arc::new(TlsSlot::new(config));
        let server = Server::start(
            listener,
            Arc::clone(&tls),
            Arc::new(TestHandler),
            limits,
            Arc::clone(&metrics),
        )
        .unwrap();
        TestServer {
            server,
            metrics,
            tls,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// How many `/sleep` requests have reached the handler (only one test uses it).
pub static SLEEPERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The application of the tests.
pub struct TestHandler;

impl Handler for TestHandler {
    fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/hello") => Response::text(200, "hello"),
            ("POST", "/echo") => {
                Response::new(200).body("application/octet-stream", req.body.clone())
            }
            ("GET", "/peer") => Response::text(
                200,
                &format!(
                    "{} certs={} query={}",
                    req.peer.tls_version,
                    req.peer.certs.len(),
                    req.query.as_deref().unwrap_or("-")
                ),
            ),
            ("GET", "/sleep") => {
                SLEEPERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(500));
                Response::text(200, "slept")
            }
            ("GET", "/close") => Response::text(200, "bye").header("Connection", "close"),
            ("GET", "/split") => Response::text(200, "x").header("X-Bad", "a\r\nInjected: 1"),
            ("GET", "/panic") => panic!("test handler asked to panic"),
            _ => Response::text(404, "not found"),
        }
    }

    fn endpoint_label(&self, path: &str) -> &'static str {
        match path {
            "/hello" => "/hello",
            "/echo" => "/echo",
            "/peer" => "/peer",
            "/oauth/token" => "/oauth/token",
            _ => "other",
        }
    }

    fn error_response(&self, path: Option<&str>, status: u16, reason: &str) -> Response {
        let shape = match path {
            Some("/oauth/token") => "oauth",
            Some(_) => "other",
            None => "none",
        };
        Response::text(status, &format!("error: {reason}")).header("X-Error-Shape", shape)
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TLS client that writes exact bytes and parses responses itself.
pub struct RawClient {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects and completes the handshake (client side).
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<RawClient> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.sock.set_read_timeout(Some(d)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads some bytes into the buffer; Ok(0) at end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Bytes received and not yet parsed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads one response (Content-Length framed, or bodiless for HEAD/204/304/100).
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) =
                parsed.parse(&self.buf).map_err(io::Error::other)?
            {
                let status = parsed.code.unwrap_or(0);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = if head_request || matches!(status, 100 | 204 | 304) {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0)
                };
                while self.buf.len() < n + len {
                    if self.fill()? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Ok(Resp {
                    status,
                    headers,
                    body,
                });
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends a request and reads its response.
    pub fn request(&mut self, bytes: &[u8]) -> io::Result<Resp> {
        self.send(bytes)?;
        self.read_response(bytes.starts_with(b"HEAD "))
    }

    /// True when the server closes the connection (close_notify, EOF or reset) within
    /// the read timeout, with no further data.
    pub fn closed_by_server(&mut self) -> bool {
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

/// `GET path` with Host and the given extra header lines.
pub fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

/// Polls `f` until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
