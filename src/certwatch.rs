//! Certificate expiry: which certificates we can see, how many days each has
//! left, and the daily `warn` the daemon logs 30 days before any expires.
//!
//! We can see our own chain (`NP_TLS_CERT`: our certificate and its
//! intermediates) and the trust anchors (`NP_TLS_TRUST`, whose expiry cuts
//! off every partner below them). Partners' own certificates are seen only
//! during a handshake; `np-agent doctor` connects to each partner and
//! reports theirs.
//!
//! [`expiring`] is the pure decision (certificates plus `now` in, warnings
//! out); [`ExpiryWatch`] is the daemon's once-a-day driver.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::der::Decode;

use crate::ops::logging::Q;
use crate::pki::TlsMaterial;

/// Warn this many days before a certificate expires.
pub const WARN_DAYS: i64 = 30;
/// How often the daemon checks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(86_400);

/// What a certificate is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Our end-entity certificate (first in `NP_TLS_CERT`).
    Ours,
    /// An intermediate CA certificate after ours in `NP_TLS_CERT`.
    Intermediate,
    /// A CA certificate in `NP_TLS_TRUST`.
    TrustAnchor,
    /// A partner's server certificate, seen in a handshake.
    Partner,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Ours => "our certificate",
            Role::Intermediate => "intermediate",
            Role::TrustAnchor => "trust anchor",
            Role::Partner => "partner certificate",
        }
    }

    /// The configuration key naming the file the certificate is in.
    pub fn key(self) -> &'static str {
        match self {
            Role::Ours | Role::Intermediate => "NP_TLS_CERT",
            Role::TrustAnchor => "NP_TLS_TRUST",
            Role::Partner => "NP_PARTNER_<NAME>_FHIR_BASE",
        }
    }
}

/// One certificate whose expiry we track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub role: Role,
    /// RFC 4514 subject, e.g. `CN=np.hospital.example,O=Hospital`.
    pub subject: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The file it was read from (empty for partner certificates).
    pub file: PathBuf,
}

impl CertInfo {
    /// Whole days left until `notAfter` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// Reads subject and `notAfter` of a DER certificate.
pub fn describe(der: &[u8], role: Role, file: PathBuf) -> Result<CertInfo, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| format!("does not parse: {e}"))?;
    let tbs = cert.tbs_certificate();
    let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
    Ok(CertInfo {
        role,
        subject: tbs.subject().to_string(),
        not_after: i64::try_from(not_after).unwrap_or(i64::MAX),
        file,
    })
}

/// Every certificate of our TLS material: our chain, then the trust anchors
/// (read again from `NP_TLS_TRUST`, since the root store keeps no dates).
/// Certificates that do not parse are skipped: loading the material
/// already refused those.
pub fn inventory(tls: &TlsMaterial) -> Result<Vec<CertInfo>, String> {
    let mut out = Vec::new();
    for (i, der) in tls.chain.iter().enumerate() {
        let role = if i == 0 {
            Role::Ours
        } else {
            Role::Intermediate
        };
        if let Ok(c) = describe(der, role, tls.files.cert.clone()) {
            out.push(c);
        }
    }
    let trust = &tls.files.trust;
    let anchors = CertificateDer::pem_file_iter(trust)
        .map_err(|e| format!("trust bundle {}: cannot read: {e}", trust.display()))?;
    for der in anchors.flatten() {
        if let Ok(c) = describe(&der, Role::TrustAnchor, trust.clone()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The certificates that expire within [`WARN_DAYS`] (or already have).
pub fn expiring(certs: &[CertInfo], now: i64) -> Vec<&CertInfo> {
    certs
        .iter()
        .filter(|c| c.days_left(now) < WARN_DAYS)
        .collect()
}

/// The daemon's daily check: call [`ExpiryWatch::tick`] from the main loop;
/// it does its work at the first call and then once a day.
#[derive(Debug, Default)]
pub struct ExpiryWatch {
    last: Option<Instant>,
}

impl ExpiryWatch {
    pub fn new() -> ExpiryWatch {
        ExpiryWatch::default()
    }

    /// Logs `event=cert.expiring` (warn) for every certificate within
    /// [`WARN_DAYS`] of its `notAfter`, at most once a day.
    pub fn tick(&mut self, tls: &TlsMaterial) {
        if self.last.is_some_and(|t| t.elapsed() < CHECK_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let now = crate::util::time::now_unix();
        match inventory(tls) {
            Ok(certs) => {
                for c in expiring(&certs, now) {
                    log::warn!("{}", expiry_line(c, now));
                }
            }
            Err(e) => log::warn!("event=cert.check_failed error={}", Q(&e)),
        }
    }
}

/// The log line for an expiring certificate.
pub fn expiry_line(c: &CertInfo, now: i64) -> String {
    format!(
        "event=cert.expiring role={} subject={} days_left={} not_after={} file={} key={}",
        Q(c.role.label()),
        Q(&c.subject),
        c.days_left(now),
        crate::util::time::rfc3339(c.not_after),
        Q(&c.file.display().to_string()),
        c.role.key()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::throwaway::{Ca, LeafSpec, write_files};

    const DAY: i64 = 86_400;

    fn info(role: Role, not_after: i64) -> CertInfo {
        CertInfo {
            role,
            subject: "CN=x".into(),
            not_after,
            file: PathBuf::from("/etc/np-agent/tls.crt"),
        }
    }

    #[test]
    fn warns_inside_thirty_days_and_after_expiry() {
        let now = 1_800_000_000;
        let certs = [
            info(Role::Ours, now + 31 * DAY),
            info(Role::Ours, now + 30 * DAY),
            info(Role::Intermediate, now + 29 * DAY + 1),
            info(Role::TrustAnchor, now - 1),
        ];
        let days: Vec<i64> = expiring(&certs, now)
            .iter()
            .map(|c| c.days_left(now))
            .collect();
        assert_eq!(days, vec![29, -1]);
        let line = expiry_line(&certs[3], now);
        assert!(
            line.starts_with("event=cert.expiring role=\"trust anchor\" subject=\"CN=x\"")
                && line.contains("days_left=-1")
                && line.contains("key=NP_TLS_TRUST"),
            "{line}"
        );
    }

    #[test]
    fn inventory_lists_our_chain_and_the_trust_anchors() {
        let dir = std::env::temp_dir().join(format!(
            "np-certwatch-{}",
            crate::util::b64::hex(&crate::util::random::bytes::<6>().unwrap())
        ));
        let ca = Ca::new("watch ca").unwrap();
        let now = crate::util::time::now_unix();
        let issued = ca
            .issue(&LeafSpec {
                not_after: now + 10 * DAY,
                ..LeafSpec::localhost("soon")
            })
            .unwrap();
        let files = write_files(&dir, &issued, &[&ca]).unwrap();
        let tls = TlsMaterial::load(&files).unwrap();
        let certs = inventory(&tls).unwrap();
        let roles: Vec<Role> = certs.iter().map(|c| c.role).collect();
        assert_eq!(roles, vec![Role::Ours, Role::TrustAnchor]);
        assert!(certs[0].subject.contains("soon"), "{:?}", certs[0]);
        let soon = expiring(&certs, now);
        assert_eq!(soon.len(), 1);
        assert!((9..=10).contains(&soon[0].days_left(now)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
