//! Certificate rotation without a restart (README "Reload"): replace our TLS
//! certificate and key files, `kill -HUP`, and new connections see the new
//! certificate; a bad new key is refused with a log line and the old
//! certificate stays in service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, World};
use np_agent::pki::throwaway::{Issued, LeafSpec, UziOtherName};
use np_agent::pki::{self, MinVersion, TlsMaterial};
use rustls::pki_types::{CertificateDer, ServerName};

const A_URA: &str = "12345678";

/// The end-entity certificate the agent presents to a new connection.
fn served_certificate(port: u16, client: &Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Waits until the log holds `needle` `count` times.
fn wait_for_log(agent: &AgentProcess, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = agent.log();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `bytes` to `path` by rename, as an operator's deploy tool should.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    np_agent::util::durable::write_atomic(path, bytes).unwrap();
}

fn leaf(world: &World, name: &str) -> Issued {
    world
        .ca
        .issue(&LeafSpec {
            uzi: Some(UziOtherName::server(A_URA, "12345678")),
            ..LeafSpec::localhost(name)
        })
        .unwrap()
}

#[test]
fn sighup_rotates_our_certificate_and_refuses_a_bad_key() {
    let tmp = TempDir::new("rotation");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
    let agent = setup.start();
    let client_files = world.files(&tmp.join("client"), &world.uzi_leaf("client", "99999999"));
    let client = pki::client_config(
        &TlsMaterial::load(&client_files).unwrap(),
        MinVersion::Tls13,
    )
    .unwrap();
    let cert_path = setup.dir.join("tls").join("cert.pem");
    let key_path = setup.dir.join("tls").join("key.pem");
    assert!(
        cert_path.exists() && key_path.exists(),
        "{}",
        cert_path.display()
    );

    let first = served_certificate(setup.port, &client);

    // Rotation: new certificate and key, then SIGHUP.
    let second = leaf(&world, "hospa-rotated");
    replace(&cert_path, second.chain_pem.as_bytes());
    replace(&key_path, second.key_pem.as_bytes());
    agent.signal("HUP");
    wait_for_log(&agent, "event=reload.done", 1);
    let served = served_certificate(setup.port, &client);
    assert_ne!(served, first, "the old certificate is still served");
    assert_eq!(served, second.der, "the new certificate is not served");

    // A key that does not belong to the certificate: refused, old one stays.
    let third = leaf(&world, "hospa-mismatch");
    replace(&cert_path, third.chain_pem.as_bytes());
    replace(&key_path, second.key_pem.as_bytes());
    agent.signal("HUP");
    let log = wait_for_log(&agent, "event=reload.refused", 1);
    let refused = log
        .lines()
        .find(|l| l.contains("event=reload.refused"))
        .unwrap();
    assert!(
        refused.contains("level=error") && refused.contains("NP_TLS_KEY"),
        "{refused}"
    );
    assert_eq!(
        served_certificate(setup.port, &client),
        second.der,
        "a refused reload must keep the running certificate"
    );
    assert!(agent.stop().success());
}
