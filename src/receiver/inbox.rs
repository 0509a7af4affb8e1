//! What the EHR finds in `NP_INBOX` (DESIGN.md "Folders → Inbox"):
//!
//! ```text
//! NP_INBOX/<partner>/<group-uuid>/<task-uuid>.json            pulled data
//!                                 <task-uuid>.cancelled.json  the cancellation Task
//! ```
//!
//! [`Collector`] (sans-IO) gathers pulled resources, unwrapping searchset
//! Bundles, dropping OperationOutcomes and de-duplicating by type and id;
//! [`Collector::bundle`] makes the `collection` Bundle whose first entry is
//! the notification Task. Files are written only through
//! [`crate::util::durable`], under deterministic names, so a re-pull replaces
//! the earlier file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::util::durable::{self, DurableError};

/// Where a pull's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPaths {
    /// `NP_INBOX/<partner>/<group>`.
    pub dir: PathBuf,
    /// `<dir>/<task>.json`.
    pub data: PathBuf,
    /// `<dir>/<task>.cancelled.json`.
    pub cancelled: PathBuf,
}

impl InboxPaths {
    /// The paths for a Task; `group` and `task` are inbox names
    /// ([`super::task::TaskIdentifier::inbox_name`]: UUIDs or 32 hex digits).
    pub fn new(inbox: &Path, partner: &str, group: &str, task: &str) -> InboxPaths {
        let dir = inbox.join(partner).join(group);
        InboxPaths {
            data: dir.join(format!("{task}.json")),
            cancelled: dir.join(format!("{task}.cancelled.json")),
            dir,
        }
    }
}

/// Removes the temp files a crash inside [`durable::write_shared`] left in the inbox:
/// `.np-*.tmp` (never a name the EHR is given) in the partner folders and
/// their group folders. Symbolic links are not followed. Returns how many.
pub fn remove_temp_files(inbox: &Path) -> Result<usize, DurableError> {
    let mut removed = 0;
    for partner in subdirs(inbox)? {
        removed += durable::remove_temp_files(&partner)?;
        for group in subdirs(&partner)? {
            removed += durable::remove_temp_files(&group)?;
        }
    }
    Ok(removed)
}

/// The folders directly in `dir` (not symbolic links to folders).
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, DurableError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DurableError {
                path: dir.to_path_buf(),
                step: "read directory",
                source,
            });
        }
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

/// Pulled resources, in arrival order, each `<type>/<id>` once.
#[derive(Debug, Default)]
pub struct Collector {
    resources: Vec<Value>,
    seen: HashSet<String>,
    outcomes_dropped: usize,
    duplicates: usize,
}

impl Collector {
    /// An empty collector.
    pub fn new() -> Collector {
        Collector::default()
    }

    /// Takes one response body: a searchset Bundle is unwrapped (entries
    /// with `search.mode` `outcome` and OperationOutcomes dropped) and its
    /// `next` link returned; an OperationOutcome is dropped; anything else
    /// (including a Bundle of another type, read as such) is one resource.
    pub fn add_response(&mut self, value: Value) -> Option<String> {
        let is_searchset = value.get("resourceType").and_then(Value::as_str) == Some("Bundle")
            && value.get("type").and_then(Value::as_str) == Some("searchset");
        if !is_searchset {
            self.add_resource(value);
            return None;
        }
        let next = next_link(&value);
        let Value::Object(mut bundle) = value else {
            return next;
        };
        if let Some(Value::Array(entries)) = bundle.remove("entry") {
            for mut entry in entries {
                let outcome_mode = entry
                    .get("search")
                    .and_then(|s| s.get("mode"))
                    .and_then(Value::as_str)
                    == Some("outcome");
                match entry.get_mut("resource").map(Value::take) {
                    Some(r) if outcome_mode => {
                        drop(r);
                        self.outcomes_dropped += 1;
                    }
                    Some(r) => self.add_resource(r),
                    None => {}
                }
            }
        }
        next
    }

    /// Adds one resource unless one of the same type and id is already there.
    pub fn add_resource(&mut self, resource: Value) {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        if ty == "OperationOutcome" {
            self.outcomes_dropped += 1;
            return;
        }
        let key = match resource.get("id").and_then(Value::as_str) {
            Some(id) => format!("{ty}/{id}"),
            // No id: the same content twice is still the same resource.
            None => format!(
                "#{}",
                crate::util::b64::sha256_hex32(resource.to_string().as_bytes())
            ),
        };
        if self.seen.insert(key) {
            self.resources.push(resource);
        } else {
            self.duplicates += 1;
        }
    }

    /// Resources collected so far.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Repeated resources left out.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// OperationOutcomes left out.
    pub fn outcomes_dropped(&self) -> usize {
        self.outcomes_dropped
    }

    /// The inbox Bundle: type `collection`, id `bundle_id`, first entry the
    /// notification Task, then every collected resource with `fullUrl`
    /// `<base>/<type>/<id>` when it has an id.
    pub fn bundle(self, task: &Value, bundle_id: &str, base: &str) -> Value {
        let base = base.trim_end_matches('/');
        let mut entries = Vec::with_capacity(self.resources.len() + 1);
        entries.push(json!({ "resource": task }));
        for r in self.resources {
            let mut entry = Map::new();
            if let (Some(ty), Some(id)) = (
                r.get("resourceType").and_then(Value::as_str),
                r.get("id").and_then(Value::as_str),
            ) {
                entry.insert("fullUrl".into(), Value::String(format!("{base}/{ty}/{id}")));
            }
            entry.insert("resource".into(), r);
            entries.push(Value::Object(entry));
        }
        json!({
            "resourceType": "Bundle",
            "id": bundle_id,
            "type": "collection",
            "entry": entries,
        })
    }
}

/// The `url` of the first `link` with relation `next`.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle
        .get("link")
        .and_then(Value::as_array)?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        .and_then(|l| l.get("url"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: Value, next: Option<&str>) -> Value {
        let mut b = json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
        if let Some(n) = next {
            b["link"] = json!([{"relation": "self", "url": "https://x/self"}, {"relation": "next", "url": n}]);
        }
        b
    }

    #[test]
    fn unwraps_dedups_and_drops_outcomes() {
        let mut c = Collector::new();
        let next = c.add_response(page(
            json!([
                {"resource": {"resourceType": "Condition", "id": "c1"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}
            ]),
            Some("https://x/fhir?page=2"),
        ));
        assert_eq!(next.as_deref(), Some("https://x/fhir?page=2"));
        assert_eq!(
            c.add_response(page(
                json!([
                    {"resource": {"resourceType": "Condition", "id": "c2"}},
                    {"resource": {"resourceType": "Patient", "id": "p1"}}
                ]),
                None
            )),
            None
        );
        c.add_response(json!({"resourceType": "Bundle", "id": "b1", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient", "id": "p9"}}]}));
        c.add_response(json!({"resourceType": "OperationOutcome"}));
        c.add_resource(json!({"resourceType": "Basic"}));
        c.add_resource(json!({"resourceType": "Basic"}));
        assert_eq!(c.len(), 5);
        assert_eq!((c.duplicates(), c.outcomes_dropped()), (2, 2));
        let task = json!({"resourceType": "Task", "id": "t"});
        let b = c.bundle(&task, "tid", "https://x/fhir/");
        assert_eq!(b["type"], "collection");
        assert_eq!(b["entry"][0]["resource"], task);
        assert!(b["entry"][0].get("fullUrl").is_none());
        assert_eq!(b["entry"][1]["fullUrl"], "https://x/fhir/Condition/c1");
        let kinds: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "Task",
                "Condition",
                "Patient",
                "Condition",
                "Bundle",
                "Basic"
            ]
        );
    }

    /// Regression: a kill while a pull wrote its inbox file left
    /// `.np-<task>.json.<nonce>.tmp` in the group folder for good; start-up
    /// recovery cleaned the spool and the state folders but not the inbox.
    #[test]
    fn a_crash_while_writing_the_inbox_leaves_no_temp_file_after_a_restart() {
        let inbox = std::env::temp_dir().join(format!(
            "np-inbox-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let group = inbox.join("vip").join("g1");
        durable::write_shared(&group.join("t1.json"), b"{}").unwrap();
        let half = group.join(".np-t2.json.0011aabbccdd.tmp");
        std::fs::write(&half, b"{\"resourceType\":").unwrap();
        std::fs::create_dir_all(inbox.join("mitz")).unwrap();
        let mitz = inbox
            .join("mitz")
            .join(".np-20260101T000000Z-x.json.00aa.tmp");
        std::fs::write(&mitz, b"<").unwrap();
        let ehr = group.join(".ehr-working.tmp");
        std::fs::write(&ehr, b"not ours").unwrap();
        assert_eq!(remove_temp_files(&inbox).unwrap(), 2);
        assert!(!half.exists() && !mitz.exists());
        assert!(group.join("t1.json").exists() && ehr.exists());
        assert_eq!(remove_temp_files(&inbox.join("missing")).unwrap(), 0);
        std::fs::remove_dir_all(inbox).unwrap();
    }

    #[test]
    fn paths() {
        let p = InboxPaths::new(Path::new("/in"), "vip", "g", "t");
        assert_eq!(p.data, Path::new("/in/vip/g/t.json"));
        assert_eq!(p.cancelled, Path::new("/in/vip/g/t.cancelled.json"));
    }
}
