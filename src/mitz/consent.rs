//! The consent view: per patient and holder, the newest Mitz state of every
//! `(data category, provider category)` pair (spec §4.3). One JSON file per
//! `(holder, BSN)` under `NP_STATE_DIR/mitz/consent/`, named by a hash so the
//! BSN is not in a file name; written through [`crate::util::durable`].
//!
//! A state is replaced only by one with a newer `Consent.dateTime`, so
//! redelivery and reordering (guaranteed delivery resends) cannot roll it
//! back; pairs a notification does not mention keep their state; a pair
//! with no state is no consent (Mitz is opt-in). The closed question stays
//! the authority at release time: this view keeps a local answer warm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::notification::ConsentState;
use crate::ids::Bsn;
use crate::util::durable::{self, DurableError};

/// One pair's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairState {
    pub permit: bool,
    /// `Consent.dateTime` as sent.
    pub date_time: String,
    pub order: (i64, u32),
    /// The spool item of the notification that set it.
    pub notification: String,
}

/// Everything known for one patient at one holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientConsent {
    pub patient: String,
    pub holder: String,
    /// data category → provider category → state.
    pub categories: BTreeMap<String, BTreeMap<String, PairState>>,
}

impl PatientConsent {
    /// Whether `provider` may see `data`: only a stored permit says yes.
    pub fn permits(&self, data: &str, provider: &str) -> bool {
        self.categories
            .get(data)
            .and_then(|m| m.get(provider))
            .is_some_and(|s| s.permit)
    }
}

/// What applying a notification changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pairs set or replaced.
    pub changed: usize,
    /// Pairs left alone because the stored state is as new or newer.
    pub stale: usize,
}

/// A consent view failure (which file, which step).
#[derive(Debug)]
pub enum ConsentError {
    Io(DurableError),
    Corrupt { path: PathBuf, reason: String },
}

impl std::fmt::Display for ConsentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsentError::Io(e) => write!(f, "consent view: {e}"),
            ConsentError::Corrupt { path, reason } => {
                write!(f, "consent view: {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for ConsentError {}

/// The consent view on disk.
#[derive(Debug)]
pub struct ConsentView {
    dir: PathBuf,
    /// Read-modify-write of one file must not interleave with another.
    lock: Mutex<()>,
}

impl ConsentView {
    /// Opens (creating) `<state_dir>/mitz/consent`, removing temp files a
    /// crash mid-write left.
    pub fn open(state_dir: &Path) -> Result<ConsentView, DurableError> {
        let dir = state_dir.join("mitz").join("consent");
        durable::create_dir_all(&dir)?;
        durable::remove_temp_files(&dir)?;
        Ok(ConsentView {
            dir,
            lock: Mutex::new(()),
        })
    }

    /// The view of a state folder another process owns, for reading only
    /// (creates and removes nothing).
    pub fn reader(state_dir: &Path) -> ConsentView {
        ConsentView {
            dir: state_dir.join("mitz").join("consent"),
            lock: Mutex::new(()),
        }
    }

    fn path(&self, holder: &str, bsn: &Bsn) -> PathBuf {
        let name = crate::util::b64::sha256_hex32(format!("{holder}|{}", bsn.as_str()).as_bytes());
        self.dir.join(format!("{name}.json"))
    }

    /// The release decision from the view: a stored permit for the pair
    /// permits, a stored refusal denies, nothing stored is not applicable.
    pub fn decide(&self, q: &crate::consent::Question<'_>) -> crate::consent::Answer {
        use crate::consent::Answer;
        match self.load(q.holder_ura, q.patient) {
            Ok(stored) => match stored
                .categories
                .get(q.data_category)
                .and_then(|m| m.get(q.provider_category))
            {
                Some(state) if state.permit => Answer::Permit,
                Some(_) => Answer::Deny,
                None => Answer::NotApplicable,
            },
            Err(e) => Answer::Unavailable(e.to_string()),
        }
    }

    /// What is stored for the patient at `holder` (empty when nothing).
    pub fn load(&self, holder: &str, bsn: &Bsn) -> Result<PatientConsent, ConsentError> {
        let path = self.path(holder, bsn);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ConsentError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PatientConsent {
                patient: bsn.as_str().to_string(),
                holder: holder.to_string(),
                ..PatientConsent::default()
            }),
            Err(source) => Err(ConsentError::Io(DurableError {
                path,
                step: "read",
                source,
            })),
        }
    }

    /// Applies the Consents of one notification (item `source`): each pair
    /// takes the Consent's state when it is newer than what is stored.
    /// Idempotent, so a worker that crashed after writing can run again.
    pub fn apply(
        &self,
        holder: &str,
        bsn: &Bsn,
        consents: &[ConsentState],
        source: &str,
    ) -> Result<Applied, ConsentError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut view = self.load(holder, bsn)?;
        let mut applied = Applied::default();
        for c in consents {
            for data in &c.data_categories {
                let pairs = view.categories.entry(data.clone()).or_default();
                for provider in &c.provider_categories {
                    let newer = pairs.get(provider).is_none_or(|s| c.order > s.order);
                    if !newer {
                        applied.stale += 1;
                        continue;
                    }
                    pairs.insert(
                        provider.clone(),
                        PairState {
                            permit: c.permit,
                            date_time: c.date_time.clone(),
                            order: c.order,
                            notification: source.to_string(),
                        },
                    );
                    applied.changed += 1;
                }
            }
        }
        if applied.changed > 0 {
            let bytes = serde_json::to_vec(&view).map_err(|e| ConsentError::Corrupt {
                path: self.path(holder, bsn),
                reason: e.to_string(),
            })?;
            durable::write_atomic(&self.path(holder, bsn), &bytes).map_err(ConsentError::Io)?;
        }
        Ok(applied)
    }
}

impl crate::consent::ConsentCheck for ConsentView {
    fn ask(
        &self,
        question: &crate::consent::Question<'_>,
        _now: i64,
    ) -> (crate::consent::Answer, crate::consent::Source) {
        (self.decide(question), crate::consent::Source::View)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch folder removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "np-{label}-{}-{}",
                std::process::id(),
                crate::util::random::uuid_v4().unwrap()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn state(permit: bool, providers: &[&str], at: &str) -> ConsentState {
        ConsentState {
            data_categories: vec!["GGC002".into()],
            provider_categories: providers.iter().map(|p| p.to_string()).collect(),
            permit,
            date_time: at.into(),
            order: super::super::notification::order_key(at).unwrap(),
        }
    }

    #[test]
    fn newest_date_time_wins_whatever_the_arrival_order() {
        let dir = Dir::new("consent-order");
        let view = ConsentView::open(dir.path()).unwrap();
        let bsn = Bsn::parse("999999151").unwrap();
        let old = state(true, &["RPZAC104", "RPZAC005"], "2026-11-18T10:51:16.1Z");
        let new = state(false, &["RPZAC104"], "2026-11-18T10:51:16.2Z");
        // The newer one arrives first, the older one is redelivered after it.
        assert_eq!(
            view.apply("87654321", &bsn, std::slice::from_ref(&new), "n2")
                .unwrap(),
            Applied {
                changed: 1,
                stale: 0
            }
        );
        assert_eq!(
            view.apply("87654321", &bsn, &[old], "n1").unwrap(),
            Applied {
                changed: 1,
                stale: 1
            }
        );
        let v = view.load("87654321", &bsn).unwrap();
        assert!(
            !v.permits("GGC002", "RPZAC104"),
            "the older permit rolled back the newer no"
        );
        assert!(
            v.permits("GGC002", "RPZAC005"),
            "an unmentioned pair keeps its state"
        );
        assert!(!v.permits("GGC002", "RPZAC001"), "no state is no consent");
        assert!(!v.permits("GGC012", "RPZAC005"));
        assert_eq!(v.categories["GGC002"]["RPZAC104"].notification, "n2");
        // The same notification again changes nothing and writes nothing.
        assert_eq!(
            view.apply("87654321", &bsn, &[new], "n2").unwrap(),
            Applied {
                changed: 0,
                stale: 1
            }
        );
        // Another holder is another view; the file name does not hold the BSN.
        assert!(view.load("11111111", &bsn).unwrap().categories.is_empty());
        for f in std::fs::read_dir(dir.path().join("mitz/consent")).unwrap() {
            assert!(
                !f.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("999999151")
            );
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = Dir::new("consent-corrupt");
        let view = ConsentView::open(dir.path()).unwrap();
        let bsn = Bsn::parse("999999151").unwrap();
        std::fs::write(view.path("87654321", &bsn), b"{").unwrap();
        let e = view.load("87654321", &bsn).unwrap_err().to_string();
        assert!(e.contains("mitz/consent/") && e.contains(".json"), "{e}");
        assert!(
            view.apply(
                "87654321",
                &bsn,
                &[state(true, &["RPZAC104"], "2026-01-01T00:00:00Z")],
                "n"
            )
            .is_err()
        );
    }
}
