//! The receiver role of Notified Pull: accept notification Tasks from
//! partners (`POST /fhir/Task`), accept their cancellations
//! (`PUT /fhir/Task?identifier=…`), pull the announced data from the sender
//! (spool kind `pull`) and write it to `NP_INBOX` for the EHR.
//!
//! - [`task`] (sans-IO): Task validation into a [`task::ValidatedTask`] and its pull plan.
//! - [`inbox`]: the collected resources, the inbox Bundle and its file names.
//! - [`wire`]: reading and writing FHIR bodies.
//! - this file: the [`Receiver`] façade, intake and cancellation; `pull.rs`: the spool worker.
//!
//! Start-up removes the temp files a crash mid-write left in the inbox.
//! Durable state of its own, under `NP_STATE_DIR/receiver/`:
//! `cancelled/<item>.json` (a cancellation we accepted, which stops a queued
//! or retrying pull) and `pulls/<item>.json` (what the last pull got, input by
//! input, including the ones the sender said were not available).
//!
//! Logging: partner, item id, inbox names, statuses, counts and durations;
//! never a BSN, a token, a query or resource content. The audit trail gets
//! `task.received`, `task.duplicate`, `task.refused`, `task.cancelled` and
//! `pull.completed`, with the patient.

pub mod inbox;
pub(crate) mod pull;
pub mod task;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{AuditLog, Event};
use crate::config::{Config, TwiinPartner};
use crate::http::{Request, Response};
use crate::ids::OrgId;
use crate::ids::URI_SYSTEM;
use crate::oauth::grants::{Grant, TokenKind};
use crate::ops::logging::{Q, Rid};
use crate::spool::{self, Item, Spool};
use crate::util::durable::{self, DurableError};
use crate::util::percent;

use self::inbox::InboxPaths;
use self::task::{
    Expect, PullPlan, Refusal, TaskIdentifier, TaskStatus, ValidatedCancellation, ValidatedTask,
};
use self::wire::Format;
use crate::fhir::FhirVersion;

/// The spool item kind of a pull.
pub const KIND_PULL: &str = "pull";
/// How long a pull is tried when the Task has no `restriction.period.end` (spec §8.4).
pub const DEFAULT_PULL_WINDOW_SECS: i64 = 24 * 3_600;

/// The receiver: intake, cancellation and the pull worker.
pub struct Receiver {
    config: Arc<Config>,
    spool: Arc<Spool>,
    audit: Arc<AuditLog>,
    inbox: PathBuf,
    /// `NP_STATE_DIR/receiver`.
    state: PathBuf,
    locks: Arc<Locks>,
}

/// Serialises the two check-then-write sequences that must not interleave.
#[derive(Default)]
struct Locks {
    /// "Is this identifier known? If not, enqueue it."
    intake: Mutex<()>,
    /// "Is this pull cancelled? If not, write its data" against "record the
    /// cancellation and write the `.cancelled.json`".
    inbox: Mutex<()>,
}

/// A setup failure: the receiver's state folders could not be created.
#[derive(Debug)]
pub struct ReceiverError(pub DurableError);

impl std::fmt::Display for ReceiverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "receiver: {}", self.0)
    }
}

impl std::error::Error for ReceiverError {}

/// What a pull item carries in the spool: the Task as received and what was
/// derived from it at intake. Built only from a [`ValidatedTask`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullOrder {
    identifier: TaskIdentifier,
    group: TaskIdentifier,
    inbox_group: String,
    inbox_task: String,
    /// The BSN (the spool is state, not a log).
    patient: String,
    /// `ura:…`/`agb:…`.
    requester: String,
    owner: Option<String>,
    authorization_base: String,
    get_workflow_task: bool,
    workflow_task: Option<String>,
    plan: PullPlan,
    restriction_end: Option<i64>,
    received_at: i64,
    task: Value,
}

impl PullOrder {
    fn new(v: &ValidatedTask, now: i64) -> PullOrder {
        PullOrder {
            identifier: v.identifier().clone(),
            group: v.group().clone(),
            inbox_group: v.group().inbox_name(),
            inbox_task: v.identifier().inbox_name(),
            patient: v.bsn().as_str().to_string(),
            requester: v.requester().to_string(),
            owner: v.owner().map(OrgId::to_string),
            authorization_base: v.authorization_base().to_string(),
            get_workflow_task: v.get_workflow_task(),
            workflow_task: v.workflow_task().map(String::from),
            plan: v.plan().clone(),
            restriction_end: v.restriction_end(),
            received_at: now,
            task: v.resource().clone(),
        }
    }

    /// `Task.identifier`.
    pub fn identifier(&self) -> &TaskIdentifier {
        &self.identifier
    }
    /// The inbox folder name of the group.
    pub fn inbox_group(&self) -> &str {
        &self.inbox_group
    }
    /// The inbox file name (without extension) of the Task.
    pub fn inbox_task(&self) -> &str {
        &self.inbox_task
    }
    /// What to pull.
    pub fn plan(&self) -> &PullPlan {
        &self.plan
    }
    /// The Task as received.
    pub fn task(&self) -> &Value {
        &self.task
    }
}

/// The spool item id of a Task from `partner`:
/// `pull-<first 32 hex of SHA-256(partner|system|value)>` (absent system = "").
pub fn item_id(partner: &str, identifier: &TaskIdentifier) -> String {
    item_id_of(
        partner,
        identifier.system.as_deref().unwrap_or(""),
        &identifier.value,
    )
}

fn item_id_of(partner: &str, system: &str, value: &str) -> String {
    format!(
        "pull-{}",
        crate::util::b64::sha256_hex32(format!("{partner}|{system}|{value}").as_bytes())
    )
}

impl Receiver {
    /// A receiver writing to `config.inbox` and keeping its state in
    /// `config.state_dir/receiver`.
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        audit: Arc<AuditLog>,
    ) -> Result<Receiver, ReceiverError> {
        let (inbox, state) = (config.inbox.clone(), config.state_dir.clone());
        Receiver::with_dirs(config, spool, audit, &inbox, &state)
    }

    /// A receiver with explicit inbox and state folders.
    pub fn with_dirs(
        config: Arc<Config>,
        spool: Arc<Spool>,
        audit: Arc<AuditLog>,
        inbox: &Path,
        state_dir: &Path,
    ) -> Result<Receiver, ReceiverError> {
        let state = state_dir.join("receiver");
        for sub in ["cancelled", "pulls"] {
            let dir = state.join(sub);
            durable::create_dir_all(&dir).map_err(ReceiverError)?;
            durable::remove_temp_files(&dir).map_err(ReceiverError)?;
        }
        durable::create_dir_all_mode(inbox, durable::SHARED_DIR_MODE).map_err(ReceiverError)?;
        let removed = inbox::remove_temp_files(inbox).map_err(ReceiverError)?;
        if removed > 0 {
            log::info!("event=inbox.recovered temp_files={removed}");
        }
        Ok(Receiver {
            config,
            spool,
            audit,
            inbox: inbox.to_path_buf(),
            state,
            locks: Arc::new(Locks::default()),
        })
    }

    /// The same receiver with a new configuration (SIGHUP): same folders,
    /// same locks.
    pub fn reconfigured(&self, config: Arc<Config>) -> Receiver {
        Receiver {
            config,
            spool: self.spool.clone(),
            audit: self.audit.clone(),
            inbox: self.inbox.clone(),
            state: self.state.clone(),
            locks: self.locks.clone(),
        }
    }

    /// `POST /fhir/Task` with a notify grant from `partner` (authenticated by
    /// the router). New identifier: stored durably as a `pull` item, then
    /// `201` + `Location`; known identifier: `200` with the stored Task; a
    /// Task with status `cancelled` is a cancellation of the Task with its
    /// identifier. Refusals: 400/403/413/415 with an OperationOutcome.
    pub fn notify(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        now: i64,
    ) -> Response {
        let mut out = Answer::for_request(req);
        let (expect, value) = match self.admit(partner, grant, req, now, &mut out) {
            Ok(x) => x,
            Err(r) => return self.refuse(partner, grant, req, &r, out),
        };
        if task::status_of(&value) == Ok(TaskStatus::Cancelled) {
            return match task::validate_cancellation(value, &expect) {
                Ok(c) => match c.identifier().cloned() {
                    Some(id) => self.cancel_identified(
                        partner,
                        grant,
                        req,
                        // A body without a system matches the Task under any system.
                        (id.system.clone(), id.value.clone()),
                        c,
                        now,
                        out,
                    ),
                    None => self.refuse(
                        partner,
                        grant,
                        req,
                        &Refusal::required("Task.identifier", "the cancellation has no identifier"),
                        out,
                    ),
                },
                Err(r) => self.refuse(partner, grant, req, &r, out),
            };
        }
        match task::validate(value, &expect) {
            Ok(v) => self.intake(partner, grant, req, v, now, out),
            Err(r) => self.refuse(partner, grant, req, &r, out),
        }
    }

    /// `PUT /fhir/Task?identifier=<system>|<value>` (conditional update to
    /// `cancelled`), also `PUT /fhir/Task/<our id>`: `200` with the cancelled
    /// Task when a Task with that identifier came from this partner, `404`
    /// otherwise. The cancellation is recorded durably (a queued or retrying
    /// pull of it then ends without writing data) and written to the inbox as
    /// `<task>.cancelled.json`.
    pub fn cancel(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        now: i64,
    ) -> Response {
        let mut out = Answer::for_request(req);
        let (expect, value) = match self.admit(partner, grant, req, now, &mut out) {
            Ok(x) => x,
            Err(r) => return self.refuse(partner, grant, req, &r, out),
        };
        let c = match task::validate_cancellation(value, &expect) {
            Ok(c) => c,
            Err(r) => return self.refuse(partner, grant, req, &r, out),
        };
        match cancel_target(req) {
            Ok(Target::Identifier(system, value)) => {
                if let Some(body) = c.identifier() {
                    let agrees = body.value == value
                        && system
                            .as_deref()
                            .is_none_or(|s| body.system.as_deref().unwrap_or("") == s);
                    if !agrees {
                        let r = Refusal::value(
                            "Task.identifier",
                            "the identifier in the body is not the one in the URL",
                        );
                        return self.refuse(partner, grant, req, &r, out);
                    }
                }
                self.cancel_identified(partner, grant, req, (system, value), c, now, out)
            }
            Ok(Target::ItemId(id)) => match self.load_any(&id) {
                Some(item) if item.partner == partner.name && item.kind == KIND_PULL => {
                    self.cancel_item(partner, grant, req, item, c, now, out)
                }
                _ => self.refuse(partner, grant, req, &not_found(), out),
            },
            Err(r) => self.refuse(partner, grant, req, &r, out),
        }
    }

    /// Whether a cancellation of this pull item was accepted.
    pub fn is_cancelled(&self, item_id: &str) -> bool {
        spool::valid_id(item_id) && self.cancel_record(item_id).exists()
    }

    /// The stored order of a pull item, from whichever spool state it is in.
    pub fn order(&self, item_id: &str) -> Option<PullOrder> {
        self.load_any(item_id)
            .and_then(|i| serde_json::from_value(i.body).ok())
    }

    // ---- intake ----

    /// Checks the partner and the grant, and reads the body (whose release
    /// then decides the release of the answer).
    fn admit(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        now: i64,
        out: &mut Answer,
    ) -> Result<(Expect, Value), Refusal> {
        if grant.kind() != TokenKind::Notify || grant.partner() != partner.name {
            return Err(Refusal::forbidden(
                "the access token is not a notify token of this partner",
            ));
        }
        let expect = Expect::from_grant(&self.config, grant, now).ok_or_else(|| {
            Refusal::forbidden("the access token is not a notify token of this partner")
        })?;
        let body = wire::read_task_body(&req.body, req.header("content-type"))?;
        out.version = body.version;
        out.format = wire::response_format(req, body.format);
        Ok((expect, body.value))
    }

    fn intake(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        v: ValidatedTask,
        now: i64,
        out: Answer,
    ) -> Response {
        let id = item_id(partner.name, v.identifier());
        let _guard = self.locks.intake.lock().unwrap_or_else(|p| p.into_inner());
        if self.spool.find(&id).is_some() {
            return self.duplicate(partner, grant, req, &v, &id, out);
        }
        let order = PullOrder::new(&v, now);
        let body = match serde_json::to_value(&order) {
            Ok(b) => b,
            Err(_) => return self.fail(partner, req, &id, "the Task could not be stored", out),
        };
        let item = Item {
            id: id.clone(),
            kind: KIND_PULL.into(),
            partner: partner.name.to_string(),
            created_at: now,
            attempts: 0,
            not_before: now,
            give_up_at: Some(
                v.restriction_end()
                    .unwrap_or(now + DEFAULT_PULL_WINDOW_SECS),
            ),
            last_error: None,
            body,
        };
        match self.spool.enqueue(&item) {
            Ok(true) => {}
            // Someone else (another process on the same state) was first.
            Ok(false) => return self.duplicate(partner, grant, req, &v, &id, out),
            Err(e) => {
                log::error!(
                    "event=task.store_failed partner={} item={id} error={}",
                    partner.name,
                    Q(&e.to_string())
                );
                return self.fail(partner, req, &id, "the Task could not be stored", out);
            }
        }
        if !self.audit_task(partner, grant, req, "task.received", v.bsn().as_str(), &id) {
            return self.fail(
                partner,
                req,
                &id,
                "the audit trail could not be written",
                out,
            );
        }
        log::info!(
            "event=task.received partner={} item={id} group={} task={} reads={} queries={} workflow={} rid={} status=201",
            partner.name,
            order.inbox_group,
            order.inbox_task,
            order.plan.reads.len(),
            order.plan.queries.len(),
            order.get_workflow_task,
            Rid(&req.request_id)
        );
        let location = format!("{}/fhir/Task/{id}", self.config.public_url);
        wire::resource_response(201, &with_id(order.task, &id), out.format, out.version)
            .header("Location", location)
    }

    /// The answer to a Task whose identifier is already stored: `200` with
    /// the stored Task (not the new body); nothing else changes.
    fn duplicate(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        v: &ValidatedTask,
        id: &str,
        out: Answer,
    ) -> Response {
        let (task, inbox_task) = match self.order(id) {
            Some(order) => (order.task, order.inbox_task),
            // Finished so long ago that only its identity is kept
            // (`spool::retention`): the same Task, answered as it came.
            None if self
                .load_any(id)
                .as_ref()
                .and_then(spool::retention::Stub::of)
                .is_some() =>
            {
                (v.resource().clone(), v.identifier().inbox_name())
            }
            None => {
                return self.fail(partner, req, id, "the stored Task could not be read", out);
            }
        };
        self.audit_task(partner, grant, req, "task.duplicate", v.bsn().as_str(), id);
        log::info!(
            "event=task.duplicate partner={} item={id} task={inbox_task} rid={} status=200",
            partner.name,
            Rid(&req.request_id)
        );
        wire::resource_response(200, &with_id(task, id), out.format, out.version)
    }

    // ---- cancellation ----

    #[allow(clippy::too_many_arguments)]
    fn cancel_identified(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        (system, value): (Option<String>, String),
        c: ValidatedCancellation,
        now: i64,
        out: Answer,
    ) -> Response {
        let systems: Vec<String> = match system {
            Some(s) => vec![s],
            None => vec![
                URI_SYSTEM.to_string(),
                String::new(),
                "https://tools.ietf.org/html/rfc4122".to_string(),
            ],
        };
        let found = systems
            .iter()
            .map(|s| item_id_of(partner.name, s, &value))
            .find_map(|id| self.load_any(&id))
            .filter(|item| item.partner == partner.name && item.kind == KIND_PULL);
        match found {
            Some(item) => self.cancel_item(partner, grant, req, item, c, now, out),
            None => self.refuse(partner, grant, req, &not_found(), out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cancel_item(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        item: Item,
        c: ValidatedCancellation,
        now: i64,
        out: Answer,
    ) -> Response {
        let Ok(order) = serde_json::from_value::<PullOrder>(item.body) else {
            return self.fail(
                partner,
                req,
                &item.id,
                "the stored Task could not be read",
                out,
            );
        };
        let paths = InboxPaths::new(
            &self.inbox,
            partner.name,
            &order.inbox_group,
            &order.inbox_task,
        );
        let record = serde_json::json!({
            "item": item.id,
            "partner": partner.name,
            "cancelled_at": now,
            "request_id": req.request_id,
        });
        let written = {
            let _guard = self.locks.inbox.lock().unwrap_or_else(|p| p.into_inner());
            durable::write_atomic(&self.cancel_record(&item.id), &wire::to_bytes(&record)).and_then(
                |()| durable::write_shared(&paths.cancelled, &wire::to_bytes(c.resource())),
            )
        };
        if let Err(e) = written {
            log::error!(
                "event=task.cancel_failed partner={} item={} error={}",
                partner.name,
                item.id,
                Q(&e.to_string())
            );
            return self.fail(
                partner,
                req,
                &item.id,
                "the cancellation could not be stored",
                out,
            );
        }
        if !self.audit_task(
            partner,
            grant,
            req,
            "task.cancelled",
            &order.patient,
            &item.id,
        ) {
            return self.fail(
                partner,
                req,
                &item.id,
                "the audit trail could not be written",
                out,
            );
        }
        log::info!(
            "event=task.cancelled partner={} item={} group={} task={} rid={} status=200",
            partner.name,
            item.id,
            order.inbox_group,
            order.inbox_task,
            Rid(&req.request_id)
        );
        let mut task = with_id(order.task, &item.id);
        if let Some(obj) = task.as_object_mut() {
            obj.insert("status".into(), Value::String("cancelled".into()));
        }
        wire::resource_response(200, &task, out.format, out.version)
    }

    fn cancel_record(&self, item_id: &str) -> PathBuf {
        self.state.join("cancelled").join(format!("{item_id}.json"))
    }

    // ---- shared ----

    /// The item with this id in whichever state it is (an item may move
    /// between `find` and `load`: try again).
    fn load_any(&self, id: &str) -> Option<Item> {
        if !spool::valid_id(id) {
            return None;
        }
        for _ in 0..3 {
            let state = self.spool.find(id)?;
            if let Ok(item) = self.spool.load(state, id) {
                return Some(item);
            }
        }
        None
    }

    /// Records an audit event about a Task; false when it could not be written.
    fn audit_task(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        action: &str,
        patient: &str,
        item: &str,
    ) -> bool {
        self.audit.record_or_log(Event {
            action,
            outcome: "success",
            partner: Some(partner.name),
            who_org: Some(&grant.requesting_org_claim()),
            who_system: Some(grant.client_id()),
            patient: Some(patient),
            object: Some(item),
            request_id: Some(&req.request_id),
            ..Event::default()
        })
    }

    fn refuse(
        &self,
        partner: TwiinPartner<'_>,
        grant: &Grant,
        req: &Request,
        r: &Refusal,
        out: Answer,
    ) -> Response {
        let _ = self.audit.record(Event {
            action: "task.refused",
            outcome: "refused",
            partner: Some(partner.name),
            who_org: Some(&grant.requesting_org_claim()),
            who_system: Some(grant.client_id()),
            object: r.expression.as_deref(),
            reason: Some(&r.diagnostics()),
            request_id: Some(&req.request_id),
            ..Event::default()
        });
        log::info!(
            "event=task.refused partner={} method={} status={} element={} reason={} rid={}",
            partner.name,
            if req.method == "PUT" { "PUT" } else { "POST" },
            r.status,
            Q(r.expression.as_deref().unwrap_or("-")),
            Q(&r.diagnostics()),
            Rid(&req.request_id)
        );
        wire::refusal_response(r, out.format)
    }

    fn fail(
        &self,
        partner: TwiinPartner<'_>,
        req: &Request,
        item: &str,
        why: &'static str,
        out: Answer,
    ) -> Response {
        log::error!(
            "event=task.failed partner={} item={item} reason={} rid={}",
            partner.name,
            Q(why),
            Rid(&req.request_id)
        );
        wire::refusal_response(&Refusal::exception(why), out.format)
    }
}

/// The spool worker of kind [`KIND_PULL`] for the dispatcher
/// ([`crate::worker`]): [`Receiver::pull`] with the token client and the
/// partner HTTP client it needs.
pub struct PullWorker {
    /// The receiver whose spool items these are.
    pub receiver: Arc<Receiver>,
    /// Tokens at the senders' token endpoints (interaction 3).
    pub tokens: Arc<crate::oauth::client::TokenClient>,
    /// mTLS HTTP to the senders' FHIR bases (interaction 4).
    pub http: Arc<dyn crate::http::partners::PartnerHttp>,
}

impl crate::worker::Handler for PullWorker {
    fn run(&self, item: &Item, now: i64) -> spool::Outcome {
        self.receiver
            .pull(item, &self.tokens, self.http.as_ref(), now)
    }
}

/// What a cancellation names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// From `?identifier=`: system (`None` = any) and value.
    Identifier(Option<String>, String),
    /// From `/fhir/Task/<id>`: our item id.
    ItemId(String),
}

/// The Task a cancellation names: `?identifier=<system>|<value>` (RFC 3986
/// query rules, [`percent::decode_query`]: a `+` is a `+`), else the id in
/// the path.
pub(crate) fn cancel_target(req: &Request) -> Result<Target, Refusal> {
    let found: Vec<&str> = percent::split_pairs(req.query.as_deref().unwrap_or(""))
        .filter(|(name, _)| percent::decode_query(name).is_ok_and(|n| n == "identifier"))
        .map(|(_, value)| value)
        .collect();
    match found.as_slice() {
        [one] => {
            let decoded = percent::decode_query(one).map_err(|_| {
                Refusal::value(
                    "Task.identifier",
                    "the identifier parameter is not validly encoded UTF-8",
                )
            })?;
            let (system, value) = task::search_token(&decoded).ok_or_else(|| {
                Refusal::value("Task.identifier", "the identifier parameter is malformed")
            })?;
            Ok(Target::Identifier(system, value))
        }
        [] => match req.path.strip_prefix("/fhir/Task/") {
            Some(id) if spool::valid_id(id) => Ok(Target::ItemId(id.to_string())),
            _ => Err(Refusal::required(
                "Task.identifier",
                "a cancellation needs ?identifier=<system>|<value>",
            )),
        },
        _ => Err(Refusal::value(
            "Task.identifier",
            "the identifier parameter may appear once",
        )),
    }
}

fn not_found() -> Refusal {
    Refusal::not_found("no Task with this identifier came from this partner")
}

/// How to answer: the format the request asks for (its own by default)
/// and the release of the Task it carried.
#[derive(Debug, Clone, Copy)]
struct Answer {
    format: Format,
    version: FhirVersion,
}

impl Answer {
    fn for_request(req: &Request) -> Answer {
        let own = match req.header("content-type") {
            Some(ct) if ct.to_ascii_lowercase().contains("xml") => Format::Xml,
            _ => Format::Json,
        };
        Answer {
            format: wire::response_format(req, own),
            version: FhirVersion::Stu3,
        }
    }
}

/// The Task with our id (a FHIR create assigns the server's id).
fn with_id(mut task: Value, id: &str) -> Value {
    if let Some(obj) = task.as_object_mut() {
        obj.insert("id".into(), Value::String(id.to_string()));
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Receiver>();
        check::<PullWorker>();
    }

    #[test]
    fn item_ids_are_deterministic_and_file_safe() {
        let id = TaskIdentifier {
            system: Some(URI_SYSTEM.into()),
            value: "urn:uuid:6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe".into(),
        };
        let a = item_id("vip", &id);
        assert_eq!(a, item_id("vip", &id.clone()));
        assert_ne!(a, item_id("other", &id));
        assert!(a.starts_with("pull-") && a.len() == 37 && spool::valid_id(&a));
        assert_eq!(
            item_id(
                "vip",
                &TaskIdentifier {
                    system: None,
                    value: "x".into()
                }
            ),
            item_id_of("vip", "", "x")
        );
    }
}
