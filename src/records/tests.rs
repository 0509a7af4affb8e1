use super::*;
use crate::config::tests_support::TestSite;
use serde_json::json;

const A: &str = "999999151";
const B: &str = "123456782";

fn bsn(s: &str) -> Bsn {
    Bsn::parse(s).unwrap()
}

fn record(id: &str, patient: &str, patient_id: &str, version: u32, at: i64) -> Record {
    Record {
        partner: "zv".into(),
        record_id: id.into(),
        patient: bsn(patient),
        patient_id: patient_id.into(),
        version,
        status: RecordStatus::Published,
        published_at: at,
        created_at: at,
        updated_at: at,
        source: None,
    }
}

/// Writes the record's data version (a Bundle naming the record and
/// version) and saves the record, as the outbox does.
fn publish(store: &RecordStore, r: &Record) {
    let bundle = json!({"resourceType": "Bundle", "id": format!("{}-v{}", r.record_id, r.version)});
    store
        .write_data(
            &r.partner,
            &r.record_id,
            r.version,
            bundle.to_string().as_bytes(),
        )
        .unwrap();
    store.save(r).unwrap();
    store.prune(r).unwrap();
}

fn ids(records: &[PublishedRecord]) -> Vec<(String, u32, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.record_id.clone(),
                r.version,
                r.bundle["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn versions_on_disk(site: &TestSite, id: &str) -> Vec<String> {
    let dir = site.dir.join("records/zv").join(id);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn published_records_are_found_by_patient_and_by_patient_id() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    publish(&store, &record("r2", A, "pa-2", 1, 200));
    publish(&store, &record("r3", B, "pb", 1, 150));

    let of_a = store.records_of_patient("zv", &bsn(A)).unwrap();
    assert_eq!(
        ids(&of_a),
        vec![
            ("r2".into(), 1, "r2-v1".into()),
            ("r1".into(), 1, "r1-v1".into())
        ],
        "the most recently published first, each with its Bundle"
    );
    assert_eq!(of_a[0].patient, bsn(A));
    assert_eq!(
        (of_a[0].patient_id.as_str(), of_a[0].published_at),
        ("pa-2", 200)
    );
    assert_eq!(store.patient_by_id("zv", "pa"), Some(bsn(A)));
    assert_eq!(store.patient_by_id("zv", "pa-2"), Some(bsn(A)));
    assert_eq!(store.patient_by_id("zv", "pb"), Some(bsn(B)));
    assert_eq!(store.patient_by_id("zv", "nobody"), None);
    assert_eq!(
        store.patient_by_bsn("zv", &bsn(A)),
        Some(PublishedPatient {
            bsn: bsn(A),
            resource_ids: vec!["pa-2".into(), "pa".into()]
        })
    );
    // Another partner sees nothing of these.
    assert!(
        store
            .records_of_patient("other", &bsn(A))
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.patient_by_id("other", "pa"), None);
    assert_eq!(store.patient_by_bsn("other", &bsn(A)), None);
    assert_eq!(store.patient_by_bsn("zv", &bsn("111222333")), None);
}

#[test]
fn a_new_version_replaces_the_record_and_its_data() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    publish(&store, &record("r1", A, "pa-new", 2, 300));

    let of_a = store.records_of_patient("zv", &bsn(A)).unwrap();
    assert_eq!(ids(&of_a), vec![("r1".into(), 2, "r1-v2".into())]);
    assert_eq!(store.patient_by_id("zv", "pa-new"), Some(bsn(A)));
    assert_eq!(
        store.patient_by_id("zv", "pa"),
        None,
        "the old Patient id went with v1"
    );
    assert_eq!(
        versions_on_disk(&site, "r1"),
        vec!["record.json", "v2.json"]
    );
}

#[test]
fn a_withdrawn_record_leaves_every_lookup_at_once() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    publish(&store, &record("r2", A, "pa", 1, 200));
    let mut r2 = store.get("zv", "r2").unwrap();
    r2.status = RecordStatus::Withdrawn;
    store.save(&r2).unwrap();
    // Saved, not yet pruned: the lookups already leave it out.
    assert_eq!(
        ids(&store.records_of_patient("zv", &bsn(A)).unwrap()),
        vec![("r1".into(), 1, "r1-v1".into())]
    );
    assert_eq!(
        store.patient_by_id("zv", "pa"),
        Some(bsn(A)),
        "r1 still has pa"
    );

    let mut r1 = store.get("zv", "r1").unwrap();
    r1.status = RecordStatus::Withdrawn;
    store.save(&r1).unwrap();
    assert!(store.records_of_patient("zv", &bsn(A)).unwrap().is_empty());
    assert_eq!(store.patient_by_id("zv", "pa"), None);
    assert_eq!(store.patient_by_bsn("zv", &bsn(A)), None);
    assert_eq!(
        store.get("zv", "r1").unwrap().status,
        RecordStatus::Withdrawn
    );

    store.prune(&r1).unwrap();
    assert_eq!(
        versions_on_disk(&site, "r1"),
        vec!["record.json"],
        "its data is gone"
    );

    // Published again later: a new version, served again.
    publish(&store, &record("r1", A, "pa", 2, 400));
    assert_eq!(
        ids(&store.records_of_patient("zv", &bsn(A)).unwrap()),
        vec![("r1".into(), 2, "r1-v2".into())]
    );
}

#[test]
fn the_index_is_rebuilt_from_disk_and_leftovers_of_a_crash_are_removed() {
    let site = TestSite::new("records");
    {
        let store = RecordStore::open(&site.dir).unwrap();
        publish(&store, &record("r1", A, "pa", 1, 100));
        publish(&store, &record("r2", B, "pb", 1, 200));
        publish(&store, &record("r3", A, "pa", 1, 300));
        // r1: a crash after a new version was written, before its record.
        store.write_data("zv", "r1", 2, b"{}").unwrap();
        // r2: a crash after the withdrawal was saved, before the prune.
        let mut r2 = store.get("zv", "r2").unwrap();
        r2.status = RecordStatus::Withdrawn;
        store.save(&r2).unwrap();
        // r3: a crash after a new version was saved, before the prune.
        let r3 = record("r3", A, "pa", 2, 400);
        store
            .write_data("zv", "r3", 2, br#"{"id":"r3-v2"}"#)
            .unwrap();
        store.save(&r3).unwrap();
        // r4: a crash after the first version was written, before its record.
        store.write_data("zv", "r4", 1, b"{}").unwrap();
        // A temp file of an interrupted durable write.
        std::fs::write(site.dir.join("records/zv/r1/.np-v2.json.x.tmp"), b"half").unwrap();
    }
    let store = RecordStore::open(&site.dir).unwrap();
    assert_eq!(
        ids(&store.records_of_patient("zv", &bsn(A)).unwrap()),
        vec![
            ("r3".into(), 2, "r3-v2".into()),
            ("r1".into(), 1, "r1-v1".into())
        ]
    );
    assert!(store.records_of_patient("zv", &bsn(B)).unwrap().is_empty());
    assert_eq!(store.patient_by_id("zv", "pb"), None);
    assert_eq!(store.patient_by_id("zv", "pa"), Some(bsn(A)));
    assert_eq!(
        store.get("zv", "r2").unwrap().status,
        RecordStatus::Withdrawn
    );
    assert_eq!(
        versions_on_disk(&site, "r1"),
        vec!["record.json", "v1.json"]
    );
    assert_eq!(versions_on_disk(&site, "r2"), vec!["record.json"]);
    assert_eq!(
        versions_on_disk(&site, "r3"),
        vec!["record.json", "v2.json"]
    );
    assert!(versions_on_disk(&site, "r4").is_empty());
    assert_eq!(store.get("zv", "r4"), None);
}

#[test]
fn a_record_that_would_make_a_lookup_ambiguous_is_refused() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "p1", 1, 100));

    let other_patient = record("r1", B, "pb", 2, 200);
    assert_eq!(store.check(&other_patient), Err(Conflict::OtherPatient));
    assert!(matches!(
        store.save(&other_patient),
        Err(RecordError::Conflict(Conflict::OtherPatient))
    ));
    let taken = record("r2", B, "p1", 1, 200);
    assert_eq!(store.check(&taken), Err(Conflict::PatientIdTaken));
    assert!(matches!(
        store.save(&taken),
        Err(RecordError::Conflict(Conflict::PatientIdTaken))
    ));
    assert_eq!(
        store.patient_by_id("zv", "p1"),
        Some(bsn(A)),
        "nothing changed"
    );
    assert_eq!(store.get("zv", "r2"), None);
    assert!(!site.dir.join("records/zv/r2/record.json").exists());

    // The same Patient id at another partner, or once the first record is
    // withdrawn, is free.
    assert_eq!(
        store.check(&Record {
            partner: "other".into(),
            ..taken.clone()
        }),
        Ok(())
    );
    let mut r1 = store.get("zv", "r1").unwrap();
    r1.status = RecordStatus::Withdrawn;
    store.save(&r1).unwrap();
    assert_eq!(store.check(&taken), Ok(()));
    publish(&store, &taken);
    assert_eq!(store.patient_by_id("zv", "p1"), Some(bsn(B)));
}

#[test]
fn a_lookup_racing_a_new_version_gets_the_new_one() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    let stale = store.get("zv", "r1").unwrap();
    // A new version is saved and the old one pruned between the index
    // lookup and the read of its data.
    publish(&store, &record("r1", A, "pa", 2, 200));
    let found = store.published(stale.clone(), &bsn(A)).unwrap().unwrap();
    assert_eq!(
        (found.version, found.bundle["id"].as_str()),
        (2, Some("r1-v2"))
    );
    // Withdrawn meanwhile: left out.
    let mut r1 = store.get("zv", "r1").unwrap();
    r1.status = RecordStatus::Withdrawn;
    store.save(&r1).unwrap();
    store.prune(&r1).unwrap();
    assert!(store.published(stale, &bsn(A)).unwrap().is_none());
}

#[test]
fn a_live_record_whose_data_is_gone_is_an_error_naming_it() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    std::fs::remove_file(store.data_path("zv", "r1", 1)).unwrap();
    let err = store.records_of_patient("zv", &bsn(A)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "record store: partner zv record r1 has no version 1"
    );
}

#[test]
fn a_corrupt_record_stops_the_open_with_its_path() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    publish(&store, &record("r1", A, "pa", 1, 100));
    let path = site.dir.join("records/zv/r1/record.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(A, "999999152");
    std::fs::write(&path, text).unwrap();
    let err = RecordStore::open(&site.dir).err().unwrap().to_string();
    assert!(
        err.contains("records/zv/r1/record.json: not a BSN that passes the 11-test"),
        "{err}"
    );
}

#[test]
fn debug_output_holds_no_bsn() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    let r = record("r1", A, "pa", 1, 100);
    publish(&store, &r);
    let found = store.records_of_patient("zv", &bsn(A)).unwrap();
    let text = format!("{r:?} {found:?} {:?}", store.patient_by_bsn("zv", &bsn(A)));
    assert!(!text.contains(A), "{text}");
}
