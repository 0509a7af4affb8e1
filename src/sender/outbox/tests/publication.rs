//! The publication hook (the patient's referral in the national index):
//! called for Twiin exports and Zorgviewer records alike, after their data
//! is saved, again after a crash; and for withdrawals.

use super::*;

#[derive(Default)]
struct Hook {
    calls: std::sync::Mutex<Vec<(&'static str, String)>>,
    fail: std::sync::atomic::AtomicBool,
}

impl crate::sender::Publication for Hook {
    fn published(&self, patient: &Bsn, _now: i64) -> Result<(), String> {
        self.call("published", patient)
    }
    fn withdrawn(&self, patient: &Bsn, _now: i64) -> Result<(), String> {
        self.call("withdrawn", patient)
    }
}

impl Hook {
    fn call(&self, what: &'static str, patient: &Bsn) -> Result<(), String> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("queue the NVI published work at nvi: disk full".into());
        }
        self.calls
            .lock()
            .unwrap()
            .push((what, patient.as_str().to_string()));
        Ok(())
    }

    fn calls(&self) -> Vec<(&'static str, String)> {
        self.calls.lock().unwrap().clone()
    }
}

fn with_hook(f: &mut Fixture) -> std::sync::Arc<Hook> {
    let hook = std::sync::Arc::new(Hook::default());
    f.publication = Some(hook.clone());
    hook
}

fn published() -> (&'static str, String) {
    ("published", BSN.to_string())
}

fn withdrawn() -> (&'static str, String) {
    ("withdrawn", BSN.to_string())
}

#[test]
fn twiin_exports_and_cancellations_call_the_hook() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan(NOW).accepted, 1);
    assert_eq!(hook.calls(), vec![published()]);
    f.export("hospb", "c1", &bundle(BSN, &[condition("b")]));
    assert_eq!(f.scan(NOW + 1).updated, 1);
    f.put("hospb", "c1.cancel", b"");
    assert_eq!(f.scan(NOW + 2).cancelled, 1);
    assert_eq!(hook.calls(), vec![published(), published(), withdrawn()]);
}

#[test]
fn zorgviewer_records_and_withdrawals_call_the_hook_whatever_the_consent() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan(NOW).published, 1);
    f.put("zv", "r1.cancel", b"");
    assert_eq!(f.scan(NOW + 1).withdrawn, 1);
    assert_eq!(hook.calls(), vec![published(), withdrawn()]);
}

/// The hook failing leaves the file, and the next pass (finding the case
/// saved) asks again: nothing is announced twice, nothing is lost.
#[test]
fn a_failing_hook_leaves_the_file_and_is_asked_again() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    hook.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.deferred), (0, 1));
    hook.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = f.scan(NOW + DEFER_CAP_SECS);
    assert_eq!(r.already_accepted, 1);
    assert_eq!(hook.calls(), vec![published()]);
    assert_eq!(f.items(State::Queued).len(), 1, "one notification");
}

/// A crash after the case is saved: the next pass finishes the export and
/// asks the hook (which is idempotent) again.
#[test]
fn a_crash_after_queueing_asks_the_hook_on_the_next_pass() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    f.scan_until(NOW, Step::Enqueued);
    assert!(hook.calls().is_empty());
    assert_eq!(f.scan(NOW + 1).already_accepted, 1);
    assert_eq!(hook.calls(), vec![published()]);
}
