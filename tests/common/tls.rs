//! One real TLS exchange over 127.0.0.1 with the given configurations: a
//! server thread that echoes five bytes, a client that sends `ping\n` and
//! reads them back. Each side reports what it negotiated or how it failed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ProtocolVersion, ServerConfig, ServerConnection,
    StreamOwned,
};

use np_agent::pki::{ALPN_HTTP_1_1, TlsMaterial, classify_io_error, provider};

const TIMEOUT: Duration = Duration::from_secs(10);
const PING: &[u8; 5] = b"ping\n";

/// What one side saw of a successful connection.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Option<ProtocolVersion>,
    pub suite: Option<CipherSuite>,
    pub alpn: Option<Vec<u8>>,
    /// The peer's end-entity certificate.
    pub peer: Option<CertificateDer<'static>>,
}

/// Both sides of one exchange.
#[derive(Debug)]
pub struct Exchange {
    pub server: io::Result<Seen>,
    pub client: io::Result<Seen>,
}

impl Exchange {
    /// `(server label, client label)`: `"ok"` or the library's classification.
    pub fn labels(&self) -> (&'static str, &'static str) {
        (label(&self.server), label(&self.client))
    }

    /// Panics with both sides' errors unless both succeeded.
    pub fn expect_ok(self) -> (Seen, Seen) {
        match (self.server, self.client) {
            (Ok(s), Ok(c)) => (s, c),
            (s, c) => panic!("exchange failed: server {s:?}, client {c:?}"),
        }
    }
}

fn label(r: &io::Result<Seen>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => classify_io_error(e),
    }
}

/// Runs one exchange, the client connecting to `localhost`.
pub fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Exchange {
    exchange_with_name(server, client, "localhost")
}

/// Runs one exchange, the client expecting the server to be `server_name`.
pub fn exchange_with_name(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Exchange {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = thread::spawn(move || -> io::Result<Seen> {
        let (sock, _) = listener.accept()?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        let conn = ServerConnection::new(server).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        let result = (|| {
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf)?;
            tls.write_all(&buf)?;
            tls.flush()?;
            Ok(Seen {
                version: tls.conn.protocol_version(),
                suite: tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
                alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
                peer: tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first().cloned()),
            })
        })();
        match &result {
            Ok(_) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            Err(_) => linger(&mut tls.sock),
        }
        result
    });

    let client_result = (|| -> io::Result<Seen> {
        let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        let conn = ClientConnection::new(client, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        let result = (|| {
            tls.write_all(PING)?;
            tls.flush()?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf)?;
            assert_eq!(&buf, PING, "echo");
            Ok(Seen {
                version: tls.conn.protocol_version(),
                suite: tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
                alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
                peer: tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first().cloned()),
            })
        })();
        if result.is_err() {
            linger(&mut tls.sock);
        }
        result
    })();

    let server_result = server_thread.join().expect("server thread panicked");
    Exchange {
        server: server_result,
        client: client_result,
    }
}

/// After a failed handshake: stop sending and read until the peer closes, so
/// our alert is read before the socket closes (closing with unread data would
/// send a TCP reset that can overtake the alert).
fn linger(sock: &mut TcpStream) {
    let _ = sock.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
}

/// A client that offers only TLS 1.2 (our suites), with our certificate, to
/// test servers that require TLS 1.3 or allow 1.2.
pub fn tls12_only_client_config(m: &TlsMaterial) -> Arc<ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider())
        .build()
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Arc::new(config)
}

/// A client that presents no certificate at all.
pub fn client_config_without_certificate(m: &TlsMaterial) -> Arc<ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider())
        .build()
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Arc::new(config)
}
