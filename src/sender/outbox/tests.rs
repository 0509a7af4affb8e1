use super::*;
use crate::config::from_vars;
use crate::config::tests_support::TestSite;
use crate::ids::{BSN_SYSTEM, Bsn};
use crate::oauth::{CaseBinding, Grant};
use serde_json::{Value, json};
use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

const NOW: i64 = 1_800_000_000;
const BSN: &str = "999999151";

struct Fixture {
    site: TestSite,
    config: Config,
    rules: Rules,
    cases: CaseStore,
    records: RecordStore,
    spool: Spool,
    tokens: TokenStore,
    audit: AuditLog,
    state: ScanState,
    after_publish: Option<std::sync::Arc<dyn super::super::AfterPublish>>,
    publication: Option<std::sync::Arc<dyn super::super::Publication>>,
}

fn fixture() -> Fixture {
    let site = TestSite::new("outbox");
    let dir = site.dir.clone();
    let mut v = site.vars("https://np.a.example", "12345678");
    let path = |n: &str| dir.join(n).display().to_string();
    for (k, val) in [
        ("NP_ORG_AGB", "01234567".into()),
        ("NP_SYSTEM_ID", "2.16.840.1.113883.2.4.3.999.1".into()),
        ("NP_OUTBOX", path("outbox")),
        ("NP_INBOX", path("inbox")),
        ("NP_STATE_DIR", path("state")),
        ("NP_NOTIFICATION_TTL", "7d".into()),
        ("NP_MAX_BODY", "8KiB".into()),
        ("NP_PARTNERS", "hospb,vip,mitz,zv".into()),
        (
            "NP_PARTNER_HOSPB_FHIR_BASE",
            "https://b.example/fhir".into(),
        ),
        ("NP_PARTNER_HOSPB_ORG", "ura:87654321".into()),
        ("NP_PARTNER_HOSPB_CERT", "ura:87654321".into()),
        (
            "NP_PARTNER_VIP_FHIR_BASE",
            "https://vip.example/fhir/stu3".into(),
        ),
        ("NP_PARTNER_VIP_ORG", "agb:44446666".into()),
        ("NP_PARTNER_VIP_ID_SCHEME", "agb".into()),
        ("NP_PARTNER_VIP_ADDRESS_SYSTEM", "true".into()),
        ("NP_PARTNER_VIP_CERT", "dns:vip.example".into()),
        ("NP_PARTNER_MITZ_KIND", "mitz".into()),
        ("NP_PARTNER_MITZ_CERT", "dns:mitz.example".into()),
        ("NP_PARTNER_ZV_KIND", "zorgviewer".into()),
        ("NP_PARTNER_ZV_CERT", "dns:zv.example".into()),
        ("NP_PARTNER_ZV_CLIENT_ID", "zorgviewer".into()),
        (
            "NP_PARTNER_ZV_JWKS_URL",
            "https://auth.zv.example/.well-known/jwks".into(),
        ),
    ] {
        v.insert(k.to_string(), (val, None));
    }
    let config = from_vars(&v).unwrap();
    for p in ["hospb", "vip", "mitz", "zv"] {
        fs::create_dir_all(config.outbox.join(p)).unwrap();
    }
    let state = config.state_dir.clone();
    Fixture {
        rules: Rules::from_config(&config),
        cases: CaseStore::open(&state).unwrap(),
        records: RecordStore::open(&state).unwrap(),
        spool: Spool::open(&state).unwrap().0,
        tokens: TokenStore::open(&state, NOW).unwrap(),
        audit: AuditLog::open(&state).unwrap(),
        state: ScanState::default(),
        after_publish: None,
        publication: None,
        config,
        site,
    }
}

impl Fixture {
    fn scanner(&self) -> Scanner<'_> {
        Scanner {
            config: &self.config,
            rules: &self.rules,
            cases: &self.cases,
            records: &self.records,
            spool: &self.spool,
            tokens: &self.tokens,
            audit: &self.audit,
            after_publish: self.after_publish.as_deref(),
            publication: self.publication.as_deref(),
        }
    }

    fn scan(&mut self, now: i64) -> ScanReport {
        let mut state = std::mem::take(&mut self.state);
        let r = self.scanner().scan(&mut state, now);
        self.state = state;
        r
    }

    fn scan_until(&mut self, now: i64, step: Step) -> ScanReport {
        let mut state = std::mem::take(&mut self.state);
        let r = self.scanner().scan_until(&mut state, now, Some(step));
        self.state = state;
        r
    }

    fn outbox(&self, partner: &str) -> PathBuf {
        self.config.outbox.join(partner)
    }

    fn put(&self, partner: &str, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.outbox(partner).join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn export(&self, partner: &str, case: &str, bundle: &Value) -> PathBuf {
        self.put(
            partner,
            &format!("{case}.json"),
            &serde_json::to_vec(bundle).unwrap(),
        )
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn items(&self, state: State) -> Vec<Item> {
        self.spool
            .ids(state)
            .unwrap()
            .iter()
            .map(|id| self.spool.load(state, id).unwrap())
            .collect()
    }

    fn error_text(&self, partner: &str, name: &str) -> String {
        fs::read_to_string(
            self.outbox(partner)
                .join(REJECTED_DIR)
                .join(format!("{name}.error.txt")),
        )
        .unwrap()
    }

    /// Moves a queued item through in-flight to `to`, as a worker would.
    fn settle(&self, id: &str, to: State) {
        let item = self.spool.claim(id).unwrap();
        match to {
            State::Done => self.spool.complete(&item).unwrap(),
            State::Dead => self.spool.bury(&item).unwrap(),
            State::Retry => self.spool.retry(&item).unwrap(),
            _ => panic!("{to:?}"),
        }
    }
}

fn bundle(bsn: &str, extra: &[Value]) -> Value {
    let mut entries = vec![json!({"resource": {"resourceType": "Patient", "id": "p1",
        "identifier": [{"system": BSN_SYSTEM, "value": bsn}]}})];
    entries.extend(extra.iter().cloned());
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

fn condition(id: &str) -> Value {
    json!({"resource": {"resourceType": "Condition", "id": id,
        "onsetDateTime": "2020-01-01"}})
}

fn set_mtime(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn a_new_export_is_stored_queued_and_removed() {
    let mut f = fixture();
    let obs = json!({"resource": {"resourceType": "Observation", "id": "o1",
        "valueQuantity": {"value": "DECIMAL"}}});
    let text = serde_json::to_string(&bundle(BSN, &[condition("c1"), obs]))
        .unwrap()
        .replace("\"DECIMAL\"", "1.50");
    let path = f.put("hospb", "c-0042.json", text.as_bytes());
    let r = f.scan(NOW);
    assert_eq!(
        r,
        ScanReport {
            accepted: 1,
            ..ScanReport::default()
        }
    );
    assert!(!path.exists());
    assert_eq!(f.names(&f.outbox("hospb")), vec![CLAIMED_DIR]);
    assert!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());

    let case = f.cases.get("hospb", "c-0042").unwrap();
    assert_eq!(case.version, 1);
    assert_eq!(case.patient, BSN);
    assert_eq!(case.owner.as_deref(), Some("ura:87654321"));
    assert_eq!(case.expires_at, NOW + 7 * 86_400);
    assert_eq!(case.status, CaseStatus::Live);
    let data = f.cases.data("hospb", "c-0042", 1).unwrap();
    assert_eq!(data["entry"][1]["resource"]["id"], "c1");
    let stored = fs::read_to_string(f.cases.data_path("hospb", "c-0042", 1)).unwrap();
    assert!(stored.contains("1.50"), "decimals keep their digits");

    let items = f.items(State::Queued);
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(case.tasks.len(), 1);
    let sent = &case.tasks[0];
    assert_eq!(item.id, format!("notify-{}", sent.task_id));
    assert_eq!(item.id, sent.item_id);
    assert_eq!(item.kind, "notify");
    assert_eq!(item.partner, "hospb");
    assert_eq!(item.give_up_at, Some(NOW + 7 * 86_400));
    let body: NotifyBody = serde_json::from_value(item.body.clone()).unwrap();
    assert_eq!((body.case_id.as_str(), body.version), ("c-0042", 1));
    let t = &body.task;
    assert_eq!(
        t["identifier"][0]["value"],
        format!("urn:uuid:{}", sent.task_id)
    );
    assert_eq!(
        t["groupIdentifier"]["value"],
        format!("urn:uuid:{}", case.group_id)
    );
    assert_eq!(t["for"]["identifier"]["value"], BSN);
    assert_eq!(
        t["owner"]["identifier"],
        json!({"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "87654321"})
    );
    assert_eq!(
        t["requester"]["agent"]["identifier"]["value"],
        "urn:oid:2.16.840.1.113883.2.4.3.999.1"
    );
    assert_eq!(t["input"][0]["valueString"], case.authorization_base);
    assert_eq!(
        t["restriction"]["period"]["end"],
        time::rfc3339(NOW + 7 * 86_400)
    );

    let audit = fs::read_to_string(
        f.config
            .state_dir
            .join("audit")
            .join(format!("{}.jsonl", time::date(time::now_unix()))),
    )
    .unwrap();
    assert!(audit.contains("\"action\":\"export.accepted\""));
    assert!(audit.contains(BSN), "the audit trail names the patient");
}

#[test]
fn an_update_keeps_the_group_and_gets_a_new_task() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    assert_eq!(f.scan(NOW).accepted, 1);
    let first = f.cases.get("hospb", "c1").unwrap();
    f.export("hospb", "c1", &bundle(BSN, &[condition("b")]));
    let r = f.scan(NOW + 100);
    assert_eq!((r.accepted, r.updated), (0, 1));
    let second = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.group_id, first.group_id);
    assert_eq!(second.authorization_base, first.authorization_base);
    assert_eq!(second.expires_at, NOW + 100 + 7 * 86_400);
    assert_eq!(second.tasks.len(), 2);
    assert_ne!(second.tasks[0].task_id, second.tasks[1].task_id);
    assert_eq!(
        f.cases.data("hospb", "c1", 2).unwrap()["entry"][1]["resource"]["id"],
        "b"
    );
    let tasks: Vec<Value> = f
        .items(State::Queued)
        .into_iter()
        .map(|i| i.body["task"].clone())
        .collect();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["groupIdentifier"], tasks[1]["groupIdentifier"]);
    assert_ne!(tasks[0]["identifier"], tasks[1]["identifier"]);

    // Another patient under the same case id is refused.
    f.export("hospb", "c1", &bundle("999999990", &[]));
    assert_eq!(f.scan(NOW + 200).rejected, 1);
    let why = f.error_text("hospb", "c1.json");
    assert_eq!(
        why,
        "c1.json: case belongs to another patient: an update must keep the patient\n"
    );
    assert!(!why.contains("999999990"));
    assert_eq!(f.cases.get("hospb", "c1").unwrap().version, 2);
}

#[test]
fn cancel_revokes_and_queues_one_cancellation_per_live_task() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[]));
    f.scan(NOW);
    f.export("hospb", "c1", &bundle(BSN, &[condition("x")]));
    f.scan(NOW + 1);
    f.export("hospb", "c1", &bundle(BSN, &[condition("y")]));
    f.scan(NOW + 2);
    let case = f.cases.get("hospb", "c1").unwrap();
    let [t1, t2, t3] = [&case.tasks[0], &case.tasks[1], &case.tasks[2]];
    f.settle(&t1.item_id, State::Done);
    f.settle(&t2.item_id, State::Dead);
    // t3 is still queued.
    let grant = Grant::pull(
        "hospb",
        "b",
        OrgId::Ura("87654321".into()),
        None,
        CaseBinding {
            authorization_base: case.authorization_base.clone(),
            case_id: "c1".into(),
        },
        Bsn::parse(BSN).unwrap(),
    )
    .bound_to([1; 32]);
    let issued = f.tokens.issue(grant, NOW).unwrap();

    f.put("hospb", "c1.cancel", b"");
    let r = f.scan(NOW + 10);
    assert_eq!(r.cancelled, 1);
    assert!(f.names(&f.outbox("hospb")) == vec![CLAIMED_DIR]);
    let case = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(case.status, CaseStatus::Cancelled);
    assert!(case.tasks.iter().all(|t| t.status == "cancelled"));
    assert!(
        f.tokens
            .check(&issued.access_token, "hospb", &[1; 32], NOW + 10)
            .is_err()
    );
    let mut cancels: Vec<String> = f
        .items(State::Queued)
        .into_iter()
        .filter(|i| i.kind == "cancel")
        .map(|i| i.id)
        .collect();
    cancels.sort();
    let mut want = vec![
        format!("cancel-{}", t1.task_id),
        format!("cancel-{}", t3.task_id),
    ];
    want.sort();
    assert_eq!(cancels, want, "no cancellation for the dead notification");
    let c = f
        .spool
        .load(State::Queued, &format!("cancel-{}", t1.task_id))
        .unwrap();
    assert_eq!(c.body["task"]["status"], "cancelled");
    assert_eq!(c.body["notify_item"], t1.item_id);
    assert_eq!(
        c.body["task"]["identifier"][0]["value"],
        format!("urn:uuid:{}", t1.task_id)
    );
    assert_eq!(c.give_up_at, Some(NOW + 7 * 86_400));

    // A second .cancel is harmless; an export for the cancelled case is refused.
    f.put("hospb", "c1.cancel", b"again");
    assert_eq!(f.scan(NOW + 20).cancelled, 1);
    assert_eq!(
        f.items(State::Queued)
            .iter()
            .filter(|i| i.kind == "cancel")
            .count(),
        2
    );
    f.export("hospb", "c1", &bundle(BSN, &[]));
    assert_eq!(f.scan(NOW + 30).rejected, 1);
    assert_eq!(
        f.error_text("hospb", "c1.json"),
        "c1.json: case was cancelled\n"
    );
}

#[test]
fn cancel_of_an_unknown_case_is_rejected() {
    let mut f = fixture();
    f.put("hospb", "nope.cancel", b"");
    assert_eq!(f.scan(NOW).rejected, 1);
    assert_eq!(
        f.names(&f.outbox("hospb").join(REJECTED_DIR)),
        vec!["nope.cancel", "nope.cancel.error.txt"]
    );
    assert_eq!(
        f.error_text("hospb", "nope.cancel"),
        "nope.cancel: cancel for an unknown case\n"
    );
}

#[test]
fn temp_names_and_subfolders_are_left_alone() {
    let mut f = fixture();
    for name in [".c1.json", "c1.json.tmp", "c1.json.part", ".hidden"] {
        f.put("hospb", name, b"{half");
    }
    fs::create_dir_all(f.outbox("hospb").join("sub")).unwrap();
    fs::write(f.outbox("hospb").join("sub").join("c2.json"), b"x").unwrap();
    assert_eq!(f.scan(NOW), ScanReport::default());
    assert_eq!(
        f.names(&f.outbox("hospb")),
        vec![".c1.json", ".hidden", "c1.json.part", "c1.json.tmp", "sub"]
    );
    assert!(f.outbox("hospb").join("sub").join("c2.json").exists());
}

#[test]
fn unknown_folders_and_stray_files_are_rejected() {
    let mut f = fixture();
    fs::create_dir_all(f.config.outbox.join("stranger")).unwrap();
    fs::write(f.config.outbox.join("stranger").join("c1.json"), b"{}").unwrap();
    fs::write(f.config.outbox.join("stranger").join("c1.tmp"), b"{}").unwrap();
    fs::write(f.outbox("mitz").join("c2.json"), b"{}").unwrap();
    fs::write(f.config.outbox.join("c3.json"), b"{}").unwrap();
    let r = f.scan(NOW);
    assert_eq!(r.rejected, 3);
    assert_eq!(
        fs::read_to_string(f.config.outbox.join("stranger/.rejected/c1.json.error.txt")).unwrap(),
        "c1.json: unknown partner folder\n"
    );
    assert!(f.config.outbox.join("stranger/c1.tmp").exists());
    assert_eq!(
        f.names(&f.outbox("mitz").join(REJECTED_DIR)),
        vec!["c2.json", "c2.json.error.txt"],
        "a mitz partner has no outbox"
    );
    assert!(f.config.outbox.join(".rejected/c3.json.error.txt").exists());
    // The rejected folders themselves are never scanned again.
    assert_eq!(f.scan(NOW + 1), ScanReport::default());
}

#[test]
fn rejected_files_are_never_overwritten() {
    let mut f = fixture();
    f.put("hospb", "c1.json", b"not json 1");
    f.scan(NOW);
    f.put("hospb", "c1.json", b"not json 2");
    f.scan(NOW);
    f.put("hospb", "c1.json", b"not json 3");
    f.scan(NOW);
    let stamp = time::compact(NOW);
    assert_eq!(
        f.names(&f.outbox("hospb").join(REJECTED_DIR)),
        vec![
            format!("c1.{stamp}-2.json"),
            format!("c1.{stamp}-2.json.error.txt"),
            format!("c1.{stamp}.json"),
            format!("c1.{stamp}.json.error.txt"),
            "c1.json".to_string(),
            "c1.json.error.txt".to_string(),
        ]
    );
    let rej = f.outbox("hospb").join(REJECTED_DIR);
    assert_eq!(fs::read(rej.join("c1.json")).unwrap(), b"not json 1");
    assert_eq!(
        fs::read(rej.join(format!("c1.{stamp}-2.json"))).unwrap(),
        b"not json 3"
    );
    let why = fs::read_to_string(rej.join(format!("c1.{stamp}.json.error.txt"))).unwrap();
    assert!(why.starts_with("c1.json: invalid json: "), "{why}");
    assert_eq!(why.lines().count(), 1);
}

#[test]
fn every_quarantine_reason_reaches_the_error_file() {
    let mut f = fixture();
    let too_big = format!("{{\"x\":\"{}\"}}", "a".repeat(9000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad id.json", b"{}".to_vec(), "bad case-id"),
        ("c1.txt", b"{}".to_vec(), "unsupported extension"),
        (
            "c2.json",
            too_big.into_bytes(),
            "over the limit of 8192 bytes",
        ),
        (
            "c3.json",
            b"{\"resourceType\":\"Bundle\",\"resourceType\":\"Bundle\"}".to_vec(),
            "duplicate json key",
        ),
        (
            "c4.json",
            br#"{"resourceType":"Patient","id":"p"}"#.to_vec(),
            "not a Bundle",
        ),
        (
            "c5.json",
            serde_json::to_vec(&json!({"resourceType":"Bundle","type":"message"})).unwrap(),
            "wrong Bundle type",
        ),
        (
            "c6.json",
            serde_json::to_vec(&json!({"resourceType":"Bundle","type":"collection"})).unwrap(),
            "no Patient",
        ),
        (
            "c7.xml",
            b"<Bundle xmlns=\"http://hl7.org/fhir\"><bogus/></Bundle>".to_vec(),
            "invalid xml",
        ),
        ("c8.xml", b"<!DOCTYPE x><Bundle/>".to_vec(), "invalid xml"),
    ];
    for (name, bytes, _) in &cases {
        f.put("hospb", name, bytes);
    }
    let r = f.scan(NOW);
    assert_eq!(r.rejected, cases.len());
    for (name, _, needle) in &cases {
        let why = f.error_text("hospb", name);
        assert!(
            why.starts_with(&format!("{name}: ")) && why.contains(needle),
            "{name}: {why}"
        );
    }
}

/// An STU3 Bundle in XML: Patient `patient_id` with BSN, then `more`.
fn xml_bundle(patient_id: &str, more: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="collection"/>
  <entry><resource><Patient><id value="{patient_id}"/>
    <identifier><system value="{BSN_SYSTEM}"/><value value="{BSN}"/></identifier>
  </Patient></resource></entry>
  {more}
</Bundle>"#
    )
}

#[test]
fn xml_exports_are_accepted() {
    let mut f = fixture();
    let xml = xml_bundle(
        "p1",
        r#"<entry><resource><Binary><id value="doc1"/><contentType value="text/plain"/><content value="aGk="/></Binary></resource></entry>"#,
    );
    f.put("hospb", "x1.xml", xml.as_bytes());
    assert_eq!(f.scan(NOW).accepted, 1);
    let data = f.cases.data("hospb", "x1", 1).unwrap();
    assert_eq!(data["entry"][1]["resource"]["resourceType"], "Binary");
    let item = &f.items(State::Queued)[0];
    let inputs = item.body["task"]["input"].as_array().unwrap();
    assert!(
        inputs.iter().any(|i| i["valueString"] == "Binary/doc1"
            && i["type"]["coding"][0]["code"] == "read-resource")
    );
}

#[test]
fn symlinks_fifos_and_oversized_files_are_refused_without_reading() {
    let mut f = fixture();
    let secret = f.site.dir.join("secret.json");
    fs::write(&secret, serde_json::to_vec(&bundle(BSN, &[])).unwrap()).unwrap();
    symlink(&secret, f.outbox("hospb").join("c1.json")).unwrap();
    let fifo = f.outbox("hospb").join("c2.json");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let r = f.scan(NOW);
    assert_eq!(r.rejected, 2);
    assert_eq!(
        f.error_text("hospb", "c1.json"),
        "c1.json: not a regular file (symbolic link)\n"
    );
    assert_eq!(
        f.error_text("hospb", "c2.json"),
        "c2.json: not a regular file (fifo)\n"
    );
    assert!(secret.exists(), "the link target is untouched");
    assert!(f.cases.get("hospb", "c1").is_none());
}

#[test]
fn a_transient_failure_defers_and_an_unchanged_file_waits_its_turn() {
    let mut f = fixture();
    // A file where the case folder must go: storing fails until it is removed.
    let blocker = f.config.state_dir.join("cases").join("hospb");
    fs::write(&blocker, b"").unwrap();
    f.export("hospb", "c1", &bundle(BSN, &[]));
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.deferred), (0, 1));
    let claimed = f.outbox("hospb").join(CLAIMED_DIR).join("c1.json");
    assert!(claimed.exists(), "left in place, claimed");
    let d = f.state.deferred[&claimed];
    assert_eq!((d.attempts, d.next_try), (1, NOW + DEFER_FIRST_SECS));

    fs::remove_file(&blocker).unwrap();
    // Unchanged and within its back-off: not read again.
    assert_eq!(f.scan(NOW + 5).deferred, 1);
    assert!(f.cases.get("hospb", "c1").is_none());
    // A newer export with the same name waits behind the claimed one.
    f.export("hospb", "c1", &bundle(BSN, &[condition("z")]));
    assert_eq!(f.scan(NOW + 6).deferred, 2);
    // After the back-off the claimed one goes, then the newer one.
    let r = f.scan(NOW + DEFER_FIRST_SECS);
    assert_eq!((r.accepted, r.updated, r.deferred), (1, 1, 0));
    let case = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(case.version, 2);
    assert_eq!(
        f.cases.data("hospb", "c1", 2).unwrap()["entry"][1]["resource"]["id"],
        "z",
        "the newer export is the latest version"
    );
    assert!(f.state.deferred.is_empty());
}

#[test]
fn a_cancel_waits_behind_a_deferred_export_of_its_case() {
    let mut f = fixture();
    let blocker = f.config.state_dir.join("cases").join("hospb");
    fs::write(&blocker, b"").unwrap();
    let data = f.export("hospb", "c1", &bundle(BSN, &[]));
    set_mtime(&data, 60);
    assert_eq!(f.scan(NOW).deferred, 1);
    let cancel = f.put("hospb", "c1.cancel", b"");
    let other = f.export("hospb", "c2", &bundle(BSN, &[]));
    fs::remove_file(&blocker).unwrap();
    // The export is in its back-off: the cancel of the same case waits,
    // unclaimed; another case goes ahead.
    let r = f.scan(NOW + 1);
    assert_eq!(
        (r.accepted, r.cancelled, r.rejected, r.deferred),
        (1, 0, 0, 2)
    );
    assert!(cancel.exists());
    assert!(!other.exists());
    let r = f.scan(NOW + DEFER_FIRST_SECS);
    assert_eq!((r.accepted, r.cancelled, r.rejected), (1, 1, 0));
    assert_eq!(
        f.cases.get("hospb", "c1").unwrap().status,
        CaseStatus::Cancelled
    );
}

#[test]
fn a_changed_deferred_file_is_read_again_at_once() {
    let mut f = fixture();
    let blocker = f.config.state_dir.join("cases").join("hospb");
    fs::write(&blocker, b"").unwrap();
    f.export("hospb", "c1", &bundle(BSN, &[]));
    assert_eq!(f.scan(NOW).deferred, 1);
    fs::remove_file(&blocker).unwrap();
    let claimed = f.outbox("hospb").join(CLAIMED_DIR).join("c1.json");
    set_mtime(&claimed, 3_600);
    assert_eq!(f.scan(NOW + 1).accepted, 1);
}

#[test]
fn export_and_cancel_are_taken_in_mtime_order() {
    let mut f = fixture();
    let data = f.export("hospb", "c1", &bundle(BSN, &[]));
    let cancel = f.put("hospb", "c1.cancel", b"");
    set_mtime(&data, 20);
    set_mtime(&cancel, 10);
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.cancelled, r.rejected), (1, 1, 0));
    assert_eq!(
        f.cases.get("hospb", "c1").unwrap().status,
        CaseStatus::Cancelled
    );
    // Not delivered yet: the cancellation waits for it (delivery decides).
    assert_eq!(f.items(State::Queued).len(), 2);
}

/// Regression: an export and its `.cancel` written within one clock tick
/// have the same mtime, and the name put `c1.cancel` before `c1.json`: the
/// cancel was refused ("cancel for an unknown case") and the case stayed live.
#[test]
fn an_export_and_its_cancel_in_one_clock_tick_keep_their_order() {
    let mut f = fixture();
    let data = f.export("hospb", "c1", &bundle(BSN, &[]));
    let cancel = f.put("hospb", "c1.cancel", b"");
    let t = SystemTime::now() - Duration::from_secs(5);
    for p in [&data, &cancel] {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let r = f.scan(NOW);
    assert_eq!((r.accepted, r.cancelled, r.rejected), (1, 1, 0), "{r:?}");
    assert_eq!(
        f.cases.get("hospb", "c1").unwrap().status,
        CaseStatus::Cancelled
    );
}

#[test]
fn agb_partner_addressed_as_a_system() {
    let mut f = fixture();
    f.export("vip", "r1", &bundle(BSN, &[]));
    assert_eq!(f.scan(NOW).accepted, 1);
    let case = f.cases.get("vip", "r1").unwrap();
    assert_eq!(case.owner, None);
    let task = &f.items(State::Queued)[0].body["task"];
    assert!(task.get("owner").is_none());
    assert_eq!(
        task["requester"]["onBehalfOf"]["identifier"],
        json!({"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.2.4.6.1.01234567"})
    );
}

/// A crash after each step of accepting an export (first export and
/// update): the next pass, with fresh memory as after a restart, finishes
/// the job exactly once — one Task, one queued notification, the file gone.
#[test]
fn a_crash_between_steps_sends_each_export_exactly_once() {
    for update in [false, true] {
        for step in [
            Step::Claimed,
            Step::DataWritten,
            Step::CaseSaved,
            Step::Enqueued,
        ] {
            let label = format!("{step:?}, update {update}");
            let mut f = fixture();
            if update {
                f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
                assert_eq!(f.scan(NOW).accepted, 1);
            }
            let before = f.cases.get("hospb", "c1").map_or(0, |c| c.tasks.len());
            f.export("hospb", "c1", &bundle(BSN, &[condition("b")]));
            let r = f.scan_until(NOW + 1, step);
            assert_eq!(r.accepted + r.updated, 0, "{label}");
            let claimed = f.outbox("hospb").join(CLAIMED_DIR).join("c1.json");
            assert!(claimed.exists(), "{label}: the file is still there");
            // The restart: a fresh scanner state, as after a crash.
            f.state = ScanState::default();
            let r = f.scan(NOW + 2);
            let finished_before = step >= Step::CaseSaved;
            assert_eq!(
                (r.accepted + r.updated, r.already_accepted),
                if finished_before { (0, 1) } else { (1, 0) },
                "{label}: {r:?}"
            );
            assert_eq!(r.requeued, usize::from(step == Step::CaseSaved), "{label}");
            assert!(!claimed.exists(), "{label}");
            let case = f.cases.get("hospb", "c1").unwrap();
            assert_eq!(case.tasks.len(), before + 1, "{label}: one Task per export");
            assert_eq!(case.version, u32::try_from(before).unwrap() + 1, "{label}");
            let notify: Vec<Item> = f
                .items(State::Queued)
                .into_iter()
                .filter(|i| i.kind == KIND_NOTIFY)
                .collect();
            assert_eq!(
                notify.len(),
                before + 1,
                "{label}: one notification per Task"
            );
            let latest = case.tasks.last().unwrap();
            let item = notify.iter().find(|i| i.id == latest.item_id).unwrap();
            assert_eq!(
                item.body["task"]["identifier"][0]["value"],
                format!("urn:uuid:{}", latest.task_id),
                "{label}"
            );
            assert_eq!(
                f.cases.data("hospb", "c1", case.version).unwrap()["entry"][1]["resource"]["id"],
                "b",
                "{label}"
            );
            // Nothing more on later passes.
            assert_eq!(f.scan(NOW + 3), ScanReport::default(), "{label}");
        }
    }
}

/// Regression: a crash between queueing the notification and removing the
/// claimed file sent the same data twice (same group id): after the restart
/// the file was accepted again as an update, with a new Task identifier.
#[test]
fn a_crash_after_queueing_does_not_send_the_same_file_twice() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    f.scan_until(NOW, Step::Enqueued);
    let first = f.cases.get("hospb", "c1").unwrap();
    // The notification may even be delivered before the restart.
    let id = first.tasks[0].item_id.clone();
    f.settle(&id, State::Done);
    f.state = ScanState::default();
    let r = f.scan(NOW + 1);
    assert_eq!((r.accepted, r.updated, r.already_accepted), (0, 0, 1));
    assert_eq!(f.cases.get("hospb", "c1").unwrap(), first, "no new version");
    assert!(f.items(State::Queued).is_empty(), "nothing queued again");
    assert!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
}

/// Regression: a crash between saving the case and queueing its
/// notification left a Task in the case record that was never sent (and
/// the file, accepted again, became a second version of the same data).
#[test]
fn a_crash_after_saving_the_case_queues_the_saved_task() {
    // The claimed file is still there: it completes the job.
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    f.scan_until(NOW, Step::CaseSaved);
    let saved = f.cases.get("hospb", "c1").unwrap();
    assert!(f.spool.find(&saved.tasks[0].item_id).is_none());
    f.state = ScanState::default();
    let r = f.scan(NOW + 1);
    assert_eq!((r.requeued, r.already_accepted), (1, 1));
    assert_eq!(f.cases.get("hospb", "c1").unwrap(), saved);
    let item = f
        .spool
        .load(State::Queued, &saved.tasks[0].item_id)
        .unwrap();
    assert_eq!(item.give_up_at, Some(NOW + 7 * 86_400));
    assert_eq!(
        item.body["task"]["authoredOn"],
        time::rfc3339(NOW),
        "the Task as it was made"
    );
    assert_eq!(
        item.body["task"]["input"][0]["valueString"],
        saved.authorization_base
    );

    // The file is gone (an operator cleaned up): the first pass after the
    // restart queues it all the same, and only once.
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    f.scan_until(NOW, Step::CaseSaved);
    fs::remove_file(f.outbox("hospb").join(CLAIMED_DIR).join("c1.json")).unwrap();
    f.state = ScanState::default();
    assert_eq!(f.scan(NOW + 1).requeued, 1);
    assert_eq!(f.scan(NOW + 2).requeued, 0);
    assert_eq!(f.items(State::Queued).len(), 1);
}

/// Only the latest Task of a case is queued late: an earlier one without a
/// spool item was superseded before it was ever sent (records from before
/// the fix), and sending it now would reach the partner out of order.
#[test]
fn a_superseded_task_that_was_never_queued_stays_unsent() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[condition("a")]));
    f.scan_until(NOW, Step::CaseSaved);
    fs::remove_file(f.outbox("hospb").join(CLAIMED_DIR).join("c1.json")).unwrap();
    f.export("hospb", "c1", &bundle(BSN, &[condition("b")]));
    // As the code before the fix did: the update accepted with no memory of
    // the unqueued Task.
    f.state.requeue_checked = true;
    assert_eq!(f.scan(NOW + 1).updated, 1);
    let case = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(case.tasks.len(), 2);
    f.state = ScanState::default();
    assert_eq!(f.scan(NOW + 2).requeued, 0);
    let queued: Vec<String> = f.items(State::Queued).into_iter().map(|i| i.id).collect();
    assert_eq!(queued, vec![case.tasks[1].item_id.clone()]);
}

/// The same bytes written again by the EHR are a new export (an expired
/// notification renewed, say), not a leftover.
#[test]
fn identical_data_exported_again_is_a_new_version() {
    let mut f = fixture();
    let b = bundle(BSN, &[condition("a")]);
    f.export("hospb", "c1", &b);
    assert_eq!(f.scan(NOW).accepted, 1);
    let path = f.export("hospb", "c1", &b);
    set_mtime(&path, 0);
    let r = f.scan(NOW + 1);
    assert_eq!((r.updated, r.already_accepted), (1, 0));
    let case = f.cases.get("hospb", "c1").unwrap();
    assert_eq!(case.tasks.len(), 2);
    let (s1, s2) = (
        case.tasks[0].source.as_ref().unwrap(),
        case.tasks[1].source.as_ref().unwrap(),
    );
    assert_eq!(s1.sha256, s2.sha256);
    assert_eq!(s1.name, "c1.json");
    assert_ne!((s1.inode, s1.mtime), (s2.inode, s2.mtime));
}

/// A crash after a `.cancel` saved the case as cancelled but before
/// cancellations were queued and tokens revoked: the next pass does the
/// rest, once.
#[test]
fn a_crash_while_cancelling_is_finished_on_the_next_pass() {
    let mut f = fixture();
    f.export("hospb", "c1", &bundle(BSN, &[]));
    f.scan(NOW);
    let case = f.cases.get("hospb", "c1").unwrap();
    f.settle(&case.tasks[0].item_id, State::Done);
    let grant = Grant::pull(
        "hospb",
        "b",
        OrgId::Ura("87654321".into()),
        None,
        CaseBinding {
            authorization_base: case.authorization_base.clone(),
            case_id: "c1".into(),
        },
        Bsn::parse(BSN).unwrap(),
    )
    .bound_to([1; 32]);
    let issued = f.tokens.issue(grant, NOW).unwrap();
    f.put("hospb", "c1.cancel", b"");
    assert_eq!(f.scan_until(NOW + 1, Step::CaseCancelled).cancelled, 0);
    assert_eq!(
        f.cases.get("hospb", "c1").unwrap().status,
        CaseStatus::Cancelled
    );
    f.state = ScanState::default();
    assert_eq!(f.scan(NOW + 2).cancelled, 1);
    assert!(
        f.tokens
            .check(&issued.access_token, "hospb", &[1; 32], NOW + 2)
            .is_err()
    );
    let cancels: Vec<Item> = f
        .items(State::Queued)
        .into_iter()
        .filter(|i| i.kind == KIND_CANCEL)
        .collect();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].id, cancel_item_id(&case.tasks[0].task_id));
    assert!(f.names(&f.outbox("hospb").join(CLAIMED_DIR)).is_empty());
    let audit = fs::read_to_string(
        f.config
            .state_dir
            .join("audit")
            .join(format!("{}.jsonl", time::date(time::now_unix()))),
    )
    .unwrap();
    assert_eq!(audit.matches("\"action\":\"case.cancelled\"").count(), 1);
}

/// A notification that died after an attempt (which may have reached the
/// partner) still gets a cancellation; one that died untried does not.
#[test]
fn cancel_covers_a_dead_notification_that_was_tried() {
    let mut f = fixture();
    for c in ["tried", "untried"] {
        f.export("hospb", c, &bundle(BSN, &[]));
    }
    f.scan(NOW);
    for (c, attempts) in [("tried", 1), ("untried", 0)] {
        let id = f.cases.get("hospb", c).unwrap().tasks[0].item_id.clone();
        let mut item = f.spool.claim(&id).unwrap();
        item.attempts = attempts;
        f.spool.bury(&item).unwrap();
        f.put("hospb", &format!("{c}.cancel"), b"");
    }
    assert_eq!(f.scan(NOW + 1).cancelled, 2);
    let cancels: Vec<String> = f.items(State::Queued).into_iter().map(|i| i.id).collect();
    let tried = f.cases.get("hospb", "tried").unwrap();
    assert_eq!(cancels, vec![cancel_item_id(&tried.tasks[0].task_id)]);
}

#[test]
fn free_names_keep_the_extension() {
    let f = fixture();
    let dir = f.site.dir.join("rej");
    fs::create_dir_all(&dir).unwrap();
    assert_eq!(free_name(&dir, "a.json", NOW), "a.json");
    fs::write(dir.join("a.json.error.txt"), b"").unwrap();
    assert_eq!(
        free_name(&dir, "a.json", NOW),
        format!("a.{}.json", time::compact(NOW))
    );
    fs::write(dir.join("noext"), b"").unwrap();
    assert_eq!(
        free_name(&dir, "noext", NOW),
        format!("noext.{}", time::compact(NOW))
    );
}

mod batch;
mod publication;
mod publish;
mod names;
