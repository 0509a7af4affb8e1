//! Our signing key: loading from PKCS#8 PEM, signing compact JWS, and
//! generating new keys for `np-agent keygen`.

use super::json;
use super::jwk::{Curve, Jwk, KeyMaterial};
use super::{Alg, JoseError, MAX_KID_LEN, MAX_TOKEN_LEN, Part};
use crate::util::b64;
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject as _};
use std::fmt;

/// The private key we sign assertions with, its algorithm and `kid`.
///
/// `Debug` shows the algorithm and `kid` only. The key material stays inside
/// ring (or `p521` for ES512) and is never exposed.
pub struct SigningKey {
    alg: Alg,
    kid: String,
    public: Jwk,
    /// base64url of `{"alg":…,"typ":"JWT","kid":…}`, the same for every token.
    header_b64: String,
    signer: Signer,
    rng: SystemRandom,
}

enum Signer {
    Rsa(RsaKeyPair, &'static dyn ring_sig::RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    P521(Box<p521::ecdsa::SigningKey>),
}

impl SigningKey {
    /// Loads an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`):
    /// RSA of 2048 to 4096 bits for PS256/PS384/PS512/RS256/RS384, EC on P-256,
    /// P-384 or P-521 for ES256, ES384 or ES512. The PEM must hold exactly one
    /// private key (certificates beside it are ignored). With `kid` `None`,
    /// the kid is the RFC 7638 thumbprint of the public key.
    pub fn from_pkcs8_pem(pem: &str, alg: Alg, kid: Option<String>) -> Result<Self, JoseError> {
        let der = pkcs8_der(pem, alg)?;
        let der = der.secret_pkcs8_der();
        let rng = SystemRandom::new();
        let (signer, material) = match alg {
            Alg::Ps256 => load_rsa(der, &ring_sig::RSA_PSS_SHA256),
            Alg::Ps384 => load_rsa(der, &ring_sig::RSA_PSS_SHA384),
            Alg::Ps512 => load_rsa(der, &ring_sig::RSA_PSS_SHA512),
            Alg::Rs256 => load_rsa(der, &ring_sig::RSA_PKCS1_SHA256),
            Alg::Rs384 => load_rsa(der, &ring_sig::RSA_PKCS1_SHA384),
            Alg::Es256 => load_ecdsa(
                der,
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P256,
                &rng,
            ),
            Alg::Es384 => load_ecdsa(
                der,
                &ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                Curve::P384,
                &rng,
            ),
            Alg::Es512 => load_p521(der),
        }
        .map_err(|problem| JoseError::Key { alg, problem })?;
        let public = Jwk::for_signing(material, alg);
        let kid = match kid {
            Some(kid) => checked_kid(kid)?,
            None => public.thumbprint(),
        };
        let public = public.with_kid(kid.clone());
        // `Value::String` displays as a quoted, escaped JSON string.
        let header = format!(
            r#"{{"alg":"{}","typ":"JWT","kid":{}}}"#,
            alg.name(),
            serde_json::Value::String(kid.clone())
        );
        Ok(SigningKey {
            alg,
            kid,
            public,
            header_b64: b64::encode(header.as_bytes()),
            signer,
            rng,
        })
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The `kid` in our JWS headers and JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as we publish it: with `kid`, `alg` and `"use":"sig"`.
    pub fn public_jwk(&self) -> Jwk {
        self.public.clone()
    }

    /// Signs `claims_json` as a compact JWS with the header
    /// `{"alg":…,"typ":"JWT","kid":…}`. The claims must be one JSON object
    /// without duplicate members (RFC 7519 §4); they are signed byte for byte
    /// as given. Refuses to emit a token over [`MAX_TOKEN_LEN`], which no
    /// verifier of ours would accept.
    pub fn sign_jwt(&self, claims_json: &[u8]) -> Result<String, JoseError> {
        json::parse_object(claims_json).map_err(|problem| JoseError::Json {
            part: Part::Claims,
            problem,
        })?;
        let signing_input = format!("{}.{}", self.header_b64, b64::encode(claims_json));
        let signature = self.sign_raw(signing_input.as_bytes())?;
        let token = format!("{signing_input}.{}", b64::encode(&signature));
        if token.len() > MAX_TOKEN_LEN {
            return Err(JoseError::TooLarge {
                what: "signed jws",
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        Ok(token)
    }

    /// The JWS signature over `message`: RSA as long as the modulus, ECDSA in
    /// fixed-width `r||s` form.
    pub(super) fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        let failed = |_| JoseError::Sign { alg: self.alg };
        match &self.signer {
            Signer::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &self.rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            Signer::Ecdsa(pair) => Ok(pair
                .sign(&self.rng, message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Signer::P521(key) => {
                use p521::ecdsa::signature::Signer as _;
                let signature: p521::ecdsa::Signature = key
                    .try_sign(message)
                    .map_err(|_| JoseError::Sign { alg: self.alg })?;
                Ok(signature.to_bytes().to_vec())
            }
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn load_rsa(
    der: &[u8],
    encoding: &'static dyn ring_sig::RsaEncoding,
) -> Result<(Signer, KeyMaterial), String> {
    let pair = RsaKeyPair::from_pkcs8(der)
        .map_err(|e| format!("not a usable RSA key of 2048 to 4096 bits (ring: {e})"))?;
    let public = ring_sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    let material = KeyMaterial::Rsa {
        n: public.n,
        e: public.e,
    };
    Ok((Signer::Rsa(pair, encoding), material))
}

fn load_ecdsa(
    der: &[u8],
    signing: &'static ring_sig::EcdsaSigningAlgorithm,
    curve: Curve,
    rng: &SystemRandom,
) -> Result<(Signer, KeyMaterial), String> {
    let pair = EcdsaKeyPair::from_pkcs8(signing, der, rng).map_err(|e| {
        format!(
            "not a usable EC {} key with its public key included (ring: {e})",
            curve.name()
        )
    })?;
    let material = ec_material(curve, pair.public_key().as_ref())?;
    Ok((Signer::Ecdsa(pair), material))
}

fn load_p521(der: &[u8]) -> Result<(Signer, KeyMaterial), String> {
    use p521::pkcs8::DecodePrivateKey as _;
    let key = p521::ecdsa::SigningKey::from_pkcs8_der(der)
        .map_err(|e| format!("not a usable EC P-521 key (pkcs8: {e})"))?;
    let point = key.verifying_key().to_sec1_point(false);
    let material = ec_material(Curve::P521, point.as_bytes())?;
    Ok((Signer::P521(Box::new(key)), material))
}

/// A new private key for `alg` as PKCS#8 PEM text (`np-agent keygen`):
/// RSA 3072 bits for PS256/PS384/PS512/RS256/RS384 (generated with the `rsa`
/// crate, as ring cannot generate RSA keys), EC P-256/P-384 through ring,
/// EC P-521 through `p521`. The result is loaded back with
/// [`SigningKey::from_pkcs8_pem`] before it is returned, so it is known to
/// work where it will be used.
pub fn generate_pkcs8_pem(alg: Alg) -> Result<String, JoseError> {
    let generation_error = |problem: String| JoseError::KeyGen { alg, problem };
    let der: Vec<u8> = match alg {
        Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 | Alg::Rs384 => {
            use rsa::Generate as _;
            use rsa::pkcs8::EncodePrivateKey as _;
            // `try_generate` makes a full-size modulus of DEFAULT_BITS with
            // e = 65537 from the operating system's random source.
            const _: () = assert!(rsa::PrivateKey::DEFAULT_BITS == 3072);
            let key = rsa::PrivateKey::try_generate()
                .map_err(|e| generation_error(format!("random source: {e}")))?;
            let document = key
                .to_pkcs8_der()
                .map_err(|e| generation_error(format!("pkcs8 encoding: {e}")))?;
            document.as_bytes().to_vec()
        }
        Alg::Es256 | Alg::Es384 => {
            let signing = if alg == Alg::Es256 {
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new())
                .map_err(|_| JoseError::Random)?
                .as_ref()
                .to_vec()
        }
        Alg::Es512 => {
            use p521::elliptic_curve::Generate as _;
            use p521::pkcs8::EncodePrivateKey as _;
            let key = p521::ecdsa::SigningKey::try_generate().map_err(|_| JoseError::Random)?;
            let document = key
                .to_pkcs8_der()
                .map_err(|e| generation_error(format!("pkcs8 encoding: {e}")))?;
            document.as_bytes().to_vec()
        }
    };
    let pem = pem_encode("PRIVATE KEY", &der);
    SigningKey::from_pkcs8_pem(&pem, alg, None)?;
    Ok(pem)
}

/// The one PKCS#8 private key in `pem`, with errors that tell an operator
/// what to do. pki-types' PEM errors are not passed on: some quote lines of
/// the file, which may be key material.
fn pkcs8_der(
    pem: &str,
    alg: Alg,
) -> Result<rustls_pki_types::PrivatePkcs8KeyDer<'static>, JoseError> {
    let key_error = |problem: &str| JoseError::Key {
        alg,
        problem: problem.to_owned(),
    };
    let mut keys = PrivateKeyDer::pem_slice_iter(pem.as_bytes());
    let first = match keys.next() {
        Some(Ok(key)) => key,
        Some(Err(e)) => {
            return Err(key_error(match e {
                pem::Error::MissingSectionEnd { .. } => "pem section has no END line",
                pem::Error::IllegalSectionStart { .. } => "pem BEGIN line is malformed",
                pem::Error::Base64Decode(_) => "pem body is not valid base64",
                _ => "pem text is unreadable",
            }));
        }
        None => {
            return Err(key_error(
                "no \"BEGIN PRIVATE KEY\" block found (encrypted keys are not supported)",
            ));
        }
    };
    if keys.next().is_some() {
        return Err(key_error(
            "pem holds more than one private key, exactly one expected",
        ));
    }
    match first {
        PrivateKeyDer::Pkcs8(der) => Ok(der),
        PrivateKeyDer::Pkcs1(_) => Err(key_error(
            "pem is PKCS#1 (\"BEGIN RSA PRIVATE KEY\"), PKCS#8 expected: convert with `openssl pkcs8 -topk8 -nocrypt`",
        )),
        PrivateKeyDer::Sec1(_) => Err(key_error(
            "pem is SEC1 (\"BEGIN EC PRIVATE KEY\"), PKCS#8 expected: convert with `openssl pkcs8 -topk8 -nocrypt`",
        )),
        _ => Err(key_error("pem key is not PKCS#8")),
    }
}

/// Our configured `kid`: 1 to [`MAX_KID_LEN`] bytes, no control characters
/// (it goes into headers, JWKS and logs).
fn checked_kid(kid: String) -> Result<String, JoseError> {
    let problem = if kid.is_empty() {
        "is empty".to_owned()
    } else if kid.len() > MAX_KID_LEN {
        format!("is {} bytes, at most {MAX_KID_LEN} allowed", kid.len())
    } else if kid.chars().any(char::is_control) {
        "contains control characters".to_owned()
    } else {
        return Ok(kid);
    };
    Err(JoseError::Kid { problem })
}

/// Splits an uncompressed SEC1 point `04 || x || y` into JWK coordinates.
fn ec_material(curve: Curve, point: &[u8]) -> Result<KeyMaterial, String> {
    let len = curve.coordinate_len();
    let xy = match point.split_first() {
        Some((0x04, xy)) if xy.len() == 2 * len => xy,
        _ => return Err("public key is not an uncompressed point".into()),
    };
    let (x, y) = xy.split_at(len);
    Ok(KeyMaterial::Ec {
        curve,
        x: x.to_vec(),
        y: y.to_vec(),
    })
}

/// RFC 7468 text: standard base64 with padding, 64 characters a line.
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::test_keys;

    fn header_of(token: &str) -> String {
        let segment = token.split('.').next().unwrap();
        String::from_utf8(b64::decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn header_is_alg_typ_kid_and_kid_defaults_to_thumbprint() {
        let key = test_keys::key(Alg::Es256);
        assert_eq!(key.alg(), Alg::Es256);
        assert_eq!(key.kid(), key.public_jwk().thumbprint());
        assert_eq!(key.kid().len(), 43);
        let token = key.sign_jwt(br#"{"iss":"https://a.example"}"#).unwrap();
        assert_eq!(
            header_of(&token),
            format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, key.kid())
        );
        let jwk = key.public_jwk();
        assert_eq!(
            (jwk.kid(), jwk.alg(), jwk.kty(), jwk.crv()),
            (Some(key.kid()), Some(Alg::Es256), "EC", Some("P-256"))
        );
    }

    #[test]
    fn configured_kid_is_used_and_escaped() {
        let pem = test_keys::pem(Alg::Es384);
        let kid = r#"b6672857bc46214ec6840efa048787dfc2948ada-"quoted"\"#;
        let key = SigningKey::from_pkcs8_pem(pem, Alg::Es384, Some(kid.into())).unwrap();
        assert_eq!(key.kid(), kid);
        assert_eq!(key.public_jwk().kid(), Some(kid));
        let token = key.sign_jwt(b"{}").unwrap();
        let header = header_of(&token);
        let parsed = json::parse_object(header.as_bytes()).unwrap();
        assert_eq!(parsed.opt_str("kid").unwrap(), Some(kid));
    }

    #[test]
    fn bad_configured_kids_are_refused() {
        let pem = test_keys::pem(Alg::Es256);
        for (kid, want) in [
            (String::new(), "signing key kid is empty"),
            ("k".repeat(MAX_KID_LEN + 1), "signing key kid is 257 bytes"),
            (
                "a\nb".to_owned(),
                "signing key kid contains control characters",
            ),
        ] {
            let e = SigningKey::from_pkcs8_pem(pem, Alg::Es256, Some(kid)).unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn signature_sizes_per_alg() {
        for (alg, len) in [
            (Alg::Ps256, 384),
            (Alg::Ps384, 384),
            (Alg::Ps512, 384),
            (Alg::Rs256, 384),
            (Alg::Rs384, 384),
            (Alg::Es256, 64),
            (Alg::Es384, 96),
            (Alg::Es512, 132),
        ] {
            let token = test_keys::key(alg).sign_jwt(b"{\"a\":1}").unwrap();
            let signature = b64::decode(token.rsplit('.').next().unwrap()).unwrap();
            assert_eq!(signature.len(), len, "{alg}");
        }
    }

    #[test]
    fn claims_must_be_one_json_object_and_fit_a_token() {
        let key = test_keys::key(Alg::Es256);
        for claims in [
            &b"[]"[..],
            b"",
            b"{\"a\":1}{}",
            b"{\"jti\":\"1\",\"jti\":\"2\"}",
        ] {
            let e = key.sign_jwt(claims).unwrap_err();
            assert!(
                matches!(
                    e,
                    JoseError::Json {
                        part: Part::Claims,
                        ..
                    }
                ),
                "{e}"
            );
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "a".repeat(MAX_TOKEN_LEN));
        let e = key.sign_jwt(big.as_bytes()).unwrap_err();
        assert!(e.to_string().starts_with("signed jws is "), "{e}");
    }

    #[test]
    fn key_must_fit_the_alg() {
        let cases = [
            (Alg::Ps256, Alg::Es256, "not a usable RSA key"),
            (Alg::Es256, Alg::Es384, "not a usable EC P-256 key"),
            (Alg::Es384, Alg::Ps256, "not a usable EC P-384 key"),
            (Alg::Es512, Alg::Es256, "not a usable EC P-521 key"),
            (Alg::Es256, Alg::Es512, "not a usable EC P-256 key"),
        ];
        for (alg, key_of, want) in cases {
            let e = SigningKey::from_pkcs8_pem(test_keys::pem(key_of), alg, None).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("signing key for {alg}: {want}")),
                "{text}"
            );
        }
    }

    #[test]
    fn pem_problems_are_explained_without_quoting_the_file() {
        let secretish = "TUlJQm9nSUJBQUtCZ1FDcXNlY3JldA";
        let pkcs1 = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{secretish}\n-----END RSA PRIVATE KEY-----\n"
        );
        let sec1 =
            format!("-----BEGIN EC PRIVATE KEY-----\n{secretish}\n-----END EC PRIVATE KEY-----\n");
        let encrypted = format!(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{secretish}\n-----END ENCRYPTED PRIVATE KEY-----\n"
        );
        let unterminated = format!("-----BEGIN PRIVATE KEY-----\n{secretish}\n");
        let bad_base64 =
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".to_owned();
        let two = format!(
            "{}{}",
            test_keys::pem(Alg::Es256),
            test_keys::pem(Alg::Es256)
        );
        let cases = [
            (pkcs1, "PKCS#1"),
            (sec1, "SEC1"),
            (encrypted, "no \"BEGIN PRIVATE KEY\" block found"),
            (String::new(), "no \"BEGIN PRIVATE KEY\" block found"),
            (unterminated, "pem section has no END line"),
            (bad_base64, "pem body is not valid base64"),
            (two, "more than one private key"),
        ];
        for (pem, want) in cases {
            let e = SigningKey::from_pkcs8_pem(&pem, Alg::Es256, None).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(want), "want {want:?}: {text}");
            assert!(!text.contains(secretish), "{text}");
        }
        let with_cert = format!(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n{}",
            test_keys::pem(Alg::Es256)
        );
        assert!(SigningKey::from_pkcs8_pem(&with_cert, Alg::Es256, None).is_ok());
    }

    #[test]
    fn debug_shows_alg_and_kid_only() {
        for alg in [Alg::Ps256, Alg::Es256, Alg::Es512] {
            let key = test_keys::key(alg);
            let text = format!("{key:?}");
            assert_eq!(
                text,
                format!("SigningKey {{ alg: {alg:?}, kid: {:?}, .. }}", key.kid())
            );
        }
    }

    #[test]
    fn generated_pem_is_pkcs8_in_64_column_lines() {
        let pem = test_keys::pem(Alg::Es512);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN PRIVATE KEY-----"));
        assert_eq!(lines.last(), Some(&"-----END PRIVATE KEY-----"));
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        assert!(pem.ends_with('\n'));
        assert_ne!(
            generate_pkcs8_pem(Alg::Es256).unwrap(),
            *test_keys::pem(Alg::Es256)
        );
    }

    #[test]
    fn rsa_keys_are_3072_bits() {
        let jwk = test_keys::key(Alg::Ps256).public_jwk();
        let KeyMaterial::Rsa { n, e } = jwk.material() else {
            panic!("RSA key expected")
        };
        assert_eq!(n.len() * 8, 3072);
        assert!(n[0] & 0x80 != 0, "full-size modulus");
        assert_eq!(e, &[1, 0, 1]);
    }

    #[test]
    fn signing_key_is_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SigningKey>();
    }
}
