//! Our signing key: it loads, signs, and verifies against the JWKS we
//! publish under its `kid`.

use std::path::Path;

use super::{Check, fail, ok};
use crate::config::Config;
use crate::jose::{self, Alg, Jwks, SigningKey};

const NAME: &str = "signing";

/// The signing key loads, signs, and verifies against the JWKS we publish
/// under its `kid`.
pub(super) fn signing_check(cfg: &Config) -> Check {
    match crate::daemon::load_signing_key(cfg) {
        Ok(key) => key_verdict(&cfg.signing_key, cfg.signing_alg, &key),
        Err(e) => load_failure(&cfg.signing_key, cfg.signing_alg, e),
    }
}

/// The key at `path` (of `NP_SIGNING_ALG=alg`) did not load: `error` says why.
fn load_failure(path: &Path, alg: Alg, error: String) -> Check {
    fail(
        NAME,
        error,
        format!(
            "NP_SIGNING_KEY must be an unencrypted PKCS#8 PEM key of type NP_SIGNING_ALG={0}; \
             make one with 'np-agent keygen --alg {0} --out {1}.new', move it into place, \
             chown it to np-agent, and give partners the new 'np-agent jwks'",
            alg.name(),
            path.display()
        ),
    )
}

/// Signs a token with the loaded key and verifies it against a JWKS holding
/// only the key's public half, as a partner would: the verifying key must be
/// found under the key's `kid`.
fn key_verdict(path: &Path, alg: Alg, key: &SigningKey) -> Check {
    let path = path.display();
    let verified = Jwks::new(vec![key.public_jwk()])
        .map_err(|e| e.to_string())
        .and_then(|set| {
            let jwt = key
                .sign_jwt(br#"{"iss":"np-agent doctor"}"#)
                .map_err(|e| e.to_string())?;
            jose::verify_compact(&jwt, &set, &[key.alg()]).map_err(|e| e.to_string())
        });
    match verified {
        Ok(v) if v.kid() == Some(key.kid()) => ok(
            NAME,
            format!(
                "{path} ({}) signs, and verifies against our JWKS under kid {} ({})",
                key.alg().name(),
                key.kid(),
                kid_note(key.kid(), &key.public_jwk().thumbprint())
            ),
        ),
        Ok(_) => fail(
            NAME,
            format!("{path}: the signed header does not carry kid {}", key.kid()),
            "report this as a bug in np-agent",
        ),
        Err(e) => fail(
            NAME,
            format!("{path}: signing and verifying failed: {e}"),
            format!(
                "make a new key with 'np-agent keygen --alg {} --out {path}.new' and move it into place",
                alg.name()
            ),
        ),
    }
}

/// Where the `kid` comes from: the key's RFC 7638 thumbprint, or
/// `NP_SIGNING_KID`.
fn kid_note(kid: &str, thumbprint: &str) -> String {
    if kid == thumbprint {
        "the RFC 7638 thumbprint".to_string()
    } else {
        format!("set by NP_SIGNING_KID; the thumbprint is {thumbprint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn key(alg: Alg, kid: Option<&str>) -> SigningKey {
        let pem = jose::generate_pkcs8_pem(alg).unwrap();
        SigningKey::from_pkcs8_pem(&pem, alg, kid.map(String::from)).unwrap()
    }

    #[test]
    fn a_key_that_signs_is_ok_under_its_thumbprint() {
        let k = key(Alg::Es256, None);
        let c = key_verdict(Path::new("/etc/np-agent/signing.pem"), Alg::Es256, &k);
        assert_eq!(
            c.to_string(),
            format!(
                "OK   signing: /etc/np-agent/signing.pem (ES256) signs, and verifies against our JWKS \
                 under kid {} (the RFC 7638 thumbprint)",
                k.public_jwk().thumbprint()
            )
        );
    }

    #[test]
    fn a_configured_kid_is_named_with_the_thumbprint() {
        let k = key(Alg::Es384, Some("signing-2026"));
        let c = key_verdict(Path::new("/k.pem"), Alg::Es384, &k);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(
            c.message.ends_with(&format!(
                "under kid signing-2026 (set by NP_SIGNING_KID; the thumbprint is {})",
                k.public_jwk().thumbprint()
            )),
            "{c}"
        );
    }

    #[test]
    fn kid_notes() {
        assert_eq!(kid_note("abc", "abc"), "the RFC 7638 thumbprint");
        assert_eq!(
            kid_note("mine", "abc"),
            "set by NP_SIGNING_KID; the thumbprint is abc"
        );
    }

    #[test]
    fn a_key_that_does_not_load_gets_the_keygen_command() {
        let c = load_failure(
            Path::new("/etc/np-agent/signing.pem"),
            Alg::Ps256,
            "NP_SIGNING_KEY: /etc/np-agent/signing.pem: no key".into(),
        );
        assert_eq!(
            (c.status, c.message.as_str()),
            (
                Status::Fail,
                "NP_SIGNING_KEY: /etc/np-agent/signing.pem: no key"
            )
        );
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "NP_SIGNING_KEY must be an unencrypted PKCS#8 PEM key of type NP_SIGNING_ALG=PS256; \
                 make one with 'np-agent keygen --alg PS256 --out /etc/np-agent/signing.pem.new', \
                 move it into place, chown it to np-agent, and give partners the new 'np-agent jwks'"
            )
        );
    }
}
