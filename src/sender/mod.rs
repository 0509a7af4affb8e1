//! The sender role of Twiin TA Notified Pull: what the EHR exports into
//! `NP_OUTBOX/<partner>/` becomes a case, a notification Task to the partner,
//! and later, on `<case-id>.cancel`, a cancellation. In the folder of a
//! `zorgviewer` partner the same files publish and withdraw records
//! (`crate::records`), without any notification.
//!
//! | module | job | I/O |
//! |---|---|---|
//! | [`export`] | one outbox file → accepted export or rejection with a reason | none |
//! | [`task`] | the notification and cancellation Task | none |
//! | [`outbox`] | scan the outbox; store, queue, cancel, publish, withdraw, quarantine | files |
//! | [`deliver`] | the spool worker for `notify` and `cancel` items | HTTP |
//!
//! The daemon calls [`Sender::scan`] every `NP_POLL_INTERVAL` from one
//! thread and [`Sender::deliver`] from its spool workers for the kinds in
//! [`Sender::KINDS`], applying the returned [`spool::Outcome`] with
//! [`spool::settle`].

pub mod deliver;
pub mod export;
pub mod outbox;
pub mod task;

use std::sync::{Arc, Mutex};

use crate::audit::AuditLog;
use crate::cases::CaseStore;
use crate::config::Config;
use crate::http::partners::PartnerHttp;
use crate::oauth::TokenStore;
use crate::oauth::client::TokenClient;
use crate::records::RecordStore;
use crate::spool::{self, Spool};

pub use outbox::ScanReport;

/// What publishing a record of a patient sets off besides the record
/// itself: the patient's Mitz subscriptions (`mitz::subscribe`, which
/// lib.rs lists below the sender, so the sender knows it only as this).
pub trait AfterPublish: Send + Sync {
    /// A record of `patient` was saved for a Zorgviewer partner whose
    /// consent is `mitz`. Called again for every later record of the
    /// patient and again after a crash, so it must be idempotent. Returns
    /// how many spool items it queued; an `Err` leaves the file for the
    /// next pass, which calls it again.
    fn published(&self, patient: &crate::ids::Bsn, now: i64) -> Result<usize, String>;
}

/// What publishing and withdrawing data of a patient set off outside the
/// sender, for Twiin exports and Zorgviewer records alike: the patient's
/// referral in the national referral index (`nvi`, which lib.rs lists below
/// the sender, so the sender knows it only as this).
pub trait Publication: Send + Sync {
    /// Data of `patient` was published: a Twiin export stored and queued,
    /// or a Zorgviewer record saved. Called again for every later export
    /// and record of the patient and again after a crash, so it must be
    /// idempotent. An `Err` leaves the file for the next pass, which calls
    /// it again.
    fn published(&self, patient: &crate::ids::Bsn, now: i64) -> Result<(), String>;
    /// Published data of `patient` was withdrawn: a case cancelled or a
    /// record withdrawn, after the withdrawal is saved. The hook decides
    /// whether anything of the patient is still published. Called again
    /// when a crash repeats the withdrawal; an `Err` leaves the file.
    fn withdrawn(&self, patient: &crate::ids::Bsn, now: i64) -> Result<(), String>;
}

/// The sender: outbox scanning and delivery of notifications and cancellations.
pub struct Sender {
    config: Arc<Config>,
    cases: Arc<CaseStore>,
    records: Arc<RecordStore>,
    spool: Arc<Spool>,
    tokens: Arc<TokenStore>,
    audit: Arc<AuditLog>,
    rules: export::Rules,
    /// Deferred files and one-time warnings; the lock also keeps passes
    /// from overlapping (the case store has one writer: the scan).
    state: Mutex<outbox::ScanState>,
    after_publish: Option<Arc<dyn AfterPublish>>,
    publication: Option<Arc<dyn Publication>>,
}

impl Sender {
    /// Spool kinds [`Sender::deliver`] handles.
    pub const KINDS: [&'static str; 2] = [outbox::KIND_NOTIFY, outbox::KIND_CANCEL];

    /// A sender over the daemon's stores. After a configuration reload,
    /// build a new one (only the memory of deferred files is lost).
    pub fn new(
        config: Arc<Config>,
        cases: Arc<CaseStore>,
        records: Arc<RecordStore>,
        spool: Arc<Spool>,
        tokens: Arc<TokenStore>,
        audit: Arc<AuditLog>,
    ) -> Sender {
        let rules = export::Rules::from_config(&config);
        Sender {
            config,
            cases,
            records,
            spool,
            tokens,
            audit,
            rules,
            state: Mutex::new(outbox::ScanState::default()),
            after_publish: None,
            publication: None,
        }
    }

    /// The same sender, calling `hook` after each record it publishes to a
    /// Zorgviewer partner whose consent is `mitz`.
    pub fn with_after_publish(mut self, hook: Arc<dyn AfterPublish>) -> Sender {
        self.after_publish = Some(hook);
        self
    }

    /// The same sender, calling `hook` after each export or record it
    /// publishes and each case or record it withdraws.
    pub fn with_publication(mut self, hook: Arc<dyn Publication>) -> Sender {
        self.publication = Some(hook);
        self
    }

    /// One outbox pass; returns counts (accepted, updated, cancelled,
    /// published, withdrawn, rejected, deferred, and what it finished after
    /// a crash). Per-file
    /// failures are logged and counted, never returned. The first pass of a
    /// new sender also queues any Task a crash left saved but unqueued.
    pub fn scan(&self, now: i64) -> ScanReport {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.scanner().scan(&mut state, now)
    }

    /// Spool worker for kinds `notify` and `cancel`.
    pub fn deliver(
        &self,
        item: &spool::Item,
        client: &TokenClient,
        http: &dyn PartnerHttp,
        now: i64,
    ) -> spool::Outcome {
        deliver::Delivery {
            config: &self.config,
            cases: &self.cases,
            spool: &self.spool,
            audit: &self.audit,
        }
        .deliver(item, client, http, now)
    }

    fn scanner(&self) -> outbox::Scanner<'_> {
        outbox::Scanner {
            config: &self.config,
            rules: &self.rules,
            cases: &self.cases,
            records: &self.records,
            spool: &self.spool,
            tokens: &self.tokens,
            audit: &self.audit,
            after_publish: self.after_publish.as_deref(),
            publication: self.publication.as_deref(),
        }
    }
}
