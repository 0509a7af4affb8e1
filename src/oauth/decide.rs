//! The token decision, without I/O: `POST /oauth/token` checked in the
//! order of spec §6, the first failure ending the request.
//!
//! [`admit`] takes the partner the TLS certificate maps to, the peer
//! address, the `Content-Type` and the body, and answers steps 1–2 (who asks,
//! from where, and is the request well-formed) with an [`Admitted`] request.
//! [`decide`] takes that request, the partner's keys, the authorization-base
//! lookup, the `jti` lookup, the client certificate's SHA-256 and `now`, and
//! answers steps 3–6 with a [`Decision`] (its grant bound to that
//! certificate) or a typed [`Refusal`]. Neither reads a file, a socket or a
//! clock: the caller (`endpoint.rs`) fetches keys, records the `jti`s, stores
//! the token and writes the audit.
//!
//! Two grants, one per partner kind that gets tokens ([`grant_of`]):
//!
//! - **jwt-bearer** (Twiin, TA Notified Pull): a client assertion and an
//!   authorization assertion → a notify or pull grant.
//! - **client_credentials** (Zorgviewer, SMART backend services): a client
//!   assertion (`iss` = `sub` = the partner's `CLIENT_ID`, `aud` our token
//!   endpoint or an `AUDIENCES` value, `jti` never seen, `exp` at most 300 s +
//!   skew ahead through the lifetime rules of [`assertion::claims::check`])
//!   carrying the IHE IUA claims, and a `scope` → a Zorgviewer grant.
//!   Every fault of the client assertion, a missing or malformed
//!   `subject_organization_id` included, is `invalid_client` (401): RFC 7523
//!   §3.2 and SMART backend services answer a client JWT that is not valid
//!   with `invalid_client`. The `scope` is checked after the client is
//!   authenticated, so an unknown client learns nothing about scopes: missing,
//!   malformed or unknown, or granting nothing → `invalid_scope` (400, RFC
//!   6749 §3.3 and §5.2); see [`super::scope`] for what is granted.

use std::fmt;
use std::net::IpAddr;

use crate::assertion::{self, ClaimError, Claims, Expectations};
use crate::config::{AssertionPolicy, Partner, PartnerKind, Twiin, Zorgviewer};
use crate::ids::{self, Bsn, Oid, OrgId};
use crate::jose::{self, JoseError, Jwks, VerifiedJws};
use crate::oauth::form::{Form, FormError};
use crate::oauth::grants::{CaseBinding, Grant, ZorgviewerAccess};
use crate::oauth::scope::{ScopeError, Scopes};

/// `grant_type` of the TA Notified Pull token request (RFC 7523).
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of SMART backend services.
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// `client_assertion_type` of RFC 7523.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Largest token request body (spec §6 step 2).
pub const MAX_TOKEN_BODY: usize = 64 * 1024;

/// The grants our token endpoint knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// RFC 7523 with a client assertion: Twiin partners.
    JwtBearer,
    /// SMART backend services: Zorgviewer partners.
    ClientCredentials,
}

impl GrantType {
    pub fn from_form(value: &str) -> Option<GrantType> {
        match value {
            GRANT_JWT_BEARER => Some(GrantType::JwtBearer),
            GRANT_CLIENT_CREDENTIALS => Some(GrantType::ClientCredentials),
            _ => None,
        }
    }

    /// The grants some partner kind uses ([`grant_of`]), for discovery.
    pub const SERVED: &'static [GrantType] = &[GrantType::JwtBearer, GrantType::ClientCredentials];

    pub fn name(self) -> &'static str {
        match self {
            GrantType::JwtBearer => GRANT_JWT_BEARER,
            GrantType::ClientCredentials => GRANT_CLIENT_CREDENTIALS,
        }
    }
}

/// The grant a partner of this kind uses at our token endpoint, if any.
pub fn grant_of(kind: &PartnerKind) -> Option<GrantType> {
    match kind {
        PartnerKind::Twiin(_) => Some(GrantType::JwtBearer),
        PartnerKind::Zorgviewer(_) => Some(GrantType::ClientCredentials),
        // Mitz brokers need no token: their certificate is their identity.
        PartnerKind::Mitz(_) => None,
        // Services we only call.
        PartnerKind::Prs(_) | PartnerKind::Nvi(_) => None,
    }
}

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

/// Whether a `jti` was used before (read only: the caller records it).
pub trait JtiLookup {
    fn used(&self, partner: &str, iss: &str, jti: &str) -> bool;
}

/// Which of the two assertions a fault or a `jti` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assertion {
    /// `client_assertion`: who the calling system is (faults → `invalid_client`).
    Client,
    /// `assertion`: organisations, patient, legal basis (faults → `invalid_grant`).
    Authorization,
}

impl Assertion {
    fn name(self) -> &'static str {
        match self {
            Assertion::Client => "client assertion",
            Assertion::Authorization => "authorization assertion",
        }
    }
}

/// What is wrong with one assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A `kid` the partner's key set does not hold (the caller refetches once).
    UnknownKid,
    /// No `kid` and not exactly one usable key, or a `kid` held twice.
    KidNotUsable,
    BadSignature,
    /// `none`, HMAC, unknown, or not in the partner's allow-list.
    AlgNotAllowed,
    /// Not a well-formed compact JWS, or a header we refuse (`typ`, `crit`).
    BadJws,
    Expired,
    NotYetValid,
    /// `exp` not after `iat`, or longer than the maximum lifetime.
    Lifetime,
    Audience,
    /// `iss` or (client assertion) `sub` not the partner's registered value.
    Issuer,
    /// Claims missing, malformed or of the wrong type.
    Claims,
    /// The `jti` was used before.
    Replay,
}

impl Fault {
    fn of_jose(e: &JoseError) -> Fault {
        match e {
            JoseError::UnknownKid { .. } => Fault::UnknownKid,
            JoseError::NoKid { .. } | JoseError::AmbiguousKid { .. } => Fault::KidNotUsable,
            JoseError::BadSignature { .. } => Fault::BadSignature,
            JoseError::AlgNotAllowed { .. }
            | JoseError::AlgNone
            | JoseError::AlgHmac { .. }
            | JoseError::AlgUnknown { .. }
            | JoseError::AlgKeyMismatch { .. } => Fault::AlgNotAllowed,
            _ => Fault::BadJws,
        }
    }

    fn of_claims(e: &ClaimError) -> Fault {
        match e {
            ClaimError::Expired => Fault::Expired,
            ClaimError::IssuedInFuture | ClaimError::NotYetValid => Fault::NotYetValid,
            ClaimError::LifetimeTooLong(_) | ClaimError::ExpBeforeIat => Fault::Lifetime,
            ClaimError::WrongAudience => Fault::Audience,
            ClaimError::WrongIssuer | ClaimError::WrongSubject => Fault::Issuer,
            ClaimError::Malformed(_)
            | ClaimError::Missing(_)
            | ClaimError::NotANumber(_)
            | ClaimError::TooLong(_) => Fault::Claims,
        }
    }
}

/// Why a token request was refused: decides the HTTP status, the RFC 6749
/// error code and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The TLS certificate maps to no configured partner.
    NoPartner,
    /// The partner's certificate, from an address its `ALLOW_FROM` does not list.
    AddressNotAllowed,
    /// The partner's kind uses no grant at our token endpoint.
    WrongKind,
    /// A grant we know, but not the one this partner's kind uses.
    GrantNotForKind,
    TooLarge,
    ContentType,
    DuplicateParameter,
    BadForm,
    MissingParameter,
    UnsupportedGrantType,
    ClientAssertionType,
    /// A `client_id` parameter that is not the client assertion's `sub`.
    ClientId,
    Client(Fault),
    Grant(Fault),
    /// The authorization assertion's `sub` is not this partner's organisation.
    Org,
    Authorizer,
    Patient,
    /// The authorization base was cancelled or has expired.
    BaseEnded,
    /// The authorization base was issued to another organisation.
    BaseOrg,
    /// The `patient` claim is not the patient of the authorization base.
    BasePatient,
    /// The client assertion of `client_credentials` has no usable
    /// `subject_organization_id` (an OID, bare or `urn:oid:`).
    SubjectOrganization,
    /// No `scope` parameter (`client_credentials`).
    ScopeMissing,
    /// A scope token that is malformed or unknown, or too many of them.
    InvalidScope,
    /// Every scope token was well-formed, but none is one we grant.
    ScopeNotGranted,
    /// The partner's keys or the replay cache could not be read.
    KeysUnavailable,
    /// The token or the audit record could not be stored.
    ServerError,
}

impl Reason {
    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self.error() {
            OAuthError::InvalidClient => 401,
            OAuthError::UnauthorizedClient => 403,
            OAuthError::TemporarilyUnavailable => 503,
            OAuthError::InvalidRequest if self == Reason::TooLarge => 413,
            _ => 400,
        }
    }

    /// The RFC 6749 `error` code.
    pub fn error(self) -> OAuthError {
        match self {
            Reason::NoPartner
            | Reason::AddressNotAllowed
            | Reason::ClientId
            | Reason::Client(_)
            | Reason::SubjectOrganization => OAuthError::InvalidClient,
            Reason::WrongKind | Reason::GrantNotForKind => OAuthError::UnauthorizedClient,
            Reason::TooLarge
            | Reason::ContentType
            | Reason::DuplicateParameter
            | Reason::BadForm
            | Reason::MissingParameter
            | Reason::ClientAssertionType => OAuthError::InvalidRequest,
            Reason::UnsupportedGrantType => OAuthError::UnsupportedGrantType,
            Reason::Grant(_)
            | Reason::Org
            | Reason::Authorizer
            | Reason::Patient
            | Reason::BaseEnded
            | Reason::BaseOrg
            | Reason::BasePatient => OAuthError::InvalidGrant,
            Reason::ScopeMissing | Reason::InvalidScope | Reason::ScopeNotGranted => {
                OAuthError::InvalidScope
            }
            Reason::KeysUnavailable | Reason::ServerError => OAuthError::TemporarilyUnavailable,
        }
    }

    /// A bounded label for metrics and the log.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoPartner => "no_partner",
            Reason::AddressNotAllowed => "address_not_allowed",
            Reason::WrongKind => "wrong_kind",
            Reason::GrantNotForKind => "grant_not_for_kind",
            Reason::TooLarge => "too_large",
            Reason::ContentType => "content_type",
            Reason::DuplicateParameter => "duplicate_parameter",
            Reason::BadForm => "bad_form",
            Reason::MissingParameter => "missing_parameter",
            Reason::UnsupportedGrantType => "unsupported_grant_type",
            Reason::ClientAssertionType => "client_assertion_type",
            Reason::ClientId => "client_id",
            Reason::Client(f) => match f {
                Fault::UnknownKid | Fault::KidNotUsable => "unknown_kid",
                Fault::BadSignature => "bad_signature",
                Fault::AlgNotAllowed => "alg_not_allowed",
                Fault::BadJws => "bad_jws",
                Fault::Expired => "expired",
                Fault::NotYetValid => "not_yet_valid",
                Fault::Lifetime => "lifetime",
                Fault::Audience => "audience",
                Fault::Issuer => "issuer",
                Fault::Claims => "claims",
                Fault::Replay => "replay",
            },
            Reason::Grant(f) => match f {
                Fault::UnknownKid | Fault::KidNotUsable => "grant_unknown_kid",
                Fault::BadSignature => "grant_bad_signature",
                Fault::AlgNotAllowed => "grant_alg_not_allowed",
                Fault::BadJws => "grant_bad_jws",
                Fault::Expired => "grant_expired",
                Fault::NotYetValid => "grant_not_yet_valid",
                Fault::Lifetime => "grant_lifetime",
                Fault::Audience => "grant_audience",
                Fault::Issuer => "grant_issuer",
                Fault::Claims => "grant_claims",
                Fault::Replay => "grant_replay",
            },
            Reason::Org => "org",
            Reason::Authorizer => "authorizer",
            Reason::Patient => "patient",
            Reason::BaseEnded => "base_ended",
            Reason::BaseOrg => "base_org",
            Reason::BasePatient => "base_patient",
            Reason::SubjectOrganization => "subject_organization",
            Reason::ScopeMissing => "scope_missing",
            Reason::InvalidScope => "invalid_scope",
            Reason::ScopeNotGranted => "scope_not_granted",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::ServerError => "server_error",
        }
    }

    /// The fault of a refused assertion, with which one it was.
    pub fn fault(self) -> Option<(Assertion, Fault)> {
        match self {
            Reason::Client(f) => Some((Assertion::Client, f)),
            Reason::Grant(f) => Some((Assertion::Authorization, f)),
            _ => None,
        }
    }
}

/// The RFC 6749 §5.2 error codes we answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 6749 §4.1.2.1's code, used here for our own failures (503).
    TemporarilyUnavailable,
}

impl OAuthError {
    pub fn code(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// A refused token request: the reason, and a description for
/// `error_description` that holds no patient data, token or assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub description: String,
}

impl Refusal {
    pub fn new(reason: Reason, description: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            description: description.into(),
        }
    }

    /// A `jti` found used when the caller recorded it (a concurrent replay).
    pub fn replayed(which: Assertion) -> Refusal {
        let reason = match which {
            Assertion::Client => Reason::Client(Fault::Replay),
            Assertion::Authorization => Reason::Grant(Fault::Replay),
        };
        Refusal::new(reason, format!("{}: jti was used before", which.name()))
    }

    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    pub fn error(&self) -> &'static str {
        self.reason.error().code()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            self.status(),
            self.error(),
            self.reason.label(),
            self.description
        )
    }
}

/// A request that passed steps 1–2: a known partner of a kind that may use
/// the grant it asks for, with the grant's parameters.
#[derive(Debug, Clone)]
pub struct Admitted<'a> {
    pub partner: &'a Partner,
    pub request: GrantRequest,
}

/// The parameters of one grant, as sent.
#[derive(Debug, Clone)]
pub enum GrantRequest {
    JwtBearer {
        client_assertion: String,
        assertion: String,
        /// The optional `client_id` parameter.
        client_id: Option<String>,
    },
    ClientCredentials {
        client_assertion: String,
        /// The `scope` parameter as sent; checked after the client ([`decide`]).
        scope: Option<String>,
        /// The optional `client_id` parameter.
        client_id: Option<String>,
    },
}

/// Steps 1–2: the partner the certificate maps to, the address it connects
/// from (`peer`, checked against the partner's `ALLOW_FROM`), its kind, and a
/// well-formed form with the parameters of the grant it asks for.
pub fn admit<'a>(
    partner: Option<&'a Partner>,
    peer: IpAddr,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Admitted<'a>, Refusal> {
    let partner = partner.ok_or_else(|| {
        Refusal::new(
            Reason::NoPartner,
            "the TLS client certificate does not belong to a configured partner",
        )
    })?;
    if !partner.allows_peer(peer) {
        return Err(Refusal::new(
            Reason::AddressNotAllowed,
            format!(
                "the TLS client certificate of partner {} is not accepted from {peer}",
                partner.name
            ),
        ));
    }
    let Some(allowed) = grant_of(&partner.kind) else {
        return Err(Refusal::new(
            Reason::WrongKind,
            format!(
                "partner {} is a {} partner and gets no token here",
                partner.name,
                partner.kind_name()
            ),
        ));
    };
    if body.len() > MAX_TOKEN_BODY {
        return Err(Refusal::new(
            Reason::TooLarge,
            "the request body is too large",
        ));
    }
    let media = content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(Refusal::new(
            Reason::ContentType,
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let form = Form::parse(body).map_err(|e| match e {
        FormError::Duplicate(_) => Refusal::new(Reason::DuplicateParameter, e.to_string()),
        _ => Refusal::new(Reason::BadForm, e.to_string()),
    })?;
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| missing("grant_type"))?;
    let Some(asked) = GrantType::from_form(grant_type) else {
        return Err(Refusal::new(
            Reason::UnsupportedGrantType,
            format!("grant_type must be {}", allowed.name()),
        ));
    };
    if asked != allowed {
        return Err(Refusal::new(
            Reason::GrantNotForKind,
            format!(
                "partner {} is a {} partner: use grant_type {}",
                partner.name,
                partner.kind_name(),
                allowed.name()
            ),
        ));
    }
    let request = match asked {
        GrantType::JwtBearer => jwt_bearer_form(&form)?,
        GrantType::ClientCredentials => client_credentials_form(&form)?,
    };
    Ok(Admitted { partner, request })
}

fn missing(parameter: &str) -> Refusal {
    Refusal::new(Reason::MissingParameter, format!("{parameter} is missing"))
}

/// A parameter that must be present and not empty.
fn present(form: &Form, name: &str) -> Result<String, Refusal> {
    form.get(name)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .ok_or_else(|| missing(name))
}

/// `client_assertion_type`, exactly RFC 7523's.
fn client_assertion_type(form: &Form) -> Result<(), Refusal> {
    match form.get("client_assertion_type") {
        None => Err(missing("client_assertion_type")),
        Some(t) if t != CLIENT_ASSERTION_TYPE => Err(Refusal::new(
            Reason::ClientAssertionType,
            format!("client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
        )),
        Some(_) => Ok(()),
    }
}

/// The parameters of RFC 7523 with a client assertion.
fn jwt_bearer_form(form: &Form) -> Result<GrantRequest, Refusal> {
    client_assertion_type(form)?;
    Ok(GrantRequest::JwtBearer {
        client_assertion: present(form, "client_assertion")?,
        assertion: present(form, "assertion")?,
        client_id: form.get("client_id").map(String::from),
    })
}

/// The parameters of SMART backend services (`client_credentials` with a
/// client assertion). The `scope` is kept as sent: its absence is an
/// `invalid_scope` once the client is known ([`decide`]).
fn client_credentials_form(form: &Form) -> Result<GrantRequest, Refusal> {
    client_assertion_type(form)?;
    Ok(GrantRequest::ClientCredentials {
        client_assertion: present(form, "client_assertion")?,
        scope: form.get("scope").map(String::from),
        client_id: form.get("client_id").map(String::from),
    })
}

/// What steps 3–6 need besides the request.
pub struct Context<'a> {
    /// Our token endpoint URL, the `aud` partners must use.
    pub token_endpoint: &'a str,
    /// Our organisations (URA, and AGB when we have one): valid `authorizer`s.
    pub our_orgs: &'a [OrgId],
    /// The partner's published keys.
    pub keys: &'a Jwks,
    pub bases: &'a dyn BaseRegistry,
    pub jtis: &'a dyn JtiLookup,
    /// SHA-256 of the DER of the TLS client certificate the request came
    /// over: the grant is bound to it (RFC 8705).
    pub cert_sha256: [u8; 32],
    pub now: i64,
}

/// A `jti` the caller must record before the token is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JtiUse {
    pub assertion: Assertion,
    pub iss: String,
    pub jti: String,
    /// When the replay-cache entry may be forgotten.
    pub forget_after: i64,
}

/// A token to issue: the grant it carries and what the caller records.
#[derive(Debug, Clone)]
pub struct Decision {
    pub grant: Grant,
    /// Client assertion first, then the authorization assertion (jwt-bearer only).
    pub jtis: Vec<JtiUse>,
    /// `user_id` of the authorization assertion, for the audit trail only.
    pub user_id: Option<String>,
}

/// Steps 3–6 of an admitted request.
pub fn decide(admitted: &Admitted<'_>, cx: &Context<'_>) -> Result<Decision, Refusal> {
    let decision = match (&admitted.request, &admitted.partner.kind) {
        (
            GrantRequest::JwtBearer {
                client_assertion,
                assertion,
                client_id,
            },
            PartnerKind::Twiin(twiin),
        ) => jwt_bearer(
            admitted.partner,
            twiin,
            client_assertion,
            assertion,
            client_id.as_deref(),
            cx,
        ),
        (
            GrantRequest::ClientCredentials {
                client_assertion,
                scope,
                client_id,
            },
            PartnerKind::Zorgviewer(zorgviewer),
        ) => client_credentials(
            admitted.partner,
            zorgviewer,
            client_assertion,
            scope.as_deref(),
            client_id.as_deref(),
            cx,
        ),
        // `admit` pairs each request with the kind that uses it.
        (GrantRequest::JwtBearer { .. } | GrantRequest::ClientCredentials { .. }, _) => {
            Err(Refusal::new(
                Reason::GrantNotForKind,
                format!(
                    "partner {} is a {} partner",
                    admitted.partner.name,
                    admitted.partner.kind_name()
                ),
            ))
        }
    }?;
    Ok(Decision {
        grant: decision.grant.bound_to(cx.cert_sha256),
        ..decision
    })
}

/// Our token endpoint and the partner's aliases: the accepted `aud` values.
fn audiences(policy: &AssertionPolicy, cx: &Context<'_>) -> Vec<String> {
    let mut audiences = vec![cx.token_endpoint.to_string()];
    audiences.extend(policy.audiences.iter().cloned());
    audiences
}

fn jti_use(which: Assertion, c: &Claims) -> JtiUse {
    JtiUse {
        assertion: which,
        iss: c.iss.clone(),
        jti: c.jti.clone(),
        forget_after: assertion::claims::replay_horizon(c),
    }
}

/// Steps 3–6 of SMART backend services: the client assertion with its IUA
/// claims, then the scope.
fn client_credentials(
    partner: &Partner,
    zorgviewer: &Zorgviewer,
    client_jwt: &str,
    scope: Option<&str>,
    client_id: Option<&str>,
    cx: &Context<'_>,
) -> Result<Decision, Refusal> {
    let policy = &zorgviewer.assertions;
    let audiences = audiences(policy, cx);
    // 3–4. Client assertion: signature, claims, time, audience, replay.
    let (client, verified) = verified_claims(
        Assertion::Client,
        &partner.name,
        client_jwt,
        &policy.accept_algs,
        &Expectations {
            issuer: &policy.issuer,
            subject: Some(&policy.client_id),
            audiences: &audiences,
        },
        cx,
    )?;
    if client_id.is_some_and(|id| id != client.sub) {
        return Err(Refusal::new(
            Reason::ClientId,
            "client_id does not match the client assertion sub",
        ));
    }
    // 5. The IUA claims: who the Zorgviewer asks for.
    let iua = assertion::claims::parse_iua(verified.payload()).map_err(|e| {
        Refusal::new(
            Reason::Client(Fault::Claims),
            format!("client assertion: {e}"),
        )
    })?;
    let organization = match iua.subject_organization_id.as_deref() {
        None => {
            return Err(Refusal::new(
                Reason::SubjectOrganization,
                "client assertion: subject_organization_id is missing",
            ));
        }
        Some(text) => Oid::parse(text).ok_or_else(|| {
            Refusal::new(
                Reason::SubjectOrganization,
                "client assertion: subject_organization_id is not an OID (urn:oid:<oid> or <oid>)",
            )
        })?,
    };
    // 6. The scope, once the client is known.
    let scopes = Scopes::grant(scope).map_err(|e| {
        let reason = match e {
            ScopeError::Missing => Reason::ScopeMissing,
            ScopeError::TooMany(_) | ScopeError::Malformed(..) => Reason::InvalidScope,
            ScopeError::NothingGranted => Reason::ScopeNotGranted,
        };
        Refusal::new(reason, e.to_string())
    })?;
    let access = ZorgviewerAccess::new(
        scopes,
        organization,
        iua.subject_organization,
        iua.subject_name,
        iua.subject_role,
    );
    Ok(Decision {
        grant: Grant::zorgviewer(&partner.name, &client.sub, access),
        jtis: vec![jti_use(Assertion::Client, &client)],
        user_id: None,
    })
}

/// Steps 3–6 of the TA Notified Pull grant.
fn jwt_bearer(
    partner: &Partner,
    twiin: &Twiin,
    client_jwt: &str,
    authz_jwt: &str,
    client_id: Option<&str>,
    cx: &Context<'_>,
) -> Result<Decision, Refusal> {
    let policy = &twiin.assertions;
    let audiences = audiences(policy, cx);
    let check = |which: Assertion, jwt: &str, subject: Option<&str>| {
        verified_claims(
            which,
            &partner.name,
            jwt,
            &policy.accept_algs,
            &Expectations {
                issuer: &policy.issuer,
                subject,
                audiences: &audiences,
            },
            cx,
        )
        .map(|(claims, _)| claims)
    };

    // 3–4. Client assertion: signature, claims, time, audience, replay.
    let client = check(Assertion::Client, client_jwt, Some(&policy.client_id))?;
    if client_id.is_some_and(|id| id != client.sub) {
        return Err(Refusal::new(
            Reason::ClientId,
            "client_id does not match the client assertion sub",
        ));
    }
    // 5. Authorization assertion: the same checks, against the same keys.
    let authz = check(Assertion::Authorization, authz_jwt, None)?;

    // 6. Authorization claims.
    let requesting = ids::parse_org(&authz.sub, twiin.id_scheme).ok_or_else(|| {
        Refusal::new(
            Reason::Org,
            "authorization assertion: sub is not an organisation id",
        )
    })?;
    if requesting != twiin.org {
        return Err(Refusal::new(
            Reason::Org,
            format!(
                "authorization assertion: partner {} may not act for that organisation",
                partner.name
            ),
        ));
    }
    let authorizer = match authz.authorizer.as_deref() {
        Some(a) => match ids::parse_org(a, twiin.id_scheme) {
            Some(org) if cx.our_orgs.contains(&org) => Some(org),
            _ => {
                return Err(Refusal::new(
                    Reason::Authorizer,
                    "authorization assertion: authorizer is not our organisation",
                ));
            }
        },
        None if twiin.address_system => None,
        None => {
            return Err(Refusal::new(
                Reason::Authorizer,
                "authorization assertion: authorizer is missing",
            ));
        }
    };
    let patient = match authz.patient.as_deref() {
        None => None,
        Some(p) => Some(Bsn::from_patient_claim(p).ok_or_else(|| {
            Refusal::new(
                Reason::Patient,
                "authorization assertion: patient is not a valid BSN OID",
            )
        })?),
    };
    let lookup = match authz.authorization_base.as_deref() {
        Some(base) => (base, cx.bases.lookup(&partner.name, base, cx.now)),
        None => ("", BaseLookup::NotIssued),
    };
    let grant = match lookup {
        // No base, or one we never issued to this partner: a notify token
        // (spec §6 step 6: a base in the notify-token request is ignored).
        (_, BaseLookup::NotIssued) => {
            Grant::notify(&partner.name, &client.sub, requesting, authorizer, patient)
        }
        (_, BaseLookup::Ended) => {
            return Err(Refusal::new(
                Reason::BaseEnded,
                "authorization_base cancelled or expired",
            ));
        }
        (base, BaseLookup::Live(binding)) => {
            if binding.owner.as_ref().is_some_and(|o| *o != requesting) {
                return Err(Refusal::new(
                    Reason::BaseOrg,
                    "authorization_base was not issued to the requesting organisation",
                ));
            }
            if patient.as_ref().is_some_and(|p| *p != binding.patient) {
                return Err(Refusal::new(
                    Reason::BasePatient,
                    "patient does not match the authorization_base",
                ));
            }
            Grant::pull(
                &partner.name,
                &client.sub,
                requesting,
                authorizer,
                CaseBinding {
                    authorization_base: base.to_string(),
                    case_id: binding.case_id,
                },
                binding.patient,
            )
        }
    };
    Ok(Decision {
        grant,
        jtis: vec![
            jti_use(Assertion::Client, &client),
            jti_use(Assertion::Authorization, &authz),
        ],
        user_id: authz.user_id.clone(),
    })
}

/// Signature, claims, time rules, audience, then the `jti` lookup; the
/// claims and the verified JWS (for claims beyond [`Claims`]).
fn verified_claims(
    which: Assertion,
    partner: &str,
    jwt: &str,
    algs: &[jose::Alg],
    want: &Expectations<'_>,
    cx: &Context<'_>,
) -> Result<(Claims, VerifiedJws), Refusal> {
    let refuse = |fault: Fault, detail: &dyn fmt::Display| {
        let reason = match which {
            Assertion::Client => Reason::Client(fault),
            Assertion::Authorization => Reason::Grant(fault),
        };
        Refusal::new(reason, format!("{}: {detail}", which.name()))
    };
    let verified =
        jose::verify_compact(jwt, cx.keys, algs).map_err(|e| refuse(Fault::of_jose(&e), &e))?;
    let claims =
        assertion::claims::parse(verified.payload()).map_err(|e| refuse(Fault::Claims, &e))?;
    assertion::claims::check(&claims, want, cx.now)
        .map_err(|e| refuse(Fault::of_claims(&e), &e))?;
    if cx.jtis.used(partner, &claims.iss, &claims.jti) {
        return Err(refuse(Fault::Replay, &"jti was used before"));
    }
    Ok((claims, verified))
}

#[cfg(test)]
mod tests;
