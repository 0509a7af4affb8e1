//! JWK and JWK Set (RFC 7517, RFC 7518 §6) for RSA and EC P-256/P-384/P-521
//! signature keys, and RFC 7638 thumbprints.
//!
//! A [`Jwk`] is checked when it is built: its key material decodes, EC
//! coordinates have the full width of their curve, RSA integers are non-empty.
//! Whether it fits a given algorithm (modulus size, curve, published `alg`)
//! is decided at verification time, so that a partner's JWKS with one odd key
//! still serves its other keys.

use super::json::{self, Object, Value};
use super::{Alg, JoseError, MAX_JWKS_KEYS, MAX_JWKS_LEN, MAX_KID_LEN, Part, shown};
use crate::util::b64;
use std::fmt;

/// An RSA or EC public key for JWS verification, with its `kid`, `alg` and
/// `use` (only `sig` keys exist here).
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    material: KeyMaterial,
    kid: Option<String>,
    alg: Option<Alg>,
    /// Whether `"use":"sig"` was stated (it is for our own keys); an absent
    /// `use` is allowed on input and reproduced as absent on output.
    use_sig: bool,
}

/// A JWK Set: the keys we could use, and how many entries were skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jwks {
    /// The usable keys, in document order.
    pub keys: Vec<Jwk>,
    /// Entries of the parsed document that were skipped: key types or curves
    /// we do not implement, `use` other than `sig`, `key_ops` without
    /// `verify`, or an `alg` we do not implement. Zero for sets built locally.
    pub skipped: usize,
}

/// The public key itself.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum KeyMaterial {
    /// Modulus and public exponent, big-endian without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Affine coordinates, each exactly [`Curve::coordinate_len`] bytes.
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// The elliptic curves we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    fn from_name(name: &str) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521]
            .into_iter()
            .find(|c| c.name() == name)
    }

    /// Bytes in one coordinate (and in each of `r`, `s` of a JWS signature).
    pub(crate) fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

/// Members that only a private JWK carries (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// RSA modulus sizes ring verifies (`RSA_*_2048_8192_*`).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

impl Jwk {
    /// A signature key as we publish our own: `alg` set and `"use":"sig"`.
    /// Without `kid` until [`Jwk::with_kid`]: the default kid is the
    /// thumbprint, which needs the key first.
    pub(crate) fn for_signing(material: KeyMaterial, alg: Alg) -> Jwk {
        Jwk {
            material,
            kid: None,
            alg: Some(alg),
            use_sig: true,
        }
    }

    /// The same key under `kid`.
    pub(crate) fn with_kid(self, kid: String) -> Jwk {
        Jwk {
            kid: Some(kid),
            ..self
        }
    }

    /// The `kid`, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The `alg` the key is published for, if stated.
    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }

    /// The key type: `"RSA"` or `"EC"`.
    pub fn kty(&self) -> &'static str {
        match self.material {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::Ec { .. } => "EC",
        }
    }

    /// The curve name of an EC key (`"P-256"`, …); `None` for RSA.
    pub fn crv(&self) -> Option<&'static str> {
        match self.material {
            KeyMaterial::Rsa { .. } => None,
            KeyMaterial::Ec { curve, .. } => Some(curve.name()),
        }
    }

    /// The RFC 7638 thumbprint: base64url of SHA-256 over the required
    /// members in lexicographic order without whitespace. Cannot fail: a
    /// `Jwk` always holds all required members.
    pub fn thumbprint(&self) -> String {
        let canonical = match &self.material {
            KeyMaterial::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64::encode(e),
                b64::encode(n)
            ),
            KeyMaterial::Ec { curve, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                curve.name(),
                b64::encode(x),
                b64::encode(y)
            ),
        };
        b64::encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// This key as a JSON object text (public members only).
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    pub(crate) fn material(&self) -> &KeyMaterial {
        &self.material
    }

    /// How this key is named in errors: its escaped `kid`, or its type.
    pub(crate) fn label(&self) -> String {
        match &self.kid {
            Some(kid) => shown(kid),
            None => format!("(no kid, {})", self.describe()),
        }
    }

    /// Whether `alg` may be verified with this key (spec §4): the right key
    /// type and curve, an RSA modulus of 2048 to 8192 bits, and the JWK's own
    /// `alg`, when stated, equal to `alg`. The error says why not.
    pub(crate) fn fit(&self, alg: Alg) -> Result<(), String> {
        if let Some(published) = self.alg
            && published != alg
        {
            return Err(format!("the key is published for {published}"));
        }
        match (&self.material, alg.curve()) {
            (KeyMaterial::Rsa { n, .. }, None) => {
                let bits = bit_len(n);
                if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    Ok(())
                } else {
                    Err(format!(
                        "rsa modulus is {bits} bits, {RSA_MIN_BITS} to {RSA_MAX_BITS} needed"
                    ))
                }
            }
            (KeyMaterial::Ec { curve, .. }, Some(needed)) if *curve == needed => Ok(()),
            (_, Some(needed)) => Err(format!(
                "{alg} needs an EC key on {}, the key is {}",
                needed.name(),
                self.describe()
            )),
            (_, None) => Err(format!(
                "{alg} needs an RSA key, the key is {}",
                self.describe()
            )),
        }
    }

    /// `RSA 3072 bits` / `EC P-384`.
    fn describe(&self) -> String {
        match &self.material {
            KeyMaterial::Rsa { n, .. } => format!("RSA {} bits", bit_len(n)),
            KeyMaterial::Ec { curve, .. } => format!("EC {}", curve.name()),
        }
    }

    fn to_value(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let mut put = |name: &str, value: String| {
            m.insert(name.to_owned(), serde_json::Value::String(value));
        };
        put("kty", self.kty().to_owned());
        match &self.material {
            KeyMaterial::Rsa { n, e } => {
                put("n", b64::encode(n));
                put("e", b64::encode(e));
            }
            KeyMaterial::Ec { curve, x, y } => {
                put("crv", curve.name().to_owned());
                put("x", b64::encode(x));
                put("y", b64::encode(y));
            }
        }
        if let Some(kid) = &self.kid {
            put("kid", kid.clone());
        }
        if let Some(alg) = self.alg {
            put("alg", alg.name().to_owned());
        }
        if self.use_sig {
            put("use", "sig".to_owned());
        }
        serde_json::Value::Object(m)
    }

    /// Reads entry `index` of a JWKS. `Ok(None)`: a well-formed entry we skip
    /// (not a signature key we implement). `Err`: a malformed entry, or one
    /// that publishes private key material.
    fn from_object(object: &Object, index: usize) -> Result<Option<Jwk>, JoseError> {
        let part = Part::JwksKey(index);
        let member_error = |member: &'static str| {
            move |problem: String| JoseError::Member {
                part,
                member,
                problem,
            }
        };
        // Checked on every entry, skipped or not: a set that publishes a
        // private key means that key is compromised, and its owner must know.
        if let Some(member) = PRIVATE_MEMBERS.into_iter().find(|m| object.contains(m)) {
            return Err(JoseError::Member {
                part,
                member,
                problem: "is present: the key set publishes private key material".into(),
            });
        }
        let kty = object
            .opt_str("kty")
            .map_err(member_error("kty"))?
            .ok_or_else(|| member_error("kty")("is required".into()))?;
        let stated_use = object.opt_str("use").map_err(member_error("use"))?;
        if stated_use.is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        if let Some(ops) = object.get("key_ops") {
            let Value::Array(ops) = ops else {
                return Err(member_error("key_ops")(format!(
                    "must be an array, found {}",
                    ops.kind()
                )));
            };
            if !ops
                .iter()
                .any(|op| matches!(op, Value::String(s) if s == "verify"))
            {
                return Ok(None);
            }
        }
        let alg = match object.opt_str("alg").map_err(member_error("alg"))? {
            None => None,
            Some(name) => match Alg::from_name(name) {
                Some(alg) => Some(alg),
                None => return Ok(None),
            },
        };
        let material = match kty {
            "RSA" => KeyMaterial::Rsa {
                n: rsa_integer(object, "n", part)?,
                e: rsa_integer(object, "e", part)?,
            },
            "EC" => {
                let crv = object
                    .opt_str("crv")
                    .map_err(member_error("crv"))?
                    .ok_or_else(|| member_error("crv")("is required for kty EC".into()))?;
                let Some(curve) = Curve::from_name(crv) else {
                    return Ok(None);
                };
                KeyMaterial::Ec {
                    curve,
                    x: ec_coordinate(object, "x", curve, part)?,
                    y: ec_coordinate(object, "y", curve, part)?,
                }
            }
            _ => return Ok(None),
        };
        let kid = object.opt_str("kid").map_err(member_error("kid"))?;
        if let Some(kid) = kid
            && kid.len() > MAX_KID_LEN
        {
            return Err(member_error("kid")(format!(
                "is {} bytes, at most {MAX_KID_LEN} accepted",
                kid.len()
            )));
        }
        Ok(Some(Jwk {
            material,
            kid: kid.map(str::to_owned),
            alg,
            use_sig: stated_use.is_some(),
        }))
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("key", &self.describe())
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A set of locally built keys (our own, for publishing): at most
    /// [`MAX_JWKS_KEYS`] and no two with the same `kid`, key type and curve.
    pub fn new(keys: Vec<Jwk>) -> Result<Jwks, JoseError> {
        if keys.len() > MAX_JWKS_KEYS {
            return Err(JoseError::TooManyKeys {
                count: keys.len(),
                max: MAX_JWKS_KEYS,
            });
        }
        refuse_duplicate_kids(&keys)?;
        Ok(Jwks { keys, skipped: 0 })
    }

    /// Parses a partner's JWKS. The input is hostile: it is refused over
    /// [`MAX_JWKS_LEN`] bytes or [`MAX_JWKS_KEYS`] entries, with a duplicate
    /// member name in any object, with a malformed supported key, with any
    /// private key member, or with two keys of the same `kid`, key type and
    /// curve. Entries that are not signature keys we implement are skipped
    /// and counted in [`Jwks::skipped`].
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JoseError> {
        if bytes.len() > MAX_JWKS_LEN {
            return Err(JoseError::TooLarge {
                what: "jwks",
                len: bytes.len(),
                max: MAX_JWKS_LEN,
            });
        }
        let document = json::parse_object(bytes).map_err(|problem| JoseError::Json {
            part: Part::Jwks,
            problem,
        })?;
        let entries = match document.get("keys") {
            Some(Value::Array(entries)) => entries,
            found => {
                return Err(JoseError::Member {
                    part: Part::Jwks,
                    member: "keys",
                    problem: match found {
                        None => "is required".into(),
                        Some(v) => format!("must be an array, found {}", v.kind()),
                    },
                });
            }
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JoseError::TooManyKeys {
                count: entries.len(),
                max: MAX_JWKS_KEYS,
            });
        }
        let mut keys = Vec::with_capacity(entries.len());
        let mut skipped = 0;
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(object) = entry else {
                return Err(JoseError::Json {
                    part: Part::JwksKey(index),
                    problem: format!("expected a json object, found {}", entry.kind()),
                });
            };
            match Jwk::from_object(object, index)? {
                Some(key) => keys.push(key),
                None => skipped += 1,
            }
        }
        refuse_duplicate_kids(&keys)?;
        Ok(Jwks { keys, skipped })
    }

    /// The set as JSON text, `{"keys":[…]}`, public members only. This is
    /// what we publish at our `jwks_uri`.
    pub fn to_json(&self) -> String {
        let keys = self.keys.iter().map(Jwk::to_value).collect();
        let mut m = serde_json::Map::new();
        m.insert("keys".to_owned(), serde_json::Value::Array(keys));
        serde_json::Value::Object(m).to_string()
    }
}

fn refuse_duplicate_kids(keys: &[Jwk]) -> Result<(), JoseError> {
    for (i, a) in keys.iter().enumerate() {
        let Some(kid) = a.kid() else { continue };
        if keys[i + 1..]
            .iter()
            .any(|b| b.kid() == Some(kid) && b.kty() == a.kty() && b.crv() == a.crv())
        {
            return Err(JoseError::DuplicateKid { kid: shown(kid) });
        }
    }
    Ok(())
}

/// A required base64url member, strictly decoded.
fn base64_member(object: &Object, member: &'static str, part: Part) -> Result<Vec<u8>, JoseError> {
    let text = object
        .opt_str(member)
        .map_err(|problem| JoseError::Member {
            part,
            member,
            problem,
        })?
        .ok_or_else(|| JoseError::Member {
            part,
            member,
            problem: "is required".into(),
        })?;
    b64::decode(text).map_err(|_| JoseError::Base64 {
        part,
        member: Some(member),
    })
}

/// An RSA `n` or `e`. RFC 7518 §6.3.1 wants the shortest form; leading zero
/// bytes (which some encoders emit) are dropped rather than refused, as they
/// do not change the value.
fn rsa_integer(object: &Object, member: &'static str, part: Part) -> Result<Vec<u8>, JoseError> {
    let mut bytes = base64_member(object, member, part)?;
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    if bytes.is_empty() {
        return Err(JoseError::Member {
            part,
            member,
            problem: "must be a positive integer".into(),
        });
    }
    Ok(bytes)
}

/// An EC `x` or `y`: RFC 7518 §6.2.1.2 requires the full coordinate width.
fn ec_coordinate(
    object: &Object,
    member: &'static str,
    curve: Curve,
    part: Part,
) -> Result<Vec<u8>, JoseError> {
    let bytes = base64_member(object, member, part)?;
    if bytes.len() != curve.coordinate_len() {
        return Err(JoseError::Member {
            part,
            member,
            problem: format!(
                "must be {} bytes for {}, found {}",
                curve.coordinate_len(),
                curve.name(),
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Bits in a big-endian unsigned integer without leading zero bytes.
fn bit_len(n: &[u8]) -> usize {
    match n.first() {
        None => 0,
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::test_keys;

    /// RFC 7638 §3.1 example key.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn rfc7638_jwks() -> String {
        format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}]}}"#
        )
    }

    fn p256_x() -> String {
        b64::encode(&[7u8; 32])
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        let jwks = Jwks::parse(rfc7638_jwks().as_bytes()).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        let key = &jwks.keys[0];
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(key.kid(), Some("2011-04-29"));
        assert_eq!(key.alg(), Some(Alg::Rs256));
        assert_eq!((key.kty(), key.crv()), ("RSA", None));
        assert!(key.fit(Alg::Rs256).is_ok());
        let e = key.fit(Alg::Ps256).unwrap_err();
        assert_eq!(e, "the key is published for RS256");
    }

    #[test]
    fn thumbprint_ignores_optional_members_and_leading_zeros() {
        let bare = format!(r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB"}}]}}"#);
        let padded_n = b64::encode(&[&[0u8, 0][..], &b64::decode(RFC7638_N).unwrap()].concat());
        let zeros =
            format!(r#"{{"keys":[{{"kty":"RSA","n":"{padded_n}","e":"AAEAAQ","use":"sig"}}]}}"#);
        for doc in [bare, zeros] {
            let jwks = Jwks::parse(doc.as_bytes()).unwrap();
            assert_eq!(
                jwks.keys[0].thumbprint(),
                "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
            );
        }
    }

    #[test]
    fn our_jwks_round_trips_and_publishes_sig_keys_only() {
        let keys: Vec<Jwk> = [Alg::Ps256, Alg::Es256, Alg::Es384, Alg::Es512]
            .into_iter()
            .map(|alg| test_keys::key(alg).public_jwk())
            .collect();
        let jwks = Jwks::new(keys).unwrap();
        let text = jwks.to_json();
        for private in ["\"d\"", "\"p\"", "\"q\"", "\"k\""] {
            assert!(!text.contains(private), "{text}");
        }
        let parsed = Jwks::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, jwks);
        assert_eq!(parsed.to_json(), text);
        for key in &parsed.keys {
            assert_eq!(key.kid(), Some(key.thumbprint().as_str()));
            assert!(key.to_json().contains(r#""use":"sig""#));
        }
        assert_eq!(parsed.keys[3].crv(), Some("P-521"));
    }

    #[test]
    fn skips_keys_we_cannot_use_and_counts_them() {
        let x = p256_x();
        let doc = format!(
            r#"{{"keys":[
            {{"kty":"OKP","crv":"Ed25519","x":"{x}"}},
            {{"kty":"EC","crv":"secp256k1","x":"{x}","y":"{x}"}},
            {{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","use":"enc"}},
            {{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","key_ops":["encrypt"]}},
            {{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"RSA-OAEP"}},
            {{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","kid":"ok","key_ops":["verify"],"x5t":"whatever"}}
            ],"extra":{{"ignored":true}}}}"#
        );
        let jwks = Jwks::parse(doc.as_bytes()).unwrap();
        assert_eq!(jwks.skipped, 5);
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].kid(), Some("ok"));
        assert!(!jwks.keys[0].to_json().contains("use"));
    }

    #[test]
    fn refuses_hostile_or_malformed_sets() {
        let x = p256_x();
        let short = b64::encode(&[7u8; 31]);
        let too_many = format!(
            r#"{{"keys":[{}]}}"#,
            vec![r#"{"kty":"oct"}"#; MAX_JWKS_KEYS + 1].join(",")
        );
        let oversize = format!(r#"{{"keys":[],"pad":"{}"}}"#, "a".repeat(MAX_JWKS_LEN));
        let cases: Vec<(String, &str)> = vec![
            (oversize, "jwks is 65"),
            (too_many, "jwks holds 33 keys, at most 32 accepted"),
            ("[]".into(), "jwks: expected a json object, found an array"),
            ("{}".into(), "jwks member \"keys\" is required"),
            (
                r#"{"keys":{}}"#.into(),
                "jwks member \"keys\" must be an array",
            ),
            (
                r#"{"keys":[],"keys":[]}"#.into(),
                "duplicate member \"keys\"",
            ),
            (
                r#"{"keys":[1]}"#.into(),
                "jwks key #0: expected a json object, found a number",
            ),
            (
                r#"{"keys":[{"e":"AQAB"}]}"#.into(),
                "jwks key #0 member \"kty\" is required",
            ),
            (
                r#"{"keys":[{"kty":5}]}"#.into(),
                "jwks key #0 member \"kty\" must be a string",
            ),
            (
                format!(
                    r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","crv":"P-384"}}]}}"#
                ),
                "duplicate member \"crv\"",
            ),
            (
                format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{short}"}}]}}"#),
                "jwks key #0 member \"y\" must be 32 bytes for P-256, found 31",
            ),
            (
                format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}="}}]}}"#),
                "jwks key #0 member \"x\" is not unpadded base64url",
            ),
            (
                r#"{"keys":[{"kty":"EC","x":"AA","y":"AA"}]}"#.into(),
                "jwks key #0 member \"crv\" is required for kty EC",
            ),
            (
                r#"{"keys":[{"kty":"RSA","n":"AAAA","e":"AQAB"}]}"#.into(),
                "jwks key #0 member \"n\" must be a positive integer",
            ),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB"}]}"#.into(),
                "jwks key #0 member \"e\" is required",
            ),
            (
                format!(r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","d":"AQAB"}}]}}"#),
                "jwks key #0 member \"d\" is present: the key set publishes private key material",
            ),
            (
                r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into(),
                "jwks key #0 member \"k\" is present",
            ),
            (
                format!(
                    r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","kid":"{}"}}]}}"#,
                    "k".repeat(MAX_KID_LEN + 1)
                ),
                "jwks key #0 member \"kid\" is 257 bytes",
            ),
            (
                format!(
                    r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","kid":"a"}},{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","kid":"a"}}]}}"#
                ),
                "jwks holds more than one key with kid \"a\"",
            ),
            (
                format!(
                    r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","key_ops":"verify"}}]}}"#
                ),
                "jwks key #0 member \"key_ops\" must be an array",
            ),
        ];
        for (doc, want) in cases {
            let e = Jwks::parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with(want) || e.contains(want),
                "want {want:?}, got {e:?}"
            );
        }
    }

    #[test]
    fn same_kid_on_different_key_types_is_allowed() {
        let x = p256_x();
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}","kid":"a"}},{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","kid":"a"}}]}}"#
        );
        assert_eq!(Jwks::parse(doc.as_bytes()).unwrap().keys.len(), 2);
    }

    #[test]
    fn fit_checks_type_curve_and_rsa_size() {
        let x = p256_x();
        let small_n = b64::encode(&[0xc1u8; 128]);
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}},{{"kty":"RSA","n":"{small_n}","e":"AQAB"}}]}}"#
        );
        let jwks = Jwks::parse(doc.as_bytes()).unwrap();
        let (ec, rsa) = (&jwks.keys[0], &jwks.keys[1]);
        assert!(ec.fit(Alg::Es256).is_ok());
        assert_eq!(
            ec.fit(Alg::Es384).unwrap_err(),
            "ES384 needs an EC key on P-384, the key is EC P-256"
        );
        assert_eq!(
            ec.fit(Alg::Ps256).unwrap_err(),
            "PS256 needs an RSA key, the key is EC P-256"
        );
        assert_eq!(
            rsa.fit(Alg::Ps256).unwrap_err(),
            "rsa modulus is 1024 bits, 2048 to 8192 needed"
        );
        assert_eq!(
            rsa.fit(Alg::Es256).unwrap_err(),
            "ES256 needs an EC key on P-256, the key is RSA 1024 bits"
        );
        assert_eq!(rsa.label(), "(no kid, RSA 1024 bits)");
    }

    #[test]
    fn jwks_new_refuses_duplicates_and_too_many() {
        let key = test_keys::key(Alg::Es256).public_jwk();
        assert!(matches!(
            Jwks::new(vec![key.clone(), key.clone()]),
            Err(JoseError::DuplicateKid { .. })
        ));
        assert!(matches!(
            Jwks::new(vec![key; MAX_JWKS_KEYS + 1]),
            Err(JoseError::TooManyKeys { count: 33, max: 32 })
        ));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = test_keys::key(Alg::Es256).public_jwk();
        let text = format!("{key:?}");
        let KeyMaterial::Ec { x, .. } = key.material() else {
            panic!("EC key expected")
        };
        assert!(!text.contains(&b64::encode(x)), "{text}");
        assert!(text.contains("EC P-256"), "{text}");
    }

    #[test]
    fn every_truncated_prefix_of_a_jwks_is_refused() {
        let text = rfc7638_jwks();
        for end in 0..text.len() {
            assert!(
                Jwks::parse(&text.as_bytes()[..end]).is_err(),
                "prefix {end}"
            );
        }
    }
}
