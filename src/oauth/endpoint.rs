//! `POST /oauth/token`: the RFC 7523 jwt-bearer grant with a client assertion,
//! checked in the order of spec §6 (the first failure ends the request).
//!
//! The caller (the HTTP router) resolves the TLS client certificate to a
//! configured partner and hands over the body; everything else happens here,
//! with `now` passed in so the time rules are testable.

use std::sync::Arc;

use crate::assertion::{self, ClaimError, Claims, Expectations, ReplayCache, Seen};
use crate::audit::{AuditLog, Event};
use crate::config::{Config, OrgId, Partner, PartnerKind};
use crate::ids::{self, Bsn};
use crate::jose::{self, Alg, JoseError, Jwks};
use crate::oauth::form::{Form, FormError};
use crate::oauth::grants::{Grant, TokenKind, TokenStore};
use crate::oauth::keycache::KeyCache;
use crate::oauth::messages::{self, ErrorOut, TokenResponseOut};
use crate::ops::logging::Q;

/// `grant_type` of the TA Notified Pull token request.
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `client_assertion_type` of RFC 7523.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Largest token request body (spec §6 step 2).
pub const MAX_TOKEN_BODY: usize = 64 * 1024;

/// What the token endpoint knows of the authorization bases we issued.
pub trait BaseRegistry: Send + Sync {
    /// Looks up `base` as issued to `partner`.
    fn lookup(&self, partner: &str, base: &str, now: i64) -> BaseLookup;
}

/// The state of an authorization base for one partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseLookup {
    /// Never issued to this partner: the request gets a notify token.
    NotIssued,
    /// Issued to this partner for a case that is still live.
    Live(BaseBinding),
    /// Issued to this partner, but the case was cancelled or has expired.
    Ended,
}

/// What a live authorization base is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBinding {
    pub case_id: String,
    pub patient: Bsn,
    /// The organisation we notified (Task.owner); `None` when addressed as a system.
    pub owner: Option<OrgId>,
}

/// No bases at all (a receiver-only configuration, and unit tests).
pub struct NoBases;

impl BaseRegistry for NoBases {
    fn lookup(&self, _partner: &str, _base: &str, _now: i64) -> BaseLookup {
        BaseLookup::NotIssued
    }
}

/// An incoming token request, with the partner its TLS certificate maps to.
pub struct TokenRequest<'a> {
    pub partner: Option<&'a Partner>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    pub request_id: &'a str,
}

/// The HTTP answer: status, extra headers, JSON body.
#[derive(Debug, Clone)]
pub struct TokenReply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// `issued:<kind>` or the refusal reason: a bounded label for metrics.
    pub outcome: &'static str,
}

/// A refusal: RFC 6749 error code, a description without patient data, and a
/// bounded metrics label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    pub reason: &'static str,
}

fn refuse(
    status: u16,
    error: &'static str,
    reason: &'static str,
    description: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        error,
        description: description.into(),
        reason,
    }
}

fn invalid_request(reason: &'static str, d: impl Into<String>) -> Refusal {
    refuse(400, "invalid_request", reason, d)
}

fn invalid_client(reason: &'static str, d: impl Into<String>) -> Refusal {
    refuse(401, "invalid_client", reason, d)
}

fn invalid_grant(reason: &'static str, d: impl Into<String>) -> Refusal {
    refuse(400, "invalid_grant", reason, d)
}

/// The token endpoint with everything it needs.
pub struct TokenService {
    pub config: Arc<Config>,
    pub replay: ReplayCache,
    pub tokens: Arc<TokenStore>,
    pub keys: Arc<KeyCache<Jwks>>,
    pub bases: Arc<dyn BaseRegistry>,
    pub audit: Arc<AuditLog>,
}

/// An assertion that passed signature, claim, time, audience and replay checks.
struct Checked {
    claims: Claims,
}

impl TokenService {
    /// Handles one request end to end and renders the reply.
    pub fn handle(&self, req: &TokenRequest<'_>, now: i64) -> TokenReply {
        let partner_name = req.partner.map(|p| p.name.as_str());
        match self.decide(req, now) {
            Ok((grant, access_token)) => {
                log::info!(
                    "event=token.issued rid={} partner={} kind={} ttl={}",
                    Q(req.request_id),
                    grant.partner,
                    grant.kind.name(),
                    grant.expires_at - grant.issued_at
                );
                let body = messages::to_json(&TokenResponseOut {
                    access_token: &access_token,
                    token_type: "Bearer",
                    expires_in: grant.expires_at - grant.issued_at,
                });
                TokenReply {
                    status: 200,
                    headers: no_store(),
                    body,
                    outcome: match grant.kind {
                        TokenKind::Notify => "issued:notify",
                        TokenKind::Pull => "issued:pull",
                    },
                }
            }
            Err(r) => {
                log::info!(
                    "event=token.refused rid={} partner={} error={} reason={} detail={}",
                    Q(req.request_id),
                    partner_name.unwrap_or("-"),
                    r.error,
                    r.reason,
                    Q(&r.description)
                );
                let audited = self.audit.record(Event {
                    action: "token.refused",
                    outcome: "refused",
                    partner: partner_name,
                    reason: Some(&r.description),
                    request_id: Some(req.request_id),
                    ..Event::default()
                });
                if let Err(e) = audited {
                    log::error!("event=audit.failed error={}", Q(&e.to_string()));
                }
                reply_error(&r)
            }
        }
    }

    fn decide(&self, req: &TokenRequest<'_>, now: i64) -> Result<(Grant, String), Refusal> {
        log::debug!(
            "event=token.request rid={} partner={} bytes={}",
            Q(req.request_id),
            req.partner.map(|p| p.name.as_str()).unwrap_or("-"),
            req.body.len()
        );
        // 1. TLS: the certificate must belong to a configured partner of the right kind.
        let partner = req.partner.ok_or_else(|| {
            invalid_client(
                "no_partner",
                "the TLS client certificate does not belong to a configured partner",
            )
        })?;
        if partner.kind != PartnerKind::Twiin {
            return Err(refuse(
                403,
                "unauthorized_client",
                "wrong_kind",
                format!(
                    "partner {} is a {} partner, not twiin",
                    partner.name,
                    partner.kind.name()
                ),
            ));
        }

        // 2. HTTP: form-encoded, bounded, no repeats, both JWTs, exact types.
        if req.body.len() > MAX_TOKEN_BODY {
            return Err(refuse(
                413,
                "invalid_request",
                "too_large",
                "the request body is too large",
            ));
        }
        let media = req.content_type.map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        if media.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(invalid_request(
                "content_type",
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        let form = Form::parse(req.body).map_err(|e| match e {
            FormError::Duplicate(_) => invalid_request("duplicate_parameter", e.to_string()),
            _ => invalid_request("bad_form", e.to_string()),
        })?;
        let grant_type = form
            .get("grant_type")
            .ok_or_else(|| invalid_request("missing_parameter", "grant_type is missing"))?;
        if grant_type != GRANT_JWT_BEARER {
            return Err(refuse(
                400,
                "unsupported_grant_type",
                "unsupported_grant_type",
                format!("grant_type must be {GRANT_JWT_BEARER}"),
            ));
        }
        match form.get("client_assertion_type") {
            None => {
                return Err(invalid_request(
                    "missing_parameter",
                    "client_assertion_type is missing",
                ));
            }
            Some(t) if t != CLIENT_ASSERTION_TYPE => {
                return Err(invalid_request(
                    "client_assertion_type",
                    format!("client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
                ));
            }
            Some(_) => {}
        }
        let client_jwt = form
            .get("client_assertion")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid_request("missing_parameter", "client_assertion is missing"))?;
        let authz_jwt = form
            .get("assertion")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid_request("missing_parameter", "assertion is missing"))?;

        let algs: Vec<Alg> = partner
            .accept_algs
            .iter()
            .filter_map(|a| Alg::from_name(a))
            .collect();
        let mut audiences = vec![self.config.token_endpoint()];
        audiences.extend(partner.audiences.iter().cloned());
        let issuer = partner.issuer.as_deref().unwrap_or_default();

        // 3–4. Client assertion: signature, then claims, then replay → invalid_client.
        let client = self
            .check_assertion(
                partner,
                client_jwt,
                &algs,
                issuer,
                partner.client_id.as_deref(),
                &audiences,
                now,
            )
            .map_err(|(reason, d)| match reason {
                "keys_unavailable" => unavailable(d),
                _ => invalid_client(reason, format!("client assertion: {d}")),
            })?;
        if let Some(id) = form.get("client_id") {
            if id != client.claims.sub {
                return Err(invalid_client(
                    "client_id",
                    "client_id does not match the client assertion sub",
                ));
            }
        }

        // 5. Authorization assertion: the same checks → invalid_grant.
        let authz = self
            .check_assertion(partner, authz_jwt, &algs, issuer, None, &audiences, now)
            .map_err(|(reason, d)| match reason {
                "keys_unavailable" => unavailable(d),
                _ => invalid_grant(
                    grant_reason(reason),
                    format!("authorization assertion: {d}"),
                ),
            })?
            .claims;

        // 6. Authorization claims.
        let scheme = partner.id_scheme;
        let requesting = ids::parse_org(&authz.sub, scheme).ok_or_else(|| {
            invalid_grant(
                "org",
                "authorization assertion: sub is not an organisation id",
            )
        })?;
        if partner.org.as_ref() != Some(&requesting) {
            return Err(invalid_grant(
                "org",
                format!(
                    "authorization assertion: partner {} may not act for that organisation",
                    partner.name
                ),
            ));
        }
        match authz.authorizer.as_deref() {
            Some(a) => {
                let ours = ids::parse_org(a, scheme).is_some_and(|org| {
                    Some(&org) == self.config.our_org(crate::config::IdScheme::Ura).as_ref()
                        || Some(&org) == self.config.our_org(crate::config::IdScheme::Agb).as_ref()
                });
                if !ours {
                    return Err(invalid_grant(
                        "authorizer",
                        "authorization assertion: authorizer is not our organisation",
                    ));
                }
            }
            None if partner.address_system => {}
            None => {
                return Err(invalid_grant(
                    "authorizer",
                    "authorization assertion: authorizer is missing",
                ));
            }
        }
        let patient = match authz.patient.as_deref() {
            None => None,
            Some(p) => Some(Bsn::from_patient_claim(p).ok_or_else(|| {
                invalid_grant(
                    "patient",
                    "authorization assertion: patient is not a valid BSN OID",
                )
            })?),
        };
        let mut grant = Grant {
            kind: TokenKind::Notify,
            partner: partner.name.clone(),
            client_id: client.claims.sub.clone(),
            requesting_org: authz.sub.clone(),
            authorizer: authz.authorizer.clone(),
            patient: patient.as_ref().map(|b| b.as_str().to_string()),
            authorization_base: None,
            case_id: None,
            issued_at: now,
            expires_at: now,
        };
        if let Some(base) = authz.authorization_base.as_deref() {
            match self.bases.lookup(&partner.name, base, now) {
                BaseLookup::NotIssued => {}
                BaseLookup::Ended => {
                    return Err(invalid_grant(
                        "base_ended",
                        "authorization_base cancelled or expired",
                    ));
                }
                BaseLookup::Live(binding) => {
                    if binding.owner.as_ref().is_some_and(|o| *o != requesting) {
                        return Err(invalid_grant(
                            "base_org",
                            "authorization_base was not issued to the requesting organisation",
                        ));
                    }
                    if patient.as_ref().is_some_and(|p| *p != binding.patient) {
                        return Err(invalid_grant(
                            "base_patient",
                            "patient does not match the authorization_base",
                        ));
                    }
                    grant.kind = TokenKind::Pull;
                    grant.authorization_base = Some(base.to_string());
                    grant.case_id = Some(binding.case_id);
                    grant.patient = Some(binding.patient.as_str().to_string());
                }
            }
        }

        // 7. Issue, durably, and audit.
        let issued = self.tokens.issue(grant, now).map_err(|e| {
            log::error!("event=token.store_failed error={}", Q(&e.to_string()));
            refuse(
                503,
                "temporarily_unavailable",
                "server_error",
                "the token could not be stored",
            )
        })?;
        let audited = self.audit.record(Event {
            action: "token.issued",
            outcome: "success",
            partner: Some(&partner.name),
            who_org: Some(&issued.grant.requesting_org),
            who_system: Some(&issued.grant.client_id),
            who_user: authz.user_id.as_deref(),
            patient: issued.grant.patient.as_deref(),
            object: Some(match issued.grant.kind {
                TokenKind::Notify => "token:notify",
                TokenKind::Pull => "token:pull",
            }),
            request_id: Some(req.request_id),
            ..Event::default()
        });
        if let Err(e) = audited {
            // Without an audit record the token must not be handed out.
            log::error!("event=audit.failed error={}", Q(&e.to_string()));
            return Err(refuse(
                503,
                "temporarily_unavailable",
                "server_error",
                "the audit trail is unavailable",
            ));
        }
        Ok((issued.grant, issued.access_token))
    }

    /// Signature (with one refetch on an unknown kid), claims, time rules,
    /// audience, then the replay cache. Errors are (metrics reason, description).
    #[allow(clippy::too_many_arguments)]
    fn check_assertion(
        &self,
        partner: &Partner,
        jwt: &str,
        algs: &[Alg],
        issuer: &str,
        subject: Option<&str>,
        audiences: &[String],
        now: i64,
    ) -> Result<Checked, (&'static str, String)> {
        let keys = self.keys.keys(&partner.name, now).map_err(|e| {
            (
                "keys_unavailable",
                format!("signing keys of partner {} unavailable: {e}", partner.name),
            )
        })?;
        let verified = match jose::verify_compact(jwt, &keys, algs) {
            Err(JoseError::UnknownKid { .. }) => {
                match self.keys.refresh_for_unknown_kid(&partner.name, now) {
                    Ok(Some(fresh)) => jose::verify_compact(jwt, &fresh, algs),
                    Ok(None) => jose::verify_compact(jwt, &keys, algs),
                    Err(e) => {
                        return Err((
                            "keys_unavailable",
                            format!("signing keys of partner {} unavailable: {e}", partner.name),
                        ));
                    }
                }
            }
            other => other,
        }
        .map_err(|e| (jose_reason(&e), e.to_string()))?;
        log::debug!(
            "event=token.signature_ok partner={} alg={} kid={}",
            partner.name,
            verified.alg().name(),
            Q(verified.kid().unwrap_or("-"))
        );
        let claims =
            assertion::claims::parse(verified.payload()).map_err(|e| ("claims", e.to_string()))?;
        assertion::claims::check(
            &claims,
            &Expectations {
                issuer,
                subject,
                audiences,
            },
            now,
        )
        .map_err(|e| (claim_reason(&e), e.to_string()))?;
        match self.replay.record(
            &partner.name,
            &claims.iss,
            &claims.jti,
            assertion::claims::replay_horizon(&claims),
        ) {
            Ok(Seen::Fresh) => Ok(Checked { claims }),
            Ok(Seen::Replayed) => Err(("replay", "jti was used before".into())),
            Err(e) => {
                log::error!("event=replay_cache.failed error={}", Q(&e.to_string()));
                Err(("keys_unavailable", "the replay cache is unavailable".into()))
            }
        }
    }
}

fn unavailable(description: String) -> Refusal {
    refuse(
        503,
        "temporarily_unavailable",
        "keys_unavailable",
        description,
    )
}

fn jose_reason(e: &JoseError) -> &'static str {
    match e {
        JoseError::UnknownKid { .. } | JoseError::NoKid { .. } | JoseError::AmbiguousKid { .. } => {
            "unknown_kid"
        }
        JoseError::BadSignature { .. } => "bad_signature",
        JoseError::AlgNotAllowed { .. }
        | JoseError::AlgNone
        | JoseError::AlgHmac { .. }
        | JoseError::AlgUnknown { .. }
        | JoseError::AlgKeyMismatch { .. } => "alg_not_allowed",
        _ => "bad_jws",
    }
}

fn claim_reason(e: &ClaimError) -> &'static str {
    match e {
        ClaimError::Expired => "expired",
        ClaimError::IssuedInFuture | ClaimError::NotYetValid => "not_yet_valid",
        ClaimError::LifetimeTooLong(_) | ClaimError::ExpBeforeIat => "lifetime",
        ClaimError::WrongAudience => "audience",
        ClaimError::WrongIssuer | ClaimError::WrongSubject => "issuer",
        _ => "claims",
    }
}

/// Authorization-assertion failures get their own metric labels.
fn grant_reason(reason: &'static str) -> &'static str {
    match reason {
        "replay" => "grant_replay",
        "bad_signature" => "grant_bad_signature",
        "unknown_kid" => "grant_unknown_kid",
        "alg_not_allowed" => "grant_alg_not_allowed",
        "expired" => "grant_expired",
        "audience" => "grant_audience",
        "issuer" => "grant_issuer",
        _ => "grant_claims",
    }
}

fn no_store() -> Vec<(&'static str, String)> {
    vec![
        ("Cache-Control", "no-store".into()),
        ("Pragma", "no-cache".into()),
    ]
}

/// Renders a refusal as an RFC 6749 error response.
pub fn reply_error(r: &Refusal) -> TokenReply {
    let mut headers = no_store();
    if r.status == 401 {
        headers.push(("WWW-Authenticate", "Bearer error=\"invalid_client\"".into()));
    }
    if r.status == 503 {
        headers.push(("Retry-After", "30".into()));
    }
    TokenReply {
        status: r.status,
        headers,
        body: messages::to_json(&ErrorOut {
            error: r.error,
            error_description: &r.description,
        }),
        outcome: r.reason,
    }
}
