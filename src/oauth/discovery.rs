//! Our `.well-known/smart-configuration` (spec §2.3, DESIGN.md): where the
//! token endpoint and our keys are, and what the endpoint accepts.

use crate::config::Config;
use crate::oauth::decide::GrantType;

/// The discovery document, served at both well-known paths.
pub fn document(cfg: &Config) -> String {
    let grants: Vec<&str> = GrantType::SERVED.iter().map(|g| g.name()).collect();
    let algs: Vec<&str> = crate::jose::DEFAULT_ACCEPTED
        .iter()
        .map(|a| a.name())
        .collect();
    serde_json::json!({
        "issuer": cfg.public_url,
        "token_endpoint": cfg.token_endpoint(),
        "token_url": cfg.token_endpoint(),
        "jwks_uri": cfg.jwks_uri(),
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        // RFC 8705 §3.3: every token is bound to the client certificate.
        "tls_client_certificate_bound_access_tokens": true,
        "capabilities": [],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_the_endpoint_keys_and_what_is_accepted() {
        let cfg = crate::config::tests_support::config();
        let d: serde_json::Value = serde_json::from_str(&document(&cfg)).unwrap();
        let endpoint = format!("{}/oauth/token", cfg.public_url);
        assert_eq!(d["token_endpoint"], endpoint.as_str());
        assert_eq!(d["token_url"], endpoint.as_str());
        assert_eq!(
            d["jwks_uri"],
            format!("{}/.well-known/jwks.json", cfg.public_url).as_str()
        );
        assert_eq!(
            d["grant_types_supported"],
            serde_json::json!([
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "client_credentials"
            ])
        );
        assert_eq!(
            d["token_endpoint_auth_signing_alg_values_supported"],
            serde_json::json!(["PS256", "PS384", "PS512", "ES256", "ES384", "ES512"])
        );
        assert_eq!(d["tls_client_certificate_bound_access_tokens"], true);
    }
}
