//! Localisation: our referral in the national referral index (NVI) for each
//! patient the hospital publishes data about, under a pseudonym from the
//! pseudonym service (PRS) that neither we nor the PRS can see (spec
//! vad-prs-nvi.md section 0; DESIGN.md "PRS / NVI"). Off unless `prs` and
//! `nvi` partners are configured.
//!
//! | module | job | I/O |
//! |---|---|---|
//! | [`oprf`] | the OPRF input of a BSN, its blinding, the encodings | none |
//! | [`token`] | the `client_credentials` form for PRS and NVI, reading the answer, the cache | the token `POST` |
//! | [`register`] | evaluate, register, deregister, localise: requests and what answers mean | none |
//! | [`store`] | what the index holds of ours, `NP_STATE_DIR/nvi/` | files |
//! | [`work`] | one attempt: tokens, the PRS, the NVI (401 refreshes once) | HTTP |
//! | this file | queueing (the sender's [`Publication`] hook, `np-agent nvi`), the spool workers, the records and the audit trail | spool, files |
//!
//! **Work.** A registration is a spool item `nvi-register` per (NVI partner,
//! patient, round), queued when data of the patient is first published (a
//! Twiin export stored, a Zorgviewer record saved) and by `np-agent nvi
//! register`; a removal is an `nvi-deregister` item, queued when the last
//! published data of the patient is withdrawn (a case cancelled, a record
//! withdrawn) and by `np-agent nvi deregister` (the patient objects). The
//! item ids are fixed by (partner, patient, round) ([`item_id`]) and the
//! spool never queues an id it holds, so a resend, a second export or a
//! crash queues nothing new; a completed removal starts the next round.
//!
//! **Each attempt evaluates afresh** ([`work::pseudonym`]): a new blind, a
//! token, `POST /oprf/eval` at the PRS, then the call to the index. Nothing
//! of it is stored: the blind factor never reaches disk or a log, and a
//! PRS JWE expires after 300 s anyway. A crash between the PRS and the
//! index leaves the item, which the next start tries again from the
//! start; a crash after the index answered and before the record is saved
//! registers again, which the index answers `409`: done.
//!
//! **Order.** A registration finds a removal of its round queued: it is
//! superseded and does nothing. A removal waits while the registration of
//! its round is being tried, and after a withdrawal it does nothing when
//! the patient has published data again meanwhile (a live case or record:
//! asked afresh each attempt).
//!
//! Logging: partner, item id, status, origin, request id; never the BSN, the
//! blind factor, the JWE, the pseudonym or a token. The audit trail records
//! `nvi.registered` and `nvi.deregistered` with the patient.

pub mod oprf;
pub mod register;
pub mod store;
pub mod token;
pub mod work;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{AuditLog, Event};
use crate::cases::CaseStore;
use crate::config::{Config, NviPartner};
use crate::http::partners::PartnerHttp;
use crate::ids::Bsn;
use crate::ops::logging::Q;
use crate::records::RecordStore;
use crate::sender::Publication;
use crate::spool::{Item, Outcome, Spool, SpoolError, State};

use self::register::Op;
use self::store::{Registration, RegistrationStore, Standing, StoreError};
use self::token::ServiceTokens;
use self::work::{Attempt, Failure};

/// The spool kind of a registration.
pub const KIND_REGISTER: &str = "nvi-register";
/// The spool kind of a removal.
pub const KIND_DEREGISTER: &str = "nvi-deregister";
/// The spool kinds the [`Localisation`] worker runs.
pub const KINDS: [&str; 2] = [KIND_REGISTER, KIND_DEREGISTER];
/// Audit actions.
pub const AUDIT_REGISTERED: &str = "nvi.registered";
pub const AUDIT_DEREGISTERED: &str = "nvi.deregistered";
/// How long a removal waits for a registration being tried.
const WAIT_SECS: u64 = 5;

/// Why work was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Data of the patient was published.
    Published,
    /// `np-agent nvi register`.
    Backfill,
    /// The last published data of the patient was withdrawn.
    Withdrawn,
    /// `np-agent nvi deregister`: the patient objects.
    Objection,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Published => "published",
            Origin::Backfill => "backfill",
            Origin::Withdrawn => "withdrawn",
            Origin::Objection => "objection",
        }
    }
}

/// What an `nvi-register` or `nvi-deregister` item carries; the item's
/// partner is the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkBody {
    /// The BSN (the spool is state, not a log).
    pub patient: String,
    pub origin: Origin,
    /// The round the work belongs to ([`Registration::round`]).
    pub round: u32,
}

impl WorkBody {
    pub fn to_value(&self) -> Value {
        json!({"patient": self.patient, "origin": self.origin.label(), "round": self.round})
    }
}

/// The spool item id of a piece of work: `nvi-reg-`, `nvi-dereg-` (after
/// a withdrawal) or `nvi-obj-` (an objection), the pair's hash and the
/// round. The same for the same work whoever queues it.
pub fn item_id(origin: Origin, partner: &str, patient: &Bsn, round: u32) -> String {
    let prefix = match origin {
        Origin::Published | Origin::Backfill => "nvi-reg",
        Origin::Withdrawn => "nvi-dereg",
        Origin::Objection => "nvi-obj",
    };
    format!("{prefix}-{}-{round}", store::pair_hash(partner, patient))
}

/// What queueing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// A new item is queued.
    New,
    /// The same work is in the spool already (in any state; a dead item is
    /// requeued by `np-agent retry-dead`).
    Pending,
    /// Nothing to do: registered already, or not registered when a
    /// withdrawal asks for a removal.
    Nothing,
    /// The patient objected: publishing does not register again.
    Objected,
}

/// A failure to queue, naming the file.
#[derive(Debug)]
pub enum QueueError {
    Store(StoreError),
    Spool(SpoolError),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Store(e) => e.fmt(f),
            QueueError::Spool(e) => write!(f, "nvi: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

/// Queues the work `origin` asks for about `patient` at index `nvi`,
/// unless it is done or in the spool already.
pub fn queue(
    spool: &Spool,
    store: &RegistrationStore,
    nvi: NviPartner<'_>,
    patient: &Bsn,
    origin: Origin,
    now: i64,
) -> Result<Queued, QueueError> {
    let record = store.get(nvi.name, patient).map_err(QueueError::Store)?;
    let round = record.as_ref().map_or(0, |r| r.round);
    let standing = record.as_ref().map(|r| r.standing);
    let kind = match origin {
        Origin::Published | Origin::Backfill => {
            match standing {
                Some(Standing::Registered) => return Ok(Queued::Nothing),
                Some(Standing::Objected) if origin == Origin::Published => {
                    return Ok(Queued::Objected);
                }
                _ => {}
            }
            KIND_REGISTER
        }
        Origin::Withdrawn => {
            // Only what is registered, or may be about to be, is removed.
            let registering = spool
                .find(&item_id(Origin::Published, nvi.name, patient, round))
                .is_some_and(|s| !matches!(s, State::Done | State::Dead));
            if standing != Some(Standing::Registered) && !registering {
                return Ok(Queued::Nothing);
            }
            KIND_DEREGISTER
        }
        Origin::Objection => KIND_DEREGISTER,
    };
    let body = WorkBody {
        patient: patient.as_str().to_string(),
        origin,
        round,
    };
    let item = Item {
        id: item_id(origin, nvi.name, patient, round),
        kind: kind.into(),
        partner: nvi.name.to_string(),
        created_at: now,
        attempts: 0,
        not_before: now,
        give_up_at: None,
        last_error: None,
        body: body.to_value(),
    };
    if spool.enqueue(&item).map_err(QueueError::Spool)? {
        log::info!(
            "event=nvi.queued partner={} item={} kind={kind} origin={}",
            nvi.name,
            item.id,
            origin.label()
        );
        Ok(Queued::New)
    } else {
        Ok(Queued::Pending)
    }
}

/// Localisation with the configuration of the moment: the sender's
/// [`Publication`] hook and the spool worker of [`KINDS`].
pub struct Localisation {
    config: Arc<Config>,
    spool: Arc<Spool>,
    audit: Arc<AuditLog>,
    store: Arc<RegistrationStore>,
    cases: Arc<CaseStore>,
    records: Arc<RecordStore>,
    tokens: Arc<ServiceTokens>,
}

/// The stores [`Localisation`] reads and writes.
pub struct Stores {
    pub spool: Arc<Spool>,
    pub audit: Arc<AuditLog>,
    pub registrations: Arc<RegistrationStore>,
    pub cases: Arc<CaseStore>,
    pub records: Arc<RecordStore>,
    pub tokens: Arc<ServiceTokens>,
}

impl Localisation {
    pub fn new(config: Arc<Config>, stores: Stores) -> Localisation {
        Localisation {
            config,
            spool: stores.spool,
            audit: stores.audit,
            store: stores.registrations,
            cases: stores.cases,
            records: stores.records,
            tokens: stores.tokens,
        }
    }

    /// True when the hospital publishes data of `patient` through us: a
    /// live (not cancelled) Twiin case, or a live record at a Zorgviewer
    /// partner.
    pub fn still_published(&self, patient: &Bsn) -> bool {
        self.cases.has_live_case_of(patient.as_str())
            || self
                .config
                .partners
                .iter()
                .filter(|p| p.kind_tag() == crate::config::Kind::Zorgviewer)
                .any(|p| self.records.patient_by_bsn(&p.name, patient).is_some())
    }

    /// The spool worker of an `nvi-register` or `nvi-deregister` item.
    pub fn run(&self, item: &Item, http: &dyn PartnerHttp, now: i64) -> Outcome {
        let Ok(body) = serde_json::from_value::<WorkBody>(item.body.clone()) else {
            return corrupt(item, "not an nvi work body");
        };
        let Some(patient) = Bsn::parse(&body.patient) else {
            return corrupt(item, "patient is not a valid BSN");
        };
        let Some(nvi) = self.config.nvi_partner(&item.partner) else {
            return Outcome::Dead(format!(
                "partner {} is not an nvi partner (NP_PARTNER_{}_KIND); referral not changed",
                Q(&item.partner),
                item.partner.to_ascii_uppercase()
            ));
        };
        let record = match self.store.get(nvi.name, &patient) {
            Ok(r) => r,
            Err(e) => return self.local_failure(item, &e.to_string()),
        };
        let round = record.as_ref().map_or(0, |r| r.round);
        if body.round != round {
            return self.skip(item, "superseded");
        }
        let register = item.kind == KIND_REGISTER;
        let standing = record.as_ref().map(|r| r.standing);
        if register {
            if standing == Some(Standing::Registered) {
                return self.skip(item, "already_registered");
            }
            if standing == Some(Standing::Objected) && body.origin == Origin::Published {
                return self.skip(item, "objected");
            }
            let removal = [Origin::Withdrawn, Origin::Objection]
                .into_iter()
                .map(|o| item_id(o, nvi.name, &patient, round))
                .any(|id| {
                    self.spool
                        .find(&id)
                        .is_some_and(|s| !matches!(s, State::Done | State::Dead))
                });
            if removal {
                return self.skip(item, "superseded");
            }
        } else {
            let registering =
                self.spool
                    .find(&item_id(Origin::Published, nvi.name, &patient, round))
                    == Some(State::InFlight);
            if registering {
                return Outcome::Wait {
                    reason: "the registration of this round is being tried".into(),
                    after_secs: WAIT_SECS,
                };
            }
            if body.origin == Origin::Withdrawn && self.still_published(&patient) {
                return self.skip(item, "still_published");
            }
        }
        let attempt = Attempt {
            config: &self.config,
            tokens: &self.tokens,
            http,
            nvi,
            item: &item.id,
            now,
        };
        let op = if register {
            Op::Register
        } else {
            Op::Deregister
        };
        let started = std::time::Instant::now();
        let result = attempt.change(&patient, op);
        let ms = started.elapsed().as_millis();
        let action = if register {
            AUDIT_REGISTERED
        } else {
            AUDIT_DEREGISTERED
        };
        match result {
            Ok(done) => {
                let next = Registration {
                    partner: nvi.name.to_string(),
                    patient: patient.as_str().to_string(),
                    standing: match (register, body.origin) {
                        (true, _) => Standing::Registered,
                        (false, Origin::Objection) => Standing::Objected,
                        (false, _) => Standing::Deregistered,
                    },
                    round: if register {
                        round
                    } else {
                        round.saturating_add(1)
                    },
                    status: done.status,
                    at: now,
                };
                if let Err(e) = self.store.save(&next) {
                    return self.local_failure(item, &e.to_string());
                }
                self.audit(nvi, action, &patient, "success", None, &done.rid);
                log::info!(
                    "event={action} partner={} item={} status={} origin={} rid={} ms={ms}",
                    nvi.name,
                    item.id,
                    done.status,
                    body.origin.label(),
                    done.rid
                );
                Outcome::Done
            }
            Err(Failure::Retry {
                reason,
                retry_after,
                rid,
                step,
            }) => {
                log::warn!(
                    "event=nvi.attempt_failed partner={} item={} step={step} retry=true rid={rid} reason={}",
                    nvi.name,
                    item.id,
                    Q(&reason)
                );
                Outcome::Retry {
                    reason,
                    retry_after,
                }
            }
            Err(Failure::Refused { reason, rid, step }) => {
                log::warn!(
                    "event=nvi.attempt_failed partner={} item={} step={step} retry=false rid={rid} reason={}",
                    nvi.name,
                    item.id,
                    Q(&reason)
                );
                self.audit(nvi, action, &patient, "error", Some(&reason), &rid);
                Outcome::Dead(reason)
            }
            Err(Failure::Local(reason)) => self.local_failure(item, &reason),
        }
    }

    fn skip(&self, item: &Item, reason: &str) -> Outcome {
        log::info!(
            "event=nvi.skipped partner={} item={} reason={reason}",
            item.partner,
            item.id
        );
        Outcome::Done
    }

    /// Our own disk or randomness failed: try again later.
    fn local_failure(&self, item: &Item, reason: &str) -> Outcome {
        log::warn!(
            "event=nvi.local_failure partner={} item={} error={}",
            item.partner,
            item.id,
            Q(reason)
        );
        Outcome::Retry {
            reason: reason.to_string(),
            retry_after: None,
        }
    }

    fn audit(
        &self,
        nvi: NviPartner<'_>,
        action: &str,
        patient: &Bsn,
        outcome: &str,
        reason: Option<&str>,
        rid: &str,
    ) {
        let org = crate::ids::org_claim(&crate::ids::OrgId::Ura(self.config.org_ura.clone()));
        let source = self
            .config
            .source_id
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| s.urn());
        let object = format!("referral of {org} source {source} at {}", nvi.name);
        self.audit.record_or_log(Event {
            action,
            outcome,
            partner: Some(nvi.name),
            who_org: Some(&org),
            who_system: Some(&self.config.system_id),
            patient: Some(patient.as_str()),
            object: Some(&object),
            reason,
            request_id: Some(rid),
            ..Event::default()
        });
    }

    /// Queues `origin`'s work for `patient` at every index.
    fn queue_all(&self, patient: &Bsn, origin: Origin, now: i64) -> Result<(), String> {
        for nvi in self.config.nvi_partners() {
            queue(&self.spool, &self.store, nvi, patient, origin, now).map_err(|e| {
                format!("queue the NVI {} work at {}: {e}", origin.label(), nvi.name)
            })?;
        }
        Ok(())
    }
}

impl Publication for Localisation {
    /// Data of `patient` was published: register the patient at every
    /// index where it is not registered or queued.
    fn published(&self, patient: &Bsn, now: i64) -> Result<(), String> {
        self.queue_all(patient, Origin::Published, now)
    }

    /// Published data of `patient` was withdrawn: when nothing of the
    /// patient is published any more, remove our referral.
    fn withdrawn(&self, patient: &Bsn, now: i64) -> Result<(), String> {
        if self.still_published(patient) {
            return Ok(());
        }
        self.queue_all(patient, Origin::Withdrawn, now)
    }
}

/// A spool body that is not what we wrote. The parser's message is not
/// used: it may quote a value, and a value may be a BSN.
fn corrupt(item: &Item, detail: &str) -> Outcome {
    Outcome::Dead(format!("spool item {}: unreadable body: {detail}", item.id))
}

#[cfg(test)]
mod tests;
