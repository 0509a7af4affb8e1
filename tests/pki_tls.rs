//! Real TLS over 127.0.0.1 with the server and client configurations of
//! `np_agent::pki`: who is let in, who is refused, and how each failure is
//! labelled on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, ProtocolVersion};

use common::TempDir;
use common::pki::{agent, agent_from_pem, current_crl, expired_crl, load, rsa_pss, with_crls};
use common::tls::{
    client_config_without_certificate, exchange, exchange_with_name, tls12_only_client_config,
};
use np_agent::pki::throwaway::{Ca, LeafSpec, UziOtherName};
use np_agent::pki::{
    ALPN_HTTP_1_1, CertSelector, IssuerCheck, MinVersion, certificate_sha256, client_config,
    peer_identity, provider, server_config,
};
use np_agent::util::b64;
use np_agent::util::time::now_unix;

const URA_A: &str = "90000123";
const URA_B: &str = "90000456";

/// Hospital A (the server side in most tests) and hospital B (the client),
/// both issued by `ca` and trusting it, plus a `foreign` CA nobody trusts.
struct World {
    dir: TempDir,
    ca: Ca,
    foreign: Ca,
}

impl World {
    fn new(label: &str) -> Self {
        World {
            dir: TempDir::new(label),
            ca: Ca::new("test ca").unwrap(),
            foreign: Ca::new("foreign ca").unwrap(),
        }
    }

    fn spec(ura: &str) -> LeafSpec {
        LeafSpec {
            uzi: Some(UziOtherName::server(ura, "12345678")),
            ..LeafSpec::localhost(&format!("hospital {ura}"))
        }
    }
}

#[test]
fn valid_client_certificate_is_accepted_and_identified() {
    let w = World::new("valid");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, b_leaf) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();

    let (s, c) = exchange(server, client).expect_ok();
    assert_eq!(s.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        s.suite,
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
        "our preference order wins"
    );
    assert_eq!(s.alpn.as_deref(), Some(ALPN_HTTP_1_1));
    assert_eq!(c.alpn.as_deref(), Some(ALPN_HTTP_1_1));

    // The server can map the client certificate to partner B.
    let peer = s.peer.expect("client certificate");
    assert_eq!(peer, b_leaf.der);
    let id = peer_identity(&peer).unwrap();
    assert_eq!(id.ura.as_deref(), Some(URA_B));
    let trust = load(&a).trust_certs;
    let chain = [peer.clone()];
    let issuer = IssuerCheck::new(&chain, &trust);
    let selects = |s: String| s.parse::<CertSelector>().unwrap().matches(&id, &issuer);
    assert!(selects(format!("ura:{URA_B}")));
    assert!(!selects(format!("ura:{URA_A}")));
    // Pinned to the CA that issued it (found in the trust bundle), and not
    // to another one.
    let ca = b64::hex(&certificate_sha256(w.ca.cert_der()));
    let foreign = b64::hex(&certificate_sha256(w.foreign.cert_der()));
    assert!(selects(format!("ura:{URA_B}@sha256:{ca}")));
    assert!(!selects(format!("ura:{URA_B}@sha256:{foreign}")));
}

#[test]
fn client_without_certificate_is_refused() {
    let w = World::new("nocert");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config_without_certificate(&load(&b));
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("no_client_cert", "no_client_cert"), "{x:?}");
}

#[test]
fn client_certificate_from_a_foreign_ca_is_refused() {
    let w = World::new("foreign-client");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.foreign, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("unknown_ca", "peer_unknown_ca"), "{x:?}");
}

#[test]
fn expired_client_certificate_is_refused() {
    let w = World::new("expired");
    let now = now_unix();
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let old = LeafSpec {
        not_before: now - 10 * 86_400,
        not_after: now - 86_400,
        ..World::spec(URA_B)
    };
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &old, &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("expired", "peer_expired"), "{x:?}");
}

#[test]
fn revoked_client_certificate_is_refused() {
    let w = World::new("revoked-client");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, b_leaf) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();

    // Control: a current CRL that does not list B lets B in.
    let crl_dir = w.dir.join("a-crl-clean");
    let clean = with_crls(a.clone(), &crl_dir, &[("ca.crl", current_crl(&w.ca, &[]))]);
    let server = server_config(&load(&clean), MinVersion::Tls13).unwrap();
    exchange(server, client.clone()).expect_ok();

    let crl_dir = w.dir.join("a-crl");
    let a = with_crls(a, &crl_dir, &[("ca.crl", current_crl(&w.ca, &[&b_leaf]))]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("revoked", "peer_revoked"), "{x:?}");
}

#[test]
fn crl_past_next_update_fails_closed() {
    let w = World::new("stale-crl");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let a = with_crls(a, &w.dir.join("a-crl"), &[("ca.crl", expired_crl(&w.ca))]);
    let material = load(&a);
    assert!(material.crl_next_update.unwrap() < now_unix());
    let server = server_config(&material, MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    let (server_label, client_label) = x.labels();
    assert_eq!(server_label, "crl_expired", "{x:?}");
    assert!(client_label.starts_with("peer_"), "{x:?}");
}

#[test]
fn issuer_without_a_crl_fails_closed_once_crls_are_configured() {
    // Two trusted CAs, a CRL for only one of them: a client from the other
    // cannot be checked for revocation and is refused.
    let w = World::new("no-crl-for-issuer");
    let second = Ca::new("second trusted ca").unwrap();
    let (a, _) = agent(
        &w.dir.join("a"),
        &w.ca,
        &World::spec(URA_A),
        &[&w.ca, &second],
    );
    let (b, _) = agent(&w.dir.join("b"), &second, &World::spec(URA_B), &[&w.ca]);
    let a = with_crls(
        a,
        &w.dir.join("a-crl"),
        &[("ca.crl", current_crl(&w.ca, &[]))],
    );
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels().0, "revocation_unknown", "{x:?}");
}

#[test]
fn intermediate_chains_need_crls_for_every_level() {
    let w = World::new("intermediate");
    let issuing = w.ca.intermediate("issuing ca").unwrap();
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, b_leaf) = agent(&w.dir.join("b"), &issuing, &World::spec(URA_B), &[&w.ca]);
    assert_eq!(load(&b).chain.len(), 2);
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();

    // Root CRL (covers the intermediate) and issuing CRL (covers the leaf): accepted.
    let both = with_crls(
        a.clone(),
        &w.dir.join("crl-both"),
        &[
            ("root.crl", current_crl(&w.ca, &[])),
            ("issuing.crl", current_crl(&issuing, &[])),
        ],
    );
    let server = server_config(&load(&both), MinVersion::Tls13).unwrap();
    let (s, _) = exchange(server, client.clone()).expect_ok();
    assert_eq!(s.peer.unwrap(), b_leaf.der);

    // Only the issuing CA's CRL: the intermediate's status is unknown.
    let issuing_only = with_crls(
        a.clone(),
        &w.dir.join("crl-issuing"),
        &[("issuing.crl", current_crl(&issuing, &[]))],
    );
    let server = server_config(&load(&issuing_only), MinVersion::Tls13).unwrap();
    let x = exchange(server, client.clone());
    assert_eq!(x.labels().0, "revocation_unknown", "{x:?}");

    // The leaf revoked by the issuing CA.
    let revoked = with_crls(
        a,
        &w.dir.join("crl-revoked"),
        &[
            ("root.crl", current_crl(&w.ca, &[])),
            ("issuing.crl", current_crl(&issuing, &[&b_leaf])),
        ],
    );
    let server = server_config(&load(&revoked), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("revoked", "peer_revoked"), "{x:?}");
}

#[test]
fn tls12_client_is_refused_when_tls13_is_required() {
    let w = World::new("tls12-refused");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = tls12_only_client_config(&load(&b));
    let x = exchange(server, client);
    assert_eq!(
        x.labels(),
        ("protocol_version", "peer_protocol_version"),
        "{x:?}"
    );
}

#[test]
fn tls12_client_is_accepted_when_allowed() {
    let w = World::new("tls12-allowed");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls12).unwrap();
    let client = tls12_only_client_config(&load(&b));
    let (s, c) = exchange(server, client).expect_ok();
    assert_eq!(s.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(
        s.suite,
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    );
    assert!(
        s.peer.is_some(),
        "client certificate required under TLS 1.2 too"
    );

    // A 1.2-allowing server still prefers 1.3 with our own client.
    let server = server_config(&load(&a), MinVersion::Tls12).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls12).unwrap();
    let (s, _) = exchange(server, client).expect_ok();
    assert_eq!(s.version, Some(ProtocolVersion::TLSv1_3));
}

#[test]
fn tls12_server_is_refused_by_our_tls13_client() {
    let w = World::new("tls12-server");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    // A TLS 1.2-only server from the same material stands in for an old partner.
    let m = load(&a);
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider())
        .build()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(Arc::new(server), client);
    // The old server sees a ClientHello offering only TLS 1.3 and says so.
    assert_eq!(
        x.labels(),
        ("protocol_version", "peer_protocol_version"),
        "{x:?}"
    );
}

#[test]
fn client_offering_only_another_application_protocol_is_refused() {
    let w = World::new("alpn");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let mut client = (*client_config(&load(&b), MinVersion::Tls13).unwrap()).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let x = exchange(server, Arc::new(client));
    assert_eq!(x.labels(), ("alpn", "peer_alpn"), "{x:?}");
}

#[test]
fn client_refuses_a_server_from_a_foreign_ca() {
    let w = World::new("foreign-server");
    let (a, _) = agent(&w.dir.join("a"), &w.foreign, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("peer_unknown_ca", "unknown_ca"), "{x:?}");
}

#[test]
fn client_refuses_a_revoked_server() {
    let w = World::new("revoked-server");
    let (a, a_leaf) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let b = with_crls(
        b,
        &w.dir.join("b-crl"),
        &[("ca.crl", current_crl(&w.ca, &[&a_leaf]))],
    );
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels(), ("peer_revoked", "revoked"), "{x:?}");
}

#[test]
fn client_refuses_a_server_with_a_stale_crl() {
    let w = World::new("client-stale-crl");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let b = with_crls(b, &w.dir.join("b-crl"), &[("ca.crl", expired_crl(&w.ca))]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange(server, client);
    assert_eq!(x.labels().1, "crl_expired", "{x:?}");
}

#[test]
fn client_checks_the_server_name() {
    let w = World::new("name");
    let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[&w.ca]);
    let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[&w.ca]);
    let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
    let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
    let x = exchange_with_name(server, client, "np.other.example");
    assert_eq!(x.labels().1, "name_mismatch", "{x:?}");
}

/// PKIoverheid G4 style: RSA keys, certificates signed with RSASSA-PSS.
mod rsa_pss {
    use super::*;

    fn rsa_agent(dir: &std::path::Path, trust_pem: &str, pkcs1: bool) -> np_agent::pki::TlsFiles {
        let pki = rsa_pss();
        let key = if pkcs1 {
            &pki.key_pkcs1_pem
        } else {
            &pki.key_pkcs8_pem
        };
        agent_from_pem(dir, &pki.leaf_pem, key, trust_pem)
    }

    #[test]
    fn rsa_pss_chain_as_server_certificate() {
        let w = World::new("pss-server");
        let a = rsa_agent(&w.dir.join("a"), &w.ca.cert_pem(), false);
        let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[]);
        std::fs::write(&b.trust, &rsa_pss().ca_pem).unwrap();
        let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
        let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
        let (s, c) = exchange(server, client).expect_ok();
        assert_eq!(s.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(
            c.peer.unwrap(),
            load(&a).chain[0],
            "the RSA leaf was served"
        );
    }

    #[test]
    fn rsa_pss_chain_as_client_certificate_with_a_pkcs1_key() {
        let w = World::new("pss-client");
        let (a, _) = agent(&w.dir.join("a"), &w.ca, &World::spec(URA_A), &[]);
        std::fs::write(&a.trust, &rsa_pss().ca_pem).unwrap();
        let b = rsa_agent(&w.dir.join("b"), &w.ca.cert_pem(), true);
        let server = server_config(&load(&a), MinVersion::Tls13).unwrap();
        let client = client_config(&load(&b), MinVersion::Tls13).unwrap();
        let (s, _) = exchange(server, client).expect_ok();
        let peer = s.peer.unwrap();
        assert_eq!(peer, load(&b).chain[0], "the RSA leaf was presented");
        let id = peer_identity(&peer).unwrap();
        assert_eq!(id.dns_names, vec!["localhost".to_string()]);
    }

    #[test]
    fn a_ca_pin_holds_for_an_rsa_pss_signed_certificate() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let w = World::new("pss-pin");
        let b = rsa_agent(&w.dir.join("b"), &w.ca.cert_pem(), false);
        let leaf = load(&b).chain[0].clone();
        let ca = CertificateDer::from_pem_slice(rsa_pss().ca_pem.as_bytes()).unwrap();
        let trusted = np_agent::pki::CaCerts::new(vec![ca.clone(), w.ca.cert_der().clone()]);
        let chain = [leaf];
        let check = IssuerCheck::new(&chain, &trusted);
        assert!(check.issued_by(&certificate_sha256(&ca)));
        assert!(!check.issued_by(&certificate_sha256(w.ca.cert_der())));
    }

    #[test]
    fn rsa_server_under_tls12_uses_ecdhe_rsa() {
        let w = World::new("pss-tls12");
        let a = rsa_agent(&w.dir.join("a"), &w.ca.cert_pem(), false);
        let (b, _) = agent(&w.dir.join("b"), &w.ca, &World::spec(URA_B), &[]);
        std::fs::write(&b.trust, &rsa_pss().ca_pem).unwrap();
        let server = server_config(&load(&a), MinVersion::Tls12).unwrap();
        let client = tls12_only_client_config(&load(&b));
        let (s, _) = exchange(server, client).expect_ok();
        assert_eq!(s.version, Some(ProtocolVersion::TLSv1_2));
        assert_eq!(
            s.suite,
            Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
        );
    }

    #[test]
    fn rsa_key_from_another_certificate_is_refused() {
        let w = World::new("pss-mismatch");
        let pki = rsa_pss();
        // The CA's certificate with the leaf's key.
        let files = agent_from_pem(
            &w.dir.join("a"),
            &pki.ca_pem,
            &pki.key_pkcs8_pem,
            &pki.ca_pem,
        );
        let err = np_agent::pki::TlsMaterial::load(&files).unwrap_err();
        assert!(
            matches!(err, np_agent::pki::PkiError::KeyMismatch { .. }),
            "{err}"
        );
    }
}
