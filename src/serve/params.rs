//! The search parameters we serve, per resource type, with FHIR STU3 names and
//! element paths.
//!
//! The table covers the BgZ query set (notified-pull spec §8.5), the
//! Zorgviewer queries (zorgviewer spec §7) and the resources those queries
//! `_include`. Names and paths follow the STU3 SearchParameter definitions; a
//! few parameters that these queries use but core STU3 does not define on that
//! type (`MedicationDispense.category`, `ProcedureRequest.category`,
//! `Flag.category`/`status`/`code`, `Coverage.patient` as R4 defines it: the
//! beneficiary) are added with the obvious path. A parameter that is not in
//! this table is refused (400): an unknown parameter silently ignored would
//! widen a search.
//!
//! Date parameters are listed apart ([`date_param`]): they serve as `_sort`
//! keys, not as filters.
//!
//! `_id` and `_profile` apply to every type and are handled by the caller, not
//! listed here.

/// How a parameter is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamKind {
    /// `[system]|[code]` against Coding, CodeableConcept, Identifier and code elements.
    Token,
    /// A reference to a resource of one of `targets` (empty: any type).
    Reference { targets: &'static [&'static str] },
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParamDef {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Dotted element paths from the resource root; arrays are walked through.
    pub paths: &'static [&'static str],
}

impl ParamDef {
    /// True for a reference parameter that can point at a Patient: a value
    /// naming a Patient other than the case's is refused (403).
    pub fn can_name_patient(&self) -> bool {
        match self.kind {
            ParamKind::Reference { targets } => targets.is_empty() || targets.contains(&"Patient"),
            ParamKind::Token => false,
        }
    }

    /// True when a bare id (no `Type/`) given to this parameter names a
    /// Patient: `patient`, `subject`, and parameters that only target Patient.
    pub fn bare_id_is_patient(&self) -> bool {
        match self.kind {
            ParamKind::Reference { targets } => {
                self.name == "patient" || self.name == "subject" || targets == ["Patient"]
            }
            ParamKind::Token => false,
        }
    }

    /// The resource types a reference parameter may point to (empty: any).
    pub fn targets(&self) -> &'static [&'static str] {
        match self.kind {
            ParamKind::Reference { targets } => targets,
            ParamKind::Token => &[],
        }
    }
}

/// The parameters of `resource_type`, or `None` when we serve no search
/// parameters for it (only `_id`).
pub(crate) fn params_of(resource_type: &str) -> &'static [ParamDef] {
    TYPES
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map_or(&[], |(_, p)| *p)
}

/// The parameter `name` of `resource_type`.
pub(crate) fn param(resource_type: &str, name: &str) -> Option<&'static ParamDef> {
    params_of(resource_type).iter().find(|p| p.name == name)
}

/// A date search parameter of one resource type, served as a `_sort` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateDef {
    pub name: &'static str,
    /// Element paths tried in order; the first that holds a date gives the
    /// resource's value (a Period by its `start`).
    pub paths: &'static [&'static str],
}

/// The date parameter `name` of `resource_type`.
pub(crate) fn date_param(resource_type: &str, name: &str) -> Option<&'static DateDef> {
    DATES
        .iter()
        .find(|(t, _)| *t == resource_type)
        .and_then(|(_, d)| d.iter().find(|d| d.name == name))
}

/// The parameter an `_include` value that names another type stands for, in
/// the one form an implementation guide prints.
///
/// Zorgviewer's episode query is `EpisodeOfCare?patient=…&_include=Condition:diagnosis`.
/// STU3 defines no `diagnosis` parameter and an `_include` must start with the
/// searched type, so a strict server would refuse it; what the guide means is
/// the Conditions an episode names in `EpisodeOfCare.diagnosis.condition`, which
/// is the STU3 include `EpisodeOfCare:condition`. That form is served as an
/// alias of it: the result is the same, and the Conditions stay inside the
/// patient's data like every include.
pub(crate) fn include_alias(resource_type: &str, value: &str) -> Option<&'static ParamDef> {
    INCLUDE_ALIASES
        .iter()
        .find(|(t, v, _)| *t == resource_type && *v == value)
        .and_then(|(t, _, name)| param(t, name))
}

static INCLUDE_ALIASES: &[(&str, &str, &str)] =
    &[("EpisodeOfCare", "Condition:diagnosis", "condition")];

/// When an Observation applies: its `date` (`effective[x]`), and `issued`
/// when it has no effective time. `$lastn` orders by the same value.
pub(crate) const OBSERVATION_DATE: DateDef = date(
    "date",
    &["effectiveDateTime", "effectivePeriod.start", "issued"],
);

const fn date(name: &'static str, paths: &'static [&'static str]) -> DateDef {
    DateDef { name, paths }
}

const fn tok(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef {
        name,
        kind: ParamKind::Token,
        paths,
    }
}

const fn rf(
    name: &'static str,
    paths: &'static [&'static str],
    targets: &'static [&'static str],
) -> ParamDef {
    ParamDef {
        name,
        kind: ParamKind::Reference { targets },
        paths,
    }
}

const ANY: &[&str] = &[];
const PATIENT: &[&str] = &["Patient"];
const ID: ParamDef = tok("identifier", &["identifier"]);

static TYPES: &[(&str, &[ParamDef])] = &[
    (
        "Patient",
        &[
            ID,
            rf(
                "general-practitioner",
                &["generalPractitioner"],
                &["Organization", "Practitioner"],
            ),
            rf("organization", &["managingOrganization"], &["Organization"]),
        ],
    ),
    ("Practitioner", &[ID]),
    (
        "PractitionerRole",
        &[
            ID,
            rf("practitioner", &["practitioner"], &["Practitioner"]),
            rf("organization", &["organization"], &["Organization"]),
            tok("role", &["code"]),
            tok("specialty", &["specialty"]),
        ],
    ),
    (
        "Organization",
        &[
            ID,
            tok("type", &["type"]),
            rf("partof", &["partOf"], &["Organization"]),
        ],
    ),
    (
        "Location",
        &[
            ID,
            tok("type", &["type"]),
            rf("organization", &["managingOrganization"], &["Organization"]),
        ],
    ),
    ("RelatedPerson", &[ID, rf("patient", &["patient"], PATIENT)]),
    (
        "Condition",
        &[
            ID,
            tok("code", &["code"]),
            tok("category", &["category"]),
            tok("clinical-status", &["clinicalStatus"]),
            tok("verification-status", &["verificationStatus"]),
            tok("severity", &["severity"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("encounter", &["context"], &["Encounter"]),
            rf(
                "asserter",
                &["asserter"],
                &["Practitioner", "Patient", "RelatedPerson"],
            ),
        ],
    ),
    (
        "AllergyIntolerance",
        &[
            ID,
            tok("code", &["code", "reaction.substance"]),
            tok("category", &["category"]),
            tok("clinical-status", &["clinicalStatus"]),
            tok("verification-status", &["verificationStatus"]),
            tok("criticality", &["criticality"]),
            tok("type", &["type"]),
            rf("patient", &["patient"], PATIENT),
            rf("recorder", &["recorder"], &["Practitioner", "Patient"]),
            rf(
                "asserter",
                &["asserter"],
                &["Patient", "RelatedPerson", "Practitioner"],
            ),
        ],
    ),
    (
        "MedicationStatement",
        &[
            ID,
            tok("code", &["medicationCodeableConcept"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            rf("medication", &["medicationReference"], &["Medication"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf(
                "source",
                &["informationSource"],
                &["Patient", "Practitioner", "RelatedPerson", "Organization"],
            ),
            rf("part-of", &["partOf"], ANY),
        ],
    ),
    (
        "MedicationRequest",
        &[
            ID,
            tok("code", &["medicationCodeableConcept"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            tok("intent", &["intent"]),
            rf("medication", &["medicationReference"], &["Medication"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("requester", &["requester.agent"], ANY),
            rf(
                "intended-dispenser",
                &["dispenseRequest.performer"],
                &["Organization"],
            ),
        ],
    ),
    (
        "MedicationDispense",
        &[
            ID,
            tok("code", &["medicationCodeableConcept"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            rf("medication", &["medicationReference"], &["Medication"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("performer", &["performer.actor"], ANY),
            rf(
                "prescription",
                &["authorizingPrescription"],
                &["MedicationRequest"],
            ),
        ],
    ),
    (
        "Medication",
        &[
            tok("code", &["code"]),
            tok("status", &["status"]),
            rf("manufacturer", &["manufacturer"], &["Organization"]),
        ],
    ),
    (
        "Observation",
        &[
            ID,
            tok("code", &["code"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            tok("component-code", &["component.code"]),
            tok("combo-code", &["code", "component.code"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("specimen", &["specimen"], &["Specimen"]),
            rf(
                "related-target",
                &["related.target"],
                &["Observation", "QuestionnaireResponse", "Sequence"],
            ),
            rf("performer", &["performer"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("encounter", &["context"], &["Encounter"]),
            rf("device", &["device"], &["Device", "DeviceMetric"]),
            rf("based-on", &["basedOn"], ANY),
        ],
    ),
    (
        "DiagnosticReport",
        &[
            ID,
            tok("code", &["code"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("result", &["result"], &["Observation"]),
            rf("specimen", &["specimen"], &["Specimen"]),
            rf("performer", &["performer.actor"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("encounter", &["context"], &["Encounter"]),
            rf("based-on", &["basedOn"], ANY),
        ],
    ),
    (
        "Specimen",
        &[
            ID,
            tok("type", &["type"]),
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("parent", &["parent"], &["Specimen"]),
            rf("collector", &["collection.collector"], &["Practitioner"]),
        ],
    ),
    (
        "DocumentReference",
        &[
            tok("identifier", &["masterIdentifier", "identifier"]),
            tok("class", &["class"]),
            tok("type", &["type"]),
            tok("status", &["status"]),
            tok("setting", &["context.practiceSetting"]),
            tok("facility", &["context.facilityType"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("author", &["author"], ANY),
            rf("custodian", &["custodian"], &["Organization"]),
            rf("authenticator", &["authenticator"], ANY),
            rf("encounter", &["context.encounter"], &["Encounter"]),
            rf("related-ref", &["context.related.ref"], ANY),
        ],
    ),
    (
        "Encounter",
        &[
            ID,
            tok("class", &["class"]),
            tok("type", &["type"]),
            tok("status", &["status"]),
            tok("reason", &["reason"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("participant", &["participant.individual"], ANY),
            rf(
                "practitioner",
                &["participant.individual"],
                &["Practitioner"],
            ),
            rf("service-provider", &["serviceProvider"], &["Organization"]),
            rf("location", &["location.location"], &["Location"]),
            rf("episodeofcare", &["episodeOfCare"], &["EpisodeOfCare"]),
        ],
    ),
    (
        "EpisodeOfCare",
        &[
            ID,
            tok("type", &["type"]),
            tok("status", &["status"]),
            rf("patient", &["patient"], PATIENT),
            rf("organization", &["managingOrganization"], &["Organization"]),
            rf("condition", &["diagnosis.condition"], &["Condition"]),
            rf("care-manager", &["careManager"], &["Practitioner"]),
        ],
    ),
    (
        "Composition",
        &[
            ID,
            tok("type", &["type"]),
            tok("class", &["class"]),
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("encounter", &["encounter"], &["Encounter"]),
            rf("author", &["author"], ANY),
            rf("entry", &["section.entry"], ANY),
        ],
    ),
    (
        "Procedure",
        &[
            ID,
            tok("code", &["code"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("performer", &["performer.actor"], ANY),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("encounter", &["context"], &["Encounter"]),
            rf("location", &["location"], &["Location"]),
        ],
    ),
    (
        "ProcedureRequest",
        &[
            ID,
            tok("code", &["code"]),
            tok("category", &["category"]),
            tok("status", &["status"]),
            tok("intent", &["intent"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("requester", &["requester.agent"], ANY),
            rf("performer", &["performer"], ANY),
            rf("specimen", &["specimen"], &["Specimen"]),
            rf("context", &["context"], &["Encounter", "EpisodeOfCare"]),
            rf("encounter", &["context"], &["Encounter"]),
            rf("based-on", &["basedOn"], ANY),
        ],
    ),
    (
        "Coverage",
        &[
            ID,
            tok("type", &["type"]),
            rf("beneficiary", &["beneficiary"], PATIENT),
            rf("patient", &["beneficiary"], PATIENT),
            rf("subscriber", &["subscriber"], &["Patient", "RelatedPerson"]),
            rf(
                "policy-holder",
                &["policyHolder"],
                &["Patient", "RelatedPerson", "Organization"],
            ),
            rf(
                "payor",
                &["payor"],
                &["Organization", "Patient", "RelatedPerson"],
            ),
        ],
    ),
    (
        "Consent",
        &[
            ID,
            tok("category", &["category"]),
            tok("status", &["status"]),
            tok("action", &["action"]),
            rf("patient", &["patient"], PATIENT),
            rf("actor", &["actor.reference"], ANY),
            rf("organization", &["organization"], &["Organization"]),
            rf("consentor", &["consentingParty"], ANY),
        ],
    ),
    (
        "Flag",
        &[
            ID,
            tok("category", &["category"]),
            tok("status", &["status"]),
            tok("code", &["code"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("author", &["author"], ANY),
            rf("encounter", &["encounter"], &["Encounter"]),
        ],
    ),
    (
        "NutritionOrder",
        &[
            ID,
            tok("status", &["status"]),
            rf("patient", &["patient"], PATIENT),
            rf("encounter", &["encounter"], &["Encounter"]),
            rf("provider", &["orderer"], &["Practitioner"]),
        ],
    ),
    (
        "Immunization",
        &[
            ID,
            tok("status", &["status"]),
            tok("vaccine-code", &["vaccineCode"]),
            rf("patient", &["patient"], PATIENT),
            rf("practitioner", &["practitioner.actor"], &["Practitioner"]),
            rf("manufacturer", &["manufacturer"], &["Organization"]),
            rf("location", &["location"], &["Location"]),
        ],
    ),
    (
        "ImmunizationRecommendation",
        &[
            ID,
            tok("vaccine-type", &["recommendation.vaccineCode"]),
            tok("status", &["recommendation.forecastStatus"]),
            rf("patient", &["patient"], PATIENT),
            rf(
                "information",
                &["recommendation.supportingPatientInformation"],
                &["AllergyIntolerance", "Observation"],
            ),
        ],
    ),
    (
        "Device",
        &[
            ID,
            tok("type", &["type"]),
            tok("status", &["status"]),
            rf("patient", &["patient"], PATIENT),
            rf("organization", &["owner"], &["Organization"]),
            rf("location", &["location"], &["Location"]),
        ],
    ),
    (
        "DeviceUseStatement",
        &[
            ID,
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("device", &["device"], &["Device"]),
        ],
    ),
    (
        "DeviceRequest",
        &[
            ID,
            tok("code", &["codeCodeableConcept"]),
            tok("status", &["status"]),
            tok("intent", &["intent"]),
            rf("device", &["codeReference"], &["Device"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("requester", &["requester.agent"], ANY),
            rf("performer", &["performer"], ANY),
            rf("encounter", &["context"], &["Encounter"]),
        ],
    ),
    (
        "Appointment",
        &[
            ID,
            tok("status", &["status"]),
            tok("appointment-type", &["appointmentType"]),
            tok("service-type", &["serviceType"]),
            rf("patient", &["participant.actor"], PATIENT),
            rf("actor", &["participant.actor"], ANY),
            rf("practitioner", &["participant.actor"], &["Practitioner"]),
            rf("location", &["participant.actor"], &["Location"]),
        ],
    ),
    (
        "CarePlan",
        &[
            ID,
            tok("category", &["category"]),
            tok("status", &["status"]),
            rf("patient", &["subject"], PATIENT),
            rf("subject", &["subject"], ANY),
            rf("care-team", &["careTeam"], &["CareTeam"]),
        ],
    ),
];

/// The STU3 date parameters of the types in [`TYPES`] (Coverage,
/// DeviceUseStatement, Medication and the directory types have none).
static DATES: &[(&str, &[DateDef])] = &[
    ("Patient", &[date("birthdate", &["birthDate"])]),
    ("RelatedPerson", &[date("birthdate", &["birthDate"])]),
    ("PractitionerRole", &[date("date", &["period.start"])]),
    (
        "Condition",
        &[
            date("onset-date", &["onsetDateTime", "onsetPeriod.start"]),
            date("asserted-date", &["assertedDate"]),
            date(
                "abatement-date",
                &["abatementDateTime", "abatementPeriod.start"],
            ),
        ],
    ),
    (
        "AllergyIntolerance",
        &[
            date("date", &["assertedDate"]),
            date("onset", &["reaction.onset"]),
            date("last-date", &["lastOccurrence"]),
        ],
    ),
    (
        "MedicationStatement",
        &[date(
            "effective",
            &["effectiveDateTime", "effectivePeriod.start"],
        )],
    ),
    (
        "MedicationRequest",
        &[
            date("authoredon", &["authoredOn"]),
            date("date", &["dosageInstruction.timing.event"]),
        ],
    ),
    (
        "MedicationDispense",
        &[
            date("whenprepared", &["whenPrepared"]),
            date("whenhandedover", &["whenHandedOver"]),
        ],
    ),
    ("Observation", &[OBSERVATION_DATE]),
    (
        "DiagnosticReport",
        &[
            date("date", &["effectiveDateTime", "effectivePeriod.start"]),
            date("issued", &["issued"]),
        ],
    ),
    (
        "Specimen",
        &[date(
            "collected",
            &[
                "collection.collectedDateTime",
                "collection.collectedPeriod.start",
            ],
        )],
    ),
    (
        "DocumentReference",
        &[
            date("created", &["created"]),
            date("indexed", &["indexed"]),
            date("period", &["context.period.start"]),
        ],
    ),
    ("Encounter", &[date("date", &["period.start"])]),
    ("EpisodeOfCare", &[date("date", &["period.start"])]),
    ("Composition", &[date("date", &["date"])]),
    (
        "Procedure",
        &[date(
            "date",
            &["performedDateTime", "performedPeriod.start"],
        )],
    ),
    (
        "ProcedureRequest",
        &[
            date("authored", &["authoredOn"]),
            date(
                "occurrence",
                &[
                    "occurrenceDateTime",
                    "occurrencePeriod.start",
                    "occurrenceTiming.event",
                ],
            ),
        ],
    ),
    (
        "Consent",
        &[
            date("date", &["dateTime"]),
            date("period", &["period.start"]),
        ],
    ),
    ("Flag", &[date("date", &["period.start"])]),
    ("NutritionOrder", &[date("datetime", &["dateTime"])]),
    ("Immunization", &[date("date", &["date"])]),
    (
        "ImmunizationRecommendation",
        &[date("date", &["recommendation.date"])],
    ),
    (
        "DeviceRequest",
        &[
            date("authored-on", &["authoredOn"]),
            date(
                "event-date",
                &["occurrenceDateTime", "occurrencePeriod.start"],
            ),
        ],
    ),
    ("Appointment", &[date("date", &["start"])]),
    ("CarePlan", &[date("date", &["period.start"])]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed_once_and_every_parameter_once_per_type() {
        for (i, (t, params)) in TYPES.iter().enumerate() {
            assert!(
                TYPES[i + 1..].iter().all(|(u, _)| u != t),
                "{t} listed twice"
            );
            for (j, p) in params.iter().enumerate() {
                assert!(
                    params[j + 1..].iter().all(|q| q.name != p.name),
                    "{t}.{} listed twice",
                    p.name
                );
                assert!(!p.paths.is_empty(), "{t}.{} has no path", p.name);
                assert_ne!(p.name, "_id", "_id is handled by the caller");
            }
        }
    }

    #[test]
    fn the_bgz_queries_find_their_parameters() {
        for (t, p) in [
            ("MedicationStatement", "category"),
            ("MedicationStatement", "medication"),
            ("MedicationRequest", "category"),
            ("MedicationDispense", "category"),
            ("Observation", "code"),
            ("Observation", "related-target"),
            ("Observation", "specimen"),
            ("Encounter", "class"),
            ("Immunization", "status"),
            ("Consent", "category"),
            ("Coverage", "payor"),
            ("Patient", "general-practitioner"),
            ("DeviceUseStatement", "device"),
            ("DeviceRequest", "device"),
            ("Appointment", "status"),
            ("ProcedureRequest", "status"),
            ("Procedure", "category"),
            ("DocumentReference", "status"),
            ("Composition", "type"),
            ("EpisodeOfCare", "condition"),
            ("Condition", "clinical-status"),
        ] {
            assert!(param(t, p).is_some(), "{t}:{p}");
        }
        assert!(params_of("Binary").is_empty());
        // Zorgviewer adds `patient=<id>` to every query but the Patient's.
        for t in [
            "Coverage",
            "Consent",
            "Observation",
            "Condition",
            "NutritionOrder",
            "Flag",
            "AllergyIntolerance",
            "MedicationStatement",
            "MedicationRequest",
            "MedicationDispense",
            "DeviceUseStatement",
            "Immunization",
            "Procedure",
            "Encounter",
            "ProcedureRequest",
            "ImmunizationRecommendation",
            "DeviceRequest",
            "Appointment",
            "DocumentReference",
            "EpisodeOfCare",
            "Composition",
        ] {
            let p = param(t, "patient").unwrap_or_else(|| panic!("{t}:patient"));
            assert!(p.bare_id_is_patient(), "{t}:patient");
        }
    }

    #[test]
    fn date_parameters_are_of_served_types_and_never_also_filters() {
        for (i, (t, dates)) in DATES.iter().enumerate() {
            assert!(
                TYPES.iter().any(|(u, _)| u == t),
                "{t} has dates but no parameters"
            );
            assert!(
                DATES[i + 1..].iter().all(|(u, _)| u != t),
                "{t} listed twice"
            );
            for (j, d) in dates.iter().enumerate() {
                assert!(param(t, d.name).is_none(), "{t}.{} is both", d.name);
                assert!(!d.paths.is_empty(), "{t}.{} has no path", d.name);
                assert!(
                    dates[j + 1..].iter().all(|e| e.name != d.name),
                    "{t}.{} listed twice",
                    d.name
                );
            }
        }
        assert_eq!(date_param("Observation", "date"), Some(&OBSERVATION_DATE));
        assert_eq!(
            date_param("Encounter", "date").map(|d| d.paths),
            Some(&["period.start"][..])
        );
        assert!(date_param("Condition", "date").is_none(), "not in STU3");
        assert!(date_param("Coverage", "date").is_none());
    }

    #[test]
    fn the_episode_include_of_the_zorgviewer_guide_is_the_condition_include() {
        assert_eq!(
            include_alias("EpisodeOfCare", "Condition:diagnosis"),
            param("EpisodeOfCare", "condition")
        );
        assert!(include_alias("Condition", "Condition:diagnosis").is_none());
        assert!(include_alias("EpisodeOfCare", "Condition:subject").is_none());
    }

    #[test]
    fn patient_naming_parameters() {
        let patient = param("Observation", "patient").unwrap();
        assert!(patient.can_name_patient() && patient.bare_id_is_patient());
        let subject = param("Observation", "subject").unwrap();
        assert!(subject.can_name_patient() && subject.bare_id_is_patient());
        let specimen = param("Observation", "specimen").unwrap();
        assert!(!specimen.can_name_patient());
        let payor = param("Coverage", "payor").unwrap();
        assert!(payor.can_name_patient() && !payor.bare_id_is_patient());
        assert!(
            param("Coverage", "beneficiary")
                .unwrap()
                .bare_id_is_patient()
        );
        assert!(!param("Observation", "code").unwrap().can_name_patient());
    }
}
