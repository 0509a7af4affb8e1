//! JWS compact serialization and JWK/JWKS (RFC 7515, 7517, 7518, 7638) for the
//! assertions of Twiin TA Notified Pull (RFC 7523).
//!
//! Signatures go through ring, except ES512: ring has no P-521, so that one
//! uses RustCrypto's `p521`. RSA keys are only *generated* with the `rsa` crate
//! (ring cannot); they are always loaded and used through ring.
//!
//! What this module decides and what it leaves to others:
//! - [`verify_compact`] checks the JOSE layer only: shape, strict base64url,
//!   header rules, algorithm allow-list, key choice and signature. The payload
//!   comes back as bytes; claim checks (`iss`, `aud`, `exp`, `jti`, …) belong
//!   to the `assertion` module.
//! - The algorithm set is closed: [`Alg`] has no `none` and no `HS*`, so no
//!   caller can ever allow them.
//! - Nothing here logs. Errors name the part, member or algorithm at fault and
//!   never carry a token, a payload or key material; header values that an
//!   attacker chooses (`alg`, `kid`, `typ`) appear quoted, escaped and cut to
//!   64 characters.

mod json;
mod jwk;
mod sign;
mod verify;

pub use jwk::{Jwk, Jwks};
pub use sign::{SigningKey, generate_pkcs8_pem};
pub use verify::{VerifiedJws, verify_compact};

use std::fmt;

/// Largest compact JWS [`verify_compact`] looks at (and [`SigningKey::sign_jwt`] emits).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS document [`Jwks::parse`] accepts; fetchers should stop reading there.
pub const MAX_JWKS_LEN: usize = 64 * 1024;
/// Most entries a JWKS `keys` array may hold (skipped ones included).
pub const MAX_JWKS_KEYS: usize = 32;
/// Longest `kid` accepted in a JWK or configured for our own key, in bytes.
pub const MAX_KID_LEN: usize = 256;

/// A JWS signature algorithm we implement (RFC 7518 §3). Deliberately without
/// `none` and the `HS*` family: those cannot be expressed, so never allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PSS, SHA-256, MGF1 with SHA-256, salt length 32.
    Ps256,
    /// RSASSA-PSS, SHA-384, MGF1 with SHA-384, salt length 48.
    Ps384,
    /// RSASSA-PSS, SHA-512, MGF1 with SHA-512, salt length 64.
    Ps512,
    /// ECDSA on P-256 with SHA-256, 64-byte `r||s`.
    Es256,
    /// ECDSA on P-384 with SHA-384, 96-byte `r||s`.
    Es384,
    /// ECDSA on P-521 with SHA-512, 132-byte `r||s`.
    Es512,
    /// RSASSA-PKCS1-v1_5 with SHA-256. Accepted only where a caller adds it to
    /// the allow-list (spec §4: per partner).
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384: what SMART backend services require
    /// servers to verify. Accepted only where a caller adds it to the
    /// allow-list (a Zorgviewer partner's default does).
    Rs384,
}

/// How many of [`Alg::ALL`] are RSASSA-PKCS1-v1_5 (`RS*`): they come last.
const PKCS1_COUNT: usize = 2;

/// Algorithms accepted from partners unless configured otherwise (spec §4):
/// the PSS and ECDSA algorithms, the head of [`Alg::ALL`]. The PKCS#1 v1.5
/// ones (`RS*`, the tail) are left out on purpose; a test holds the split.
pub const DEFAULT_ACCEPTED: &[Alg] = Alg::ALL.split_at(Alg::ALL.len() - PKCS1_COUNT).0;

/// The PKCS#1 v1.5 algorithms, the tail of [`Alg::ALL`]: verified only where
/// a partner's allow-list names them.
pub const PKCS1_ALGS: &[Alg] = Alg::ALL.split_at(Alg::ALL.len() - PKCS1_COUNT).1;

impl Alg {
    /// Every algorithm, in a stable order: the PSS and ECDSA ones first
    /// ([`DEFAULT_ACCEPTED`]), then the PKCS#1 v1.5 ones ([`PKCS1_ALGS`]).
    pub const ALL: [Alg; 8] = [
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::Rs256,
        Alg::Rs384,
    ];

    /// The JWS `alg` name (`"PS256"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
        }
    }

    /// The algorithm with this exact JWS name; names are case-sensitive
    /// (RFC 7515 §4.1.1), so `"ps256"` is `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// True for the algorithms that need an RSA key.
    pub fn is_rsa(self) -> bool {
        matches!(
            self,
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 | Alg::Rs384
        )
    }

    /// True for RSASSA-PKCS1-v1_5 (`RS*`), never in [`DEFAULT_ACCEPTED`].
    pub fn is_pkcs1(self) -> bool {
        matches!(self, Alg::Rs256 | Alg::Rs384)
    }

    /// The curve an ECDSA algorithm needs; `None` for RSA algorithms.
    fn curve(self) -> Option<jwk::Curve> {
        match self {
            Alg::Es256 => Some(jwk::Curve::P256),
            Alg::Es384 => Some(jwk::Curve::P384),
            Alg::Es512 => Some(jwk::Curve::P521),
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 | Alg::Rs384 => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of a message an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The protected header of a JWS.
    Header,
    /// The payload of a JWS.
    Payload,
    /// The signature of a JWS.
    Signature,
    /// A JWK Set document as a whole.
    Jwks,
    /// One entry of a JWKS `keys` array, by position (from 0).
    JwksKey(usize),
    /// Claims handed to [`SigningKey::sign_jwt`].
    Claims,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Header => f.write_str("jws header"),
            Part::Payload => f.write_str("jws payload"),
            Part::Signature => f.write_str("jws signature"),
            Part::Jwks => f.write_str("jwks"),
            Part::JwksKey(index) => write!(f, "jwks key #{index}"),
            Part::Claims => f.write_str("claims"),
        }
    }
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureProblem {
    /// The signature has the right form but does not verify with the key.
    Invalid,
    /// An ECDSA signature that is not the fixed-width JWS `r||s` form, such as
    /// an ASN.1 DER signature (a common interoperability mistake).
    Length { expected: usize, found: usize },
}

/// Everything that can go wrong in this module. Display texts are lower-case,
/// say what was expected and what came, and never contain a token, a payload
/// or key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoseError {
    /// A token or document over its size cap.
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A compact JWS that is not exactly three dot-separated segments.
    Segments { found: usize },
    /// A segment or member that is not strict unpadded base64url.
    Base64 {
        part: Part,
        member: Option<&'static str>,
    },
    /// Not JSON, not an object, or an object with a duplicate member.
    Json { part: Part, problem: String },
    /// A member missing or of the wrong type or form.
    Member {
        part: Part,
        member: &'static str,
        problem: String,
    },
    /// `alg: none` (any case).
    AlgNone,
    /// An HMAC algorithm (`HS256`, …): never accepted, whatever the key set holds.
    AlgHmac { alg: String },
    /// An `alg` name we do not implement.
    AlgUnknown { alg: String },
    /// A known algorithm that the caller's allow-list does not contain.
    AlgNotAllowed { alg: Alg },
    /// A `crit` header: we understand no extensions, so any is refused.
    Crit,
    /// A `typ` header other than `JWT`.
    Typ { typ: String },
    /// No `kid` in the header, and the key set holds `keys` keys (skipped
    /// entries counted), not exactly one.
    NoKid { keys: usize },
    /// A `kid` the key set does not hold. Callers refetch the JWKS once on this.
    UnknownKid { kid: String },
    /// More than one key with this `kid` fits the alg.
    AmbiguousKid { kid: String },
    /// The header `alg` does not fit the selected key.
    AlgKeyMismatch {
        alg: Alg,
        key: String,
        problem: String,
    },
    /// The signature did not verify.
    BadSignature {
        alg: Alg,
        key: String,
        problem: SignatureProblem,
    },
    /// A JWKS `keys` array with too many entries.
    TooManyKeys { count: usize, max: usize },
    /// Two keys in a set with the same `kid`, key type and curve.
    DuplicateKid { kid: String },
    /// A private key that cannot be loaded or does not fit the algorithm.
    Key { alg: Alg, problem: String },
    /// A configured `kid` that cannot be published.
    Kid { problem: String },
    /// Signing failed inside the crypto library.
    Sign { alg: Alg },
    /// The system random number generator failed.
    Random,
    /// Key generation failed.
    KeyGen { alg: Alg, problem: String },
}

impl fmt::Display for JoseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoseError::TooLarge { what, len, max } => {
                write!(f, "{what} is {len} bytes, at most {max} accepted")
            }
            JoseError::Segments { found } => write!(
                f,
                "compact jws must have 3 dot-separated segments, found {found}"
            ),
            JoseError::Base64 { part, member } => match member {
                Some(member) => write!(
                    f,
                    "{part} member \"{member}\" is not unpadded base64url (RFC 7515 §2)"
                ),
                None => write!(f, "{part} is not unpadded base64url (RFC 7515 §2)"),
            },
            JoseError::Json { part, problem } => write!(f, "{part}: {problem}"),
            JoseError::Member {
                part,
                member,
                problem,
            } => write!(f, "{part} member \"{member}\" {problem}"),
            JoseError::AlgNone => f.write_str("jws alg \"none\" is never accepted"),
            JoseError::AlgHmac { alg } => write!(
                f,
                "jws alg {alg} is an hmac algorithm, never accepted (asymmetric signatures only)"
            ),
            JoseError::AlgUnknown { alg } => write!(
                f,
                "jws alg {alg} is not supported (expected one of PS256, PS384, PS512, ES256, ES384, ES512, RS256, RS384)"
            ),
            JoseError::AlgNotAllowed { alg } => {
                write!(f, "jws alg {alg} is not in the accepted algorithms")
            }
            JoseError::Crit => f.write_str(
                "jws header has \"crit\": no extensions are understood, so the token is refused",
            ),
            JoseError::Typ { typ } => write!(f, "jws typ {typ} refused, expected \"JWT\""),
            JoseError::NoKid { keys } => write!(
                f,
                "jws header has no kid and the key set holds {keys} keys; without kid exactly 1 is allowed"
            ),
            JoseError::UnknownKid { kid } => write!(f, "jws kid {kid} is not in the key set"),
            JoseError::AmbiguousKid { kid } => write!(
                f,
                "jws kid {kid} names more than one key in the key set that fits the alg"
            ),
            JoseError::AlgKeyMismatch { alg, key, problem } => {
                write!(f, "jws alg {alg} does not fit key {key}: {problem}")
            }
            JoseError::BadSignature { alg, key, problem } => match problem {
                SignatureProblem::Invalid => {
                    write!(f, "{alg} signature does not verify with key {key}")
                }
                SignatureProblem::Length { expected, found } => write!(
                    f,
                    "{alg} signature is {found} bytes, expected {expected} (fixed-width r||s, not DER)"
                ),
            },
            JoseError::TooManyKeys { count, max } => {
                write!(f, "jwks holds {count} keys, at most {max} accepted")
            }
            JoseError::DuplicateKid { kid } => write!(
                f,
                "jwks holds more than one key with kid {kid} of the same key type and curve"
            ),
            JoseError::Key { alg, problem } => write!(f, "signing key for {alg}: {problem}"),
            JoseError::Kid { problem } => write!(f, "signing key kid {problem}"),
            JoseError::Sign { alg } => write!(f, "{alg} signing failed in the crypto library"),
            JoseError::Random => f.write_str("the system random number generator failed"),
            JoseError::KeyGen { alg, problem } => {
                write!(f, "generating a {alg} key failed: {problem}")
            }
        }
    }
}

impl std::error::Error for JoseError {}

/// A value an attacker may choose (a header `alg`, `kid` or `typ`), made safe
/// for error messages and logs: reduced ([`crate::util::untrusted::reduced`]:
/// safe alphabet, no digit runs, at most 64 characters and `~` after a cut)
/// and quoted.
fn shown(value: &str) -> String {
    format!("\"{}\"", crate::util::untrusted::reduced(value))
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Keys generated once per test binary: RSA generation is slow, and one
    //! key per type is all the rejection tests need.

    use super::{Alg, SigningKey, generate_pkcs8_pem};
    use std::sync::OnceLock;

    /// PKCS#8 PEM of the shared test key for `alg` (the RSA key is the same
    /// for PS256, PS384, PS512, RS256 and RS384).
    pub(crate) fn pem(alg: Alg) -> &'static str {
        static RSA: OnceLock<String> = OnceLock::new();
        static P256: OnceLock<String> = OnceLock::new();
        static P384: OnceLock<String> = OnceLock::new();
        static P521: OnceLock<String> = OnceLock::new();
        let cell = match alg {
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 | Alg::Rs384 => &RSA,
            Alg::Es256 => &P256,
            Alg::Es384 => &P384,
            Alg::Es512 => &P521,
        };
        cell.get_or_init(|| generate_pkcs8_pem(alg).unwrap())
    }

    /// A signing key for `alg` over the shared test key, kid = thumbprint.
    pub(crate) fn key(alg: Alg) -> SigningKey {
        SigningKey::from_pkcs8_pem(pem(alg), alg, None).unwrap()
    }

    /// A compact JWS with any header bytes, signed by `key`: for tests of
    /// headers our signer never writes (no `kid`, `crit`, another `typ`).
    pub(crate) fn dangerous_sign_with_header(
        key: &SigningKey,
        header: &[u8],
        claims: &[u8],
    ) -> String {
        use crate::util::b64;
        let input = format!("{}.{}", b64::encode(header), b64::encode(claims));
        let signature = key.sign_raw(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_algs_are_verifiable_but_not_accepted_by_default() {
        assert_eq!(
            DEFAULT_ACCEPTED,
            [
                Alg::Ps256,
                Alg::Ps384,
                Alg::Ps512,
                Alg::Es256,
                Alg::Es384,
                Alg::Es512
            ]
        );
        assert_eq!(PKCS1_ALGS, [Alg::Rs256, Alg::Rs384]);
        // The split of ALL is exact: every algorithm on exactly one side,
        // and the side is decided by the kind of algorithm, not by position.
        for alg in Alg::ALL {
            assert_ne!(
                DEFAULT_ACCEPTED.contains(&alg),
                PKCS1_ALGS.contains(&alg),
                "{alg}"
            );
            assert_eq!(PKCS1_ALGS.contains(&alg), alg.is_pkcs1(), "{alg}");
        }
        assert_eq!(DEFAULT_ACCEPTED.len() + PKCS1_ALGS.len(), Alg::ALL.len());
    }

    #[test]
    fn alg_names_round_trip_and_are_case_sensitive() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
            assert_eq!(Alg::from_name(&alg.name().to_lowercase()), None);
        }
        for name in ["none", "HS256", "EdDSA", "ES256K", "", "PS256 "] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
        assert!(!DEFAULT_ACCEPTED.iter().any(|a| a.is_pkcs1()));
        assert_eq!(DEFAULT_ACCEPTED.len(), 6);
    }

    #[test]
    fn shown_reduces_quotes_and_cuts() {
        assert_eq!(shown("abc"), "\"abc\"");
        assert_eq!(shown("a\nb\u{1b}\" level=error"), "\"a_b___level_error\"");
        assert_eq!(shown("kid-999999151"), "\"kid-#\"");
        let long = "x".repeat(200);
        let s = shown(&long);
        assert!(s.ends_with("~\"") && s.chars().count() == 64 + 3, "{s}");
    }

    #[test]
    fn error_messages_are_lower_case_and_name_the_fault() {
        let e = JoseError::AlgNotAllowed { alg: Alg::Rs256 };
        assert_eq!(
            e.to_string(),
            "jws alg RS256 is not in the accepted algorithms"
        );
        let e = JoseError::BadSignature {
            alg: Alg::Es256,
            key: shown("k1"),
            problem: SignatureProblem::Length {
                expected: 64,
                found: 71,
            },
        };
        assert_eq!(
            e.to_string(),
            "ES256 signature is 71 bytes, expected 64 (fixed-width r||s, not DER)"
        );
        let e = JoseError::Member {
            part: Part::JwksKey(3),
            member: "x",
            problem: "must be 32 bytes for P-256, found 31".into(),
        };
        assert_eq!(
            e.to_string(),
            "jwks key #3 member \"x\" must be 32 bytes for P-256, found 31"
        );
    }
}
