//! The notification Task (sans-IO): spec §7.2/7.3 and DESIGN.md "Task
//! identifiers we write".
//!
//! A Task is built once, when an export is accepted, and stored whole in the
//! spool item that delivers it, so a resend after a crash is byte for byte the
//! same Task. The cancellation Task is that same Task with `status`
//! `cancelled` ([`cancellation`]).
//!
//! # Inputs
//!
//! In this order:
//!
//! 1. `authorization-base` (`valueString`), the case's opaque base;
//! 2. `get-workflow-task` = `false` (we have no workflow Task);
//! 3. one **search** input per resource type present that lives in the STU3
//!    Patient compartment (the serving side answers a search of any type
//!    inside the case). Types are in name order. The coding is the BgZ section
//!    code of spec §8.5 where the type is exactly one section, else
//!    `TaskParameter|search-resource`. The query is the plain type, which
//!    returns every exported resource of that type, except where noted:
//!
//!    | type | `type.coding` | query |
//!    |---|---|---|
//!    | Patient | LOINC 79191-3 | `Patient` |
//!    | Coverage | LOINC 48768-6 | `Coverage` |
//!    | Condition | LOINC 11450-4 | `Condition` |
//!    | NutritionOrder | SNOMED 11816003 | `NutritionOrder` |
//!    | Flag | LOINC 75310-3 | `Flag` |
//!    | AllergyIntolerance | LOINC 48765-2 | `AllergyIntolerance` |
//!    | MedicationStatement | SNOMED 422979000 | the BgZ query `MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3\|6` when every exported MedicationStatement has that category, else `MedicationStatement` |
//!    | MedicationRequest | SNOMED 16076005 | `MedicationRequest` |
//!    | MedicationDispense | SNOMED 422037009 | `MedicationDispense` |
//!    | DeviceUseStatement | LOINC 46264-8 | `DeviceUseStatement` |
//!    | Immunization | LOINC 11369-6 | `Immunization` |
//!    | Procedure | LOINC 47519-4 | `Procedure` |
//!    | Encounter | LOINC 46240-8 | `Encounter` |
//!    | ProcedureRequest, ImmunizationRecommendation, DeviceRequest, Appointment | LOINC 18776-5 | the type |
//!    | DocumentReference | LOINC 77599-9 | `DocumentReference` |
//!    | Observation and every other Patient-compartment type | `TaskParameter\|search-resource` | the type |
//!
//!    BgZ queries with `_include` or extra filters are not used: a filter
//!    could hide an exported resource from the receiver, and the included
//!    resources are announced on their own anyway. Observation is one plain
//!    search because the BgZ vital-sign sections are `$lastn` queries that
//!    return only the latest values.
//! 4. one `read-resource` input (`valueString` `Type/id`) per exported
//!    resource of a type outside the Patient compartment (Binary,
//!    Medication, Organization, Practitioner, Location, Device, …): such
//!    types have no patient search parameter, so a search cannot be narrowed
//!    to the patient and receivers read them by id. A type with more than
//!    [`MAX_READS_PER_TYPE`] resources gets one `search-resource` input
//!    instead, so that the Task stays well under receivers' 1 MB limit.

use serde_json::{Value, json};

use crate::ids::OrgId;
use crate::ids::{BSN_SYSTEM, Bsn, URA_SYSTEM, URI_SYSTEM};
use crate::sender::export::Resources;
use crate::util::time;

/// `Task.code` system and code.
pub const TASK_CODE_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/TaskCode";
pub const TASK_CODE: &str = "pull-notification";
/// System of the TA NP Task parameters.
pub const TASK_PARAMETER_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/TaskParameter";
pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";

/// Above this many resources of one non-compartment type, announce a search
/// of the type instead of one read per resource.
pub const MAX_READS_PER_TYPE: usize = 50;

/// A BgZ section a resource type maps to exactly.
struct Section {
    resource_type: &'static str,
    system: &'static str,
    code: &'static str,
    display: &'static str,
    /// A narrower BgZ query, used only when every exported resource of the
    /// type carries this `category` coding `(system, code)`.
    filtered: Option<(&'static str, &'static str, &'static str)>,
}

const fn section(
    resource_type: &'static str,
    system: &'static str,
    code: &'static str,
    display: &'static str,
) -> Section {
    Section {
        resource_type,
        system,
        code,
        display,
        filtered: None,
    }
}

/// Category of BgZ medication use (MedicationStatement).
const MEDICATION_USE_CATEGORY: (&str, &str) =
    ("urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3", "6");

const SECTIONS: &[Section] = &[
    section("Patient", LOINC, "79191-3", "Patient demographics"),
    section("Coverage", LOINC, "48768-6", "Payment sources"),
    section("Condition", LOINC, "11450-4", "Problem list - Reported"),
    section("NutritionOrder", SNOMED, "11816003", "Diet"),
    section("Flag", LOINC, "75310-3", "Health concerns"),
    section(
        "AllergyIntolerance",
        LOINC,
        "48765-2",
        "Allergies and adverse reactions",
    ),
    Section {
        filtered: Some((
            MEDICATION_USE_CATEGORY.0,
            MEDICATION_USE_CATEGORY.1,
            "MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6",
        )),
        ..section("MedicationStatement", SNOMED, "422979000", "Medication use")
    },
    section(
        "MedicationRequest",
        SNOMED,
        "16076005",
        "Medication agreements",
    ),
    section(
        "MedicationDispense",
        SNOMED,
        "422037009",
        "Administration agreements",
    ),
    section("DeviceUseStatement", LOINC, "46264-8", "Medical aids"),
    section("Immunization", LOINC, "11369-6", "Vaccinations"),
    section("Procedure", LOINC, "47519-4", "Procedures"),
    section("Encounter", LOINC, "46240-8", "Encounters"),
    section("ProcedureRequest", LOINC, "18776-5", "Plan of care"),
    section(
        "ImmunizationRecommendation",
        LOINC,
        "18776-5",
        "Plan of care",
    ),
    section("DeviceRequest", LOINC, "18776-5", "Plan of care"),
    section("Appointment", LOINC, "18776-5", "Plan of care"),
    section(
        "DocumentReference",
        LOINC,
        "77599-9",
        "Additional documentation",
    ),
];

/// Resource types of the STU3 Patient compartment: searchable per patient.
const PATIENT_COMPARTMENT: &[&str] = &[
    "Account",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "BodySite",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Coverage",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EligibilityRequest",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "Group",
    "ImagingManifest",
    "ImagingStudy",
    "Immunization",
    "ImmunizationRecommendation",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "NutritionOrder",
    "Observation",
    "Patient",
    "Person",
    "Procedure",
    "ProcedureRequest",
    "Provenance",
    "QuestionnaireResponse",
    "ReferralRequest",
    "RelatedPerson",
    "RequestGroup",
    "ResearchSubject",
    "RiskAssessment",
    "Schedule",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
    "VisionPrescription",
];

/// Everything a notification Task says.
#[derive(Debug, Clone)]
pub struct Notification<'a> {
    /// Bare UUID of `Task.identifier`.
    pub task_id: &'a str,
    /// Bare UUID of `Task.groupIdentifier` (the case's group).
    pub group_id: &'a str,
    pub patient: &'a Bsn,
    /// `authoredOn`, Unix seconds.
    pub authored_on: i64,
    /// `restriction.period.end`, Unix seconds.
    pub period_end: i64,
    /// `NP_SYSTEM_ID`.
    pub system_id: &'a str,
    /// Our organisation in the partner's id scheme (`requester.onBehalfOf`).
    pub requester: &'a OrgId,
    /// The partner's organisation (`owner`); `None` when addressed as a system.
    pub owner: Option<&'a OrgId>,
    pub authorization_base: &'a str,
    pub resources: &'a Resources,
}

impl Notification<'_> {
    /// The STU3 Task, `status` `requested`.
    pub fn to_task(&self) -> Value {
        let mut input = vec![
            input(
                parameter("authorization-base"),
                "valueString",
                json!(self.authorization_base),
            ),
            input(parameter("get-workflow-task"), "valueBoolean", json!(false)),
        ];
        input.extend(resource_inputs(self.resources));
        let mut task = json!({
            "resourceType": "Task",
            "identifier": [uuid_identifier(self.task_id)],
            "groupIdentifier": uuid_identifier(self.group_id),
            "status": "requested",
            "intent": "proposal",
            "code": {"coding": [{"system": TASK_CODE_SYSTEM, "code": TASK_CODE}]},
            "for": {"identifier": {"system": BSN_SYSTEM, "value": self.patient.as_str()}},
            "authoredOn": time::rfc3339(self.authored_on),
            "restriction": {"period": {"end": time::rfc3339(self.period_end)}},
            "requester": {
                "agent": {"identifier": system_identifier(self.system_id)},
                "onBehalfOf": {"identifier": org_identifier(self.requester)},
            },
            "input": input,
        });
        if let (Some(owner), Value::Object(map)) = (self.owner, &mut task) {
            map.insert("owner".into(), json!({"identifier": org_identifier(owner)}));
        }
        task
    }
}

/// The cancellation of a Task we sent: the same Task with `status`
/// `cancelled` and `lastModified` set to `now`.
pub fn cancellation(task: &Value, now: i64) -> Value {
    let mut t = task.clone();
    if let Value::Object(map) = &mut t {
        map.insert("status".into(), json!("cancelled"));
        map.insert("lastModified".into(), json!(time::rfc3339(now)));
    }
    t
}

/// `{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:<uuid>"}`.
pub fn uuid_identifier(uuid: &str) -> Value {
    json!({"system": URI_SYSTEM, "value": format!("urn:uuid:{uuid}")})
}

/// The search value of a conditional update on a Task identifier:
/// `urn:ietf:rfc:3986|urn:uuid:<uuid>` (not yet percent-encoded).
pub fn identifier_token(uuid: &str) -> String {
    format!("{URI_SYSTEM}|urn:uuid:{uuid}")
}

/// An organisation as we write it in Tasks: URA → system
/// `http://fhir.nl/fhir/NamingSystem/ura`, value the URA; AGB → system
/// `urn:ietf:rfc:3986`, value `urn:oid:2.16.840.1.113883.2.4.6.1.<AGB>`.
pub fn org_identifier(org: &OrgId) -> Value {
    match org {
        OrgId::Ura(n) => json!({"system": URA_SYSTEM, "value": n}),
        OrgId::Agb(_) => json!({"system": URI_SYSTEM, "value": format!("urn:oid:{}", org.oid())}),
    }
}

/// Our system (`NP_SYSTEM_ID`) as an identifier with system
/// `urn:ietf:rfc:3986`: a bare OID is written `urn:oid:<OID>`; a `urn:oid:`
/// value or a URL is written as it is.
pub fn system_identifier(system_id: &str) -> Value {
    let value = if is_bare_oid(system_id) {
        format!("urn:oid:{system_id}")
    } else {
        system_id.to_string()
    };
    json!({"system": URI_SYSTEM, "value": value})
}

fn is_bare_oid(s: &str) -> bool {
    s.split('.').count() >= 2
        && s.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

fn parameter(code: &str) -> Value {
    json!({"coding": [{"system": TASK_PARAMETER_SYSTEM, "code": code}]})
}

fn input(kind: Value, value_key: &str, value: Value) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), kind);
    m.insert(value_key.into(), value);
    Value::Object(m)
}

/// The search and read inputs for the exported resources (see the module docs).
pub fn resource_inputs(resources: &Resources) -> Vec<Value> {
    let mut searches = Vec::new();
    let mut read_types = Vec::new();
    for (resource_type, count) in resources.counts() {
        let in_compartment = PATIENT_COMPARTMENT.contains(&resource_type);
        if !in_compartment && count <= MAX_READS_PER_TYPE {
            read_types.push(resource_type);
            continue;
        }
        let section = SECTIONS.iter().find(|s| s.resource_type == resource_type);
        let (kind, query) = match section {
            Some(s) => {
                let coding =
                    json!({"coding": [{"system": s.system, "code": s.code, "display": s.display}]});
                let query = match s.filtered {
                    Some((sys, code, q))
                        if resources
                            .iter()
                            .filter(|r| r.resource_type == resource_type)
                            .all(|r| r.categories.iter().any(|(s, c)| s == sys && c == code)) =>
                    {
                        q.to_string()
                    }
                    _ => resource_type.to_string(),
                };
                (coding, query)
            }
            None => (parameter("search-resource"), resource_type.to_string()),
        };
        searches.push(input(kind, "valueString", json!(query)));
    }
    let reads = resources
        .iter()
        .filter(|r| read_types.contains(&r.resource_type.as_str()))
        .map(|r| {
            input(
                parameter("read-resource"),
                "valueString",
                json!(format!("{}/{}", r.resource_type, r.id)),
            )
        });
    searches.extend(reads);
    searches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sender::export::ResourceRef;

    fn refs(list: &[(&str, &str)]) -> Resources {
        Resources::new(
            list.iter()
                .map(|(t, id)| ResourceRef {
                    resource_type: t.to_string(),
                    id: id.to_string(),
                    categories: Vec::new(),
                })
                .collect(),
        )
    }

    const TASK_ID: &str = "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe";
    const GROUP_ID: &str = "484639e6-e647-464c-8722-6e8a73cda4e0";

    fn notification<'a>(
        bsn: &'a Bsn,
        requester: &'a OrgId,
        owner: Option<&'a OrgId>,
        resources: &'a Resources,
        system_id: &'a str,
    ) -> Notification<'a> {
        Notification {
            task_id: TASK_ID,
            group_id: GROUP_ID,
            patient: bsn,
            authored_on: 1_796_191_098,
            period_end: 1_796_191_098 + 7 * 86_400,
            system_id,
            requester,
            owner,
            authorization_base: "ZGFhNDFj",
            resources,
        }
    }

    #[test]
    fn task_for_a_ura_partner() {
        let bsn = Bsn::parse("999999151").unwrap();
        let us = OrgId::Ura("12345678".into());
        let them = OrgId::Ura("87654321".into());
        let res = refs(&[("Patient", "p1"), ("Condition", "c1")]);
        let t = notification(&bsn, &us, Some(&them), &res, "https://np.a.example").to_task();
        assert_eq!(t["resourceType"], "Task");
        assert_eq!(
            t["identifier"],
            json!([{"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{TASK_ID}")}])
        );
        assert_eq!(
            t["groupIdentifier"],
            json!({"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{GROUP_ID}")})
        );
        assert_eq!(t["status"], "requested");
        assert_eq!(t["intent"], "proposal");
        assert_eq!(
            t["code"],
            json!({"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskCode", "code": "pull-notification"}]})
        );
        assert_eq!(
            t["for"],
            json!({"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999151"}})
        );
        assert_eq!(t["authoredOn"], "2026-12-02T05:58:18Z");
        assert_eq!(t["restriction"]["period"]["end"], "2026-12-09T05:58:18Z");
        assert_eq!(
            t["requester"],
            json!({
                "agent": {"identifier": {"system": "urn:ietf:rfc:3986", "value": "https://np.a.example"}},
                "onBehalfOf": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "12345678"}},
            })
        );
        assert_eq!(
            t["owner"],
            json!({"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "87654321"}})
        );
        let inputs = t["input"].as_array().unwrap();
        assert_eq!(
            inputs[0],
            json!({"type": {"coding": [{"system": TASK_PARAMETER_SYSTEM, "code": "authorization-base"}]},
                   "valueString": "ZGFhNDFj"})
        );
        assert_eq!(
            inputs[1],
            json!({"type": {"coding": [{"system": TASK_PARAMETER_SYSTEM, "code": "get-workflow-task"}]},
                   "valueBoolean": false})
        );
        assert_eq!(inputs.len(), 4);
    }

    #[test]
    fn task_for_an_agb_partner_with_an_oid_system() {
        let bsn = Bsn::parse("999999151").unwrap();
        let us = OrgId::Agb("01234567".into());
        let them = OrgId::Agb("44446666".into());
        let res = refs(&[("Patient", "p1")]);
        let t = notification(
            &bsn,
            &us,
            Some(&them),
            &res,
            "2.16.840.1.113883.2.4.3.164.2.1",
        )
        .to_task();
        assert_eq!(
            t["requester"]["agent"]["identifier"],
            json!({"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.2.4.3.164.2.1"})
        );
        assert_eq!(
            t["requester"]["onBehalfOf"]["identifier"],
            json!({"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.2.4.6.1.01234567"})
        );
        assert_eq!(
            t["owner"]["identifier"],
            json!({"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.2.4.6.1.44446666"})
        );
    }

    #[test]
    fn address_system_partner_has_no_owner() {
        let bsn = Bsn::parse("999999151").unwrap();
        let us = OrgId::Ura("12345678".into());
        let res = refs(&[("Patient", "p1")]);
        let t = notification(&bsn, &us, None, &res, "urn:oid:1.2.3").to_task();
        assert!(t.get("owner").is_none());
        assert_eq!(
            t["requester"]["agent"]["identifier"]["value"], "urn:oid:1.2.3",
            "already a urn:oid: value: written as is"
        );
    }

    #[test]
    fn identifier_formats() {
        assert_eq!(system_identifier("1.2.3")["value"], "urn:oid:1.2.3");
        assert_eq!(
            system_identifier("https://np.a.example:8443")["value"],
            "https://np.a.example:8443"
        );
        assert_eq!(system_identifier("1..2")["value"], "1..2");
        assert_eq!(
            identifier_token(TASK_ID),
            format!("urn:ietf:rfc:3986|urn:uuid:{TASK_ID}")
        );
        assert_eq!(
            org_identifier(&OrgId::Ura("00000001".into())),
            json!({"system": URA_SYSTEM, "value": "00000001"})
        );
    }

    fn summarise(inputs: &[Value]) -> Vec<(String, String, String)> {
        inputs
            .iter()
            .map(|i| {
                let c = &i["type"]["coding"][0];
                (
                    c["system"].as_str().unwrap().to_string(),
                    c["code"].as_str().unwrap().to_string(),
                    i["valueString"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn inputs_per_type() {
        let res = refs(&[
            ("Patient", "p1"),
            ("Condition", "c1"),
            ("Condition", "c2"),
            ("AllergyIntolerance", "a1"),
            ("Observation", "o1"),
            ("Binary", "b1"),
            ("MedicationStatement", "m1"),
            ("Medication", "med1"),
            ("CarePlan", "cp1"),
            ("Binary", "b2"),
            ("Appointment", "ap1"),
        ]);
        let got = summarise(&resource_inputs(&res));
        let p = TASK_PARAMETER_SYSTEM;
        assert_eq!(
            got,
            vec![
                s(LOINC, "48765-2", "AllergyIntolerance"),
                s(LOINC, "18776-5", "Appointment"),
                s(p, "search-resource", "CarePlan"),
                s(LOINC, "11450-4", "Condition"),
                s(SNOMED, "422979000", "MedicationStatement"),
                s(p, "search-resource", "Observation"),
                s(LOINC, "79191-3", "Patient"),
                s(p, "read-resource", "Binary/b1"),
                s(p, "read-resource", "Medication/med1"),
                s(p, "read-resource", "Binary/b2"),
            ]
        );
    }

    #[test]
    fn medication_use_query_only_when_every_statement_matches() {
        let cat = (
            MEDICATION_USE_CATEGORY.0.to_string(),
            MEDICATION_USE_CATEGORY.1.to_string(),
        );
        let ms = |id: &str, cats: Vec<(String, String)>| ResourceRef {
            resource_type: "MedicationStatement".into(),
            id: id.into(),
            categories: cats,
        };
        let all = Resources::new(vec![
            ms("m1", vec![cat.clone()]),
            ms("m2", vec![cat.clone()]),
        ]);
        assert_eq!(
            summarise(&resource_inputs(&all)),
            vec![s(
                SNOMED,
                "422979000",
                "MedicationStatement?category=urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3|6"
            )]
        );
        let some = Resources::new(vec![ms("m1", vec![cat]), ms("m2", Vec::new())]);
        assert_eq!(
            summarise(&resource_inputs(&some)),
            vec![s(SNOMED, "422979000", "MedicationStatement")]
        );
    }

    #[test]
    fn many_reads_of_one_type_become_a_search() {
        let ids: Vec<String> = (0..=MAX_READS_PER_TYPE).map(|i| format!("b{i}")).collect();
        let list: Vec<(&str, &str)> = ids.iter().map(|i| ("Binary", i.as_str())).collect();
        assert_eq!(
            summarise(&resource_inputs(&refs(&list))),
            vec![s(TASK_PARAMETER_SYSTEM, "search-resource", "Binary")]
        );
        assert_eq!(
            resource_inputs(&refs(&list[..MAX_READS_PER_TYPE])).len(),
            MAX_READS_PER_TYPE
        );
    }

    #[test]
    fn cancellation_is_the_same_task_cancelled() {
        let bsn = Bsn::parse("999999151").unwrap();
        let us = OrgId::Ura("12345678".into());
        let res = refs(&[("Patient", "p1")]);
        let t = notification(&bsn, &us, None, &res, "urn:oid:1.2.3").to_task();
        let c = cancellation(&t, 1_796_191_098 + 60);
        assert_eq!(c["status"], "cancelled");
        assert_eq!(c["lastModified"], "2026-12-02T05:59:18Z");
        let mut back = c.clone();
        back["status"] = json!("requested");
        back.as_object_mut().unwrap().remove("lastModified");
        assert_eq!(back, t, "nothing else changes");
    }
}
