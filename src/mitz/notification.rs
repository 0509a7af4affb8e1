//! Validation of a Mitz consent notification (sans-IO): the transaction
//! control of spec §3 step 5, the bronhouder check of step 6, and the consent
//! content of §4 (profile Consent-Mitz-Notify 3.8.x).
//!
//! The input is the JSON form of the Bundle (XML has already been read into
//! it by [`crate::fhir`], which also refused hostile content). Every refusal
//! names the element (`Bundle.entry[2].request.url`) and never repeats a
//! value from the Bundle, so it can be logged and answered as it is.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::borrow::Cow;

use crate::fhir::Refusal;
use crate::ids::{BSN_SYSTEM, Bsn, URA_SYSTEM};
use crate::util::random::is_uuid;

/// `meta.profile` of the notifications we interpret (any 3.8.x version).
pub const PROFILE_3_8: &str = "http://vzvz.nl/fhir/StructureDefinition/Consent-Mitz-Notify";
/// Provider category extension on a Consent.
pub const PROVIDER_CATEGORY_EXT: &str = "http://fhir.nl/StructureDefinition/OTV-ProviderCategory";
/// Code system of the consulting provider categories (`RPZAC…`).
pub const PROVIDER_CATEGORY_SYSTEM: &str =
    "http://fhir.nl/otv/CodeSystem/raadplegende-zorgaanbiedercategorie";
/// Code system of the data categories (`GGC…`).
pub const DATA_CATEGORY_SYSTEM: &str = "http://fhir.nl/otv/CodeSystem/gegevenscategorie";

/// Which definition the notification's Consents follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Consent-Mitz-Notify 3.8.x, or no `meta.profile` at all (read as 3.8).
    V3_8,
    /// Anything else (4.0 beta, say): stored as received, no consent view
    /// update, an alert in the log (spec §9).
    Unknown,
}

/// What one Consent says, for the consent view: every `(data category,
/// provider category)` pair gets `permit` as of `date_time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// `GGC…` codes.
    pub data_categories: Vec<String>,
    /// `RPZAC…` codes.
    pub provider_categories: Vec<String>,
    /// `active` with `provision.type` `permit`. Everything else is no consent
    /// (Mitz is opt-in: `inactive`, a `deny`, or no provision type on an
    /// active Consent all release nothing).
    pub permit: bool,
    /// `Consent.dateTime` as sent.
    pub date_time: String,
    /// `date_time` as `[Unix seconds, nanoseconds]`, for ordering.
    pub order: (i64, u32),
}

/// A notification that passed every check.
#[derive(Debug, Clone)]
pub struct Notification {
    /// `Bundle.id`, when sent.
    pub bundle_id: Option<String>,
    pub bsn: Bsn,
    /// The Organization's URA (ours: checked).
    pub holder: String,
    pub profile: Profile,
    /// Present for [`Profile::V3_8`], empty otherwise.
    pub consents: Vec<ConsentState>,
    /// How many request entries the Bundle has (one response entry each).
    pub entries: usize,
}

fn invalid(at: impl Into<String>, why: impl Into<Cow<'static, str>>) -> Refusal {
    Refusal::invalid(why).at(at)
}

/// One Bundle entry, after the transaction control.
struct Entry<'a> {
    at: String,
    full_url: &'a str,
    kind: &'a str,
    resource: &'a Value,
}

/// Checks `bundle` (JSON form) as a Mitz consent notification for the
/// holder with URA `our_ura`. Refusals are 400 with an OperationOutcome
/// issue code: `invalid` for the transaction control, `required` for a
/// missing element, `value` for a wrong value (a foreign URA, a BSN that
/// fails the 11-test).
pub fn validate(bundle: &Value, our_ura: &str) -> Result<Notification, Refusal> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(invalid("Bundle", "the body is not a Bundle"));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => {}
        Some(_) => {
            return Err(Refusal::value(
                "Bundle.type",
                "a consent notification is a transaction Bundle",
            ));
        }
        None => return Err(Refusal::required("Bundle.type", "Bundle.type is missing")),
    }
    let entries = entries(bundle)?;
    let patients: Vec<&Entry> = entries.iter().filter(|e| e.kind == "Patient").collect();
    let orgs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == "Organization")
        .collect();
    let consents: Vec<&Entry> = entries.iter().filter(|e| e.kind == "Consent").collect();
    let ([patient], [org]) = (patients.as_slice(), orgs.as_slice()) else {
        return Err(invalid(
            "Bundle.entry",
            "a consent notification has exactly one Patient and one Organization",
        ));
    };
    if consents.is_empty() {
        return Err(invalid(
            "Bundle.entry",
            "a consent notification has at least one Consent",
        ));
    }
    let profile = profile_of(&consents);
    for c in &consents {
        check_references(c, &entries)?;
    }
    let bsn = bsn_of(patient)?;
    let holder = ura_of(org)?;
    if holder != our_ura {
        return Err(Refusal::value(
            format!("{}.identifier", org.at),
            "the Organization is not this holder (bronhouder onbekend): its URA is not NP_ORG_URA",
        ));
    }
    let consents = match profile {
        Profile::V3_8 => consents
            .iter()
            .map(|c| consent_state(c))
            .collect::<Result<Vec<_>, _>>()?,
        Profile::Unknown => Vec::new(),
    };
    Ok(Notification {
        bundle_id: bundle.get("id").and_then(Value::as_str).map(String::from),
        bsn,
        holder,
        profile,
        consents,
        entries: entries.len(),
    })
}

/// The transaction control: every entry a `POST` of a Consent, Patient or
/// Organization under a unique `urn:uuid:` `fullUrl`.
fn entries(bundle: &Value) -> Result<Vec<Entry<'_>>, Refusal> {
    let list = match bundle.get("entry") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(Refusal::required(
                "Bundle.entry",
                "the Bundle has no entries",
            ));
        }
    };
    let mut out: Vec<Entry> = Vec::with_capacity(list.len());
    for (i, e) in list.iter().enumerate() {
        let at = format!("Bundle.entry[{i}]");
        let full_url = e
            .get("fullUrl")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::required(format!("{at}.fullUrl"), "fullUrl is missing"))?;
        let uuid_ok = full_url.strip_prefix("urn:uuid:").is_some_and(is_uuid);
        if !uuid_ok {
            return Err(invalid(
                format!("{at}.fullUrl"),
                "fullUrl must be urn:uuid:<uuid> in a transaction",
            ));
        }
        if out
            .iter()
            .any(|o| o.full_url.eq_ignore_ascii_case(full_url))
        {
            return Err(invalid(
                format!("{at}.fullUrl"),
                "two entries have the same fullUrl",
            ));
        }
        let resource = e.get("resource").filter(|r| r.is_object()).ok_or_else(|| {
            Refusal::required(format!("{at}.resource"), "the entry has no resource")
        })?;
        let kind = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !matches!(kind, "Consent" | "Patient" | "Organization") {
            return Err(invalid(
                format!("{at}.resource"),
                "a consent notification holds only Consent, Patient and Organization",
            ));
        }
        let request = e.get("request").ok_or_else(|| {
            Refusal::required(
                format!("{at}.request"),
                "a transaction entry needs a request",
            )
        })?;
        if request.get("method").and_then(Value::as_str) != Some("POST") {
            return Err(invalid(
                format!("{at}.request.method"),
                "each entry of a consent notification is a POST",
            ));
        }
        if request.get("url").and_then(Value::as_str) != Some(kind) {
            return Err(invalid(
                format!("{at}.request.url"),
                "request.url must be the entry's resource type",
            ));
        }
        out.push(Entry {
            at: format!("{at}.resource"),
            full_url,
            kind,
            resource,
        });
    }
    Ok(out)
}

/// Whether a Consent's `meta.profile` is 3.8.x (or absent).
fn profile_of(consents: &[&Entry]) -> Profile {
    let all_3_8 = consents.iter().all(|c| {
        match c
            .resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
        {
            None => true,
            Some(list) => list.iter().filter_map(Value::as_str).any(|p| {
                p.strip_prefix(PROFILE_3_8)
                    .is_some_and(|v| v.is_empty() || v.starts_with("|3.8"))
            }),
        }
    });
    if all_3_8 {
        Profile::V3_8
    } else {
        Profile::Unknown
    }
}

/// Every reference in a Consent that points into the Bundle must find its
/// entry, of the right type: `patient` a Patient, `provision.actor` an
/// Organization (or the Patient; Mitz sends the custodian only).
fn check_references(c: &Entry, entries: &[Entry]) -> Result<(), Refusal> {
    let patient = c
        .resource
        .pointer("/patient/reference")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Refusal::required(
                format!("{}.patient", c.at),
                "Consent.patient must reference the Patient entry",
            )
        })?;
    if resolve(patient, entries) != Some("Patient") {
        return Err(invalid(
            format!("{}.patient", c.at),
            "Consent.patient does not resolve to the Patient entry",
        ));
    }
    let actors = c
        .resource
        .pointer("/provision/actor")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, a) in actors.iter().enumerate() {
        let at = format!("{}.provision.actor[{i}].reference", c.at);
        let target = a
            .pointer("/reference/reference")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::required(at.clone(), "the actor has no reference"))?;
        if !matches!(resolve(target, entries), Some("Organization" | "Patient")) {
            return Err(invalid(
                at,
                "the actor reference does not resolve inside the Bundle",
            ));
        }
    }
    Ok(())
}

/// The resource type a reference finds in the Bundle: by `fullUrl`, or as
/// `<Type>/<id>` by resource id.
fn resolve<'a>(reference: &str, entries: &'a [Entry]) -> Option<&'a str> {
    if let Some(e) = entries
        .iter()
        .find(|e| e.full_url.eq_ignore_ascii_case(reference))
    {
        return Some(e.kind);
    }
    let (kind, id) = reference.split_once('/')?;
    entries
        .iter()
        .find(|e| e.kind == kind && e.resource.get("id").and_then(Value::as_str) == Some(id))
        .map(|e| e.kind)
}

fn identifiers<'a>(r: &'a Entry, system: &str) -> Vec<Option<&'a str>> {
    r.resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(system))
        .map(|i| i.get("value").and_then(Value::as_str))
        .collect()
}

fn bsn_of(patient: &Entry) -> Result<Bsn, Refusal> {
    let at = format!("{}.identifier", patient.at);
    match identifiers(patient, BSN_SYSTEM).as_slice() {
        [] => Err(Refusal::required(at, "the Patient has no BSN identifier")),
        [Some(v)] => Bsn::parse(v)
            .filter(|b| b.as_str() == *v)
            .ok_or_else(|| Refusal::value(at, "the Patient's BSN fails the 11-test")),
        [None] => Err(Refusal::required(at, "the BSN identifier has no value")),
        _ => Err(invalid(at, "the Patient has more than one BSN")),
    }
}

fn ura_of(org: &Entry) -> Result<String, Refusal> {
    let at = format!("{}.identifier", org.at);
    match identifiers(org, URA_SYSTEM).as_slice() {
        [] => Err(Refusal::required(
            at,
            "the Organization has no URA identifier",
        )),
        [Some(v)] if v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()) => Ok((*v).to_string()),
        [Some(_)] => Err(Refusal::value(at, "a URA is 8 digits")),
        [None] => Err(Refusal::required(at, "the URA identifier has no value")),
        _ => Err(invalid(at, "the Organization has more than one URA")),
    }
}

/// Codes of `system` in a list of CodeableConcepts (or one).
fn codes(concepts: Option<&Value>, system: &str) -> Vec<String> {
    let list: Vec<&Value> = match concepts {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    };
    let mut out: Vec<String> = list
        .iter()
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten()
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(system))
        .filter_map(|c| c.get("code").and_then(Value::as_str))
        .map(String::from)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn consent_state(c: &Entry) -> Result<ConsentState, Refusal> {
    let r = c.resource;
    let status = r.get("status").and_then(Value::as_str);
    let active = match status {
        Some("active") => true,
        Some("inactive") => false,
        Some(_) => {
            return Err(Refusal::value(
                format!("{}.status", c.at),
                "a Mitz Consent is active or inactive",
            ));
        }
        None => {
            return Err(Refusal::required(
                format!("{}.status", c.at),
                "Consent.status is missing",
            ));
        }
    };
    let data_categories = codes(r.get("category"), DATA_CATEGORY_SYSTEM);
    if data_categories.is_empty() {
        return Err(Refusal::required(
            format!("{}.category", c.at),
            "the Consent names no data category (gegevenscategorie)",
        ));
    }
    let provider_extensions: Vec<&Value> = r
        .get("extension")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(PROVIDER_CATEGORY_EXT))
        .filter_map(|e| e.get("valueCodeableConcept"))
        .collect();
    let mut provider_categories: Vec<String> = provider_extensions
        .iter()
        .flat_map(|v| codes(Some(v), PROVIDER_CATEGORY_SYSTEM))
        .collect();
    provider_categories.sort();
    provider_categories.dedup();
    let date_time = r.get("dateTime").and_then(Value::as_str).ok_or_else(|| {
        Refusal::required(
            format!("{}.dateTime", c.at),
            "Consent.dateTime is missing: without it the newest state cannot be told",
        )
    })?;
    let order = order_key(date_time).ok_or_else(|| {
        Refusal::value(
            format!("{}.dateTime", c.at),
            "Consent.dateTime is not a dateTime with a time zone",
        )
    })?;
    let permit = active && r.pointer("/provision/type").and_then(Value::as_str) == Some("permit");
    Ok(ConsentState {
        data_categories,
        provider_categories,
        permit,
        date_time: date_time.to_string(),
        order,
    })
}

/// `[Unix seconds, nanoseconds]` of a dateTime with seconds and a zone; the
/// fraction may have any number of digits (Mitz sends 7).
pub fn order_key(text: &str) -> Option<(i64, u32)> {
    let secs = crate::util::time::parse_rfc3339(text)?;
    if text.len() <= 10 {
        // A bare date: no time of day to order by within it.
        return Some((secs, 0));
    }
    let nanos = match text.find('.') {
        Some(dot) => {
            let digits: String = text[dot + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let mut padded = digits.chars().take(9).collect::<String>();
            while padded.len() < 9 {
                padded.push('0');
            }
            padded.parse().ok()?
        }
        None => 0,
    };
    Some((secs, nanos))
}

#[cfg(test)]
mod tests;
