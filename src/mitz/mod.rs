//! Mitz consent notifications: the intake of the Bundles the VZVZ
//! notification broker (or Mitz itself) `POST`s to `/fhir/R4` or
//! `/mitz/fhir`, their durable storage for the EHR, and the consent view.
//!
//! - [`aorta`] (sans-IO): the `AORTA-ID` and `AORTA-Version` headers.
//! - [`notification`] (sans-IO): transaction control, bronhouder check and
//!   the Consent content (spec §3 steps 5–6, §4).
//! - [`consent`]: the per-patient consent view.
//! - [`subscription`] (sans-IO) and [`subscribe`] (its I/O): subscribing a
//!   patient at Mitz so that its consent notifications reach us (spec §8).
//! - this file: the [`Mitz`] façade: intake (checks in DESIGN.md order,
//!   then a spool item of kind `mitz`, then 200) and the spool worker that
//!   writes the inbox file and updates the consent view. A body over the
//!   server's limit is never read; [`Mitz::refuse_by_head`] still answers
//!   406 and 415 before that 413.
//!
//! The spool item id is `mitz-<first 32 hex of SHA-256(partner, body)>`, so
//! the same bytes from the same partner are one item however often the
//! broker resends them; its inbox name (receive time and a UUID) is fixed
//! when the item is created, so a worker that crashed after writing the file
//! writes the same file again instead of a second one.
//!
//! Logging: partner, item id, inbox name, format, counts, AORTA ids (UUIDs
//! only); never the BSN or content. The audit trail gets `mitz.received`,
//! `mitz.duplicate` and `mitz.refused`, with the patient when known.

pub mod aorta;
pub mod closed;
pub mod consent;
pub mod notification;
pub mod subscribe;
pub mod subscription;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{AuditLog, Event};
use crate::config::{Config, MitzPartner};
use crate::fhir::wire::{self, Release};
use crate::fhir::{self, FhirVersion, Format, IssueType, Refusal};
use crate::http::{Request, Response};
use crate::ops::logging::{P, Q, Rid};
use crate::spool::{Item, Outcome, Spool};
use crate::util::durable::DurableError;
use crate::util::{random, time};

use self::aorta::AortaId;
use self::consent::ConsentView;
use self::notification::{ConsentState, Profile};

/// The spool item kind of a consent notification to store.
pub const KIND_MITZ: &str = "mitz";
/// Largest notification accepted (spec §3 step 3: 1 MB).
pub const MAX_NOTIFICATION: usize = 1024 * 1024;

/// What a `mitz` spool item carries: the notification as received and what
/// was derived from it at intake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredNotification {
    /// The body, byte for byte (it was checked to be UTF-8).
    pub raw: String,
    pub format: Format,
    /// Unix seconds of receipt; the inbox name's time.
    pub received_at: i64,
    /// The inbox name's UUID, fixed at intake.
    pub uuid: String,
    /// The BSN (the spool is state, not a log).
    pub patient: String,
    /// Our URA as the notification named it.
    pub holder: String,
    pub profile: Profile,
    pub consents: Vec<ConsentState>,
    pub request_id: String,
    #[serde(default)]
    pub aorta_id: Option<String>,
}

impl StoredNotification {
    /// `<YYYYMMDDTHHMMSSZ>-<uuid>.json|.xml`.
    pub fn inbox_name(&self) -> String {
        format!(
            "{}-{}.{}",
            time::compact(self.received_at),
            self.uuid,
            self.format.name()
        )
    }
}

/// The spool item id of `body` from `partner`.
pub fn item_id(partner: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(partner.as_bytes());
    ctx.update(b"\n");
    ctx.update(body);
    let mut h = crate::util::b64::hex(ctx.finish().as_ref());
    h.truncate(32);
    format!("mitz-{h}")
}

/// A setup failure: the Mitz state folders could not be created.
#[derive(Debug)]
pub struct MitzError(pub DurableError);

impl std::fmt::Display for MitzError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mitz: {}", self.0)
    }
}

impl std::error::Error for MitzError {}

/// The answer to an intake request, and whether new work was queued.
pub struct Intake {
    pub response: Response,
    /// A new spool item was stored: wake the workers.
    pub queued: bool,
}

/// Intake and storage of Mitz consent notifications.
pub struct Mitz {
    config: Arc<Config>,
    spool: Arc<Spool>,
    audit: Arc<AuditLog>,
    inbox: PathBuf,
    view: Arc<ConsentView>,
    /// "Is this item known? If not, enqueue it."
    intake_lock: Arc<Mutex<()>>,
    /// Told when a notification changes a patient's consent (the closed
    /// question's cache forgets the patient).
    listener: Option<Arc<dyn crate::consent::ConsentCheck>>,
}

impl Mitz {
    /// Intake writing to `config.inbox`, the consent view in
    /// `config.state_dir/mitz`.
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        audit: Arc<AuditLog>,
    ) -> Result<Mitz, MitzError> {
        let view = ConsentView::open(&config.state_dir).map_err(MitzError)?;
        Ok(Mitz {
            inbox: config.inbox.clone(),
            config,
            spool,
            audit,
            view: Arc::new(view),
            intake_lock: Arc::new(Mutex::new(())),
            listener: None,
        })
    }

    /// The same intake with a new configuration (SIGHUP): same folders, same locks.
    pub fn reconfigured(&self, config: Arc<Config>) -> Mitz {
        Mitz {
            config,
            spool: self.spool.clone(),
            audit: self.audit.clone(),
            inbox: self.inbox.clone(),
            view: self.view.clone(),
            intake_lock: self.intake_lock.clone(),
            listener: self.listener.clone(),
        }
    }

    /// The same intake telling `listener` of every consent change.
    pub fn with_listener(mut self, listener: Arc<dyn crate::consent::ConsentCheck>) -> Mitz {
        self.listener = Some(listener);
        self
    }

    /// The consent view.
    pub fn consent_view(&self) -> &ConsentView {
        &self.view
    }

    /// The consent view, shared (the release decision when no Mitz partner has a `URL`).
    pub fn consent_view_shared(&self) -> Arc<ConsentView> {
        self.view.clone()
    }

    /// `POST` of a consent notification by `partner` (identified by its
    /// certificate; the router checked its kind, the method and the disk).
    /// Checks in DESIGN.md order: `Accept` (406), `Content-Type`
    /// (415), size (413), hostile or malformed content and `AORTA-ID` (400),
    /// transaction control (400), holder (400); then the spool, then 200.
    pub fn intake(&self, partner: MitzPartner<'_>, req: &Request, now: i64) -> Intake {
        let aorta_header = req.header("aorta-id");
        let refuse = |r: Refusal, format: Format| Intake {
            response: self.refuse(partner, req, &r, format, None),
            queued: false,
        };
        let declared = match head_checks(req) {
            Ok(f) => f,
            Err(r) => return refuse(r, Format::Json),
        };
        let format = match declared.map_or_else(|| sniff_format(&req.body), Ok) {
            Ok(f) => f,
            Err(r) => return refuse(r, Format::Json),
        };
        // Answer in the request's format unless Accept or _format says otherwise.
        let answer = wire::response_format(req, format);
        let value = match wire::read_body(
            &req.body,
            req.header("content-type"),
            MAX_NOTIFICATION,
            Release::Only(FhirVersion::R4),
        ) {
            Ok(body) => body.value,
            Err(r) => return refuse(aorta_codes(r), answer),
        };
        let aorta = match aorta_header.map(aorta::parse).transpose() {
            Ok(a) => a,
            Err(why) => return refuse(Refusal::value("AORTA-ID", why), answer),
        };
        let n = match notification::validate(&value, &self.config.org_ura) {
            Ok(n) => n,
            Err(r) => return refuse(r, answer),
        };
        // The parser checked UTF-8 for JSON and XML alike; keep it exactly.
        let Ok(raw) = std::str::from_utf8(&req.body) else {
            return refuse(Refusal::invalid("the body is not UTF-8"), answer);
        };
        let id = item_id(partner.name, &req.body);
        let version = aorta::response_version(req.header("aorta-version"));
        let ok = || Intake {
            response: success(&value, n.entries, answer).header("AORTA-Version", version.clone()),
            queued: false,
        };
        let guard = self.intake_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.spool.find(&id).is_some() {
            drop(guard);
            self.duplicate(partner, req, n.bsn.as_str(), &id, aorta.as_ref());
            return ok();
        }
        let uuid = match random::uuid_v4() {
            Ok(u) => u,
            Err(_) => {
                return self.fail(
                    partner,
                    req,
                    &id,
                    "no randomness for the inbox name",
                    answer,
                );
            }
        };
        let stored = StoredNotification {
            raw: raw.to_string(),
            format,
            received_at: now,
            uuid,
            patient: n.bsn.as_str().to_string(),
            holder: n.holder.clone(),
            profile: n.profile,
            consents: n.consents.clone(),
            request_id: req.request_id.clone(),
            aorta_id: aorta.as_ref().map(AortaId::audit_form),
        };
        let enqueued = serde_json::to_value(&stored)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                let item = Item {
                    id: id.clone(),
                    kind: KIND_MITZ.into(),
                    partner: partner.name.to_string(),
                    created_at: now,
                    attempts: 0,
                    not_before: now,
                    give_up_at: None,
                    last_error: None,
                    body,
                };
                self.spool.enqueue(&item).map_err(|e| e.to_string())
            });
        let new = match enqueued {
            Ok(new) => new,
            Err(e) => {
                log::error!(
                    "event=mitz.store_failed partner={} item={id} error={}",
                    partner.name,
                    Q(&e)
                );
                return self.fail(
                    partner,
                    req,
                    &id,
                    "the notification could not be stored",
                    answer,
                );
            }
        };
        drop(guard);
        if !new {
            // Stored by someone else between the check and the write.
            self.duplicate(partner, req, n.bsn.as_str(), &id, aorta.as_ref());
            return ok();
        }
        if !self.audit_event(
            partner,
            req,
            "mitz.received",
            "success",
            n.bsn.as_str(),
            &id,
            aorta.as_ref(),
        ) {
            return self.fail(
                partner,
                req,
                &id,
                "the audit trail could not be written",
                answer,
            );
        }
        if n.profile == Profile::Unknown {
            log::warn!(
                "event=mitz.unknown_profile partner={} item={id} rid={} action=stored_without_interpretation",
                partner.name,
                Rid(&req.request_id)
            );
        }
        log::info!(
            "event=mitz.received partner={} item={id} inbox={} format={} consents={} profile={}{} rid={} status=200",
            partner.name,
            Q(&stored.inbox_name()),
            format.name(),
            n.consents.len(),
            profile_label(n.profile),
            aorta_fields(aorta.as_ref()),
            Rid(&req.request_id)
        );
        Intake {
            queued: true,
            ..ok()
        }
    }

    /// A request from `partner` whose body is over the size limit and was
    /// not read: the refusal of the checks that come before size (`Accept`
    /// 406, `Content-Type` 415), or `None` when only the size is wrong.
    pub fn refuse_by_head(&self, partner: MitzPartner<'_>, req: &Request) -> Option<Response> {
        let r = head_checks(req).err()?;
        Some(self.refuse(partner, req, &r, Format::Json, None))
    }

    /// The same bytes again: audited and logged; the answer is the same 200
    /// (the notification is stored, so an audit failure does not undo that).
    fn duplicate(
        &self,
        partner: MitzPartner<'_>,
        req: &Request,
        patient: &str,
        id: &str,
        aorta: Option<&AortaId>,
    ) {
        self.audit_event(
            partner,
            req,
            "mitz.duplicate",
            "success",
            patient,
            id,
            aorta,
        );
        log::info!(
            "event=mitz.duplicate partner={} item={id}{} rid={} status=200",
            partner.name,
            aorta_fields(aorta),
            Rid(&req.request_id)
        );
    }

    /// The spool worker of a `mitz` item: writes the inbox file (temp,
    /// fsync, rename: a rerun after a crash replaces it) and applies the
    /// Consents to the consent view.
    pub fn store(&self, item: &Item) -> Outcome {
        let stored: StoredNotification = match serde_json::from_value(item.body.clone()) {
            Ok(s) => s,
            Err(e) => return Outcome::Dead(format!("the stored notification is unreadable: {e}")),
        };
        let name = stored.inbox_name();
        let path = self.inbox.join(&item.partner).join(&name);
        if let Err(e) = crate::util::durable::write_shared(&path, stored.raw.as_bytes()) {
            return retry_later("mitz.inbox_failed", item, format!("inbox: {e}"));
        }
        let applied = match crate::ids::Bsn::parse(&stored.patient) {
            Some(bsn) if stored.profile == Profile::V3_8 => {
                match self
                    .view
                    .apply(&stored.holder, &bsn, &stored.consents, &item.id)
                {
                    Ok(a) => {
                        if a.changed > 0 {
                            if let Some(l) = &self.listener {
                                l.forget_patient(&bsn);
                            }
                        }
                        a
                    }
                    Err(e) => return retry_later("mitz.consent_failed", item, e.to_string()),
                }
            }
            // A profile the view does not read (4.0, say) may still change
            // what Mitz would answer: forget any decision kept for the patient.
            Some(bsn) => {
                if let Some(l) = &self.listener {
                    l.forget_patient(&bsn);
                }
                consent::Applied::default()
            }
            None => consent::Applied::default(),
        };
        log::info!(
            "event=mitz.stored partner={} item={} inbox={} bytes={} consent_changed={} consent_stale={}",
            item.partner,
            item.id,
            Q(&name),
            stored.raw.len(),
            applied.changed,
            applied.stale
        );
        Outcome::Done
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_event(
        &self,
        partner: MitzPartner<'_>,
        req: &Request,
        action: &str,
        outcome: &str,
        patient: &str,
        item: &str,
        aorta: Option<&AortaId>,
    ) -> bool {
        let request_id = match aorta {
            Some(a) => format!("{}|{}", req.request_id, a.audit_form()),
            None => req.request_id.clone(),
        };
        self.audit.record_or_log(Event {
            action,
            outcome,
            partner: Some(partner.name),
            who_system: Some(partner.name),
            patient: Some(patient),
            object: Some(item),
            request_id: Some(&request_id),
            ..Event::default()
        })
    }

    fn refuse(
        &self,
        partner: MitzPartner<'_>,
        req: &Request,
        r: &Refusal,
        format: Format,
        item: Option<&str>,
    ) -> Response {
        let _ = self.audit.record(Event {
            action: "mitz.refused",
            outcome: "refused",
            partner: Some(partner.name),
            who_system: Some(partner.name),
            object: item,
            reason: Some(&r.diagnostics()),
            request_id: Some(&req.request_id),
            ..Event::default()
        });
        log::info!(
            "event=mitz.refused partner={} rid={} status={} code={} at={} reason={}",
            partner.name,
            Rid(&req.request_id),
            r.status,
            r.code.as_str(),
            Q(r.expression.as_deref().unwrap_or("-")),
            Q(&r.diagnostics())
        );
        r.response(format, FhirVersion::R4)
    }

    fn fail(
        &self,
        partner: MitzPartner<'_>,
        req: &Request,
        id: &str,
        why: &'static str,
        format: Format,
    ) -> Intake {
        let r = Refusal::exception(why);
        Intake {
            response: self.refuse(partner, req, &r, format, Some(id)),
            queued: false,
        }
    }
}

/// A failed local write: logged (`event`), retried with back-off.
fn retry_later(event: &str, item: &Item, reason: String) -> Outcome {
    log::warn!(
        "event={event} partner={} item={} error={}",
        item.partner,
        item.id,
        Q(&reason)
    );
    Outcome::Retry {
        reason,
        retry_after: None,
    }
}

/// The checks on the head that come before the body in DESIGN.md's order:
/// `Accept` (406), then `Content-Type` (415 when not FHIR JSON or XML, or
/// when it names a FHIR version other than R4). The format `Content-Type`
/// names, `None` when it is absent.
fn head_checks(req: &Request) -> Result<Option<Format>, Refusal> {
    let format_param = wire::format_param(req);
    if fhir::negotiate(format_param.as_deref(), req.header("accept"), Format::Json).is_none() {
        return Err(Refusal::not_acceptable(
            "Accept allows neither FHIR JSON nor FHIR XML",
        ));
    }
    let Some(ct) = req.header("content-type") else {
        return Ok(None);
    };
    let ct =
        fhir::parse_content_type(ct).map_err(|e| Refusal::unsupported_media_type(e.to_string()))?;
    match ct
        .fhir_version
        .as_deref()
        .map(FhirVersion::from_mime_parameter)
    {
        None | Some(Some(FhirVersion::R4)) => Ok(Some(ct.format)),
        Some(_) => Err(Refusal::unsupported_media_type(
            "a consent notification is FHIR R4 (fhirVersion=4.0)",
        )),
    }
}

/// The body's format when it came without `Content-Type` (415 when it is
/// neither JSON nor XML).
fn sniff_format(body: &[u8]) -> Result<Format, Refusal> {
    fhir::sniff(body).ok_or_else(|| {
        Refusal::unsupported_media_type("no Content-Type, and the body is neither JSON nor XML")
    })
}

/// AORTA answers with `required`, `value`, `invalid` (spec §6) and, for
/// hostile content, `security`; the parser's finer `structure` is `invalid`.
fn aorta_codes(mut r: Refusal) -> Refusal {
    if r.code == IssueType::Structure {
        r.code = IssueType::Invalid;
    }
    r
}

/// 200 with a `transaction-response` Bundle: one entry per request entry,
/// each `200 OK` (spec §3 step 7). The caller adds `AORTA-Version`.
fn success(bundle: &Value, entries: usize, format: Format) -> Response {
    let full_urls: Vec<Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| e.get("fullUrl").cloned().unwrap_or(Value::Null))
        .collect();
    let entry: Vec<Value> = (0..entries)
        .map(|i| match full_urls.get(i) {
            Some(Value::String(u)) => json!({"fullUrl": u, "response": {"status": "200 OK"}}),
            _ => json!({"response": {"status": "200 OK"}}),
        })
        .collect();
    let response = json!({
        "resourceType": "Bundle",
        "id": random::uuid_v4().unwrap_or_default(),
        "type": "transaction-response",
        "entry": entry,
    });
    wire::resource_response(200, &response, format, FhirVersion::R4)
}

fn aorta_fields(a: Option<&AortaId>) -> String {
    match a {
        Some(a) => format!(
            " aorta_initial={} aorta_request={}",
            a.initial
                .as_deref()
                .map_or_else(|| "-".to_string(), |i| P(i).to_string()),
            P(&a.request)
        ),
        None => String::new(),
    }
}

fn profile_label(p: Profile) -> &'static str {
    match p {
        Profile::V3_8 => "3.8",
        Profile::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests;
