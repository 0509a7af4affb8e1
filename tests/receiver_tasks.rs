//! The notification Tasks partners send, as files in
//! `tests/fixtures/tasks/`: every valid shape yields exactly the pull plan it
//! announces (values verbatim), every invalid one is refused with the status
//! and the OperationOutcome expression naming the element, and no prefix of
//! a valid Task gets through or panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use np_agent::fhir::FhirVersion;
use np_agent::ids::Bsn;
use np_agent::ids::OrgId;
use np_agent::receiver::task::{self, Expect, Refusal, TaskStatus, ValidatedTask};
use np_agent::receiver::wire::{self, Format};

/// 2026-11-22T12:00:00Z: every fixture's restriction end is after it.
const NOW: i64 = 1_795_348_800;

fn fixture(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tasks")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ura(n: &str) -> OrgId {
    OrgId::Ura(n.into())
}

fn agb(n: &str) -> OrgId {
    OrgId::Agb(n.into())
}

/// We are URA 87654321 / AGB 44446666; the token was issued for `requester`.
fn expect(requester: OrgId) -> Expect {
    Expect {
        ours: vec![ura("87654321"), agb("44446666")],
        requester,
        patient: None,
        now: NOW,
    }
}

fn content_type(rel: &str) -> &'static str {
    if rel.ends_with(".xml") {
        "application/fhir+xml"
    } else {
        "application/fhir+json"
    }
}

fn check(rel: &str, expect: &Expect) -> Result<ValidatedTask, Refusal> {
    let body = wire::read_task_body(&fixture(rel), Some(content_type(rel)))?;
    task::validate(body.value, expect)
}

fn valid(rel: &str, requester: OrgId) -> ValidatedTask {
    check(rel, &expect(requester)).unwrap_or_else(|r| panic!("{rel}: refused: {r}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn viplive_agb_organisations_and_a_bundle_read() {
    let t = valid(
        "valid/viplive-agb-read-available-resource.json",
        agb("12345678"),
    );
    assert_eq!(t.requester(), &agb("12345678"));
    assert_eq!(t.owner(), Some(&agb("44446666")));
    assert_eq!(t.bsn(), &Bsn::parse("999999151").unwrap());
    assert_eq!(
        t.authorization_base(),
        "5754d12a-bfb0-4e3f-847a-9460b45f3a92"
    );
    assert_eq!(
        t.plan().reads,
        strings(&["Bundle/dbb55ea6-a612-458b-bab2-486ce7aeacb7"])
    );
    assert!(t.plan().queries.is_empty());
    assert_eq!(
        t.identifier().inbox_name(),
        "0f8e7a1c-3b7e-4c55-9a0e-5b1e0f0d2a11"
    );
    assert_eq!(
        t.group().inbox_name(),
        "1e2d3c4b-5a69-4788-97a6-b5c4d3e2f101"
    );
    assert_eq!(t.restriction_end(), Some(1_796_199_164));
    assert_eq!(t.status(), TaskStatus::Requested);
}

#[test]
fn bgz_many_queries_several_under_one_code_verbatim() {
    let t = valid("valid/bgz-many-queries-one-code.json", ura("12345678"));
    assert!(t.plan().reads.is_empty());
    assert_eq!(
        t.plan().queries,
        strings(&[
            "Patient?_include=Patient:general-practitioner",
            "Coverage?_include=Coverage:payor:Organization&_include=Coverage:payor:Patient",
            "Consent?category=http://snomed.info/sct|11291000146105",
            "Observation/$lastn?category=http://snomed.info/sct|118228005,http://snomed.info/sct|384821006",
            "Condition",
            "MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6&_include=MedicationStatement:medication",
            "Observation/$lastn?code=http://loinc.org|85354-9",
            "Procedure?category=http://snomed.info/sct|387713003",
            "Procedure?category=http://snomed.info/sct|18629005",
            "Procedure?category=http://snomed.info/sct|410606002",
            "Procedure?category=http://snomed.info/sct|103693007",
            "Appointment?status=booked,pending,proposed",
        ])
    );
    assert_eq!(t.authorization_base(), "7c1f5a2e-bgz-base");
}

#[test]
fn owner_absent_system_receiver() {
    let t = valid("valid/owner-absent-system-receiver.json", ura("12345678"));
    assert_eq!(t.owner(), None);
    assert_eq!(t.plan().queries, strings(&["AllergyIntolerance", "Flag"]));
    // No groupIdentifier: the identifier is the group.
    assert_eq!(t.group(), t.identifier());
    assert_eq!(
        t.group().inbox_name(),
        "c5e3a2f6-9d4f-4a0c-8e8b-4f3d2c1b0a92"
    );
}

#[test]
fn value_reference_and_value_string_reads() {
    let t = valid("valid/value-reference-reads.json", ura("12345678"));
    assert_eq!(
        t.plan().reads,
        strings(&["Patient/p-1", "DocumentReference/doc.7", "Binary/b-1"]),
        "the repeated Patient/p-1 is read once"
    );
    assert!(t.plan().queries.is_empty());
    assert_eq!(t.authorization_base(), "dmFsdWUtcmVmZXJlbmNl");
}

#[test]
fn r4_requester_identifier_and_a_bare_date_end() {
    let t = valid("valid/r4-requester-identifier.json", ura("12345678"));
    assert_eq!(t.requester(), &ura("12345678"));
    assert_eq!(t.owner(), Some(&ura("87654321")));
    assert_eq!(t.plan().reads, strings(&["Patient/r4p"]));
    assert_eq!(
        t.plan().queries,
        strings(&["Condition?clinical-status=active"])
    );
    assert_eq!(
        t.restriction_end(),
        Some(1_796_601_599),
        "a date lasts to its end"
    );
}

#[test]
fn identifier_as_object_with_any_code_systems() {
    let t = valid("valid/identifier-as-object.json", ura("12345678"));
    assert_eq!(
        t.identifier().system.as_deref(),
        Some("https://tools.ietf.org/html/rfc4122")
    );
    assert_eq!(
        t.identifier().inbox_name(),
        "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
    );
    assert_eq!(t.group(), t.identifier());
    assert_eq!(
        t.plan().queries,
        strings(&["Immunization?status=completed"])
    );
}

#[test]
fn oid_root_plus_extension_organisations_and_hashed_inbox_names() {
    let t = valid("valid/oid-root-and-extension.json", ura("12345678"));
    assert_eq!(t.requester(), &ura("12345678"));
    assert_eq!(t.owner(), Some(&ura("87654321")));
    assert_eq!(t.bsn(), &Bsn::parse("999999151").unwrap());
    // sha256("urn:oid:…1.4|NOTIF-2026-0042")[..32] and the same for the group.
    assert_eq!(
        t.identifier().inbox_name(),
        "7d5eb5862516df75d17c943cfc8e85cf"
    );
    assert_eq!(t.group().inbox_name(), "015aa2287a749e25ae3ebf9ceac8037b");
    assert_eq!(t.plan().queries, strings(&["AllergyIntolerance"]));
}

#[test]
fn url_encoded_queries_are_kept_verbatim_even_when_broken() {
    let t = valid("valid/url-encoded-queries.json", ura("12345678"));
    assert_eq!(
        t.plan().queries,
        strings(&[
            "MedicationStatement?category=urn%3Aoid%3A2.16.840.1.113883.2.4.3.11.60.20.77.5.3%7C6&_include=MedicationStatement%3Amedication",
            "Observation/$lastn?code=http%3A%2F%2Floinc.org%7C85354-9",
            "Encounter?class=http://hl7.org/fhir/v3/ActCode%7CIMP,http://%hl7.org/fhir/v3/ActCode%7CACUTE",
        ])
    );
}

#[test]
fn workflow_task_without_queries() {
    let t = valid("valid/workflow-task-only.json", ura("12345678"));
    assert!(t.plan().is_empty());
    assert!(t.get_workflow_task());
    assert_eq!(t.workflow_task(), Some("Task/workflow-77"));
}

#[test]
fn stu3_xml() {
    let body = wire::read_task_body(
        &fixture("valid/stu3-task.xml"),
        Some("application/fhir+xml"),
    )
    .unwrap();
    assert_eq!(
        (body.format, body.version),
        (Format::Xml, FhirVersion::Stu3)
    );
    let t = task::validate(body.value, &expect(ura("12345678"))).unwrap();
    assert_eq!(t.plan().reads, strings(&["Patient/xml-p1"]));
    assert_eq!(
        t.plan().queries,
        strings(&["Condition?clinical-status=active&_count=50"])
    );
    assert_eq!(t.authorization_base(), "eG1sLWF1dGhvcml6YXRpb24tYmFzZQ==");
    assert_eq!(
        t.group().inbox_name(),
        "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b"
    );
    // Sniffed without a Content-Type, too.
    let sniffed = wire::read_task_body(&fixture("valid/stu3-task.xml"), None).unwrap();
    assert_eq!(sniffed.value, *t.resource());
}

#[test]
fn r4_xml() {
    let body =
        wire::read_task_body(&fixture("valid/r4-task.xml"), Some("application/xml")).unwrap();
    assert_eq!(body.version, FhirVersion::R4);
    let t = task::validate(body.value, &expect(ura("12345678"))).unwrap();
    assert_eq!(t.requester(), &ura("12345678"));
    assert_eq!(t.owner(), None);
    assert_eq!(
        t.plan().queries,
        strings(&["Observation?code=http://loinc.org|29463-7"])
    );
    assert_eq!(t.restriction_end(), None);
}

#[test]
fn at_least_eight_valid_shapes_are_in_the_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks/valid");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let requester = if name.starts_with("viplive") {
            agb("12345678")
        } else {
            ura("12345678")
        };
        let t = valid(&format!("valid/{name}"), requester);
        // Whatever a Task asks for, joined to the base, stays under the base.
        let base = "https://sender.example:8443/fhir/stu3";
        for rel in t.plan().reads.iter().chain(&t.plan().queries) {
            assert!(
                np_agent::util::url::is_under(base, &np_agent::util::url::join(base, rel)),
                "{name}: {rel}"
            );
        }
        n += 1;
    }
    assert!(n >= 8, "{n} valid fixtures");
}

/// Refused with `status`; the OperationOutcome's first issue names `expression`.
fn refused(rel: &str, expect: &Expect, status: u16, expression: Option<&str>) {
    let r = check(rel, expect)
        .err()
        .unwrap_or_else(|| panic!("{rel}: accepted"));
    assert_eq!(r.status, status, "{rel}: {r}");
    let resp = wire::refusal_response(&r, Format::Json);
    assert_eq!(resp.status, status);
    let oo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(
        oo["issue"][0]["expression"][0].as_str(),
        expression,
        "{rel}: {oo}"
    );
    let text = String::from_utf8_lossy(&resp.body);
    for bsn in ["999999990", "999999991", "999999151"] {
        assert!(!text.contains(bsn), "{rel}: BSN in the answer: {text}");
    }
}

#[test]
fn invalid_tasks_are_refused_with_400_naming_the_element() {
    let e = expect(ura("12345678"));
    for (rel, expression) in [
        ("invalid/not-a-task.json", "Task.resourceType"),
        ("invalid/no-identifier.json", "Task.identifier"),
        (
            "invalid/identifier-without-value.json",
            "Task.identifier[0].value",
        ),
        ("invalid/wrong-code.json", "Task.code"),
        ("invalid/wrong-intent.json", "Task.intent"),
        ("invalid/wrong-status.json", "Task.status"),
        (
            "invalid/bsn-fails-eleven-test.json",
            "Task.for.identifier.value",
        ),
        ("invalid/no-bsn.json", "Task.for.identifier"),
        ("invalid/no-authorization-base.json", "Task.input"),
        ("invalid/two-authorization-bases.json", "Task.input[4]"),
        ("invalid/no-read-or-query.json", "Task.input"),
        (
            "invalid/restriction-end-passed.json",
            "Task.restriction.period.end",
        ),
        ("invalid/absolute-query.json", "Task.input[2].valueString"),
        ("invalid/dotdot-query.json", "Task.input[2].valueString"),
        (
            "invalid/double-slash-query.json",
            "Task.input[2].valueString",
        ),
        (
            "invalid/absolute-read-reference.json",
            "Task.input[3].valueReference.reference",
        ),
        ("invalid/workflow-without-based-on.json", "Task.basedOn"),
        (
            "invalid/requester-missing.json",
            "Task.requester.onBehalfOf.identifier",
        ),
        (
            "invalid/requester-not-an-organisation.json",
            "Task.requester.onBehalfOf.identifier",
        ),
        ("invalid/xml-unknown-element.xml", "Task.patientBsn"),
    ] {
        refused(rel, &e, 400, Some(expression));
    }
    // Hostile XML never reaches the Task rules.
    let r = check("invalid/xml-entity-declaration.xml", &e).unwrap_err();
    assert_eq!((r.status, r.code.as_str()), (400, "security"), "{r}");
}

#[test]
fn forbidden_when_the_task_is_not_the_tokens() {
    let e = expect(ura("12345678"));
    refused(
        "invalid/forbidden-requester-not-token-org.json",
        &e,
        403,
        Some("Task.requester.onBehalfOf"),
    );
    refused(
        "invalid/forbidden-owner-not-ours.json",
        &e,
        403,
        Some("Task.owner"),
    );
    // A valid Task, but the token was issued for another organisation …
    refused(
        "valid/bgz-many-queries-one-code.json",
        &expect(agb("12345678")),
        403,
        Some("Task.requester.onBehalfOf"),
    );
    // … or for another patient.
    let mut other_patient = expect(ura("12345678"));
    other_patient.patient = Bsn::parse("999999151");
    refused(
        "valid/bgz-many-queries-one-code.json",
        &other_patient,
        403,
        Some("Task.for.identifier"),
    );
    // The R4 requester is named by its own path.
    refused(
        "valid/r4-requester-identifier.json",
        &expect(ura("11111111")),
        403,
        Some("Task.requester"),
    );
}

#[test]
fn no_truncated_prefix_gets_through_or_panics() {
    for rel in [
        "valid/viplive-agb-read-available-resource.json",
        "valid/stu3-task.xml",
    ] {
        let full = fixture(rel);
        let e = expect(if rel.contains("viplive") {
            agb("12345678")
        } else {
            ura("12345678")
        });
        for n in 0..full.len() {
            let prefix = &full[..n];
            // Only trailing white space can be cut off a valid document.
            if full[n..].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let result = wire::read_task_body(prefix, Some(content_type(rel)))
                .and_then(|b| task::validate(b.value, &e));
            match result {
                Ok(_) => panic!("{rel}: prefix of {n} bytes accepted"),
                Err(r) => assert!(r.status == 400, "{rel}: prefix {n}: {r}"),
            }
        }
    }
}

/// Our own sender's Tasks (URA and AGB partners, owner present or not) and
/// its cancellations pass our own receiver, with the plan the sender meant.
#[test]
fn our_senders_tasks_pass_our_receiver() {
    use np_agent::sender::export::{ResourceRef, Resources};
    use np_agent::sender::task::{Notification, cancellation};
    let r = |t: &str, id: &str| ResourceRef {
        resource_type: t.into(),
        id: id.into(),
        categories: vec![(
            "urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3".into(),
            "6".into(),
        )],
    };
    let resources = Resources::new(vec![
        r("Patient", "p1"),
        r("Condition", "c1"),
        r("MedicationStatement", "m1"),
        r("Medication", "med-1"),
        r("Organization", "org.1"),
        r("Observation", "o1"),
    ]);
    let bsn = Bsn::parse("999999151").unwrap();
    for (requester, owner) in [
        (ura("12345678"), Some(ura("87654321"))),
        (agb("12345678"), Some(agb("44446666"))),
        (ura("12345678"), None),
    ] {
        let n = Notification {
            task_id: "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe",
            group_id: "484639e6-e647-464c-8722-6e8a73cda4e0",
            patient: &bsn,
            authored_on: NOW - 60,
            period_end: NOW + 14 * 86_400,
            system_id: "2.16.840.1.113883.2.4.3.164.2.1",
            requester: &requester,
            owner: owner.as_ref(),
            authorization_base: "ZGFhNDFj",
            resources: &resources,
        };
        let sent = n.to_task();
        let bytes = np_agent::fhir::to_json_string(&sent).into_bytes();
        let body = wire::read_task_body(&bytes, Some("application/fhir+json")).unwrap();
        let t = task::validate(body.value, &expect(requester.clone()))
            .unwrap_or_else(|e| panic!("{requester}: {e}"));
        assert_eq!(t.owner(), owner.as_ref());
        assert_eq!(t.authorization_base(), "ZGFhNDFj");
        assert_eq!(t.bsn(), &bsn);
        let mut wanted: Vec<&str> = vec![
            "Condition",
            "MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6",
            "Observation",
            "Patient",
        ];
        let mut got: Vec<&str> = t.plan().queries.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, wanted, "{requester}");
        let mut reads = t.plan().reads.clone();
        reads.sort();
        assert_eq!(reads, ["Medication/med-1", "Organization/org.1"]);
        // The cancellation of it passes too.
        let c = cancellation(&sent, NOW);
        let c = task::validate_cancellation(c, &expect(requester.clone())).unwrap();
        assert_eq!(c.identifier(), Some(t.identifier()));
    }
}
