//! Tokens for the PRS and the NVI: the `client_credentials` form over mutual
//! TLS that the OAuth server in front of them takes (spec vad-prs-nvi.md
//! section 0), cached until shortly before they end.
//!
//! | field | value |
//! |---|---|
//! | `grant_type` | `client_credentials` |
//! | `scope` | the partner's `SCOPE` |
//! | `target_audience` | the partner's `AUDIENCE` |
//! | `organization_id` | towards the PRS `oin:<NP_ORG_OIN>`; towards the NVI our bare URA |
//! | `source_id` | `NP_SOURCE_ID` as configured, when set |
//!
//! The token is bound to our client certificate (RFC 8705 `cnf.x5t#S256`);
//! it works because every call to the service goes over the same
//! certificate. The form and the reading of the answer are pure
//! ([`form`], [`read_answer`]); [`ServiceTokens`] does the `POST` and keeps
//! the tokens. Tokens never reach a log: [`AccessToken`]'s `Debug` hides
//! them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::config::{Config, Partner, PartnerKind};
use crate::http::partners::PartnerHttp;
pub use crate::oauth::client::{AccessToken, TokenClientError};
use crate::oauth::messages;
use crate::util::percent;

/// A token is used until this long before it ends.
pub const MARGIN_SECS: i64 = 30;
/// The lifetime assumed when the answer names none (the MinVWS clients
/// assume ten minutes).
pub const DEFAULT_LIFETIME_SECS: i64 = 600;
/// Largest token we accept.
const MAX_TOKEN: usize = 8 * 1024;

/// What one token request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub scope: String,
    pub audience: String,
    /// `oin:<OIN>` (PRS) or the bare URA (NVI).
    pub organization_id: String,
    pub source_id: Option<String>,
}

impl TokenRequest {
    /// The request for a `prs` or `nvi` partner; `None` for another kind,
    /// or for a PRS without `NP_ORG_OIN` (the configuration refuses that).
    pub fn for_partner(config: &Config, partner: &Partner) -> Option<TokenRequest> {
        let (service, organization_id) = match &partner.kind {
            PartnerKind::Prs(l) => (l, format!("oin:{}", config.org_oin.as_deref()?)),
            PartnerKind::Nvi(n) => (&n.service, config.org_ura.clone()),
            _ => return None,
        };
        Some(TokenRequest {
            scope: service.scope.clone(),
            audience: service.audience.clone(),
            organization_id,
            source_id: config.source_id.as_ref().map(|o| o.as_str().to_string()),
        })
    }
}

/// The form body (`application/x-www-form-urlencoded`).
pub fn form(req: &TokenRequest) -> String {
    let mut body = format!(
        "grant_type=client_credentials&scope={}&target_audience={}&organization_id={}",
        percent::encode_form(&req.scope),
        percent::encode_form(&req.audience),
        percent::encode_form(&req.organization_id)
    );
    if let Some(source) = &req.source_id {
        body.push_str("&source_id=");
        body.push_str(&percent::encode_form(source));
    }
    body
}

/// What the token endpoint's answer (`status`, `body`) means at `now`.
/// `token_type` may be absent (the MinVWS server's examples leave it out)
/// but when present must be `Bearer`.
pub fn read_answer(
    partner: &str,
    endpoint: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<String>,
    now: i64,
) -> Result<AccessToken, TokenClientError> {
    if status != 200 {
        let e = messages::parse_error_body(body);
        return Err(TokenClientError::Refused {
            partner: partner.to_string(),
            endpoint: endpoint.to_string(),
            status,
            error: e.error,
            description: e.description,
            retry_after,
        });
    }
    let bad = |detail: &str| TokenClientError::BadResponse {
        partner: partner.to_string(),
        endpoint: endpoint.to_string(),
        detail: detail.to_string(),
    };
    if body.len() > 64 * 1024 {
        return Err(bad("answer larger than 64 KiB"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not a JSON object"))?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    if token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("access_token has characters a header cannot carry"));
    }
    match v.get("token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(bad("token_type is not Bearer")),
    }
    let lifetime = match v.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_LIFETIME_SECS,
        Some(x) => match x.as_f64() {
            Some(n) if n.is_finite() && (0.0..=31_536_000.0).contains(&n) => n as i64,
            _ => return Err(bad("expires_in out of range")),
        },
    };
    Ok(AccessToken {
        token: token.to_string(),
        use_until: now + (lifetime - MARGIN_SECS).max(0),
    })
}

/// The tokens of our `prs` and `nvi` partners, one per partner and request
/// (a reload that changes `TOKEN_URL`, `SCOPE` or `AUDIENCE` asks anew),
/// shared by the workers and kept across attempts and reloads.
#[derive(Default)]
pub struct ServiceTokens {
    cache: Mutex<HashMap<String, AccessToken>>,
}

impl ServiceTokens {
    pub fn new() -> ServiceTokens {
        ServiceTokens::default()
    }

    /// A token for `partner`, the cached one while it is good.
    pub fn token(
        &self,
        config: &Config,
        partner: &Partner,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Result<AccessToken, TokenClientError> {
        let key = cache_key(partner);
        if let Some(t) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if now < t.use_until {
                return Ok(t.clone());
            }
        }
        let fresh = request(config, partner, http, now)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, fresh.clone());
        log::debug!(
            "event=nvi.token_issued partner={} use_for_s={}",
            partner.name,
            fresh.use_until - now
        );
        Ok(fresh)
    }

    /// Forgets `partner`'s tokens (it answered 401 with one).
    pub fn invalidate(&self, partner: &str) {
        let prefix = format!("{partner}|");
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// `<name>|<token url>|<scope>|<audience>`.
fn cache_key(partner: &Partner) -> String {
    match partner.localisation() {
        Some(s) => format!(
            "{}|{}|{}|{}",
            partner.name, s.token_url, s.scope, s.audience
        ),
        None => format!("{}|", partner.name),
    }
}

/// One token request to `partner`'s `TOKEN_URL`, over mutual TLS.
pub fn request(
    config: &Config,
    partner: &Partner,
    http: &dyn PartnerHttp,
    now: i64,
) -> Result<AccessToken, TokenClientError> {
    let local = |detail: &str| TokenClientError::Local {
        partner: partner.name.clone(),
        detail: detail.to_string(),
    };
    let service = partner
        .localisation()
        .ok_or_else(|| local("not a prs or nvi partner"))?;
    let req = TokenRequest::for_partner(config, partner)
        .ok_or_else(|| local("NP_ORG_OIN is not set: no organization_id towards the PRS"))?;
    let endpoint = &service.token_url;
    let reply = http
        .send(
            &partner.name,
            "POST",
            endpoint,
            "application/x-www-form-urlencoded",
            form(&req).as_bytes(),
            &[("Accept", "application/json")],
        )
        .map_err(|detail| TokenClientError::Transport {
            partner: partner.name.clone(),
            endpoint: endpoint.clone(),
            detail,
        })?;
    read_answer(
        &partner.name,
        endpoint,
        reply.status,
        &reply.body,
        reply.retry_after,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> TokenRequest {
        TokenRequest {
            scope: "nvi:create nvi:read".into(),
            audience: "https://nvi.example/".into(),
            organization_id: "87654321".into(),
            source_id: Some("2.16.528.1.1007.3.3.87654321.1".into()),
        }
    }

    #[test]
    fn the_form_names_every_field_encoded() {
        let body = form(&req());
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=nvi%3Acreate+nvi%3Aread&target_audience=https%3A%2F%2Fnvi.example%2F&organization_id=87654321&source_id=2.16.528.1.1007.3.3.87654321.1"
        );
        let pairs: Vec<(String, String)> = percent::split_pairs(&body)
            .map(|(k, v)| (k.to_string(), percent::decode_form(v).unwrap()))
            .collect();
        assert!(pairs.contains(&("scope".into(), "nvi:create nvi:read".into())));
        let mut without = req();
        without.source_id = None;
        assert!(!form(&without).contains("source_id"));
    }

    #[test]
    fn an_answer_is_kept_until_shortly_before_it_ends() {
        let ok =
            |body: &str| read_answer("nvi", "https://t/token", 200, body.as_bytes(), None, 1000);
        let t = ok(r#"{"access_token":"abc","token_type":"Bearer","expires_in":300}"#).unwrap();
        assert_eq!(t.token, "abc");
        assert_eq!(t.use_until, 1000 + 300 - MARGIN_SECS);
        let t = ok(r#"{"access_token":"abc","scope":"nvi:create"}"#).unwrap();
        assert_eq!(t.use_until, 1000 + DEFAULT_LIFETIME_SECS - MARGIN_SECS);
        let t = ok(r#"{"access_token":"abc","expires_in":10}"#).unwrap();
        assert_eq!(
            t.use_until, 1000,
            "a short token is used at once, not later"
        );
        assert!(ok(r#"{"access_token":"abc","token_type":"DPoP"}"#).is_err());
        assert!(ok(r#"{"access_token":"a b"}"#).is_err());
        assert!(ok(r#"{"token_type":"Bearer"}"#).is_err());
        assert!(ok(r#"{"access_token":"abc","expires_in":-1}"#).is_err());
        assert!(ok("not json").is_err());
        assert!(format!("{t:?}").contains("***") && !format!("{t:?}").contains("abc"));
    }

    #[test]
    fn a_refusal_names_status_and_error() {
        let e = read_answer(
            "prs",
            "https://t/token",
            400,
            br#"{"error":"invalid_scope","error_description":"no"}"#,
            None,
            0,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "partner prs: token endpoint https://t/token answered 400 invalid_scope (p:no)"
        );
        assert!(!e.is_transient());
        let e = read_answer("prs", "https://t/token", 503, b"", Some("5".into()), 0).unwrap_err();
        assert!(e.is_transient());
    }
}
