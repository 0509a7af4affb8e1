//! Our TLS material as partners will see it — certificate, key match, chain
//! against our trust, expiry of every certificate and CRL — and the TLS
//! handshake probe the partner checks use.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection};

use super::{Check, Context, fail, ok, warn};
use crate::certwatch::{self, CertInfo, Role};
use crate::config::Config;
use crate::pki::{self, PkiError, TlsFiles, TlsMaterial};
use crate::util::url::Url;

/// TLS material: loads, key matches, chain valid for our name against our
/// trust, expiry of every certificate we see and of the CRLs.
pub(super) fn tls_checks(
    cfg: &Config,
    ctx: &Context,
    checks: &mut Vec<Check>,
) -> Option<TlsMaterial> {
    let files = TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        trust: cfg.tls_trust.clone(),
        crl_dir: cfg.tls_crl_dir.clone(),
    };
    let tls = match TlsMaterial::load(&files) {
        Ok(t) => t,
        Err(e) => {
            checks.push(fail(
                format!("tls ({})", e.config_key()),
                e.to_string(),
                pki_fix(&e, &files),
            ));
            return None;
        }
    };
    checks.push(ok(
        "tls.key",
        format!(
            "{} matches the first certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
    ));
    checks.push(chain_check(cfg, &tls));
    match certwatch::inventory(&tls) {
        Ok(certs) => checks.extend(expiry_checks(&certs, ctx.now)),
        Err(e) => checks.push(fail(
            "expiry",
            e,
            format!("make {} readable", files.trust.display()),
        )),
    }
    if let (Some(next), Some(dir)) = (tls.crl_next_update, &files.crl_dir) {
        checks.push(crl_check(next, ctx.now, dir, tls.crls.len()));
    }
    Some(tls)
}

/// The CRLs in `dir`, by the earliest `nextUpdate` among them (`count` of
/// them loaded): past is a FAIL (every handshake fails closed), within a
/// day a WARN.
fn crl_check(next_update: i64, now: i64, dir: &Path, count: usize) -> Check {
    let hours = (next_update - now) / 3_600;
    let when = crate::util::time::rfc3339(next_update);
    if next_update <= now {
        fail(
            "crl",
            format!(
                "a CRL in {} is past its nextUpdate ({when}): every handshake fails closed",
                dir.display()
            ),
            format!(
                "put each CA's current CRL in {} (your CRL download job), then systemctl reload np-agent",
                dir.display()
            ),
        )
    } else if hours < 24 {
        warn(
            "crl",
            format!("the earliest CRL nextUpdate is in {hours} h ({when})"),
            format!(
                "check that the CRL download job refreshes {}",
                dir.display()
            ),
        )
    } else {
        ok("crl", format!("{count} CRL(s), earliest nextUpdate {when}"))
    }
}

fn pki_fix(e: &PkiError, files: &TlsFiles) -> String {
    match e {
        PkiError::KeyPermissions { path, .. } => format!("chmod 600 {}", path.display()),
        PkiError::KeyMismatch { cert, key } => format!(
            "NP_TLS_KEY must be the key of the first certificate in NP_TLS_CERT; compare \
             'openssl x509 -noout -pubkey -in {}' with 'openssl pkey -pubout -in {}' and install the matching pair",
            cert.display(),
            key.display()
        ),
        PkiError::Read { path, .. } => format!(
            "check the path in {} and that {} exists and is readable",
            e.config_key(),
            path.display()
        ),
        _ => format!(
            "replace the file named by {} with a valid PEM file (certificate chain: ours first, \
             then intermediates; key: one unencrypted PKCS#8/PKCS#1/SEC1 key; trust: CA certificates); \
             files: {}, {}, {}",
            e.config_key(),
            files.cert.display(),
            files.key.display(),
            files.trust.display()
        ),
    }
}

/// Our chain against our own trust bundle (and CRLs), as partners will see
/// it: as a server certificate for the host of `NP_PUBLIC_URL`, and as a
/// client certificate.
fn chain_check(cfg: &Config, tls: &TlsMaterial) -> Check {
    let name = "tls.chain";
    let host = match Url::parse(&cfg.public_url) {
        Ok(url) => url.host_bare().to_string(),
        Err(e) => {
            return fail(
                name,
                format!("NP_PUBLIC_URL {:?} {e}", cfg.public_url),
                "correct NP_PUBLIC_URL",
            );
        }
    };
    let (Some(leaf), intermediates) = (tls.chain.first(), tls.chain.get(1..).unwrap_or_default())
    else {
        return fail(name, "no certificate", "put our chain in NP_TLS_CERT");
    };
    let now = UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        tls.roots.clone(),
        pki::provider(),
    )
    .with_crls(tls.crls.iter().cloned())
    .build()
    .map_err(|e| e.to_string())
    .and_then(|v| {
        let sn = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        v.verify_server_cert(leaf, intermediates, &sn, &[], now)
            .map(drop)
            .map_err(|e| tls_error_text(&e))
    });
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        tls.roots.clone(),
        pki::provider(),
    )
    .with_crls(tls.crls.iter().cloned())
    .build()
    .map_err(|e| e.to_string())
    .and_then(|v| {
        v.verify_client_cert(leaf, intermediates, now)
            .map(drop)
            .map_err(|e| tls_error_text(&e))
    });
    chain_verdict(&cfg.tls_cert, &cfg.tls_trust, &host, server, client)
}

/// The chain check's line from the two verifications (each `Err` a
/// `label: text` of [`tls_error_text`]): a wrong name is named first, then
/// an unknown CA, then a wrong purpose, then anything else.
fn chain_verdict(
    cert: &Path,
    trust: &Path,
    host: &str,
    server: Result<(), String>,
    client: Result<(), String>,
) -> Check {
    let name = "tls.chain";
    let cert = cert.display();
    let trust = trust.display();
    match (server, client) {
        (Ok(()), Ok(())) => ok(
            name,
            format!("{cert} chains to {trust} and is valid for {host} as server and as client"),
        ),
        (Err(e), _) if e.contains("name_mismatch") => fail(
            name,
            format!("{cert} is not valid for {host}, the host of NP_PUBLIC_URL ({e})"),
            format!(
                "use a certificate whose subjectAltName holds {host}, or set NP_PUBLIC_URL to a name it holds"
            ),
        ),
        (Err(e), _) | (Ok(()), Err(e)) if e.contains("unknown_ca") => fail(
            name,
            format!("{cert} does not chain to a CA in {trust} ({e})"),
            format!(
                "append the intermediate CA certificates after ours in {cert}, and the root CA of our \
                 certificate to {trust}; partners need the same root"
            ),
        ),
        (Err(e), _) | (Ok(()), Err(e)) if e.contains("wrong_purpose") => fail(
            name,
            format!("{cert} is not valid for both TLS server and client authentication ({e})"),
            "request a certificate with extendedKeyUsage serverAuth and clientAuth (UZI server certificate)",
        ),
        (Err(e), _) | (Ok(()), Err(e)) => fail(
            name,
            format!("{cert}: {e}"),
            format!("replace the certificate in {cert} with a current one that chains to {trust}"),
        ),
    }
}

fn tls_error_text(e: &rustls::Error) -> String {
    format!("{}: {e}", pki::classify_tls_error(e))
}

/// Where a certificate stands by its days left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Validity {
    /// Past its `notAfter`.
    Expired,
    /// Fewer than [`certwatch::WARN_DAYS`] days left: renew now.
    Expiring,
    Valid,
}

/// [`Validity`] for `days` left (negative: expired that many days ago).
pub(super) fn validity(days: i64) -> Validity {
    if days < 0 {
        Validity::Expired
    } else if days < certwatch::WARN_DAYS {
        Validity::Expiring
    } else {
        Validity::Valid
    }
}

/// One line per certificate that expires within 30 days (or has), and one
/// summary line for the rest.
fn expiry_checks(certs: &[CertInfo], now: i64) -> Vec<Check> {
    let mut out = Vec::new();
    for c in certs {
        let days = c.days_left(now);
        let date = crate::util::time::date(c.not_after);
        let what = format!("{} {} in {}", c.role.label(), c.subject, c.file.display());
        let renew = match c.role {
            Role::Ours | Role::Intermediate => format!(
                "renew it: install the new chain in {} and its key in NP_TLS_KEY, then systemctl reload np-agent",
                c.file.display()
            ),
            Role::TrustAnchor => format!(
                "replace it in {} with the CA's current certificate, then systemctl reload np-agent",
                c.file.display()
            ),
            Role::Partner => "ask the partner to renew it".into(),
        };
        match validity(days) {
            Validity::Expired => {
                let msg = format!("{what} expired on {date}");
                out.push(if c.role == Role::TrustAnchor {
                    warn("expiry", msg + ": peers chaining to it are refused", renew)
                } else {
                    fail("expiry", msg, renew)
                });
            }
            Validity::Expiring => out.push(warn(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
                renew,
            )),
            Validity::Valid if c.role == Role::Ours => out.push(ok(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
            )),
            Validity::Valid => {}
        }
    }
    let others: Vec<&CertInfo> = certs
        .iter()
        .filter(|c| c.role != Role::Ours && validity(c.days_left(now)) == Validity::Valid)
        .collect();
    if let Some(first) = others.iter().min_by_key(|c| c.not_after) {
        out.push(ok(
            "expiry",
            format!(
                "{} CA certificate(s) valid for at least {} days; the first to expire is {} in {} days",
                others.len(),
                certwatch::WARN_DAYS,
                first.subject,
                first.days_left(now)
            ),
        ));
    }
    out
}

/// Why the handshake probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbeFailure {
    /// A label from [`pki::classify_tls_error`] or of the connection step
    /// (`dns`, `refused`, `timeout`, `connect`, `io`, `other`).
    pub label: &'static str,
    /// The error text.
    pub detail: String,
}

impl ProbeFailure {
    fn new(label: &'static str, e: &dyn fmt::Display) -> ProbeFailure {
        ProbeFailure {
            label,
            detail: e.to_string(),
        }
    }

    fn io(e: &std::io::Error) -> ProbeFailure {
        ProbeFailure::new(pki::classify_io_error(e), e)
    }
}

/// A full TLS handshake with our client configuration to the host and port
/// of `url`, then one HTTP request so that a server refusing our
/// certificate (which in TLS 1.3 shows only after the handshake) is seen.
/// Returns the partner's chain.
pub(super) fn handshake(
    client: &Arc<ClientConfig>,
    url: &Url,
    ctx: &Context,
) -> Result<Vec<CertificateDer<'static>>, ProbeFailure> {
    let host = url.host_bare();
    let addr = (host, url.port())
        .to_socket_addrs()
        .map_err(|e| ProbeFailure::new("dns", &e))?
        .next()
        .ok_or_else(|| ProbeFailure::new("dns", &"no address"))?;
    let mut sock = TcpStream::connect_timeout(&addr, ctx.timeouts.connect).map_err(|e| {
        let label = match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionRefused => "refused",
            _ => "connect",
        };
        ProbeFailure::new(label, &e)
    })?;
    let io_timeout = Some(ctx.timeouts.connect * 2);
    sock.set_read_timeout(io_timeout)
        .and_then(|()| sock.set_write_timeout(io_timeout))
        .map_err(|e| ProbeFailure::new("io", &e))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| ProbeFailure::new("dns", &e))?;
    let mut conn =
        ClientConnection::new(client.clone(), name).map_err(|e| ProbeFailure::new("other", &e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| ProbeFailure::io(&e))?;
    }
    let certs = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let request = format!(
        "HEAD / HTTP/1.1\r\nHost: {}\r\nUser-Agent: np-agent-doctor\r\nConnection: close\r\n\r\n",
        url.host()
    );
    tls.write_all(request.as_bytes())
        .map_err(|e| ProbeFailure::io(&e))?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(_) => Ok(certs),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(certs),
        Err(e) => Err(ProbeFailure::io(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn days_left_to_validity() {
        assert_eq!(validity(-1), Validity::Expired);
        assert_eq!(validity(0), Validity::Expiring);
        assert_eq!(validity(certwatch::WARN_DAYS - 1), Validity::Expiring);
        assert_eq!(validity(certwatch::WARN_DAYS), Validity::Valid);
        assert_eq!(validity(i64::MAX), Validity::Valid);
        assert_eq!(validity(i64::MIN), Validity::Expired);
    }

    #[test]
    fn crl_next_update() {
        let now = 1_800_000_000;
        let dir = Path::new("/etc/np-agent/crl");
        let c = crl_check(now, now, dir, 2);
        assert_eq!(c.status, Status::Fail, "due now is past");
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "put each CA's current CRL in /etc/np-agent/crl (your CRL download job), then systemctl reload np-agent"
            )
        );
        assert!(c.message.contains("every handshake fails closed"), "{c}");
        let c = crl_check(now + 23 * 3_600 + 3_599, now, dir, 2);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.message
                .starts_with("the earliest CRL nextUpdate is in 23 h ("),
            "{c}"
        );
        assert_eq!(
            c.fix.as_deref(),
            Some("check that the CRL download job refreshes /etc/np-agent/crl")
        );
        let c = crl_check(now + 24 * 3_600, now, dir, 2);
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.message.starts_with("2 CRL(s), earliest nextUpdate "),
            "{c}"
        );
    }

    #[test]
    fn chain_failures_by_precedence() {
        let (cert, trust) = (Path::new("/c.pem"), Path::new("/t.pem"));
        let verdict = |server: Result<(), &str>, client: Result<(), &str>| {
            let c = chain_verdict(
                cert,
                trust,
                "np.example",
                server.map_err(String::from),
                client.map_err(String::from),
            );
            assert_eq!(c.name, "tls.chain");
            (c.status, c.message)
        };
        assert_eq!(
            verdict(Ok(()), Ok(())),
            (
                Status::Ok,
                "/c.pem chains to /t.pem and is valid for np.example as server and as client"
                    .into()
            )
        );
        let name = "name_mismatch: not valid for np.example";
        let ca = "unknown_ca: UnknownIssuer";
        let purpose = "wrong_purpose: not for client auth";
        assert_eq!(
            verdict(Err(name), Err(ca)),
            (
                Status::Fail,
                format!("/c.pem is not valid for np.example, the host of NP_PUBLIC_URL ({name})")
            ),
            "a wrong name is named first"
        );
        assert_eq!(
            verdict(Ok(()), Err(name)).1,
            format!("/c.pem: {name}"),
            "a name only matters to the server verification"
        );
        assert_eq!(
            verdict(Err(ca), Ok(())).1,
            format!("/c.pem does not chain to a CA in /t.pem ({ca})")
        );
        assert_eq!(
            verdict(Ok(()), Err(purpose)).1,
            format!(
                "/c.pem is not valid for both TLS server and client authentication ({purpose})"
            )
        );
        assert_eq!(
            verdict(Err("expired: x"), Ok(())),
            (Status::Fail, "/c.pem: expired: x".into())
        );
    }

    #[test]
    fn expiry_lines() {
        let now = 1_800_000_000;
        let cert = |role, days: i64| CertInfo {
            role,
            subject: "CN=x".into(),
            not_after: now + days * 86_400 + 60,
            file: "/etc/np-agent/tls.crt".into(),
        };
        let checks = expiry_checks(
            &[
                cert(Role::Ours, 20),
                cert(Role::TrustAnchor, -2),
                cert(Role::TrustAnchor, 400),
            ],
            now,
        );
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, vec![Status::Warn, Status::Warn, Status::Ok]);
        assert!(
            checks[0].message.contains("expires in 20 days"),
            "{}",
            checks[0]
        );
        assert!(checks[1].message.contains("expired"), "{}", checks[1]);
        let checks = expiry_checks(&[cert(Role::Ours, -1)], now);
        assert_eq!(checks[0].status, Status::Fail);
    }
}
