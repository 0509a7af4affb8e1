//! The spool: every piece of outgoing and incoming work (a notification to
//! send, a cancellation, a notification to pull) is one JSON file that moves
//! between state folders by atomic rename:
//!
//! ```text
//! <state>/spool/queued/     waiting to be tried
//!              /in-flight/  being worked on (back to queued on start-up)
//!              /retry/      failed, to be tried again at `not_before`
//!              /done/       finished
//!              /dead/       given up, with the reason
//! ```
//!
//! Every write goes through [`crate::util::durable`]: temp file, fsync,
//! rename, then the fsync of the state folder, which concurrent writers of
//! the same folder share ([`durable::DirSync`]): enqueue and every move
//! return only after an fsync of each folder they changed that began after
//! their rename. Removing the in-flight copy when an item is finished needs
//! no flush of its own: a crash that loses the removal leaves both copies,
//! and recovery keeps the further state. An item id is fixed when
//! the item is created (deterministic where the work has a natural identity,
//! e.g. a Task identifier), so enqueueing the same work twice is a no-op and a
//! resend after a crash is the same work. When a crash leaves the same id in
//! two folders, the further state wins: done > dead > retry > queued >
//! in-flight. An item found in flight on start-up was interrupted mid-attempt
//! (its request may have reached the partner): it goes back to the queue with
//! that attempt counted, so `attempts > 0` always means "an attempt was made".

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::util::durable::{self, DirSync, DurableError};

pub mod retention;

/// The state folders, in recovery precedence (highest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Done,
    Dead,
    Retry,
    Queued,
    InFlight,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Done,
        State::Dead,
        State::Retry,
        State::Queued,
        State::InFlight,
    ];

    /// The folder name.
    pub fn dir(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::InFlight => "in-flight",
            State::Retry => "retry",
            State::Done => "done",
            State::Dead => "dead",
        }
    }
}

/// One piece of work. `body` is the kind-specific payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// File-name safe id: `[A-Za-z0-9._-]{1,128}`.
    pub id: String,
    /// What to do: `notify`, `cancel`, `pull`, …
    pub kind: String,
    /// The partner the work is for or from.
    pub partner: String,
    pub created_at: i64,
    /// Attempts so far that failed or were interrupted by a stop or crash.
    /// Above 0, an attempt was made and may have reached the partner; 0
    /// means the work was never tried, or was refused outright.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before this time (Unix seconds).
    #[serde(default)]
    pub not_before: i64,
    /// After this the work is pointless and goes to `dead` (e.g. the
    /// notification's `restriction.period.end`).
    #[serde(default)]
    pub give_up_at: Option<i64>,
    /// Why the last attempt failed, or why the item is dead.
    #[serde(default)]
    pub last_error: Option<String>,
    pub body: serde_json::Value,
}

/// A spool failure: a file or folder that could not be read or written.
#[derive(Debug)]
pub enum SpoolError {
    Io(DurableError),
    BadId(String),
    Corrupt { path: PathBuf, reason: String },
    Missing { id: String, state: State },
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Io(e) => write!(f, "spool: {e}"),
            SpoolError::BadId(id) => write!(f, "spool: {id:?} is not a valid item id"),
            SpoolError::Corrupt { path, reason } => {
                write!(f, "spool: {}: {reason}", path.display())
            }
            SpoolError::Missing { id, state } => {
                write!(f, "spool: item {id} is not in {}", state.dir())
            }
        }
    }
}

impl std::error::Error for SpoolError {}

impl From<DurableError> for SpoolError {
    fn from(e: DurableError) -> Self {
        SpoolError::Io(e)
    }
}

fn io_err(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path = path.to_path_buf();
    move |source| SpoolError::Io(DurableError { path, step, source })
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// In-flight items put back in the queue (the interrupted attempt counted).
    pub requeued: usize,
    /// Half-written temp files removed.
    pub temp_files: usize,
    /// Stale copies of an item that also exists in a further state.
    pub duplicates: usize,
    /// Files that are not valid items, moved to `dead` as `<name>.corrupt`.
    pub corrupt: usize,
}

/// `last_error` of an item found in flight on start-up.
pub const INTERRUPTED: &str = "interrupted: the agent stopped during this attempt";

/// Counts per state and the age of the oldest unfinished item.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub queued: usize,
    pub in_flight: usize,
    pub retry: usize,
    pub done: usize,
    pub dead: usize,
    pub oldest_age_s: i64,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// What the scheduler needs of each waiting (`queued`, `retry`) item,
    /// so a pass over a long queue lists the folders instead of reading and
    /// parsing every file again (which made draining a backlog of n items
    /// cost n² reads). Filled on write and on first read, emptied on claim;
    /// an item file never changes in place, so an entry cannot go stale.
    /// At most [`INDEX_CAP`] entries; beyond that items are read as before.
    index: Arc<Mutex<HashMap<(State, String), Waiting>>>,
    /// The batched fsync of each state folder, in [`State::ALL`] order.
    folders: Arc<[DirSync; 5]>,
}

/// The most waiting items [`Spool::waiting`] keeps in memory.
pub const INDEX_CAP: usize = 200_000;

/// What scheduling needs of a waiting item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: String,
    pub partner: String,
    pub not_before: i64,
    pub created_at: i64,
}

impl Waiting {
    fn of(item: &Item) -> Waiting {
        Waiting {
            id: item.id.clone(),
            partner: item.partner.clone(),
            not_before: item.not_before,
            created_at: item.created_at,
        }
    }
}

/// True for ids that are safe as file names.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Spool {
    /// Opens `<state_dir>/spool`, creating the folders, and recovers from a
    /// crash: temp files removed, duplicates resolved by precedence, in-flight
    /// items requeued with the interrupted attempt counted.
    pub fn open(state_dir: &Path) -> Result<(Spool, Recovery), SpoolError> {
        let root = state_dir.join("spool");
        for s in State::ALL {
            durable::create_dir_all(&root.join(s.dir()))?;
        }
        let spool = Spool::with_root(root);
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    /// The spool of `state_dir` without recovery (for commands that run
    /// beside the daemon: `status`, `retry-dead`). Fails when it does not exist.
    pub fn at(state_dir: &Path) -> Result<Spool, SpoolError> {
        let root = state_dir.join("spool");
        if !root.is_dir() {
            return Err(SpoolError::Io(DurableError {
                path: root,
                step: "open (has the daemon run yet?)",
                source: io::Error::from(io::ErrorKind::NotFound),
            }));
        }
        Ok(Spool::with_root(root))
    }

    /// The counts of the spool of `state_dir`, read beside a running daemon
    /// without opening it (for `status`). A spool the daemon has not created
    /// yet (fresh install: no state folder, or an empty one) is an empty
    /// spool: all counts 0. Reads only; creates nothing.
    pub fn counts_at(state_dir: &Path, now: i64) -> Result<Counts, SpoolError> {
        let root = state_dir.join("spool");
        match root.try_exists().map_err(io_err(&root, "look for"))? {
            false => Ok(Counts::default()),
            true => Spool::at(state_dir)?.counts(now),
        }
    }

    fn with_root(root: PathBuf) -> Spool {
        let folders = Arc::new(State::ALL.map(|s| DirSync::new(&root.join(s.dir()))));
        Spool {
            root,
            index: Arc::new(Mutex::new(HashMap::new())),
            folders,
        }
    }

    /// The batched fsync of `state`'s folder.
    fn folder(&self, state: State) -> &DirSync {
        let i = State::ALL.iter().position(|s| *s == state).unwrap_or(0);
        &self.folders[i]
    }

    /// Folder fsyncs done so far, all folders together (tests, metrics).
    pub fn folder_syncs(&self) -> u64 {
        self.folders.iter().map(DirSync::batches).sum()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<(State, String), Waiting>> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, state: State, item: &Item) {
        if matches!(state, State::Queued | State::Retry) {
            let mut index = self.index();
            if index.len() < INDEX_CAP {
                index.insert((state, item.id.clone()), Waiting::of(item));
            }
        }
    }

    fn path(&self, state: State, id: &str) -> PathBuf {
        self.root.join(state.dir()).join(format!("{id}.json"))
    }

    fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut r = Recovery::default();
        for s in State::ALL {
            r.temp_files += durable::remove_temp_files(&self.root.join(s.dir()))?;
        }
        // Resolve ids present in more than one state: the further state wins.
        let mut seen = std::collections::HashSet::new();
        for s in State::ALL {
            for id in self.ids(s)? {
                if !seen.insert(id.clone()) {
                    durable::remove(&self.path(s, &id))?;
                    r.duplicates += 1;
                }
            }
        }
        for s in State::ALL {
            for id in self.ids(s)? {
                let path = self.path(s, &id);
                if self.read(&path).is_err() {
                    let dead = self
                        .root
                        .join(State::Dead.dir())
                        .join(format!("{id}.json.corrupt"));
                    durable::rename(&path, &dead)?;
                    log::warn!(
                        "event=spool.corrupt item={id} state={} moved_to=dead",
                        s.dir()
                    );
                    r.corrupt += 1;
                }
            }
        }
        // Interrupted mid-attempt: the request may have reached the partner,
        // so the attempt counts. Every queued copy is written and `queued`
        // fsynced once before any in-flight copy is removed (and `in-flight`
        // fsynced once): a crash in between leaves both copies, and the next
        // recovery keeps the queued one.
        let interrupted = self.ids(State::InFlight)?;
        for id in &interrupted {
            let from = self.path(State::InFlight, id);
            let mut item = self.read(&from)?;
            item.attempts = item.attempts.saturating_add(1);
            item.last_error = Some(INTERRUPTED.into());
            let bytes = serde_json::to_vec(&item).map_err(|e| SpoolError::Corrupt {
                path: from.clone(),
                reason: e.to_string(),
            })?;
            durable::write_atomic_folder_unsynced(&self.path(State::Queued, id), &bytes)?;
            self.remember(State::Queued, &item);
        }
        if !interrupted.is_empty() {
            self.folder(State::Queued).sync()?;
            for id in &interrupted {
                let from = self.path(State::InFlight, id);
                fs::remove_file(&from).map_err(io_err(&from, "remove"))?;
            }
            self.folder(State::InFlight).sync()?;
            r.requeued = interrupted.len();
        }
        Ok(r)
    }

    /// Ids in a state, oldest name first.
    pub fn ids(&self, state: State) -> Result<Vec<String>, SpoolError> {
        let dir = self.root.join(state.dir());
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir, "read directory"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|id| valid_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Where an item is, if anywhere.
    pub fn find(&self, id: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| self.path(*s, id).exists())
    }

    fn read(&self, path: &Path) -> Result<Item, SpoolError> {
        let bytes = fs::read(path).map_err(io_err(path, "read"))?;
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Loads an item from a state.
    pub fn load(&self, state: State, id: &str) -> Result<Item, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::BadId(id.into()));
        }
        let path = self.path(state, id);
        if !path.exists() {
            return Err(SpoolError::Missing {
                id: id.into(),
                state,
            });
        }
        self.read(&path)
    }

    fn write(&self, state: State, item: &Item) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(item).map_err(|e| SpoolError::Corrupt {
            path: self.path(state, &item.id),
            reason: e.to_string(),
        })?;
        durable::write_atomic_in(self.folder(state), &self.path(state, &item.id), &bytes)?;
        self.remember(state, item);
        Ok(())
    }

    /// Adds an item to `queued`. Returns `false` (and writes nothing) when an
    /// item with this id exists in any state: the same work is never queued
    /// twice. Either answer means the item is on disk: an existing one may
    /// be there after an enqueue whose fsync failed, so its folder is
    /// fsynced before `false` is returned.
    pub fn enqueue(&self, item: &Item) -> Result<bool, SpoolError> {
        if !valid_id(&item.id) {
            return Err(SpoolError::BadId(item.id.clone()));
        }
        if let Some(state) = self.find(&item.id) {
            self.folder(state).sync()?;
            return Ok(false);
        }
        self.write(State::Queued, item)?;
        Ok(true)
    }

    /// [`Spool::enqueue`] into `batch` (layer `layer`): the item is written
    /// under a temp name, which workers do not see, and takes its name in
    /// `queued` when the batch installs that layer; call
    /// [`Spool::enqueued`] then. Returns `false` (and writes nothing) when
    /// an item with this id exists in any state, as `enqueue` does.
    pub fn stage_enqueue(
        &self,
        batch: &mut durable::Batch,
        layer: usize,
        item: &Item,
    ) -> Result<bool, SpoolError> {
        if !valid_id(&item.id) {
            return Err(SpoolError::BadId(item.id.clone()));
        }
        if let Some(state) = self.find(&item.id) {
            self.folder(state).sync()?;
            return Ok(false);
        }
        let path = self.path(State::Queued, &item.id);
        let bytes = serde_json::to_vec(item).map_err(|e| SpoolError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        batch.write(layer, &path, &bytes)?;
        Ok(true)
    }

    /// An item staged with [`Spool::stage_enqueue`] whose batch installed
    /// it: the scheduler's index learns of it.
    pub fn enqueued(&self, item: &Item) {
        self.remember(State::Queued, item);
    }

    /// The waiting items (`queued` and `retry`) whose time has come, oldest
    /// first, and the earliest `not_before` of those not yet due: what the
    /// scheduler needs, from the folder listings and the in-memory index
    /// (a file is read only the first time it is seen).
    pub fn waiting(&self, now: i64) -> Result<(Vec<Waiting>, Option<i64>), SpoolError> {
        let mut out = Vec::new();
        let mut next: Option<i64> = None;
        for s in [State::Queued, State::Retry] {
            let ids = self.ids(s)?;
            let mut missing = Vec::new();
            {
                let index = self.index();
                for id in &ids {
                    match index.get(&(s, id.clone())) {
                        Some(w) => out.push(w.clone()),
                        None => missing.push(id),
                    }
                }
            }
            for id in missing {
                match self.load(s, id) {
                    Ok(item) => {
                        self.remember(s, &item);
                        out.push(Waiting::of(&item));
                    }
                    // Claimed meanwhile: nothing to do.
                    Err(SpoolError::Missing { .. }) => {}
                    Err(e) => log::warn!(
                        "event=spool.unreadable item={id} error={}",
                        crate::ops::logging::Q(&e.to_string())
                    ),
                }
            }
            // Forget entries whose file left this folder some other way.
            let listed: std::collections::HashSet<&String> = ids.iter().collect();
            self.index()
                .retain(|(state, id), _| *state != s || listed.contains(id));
        }
        out.retain(|w| {
            if w.not_before <= now {
                return true;
            }
            next = Some(next.map_or(w.not_before, |n| n.min(w.not_before)));
            false
        });
        out.sort_by(|a, b| {
            (a.not_before, a.created_at, &a.id).cmp(&(b.not_before, b.created_at, &b.id))
        });
        Ok((out, next))
    }

    /// Items in `queued` and `retry` whose time has come, oldest first.
    pub fn due(&self, now: i64) -> Result<Vec<Item>, SpoolError> {
        self.due_and_next(now).map(|(due, _)| due)
    }

    /// [`Spool::due`], and the earliest `not_before` of the items not yet
    /// due. Reads every waiting item whole; the scheduler uses the cheaper
    /// [`Spool::waiting`], which a test holds to the same answers.
    pub fn due_and_next(&self, now: i64) -> Result<(Vec<Item>, Option<i64>), SpoolError> {
        let mut out = Vec::new();
        let mut next: Option<i64> = None;
        for s in [State::Queued, State::Retry] {
            for id in self.ids(s)? {
                match self.load(s, &id) {
                    Ok(item) if item.not_before <= now => out.push(item),
                    Ok(item) => {
                        next = Some(next.map_or(item.not_before, |n| n.min(item.not_before)));
                    }
                    Err(e) => log::warn!(
                        "event=spool.unreadable item={id} error={}",
                        crate::ops::logging::Q(&e.to_string())
                    ),
                }
            }
        }
        out.sort_by(|a, b| {
            (a.not_before, a.created_at, &a.id).cmp(&(b.not_before, b.created_at, &b.id))
        });
        Ok((out, next))
    }

    /// Moves an item from `queued`/`retry` to `in-flight`.
    pub fn claim(&self, id: &str) -> Result<Item, SpoolError> {
        for s in [State::Queued, State::Retry] {
            let from = self.path(s, id);
            if from.exists() {
                let to = self.path(State::InFlight, id);
                durable::rename_in(self.folder(s), &from, self.folder(State::InFlight), &to)?;
                self.index().remove(&(s, id.to_string()));
                return self.read(&to);
            }
        }
        Err(SpoolError::Missing {
            id: id.into(),
            state: State::Queued,
        })
    }

    /// Finishes an in-flight item: it moves to `done` with its final
    /// content, or only its stub when nothing reads that content any more
    /// ([`retention::done_form`]).
    pub fn complete(&self, item: &Item) -> Result<(), SpoolError> {
        let now = crate::util::time::now_unix();
        self.finish(&retention::done_form(item, now), State::Done)
    }

    /// Schedules an in-flight item for another attempt.
    pub fn retry(&self, item: &Item) -> Result<(), SpoolError> {
        self.finish(item, State::Retry)
    }

    /// Gives up on an in-flight item; `item.last_error` says why.
    pub fn bury(&self, item: &Item) -> Result<(), SpoolError> {
        self.finish(item, State::Dead)
    }

    /// Writes the item's new content into `to` durably, then removes the
    /// in-flight copy without a flush of its own: a crash that loses the
    /// removal leaves both copies, and recovery keeps `to`.
    fn finish(&self, item: &Item, to: State) -> Result<(), SpoolError> {
        self.write(to, item)?;
        let from = self.path(State::InFlight, &item.id);
        match fs::remove_file(&from) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&from, "remove")(e)),
        }
    }

    /// Makes the next `n` fsyncs of `state`'s folder fail (tests).
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_folder_syncs(&self, state: State, n: usize) {
        self.folder(state).insecure_test_fail_syncs(n);
    }

    /// Moves every dead item (of `partner`, or all) back to `queued` with its
    /// attempts reset. Returns how many.
    pub fn requeue_dead(&self, partner: Option<&str>, now: i64) -> Result<usize, SpoolError> {
        let mut n = 0;
        for id in self.ids(State::Dead)? {
            let Ok(mut item) = self.load(State::Dead, &id) else {
                continue;
            };
            if partner.is_some_and(|p| p != item.partner) {
                continue;
            }
            item.attempts = 0;
            item.not_before = now;
            item.last_error = None;
            self.write(State::Queued, &item)?;
            durable::remove(&self.path(State::Dead, &id))?;
            n += 1;
        }
        Ok(n)
    }

    /// Items per state, from the folder listings only (cheap enough for
    /// every `/metrics` read; [`Spool::counts`] also reads the items).
    pub fn sizes(&self) -> Result<[(State, usize); 5], SpoolError> {
        let mut out = State::ALL.map(|s| (s, 0));
        for (state, n) in &mut out {
            let dir = self.root.join(state.dir());
            *n = fs::read_dir(&dir)
                .map_err(io_err(&dir, "read directory"))?
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .is_some_and(valid_id)
                })
                .count();
        }
        Ok(out)
    }

    /// Counts per state and the age of the oldest item not yet done or dead.
    pub fn counts(&self, now: i64) -> Result<Counts, SpoolError> {
        let mut c = Counts::default();
        let mut oldest: Option<i64> = None;
        for s in State::ALL {
            let ids = self.ids(s)?;
            match s {
                State::Queued => c.queued = ids.len(),
                State::InFlight => c.in_flight = ids.len(),
                State::Retry => c.retry = ids.len(),
                State::Done => c.done = ids.len(),
                State::Dead => c.dead = ids.len(),
            }
            if matches!(s, State::Queued | State::InFlight | State::Retry) {
                for id in ids {
                    if let Ok(item) = self.load(s, &id) {
                        oldest =
                            Some(oldest.map_or(item.created_at, |o: i64| o.min(item.created_at)));
                    }
                }
            }
        }
        c.oldest_age_s = oldest.map_or(0, |o| (now - o).max(0));
        Ok(c)
    }
}

/// What a worker decided about one attempt at an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished: the item moves to `done`.
    Done,
    /// Try again later: after `retry_after` seconds when the partner said so
    /// (`Retry-After`), else after the back-off.
    Retry {
        reason: String,
        retry_after: Option<u64>,
    },
    /// Pointless to try again: the item moves to `dead` with the reason.
    Dead(String),
    /// Not attempted: something else has to happen first (an earlier
    /// notification of the same case, say). Look again after `after_secs`;
    /// the attempts are not counted, so no back-off grows and `attempts`
    /// keeps saying whether the work was ever tried. Still given up at
    /// `give_up_at` or `max_age`.
    Wait { reason: String, after_secs: u64 },
}

/// Back-off policy: first retry within 5 s, cap 15 min.
pub const BACKOFF_FIRST_SECS: u64 = 5;
pub const BACKOFF_CAP_SECS: u64 = 900;

/// When retried work runs again and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first wait (`NP_RETRY_FIRST`); doubles per attempt.
    pub first_secs: u64,
    /// Longest wait, also for a `Retry-After` (`NP_RETRY_CAP`).
    pub cap_secs: u64,
    /// Work older than this is given up (`NP_RETRY_MAX_AGE`).
    pub max_age_secs: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_secs: BACKOFF_FIRST_SECS,
            cap_secs: BACKOFF_CAP_SECS,
            max_age_secs: 72 * 3_600,
        }
    }
}

/// Applies a worker's outcome to an in-flight item: done, dead, or retry with
/// back-off (honouring `Retry-After`), turned into dead once the item's
/// `give_up_at` or `max_age` has passed. `random` feeds the jitter.
/// Returns the state the item ended in. The default back-off; see [`settle_with`].
pub fn settle(
    spool: &Spool,
    item: Item,
    outcome: Outcome,
    now: i64,
    max_age_secs: i64,
    random: u32,
) -> Result<State, SpoolError> {
    let policy = RetryPolicy {
        max_age_secs,
        ..RetryPolicy::default()
    };
    settle_with(spool, item, outcome, now, &policy, random)
}

/// [`settle`] under `policy`: a retry waits the jittered back-off, or the
/// partner's `Retry-After` when that is longer (both at most `cap_secs`).
pub fn settle_with(
    spool: &Spool,
    mut item: Item,
    outcome: Outcome,
    now: i64,
    policy: &RetryPolicy,
    random: u32,
) -> Result<State, SpoolError> {
    let cap = policy.cap_secs.max(1);
    match outcome {
        Outcome::Done => {
            item.last_error = None;
            spool.complete(&item)?;
            Ok(State::Done)
        }
        Outcome::Dead(reason) => {
            item.last_error = Some(reason);
            spool.bury(&item)?;
            Ok(State::Dead)
        }
        Outcome::Wait { reason, after_secs } => {
            let expired = item.give_up_at.is_some_and(|t| t <= now)
                || now - item.created_at >= policy.max_age_secs;
            if expired {
                item.last_error = Some(format!("gave up while waiting: {reason}"));
                spool.bury(&item)?;
                return Ok(State::Dead);
            }
            // What is waited for retries within `cap`: never wait longer.
            let wait = after_secs.clamp(1, cap.saturating_add(1));
            item.not_before = now + i64::try_from(wait).unwrap_or(i64::MAX / 2);
            item.last_error = Some(reason);
            spool.retry(&item)?;
            Ok(State::Retry)
        }
        Outcome::Retry {
            reason,
            retry_after,
        } => {
            item.attempts = item.attempts.saturating_add(1);
            let wait = backoff_secs(item.attempts, policy.first_secs, cap, random)
                .max(retry_after.unwrap_or(0).min(cap));
            item.not_before = now + i64::try_from(wait).unwrap_or(i64::MAX / 2);
            let expired = item.give_up_at.is_some_and(|t| t <= now)
                || now - item.created_at >= policy.max_age_secs;
            if expired {
                item.last_error = Some(format!(
                    "gave up after {} attempts: {reason}",
                    item.attempts
                ));
                spool.bury(&item)?;
                Ok(State::Dead)
            } else {
                item.last_error = Some(reason);
                spool.retry(&item)?;
                Ok(State::Retry)
            }
        }
    }
}

/// Exponential back-off with full jitter: the n-th retry waits a
/// uniformly random time in `[0, min(cap, first * 2^(n-1))]`, at least 1 s.
/// `random` is any u32 (from the CSPRNG in production, fixed in tests).
pub fn backoff_secs(attempts: u32, first: u64, cap: u64, random: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(30);
    let ceiling = first.saturating_mul(1u64 << exp).min(cap);
    (u64::from(random) % (ceiling + 1)).max(1)
}

#[cfg(test)]
mod tests;
