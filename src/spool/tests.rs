use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "np-spool-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn item(id: &str, partner: &str, created: i64) -> Item {
    Item {
        id: id.into(),
        kind: "notify".into(),
        partner: partner.into(),
        created_at: created,
        attempts: 0,
        not_before: created,
        give_up_at: None,
        last_error: None,
        body: serde_json::json!({"case": id}),
    }
}

fn files(spool: &Spool, s: State) -> Vec<String> {
    spool.ids(s).unwrap()
}

#[test]
fn lifecycle_and_idempotent_enqueue() {
    let d = Dir::new();
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!(rec, Recovery::default());
    assert!(spool.enqueue(&item("a", "p", 10)).unwrap());
    assert!(
        !spool.enqueue(&item("a", "p", 10)).unwrap(),
        "same id twice"
    );
    let claimed = spool.claim("a").unwrap();
    assert_eq!(spool.find("a"), Some(State::InFlight));
    assert!(
        !spool.enqueue(&item("a", "p", 10)).unwrap(),
        "not while in flight"
    );
    let mut failed = claimed.clone();
    failed.attempts = 1;
    failed.not_before = 50;
    failed.last_error = Some("503".into());
    spool.retry(&failed).unwrap();
    assert_eq!(spool.find("a"), Some(State::Retry));
    assert!(spool.due(49).unwrap().is_empty());
    assert_eq!(spool.due(50).unwrap()[0].attempts, 1);
    let again = spool.claim("a").unwrap();
    spool.complete(&again).unwrap();
    assert_eq!(spool.find("a"), Some(State::Done));
    assert!(
        !spool.enqueue(&item("a", "p", 10)).unwrap(),
        "not after done either"
    );
    assert!(spool.enqueue(&item("../x", "p", 1)).is_err());
    assert!(spool.claim("missing").is_err());
}

#[test]
fn due_items_come_oldest_first() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.enqueue(&item("c", "p", 30)).unwrap();
    spool.enqueue(&item("a", "p", 10)).unwrap();
    spool.enqueue(&item("b", "p", 20)).unwrap();
    let ids: Vec<String> = spool.due(100).unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn recovery_requeues_in_flight_and_removes_temp_files() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.enqueue(&item("a", "p", 1)).unwrap();
    spool.claim("a").unwrap();
    // A crash inside write_atomic leaves a temp file.
    fs::write(
        d.0.join("spool/queued/.np-b.json.0011223344ff.tmp"),
        b"{\"id\":",
    )
    .unwrap();
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!((rec.requeued, rec.temp_files), (1, 1));
    assert_eq!(files(&spool, State::Queued), ["a"]);
    assert!(files(&spool, State::InFlight).is_empty());
    assert_eq!(fs::read_dir(d.0.join("spool/queued")).unwrap().count(), 1);
    let a = spool.load(State::Queued, "a").unwrap();
    assert_eq!(a.not_before, 1, "due at once");
}

/// Regression: an item interrupted mid-attempt went back to the queue with
/// `attempts` 0, so a notification whose POST had reached the partner just
/// before a crash looked never tried, and a cancellation of its case was
/// skipped although the partner had the Task.
#[test]
fn an_attempt_interrupted_by_a_crash_counts_as_an_attempt() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.enqueue(&item("a", "p", 1)).unwrap();
    spool.claim("a").unwrap();
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!(rec.requeued, 1);
    let a = spool.load(State::Queued, "a").unwrap();
    assert_eq!(a.attempts, 1);
    assert_eq!(a.last_error.as_deref(), Some(INTERRUPTED));
    // A crash inside that requeue leaves both copies: the queued one wins,
    // and the attempt is counted once.
    let mut twice = a.clone();
    twice.attempts = 0;
    spool.write(State::InFlight, &twice).unwrap();
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!((rec.duplicates, rec.requeued), (1, 0));
    assert_eq!(spool.load(State::Queued, "a").unwrap().attempts, 1);
}

#[test]
fn waiting_is_not_an_attempt() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    let mut a = item("a", "p", 1_000);
    a.give_up_at = Some(5_000);
    spool.enqueue(&a).unwrap();
    let wait = |after| Outcome::Wait {
        reason: "waiting for notify-x".into(),
        after_secs: after,
    };
    for (now, after, due) in [(1_000, 7, 1_007), (1_007, 0, 1_008), (1_008, 99_999, 1_909)] {
        let it = spool.claim("a").unwrap();
        assert_eq!(
            settle(&spool, it, wait(after), now, 3_600, 0).unwrap(),
            State::Retry
        );
        let it = spool.load(State::Retry, "a").unwrap();
        assert_eq!((it.attempts, it.not_before), (0, due), "{now} + {after}");
        assert_eq!(it.last_error.as_deref(), Some("waiting for notify-x"));
    }
    // Waiting past give_up_at ends it, saying what it waited for.
    let it = spool.claim("a").unwrap();
    assert_eq!(
        settle(&spool, it, wait(5), 5_000, 3_600_000, 0).unwrap(),
        State::Dead
    );
    assert_eq!(
        spool.load(State::Dead, "a").unwrap().last_error.as_deref(),
        Some("gave up while waiting: waiting for notify-x")
    );
}

#[test]
fn recovery_resolves_every_half_finished_move() {
    // Each pair: (the further state, the stale one) as a crash between
    // "write the new state" and "remove the old copy" leaves them.
    let pairs = [
        (State::Retry, State::InFlight),
        (State::Done, State::InFlight),
        (State::Dead, State::InFlight),
        (State::Queued, State::InFlight),
        (State::Done, State::Queued),
        (State::Done, State::Retry),
        (State::Dead, State::Retry),
    ];
    for (keep, stale) in pairs {
        let d = Dir::new();
        let (spool, _) = Spool::open(&d.0).unwrap();
        let mut newer = item("x", "p", 1);
        newer.attempts = 3;
        spool.write(keep, &newer).unwrap();
        spool.write(stale, &item("x", "p", 1)).unwrap();
        drop(spool);
        let (spool, rec) = Spool::open(&d.0).unwrap();
        assert_eq!(rec.duplicates, 1, "{keep:?} + {stale:?}");
        assert_eq!(spool.find("x"), Some(keep), "{keep:?} + {stale:?}");
        assert_eq!(spool.load(keep, "x").unwrap().attempts, 3);
        let total: usize = State::ALL.iter().map(|s| files(&spool, *s).len()).sum();
        assert_eq!(total, 1);
    }
}

#[test]
fn recovery_moves_truncated_items_aside_instead_of_losing_them() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    let good = serde_json::to_vec(&item("whole", "p", 1)).unwrap();
    // Every truncated prefix of a valid item, as a disk without fsync could leave it.
    for cut in [0, 1, good.len() / 2, good.len() - 1] {
        let id = format!("cut{cut}");
        let mut bytes = serde_json::to_vec(&item(&id, "p", 1)).unwrap();
        bytes.truncate(cut.min(bytes.len() - 1));
        fs::write(d.0.join(format!("spool/queued/{id}.json")), bytes).unwrap();
    }
    fs::write(d.0.join("spool/queued/whole.json"), &good).unwrap();
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!(rec.corrupt, 4);
    assert_eq!(files(&spool, State::Queued), ["whole"]);
    let dead: Vec<String> = fs::read_dir(d.0.join("spool/dead"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dead.len(), 4);
    assert!(dead.iter().all(|n| n.ends_with(".json.corrupt")));
}

#[test]
fn counts_oldest_and_requeue_dead() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.enqueue(&item("a", "p", 100)).unwrap();
    spool.enqueue(&item("b", "q", 200)).unwrap();
    spool.enqueue(&item("c", "p", 300)).unwrap();
    let mut b = spool.claim("b").unwrap();
    b.last_error = Some("gave up".into());
    spool.bury(&b).unwrap();
    let mut c = spool.claim("c").unwrap();
    c.last_error = Some("gave up".into());
    spool.bury(&c).unwrap();
    let counts = spool.counts(1_000).unwrap();
    assert_eq!(
        (
            counts.queued,
            counts.in_flight,
            counts.retry,
            counts.done,
            counts.dead
        ),
        (1, 0, 0, 0, 2)
    );
    assert_eq!(counts.oldest_age_s, 900);
    assert_eq!(spool.requeue_dead(Some("q"), 1_000).unwrap(), 1);
    assert_eq!(spool.load(State::Queued, "b").unwrap().attempts, 0);
    assert_eq!(spool.requeue_dead(None, 1_000).unwrap(), 1);
    assert_eq!(files(&spool, State::Dead).len(), 0);
}

#[test]
fn backoff_is_bounded_jittered_and_grows() {
    assert_eq!(backoff_secs(1, 5, 900, 0), 1, "at least a second");
    assert!(backoff_secs(1, 5, 900, u32::MAX) <= 5);
    assert_eq!(backoff_secs(3, 5, 900, 20), 20, "within 5*4");
    assert_eq!(
        backoff_secs(3, 5, 900, 21),
        1,
        "21 mod 21 is 0, raised to the 1 s floor"
    );
    for n in 1..40 {
        for r in [0u32, 7, 1_000, u32::MAX] {
            assert!(backoff_secs(n, 5, 900, r) <= 900);
        }
    }
    assert_eq!(backoff_secs(20, 5, 900, 900), 900);
}

#[test]
fn settle_applies_backoff_retry_after_and_give_up() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.enqueue(&item("a", "p", 1_000)).unwrap();
    let it = spool.claim("a").unwrap();
    let retry = |reason: &str, after| Outcome::Retry {
        reason: reason.into(),
        retry_after: after,
    };
    assert_eq!(
        settle(&spool, it, retry("503", Some(120)), 1_000, 3_600, 0).unwrap(),
        State::Retry
    );
    let it = spool.load(State::Retry, "a").unwrap();
    assert_eq!(
        (it.attempts, it.not_before),
        (1, 1_120),
        "Retry-After honoured over a shorter back-off"
    );
    assert_eq!(it.last_error.as_deref(), Some("503"));
    let it = spool.claim("a").unwrap();
    assert_eq!(
        settle(&spool, it, retry("timeout", None), 1_200, 3_600, 3).unwrap(),
        State::Retry
    );
    let it = spool.load(State::Retry, "a").unwrap();
    assert_eq!(it.not_before, 1_203, "jittered back-off");
    // Past the maximum age: dead, with the reason.
    let it = spool.claim("a").unwrap();
    assert_eq!(
        settle(&spool, it, retry("timeout", None), 1_000 + 3_600, 3_600, 3).unwrap(),
        State::Dead
    );
    let it = spool.load(State::Dead, "a").unwrap();
    assert_eq!(
        it.last_error.as_deref(),
        Some("gave up after 3 attempts: timeout")
    );
    // give_up_at (restriction.period.end) ends it too.
    let mut b = item("b", "p", 1_000);
    b.give_up_at = Some(1_500);
    spool.enqueue(&b).unwrap();
    let it = spool.claim("b").unwrap();
    assert_eq!(
        settle(&spool, it, retry("500", None), 1_500, 999_999, 0).unwrap(),
        State::Dead
    );
    spool.enqueue(&item("c", "p", 1)).unwrap();
    let it = spool.claim("c").unwrap();
    assert_eq!(
        settle(&spool, it, Outcome::Done, 2, 10, 0).unwrap(),
        State::Done
    );
    spool.enqueue(&item("d", "p", 1)).unwrap();
    let it = spool.claim("d").unwrap();
    assert_eq!(
        settle(
            &spool,
            it,
            Outcome::Dead("400 invalid Task".into()),
            2,
            10,
            0
        )
        .unwrap(),
        State::Dead
    );
}

#[test]
fn sizes_count_folders_and_due_and_next_names_the_next_wake() {
    let dir = Dir::new();
    let (spool, _) = Spool::open(&dir.0).unwrap();
    let mut later = item("later", "p", 100);
    later.not_before = 500;
    let mut soon = item("soon", "p", 100);
    soon.not_before = 300;
    spool.enqueue(&item("now", "p", 100)).unwrap();
    spool.enqueue(&later).unwrap();
    spool.enqueue(&soon).unwrap();
    let claimed = spool.claim("now").unwrap();
    let (due, next) = spool.due_and_next(200).unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(300));
    let (due, next) = spool.due_and_next(300).unwrap();
    assert_eq!(
        due.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["soon"]
    );
    assert_eq!(next, Some(500));
    fs::write(dir.0.join("spool/queued/.x.tmp"), b"half").unwrap();
    let sizes = spool.sizes().unwrap();
    assert_eq!(
        sizes,
        [
            (State::Done, 0),
            (State::Dead, 0),
            (State::Retry, 0),
            (State::Queued, 2),
            (State::InFlight, 1)
        ]
    );
    spool.complete(&claimed).unwrap();
    assert_eq!(spool.sizes().unwrap()[0], (State::Done, 1));
}

/// `waiting` agrees with `due_and_next` through every move, including
/// moves made by another `Spool` on the same folder (`np-agent retry-dead`
/// beside the daemon), and reads each file only the first time.
#[test]
fn waiting_follows_every_move_and_reads_each_file_once() {
    let dir = Dir::new();
    let (spool, _) = Spool::open(&dir.0).unwrap();
    let ids = |w: &[Waiting]| w.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    let same = |now: i64| {
        let (w, wn) = spool.waiting(now).unwrap();
        let (d, dn) = spool.due_and_next(now).unwrap();
        assert_eq!(ids(&w), d.iter().map(|i| i.id.clone()).collect::<Vec<_>>());
        assert_eq!(wn, dn);
        ids(&w)
    };
    let mut b = item("b", "p", 100);
    b.not_before = 150;
    spool.enqueue(&item("a", "p", 90)).unwrap();
    spool.enqueue(&b).unwrap();
    spool.enqueue(&item("c", "q", 95)).unwrap();
    assert_eq!(same(120), ["a", "c"]);
    assert_eq!(same(150), ["a", "c", "b"]);
    // Claimed: gone; retried with a later time: back under retry.
    let mut a = spool.claim("a").unwrap();
    assert_eq!(same(150), ["c", "b"]);
    a.not_before = 400;
    spool.retry(&a).unwrap();
    assert_eq!(same(150), ["c", "b"]);
    assert_eq!(spool.waiting(150).unwrap().1, Some(400));
    assert_eq!(same(400), ["c", "b", "a"]);
    // Dead, then requeued by another process's Spool.
    let c = spool.claim("c").unwrap();
    spool.bury(&c).unwrap();
    assert_eq!(same(400), ["b", "a"]);
    let other = Spool::at(&dir.0).unwrap();
    assert_eq!(other.requeue_dead(None, 300).unwrap(), 1);
    assert_eq!(same(400), ["b", "c", "a"]);
    // A file that left the folder behind our back is forgotten.
    fs::remove_file(dir.0.join("spool/queued/b.json")).unwrap();
    assert_eq!(same(400), ["c", "a"]);
    // Once seen, an entry comes from memory: a file made unreadable in
    // place (which the spool itself never does) is not read again.
    fs::write(dir.0.join("spool/queued/c.json"), b"{").unwrap();
    assert_eq!(ids(&spool.waiting(400).unwrap().0), ["c", "a"]);
    // A fresh Spool reads it, and logs it as unreadable instead of failing.
    let fresh = Spool::at(&dir.0).unwrap();
    assert_eq!(ids(&fresh.waiting(400).unwrap().0), ["a"]);
}

/// A power cut between the rename into `queued` and the folder's fsync:
/// the enqueue fails, and enqueueing the same item again answers only
/// after an fsync of the folder has succeeded.
#[test]
fn an_enqueue_whose_folder_fsync_failed_is_never_answered_as_stored() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    spool.insecure_test_fail_folder_syncs(State::Queued, 2);
    let err = spool.enqueue(&item("a", "p", 10)).unwrap_err();
    assert!(err.to_string().contains("fsync directory"), "{err}");
    // The file reached the folder (the page cache) but not the disk: a
    // second enqueue must not call it stored before the folder is flushed.
    assert_eq!(spool.find("a"), Some(State::Queued));
    assert!(spool.enqueue(&item("a", "p", 10)).is_err());
    let syncs = spool.folder_syncs();
    assert!(!spool.enqueue(&item("a", "p", 10)).unwrap());
    assert_eq!(spool.folder_syncs(), syncs + 1);
}

/// A claim whose folder fsync failed is not handed to a worker; the
/// item is requeued at the next start, the attempt not counted as made.
#[test]
fn a_claim_whose_folder_fsync_failed_is_not_worked_on() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    assert!(spool.enqueue(&item("a", "p", 10)).unwrap());
    spool.insecure_test_fail_folder_syncs(State::InFlight, 1);
    assert!(spool.claim("a").is_err());
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!(rec.requeued, 1);
    assert_eq!(spool.find("a"), Some(State::Queued));
}

/// Finishing removes the in-flight copy without a flush of its own; a
/// crash that loses that removal leaves both copies, and recovery keeps
/// the finished one.
#[test]
fn a_lost_removal_of_the_in_flight_copy_is_resolved_by_recovery() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    assert!(spool.enqueue(&item("a", "p", 10)).unwrap());
    let claimed = spool.claim("a").unwrap();
    spool.complete(&claimed).unwrap();
    assert_eq!(files(&spool, State::InFlight), Vec::<String>::new());
    // The removal did not reach the disk.
    let stale = serde_json::to_vec(&claimed).unwrap();
    fs::write(d.0.join("spool/in-flight/a.json"), stale).unwrap();
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!((rec.duplicates, rec.requeued), (1, 0));
    assert_eq!(spool.find("a"), Some(State::Done));
}

/// Many writers at once: every item each was told is stored is there
/// after reopening, in the state it was last moved to.
#[test]
fn concurrent_writers_lose_no_item() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    std::thread::scope(|s| {
        for t in 0..6 {
            let spool = &spool;
            s.spawn(move || {
                for i in 0..20 {
                    let id = format!("t{t}-{i}");
                    assert!(spool.enqueue(&item(&id, "p", 10)).unwrap());
                    if i % 2 == 0 {
                        let c = spool.claim(&id).unwrap();
                        spool.complete(&c).unwrap();
                    }
                }
            });
        }
    });
    drop(spool);
    let (spool, rec) = Spool::open(&d.0).unwrap();
    assert_eq!(rec, Recovery::default());
    assert_eq!(files(&spool, State::Queued).len(), 60);
    assert_eq!(files(&spool, State::Done).len(), 60);
}
