//! The `jti` replay cache, on disk so a restart does not reopen the window.
//!
//! Each seen `(partner, iss, jti)` is a file named by the SHA-256 of the
//! triple in `<state>/replay/`. Creating it with `O_EXCL` is the check and the
//! insert in one atomic step, across threads and processes; the file and the
//! directory are fsynced before the assertion is accepted. Entries hold their
//! expiry and are swept once it has passed.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::util::{b64, durable};

/// The replay cache directory.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    dir: PathBuf,
}

/// The outcome of recording a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: recorded durably.
    Fresh,
    /// Seen before: a replay.
    Replayed,
}

impl ReplayCache {
    /// Opens (creating) `<state_dir>/replay`.
    pub fn open(state_dir: &Path) -> Result<ReplayCache, durable::DurableError> {
        let dir = state_dir.join("replay");
        durable::create_dir_all(&dir)?;
        durable::remove_temp_files(&dir)?;
        Ok(ReplayCache { dir })
    }

    /// Records `jti` for `partner`/`iss`, to be remembered until `forget_after`
    /// (Unix seconds). Returns [`Seen::Replayed`] when it was recorded before.
    pub fn record(
        &self,
        partner: &str,
        iss: &str,
        jti: &str,
        forget_after: i64,
    ) -> Result<Seen, durable::DurableError> {
        let path = self.path(partner, iss, jti);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let mut file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // An entry whose horizon passed may be reused, but only after the
                // sweep removed it: within the horizon it is always a replay.
                return Ok(Seen::Replayed);
            }
            Err(source) => {
                return Err(durable::DurableError {
                    path,
                    step: "create",
                    source,
                });
            }
        };
        let result = file
            .write_all(forget_after.to_string().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = result {
            // Leave the entry in place: refusing a later legitimate reuse is
            // safer than accepting a replay.
            return Err(durable::DurableError {
                path,
                step: "write",
                source,
            });
        }
        durable::sync_dir(&self.dir)?;
        Ok(Seen::Fresh)
    }

    /// Whether `jti` is recorded for `partner`/`iss` (a read: [`Self::record`]
    /// is the check that counts, atomically).
    pub fn contains(&self, partner: &str, iss: &str, jti: &str) -> bool {
        self.path(partner, iss, jti).exists()
    }

    /// Removes entries whose horizon is before `now`. Entries that cannot be
    /// read are kept. Returns how many were removed.
    pub fn sweep(&self, now: i64) -> Result<usize, durable::DurableError> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.dir).map_err(|source| durable::DurableError {
            path: self.dir.clone(),
            step: "read directory",
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(horizon) = text.trim().parse::<i64>() else {
                // A crash between create and write leaves an empty file; it is
                // older than any horizon after one maximum lifetime.
                if is_older_than(&path, 2 * (super::claims::MAX_LIFETIME_SECS as u64 + 60)) {
                    let _ = fs::remove_file(&path);
                    removed += 1;
                }
                continue;
            };
            if horizon < now && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            durable::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The entry of one `(partner, iss, jti)`: named by the SHA-256 of the triple.
    fn path(&self, partner: &str, iss: &str, jti: &str) -> PathBuf {
        let key = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{partner}\n{iss}\n{jti}").as_bytes(),
        );
        self.dir.join(b64::hex(key.as_ref()))
    }

    /// Number of entries (for metrics and tests).
    pub fn len(&self) -> usize {
        fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0)
    }

    /// True when no entry is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_older_than(path: &Path, secs: u64) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "np-replay-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn second_use_is_a_replay_also_after_reopening() {
        let dir = state();
        let cache = ReplayCache::open(&dir).unwrap();
        assert_eq!(
            cache.record("b", "https://b", "j1", 100).unwrap(),
            Seen::Fresh
        );
        assert_eq!(
            cache.record("b", "https://b", "j1", 100).unwrap(),
            Seen::Replayed
        );
        // Another partner or issuer with the same jti is not a replay.
        assert_eq!(
            cache.record("c", "https://b", "j1", 100).unwrap(),
            Seen::Fresh
        );
        assert_eq!(
            cache.record("b", "https://c", "j1", 100).unwrap(),
            Seen::Fresh
        );
        let reopened = ReplayCache::open(&dir).unwrap();
        assert_eq!(
            reopened.record("b", "https://b", "j1", 100).unwrap(),
            Seen::Replayed
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sweep_forgets_only_expired_entries() {
        let dir = state();
        let cache = ReplayCache::open(&dir).unwrap();
        cache.record("b", "i", "old", 100).unwrap();
        cache.record("b", "i", "new", 300).unwrap();
        assert_eq!(cache.sweep(200).unwrap(), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.record("b", "i", "old", 400).unwrap(), Seen::Fresh);
        assert_eq!(cache.record("b", "i", "new", 400).unwrap(), Seen::Replayed);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_first_use_is_accepted_exactly_once() {
        let dir = state();
        let cache = ReplayCache::open(&dir).unwrap();
        let fresh = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if cache.record("b", "i", "race", 100).unwrap() == Seen::Fresh {
                        fresh.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(fresh.load(std::sync::atomic::Ordering::SeqCst), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
