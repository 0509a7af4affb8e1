//! The one error type of the `pki` layer.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Which of our TLS files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The PEM certificate chain (`NP_TLS_CERT`).
    Chain,
    /// The PEM private key (`NP_TLS_KEY`).
    Key,
    /// The PEM bundle of trusted CA certificates (`NP_TLS_TRUST`).
    Trust,
    /// The CRL directory (`NP_TLS_CRL_DIR`).
    CrlDir,
    /// One CRL file inside the CRL directory.
    Crl,
    /// A file the throwaway PKI generator writes.
    Output,
}

impl FileRole {
    fn label(self) -> &'static str {
        match self {
            FileRole::Chain => "certificate chain",
            FileRole::Key => "private key",
            FileRole::Trust => "trust bundle",
            FileRole::CrlDir => "crl directory",
            FileRole::Crl => "crl",
            FileRole::Output => "output file",
        }
    }
}

/// A failure to load, check or build TLS material, to read a peer certificate,
/// or to parse a certificate selector.
///
/// Messages are lower-case, name the file (or the selector) and the reason,
/// and never contain key material: errors about the private key carry no
/// detail taken from the key file's content.
#[derive(Debug)]
#[non_exhaustive]
pub enum PkiError {
    /// A file or directory could not be opened, inspected or read.
    Read {
        role: FileRole,
        path: PathBuf,
        source: io::Error,
    },
    /// The private key file can be read or written by group or others.
    KeyPermissions { path: PathBuf, mode: u32 },
    /// A file's content is unusable: bad PEM, nothing of the expected kind,
    /// too large, or an item that does not parse.
    Content {
        role: FileRole,
        path: PathBuf,
        reason: String,
    },
    /// The private key does not belong to the first certificate of the chain.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused to build a configuration from loaded material.
    Config { reason: String },
    /// A peer's end-entity certificate could not be decoded.
    PeerCertificate { reason: String },
    /// A certificate selector (`NP_PARTNER_<NAME>_CERT`) is malformed.
    Selector { input: String, reason: String },
    /// The throwaway PKI generator failed.
    Throwaway { step: String, reason: String },
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::Read { role, path, source } => {
                write!(
                    f,
                    "{} {}: cannot read: {source}",
                    role.label(),
                    path.display()
                )
            }
            PkiError::KeyPermissions { path, mode } => write!(
                f,
                "private key {p}: group or others have access (mode {mode:04o}); \
                 the key must be private to the service user: chmod 600 {p}",
                p = path.display()
            ),
            PkiError::Content { role, path, reason } => {
                write!(f, "{} {}: {reason}", role.label(), path.display())
            }
            PkiError::KeyMismatch { cert, key } => write!(
                f,
                "private key {}: does not belong to the first certificate in {} \
                 (their public keys differ)",
                key.display(),
                cert.display()
            ),
            PkiError::Config { reason } => write!(f, "tls configuration: {reason}"),
            PkiError::PeerCertificate { reason } => write!(f, "peer certificate: {reason}"),
            PkiError::Selector { input, reason } => {
                write!(f, "certificate selector {input:?}: {reason}")
            }
            PkiError::Throwaway { step, reason } => write!(f, "throwaway pki: {step}: {reason}"),
        }
    }
}

impl PkiError {
    /// The configuration key this error is about, for one-line config errors.
    pub fn config_key(&self) -> &'static str {
        let role = match self {
            PkiError::Read { role, .. } | PkiError::Content { role, .. } => *role,
            PkiError::KeyPermissions { .. } | PkiError::KeyMismatch { .. } => FileRole::Key,
            PkiError::Selector { .. } => return "NP_PARTNER_<NAME>_CERT",
            _ => FileRole::Chain,
        };
        match role {
            FileRole::Key => "NP_TLS_KEY",
            FileRole::Trust => "NP_TLS_TRUST",
            FileRole::CrlDir | FileRole::Crl => "NP_TLS_CRL_DIR",
            FileRole::Chain | FileRole::Output => "NP_TLS_CERT",
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PkiError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
