//! Access tokens are bound to the TLS client certificate they were issued
//! over (RFC 8705), and a partner's `CERT` selector can pin the CA that
//! issues its certificates. Two real agents exchange a case; the test then
//! acts as hospital B with two certificates that both carry B's URA: B's own
//! (from the common test CA) and a second one from another CA that A also
//! trusts. A Zorgviewer partner's backend token is bound the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use common::folders::{export, wait_files};
use np_agent::config::{self};
use np_agent::http::client::ClientTimeouts;
use np_agent::ids::{Bsn, OrgId};
use np_agent::jose::Alg;
use np_agent::oauth::client::{Purpose, TokenClient};
use np_agent::oauth::decide::{CLIENT_ASSERTION_TYPE, GRANT_JWT_BEARER};
use np_agent::pki::throwaway::{Ca, LeafSpec, UziOtherName, write_files};
use np_agent::pki::{self, MinVersion, TlsFiles, TlsMaterial};
use np_agent::util::b64;
use np_agent::util::percent::encode_form;
use np_agent::util::random;
use np_agent::util::time::now_unix;
use serde_json::{Value, json};

const URA_A: &str = "12345678";
const URA_B: &str = "87654321";

/// Hospital B over one of its certificates: B's signing key and
/// configuration, and an HTTPS client presenting that certificate.
struct AsB {
    client: TokenClient,
    http: ureq::Agent,
    cfg: config::Config,
    /// SHA-256 of the certificate this client presents.
    cert_sha256: [u8; 32],
}

impl AsB {
    fn over(b: &AgentSetup, tls: &TlsFiles) -> AsB {
        let common::agent::AsAgent {
            cfg,
            client,
            http,
            cert_sha256,
        } = b.as_client_over(tls);
        AsB {
            client,
            http,
            cfg,
            cert_sha256,
        }
    }

    /// `POST /oauth/token` at A for a pull token of `base`: status and body.
    fn pull_token(&self, a: &AgentSetup, base: &str, bsn: &Bsn) -> (u16, Value) {
        let partner = self.cfg.twiin_partner("hospa").unwrap();
        let (me, authorizer) = (OrgId::Ura(URA_B.into()), OrgId::Ura(URA_A.into()));
        let purpose = Purpose::Pull {
            authorization_base: base,
            requesting: &me,
            authorizer: Some(&authorizer),
            patient: Some(bsn),
        };
        let (client, authz) = self
            .client
            .assertions(partner, &purpose, &a.token_endpoint(), now_unix())
            .unwrap();
        let form = format!(
            "grant_type={GRANT_JWT_BEARER}&client_assertion_type={CLIENT_ASSERTION_TYPE}\
             &client_assertion={client}&assertion={authz}"
        );
        let resp = self
            .http
            .post(&a.token_endpoint())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().read_to_vec().unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `GET` on A with `token`: status, `WWW-Authenticate`, body.
    fn get(&self, url: &str, token: &str) -> (u16, Option<String>, Value) {
        let resp = self
            .http
            .get(url)
            .header("Accept", "application/fhir+json")
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().read_to_vec().unwrap();
        (
            status,
            challenge,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }
}

/// The case export of one patient.
fn case(bsn: &str) -> Value {
    let mut v: Value = serde_json::from_str(np_agent::demo::SAMPLE).unwrap();
    for e in v["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "Patient" {
            e["resource"]["identifier"][0]["value"] = json!(bsn);
        }
    }
    v
}

/// The authorization base in the notification Task B wrote into its inbox.
fn base_of(inbox_file: &std::path::Path) -> String {
    let bundle: Value = serde_json::from_slice(&std::fs::read(inbox_file).unwrap()).unwrap();
    bundle["entry"][0]["resource"]["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "authorization-base")
        .and_then(|i| i["valueString"].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn a_token_works_only_over_the_certificate_it_was_issued_over() {
    let tmp = TempDir::new("cert-bound");
    let world = World::new();
    // A second CA that A trusts as well: it too can vouch for B's URA.
    let other_ca = Ca::new("second trusted ca").unwrap();
    let (mut a, b) = AgentSetup::pair(&world, tmp.path(), "debug");
    let trust = a.env.vars["NP_TLS_TRUST"].clone();
    let mut bundle = std::fs::read_to_string(&trust).unwrap();
    bundle.push_str(&other_ca.cert_pem());
    std::fs::write(&trust, bundle).unwrap();
    // B's second certificate: the same URA, from the other CA.
    let second = other_ca
        .issue(&LeafSpec {
            uzi: Some(UziOtherName::server(URA_B, "87654321")),
            ..LeafSpec::localhost("hospb second")
        })
        .unwrap();
    let second_tls = write_files(&tmp.join("hospb-second"), &second, &[&world.ca]).unwrap();

    let pa = a.start();
    let pb = b.start();
    let bsn = Bsn::parse("999999151").unwrap();
    export(
        &a.outbox("hospb"),
        "case-1.json",
        case(bsn.as_str()).to_string().as_bytes(),
    );
    let inbox = wait_files(&b.inbox("hospa"), ".json", 1, &[&pa, &pb]);
    let base = base_of(&inbox[0]);
    let b_tls = TlsFiles {
        cert: b.env.vars["NP_TLS_CERT"].clone().into(),
        key: b.env.vars["NP_TLS_KEY"].clone().into(),
        trust: b.env.vars["NP_TLS_TRUST"].clone().into(),
        crl_dir: None,
    };
    let first = AsB::over(&b, &b_tls);
    let other = AsB::over(&b, &second_tls);
    assert_ne!(first.cert_sha256, other.cert_sha256);
    let patient = a.url("/fhir/Condition");

    // Discovery says tokens are certificate-bound.
    let resp = first
        .http
        .get(&a.url("/.well-known/smart-configuration"))
        .call()
        .unwrap();
    let discovery: Value =
        serde_json::from_slice(&resp.into_body().read_to_vec().unwrap()).unwrap();
    assert_eq!(
        discovery["tls_client_certificate_bound_access_tokens"],
        true
    );

    // A pull token over B's first certificate names that certificate.
    let (status, body) = first.pull_token(&a, &base, &bsn);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["cnf"]["x5t#S256"],
        b64::encode(&first.cert_sha256).as_str(),
        "{body}"
    );
    let t1 = body["access_token"].as_str().unwrap().to_string();
    let (s, _, read) = first.get(&patient, &t1);
    assert_eq!(s, 200, "{read}");
    assert_eq!(read["resourceType"], "Bundle");

    // The same token over B's other certificate (same URA, other trusted CA): 401.
    let (s, challenge, read) = other.get(&patient, &t1);
    assert_eq!(s, 401, "{read}");
    assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
    assert_eq!(read["resourceType"], "OperationOutcome");
    assert!(
        read.to_string().contains("another TLS client certificate"),
        "{read}"
    );
    // Logged at warn with the certificate presented.
    let tail = format!(
        " partner=hospb cert_sha256={}",
        b64::hex(&other.cert_sha256)
    );
    let log = pa.log();
    assert!(
        log.lines().any(
            |l| l.contains("level=warn event=token.wrong_certificate rid=") && l.ends_with(&tail)
        ),
        "{log}"
    );

    // That certificate is B's all the same: a token obtained over it works
    // over it, and not over the first one.
    let (status, body) = other.pull_token(&a, &base, &bsn);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["cnf"]["x5t#S256"],
        b64::encode(&other.cert_sha256).as_str()
    );
    let t2 = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(other.get(&patient, &t2).0, 200);
    assert_eq!(first.get(&patient, &t2).0, 401);

    // The binding survives a restart of A. Then B's selector pins the CA of
    // its first certificate: the other CA's certificate is no longer B's.
    let _ = pa.stop();
    let pin = b64::hex(&pki::certificate_sha256(world.ca.cert_der()));
    a.env
        .set("NP_PARTNER_HOSPB_CERT", format!("ura:{URA_B}@sha256:{pin}"));
    let pa = a.start();
    assert_eq!(first.get(&patient, &t1).0, 200, "t1 after the restart");
    let (s, _, read) = other.get(&patient, &t2);
    assert_eq!(
        s, 403,
        "the other CA's certificate maps to no partner: {read}"
    );
    let (status, body) = other.pull_token(&a, &base, &bsn);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let (status, body) = first.pull_token(&a, &base, &bsn);
    assert_eq!(status, 200, "{body}");
    // Tokens never reach the log.
    let log = pa.log();
    assert!(!log.contains(&t1) && !log.contains(&t2));
    drop(pb);
}

/// An HTTPS client presenting the certificate in `tls`.
fn client_over(tls: &TlsFiles) -> ureq::Agent {
    let material = TlsMaterial::load(tls).unwrap();
    np_agent::http::client::agent(
        pki::client_config(&material, MinVersion::Tls13).unwrap(),
        ClientTimeouts::default(),
    )
}

#[test]
fn a_zorgviewer_token_works_only_over_the_certificate_it_was_issued_over() {
    const ZV_URA: &str = "55556666";
    let tmp = TempDir::new("cert-bound-zv");
    let world = World::new();
    let other_ca = Ca::new("second trusted ca").unwrap();
    let zv = Party::new(&world, tmp.path(), "zv", ZV_URA, &[Alg::Es384]);
    let jwks = zv.serve_jwks();
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", URA_A);
    a.add_zorgviewer(&zv, &jwks);
    a.env.set("NP_PARTNER_ZV_CONSENT", "none");
    let trust = a.env.vars["NP_TLS_TRUST"].clone();
    let mut bundle = std::fs::read_to_string(&trust).unwrap();
    bundle.push_str(&other_ca.cert_pem());
    std::fs::write(&trust, bundle).unwrap();
    // The Zorgviewer's second certificate: its URA, from the other CA.
    let second = other_ca
        .issue(&LeafSpec {
            uzi: Some(UziOtherName::server(ZV_URA, "12345678")),
            ..LeafSpec::localhost("zv second")
        })
        .unwrap();
    let second_tls = write_files(&tmp.join("zv-second"), &second, &[&world.ca]).unwrap();
    let pa = a.start();
    let (first, other) = (zv.client(), client_over(&second_tls));
    let first_sha256 = pki::certificate_sha256(zv.material.chain[0].as_ref());

    let token_over = |client: &ureq::Agent| {
        let now = now_unix();
        let claims = json!({
            "iss": "zv-client", "sub": "zv-client", "aud": a.token_endpoint(),
            "iat": now, "exp": now + 60, "jti": random::uuid_v4().unwrap(),
            "subject_organization_id": "urn:oid:2.16.840.1.113883.2.4.3.8",
            "subject_organization": "UMCG",
            "subject_role": [{"system": "http://snomed.info/sct", "code": "309343006"}],
        });
        let assertion = zv
            .key(Alg::Es384)
            .sign_jwt(claims.to_string().as_bytes())
            .unwrap();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
            ("scope", "user/Patient.read"),
        ]
        .iter()
        .map(|(k, v)| format!("{}={}", encode_form(k), encode_form(v)))
        .collect::<Vec<_>>()
        .join("&");
        let resp = client
            .post(&a.token_endpoint())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.into_body().read_to_vec().unwrap()).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    };
    let read = |client: &ureq::Agent, token: &str| {
        let resp = client
            .get(&a.url("/fhir/Patient?identifier=x"))
            .header("Accept", "application/fhir+json")
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), challenge)
    };

    let body = token_over(&first);
    assert_eq!(
        body["cnf"]["x5t#S256"],
        b64::encode(&first_sha256).as_str(),
        "{body}"
    );
    let token = body["access_token"].as_str().unwrap().to_string();
    // Over its own certificate the token reads, over the other one it does not.
    assert_eq!(read(&first, &token).0, 200);
    let (status, challenge) = read(&other, &token);
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
    let second_token = token_over(&other)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(read(&other, &second_token).0, 200);
    assert_eq!(read(&first, &second_token).0, 401);
    assert!(!pa.log().contains(&token));
}
