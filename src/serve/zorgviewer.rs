//! Serving a Zorgviewer partner: the records the hospital published to it,
//! one patient at a time, only with consent (DESIGN.md "Zorgviewer",
//! "Consent at release"; spec zorgviewer.md §6–§8).
//!
//! The same reads and searches as the Twiin side ([`super::Served`]), over a
//! different scope: not the case of an authorization base, but the patient a
//! request names, found in the published records ([`RecordStore`]).
//!
//! # Order of checks (the first failure answers)
//! 1. the request context (`X-ZV-*`, checked by the router) → 400/403; a
//!    Task write (refused by the router) → 403;
//! 2. method `GET`/`HEAD` → 405; a Zorgviewer token, not expired → 403/401;
//! 3. query, `_format`, acceptable format, path → 400/406;
//! 4. the token's scope covers the type and interaction → 403;
//! 5. the patient: a search names it (`patient`, `subject`, or for `Patient`
//!    `identifier`/`_id`; a page request: the search its sealed link
//!    continues), a read is of a resource some patient's record holds
//!    → else 400 (a search that names no patient; a page link that does
//!    not open, 410 when it expired);
//! 6. consent (`CONSENT=mitz`): only a permit releases. A patient without a
//!    published record, without consent, or whose check could not be made
//!    gets the same answer: a search 200 with an empty `searchset`, a read
//!    404. Never a 5xx for a consent outcome. Only the audit record tells
//!    them apart: its decision, and for a check that could not be made the
//!    reason the check gave (it names what failed, never the patient).
//!
//! An `_include` adds only resources of types the token's scope lets the
//! partner search or read: a token without `Condition` gets the episodes of
//! `EpisodeOfCare?…&_include=Condition:diagnosis`, not their Conditions.
//!
//! Every served resource carries `Meta.source` = `urn:oid:<NP_ORG_OID>`.
//! Every request is one audit record (`zorgviewer.read`, `.search`,
//! `.request`) with the request context, the consent decision and the
//! `Type/id` of each resource returned.

use serde_json::{Value, json};

use super::page::Bound;
use super::query::{Op, Param};
use super::view::CaseView;
use super::wire::IssueType;
use super::{
    Action, Checked, Cx, Family, PageKey, Prepared, RequestFacts, Route, Scope, ServeRequest,
    Served, Who, method_allowed,
};
use crate::audit::{AuditLog, ConsentDecision, ConsentSource};
use crate::config::Consent;
use crate::consent::{Answer, ConsentCheck, DATA_CATEGORY, Question, Source};
use crate::fhir::Refusal;
use crate::http::Response;
use crate::ids::{BSN_SYSTEM, Bsn};
use crate::oauth::grants::Grant;
use crate::oauth::scope::Interaction;
use crate::records::RecordStore;

/// The `Meta.source` extension (FHIR R4's element, as an STU3 extension).
pub const META_SOURCE_URL: &str =
    "http://hl7.org/fhir/4.0/StructureDefinition/extension-Meta.source";

/// What serving a Zorgviewer partner needs.
pub struct ZorgviewerServe<'a> {
    pub records: &'a RecordStore,
    pub consent: &'a dyn ConsentCheck,
    pub audit: &'a AuditLog,
    pub partner: &'a str,
    /// `CONSENT`: `mitz` asks [`Self::consent`], `none` serves without.
    pub consent_mode: Consent,
    /// `PROVIDER_CATEGORY`: the Mitz category of the requesting organisations.
    pub provider_category: &'a str,
    /// `REQUESTER_CATEGORY`: their zorgaanbiedercategorie, for the closed question.
    pub requester_category: Option<&'a str>,
    /// Our URA: the holder in the consent question.
    pub holder_ura: &'a str,
    /// `urn:oid:<NP_ORG_OID>`.
    pub meta_source: &'a str,
    /// Our public FHIR base, for `fullUrl`s and links.
    pub base_url: &'a str,
}

/// Answers one FHIR request of a Zorgviewer partner. `facts` is what the
/// router knows of the request for its audit record (of a refused request
/// context: the certificate, the query and a valid correlation id);
/// `verdict` its refusal of the request before serving (the request
/// context, a Task), audited and answered here like every other refusal.
pub fn handle(
    zv: &ZorgviewerServe<'_>,
    grant: &Grant,
    facts: &RequestFacts<'_>,
    verdict: Result<(), Refusal>,
    req: &ServeRequest<'_>,
    now: i64,
    key: Option<&PageKey>,
) -> Response {
    let pre = Prepared::new(req);
    // Not a read or a search whatever the path says (a POSTed Task).
    let action = match method_allowed(req) {
        Ok(()) => pre.action(),
        Err(_) => Action::Request,
    };
    let who = Who {
        family: Family::Zorgviewer,
        partner: zv.partner,
        org: grant.requesting_org_claim(),
        system: grant.client_id(),
        patient: None,
        label: "-".into(),
        context: Some(facts),
    };
    let mut cx = Cx::new(who, req, zv.audit, action, &pre);
    cx.consent_expected = zv.consent_mode == Consent::Mitz;
    if let Err(r) = verdict {
        return cx.refuse(r);
    }
    if let Err(r) = method_allowed(req) {
        return cx.refuse(r);
    }
    let Some(access) = grant.zorgviewer_access() else {
        return cx.refuse(Refusal::forbidden(
            "this access token is not a Zorgviewer token",
        ));
    };
    if grant.expires_at() <= now {
        return cx.refuse(
            Refusal::new(401, IssueType::Security, "the access token has expired")
                .header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
        );
    }
    let checked = match pre.check() {
        Ok(c) => c,
        Err(r) => return cx.refuse(r),
    };
    let (resource_type, interaction) = match &checked.route {
        Route::Read { resource_type, .. } => (resource_type.as_str(), Interaction::Read),
        Route::Search { resource_type, .. } => (resource_type.as_str(), Interaction::Search),
    };
    if !access.allows(resource_type, interaction) {
        return cx.refuse(
            Refusal::forbidden("the access token's scope does not cover this request")
                .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
        );
    }
    let bound = page_bound(zv, grant);
    let (candidates, named_bsn) = match patients(zv, &checked, &bound, key, now) {
        Ok(c) => c,
        Err(r) => return cx.refuse(r),
    };
    // A lookup by BSN is about that patient, found or not: the audit says so.
    if let Some(bsn) = &named_bsn {
        cx.who_patient(bsn);
    }
    let self_url = search_self_url(zv.base_url, &checked, pre.format_param.as_deref());
    if candidates.is_empty() {
        return cx.nothing(
            self_url,
            "no published record of this patient",
            &checked.route,
        );
    }

    // The first candidate the consent check releases (a read of a shared
    // resource, a Practitioner say, may be held by several patients' records).
    let mut released = None;
    let mut withheld = String::new();
    for (bsn, patient_id) in candidates {
        cx.who_patient(&bsn);
        let answer = match zv.consent_mode {
            Consent::None => None,
            Consent::Mitz => Some(ask(zv, grant, facts, &bsn, req.request_id, now)),
        };
        cx.consent = answer.as_ref().map(|(a, s)| (decision(a), source(*s)));
        if answer.as_ref().is_none_or(|(a, _)| a.permits()) {
            released = Some((bsn, patient_id));
            break;
        }
        withheld = match &answer {
            Some((Answer::Unavailable(why), _)) => {
                log::warn!(
                    "event=zorgviewer.consent_unavailable rid={} partner={} error={}",
                    crate::ops::logging::Rid(req.request_id),
                    zv.partner,
                    crate::ops::logging::Q(why)
                );
                // The audit record says why (the text names no patient).
                format!("the consent check could not be made: {why}")
            }
            _ => "no consent for this patient".to_string(),
        };
    }
    let Some((bsn, patient_id)) = released else {
        return cx.nothing(self_url, &withheld, &checked.route);
    };

    let records = match zv.records.records_of_patient(zv.partner, &bsn) {
        Ok(r) => r,
        Err(e) => {
            return cx.fail(
                Refusal::exception("the published records cannot be read"),
                &e.to_string(),
            );
        }
    };
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| r.patient_id == patient_id)
        .collect();
    if records.is_empty() {
        return cx.nothing(self_url, "the record was withdrawn", &checked.route);
    }
    let bundles: Vec<&Value> = records.iter().map(|r| r.bundle.as_ref()).collect();
    let view = match CaseView::build_all(&bundles, bsn.as_str()) {
        Ok(v) => v,
        Err(e) => {
            return cx.fail(
                Refusal::exception("the published record cannot be served"),
                &e.to_string(),
            );
        }
    };
    let versions: Vec<(String, u32)> = records
        .iter()
        .map(|r| (r.record_id.clone(), r.version))
        .collect();
    let scope = Scope {
        bound,
        bsn: bsn.as_str(),
        version: version_of(&versions),
    };
    let source = zv.meta_source;
    let decorate = move |resource: &mut Value| add_meta_source(resource, source);
    let may_include = |resource_type: &str| access.allows(resource_type, Interaction::Search);
    let served = Served {
        view: &view,
        scope: &scope,
        key,
        base_url: zv.base_url,
        now,
        format_param: pre.format_param.as_deref(),
        decorate: Some(&decorate),
        may_include: Some(&may_include),
        outside: "not found",
    };
    served.answer(&mut cx, checked)
}

/// The consent question for this request: the requesting organisation from
/// the token, its URA, the user and role from the request context.
fn ask(
    zv: &ZorgviewerServe<'_>,
    grant: &Grant,
    facts: &RequestFacts<'_>,
    bsn: &Bsn,
    rid: &str,
    now: i64,
) -> (Answer, Source) {
    let requester = grant
        .zorgviewer_access()
        .map(|a| a.subject_organization_id().as_str().to_string())
        .unwrap_or_default();
    zv.consent.ask(
        &Question {
            patient: bsn,
            holder_ura: zv.holder_ura,
            data_category: DATA_CATEGORY,
            provider_category: zv.provider_category,
            requester_category: zv.requester_category,
            requester: &requester,
            requester_ura: facts.organization_ura,
            requester_role: facts.role,
            requester_user: facts.user,
            request_id: Some(rid),
        },
        now,
    )
}

fn decision(answer: &Answer) -> ConsentDecision {
    match answer {
        Answer::Permit => ConsentDecision::Permit,
        Answer::Deny => ConsentDecision::Deny,
        Answer::NotApplicable => ConsentDecision::NotApplicable,
        Answer::Unavailable(_) => ConsentDecision::Unavailable,
    }
}

fn source(source: Source) -> ConsentSource {
    match source {
        Source::View => ConsentSource::View,
        Source::ClosedQuestion => ConsentSource::ClosedQuestion,
    }
}

/// What the page links of a Zorgviewer partner are sealed to: the partner
/// and its client. Not the patient: a page request names none, so the
/// patient comes out of the sealed search, and its record and consent are
/// looked up again for every page.
fn page_bound<'a>(zv: &ZorgviewerServe<'a>, grant: &'a Grant) -> Bound<'a> {
    Bound {
        partner: zv.partner,
        case_id: PAGE_SCOPE,
        authorization_base: grant.client_id(),
    }
}

/// The `case_id` of [`page_bound`].
const PAGE_SCOPE: &str = "zorgviewer";

/// The patients a request is about, as (BSN, `Patient.id`): at most one for
/// a search (a page request: the one of the search it continues); for a
/// read, every patient whose record holds the resource. None found: empty.
/// A search that names no patient: 400; a page link that does not open:
/// its 400/410.
fn patients(
    zv: &ZorgviewerServe<'_>,
    checked: &Checked,
    bound: &Bound<'_>,
    key: Option<&PageKey>,
    now: i64,
) -> Result<Candidates, Refusal> {
    let by_id = |id: &str| {
        zv.records
            .patient_by_id(zv.partner, id)
            .map(|bsn| vec![(bsn, id.to_string())])
            .unwrap_or_default()
    };
    match &checked.route {
        Route::Read { resource_type, id } if resource_type == "Patient" => Ok((by_id(id), None)),
        Route::Read { resource_type, id } => Ok((
            zv.records.patients_holding(zv.partner, resource_type, id),
            None,
        )),
        Route::Search { resource_type, op } => {
            let continued = match checked.params.as_slice() {
                [(name, token)] if name == "_page" => {
                    let opened = match key {
                        Some(key) => super::page::open(key, bound, token, now),
                        None => Err(super::page::PageError::Unavailable),
                    };
                    Some(opened.map_err(super::page_refusal)?.q)
                }
                _ => None,
            };
            let params = continued.as_deref().unwrap_or(&checked.params);
            match named_patient(resource_type, *op, params)? {
                Named::Id(id) => Ok((by_id(&id), None)),
                Named::Bsn(bsn) => Ok((
                    zv.records
                        .patient_by_bsn(zv.partner, &bsn)
                        .and_then(|p| p.resource_ids.into_iter().next().map(|id| (p.bsn, id)))
                        .into_iter()
                        .collect(),
                    Some(bsn),
                )),
                Named::Unknown => Ok((Vec::new(), None)),
            }
        }
    }
}

/// The patients a request may be about, as (BSN, `Patient.id`), and the
/// BSN it named when it looked a patient up by BSN.
type Candidates = (Vec<(Bsn, String)>, Option<Bsn>);

/// How a search names its patient.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    Id(String),
    Bsn(Bsn),
    /// Named in a form no published patient can have (not a BSN, not an id).
    Unknown,
}

/// The patient a search names: `patient`/`subject` (`<id>`, `Patient/<id>`
/// or a URL ending in it), or for `Patient` its `_id` or `identifier`
/// (`[<BSN system>|]<BSN>`). The search itself still checks the rest; this
/// only picks the scope.
fn named_patient(resource_type: &str, op: Op, params: &[Param]) -> Result<Named, Refusal> {
    let first = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let missing = || {
        Refusal::new(
            400,
            IssueType::Required,
            "a search must name its patient: patient=, subject= or beneficiary= (Patient: identifier= or _id=)",
        )
    };
    if resource_type == "Patient" && op == Op::Search {
        if let Some(id) = first("_id") {
            return Ok(single(id).map_or(Named::Unknown, |id| Named::Id(id.into())));
        }
        let value = first("identifier").ok_or_else(missing)?;
        let Some(value) = single(value) else {
            return Ok(Named::Unknown);
        };
        let number = match value.split_once('|') {
            Some((system, number)) if system.is_empty() || system == BSN_SYSTEM => number,
            Some(_) => return Ok(Named::Unknown),
            None => value,
        };
        return Ok(Bsn::parse(number).map_or(Named::Unknown, Named::Bsn));
    }
    let reference = first("patient")
        .or_else(|| first("subject"))
        .or_else(|| first("beneficiary"))
        .ok_or_else(missing)?;
    let Some(reference) = single(reference) else {
        return Ok(Named::Unknown);
    };
    let id = match super::view::type_and_id(reference) {
        Some(("Patient", id)) => id,
        Some(_) => return Ok(Named::Unknown),
        None if super::query::is_id(reference) => reference,
        None => return Ok(Named::Unknown),
    };
    Ok(Named::Id(id.to_string()))
}

/// One value (a comma means several patients: none of them is the scope).
fn single(value: &str) -> Option<&str> {
    (!value.is_empty() && !value.contains(',')).then_some(value)
}

/// Adds (or replaces) `Meta.source` on a resource.
pub fn add_meta_source(resource: &mut Value, source: &str) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let extensions = meta.entry("extension").or_insert_with(|| json!([]));
    let Some(list) = extensions.as_array_mut() else {
        return;
    };
    list.retain(|e| e.get("url").and_then(Value::as_str) != Some(META_SOURCE_URL));
    list.push(json!({"url": META_SOURCE_URL, "valueUri": source}));
}

/// One number for the versions of the records a view is built from: a page
/// link made before any of them changed does not open after.
fn version_of(records: &[(String, u32)]) -> u32 {
    let mut input = Vec::new();
    for (id, v) in records {
        input.extend_from_slice(id.as_bytes());
        input.push(0);
        input.extend_from_slice(&v.to_be_bytes());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The `self` link of an empty searchset: the search as asked.
fn search_self_url(base_url: &str, checked: &Checked, format: Option<&str>) -> Option<String> {
    let Route::Search { resource_type, op } = &checked.route else {
        return None;
    };
    let path = match op {
        Op::Search => format!("/{resource_type}"),
        Op::LastN => format!("/{resource_type}/$lastn"),
    };
    let mut query = checked.params.clone();
    if let Some(f) = format {
        query.push(("_format".into(), f.into()));
    }
    let mut url = format!("{}{path}", base_url.trim_end_matches('/'));
    if !query.is_empty() {
        url.push('?');
        url.push_str(&super::query::encode_query(&query));
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<Param> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_search_names_its_patient() {
        let bsn = Bsn::parse("999999151").unwrap();
        for (t, params, named) in [
            (
                "Patient",
                p(&[("identifier", "999999151")]),
                Named::Bsn(bsn.clone()),
            ),
            (
                "Patient",
                p(&[("identifier", &format!("{BSN_SYSTEM}|999999151"))]),
                Named::Bsn(bsn.clone()),
            ),
            (
                "Patient",
                p(&[("identifier", "|999999151")]),
                Named::Bsn(bsn.clone()),
            ),
            (
                "Patient",
                p(&[("identifier", "http://other|999999151")]),
                Named::Unknown,
            ),
            ("Patient", p(&[("identifier", "123")]), Named::Unknown),
            ("Patient", p(&[("_id", "pat-1")]), Named::Id("pat-1".into())),
            (
                "Observation",
                p(&[("patient", "pat-1"), ("category", "laboratory")]),
                Named::Id("pat-1".into()),
            ),
            (
                "Observation",
                p(&[("patient", "Patient/pat-1")]),
                Named::Id("pat-1".into()),
            ),
            (
                "Condition",
                p(&[("subject", "https://x.example/fhir/Patient/pat-1")]),
                Named::Id("pat-1".into()),
            ),
            (
                "Condition",
                p(&[("patient", "pat-1,pat-2")]),
                Named::Unknown,
            ),
            ("Condition", p(&[("patient", "Group/g1")]), Named::Unknown),
            (
                "Coverage",
                p(&[("beneficiary", "Patient/pat-1")]),
                Named::Id("pat-1".into()),
            ),
        ] {
            assert_eq!(
                named_patient(t, Op::Search, &params).unwrap(),
                named,
                "{t} {params:?}"
            );
        }
        for (t, params) in [
            ("Observation", p(&[("category", "laboratory")])),
            ("Patient", p(&[("name", "Jansen")])),
        ] {
            let r = named_patient(t, Op::Search, &params).unwrap_err();
            assert_eq!((r.status, r.code), (400, IssueType::Required), "{t}");
        }
    }

    #[test]
    fn meta_source_is_added_once_beside_what_meta_holds() {
        let mut r = json!({"resourceType": "Observation", "id": "o1",
            "meta": {"profile": ["http://nictiz.nl/fhir/StructureDefinition/zib-LaboratoryTestResult"],
                     "extension": [{"url": META_SOURCE_URL, "valueUri": "urn:oid:1.2"}, {"url": "x", "valueString": "y"}]}});
        add_meta_source(&mut r, "urn:oid:2.16.528.1.1007.3.3.12345678");
        add_meta_source(&mut r, "urn:oid:2.16.528.1.1007.3.3.12345678");
        assert_eq!(
            r["meta"]["extension"],
            json!([{"url": "x", "valueString": "y"}, {"url": META_SOURCE_URL, "valueUri": "urn:oid:2.16.528.1.1007.3.3.12345678"}])
        );
        assert_eq!(
            r["meta"]["profile"][0],
            "http://nictiz.nl/fhir/StructureDefinition/zib-LaboratoryTestResult"
        );
        let mut bare = json!({"resourceType": "Patient", "id": "p"});
        add_meta_source(&mut bare, "urn:oid:1.2.3");
        assert_eq!(bare["meta"]["extension"][0]["valueUri"], "urn:oid:1.2.3");
    }

    #[test]
    fn the_version_changes_with_any_record() {
        let a = version_of(&[("r1".into(), 1)]);
        assert_ne!(a, version_of(&[("r1".into(), 2)]));
        assert_ne!(a, version_of(&[("r1".into(), 1), ("r2".into(), 1)]));
        assert_eq!(a, version_of(&[("r1".into(), 1)]));
    }

    #[test]
    fn audit_actions() {
        assert_eq!(Action::Read.name(Family::Zorgviewer), "zorgviewer.read");
        assert_eq!(
            Action::Request.name(Family::Zorgviewer),
            "zorgviewer.request"
        );
    }
}
