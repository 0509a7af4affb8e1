//! The pseudonym's first step (sans-IO): the OPRF input of a BSN and its
//! blinding, RFC 9497 OPRF(ristretto255, SHA-512) in base mode, Blind only
//! (spec vad-prs-nvi.md section 0).
//!
//! | step | here |
//! |---|---|
//! | input | `x = HKDF-SHA256(ikm = {"landCode":"NL","type":"BSN","value":"<bsn>"}` (RFC 8785), no salt, `info = <recipientOrganization>\|<recipientScope>\|v1`, 32 bytes) |
//! | blind | `B = r·H(x)` with a fresh random scalar `r` ([`blind`]) |
//! | on the wire | `B` as base64url **with padding** (`encryptedPersonalId`), `r` as base64url with padding of its 32 little-endian bytes (the blind factor) |
//! | the recipient's step | `N = r⁻¹·Z` for the PRS's `Z = k·B` ([`unblind`]: the NVI does it; we never do, and the RFC's Finalize hash is never taken) |
//!
//! The blind factor is the key to the pseudonym: it lives in a
//! [`BlindFactor`], whose `Debug` withholds it and whose bytes are wiped when
//! it is dropped; it is sent to the NVI inside the registration and never
//! written to disk or a log. Each attempt blinds afresh.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use voprf::{Group, OprfClient, Ristretto255};
use zeroize::Zeroize;

use crate::ids::Bsn;

/// The version in the HKDF info.
pub const INFO_VERSION: &str = "v1";
/// Bytes of a compressed ristretto255 point and of a scalar.
pub const ELEMENT_LEN: usize = 32;

/// Why blinding or unblinding failed. No variant carries input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OprfError {
    /// HKDF refused the length (cannot happen for 32 bytes).
    Hkdf,
    /// The group operation refused the input.
    Blind,
    /// Not base64url of 32 bytes, or not a valid scalar or point.
    Encoding(&'static str),
}

impl std::fmt::Display for OprfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OprfError::Hkdf => f.write_str("oprf: HKDF expansion failed"),
            OprfError::Blind => f.write_str("oprf: blinding failed"),
            OprfError::Encoding(what) => write!(f, "oprf: {what} is not a valid encoding"),
        }
    }
}

impl std::error::Error for OprfError {}

/// Who the pseudonym is for: changing either changes the pseudonym.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `oin:<20 digits>`.
    pub organization: String,
    /// The recipient scope, e.g. `nvi`.
    pub scope: String,
}

impl Recipient {
    /// The recipient named by an OIN (its 20 digits) and a scope.
    pub fn oin(oin: &str, scope: &str) -> Recipient {
        Recipient {
            organization: format!("oin:{oin}"),
            scope: scope.to_string(),
        }
    }

    /// `<organization>|<scope>|v1`.
    pub fn info(&self) -> String {
        format!("{}|{}|{INFO_VERSION}", self.organization, self.scope)
    }
}

/// The RFC 8785 canonical JSON of a BSN as personal identifier: keys in
/// code-point order, no white space. A BSN is nine digits, so nothing in it
/// needs escaping.
pub fn personal_id_json(bsn: &Bsn) -> String {
    format!(
        r#"{{"landCode":"NL","type":"BSN","value":"{}"}}"#,
        bsn.as_str()
    )
}

/// The OPRF input of a patient for a recipient (32 bytes, wiped on drop).
pub struct Input([u8; ELEMENT_LEN]);

impl Input {
    pub fn as_bytes(&self) -> &[u8; ELEMENT_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input(<withheld>)")
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `HKDF-SHA256(ikm = personal_id_json(bsn), salt = none, info = recipient.info(), 32)`.
/// "No salt" is HashLen zero bytes (RFC 5869 §2.2), which is what HMAC
/// makes of an empty key.
pub fn input(bsn: &Bsn, recipient: &Recipient) -> Result<Input, OprfError> {
    let ikm = personal_id_json(bsn);
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(ikm.as_bytes());
    let info = recipient.info();
    let info = [info.as_bytes()];
    let okm = prk
        .expand(&info, OutLen)
        .map_err(|ring::error::Unspecified| OprfError::Hkdf)?;
    let mut out = [0u8; ELEMENT_LEN];
    okm.fill(&mut out)
        .map_err(|ring::error::Unspecified| OprfError::Hkdf)?;
    Ok(Input(out))
}

struct OutLen;

impl ring::hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        ELEMENT_LEN
    }
}

/// The blind factor `r`: its 32 little-endian bytes. `Debug` withholds it;
/// dropped, it is wiped.
pub struct BlindFactor([u8; ELEMENT_LEN]);

impl BlindFactor {
    /// base64url with padding, as the NVI reads it (`blind_factor`,
    /// `oprf_key`).
    pub fn to_wire(&self) -> String {
        URL_SAFE.encode(self.0)
    }

    /// The factor from its wire form (the recipient's side).
    pub fn from_wire(text: &str) -> Result<BlindFactor, OprfError> {
        let mut bytes = decode_32(text, "blind factor")?;
        let factor = BlindFactor(bytes);
        bytes.zeroize();
        Ok(factor)
    }
}

impl std::fmt::Debug for BlindFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindFactor(<withheld>)")
    }
}

impl Drop for BlindFactor {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// One blinding: the element for the PRS and the factor for the NVI.
#[derive(Debug)]
pub struct Blinded {
    /// `B = r·H(x)`, compressed.
    pub element: [u8; ELEMENT_LEN],
    pub factor: BlindFactor,
}

impl Blinded {
    /// `encryptedPersonalId`: base64url with padding.
    pub fn element_wire(&self) -> String {
        URL_SAFE.encode(self.element)
    }
}

/// Blinds `input` with a scalar drawn from `seed` (64 bytes from the
/// CSPRNG: `r` is their wide reduction modulo the group order, as
/// `Scalar::random` does). The same seed gives the same blinding, so tests
/// can fix it; production passes fresh random bytes every time.
pub fn blind(input: &Input, seed: [u8; 64]) -> Result<Blinded, OprfError> {
    blind_message(input.as_bytes(), seed)
}

/// [`blind`] of any message (RFC 9497's test vectors blind other inputs
/// than ours).
fn blind_message(message: &[u8], seed: [u8; 64]) -> Result<Blinded, OprfError> {
    let mut rng = SeededRng::new(seed);
    let result =
        OprfClient::<Ristretto255>::blind(message, &mut rng).map_err(|_| OprfError::Blind)?;
    let mut element = [0u8; ELEMENT_LEN];
    element.copy_from_slice(&result.message.serialize());
    let mut r = result.state.serialize();
    let mut factor = [0u8; ELEMENT_LEN];
    factor.copy_from_slice(&r);
    r[..].zeroize();
    Ok(Blinded {
        element,
        factor: BlindFactor(factor),
    })
}

/// The recipient's step: `N = r⁻¹·Z` from the wire forms of `r` (the blind
/// factor) and `Z` (the PRS's evaluation, the `subject` after
/// `pseudonym:eval:`; base64url with or without padding). The NVI does this;
/// the stand-in NVI and the tests use it.
pub fn unblind(factor: &BlindFactor, evaluated: &str) -> Result<[u8; ELEMENT_LEN], OprfError> {
    let z = decode_32(evaluated, "evaluated element")?;
    let z = <Ristretto255 as Group>::deserialize_elem(&z)
        .map_err(|_| OprfError::Encoding("evaluated element"))?;
    let r = <Ristretto255 as Group>::deserialize_scalar(&factor.0)
        .map_err(|_| OprfError::Encoding("blind factor"))?;
    let n = z * <Ristretto255 as Group>::invert_scalar(r);
    let mut out = [0u8; ELEMENT_LEN];
    out.copy_from_slice(&<Ristretto255 as Group>::serialize_elem(n));
    Ok(out)
}

/// base64url of exactly 32 bytes, with or without padding.
fn decode_32(text: &str, what: &'static str) -> Result<[u8; ELEMENT_LEN], OprfError> {
    let bytes = URL_SAFE
        .decode(text.trim_end_matches('=').to_string() + pad(text))
        .map_err(|_| OprfError::Encoding(what))?;
    let mut out = [0u8; ELEMENT_LEN];
    if bytes.len() != ELEMENT_LEN {
        return Err(OprfError::Encoding(what));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// The padding a base64url text of `text`'s length without its own needs.
fn pad(text: &str) -> &'static str {
    match text.trim_end_matches('=').len() % 4 {
        2 => "==",
        3 => "=",
        _ => "",
    }
}

/// The blinding's randomness: the seed first, then SHA-512 of the seed and
/// a counter (only if the group asks for more than 64 bytes, which it does
/// only when the first scalar is zero: never in practice).
struct SeededRng {
    seed: [u8; 64],
    buf: [u8; 64],
    pos: usize,
    counter: u64,
}

impl SeededRng {
    fn new(seed: [u8; 64]) -> SeededRng {
        SeededRng {
            seed,
            buf: seed,
            pos: 0,
            counter: 0,
        }
    }

    fn refill(&mut self) {
        self.counter = self.counter.wrapping_add(1);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(&self.seed);
        ctx.update(&self.counter.to_be_bytes());
        self.buf.copy_from_slice(ctx.finish().as_ref());
        self.pos = 0;
    }
}

impl Drop for SeededRng {
    fn drop(&mut self) {
        self.seed.zeroize();
        self.buf.zeroize();
    }
}

impl rand_core::RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.pos == self.buf.len() {
                self.refill();
            }
            *byte = self.buf[self.pos];
            self.pos += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// The seed comes from the CSPRNG ([`crate::util::random`]).
impl rand_core::CryptoRng for SeededRng {}

#[cfg(test)]
mod tests {
    use super::*;

    fn bsn(s: &str) -> Bsn {
        Bsn::parse(s).unwrap()
    }

    fn nvi() -> Recipient {
        Recipient::oin("00000099000000001000", "nvi")
    }

    /// A PRS: `Z = k·B` with a fixed key.
    fn evaluate(key: &[u8; 32], element: &str) -> String {
        let b = URL_SAFE.decode(element).unwrap();
        let server = voprf::OprfServer::<Ristretto255>::new_with_key(key).unwrap();
        let blinded = voprf::BlindedElement::<Ristretto255>::deserialize(&b).unwrap();
        URL_SAFE.encode(server.blind_evaluate(&blinded).serialize())
    }

    const KEY: [u8; 32] = {
        let mut k = [0u8; 32];
        k[0] = 7;
        k[1] = 42;
        k
    };

    #[test]
    fn the_personal_id_is_rfc8785_canonical() {
        assert_eq!(
            personal_id_json(&bsn("999999151")),
            r#"{"landCode":"NL","type":"BSN","value":"999999151"}"#
        );
        assert_eq!(nvi().info(), "oin:00000099000000001000|nvi|v1");
    }

    /// Fixed vector, computed independently with Python's
    /// `cryptography` HKDF (SHA-256, salt None, length 32) over the same
    /// ikm and info, as the MinVWS registration service does.
    #[test]
    fn the_input_is_hkdf_sha256_of_the_personal_id() {
        let x = input(&bsn("999999151"), &nvi()).unwrap();
        assert_eq!(
            crate::util::b64::hex(x.as_bytes()),
            "f31f4f56197843d7f45f27601f1aeb7472a25ab4a3de1f9f21b40380937fc78f"
        );
    }

    #[test]
    fn recipient_and_scope_change_the_input() {
        let p = bsn("999999151");
        let a = input(&p, &nvi()).unwrap();
        let b = input(&p, &Recipient::oin("00000099000000001000", "other")).unwrap();
        let c = input(&p, &Recipient::oin("00000099000000002000", "nvi")).unwrap();
        let d = input(&bsn("999999163"), &nvi()).unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), d.as_bytes());
        assert_eq!(a.as_bytes(), input(&p, &nvi()).unwrap().as_bytes());
    }

    #[test]
    fn two_blindings_of_one_bsn_unblind_to_one_point() {
        let p = bsn("999999151");
        let x = input(&p, &nvi()).unwrap();
        let one = blind(&x, [1u8; 64]).unwrap();
        let two = blind(&x, [2u8; 64]).unwrap();
        assert_ne!(one.element, two.element, "different blinds look different");
        assert_ne!(one.factor.to_wire(), two.factor.to_wire());
        let n1 = unblind(&one.factor, &evaluate(&KEY, &one.element_wire())).unwrap();
        let n2 = unblind(&two.factor, &evaluate(&KEY, &two.element_wire())).unwrap();
        assert_eq!(n1, n2);
        // Fixed vector: k·H(x) for this key, input and suite, whatever the
        // blind (a change of the hash-to-group or the encodings shows here).
        assert_eq!(
            crate::util::b64::hex(&n1),
            "e817784d85ac55286e3e2926fce8067eef037092cd88379af076631495aaca1c"
        );
    }

    #[test]
    fn another_scope_or_bsn_unblinds_to_another_point() {
        let p = bsn("999999151");
        let n = |x: &Input, seed: u8| {
            let b = blind(x, [seed; 64]).unwrap();
            unblind(&b.factor, &evaluate(&KEY, &b.element_wire())).unwrap()
        };
        let base = n(&input(&p, &nvi()).unwrap(), 3);
        let scope = n(
            &input(&p, &Recipient::oin("00000099000000001000", "other")).unwrap(),
            4,
        );
        let other = n(&input(&bsn("999999163"), &nvi()).unwrap(), 5);
        assert_ne!(base, scope);
        assert_ne!(base, other);
    }

    /// Fixed vector: the seed fixes the blind, so the wire forms are fixed
    /// too (a change of the input, the suite or the encodings shows here).
    #[test]
    fn wire_forms_are_padded_base64url_of_32_bytes() {
        let x = input(&bsn("999999151"), &nvi()).unwrap();
        let b = blind(&x, [9u8; 64]).unwrap();
        let e = b.element_wire();
        let f = b.factor.to_wire();
        assert_eq!(e.len(), 44);
        assert!(e.ends_with('='));
        assert_eq!(f.len(), 44);
        assert!(f.ends_with('='));
        assert!(!e.contains(['+', '/']) && !f.contains(['+', '/']));
        assert_eq!(
            BlindFactor::from_wire(&f).unwrap().to_wire(),
            f,
            "round trip"
        );
        assert_eq!(
            BlindFactor::from_wire(f.trim_end_matches('='))
                .unwrap()
                .to_wire(),
            f,
            "padding optional on the way in"
        );
        assert!(BlindFactor::from_wire("AAAA").is_err());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9497 Appendix A.1.1, OPRF(ristretto255, SHA-512), OPRF mode,
    /// test vector 1: our blinding (the seed's first half is the RFC's
    /// blind, which the wide reduction leaves as it is), a PRS's
    /// evaluation, and the recipient's unblinding, whose point the RFC's
    /// Finalize hashes to the RFC's output.
    #[test]
    fn rfc9497_test_vector_1_through_blind_evaluate_and_unblind() {
        let sk: [u8; 32] =
            unhex("5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e")
                .try_into()
                .unwrap();
        let input = [0u8];
        let r = unhex("64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706");
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(&r);
        let b = blind_message(&input, seed).unwrap();
        assert_eq!(b.factor.to_wire(), URL_SAFE.encode(&r));
        assert_eq!(
            crate::util::b64::hex(&b.element),
            "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c"
        );
        let z = evaluate(&sk, &b.element_wire());
        assert_eq!(
            crate::util::b64::hex(&URL_SAFE.decode(&z).unwrap()),
            "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e"
        );
        let n = unblind(&b.factor, &z).unwrap();
        // Finalize: SHA-512(len(input) ‖ input ‖ len(N) ‖ N ‖ "Finalize").
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(&[0, 1]);
        ctx.update(&input);
        ctx.update(&[0, 32]);
        ctx.update(&n);
        ctx.update(b"Finalize");
        assert_eq!(
            crate::util::b64::hex(ctx.finish().as_ref()),
            "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3\
             ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6"
        );
    }

    #[test]
    fn debug_withholds_the_blind_factor() {
        let x = input(&bsn("999999151"), &nvi()).unwrap();
        let b = blind(&x, [9u8; 64]).unwrap();
        let shown = format!("{b:?} {x:?}");
        assert!(!shown.contains(&b.factor.to_wire()), "{shown}");
        assert!(!shown.contains(&b.factor.to_wire()[..20]), "{shown}");
        assert!(shown.contains("<withheld>"));
    }
}
