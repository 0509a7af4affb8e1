//! The token endpoint of a real `np-agent run` process, over mTLS on loopback:
//! a partner gets a token end to end, and a corpus of bad requests is refused
//! with the right status and OAuth error. The same run checks that nothing
//! secret reached the log at debug level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World};
use np_agent::jose::{Alg, SigningKey};
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{b64, random, time::now_unix};
use serde_json::{Value, json};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const A_URA: &str = "12345678";
const B_URA: &str = "87654321";
const C_URA: &str = "11223344";
const BSN: &str = "999999151";

/// Agent A, its partners B and C (each with a JWKS server), and a client cert
/// that chains to the trust bundle but belongs to no partner.
struct Bench {
    _tmp: TempDir,
    setup: AgentSetup,
    agent: Option<AgentProcess>,
    b: Party,
    c: Party,
    stranger: Party,
    _jwks_b: JwksServer,
    _jwks_c: JwksServer,
}

impl Bench {
    fn new(label: &str) -> Bench {
        let tmp = TempDir::new(label);
        let world = World::new();
        let b = Party::new(
            &world,
            tmp.path(),
            "hospb",
            B_URA,
            &[Alg::Es256, Alg::Ps256, Alg::Es512],
        );
        let c = Party::new(&world, tmp.path(), "hospc", C_URA, &[Alg::Es256]);
        let stranger = Party::new(&world, tmp.path(), "stranger", "99999999", &[Alg::Es256]);
        let jwks_b = b.serve_jwks();
        let jwks_c = c.serve_jwks();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", A_URA);
        setup.add_partner(&b, &jwks_b);
        setup.add_partner(&c, &jwks_c);
        let agent = Some(setup.start());
        Bench {
            _tmp: tmp,
            setup,
            agent,
            b,
            c,
            stranger,
            _jwks_b: jwks_b,
            _jwks_c: jwks_c,
        }
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().unwrap()
    }

    fn restart(&mut self) {
        let status = self.agent.take().unwrap().stop();
        assert!(status.success(), "clean stop: {status}");
        self.agent = Some(self.setup.start());
    }

    /// Valid claims from `party` for this agent.
    fn client_claims(&self, party: &Party) -> Value {
        let now = now_unix();
        json!({
            "iss": issuer_of(party, &self.setup),
            "sub": format!("{}-client", party.name),
            "aud": self.setup.token_endpoint(),
            "iat": now, "exp": now + 60,
            "jti": random::uuid_v4().unwrap(),
        })
    }

    fn authz_claims(&self, party: &Party) -> Value {
        let now = now_unix();
        json!({
            "iss": issuer_of(party, &self.setup),
            "sub": format!("urn:oid:2.16.528.1.1007.3.3.{}", party.ura),
            "authorizer": format!("urn:oid:2.16.528.1.1007.3.3.{A_URA}"),
            "patient": format!("urn:oid:2.16.840.1.113883.2.4.6.3.{BSN}"),
            "aud": self.setup.token_endpoint(),
            "iat": now, "exp": now + 60,
            "jti": random::uuid_v4().unwrap(),
        })
    }

    fn post(
        &self,
        party: &Party,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value, Vec<(String, String)>) {
        let resp = party
            .client()
            .post(self.setup.token_endpoint())
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.into_body().read_to_vec().unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, json, headers)
    }
}

/// The issuer the agent expects of a party: the origin of its JWKS server.
fn issuer_of(party: &Party, setup: &AgentSetup) -> String {
    let k = format!("NP_PARTNER_{}_ISSUER", party.name.to_ascii_uppercase());
    setup
        .env
        .vars
        .get(&k)
        .cloned()
        .unwrap_or_else(|| "https://unknown".into())
}

/// A compact JWS with any header, signed with `key`'s algorithm.
fn sign_raw(party: &Party, key: &SigningKey, header: &Value, claims: &Value) -> String {
    let h = b64::encode(header.to_string().as_bytes());
    let p = b64::encode(claims.to_string().as_bytes());
    let input = format!("{h}.{p}");
    let sig = raw_sign(party.pem(key.alg()), key.alg(), input.as_bytes());
    format!("{input}.{}", b64::encode(&sig))
}

/// Signs bytes with the same key material the party publishes.
fn raw_sign(pem: &str, alg: Alg, input: &[u8]) -> Vec<u8> {
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PSS_SHA256, RsaKeyPair,
    };
    let der = pem_to_der(pem);
    let rng = SystemRandom::new();
    match alg {
        Alg::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .unwrap()
            .sign(&rng, input)
            .unwrap()
            .as_ref()
            .to_vec(),
        Alg::Ps256 | Alg::Rs256 => {
            let kp = RsaKeyPair::from_pkcs8(&der).unwrap();
            let mut sig = vec![0u8; kp.public().modulus_len()];
            let enc: &dyn ring::signature::RsaEncoding = if alg == Alg::Ps256 {
                &RSA_PSS_SHA256
            } else {
                &ring::signature::RSA_PKCS1_SHA256
            };
            kp.sign(enc, &rng, input, &mut sig).unwrap();
            sig
        }
        other => panic!("raw signing not needed for {other:?}"),
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .secret_pkcs8_der()
        .to_vec()
}

fn header(key: &SigningKey) -> Value {
    json!({"alg": key.alg().name(), "typ": "JWT", "kid": key.kid()})
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

fn token_form(client: &str, authz: &str) -> Vec<u8> {
    form(&[
        ("grant_type", JWT_BEARER),
        ("assertion", authz),
        ("client_assertion_type", CLIENT_TYPE),
        ("client_assertion", client),
    ])
}

fn flip_last_signature_bit(jwt: &str) -> String {
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let mut bytes = b64::decode(sig).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    format!("{input}.{}", b64::encode(&bytes))
}

const FORM: &str = "application/x-www-form-urlencoded";

/// One corpus entry: name, who sends it, content type, body, expected status and OAuth error.
type Case<'a> = (
    &'static str,
    &'a Party,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

#[test]
fn partner_gets_a_token_end_to_end_and_bad_requests_are_refused() {
    let bench = Bench::new("token-corpus");
    let b = &bench.b;
    let es = b.key(Alg::Es256);

    // The happy path, with every header the RFC asks for.
    let mut issued_tokens = Vec::new();
    let mut used_assertions = Vec::new();
    for alg in [Alg::Es256, Alg::Ps256, Alg::Es512] {
        let key = b.key(alg);
        let client = sign(key, &bench.client_claims(b));
        let authz = sign(key, &bench.authz_claims(b));
        let (status, body, headers) = bench.post(b, FORM, &token_form(&client, &authz));
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300);
        let token = body["access_token"].as_str().unwrap().to_string();
        assert_eq!(b64::decode(&token).unwrap().len(), 32, "256-bit token");
        let h = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("cache-control").as_deref(), Some("no-store"));
        assert_eq!(h("pragma").as_deref(), Some("no-cache"));
        assert!(h("content-type").unwrap().starts_with("application/json"));
        issued_tokens.push(token);
        used_assertions.push(client);
        used_assertions.push(authz);
    }

    // The negative corpus: (name, party, content type, body, status, error).
    let mut corpus: Vec<Case<'_>> = Vec::new();
    let good_authz = || sign(es, &bench.authz_claims(b));
    let good_client = || sign(es, &bench.client_claims(b));
    let with_client = |f: &dyn Fn(&mut Value)| {
        let mut c = bench.client_claims(b);
        f(&mut c);
        token_form(&sign(es, &c), &good_authz())
    };
    let with_authz = |f: &dyn Fn(&mut Value)| {
        let mut a = bench.authz_claims(b);
        f(&mut a);
        token_form(&good_client(), &sign(es, &a))
    };
    let now = now_unix();

    // HTTP and form level.
    corpus.push((
        "certificate of no partner",
        &bench.stranger,
        FORM,
        token_form(&good_client(), &good_authz()),
        401,
        "invalid_client",
    ));
    corpus.push((
        "json body",
        b,
        "application/json",
        br#"{"grant_type":"x"}"#.to_vec(),
        400,
        "invalid_request",
    ));
    corpus.push((
        "no grant_type",
        b,
        FORM,
        form(&[
            ("assertion", &good_authz()),
            ("client_assertion_type", CLIENT_TYPE),
            ("client_assertion", &good_client()),
        ]),
        400,
        "invalid_request",
    ));
    corpus.push((
        "client_credentials grant from a twiin partner",
        b,
        FORM,
        form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_TYPE),
            ("client_assertion", &good_client()),
        ]),
        403,
        "unauthorized_client",
    ));
    corpus.push((
        "authorization_code grant",
        b,
        FORM,
        form(&[("grant_type", "authorization_code"), ("code", "x")]),
        400,
        "unsupported_grant_type",
    ));
    corpus.push((
        "no client_assertion_type",
        b,
        FORM,
        form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &good_authz()),
            ("client_assertion", &good_client()),
        ]),
        400,
        "invalid_request",
    ));
    corpus.push((
        "wrong client_assertion_type",
        b,
        FORM,
        form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &good_authz()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ),
            ("client_assertion", &good_client()),
        ]),
        400,
        "invalid_request",
    ));
    corpus.push((
        "no client_assertion",
        b,
        FORM,
        form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &good_authz()),
            ("client_assertion_type", CLIENT_TYPE),
        ]),
        400,
        "invalid_request",
    ));
    corpus.push((
        "no assertion",
        b,
        FORM,
        form(&[
            ("grant_type", JWT_BEARER),
            ("client_assertion_type", CLIENT_TYPE),
            ("client_assertion", &good_client()),
        ]),
        400,
        "invalid_request",
    ));
    corpus.push((
        "duplicate grant_type",
        b,
        FORM,
        [
            token_form(&good_client(), &good_authz()),
            b"&grant_type=x".to_vec(),
        ]
        .concat(),
        400,
        "invalid_request",
    ));
    corpus.push((
        "duplicate client_assertion",
        b,
        FORM,
        [
            token_form(&good_client(), &good_authz()),
            format!("&client_assertion={}", good_client()).into_bytes(),
        ]
        .concat(),
        400,
        "invalid_request",
    ));
    corpus.push((
        "bad percent-encoding",
        b,
        FORM,
        b"grant_type=%zz".to_vec(),
        400,
        "invalid_request",
    ));
    corpus.push((
        "body over the limit",
        b,
        FORM,
        vec![b'a'; 70 * 1024],
        413,
        "invalid_request",
    ));
    corpus.push((
        "client_id differs from sub",
        b,
        FORM,
        [
            token_form(&good_client(), &good_authz()),
            b"&client_id=someone-else".to_vec(),
        ]
        .concat(),
        401,
        "invalid_client",
    ));

    // Client assertion: header and signature.
    let client = bench.client_claims(b);
    let none = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64::encode(client.to_string().as_bytes())
    );
    corpus.push((
        "client alg none",
        b,
        FORM,
        token_form(&none, &good_authz()),
        401,
        "invalid_client",
    ));
    let hs = {
        // HS256 keyed with the partner's public JWK, the classic confusion attack.
        let h = b64::encode(
            format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, es.kid()).as_bytes(),
        );
        let p = b64::encode(client.to_string().as_bytes());
        let secret = es.public_jwk().to_json();
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            format!("{h}.{p}").as_bytes(),
        );
        format!("{h}.{p}.{}", b64::encode(tag.as_ref()))
    };
    corpus.push((
        "client HS256 with the public key as secret",
        b,
        FORM,
        token_form(&hs, &good_authz()),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client ES256 signature bit-flipped",
        b,
        FORM,
        token_form(&flip_last_signature_bit(&good_client()), &good_authz()),
        401,
        "invalid_client",
    ));
    let ps_client = sign(b.key(Alg::Ps256), &bench.client_claims(b));
    corpus.push((
        "client PS256 signature bit-flipped",
        b,
        FORM,
        token_form(&flip_last_signature_bit(&ps_client), &good_authz()),
        401,
        "invalid_client",
    ));
    let es512_client = sign(b.key(Alg::Es512), &bench.client_claims(b));
    corpus.push((
        "client ES512 signature bit-flipped",
        b,
        FORM,
        token_form(&flip_last_signature_bit(&es512_client), &good_authz()),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client unknown kid",
        b,
        FORM,
        token_form(
            &sign_raw(
                b,
                es,
                &json!({"alg":"ES256","typ":"JWT","kid":"not-a-known-kid"}),
                &bench.client_claims(b),
            ),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    // Without kid only a JWKS of exactly one key will do; B's holds three,
    // one of them the only ES256 key.
    let no_kid = json!({"alg":"ES256","typ":"JWT"});
    corpus.push((
        "client without kid, JWKS of three keys",
        b,
        FORM,
        token_form(
            &sign_raw(b, es, &no_kid, &bench.client_claims(b)),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    corpus.push((
        "authz without kid, JWKS of three keys",
        b,
        FORM,
        token_form(
            &good_client(),
            &sign_raw(b, es, &no_kid, &bench.authz_claims(b)),
        ),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "client typ at+jwt",
        b,
        FORM,
        token_form(
            &sign_raw(
                b,
                es,
                &json!({"alg":"ES256","typ":"at+jwt","kid":es.kid()}),
                &bench.client_claims(b),
            ),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client crit header",
        b,
        FORM,
        token_form(
            &sign_raw(
                b,
                es,
                &json!({"alg":"ES256","typ":"JWT","kid":es.kid(),"crit":["exp"]}),
                &bench.client_claims(b),
            ),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client RS256 not allowed",
        b,
        FORM,
        token_form(
            &sign_raw(
                b,
                b.key(Alg::Ps256),
                &json!({"alg":"RS256","typ":"JWT","kid":b.key(Alg::Ps256).kid()}),
                &bench.client_claims(b),
            ),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client signed by another partner's key",
        b,
        FORM,
        token_form(
            &sign(bench.c.key(Alg::Es256), &bench.client_claims(b)),
            &good_authz(),
        ),
        401,
        "invalid_client",
    ));
    let sanity = sign_raw(b, es, &header(es), &bench.client_claims(b));
    // (The raw signer is honest: the same header and claims through it are accepted below.)

    // Client assertion: claims.
    corpus.push((
        "client iss wrong",
        b,
        FORM,
        with_client(&|c| c["iss"] = json!("https://evil.example")),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client iss missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("iss");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client sub wrong",
        b,
        FORM,
        with_client(&|c| c["sub"] = json!("hospc-client")),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client sub missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client aud wrong",
        b,
        FORM,
        with_client(&|c| c["aud"] = json!("https://localhost:1/oauth/token")),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client aud missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client exp missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client exp as string",
        b,
        FORM,
        with_client(&|c| c["exp"] = json!((now + 60).to_string())),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client iat missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("iat");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client jti missing",
        b,
        FORM,
        with_client(&|c| {
            c.as_object_mut().unwrap().remove("jti");
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client expired",
        b,
        FORM,
        with_client(&|c| {
            c["iat"] = json!(now - 200);
            c["exp"] = json!(now - 100);
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client iat in the future",
        b,
        FORM,
        with_client(&|c| {
            c["iat"] = json!(now + 120);
            c["exp"] = json!(now + 150);
        }),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client nbf in the future",
        b,
        FORM,
        with_client(&|c| c["nbf"] = json!(now + 120)),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client lifetime too long",
        b,
        FORM,
        with_client(&|c| c["exp"] = json!(now + 600)),
        401,
        "invalid_client",
    ));
    corpus.push((
        "client replayed jti",
        b,
        FORM,
        token_form(&used_assertions[0], &good_authz()),
        401,
        "invalid_client",
    ));

    // Authorization assertion.
    let authz = bench.authz_claims(b);
    let authz_none = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none"}"#),
        b64::encode(authz.to_string().as_bytes())
    );
    corpus.push((
        "authz alg none",
        b,
        FORM,
        token_form(&good_client(), &authz_none),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz signature bit-flipped",
        b,
        FORM,
        token_form(&good_client(), &flip_last_signature_bit(&good_authz())),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz replayed jti",
        b,
        FORM,
        token_form(&good_client(), &used_assertions[1]),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz aud wrong",
        b,
        FORM,
        with_authz(&|a| a["aud"] = json!("https://other/oauth/token")),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz iss wrong",
        b,
        FORM,
        with_authz(&|a| a["iss"] = json!("https://evil.example")),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz expired",
        b,
        FORM,
        with_authz(&|a| {
            a["iat"] = json!(now - 400);
            a["exp"] = json!(now - 300);
        }),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz lifetime too long",
        b,
        FORM,
        with_authz(&|a| a["exp"] = json!(now + 3_600)),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz sub another organisation",
        b,
        FORM,
        with_authz(&|a| a["sub"] = json!(format!("urn:oid:2.16.528.1.1007.3.3.{C_URA}"))),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz sub missing",
        b,
        FORM,
        with_authz(&|a| {
            a.as_object_mut().unwrap().remove("sub");
        }),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz sub not an organisation",
        b,
        FORM,
        with_authz(&|a| a["sub"] = json!("hospb")),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz authorizer not ours",
        b,
        FORM,
        with_authz(&|a| a["authorizer"] = json!(format!("urn:oid:2.16.528.1.1007.3.3.{B_URA}"))),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz authorizer missing",
        b,
        FORM,
        with_authz(&|a| {
            a.as_object_mut().unwrap().remove("authorizer");
        }),
        400,
        "invalid_grant",
    ));
    corpus.push((
        "authz patient not a BSN",
        b,
        FORM,
        with_authz(&|a| a["patient"] = json!("urn:oid:2.16.840.1.113883.2.4.6.3.123456789")),
        400,
        "invalid_grant",
    ));

    // Partner mix-ups: B's certificate with C's assertions, C's key for B's claims.
    let c = &bench.c;
    let c_key = c.key(Alg::Es256);
    corpus.push((
        "cert of B with assertions of C",
        b,
        FORM,
        token_form(
            &sign(c_key, &bench.client_claims(c)),
            &sign(c_key, &bench.authz_claims(c)),
        ),
        401,
        "invalid_client",
    ));
    corpus.push((
        "cert of C with assertions of B",
        c,
        FORM,
        token_form(&good_client(), &good_authz()),
        401,
        "invalid_client",
    ));

    assert!(corpus.len() >= 40, "corpus has {} cases", corpus.len());
    let mut failures = Vec::new();
    for (name, party, ct, body, status, error) in &corpus {
        let (got_status, got, _) = bench.post(party, ct, body);
        if got_status != *status || got["error"] != *error {
            failures.push(format!(
                "{name}: expected {status} {error}, got {got_status} {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}\nlog:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n"),
        bench.agent().log()
    );

    // The raw signer used above is honest: its output for valid claims is accepted.
    let (status, body, _) = bench.post(b, FORM, &token_form(&sanity, &good_authz()));
    assert_eq!(status, 200, "{body}");
    issued_tokens.push(body["access_token"].as_str().unwrap().to_string());

    // Without kid, from a partner whose JWKS holds exactly one key: served.
    let c = &bench.c;
    let c_key = c.key(Alg::Es256);
    let client = sign_raw(c, c_key, &no_kid, &bench.client_claims(c));
    let authz = sign_raw(c, c_key, &no_kid, &bench.authz_claims(c));
    let (status, body, _) = bench.post(c, FORM, &token_form(&client, &authz));
    assert_eq!(status, 200, "no kid, JWKS of one key: {body}");
    issued_tokens.push(body["access_token"].as_str().unwrap().to_string());
    used_assertions.extend([client, authz]);

    // Nothing secret in the debug log: no token, no assertion, no BSN.
    let log = bench.agent().log();
    assert!(log.contains("level=debug"), "ran at debug level");
    assert!(log.contains("event=token.issued") && log.contains("event=token.refused"));
    for t in &issued_tokens {
        assert!(!log.contains(t.as_str()), "access token in the log");
    }
    for a in &used_assertions {
        let sig = a.rsplit('.').next().unwrap();
        assert!(
            !log.contains(a.as_str()) && !log.contains(sig),
            "assertion in the log"
        );
        let payload = a.split('.').nth(1).unwrap();
        assert!(!log.contains(payload), "assertion payload in the log");
    }
    assert!(!log.contains(BSN), "BSN in the log");
}

#[test]
fn a_replayed_jti_stays_refused_across_a_restart() {
    let mut bench = Bench::new("token-replay");
    let b = &bench.b;
    let es = b.key(Alg::Es256);
    let client = sign(es, &bench.client_claims(b));
    let authz = sign(es, &bench.authz_claims(b));
    let body = token_form(&client, &authz);
    let (status, first, _) = bench.post(&bench.b, FORM, &body);
    assert_eq!(status, 200, "{first}");
    bench.restart();
    let (status, again, _) = bench.post(&bench.b, FORM, &body);
    assert_eq!(
        (status, again["error"].as_str()),
        (401, Some("invalid_client")),
        "{again}"
    );
    // A fresh client assertion with the old authorization assertion: invalid_grant.
    let fresh_client = sign(bench.b.key(Alg::Es256), &bench.client_claims(&bench.b));
    let (status, again, _) = bench.post(&bench.b, FORM, &token_form(&fresh_client, &authz));
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant")),
        "{again}"
    );
    std::thread::sleep(Duration::from_millis(10));
}
