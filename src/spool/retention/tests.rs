use super::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

const NOW: i64 = 1_800_000_000;
const BSN: &str = "999999151";
const DAY: i64 = 86_400;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "np-retention-{}",
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

fn horizons() -> Horizons {
    Horizons::new(
        Duration::from_secs(30 * 86_400),
        Duration::from_secs(90 * 86_400),
    )
}

fn item(id: &str, kind: &str, give_up_at: Option<i64>) -> Item {
    Item {
        id: id.into(),
        kind: kind.into(),
        partner: "p".into(),
        created_at: NOW - 100 * DAY,
        attempts: 1,
        not_before: NOW - 100 * DAY,
        give_up_at,
        last_error: Some("earlier failure".into()),
        body: json!({"patient": BSN, "raw": "<Bundle>consent of 999999151</Bundle>"}),
    }
}

/// The file of `id` in `done`, as the spool wrote it.
fn done_file(dir: &Path, id: &str) -> String {
    fs::read_to_string(dir.join("spool/done").join(format!("{id}.json"))).unwrap()
}

fn at(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap())
}

fn set_mtime(path: &Path, unix: i64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at(unix))
        .unwrap();
}

#[test]
fn horizons_never_forget_an_item_before_its_content() {
    let h = Horizons::new(Duration::from_secs(60), Duration::from_secs(10));
    assert_eq!((h.content_secs, h.dedupe_secs), (60, 60));
}

#[test]
fn verdicts_by_kind_age_and_give_up_time() {
    let h = horizons();
    let finished = |days: i64| NOW - days * DAY;
    let cases: Vec<(&str, Item, i64, Verdict)> = vec![
        (
            "notify, young",
            item("n", "notify", None),
            finished(29),
            Verdict::Keep,
        ),
        (
            "notify, old",
            item("n", "notify", None),
            finished(30),
            Verdict::Strip,
        ),
        (
            "notify, old, may still be cancelled",
            item("n", "notify", Some(NOW + 1)),
            finished(31),
            Verdict::Keep,
        ),
        (
            "notify, old, no longer cancellable",
            item("n", "notify", Some(NOW)),
            finished(31),
            Verdict::Strip,
        ),
        (
            "notify, past the dedupe horizon, may still be cancelled",
            item("n", "notify", Some(NOW + 1)),
            finished(91),
            Verdict::Keep,
        ),
        (
            "notify, past the dedupe horizon",
            item("n", "notify", Some(NOW)),
            finished(90),
            Verdict::Remove,
        ),
        (
            "pull, young",
            item("p", "pull", None),
            finished(1),
            Verdict::Keep,
        ),
        (
            "pull, old",
            item("p", "pull", None),
            finished(45),
            Verdict::Strip,
        ),
        (
            "mitz, young",
            item("m", "mitz", None),
            finished(0),
            Verdict::Strip,
        ),
        (
            "subscription, young",
            item("s", "mitz-subscribe", None),
            finished(0),
            Verdict::Strip,
        ),
        (
            "mitz, very old",
            item("m", "mitz", None),
            finished(90),
            Verdict::Remove,
        ),
        (
            "stub, within the dedupe horizon",
            stub(&item("m", "mitz", None), finished(89)),
            NOW,
            Verdict::Keep,
        ),
        (
            "stub, past it (the file time does not count)",
            stub(&item("m", "mitz", None), finished(90)),
            NOW,
            Verdict::Remove,
        ),
    ];
    for (what, item, file_time, want) in cases {
        assert_eq!(judge(&item, file_time, &h, NOW), want, "{what}");
    }
}

#[test]
fn a_stub_keeps_identity_and_hash_and_no_content() {
    let full = item("mitz-abc", "mitz", Some(NOW + 5));
    let s = stub(&full, NOW - 3);
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains(BSN) && !text.contains("Bundle"), "{text}");
    assert_eq!(
        (
            &s.id[..],
            &s.kind[..],
            &s.partner[..],
            s.created_at,
            s.attempts
        ),
        ("mitz-abc", "mitz", "p", full.created_at, 1)
    );
    assert_eq!(
        (s.give_up_at, s.last_error.as_deref()),
        (Some(NOW + 5), None)
    );
    let hash = ring::digest::digest(
        &ring::digest::SHA256,
        &serde_json::to_vec(&full.body).unwrap(),
    );
    assert_eq!(
        Stub::of(&s),
        Some(Stub {
            finished_at: NOW - 3,
            sha256: crate::util::b64::hex(hash.as_ref()),
        })
    );
    assert_eq!(Stub::of(&full), None);
    // A body that merely has the key is no stub.
    let mut odd = full.clone();
    odd.body = json!({"finished": {"finished_at": 1, "sha256": "x"}, "patient": BSN});
    assert_eq!(Stub::of(&odd), None);
    // A stub that finishes again stays as it is.
    assert!(matches!(done_form(&s, NOW), Cow::Borrowed(_)));
}

#[test]
fn completed_work_keeps_content_only_where_it_is_read_later() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    for (id, kind) in [
        ("mitz-1", "mitz"),
        ("sub-1", "mitz-subscribe"),
        ("nvi-1", "nvi-register"),
        ("cancel-1", "cancel"),
        ("notify-1", "notify"),
        ("pull-1", "pull"),
    ] {
        assert!(spool.enqueue(&item(id, kind, None)).unwrap());
        let claimed = spool.claim(id).unwrap();
        spool.complete(&claimed).unwrap();
        let text = done_file(&d.0, id);
        let kept = KEPT_AFTER_DONE.contains(&kind);
        assert_eq!(text.contains(BSN), kept, "{kind}: {text}");
        assert_eq!(
            Stub::of(&spool.load(State::Done, id).unwrap()).is_some(),
            !kept,
            "{kind}"
        );
        // The same work again is still recognised.
        assert!(!spool.enqueue(&item(id, kind, None)).unwrap(), "{kind}");
    }
}

#[test]
fn pruning_strips_then_forgets_and_the_same_work_is_new_again() {
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    let done = d.0.join("spool/done");
    // `complete` dates a stub by the clock.
    let now = crate::util::time::now_unix();
    for id in ["notify-young", "notify-old", "notify-ancient", "mitz-1"] {
        let kind = id.split('-').next().unwrap();
        spool.enqueue(&item(id, kind, None)).unwrap();
        let claimed = spool.claim(id).unwrap();
        spool.complete(&claimed).unwrap();
    }
    set_mtime(&done.join("notify-young.json"), now - DAY);
    set_mtime(&done.join("notify-old.json"), now - 40 * DAY);
    set_mtime(&done.join("notify-ancient.json"), now - 95 * DAY);
    // Not an item: never touched.
    fs::write(done.join("notes.txt"), b"x").unwrap();
    let h = horizons();

    let first = spool.prune(&h, now).unwrap();
    assert_eq!(
        first,
        Pruned {
            stripped: 1,
            removed: 1,
            kept: 2
        }
    );
    assert!(done_file(&d.0, "notify-young").contains(BSN));
    let old = spool.load(State::Done, "notify-old").unwrap();
    assert_eq!(
        Stub::of(&old).map(|s| s.finished_at),
        Some(now - 40 * DAY),
        "the finish time is the file's, not the pruning's"
    );
    assert!(!done_file(&d.0, "notify-old").contains(BSN));
    assert_eq!(spool.find("notify-ancient"), None);
    assert!(done.join("notes.txt").exists());

    // Nothing more to do at the same time.
    let again = spool.prune(&h, now).unwrap();
    assert_eq!((again.stripped, again.removed, again.kept), (0, 0, 3));
    assert!(!spool.enqueue(&item("notify-old", "notify", None)).unwrap());

    // Once the dedupe horizon has passed, the ids are forgotten: the same
    // work is new work.
    let later = now + 91 * DAY;
    assert_eq!(spool.prune(&h, later).unwrap().removed, 3);
    assert_eq!(spool.sizes().unwrap()[0], (State::Done, 0));
    assert!(spool.enqueue(&item("notify-old", "notify", None)).unwrap());
    assert!(spool.enqueue(&item("mitz-1", "mitz", None)).unwrap());
}

#[test]
fn a_full_item_of_a_kind_that_keeps_nothing_is_stripped_at_once() {
    // A `mitz` item finished before its content was dropped on completion.
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    let full = item("mitz-2", "mitz", None);
    let path = d.0.join("spool/done/mitz-2.json");
    fs::write(&path, serde_json::to_vec(&full).unwrap()).unwrap();
    set_mtime(&path, NOW - 60);
    assert_eq!(spool.prune(&horizons(), NOW).unwrap().stripped, 1);
    assert!(!done_file(&d.0, "mitz-2").contains(BSN));
    assert_eq!(
        Stub::of(&spool.load(State::Done, "mitz-2").unwrap()).map(|s| s.finished_at),
        Some(NOW - 60)
    );
}

/// 100,000 finished items, one per simulated second, pruned every 2,000
/// with horizons of 1,000 s (content) and 3,000 s (identity): the `done`
/// folder, what `np_spool_items{state="done"}` reports, holds no more than
/// the items of one identity horizon after each pass. The
/// items are written as `Spool::complete` leaves them (their file time the
/// finish time) without an fsync each, which would take the test minutes;
/// pruning runs for real.
#[test]
fn done_stays_bounded_over_a_hundred_thousand_items() {
    const ITEMS: i64 = 100_000;
    const EVERY: i64 = 2_000;
    let d = Dir::new();
    let (spool, _) = Spool::open(&d.0).unwrap();
    let done = d.0.join("spool/done");
    let h = Horizons::new(Duration::from_secs(1_000), Duration::from_secs(3_000));
    // One item a second: after a pass, those of one identity horizon.
    let bound = usize::try_from(h.dedupe_secs).unwrap();
    let start = NOW - ITEMS;
    let (mut most, mut total) = (0, Pruned::default());
    for i in 0..ITEMS {
        let t = start + i;
        // Mostly kinds that keep nothing; one in 250 a notification.
        let (kind, id) = if i % 250 == 0 {
            ("notify", format!("notify-{i}"))
        } else {
            ("mitz", format!("mitz-{i}"))
        };
        let mut it = item(&id, kind, Some(t + 500));
        it.created_at = t;
        let mut file = fs::File::create(done.join(format!("{id}.json"))).unwrap();
        file.write_all(&serde_json::to_vec(&*done_form(&it, t)).unwrap())
            .unwrap();
        file.set_modified(at(t)).unwrap();
        if (i + 1) % EVERY == 0 {
            let p = spool.prune(&h, t).unwrap();
            total.stripped += p.stripped;
            total.removed += p.removed;
            let (state, n) = spool.sizes().unwrap()[0];
            assert_eq!(state, State::Done);
            assert!(
                n <= bound,
                "{n} items in done after {} (bound {bound})",
                i + 1
            );
            most = most.max(n);
        }
    }
    let left = spool.sizes().unwrap()[0].1;
    assert!(most > usize::try_from(h.dedupe_secs).unwrap() / 2, "{most}");
    assert_eq!(
        total.removed + left,
        usize::try_from(ITEMS).unwrap(),
        "every item is removed once or still there"
    );
    // Every notification older than the content horizon was stripped.
    assert!(total.stripped >= usize::try_from((ITEMS - 1_000) / 250).unwrap() - 8);
    for id in spool.ids(State::Done).unwrap() {
        let text = done_file(&d.0, &id);
        let age = NOW - 1 - spool.load(State::Done, &id).unwrap().created_at;
        assert!(
            !text.contains(BSN) || (id.starts_with("notify-") && age < 1_000 + EVERY),
            "{id} keeps content at age {age}"
        );
    }
}
