//! Cases we export (sender role): one per `(partner, case-id)`, with every
//! version of the exported data, the authorization base bound to it, and the
//! notification Tasks sent for it.
//!
//! ```text
//! <state>/cases/<partner>/<case-id>/case.json   the record ([`Case`])
//!                                  /v<N>.json    version N of the data (a FHIR Bundle, JSON)
//! ```
//! The folders, records and data versions are kept by [`ExportFolders`]
//! (the record store of published records keeps its own in another), whose
//! writes all go through the durable-write function. The store keeps every
//! record in memory (indexed by case and by authorization base) and answers
//! the token endpoint's question "is this base ours, for whom, still live?"
//! through [`crate::oauth::decide::BaseRegistry`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::Bsn;
use crate::ids::OrgId;
use crate::oauth::decide::{BaseBinding, BaseLookup, BaseRegistry};
use crate::util::{b64, durable, random};

/// Whether a case may still be pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Live,
    Cancelled,
}

/// One notification Task we created for a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTask {
    /// Bare UUID of `Task.identifier` (`urn:uuid:<this>`).
    pub task_id: String,
    /// The data version it announced.
    pub version: u32,
    /// The spool item that delivers it.
    pub item_id: String,
    /// `requested`, or `cancelled` once a cancellation was created for it.
    pub status: String,
    /// The outbox file this version was accepted from. A crash after the
    /// acceptance but before the file was removed leaves the file behind;
    /// finding its source here, the next pass only removes it. (Absent in
    /// records written before this field existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ExportSource>,
    /// `Task.authoredOn` (Unix seconds; 0 in older records).
    #[serde(default)]
    pub authored_on: i64,
    /// `Task.restriction.period.end` (Unix seconds; 0 in older records).
    #[serde(default)]
    pub period_end: i64,
}

/// Which outbox file an export was accepted from: the very file, not merely
/// the same content. An EHR that exports identical data again (to renew an
/// expired notification, say) writes a new file and gets a new Task; the
/// file a crash left behind is the same inode with the same modification
/// time, size and bytes, and is not accepted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSource {
    /// The file name as the EHR wrote it (display-safe).
    pub name: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    pub size: u64,
    pub inode: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
}

/// A case record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub partner: String,
    pub case_id: String,
    /// Bare UUID of `Task.groupIdentifier`, fixed for the life of the case.
    pub group_id: String,
    /// The patient's BSN (the one place besides the audit trail and the data it is kept).
    pub patient: String,
    /// Opaque, unguessable; played back by the partner in its token request.
    pub authorization_base: String,
    /// The organisation we notified (`ura:…`/`agb:…`); `None` when addressed as a system.
    pub owner: Option<String>,
    /// `restriction.period.end` of the latest notification.
    pub expires_at: i64,
    pub status: CaseStatus,
    /// Current data version (1 for the first export).
    pub version: u32,
    pub tasks: Vec<SentTask>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("partner", &self.partner)
            .field("case_id", &self.case_id)
            .field("group_id", &self.group_id)
            .field("status", &self.status)
            .field("version", &self.version)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Case {
    /// A new live case with a fresh group id and authorization base.
    pub fn new(
        partner: &str,
        case_id: &str,
        patient: &Bsn,
        owner: Option<&OrgId>,
        now: i64,
        expires_at: i64,
    ) -> Result<Case, random::RandomUnavailable> {
        Ok(Case {
            partner: partner.into(),
            case_id: case_id.into(),
            group_id: random::uuid_v4()?,
            patient: patient.as_str().into(),
            authorization_base: b64::encode(&random::bytes::<32>()?),
            owner: owner.map(|o| o.to_string()),
            expires_at,
            status: CaseStatus::Live,
            version: 0,
            tasks: Vec::new(),
            created_at: now,
            updated_at: now,
        })
    }

    /// True while the partner may pull.
    pub fn is_live(&self, now: i64) -> bool {
        self.status == CaseStatus::Live && now < self.expires_at
    }
}

/// A failure of the case store.
#[derive(Debug)]
pub enum CaseError {
    Io(durable::DurableError),
    Corrupt {
        path: PathBuf,
        reason: String,
    },
    Missing {
        partner: String,
        case_id: String,
        version: u32,
    },
}

impl CaseError {
    /// The message without the store's name; `item` names what the store
    /// keeps (`case`, `record`), for a store that shares [`ExportFolders`].
    pub fn detail(&self, item: &str) -> String {
        match self {
            CaseError::Io(e) => e.to_string(),
            CaseError::Corrupt { path, reason } => format!("{}: {reason}", path.display()),
            CaseError::Missing {
                partner,
                case_id,
                version,
            } => format!("partner {partner} {item} {case_id} has no version {version}"),
        }
    }
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "case store: {}", self.detail("case"))
    }
}

impl std::error::Error for CaseError {}

impl From<durable::DurableError> for CaseError {
    fn from(e: durable::DurableError) -> Self {
        CaseError::Io(e)
    }
}

type Key = (String, String);

/// The case store.
pub struct CaseStore {
    folders: ExportFolders,
    cases: RwLock<HashMap<Key, Case>>,
    by_base: RwLock<HashMap<String, Key>>,
}

/// File name of a case record in its folder.
const CASE_FILE: &str = "case.json";

impl CaseStore {
    /// Opens `<state_dir>/cases`, loading every case record.
    pub fn open(state_dir: &Path) -> Result<CaseStore, CaseError> {
        let store = CaseStore {
            folders: ExportFolders::open(state_dir.join("cases"))?,
            cases: RwLock::new(HashMap::new()),
            by_base: RwLock::new(HashMap::new()),
        };
        for (partner, case_id) in store.folders.list()? {
            if let Some(case) = store.folders.read::<Case>(&partner, &case_id, CASE_FILE)? {
                store.index(case);
            }
        }
        Ok(store)
    }

    fn index(&self, case: Case) {
        let key = (case.partner.clone(), case.case_id.clone());
        self.by_base
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(case.authorization_base.clone(), key.clone());
        self.cases
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, case);
    }

    /// The record of a case.
    pub fn get(&self, partner: &str, case_id: &str) -> Option<Case> {
        self.cases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(partner.to_string(), case_id.to_string()))
            .cloned()
    }

    /// The case an authorization base belongs to (any partner).
    pub fn by_base(&self, base: &str) -> Option<Case> {
        let key = self
            .by_base
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(base)
            .cloned()?;
        self.get(&key.0, &key.1)
    }

    /// True when a case of the patient with this BSN is live (not
    /// cancelled; its notification may have expired).
    pub fn has_live_case_of(&self, patient: &str) -> bool {
        self.cases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c.status == CaseStatus::Live && c.patient == patient)
    }

    /// Every case record.
    pub fn all(&self) -> Vec<Case> {
        self.cases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Writes a case record durably and indexes it.
    pub fn save(&self, case: &Case) -> Result<(), CaseError> {
        self.folders
            .save(&case.partner, &case.case_id, CASE_FILE, case)?;
        self.index(case.clone());
        Ok(())
    }

    /// Writes a case record into `batch` (layer `layer`), unflushed: it is
    /// saved once the batch installs that layer, and only then indexed
    /// with [`CaseStore::saved`].
    pub fn stage(
        &self,
        batch: &mut durable::Batch,
        layer: usize,
        case: &Case,
    ) -> Result<(), CaseError> {
        self.folders
            .stage(batch, layer, &case.partner, &case.case_id, CASE_FILE, case)
    }

    /// Indexes a case whose record a batch has installed ([`CaseStore::stage`]).
    pub fn saved(&self, case: Case) {
        self.index(case);
    }

    /// Path of version `version` of a case's data.
    pub fn data_path(&self, partner: &str, case_id: &str, version: u32) -> PathBuf {
        self.folders.data_path(partner, case_id, version)
    }

    /// Stores version `version` of a case's data (a FHIR Bundle as JSON) durably.
    pub fn write_data(
        &self,
        partner: &str,
        case_id: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), CaseError> {
        self.folders.write_data(partner, case_id, version, json)
    }

    /// Writes version `version` of a case's data into `batch` (layer
    /// `layer`), unflushed: it is stored once the batch installs that layer.
    pub fn stage_data(
        &self,
        batch: &mut durable::Batch,
        layer: usize,
        partner: &str,
        case_id: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), CaseError> {
        self.folders
            .stage_data(batch, layer, partner, case_id, version, json)
    }

    /// Version `version` of a case's data, parsed (cached).
    pub fn data(
        &self,
        partner: &str,
        case_id: &str,
        version: u32,
    ) -> Result<Arc<serde_json::Value>, CaseError> {
        self.folders.data(partner, case_id, version)
    }
}

/// Folders of exported items, `<root>/<partner>/<id>/`, each holding the
/// item's record (one JSON file) and its data versions (`v<N>.json`, FHIR
/// Bundles as JSON). Every write goes through the durable-write function;
/// data is read back parsed, through a small cache. The case store keeps
/// its cases in one; the record store (`crate::records`) the records
/// published to Zorgviewer partners in another.
pub struct ExportFolders {
    root: PathBuf,
    data: Mutex<DataCache>,
}

/// Parsed data versions kept in memory: at most this many…
const DATA_CACHE_ENTRIES: usize = 4096;
/// …and at most this many bytes of the files they were parsed from.
const DATA_CACHE_BYTES: usize = 64 << 20;

type DataKey = (String, String, u32);

/// The parsed data versions read most recently, within a count and a byte
/// budget; the least recently used goes first.
#[derive(Default)]
struct DataCache {
    entries: HashMap<DataKey, (Arc<serde_json::Value>, usize, u64)>,
    bytes: usize,
    clock: u64,
}

impl DataCache {
    fn get(&mut self, key: &DataKey) -> Option<Arc<serde_json::Value>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(v, _, used)| {
            *used = clock;
            v.clone()
        })
    }

    fn insert(&mut self, key: DataKey, value: Arc<serde_json::Value>, size: usize) {
        if size > DATA_CACHE_BYTES {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= DATA_CACHE_ENTRIES || self.bytes + size > DATA_CACHE_BYTES {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.clock += 1;
        self.bytes += size;
        self.entries.insert(key, (value, size, self.clock));
    }

    fn remove(&mut self, key: &DataKey) {
        if let Some((_, size, _)) = self.entries.remove(key) {
            self.bytes -= size;
        }
    }
}

impl ExportFolders {
    /// Creates `root` when missing.
    pub fn open(root: PathBuf) -> Result<ExportFolders, CaseError> {
        durable::create_dir_all(&root)?;
        Ok(ExportFolders {
            root,
            data: Mutex::new(DataCache::default()),
        })
    }

    /// Every item folder as `(partner, id)`, after removing the temp files a
    /// crash inside a durable write left in it. Hidden folders are skipped.
    pub fn list(&self) -> Result<Vec<(String, String)>, CaseError> {
        let mut out = Vec::new();
        for partner in read_dir_names(&self.root)? {
            let pdir = self.root.join(&partner);
            for id in read_dir_names(&pdir)? {
                durable::remove_temp_files(&pdir.join(&id))?;
                out.push((partner.clone(), id));
            }
        }
        Ok(out)
    }

    /// The record `file` of an item, parsed; `None` when it does not exist.
    pub fn read<T: DeserializeOwned>(
        &self,
        partner: &str,
        id: &str,
        file: &str,
    ) -> Result<Option<T>, CaseError> {
        let path = self.dir(partner, id).join(file);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CaseError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes the record `file` of an item durably.
    pub fn save<T: Serialize>(
        &self,
        partner: &str,
        id: &str,
        file: &str,
        record: &T,
    ) -> Result<(), CaseError> {
        let dir = self.dir(partner, id);
        durable::create_dir_all(&dir)?;
        let bytes = record_bytes(&dir, file, record)?;
        durable::write_atomic(&dir.join(file), &bytes)?;
        Ok(())
    }

    /// [`ExportFolders::save`] into `batch` (layer `layer`), unflushed.
    pub fn stage<T: Serialize>(
        &self,
        batch: &mut durable::Batch,
        layer: usize,
        partner: &str,
        id: &str,
        file: &str,
        record: &T,
    ) -> Result<(), CaseError> {
        let dir = self.dir(partner, id);
        batch.create_dir_all(layer, &dir)?;
        let bytes = record_bytes(&dir, file, record)?;
        batch.write(layer, &dir.join(file), &bytes)?;
        Ok(())
    }

    fn dir(&self, partner: &str, id: &str) -> PathBuf {
        self.root.join(partner).join(id)
    }

    /// Path of the file `file` of an item.
    pub fn path(&self, partner: &str, id: &str, file: &str) -> PathBuf {
        self.dir(partner, id).join(file)
    }

    /// Path of data version `version` of an item.
    pub fn data_path(&self, partner: &str, id: &str, version: u32) -> PathBuf {
        self.dir(partner, id).join(format!("v{version}.json"))
    }

    /// Stores data version `version` of an item durably.
    pub fn write_data(
        &self,
        partner: &str,
        id: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), CaseError> {
        durable::create_dir_all(&self.dir(partner, id))?;
        durable::write_atomic(&self.data_path(partner, id, version), json)?;
        Ok(())
    }

    /// [`ExportFolders::write_data`] into `batch` (layer `layer`), unflushed.
    pub fn stage_data(
        &self,
        batch: &mut durable::Batch,
        layer: usize,
        partner: &str,
        id: &str,
        version: u32,
        json: &[u8],
    ) -> Result<(), CaseError> {
        batch.create_dir_all(layer, &self.dir(partner, id))?;
        batch.write(layer, &self.data_path(partner, id, version), json)?;
        Ok(())
    }

    /// The data versions of an item that are on disk, in ascending order.
    pub fn versions(&self, partner: &str, id: &str) -> Result<Vec<u32>, CaseError> {
        let mut out: Vec<u32> = dir_entries(&self.dir(partner, id))?
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix('v')?.strip_suffix(".json")?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Removes data version `version` of an item durably (and from the
    /// cache); a version that is not there is no error.
    pub fn remove_data(&self, partner: &str, id: &str, version: u32) -> Result<(), CaseError> {
        self.data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(partner.to_string(), id.to_string(), version));
        durable::remove(&self.data_path(partner, id, version))?;
        Ok(())
    }

    /// Data version `version` of an item, parsed (cached).
    pub fn data(
        &self,
        partner: &str,
        id: &str,
        version: u32,
    ) -> Result<Arc<serde_json::Value>, CaseError> {
        let key = (partner.to_string(), id.to_string(), version);
        if let Some(v) = self
            .data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(v);
        }
        let path = self.data_path(partner, id, version);
        let Some(bytes) = read_optional(&path)? else {
            return Err(CaseError::Missing {
                partner: partner.into(),
                case_id: id.into(),
                version,
            });
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| CaseError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let value = Arc::new(value);
        self.data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value.clone(), bytes.len());
        Ok(value)
    }
}

impl BaseRegistry for CaseStore {
    fn lookup(&self, partner: &str, base: &str, now: i64) -> BaseLookup {
        let Some(case) = self.by_base(base) else {
            return BaseLookup::NotIssued;
        };
        if case.partner != partner {
            return BaseLookup::NotIssued;
        }
        if !case.is_live(now) {
            return BaseLookup::Ended;
        }
        let Some(patient) = Bsn::parse(&case.patient) else {
            return BaseLookup::Ended;
        };
        BaseLookup::Live(BaseBinding {
            case_id: case.case_id.clone(),
            patient,
            owner: case.owner.as_deref().and_then(|o| OrgId::parse(o).ok()),
        })
    }
}

/// A record as it is written into its item's folder `dir` as `file`.
fn record_bytes<T: Serialize>(dir: &Path, file: &str, record: &T) -> Result<Vec<u8>, CaseError> {
    serde_json::to_vec_pretty(record).map_err(|e| CaseError::Corrupt {
        path: dir.join(file),
        reason: e.to_string(),
    })
}

/// The contents of a file; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CaseError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaseError::Io(durable::DurableError {
            path: path.to_path_buf(),
            step: "read",
            source,
        })),
    }
}

/// The readable entries of a folder; none when it does not exist.
fn dir_entries(dir: &Path) -> Result<impl Iterator<Item = std::fs::DirEntry>, CaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(CaseError::Io(durable::DurableError {
                path: dir.to_path_buf(),
                step: "read directory",
                source,
            }));
        }
    };
    Ok(entries.into_iter().flatten().filter_map(Result::ok))
}

/// Names of the subfolders of `dir`, hidden ones left out.
fn read_dir_names(dir: &Path) -> Result<Vec<String>, CaseError> {
    Ok(dir_entries(dir)?
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_cache_drops_the_least_recently_used_within_its_budget() {
        let key = |i: u32| ("p".to_string(), format!("c{i}"), 1);
        let v = || Arc::new(serde_json::json!({}));
        let mut cache = DataCache::default();
        for i in 0..DATA_CACHE_ENTRIES as u32 {
            cache.insert(key(i), v(), 1);
        }
        assert!(cache.get(&key(0)).is_some(), "touch the first one");
        cache.insert(key(99_999), v(), 1);
        assert_eq!(cache.entries.len(), DATA_CACHE_ENTRIES);
        assert!(cache.get(&key(0)).is_some(), "recently used: kept");
        assert!(cache.get(&key(1)).is_none(), "least recently used: dropped");
        // The byte budget: a big entry pushes out as many as it needs.
        cache.insert(key(100_000), v(), DATA_CACHE_BYTES - 10);
        assert!(cache.bytes <= DATA_CACHE_BYTES);
        assert!(cache.get(&key(100_000)).is_some());
        assert!(cache.entries.len() <= 11);
        // Larger than the whole budget: not kept at all.
        cache.insert(key(100_001), v(), DATA_CACHE_BYTES + 1);
        assert!(cache.get(&key(100_001)).is_none());
        // Replacing and removing keep the byte count right.
        cache.insert(key(100_000), v(), 5);
        cache.remove(&key(100_000));
        let sum: usize = cache.entries.values().map(|(_, s, _)| s).sum();
        assert_eq!(cache.bytes, sum);
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("np-cases-{}", random::uuid_v4().unwrap()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cases_persist_and_answer_base_lookups() {
        let d = dir();
        let store = CaseStore::open(&d).unwrap();
        let bsn = Bsn::parse("999999151").unwrap();
        let owner = OrgId::Ura("87654321".into());
        let mut case = Case::new("hospb", "c-0042", &bsn, Some(&owner), 1_000, 2_000).unwrap();
        case.version = 1;
        assert_eq!(case.authorization_base.len(), 43, "256 bits");
        assert!(random::is_uuid(&case.group_id));
        store
            .write_data("hospb", "c-0042", 1, br#"{"resourceType":"Bundle"}"#)
            .unwrap();
        store.save(&case).unwrap();
        let base = case.authorization_base.clone();

        let reopened = CaseStore::open(&d).unwrap();
        assert_eq!(reopened.get("hospb", "c-0042").unwrap(), case);
        assert_eq!(
            reopened.data("hospb", "c-0042", 1).unwrap()["resourceType"],
            "Bundle"
        );
        assert!(matches!(
            reopened.data("hospb", "c-0042", 2),
            Err(CaseError::Missing { .. })
        ));
        match reopened.lookup("hospb", &base, 1_500) {
            BaseLookup::Live(b) => {
                assert_eq!(
                    (b.case_id.as_str(), b.patient, b.owner),
                    ("c-0042", bsn, Some(owner))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reopened.lookup("hospc", &base, 1_500),
            BaseLookup::NotIssued,
            "bound to the partner"
        );
        assert_eq!(
            reopened.lookup("hospb", "guess", 1_500),
            BaseLookup::NotIssued
        );
        assert_eq!(
            reopened.lookup("hospb", &base, 2_000),
            BaseLookup::Ended,
            "expired"
        );
        case.status = CaseStatus::Cancelled;
        reopened.save(&case).unwrap();
        assert_eq!(
            reopened.lookup("hospb", &base, 1_500),
            BaseLookup::Ended,
            "cancelled"
        );
        assert!(!format!("{case:?}").contains("999999151"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
