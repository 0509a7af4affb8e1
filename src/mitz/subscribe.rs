//! Mitz subscriptions (I/O): queueing a patient's subscription, the spool
//! worker that makes it, and the record of what Mitz subscribed. The
//! Subscription and the meaning of Mitz's answers are [`super::subscription`]
//! (pure).
//!
//! | step | I/O |
//! |---|---|
//! | [`queue`]: one `mitz-subscribe` item per (Mitz partner, patient), unless one is recorded or queued | spool |
//! | [`Subscriptions::run`]: `POST <URL>/abonnementen/fhir/Subscription` over mTLS | HTTP, then the record and the audit trail |
//! | [`SubscriptionStore`]: `NP_STATE_DIR/mitz/subscriptions/<hash>.json` | files, through [`crate::util::durable`] |
//!
//! Work is queued when the outbox publishes a record of a patient to a
//! Zorgviewer partner whose consent is `mitz` (the sender calls
//! [`Subscriptions`] as its [`AfterPublish`], after the record is saved), and
//! by `np-agent mitz subscribe`. Queueing is idempotent: the item id is fixed
//! by the pair ([`super::subscription::item_id`]) and the spool never queues
//! an id it holds in any state, so a crash before or after the queueing, a
//! second record of the patient or a resend queues nothing new; a recorded
//! subscription queues nothing at all. The worker checks the record first,
//! so work queued twice in a race is made once.
//!
//! Logging: partner, item id, status, the subscription id, the request id
//! (`X-Request-Id`); never the BSN. The audit trail records
//! `mitz.subscribed` with the patient: `success` with the subscription id,
//! or `error` with the reason the work was given up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::subscription::{
    self, Answer, FHIR_JSON, KIND_SUBSCRIBE, Origin, SubscribeBody, Subscriber, Verdict,
};
use crate::audit::{AuditLog, Event};
use crate::config::{Config, MitzApi};
use crate::http::partners::PartnerHttp;
use crate::ids::Bsn;
use crate::ops::logging::{P, Q};
use crate::sender::AfterPublish;
use crate::spool::{Item, Outcome, Spool, SpoolError};
use crate::util::durable::{self, DurableError};
use crate::util::random;

/// The audit action of a subscription made or given up.
pub const AUDIT_SUBSCRIBED: &str = "mitz.subscribed";

/// One recorded subscription: Mitz notifies `partner`'s subscriber (us)
/// about `patient`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub partner: String,
    /// The BSN.
    pub patient: String,
    /// The id Mitz gave (`Location` or the answer's body); `None` when it
    /// gave none.
    pub subscription: Option<String>,
    /// Mitz's answer: `201` new, `202` it existed already.
    pub status: u16,
    /// Unix seconds.
    pub subscribed_at: i64,
}

/// A failure of the subscription record or the queue, naming the file.
#[derive(Debug)]
pub enum SubscribeError {
    Io(DurableError),
    Corrupt { path: PathBuf, reason: String },
    Spool(SpoolError),
}

impl std::fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscribeError::Io(e) => write!(f, "mitz subscriptions: {e}"),
            SubscribeError::Corrupt { path, reason } => {
                write!(f, "mitz subscriptions: {}: {reason}", path.display())
            }
            SubscribeError::Spool(e) => write!(f, "mitz subscriptions: {e}"),
        }
    }
}

impl std::error::Error for SubscribeError {}

impl From<SpoolError> for SubscribeError {
    fn from(e: SpoolError) -> Self {
        SubscribeError::Spool(e)
    }
}

/// The subscriptions Mitz confirmed: one JSON file per (partner, patient)
/// under `NP_STATE_DIR/mitz/subscriptions/`, named by a hash of the pair so
/// no BSN is in a name. Written only by the worker that made the
/// subscription, read by anyone.
#[derive(Debug)]
pub struct SubscriptionStore {
    dir: PathBuf,
}

impl SubscriptionStore {
    /// Opens (creating) the folder, removing temp files a crash left.
    pub fn open(state_dir: &Path) -> Result<SubscriptionStore, DurableError> {
        let store = SubscriptionStore::reader(state_dir);
        durable::create_dir_all(&store.dir)?;
        durable::remove_temp_files(&store.dir)?;
        Ok(store)
    }

    /// The store of a state folder another process owns, for reading only
    /// (creates and removes nothing; a missing folder is an empty store).
    pub fn reader(state_dir: &Path) -> SubscriptionStore {
        SubscriptionStore {
            dir: state_dir.join("mitz").join("subscriptions"),
        }
    }

    fn path(&self, partner: &str, patient: &Bsn) -> PathBuf {
        let name = subscription::pair_hash(partner, patient);
        self.dir.join(format!("{name}.json"))
    }

    /// The recorded subscription of `patient` at `partner`, if any.
    pub fn get(&self, partner: &str, patient: &Bsn) -> Result<Option<Recorded>, SubscribeError> {
        let path = self.path(partner, patient);
        match std::fs::read(&path) {
            Ok(bytes) => read_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SubscribeError::Io(DurableError {
                path,
                step: "read",
                source,
            })),
        }
    }

    /// Records a subscription (temp, fsync, rename: replaces an earlier one).
    pub fn save(&self, r: &Recorded) -> Result<(), SubscribeError> {
        let patient = Bsn::parse(&r.patient).ok_or_else(|| SubscribeError::Corrupt {
            path: self.dir.clone(),
            reason: "a subscription record without a valid BSN".into(),
        })?;
        let path = self.path(&r.partner, &patient);
        let bytes = serde_json::to_vec(r).map_err(|e| SubscribeError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        durable::write_atomic(&path, &bytes).map_err(SubscribeError::Io)
    }

    /// Every recorded subscription, by partner and then time, and a message
    /// for each file that could not be read (it is skipped).
    pub fn list(&self) -> Result<(Vec<Recorded>, Vec<String>), SubscribeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(source) => {
                return Err(SubscribeError::Io(DurableError {
                    path: self.dir.clone(),
                    step: "read directory",
                    source,
                }));
            }
        };
        let (mut found, mut failed) = (Vec::new(), Vec::new());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = entry.path();
            match std::fs::read(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|b| read_record(&path, &b).map_err(|e| e.to_string()))
            {
                Ok(r) => found.push(r),
                Err(e) => failed.push(e),
            }
        }
        found.sort_by(|a, b| {
            (&a.partner, a.subscribed_at, &a.patient).cmp(&(
                &b.partner,
                b.subscribed_at,
                &b.patient,
            ))
        });
        Ok((found, failed))
    }
}

fn read_record(path: &Path, bytes: &[u8]) -> Result<Recorded, SubscribeError> {
    serde_json::from_slice(bytes).map_err(|e| SubscribeError::Corrupt {
        path: path.to_path_buf(),
        // The parser's message may quote a value, and a value may be a BSN.
        reason: format!("not a subscription record (line {})", e.line()),
    })
}

/// What [`queue`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// A new item is queued.
    New,
    /// The item is in the spool already (queued, being tried, waiting to
    /// retry, done, or given up: `np-agent retry-dead` requeues it).
    Pending,
    /// Mitz confirmed this subscription before: nothing to do.
    Recorded,
}

/// Queues the subscription of `patient` at `api`, unless it is recorded or
/// in the spool already.
pub fn queue(
    spool: &Spool,
    store: &SubscriptionStore,
    api: MitzApi<'_>,
    patient: &Bsn,
    origin: Origin,
    now: i64,
) -> Result<Queued, SubscribeError> {
    if store.get(api.name, patient)?.is_some() {
        return Ok(Queued::Recorded);
    }
    let body = SubscribeBody {
        patient: patient.as_str().to_string(),
        origin,
    };
    let item = Item {
        id: subscription::item_id(api.name, patient),
        kind: KIND_SUBSCRIBE.into(),
        partner: api.name.to_string(),
        created_at: now,
        attempts: 0,
        not_before: now,
        give_up_at: None,
        last_error: None,
        body: body.to_value(),
    };
    if spool.enqueue(&item)? {
        log::info!(
            "event=mitz.subscription_queued partner={} item={} origin={}",
            api.name,
            item.id,
            origin.label()
        );
        Ok(Queued::New)
    } else {
        Ok(Queued::Pending)
    }
}

/// Subscriptions with the configuration of the moment: the sender's
/// [`AfterPublish`] and the `mitz-subscribe` spool worker.
pub struct Subscriptions {
    config: Arc<Config>,
    spool: Arc<Spool>,
    audit: Arc<AuditLog>,
    store: Arc<SubscriptionStore>,
}

impl Subscriptions {
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        audit: Arc<AuditLog>,
        store: Arc<SubscriptionStore>,
    ) -> Subscriptions {
        Subscriptions {
            config,
            spool,
            audit,
            store,
        }
    }

    /// The spool worker of a `mitz-subscribe` item: the Subscription to the
    /// item's partner, then the record, the audit trail and the log.
    pub fn run(&self, item: &Item, http: &dyn PartnerHttp, now: i64) -> Outcome {
        let Ok(body) = serde_json::from_value::<SubscribeBody>(item.body.clone()) else {
            return corrupt(item, "not a subscribe body");
        };
        let Some(patient) = Bsn::parse(&body.patient) else {
            return corrupt(item, "patient is not a valid BSN");
        };
        let Some(api) = self.config.mitz_api(&item.partner) else {
            return Outcome::Dead(format!(
                "partner {} is not a mitz partner with a URL (NP_PARTNER_{}_URL); subscription not made",
                Q(&item.partner),
                item.partner.to_ascii_uppercase()
            ));
        };
        match self.store.get(api.name, &patient) {
            Ok(None) => {}
            Ok(Some(_)) => {
                log::debug!(
                    "event=mitz.subscribe_skipped partner={} item={} reason=already_recorded",
                    api.name,
                    item.id
                );
                return Outcome::Done;
            }
            Err(e) => return self.local_failure(api, item, &e.to_string()),
        }
        let Some(who) = Subscriber::of(&self.config) else {
            return Outcome::Dead(format!(
                "partner {}: NP_ORG_CATEGORY is not set; subscription not made",
                api.name
            ));
        };
        let url = api.endpoint(subscription::PATH);
        let bytes = crate::fhir::to_json_string(&who.subscription(&patient)).into_bytes();
        let Ok(rid) = random::uuid_v4() else {
            return self.local_failure(api, item, "no randomness for the X-Request-Id");
        };
        let started = Instant::now();
        let reply = http.send(
            api.name,
            "POST",
            &url,
            FHIR_JSON,
            &bytes,
            &[("Accept", FHIR_JSON), ("X-Request-Id", &rid)],
        );
        let ms = started.elapsed().as_millis();
        let call = Call {
            api,
            item,
            patient: &patient,
            rid: &rid,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(detail) => {
                let reason = format!("partner {}: POST {url} failed: {detail}", api.name);
                self.log_failure(&call, None, &reason, true);
                return Outcome::Retry {
                    reason,
                    retry_after: None,
                };
            }
        };
        let answer = Answer {
            status: reply.status,
            location: reply.location.as_deref(),
            retry_after: reply.retry_after.as_deref(),
            body: &reply.body,
        };
        match subscription::judge(
            api.name,
            &url,
            &answer,
            now,
            self.config.retry_cap.as_secs(),
        ) {
            Verdict::Subscribed { status, id } => {
                let record = Recorded {
                    partner: api.name.to_string(),
                    patient: patient.as_str().to_string(),
                    subscription: id,
                    status,
                    subscribed_at: now,
                };
                if let Err(e) = self.store.save(&record) {
                    return self.local_failure(api, item, &e.to_string());
                }
                let id = record.subscription.as_deref().unwrap_or("-");
                self.audit(&call, "success", &format!("Subscription/{id}"), None);
                log::info!(
                    "event=mitz.subscribed partner={} status={status} subscription={} item={} origin={} rid={rid} ms={ms}",
                    api.name,
                    P(id),
                    item.id,
                    body.origin.label()
                );
                Outcome::Done
            }
            Verdict::Refused { reason } => {
                self.log_failure(&call, Some(reply.status), &reason, false);
                self.audit(&call, "error", "Subscription", Some(&reason));
                Outcome::Dead(reason)
            }
            Verdict::Retry {
                reason,
                retry_after,
            } => {
                self.log_failure(&call, Some(reply.status), &reason, true);
                Outcome::Retry {
                    reason,
                    retry_after,
                }
            }
        }
    }

    /// Our own disk or randomness failed: try again later.
    fn local_failure(&self, api: MitzApi<'_>, item: &Item, reason: &str) -> Outcome {
        log::warn!(
            "event=mitz.subscription_record_failed partner={} item={} error={}",
            api.name,
            item.id,
            Q(reason)
        );
        Outcome::Retry {
            reason: reason.to_string(),
            retry_after: None,
        }
    }

    fn log_failure(&self, call: &Call<'_>, status: Option<u16>, reason: &str, retry: bool) {
        let status = status.map_or_else(|| "-".to_string(), |s| s.to_string());
        log::warn!(
            "event=mitz.subscribe_failed partner={} item={} status={status} retry={retry} rid={} reason={}",
            call.api.name,
            call.item.id,
            call.rid,
            Q(reason)
        );
    }

    fn audit(&self, call: &Call<'_>, outcome: &str, object: &str, reason: Option<&str>) {
        let org = crate::ids::org_claim(&crate::ids::OrgId::Ura(self.config.org_ura.clone()));
        self.audit.record_or_log(Event {
            action: AUDIT_SUBSCRIBED,
            outcome,
            partner: Some(call.api.name),
            who_org: Some(&org),
            who_system: Some(&self.config.system_id),
            patient: Some(call.patient.as_str()),
            object: Some(object),
            reason,
            request_id: Some(call.rid),
            ..Event::default()
        });
    }
}

/// One attempt, for the log and the audit trail.
struct Call<'a> {
    api: MitzApi<'a>,
    item: &'a Item,
    patient: &'a Bsn,
    rid: &'a str,
}

impl AfterPublish for Subscriptions {
    /// A record of `patient` was published to a Zorgviewer partner whose
    /// consent is Mitz: queue its subscription at every Mitz partner with a
    /// `URL` that has none recorded or queued.
    fn published(&self, patient: &Bsn, now: i64) -> Result<usize, String> {
        let mut queued = 0;
        for api in self.config.mitz_apis() {
            match queue(
                &self.spool,
                &self.store,
                api,
                patient,
                Origin::Published,
                now,
            ) {
                Ok(Queued::New) => queued += 1,
                Ok(Queued::Pending | Queued::Recorded) => {}
                Err(e) => return Err(format!("queue the Mitz subscription at {}: {e}", api.name)),
            }
        }
        Ok(queued)
    }
}

/// A spool body that is not what we wrote. The parser's message is not
/// used: it may quote a value, and a value may be a BSN.
fn corrupt(item: &Item, detail: &str) -> Outcome {
    Outcome::Dead(format!("spool item {}: unreadable body: {detail}", item.id))
}

#[cfg(test)]
mod tests;
