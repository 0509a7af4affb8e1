//! Intake and storage against real folders (no network: the router and the
//! TLS layer are covered by tests/mitz.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::config::from_vars;
use crate::config::tests_support::TestSite;
use crate::http::Peer;

const NOW: i64 = 1_800_000_000;
const SAMPLE: &str = include_str!("sample-notification.json");
const AORTA: &str = "initialRequestID=6f1c1b52-0a43-4b8e-9d0e-2f7f3b0f5a11; requestID=0e4c9d3a-7c0b-4c51-8a39-5d7d1c1b2e22";

struct Fixture {
    _site: TestSite,
    config: Arc<Config>,
    spool: Arc<Spool>,
    mitz: Mitz,
}

fn fixture() -> Fixture {
    let site = TestSite::new("mitz");
    let dir = site.dir.clone();
    let path = |n: &str| dir.join(n).display().to_string();
    let mut v = site.vars("https://np.b.example", "87654321");
    for (k, val) in [
        ("NP_SYSTEM_ID", "2.16.840.1.113883.2.4.3.999.2".into()),
        ("NP_OUTBOX", path("outbox")),
        ("NP_INBOX", path("inbox")),
        ("NP_STATE_DIR", path("state")),
        ("NP_PARTNERS", "broker,hospa".into()),
        ("NP_PARTNER_BROKER_KIND", "mitz".into()),
        ("NP_PARTNER_BROKER_CERT", "dns:broker.example".into()),
        (
            "NP_PARTNER_HOSPA_FHIR_BASE",
            "https://a.example/fhir".into(),
        ),
        ("NP_PARTNER_HOSPA_ORG", "ura:12345678".into()),
        ("NP_PARTNER_HOSPA_CERT", "ura:12345678".into()),
    ] {
        v.insert(k.to_string(), (val, None));
    }
    let config = Arc::new(from_vars(&v).unwrap());
    let state = config.state_dir.clone();
    fs::create_dir_all(&state).unwrap();
    let spool = Arc::new(Spool::open(&state).unwrap().0);
    let audit = Arc::new(AuditLog::open(&state).unwrap());
    let mitz = Mitz::new(config.clone(), spool.clone(), audit).unwrap();
    Fixture {
        _site: site,
        config,
        spool,
        mitz,
    }
}

fn request(body: &[u8], headers: &[(&str, &str)]) -> Request {
    Request {
        method: "POST".into(),
        target: "/fhir/R4".into(),
        path: "/fhir/R4".into(),
        query: None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
        request_id: "rid-1".into(),
        peer: Peer::new(
            "127.0.0.1:1".parse().unwrap(),
            Arc::new(Vec::new()),
            "TLSv1.3",
        ),
    }
}

impl Fixture {
    fn partner(&self, name: &str) -> MitzPartner<'_> {
        self.config.partner(name).unwrap().as_mitz().unwrap()
    }

    fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> Intake {
        self.mitz
            .intake(self.partner("broker"), &request(body, headers), NOW)
    }

    fn inbox_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = match fs::read_dir(self.config.inbox.join("broker")) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    /// Runs every queued `mitz` item once, as the worker would.
    fn work(&self) -> usize {
        let due = self.spool.due(NOW + 1).unwrap();
        for item in &due {
            let claimed = self.spool.claim(&item.id).unwrap();
            assert_eq!(self.mitz.store(&claimed), Outcome::Done);
            self.spool.complete(&claimed).unwrap();
        }
        due.len()
    }

    fn audit(&self) -> String {
        let mut all = String::new();
        for f in fs::read_dir(self.config.state_dir.join("audit")).unwrap() {
            all += &fs::read_to_string(f.unwrap().path()).unwrap();
        }
        all
    }
}

fn body_json(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap()
}

fn status_and_code(i: &Intake) -> (u16, String) {
    let v = body_json(&i.response);
    (
        i.response.status,
        v["issue"][0]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn json_notification_is_stored_answered_and_written_byte_for_byte() {
    let f = fixture();
    let i = f.post(
        SAMPLE.as_bytes(),
        &[
            ("content-type", "application/fhir+json"),
            ("aorta-id", AORTA),
        ],
    );
    assert_eq!(i.response.status, 200);
    assert!(i.queued);
    let v = body_json(&i.response);
    assert_eq!(v["type"], "transaction-response");
    assert_eq!(v["entry"].as_array().unwrap().len(), 4);
    assert!(
        v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["response"]["status"] == "200 OK")
    );
    // Durable before the answer: the item is in the spool, no file yet.
    assert_eq!(f.spool.due(NOW).unwrap().len(), 1);
    assert!(f.inbox_files().is_empty());
    assert_eq!(f.work(), 1);
    let files = f.inbox_files();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("20270115T080000Z-") && name.ends_with(".json"),
        "{name}"
    );
    assert_eq!(fs::read(&files[0]).unwrap(), SAMPLE.as_bytes());
    let mode = fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    // The consent view now answers for the patient.
    let view = f
        .mitz
        .consent_view()
        .load("87654321", &crate::ids::Bsn::parse("999999151").unwrap())
        .unwrap();
    assert!(view.permits("GGC002", "RPZAC104"));
    assert!(!view.permits("GGC002", "RPZAC005"));
    // The audit trail has the patient and the AORTA ids.
    let audit = f.audit();
    assert!(audit.contains("\"action\":\"mitz.received\""), "{audit}");
    assert!(audit.contains("\"patient\":\"999999151\""), "{audit}");
    assert!(
        audit.contains("0e4c9d3a-7c0b-4c51-8a39-5d7d1c1b2e22"),
        "{audit}"
    );
}

#[test]
fn the_same_bytes_again_are_stored_once_and_other_bytes_again() {
    let f = fixture();
    let ct = [("content-type", "application/fhir+json")];
    assert!(f.post(SAMPLE.as_bytes(), &ct).queued);
    assert_eq!(f.work(), 1);
    let again = f.post(SAMPLE.as_bytes(), &ct);
    assert_eq!(again.response.status, 200);
    assert!(!again.queued);
    assert_eq!(f.work(), 0);
    assert_eq!(f.inbox_files().len(), 1);
    assert!(f.audit().contains("\"action\":\"mitz.duplicate\""));
    // A newer state of the same consent is other bytes: a second file.
    let newer = SAMPLE.replace(
        "2026-11-18T10:51:16.8967927Z",
        "2026-11-19T08:00:00.0000000Z",
    );
    assert!(f.post(newer.as_bytes(), &ct).queued);
    assert_eq!(f.work(), 1);
    assert_eq!(f.inbox_files().len(), 2);
}

#[test]
fn a_rerun_after_a_crash_replaces_the_file_instead_of_adding_one() {
    let f = fixture();
    f.post(SAMPLE.as_bytes(), &[]);
    let item = f.spool.claim(&f.spool.due(NOW).unwrap()[0].id).unwrap();
    assert_eq!(f.mitz.store(&item), Outcome::Done);
    // Crash before the spool moved it to done: it runs again.
    assert_eq!(f.mitz.store(&item), Outcome::Done);
    assert_eq!(f.inbox_files().len(), 1);
    assert_eq!(fs::read(&f.inbox_files()[0]).unwrap(), SAMPLE.as_bytes());
}

#[test]
fn xml_is_stored_as_xml_and_answered_in_xml() {
    let f = fixture();
    let value: Value = serde_json::from_str(SAMPLE).unwrap();
    let xml = fhir::json_to_xml(&value, FhirVersion::R4).unwrap();
    let i = f.post(xml.as_bytes(), &[("content-type", "application/fhir+xml")]);
    assert_eq!(
        i.response.status,
        200,
        "{}",
        String::from_utf8_lossy(&i.response.body)
    );
    let text = String::from_utf8(i.response.body.clone()).unwrap();
    assert!(
        text.contains("<type value=\"transaction-response\"/>"),
        "{text}"
    );
    // Accept can ask for JSON instead.
    let v = f.post(
        xml.as_bytes(),
        &[
            ("content-type", "application/fhir+xml"),
            ("accept", "application/fhir+json"),
        ],
    );
    assert_eq!(body_json(&v.response)["type"], "transaction-response");
    f.work();
    let files = f.inbox_files();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().ends_with(".xml"));
    assert_eq!(fs::read(&files[0]).unwrap(), xml.as_bytes());
}

#[test]
fn refusals_follow_the_design_order() {
    let f = fixture();
    let json_ct = ("content-type", "application/fhir+json");
    // Accept before Content-Type.
    let i = f.post(
        b"junk",
        &[("accept", "text/html"), ("content-type", "text/plain")],
    );
    assert_eq!(status_and_code(&i), (406, "not-supported".into()));
    // Content-Type before the body.
    let i = f.post(b"junk", &[("content-type", "text/plain")]);
    assert_eq!(status_and_code(&i), (415, "not-supported".into()));
    let i = f.post(
        SAMPLE.as_bytes(),
        &[("content-type", "application/fhir+json; fhirVersion=3.0")],
    );
    assert_eq!(i.response.status, 415);
    let i = f.post(b"hello", &[]);
    assert_eq!(i.response.status, 415, "unsniffable without Content-Type");
    // Size before parsing.
    let mut big = SAMPLE.as_bytes().to_vec();
    big.resize(MAX_NOTIFICATION + 1, b' ');
    let i = f.post(&big, &[json_ct, ("aorta-id", "nonsense")]);
    assert_eq!(status_and_code(&i), (413, "too-long".into()));
    // Hostile content before a bad AORTA-ID.
    let dup = br#"{"resourceType":"Bundle","type":"transaction","type":"batch"}"#;
    let i = f.post(dup, &[json_ct, ("aorta-id", "nonsense")]);
    assert_eq!(i.response.status, 400);
    assert_ne!(status_and_code(&i).1, "value");
    let doctype = br#"<!DOCTYPE x [<!ENTITY a "b">]><Bundle xmlns="http://hl7.org/fhir"/>"#;
    assert_eq!(f.post(doctype, &[]).response.status, 400);
    // AORTA-ID before the transaction control.
    let i = f.post(
        br#"{"resourceType":"Bundle","type":"batch"}"#,
        &[json_ct, ("aorta-id", "nonsense")],
    );
    assert_eq!(status_and_code(&i), (400, "value".into()));
    assert_eq!(
        body_json(&i.response)["issue"][0]["expression"][0],
        "AORTA-ID"
    );
    // Transaction control before the holder check.
    let mut b: Value = serde_json::from_str(SAMPLE).unwrap();
    b["entry"][3]["resource"]["identifier"][0]["value"] = json!("11111111");
    b["entry"][0]["request"]["method"] = json!("PUT");
    let i = f.post(b.to_string().as_bytes(), &[json_ct]);
    assert_eq!(
        body_json(&i.response)["issue"][0]["expression"][0],
        "Bundle.entry[0].request.method"
    );
    b["entry"][0]["request"]["method"] = json!("POST");
    let i = f.post(b.to_string().as_bytes(), &[json_ct]);
    assert_eq!(status_and_code(&i), (400, "value".into()));
    assert_eq!(
        body_json(&i.response)["issue"][0]["expression"][0],
        "Bundle.entry[3].resource.identifier"
    );
    // Nothing was stored, and every refusal is in the audit trail.
    assert!(f.spool.due(NOW + 1).unwrap().is_empty());
    assert!(f.inbox_files().is_empty());
    assert!(f.audit().matches("\"action\":\"mitz.refused\"").count() >= 9);
}

#[test]
fn an_unreadable_item_goes_dead_with_the_reason() {
    let f = fixture();
    let item = Item {
        id: "mitz-broken".into(),
        kind: KIND_MITZ.into(),
        partner: "broker".into(),
        created_at: NOW,
        attempts: 0,
        not_before: NOW,
        give_up_at: None,
        last_error: None,
        body: json!({"raw": 1}),
    };
    assert!(matches!(f.mitz.store(&item), Outcome::Dead(r) if r.contains("unreadable")));
}

#[test]
fn item_ids_depend_on_partner_and_bytes() {
    let a = item_id("broker", b"x");
    assert!(a.starts_with("mitz-") && a.len() == 37 && crate::spool::valid_id(&a));
    assert_eq!(a, item_id("broker", b"x"));
    assert_ne!(a, item_id("broker", b"y"));
    assert_ne!(a, item_id("mitz", b"x"));
}

#[test]
fn an_inbox_that_cannot_be_written_is_retried_not_lost() {
    let f = fixture();
    f.post(SAMPLE.as_bytes(), &[]);
    // The partner's inbox folder is a file: the write fails.
    fs::create_dir_all(&f.config.inbox).unwrap();
    fs::write(f.config.inbox.join("broker"), b"not a folder").unwrap();
    let item = f.spool.claim(&f.spool.due(NOW).unwrap()[0].id).unwrap();
    match f.mitz.store(&item) {
        Outcome::Retry { reason, .. } => assert!(reason.starts_with("inbox: "), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Once the folder can be made, the same item writes its file.
    fs::remove_file(f.config.inbox.join("broker")).unwrap();
    assert_eq!(f.mitz.store(&item), Outcome::Done);
    assert_eq!(fs::read(&f.inbox_files()[0]).unwrap(), SAMPLE.as_bytes());
}
