use serde_json::{Value, json};

use super::*;
use crate::fhir::IssueType;

const OURS: &str = "87654321";

fn sample() -> Value {
    serde_json::from_str(include_str!("../sample-notification.json")).unwrap()
}

fn refused(b: &Value) -> Refusal {
    match validate(b, OURS) {
        Ok(_) => panic!("accepted"),
        Err(r) => r,
    }
}

/// Applies `edit` to a copy of the sample and expects a 400 at `expression`.
fn expect_400(edit: impl FnOnce(&mut Value), code: IssueType, expression: &str) {
    let mut b = sample();
    edit(&mut b);
    let r = refused(&b);
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.code, code, "{r}");
    assert_eq!(r.expression.as_deref(), Some(expression), "{r}");
    assert!(
        !r.diagnostics().contains("999999151") && !r.diagnostics().contains(OURS),
        "a refusal repeats a value: {r}"
    );
}

#[test]
fn the_sample_is_a_valid_notification() {
    let n = validate(&sample(), OURS).unwrap();
    assert_eq!(n.bsn.as_str(), "999999151");
    assert_eq!(n.holder, OURS);
    assert_eq!(n.profile, Profile::V3_8);
    assert_eq!(n.entries, 4);
    assert_eq!(
        n.bundle_id.as_deref(),
        Some("5d1f0c8e-3f5a-4b7e-9a51-1c2d3e4f5a60")
    );
    assert_eq!(n.consents.len(), 2);
    let permit = &n.consents[0];
    assert!(permit.permit);
    assert_eq!(permit.data_categories, ["GGC002"]);
    assert_eq!(permit.provider_categories, ["RPZAC104"]);
    assert_eq!(permit.order.1, 896_792_700);
    let deny = &n.consents[1];
    assert!(!deny.permit);
    assert_eq!(deny.provider_categories, ["RPZAC001", "RPZAC005"]);
}

#[test]
fn bundle_level_refusals() {
    expect_400(
        |b| b["resourceType"] = json!("Consent"),
        IssueType::Invalid,
        "Bundle",
    );
    expect_400(
        |b| b["type"] = json!("batch"),
        IssueType::Value,
        "Bundle.type",
    );
    expect_400(
        |b| {
            b.as_object_mut().unwrap().remove("type");
        },
        IssueType::Required,
        "Bundle.type",
    );
    expect_400(
        |b| b["entry"] = json!([]),
        IssueType::Required,
        "Bundle.entry",
    );
}

#[test]
fn transaction_control_refusals() {
    expect_400(
        |b| {
            b["entry"][1].as_object_mut().unwrap().remove("fullUrl");
        },
        IssueType::Required,
        "Bundle.entry[1].fullUrl",
    );
    expect_400(
        |b| b["entry"][1]["fullUrl"] = json!("Consent/1"),
        IssueType::Invalid,
        "Bundle.entry[1].fullUrl",
    );
    expect_400(
        |b| b["entry"][1]["fullUrl"] = b["entry"][0]["fullUrl"].clone(),
        IssueType::Invalid,
        "Bundle.entry[1].fullUrl",
    );
    expect_400(
        |b| {
            b["entry"][2].as_object_mut().unwrap().remove("resource");
        },
        IssueType::Required,
        "Bundle.entry[2].resource",
    );
    expect_400(
        |b| b["entry"][0]["resource"]["resourceType"] = json!("Provenance"),
        IssueType::Invalid,
        "Bundle.entry[0].resource",
    );
    expect_400(
        |b| {
            b["entry"][3].as_object_mut().unwrap().remove("request");
        },
        IssueType::Required,
        "Bundle.entry[3].request",
    );
    expect_400(
        |b| b["entry"][3]["request"]["method"] = json!("PUT"),
        IssueType::Invalid,
        "Bundle.entry[3].request.method",
    );
    expect_400(
        |b| b["entry"][3]["request"]["url"] = json!("Patient"),
        IssueType::Invalid,
        "Bundle.entry[3].request.url",
    );
}

#[test]
fn composition_refusals() {
    // Two Patients.
    expect_400(
        |b| {
            let mut p = b["entry"][2].clone();
            p["fullUrl"] = json!("urn:uuid:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c60");
            b["entry"].as_array_mut().unwrap().push(p);
        },
        IssueType::Invalid,
        "Bundle.entry",
    );
    // No Organization.
    expect_400(
        |b| {
            b["entry"].as_array_mut().unwrap().remove(3);
        },
        IssueType::Invalid,
        "Bundle.entry",
    );
    // No Consent.
    expect_400(
        |b| {
            b["entry"].as_array_mut().unwrap().drain(0..2);
        },
        IssueType::Invalid,
        "Bundle.entry",
    );
}

#[test]
fn references_must_resolve_inside_the_bundle() {
    expect_400(
        |b| {
            b["entry"][0]["resource"]["patient"]["reference"] =
                json!("urn:uuid:00000000-0000-4000-8000-000000000000")
        },
        IssueType::Invalid,
        "Bundle.entry[0].resource.patient",
    );
    // Pointing at the Organization is not the Patient.
    expect_400(
        |b| b["entry"][1]["resource"]["patient"]["reference"] = b["entry"][3]["fullUrl"].clone(),
        IssueType::Invalid,
        "Bundle.entry[1].resource.patient",
    );
    expect_400(
        |b| {
            b["entry"][0]["resource"]
                .as_object_mut()
                .unwrap()
                .remove("patient");
        },
        IssueType::Required,
        "Bundle.entry[0].resource.patient",
    );
    expect_400(
        |b| {
            b["entry"][0]["resource"]["provision"]["actor"][0]["reference"]["reference"] =
                json!("https://elsewhere.example/Organization/1")
        },
        IssueType::Invalid,
        "Bundle.entry[0].resource.provision.actor[0].reference",
    );
    // A relative reference by resource id resolves too.
    let mut b = sample();
    b["entry"][0]["resource"]["patient"]["reference"] =
        json!("Patient/7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c52");
    validate(&b, OURS).unwrap();
}

#[test]
fn patient_and_holder_refusals() {
    expect_400(
        |b| b["entry"][2]["resource"]["identifier"][0]["value"] = json!("999999152"),
        IssueType::Value,
        "Bundle.entry[2].resource.identifier",
    );
    expect_400(
        |b| b["entry"][2]["resource"]["identifier"][0]["system"] = json!("http://example.org/mrn"),
        IssueType::Required,
        "Bundle.entry[2].resource.identifier",
    );
    expect_400(
        |b| b["entry"][3]["resource"]["identifier"][0]["value"] = json!("11111111"),
        IssueType::Value,
        "Bundle.entry[3].resource.identifier",
    );
    expect_400(
        |b| b["entry"][3]["resource"]["identifier"] = json!([]),
        IssueType::Required,
        "Bundle.entry[3].resource.identifier",
    );
}

#[test]
fn consent_content_refusals() {
    expect_400(
        |b| b["entry"][0]["resource"]["status"] = json!("proposed"),
        IssueType::Value,
        "Bundle.entry[0].resource.status",
    );
    expect_400(
        |b| {
            b["entry"][1]["resource"]["category"][0]["coding"][0]["system"] =
                json!("http://loinc.org")
        },
        IssueType::Required,
        "Bundle.entry[1].resource.category",
    );
    expect_400(
        |b| {
            b["entry"][0]["resource"]
                .as_object_mut()
                .unwrap()
                .remove("dateTime");
        },
        IssueType::Required,
        "Bundle.entry[0].resource.dateTime",
    );
    expect_400(
        |b| b["entry"][0]["resource"]["dateTime"] = json!("yesterday"),
        IssueType::Value,
        "Bundle.entry[0].resource.dateTime",
    );
}

#[test]
fn permit_needs_active_and_provision_permit() {
    let mut b = sample();
    b["entry"][0]["resource"]["provision"]["type"] = json!("deny");
    assert!(!validate(&b, OURS).unwrap().consents[0].permit);
    b["entry"][0]["resource"]["provision"]
        .as_object_mut()
        .unwrap()
        .remove("type");
    assert!(!validate(&b, OURS).unwrap().consents[0].permit);
    // `inactive` with a stray `permit` is still no consent.
    let mut b = sample();
    b["entry"][1]["resource"]["provision"]["type"] = json!("permit");
    assert!(!validate(&b, OURS).unwrap().consents[1].permit);
}

#[test]
fn an_unknown_profile_is_accepted_without_interpretation() {
    let mut b = sample();
    b["entry"][0]["resource"]["meta"]["profile"] =
        json!(["http://vzvz.nl/fhir/otv/StructureDefinition/mitz-base-consent|4.0.0-beta.1"]);
    // Content the 3.8 reading would refuse does not matter then.
    b["entry"][0]["resource"]["category"] = json!([]);
    let n = validate(&b, OURS).unwrap();
    assert_eq!(n.profile, Profile::Unknown);
    assert!(n.consents.is_empty());
    // Bundle rules and the holder check still apply.
    b["entry"][3]["resource"]["identifier"][0]["value"] = json!("11111111");
    assert_eq!(refused(&b).status, 400);
    // No meta.profile at all is read as 3.8.
    let mut b = sample();
    b["entry"][0]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("meta");
    assert_eq!(validate(&b, OURS).unwrap().profile, Profile::V3_8);
}

#[test]
fn order_keys_compare_fractions_of_any_length() {
    let a = order_key("2024-11-18T10:51:16.8967927Z").unwrap();
    let b = order_key("2024-11-18T10:51:16.9Z").unwrap();
    let c = order_key("2024-11-18T11:51:16+01:00").unwrap();
    assert!(a < b);
    assert_eq!(c, (a.0, 0));
    assert!(c < a);
    assert_eq!(
        order_key("2024-11-18"),
        Some((c.0 - 10 * 3600 - 51 * 60 - 16, 0))
    );
    assert_eq!(order_key("2024-11-18T10:51"), None);
}
