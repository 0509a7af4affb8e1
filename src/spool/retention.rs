//! Retention of finished work (`<state>/spool/done`): what a finished item
//! keeps, and for how long (`NP_RETENTION`, `NP_DEDUPE_RETENTION`).
//!
//! A finished item's id is what duplicate detection needs: [`Spool::enqueue`]
//! refuses an id that exists in any state, which is how a resent Task, a
//! Mitz notification the broker sends again, or work queued twice is
//! recognised. Its content is read after it finished only for the kinds in
//! [`KEPT_AFTER_DONE`]:
//!
//! - `notify`: a cancellation copies the notification Task it cancels,
//!   until the notification's `restriction.period.end` (`give_up_at`);
//! - `pull`: a resent Task is answered with the stored one, and a
//!   cancellation finds its inbox folder through it, until the Task's
//!   restriction end.
//!
//! So a finished item becomes a *stub* — id, kind, partner, times and the
//! SHA-256 of its content; no BSN, no resource — as it finishes when it is
//! of any other kind (a Mitz notification is in the inbox by then, a
//! subscription or a registration in its own record), and for those two
//! kinds once it has been finished for `NP_RETENTION` and its `give_up_at`
//! has passed. Every finished item, stub or not, is removed once it has
//! been finished for `NP_DEDUPE_RETENTION` (never shorter than
//! `NP_RETENTION`), except a `notify` or `pull` item whose `give_up_at` has
//! not passed: it may still be cancelled, and stays whole until then.
//!
//! A full item finished when its file was written (items are written once
//! per state), so that file's modification time is its finish time; a stub
//! carries it ([`Stub::finished_at`]). [`judge`] decides (pure);
//! [`Spool::prune`] reads `done` and carries the decisions out.

use std::borrow::Cow;
use std::fs;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Item, Spool, SpoolError, State, io_err, valid_id};
use crate::util::durable;

/// Kinds whose content is still read after they finished (see the module
/// documentation for by whom); every other kind is a stub once done.
pub const KEPT_AFTER_DONE: &[&str] = &["notify", "pull"];

/// The key of a stub's body.
const STUB_KEY: &str = "finished";

/// How long finished work keeps its content and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizons {
    /// `NP_RETENTION` in seconds.
    pub content_secs: i64,
    /// `NP_DEDUPE_RETENTION` in seconds; never below `content_secs`.
    pub dedupe_secs: i64,
}

impl Horizons {
    pub fn new(content: Duration, dedupe: Duration) -> Horizons {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let content_secs = secs(content);
        Horizons {
            content_secs,
            dedupe_secs: secs(dedupe).max(content_secs),
        }
    }
}

/// What a stub keeps of a finished item's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stub {
    /// When the item finished (Unix seconds).
    pub finished_at: i64,
    /// SHA-256 (hex) of the body as it was stored (compact JSON).
    pub sha256: String,
}

impl Stub {
    /// The stub in `item`'s body, if the item is one.
    pub fn of(item: &Item) -> Option<Stub> {
        let body = item.body.as_object()?;
        if body.len() != 1 {
            return None;
        }
        serde_json::from_value(body.get(STUB_KEY)?.clone()).ok()
    }
}

/// `item` stripped to its stub, finished at `finished_at`: the id, kind,
/// partner and times stay; the body becomes its hash; the last error goes.
pub fn stub(item: &Item, finished_at: i64) -> Item {
    let content = serde_json::to_vec(&item.body).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &content);
    let stub = Stub {
        finished_at,
        sha256: crate::util::b64::hex(digest.as_ref()),
    };
    let mut body = serde_json::Map::new();
    body.insert(
        STUB_KEY.to_string(),
        serde_json::to_value(stub).unwrap_or(Value::Null),
    );
    Item {
        id: item.id.clone(),
        kind: item.kind.clone(),
        partner: item.partner.clone(),
        created_at: item.created_at,
        attempts: item.attempts,
        not_before: item.not_before,
        give_up_at: item.give_up_at,
        last_error: None,
        body: Value::Object(body),
    }
}

/// What `item` is kept as in `done` when it finishes at `now`: itself for
/// a kind in [`KEPT_AFTER_DONE`] (and an item that is a stub already),
/// else its stub.
pub fn done_form(item: &Item, now: i64) -> Cow<'_, Item> {
    if KEPT_AFTER_DONE.contains(&item.kind.as_str()) || Stub::of(item).is_some() {
        Cow::Borrowed(item)
    } else {
        Cow::Owned(stub(item, now))
    }
}

/// What becomes of a finished item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Replace by its stub.
    Strip,
    Remove,
}

/// The verdict on a finished `item` at `now`; `file_time` is when its file
/// in `done` was written (the finish time of an item that is no stub).
pub fn judge(item: &Item, file_time: i64, horizons: &Horizons, now: i64) -> Verdict {
    let stub = Stub::of(item);
    let finished = stub.as_ref().map_or(file_time, |s| s.finished_at);
    let age = now.saturating_sub(finished);
    let read_later = stub.is_none() && KEPT_AFTER_DONE.contains(&item.kind.as_str());
    // A notification or Task that may still be cancelled stays whole.
    if read_later && item.give_up_at.is_some_and(|t| t > now) {
        return Verdict::Keep;
    }
    if age >= horizons.dedupe_secs {
        Verdict::Remove
    } else if stub.is_some() || (read_later && age < horizons.content_secs) {
        Verdict::Keep
    } else {
        Verdict::Strip
    }
}

/// What one [`Spool::prune`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Items replaced by their stubs.
    pub stripped: usize,
    /// Items (and stubs) removed.
    pub removed: usize,
    /// Items left as they were.
    pub kept: usize,
}

impl Spool {
    /// Applies [`judge`] to every item in `done`. A removal is made durable
    /// once for the pass (a removed item that comes back after a crash is
    /// removed again by the next pass); a stub replaces its item through
    /// [`durable`], as every spool write. An item that vanishes meanwhile
    /// is skipped; an unreadable one is left for recovery to deal with.
    pub fn prune(&self, horizons: &Horizons, now: i64) -> Result<Pruned, SpoolError> {
        let dir = self.root.join(State::Done.dir());
        let mut out = Pruned::default();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir, "read directory"))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|id| valid_id(id))
            else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let file_time = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(now, |d| i64::try_from(d.as_secs()).unwrap_or(now));
            let path = entry.path();
            let item = match self.read(&path) {
                Ok(item) => item,
                Err(SpoolError::Io(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => {
                    log::warn!(
                        "event=spool.unreadable item={id} error={}",
                        crate::ops::logging::Q(&e.to_string())
                    );
                    continue;
                }
            };
            match judge(&item, file_time, horizons, now) {
                Verdict::Keep => out.kept += 1,
                Verdict::Strip => {
                    self.write(State::Done, &stub(&item, file_time))?;
                    out.stripped += 1;
                }
                Verdict::Remove => match fs::remove_file(&path) {
                    Ok(()) => out.removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path, "remove")(e)),
                },
            }
        }
        if out.removed > 0 {
            durable::sync_dir(&dir)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
