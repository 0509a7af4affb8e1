//! Certificates, trust and revocation for our mutual TLS (spec §11–12):
//!
//! - [`TlsMaterial::load`] reads and checks our chain, key, trust bundle and CRLs;
//! - [`server_config`] / [`client_config`] turn it into rustls configurations
//!   with the NCSC "Goed" [`provider`], TLS 1.3 only by default, client
//!   certificates required, and CRLs enforced fail-closed;
//! - [`peer_identity`] reads URA (UZI SAN otherName 2.5.5.5), Subject
//!   serialNumber, DNS names and SHA-256 from a verified peer certificate,
//!   and a [`CertSelector`] maps that to a configured partner, checking a
//!   pinned issuing CA with an [`IssuerCheck`];
//! - [`classify_tls_error`] gives a bounded label for handshake failures;
//! - [`throwaway`] generates a test PKI for `np-agent demo` and the tests.
//!
//! Nothing here touches sockets; the `http` module does the I/O.

mod classify;
mod config;
mod error;
mod identity;
mod issuer;
mod material;
pub mod throwaway;

pub use classify::{TLS_ERROR_LABELS, classify_io_error, classify_tls_error};
pub use config::{ALPN_HTTP_1_1, MinVersion, client_config, provider, server_config};
pub use error::{FileRole, PkiError};
pub use identity::{
    CertSelector, PeerIdentity, SERIAL_NUMBER_OID, UZI_OTHER_NAME_OID, UziName, certificate_sha256,
    peer_identity,
};
pub use issuer::{CaCerts, IssuerCheck};
pub use material::{TlsFiles, TlsMaterial, check_key_file_permissions};
