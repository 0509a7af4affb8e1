//! Outbox scanning (I/O): `NP_OUTBOX/<partner>/` → case store + spool, or
//! the record store for a `zorgviewer` partner (`outbox/publish.rs`).
//!
//! One pass ([`Scanner::scan`]):
//!
//! 1. Every folder of `NP_OUTBOX` that is a configured `twiin` or
//!    `zorgviewer` partner is scanned; a folder that is not has its files moved to
//!    `<folder>/.rejected/` ("unknown partner folder"); a file directly in
//!    `NP_OUTBOX` goes to `NP_OUTBOX/.rejected/`. Hidden folders and symbolic
//!    links to folders are not entered.
//! 2. In a partner folder, names starting with `.` or ending in
//!    `.tmp`/`.part` are never touched; subfolders are ignored. Every other
//!    entry is first **claimed**: renamed into `<partner>/.np-claimed/`. From
//!    then on it is ours: an EHR that writes a new `<case-id>.json` meanwhile
//!    writes a new file, which the next pass picks up, instead of replacing
//!    the one being stored (and removed) under our feet. Claimed files left
//!    by a crash or a transient failure are processed first, before anything
//!    new with the same name is claimed. Files are taken oldest first (mtime,
//!    then name), so an export followed by its `.cancel` keeps its order.
//! 3. A claimed file is opened without following symbolic links and without
//!    blocking on FIFOs, read up to `NP_MAX_BODY`, validated
//!    ([`super::export`]), stored, and only then removed:
//!    data version ([`CaseStore::stage_data`]) → case record with the new
//!    Task and the file's identity ([`CaseStore::stage`], [`ExportSource`]) →
//!    spool item ([`Spool::stage_enqueue`]) → claimed file removed. The data
//!    exports of a folder are written in batches of up to [`BATCH_FILES`]
//!    under temp names, unflushed; one barrier makes a batch durable, then
//!    its data and case records take their names, then its spool items
//!    ([`durable::Batch`]), then its files are removed (see
//!    [`Scanner::finish_intake`]). Neither the claim nor the removal is
//!    flushed (why: at each). A crash anywhere leaves the claimed file, and the next pass
//!    finishes the job exactly once: before the case record it stores the
//!    file again (nothing was announced yet); after it, it finds the file's
//!    identity in the case record (`event=outbox.already_accepted`), queues
//!    the Task if the crash came before the spool step, and only removes
//!    the file. The first pass after start-up also queues the latest Task
//!    of every live case whose spool item does not exist, should its file
//!    be gone. A `zorgviewer` partner's files are claimed, read, validated
//!    and quarantined the same way, then published or withdrawn in the
//!    record store instead (`outbox/publish.rs`): nothing is queued or sent.
//!    `docs/crash-safety.md` lists every window.
//! 4. A file that cannot be accepted moves to `<partner>/.rejected/<name>`
//!    with `<name>.error.txt` (one line: file and reason) beside it, written
//!    first so that no rejected file is ever without its reason. An earlier
//!    rejected file of the same name is never overwritten: the new one gets a
//!    UTC timestamp before its extension. A name that cannot be kept (not
//!    UTF-8, control characters, over 128 bytes: the suffixes would pass
//!    `NAME_MAX`) is stored as `bad-name-<hash of the name>`; the reason line
//!    names every file as it was, escaped (`\xNN`). A quarantine that fails
//!    (permissions, a full disk) leaves the file where it is, is tried again
//!    after the back-off of point 5, and is logged at error once per folder
//!    until a quarantine there succeeds.
//! 5. A transient failure (disk, randomness) leaves the file claimed and
//!    remembers `(size, mtime, inode)`: an unchanged file is not read again
//!    before its back-off (30 s doubling to 15 min) has passed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditLog};
use crate::cases::{Case, CaseStatus, CaseStore, ExportSource, SentTask};
use crate::config::{Config, TwiinPartner};
use crate::ids::OrgId;
use crate::ids::{self, Bsn};
use crate::oauth::TokenStore;
use crate::ops::logging::Q;
use crate::records::RecordStore;
use crate::sender::export::{
    self, Accepted, CaseId, Data, Kind, Name, Problem, Rejected, RejectedName, Rules,
};
use crate::sender::task::{self, Notification};
use crate::spool::{Item, Spool, SpoolError, State};
use crate::util::{durable, random, time};

/// Where claimed files wait inside a partner folder.
pub const CLAIMED_DIR: &str = ".np-claimed";
/// Where rejected files go inside a folder.
pub const REJECTED_DIR: &str = ".rejected";
/// Spool kind of a notification.
pub const KIND_NOTIFY: &str = "notify";
/// Spool kind of a cancellation.
pub const KIND_CANCEL: &str = "cancel";
/// `SentTask.status` values.
pub const TASK_REQUESTED: &str = "requested";
pub const TASK_CANCELLED: &str = "cancelled";

/// Most data exports of one partner folder stored under one durability
/// barrier ([`durable::Batch`]).
pub const BATCH_FILES: usize = 256;
/// The layers of an intake batch: data versions and case records first,
/// then the spool items that announce them, never durable before them.
const LAYER_STORE: usize = 0;
const LAYER_QUEUE: usize = 1;

/// First and longest wait before an unchanged deferred file is read again.
pub const DEFER_FIRST_SECS: i64 = 30;
pub const DEFER_CAP_SECS: i64 = 900;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Exports for new cases, stored and queued.
    pub accepted: usize,
    /// Exports for known cases (a new version), stored and queued.
    pub updated: usize,
    /// `.cancel` files carried out.
    pub cancelled: usize,
    /// Files moved to `.rejected`.
    pub rejected: usize,
    /// Files left for a later pass (transient failure or back-off).
    pub deferred: usize,
    /// Files found already accepted (a crash came before their removal),
    /// now removed.
    pub already_accepted: usize,
    /// Notifications of saved Tasks queued on start-up because a crash came
    /// between saving the case and queueing them.
    pub requeued: usize,
    /// Records published to a `zorgviewer` partner (new ones and new versions).
    pub published: usize,
    /// Records withdrawn (`.cancel` in a `zorgviewer` partner's folder).
    pub withdrawn: usize,
    /// Mitz subscriptions queued for patients of published records.
    pub subscriptions: usize,
}

/// The body of a `notify` spool item.
#[derive(Clone, Serialize, Deserialize)]
pub struct NotifyBody {
    pub case_id: String,
    /// Bare UUID of the Task identifier.
    pub task_id: String,
    /// Data version announced.
    pub version: u32,
    /// BSN (for the token request's `patient` claim).
    pub patient: String,
    /// The complete notification Task.
    pub task: serde_json::Value,
}

/// The body of a `cancel` spool item.
#[derive(Clone, Serialize, Deserialize)]
pub struct CancelBody {
    pub case_id: String,
    /// Bare UUID of the Task identifier being cancelled.
    pub task_id: String,
    /// The spool item that delivered (or delivers) the notification.
    pub notify_item: String,
    pub patient: String,
    /// The complete cancellation Task.
    pub task: serde_json::Value,
}

/// Spool item id of the notification for a Task.
pub fn notify_item_id(task_id: &str) -> String {
    format!("notify-{task_id}")
}

/// Spool item id of the cancellation of a Task.
pub fn cancel_item_id(task_id: &str) -> String {
    format!("cancel-{task_id}")
}

/// What the scanner remembers between passes.
#[derive(Debug, Default)]
pub struct ScanState {
    deferred: HashMap<PathBuf, Deferral>,
    warned: HashSet<PathBuf>,
    /// Refused files whose move to `.rejected` failed: not tried again
    /// before their back-off has passed.
    quarantine_retry: HashMap<PathBuf, QuarantineRetry>,
    /// Folders whose failing quarantine was reported; reported again only
    /// after a quarantine there succeeded.
    quarantine_alerted: HashSet<PathBuf>,
    /// Every case's latest Task was checked to be queued (done once, in
    /// the first pass that manages it).
    requeue_checked: bool,
    /// Intake barriers still to fail, as a failing disk would.
    #[cfg(test)]
    insecure_test_fail_barriers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deferral {
    fingerprint: Fingerprint,
    attempts: u32,
    next_try: i64,
    /// The content is stored and queued; only the removal is left to do.
    stored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuarantineRetry {
    attempts: u32,
    next_try: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    size: u64,
    mtime: (i64, i64),
    ino: u64,
}

impl Fingerprint {
    fn of(m: &Metadata) -> Fingerprint {
        Fingerprint {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ino: m.ino(),
        }
    }
}

/// The stores a pass writes to.
pub struct Scanner<'a> {
    pub config: &'a Config,
    pub rules: &'a Rules,
    pub cases: &'a CaseStore,
    pub records: &'a RecordStore,
    pub spool: &'a Spool,
    pub tokens: &'a TokenStore,
    pub audit: &'a AuditLog,
    /// Called after a record is published (the patient's Mitz subscriptions).
    pub after_publish: Option<&'a dyn super::AfterPublish>,
    /// Called after data of a patient is published or withdrawn (the
    /// patient's referral in the national referral index).
    pub publication: Option<&'a dyn super::Publication>,
}

/// Why a file was not finished this pass.
enum Fail {
    /// The file's fault: quarantine it.
    Reject(Problem),
    /// Ours or the system's: leave it and try again later.
    Transient(String),
}

/// How a claimed file ended.
enum Done {
    /// A data export written into the pass's batch, not yet durable:
    /// [`Scanner::finish_intake`] finishes it.
    Staged(Box<StoredExport>),
    Accepted,
    Updated,
    Cancelled,
    /// Accepted before (a crash came before the removal): only removed.
    AlreadyAccepted,
    /// A record published (a new one or a new version), and the Mitz
    /// subscriptions that queued.
    Published {
        subscriptions: usize,
    },
    /// A record published before (a crash came before the removal), and
    /// the Mitz subscriptions queued now.
    AlreadyPublished {
        subscriptions: usize,
    },
    /// A record withdrawn.
    Withdrawn,
}

/// What [`Scanner::accept`] wrote into the batch for one data export.
struct StoredExport {
    /// The case record as saved, the new Task last.
    case: Case,
    /// Its notification, and whether it was written (a new id always is).
    item: Item,
    queued: bool,
    /// A new version of a known case.
    update: bool,
    patient: Bsn,
    /// Resources in the export, for the log.
    resources: usize,
}

/// Data exports of a partner folder written in this pass and not yet
/// durable: one barrier makes them all durable ([`Scanner::finish_intake`]).
#[derive(Default)]
struct Intake {
    batch: durable::Batch,
    files: Vec<Staged>,
    /// Cases of the files in the batch (their [`case_key`]): a later file of
    /// one of them is taken only after the batch is finished, so a case's
    /// files keep their order (an export and its `.cancel`, say).
    cases: HashSet<Vec<u8>>,
}

/// A claimed data export in the batch.
struct Staged {
    entry: Entry,
    fingerprint: Fingerprint,
    /// Its deferral before this pass, for the back-off should it fail.
    earlier: Option<Deferral>,
    stored: StoredExport,
}

impl Intake {
    fn has(&self, case: &[u8]) -> bool {
        self.cases.contains(case)
    }

    fn full(&self) -> bool {
        self.files.len() >= BATCH_FILES
    }
}

/// Test hook: stop after this step, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    Claimed,
    /// A data export's data version written into the batch, unflushed.
    DataWritten,
    /// Every file of the batch written, unflushed; the barrier not run. As
    /// after a power cut, not even the batch's cleanup runs.
    Staged,
    /// The batch's data versions and case records durable (the barrier and
    /// its first layer), their notifications not yet queued.
    CaseSaved,
    /// The batch's notifications queued, the exports not yet removed.
    Enqueued,
    /// A `.cancel`: the case record saved as cancelled, nothing else done.
    CaseCancelled,
    /// A published record: saved and indexed, its replaced version not yet
    /// removed.
    RecordSaved,
    /// A record's `.cancel`: saved as withdrawn, its data not yet removed.
    RecordWithdrawn,
}

/// The state of one pass.
struct Pass<'a> {
    state: &'a mut ScanState,
    /// Claimed files looked at (deferrals of others are forgotten).
    seen: HashSet<PathBuf>,
    report: ScanReport,
    now: i64,
    stop: Option<Step>,
}

/// The case a file name belongs to (the name up to its last `.`), for
/// keeping the order of one case's files.
fn case_key(name: &OsStr) -> Vec<u8> {
    let b = name.as_bytes();
    match b.iter().rposition(|c| *c == b'.') {
        Some(i) if i > 0 => b[..i].to_vec(),
        _ => b.to_vec(),
    }
}

impl Scanner<'_> {
    /// One pass over `NP_OUTBOX`.
    pub fn scan(&self, state: &mut ScanState, now: i64) -> ScanReport {
        self.scan_until(state, now, None)
    }

    pub(crate) fn scan_until(
        &self,
        state: &mut ScanState,
        now: i64,
        stop: Option<Step>,
    ) -> ScanReport {
        let mut pass = Pass {
            state,
            seen: HashSet::new(),
            report: ScanReport::default(),
            now,
            stop,
        };
        if !pass.state.requeue_checked {
            let (requeued, complete) = self.requeue_unqueued(now);
            pass.report.requeued += requeued;
            pass.state.requeue_checked = complete;
        }
        let root = &self.config.outbox;
        let entries = match list(root) {
            Ok(e) => e,
            Err(e) => {
                if pass.state.warned.insert(root.clone()) {
                    log::warn!(
                        "event=outbox.unreadable dir={} error={}",
                        Q(&root.display().to_string()),
                        Q(&e.to_string())
                    );
                }
                return pass.report;
            }
        };
        pass.state.warned.remove(root);
        for entry in entries {
            let name = entry.name.as_bytes();
            let ft = entry.meta.file_type();
            if ft.is_dir() {
                if name.starts_with(b".") {
                    continue;
                }
                let folder = String::from_utf8_lossy(name).into_owned();
                if self.rules.knows(&folder) {
                    self.scan_partner(&folder, &entry.path, &mut pass);
                } else {
                    self.scan_unknown(&entry.path, &mut pass);
                }
            } else if ft.is_symlink() {
                if pass.state.warned.insert(entry.path.clone()) {
                    log::warn!(
                        "event=outbox.symlink_ignored path={} reason=\"symbolic links in NP_OUTBOX are not followed\"",
                        Q(&entry.path.display().to_string())
                    );
                }
            } else if !export::is_ignored(name) {
                let rejected = Rejected::new(name, Problem::NotInPartnerFolder);
                self.reject(root, &entry, &rejected, &mut pass);
            }
        }
        let seen = std::mem::take(&mut pass.seen);
        pass.state.deferred.retain(|path, _| seen.contains(path));
        pass.state
            .quarantine_retry
            .retain(|path, _| seen.contains(path));
        // A folder with no failing file left (removed by hand, say) alerts
        // again on its next failure.
        let failing = &pass.state.quarantine_retry;
        pass.state.quarantine_alerted.retain(|dir| {
            failing
                .keys()
                .filter_map(|path| path.parent())
                .any(|parent| parent == dir.as_path() || parent == dir.join(CLAIMED_DIR).as_path())
        });
        pass.report
    }

    /// A folder that is not a configured twiin partner: everything in it
    /// (and anything we had claimed there) goes to `.rejected`.
    fn scan_unknown(&self, dir: &Path, pass: &mut Pass<'_>) {
        for sub in [dir.join(CLAIMED_DIR), dir.to_path_buf()] {
            let Ok(entries) = list(&sub) else { continue };
            for entry in entries {
                if entry.meta.is_dir() || export::is_ignored(entry.name.as_bytes()) {
                    continue;
                }
                let rejected = Rejected::new(entry.name.as_bytes(), Problem::UnknownPartner);
                self.reject(dir, &entry, &rejected, pass);
            }
        }
    }

    /// A partner folder: claimed leftovers first, then new files, oldest
    /// first. Once a file of a case is left for later, every later file of
    /// that case waits too, so an export and its `.cancel` keep their order.
    /// Data exports are stored in batches of up to [`BATCH_FILES`], each
    /// made durable by one barrier ([`Scanner::finish_intake`]); a file of a
    /// case already in the batch waits for the batch to finish.
    fn scan_partner(&self, partner: &str, dir: &Path, pass: &mut Pass<'_>) {
        let claimed_dir = dir.join(CLAIMED_DIR);
        let mut waiting: HashSet<Vec<u8>> = HashSet::new();
        let mut intake = Intake::default();
        if let Ok(leftovers) = list(&claimed_dir) {
            for entry in leftovers {
                if entry.meta.is_dir() {
                    continue;
                }
                pass.seen.insert(entry.path.clone());
                let case = case_key(&entry.name);
                if intake.has(&case) {
                    self.finish_intake(&mut intake, &mut waiting, pass);
                }
                if waiting.contains(&case) {
                    pass.report.deferred += 1;
                    continue;
                }
                if !self.process(partner, dir, &entry, pass, &mut intake) {
                    waiting.insert(case);
                }
                if intake.full() {
                    self.finish_intake(&mut intake, &mut waiting, pass);
                }
            }
        }
        let entries = match list(dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "event=outbox.unreadable partner={partner} error={}",
                    Q(&e.to_string())
                );
                self.finish_intake(&mut intake, &mut waiting, pass);
                return;
            }
        };
        for entry in entries {
            if entry.meta.is_dir() || export::is_ignored(entry.name.as_bytes()) {
                continue;
            }
            let case = case_key(&entry.name);
            if intake.has(&case) {
                self.finish_intake(&mut intake, &mut waiting, pass);
            }
            let target = claimed_dir.join(&entry.name);
            // An earlier file of this case (or of this very name) is still
            // being worked on: this one waits, unclaimed.
            if waiting.contains(&case) || target.symlink_metadata().is_ok() {
                waiting.insert(case);
                pass.report.deferred += 1;
                continue;
            }
            // The claim is not flushed: lost in a crash, it leaves the file
            // in the outbox under its own name, the same inode, size and
            // modification time, and the next pass claims it again. Whatever
            // was stored from it meanwhile is durable and names it by exactly
            // that identity (`ExportSource` in the case or published record),
            // so it is only finished then, never stored twice; a `.cancel`
            // is repeated, which cancelling allows. A rename is one atomic
            // step of the file system's journal, committed in order: the file
            // is under one name or the other, and a later change to the
            // outbox folder that is durable (the EHR's next file of this
            // name) makes this one durable too.
            if let Err(e) = durable::create_dir_all(&claimed_dir)
                .and_then(|()| durable::rename_folders_unsynced(&entry.path, &target))
            {
                log::error!(
                    "event=outbox.claim_failed partner={partner} file={} error={}",
                    export::log_name(entry.name.as_bytes()),
                    Q(&e.to_string())
                );
                waiting.insert(case);
                pass.report.deferred += 1;
                continue;
            }
            if pass.stop == Some(Step::Claimed) {
                return;
            }
            let Ok(meta) = target.symlink_metadata() else {
                continue;
            };
            let claimed = Entry {
                name: entry.name,
                path: target,
                meta,
            };
            pass.seen.insert(claimed.path.clone());
            if !self.process(partner, dir, &claimed, pass, &mut intake) {
                waiting.insert(case);
            }
            if intake.full() {
                self.finish_intake(&mut intake, &mut waiting, pass);
            }
        }
        self.finish_intake(&mut intake, &mut waiting, pass);
    }

    /// Carries out one claimed file, or writes it into `intake`'s batch (a
    /// data export for a Twiin partner). Returns `false` when the file was
    /// left in place for a later pass.
    fn process(
        &self,
        partner: &str,
        dir: &Path,
        entry: &Entry,
        pass: &mut Pass<'_>,
        intake: &mut Intake,
    ) -> bool {
        let now = pass.now;
        if pass.quarantine_waits(&entry.path) {
            return false;
        }
        let fingerprint = Fingerprint::of(&entry.meta);
        let earlier = pass.state.deferred.get(&entry.path).copied();
        if let Some(d) = earlier.filter(|d| d.fingerprint == fingerprint) {
            if d.stored {
                // Stored and queued already: only the removal is left (not
                // flushed, for the reason in `finish_file`).
                return match durable::remove_folder_unsynced(&entry.path) {
                    Ok(()) => {
                        pass.state.deferred.remove(&entry.path);
                        true
                    }
                    Err(_) => {
                        pass.report.deferred += 1;
                        false
                    }
                };
            }
            if now < d.next_try {
                pass.report.deferred += 1;
                return false;
            }
        }
        let name = entry.name.as_bytes();
        match self.carry_out(partner, entry, now, pass.stop, &mut intake.batch) {
            // Stopped by the test hook, as by a crash.
            None => false,
            Some(Ok(Done::Staged(stored))) => {
                intake.cases.insert(case_key(&entry.name));
                intake.files.push(Staged {
                    entry: entry.clone(),
                    fingerprint,
                    earlier,
                    stored: *stored,
                });
                true
            }
            Some(Ok(done)) => self.finish_file(partner, entry, fingerprint, done, pass),
            Some(Err(Fail::Reject(problem))) => {
                pass.state.deferred.remove(&entry.path);
                let rejected = Rejected::new(name, problem);
                self.reject(dir, entry, &rejected, pass)
            }
            Some(Err(Fail::Transient(reason))) => {
                pass.defer(partner, entry, fingerprint, earlier, &reason);
                false
            }
        }
    }

    /// Removes a claimed file whose content is stored and counts it.
    /// Returns `false` when the removal failed: the file is left, and only
    /// its removal is tried again.
    ///
    /// The removal is not flushed. What it answers is durable before it:
    /// the case record (or published record) that names the file's identity
    /// (`ExportSource`), the notification queued, or the cancellation or
    /// withdrawal saved. Lost in a crash, the removal leaves the file
    /// claimed, and the next pass recognises it (`outbox.already_accepted`,
    /// or a repeated `.cancel`) and only removes it again: nothing is
    /// announced twice.
    fn finish_file(
        &self,
        partner: &str,
        entry: &Entry,
        fingerprint: Fingerprint,
        done: Done,
        pass: &mut Pass<'_>,
    ) -> bool {
        match durable::remove_folder_unsynced(&entry.path) {
            Ok(()) => {
                pass.state.deferred.remove(&entry.path);
                match done {
                    Done::Accepted => pass.report.accepted += 1,
                    Done::Updated => pass.report.updated += 1,
                    Done::Cancelled => pass.report.cancelled += 1,
                    Done::AlreadyAccepted => pass.report.already_accepted += 1,
                    Done::Published { subscriptions } => {
                        pass.report.published += 1;
                        pass.report.subscriptions += subscriptions;
                    }
                    Done::AlreadyPublished { subscriptions } => {
                        pass.report.already_accepted += 1;
                        pass.report.subscriptions += subscriptions;
                    }
                    Done::Withdrawn => pass.report.withdrawn += 1,
                    // Finished by `finish_intake`, never removed before.
                    Done::Staged(_) => {}
                }
                true
            }
            Err(e) => {
                log::error!(
                    "event=outbox.remove_failed partner={partner} file={} error={}",
                    export::log_name(entry.name.as_bytes()),
                    Q(&e.to_string())
                );
                pass.state.deferred.insert(
                    entry.path.clone(),
                    Deferral {
                        fingerprint,
                        attempts: 0,
                        next_try: pass.now,
                        stored: true,
                    },
                );
                pass.report.deferred += 1;
                false
            }
        }
    }

    /// Makes the batch's data exports durable and finishes them, in this
    /// order: the barrier (every data version, case record and notification
    /// flushed at once) → data versions and case records installed, their
    /// folders flushed, the cases indexed → notifications installed in
    /// `queued` (from here the worker sees them) → the publication hook, the
    /// log and the audit lines (one flush) → the claimed files removed. A
    /// failed barrier or install defers every file of the batch (the
    /// back-off of a transient failure) and queues nothing of it: the files
    /// stay claimed and are stored again, or, when their case records were
    /// installed, found accepted and queued then.
    fn finish_intake(
        &self,
        intake: &mut Intake,
        waiting: &mut HashSet<Vec<u8>>,
        pass: &mut Pass<'_>,
    ) {
        let Intake {
            mut batch,
            files,
            cases,
        } = std::mem::take(intake);
        if files.is_empty() {
            return;
        }
        let Some(partner) = files
            .first()
            .and_then(|f| self.config.twiin_partner(&f.stored.case.partner))
        else {
            return;
        };
        let fail_all =
            |files: &[Staged], pass: &mut Pass<'_>, what: &str, e: &dyn std::fmt::Display| {
                let reason = format!("{what}: {e}");
                for f in files {
                    pass.defer(partner.name, &f.entry, f.fingerprint, f.earlier, &reason);
                }
            };
        if pass.stop == Some(Step::Staged) {
            waiting.extend(cases);
            std::mem::forget(batch);
            return;
        }
        #[cfg(test)]
        if pass.state.insecure_test_fail_barriers > 0 {
            pass.state.insecure_test_fail_barriers -= 1;
            batch.insecure_test_fail_flushes(1);
        }
        if let Err(e) = batch.install(LAYER_STORE) {
            fail_all(&files, pass, "store", &e);
            waiting.extend(cases);
            return;
        }
        for f in &files {
            self.cases.saved(f.stored.case.clone());
        }
        if pass.stop == Some(Step::CaseSaved) {
            waiting.extend(cases);
            return;
        }
        if let Err(e) = batch.install(LAYER_QUEUE) {
            fail_all(&files, pass, "queue notification", &e);
            waiting.extend(cases);
            return;
        }
        for f in files.iter().filter(|f| f.stored.queued) {
            self.spool.enqueued(&f.stored.item);
        }
        if pass.stop == Some(Step::Enqueued) {
            waiting.extend(cases);
            return;
        }
        let org = self
            .config
            .our_org(partner.id_scheme)
            .map(|o| ids::org_claim(&o));
        let mut lines = Vec::with_capacity(files.len());
        let mut finished = Vec::with_capacity(files.len());
        for f in files {
            let s = &f.stored;
            if let Err(fail) = self.published(&s.patient, pass.now) {
                let reason = match fail {
                    Fail::Transient(r) => r,
                    Fail::Reject(p) => p.to_string(),
                };
                pass.defer(partner.name, &f.entry, f.fingerprint, f.earlier, &reason);
                waiting.insert(case_key(&f.entry.name));
                continue;
            }
            let Some(sent) = s.case.tasks.last() else {
                continue;
            };
            let event = if s.update {
                "export.updated"
            } else {
                "export.accepted"
            };
            log::info!(
                "event={event} partner={} case={} version={} task=urn:uuid:{} resources={}",
                partner.name,
                s.case.case_id,
                s.case.version,
                sent.task_id,
                s.resources
            );
            let object = format!(
                "case {} version {} task urn:uuid:{}",
                s.case.case_id, s.case.version, sent.task_id
            );
            let audited = self.event_of(partner.name, org.as_deref(), event, &s.patient, &object);
            // Queued now, waited for below: one flush for the batch.
            match self.audit.submit(audited) {
                Ok(pending) => lines.push((event, pending)),
                Err(e) => audit::log_failed(event, Some(partner.name), None, &e),
            }
            finished.push(f);
        }
        for (event, pending) in lines {
            if let Err(e) = pending.wait() {
                audit::log_failed(event, Some(partner.name), None, &e);
            }
        }
        for f in finished {
            let done = if f.stored.update {
                Done::Updated
            } else {
                Done::Accepted
            };
            if !self.finish_file(partner.name, &f.entry, f.fingerprint, done, pass) {
                waiting.insert(case_key(&f.entry.name));
            }
        }
    }

    /// Reads, validates and stores one claimed file. `None` only when the
    /// test hook stopped it.
    fn carry_out(
        &self,
        partner: &str,
        entry: &Entry,
        now: i64,
        stop: Option<Step>,
        batch: &mut durable::Batch,
    ) -> Option<Result<Done, Fail>> {
        let name = entry.name.as_bytes();
        let kind = match export::classify(name) {
            Ok(k) => k,
            Err(p) => return Some(Err(Fail::Reject(p))),
        };
        let bytes = match kind {
            Name::Cancel { .. } => Vec::new(),
            // Devices, sockets and FIFOs are never opened.
            _ if !entry.meta.is_file() && !entry.meta.file_type().is_symlink() => {
                return Some(Err(Fail::Reject(Problem::NotRegularFile(type_name(
                    &entry.meta,
                )))));
            }
            _ => match read_capped(&entry.path, self.rules.max_bytes) {
                Ok(b) => b,
                Err(f) => return Some(Err(f)),
            },
        };
        let accepted = match export::validate(name, &bytes, partner, self.rules) {
            Ok(a) => a,
            Err(r) => return Some(Err(Fail::Reject(r.problem))),
        };
        let source = ExportSource {
            name: export::display_name(name),
            sha256: crate::util::b64::hex(
                ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
            ),
            size: entry.meta.size(),
            inode: entry.meta.ino(),
            mtime: (entry.meta.mtime(), entry.meta.mtime_nsec()),
        };
        drop(bytes);
        if let Some(p) = self.config.twiin_partner(partner) {
            return self.store(p, accepted, source, now, stop, batch);
        }
        if let Some(p) = publish::zorgviewer_partner(self.config, partner) {
            return self.publish(p, accepted, source, now, stop);
        }
        Some(Err(Fail::Reject(Problem::UnknownPartner)))
    }

    fn store(
        &self,
        partner: TwiinPartner<'_>,
        accepted: Accepted,
        source: ExportSource,
        now: i64,
        stop: Option<Step>,
        batch: &mut durable::Batch,
    ) -> Option<Result<Done, Fail>> {
        let (case_id, kind) = accepted.into_parts();
        match kind {
            Kind::Data(data) => self.accept(partner, &case_id, &data, source, now, stop, batch),
            Kind::Cancel => match self.cancel(partner, &case_id, now, stop) {
                Ok(Some(done)) => Some(Ok(done)),
                Ok(None) => None,
                Err(f) => Some(Err(f)),
            },
        }
    }

    /// Writes a data export's data version, case record and notification
    /// into `batch` ([`Done::Staged`]; [`Scanner::finish_intake`] makes them
    /// durable and finishes the file); for a file that was accepted before
    /// (a crash came before its removal) only makes sure its notification
    /// is queued.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        partner: TwiinPartner<'_>,
        case_id: &CaseId,
        data: &Data,
        source: ExportSource,
        now: i64,
        stop: Option<Step>,
        batch: &mut durable::Batch,
    ) -> Option<Result<Done, Fail>> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            Some(Err(Fail::Transient(format!("{what}: {e}"))))
        };
        let existing = self.cases.get(partner.name, case_id.as_str());
        // Before anything else, the status included: the file may have been
        // accepted just before the case was cancelled.
        if let Some(case) = &existing {
            if let Some(sent) = case
                .tasks
                .iter()
                .rev()
                .find(|t| t.source.as_ref() == Some(&source))
            {
                return Some(self.already_accepted(partner, case, sent, now));
            }
        }
        if self.config.our_org(partner.id_scheme).is_none() {
            return Some(Err(Fail::Transient(format!(
                "partner {}: we have no organisation id in its id scheme (NP_ORG_AGB)",
                partner.name
            ))));
        }
        let ttl = i64::try_from(self.config.notification_ttl.as_secs()).unwrap_or(i64::MAX / 4);
        let period_end = now.saturating_add(ttl);
        let patient = data.patient();
        let owner = owner_of(partner);
        let (mut case, done) = match existing {
            Some(c) if c.status == CaseStatus::Cancelled => {
                return Some(Err(Fail::Reject(Problem::CaseCancelled)));
            }
            Some(c) if c.patient != patient.as_str() => {
                return Some(Err(Fail::Reject(Problem::OtherPatient)));
            }
            Some(mut c) => {
                c.expires_at = c.expires_at.max(period_end);
                c.owner = owner.map(ToString::to_string);
                c.updated_at = now;
                (c, Done::Updated)
            }
            None => match Case::new(
                partner.name,
                case_id.as_str(),
                patient,
                owner,
                now,
                period_end,
            ) {
                Ok(c) => (c, Done::Accepted),
                Err(e) => return transient("new case", &e),
            },
        };
        case.version = case.version.saturating_add(1);
        let task_id = match random::uuid_v4() {
            Ok(u) => u,
            Err(e) => return transient("task id", &e),
        };
        let json = crate::fhir::to_json_string(data.bundle()).into_bytes();
        if let Err(e) = self.cases.stage_data(
            batch,
            LAYER_STORE,
            partner.name,
            case_id.as_str(),
            case.version,
            &json,
        ) {
            return transient("store data", &e);
        }
        if stop == Some(Step::DataWritten) {
            return None;
        }
        let sent = SentTask {
            task_id: task_id.clone(),
            version: case.version,
            item_id: notify_item_id(&task_id),
            status: TASK_REQUESTED.into(),
            source: Some(source),
            authored_on: now,
            period_end,
        };
        case.tasks.push(sent.clone());
        let item = match self.notify_item(partner, &case, &sent, data, now) {
            Ok(i) => i,
            Err(f) => return Some(Err(f)),
        };
        if let Err(e) = self.cases.stage(batch, LAYER_STORE, &case) {
            return transient("save case", &e);
        }
        let queued = match self.spool.stage_enqueue(batch, LAYER_QUEUE, &item) {
            Ok(q) => q,
            Err(e) => return transient("queue notification", &e),
        };
        Some(Ok(Done::Staged(Box::new(StoredExport {
            case,
            item,
            queued,
            update: matches!(done, Done::Updated),
            patient: patient.clone(),
            resources: data.resources().len(),
        }))))
    }

    /// A file whose acceptance a crash interrupted after the case record was
    /// saved: queue its notification if the crash came before that, then
    /// let the file be removed. Nothing is announced twice.
    fn already_accepted(
        &self,
        partner: TwiinPartner<'_>,
        case: &Case,
        sent: &SentTask,
        now: i64,
    ) -> Result<Done, Fail> {
        let requeued = self.queue_latest(partner, case, now)?;
        if let Some(bsn) = Bsn::parse(&case.patient) {
            self.published(&bsn, now)?;
        }
        log::info!(
            "event=outbox.already_accepted partner={} case={} version={} task=urn:uuid:{} requeued={requeued}",
            partner.name,
            case.case_id,
            sent.version,
            sent.task_id
        );
        // The crash may have come before the audit event was written: record
        // it (again, at worst) rather than risk never.
        if let Some(bsn) = Bsn::parse(&case.patient) {
            let event = if sent.version == 1 {
                "export.accepted"
            } else {
                "export.updated"
            };
            let object = format!(
                "case {} version {} task urn:uuid:{} (completed after a restart)",
                case.case_id, sent.version, sent.task_id
            );
            self.audit_event(partner, event, &bsn, &object);
        }
        Ok(Done::AlreadyAccepted)
    }

    /// Queues the notification of every live case's latest Task that was
    /// saved but never queued (a crash between the two steps). Returns how
    /// many were queued and whether every case could be checked.
    fn requeue_unqueued(&self, now: i64) -> (usize, bool) {
        let (mut requeued, mut complete) = (0, true);
        for case in self.cases.all() {
            let Some(partner) = self.config.twiin_partner(&case.partner) else {
                continue;
            };
            match self.queue_latest(partner, &case, now) {
                Ok(false) => {}
                Ok(true) => {
                    requeued += 1;
                    log::warn!(
                        "event=outbox.requeued partner={} case={} version={} reason=\"saved but not queued before a restart\"",
                        case.partner,
                        case.case_id,
                        case.version
                    );
                }
                Err(f) => {
                    complete = false;
                    let reason = match f {
                        Fail::Transient(r) => r,
                        Fail::Reject(p) => p.to_string(),
                    };
                    log::error!(
                        "event=outbox.requeue_failed partner={} case={} error={}",
                        case.partner,
                        case.case_id,
                        Q(&reason)
                    );
                }
            }
        }
        (requeued, complete)
    }

    /// Queues the notification of a live case's latest Task when its spool
    /// item does not exist (a crash came between saving the case and
    /// queueing), rebuilt from the stored data version. Only the latest: an
    /// earlier Task without an item was superseded before it was ever sent,
    /// and sending it now would put the case's notifications out of order.
    /// Returns whether it queued one.
    fn queue_latest(&self, partner: TwiinPartner<'_>, case: &Case, now: i64) -> Result<bool, Fail> {
        let Some(sent) = case.tasks.last() else {
            return Ok(false);
        };
        if case.status != CaseStatus::Live
            || sent.status != TASK_REQUESTED
            || self.spool.find(&sent.item_id).is_some()
        {
            return Ok(false);
        }
        let period_end = if sent.period_end > 0 {
            sent.period_end
        } else {
            case.expires_at
        };
        if period_end <= now {
            // Also every delivered notification once its finished item is
            // pruned (`NP_DEDUPE_RETENTION`): nothing to tell.
            log::debug!(
                "event=outbox.requeue_skipped partner={} case={} version={} reason=\"restriction.period.end passed\"",
                case.partner,
                case.case_id,
                sent.version
            );
            return Ok(false);
        }
        let path = self
            .cases
            .data_path(&case.partner, &case.case_id, sent.version);
        let bytes = fs::read(&path)
            .map_err(|e| Fail::Transient(format!("read stored data {}: {e}", path.display())))?;
        // The stored data passed these rules once; only the size limit may
        // have changed since.
        let rules = Rules {
            max_bytes: u64::MAX,
            ..self.rules.clone()
        };
        let stored = format!("{}.json", case.case_id);
        let data = match export::validate(stored.as_bytes(), &bytes, partner.name, &rules)
            .map(Accepted::into_parts)
        {
            Ok((_, Kind::Data(d))) if d.patient().as_str() == case.patient => d,
            Ok(_) => {
                return Err(Fail::Transient(format!(
                    "stored data {} is not this case's export",
                    path.display()
                )));
            }
            Err(r) => {
                return Err(Fail::Transient(format!(
                    "stored data {}: {}",
                    path.display(),
                    r.problem
                )));
            }
        };
        let mut sent = sent.clone();
        sent.period_end = period_end;
        if sent.authored_on == 0 {
            sent.authored_on = case.updated_at;
        }
        let item = self.notify_item(partner, case, &sent, &data, now)?;
        self.spool
            .enqueue(&item)
            .map_err(|e| Fail::Transient(format!("queue notification: {e}")))
    }

    /// The spool item that delivers `sent`: its notification Task, built
    /// from the case, the data version and the configuration.
    fn notify_item(
        &self,
        partner: TwiinPartner<'_>,
        case: &Case,
        sent: &SentTask,
        data: &Data,
        now: i64,
    ) -> Result<Item, Fail> {
        let Some(requester) = self.config.our_org(partner.id_scheme) else {
            return Err(Fail::Transient(format!(
                "partner {}: we have no organisation id in its id scheme (NP_ORG_AGB)",
                partner.name
            )));
        };
        let task = Notification {
            task_id: &sent.task_id,
            group_id: &case.group_id,
            patient: data.patient(),
            authored_on: sent.authored_on,
            period_end: sent.period_end,
            system_id: &self.config.system_id,
            requester: &requester,
            owner: owner_of(partner),
            authorization_base: &case.authorization_base,
            resources: data.resources(),
        }
        .to_task();
        let body = NotifyBody {
            case_id: case.case_id.clone(),
            task_id: sent.task_id.clone(),
            version: sent.version,
            patient: data.patient().as_str().to_string(),
            task,
        };
        let body =
            serde_json::to_value(&body).map_err(|e| Fail::Transient(format!("serialise: {e}")))?;
        Ok(Item {
            id: sent.item_id.clone(),
            kind: KIND_NOTIFY.into(),
            partner: partner.name.to_string(),
            created_at: now,
            attempts: 0,
            not_before: now,
            give_up_at: Some(sent.period_end),
            last_error: None,
            body,
        })
    }

    /// Cancels a case: record, base revoked, one cancellation per Task that
    /// was (or is being) delivered. Safe to repeat after a crash.
    /// `Ok(None)` only when the test hook stopped it.
    fn cancel(
        &self,
        partner: TwiinPartner<'_>,
        case_id: &CaseId,
        now: i64,
        stop: Option<Step>,
    ) -> Result<Option<Done>, Fail> {
        let transient =
            |what: &str, e: &dyn std::fmt::Display| Fail::Transient(format!("{what}: {e}"));
        let Some(mut case) = self.cases.get(partner.name, case_id.as_str()) else {
            return Err(Fail::Reject(Problem::UnknownCase));
        };
        let first_time = case.status != CaseStatus::Cancelled;
        if first_time {
            // Audited before it happens: a crash in between records it twice
            // rather than never.
            if let Some(bsn) = Bsn::parse(&case.patient) {
                self.audit_event(partner, "case.cancelled", &bsn, &format!("case {case_id}"));
            }
            case.status = CaseStatus::Cancelled;
            case.updated_at = now;
            for t in &mut case.tasks {
                if t.status == TASK_REQUESTED {
                    t.status = TASK_CANCELLED.into();
                }
            }
            self.cases
                .save(&case)
                .map_err(|e| transient("save case", &e))?;
        }
        if stop == Some(Step::CaseCancelled) {
            return Ok(None);
        }
        let revoked = self.tokens.revoke_base(&case.authorization_base);
        let mut queued = 0;
        for sent in &case.tasks {
            let Some(notify) = self
                .load_any(&sent.item_id)
                .map_err(|e| transient("read notification", &e))?
            else {
                // Never queued (a crash before the spool step, the Task then
                // superseded), or dead without ever being tried: the partner
                // has nothing to cancel.
                continue;
            };
            if notify.give_up_at.is_some_and(|end| end <= now) {
                continue;
            }
            let Some(task) = notify.body.get("task") else {
                continue;
            };
            let body = CancelBody {
                case_id: case.case_id.clone(),
                task_id: sent.task_id.clone(),
                notify_item: sent.item_id.clone(),
                patient: case.patient.clone(),
                task: task::cancellation(task, now),
            };
            let body = serde_json::to_value(&body).map_err(|e| transient("serialise", &e))?;
            let item = Item {
                id: cancel_item_id(&sent.task_id),
                kind: KIND_CANCEL.into(),
                partner: partner.name.to_string(),
                created_at: now,
                attempts: 0,
                not_before: now,
                give_up_at: notify.give_up_at,
                last_error: None,
                body,
            };
            if self
                .spool
                .enqueue(&item)
                .map_err(|e| transient("queue cancellation", &e))?
            {
                queued += 1;
            }
        }
        if let Some(bsn) = Bsn::parse(&case.patient) {
            self.withdrawn(&bsn, now)?;
        }
        log::info!(
            "event=case.cancelled partner={} case={case_id} cancellations={queued} tokens_revoked={revoked} repeat={}",
            partner.name,
            !first_time
        );
        Ok(Some(Done::Cancelled))
    }

    /// Data of `patient` is published: the [`super::Publication`] hook,
    /// when there is one. A failure leaves the file for the next pass.
    fn published(&self, patient: &Bsn, now: i64) -> Result<(), Fail> {
        match self.publication {
            Some(hook) => hook.published(patient, now).map_err(Fail::Transient),
            None => Ok(()),
        }
    }

    /// Data of `patient` was withdrawn: the [`super::Publication`] hook.
    fn withdrawn(&self, patient: &Bsn, now: i64) -> Result<(), Fail> {
        match self.publication {
            Some(hook) => hook.withdrawn(patient, now).map_err(Fail::Transient),
            None => Ok(()),
        }
    }

    /// The notify item in whatever state it is, if it exists and may have
    /// reached the partner: not dead, or dead after an attempt (a crash or a
    /// timeout mid-request may have delivered it).
    fn load_any(&self, id: &str) -> Result<Option<Item>, SpoolError> {
        // The item may move between states while we look: try a few times.
        for _ in 0..3 {
            let Some(state) = self.spool.find(id) else {
                return Ok(None);
            };
            match self.spool.load(state, id) {
                Ok(item) if state == State::Dead && item.attempts == 0 => return Ok(None),
                Ok(item) => return Ok(Some(item)),
                Err(SpoolError::Missing { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn audit_event(&self, partner: TwiinPartner<'_>, action: &str, patient: &Bsn, object: &str) {
        let org = self.config.our_org(partner.id_scheme);
        self.audit_as(partner.name, org.as_ref(), action, patient, object);
    }

    /// An audit event of ours (`org` in claim form) about a partner's patient.
    fn audit_as(
        &self,
        partner: &str,
        org: Option<&OrgId>,
        action: &str,
        patient: &Bsn,
        object: &str,
    ) {
        let org = org.map(ids::org_claim);
        let event = self.event_of(partner, org.as_deref(), action, patient, object);
        self.audit.record_or_log(event);
    }

    /// The audit event of ours (`who_org` in claim form) about a partner's
    /// patient.
    fn event_of<'e>(
        &'e self,
        partner: &'e str,
        who_org: Option<&'e str>,
        action: &'e str,
        patient: &'e Bsn,
        object: &'e str,
    ) -> audit::Event<'e> {
        audit::Event {
            action,
            outcome: "success",
            partner: Some(partner),
            who_org,
            who_system: Some(&self.config.system_id),
            patient: Some(patient.as_str()),
            object: Some(object),
            ..audit::Event::default()
        }
    }

    /// Moves a file to `<dir>/.rejected/` with its reason beside it, under
    /// its own name or a generated one ([`RejectedName`]); the reason names
    /// the file as it was, escaped ([`export::escape_name`]). Returns `false`
    /// when that failed and the file stays where it is: it is tried again
    /// after a back-off, and the failure is logged at error once per folder
    /// until a quarantine there succeeds.
    fn reject(&self, dir: &Path, entry: &Entry, rejected: &Rejected, pass: &mut Pass<'_>) -> bool {
        pass.seen.insert(entry.path.clone());
        if pass.quarantine_waits(&entry.path) {
            return false;
        }
        let raw = entry.name.as_bytes();
        let name = RejectedName::for_file(raw);
        let reason = format!("{}: {}", export::escape_name(raw), rejected.problem);
        let folder = export::display_name(dir.file_name().map(OsStr::as_bytes).unwrap_or_default());
        match quarantine(dir, &entry.path, &name, &reason, pass.now) {
            Ok(stored_as) => {
                pass.report.rejected += 1;
                pass.state.quarantine_retry.remove(&entry.path);
                pass.state.quarantine_alerted.remove(dir);
                log::warn!(
                    "event=outbox.rejected folder={} file={} stored_as={} reason={}",
                    log_folder(&folder, &rejected.problem),
                    export::log_name(raw),
                    export::log_name(stored_as.as_bytes()),
                    Q(&rejected.problem.to_string())
                );
                true
            }
            Err(e) => {
                pass.report.deferred += 1;
                let attempts = pass
                    .state
                    .quarantine_retry
                    .get(&entry.path)
                    .map_or(0, |r| r.attempts)
                    .saturating_add(1);
                let wait = defer_secs(attempts);
                pass.state.quarantine_retry.insert(
                    entry.path.clone(),
                    QuarantineRetry {
                        attempts,
                        next_try: pass.now.saturating_add(wait),
                    },
                );
                let first = pass.state.quarantine_alerted.insert(dir.to_path_buf());
                let level = if first {
                    log::Level::Error
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "event=outbox.quarantine_failed folder={} file={} reason={} error={} retry_in_s={wait} repeat={}",
                    log_folder(&folder, &rejected.problem),
                    export::log_name(raw),
                    Q(&rejected.problem.to_string()),
                    Q(&e.to_string()),
                    !first
                );
                false
            }
        }
    }
}

impl Pass<'_> {
    /// Leaves a file for a later pass after a transient failure (ours or the
    /// system's): not read again, unchanged, before its back-off.
    fn defer(
        &mut self,
        partner: &str,
        entry: &Entry,
        fingerprint: Fingerprint,
        earlier: Option<Deferral>,
        reason: &str,
    ) {
        let attempts = earlier.map_or(0, |d| d.attempts).saturating_add(1);
        let wait = defer_secs(attempts);
        log::warn!(
            "event=outbox.deferred partner={partner} file={} reason={} retry_in_s={wait}",
            export::log_name(entry.name.as_bytes()),
            Q(reason)
        );
        self.state.deferred.insert(
            entry.path.clone(),
            Deferral {
                fingerprint,
                attempts,
                next_try: self.now + wait,
                stored: false,
            },
        );
        self.report.deferred += 1;
    }

    /// True (and counted as deferred) while a file whose quarantine failed
    /// waits for its next try.
    fn quarantine_waits(&mut self, path: &Path) -> bool {
        let waits = self
            .state
            .quarantine_retry
            .get(path)
            .is_some_and(|r| self.now < r.next_try);
        if waits {
            self.report.deferred += 1;
        }
        waits
    }
}

/// Back-off before a file left after its `attempts`-th failure is tried
/// again: [`DEFER_FIRST_SECS`] doubling up to [`DEFER_CAP_SECS`].
fn defer_secs(attempts: u32) -> i64 {
    DEFER_FIRST_SECS
        .saturating_mul(1_i64 << attempts.saturating_sub(1).min(20))
        .min(DEFER_CAP_SECS)
}

/// `Task.owner` towards a partner: its organisation, unless it is
/// addressed as a system.
fn owner_of(partner: TwiinPartner<'_>) -> Option<&OrgId> {
    (!partner.address_system).then_some(&partner.kind.org)
}

/// A directory entry and its `lstat`.
#[derive(Clone)]
struct Entry {
    name: OsString,
    path: PathBuf,
    meta: Metadata,
}

/// Entries of `dir` (not following symbolic links), oldest first by mtime;
/// on equal mtimes (file times tick only every few milliseconds) a
/// `.cancel` after the other files, then by name. Entries that vanish while
/// listing are skipped.
fn list(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        out.push(Entry {
            name: entry.file_name(),
            path,
            meta,
        });
    }
    // An export and its `.cancel` written within one clock tick: taking the
    // `.cancel` first would refuse it (unknown case) and leave the case live.
    let key = |e: &Entry| {
        (
            e.meta.mtime(),
            e.meta.mtime_nsec(),
            e.name.as_bytes().ends_with(b".cancel"),
        )
    };
    out.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// Reads a claimed file: never through a symbolic link, never blocking on a
/// FIFO, never more than `max + 1` bytes.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, Fail> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Fail::Reject(Problem::NotRegularFile("symbolic link")));
        }
        Err(e) => return Err(Fail::Transient(format!("open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| Fail::Transient(format!("stat: {e}")))?;
    if !meta.is_file() {
        return Err(Fail::Reject(Problem::NotRegularFile(type_name(&meta))));
    }
    if meta.size() > max {
        return Err(Fail::Reject(Problem::TooLarge {
            size: meta.size(),
            limit: max,
        }));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Fail::Transient(format!("read: {e}")))?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > max {
        // It grew while we read: a writer that does not rename into place.
        return Err(Fail::Reject(Problem::TooLarge { size, limit: max }));
    }
    Ok(bytes)
}

fn type_name(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else if ft.is_dir() {
        "directory"
    } else {
        "unknown type"
    }
}

/// Moves `from` to `<dir>/.rejected/<free name>` after writing
/// `<free name>.error.txt` with `reason`. Returns the name used.
fn quarantine(
    dir: &Path,
    from: &Path,
    name: &RejectedName,
    reason: &str,
    now: i64,
) -> Result<String, durable::DurableError> {
    let rejected = dir.join(REJECTED_DIR);
    durable::create_dir_all(&rejected)?;
    let group = group_bits(dir);
    set_mode(&rejected, 0o700 | (group & 0o070));
    let target = free_name(&rejected, name.as_str(), now);
    let error_path = rejected.join(format!("{target}.error.txt"));
    let line = reason.replace(['\n', '\r'], " ");
    durable::write_atomic(&error_path, format!("{line}\n").as_bytes())?;
    set_mode(&error_path, 0o600 | (group & 0o040));
    durable::rename(from, &rejected.join(&target))?;
    Ok(target)
}

/// Group permission bits of a folder (0 when unreadable).
fn group_bits(dir: &Path) -> u32 {
    fs::metadata(dir).map_or(0, |m| m.permissions().mode() & 0o070)
}

/// Best effort: the EHR (the folder's group) may read why a file was refused.
fn set_mode(path: &Path, mode: u32) {
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        log::debug!(
            "event=outbox.chmod_failed path={} error={}",
            Q(&path.display().to_string()),
            Q(&e.to_string())
        );
    }
}

/// `name` when neither it nor its `.error.txt` exists in `dir`; else the name
/// with `.<UTC timestamp>[-n]` before its extension. A [`RejectedName`] is
/// short enough for every suffix added here.
fn free_name(dir: &Path, name: &str, now: i64) -> String {
    let taken = |n: &str| {
        dir.join(n).symlink_metadata().is_ok()
            || dir
                .join(format!("{n}.error.txt"))
                .symlink_metadata()
                .is_ok()
    };
    if !taken(name) {
        return name.to_string();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let stamp = time::compact(now);
    for n in 1..1000u32 {
        let candidate = if n == 1 {
            format!("{stem}.{stamp}{ext}")
        } else {
            format!("{stem}.{stamp}-{n}{ext}")
        };
        if !taken(&candidate) {
            return candidate;
        }
    }
    let nonce = random::bytes::<8>().map_or_else(|_| "x".into(), |b| crate::util::b64::hex(&b));
    format!("{stem}.{stamp}-{nonce}{ext}")
}

/// A folder's name for a log line: an unknown folder's name is the EHR's
/// choice, not ours, so it is marked and reduced like every value chosen
/// outside the agent.
fn log_folder(folder: &str, problem: &Problem) -> String {
    match problem {
        Problem::UnknownPartner => crate::ops::logging::P(folder).to_string(),
        _ => Q(folder).to_string(),
    }
}

mod publish;

#[cfg(test)]
mod tests;
