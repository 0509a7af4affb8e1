//! Published records (I/O): a claimed, validated file in the folder of a
//! `zorgviewer` partner becomes a record in the [`RecordStore`], or a
//! `.cancel` withdraws one. Nothing is sent to the Zorgviewer: it reads the
//! record when it asks. The one thing queued is the patient's Mitz
//! subscription, the first time a record of that patient is published.
//!
//! Publishing: data version `v<N>` written → record saved with the file's
//! identity and its resource keys, and indexed (from here on it is served) →
//! for a partner whose consent is `mitz`, the patient's Mitz subscriptions
//! queued ([`super::super::AfterPublish`]) → audit → the version it replaced
//! removed → (the scanner) claimed file removed. A crash before the record is
//! saved leaves the claimed file, which the next pass publishes again (the
//! same `v<N>` is overwritten); after it, the next pass finds the file's
//! identity in the record and only finishes the job, the subscriptions
//! included (queueing them twice is a no-op).
//!
//! Withdrawing: audit → record saved as withdrawn (from here on it is not
//! served) → its data removed → claimed `.cancel` removed. A crash anywhere
//! leaves the `.cancel`, which the next pass carries out again as a repeat.
//! Opening the record store removes data a crash left unpruned.

use super::{Done, Fail, Scanner, Step};
use crate::cases::ExportSource;
use crate::config::{Config, Consent, Of, PartnerKind, Zorgviewer};
use crate::ids::IdScheme;
use crate::records::{Record, RecordError, RecordStatus, ResourceKeys};
use crate::sender::export::{Accepted, CaseId, Data, Kind, Problem};

/// A Zorgviewer partner with its settings: the records path takes this, so
/// it cannot be handed a partner of another kind.
pub(super) type ZorgviewerPartner<'a> = Of<'a, Zorgviewer>;

/// The Zorgviewer partner with this name.
pub(super) fn zorgviewer_partner<'a>(
    config: &'a Config,
    name: &str,
) -> Option<ZorgviewerPartner<'a>> {
    let partner = config.partner(name)?;
    match &partner.kind {
        PartnerKind::Zorgviewer(kind) => Some(Of {
            name: &partner.name,
            partner,
            kind,
        }),
        _ => None,
    }
}

impl Scanner<'_> {
    /// Publishes or withdraws the record a validated file names. `None`
    /// only when the test hook stopped it.
    pub(super) fn publish(
        &self,
        partner: ZorgviewerPartner<'_>,
        accepted: Accepted,
        source: ExportSource,
        now: i64,
        stop: Option<Step>,
    ) -> Option<Result<Done, Fail>> {
        let (record_id, kind) = accepted.into_parts();
        match kind {
            Kind::Data(data) => self.publish_data(partner, &record_id, &data, source, now, stop),
            Kind::Cancel => self.withdraw(partner, &record_id, now, stop),
        }
    }

    fn publish_data(
        &self,
        partner: ZorgviewerPartner<'_>,
        record_id: &CaseId,
        data: &Data,
        source: ExportSource,
        now: i64,
        stop: Option<Step>,
    ) -> Option<Result<Done, Fail>> {
        let existing = self.records.get(partner.name, record_id.as_str());
        if let Some(record) = existing
            .as_ref()
            .filter(|r| r.source.as_ref() == Some(&source))
        {
            return Some(self.already_published(partner, record, now));
        }
        let record = Record {
            partner: partner.name.to_string(),
            record_id: record_id.to_string(),
            patient: data.patient().clone(),
            patient_id: data.patient_id().to_string(),
            version: existing.as_ref().map_or(1, |r| r.version.saturating_add(1)),
            status: RecordStatus::Published,
            published_at: now,
            created_at: existing.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
            source: Some(source),
            resources: ResourceKeys::of_bundle(data.bundle()),
        };
        if let Err(conflict) = self.records.check(&record) {
            return Some(Err(Fail::Reject(Problem::Record(conflict))));
        }
        let json = crate::fhir::to_json_string(data.bundle()).into_bytes();
        if let Err(e) =
            self.records
                .write_data(partner.name, record_id.as_str(), record.version, &json)
        {
            return Some(Err(transient("store data", &e)));
        }
        if stop == Some(Step::DataWritten) {
            return None;
        }
        match self.records.save(&record) {
            Ok(()) => {}
            Err(RecordError::Conflict(conflict)) => {
                return Some(Err(Fail::Reject(Problem::Record(conflict))));
            }
            Err(e) => return Some(Err(transient("save record", &e))),
        }
        if stop == Some(Step::RecordSaved) {
            return None;
        }
        let subscriptions = match self.subscribe(partner, &record, now) {
            Ok(n) => n,
            Err(fail) => return Some(Err(fail)),
        };
        if let Err(fail) = self.published(&record.patient, now) {
            return Some(Err(fail));
        }
        log::info!(
            "event=record.published partner={} record={record_id} version={} resources={}",
            partner.name,
            record.version,
            data.resources().len()
        );
        self.audit_record(partner, "record.published", &record, "");
        if let Err(e) = self.records.prune(&record) {
            return Some(Err(transient("remove the replaced version", &e)));
        }
        Some(Ok(Done::Published { subscriptions }))
    }

    /// The patient of a record saved for a partner whose consent is `mitz`
    /// is subscribed at Mitz ([`super::super::AfterPublish`], idempotent);
    /// returns how many subscriptions were queued. A failure leaves the
    /// file, and the next pass (finding the record saved) asks again.
    fn subscribe(
        &self,
        partner: ZorgviewerPartner<'_>,
        record: &Record,
        now: i64,
    ) -> Result<usize, Fail> {
        match self.after_publish {
            Some(hook) if partner.consent == Consent::Mitz => hook
                .published(&record.patient, now)
                .map_err(Fail::Transient),
            _ => Ok(0),
        }
    }

    /// A file whose publication a crash interrupted after the record was
    /// saved: audit it again (rather than risk never) and finish the job.
    fn already_published(
        &self,
        partner: ZorgviewerPartner<'_>,
        record: &Record,
        now: i64,
    ) -> Result<Done, Fail> {
        log::info!(
            "event=outbox.already_accepted partner={} record={} version={}",
            partner.name,
            record.record_id,
            record.version
        );
        let subscriptions = self.subscribe(partner, record, now)?;
        self.published(&record.patient, now)?;
        let note = " (completed after a restart)";
        self.audit_record(partner, "record.published", record, note);
        self.records
            .prune(record)
            .map_err(|e| transient("remove the replaced version", &e))?;
        Ok(Done::AlreadyPublished { subscriptions })
    }

    /// Withdraws a record: saved as withdrawn (from then on no lookup finds
    /// it), then its data removed. Safe to repeat after a crash.
    fn withdraw(
        &self,
        partner: ZorgviewerPartner<'_>,
        record_id: &CaseId,
        now: i64,
        stop: Option<Step>,
    ) -> Option<Result<Done, Fail>> {
        let Some(mut record) = self.records.get(partner.name, record_id.as_str()) else {
            return Some(Err(Fail::Reject(Problem::UnknownRecord)));
        };
        let first_time = record.is_live();
        if first_time {
            // Audited before it happens: a crash in between records it twice
            // rather than never.
            self.audit_record(partner, "record.withdrawn", &record, "");
            record.status = RecordStatus::Withdrawn;
            record.updated_at = now;
            record.resources = ResourceKeys::default();
            if let Err(e) = self.records.save(&record) {
                return Some(Err(transient("save record", &e)));
            }
        }
        if stop == Some(Step::RecordWithdrawn) {
            return None;
        }
        if let Err(e) = self.records.prune(&record) {
            return Some(Err(transient("remove the withdrawn data", &e)));
        }
        if let Err(fail) = self.withdrawn(&record.patient, now) {
            return Some(Err(fail));
        }
        log::info!(
            "event=record.withdrawn partner={} record={record_id} version={} repeat={}",
            partner.name,
            record.version,
            !first_time
        );
        Some(Ok(Done::Withdrawn))
    }

    fn audit_record(
        &self,
        partner: ZorgviewerPartner<'_>,
        action: &str,
        record: &Record,
        note: &str,
    ) {
        let object = format!(
            "record {} version {} Patient/{}{note}",
            record.record_id, record.version, record.patient_id
        );
        let org = self.config.our_org(IdScheme::Ura);
        self.audit_as(partner.name, org.as_ref(), action, &record.patient, &object);
    }
}

fn transient(what: &str, e: &dyn std::fmt::Display) -> Fail {
    Fail::Transient(format!("{what}: {e}"))
}
