//! JWS compact serialisation, its header and the assertion claims: never
//! panics; a token is only accepted when signed by the partner's key with
//! an allowed algorithm, and the claims of whatever we sign ourselves read
//! back the same from the verified payload.
//!
//! Input: up to the first NUL, a token as a partner sends it; after it,
//! a claims payload that is signed with the partner's key and verified, so
//! the claim parsers behind the signature are reached too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use np_agent::assertion::claims;
use np_agent::jose::{Alg, DEFAULT_ACCEPTED, Jwks, SigningKey, generate_pkcs8_pem, verify_compact};

fn partner() -> &'static (SigningKey, Jwks) {
    static PARTNER: OnceLock<(SigningKey, Jwks)> = OnceLock::new();
    PARTNER.get_or_init(|| {
        let pem = generate_pkcs8_pem(Alg::Es256).expect("key generation");
        let key =
            SigningKey::from_pkcs8_pem(&pem, Alg::Es256, Some("partner-1".into())).expect("key");
        let keys = Jwks::new(vec![key.public_jwk()]).expect("key set");
        (key, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, keys) = partner();
    let (token, payload) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let token = String::from_utf8_lossy(token);
    if let Ok(verified) = verify_compact(&token, keys, DEFAULT_ACCEPTED) {
        // Only our partner's key could have made this signature: the input
        // is one of our own tokens, replayed or re-encoded. Its header is ours.
        assert_eq!(verified.alg(), Alg::Es256);
        assert_eq!(verified.kid(), Some("partner-1"));
        let _ = claims::parse(verified.payload());
        let _ = claims::parse_iua(verified.payload());
    }
    // `none`, HMAC and algorithms off the list never verify.
    assert!(verify_compact(&token, keys, &[]).is_err());
    let _ = claims::parse(token.as_bytes());
    let _ = claims::parse_iua(token.as_bytes());
    if let Some(payload) = payload {
        let Ok(signed) = key.sign_jwt(payload) else {
            return;
        };
        let verified = match verify_compact(&signed, keys, DEFAULT_ACCEPTED) {
            Ok(v) => v,
            Err(e) => panic!("our own token does not verify: {e}"),
        };
        assert_eq!(verified.payload(), payload);
        assert_eq!(claims::parse(verified.payload()), claims::parse(payload));
        let _ = claims::parse_iua(verified.payload());
    }
});
