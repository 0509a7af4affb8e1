//! np-agent: edge agent for Dutch health data exchange (Twiin TA Notified Pull,
//! Mitz consent notifications, Zorgviewer source access).
//!
//! The modules in layers, from the codecs at the bottom to the commands at the
//! top: each uses only modules listed above it (the one pair that share a table
//! is `cli` and `manpage`), so data read off the wire or a folder flows down this
//! list from parsing to a decision to durable state, and `daemon`/`cli` at the
//! end wire it together. `tests/layers.rs` holds the code to this order.
//! `docs/architecture.md` tells how a request and an export travel through them.
#![forbid(unsafe_code)]

pub mod util; // codecs (percent, URL, Retry-After, base64url), time, randomness, durable writes
pub mod ids; // BSN, URA/AGB organisations and their OID forms
pub mod jose; // JWS/JWK/JWKS on ring: sign, verify, keys
pub mod pki; // certificates, trust, CRLs, peer identity, TLS configurations
pub mod config; // env file → typed, validated Config with typed partners
pub mod ops; // logging, metrics, sd_notify
pub mod http; // bounded mTLS server, admin listener, outgoing client
pub mod fhir; // FHIR JSON/XML, STU3/R4, OperationOutcome, media types
pub mod assertion; // JWT claims of TA assertions, the jti replay cache
pub mod audit; // NEN 7513 audit trail
pub mod spool; // durable work items and their states
pub mod circuit; // per-partner circuit breakers
pub mod worker; // the spool dispatcher and its workers
pub mod backpressure; // refusing new work while the disk is nearly full
pub mod oauth; // token decision (pure), token endpoint, token store, token client
pub mod cases; // exported cases and the authorization bases we issued
pub mod records; // records published to Zorgviewer partners, indexed by patient
pub mod sender; // outbox → notification Task → delivery
pub mod consent; // the release decision: may this partner see this patient's data
pub mod serve; // scoped FHIR reads and searches for a pull token
pub mod zorgviewer; // Zorgviewer request context (X-ZV headers, X-ZV-Context, Epic AORTA-ID)
pub mod receiver; // notification Task intake, cancellation, pull into the inbox
pub mod mitz; // Mitz consent notification intake and consent view
pub mod nvi; // localisation: our referrals in the national referral index, pseudonyms from the PRS
pub mod certwatch; // certificate expiry warnings
pub mod daemon; // assembly, request routing, signals, reload and drain
pub mod doctor; // `np-agent doctor`: file, TLS and partner checks
pub mod demo; // `np-agent demo`: two agents and a broker on loopback
pub mod cli; // the command line
pub mod manpage; // man pages and the default env file, from the cli and key tables
