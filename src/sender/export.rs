//! Export validation (sans-IO): what the EHR put in `NP_OUTBOX/<partner>/`
//! becomes either an [`Accepted`] export or a [`Rejected`] one with a reason.
//!
//! Rules (DESIGN.md "Folders → Outbox"):
//!
//! - `<case-id>.json` or `<case-id>.xml`: a FHIR STU3 Bundle of type
//!   `collection`, `document`, `transaction` or `searchset`, no larger than
//!   `NP_MAX_BODY`, with exactly one Patient that carries exactly one BSN
//!   (`http://fhir.nl/fhir/NamingSystem/bsn`) passing the 11-test. Every entry
//!   holds a resource with a `resourceType` and a FHIR `id`, and no `Type/id`
//!   occurs twice: the serving side answers reads by `Type/id`, so the EHR must
//!   name every resource (we never invent ids).
//! - `<case-id>.cancel` (any content, never read) cancels the case.
//! - `case-id` matches `[A-Za-z0-9._-]{1,64}`.
//! - Names starting with `.` or ending in `.tmp`/`.part` are in the middle of
//!   being written and are never read ([`is_ignored`]).
//!
//! A reason is one line naming the file and the problem. It never holds a
//! BSN, a resource id or any other content of the file: positions
//! (`entry[3]`) and resource type names (checked to be plain names) only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;

use crate::config::{Config, Kind as PartnerKind};
use crate::fhir::{FhirVersion, table};
use crate::ids::{BSN_SYSTEM, Bsn};
use crate::records::Conflict;

/// Bundle types an export may have.
pub const BUNDLE_TYPES: &[&str] = &["collection", "document", "transaction", "searchset"];

/// Longest case id.
pub const MAX_CASE_ID: usize = 64;

/// Longest FHIR `id` (STU3 `id` datatype).
pub const MAX_RESOURCE_ID: usize = 64;

/// What the rules need from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Largest export in bytes (`NP_MAX_BODY`).
    pub max_bytes: u64,
    /// Names of the configured partners of kind `twiin`.
    pub twiin_partners: Vec<String>,
    /// Names of the configured partners of kind `zorgviewer` (their
    /// folders hold published records, under the same rules).
    pub zorgviewer_partners: Vec<String>,
}

impl Rules {
    /// The rules for a configuration.
    pub fn from_config(config: &Config) -> Rules {
        Rules {
            max_bytes: config.max_body,
            twiin_partners: names_of(config, PartnerKind::Twiin),
            zorgviewer_partners: names_of(config, PartnerKind::Zorgviewer),
        }
    }

    /// True when `folder` is the outbox folder of a configured partner that
    /// takes files: one of kind `twiin` or `zorgviewer`.
    pub fn knows(&self, folder: &str) -> bool {
        self.twiin_partners
            .iter()
            .chain(&self.zorgviewer_partners)
            .any(|p| p == folder)
    }
}

/// The names of the configured partners of one kind.
fn names_of(config: &Config, kind: PartnerKind) -> Vec<String> {
    config
        .partners
        .iter()
        .filter(|p| p.kind_tag() == kind)
        .map(|p| p.name.clone())
        .collect()
}

/// A case id: `[A-Za-z0-9._-]{1,64}`, not starting with `.` (such a file is
/// hidden and never read, and a hidden directory in the case store would be
/// skipped on reload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(String);

impl CaseId {
    /// Checks a case id.
    pub fn parse(text: &str) -> Option<CaseId> {
        let ok = !text.is_empty()
            && text.len() <= MAX_CASE_ID
            && !text.starts_with('.')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| CaseId(text.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::fhir::Format;

/// What a file name says the file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// A file in the middle of being written: never read, never moved.
    Ignored,
    /// `<case-id>.json` / `<case-id>.xml`.
    Data { case_id: CaseId, format: Format },
    /// `<case-id>.cancel`.
    Cancel { case_id: CaseId },
}

/// True for names the agent never reads: starting with `.`, ending in
/// `.tmp` or `.part`.
pub fn is_ignored(name: &[u8]) -> bool {
    name.starts_with(b".") || name.ends_with(b".tmp") || name.ends_with(b".part")
}

/// Classifies a file name (raw bytes, as the file system has it).
pub fn classify(name: &[u8]) -> Result<Name, Problem> {
    if is_ignored(name) {
        return Ok(Name::Ignored);
    }
    let name = std::str::from_utf8(name).map_err(|_| Problem::BadCaseId)?;
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return Err(Problem::UnsupportedExtension);
    };
    let kind = match ext {
        "json" => Some(Format::Json),
        "xml" => Some(Format::Xml),
        "cancel" => None,
        _ => return Err(Problem::UnsupportedExtension),
    };
    let case_id = CaseId::parse(stem).ok_or(Problem::BadCaseId)?;
    Ok(match kind {
        Some(format) => Name::Data { case_id, format },
        None => Name::Cancel { case_id },
    })
}

/// Why an export was refused. `Display` is the problem part of the reason
/// (lower case, one line, no content of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The folder is not a configured twiin partner.
    UnknownPartner,
    /// A file directly in `NP_OUTBOX`, outside any partner folder.
    NotInPartnerFolder,
    /// A symbolic link, FIFO, socket or device.
    NotRegularFile(&'static str),
    /// The name before the extension is not a valid case id.
    BadCaseId,
    /// Not `.json`, `.xml` or `.cancel`.
    UnsupportedExtension,
    /// Larger than `NP_MAX_BODY`.
    TooLarge { size: u64, limit: u64 },
    /// Not well-formed or refused by the FHIR reader.
    Invalid { format: Format, detail: String },
    /// The root resource is not a Bundle.
    NotABundle { found: String },
    /// `Bundle.type` is missing or not one of [`BUNDLE_TYPES`].
    WrongBundleType,
    /// `Bundle.entry` is present but not a list.
    EntryNotAList,
    /// `entry[i]` has no `resource` object.
    EntryWithoutResource { index: usize },
    /// `entry[i].resource` has no `resourceType` naming an STU3 resource.
    ResourceWithoutType { index: usize },
    /// `entry[i].resource` has no `id`.
    ResourceWithoutId { index: usize },
    /// `entry[i].resource.id` is not a FHIR id (`[A-Za-z0-9.-]{1,64}`).
    InvalidResourceId { index: usize },
    /// `entry[index]` has the same `Type/id` as `entry[first]`.
    DuplicateResource {
        index: usize,
        first: usize,
        resource_type: String,
    },
    /// No Patient resource.
    NoPatient,
    /// More than one Patient resource.
    SeveralPatients(usize),
    /// The Patient has no identifier with the BSN system.
    NoBsn,
    /// The BSN fails the 11-test (or is not 9 digits).
    BadBsn,
    /// The Patient carries two different BSNs.
    SeveralBsns,
    /// An export for a case that was cancelled.
    CaseCancelled,
    /// An update for a case whose earlier exports were about another patient.
    OtherPatient,
    /// A `.cancel` for a case we never exported.
    UnknownCase,
    /// A `.cancel` for a record never published to this partner.
    UnknownRecord,
    /// A publication the record store refuses (it would make a patient
    /// lookup ambiguous).
    Record(Conflict),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownPartner => f.write_str("unknown partner folder"),
            Problem::NotInPartnerFolder => {
                f.write_str("not in a partner folder (NP_OUTBOX/<partner>/<case-id>.json)")
            }
            Problem::NotRegularFile(what) => write!(f, "not a regular file ({what})"),
            Problem::BadCaseId => write!(
                f,
                "bad case-id: the name before the extension must match [A-Za-z0-9._-]{{1,{MAX_CASE_ID}}}"
            ),
            Problem::UnsupportedExtension => {
                f.write_str("unsupported extension: expected .json, .xml or .cancel")
            }
            Problem::TooLarge { size, limit } => write!(
                f,
                "file is {size} bytes, over the limit of {limit} bytes (NP_MAX_BODY)"
            ),
            Problem::Invalid { format, detail } => {
                write!(f, "invalid {}: {detail}", format.name())
            }
            Problem::NotABundle { found } => {
                write!(f, "not a Bundle (resourceType is {found})")
            }
            Problem::WrongBundleType => write!(
                f,
                "wrong Bundle type: Bundle.type must be one of {}",
                BUNDLE_TYPES.join(", ")
            ),
            Problem::EntryNotAList => f.write_str("Bundle.entry is not a list"),
            Problem::EntryWithoutResource { index } => {
                write!(f, "entry[{index}] has no resource")
            }
            Problem::ResourceWithoutType { index } => {
                write!(f, "entry[{index}].resource has no STU3 resourceType")
            }
            Problem::ResourceWithoutId { index } => write!(
                f,
                "entry[{index}].resource has no id (every exported resource needs one)"
            ),
            Problem::InvalidResourceId { index } => write!(
                f,
                "entry[{index}].resource.id is not a FHIR id ([A-Za-z0-9.-]{{1,{MAX_RESOURCE_ID}}})"
            ),
            Problem::DuplicateResource {
                index,
                first,
                resource_type,
            } => write!(
                f,
                "duplicate resource: entry[{index}] has the same {resource_type} id as entry[{first}]"
            ),
            Problem::NoPatient => f.write_str("no Patient in the Bundle"),
            Problem::SeveralPatients(n) => {
                write!(f, "{n} Patients in the Bundle; exactly one expected")
            }
            Problem::NoBsn => write!(f, "the Patient has no BSN identifier ({BSN_SYSTEM})"),
            Problem::BadBsn => f.write_str("the Patient's BSN fails the 11-test"),
            Problem::SeveralBsns => f.write_str("the Patient has more than one BSN"),
            Problem::CaseCancelled => f.write_str("case was cancelled"),
            Problem::OtherPatient => {
                f.write_str("case belongs to another patient: an update must keep the patient")
            }
            Problem::UnknownCase => f.write_str("cancel for an unknown case"),
            Problem::UnknownRecord => f.write_str("cancel for an unknown record"),
            Problem::Record(conflict) => write!(f, "{conflict}"),
        }
    }
}

/// A refused file: its (display-safe) name and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The file name, control characters replaced (see [`display_name`]).
    pub file: String,
    pub problem: Problem,
}

impl Rejected {
    pub fn new(file: &[u8], problem: Problem) -> Rejected {
        Rejected {
            file: display_name(file),
            problem,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.problem)
    }
}

impl std::error::Error for Rejected {}

/// A file name fit for a one-line reason: invalid UTF-8, control characters
/// and line breaks become `?`; at most 200 characters.
pub fn display_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name)
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                '?'
            } else {
                c
            }
        })
        .take(200)
        .collect()
}

/// Longest name a refused file keeps in `.rejected`. Longer names get a
/// generated one ([`RejectedName`]): the stored name, a timestamp suffix
/// that keeps it unique, `.error.txt` and the durable writer's temp name
/// around it must stay under `NAME_MAX` (255 bytes).
pub const MAX_KEPT_NAME: usize = 128;

/// Prefix of a generated name in `.rejected`.
pub const GENERATED_PREFIX: &str = "bad-name-";

/// The name a refused file gets in `.rejected`: its own when that is
/// printable UTF-8 of at most [`MAX_KEPT_NAME`] bytes, else
/// `bad-name-<16 hex digits of the SHA-256 of the raw name>`. Only
/// [`RejectedName::for_file`] builds one, so every name used there is
/// valid UTF-8, one line, and short enough for every suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedName {
    name: String,
    generated: bool,
}

impl RejectedName {
    pub fn for_file(raw: &[u8]) -> RejectedName {
        let kept = std::str::from_utf8(raw).ok().filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_KEPT_NAME
                && !s.starts_with('.')
                && !s.chars().any(|c| c.is_control() || c == '/')
        });
        match kept {
            Some(s) => RejectedName {
                name: s.to_string(),
                generated: false,
            },
            None => {
                let digest = ring::digest::digest(&ring::digest::SHA256, raw);
                let hex = crate::util::b64::hex(digest.as_ref().get(..8).unwrap_or_default());
                RejectedName {
                    name: format!("{GENERATED_PREFIX}{hex}"),
                    generated: true,
                }
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// True when the file's own name could not be kept.
    pub fn is_generated(&self) -> bool {
        self.generated
    }
}

/// A file name written so that every byte of it can be recovered and the
/// text stays one printable line: printable UTF-8 as it is, `\` as `\\`,
/// every other byte (invalid UTF-8, control characters) as `\xNN`. Never
/// shortened.
pub fn escape_name(name: &[u8]) -> String {
    let hex = |out: &mut String, b: u8| {
        out.push_str("\\x");
        out.push_str(&crate::util::b64::hex(&[b]));
    };
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    hex(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            hex(&mut out, *b);
        }
    }
    out
}

/// A file name for a log line (`file=`): a name the folder contract accepts
/// (`<case-id>.json|.xml|.cancel`, whose case id the log names as `case=`)
/// as it is, any other name marked and reduced like every value chosen outside
/// the agent ([`crate::ops::logging::P`]): it cannot add a field or carry a BSN.
pub fn log_name(name: &[u8]) -> String {
    match classify(name) {
        Ok(Name::Data { .. } | Name::Cancel { .. }) => display_name(name),
        _ => crate::ops::logging::P(&display_name(name)).to_string(),
    }
}

/// An export that passed every rule. Only [`validate`] builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    case_id: CaseId,
    kind: Kind,
}

impl Accepted {
    pub fn case_id(&self) -> &CaseId {
        &self.case_id
    }

    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    pub fn into_parts(self) -> (CaseId, Kind) {
        (self.case_id, self.kind)
    }
}

/// What an accepted export asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// New or updated data for the case.
    Data(Data),
    /// Cancel the case.
    Cancel,
}

/// A checked data export.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    bundle: Value,
    patient: Bsn,
    patient_id: String,
    resources: Resources,
}

impl Data {
    /// The Bundle in its JSON form.
    pub fn bundle(&self) -> &Value {
        &self.bundle
    }

    /// The Patient's BSN (11-test passed).
    pub fn patient(&self) -> &Bsn {
        &self.patient
    }

    /// The Patient's `id` (a FHIR id).
    pub fn patient_id(&self) -> &str {
        &self.patient_id
    }

    /// Every resource in the Bundle, in entry order.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }
}

/// One exported resource: what the notification Task needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub resource_type: String,
    pub id: String,
    /// `(system, code)` of every `category` coding (single or repeated), for
    /// choosing a BgZ query that returns all resources of the type.
    pub categories: Vec<(String, String)>,
}

/// The resources of an export, in entry order, each `Type/id` once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources(Vec<ResourceRef>);

impl Resources {
    pub fn new(refs: Vec<ResourceRef>) -> Resources {
        Resources(refs)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResourceRef> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resource count per type, types in name order.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for r in &self.0 {
            *m.entry(r.resource_type.as_str()).or_insert(0) += 1;
        }
        m
    }
}

/// Checks one outbox file. `partner` is the name of the folder it is in.
/// A `.cancel` file is accepted on its name alone: its bytes are not looked at.
pub fn validate(
    file_name: &[u8],
    bytes: &[u8],
    partner: &str,
    rules: &Rules,
) -> Result<Accepted, Rejected> {
    let reject = |problem| Rejected::new(file_name, problem);
    if !rules.knows(partner) {
        return Err(reject(Problem::UnknownPartner));
    }
    let (case_id, format) = match classify(file_name).map_err(reject)? {
        // The scanner never hands these over; refuse rather than guess.
        Name::Ignored => return Err(reject(Problem::BadCaseId)),
        Name::Cancel { case_id } => {
            return Ok(Accepted {
                case_id,
                kind: Kind::Cancel,
            });
        }
        Name::Data { case_id, format } => (case_id, format),
    };
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > rules.max_bytes {
        return Err(reject(Problem::TooLarge {
            size,
            limit: rules.max_bytes,
        }));
    }
    let bundle = parse_document(bytes, format, rules.max_bytes).map_err(reject)?;
    let (patient, patient_id, resources) = check_bundle(&bundle).map_err(reject)?;
    Ok(Accepted {
        case_id,
        kind: Kind::Data(Data {
            bundle,
            patient,
            patient_id,
            resources,
        }),
    })
}

/// Deepest nesting accepted in an export (JSON objects and arrays, or XML
/// elements): room for nested Questionnaire items and extensions.
pub const MAX_DEPTH: usize = 64;

/// The one place export bytes become JSON: the hardened FHIR reader (size
/// and depth caps, duplicate JSON keys refused, XML without DOCTYPE or
/// entities and checked against the STU3 definitions, narratives checked).
fn parse_document(bytes: &[u8], format: Format, max_bytes: u64) -> Result<Value, Problem> {
    let limits = crate::fhir::Limits {
        max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        max_depth: MAX_DEPTH,
    };
    // FhirError names positions and element paths, never content.
    crate::fhir::parse(bytes, format, FhirVersion::Stu3, &limits).map_err(|e| Problem::Invalid {
        format,
        detail: e.to_string(),
    })
}

/// The Bundle rules; returns the patient's BSN and id, and the resource list.
fn check_bundle(bundle: &Value) -> Result<(Bsn, String, Resources), Problem> {
    let root_type = bundle.get("resourceType").and_then(Value::as_str);
    if root_type != Some("Bundle") {
        return Err(Problem::NotABundle {
            found: root_type.map_or("missing", safe_type).to_string(),
        });
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some(t) if BUNDLE_TYPES.contains(&t) => {}
        _ => return Err(Problem::WrongBundleType),
    }
    let entries: &[Value] = match bundle.get("entry") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Problem::EntryNotAList),
    };
    let mut refs = Vec::with_capacity(entries.len());
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut patients = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
            return Err(Problem::EntryWithoutResource { index });
        };
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .filter(|t| is_type_name(t))
            .ok_or(Problem::ResourceWithoutType { index })?;
        let id = match resource.get("id") {
            None | Some(Value::Null) => return Err(Problem::ResourceWithoutId { index }),
            Some(Value::String(s)) if is_fhir_id(s) => s.as_str(),
            Some(_) => return Err(Problem::InvalidResourceId { index }),
        };
        if let Some(first) = seen.insert((resource_type, id), index) {
            return Err(Problem::DuplicateResource {
                index,
                first,
                resource_type: resource_type.to_string(),
            });
        }
        if resource_type == "Patient" {
            patients.push((resource, id));
        }
        refs.push(ResourceRef {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            categories: categories(resource),
        });
    }
    let (patient, patient_id) = match patients.as_slice() {
        [] => return Err(Problem::NoPatient),
        [(one, id)] => (bsn_of(one)?, id.to_string()),
        more => return Err(Problem::SeveralPatients(more.len())),
    };
    Ok((patient, patient_id, Resources(refs)))
}

/// The one BSN of a Patient.
fn bsn_of(patient: &Value) -> Result<Bsn, Problem> {
    let identifiers: &[Value] = match patient.get("identifier") {
        Some(Value::Array(a)) => a,
        _ => &[],
    };
    let mut found: Option<Bsn> = None;
    for ident in identifiers {
        if ident.get("system").and_then(Value::as_str) != Some(BSN_SYSTEM) {
            continue;
        }
        let bsn = ident
            .get("value")
            .and_then(Value::as_str)
            .and_then(Bsn::parse)
            .ok_or(Problem::BadBsn)?;
        match &found {
            Some(earlier) if *earlier != bsn => return Err(Problem::SeveralBsns),
            _ => found = Some(bsn),
        }
    }
    found.ok_or(Problem::NoBsn)
}

/// `(system, code)` pairs of `resource.category`, whether it is one
/// CodeableConcept or a list of them.
fn categories(resource: &Value) -> Vec<(String, String)> {
    let concepts: Vec<&Value> = match resource.get("category") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(c @ Value::Object(_)) => vec![c],
        _ => Vec::new(),
    };
    concepts
        .into_iter()
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten()
        .filter_map(|coding| {
            Some((
                coding.get("system")?.as_str()?.to_string(),
                coding.get("code")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A resource type of FHIR STU3.
fn is_type_name(t: &str) -> bool {
    t.len() <= 64
        && t.bytes().all(|b| b.is_ascii_alphabetic())
        && table::table(FhirVersion::Stu3).resource(t).is_some()
}

/// `t` when it is a plain type name, else `?` (it goes into a reason).
fn safe_type(t: &str) -> &str {
    if is_type_name(t) { t } else { "?" }
}

/// The STU3 `id` datatype: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RESOURCE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BSN: &str = "999999151";

    fn rules() -> Rules {
        Rules {
            max_bytes: 4096,
            twiin_partners: vec!["hospb".into()],
            zorgviewer_partners: Vec::new(),
        }
    }

    fn patient(id: &str, bsn: &str) -> Value {
        json!({"resource": {"resourceType": "Patient", "id": id,
            "identifier": [{"system": BSN_SYSTEM, "value": bsn}]}})
    }

    fn bundle(entries: Vec<Value>) -> Value {
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
    }

    fn good() -> Value {
        bundle(vec![
            patient("p1", BSN),
            json!({"resource": {"resourceType": "Condition", "id": "c1"}}),
            json!({"resource": {"resourceType": "MedicationStatement", "id": "m1",
                "category": {"coding": [{"system": "urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3", "code": "6"}]}}}),
        ])
    }

    fn check(name: &str, value: &Value) -> Result<Accepted, Rejected> {
        validate(
            name.as_bytes(),
            &serde_json::to_vec(value).unwrap(),
            "hospb",
            &rules(),
        )
    }

    fn problem(name: &str, value: &Value) -> Problem {
        check(name, value).unwrap_err().problem
    }

    #[test]
    fn accepts_a_good_export() {
        let a = check("c-0042.json", &good()).unwrap();
        assert_eq!(a.case_id().as_str(), "c-0042");
        let Kind::Data(d) = a.kind() else {
            panic!("not data")
        };
        assert_eq!(d.patient().as_str(), BSN);
        assert_eq!(d.resources().len(), 3);
        let counts = d.resources().counts();
        assert_eq!(counts.get("Patient"), Some(&1));
        let ms = d.resources().iter().nth(2).unwrap();
        assert_eq!(
            ms.categories,
            vec![(
                "urn:oid:2.16.840.1.113883.2.4.3.11.60.20.77.5.3".to_string(),
                "6".to_string()
            )]
        );
        for t in BUNDLE_TYPES {
            let mut b = good();
            b["type"] = json!(t);
            assert!(check("a.json", &b).is_ok(), "{t}");
        }
        // A UTF-8 byte order mark is allowed.
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(serde_json::to_vec(&good()).unwrap());
        assert!(validate(b"a.json", &bytes, "hospb", &rules()).is_ok());
    }

    #[test]
    fn cancel_is_accepted_on_its_name() {
        let a = validate(b"c-0042.cancel", b"\xff anything", "hospb", &rules()).unwrap();
        assert_eq!(a.kind(), &Kind::Cancel);
        assert_eq!(a.case_id().as_str(), "c-0042");
        let huge = vec![b'x'; 10_000];
        assert!(validate(b"c.cancel", &huge, "hospb", &rules()).is_ok());
    }

    #[test]
    fn unknown_partner_folder() {
        let r = validate(b"c1.json", b"{}", "stranger", &rules()).unwrap_err();
        assert_eq!(r.problem, Problem::UnknownPartner);
        assert_eq!(r.to_string(), "c1.json: unknown partner folder");
    }

    #[test]
    fn names() {
        assert_eq!(classify(b".c1.json"), Ok(Name::Ignored));
        assert_eq!(classify(b"c1.json.tmp"), Ok(Name::Ignored));
        assert_eq!(classify(b"c1.json.part"), Ok(Name::Ignored));
        assert_eq!(
            classify(b"a.B_c-9.json"),
            Ok(Name::Data {
                case_id: CaseId::parse("a.B_c-9").unwrap(),
                format: Format::Json
            })
        );
        assert_eq!(
            classify(b"c1.xml"),
            Ok(Name::Data {
                case_id: CaseId::parse("c1").unwrap(),
                format: Format::Xml
            })
        );
        let long = "x".repeat(64);
        assert!(classify(format!("{long}.json").as_bytes()).is_ok());
        assert!(CaseId::parse(".x").is_none());
    }

    #[test]
    fn bad_case_id() {
        for name in [
            "c 1.json".as_bytes(),
            b"c/1.json",
            b".json".as_slice(),
            "é.json".as_bytes(),
            b"c\xff.json",
            format!("{}.json", "x".repeat(65)).as_bytes(),
        ] {
            if is_ignored(name) {
                continue;
            }
            let r = validate(name, b"{}", "hospb", &rules()).unwrap_err();
            assert_eq!(r.problem, Problem::BadCaseId, "{}", display_name(name));
        }
        assert!(
            problem("c:1.json", &good())
                .to_string()
                .starts_with("bad case-id")
        );
    }

    #[test]
    fn unsupported_extension() {
        for name in ["c1.JSON", "c1.txt", "c1", "c1.json.gz", "c1.error.txt"] {
            assert_eq!(
                problem(name, &good()),
                Problem::UnsupportedExtension,
                "{name}"
            );
        }
    }

    #[test]
    fn over_the_size_limit() {
        let mut b = good();
        b["padding"] = json!("x".repeat(5000));
        let r = check("c1.json", &b).unwrap_err();
        assert!(matches!(r.problem, Problem::TooLarge { limit: 4096, .. }));
        assert!(r.to_string().contains("NP_MAX_BODY"), "{r}");
    }

    #[test]
    fn invalid_json() {
        let r = validate(
            b"c1.json",
            b"{\"resourceType\": \"Bundle\",",
            "hospb",
            &rules(),
        )
        .unwrap_err();
        assert!(matches!(
            r.problem,
            Problem::Invalid {
                format: Format::Json,
                ..
            }
        ));
        assert!(r.to_string().starts_with("c1.json: invalid json: "), "{r}");
        let r = validate(b"c1.json", BSN.as_bytes(), "hospb", &rules()).unwrap_err();
        assert!(!r.to_string().contains(BSN), "{r}");
    }

    #[test]
    fn not_a_bundle() {
        let p = json!({"resourceType": "Patient", "id": "p"});
        assert_eq!(
            problem("c1.json", &p),
            Problem::NotABundle {
                found: "Patient".into()
            }
        );
        assert_eq!(
            problem("c1.json", &json!({"resourceType": BSN})).to_string(),
            "not a Bundle (resourceType is ?)"
        );
        assert!(matches!(
            problem("c1.json", &json!([1])),
            Problem::Invalid { .. }
        ));
    }

    #[test]
    fn wrong_bundle_type() {
        for t in [json!("message"), json!(null), json!(3), json!("Collection")] {
            let mut b = good();
            b["type"] = t;
            assert_eq!(problem("c1.json", &b), Problem::WrongBundleType);
        }
        let mut b = good();
        b.as_object_mut().unwrap().remove("type");
        assert_eq!(problem("c1.json", &b), Problem::WrongBundleType);
    }

    #[test]
    fn patients() {
        assert_eq!(
            problem(
                "c1.json",
                &bundle(vec![
                    json!({"resource": {"resourceType": "Condition", "id": "c"}})
                ])
            ),
            Problem::NoPatient
        );
        let mut empty = good();
        empty.as_object_mut().unwrap().remove("entry");
        assert_eq!(problem("c1.json", &empty), Problem::NoPatient);
        assert_eq!(
            problem(
                "c1.json",
                &bundle(vec![patient("p1", BSN), patient("p2", BSN)])
            ),
            Problem::SeveralPatients(2)
        );
    }

    #[test]
    fn bsn_rules() {
        let no_bsn = bundle(vec![
            json!({"resource": {"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "urn:oid:1.2.3", "value": BSN}]}}),
        ]);
        assert_eq!(problem("c1.json", &no_bsn), Problem::NoBsn);
        let no_ident = bundle(vec![
            json!({"resource": {"resourceType": "Patient", "id": "p"}}),
        ]);
        assert_eq!(problem("c1.json", &no_ident), Problem::NoBsn);
        let bad = bundle(vec![patient("p", "999999152")]);
        let r = check("c1.json", &bad).unwrap_err();
        assert_eq!(r.problem, Problem::BadBsn);
        assert!(!r.to_string().contains("999999152"), "{r}");
        let not_string = bundle(vec![
            json!({"resource": {"resourceType": "Patient", "id": "p",
            "identifier": [{"system": BSN_SYSTEM, "value": 999999151}]}}),
        ]);
        assert_eq!(problem("c1.json", &not_string), Problem::BadBsn);
        let two = bundle(vec![
            json!({"resource": {"resourceType": "Patient", "id": "p",
            "identifier": [{"system": BSN_SYSTEM, "value": BSN},
                           {"system": BSN_SYSTEM, "value": "999999990"}]}}),
        ]);
        assert_eq!(problem("c1.json", &two), Problem::SeveralBsns);
        let same_twice = bundle(vec![
            json!({"resource": {"resourceType": "Patient", "id": "p",
            "identifier": [{"system": BSN_SYSTEM, "value": BSN},
                           {"system": BSN_SYSTEM, "value": BSN}]}}),
        ]);
        assert!(check("c1.json", &same_twice).is_ok());
    }

    #[test]
    fn entries_need_resource_type_and_id() {
        let with = |e: Value| bundle(vec![patient("p", BSN), e]);
        assert_eq!(
            problem("c1.json", &with(json!({"fullUrl": "urn:uuid:x"}))),
            Problem::EntryWithoutResource { index: 1 }
        );
        assert_eq!(
            problem("c1.json", &with(json!({"resource": "Condition/1"}))),
            Problem::EntryWithoutResource { index: 1 }
        );
        assert_eq!(
            problem("c1.json", &with(json!({"resource": {"id": "x"}}))),
            Problem::ResourceWithoutType { index: 1 }
        );
        assert_eq!(
            problem(
                "c1.json",
                &with(json!({"resource": {"resourceType": "con dition", "id": "x"}}))
            ),
            Problem::ResourceWithoutType { index: 1 }
        );
        assert_eq!(
            problem(
                "c1.json",
                &with(json!({"resource": {"resourceType": "Condition"}}))
            ),
            Problem::ResourceWithoutId { index: 1 }
        );
        for bad_id in [
            json!("../etc"),
            json!(""),
            json!(7),
            json!("a b"),
            json!("x".repeat(65)),
        ] {
            assert_eq!(
                problem(
                    "c1.json",
                    &with(json!({"resource": {"resourceType": "Condition", "id": bad_id}}))
                ),
                Problem::InvalidResourceId { index: 1 }
            );
        }
        let mut b = good();
        b["entry"] = json!({"resource": {}});
        assert_eq!(problem("c1.json", &b), Problem::EntryNotAList);
    }

    #[test]
    fn duplicate_type_and_id() {
        let b = bundle(vec![
            json!({"resource": {"resourceType": "Condition", "id": BSN}}),
            patient("p", BSN),
            json!({"resource": {"resourceType": "Condition", "id": BSN}}),
        ]);
        let r = check("c1.json", &b).unwrap_err();
        assert_eq!(
            r.problem,
            Problem::DuplicateResource {
                index: 2,
                first: 0,
                resource_type: "Condition".into()
            }
        );
        assert!(!r.to_string().contains(BSN), "ids stay out: {r}");
        // The same id under another type is fine.
        let ok = bundle(vec![
            patient("x1", BSN),
            json!({"resource": {"resourceType": "Condition", "id": "x1"}}),
        ]);
        assert!(check("c1.json", &ok).is_ok());
    }

    #[test]
    fn reasons_are_one_line() {
        let r = Rejected::new(b"c\n1\x1b.json", Problem::BadCaseId);
        assert!(!r.to_string().contains('\n'));
        assert!(r.to_string().starts_with("c?1?.json: "));
        assert_eq!(display_name(b"\xffa"), "?a");
    }

    #[test]
    fn escaped_names_keep_every_byte_on_one_line() {
        assert_eq!(escape_name(b"c1.json"), "c1.json");
        assert_eq!(
            escape_name(b"a\\b\n\r\t\x7f\xff\xc3\xa9\xc3.json"),
            "a\\\\b\\x0a\\x0d\\x09\\x7f\\xff\u{e9}\\xc3.json"
        );
        // A C1 control character: both of its bytes.
        assert_eq!(escape_name("x\u{85}".as_bytes()), "x\\xc2\\x85");
        let long = "n".repeat(300);
        assert_eq!(escape_name(long.as_bytes()), long, "never shortened");
    }
}
