//! The router of the partner-facing listener: which endpoint answers a
//! request, after the certificate is mapped to a partner and (for FHIR data
//! and Tasks) the bearer token to its grant. The partner's kind decides the
//! endpoints it may use, in one `match` per endpoint family.

use std::sync::{Arc, RwLock};

use crate::config::{MitzPartner, Partner, PartnerKind};
use crate::fhir::{FhirVersion, Format, IssueType, Refusal};
use crate::http::{Handler, Request, Response};
use crate::oauth::endpoint::{Outcome, TokenRequest};
use crate::ops::logging::{Q, Rid};
use crate::pki;
use crate::util::time::now_unix;

use super::assembly::{Shared, Stores};

/// The request router for the partner-facing listener.
pub struct Router {
    shared: RwLock<Arc<Shared>>,
    pub(super) stores: Arc<Stores>,
    /// Wakes the spool workers after a notification was stored.
    pub(super) waker: std::sync::OnceLock<crate::worker::Waker>,
}

impl Router {
    pub fn new(shared: Shared, stores: Arc<Stores>) -> Router {
        Router {
            shared: RwLock::new(Arc::new(shared)),
            stores,
            waker: std::sync::OnceLock::new(),
        }
    }

    /// The current shared state.
    pub fn current(&self) -> Arc<Shared> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the shared state (reload).
    pub fn replace(&self, shared: Shared) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(shared);
    }

    /// Who calls: the configured partner the peer's certificate belongs to
    /// (exactly one, or none), and whether its `ALLOW_FROM` lists the address
    /// the connection comes from. A certificate from elsewhere is logged here,
    /// once per request, at warn.
    pub fn partner_of<'a>(&self, shared: &'a Shared, req: &Request) -> Caller<'a> {
        let Some(partner) = self.certified(shared, req) else {
            return Caller::Unknown;
        };
        let peer = req.peer.addr.ip();
        if partner.allows_peer(peer) {
            return Caller::Partner(partner);
        }
        log::warn!(
            "event=partner.address_refused rid={} partner={} peer={peer} allow_from={}",
            Rid(&req.request_id),
            partner.name,
            partner.allow_from
        );
        Caller::Elsewhere(partner)
    }

    /// The configured partner the peer's certificate belongs to: exactly one, or none.
    fn certified<'a>(&self, shared: &'a Shared, req: &Request) -> Option<&'a Partner> {
        let id = req.peer.identity()?;
        let issuer = pki::IssuerCheck::new(&req.peer.certs, &shared.tls.trust_certs);
        let mut matches = shared
            .config
            .partners
            .iter()
            .filter(|p| p.cert.as_ref().is_some_and(|c| c.matches(id, &issuer)));
        let partner = matches.next()?;
        if matches.next().is_some() {
            log::warn!(
                "event=tls.ambiguous_partner rid={} cert_sha256={}",
                Rid(&req.request_id),
                id.fingerprint()
            );
            return None;
        }
        Some(partner)
    }
}

/// Who is calling, by the TLS client certificate and the address it comes from.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No configured partner holds the certificate (or more than one does).
    Unknown,
    /// The partner, from an address its `ALLOW_FROM` lists (or any address).
    Partner(&'a Partner),
    /// The partner's certificate from an address its `ALLOW_FROM` does not list.
    Elsewhere(&'a Partner),
}

impl<'a> Caller<'a> {
    /// The partner allowed to call from here, or the 403 refusal for FHIR
    /// and Mitz paths.
    pub fn allowed(self) -> Result<&'a Partner, (&'a str, Refusal)> {
        match self {
            Caller::Partner(p) => Ok(p),
            Caller::Unknown => Err((
                "-",
                Refusal::forbidden(
                    "the TLS client certificate does not belong to a configured partner",
                ),
            )),
            Caller::Elsewhere(p) => Err((
                &p.name,
                Refusal::forbidden(format!(
                    "the TLS client certificate of partner {} is not accepted from this address",
                    p.name
                )),
            )),
        }
    }

    /// The partner the certificate belongs to, wherever it connects from
    /// (the token endpoint checks the address itself).
    pub fn certified(self) -> Option<&'a Partner> {
        match self {
            Caller::Unknown => None,
            Caller::Partner(p) | Caller::Elsewhere(p) => Some(p),
        }
    }
}

impl Router {
    /// FHIR data and Task endpoints: a partner certificate and a bearer token
    /// our token endpoint issued to that partner; its kind decides what it
    /// may do here.
    fn fhir(&self, shared: &Shared, req: &Request) -> Response {
        let partner = match self.partner_of(shared, req).allowed() {
            Ok(p) => p,
            Err((_, refusal)) => return json_outcome(&refusal),
        };
        match &partner.kind {
            PartnerKind::Twiin(_) => self.twiin_fhir(shared, req, partner),
            PartnerKind::Zorgviewer(zv) => self.zorgviewer_fhir(shared, req, partner, zv),
            PartnerKind::Mitz(_) | PartnerKind::Prs(_) | PartnerKind::Nvi(_) => json_outcome(
                &Refusal::forbidden("this endpoint is for twiin and zorgviewer partners"),
            ),
        }
    }

    /// A Twiin partner: notification Tasks with a notify token, the case's
    /// data with a pull token.
    fn twiin_fhir(&self, shared: &Shared, req: &Request, partner: &Partner) -> Response {
        let now = now_unix();
        let Some(twiin) = partner.as_twiin() else {
            return json_outcome(&Refusal::forbidden("this endpoint is for twiin partners"));
        };
        let grant = match self.bearer(req, partner, now) {
            Ok(g) => g,
            Err(resp) => return resp,
        };
        let rest = &req.path["/fhir".len()..];
        if rest == "/Task" || rest.starts_with("/Task/") && req.method != "GET" {
            return match (grant.kind(), req.method.as_str()) {
                (crate::oauth::TokenKind::Notify, "POST") if rest == "/Task" => {
                    if let Some(busy) = self.backpressure(req, partner, "/fhir/Task", "task.refused") {
                        return busy;
                    }
                    let resp = shared.receiver.notify(twiin, &grant, req, now);
                    if resp.status == 201 {
                        if let Some(w) = self.waker.get() {
                            w.wake();
                        }
                    }
                    resp
                }
                (crate::oauth::TokenKind::Notify, "PUT") => shared.receiver.cancel(twiin, &grant, req, now),
                (crate::oauth::TokenKind::Notify, _) => json_outcome(&Refusal::method_not_allowed(
                    "POST, PUT",
                    "use POST /fhir/Task or PUT /fhir/Task?identifier=…",
                )),
                (crate::oauth::TokenKind::Pull, _) => json_outcome(
                    &Refusal::forbidden(
                        "a pull token cannot send notifications; get a token without authorization_base",
                    )
                    .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
                ),
                (crate::oauth::TokenKind::Zorgviewer, _) => json_outcome(
                    &Refusal::forbidden("a zorgviewer token cannot send notifications")
                        .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
                ),
            };
        }
        match grant.kind() {
            crate::oauth::TokenKind::Pull => crate::serve::handle(
                &self.stores.cases,
                &grant,
                &crate::serve::ServeRequest {
                    method: &req.method,
                    path: rest,
                    query: req.query.as_deref(),
                    accept: req.header("accept"),
                    request_id: &req.request_id,
                },
                &self.stores.audit,
                &format!("{}/fhir", shared.config.public_url),
                now,
            ),
            crate::oauth::TokenKind::Notify => json_outcome(
                &Refusal::forbidden(
                    "a notify token does not read data; get a token with the authorization base",
                )
                .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
            ),
            crate::oauth::TokenKind::Zorgviewer => json_outcome(
                &Refusal::forbidden("a zorgviewer token does not read twiin cases")
                    .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
            ),
        }
    }

    /// A Zorgviewer partner: reads and searches of the published records,
    /// with the request context checked first; never Tasks. Every request
    /// that carries a valid token is answered (and audited) by
    /// `serve::zorgviewer`, a refused one too.
    fn zorgviewer_fhir(
        &self,
        shared: &Shared,
        req: &Request,
        partner: &Partner,
        settings: &crate::config::Zorgviewer,
    ) -> Response {
        let now = now_unix();
        let grant = match self.bearer(req, partner, now) {
            Ok(g) => g,
            Err(resp) => {
                return match crate::zorgviewer::context::echoable_correlation_id(&req.headers) {
                    Some(id) => resp.header("X-Correlation-Id", id),
                    None => resp,
                };
            }
        };
        let rest = &req.path["/fhir".len()..];
        let token_org = grant
            .zorgviewer_access()
            .map(|a| a.subject_organization_id().as_str().to_string())
            .unwrap_or_default();
        let context = self.zorgviewer_context(shared, req, partner, settings, &token_org, now);
        let cert_sha256 = req.peer.identity().map(|id| id.fingerprint());
        let query = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        if context.as_ref().is_ok_and(|ctx| !ctx.request_id_sent()) {
            log::info!(
                "event=zorgviewer.request_id_generated rid={} partner={}",
                Rid(&req.request_id),
                partner.name
            );
        }
        let (facts, verdict) = match &context {
            Ok(ctx) => (
                crate::serve::RequestFacts {
                    correlation_id: ctx.correlation_id(),
                    aorta_id: ctx.aorta_id().map(|a| a.audit_form()),
                    cert_sha256,
                    organization_ura: ctx.organization_ura(),
                    user: ctx.subject_id(),
                    role: ctx.subject_role(),
                    verified: ctx.verified(),
                    query,
                },
                Ok(()),
            ),
            Err(r) => {
                log::info!(
                    "event=zorgviewer.context_refused rid={} partner={} status={} reason={}",
                    Rid(&req.request_id),
                    partner.name,
                    r.status(),
                    r.label()
                );
                (
                    crate::serve::RequestFacts {
                        correlation_id: r.correlation_id(),
                        cert_sha256,
                        query,
                        ..crate::serve::RequestFacts::default()
                    },
                    Err(r.refusal()),
                )
            }
        };
        let verdict = verdict.and_then(|()| {
            if rest == "/Task" || rest.starts_with("/Task/") && req.method != "GET" {
                Err(
                    Refusal::forbidden("a zorgviewer partner does not send notifications")
                        .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
                )
            } else {
                Ok(())
            }
        });
        let zv = crate::serve::zorgviewer::ZorgviewerServe {
            records: &self.stores.records,
            consent: shared.consent.as_ref(),
            audit: &self.stores.audit,
            partner: &partner.name,
            consent_mode: settings.consent,
            provider_category: &settings.provider_category,
            requester_category: settings.requester_category.as_deref(),
            holder_ura: &shared.config.org_ura,
            meta_source: &format!("urn:oid:{}", shared.config.org_oid),
            base_url: &format!("{}/fhir", shared.config.public_url),
        };
        let response = crate::serve::zorgviewer::handle(
            &zv,
            &grant,
            &facts,
            verdict,
            &crate::serve::ServeRequest {
                method: &req.method,
                path: rest,
                query: req.query.as_deref(),
                accept: req.header("accept"),
                request_id: &req.request_id,
            },
            now,
            crate::serve::page_key(),
        );
        match &context {
            Ok(ctx) => crate::zorgviewer::context::echo_headers(ctx)
                .into_iter()
                .fold(response, |r, (k, v)| r.header(k, v)),
            Err(_) => response,
        }
    }

    /// The request context of a Zorgviewer request, checked against the
    /// partner's keys (refetched once for an unknown `kid`) and the token.
    fn zorgviewer_context(
        &self,
        shared: &Shared,
        req: &Request,
        partner: &Partner,
        settings: &crate::config::Zorgviewer,
        token_org: &str,
        now: i64,
    ) -> Result<
        crate::zorgviewer::context::RequestContext,
        crate::zorgviewer::context::ContextRefusal,
    > {
        use crate::zorgviewer::context::{Expect, RequestContext};
        let keys = shared.token_service.keys.as_ref();
        let none = crate::jose::Jwks::default();
        let check = |set: &crate::jose::Jwks| {
            RequestContext::from_headers(
                &req.headers,
                &Expect {
                    request_id: &req.request_id,
                    keys: set,
                    algs: &settings.assertions.accept_algs,
                    token_org,
                    now,
                },
            )
        };
        let current = keys.keys(&partner.name, now).ok();
        match check(current.as_deref().unwrap_or(&none)) {
            Err(r) if r.is_unknown_key() => {
                match keys.refresh_for_unknown_kid(&partner.name, now) {
                    Ok(Some(fresh)) => check(&fresh),
                    _ => Err(r),
                }
            }
            other => other,
        }
    }

    /// The 503 for new work while the disk is nearly full (counted by
    /// `endpoint`, logged as `event`), or `None` when there is room.
    fn backpressure(
        &self,
        req: &Request,
        partner: &Partner,
        endpoint: &'static str,
        event: &str,
    ) -> Option<Response> {
        let pressure = self.stores.disk.check()?;
        self.stores.metrics.inc(
            crate::ops::metrics::BACKPRESSURE_REFUSED,
            &[("endpoint", endpoint)],
        );
        log::info!(
            "event={event} rid={} partner={} status=503 reason=backpressure cause={} free={} min={}",
            Rid(&req.request_id),
            partner.name,
            pressure.reason,
            pressure.free,
            pressure.min
        );
        Some(json_outcome(&pressure.refusal()))
    }

    /// Mitz consent notification intake: the certificate of a `mitz`
    /// partner is the whole authentication (DESIGN.md); no bearer token.
    fn mitz(&self, shared: &Shared, req: &Request) -> Response {
        let mitz = match self.mitz_caller(shared, req) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        if let Some(busy) = self.backpressure(req, mitz.partner, "/mitz", "mitz.refused") {
            return busy;
        }
        let intake = shared.mitz.intake(mitz, req, now_unix());
        if intake.queued {
            if let Some(w) = self.waker.get() {
                w.wake();
            }
        }
        intake.response
    }

    /// The `mitz` partner calling the intake with `POST`, or the refusal
    /// (403 certificate or partner kind, 405 method).
    fn mitz_caller<'a>(
        &self,
        shared: &'a Shared,
        req: &Request,
    ) -> Result<MitzPartner<'a>, Response> {
        let refused = |partner: &str, r: Refusal| {
            log::info!(
                "event=mitz.refused rid={} partner={partner} status={} code={} reason={}",
                Rid(&req.request_id),
                r.status,
                r.code.as_str(),
                Q(r.reason())
            );
            json_outcome(&r)
        };
        let partner = match self.partner_of(shared, req).allowed() {
            Ok(p) => p,
            Err((name, refusal)) => return Err(refused(name, refusal)),
        };
        let Some(mitz) = partner.as_mitz() else {
            return Err(refused(
                &partner.name,
                Refusal::forbidden("this endpoint is for mitz partners"),
            ));
        };
        if req.method != "POST" {
            return Err(refused(
                &partner.name,
                Refusal::method_not_allowed("POST", "POST a consent notification Bundle"),
            ));
        }
        Ok(mitz)
    }

    /// The grant behind `Authorization: Bearer …`, issued to `partner` over
    /// the TLS client certificate of this connection.
    fn bearer(
        &self,
        req: &Request,
        partner: &Partner,
        now: i64,
    ) -> Result<crate::oauth::Grant, Response> {
        let unauthorized = |error: Option<&str>, why: &'static str| {
            let challenge = match error {
                Some(e) => format!("Bearer error=\"{e}\""),
                None => "Bearer".to_string(),
            };
            json_outcome(&Refusal::login(challenge, why))
        };
        let Some(value) = req.header("authorization") else {
            return Err(unauthorized(None, "a bearer token is required"));
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => {
                return Err(unauthorized(
                    Some("invalid_request"),
                    "use Authorization: Bearer <token>",
                ));
            }
        };
        let Some(cert) = cert_sha256(req) else {
            return Err(unauthorized(
                Some("invalid_token"),
                "a token is used over the TLS client certificate it was issued over",
            ));
        };
        self.stores
            .tokens
            .check(token, &partner.name, &cert, now)
            .map_err(|e| {
                if e == crate::oauth::grants::TokenRejection::WrongCertificate {
                    // A valid token over another certificate: copied, or
                    // the partner's certificate was replaced.
                    log::warn!(
                        "event=token.wrong_certificate rid={} partner={} cert_sha256={}",
                        Rid(&req.request_id),
                        partner.name,
                        crate::util::b64::hex(&cert)
                    );
                }
                unauthorized(Some("invalid_token"), e.reason())
            })
    }
}

/// SHA-256 of the peer's TLS client certificate: what a token is bound to.
fn cert_sha256(req: &Request) -> Option<[u8; 32]> {
    req.peer
        .certs
        .first()
        .map(|leaf| pki::certificate_sha256(leaf.as_ref()))
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response::new(status).body("application/json", body)
}

/// The router's own refusals come before any format negotiation: JSON.
fn json_outcome(r: &Refusal) -> Response {
    r.response(Format::Json, FhirVersion::Stu3)
}

impl Handler for Router {
    fn handle(&self, req: &Request) -> Response {
        let shared = self.current();
        let path = req.path.as_str();
        let get = req.method == "GET" || req.method == "HEAD";
        match path {
            "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" if get => {
                json(200, shared.discovery_json.clone()).header("Cache-Control", "max-age=3600")
            }
            "/.well-known/jwks.json" | "/.well-known/jwks" | "/.well-known/openid-connect/jwks"
                if get =>
            {
                json(200, shared.jwks_json.clone()).header("Cache-Control", "max-age=3600")
            }
            "/fhir/metadata" if get => {
                Response::new(200).body("application/fhir+json", shared.metadata_json.clone())
            }
            "/oauth/token" => {
                if req.method != "POST" {
                    return self
                        .error_response(Some(path), 405, "use POST")
                        .header("Allow", "POST");
                }
                let partner = self.partner_of(&shared, req).certified();
                let reply = shared.token_service.handle(
                    &TokenRequest {
                        partner,
                        cert_sha256: cert_sha256(req),
                        peer: req.peer.addr.ip(),
                        content_type: req.header("content-type"),
                        body: &req.body,
                        request_id: &req.request_id,
                    },
                    now_unix(),
                );
                match reply.outcome {
                    Outcome::Issued(kind) => self.stores.metrics.token_issued(kind.name()),
                    Outcome::Refused(reason) => self.stores.metrics.token_refused(reason.label()),
                    Outcome::Http => self.stores.metrics.token_refused("http"),
                }
                token_response(reply)
            }
            _ if is_mitz_path(path) => self.mitz(&shared, req),
            _ if path.starts_with("/fhir/") || path == "/fhir" => self.fhir(&shared, req),
            _ => json(404, br#"{"error":"not_found"}"#.to_vec()),
        }
    }

    fn endpoint_label(&self, path: &str) -> &'static str {
        match path {
            "/oauth/token" => "/oauth/token",
            "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" => {
                "/.well-known/smart-configuration"
            }
            "/.well-known/jwks.json" | "/.well-known/jwks" | "/.well-known/openid-connect/jwks" => {
                "/.well-known/jwks"
            }
            "/fhir/metadata" => "/fhir/metadata",
            "/fhir/Task" => "/fhir/Task",
            p if is_mitz_path(p) => "/mitz",
            p if p.starts_with("/fhir/") => "/fhir/{type}",
            _ => "other",
        }
    }

    fn error_response(&self, path: Option<&str>, status: u16, reason: &str) -> Response {
        if path == Some("/oauth/token") {
            return token_response(crate::oauth::endpoint::reply_http_error(status, reason));
        }
        let code = match status {
            413 => IssueType::TooCostly,
            405 => IssueType::NotSupported,
            _ => IssueType::Invalid,
        };
        json_outcome(&Refusal::new(status, code, reason.to_string()))
    }

    /// A body over the limit on a Mitz intake path: the checks that come
    /// before size in DESIGN.md's order (caller, method, `Accept`,
    /// `Content-Type`) still answer first.
    fn refuse_by_head(&self, req: &Request) -> Option<Response> {
        if !is_mitz_path(&req.path) {
            return None;
        }
        let shared = self.current();
        match self.mitz_caller(&shared, req) {
            Ok(partner) => shared.mitz.refuse_by_head(partner, req),
            Err(resp) => Some(resp),
        }
    }
}

/// The Mitz intake paths: the R4 base (`/fhir/R4`, spec §3) and
/// `/mitz/fhir`, each also with `/Bundle`.
fn is_mitz_path(path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    matches!(
        path,
        "/fhir/R4" | "/fhir/R4/Bundle" | "/mitz/fhir" | "/mitz/fhir/Bundle"
    )
}

fn token_response(reply: crate::oauth::endpoint::TokenReply) -> Response {
    let mut resp = Response::new(reply.status);
    for (k, v) in reply.headers {
        resp = resp.header(k, v);
    }
    resp.body("application/json;charset=UTF-8", reply.body)
}
