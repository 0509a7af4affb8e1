//! Records published to Zorgviewer partners: one per `(partner, record-id)`
//! with its current data version, and an index by patient that the serving
//! side asks without touching the disk.
//!
//! ```text
//! <state>/records/<partner>/<record-id>/record.json   the record ([`Record`])
//!                                      /v<N>.json      its current data (a FHIR Bundle, JSON)
//! ```
//!
//! The folders are an [`ExportFolders`], as the case store's are. The
//! caller writes a new version before saving the record that points at it,
//! and [`RecordStore::prune`]s the version it replaced afterwards; a
//! withdrawal saves the record as withdrawn, then prunes its data. Opening
//! the store finishes what a crash interrupted: every data version no live
//! record points at is removed. The index is rebuilt from the records at
//! open and changed only after a record is durably saved, in one step under
//! one lock: a lookup never sees a record that is not on disk, and a
//! withdrawn record leaves every lookup at once.
//!
//! [`RecordStore::save`] refuses a record that would make a lookup
//! ambiguous ([`Conflict`]): a record id keeps its patient, and within one
//! partner a `Patient.id` of a live record belongs to one BSN.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::cases::{CaseError, ExportFolders, ExportSource};
use crate::ids::Bsn;

/// Whether a record is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    Published,
    Withdrawn,
}

/// A record as stored. Its `Debug` hides the BSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub partner: String,
    pub record_id: String,
    /// The patient (besides the data and the audit trail, the one place the BSN is kept).
    pub patient: Bsn,
    /// `Patient.id` in the current version.
    pub patient_id: String,
    /// Current data version: 1 for the first publication, one more for each
    /// later one (a withdrawal keeps the number).
    pub version: u32,
    pub status: RecordStatus,
    /// When the current version was published (Unix seconds).
    pub published_at: i64,
    /// When the record was first published.
    pub created_at: i64,
    /// When it last changed: published or withdrawn.
    pub updated_at: i64,
    /// The outbox file the current version was accepted from: a file a crash
    /// left behind after it was stored is recognised and not published twice.
    pub source: Option<ExportSource>,
}

impl Record {
    /// True while the record is served.
    pub fn is_live(&self) -> bool {
        self.status == RecordStatus::Published
    }
}

/// A live record as the serving side gets it.
#[derive(Clone)]
pub struct PublishedRecord {
    pub record_id: String,
    pub version: u32,
    pub patient: Bsn,
    /// `Patient.id` in this version.
    pub patient_id: String,
    /// When this version was published (Unix seconds).
    pub published_at: i64,
    /// The stored Bundle, parsed (shared with the store's cache).
    pub bundle: Arc<serde_json::Value>,
}

impl std::fmt::Debug for PublishedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedRecord")
            .field("record_id", &self.record_id)
            .field("version", &self.version)
            .field("published_at", &self.published_at)
            .finish_non_exhaustive()
    }
}

/// A patient with live records at a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPatient {
    pub bsn: Bsn,
    /// `Patient.id` of the patient's live records, each once, that of the
    /// most recently published record first.
    pub resource_ids: Vec<String>,
}

/// Why [`RecordStore::save`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The record id was published for another patient.
    OtherPatient,
    /// Another patient's live record at this partner has this `Patient.id`.
    PatientIdTaken,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::OtherPatient => {
                "record belongs to another patient: a new version must keep the patient"
            }
            Conflict::PatientIdTaken => {
                "the Patient id is another patient's in a published record of this partner"
            }
        })
    }
}

/// A failure of the record store.
#[derive(Debug)]
pub enum RecordError {
    /// Reading or writing the record folders failed, or a live record's
    /// data version is not on disk ([`CaseError::Missing`]).
    Store(CaseError),
    Conflict(Conflict),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Store(e) => write!(f, "record store: {}", e.detail("record")),
            RecordError::Conflict(c) => write!(f, "record store: {c}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<CaseError> for RecordError {
    fn from(e: CaseError) -> Self {
        RecordError::Store(e)
    }
}

/// File name of a record in its folder.
const RECORD_FILE: &str = "record.json";

type Key = (String, String);

/// The record store.
pub struct RecordStore {
    folders: ExportFolders,
    index: RwLock<Index>,
    /// Held by [`RecordStore::save`] from the conflict check to the index
    /// update; lookups only take the index lock, briefly.
    writer: Mutex<()>,
}

impl RecordStore {
    /// Opens `<state_dir>/records`: loads every record, indexes the live
    /// ones, and removes the data versions no live record points at (a
    /// crash between two steps of a publication or withdrawal leaves those).
    pub fn open(state_dir: &Path) -> Result<RecordStore, RecordError> {
        let store = RecordStore {
            folders: ExportFolders::open(state_dir.join("records"))?,
            index: RwLock::new(Index::default()),
            writer: Mutex::new(()),
        };
        let mut index = Index::default();
        for (partner, record_id) in store.folders.list()? {
            let record: Option<Record> = store.folders.read(&partner, &record_id, RECORD_FILE)?;
            let keep = match &record {
                Some(r) if r.partner != partner || r.record_id != record_id => {
                    return Err(store.corrupt(&partner, &record_id, "names another record"));
                }
                Some(r) if r.is_live() => Some(r.version),
                _ => None,
            };
            for version in store.folders.versions(&partner, &record_id)? {
                if Some(version) != keep {
                    store.folders.remove_data(&partner, &record_id, version)?;
                }
            }
            if let Some(r) = record {
                index.insert(r);
            }
        }
        *store.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(store)
    }

    /// The record (live or withdrawn).
    pub fn get(&self, partner: &str, record_id: &str) -> Option<Record> {
        self.read_index()
            .records
            .get(&(partner.to_string(), record_id.to_string()))
            .cloned()
    }

    /// What [`RecordStore::save`] would refuse this record for, if anything.
    pub fn check(&self, record: &Record) -> Result<(), Conflict> {
        self.read_index().conflict(record)
    }

    /// Stores data version `version` of a record (a FHIR Bundle as JSON)
    /// durably, before the record that points at it is saved.
    pub fn write_data(
        &self,
        partner: &str,
        record_id: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), RecordError> {
        Ok(self.folders.write_data(partner, record_id, version, json)?)
    }

    /// Path of data version `version` of a record.
    pub fn data_path(&self, partner: &str, record_id: &str, version: u32) -> PathBuf {
        self.folders.data_path(partner, record_id, version)
    }

    /// Writes a record durably, then indexes it. A published record's data
    /// version must be written first. Refused, with nothing written, when
    /// it would make a lookup ambiguous.
    pub fn save(&self, record: &Record) -> Result<(), RecordError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.check(record).map_err(RecordError::Conflict)?;
        self.folders
            .save(&record.partner, &record.record_id, RECORD_FILE, record)?;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.clone());
        Ok(())
    }

    /// Removes the data versions the record does not point at: the ones a
    /// newer version replaced, or all of them once it is withdrawn. Call it
    /// after [`RecordStore::save`]; what a crash keeps it from removing,
    /// the next [`RecordStore::open`] removes.
    pub fn prune(&self, record: &Record) -> Result<(), RecordError> {
        let (partner, id) = (&record.partner, &record.record_id);
        for version in self.folders.versions(partner, id)? {
            if !(record.is_live() && version == record.version) {
                self.folders.remove_data(partner, id, version)?;
            }
        }
        Ok(())
    }

    /// The live records of a patient at a partner, the most recently
    /// published first, each with its Bundle.
    pub fn records_of_patient(
        &self,
        partner: &str,
        bsn: &Bsn,
    ) -> Result<Vec<PublishedRecord>, RecordError> {
        let records = self.read_index().of_patient(partner, bsn.as_str());
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            if let Some(r) = self.published(record, bsn)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The BSN of the patient whose live records at `partner` have this
    /// `Patient.id`.
    pub fn patient_by_id(&self, partner: &str, patient_id: &str) -> Option<Bsn> {
        let index = self.read_index();
        let ids = index
            .by_patient_id
            .get(&(partner.to_string(), patient_id.to_string()))?;
        let first = ids.iter().next()?;
        let record = index.records.get(&(partner.to_string(), first.clone()))?;
        Some(record.patient.clone())
    }

    /// The patient with this BSN, when it has live records at `partner`.
    pub fn patient_by_bsn(&self, partner: &str, bsn: &Bsn) -> Option<PublishedPatient> {
        let records = self.read_index().of_patient(partner, bsn.as_str());
        let mut resource_ids: Vec<String> = Vec::new();
        for r in records {
            if !resource_ids.contains(&r.patient_id) {
                resource_ids.push(r.patient_id);
            }
        }
        (!resource_ids.is_empty()).then(|| PublishedPatient {
            bsn: bsn.clone(),
            resource_ids,
        })
    }

    /// A record of the index with its Bundle. A newer version or a
    /// withdrawal may prune the data between the lookup and the read: then
    /// the record is looked up again, and left out once withdrawn.
    fn published(
        &self,
        mut record: Record,
        bsn: &Bsn,
    ) -> Result<Option<PublishedRecord>, RecordError> {
        // Each round follows a change made meanwhile; a few are plenty.
        for _ in 0..4 {
            let (partner, id) = (&record.partner, &record.record_id);
            match self.folders.data(partner, id, record.version) {
                Ok(bundle) => {
                    return Ok(Some(PublishedRecord {
                        record_id: record.record_id,
                        version: record.version,
                        patient: bsn.clone(),
                        patient_id: record.patient_id,
                        published_at: record.published_at,
                        bundle,
                    }));
                }
                Err(CaseError::Missing { .. }) => match self.get(partner, id) {
                    Some(now) if now.is_live() && now.patient == *bsn => {
                        if now.version == record.version {
                            return Err(missing(now).into());
                        }
                        record = now;
                    }
                    _ => return Ok(None),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(missing(record).into())
    }

    fn corrupt(&self, partner: &str, record_id: &str, reason: &str) -> RecordError {
        RecordError::Store(CaseError::Corrupt {
            path: self.folders.path(partner, record_id, RECORD_FILE),
            reason: reason.into(),
        })
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn missing(record: Record) -> CaseError {
    CaseError::Missing {
        partner: record.partner,
        case_id: record.record_id,
        version: record.version,
    }
}

/// Every record, and the live ones by patient and by `Patient.id`.
#[derive(Default)]
struct Index {
    records: HashMap<Key, Record>,
    /// `(partner, BSN)` → record ids.
    by_patient: HashMap<Key, BTreeSet<String>>,
    /// `(partner, Patient.id)` → record ids.
    by_patient_id: HashMap<Key, BTreeSet<String>>,
}

impl Index {
    /// Adds or replaces a record, moving it in or out of the lookups.
    fn insert(&mut self, record: Record) {
        let key = (record.partner.clone(), record.record_id.clone());
        if let Some(old) = self.records.remove(&key) {
            if old.is_live() {
                unlink(
                    &mut self.by_patient,
                    &old.partner,
                    old.patient.as_str(),
                    &old.record_id,
                );
                unlink(
                    &mut self.by_patient_id,
                    &old.partner,
                    &old.patient_id,
                    &old.record_id,
                );
            }
        }
        if record.is_live() {
            for (map, value) in [
                (&mut self.by_patient, record.patient.as_str()),
                (&mut self.by_patient_id, record.patient_id.as_str()),
            ] {
                map.entry((record.partner.clone(), value.to_string()))
                    .or_default()
                    .insert(record.record_id.clone());
            }
        }
        self.records.insert(key, record);
    }

    /// What storing `record` would make ambiguous.
    fn conflict(&self, record: &Record) -> Result<(), Conflict> {
        let partner = &record.partner;
        if let Some(old) = self
            .records
            .get(&(partner.clone(), record.record_id.clone()))
        {
            if old.patient != record.patient {
                return Err(Conflict::OtherPatient);
            }
        }
        if !record.is_live() {
            return Ok(());
        }
        let others = self
            .by_patient_id
            .get(&(partner.clone(), record.patient_id.clone()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(&(partner.clone(), id.clone())));
        for other in others {
            if other.patient != record.patient {
                return Err(Conflict::PatientIdTaken);
            }
        }
        Ok(())
    }

    /// The live records of `(partner, bsn)`, most recently published first.
    fn of_patient(&self, partner: &str, bsn: &str) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .by_patient
            .get(&(partner.to_string(), bsn.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(&(partner.to_string(), id.clone())))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.published_at
                .cmp(&a.published_at)
                .then_with(|| a.record_id.cmp(&b.record_id))
        });
        out
    }
}

/// Removes `record_id` from the set at `(partner, value)`, and the set once empty.
fn unlink(map: &mut HashMap<Key, BTreeSet<String>>, partner: &str, value: &str, record_id: &str) {
    let key = (partner.to_string(), value.to_string());
    if let Some(set) = map.get_mut(&key) {
        set.remove(record_id);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
