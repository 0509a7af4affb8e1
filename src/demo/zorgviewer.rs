//! The demo's Zorgviewer step: hospital B publishes the demo patient's record
//! to its `zorgviewer` partner, and a stand-in for the regional Zorgviewer
//! reads it the way Zorgviewer does (spec zorgviewer.md §2, §4, §7, §8).
//!
//! The stand-in has its own certificate from the demo CA and its own ES384
//! key, published in a JWKS it serves over mutual TLS on loopback (B fetches
//! it from there). It gets a `client_credentials` token with a client
//! assertion naming the requesting organisation, then looks the patient up by
//! BSN, runs the BgZ queries and fetches the discharge letter, every request
//! with the X-ZV headers and an `X-ZV-Context` signed with its key.
//!
//! B has a Mitz partner with a `URL` (the stand-in of `demo/mitz.rs`), so
//! publishing the record subscribes the patient there, and B asks Mitz's
//! closed question before it answers anything about the patient. The
//! stand-in answers `Deny` first: every answer is empty. Then Mitz records a
//! consent for GPs (`RPZAC001`, the Zorgviewer's provider category): its
//! closed question answers `Permit` and, as broker, it pushes a consent
//! notification to the channel endpoint of the subscription. B's decision
//! cache forgets the patient, B asks again, the same requests return every
//! published resource unchanged but for `Meta.source`, and B's audit trail,
//! read as `np-agent audit --patient` reads it, holds both rounds with the
//! closed question as the source of every consent decision.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::mitz::{self, Expected, Question};
use super::{
    B_URA, Context, Demo, DemoError, MITZ_SAMPLE, SAMPLE, STEP_TIMEOUT, drop_file, fail, resources,
    wait_until,
};
use crate::http::{self, Request, Response};
use crate::ids::{BSN_SYSTEM, Bsn, URA_OID_ROOT};
use crate::jose::{self, Alg, Jwks, SigningKey};
use crate::mitz::closed::reply::Decision;
use crate::mitz::closed::request::{
    AUTHOR_INSTITUTION, CONSULTING_FACILITY_TYPE, EVENT_CODE, FACILITY_TYPE, PROVIDER_INSTITUTION,
    PURPOSE_OF_USE, RESOURCE_ID, SUBJECT_ROLE, TREAT,
};
use crate::pki::throwaway::{Ca, LeafSpec, write_files};
use crate::pki::{self, MinVersion, TlsMaterial};
use crate::serve::zorgviewer::META_SOURCE_URL;
use crate::util::{b64, percent, random, time};

/// The partner's name at B (its outbox folder, its `NP_PARTNER_` keys).
pub(super) const PARTNER: &str = "zorgviewer";
/// The record id of the publication.
const RECORD: &str = "demo-record-1";
/// The `iss` and `sub` of the stand-in's client assertions.
const CLIENT_ID: &str = "zorgviewer-demo";
/// The Mitz provider category of the organisations using the Zorgviewer in
/// the demo: GPs, whom the sample notification gives no consent.
const PROVIDER_CATEGORY: &str = "RPZAC001";
/// The GP practice's zorgaanbiedercategorie, as the closed question names it.
const REQUESTER_CATEGORY: &str = "Z3";
/// The data category B asks Mitz about: treatment data.
const DATA_CATEGORY: &str = "GGC002";
/// The requesting organisation: a GP practice, by URA.
const GP_URA: &str = "33334444";
/// The user: a GP (SNOMED 62247001 huisarts).
const USER: &str = "demo-huisarts-1";
const ROLE: &str = "62247001";
/// Largest answer body read.
const MAX_ANSWER: u64 = 4 << 20;

/// What the Zorgviewer asks of a source (spec §2): searches of the BgZ
/// types, reads of Patient, Binary, Practitioner and Specimen, and of
/// Medication, which `MedicationStatement:medication` includes (an include
/// discloses only types the scope covers).
const SCOPE: &str = "user/Patient.read user/Binary.read user/Practitioner.read user/Medication.read \
    user/Specimen.read user/AllergyIntolerance.search user/Condition.search \
    user/Composition.search user/Coverage.search user/DeviceUseStatement.search \
    user/DocumentReference.search user/Encounter.search user/EpisodeOfCare.search \
    user/Flag.search user/Immunization.search user/MedicationDispense.search \
    user/MedicationRequest.search user/MedicationStatement.search \
    user/NutritionOrder.search user/Observation.search user/Procedure.search";

/// The stand-in Zorgviewer: its TLS client, its signing key, its JWKS server.
pub(super) struct StandIn {
    client: ureq::Agent,
    key: SigningKey,
    /// `sha256:<hex>` of its certificate: B's `CERT` selector for it.
    selector: String,
    jwks_url: String,
    jwks: Option<http::Server>,
}

impl StandIn {
    /// Issues its certificate from the demo CA, makes its key and starts
    /// serving its JWKS on a loopback port. Files go under `dir`.
    pub(super) fn new(ca: &Ca, dir: &Path) -> Result<StandIn, DemoError> {
        let leaf = ca
            .issue(&LeafSpec::localhost("zorgviewer.demo.invalid"))
            .ctx("issue Zorgviewer certificate")?;
        let files =
            write_files(&dir.join("tls"), &leaf, &[ca]).ctx("write Zorgviewer certificate")?;
        let material = TlsMaterial::load(&files).ctx("load Zorgviewer certificate")?;
        let client = http::client::agent(
            pki::client_config(&material, MinVersion::Tls13).ctx("Zorgviewer TLS client")?,
            http::client::ClientTimeouts::default(),
        );
        let selector = format!(
            "sha256:{}",
            pki::peer_identity(leaf.der.as_ref())
                .ctx("Zorgviewer certificate")?
                .fingerprint()
        );
        let pem = jose::generate_pkcs8_pem(Alg::Es384).ctx("generate Zorgviewer key")?;
        let key = SigningKey::from_pkcs8_pem(&pem, Alg::Es384, None).ctx("Zorgviewer key")?;
        let jwks = Jwks::new(vec![key.public_jwk()])
            .ctx("Zorgviewer JWKS")?
            .to_json();
        let listener = TcpListener::bind("127.0.0.1:0").ctx("Zorgviewer JWKS listener")?;
        let port = listener
            .local_addr()
            .ctx("Zorgviewer JWKS listener")?
            .port();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(
                pki::server_config(&material, MinVersion::Tls13).ctx("Zorgviewer TLS server")?,
            )),
            Arc::new(JwksHandler { jwks }),
            http::Limits::default(),
            Arc::new(crate::ops::metrics::Metrics::new()),
        )
        .ctx("serve the Zorgviewer JWKS")?;
        Ok(StandIn {
            client,
            key,
            selector,
            jwks_url: format!("https://localhost:{port}/.well-known/jwks"),
            jwks: Some(server),
        })
    }

    /// B's keys for this partner.
    pub(super) fn partner_env(&self) -> Vec<(String, String)> {
        let k = |f: &str| format!("NP_PARTNER_{}_{f}", PARTNER.to_ascii_uppercase());
        vec![
            (k("KIND"), "zorgviewer".into()),
            (k("CERT"), self.selector.clone()),
            (k("CLIENT_ID"), CLIENT_ID.into()),
            (k("JWKS_URL"), self.jwks_url.clone()),
            (k("PROVIDER_CATEGORY"), PROVIDER_CATEGORY.into()),
            (k("REQUESTER_CATEGORY"), REQUESTER_CATEGORY.into()),
        ]
    }

    /// A `client_credentials` token at `token_endpoint` for [`SCOPE`].
    fn token(&self, token_endpoint: &str) -> Result<String, DemoError> {
        let now = time::now_unix();
        let claims = json!({
            "iss": CLIENT_ID, "sub": CLIENT_ID, "aud": token_endpoint,
            "iat": now, "exp": now + 60, "jti": random::uuid_v4().ctx("random")?,
            "subject_organization_id": format!("urn:oid:{}", gp_oid()),
            "subject_organization": "Huisartsenpraktijk Demo",
            "subject_role": [{"system": "http://snomed.info/sct", "code": ROLE}],
        });
        let assertion = self
            .key
            .sign_jwt(claims.to_string().as_bytes())
            .ctx("sign the client assertion")?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", percent::encode_form(v)))
        .collect::<Vec<_>>()
        .join("&");
        let mut resp = self
            .client
            .post(token_endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .ctx("POST the Zorgviewer's token request to B")?;
        let status = resp.status().as_u16();
        let body = http::client::read_body_limited(&mut resp, MAX_ANSWER).ctx("token answer")?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 {
            return fail(format!(
                "B answered the Zorgviewer's token request with {status}: {answer}"
            ));
        }
        if answer["scope"] != SCOPE || answer["token_type"] != "Bearer" {
            return fail(format!(
                "B's token answer does not grant what was asked: scope {}, token_type {}",
                answer["scope"], answer["token_type"]
            ));
        }
        match answer["access_token"].as_str() {
            Some(t) if !t.is_empty() => Ok(t.to_string()),
            _ => fail("B's token answer has no access_token"),
        }
    }

    /// The signed request context of the demo user (spec §4).
    fn context(&self) -> Result<String, DemoError> {
        let now = time::now_unix();
        let claims = json!({
            "subject_organization_id": gp_oid(),
            "subject_id": USER,
            "subject_role": ROLE,
            "iat": now,
            "exp": now + 120,
        });
        self.key
            .sign_jwt(claims.to_string().as_bytes())
            .ctx("sign X-ZV-Context")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(server) = self.jwks.take() {
            server.shutdown(Duration::from_millis(100));
        }
    }
}

/// Serves the stand-in's JWKS.
struct JwksHandler {
    jwks: String,
}

impl http::Handler for JwksHandler {
    fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/.well-known/jwks") => Response::new(200)
                .header("Cache-Control", "max-age=3600")
                .body("application/json", self.jwks.clone()),
            _ => Response::new(404),
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "jwks"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

/// The requesting organisation's OID (a URA OID), bare.
fn gp_oid() -> String {
    format!("{URA_OID_ROOT}.{GP_URA}")
}

/// `urn:oid:<B's NP_ORG_OID>` (its default, from B's URA).
fn meta_source() -> String {
    format!("urn:oid:{URA_OID_ROOT}.{B_URA}")
}

/// One request of a round.
struct Ask {
    /// After `/fhir/`.
    target: String,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Search,
    /// A read answered as a FHIR resource (`Accept: application/fhir+json`).
    Read,
    /// A `Binary` read answered as the document itself.
    RawBinary,
}

/// What the publication holds that the requests need.
struct Published {
    bsn: Bsn,
    patient_id: String,
    binary_id: String,
    resources: BTreeMap<String, Value>,
}

impl Published {
    fn of(bundle: &Value) -> Result<Published, DemoError> {
        let resources = resources(bundle);
        let patient = resources
            .values()
            .find(|r| r["resourceType"] == "Patient")
            .ok_or_else(|| DemoError("the publication has no Patient".into()))?;
        let bsn = patient["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == BSN_SYSTEM)
            .and_then(|i| i["value"].as_str())
            .and_then(Bsn::parse)
            .ok_or_else(|| DemoError("the publication's Patient has no BSN".into()))?;
        let binary_id = resources
            .values()
            .filter(|r| r["resourceType"] == "DocumentReference")
            .find_map(|r| r["content"][0]["attachment"]["url"].as_str())
            .and_then(|u| u.strip_prefix("Binary/"))
            .ok_or_else(|| DemoError("the publication has no document".into()))?
            .to_string();
        Ok(Published {
            bsn,
            patient_id: patient["id"].as_str().unwrap_or_default().to_string(),
            binary_id,
            resources,
        })
    }

    /// What the Zorgviewer asks when a user opens the patient: the patient
    /// by BSN, the BgZ queries of the sample's types, the document list and
    /// the letter in both forms.
    fn asks(&self) -> Vec<Ask> {
        let bsn = percent::encode_query(&format!("{BSN_SYSTEM}|{}", self.bsn.as_str()));
        let p = &self.patient_id;
        let search = |target: String| Ask {
            target,
            kind: Kind::Search,
        };
        vec![
            search(format!("Patient?identifier={bsn}")),
            search(format!("Condition?patient={p}&clinical-status=active")),
            search(format!("AllergyIntolerance?patient={p}")),
            search(format!(
                "MedicationStatement?patient={p}&_include=MedicationStatement:medication"
            )),
            search(format!(
                "Observation?patient={p}&category=vital-signs&_sort=-date"
            )),
            search(format!("DocumentReference?patient={p}&status=current")),
            Ask {
                target: format!("Binary/{}", self.binary_id),
                kind: Kind::Read,
            },
            Ask {
                target: format!("Binary/{}", self.binary_id),
                kind: Kind::RawBinary,
            },
        ]
    }
}

/// One answer of B.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// A Zorgviewer session at B: one token, one user, one correlation id.
struct Session {
    /// The stand-in's TLS client.
    client: ureq::Agent,
    base: String,
    token: String,
    correlation_id: String,
    context: String,
    /// The `X-Request-Id` of every request sent, in order.
    sent: Vec<String>,
}

impl Session {
    /// Sends one request with the X-ZV headers; checks that B echoed both ids.
    fn send(&mut self, ask: &Ask) -> Result<Answer, DemoError> {
        let request_id = nano_id()?;
        let accept = match ask.kind {
            Kind::Search | Kind::Read => "application/fhir+json",
            Kind::RawBinary => "*/*",
        };
        let mut resp = self
            .client
            .get(format!("{}/{}", self.base, ask.target))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", accept)
            .header("X-Request-Id", &request_id)
            .header("X-Correlation-Id", &self.correlation_id)
            .header("X-ZV-Subject-Organization-Id", gp_oid())
            .header("X-ZV-Subject-Organization-Ura", GP_URA)
            .header("X-ZV-Subject-Id", USER)
            .header("X-ZV-Subject-Role", ROLE)
            .header("X-ZV-Context", &self.context)
            .call()
            .ctx(&format!("GET {} at B", ask.target))?;
        self.sent.push(request_id.clone());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        if header("x-request-id") != request_id || header("x-correlation-id") != self.correlation_id
        {
            return fail(format!(
                "B did not echo X-Request-Id and X-Correlation-Id on GET {}",
                ask.target
            ));
        }
        let content_type = header("content-type");
        let status = resp.status().as_u16();
        let body = http::client::read_body_limited(&mut resp, MAX_ANSWER)
            .ctx(&format!("the answer to GET {}", ask.target))?;
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }
}

/// A Zorgviewer-style id: 12 characters of `A-Za-z0-9_-`.
fn nano_id() -> Result<String, DemoError> {
    Ok(b64::encode(&random::bytes::<9>().ctx("random")?))
}

impl Demo<'_> {
    /// The Zorgviewer step (see the module docs).
    pub(super) fn zorgviewer(&mut self) -> Result<(), DemoError> {
        let publication: Value = serde_json::from_str(SAMPLE).ctx("sample record")?;
        let published = Published::of(&publication)?;
        self.mitz.answer(published.bsn.as_str(), Decision::Deny);
        self.publish()?;
        let channel = self.subscribed(&published.bsn)?;

        let token_endpoint = format!("https://localhost:{}/oauth/token", self.b.port);
        let token = self.zv.token(&token_endpoint)?;
        self.report.step(&format!(
            "The Zorgviewer (a stand-in with its own certificate, and an ES384 key in the JWKS it serves on {}) got a client_credentials token at B's token endpoint: its client assertion names the GP practice it acts for (subject_organization_id), and B granted the {} scopes Zorgviewer asks a source for",
            self.zv.jwks_url,
            SCOPE.split(' ').count()
        ));
        let mut session = Session {
            client: self.zv.client.clone(),
            base: format!("https://localhost:{}/fhir", self.b.port),
            token,
            correlation_id: nano_id()?,
            context: self.zv.context()?,
            sent: Vec::new(),
        };
        let asks = published.asks();

        for ask in &asks {
            let answer = session.send(ask)?;
            check_withheld(ask, &answer)?;
        }
        let refused: Vec<String> = std::mem::take(&mut session.sent);
        let before = self.asked(0, Decision::Deny, &published.bsn)?;
        self.report.step(&format!(
            "Before answering, B asked Mitz the closed question (POST {}, SOAP 1.2 with an XACMLAuthzDecisionQuery): may hospital B (URA {B_URA}, {}) release treatment data ({DATA_CATEGORY}) of this patient to the GP practice (URA {GP_URA}, {REQUESTER_CATEGORY}, role {ROLE}) for treatment ({TREAT})? The stand-in Mitz answered Deny",
            self.question_endpoint(),
            mitz::ORG_CATEGORY
        ));
        self.report.step(&format!(
            "So the Zorgviewer's lookup by BSN, BgZ queries and fetch of the discharge letter ({} requests, each with X-ZV headers and an X-ZV-Context signed with its key) came back as if no record existed: every search 200 with an empty searchset, every read 404 (B asked Mitz {} for them: it keeps a decision for NP_MITZ_DECISION_TTL, 60 s)",
            asks.len(),
            times(before)
        ));

        self.mitz_permits(&published.bsn, &channel)?;

        session.context = self.zv.context()?;
        let answers = asks
            .iter()
            .map(|ask| session.send(ask))
            .collect::<Result<Vec<Answer>, DemoError>>()?;
        let served: Vec<String> = std::mem::take(&mut session.sent);
        let after = self.asked(before, Decision::Permit, &published.bsn)?;
        let mut got = BTreeMap::new();
        for (ask, answer) in asks.iter().zip(&answers) {
            collect_served(ask, answer, &published, &mut got)?;
        }
        check_record(&published.resources, &got)?;
        self.report.step(&format!(
            "B asked Mitz the same closed question again (its cache had forgotten the patient; {} for the {} requests): Permit",
            times(after),
            asks.len()
        ));
        self.report.step(&format!(
            "The same {} requests now return the record: all {} published resources (the Medication by _include, the letter as a FHIR Binary and as its own text/plain bytes), each identical to the publication but for Meta.source {}, which every one carries",
            asks.len(),
            published.resources.len(),
            meta_source()
        ));

        self.audit_shows(&published.bsn, &refused, &served)
    }

    /// `<B's Mitz URL>/geslotenautorisatievraag/xacml3`.
    fn question_endpoint(&self) -> String {
        format!("{}{}", self.mitz.base(), mitz::QUESTION_PATH)
    }

    /// Publishing the record subscribed the patient at Mitz: one
    /// Subscription, as B's configuration says, answered `201` and recorded
    /// by B. Returns its channel endpoint.
    fn subscribed(&mut self, bsn: &Bsn) -> Result<String, DemoError> {
        let mitz = &self.mitz;
        wait_until(
            STEP_TIMEOUT,
            || !mitz.subscriptions().is_empty() || mitz.refused().is_some(),
            "B's Subscription at Mitz",
        )?;
        if let Some(why) = self.mitz.refused() {
            return fail(format!("B's Subscription: {why}"));
        }
        let subscriptions = self.mitz.subscriptions();
        let [s] = subscriptions.as_slice() else {
            return fail(format!(
                "B sent {} Subscriptions for one record",
                subscriptions.len()
            ));
        };
        let endpoint = format!(
            "https://localhost:{}{}",
            self.b.port,
            crate::config::MITZ_NOTIFY_PATH
        );
        check_subscription_of(s, bsn, &endpoint)?;
        let store = crate::mitz::subscribe::SubscriptionStore::reader(&self.b.dir.join("state"));
        wait_until(
            STEP_TIMEOUT,
            || {
                store.get(mitz::PARTNER, bsn).is_ok_and(|r| {
                    r.is_some_and(|r| r.subscription.as_deref() == Some(s.id.as_str()))
                })
            },
            "B recording its subscription",
        )?;
        self.report.step(&format!(
            "Publishing it made B subscribe the patient at Mitz: POST {}{} over mTLS, a mitz-Subscription (status requested, reason OTV, criteria Consent?_query=otv&patientid=<the demo BSN>&providerid={B_URA}&providertype={}, a rest-hook channel to {endpoint}, the GatewaySystem and SourceSystem OIDs); the stand-in Mitz checked it element by element and answered 201 with Location …/Subscription/{}, and B recorded that id (np-agent mitz subscriptions lists it)",
            self.mitz.base(),
            mitz::SUBSCRIPTION_PATH,
            mitz::ORG_CATEGORY,
            s.id
        ));
        Ok(s.endpoint().to_string())
    }

    /// The closed questions from the `from`-th on: at least one, every one
    /// from B, about this patient and the Zorgviewer's user, answered
    /// `want`. Returns how many there were.
    fn asked(&self, from: usize, want: Decision, bsn: &Bsn) -> Result<usize, DemoError> {
        if let Some(why) = self.mitz.refused() {
            return fail(format!("B's closed question: {why}"));
        }
        let questions: Vec<Question> = self.mitz.questions().into_iter().skip(from).collect();
        if questions.is_empty() {
            return fail(format!(
                "B answered the Zorgviewer without asking Mitz the closed question (expected {})",
                want.label()
            ));
        }
        let endpoint = self.question_endpoint();
        for q in &questions {
            if q.caller != B_URA || q.sent.to != endpoint {
                return fail(format!(
                    "a closed question came from URA {} to {}, expected B ({B_URA}) to {endpoint}",
                    q.caller, q.sent.to
                ));
            }
            q.sent.check(&[
                (RESOURCE_ID, bsn.as_str()),
                (FACILITY_TYPE, mitz::ORG_CATEGORY),
                (AUTHOR_INSTITUTION, B_URA),
                (EVENT_CODE, DATA_CATEGORY),
                (SUBJECT_ROLE, ROLE),
                (PROVIDER_INSTITUTION, GP_URA),
                (CONSULTING_FACILITY_TYPE, REQUESTER_CATEGORY),
                (PURPOSE_OF_USE, TREAT),
            ])?;
            if q.answered != want {
                return fail(format!(
                    "the stand-in Mitz answered {} where the demo expected {}",
                    q.answered.label(),
                    want.label()
                ));
            }
        }
        Ok(questions.len())
    }

    /// Mitz records a consent for GPs: its closed question answers
    /// `Permit` from now on, and as broker it pushes a consent notification
    /// (JSON, as the Subscription asked) to the subscription's `channel`.
    /// Waits until B has taken it in: stored, and the patient's decisions
    /// forgotten.
    fn mitz_permits(&mut self, bsn: &Bsn, channel: &str) -> Result<(), DemoError> {
        use crate::spool::{Spool, State};
        self.mitz.answer(bsn.as_str(), Decision::Permit);
        let value = permit_notification(PROVIDER_CATEGORY, time::now_unix())?;
        let body = serde_json::to_vec_pretty(&value).ctx("the permit notification")?;
        self.mitz.notify(channel, "application/fhir+json", &body)?;
        // The spool item moves to `done` once B stored the notification and
        // told its closed question to forget the patient.
        let spool = Spool::at(&self.b.dir.join("state")).ctx("B's spool")?;
        let id = crate::mitz::item_id(mitz::PARTNER, &body);
        wait_until(
            STEP_TIMEOUT,
            || matches!(spool.find(&id), Some(State::Done | State::Dead)),
            "B storing the consent notification",
        )?;
        if spool.find(&id) != Some(State::Done) {
            return fail("B could not store the consent notification (see hospb.log)");
        }
        self.report.step(&format!(
            "Mitz recorded a consent for GPs ({PROVIDER_CATEGORY}, the Zorgviewer's provider category): the stand-in's closed question now answers Permit, and as broker it POSTed a consent notification (JSON, as the subscription asked) to the subscription's channel endpoint {channel}; B stored it, and its closed-question cache forgot the patient"
        ));
        Ok(())
    }

    /// B's EHR publishes the sample as the demo patient's record.
    fn publish(&mut self) -> Result<(), DemoError> {
        let outbox = self.b.dir.join("outbox").join(PARTNER);
        durable_dir(&outbox)?;
        let name = format!("{RECORD}.json");
        drop_file(&outbox, &name, SAMPLE.as_bytes())?;
        self.report.step(&format!(
            "Hospital B's EHR published the demo patient's record for its Zorgviewer partner into outbox/{PARTNER}/{name}"
        ));
        // The file is claimed (moved to `.np-claimed/`) first and removed from
        // there once the record is stored or the file rejected.
        let claimed = outbox.join(crate::sender::outbox::CLAIMED_DIR).join(&name);
        wait_until(
            STEP_TIMEOUT,
            || !outbox.join(&name).exists() && !claimed.exists(),
            "B taking in the publication",
        )?;
        let error = outbox.join(".rejected").join(format!("{name}.error.txt"));
        if let Ok(reason) = std::fs::read_to_string(&error) {
            return fail(format!("B rejected the publication: {}", reason.trim()));
        }
        self.report.step("B stored it as a published record, indexed by the patient; nothing is sent: the Zorgviewer asks when a user opens the patient");
        Ok(())
    }

    /// B's audit trail, read as `np-agent audit --patient` reads it, holds
    /// every request of both rounds with its consent decision.
    fn audit_shows(
        &mut self,
        bsn: &Bsn,
        refused: &[String],
        served: &[String],
    ) -> Result<(), DemoError> {
        use crate::audit::{query, trail};
        let q = query::Query::new(bsn.as_str(), None, None).ctx("audit query")?;
        let scan = trail::scan(&self.b.dir.join("state"), &q).ctx("B's audit trail")?;
        if let Some(e) = scan.failed.first() {
            return fail(format!("B's audit trail: {e}"));
        }
        let by_request: BTreeMap<&str, &Value> = scan
            .matches
            .iter()
            .filter(|m| {
                m.record["action"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("zorgviewer."))
            })
            .filter_map(|m| Some((m.record["request_id"].as_str()?, &m.record)))
            .collect();
        let mut named = BTreeSet::new();
        for (ids, consent, outcome) in [(refused, "deny", "refused"), (served, "permit", "success")]
        {
            for id in ids {
                let Some(record) = by_request.get(id.as_str()) else {
                    return fail(format!(
                        "B's audit trail has no record of the Zorgviewer request {id} for this patient"
                    ));
                };
                let row = query::Row::of(record);
                if record["consent"] != consent
                    || record["consent_source"] != "closed-question"
                    || record["outcome"] != outcome
                    || record["context_verified"] != true
                    || record["who_user"] != USER
                {
                    return fail(format!(
                        "B's audit record of request {id} is not a verified {outcome} with consent={consent} from the closed question: {} {} {}",
                        row.action, row.object, row.outcome
                    ));
                }
                let listed = record["resources"].as_array().cloned().unwrap_or_default();
                if consent == "deny" && !listed.is_empty() {
                    return fail(format!(
                        "B's audit record of the refused request {id} names resources"
                    ));
                }
                named.extend(listed.iter().filter_map(Value::as_str).map(str::to_string));
            }
        }
        self.report.step(&format!(
            "np-agent audit --patient <the demo BSN> on B lists all {} Zorgviewer requests by their X-Request-Id, with the GP, her role and a verified X-ZV-Context, each naming the closed question as the source of its consent decision (consent_source=closed-question): the {} before consent as refused (consent=deny, nothing returned), the {} after as served (consent=permit, naming the {} resources returned); {} records of this patient in all",
            refused.len() + served.len(),
            refused.len(),
            served.len(),
            named.len(),
            scan.matches.len()
        ));
        Ok(())
    }
}

/// B's one Subscription: new (`201`), from B's certificate, and the
/// `mitz-Subscription` B's configuration makes for `bsn` with `endpoint` as
/// its channel.
fn check_subscription_of(s: &mitz::Subscribed, bsn: &Bsn, endpoint: &str) -> Result<(), DemoError> {
    if s.status != 201 || s.caller != B_URA {
        return fail(format!(
            "the stand-in Mitz answered {} to a Subscription from URA {}, expected 201 to B ({B_URA})",
            s.status, s.caller
        ));
    }
    mitz::check_subscription(
        &s.body,
        &Expected {
            patient: bsn.as_str(),
            ura: B_URA,
            category: mitz::ORG_CATEGORY,
            endpoint,
            home_community_id: mitz::HOME_COMMUNITY_ID,
            source_id: mitz::SOURCE_ID,
        },
    )
}

/// "once", "2 times", …
fn times(n: usize) -> String {
    if n == 1 {
        "once".to_string()
    } else {
        format!("{n} times")
    }
}

fn durable_dir(dir: &Path) -> Result<(), DemoError> {
    crate::util::durable::create_dir_all(dir).ctx("create outbox")
}

/// Before consent: a search is an empty searchset, a read 404.
fn check_withheld(ask: &Ask, answer: &Answer) -> Result<(), DemoError> {
    match ask.kind {
        Kind::Search => {
            let bundle = searchset(ask, answer)?;
            let entries = bundle["entry"].as_array().map_or(0, Vec::len);
            if entries != 0 || bundle["total"] != 0 {
                return fail(format!(
                    "before consent, GET {} returned {entries} entries",
                    ask.target
                ));
            }
        }
        Kind::Read | Kind::RawBinary => {
            if answer.status != 404 {
                return fail(format!(
                    "before consent, GET {} answered {} instead of 404",
                    ask.target, answer.status
                ));
            }
        }
    }
    Ok(())
}

/// After consent: the resources an answer returned go into `got` by
/// `Type/id`; the raw letter must be the published Binary's content.
fn collect_served(
    ask: &Ask,
    answer: &Answer,
    published: &Published,
    got: &mut BTreeMap<String, Value>,
) -> Result<(), DemoError> {
    let returned: Vec<Value> = match ask.kind {
        Kind::Search => {
            let bundle = searchset(ask, answer)?;
            let entries: Vec<Value> = bundle["entry"]
                .as_array()
                .map(|e| e.iter().map(|e| e["resource"].clone()).collect())
                .unwrap_or_default();
            if entries.is_empty() {
                return fail(format!("after consent, GET {} found nothing", ask.target));
            }
            entries
        }
        Kind::Read => {
            if answer.status != 200 {
                return fail(format!(
                    "after consent, GET {} answered {}",
                    ask.target, answer.status
                ));
            }
            vec![serde_json::from_slice(&answer.body).ctx(&format!("GET {}", ask.target))?]
        }
        Kind::RawBinary => {
            let key = format!("Binary/{}", published.binary_id);
            let binary = published
                .resources
                .get(&key)
                .ok_or_else(|| DemoError(format!("{key} is not in the publication")))?;
            let want = base64::engine::general_purpose::STANDARD
                .decode(binary["content"].as_str().unwrap_or_default())
                .ctx("the published Binary's content")?;
            let media = answer.content_type.split(';').next().unwrap_or_default();
            if answer.status != 200
                || media.trim() != binary["contentType"].as_str().unwrap_or_default()
                || answer.body != want
            {
                return fail(format!(
                    "after consent, GET {} answered {} {} with {} bytes, not the published document",
                    ask.target,
                    answer.status,
                    answer.content_type,
                    answer.body.len()
                ));
            }
            return Ok(());
        }
    };
    for mut resource in returned {
        let key = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap_or("?"),
            resource["id"].as_str().unwrap_or("?")
        );
        if !take_meta_source(&mut resource) {
            return fail(format!(
                "{key} was served without Meta.source {}",
                meta_source()
            ));
        }
        match got.get(&key) {
            Some(earlier) if *earlier != resource => {
                return fail(format!("{key} was served in two different forms"));
            }
            _ => {
                got.insert(key, resource);
            }
        }
    }
    Ok(())
}

/// The answer as a searchset Bundle.
fn searchset(ask: &Ask, answer: &Answer) -> Result<Value, DemoError> {
    if answer.status != 200 {
        return fail(format!(
            "GET {} answered {}: {}",
            ask.target,
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    let bundle: Value =
        serde_json::from_slice(&answer.body).ctx(&format!("the answer to GET {}", ask.target))?;
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "searchset" {
        return fail(format!("GET {} did not answer a searchset", ask.target));
    }
    Ok(bundle)
}

/// Removes our `Meta.source` extension (and what it leaves empty); false
/// when the resource did not carry it with our OID.
fn take_meta_source(resource: &mut Value) -> bool {
    let want = meta_source();
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(list) = meta.get_mut("extension").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = list.len();
    list.retain(|e| !(e["url"] == META_SOURCE_URL && e["valueUri"] == want.as_str()));
    if list.len() + 1 != before {
        return false;
    }
    if list.is_empty() {
        meta.remove("extension");
    }
    if meta.is_empty()
        && let Some(obj) = resource.as_object_mut()
    {
        obj.remove("meta");
    }
    true
}

/// Every published resource was served, unchanged, and nothing else.
fn check_record(
    published: &BTreeMap<String, Value>,
    got: &BTreeMap<String, Value>,
) -> Result<(), DemoError> {
    for (key, resource) in published {
        match got.get(key) {
            None => return fail(format!("{key} of the publication was not served")),
            Some(r) if r != resource => {
                return fail(format!("{key} was served different from the publication"));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = got.keys().find(|k| !published.contains_key(*k)) {
        return fail(format!("{extra} was served but is not in the publication"));
    }
    Ok(())
}

/// A Mitz notification like the sample's, with one Consent: a permit for
/// `provider` to see treatment data, dated `now` (newer than the sample's).
fn permit_notification(provider: &str, now: i64) -> Result<Value, DemoError> {
    let mut bundle: Value = serde_json::from_str(MITZ_SAMPLE).ctx("sample notification")?;
    let entries = bundle["entry"]
        .as_array_mut()
        .ok_or_else(|| DemoError("the sample notification has no entries".into()))?;
    let mut first_consent = true;
    entries.retain(|e| {
        let consent = e["resource"]["resourceType"] == "Consent";
        let keep = !consent || first_consent;
        first_consent &= !consent;
        keep
    });
    let id = random::uuid_v4().ctx("random")?;
    for entry in entries.iter_mut() {
        if entry["resource"]["resourceType"] != "Consent" {
            continue;
        }
        entry["fullUrl"] = json!(format!("urn:uuid:{id}"));
        let consent = &mut entry["resource"];
        consent["id"] = json!(id);
        consent["dateTime"] = json!(time::rfc3339(now));
        consent["status"] = json!("active");
        consent["provision"]["type"] = json!("permit");
        consent["extension"] = json!([{
            "url": crate::mitz::notification::PROVIDER_CATEGORY_EXT,
            "valueCodeableConcept": {"coding": [{
                "system": crate::mitz::notification::PROVIDER_CATEGORY_SYSTEM,
                "code": provider,
            }]},
        }]);
    }
    bundle["id"] = json!(random::uuid_v4().ctx("random")?);
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permit_notification_passes_intake_and_permits_only_the_category() {
        let now = time::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
        let value = permit_notification("RPZAC001", now).unwrap();
        let n = crate::mitz::notification::validate(&value, B_URA).unwrap();
        assert_eq!(n.consents.len(), 1);
        let c = &n.consents[0];
        assert!(c.permit);
        assert_eq!(c.provider_categories, ["RPZAC001"]);
        assert_eq!(c.data_categories, ["GGC002"]);
        assert_eq!(n.bsn.as_str(), super::super::MITZ_BSN);
    }

    #[test]
    fn meta_source_is_taken_off_only_when_it_is_ours() {
        let mut r = json!({"resourceType": "Patient", "id": "p",
            "meta": {"extension": [{"url": META_SOURCE_URL, "valueUri": meta_source()}]}});
        assert!(take_meta_source(&mut r));
        assert_eq!(r, json!({"resourceType": "Patient", "id": "p"}));

        let mut kept = json!({"resourceType": "Patient", "id": "p", "meta": {
            "profile": ["x"],
            "extension": [{"url": META_SOURCE_URL, "valueUri": meta_source()}]}});
        assert!(take_meta_source(&mut kept));
        assert_eq!(kept["meta"], json!({"profile": ["x"]}));

        for mut other in [
            json!({"resourceType": "Patient", "id": "p"}),
            json!({"resourceType": "Patient", "id": "p", "meta": {"extension": [
                {"url": META_SOURCE_URL, "valueUri": "urn:oid:1.2.3"}]}}),
        ] {
            assert!(!take_meta_source(&mut other));
        }
    }

    #[test]
    fn the_requests_follow_the_publication() {
        let published = Published::of(&serde_json::from_str(SAMPLE).unwrap()).unwrap();
        let targets: Vec<String> = published.asks().into_iter().map(|a| a.target).collect();
        assert_eq!(
            targets[0],
            "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn%7C999999151"
        );
        assert!(targets.iter().any(|t| t == "Binary/bin-1"));
        assert!(
            targets[1..6]
                .iter()
                .all(|t| t.contains("patient=pat-1&") || t.ends_with("patient=pat-1"))
        );
    }

    #[test]
    fn nano_ids_are_twelve_url_safe_characters() {
        let id = nano_id().unwrap();
        assert_eq!(id.len(), 12);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        );
    }
}
