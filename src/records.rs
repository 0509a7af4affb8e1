//! Records published to Zorgviewer partners: one per `(partner, record-id)`
//! with its current data version, and an index by patient and by resource
//! that the serving side asks without touching the disk.
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
//!
//! A record keeps the `Type/id` of every resource of its current version
//! ([`ResourceKeys`]), so that [`RecordStore::patients_holding`] answers a
//! read by type and id without a patient, and the open indexes it without
//! loading any Bundle. A live record written before it kept them has them
//! computed from its data version at open, once: the record is rewritten
//! with them (durably, as every save), so later opens read them. Their size
//! follows the Bundle's: a key is the type and id of one entry, which is
//! no longer than the entry itself, so a record's keys take less room than
//! its data version (at most `NP_MAX_BODY`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// `Type/id` of every resource of the current version; none once
    /// withdrawn (the data is gone). Empty in a live record only when it
    /// was written before they were kept, as a published Bundle always
    /// holds its Patient: [`RecordStore::open`] then fills them in.
    #[serde(default)]
    pub resources: ResourceKeys,
}

impl Record {
    /// True while the record is served.
    pub fn is_live(&self) -> bool {
        self.status == RecordStatus::Published
    }
}

/// The `Type/id` of every entry of a Bundle whose resource has both a
/// `resourceType` and an `id`, in entry order, each once. Shared, not
/// copied, when a record is cloned; its `Debug` shows only how many.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResourceKeys(Arc<[String]>);

impl ResourceKeys {
    /// The keys of a Bundle (JSON). A type or id holding a `/` is left out:
    /// its key would not split back into the two.
    pub fn of_bundle(bundle: &serde_json::Value) -> ResourceKeys {
        let entries = bundle
            .get("entry")
            .and_then(serde_json::Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let mut seen = HashSet::new();
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let resource = entry.get("resource");
            let field = |name| {
                resource
                    .and_then(|r| r.get(name))
                    .and_then(serde_json::Value::as_str)
                    .filter(|s: &&str| !s.is_empty() && !s.contains('/'))
            };
            if let (Some(resource_type), Some(id)) = (field("resourceType"), field("id")) {
                let key = format!("{resource_type}/{id}");
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
        }
        ResourceKeys(keys.into())
    }

    /// The keys, `Type/id`, in entry order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ResourceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceKeys({} resources)", self.0.len())
    }
}

impl Serialize for ResourceKeys {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for ResourceKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(|keys| ResourceKeys(keys.into()))
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
    /// A live record without its resource keys gets them from its data
    /// version and is saved with them.
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
            if let Some(mut r) = record {
                if r.is_live() && r.resources.is_empty() {
                    store.fill_in_resources(&mut r)?;
                }
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

    /// The patients whose live records at `partner` hold the resource
    /// `resource_type/id` in their current version: `(BSN, Patient.id of
    /// that record)`, each pair once, that of the most recently published
    /// record first. Empty when no live record holds it.
    pub fn patients_holding(
        &self,
        partner: &str,
        resource_type: &str,
        id: &str,
    ) -> Vec<(Bsn, String)> {
        if resource_type.contains('/') || id.contains('/') {
            return Vec::new();
        }
        let key = format!("{resource_type}/{id}");
        let index = self.read_index();
        let records = index.live(&index.by_resource, partner, &key);
        let mut seen = HashSet::new();
        records
            .into_iter()
            .filter(|r| seen.insert((r.patient.as_str(), r.patient_id.as_str())))
            .map(|r| (r.patient.clone(), r.patient_id.clone()))
            .collect()
    }

    /// Computes the resource keys of a live record written before records
    /// kept them, from its data version, and saves the record with them.
    /// Data that is not there leaves the record without keys (its lookups
    /// by patient report the missing version).
    fn fill_in_resources(&self, record: &mut Record) -> Result<(), RecordError> {
        let (partner, id) = (&record.partner, &record.record_id);
        let bundle = match self.folders.data(partner, id, record.version) {
            Ok(bundle) => bundle,
            Err(CaseError::Missing { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        record.resources = ResourceKeys::of_bundle(&bundle);
        if !record.resources.is_empty() {
            self.folders.save(partner, id, RECORD_FILE, &*record)?;
        }
        Ok(())
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

/// Every record, and the live ones by patient, by `Patient.id` and by resource.
#[derive(Default)]
struct Index {
    records: HashMap<Key, Record>,
    /// `(partner, BSN)` → record ids.
    by_patient: Lookup,
    /// `(partner, Patient.id)` → record ids.
    by_patient_id: Lookup,
    /// `(partner, Type/id)` → record ids.
    by_resource: Lookup,
}

/// `(partner, value)` → the ids of the live records with that value.
type Lookup = HashMap<Key, BTreeSet<String>>;

impl Index {
    /// Adds or replaces a record, moving it in or out of the lookups: the
    /// keys of a replaced live version leave them, those of a live one
    /// enter them.
    fn insert(&mut self, record: Record) {
        let key = (record.partner.clone(), record.record_id.clone());
        if let Some(old) = self.records.remove(&key) {
            if old.is_live() {
                self.update(&old, unlink);
            }
        }
        if record.is_live() {
            self.update(&record, link);
        }
        self.records.insert(key, record);
    }

    /// Applies `change` to every lookup entry of a record.
    fn update(&mut self, record: &Record, change: fn(&mut Lookup, Key, &str)) {
        let key = |value: &str| (record.partner.clone(), value.to_string());
        let id = record.record_id.as_str();
        change(&mut self.by_patient, key(record.patient.as_str()), id);
        change(&mut self.by_patient_id, key(&record.patient_id), id);
        for resource in record.resources.iter() {
            change(&mut self.by_resource, key(resource), id);
        }
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
        self.live(&self.by_patient, partner, bsn)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The live records at `(partner, value)` of a lookup, most recently
    /// published first.
    fn live(&self, lookup: &Lookup, partner: &str, value: &str) -> Vec<&Record> {
        let mut out: Vec<&Record> = lookup
            .get(&(partner.to_string(), value.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(&(partner.to_string(), id.clone())))
            .collect();
        out.sort_by(|a, b| {
            b.published_at
                .cmp(&a.published_at)
                .then_with(|| a.record_id.cmp(&b.record_id))
        });
        out
    }
}

/// Adds `record_id` to the set at `key`.
fn link(lookup: &mut Lookup, key: Key, record_id: &str) {
    lookup.entry(key).or_default().insert(record_id.to_string());
}

/// Removes `record_id` from the set at `key`, and the set once empty.
fn unlink(lookup: &mut Lookup, key: Key, record_id: &str) {
    if let Entry::Occupied(mut set) = lookup.entry(key) {
        set.get_mut().remove(record_id);
        if set.get().is_empty() {
            set.remove();
        }
    }
}

#[cfg(test)]
mod tests;
