//! The request context of a Zorgviewer FHIR request (spec zorgviewer.md §4,
//! DESIGN.md "Zorgviewer"): who asks, on whose behalf, and the ids that tie
//! our audit record to Zorgviewer's log. Pure: [`RequestContext::from_headers`]
//! takes the headers, the partner's keys, the token's organisation and
//! `now`, and returns the checked context or a [`ContextRefusal`].
//!
//! Headers read (names in any case; an empty value counts as absent; each at
//! most once, in visible ASCII, else 400):
//!
//! | header | rule | in the context |
//! |---|---|---|
//! | `X-Request-Id` | 1–64 of `A-Za-z0-9_-`, else 400 | whether it was sent; the id itself is the caller's (`http::Request::request_id`, which the server echoes and generates when missing) |
//! | `X-Correlation-Id` | 1–64 of `A-Za-z0-9_-`, else 400 | echoed by [`echo_headers`] and on refusals |
//! | `X-ZV-Subject-Organization-Id` | an OID, bare or `urn:oid:`, else 400 | must be the token's organisation |
//! | `X-ZV-Subject-Organization-Ura` | 8 digits, else 400 | when the organisation OID is a URA OID, its number |
//! | `X-ZV-Subject-Id` | 1–128 visible ASCII, else 400 | the user |
//! | `X-ZV-Subject-Role` | 1–64 visible ASCII, else 400 | the user's role |
//! | `AORTA-ID` | an Epic form ([`super::aorta`]), at most 128 characters, else 400 | parsed; `usr`, `rol`, `org` take part in the agreement |
//! | `X-ZV-Context` | a compact JWS verified with the partner's keys, else 403 | `verified` |
//!
//! Malformed ids are refused, not dropped: they are what ties this request
//! to Zorgviewer's log, and an id we could not record as sent would break
//! that link without anyone noticing. Zorgviewer sends 12-character NanoIDs;
//! the 1–64 rule admits any sane id (a UUID too). `rid`/`cid` of an
//! `AORTA-ID` are recorded with it and not compared with these headers.
//!
//! `X-ZV-Context`: asymmetric signatures only (the IG's HS256 sample and
//! `none` are refused, as `jose` refuses them everywhere), with the
//! algorithms the caller accepts for the partner. Claims, bounded:
//! `subject_organization_id` and `subject_id` required, `subject_role`
//! optional, strings; `exp`, `iat`, `nbf` checked when present: refused
//! when `exp` has passed or lies more than 5 minutes ahead, when `iat` is
//! older than 5 minutes or in the future, when `nbf` is in the future, all
//! with 60 s of skew except the 5-minute age itself. Any failure is a 403
//! `security` (spec §4). An unknown `kid` is a refusal the caller may retry
//! once after refetching the partner's JWKS ([`ContextRefusal::is_unknown_key`]).
//!
//! Agreement, 403 `forbidden` (DESIGN.md: 403 where spec §4 said 400):
//! - the organisation of the context, the header and `AORTA-ID` `org` must
//!   each be the token's `subject_organization_id`, compared without
//!   `urn:oid:`; when that organisation is a URA OID, the URA header must
//!   be its number;
//! - with a verified context, it is the authority for the user and role: a
//!   header or `AORTA-ID` member may only repeat what it says, and naming a
//!   role the context does not hold is a disagreement too;
//! - without one, the header and `AORTA-ID` must agree with each other, and
//!   the context is marked unverified (the audit trail says so).
//!
//! Refusal texts name headers, members and rules, never a value (user ids
//! are personal data): [`ContextRefusal::refusal`] is safe to answer and its
//! reason safe to log, with [`ContextRefusal::label`] as the bounded log key.

use std::borrow::Cow;
use std::fmt;

use heapless::String as HString;
use serde::Deserialize;

use super::aorta::{self, AortaIdError, EpicAortaId};
use super::fields;
use crate::assertion::claims::SKEW_SECS;
use crate::fhir::{IssueType, Refusal};
use crate::ids::URA_OID_ROOT;
use crate::jose::{self, Alg, JoseError, Jwks};

/// Oldest `iat`, and farthest `exp`, of an `X-ZV-Context` (DESIGN.md: 5 min).
pub const MAX_CONTEXT_AGE_SECS: i64 = 300;
/// Largest `X-ZV-Context` claims payload read.
pub const MAX_CLAIMS_LEN: usize = 4096;

/// A header of the request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    RequestId,
    CorrelationId,
    OrganizationId,
    OrganizationUra,
    SubjectId,
    SubjectRole,
    Context,
    AortaId,
}

impl Header {
    /// Every header read, in the order they are checked.
    pub const ALL: [Header; 8] = [
        Header::RequestId,
        Header::CorrelationId,
        Header::AortaId,
        Header::OrganizationId,
        Header::OrganizationUra,
        Header::SubjectId,
        Header::SubjectRole,
        Header::Context,
    ];

    /// The header's name as the IG writes it (matched in any case).
    pub fn name(self) -> &'static str {
        match self {
            Header::RequestId => "X-Request-Id",
            Header::CorrelationId => "X-Correlation-Id",
            Header::OrganizationId => "X-ZV-Subject-Organization-Id",
            Header::OrganizationUra => "X-ZV-Subject-Organization-Ura",
            Header::SubjectId => "X-ZV-Subject-Id",
            Header::SubjectRole => "X-ZV-Subject-Role",
            Header::Context => "X-ZV-Context",
            Header::AortaId => "AORTA-ID",
        }
    }

    /// The rule a value must meet: the reason of its 400.
    fn rule(self) -> &'static str {
        match self {
            Header::RequestId => "X-Request-Id must be 1 to 64 characters of A-Za-z0-9_-",
            Header::CorrelationId => "X-Correlation-Id must be 1 to 64 characters of A-Za-z0-9_-",
            Header::OrganizationId => {
                "X-ZV-Subject-Organization-Id must be an OID, bare or urn:oid:"
            }
            Header::OrganizationUra => "X-ZV-Subject-Organization-Ura must be 8 digits",
            Header::SubjectId => "X-ZV-Subject-Id must be 1 to 128 visible ASCII characters",
            Header::SubjectRole => "X-ZV-Subject-Role must be 1 to 64 visible ASCII characters",
            Header::Context => "X-ZV-Context must be a compact JWS",
            Header::AortaId => "AORTA-ID must be one of the Epic forms",
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a value of the context came from, for a disagreement's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An individual header.
    Header(Header),
    /// A member of `AORTA-ID` (`usr`, `rol`, `org`).
    AortaId(&'static str),
    /// A claim of the verified `X-ZV-Context`.
    Context(&'static str),
    /// The bearer token's `subject_organization_id`.
    Token,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Header(h) => f.write_str(h.name()),
            Source::AortaId(member) => write!(f, "AORTA-ID {member}"),
            Source::Context(claim) => write!(f, "X-ZV-Context {claim}"),
            Source::Token => f.write_str("the token's subject_organization_id"),
        }
    }
}

/// What the caller knows about the request besides its headers.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// This request's id as the server echoes it (`http::Request::request_id`:
    /// the partner's `X-Request-Id` when it sent an acceptable one, else
    /// generated).
    pub request_id: &'a str,
    /// The partner's JWKS.
    pub keys: &'a Jwks,
    /// The algorithms accepted from the partner.
    pub algs: &'a [Alg],
    /// The `subject_organization_id` of the bearer token's grant, as sent
    /// (bare or `urn:oid:`).
    pub token_org: &'a str,
    /// Unix seconds.
    pub now: i64,
}

/// The checked request context: what the audit record needs. Only
/// [`RequestContext::from_headers`] makes one. `Debug` does not print the
/// user.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestContext {
    request_id: String,
    request_id_sent: bool,
    correlation_id: Option<String>,
    aorta_id: Option<EpicAortaId>,
    organization: String,
    ura: Option<String>,
    subject_id: Option<String>,
    subject_role: Option<String>,
    verified: bool,
}

impl RequestContext {
    /// Reads and checks the context of one request (see the module docs for
    /// the rules, in their order). `headers` are the request's fields as
    /// `http::Request` holds them; names are matched in any case.
    pub fn from_headers(
        headers: &[(String, Vec<u8>)],
        expect: &Expect<'_>,
    ) -> Result<RequestContext, ContextRefusal> {
        check(headers, expect).map_err(|problem| ContextRefusal {
            problem,
            correlation_id: echoable_correlation_id(headers),
        })
    }

    /// This request's id (the one the server echoes).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Whether the partner sent `X-Request-Id` (else the server generated it).
    pub fn request_id_sent(&self) -> bool {
        self.request_id_sent
    }

    /// `X-Correlation-Id`, when sent.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// `AORTA-ID`, parsed, when sent.
    pub fn aorta_id(&self) -> Option<&EpicAortaId> {
        self.aorta_id.as_ref()
    }

    /// The requesting organisation's bare OID: the token's, which every
    /// other source agreed with.
    pub fn organization_oid(&self) -> &str {
        &self.organization
    }

    /// `X-ZV-Subject-Organization-Ura`, when sent.
    pub fn organization_ura(&self) -> Option<&str> {
        self.ura.as_deref()
    }

    /// The user id, when any source named one. Personal data: for the audit
    /// trail, not the log.
    pub fn subject_id(&self) -> Option<&str> {
        self.subject_id.as_deref()
    }

    /// The user's role, when any source named one.
    pub fn subject_role(&self) -> Option<&str> {
        self.subject_role.as_deref()
    }

    /// True when a signed `X-ZV-Context` vouched for the user and role;
    /// false means they come from unsigned headers ("context unverified").
    pub fn verified(&self) -> bool {
        self.verified
    }
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("request_id", &self.request_id)
            .field("request_id_sent", &self.request_id_sent)
            .field("correlation_id", &self.correlation_id)
            .field("aorta_id", &self.aorta_id)
            .field("organization", &self.organization)
            .field("ura", &self.ura)
            .field("subject_id", &self.subject_id.as_ref().map(|_| "***"))
            .field("subject_role", &self.subject_role)
            .field("verified", &self.verified)
            .finish()
    }
}

/// The headers an answer to this request carries for its context:
/// `X-Correlation-Id` when the partner sent one. `X-Request-Id` is not
/// among them: the server writes it on every answer (`http::wire`), and
/// drops a handler's.
pub fn echo_headers(ctx: &RequestContext) -> Vec<(&'static str, String)> {
    ctx.correlation_id
        .iter()
        .map(|id| (Header::CorrelationId.name(), id.clone()))
        .collect()
}

/// A refused request context: what to answer, what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRefusal {
    problem: Problem,
    correlation_id: Option<String>,
}

/// Why a request context was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// 400: a header sent more than once.
    Repeated(Header),
    /// 400: a header value with bytes other than visible ASCII, space and tab.
    NotText(Header),
    /// 400: a header value that breaks its rule.
    Malformed(Header),
    /// 400: `AORTA-ID` too long or not an Epic form.
    AortaId(AortaIdError),
    /// 403: `X-ZV-Context` did not verify.
    Signature(SignatureFault),
    /// 403: `X-ZV-Context` claims missing or malformed; the text names the
    /// claim.
    Claims(&'static str),
    /// 403: `X-ZV-Context` outside its time window.
    Time(TimeFault),
    /// 403: two sources name different values.
    Disagrees(Source, Source),
    /// 403: a source names a value the verified context does not hold.
    NotInContext(Source, Source),
}

/// Why `X-ZV-Context` did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFault {
    /// `alg: none`.
    AlgNone,
    /// An HMAC algorithm (the IG's HS256 sample).
    AlgHmac,
    /// An algorithm not accepted from this partner (named when we know it).
    AlgNotAccepted(Option<Alg>),
    /// A `kid` not in the partner's key set: refetch once, then refuse.
    UnknownKey,
    /// No key, or no single key, of the set fits the header.
    KeyChoice,
    /// The signature does not verify.
    Invalid,
    /// Not a well-formed compact JWS within the size limit.
    Malformed,
}

impl SignatureFault {
    fn of(e: &JoseError) -> SignatureFault {
        match e {
            JoseError::AlgNone => SignatureFault::AlgNone,
            JoseError::AlgHmac { .. } => SignatureFault::AlgHmac,
            JoseError::AlgNotAllowed { alg } => SignatureFault::AlgNotAccepted(Some(*alg)),
            JoseError::AlgUnknown { .. } => SignatureFault::AlgNotAccepted(None),
            JoseError::UnknownKid { .. } => SignatureFault::UnknownKey,
            JoseError::NoKid { .. }
            | JoseError::AmbiguousKid { .. }
            | JoseError::AlgKeyMismatch { .. } => SignatureFault::KeyChoice,
            JoseError::BadSignature { .. } => SignatureFault::Invalid,
            _ => SignatureFault::Malformed,
        }
    }
}

/// Why `X-ZV-Context` is outside its time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFault {
    /// `exp` has passed (beyond the skew).
    Expired,
    /// `exp` is more than 5 minutes (and the skew) ahead.
    ExpiresTooLate,
    /// `iat` is more than 5 minutes ago.
    TooOld,
    /// `iat` or `nbf` is in the future (beyond the skew).
    NotYetValid,
    /// `exp` is not after `iat`.
    ExpBeforeIat,
}

impl ContextRefusal {
    /// Why.
    pub fn problem(&self) -> Problem {
        self.problem
    }

    /// 400 for a malformed header or `AORTA-ID`, 403 for the context and
    /// for disagreements.
    pub fn status(&self) -> u16 {
        match self.problem {
            Problem::Repeated(_)
            | Problem::NotText(_)
            | Problem::Malformed(_)
            | Problem::AortaId(_) => 400,
            Problem::Signature(_)
            | Problem::Claims(_)
            | Problem::Time(_)
            | Problem::Disagrees(..)
            | Problem::NotInContext(..) => 403,
        }
    }

    /// The partner's `X-Correlation-Id`, when it sent a single valid one
    /// (the refusal echoes it; the audit record names it).
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// True for a `kid` the partner's key set does not hold: the caller
    /// refetches the JWKS once and checks again.
    pub fn is_unknown_key(&self) -> bool {
        self.problem == Problem::Signature(SignatureFault::UnknownKey)
    }

    /// A bounded key for the log and metrics (`zv_context_alg_hmac`, …).
    pub fn label(&self) -> &'static str {
        match self.problem {
            Problem::Repeated(_) => "zv_header_repeated",
            Problem::NotText(_) => "zv_header_not_text",
            Problem::Malformed(_) => "zv_header_malformed",
            Problem::AortaId(AortaIdError::TooLong) => "aorta_id_too_long",
            Problem::AortaId(AortaIdError::Malformed(_)) => "aorta_id_malformed",
            Problem::Signature(fault) => match fault {
                SignatureFault::AlgNone => "zv_context_alg_none",
                SignatureFault::AlgHmac => "zv_context_alg_hmac",
                SignatureFault::AlgNotAccepted(_) => "zv_context_alg_not_accepted",
                SignatureFault::UnknownKey => "zv_context_unknown_kid",
                SignatureFault::KeyChoice => "zv_context_key",
                SignatureFault::Invalid => "zv_context_signature",
                SignatureFault::Malformed => "zv_context_malformed",
            },
            Problem::Claims(_) => "zv_context_claims",
            Problem::Time(fault) => match fault {
                TimeFault::Expired => "zv_context_expired",
                TimeFault::ExpiresTooLate => "zv_context_exp_too_late",
                TimeFault::TooOld => "zv_context_too_old",
                TimeFault::NotYetValid => "zv_context_not_yet_valid",
                TimeFault::ExpBeforeIat => "zv_context_exp_before_iat",
            },
            Problem::Disagrees(..) => "zv_subject_disagrees",
            Problem::NotInContext(..) => "zv_subject_not_in_context",
        }
    }

    /// The reason: names headers, claims and rules, never a value; safe to
    /// log and to answer.
    pub fn reason(&self) -> Cow<'static, str> {
        let fixed = |s: &'static str| Cow::Borrowed(s);
        match self.problem {
            Problem::Repeated(h) => Cow::Owned(format!("{h} is sent more than once")),
            Problem::NotText(h) => Cow::Owned(format!(
                "{h} holds bytes other than visible ASCII, space and tab"
            )),
            Problem::Malformed(h) => fixed(h.rule()),
            Problem::AortaId(e) => Cow::Owned(e.to_string()),
            Problem::Signature(fault) => match fault {
                SignatureFault::AlgNone => fixed(
                    "X-ZV-Context alg \"none\" is never accepted: the context must be signed with the partner's asymmetric key",
                ),
                SignatureFault::AlgHmac => fixed(
                    "X-ZV-Context is signed with an hmac algorithm (HS256, HS384, HS512), never accepted: the context must be signed with the partner's asymmetric key",
                ),
                SignatureFault::AlgNotAccepted(Some(alg)) => Cow::Owned(format!(
                    "X-ZV-Context alg {alg} is not accepted from this partner"
                )),
                SignatureFault::AlgNotAccepted(None) => {
                    fixed("X-ZV-Context alg is not a supported asymmetric algorithm")
                }
                SignatureFault::UnknownKey => {
                    fixed("X-ZV-Context kid is not in the partner's key set")
                }
                SignatureFault::KeyChoice => fixed(
                    "X-ZV-Context names no single key of the partner's key set that fits its alg",
                ),
                SignatureFault::Invalid => {
                    fixed("X-ZV-Context signature does not verify with the partner's key")
                }
                SignatureFault::Malformed => fixed(
                    "X-ZV-Context is not a well-formed compact JWS (at most 16 KiB, a JSON header without crit, typ JWT if any)",
                ),
            },
            Problem::Claims(why) => fixed(why),
            Problem::Time(fault) => fixed(match fault {
                TimeFault::Expired => "X-ZV-Context has expired",
                TimeFault::ExpiresTooLate => "X-ZV-Context exp is more than 5 minutes ahead",
                TimeFault::TooOld => "X-ZV-Context iat is more than 5 minutes ago",
                TimeFault::NotYetValid => "X-ZV-Context iat or nbf is in the future",
                TimeFault::ExpBeforeIat => "X-ZV-Context exp is not after iat",
            }),
            Problem::Disagrees(a, b) => Cow::Owned(format!("{a} disagrees with {b}")),
            Problem::NotInContext(a, b) => {
                Cow::Owned(format!("{a} is sent but the verified {b} is absent"))
            }
        }
    }

    /// The FHIR refusal: 400 `invalid`/`value` or 403 `security`/`forbidden`
    /// with [`Self::reason`] as diagnostics, and `X-Correlation-Id` echoed
    /// when the partner sent a valid one.
    pub fn refusal(&self) -> Refusal {
        let code = match self.problem {
            Problem::Repeated(_) | Problem::NotText(_) => IssueType::Invalid,
            Problem::Malformed(_) | Problem::AortaId(_) => IssueType::Value,
            Problem::Signature(_) | Problem::Claims(_) | Problem::Time(_) => IssueType::Security,
            Problem::Disagrees(..) | Problem::NotInContext(..) => IssueType::Forbidden,
        };
        let refusal = Refusal::new(self.status(), code, self.reason());
        match &self.correlation_id {
            Some(id) => refusal.header(Header::CorrelationId.name(), id.clone()),
            None => refusal,
        }
    }
}

impl fmt::Display for ContextRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for ContextRefusal {}

/// The whole check, in the order of the module docs.
fn check(headers: &[(String, Vec<u8>)], expect: &Expect<'_>) -> Result<RequestContext, Problem> {
    let mut values = [None; Header::ALL.len()];
    for (slot, header) in values.iter_mut().zip(Header::ALL) {
        *slot = single(headers, header)?;
    }
    let [
        request_id,
        correlation,
        aorta,
        org,
        ura,
        subject,
        role,
        context,
    ] = values;
    let request_id = valid(request_id, Header::RequestId, fields::is_id)?;
    let correlation = valid(correlation, Header::CorrelationId, fields::is_id)?;
    let aorta = aorta
        .map(aorta::parse)
        .transpose()
        .map_err(Problem::AortaId)?;
    let org = match org {
        None => None,
        Some(o) => Some(fields::bare_oid(o).ok_or(Problem::Malformed(Header::OrganizationId))?),
    };
    let ura = valid(ura, Header::OrganizationUra, fields::is_ura)?;
    let subject = valid(subject, Header::SubjectId, fields::is_subject_id)?;
    let role = valid(role, Header::SubjectRole, fields::is_role)?;
    let claims = context
        .map(|token| ContextClaims::verify(token, expect))
        .transpose()?;

    let token_org = fields::strip_urn_oid(expect.token_org.trim());
    let a = aorta.as_ref();
    let organization = agreed(
        Some((Source::Token, Some(token_org))),
        &[
            (
                Source::Context("subject_organization_id"),
                claims.as_ref().map(|c| c.organization.as_str()),
            ),
            (Source::Header(Header::OrganizationId), org),
            (Source::AortaId("org"), a.and_then(EpicAortaId::org)),
        ],
    )?
    .unwrap_or_default();
    if let (Some(ura), Some(number)) = (ura, ura_of(&organization)) {
        if ura.trim_start_matches('0') != number.trim_start_matches('0') {
            return Err(Problem::Disagrees(
                Source::Header(Header::OrganizationUra),
                Source::Token,
            ));
        }
    }
    let subject_id = agreed(
        claims
            .as_ref()
            .map(|c| (Source::Context("subject_id"), Some(c.subject_id.as_str()))),
        &[
            (Source::Header(Header::SubjectId), subject),
            (Source::AortaId("usr"), a.and_then(EpicAortaId::user)),
        ],
    )?;
    let subject_role = agreed(
        claims
            .as_ref()
            .map(|c| (Source::Context("subject_role"), c.role.as_deref())),
        &[
            (Source::Header(Header::SubjectRole), role),
            (Source::AortaId("rol"), a.and_then(EpicAortaId::role)),
        ],
    )?;
    Ok(RequestContext {
        request_id: expect.request_id.to_owned(),
        request_id_sent: request_id.is_some(),
        correlation_id: correlation.map(str::to_owned),
        aorta_id: aorta,
        organization,
        ura: ura.map(str::to_owned),
        subject_id,
        subject_role,
        verified: claims.is_some(),
    })
}

/// `value` when absent or meeting `ok`, else the header's 400.
fn valid(
    value: Option<&str>,
    header: Header,
    ok: fn(&str) -> bool,
) -> Result<Option<&str>, Problem> {
    match value {
        Some(v) if !ok(v) => Err(Problem::Malformed(header)),
        _ => Ok(value),
    }
}

/// The one value of header `header`: `None` when absent or empty; refused
/// when repeated or not text.
fn single(headers: &[(String, Vec<u8>)], header: Header) -> Result<Option<&str>, Problem> {
    let mut found = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(header.name()));
    let Some((_, value)) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(Problem::Repeated(header));
    }
    if !value
        .iter()
        .all(|b| *b == b'\t' || (0x20..=0x7e).contains(b))
    {
        return Err(Problem::NotText(header));
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| Problem::NotText(header))?
        .trim_matches([' ', '\t']);
    Ok((!text.is_empty()).then_some(text))
}

/// The `X-Correlation-Id` a refusal may echo: the single one, when valid
/// (also for a refusal made before the context is checked, such as a 401).
pub fn echoable_correlation_id(headers: &[(String, Vec<u8>)]) -> Option<String> {
    single(headers, Header::CorrelationId)
        .ok()
        .flatten()
        .filter(|id| fields::is_id(id))
        .map(str::to_owned)
}

/// The value every source agrees on. With an authority (the token for the
/// organisation, the verified context for the user and role) every other
/// source present must equal its value, and none may be present when the
/// authority has none; without one, the sources present must equal each
/// other.
fn agreed(
    authority: Option<(Source, Option<&str>)>,
    others: &[(Source, Option<&str>)],
) -> Result<Option<String>, Problem> {
    let mut present = others
        .iter()
        .filter_map(|(source, value)| value.map(|v| (*source, v)));
    let mut first = match authority {
        Some((source, None)) => {
            return match present.next() {
                Some((other, _)) => Err(Problem::NotInContext(other, source)),
                None => Ok(None),
            };
        }
        Some((source, Some(value))) => Some((source, value)),
        None => None,
    };
    for (source, value) in present {
        match first {
            Some((by, agreed)) if agreed != value => {
                return Err(Problem::Disagrees(source, by));
            }
            Some(_) => {}
            None => first = Some((source, value)),
        }
    }
    Ok(first.map(|(_, value)| value.to_owned()))
}

/// The URA number of a URA OID (`2.16.528.1.1007.3.3.<digits>`).
fn ura_of(oid: &str) -> Option<&str> {
    oid.strip_prefix(URA_OID_ROOT)?
        .strip_prefix('.')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The claims of a verified `X-ZV-Context`.
struct ContextClaims {
    organization: String,
    subject_id: String,
    role: Option<String>,
}

/// The claims as read: bounded strings, numbers as numbers.
#[derive(Deserialize)]
struct RawClaims {
    subject_organization_id: Option<HString<{ fields::MAX_OID_LEN + 8 }>>,
    subject_id: Option<HString<{ fields::MAX_SUBJECT_ID_LEN }>>,
    subject_role: Option<HString<{ fields::MAX_ROLE_LEN }>>,
    exp: Option<f64>,
    iat: Option<f64>,
    nbf: Option<f64>,
}

impl ContextClaims {
    /// Signature, claims and time window of `token`.
    fn verify(token: &str, expect: &Expect<'_>) -> Result<ContextClaims, Problem> {
        let jws = jose::verify_compact(token, expect.keys, expect.algs)
            .map_err(|e| Problem::Signature(SignatureFault::of(&e)))?;
        let raw = parse_claims(jws.payload())?;
        check_time(&raw, expect.now)?;
        let organization = raw.subject_organization_id.ok_or(Problem::Claims(
            "X-ZV-Context claim subject_organization_id is missing",
        ))?;
        let organization = fields::bare_oid(&organization).ok_or(Problem::Claims(
            "X-ZV-Context claim subject_organization_id is not an OID",
        ))?;
        let subject_id = raw.subject_id.filter(|s| fields::is_subject_id(s)).ok_or(
            Problem::Claims(
                "X-ZV-Context claim subject_id is missing or not 1 to 128 visible ASCII characters",
            ),
        )?;
        let role = match raw.subject_role {
            Some(r) if !fields::is_role(&r) => {
                return Err(Problem::Claims(
                    "X-ZV-Context claim subject_role is not 1 to 64 visible ASCII characters",
                ));
            }
            r => r.map(|r| r.as_str().to_owned()),
        };
        Ok(ContextClaims {
            organization: organization.to_owned(),
            subject_id: subject_id.as_str().to_owned(),
            role,
        })
    }
}

/// Parses the claims payload: one JSON object of at most
/// [`MAX_CLAIMS_LEN`] bytes, the claims read at most once each, strings
/// within their bounds, `exp`/`iat`/`nbf` numbers.
fn parse_claims(payload: &[u8]) -> Result<RawClaims, Problem> {
    if payload.len() > MAX_CLAIMS_LEN {
        return Err(Problem::Claims(
            "X-ZV-Context claims are larger than 4096 bytes",
        ));
    }
    // serde-json-core skips unknown members leniently: check the whole
    // document first.
    let doc: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|_| Problem::Claims("X-ZV-Context claims are not JSON"))?;
    let Some(object) = doc.as_object() else {
        return Err(Problem::Claims("X-ZV-Context claims are not a JSON object"));
    };
    for claim in ["exp", "iat", "nbf"] {
        if object.get(claim).is_some_and(|v| !v.is_number()) {
            return Err(Problem::Claims(
                "X-ZV-Context claims exp, iat and nbf must be numbers",
            ));
        }
    }
    let mut scratch = [0u8; MAX_CLAIMS_LEN];
    let (raw, _) = serde_json_core::from_slice_escaped::<RawClaims>(payload, &mut scratch)
        .map_err(|e| {
            use serde_json_core::de::Error as E;
            Problem::Claims(match e {
                E::EscapedStringIsTooLong => "X-ZV-Context has a claim that is too long",
                E::InvalidType => {
                    "X-ZV-Context claims subject_organization_id, subject_id and subject_role must be strings"
                }
                E::CustomError => "X-ZV-Context has a claim twice or too long",
                _ => "X-ZV-Context claims are malformed",
            })
        })?;
    Ok(raw)
}

/// The time window (module docs): `exp`, `iat` and `nbf` when present.
fn check_time(raw: &RawClaims, now: i64) -> Result<(), Problem> {
    let date = |v: Option<f64>| -> Result<Option<i64>, Problem> {
        match v {
            None => Ok(None),
            Some(x) if x.is_finite() && (0.0..9.0e15).contains(&x) => Ok(Some(x.floor() as i64)),
            Some(_) => Err(Problem::Claims(
                "X-ZV-Context claims exp, iat and nbf must be NumericDates",
            )),
        }
    };
    let (exp, iat, nbf) = (date(raw.exp)?, date(raw.iat)?, date(raw.nbf)?);
    let fault = if exp.is_some_and(|exp| exp <= now - SKEW_SECS) {
        Some(TimeFault::Expired)
    } else if exp.is_some_and(|exp| exp > now + MAX_CONTEXT_AGE_SECS + SKEW_SECS) {
        Some(TimeFault::ExpiresTooLate)
    } else if iat.is_some_and(|iat| iat >= now + SKEW_SECS)
        || nbf.is_some_and(|nbf| nbf >= now + SKEW_SECS)
    {
        Some(TimeFault::NotYetValid)
    } else if iat.is_some_and(|iat| now - iat > MAX_CONTEXT_AGE_SECS) {
        Some(TimeFault::TooOld)
    } else if exp.zip(iat).is_some_and(|(exp, iat)| exp <= iat) {
        Some(TimeFault::ExpBeforeIat)
    } else {
        None
    };
    fault.map_or(Ok(()), |f| Err(Problem::Time(f)))
}

#[cfg(test)]
mod tests;
