//! The intake batch: the data exports of a pass stored under one barrier,
//! and what a failed barrier or a power cut before it leaves.

use super::*;

/// Temp files (written, never installed) under `dir`, recursively.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            out.extend(temp_files(&path));
        } else if name.starts_with(durable::TEMP_PREFIX) && name.ends_with(durable::TEMP_SUFFIX) {
            out.push(path);
        }
    }
    out
}

fn exports(f: &Fixture, n: usize) {
    for i in 0..n {
        f.export(
            "hospb",
            &format!("c{i}"),
            &bundle(BSN, &[condition(&format!("x{i}"))]),
        );
    }
}

/// More exports than one batch holds: all stored and queued, one audit
/// flush per batch instead of one per export.
#[test]
fn the_exports_of_a_pass_share_a_barrier_per_batch() {
    let mut f = fixture();
    let n = BATCH_FILES + 3;
    exports(&f, n);
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.deferred, r.rejected), (n, 0, 0), "{r:?}");
    assert_eq!(f.audit.flushes(), 2, "one audit flush per batch");
    assert!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
    let queued = f.items(State::Queued);
    assert_eq!(queued.len(), n);
    for i in 0..n {
        let case = f.cases.get("hospb", &format!("c{i}")).unwrap();
        assert!(queued.iter().any(|q| q.id == case.tasks[0].item_id), "c{i}");
    }
    assert!(temp_files(&f.config.state_dir).is_empty());
    assert_eq!(f.scan(NOW + 1), ScanReport::default());
}

/// An export and its `.cancel` in one pass: the batch is finished before
/// the `.cancel` is taken, so it finds the case saved and its
/// notification queued, and cancels it.
#[test]
fn a_cancel_in_the_same_pass_as_its_export_comes_after_it() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[]));
    f.export("hospb", "c2", &bundle(BSN, &[]));
    f.put("hospb", "c1.cancel", b"");
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.cancelled, r.rejected), (2, 1, 0), "{r:?}");
    let c1 = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(c1.status, CaseStatus::Cancelled);
    assert_eq!(f.cases.get("hospb", "c2").unwrap().status, CaseStatus::Live);
    let ids: Vec<String> = f.items(State::Queued).into_iter().map(|i| i.id).collect();
    assert!(
        ids.contains(&cancel_item_id(&c1.tasks[0].task_id)),
        "{ids:?}"
    );
}

/// A failed barrier fails the whole batch: every export stays claimed,
/// nothing is queued or saved, no temp file is left; after the back-off
/// each is stored once.
#[test]
fn a_failed_barrier_leaves_every_export_and_queues_nothing() {
    let mut f = fixture();
    exports(&f, 5);
    f.state.insecure_test_fail_barriers = 1;
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.deferred), (0, 5), "{r:?}");
    assert_eq!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).len(), 5);
    assert!(f.items(State::Queued).is_empty(), "nothing queued");
    for i in 0..5 {
        let c = format!("c{i}");
        assert!(f.cases.get("hospb", &c).is_none(), "{c} not indexed");
        assert!(
            !f.config
                .state_dir
                .join("cases/hospb")
                .join(&c)
                .join("case.json")
                .exists(),
            "{c} not saved"
        );
    }
    assert!(temp_files(&f.config.state_dir).is_empty());
    assert_eq!(f.audit.flushes(), 0, "nothing audited as stored");
    // The back-off of a transient failure.
    assert_eq!(f.scan(NOW + 1).deferred, 5);
    let r = f.scan(NOW + DEFER_FIRST_SECS);
    assert_eq!((r.accepted, r.deferred), (5, 0), "{r:?}");
    assert_eq!(f.items(State::Queued).len(), 5);
    assert!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
}

/// A power cut after the batch's files were written, before the barrier:
/// nothing is visible under its name, nothing was removed from the outbox;
/// after the restart (stores reopened, their recovery run) every export is
/// stored and notified exactly once.
#[test]
fn a_power_cut_before_the_barrier_loses_nothing_and_sends_nothing_twice() {
    let mut f = fixture();
    f.export("hospb", "old", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan(NOW).accepted, 1);
    exports(&f, 3);
    f.export("hospb", "old", &bundle(BSN, &[condition("b")]));
    let r = f.scan_until(NOW + 1, Step::Staged);
    assert_eq!((r.accepted, r.updated), (0, 0), "{r:?}");
    let claimed = f.outbox("hospb").join(CLAIMED_DIR);
    assert_eq!(f.names(&claimed).len(), 4, "every export still there");
    let state = f.config.state_dir.clone();
    assert!(!temp_files(&state).is_empty(), "written, never flushed");
    assert!(!state.join("cases/hospb/c0/case.json").exists());
    assert!(!state.join("cases/hospb/old/v2.json").exists());
    assert_eq!(f.items(State::Queued).len(), 1, "only the earlier export's");
    // The restart.
    f.cases = CaseStore::open(&state).unwrap();
    f.spool = Spool::open(&state).unwrap().0;
    f.state = ScanState::default();
    assert!(temp_files(&state).is_empty(), "recovery removed them");
    let r = f.scan(NOW + 2);
    assert_eq!(
        (r.accepted, r.updated, r.already_accepted),
        (3, 1, 0),
        "{r:?}"
    );
    assert!(f.names(&claimed).is_empty());
    let old = f.cases.get("hospb", "old").unwrap();
    assert_eq!((old.version, old.tasks.len()), (2, 2));
    let mut ids: Vec<String> = f.items(State::Queued).into_iter().map(|i| i.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "one notification per export: {ids:?}");
    assert_eq!(f.scan(NOW + 3), ScanReport::default());
}
