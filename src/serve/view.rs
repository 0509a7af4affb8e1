//! What one case serves: the entry resources of its current data version,
//! indexed by `Type/id` and `fullUrl`, minus what is not this patient's.
//!
//! The export was checked when it entered the outbox (one Patient with a BSN);
//! the view checks again, as defence in depth, and hides rather than serves:
//! - every Patient but the one whose BSN is the grant's;
//! - a resource whose `subject`, `patient` or `beneficiary` refers to another
//!   Patient (by reference or by BSN identifier);
//! - a `Binary` that no visible `DocumentReference` refers to from
//!   `content.attachment.url` (`Binary/<id>`, a URL ending in `/Binary/<id>`,
//!   or the Binary's `fullUrl`);
//! - entries without a valid `resourceType` and `id`, and later duplicates of
//!   a `Type/id` (the first one is served).
//!
//! Hidden resources are invisible to reads, searches and `_include` alike.

use std::collections::HashMap;

use serde_json::Value;

use super::query::{is_id, is_type};
use crate::ids::BSN_SYSTEM;

/// One servable resource.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub resource: &'a Value,
}

/// Why a case's data cannot be served at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViewError {
    NotABundle,
    NoPatient,
    SeveralPatients,
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ViewError::NotABundle => "the case data is not a Bundle with entries",
            ViewError::NoPatient => "the case data has no Patient with the case's BSN",
            ViewError::SeveralPatients => "the case data has several Patients with the case's BSN",
        })
    }
}

/// The servable resources of a case, in Bundle order.
#[derive(Debug)]
pub(crate) struct CaseView<'a> {
    entries: Vec<Entry<'a>>,
    by_key: HashMap<(&'a str, &'a str), usize>,
    by_full_url: HashMap<&'a str, usize>,
    patient: usize,
    /// Entries not served (for the operator's log; no content).
    pub hidden: usize,
}

/// Top-level elements that name the patient a resource is about.
const PATIENT_LINKS: &[&str] = &["subject", "patient", "beneficiary"];

impl<'a> CaseView<'a> {
    /// The view of `bundle` for the patient with `bsn`.
    pub fn build(bundle: &'a Value, bsn: &str) -> Result<CaseView<'a>, ViewError> {
        CaseView::build_all(&[bundle], bsn)
    }

    /// One view over several Bundles of the same patient (a patient's
    /// published records), in the order given: for a `Type/id` held by
    /// more than one, the first Bundle's resource is served.
    pub fn build_all(bundles: &[&'a Value], bsn: &str) -> Result<CaseView<'a>, ViewError> {
        let mut raw: Vec<&'a Value> = Vec::new();
        for bundle in bundles {
            let entries = bundle
                .get("entry")
                .and_then(Value::as_array)
                .filter(|_| bundle.get("resourceType").and_then(Value::as_str) == Some("Bundle"))
                .ok_or(ViewError::NotABundle)?;
            raw.extend(entries);
        }
        let mut all = Index::with_capacity(raw.len());
        let mut hidden = 0;
        for e in raw {
            let resource = e.get("resource");
            let t = resource
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str);
            let id = resource.and_then(|r| r.get("id")).and_then(Value::as_str);
            match (resource, t, id) {
                (Some(resource), Some(t), Some(id)) if is_type(t) && is_id(id) => {
                    let full_url = e.get("fullUrl").and_then(Value::as_str);
                    if !all.push(
                        Entry {
                            resource_type: t,
                            id,
                            resource,
                        },
                        full_url,
                    ) {
                        hidden += 1;
                    }
                }
                _ => hidden += 1,
            }
        }

        let mut patients = all
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.resource_type == "Patient" && has_bsn(e.resource, bsn));
        let patient = match (patients.next(), patients.next()) {
            (Some((i, _)), None) => i,
            (None, _) => return Err(ViewError::NoPatient),
            (Some(_), Some(_)) => return Err(ViewError::SeveralPatients),
        };

        let mut keep: Vec<bool> = all
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| match e.resource_type {
                "Patient" => i == patient,
                "Binary" => false,
                _ => !about_another_patient(&all, e.resource, patient, bsn),
            })
            .collect();
        for (i, e) in all.entries.iter().enumerate() {
            if e.resource_type != "DocumentReference" || !keep[i] {
                continue;
            }
            each_at(e.resource, "content.attachment.url", |url| {
                if let Some(b) = url.as_str().and_then(|u| all.resolve(u)) {
                    if all.entries[b].resource_type == "Binary" {
                        keep[b] = true;
                    }
                }
            });
        }

        let mut view = Index::with_capacity(all.entries.len());
        let mut patient_idx = 0;
        for (i, e) in all.entries.iter().enumerate() {
            if !keep[i] {
                hidden += 1;
                continue;
            }
            if i == patient {
                patient_idx = view.entries.len();
            }
            view.push(*e, all.full_urls[i]);
        }
        Ok(CaseView {
            entries: view.entries,
            by_key: view.by_key,
            by_full_url: view.by_full_url,
            patient: patient_idx,
            hidden,
        })
    }

    /// The case's Patient.
    pub fn patient(&self) -> Entry<'a> {
        self.entries[self.patient]
    }

    /// The resource `Type/id`, if the case serves it.
    pub fn get(&self, resource_type: &str, id: &str) -> Option<Entry<'a>> {
        self.by_key
            .get(&(resource_type, id))
            .map(|i| self.entries[*i])
    }

    /// Every servable resource, in Bundle order, with its position.
    pub fn entries(&self) -> &[Entry<'a>] {
        &self.entries
    }

    /// The position of the servable resource a reference points to: a
    /// `fullUrl` in the Bundle, `Type/id`, or a URL ending in `Type/id`
    /// (with or without `/_history/<v>`). Contained (`#…`) references and
    /// anything outside the case resolve to nothing.
    pub fn resolve(&self, reference: &str) -> Option<usize> {
        resolve(&self.by_full_url, &self.by_key, reference)
    }
}

struct Index<'a> {
    entries: Vec<Entry<'a>>,
    full_urls: Vec<Option<&'a str>>,
    by_key: HashMap<(&'a str, &'a str), usize>,
    by_full_url: HashMap<&'a str, usize>,
}

impl<'a> Index<'a> {
    fn with_capacity(n: usize) -> Index<'a> {
        Index {
            entries: Vec::with_capacity(n),
            full_urls: Vec::with_capacity(n),
            by_key: HashMap::with_capacity(n),
            by_full_url: HashMap::with_capacity(n),
        }
    }

    /// Adds an entry; false when its `Type/id` is already there.
    fn push(&mut self, e: Entry<'a>, full_url: Option<&'a str>) -> bool {
        let key = (e.resource_type, e.id);
        if self.by_key.contains_key(&key) {
            return false;
        }
        let i = self.entries.len();
        self.by_key.insert(key, i);
        if let Some(u) = full_url {
            self.by_full_url.entry(u).or_insert(i);
        }
        self.entries.push(e);
        self.full_urls.push(full_url);
        true
    }

    fn resolve(&self, reference: &str) -> Option<usize> {
        resolve(&self.by_full_url, &self.by_key, reference)
    }
}

fn resolve(
    by_full_url: &HashMap<&str, usize>,
    by_key: &HashMap<(&str, &str), usize>,
    reference: &str,
) -> Option<usize> {
    if let Some(i) = by_full_url.get(reference) {
        return Some(*i);
    }
    let (t, id) = type_and_id(reference)?;
    by_key.get(&(t, id)).copied()
}

/// `Type` and `id` of a literal reference `Type/id`, `…/Type/id` or
/// `…/Type/id/_history/v`; `None` for contained, `urn:` and malformed ones.
pub(crate) fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let mut path = reference.split(['?', '#']).next()?;
    // `…/_history/<v>` goes when at least two segments precede it.
    if let Some((head, _version)) = path.rsplit_once('/') {
        if let Some((before, "_history")) = head.rsplit_once('/') {
            if before.contains('/') {
                path = before;
            }
        }
    }
    let (head, id) = path.rsplit_once('/')?;
    let t = match head.rsplit_once('/') {
        Some(_) if !reference.contains("://") => return None,
        Some((_, t)) => t,
        None => head,
    };
    (is_type(t) && is_id(id)).then_some((t, id))
}

/// Calls `f` with every value at a dotted path, walking through arrays, in
/// document order, until it returns true; true when it did. Allocates
/// nothing: it runs for every entry of a case on every read.
pub(crate) fn any_at<'v, F>(resource: &'v Value, path: &str, f: &mut F) -> bool
where
    F: FnMut(&'v Value) -> bool,
{
    let (step, rest) = match path.split_once('.') {
        Some((step, rest)) => (step, Some(rest)),
        None => (path, None),
    };
    let mut visit = |v: &'v Value| match rest {
        Some(rest) => any_at(v, rest, f),
        None => f(v),
    };
    match resource.get(step) {
        Some(Value::Array(items)) => items.iter().any(visit),
        Some(v) => visit(v),
        None => false,
    }
}

/// Calls `f` with every value at a dotted path (see [`any_at`]).
pub(crate) fn each_at<'v>(resource: &'v Value, path: &str, mut f: impl FnMut(&'v Value)) {
    any_at(resource, path, &mut |v| {
        f(v);
        false
    });
}

/// The first value at a dotted path (see [`any_at`]).
pub(crate) fn first_at<'v>(resource: &'v Value, path: &str) -> Option<&'v Value> {
    let mut first = None;
    any_at(resource, path, &mut |v| {
        first = Some(v);
        true
    });
    first
}

fn has_bsn(patient: &Value, bsn: &str) -> bool {
    any_at(patient, "identifier", &mut |i| {
        i.get("system").and_then(Value::as_str) == Some(BSN_SYSTEM)
            && i.get("value").and_then(Value::as_str) == Some(bsn)
    })
}

/// True when the resource's patient links name a Patient other than ours.
fn about_another_patient(all: &Index<'_>, resource: &Value, patient: usize, bsn: &str) -> bool {
    PATIENT_LINKS.iter().any(|field| {
        any_at(resource, field, &mut |link| {
            if let Some(r) = link.get("reference").and_then(Value::as_str) {
                match all.resolve(r) {
                    Some(i) => all.entries[i].resource_type == "Patient" && i != patient,
                    None => type_and_id(r).is_some_and(|(t, _)| t == "Patient"),
                }
            } else if let Some(ident) = link.get("identifier") {
                ident.get("system").and_then(Value::as_str) == Some(BSN_SYSTEM)
                    && ident.get("value").and_then(Value::as_str) != Some(bsn)
            } else {
                false
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BSN: &str = "999999151";

    fn bundle(resources: Vec<Value>) -> Value {
        json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": resources.into_iter().enumerate().map(|(i, r)| json!({
                "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{i:012}"),
                "resource": r,
            })).collect::<Vec<_>>(),
        })
    }

    fn patient(id: &str, bsn: &str) -> Value {
        json!({"resourceType": "Patient", "id": id,
               "identifier": [{"system": BSN_SYSTEM, "value": bsn}]})
    }

    #[test]
    fn references() {
        for (r, t, id) in [
            ("Patient/p1", "Patient", "p1"),
            ("https://x.example/fhir/Binary/b1", "Binary", "b1"),
            (
                "https://x.example/fhir/Patient/p1/_history/3",
                "Patient",
                "p1",
            ),
            ("Patient/p1/_history/3", "Patient", "p1"),
            (
                "https://x.example/Observation/o1/_history/2?a=b#c",
                "Observation",
                "o1",
            ),
        ] {
            assert_eq!(type_and_id(r), Some((t, id)), "{r}");
        }
        for r in [
            "#c1",
            "urn:uuid:x",
            "p1",
            "Patient/",
            "a/Patient/p1",
            "patient/p1",
            "Patient/p 1",
            "/Patient/p1",
            "x/_history/3",
        ] {
            assert_eq!(type_and_id(r), None, "{r}");
        }
    }

    #[test]
    fn the_values_at_a_path_are_walked_through_arrays_in_order() {
        let r = json!({
            "content": [
                {"attachment": {"url": "a"}},
                {"attachment": [{"url": "b"}, {"url": ["c", "d"]}]},
                {"other": 1},
            ],
            "nested": [[{"url": "hidden"}]],
        });
        let mut seen = Vec::new();
        each_at(&r, "content.attachment.url", |v| seen.push(v.clone()));
        assert_eq!(seen, [json!("a"), json!("b"), json!("c"), json!("d")]);
        assert_eq!(first_at(&r, "content.attachment.url"), Some(&json!("a")));
        assert_eq!(first_at(&r, "content.missing"), None);
        let mut seen = Vec::new();
        each_at(&r, "nested.url", |v| seen.push(v.clone()));
        assert!(seen.is_empty(), "an array inside an array is not walked");
        let mut calls = 0;
        assert!(any_at(&r, "content.attachment.url", &mut |v| {
            calls += 1;
            v == "b"
        }));
        assert_eq!(calls, 2, "stops at the first match");
    }

    #[test]
    fn hides_what_is_not_this_patients() {
        let b = bundle(vec![
            patient("p1", BSN),
            patient("p2", "999999163"),
            json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p2"}}),
            json!({"resourceType": "Observation", "id": "o3", "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}}),
            json!({"resourceType": "Observation", "id": "o4", "subject": {"reference": "Patient/elsewhere"}}),
            json!({"resourceType": "Observation", "id": "o5", "subject": {"identifier": {"system": BSN_SYSTEM, "value": "999999163"}}}),
            json!({"resourceType": "Observation", "id": "o1", "status": "duplicate"}),
            json!({"resourceType": "Observation"}),
            json!({"resourceType": "DocumentReference", "id": "d1", "subject": {"reference": "Patient/p1"},
                   "content": [{"attachment": {"url": "Binary/b1"}},
                               {"attachment": {"url": "https://ehr.example/fhir/Binary/b2"}},
                               {"attachment": {"url": "urn:uuid:00000000-0000-4000-8000-000000000015"}}]}),
            json!({"resourceType": "DocumentReference", "id": "d2", "subject": {"reference": "Patient/p2"},
                   "content": [{"attachment": {"url": "Binary/b4"}}]}),
            json!({"resourceType": "Binary", "id": "b1"}),
            json!({"resourceType": "Binary", "id": "b2"}),
            json!({"resourceType": "Binary", "id": "b3"}),
            json!({"resourceType": "Binary", "id": "b4"}),
            json!({"resourceType": "Binary", "id": "b5"}),
        ]);
        let v = CaseView::build(&b, BSN).unwrap();
        let served: Vec<String> = v
            .entries()
            .iter()
            .map(|e| format!("{}/{}", e.resource_type, e.id))
            .collect();
        assert_eq!(
            served,
            [
                "Patient/p1",
                "Observation/o1",
                "DocumentReference/d1",
                "Binary/b1",
                "Binary/b2",
                "Binary/b5"
            ]
        );
        assert_eq!(v.patient().id, "p1");
        assert_eq!(v.hidden, 10);
        assert_eq!(
            v.get("Observation", "o1").unwrap().resource.get("status"),
            None
        );
        assert!(v.get("Observation", "o2").is_none());
        assert_eq!(
            v.resolve("urn:uuid:00000000-0000-4000-8000-000000000000"),
            Some(0)
        );
        assert_eq!(v.resolve("Patient/p2"), None);
    }

    #[test]
    fn refuses_data_without_exactly_one_patient() {
        assert_eq!(
            CaseView::build(&json!({"resourceType": "Patient"}), BSN).unwrap_err(),
            ViewError::NotABundle
        );
        assert_eq!(
            CaseView::build(&bundle(vec![patient("p2", "999999163")]), BSN).unwrap_err(),
            ViewError::NoPatient
        );
        assert_eq!(
            CaseView::build(&bundle(vec![patient("p1", BSN), patient("p3", BSN)]), BSN)
                .unwrap_err(),
            ViewError::SeveralPatients
        );
    }
}
