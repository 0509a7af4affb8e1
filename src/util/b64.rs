//! Strict base64url without padding (RFC 7515 §2): non-canonical input is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url; padding, whitespace, the standard alphabet and
/// non-zero trailing bits are all refused.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text.as_bytes())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0x0f) as usize] as char);
    }
    out
}

/// The first 32 hex digits of SHA-256 of `bytes`: a file-safe name or id
/// derived from data that may not itself appear in a name.
pub fn sha256_hex32(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut h = hex(d.as_ref());
    h.truncate(32);
    h
}

/// Parses hex (either case, optional `:` separators) into bytes.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        assert_eq!(decode("-_8").unwrap(), b"\xfb\xff");
        assert!(decode("-_8=").is_err(), "padding refused");
        assert!(decode("+/8").is_err(), "standard alphabet refused");
        assert!(decode("-_9").is_err(), "non-zero trailing bits refused");
        assert!(decode("ab cd").is_err(), "whitespace refused");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(parse_hex("00:AB:ff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert!(parse_hex("abc").is_none());
        assert!(parse_hex("zz").is_none());
    }

    #[test]
    fn sha256_names() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(sha256_hex32(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(sha256_hex32(b"").len(), 32);
    }
}
