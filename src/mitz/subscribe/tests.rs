//! The subscription record, the queue and the worker against real folders,
//! with Mitz's answers scripted (tests/mitz_subscriptions.rs runs the real
//! daemon against a stand-in Mitz over mTLS).

use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;
use crate::config::from_vars;
use crate::config::tests_support::TestSite;
use crate::http::partners::HttpReply;
use crate::spool::State;

const NOW: i64 = 1_800_000_000;
const BSN: &str = "999911120";
const BASE: &str = "https://mitz.example/tst-us/mitz";
const URL: &str = "https://mitz.example/tst-us/mitz/abonnementen/fhir/Subscription";

struct Fixture {
    _site: TestSite,
    config: Arc<Config>,
    spool: Arc<Spool>,
    store: Arc<SubscriptionStore>,
    subscriptions: Subscriptions,
}

fn fixture() -> Fixture {
    let site = TestSite::new("mitz-sub");
    let dir = site.dir.clone();
    let path = |n: &str| dir.join(n).display().to_string();
    let mut v = site.vars("https://np.b.example", "87654321");
    for (k, val) in [
        ("NP_OUTBOX", path("outbox")),
        ("NP_INBOX", path("inbox")),
        ("NP_STATE_DIR", path("state")),
        ("NP_ORG_CATEGORY", "Z3".into()),
        ("NP_SOURCE_ID", "2.16.528.1.1007.3.3.87654321.1".into()),
        ("NP_PARTNERS", "mitz,broker".into()),
        ("NP_PARTNER_MITZ_KIND", "mitz".into()),
        ("NP_PARTNER_MITZ_CERT", "dns:mitz.example".into()),
        ("NP_PARTNER_MITZ_URL", BASE.into()),
        ("NP_PARTNER_BROKER_KIND", "mitz".into()),
        ("NP_PARTNER_BROKER_CERT", "dns:broker.example".into()),
    ] {
        v.insert(k.to_string(), (val, None));
    }
    let config = Arc::new(from_vars(&v).unwrap());
    let state = config.state_dir.clone();
    std::fs::create_dir_all(&state).unwrap();
    let spool = Arc::new(Spool::open(&state).unwrap().0);
    let audit = Arc::new(AuditLog::open(&state).unwrap());
    let store = Arc::new(SubscriptionStore::open(&state).unwrap());
    let subscriptions = Subscriptions::new(config.clone(), spool.clone(), audit, store.clone());
    Fixture {
        _site: site,
        config,
        spool,
        store,
        subscriptions,
    }
}

impl Fixture {
    fn bsn(&self) -> Bsn {
        Bsn::parse(BSN).unwrap()
    }

    fn api(&self) -> MitzApi<'_> {
        self.config.mitz_api("mitz").unwrap()
    }

    /// Queues the patient and claims the item, as the dispatcher does.
    fn claimed(&self) -> Item {
        assert_eq!(
            queue(
                &self.spool,
                &self.store,
                self.api(),
                &self.bsn(),
                Origin::Published,
                NOW
            )
            .unwrap(),
            Queued::New
        );
        self.spool
            .claim(&subscription::item_id("mitz", &self.bsn()))
            .unwrap()
    }

    fn audit_lines(&self) -> Vec<Value> {
        let day = format!(
            "{}.jsonl",
            crate::util::time::date(crate::util::time::now_unix())
        );
        std::fs::read_to_string(self.config.state_dir.join("audit").join(day))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// One request as the worker made it.
#[derive(Debug, Clone)]
struct Sent {
    partner: String,
    method: String,
    url: String,
    content_type: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// Mitz, scripted: one answer (or transport failure) for every request.
struct Scripted {
    answer: Result<HttpReply, String>,
    sent: Mutex<Vec<Sent>>,
}

impl Scripted {
    fn answering(status: u16, location: Option<&str>, body: &str) -> Scripted {
        Scripted {
            answer: Ok(HttpReply {
                status,
                body: body.as_bytes().to_vec(),
                content_type: Some("application/fhir+json".into()),
                cache_control: None,
                retry_after: None,
                location: location.map(String::from),
            }),
            sent: Mutex::new(Vec::new()),
        }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

impl PartnerHttp for Scripted {
    fn get(&self, _: &str, url: &str, _: &[(&str, &str)]) -> Result<HttpReply, String> {
        panic!("unexpected GET {url}")
    }

    fn send(
        &self,
        partner: &str,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, String> {
        self.sent.lock().unwrap().push(Sent {
            partner: partner.into(),
            method: method.into(),
            url: url.into(),
            content_type: content_type.into(),
            body: body.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        self.answer.clone()
    }
}

#[test]
fn queueing_is_idempotent_and_stops_once_recorded() {
    let f = fixture();
    let bsn = f.bsn();
    let q = |origin| queue(&f.spool, &f.store, f.api(), &bsn, origin, NOW).unwrap();
    assert_eq!(q(Origin::Published), Queued::New);
    assert_eq!(q(Origin::Backfill), Queued::Pending, "the same work");
    let id = subscription::item_id("mitz", &bsn);
    assert_eq!(f.spool.ids(State::Queued).unwrap(), vec![id.clone()]);
    let item = f.spool.load(State::Queued, &id).unwrap();
    assert_eq!(
        (item.kind.as_str(), item.partner.as_str(), item.attempts),
        (KIND_SUBSCRIBE, "mitz", 0)
    );
    assert_eq!(item.body, json!({"patient": BSN, "origin": "published"}));
    // Given up (dead) is still the same work: `retry-dead` requeues it.
    let claimed = f.spool.claim(&id).unwrap();
    f.spool.bury(&claimed).unwrap();
    assert_eq!(q(Origin::Published), Queued::Pending);
    // Recorded: nothing to queue, whatever the spool holds.
    f.store
        .save(&Recorded {
            partner: "mitz".into(),
            patient: BSN.into(),
            subscription: Some("s1".into()),
            status: 201,
            subscribed_at: NOW,
        })
        .unwrap();
    std::fs::remove_file(f.config.state_dir.join(format!("spool/dead/{id}.json"))).unwrap();
    assert_eq!(q(Origin::Backfill), Queued::Recorded);
    assert!(f.spool.find(&id).is_none());
}

#[test]
fn a_published_patient_is_queued_at_every_mitz_partner_with_a_url() {
    let f = fixture();
    let bsn = f.bsn();
    assert_eq!(f.subscriptions.published(&bsn, NOW), Ok(1));
    assert_eq!(
        f.subscriptions.published(&bsn, NOW + 1),
        Ok(0),
        "queued once"
    );
    let queued = f.spool.ids(State::Queued).unwrap();
    assert_eq!(queued, vec![subscription::item_id("mitz", &bsn)]);
    assert!(
        !queued[0].contains(BSN),
        "the broker (no URL) gets nothing, and no id holds the BSN"
    );
}

#[test]
fn created_the_subscription_is_recorded_audited_and_done() {
    let f = fixture();
    let item = f.claimed();
    let mitz = Scripted::answering(201, Some(&format!("{URL}/sub-1")), "");
    assert_eq!(f.subscriptions.run(&item, &mitz, NOW + 5), Outcome::Done);

    let sent = mitz.sent();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(
        (s.partner.as_str(), s.method.as_str(), s.url.as_str()),
        ("mitz", "POST", URL)
    );
    assert_eq!(s.content_type, "application/fhir+json");
    let header = |name: &str| {
        s.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("Accept").as_deref(), Some("application/fhir+json"));
    let rid = header("X-Request-Id").unwrap();
    assert!(crate::util::random::is_uuid(&rid), "{rid}");
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    let expected = Subscriber::of(&f.config).unwrap().subscription(&f.bsn());
    assert_eq!(body, expected, "the Subscription of the builder");
    assert_eq!(
        body["channel"]["endpoint"], "https://np.b.example/mitz/fhir",
        "NP_MITZ_NOTIFY_URL"
    );

    assert_eq!(
        f.store.get("mitz", &f.bsn()).unwrap(),
        Some(Recorded {
            partner: "mitz".into(),
            patient: BSN.into(),
            subscription: Some("sub-1".into()),
            status: 201,
            subscribed_at: NOW + 5,
        })
    );
    let audit = f.audit_lines();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let a = &audit[0];
    assert_eq!(
        (
            &a["action"],
            &a["outcome"],
            &a["partner"],
            &a["patient"],
            &a["object"],
            &a["request_id"]
        ),
        (
            &json!("mitz.subscribed"),
            &json!("success"),
            &json!("mitz"),
            &json!(BSN),
            &json!("Subscription/sub-1"),
            &json!(rid)
        )
    );
    // The record's file name does not hold the BSN.
    for e in std::fs::read_dir(f.config.state_dir.join("mitz/subscriptions")).unwrap() {
        assert!(!e.unwrap().file_name().to_string_lossy().contains(BSN));
    }

    // Recorded: running the same work again asks Mitz nothing.
    let again = Scripted::answering(500, None, "");
    assert_eq!(f.subscriptions.run(&item, &again, NOW + 6), Outcome::Done);
    assert!(again.sent().is_empty());
}

#[test]
fn already_subscribed_is_recorded_with_the_id_mitz_returns() {
    let f = fixture();
    let item = f.claimed();
    let mitz = Scripted::answering(
        202,
        None,
        r#"{"resourceType":"Subscription","id":"existing-9","status":"active"}"#,
    );
    assert_eq!(f.subscriptions.run(&item, &mitz, NOW), Outcome::Done);
    let r = f.store.get("mitz", &f.bsn()).unwrap().unwrap();
    assert_eq!(
        (r.status, r.subscription.as_deref()),
        (202, Some("existing-9"))
    );
}

#[test]
fn a_refusal_is_dead_with_its_reason_and_nothing_recorded() {
    let f = fixture();
    let item = f.claimed();
    let mitz = Scripted::answering(
        422,
        None,
        r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"business-rule","diagnostics":"patient 999911120 is not known to Mitz"}]}"#,
    );
    let Outcome::Dead(reason) = f.subscriptions.run(&item, &mitz, NOW) else {
        panic!("a 422 is dead");
    };
    assert_eq!(
        reason,
        format!(
            "partner mitz: POST {URL} answered 422 (OperationOutcome business-rule: patient <number> is not known to Mitz)"
        )
    );
    assert_eq!(f.store.get("mitz", &f.bsn()).unwrap(), None);
    let audit = f.audit_lines();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (&audit[0]["outcome"], &audit[0]["reason"]),
        (&json!("error"), &json!(reason))
    );
}

#[test]
fn throttling_server_errors_and_transport_failures_are_retried() {
    let f = fixture();
    let item = f.claimed();
    let mut busy = Scripted::answering(429, None, "");
    if let Ok(r) = busy.answer.as_mut() {
        r.retry_after = Some("12".into());
    }
    assert_eq!(
        f.subscriptions.run(&item, &busy, NOW),
        Outcome::Retry {
            reason: format!("partner mitz: POST {URL} answered 429"),
            retry_after: Some(12)
        }
    );
    let down = Scripted {
        answer: Err("connection refused".into()),
        sent: Mutex::new(Vec::new()),
    };
    assert_eq!(
        f.subscriptions.run(&item, &down, NOW),
        Outcome::Retry {
            reason: format!("partner mitz: POST {URL} failed: connection refused"),
            retry_after: None
        }
    );
    assert_eq!(f.store.get("mitz", &f.bsn()).unwrap(), None);
    assert!(f.audit_lines().is_empty(), "nothing happened yet");
}

#[test]
fn work_for_a_partner_without_a_url_or_with_a_broken_body_is_dead() {
    let f = fixture();
    let mut item = f.claimed();
    let mitz = Scripted::answering(201, Some(&format!("{URL}/x")), "");
    item.partner = "broker".into();
    let Outcome::Dead(reason) = f.subscriptions.run(&item, &mitz, NOW) else {
        panic!("no URL, no subscription");
    };
    assert!(reason.contains("NP_PARTNER_BROKER_URL"), "{reason}");
    item.partner = "mitz".into();
    item.body = json!({"patient": "999911121", "origin": "published"});
    let Outcome::Dead(reason) = f.subscriptions.run(&item, &mitz, NOW) else {
        panic!("a bad BSN is dead");
    };
    assert!(!reason.contains("999911121"), "{reason}");
    assert!(mitz.sent().is_empty());
}

#[test]
fn the_store_lists_what_it_holds_and_names_an_unreadable_file() {
    let f = fixture();
    assert_eq!(
        SubscriptionStore::reader(&f.config.state_dir.join("nothing"))
            .list()
            .unwrap(),
        (Vec::new(), Vec::new()),
        "no folder: nothing recorded"
    );
    let other = "999999151";
    for (partner, patient, at) in [
        ("mitz", BSN, NOW + 1),
        ("mitz", other, NOW),
        ("abc", BSN, NOW + 9),
    ] {
        f.store
            .save(&Recorded {
                partner: partner.into(),
                patient: patient.into(),
                subscription: Some(format!("{partner}-{at}")),
                status: 201,
                subscribed_at: at,
            })
            .unwrap();
    }
    std::fs::write(
        f.config.state_dir.join("mitz/subscriptions/broken.json"),
        format!("{{\"patient\":\"{BSN}\""),
    )
    .unwrap();
    let (found, failed) = SubscriptionStore::reader(&f.config.state_dir)
        .list()
        .unwrap();
    let order: Vec<(&str, &str)> = found
        .iter()
        .map(|r| (r.partner.as_str(), r.patient.as_str()))
        .collect();
    assert_eq!(order, [("abc", BSN), ("mitz", other), ("mitz", BSN)]);
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].contains("broken.json") && !failed[0].contains(BSN),
        "{failed:?}"
    );
}
