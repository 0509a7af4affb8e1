//! The token decision as a table: each row one request, the answer it must
//! get. No socket, no file, no clock: keys, bases and used `jti`s are values.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::*;
use crate::config::{AssertionPolicy, CertSelector, Consent, Mitz, Zorgviewer};
use crate::ids::IdScheme;
use crate::jose::test_keys::{self, dangerous_sign_with_header};
use crate::jose::{Alg, SigningKey, generate_pkcs8_pem};
use crate::oauth::TokenKind;
use crate::util::b64;
use crate::util::percent::encode_form as encode;

const NOW: i64 = 1_800_000_000;
const ENDPOINT: &str = "https://np.hospital-a.example/oauth/token";
const ALIAS: &str = "https://alias.example/token";
const B_ISS: &str = "https://b.example";
const B_CLIENT: &str = "hospb-client";
const B_ORG: &str = "urn:oid:2.16.528.1.1007.3.3.87654321";
const C_ORG: &str = "urn:oid:2.16.528.1.1007.3.3.11223344";
const OUR_URA: &str = "urn:oid:2.16.528.1.1007.3.3.12345678";
const OUR_AGB: &str = "2.16.840.1.113883.2.4.6.1.01234567";
const BSN: &str = "999999151";
const OTHER_BSN: &str = "999999990";
const FORM: &str = "application/x-www-form-urlencoded";
/// A base we issued to hospb for case c-1 (owner B, patient BSN).
const LIVE_BASE: &str = "0b3c1c9e-live";
/// A base we issued to hospb for a case that was cancelled.
const ENDED_BASE: &str = "0b3c1c9e-ended";
/// A base we issued to hospb addressed to another organisation.
const OTHER_ORG_BASE: &str = "0b3c1c9e-other-org";
/// A jti the replay cache already holds.
const USED_JTI: &str = "jti-used-before";

fn twiin(name: &str, org: &str, address_system: bool) -> Partner {
    Partner {
        name: name.into(),
        cert: CertSelector::Dns(format!("{name}.example")),
        kind: PartnerKind::Twiin(Twiin {
            fhir_base: format!("https://{name}.example/fhir"),
            token_url: None,
            assertions: AssertionPolicy {
                issuer: B_ISS.into(),
                client_id: B_CLIENT.into(),
                jwks_url: None,
                audiences: vec![ALIAS.into()],
                accept_algs: crate::jose::DEFAULT_ACCEPTED.to_vec(),
            },
            our_client_id: "np.hospital-a.example".into(),
            org: OrgId::Ura(org.into()),
            id_scheme: IdScheme::Ura,
            send_bsn: false,
            address_system,
        }),
    }
}

fn partners() -> Vec<Partner> {
    vec![
        twiin("hospb", "87654321", false),
        twiin("hospsys", "87654321", true),
        Partner {
            name: "broker".into(),
            cert: CertSelector::Dns("broker.example".into()),
            kind: PartnerKind::Mitz(Mitz {}),
        },
        Partner {
            name: "zv".into(),
            cert: CertSelector::Dns("zv.example".into()),
            kind: PartnerKind::Zorgviewer(Zorgviewer {
                assertions: AssertionPolicy {
                    issuer: "zv".into(),
                    client_id: "zv".into(),
                    jwks_url: Some("https://zv.example/jwks".into()),
                    audiences: Vec::new(),
                    accept_algs: crate::jose::DEFAULT_ACCEPTED.to_vec(),
                },
                consent: Consent::Mitz,
                provider_category: "RPZAC104".into(),
            }),
        },
    ]
}

struct Bases(HashMap<&'static str, BaseLookup>);

impl BaseRegistry for Bases {
    fn lookup(&self, partner: &str, base: &str, _now: i64) -> BaseLookup {
        match self.0.get(base) {
            Some(found) if partner == "hospb" || partner == "hospsys" => found.clone(),
            _ => BaseLookup::NotIssued,
        }
    }
}

struct Used(HashSet<String>);

impl JtiLookup for Used {
    fn used(&self, _partner: &str, _iss: &str, jti: &str) -> bool {
        self.0.contains(jti)
    }
}

/// Partner B's keys (ES256 and PS256, both published), a key of another
/// party (never published), and the lookups.
struct Fx {
    partners: Vec<Partner>,
    es: SigningKey,
    ps: SigningKey,
    stranger: SigningKey,
    jwks: Jwks,
    bases: Bases,
    used: Used,
    serial: Cell<u32>,
}

fn fx() -> Fx {
    let es = test_keys::key(Alg::Es256);
    let ps = test_keys::key(Alg::Ps256);
    let stranger_pem = generate_pkcs8_pem(Alg::Es256).unwrap();
    let stranger = SigningKey::from_pkcs8_pem(&stranger_pem, Alg::Es256, None).unwrap();
    let jwks = Jwks::new(vec![es.public_jwk(), ps.public_jwk()]).unwrap();
    let bsn = Bsn::parse(BSN).unwrap();
    let live = |owner: &str| {
        BaseLookup::Live(BaseBinding {
            case_id: "c-1".into(),
            patient: bsn.clone(),
            owner: Some(OrgId::Ura(owner.into())),
        })
    };
    let bases = Bases(HashMap::from([
        (LIVE_BASE, live("87654321")),
        (ENDED_BASE, BaseLookup::Ended),
        (OTHER_ORG_BASE, live("11223344")),
    ]));
    Fx {
        partners: partners(),
        es,
        ps,
        stranger,
        jwks,
        bases,
        used: Used(HashSet::from([USED_JTI.to_string()])),
        serial: Cell::new(0),
    }
}

/// One token request as the wire would carry it.
#[derive(Clone)]
struct Req {
    partner: Option<&'static str>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Fx {
    fn jti(&self) -> String {
        self.serial.set(self.serial.get() + 1);
        format!("jti-{}", self.serial.get())
    }

    fn client_claims(&self) -> Value {
        json!({
            "iss": B_ISS, "sub": B_CLIENT, "aud": ENDPOINT,
            "iat": NOW, "exp": NOW + 60, "jti": self.jti(),
        })
    }

    fn authz_claims(&self) -> Value {
        json!({
            "iss": B_ISS, "sub": B_ORG, "authorizer": OUR_URA,
            "patient": format!("urn:oid:2.16.840.1.113883.2.4.6.3.{BSN}"),
            "aud": ENDPOINT, "iat": NOW, "exp": NOW + 60, "jti": self.jti(),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.es.sign_jwt(claims.to_string().as_bytes()).unwrap()
    }

    fn with_header(&self, key: &SigningKey, header: Value, claims: &Value) -> String {
        dangerous_sign_with_header(
            key,
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        )
    }

    /// A well-formed jwt-bearer request from hospb with these assertions.
    fn request(&self, client: &str, authz: &str) -> Req {
        self.raw(&[
            ("grant_type", GRANT_JWT_BEARER),
            ("assertion", authz),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", client),
        ])
    }

    /// A request from hospb with exactly these form pairs.
    fn raw(&self, pairs: &[(&str, &str)]) -> Req {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        Req {
            partner: Some("hospb"),
            content_type: Some(FORM.into()),
            body: body.into_bytes(),
        }
    }

    fn good(&self) -> Req {
        self.request(
            &self.sign(&self.client_claims()),
            &self.sign(&self.authz_claims()),
        )
    }

    /// Good authorization assertion, client claims changed by `f`.
    fn client(&self, f: impl Fn(&mut Value)) -> Req {
        let mut c = self.client_claims();
        f(&mut c);
        self.request(&self.sign(&c), &self.sign(&self.authz_claims()))
    }

    /// Good client assertion, authorization claims changed by `f`.
    fn authz(&self, f: impl Fn(&mut Value)) -> Req {
        let mut a = self.authz_claims();
        f(&mut a);
        self.request(&self.sign(&self.client_claims()), &self.sign(&a))
    }

    /// Good authorization assertion, client assertion as given.
    fn client_jwt(&self, jwt: &str) -> Req {
        self.request(jwt, &self.sign(&self.authz_claims()))
    }

    /// Good client assertion, authorization assertion as given.
    fn authz_jwt(&self, jwt: &str) -> Req {
        self.request(&self.sign(&self.client_claims()), jwt)
    }

    fn run(&self, req: &Req) -> Result<Decision, Refusal> {
        let partner = req
            .partner
            .map(|n| self.partners.iter().find(|p| p.name == n).unwrap());
        let admitted = admit(partner, req.content_type.as_deref(), &req.body)?;
        let our_orgs = [OrgId::Ura("12345678".into()), OrgId::Agb("01234567".into())];
        decide(
            &admitted,
            &Context {
                token_endpoint: ENDPOINT,
                our_orgs: &our_orgs,
                keys: &self.jwks,
                bases: &self.bases,
                jtis: &self.used,
                now: NOW,
            },
        )
    }
}

fn unsigned(header: &str, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64::encode(header.as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    )
}

fn flip_last_bit(jwt: &str) -> String {
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let mut bytes = b64::decode(sig).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    format!("{input}.{}", b64::encode(&bytes))
}

fn remove(v: &mut Value, claim: &str) {
    v.as_object_mut().unwrap().remove(claim);
}

/// What a row must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Issued(TokenKind),
    Refused(u16, &'static str, Reason),
}

use Want::{Issued, Refused};

const C: fn(Fault) -> Reason = Reason::Client;
const G: fn(Fault) -> Reason = Reason::Grant;

type Row = (&'static str, fn(&Fx) -> Req, Want);

fn rows() -> Vec<Row> {
    let ic = |f: Fault| Refused(401, "invalid_client", C(f));
    let ig = |f: Fault| Refused(400, "invalid_grant", G(f));
    let ir = |r: Reason| Refused(400, "invalid_request", r);
    let grant = |r: Reason| Refused(400, "invalid_grant", r);
    vec![
        // Issued.
        ("good request", |f| f.good(), Issued(TokenKind::Notify)),
        (
            "content type with charset",
            |f| {
                let mut r = f.good();
                r.content_type = Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8".into());
                r
            },
            Issued(TokenKind::Notify),
        ),
        (
            "client_id equal to sub",
            |f| {
                let mut r = f.good();
                r.body
                    .extend_from_slice(format!("&client_id={B_CLIENT}").as_bytes());
                r
            },
            Issued(TokenKind::Notify),
        ),
        (
            "PS256 client assertion",
            |f| {
                let c =
                    f.ps.sign_jwt(f.client_claims().to_string().as_bytes())
                        .unwrap();
                f.client_jwt(&c)
            },
            Issued(TokenKind::Notify),
        ),
        (
            "aud as array",
            |f| f.client(|c| c["aud"] = json!(["x", ENDPOINT])),
            Issued(TokenKind::Notify),
        ),
        (
            "aud the partner's alias",
            |f| f.authz(|a| a["aud"] = json!(ALIAS)),
            Issued(TokenKind::Notify),
        ),
        (
            "sub as bare OID",
            |f| f.authz(|a| a["sub"] = json!("2.16.528.1.1007.3.3.87654321")),
            Issued(TokenKind::Notify),
        ),
        (
            "sub as plain URA",
            |f| f.authz(|a| a["sub"] = json!("87654321")),
            Issued(TokenKind::Notify),
        ),
        (
            "authorizer our AGB",
            |f| f.authz(|a| a["authorizer"] = json!(OUR_AGB)),
            Issued(TokenKind::Notify),
        ),
        (
            "no patient claim",
            |f| f.authz(|a| remove(a, "patient")),
            Issued(TokenKind::Notify),
        ),
        (
            "user_id null",
            |f| f.authz(|a| a["user_id"] = Value::Null),
            Issued(TokenKind::Notify),
        ),
        (
            "base we never issued: notify token",
            |f| f.authz(|a| a["authorization_base"] = json!("not-ours")),
            Issued(TokenKind::Notify),
        ),
        (
            "live base: pull token",
            |f| f.authz(|a| a["authorization_base"] = json!(LIVE_BASE)),
            Issued(TokenKind::Pull),
        ),
        (
            "live base without patient claim",
            |f| {
                f.authz(|a| {
                    a["authorization_base"] = json!(LIVE_BASE);
                    remove(a, "patient");
                })
            },
            Issued(TokenKind::Pull),
        ),
        (
            "system-addressed partner without authorizer",
            |f| {
                let mut r = f.authz(|a| remove(a, "authorizer"));
                r.partner = Some("hospsys");
                r
            },
            Issued(TokenKind::Notify),
        ),
        // Steps 1–2: who asks, and the form.
        (
            "no partner",
            |f| Req {
                partner: None,
                ..f.good()
            },
            Refused(401, "invalid_client", Reason::NoPartner),
        ),
        (
            "mitz partner",
            |f| Req {
                partner: Some("broker"),
                ..f.good()
            },
            Refused(403, "unauthorized_client", Reason::WrongKind),
        ),
        (
            "zorgviewer partner",
            |f| Req {
                partner: Some("zv"),
                ..f.good()
            },
            Refused(403, "unauthorized_client", Reason::WrongKind),
        ),
        (
            "body over 64 KiB",
            |f| {
                let mut r = f.good();
                r.body.resize(MAX_TOKEN_BODY + 1, b'a');
                r
            },
            Refused(413, "invalid_request", Reason::TooLarge),
        ),
        (
            "no content type",
            |f| Req {
                content_type: None,
                ..f.good()
            },
            ir(Reason::ContentType),
        ),
        (
            "json content type",
            |f| Req {
                content_type: Some("application/json".into()),
                ..f.good()
            },
            ir(Reason::ContentType),
        ),
        (
            "multipart content type",
            |f| Req {
                content_type: Some("multipart/form-data; boundary=x".into()),
                ..f.good()
            },
            ir(Reason::ContentType),
        ),
        (
            "bad percent escape",
            |f| Req {
                body: b"grant_type=%zz".to_vec(),
                ..f.good()
            },
            ir(Reason::BadForm),
        ),
        (
            "truncated percent escape",
            |f| Req {
                body: b"grant_type=%4".to_vec(),
                ..f.good()
            },
            ir(Reason::BadForm),
        ),
        (
            "duplicate grant_type",
            |f| {
                let mut r = f.good();
                r.body.extend_from_slice(b"&grant_type=x");
                r
            },
            ir(Reason::DuplicateParameter),
        ),
        (
            "duplicate assertion",
            |f| {
                let mut r = f.good();
                r.body.extend_from_slice(b"&assertion=x");
                r
            },
            ir(Reason::DuplicateParameter),
        ),
        (
            "no grant_type",
            |f| {
                f.raw(&[
                    ("assertion", "a"),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", "c"),
                ])
            },
            ir(Reason::MissingParameter),
        ),
        (
            "authorization_code grant",
            |f| f.raw(&[("grant_type", "authorization_code"), ("code", "x")]),
            Refused(400, "unsupported_grant_type", Reason::UnsupportedGrantType),
        ),
        (
            "empty grant_type",
            |f| f.raw(&[("grant_type", "")]),
            Refused(400, "unsupported_grant_type", Reason::UnsupportedGrantType),
        ),
        (
            "client_credentials from a twiin partner",
            |f| {
                f.raw(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ])
            },
            Refused(403, "unauthorized_client", Reason::GrantNotForKind),
        ),
        (
            "no client_assertion_type",
            |f| {
                f.raw(&[
                    ("grant_type", GRANT_JWT_BEARER),
                    ("assertion", "a"),
                    ("client_assertion", "c"),
                ])
            },
            ir(Reason::MissingParameter),
        ),
        (
            "saml2 client_assertion_type",
            |f| {
                f.raw(&[
                    ("grant_type", GRANT_JWT_BEARER),
                    ("assertion", "a"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
                    ),
                    ("client_assertion", "c"),
                ])
            },
            ir(Reason::ClientAssertionType),
        ),
        (
            "no client_assertion",
            |f| {
                f.raw(&[
                    ("grant_type", GRANT_JWT_BEARER),
                    ("assertion", "a"),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ])
            },
            ir(Reason::MissingParameter),
        ),
        (
            "empty client_assertion",
            |f| f.request("", "a"),
            ir(Reason::MissingParameter),
        ),
        (
            "no assertion",
            |f| {
                f.raw(&[
                    ("grant_type", GRANT_JWT_BEARER),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", "c"),
                ])
            },
            ir(Reason::MissingParameter),
        ),
        (
            "empty assertion",
            |f| f.request("c", ""),
            ir(Reason::MissingParameter),
        ),
        // Steps 3–4: the client assertion.
        (
            "client_id not the sub",
            |f| {
                let mut r = f.good();
                r.body.extend_from_slice(b"&client_id=someone-else");
                r
            },
            Refused(401, "invalid_client", Reason::ClientId),
        ),
        (
            "client not a JWS",
            |f| f.client_jwt("not-a-jws"),
            ic(Fault::BadJws),
        ),
        (
            "client two segments",
            |f| f.client_jwt("eyJhbGciOiJFUzI1NiJ9.e30"),
            ic(Fault::BadJws),
        ),
        (
            "client alg none",
            |f| {
                f.client_jwt(&unsigned(
                    r#"{"alg":"none","typ":"JWT"}"#,
                    &f.client_claims(),
                ))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "client alg None",
            |f| f.client_jwt(&unsigned(r#"{"alg":"None"}"#, &f.client_claims())),
            ic(Fault::AlgNotAllowed),
        ),
        (
            "client HS256 keyed with the public key",
            |f| {
                let h =
                    b64::encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, f.es.kid()).as_bytes());
                let p = b64::encode(f.client_claims().to_string().as_bytes());
                let secret = f.es.public_jwk().to_json();
                let tag = ring::hmac::sign(
                    &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
                    format!("{h}.{p}").as_bytes(),
                );
                f.client_jwt(&format!("{h}.{p}.{}", b64::encode(tag.as_ref())))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "client RS256 not in the allow-list",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.ps,
                    json!({"alg":"RS256","kid":f.ps.kid()}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "client ES256 header over the RSA key",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.es,
                    json!({"alg":"ES256","kid":f.ps.kid()}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "client signature bit flipped",
            |f| f.client_jwt(&flip_last_bit(&f.sign(&f.client_claims()))),
            ic(Fault::BadSignature),
        ),
        (
            "client PS256 signature bit flipped",
            |f| {
                f.client_jwt(&flip_last_bit(
                    &f.ps
                        .sign_jwt(f.client_claims().to_string().as_bytes())
                        .unwrap(),
                ))
            },
            ic(Fault::BadSignature),
        ),
        (
            "client signed by an unpublished key",
            |f| {
                f.client_jwt(
                    &f.stranger
                        .sign_jwt(f.client_claims().to_string().as_bytes())
                        .unwrap(),
                )
            },
            ic(Fault::UnknownKid),
        ),
        (
            "client unknown kid",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.es,
                    json!({"alg":"ES256","kid":"no-such-kid"}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::UnknownKid),
        ),
        (
            "client published kid, other key's signature",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.stranger,
                    json!({"alg":"ES256","kid":f.es.kid()}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::BadSignature),
        ),
        (
            "client without kid, the JWKS has two keys",
            |f| {
                let header = json!({"alg": "ES256", "typ": "JWT"});
                f.client_jwt(&f.with_header(&f.es, header, &f.client_claims()))
            },
            ic(Fault::KidNotUsable),
        ),
        (
            "authz without kid, the JWKS has two keys",
            |f| {
                let header = json!({"alg": "ES256"});
                f.authz_jwt(&f.with_header(&f.es, header, &f.authz_claims()))
            },
            ig(Fault::KidNotUsable),
        ),
        (
            "client typ at+jwt",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.es,
                    json!({"alg":"ES256","typ":"at+jwt","kid":f.es.kid()}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::BadJws),
        ),
        (
            "client crit header",
            |f| {
                f.client_jwt(&f.with_header(
                    &f.es,
                    json!({"alg":"ES256","kid":f.es.kid(),"crit":["exp"]}),
                    &f.client_claims(),
                ))
            },
            ic(Fault::BadJws),
        ),
        (
            "client iss wrong",
            |f| f.client(|c| c["iss"] = json!("https://evil.example")),
            ic(Fault::Issuer),
        ),
        (
            "client iss missing",
            |f| f.client(|c| remove(c, "iss")),
            ic(Fault::Claims),
        ),
        (
            "client sub wrong",
            |f| f.client(|c| c["sub"] = json!("hospc-client")),
            ic(Fault::Issuer),
        ),
        (
            "client sub missing",
            |f| f.client(|c| remove(c, "sub")),
            ic(Fault::Claims),
        ),
        (
            "client aud wrong",
            |f| f.client(|c| c["aud"] = json!("https://np.hospital-a.example/token")),
            ic(Fault::Audience),
        ),
        (
            "client aud array without ours",
            |f| f.client(|c| c["aud"] = json!(["a", "b"])),
            ic(Fault::Audience),
        ),
        (
            "client aud missing",
            |f| f.client(|c| remove(c, "aud")),
            ic(Fault::Claims),
        ),
        (
            "client exp missing",
            |f| f.client(|c| remove(c, "exp")),
            ic(Fault::Claims),
        ),
        (
            "client exp as string",
            |f| f.client(|c| c["exp"] = json!((NOW + 60).to_string())),
            ic(Fault::Claims),
        ),
        (
            "client iat missing",
            |f| f.client(|c| remove(c, "iat")),
            ic(Fault::Claims),
        ),
        (
            "client jti missing",
            |f| f.client(|c| remove(c, "jti")),
            ic(Fault::Claims),
        ),
        (
            "client claims an array",
            |f| {
                let header = json!({"alg": "ES256", "kid": f.es.kid()}).to_string();
                f.client_jwt(&dangerous_sign_with_header(
                    &f.es,
                    header.as_bytes(),
                    b"[1]",
                ))
            },
            ic(Fault::Claims),
        ),
        (
            "client expired beyond the skew",
            |f| {
                f.client(|c| {
                    c["iat"] = json!(NOW - 200);
                    c["exp"] = json!(NOW - 61);
                })
            },
            ic(Fault::Expired),
        ),
        (
            "client iat beyond the skew",
            |f| {
                f.client(|c| {
                    c["iat"] = json!(NOW + 61);
                    c["exp"] = json!(NOW + 120);
                })
            },
            ic(Fault::NotYetValid),
        ),
        (
            "client nbf beyond the skew",
            |f| f.client(|c| c["nbf"] = json!(NOW + 120)),
            ic(Fault::NotYetValid),
        ),
        (
            "client lifetime over 300 s",
            |f| f.client(|c| c["exp"] = json!(NOW + 301)),
            ic(Fault::Lifetime),
        ),
        (
            "client exp before iat",
            |f| f.client(|c| c["exp"] = json!(NOW - 1)),
            ic(Fault::Lifetime),
        ),
        (
            "client jti used before",
            |f| f.client(|c| c["jti"] = json!(USED_JTI)),
            ic(Fault::Replay),
        ),
        // Step 5: the authorization assertion, the same checks → invalid_grant.
        (
            "authz alg none",
            |f| f.authz_jwt(&unsigned(r#"{"alg":"none"}"#, &f.authz_claims())),
            ig(Fault::AlgNotAllowed),
        ),
        (
            "authz signature bit flipped",
            |f| f.authz_jwt(&flip_last_bit(&f.sign(&f.authz_claims()))),
            ig(Fault::BadSignature),
        ),
        (
            "authz signed by an unpublished key",
            |f| {
                f.authz_jwt(
                    &f.stranger
                        .sign_jwt(f.authz_claims().to_string().as_bytes())
                        .unwrap(),
                )
            },
            ig(Fault::UnknownKid),
        ),
        (
            "authz iss wrong",
            |f| f.authz(|a| a["iss"] = json!("https://evil.example")),
            ig(Fault::Issuer),
        ),
        (
            "authz aud wrong",
            |f| f.authz(|a| a["aud"] = json!("https://other/oauth/token")),
            ig(Fault::Audience),
        ),
        (
            "authz expired",
            |f| {
                f.authz(|a| {
                    a["iat"] = json!(NOW - 400);
                    a["exp"] = json!(NOW - 300);
                })
            },
            ig(Fault::Expired),
        ),
        (
            "authz lifetime an hour",
            |f| f.authz(|a| a["exp"] = json!(NOW + 3_600)),
            ig(Fault::Lifetime),
        ),
        (
            "authz exp as string",
            |f| f.authz(|a| a["exp"] = json!("soon")),
            ig(Fault::Claims),
        ),
        (
            "authz jti used before",
            |f| f.authz(|a| a["jti"] = json!(USED_JTI)),
            ig(Fault::Replay),
        ),
        // Step 6: the authorization claims.
        (
            "authz sub another organisation",
            |f| f.authz(|a| a["sub"] = json!(C_ORG)),
            grant(Reason::Org),
        ),
        (
            "authz sub not an organisation",
            |f| f.authz(|a| a["sub"] = json!("hospb")),
            grant(Reason::Org),
        ),
        (
            "authz sub missing",
            |f| f.authz(|a| remove(a, "sub")),
            ig(Fault::Claims),
        ),
        (
            "authz sub a BSN OID",
            |f| f.authz(|a| a["sub"] = json!(format!("2.16.840.1.113883.2.4.6.3.{BSN}"))),
            grant(Reason::Org),
        ),
        (
            "authz authorizer another party",
            |f| f.authz(|a| a["authorizer"] = json!(B_ORG)),
            grant(Reason::Authorizer),
        ),
        (
            "authz authorizer garbage",
            |f| f.authz(|a| a["authorizer"] = json!("ours")),
            grant(Reason::Authorizer),
        ),
        (
            "authz authorizer missing",
            |f| f.authz(|a| remove(a, "authorizer")),
            grant(Reason::Authorizer),
        ),
        (
            "authz patient fails the 11-test",
            |f| f.authz(|a| a["patient"] = json!("urn:oid:2.16.840.1.113883.2.4.6.3.123456789")),
            grant(Reason::Patient),
        ),
        (
            "authz patient a bare BSN",
            |f| f.authz(|a| a["patient"] = json!(BSN)),
            grant(Reason::Patient),
        ),
        (
            "authz cancelled base",
            |f| f.authz(|a| a["authorization_base"] = json!(ENDED_BASE)),
            grant(Reason::BaseEnded),
        ),
        (
            "authz base of another organisation",
            |f| f.authz(|a| a["authorization_base"] = json!(OTHER_ORG_BASE)),
            grant(Reason::BaseOrg),
        ),
        (
            "authz base of another patient",
            |f| {
                f.authz(|a| {
                    a["authorization_base"] = json!(LIVE_BASE);
                    a["patient"] = json!(format!("urn:oid:2.16.840.1.113883.2.4.6.3.{OTHER_BSN}"));
                })
            },
            grant(Reason::BasePatient),
        ),
    ]
}

#[test]
fn every_row_gets_its_answer() {
    let f = fx();
    let rows = rows();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    let refusals = rows.iter().filter(|r| matches!(r.2, Refused(..))).count();
    assert!(refusals >= 60, "{refusals} refusal rows");
    let mut wrong = Vec::new();
    for (name, build, want) in &rows {
        let got = match f.run(&build(&f)) {
            Ok(d) => Issued(d.grant.kind()),
            Err(r) => Refused(r.status(), r.error(), r.reason),
        };
        if got != *want {
            wrong.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows wrong:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
}

#[test]
fn a_decision_names_what_the_caller_records() {
    let f = fx();
    let mut client = f.client_claims();
    client["jti"] = json!("client-jti");
    let mut authz = f.authz_claims();
    authz["jti"] = json!("authz-jti");
    authz["authorization_base"] = json!(LIVE_BASE);
    authz["user_id"] = json!("dr-who");
    let d = f
        .run(&f.request(&f.sign(&client), &f.sign(&authz)))
        .unwrap();
    let jtis: Vec<_> = d
        .jtis
        .iter()
        .map(|j| (j.assertion, j.iss.as_str(), j.jti.as_str(), j.forget_after))
        .collect();
    assert_eq!(
        jtis,
        [
            (Assertion::Client, B_ISS, "client-jti", NOW + 60 + 60),
            (Assertion::Authorization, B_ISS, "authz-jti", NOW + 60 + 60),
        ]
    );
    assert_eq!(d.user_id.as_deref(), Some("dr-who"));
    let g = &d.grant;
    assert_eq!(g.kind(), TokenKind::Pull);
    assert_eq!(g.partner(), "hospb");
    assert_eq!(g.client_id(), B_CLIENT);
    assert_eq!(g.requesting_org(), &OrgId::Ura("87654321".into()));
    assert_eq!(g.authorizer(), Some(&OrgId::Ura("12345678".into())));
    assert_eq!(g.patient().map(Bsn::as_str), Some(BSN));
    assert_eq!(
        (g.authorization_base(), g.case_id()),
        (Some(LIVE_BASE), Some("c-1"))
    );
}

#[test]
fn the_first_failure_ends_the_request() {
    let f = fx();
    // A replayed client jti and a bad authorization assertion: the client
    // assertion is step 4, before step 5.
    let mut c = f.client_claims();
    c["jti"] = json!(USED_JTI);
    let r = f.run(&f.request(&f.sign(&c), "garbage")).unwrap_err();
    assert_eq!(r.reason, Reason::Client(Fault::Replay));
    // A wrong content type wins over a malformed body.
    let r = f
        .run(&Req {
            content_type: Some("text/plain".into()),
            body: b"%zz".to_vec(),
            partner: Some("hospb"),
        })
        .unwrap_err();
    assert_eq!(r.reason, Reason::ContentType);
    // A partner of the wrong kind learns nothing about its form.
    let r = f
        .run(&Req {
            content_type: None,
            body: b"%zz".to_vec(),
            partner: Some("broker"),
        })
        .unwrap_err();
    assert_eq!(r.reason, Reason::WrongKind);
}

#[test]
fn refusals_name_the_assertion_and_no_patient() {
    let f = fx();
    let r = f
        .run(&f.authz(|a| a["authorization_base"] = json!(ENDED_BASE)))
        .unwrap_err();
    assert_eq!(r.description, "authorization_base cancelled or expired");
    let r = f
        .run(&f.client(|c| c["exp"] = json!(NOW + 301)))
        .unwrap_err();
    assert!(
        r.description.starts_with("client assertion: "),
        "{}",
        r.description
    );
    let r = f
        .run(&f.authz(|a| a["patient"] = json!("urn:oid:2.16.840.1.113883.2.4.6.3.123456789")))
        .unwrap_err();
    assert!(!r.description.contains("123456789"), "{}", r.description);
    assert_eq!(
        Refusal::replayed(Assertion::Authorization).to_string(),
        "400 invalid_grant (grant_replay): authorization assertion: jti was used before"
    );
}

#[test]
fn every_reason_has_a_status_code_and_label() {
    let faults = [
        Fault::UnknownKid,
        Fault::KidNotUsable,
        Fault::BadSignature,
        Fault::AlgNotAllowed,
        Fault::BadJws,
        Fault::Expired,
        Fault::NotYetValid,
        Fault::Lifetime,
        Fault::Audience,
        Fault::Issuer,
        Fault::Claims,
        Fault::Replay,
    ];
    let mut reasons = vec![
        (Reason::NoPartner, 401, "invalid_client"),
        (Reason::WrongKind, 403, "unauthorized_client"),
        (Reason::GrantNotForKind, 403, "unauthorized_client"),
        (Reason::TooLarge, 413, "invalid_request"),
        (Reason::ContentType, 400, "invalid_request"),
        (Reason::DuplicateParameter, 400, "invalid_request"),
        (Reason::BadForm, 400, "invalid_request"),
        (Reason::MissingParameter, 400, "invalid_request"),
        (Reason::UnsupportedGrantType, 400, "unsupported_grant_type"),
        (Reason::ClientAssertionType, 400, "invalid_request"),
        (Reason::ClientId, 401, "invalid_client"),
        (Reason::Org, 400, "invalid_grant"),
        (Reason::Authorizer, 400, "invalid_grant"),
        (Reason::Patient, 400, "invalid_grant"),
        (Reason::BaseEnded, 400, "invalid_grant"),
        (Reason::BaseOrg, 400, "invalid_grant"),
        (Reason::BasePatient, 400, "invalid_grant"),
        (Reason::KeysUnavailable, 503, "temporarily_unavailable"),
        (Reason::ServerError, 503, "temporarily_unavailable"),
    ];
    reasons.extend(
        faults
            .iter()
            .map(|f| (Reason::Client(*f), 401, "invalid_client")),
    );
    reasons.extend(
        faults
            .iter()
            .map(|f| (Reason::Grant(*f), 400, "invalid_grant")),
    );
    for (r, status, code) in reasons {
        assert_eq!((r.status(), r.error().code()), (status, code), "{r:?}");
        let label = r.label();
        assert!(
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
    }
}
