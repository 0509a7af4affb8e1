//! Zorgviewer load shared by the benches that drive Zorgviewer searches
//! against a real `np-agent run` process: BgZ-like published records, a
//! Zorgviewer backend's token and user sessions over kept-alive mTLS, and
//! timed rows with the agent's CPU time.
//!
//! A bench includes it beside the test helpers it builds on:
//! `#[path = "../tests/common/mod.rs"] mod common;` then `mod zv_load;`.
// Each bench uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::agent::{AgentProcess, AgentSetup, Party};
use crate::common::folders::export;
use crate::common::observe::cpu_seconds;
use np_agent::ids::{BSN_SYSTEM, Bsn};
use np_agent::jose::{Alg, SigningKey};
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{random, time::now_unix};
use serde_json::{Value, json};

/// The hospital whose agent serves.
pub const A_URA: &str = "12345678";
/// The Zorgviewer partner.
pub const ZV_URA: &str = "55556666";
/// The Mitz partner (broker of notifications, or the Mitz API).
pub const BROKER_URA: &str = "22223333";
/// The Zorgviewer user's organisation (UMCG), bare as in headers and context.
pub const ZV_ORG: &str = "2.16.840.1.113883.2.4.3.8";
/// A patient kept out of the published Zorgviewer patients (a Twiin case's).
pub const TWIIN_BSN: &str = "999999151";
const SUBJECT_ID: &str = "smart-Practitioner-71614502";
/// SNOMED 223366009, healthcare professional.
const SUBJECT_ROLE: &str = "223366009";
/// What Zorgviewer asks a source for, as far as this mix needs it.
const SCOPE: &str = "user/Patient.read user/Observation.search user/Condition.search \
    user/DocumentReference.search user/Binary.read";
/// A client signs a new `X-ZV-Context` (valid 5 minutes) after this long.
const RESIGN_AFTER_SECS: i64 = 240;
/// Laboratory results, conditions and current documents in every record:
/// what each search of the mix must return.
pub const LAB: usize = 8;
pub const CONDITIONS: usize = 4;
pub const CURRENT_DOCS: usize = 2;
/// Searches in a visit.
const VISIT: usize = 4;

/// One published patient.
pub struct Person {
    pub bsn: String,
    pub id: String,
}

/// `n` valid BSNs (eleven-test), none of them [`TWIIN_BSN`].
fn bsns(n: usize) -> Vec<String> {
    (900_000_000u32..999_999_999)
        .rev()
        .map(|k| k.to_string())
        .filter(|s| s != TWIIN_BSN && Bsn::parse(s).is_some())
        .take(n)
        .collect()
}

/// A BgZ-like record of one patient: 31 resources of 10 types, three PDF
/// documents (16 KiB each) of which two are current.
pub fn record(p: &Person) -> Value {
    let id = &p.id;
    let subject = json!({"reference": format!("Patient/{id}")});
    let loinc = "http://loinc.org";
    let snomed = "http://snomed.info/sct";
    let obs_cat = |code: &str| {
        let system = "http://hl7.org/fhir/observation-category";
        json!([{"coding": [{"system": system, "code": code}]}])
    };
    let mut r = vec![json!({"resourceType": "Patient", "id": id,
        "identifier": [{"system": BSN_SYSTEM, "value": p.bsn}],
        "name": [{"family": "Bench", "given": ["Patiënt"]}], "gender": "female",
        "birthDate": "1956-03-14"})];
    let labs = [
        ("718-7", "Hemoglobin", "8.4", "mmol/L"),
        ("2160-0", "Creatinine", "92", "umol/L"),
        ("2823-3", "Potassium", "4.1", "mmol/L"),
        ("2951-2", "Sodium", "139", "mmol/L"),
        ("6690-2", "Leukocytes", "7.2", "10*9/L"),
        ("777-3", "Platelets", "251", "10*9/L"),
        ("1988-5", "C reactive protein", "3", "mg/L"),
        ("4548-4", "Hemoglobin A1c", "48", "mmol/mol"),
    ];
    assert_eq!(labs.len(), LAB);
    for (i, (code, name, value, unit)) in labs.iter().enumerate() {
        r.push(
            json!({"resourceType": "Observation", "id": format!("{id}-lab-{i}"),
            "status": "final", "category": obs_cat("laboratory"),
            "code": coding(loinc, code, name), "subject": subject,
            "effectiveDateTime": format!("2026-11-{:02}T08:15:00+01:00", 10 + i),
            "valueQuantity": {"value": value.parse::<f64>().unwrap(), "unit": unit,
                "system": "http://unitsofmeasure.org", "code": unit}}),
        );
    }
    for i in 0..4 {
        r.push(
            json!({"resourceType": "Observation", "id": format!("{id}-vital-{i}"),
            "status": "final", "category": obs_cat("vital-signs"),
            "code": coding(loinc, "29463-7", "Body weight"), "subject": subject,
            "effectiveDateTime": format!("2026-10-{:02}T09:30:00+01:00", 10 + i),
            "valueQuantity": {"value": 71.5, "unit": "kg",
                "system": "http://unitsofmeasure.org", "code": "kg"}}),
        );
    }
    let conditions = [
        ("38341003", "Hypertensive disorder", "active"),
        ("44054006", "Diabetes mellitus type 2", "active"),
        ("195967001", "Asthma", "resolved"),
        ("68566005", "Urinary tract infection", "resolved"),
    ];
    assert_eq!(conditions.len(), CONDITIONS);
    for (i, (code, name, status)) in conditions.iter().enumerate() {
        r.push(
            json!({"resourceType": "Condition", "id": format!("{id}-cond-{i}"),
            "clinicalStatus": status, "verificationStatus": "confirmed",
            "category": [coding(snomed, "439401001", "Diagnosis")],
            "code": coding(snomed, code, name), "subject": subject,
            "onsetDateTime": format!("20{:02}-05-01", 10 + i)}),
        );
    }
    for (i, (code, name)) in [
        ("91936005", "Penicillin allergy"),
        ("300913006", "Shellfish allergy"),
    ]
    .iter()
    .enumerate()
    {
        r.push(
            json!({"resourceType": "AllergyIntolerance", "id": format!("{id}-allergy-{i}"),
            "clinicalStatus": "active", "verificationStatus": "confirmed",
            "code": coding(snomed, code, name), "patient": subject}),
        );
    }
    for (i, (code, name)) in [("C09AA02", "enalapril"), ("A10BA02", "metformine")]
        .iter()
        .enumerate()
    {
        r.push(
            json!({"resourceType": "Medication", "id": format!("{id}-med-{i}"),
            "code": coding("http://www.whocc.no/atc", code, name)}),
        );
        r.push(
            json!({"resourceType": "MedicationStatement", "id": format!("{id}-ms-{i}"),
            "status": "active", "taken": "y", "subject": subject,
            "medicationReference": {"reference": format!("Medication/{id}-med-{i}")},
            "dosage": [{"text": "1 dd 1 tablet"}]}),
        );
    }
    for i in 0..2 {
        r.push(
            json!({"resourceType": "Encounter", "id": format!("{id}-enc-{i}"),
            "status": "finished",
            "class": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "AMB"},
            "subject": subject,
            "period": {"start": format!("2026-0{}-03T10:00:00+01:00", 3 + i)}}),
        );
    }
    let pdf = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        pdf_bytes(16 * 1024),
    );
    for (i, status) in ["current", "current", "superseded"].iter().enumerate() {
        r.push(
            json!({"resourceType": "DocumentReference", "id": format!("{id}-doc-{i}"),
            "status": status, "type": coding(loinc, "18842-5", "Discharge summary"),
            "subject": subject, "indexed": format!("2026-11-2{i}T14:00:00+01:00"),
            "content": [{"attachment": {"contentType": "application/pdf",
                "url": format!("Binary/{id}-bin-{i}"), "title": "ontslagbrief.pdf"}}]}),
        );
        r.push(
            json!({"resourceType": "Binary", "id": format!("{id}-bin-{i}"),
            "contentType": "application/pdf", "content": pdf.clone()}),
        );
    }
    assert_eq!(r.len(), 31);
    json!({"resourceType": "Bundle", "type": "collection",
        "entry": r.into_iter().map(|res| json!({"resource": res})).collect::<Vec<_>>()})
}

/// A CodeableConcept with one coding.
fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}

/// `len` bytes that look like a PDF to a content sniffer and compress badly.
fn pdf_bytes(len: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Publishes one record per patient into `a`'s Zorgviewer folder and waits
/// until the agent took them all in.
pub fn publish(a: &AgentSetup, pa: &AgentProcess, n: usize) -> Vec<Person> {
    let folder = a.outbox("zv");
    let people: Vec<Person> = bsns(n)
        .into_iter()
        .enumerate()
        .map(|(i, bsn)| Person {
            bsn,
            id: format!("zvp-{i}"),
        })
        .collect();
    for p in &people {
        export(
            &folder,
            &format!("record-{}.json", p.id),
            record(p).to_string().as_bytes(),
        );
    }
    wait_until_empty(&folder, pa);
    people
}

/// Waits until the agent took every export out of `folder`.
fn wait_until_empty(folder: &Path, pa: &AgentProcess) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = std::fs::read_dir(folder)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} records not taken in:\n{}",
            pa.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rejected = folder.join(".rejected");
    assert!(
        std::fs::read_dir(&rejected).map_or(true, |mut d| d.next().is_none()),
        "records rejected: see {}",
        rejected.display()
    );
}

pub fn patient_search(bsn: &str) -> String {
    format!(
        "/fhir/Patient?identifier={}",
        encode(&format!("{BSN_SYSTEM}|{bsn}"))
    )
}

/// The four searches of one visit, in the order a Zorgviewer screen sends them.
fn visit(p: &Person) -> [String; VISIT] {
    let id = &p.id;
    [
        patient_search(&p.bsn),
        format!("/fhir/Observation?patient={id}&category=laboratory"),
        format!("/fhir/Condition?patient={id}"),
        format!("/fhir/DocumentReference?patient={id}&status=current"),
    ]
}

pub fn entries(bundle: &Value) -> usize {
    bundle["entry"].as_array().map_or(0, Vec::len)
}

/// A Zorgviewer backend: its token (shared by all sessions) and its key.
pub struct ZvClient {
    zv: Arc<Party>,
    alg: Alg,
    base: String,
    token: Arc<String>,
    /// Every patient's visit.
    visits: Arc<Vec<[String; VISIT]>>,
}

impl ZvClient {
    /// Gets a `client_credentials` token with a client assertion signed `alg`.
    pub fn new(zv: &Arc<Party>, a: &AgentSetup, alg: Alg, people: &[Person]) -> ZvClient {
        let now = now_unix();
        let endpoint = a.token_endpoint();
        let claims = json!({
            "iss": "zv-client", "sub": "zv-client", "aud": endpoint,
            "iat": now, "exp": now + 60, "jti": random::uuid_v4().unwrap(),
            "subject_organization_id": format!("urn:oid:{ZV_ORG}"),
            "subject_organization": "UMCG",
            "subject_role": [{"system": "http://snomed.info/sct", "code": "309343006"}],
        });
        let assertion = zv.key(alg).sign_jwt(claims.to_string().as_bytes()).unwrap();
        let body = format!(
            "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={}",
            encode(SCOPE),
            encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            assertion
        );
        let resp = zv
            .client()
            .post(&endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .unwrap();
        let status = resp.status().as_u16();
        let answer: Value =
            serde_json::from_slice(&resp.into_body().read_to_vec().unwrap()).unwrap();
        assert_eq!(status, 200, "{answer}");
        ZvClient {
            zv: zv.clone(),
            alg,
            base: a.url(""),
            token: Arc::new(answer["access_token"].as_str().unwrap().to_string()),
            visits: Arc::new(people.iter().map(visit).collect()),
        }
    }

    /// A fresh `X-ZV-Context` (5 minutes).
    pub fn context(&self) -> String {
        sign_context(self.zv.key(self.alg), now_unix())
    }

    /// One request outside a session, parsed.
    pub fn get(&self, http: &ureq::Agent, path: &str, context: &str) -> (u16, Value) {
        let (status, body) = zv_get(
            http,
            &format!("{}{path}", self.base),
            &self.token,
            context,
            "setup",
            "setup-1",
        );
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Every patient's visit answers what the record holds.
    pub fn check_all(&self) {
        let (http, context) = (self.zv.client(), self.context());
        let want = [1, LAB, CONDITIONS, CURRENT_DOCS];
        for visit in self.visits.iter() {
            for (path, n) in visit.iter().zip(want) {
                let (status, body) = self.get(&http, path, &context);
                assert_eq!((status, entries(&body)), (200, n), "{path}: {body}");
            }
        }
    }

    /// Session `i`: a kept-alive connection doing visits to random patients.
    pub fn session(&self, i: usize) -> impl FnMut() + Send + 'static {
        let n = self.visits.len() as u64;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ ((i as u64 + 1) << 32);
        let (mut patient, mut step) = (0, VISIT);
        self.session_with(i, move || {
            if step == VISIT {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                patient = (rng % n) as usize;
                step = 0;
            }
            step += 1;
            (patient, step - 1)
        })
    }

    /// Session `i` of a rotation shared through `turn`: every request, of
    /// whichever session, is about the next patient in turn, so a patient
    /// comes back only after every other one was asked for. The searches of
    /// a visit take turns too, so each pass holds the whole mix.
    pub fn rotation(&self, i: usize, turn: Arc<AtomicUsize>) -> impl FnMut() + Send + 'static {
        let n = self.visits.len();
        self.session_with(i, move || {
            let k = turn.fetch_add(1, Ordering::Relaxed);
            (k % n, (k + k / n) % VISIT)
        })
    }

    /// A kept-alive connection sending, request after request, the search
    /// `next` names as (patient, search of the visit).
    fn session_with(
        &self,
        i: usize,
        mut next: impl FnMut() -> (usize, usize) + Send + 'static,
    ) -> impl FnMut() + Send + 'static {
        let http = self.zv.client();
        let (zv, alg, token, visits) = (
            self.zv.clone(),
            self.alg,
            self.token.clone(),
            self.visits.clone(),
        );
        let base = self.base.clone();
        let correlation = format!("bench-session-{i}");
        let mut signed_at = now_unix();
        let mut context = sign_context(zv.key(alg), signed_at);
        let mut n = 0u64;
        move || {
            let now = now_unix();
            if now - signed_at >= RESIGN_AFTER_SECS {
                signed_at = now;
                context = sign_context(zv.key(alg), now);
            }
            let (patient, step) = next();
            let url = format!("{base}{}", visits[patient][step]);
            n += 1;
            let rid = format!("s{i}r{n}");
            let (status, body) = zv_get(&http, &url, &token, &context, &correlation, &rid);
            assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
            assert!(
                contains(&body, b"\"entry\""),
                "{url}: nothing served: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

/// The `X-ZV-Context` of the bench's user, issued at `now`, valid 5 minutes.
fn sign_context(key: &SigningKey, now: i64) -> String {
    let claims = json!({
        "subject_organization_id": ZV_ORG,
        "subject_id": SUBJECT_ID,
        "subject_role": SUBJECT_ROLE,
        "iat": now, "exp": now + 300,
    });
    key.sign_jwt(claims.to_string().as_bytes()).unwrap()
}

/// A Zorgviewer GET with the headers Zorgviewer sends.
fn zv_get(
    http: &ureq::Agent,
    url: &str,
    token: &str,
    context: &str,
    correlation: &str,
    request_id: &str,
) -> (u16, Vec<u8>) {
    let resp = http
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Request-Id", request_id)
        .header("X-Correlation-Id", correlation)
        .header("X-ZV-Subject-Organization-Id", ZV_ORG)
        .header("X-ZV-Subject-Id", SUBJECT_ID)
        .header("X-ZV-Subject-Role", SUBJECT_ROLE)
        .header("X-ZV-Context", context)
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().read_to_vec().unwrap())
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What one row measured.
pub struct Row {
    pub requests: usize,
    pub secs: f64,
    /// Latency of every request, microseconds, sorted.
    pub micros: Vec<u64>,
    /// CPU time the agent used meanwhile (user + system, all threads).
    pub agent_cpu_secs: f64,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        let i = ((self.micros.len() as f64 * p).ceil() as usize).clamp(1, self.micros.len()) - 1;
        self.micros[i] as f64 / 1000.0
    }

    /// The agent's CPU time per request, microseconds.
    pub fn cpu_micros(&self) -> f64 {
        self.agent_cpu_secs * 1e6 / self.requests as f64
    }

    pub fn print(&self, what: &str, threads: usize, agent: &AgentProcess) {
        println!(
            "| {what} | {threads} | {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} |",
            self.requests,
            self.secs,
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.cpu_micros(),
            agent.rss_kib() as f64 / 1024.0
        );
    }
}

/// Runs `threads` sessions made by `session` for `budget` (or four requests
/// each when it is zero: the smoke test), timing every request.
pub fn measure<S>(
    agent: &AgentProcess,
    threads: usize,
    budget: Duration,
    session: impl Fn(usize) -> S,
) -> Row
where
    S: FnMut() + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let sessions: Vec<S> = (0..threads).map(&session).collect();
    let cpu_before = cpu_seconds(agent.pid);
    let started = Instant::now();
    let handles: Vec<_> = sessions
        .into_iter()
        .map(|mut one| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut micros = Vec::new();
                loop {
                    let t = Instant::now();
                    one();
                    micros.push(t.elapsed().as_micros() as u64);
                    let done = if budget.is_zero() {
                        micros.len() >= 4
                    } else {
                        stop.load(Ordering::Relaxed)
                    };
                    if done {
                        return micros;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(budget);
    stop.store(true, Ordering::Relaxed);
    let mut micros: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = started.elapsed().as_secs_f64();
    let agent_cpu_secs = cpu_seconds(agent.pid) - cpu_before;
    micros.sort_unstable();
    Row {
        requests: micros.len(),
        secs,
        micros,
        agent_cpu_secs,
    }
}
