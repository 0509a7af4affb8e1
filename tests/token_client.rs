//! Our token client (the library, in process) against a real `np-agent run`
//! process: discovery, both assertions, the form POST, the bounded parse of
//! the answer, token reuse, and errors that name partner, endpoint, status and
//! OAuth error code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use np_agent::config::{self, Vars};
use np_agent::http::client::ClientTimeouts;
use np_agent::http::partners::Partners;
use np_agent::ids::Bsn;
use np_agent::jose::{Alg, SigningKey};
use np_agent::oauth::client::{Purpose, TokenClient, TokenClientError};
use np_agent::pki::{self, MinVersion};
use np_agent::util::time::now_unix;

/// Hospital B's configuration as a library user would load it, with hospital
/// A (the agent under test) as its partner.
fn b_config(
    b: &Party,
    issuer: &str,
    dir: &std::path::Path,
    a_base: &str,
    signing_pem: &str,
) -> config::Config {
    let signing = dir.join("b-signing.pem");
    np_agent::util::durable::write_atomic(&signing, signing_pem.as_bytes()).unwrap();
    let mut v = Vars::new();
    let mut set = |k: &str, val: String| {
        v.insert(k.into(), (val, None));
    };
    set("NP_PUBLIC_URL", issuer.to_string());
    set("NP_TLS_CERT", b.tls.cert.display().to_string());
    set("NP_TLS_KEY", b.tls.key.display().to_string());
    set("NP_TLS_TRUST", b.tls.trust.display().to_string());
    set("NP_SIGNING_KEY", signing.display().to_string());
    set("NP_SIGNING_ALG", "ES256".into());
    set("NP_ORG_URA", b.ura.clone());
    set("NP_PARTNERS", "hospa".into());
    set("NP_PARTNER_HOSPA_FHIR_BASE", format!("{a_base}/fhir"));
    set("NP_PARTNER_HOSPA_ORG", "ura:12345678".into());
    set("NP_PARTNER_HOSPA_CERT", "ura:12345678".into());
    set("NP_PARTNER_HOSPA_OUR_CLIENT_ID", "hospb-client".into());
    set("NP_PARTNER_HOSPA_SEND_BSN", "true".into());
    config::from_vars(&v).unwrap()
}

fn client_for(cfg: &config::Config, b: &Party, pem: &str) -> TokenClient {
    let tls = pki::client_config(&b.material, MinVersion::Tls13).unwrap();
    let http = Arc::new(Partners::new(tls, ClientTimeouts::default()));
    let key = Arc::new(SigningKey::from_pkcs8_pem(pem, Alg::Es256, None).unwrap());
    TokenClient::new(Arc::new(cfg.clone()), key, http)
}

#[test]
fn token_client_gets_reuses_and_explains_refusals() {
    let tmp = TempDir::new("token-client");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
    let jwks = b.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.add_partner(&b, &jwks);
    let agent = setup.start();
    let a_base = format!("https://localhost:{}", setup.port);

    let cfg = b_config(&b, &jwks.base(), tmp.path(), &a_base, b.pem(Alg::Es256));
    let partner = cfg.twiin_partner("hospa").unwrap();
    let client = client_for(&cfg, &b, b.pem(Alg::Es256));
    let bsn = Bsn::parse("999999151").unwrap();
    let purpose = Purpose::Notify {
        patient: Some(&bsn),
    };

    // Discovery finds the token endpoint; a token comes back and is reused.
    assert_eq!(
        client.token_endpoint(partner, now_unix()).unwrap(),
        format!("{a_base}/oauth/token")
    );
    let t1 = client.token(partner, &purpose, now_unix()).unwrap();
    assert_eq!(t1.token.len(), 43);
    assert!(
        t1.use_until > now_unix() + 200 && t1.use_until <= now_unix() + 270,
        "300 s minus 30 s margin"
    );
    let t2 = client.token(partner, &purpose, now_unix()).unwrap();
    assert_eq!(t1.token, t2.token, "reused until 30 s before expiry");
    assert_eq!(agent.log().matches("event=token.issued").count(), 1);
    assert!(
        !format!("{t1:?}").contains(&t1.token),
        "Debug hides the token"
    );
    // After a 401 the caller invalidates it and a fresh one is fetched.
    client.invalidate(partner, &purpose);
    let t3 = client.token(partner, &purpose, now_unix()).unwrap();
    assert_ne!(t1.token, t3.token);
    assert_eq!(agent.log().matches("event=token.issued").count(), 2);

    // The assertions we send carry exactly the claims of DESIGN.md.
    let (client_jwt, authz_jwt) = client
        .assertions(partner, &purpose, "https://aud.example/token", now_unix())
        .unwrap();
    let claims = |jwt: &str| -> serde_json::Value {
        let p = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&np_agent::util::b64::decode(p).unwrap()).unwrap()
    };
    let (c, a) = (claims(&client_jwt), claims(&authz_jwt));
    assert_eq!(c["iss"], jwks.base());
    assert_eq!(c["sub"], "hospb-client");
    assert_eq!(c["aud"], "https://aud.example/token");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    assert!(np_agent::util::random::is_uuid(c["jti"].as_str().unwrap()));
    assert_ne!(c["jti"], a["jti"]);
    assert_eq!(a["sub"], "urn:oid:2.16.528.1.1007.3.3.87654321");
    assert_eq!(a["authorizer"], "urn:oid:2.16.528.1.1007.3.3.12345678");
    assert_eq!(a["patient"], "urn:oid:2.16.840.1.113883.2.4.6.3.999999151");
    assert!(a.get("authorization_base").is_none());
    let header: serde_json::Value = serde_json::from_slice(
        &np_agent::util::b64::decode(client_jwt.split('.').next().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (header["typ"].as_str(), header["alg"].as_str()),
        (Some("JWT"), Some("ES256"))
    );

    // A key the partner does not publish: refused, and the error says by whom and why.
    let stranger_pem = np_agent::jose::generate_pkcs8_pem(Alg::Es256).unwrap();
    let bad = client_for(&cfg, &b, &stranger_pem);
    let err = bad.token(partner, &purpose, now_unix()).unwrap_err();
    assert_eq!(err.oauth_error(), Some("invalid_client"));
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "partner hospa: token endpoint {a_base}/oauth/token answered 401 invalid_client"
        )),
        "{msg}"
    );

    // A partner that is down: a transient transport error naming partner and endpoint.
    drop(agent);
    let down = client_for(&cfg, &b, b.pem(Alg::Es256));
    let mut cfg2 = cfg.clone();
    if let np_agent::config::PartnerKind::Twiin(t) = &mut cfg2.partners[0].kind {
        t.token_url = Some(format!("{a_base}/oauth/token"));
    }
    let err = down
        .token(cfg2.partners[0].as_twiin().unwrap(), &purpose, now_unix())
        .unwrap_err();
    assert!(matches!(err, TokenClientError::Transport { .. }), "{err}");
    assert!(err.is_transient());
    assert!(
        err.to_string().starts_with(&format!(
            "partner hospa: token endpoint {a_base}/oauth/token unreachable"
        )),
        "{err}"
    );
}
