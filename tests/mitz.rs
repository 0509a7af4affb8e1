//! Mitz consent notification intake end to end (DESIGN "Mitz intake",
//! `spec/mitz-and-aorta.md` §3–§5): a real agent with a `mitz` partner, the
//! notification broker calling it over real mTLS on 127.0.0.1 with the
//! notifications of `tests/fixtures/mitz/`, then the answer, the inbox, the
//! audit trail and the log checked; refusals in the documented order; and
//! `kill -9` right after a `200`, which must neither lose nor duplicate a
//! notification.
//!
//! Requests go through a small HTTP/1.1 client written here on rustls, so a
//! test can leave out `Content-Type`, send any method and send bytes that are
//! not UTF-8.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, Party, World};
use common::observe::{events, wait_until};
use np_agent::fhir::{self, FhirVersion, Format, Limits};
use np_agent::ids::Bsn;
use np_agent::pki::throwaway::{LeafSpec, write_files};
use np_agent::pki::{self, MinVersion, TlsMaterial};
use np_agent::util::time::{now_unix, parse_rfc3339};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::{Value, json};

const NOTIFICATION_JSON: &[u8] = include_bytes!("fixtures/mitz/notification.json");
const NOTIFICATION_XML: &[u8] = include_bytes!("fixtures/mitz/notification.xml");
/// Our URA: the Organization of the fixtures.
const OUR_URA: &str = "87654321";
/// The fixtures' patient; passes the 11-test.
const BSN: &str = "999911120";
/// The same number failing the 11-test.
const BAD_BSN: &str = "999911121";
/// `Consent.dateTime` in the fixtures (both Consents).
const FIXTURE_DATETIME: &str = "2024-11-18T10:51:16.8967927Z";
/// The Patient's id (= its `fullUrl` uuid) in the fixtures.
const PATIENT_ID: &str = "2d962a51-d780-48f3-a3f4-cd8df84e2808";
/// The broker's certificate name (a PKIoverheid-style server certificate, no UZI name).
const BROKER_DNS: &str = "broker.mitz.test";
const MIB: usize = 1 << 20;
const PATHS: [&str; 4] = [
    "/fhir/R4",
    "/fhir/R4/Bundle",
    "/mitz/fhir",
    "/mitz/fhir/Bundle",
];
const FHIR_JSON: &str = "application/fhir+json";
const FHIR_XML: &str = "application/fhir+xml";
const AORTA_ID: &str = "initialRequestID=0f6f2d0c-3c1e-4a8b-9d57-6f1b2a3c4d5e; \
                        requestID=7b1e9a44-2f0d-4c6a-8e3b-5d9c0a1b2c3d";
/// `issue.code` values an intake error may carry.
const ISSUE_CODES: [&str; 8] = [
    "too-long",
    "invalid",
    "value",
    "required",
    "security",
    "not-supported",
    "too-costly",
    "forbidden",
];
const LIMIT: Duration = Duration::from_secs(60);

/// Request headers, name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// The fixtures are one valid notification in two formats, as the spec
/// describes it: checked here so a broken fixture fails on its own.
#[test]
fn the_fixtures_are_one_notification_in_json_and_xml() {
    assert!(Bsn::parse(BSN).is_some(), "{BSN} passes the 11-test");
    assert!(Bsn::parse(BAD_BSN).is_none(), "{BAD_BSN} fails it");
    let from_json = fhir::parse_json(NOTIFICATION_JSON, &Limits::DEFAULT).unwrap();
    let from_xml = fhir::xml_to_json(NOTIFICATION_XML, FhirVersion::R4, &Limits::DEFAULT)
        .unwrap_or_else(|e| panic!("notification.xml is not valid R4 XML: {e}"));
    assert_eq!(
        from_json, from_xml,
        "the XML fixture says what the JSON says"
    );

    let v = from_json;
    assert_eq!(v["resourceType"], "Bundle");
    assert_eq!(v["type"], "transaction");
    let entries = v["entry"].as_array().unwrap();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Consent", "Consent", "Patient", "Organization"]);
    for e in entries {
        let r = &e["resource"];
        assert_eq!(
            e["fullUrl"],
            format!("urn:uuid:{}", r["id"].as_str().unwrap())
        );
        assert_eq!(e["request"]["method"], "POST");
        assert_eq!(e["request"]["url"], r["resourceType"]);
    }
    let full_url = |t: &str| {
        entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == t)
            .unwrap()["fullUrl"]
            .clone()
    };
    let (active, inactive) = (&entries[0]["resource"], &entries[1]["resource"]);
    for (c, status, categories) in [(active, "active", 1), (inactive, "inactive", 6)] {
        assert_eq!(
            c["meta"]["profile"][0],
            "http://vzvz.nl/fhir/StructureDefinition/Consent-Mitz-Notify|3.8.0"
        );
        assert_eq!(c["status"], status);
        assert_eq!(c["extension"].as_array().unwrap().len(), categories);
        assert_eq!(c["category"][0]["coding"][0]["code"], "GGC002");
        assert_eq!(c["dateTime"], FIXTURE_DATETIME);
        assert_eq!(c["patient"]["reference"], full_url("Patient"));
        assert_eq!(
            c["provision"]["actor"][0]["reference"]["reference"],
            full_url("Organization")
        );
    }
    assert_eq!(active["provision"]["type"], "permit");
    assert!(inactive["provision"].get("type").is_none());
    assert_eq!(
        active["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "RPZAC005"
    );
    let patient = &entries[2]["resource"];
    assert_eq!(patient["id"], PATIENT_ID);
    assert_eq!(
        patient["identifier"],
        json!([{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}])
    );
    assert_eq!(
        entries[3]["resource"]["identifier"][0],
        json!({"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": OUR_URA})
    );
    for bytes in [NOTIFICATION_JSON, NOTIFICATION_XML] {
        let text = std::str::from_utf8(bytes).unwrap();
        assert_eq!(text.matches(FIXTURE_DATETIME).count(), 2);
    }
}

/// JSON and XML notifications on every intake path and in every accepted
/// request form are answered `200` with a `transaction-response` in the
/// right format, stored byte for byte once per distinct body, audited with
/// the BSN, and logged without it.
#[test]
fn notifications_are_answered_and_stored_once_byte_for_byte() {
    let site = Site::new("mitz-accept");
    let agent = site.setup.start();
    let broker = &site.broker;
    let inbox = site.inbox();

    // JSON in, JSON out, the inbox file byte for byte.
    let r = broker.request(
        "POST",
        "/fhir/R4",
        &[
            ("Content-Type", FHIR_JSON),
            ("Accept", FHIR_JSON),
            ("AORTA-ID", AORTA_ID),
            ("AORTA-Version", "contentVersion=3.8.0; acceptVersion=3.x"),
        ],
        NOTIFICATION_JSON,
    );
    assert_transaction_response(&r, NOTIFICATION_JSON, Format::Json, "JSON notification");
    let files = wait_inbox(&inbox, 1, &agent);
    assert_eq!(files[0].1, NOTIFICATION_JSON, "{}", files[0].0);
    assert!(files[0].0.ends_with(".json"), "{}", files[0].0);

    // XML in, XML out.
    let r = broker.request(
        "POST",
        "/fhir/R4",
        &[("Content-Type", FHIR_XML), ("AORTA-ID", AORTA_ID)],
        NOTIFICATION_XML,
    );
    assert_transaction_response(&r, NOTIFICATION_XML, Format::Xml, "XML notification");
    let files = wait_inbox(&inbox, 2, &agent);
    let xml = files.iter().find(|(n, _)| n.ends_with(".xml")).unwrap();
    assert_eq!(xml.1, NOTIFICATION_XML, "{}", xml.0);

    // The same bytes again, in every request form the intake accepts: 200
    // each time, answered in the asked format, nothing stored again.
    let aorta_reordered = "requestID=7b1e9a44-2f0d-4c6a-8e3b-5d9c0a1b2c3d;\
                           initialRequestID=0f6f2d0c-3c1e-4a8b-9d57-6f1b2a3c4d5e";
    let aorta_upper = "initialRequestID=0F6F2D0C-3C1E-4A8B-9D57-6F1B2A3C4D5E;requestID=\
                       7B1E9A44-2F0D-4C6A-8E3B-5D9C0A1B2C3D";
    let again: &[(&str, Headers, &[u8], Format)] = &[
        (
            "same JSON",
            &[("Content-Type", FHIR_JSON)],
            NOTIFICATION_JSON,
            Format::Json,
        ),
        (
            "same XML",
            &[("Content-Type", FHIR_XML)],
            NOTIFICATION_XML,
            Format::Xml,
        ),
        (
            "application/json, Accept */*",
            &[("Content-Type", "application/json"), ("Accept", "*/*")],
            NOTIFICATION_JSON,
            Format::Json,
        ),
        (
            "JSON with fhirVersion, Accept FHIR XML",
            &[
                ("Content-Type", "application/fhir+json; fhirVersion=4.0"),
                ("Accept", FHIR_XML),
            ],
            NOTIFICATION_JSON,
            Format::Xml,
        ),
        (
            "application/json+fhir with charset",
            &[("Content-Type", "application/json+fhir; charset=utf-8")],
            NOTIFICATION_JSON,
            Format::Json,
        ),
        (
            "application/xml, Accept FHIR JSON",
            &[("Content-Type", "application/xml"), ("Accept", FHIR_JSON)],
            NOTIFICATION_XML,
            Format::Json,
        ),
        (
            "FHIR XML with charset and fhirVersion",
            &[(
                "Content-Type",
                "application/fhir+xml; charset=UTF-8; fhirVersion=4.0",
            )],
            NOTIFICATION_XML,
            Format::Xml,
        ),
        (
            "Accept listing HTML and FHIR JSON",
            &[
                ("Content-Type", FHIR_XML),
                ("Accept", "text/html, application/fhir+json"),
            ],
            NOTIFICATION_XML,
            Format::Json,
        ),
        (
            "JSON without Content-Type (sniffed)",
            &[],
            NOTIFICATION_JSON,
            Format::Json,
        ),
        (
            "XML without Content-Type (sniffed)",
            &[],
            NOTIFICATION_XML,
            Format::Xml,
        ),
        (
            "AORTA-ID reordered, no spaces",
            &[("Content-Type", FHIR_JSON), ("AORTA-ID", aorta_reordered)],
            NOTIFICATION_JSON,
            Format::Json,
        ),
        (
            "AORTA-ID in upper case",
            &[("Content-Type", FHIR_JSON), ("AORTA-ID", aorta_upper)],
            NOTIFICATION_JSON,
            Format::Json,
        ),
    ];
    for (path_i, (what, headers, body, answer)) in again.iter().enumerate() {
        let path = PATHS[path_i % PATHS.len()];
        let r = broker.request("POST", path, headers, body);
        assert_transaction_response(&r, body, *answer, &format!("{what} on {path}"));
    }

    // AORTA-Version: the contentVersion the request names is the one
    // answered; without one, or with one that is no version, ours (3.8.0).
    for (sent, answered) in [
        (
            Some("contentVersion=3.8.0; acceptVersion=3.x"),
            "contentVersion=3.8.0",
        ),
        (
            Some("acceptVersion=3.x; contentVersion=3.8.1"),
            "contentVersion=3.8.1",
        ),
        (Some("CONTENTVERSION=3.9"), "contentVersion=3.9"),
        (Some("acceptVersion=3.x"), "contentVersion=3.8.0"),
        (Some("contentVersion=<b>3.9</b>"), "contentVersion=3.8.0"),
        (Some("contentVersion=3.8.1, 3.9.0"), "contentVersion=3.8.0"),
        (None, "contentVersion=3.8.0"),
    ] {
        let mut headers = vec![("Content-Type", FHIR_JSON)];
        headers.extend(sent.map(|v| ("AORTA-Version", v)));
        let r = broker.request("POST", "/mitz/fhir", &headers, NOTIFICATION_JSON);
        let what = format!("AORTA-Version {sent:?}");
        assert_transaction_response(&r, NOTIFICATION_JSON, Format::Json, &what);
        assert_eq!(r.header("aorta-version"), Some(answered), "{what}");
    }

    // Every intake path takes a notification of its own (newer dateTime:
    // other bytes, so a file of its own).
    let mut stored: Vec<Vec<u8>> = vec![NOTIFICATION_JSON.to_vec(), NOTIFICATION_XML.to_vec()];
    for (i, path) in PATHS.iter().enumerate() {
        let (base, format, ct) = if i % 2 == 0 {
            (NOTIFICATION_JSON, Format::Json, FHIR_JSON)
        } else {
            (NOTIFICATION_XML, Format::Xml, FHIR_XML)
        };
        let body = newer(base, i as u32 + 1);
        let r = broker.request("POST", path, &[("Content-Type", ct)], &body);
        assert_transaction_response(&r, &body, format, &format!("newer notification on {path}"));
        stored.push(body);
    }
    // The same newer bytes on another path: still one file.
    let r = broker.request("POST", PATHS[3], &[("Content-Type", FHIR_JSON)], &stored[2]);
    assert_transaction_response(&r, &stored[2], Format::Json, "newer JSON again");

    // Exactly 1 MiB is within the limit.
    let mib = pad_json(&newer(NOTIFICATION_JSON, 9), MIB);
    assert_eq!(mib.len(), MIB);
    let r = broker.request("POST", "/mitz/fhir", &[("Content-Type", FHIR_JSON)], &mib);
    assert_transaction_response(&r, &mib, Format::Json, "a body of exactly 1 MiB");
    stored.push(mib);

    assert_inbox_holds(&inbox, &stored, &agent);

    // The audit trail holds the patient; the log does not.
    let audited = audit_lines(&site.state_dir());
    assert!(
        audited
            .iter()
            .any(|l| l["action"] == "mitz.received" && l["patient"] == BSN),
        "no mitz.received audit line with the patient: {audited:#?}"
    );
    let log = agent.log();
    assert_no_bsn(&log);
    let received = events(&log, "mitz.received", &[("status", "200")]).len();
    assert!(
        received >= stored.len(),
        "{received} mitz.received status=200 lines for {} distinct notifications:\n{log}",
        stored.len()
    );
    assert!(
        !events(&log, "mitz.duplicate", &[]).is_empty(),
        "no mitz.duplicate line:\n{log}"
    );
    assert_eq!(
        events(&log, "mitz.stored", &[]).len(),
        stored.len(),
        "one mitz.stored line per inbox file:\n{log}"
    );
    let status = agent.stop();
    assert!(status.success(), "clean stop: {status}");

    // In the inbox, the notifications are not kept in the spool: each
    // finished item holds its id and a hash, no patient, no Consent.
    let done = site.state_dir().join("spool").join("done");
    let finished = listing(&done);
    assert_eq!(finished.len(), stored.len(), "{finished:?}");
    for name in finished {
        let text = std::fs::read_to_string(done.join(&name)).unwrap();
        assert!(
            !text.contains(BSN) && !text.contains("Consent"),
            "{name} keeps the notification: {text}"
        );
    }
}

/// Every refusal of the contract, in its order: the right status with an
/// OperationOutcome whose `issue[0].code` is one of the intake's codes,
/// nothing stored for any of them, every status in the log, and no BSN
/// (good or bad) in it.
#[test]
fn every_refusal_has_its_status_and_stores_nothing() {
    let site = Site::new("mitz-refuse");
    let agent = site.setup.start();
    let inbox = site.inbox();

    // Control: the notification itself is accepted by this agent.
    let r = site.broker.request(
        "POST",
        "/fhir/R4",
        &[("Content-Type", FHIR_JSON)],
        NOTIFICATION_JSON,
    );
    assert_transaction_response(&r, NOTIFICATION_JSON, Format::Json, "control");
    wait_inbox(&inbox, 1, &agent);

    // Each refusal on the next intake path in turn.
    let cases = refusal_cases(&site);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = PATHS[i % PATHS.len()];
        let headers: Vec<(&str, &str)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = case.client.request(case.method, path, &headers, &case.body);
        if let Err(why) = check_refusal(&r, case.want) {
            failures.push(format!(
                "{} ({} {path}): want {}, got {}: {why}\n  {}",
                case.what,
                case.method,
                case.want,
                r.status,
                r.text_head()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} refusals wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // A harmless narrative is accepted (so the <script> above was refused
    // for the script); once its file is there, nothing else may be.
    let harmless = with_patient(|p| {
        p["text"] = json!({
            "status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Patient</p></div>"
        });
    });
    let r = site.broker.request(
        "POST",
        "/mitz/fhir",
        &[("Content-Type", FHIR_JSON)],
        &harmless,
    );
    assert_transaction_response(&r, &harmless, Format::Json, "harmless narrative");
    assert_inbox_holds(&inbox, &[NOTIFICATION_JSON.to_vec(), harmless], &agent);

    let log = agent.log();
    assert_no_bsn(&log);
    assert!(!log.contains(BAD_BSN), "the refused BSN is in the log");
    // The intake's own refusals are mitz.refused lines; 403 and 405 come
    // before it (certificate, method) and show as the request's status.
    for status in ["400", "406", "413", "415"] {
        assert!(
            !events(&log, "mitz.refused", &[("status", status)]).is_empty(),
            "no event=mitz.refused status={status} line:\n{log}"
        );
    }
    for status in ["403", "405"] {
        assert!(
            !events(&log, "mitz.refused", &[("status", status)]).is_empty()
                || !events(&log, "http.request", &[("status", status)]).is_empty(),
            "no line logs status={status}:\n{log}"
        );
    }
}

/// A `Content-Length` over the body limit is refused only after the
/// headers that come before size in the intake's order: `Accept` (406),
/// then `Content-Type` (415), then 413; and before any body byte is sent.
/// Certificate and method come first as always. Elsewhere the server's 413
/// stands whatever `Accept` says.
#[test]
fn an_oversized_content_length_is_refused_in_the_intake_order() {
    let site = Site::new("mitz-oversized");
    let agent = site.setup.start();
    // Far above NP_MAX_BODY (16 MiB): the agent must answer from the head.
    let declared = 1u64 << 30;
    let rows: &[(&str, &Client, &str, Headers, u16)] = &[
        (
            "Accept text/html",
            &site.broker,
            "/fhir/R4",
            &[("Content-Type", FHIR_JSON), ("Accept", "text/html")],
            406,
        ),
        (
            "Accept text/html, Content-Type text/plain",
            &site.broker,
            "/mitz/fhir",
            &[("Content-Type", "text/plain"), ("Accept", "text/html")],
            406,
        ),
        (
            "Content-Type text/plain",
            &site.broker,
            "/fhir/R4/Bundle",
            &[("Content-Type", "text/plain"), ("Accept", FHIR_JSON)],
            415,
        ),
        (
            "FHIR JSON of another FHIR version",
            &site.broker,
            "/mitz/fhir/Bundle",
            &[("Content-Type", "application/fhir+json; fhirVersion=3.0")],
            415,
        ),
        (
            "Accept and Content-Type acceptable",
            &site.broker,
            "/fhir/R4",
            &[("Content-Type", FHIR_JSON), ("Accept", FHIR_JSON)],
            413,
        ),
        (
            "no Content-Type (nothing to sniff before the body)",
            &site.broker,
            "/mitz/fhir",
            &[],
            413,
        ),
        (
            "certificate of a twiin partner",
            &site.twiin,
            "/fhir/R4",
            &[("Accept", "text/html")],
            403,
        ),
        (
            "certificate of no partner",
            &site.stranger,
            "/mitz/fhir",
            &[("Content-Type", "text/plain")],
            403,
        ),
    ];
    let mut failures = Vec::new();
    for (what, client, path, headers, want) in rows {
        let r = client.request_declaring("POST", path, headers, declared);
        if let Err(why) = check_refusal(&r, *want) {
            failures.push(format!(
                "{what} ({path}): want {want}, got {}: {why}\n  {}",
                r.status,
                r.text_head()
            ));
        }
    }
    // Not an intake path: the server's own 413, even with a bad Accept.
    let r = site.twiin.request_declaring(
        "POST",
        "/fhir/Task",
        &[("Content-Type", FHIR_JSON), ("Accept", "text/html")],
        declared,
    );
    if r.status != 413 {
        failures.push(format!("/fhir/Task: want 413, got {}", r.text_head()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        listing(&site.inbox()).is_empty(),
        "nothing may be stored: {:?}",
        listing(&site.inbox())
    );
    let log = agent.log();
    for status in ["406", "415"] {
        assert!(
            !events(&log, "mitz.refused", &[("status", status)]).is_empty(),
            "no event=mitz.refused status={status} line:\n{log}"
        );
    }
    let status = agent.stop();
    assert!(status.success(), "clean stop: {status}");
}

/// `kill -9` right after a `200`, several rounds: in even rounds at once
/// (mostly before the inbox file is written), in odd rounds as soon as the
/// inbox file is there (before the agent may have noted that it was
/// written); then one more kill while the agent recovers. After the last
/// restart the inbox holds exactly one file per accepted notification, byte
/// for byte; the same bytes sent again (as guaranteed delivery does after a
/// crash) are answered 200 and not stored again.
#[test]
fn a_kill_9_after_200_neither_loses_nor_duplicates_a_notification() {
    const ROUNDS: u32 = 8;
    let site = Site::new("mitz-kill");
    let inbox = site.inbox();
    let mut bodies = Vec::new();
    let mut missing_at_kill = 0;
    for round in 0..ROUNDS {
        let agent = site.setup.start();
        let (base, format, ct) = if round / 2 % 2 == 0 {
            (NOTIFICATION_JSON, Format::Json, FHIR_JSON)
        } else {
            (NOTIFICATION_XML, Format::Xml, FHIR_XML)
        };
        let body = newer(base, round + 1);
        let path = PATHS[round as usize % PATHS.len()];
        let r = site
            .broker
            .request("POST", path, &[("Content-Type", ct)], &body);
        let stored = |b: &[u8]| inbox_files(&inbox).iter().any(|(_, f)| f == b);
        if round % 2 == 1 && r.status == 200 {
            wait_until(LIMIT, || stored(&body), || agent.log());
        }
        agent.kill9();
        assert_transaction_response(&r, &body, format, &format!("round {round}"));
        if round % 2 == 0 && !stored(&body) {
            missing_at_kill += 1;
        }
        bodies.push(body);
    }
    eprintln!(
        "{missing_at_kill} of {} notifications killed at once after their 200 were not in the inbox yet",
        ROUNDS / 2
    );
    // One more kill while the agent recovers its state.
    let recovering = site.setup.start_unwaited();
    std::thread::sleep(Duration::from_millis(30));
    recovering.kill9();

    let agent = site.setup.start();
    assert_inbox_holds(&inbox, &bodies, &agent);

    for (i, body) in bodies.iter().enumerate() {
        let (format, ct) = if body.starts_with(b"{") {
            (Format::Json, FHIR_JSON)
        } else {
            (Format::Xml, FHIR_XML)
        };
        let r = site
            .broker
            .request("POST", "/fhir/R4", &[("Content-Type", ct)], body);
        assert_transaction_response(&r, body, format, &format!("redelivery {i}"));
    }
    let last = newer(NOTIFICATION_JSON, 99);
    let r = site
        .broker
        .request("POST", "/fhir/R4", &[("Content-Type", FHIR_JSON)], &last);
    assert_transaction_response(&r, &last, Format::Json, "after the redeliveries");
    bodies.push(last);
    assert_inbox_holds(&inbox, &bodies, &agent);
    for log in all_logs(&site.setup.dir) {
        assert_no_bsn(&log);
    }
}

// ---------------------------------------------------------------------------
// The refusals.

/// One request that must be refused with `want`.
struct Refusal<'a> {
    want: u16,
    what: String,
    client: &'a Client,
    method: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn case<'a>(
    want: u16,
    what: &str,
    client: &'a Client,
    method: &'static str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Refusal<'a> {
    Refusal {
        want,
        what: what.to_string(),
        client,
        method,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body,
    }
}

/// Every refusal of the contract, grouped in the order the intake checks.
fn refusal_cases(site: &Site) -> Vec<Refusal<'_>> {
    let broker = &site.broker;
    let ct_json: &[(&str, &str)] = &[("Content-Type", FHIR_JSON)];
    let ct_xml: &[(&str, &str)] = &[("Content-Type", FHIR_XML)];
    let json =
        |want: u16, what: &str, body: Vec<u8>| case(want, what, broker, "POST", ct_json, body);
    let xml = |want: u16, what: &str, body: Vec<u8>| case(want, what, broker, "POST", ct_xml, body);
    let (json_body, xml_body) = (NOTIFICATION_JSON, NOTIFICATION_XML);
    let script =
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Patient</p><script>alert(1)</script></div>";
    let uuid = "7b1e9a44-2f0d-4c6a-8e3b-5d9c0a1b2c3d";

    let mut cases = vec![
        // Who may call, and how: certificate, partner kind, method (in this order).
        case(
            403,
            "certificate of no partner",
            &site.stranger,
            "POST",
            ct_json,
            json_body.to_vec(),
        ),
        case(
            403,
            "certificate of a twiin partner",
            &site.twiin,
            "POST",
            ct_json,
            json_body.to_vec(),
        ),
        case(
            403,
            "GET with a certificate of no partner",
            &site.stranger,
            "GET",
            &[],
            vec![],
        ),
        case(
            403,
            "GET with a twiin partner's certificate",
            &site.twiin,
            "GET",
            &[],
            vec![],
        ),
        case(405, "GET", broker, "GET", &[], vec![]),
        case(405, "PUT", broker, "PUT", ct_json, json_body.to_vec()),
        case(405, "DELETE", broker, "DELETE", &[], vec![]),
        case(
            405,
            "GET accepting HTML only",
            broker,
            "GET",
            &[("Accept", "text/html")],
            vec![],
        ),
        // Accept, then Content-Type.
        case(
            406,
            "Accept text/html",
            broker,
            "POST",
            &[("Content-Type", FHIR_JSON), ("Accept", "text/html")],
            json_body.to_vec(),
        ),
        case(
            406,
            "Accept text/html, Content-Type text/plain",
            broker,
            "POST",
            &[("Content-Type", "text/plain"), ("Accept", "text/html")],
            json_body.to_vec(),
        ),
        case(
            415,
            "Content-Type text/plain",
            broker,
            "POST",
            &[("Content-Type", "text/plain")],
            json_body.to_vec(),
        ),
        case(
            415,
            "Content-Type application/octet-stream",
            broker,
            "POST",
            &[("Content-Type", "application/octet-stream")],
            xml_body.to_vec(),
        ),
        case(
            415,
            "FHIR JSON of another FHIR version",
            broker,
            "POST",
            &[("Content-Type", "application/fhir+json; fhirVersion=3.0")],
            json_body.to_vec(),
        ),
        case(
            415,
            "no Content-Type, body not sniffable",
            broker,
            "POST",
            &[],
            b"hello".to_vec(),
        ),
        case(
            415,
            "no Content-Type, empty body",
            broker,
            "POST",
            &[],
            vec![],
        ),
        // Size.
        json(413, "JSON of 1 MiB + 1 byte", pad_json(json_body, MIB + 1)),
        xml(413, "XML of 2 MiB", pad_xml(xml_body, 2 * MIB)),
        // Hostile or malformed content.
        json(
            400,
            "invalid JSON",
            json_body[..json_body.len() / 2].to_vec(),
        ),
        json(400, "XML sent as JSON", xml_body.to_vec()),
        json(400, "a JSON array", b"[]".to_vec()),
        json(
            400,
            "duplicate JSON key",
            replace_once(
                json_body,
                "\"type\": \"transaction\",",
                b"\"type\": \"transaction\",\n  \"type\": \"transaction\",",
            ),
        ),
        json(400, "JSON nested 40 extensions deep", deep_json()),
        xml(400, "XML nested 40 extensions deep", deep_xml()),
        json(
            400,
            "invalid UTF-8 in JSON",
            replace_once(json_body, "Behandelgegevens", b"Behandel\xffgegevens"),
        ),
        xml(
            400,
            "invalid UTF-8 in XML",
            replace_once(xml_body, "Behandelgegevens", b"Behandel\xc3\x28gegevens"),
        ),
        xml(
            400,
            "XML with an internal entity",
            before_bundle(&format!("<!DOCTYPE Bundle [<!ENTITY bsn \"{BSN}\">]>")),
        ),
        xml(
            400,
            "XML with an external entity",
            replace_once(
                &before_bundle("<!DOCTYPE Bundle [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"),
                "<display value=\"Behandelgegevens\"/>",
                b"<display value=\"&x;\"/>",
            ),
        ),
        xml(
            400,
            "XML with a DOCTYPE",
            before_bundle("<!DOCTYPE Bundle>"),
        ),
        xml(
            400,
            "XML with a processing instruction",
            before_bundle("<?xml-stylesheet href=\"http://example.org/x.xsl\"?>"),
        ),
        xml(
            400,
            "malformed XML",
            xml_body[..xml_body.len() - 20].to_vec(),
        ),
        xml(
            400,
            "XML with an element R4 does not have",
            replace_once(
                xml_body,
                "<status value=\"active\"/>",
                b"<status value=\"active\"/><colour value=\"red\"/>",
            ),
        ),
        xml(
            400,
            "XML outside the FHIR namespace",
            replace_once(xml_body, " xmlns=\"http://hl7.org/fhir\"", b""),
        ),
        json(
            400,
            "JSON narrative with <script>",
            with_patient(|p| {
                p["text"] = json!({"status": "generated", "div": script});
            }),
        ),
        json(
            400,
            "JSON narrative with javascript: and onclick",
            with_patient(|p| {
                p["text"] = json!({"status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\
                    <a href=\"javascript:alert(1)\" onclick=\"alert(2)\">Patient</a></div>"});
            }),
        ),
        xml(
            400,
            "XML narrative with <script>",
            after_patient_id(&format!(
                "<text><status value=\"generated\"/>{script}</text>"
            )),
        ),
    ];

    // AORTA-ID.
    for aorta in [
        "nonsense".to_string(),
        format!("initialRequestID=not-a-uuid; requestID={uuid}"),
        format!("initialRequestID={uuid}"),
        format!("requestID={uuid}; requestID={uuid}"),
        format!("initialRequestID={uuid}; requestID={uuid}; colour=red"),
    ] {
        let headers = [("Content-Type", FHIR_JSON), ("AORTA-ID", aorta.as_str())];
        let what = format!("AORTA-ID {aorta:?}");
        cases.push(case(
            400,
            &what,
            broker,
            "POST",
            &headers,
            json_body.to_vec(),
        ));
    }

    // Transaction control, on the JSON notification.
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut v = json_fixture();
        edit(&mut v);
        to_json(&v)
    };
    fn entries(v: &mut Value) -> &mut Vec<Value> {
        v["entry"].as_array_mut().unwrap()
    }
    let remove = |v: &mut Value, key: &str| {
        v.as_object_mut().unwrap().remove(key);
    };
    let another = |v: &mut Value, i: usize, id: &str| {
        let mut e = v["entry"][i].clone();
        e["fullUrl"] = json!(format!("urn:uuid:{id}"));
        e["resource"]["id"] = json!(id);
        entries(v).push(e);
    };
    for (what, body) in [
        (
            "a Patient, not a Bundle",
            edited(&|v| *v = v["entry"][2]["resource"].clone()),
        ),
        ("Bundle type batch", edited(&|v| v["type"] = json!("batch"))),
        (
            "Bundle type collection",
            edited(&|v| v["type"] = json!("collection")),
        ),
        ("Bundle without type", edited(&|v| remove(v, "type"))),
        ("no entries", edited(&|v| v["entry"] = json!([]))),
        (
            "entry without fullUrl",
            edited(&|v| remove(&mut v["entry"][2], "fullUrl")),
        ),
        (
            "fullUrl not urn:uuid",
            edited(&|v| {
                v["entry"][3]["fullUrl"] = json!("https://example.org/fhir/Organization/1")
            }),
        ),
        (
            "fullUrl urn:uuid of no uuid",
            edited(&|v| v["entry"][0]["fullUrl"] = json!("urn:uuid:consent-1")),
        ),
        (
            "two entries with one fullUrl",
            edited(&|v| {
                let first = v["entry"][0]["fullUrl"].clone();
                v["entry"][1]["fullUrl"] = first;
            }),
        ),
        (
            "entry without resource",
            edited(&|v| remove(&mut v["entry"][1], "resource")),
        ),
        (
            "entry without request",
            edited(&|v| remove(&mut v["entry"][1], "request")),
        ),
        (
            "request.method PUT",
            edited(&|v| v["entry"][0]["request"]["method"] = json!("PUT")),
        ),
        (
            "request.url not the resource type",
            edited(&|v| v["entry"][0]["request"]["url"] = json!("Patient")),
        ),
        (
            "an Observation entry",
            edited(&|v| {
                let id = "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
                entries(v).push(json!({
                    "fullUrl": format!("urn:uuid:{id}"),
                    "resource": {"resourceType": "Observation", "id": id, "status": "final",
                        "code": {"text": "x"}},
                    "request": {"method": "POST", "url": "Observation"}
                }));
            }),
        ),
        (
            "two Patients",
            edited(&|v| another(v, 2, "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9")),
        ),
        (
            "two Organizations",
            edited(&|v| another(v, 3, "6f7a8b9c-0d1e-4f2a-b3c4-d5e6f7a8b9c0")),
        ),
        (
            "no Organization",
            edited(&|v| {
                entries(v).remove(3);
            }),
        ),
        (
            "no Patient",
            edited(&|v| {
                entries(v).remove(2);
            }),
        ),
        (
            "no Consent",
            edited(&|v| {
                entries(v).drain(..2);
            }),
        ),
        (
            "Consent.patient resolves to no entry",
            edited(&|v| {
                v["entry"][1]["resource"]["patient"]["reference"] =
                    json!("urn:uuid:0a0b0c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d")
            }),
        ),
        (
            "provision.actor resolves to no entry",
            edited(&|v| {
                v["entry"][0]["resource"]["provision"]["actor"][0]["reference"]["reference"] =
                    json!("urn:uuid:0a0b0c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0e")
            }),
        ),
        (
            "Patient without a BSN identifier",
            edited(&|v| {
                patient_mut(v)["identifier"][0]["system"] =
                    json!("urn:oid:2.16.840.1.113883.2.4.6.99")
            }),
        ),
        (
            "Patient without identifier",
            edited(&|v| remove(patient_mut(v), "identifier")),
        ),
        (
            "BSN failing the 11-test",
            edited(&|v| patient_mut(v)["identifier"][0]["value"] = json!(BAD_BSN)),
        ),
        (
            "Consent.status proposed",
            edited(&|v| v["entry"][0]["resource"]["status"] = json!("proposed")),
        ),
        (
            "Consent without category",
            edited(&|v| remove(&mut v["entry"][0]["resource"], "category")),
        ),
        (
            "Consent without dateTime",
            edited(&|v| remove(&mut v["entry"][1]["resource"], "dateTime")),
        ),
        (
            "Organization URA not ours",
            edited(&|v| v["entry"][3]["resource"]["identifier"][0]["value"] = json!("12345678")),
        ),
        (
            "Organization without URA",
            edited(&|v| remove(&mut v["entry"][3]["resource"], "identifier")),
        ),
    ] {
        cases.push(json(400, what, body));
    }

    // Transaction control, on the XML notification.
    for (what, from, to) in [
        (
            "XML Bundle type batch",
            "<type value=\"transaction\"/>",
            "<type value=\"batch\"/>",
        ),
        (
            "XML request.method PUT",
            "<method value=\"POST\"/>",
            "<method value=\"PUT\"/>",
        ),
        ("XML BSN failing the 11-test", BSN, BAD_BSN),
        ("XML Organization URA not ours", OUR_URA, "12345678"),
        (
            "XML Consent.status rejected",
            "<status value=\"inactive\"/>",
            "<status value=\"rejected\"/>",
        ),
    ] {
        cases.push(xml(400, what, replace_once(xml_body, from, to.as_bytes())));
    }
    cases
}

/// `Ok` when `r` is the refusal `want` as the contract describes it.
fn check_refusal(r: &Resp, want: u16) -> Result<(), String> {
    if r.status != want {
        return Err("wrong status".into());
    }
    if want == 405 && r.header("allow").map(str::trim) != Some("POST") {
        return Err(format!("Allow is {:?}, not POST", r.header("allow")));
    }
    let outcome = r.fhir().map_err(|e| format!("body is no FHIR: {e}"))?;
    if outcome["resourceType"] != "OperationOutcome" {
        return Err("body is no OperationOutcome".into());
    }
    let code = outcome["issue"][0]["code"].as_str().unwrap_or("");
    if !ISSUE_CODES.contains(&code) {
        return Err(format!("issue[0].code {code:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The agent under test and its callers.

/// An agent (URA [`OUR_URA`]) with partner `mitz` (kind mitz, the broker's
/// certificate by DNS name) and partner `hospb` (twiin), and three callers:
/// the broker, hospital B, and a stranger whose certificate chains to the
/// trust bundle but maps to no partner.
struct Site {
    setup: AgentSetup,
    broker: Client,
    twiin: Client,
    stranger: Client,
    _tmp: TempDir,
}

impl Site {
    fn new(label: &str) -> Site {
        let tmp = TempDir::new(label);
        let world = World::new();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hosp", OUR_URA);
        let issued = world
            .ca
            .issue(&LeafSpec {
                dns_names: vec![BROKER_DNS.to_string()],
                ip_addresses: vec![],
                ..LeafSpec::localhost(BROKER_DNS)
            })
            .unwrap();
        let broker_files = write_files(&tmp.join("broker"), &issued, &[&world.ca]).unwrap();
        let broker = TlsMaterial::load(&broker_files).unwrap();
        let hospb = Party::new(&world, tmp.path(), "hospb", "22222222", &[]);
        let stranger = Party::new(&world, tmp.path(), "stranger", "33333333", &[]);
        setup
            .env
            .set("NP_PARTNERS", "mitz,hospb")
            .set("NP_PARTNER_MITZ_KIND", "mitz")
            .set("NP_PARTNER_MITZ_CERT", format!("dns:{BROKER_DNS}"))
            .set("NP_PARTNER_HOSPB_FHIR_BASE", "https://localhost:1/fhir")
            .set("NP_PARTNER_HOSPB_ORG", "ura:22222222")
            .set("NP_PARTNER_HOSPB_CERT", "ura:22222222");
        let port = setup.port;
        Site {
            broker: Client::new(&broker, port),
            twiin: Client::new(&hospb.material, port),
            stranger: Client::new(&stranger.material, port),
            setup,
            _tmp: tmp,
        }
    }

    fn inbox(&self) -> PathBuf {
        self.setup.inbox("mitz")
    }

    fn state_dir(&self) -> PathBuf {
        self.setup.dir.join("state")
    }
}

/// A one-request-per-connection HTTP/1.1 client over mTLS to the agent.
struct Client {
    config: Arc<ClientConfig>,
    port: u16,
}

/// A response as read off the wire.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Client {
    fn new(material: &TlsMaterial, port: u16) -> Client {
        Client {
            config: pki::client_config(material, MinVersion::Tls13).unwrap(),
            port,
        }
    }

    /// Sends one request (`Content-Length` on every POST and on any body)
    /// with `Connection: close` and reads the answer.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let length = (method == "POST" || !body.is_empty()).then_some(body.len() as u64);
        self.exchange(method, path, headers, length, body)
    }

    /// Sends only the head of a request declaring a body of `declared`
    /// bytes, and reads the answer.
    fn request_declaring(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        declared: u64,
    ) -> Resp {
        self.exchange(method, path, headers, Some(declared), &[])
    }

    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        length: Option<u64>,
        body: &[u8],
    ) -> Resp {
        let sock = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        sock.set_write_timeout(Some(LIMIT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.config.clone(), name).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            self.port
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        // The agent may answer (413) and close before it has read the whole
        // body: a failed write is no failure, the answer is read anyway.
        let _ = tls
            .write_all(head.as_bytes())
            .and_then(|()| tls.write_all(body))
            .and_then(|()| tls.flush());
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if parse_response(&raw).is_some() {
                break;
            }
        }
        parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: no complete response: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The format `Content-Type` names.
    fn format(&self) -> Option<Format> {
        let ct = self.header("content-type")?.to_ascii_lowercase();
        if ct.contains("json") {
            Some(Format::Json)
        } else if ct.contains("xml") {
            Some(Format::Xml)
        } else {
            None
        }
    }

    /// The body read as R4 in the format of its `Content-Type`.
    fn fhir(&self) -> Result<Value, String> {
        let format = self
            .format()
            .ok_or_else(|| format!("Content-Type {:?}", self.header("content-type")))?;
        fhir::parse(&self.body, format, FhirVersion::R4, &Limits::DEFAULT)
            .map_err(|e| e.to_string())
    }

    /// Status, Content-Type and the start of the body, for messages.
    fn text_head(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let cut: String = body.chars().take(400).collect();
        format!(
            "{} {:?} {cut}",
            self.status,
            self.header("content-type").unwrap_or("-")
        )
    }
}

/// A complete response in `raw` (head and `Content-Length` bytes of body).
fn parse_response(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let body = raw.get(end + 4..end + 4 + len)?.to_vec();
    Some(Resp {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// What the agent answers, stores, audits and logs.

/// `r` is `200` with a `transaction-response` Bundle in `format` with one
/// `200 OK` entry per entry of `request`.
fn assert_transaction_response(r: &Resp, request: &[u8], format: Format, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text_head());
    assert_eq!(r.format(), Some(format), "{what}: {}", r.text_head());
    assert!(
        r.header("aorta-version")
            .is_some_and(|v| v.starts_with("contentVersion=")),
        "{what}: AORTA-Version {:?}",
        r.header("aorta-version")
    );
    let answer = r
        .fhir()
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", r.text_head()));
    let sent = fhir::parse(
        request,
        fhir::sniff(request).unwrap(),
        FhirVersion::R4,
        &Limits::DEFAULT,
    )
    .unwrap();
    assert_eq!(answer["resourceType"], "Bundle", "{what}: {answer}");
    assert_eq!(answer["type"], "transaction-response", "{what}: {answer}");
    let entries = answer["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        entries.len(),
        sent["entry"].as_array().unwrap().len(),
        "{what}: one entry per request entry: {answer}"
    );
    for e in &entries {
        assert_eq!(e["response"]["status"], "200 OK", "{what}: {answer}");
    }
}

/// The inbox files (name, bytes) with names of the contract's form, sorted by name.
fn inbox_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if inbox_name(&name).is_some() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push((name, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Waits until the inbox holds at least `n` files.
fn wait_inbox(dir: &Path, n: usize, agent: &AgentProcess) -> Vec<(String, Vec<u8>)> {
    wait_until(
        LIMIT,
        || inbox_files(dir).len() >= n,
        || {
            format!(
                "{n} inbox file(s) in {}, found {:?}:\n{}",
                dir.display(),
                listing(dir),
                agent.log()
            )
        },
    );
    inbox_files(dir)
}

/// Waits for the files, gives a late duplicate a moment to show, then checks
/// the inbox holds exactly one file per body, byte for byte, each named
/// `<received-utc>-<uuid>.<json|xml>` as its format, received during this
/// test, and nothing else.
fn assert_inbox_holds(dir: &Path, bodies: &[Vec<u8>], agent: &AgentProcess) {
    wait_inbox(dir, bodies.len(), agent);
    std::thread::sleep(Duration::from_millis(1500));
    let files = inbox_files(dir);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        files.len(),
        bodies.len(),
        "one inbox file per distinct notification: {names:?}"
    );
    let want: BTreeSet<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let got: BTreeSet<&[u8]> = files.iter().map(|(_, b)| b.as_slice()).collect();
    assert!(
        want == got,
        "the inbox files are not byte for byte the notifications: {names:?}"
    );
    let now = now_unix();
    for (name, bytes) in &files {
        let (received, ext) = inbox_name(name).unwrap();
        let sniffed = if bytes.starts_with(b"{") {
            "json"
        } else {
            "xml"
        };
        assert_eq!(ext, sniffed, "{name}: extension of its format");
        assert!(
            (now - 3600..=now + 60).contains(&received),
            "{name}: received-utc is not now"
        );
    }
    let stray: Vec<String> = listing(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && inbox_name(n).is_none())
        .collect();
    assert!(stray.is_empty(), "other files in the inbox: {stray:?}");
}

/// `<YYYYMMDDTHHMMSSZ>-<uuid v4>.<json|xml>` → (Unix time, extension).
fn inbox_name(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    if ext != "json" && ext != "xml" {
        return None;
    }
    let (when, uuid) = stem.split_at_checked(16)?;
    let uuid = uuid.strip_prefix('-')?;
    let w = when.as_bytes();
    let digits = |r: std::ops::Range<usize>| w[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..8) && w[8] == b'T' && digits(9..15) && w[15] == b'Z') {
        return None;
    }
    let u = uuid.as_bytes();
    let v4 = u.len() == 36
        && u.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && u[14] == b'4'
        && b"89ab".contains(&u[19]);
    if !v4 {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &when[0..4],
        &when[4..6],
        &when[6..8],
        &when[9..11],
        &when[11..13],
        &when[13..15]
    );
    Some((parse_rfc3339(&rfc)?, ext))
}

/// Every name in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every line of the audit trail.
fn audit_lines(state: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let dir = state.join("audit");
    for name in listing(&dir) {
        if name.ends_with(".jsonl") {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    out
}

/// The logs of every agent process started in `dir`.
fn all_logs(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.starts_with("agent-") && n.ends_with(".log"))
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
        .collect()
}

fn assert_no_bsn(log: &str) {
    assert!(!log.is_empty(), "the agent logged nothing");
    if let Some(line) = log.lines().find(|l| l.contains(BSN)) {
        panic!("the log holds the BSN: {line}");
    }
}

// ---------------------------------------------------------------------------
// Notifications made from the fixtures.

/// The fixture with both `Consent.dateTime`s set to a newer instant (`n`
/// picks which): other bytes, the same notification otherwise.
fn newer(base: &[u8], n: u32) -> Vec<u8> {
    let text = std::str::from_utf8(base).unwrap();
    text.replace(FIXTURE_DATETIME, &format!("2025-01-02T03:04:05.{n:07}Z"))
        .into_bytes()
}

/// `base` with its first `from` replaced by `to` (which may be any bytes).
fn replace_once(base: &[u8], from: &str, to: &[u8]) -> Vec<u8> {
    let at = base
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in the fixture"));
    [&base[..at], to, &base[at + from.len()..]].concat()
}

/// A JSON notification grown to exactly `size` bytes with white space before
/// its final `}` (still the same JSON).
fn pad_json(base: &[u8], size: usize) -> Vec<u8> {
    let text = std::str::from_utf8(base).unwrap().trim_end();
    let open = text.strip_suffix('}').unwrap();
    let pad = size - open.len() - 1;
    format!("{open}{}}}", " ".repeat(pad)).into_bytes()
}

/// An XML notification grown to exactly `size` bytes with white space before `</Bundle>`.
fn pad_xml(base: &[u8], size: usize) -> Vec<u8> {
    let text = std::str::from_utf8(base).unwrap().trim_end();
    let open = text.strip_suffix("</Bundle>").unwrap();
    let pad = size - open.len() - "</Bundle>".len();
    format!("{open}{}</Bundle>", " ".repeat(pad)).into_bytes()
}

fn json_fixture() -> Value {
    serde_json::from_slice(NOTIFICATION_JSON).unwrap()
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

fn patient_mut(v: &mut Value) -> &mut Value {
    let entries = v["entry"].as_array_mut().unwrap();
    let e = entries
        .iter_mut()
        .find(|e| e["resource"]["resourceType"] == "Patient")
        .unwrap();
    &mut e["resource"]
}

/// The JSON notification with its Patient edited.
fn with_patient(edit: impl Fn(&mut Value)) -> Vec<u8> {
    let mut v = json_fixture();
    edit(patient_mut(&mut v));
    to_json(&v)
}

/// The XML notification with `prolog` (a DOCTYPE, a processing
/// instruction) between the XML declaration and the Bundle.
fn before_bundle(prolog: &str) -> Vec<u8> {
    replace_once(
        NOTIFICATION_XML,
        "<Bundle xmlns",
        format!("{prolog}\n<Bundle xmlns").as_bytes(),
    )
}

const NESTED_EXTENSION: &str = "http://example.org/fhir/StructureDefinition/nested";

/// The JSON notification with 40 nested extensions in its Patient (valid
/// FHIR, 80+ levels deep).
fn deep_json() -> Vec<u8> {
    let mut ext = json!({"url": NESTED_EXTENSION, "valueString": "deep"});
    for _ in 0..39 {
        ext = json!({"url": NESTED_EXTENSION, "extension": [ext]});
    }
    let mut v = json_fixture();
    patient_mut(&mut v)["extension"] = json!([ext]);
    to_json(&v)
}

/// The XML notification with 40 nested extensions in its Patient.
fn deep_xml() -> Vec<u8> {
    let open = format!("<extension url=\"{NESTED_EXTENSION}\">").repeat(40);
    let close = "</extension>".repeat(40);
    after_patient_id(&format!("{open}<valueString value=\"deep\"/>{close}"))
}

/// The XML notification with `xml` right after the Patient's `id` (where
/// `text` and `extension` go in R4 order).
fn after_patient_id(xml: &str) -> Vec<u8> {
    let id = format!("<id value=\"{PATIENT_ID}\"/>");
    replace_once(NOTIFICATION_XML, &id, format!("{id}{xml}").as_bytes())
}
