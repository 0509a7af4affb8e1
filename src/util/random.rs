//! Random values from ring's system CSPRNG.

use ring::rand::{SecureRandom, SystemRandom};

/// The system random source failed: nothing safe can be done without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomUnavailable;

impl std::fmt::Display for RandomUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

impl std::error::Error for RandomUnavailable {}

/// Fills an array with random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomUnavailable> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| RandomUnavailable)?;
    Ok(out)
}

/// A random (version 4) UUID in lower-case hyphenated form.
pub fn uuid_v4() -> Result<String, RandomUnavailable> {
    Ok(format_uuid(bytes::<16>()?))
}

/// Formats 16 bytes as a version 4, variant 1 UUID.
pub fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = super::b64::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// True when `s` is a UUID in canonical hyphenated form (any version, either case).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = uuid_v4().unwrap();
        assert!(is_uuid(&u), "{u}");
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4().unwrap());
        assert!(!is_uuid("6128cfe7-0e89-4d37-ba90-e4ca3b3fcbb"));
        assert!(!is_uuid("6128cfe7x0e89-4d37-ba90-e4ca3b3fcbbe"));
    }
}
