//! Running a validated search over a case: matching, `$lastn`, `_include`.
//!
//! Results are positions in the [`CaseView`], so nothing outside the view can
//! ever be returned. Matches come in Bundle order, or by their `_sort` keys
//! with ties in Bundle order (`$lastn`: per code, newest first), which keeps
//! paging stable for one data version.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::params::{DateDef, OBSERVATION_DATE};
use super::query::{
    Canonical, Filter, Include, Op, RefValue, Search, SortKey, SystemSel, TokenValue,
};
use super::view::{CaseView, Entry, any_at, each_at, first_at, type_and_id};
use crate::util::time::parse_rfc3339;

/// The positions of every match of `search`, in result order.
pub(crate) fn run(view: &CaseView<'_>, search: &Search) -> Vec<usize> {
    let matches: Vec<usize> = view
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| e.resource_type == search.resource_type)
        .filter(|(_, e)| search.filters.iter().all(|f| filter_matches(view, e, f)))
        .map(|(i, _)| i)
        .collect();
    match search.op {
        Op::Search => sorted(view, matches, &search.sort),
        Op::LastN => last_n(view, &matches, search.max),
    }
}

/// `matches` ordered by `keys`: each key's date ascending or descending,
/// resources without that date after every dated one (in both directions),
/// ties in Bundle order (the sort is stable).
fn sorted(view: &CaseView<'_>, matches: Vec<usize>, keys: &[SortKey]) -> Vec<usize> {
    if keys.is_empty() {
        return matches;
    }
    let mut keyed: Vec<(Vec<Option<i64>>, usize)> = matches
        .into_iter()
        .map(|i| {
            let resource = view.entries()[i].resource;
            (keys.iter().map(|k| date_of(resource, k.def)).collect(), i)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        keys.iter()
            .zip(a.iter().zip(b))
            .map(|(k, (a, b))| match (a, b) {
                (Some(a), Some(b)) if k.descending => b.cmp(a),
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    });
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// The resources `includes` add to a page of matches: inside the case only,
/// each once, none that is already a match on the page.
pub(crate) fn included(view: &CaseView<'_>, page: &[usize], includes: &[Include]) -> Vec<usize> {
    let mut seen: HashSet<usize> = page.iter().copied().collect();
    let mut out = Vec::new();
    for &m in page {
        let resource = view.entries()[m].resource;
        for inc in includes {
            let targets = inc.def.targets();
            for path in inc.def.paths {
                each_at(resource, path, |elem| {
                    let Some(i) = elem
                        .get("reference")
                        .and_then(Value::as_str)
                        .and_then(|r| view.resolve(r))
                    else {
                        return;
                    };
                    let t = view.entries()[i].resource_type;
                    if (!targets.is_empty() && !targets.contains(&t))
                        || inc.target.as_deref().is_some_and(|x| x != t)
                    {
                        return;
                    }
                    if seen.insert(i) {
                        out.push(i);
                    }
                });
            }
        }
    }
    out
}

fn filter_matches(view: &CaseView<'_>, e: &Entry<'_>, filter: &Filter) -> bool {
    match filter {
        Filter::Id(ids) => ids.iter().any(|id| id == e.id),
        Filter::Profile(profiles) => any_at(e.resource, "meta.profile", &mut |declared| {
            declared
                .as_str()
                .map(Canonical::parse)
                .is_some_and(|declared| profiles.iter().any(|p| p.matches(&declared)))
        }),
        Filter::Token(def, values) => def.paths.iter().any(|p| {
            any_at(e.resource, p, &mut |elem| {
                values.iter().any(|v| token_matches(elem, v))
            })
        }),
        Filter::Reference(def, values) => {
            let targets = def.targets();
            def.paths.iter().any(|p| {
                any_at(e.resource, p, &mut |elem| {
                    let Some(r) = elem.get("reference").and_then(Value::as_str) else {
                        return false;
                    };
                    let target = match view.resolve(r) {
                        Some(i) => Some((view.entries()[i].resource_type, view.entries()[i].id)),
                        None => type_and_id(r),
                    };
                    target.is_some_and(|(t, id)| {
                        (targets.is_empty() || targets.contains(&t))
                            && values.iter().any(|v| reference_matches(t, id, v))
                    })
                })
            })
        }
    }
}

fn reference_matches(t: &str, id: &str, v: &RefValue) -> bool {
    v.id == id && v.resource_type.as_deref().is_none_or(|vt| vt == t)
}

/// A token value against one element: a CodeableConcept (any coding), a
/// Coding, an Identifier, or a primitive `code` (whose system is implicit, so
/// only the code is compared and `system|` never matches it).
fn token_matches(elem: &Value, v: &TokenValue) -> bool {
    match elem {
        Value::String(s) => v.code.as_deref() == Some(s.as_str()),
        Value::Object(o) => {
            let system = o.get("system").and_then(Value::as_str);
            if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                codings.iter().any(|c| token_matches(c, v))
            } else if let Some(code) = o.get("code").and_then(Value::as_str) {
                pair_matches(system, code, v)
            } else if let Some(value) = o.get("value").and_then(Value::as_str) {
                pair_matches(system, value, v)
            } else {
                false
            }
        }
        _ => false,
    }
}

fn pair_matches(system: Option<&str>, code: &str, v: &TokenValue) -> bool {
    let system_ok = match &v.system {
        SystemSel::Any => true,
        SystemSel::Absent => system.is_none(),
        SystemSel::Is(s) => system == Some(s.as_str()),
    };
    system_ok && v.code.as_deref().is_none_or(|c| c == code)
}

/// `$lastn`: per code (the first coding of `Observation.code`, else its
/// text), the `max` newest by `effectiveDateTime`, `effectivePeriod.start`
/// or `issued`; undated ones last. Codes in order of first appearance.
fn last_n(view: &CaseView<'_>, matches: &[usize], max: usize) -> Vec<usize> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for &i in matches {
        let key = code_key(view.entries()[i]);
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(i);
    }
    let mut out = Vec::new();
    for key in order {
        let Some(mut group) = groups.remove(&key) else {
            continue;
        };
        group.sort_by(|a, b| {
            let (ea, eb) = (view.entries()[*a], view.entries()[*b]);
            // Newest first; `None` (undated) sorts after every date.
            date_of(eb.resource, &OBSERVATION_DATE)
                .cmp(&date_of(ea.resource, &OBSERVATION_DATE))
                .then_with(|| ea.id.cmp(eb.id))
        });
        out.extend(group.into_iter().take(max));
    }
    out
}

fn code_key(e: Entry<'_>) -> String {
    let code = e.resource.get("code");
    let first = code
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    match (
        first,
        code.and_then(|c| c.get("text")).and_then(Value::as_str),
    ) {
        (Some(c), _) => format!(
            "{}|{}",
            c.get("system").and_then(Value::as_str).unwrap_or(""),
            c.get("code").and_then(Value::as_str).unwrap_or("")
        ),
        (None, Some(text)) => format!("text:{text}"),
        (None, None) => format!("id:{}", e.id),
    }
}

/// The value of the date parameter `def` of a resource, as Unix seconds: the
/// first date found along its paths.
fn date_of(resource: &Value, def: &DateDef) -> Option<i64> {
    def.paths.iter().find_map(|p| {
        first_at(resource, p)
            .and_then(|v| v.as_str())
            .and_then(fhir_instant)
    })
}

/// A FHIR `dateTime` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or with time and
/// zone) as Unix seconds at its start.
fn fhir_instant(text: &str) -> Option<i64> {
    match text.len() {
        4 => parse_rfc3339(&format!("{text}-01-01")),
        7 => parse_rfc3339(&format!("{text}-01")),
        _ => parse_rfc3339(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::query::{Binding, Op, decode_query, parse_search};
    use serde_json::json;

    const BSN: &str = "999999151";

    fn data() -> Value {
        let r = vec![
            json!({"resourceType": "Patient", "id": "p1",
                   "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}],
                   "generalPractitioner": [{"reference": "Practitioner/gp"}, {"reference": "Organization/elsewhere"}]}),
            json!({"resourceType": "Practitioner", "id": "gp"}),
            json!({"resourceType": "Observation", "id": "w1", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                   "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024"}),
            json!({"resourceType": "Observation", "id": "w2", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                   "subject": {"reference": "urn:uuid:p1"}, "effectivePeriod": {"start": "2025-03-01T10:00:00+01:00"}}),
            json!({"resourceType": "Observation", "id": "w3", "status": "amended",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                   "subject": {"reference": "Patient/p1"}, "issued": "2025-03-01T08:30:00Z"}),
            json!({"resourceType": "Observation", "id": "h1", "status": "final",
                   "identifier": [{"system": "urn:oid:1.2.3", "value": "abc"}],
                   "code": {"coding": [{"code": "8302-2"}]},
                   "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "AllergyIntolerance", "id": "a1", "category": ["medication"],
                   "clinicalStatus": "active", "patient": {"reference": "Patient/p1"}}),
        ];
        json!({"resourceType": "Bundle", "entry": r.into_iter().enumerate().map(|(i, r)| {
            let url = if i == 0 { "urn:uuid:p1".to_string() } else { format!("urn:uuid:{i}") };
            json!({"fullUrl": url, "resource": r})
        }).collect::<Vec<_>>()})
    }

    fn ids(t: &str, op: Op, q: &str) -> Vec<String> {
        ids_in(&data(), t, op, q)
    }

    fn ids_in(d: &Value, t: &str, op: Op, q: &str) -> Vec<String> {
        let view = CaseView::build(d, BSN).unwrap();
        let binding = Binding {
            patient_id: "p1",
            bsn: BSN,
            base_url: "https://np.example/fhir",
        };
        let s = parse_search(t, op, &decode_query(Some(q)).unwrap(), &binding).unwrap();
        let hits = run(&view, &s);
        let inc = included(&view, &hits, &s.includes);
        hits.iter()
            .chain(inc.iter())
            .map(|i| view.entries()[*i].id.to_string())
            .collect()
    }

    #[test]
    fn tokens_match_each_element_kind() {
        let s = |q| ids("Observation", Op::Search, q);
        assert_eq!(s("code=29463-7"), ["w1", "w2", "w3"]);
        assert_eq!(s("code=http://loinc.org|29463-7"), ["w1", "w2", "w3"]);
        assert_eq!(
            s("code=http://snomed.info/sct|29463-7"),
            Vec::<String>::new()
        );
        assert_eq!(s("code=|8302-2"), ["h1"]);
        assert_eq!(s("code=|29463-7"), Vec::<String>::new());
        assert_eq!(s("code=http://loinc.org|"), ["w1", "w2", "w3"]);
        assert_eq!(s("code=8302-2,29463-7&status=final"), ["w1", "w2", "h1"]);
        assert_eq!(s("identifier=urn:oid:1.2.3|abc"), ["h1"]);
        assert_eq!(s("identifier=abc"), ["h1"]);
        assert_eq!(s("_id=w3,h1"), ["w3", "h1"]);
        assert_eq!(
            ids("AllergyIntolerance", Op::Search, "category=medication"),
            ["a1"]
        );
        assert_eq!(
            ids("AllergyIntolerance", Op::Search, "clinical-status=x|active"),
            ["a1"],
            "the system of a code element is implicit"
        );
        assert_eq!(
            ids("AllergyIntolerance", Op::Search, "category=x|"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn references_match_by_id_fullurl_and_bsn() {
        let s = |q| ids("Observation", Op::Search, q);
        let all = ["w1", "w2", "w3", "h1"];
        assert_eq!(s("patient=Patient/p1"), all);
        assert_eq!(s("subject=p1"), all);
        assert_eq!(
            s("patient=http://fhir.nl/fhir/NamingSystem/bsn|999999151"),
            all
        );
    }

    #[test]
    fn includes_stay_inside_the_case() {
        assert_eq!(
            ids(
                "Patient",
                Op::Search,
                "_include=Patient:general-practitioner"
            ),
            ["p1", "gp"],
            "Organization/elsewhere is not in the case"
        );
        assert_eq!(
            ids(
                "Patient",
                Op::Search,
                "_include=Patient:general-practitioner:Organization"
            ),
            ["p1"]
        );
        assert_eq!(
            ids(
                "Observation",
                Op::Search,
                "code=8302-2&_include=Observation:subject"
            ),
            ["h1", "p1"]
        );
    }

    /// Observations whose dates tie, lack, or only have `issued`, and three
    /// profile declarations.
    fn dated() -> Value {
        let obs = |id: &str, extra: Value| {
            let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
                               "code": {"text": id}, "subject": {"reference": "Patient/p1"}});
            if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
                o.extend(extra.clone());
            }
            o
        };
        let r = vec![
            json!({"resourceType": "Patient", "id": "p1",
                   "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}),
            obs("undated-1", json!({})),
            obs(
                "y2024",
                json!({"effectiveDateTime": "2024",
                                "meta": {"profile": ["http://x.example/bp|1", "http://x.example/other"]}}),
            ),
            obs(
                "issued",
                json!({"issued": "2025-03-01T08:30:00Z",
                                 "meta": {"profile": ["http://x.example/bp"]}}),
            ),
            obs(
                "period",
                json!({"effectivePeriod": {"start": "2025-03-01T10:00:00+01:00"},
                                 "issued": "2020-01-01T00:00:00Z",
                                 "meta": {"profile": ["http://x.example/bp|2"]}}),
            ),
            obs(
                "y2024-tie",
                json!({"effectiveDateTime": "2024-01-01T00:00:00Z"}),
            ),
            obs("undated-2", json!({"effectiveDateTime": "not a date"})),
        ];
        json!({"resourceType": "Bundle", "entry": r.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()})
    }

    #[test]
    fn sort_by_date_keeps_ties_in_bundle_order_and_undated_last() {
        let d = dated();
        let s = |q| ids_in(&d, "Observation", Op::Search, q);
        assert_eq!(
            s(""),
            [
                "undated-1",
                "y2024",
                "issued",
                "period",
                "y2024-tie",
                "undated-2"
            ]
        );
        assert_eq!(
            s("_sort=-date"),
            [
                "period",
                "issued",
                "y2024",
                "y2024-tie",
                "undated-1",
                "undated-2"
            ],
            "09:00Z after 08:30Z; effective before issued; 2024 is its first instant"
        );
        assert_eq!(
            s("_sort=date"),
            [
                "y2024",
                "y2024-tie",
                "issued",
                "period",
                "undated-1",
                "undated-2"
            ]
        );
        assert_eq!(
            s("_sort=-date&status=final&_count=2").len(),
            6,
            "paging is the caller's"
        );
        assert_eq!(
            ids_in(
                &d,
                "Observation",
                Op::Search,
                "_sort=-date&_id=undated-2,y2024,period"
            ),
            ["period", "y2024", "undated-2"]
        );
    }

    #[test]
    fn profiles_match_meta_profile_with_or_without_version() {
        let d = dated();
        let s = |q| ids_in(&d, "Observation", Op::Search, q);
        assert_eq!(
            s("_profile=http://x.example/bp"),
            ["y2024", "issued", "period"]
        );
        assert_eq!(s("_profile=http://x.example/bp|2"), ["period"]);
        assert_eq!(s("_profile=http://x.example/bp|3"), Vec::<String>::new());
        assert_eq!(
            s("_profile=http://x.example/bp|1,http://x.example/bp|2&_sort=-date"),
            ["period", "y2024"]
        );
        assert_eq!(
            s("_profile=http://x.example/other&_profile=http://x.example/bp"),
            ["y2024"],
            "two _profile parameters: both must hold"
        );
        assert_eq!(
            s("_profile=http://x.example/b"),
            Vec::<String>::new(),
            "exact, no prefix"
        );
    }

    #[test]
    fn lastn_takes_the_newest_per_code() {
        assert_eq!(ids("Observation", Op::LastN, ""), ["w2", "h1"]);
        assert_eq!(ids("Observation", Op::LastN, "max=2"), ["w2", "w3", "h1"]);
        assert_eq!(
            ids(
                "Observation",
                Op::LastN,
                "max=5&code=http://loinc.org|29463-7"
            ),
            ["w2", "w3", "w1"]
        );
        assert_eq!(fhir_instant("2024-02"), parse_rfc3339("2024-02-01"));
        assert_eq!(fhir_instant("2024-13"), None);
        assert_eq!(fhir_instant("yesterday"), None);
    }
}
