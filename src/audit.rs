//! The audit trail (NEN 7513): `<state>/audit/YYYY-MM-DD.jsonl`, one JSON
//! object a line, appended and fdatasynced before the audited action is
//! answered. This is the only place a BSN may be written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::ops::logging::Q;
use crate::util::{durable, time};

/// One audit event. `who_*` is the acting party, `patient` the BSN if any.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Event<'a> {
    /// RFC 3339 UTC.
    pub when: String,
    /// Dotted action name, e.g. `token.issued`, `fhir.read`, `task.received`.
    pub action: &'a str,
    /// `success`, `refused`, `error`.
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
    /// Our request id and the partner's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// How many resources were disclosed (FHIR reads and searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<usize>,
}

/// The audit trail writer.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    current: Mutex<Option<(String, File)>>,
}

impl AuditLog {
    /// Opens (creating) `<state_dir>/audit`.
    pub fn open(state_dir: &Path) -> Result<AuditLog, durable::DurableError> {
        let dir = state_dir.join("audit");
        durable::create_dir_all(&dir)?;
        Ok(AuditLog {
            dir,
            current: Mutex::new(None),
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
                log::error!(
                    "event=audit.failed action={action} partner={} rid={} error={}",
                    partner.unwrap_or("-"),
                    Q(rid.unwrap_or("-")),
                    Q(&e.to_string())
                );
                false
            }
        }
    }

    /// Appends an event (its `when` is filled in when empty) durably.
    pub fn record(&self, mut event: Event<'_>) -> Result<(), durable::DurableError> {
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
        let day = time::date(now);
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(d, _)| *d != day) {
            let path = self.dir.join(format!("{day}.jsonl"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| durable::DurableError {
                    path: path.clone(),
                    step: "open",
                    source,
                })?;
            durable::sync_dir(&self.dir)?;
            *guard = Some((day.clone(), file));
        }
        if let Some((_, file)) = guard.as_mut() {
            file.write_all(&line)
                .and_then(|()| file.sync_data())
                .map_err(|source| durable::DurableError {
                    path: self.dir.join(format!("{day}.jsonl")),
                    step: "append",
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
