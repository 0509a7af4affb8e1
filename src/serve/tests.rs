//! [`handle`] over a real [`CaseStore`] and [`AuditLog`] in a temporary
//! directory, with a realistic BgZ case for one patient and partner and a
//! second case for another patient and partner.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::ids::{BSN_SYSTEM, Bsn, OrgId};
use crate::oauth::CaseBinding;
use crate::util::{random, time};

const NOW: i64 = 1_800_000_000;
const BASE: &str = "https://np.hospital-a.example:8443/fhir";
const BSN_A: &str = "999999151";
const BSN_B: &str = "999999163";
const LOINC: &str = "http://loinc.org";
const SCT: &str = "http://snomed.info/sct";
const OBS_CAT: &str = "http://hl7.org/fhir/observation-category";
const MED_CAT: &str = "urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3";

fn entry(r: Value) -> Value {
    let url = format!(
        "urn:uuid:{}",
        random::uuid_v4().expect("randomness for a test fullUrl")
    );
    json!({"fullUrl": url, "resource": r})
}

fn bundle(resources: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": resources.into_iter().map(entry).collect::<Vec<_>>(),
    })
}

fn vital(id: &str, code: &str, display: &str, when: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": "Patient/pat-1"},
    });
    if let (Some(o), Some(w)) = (o.as_object_mut(), when.as_object()) {
        o.extend(w.clone());
    }
    o
}

fn bp(id: &str, when: Value, sys: u32, dia: u32) -> Value {
    let mut o = vital(id, "85354-9", "Blood pressure panel", when);
    o["component"] = json!([
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": sys, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": dia, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    ]);
    o
}

/// A BgZ export for patient A (partner hospb).
fn case_a_data() -> Value {
    bundle(vec![
        json!({"resourceType": "Patient", "id": "pat-1",
               "identifier": [{"system": BSN_SYSTEM, "value": BSN_A}],
               "name": [{"family": "Demo", "given": ["Jansje"]}], "gender": "female", "birthDate": "1956-04-12",
               "generalPractitioner": [{"reference": "Practitioner/gp-1"}, {"reference": "Organization/org-outside"}]}),
        json!({"resourceType": "Practitioner", "id": "gp-1",
               "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/agb-z", "value": "01234567"}],
               "name": [{"family": "Huisarts"}]}),
        json!({"resourceType": "Condition", "id": "cond-1", "clinicalStatus": "active", "verificationStatus": "confirmed",
               "category": [{"coding": [{"system": SCT, "code": "439401001"}]}],
               "code": {"coding": [{"system": SCT, "code": "38341003", "display": "Hypertensive disorder"}]},
               "subject": {"reference": "Patient/pat-1"}, "onsetDateTime": "2019-03-01"}),
        json!({"resourceType": "Condition", "id": "cond-2", "clinicalStatus": "resolved",
               "code": {"coding": [{"system": SCT, "code": "195967001", "display": "Asthma"}]},
               "subject": {"reference": "Patient/pat-1"}}),
        json!({"resourceType": "AllergyIntolerance", "id": "allergy-1", "clinicalStatus": "active",
               "verificationStatus": "confirmed", "category": ["medication"], "criticality": "high",
               "code": {"coding": [{"system": SCT, "code": "373270004", "display": "Penicillin"}]},
               "patient": {"reference": "Patient/pat-1"}}),
        json!({"resourceType": "Medication", "id": "med-1",
               "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.2.4.4.10", "code": "1234567"}]}}),
        json!({"resourceType": "MedicationStatement", "id": "medstat-1", "status": "active", "taken": "y",
               "category": {"coding": [{"system": MED_CAT, "code": "6"}]},
               "medicationReference": {"reference": "Medication/med-1"},
               "subject": {"reference": "Patient/pat-1"}, "effectivePeriod": {"start": "2019-03-15"}}),
        json!({"resourceType": "MedicationStatement", "id": "medstat-2", "status": "completed", "taken": "y",
               "category": {"coding": [{"system": MED_CAT, "code": "6"}]},
               "medicationReference": {"reference": "Medication/med-outside"},
               "subject": {"reference": "Patient/pat-1"}}),
        bp(
            "bp-1",
            json!({"effectiveDateTime": "2026-11-20T09:30:00+01:00"}),
            142,
            88,
        ),
        bp(
            "bp-2",
            json!({"effectiveDateTime": "2026-10-01T08:00:00+02:00"}),
            150,
            92,
        ),
        bp(
            "bp-3",
            json!({"effectivePeriod": {"start": "2026-09-15"}}),
            138,
            85,
        ),
        vital(
            "weight-1",
            "29463-7",
            "Body weight",
            json!({"effectiveDateTime": "2026-11-20T09:35:00+01:00"}),
        ),
        vital(
            "weight-2",
            "29463-7",
            "Body weight",
            json!({"effectiveDateTime": "2025-05"}),
        ),
        json!({"resourceType": "Observation", "id": "lab-1", "status": "final",
               "category": [{"coding": [{"system": SCT, "code": "275711006"}]}],
               "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]},
               "subject": {"reference": "Patient/pat-1"}, "issued": "2026-11-19T12:00:00Z",
               "specimen": {"reference": "Specimen/spec-1"},
               "related": [{"type": "derived-from", "target": {"reference": "Observation/lab-2"}},
                           {"type": "derived-from", "target": {"reference": "Observation/obs-b1"}}]}),
        json!({"resourceType": "Observation", "id": "lab-2", "status": "final",
               "code": {"coding": [{"system": LOINC, "code": "789-8"}]},
               "subject": {"reference": "Patient/pat-1"}, "issued": "2026-11-19T12:00:00Z"}),
        json!({"resourceType": "Specimen", "id": "spec-1", "subject": {"reference": "Patient/pat-1"}}),
        json!({"resourceType": "Encounter", "id": "enc-1", "status": "finished",
               "class": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "IMP"},
               "subject": {"reference": "Patient/pat-1"}}),
        json!({"resourceType": "DocumentReference", "id": "doc-1", "status": "current",
               "type": {"coding": [{"system": LOINC, "code": "18842-5"}]},
               "subject": {"reference": "Patient/pat-1"}, "indexed": "2026-11-21T14:00:00+01:00",
               "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/bin-1"}}]}),
        json!({"resourceType": "Binary", "id": "bin-1", "contentType": "text/plain",
               "content": "T250c2xhZ2JyaWVm"}),
        json!({"resourceType": "Binary", "id": "bin-orphan", "contentType": "text/plain",
               "content": "bmlldCB2b29yIGRlemUgcGFydG5lcg=="}),
    ])
}

/// Another patient's export, for another partner.
fn case_b_data() -> Value {
    bundle(vec![
        json!({"resourceType": "Patient", "id": "pat-2",
               "identifier": [{"system": BSN_SYSTEM, "value": BSN_B}]}),
        json!({"resourceType": "Observation", "id": "obs-b1", "status": "final",
               "category": [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
               "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
               "subject": {"reference": "Patient/pat-2"}, "effectiveDateTime": "2026-12-01"}),
        json!({"resourceType": "Observation", "id": "obs-b2", "status": "final",
               "category": [{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
               "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
               "subject": {"reference": "Patient/pat-2"}}),
        json!({"resourceType": "DocumentReference", "id": "doc-b", "status": "current",
               "subject": {"reference": "Patient/pat-2"},
               "content": [{"attachment": {"url": "Binary/bin-b"}}]}),
        json!({"resourceType": "Binary", "id": "bin-b", "contentType": "text/plain", "content": "Yg=="}),
    ])
}

struct Fixture {
    dir: PathBuf,
    cases: CaseStore,
    audit: AuditLog,
    key: PageKey,
    a: Case,
    b: Case,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn add_case(
    cases: &CaseStore,
    partner: &str,
    case_id: &str,
    bsn: &str,
    data: &Value,
    edit: impl FnOnce(&mut Case),
) -> Case {
    let bsn = Bsn::parse(bsn).unwrap();
    let owner = OrgId::Ura("87654321".into());
    let mut case = Case::new(partner, case_id, &bsn, Some(&owner), NOW - 60, NOW + 86_400).unwrap();
    case.version = 1;
    edit(&mut case);
    cases
        .write_data(
            partner,
            case_id,
            case.version,
            &serde_json::to_vec(data).unwrap(),
        )
        .unwrap();
    cases.save(&case).unwrap();
    case
}

fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("np-serve-{}", random::uuid_v4().unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = CaseStore::open(&dir).unwrap();
    let audit = AuditLog::open(&dir).unwrap();
    let a = add_case(&cases, "hospb", "c-0042", BSN_A, &case_a_data(), |_| {});
    let b = add_case(&cases, "hospc", "c-0099", BSN_B, &case_b_data(), |_| {});
    Fixture {
        dir,
        cases,
        audit,
        key: PageKey::from_bytes([42; 32]),
        a,
        b,
    }
}

fn pull_grant(case: &Case) -> Grant {
    grant_for(
        &case.partner,
        &case.authorization_base,
        &case.case_id,
        &case.patient,
    )
}

/// A pull grant naming any partner, base, case and patient: the serving side
/// must hold each against the case store.
fn grant_for(partner: &str, base: &str, case_id: &str, patient: &str) -> Grant {
    Grant::pull(
        partner,
        &format!("np.{partner}.example"),
        OrgId::Ura("87654321".into()),
        Some(OrgId::Ura("12345678".into())),
        CaseBinding {
            authorization_base: base.into(),
            case_id: case_id.into(),
        },
        Bsn::parse(patient).unwrap(),
    )
    .valid(NOW - 10, NOW + 290)
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// `Type/id` of every entry, with `+` for includes.
    fn ids(&self) -> Vec<String> {
        let b = self.json();
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "searchset");
        b["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|e| {
                        let r = &e["resource"];
                        let t = r["resourceType"].as_str().unwrap();
                        let id = r["id"].as_str().unwrap();
                        assert_eq!(e["fullUrl"], format!("{BASE}/{t}/{id}"));
                        match e["search"]["mode"].as_str().unwrap() {
                            "match" => format!("{t}/{id}"),
                            "include" => format!("+{t}/{id}"),
                            other => panic!("mode {other}"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn link(&self, relation: &str) -> Option<String> {
        self.json()["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == relation)
            .map(|l| l["url"].as_str().unwrap().to_string())
    }

    fn diagnostics(&self) -> String {
        let oo = self.json();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
        oo["issue"][0]["diagnostics"].as_str().unwrap().to_string()
    }
}

fn call(f: &Fixture, grant: &Grant, method: &str, target: &str, accept: Option<&str>) -> Answer {
    call_at(f, grant, method, target, accept, NOW)
}

fn call_at(
    f: &Fixture,
    grant: &Grant,
    method: &str,
    target: &str,
    accept: Option<&str>,
    now: i64,
) -> Answer {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let rid = format!("rid-{}", random::uuid_v4().unwrap());
    let req = ServeRequest {
        method,
        path,
        query,
        accept,
        request_id: &rid,
    };
    let r = handle_with_key(&f.cases, grant, &req, &f.audit, BASE, now, &f.key);
    assert_eq!(
        header_of(&r.headers, "Cache-Control"),
        Some("no-store"),
        "{target}"
    );
    let ct = header_of(&r.headers, "Content-Type").unwrap_or_default();
    assert!(ct.contains("charset=utf-8"), "{target}: {ct}");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        r.status == 200 || (!text.contains(BSN_A) && !text.contains(BSN_B)),
        "{target}: a refusal holds no BSN"
    );
    Answer {
        status: r.status,
        headers: r.headers,
        body: r.body,
    }
}

fn header_of<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn get(f: &Fixture, target: &str) -> Answer {
    call(f, &pull_grant(&f.a), "GET", target, None)
}

/// A link of ours as the `target` (path and query after the base).
fn target_of(url: &str) -> &str {
    url.strip_prefix(BASE).expect("a link under our base")
}

fn audit_events(f: &Fixture) -> Vec<Value> {
    let path = f
        .dir
        .join("audit")
        .join(format!("{}.jsonl", time::date(time::now_unix())));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn last_event(f: &Fixture) -> Value {
    audit_events(f).pop().expect("an audit event")
}

fn refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["issue"][0]["code"], code);
    assert!(!a.diagnostics().is_empty());
}

// ---- reads ----

#[test]
fn read_returns_the_resource_and_audits_it() {
    let f = fixture();
    let a = get(&f, "/Patient/pat-1");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("Content-Type"),
        Some("application/fhir+json; charset=utf-8")
    );
    assert_eq!(a.json()["id"], "pat-1");
    assert_eq!(a.json()["identifier"][0]["value"], BSN_A);
    let ev = last_event(&f);
    assert_eq!(ev["action"], "fhir.read");
    assert_eq!(ev["outcome"], "success");
    assert_eq!(ev["partner"], "hospb");
    assert_eq!(ev["who_org"], "urn:oid:2.16.528.1.1007.3.3.87654321");
    assert_eq!(ev["who_system"], "np.hospb.example");
    assert_eq!(ev["patient"], BSN_A);
    assert_eq!(ev["object"], "Patient/pat-1");
    assert_eq!(ev["results"], 1);
    assert!(ev["request_id"].as_str().unwrap().starts_with("rid-"));

    let a = get(&f, "/Observation/bp-1");
    assert_eq!(a.json()["component"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&f, "/Binary/bin-1").json()["content"],
        "T250c2xhZ2JyaWVm"
    );
    assert_eq!(get(&f, "/Practitioner/gp-1").status, 200);
    assert_eq!(
        get(&f, "/Observation%2Fbp-1").status,
        400,
        "an encoded / stays in its segment"
    );
    assert_eq!(
        get(&f, "/%4Fbservation/bp-1").status,
        200,
        "percent-decoded path"
    );
    let head = call(&f, &pull_grant(&f.a), "HEAD", "/Patient/pat-1", None);
    assert_eq!(head.status, 200);
}

#[test]
fn read_of_another_patients_resource_is_404() {
    let f = fixture();
    let missing = get(&f, "/Observation/no-such-id");
    refused(&missing, 404, "not-found");
    for target in [
        "/Observation/obs-b1",
        "/Patient/pat-2",
        "/DocumentReference/doc-b",
        "/Binary/bin-b",
    ] {
        let a = get(&f, target);
        refused(&a, 404, "not-found");
        assert_eq!(
            a.diagnostics().replace(&target[1..], "X"),
            missing.diagnostics().replace("Observation/no-such-id", "X"),
            "{target}: the same answer as for an id that exists nowhere"
        );
    }
    let ev = last_event(&f);
    assert_eq!(
        (ev["action"].as_str(), ev["outcome"].as_str()),
        (Some("fhir.read"), Some("refused"))
    );
    assert!(ev.get("results").is_none());
}

#[test]
fn binary_not_referenced_by_the_case_is_404() {
    let f = fixture();
    assert_eq!(get(&f, "/Binary/bin-1").status, 200);
    refused(&get(&f, "/Binary/bin-orphan"), 404, "not-found");
    let s = get(&f, "/Binary?_id=bin-orphan,bin-1");
    assert_eq!(s.ids(), ["Binary/bin-1"]);
}

/// A case whose export holds a Task of its own, and whose record holds the
/// two notification Tasks we sent for it (the first one cancelled): a read
/// finds the exported Task and none of the sent ones.
#[test]
fn task_reads_find_only_data() {
    let f = fixture();
    let exported = json!({"resourceType": "Task", "id": "task-data-1", "status": "completed",
                          "intent": "order", "for": {"reference": "Patient/pat-1"}});
    let mut data = case_a_data();
    data["entry"]
        .as_array_mut()
        .unwrap()
        .push(entry(exported.clone()));
    let sent = |version: u32, status: &str| crate::cases::SentTask {
        task_id: random::uuid_v4().unwrap(),
        version,
        item_id: format!("notify-{version}"),
        status: status.into(),
        source: None,
        authored_on: NOW - 60,
        period_end: NOW + 86_400,
    };
    let case = add_case(&f.cases, "hospb", "c-0043", BSN_A, &data, |c| {
        c.version = 2;
        c.tasks = vec![sent(1, "cancelled"), sent(2, "requested")];
    });
    assert_eq!(case.tasks.len(), 2, "the fixture has sent Tasks");
    let read = |id: &str| call(&f, &pull_grant(&case), "GET", &format!("/Task/{id}"), None);

    let a = read("task-data-1");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json(), exported);
    for t in &case.tasks {
        refused(&read(&t.task_id), 404, "not-found");
    }
}

// ---- searches ----

#[test]
fn search_by_each_parameter_kind() {
    let f = fixture();
    let s = |q: &str| get(&f, q).ids();
    assert_eq!(s("/Condition"), ["Condition/cond-1", "Condition/cond-2"]);
    assert_eq!(
        s("/Condition?code=http://snomed.info/sct|38341003"),
        ["Condition/cond-1"]
    );
    assert_eq!(s("/Condition?code=38341003"), ["Condition/cond-1"]);
    assert_eq!(s("/Condition?code=|38341003"), Vec::<String>::new());
    assert_eq!(
        s("/Condition?code=http://snomed.info/sct%7C"),
        ["Condition/cond-1", "Condition/cond-2"]
    );
    assert_eq!(s("/Condition?clinical-status=active"), ["Condition/cond-1"]);
    assert_eq!(
        s("/Condition?category=http://snomed.info/sct|439401001"),
        ["Condition/cond-1"]
    );
    assert_eq!(s("/AllergyIntolerance"), ["AllergyIntolerance/allergy-1"]);
    assert_eq!(
        s(
            "/MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6&status=active"
        ),
        ["MedicationStatement/medstat-1"]
    );
    assert_eq!(
        s(
            "/Encounter?class=http://hl7.org/fhir/v3/ActCode|IMP,http://hl7.org/fhir/v3/ActCode|ACUTE"
        ),
        ["Encounter/enc-1"]
    );
    assert_eq!(
        s("/Encounter?class=http://hl7.org/fhir/v3/ActCode|AMB"),
        Vec::<String>::new()
    );
    assert_eq!(
        s("/DocumentReference?status=current"),
        ["DocumentReference/doc-1"]
    );
    assert_eq!(
        s("/Observation?code=http://loinc.org|29463-7&patient=Patient/pat-1"),
        ["Observation/weight-1", "Observation/weight-2"]
    );
    assert_eq!(
        s(
            "/Observation?code=29463-7&patient=http%3A%2F%2Ffhir.nl%2Ffhir%2FNamingSystem%2Fbsn%7C999999151"
        ),
        ["Observation/weight-1", "Observation/weight-2"]
    );
    assert_eq!(
        s("/Observation?code=29463-7&subject=pat-1"),
        ["Observation/weight-1", "Observation/weight-2"]
    );
    assert_eq!(
        s("/Observation?_id=bp-2,lab-2"),
        ["Observation/bp-2", "Observation/lab-2"]
    );
    assert_eq!(
        s("/Observation?_id=obs-b1"),
        Vec::<String>::new(),
        "another case's id is simply not found"
    );
    assert_eq!(
        s("/Practitioner?identifier=http://fhir.nl/fhir/NamingSystem/agb-z|01234567"),
        ["Practitioner/gp-1"]
    );
    assert_eq!(
        s("/Immunization?status=completed"),
        Vec::<String>::new(),
        "a BgZ type the case lacks"
    );
    assert_eq!(
        s("/Coverage?_include=Coverage:payor:Organization&_include=Coverage:payor:Patient"),
        Vec::<String>::new()
    );

    let empty = get(&f, "/Flag");
    assert_eq!(empty.json()["total"], 0);
    assert!(empty.json().get("entry").is_none());
    let ev = last_event(&f);
    assert_eq!(
        (ev["action"].as_str(), ev["results"].as_u64()),
        (Some("fhir.search"), Some(0))
    );
}

#[test]
fn patient_search_returns_only_the_case_patient() {
    let f = fixture();
    let s = |q: &str| get(&f, q).ids();
    assert_eq!(s("/Patient"), ["Patient/pat-1"]);
    assert_eq!(
        s("/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151"),
        ["Patient/pat-1"]
    );
    assert_eq!(s("/Patient?_id=pat-1"), ["Patient/pat-1"]);
    let ev = last_event(&f);
    assert_eq!(ev["object"], "Patient?_id=pat-1");
    assert_eq!(ev["results"], 1);
}

#[test]
fn includes_stay_inside_the_case() {
    let f = fixture();
    let s = |q: &str| get(&f, q).ids();
    assert_eq!(
        s("/Patient?_include=Patient:general-practitioner"),
        ["Patient/pat-1", "+Practitioner/gp-1"],
        "Organization/org-outside is not in the case"
    );
    assert_eq!(
        s(
            "/MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3%7C6&_include=MedicationStatement:medication"
        ),
        [
            "MedicationStatement/medstat-1",
            "MedicationStatement/medstat-2",
            "+Medication/med-1"
        ],
        "Medication/med-outside is not in the case"
    );
    assert_eq!(
        s(
            "/Observation?category=http://snomed.info/sct|275711006&_include=Observation:related-target&_include=Observation:specimen"
        ),
        [
            "Observation/lab-1",
            "+Observation/lab-2",
            "+Specimen/spec-1"
        ],
        "Observation/obs-b1 (another patient's) is not included"
    );
    assert_eq!(
        s("/DocumentReference?_include=DocumentReference:subject:Patient"),
        ["DocumentReference/doc-1", "+Patient/pat-1"]
    );
    assert_eq!(
        s("/Observation?_id=lab-1,lab-2&_include=Observation:related-target"),
        ["Observation/lab-1", "Observation/lab-2"],
        "a match is not repeated as an include"
    );
}

#[test]
fn include_that_is_not_allowed_is_400() {
    let f = fixture();
    for q in [
        "/Observation?_include=Observation:code",
        "/Patient?_include=Patient:link",
        "/Observation?_include=Patient:general-practitioner",
        "/Observation?_include=*",
        "/Observation?_include:iterate=Observation:specimen",
        "/Observation?_include=Observation:specimen:Patient",
    ] {
        refused(
            &get(&f, q),
            400,
            if q.contains(":iterate") {
                "not-supported"
            } else {
                "invalid"
            },
        );
    }
}

#[test]
fn lastn_returns_the_newest_per_code() {
    let f = fixture();
    let s = |q: &str| get(&f, q).ids();
    let a = get(&f, "/Observation/$lastn?code=http://loinc.org|85354-9");
    assert_eq!(a.ids(), ["Observation/bp-1"]);
    assert_eq!(
        a.json()["entry"][0]["resource"]["component"][0]["valueQuantity"]["value"],
        142
    );
    assert_eq!(
        s(
            "/Observation/%24lastn?category=http://hl7.org/fhir/observation-category|vital-signs&max=2"
        ),
        [
            "Observation/bp-1",
            "Observation/bp-2",
            "Observation/weight-1",
            "Observation/weight-2"
        ]
    );
    assert_eq!(
        s("/Observation/$lastn?code=http://loinc.org|85354-9&max=5"),
        ["Observation/bp-1", "Observation/bp-2", "Observation/bp-3"]
    );
    assert_eq!(
        s(
            "/Observation/$lastn?category=http://snomed.info/sct|275711006&_include=Observation:related-target&_include=Observation:specimen"
        ),
        [
            "Observation/lab-1",
            "+Observation/lab-2",
            "+Specimen/spec-1"
        ]
    );
    assert_eq!(
        s("/Observation/$lastn?code=http://loinc.org|8302-2,http://loinc.org|8306-3"),
        Vec::<String>::new()
    );
    refused(&get(&f, "/Observation/$lastn?max=0"), 400, "invalid");
    refused(&get(&f, "/Condition/$lastn"), 400, "not-supported");
    refused(&get(&f, "/Observation/$everything"), 400, "not-supported");
}

#[test]
fn paging_follows_next_links_to_the_end() {
    let f = fixture();
    let first =
        "/Observation?category=http://hl7.org/fhir/observation-category|vital-signs&_count=2";
    let mut target = first.to_string();
    let mut pages = Vec::new();
    loop {
        let a = get(&f, &target);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["total"], 5);
        let next = a.link("next");
        pages.push((a.link("self").unwrap(), a.ids(), next.clone()));
        match next {
            Some(n) => target = target_of(&n).to_string(),
            None => break,
        }
        assert!(pages.len() < 10);
    }
    assert_eq!(pages.len(), 3);
    let all: Vec<String> = pages.iter().flat_map(|p| p.1.clone()).collect();
    assert_eq!(
        all,
        [
            "Observation/bp-1",
            "Observation/bp-2",
            "Observation/bp-3",
            "Observation/weight-1",
            "Observation/weight-2"
        ]
    );
    assert_eq!(pages[0].1.len(), 2);
    assert_eq!(pages[2].1.len(), 1);
    // Self links: the search as asked, then each page's own link.
    assert_eq!(
        pages[0].0,
        format!(
            "{BASE}/Observation?category=http://hl7.org/fhir/observation-category%7Cvital-signs&_count=2"
        )
    );
    assert_eq!(Some(pages[1].0.clone()), pages[0].2);
    assert_eq!(Some(pages[2].0.clone()), pages[1].2);
    // The link is opaque: no search terms, no patient.
    let next = pages[0].2.clone().unwrap();
    assert!(
        next.starts_with(&format!("{BASE}/Observation?_page=p1.")),
        "{next}"
    );
    assert!(!next.contains("vital") && !next.contains("category"));
    // Following the first self link again gives the first page again.
    assert_eq!(get(&f, target_of(&pages[0].0)).ids(), pages[0].1);
    let ev = last_event(&f);
    assert_eq!(ev["results"], 2);
}

#[test]
fn paging_works_with_the_process_key_and_keeps_the_format() {
    let f = fixture();
    let g = pull_grant(&f.a);
    let req = |target: &str| {
        let (path, query) = target.split_once('?').unwrap();
        let r = handle(
            &f.cases,
            &g,
            &ServeRequest {
                method: "GET",
                path,
                query: Some(query),
                accept: None,
                request_id: "r",
            },
            &f.audit,
            &format!("{BASE}/"),
            NOW,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    let p1 = req("/Observation/$lastn?max=9&_count=4&_format=json");
    let next = p1["link"][1]["url"].as_str().unwrap();
    assert!(next.ends_with("&_format=json"), "{next}");
    let p2 = req(target_of(next));
    assert_eq!(p1["total"], 7, "3 blood pressures, 2 weights, 2 lab values");
    assert_eq!(p2["entry"].as_array().unwrap().len(), 3);
    assert!(
        p2["link"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["relation"] != "next")
    );
    assert_eq!(
        p2["entry"][0]["fullUrl"],
        format!("{BASE}/Observation/weight-2")
    );
}

#[test]
fn page_links_that_were_tampered_with_or_forged_are_refused() {
    let f = fixture();
    let first = get(&f, "/Observation?_count=2");
    let next = first.link("next").unwrap();
    let target = target_of(&next).to_string();
    assert_eq!(get(&f, &target).status, 200);

    // Altered token.
    let token = target.split_once("_page=").unwrap().1.to_string();
    let mut bytes = token.clone().into_bytes();
    let last = bytes.len() - 5;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = format!("/Observation?_page={}", String::from_utf8(bytes).unwrap());
    refused(&get(&f, &tampered), 400, "invalid");
    // Forged from nothing, and a different token format.
    refused(
        &get(
            &f,
            "/Observation?_page=p1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        400,
        "invalid",
    );
    refused(
        &get(&f, "/Observation?_page=eyJ0IjoiUGF0aWVudCJ9"),
        400,
        "invalid",
    );
    // Extra parameters next to the page cannot change the search.
    refused(
        &get(&f, &format!("{target}&patient=Patient/pat-2")),
        400,
        "invalid",
    );
    refused(&get(&f, &format!("{target}&code=x")), 400, "invalid");
    // Another path.
    refused(
        &get(&f, &format!("/Condition?_page={token}")),
        400,
        "invalid",
    );
    // A page link of another case and partner does not open with this grant, nor ours with theirs.
    let other = call(&f, &pull_grant(&f.b), "GET", "/Observation?_count=1", None);
    let other_next = other.link("next").unwrap();
    assert_eq!(
        call(&f, &pull_grant(&f.b), "GET", target_of(&other_next), None).ids(),
        ["Observation/obs-b2"]
    );
    refused(&get(&f, target_of(&other_next)), 400, "invalid");
    refused(
        &call(&f, &pull_grant(&f.b), "GET", &target, None),
        400,
        "invalid",
    );
    // A page link made by another process (key) does not open.
    let other_key = handle_with_key(
        &f.cases,
        &pull_grant(&f.a),
        &ServeRequest {
            method: "GET",
            path: "/Observation",
            query: Some("_count=2"),
            accept: None,
            request_id: "r",
        },
        &f.audit,
        BASE,
        NOW,
        &PageKey::from_bytes([1; 32]),
    );
    let v: Value = serde_json::from_slice(&other_key.body).unwrap();
    let foreign = v["link"][1]["url"].as_str().unwrap().to_string();
    refused(&get(&f, target_of(&foreign)), 400, "invalid");
    // Expired.
    let g = pull_grant(&f.a).valid(NOW - 10, NOW + PAGE_LINK_LIFETIME + 10);
    refused(
        &call_at(&f, &g, "GET", &target, None, NOW + PAGE_LINK_LIFETIME),
        410,
        "processing",
    );
    let ev = last_event(&f);
    assert_eq!(ev["outcome"], "refused");
}

#[test]
fn page_links_end_when_the_data_is_updated() {
    let f = fixture();
    let next = get(&f, "/Observation?_count=2").link("next").unwrap();
    // An update: version 2 without the blood pressures.
    let mut v2 = case_a_data();
    v2["entry"]
        .as_array_mut()
        .unwrap()
        .retain(|e| !e["resource"]["id"].as_str().unwrap().starts_with("bp-"));
    let mut case = f.a.clone();
    case.version = 2;
    f.cases
        .write_data("hospb", "c-0042", 2, &serde_json::to_vec(&v2).unwrap())
        .unwrap();
    f.cases.save(&case).unwrap();
    refused(&get(&f, target_of(&next)), 410, "processing");
    refused(&get(&f, "/Observation/bp-1"), 404, "not-found");
    assert_eq!(
        get(&f, "/Observation/weight-1").status,
        200,
        "the current version is served"
    );
}

// ---- refusals ----

#[test]
fn search_naming_another_patient_is_403() {
    let f = fixture();
    for q in [
        "/Observation?patient=Patient/pat-2",
        "/Observation?patient=pat-2",
        "/Observation?subject=Patient/pat-2",
        "/Observation?subject=pat-1,pat-2",
        "/Observation?patient=http://fhir.nl/fhir/NamingSystem/bsn|999999163",
        "/Observation/$lastn?patient=Patient/pat-2",
        "/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999163",
        "/Patient?identifier=999999163",
        "/Patient?_id=pat-2",
        "/Coverage?beneficiary=Patient/pat-2",
    ] {
        refused(&get(&f, q), 403, "forbidden");
    }
    let ev = last_event(&f);
    assert_eq!(
        (ev["action"].as_str(), ev["outcome"].as_str()),
        (Some("fhir.search"), Some("refused"))
    );
}

#[test]
fn grant_of_another_partner_is_403() {
    let f = fixture();
    let a = &f.a;
    // Partner hospc presenting hospb's case.
    let g = grant_for("hospc", &a.authorization_base, &a.case_id, &a.patient);
    refused(
        &call(&f, &g, "GET", "/Patient/pat-1", None),
        403,
        "forbidden",
    );
    // hospb's grant naming hospc's case.
    let g = grant_for(&a.partner, &a.authorization_base, &f.b.case_id, &a.patient);
    refused(
        &call(&f, &g, "GET", "/Patient/pat-2", None),
        403,
        "forbidden",
    );
    // A base that is not the case's.
    let g = grant_for(&a.partner, &f.b.authorization_base, &a.case_id, &a.patient);
    refused(
        &call(&f, &g, "GET", "/Patient/pat-1", None),
        403,
        "forbidden",
    );
    // Another patient.
    let g = grant_for(&a.partner, &a.authorization_base, &a.case_id, BSN_B);
    refused(
        &call(&f, &g, "GET", "/Patient/pat-1", None),
        403,
        "forbidden",
    );
    let ev = last_event(&f);
    assert_eq!(ev["outcome"], "refused");
}

#[test]
fn notify_grant_is_403() {
    let f = fixture();
    let g = Grant::notify(
        &f.a.partner,
        "np.hospb.example",
        OrgId::Ura("87654321".into()),
        None,
        Bsn::parse(&f.a.patient),
    )
    .valid(NOW - 10, NOW + 290);
    let a = call(&f, &g, "GET", "/Patient/pat-1", None);
    refused(&a, 403, "forbidden");
    assert!(a.diagnostics().contains("notify"));
    refused(
        &call(&f, &g, "GET", "/Observation?code=x", None),
        403,
        "forbidden",
    );
    let ev = last_event(&f);
    assert_eq!(
        (
            ev["action"].as_str(),
            ev["outcome"].as_str(),
            ev["partner"].as_str()
        ),
        (Some("fhir.search"), Some("refused"), Some("hospb"))
    );
}

#[test]
fn cancelled_case_is_403() {
    let f = fixture();
    let c = add_case(&f.cases, "hospb", "c-cancel", BSN_A, &case_a_data(), |c| {
        c.status = CaseStatus::Cancelled;
    });
    let a = call(&f, &pull_grant(&c), "GET", "/Patient/pat-1", None);
    refused(&a, 403, "forbidden");
    assert!(a.diagnostics().contains("cancelled"));
    // Cancelling a live case stops serving at once, mid-paging too.
    let next = get(&f, "/Observation?_count=2").link("next").unwrap();
    let mut live = f.a.clone();
    live.status = CaseStatus::Cancelled;
    f.cases.save(&live).unwrap();
    refused(&get(&f, target_of(&next)), 403, "forbidden");
    refused(&get(&f, "/Patient/pat-1"), 403, "forbidden");
}

#[test]
fn expired_case_is_403() {
    let f = fixture();
    let c = add_case(&f.cases, "hospb", "c-old", BSN_A, &case_a_data(), |c| {
        c.expires_at = NOW;
    });
    let a = call(&f, &pull_grant(&c), "GET", "/Patient/pat-1", None);
    refused(&a, 403, "forbidden");
    assert!(a.diagnostics().contains("expired"));
    // An expired grant itself (the router normally catches it): 401.
    let g = pull_grant(&f.a).valid(NOW - 10, NOW);
    let a = call(&f, &g, "GET", "/Patient/pat-1", None);
    refused(&a, 401, "security");
    assert_eq!(
        a.header("WWW-Authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
}

#[test]
fn revinclude_is_400() {
    let f = fixture();
    refused(
        &get(&f, "/Patient?_revinclude=Observation:subject"),
        400,
        "not-supported",
    );
}

#[test]
fn unknown_parameter_is_400() {
    let f = fixture();
    for q in [
        "/Observation?foo=bar",
        "/Observation?_sort=code",
        "/Observation?_sort=-date&_sort=date",
        "/Condition?_sort=-date",
        "/Observation?date=ge2026-01-01",
        "/Observation?_profile=zib-BloodPressure",
        "/Observation?_summary=count",
        "/Observation?code:text=weight",
        "/Observation?subject.identifier=999999151",
        "/Condition?class=IMP",
        "/Observation?_count=abc",
        "/Observation?code=a|b|c",
        "/Patient/pat-1?_elements=name",
        "/Observation?code",
        "/Observation?a=%ZZ%00",
        "/Observation?_format=xml&_format=json",
    ] {
        let a = get(&f, q);
        assert_eq!(a.status, 400, "{q}");
        assert!(
            !a.diagnostics().contains("999999151"),
            "{q}: values are never echoed"
        );
    }
    assert!(
        get(&f, "/Observation?foo=bar")
            .diagnostics()
            .contains("foo")
    );
}

#[test]
fn other_methods_are_405() {
    let f = fixture();
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"] {
        let a = call(&f, &pull_grant(&f.a), m, "/Observation", None);
        refused(&a, 405, "not-supported");
        assert_eq!(a.header("Allow"), Some("GET, HEAD"));
    }
}

#[test]
fn paths_that_are_not_reads_or_searches_are_400() {
    let f = fixture();
    for p in [
        "",
        "/",
        "/observation",
        "/Observation/",
        "/Observation/bp-1/_history/1",
        "/Observation/_search",
        "/Observation/a/b",
        "/Observation/bp%2",
        "/Observation/%00",
        "/Observation/../Patient",
    ] {
        assert_eq!(get(&f, p).status, 400, "{p:?}");
    }
    let ev = last_event(&f);
    assert_eq!(ev["action"], "fhir.request");
}

#[test]
fn case_data_that_cannot_be_served_is_500_without_content() {
    let f = fixture();
    let c = add_case(
        &f.cases,
        "hospb",
        "c-nopatient",
        BSN_A,
        &bundle(vec![json!({"resourceType": "Patient", "id": "x",
                            "identifier": [{"system": BSN_SYSTEM, "value": BSN_B}]})]),
        |_| {},
    );
    let a = call(&f, &pull_grant(&c), "GET", "/Patient/x", None);
    refused(&a, 500, "exception");
    assert_eq!(last_event(&f)["outcome"], "error");
}

#[test]
fn every_answer_is_audited() {
    let f = fixture();
    let before = audit_events(&f).len();
    let targets = [
        "/Patient/pat-1",
        "/Patient/nope",
        "/Observation?foo=1",
        "/Observation?patient=pat-2",
        "/",
    ];
    for t in targets {
        get(&f, t);
    }
    call(&f, &pull_grant(&f.a), "POST", "/Observation", None);
    let events = audit_events(&f);
    assert_eq!(events.len() - before, targets.len() + 1);
    for ev in &events[before..] {
        assert_eq!(ev["partner"], "hospb");
        assert_eq!(ev["patient"], BSN_A);
        assert!(ev["request_id"].is_string());
        assert!(ev["object"].is_string());
    }
}

// ---- formats ----

fn from_xml(a: &Answer) -> Value {
    assert_eq!(
        a.header("Content-Type"),
        Some("application/fhir+xml; charset=utf-8")
    );
    crate::fhir::xml_to_json(
        &a.body,
        crate::fhir::FhirVersion::Stu3,
        &crate::fhir::Limits::default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&a.body)))
}

#[test]
fn xml_on_format_or_accept() {
    let f = fixture();
    let g = pull_grant(&f.a);
    let json = get(&f, "/Observation/bp-1").json();
    for (target, accept) in [
        ("/Observation/bp-1?_format=xml", None),
        ("/Observation/bp-1?_format=application/fhir+xml", None),
        ("/Observation/bp-1?_format=application%2Ffhir%2Bxml", None),
        ("/Observation/bp-1", Some("application/fhir+xml")),
        (
            "/Observation/bp-1",
            Some("text/html, application/xml;q=0.9"),
        ),
        (
            "/Observation/bp-1?_format=xml",
            Some("application/fhir+json"),
        ),
    ] {
        let a = call(&f, &g, "GET", target, accept);
        assert_eq!(a.status, 200, "{target}");
        let text = String::from_utf8_lossy(&a.body);
        assert!(text.contains("<Observation xmlns=\"http://hl7.org/fhir\">"));
        assert_eq!(from_xml(&a), json, "{target} {accept:?}");
    }
    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("application/xml;q=0.5, application/fhir+json"),
    ] {
        let a = call(&f, &g, "GET", "/Observation/bp-1", accept);
        assert_eq!(a.json(), json, "{accept:?}");
    }
    let a = call(
        &f,
        &g,
        "GET",
        "/Observation/bp-1?_format=json",
        Some("application/fhir+xml"),
    );
    assert_eq!(a.json(), json, "_format wins over Accept");

    // A searchset, its paging and the Binary in XML.
    let x = call(
        &f,
        &g,
        "GET",
        "/Observation?category=http://hl7.org/fhir/observation-category|vital-signs&_count=2&_format=xml&_include=Observation:subject",
        None,
    );
    let b = from_xml(&x);
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 5);
    assert_eq!(b["entry"].as_array().unwrap().len(), 3);
    assert_eq!(b["entry"][2]["search"]["mode"], "include");
    assert_eq!(b["entry"][0]["resource"], json);
    let next = b["link"][1]["url"].as_str().unwrap();
    assert!(next.ends_with("&_format=xml"), "{next}");
    let p2 = from_xml(&call(&f, &g, "GET", target_of(next), None));
    assert_eq!(p2["entry"][0]["resource"]["id"], "bp-3");
    let bin = from_xml(&call(
        &f,
        &g,
        "GET",
        "/Binary/bin-1",
        Some("application/fhir+xml"),
    ));
    assert_eq!(bin["content"], "T250c2xhZ2JyaWVm");

    // Refusals come in the negotiated format too.
    let a = call(&f, &g, "GET", "/Observation/obs-b1?_format=xml", None);
    assert_eq!(a.status, 404);
    assert_eq!(from_xml(&a)["issue"][0]["code"], "not-found");
}

#[test]
fn nothing_acceptable_is_406() {
    let f = fixture();
    let g = pull_grant(&f.a);
    for (target, accept) in [
        ("/Patient/pat-1", Some("text/html")),
        (
            "/Patient/pat-1",
            Some("application/fhir+json;q=0, application/fhir+xml;q=0"),
        ),
        ("/Patient/pat-1?_format=html", None),
        (
            "/Observation?_format=text/turtle",
            Some("application/fhir+json"),
        ),
    ] {
        let a = call(&f, &g, "GET", target, accept);
        refused(&a, 406, "not-supported");
        assert_eq!(
            a.header("Content-Type"),
            Some("application/fhir+json; charset=utf-8")
        );
    }
}

#[test]
fn unknown_resource_types_are_400() {
    let f = fixture();
    for t in [
        "/ServiceRequest?status=active",
        "/Foo/1",
        "/Observation?_include=Observation:subject:Foo",
        "/Observation?subject=Foo/1",
    ] {
        refused(&get(&f, t), 400, "invalid");
    }
}

#[test]
fn data_that_cannot_be_written_as_xml_is_406_in_xml_and_served_in_json() {
    let f = fixture();
    let mut data = case_a_data();
    data["entry"][2]["resource"]["notAnStu3Element"] = json!(true);
    let c = add_case(&f.cases, "hospb", "c-odd", BSN_A, &data, |_| {});
    let g = pull_grant(&c);
    assert_eq!(call(&f, &g, "GET", "/Condition/cond-1", None).status, 200);
    let a = call(&f, &g, "GET", "/Condition/cond-1?_format=xml", None);
    refused(&a, 406, "not-supported");
    assert!(!String::from_utf8_lossy(&a.body).contains("Hypertensive"));
    assert_eq!(last_event(&f)["outcome"], "refused");
    assert_eq!(
        call(&f, &g, "GET", "/Condition/cond-2?_format=xml", None).status,
        200
    );
}

// ---- the BgZ and Zorgviewer queries over a published record ----

const ZIB_BP: &str = "http://nictiz.nl/fhir/StructureDefinition/zib-BloodPressure";
const ZIB_LAB: &str = "http://nictiz.nl/fhir/StructureDefinition/zib-LaboratoryTestResult";
const ACT: &str = "http://hl7.org/fhir/v3/ActCode";
const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog>> endobj\n%%EOF\n";

fn profiled(mut resource: Value, profile: &str) -> Value {
    resource["meta"] = json!({"profile": [profile]});
    resource
}

/// An Observation of the published record's patient with a LOINC code.
fn lab(id: &str, category: (&str, &str), code: &str, when: Value) -> Value {
    let mut o = on(
        "Observation",
        id,
        "subject",
        json!({"status": "final", "category": [coding(category.0, category.1)],
               "code": coding(LOINC, code)}),
    );
    if let (Some(o), Some(w)) = (o.as_object_mut(), when.as_object()) {
        o.extend(w.clone());
    }
    o
}

/// A `resource_type` whose `link` is the published record's patient, with `extra` elements.
fn on(resource_type: &str, id: &str, link: &str, extra: Value) -> Value {
    let mut r =
        json!({"resourceType": resource_type, "id": id, link: {"reference": "Patient/pat-zv"}});
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        r.extend(extra.clone());
    }
    r
}

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

fn encounter(id: &str, class: &str, start: &str) -> Value {
    on(
        "Encounter",
        id,
        "subject",
        json!({"status": "finished", "class": {"system": ACT, "code": class},
               "period": {"start": start}}),
    )
}

/// A patient record as an EHR publishes it for Zorgviewer: the BgZ sections,
/// dates out of Bundle order, zib profiles (one with a version), categories
/// with and without the system a query names, documents with their PDFs.
fn published_record() -> Value {
    let pdf = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, PDF);
    let blood_pressures = [
        (
            "bp-a",
            json!({"effectiveDateTime": "2026-03-01"}),
            ZIB_BP.to_string(),
        ),
        (
            "bp-b",
            json!({"effectiveDateTime": "2026-11-02T08:00:00+01:00"}),
            ZIB_BP.into(),
        ),
        (
            "bp-c",
            json!({"effectiveDateTime": "2025-12-31"}),
            ZIB_BP.into(),
        ),
        ("bp-e", json!({}), ZIB_BP.into()),
        (
            "bp-d",
            json!({"effectivePeriod": {"start": "2026-11-02T07:30:00Z"}}),
            ZIB_BP.into(),
        ),
        (
            "bp-f",
            json!({"effectiveDateTime": "2026-06"}),
            format!("{ZIB_BP}|3.2.0"),
        ),
        ("bp-g", json!({"effectiveDateTime": "2024"}), ZIB_BP.into()),
    ];
    let mut resources = vec![
        json!({"resourceType": "Patient", "id": "pat-zv",
               "identifier": [{"system": BSN_SYSTEM, "value": BSN_A},
                              {"system": "urn:oid:2.16.840.1.113883.2.4.6.3.99", "value": "MRN-77"}],
               "name": [{"family": "Publicatie", "given": ["Pieter"]}], "birthDate": "1961-07-02",
               "generalPractitioner": [{"reference": "Practitioner/gp-zv"}]}),
        json!({"resourceType": "Practitioner", "id": "gp-zv", "name": [{"family": "Huisarts"}]}),
        json!({"resourceType": "Organization", "id": "org-insurer", "name": "Zorgverzekeraar"}),
        on(
            "Coverage",
            "cov-1",
            "beneficiary",
            json!({"status": "active", "payor": [{"reference": "Organization/org-insurer"}]}),
        ),
        on(
            "Consent",
            "consent-tr",
            "patient",
            json!({"status": "active", "category": [coding(SCT, "11291000146105")]}),
        ),
        on(
            "Consent",
            "consent-will",
            "patient",
            json!({"status": "active", "category": [coding(SCT, "11341000146107")]}),
        ),
        on(
            "Condition",
            "cond-active",
            "subject",
            json!({"clinicalStatus": "active", "code": coding(SCT, "38341003"),
                  "onsetDateTime": "2018-05-01"}),
        ),
        on(
            "Condition",
            "cond-resolved",
            "subject",
            json!({"clinicalStatus": "resolved", "code": coding(SCT, "195967001")}),
        ),
        on(
            "Condition",
            "cond-inactive",
            "subject",
            json!({"clinicalStatus": "inactive", "code": coding(SCT, "44054006")}),
        ),
        on(
            "EpisodeOfCare",
            "eoc-1",
            "patient",
            json!({"status": "active", "period": {"start": "2018-05-01"},
                  "diagnosis": [{"condition": {"reference": "Condition/cond-active"}},
                                {"condition": {"reference": "Condition/cond-elsewhere"}}]}),
        ),
        on(
            "EpisodeOfCare",
            "eoc-2",
            "patient",
            json!({"status": "finished",
                  "diagnosis": [{"condition": {"reference": "Condition/cond-resolved"}, "rank": 1}]}),
        ),
        lab(
            "lab-hb",
            (OBS_CAT, "laboratory"),
            "718-7",
            json!({"issued": "2026-11-19T12:00:00Z"}),
        ),
        lab(
            "lab-crp",
            (OBS_CAT, "laboratory"),
            "1988-5",
            json!({"effectiveDateTime": "2026-10-01"}),
        ),
        lab(
            "lab-sct",
            (SCT, "275711006"),
            "2345-7",
            json!({"issued": "2026-11-18T09:00:00Z",
            "specimen": {"reference": "Specimen/spec-zv"}}),
        ),
        on("Specimen", "spec-zv", "subject", json!({})),
        lab(
            "weight-zv",
            (OBS_CAT, "vital-signs"),
            "29463-7",
            json!({"effectiveDateTime": "2026-11-20T09:00:00+01:00"}),
        ),
        lab(
            "bp-unprofiled",
            (OBS_CAT, "vital-signs"),
            "85354-9",
            json!({"effectiveDateTime": "2026-12-01"}),
        ),
        lab(
            "function-zv",
            (SCT, "118228005"),
            "75246-9",
            json!({"effectiveDateTime": "2026-01-05"}),
        ),
        on(
            "Observation",
            "living-zv",
            "subject",
            json!({"status": "final", "code": coding(SCT, "365508006"), "effectiveDateTime": "2025-02-01"}),
        ),
        on(
            "Observation",
            "tobacco-zv",
            "subject",
            json!({"status": "final", "code": coding(SCT, "365980008")}),
        ),
        on(
            "NutritionOrder",
            "diet-zv",
            "patient",
            json!({"status": "active", "dateTime": "2026-01-01"}),
        ),
        on(
            "Flag",
            "flag-zv",
            "subject",
            json!({"status": "active", "code": coding(SCT, "15188001")}),
        ),
        on(
            "AllergyIntolerance",
            "allergy-zv",
            "patient",
            json!({"clinicalStatus": "active", "verificationStatus": "confirmed", "code": coding(SCT, "91936005")}),
        ),
        json!({"resourceType": "Medication", "id": "med-zv", "code": coding("urn:oid:2.16.840.1.113883.2.4.4.10", "2134")}),
        on(
            "MedicationStatement",
            "medstat-zv",
            "subject",
            json!({"status": "active", "taken": "y", "category": coding(MED_CAT, "6"),
                  "medicationReference": {"reference": "Medication/med-zv"}}),
        ),
        on(
            "MedicationRequest",
            "medreq-zv",
            "subject",
            json!({"status": "active", "intent": "order", "category": coding(SCT, "16076005"),
                  "medicationReference": {"reference": "Medication/med-zv"}}),
        ),
        on(
            "MedicationDispense",
            "disp-done",
            "subject",
            json!({"status": "completed", "category": coding(SCT, "422037009"),
                  "medicationReference": {"reference": "Medication/med-zv"}}),
        ),
        on(
            "MedicationDispense",
            "disp-prep",
            "subject",
            json!({"status": "preparation", "category": coding(SCT, "422037009"),
                  "medicationReference": {"reference": "Medication/med-zv"}}),
        ),
        on("Device", "dev-zv", "patient", json!({"status": "active"})),
        on(
            "DeviceUseStatement",
            "dus-zv",
            "subject",
            json!({"status": "active", "device": {"reference": "Device/dev-zv"}}),
        ),
        on(
            "DeviceRequest",
            "devreq-zv",
            "subject",
            json!({"status": "active", "intent": "order", "codeReference": {"reference": "Device/dev-zv"}}),
        ),
        on(
            "Immunization",
            "imm-done",
            "patient",
            json!({"status": "completed", "notGiven": false, "date": "2020-10-01"}),
        ),
        on(
            "Immunization",
            "imm-error",
            "patient",
            json!({"status": "entered-in-error", "notGiven": false}),
        ),
        on(
            "ImmunizationRecommendation",
            "immrec-zv",
            "patient",
            json!({}),
        ),
        on(
            "Procedure",
            "proc-zv",
            "subject",
            json!({"status": "completed", "category": coding(SCT, "387713003"),
                  "performedDateTime": "2019-02-02"}),
        ),
        on(
            "ProcedureRequest",
            "procreq-zv",
            "subject",
            json!({"status": "active", "intent": "order"}),
        ),
        json!({"resourceType": "Appointment", "id": "appt-booked", "status": "booked",
               "participant": [{"actor": {"reference": "Patient/pat-zv"}, "status": "accepted"}]}),
        json!({"resourceType": "Appointment", "id": "appt-cancelled", "status": "cancelled",
               "participant": [{"actor": {"reference": "Patient/pat-zv"}, "status": "declined"}]}),
        encounter("enc-amb", "AMB", "2026-09-01T10:00:00+02:00"),
        encounter("enc-imp", "IMP", "2025-01-10T08:00:00+01:00"),
        encounter("enc-emer", "EMER", "2026-10-12T23:10:00+02:00"),
        encounter("enc-acute", "ACUTE", "2026-10-13T01:00:00+02:00"),
        encounter("enc-nonac", "NONAC", "2024-04-04"),
        on(
            "Composition",
            "comp-his",
            "subject",
            json!({"status": "final", "type": coding(LOINC, "67781-5"), "date": "2026-11-01",
                  "title": "Huisartswaarneemsamenvatting"}),
        ),
        on(
            "Composition",
            "comp-consult",
            "subject",
            json!({"status": "final", "type": coding(LOINC, "11488-4"), "date": "2026-11-02",
                  "title": "Consult"}),
        ),
        on(
            "DocumentReference",
            "doc-letter",
            "subject",
            json!({"status": "current", "type": coding(LOINC, "56444-3"), "indexed": "2026-11-21T14:00:00+01:00",
                  "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/bin-letter"}}]}),
        ),
        on(
            "DocumentReference",
            "doc-old",
            "subject",
            json!({"status": "superseded", "type": coding(LOINC, "56444-3"), "indexed": "2025-01-01T00:00:00Z",
                  "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/bin-old"}}]}),
        ),
        on(
            "DocumentReference",
            "doc-imaging",
            "subject",
            json!({"status": "current", "type": coding(LOINC, "28570-0"), "indexed": "2026-11-22T09:00:00+01:00",
                  "content": [{"attachment": {"contentType": "application/pdf",
                                              "url": "https://ehr.example/fhir/Binary/bin-imaging"}}]}),
        ),
        json!({"resourceType": "Binary", "id": "bin-letter", "contentType": "application/pdf", "content": pdf}),
        json!({"resourceType": "Binary", "id": "bin-old", "contentType": "application/pdf", "content": pdf}),
        json!({"resourceType": "Binary", "id": "bin-imaging", "contentType": "application/pdf", "content": pdf}),
        json!({"resourceType": "Binary", "id": "bin-unlisted", "contentType": "application/pdf", "content": pdf}),
    ];
    for (id, when, profile) in blood_pressures {
        resources.push(profiled(
            lab(id, (OBS_CAT, "vital-signs"), "85354-9", when),
            &profile,
        ));
    }
    resources.push(profiled(
        lab(
            "lab-k",
            (OBS_CAT, "laboratory"),
            "2823-3",
            json!({"issued": "2026-11-19T12:00:00Z"}),
        ),
        ZIB_LAB,
    ));
    bundle(resources)
}

/// Serves [`published_record`] as a case of hospb's, and answers `target`.
struct Record {
    f: Fixture,
    case: Case,
}

impl Record {
    fn new() -> Record {
        let f = fixture();
        let case = add_case(
            &f.cases,
            "hospb",
            "rec-zv",
            BSN_A,
            &published_record(),
            |_| {},
        );
        Record { f, case }
    }

    fn get(&self, target: &str) -> Answer {
        call(&self.f, &pull_grant(&self.case), "GET", target, None)
    }

    fn ids(&self, target: &str) -> Vec<String> {
        let a = self.get(target);
        assert_eq!(
            a.status,
            200,
            "{target}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.ids()
    }
}

/// Every query of zorgviewer spec §7 as Zorgviewer sends it, with the exact
/// result in order.
#[test]
fn zorgviewer_queries_over_a_published_record() {
    let r = Record::new();
    let zv = |q: &str| r.ids(q);
    assert_eq!(
        zv("/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151"),
        ["Patient/pat-zv"]
    );
    assert_eq!(zv("/Patient?identifier=999999151"), ["Patient/pat-zv"]);
    assert_eq!(
        zv("/Patient?identifier=urn:oid:2.16.840.1.113883.2.4.6.3.99|MRN-77"),
        ["Patient/pat-zv"]
    );
    assert_eq!(zv("/Patient?_id=pat-zv"), ["Patient/pat-zv"]);
    assert_eq!(
        zv("/Condition?patient=pat-zv"),
        [
            "Condition/cond-active",
            "Condition/cond-resolved",
            "Condition/cond-inactive"
        ]
    );
    assert_eq!(
        zv("/Condition?patient=pat-zv&clinical-status=active,resolved"),
        ["Condition/cond-active", "Condition/cond-resolved"]
    );
    let labs = [
        "Observation/lab-hb",
        "Observation/lab-crp",
        "Observation/lab-k",
    ];
    assert_eq!(zv("/Observation?patient=pat-zv&category=laboratory"), labs);
    assert_eq!(
        zv(
            "/Observation?patient=pat-zv&category=http://hl7.org/fhir/observation-category|laboratory"
        ),
        labs
    );
    assert_eq!(
        zv("/Observation?patient=pat-zv&category=http://snomed.info/sct|laboratory"),
        Vec::<String>::new()
    );
    assert_eq!(
        zv("/Observation?patient=pat-zv&category=vital-signs"),
        [
            "Observation/weight-zv",
            "Observation/bp-unprofiled",
            "Observation/bp-a",
            "Observation/bp-b",
            "Observation/bp-c",
            "Observation/bp-e",
            "Observation/bp-d",
            "Observation/bp-f",
            "Observation/bp-g"
        ]
    );
    assert_eq!(
        zv(&format!("/Observation?patient=pat-zv&_profile={ZIB_LAB}")),
        ["Observation/lab-k"]
    );
    assert_eq!(
        zv(
            "/Encounter?patient=pat-zv&class=http://hl7.org/fhir/v3/ActCode|IMP,http://hl7.org/fhir/v3/ActCode|ACUTE,http://hl7.org/fhir/v3/ActCode|NONAC"
        ),
        [
            "Encounter/enc-imp",
            "Encounter/enc-acute",
            "Encounter/enc-nonac"
        ]
    );
    assert_eq!(
        zv("/Encounter?patient=pat-zv&class=http://hl7.org/fhir/v3/ActCode|AMB"),
        ["Encounter/enc-amb"]
    );
    assert_eq!(
        zv(
            "/Encounter?patient=pat-zv&class=http://hl7.org/fhir/v3/ActCode|IMP,http://hl7.org/fhir/v3/ActCode|ACUTE,http://hl7.org/fhir/v3/ActCode|NONAC,http://hl7.org/fhir/v3/ActCode|AMB&_sort=-date"
        ),
        [
            "Encounter/enc-acute",
            "Encounter/enc-amb",
            "Encounter/enc-imp",
            "Encounter/enc-nonac"
        ],
        "EMER is not asked for"
    );
    let episodes = [
        "EpisodeOfCare/eoc-1",
        "EpisodeOfCare/eoc-2",
        "+Condition/cond-active",
        "+Condition/cond-resolved",
    ];
    assert_eq!(
        zv("/EpisodeOfCare?patient=pat-zv&_include=Condition:diagnosis"),
        episodes,
        "the guide's form: Condition/cond-elsewhere is not in the record"
    );
    assert_eq!(
        zv("/EpisodeOfCare?patient=pat-zv&_include=EpisodeOfCare:condition"),
        episodes
    );
    assert_eq!(
        zv("/Composition?patient=pat-zv&type=http://loinc.org|67781-5"),
        ["Composition/comp-his"]
    );
    assert_eq!(
        zv("/Composition?patient=pat-zv&type=http%3A%2F%2Floinc.org%7C67781-5"),
        ["Composition/comp-his"]
    );
    assert_eq!(
        zv("/DocumentReference?patient=pat-zv&status=current"),
        [
            "DocumentReference/doc-letter",
            "DocumentReference/doc-imaging"
        ]
    );
    assert_eq!(
        zv("/DocumentReference?patient=pat-zv&status=current&_sort=-indexed"),
        [
            "DocumentReference/doc-imaging",
            "DocumentReference/doc-letter"
        ]
    );
    assert_eq!(
        zv("/Observation/$lastn?patient=pat-zv&code=http://loinc.org|85354-9&max=2"),
        ["Observation/bp-unprofiled", "Observation/bp-d"]
    );

    // The documents' PDFs, and only those a DocumentReference names.
    for bin in ["bin-letter", "bin-imaging", "bin-old"] {
        let a = r.get(&format!("/Binary/{bin}"));
        assert_eq!(a.status, 200, "{bin}");
        let content = a.json()["content"].as_str().unwrap().to_string();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &content).unwrap();
        assert_eq!(bytes, PDF);
    }
    refused(&r.get("/Binary/bin-unlisted"), 404, "not-found");
}

/// The blood-pressure query: the profile (with or without a version), the
/// newest first, five per page, and the second page in the same order.
#[test]
fn blood_pressures_by_profile_newest_first_in_pages_of_five() {
    let r = Record::new();
    let first = format!("/Observation?patient=pat-zv&_profile={ZIB_BP}&_sort=-date&_count=5");
    let a = r.get(&first);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["total"], 7, "bp-unprofiled has no profile");
    assert_eq!(
        a.ids(),
        [
            "Observation/bp-d",
            "Observation/bp-b",
            "Observation/bp-f",
            "Observation/bp-a",
            "Observation/bp-c"
        ],
        "07:30Z after 08:00+01:00; a month is its first day; the version does not matter"
    );
    let next = a.link("next").expect("a second page");
    assert!(
        target_of(&next).starts_with("/Observation?_page=p1.") && !next.contains('&'),
        "the sort travels sealed in the page link: {next}"
    );
    let p2 = r.get(target_of(&next));
    assert_eq!(
        p2.ids(),
        ["Observation/bp-g", "Observation/bp-e"],
        "undated last"
    );
    assert_eq!(p2.json()["total"], 7);
    assert!(p2.link("next").is_none());

    assert_eq!(
        r.ids(&format!(
            "/Observation?patient=pat-zv&_profile={ZIB_BP}&_sort=date&_count=3"
        )),
        ["Observation/bp-g", "Observation/bp-c", "Observation/bp-a"]
    );
    assert_eq!(
        r.ids(&format!("/Observation?_profile={ZIB_BP}|3.2.0&_sort=-date")),
        ["Observation/bp-f"]
    );
    assert_eq!(
        r.ids(&format!("/Observation?_profile={ZIB_BP}|3.1.0")),
        Vec::<String>::new()
    );
    assert_eq!(
        r.ids(&format!(
            "/Observation?_profile={ZIB_BP}-old,{ZIB_LAB}&_sort=-date"
        )),
        ["Observation/lab-k"]
    );
    let ev = last_event(&r.f);
    assert_eq!(ev["action"], "fhir.search");
    assert!(
        ev["object"].as_str().unwrap().contains("_sort=-date"),
        "{ev}"
    );
}

/// Every query of notified-pull spec §8.5, as a Twiin receiver sends it and
/// with `patient=<id>` added as Zorgviewer does, with the exact result.
#[test]
fn bgz_queries_over_a_published_record() {
    let r = Record::new();
    let none = Vec::<&str>::new();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "/Coverage?_include=Coverage:payor:Organization&_include=Coverage:payor:Patient",
            vec!["Coverage/cov-1", "+Organization/org-insurer"],
        ),
        (
            "/Consent?category=http://snomed.info/sct|11291000146105",
            vec!["Consent/consent-tr"],
        ),
        (
            "/Consent?category=http://snomed.info/sct|11341000146107",
            vec!["Consent/consent-will"],
        ),
        (
            "/Observation/$lastn?category=http://snomed.info/sct|118228005,http://snomed.info/sct|384821006",
            vec!["Observation/function-zv"],
        ),
        (
            "/Condition",
            vec![
                "Condition/cond-active",
                "Condition/cond-resolved",
                "Condition/cond-inactive",
            ],
        ),
        (
            "/Observation/$lastn?code=http://snomed.info/sct|365508006",
            vec!["Observation/living-zv"],
        ),
        (
            "/Observation?code=http://snomed.info/sct|365980008",
            vec!["Observation/tobacco-zv"],
        ),
        (
            "/Observation?code=http://snomed.info/sct|228366006",
            none.clone(),
        ),
        ("/NutritionOrder", vec!["NutritionOrder/diet-zv"]),
        ("/Flag", vec!["Flag/flag-zv"]),
        ("/AllergyIntolerance", vec!["AllergyIntolerance/allergy-zv"]),
        (
            "/MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6&_include=MedicationStatement:medication",
            vec!["MedicationStatement/medstat-zv", "+Medication/med-zv"],
        ),
        (
            "/MedicationRequest?category=http://snomed.info/sct|16076005&_include=MedicationRequest:medication",
            vec!["MedicationRequest/medreq-zv", "+Medication/med-zv"],
        ),
        (
            "/MedicationDispense?category=http://snomed.info/sct|422037009&_include=MedicationDispense:medication",
            vec![
                "MedicationDispense/disp-done",
                "MedicationDispense/disp-prep",
                "+Medication/med-zv",
            ],
        ),
        (
            "/DeviceUseStatement?_include=DeviceUseStatement:device",
            vec!["DeviceUseStatement/dus-zv", "+Device/dev-zv"],
        ),
        (
            "/Immunization?status=completed",
            vec!["Immunization/imm-done"],
        ),
        (
            "/Observation/$lastn?code=http://loinc.org|85354-9",
            vec!["Observation/bp-unprofiled"],
        ),
        (
            "/Observation/$lastn?code=http://loinc.org|29463-7",
            vec!["Observation/weight-zv"],
        ),
        (
            "/Observation/$lastn?code=http://loinc.org|8302-2,http://loinc.org|8306-3,http://loinc.org|8308-9",
            none.clone(),
        ),
        (
            "/Observation/$lastn?category=http://snomed.info/sct|275711006&_include=Observation:related-target&_include=Observation:specimen",
            vec!["Observation/lab-sct", "+Specimen/spec-zv"],
        ),
        (
            "/Procedure?category=http://snomed.info/sct|387713003",
            vec!["Procedure/proc-zv"],
        ),
        (
            "/Encounter?class=http://hl7.org/fhir/v3/ActCode|IMP,http://hl7.org/fhir/v3/ActCode|ACUTE,http://hl7.org/fhir/v3/ActCode|NONAC",
            vec![
                "Encounter/enc-imp",
                "Encounter/enc-acute",
                "Encounter/enc-nonac",
            ],
        ),
        (
            "/ProcedureRequest?status=active",
            vec!["ProcedureRequest/procreq-zv"],
        ),
        (
            "/ImmunizationRecommendation",
            vec!["ImmunizationRecommendation/immrec-zv"],
        ),
        (
            "/DeviceRequest?status=active&_include=DeviceRequest:device",
            vec!["DeviceRequest/devreq-zv", "+Device/dev-zv"],
        ),
        (
            "/Appointment?status=booked,pending,proposed",
            vec!["Appointment/appt-booked"],
        ),
        (
            "/MedicationDispense?category=http://snomed.info/sct|422037009&status=in-progress,preparation&_include=MedicationDispense:medication",
            vec!["MedicationDispense/disp-prep", "+Medication/med-zv"],
        ),
        (
            "/DocumentReference?status=current",
            vec![
                "DocumentReference/doc-letter",
                "DocumentReference/doc-imaging",
            ],
        ),
    ];
    assert_eq!(
        r.ids("/Patient?_include=Patient:general-practitioner"),
        ["Patient/pat-zv", "+Practitioner/gp-zv"]
    );
    for (query, expected) in cases {
        assert_eq!(r.ids(query), expected, "{query}");
        let sep = if query.contains('?') { '&' } else { '?' };
        for patient in ["pat-zv", "Patient/pat-zv"] {
            let with_patient = format!("{query}{sep}patient={patient}");
            assert_eq!(r.ids(&with_patient), expected, "{with_patient}");
        }
    }
}
