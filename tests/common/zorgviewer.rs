//! A Zorgviewer-like client for integration tests: a partner with its own
//! certificate and signing keys, its JWKS served over mTLS, that gets a
//! `client_credentials` token and sends FHIR requests as Zorgviewer does
//! (spec zorgviewer.md §2–§6): every X-ZV header, a signed `X-ZV-Context`
//! that agrees with them, Epic's `AORTA-ID`, a session's correlation id.
//! Answers are read off the wire ([`Resp`]); the agent's audit trail is read
//! back as JSON ([`audit`]).

use std::path::Path;

use np_agent::jose::{Alg, SigningKey};
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{random, time::now_unix};
use serde_json::{Value, json};

use super::agent::{AgentSetup, JwksServer, Party, World};

pub const FHIR_JSON: &str = "application/fhir+json";
pub const SCT: &str = "http://snomed.info/sct";
/// What Zorgviewer asks a source for (spec §2).
pub const SCOPES: &str = "user/Patient.read user/Practitioner.read user/Specimen.read user/Binary.read \
    user/Condition.search user/Observation.search user/Encounter.search \
    user/EpisodeOfCare.search user/Composition.search user/DocumentReference.search \
    user/AllergyIntolerance.search user/MedicationStatement.search user/Medication.read \
    user/Procedure.search user/Immunization.search user/Flag.search user/Coverage.search \
    user/Organization.read";

/// The Zorgviewer user on whose behalf a request is made.
pub struct User {
    /// The organisation: bare OID (the token's `subject_organization_id`).
    pub org: &'static str,
    pub ura: &'static str,
    pub id: &'static str,
    pub role: &'static str,
}

/// A practitioner of an organisation with a URA OID, as Zorgviewer names
/// its users.
pub const USER: User = User {
    org: "2.16.528.1.1007.3.3.11223344",
    ura: "11223344",
    id: "smart-Practitioner-71614502",
    role: "223366009",
};

/// A Zorgviewer partner: its certificate and keys (ES384 and RS384), its
/// JWKS served over mTLS, and one kept-alive HTTP client.
pub struct Viewer {
    pub party: Party,
    _jwks: JwksServer,
    pub http: ureq::Agent,
    /// The session's `X-Correlation-Id`.
    pub session: String,
}

impl Viewer {
    /// Zorgviewer partner `name` with URA `ura`, made known to `setup`
    /// (`AgentSetup::add_zorgviewer`: consent and the other keys at their
    /// defaults).
    pub fn new(world: &World, dir: &Path, setup: &mut AgentSetup, name: &str, ura: &str) -> Viewer {
        let party = Party::new(world, dir, name, ura, &[Alg::Es384, Alg::Rs384]);
        let jwks = party.serve_jwks();
        setup.add_zorgviewer(&party, &jwks);
        let http = party.client();
        Viewer {
            party,
            _jwks: jwks,
            http,
            session: nano_id(),
        }
    }

    /// Client assertion claims of this viewer for `setup`'s agent.
    pub fn assertion_claims(&self, setup: &AgentSetup) -> Value {
        let now = now_unix();
        let name = &self.party.name;
        json!({
            "iss": format!("{name}-client"), "sub": format!("{name}-client"),
            "aud": setup.token_endpoint(),
            "iat": now, "exp": now + 60,
            "jti": random::uuid_v4().unwrap(),
            "subject_organization_id": format!("urn:oid:{}", USER.org),
            "subject_organization": "Ziekenhuis Noord",
            "subject_name": "Dr. Arts",
            "subject_role": [{"system": SCT, "code": "309343006"}],
        })
    }

    /// A `client_credentials` token with `scope`, the assertion signed with `alg`.
    pub fn token(&self, setup: &AgentSetup, alg: Alg, scope: &str) -> String {
        let assertion = sign(self.party.key(alg), &self.assertion_claims(setup));
        let (status, body) = token_request(setup, &self.party, &cc_form(&assertion, scope));
        assert_eq!(status, 200, "token of {}: {body}", self.party.name);
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A request as Zorgviewer sends it for [`USER`].
    pub fn request(&self, token: &str, path: &str) -> Req {
        self.request_as(&USER, token, path)
    }

    /// A request as Zorgviewer sends it for `user`: every context header,
    /// and `X-ZV-Context` signed (ES384) with the viewer's key, agreeing.
    pub fn request_as(&self, user: &User, token: &str, path: &str) -> Req {
        let rid = nano_id();
        let context = context_jwt(self.party.key(Alg::Es384), &context_claims_of(user));
        Req {
            viewer: self.party.name.clone(),
            method: "GET",
            path: path.to_string(),
            headers: vec![
                ("Authorization".into(), format!("Bearer {token}")),
                ("Accept".into(), FHIR_JSON.into()),
                ("X-Request-Id".into(), rid.clone()),
                ("X-Correlation-Id".into(), self.session.clone()),
                ("X-ZV-Subject-Organization-Id".into(), user.org.into()),
                ("X-ZV-Subject-Organization-Ura".into(), user.ura.into()),
                ("X-ZV-Subject-Id".into(), user.id.into()),
                ("X-ZV-Subject-role".into(), user.role.into()),
                ("X-ZV-Context".into(), context),
                (
                    "AORTA-ID".into(),
                    format!(
                        "rid:{rid};cid:{};usr:{};rol:{};org:{}",
                        self.session, user.id, user.role, user.org
                    ),
                ),
            ],
        }
    }

    /// Sends `req` to `setup`'s agent over this viewer's connection.
    pub fn send(&self, setup: &AgentSetup, req: &Req) -> Resp {
        let url = setup.url(&req.path);
        let resp = match req.method {
            "GET" => {
                let mut r = self.http.get(&url);
                for (k, v) in &req.headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.call()
            }
            _ => {
                let mut r = self.http.post(&url);
                for (k, v) in &req.headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.header("Content-Type", FHIR_JSON)
                    .send(br#"{"resourceType":"Task"}"#.as_slice())
            }
        }
        .unwrap();
        Resp::of(resp)
    }
}

/// `POST /oauth/token` at `setup`'s agent with `party`'s certificate:
/// status and JSON.
pub fn token_request(setup: &AgentSetup, party: &Party, body: &[u8]) -> (u16, Value) {
    let resp = party
        .client()
        .post(setup.token_endpoint())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_vec().unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Every audit record `setup`'s agent has written, oldest day first.
pub fn audit(setup: &AgentSetup) -> Vec<Value> {
    let dir = setup.dir.join("state/audit");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The one audit record of request `rid`.
pub fn audit_of(setup: &AgentSetup, rid: &str) -> Value {
    let found: Vec<Value> = audit(setup)
        .into_iter()
        .filter(|r| r["request_id"] == rid)
        .collect();
    assert_eq!(found.len(), 1, "one audit record of {rid}: {found:?}");
    found.into_iter().next().unwrap()
}

/// One request, editable before it is sent.
#[derive(Clone)]
pub struct Req {
    /// The viewer that sends it.
    pub viewer: String,
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    /// Replaces header `name` (any case), or adds it.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Req {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value,
            None => self.headers.push((name.to_string(), value)),
        }
        self
    }

    pub fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    pub fn header(&self, name: &str) -> &str {
        &self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .unwrap()
            .1
    }
}

/// An answer as read off the wire.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn of(resp: ureq::http::Response<ureq::Body>) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.into_body().read_to_vec().unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Type/id` of what a searchset holds (`+` before an include), or of
    /// the one resource a read returned.
    pub fn ids(&self) -> Vec<String> {
        assert_eq!(self.status, 200, "{}", self.text());
        let v = self.json();
        let of = |r: &Value| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        };
        if v["resourceType"] != "Bundle" {
            return vec![of(&v)];
        }
        v["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| match e["search"]["mode"].as_str() {
                Some("include") => format!("+{}", of(&e["resource"])),
                _ => of(&e["resource"]),
            })
            .collect()
    }

    /// The resources returned (a searchset's entries, or the one read).
    pub fn resources(&self) -> Vec<Value> {
        let v = self.json();
        if v["resourceType"] != "Bundle" {
            return vec![v];
        }
        v["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|e| e["resource"].clone())
            .collect()
    }

    /// A refusal: `status`, an OperationOutcome with issue `code`.
    pub fn assert_refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{what}: {v}");
        assert_eq!(v["issue"][0]["code"], code, "{what}: {v}");
    }

    /// 200 with an empty searchset.
    pub fn assert_empty_searchset(&self, what: &str) {
        assert_eq!(self.status, 200, "{what}: {}", self.text());
        let v = self.json();
        assert_eq!(
            (&v["resourceType"], &v["type"], &v["total"]),
            (&json!("Bundle"), &json!("searchset"), &json!(0)),
            "{what}: {v}"
        );
        assert!(v.get("entry").is_none(), "{what}: {v}");
    }
}

/// The URL of a Bundle's link with `relation`.
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(String::from)
}

/// 12 characters of the NanoID alphabet, as Zorgviewer's ids are.
pub fn nano_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    random::bytes::<12>()
        .unwrap()
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % 64] as char)
        .collect()
}

pub fn sign(key: &SigningKey, claims: &Value) -> String {
    key.sign_jwt(claims.to_string().as_bytes()).unwrap()
}

/// The claims of an `X-ZV-Context` that agree with [`USER`].
pub fn context_claims() -> Value {
    context_claims_of(&USER)
}

/// The claims of an `X-ZV-Context` that agree with `user`.
pub fn context_claims_of(user: &User) -> Value {
    let now = now_unix();
    json!({
        "subject_organization_id": user.org,
        "subject_id": user.id,
        "subject_role": user.role,
        "iat": now,
        "exp": now + 120,
    })
}

pub fn context_jwt(key: &SigningKey, claims: &Value) -> String {
    sign(key, claims)
}

/// The form of a `client_credentials` token request.
pub fn cc_form(assertion: &str, scope: &str) -> Vec<u8> {
    [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
        ("scope", scope),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
    .collect::<Vec<_>>()
    .join("&")
    .into_bytes()
}
