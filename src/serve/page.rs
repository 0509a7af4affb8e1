//! Page links: `_page=<token>`, opaque and bound to one authorization base.
//!
//! The token is `p1.` + base64url(nonce ‖ ChaCha20-Poly1305(state)), with the
//! partner, case id and authorization base as associated data. So a token
//! - reveals nothing (the search may hold a BSN, the link travels in URLs);
//! - cannot be altered: any change fails authentication;
//! - is useless with a token for another base, case or partner.
//!
//! The state is the search as the partner sent it (minus `_format`), the
//! offset, the data version it was cut from and an expiry. The caller parses
//! that search again with the same rules as a fresh one, so even a key that
//! leaked could not widen what a page reads.
//!
//! The key lives in memory only: page links do not survive a restart (the
//! partner gets 400 and repeats the search).

use serde::{Deserialize, Serialize};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::util::{b64, random};

/// How long a page link can be followed, in seconds.
pub(crate) const PAGE_LINK_LIFETIME: i64 = 3600;
/// Longest token accepted.
const MAX_TOKEN: usize = 8 * 1024;
const PREFIX: &str = "p1.";
const AAD_LABEL: &[u8] = b"np-agent serve page v1";

/// The secret that seals page links.
pub struct PageKey([u8; 32]);

impl PageKey {
    /// A fresh random key.
    pub fn generate() -> Result<PageKey, random::RandomUnavailable> {
        random::bytes::<32>().map(PageKey)
    }

    /// A key from 32 bytes (tests, or a key kept by the caller).
    pub fn from_bytes(bytes: [u8; 32]) -> PageKey {
        PageKey(bytes)
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .ok()
            .map(LessSafeKey::new)
    }
}

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageKey(***)")
    }
}

/// What a page link carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PageState {
    /// Resource type searched.
    pub t: String,
    /// [`super::query::Op`] name.
    pub op: String,
    /// The decoded search parameters, `_format` excluded.
    pub q: Vec<(String, String)>,
    /// Offset of the page's first match.
    pub o: usize,
    /// Data version the results were cut from.
    pub v: u32,
    /// Unix time after which the link is refused.
    pub e: i64,
}

/// What a page link is bound to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound<'a> {
    pub partner: &'a str,
    pub case_id: &'a str,
    pub authorization_base: &'a str,
}

impl Bound<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        for part in [self.partner, self.case_id, self.authorization_base] {
            aad.push(0);
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Why a page link was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageError {
    /// Altered, forged, for another base, or from before a restart.
    Invalid,
    /// Older than [`PAGE_LINK_LIFETIME`].
    Expired,
    /// No key or no randomness to make one.
    Unavailable,
}

/// Seals `state` into a token for `bound`.
pub(crate) fn seal(
    key: &PageKey,
    bound: &Bound<'_>,
    state: &PageState,
) -> Result<String, PageError> {
    let aead = key.aead().ok_or(PageError::Unavailable)?;
    let nonce = random::bytes::<NONCE_LEN>().map_err(|_| PageError::Unavailable)?;
    let mut sealed = serde_json::to_vec(state).map_err(|_| PageError::Unavailable)?;
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(bound.aad()),
        &mut sealed,
    )
    .map_err(|_| PageError::Unavailable)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(format!("{PREFIX}{}", b64::encode(&out)))
}

/// Opens a token for `bound` at `now`.
pub(crate) fn open(
    key: &PageKey,
    bound: &Bound<'_>,
    token: &str,
    now: i64,
) -> Result<PageState, PageError> {
    if token.len() > MAX_TOKEN {
        return Err(PageError::Invalid);
    }
    let body = token.strip_prefix(PREFIX).ok_or(PageError::Invalid)?;
    let mut bytes = b64::decode(body).map_err(|_| PageError::Invalid)?;
    if bytes.len() < NONCE_LEN {
        return Err(PageError::Invalid);
    }
    let mut sealed = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| PageError::Invalid)?;
    let aead = key.aead().ok_or(PageError::Unavailable)?;
    let plain = aead
        .open_in_place(nonce, Aad::from(bound.aad()), &mut sealed)
        .map_err(|_| PageError::Invalid)?;
    let state: PageState = serde_json::from_slice(plain).map_err(|_| PageError::Invalid)?;
    if now >= state.e {
        return Err(PageError::Expired);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Bound<'static> = Bound {
        partner: "hospb",
        case_id: "c-1",
        authorization_base: "base-1",
    };

    fn state() -> PageState {
        PageState {
            t: "Patient".into(),
            op: "search".into(),
            q: vec![(
                "identifier".into(),
                "http://fhir.nl/fhir/NamingSystem/bsn|999999151".into(),
            )],
            o: 2,
            v: 1,
            e: 2_000,
        }
    }

    #[test]
    fn round_trip_and_opacity() {
        let key = PageKey::from_bytes([7; 32]);
        let t = seal(&key, &BOUND, &state()).unwrap();
        assert!(t.starts_with("p1."));
        assert!(!t.contains("999999151") && !t.contains("Patient"));
        assert_eq!(open(&key, &BOUND, &t, 1_999).unwrap(), state());
        assert_eq!(open(&key, &BOUND, &t, 2_000), Err(PageError::Expired));
        assert_ne!(seal(&key, &BOUND, &state()).unwrap(), t, "fresh nonce");
        assert_eq!(format!("{key:?}"), "PageKey(***)");
    }

    #[test]
    fn refuses_tampering_other_bindings_and_other_keys() {
        let key = PageKey::from_bytes([7; 32]);
        let t = seal(&key, &BOUND, &state()).unwrap();
        for other in [
            Bound {
                authorization_base: "base-2",
                ..BOUND
            },
            Bound {
                case_id: "c-2",
                ..BOUND
            },
            Bound {
                partner: "hospc",
                ..BOUND
            },
        ] {
            assert_eq!(open(&key, &other, &t, 1_000), Err(PageError::Invalid));
        }
        assert_eq!(
            open(&PageKey::from_bytes([8; 32]), &BOUND, &t, 1_000),
            Err(PageError::Invalid)
        );
        // Flip every character of the token in turn.
        for i in 3..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(b).unwrap();
            assert_eq!(
                open(&key, &BOUND, &forged, 1_000),
                Err(PageError::Invalid),
                "{i}"
            );
        }
        for junk in ["", "p1.", "p1.AAAA", "p2.xyz", &"A".repeat(MAX_TOKEN + 1)] {
            assert_eq!(open(&key, &BOUND, junk, 1_000), Err(PageError::Invalid));
        }
        // Every truncation.
        for n in 0..t.len() {
            assert!(open(&key, &BOUND, &t[..n], 1_000).is_err());
        }
    }
}
