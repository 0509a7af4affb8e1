//! Bounded labels for failed handshakes, for metrics and one-word log fields.
//!
//! Labels without a prefix describe what *we* decided about the peer
//! (`unknown_ca`: the peer's certificate is not from a CA we trust). Labels
//! starting with `peer_` describe an alert the peer sent us, i.e. what the
//! peer decided about *us* (`peer_unknown_ca`: the peer does not trust our
//! certificate). The two call for different operator action.

use std::io;

use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

/// Every label [`classify_tls_error`] and [`classify_io_error`] can return, so
/// metrics can register each series at zero.
pub const TLS_ERROR_LABELS: &[&str] = &[
    "no_client_cert",
    "unknown_ca",
    "revoked",
    "revocation_unknown",
    "crl_expired",
    "crl_invalid",
    "expired",
    "not_yet_valid",
    "wrong_purpose",
    "name_mismatch",
    "bad_cert",
    "protocol_version",
    "no_shared_cipher",
    "alpn",
    "protocol_error",
    "peer_unknown_ca",
    "peer_revoked",
    "peer_expired",
    "peer_bad_cert",
    "peer_protocol_version",
    "peer_handshake_failure",
    "peer_alpn",
    "peer_alert",
    "timeout",
    "eof",
    "io",
    "other",
];

/// A stable label from [`TLS_ERROR_LABELS`] for a handshake that failed with `e`.
pub fn classify_tls_error(e: &Error) -> &'static str {
    match e {
        Error::NoCertificatesPresented => "no_client_cert",
        Error::InvalidCertificate(c) => classify_certificate_error(c),
        Error::InvalidCertRevocationList(_) => "crl_invalid",
        Error::PeerIncompatible(p) => classify_incompatible(p),
        Error::NoApplicationProtocol => "alpn",
        Error::AlertReceived(a) => classify_alert(*a),
        Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::InvalidMessage(_)
        | Error::PeerMisbehaved(_)
        | Error::PeerSentOversizedRecord
        | Error::DecryptError
        | Error::UnsupportedNameType => "protocol_error",
        _ => "other",
    }
}

/// Like [`classify_tls_error`] for the `io::Error` that `rustls::Stream`,
/// `StreamOwned` and `complete_io` return: the rustls error inside it, or
/// `timeout`, `eof` or `io` for a socket-level failure.
pub fn classify_io_error(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        return classify_tls_error(tls);
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::UnexpectedEof => "eof",
        _ => "io",
    }
}

#[allow(deprecated)] // UnsupportedSignatureAlgorithm still arrives from older paths
fn classify_certificate_error(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::UnknownIssuer => "unknown_ca",
        CertificateError::Revoked => "revoked",
        CertificateError::UnknownRevocationStatus => "revocation_unknown",
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "crl_expired",
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "wrong_purpose"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name_mismatch"
        }
        _ => "bad_cert",
    }
}

fn classify_incompatible(p: &PeerIncompatible) -> &'static str {
    match p {
        PeerIncompatible::ServerDoesNotSupportTls12Or13
        | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
        | PeerIncompatible::SupportedVersionsExtensionRequired
        | PeerIncompatible::Tls12NotOffered
        | PeerIncompatible::Tls12NotOfferedOrEnabled
        | PeerIncompatible::Tls13RequiredForQuic => "protocol_version",
        PeerIncompatible::NoCipherSuitesInCommon
        | PeerIncompatible::NoKxGroupsInCommon
        | PeerIncompatible::NoSignatureSchemesInCommon
        | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon
        | PeerIncompatible::NoEcPointFormatsInCommon => "no_shared_cipher",
        _ => "protocol_error",
    }
}

fn classify_alert(a: AlertDescription) -> &'static str {
    match a {
        // In TLS 1.3 the server tells a client without a certificate so.
        AlertDescription::CertificateRequired => "no_client_cert",
        AlertDescription::UnknownCA => "peer_unknown_ca",
        AlertDescription::CertificateRevoked => "peer_revoked",
        AlertDescription::CertificateExpired => "peer_expired",
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::AccessDenied => "peer_bad_cert",
        AlertDescription::ProtocolVersion => "peer_protocol_version",
        AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity => {
            "peer_handshake_failure"
        }
        AlertDescription::NoApplicationProtocol => "peer_alpn",
        _ => "peer_alert",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_for_the_usual_failures() {
        let cases: Vec<(Error, &str)> = vec![
            (Error::NoCertificatesPresented, "no_client_cert"),
            (
                Error::AlertReceived(AlertDescription::CertificateRequired),
                "no_client_cert",
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "revoked",
            ),
            (
                Error::InvalidCertificate(CertificateError::ExpiredRevocationList),
                "crl_expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidYet),
                "not_yet_valid",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadSignature),
                "bad_cert",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled),
                "protocol_version",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                "no_shared_cipher",
            ),
            (Error::NoApplicationProtocol, "alpn"),
            (
                Error::AlertReceived(AlertDescription::UnknownCA),
                "peer_unknown_ca",
            ),
            (
                Error::AlertReceived(AlertDescription::DecodeError),
                "peer_alert",
            ),
            (Error::DecryptError, "protocol_error"),
            (Error::General("x".into()), "other"),
        ];
        for (e, label) in cases {
            assert_eq!(classify_tls_error(&e), label, "{e:?}");
            assert!(TLS_ERROR_LABELS.contains(&label), "{label}");
        }
    }

    #[test]
    fn io_errors_unwrap_the_rustls_error() {
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::Revoked),
        );
        assert_eq!(classify_io_error(&wrapped), "revoked");
        assert_eq!(
            classify_io_error(&io::Error::from(io::ErrorKind::WouldBlock)),
            "timeout"
        );
        assert_eq!(
            classify_io_error(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            "eof"
        );
        assert_eq!(
            classify_io_error(&io::Error::from(io::ErrorKind::ConnectionReset)),
            "io"
        );
    }

    #[test]
    fn label_list_has_no_duplicates() {
        let mut sorted = TLS_ERROR_LABELS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), TLS_ERROR_LABELS.len());
    }
}
