//! Group commit: many writers, one flush per batch.
//!
//! A writer hands its record to [`GroupCommit::commit`] and returns only
//! once the record is on disk. The first writer to find no flush running
//! becomes the leader: it takes every record queued so far, hands the batch
//! to the flush function (write + `fdatasync`) and reports the one result
//! to every writer of the batch; records queued meanwhile form the next
//! batch. So durability costs one flush per batch, not one per record, and
//! nothing is answered before its batch is on disk: a failed flush fails
//! every writer of that batch, none of them is told it was stored.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::util::durable::DurableError;

/// Writes and flushes one batch, in the order the records were queued.
pub type Flush<T> = Box<dyn Fn(Vec<T>) -> Result<(), String> + Send + Sync>;

/// A record queued by [`GroupCommit::submit`]: [`Ticket::wait`] returns once
/// it is on disk. Dropped unwaited, the record is still written with its
/// batch; only its result is discarded.
#[must_use = "a submitted record is known to be on disk only once its ticket is waited for"]
pub struct Ticket<'a, T> {
    log: &'a GroupCommit<T>,
    seq: u64,
    waited: bool,
}

impl<'a, T> Ticket<'a, T> {
    /// Returns once the record's batch is on disk, or with its error.
    pub fn wait(mut self) -> Result<(), String> {
        self.waited = true;
        self.log.wait_for(self.seq)
    }

    /// The ticket of a record for the file or folder `path`, whose wait
    /// reports a failed batch as a [`DurableError`] of step `step`.
    pub fn at(self, path: &'a Path, step: &'static str) -> Pending<'a, T> {
        Pending {
            path,
            step,
            ticket: self,
        }
    }
}

/// A record queued for the log at `path` ([`Ticket::at`]), on disk once
/// [`Pending::wait`] returns `Ok`. Dropped unwaited, it is still written
/// with its batch.
#[must_use = "a queued record is known to be on disk only once waited for"]
pub struct Pending<'a, T> {
    path: &'a Path,
    step: &'static str,
    ticket: Ticket<'a, T>,
}

impl<T> Pending<'_, T> {
    /// Returns once the record is on disk, or with its batch's error.
    pub fn wait(self) -> Result<(), DurableError> {
        let (path, step) = (self.path, self.step);
        self.ticket.wait().map_err(|reason| DurableError {
            path: path.to_path_buf(),
            step,
            source: std::io::Error::other(reason),
        })
    }
}

impl<T> Drop for Ticket<'_, T> {
    fn drop(&mut self) {
        if !self.waited {
            self.log.abandon(self.seq);
        }
    }
}

/// The commit path of one durable log.
pub struct GroupCommit<T> {
    state: Mutex<State<T>>,
    /// Writers sleep on the condvar of their batch's parity: a finished
    /// batch wakes its own writers and one writer of the next batch (to
    /// lead it), not every writer queued behind it. Records queued while
    /// batch `n` flushes all go in batch `n + 1`, so two suffice.
    done: [Condvar; 2],
    flush: Flush<T>,
}

struct State<T> {
    queue: Vec<(u64, T)>,
    next: u64,
    flushing: bool,
    /// Results of flushed records whose writers have not collected them yet.
    results: HashMap<u64, Result<(), String>>,
    /// Queued records whose tickets were dropped unwaited.
    abandoned: HashSet<u64>,
    batches: u64,
}

impl<T> GroupCommit<T> {
    pub fn new(flush: Flush<T>) -> GroupCommit<T> {
        GroupCommit {
            state: Mutex::new(State {
                queue: Vec::new(),
                next: 0,
                flushing: false,
                results: HashMap::new(),
                abandoned: HashSet::new(),
                batches: 0,
            }),
            done: [Condvar::new(), Condvar::new()],
            flush,
        }
    }

    /// Queues `record` and returns once its batch is on disk, or with the
    /// batch's error.
    pub fn commit(&self, record: T) -> Result<(), String> {
        self.submit(record).wait()
    }

    /// Queues `record` without waiting: a caller with records for several
    /// logs queues them all, then waits for each, so their flushes overlap
    /// (another writer may lead one while this one leads the next) instead
    /// of running one after another.
    pub fn submit(&self, record: T) -> Ticket<'_, T> {
        let mut s = self.lock();
        let seq = s.next;
        s.next += 1;
        s.queue.push((seq, record));
        Ticket {
            log: self,
            seq,
            waited: false,
        }
    }

    fn wait_for(&self, seq: u64) -> Result<(), String> {
        let mut s = self.lock();
        loop {
            if let Some(result) = s.results.remove(&seq) {
                return result;
            }
            if s.flushing {
                // The running flush is batch number `batches`; a record
                // still queued (the queue holds the sequence numbers from
                // `next - queue.len()` up) goes in the one after it.
                let queued = seq >= s.next - s.queue.len() as u64;
                let batch = s.batches + u64::from(queued);
                s = self.done(batch).wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: flush everything queued so far, this record included.
            s.flushing = true;
            let batch = std::mem::take(&mut s.queue);
            drop(s);
            let (seqs, records): (Vec<u64>, Vec<T>) = batch.into_iter().unzip();
            let result = (self.flush)(records);
            s = self.lock();
            s.flushing = false;
            let finished = s.batches;
            s.batches += 1;
            for q in seqs {
                if !s.abandoned.remove(&q) {
                    s.results.insert(q, result.clone());
                }
            }
            self.done(finished).notify_all();
            if !s.queue.is_empty() {
                self.done(finished + 1).notify_one();
            }
        }
    }

    /// A ticket dropped unwaited: its record is still written with its batch,
    /// but nobody collects the result.
    fn abandon(&self, seq: u64) {
        let mut s = self.lock();
        if s.results.remove(&seq).is_none() {
            s.abandoned.insert(seq);
        }
    }

    /// Batches flushed so far (tests, metrics).
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    /// Records queued for the next batch, and whether a flush runs (tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> (usize, bool) {
        let s = self.lock();
        (s.queue.len(), s.flushing)
    }

    /// The condvar the writers of batch number `batch` sleep on.
    fn done(&self, batch: u64) -> &Condvar {
        &self.done[(batch % 2) as usize]
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn one_writer_one_batch() {
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let f = flushed.clone();
        let g = GroupCommit::new(Box::new(move |batch: Vec<u32>| {
            f.lock().unwrap().push(batch);
            Ok(())
        }));
        g.commit(1).unwrap();
        g.commit(2).unwrap();
        assert_eq!(*flushed.lock().unwrap(), vec![vec![1], vec![2]]);
        assert_eq!(g.batches(), 2);
    }

    /// While the first flush runs, the others queue; they all go in the
    /// second batch, in the order queued, and each is told it is stored.
    #[test]
    fn writers_queued_during_a_flush_share_the_next_one() {
        const WRITERS: usize = 12;
        let started = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (s2, r2, z2) = (started.clone(), release.clone(), sizes.clone());
        let first = Arc::new(AtomicUsize::new(0));
        let g = Arc::new(GroupCommit::new(Box::new(move |batch: Vec<usize>| {
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                s2.wait(); // the leader is flushing…
                r2.wait(); // …until every other writer has queued
            }
            z2.lock().unwrap().push(batch);
            Ok(())
        })));
        let leader = {
            let g = g.clone();
            std::thread::spawn(move || g.commit(0))
        };
        started.wait();
        let writers: Vec<_> = (1..=WRITERS)
            .map(|i| {
                let g = g.clone();
                std::thread::spawn(move || g.commit(i))
            })
            .collect();
        // Every writer is queued (or waiting to queue behind the lock).
        while g.lock().queue.len() < WRITERS {
            std::thread::yield_now();
        }
        release.wait();
        assert_eq!(leader.join().unwrap(), Ok(()));
        for w in writers {
            assert_eq!(w.join().unwrap(), Ok(()));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert_eq!(sizes[0], vec![0]);
        let mut second = sizes[1].clone();
        second.sort_unstable();
        assert_eq!(second, (1..=WRITERS).collect::<Vec<_>>());
        assert!(g.lock().results.is_empty(), "every result collected");
    }

    /// A flush that fails (a write reached the page cache, the sync did not
    /// succeed) fails every writer of its batch; the next batch is flushed
    /// on its own and succeeds.
    #[test]
    fn a_failed_flush_fails_its_whole_batch_and_only_it() {
        let release = Arc::new(Barrier::new(2));
        let r2 = release.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let g = Arc::new(GroupCommit::new(Box::new(
            move |batch: Vec<&'static str>| match c2.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    r2.wait();
                    Ok(())
                }
                1 => Err(format!(
                    "fdatasync failed after writing {} records",
                    batch.len()
                )),
                _ => Ok(()),
            },
        )));
        let leader = {
            let g = g.clone();
            std::thread::spawn(move || g.commit("first"))
        };
        while !g.lock().flushing {
            std::thread::yield_now();
        }
        let doomed: Vec<_> = (0..5)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.commit("second batch"))
            })
            .collect();
        while g.lock().queue.len() < 5 {
            std::thread::yield_now();
        }
        release.wait();
        assert_eq!(leader.join().unwrap(), Ok(()));
        for d in doomed {
            assert_eq!(
                d.join().unwrap(),
                Err("fdatasync failed after writing 5 records".to_string())
            );
        }
        assert_eq!(g.commit("third"), Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A submitted record goes with the next batch, whoever leads it: the
    /// submitter's wait then finds it stored without a flush of its own.
    #[test]
    fn a_submitted_record_rides_with_another_writers_flush() {
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let f = flushed.clone();
        let g = GroupCommit::new(Box::new(move |batch: Vec<u32>| {
            f.lock().unwrap().push(batch);
            Ok(())
        }));
        let ticket = g.submit(1);
        g.commit(2).unwrap();
        assert_eq!(ticket.wait(), Ok(()));
        assert_eq!(*flushed.lock().unwrap(), vec![vec![1, 2]]);
        assert_eq!(g.batches(), 1);
    }

    /// Writers wake by their batch's parity: under many writers with slow
    /// and failing flushes, every commit returns (no writer sleeps through
    /// the batch that holds its record, nor waits for a leader that is
    /// never woken) with its own batch's result, and each record is flushed
    /// exactly once.
    #[test]
    fn many_writers_each_get_their_own_batchs_result() {
        const WRITERS: usize = 16;
        const EACH: usize = 300;
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let f = flushed.clone();
        let g = Arc::new(GroupCommit::new(Box::new(move |batch: Vec<usize>| {
            std::thread::sleep(std::time::Duration::from_micros(
                (batch.len() * 37 % 200) as u64,
            ));
            f.lock().unwrap().extend(batch.iter().copied());
            // A batch holding a multiple of 97 fails as a whole.
            if batch.iter().any(|r| r % 97 == 0) {
                Err(format!("{batch:?}"))
            } else {
                Ok(())
            }
        })));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let g = g.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let record = w * EACH + i;
                        match g.commit(record) {
                            Ok(()) => assert!(record % 97 != 0, "{record} was stored"),
                            Err(batch) => assert!(
                                batch
                                    .trim_matches(['[', ']'])
                                    .split(", ")
                                    .any(|r| r == record.to_string()),
                                "{record} failed with another batch: {batch}"
                            ),
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let mut all = flushed.lock().unwrap().clone();
        all.sort_unstable();
        assert_eq!(all, (0..WRITERS * EACH).collect::<Vec<_>>());
        assert!(
            g.batches() < (WRITERS * EACH) as u64,
            "writers shared batches"
        );
    }

    /// One writer with records for two logs queues both, then waits for
    /// each: both are flushed, each log once.
    #[test]
    fn records_for_two_logs_are_queued_then_waited_for() {
        let logs: Vec<Arc<Mutex<Vec<Vec<&str>>>>> = (0..2).map(|_| Arc::default()).collect();
        let make = |l: Arc<Mutex<Vec<Vec<&'static str>>>>| {
            GroupCommit::new(Box::new(move |batch: Vec<&'static str>| {
                l.lock().unwrap().push(batch);
                Ok(())
            }))
        };
        let (a, b) = (make(logs[0].clone()), make(logs[1].clone()));
        let (ta, tb) = (a.submit("jti"), b.submit("token"));
        assert_eq!(ta.wait(), Ok(()));
        assert_eq!(tb.wait(), Ok(()));
        assert_eq!(*logs[0].lock().unwrap(), vec![vec!["jti"]]);
        assert_eq!(*logs[1].lock().unwrap(), vec![vec!["token"]]);
    }

    /// A ticket dropped unwaited still has its record written with the next
    /// batch, and leaves no result behind; a failure of that batch reaches
    /// only the writers that wait.
    #[test]
    fn a_dropped_ticket_is_written_and_forgotten() {
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let f = flushed.clone();
        let g = GroupCommit::new(Box::new(move |batch: Vec<u32>| {
            f.lock().unwrap().push(batch.clone());
            if batch.contains(&3) {
                Err("fdatasync failed".to_string())
            } else {
                Ok(())
            }
        }));
        drop(g.submit(1));
        g.commit(2).unwrap();
        assert_eq!(*flushed.lock().unwrap(), vec![vec![1, 2]]);
        drop(g.submit(3));
        assert_eq!(g.commit(4), Err("fdatasync failed".to_string()));
        // Dropped after its batch was flushed: the stored result goes too.
        let late = g.submit(5);
        g.commit(6).unwrap();
        drop(late);
        let s = g.lock();
        assert!(s.results.is_empty(), "{:?}", s.results);
        assert!(s.abandoned.is_empty());
    }
}
