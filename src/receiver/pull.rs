//! The pull (spec §8): token at the sender, then every read and query of the
//! plan against the partner's configured FHIR base, paging to the end, and
//! the result written to the inbox. Runs as the spool worker of kind `pull`.
//!
//! Per request: `Authorization: Bearer`, `Accept: application/fhir+json`; a
//! `401` gets one fresh token and one more try; `403`/`404`/`410` (and other
//! client errors) mark that input "not available" and the others go on;
//! `408`/`429`/`5xx` and transport failures end the attempt with
//! [`Outcome::Retry`] (honouring `Retry-After`, at most 5 minutes); the token
//! endpoint's `invalid_grant` ends the pull for good ([`Outcome::Dead`]:
//! cancelled or expired at the sender).

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::inbox::{Collector, InboxPaths};
use super::task::{self, PullPlan};
use super::{PullOrder, Receiver};
use crate::audit::Event;
use crate::config::TwiinPartner;
use crate::http::partners::{HttpReply, PartnerHttp};
use crate::ids::Bsn;
use crate::ids::OrgId;
use crate::oauth::client::{AccessToken, Purpose, TokenClient, TokenClientError};
use crate::ops::logging::Q;
use crate::spool::{Item, Outcome};
use crate::util::{durable, percent, retry_after, url};

/// Most pages followed for one query (spec §8.3).
pub const MAX_PAGES: usize = 1000;
/// Longest `Retry-After` honoured, in seconds (spec §8.4).
pub const MAX_RETRY_AFTER_SECS: u64 = 300;
/// Most response bytes one pull reads in total (everything is held in memory
/// until the inbox file is written); above it the pull is given up.
pub const MAX_PULL_BYTES: usize = 256 * 1024 * 1024;

/// What became of one input (or of the workflow Task).
#[derive(Debug, Clone, Serialize)]
struct InputReport {
    /// `workflow-task`, `read` or `query`.
    kind: &'static str,
    /// Position in the plan's reads or queries.
    index: usize,
    /// First path segment (the resource type), safe to show.
    resource_type: String,
    /// `ok`, `not-available` or `stopped`.
    result: &'static str,
    /// HTTP status of the last response.
    status: Option<u16>,
    pages: usize,
    /// Why paging stopped early, or why it is not available.
    note: Option<String>,
}

/// `NP_STATE_DIR/receiver/pulls/<item>.json`.
#[derive(Debug, Serialize)]
struct PullReport<'a> {
    item: &'a str,
    partner: &'a str,
    group: &'a str,
    task: &'a str,
    finished_at: i64,
    resources: usize,
    duplicates: usize,
    outcomes_dropped: usize,
    not_available: usize,
    inputs: Vec<InputReport>,
}

/// The answer to one GET, after the 401 retry.
enum Got {
    Resource(Value),
    /// The sender will not give it (403/404/410/other 4xx, unreadable body).
    Unavailable {
        status: u16,
        why: String,
    },
}

/// The HTTP side of one pull attempt: token handling and limits.
struct Session<'a> {
    client: &'a TokenClient,
    http: &'a dyn PartnerHttp,
    partner: TwiinPartner<'a>,
    purpose: Purpose<'a>,
    token: Option<AccessToken>,
    now: i64,
    started: Instant,
    bytes: usize,
}

impl Receiver {
    /// The spool worker for kind `pull`: fetches everything the Task
    /// announced and writes `NP_INBOX/<partner>/<group>/<task>.json`. A
    /// cancelled Task ends with [`Outcome::Done`] and no data is written.
    pub fn pull(
        &self,
        item: &Item,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> Outcome {
        let started = Instant::now();
        let order: PullOrder = match serde_json::from_value(item.body.clone()) {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Dead(format!("item {}: unreadable pull order: {e}", item.id));
            }
        };
        let Some(partner) = self.config.partner(&item.partner) else {
            return Outcome::Dead(format!("partner {} is no longer configured", item.partner));
        };
        let Some(partner) = partner.as_twiin() else {
            return Outcome::Dead(format!(
                "partner {} is now a {} partner, not twiin",
                partner.name,
                partner.kind_name()
            ));
        };
        let base = partner.fhir_base.clone();
        if self.is_cancelled(&item.id) {
            log::info!(
                "event=pull.skipped partner={} item={} task={} reason=cancelled",
                partner.name,
                item.id,
                order.inbox_task
            );
            return Outcome::Done;
        }
        let requesting = match order.owner.as_deref().map(OrgId::parse) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Outcome::Dead(format!("item {}: stored owner: {e}", item.id)),
            None => match self.config.our_org(partner.id_scheme) {
                Some(o) => o,
                None => {
                    return Outcome::Dead(format!(
                        "partner {}: the Task has no owner and NP_ORG_AGB is not set for this AGB partner",
                        partner.name
                    ));
                }
            },
        };
        let authorizer = match OrgId::parse(&order.requester) {
            Ok(o) => o,
            Err(e) => return Outcome::Dead(format!("item {}: stored requester: {e}", item.id)),
        };
        let Some(bsn) = Bsn::parse(&order.patient) else {
            return Outcome::Dead(format!("item {}: stored patient is not a BSN", item.id));
        };
        let mut session = Session {
            client,
            http,
            partner,
            purpose: Purpose::Pull {
                authorization_base: &order.authorization_base,
                requesting: &requesting,
                authorizer: Some(&authorizer),
                patient: Some(&bsn),
            },
            token: None,
            now,
            started,
            bytes: 0,
        };
        let mut collector = Collector::new();
        let mut reports = Vec::new();
        if let Err(outcome) = self.fetch_all(
            &mut session,
            &base,
            &order,
            &item.id,
            &mut collector,
            &mut reports,
        ) {
            log_outcome(partner, &item.id, &order, &outcome);
            return outcome;
        }
        let resources = collector.len();
        let (duplicates, dropped) = (collector.duplicates(), collector.outcomes_dropped());
        let bundle = collector.bundle(&order.task, &order.inbox_task, &base);
        let paths = InboxPaths::new(
            &self.inbox,
            partner.name,
            &order.inbox_group,
            &order.inbox_task,
        );
        {
            let _guard = self.locks.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if self.is_cancelled(&item.id) {
                log::info!(
                    "event=pull.skipped partner={} item={} task={} reason=cancelled",
                    partner.name,
                    item.id,
                    order.inbox_task
                );
                return Outcome::Done;
            }
            if let Err(e) = durable::write_shared(&paths.data, &super::wire::to_bytes(&bundle)) {
                return Outcome::Retry {
                    reason: format!("partner {}: inbox write failed: {e}", partner.name),
                    retry_after: None,
                };
            }
        }
        let not_available = reports.iter().filter(|r| r.result != "ok").count();
        let report = PullReport {
            item: &item.id,
            partner: partner.name,
            group: &order.inbox_group,
            task: &order.inbox_task,
            finished_at: session.clock(),
            resources,
            duplicates,
            outcomes_dropped: dropped,
            not_available,
            inputs: reports,
        };
        let report_path = self.state.join("pulls").join(format!("{}.json", item.id));
        if let Err(e) = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|b| durable::write_atomic(&report_path, &b).map_err(|e| e.to_string()))
        {
            log::warn!(
                "event=pull.report_failed partner={} item={} error={}",
                partner.name,
                item.id,
                Q(&e)
            );
        }
        let summary = format!(
            "{resources} resources; {not_available} of {} inputs not available",
            report.inputs.len()
        );
        self.audit.record_or_log(Event {
            action: "pull.completed",
            outcome: if not_available == 0 {
                "success"
            } else {
                "partial"
            },
            partner: Some(partner.name),
            who_org: Some(&authorizer.oid()),
            patient: Some(bsn.as_str()),
            object: Some(&item.id),
            reason: Some(&summary),
            ..Event::default()
        });
        log::info!(
            "event=pull.done partner={} item={} group={} task={} resources={resources} not_available={not_available} ms={}",
            partner.name,
            item.id,
            order.inbox_group,
            order.inbox_task,
            started.elapsed().as_millis()
        );
        Outcome::Done
    }

    /// Every request of the pull; an `Err` ends the attempt.
    fn fetch_all(
        &self,
        session: &mut Session<'_>,
        base: &str,
        order: &PullOrder,
        item_id: &str,
        collector: &mut Collector,
        reports: &mut Vec<InputReport>,
    ) -> Result<(), Outcome> {
        let mut plan: PullPlan = order.plan.clone();
        if let (true, Some(wf)) = (order.get_workflow_task, order.workflow_task.as_deref()) {
            let mut report = InputReport::new("workflow-task", 0, wf);
            match session.get(&url::join(base, wf), &report.label())? {
                Got::Resource(value) => {
                    report.pages = 1;
                    report.status = Some(200);
                    if value.get("status").and_then(Value::as_str) == Some("requested") {
                        let (extra, skipped) = task::workflow_plan(&value);
                        if skipped > 0 {
                            log::warn!(
                                "event=pull.workflow_inputs_skipped partner={} item={item_id} count={skipped}",
                                session.partner.name
                            );
                        }
                        for r in extra.reads {
                            if !plan.reads.contains(&r) {
                                plan.reads.push(r);
                            }
                        }
                        for q in extra.queries {
                            if !plan.queries.contains(&q) {
                                plan.queries.push(q);
                            }
                        }
                    } else {
                        report.note = Some("the workflow Task is no longer requested".into());
                        log::warn!(
                            "event=pull.workflow_not_requested partner={} item={item_id}",
                            session.partner.name
                        );
                    }
                    collector.add_resource(value);
                }
                Got::Unavailable { status, why } => report.unavailable(status, why),
            }
            self.note(session, item_id, &report);
            reports.push(report);
        }
        for (i, read) in plan.reads.iter().enumerate() {
            let mut report = InputReport::new("read", i, read);
            match session.get(&url::join(base, read), &report.label())? {
                Got::Resource(value) => {
                    report.pages = 1;
                    report.status = Some(200);
                    collector.add_response(value);
                }
                Got::Unavailable { status, why } => report.unavailable(status, why),
            }
            self.note(session, item_id, &report);
            reports.push(report);
        }
        for (i, query) in plan.queries.iter().enumerate() {
            let mut report = InputReport::new("query", i, query);
            if !percent::escapes_are_valid(query) {
                log::warn!(
                    "event=pull.query_bad_encoding partner={} item={item_id} query={i} note=\"sent as received\"",
                    session.partner.name
                );
            }
            let mut next = url::join(base, query);
            let mut visited = HashSet::new();
            loop {
                visited.insert(next.clone());
                let label = format!("{} page {}", report.label(), report.pages + 1);
                match session.get(&next, &label)? {
                    Got::Unavailable { status, why } => {
                        report.unavailable(status, why);
                        break;
                    }
                    Got::Resource(value) => {
                        report.pages += 1;
                        report.status = Some(200);
                        let Some(link) = collector.add_response(value) else {
                            break;
                        };
                        let Some(link) = next_link(base, &link) else {
                            report.stopped("the next link leaves the configured FHIR base");
                            log::warn!(
                                "event=pull.next_refused partner={} item={item_id} query={i} page={} reason=\"not under the configured FHIR base\"",
                                session.partner.name,
                                report.pages
                            );
                            break;
                        };
                        if visited.contains(&link) {
                            report.stopped("the next link repeats an earlier page");
                            log::warn!(
                                "event=pull.next_refused partner={} item={item_id} query={i} page={} reason=loop",
                                session.partner.name,
                                report.pages
                            );
                            break;
                        }
                        if report.pages >= MAX_PAGES {
                            report.stopped("page limit reached");
                            log::warn!(
                                "event=pull.page_limit partner={} item={item_id} query={i} pages={MAX_PAGES}",
                                session.partner.name
                            );
                            break;
                        }
                        next = link;
                    }
                }
            }
            self.note(session, item_id, &report);
            reports.push(report);
        }
        Ok(())
    }

    fn note(&self, session: &Session<'_>, item_id: &str, report: &InputReport) {
        if report.result == "not-available" {
            log::warn!(
                "event=pull.unavailable partner={} item={item_id} input={}:{} type={} status={}",
                session.partner.name,
                report.kind,
                report.index,
                report.resource_type,
                report.status.map_or("-".to_string(), |s| s.to_string())
            );
        }
    }
}

impl InputReport {
    fn new(kind: &'static str, index: usize, value: &str) -> InputReport {
        let ty = value.split(['/', '?']).next().unwrap_or("");
        let safe = !ty.is_empty()
            && ty.len() <= 64
            && ty.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'$');
        InputReport {
            kind,
            index,
            resource_type: if safe { ty.to_string() } else { "?".into() },
            result: "ok",
            status: None,
            pages: 0,
            note: None,
        }
    }

    /// `query 3 (Observation)`: names an input without its content.
    fn label(&self) -> String {
        format!("{} {} ({})", self.kind, self.index, self.resource_type)
    }

    fn unavailable(&mut self, status: u16, why: String) {
        self.result = "not-available";
        self.status = Some(status);
        self.note = Some(why);
    }

    fn stopped(&mut self, why: &str) {
        self.result = "stopped";
        self.note = Some(why.to_string());
    }
}

impl Session<'_> {
    /// `now` as the pull goes on.
    fn clock(&self) -> i64 {
        self.now + i64::try_from(self.started.elapsed().as_secs()).unwrap_or(0)
    }

    fn token(&mut self) -> Result<String, Outcome> {
        if let Some(t) = &self.token {
            if self.clock() < t.use_until {
                return Ok(t.token.clone());
            }
        }
        let now = self.clock();
        let t = self
            .client
            .token(self.partner, &self.purpose, now)
            .map_err(token_outcome)?;
        let s = t.token.clone();
        self.token = Some(t);
        Ok(s)
    }

    /// One GET with the 401 rule; `label` names the request in messages.
    fn get(&mut self, url: &str, label: &str) -> Result<Got, Outcome> {
        let mut refreshed = false;
        loop {
            let token = self.token()?;
            let auth = format!("Bearer {token}");
            let reply = self
                .http
                .get(
                    self.partner.name,
                    url,
                    &[
                        ("Authorization", auth.as_str()),
                        ("Accept", "application/fhir+json"),
                    ],
                )
                .map_err(|e| Outcome::Retry {
                    reason: format!(
                        "partner {}: GET {label} failed: {}",
                        self.partner.name,
                        truncate(&e, 200)
                    ),
                    retry_after: None,
                })?;
            self.bytes = self.bytes.saturating_add(reply.body.len());
            if self.bytes > MAX_PULL_BYTES {
                return Err(Outcome::Dead(format!(
                    "partner {}: the pull is larger than {MAX_PULL_BYTES} bytes",
                    self.partner.name
                )));
            }
            match reply.status {
                200..=299 => {
                    return Ok(
                        match super::wire::read_partner_body(
                            &reply.body,
                            reply.content_type.as_deref(),
                        ) {
                            Ok(v) => Got::Resource(v),
                            Err(why) => {
                                log::warn!(
                                    "event=pull.unreadable partner={} request={} reason={}",
                                    self.partner.name,
                                    Q(label),
                                    Q(&why)
                                );
                                Got::Unavailable {
                                    status: reply.status,
                                    why: format!("unreadable response: {why}"),
                                }
                            }
                        },
                    );
                }
                401 if !refreshed => {
                    refreshed = true;
                    self.client.invalidate(self.partner, &self.purpose);
                    self.token = None;
                }
                408 | 429 | 500..=599 => return Err(self.retry(&reply, label)),
                status => {
                    return Ok(Got::Unavailable {
                        status,
                        why: format!("the sender answered {status}"),
                    });
                }
            }
        }
    }

    fn retry(&self, reply: &HttpReply, label: &str) -> Outcome {
        let retry_after = asked_wait(reply.retry_after.as_deref(), self.clock());
        Outcome::Retry {
            reason: format!(
                "partner {}: GET {label} answered {}",
                self.partner.name, reply.status
            ),
            retry_after,
        }
    }
}

/// The `next` link to follow (spec §8.3), with the characters that may not
/// appear in a URL encoded: only one on the base's scheme, host and port and
/// under its path ([`url::is_under`]).
pub(crate) fn next_link(base: &str, link: &str) -> Option<String> {
    let link = percent::encode_illegal(link);
    url::is_under(base, &link).then_some(link)
}

/// Seconds the sender's `Retry-After` asks us to wait at `now`, at most
/// [`MAX_RETRY_AFTER_SECS`] (spec §8.4: wait as told, cap 5 min).
pub(crate) fn asked_wait(value: Option<&str>, now: i64) -> Option<u64> {
    retry_after::parse(value?, now, MAX_RETRY_AFTER_SECS)
}

/// What a failed token request means for the pull (spec §8.4).
fn token_outcome(e: TokenClientError) -> Outcome {
    match e.oauth_error() {
        Some("invalid_grant") => {
            return Outcome::Dead(format!("cancelled or expired at the sender: {e}"));
        }
        Some("invalid_client" | "unauthorized_client") => {
            return Outcome::Dead(format!("configuration error: {e}"));
        }
        _ => {}
    }
    let retry_after = match &e {
        TokenClientError::Refused { retry_after, .. } => {
            asked_wait(retry_after.as_deref(), crate::util::time::now_unix())
        }
        _ => None,
    };
    match &e {
        TokenClientError::Refused { .. } if !e.is_transient() => Outcome::Dead(e.to_string()),
        // We cannot build or sign our assertions (e.g. no organisation of ours
        // in the partner's id scheme): trying again will not help.
        TokenClientError::Local { .. } => Outcome::Dead(format!("configuration error: {e}")),
        _ => Outcome::Retry {
            reason: e.to_string(),
            retry_after,
        },
    }
}

fn log_outcome(partner: TwiinPartner<'_>, item_id: &str, order: &PullOrder, outcome: &Outcome) {
    match outcome {
        Outcome::Retry {
            reason,
            retry_after,
        } => log::warn!(
            "event=pull.retry partner={} item={item_id} task={} retry_after={} reason={}",
            partner.name,
            order.inbox_task,
            retry_after.map_or("-".to_string(), |s| s.to_string()),
            Q(reason)
        ),
        Outcome::Dead(reason) => log::error!(
            "event=pull.dead partner={} item={item_id} task={} reason={}",
            partner.name,
            order.inbox_task,
            Q(reason)
        ),
        Outcome::Done | Outcome::Wait { .. } => {}
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, error: Option<&str>) -> TokenClientError {
        TokenClientError::Refused {
            partner: "vip".into(),
            endpoint: "https://vip/token".into(),
            status,
            error: error.map(String::from),
            description: None,
            retry_after: Some("7".into()),
        }
    }

    #[test]
    fn token_failures_map_to_outcomes() {
        assert!(
            matches!(token_outcome(refused(400, Some("invalid_grant"))), Outcome::Dead(r) if r.starts_with("cancelled or expired at the sender"))
        );
        assert!(matches!(
            token_outcome(refused(401, Some("invalid_client"))),
            Outcome::Dead(_)
        ));
        assert_eq!(
            token_outcome(refused(503, None)),
            Outcome::Retry {
                reason: "partner vip: token endpoint https://vip/token answered 503".into(),
                retry_after: Some(7)
            }
        );
        assert!(matches!(
            token_outcome(TokenClientError::Transport {
                partner: "vip".into(),
                endpoint: "e".into(),
                detail: "refused".into()
            }),
            Outcome::Retry {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            token_outcome(refused(400, Some("invalid_request"))),
            Outcome::Dead(_)
        ));
        assert!(matches!(
            token_outcome(TokenClientError::Local {
                partner: "vip".into(),
                detail: "no organisation id of ours in the partner's id scheme".into()
            }),
            Outcome::Dead(r) if r.starts_with("configuration error: partner vip:")
        ));
    }

    #[test]
    fn input_labels_hold_no_content() {
        let r = InputReport::new(
            "query",
            2,
            "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999990",
        );
        assert_eq!(r.label(), "query 2 (Patient)");
        let r = InputReport::new("query", 0, "Observation/$lastn?code=x");
        assert_eq!(r.label(), "query 0 (Observation)");
        assert_eq!(
            InputReport::new("read", 1, "<script>/x").label(),
            "read 1 (?)"
        );
        assert_eq!(truncate("abcdef", 3), "abc");
    }
}
