use super::*;
use crate::config::tests_support::TestSite;
use serde_json::json;

const A: &str = "999999151";
const B: &str = "123456782";

fn bsn(s: &str) -> Bsn {
    Bsn::parse(s).unwrap()
}

fn record(id: &str, patient: &str, patient_id: &str, version: u32, at: i64) -> Record {
    let r = Record {
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
        resources: ResourceKeys::default(),
    };
    holding(r, &[])
}

/// `r` whose data version holds its Patient and `others` (`Type/id`).
fn holding(mut r: Record, others: &[&str]) -> Record {
    let patient = format!("Patient/{}", r.patient_id);
    let keys = std::iter::once(patient.as_str()).chain(others.iter().copied());
    r.resources = ResourceKeys::of_bundle(&data(&r, keys));
    r
}

/// A data version of `r`: a Bundle naming the record and version, with an
/// entry for each key.
fn data<'a>(r: &Record, keys: impl Iterator<Item = &'a str>) -> serde_json::Value {
    let entries: Vec<_> = keys
        .map(|k| {
            let (resource_type, id) = k.split_once('/').unwrap();
            json!({"resource": {"resourceType": resource_type, "id": id}})
        })
        .collect();
    json!({"resourceType": "Bundle", "id": format!("{}-v{}", r.record_id, r.version),
        "entry": entries})
}

/// Writes the record's data version (holding its resources) and saves the
/// record, as the outbox does.
fn publish(store: &RecordStore, r: &Record) {
    write_version(store, r);
    store.save(r).unwrap();
    store.prune(r).unwrap();
}

/// Publishes `r` with its data version holding `others` besides its Patient.
fn publish_holding(store: &RecordStore, r: Record, others: &[&str]) {
    publish(store, &holding(r, others));
}

/// Writes the data version of `r` (holding its resources), without saving `r`.
fn write_version(store: &RecordStore, r: &Record) {
    let bundle = data(r, r.resources.iter()).to_string();
    store
        .write_data(&r.partner, &r.record_id, r.version, bundle.as_bytes())
        .unwrap();
}

/// The resource keys of a record as the store has it.
fn keys_of(store: &RecordStore, id: &str) -> Vec<String> {
    let record = store.get("zv", id).unwrap();
    record.resources.iter().map(str::to_string).collect()
}

fn withdraw(store: &RecordStore, id: &str) -> Record {
    let mut r = store.get("zv", id).unwrap();
    r.status = RecordStatus::Withdrawn;
    store.save(&r).unwrap();
    r
}

/// `(BSN, Patient.id)` of the patients holding `key` (`Type/id`) at `zv`.
fn holders(store: &RecordStore, key: &str) -> Vec<(String, String)> {
    let (resource_type, id) = key.split_once('/').unwrap();
    store
        .patients_holding("zv", resource_type, id)
        .into_iter()
        .map(|(bsn, patient_id)| (bsn.as_str().to_string(), patient_id))
        .collect()
}

fn pair(bsn: &str, patient_id: &str) -> (String, String) {
    (bsn.to_string(), patient_id.to_string())
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
        let dr = "Practitioner/dr";
        publish_holding(&store, record("r1", A, "pa", 1, 100), &[dr]);
        publish_holding(&store, record("r2", B, "pb", 1, 200), &[dr]);
        publish_holding(&store, record("r3", A, "pa", 1, 300), &["Condition/old"]);
        // r1: a crash after a new version was written, before its record.
        let r1 = holding(record("r1", A, "pa", 2, 500), &["Condition/unsaved"]);
        write_version(&store, &r1);
        // r2: a crash after the withdrawal was saved, before the prune.
        withdraw(&store, "r2");
        // r3: a crash after a new version was saved, before the prune.
        let r3 = holding(record("r3", A, "pa", 2, 400), &["Condition/new", dr]);
        store
            .write_data("zv", "r3", 2, br#"{"id":"r3-v2"}"#)
            .unwrap();
        store.save(&r3).unwrap();
        assert_eq!(holders(&store, dr), vec![pair(A, "pa")]);
        assert_eq!(holders(&store, "Condition/new"), vec![pair(A, "pa")]);
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
    // The lookup by resource answers as before the restart: the saved
    // versions' keys, not the withdrawn record's or the unsaved version's.
    assert_eq!(holders(&store, "Practitioner/dr"), vec![pair(A, "pa")]);
    assert_eq!(holders(&store, "Condition/new"), vec![pair(A, "pa")]);
    assert!(holders(&store, "Condition/old").is_empty());
    assert!(holders(&store, "Condition/unsaved").is_empty());
    assert!(holders(&store, "Patient/pb").is_empty());
}

#[test]
fn resource_keys_are_each_entry_type_and_id_once_in_entry_order() {
    let bundle = json!({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}},
        {"resource": {"resourceType": "Practitioner", "id": "dr"}},
        {"resource": {"resourceType": "Condition"}},
        {"resource": {"id": "no-type"}},
        {"fullUrl": "urn:uuid:no-resource"},
        {"resource": {"resourceType": "Practitioner", "id": "dr"}},
        {"resource": {"resourceType": "Binary", "id": "a/b"}},
        {"resource": {"resourceType": "Observation", "id": 7}},
        {"resource": {"resourceType": "Condition", "id": "c1"}},
        {"resource": {"resourceType": "Practitioner", "id": "dr2"}}
    ]});
    let keys = ResourceKeys::of_bundle(&bundle);
    assert_eq!(
        keys.iter().collect::<Vec<_>>(),
        vec![
            "Patient/p1",
            "Practitioner/dr",
            "Condition/c1",
            "Practitioner/dr2"
        ]
    );
    assert_eq!(keys.len(), 4);
    assert!(ResourceKeys::of_bundle(&json!({"resourceType": "Bundle"})).is_empty());
    assert!(ResourceKeys::of_bundle(&json!({"entry": {"resource": {}}})).is_empty());
    // Stored as a plain list, read back the same.
    let text = serde_json::to_string(&keys).unwrap();
    assert_eq!(
        text,
        r#"["Patient/p1","Practitioner/dr","Condition/c1","Practitioner/dr2"]"#
    );
    assert_eq!(serde_json::from_str::<ResourceKeys>(&text).unwrap(), keys);
    assert_eq!(format!("{keys:?}"), "ResourceKeys(4 resources)");
}

#[test]
fn a_resource_is_found_by_every_patient_whose_live_record_holds_it() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    let dr = "Practitioner/dr";
    publish_holding(&store, record("r1", A, "pa", 1, 100), &[dr, "Condition/c1"]);
    publish_holding(&store, record("r2", B, "pb", 1, 200), &[dr, "Binary/doc"]);
    publish_holding(&store, record("r3", A, "pa", 1, 300), &[dr]);

    assert_eq!(
        holders(&store, dr),
        vec![pair(A, "pa"), pair(B, "pb")],
        "both patients, each pair once, the most recently published first"
    );
    assert_eq!(holders(&store, "Binary/doc"), vec![pair(B, "pb")]);
    assert_eq!(holders(&store, "Condition/c1"), vec![pair(A, "pa")]);
    assert_eq!(holders(&store, "Patient/pb"), vec![pair(B, "pb")]);
    assert!(holders(&store, "Condition/c2").is_empty());
    assert!(
        holders(&store, "Binary/c1").is_empty(),
        "type and id both count"
    );
    assert!(
        store
            .patients_holding("other", "Practitioner", "dr")
            .is_empty()
    );
    assert!(
        store
            .patients_holding("zv", "Practitioner/dr", "")
            .is_empty()
    );
    assert!(
        store
            .patients_holding("zv", "Practitioner", "dr/")
            .is_empty()
    );

    // The same BSN under another Patient.id is another pair.
    publish_holding(&store, record("r4", A, "pa-2", 1, 400), &[dr]);
    assert_eq!(
        holders(&store, dr),
        vec![pair(A, "pa-2"), pair(A, "pa"), pair(B, "pb")]
    );
}

#[test]
fn a_new_version_replaces_the_resource_keys_of_the_old() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    let dr = "Practitioner/dr";
    publish_holding(&store, record("r1", A, "pa", 1, 100), &[dr, "Condition/c1"]);
    publish_holding(&store, record("r2", B, "pb", 1, 200), &["Condition/c1"]);
    let v2 = holding(record("r1", A, "pa", 2, 300), &["Condition/c2", dr]);
    write_version(&store, &v2);
    assert!(
        holders(&store, "Condition/c2").is_empty(),
        "not before it is saved"
    );
    store.save(&v2).unwrap();
    // Saved, not yet pruned: the lookup already has the new version's keys.
    assert_eq!(holders(&store, "Condition/c1"), vec![pair(B, "pb")]);
    assert_eq!(holders(&store, "Condition/c2"), vec![pair(A, "pa")]);
    assert_eq!(holders(&store, dr), vec![pair(A, "pa")]);
    store.prune(&v2).unwrap();
    assert_eq!(
        keys_of(&store, "r1"),
        vec!["Patient/pa", "Condition/c2", dr]
    );

    // A new version under another Patient.id takes the old one's key away.
    publish_holding(&store, record("r1", A, "pa-new", 3, 400), &[dr]);
    assert!(holders(&store, "Patient/pa").is_empty());
    assert!(holders(&store, "Condition/c2").is_empty());
    assert_eq!(holders(&store, dr), vec![pair(A, "pa-new")]);
}

#[test]
fn a_withdrawn_record_leaves_the_lookup_by_resource_at_once() {
    let site = TestSite::new("records");
    let store = RecordStore::open(&site.dir).unwrap();
    let dr = "Practitioner/dr";
    publish_holding(&store, record("r1", A, "pa", 1, 100), &[dr, "Condition/c1"]);
    publish_holding(&store, record("r2", B, "pb", 1, 200), &[dr]);
    let r2 = withdraw(&store, "r2");
    // Saved, not yet pruned: already gone.
    assert_eq!(holders(&store, dr), vec![pair(A, "pa")]);
    assert!(holders(&store, "Patient/pb").is_empty());
    store.prune(&r2).unwrap();

    withdraw(&store, "r1");
    assert!(holders(&store, dr).is_empty());
    assert!(holders(&store, "Condition/c1").is_empty());

    // Published again: found again, with the new version's keys.
    publish_holding(&store, record("r1", A, "pa", 2, 300), &[dr]);
    assert_eq!(holders(&store, dr), vec![pair(A, "pa")]);
    assert!(holders(&store, "Condition/c1").is_empty());
}

/// Strips the resource keys from a record file, as records were written
/// before they were kept.
fn strip_resources(site: &TestSite, id: &str) -> std::path::PathBuf {
    let path = site.dir.join("records/zv").join(id).join("record.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(value.as_object_mut().unwrap().remove("resources").is_some());
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    path
}

#[test]
fn a_record_file_without_resource_keys_gets_them_from_its_data_at_open() {
    let site = TestSite::new("records");
    let dr = "Practitioner/dr";
    {
        let store = RecordStore::open(&site.dir).unwrap();
        publish_holding(&store, record("r1", A, "pa", 1, 100), &[dr, "Condition/c1"]);
        publish_holding(&store, record("r2", B, "pb", 1, 200), &[dr]);
        let r3 = holding(record("r3", A, "pa", 1, 300), &["Condition/c3"]);
        publish(&store, &r3);
        store.prune(&withdraw(&store, "r3")).unwrap();
        publish_holding(&store, record("r4", B, "pb", 1, 400), &["Condition/c4"]);
    }
    let r1_path = strip_resources(&site, "r1");
    strip_resources(&site, "r2");
    let r3_path = strip_resources(&site, "r3");
    let r4_path = strip_resources(&site, "r4");
    // r4: a live record whose data is gone (its lookups by patient say so).
    std::fs::remove_file(site.dir.join("records/zv/r4/v1.json")).unwrap();
    let r3_before = std::fs::read(&r3_path).unwrap();
    let r4_before = std::fs::read(&r4_path).unwrap();

    let store = RecordStore::open(&site.dir).unwrap();
    assert_eq!(holders(&store, dr), vec![pair(B, "pb"), pair(A, "pa")]);
    assert_eq!(holders(&store, "Condition/c1"), vec![pair(A, "pa")]);
    assert!(holders(&store, "Condition/c3").is_empty(), "withdrawn");
    assert!(
        holders(&store, "Condition/c4").is_empty(),
        "no data to read them from"
    );
    assert_eq!(
        keys_of(&store, "r1"),
        vec!["Patient/pa", dr, "Condition/c1"]
    );
    // Written back: the file now holds them; the others are untouched.
    let saved: Record = serde_json::from_slice(&std::fs::read(&r1_path).unwrap()).unwrap();
    assert_eq!(saved, store.get("zv", "r1").unwrap());
    assert_eq!(std::fs::read(&r3_path).unwrap(), r3_before);
    assert_eq!(std::fs::read(&r4_path).unwrap(), r4_before);
    assert!(store.get("zv", "r4").unwrap().resources.is_empty());
    drop(store);

    // The next open reads them from the record, not from the data.
    std::fs::remove_file(site.dir.join("records/zv/r1/v1.json")).unwrap();
    let store = RecordStore::open(&site.dir).unwrap();
    assert_eq!(holders(&store, dr), vec![pair(B, "pb"), pair(A, "pa")]);
    assert_eq!(holders(&store, "Condition/c1"), vec![pair(A, "pa")]);
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
    assert!(
        !text.contains("Patient/pa"),
        "nor the resource keys: {text}"
    );
}
