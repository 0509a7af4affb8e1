//! Each partner as we reach it: the mutual TLS handshake (their certificate
//! and whether they accept ours), their discovery document and their JWKS.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use super::tls::handshake;
use super::{Check, Context, Status, fail, ok};
use crate::certwatch::{self, Role};
use crate::config::{Partner, PartnerKind};
use crate::http::partners::{PartnerHttp, Partners};
use crate::jose::Jwks;
use crate::oauth::messages::parse_discovery;
use crate::util::url::{Url, UrlError};

/// One partner: TLS handshake both ways (their certificate and its expiry,
/// whether they accept ours), then discovery and JWKS where we need them.
pub(super) fn partner_checks(
    p: &Partner,
    client: &Arc<ClientConfig>,
    http: &Partners,
    ctx: &Context,
    checks: &mut Vec<Check>,
) {
    let upper = p.name.to_ascii_uppercase();
    let base = format!("partner.{}", p.name);
    let key = |f: &str| format!("NP_PARTNER_{upper}_{f}");
    // Where we reach them first: the FHIR base of a Twiin partner, the
    // published keys of a Zorgviewer; a Mitz broker only connects to us.
    let (target, target_key) = match &p.kind {
        PartnerKind::Twiin(t) => (t.fhir_base.clone(), key("FHIR_BASE")),
        PartnerKind::Zorgviewer(z) => match &z.assertions.jwks_url {
            Some(url) => (url.clone(), key("JWKS_URL")),
            None => {
                checks.push(fail(
                    base,
                    "no JWKS_URL: their assertions cannot be verified",
                    format!("set {} to the partner's published JWKS", key("JWKS_URL")),
                ));
                return;
            }
        },
        PartnerKind::Mitz(_) => {
            checks.push(ok(
                base,
                "kind mitz: nothing to reach (the broker connects to us)",
            ));
            return;
        }
    };
    let (host, port) = match host_port(&target) {
        Ok(hp) => hp,
        Err(e) => {
            checks.push(fail(
                format!("{base}.tls"),
                format!("{target:?} {e}"),
                format!(
                    "correct {}, {} or {}",
                    key("FHIR_BASE"),
                    key("TOKEN_URL"),
                    key("JWKS_URL")
                ),
            ));
            return;
        }
    };
    match handshake(client, &host, port, ctx) {
        Ok(certs) => {
            let mut c = ok(
                format!("{base}.tls"),
                format!("{host}:{port}: mutual TLS handshake OK, they accept our certificate"),
            );
            if let Some(info) = certs
                .first()
                .and_then(|d| certwatch::describe(d, Role::Partner, PathBuf::new()).ok())
            {
                let days = info.days_left(ctx.now);
                c.message.push_str(&format!(
                    "; their certificate {} expires in {days} days",
                    info.subject
                ));
                if days < certwatch::WARN_DAYS {
                    c.status = Status::Warn;
                    c.fix = Some(format!(
                        "ask partner {} to renew their certificate before {}",
                        p.name,
                        crate::util::time::date(info.not_after)
                    ));
                }
            }
            checks.push(c);
        }
        Err((label, detail)) => {
            let (message, fix) = transport_fix(&label, &detail, &host, port, &target_key, p);
            checks.push(fail(format!("{base}.tls"), message, fix));
            return;
        }
    }

    let mut discovered_jwks = None;
    let discover = p
        .as_twiin()
        .filter(|t| t.token_url.is_none() || t.assertions.jwks_url.is_none());
    if let Some(twiin) = discover {
        let url = crate::oauth::client::discovery_url(twiin);
        match fetch(http, &p.name, &url) {
            Ok(body) => match parse_discovery(&body) {
                Ok(d) => {
                    checks.push(ok(
                        format!("{base}.discovery"),
                        format!(
                            "{url}: token endpoint {}, jwks_uri {}",
                            d.token_endpoint,
                            d.jwks_uri.as_deref().unwrap_or("(none)")
                        ),
                    ));
                    discovered_jwks = d.jwks_uri;
                }
                Err(e) => checks.push(fail(
                    format!("{base}.discovery"),
                    format!("{url}: {e}"),
                    format!(
                        "ask partner {} to fix their discovery document, or set {} and {}",
                        p.name,
                        key("TOKEN_URL"),
                        key("JWKS_URL")
                    ),
                )),
            },
            Err(e) => checks.push(fail(
                format!("{base}.discovery"),
                format!("{url}: {e}"),
                format!(
                    "check {} with partner {}, or set {} and {}",
                    key("FHIR_BASE"),
                    p.name,
                    key("TOKEN_URL"),
                    key("JWKS_URL")
                ),
            )),
        }
    }

    let configured_jwks = p.assertions().and_then(|a| a.jwks_url.clone());
    let Some(jwks_url) = configured_jwks.or(discovered_jwks) else {
        checks.push(fail(
            format!("{base}.jwks"),
            "no JWKS_URL configured and discovery named no jwks_uri: their assertions cannot be verified",
            format!("set {} to the partner's published JWKS", key("JWKS_URL")),
        ));
        return;
    };
    match fetch(http, &p.name, &jwks_url).and_then(|b| Jwks::parse(&b).map_err(|e| e.to_string())) {
        Ok(set) => checks.push(ok(
            format!("{base}.jwks"),
            format!(
                "{jwks_url}: {} usable key(s), {} skipped",
                set.keys.len(),
                set.skipped
            ),
        )),
        Err(e) => checks.push(fail(
            format!("{base}.jwks"),
            format!("{jwks_url}: {e}"),
            format!(
                "check {} with partner {} (the URL where they publish their signing keys)",
                key("JWKS_URL"),
                p.name
            ),
        )),
    }
}

/// GET over mTLS; anything but 200 is an error naming the status.
fn fetch(http: &Partners, partner: &str, url: &str) -> Result<Vec<u8>, String> {
    let reply = http.get(partner, url, &[("Accept", "application/json")])?;
    if reply.status != 200 {
        return Err(format!("answered HTTP {}", reply.status));
    }
    Ok(reply.body)
}

/// `https://host[:port]/…` → host (an IPv6 address without brackets) and
/// port (443 when absent).
fn host_port(url: &str) -> Result<(String, u16), UrlError> {
    let url = Url::parse(url)?;
    Ok((url.host_bare().to_string(), url.port()))
}

/// The message and exact fix for a failed partner connection.
fn transport_fix(
    label: &str,
    detail: &str,
    host: &str,
    port: u16,
    base_key: &str,
    p: &Partner,
) -> (String, String) {
    let at = format!("{host}:{port}");
    let partner = &p.name;
    let (what, fix) = match label {
        "dns" => (
            format!("cannot resolve {host}"),
            format!("check the host in {base_key} and DNS on this server: getent hosts {host}"),
        ),
        "refused" => (
            format!("{at} refused the connection"),
            format!("check the port in {base_key} with partner {partner}; is their service up?"),
        ),
        "timeout" => (
            format!("no answer from {at}"),
            format!("allow outgoing TCP from this server to {at} in the firewall or proxy"),
        ),
        "unknown_ca" => (
            format!("{at}: their certificate does not chain to NP_TLS_TRUST"),
            format!("add partner {partner}'s root and intermediate CA certificates to NP_TLS_TRUST, then systemctl reload np-agent"),
        ),
        "bad_cert" => (
            format!("{at}: their certificate does not verify against NP_TLS_TRUST"),
            format!("replace partner {partner}'s CA certificates in NP_TLS_TRUST with their current ones (a CA of the same name but another key is there), then systemctl reload np-agent"),
        ),
        "name_mismatch" => (
            format!("{at}: their certificate is not valid for {host}"),
            format!("check the host name in {base_key} with partner {partner}"),
        ),
        "expired" | "not_yet_valid" => (
            format!("{at}: their certificate is outside its validity period"),
            format!("ask partner {partner} to renew their certificate (and check this server's clock)"),
        ),
        "revoked" => (
            format!("{at}: their certificate is revoked"),
            format!("ask partner {partner} for their new certificate"),
        ),
        "revocation_unknown" | "crl_expired" | "crl_invalid" => (
            format!("{at}: no current CRL for their CA in NP_TLS_CRL_DIR"),
            "put the current CRL of the partner's CA in NP_TLS_CRL_DIR, then systemctl reload np-agent".to_string(),
        ),
        "no_client_cert" | "peer_unknown_ca" | "peer_bad_cert" | "peer_revoked" | "peer_expired" => (
            format!("{at} refused our certificate"),
            format!("send partner {partner} our chain (NP_TLS_CERT) and ask them to trust our CA and register our certificate"),
        ),
        "protocol_version" | "peer_protocol_version" => (
            format!("{at}: no common TLS version"),
            "set NP_TLS_MIN_VERSION=1.2 if the partner only speaks TLS 1.2".to_string(),
        ),
        "no_shared_cipher" | "peer_handshake_failure" => (
            format!("{at}: no common cipher suite or group (we offer NCSC \"Goed\" only)"),
            format!("ask partner {partner} to enable TLS 1.3, or ECDHE with AES-GCM for TLS 1.2"),
        ),
        _ => (
            format!("{at}: connection failed"),
            format!("check {base_key} and the network path to {at}"),
        ),
    };
    (format!("{what} ({label}: {detail})"), fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("https://fhir.example.nl:8443/fhir"),
            Ok(("fhir.example.nl".into(), 8443))
        );
        assert_eq!(
            host_port("https://fhir.example.nl/fhir"),
            Ok(("fhir.example.nl".into(), 443))
        );
        assert_eq!(host_port("https://[::1]:8443"), Ok(("::1".into(), 8443)));
        assert_eq!(host_port("https://h:99999"), Err(UrlError::Port));
    }
}
