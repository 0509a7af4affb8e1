//! Zorgviewer source access end to end: the real daemon, a Zorgviewer-like
//! client over mTLS that serves its own JWKS, records published through the
//! outbox, and the Mitz notification broker changing the patient's consent.
//!
//! - the whole read path of spec zorgviewer.md: token (spec §2), patient
//!   lookup with and without the BSN system, every query of §7, the document
//!   list and the PDF in both forms (§8), each answer equal to the published
//!   record resource for resource, with `Meta.source` on every resource;
//! - consent: nothing before a Mitz permit (indistinguishable from an unknown
//!   patient), the record after it, nothing again after a newer deny;
//!   `CONSENT=none` serves without a permit; a withdrawn record is gone at once;
//! - refusals, each with its exact status and OperationOutcome or OAuth error;
//! - a large record published as JSON and as XML, served back complete;
//! - the audit trail: one record per request with the request context, and
//!   `np-agent audit --patient` listing the reads; no BSN in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, JwksServer, Party, World};
use common::folders::export;
use common::observe::{events, wait_until};
use common::zorgviewer::{
    FHIR_JSON, Req, Resp, SCOPES, SCT, USER, Viewer, audit, audit_of, cc_form, context_claims,
    context_jwt, link, nano_id, sign, token_request,
};
use np_agent::fhir::{FhirVersion, Limits, json_to_xml, xml_to_json};
use np_agent::jose::{Alg, SigningKey};
use np_agent::util::{b64, random, time::now_unix};
use serde_json::{Value, json};

/// Our URA (the agent's): the holder in every consent notification.
const OUR_URA: &str = "12345678";
/// `NP_ORG_OID`: what `Meta.source` names.
const OUR_OID: &str = "2.16.840.1.113883.2.4.3.46.1";
/// The published patients; each passes the 11-test.
const BSN_A: &str = "999999151";
const BSN_JSON: &str = "999998286";
const BSN_XML: &str = "999997245";
/// A valid BSN nobody published.
const BSN_UNKNOWN: &str = "999911120";
/// A `Patient.id` nobody published.
const ID_UNKNOWN: &str = "zz-pat";
const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
const META_SOURCE: &str = "http://hl7.org/fhir/4.0/StructureDefinition/extension-Meta.source";
const LOINC: &str = "http://loinc.org";
const OBS_CAT: &str = "http://hl7.org/fhir/observation-category";
const ACT: &str = "http://hl7.org/fhir/v3/ActCode";
const ZIB_BP: &str = "http://nictiz.nl/fhir/StructureDefinition/zib-BloodPressure";
/// A PDF/A-like document as the EHR attaches it.
const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n\
    2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n";
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The published record
// ---------------------------------------------------------------------------

/// A patient record as an EHR publishes it for Zorgviewer: 38 resources of
/// 18 types, every id prefixed with `p` (two patients' records never share
/// a `Type/id`), dates out of Bundle order, zib profiles, a document with
/// its PDF.
fn record(p: &str, bsn: &str) -> Value {
    let pid = format!("{p}-pat");
    let at = |id: &str| format!("{p}-{id}");
    let on = |t: &str, id: &str, link: &str, extra: Value| {
        let mut r =
            json!({"resourceType": t, "id": at(id), link: {"reference": format!("Patient/{pid}")}});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let coding = |system: &str, code: &str| json!({"coding": [{"system": system, "code": code}]});
    let obs = |id: &str, category: &str, code: &str, extra: Value| {
        let mut o = on(
            "Observation",
            id,
            "subject",
            json!({"status": "final", "category": [coding(OBS_CAT, category)], "code": coding(LOINC, code)}),
        );
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        o
    };
    let encounter = |id: &str, class: &str, start: &str| {
        on(
            "Encounter",
            id,
            "subject",
            json!({"status": "finished", "class": {"system": ACT, "code": class}, "period": {"start": start}}),
        )
    };
    let pdf = base64::engine::general_purpose::STANDARD.encode(PDF);
    let mut resources = vec![
        json!({"resourceType": "Patient", "id": pid,
               "identifier": [{"system": BSN_SYSTEM, "value": bsn}],
               "name": [{"family": "Zorgviewer", "given": ["T.E.S.T."]}], "birthDate": "1973-02-01",
               "generalPractitioner": [{"reference": format!("Practitioner/{}", at("gp"))}]}),
        json!({"resourceType": "Practitioner", "id": at("gp"), "name": [{"family": "Huisarts"}]}),
        json!({"resourceType": "Organization", "id": at("insurer"), "name": "Zorgverzekeraar"}),
        on(
            "Coverage",
            "cov",
            "beneficiary",
            json!({"status": "active", "payor": [{"reference": format!("Organization/{}", at("insurer"))}]}),
        ),
        on(
            "Condition",
            "cond-active",
            "subject",
            json!({"clinicalStatus": "active", "code": coding(SCT, "38341003"), "onsetDateTime": "2018-05-01"}),
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
                   "diagnosis": [{"condition": {"reference": format!("Condition/{}", at("cond-active"))}}]}),
        ),
        on(
            "EpisodeOfCare",
            "eoc-2",
            "patient",
            json!({"status": "finished",
                   "diagnosis": [{"condition": {"reference": format!("Condition/{}", at("cond-resolved"))}, "rank": 1}]}),
        ),
        obs(
            "lab-hb",
            "laboratory",
            "718-7",
            json!({"issued": "2026-11-19T12:00:00Z",
                   "valueQuantity": {"value": 8.5, "unit": "mmol/L"},
                   "specimen": {"reference": format!("Specimen/{}", at("spec"))}}),
        ),
        obs(
            "lab-crp",
            "laboratory",
            "1988-5",
            json!({"effectiveDateTime": "2026-10-01"}),
        ),
        obs(
            "lab-k",
            "laboratory",
            "2823-3",
            json!({"effectiveDateTime": "2026-10-02"}),
        ),
        on(
            "Specimen",
            "spec",
            "subject",
            json!({"type": coding(SCT, "119297000")}),
        ),
        obs(
            "weight",
            "vital-signs",
            "29463-7",
            json!({"effectiveDateTime": "2026-11-20T09:00:00+01:00",
                   "valueQuantity": {"value": 72.4, "unit": "kg"}}),
        ),
        obs(
            "bp-plain",
            "vital-signs",
            "85354-9",
            json!({"effectiveDateTime": "2025-12-01"}),
        ),
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
            json!({"status": "final", "type": coding(LOINC, "11488-4"), "date": "2026-11-02", "title": "Consult"}),
        ),
        on(
            "DocumentReference",
            "doc-letter",
            "subject",
            json!({"status": "current", "type": coding(LOINC, "56444-3"), "indexed": "2026-11-21T14:00:00+01:00",
                   "content": [{"attachment": {"contentType": "application/pdf",
                                               "url": format!("Binary/{}", at("bin-letter"))}}]}),
        ),
        on(
            "DocumentReference",
            "doc-old",
            "subject",
            json!({"status": "superseded", "type": coding(LOINC, "56444-3"), "indexed": "2025-01-01T00:00:00Z",
                   "content": [{"attachment": {"contentType": "application/pdf",
                                               "url": format!("Binary/{}", at("bin-old"))}}]}),
        ),
        json!({"resourceType": "Binary", "id": at("bin-letter"), "contentType": "application/pdf", "content": pdf}),
        json!({"resourceType": "Binary", "id": at("bin-old"), "contentType": "application/pdf", "content": pdf}),
        on(
            "AllergyIntolerance",
            "allergy",
            "patient",
            json!({"clinicalStatus": "active", "verificationStatus": "confirmed", "code": coding(SCT, "91936005")}),
        ),
        json!({"resourceType": "Medication", "id": at("med"), "code": coding("urn:oid:2.16.840.1.113883.2.4.4.10", "2134")}),
        on(
            "MedicationStatement",
            "medstat",
            "subject",
            json!({"status": "active", "taken": "y",
                   "medicationReference": {"reference": format!("Medication/{}", at("med"))}}),
        ),
        on(
            "Procedure",
            "proc",
            "subject",
            json!({"status": "completed", "code": coding(SCT, "387713003"), "performedDateTime": "2019-02-02"}),
        ),
        on(
            "Immunization",
            "imm",
            "patient",
            json!({"status": "completed", "notGiven": false, "date": "2020-10-01",
                   "primarySource": true, "vaccineCode": coding("urn:oid:2.16.840.1.113883.2.4.4.1", "J07BX03")}),
        ),
        on(
            "Flag",
            "flag",
            "subject",
            json!({"status": "active", "code": coding(SCT, "15188001")}),
        ),
    ];
    // Blood pressures out of date order in the Bundle.
    for (id, day) in [
        ("bp-3", "2026-03-01"),
        ("bp-6", "2026-06-01"),
        ("bp-1", "2026-01-01"),
        ("bp-5", "2026-05-01"),
        ("bp-2", "2026-02-01"),
        ("bp-4", "2026-04-01"),
    ] {
        let mut bp = obs(
            id,
            "vital-signs",
            "85354-9",
            json!({"effectiveDateTime": day}),
        );
        bp["meta"] = json!({"profile": [ZIB_BP]});
        resources.push(bp);
    }
    json!({"resourceType": "Bundle", "type": "collection",
           "entry": resources.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
}

/// The record's resources by `Type/id`.
fn resources_of(record: &Value) -> BTreeMap<String, Value> {
    record["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            (
                format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                ),
                r.clone(),
            )
        })
        .collect()
}

/// `Type/id` of each name, prefixed (`+` before the type marks an `_include`).
fn ids(p: &str, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let (plus, n) = match n.strip_prefix('+') {
                Some(rest) => ("+", rest),
                None => ("", *n),
            };
            let (t, id) = n.split_once('/').unwrap();
            format!("{plus}{t}/{p}-{id}")
        })
        .collect()
}

/// Every query of spec §7 (and the patient lookups, the document list,
/// `$lastn`) for patient `p`, with the `Type/id`s it must answer, in order.
/// `|` goes percent-encoded, as a URL must carry it.
fn bgz_queries(p: &str, bsn: &str) -> Vec<(String, Vec<String>)> {
    let pid = format!("{p}-pat");
    let class = |codes: &[&str]| {
        codes
            .iter()
            .map(|c| format!("{ACT}%7C{c}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        (
            format!("/fhir/Patient?identifier={BSN_SYSTEM}%7C{bsn}"),
            ids(p, &["Patient/pat"]),
        ),
        (
            format!("/fhir/Patient?identifier={bsn}"),
            ids(p, &["Patient/pat"]),
        ),
        (
            format!("/fhir/Condition?patient={pid}"),
            ids(
                p,
                &[
                    "Condition/cond-active",
                    "Condition/cond-resolved",
                    "Condition/cond-inactive",
                ],
            ),
        ),
        (
            format!("/fhir/Condition?patient={pid}&clinical-status=active,resolved"),
            ids(p, &["Condition/cond-active", "Condition/cond-resolved"]),
        ),
        (
            format!("/fhir/Observation?patient={pid}&category=laboratory"),
            ids(
                p,
                &[
                    "Observation/lab-hb",
                    "Observation/lab-crp",
                    "Observation/lab-k",
                ],
            ),
        ),
        (
            format!("/fhir/Observation?patient={pid}&category={OBS_CAT}%7Cvital-signs"),
            ids(
                p,
                &[
                    "Observation/weight",
                    "Observation/bp-plain",
                    "Observation/bp-3",
                    "Observation/bp-6",
                    "Observation/bp-1",
                    "Observation/bp-5",
                    "Observation/bp-2",
                    "Observation/bp-4",
                ],
            ),
        ),
        (
            format!("/fhir/Observation?patient={pid}&_profile={ZIB_BP}&_sort=-date&_count=5"),
            ids(
                p,
                &[
                    "Observation/bp-6",
                    "Observation/bp-5",
                    "Observation/bp-4",
                    "Observation/bp-3",
                    "Observation/bp-2",
                ],
            ),
        ),
        (
            format!(
                "/fhir/Encounter?patient={pid}&class={}",
                class(&["IMP", "ACUTE", "NONAC"])
            ),
            ids(
                p,
                &[
                    "Encounter/enc-imp",
                    "Encounter/enc-acute",
                    "Encounter/enc-nonac",
                ],
            ),
        ),
        (
            format!("/fhir/Encounter?patient={pid}&class={}", class(&["AMB"])),
            ids(p, &["Encounter/enc-amb"]),
        ),
        (
            format!("/fhir/EpisodeOfCare?patient={pid}&_include=Condition:diagnosis"),
            ids(
                p,
                &[
                    "EpisodeOfCare/eoc-1",
                    "EpisodeOfCare/eoc-2",
                    "+Condition/cond-active",
                    "+Condition/cond-resolved",
                ],
            ),
        ),
        (
            format!("/fhir/Composition?patient={pid}&type={LOINC}%7C67781-5"),
            ids(p, &["Composition/comp-his"]),
        ),
        (
            format!("/fhir/DocumentReference?patient={pid}&status=current"),
            ids(p, &["DocumentReference/doc-letter"]),
        ),
        (
            format!("/fhir/Observation/$lastn?patient={pid}&code={LOINC}%7C85354-9&max=1"),
            ids(p, &["Observation/bp-6"]),
        ),
        (format!("/fhir/Patient/{pid}"), ids(p, &["Patient/pat"])),
        (
            format!("/fhir/Practitioner/{p}-gp"),
            ids(p, &["Practitioner/gp"]),
        ),
        (
            format!("/fhir/Specimen/{p}-spec"),
            ids(p, &["Specimen/spec"]),
        ),
    ]
}

// ---------------------------------------------------------------------------
// The fixture: one agent, its Zorgviewer partners and the Mitz broker
// ---------------------------------------------------------------------------

/// How a Zorgviewer partner is configured.
struct ViewerSpec {
    name: &'static str,
    ura: &'static str,
    /// `NP_PARTNER_<NAME>_CONSENT`, when not the default.
    consent: Option<&'static str>,
    allow_from: Option<&'static str>,
}

impl ViewerSpec {
    fn new(name: &'static str, ura: &'static str) -> ViewerSpec {
        ViewerSpec {
            name,
            ura,
            consent: None,
            allow_from: None,
        }
    }
}

/// One agent under test with its partners.
struct Site {
    setup: AgentSetup,
    agent: AgentProcess,
    viewers: BTreeMap<&'static str, Viewer>,
    /// The Mitz notification broker's client.
    broker: ureq::Agent,
    twiin: Party,
    _twiin_jwks: JwksServer,
    /// The `X-Request-Id` of every answer to a Zorgviewer request, in order.
    sent: std::cell::RefCell<Vec<String>>,
    _tmp: TempDir,
}

impl Site {
    /// An agent with the given Zorgviewer partners, a Mitz broker and a
    /// Twiin partner.
    fn new(label: &str, specs: &[ViewerSpec]) -> Site {
        let tmp = TempDir::new(label);
        let world = World::new();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", OUR_URA);
        setup
            .env
            .set("NP_POLL_INTERVAL", "1s")
            .set("NP_ORG_OID", OUR_OID);
        let mut viewers = BTreeMap::new();
        for spec in specs {
            let viewer = Viewer::new(&world, tmp.path(), &mut setup, spec.name, spec.ura);
            let k = |f: &str| format!("NP_PARTNER_{}_{f}", spec.name.to_ascii_uppercase());
            if let Some(c) = spec.consent {
                setup.env.set(&k("CONSENT"), c);
            }
            if let Some(a) = spec.allow_from {
                setup.env.set(&k("ALLOW_FROM"), a);
            }
            viewers.insert(spec.name, viewer);
        }
        let broker = Party::new(&world, tmp.path(), "broker", "22223333", &[]);
        setup.add_mitz(&broker);
        let twiin = Party::new(&world, tmp.path(), "hospb", "87654321", &[Alg::Es256]);
        let twiin_jwks = twiin.serve_jwks();
        setup.add_partner(&twiin, &twiin_jwks);
        let agent = setup.start();
        Site {
            setup,
            agent,
            viewers,
            broker: broker.client(),
            twiin,
            _twiin_jwks: twiin_jwks,
            sent: std::cell::RefCell::new(Vec::new()),
            _tmp: tmp,
        }
    }

    fn viewer(&self, name: &str) -> &Viewer {
        &self.viewers[name]
    }

    /// Publishes `record` as `<record_id>.json` (or `.xml`) in each
    /// partner's folder and waits until the agent took them all in.
    fn publish(&self, partners: &[&str], record_id: &str, record: &Value, xml: bool) {
        let before = events(&self.agent.log(), "record.published", &[]).len();
        let (name, bytes) = if xml {
            (
                format!("{record_id}.xml"),
                json_to_xml(record, FhirVersion::Stu3).unwrap().into_bytes(),
            )
        } else {
            (format!("{record_id}.json"), record.to_string().into_bytes())
        };
        for partner in partners {
            export(&self.setup.outbox(partner), &name, &bytes);
        }
        wait_until(
            LIMIT,
            || events(&self.agent.log(), "record.published", &[]).len() >= before + partners.len(),
            || self.agent.log(),
        );
    }

    /// Withdraws a record from a partner and waits until it is done.
    fn withdraw(&self, partner: &str, record_id: &str) {
        export(
            &self.setup.outbox(partner),
            &format!("{record_id}.cancel"),
            b"",
        );
        wait_until(
            LIMIT,
            || {
                !events(
                    &self.agent.log(),
                    "record.withdrawn",
                    &[("partner", partner), ("record", record_id)],
                )
                .is_empty()
            },
            || self.agent.log(),
        );
    }

    /// The Mitz broker notifies a consent change of `bsn` for hospitals
    /// (`RPZAC104`), data category `GGC002`, held by us; waits until the
    /// consent view has it.
    fn notify_consent(&self, bsn: &str, permit: bool, date_time: &str) {
        self.notify_consent_for(bsn, "RPZAC104", permit, date_time);
    }

    /// [`Self::notify_consent`] for organisations of `provider_category`.
    fn notify_consent_for(
        &self,
        bsn: &str,
        provider_category: &str,
        permit: bool,
        date_time: &str,
    ) {
        let before = events(&self.agent.log(), "mitz.stored", &[]).len();
        let body = consent_notification(bsn, provider_category, permit, date_time);
        let resp = self
            .broker
            .post(self.setup.url("/mitz/fhir"))
            .header("Content-Type", FHIR_JSON)
            .header("Accept", FHIR_JSON)
            .send(body.as_slice())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "the broker's notification");
        wait_until(
            LIMIT,
            || events(&self.agent.log(), "mitz.stored", &[]).len() > before,
            || self.agent.log(),
        );
    }

    /// `POST /oauth/token` with `party`'s certificate: status and JSON.
    fn token_request(&self, party: &Party, body: &[u8]) -> (u16, Value) {
        token_request(&self.setup, party, body)
    }

    /// Client assertion claims of viewer `name` for this agent.
    fn assertion_claims(&self, name: &str) -> Value {
        self.viewer(name).assertion_claims(&self.setup)
    }

    /// A `client_credentials` token of viewer `name` with `scope`, the
    /// assertion signed with `alg`.
    fn token(&self, name: &str, alg: Alg, scope: &str) -> String {
        self.viewer(name).token(&self.setup, alg, scope)
    }

    /// A request as Zorgviewer sends it.
    fn request(&self, name: &str, token: &str, path: &str) -> Req {
        self.viewer(name).request(token, path)
    }

    /// Sends `req` and records the request id it was answered under.
    fn send(&self, req: &Req) -> Resp {
        let resp = self.viewer(&req.viewer).send(&self.setup, req);
        self.sent
            .borrow_mut()
            .push(resp.header("x-request-id").unwrap().to_string());
        resp
    }

    /// `GET path` as Zorgviewer sends it.
    fn get(&self, name: &str, token: &str, path: &str) -> Resp {
        self.send(&self.request(name, token, path))
    }

    /// A search followed through its `next` links: every entry of every page.
    fn search_all(&self, name: &str, token: &str, path: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut next = Some(path.to_string());
        let mut pages = 0;
        while let Some(path) = next.take() {
            let r = self.get(name, token, &path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let bundle = r.json();
            assert_eq!(bundle["type"], "searchset");
            entries.extend(bundle["entry"].as_array().cloned().unwrap_or_default());
            next = link(&bundle, "next").map(|url| {
                url.strip_prefix(&self.setup.url(""))
                    .unwrap_or_else(|| panic!("a next link elsewhere: {url}"))
                    .to_string()
            });
            pages += 1;
            assert!(pages < 100, "{path}: no end to the pages");
        }
        entries
    }

    /// Every audit record written so far.
    fn audit(&self) -> Vec<Value> {
        audit(&self.setup)
    }

    /// The one audit record of request `rid`.
    fn audit_of(&self, rid: &str) -> Value {
        audit_of(&self.setup, rid)
    }

    /// SHA-256 of viewer `name`'s certificate, as the audit trail names it.
    fn fingerprint(&self, name: &str) -> String {
        let leaf = &self.viewer(name).party.material.chain[0];
        np_agent::pki::peer_identity(leaf.as_ref())
            .unwrap()
            .fingerprint()
    }

    /// Fails when a BSN reached the daemon's log.
    fn assert_no_bsn_in_log(&self) {
        let log = self.agent.log();
        for bsn in [BSN_A, BSN_JSON, BSN_XML, BSN_UNKNOWN] {
            assert!(!log.contains(bsn), "a BSN reached the log");
        }
    }
}

/// A compact JWS signed with HMAC-SHA256, as the IG's sample is.
fn hs256(claims: &Value) -> String {
    let h = b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = b64::encode(claims.to_string().as_bytes());
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"zorgviewer-shared-secret"),
        format!("{h}.{p}").as_bytes(),
    );
    format!("{h}.{p}.{}", b64::encode(tag.as_ref()))
}

/// A Mitz consent notification (the fixture's shape) for `bsn` at our
/// URA: one Consent for `GGC002` and organisations of `provider_category`,
/// a permit or a deny as of `date_time`.
fn consent_notification(
    bsn: &str,
    provider_category: &str,
    permit: bool,
    date_time: &str,
) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(include_bytes!("fixtures/mitz/notification.json")).unwrap();
    v["id"] = json!(random::uuid_v4().unwrap());
    let entries = v["entry"].as_array_mut().unwrap();
    entries.remove(1);
    let consent = &mut entries[0]["resource"];
    consent["extension"][0]["valueCodeableConcept"]["coding"][0] = json!({
        "system": "http://fhir.nl/otv/CodeSystem/raadplegende-zorgaanbiedercategorie",
        "version": "3960100",
        "code": provider_category,
    });
    consent["dateTime"] = json!(date_time);
    consent["provision"]["type"] = json!(if permit { "permit" } else { "deny" });
    assert_eq!(entries[1]["resource"]["resourceType"], "Patient");
    entries[1]["resource"]["identifier"][0]["value"] = json!(bsn);
    assert_eq!(entries[2]["resource"]["resourceType"], "Organization");
    entries[2]["resource"]["identifier"][0]["value"] = json!(OUR_URA);
    serde_json::to_vec(&v).unwrap()
}

/// `resource` without the `Meta.source` extension, which must be there
/// exactly once naming `urn:oid:<NP_ORG_OID>`; `meta` goes when nothing
/// else was in it.
fn without_meta_source(mut resource: Value, what: &str) -> Value {
    let obj = resource.as_object_mut().unwrap();
    let meta = obj
        .get_mut("meta")
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{what}: no meta"));
    let list = meta
        .get_mut("extension")
        .and_then(Value::as_array_mut)
        .unwrap_or_else(|| panic!("{what}: no meta.extension"));
    let sources: Vec<Value> = list
        .iter()
        .filter(|e| e["url"] == META_SOURCE)
        .cloned()
        .collect();
    assert_eq!(
        sources,
        [json!({"url": META_SOURCE, "valueUri": format!("urn:oid:{OUR_OID}")})],
        "{what}: Meta.source"
    );
    list.retain(|e| e["url"] != META_SOURCE);
    if list.is_empty() {
        meta.remove("extension");
    }
    if meta.is_empty() {
        obj.remove("meta");
    }
    resource
}

/// Each returned resource is the published one, `Meta.source` aside.
fn assert_as_published(returned: &[Value], published: &BTreeMap<String, Value>, what: &str) {
    for r in returned {
        let key = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let bare = without_meta_source(r.clone(), &format!("{what}: {key}"));
        assert_eq!(
            Some(&bare),
            published.get(&key),
            "{what}: {key} is not the published resource"
        );
    }
}

/// Runs every BgZ query of patient `p` as viewer `name` and checks each
/// answer against the published record; also follows the blood pressures'
/// second page, and fetches the PDF in both forms.
fn assert_record_served(site: &Site, name: &str, token: &str, p: &str, bsn: &str, record: &Value) {
    let published = resources_of(record);
    for (query, want) in bgz_queries(p, bsn) {
        let r = site.get(name, token, &query);
        assert_eq!(r.status, 200, "{name} {query}: {}", r.text());
        assert_eq!(r.ids(), want, "{name} {query}");
        assert_as_published(&r.resources(), &published, &format!("{name} {query}"));
        if query.contains("_count=5") {
            let bundle = r.json();
            assert_eq!(bundle["total"], 6, "{query}");
            let next = link(&bundle, "next").expect("a second page of blood pressures");
            let path = next.strip_prefix(&site.setup.url("")).unwrap().to_string();
            let page = site.get(name, token, &path);
            assert_eq!(page.ids(), ids(p, &["Observation/bp-1"]), "{next}");
            assert!(link(&page.json(), "next").is_none());
        }
    }
    // The document: the PDF as its own bytes, and as a FHIR Binary.
    let bin = format!("/fhir/Binary/{p}-bin-letter");
    let raw = site.send(
        &site
            .request(name, token, &bin)
            .set("Accept", "application/pdf"),
    );
    assert_eq!(raw.status, 200, "{bin}: {}", raw.text());
    assert_eq!(raw.header("content-type"), Some("application/pdf"));
    assert_eq!(raw.body, PDF, "the published bytes, byte for byte");
    let published_b64 = published[&format!("Binary/{p}-bin-letter")]["content"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&raw.body),
        published_b64
    );
    let fhir = site.get(name, token, &bin);
    assert_eq!(fhir.status, 200, "{bin}: {}", fhir.text());
    assert!(
        fhir.header("content-type")
            .unwrap()
            .starts_with("application/fhir+json"),
        "{:?}",
        fhir.header("content-type")
    );
    assert_eq!(fhir.json()["resourceType"], "Binary");
    assert_as_published(&fhir.resources(), &published, &bin);
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// The read path of spec §2–§8 with consent changing under it: nothing
/// before a Mitz permit (the same answers as for an unknown patient), the
/// whole record after it, nothing after a newer deny; a `CONSENT=none`
/// partner reads without a permit; a withdrawn record is gone at once; every
/// request is one audit record, which `np-agent audit` lists.
#[test]
fn a_zorgviewer_reads_the_published_record_only_with_consent() {
    let site = Site::new(
        "zv-consent",
        &[
            ViewerSpec::new("zv", "55556666"),
            ViewerSpec {
                consent: Some("none"),
                ..ViewerSpec::new("zvopen", "55557777")
            },
        ],
    );
    let rec = record("a", BSN_A);
    site.publish(&["zv", "zvopen"], "r1", &rec, false);
    let zv = site.token("zv", Alg::Rs384, SCOPES);
    let open = site.token("zvopen", Alg::Es384, SCOPES);

    // Without consent: every query answers as for a patient never published.
    let unknown = |q: &str| {
        q.replace("a-pat", ID_UNKNOWN)
            .replace("a-gp", "zz-gp")
            .replace("a-spec", "zz-spec")
            .replace(BSN_A, BSN_UNKNOWN)
    };
    let mut withheld: Vec<(String, u16)> = Vec::new();
    for (query, _) in bgz_queries("a", BSN_A) {
        let r = site.get("zv", &zv, &query);
        let u = site.get("zv", &zv, &unknown(&query));
        if query.starts_with("/fhir/Patient/")
            || query.starts_with("/fhir/Practitioner/")
            || query.starts_with("/fhir/Specimen/")
        {
            r.assert_refused(404, "not-found", &query);
        } else {
            r.assert_empty_searchset(&query);
        }
        assert_eq!(
            (u.status, u.header("content-type")),
            (r.status, r.header("content-type")),
            "{query}"
        );
        let same = u.text().replace("zz-", "a-").replace(BSN_UNKNOWN, BSN_A);
        assert_eq!(
            same,
            r.text(),
            "{query}: told apart from an unknown patient"
        );
        // The unknown patient's request was never put to the consent check:
        // its record says so by having no decision, not "not-checked"; a
        // lookup by BSN names the patient all the same.
        let au = site.audit_of(u.header("x-request-id").unwrap());
        assert!(au.get("consent").is_none(), "{query}: {au}");
        if query.contains("identifier=") {
            assert_eq!(au["patient"], BSN_UNKNOWN, "{query}: {au}");
        }
        withheld.push((r.header("x-request-id").unwrap().to_string(), r.status));
    }
    for accept in ["application/pdf", FHIR_JSON] {
        let pdf = |id: &str| {
            site.send(
                &site
                    .request("zv", &zv, &format!("/fhir/Binary/{id}"))
                    .set("Accept", accept),
            )
        };
        let (r, u) = (pdf("a-bin-letter"), pdf("zz-bin-letter"));
        r.assert_refused(404, "not-found", "the PDF without consent");
        assert_eq!(u.text().replace("zz-", "a-"), r.text(), "{accept}");
    }
    site.assert_no_bsn_in_log();

    // The partner configured without a consent check reads the record now,
    // in XML as in JSON.
    assert_record_served(&site, "zvopen", &open, "a", BSN_A, &rec);
    let episodes = "/fhir/EpisodeOfCare?patient=a-pat&_include=Condition:diagnosis";
    let json_answer = site.get("zvopen", &open, episodes).json();
    let xml = site.send(
        &site
            .request("zvopen", &open, episodes)
            .set("Accept", "application/fhir+xml"),
    );
    assert_eq!(xml.status, 200, "{}", xml.text());
    assert!(
        xml.header("content-type")
            .unwrap()
            .starts_with("application/fhir+xml")
    );
    let from_xml = xml_to_json(&xml.body, FhirVersion::Stu3, &Limits::DEFAULT).unwrap();
    assert_eq!(
        from_xml, json_answer,
        "the XML answer says what the JSON one says"
    );

    // A permit for pharmacies (RPZAC005) is not one for hospitals.
    site.notify_consent_for(BSN_A, "RPZAC005", true, "2026-01-09T10:00:00.0000000Z");
    let lookup = format!("/fhir/Patient?identifier={BSN_A}");
    site.get("zv", &zv, &lookup)
        .assert_empty_searchset("a permit for another provider category");

    // The broker brings a permit: the same queries return the record.
    site.notify_consent(BSN_A, true, "2026-01-10T10:00:00.0000000Z");
    assert_record_served(&site, "zv", &zv, "a", BSN_A, &rec);
    // X-ZV-Context signed with the RS384 key of the JWKS is as good.
    let rs384 = context_jwt(site.viewer("zv").party.key(Alg::Rs384), &context_claims());
    let r = site.send(&site.request("zv", &zv, &lookup).set("X-ZV-Context", rs384));
    assert_eq!(r.ids(), ids("a", &["Patient/pat"]));
    assert_eq!(
        site.audit_of(r.header("x-request-id").unwrap())["context_verified"],
        true
    );

    // The request ids: echoed when sent, generated and echoed when not;
    // the correlation id echoed.
    let req = site.request("zv", &zv, &lookup);
    let r = site.send(&req);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some(req.header("x-request-id")));
    assert_eq!(
        r.header("x-correlation-id"),
        Some(site.viewer("zv").session.as_str())
    );
    let echoed = r.header("x-request-id").unwrap().to_string();
    let bare = site.send(&req.clone().without("X-Request-Id").without("AORTA-ID"));
    assert_eq!(bare.status, 200, "{}", bare.text());
    let generated = bare.header("x-request-id").unwrap().to_string();
    assert!(
        !generated.is_empty() && generated != echoed,
        "a fresh X-Request-Id: {generated}"
    );
    assert_eq!(site.audit_of(&generated)["request_id"], generated);
    let noted = events(
        &site.agent.log(),
        "zorgviewer.request_id_generated",
        &[("partner", "zv")],
    );
    assert_eq!(
        noted.iter().map(|l| l.get("rid")).collect::<Vec<_>>(),
        [Some(generated.as_str())],
        "the generated id is logged as generated, and only that one"
    );
    // Without X-ZV-Context the headers are taken as sent, unverified.
    let unsigned = site.send(
        &req.clone()
            .without("X-ZV-Context")
            .set("X-Request-Id", nano_id()),
    );
    assert_eq!(unsigned.ids(), ids("a", &["Patient/pat"]));

    // A served search's audit record: the whole request context.
    let rid = req.header("x-request-id");
    let a = site.audit_of(rid);
    let aorta = req.header("aorta-id");
    let want = json!({
        "action": "zorgviewer.search", "outcome": "success", "partner": "zv",
        "request_id": rid, "correlation_id": site.viewer("zv").session,
        "aorta_id": aorta, "cert_sha256": site.fingerprint("zv"),
        "who_org": format!("urn:oid:{}", USER.org), "who_ura": USER.ura,
        "who_system": "zv-client", "who_user": USER.id, "who_role": USER.role,
        "context_verified": true, "patient": BSN_A, "query": lookup,
        "consent": "permit", "consent_source": "view", "status": 200,
        "results": 1, "resources": ["Patient/a-pat"],
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&a[k], v, "audit {k}: {a}");
    }
    let a = site.audit_of(unsigned.header("x-request-id").unwrap());
    assert_eq!(
        (&a["context_verified"], &a["outcome"]),
        (&json!(false), &json!("success")),
        "{a}"
    );
    // The withheld requests: refused, answered 200 or 404, with the consent decision.
    for (rid, status) in &withheld {
        let a = site.audit_of(rid);
        assert_eq!(
            (&a["outcome"], &a["status"]),
            (&json!("refused"), &json!(status)),
            "{a}"
        );
        assert_eq!(a["consent"], "not-applicable", "{a}");
        assert_eq!(a["patient"], BSN_A, "{a}");
        assert!(a["results"] == 0 && a.get("resources").is_none(), "{a}");
    }
    let pdf_reads: Vec<Value> = site
        .audit()
        .into_iter()
        .filter(|r| r["query"] == "/fhir/Binary/a-bin-letter" && r["partner"] == "zv")
        .collect();
    assert!(
        pdf_reads.iter().any(|r| r["outcome"] == "success"
            && r["action"] == "zorgviewer.read"
            && r["resources"] == json!(["Binary/a-bin-letter"])),
        "{pdf_reads:?}"
    );

    // A newer deny withholds the record again, at once.
    let doc = "/fhir/DocumentReference?patient=a-pat&status=current";
    site.notify_consent(BSN_A, false, "2026-01-11T10:00:00.0000000Z");
    let r = site.get("zv", &zv, &lookup);
    r.assert_empty_searchset("after a deny");
    assert_eq!(
        site.audit_of(r.header("x-request-id").unwrap())["consent"],
        "deny"
    );
    site.get("zv", &zv, doc).assert_empty_searchset(doc);
    site.get("zv", &zv, "/fhir/Binary/a-bin-letter")
        .assert_refused(404, "not-found", "the PDF after a deny");
    // An older permit arriving late changes nothing.
    site.notify_consent(BSN_A, true, "2026-01-10T12:00:00.0000000Z");
    site.get("zv", &zv, &lookup)
        .assert_empty_searchset("a stale permit");

    // The partner without a consent check still reads; a withdrawal ends that at once.
    let r = site.get("zvopen", &open, doc);
    assert_eq!(r.ids(), ids("a", &["DocumentReference/doc-letter"]));
    assert_eq!(
        site.audit_of(r.header("x-request-id").unwrap())["consent"],
        "not-checked"
    );
    site.withdraw("zvopen", "r1");
    site.get("zvopen", &open, &lookup)
        .assert_empty_searchset("withdrawn");
    site.get("zvopen", &open, doc)
        .assert_empty_searchset("withdrawn");
    for read in [
        "/fhir/Patient/a-pat",
        "/fhir/Binary/a-bin-letter",
        "/fhir/Specimen/a-spec",
    ] {
        site.get("zvopen", &open, read)
            .assert_refused(404, "not-found", read);
    }

    // One audit record per request, under the id it was answered with.
    let audit = site.audit();
    let sent = site.sent.borrow();
    for rid in sent.iter() {
        let n = audit.iter().filter(|r| r["request_id"] == *rid).count();
        assert_eq!(n, 1, "audit records of request {rid}");
    }
    let zv_records = audit
        .iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("zorgviewer."))
        })
        .count();
    assert_eq!(
        zv_records,
        sent.len(),
        "no audit record of a request not sent"
    );

    // `np-agent audit --patient` lists the Zorgviewer reads of the patient.
    let out = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["audit", "--env-file"])
        .arg(site.setup.env_file())
        .args(["--patient", BSN_A, "--json"])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let served: Vec<&Value> = listed
        .iter()
        .filter(|r| r["action"] == "zorgviewer.search" || r["action"] == "zorgviewer.read")
        .collect();
    let in_trail = audit
        .iter()
        .filter(|r| {
            r["patient"] == BSN_A
                && (r["action"] == "zorgviewer.search" || r["action"] == "zorgviewer.read")
        })
        .count();
    assert_eq!(
        served.len(),
        in_trail,
        "every read of the patient is listed"
    );
    assert!(
        served
            .iter()
            .any(|r| r["partner"] == "zvopen" && r["consent"] == "not-checked")
    );
    assert!(
        served
            .iter()
            .any(|r| r["partner"] == "zv" && r["consent"] == "permit")
    );
    assert!(
        served
            .iter()
            .any(|r| r["partner"] == "zv" && r["consent"] == "deny")
    );
    assert!(
        listed.iter().all(|r| r["patient"] == BSN_A),
        "only this patient"
    );
    site.assert_no_bsn_in_log();
}

/// Each refusal with its exact status and OperationOutcome or OAuth error,
/// and every refused FHIR request audited.
#[test]
fn every_refusal_has_its_status() {
    let site = Site::new(
        "zv-refusals",
        &[
            ViewerSpec::new("zv", "55556666"),
            ViewerSpec {
                allow_from: Some("10.0.0.0/8"),
                ..ViewerSpec::new("zvfar", "55558888")
            },
        ],
    );
    let rec = record("a", BSN_A);
    site.publish(&["zv"], "r1", &rec, false);
    let zv = site.viewer("zv");

    // The token endpoint (OAuth errors).
    let claims = site.assertion_claims("zv");
    let used = sign(zv.party.key(Alg::Es384), &claims);
    assert_eq!(
        site.token_request(&zv.party, &cc_form(&used, SCOPES)).0,
        200
    );
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = site.assertion_claims("zv");
        edit(&mut c);
        sign(zv.party.key(Alg::Es384), &c)
    };
    let token_cases: Vec<(&str, &Party, String, u16, &str)> = vec![
        (
            "no subject_organization_id",
            &zv.party,
            with(&|c| {
                c.as_object_mut().unwrap().remove("subject_organization_id");
            }),
            401,
            "invalid_client",
        ),
        (
            "an HS256 assertion",
            &zv.party,
            hs256(&site.assertion_claims("zv")),
            401,
            "invalid_client",
        ),
        (
            "a wrong aud",
            &zv.party,
            with(&|c| c["aud"] = json!(site.setup.url("/fhir"))),
            401,
            "invalid_client",
        ),
        (
            "a replayed jti",
            &zv.party,
            used.clone(),
            401,
            "invalid_client",
        ),
        (
            "a twiin partner",
            &site.twiin,
            with(&|_| {}),
            403,
            "unauthorized_client",
        ),
        (
            "a certificate from outside ALLOW_FROM",
            &site.viewer("zvfar").party,
            sign(
                site.viewer("zvfar").party.key(Alg::Es384),
                &site.assertion_claims("zvfar"),
            ),
            401,
            "invalid_client",
        ),
    ];
    for (what, party, assertion, status, error) in &token_cases {
        let (got, body) = site.token_request(party, &cc_form(assertion, SCOPES));
        assert_eq!(
            (got, body["error"].as_str()),
            (*status, Some(*error)),
            "{what}: {body}"
        );
    }

    // The FHIR side (OperationOutcomes), with a valid token.
    let token = site.token("zv", Alg::Es384, SCOPES);
    let narrow = site.token(
        "zv",
        Alg::Es384,
        "user/Patient.read user/Observation.search",
    );
    let lookup = format!("/fhir/Patient?identifier={BSN_A}");
    let req = || site.request("zv", &token, &lookup);
    let other_org = "2.16.528.1.1007.3.3.99887766";
    let signed = |edit: &dyn Fn(&mut Value)| {
        let mut c = context_claims();
        edit(&mut c);
        context_jwt(zv.party.key(Alg::Es384), &c)
    };
    let long_aorta = format!(
        "rid:{};cid:{};usr:{};rol:{};org:{}",
        "r".repeat(70),
        zv.session,
        USER.id,
        USER.role,
        USER.org
    );
    let foreign_key = SigningKey::from_pkcs8_pem(
        &np_agent::jose::generate_pkcs8_pem(Alg::Es384).unwrap(),
        Alg::Es384,
        None,
    )
    .unwrap();
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        (
            "an HS256 X-ZV-Context",
            req().set("X-ZV-Context", hs256(&context_claims())),
            403,
            "security",
        ),
        (
            "an X-ZV-Context signed with a key not in the partner's JWKS",
            req().set("X-ZV-Context", context_jwt(&foreign_key, &context_claims())),
            403,
            "security",
        ),
        (
            "an X-ZV-Context issued 10 minutes ago",
            req().set(
                "X-ZV-Context",
                signed(&|c| {
                    c["iat"] = json!(now_unix() - 600);
                    c["exp"] = json!(now_unix() + 60);
                }),
            ),
            403,
            "security",
        ),
        (
            "X-ZV-Context naming another user than X-ZV-Subject-Id",
            req().set(
                "X-ZV-Context",
                signed(&|c| c["subject_id"] = json!("someone-else")),
            ),
            403,
            "forbidden",
        ),
        (
            "X-ZV-Subject-Role disagreeing with X-ZV-Context",
            req().set("X-ZV-Subject-Role", "62247001"),
            403,
            "forbidden",
        ),
        (
            "context and headers naming another organisation than the token",
            req()
                .set(
                    "X-ZV-Context",
                    signed(&|c| c["subject_organization_id"] = json!(other_org)),
                )
                .set("X-ZV-Subject-Organization-Id", other_org)
                .without("X-ZV-Subject-Organization-Ura")
                .without("AORTA-ID"),
            403,
            "forbidden",
        ),
        (
            "an AORTA-ID over 128 characters",
            req().set("AORTA-ID", long_aorta),
            400,
            "value",
        ),
        (
            "a search naming no patient",
            site.request("zv", &token, "/fhir/Observation?category=laboratory"),
            400,
            "required",
        ),
        (
            "a scope without the type",
            site.request("zv", &narrow, "/fhir/Condition?patient=a-pat"),
            403,
            "forbidden",
        ),
        (
            "a search scope asked to read",
            site.request("zv", &narrow, "/fhir/Observation/a-lab-hb"),
            403,
            "forbidden",
        ),
        (
            "a Task from a zorgviewer token",
            Req {
                method: "POST",
                ..site.request("zv", &token, "/fhir/Task")
            },
            403,
            "forbidden",
        ),
    ];
    for (what, req, status, code) in &cases {
        let r = site.send(req);
        r.assert_refused(*status, code, what);
        assert_eq!(
            r.header("x-request-id"),
            Some(req.header("x-request-id")),
            "{what}: the request id is echoed on a refusal"
        );
        assert_eq!(
            r.header("x-correlation-id"),
            Some(zv.session.as_str()),
            "{what}: the correlation id is echoed on a refusal"
        );
        if what.contains("scope") {
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer error=\"insufficient_scope\""),
                "{what}"
            );
        }
        let a = site.audit_of(req.header("x-request-id"));
        assert_eq!(
            (&a["outcome"], &a["status"], &a["partner"]),
            (&json!("refused"), &json!(*status), &json!("zv")),
            "{what}: {a}"
        );
        assert_eq!(a["cert_sha256"], site.fingerprint("zv"), "{what}: {a}");
        assert!(a.get("resources").is_none(), "{what}: {a}");
    }
    // A token that is not one of ours: 401, the ids still echoed.
    let req = site.request("zv", "bm90LWEtdG9rZW4", &lookup);
    let r = site.send(&req);
    r.assert_refused(401, "login", "an unknown token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(r.header("x-request-id"), Some(req.header("x-request-id")));
    assert_eq!(r.header("x-correlation-id"), Some(zv.session.as_str()));

    // The narrow token still does what it covers.
    let r = site.send(&site.request("zv", &narrow, &lookup));
    r.assert_empty_searchset("no consent yet");

    // An _include reaches no type the scope leaves out.
    let episodes = site.token(
        "zv",
        Alg::Es384,
        "user/Patient.read user/EpisodeOfCare.search",
    );
    site.notify_consent(BSN_A, true, "2026-01-10T10:00:00Z");
    let r = site.get(
        "zv",
        &episodes,
        "/fhir/EpisodeOfCare?patient=a-pat&_include=Condition:diagnosis",
    );
    assert_eq!(
        r.ids(),
        ids("a", &["EpisodeOfCare/eoc-1", "EpisodeOfCare/eoc-2"]),
        "no Conditions through a token without a Condition scope"
    );

    // A certificate from an address ALLOW_FROM does not list.
    let far = site.viewer("zvfar");
    let r = Resp::of(
        far.http
            .get(site.setup.url(&lookup))
            .header("Accept", FHIR_JSON)
            .call()
            .unwrap(),
    );
    r.assert_refused(403, "forbidden", "a certificate from outside ALLOW_FROM");
    site.assert_no_bsn_in_log();
}

/// A record of 38 resources of 18 types, published once as JSON and once as
/// XML (two patients), is served back complete, resource for resource, also
/// through pages of three.
#[test]
fn a_large_record_in_json_and_in_xml_is_served_back_complete() {
    let site = Site::new(
        "zv-large",
        &[ViewerSpec {
            consent: Some("none"),
            ..ViewerSpec::new("zv", "55556666")
        }],
    );
    let token = site.token("zv", Alg::Es384, "user/*.read");
    for (p, bsn, xml) in [("j", BSN_JSON, false), ("x", BSN_XML, true)] {
        let rec = record(p, bsn);
        let published = resources_of(&rec);
        let types: BTreeSet<&str> = published
            .keys()
            .map(|k| k.split_once('/').unwrap().0)
            .collect();
        assert!(published.len() >= 30 && types.len() >= 10, "{types:?}");
        site.publish(&["zv"], &format!("big-{p}"), &rec, xml);
        let what = if xml { "XML" } else { "JSON" };

        // Every type by patient, in pages of three; what no search by
        // patient finds is read by id.
        let pid = format!("{p}-pat");
        let by_patient: BTreeMap<&str, &str> = [
            ("Patient", "_id"),
            ("Coverage", "patient"),
            ("Condition", "patient"),
            ("EpisodeOfCare", "patient"),
            ("Observation", "patient"),
            ("Specimen", "patient"),
            ("Encounter", "patient"),
            ("Composition", "patient"),
            ("DocumentReference", "patient"),
            ("AllergyIntolerance", "patient"),
            ("MedicationStatement", "patient"),
            ("Procedure", "patient"),
            ("Immunization", "patient"),
            ("Flag", "patient"),
        ]
        .into();
        let mut served: BTreeMap<String, Value> = BTreeMap::new();
        for t in &types {
            let found: Vec<Value> = match by_patient.get(t) {
                Some(param) => site
                    .search_all("zv", &token, &format!("/fhir/{t}?{param}={pid}&_count=3"))
                    .into_iter()
                    .map(|e| e["resource"].clone())
                    .collect(),
                None => published
                    .keys()
                    .filter(|k| k.starts_with(&format!("{t}/")))
                    .map(|k| {
                        let r = site.get("zv", &token, &format!("/fhir/{k}"));
                        assert_eq!(r.status, 200, "{what} {k}: {}", r.text());
                        r.json()
                    })
                    .collect(),
            };
            for r in found {
                let key = format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                );
                let bare = without_meta_source(r, &format!("{what} {key}"));
                assert!(
                    served.insert(key.clone(), bare).is_none(),
                    "{what}: {key} served twice"
                );
            }
        }
        let missing: Vec<&String> = published
            .keys()
            .filter(|k| !served.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "{what}: not served: {missing:?}");
        for (key, resource) in &published {
            assert_eq!(&served[key], resource, "{what}: {key}");
        }
        assert_eq!(served.len(), published.len());
    }
    site.assert_no_bsn_in_log();
}
