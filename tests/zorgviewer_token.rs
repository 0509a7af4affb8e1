//! The `client_credentials` grant of a real `np-agent run` process for a
//! Zorgviewer partner that serves its own JWKS, over mTLS on loopback: a
//! scoped token end to end, the main refusals with their exact status and
//! OAuth error, and `NP_PARTNER_<NAME>_ALLOW_FROM` refusing a partner's
//! certificate from an address it does not list on every path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World};
use common::{TempDir, observe};
use np_agent::jose::{Alg, SigningKey};
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{b64, random, time::now_unix};
use serde_json::{Value, json};

const CLIENT_CREDENTIALS: &str = "client_credentials";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const FORM: &str = "application/x-www-form-urlencoded";
const A_URA: &str = "12345678";
const B_URA: &str = "87654321";
const ZV_URA: &str = "55556666";
const BROKER_URA: &str = "22223333";
/// The organisation of the Zorgviewer user (UMCG).
const ZV_ORG: &str = "urn:oid:2.16.840.1.113883.2.4.3.8";
/// What Zorgviewer asks for, with a `patient/` and a `write` token that are
/// not granted.
const ASKED: &str = "user/Patient.read user/Binary.read user/Observation.search \
    patient/Condition.read user/DocumentReference.search user/Patient.write";
const GRANTED: &str =
    "user/Patient.read user/Binary.read user/Observation.search user/DocumentReference.search";

/// Agent A with a Zorgviewer partner (ES384 and RS384 keys, its JWKS served
/// over mTLS), a Twiin partner B and a Mitz broker.
struct Bench {
    _tmp: TempDir,
    setup: AgentSetup,
    agent: Option<AgentProcess>,
    zv: Party,
    b: Party,
    broker: Party,
    _jwks_zv: JwksServer,
    _jwks_b: JwksServer,
}

impl Bench {
    /// The bench with `allow_from` (when given) as every partner's `ALLOW_FROM`.
    fn new(label: &str, allow_from: Option<&str>) -> Bench {
        let tmp = TempDir::new(label);
        let world = World::new();
        let zv = Party::new(&world, tmp.path(), "zv", ZV_URA, &[Alg::Es384, Alg::Rs384]);
        let b = Party::new(&world, tmp.path(), "hospb", B_URA, &[Alg::Es256]);
        let broker = Party::new(&world, tmp.path(), "broker", BROKER_URA, &[]);
        let jwks_zv = zv.serve_jwks();
        let jwks_b = b.serve_jwks();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
        setup.add_zorgviewer(&zv, &jwks_zv);
        setup.add_partner(&b, &jwks_b);
        setup.add_mitz(&broker);
        if let Some(cidrs) = allow_from {
            for p in ["ZV", "HOSPB", "BROKER"] {
                setup.env.set(&format!("NP_PARTNER_{p}_ALLOW_FROM"), cidrs);
            }
        }
        let agent = Some(setup.start());
        Bench {
            _tmp: tmp,
            setup,
            agent,
            zv,
            b,
            broker,
            _jwks_zv: jwks_zv,
            _jwks_b: jwks_b,
        }
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().unwrap()
    }

    /// Restarts the agent with every partner's `ALLOW_FROM` set to `cidrs`.
    fn restart_allowing(&mut self, cidrs: &str) {
        let status = self.agent.take().unwrap().stop();
        assert!(status.success(), "clean stop: {status}");
        for p in ["ZV", "HOSPB", "BROKER"] {
            self.setup
                .env
                .set(&format!("NP_PARTNER_{p}_ALLOW_FROM"), cidrs);
        }
        self.agent = Some(self.setup.start());
    }

    /// Valid client assertion claims of the Zorgviewer for this agent.
    fn claims(&self) -> Value {
        let now = now_unix();
        json!({
            "iss": "zv-client", "sub": "zv-client",
            "aud": self.setup.token_endpoint(),
            "iat": now, "exp": now + 60,
            "jti": random::uuid_v4().unwrap(),
            "subject_organization_id": ZV_ORG,
            "subject_organization": "UMCG",
            "subject_role": [{"system": "http://snomed.info/sct", "code": "309343006"}],
        })
    }

    fn assertion(&self, alg: Alg, f: impl Fn(&mut Value)) -> String {
        let mut c = self.claims();
        f(&mut c);
        sign(self.zv.key(alg), &c)
    }

    /// `POST /oauth/token` with this party's certificate: status, JSON, headers.
    fn post(&self, party: &Party, body: &[u8]) -> (u16, Value, Vec<(String, String)>) {
        let resp = party
            .client()
            .post(self.setup.token_endpoint())
            .header("Content-Type", FORM)
            .send(body)
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.into_body().read_to_vec().unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
            headers,
        )
    }

    /// Any request with this party's certificate: status and JSON body.
    fn call(&self, party: &Party, method: &str, path: &str) -> (u16, Value) {
        let agent = party.client();
        let url = self.setup.url(path);
        let resp = match method {
            "GET" => agent.get(&url).call(),
            _ => agent
                .post(&url)
                .header("Content-Type", "application/fhir+json")
                .send(b"{}".as_slice()),
        }
        .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().read_to_vec().unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign_jwt(claims.to_string().as_bytes()).unwrap()
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// A client_credentials body; `scope` left out when `None`.
fn cc_form(assertion: &str, scope: Option<&str>) -> Vec<u8> {
    let mut pairs = vec![
        ("grant_type", CLIENT_CREDENTIALS),
        ("client_assertion_type", CLIENT_TYPE),
        ("client_assertion", assertion),
    ];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    form(&pairs)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn zorgviewer_gets_a_scoped_token_and_bad_requests_are_refused() {
    let bench = Bench::new("zv-token", None);
    let zv = &bench.zv;

    // The happy path: ES384 and RS384, the granted scope in the answer.
    let mut secrets = Vec::new();
    for alg in [Alg::Es384, Alg::Rs384] {
        let assertion = bench.assertion(alg, |_| {});
        let (status, body, headers) = bench.post(zv, &cc_form(&assertion, Some(ASKED)));
        assert_eq!(status, 200, "{alg}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], GRANTED, "{alg}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(b64::decode(token).unwrap().len(), 32, "256-bit token");
        assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        assert_eq!(header(&headers, "pragma"), Some("no-cache"));
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("application/json")
        );
        secrets.push(token.to_string());
        secrets.push(assertion);
    }
    let replayed = secrets[1].clone();

    // The refusals: (what, party, body, status, error).
    let hs256 = {
        let h = b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = b64::encode(bench.claims().to_string().as_bytes());
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"zorgviewer-shared-secret"),
            format!("{h}.{p}").as_bytes(),
        );
        format!("{h}.{p}.{}", b64::encode(tag.as_ref()))
    };
    let now = now_unix();
    let es = Alg::Es384;
    let cases: Vec<(&str, &Party, Vec<u8>, u16, &str)> = vec![
        (
            "no subject_organization_id",
            zv,
            cc_form(
                &bench.assertion(es, |c| {
                    c.as_object_mut().unwrap().remove("subject_organization_id");
                }),
                Some(ASKED),
            ),
            401,
            "invalid_client",
        ),
        (
            "subject_organization_id not an OID",
            zv,
            cc_form(
                &bench.assertion(es, |c| c["subject_organization_id"] = json!("UMCG")),
                Some(ASKED),
            ),
            401,
            "invalid_client",
        ),
        (
            "HS256 assertion",
            zv,
            cc_form(&hs256, Some(ASKED)),
            401,
            "invalid_client",
        ),
        (
            "wrong aud",
            zv,
            cc_form(
                &bench.assertion(es, |c| c["aud"] = json!(bench.setup.url("/fhir"))),
                Some(ASKED),
            ),
            401,
            "invalid_client",
        ),
        (
            "replayed jti",
            zv,
            cc_form(&replayed, Some(ASKED)),
            401,
            "invalid_client",
        ),
        (
            "exp more than 5 minutes ahead",
            zv,
            cc_form(
                &bench.assertion(es, |c| c["exp"] = json!(now + 400)),
                Some(ASKED),
            ),
            401,
            "invalid_client",
        ),
        (
            "iss not the client id",
            zv,
            cc_form(
                &bench.assertion(es, |c| c["iss"] = json!("https://auth.zorgviewer.nl")),
                Some(ASKED),
            ),
            401,
            "invalid_client",
        ),
        (
            "no scope",
            zv,
            cc_form(&bench.assertion(es, |_| {}), None),
            400,
            "invalid_scope",
        ),
        (
            "a scope of an unknown type",
            zv,
            cc_form(
                &bench.assertion(es, |_| {}),
                Some("user/Patient.read user/Foo.read"),
            ),
            400,
            "invalid_scope",
        ),
        (
            "only a patient scope",
            zv,
            cc_form(&bench.assertion(es, |_| {}), Some("patient/*.read")),
            400,
            "invalid_scope",
        ),
        (
            "jwt-bearer from the zorgviewer",
            zv,
            form(&[
                ("grant_type", JWT_BEARER),
                ("assertion", &bench.assertion(es, |_| {})),
                ("client_assertion_type", CLIENT_TYPE),
                ("client_assertion", &bench.assertion(es, |_| {})),
            ]),
            403,
            "unauthorized_client",
        ),
        (
            "client_credentials from a twiin partner",
            &bench.b,
            cc_form(&bench.assertion(es, |_| {}), Some(ASKED)),
            403,
            "unauthorized_client",
        ),
        (
            "client_credentials from the mitz broker",
            &bench.broker,
            cc_form(&bench.assertion(es, |_| {}), Some(ASKED)),
            403,
            "unauthorized_client",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, party, body, status, error) in &cases {
        let (got, json, headers) = bench.post(party, body);
        if (got, json["error"].as_str()) != (*status, Some(*error)) {
            wrong.push(format!("{what}: want {status} {error}, got {got} {json}"));
        }
        if *status == 401
            && header(&headers, "www-authenticate") != Some("Bearer error=\"invalid_client\"")
        {
            wrong.push(format!("{what}: no WWW-Authenticate"));
        }
        let description = json["error_description"].as_str().unwrap_or_default();
        if description.contains("eyJ") {
            wrong.push(format!("{what}: the description quotes a JWT"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The log names the grant and keeps the secrets out, also at debug.
    let log = bench.agent().log();
    assert_eq!(log.matches("event=token.issued").count(), 2, "{log}");
    assert!(log.contains("kind=zorgviewer"), "{log}");
    assert!(log.contains("reason=subject_organization"), "{log}");
    assert!(log.contains("reason=scope_missing"), "{log}");
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a token or assertion reached the log"
        );
    }
    let metrics = observe::metrics(bench.setup.admin_port);
    assert_eq!(
        observe::sample(&metrics, "np_tokens_issued_total{kind=\"zorgviewer\"}"),
        Some(2.0),
        "{metrics}"
    );
}

#[test]
fn allow_from_refuses_a_partner_certificate_from_another_address() {
    // The test clients connect from 127.0.0.1.
    let mut bench = Bench::new("zv-allow-from", Some("10.0.0.0/8"));
    let assertion = bench.assertion(Alg::Es384, |_| {});
    let (status, body, headers) = bench.post(&bench.zv, &cc_form(&assertion, Some(ASKED)));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not accepted from 127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Bearer error=\"invalid_client\"")
    );
    let (status, outcome) = bench.call(&bench.b, "GET", "/fhir/Patient");
    assert_eq!(status, 403, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "forbidden");
    let (status, outcome) = bench.call(&bench.broker, "POST", "/mitz/fhir");
    assert_eq!(status, 403, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    // One warning per refused request, naming partner and peer.
    let log = bench.agent().log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=partner.address_refused"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    for (line, partner) in refused.iter().zip(["zv", "hospb", "broker"]) {
        assert!(line.contains("level=warn"), "{line}");
        assert!(line.contains(&format!("partner={partner} ")), "{line}");
        assert!(line.contains("peer=127.0.0.1"), "{line}");
    }
    assert!(log.contains("reason=address_not_allowed"), "{log}");

    // Listed, the same certificates are served.
    bench.restart_allowing("127.0.0.0/8, 20.160.170.124/31");
    let assertion = bench.assertion(Alg::Es384, |_| {});
    let (status, body, _) = bench.post(&bench.zv, &cc_form(&assertion, Some(ASKED)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], GRANTED);
    let (status, outcome) = bench.call(&bench.b, "GET", "/fhir/Patient");
    assert_eq!(
        status, 401,
        "a bearer token is what is missing now: {outcome}"
    );
    let (status, outcome) = bench.call(&bench.broker, "POST", "/mitz/fhir");
    assert_ne!(status, 403, "{outcome}");
    assert!(
        !bench
            .agent()
            .log()
            .contains("event=partner.address_refused"),
        "{}",
        bench.agent().log()
    );
}
