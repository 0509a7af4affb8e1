//! Our signing key: it loads, signs, and verifies against the JWKS we
//! publish under its `kid`.

use super::{Check, fail, ok};
use crate::config::Config;
use crate::jose::{self, Jwks};

/// The signing key loads, signs, and verifies against the JWKS we publish
/// under its `kid`.
pub(super) fn signing_check(cfg: &Config) -> Check {
    let name = "signing";
    let path = cfg.signing_key.display();
    let key = match crate::daemon::load_signing_key(cfg) {
        Ok(k) => k,
        Err(e) => {
            return fail(
                name,
                e,
                format!(
                    "NP_SIGNING_KEY must be an unencrypted PKCS#8 PEM key of type NP_SIGNING_ALG={0}; \
                     make one with 'np-agent keygen --alg {0} --out {1}.new', move it into place, \
                     chown it to np-agent, and give partners the new 'np-agent jwks'",
                    cfg.signing_alg.name(),
                    path
                ),
            );
        }
    };
    let verified = Jwks::new(vec![key.public_jwk()])
        .map_err(|e| e.to_string())
        .and_then(|set| {
            let jwt = key
                .sign_jwt(br#"{"iss":"np-agent doctor"}"#)
                .map_err(|e| e.to_string())?;
            jose::verify_compact(&jwt, &set, &[key.alg()]).map_err(|e| e.to_string())
        });
    match verified {
        Ok(v) if v.kid() == Some(key.kid()) => {
            let thumb = key.public_jwk().thumbprint();
            let kid_note = if key.kid() == thumb {
                "the RFC 7638 thumbprint".to_string()
            } else {
                format!("set by NP_SIGNING_KID; the thumbprint is {thumb}")
            };
            ok(
                name,
                format!(
                    "{path} ({}) signs, and verifies against our JWKS under kid {} ({kid_note})",
                    key.alg().name(),
                    key.kid()
                ),
            )
        }
        Ok(_) => fail(
            name,
            format!("{path}: the signed header does not carry kid {}", key.kid()),
            "report this as a bug in np-agent",
        ),
        Err(e) => fail(
            name,
            format!("{path}: signing and verifying failed: {e}"),
            format!(
                "make a new key with 'np-agent keygen --alg {} --out {path}.new' and move it into place",
                cfg.signing_alg.name()
            ),
        ),
    }
}
