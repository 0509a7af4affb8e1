//! Queueing and the worker's decisions, over a scripted PRS/NVI (the
//! services themselves are stood in for over mTLS in tests/localisation.rs).

use std::sync::Mutex;

use super::*;
use crate::config::from_vars;
use crate::config::tests_support::{TestSite, set};
use crate::http::partners::HttpReply;

const NOW: i64 = 1_800_000_000;
const BSN: &str = "999911120";

/// Answers token requests, `/oprf/eval` and the index from a script, and
/// records every call as `METHOD url`.
#[derive(Default)]
struct Script {
    index: Mutex<Vec<u16>>,
    calls: Mutex<Vec<String>>,
}

impl Script {
    fn answer(&self, method: &str, url: &str) -> HttpReply {
        self.calls.lock().unwrap().push(format!("{method} {url}"));
        let (status, body) = if url.ends_with("/token") {
            (
                200,
                r#"{"access_token":"t","token_type":"Bearer","expires_in":300}"#,
            )
        } else if url.ends_with("/oprf/eval") {
            (200, r#"{"jwe":"eyJh.a.b.c.d"}"#)
        } else {
            let mut index = self.index.lock().unwrap();
            (
                if index.is_empty() {
                    201
                } else {
                    index.remove(0)
                },
                "",
            )
        };
        HttpReply {
            status,
            body: body.as_bytes().to_vec(),
            content_type: None,
            cache_control: None,
            retry_after: None,
            location: None,
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl PartnerHttp for Script {
    fn get(&self, _: &str, url: &str, _: &[(&str, &str)]) -> Result<HttpReply, String> {
        Ok(self.answer("GET", url))
    }
    fn send(
        &self,
        _: &str,
        method: &str,
        url: &str,
        _: &str,
        _: &[u8],
        _: &[(&str, &str)],
    ) -> Result<HttpReply, String> {
        Ok(self.answer(method, url))
    }
}

struct Fixture {
    _site: TestSite,
    loc: Localisation,
    spool: Arc<Spool>,
    store: Arc<RegistrationStore>,
    cases: Arc<CaseStore>,
    config: Arc<Config>,
}

fn fixture() -> Fixture {
    let site = TestSite::new("nvi");
    let mut v = site.vars("https://np.a.example", "12345678");
    let state = site.dir.join("state");
    for (k, val) in [
        ("NP_STATE_DIR", state.display().to_string()),
        ("NP_PARTNERS", "prs,nvi".into()),
        ("NP_ORG_OIN", "00000001123456780000".into()),
        ("NP_SOURCE_ID", "2.16.528.1.1007.3.3.12345678.1".into()),
        ("NP_PARTNER_PRS_KIND", "prs".into()),
        ("NP_PARTNER_PRS_URL", "https://prs.example".into()),
        (
            "NP_PARTNER_PRS_TOKEN_URL",
            "https://auth.example/token".into(),
        ),
        ("NP_PARTNER_NVI_KIND", "nvi".into()),
        ("NP_PARTNER_NVI_URL", "https://nvi.example".into()),
        (
            "NP_PARTNER_NVI_TOKEN_URL",
            "https://auth.example/token".into(),
        ),
        ("NP_PARTNER_NVI_OIN", "00000099000000001000".into()),
    ] {
        set(&mut v, k, &val);
    }
    let config = Arc::new(from_vars(&v).unwrap());
    let spool = Arc::new(Spool::open(&state).unwrap().0);
    let store = Arc::new(RegistrationStore::open(&state).unwrap());
    let cases = Arc::new(CaseStore::open(&state).unwrap());
    let loc = Localisation::new(
        config.clone(),
        Stores {
            spool: spool.clone(),
            audit: Arc::new(AuditLog::open(&state).unwrap()),
            registrations: store.clone(),
            cases: cases.clone(),
            records: Arc::new(RecordStore::open(&state).unwrap()),
            tokens: Arc::new(ServiceTokens::new()),
        },
    );
    Fixture {
        _site: site,
        loc,
        spool,
        store,
        cases,
        config,
    }
}

impl Fixture {
    fn queue(&self, origin: Origin) -> Queued {
        let nvi = self.config.nvi_partner("nvi").unwrap();
        queue(&self.spool, &self.store, nvi, &bsn(), origin, NOW).unwrap()
    }

    fn record(&self, standing: Standing, round: u32) {
        self.store
            .save(&Registration {
                partner: "nvi".into(),
                patient: BSN.into(),
                standing,
                round,
                status: 201,
                at: NOW,
            })
            .unwrap();
    }

    fn standing(&self) -> Option<(Standing, u32)> {
        self.store
            .get("nvi", &bsn())
            .unwrap()
            .map(|r| (r.standing, r.round))
    }

    /// Claims and runs the item `origin` queued in `round`, and settles
    /// it as the worker does.
    fn run(&self, origin: Origin, round: u32, http: &Script) -> Outcome {
        let id = item_id(origin, "nvi", &bsn(), round);
        let item = self.spool.claim(&id).unwrap();
        let outcome = self.loc.run(&item, http, NOW);
        crate::spool::settle(&self.spool, item, outcome.clone(), NOW, 3_600, 1).unwrap();
        outcome
    }
}

fn bsn() -> Bsn {
    Bsn::parse(BSN).unwrap()
}

#[test]
fn queueing_is_once_per_round_and_an_objection_holds() {
    let f = fixture();
    assert_eq!(f.queue(Origin::Published), Queued::New);
    assert_eq!(f.queue(Origin::Published), Queued::Pending);
    assert_eq!(f.queue(Origin::Backfill), Queued::Pending);
    f.record(Standing::Registered, 0);
    assert_eq!(f.queue(Origin::Published), Queued::Nothing);
    f.record(Standing::Objected, 1);
    assert_eq!(f.queue(Origin::Published), Queued::Objected);
    assert_eq!(
        f.queue(Origin::Backfill),
        Queued::New,
        "a back-fill lifts it"
    );
    let queued = f.spool.ids(State::Queued).unwrap();
    assert!(queued.contains(&item_id(Origin::Published, "nvi", &bsn(), 1)));
    // Nothing registered or being registered: a withdrawal removes nothing.
    f.record(Standing::Deregistered, 2);
    assert_eq!(f.queue(Origin::Withdrawn), Queued::Nothing);
    // An objection is queued whatever the standing.
    assert_eq!(f.queue(Origin::Objection), Queued::New);
    for id in f.spool.ids(State::Queued).unwrap() {
        assert!(!id.contains(BSN), "{id}");
    }
}

#[test]
fn a_registration_is_recorded_and_its_tokens_are_kept() {
    let f = fixture();
    let http = Script::default();
    f.queue(Origin::Published);
    assert_eq!(f.run(Origin::Published, 0, &http), Outcome::Done);
    assert_eq!(f.standing(), Some((Standing::Registered, 0)));
    assert_eq!(
        http.calls(),
        [
            "POST https://auth.example/token",
            "POST https://prs.example/oprf/eval",
            "POST https://auth.example/token",
            "POST https://nvi.example/fhir/List",
        ]
    );
    // Withdrawn: removed, and the next round begins; tokens are reused.
    f.queue(Origin::Withdrawn);
    assert_eq!(f.run(Origin::Withdrawn, 0, &http), Outcome::Done);
    assert_eq!(f.standing(), Some((Standing::Deregistered, 1)));
    let calls = http.calls();
    assert_eq!(calls.len(), 6, "{calls:?}");
    assert!(calls[5].starts_with("DELETE https://nvi.example/fhir/List?subject:identifier="));
    assert_eq!(f.queue(Origin::Published), Queued::New, "a new round");
}

#[test]
fn a_registration_superseded_by_a_removal_calls_nothing() {
    let f = fixture();
    let http = Script::default();
    f.queue(Origin::Published);
    assert_eq!(
        f.queue(Origin::Withdrawn),
        Queued::New,
        "it may be about to register"
    );
    assert_eq!(f.run(Origin::Published, 0, &http), Outcome::Done);
    assert!(http.calls().is_empty());
    assert_eq!(f.standing(), None);
}

#[test]
fn a_removal_waits_for_the_registration_being_tried() {
    let f = fixture();
    let http = Script::default();
    f.queue(Origin::Published);
    let reg = f
        .spool
        .claim(&item_id(Origin::Published, "nvi", &bsn(), 0))
        .unwrap();
    f.queue(Origin::Withdrawn);
    assert!(matches!(
        f.run(Origin::Withdrawn, 0, &http),
        Outcome::Wait { .. }
    ));
    assert!(http.calls().is_empty());
    drop(reg);
}

#[test]
fn a_removal_after_a_withdrawal_keeps_a_patient_published_again() {
    let f = fixture();
    let http = Script::default();
    f.record(Standing::Registered, 0);
    f.queue(Origin::Withdrawn);
    let case = crate::cases::Case::new("hospb", "c1", &bsn(), None, NOW, NOW + 600).unwrap();
    f.cases.save(&case).unwrap();
    assert!(f.loc.still_published(&bsn()));
    assert_eq!(f.run(Origin::Withdrawn, 0, &http), Outcome::Done);
    assert!(http.calls().is_empty());
    assert_eq!(f.standing(), Some((Standing::Registered, 0)));
}

#[test]
fn one_401_refreshes_the_token_and_a_second_is_a_refusal() {
    let f = fixture();
    let http = Script::default();
    http.index.lock().unwrap().extend([401, 201]);
    f.queue(Origin::Published);
    assert_eq!(f.run(Origin::Published, 0, &http), Outcome::Done);
    let tokens = |h: &Script| h.calls().iter().filter(|c| c.ends_with("/token")).count();
    assert_eq!(
        tokens(&http),
        3,
        "PRS, NVI, and the NVI again after the 401"
    );

    let f = fixture();
    let http = Script::default();
    http.index.lock().unwrap().extend([401, 401]);
    f.queue(Origin::Published);
    match f.run(Origin::Published, 0, &http) {
        Outcome::Dead(reason) => assert_eq!(
            reason,
            "partner nvi: POST https://nvi.example/fhir/List answered 401"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.standing(), None);
    let http = Script::default();
    http.index.lock().unwrap().extend([503]);
    let f = fixture();
    f.queue(Origin::Published);
    assert!(matches!(
        f.run(Origin::Published, 0, &http),
        Outcome::Retry { .. }
    ));
}
