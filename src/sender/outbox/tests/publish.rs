//! Records published in the folder of a `zorgviewer` partner (`zv`).

use super::*;
use crate::records::{PublishedRecord, RecordStatus};

const OTHER: &str = "123456782";

impl Fixture {
    fn bsn(&self) -> Bsn {
        Bsn::parse(BSN).unwrap()
    }

    fn served(&self) -> Vec<PublishedRecord> {
        self.records.records_of_patient("zv", &self.bsn()).unwrap()
    }

    /// `(record, version, id of entry[1])` of each record served for BSN.
    fn served_ids(&self) -> Vec<(String, u32, String)> {
        self.served()
            .iter()
            .map(|r| {
                let second = r.bundle["entry"][1]["resource"]["id"].as_str();
                (r.record_id.clone(), r.version, second.unwrap_or("").into())
            })
            .collect()
    }

    /// Whether a live record of `zv` holds `Condition/<id>` for BSN as `p1`.
    fn holds_condition(&self, id: &str) -> bool {
        let holders = self.records.patients_holding("zv", "Condition", id);
        assert!(holders.len() <= 1, "{holders:?}");
        holders == vec![(self.bsn(), "p1".to_string())]
    }

    fn spool_is_empty(&self) -> bool {
        State::ALL
            .iter()
            .all(|s| self.spool.ids(*s).unwrap().is_empty())
    }

    fn record_files(&self, id: &str) -> Vec<String> {
        self.names(&self.config.state_dir.join("records/zv").join(id))
    }

    fn audit_text(&self) -> String {
        let day = format!("{}.jsonl", time::date(time::now_unix()));
        fs::read_to_string(self.config.state_dir.join("audit").join(day)).unwrap_or_default()
    }

    /// A restart: the scanner's memory and the record store's index are
    /// rebuilt from disk.
    fn restart(&mut self) {
        self.state = ScanState::default();
        self.records = RecordStore::open(&self.config.state_dir).unwrap();
    }
}

fn bundle_with_patient(bsn: &str, patient_id: &str, extra: &[Value]) -> Value {
    let mut b = bundle(bsn, extra);
    b["entry"][0]["resource"]["id"] = json!(patient_id);
    b
}

#[test]
fn a_published_record_is_stored_indexed_and_removed_without_a_notification() {
    let mut f = fixture();
    let exported = bundle(BSN, &[condition("c1")]);
    let path = f.export("zv", "r1", &exported);
    assert_eq!(
        f.scan(NOW),
        ScanReport {
            published: 1,
            ..ScanReport::default()
        }
    );
    assert!(!path.exists());
    assert!(f.names(&f.outbox("zv").join(CLAIMED_DIR)).is_empty());
    assert_eq!(
        f.names(&f.outbox("zv")),
        vec![CLAIMED_DIR],
        "nothing rejected"
    );

    let served = f.served();
    assert_eq!(served.len(), 1);
    let r = &served[0];
    assert_eq!(
        (
            r.record_id.as_str(),
            r.version,
            r.patient_id.as_str(),
            r.published_at
        ),
        ("r1", 1, "p1", NOW)
    );
    assert_eq!(r.patient, f.bsn());
    assert_eq!(*r.bundle, exported, "the Bundle as exported");
    assert_eq!(f.records.patient_by_id("zv", "p1"), Some(f.bsn()));
    assert_eq!(
        f.records
            .patient_by_bsn("zv", &f.bsn())
            .unwrap()
            .resource_ids,
        vec!["p1"]
    );
    assert!(f.holds_condition("c1"));
    assert_eq!(
        f.records
            .get("zv", "r1")
            .unwrap()
            .resources
            .iter()
            .collect::<Vec<_>>(),
        vec!["Patient/p1", "Condition/c1"],
        "the record keeps the Bundle's resource keys"
    );

    assert!(f.spool_is_empty(), "no notification, no work of any kind");
    assert!(f.cases.all().is_empty(), "not a Twiin case");
    let audit = f.audit_text();
    assert!(audit.contains("\"action\":\"record.published\""));
    assert!(audit.contains("\"partner\":\"zv\""));
    assert!(audit.contains(&format!("\"patient\":\"{BSN}\"")));
    assert!(audit.contains("record r1 version 1 Patient/p1"));
}

#[test]
fn a_resource_in_two_patients_records_is_found_for_both() {
    let mut f = fixture();
    let doctor = json!({"resource": {"resourceType": "Practitioner", "id": "dr"}});
    f.export("zv", "r1", &bundle(BSN, &[doctor.clone(), condition("a")]));
    assert_eq!(f.scan(NOW).published, 1);
    f.export("zv", "r2", &bundle_with_patient(OTHER, "p7", &[doctor]));
    assert_eq!(f.scan(NOW + 1).published, 1);
    let other = Bsn::parse(OTHER).unwrap();
    assert_eq!(
        f.records.patients_holding("zv", "Practitioner", "dr"),
        vec![
            (other.clone(), "p7".to_string()),
            (f.bsn(), "p1".to_string())
        ]
    );
    assert!(f.holds_condition("a"));

    f.put("zv", "r2.cancel", b"");
    assert_eq!(f.scan(NOW + 2).withdrawn, 1);
    assert_eq!(
        f.records.patients_holding("zv", "Practitioner", "dr"),
        vec![(f.bsn(), "p1".to_string())]
    );
}

#[test]
fn xml_records_are_published_as_json() {
    let mut f = fixture();
    let xml = xml_bundle(
        "px",
        r#"<entry><resource><Condition><id value="c9"/></Condition></resource></entry>"#,
    );
    f.put("zv", "x1.xml", xml.as_bytes());
    assert_eq!(f.scan(NOW).published, 1);
    assert_eq!(f.served_ids(), vec![("x1".into(), 1, "c9".into())]);
    assert_eq!(f.records.patient_by_id("zv", "px"), Some(f.bsn()));
}

#[test]
fn a_newer_file_replaces_the_record() {
    let mut f = fixture();
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan(NOW).published, 1);
    f.export(
        "zv",
        "r1",
        &bundle_with_patient(BSN, "p2", &[condition("b")]),
    );
    assert_eq!(f.scan(NOW + 1).published, 1);
    assert_eq!(f.served_ids(), vec![("r1".into(), 2, "b".into())]);
    assert_eq!(f.served()[0].published_at, NOW + 1);
    assert_eq!(f.records.patient_by_id("zv", "p2"), Some(f.bsn()));
    assert_eq!(f.records.patient_by_id("zv", "p1"), None);
    assert!(
        f.records
            .patients_holding("zv", "Condition", "a")
            .is_empty()
    );
    assert_eq!(
        f.records.patients_holding("zv", "Condition", "b"),
        vec![(f.bsn(), "p2".to_string())]
    );
    assert_eq!(f.record_files("r1"), vec!["record.json", "v2.json"]);
    assert_eq!(f.records.get("zv", "r1").unwrap().created_at, NOW);
    assert!(f.spool_is_empty());
}

#[test]
fn a_cancel_withdraws_the_record_at_once() {
    let mut f = fixture();
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    f.export("zv", "r2", &bundle(BSN, &[condition("b")]));
    assert_eq!(f.scan(NOW).published, 2);
    f.put("zv", "r1.cancel", b"");
    assert_eq!(
        f.scan(NOW + 1),
        ScanReport {
            withdrawn: 1,
            ..ScanReport::default()
        }
    );
    assert_eq!(f.served_ids(), vec![("r2".into(), 1, "b".into())]);
    assert_eq!(
        f.records.get("zv", "r1").unwrap().status,
        RecordStatus::Withdrawn
    );
    assert_eq!(
        f.record_files("r1"),
        vec!["record.json"],
        "its data is removed"
    );
    assert!(
        f.records.get("zv", "r1").unwrap().resources.is_empty(),
        "and with it its resource keys"
    );
    assert!(f.names(&f.outbox("zv").join(CLAIMED_DIR)).is_empty());

    // Withdrawing again changes nothing; the last record goes the same way.
    f.put("zv", "r1.cancel", b"");
    f.put("zv", "r2.cancel", b"");
    assert_eq!(f.scan(NOW + 2).withdrawn, 2);
    assert!(f.served().is_empty());
    assert_eq!(f.records.patient_by_id("zv", "p1"), None);
    assert_eq!(f.records.patient_by_bsn("zv", &f.bsn()), None);
    assert!(f.spool_is_empty(), "no cancellation is sent either");
    let audit = f.audit_text();
    assert_eq!(audit.matches("\"action\":\"record.withdrawn\"").count(), 2);

    // Published again: served again, as a new version.
    f.export("zv", "r1", &bundle(BSN, &[condition("c")]));
    assert_eq!(f.scan(NOW + 3).published, 1);
    assert_eq!(f.served_ids(), vec![("r1".into(), 2, "c".into())]);
}

#[test]
fn files_that_cannot_be_published_are_rejected_with_their_reason() {
    let mut f = fixture();
    f.export("zv", "r1", &bundle(BSN, &[]));
    assert_eq!(f.scan(NOW).published, 1);
    f.put("zv", "bad.json", b"{\"resourceType\":");
    f.put("zv", "nobsn.json", br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"p9"}}]}"#);
    f.put("zv", "ghost.cancel", b"");
    // Another patient under the same record id, or under a Patient id in use.
    f.export("zv", "r1", &bundle_with_patient(OTHER, "p7", &[]));
    f.export("zv", "r2", &bundle(OTHER, &[]));
    let r = f.scan(NOW + 1);
    assert_eq!((r.rejected, r.published), (5, 0), "{r:?}");
    for (name, reason) in [
        ("nobsn.json", "the Patient has no BSN identifier"),
        ("ghost.cancel", "cancel for an unknown record"),
        (
            "r1.json",
            "record belongs to another patient: a new version must keep the patient",
        ),
        (
            "r2.json",
            "the Patient id is another patient's in a published record of this partner",
        ),
    ] {
        let text = f.error_text("zv", name);
        assert!(text.starts_with(&format!("{name}: {reason}")), "{text}");
        assert!(!text.contains(OTHER), "no BSN in a reason: {text}");
    }
    assert!(
        f.error_text("zv", "bad.json")
            .starts_with("bad.json: invalid json: ")
    );
    assert_eq!(f.served_ids(), vec![("r1".into(), 1, String::new())]);
    assert!(f.records.get("zv", "r2").is_none());
    assert_eq!(f.record_files("r1"), vec!["record.json", "v1.json"]);
    assert_eq!(
        f.records.patient_by_bsn("zv", &Bsn::parse(OTHER).unwrap()),
        None
    );
}

/// A crash after each step of publishing (a first version and a new one):
/// after the restart the record is published exactly once, as the newest
/// version, with only that version on disk and the file gone.
#[test]
fn a_crash_between_steps_publishes_each_file_once() {
    for update in [false, true] {
        for step in [Step::Claimed, Step::DataWritten, Step::RecordSaved] {
            let label = format!("{step:?}, update {update}");
            let mut f = fixture();
            if update {
                f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
                assert_eq!(f.scan(NOW).published, 1);
            }
            let before = u32::from(update);
            f.export("zv", "r1", &bundle(BSN, &[condition("b")]));
            let r = f.scan_until(NOW + 1, step);
            assert_eq!(r.published, 0, "{label}");
            let claimed = f.outbox("zv").join(CLAIMED_DIR).join("r1.json");
            assert!(claimed.exists(), "{label}: the file is still there");
            // What is served in the crash window: the new version from the
            // moment its record is saved, the old one (or none) before.
            let served = if step == Step::RecordSaved {
                vec![("r1".into(), before + 1, "b".into())]
            } else if update {
                vec![("r1".into(), 1, "a".into())]
            } else {
                vec![]
            };
            assert_eq!(f.served_ids(), served, "{label}");
            // The lookup by resource follows the same version.
            let held = (
                update && step != Step::RecordSaved,
                step == Step::RecordSaved,
            );
            let holds = |f: &Fixture| (f.holds_condition("a"), f.holds_condition("b"));
            assert_eq!(holds(&f), held, "{label}");

            f.restart();
            assert_eq!(
                f.served_ids(),
                served,
                "{label}: the same after the restart"
            );
            assert_eq!(holds(&f), held, "{label}: after the restart");
            let r = f.scan(NOW + 2);
            let finished_before = step == Step::RecordSaved;
            assert_eq!(
                (r.published, r.already_accepted),
                if finished_before { (0, 1) } else { (1, 0) },
                "{label}: {r:?}"
            );
            assert!(!claimed.exists(), "{label}");
            assert_eq!(
                f.served_ids(),
                vec![("r1".into(), before + 1, "b".into())],
                "{label}"
            );
            assert_eq!(
                f.record_files("r1"),
                vec!["record.json".to_string(), format!("v{}.json", before + 1)],
                "{label}: only the current version is kept"
            );
            assert_eq!(holds(&f), (false, true), "{label}");
            assert!(
                f.audit_text()
                    .matches("\"action\":\"record.published\"")
                    .count()
                    > usize::from(update),
                "{label}: the publication is audited"
            );
            assert!(f.spool_is_empty(), "{label}");
            assert_eq!(f.scan(NOW + 3), ScanReport::default(), "{label}");
        }
    }
}

/// A crash while withdrawing: from the moment the record is saved as
/// withdrawn it is served no more, though its `.cancel` is still there; the
/// next pass finishes the job.
#[test]
fn a_crash_while_withdrawing_is_finished_on_the_next_pass() {
    for step in [Step::Claimed, Step::RecordWithdrawn] {
        let label = format!("{step:?}");
        let mut f = fixture();
        f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
        assert_eq!(f.scan(NOW).published, 1);
        f.put("zv", "r1.cancel", b"");
        assert_eq!(f.scan_until(NOW + 1, step).withdrawn, 0, "{label}");
        let claimed = f.outbox("zv").join(CLAIMED_DIR).join("r1.cancel");
        assert!(claimed.exists(), "{label}");
        let withdrawn = step == Step::RecordWithdrawn;
        assert_eq!(f.served().is_empty(), withdrawn, "{label}");
        assert_eq!(f.records.patient_by_id("zv", "p1").is_none(), withdrawn);
        assert_eq!(f.holds_condition("a"), !withdrawn, "{label}");

        f.restart();
        assert_eq!(
            f.served().is_empty(),
            withdrawn,
            "{label}: after the restart"
        );
        assert_eq!(
            f.holds_condition("a"),
            !withdrawn,
            "{label}: after the restart"
        );
        assert_eq!(f.scan(NOW + 2).withdrawn, 1, "{label}");
        assert!(!claimed.exists(), "{label}");
        assert!(f.served().is_empty(), "{label}");
        assert!(!f.holds_condition("a"), "{label}");
        assert!(f.records.patients_holding("zv", "Patient", "p1").is_empty());
        assert_eq!(f.record_files("r1"), vec!["record.json"], "{label}");
        assert_eq!(
            f.audit_text()
                .matches("\"action\":\"record.withdrawn\"")
                .count(),
            1,
            "{label}: audited once"
        );
    }
}

/// A record and its `.cancel` written within one clock tick keep their
/// order, as a Twiin export and its `.cancel` do.
#[test]
fn a_record_and_its_cancel_in_one_pass_end_withdrawn() {
    let mut f = fixture();
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    f.put("zv", "r1.cancel", b"");
    let r = f.scan(NOW);
    assert_eq!((r.published, r.withdrawn, r.rejected), (1, 1, 0), "{r:?}");
    assert!(f.served().is_empty());
}

#[test]
fn a_mitz_folder_is_still_refused_and_twiin_folders_are_untouched() {
    let mut f = fixture();
    f.export("mitz", "r1", &bundle(BSN, &[]));
    f.export("hospb", "c1", &bundle(BSN, &[]));
    let r = f.scan(NOW);
    assert_eq!((r.rejected, r.accepted, r.published), (1, 1, 0), "{r:?}");
    assert_eq!(
        f.error_text("mitz", "r1.json"),
        "r1.json: unknown partner folder\n"
    );
    assert!(f.records.get("mitz", "r1").is_none());
    assert!(f.records.get("hospb", "c1").is_none());
    assert_eq!(
        f.items(State::Queued).len(),
        1,
        "the Twiin export is notified"
    );
}

/// The after-publish step in place of the Mitz subscriptions: every call,
/// and a failure on demand.
#[derive(Default)]
struct Hook {
    calls: std::sync::Mutex<Vec<(String, i64)>>,
    fail: std::sync::atomic::AtomicBool,
}

impl crate::sender::AfterPublish for Hook {
    fn published(&self, patient: &Bsn, now: i64) -> Result<usize, String> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("queue the Mitz subscription at mitz: disk full".into());
        }
        self.calls
            .lock()
            .unwrap()
            .push((patient.as_str().to_string(), now));
        Ok(1)
    }
}

impl Hook {
    fn calls(&self) -> Vec<(String, i64)> {
        self.calls.lock().unwrap().clone()
    }
}

fn with_hook(f: &mut Fixture) -> std::sync::Arc<Hook> {
    let hook = std::sync::Arc::new(Hook::default());
    f.after_publish = Some(hook.clone());
    hook
}

/// Every publication of a record for a partner whose consent is `mitz`
/// (the default) asks for the patient's subscriptions once the record is
/// saved; a withdrawal does not.
#[test]
fn each_publication_asks_for_the_patients_subscriptions() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    assert_eq!(
        f.scan(NOW),
        ScanReport {
            published: 1,
            subscriptions: 1,
            ..ScanReport::default()
        }
    );
    assert_eq!(hook.calls(), vec![(BSN.to_string(), NOW)]);
    // A new version and another record: asked again (it is idempotent).
    f.export("zv", "r1", &bundle(BSN, &[condition("b")]));
    f.export("zv", "r2", &bundle_with_patient(OTHER, "p7", &[]));
    assert_eq!(f.scan(NOW + 1).published, 2);
    let patients: Vec<String> = hook.calls().into_iter().map(|(p, _)| p).collect();
    assert_eq!(patients, [BSN, BSN, OTHER]);
    f.put("zv", "r1.cancel", b"");
    assert_eq!(f.scan(NOW + 2).withdrawn, 1);
    assert_eq!(hook.calls().len(), 3, "a withdrawal subscribes nobody");
}

/// A crash after the record is saved and before the subscriptions are
/// queued: the next pass finds the record saved and asks for them then.
#[test]
fn a_crash_before_the_subscriptions_asks_for_them_on_the_next_pass() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan_until(NOW, Step::RecordSaved).published, 0);
    assert!(hook.calls().is_empty(), "stopped before the subscriptions");
    f.restart();
    let r = f.scan(NOW + 1);
    assert_eq!((r.already_accepted, r.subscriptions), (1, 1), "{r:?}");
    assert_eq!(hook.calls(), vec![(BSN.to_string(), NOW + 1)]);
}

/// Subscriptions that cannot be queued leave the file for a later pass (the
/// record is served meanwhile); that pass asks again.
#[test]
fn a_failed_subscription_step_leaves_the_file_for_the_next_pass() {
    let mut f = fixture();
    let hook = with_hook(&mut f);
    hook.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    let r = f.scan(NOW);
    assert_eq!((r.published, r.deferred), (0, 1), "{r:?}");
    let claimed = f.outbox("zv").join(CLAIMED_DIR).join("r1.json");
    assert!(claimed.exists());
    assert_eq!(f.served_ids(), vec![("r1".into(), 1, "a".into())]);
    hook.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = f.scan(NOW + DEFER_FIRST_SECS);
    assert_eq!((r.already_accepted, r.subscriptions), (1, 1), "{r:?}");
    assert!(!claimed.exists());
    assert_eq!(
        hook.calls(),
        vec![(BSN.to_string(), NOW + DEFER_FIRST_SECS)]
    );
}

/// A partner that serves without Mitz consent subscribes nobody.
#[test]
fn a_partner_without_mitz_consent_subscribes_nobody() {
    let mut f = fixture();
    let mut v = f.site.vars("https://np.a.example", "12345678");
    for (k, val) in [
        ("NP_OUTBOX", f.config.outbox.display().to_string()),
        ("NP_STATE_DIR", f.config.state_dir.display().to_string()),
        ("NP_PARTNERS", "zv".into()),
        ("NP_PARTNER_ZV_KIND", "zorgviewer".into()),
        ("NP_PARTNER_ZV_CERT", "dns:zv.example".into()),
        ("NP_PARTNER_ZV_CLIENT_ID", "zorgviewer".into()),
        (
            "NP_PARTNER_ZV_JWKS_URL",
            "https://auth.zv.example/jwks".into(),
        ),
        ("NP_PARTNER_ZV_CONSENT", "none".into()),
    ] {
        v.insert(k.to_string(), (val, None));
    }
    f.config = crate::config::from_vars(&v).unwrap();
    let hook = with_hook(&mut f);
    f.export("zv", "r1", &bundle(BSN, &[condition("a")]));
    let r = f.scan(NOW);
    assert_eq!((r.published, r.subscriptions), (1, 0), "{r:?}");
    assert!(hook.calls().is_empty());
}
