//! Verification of compact JWS (RFC 7515 §5.2) against a partner's key set.

use super::json;
use super::jwk::{Curve, Jwk, KeyMaterial};
use super::{Alg, JoseError, Jwks, MAX_TOKEN_LEN, Part, SignatureProblem, shown};
use crate::util::b64;
use ring::signature as ring_sig;
use std::fmt;

/// A JWS whose header passed our rules and whose signature verified. Only
/// [`verify_compact`] makes one. The payload is not interpreted here.
pub struct VerifiedJws {
    alg: Alg,
    kid: Option<String>,
    payload: Vec<u8>,
}

impl VerifiedJws {
    /// The algorithm the signature was verified with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The `kid` of the key that verified the signature (the header's `kid`,
    /// or the single fitting key's own `kid` when the header had none).
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The verified payload bytes (claims JSON, for the `assertion` module).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The verified payload, by value.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

impl fmt::Debug for VerifiedJws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedJws")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Verifies a compact JWS against `keys`, accepting only algorithms in
/// `allowed` (usually [`super::DEFAULT_ACCEPTED`], plus `RS256` where a
/// partner needs it).
///
/// Checks, in order; the first failure is returned:
/// 1. at most [`MAX_TOKEN_LEN`] bytes, exactly three segments;
/// 2. header: strict base64url, a JSON object without duplicate members;
/// 3. `alg` present: `none` and `HS*` refused outright, unknown names refused,
///    then the allow-list;
/// 4. no `crit` at all; `typ`, if present, `JWT` (any case); `kid`, if
///    present, a string. `jku`, `x5u`, `jwk` and `x5c` are ignored: keys come
///    only from `keys`;
/// 5. signature: strict base64url;
/// 6. key: by `kid` ([`JoseError::UnknownKid`] when absent from the set), or,
///    without `kid`, the one key in the set that fits `alg`
///    ([`JoseError::NoKid`] otherwise); the key must fit `alg`
///    ([`JoseError::AlgKeyMismatch`]);
/// 7. the signature verifies (ECDSA only in fixed-width `r||s` form);
/// 8. payload: strict base64url.
pub fn verify_compact(token: &str, keys: &Jwks, allowed: &[Alg]) -> Result<VerifiedJws, JoseError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JoseError::TooLarge {
            what: "compact jws",
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JoseError::Segments {
            found: token.split('.').count(),
        });
    };
    let header = Header::parse(header_b64)?;
    if !allowed.contains(&header.alg) {
        return Err(JoseError::AlgNotAllowed { alg: header.alg });
    }
    let signature = b64::decode(signature_b64).map_err(|_| JoseError::Base64 {
        part: Part::Signature,
        member: None,
    })?;
    let key = select_key(keys, header.kid.as_deref(), header.alg)?;
    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    check_signature(header.alg, key, signing_input, &signature).map_err(|problem| {
        JoseError::BadSignature {
            alg: header.alg,
            key: key.label(),
            problem,
        }
    })?;
    let payload = b64::decode(payload_b64).map_err(|_| JoseError::Base64 {
        part: Part::Payload,
        member: None,
    })?;
    Ok(VerifiedJws {
        alg: header.alg,
        kid: key.kid().map(str::to_owned),
        payload,
    })
}

/// The header members we act on.
struct Header {
    alg: Alg,
    kid: Option<String>,
}

impl Header {
    fn parse(segment: &str) -> Result<Header, JoseError> {
        let part = Part::Header;
        let bytes = b64::decode(segment).map_err(|_| JoseError::Base64 { part, member: None })?;
        let object =
            json::parse_object(&bytes).map_err(|problem| JoseError::Json { part, problem })?;
        let member_str = |member: &'static str| {
            object.opt_str(member).map_err(|problem| JoseError::Member {
                part,
                member,
                problem,
            })
        };
        let alg = member_str("alg")?.ok_or_else(|| JoseError::Member {
            part,
            member: "alg",
            problem: "is required".into(),
        })?;
        let alg = classify_alg(alg)?;
        if object.contains("crit") {
            return Err(JoseError::Crit);
        }
        if let Some(typ) = member_str("typ")?
            && !typ.eq_ignore_ascii_case("JWT")
        {
            return Err(JoseError::Typ { typ: shown(typ) });
        }
        let kid = member_str("kid")?.map(str::to_owned);
        Ok(Header { alg, kid })
    }
}

/// `none` and the HMAC family get their own errors: they are attacks (or
/// gross misconfiguration), not merely unsupported algorithms.
fn classify_alg(name: &str) -> Result<Alg, JoseError> {
    if let Some(alg) = Alg::from_name(name) {
        return Ok(alg);
    }
    if name.eq_ignore_ascii_case("none") {
        return Err(JoseError::AlgNone);
    }
    if name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(JoseError::AlgHmac { alg: shown(name) });
    }
    Err(JoseError::AlgUnknown { alg: shown(name) })
}

fn select_key<'k>(keys: &'k Jwks, kid: Option<&str>, alg: Alg) -> Result<&'k Jwk, JoseError> {
    let candidates: Vec<&Jwk> = match kid {
        Some(kid) => keys.keys.iter().filter(|k| k.kid() == Some(kid)).collect(),
        None => keys.keys.iter().collect(),
    };
    let fitting: Vec<&Jwk> = candidates
        .iter()
        .copied()
        .filter(|key| key.fit(alg).is_ok())
        .collect();
    match (kid, fitting.as_slice(), candidates.first()) {
        (_, [key], _) => Ok(key),
        (None, _, _) => Err(JoseError::NoKid {
            alg,
            usable: fitting.len(),
        }),
        (Some(kid), [], None) => Err(JoseError::UnknownKid { kid: shown(kid) }),
        (Some(_), [], Some(named)) => Err(JoseError::AlgKeyMismatch {
            alg,
            key: named.label(),
            problem: named.fit(alg).err().unwrap_or_default(),
        }),
        (Some(kid), _, _) => Err(JoseError::AmbiguousKid { kid: shown(kid) }),
    }
}

/// Verifies `signature` over `message`. Only the (alg, key) pairs that
/// [`Jwk::fit`] admits reach here; any other pair fails closed.
fn check_signature(
    alg: Alg,
    key: &Jwk,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureProblem> {
    use KeyMaterial::{Ec, Rsa};
    match (alg, key.material()) {
        (Alg::Ps256, Rsa { n, e }) => verify_rsa(
            &ring_sig::RSA_PSS_2048_8192_SHA256,
            n,
            e,
            message,
            signature,
        ),
        (Alg::Ps384, Rsa { n, e }) => verify_rsa(
            &ring_sig::RSA_PSS_2048_8192_SHA384,
            n,
            e,
            message,
            signature,
        ),
        (Alg::Ps512, Rsa { n, e }) => verify_rsa(
            &ring_sig::RSA_PSS_2048_8192_SHA512,
            n,
            e,
            message,
            signature,
        ),
        (Alg::Rs256, Rsa { n, e }) => verify_rsa(
            &ring_sig::RSA_PKCS1_2048_8192_SHA256,
            n,
            e,
            message,
            signature,
        ),
        (
            Alg::Es256,
            Ec {
                curve: Curve::P256,
                x,
                y,
            },
        ) => verify_ecdsa(
            &ring_sig::ECDSA_P256_SHA256_FIXED,
            Curve::P256,
            x,
            y,
            message,
            signature,
        ),
        (
            Alg::Es384,
            Ec {
                curve: Curve::P384,
                x,
                y,
            },
        ) => verify_ecdsa(
            &ring_sig::ECDSA_P384_SHA384_FIXED,
            Curve::P384,
            x,
            y,
            message,
            signature,
        ),
        (
            Alg::Es512,
            Ec {
                curve: Curve::P521,
                x,
                y,
            },
        ) => verify_p521(x, y, message, signature),
        _ => Err(SignatureProblem::Invalid),
    }
}

fn verify_rsa(
    params: &'static ring_sig::RsaParameters,
    n: &[u8],
    e: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureProblem> {
    ring_sig::RsaPublicKeyComponents { n, e }
        .verify(params, message, signature)
        .map_err(|_| SignatureProblem::Invalid)
}

fn verify_ecdsa(
    algorithm: &'static ring_sig::EcdsaVerificationAlgorithm,
    curve: Curve,
    x: &[u8],
    y: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureProblem> {
    fixed_width(curve, signature)?;
    ring_sig::UnparsedPublicKey::new(algorithm, uncompressed_point(x, y))
        .verify(message, signature)
        .map_err(|_| SignatureProblem::Invalid)
}

/// ES512 through `p521` (ring has no P-521). The point is checked to be on
/// the curve; `r` and `s` must lie in [1, n-1].
fn verify_p521(
    x: &[u8],
    y: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureProblem> {
    use p521::ecdsa::signature::Verifier as _;
    fixed_width(Curve::P521, signature)?;
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(&uncompressed_point(x, y))
        .map_err(|_| SignatureProblem::Invalid)?;
    let signature =
        p521::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureProblem::Invalid)?;
    key.verify(message, &signature)
        .map_err(|_| SignatureProblem::Invalid)
}

/// JWS ECDSA signatures are `r||s`, each the curve's coordinate width
/// (RFC 7518 §3.4); a DER signature, the usual mistake, is refused by length.
fn fixed_width(curve: Curve, signature: &[u8]) -> Result<(), SignatureProblem> {
    let expected = 2 * curve.coordinate_len();
    if signature.len() == expected {
        Ok(())
    } else {
        Err(SignatureProblem::Length {
            expected,
            found: signature.len(),
        })
    }
}

/// SEC1 `04 || x || y`.
fn uncompressed_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    [&[0x04][..], x, y].concat()
}
