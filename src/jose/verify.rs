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
    /// or the set's one key's own `kid` when the header had none).
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
///    without `kid`, the set's key when it holds exactly one, skipped entries
///    counted ([`JoseError::NoKid`] otherwise, spec §14); the key must fit
///    `alg` ([`JoseError::AlgKeyMismatch`]);
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
    let header = Header::parse(header_b64, allowed)?;
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
    fn parse(segment: &str, allowed: &[Alg]) -> Result<Header, JoseError> {
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
        if !allowed.contains(&alg) {
            return Err(JoseError::AlgNotAllowed { alg });
        }
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
    let mismatch = |key: &Jwk| JoseError::AlgKeyMismatch {
        alg,
        key: key.label(),
        problem: key.fit(alg).err().unwrap_or_default(),
    };
    let Some(kid) = kid else {
        // Without kid only a set of exactly one key (spec §14), skipped
        // entries counted: a key is never picked by what fits.
        return match (keys.keys.as_slice(), keys.skipped) {
            ([key], 0) if key.fit(alg).is_ok() => Ok(key),
            ([key], 0) => Err(mismatch(key)),
            _ => Err(JoseError::NoKid {
                keys: keys.keys.len() + keys.skipped,
            }),
        };
    };
    let named: Vec<&Jwk> = keys.keys.iter().filter(|k| k.kid() == Some(kid)).collect();
    let fitting: Vec<&Jwk> = named
        .iter()
        .copied()
        .filter(|key| key.fit(alg).is_ok())
        .collect();
    match (fitting.as_slice(), named.first()) {
        ([key], _) => Ok(key),
        ([], None) => Err(JoseError::UnknownKid { kid: shown(kid) }),
        ([], Some(named)) => Err(mismatch(named)),
        _ => Err(JoseError::AmbiguousKid { kid: shown(kid) }),
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
        (Alg::Rs384, Rsa { n, e }) => verify_rsa(
            &ring_sig::RSA_PKCS1_2048_8192_SHA384,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{DEFAULT_ACCEPTED, SigningKey, test_keys};

    const CLAIMS: &[u8] = br#"{"iss":"https://np.a.example","sub":"a","aud":"https://np.b.example/oauth/token","iat":1734619244,"exp":1734619304,"jti":"b7f219b7-baae-4af5-8501-f027f32843bd"}"#;

    fn set(keys: &[&SigningKey]) -> Jwks {
        Jwks::new(keys.iter().map(|k| k.public_jwk()).collect()).unwrap()
    }

    /// A token with any header, signed by `key` over exactly these segments.
    fn forge(key: &SigningKey, header: &str, payload_b64: &str) -> String {
        let input = format!("{}.{payload_b64}", b64::encode(header.as_bytes()));
        let signature = key.sign_raw(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&signature))
    }

    fn header(alg: &str, key: &SigningKey) -> String {
        format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#, key.kid())
    }

    fn with_signature(token: &str, signature: &[u8]) -> String {
        let (input, _) = token.rsplit_once('.').unwrap();
        format!("{input}.{}", b64::encode(signature))
    }

    fn signature_of(token: &str) -> Vec<u8> {
        b64::decode(token.rsplit('.').next().unwrap()).unwrap()
    }

    fn err(token: &str, keys: &Jwks) -> JoseError {
        verify_compact(token, keys, &Alg::ALL).unwrap_err()
    }

    #[test]
    fn round_trip_for_every_alg() {
        for alg in Alg::ALL {
            let key = test_keys::key(alg);
            let token = key.sign_jwt(CLAIMS).unwrap();
            let verified = verify_compact(&token, &set(&[&key]), &Alg::ALL).unwrap();
            assert_eq!(verified.alg(), alg);
            assert_eq!(verified.kid(), Some(key.kid()));
            assert_eq!(verified.payload(), CLAIMS);
            assert_eq!(verified.into_payload(), CLAIMS);
        }
    }

    #[test]
    fn pkcs1_algs_are_refused_by_default_and_accepted_when_allowed() {
        for alg in [Alg::Rs256, Alg::Rs384] {
            let key = test_keys::key(alg);
            let token = key.sign_jwt(CLAIMS).unwrap();
            let keys = set(&[&key]);
            assert_eq!(
                verify_compact(&token, &keys, DEFAULT_ACCEPTED).unwrap_err(),
                JoseError::AlgNotAllowed { alg }
            );
            let mut allowed = DEFAULT_ACCEPTED.to_vec();
            allowed.push(alg);
            assert!(verify_compact(&token, &keys, &allowed).is_ok(), "{alg}");
        }
        // RS384 is not RS256 with another name: a PKCS#1 SHA-256 signature
        // under an RS384 header does not verify.
        let (rs256, rs384) = (test_keys::key(Alg::Rs256), test_keys::key(Alg::Rs384));
        let forged = forge(&rs256, &header("RS384", &rs384), &b64::encode(CLAIMS));
        assert!(matches!(
            verify_compact(&forged, &set(&[&rs384]), &Alg::ALL).unwrap_err(),
            JoseError::BadSignature {
                alg: Alg::Rs384,
                ..
            }
        ));
    }

    #[test]
    fn alg_not_in_allow_list_is_refused_naming_it() {
        let key = test_keys::key(Alg::Es256);
        let token = key.sign_jwt(CLAIMS).unwrap();
        let e = verify_compact(&token, &set(&[&key]), &[Alg::Ps256]).unwrap_err();
        assert_eq!(e, JoseError::AlgNotAllowed { alg: Alg::Es256 });
        assert!(e.to_string().contains("ES256"));
        let e = verify_compact(&token, &set(&[&key]), &[]).unwrap_err();
        assert_eq!(e, JoseError::AlgNotAllowed { alg: Alg::Es256 });
    }

    #[test]
    fn alg_none_is_refused_in_any_case() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let payload = b64::encode(CLAIMS);
        for alg in ["none", "None", "NONE"] {
            let unsigned = format!(
                "{}.{payload}.",
                b64::encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid()).as_bytes())
            );
            assert_eq!(err(&unsigned, &keys), JoseError::AlgNone, "{alg}");
            // The same with a real signature attached changes nothing.
            let signed = forge(&key, &header(alg, &key), &payload);
            assert_eq!(err(&signed, &keys), JoseError::AlgNone, "{alg}");
        }
    }

    /// The classic key-confusion attack: HS256 with the verifier's public key
    /// as the HMAC secret. `Alg` cannot even name HS*, and the header is
    /// refused before any key is looked at.
    #[test]
    fn hmac_is_refused_even_keyed_with_our_public_keys() {
        for key_alg in [Alg::Ps256, Alg::Es256, Alg::Es512] {
            let key = test_keys::key(key_alg);
            let jwk = key.public_jwk();
            let keys = set(&[&key]);
            let raw = match jwk.material() {
                KeyMaterial::Rsa { n, .. } => n.clone(),
                KeyMaterial::Ec { x, y, .. } => [&[4u8][..], x, y].concat(),
            };
            let secrets = [
                raw,
                jwk.to_json().into_bytes(),
                keys.to_json().into_bytes(),
                test_keys::pem(key_alg).as_bytes().to_vec(),
            ];
            for (hs, digest) in [
                ("HS256", ring::hmac::HMAC_SHA256),
                ("HS384", ring::hmac::HMAC_SHA384),
                ("HS512", ring::hmac::HMAC_SHA512),
            ] {
                for secret in &secrets {
                    let input = format!(
                        "{}.{}",
                        b64::encode(header(hs, &key).as_bytes()),
                        b64::encode(CLAIMS)
                    );
                    let mac =
                        ring::hmac::sign(&ring::hmac::Key::new(digest, secret), input.as_bytes());
                    let token = format!("{input}.{}", b64::encode(mac.as_ref()));
                    let e = err(&token, &keys);
                    assert_eq!(e, JoseError::AlgHmac { alg: shown(hs) });
                    assert!(e.to_string().contains("never accepted"), "{e}");
                }
            }
        }
        let key = test_keys::key(Alg::Es256);
        let token = forge(&key, &header("hs256", &key), &b64::encode(CLAIMS));
        assert!(matches!(
            err(&token, &set(&[&key])),
            JoseError::AlgHmac { .. }
        ));
    }

    #[test]
    fn unknown_and_missing_algs_are_refused() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let payload = b64::encode(CLAIMS);
        for alg in ["ES256K", "EdDSA", "es256", "RS512", "H", ""] {
            let token = forge(&key, &header(alg, &key), &payload);
            assert_eq!(
                err(&token, &keys),
                JoseError::AlgUnknown { alg: shown(alg) }
            );
        }
        let token = forge(&key, &format!(r#"{{"kid":"{}"}}"#, key.kid()), &payload);
        assert_eq!(
            err(&token, &keys).to_string(),
            "jws header member \"alg\" is required"
        );
        let token = forge(&key, r#"{"alg":["ES256"]}"#, &payload);
        assert_eq!(
            err(&token, &keys).to_string(),
            "jws header member \"alg\" must be a string, found an array"
        );
    }

    #[test]
    fn unknown_kid_is_its_own_error() {
        let key = test_keys::key(Alg::Es256);
        let other = SigningKey::from_pkcs8_pem(
            test_keys::pem(Alg::Es256),
            Alg::Es256,
            Some("rotated\n".into()),
        );
        assert!(other.is_err(), "control characters refused in our own kid");
        let token = key.sign_jwt(CLAIMS).unwrap();
        let stranger = test_keys::key(Alg::Es384);
        let e = err(&token, &set(&[&stranger]));
        assert_eq!(
            e,
            JoseError::UnknownKid {
                kid: shown(key.kid())
            }
        );
        let forged = forge(&key, r#"{"alg":"ES256","kid":"x\u001b[31m"}"#, "e30");
        let text = err(&forged, &set(&[&key])).to_string();
        assert_eq!(text, "jws kid \"x__31m\" is not in the key set");
        assert_eq!(
            err(&token, &Jwks::default()),
            JoseError::UnknownKid {
                kid: shown(key.kid())
            }
        );
    }

    /// Without `kid` the key set must hold exactly one key (spec §14), not
    /// merely one key that fits the alg: no key is picked by trying.
    #[test]
    fn missing_kid_needs_a_key_set_of_exactly_one_key() {
        let first = test_keys::key(Alg::Es256);
        let second = SigningKey::from_pkcs8_pem(
            &crate::jose::generate_pkcs8_pem(Alg::Es256).unwrap(),
            Alg::Es256,
            None,
        )
        .unwrap();
        let rsa = test_keys::key(Alg::Ps256);
        let p384 = test_keys::key(Alg::Es384);
        let token = forge(
            &first,
            r#"{"alg":"ES256","typ":"JWT"}"#,
            &b64::encode(CLAIMS),
        );
        let no_kid = |keys: usize| JoseError::NoKid { keys };
        assert_eq!(err(&token, &set(&[&first, &second])), no_kid(2));
        assert_eq!(err(&token, &Jwks::default()), no_kid(0));
        // One P-256 key beside keys that cannot do ES256: still three keys.
        assert_eq!(err(&token, &set(&[&rsa, &first, &p384])), no_kid(3));
        // One usable key and one entry the parser skipped: two keys.
        let with_skipped = Jwks {
            skipped: 1,
            ..set(&[&first])
        };
        assert_eq!(err(&token, &with_skipped), no_kid(2));
        // The one key of the set, but for another alg.
        assert!(matches!(
            err(&token, &set(&[&p384])),
            JoseError::AlgKeyMismatch {
                alg: Alg::Es256,
                ..
            }
        ));
        // A set of exactly one key: that key.
        let verified = verify_compact(&token, &set(&[&first]), &Alg::ALL).unwrap();
        assert_eq!(verified.kid(), Some(first.kid()));
        assert_eq!(verified.payload(), CLAIMS);
        // The wrong one key: the signature fails.
        assert!(matches!(
            err(&token, &set(&[&second])),
            JoseError::BadSignature { .. }
        ));
    }

    #[test]
    fn alg_must_fit_the_key() {
        let p384 = test_keys::key(Alg::Es384);
        let ec = test_keys::key(Alg::Es256);
        let rsa = test_keys::key(Alg::Ps256);
        let keys = set(&[&p384, &ec, &rsa]);
        let payload = b64::encode(CLAIMS);
        // ES256 header naming the P-384 key (signed with that key, so only
        // the fit check can catch it).
        let token = forge(&p384, &header("ES256", &p384), &payload);
        let e = err(&token, &keys);
        assert!(
            matches!(
                e,
                JoseError::AlgKeyMismatch {
                    alg: Alg::Es256,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("the key is published for ES384"),
            "{e}"
        );
        // PS256 header naming an EC key.
        let token = forge(&ec, &header("PS256", &ec), &payload);
        let e = err(&token, &keys);
        assert!(
            matches!(
                e,
                JoseError::AlgKeyMismatch {
                    alg: Alg::Ps256,
                    ..
                }
            ),
            "{e}"
        );
        // PS384 with our PS256 RSA key: same key type, but the JWK says PS256.
        let token = forge(&rsa, &header("PS384", &rsa), &payload);
        assert!(matches!(
            err(&token, &keys),
            JoseError::AlgKeyMismatch {
                alg: Alg::Ps384,
                ..
            }
        ));
    }

    #[test]
    fn alg_must_fit_keys_without_published_alg() {
        // A partner JWKS without "alg": curve and modulus size decide.
        let x = b64::encode(&[7u8; 48]);
        let small_n = b64::encode(&[0xc1u8; 128]);
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-384","x":"{x}","y":"{x}","kid":"ec"}},{{"kty":"RSA","n":"{small_n}","e":"AQAB","kid":"small"}}]}}"#
        );
        let keys = Jwks::parse(doc.as_bytes()).unwrap();
        let fake = b64::encode(&[1u8; 64]);
        let token = format!(
            "{}.e30.{fake}",
            b64::encode(br#"{"alg":"ES256","kid":"ec"}"#)
        );
        let e = err(&token, &keys).to_string();
        assert_eq!(
            e,
            "jws alg ES256 does not fit key \"ec\": ES256 needs an EC key on P-256, the key is EC P-384"
        );
        let token = format!(
            "{}.e30.{fake}",
            b64::encode(br#"{"alg":"PS256","kid":"small"}"#)
        );
        let e = err(&token, &keys).to_string();
        assert_eq!(
            e,
            "jws alg PS256 does not fit key \"small\": rsa modulus is 1024 bits, 2048 to 8192 needed"
        );
    }

    #[test]
    fn flipped_bits_anywhere_fail_for_every_alg() {
        for alg in Alg::ALL {
            let key = test_keys::key(alg);
            let keys = set(&[&key]);
            let token = key.sign_jwt(CLAIMS).unwrap();
            let signature = signature_of(&token);
            for bit in [0, 7, signature.len() * 4, signature.len() * 8 - 1] {
                let mut flipped = signature.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let e = err(&with_signature(&token, &flipped), &keys);
                assert_eq!(
                    e,
                    JoseError::BadSignature {
                        alg,
                        key: shown(key.kid()),
                        problem: SignatureProblem::Invalid
                    },
                    "{alg} bit {bit}"
                );
            }
            // A changed claim under the old signature.
            let (header_b64, rest) = token.split_once('.').unwrap();
            let (_, sig_b64) = rest.split_once('.').unwrap();
            let tampered: Vec<u8> = CLAIMS
                .iter()
                .map(|b| if *b == b'a' { b'b' } else { *b })
                .collect();
            let token2 = format!("{header_b64}.{}.{sig_b64}", b64::encode(&tampered));
            assert!(
                matches!(err(&token2, &keys), JoseError::BadSignature { .. }),
                "{alg}"
            );
            // All-zero signature of the right length.
            let zeros = vec![0u8; signature.len()];
            assert!(
                matches!(
                    err(&with_signature(&token, &zeros), &keys),
                    JoseError::BadSignature { .. }
                ),
                "{alg}"
            );
        }
    }

    #[test]
    fn ecdsa_signatures_must_be_fixed_width() {
        for (alg, width) in [(Alg::Es256, 64), (Alg::Es384, 96), (Alg::Es512, 132)] {
            let key = test_keys::key(alg);
            let keys = set(&[&key]);
            let token = key.sign_jwt(CLAIMS).unwrap();
            let signature = signature_of(&token);
            assert_eq!(signature.len(), width);
            for wrong in [
                &signature[..width - 1],
                &[&signature[..], &[0]].concat()[..],
                &[][..],
            ] {
                let e = err(&with_signature(&token, wrong), &keys);
                assert_eq!(
                    e,
                    JoseError::BadSignature {
                        alg,
                        key: shown(key.kid()),
                        problem: SignatureProblem::Length {
                            expected: width,
                            found: wrong.len()
                        }
                    }
                );
            }
            // The same signature in ASN.1 DER, as OpenSSL and Java emit it.
            let der = der_signature(&signature);
            let e = err(&with_signature(&token, &der), &keys);
            assert!(
                matches!(
                    e,
                    JoseError::BadSignature {
                        problem: SignatureProblem::Length { .. },
                        ..
                    }
                ),
                "{alg}: {e}"
            );
            assert!(e.to_string().contains("not DER"), "{e}");
        }
    }

    #[test]
    fn segments_must_be_exactly_three() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let token = key.sign_jwt(CLAIMS).unwrap();
        let (two, _) = token.rsplit_once('.').unwrap();
        assert_eq!(err(two, &keys), JoseError::Segments { found: 2 });
        assert_eq!(
            err(&format!("{token}.e30"), &keys),
            JoseError::Segments { found: 4 }
        );
        assert_eq!(
            err(&format!("{token}.."), &keys),
            JoseError::Segments { found: 5 }
        );
        assert_eq!(err("", &keys), JoseError::Segments { found: 1 });
        assert_eq!(err("abc", &keys), JoseError::Segments { found: 1 });
        // JWE compact (five segments) and JSON serialization are not JWS compact.
        assert_eq!(err("a.b.c.d.e", &keys), JoseError::Segments { found: 5 });
        assert!(matches!(
            err("{\"payload\":\"e30\"}", &keys),
            JoseError::Segments { .. }
        ));
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let key = test_keys::key(Alg::Es512);
        let keys = set(&[&key]);
        let token = key.sign_jwt(CLAIMS).unwrap();
        assert!(verify_compact(&token, &keys, &Alg::ALL).is_ok());
        for end in 0..token.len() {
            assert!(
                verify_compact(&token[..end], &keys, &Alg::ALL).is_err(),
                "prefix {end}"
            );
        }
        // A signature cut by four characters (three bytes) still decodes.
        let cut = &token[..token.len() - 4];
        assert!(matches!(
            err(cut, &keys),
            JoseError::BadSignature {
                problem: SignatureProblem::Length {
                    expected: 132,
                    found: 129
                },
                ..
            }
        ));
    }

    #[test]
    fn base64_must_be_strict_unpadded_url_alphabet() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let token = key.sign_jwt(CLAIMS).unwrap();
        let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let base64_error = |part| JoseError::Base64 { part, member: None };

        // Header: padding, standard alphabet, whitespace.
        let header_bytes = b64::decode(&parts[0]).unwrap();
        let std_header = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&header_bytes)
        };
        for bad in [
            format!("{}=", parts[0]),
            format!("{}==", parts[0]),
            std_header,
            format!(" {}", parts[0]),
        ] {
            if bad == parts[0] {
                continue;
            }
            let t = format!("{bad}.{}.{}", parts[1], parts[2]);
            assert_eq!(err(&t, &keys), base64_error(Part::Header), "{bad}");
        }
        // Signature: padding and '+' / '/'.
        let signature = signature_of(&token);
        let std_signature = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&signature)
        };
        for bad in [
            format!("{}=", parts[2]),
            std_signature.replace('-', "+").replace('_', "/") + "+",
        ] {
            let t = format!("{}.{}.{bad}", parts[0], parts[1]);
            assert_eq!(err(&t, &keys), base64_error(Part::Signature), "{bad}");
        }
        // Payload: a non-canonical segment under a valid signature is still refused.
        let padded_payload = format!("{}=", b64::encode(b"{}"));
        let t = forge(&key, &header("ES256", &key), &padded_payload);
        assert_eq!(err(&t, &keys), base64_error(Part::Payload));
        let t = forge(&key, &header("ES256", &key), "e31");
        assert_eq!(
            err(&t, &keys),
            base64_error(Part::Payload),
            "non-zero trailing bits"
        );
    }

    #[test]
    fn crit_is_refused_in_any_form() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        for crit in [r#"["exp"]"#, "[]", "null", r#""b64""#] {
            let h = format!(r#"{{"alg":"ES256","kid":"{}","crit":{crit}}}"#, key.kid());
            let token = forge(&key, &h, &b64::encode(CLAIMS));
            assert_eq!(err(&token, &keys), JoseError::Crit, "{crit}");
        }
    }

    #[test]
    fn typ_must_be_jwt_when_present() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let payload = b64::encode(CLAIMS);
        for typ in ["JWT", "jwt", "Jwt"] {
            let h = format!(r#"{{"alg":"ES256","kid":"{}","typ":"{typ}"}}"#, key.kid());
            assert!(
                verify_compact(&forge(&key, &h, &payload), &keys, &Alg::ALL).is_ok(),
                "{typ}"
            );
        }
        let h = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid());
        assert!(
            verify_compact(&forge(&key, &h, &payload), &keys, &Alg::ALL).is_ok(),
            "typ absent"
        );
        for typ in ["JOSE", "at+jwt", "application/jwt", "JWT ", ""] {
            let h = format!(r#"{{"alg":"ES256","kid":"{}","typ":"{typ}"}}"#, key.kid());
            assert_eq!(
                err(&forge(&key, &h, &payload), &keys),
                JoseError::Typ { typ: shown(typ) }
            );
        }
        let h = format!(r#"{{"alg":"ES256","kid":"{}","typ":1}}"#, key.kid());
        assert!(matches!(
            err(&forge(&key, &h, &payload), &keys),
            JoseError::Member { member: "typ", .. }
        ));
        let h = r#"{"alg":"ES256","kid":7}"#;
        assert!(matches!(
            err(&forge(&key, h, &payload), &keys),
            JoseError::Member { member: "kid", .. }
        ));
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let payload = b64::encode(CLAIMS);
        for h in [
            format!(r#"{{"alg":"ES256","alg":"none","kid":"{}"}}"#, key.kid()),
            format!(r#"{{"alg":"none","alg":"ES256","kid":"{}"}}"#, key.kid()),
            format!(r#"{{"alg":"ES256","kid":"{0}","kid":"{0}"}}"#, key.kid()),
            format!(
                r#"{{"alg":"ES256","kid":"{}","x":1,"\u0078":2}}"#,
                key.kid()
            ),
        ] {
            let e = err(&forge(&key, &h, &payload), &keys);
            assert!(
                matches!(&e, JoseError::Json { part: Part::Header, problem } if problem.contains("duplicate member")),
                "{h}: {e}"
            );
        }
    }

    #[test]
    fn header_must_be_a_json_object() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        for h in [
            "",
            "[]",
            "\"ES256\"",
            "{",
            "{\"alg\":\"ES256\"}x",
            "{\"alg\":\"ES256\"}{}",
        ] {
            let e = err(&forge(&key, h, "e30"), &keys);
            assert!(
                matches!(
                    e,
                    JoseError::Json {
                        part: Part::Header,
                        ..
                    }
                ),
                "{h:?}: {e}"
            );
        }
        // Whitespace around the object is JSON too.
        let token = forge(&key, " {\"alg\":\"ES256\"}\n", "e30");
        assert!(verify_compact(&token, &keys, &Alg::ALL).is_ok());
    }

    #[test]
    fn oversize_tokens_are_refused_before_parsing() {
        let key = test_keys::key(Alg::Es256);
        let keys = set(&[&key]);
        let token = format!("{}.{}.{}", "a".repeat(MAX_TOKEN_LEN), "b", "c");
        assert_eq!(
            err(&token, &keys),
            JoseError::TooLarge {
                what: "compact jws",
                len: MAX_TOKEN_LEN + 4,
                max: MAX_TOKEN_LEN
            }
        );
        // Just under the cap is looked at (and here verifies).
        let overhead = key.sign_jwt(br#"{"p":""}"#).unwrap().len();
        let claims = format!(
            r#"{{"p":"{}"}}"#,
            "x".repeat((MAX_TOKEN_LEN - overhead) * 3 / 4)
        );
        let big = key.sign_jwt(claims.as_bytes()).unwrap();
        assert!(
            big.len() <= MAX_TOKEN_LEN && big.len() > MAX_TOKEN_LEN - 8,
            "{}",
            big.len()
        );
        assert!(verify_compact(&big, &keys, &Alg::ALL).is_ok());
    }

    /// Keys come only from the caller's set: a header that carries its own
    /// key (`jwk`), or points at one (`jku`, `x5u`, `x5c`), gains nothing.
    #[test]
    fn embedded_or_referenced_keys_are_never_used() {
        let partner = test_keys::key(Alg::Es256);
        let attacker = SigningKey::from_pkcs8_pem(
            &crate::jose::generate_pkcs8_pem(Alg::Es256).unwrap(),
            Alg::Es256,
            None,
        )
        .unwrap();
        let keys = set(&[&partner]);
        let jwk = attacker.public_jwk().to_json();
        let payload = b64::encode(CLAIMS);
        let refs = format!(
            r#""jwk":{jwk},"jku":"https://evil.example/jwks","x5u":"https://evil.example/c.pem","x5c":["MIIB"]"#
        );
        let with_kid = format!(r#"{{"alg":"ES256","kid":"{}",{refs}}}"#, attacker.kid());
        assert_eq!(
            err(&forge(&attacker, &with_kid, &payload), &keys),
            JoseError::UnknownKid {
                kid: shown(attacker.kid())
            }
        );
        let without_kid = format!(r#"{{"alg":"ES256",{refs}}}"#);
        assert!(matches!(
            err(&forge(&attacker, &without_kid, &payload), &keys),
            JoseError::BadSignature {
                problem: SignatureProblem::Invalid,
                ..
            }
        ));
        let partner_kid = format!(r#"{{"alg":"ES256","kid":"{}",{refs}}}"#, partner.kid());
        assert!(matches!(
            err(&forge(&attacker, &partner_kid, &payload), &keys),
            JoseError::BadSignature { .. }
        ));
    }

    #[test]
    fn same_kid_on_two_key_types_picks_the_one_that_fits() {
        let ec = SigningKey::from_pkcs8_pem(
            test_keys::pem(Alg::Es256),
            Alg::Es256,
            Some("shared".into()),
        )
        .unwrap();
        let rsa = SigningKey::from_pkcs8_pem(
            test_keys::pem(Alg::Ps256),
            Alg::Ps256,
            Some("shared".into()),
        )
        .unwrap();
        let keys = set(&[&ec, &rsa]);
        for key in [&ec, &rsa] {
            let verified =
                verify_compact(&key.sign_jwt(CLAIMS).unwrap(), &keys, &Alg::ALL).unwrap();
            assert_eq!(verified.alg(), key.alg());
        }
        // Two fitting keys with one kid (only possible by building the set by
        // hand) are ambiguous, never "try both".
        let hand_made = Jwks {
            keys: vec![ec.public_jwk(), ec.public_jwk()],
            skipped: 0,
        };
        assert_eq!(
            err(&ec.sign_jwt(CLAIMS).unwrap(), &hand_made),
            JoseError::AmbiguousKid {
                kid: shown("shared")
            }
        );
    }

    #[test]
    fn verified_jws_debug_hides_the_payload() {
        let key = test_keys::key(Alg::Es256);
        let verified =
            verify_compact(&key.sign_jwt(CLAIMS).unwrap(), &set(&[&key]), &Alg::ALL).unwrap();
        let text = format!("{verified:?}");
        assert!(
            !text.contains("np.a.example") && text.contains("payload_len"),
            "{text}"
        );
    }

    /// ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }` of a fixed-width signature.
    fn der_signature(fixed: &[u8]) -> Vec<u8> {
        fn integer(bytes: &[u8]) -> Vec<u8> {
            let start = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            let mut value = bytes[start..].to_vec();
            if value[0] & 0x80 != 0 {
                value.insert(0, 0);
            }
            let mut out = vec![0x02, value.len() as u8];
            out.extend(value);
            out
        }
        let (r, s) = fixed.split_at(fixed.len() / 2);
        let body = [integer(r), integer(s)].concat();
        let mut out = vec![0x30];
        if body.len() > 127 {
            out.push(0x81);
        }
        out.push(body.len() as u8);
        out.extend(body);
        out
    }
}
