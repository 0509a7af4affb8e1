//! `POST /oauth/token`: the I/O around the token decision of
//! [`super::decide`].
//!
//! | step | where | I/O |
//! |---|---|---|
//! | who asks, is the form well-formed | [`decide::admit`] | none |
//! | the partner's keys | [`KeyCache`] | JWKS fetch over mTLS, cached |
//! | assertions, claims, base | [`decide::decide`] | none (lookups only) |
//! | unknown `kid` | here | one JWKS refetch, then the decision again |
//! | record both `jti`s | [`ReplayCache::submit_all`] | journal line queued |
//! | issue the token | [`TokenStore::submit`] | journal line queued |
//! | audit | [`AuditLog::submit`] | audit line queued |
//! | answer | the three `wait`s | group-committed `fdatasync`s, overlapping |
//!
//! The three lines are queued before any is waited for, so the three logs'
//! flushes overlap (each shared with concurrent requests); the answer goes
//! out only once all three are on disk.
//!
//! The router resolves the TLS client certificate to a configured partner
//! and hands over the certificate's SHA-256, the peer address and the body;
//! `now` is passed in. The token is bound to that certificate (RFC 8705) and
//! the answer says so in `cnf.x5t#S256`.

use std::net::IpAddr;
use std::sync::Arc;

use crate::assertion::{JtiEntry, ReplayCache, Seen};
use crate::audit::{self, AuditLog, Event};
use crate::config::{Config, Partner};
use crate::ids::IdScheme;
use crate::jose::Jwks;
use crate::oauth::decide::{
    self, Admitted, BaseRegistry, Context, Decision, Fault, JtiLookup, Reason, Refusal,
};
use crate::oauth::grants::{Issued, TokenKind, TokenStore};
use crate::oauth::keycache::KeyCache;
use crate::oauth::messages::{self, Confirmation, ErrorOut, TokenResponseOut};
use crate::ops::logging::{Q, Rid};
use crate::util::b64;

/// An incoming token request, with the partner its TLS certificate maps to.
pub struct TokenRequest<'a> {
    pub partner: Option<&'a Partner>,
    /// SHA-256 of the DER of the TLS client certificate the request came over.
    pub cert_sha256: Option<[u8; 32]>,
    /// The address the request came from (for the partner's `ALLOW_FROM`).
    pub peer: IpAddr,
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
    /// What happened, for metrics.
    pub outcome: Outcome,
}

/// What a token request ended in, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Issued(TokenKind),
    Refused(Reason),
    /// Refused by the HTTP layer before the token endpoint saw it.
    Http,
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

impl JtiLookup for ReplayCache {
    fn used(&self, partner: &str, iss: &str, jti: &str) -> bool {
        self.contains(partner, iss, jti)
    }
}

impl TokenService {
    /// Handles one request end to end and renders the reply.
    pub fn handle(&self, req: &TokenRequest<'_>, now: i64) -> TokenReply {
        let partner_name = req.partner.map(|p| p.name.as_str()).unwrap_or("-");
        log::debug!(
            "event=token.request rid={} partner={} bytes={}",
            Rid(req.request_id),
            partner_name,
            req.body.len()
        );
        match self.issue(req, now) {
            Ok(issued) => {
                let grant = &issued.grant;
                let ttl = grant.expires_at() - grant.issued_at();
                log::info!(
                    "event=token.issued rid={} partner={} kind={} ttl={ttl}",
                    Rid(req.request_id),
                    grant.partner(),
                    grant.kind().name(),
                );
                let scope = grant.zorgviewer_access().map(|z| z.scopes().to_string());
                let thumbprint = grant.cert_sha256().map(|h| b64::encode(h));
                let body = messages::to_json(&TokenResponseOut {
                    access_token: &issued.access_token,
                    token_type: "Bearer",
                    expires_in: ttl,
                    scope: scope.as_deref(),
                    cnf: thumbprint
                        .as_deref()
                        .map(|x5t_s256| Confirmation { x5t_s256 }),
                });
                TokenReply {
                    status: 200,
                    headers: no_store(),
                    body,
                    outcome: Outcome::Issued(grant.kind()),
                }
            }
            Err(r) => {
                log::info!(
                    "event=token.refused rid={} partner={partner_name} error={} reason={} detail={}",
                    Rid(req.request_id),
                    r.error(),
                    r.reason.label(),
                    Q(&r.description)
                );
                self.audit.record_or_log(Event {
                    action: "token.refused",
                    outcome: "refused",
                    partner: req.partner.map(|p| p.name.as_str()),
                    reason: Some(&r.description),
                    request_id: Some(req.request_id),
                    ..Event::default()
                });
                reply_error(&r)
            }
        }
    }

    /// The decision, then what makes it durable: `jti`s, token, audit.
    fn issue(&self, req: &TokenRequest<'_>, now: i64) -> Result<Issued, Refusal> {
        let admitted = decide::admit(req.partner, req.peer, req.content_type, req.body)?;
        // A partner is known only through its certificate, so it is there.
        let cert_sha256 = req.cert_sha256.ok_or_else(|| {
            Refusal::new(
                Reason::NoPartner,
                "the request came without a TLS client certificate",
            )
        })?;
        let decision = self.decide(&admitted, cert_sha256, now)?;
        let entries: Vec<JtiEntry<'_>> = decision
            .jtis
            .iter()
            .map(|j| JtiEntry {
                iss: &j.iss,
                jti: &j.jti,
                forget_after: j.forget_after,
            })
            .collect();
        // What the answer needs on disk is queued in each log first, then
        // waited for: the `jti`s (both in one append), the token and the
        // audit line go to disk in overlapping flushes shared with concurrent
        // requests, not in three rounds one after another. Nothing is
        // answered until all three are on disk.
        let (seen, jtis_stored) = match self.replay.submit_all(&admitted.partner.name, &entries) {
            Ok(s) => s,
            Err(e) => return Err(replay_failed(&e)),
        };
        if let Some((j, _)) = decision
            .jtis
            .iter()
            .zip(&seen)
            .find(|(_, s)| **s == Seen::Replayed)
        {
            return Err(Refusal::replayed(j.assertion));
        }
        let Decision { grant, user_id, .. } = decision;
        let token = self
            .tokens
            .submit(grant, now)
            .map_err(|e| token_failed(&e))?;
        let g = token.grant();
        let audit_line = self.audit.submit(Event {
            action: "token.issued",
            outcome: "success",
            partner: Some(g.partner()),
            who_org: Some(&g.requesting_org_claim()),
            who_system: Some(g.client_id()),
            who_user: user_id.as_deref(),
            patient: g.patient().map(|b| b.as_str()),
            object: Some(match g.kind() {
                TokenKind::Notify => "token:notify",
                TokenKind::Pull => "token:pull",
                TokenKind::Zorgviewer => "token:zorgviewer",
            }),
            request_id: Some(req.request_id),
            ..Event::default()
        });
        if let Some(stored) = jtis_stored {
            stored.wait().map_err(|e| replay_failed(&e))?;
        }
        let issued = token.wait().map_err(|e| token_failed(&e))?;
        // Without an audit record the token must not be handed out.
        if let Err(e) = audit_line.and_then(audit::Pending::wait) {
            let partner = issued.grant.partner();
            audit::log_failed("token.issued", Some(partner), Some(req.request_id), &e);
            return Err(Refusal::new(
                Reason::ServerError,
                "the audit trail is unavailable",
            ));
        }
        Ok(issued)
    }

    /// The decision with the partner's keys; an unknown `kid` refetches
    /// them once (the key cache limits how often) and decides again.
    fn decide(
        &self,
        admitted: &Admitted<'_>,
        cert_sha256: [u8; 32],
        now: i64,
    ) -> Result<Decision, Refusal> {
        let name = &admitted.partner.name;
        let unavailable = |e: String| {
            Refusal::new(
                Reason::KeysUnavailable,
                format!("signing keys of partner {name} unavailable: {e}"),
            )
        };
        let our_orgs: Vec<_> = [IdScheme::Ura, IdScheme::Agb]
            .into_iter()
            .filter_map(|s| self.config.our_org(s))
            .collect();
        let token_endpoint = self.config.token_endpoint();
        let with = |keys: &Jwks| {
            decide::decide(
                admitted,
                &Context {
                    token_endpoint: &token_endpoint,
                    our_orgs: &our_orgs,
                    keys,
                    bases: self.bases.as_ref(),
                    jtis: &self.replay,
                    cert_sha256,
                    now,
                },
            )
        };
        let keys = self.keys.keys(name, now).map_err(unavailable)?;
        match with(&keys) {
            Err(r) if matches!(r.reason.fault(), Some((_, Fault::UnknownKid))) => {
                match self.keys.refresh_for_unknown_kid(name, now) {
                    Ok(Some(fresh)) => with(&fresh),
                    Ok(None) => Err(r),
                    Err(e) => Err(unavailable(e)),
                }
            }
            other => other,
        }
    }
}

fn replay_failed(e: &dyn std::fmt::Display) -> Refusal {
    log::error!("event=replay_cache.failed error={}", Q(&e.to_string()));
    Refusal::new(Reason::KeysUnavailable, "the replay cache is unavailable")
}

fn token_failed(e: &dyn std::fmt::Display) -> Refusal {
    log::error!("event=token.store_failed error={}", Q(&e.to_string()));
    Refusal::new(Reason::ServerError, "the token could not be stored")
}

fn no_store() -> Vec<(&'static str, String)> {
    vec![
        ("Cache-Control", "no-store".into()),
        ("Pragma", "no-cache".into()),
    ]
}

/// Renders a refusal as an RFC 6749 error response.
pub fn reply_error(r: &Refusal) -> TokenReply {
    render_error(
        r.status(),
        r.error(),
        &r.description,
        Outcome::Refused(r.reason),
    )
}

/// An error of the HTTP layer (method, size, timeout) on the token endpoint,
/// in the token endpoint's form.
pub fn reply_http_error(status: u16, description: &str) -> TokenReply {
    render_error(status, "invalid_request", description, Outcome::Http)
}

fn render_error(status: u16, error: &str, description: &str, outcome: Outcome) -> TokenReply {
    let mut headers = no_store();
    if status == 401 {
        headers.push(("WWW-Authenticate", "Bearer error=\"invalid_client\"".into()));
    }
    if status == 503 {
        headers.push(("Retry-After", "30".into()));
    }
    TokenReply {
        status,
        headers,
        body: messages::to_json(&ErrorOut {
            error,
            error_description: description,
        }),
        outcome,
    }
}
