//! The notification Task we receive (Twiin-01, spec §7): sans-IO validation
//! of its JSON form into a [`ValidatedTask`] holding everything the intake and
//! the pull need, including the [`PullPlan`].
//!
//! Lenient where partners differ (spec §7.3/§7.5, DESIGN.md "Incoming
//! Tasks"): `identifier` as object or array; any coding system on `Task.code`
//! and the inputs as long as the code matches; `valueString` or
//! `valueReference` reads; `owner` absent; URA or AGB organisations in both OID
//! styles and by NamingSystem URI; STU3 (`requester.onBehalfOf`) and R4
//! (`requester.identifier`) requesters; URL-encoded or raw queries, kept
//! verbatim.
//!
//! Strict where it matters: every refusal is a [`Refusal`] with the HTTP
//! status and the FHIRPath of the element (`Task.input[3].valueString`), and
//! every read or query must be relative to the sender's FHIR base: no scheme,
//! no host, no leading `/`, no `//` or `..` segments, no control characters.
//! Refusal messages never repeat element content (it may be a BSN).
//!
//! Status codes: 400 for missing or malformed elements and rule violations
//! (DESIGN.md wins over spec §7.5's 422); 403 when the Task's requesting
//! organisation is not the token's, when `owner` is not one of our
//! organisations, or when the token named another patient.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::fhir::Refusal;
use crate::ids::{self, BSN_OID_ROOT, BSN_SYSTEM, Bsn, URA_SYSTEM, URI_SYSTEM};
use crate::ids::{AGB_OID_ROOT, IdScheme, OrgId, URA_OID_ROOT};
use crate::util::b64::sha256_hex32;
use crate::util::url;

/// `Task.code` of a notification.
pub const CODE_PULL_NOTIFICATION: &str = "pull-notification";
/// Input codes with a meaning of their own (any code system).
pub const INPUT_AUTHORIZATION_BASE: &str = "authorization-base";
pub const INPUT_GET_WORKFLOW_TASK: &str = "get-workflow-task";
pub const INPUT_READ_RESOURCE: &str = "read-resource";
pub const INPUT_READ_AVAILABLE_RESOURCE: &str = "read-available-resource";
pub const INPUT_SEARCH_RESOURCE: &str = "search-resource";
/// AGB NamingSystem URIs seen in the wild.
pub const AGB_SYSTEMS: &[&str] = &[
    "http://fhir.nl/fhir/NamingSystem/agb-z",
    "http://fhir.nl/fhir/NamingSystem/agb",
];

/// Most reads and queries one Task may ask for.
pub const MAX_PLAN_ENTRIES: usize = 250;
/// Longest identifier system or value accepted.
pub const MAX_IDENTIFIER_LEN: usize = 256;
/// Longest authorization base accepted.
pub const MAX_AUTHORIZATION_BASE_LEN: usize = 4096;
/// Longest read or query accepted.
pub const MAX_QUERY_LEN: usize = 4096;

/// A business identifier (`Task.identifier`, `Task.groupIdentifier`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskIdentifier {
    /// `system`, when the partner sent one.
    pub system: Option<String>,
    pub value: String,
}

impl TaskIdentifier {
    /// The file-system name of this identifier (DESIGN.md "Inbox names"): the
    /// bare lower-case UUID of a `urn:uuid:` value, else the first 32 hex
    /// digits of SHA-256 of `system|value` (absent system = empty string).
    pub fn inbox_name(&self) -> String {
        if let Some(uuid) = strip_prefix_ci(&self.value, "urn:uuid:") {
            if crate::util::random::is_uuid(uuid) {
                return uuid.to_ascii_lowercase();
            }
        }
        let text = format!("{}|{}", self.system.as_deref().unwrap_or(""), self.value);
        sha256_hex32(text.as_bytes())
    }
}

/// `Task.status` of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Requested,
    Cancelled,
}

/// What to fetch from the sender's FHIR base, in Task order, values verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullPlan {
    /// `<Type>/<id>` reads (`read-resource`, `read-available-resource`).
    pub reads: Vec<String>,
    /// Searches and operations relative to the base, exactly as sent
    /// (percent-encoded or raw).
    pub queries: Vec<String>,
}

impl PullPlan {
    /// Reads plus queries.
    pub fn len(&self) -> usize {
        self.reads.len() + self.queries.len()
    }

    /// True when there is nothing to fetch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the Task must agree with: the token's grant and our organisations.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Our organisations; a present `owner` must be one of them.
    pub ours: Vec<OrgId>,
    /// The organisation of the token's grant (`sub` of the authorization assertion).
    pub requester: OrgId,
    /// The patient of the token's grant, when it carried one.
    pub patient: Option<Bsn>,
    /// Unix seconds.
    pub now: i64,
}

impl Expect {
    /// From the configuration and the token's grant (whose organisation the
    /// token endpoint read in the partner's id scheme); `None` for a grant
    /// without a requesting organisation (not a notify or pull grant).
    pub fn from_grant(
        config: &crate::config::Config,
        grant: &crate::oauth::grants::Grant,
        now: i64,
    ) -> Option<Expect> {
        let mut ours = vec![OrgId::Ura(config.org_ura.clone())];
        if let Some(agb) = &config.org_agb {
            ours.push(OrgId::Agb(agb.clone()));
        }
        Some(Expect {
            ours,
            requester: grant.requesting_org()?.clone(),
            patient: grant.patient().cloned(),
            now,
        })
    }
}

/// A notification Task that passed every check. Only [`validate`] builds one.
#[derive(Debug, Clone)]
pub struct ValidatedTask {
    identifier: TaskIdentifier,
    group: TaskIdentifier,
    status: TaskStatus,
    bsn: Bsn,
    requester: OrgId,
    owner: Option<OrgId>,
    restriction_end: Option<i64>,
    authorization_base: String,
    get_workflow_task: bool,
    workflow_task: Option<String>,
    plan: PullPlan,
    resource: Value,
}

impl ValidatedTask {
    /// `Task.identifier`.
    pub fn identifier(&self) -> &TaskIdentifier {
        &self.identifier
    }
    /// `Task.groupIdentifier`, or the identifier when absent.
    pub fn group(&self) -> &TaskIdentifier {
        &self.group
    }
    pub fn status(&self) -> TaskStatus {
        self.status
    }
    /// The patient (`for.identifier`), 11-test passed.
    pub fn bsn(&self) -> &Bsn {
        &self.bsn
    }
    /// The requesting (sending) organisation.
    pub fn requester(&self) -> &OrgId {
        &self.requester
    }
    /// `owner`, one of our organisations, when present.
    pub fn owner(&self) -> Option<&OrgId> {
        self.owner.as_ref()
    }
    /// `restriction.period.end` as Unix seconds (a bare date counts to its end).
    pub fn restriction_end(&self) -> Option<i64> {
        self.restriction_end
    }
    /// The `authorization-base` input, verbatim.
    pub fn authorization_base(&self) -> &str {
        &self.authorization_base
    }
    /// The `get-workflow-task` input (false when absent).
    pub fn get_workflow_task(&self) -> bool {
        self.get_workflow_task
    }
    /// `Task/<id>` of the workflow Task (`basedOn`), required when
    /// `get-workflow-task` is true.
    pub fn workflow_task(&self) -> Option<&str> {
        self.workflow_task.as_deref()
    }
    /// What to pull.
    pub fn plan(&self) -> &PullPlan {
        &self.plan
    }
    /// The Task as received (its JSON form).
    pub fn resource(&self) -> &Value {
        &self.resource
    }
}

/// Checks a notification Task (status `requested` or `cancelled`) against
/// the spec and against `expect`. Every 400 check runs before the 403 checks,
/// so a 403 means "well-formed, but not yours".
pub fn validate(task: Value, expect: &Expect) -> Result<ValidatedTask, Refusal> {
    check_resource_type(&task)?;
    let identifier = identifier_at(task.get("identifier"), "Task.identifier")?
        .ok_or_else(|| Refusal::required("Task.identifier", "the Task has no identifier"))?;
    let group = identifier_at(task.get("groupIdentifier"), "Task.groupIdentifier")?
        .unwrap_or_else(|| identifier.clone());
    let status = status_of(&task)?;
    match task.get("intent") {
        Some(Value::String(s)) if s == "proposal" => {}
        None | Some(Value::Null) => {
            return Err(Refusal::required("Task.intent", "intent must be proposal"));
        }
        Some(_) => return Err(Refusal::value("Task.intent", "intent must be proposal")),
    }
    if !codes(task.get("code")).any(|c| c == CODE_PULL_NOTIFICATION) {
        return Err(match task.get("code") {
            None | Some(Value::Null) => {
                Refusal::required("Task.code", "code pull-notification is missing")
            }
            Some(_) => Refusal::value("Task.code", "code must be pull-notification"),
        });
    }
    let bsn = bsn_of(&task)?;
    let (requester, requester_path) = requester_of(&task)?.ok_or_else(|| {
        Refusal::required(
            "Task.requester.onBehalfOf.identifier",
            "the requesting organisation is missing",
        )
    })?;
    let owner = owner_of(&task)?;
    let restriction_end = restriction_end_of(&task, expect.now)?;
    let inputs = inputs_of(&task, true)?;
    let authorization_base = match inputs.authorization_bases.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Refusal::required(
                "Task.input",
                "an authorization-base input is required",
            ));
        }
        [_, ..] => {
            return Err(Refusal::value(
                format!("Task.input[{}]", inputs.second_base_index.unwrap_or(0)),
                "exactly one authorization-base input is allowed",
            ));
        }
    };
    let workflow_task = if inputs.get_workflow_task {
        Some(based_on(&task)?)
    } else {
        None
    };
    if inputs.plan.is_empty() && !inputs.get_workflow_task {
        return Err(Refusal::required(
            "Task.input",
            "no read or query input, and get-workflow-task is not true",
        ));
    }
    // The 403 checks.
    if requester != expect.requester {
        return Err(Refusal::forbidden(
            "the requesting organisation is not the organisation of the access token",
        )
        .at(requester_path));
    }
    if let Some(o) = &owner {
        if !expect.ours.contains(o) {
            return Err(
                Refusal::forbidden("owner is not an organisation of this receiver")
                    .at("Task.owner"),
            );
        }
    }
    if expect.patient.as_ref().is_some_and(|p| *p != bsn) {
        return Err(
            Refusal::forbidden("the patient is not the patient of the access token")
                .at("Task.for.identifier"),
        );
    }
    Ok(ValidatedTask {
        identifier,
        group,
        status,
        bsn,
        requester,
        owner,
        restriction_end,
        authorization_base,
        get_workflow_task: inputs.get_workflow_task,
        workflow_task,
        plan: inputs.plan,
        resource: task,
    })
}

/// A cancellation Task that passed the (lenient) checks: `resourceType`
/// Task, `status` cancelled, identifier well-formed when present, and a
/// requesting organisation, when one can be read, that is the token's.
#[derive(Debug, Clone)]
pub struct ValidatedCancellation {
    identifier: Option<TaskIdentifier>,
    resource: Value,
}

impl ValidatedCancellation {
    /// `Task.identifier`, when the body carries one.
    pub fn identifier(&self) -> Option<&TaskIdentifier> {
        self.identifier.as_ref()
    }
    /// The cancellation Task as received (JSON form).
    pub fn resource(&self) -> &Value {
        &self.resource
    }
}

/// Checks the body of a cancellation (conditional update, or a POST with
/// status `cancelled`). The profile fixes only `identifier` and `status`, so
/// nothing else is required.
pub fn validate_cancellation(
    task: Value,
    expect: &Expect,
) -> Result<ValidatedCancellation, Refusal> {
    check_resource_type(&task)?;
    if status_of(&task)? != TaskStatus::Cancelled {
        return Err(Refusal::value(
            "Task.status",
            "a cancellation must have status cancelled",
        ));
    }
    let identifier = identifier_at(task.get("identifier"), "Task.identifier")?;
    // Lenient: a requester we cannot read is ignored; one we can read must be the token's.
    if let Ok(Some((r, path))) = requester_of(&task) {
        if r != expect.requester {
            return Err(Refusal::forbidden(
                "the requesting organisation is not the organisation of the access token",
            )
            .at(path));
        }
    }
    Ok(ValidatedCancellation {
        identifier,
        resource: task,
    })
}

/// The `status` of a Task body, `requested` or `cancelled`.
pub fn status_of(task: &Value) -> Result<TaskStatus, Refusal> {
    match task.get("status") {
        Some(Value::String(s)) if s == "requested" => Ok(TaskStatus::Requested),
        Some(Value::String(s)) if s == "cancelled" => Ok(TaskStatus::Cancelled),
        None | Some(Value::Null) => Err(Refusal::required("Task.status", "status is missing")),
        Some(_) => Err(Refusal::value(
            "Task.status",
            "status must be requested or cancelled",
        )),
    }
}

/// The reads and queries of a workflow Task (`get-workflow-task`), leniently:
/// inputs that are not valid relative reads or queries are skipped and
/// counted, never fatal (the notification itself was already accepted).
pub fn workflow_plan(task: &Value) -> (PullPlan, usize) {
    let mut skipped = 0;
    let mut plan = PullPlan::default();
    let Some(Value::Array(inputs)) = task.get("input") else {
        return (plan, 0);
    };
    for input in inputs {
        match classify_input(input, "Task.input", false) {
            Ok(Input::Read(r)) => push_unique(&mut plan.reads, r),
            Ok(Input::Query(q)) => push_unique(&mut plan.queries, q),
            Ok(_) => {}
            Err(_) => skipped += 1,
        }
        if plan.len() >= MAX_PLAN_ENTRIES {
            break;
        }
    }
    (plan, skipped)
}

/// Parses a FHIR search token `[system]|value` as sent in
/// `PUT Task?identifier=…`, already percent-decoded: `system|value`,
/// `|value` (no system: `Some("")`) or `value` (any system: `None`).
/// FHIR escapes (`\|`, `\,`, `\$`, `\\`) are undone.
pub fn search_token(text: &str) -> Option<(Option<String>, String)> {
    let mut system = None;
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.push(chars.next()?),
            '|' if system.is_none() => system = Some(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if current.is_empty() || current.len() > MAX_IDENTIFIER_LEN || has_control(&current) {
        return None;
    }
    Some((system, current))
}

/// True for a read value this module accepts: `<Type>/<id>` or
/// `<Type>/<id>/_history/<vid>`.
pub fn is_read(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(ty), Some(id)) = (parts.next(), parts.next()) else {
        return false;
    };
    let ok = is_type_name(ty) && is_fhir_id(id);
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => ok,
        (Some("_history"), Some(vid), None) => ok && is_fhir_id(vid),
        _ => false,
    }
}

/// Why a query value is not a search relative to the FHIR base, or `None`
/// when it is one. The path (before `?`) has no scheme and passes
/// [`url::check_relative_path`] (URL path characters, valid escapes, no
/// empty, `.` or `..` segment, no encoded `/`, `\` or control character), so
/// joined to the base it stays under it; the whole value has no control
/// characters. The query is kept verbatim (spec §8.2), broken escapes included.
pub fn relative_query_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        return Some("is empty");
    }
    if text.len() > MAX_QUERY_LEN {
        return Some("is too long");
    }
    if has_control(text) {
        return Some("contains control characters");
    }
    if text.starts_with('/') {
        return Some("must be relative to the FHIR base (it starts with /)");
    }
    let path = text.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() {
        return Some("has no resource type");
    }
    let first = path.split('/').next().unwrap_or("");
    if first.contains(':') {
        return Some("must be relative to the FHIR base (it has a scheme)");
    }
    if let Err(e) = url::check_relative_path(path) {
        return Some(e.reason());
    }
    if text[path.len()..].starts_with('#') {
        return Some("has a fragment");
    }
    None
}

// ---- helpers ----

fn check_resource_type(task: &Value) -> Result<(), Refusal> {
    match task.get("resourceType") {
        Some(Value::String(t)) if t == "Task" => Ok(()),
        _ => Err(Refusal::invalid("the body is not a Task").at("Task.resourceType")),
    }
}

/// Items of an element that may be one object or an array of them.
fn each(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    }
}

/// Every `coding.code` of a CodeableConcept (coding as array or object).
fn codes(concept: Option<&Value>) -> impl Iterator<Item = &str> {
    each(concept.and_then(|c| c.get("coding")))
        .into_iter()
        .filter_map(|c| c.get("code").and_then(Value::as_str))
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn clean_string(v: &Value, max: usize) -> Option<&str> {
    v.as_str()
        .filter(|s| !s.trim().is_empty() && s.len() <= max && !has_control(s))
}

/// An Identifier (or an array of them: the one with a `urn:uuid:` value,
/// else the first) at `path`. `Ok(None)` when absent.
fn identifier_at(v: Option<&Value>, path: &str) -> Result<Option<TaskIdentifier>, Refusal> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(o @ Value::Object(_)) => vec![o],
        Some(_) => return Err(Refusal::value(path, "must be an Identifier")),
    };
    let is_array = matches!(v, Some(Value::Array(_)));
    let at = |i: usize, field: &str| {
        if is_array {
            format!("{path}[{i}].{field}")
        } else {
            format!("{path}.{field}")
        }
    };
    let chosen = items
        .iter()
        .position(|i| {
            i.get("value")
                .and_then(Value::as_str)
                .is_some_and(|s| strip_prefix_ci(s, "urn:uuid:").is_some())
        })
        .unwrap_or(0);
    let item = items[chosen];
    let value = match item.get("value") {
        None | Some(Value::Null) => {
            return Err(Refusal::required(
                at(chosen, "value"),
                "identifier has no value",
            ));
        }
        Some(v) => clean_string(v, MAX_IDENTIFIER_LEN)
            .ok_or_else(|| Refusal::value(at(chosen, "value"), "identifier value is malformed"))?,
    };
    let system = match item.get("system") {
        None | Some(Value::Null) => None,
        Some(s) => Some(
            clean_string(s, MAX_IDENTIFIER_LEN)
                .ok_or_else(|| {
                    Refusal::value(at(chosen, "system"), "identifier system is malformed")
                })?
                .to_string(),
        ),
    };
    Ok(Some(TaskIdentifier {
        system,
        value: value.to_string(),
    }))
}

fn bsn_of(task: &Value) -> Result<Bsn, Refusal> {
    let idents = each(task.get("for").and_then(|f| f.get("identifier")));
    let mut saw_bsn_system = false;
    for ident in idents {
        let system = ident.get("system").and_then(Value::as_str).unwrap_or("");
        let Some(value) = ident.get("value").and_then(Value::as_str) else {
            continue;
        };
        let digits = if system == BSN_SYSTEM
            || system.strip_prefix("urn:oid:").unwrap_or(system) == BSN_OID_ROOT
        {
            Some(value)
        } else if system == URI_SYSTEM {
            value
                .strip_prefix("urn:oid:")
                .and_then(|o| o.strip_prefix(BSN_OID_ROOT))
                .and_then(|o| o.strip_prefix('.'))
        } else {
            None
        };
        if let Some(d) = digits {
            saw_bsn_system = true;
            // A BSN is 9 digits; Bsn::parse also takes 8 with the leading zero dropped.
            if let Some(b) = Bsn::parse(d).filter(|_| d.trim() == d) {
                return Ok(b);
            }
        }
    }
    if saw_bsn_system {
        Err(Refusal::value(
            "Task.for.identifier.value",
            "the BSN does not pass the 11-test",
        ))
    } else {
        Err(Refusal::required(
            "Task.for.identifier",
            "the patient's BSN (system http://fhir.nl/fhir/NamingSystem/bsn) is missing",
        ))
    }
}

/// An organisation from an Identifier: URA/AGB NamingSystem URIs,
/// `urn:ietf:rfc:3986` + `urn:oid:<root>.<n>`, or `urn:oid:<root>` + `<n>`.
pub fn org_from_identifier(system: Option<&str>, value: &str) -> Option<OrgId> {
    let digits8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit());
    let value = value.trim();
    match system.map(str::trim) {
        Some(URA_SYSTEM) => digits8(value).then(|| OrgId::Ura(value.into())),
        Some(s) if AGB_SYSTEMS.contains(&s) => digits8(value).then(|| OrgId::Agb(value.into())),
        None | Some(URI_SYSTEM) | Some("") => {
            // An OID form only: a plain number without a system means nothing.
            if value.starts_with("urn:oid:") || value.starts_with("2.") {
                ids::parse_org(value, IdScheme::Ura).filter(|_| !digits8(value))
            } else {
                None
            }
        }
        Some(s) => {
            let root = s.strip_prefix("urn:oid:").unwrap_or(s);
            if root == URA_OID_ROOT && digits8(value) {
                Some(OrgId::Ura(value.into()))
            } else if root == AGB_OID_ROOT && digits8(value) {
                Some(OrgId::Agb(value.into()))
            } else {
                None
            }
        }
    }
}

/// The organisation of a Reference's `identifier` (object or array): the
/// first identifier that names a URA or AGB organisation. `Ok(None)` when the
/// Reference has no identifier at all.
fn org_of_reference(reference: &Value, path: &str) -> Result<Option<OrgId>, Refusal> {
    let idents = each(reference.get("identifier"));
    if idents.is_empty() {
        return Ok(None);
    }
    for ident in &idents {
        let system = ident.get("system").and_then(Value::as_str);
        if let Some(value) = ident.get("value").and_then(Value::as_str) {
            if let Some(org) = org_from_identifier(system, value) {
                return Ok(Some(org));
            }
        }
    }
    Err(Refusal::value(
        format!("{path}.identifier"),
        "not a URA or AGB organisation identifier",
    ))
}

/// STU3 `requester.onBehalfOf.identifier`; R4 `requester.identifier` (or an
/// `onBehalfOf` there too). With the path it was read from.
fn requester_of(task: &Value) -> Result<Option<(OrgId, &'static str)>, Refusal> {
    const OBO: &str = "Task.requester.onBehalfOf";
    const R4: &str = "Task.requester";
    let Some(requester) = task.get("requester").filter(|r| r.is_object()) else {
        return Ok(None);
    };
    if let Some(obo) = requester.get("onBehalfOf").filter(|o| o.is_object()) {
        if let Some(org) = org_of_reference(obo, OBO)? {
            return Ok(Some((org, OBO)));
        }
    }
    Ok(org_of_reference(requester, R4)?.map(|o| (o, R4)))
}

/// `owner.identifier`; an owner without an identifier counts as absent.
fn owner_of(task: &Value) -> Result<Option<OrgId>, Refusal> {
    match task.get("owner") {
        Some(o) if o.is_object() => org_of_reference(o, "Task.owner"),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(Refusal::value("Task.owner", "owner must be a Reference")),
    }
}

fn restriction_end_of(task: &Value, now: i64) -> Result<Option<i64>, Refusal> {
    const PATH: &str = "Task.restriction.period.end";
    let Some(end) = task
        .get("restriction")
        .and_then(|r| r.get("period"))
        .and_then(|p| p.get("end"))
        .filter(|e| !e.is_null())
    else {
        return Ok(None);
    };
    let text = end
        .as_str()
        .ok_or_else(|| Refusal::value(PATH, "must be a dateTime"))?;
    let mut t = crate::util::time::parse_rfc3339(text)
        .ok_or_else(|| Refusal::value(PATH, "must be a dateTime with a time zone, or a date"))?;
    if text.len() == 10 {
        // A bare date lasts until the end of that day.
        t += 86_400 - 1;
    }
    if t <= now {
        return Err(Refusal::value(PATH, "the restriction period has ended"));
    }
    Ok(Some(t))
}

fn based_on(task: &Value) -> Result<String, Refusal> {
    let refs = each(task.get("basedOn"));
    let Some(first) = refs.first() else {
        return Err(Refusal::required(
            "Task.basedOn",
            "get-workflow-task is true but basedOn names no workflow Task",
        ));
    };
    match first.get("reference").and_then(Value::as_str) {
        Some(r) if r.starts_with("Task/") && is_read(r) => Ok(r.to_string()),
        _ => Err(Refusal::value(
            "Task.basedOn[0].reference",
            "must be a relative reference Task/<id>",
        )),
    }
}

enum Input {
    AuthorizationBase(String),
    GetWorkflowTask(bool),
    Read(String),
    Query(String),
    Ignored,
}

struct Inputs {
    authorization_bases: Vec<String>,
    second_base_index: Option<usize>,
    get_workflow_task: bool,
    plan: PullPlan,
}

fn inputs_of(task: &Value, strict: bool) -> Result<Inputs, Refusal> {
    let mut out = Inputs {
        authorization_bases: Vec::new(),
        second_base_index: None,
        get_workflow_task: false,
        plan: PullPlan::default(),
    };
    let inputs = match task.get("input") {
        Some(Value::Array(a)) => a.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(Refusal::value("Task.input", "input must be an array")),
    };
    for (i, input) in inputs.iter().enumerate() {
        let path = format!("Task.input[{i}]");
        match classify_input(input, &path, strict)? {
            Input::AuthorizationBase(b) => {
                if out.authorization_bases.len() == 1 {
                    out.second_base_index = Some(i);
                }
                out.authorization_bases.push(b);
            }
            Input::GetWorkflowTask(b) => out.get_workflow_task |= b,
            Input::Read(r) => push_unique(&mut out.plan.reads, r),
            Input::Query(q) => push_unique(&mut out.plan.queries, q),
            Input::Ignored => {}
        }
        if out.plan.len() > MAX_PLAN_ENTRIES {
            return Err(Refusal::value(
                "Task.input",
                format!("more than {MAX_PLAN_ENTRIES} reads and queries"),
            ));
        }
    }
    Ok(out)
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.contains(&v) {
        list.push(v);
    }
}

fn classify_input(input: &Value, path: &str, strict: bool) -> Result<Input, Refusal> {
    let codes: Vec<&str> = codes(input.get("type")).collect();
    if codes.is_empty() {
        if !strict {
            return Ok(Input::Ignored);
        }
        return Err(Refusal::required(
            format!("{path}.type"),
            "input has no type code",
        ));
    }
    let has = |c: &str| codes.contains(&c);
    if has(INPUT_AUTHORIZATION_BASE) {
        let v = input
            .get("valueString")
            .and_then(|v| clean_string(v, MAX_AUTHORIZATION_BASE_LEN))
            .ok_or_else(|| {
                Refusal::value(
                    format!("{path}.valueString"),
                    "authorization-base must be a non-empty valueString",
                )
            })?;
        return Ok(Input::AuthorizationBase(v.to_string()));
    }
    if has(INPUT_GET_WORKFLOW_TASK) {
        return match (input.get("valueBoolean"), input.get("valueString")) {
            (Some(Value::Bool(b)), _) => Ok(Input::GetWorkflowTask(*b)),
            (None, Some(Value::String(s))) if s == "true" || s == "false" => {
                Ok(Input::GetWorkflowTask(s == "true"))
            }
            _ => Err(Refusal::value(
                format!("{path}.valueBoolean"),
                "get-workflow-task must be a valueBoolean",
            )),
        };
    }
    let read_code = has(INPUT_READ_RESOURCE) || has(INPUT_READ_AVAILABLE_RESOURCE);
    if let Some(r) = input.get("valueReference") {
        let reference = r.get("reference").and_then(Value::as_str);
        return match reference {
            Some(s) if is_read(s) => Ok(Input::Read(s.to_string())),
            _ => Err(Refusal::value(
                format!("{path}.valueReference.reference"),
                "must be a relative reference <Type>/<id>",
            )),
        };
    }
    match input.get("valueString") {
        Some(Value::String(s)) if read_code => {
            if is_read(s) {
                Ok(Input::Read(s.clone()))
            } else {
                Err(Refusal::value(
                    format!("{path}.valueString"),
                    "must be a relative read <Type>/<id>",
                ))
            }
        }
        Some(Value::String(s)) => match relative_query_problem(s) {
            None => Ok(Input::Query(s.clone())),
            Some(why) => Err(Refusal::value(
                format!("{path}.valueString"),
                format!("the query {why}"),
            )),
        },
        Some(_) => Err(Refusal::value(
            format!("{path}.valueString"),
            "must be a string",
        )),
        None if read_code => Err(Refusal::required(
            format!("{path}.valueString"),
            "a read input needs a valueString or valueReference",
        )),
        None if has(INPUT_SEARCH_RESOURCE) => Err(Refusal::required(
            format!("{path}.valueString"),
            "a search input needs a valueString",
        )),
        // Some other parameter we do not know: not ours to refuse.
        None => Ok(Input::Ignored),
    }
}

fn is_type_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`, and not `.` or `..`.
fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_795_000_000; // 2026-11-19

    fn expect() -> Expect {
        Expect {
            ours: vec![OrgId::Ura("87654321".into()), OrgId::Agb("44446666".into())],
            requester: OrgId::Ura("12345678".into()),
            patient: None,
            now: NOW,
        }
    }

    fn input(code: &str, value: Value) -> Value {
        let mut i = json!({"type": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskParameter", "code": code}]}});
        if let (Value::Object(m), Value::Object(v)) = (&mut i, value) {
            m.extend(v);
        }
        i
    }

    fn task() -> Value {
        json!({
            "resourceType": "Task",
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6128CFE7-0e89-4d37-ba90-e4ca3b3fcbbe"}],
            "groupIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:484639e6-e647-464c-8722-6e8a73cda4e0"},
            "status": "requested",
            "intent": "proposal",
            "code": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskCode", "code": "pull-notification"}]},
            "for": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999990"}},
            "restriction": {"period": {"end": "2026-12-06T10:00:00+01:00"}},
            "requester": {"onBehalfOf": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "12345678"}}},
            "owner": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "87654321"}},
            "input": [
                input("authorization-base", json!({"valueString": "base-1"})),
                input("read-resource", json!({"valueString": "Bundle/abc"})),
                {"type": {"coding": [{"system": "http://loinc.org", "code": "11450-4"}]}, "valueString": "Condition"}
            ]
        })
    }

    #[test]
    fn the_spec_example_validates() {
        let v = validate(task(), &expect()).unwrap();
        assert_eq!(
            v.identifier().inbox_name(),
            "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe"
        );
        assert_eq!(
            v.group().inbox_name(),
            "484639e6-e647-464c-8722-6e8a73cda4e0"
        );
        assert_eq!(v.bsn().as_str(), "999999990");
        assert_eq!(v.requester(), &OrgId::Ura("12345678".into()));
        assert_eq!(v.owner(), Some(&OrgId::Ura("87654321".into())));
        assert_eq!(v.authorization_base(), "base-1");
        assert_eq!(v.plan().reads, vec!["Bundle/abc"]);
        assert_eq!(v.plan().queries, vec!["Condition"]);
        assert_eq!(v.restriction_end(), Some(1_796_547_600));
        assert!(!v.get_workflow_task());
    }

    #[test]
    fn inbox_names() {
        let id = |s: Option<&str>, v: &str| TaskIdentifier {
            system: s.map(String::from),
            value: v.into(),
        };
        assert_eq!(
            id(
                Some("urn:ietf:rfc:3986"),
                "URN:UUID:6128CFE7-0E89-4D37-BA90-E4CA3B3FCBBE"
            )
            .inbox_name(),
            "6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe"
        );
        let h = id(Some("urn:oid:1.2.3"), "42").inbox_name();
        assert_eq!(h, sha256_hex32(b"urn:oid:1.2.3|42"));
        assert_eq!(h.len(), 32);
        assert_eq!(id(None, "42").inbox_name(), sha256_hex32(b"|42"));
        assert_eq!(
            id(None, "urn:uuid:not-a-uuid").inbox_name(),
            sha256_hex32(b"|urn:uuid:not-a-uuid")
        );
    }

    #[test]
    fn organisations_in_every_style() {
        let ura = Some(OrgId::Ura("12345678".into()));
        let agb = Some(OrgId::Agb("44446666".into()));
        assert_eq!(org_from_identifier(Some(URA_SYSTEM), "12345678"), ura);
        assert_eq!(
            org_from_identifier(
                Some("urn:ietf:rfc:3986"),
                "urn:oid:2.16.528.1.1007.3.3.12345678"
            ),
            ura
        );
        assert_eq!(
            org_from_identifier(Some("urn:oid:2.16.528.1.1007.3.3"), "12345678"),
            ura
        );
        assert_eq!(
            org_from_identifier(Some("urn:oid:2.16.840.1.113883.2.4.6.1"), "44446666"),
            agb
        );
        assert_eq!(
            org_from_identifier(None, "2.16.840.1.113883.2.4.6.1.44446666"),
            agb
        );
        assert_eq!(
            org_from_identifier(Some("http://fhir.nl/fhir/NamingSystem/agb-z"), "44446666"),
            agb
        );
        assert_eq!(org_from_identifier(None, "12345678"), None);
        assert_eq!(org_from_identifier(Some("urn:oid:1.2.3"), "12345678"), None);
        assert_eq!(org_from_identifier(Some(URA_SYSTEM), "1234567"), None);
    }

    #[test]
    fn relative_queries() {
        for ok in [
            "Condition",
            "Patient?_include=Patient:general-practitioner",
            "Observation/$lastn?code=http://loinc.org|85354-9",
            "MedicationStatement?category=urn%3Aoid%3A2.16.840.1.113883.2.4.3.11.60.20.77.5.3%7C6",
            "Encounter?class=http://hl7.org/fhir/v3/ActCode%hl7.org|IMP",
            "Observation?code:text=blood pressure",
        ] {
            assert_eq!(relative_query_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "https://evil.example/fhir/Patient",
            "//evil.example/Patient",
            "/Patient",
            "Patient/../Task",
            "Patient/%2e%2E/x",
            "Patient//x",
            "Patient%2F..",
            "Patient\n",
            "Pa tient",
            "javascript:alert(1)",
            "Patient#x",
            "Patient/.?x=1",
        ] {
            assert!(relative_query_problem(bad).is_some(), "{bad:?}");
        }
    }

    /// The property the pull relies on: whatever passes as a relative query
    /// or read, joined to the base, is still under the base. Checked on
    /// pseudo-random strings over the characters that matter.
    #[test]
    fn accepted_values_never_leave_the_base() {
        const BASE: &str = "https://sender.example:8443/fhir/stu3";
        const ALPHABET: &[u8] = b"/.%2eEfF5cC?#:@\\|aP$_-= ";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state % 12) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(char::from(
                    ALPHABET[(state % ALPHABET.len() as u64) as usize],
                ));
            }
            if relative_query_problem(&s).is_none() || is_read(&s) {
                accepted += 1;
                let joined = url::join(BASE, &s);
                assert!(url::is_under(BASE, &joined), "{s:?} → {joined}");
            }
        }
        assert!(
            accepted > 1_000,
            "the generator exercises accepted values ({accepted})"
        );
    }

    #[test]
    fn reads() {
        for ok in [
            "Bundle/dbb55ea6-a612-458b-bab2-486ce7aeacb7",
            "Patient/1/_history/2",
            "Binary/a.b",
        ] {
            assert!(is_read(ok), "{ok}");
        }
        for bad in [
            "Bundle",
            "bundle/1",
            "Bundle/",
            "Bundle/..",
            "Bundle/1/2",
            "Bundle/1?x",
            "https://x/Bundle/1",
            "/Bundle/1",
        ] {
            assert!(!is_read(bad), "{bad}");
        }
    }

    #[test]
    fn search_tokens() {
        assert_eq!(
            search_token("urn:ietf:rfc:3986|urn:uuid:1"),
            Some((Some("urn:ietf:rfc:3986".into()), "urn:uuid:1".into()))
        );
        assert_eq!(
            search_token("|abc"),
            Some((Some(String::new()), "abc".into()))
        );
        assert_eq!(search_token("abc"), Some((None, "abc".into())));
        assert_eq!(
            search_token(r"a\|b|c\\d"),
            Some((Some("a|b".into()), r"c\d".into()))
        );
        assert_eq!(search_token("sys|"), None);
        assert_eq!(search_token(""), None);
    }

    #[test]
    fn refusals_name_the_element() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutation, u16, &str)> = vec![
            (
                Box::new(|t| t["resourceType"] = json!("Patient")),
                400,
                "Task.resourceType",
            ),
            (
                Box::new(|t| {
                    t.as_object_mut().unwrap().remove("identifier");
                }),
                400,
                "Task.identifier",
            ),
            (
                Box::new(|t| t["identifier"][0]["value"] = json!(42)),
                400,
                "Task.identifier[0].value",
            ),
            (
                Box::new(|t| t["status"] = json!("ready")),
                400,
                "Task.status",
            ),
            (
                Box::new(|t| t["intent"] = json!("order")),
                400,
                "Task.intent",
            ),
            (
                Box::new(|t| t["code"]["coding"][0]["code"] = json!("x")),
                400,
                "Task.code",
            ),
            (
                Box::new(|t| t["for"]["identifier"]["value"] = json!("999999991")),
                400,
                "Task.for.identifier.value",
            ),
            (
                Box::new(|t| {
                    t.as_object_mut().unwrap().remove("for");
                }),
                400,
                "Task.for.identifier",
            ),
            (
                Box::new(|t| t["restriction"]["period"]["end"] = json!("2020-01-01T00:00:00Z")),
                400,
                "Task.restriction.period.end",
            ),
            (
                Box::new(|t| {
                    t["input"][2]["valueString"] = json!("https://evil.example/Condition")
                }),
                400,
                "Task.input[2].valueString",
            ),
            (
                Box::new(|t| t["input"][1]["valueString"] = json!("Bundle/../x")),
                400,
                "Task.input[1].valueString",
            ),
            (
                Box::new(|t| {
                    t["input"].as_array_mut().unwrap().remove(0);
                }),
                400,
                "Task.input",
            ),
            (
                Box::new(|t| {
                    let b = t["input"][0].clone();
                    t["input"].as_array_mut().unwrap().push(b);
                }),
                400,
                "Task.input[3]",
            ),
            (
                Box::new(|t| {
                    t["input"].as_array_mut().unwrap().truncate(1);
                }),
                400,
                "Task.input",
            ),
            (
                Box::new(|t| {
                    t["requester"]["onBehalfOf"]["identifier"]["value"] = json!("11111111")
                }),
                403,
                "Task.requester.onBehalfOf",
            ),
            (
                Box::new(|t| t["owner"]["identifier"]["value"] = json!("11111111")),
                403,
                "Task.owner",
            ),
        ];
        for (i, (mutate, status, expr)) in cases.into_iter().enumerate() {
            let mut t = task();
            mutate(&mut t);
            let r = validate(t, &expect()).unwrap_err();
            assert_eq!(
                (r.status, r.expression.as_deref()),
                (status, Some(expr)),
                "case {i}: {r}"
            );
            assert!(
                !r.diagnostics().contains("99999999"),
                "no BSN in diagnostics"
            );
        }
    }

    #[test]
    fn owner_absent_and_patient_of_the_token() {
        let mut t = task();
        t.as_object_mut().unwrap().remove("owner");
        assert!(validate(t.clone(), &expect()).unwrap().owner().is_none());
        let mut e = expect();
        e.patient = Bsn::parse("999999151");
        let r = validate(t, &e).unwrap_err();
        assert_eq!(
            (r.status, r.expression.as_deref()),
            (403, Some("Task.for.identifier"))
        );
    }

    #[test]
    fn workflow_task_needs_based_on() {
        let mut t = task();
        t["input"] = json!([
            input("authorization-base", json!({"valueString": "b"})),
            input("get-workflow-task", json!({"valueBoolean": true})),
        ]);
        let r = validate(t.clone(), &expect()).unwrap_err();
        assert_eq!(r.expression.as_deref(), Some("Task.basedOn"));
        t["basedOn"] = json!([{"reference": "Task/wf-1"}]);
        let v = validate(t, &expect()).unwrap();
        assert!(v.plan().is_empty());
        assert_eq!(v.workflow_task(), Some("Task/wf-1"));
    }

    #[test]
    fn cancellations_are_lenient() {
        let c = validate_cancellation(
            json!({"resourceType": "Task", "status": "cancelled", "identifier": {"value": "x"}}),
            &expect(),
        )
        .unwrap();
        assert_eq!(c.identifier().unwrap().value, "x");
        let r = validate_cancellation(
            json!({"resourceType": "Task", "status": "requested"}),
            &expect(),
        )
        .unwrap_err();
        assert_eq!(r.expression.as_deref(), Some("Task.status"));
        let mut t = task();
        t["status"] = json!("cancelled");
        t["requester"]["onBehalfOf"]["identifier"]["value"] = json!("11111111");
        assert_eq!(validate_cancellation(t, &expect()).unwrap_err().status, 403);
    }

    #[test]
    fn workflow_plans_skip_what_is_not_relative() {
        let wf = json!({"resourceType": "Task", "input": [
            {"type": {"coding": [{"code": "x"}]}, "valueString": "Condition"},
            {"type": {"coding": [{"code": "x"}]}, "valueString": "https://evil/x"},
            {"type": {"coding": [{"code": "read-resource"}]}, "valueReference": {"reference": "Patient/1"}},
            {"valueString": "no type"}
        ]});
        let (plan, skipped) = workflow_plan(&wf);
        assert_eq!(plan.queries, vec!["Condition"]);
        assert_eq!(plan.reads, vec!["Patient/1"]);
        assert_eq!(skipped, 1);
    }
}
