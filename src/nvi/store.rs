//! What the index holds of ours: one record per (NVI partner, patient)
//! under `NP_STATE_DIR/nvi/`, named by a hash of the pair so that no BSN is
//! in a name (the BSN is inside, as in the spool). Written by the workers
//! only, through [`crate::util::durable`]; read by anyone (`np-agent nvi`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::Bsn;
use crate::util::b64;
use crate::util::durable::{self, DurableError};

/// Where a patient stands at one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Our referral is in the index.
    Registered,
    /// Removed after the last published data was withdrawn.
    Deregistered,
    /// Removed because the patient objects (`np-agent nvi deregister`):
    /// publishing more data does not register the patient again; only
    /// `np-agent nvi register` does.
    Objected,
}

impl Standing {
    pub fn label(self) -> &'static str {
        match self {
            Standing::Registered => "registered",
            Standing::Deregistered => "deregistered",
            Standing::Objected => "objected",
        }
    }
}

/// One (index, patient) record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub partner: String,
    /// The BSN.
    pub patient: String,
    pub standing: Standing,
    /// The round: every completed deregistration starts a new one, so the
    /// next registration is new spool work ([`super::item_id`]).
    pub round: u32,
    /// The index's answer (`201`, `200`, `409`, `204`).
    pub status: u16,
    /// Unix seconds.
    pub at: i64,
}

/// A failure of the record store, naming the file.
#[derive(Debug)]
pub enum StoreError {
    Io(DurableError),
    Corrupt { path: PathBuf, reason: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "nvi registrations: {e}"),
            StoreError::Corrupt { path, reason } => {
                write!(f, "nvi registrations: {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// The records under `NP_STATE_DIR/nvi/`.
#[derive(Debug)]
pub struct RegistrationStore {
    dir: PathBuf,
}

/// The name-safe hash of an (index, patient) pair: the record's file name
/// and part of its spool items' ids.
pub fn pair_hash(partner: &str, patient: &Bsn) -> String {
    b64::sha256_hex32(format!("nvi|{partner}|{}", patient.as_str()).as_bytes())
}

impl RegistrationStore {
    /// Opens the folder, removing temp files a crash left. It is created
    /// with the first record, so an agent without `nvi` partners leaves no
    /// trace of localisation.
    pub fn open(state_dir: &Path) -> Result<RegistrationStore, DurableError> {
        let store = RegistrationStore::reader(state_dir);
        if store.dir.is_dir() {
            durable::remove_temp_files(&store.dir)?;
        }
        Ok(store)
    }

    /// The store of a state folder another process owns, for reading only.
    pub fn reader(state_dir: &Path) -> RegistrationStore {
        RegistrationStore {
            dir: state_dir.join("nvi"),
        }
    }

    fn path(&self, partner: &str, patient: &Bsn) -> PathBuf {
        self.dir
            .join(format!("{}.json", pair_hash(partner, patient)))
    }

    /// The record of `patient` at `partner`, if any.
    pub fn get(&self, partner: &str, patient: &Bsn) -> Result<Option<Registration>, StoreError> {
        let path = self.path(partner, patient);
        match std::fs::read(&path) {
            Ok(bytes) => read_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io(DurableError {
                path,
                step: "read",
                source,
            })),
        }
    }

    /// Writes a record (temp, fsync, rename: replaces the earlier one).
    pub fn save(&self, r: &Registration) -> Result<(), StoreError> {
        let patient = Bsn::parse(&r.patient).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            reason: "a registration without a valid BSN".into(),
        })?;
        let path = self.path(&r.partner, &patient);
        let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        durable::create_dir_all(&self.dir).map_err(StoreError::Io)?;
        durable::write_atomic(&path, &bytes).map_err(StoreError::Io)
    }
}

fn read_record(path: &Path, bytes: &[u8]) -> Result<Registration, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        // The parser's message may quote a value, and a value may be a BSN.
        reason: format!("not a registration record (line {})", e.line()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_under_a_name_without_the_bsn() {
        let dir = std::env::temp_dir().join(format!(
            "np-nvi-store-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        let store = RegistrationStore::open(&dir).unwrap();
        let p = Bsn::parse("999999151").unwrap();
        assert_eq!(store.get("nvi", &p).unwrap(), None);
        let r = Registration {
            partner: "nvi".into(),
            patient: p.as_str().into(),
            standing: Standing::Registered,
            round: 0,
            status: 201,
            at: 5,
        };
        store.save(&r).unwrap();
        assert_eq!(store.get("nvi", &p).unwrap(), Some(r));
        for e in std::fs::read_dir(dir.join("nvi")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("999999151"), "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
