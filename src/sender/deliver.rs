//! Delivery (I/O): the spool worker for `notify` and `cancel` items.
//!
//! - `notify`: `POST <FHIR_BASE>/Task` with the notification Task.
//! - `cancel`: `PUT <FHIR_BASE>/Task?identifier=urn:ietf:rfc:3986%7Curn:uuid:<uuid>`
//!   (a conditional update) with the cancellation Task, once the
//!   notification it cancels was delivered. A cancellation whose
//!   notification was never tried (dead with no attempt, or never queued)
//!   has nothing to cancel and completes without a request. One whose
//!   notification died after an attempt that may have reached the partner
//!   (a crash or timeout mid-request, then the case was cancelled) is sent
//!   all the same, and the partner's `404` ("no such Task") then means
//!   there was nothing to cancel.
//!
//! Both carry `Authorization: Bearer` with a notify token from the partner's
//! token endpoint ([`Purpose::Notify`] with the patient). Answers:
//!
//! | answer | outcome |
//! |---|---|
//! | any 2xx | [`Outcome::Done`] |
//! | 401 | token invalidated, one more try with a fresh token in the same attempt; a second 401 is dead |
//! | 408, 429, 5xx, transport error | [`Outcome::Retry`] (with the `Retry-After` seconds or date when sent, at most `NP_RETRY_CAP`) |
//! | other 4xx, 3xx | [`Outcome::Dead`] naming partner, endpoint, status and the OperationOutcome issue code |
//! | token endpoint transient (5xx, 429, 408, unreachable, discovery) | retry |
//! | token endpoint refusal (`invalid_grant`, `invalid_client`, other 4xx) | dead, naming the OAuth error |
//!
//! A notification for a case that was cancelled before it could be delivered,
//! or whose `restriction.period.end` has passed, is not sent (dead, with the
//! reason). The notifications of one case go out in the order they were
//! created: a newer one waits ([`Outcome::Wait`], not an attempt) while an
//! older one is still queued or being retried, and a cancellation waits the
//! same way for its notification. Logs carry partner, case, Task identifier, status and time, never
//! the BSN, the token or the Task; the audit trail records each delivery with
//! the patient.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::audit::{self, AuditLog};
use crate::cases::{CaseStatus, CaseStore};
use crate::config::{Config, TwiinPartner};
use crate::http::partners::{HttpReply, PartnerHttp};
use crate::ids::{self, Bsn};
use crate::oauth::client::{Purpose, TokenClient, TokenClientError};
use crate::ops::logging::Q;
use crate::sender::outbox::{CancelBody, KIND_CANCEL, KIND_NOTIFY, NotifyBody, TASK_CANCELLED};
use crate::sender::task;
use crate::spool::{Item, Outcome, Spool, State};
use crate::util::{percent, retry_after};

/// What delivery reads besides the item.
pub struct Delivery<'a> {
    pub config: &'a Config,
    pub cases: &'a CaseStore,
    pub spool: &'a Spool,
    pub audit: &'a AuditLog,
}

/// FHIR JSON, the only format we send.
const FHIR_JSON: &str = "application/fhir+json";

/// One request to make.
struct Call<'a> {
    partner: TwiinPartner<'a>,
    patient: Bsn,
    method: &'static str,
    url: String,
    body: Vec<u8>,
    /// `notify` or `cancel`, for log events.
    what: &'static str,
    /// A `404` means the partner never got the Task: nothing to do.
    absent_is_done: bool,
    case_id: &'a str,
    task_id: &'a str,
}

impl Delivery<'_> {
    /// Delivers one `notify` or `cancel` item.
    pub fn deliver(
        &self,
        item: &Item,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Outcome {
        let partner = match self.partner(item) {
            Ok(p) => p,
            Err(reason) => return Outcome::Dead(reason),
        };
        match item.kind.as_str() {
            KIND_NOTIFY => self.notify(item, partner, client, http, now),
            KIND_CANCEL => self.cancel(item, partner, client, http, now),
            other => Outcome::Dead(format!(
                "spool item {}: kind {} is not the sender's",
                item.id,
                Q(other)
            )),
        }
    }

    fn partner(&self, item: &Item) -> Result<TwiinPartner<'_>, String> {
        let p = self
            .config
            .partner(&item.partner)
            .ok_or_else(|| format!("partner {} is not configured", Q(&item.partner)))?;
        p.as_twiin().ok_or_else(|| {
            format!(
                "partner {} is a {} partner, not twiin",
                p.name,
                p.kind_name()
            )
        })
    }

    fn notify(
        &self,
        item: &Item,
        partner: TwiinPartner<'_>,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Outcome {
        let Ok(body) = serde_json::from_value::<NotifyBody>(item.body.clone()) else {
            return corrupt(item, &"not a notify body");
        };
        let Some(patient) = Bsn::parse(&body.patient) else {
            return corrupt(item, &"patient is not a valid BSN");
        };
        let Some(case) = self.cases.get(partner.name, &body.case_id) else {
            return Outcome::Dead(format!(
                "partner {}: case {} is unknown; notification not sent",
                partner.name, body.case_id
            ));
        };
        let Some(position) = case.tasks.iter().position(|t| t.task_id == body.task_id) else {
            return Outcome::Dead(format!(
                "partner {}: case {} has no Task urn:uuid:{}; notification not sent",
                partner.name, body.case_id, body.task_id
            ));
        };
        if case.status == CaseStatus::Cancelled || case.tasks[position].status == TASK_CANCELLED {
            log::info!(
                "event=notify.skipped partner={} case={} task=urn:uuid:{} reason=cancelled earlier_attempts={}",
                partner.name,
                body.case_id,
                body.task_id,
                item.attempts
            );
            let mut reason = format!(
                "partner {}: case {} was cancelled before the notification was delivered; not sent",
                partner.name, body.case_id
            );
            if item.attempts > 0 {
                reason.push_str(" again (an earlier attempt may have reached the partner: the cancellation is sent all the same)");
            }
            return Outcome::Dead(reason);
        }
        // One case's notifications reach the partner in order: an older one
        // arriving after a newer one would look like the latest to a
        // receiver that keeps the last Task per groupIdentifier.
        if let Some((earlier, state)) =
            case.tasks[..position]
                .iter()
                .find_map(|t| match self.spool.find(&t.item_id) {
                    Some(s @ (State::Queued | State::Retry | State::InFlight)) => Some((t, s)),
                    _ => None,
                })
        {
            return Outcome::Wait {
                reason: format!(
                    "partner {}: case {}: waiting for the earlier notification {} to be delivered or given up",
                    partner.name, body.case_id, earlier.item_id
                ),
                after_secs: self.wait_for(&earlier.item_id, state, now),
            };
        }
        if item.give_up_at.is_some_and(|end| end <= now) {
            return Outcome::Dead(format!(
                "partner {}: case {}: restriction.period.end passed before the notification was delivered",
                partner.name, body.case_id
            ));
        }
        let call = Call {
            partner,
            patient,
            method: "POST",
            url: format!("{}/Task", base(partner)),
            body: task_bytes(&body.task),
            what: "notify",
            absent_is_done: false,
            case_id: &body.case_id,
            task_id: &body.task_id,
        };
        self.send(&call, client, http, now)
    }

    fn cancel(
        &self,
        item: &Item,
        partner: TwiinPartner<'_>,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Outcome {
        let Ok(body) = serde_json::from_value::<CancelBody>(item.body.clone()) else {
            return corrupt(item, &"not a cancel body");
        };
        let Some(patient) = Bsn::parse(&body.patient) else {
            return corrupt(item, &"patient is not a valid BSN");
        };
        let skip = |reason: &str| {
            log::info!(
                "event=cancel.skipped partner={} case={} task=urn:uuid:{} reason={}",
                partner.name,
                body.case_id,
                body.task_id,
                Q(reason)
            );
            Outcome::Done
        };
        // Whether the partner may have the Task: certainly after a delivery;
        // possibly when the notification died after an attempt (a crash or
        // a timeout mid-request can deliver a Task without our knowing).
        let possibly = match self.spool.find(&body.notify_item) {
            Some(State::Done) => false,
            Some(state @ (State::Queued | State::Retry | State::InFlight)) => {
                return Outcome::Wait {
                    reason: format!(
                        "partner {}: waiting for notification {} to be delivered or given up",
                        partner.name, body.notify_item
                    ),
                    after_secs: self.wait_for(&body.notify_item, state, now),
                };
            }
            Some(State::Dead) => {
                let tried = self
                    .spool
                    .load(State::Dead, &body.notify_item)
                    .is_ok_and(|n| n.attempts > 0);
                if !tried {
                    return skip("the notification was never delivered");
                }
                true
            }
            None => return skip("the notification was never delivered"),
        };
        if item.give_up_at.is_some_and(|end| end <= now) {
            return skip("the notification has expired");
        }
        let call = Call {
            partner,
            patient,
            method: "PUT",
            url: format!(
                "{}/Task?identifier={}",
                base(partner),
                percent::encode_query(&task::identifier_token(&body.task_id))
            ),
            body: task_bytes(&body.task),
            what: "cancel",
            absent_is_done: possibly,
            case_id: &body.case_id,
            task_id: &body.task_id,
        };
        self.send(&call, client, http, now)
    }

    /// The request with a token; once more with a fresh token after a 401.
    fn send(
        &self,
        call: &Call<'_>,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Outcome {
        let purpose = Purpose::Notify {
            patient: Some(&call.patient),
        };
        let mut last = None;
        for attempt in 0..2 {
            let token = match client.token(call.partner, &purpose, now) {
                Ok(t) => t,
                Err(e) => return self.token_failed(call, &e, now),
            };
            let auth = format!("Bearer {}", token.token);
            let started = Instant::now();
            let reply = http.send(
                call.partner.name,
                call.method,
                &call.url,
                FHIR_JSON,
                &call.body,
                &[("Accept", FHIR_JSON), ("Authorization", &auth)],
            );
            let ms = started.elapsed().as_millis();
            let reply = match reply {
                Ok(r) => r,
                Err(detail) => {
                    let reason = format!(
                        "partner {}: {} {} failed: {detail}",
                        call.partner.name, call.method, call.url
                    );
                    self.log_failure(call, None, &reason, true);
                    return Outcome::Retry {
                        reason,
                        retry_after: None,
                    };
                }
            };
            if reply.status == 401 && attempt == 0 {
                log::info!(
                    "event={}.unauthorized partner={} case={} task=urn:uuid:{} status=401 action=new_token",
                    call.what,
                    call.partner.name,
                    call.case_id,
                    call.task_id
                );
                client.invalidate(call.partner, &purpose);
                continue;
            }
            if (200..300).contains(&reply.status) {
                log::info!(
                    "event={}.sent partner={} case={} task=urn:uuid:{} status={} ms={ms}",
                    call.what,
                    call.partner.name,
                    call.case_id,
                    call.task_id,
                    reply.status
                );
                self.audit(call, "success", None);
                return Outcome::Done;
            }
            if reply.status == 404 && call.absent_is_done {
                log::info!(
                    "event={}.skipped partner={} case={} task=urn:uuid:{} status=404 reason=\"the partner never received the notification\"",
                    call.what,
                    call.partner.name,
                    call.case_id,
                    call.task_id
                );
                return Outcome::Done;
            }
            last = Some(reply);
            break;
        }
        let Some(reply) = last else {
            return Outcome::Retry {
                reason: format!("partner {}: no answer", call.partner.name),
                retry_after: None,
            };
        };
        self.refused(call, &reply, now)
    }

    /// A non-2xx answer to the FHIR request.
    fn refused(&self, call: &Call<'_>, reply: &HttpReply, now: i64) -> Outcome {
        let mut reason = format!(
            "partner {}: {} {} answered {}",
            call.partner.name, call.method, call.url, reply.status
        );
        if let Some(code) = issue_code(&reply.body) {
            reason.push_str(&format!(" (OperationOutcome {code})"));
        }
        let transient = matches!(reply.status, 408 | 429) || (500..600).contains(&reply.status);
        if reply.status == 401 {
            reason.push_str(" after a fresh token");
        }
        self.log_failure(call, Some(reply.status), &reason, transient);
        if transient {
            Outcome::Retry {
                reason,
                retry_after: asked_wait(reply.retry_after.as_deref(), now, self.config.retry_cap),
            }
        } else {
            self.audit(call, "error", Some(&reason));
            Outcome::Dead(reason)
        }
    }

    /// Seconds to wait for another spool item: until its next attempt is
    /// due when it waits for a retry, else a moment.
    fn wait_for(&self, id: &str, state: State, now: i64) -> u64 {
        const MOMENT: u64 = 2;
        if state != State::Retry {
            return MOMENT;
        }
        self.spool.load(State::Retry, id).map_or(MOMENT, |i| {
            u64::try_from(i.not_before - now).unwrap_or(0) + 1
        })
    }

    fn token_failed(&self, call: &Call<'_>, e: &TokenClientError, now: i64) -> Outcome {
        let reason = e.to_string();
        let transient = e.is_transient();
        self.log_failure(call, None, &reason, transient);
        if transient {
            let retry_after = match e {
                TokenClientError::Refused { retry_after, .. } => {
                    asked_wait(retry_after.as_deref(), now, self.config.retry_cap)
                }
                _ => None,
            };
            Outcome::Retry {
                reason,
                retry_after,
            }
        } else {
            self.audit(call, "error", Some(&reason));
            Outcome::Dead(reason)
        }
    }

    fn log_failure(&self, call: &Call<'_>, status: Option<u16>, reason: &str, retry: bool) {
        let status = status.map_or_else(|| "-".to_string(), |s| s.to_string());
        log::warn!(
            "event={}.failed partner={} case={} task=urn:uuid:{} status={status} retry={retry} reason={}",
            call.what,
            call.partner.name,
            call.case_id,
            call.task_id,
            Q(reason)
        );
    }

    fn audit(&self, call: &Call<'_>, outcome: &str, reason: Option<&str>) {
        let action = match call.what {
            "notify" => "notification.sent",
            _ => "cancellation.sent",
        };
        let org = self
            .config
            .our_org(call.partner.id_scheme)
            .map(|o| ids::org_claim(&o));
        let object = format!("case {} task urn:uuid:{}", call.case_id, call.task_id);
        self.audit.record_or_log(audit::Event {
            action,
            outcome,
            partner: Some(call.partner.name),
            who_org: org.as_deref(),
            who_system: Some(&self.config.system_id),
            patient: Some(call.patient.as_str()),
            object: Some(&object),
            reason,
            ..audit::Event::default()
        });
    }
}

fn base<'a>(partner: TwiinPartner<'a>) -> &'a str {
    partner.kind.fhir_base.trim_end_matches('/')
}

/// A spool body that is not what the sender wrote. The parser's message is
/// not used: it may quote a value, and a value may be a BSN.
fn corrupt(item: &Item, detail: &dyn std::fmt::Display) -> Outcome {
    Outcome::Dead(format!("spool item {}: unreadable body: {detail}", item.id))
}

/// The Task as sent: compact JSON, `resourceType` first, decimals as written.
fn task_bytes(task: &Value) -> Vec<u8> {
    crate::fhir::to_json_string(task).into_bytes()
}

/// Seconds a partner's `Retry-After` (seconds or HTTP-date) asks us to wait
/// at `now`, at most `cap` (`NP_RETRY_CAP`).
pub(crate) fn asked_wait(value: Option<&str>, now: i64, cap: Duration) -> Option<u64> {
    retry_after::parse(value?, now, cap.as_secs())
}

/// The first `OperationOutcome.issue.code` of an error body, when it is a
/// plain code (it goes into reasons and logs; free text never does).
fn issue_code(body: &[u8]) -> Option<String> {
    if body.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let code = v.get("issue")?.get(0)?.get("code")?.as_str()?;
    (!code.is_empty()
        && code.len() <= 32
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    .then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_codes_only_when_plain() {
        assert_eq!(
            issue_code(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"business-rule","diagnostics":"BSN 999999151"}]}"#),
            Some("business-rule".into())
        );
        assert_eq!(
            issue_code(br#"{"resourceType":"OperationOutcome","issue":[{"code":"999999151 x"}]}"#),
            None
        );
        assert_eq!(issue_code(b"<html>"), None);
        assert_eq!(issue_code(br#"{"resourceType":"Task"}"#), None);
    }
}
