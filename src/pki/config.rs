//! rustls configurations for both sides of our mTLS connections, with the
//! version, cipher suite and revocation policy of spec §12 in one place.

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite as suite, default_provider, kx_group};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use super::{PkiError, TlsMaterial};

/// The only application protocol we speak.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The lowest TLS version we accept (`NP_TLS_MIN_VERSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (AORTA-style partners); TLS 1.2 with ECDHE and AEAD suites only.
    Tls12,
    /// TLS 1.3 only: the Twiin rule (TW-LA-TA-001) and our default.
    #[default]
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&TLS13];
        static TLS13_AND_12: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];
        match self {
            MinVersion::Tls12 => TLS13_AND_12,
            MinVersion::Tls13 => TLS13_ONLY,
        }
    }
}

impl FromStr for MinVersion {
    type Err = String;

    /// Parses `1.2` or `1.3`, the values of `NP_TLS_MIN_VERSION`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            other => Err(format!("expected 1.2 or 1.3, got {other:?}")),
        }
    }
}

/// The ring [`CryptoProvider`] restricted to NCSC "Goed" (TLS guidelines v2.1):
///
/// - TLS 1.3: `TLS_AES_256_GCM_SHA384`, `TLS_CHACHA20_POLY1305_SHA256`,
///   `TLS_AES_128_GCM_SHA256`, in that order of preference;
/// - TLS 1.2 (only when enabled): ECDHE-ECDSA and ECDHE-RSA with AES-GCM or
///   CHACHA20-POLY1305; no CBC, no RSA key exchange, no DHE;
/// - key exchange: x25519, secp256r1, secp384r1.
///
/// Signature verification keeps ring's set, which includes RSA-PSS
/// certificate signatures (PKIoverheid G4) and excludes SHA-1.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

/// Server side of our mTLS listener:
///
/// - a client certificate is required and verified against `m.roots`;
/// - with CRLs loaded, every certificate of the client's chain below the
///   trust anchor must be covered by a CRL (unknown status is refused), a
///   revoked certificate is refused, and a CRL past its `nextUpdate` makes
///   every handshake fail until fresh CRLs are loaded (fail closed);
/// - TLS 1.3 only unless `min` is [`MinVersion::Tls12`]; our suite order wins;
/// - ALPN `http/1.1` (a client offering only other protocols is refused;
///   one offering none is accepted);
/// - no session resumption (no tickets, no session cache), so every
///   connection's certificate is checked against the CRLs of that moment;
///   no 0-RTT.
pub fn server_config(m: &TlsMaterial, min: MinVersion) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider.clone())
        .with_crls(m.crls.iter().cloned())
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| config_error("client certificate verifier", e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(min.versions())
        .map_err(|e| config_error("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| config_error("server certificate", e))?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.ignore_client_order = true;
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Client side of our connections to partners: our chain and key as client
/// certificate; the server verified against `m.roots` with the same CRL
/// policy as [`server_config`]; the same versions and suites; ALPN
/// `http/1.1`; no resumption, no early data. The caller supplies the server
/// name per connection, and it is checked against the server certificate.
pub fn client_config(m: &TlsMaterial, min: MinVersion) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider.clone())
        .with_crls(m.crls.iter().cloned())
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| config_error("server certificate verifier", e))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(min.versions())
        .map_err(|e| config_error("protocol versions", e))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| config_error("client certificate", e))?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

fn config_error(what: &str, e: impl std::fmt::Display) -> PkiError {
    PkiError::Config {
        reason: format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, NamedGroup};

    #[test]
    fn provider_offers_exactly_the_ncsc_good_set() {
        let p = provider();
        let suites: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            vec![
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
        );
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            vec![
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }

    #[test]
    fn min_version_parsing() {
        assert_eq!("1.2".parse::<MinVersion>().unwrap(), MinVersion::Tls12);
        assert_eq!("1.3".parse::<MinVersion>().unwrap(), MinVersion::Tls13);
        assert_eq!(MinVersion::default(), MinVersion::Tls13);
        assert!("1.1".parse::<MinVersion>().is_err());
        assert!("tls1.3".parse::<MinVersion>().is_err());
        assert_eq!(MinVersion::Tls13.versions().len(), 1);
    }
}
