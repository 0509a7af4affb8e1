//! An append-only journal: the durable half of a store that lives in memory.
//!
//! A store (the `jti` replay cache, the token store) keeps its state in
//! memory and makes each change durable as one line appended here. Appends
//! go through [`GroupCommit`]: concurrent writers share one write and one
//! `fdatasync`, and [`Journal::append`] returns only once its lines are on
//! disk, or with the error of its batch.
//!
//! Each line is `<checksum> <payload>\n`, the checksum the first 8 bytes of
//! the payload's SHA-256 in hex. [`Journal::read`] keeps the lines whose
//! checksum holds and skips the rest: a crash in the middle of an append
//! leaves at most a torn tail (a partial line, or a line of zeros where the
//! file grew before its data reached the disk), never a changed earlier line.
//!
//! The store rewrites the journal at start-up and when too much of it is
//! dead ([`Journal::rewrite`], through [`durable::write_atomic`]): its live
//! entries only, in a new file swapped in by rename, under the lock every
//! append takes, so a record committed before the rewrite is in the new file
//! and one committed after it is appended to the new file.
//!
//! After a failed append the file is cut back to its last complete batch
//! before anything else is written, so a later batch never continues a torn
//! line.
//!
//! An open journal holds an exclusive `flock` on `<path>.lock`: the check a
//! store makes in memory (a `jti` seen before) is exact only while one
//! process owns the journal, so a second process opening it is refused.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::util::durable::{self, DurableError};
use crate::util::group_commit::{self, GroupCommit};

/// Hex digits of the checksum in front of each line.
const CHECKSUM_HEX: usize = 16;

/// Dead lines a journal may hold beyond its live ones before
/// [`should_compact`] asks for a rewrite.
pub const COMPACT_SLACK: usize = 1024;

/// An open journal file.
pub struct Journal {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    commit: GroupCommit<Vec<u8>>,
    /// Holds the exclusive lock for as long as the journal is open.
    _lock: File,
}

/// Lines queued by [`Journal::submit`].
pub type Pending<'a> = group_commit::Pending<'a, Vec<u8>>;

/// What [`Journal::read`] found.
#[derive(Debug, Default)]
pub struct Contents {
    /// The payloads of the intact lines, in file order.
    pub records: Vec<String>,
    /// Lines that failed their checksum or were cut off (a torn tail).
    pub skipped: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Reads the journal at `path` (a missing file reads as empty).
    pub fn read(path: &Path) -> Result<Contents, DurableError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(parse(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Contents::default()),
            Err(source) => Err(DurableError {
                path: path.to_path_buf(),
                step: "read",
                source,
            }),
        }
    }

    /// Writes `records` as the whole journal at `path`, durably (a crash
    /// leaves the old journal or this one), and opens it for appending.
    /// Fails when another process holds the journal open.
    pub fn create(path: &Path, records: &[String]) -> Result<Journal, DurableError> {
        let lock_file = lock_exclusive(path)?;
        let (bytes, lines) = frame_all(path, records)?;
        durable::write_atomic(path, &bytes)?;
        let file = open_for_append(path)?;
        let writer = Arc::new(Mutex::new(Writer {
            path: path.to_path_buf(),
            file: Some(file),
            len: bytes.len() as u64,
            lines,
            torn: false,
            #[cfg(test)]
            fail_syncs: 0,
        }));
        let w = writer.clone();
        Ok(Journal {
            path: path.to_path_buf(),
            commit: GroupCommit::new(Box::new(move |batch: Vec<Vec<u8>>| lock(&w).append(&batch))),
            writer,
            _lock: lock_file,
        })
    }

    /// Appends `records` (one line each, in order, in one batch) and returns
    /// once they are on disk.
    pub fn append(&self, records: &[&str]) -> Result<(), DurableError> {
        self.submit(records)?.wait()
    }

    /// Queues `records` (one line each, in order, in one batch) for the next
    /// flush without waiting for it: [`Pending::wait`] does. A caller that
    /// writes to several logs queues in each before it waits for any.
    pub fn submit(&self, records: &[&str]) -> Result<Pending<'_>, DurableError> {
        let mut bytes = Vec::new();
        for r in records {
            frame(&self.path, r, &mut bytes)?;
        }
        Ok(self.commit.submit(bytes).at(&self.path, "append"))
    }

    /// Replaces the journal by the records `live` returns: a new file written
    /// with [`durable::write_atomic`] and swapped in. `live` runs while no
    /// append can run, so it sees every record committed so far and none
    /// that is committed after the new file is in place.
    pub fn rewrite(&self, live: impl FnOnce() -> Vec<String>) -> Result<(), DurableError> {
        let mut w = lock(&self.writer);
        let (bytes, lines) = frame_all(&self.path, &live())?;
        durable::write_atomic(&self.path, &bytes)?;
        // The old handle now names the replaced file: never append to it.
        w.file = None;
        w.len = bytes.len() as u64;
        w.lines = lines;
        w.torn = false;
        w.file = Some(open_for_append(&self.path)?);
        Ok(())
    }

    /// Lines in the file, live or not.
    pub fn lines(&self) -> usize {
        lock(&self.writer).lines
    }

    /// Batches flushed so far (tests, metrics).
    pub fn batches(&self) -> u64 {
        self.commit.batches()
    }

    /// Makes the next `n` flushes fail after their write reached the page
    /// cache, as a failing disk or a power cut before the flush would.
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_syncs(&self, n: usize) {
        lock(&self.writer).fail_syncs = n;
    }
}

/// Whether a journal of `lines` lines of which `live` are live is worth
/// rewriting: once its dead lines outnumber the live ones and
/// [`COMPACT_SLACK`], so each rewrite is paid for by as many appends.
pub fn should_compact(lines: usize, live: usize) -> bool {
    lines.saturating_sub(live) > live.max(COMPACT_SLACK)
}

/// The file side, owned by whichever writer leads the current batch.
struct Writer {
    path: PathBuf,
    /// `None` after a rewrite whose reopen failed: reopened on the next append.
    file: Option<File>,
    /// Bytes of complete, flushed lines: the next batch is written here.
    len: u64,
    lines: usize,
    /// A failed append may have left bytes past `len`: cut them first.
    torn: bool,
    #[cfg(test)]
    fail_syncs: usize,
}

impl Writer {
    /// Writes a batch at the end of the complete lines and flushes it.
    fn append(&mut self, batch: &[Vec<u8>]) -> Result<(), String> {
        let bytes = batch.concat();
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        let result = self.write_and_sync(&bytes);
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.lines += lines;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                // Cut the batch off now if we can; else before the next one.
                if let Some(file) = &self.file {
                    if file.set_len(self.len).is_ok() {
                        self.torn = false;
                    }
                }
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.file.is_none() {
            self.file = Some(open_for_append(&self.path).map_err(|e| e.to_string())?);
        }
        let Some(file) = &self.file else {
            return Err("not open".into());
        };
        if self.torn {
            file.set_len(self.len)
                .map_err(|e| format!("cut back a failed append: {e}"))?;
            self.torn = false;
        }
        file.write_all_at(bytes, self.len)
            .map_err(|e| format!("write: {e}"))?;
        #[cfg(test)]
        if self.fail_syncs > 0 {
            self.fail_syncs -= 1;
            return Err("fdatasync: injected failure".into());
        }
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the exclusive lock of the journal at `path` (`<path>.lock`).
fn lock_exclusive(path: &Path) -> Result<File, DurableError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| DurableError {
            path: lock_path.clone(),
            step: "open lock",
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| DurableError {
            path: lock_path,
            step: "lock (is another np-agent using this state folder?)",
            source: io::Error::from(e),
        },
    )?;
    Ok(file)
}

fn open_for_append(path: &Path) -> Result<File, DurableError> {
    OpenOptions::new()
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| DurableError {
            path: path.to_path_buf(),
            step: "open",
            source,
        })
}

/// The checksum of a payload: 8 bytes of its SHA-256, in hex.
fn checksum(payload: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, payload);
    crate::util::b64::hex(&d.as_ref()[..CHECKSUM_HEX / 2])
}

/// Appends the line of `payload` to `out`.
fn frame(path: &Path, payload: &str, out: &mut Vec<u8>) -> Result<(), DurableError> {
    if payload.contains('\n') {
        return Err(DurableError {
            path: path.to_path_buf(),
            step: "frame",
            source: io::Error::new(io::ErrorKind::InvalidInput, "a record holds a line break"),
        });
    }
    out.extend_from_slice(checksum(payload.as_bytes()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.as_bytes());
    out.push(b'\n');
    Ok(())
}

fn frame_all(path: &Path, records: &[String]) -> Result<(Vec<u8>, usize), DurableError> {
    let mut bytes = Vec::new();
    for r in records {
        frame(path, r, &mut bytes)?;
    }
    Ok((bytes, records.len()))
}

/// The intact lines of a journal's bytes.
fn parse(bytes: &[u8]) -> Contents {
    let mut out = Contents::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // A tail without its line break: torn.
            out.skipped += 1;
            break;
        };
        match check(&rest[..end]) {
            Some(payload) => out.records.push(payload),
            None => out.skipped += 1,
        }
        rest = &rest[end + 1..];
    }
    out
}

/// The payload of one line (without its line break) when its checksum holds.
fn check(line: &[u8]) -> Option<String> {
    let sum = line.get(..CHECKSUM_HEX)?;
    if line.get(CHECKSUM_HEX) != Some(&b' ') {
        return None;
    }
    let payload = &line[CHECKSUM_HEX + 1..];
    if checksum(payload).as_bytes() != sum {
        return None;
    }
    String::from_utf8(payload.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn scratch() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "np-journal-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &strings(&["a 1"])).unwrap();
        j.append(&["b 2", "c 3"]).unwrap();
        j.append(&["{\"json\": \"with spaces\"}"]).unwrap();
        let c = Journal::read(&path).unwrap();
        assert_eq!(
            c.records,
            strings(&["a 1", "b 2", "c 3", "{\"json\": \"with spaces\"}"])
        );
        assert_eq!(c.skipped, 0);
        assert_eq!(j.lines(), 4);
        assert_eq!(j.batches(), 2);
        assert!(j.append(&["two\nlines"]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every prefix of a journal reads as its complete lines: a crash in the
    /// middle of an append loses at most the line being written.
    #[test]
    fn every_torn_tail_is_skipped_and_the_lines_before_it_kept() {
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &[]).unwrap();
        let records = ["first 1", "second 22", "third 333"];
        j.append(&records).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let ends: Vec<usize> = whole
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        for cut in 0..=whole.len() {
            let c = parse(&whole[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(c.records, strings(&records[..complete]), "cut at {cut}");
            let torn = usize::from(!ends.contains(&cut) && cut > 0);
            assert_eq!(c.skipped, torn, "cut at {cut}");
        }
        // The file grew but its last block never got its data (zeros), and a
        // bit flipped inside a line: both skipped, the rest kept.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0u8; 600]);
        let c = parse(&zeros);
        assert_eq!((c.records.len(), c.skipped), (3, 1));
        let mut zeros_then_line = zeros.clone();
        zeros_then_line.extend_from_slice(b"\n");
        frame(&path, "after 4", &mut zeros_then_line).unwrap();
        let c = parse(&zeros_then_line);
        assert_eq!(c.records.last().map(String::as_str), Some("after 4"));
        assert_eq!(c.skipped, 1);
        let mut flipped = whole.clone();
        flipped[ends[0] + CHECKSUM_HEX + 3] ^= 0x01;
        let c = parse(&flipped);
        assert_eq!(c.records, strings(&["first 1", "third 333"]));
        assert_eq!(c.skipped, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A flush that fails (the write reached the page cache, the sync did
    /// not succeed) fails its batch; the file is cut back, so the next batch
    /// starts on a line of its own and the failed lines are not read back.
    #[test]
    fn a_failed_flush_is_cut_off_and_the_next_batch_reads_back_whole() {
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &strings(&["kept 1"])).unwrap();
        j.insecure_test_fail_syncs(1);
        let err = j.append(&["lost 2", "lost 3"]).unwrap_err();
        assert!(err.to_string().contains("fdatasync"), "{err}");
        assert_eq!(j.lines(), 1);
        j.append(&["next 4"]).unwrap();
        let c = Journal::read(&path).unwrap();
        assert_eq!(c.records, strings(&["kept 1", "next 4"]));
        assert_eq!(c.skipped, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A power cut while a batch of several writers waits for its flush:
    /// the flush fails (held until every writer has queued, then failing),
    /// every writer of that batch gets the error, none is told it is stored,
    /// and none of their lines is read back.
    #[test]
    fn a_failed_flush_fails_every_writer_of_its_batch() {
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &strings(&["kept 1"])).unwrap();
        const WRITERS: usize = 5;
        let j = &j;
        let results = std::thread::scope(|s| {
            // The file side is held: the first writer leads and blocks in
            // its flush, the others queue behind it as the next batch.
            let mut held = lock(&j.writer);
            held.fail_syncs = 2;
            let leader = s.spawn(move || j.append(&["lost leader"]));
            while j.commit.pending() != (0, true) {
                std::thread::yield_now();
            }
            let waiters: Vec<_> = (0..WRITERS)
                .map(|i| s.spawn(move || j.append(&[&format!("lost {i}")])))
                .collect();
            while j.commit.pending() != (WRITERS, true) {
                std::thread::yield_now();
            }
            drop(held);
            let mut results = vec![leader.join().unwrap()];
            results.extend(waiters.into_iter().map(|w| w.join().unwrap()));
            results
        });
        assert_eq!(j.batches(), 2, "the leader's batch, then one of {WRITERS}");
        for r in &results {
            let err = r
                .as_ref()
                .expect_err("answered as stored after a failed flush");
            assert!(err.to_string().contains("fdatasync"), "{err}");
        }
        assert_eq!(j.lines(), 1);
        j.append(&["after 2"]).unwrap();
        let c = Journal::read(&path).unwrap();
        assert_eq!(c.records, strings(&["kept 1", "after 2"]));
        assert_eq!(c.skipped, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A torn append the writer could not cut back at once is cut before the
    /// next write: the next batch never continues the torn line.
    #[test]
    fn a_torn_tail_left_by_a_failed_append_is_cut_before_the_next_one() {
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &strings(&["kept 1"])).unwrap();
        {
            let mut w = lock(&j.writer);
            let end = w.len;
            w.file
                .as_ref()
                .unwrap()
                .write_all_at(b"0123456789abcdef half a li", end)
                .unwrap();
            w.torn = true;
        }
        j.append(&["next 2"]).unwrap();
        let c = Journal::read(&path).unwrap();
        assert_eq!(c.records, strings(&["kept 1", "next 2"]));
        assert_eq!(c.skipped, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Writers that append while a rewrite runs are neither lost nor
    /// doubled: each lands in the old file before the snapshot (and is then
    /// in the snapshot) or in the new file after it.
    #[test]
    fn a_rewrite_under_concurrent_appends_loses_no_committed_record() {
        use std::collections::BTreeSet;
        let dir = scratch();
        let path = dir.join("journal");
        let j = Journal::create(&path, &[]).unwrap();
        // The store's memory: a record is in it before it is appended.
        let live: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
        const WRITERS: usize = 6;
        const EACH: usize = 150;
        let start = Barrier::new(WRITERS + 1);
        std::thread::scope(|s| {
            for t in 0..WRITERS {
                let (j, live, start) = (&j, &live, &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..EACH {
                        let r = format!("t{t} {i}");
                        live.lock().unwrap().insert(r.clone());
                        j.append(&[&r]).unwrap();
                    }
                });
            }
            start.wait();
            for round in 0..20 {
                j.rewrite(|| {
                    // Forget some entries, as a sweep does.
                    let mut l = live.lock().unwrap();
                    l.retain(|r| !r.ends_with(&format!(" {round}")));
                    l.iter().cloned().collect()
                })
                .unwrap();
            }
        });
        let on_disk: BTreeSet<String> = Journal::read(&path).unwrap().records.into_iter().collect();
        let live = live.into_inner().unwrap();
        assert!(
            live.is_subset(&on_disk),
            "missing after the rewrites: {:?}",
            live.difference(&on_disk).collect::<Vec<_>>()
        );
        assert!(live.len() >= WRITERS * (EACH - 20), "{}", live.len());
        // A fresh rewrite holds exactly the live set.
        j.rewrite(|| live.iter().cloned().collect()).unwrap();
        let c = Journal::read(&path).unwrap();
        assert_eq!(c.records.len(), live.len());
        assert_eq!(j.lines(), live.len());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The in-memory checks of a store are exact only with one owner: a
    /// second open of the same journal is refused until the first is closed.
    #[test]
    fn a_journal_has_one_owner_at_a_time() {
        let dir = scratch();
        let path = dir.join("journal");
        let first = Journal::create(&path, &strings(&["a 1"])).unwrap();
        let err = Journal::create(&path, &[]).unwrap_err();
        assert!(err.to_string().contains("another np-agent"), "{err}");
        assert_eq!(Journal::read(&path).unwrap().records, strings(&["a 1"]));
        drop(first);
        Journal::create(&path, &[]).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compaction_waits_for_enough_dead_lines() {
        assert!(!should_compact(0, 0));
        assert!(!should_compact(COMPACT_SLACK, 0));
        assert!(should_compact(COMPACT_SLACK + 1, 0));
        assert!(!should_compact(2 * 5000, 5000));
        assert!(should_compact(2 * 5000 + 1, 5000));
    }
}
