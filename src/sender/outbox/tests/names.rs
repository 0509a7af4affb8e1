//! Files whose names the agent cannot keep (not UTF-8, control characters,
//! too long for the suffixes of `.rejected`), and quarantines that fail.

use super::*;
use crate::sender::export::MAX_KEPT_NAME;
use std::os::unix::ffi::OsStringExt;

/// Writes a file with a raw (maybe not UTF-8) name into `dir`.
fn put_raw(dir: &Path, name: &[u8], bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(OsStr::from_bytes(name));
    fs::write(&p, bytes).unwrap();
    p
}

/// Everything in `dir`, names as raw bytes, sorted.
fn raw_names(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().into_vec()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn generated(raw: &[u8]) -> String {
    let name = RejectedName::for_file(raw);
    assert!(name.is_generated(), "{}", export::escape_name(raw));
    name.as_str().to_string()
}

#[test]
fn a_name_that_is_not_utf8_is_quarantined_under_a_generated_name() {
    let mut f = fixture();
    let raw: &[u8] = b"\xff\xfec\\1\n.json";
    put_raw(&f.outbox("hospb"), raw, b"{}");
    let r = f.scan(NOW);
    assert_eq!((r.rejected, r.deferred), (1, 0));
    let stored = generated(raw);
    assert!(stored.starts_with("bad-name-"), "{stored}");
    assert_eq!(
        f.names(&f.outbox("hospb").join(REJECTED_DIR)),
        vec![stored.clone(), format!("{stored}.error.txt")]
    );
    assert_eq!(
        f.error_text("hospb", &stored),
        "\\xff\\xfec\\\\1\\x0a.json: bad case-id: the name before the extension must match [A-Za-z0-9._-]{1,64}\n"
    );
    assert_eq!(
        fs::read(f.outbox("hospb").join(REJECTED_DIR).join(&stored)).unwrap(),
        b"{}"
    );
    assert!(raw_names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
    assert_eq!(f.scan(NOW + 1), ScanReport::default());
}

#[test]
fn names_too_long_for_the_suffixes_are_quarantined_under_a_generated_name() {
    let mut f = fixture();
    // 250 bytes: `.error.txt` alone passes NAME_MAX; 255: the longest a
    // file system allows; 129: the first that is not kept.
    let names: Vec<String> = [245, 250, 124]
        .iter()
        .map(|n| format!("{}.json", "a".repeat(*n)))
        .chain([format!("{}.json", "é".repeat(62))])
        .collect();
    for name in &names {
        f.put("hospb", name, b"{}");
    }
    let r = f.scan(NOW);
    assert_eq!((r.rejected, r.deferred), (4, 0));
    let rejected = f.outbox("hospb").join(REJECTED_DIR);
    for name in &names {
        let stored = generated(name.as_bytes());
        let why = fs::read_to_string(rejected.join(format!("{stored}.error.txt"))).unwrap();
        assert_eq!(
            why,
            format!(
                "{name}: bad case-id: the name before the extension must match [A-Za-z0-9._-]{{1,64}}\n"
            ),
            "the full name, not shortened"
        );
        assert!(rejected.join(&stored).is_file());
    }
    assert!(raw_names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
}

#[test]
fn a_name_of_the_longest_kept_length_keeps_it_through_every_suffix() {
    let mut f = fixture();
    // Unsupported extension, 128 bytes: kept, also when a timestamp must be
    // added because the name is taken.
    let name = format!("{}.txt", "b".repeat(MAX_KEPT_NAME - 4));
    assert_eq!(name.len(), MAX_KEPT_NAME);
    for _ in 0..3 {
        f.put("hospb", &name, b"x");
        assert_eq!(f.scan(NOW).rejected, 1);
    }
    let stamp = time::compact(NOW);
    let stem = "b".repeat(MAX_KEPT_NAME - 4);
    assert_eq!(
        f.names(&f.outbox("hospb").join(REJECTED_DIR)),
        vec![
            format!("{stem}.{stamp}-2.txt"),
            format!("{stem}.{stamp}-2.txt.error.txt"),
            format!("{stem}.{stamp}.txt"),
            format!("{stem}.{stamp}.txt.error.txt"),
            name.clone(),
            format!("{name}.error.txt"),
        ]
    );
}

#[test]
fn the_same_bad_name_twice_keeps_both_files() {
    let mut f = fixture();
    let raw: &[u8] = b"c\xff.json";
    put_raw(&f.outbox("zv"), raw, b"first");
    assert_eq!(f.scan(NOW).rejected, 1);
    put_raw(&f.outbox("zv"), raw, b"second");
    assert_eq!(f.scan(NOW).rejected, 1);
    let stored = generated(raw);
    let stamp = time::compact(NOW);
    let rejected = f.outbox("zv").join(REJECTED_DIR);
    assert_eq!(fs::read(rejected.join(&stored)).unwrap(), b"first");
    assert_eq!(
        fs::read(rejected.join(format!("{stored}.{stamp}"))).unwrap(),
        b"second"
    );
    assert!(
        fs::read_to_string(rejected.join(format!("{stored}.{stamp}.error.txt")))
            .unwrap()
            .starts_with("c\\xff.json: bad case-id")
    );
}

#[test]
fn a_claimed_file_left_from_before_a_restart_is_quarantined() {
    let mut f = fixture();
    let long = format!("{}.json", "z".repeat(250));
    let claimed = f.outbox("hospb").join(CLAIMED_DIR);
    put_raw(&claimed, b"\xc3(.cancel", b"");
    put_raw(&claimed, long.as_bytes(), b"{}");
    put_raw(&f.outbox("zv").join(CLAIMED_DIR), b"r\x80.xml", b"<x/>");
    // A fresh scanner, as after a restart.
    f.state = ScanState::default();
    let r = f.scan(NOW);
    assert_eq!((r.rejected, r.deferred), (3, 0));
    assert!(raw_names(&claimed).is_empty());
    assert!(raw_names(&f.outbox("zv").join(CLAIMED_DIR)).is_empty());
    assert!(
        f.error_text("hospb", &generated(b"\xc3(.cancel"))
            .starts_with("\\xc3(.cancel: bad case-id")
    );
    assert!(
        f.error_text("zv", &generated(b"r\x80.xml"))
            .starts_with("r\\x80.xml: bad case-id")
    );
}

#[test]
fn unknown_folders_and_stray_files_with_bad_names_are_quarantined() {
    let mut f = fixture();
    put_raw(&f.config.outbox.join("stranger"), b"s\xff.json", b"{}");
    put_raw(&f.config.outbox, b"t\xff.json", b"{}");
    assert_eq!(f.scan(NOW).rejected, 2);
    let stranger = f.config.outbox.join("stranger").join(REJECTED_DIR);
    let why = fs::read_to_string(stranger.join(format!("{}.error.txt", generated(b"s\xff.json"))));
    assert_eq!(why.unwrap(), "s\\xff.json: unknown partner folder\n");
    let root = f.config.outbox.join(REJECTED_DIR);
    assert!(root.join(generated(b"t\xff.json")).is_file());
}

#[test]
fn a_failing_quarantine_waits_its_back_off_and_alerts_once_per_folder() {
    let mut f = fixture();
    // `.rejected` cannot be made while a file has its name.
    let blocker = f.outbox("hospb").join(REJECTED_DIR);
    fs::write(&blocker, b"").unwrap();
    f.put("hospb", "c1.txt", b"x");
    put_raw(&f.outbox("hospb"), b"c\xff.json", b"y");
    let r = f.scan(NOW);
    assert_eq!((r.rejected, r.deferred), (0, 2));
    let claimed = f.outbox("hospb").join(CLAIMED_DIR);
    assert_eq!(raw_names(&claimed).len(), 2, "both stay claimed");
    assert_eq!(f.state.quarantine_retry.len(), 2);
    for retry in f.state.quarantine_retry.values() {
        assert_eq!(
            *retry,
            QuarantineRetry {
                attempts: 1,
                next_try: NOW + DEFER_FIRST_SECS
            }
        );
    }
    assert_eq!(
        f.state.quarantine_alerted.iter().collect::<Vec<_>>(),
        vec![&f.outbox("hospb")],
        "one alert for the folder, not one per file"
    );

    // Within the back-off: not tried again.
    let r = f.scan(NOW + DEFER_FIRST_SECS - 1);
    assert_eq!((r.rejected, r.deferred), (0, 2));
    assert!(f.state.quarantine_retry.values().all(|r| r.attempts == 1));

    // Tried again after it: still failing, the back-off doubles.
    let r = f.scan(NOW + DEFER_FIRST_SECS);
    assert_eq!((r.rejected, r.deferred), (0, 2));
    let next = NOW + 3 * DEFER_FIRST_SECS;
    for retry in f.state.quarantine_retry.values() {
        assert_eq!(
            *retry,
            QuarantineRetry {
                attempts: 2,
                next_try: next
            }
        );
    }

    // The cause removed: nothing moves before the next try, then both go
    // and the folder may alert again.
    fs::remove_file(&blocker).unwrap();
    assert_eq!(f.scan(next - 1).rejected, 0);
    let r = f.scan(next);
    assert_eq!((r.rejected, r.deferred), (2, 0));
    assert!(raw_names(&claimed).is_empty());
    assert!(f.state.quarantine_retry.is_empty());
    assert!(f.state.quarantine_alerted.is_empty());
    assert_eq!(
        f.error_text("hospb", "c1.txt"),
        "c1.txt: unsupported extension: expected .json, .xml or .cancel\n"
    );
}

#[test]
fn names_that_are_kept_and_names_that_are_not() {
    for kept in ["c1.json", "bad id.json", "é.xml", "x"] {
        let n = RejectedName::for_file(kept.as_bytes());
        assert_eq!((n.as_str(), n.is_generated()), (kept, false));
    }
    let long = "a".repeat(MAX_KEPT_NAME + 1);
    for raw in [&b"a\nb"[..], b"\xff", b"a\x7f", long.as_bytes(), b""] {
        let name = generated(raw);
        assert_eq!(name.len(), "bad-name-".len() + 16, "{name}");
        assert!(name[9..].bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }
    assert_ne!(generated(b"\xff"), generated(b"\xfe"));
}

#[test]
fn a_folder_whose_failing_files_are_gone_alerts_again() {
    let mut f = fixture();
    fs::write(f.outbox("hospb").join(REJECTED_DIR), b"").unwrap();
    fs::write(f.config.outbox.join(REJECTED_DIR), b"").unwrap();
    f.put("hospb", "c1.txt", b"x");
    put_raw(&f.config.outbox, b"stray.json", b"y");
    assert_eq!(f.scan(NOW).deferred, 2);
    assert_eq!(f.state.quarantine_alerted.len(), 2);
    // The stray file removed by hand: the outbox folder may alert again,
    // the partner folder (inside it) still has its failing file.
    fs::remove_file(f.config.outbox.join("stray.json")).unwrap();
    f.scan(NOW + 1);
    assert_eq!(
        f.state.quarantine_alerted.iter().collect::<Vec<_>>(),
        vec![&f.outbox("hospb")]
    );
}
