//! The audit trail (NEN 7513): `<state>/audit/YYYY-MM-DD.jsonl`, one JSON
//! object a line, appended and fdatasynced before the audited action is
//! answered. This is the only place a BSN may be written.
//!
//! Writing is [`AuditLog`]; reading it back for `np-agent audit` is
//! [`query`] (pure: which records concern a patient, how a line looks) over
//! [`trail`] (the files).
//!
//! Every field but `when`, `action` and `outcome` is optional and left out
//! when absent, so lines written before a field existed still read.

pub mod query;
pub mod trail;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::ops::logging::{Q, Rid};
use crate::util::group_commit::{self, GroupCommit};
use crate::util::{durable, time};

/// A Zorgviewer read of one resource (`GET <Type>/<id>`, `Binary/<id>`).
pub const ZORGVIEWER_READ: &str = "zorgviewer.read";
/// A Zorgviewer search (`GET <Type>?…`, `Observation/$lastn`).
pub const ZORGVIEWER_SEARCH: &str = "zorgviewer.search";
/// A Zorgviewer request refused before it was known as a read or a search
/// (request context, path): the counterpart of `fhir.request`.
pub const ZORGVIEWER_REQUEST: &str = "zorgviewer.request";

/// Most resources [`ResourceList`] names one by one; beyond, it counts.
/// Above the largest page (`_count` 200) with its `_include`s and `$lastn`.
pub const MAX_LISTED_RESOURCES: usize = 1000;

/// One audit event. `who_*` is the acting party, `patient` the BSN if any.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event<'a> {
    /// RFC 3339 UTC.
    pub when: String,
    /// Dotted action name, e.g. `token.issued`, `fhir.read`, `task.received`,
    /// [`ZORGVIEWER_READ`].
    pub action: &'a str,
    /// `success`, `refused`, `error`. A search answered empty because
    /// consent withheld the data is `refused` (its `status` is 200).
    pub outcome: &'a str,
    /// Configured partner name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner: Option<&'a str>,
    /// Organisation the party acts for, as sent (URA/AGB OID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who_org: Option<&'a str>,
    /// System / client id of the party.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who_system: Option<&'a str>,
    /// Human user, when the party named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who_user: Option<&'a str>,
    /// BSN of the patient concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<&'a str>,
    /// What was acted on (resource reference, case id, token kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'a str>,
    /// Why, for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Our request id: the partner's `X-Request-Id` when it sent a sane one,
    /// else the one we generated and echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// How many resources were disclosed (FHIR reads and searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<usize>,
    /// The partner's `X-Correlation-Id`, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<&'a str>,
    /// The `AORTA-ID` header, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aorta_id: Option<&'a str>,
    /// SHA-256 of the partner's TLS leaf certificate (DER), lower-case hex
    /// (`PeerIdentity::fingerprint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<&'a str>,
    /// URA of the requesting organisation, when sent apart from `who_org`
    /// (`X-ZV-Subject-Organization-Ura`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who_ura: Option<&'a str>,
    /// Role of `who_user` (`X-ZV-Subject-Role`, IUA `subject_role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub who_role: Option<&'a str>,
    /// Whether the request context (`X-ZV-Context`) was verified: signed by
    /// the partner and agreeing with the headers and the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_verified: Option<bool>,
    /// The request's path and query as received. It may hold a BSN: that
    /// belongs here, never in the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<&'a str>,
    /// The consent decision the answer followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentDecision>,
    /// Where that decision came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_source: Option<ConsentSource>,
    /// The HTTP status answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Type/id` of every resource returned, the first
    /// [`MAX_LISTED_RESOURCES`] of them; `results` counts them all. Set both
    /// with [`Event::returned`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<&'a ResourceList>,
}

impl<'a> Event<'a> {
    /// Records what an answer returned: the list and, in `results`, how many.
    pub fn returned(self, list: &'a ResourceList) -> Event<'a> {
        Event {
            resources: Some(list),
            results: Some(list.total()),
            ..self
        }
    }
}

/// A consent decision as recorded (`consent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentDecision {
    /// Mitz permits: the data was released.
    Permit,
    /// Mitz denies.
    Deny,
    /// No consent registered for this patient, category and provider.
    NotApplicable,
    /// The authority could not answer (fault, timeout, unreachable).
    Unavailable,
    /// The partner is configured without a consent check (`CONSENT=none`).
    NotChecked,
}

impl ConsentDecision {
    /// The recorded form: `permit`, `deny`, `not-applicable`, `unavailable`, `not-checked`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentDecision::Permit => "permit",
            ConsentDecision::Deny => "deny",
            ConsentDecision::NotApplicable => "not-applicable",
            ConsentDecision::Unavailable => "unavailable",
            ConsentDecision::NotChecked => "not-checked",
        }
    }
}

/// Where a consent decision came from (`consent_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentSource {
    /// The local consent view built from Mitz notifications.
    View,
    /// The Mitz closed question, asked for this request.
    ClosedQuestion,
}

impl ConsentSource {
    /// The recorded form: `view`, `closed-question`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentSource::View => "view",
            ConsentSource::ClosedQuestion => "closed-question",
        }
    }
}

/// `Type/id` of the resources an answer returned: the first
/// [`MAX_LISTED_RESOURCES`] by name, all of them counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceList {
    listed: Vec<String>,
    total: usize,
}

impl ResourceList {
    /// An empty list (an answer that returned nothing).
    pub fn new() -> ResourceList {
        ResourceList::default()
    }

    /// Adds `resource_type/id`, or only counts it once the list is full.
    pub fn push(&mut self, resource_type: &str, id: &str) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED_RESOURCES {
            self.listed.push(format!("{resource_type}/{id}"));
        }
    }

    /// Adds each resource by its `resourceType` and `id` (`-` when absent).
    pub fn extend_from_resources<'v>(
        &mut self,
        resources: impl IntoIterator<Item = &'v serde_json::Value>,
    ) {
        for r in resources {
            let field = |k: &str| r.get(k).and_then(serde_json::Value::as_str).unwrap_or("-");
            self.push(field("resourceType"), field("id"));
        }
    }

    /// How many resources were added.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The ones named, in the order added.
    pub fn listed(&self) -> &[String] {
        &self.listed
    }
}

impl Serialize for ResourceList {
    /// The names only: the count is the event's `results`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.listed.serialize(s)
    }
}

/// The audit trail writer. Concurrent records share one flush
/// ([`GroupCommit`]): each `record` returns once its line is on disk.
pub struct AuditLog {
    dir: PathBuf,
    commit: GroupCommit<(String, Vec<u8>)>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

impl AuditLog {
    /// Opens (creating) `<state_dir>/audit`.
    pub fn open(state_dir: &Path) -> Result<AuditLog, durable::DurableError> {
        let dir = state_dir.join("audit");
        durable::create_dir_all(&dir)?;
        let files = DayFiles {
            dir: dir.clone(),
            current: Mutex::new(None),
        };
        Ok(AuditLog {
            dir,
            commit: GroupCommit::new(Box::new(move |batch| files.append(batch))),
        })
    }

    /// [`Self::record`], and on failure an `event=audit.failed` error line
    /// naming the action, partner and request id (never the patient or the
    /// object, which may hold a query). Returns whether it was written: an
    /// action that must not go unaudited checks it.
    pub fn record_or_log(&self, event: Event<'_>) -> bool {
        let (action, partner, rid) = (event.action, event.partner, event.request_id);
        match self.record(event) {
            Ok(()) => true,
            Err(e) => {
                log_failed(action, partner, rid, &e);
                false
            }
        }
    }

    /// Appends an event (its `when` is filled in when empty) durably: on
    /// return its line is written and flushed, together with the lines of
    /// the records that came at the same time.
    pub fn record(&self, event: Event<'_>) -> Result<(), durable::DurableError> {
        self.submit(event)?.wait()
    }

    /// [`Self::record`] without waiting for the disk: the line is queued and
    /// [`Pending::wait`] returns once it is on disk. A caller whose answer
    /// also waits on other logs queues in each before it waits for any.
    pub fn submit(&self, mut event: Event<'_>) -> Result<Pending<'_>, durable::DurableError> {
        let now = time::now_unix();
        if event.when.is_empty() {
            event.when = time::rfc3339(now);
        }
        let mut line = serde_json::to_vec(&event).map_err(|e| durable::DurableError {
            path: self.dir.clone(),
            step: "serialise audit event",
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        Ok(self
            .commit
            .submit((time::date(now), line))
            .at(&self.dir, "append"))
    }

    /// Flushes so far: how many batches the records went to disk in.
    pub fn flushes(&self) -> u64 {
        self.commit.batches()
    }
}

/// The error log line of an event that could not be recorded (no content:
/// action, partner and request id only).
pub fn log_failed(
    action: &str,
    partner: Option<&str>,
    rid: Option<&str>,
    e: &durable::DurableError,
) {
    log::error!(
        "event=audit.failed action={action} partner={} rid={} error={}",
        partner.unwrap_or("-"),
        rid.map_or_else(|| "-".to_string(), |r| Rid(r).to_string()),
        Q(&e.to_string())
    );
}

/// An audit line queued by [`AuditLog::submit`].
pub type Pending<'a> = group_commit::Pending<'a, (String, Vec<u8>)>;

/// The day files of the trail, written only by the leader of a batch.
struct DayFiles {
    dir: PathBuf,
    current: Mutex<Option<(String, File)>>,
}

impl DayFiles {
    /// Appends a batch of `(day, line)` and flushes every file it touched.
    fn append(&self, batch: Vec<(String, Vec<u8>)>) -> Result<(), String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.append_locked(&mut current, batch);
        if result.is_err() {
            // Reopen next time: the file may have a torn tail now.
            *current = None;
        }
        result
    }

    fn append_locked(
        &self,
        current: &mut Option<(String, File)>,
        batch: Vec<(String, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut touched: Vec<File> = Vec::new();
        for (day, line) in batch {
            if current.as_ref().is_none_or(|(d, _)| *d != day) {
                if let Some((_, old)) = current.take() {
                    touched.push(old);
                }
                let path = self.dir.join(format!("{day}.jsonl"));
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| format!("{}: open: {e}", path.display()))?;
                durable::sync_dir(&self.dir).map_err(|e| e.to_string())?;
                *current = Some((day, file));
            }
            if let Some((day, file)) = current.as_mut() {
                file.write_all(&line)
                    .map_err(|e| format!("{}/{day}.jsonl: append: {e}", self.dir.display()))?;
            }
        }
        for file in &touched {
            file.sync_data()
                .map_err(|e| format!("{}: sync: {e}", self.dir.display()))?;
        }
        if let Some((day, file)) = current.as_ref() {
            file.sync_data()
                .map_err(|e| format!("{}/{day}.jsonl: sync: {e}", self.dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_records_share_flushes_and_all_arrive() {
        let dir = std::env::temp_dir().join(format!(
            "np-audit-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let log = std::sync::Arc::new(AuditLog::open(&dir).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let object = format!("t{t}-{i}");
                        log.record(Event {
                            action: "fhir.read",
                            outcome: "success",
                            object: Some(&object),
                            ..Event::default()
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text: String = std::fs::read_dir(dir.join("audit"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 400, "every record, each whole on its own line");
        for t in 0..8 {
            for i in 0..50 {
                let object = format!("t{t}-{i}");
                assert!(
                    lines.iter().any(|l| l["object"] == object.as_str()),
                    "{object}"
                );
            }
        }
        assert!(log.flushes() <= 400);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn record_or_log_says_whether_the_event_was_written() {
        let dir = std::env::temp_dir().join(format!(
            "np-audit-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let log = AuditLog::open(&dir).unwrap();
        let event = || Event {
            action: "fhir.read",
            outcome: "success",
            partner: Some("hospb"),
            ..Event::default()
        };
        assert!(log.record_or_log(event()));
        // The day's file was opened; a trail that cannot be reopened fails.
        std::fs::remove_dir_all(&dir).unwrap();
        let fresh = AuditLog::open(&dir).unwrap();
        std::fs::remove_dir_all(dir.join("audit")).unwrap();
        assert!(!fresh.record_or_log(event()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn absent_fields_are_left_out_and_present_ones_named() {
        let bare = serde_json::to_value(Event {
            when: "2026-03-01T10:00:00Z".into(),
            action: "fhir.read",
            outcome: "success",
            ..Event::default()
        })
        .unwrap();
        assert_eq!(
            bare,
            serde_json::json!({"when": "2026-03-01T10:00:00Z", "action": "fhir.read", "outcome": "success"})
        );

        let mut list = ResourceList::new();
        list.extend_from_resources(&[
            serde_json::json!({"resourceType": "Patient", "id": "p1"}),
            serde_json::json!({"resourceType": "Binary"}),
        ]);
        let full = serde_json::to_value(
            Event {
                when: "2026-03-01T10:00:00Z".into(),
                action: ZORGVIEWER_READ,
                outcome: "refused",
                partner: Some("zv"),
                who_org: Some("2.16.528.1.1007.3.3.12345678"),
                who_ura: Some("12345678"),
                who_user: Some("u-17"),
                who_role: Some("01.015"),
                patient: Some("999999151"),
                request_id: Some("r-1"),
                correlation_id: Some("c-1"),
                aorta_id: Some("rid:1;cid:2"),
                cert_sha256: Some("ab12"),
                context_verified: Some(false),
                query: Some("/fhir/Patient?identifier=999999151"),
                consent: Some(ConsentDecision::NotApplicable),
                consent_source: Some(ConsentSource::ClosedQuestion),
                status: Some(404),
                ..Event::default()
            }
            .returned(&list),
        )
        .unwrap();
        for (key, value) in [
            ("who_ura", serde_json::json!("12345678")),
            ("who_role", serde_json::json!("01.015")),
            ("correlation_id", serde_json::json!("c-1")),
            ("aorta_id", serde_json::json!("rid:1;cid:2")),
            ("cert_sha256", serde_json::json!("ab12")),
            ("context_verified", serde_json::json!(false)),
            (
                "query",
                serde_json::json!("/fhir/Patient?identifier=999999151"),
            ),
            ("consent", serde_json::json!("not-applicable")),
            ("consent_source", serde_json::json!("closed-question")),
            ("status", serde_json::json!(404)),
            ("results", serde_json::json!(2)),
            ("resources", serde_json::json!(["Patient/p1", "Binary/-"])),
        ] {
            assert_eq!(full[key], value, "{key}");
        }
        for d in [
            ConsentDecision::Permit,
            ConsentDecision::Deny,
            ConsentDecision::NotApplicable,
            ConsentDecision::Unavailable,
            ConsentDecision::NotChecked,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for s in [ConsentSource::View, ConsentSource::ClosedQuestion] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn appends_json_lines_per_day() {
        let dir = std::env::temp_dir().join(format!(
            "np-audit-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let log = AuditLog::open(&dir).unwrap();
        log.record(Event {
            action: "token.issued",
            outcome: "success",
            partner: Some("hospb"),
            patient: Some("999999151"),
            ..Event::default()
        })
        .unwrap();
        log.record(Event {
            action: "token.refused",
            outcome: "refused",
            reason: Some("jti replayed"),
            ..Event::default()
        })
        .unwrap();
        let file = dir
            .join("audit")
            .join(format!("{}.jsonl", time::date(time::now_unix())));
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "token.issued");
        assert_eq!(lines[0]["patient"], "999999151");
        assert!(lines[0]["when"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["reason"], "jti replayed");
        assert!(lines[1].get("patient").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
