//! The mTLS listener of a real `np-agent run` process: who gets in, who is
//! refused at the handshake, what the metrics say about it, CRL reload on
//! SIGHUP, RSA-PSS (PKIoverheid G4 style) certificates, and a connection flood.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use common::tls::{client_config_without_certificate, tls12_only_client_config};
use np_agent::jose::Alg;
use np_agent::pki::throwaway::{LeafSpec, write_crl};
use np_agent::pki::{self, MinVersion, TlsMaterial};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Connects, handshakes and sends one GET; `Ok(status line)` or the error.
/// In TLS 1.3 a refused client certificate shows only on the first read.
fn get(port: u16, cfg: Arc<ClientConfig>, path: &str) -> Result<String, String> {
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn =
        ClientConnection::new(cfg, "localhost".try_into().unwrap()).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, sock);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf) {
        Ok(_) if !buf.is_empty() => Ok(String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()),
        Ok(_) => Err("closed without a response".into()),
        Err(e) if !buf.is_empty() => Ok(format!(
            "{} (then {e})",
            String::from_utf8_lossy(&buf).lines().next().unwrap_or("")
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn client(m: &TlsMaterial) -> Arc<ClientConfig> {
    pki::client_config(m, MinVersion::Tls13).unwrap()
}

fn admin_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn handshake_refusals_crl_reload_and_metrics() {
    let tmp = TempDir::new("daemon-tls");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
    let jwks = b.serve_jwks();
    // A certificate from a CA nobody trusts, and one of ours that will be revoked.
    let foreign_issued = world
        .foreign
        .issue(&LeafSpec::localhost("intruder"))
        .unwrap();
    let foreign = TlsMaterial::load(
        &np_agent::pki::throwaway::write_files(&tmp.join("foreign"), &foreign_issued, &[&world.ca])
            .unwrap(),
    )
    .unwrap();
    let doomed = Party::new(&world, tmp.path(), "doomed", "55555555", &[Alg::Es256]);
    let crl_dir = tmp.join("crl");
    let now = np_agent::util::time::now_unix();
    write_crl(
        &crl_dir,
        "ca.crl",
        &world.ca.crl(&[], now - 60, now + 86_400).unwrap(),
    )
    .unwrap();

    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.add_partner(&b, &jwks);
    setup
        .env
        .set("NP_TLS_CRL_DIR", crl_dir.display().to_string());
    let agent = setup.start();
    let port = setup.port;

    // A partner is served; so is any certificate of the trust bundle for discovery and JWKS.
    assert!(
        get(port, client(&b.material), "/.well-known/jwks.json")
            .unwrap()
            .contains("200")
    );
    assert!(
        get(
            port,
            client(&doomed.material),
            "/.well-known/smart-configuration"
        )
        .unwrap()
        .contains("200")
    );
    // A certificate that maps to no partner gets 403 on FHIR data endpoints.
    assert!(
        get(port, client(&doomed.material), "/fhir/Patient/1")
            .unwrap()
            .contains("403")
    );

    // Refused at the handshake: no certificate, a foreign CA, TLS 1.2 when 1.3 is required.
    assert!(
        get(
            port,
            client_config_without_certificate(&b.material),
            "/.well-known/jwks.json"
        )
        .is_err()
    );
    assert!(get(port, client(&foreign), "/.well-known/jwks.json").is_err());
    assert!(
        get(
            port,
            tls12_only_client_config(&b.material),
            "/.well-known/jwks.json"
        )
        .is_err()
    );

    // Revoke the doomed certificate and reload with SIGHUP: refused from then on.
    write_crl(
        &crl_dir,
        "ca.crl",
        &world
            .ca
            .crl(&[&doomed.serial], now - 30, now + 86_400)
            .unwrap(),
    )
    .unwrap();
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(port, client(&doomed.material), "/.well-known/jwks.json").is_ok() {
        assert!(
            Instant::now() < deadline,
            "revoked certificate still accepted after SIGHUP:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("event=reload.done"));
    // The partner is still served after the reload.
    assert!(
        get(port, client(&b.material), "/.well-known/jwks.json")
            .unwrap()
            .contains("200")
    );

    // The admin listener reports health, readiness and the refusals by reason.
    assert!(admin_get(setup.admin_port, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(admin_get(setup.admin_port, "/readyz").starts_with("HTTP/1.1 200"));
    let metrics = admin_get(setup.admin_port, "/metrics");
    for reason in [
        "no_client_cert",
        "unknown_ca",
        "revoked",
        "protocol_version",
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("np_tls_handshake_failures_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no handshake failure metric for {reason}:\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
    assert!(
        metrics.contains("np_http_requests_total{endpoint=\"/.well-known/jwks\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("np_open_connections"), "{metrics}");

    // TLS 1.2 partners are accepted once configured.
    let status = agent.stop();
    assert!(status.success(), "{status}");
    setup.env.set("NP_TLS_MIN_VERSION", "1.2");
    let agent = setup.start();
    assert!(
        get(
            port,
            tls12_only_client_config(&b.material),
            "/.well-known/jwks.json"
        )
        .unwrap()
        .contains("200")
    );
    drop(agent);
}

#[test]
fn rsa_pss_certificates_work_as_server_and_client() {
    let tmp = TempDir::new("daemon-pss");
    let world = World::new();
    let pss = common::pki::rsa_pss();
    // Agent A serves with the RSA-PSS chain and trusts both CAs.
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    let a_tls = common::pki::agent_from_pem(
        &tmp.join("a-pss"),
        &pss.leaf_pem,
        &pss.key_pkcs8_pem,
        &format!("{}{}", pss.ca_pem, world.ca.cert_pem()),
    );
    setup
        .env
        .set("NP_TLS_CERT", a_tls.cert.display().to_string());
    setup.env.set("NP_TLS_KEY", a_tls.key.display().to_string());
    setup
        .env
        .set("NP_TLS_TRUST", a_tls.trust.display().to_string());
    // Partner P's client certificate is the same PSS leaf, identified by its SHA-256.
    let p = Party::new(&world, tmp.path(), "hospp", "77777777", &[Alg::Es256]);
    let jwks = p.serve_jwks();
    setup.add_partner(&p, &jwks);
    let fingerprint = {
        let m = common::pki::load(&a_tls);
        np_agent::util::b64::hex(
            ring::digest::digest(&ring::digest::SHA256, m.chain[0].as_ref()).as_ref(),
        )
    };
    setup
        .env
        .set("NP_PARTNER_HOSPP_CERT", format!("sha256:{fingerprint}"));
    let agent = setup.start();
    // A client with the PSS chain as its certificate, trusting the PSS CA.
    let m = common::pki::load(&a_tls);
    let status = get(setup.port, client(&m), "/fhir/Patient/1").unwrap();
    // Mapped to partner hospp: without a bearer token that is 401 (a
    // certificate of no partner would get 403).
    assert!(status.contains("401"), "{status}\n{}", agent.log());
}

#[test]
fn a_connection_flood_does_not_lock_out_a_legitimate_client() {
    let tmp = TempDir::new("daemon-flood");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
    let jwks = b.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.add_partner(&b, &jwks);
    setup
        .env
        .set("NP_MAX_CONNECTIONS", "8")
        .set("NP_IDLE_TIMEOUT", "2s")
        .set("NP_LOG", "info");
    let agent = setup.start();
    let port = setup.port;
    let cfg = client(&b.material);

    // Warm up, then note the memory.
    for _ in 0..5 {
        assert!(
            get(port, cfg.clone(), "/.well-known/jwks.json")
                .unwrap()
                .contains("200")
        );
    }
    let rss_before = agent.rss_kib();

    // Hold every slot with idle TLS connections that completed the handshake.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let conn = ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        tls.conn.complete_io(&mut tls.sock).unwrap();
        idle.push(tls);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Over the cap: closed at once, nothing queued.
    let started = Instant::now();
    let refused = get(port, cfg.clone(), "/.well-known/jwks.json");
    assert!(refused.is_err(), "served over the cap: {refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal was not immediate"
    );
    // A flood of further attempts is refused too, and memory stays bounded.
    for _ in 0..300 {
        let _ = TcpStream::connect(("127.0.0.1", port)).map(|mut s| {
            let _ = s.write_all(b"\x16\x03\x01");
        });
    }
    // Once the idle timeout frees the slots, a legitimate client is served
    // within (about) the idle timeout.
    let started = Instant::now();
    loop {
        if let Ok(line) = get(port, cfg.clone(), "/.well-known/jwks.json") {
            assert!(line.contains("200"), "{line}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "not served within the idle timeout:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_after = agent.rss_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB under the flood"
    );
    let metrics = admin_get(setup.admin_port, "/metrics");
    let refused_total: f64 = metrics
        .lines()
        .find(|l| l.starts_with("np_connections_refused_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused_total >= 1.0, "{metrics}");
    drop(idle);
}
