//! Getting tokens from partners (interactions 1 and 3): discovery, our two
//! assertions, the form POST, and a bounded parse of the answer.
//!
//! I/O goes through [`PartnerHttp`] (ureq over our mTLS configuration in
//! production), so this module holds only the protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::assertion::Outgoing;
use crate::assertion::claims::OUR_LIFETIME_SECS;
use crate::config::{Config, TwiinPartner};
pub use crate::http::partners::{HttpReply, PartnerHttp};
use crate::ids::OrgId;
use crate::ids::{self, Bsn};
use crate::jose::{Jwks, SigningKey};
use crate::oauth::decide::{CLIENT_ASSERTION_TYPE, GRANT_JWT_BEARER};
use crate::oauth::keycache::{self, Fetch, Fetched};
use crate::oauth::messages::{self, Discovery};
use crate::util::{percent, random, url};

/// Why no token could be had. Display names the partner, the endpoint, the
/// status and the OAuth error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenClientError {
    /// Discovery failed or gave nothing usable.
    Discovery {
        partner: String,
        url: String,
        detail: String,
    },
    /// The token endpoint could not be reached.
    Transport {
        partner: String,
        endpoint: String,
        detail: String,
    },
    /// The token endpoint answered with an error.
    Refused {
        partner: String,
        endpoint: String,
        status: u16,
        error: Option<String>,
        description: Option<String>,
        retry_after: Option<String>,
    },
    /// The answer was 200 but not a usable token response.
    BadResponse {
        partner: String,
        endpoint: String,
        detail: String,
    },
    /// We could not build or sign our assertions.
    Local { partner: String, detail: String },
}

/// The error codes of RFC 6749 §5.2.
const OAUTH_ERRORS: [&str; 6] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

impl std::fmt::Display for TokenClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenClientError::Discovery {
                partner,
                url,
                detail,
            } => {
                write!(f, "partner {partner}: discovery at {url} failed: {detail}")
            }
            TokenClientError::Transport {
                partner,
                endpoint,
                detail,
            } => {
                write!(
                    f,
                    "partner {partner}: token endpoint {endpoint} unreachable: {detail}"
                )
            }
            TokenClientError::Refused {
                partner,
                endpoint,
                status,
                error,
                description,
                ..
            } => {
                write!(
                    f,
                    "partner {partner}: token endpoint {endpoint} answered {status}"
                )?;
                // The partner's words reach logs: an RFC 6749 code as it
                // is, anything else marked and reduced.
                match error.as_deref() {
                    Some(e) if OAUTH_ERRORS.contains(&e) => write!(f, " {e}")?,
                    Some(e) => write!(f, " {}", crate::ops::logging::P(e))?,
                    None => {}
                }
                if let Some(d) = description {
                    write!(f, " ({})", crate::ops::logging::P(d))?;
                }
                Ok(())
            }
            TokenClientError::BadResponse {
                partner,
                endpoint,
                detail,
            } => {
                write!(
                    f,
                    "partner {partner}: token endpoint {endpoint} gave an unusable response: {detail}"
                )
            }
            TokenClientError::Local { partner, detail } => write!(f, "partner {partner}: {detail}"),
        }
    }
}

impl std::error::Error for TokenClientError {}

impl TokenClientError {
    /// The OAuth error code, when the partner sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenClientError::Refused { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    /// True for failures worth retrying later (transport, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            TokenClientError::Transport { .. } | TokenClientError::Discovery { .. } => true,
            TokenClientError::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

/// What the token is for: the claims of the authorization assertion differ.
#[derive(Debug, Clone)]
pub enum Purpose<'a> {
    /// Interaction 1: we are the sender and notify the partner.
    Notify { patient: Option<&'a Bsn> },
    /// Interaction 3: we pull from the partner with its authorization base.
    Pull {
        authorization_base: &'a str,
        /// Task.owner, or our default organisation when the Task had none.
        requesting: &'a OrgId,
        /// Task.requester.onBehalfOf: the sending organisation (left out
        /// towards a partner addressed as a system).
        authorizer: Option<&'a OrgId>,
        patient: Option<&'a Bsn>,
    },
}

/// A token from a partner.
#[derive(Clone)]
pub struct AccessToken {
    pub token: String,
    /// Unix seconds after which we no longer use it (30 s before its end).
    pub use_until: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"***")
            .field("use_until", &self.use_until)
            .finish()
    }
}

/// How long a discovery document is kept when the partner sends no max-age (spec §2.2).
pub const DISCOVERY_MAX_AGE: i64 = 4 * 3_600;

/// Tokens from partners: discovery cache, assertions, token cache.
pub struct TokenClient {
    config: Arc<Config>,
    signing: Arc<SigningKey>,
    http: Arc<dyn PartnerHttp>,
    discovery: Mutex<HashMap<String, (Discovery, i64)>>,
    tokens: Mutex<HashMap<(String, String), AccessToken>>,
}

impl TokenClient {
    pub fn new(
        config: Arc<Config>,
        signing: Arc<SigningKey>,
        http: Arc<dyn PartnerHttp>,
    ) -> TokenClient {
        TokenClient {
            config,
            signing,
            http,
            discovery: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A token for `purpose` at `partner`, reused until 30 s before it ends.
    pub fn token(
        &self,
        partner: TwiinPartner<'_>,
        purpose: &Purpose<'_>,
        now: i64,
    ) -> Result<AccessToken, TokenClientError> {
        let key = (partner.name.to_string(), cache_key(purpose));
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if now < t.use_until {
                return Ok(t.clone());
            }
        }
        let fresh = self.request(partner, purpose, now)?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, fresh.clone());
        Ok(fresh)
    }

    /// Forgets a cached token (after the partner answered 401 with it).
    pub fn invalidate(&self, partner: TwiinPartner<'_>, purpose: &Purpose<'_>) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(partner.name.to_string(), cache_key(purpose)));
    }

    /// The partner's token endpoint: configured, or discovered.
    pub fn token_endpoint(
        &self,
        partner: TwiinPartner<'_>,
        now: i64,
    ) -> Result<String, TokenClientError> {
        if let Some(url) = &partner.token_url {
            return Ok(url.clone());
        }
        Ok(self.discover(partner, now)?.token_endpoint)
    }

    /// The partner's discovery document (cached per max-age, default 4 h).
    pub fn discover(
        &self,
        partner: TwiinPartner<'_>,
        now: i64,
    ) -> Result<Discovery, TokenClientError> {
        if let Some((d, until)) = self
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(partner.name)
        {
            if now < *until {
                return Ok(d.clone());
            }
        }
        let url = discovery_url(partner);
        let err = |detail: String| TokenClientError::Discovery {
            partner: partner.name.to_string(),
            url: url.clone(),
            detail,
        };
        let reply = self
            .http
            .get(partner.name, &url, &[("Accept", "application/json")])
            .map_err(err)?;
        if reply.status != 200 {
            return Err(err(format!("answered {}", reply.status)));
        }
        let d = messages::parse_discovery(&reply.body).map_err(|e| err(e.to_string()))?;
        let ttl = keycache::max_age(reply.cache_control.as_deref())
            .unwrap_or(DISCOVERY_MAX_AGE)
            .clamp(keycache::MIN_MAX_AGE, keycache::MAX_MAX_AGE);
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partner.name.to_string(), (d.clone(), now + ttl));
        Ok(d)
    }

    fn request(
        &self,
        partner: TwiinPartner<'_>,
        purpose: &Purpose<'_>,
        now: i64,
    ) -> Result<AccessToken, TokenClientError> {
        let endpoint = self.token_endpoint(partner, now)?;
        let (client, authz) = self.assertions(partner, purpose, &endpoint, now)?;
        let body = format!(
            "grant_type={}&assertion={}&client_assertion_type={}&client_assertion={}",
            percent::encode_form(GRANT_JWT_BEARER),
            percent::encode_form(&authz),
            percent::encode_form(CLIENT_ASSERTION_TYPE),
            percent::encode_form(&client)
        );
        let reply = self
            .http
            .send(
                partner.name,
                "POST",
                &endpoint,
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                &[("Accept", "application/json")],
            )
            .map_err(|detail| TokenClientError::Transport {
                partner: partner.name.to_string(),
                endpoint: endpoint.clone(),
                detail,
            })?;
        if reply.status != 200 {
            let e = messages::parse_error_body(&reply.body);
            return Err(TokenClientError::Refused {
                partner: partner.name.to_string(),
                endpoint,
                status: reply.status,
                error: e.error,
                description: e.description,
                retry_after: reply.retry_after,
            });
        }
        let t = messages::parse_token_response(&reply.body).map_err(|e| {
            TokenClientError::BadResponse {
                partner: partner.name.to_string(),
                endpoint: endpoint.clone(),
                detail: e.to_string(),
            }
        })?;
        let lifetime = t.expires_in.unwrap_or(300);
        Ok(AccessToken {
            token: t.access_token,
            use_until: now + (lifetime - 30).max(0),
        })
    }

    /// Our client assertion and authorization assertion for this request
    /// (DESIGN.md "Our assertions"; spec §3.3).
    pub fn assertions(
        &self,
        partner: TwiinPartner<'_>,
        purpose: &Purpose<'_>,
        audience: &str,
        now: i64,
    ) -> Result<(String, String), TokenClientError> {
        let local = |detail: String| TokenClientError::Local {
            partner: partner.name.to_string(),
            detail,
        };
        let iss = self.config.public_url.as_str();
        let exp = now + OUR_LIFETIME_SECS;
        let jti1 = random::uuid_v4().map_err(|e| local(e.to_string()))?;
        let jti2 = random::uuid_v4().map_err(|e| local(e.to_string()))?;
        let client = Outgoing {
            iss,
            sub: &partner.our_client_id,
            aud: audience,
            iat: now,
            exp,
            jti: &jti1,
            authorization_base: None,
            authorizer: None,
            patient: None,
        };
        let our_org = self
            .config
            .our_org(partner.id_scheme)
            .ok_or_else(|| local("no organisation id of ours in the partner's id scheme".into()))?;
        let (sub, authorizer, base, patient) = match purpose {
            Purpose::Notify { patient } => (
                ids::org_claim(&our_org),
                Some(ids::org_claim(&partner.org)),
                None,
                *patient,
            ),
            Purpose::Pull {
                authorization_base,
                requesting,
                authorizer,
                patient,
            } => (
                ids::org_claim(requesting),
                authorizer.map(ids::org_claim),
                Some(*authorization_base),
                *patient,
            ),
        };
        // A partner addressed as a system gets no authorizer, in either flow.
        let authorizer = authorizer.filter(|_| !partner.address_system);
        let patient_claim = patient.filter(|_| partner.send_bsn).map(Bsn::urn_oid);
        let authz = Outgoing {
            iss,
            sub: &sub,
            aud: audience,
            iat: now,
            exp,
            jti: &jti2,
            authorization_base: base,
            authorizer: authorizer.as_deref(),
            patient: patient_claim.as_deref(),
        };
        let sign = |o: &Outgoing<'_>| -> Result<String, TokenClientError> {
            let json = o.to_json().map_err(|e| local(e.to_string()))?;
            self.signing
                .sign_jwt(&json)
                .map_err(|e| local(format!("signing failed: {e}")))
        };
        Ok((sign(&client)?, sign(&authz)?))
    }
}

fn cache_key(purpose: &Purpose<'_>) -> String {
    match purpose {
        Purpose::Notify { patient } => {
            format!("notify:{}", patient.map(Bsn::as_str).unwrap_or("-"))
        }
        Purpose::Pull {
            authorization_base, ..
        } => format!("pull:{authorization_base}"),
    }
}

/// `<FHIR base>/.well-known/smart-configuration`.
pub fn discovery_url(partner: TwiinPartner<'_>) -> String {
    url::join(&partner.fhir_base, ".well-known/smart-configuration")
}

/// Fetches partners' JWKS for the [`keycache::KeyCache`]: the configured
/// `JWKS_URL`, else `jwks_uri` from discovery.
pub struct JwksFetcher {
    pub config: Arc<Config>,
    pub http: Arc<dyn PartnerHttp>,
    pub tokens: Arc<TokenClient>,
}

impl Fetch<Jwks> for JwksFetcher {
    fn fetch(&self, partner_name: &str) -> Result<Fetched<Jwks>, String> {
        let partner = self
            .config
            .partner(partner_name)
            .ok_or_else(|| format!("partner {partner_name} is not configured"))?;
        let configured = partner
            .assertions()
            .ok_or_else(|| {
                format!(
                    "partner {partner_name}: a {} partner signs no assertions",
                    partner.kind_name()
                )
            })?
            .jwks_url
            .clone();
        let url = match (configured, partner.as_twiin()) {
            (Some(u), _) => u,
            (None, Some(twiin)) => self
                .tokens
                .discover(twiin, crate::util::time::now_unix())
                .map_err(|e| e.to_string())?
                .jwks_uri
                .ok_or_else(|| format!("partner {partner_name}: no JWKS_URL configured and discovery has no jwks_uri"))?,
            (None, None) => return Err(format!("partner {partner_name}: no JWKS_URL configured")),
        };
        let reply = self
            .http
            .get(partner_name, &url, &[("Accept", "application/json")])
            .map_err(|e| format!("partner {partner_name}: JWKS {url}: {e}"))?;
        if reply.status != 200 {
            return Err(format!(
                "partner {partner_name}: JWKS {url} answered {}",
                reply.status
            ));
        }
        let keys = Jwks::parse(&reply.body)
            .map_err(|e| format!("partner {partner_name}: JWKS {url}: {e}"))?;
        Ok(Fetched {
            keys,
            max_age: keycache::max_age(reply.cache_control.as_deref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vars;
    use crate::ids::IdScheme;

    #[test]
    fn a_refusal_names_the_partners_words_marked_and_reduced() {
        let refused = |error: &str, description: Option<&str>| {
            TokenClientError::Refused {
                partner: "vip".into(),
                endpoint: "https://vip.example/token".into(),
                status: 400,
                error: Some(error.into()),
                description: description.map(str::to_string),
                retry_after: None,
            }
            .to_string()
        };
        assert_eq!(
            refused("invalid_grant", Some("base 999999151 level=error event=x")),
            "partner vip: token endpoint https://vip.example/token answered 400 invalid_grant \
             (p:base_#_level_error_event_x)"
        );
        assert_eq!(
            refused("x level=error", None),
            "partner vip: token endpoint https://vip.example/token answered 400 p:x_level_error"
        );
    }

    struct NoNetwork;

    impl PartnerHttp for NoNetwork {
        fn get(&self, _: &str, url: &str, _: &[(&str, &str)]) -> Result<HttpReply, String> {
            Err(format!("no network in this test ({url})"))
        }
        fn send(
            &self,
            _: &str,
            _: &str,
            url: &str,
            _: &str,
            _: &[u8],
            _: &[(&str, &str)],
        ) -> Result<HttpReply, String> {
            Err(format!("no network in this test ({url})"))
        }
    }

    fn config(dir: &std::path::Path) -> Config {
        use std::os::unix::fs::PermissionsExt;
        for (name, mode) in [
            ("c.pem", 0o644),
            ("k.pem", 0o600),
            ("t.pem", 0o644),
            ("s.pem", 0o600),
        ] {
            std::fs::write(dir.join(name), "x").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let mut v = Vars::new();
        for (k, val) in [
            ("NP_PUBLIC_URL", "https://np.hospital-a.example".to_string()),
            ("NP_TLS_CERT", dir.join("c.pem").display().to_string()),
            ("NP_TLS_KEY", dir.join("k.pem").display().to_string()),
            ("NP_TLS_TRUST", dir.join("t.pem").display().to_string()),
            ("NP_SIGNING_KEY", dir.join("s.pem").display().to_string()),
            ("NP_ORG_URA", "12345678".into()),
            ("NP_ORG_AGB", "01234567".into()),
            ("NP_PARTNERS", "vip".into()),
            (
                "NP_PARTNER_VIP_FHIR_BASE",
                "https://fhir.test-datakluis.shared.topicuszorg.nl/fhir/stu3".into(),
            ),
            ("NP_PARTNER_VIP_ORG", "agb:44446666".into()),
            ("NP_PARTNER_VIP_ID_SCHEME", "agb".into()),
            ("NP_PARTNER_VIP_CERT", "serial:00000001234567890000".into()),
            ("NP_PARTNER_VIP_OUR_CLIENT_ID", "hospital-a".into()),
        ] {
            v.insert(k.into(), (val, None));
        }
        crate::config::from_vars(&v).unwrap()
    }

    fn claims(jwt: &str) -> serde_json::Value {
        let p = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&crate::util::b64::decode(p).unwrap()).unwrap()
    }

    #[test]
    fn viplive_style_agb_claims_and_system_addressing() {
        let dir = std::env::temp_dir().join(format!("np-tc-{}", random::uuid_v4().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = config(&dir);
        let pem = crate::jose::generate_pkcs8_pem(crate::jose::Alg::Es256).unwrap();
        let key =
            Arc::new(SigningKey::from_pkcs8_pem(&pem, crate::jose::Alg::Es256, None).unwrap());
        let bsn = Bsn::parse("999999151").unwrap();
        let aud = "https://fhir.test-datakluis.shared.topicuszorg.nl/token";
        let client = TokenClient::new(Arc::new(cfg.clone()), key.clone(), Arc::new(NoNetwork));
        let vip = cfg.partners[0].clone();
        let vip = vip.as_twiin().unwrap();
        assert_eq!(vip.id_scheme, IdScheme::Agb);

        // Notify, AGB scheme: bare AGB OIDs; no patient without SEND_BSN.
        let (c, a) = client
            .assertions(
                vip,
                &Purpose::Notify {
                    patient: Some(&bsn),
                },
                aud,
                1_000,
            )
            .unwrap();
        let (c, a) = (claims(&c), claims(&a));
        assert_eq!(c["iss"], "https://np.hospital-a.example");
        assert_eq!(c["sub"], "hospital-a");
        assert_eq!(a["sub"], "2.16.840.1.113883.2.4.6.1.01234567");
        assert_eq!(a["authorizer"], "2.16.840.1.113883.2.4.6.1.44446666");
        assert!(a.get("patient").is_none(), "SEND_BSN is false");
        assert_eq!(a["exp"].as_i64().unwrap() - a["iat"].as_i64().unwrap(), 60);

        // Pull: the base played back, requesting = Task owner, authorizer = sender.
        let owner = OrgId::Agb("01234567".into());
        let sender = OrgId::Agb("44446666".into());
        let purpose = Purpose::Pull {
            authorization_base: "5754d12a-bfb0-4e3f-847a-9460b45f3a92",
            requesting: &owner,
            authorizer: Some(&sender),
            patient: Some(&bsn),
        };
        let (_, a) = client.assertions(vip, &purpose, aud, 1_000).unwrap();
        let a = claims(&a);
        assert_eq!(
            a["authorization_base"],
            "5754d12a-bfb0-4e3f-847a-9460b45f3a92"
        );
        assert_eq!(a["sub"], "2.16.840.1.113883.2.4.6.1.01234567");
        assert_eq!(a["authorizer"], "2.16.840.1.113883.2.4.6.1.44446666");

        // The partner addressed as a system, BSN allowed: no authorizer, patient present.
        if let crate::config::PartnerKind::Twiin(t) = &mut cfg.partners[0].kind {
            t.address_system = true;
            t.send_bsn = true;
        }
        let client = TokenClient::new(Arc::new(cfg.clone()), key, Arc::new(NoNetwork));
        let (_, a) = client
            .assertions(
                cfg.partners[0].as_twiin().unwrap(),
                &Purpose::Notify {
                    patient: Some(&bsn),
                },
                aud,
                1_000,
            )
            .unwrap();
        let a = claims(&a);
        assert!(a.get("authorizer").is_none());
        assert_eq!(a["patient"], "urn:oid:2.16.840.1.113883.2.4.6.3.999999151");

        // Without a network, discovery fails with a message naming the partner and URL.
        let err = client
            .token(
                cfg.partners[0].as_twiin().unwrap(),
                &Purpose::Notify { patient: None },
                1_000,
            )
            .unwrap_err();
        assert!(err.to_string().starts_with(
            "partner vip: discovery at https://fhir.test-datakluis.shared.topicuszorg.nl/fhir/stu3/.well-known/smart-configuration failed"
        ), "{err}");
        assert!(err.is_transient());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A partner with `ADDRESS_SYSTEM=true` never gets `authorizer`: not in
    /// the notify assertion, and not in the pull assertion, where the Task
    /// names a sending organisation that would otherwise be the authorizer.
    #[test]
    fn system_addressed_partner_gets_no_authorizer_in_either_flow() {
        let dir = std::env::temp_dir().join(format!("np-tc-{}", random::uuid_v4().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = config(&dir);
        let pem = crate::jose::generate_pkcs8_pem(crate::jose::Alg::Es256).unwrap();
        let key =
            Arc::new(SigningKey::from_pkcs8_pem(&pem, crate::jose::Alg::Es256, None).unwrap());
        let client = TokenClient::new(Arc::new(cfg.clone()), key, Arc::new(NoNetwork));
        let aud = "https://fhir.test-datakluis.shared.topicuszorg.nl/token";
        let bsn = Bsn::parse("999999151").unwrap();
        let owner = OrgId::Agb("01234567".into());
        let sender = OrgId::Agb("44446666".into());
        let notify = Purpose::Notify {
            patient: Some(&bsn),
        };
        let pull = Purpose::Pull {
            authorization_base: "5754d12a-bfb0-4e3f-847a-9460b45f3a92",
            requesting: &owner,
            authorizer: Some(&sender),
            patient: Some(&bsn),
        };
        let authorizer = |partner: &crate::config::Partner, purpose: &Purpose<'_>| {
            let partner = partner.as_twiin().unwrap();
            let (_, a) = client.assertions(partner, purpose, aud, 1_000).unwrap();
            claims(&a).get("authorizer").cloned()
        };
        let mut vip = cfg.partner("vip").unwrap().clone();
        let theirs = Some(serde_json::json!("2.16.840.1.113883.2.4.6.1.44446666"));
        assert_eq!(
            authorizer(&vip, &notify),
            theirs,
            "notify, addressed as an org"
        );
        assert_eq!(authorizer(&vip, &pull), theirs, "pull, addressed as an org");
        if let crate::config::PartnerKind::Twiin(t) = &mut vip.kind {
            t.address_system = true;
        }
        assert_eq!(
            authorizer(&vip, &notify),
            None,
            "notify, addressed as a system"
        );
        assert_eq!(authorizer(&vip, &pull), None, "pull, addressed as a system");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
