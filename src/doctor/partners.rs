//! Each partner as we reach it: the mutual TLS handshake (their certificate
//! and whether they accept ours), their discovery document and their JWKS.
//! [`partner_checks`] does the I/O; what each answer means is decided by the
//! plain functions below it.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use super::tls::{ProbeFailure, Validity, handshake, validity};
use super::{Check, Context, Status, fail, ok};
use crate::certwatch::{self, CertInfo, Role};
use crate::config::{Partner, PartnerKind};
use crate::http::partners::{PartnerHttp, Partners};
use crate::jose::Jwks;
use crate::oauth::messages::parse_discovery;
use crate::util::url::Url;

/// One partner: TLS handshake both ways (their certificate and its expiry,
/// whether they accept ours), then discovery and JWKS where we need them.
pub(super) fn partner_checks(
    cfg: &crate::config::Config,
    p: &Partner,
    client: &Arc<ClientConfig>,
    http: &Partners,
    ctx: &Context,
    checks: &mut Vec<Check>,
) {
    let target = match probe_target(p) {
        Ok(t) => t,
        Err(done) => {
            checks.push(done);
            return;
        }
    };
    match handshake(client, &target.url, ctx) {
        Ok(certs) => {
            let theirs = certs
                .first()
                .and_then(|d| certwatch::describe(d, Role::Partner, PathBuf::new()).ok());
            checks.push(handshake_ok(p, &target.url, theirs.as_ref(), ctx.now));
        }
        Err(failure) => {
            checks.push(handshake_failed(p, &target, &failure));
            return;
        }
    }
    if p.as_mitz().is_some() {
        // The Mitz API signs nothing for us: the handshake is the check.
        return;
    }
    if p.localisation().is_some() {
        // A PRS or NVI: the handshake, then a token from its OAuth server.
        checks.push(token_check(cfg, p, http, ctx.now));
        return;
    }

    let mut discovered_jwks = None;
    let discover = p
        .as_twiin()
        .filter(|t| t.token_url.is_none() || t.assertions.jwks_url.is_none());
    if let Some(twiin) = discover {
        let url = crate::oauth::client::discovery_url(twiin);
        let (check, jwks_uri) = discovery_verdict(p, &url, fetch(http, &p.name, &url));
        checks.push(check);
        discovered_jwks = jwks_uri;
    }

    let configured_jwks = p.assertions().and_then(|a| a.jwks_url.clone());
    let Some(jwks_url) = configured_jwks.or(discovered_jwks) else {
        checks.push(fail(
            check_name(p, "jwks"),
            "no JWKS_URL configured and discovery named no jwks_uri: their assertions cannot be verified",
            format!("set {} to the partner's published JWKS", setting(p, "JWKS_URL")),
        ));
        return;
    };
    let fetched = fetch(http, &p.name, &jwks_url);
    checks.push(jwks_verdict(p, &jwks_url, fetched));
}

/// A `prs` or `nvi` partner: a token from its `TOKEN_URL` over mutual TLS,
/// with the form the workers send.
fn token_check(cfg: &crate::config::Config, p: &Partner, http: &Partners, now: i64) -> Check {
    let name = check_name(p, "token");
    let Some(service) = p.localisation() else {
        return ok(name, "no token needed");
    };
    match crate::nvi::token::request(cfg, p, http, now) {
        Ok(t) => ok(
            name,
            format!(
                "{}: token issued (scope {}), usable for {} s",
                service.token_url,
                service.scope,
                (t.use_until - now).max(0)
            ),
        ),
        Err(e) => fail(
            name,
            e.to_string(),
            format!(
                "check {} and our registration at that OAuth server (scope {}, target_audience {}, our certificate)",
                setting(p, "TOKEN_URL"),
                service.scope,
                service.audience
            ),
        ),
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

/// Where a partner is reached first, and the setting that names it.
#[derive(Debug)]
struct Target {
    url: Url,
    key: String,
}

/// Where we reach a partner first: the FHIR base of a Twiin partner, the
/// published keys of a Zorgviewer, the API base of a Mitz partner with a
/// `URL`. `Err` is the partner's only line when there is nothing to reach (a
/// Mitz broker without `URL` only connects to us) or nothing usable to reach.
fn probe_target(p: &Partner) -> Result<Target, Check> {
    let base = partner_name(p);
    let (url, key) = match &p.kind {
        PartnerKind::Twiin(t) => (&t.fhir_base, setting(p, "FHIR_BASE")),
        PartnerKind::Zorgviewer(z) => match &z.assertions.jwks_url {
            Some(url) => (url, setting(p, "JWKS_URL")),
            None => {
                return Err(fail(
                    base,
                    "no JWKS_URL: their assertions cannot be verified",
                    format!(
                        "set {} to the partner's published JWKS",
                        setting(p, "JWKS_URL")
                    ),
                ));
            }
        },
        PartnerKind::Prs(l) => (&l.url, setting(p, "URL")),
        PartnerKind::Nvi(n) => (&n.service.url, setting(p, "URL")),
        PartnerKind::Mitz(m) => match &m.url {
            Some(url) => (url, setting(p, "URL")),
            None => {
                return Err(ok(
                    base,
                    "kind mitz: nothing to reach (the broker connects to us)",
                ));
            }
        },
    };
    match Url::parse(url) {
        Ok(url) => Ok(Target { url, key }),
        Err(e) => Err(fail(
            check_name(p, "tls"),
            format!("{url:?} {e}"),
            if p.as_twiin().is_none() {
                format!("correct {key}")
            } else {
                format!(
                    "correct {}, {} or {}",
                    setting(p, "FHIR_BASE"),
                    setting(p, "TOKEN_URL"),
                    setting(p, "JWKS_URL")
                )
            },
        )),
    }
}

/// The handshake line when it succeeded: with their certificate's expiry,
/// a WARN when it is (nearly) out of date.
fn handshake_ok(p: &Partner, url: &Url, theirs: Option<&CertInfo>, now: i64) -> Check {
    let (host, port) = (url.host_bare(), url.port());
    let mut c = ok(
        check_name(p, "tls"),
        format!("{host}:{port}: mutual TLS handshake OK, they accept our certificate"),
    );
    if let Some(info) = theirs {
        let days = info.days_left(now);
        c.message.push_str(&format!(
            "; their certificate {} expires in {days} days",
            info.subject
        ));
        if validity(days) != Validity::Valid {
            c.status = Status::Warn;
            c.fix = Some(format!(
                "ask partner {} to renew their certificate before {}",
                p.name,
                crate::util::time::date(info.not_after)
            ));
        }
    }
    c
}

/// The handshake line when it failed: what went wrong and the fix.
fn handshake_failed(p: &Partner, target: &Target, failure: &ProbeFailure) -> Check {
    let (message, fix) = transport_fix(
        failure.label,
        &failure.detail,
        target.url.host_bare(),
        target.url.port(),
        &target.key,
        p,
    );
    fail(check_name(p, "tls"), message, fix)
}

/// The discovery line for what fetching `url` gave, and the `jwks_uri` it
/// names.
fn discovery_verdict(
    p: &Partner,
    url: &str,
    fetched: Result<Vec<u8>, String>,
) -> (Check, Option<String>) {
    let name = check_name(p, "discovery");
    match fetched.map(|body| parse_discovery(&body)) {
        Ok(Ok(d)) => (
            ok(
                name,
                format!(
                    "{url}: token endpoint {}, jwks_uri {}",
                    d.token_endpoint,
                    d.jwks_uri.as_deref().unwrap_or("(none)")
                ),
            ),
            d.jwks_uri,
        ),
        Ok(Err(e)) => (
            fail(
                name,
                format!("{url}: {e}"),
                format!(
                    "ask partner {} to fix their discovery document, or set {} and {}",
                    p.name,
                    setting(p, "TOKEN_URL"),
                    setting(p, "JWKS_URL")
                ),
            ),
            None,
        ),
        Err(e) => (
            fail(
                name,
                format!("{url}: {e}"),
                format!(
                    "check {} with partner {}, or set {} and {}",
                    setting(p, "FHIR_BASE"),
                    p.name,
                    setting(p, "TOKEN_URL"),
                    setting(p, "JWKS_URL")
                ),
            ),
            None,
        ),
    }
}

/// The JWKS line for what fetching `url` gave.
fn jwks_verdict(p: &Partner, url: &str, fetched: Result<Vec<u8>, String>) -> Check {
    match fetched.and_then(|b| Jwks::parse(&b).map_err(|e| e.to_string())) {
        Ok(set) => ok(
            check_name(p, "jwks"),
            format!(
                "{url}: {} usable key(s), {} skipped",
                set.keys.len(),
                set.skipped
            ),
        ),
        Err(e) => fail(
            check_name(p, "jwks"),
            format!("{url}: {e}"),
            format!(
                "check {} with partner {} (the URL where they publish their signing keys)",
                setting(p, "JWKS_URL"),
                p.name
            ),
        ),
    }
}

/// `partner.<name>`: the line of a partner with nothing further to check.
fn partner_name(p: &Partner) -> String {
    format!("partner.{}", p.name)
}

/// `partner.<name>.<part>`: one of a partner's checks.
fn check_name(p: &Partner, part: &str) -> String {
    format!("partner.{}.{part}", p.name)
}

/// The configuration key `NP_PARTNER_<NAME>_<field>`.
fn setting(p: &Partner, field: &str) -> String {
    format!("NP_PARTNER_{}_{field}", p.name.to_ascii_uppercase())
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
    use crate::config::{AssertionPolicy, CertSelector, Consent, Mitz, Twiin, Zorgviewer};
    use crate::ids::{IdScheme, OrgId};
    use crate::util::url::UrlError;

    const NOW: i64 = 1_800_000_000;

    fn policy(jwks_url: Option<&str>) -> AssertionPolicy {
        AssertionPolicy {
            issuer: "https://vip.example".into(),
            client_id: "vip-client".into(),
            jwks_url: jwks_url.map(String::from),
            audiences: Vec::new(),
            accept_algs: crate::jose::DEFAULT_ACCEPTED.to_vec(),
        }
    }

    fn twiin(fhir_base: &str) -> Partner {
        Partner {
            name: "vip".into(),
            cert: Some(CertSelector::Ura("87654321".into())),
            allow_from: crate::config::AllowFrom::any(),
            kind: PartnerKind::Twiin(Twiin {
                fhir_base: fhir_base.into(),
                token_url: None,
                assertions: policy(None),
                our_client_id: "np.example".into(),
                org: OrgId::Ura("87654321".into()),
                id_scheme: IdScheme::Ura,
                send_bsn: false,
                address_system: false,
            }),
        }
    }

    fn zorgviewer(jwks_url: Option<&str>) -> Partner {
        Partner {
            name: "zv".into(),
            cert: Some(CertSelector::Dns("zv.example".into())),
            allow_from: crate::config::AllowFrom::any(),
            kind: PartnerKind::Zorgviewer(Zorgviewer {
                assertions: policy(jwks_url),
                consent: Consent::Mitz,
                provider_category: "RPZAC104".into(),
                requester_category: None,
            }),
        }
    }

    fn target(p: &Partner) -> (String, u16, String) {
        let t = probe_target(p).unwrap();
        (t.url.host_bare().to_string(), t.url.port(), t.key)
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            target(&twiin("https://fhir.example.nl:8443/fhir")),
            (
                "fhir.example.nl".into(),
                8443,
                "NP_PARTNER_VIP_FHIR_BASE".into()
            )
        );
        assert_eq!(target(&twiin("https://fhir.example.nl/fhir")).1, 443);
        assert_eq!(target(&twiin("https://[::1]:8443")).0, "::1");
        let c = probe_target(&twiin("https://h:99999")).unwrap_err();
        assert_eq!(
            (c.status, c.name.as_str(), c.message.clone()),
            (
                Status::Fail,
                "partner.vip.tls",
                format!("\"https://h:99999\" {}", UrlError::Port)
            )
        );
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "correct NP_PARTNER_VIP_FHIR_BASE, NP_PARTNER_VIP_TOKEN_URL or NP_PARTNER_VIP_JWKS_URL"
            )
        );
    }

    #[test]
    fn each_kind_is_reached_where_it_publishes() {
        assert_eq!(
            target(&zorgviewer(Some("https://auth.zv.example:9443/jwks"))),
            (
                "auth.zv.example".into(),
                9443,
                "NP_PARTNER_ZV_JWKS_URL".into()
            )
        );
        let c = probe_target(&zorgviewer(None)).unwrap_err();
        assert_eq!((c.status, c.name.as_str()), (Status::Fail, "partner.zv"));
        assert_eq!(
            c.fix.as_deref(),
            Some("set NP_PARTNER_ZV_JWKS_URL to the partner's published JWKS")
        );
        let mitz = Partner {
            name: "broker".into(),
            cert: Some(CertSelector::Dns("broker.example".into())),
            allow_from: crate::config::AllowFrom::any(),
            kind: PartnerKind::Mitz(Mitz::default()),
        };
        assert_eq!(
            probe_target(&mitz).unwrap_err().to_string(),
            "OK   partner.broker: kind mitz: nothing to reach (the broker connects to us)"
        );
        // With a URL, the Mitz API base is reached.
        let api = |url: &str| Partner {
            kind: PartnerKind::Mitz(Mitz {
                url: Some(url.into()),
            }),
            ..mitz.clone()
        };
        assert_eq!(
            target(&api("https://tst-api.mijn-mitz.nl/tst-us/mitz")),
            (
                "tst-api.mijn-mitz.nl".into(),
                443,
                "NP_PARTNER_BROKER_URL".into()
            )
        );
        let c = probe_target(&api("https://h:99999/mitz")).unwrap_err();
        assert_eq!(
            (c.status, c.fix.as_deref()),
            (Status::Fail, Some("correct NP_PARTNER_BROKER_URL"))
        );
    }

    #[test]
    fn their_certificate_near_its_end_is_a_warning() {
        let p = twiin("https://vip.example:8443/fhir");
        let url = Url::parse("https://vip.example:8443/fhir").unwrap();
        let cert = |days: i64| CertInfo {
            role: Role::Partner,
            subject: "CN=vip".into(),
            not_after: NOW + days * 86_400 + 60,
            file: PathBuf::new(),
        };
        let c = handshake_ok(&p, &url, None, NOW);
        assert_eq!(
            c.to_string(),
            "OK   partner.vip.tls: vip.example:8443: mutual TLS handshake OK, they accept our certificate"
        );
        let c = handshake_ok(&p, &url, Some(&cert(400)), NOW);
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.message
                .ends_with("; their certificate CN=vip expires in 400 days"),
            "{c}"
        );
        for days in [29, 0, -3] {
            let c = handshake_ok(&p, &url, Some(&cert(days)), NOW);
            assert_eq!(c.status, Status::Warn, "{days}: {c}");
            assert!(
                c.fix
                    .as_deref()
                    .unwrap()
                    .starts_with("ask partner vip to renew their certificate before "),
                "{c}"
            );
        }
        assert_eq!(
            handshake_ok(&p, &url, Some(&cert(30)), NOW).status,
            Status::Ok
        );
    }

    #[test]
    fn each_failure_label_has_its_own_fix() {
        let p = twiin("https://vip.example:8443/fhir");
        let key = "NP_PARTNER_VIP_FHIR_BASE";
        // (label, start of the message after "vip.example:8443", start of the fix)
        let rows = [
            (
                "dns",
                "cannot resolve vip.example",
                "check the host in NP_PARTNER_VIP_FHIR_BASE and DNS",
            ),
            (
                "refused",
                "vip.example:8443 refused the connection",
                "check the port in NP_PARTNER_VIP_FHIR_BASE",
            ),
            (
                "timeout",
                "no answer from vip.example:8443",
                "allow outgoing TCP from this server to vip.example:8443",
            ),
            (
                "unknown_ca",
                "vip.example:8443: their certificate does not chain",
                "add partner vip's root and intermediate CA",
            ),
            (
                "bad_cert",
                "vip.example:8443: their certificate does not verify",
                "replace partner vip's CA certificates",
            ),
            (
                "name_mismatch",
                "vip.example:8443: their certificate is not valid for vip.example",
                "check the host name in NP_PARTNER_VIP_FHIR_BASE",
            ),
            (
                "expired",
                "vip.example:8443: their certificate is outside its validity",
                "ask partner vip to renew",
            ),
            (
                "not_yet_valid",
                "vip.example:8443: their certificate is outside its validity",
                "ask partner vip to renew",
            ),
            (
                "revoked",
                "vip.example:8443: their certificate is revoked",
                "ask partner vip for their new certificate",
            ),
            (
                "revocation_unknown",
                "vip.example:8443: no current CRL",
                "put the current CRL",
            ),
            (
                "crl_expired",
                "vip.example:8443: no current CRL",
                "put the current CRL",
            ),
            (
                "crl_invalid",
                "vip.example:8443: no current CRL",
                "put the current CRL",
            ),
            (
                "no_client_cert",
                "vip.example:8443 refused our certificate",
                "send partner vip our chain",
            ),
            (
                "peer_unknown_ca",
                "vip.example:8443 refused our certificate",
                "send partner vip our chain",
            ),
            (
                "peer_bad_cert",
                "vip.example:8443 refused our certificate",
                "send partner vip our chain",
            ),
            (
                "peer_revoked",
                "vip.example:8443 refused our certificate",
                "send partner vip our chain",
            ),
            (
                "peer_expired",
                "vip.example:8443 refused our certificate",
                "send partner vip our chain",
            ),
            (
                "protocol_version",
                "vip.example:8443: no common TLS version",
                "set NP_TLS_MIN_VERSION=1.2",
            ),
            (
                "peer_protocol_version",
                "vip.example:8443: no common TLS version",
                "set NP_TLS_MIN_VERSION=1.2",
            ),
            (
                "no_shared_cipher",
                "vip.example:8443: no common cipher suite",
                "ask partner vip to enable TLS 1.3",
            ),
            (
                "peer_handshake_failure",
                "vip.example:8443: no common cipher suite",
                "ask partner vip to enable TLS 1.3",
            ),
            (
                "connect",
                "vip.example:8443: connection failed",
                "check NP_PARTNER_VIP_FHIR_BASE and the network path",
            ),
            (
                "io",
                "vip.example:8443: connection failed",
                "check NP_PARTNER_VIP_FHIR_BASE and the network path",
            ),
        ];
        for (label, message, fix) in rows {
            let (m, f) = transport_fix(label, "detail", "vip.example", 8443, key, &p);
            assert!(m.starts_with(message), "{label}: {m}");
            assert!(m.ends_with(&format!(" ({label}: detail)")), "{label}: {m}");
            assert!(f.starts_with(fix), "{label}: {f}");
        }
        let target = probe_target(&p).unwrap();
        let failure = ProbeFailure {
            label: "refused",
            detail: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            handshake_failed(&p, &target, &failure).to_string(),
            "FAIL partner.vip.tls: vip.example:8443 refused the connection (refused: Connection refused (os error 111)); \
             fix: check the port in NP_PARTNER_VIP_FHIR_BASE with partner vip; is their service up?"
        );
    }

    #[test]
    fn discovery_answers() {
        let p = twiin("https://vip.example/fhir");
        let url = "https://vip.example/fhir/.well-known/smart-configuration";
        let (c, jwks) = discovery_verdict(
            &p,
            url,
            Ok(br#"{"token_endpoint":"https://vip.example/token","jwks_uri":"https://vip.example/jwks"}"#.to_vec()),
        );
        assert_eq!(
            c.to_string(),
            format!(
                "OK   partner.vip.discovery: {url}: token endpoint https://vip.example/token, jwks_uri https://vip.example/jwks"
            )
        );
        assert_eq!(jwks.as_deref(), Some("https://vip.example/jwks"));
        let (c, jwks) = discovery_verdict(
            &p,
            url,
            Ok(br#"{"token_endpoint":"https://vip.example/token"}"#.to_vec()),
        );
        assert!(c.message.ends_with("jwks_uri (none)"), "{c}");
        assert_eq!((c.status, jwks), (Status::Ok, None));
        let (c, jwks) = discovery_verdict(&p, url, Ok(b"{}".to_vec()));
        assert_eq!((c.status, jwks), (Status::Fail, None));
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "ask partner vip to fix their discovery document, or set NP_PARTNER_VIP_TOKEN_URL and NP_PARTNER_VIP_JWKS_URL"
            )
        );
        let (c, jwks) = discovery_verdict(&p, url, Err("answered HTTP 404".into()));
        assert_eq!((c.status, jwks), (Status::Fail, None));
        assert_eq!(c.message, format!("{url}: answered HTTP 404"));
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "check NP_PARTNER_VIP_FHIR_BASE with partner vip, or set NP_PARTNER_VIP_TOKEN_URL and NP_PARTNER_VIP_JWKS_URL"
            )
        );
    }

    #[test]
    fn jwks_answers() {
        let p = zorgviewer(Some("https://zv.example/jwks"));
        let url = "https://zv.example/jwks";
        let alg = crate::jose::Alg::Es256;
        let pem = crate::jose::generate_pkcs8_pem(alg).unwrap();
        let key = crate::jose::SigningKey::from_pkcs8_pem(&pem, alg, None).unwrap();
        let set = Jwks::new(vec![key.public_jwk()]).unwrap().to_json();
        assert_eq!(
            jwks_verdict(&p, url, Ok(set.into_bytes())).to_string(),
            format!("OK   partner.zv.jwks: {url}: 1 usable key(s), 0 skipped")
        );
        let fix = "check NP_PARTNER_ZV_JWKS_URL with partner zv (the URL where they publish their signing keys)";
        let c = jwks_verdict(&p, url, Ok(b"not json".to_vec()));
        assert_eq!((c.status, c.fix.as_deref()), (Status::Fail, Some(fix)));
        let c = jwks_verdict(&p, url, Err("answered HTTP 500".into()));
        assert_eq!(c.message, format!("{url}: answered HTTP 500"));
        assert_eq!((c.status, c.fix.as_deref()), (Status::Fail, Some(fix)));
    }
}
