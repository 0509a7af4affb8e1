//! Our TLS material as partners will see it — certificate, key match, chain
//! against our trust, expiry of every certificate and CRL — and the TLS
//! handshake probe the partner checks use.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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
        let hours = (next - ctx.now) / 3_600;
        let when = crate::util::time::rfc3339(next);
        if next <= ctx.now {
            checks.push(fail(
                "crl",
                format!("a CRL in {} is past its nextUpdate ({when}): every handshake fails closed", dir.display()),
                format!(
                    "put each CA's current CRL in {} (your CRL download job), then systemctl reload np-agent",
                    dir.display()
                ),
            ));
        } else if hours < 24 {
            checks.push(warn(
                "crl",
                format!("the earliest CRL nextUpdate is in {hours} h ({when})"),
                format!(
                    "check that the CRL download job refreshes {}",
                    dir.display()
                ),
            ));
        } else {
            checks.push(ok(
                "crl",
                format!("{} CRL(s), earliest nextUpdate {when}", tls.crls.len()),
            ));
        }
    }
    Some(tls)
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
            .map_err(|e| tls_error_text(&e))
    });
    let cert = cfg.tls_cert.display();
    let trust = cfg.tls_trust.display();
    match (server, client) {
        (Ok(_), Ok(_)) => ok(
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
        (Err(e), _) | (Ok(_), Err(e)) if e.contains("unknown_ca") => fail(
            name,
            format!("{cert} does not chain to a CA in {trust} ({e})"),
            format!(
                "append the intermediate CA certificates after ours in {cert}, and the root CA of our \
                 certificate to {trust}; partners need the same root"
            ),
        ),
        (Err(e), _) | (Ok(_), Err(e)) if e.contains("wrong_purpose") => fail(
            name,
            format!("{cert} is not valid for both TLS server and client authentication ({e})"),
            "request a certificate with extendedKeyUsage serverAuth and clientAuth (UZI server certificate)",
        ),
        (Err(e), _) | (Ok(_), Err(e)) => fail(
            name,
            format!("{cert}: {e}"),
            format!("replace the certificate in {cert} with a current one that chains to {trust}"),
        ),
    }
}

fn tls_error_text(e: &rustls::Error) -> String {
    format!("{}: {e}", pki::classify_tls_error(e))
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
        if days < 0 {
            let status_fail = c.role != Role::TrustAnchor;
            let msg = format!("{what} expired on {date}");
            out.push(if status_fail {
                fail("expiry", msg, renew)
            } else {
                warn("expiry", msg + ": peers chaining to it are refused", renew)
            });
        } else if days < certwatch::WARN_DAYS {
            out.push(warn(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
                renew,
            ));
        } else if c.role == Role::Ours {
            out.push(ok(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
            ));
        }
    }
    let others: Vec<&CertInfo> = certs
        .iter()
        .filter(|c| c.role != Role::Ours && c.days_left(now) >= certwatch::WARN_DAYS)
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

/// A full TLS handshake with our client configuration, then one HTTP
/// request so that a server refusing our certificate (which in TLS 1.3
/// shows only after the handshake) is seen. Returns the partner's chain, or
/// a failure label from [`pki::classify_tls_error`] (`dns`, `connect`,
/// `timeout`, …) with detail.
pub(super) fn handshake(
    client: &Arc<ClientConfig>,
    host: &str,
    port: u16,
    ctx: &Context,
) -> Result<Vec<CertificateDer<'static>>, (String, String)> {
    let err = |label: &str, e: &dyn fmt::Display| (label.to_string(), e.to_string());
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| err("dns", &e))?
        .next()
        .ok_or_else(|| err("dns", &"no address"))?;
    let mut sock = TcpStream::connect_timeout(&addr, ctx.timeouts.connect).map_err(|e| {
        let label = match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionRefused => "refused",
            _ => "connect",
        };
        err(label, &e)
    })?;
    let io_timeout = Some(ctx.timeouts.connect * 2);
    sock.set_read_timeout(io_timeout)
        .and_then(|()| sock.set_write_timeout(io_timeout))
        .map_err(|e| err("io", &e))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| err("dns", &e))?;
    let mut conn = ClientConnection::new(client.clone(), name).map_err(|e| err("other", &e))?;
    let io_err = |e: std::io::Error| (pki::classify_io_error(&e).to_string(), e.to_string());
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(io_err)?;
    }
    let certs = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let request = format!(
        "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: np-agent-doctor\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).map_err(io_err)?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(_) => Ok(certs),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(certs),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

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
