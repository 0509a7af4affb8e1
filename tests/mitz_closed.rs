//! The Mitz closed question (`mitz::closed::ClosedQuestion`) against a
//! stand-in Mitz over real mTLS on loopback (`common::mitz`): Mitz
//! TST's permit and deny patients, every way Mitz can fail to permit, and
//! the decision cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{Party, World, free_port};
use common::mitz::{CLOSED_QUESTION_PATH, DENY_BSN, Fault, PERMIT_BSN, StandInMitz};
use np_agent::consent::{Answer, ConsentCheck, Question, Source};
use np_agent::http::client::ClientTimeouts;
use np_agent::http::partners::{PartnerHttp, Partners};
use np_agent::ids::Bsn;
use np_agent::mitz::closed::{ClosedQuestion, Settings};
use np_agent::ops::metrics::{self, Metrics};
use np_agent::pki::throwaway::{LeafSpec, write_files};
use np_agent::pki::{self, MinVersion, TlsMaterial};

const TTL: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_millis(800);

struct Rig {
    _tmp: TempDir,
    world: World,
    mitz: StandInMitz,
    http: Arc<dyn PartnerHttp>,
}

fn rig() -> Rig {
    let tmp = TempDir::new("mitz-closed");
    let world = World::new();
    let us = Party::new(&world, tmp.path(), "hospa", "00000659", &[]);
    let them = Party::new(&world, tmp.path(), "mitz", "00000999", &[]);
    let mitz = StandInMitz::start(&them);
    let tls = pki::client_config(&us.material, MinVersion::Tls13).unwrap();
    let http: Arc<dyn PartnerHttp> = Arc::new(Partners::new(tls, ClientTimeouts::default()));
    Rig {
        _tmp: tmp,
        world,
        mitz,
        http,
    }
}

impl Rig {
    fn closed(&self, base_url: &str) -> (ClosedQuestion, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let settings = Settings {
            timeout: TIMEOUT,
            ..Settings::new("mitz", base_url, "V6", TTL)
        };
        (
            ClosedQuestion::new(settings, self.http.clone(), metrics.clone()),
            metrics,
        )
    }
}

fn question(patient: &Bsn) -> Question<'_> {
    Question {
        patient,
        holder_ura: "00000659",
        data_category: "GGC002",
        provider_category: "RPZAC104",
        requester_category: None,
        requester: "2.16.528.1.1007.3.3.00000666",
        requester_ura: Some("00000666"),
        requester_role: Some("01.015"),
        requester_user: Some("000095254"),
        request_id: None,
    }
}

fn bsn(s: &str) -> Bsn {
    Bsn::parse(s).unwrap()
}

fn ask(cq: &ClosedQuestion, patient: &Bsn, now: i64) -> Answer {
    let (answer, source) = cq.ask(&question(patient), now);
    assert_eq!(source, Source::ClosedQuestion);
    answer
}

fn counted(m: &Metrics, decision: &'static str) -> u64 {
    m.get(metrics::MITZ_DECISIONS, &[("decision", decision)])
}

#[test]
fn the_permit_patient_is_permitted_and_the_deny_patient_denied() {
    let r = rig();
    let (cq, m) = r.closed(&r.mitz.base());
    assert_eq!(ask(&cq, &bsn(PERMIT_BSN), 1000), Answer::Permit);
    assert_eq!(ask(&cq, &bsn(DENY_BSN), 1000), Answer::Deny);
    assert_eq!(ask(&cq, &bsn("999999151"), 1000), Answer::NotApplicable);
    assert_eq!(counted(&m, "permit"), 1);
    assert_eq!(counted(&m, "deny"), 1);
    assert_eq!(counted(&m, "not-applicable"), 1);

    let seen = r.mitz.questions();
    assert_eq!(seen.len(), 3);
    for (s, patient) in seen.iter().zip([PERMIT_BSN, DENY_BSN, "999999151"]) {
        let q = s.question().expect("the stand-in read the question");
        assert_eq!(q.patient, patient);
        assert_eq!(q.categories, ["GGC002"]);
        assert_eq!(q.to, cq.endpoint());
        assert_eq!(
            s.header("content-type"),
            Some("application/soap+xml; charset=UTF-8")
        );
        let rid = s.header("x-request-id").expect("X-Request-Id");
        assert_eq!(q.message_id, format!("urn:uuid:{rid}"));
    }
    assert_ne!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id"),
        "a fresh id per question"
    );
}

#[test]
fn anything_but_a_permit_releases_nothing() {
    let r = rig();
    let (cq, m) = r.closed(&r.mitz.base());
    let permit = bsn(PERMIT_BSN);
    let cases = [
        (Fault::Decide("NotApplicable"), "not-applicable"),
        (Fault::Decide("Deny"), "deny"),
        (Fault::Decide("Indeterminate"), "indeterminate"),
        (Fault::Soap, "fault"),
        (Fault::status(500), "http-error"),
        (Fault::status(503), "http-error"),
        (Fault::garbage(), "invalid-answer"),
        (Fault::Delay(TIMEOUT * 3), "timeout"),
    ];
    for (i, (fault, label)) in cases.into_iter().enumerate() {
        r.mitz
            .fault(CLOSED_QUESTION_PATH, std::slice::from_ref(&fault));
        cq.invalidate_patient(&permit);
        let before = counted(&m, label);
        let started = Instant::now();
        let answer = ask(&cq, &permit, 1000 + i as i64);
        assert!(!answer.permits(), "{fault:?}: {answer:?}");
        assert_eq!(counted(&m, label), before + 1, "{fault:?}");
        if let Answer::Unavailable(reason) = &answer {
            assert!(!reason.contains(PERMIT_BSN), "{reason}");
        }
        if let Fault::Delay(_) = fault {
            let took = started.elapsed();
            assert!(took < TIMEOUT * 2, "gave up after {took:?}");
        }
    }
    assert_eq!(r.mitz.questions().len(), 8);
    // The stand-in is fine again: the permit patient is permitted.
    cq.invalidate_patient(&permit);
    assert_eq!(ask(&cq, &permit, 2000), Answer::Permit);
}

#[test]
fn an_unreachable_or_untrusted_mitz_releases_nothing() {
    let r = rig();
    let permit = bsn(PERMIT_BSN);
    let (down, m) = r.closed(&format!("https://localhost:{}/tst-us/mitz/", free_port()));
    let answer = ask(&down, &permit, 1000);
    assert!(matches!(&answer, Answer::Unavailable(_)), "{answer:?}");
    assert_eq!(counted(&m, "unreachable"), 1);

    // A server whose certificate does not chain to our trust bundle.
    let dir = r._tmp.join("rogue");
    let issued = r
        .world
        .foreign
        .issue(&LeafSpec::localhost("rogue"))
        .unwrap();
    let files = write_files(&dir, &issued, &[&r.world.foreign]).unwrap();
    let rogue = StandInMitz::start_with(&TlsMaterial::load(&files).unwrap(), "00000998");
    let (cq, m) = r.closed(&rogue.base());
    let answer = ask(&cq, &permit, 1000);
    assert!(matches!(&answer, Answer::Unavailable(_)), "{answer:?}");
    assert_eq!(counted(&m, "unreachable"), 1);
    assert!(rogue.requests().is_empty(), "nothing was sent to it");
}

#[test]
fn a_decision_is_reused_until_it_expires() {
    let r = rig();
    let (cq, m) = r.closed(&r.mitz.base());
    let permit = bsn(PERMIT_BSN);
    assert_eq!(ask(&cq, &permit, 1000), Answer::Permit);
    assert_eq!(ask(&cq, &permit, 1030), Answer::Permit);
    assert_eq!(r.mitz.questions().len(), 1, "one question for two asks");
    assert_eq!(m.get(metrics::MITZ_DECISION_CACHE_HITS, &[]), 1);

    // The TTL has passed: a fresh question, which Mitz now answers otherwise.
    r.mitz.fault(CLOSED_QUESTION_PATH, &[Fault::Decide("Deny")]);
    assert_eq!(ask(&cq, &permit, 1000 + TTL.as_secs() as i64), Answer::Deny);
    assert_eq!(r.mitz.questions().len(), 2);
}

#[test]
fn a_newer_consent_notification_leads_to_a_fresh_question() {
    let r = rig();
    let (cq, _) = r.closed(&r.mitz.base());
    let deny = bsn(DENY_BSN);
    let permit = bsn(PERMIT_BSN);
    assert_eq!(ask(&cq, &deny, 1000), Answer::Deny);
    assert_eq!(ask(&cq, &permit, 1000), Answer::Permit);
    r.mitz
        .fault(CLOSED_QUESTION_PATH, &[Fault::Decide("Permit")]);
    cq.invalidate_patient(&deny);
    assert_eq!(ask(&cq, &deny, 1001), Answer::Permit);
    assert_eq!(ask(&cq, &permit, 1001), Answer::Permit);
    assert_eq!(
        r.mitz.questions().len(),
        3,
        "only the invalidated patient was asked again"
    );
}

#[test]
fn failures_are_not_kept() {
    let r = rig();
    let (cq, _) = r.closed(&r.mitz.base());
    let permit = bsn(PERMIT_BSN);
    r.mitz.fault(CLOSED_QUESTION_PATH, &[Fault::Soap]);
    assert!(!ask(&cq, &permit, 1000).permits());
    assert_eq!(
        ask(&cq, &permit, 1001),
        Answer::Permit,
        "asked again at once"
    );
    assert_eq!(r.mitz.questions().len(), 2);
}
