//! Configuration: the one env file (or the process environment) → a typed,
//! validated [`Config`].
//!
//! Every key is listed once in [`KEYS`] / [`PARTNER_KEYS`]; that table drives
//! parsing, `check-config`, the README key table and the man page, so they
//! cannot drift apart. Validation collects every problem instead of stopping at
//! the first, and each problem names its key.

pub mod allow_from;
pub mod envfile;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ids::{IdScheme, Oid, OrgId, URA_OID_ROOT, is_digits};
use crate::jose::Alg;
use crate::util::values::{parse_bool, parse_duration, parse_size};

pub use allow_from::AllowFrom;

/// Exit code for configuration errors (EX_CONFIG); systemd's
/// `RestartPreventExitStatus=78` stops restarting a broken configuration.
pub const EXIT_CONFIG: i32 = 78;

/// Default path of the env file.
pub const DEFAULT_ENV_FILE: &str = "/etc/np-agent/np-agent.env";

/// Our Mitz notification intake path; `NP_MITZ_NOTIFY_URL` defaults to
/// `NP_PUBLIC_URL` with it.
pub const MITZ_NOTIFY_PATH: &str = "/mitz/fhir";

/// One documented configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub name: &'static str,
    /// Default as written in the docs; `None` with `required` = must be set.
    pub default: Option<&'static str>,
    pub required: bool,
    pub doc: &'static str,
    /// Partner keys: the kinds of partner the key means something for
    /// (set on another kind it is an error). Empty for global keys.
    pub kinds: &'static [Kind],
}

const fn key(
    name: &'static str,
    default: Option<&'static str>,
    required: bool,
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        name,
        default,
        required,
        doc,
        kinds: &[],
    }
}

/// A partner key used by `kinds`.
const fn pkey(
    name: &'static str,
    default: Option<&'static str>,
    kinds: &'static [Kind],
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        name,
        default,
        required: false,
        doc,
        kinds,
    }
}

const ALL_KINDS: &[Kind] = &[
    Kind::Twiin,
    Kind::Mitz,
    Kind::Zorgviewer,
    Kind::Prs,
    Kind::Nvi,
];
/// The kinds that call us: their certificate is their identity.
const CALLING: &[Kind] = &[Kind::Twiin, Kind::Mitz, Kind::Zorgviewer];
const TWIIN: &[Kind] = &[Kind::Twiin];
/// The services we call for localisation.
const LOCALISATION: &[Kind] = &[Kind::Prs, Kind::Nvi];
const URL_KINDS: &[Kind] = &[Kind::Mitz, Kind::Prs, Kind::Nvi];
const TOKEN_URL_KINDS: &[Kind] = &[Kind::Twiin, Kind::Prs, Kind::Nvi];
const NVI: &[Kind] = &[Kind::Nvi];
const ZORGVIEWER: &[Kind] = &[Kind::Zorgviewer];
const ASSERTING: &[Kind] = &[Kind::Twiin, Kind::Zorgviewer];

/// Global keys, in the order of DESIGN.md, then our additions.
pub const KEYS: &[KeySpec] = &[
    key(
        "NP_LISTEN",
        Some("0.0.0.0:8443"),
        false,
        "mTLS listener for all partner-facing endpoints",
    ),
    key(
        "NP_ADMIN_LISTEN",
        Some("127.0.0.1:9464"),
        false,
        "plain HTTP, loopback only: /healthz, /readyz, /metrics (Prometheus text)",
    ),
    key(
        "NP_PUBLIC_URL",
        None,
        true,
        "our origin as partners reach it, e.g. https://np.hospital.example:8443",
    ),
    key(
        "NP_TLS_CERT",
        None,
        true,
        "PEM chain; used as server and as client certificate",
    ),
    key(
        "NP_TLS_KEY",
        None,
        true,
        "PEM private key of NP_TLS_CERT (mode 0600)",
    ),
    key(
        "NP_TLS_TRUST",
        None,
        true,
        "PEM bundle of the CA certificates accepted for peers (server and client side)",
    ),
    key(
        "NP_TLS_CRL_DIR",
        None,
        false,
        "directory of CRLs (PEM/DER), re-read hourly and on SIGHUP",
    ),
    key(
        "NP_TLS_MIN_VERSION",
        Some("1.3"),
        false,
        "1.3, or 1.2 for AORTA-style partners; NCSC \"Goed\" suites only either way",
    ),
    key(
        "NP_SIGNING_KEY",
        None,
        true,
        "PKCS#8 PEM signing key for assertions, separate from the TLS key (mode 0600)",
    ),
    key(
        "NP_SIGNING_ALG",
        Some("PS256"),
        false,
        "PS256, ES256, ES384 or ES512",
    ),
    key(
        "NP_SIGNING_KID",
        Some("RFC 7638 thumbprint"),
        false,
        "kid in our JWS headers and JWKS",
    ),
    key(
        "NP_ORG_URA",
        None,
        true,
        "our organisation's URA (8 digits)",
    ),
    key(
        "NP_ORG_AGB",
        None,
        false,
        "our AGB code (8 digits), for partners that address by AGB",
    ),
    key("NP_ORG_NAME", None, false, "display name"),
    key(
        "NP_CLIENT_ID",
        Some("host name of NP_PUBLIC_URL"),
        false,
        "our client id at partners (per-partner override NP_PARTNER_<NAME>_OUR_CLIENT_ID)",
    ),
    key(
        "NP_SYSTEM_ID",
        Some("NP_PUBLIC_URL"),
        false,
        "our system's identifier in Task.requester.agent (an OID is written as urn:oid:<OID>)",
    ),
    key(
        "NP_ORG_OID",
        Some("2.16.528.1.1007.3.3.<URA>"),
        false,
        "our organisation's OID (used in Meta.source)",
    ),
    key(
        "NP_OUTBOX",
        Some("/var/lib/np-agent/outbox"),
        false,
        "the EHR export folder",
    ),
    key(
        "NP_INBOX",
        Some("/var/lib/np-agent/inbox"),
        false,
        "the EHR import folder",
    ),
    key(
        "NP_STATE_DIR",
        Some("/var/lib/np-agent/state"),
        false,
        "spool, replay cache, tokens (hashed), audit trail",
    ),
    key(
        "NP_POLL_INTERVAL",
        Some("2s"),
        false,
        "outbox scan interval",
    ),
    key(
        "NP_NOTIFICATION_TTL",
        Some("7d"),
        false,
        "restriction.period.end of notifications we send",
    ),
    key("NP_LOG", Some("info"), false, "error, warn, info or debug"),
    key(
        "NP_MAX_BODY",
        Some("16MiB"),
        false,
        "largest request body accepted",
    ),
    key(
        "NP_MAX_CONNECTIONS",
        Some("256"),
        false,
        "open connections, unfinished TLS handshakes included (a quarter reserved for established ones); above it new ones are refused at once",
    ),
    key(
        "NP_ORG_OIN",
        None,
        false,
        "our OIN (20 digits), sent as oin:<OIN> towards the PRS; required with a prs partner",
    ),
    key(
        "NP_ORG_CATEGORY",
        None,
        false,
        "our Mitz zorgaanbiedercategorie (e.g. Z3); required when a mitz partner has a URL",
    ),
    key(
        "NP_HOME_COMMUNITY_ID",
        None,
        false,
        "bare OID of our gateway (home community): the GatewaySystem extension of our Mitz subscriptions, as urn:oid:<OID>; unset: left out",
    ),
    key(
        "NP_SOURCE_ID",
        None,
        false,
        "bare OID of our source system: the SourceSystem extension of our Mitz subscriptions and the NVI List source, as urn:oid:<OID>, and the NVI token's source_id as configured; unset: left out (required with an nvi partner)",
    ),
    key(
        "NP_MITZ_NOTIFY_URL",
        Some("NP_PUBLIC_URL + /mitz/fhir"),
        false,
        "the channel endpoint our Mitz subscriptions name: where consent notifications are posted to us",
    ),
    key(
        "NP_MITZ_DECISION_TTL",
        Some("60s"),
        false,
        "how long a Mitz closed-question answer is reused for (patient, requester, category)",
    ),
    key(
        "NP_RETENTION",
        Some("30d"),
        false,
        "finished spool items (notifications sent, Tasks pulled) keep their content this long (a notification also until its restriction.period.end), then only identifiers and hashes for duplicate detection; other finished work keeps no content at all",
    ),
    key(
        "NP_PARTNERS",
        Some(""),
        false,
        "comma-separated partner names ([a-z0-9]{1,32})",
    ),
    // Additions to DESIGN.md, documented in the README.
    key(
        "NP_IDLE_TIMEOUT",
        Some("30s"),
        false,
        "keep-alive connections idle this long are closed",
    ),
    key(
        "NP_HANDSHAKE_TIMEOUT",
        Some("5s"),
        false,
        "deadline for a new connection's TLS handshake, from accept",
    ),
    key(
        "NP_MAX_HANDSHAKES_PER_ADDRESS",
        Some("16"),
        false,
        "unfinished TLS handshakes one address (IPv6: one /64) may hold; its next connection closes its oldest",
    ),
    key(
        "NP_RETRY_MAX_AGE",
        Some("72h"),
        false,
        "outgoing work older than this goes to the dead folder",
    ),
    key(
        "NP_DEDUPE_RETENTION",
        Some("90d"),
        false,
        "how long the identifiers and hashes of finished spool items are kept to recognise the same work again (a resent Task or Mitz notification); at least NP_RETENTION",
    ),
    key(
        "NP_MIN_FREE_DISK",
        Some("512MiB"),
        false,
        "below this free space in NP_STATE_DIR new work is refused until space returns",
    ),
    key(
        "NP_RETRY_FIRST",
        Some("5s"),
        false,
        "ceiling of the first retry wait; doubles per attempt (full jitter), up to NP_RETRY_CAP",
    ),
    key(
        "NP_RETRY_CAP",
        Some("15m"),
        false,
        "longest wait between two attempts, also for a partner's Retry-After",
    ),
    key(
        "NP_CIRCUIT_FAILURES",
        Some("5"),
        false,
        "consecutive transient failures of a partner that open its circuit (its work waits)",
    ),
    key(
        "NP_CIRCUIT_COOLDOWN",
        Some("30s"),
        false,
        "how long an open circuit waits before one probe (doubles after each failed probe, at most 15m)",
    ),
];

/// Per-partner keys: `NP_PARTNER_<NAME>_<FIELD>`; `name` holds the field and
/// `kinds` the partner kinds it applies to.
pub const PARTNER_KEYS: &[KeySpec] = &[
    pkey(
        "KIND",
        Some("twiin"),
        ALL_KINDS,
        "twiin, mitz, zorgviewer, prs or nvi; decides which of the other keys apply",
    ),
    pkey(
        "CERT",
        None,
        CALLING,
        "twiin, mitz, zorgviewer: which TLS client certificate is theirs: ura:<URA>, serial:<serialNumber>, dns:<name> or sha256:<hex of DER>, optionally followed by @sha256:<hex of the DER of the issuing CA certificate>; required (prs and nvi never call us)",
    ),
    pkey(
        "URL",
        None,
        URL_KINDS,
        "mitz: the Mitz API base, e.g. https://tst-api.mijn-mitz.nl/tst-us/mitz (subscriptions go to <URL>/abonnementen/fhir/Subscription); unset: the partner only delivers consent notifications. prs, nvi: the service base (required; /oprf/eval, /fhir/List, /registrations, /localize are appended)",
    ),
    pkey(
        "FHIR_BASE",
        None,
        TWIIN,
        "twiin: their FHIR base (notify goes to <base>/Task, pulls read from it); required",
    ),
    pkey(
        "TOKEN_URL",
        Some("discovered"),
        TOKEN_URL_KINDS,
        "twiin: their token endpoint; unset: from <base>/.well-known/smart-configuration. prs, nvi: the OAuth token endpoint in front of the service (required)",
    ),
    pkey(
        "JWKS_URL",
        Some("discovered"),
        ASSERTING,
        "twiin, zorgviewer: where their assertion-signing keys are published; unset: jwks_uri from discovery (twiin); required for zorgviewer",
    ),
    pkey(
        "ISSUER",
        Some("origin of FHIR_BASE"),
        TWIIN,
        "twiin: expected iss of their assertions",
    ),
    pkey(
        "CLIENT_ID",
        Some("host of FHIR_BASE"),
        ASSERTING,
        "twiin, zorgviewer: expected sub of their client assertions; required for zorgviewer",
    ),
    pkey(
        "OUR_CLIENT_ID",
        Some("NP_CLIENT_ID"),
        TWIIN,
        "twiin: the client id they gave us",
    ),
    pkey(
        "ORG",
        None,
        TWIIN,
        "twiin: the organisation they act for: ura:<8 digits> or agb:<8 digits>; required",
    ),
    pkey(
        "ID_SCHEME",
        Some("ura"),
        TWIIN,
        "twiin: ura or agb: how we write organisations in claims and Tasks for them",
    ),
    pkey(
        "SEND_BSN",
        Some("false"),
        TWIIN,
        "twiin: true puts the patient claim in our authorization assertions",
    ),
    pkey(
        "ADDRESS_SYSTEM",
        Some("false"),
        TWIIN,
        "twiin: true addresses the partner as a system (no authorizer, no Task.owner)",
    ),
    pkey(
        "CONSENT",
        Some("mitz"),
        ZORGVIEWER,
        "zorgviewer: mitz (serve only with a Mitz permit) or none",
    ),
    pkey(
        "PROVIDER_CATEGORY",
        Some("RPZAC104"),
        ZORGVIEWER,
        "zorgviewer: Mitz provider category of the requesting organisations",
    ),
    pkey(
        "REQUESTER_CATEGORY",
        None,
        ZORGVIEWER,
        "zorgviewer: the zorgaanbiedercategorie of the requesting organisations (e.g. V4) the Mitz closed question names; required while a mitz partner has a URL and this partner's consent is mitz",
    ),
    pkey(
        "AUDIENCES",
        Some(""),
        ASSERTING,
        "twiin, zorgviewer: extra values (comma-separated) accepted as aud for our token endpoint from this partner",
    ),
    pkey(
        "ACCEPT_ALGS",
        Some("twiin: PS256,PS384,PS512,ES256,ES384,ES512; zorgviewer: the same and RS384"),
        ASSERTING,
        "twiin, zorgviewer: JWS algorithms accepted from this partner; add RS256 only if the partner needs it; none and HS* never",
    ),
    pkey(
        "SCOPE",
        Some("prs: prs:read; nvi: nvi:create nvi:read nvi:delete nvi:localize"),
        LOCALISATION,
        "prs, nvi: the scope we ask their token endpoint for",
    ),
    pkey(
        "AUDIENCE",
        Some("URL"),
        LOCALISATION,
        "prs, nvi: the target_audience we ask their token endpoint for",
    ),
    pkey(
        "OIN",
        None,
        NVI,
        "nvi: the OIN (20 digits) of the index as recipient of our pseudonyms (oin:<OIN> at the PRS and in the pseudonym's input); required",
    ),
    pkey(
        "PSEUDONYM_SCOPE",
        Some("nvi"),
        NVI,
        "nvi: the recipient scope of our pseudonyms, agreed with the index's operator",
    ),
    pkey(
        "API",
        Some("fhir"),
        NVI,
        "nvi: fhir (POST/GET/DELETE /fhir/List) or json (/registrations, /localize)",
    ),
    pkey(
        "ALLOW_FROM",
        None,
        CALLING,
        "comma-separated CIDR prefixes (or single addresses) the partner connects from; its certificate from any other address is refused (403, invalid_client on /oauth/token); unset: any address",
    ),
];

/// Algorithms we can sign with (`NP_SIGNING_ALG`).
pub const SIGNING_ALGS: &[Alg] = &[Alg::Ps256, Alg::Es256, Alg::Es384, Alg::Es512];
/// Algorithms a partner may be allowed to sign with (`ACCEPT_ALGS`): every
/// one we verify (`none` and HMAC are not algorithms to us).
pub const ACCEPTABLE_ALGS: &[Alg] = &Alg::ALL;

/// The algorithms accepted from a partner of `kind` when `ACCEPT_ALGS` is
/// unset: PSS and ECDSA for everyone ([`crate::jose::DEFAULT_ACCEPTED`]), and
/// for a Zorgviewer partner also RS384, which SMART backend services require
/// a server to verify. A Mitz partner signs nothing: none.
pub fn default_accept_algs(kind: Kind) -> Vec<Alg> {
    let mut algs = match kind {
        Kind::Twiin | Kind::Zorgviewer => crate::jose::DEFAULT_ACCEPTED.to_vec(),
        Kind::Mitz | Kind::Prs | Kind::Nvi => Vec::new(),
    };
    if kind == Kind::Zorgviewer {
        algs.push(Alg::Rs384);
    }
    algs
}

/// The names of `algs`, comma-separated.
pub fn alg_names(algs: &[Alg]) -> String {
    algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
    /// Line in the env file, when the value came from one.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

pub use crate::pki::MinVersion as TlsVersion;

pub use crate::pki::CertSelector;

/// Mitz consent handling for Zorgviewer partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    Mitz,
    None,
}

/// The kinds of partner, without their settings (`NP_PARTNER_<NAME>_KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Twiin,
    Mitz,
    Zorgviewer,
    Prs,
    Nvi,
}

impl Kind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Kind; 5] = [
        Kind::Twiin,
        Kind::Mitz,
        Kind::Zorgviewer,
        Kind::Prs,
        Kind::Nvi,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Twiin => "twiin",
            Kind::Mitz => "mitz",
            Kind::Zorgviewer => "zorgviewer",
            Kind::Prs => "prs",
            Kind::Nvi => "nvi",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One configured partner: what every kind has, and its kind with the
/// settings only that kind has.
#[derive(Debug, Clone)]
pub struct Partner {
    /// Lower-case name as in `NP_PARTNERS` (also the outbox/inbox folder name).
    pub name: String,
    /// Which TLS client certificate is theirs; `None` for the kinds that
    /// never call us (`prs`, `nvi`).
    pub cert: Option<CertSelector>,
    /// Where that certificate is accepted from (`ALLOW_FROM`; default any).
    pub allow_from: AllowFrom,
    pub kind: PartnerKind,
}

/// A partner's kind with its settings: a Twiin partner always has a FHIR
/// base and an organisation; a Mitz partner has neither.
#[derive(Debug, Clone)]
pub enum PartnerKind {
    Twiin(Twiin),
    Mitz(Mitz),
    Zorgviewer(Zorgviewer),
    /// The pseudonym service: evaluates our blinded BSNs.
    Prs(Localisation),
    /// The national referral index: holds our referrals.
    Nvi(Nvi),
}

/// A service we call for localisation (a `prs` or `nvi` partner): its base,
/// and the OAuth token endpoint in front of it.
#[derive(Debug, Clone)]
pub struct Localisation {
    /// The service base (`URL`), `https://`, without a trailing slash.
    pub url: String,
    /// The token endpoint (`TOKEN_URL`).
    pub token_url: String,
    /// The `scope` of our token requests.
    pub scope: String,
    /// The `target_audience` of our token requests.
    pub audience: String,
}

/// The national referral index: the service, and who our pseudonyms are for.
#[derive(Debug, Clone)]
pub struct Nvi {
    pub service: Localisation,
    /// The index's OIN (20 digits): the recipient organisation of our
    /// pseudonyms, `oin:<OIN>` on the wire.
    pub oin: String,
    /// The recipient scope of our pseudonyms (`PSEUDONYM_SCOPE`).
    pub pseudonym_scope: String,
    pub api: NviApi,
}

/// The two interfaces of the index's proof of concept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NviApi {
    /// `POST|GET|DELETE /fhir/List`.
    Fhir,
    /// `POST|GET|DELETE /registrations`, `POST /localize`.
    Json,
}

impl NviApi {
    pub fn name(self) -> &'static str {
        match self {
            NviApi::Fhir => "fhir",
            NviApi::Json => "json",
        }
    }
}

/// A TA Notified Pull partner: we notify it and serve it, it notifies us and
/// we pull from it.
#[derive(Debug, Clone)]
pub struct Twiin {
    /// FHIR base without a trailing slash.
    pub fhir_base: String,
    /// Their token endpoint; `None`: discovered from the FHIR base.
    pub token_url: Option<String>,
    /// How their assertions are checked at our token endpoint.
    pub assertions: AssertionPolicy,
    /// The client id they gave us.
    pub our_client_id: String,
    /// The organisation they act for.
    pub org: OrgId,
    pub id_scheme: IdScheme,
    pub send_bsn: bool,
    pub address_system: bool,
}

/// Mitz, or its notification broker: its certificate is its identity when
/// it posts consent notifications to us; with a `URL` we also call its API
/// (subscriptions, the closed question).
#[derive(Debug, Clone, Default)]
pub struct Mitz {
    /// The Mitz API base (`NP_PARTNER_<NAME>_URL`), `https://`, without a
    /// trailing slash; `None`: the partner only delivers notifications.
    pub url: Option<String>,
}

/// A regional Zorgviewer reading published records.
#[derive(Debug, Clone)]
pub struct Zorgviewer {
    pub assertions: AssertionPolicy,
    pub consent: Consent,
    /// Mitz's raadplegende-zorgaanbiedercategorie (`RPZAC…`): what consent
    /// notifications name, so what the consent view is keyed on.
    pub provider_category: String,
    /// The zorgaanbiedercategorie (`V4`, `Z3`, …) the closed question names
    /// for the requesting organisations.
    pub requester_category: Option<String>,
}

/// A partner seen through its kind: code for one exchange takes this, so it
/// cannot be handed a partner of another kind. Derefs to the kind's settings.
#[derive(Debug)]
pub struct Of<'a, K> {
    pub name: &'a str,
    pub partner: &'a Partner,
    pub kind: &'a K,
}

// By hand: a derive would ask `K: Copy`, and only references are copied.
impl<K> Clone for Of<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Of<'_, K> {}

impl<K> std::ops::Deref for Of<'_, K> {
    type Target = K;
    fn deref(&self) -> &K {
        self.kind
    }
}

/// A Twiin partner with its settings.
pub type TwiinPartner<'a> = Of<'a, Twiin>;
/// A Mitz partner with its settings.
pub type MitzPartner<'a> = Of<'a, Mitz>;
/// A PRS partner with its settings.
pub type PrsPartner<'a> = Of<'a, Localisation>;
/// An NVI partner with its settings.
pub type NviPartner<'a> = Of<'a, Nvi>;

/// A Mitz partner whose API we call: one with a `URL`. Code that talks to
/// Mitz takes this, so it cannot be handed a partner without a base.
#[derive(Debug, Clone, Copy)]
pub struct MitzApi<'a> {
    pub name: &'a str,
    pub partner: &'a Partner,
    /// The API base, without a trailing slash.
    pub url: &'a str,
}

impl<'a> MitzApi<'a> {
    /// The API view of a Mitz partner, when it has a `URL`.
    pub fn of(partner: MitzPartner<'a>) -> Option<MitzApi<'a>> {
        let url = partner.kind.url.as_deref()?;
        Some(MitzApi {
            name: partner.name,
            partner: partner.partner,
            url,
        })
    }

    /// `<URL><path>`; `path` starts with `/`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// What our token endpoint expects of a partner's assertions.
#[derive(Debug, Clone)]
pub struct AssertionPolicy {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `sub` of the client assertion.
    pub client_id: String,
    /// Where their signing keys are published; `None`: discovered (Twiin).
    pub jwks_url: Option<String>,
    /// Values accepted as `aud` besides our token endpoint.
    pub audiences: Vec<String>,
    /// Algorithms accepted from them.
    pub accept_algs: Vec<Alg>,
}

impl Partner {
    /// The kind without its settings.
    pub fn kind_tag(&self) -> Kind {
        match self.kind {
            PartnerKind::Twiin(_) => Kind::Twiin,
            PartnerKind::Mitz(_) => Kind::Mitz,
            PartnerKind::Zorgviewer(_) => Kind::Zorgviewer,
            PartnerKind::Prs(_) => Kind::Prs,
            PartnerKind::Nvi(_) => Kind::Nvi,
        }
    }

    /// `twiin`, `mitz` or `zorgviewer`.
    pub fn kind_name(&self) -> &'static str {
        self.kind_tag().name()
    }

    /// True when this partner's certificate is accepted from `peer` (its
    /// `ALLOW_FROM`).
    pub fn allows_peer(&self, peer: std::net::IpAddr) -> bool {
        self.allow_from.allows(peer)
    }

    /// The Twiin settings, when this is a Twiin partner.
    pub fn twiin(&self) -> Option<&Twiin> {
        match &self.kind {
            PartnerKind::Twiin(t) => Some(t),
            _ => None,
        }
    }

    /// This partner seen as a Twiin partner, when it is one.
    pub fn as_twiin(&self) -> Option<TwiinPartner<'_>> {
        self.twiin().map(|kind| Of {
            name: &self.name,
            partner: self,
            kind,
        })
    }

    /// This partner seen as a Mitz partner, when it is one.
    pub fn as_mitz(&self) -> Option<MitzPartner<'_>> {
        match &self.kind {
            PartnerKind::Mitz(kind) => Some(Of {
                name: &self.name,
                partner: self,
                kind,
            }),
            _ => None,
        }
    }

    /// This partner seen as a PRS partner, when it is one.
    pub fn as_prs(&self) -> Option<PrsPartner<'_>> {
        match &self.kind {
            PartnerKind::Prs(kind) => Some(Of {
                name: &self.name,
                partner: self,
                kind,
            }),
            _ => None,
        }
    }

    /// This partner seen as an NVI partner, when it is one.
    pub fn as_nvi(&self) -> Option<NviPartner<'_>> {
        match &self.kind {
            PartnerKind::Nvi(kind) => Some(Of {
                name: &self.name,
                partner: self,
                kind,
            }),
            _ => None,
        }
    }

    /// The service settings of a `prs` or `nvi` partner.
    pub fn localisation(&self) -> Option<&Localisation> {
        match &self.kind {
            PartnerKind::Prs(l) => Some(l),
            PartnerKind::Nvi(n) => Some(&n.service),
            _ => None,
        }
    }

    /// The assertion policy of a partner that signs assertions for our token endpoint.
    pub fn assertions(&self) -> Option<&AssertionPolicy> {
        match &self.kind {
            PartnerKind::Twiin(t) => Some(&t.assertions),
            PartnerKind::Zorgviewer(z) => Some(&z.assertions),
            PartnerKind::Mitz(_) | PartnerKind::Prs(_) | PartnerKind::Nvi(_) => None,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Origin without a trailing slash.
    pub public_url: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_trust: PathBuf,
    pub tls_crl_dir: Option<PathBuf>,
    pub tls_min_version: TlsVersion,
    pub signing_key: PathBuf,
    pub signing_alg: Alg,
    pub signing_kid: Option<String>,
    pub org_ura: String,
    pub org_agb: Option<String>,
    pub org_name: Option<String>,
    pub client_id: String,
    pub system_id: String,
    pub org_oid: String,
    pub outbox: PathBuf,
    pub inbox: PathBuf,
    pub state_dir: PathBuf,
    pub poll_interval: Duration,
    pub notification_ttl: Duration,
    pub log_level: log::LevelFilter,
    pub max_body: u64,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Deadline for a TLS handshake (`NP_HANDSHAKE_TIMEOUT`).
    pub handshake_timeout: Duration,
    /// Unfinished handshakes one source address may hold.
    pub max_handshakes_per_address: usize,
    pub retry_max_age: Duration,
    pub min_free_disk: u64,
    /// Ceiling of the first retry wait.
    pub retry_first: Duration,
    /// Longest retry wait.
    pub retry_cap: Duration,
    /// Consecutive transient failures that open a partner's circuit.
    pub circuit_failures: u32,
    /// Wait before the first probe of an open circuit.
    pub circuit_cooldown: Duration,
    /// Our OIN (`NP_ORG_OIN`, 20 digits); set whenever a `prs` partner is.
    pub org_oin: Option<String>,
    /// Our Mitz zorgaanbiedercategorie (`NP_ORG_CATEGORY`, e.g. `Z3`); set
    /// whenever a Mitz partner has a `URL`.
    pub org_category: Option<String>,
    /// Our gateway's OID (`NP_HOME_COMMUNITY_ID`), bare.
    pub home_community_id: Option<Oid>,
    /// Our source system's OID (`NP_SOURCE_ID`), bare.
    pub source_id: Option<Oid>,
    /// The channel endpoint our Mitz subscriptions name.
    pub mitz_notify_url: String,
    /// How long a Mitz closed-question answer is reused.
    pub mitz_decision_ttl: Duration,
    /// How long finished spool items keep their content (`NP_RETENTION`).
    pub retention: Duration,
    /// How long finished spool items are remembered for duplicate
    /// detection (`NP_DEDUPE_RETENTION`, at least `retention`).
    pub dedupe_retention: Duration,
    pub partners: Vec<Partner>,
}

impl Config {
    /// Our token endpoint URL, the `aud` partners must use.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.public_url)
    }

    /// Our JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}/.well-known/jwks.json", self.public_url)
    }

    /// The partner with this name.
    pub fn partner(&self, name: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.name == name)
    }

    /// The Twiin partner with this name.
    pub fn twiin_partner(&self, name: &str) -> Option<TwiinPartner<'_>> {
        self.partner(name)?.as_twiin()
    }

    /// The Mitz partner with this name, when it has a `URL`.
    pub fn mitz_api(&self, name: &str) -> Option<MitzApi<'_>> {
        MitzApi::of(self.partner(name)?.as_mitz()?)
    }

    /// Every Mitz partner with a `URL`, in `NP_PARTNERS` order.
    pub fn mitz_apis(&self) -> impl Iterator<Item = MitzApi<'_>> {
        self.partners
            .iter()
            .filter_map(|p| MitzApi::of(p.as_mitz()?))
    }

    /// The PRS that evaluates our pseudonyms: the first `prs` partner.
    pub fn prs(&self) -> Option<PrsPartner<'_>> {
        self.partners.iter().find_map(Partner::as_prs)
    }

    /// The `nvi` partner with this name.
    pub fn nvi_partner(&self, name: &str) -> Option<NviPartner<'_>> {
        self.partner(name)?.as_nvi()
    }

    /// Every `nvi` partner, in `NP_PARTNERS` order.
    pub fn nvi_partners(&self) -> impl Iterator<Item = NviPartner<'_>> {
        self.partners.iter().filter_map(Partner::as_nvi)
    }

    /// Our organisation in the given id scheme, or `None` for AGB when we have no AGB.
    pub fn our_org(&self, scheme: IdScheme) -> Option<OrgId> {
        match scheme {
            IdScheme::Ura => Some(OrgId::Ura(self.org_ura.clone())),
            IdScheme::Agb => self.org_agb.clone().map(OrgId::Agb),
        }
    }
}

/// Where configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// An env file in systemd syntax.
    File(PathBuf),
    /// The process environment (systemd `EnvironmentFile=` already applied).
    Process,
}

/// Loads and validates configuration. On failure returns every problem found.
pub fn load(source: &Source) -> Result<Config, Vec<ConfigError>> {
    let vars = read_source(source)?;
    from_vars(&vars)
}

/// A raw value and the env file line it came from.
pub type Vars = BTreeMap<String, (String, Option<usize>)>;

/// Reads the raw `NP_` variables of a source.
pub fn read_source(source: &Source) -> Result<Vars, Vec<ConfigError>> {
    match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                vec![ConfigError {
                    key: "--env-file".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                    line: None,
                }]
            })?;
            let (vars, syntax) = envfile::parse(&text);
            if !syntax.is_empty() {
                return Err(syntax
                    .into_iter()
                    .map(|e| ConfigError {
                        key: path.display().to_string(),
                        reason: e.reason,
                        line: Some(e.line),
                    })
                    .collect());
            }
            Ok(vars
                .into_iter()
                .filter(|(k, _)| k.starts_with("NP_"))
                .map(|(k, a)| (k, (a.value, Some(a.line))))
                .collect())
        }
        Source::Process => Ok(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with("NP_"))
            .map(|(k, v)| (k, (v.to_string_lossy().into_owned(), None)))
            .collect()),
    }
}

/// Validates raw variables into a [`Config`], collecting every problem.
pub fn from_vars(vars: &Vars) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        vars,
        errors: Vec::new(),
    };
    v.check_unknown_keys();

    let listen = v.parsed("NP_LISTEN", |s| {
        s.parse::<SocketAddr>().map_err(|e| e.to_string())
    });
    let admin_listen = v.parsed("NP_ADMIN_LISTEN", |s| {
        s.parse::<SocketAddr>().map_err(|e| e.to_string())
    });
    let public_url = v.parsed("NP_PUBLIC_URL", parse_origin);
    let tls_cert = v.path("NP_TLS_CERT", FileCheck::Readable);
    let tls_key = v.path("NP_TLS_KEY", FileCheck::Secret);
    let tls_trust = v.path("NP_TLS_TRUST", FileCheck::Readable);
    let tls_crl_dir = v.optional_path("NP_TLS_CRL_DIR", FileCheck::Directory);
    let tls_min_version = v.parsed("NP_TLS_MIN_VERSION", |s| {
        s.parse::<TlsVersion>()
            .map_err(|_| format!("{s:?} must be 1.3 or 1.2"))
    });
    let signing_key = v.path("NP_SIGNING_KEY", FileCheck::Secret);
    let signing_alg = v.parsed("NP_SIGNING_ALG", |s| {
        Alg::from_name(s)
            .filter(|a| SIGNING_ALGS.contains(a))
            .ok_or_else(|| format!("{s:?} must be one of {}", alg_names(SIGNING_ALGS)))
    });
    let signing_kid = v.optional("NP_SIGNING_KID", |s| {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            Err("must be 1 to 128 visible ASCII characters".to_string())
        } else {
            Ok(s.to_string())
        }
    });
    let org_ura = v.parsed("NP_ORG_URA", |s| digits8(s, "URA"));
    let org_agb = v.optional("NP_ORG_AGB", |s| digits8(s, "AGB code"));
    let org_name = v.optional("NP_ORG_NAME", |s| Ok(s.to_string()));
    let client_id = v.optional("NP_CLIENT_ID", non_empty).flatten();
    let system_id = v.optional("NP_SYSTEM_ID", non_empty).flatten();
    let org_oid = v
        .optional("NP_ORG_OID", |s| {
            if is_oid(s) {
                Ok(s.to_string())
            } else {
                Err(format!("{s:?} is not a dotted OID"))
            }
        })
        .flatten();
    let outbox = v.dir("NP_OUTBOX");
    let inbox = v.dir("NP_INBOX");
    let state_dir = v.dir("NP_STATE_DIR");
    let poll_interval = v.parsed("NP_POLL_INTERVAL", positive_duration);
    let notification_ttl = v.parsed("NP_NOTIFICATION_TTL", positive_duration);
    let log_level = v.parsed("NP_LOG", |s| match s {
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        _ => Err(format!("{s:?} must be error, warn, info or debug")),
    });
    let max_body = v.parsed("NP_MAX_BODY", |s| {
        let n = parse_size(s)?;
        if (1024..=(1 << 30)).contains(&n) {
            Ok(n)
        } else {
            Err(format!("{s:?} must be between 1KiB and 1GiB"))
        }
    });
    let max_connections = v.parsed("NP_MAX_CONNECTIONS", |s| match s.parse::<usize>() {
        Ok(n) if (1..=65_536).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} must be a whole number from 1 to 65536")),
    });
    let idle_timeout = v.parsed("NP_IDLE_TIMEOUT", positive_duration);
    let handshake_timeout = v.parsed("NP_HANDSHAKE_TIMEOUT", |s| {
        let d = positive_duration(s)?;
        if d <= Duration::from_secs(60) {
            Ok(d)
        } else {
            Err(format!("{s:?} must be from 1s to 60s"))
        }
    });
    let max_handshakes_per_address = v.parsed("NP_MAX_HANDSHAKES_PER_ADDRESS", |s| {
        match s.parse::<usize>() {
            Ok(n) if (1..=65_536).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} must be a whole number from 1 to 65536")),
        }
    });
    let retry_max_age = v.parsed("NP_RETRY_MAX_AGE", positive_duration);
    let min_free_disk = v.parsed("NP_MIN_FREE_DISK", parse_size);
    let retry_first = v.parsed("NP_RETRY_FIRST", whole_seconds);
    let retry_cap = v.parsed("NP_RETRY_CAP", whole_seconds);
    let circuit_failures = v.parsed("NP_CIRCUIT_FAILURES", |s| match s.parse::<u32>() {
        Ok(n) if (1..=1_000).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} must be a whole number from 1 to 1000")),
    });
    let circuit_cooldown = v.parsed("NP_CIRCUIT_COOLDOWN", |s| {
        let d = positive_duration(s)?;
        if d <= Duration::from_secs(900) {
            Ok(d)
        } else {
            Err(format!("{s:?} must be at most 15m"))
        }
    });
    let org_oin = v.optional("NP_ORG_OIN", |s| digits20(s, "OIN"));
    let org_category = v.optional("NP_ORG_CATEGORY", parse_category);
    let home_community_id = v.optional("NP_HOME_COMMUNITY_ID", bare_oid);
    let source_id = v.optional("NP_SOURCE_ID", bare_oid);
    let mitz_notify_url = v.optional("NP_MITZ_NOTIFY_URL", parse_https_url);
    let mitz_decision_ttl = v.parsed("NP_MITZ_DECISION_TTL", whole_seconds);
    let retention = v.parsed("NP_RETENTION", positive_duration);
    let dedupe_retention = v.parsed("NP_DEDUPE_RETENTION", positive_duration);
    if let (Some(keep), Some(dedupe)) = (retention, dedupe_retention) {
        if dedupe < keep {
            v.error(
                "NP_DEDUPE_RETENTION",
                "must not be shorter than NP_RETENTION: a finished item is remembered at least as long as its content is kept",
            );
        }
    }
    let partner_names = v.parsed("NP_PARTNERS", parse_partner_names);

    let client_id = client_id.or_else(|| public_url.as_deref().map(host_of));
    let partners = partner_names
        .as_deref()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| v.partner(n, client_id.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    v.check_partner_keys(partner_names.as_deref().unwrap_or_default());
    v.check_unique_certs(&partners);
    if matches!(org_category, Some(None)) {
        v.check_category_needed(&partners);
    }
    v.check_localisation(
        partner_names.as_deref().unwrap_or_default(),
        matches!(org_oin, Some(None)),
        matches!(source_id, Some(None)),
    );
    v.check_requester_categories(&partners);

    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    // Every required value is Some here: each None pushed an error above.
    let built = (|| {
        let public_url = public_url?;
        let org_ura = org_ura?;
        Some(Config {
            listen: listen?,
            admin_listen: admin_listen?,
            system_id: system_id.unwrap_or_else(|| public_url.clone()),
            org_oid: org_oid.unwrap_or_else(|| format!("{URA_OID_ROOT}.{org_ura}")),
            tls_cert: tls_cert?,
            tls_key: tls_key?,
            tls_trust: tls_trust?,
            tls_crl_dir: tls_crl_dir.flatten(),
            tls_min_version: tls_min_version?,
            signing_key: signing_key?,
            signing_alg: signing_alg?,
            signing_kid: signing_kid.flatten(),
            org_ura,
            org_agb: org_agb.flatten(),
            org_name: org_name.flatten(),
            client_id: client_id?,
            outbox: outbox?,
            inbox: inbox?,
            state_dir: state_dir?,
            poll_interval: poll_interval?,
            notification_ttl: notification_ttl?,
            log_level: log_level?,
            max_body: max_body?,
            max_connections: max_connections?,
            idle_timeout: idle_timeout?,
            handshake_timeout: handshake_timeout?,
            max_handshakes_per_address: max_handshakes_per_address?,
            retry_max_age: retry_max_age?,
            min_free_disk: min_free_disk?,
            retry_first: retry_first?,
            retry_cap: retry_cap?,
            circuit_failures: circuit_failures?,
            circuit_cooldown: circuit_cooldown?,
            org_oin: org_oin?,
            org_category: org_category?,
            home_community_id: home_community_id?,
            source_id: source_id?,
            mitz_notify_url: mitz_notify_url?
                .unwrap_or_else(|| format!("{public_url}{MITZ_NOTIFY_PATH}")),
            mitz_decision_ttl: mitz_decision_ttl?,
            retention: retention?,
            dedupe_retention: dedupe_retention?,
            public_url,
            partners,
        })
    })();
    built.ok_or_else(|| {
        vec![ConfigError {
            key: "NP_".into(),
            reason: "internal: a value was missing without an error".into(),
            line: None,
        }]
    })
}

/// Keys a site must fill in: required keys that have no default.
pub fn required_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.required).map(|k| k.name)
}

/// What to check about a configured path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileCheck {
    Readable,
    /// A private key: readable, and not readable by group or others.
    Secret,
    Directory,
}

struct Validator<'a> {
    vars: &'a Vars,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, key: &str, reason: impl Into<String>) {
        let line = self.vars.get(key).and_then(|(_, line)| *line);
        self.errors.push(ConfigError {
            key: key.to_string(),
            reason: reason.into(),
            line,
        });
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(|(v, _)| v.as_str())
    }

    fn spec(name: &str) -> Option<&'static KeySpec> {
        KEYS.iter().find(|k| k.name == name)
    }

    /// A value that is required or has a default.
    fn parsed<T>(&mut self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let spec = Self::spec(key);
        let value = match self.raw(key) {
            Some(v) => v.to_string(),
            None => match spec {
                Some(KeySpec {
                    default: Some(d), ..
                }) => d.to_string(),
                _ => {
                    self.error(key, "required but not set");
                    return None;
                }
            },
        };
        match parse(&value) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(key, reason);
                None
            }
        }
    }

    /// An optional value without a literal default: `Some(None)` when unset
    /// (or set to the empty string), `None` when invalid.
    fn optional<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.raw(key) {
            None | Some("") => Some(None),
            Some(v) => {
                let v = v.to_string();
                match parse(&v) {
                    Ok(t) => Some(Some(t)),
                    Err(reason) => {
                        self.error(key, reason);
                        None
                    }
                }
            }
        }
    }

    fn path(&mut self, key: &str, check: FileCheck) -> Option<PathBuf> {
        let p = PathBuf::from(self.parsed(key, non_empty)?);
        match check_path(&p, check) {
            Ok(()) => Some(p),
            Err(reason) => {
                self.error(key, reason);
                None
            }
        }
    }

    fn optional_path(&mut self, key: &str, check: FileCheck) -> Option<Option<PathBuf>> {
        let p = self.optional(key, |s| Ok(PathBuf::from(s)))?;
        let Some(p) = p else { return Some(None) };
        match check_path(&p, check) {
            Ok(()) => Some(Some(p)),
            Err(reason) => {
                self.error(key, reason);
                None
            }
        }
    }

    /// A folder path: must be absolute; it need not exist yet (`run` creates it).
    fn dir(&mut self, key: &str) -> Option<PathBuf> {
        let p = PathBuf::from(self.parsed(key, non_empty)?);
        if !p.is_absolute() {
            self.error(key, format!("{} must be an absolute path", p.display()));
            return None;
        }
        if p.exists() && !p.is_dir() {
            self.error(
                key,
                format!("{} exists but is not a directory", p.display()),
            );
            return None;
        }
        Some(p)
    }

    fn check_unknown_keys(&mut self) {
        let unknown: Vec<String> = self
            .vars
            .keys()
            .filter(|k| !k.starts_with("NP_PARTNER_") && Self::spec(k).is_none())
            .cloned()
            .collect();
        for k in unknown {
            let known = KEYS.iter().map(|s| s.name);
            let hint = closest(&k, known)
                .map(|c| format!(" (did you mean {c}?)"))
                .unwrap_or_default();
            self.error(&k, format!("unknown key{hint}"));
        }
    }

    fn check_partner_keys(&mut self, names: &[String]) {
        let keys: Vec<String> = self
            .vars
            .keys()
            .filter(|k| k.starts_with("NP_PARTNER_"))
            .cloned()
            .collect();
        for k in keys {
            let rest = &k["NP_PARTNER_".len()..];
            let Some((upper, field)) = rest.split_once('_') else {
                self.error(&k, "unknown key: expected NP_PARTNER_<NAME>_<FIELD>");
                continue;
            };
            let name = upper.to_ascii_lowercase();
            if upper != upper.to_ascii_uppercase() {
                self.error(&k, "the partner name in a key is written in upper case");
            } else if !names.contains(&name) {
                self.error(&k, format!("partner {name:?} is not listed in NP_PARTNERS"));
            } else if !PARTNER_KEYS.iter().any(|s| s.name == field) {
                let known = PARTNER_KEYS.iter().map(|s| s.name);
                let hint = closest(field, known)
                    .map(|c| format!(" (did you mean NP_PARTNER_{upper}_{c}?)"))
                    .unwrap_or_default();
                self.error(&k, format!("unknown partner key{hint}"));
            }
        }
    }

    fn check_unique_certs(&mut self, partners: &[Partner]) {
        for (i, a) in partners.iter().enumerate() {
            let Some(cert) = &a.cert else { continue };
            if let Some(b) = partners[..i].iter().find(|b| b.cert.as_ref() == Some(cert)) {
                let key = format!("NP_PARTNER_{}_CERT", a.name.to_ascii_uppercase());
                self.error(
                    &key,
                    format!(
                        "the same certificate rule as partner {:?}: each certificate must map to exactly one partner",
                        b.name
                    ),
                );
            }
        }
    }

    fn partner(&mut self, name: &str, default_client_id: &str) -> Option<Partner> {
        let upper = name.to_ascii_uppercase();
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let before = self.errors.len();

        let kind_text = self.raw(&k("KIND")).unwrap_or("twiin").to_string();
        let Some(tag) = Kind::from_name(&kind_text) else {
            self.error(
                &k("KIND"),
                format!("{kind_text:?} must be twiin, mitz, zorgviewer, prs or nvi"),
            );
            return None;
        };
        // The services we only call have no certificate rule: a CERT set on
        // one is named by the check of keys per kind.
        let calls_us = CALLING.contains(&tag);
        let cert = match self.raw(&k("CERT")) {
            _ if !calls_us => Some(None),
            None | Some("") => {
                self.error(&k("CERT"), "required but not set");
                None
            }
            Some(v) => {
                let v = v.to_string();
                match v.parse::<CertSelector>() {
                    Ok(c) => Some(Some(c)),
                    Err(e) => {
                        self.error(&k("CERT"), e.to_string());
                        None
                    }
                }
            }
        };
        let allow_from = if calls_us {
            self.optional(&k("ALLOW_FROM"), AllowFrom::parse)
                .map(Option::unwrap_or_default)
        } else {
            Some(AllowFrom::default())
        };
        self.check_keys_of_kind(&upper, tag);
        let kind = match tag {
            Kind::Twiin => self
                .twiin(&upper, default_client_id)
                .map(PartnerKind::Twiin),
            Kind::Mitz => self.mitz(&upper).map(PartnerKind::Mitz),
            Kind::Zorgviewer => self.zorgviewer(&upper).map(PartnerKind::Zorgviewer),
            Kind::Prs => self.localisation(&upper, Kind::Prs).map(PartnerKind::Prs),
            Kind::Nvi => self.nvi(&upper).map(PartnerKind::Nvi),
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Partner {
            name: name.to_string(),
            cert: cert?,
            allow_from: allow_from?,
            kind: kind?,
        })
    }

    /// A key set for a kind it means nothing to is a mistake worth naming.
    fn check_keys_of_kind(&mut self, upper: &str, kind: Kind) {
        for spec in PARTNER_KEYS {
            let key = format!("NP_PARTNER_{upper}_{}", spec.name);
            if self.vars.contains_key(&key) && !spec.kinds.contains(&kind) {
                let users: Vec<&str> = spec.kinds.iter().map(|k| k.name()).collect();
                self.error(
                    &key,
                    format!(
                        "not used by a {} partner (only by {})",
                        kind.name(),
                        users.join(", ")
                    ),
                );
            }
        }
    }

    fn twiin(&mut self, upper: &str, default_client_id: &str) -> Option<Twiin> {
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let fhir_base = self.required_partner(&k("FHIR_BASE"), "twiin", parse_https_url);
        let token_url = self.optional(&k("TOKEN_URL"), parse_https_url).flatten();
        let issuer = self.optional(&k("ISSUER"), non_empty).flatten();
        let client_id = self.optional(&k("CLIENT_ID"), non_empty).flatten();
        let our_client_id = self
            .optional(&k("OUR_CLIENT_ID"), non_empty)
            .flatten()
            .unwrap_or_else(|| default_client_id.to_string());
        let org = self.required_partner(&k("ORG"), "twiin", |s| {
            OrgId::parse(s).map_err(|e| e.to_string())
        });
        let id_scheme = match self.raw(&k("ID_SCHEME")).unwrap_or("ura") {
            "ura" => IdScheme::Ura,
            "agb" => IdScheme::Agb,
            other => {
                self.error(&k("ID_SCHEME"), format!("{other:?} must be ura or agb"));
                IdScheme::Ura
            }
        };
        if id_scheme == IdScheme::Agb && self.raw("NP_ORG_AGB").unwrap_or("").is_empty() {
            self.error(&k("ID_SCHEME"), "agb needs our own AGB code in NP_ORG_AGB");
        }
        let send_bsn = self.flag(&k("SEND_BSN"));
        let address_system = self.flag(&k("ADDRESS_SYSTEM"));
        let jwks_url = self.optional(&k("JWKS_URL"), parse_https_url).flatten();
        let (audiences, accept_algs) = self.assertion_lists(upper, Kind::Twiin);
        let fhir_base = fhir_base?;
        Some(Twiin {
            assertions: AssertionPolicy {
                issuer: issuer.unwrap_or_else(|| origin_of(&fhir_base)),
                client_id: client_id.unwrap_or_else(|| host_of(&fhir_base)),
                jwks_url,
                audiences,
                accept_algs,
            },
            fhir_base,
            token_url,
            our_client_id,
            org: org?,
            id_scheme,
            send_bsn,
            address_system,
        })
    }

    fn mitz(&mut self, upper: &str) -> Option<Mitz> {
        let url = self.optional(&format!("NP_PARTNER_{upper}_URL"), parse_https_url)?;
        Some(Mitz { url })
    }

    /// `NP_ORG_CATEGORY` is unset: an error when a Mitz partner has a
    /// `URL` (the Subscription's `providertype` and the closed question's
    /// holder category need it).
    fn check_category_needed(&mut self, partners: &[Partner]) {
        let with_url: Vec<String> = partners
            .iter()
            .filter(|p| p.as_mitz().is_some_and(|m| m.url.is_some()))
            .map(|p| format!("NP_PARTNER_{}_URL", p.name.to_ascii_uppercase()))
            .collect();
        if !with_url.is_empty() {
            self.error(
                "NP_ORG_CATEGORY",
                format!(
                    "required when a mitz partner has a URL ({}): our zorgaanbiedercategorie, e.g. Z3",
                    with_url.join(", ")
                ),
            );
        }
    }

    /// The settings every `prs` and `nvi` partner has.
    fn localisation(&mut self, upper: &str, kind: Kind) -> Option<Localisation> {
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let url = self.required_partner(&k("URL"), kind.name(), parse_https_url);
        let token_url = self.required_partner(&k("TOKEN_URL"), kind.name(), parse_https_url);
        let default_scope = match kind {
            Kind::Prs => "prs:read",
            _ => "nvi:create nvi:read nvi:delete nvi:localize",
        };
        let scope = self
            .optional(&k("SCOPE"), parse_scope)
            .flatten()
            .unwrap_or_else(|| default_scope.to_string());
        let audience = self.optional(&k("AUDIENCE"), non_empty).flatten();
        let url = url?;
        Some(Localisation {
            audience: audience.unwrap_or_else(|| url.clone()),
            url,
            token_url: token_url?,
            scope,
        })
    }

    fn nvi(&mut self, upper: &str) -> Option<Nvi> {
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let service = self.localisation(upper, Kind::Nvi);
        let oin = self.required_partner(&k("OIN"), "nvi", |s| digits20(s, "OIN"));
        let pseudonym_scope = self
            .optional(&k("PSEUDONYM_SCOPE"), parse_pseudonym_scope)
            .flatten()
            .unwrap_or_else(|| "nvi".into());
        let api = match self.raw(&k("API")).unwrap_or("fhir") {
            "fhir" => NviApi::Fhir,
            "json" => NviApi::Json,
            other => {
                self.error(&k("API"), format!("{other:?} must be fhir or json"));
                NviApi::Fhir
            }
        };
        Some(Nvi {
            service: service?,
            oin: oin?,
            pseudonym_scope,
            api,
        })
    }

    /// What localisation needs besides its partners: a PRS for every NVI,
    /// our OIN towards a PRS, our source id at an NVI. Judged by the kinds
    /// configured, so a partner with a bad key is not also called missing.
    fn check_localisation(&mut self, partners: &[String], no_oin: bool, no_source_id: bool) {
        let names = |kind: Kind| -> Vec<String> {
            partners
                .iter()
                .filter(|p| {
                    self.raw(&format!("NP_PARTNER_{}_KIND", p.to_ascii_uppercase()))
                        == Some(kind.name())
                })
                .cloned()
                .collect()
        };
        let (prs, nvi) = (names(Kind::Prs), names(Kind::Nvi));
        if !nvi.is_empty() && prs.is_empty() {
            self.error(
                "NP_PARTNERS",
                format!(
                    "nvi partner(s) {} need a prs partner to evaluate their pseudonyms",
                    nvi.join(", ")
                ),
            );
        }
        if !prs.is_empty() && no_oin {
            self.error(
                "NP_ORG_OIN",
                format!(
                    "required with a prs partner ({}): our OIN, 20 digits",
                    prs.join(", ")
                ),
            );
        }
        if !nvi.is_empty() && no_source_id {
            self.error(
                "NP_SOURCE_ID",
                format!(
                    "required with an nvi partner ({}): the bare OID of our source system, which the index records with each referral",
                    nvi.join(", ")
                ),
            );
        }
    }

    /// The closed question names the requester's zorgaanbiedercategorie:
    /// while it is asked, every Zorgviewer partner it is asked for needs one.
    fn check_requester_categories(&mut self, partners: &[Partner]) {
        if !partners
            .iter()
            .any(|p| p.as_mitz().is_some_and(|m| m.url.is_some()))
        {
            return;
        }
        for p in partners {
            if let PartnerKind::Zorgviewer(z) = &p.kind {
                if z.consent == Consent::Mitz && z.requester_category.is_none() {
                    self.error(
                        &format!("NP_PARTNER_{}_REQUESTER_CATEGORY", p.name.to_ascii_uppercase()),
                        "required while a mitz partner has a URL: the zorgaanbiedercategorie the closed question names for this partner's requesting organisations, e.g. V4",
                    );
                }
            }
        }
    }

    fn zorgviewer(&mut self, upper: &str) -> Option<Zorgviewer> {
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let client_id = self.required_partner(&k("CLIENT_ID"), "zorgviewer", non_empty);
        let jwks_url = self.required_partner(&k("JWKS_URL"), "zorgviewer", parse_https_url);
        let consent = match self.raw(&k("CONSENT")).unwrap_or("mitz") {
            "mitz" => Consent::Mitz,
            "none" => Consent::None,
            other => {
                self.error(&k("CONSENT"), format!("{other:?} must be mitz or none"));
                Consent::Mitz
            }
        };
        let provider_category = self
            .optional(&k("PROVIDER_CATEGORY"), non_empty)
            .flatten()
            .unwrap_or_else(|| "RPZAC104".into());
        let requester_category = self
            .optional(&k("REQUESTER_CATEGORY"), parse_category)
            .flatten();
        let (audiences, accept_algs) = self.assertion_lists(upper, Kind::Zorgviewer);
        let client_id = client_id?;
        Some(Zorgviewer {
            assertions: AssertionPolicy {
                // Backend services: the client asserts as itself (iss = sub).
                issuer: client_id.clone(),
                client_id,
                jwks_url: Some(jwks_url?),
                audiences,
                accept_algs,
            },
            consent,
            provider_category,
            requester_category,
        })
    }

    /// `AUDIENCES` and `ACCEPT_ALGS` of a partner of `kind` that signs
    /// assertions; unset `ACCEPT_ALGS` is [`default_accept_algs`] of the kind.
    fn assertion_lists(&mut self, upper: &str, kind: Kind) -> (Vec<String>, Vec<Alg>) {
        let k = |field: &str| format!("NP_PARTNER_{upper}_{field}");
        let audiences = self
            .raw(&k("AUDIENCES"))
            .map(split_list)
            .unwrap_or_default();
        let accept_algs = match self.raw(&k("ACCEPT_ALGS")) {
            None => default_accept_algs(kind),
            Some(list) => {
                let names = split_list(list);
                let algs: Vec<Alg> = names
                    .iter()
                    .filter_map(|n| Alg::from_name(n))
                    .filter(|a| ACCEPTABLE_ALGS.contains(a))
                    .collect();
                if names.is_empty() || algs.len() != names.len() {
                    self.error(
                        &k("ACCEPT_ALGS"),
                        format!(
                            "must be a comma-separated list of {} (none, HS* and others are never accepted)",
                            alg_names(ACCEPTABLE_ALGS)
                        ),
                    );
                }
                algs
            }
        };
        (audiences, accept_algs)
    }

    /// A partner key its kind requires.
    fn required_partner<T>(
        &mut self,
        key: &str,
        kind: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.raw(key) {
            None | Some("") => {
                self.error(key, format!("required for a {kind} partner"));
                None
            }
            Some(_) => self.optional(key, parse).flatten(),
        }
    }

    fn flag(&mut self, key: &str) -> bool {
        self.optional(key, parse_bool).flatten().unwrap_or(false)
    }
}

fn check_path(p: &Path, check: FileCheck) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    match check {
        FileCheck::Directory => {
            if !meta.is_dir() {
                return Err(format!("{} is not a directory", p.display()));
            }
            std::fs::read_dir(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        }
        FileCheck::Readable | FileCheck::Secret => {
            if !meta.is_file() {
                return Err(format!("{} is not a regular file", p.display()));
            }
            std::fs::File::open(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            if check == FileCheck::Secret {
                crate::pki::check_key_file_permissions(p).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        Err(format!("{s:?} must be longer than zero"))
    } else {
        Ok(d)
    }
}

/// A duration of whole seconds from 1 s to 1 d.
fn whole_seconds(s: &str) -> Result<Duration, String> {
    let d = positive_duration(s)?;
    if d.as_secs() >= 1 && d <= Duration::from_secs(86_400) {
        Ok(d)
    } else {
        Err(format!("{s:?} must be from 1s to 1d"))
    }
}

/// A zorgaanbiedercategorie code (`Z3`): 1 to 16 letters and digits. It is
/// written into the Subscription's criteria, a URL query, so nothing else
/// is let through.
fn parse_category(s: &str) -> Result<String, String> {
    let t = s.trim();
    if (1..=16).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{s:?} is not a zorgaanbiedercategorie code (1 to 16 letters and digits, e.g. Z3)"
        ))
    }
}

/// A bare OID (`2.16.840.1.113883.2.4.6.6.1`); FHIR gets `urn:oid:` added.
fn bare_oid(s: &str) -> Result<Oid, String> {
    let t = s.trim();
    if let Some(bare) = t.strip_prefix("urn:oid:") {
        return Err(format!(
            "{s:?}: configure the bare OID ({bare}); urn:oid: is added where FHIR needs it"
        ));
    }
    Oid::parse(t).ok_or_else(|| format!("{s:?} is not a dotted OID"))
}

fn digits20(s: &str, what: &str) -> Result<String, String> {
    if let Some(bare) = s.strip_prefix("oin:") {
        return Err(format!(
            "{s:?}: configure the 20 digits ({bare}); oin: is added where it is sent"
        ));
    }
    if is_digits(s, 20) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a 20-digit {what}"))
    }
}

/// and `\\` (RFC 6749 §3.3).
fn parse_scope(s: &str) -> Result<String, String> {
    let tokens: Vec<&str> = s.split_whitespace().collect();
    let ok = !tokens.is_empty()
        && tokens.iter().all(|t| {
            t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    if ok {
        Ok(tokens.join(" "))
    } else {
        Err(format!(
            "{s:?} must be space-separated scope tokens (visible ASCII without \" and \\)"
        ))
    }
}

/// A recipient scope: it is part of the pseudonym's input (`<org>|<scope>|v1`),
/// so no `|` and nothing invisible.
fn parse_pseudonym_scope(s: &str) -> Result<String, String> {
    if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'|') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} must be 1 to 64 visible ASCII characters without |"
        ))
    }
}

fn digits8(s: &str, what: &str) -> Result<String, String> {
    if is_digits(s, 8) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an 8-digit {what}"))
    }
}

fn is_oid(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').count() >= 2
        && s.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

fn parse_partner_names(s: &str) -> Result<Vec<String>, String> {
    let names = split_list(s);
    for n in &names {
        if n.is_empty()
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "{n:?} is not a valid partner name: [a-z0-9]{{1,32}}, no underscore"
            ));
        }
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(format!("partner {n:?} is listed twice"));
        }
    }
    Ok(names)
}

/// An `https://host[:port]` origin, returned with scheme and host in lower
/// case, the port as written and without a trailing slash.
fn parse_origin(s: &str) -> Result<String, String> {
    let url = https_url(s)?;
    if !matches!(url.path(), "" | "/") {
        return Err(format!(
            "{:?} must be an origin (https://host[:port]) without a path",
            s.trim()
        ));
    }
    Ok(url.to_string().trim_end_matches('/').to_string())
}

/// An absolute `https://` URL without query, returned with scheme and host
/// in lower case, port and path as written, without a trailing slash.
pub(crate) fn parse_https_url(s: &str) -> Result<String, String> {
    let url = https_url(s)?;
    Ok(url.to_string().trim_end_matches('/').to_string())
}

/// The one URL parser ([`crate::util::url`]): no user information,
/// fragment, white space or invalid host, port or path; here also no query.
fn https_url(s: &str) -> Result<crate::util::url::Url, String> {
    let s = s.trim();
    let url = crate::util::url::Url::parse_https(s).map_err(|e| format!("{s:?} {e}"))?;
    if url.query().is_some() {
        return Err(format!("{s:?} must not have a query"));
    }
    Ok(url)
}

/// `https://host:port/path` → `https://host:port` (the port only when it is
/// not 443); a URL that does not parse is returned as it is.
pub fn origin_of(url: &str) -> String {
    crate::util::url::Url::parse(url).map_or_else(|_| url.to_string(), |u| u.origin())
}

/// `https://host:port/path` → `host` (no scheme, no port; an IPv6 address
/// in brackets); a URL that does not parse is returned as it is.
pub fn host_of(url: &str) -> String {
    crate::util::url::Url::parse(url).map_or_else(|_| url.to_string(), |u| u.host().to_string())
}

/// The known key closest to `unknown` by edit distance, if reasonably close.
fn closest(unknown: &str, known: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    known
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support;
