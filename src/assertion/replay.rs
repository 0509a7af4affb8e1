//! The `jti` replay cache: in memory, made durable in a journal so that a
//! restart does not reopen the window.
//!
//! Each seen `(partner, iss, jti)` is keyed by the SHA-256 of the triple.
//! [`ReplayCache::record`] checks and inserts under one lock (the check that
//! counts, atomic across threads), then appends `<hash> <horizon>` to
//! `<state>/replay/journal` and returns once that line is on disk; concurrent
//! requests share one `fdatasync` ([`Journal`]). An entry inserted whose
//! append then fails stays in memory: refusing a later legitimate reuse is
//! safer than accepting a replay. The minute sweep forgets entries whose
//! horizon passed and rewrites the journal once most of it is dead.
//!
//! Opening reads the journal (a torn tail is skipped) and the one file per
//! entry of the older layout (`<state>/replay/<hash>`, holding the horizon),
//! writes every entry to a fresh journal and only then removes those files.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::ops::logging::Q;
use crate::util::journal::{self, Journal};
use crate::util::{b64, durable, time};

/// The replay cache. Clones share one cache.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Key of each seen triple → its horizon (Unix seconds).
    seen: Mutex<HashMap<[u8; 32], i64>>,
    journal: Journal,
}

/// The outcome of recording a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: recorded durably.
    Fresh,
    /// Seen before: a replay.
    Replayed,
}

/// One `jti` to record: its issuer, the `jti` and when it may be forgotten
/// (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct JtiEntry<'a> {
    pub iss: &'a str,
    pub jti: &'a str,
    pub forget_after: i64,
}

/// How long an entry of the older layout whose horizon cannot be read (a
/// crash between its creation and its write) is kept: past any horizon.
const UNREADABLE_KEEP_SECS: i64 = 2 * (super::claims::MAX_LIFETIME_SECS + 60);

impl ReplayCache {
    /// Opens (creating) `<state_dir>/replay`: loads the journal and any entry
    /// files of the older layout, and writes them to a fresh journal.
    pub fn open(state_dir: &Path) -> Result<ReplayCache, durable::DurableError> {
        let dir = state_dir.join("replay");
        durable::create_dir_all(&dir)?;
        durable::remove_temp_files(&dir)?;
        let path = dir.join("journal");
        let contents = Journal::read(&path)?;
        let mut seen = HashMap::new();
        let mut skipped = contents.skipped;
        for record in &contents.records {
            match parse_entry(record) {
                Some((key, horizon)) => remember(&mut seen, key, horizon),
                None => skipped += 1,
            }
        }
        let legacy = legacy_entries(&dir)?;
        for (_, key, horizon) in &legacy {
            remember(&mut seen, *key, *horizon);
        }
        let records: Vec<String> = seen.iter().map(|(k, h)| entry_line(k, *h)).collect();
        let journal = Journal::create(&path, &records)?;
        for (file, _, _) in &legacy {
            fs::remove_file(file).map_err(|source| durable::DurableError {
                path: file.clone(),
                step: "remove migrated entry",
                source,
            })?;
        }
        if !legacy.is_empty() {
            durable::sync_dir(&dir)?;
        }
        if skipped > 0 || !legacy.is_empty() {
            log::info!(
                "event=journal.recovered path={} live={} skipped={skipped} migrated={}",
                Q(&path.display().to_string()),
                seen.len(),
                legacy.len()
            );
        }
        Ok(ReplayCache {
            inner: Arc::new(Inner {
                seen: Mutex::new(seen),
                journal,
            }),
        })
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
        let seen = self.record_all(
            partner,
            &[JtiEntry {
                iss,
                jti,
                forget_after,
            }],
        )?;
        Ok(seen.first().copied().unwrap_or(Seen::Replayed))
    }

    /// Records the `jti`s of one request for `partner`, in order, with one
    /// append: each is checked and inserted atomically (a later entry equal
    /// to an earlier one is a replay), and the fresh ones are on disk when
    /// this returns `Ok`, whatever the others were. On `Err` every entry
    /// inserted stays recorded in memory.
    pub fn record_all(
        &self,
        partner: &str,
        entries: &[JtiEntry<'_>],
    ) -> Result<Vec<Seen>, durable::DurableError> {
        let (outcome, stored) = self.submit_all(partner, entries)?;
        if let Some(stored) = stored {
            stored.wait()?;
        }
        Ok(outcome)
    }

    /// [`Self::record_all`] without waiting for the disk: the check and the
    /// insertion happen here, the fresh entries' lines are queued, and the
    /// caller waits for them ([`journal::Pending::wait`]) before it answers,
    /// after queueing what else its answer needs.
    pub fn submit_all(
        &self,
        partner: &str,
        entries: &[JtiEntry<'_>],
    ) -> Result<(Vec<Seen>, Option<journal::Pending<'_>>), durable::DurableError> {
        let mut outcome = Vec::with_capacity(entries.len());
        let mut fresh = Vec::new();
        {
            let mut seen = self.seen();
            for e in entries {
                let key = key(partner, e.iss, e.jti);
                match seen.entry(key) {
                    // An entry whose horizon passed may be reused, but only
                    // after the sweep forgot it: until then it is a replay.
                    Entry::Occupied(_) => outcome.push(Seen::Replayed),
                    Entry::Vacant(v) => {
                        v.insert(e.forget_after);
                        fresh.push(entry_line(&key, e.forget_after));
                        outcome.push(Seen::Fresh);
                    }
                }
            }
        }
        if fresh.is_empty() {
            return Ok((outcome, None));
        }
        let lines: Vec<&str> = fresh.iter().map(String::as_str).collect();
        let stored = self.inner.journal.submit(&lines)?;
        Ok((outcome, Some(stored)))
    }

    /// Whether `jti` is recorded for `partner`/`iss` (a read: [`Self::record`]
    /// is the check that counts, atomically).
    pub fn contains(&self, partner: &str, iss: &str, jti: &str) -> bool {
        self.seen().contains_key(&key(partner, iss, jti))
    }

    /// Forgets entries whose horizon is before `now`, and rewrites the journal
    /// when most of it is dead. Returns how many were forgotten.
    pub fn sweep(&self, now: i64) -> Result<usize, durable::DurableError> {
        let (removed, live) = {
            let mut seen = self.seen();
            let before = seen.len();
            seen.retain(|_, horizon| *horizon >= now);
            (before - seen.len(), seen.len())
        };
        if journal::should_compact(self.inner.journal.lines(), live) {
            self.compact()?;
        }
        Ok(removed)
    }

    /// Rewrites the journal with the entries held now.
    pub fn compact(&self) -> Result<(), durable::DurableError> {
        self.inner
            .journal
            .rewrite(|| self.seen().iter().map(|(k, h)| entry_line(k, *h)).collect())
    }

    /// Number of entries (for metrics and tests).
    pub fn len(&self) -> usize {
        self.seen().len()
    }

    /// True when no entry is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<[u8; 32], i64>> {
        self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `n` journal flushes fail after their write (tests).
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_syncs(&self, n: usize) {
        self.inner.journal.insecure_test_fail_syncs(n);
    }
}

/// The key of one `(partner, iss, jti)`: the SHA-256 of the triple.
fn key(partner: &str, iss: &str, jti: &str) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{partner}\n{iss}\n{jti}").as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    b64::parse_hex(hex).and_then(|h| <[u8; 32]>::try_from(h).ok())
}

fn remember(seen: &mut HashMap<[u8; 32], i64>, key: [u8; 32], horizon: i64) {
    let h = seen.entry(key).or_insert(horizon);
    *h = (*h).max(horizon);
}

/// A journal line: `<hash> <horizon>`.
fn entry_line(key: &[u8; 32], horizon: i64) -> String {
    format!("{} {horizon}", b64::hex(key))
}

fn parse_entry(line: &str) -> Option<([u8; 32], i64)> {
    let (hash, horizon) = line.split_once(' ')?;
    Some((parse_key(hash)?, horizon.parse().ok()?))
}

/// The entry files of the older layout: a file per entry named by its key
/// in hex, holding its horizon.
fn legacy_entries(dir: &Path) -> Result<Vec<(PathBuf, [u8; 32], i64)>, durable::DurableError> {
    let entries = fs::read_dir(dir).map_err(|source| durable::DurableError {
        path: dir.to_path_buf(),
        step: "read directory",
        source,
    })?;
    let now = time::now_unix();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(key) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_key)
        else {
            continue;
        };
        let horizon = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or_else(|| modified_unix(&path).unwrap_or(now) + UNREADABLE_KEEP_SECS);
        out.push((path, key, horizon));
    }
    Ok(out)
}

fn modified_unix(path: &Path) -> Option<i64> {
    let t = fs::metadata(path).ok()?.modified().ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
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
        drop(cache);
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

    /// Writers recording at once share flushes, and every `jti` answered
    /// as recorded is a replay after a restart, also after the sweep
    /// compacted the journal.
    #[test]
    fn concurrent_records_share_flushes_and_all_survive_a_restart() {
        let dir = state();
        let cache = ReplayCache::open(&dir).unwrap();
        const THREADS: usize = 8;
        const EACH: usize = 40;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..EACH {
                        let (a, b) = (format!("a-{t}-{i}"), format!("b-{t}-{i}"));
                        let entries = [
                            JtiEntry {
                                iss: "i",
                                jti: &a,
                                forget_after: 100,
                            },
                            JtiEntry {
                                iss: "i",
                                jti: &b,
                                forget_after: 300,
                            },
                        ];
                        let seen = cache.record_all("p", &entries).unwrap();
                        assert_eq!(seen, vec![Seen::Fresh, Seen::Fresh]);
                    }
                });
            }
        });
        let batches = cache.inner.journal.batches();
        assert!(batches <= (THREADS * EACH) as u64, "{batches} batches");
        // The sweep forgets the `a-` entries and rewrites the journal.
        cache.sweep(200).unwrap();
        cache.compact().unwrap();
        drop(cache);
        let reopened = ReplayCache::open(&dir).unwrap();
        assert_eq!(reopened.len(), THREADS * EACH);
        for t in 0..THREADS {
            for i in 0..EACH {
                assert!(reopened.contains("p", "i", &format!("b-{t}-{i}")));
                assert!(!reopened.contains("p", "i", &format!("a-{t}-{i}")));
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// A power cut between the write and the flush: the caller is never
    /// told the `jti` is recorded (the token request fails), the running
    /// cache keeps refusing it, and the torn line is not read back.
    #[test]
    fn a_failed_flush_is_never_answered_as_recorded() {
        let dir = state();
        let cache = ReplayCache::open(&dir).unwrap();
        cache.record("b", "i", "kept", 100).unwrap();
        cache.insecure_test_fail_syncs(1);
        let entries = [
            JtiEntry {
                iss: "i",
                jti: "lost-1",
                forget_after: 100,
            },
            JtiEntry {
                iss: "i",
                jti: "lost-2",
                forget_after: 100,
            },
        ];
        let err = cache.record_all("b", &entries).unwrap_err();
        assert!(err.to_string().contains("fdatasync"), "{err}");
        assert_eq!(
            cache.record("b", "i", "lost-1", 100).unwrap(),
            Seen::Replayed
        );
        drop(cache);
        let reopened = ReplayCache::open(&dir).unwrap();
        assert!(reopened.contains("b", "i", "kept"));
        assert!(!reopened.contains("b", "i", "lost-1"));
        assert!(!reopened.contains("b", "i", "lost-2"));
        fs::remove_dir_all(dir).unwrap();
    }

    /// Entries of the one-file-per-entry layout are read into the journal
    /// and their files removed; a replay of one is still refused.
    #[test]
    fn entry_files_are_migrated_into_the_journal() {
        let dir = state();
        let replay = dir.join("replay");
        fs::create_dir_all(&replay).unwrap();
        let k = key("b", "i", "old-file");
        fs::write(replay.join(b64::hex(&k)), "500").unwrap();
        let cache = ReplayCache::open(&dir).unwrap();
        assert_eq!(
            cache.record("b", "i", "old-file", 500).unwrap(),
            Seen::Replayed
        );
        assert!(!replay.join(b64::hex(&k)).exists());
        drop(cache);
        let reopened = ReplayCache::open(&dir).unwrap();
        assert!(reopened.contains("b", "i", "old-file"));
        fs::remove_dir_all(dir).unwrap();
    }
}
