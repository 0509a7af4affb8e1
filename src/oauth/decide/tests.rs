//! The token decision as a table: each row one request, the answer it must
//! get. No socket, no file, no clock: keys, bases and used `jti`s are values.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::*;
use crate::config::{AllowFrom, AssertionPolicy, CertSelector, Consent, Kind, Mitz, Zorgviewer};
use crate::ids::IdScheme;
use crate::jose::test_keys::{self, dangerous_sign_with_header};
use crate::jose::{Alg, SigningKey, generate_pkcs8_pem};
use crate::oauth::{Interaction, TokenKind};
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
/// The Zorgviewer's client id (its `iss` and `sub`).
const ZV_CLIENT: &str = "zorgviewer-client";
/// An extra `aud` the Zorgviewer partner may use.
const ZV_ALIAS: &str = "https://zv-alias.example/token";
/// The requesting organisation of the Zorgviewer user (UMCG).
const ZV_ORG: &str = "urn:oid:2.16.840.1.113883.2.4.3.8";
/// What the Zorgviewer asks by default.
const ZV_SCOPE: &str = "user/Patient.read user/Binary.read user/Observation.search";
/// The Zorgviewer's published egress addresses, and loopback for the tests.
const ZV_ALLOW_FROM: &str = "20.160.170.124/31, 127.0.0.0/8";

fn twiin(name: &str, org: &str, address_system: bool) -> Partner {
    Partner {
        name: name.into(),
        cert: Some(CertSelector::Dns(format!("{name}.example"))),
        allow_from: AllowFrom::any(),
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
            cert: Some(CertSelector::Dns("broker.example".into())),
            allow_from: AllowFrom::any(),
            kind: PartnerKind::Mitz(Mitz::default()),
        },
        Partner {
            name: "zv".into(),
            cert: Some(CertSelector::Dns("zv.example".into())),
            allow_from: AllowFrom::parse(ZV_ALLOW_FROM).unwrap(),
            kind: PartnerKind::Zorgviewer(Zorgviewer {
                assertions: AssertionPolicy {
                    issuer: ZV_CLIENT.into(),
                    client_id: ZV_CLIENT.into(),
                    jwks_url: Some("https://zv.example/jwks".into()),
                    audiences: vec![ZV_ALIAS.into()],
                    accept_algs: crate::config::default_accept_algs(Kind::Zorgviewer),
                },
                consent: Consent::Mitz,
                provider_category: "RPZAC104".into(),
                requester_category: None,
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

/// Partner B's keys (ES256 and PS256, both published), the Zorgviewer's
/// (ES384 and RS384, both published; RS256 over the same RSA key, not
/// published), a key of another party (never published), and the lookups.
struct Fx {
    partners: Vec<Partner>,
    es: SigningKey,
    ps: SigningKey,
    stranger: SigningKey,
    jwks: Jwks,
    zv_es: SigningKey,
    zv_rs: SigningKey,
    zv_rs256: SigningKey,
    zv_jwks: Jwks,
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
    let zv_es = test_keys::key(Alg::Es384);
    let zv_rs = test_keys::key(Alg::Rs384);
    let zv_rs256 = test_keys::key(Alg::Rs256);
    let zv_jwks = Jwks::new(vec![zv_es.public_jwk(), zv_rs.public_jwk()]).unwrap();
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
        zv_es,
        zv_rs,
        zv_rs256,
        zv_jwks,
        bases,
        used: Used(HashSet::from([USED_JTI.to_string()])),
        serial: Cell::new(0),
    }
}

/// One token request as the wire would carry it.
#[derive(Clone)]
struct Req {
    partner: Option<&'static str>,
    /// The address the connection comes from.
    peer: &'static str,
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
            peer: "127.0.0.1",
            content_type: Some(FORM.into()),
            body: body.into_bytes(),
        }
    }

    fn zv_claims(&self) -> Value {
        json!({
            "iss": ZV_CLIENT, "sub": ZV_CLIENT, "aud": ENDPOINT,
            "iat": NOW, "exp": NOW + 60, "jti": self.jti(),
            "subject_organization_id": ZV_ORG,
            "subject_organization": "UMCG",
            "subject_name": "J. Jansen",
            "subject_role": [{"system": "http://snomed.info/sct", "code": "309343006", "display": "Arts"}],
        })
    }

    /// A client_credentials request from the Zorgviewer with these pairs.
    fn zv_raw(&self, pairs: &[(&str, &str)]) -> Req {
        Req {
            partner: Some("zv"),
            ..self.raw(pairs)
        }
    }

    /// A client_credentials request with this assertion and scope.
    fn zv_request(&self, client: &str, scope: Option<&str>) -> Req {
        let mut pairs = vec![
            ("grant_type", GRANT_CLIENT_CREDENTIALS),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", client),
        ];
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        self.zv_raw(&pairs)
    }

    fn zv_sign(&self, claims: &Value) -> String {
        self.zv_es.sign_jwt(claims.to_string().as_bytes()).unwrap()
    }

    fn zv_good(&self) -> Req {
        self.zv_request(&self.zv_sign(&self.zv_claims()), Some(ZV_SCOPE))
    }

    /// Good scope, assertion claims changed by `f`.
    fn zv(&self, f: impl Fn(&mut Value)) -> Req {
        let mut c = self.zv_claims();
        f(&mut c);
        self.zv_request(&self.zv_sign(&c), Some(ZV_SCOPE))
    }

    /// Good scope, the assertion as given.
    fn zv_jwt(&self, jwt: &str) -> Req {
        self.zv_request(jwt, Some(ZV_SCOPE))
    }

    /// Good assertion, this scope.
    fn zv_scope(&self, scope: &str) -> Req {
        self.zv_request(&self.zv_sign(&self.zv_claims()), Some(scope))
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
        let peer: IpAddr = req.peer.parse().unwrap();
        let admitted = admit(partner, peer, req.content_type.as_deref(), &req.body)?;
        let our_orgs = [OrgId::Ura("12345678".into()), OrgId::Agb("01234567".into())];
        let keys = match req.partner {
            Some("zv") => &self.zv_jwks,
            _ => &self.jwks,
        };
        decide(
            &admitted,
            &Context {
                token_endpoint: ENDPOINT,
                our_orgs: &our_orgs,
                keys,
                bases: &self.bases,
                jtis: &self.used,
                cert_sha256: CLIENT_CERT,
                now: NOW,
            },
        )
    }
}

/// SHA-256 of the TLS client certificate every test request comes over.
const CLIENT_CERT: [u8; 32] = [0x5c; 32];

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
            "jwt-bearer from the zorgviewer partner",
            |f| Req {
                partner: Some("zv"),
                ..f.good()
            },
            Refused(403, "unauthorized_client", Reason::GrantNotForKind),
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

/// `client_credentials` (Zorgviewer, SMART backend services).
fn zorgviewer_rows() -> Vec<Row> {
    let zv = Issued(TokenKind::Zorgviewer);
    let ic = |f: Fault| Refused(401, "invalid_client", C(f));
    let scope = |r: Reason| Refused(400, "invalid_scope", r);
    let org = Refused(401, "invalid_client", Reason::SubjectOrganization);
    vec![
        // Issued.
        ("zv good request (ES384)", |f| f.zv_good(), zv),
        (
            "zv RS384 assertion",
            |f| {
                let c = f
                    .zv_rs
                    .sign_jwt(f.zv_claims().to_string().as_bytes())
                    .unwrap();
                f.zv_jwt(&c)
            },
            zv,
        ),
        (
            "zv aud the partner's alias",
            |f| f.zv(|c| c["aud"] = json!(ZV_ALIAS)),
            zv,
        ),
        (
            "zv aud as array",
            |f| f.zv(|c| c["aud"] = json!(["https://other.example", ENDPOINT])),
            zv,
        ),
        (
            "zv subject_organization_id as bare OID",
            |f| f.zv(|c| c["subject_organization_id"] = json!("2.16.840.1.113883.2.4.3.8")),
            zv,
        ),
        (
            "zv only subject_organization_id",
            |f| {
                f.zv(|c| {
                    remove(c, "subject_organization");
                    remove(c, "subject_name");
                    remove(c, "subject_role");
                })
            },
            zv,
        ),
        (
            "zv IUA claims under extensions.ihe_iua",
            |f| {
                f.zv(|c| {
                    let org = c["subject_organization_id"].take();
                    remove(c, "subject_organization_id");
                    c["extensions"] = json!({"ihe_iua": {"subject_organization_id": org}});
                })
            },
            zv,
        ),
        (
            "zv subject_role as codes",
            |f| f.zv(|c| c["subject_role"] = json!(["309343006", "62247001"])),
            zv,
        ),
        (
            "zv client_id equal to sub",
            |f| {
                let mut r = f.zv_good();
                r.body
                    .extend_from_slice(format!("&client_id={ZV_CLIENT}").as_bytes());
                r
            },
            zv,
        ),
        (
            "zv scope with patient/ and write tokens left out",
            |f| f.zv_scope("patient/Observation.read user/Patient.read user/Patient.write"),
            zv,
        ),
        ("zv scope system/*.*", |f| f.zv_scope("system/*.*"), zv),
        ("zv scope user/*.read", |f| f.zv_scope("user/*.read"), zv),
        ("zv scope user/*.*", |f| f.zv_scope("user/*.*"), zv),
        (
            "zv scope user/Condition.*",
            |f| f.zv_scope("user/Condition.*"),
            zv,
        ),
        (
            "zv from its published egress address",
            |f| Req {
                peer: "20.160.170.125",
                ..f.zv_good()
            },
            zv,
        ),
        (
            "zv from its egress address, IPv4-mapped",
            |f| Req {
                peer: "::ffff:20.160.170.124",
                ..f.zv_good()
            },
            zv,
        ),
        (
            "zv exp 359 s ahead, iat inside the skew",
            |f| {
                f.zv(|c| {
                    c["iat"] = json!(NOW + 59);
                    c["exp"] = json!(NOW + 359);
                })
            },
            zv,
        ),
        // Who asks, from where, with which grant.
        (
            "zv from another address",
            |f| Req {
                peer: "10.0.0.1",
                ..f.zv_good()
            },
            Refused(401, "invalid_client", Reason::AddressNotAllowed),
        ),
        (
            "zv from the address next to its egress pair",
            |f| Req {
                peer: "20.160.170.126",
                ..f.zv_good()
            },
            Refused(401, "invalid_client", Reason::AddressNotAllowed),
        ),
        (
            "zv from IPv6",
            |f| Req {
                peer: "2001:db8::1",
                ..f.zv_good()
            },
            Refused(401, "invalid_client", Reason::AddressNotAllowed),
        ),
        (
            "client_credentials from a twiin partner with a good assertion",
            |f| Req {
                partner: Some("hospb"),
                ..f.zv_good()
            },
            Refused(403, "unauthorized_client", Reason::GrantNotForKind),
        ),
        (
            "client_credentials from a mitz partner",
            |f| Req {
                partner: Some("broker"),
                ..f.zv_good()
            },
            Refused(403, "unauthorized_client", Reason::WrongKind),
        ),
        (
            "jwt-bearer from zv with its own assertion",
            |f| {
                let c = f.zv_sign(&f.zv_claims());
                Req {
                    partner: Some("zv"),
                    ..f.request(&c, &c)
                }
            },
            Refused(403, "unauthorized_client", Reason::GrantNotForKind),
        ),
        // The form.
        (
            "zv no client_assertion_type",
            |f| {
                f.zv_raw(&[
                    ("grant_type", GRANT_CLIENT_CREDENTIALS),
                    ("scope", ZV_SCOPE),
                    ("client_assertion", "c"),
                ])
            },
            Refused(400, "invalid_request", Reason::MissingParameter),
        ),
        (
            "zv saml2 client_assertion_type",
            |f| {
                f.zv_raw(&[
                    ("grant_type", GRANT_CLIENT_CREDENTIALS),
                    ("scope", ZV_SCOPE),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
                    ),
                    ("client_assertion", "c"),
                ])
            },
            Refused(400, "invalid_request", Reason::ClientAssertionType),
        ),
        (
            "zv no client_assertion",
            |f| {
                f.zv_raw(&[
                    ("grant_type", GRANT_CLIENT_CREDENTIALS),
                    ("scope", ZV_SCOPE),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ])
            },
            Refused(400, "invalid_request", Reason::MissingParameter),
        ),
        (
            "zv duplicate scope",
            |f| {
                let mut r = f.zv_good();
                r.body.extend_from_slice(b"&scope=user%2FPatient.read");
                r
            },
            Refused(400, "invalid_request", Reason::DuplicateParameter),
        ),
        // The client assertion.
        (
            "zv HS256 assertion",
            |f| {
                let h = b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
                let p = b64::encode(f.zv_claims().to_string().as_bytes());
                let tag = ring::hmac::sign(
                    &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shared-secret"),
                    format!("{h}.{p}").as_bytes(),
                );
                f.zv_jwt(&format!("{h}.{p}.{}", b64::encode(tag.as_ref())))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "zv alg none",
            |f| f.zv_jwt(&unsigned(r#"{"alg":"none","typ":"JWT"}"#, &f.zv_claims())),
            ic(Fault::AlgNotAllowed),
        ),
        (
            "zv RS256 not in the allow-list",
            |f| {
                f.zv_jwt(&f.with_header(
                    &f.zv_rs256,
                    json!({"alg":"RS256","kid":f.zv_rs.kid()}),
                    &f.zv_claims(),
                ))
            },
            ic(Fault::AlgNotAllowed),
        ),
        (
            "zv signature bit flipped",
            |f| f.zv_jwt(&flip_last_bit(&f.zv_sign(&f.zv_claims()))),
            ic(Fault::BadSignature),
        ),
        (
            "zv unknown kid",
            |f| {
                f.zv_jwt(&f.with_header(
                    &f.zv_es,
                    json!({"alg":"ES384","kid":"no-such-kid"}),
                    &f.zv_claims(),
                ))
            },
            ic(Fault::UnknownKid),
        ),
        (
            "zv signed with hospb's key",
            |f| f.zv_jwt(&f.sign(&f.zv_claims())),
            ic(Fault::UnknownKid),
        ),
        (
            "zv aud wrong",
            |f| f.zv(|c| c["aud"] = json!("https://np.hospital-a.example/fhir")),
            ic(Fault::Audience),
        ),
        (
            "zv aud missing",
            |f| f.zv(|c| remove(c, "aud")),
            ic(Fault::Claims),
        ),
        (
            "zv jti used before",
            |f| f.zv(|c| c["jti"] = json!(USED_JTI)),
            ic(Fault::Replay),
        ),
        (
            "zv jti missing",
            |f| f.zv(|c| remove(c, "jti")),
            ic(Fault::Claims),
        ),
        (
            "zv expired",
            |f| {
                f.zv(|c| {
                    c["iat"] = json!(NOW - 200);
                    c["exp"] = json!(NOW - 61);
                })
            },
            ic(Fault::Expired),
        ),
        (
            "zv exp more than 5 minutes ahead",
            |f| f.zv(|c| c["exp"] = json!(NOW + 301)),
            ic(Fault::Lifetime),
        ),
        (
            "zv exp 6 minutes ahead, iat inside the skew",
            |f| {
                f.zv(|c| {
                    c["iat"] = json!(NOW + 59);
                    c["exp"] = json!(NOW + 360);
                })
            },
            ic(Fault::Lifetime),
        ),
        (
            "zv exp 6 minutes ahead, iat past the skew",
            |f| {
                f.zv(|c| {
                    c["iat"] = json!(NOW + 61);
                    c["exp"] = json!(NOW + 361);
                })
            },
            ic(Fault::NotYetValid),
        ),
        (
            "zv exp missing",
            |f| f.zv(|c| remove(c, "exp")),
            ic(Fault::Claims),
        ),
        (
            "zv iss not the client id (iss != sub)",
            |f| f.zv(|c| c["iss"] = json!("https://auth.zorgviewer.nl")),
            ic(Fault::Issuer),
        ),
        (
            "zv sub not the client id (iss != sub)",
            |f| f.zv(|c| c["sub"] = json!("another-client")),
            ic(Fault::Issuer),
        ),
        (
            "zv client_id not the sub",
            |f| {
                let mut r = f.zv_good();
                r.body.extend_from_slice(b"&client_id=someone-else");
                r
            },
            Refused(401, "invalid_client", Reason::ClientId),
        ),
        // The IUA claims.
        (
            "zv no subject_organization_id",
            |f| f.zv(|c| remove(c, "subject_organization_id")),
            org,
        ),
        (
            "zv subject_organization_id null",
            |f| f.zv(|c| c["subject_organization_id"] = Value::Null),
            org,
        ),
        (
            "zv subject_organization_id a name",
            |f| f.zv(|c| c["subject_organization_id"] = json!("UMCG")),
            org,
        ),
        (
            "zv subject_organization_id a URA number",
            |f| f.zv(|c| c["subject_organization_id"] = json!("87654321")),
            org,
        ),
        (
            "zv subject_organization_id empty",
            |f| f.zv(|c| c["subject_organization_id"] = json!("")),
            org,
        ),
        (
            "zv subject_organization_id a number",
            |f| f.zv(|c| c["subject_organization_id"] = json!(2.16)),
            ic(Fault::Claims),
        ),
        (
            "zv subject_role a number",
            |f| f.zv(|c| c["subject_role"] = json!(309343006)),
            ic(Fault::Claims),
        ),
        (
            "zv subject_role of nine codes",
            |f| f.zv(|c| c["subject_role"] = json!(vec!["1"; 9])),
            ic(Fault::Claims),
        ),
        // The scope.
        (
            "zv no scope",
            |f| f.zv_request(&f.zv_sign(&f.zv_claims()), None),
            scope(Reason::ScopeMissing),
        ),
        (
            "zv empty scope",
            |f| f.zv_scope(""),
            scope(Reason::ScopeMissing),
        ),
        (
            "zv scope openid",
            |f| f.zv_scope("openid user/Patient.read"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope launch/patient",
            |f| f.zv_scope("launch/patient"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope of an unknown type",
            |f| f.zv_scope("user/Foo.read"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope of an R4-only type",
            |f| f.zv_scope("user/ServiceRequest.read"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope of a lower-case type",
            |f| f.zv_scope("user/patient.read"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope SMART v2 permission",
            |f| f.zv_scope("user/Patient.rs"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope without permission",
            |f| f.zv_scope("user/Patient"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope of another context",
            |f| f.zv_scope("admin/Patient.read"),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope of 65 tokens",
            |f| f.zv_scope(&vec!["user/Patient.read"; 65].join(" ")),
            scope(Reason::InvalidScope),
        ),
        (
            "zv scope only patient/",
            |f| f.zv_scope("patient/*.read"),
            scope(Reason::ScopeNotGranted),
        ),
        (
            "zv scope only write",
            |f| f.zv_scope("user/Patient.write system/*.write"),
            scope(Reason::ScopeNotGranted),
        ),
    ]
}

#[test]
fn every_client_credentials_row_gets_its_answer() {
    let f = fx();
    let rows = zorgviewer_rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    let refusals = rows.iter().filter(|r| matches!(r.2, Refused(..))).count();
    assert!(refusals >= 30, "{refusals} refusal rows");
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
fn a_zorgviewer_decision_carries_scopes_and_iua_claims() {
    let f = fx();
    let mut c = f.zv_claims();
    c["jti"] = json!("zv-jti");
    let d = f
        .run(&f.zv_request(
            &f.zv_sign(&c),
            Some("user/Patient.read patient/Observation.read user/Observation.search user/Patient.read"),
        ))
        .unwrap();
    let jtis: Vec<_> = d
        .jtis
        .iter()
        .map(|j| (j.assertion, j.iss.as_str(), j.jti.as_str(), j.forget_after))
        .collect();
    assert_eq!(
        jtis,
        [(Assertion::Client, ZV_CLIENT, "zv-jti", NOW + 60 + 60)]
    );
    assert_eq!(d.user_id, None);
    let g = &d.grant;
    assert_eq!(g.kind(), TokenKind::Zorgviewer);
    assert_eq!((g.partner(), g.client_id()), ("zv", ZV_CLIENT));
    assert_eq!(g.requesting_org_claim(), ZV_ORG);
    assert_eq!(g.patient(), None);
    assert_eq!(
        g.cert_sha256(),
        Some(&CLIENT_CERT),
        "bound to the certificate"
    );
    let z = g.zorgviewer_access().unwrap();
    assert_eq!(
        z.scopes().to_string(),
        "user/Patient.read user/Observation.search",
        "granted: what we support, once each, in the order asked"
    );
    assert!(z.allows("Patient", Interaction::Search));
    assert!(z.allows("Observation", Interaction::Search));
    assert!(!z.allows("Observation", Interaction::Read));
    assert!(!z.allows("Binary", Interaction::Read));
    assert_eq!(
        z.subject_organization_id().as_str(),
        "2.16.840.1.113883.2.4.3.8"
    );
    assert_eq!(z.subject_organization(), Some("UMCG"));
    assert_eq!(z.subject_name(), Some("J. Jansen"));
    assert_eq!(z.subject_role(), ["309343006"]);
}

#[test]
fn zorgviewer_refusals_say_what_is_wrong_and_nothing_secret() {
    let f = fx();
    let r = f
        .run(&f.zv(|c| remove(c, "subject_organization_id")))
        .unwrap_err();
    assert_eq!(
        r.to_string(),
        "401 invalid_client (subject_organization): client assertion: subject_organization_id is missing"
    );
    let r = f.run(&f.zv_scope("user/Foo.read")).unwrap_err();
    assert_eq!(
        r.to_string(),
        "400 invalid_scope (invalid_scope): scope \"user/Foo.read\" names no FHIR STU3 resource type"
    );
    let r = f
        .run(&Req {
            peer: "10.0.0.1",
            ..f.zv_good()
        })
        .unwrap_err();
    assert_eq!(
        r.description,
        "the TLS client certificate of partner zv is not accepted from 10.0.0.1"
    );
    let jwt = f.zv_sign(&f.zv_claims());
    let r = f
        .run(&f.zv_request(&flip_last_bit(&jwt), Some(ZV_SCOPE)))
        .unwrap_err();
    assert!(!r.description.contains(&jwt[..20]), "{}", r.description);
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
    assert_eq!(g.requesting_org(), Some(&OrgId::Ura("87654321".into())));
    assert_eq!(g.authorizer(), Some(&OrgId::Ura("12345678".into())));
    assert_eq!(g.patient().map(Bsn::as_str), Some(BSN));
    assert_eq!(
        (g.authorization_base(), g.case_id()),
        (Some(LIVE_BASE), Some("c-1"))
    );
    assert_eq!(
        g.cert_sha256(),
        Some(&CLIENT_CERT),
        "bound to the certificate"
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
            peer: "127.0.0.1",
        })
        .unwrap_err();
    assert_eq!(r.reason, Reason::ContentType);
    // A partner of the wrong kind learns nothing about its form.
    let r = f
        .run(&Req {
            content_type: None,
            body: b"%zz".to_vec(),
            partner: Some("broker"),
            peer: "127.0.0.1",
        })
        .unwrap_err();
    assert_eq!(r.reason, Reason::WrongKind);
    // A certificate from an address its partner does not list learns
    // nothing else either.
    let r = f
        .run(&Req {
            content_type: None,
            body: b"%zz".to_vec(),
            partner: Some("zv"),
            peer: "10.0.0.1",
        })
        .unwrap_err();
    assert_eq!(r.reason, Reason::AddressNotAllowed);
    // The client is authenticated before the scope is looked at: a bad
    // assertion with a bad scope is an invalid_client.
    let mut c = f.zv_claims();
    c["aud"] = json!("https://elsewhere.example/token");
    let r = f
        .run(&f.zv_request(&f.zv_sign(&c), Some("openid")))
        .unwrap_err();
    assert_eq!(r.reason, Reason::Client(Fault::Audience));
    let r = f
        .run(&f.zv(|c| remove(c, "subject_organization_id")))
        .unwrap_err();
    assert_eq!(r.reason, Reason::SubjectOrganization);
    let mut c = f.zv_claims();
    remove(&mut c, "subject_organization_id");
    let r = f.run(&f.zv_request(&f.zv_sign(&c), None)).unwrap_err();
    assert_eq!(
        r.reason,
        Reason::SubjectOrganization,
        "organisation before scope"
    );
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
        (Reason::AddressNotAllowed, 401, "invalid_client"),
        (Reason::SubjectOrganization, 401, "invalid_client"),
        (Reason::ScopeMissing, 400, "invalid_scope"),
        (Reason::InvalidScope, 400, "invalid_scope"),
        (Reason::ScopeNotGranted, 400, "invalid_scope"),
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
