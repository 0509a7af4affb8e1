//! [`ClosedQuestion`] over a scripted [`PartnerHttp`]: what each answer
//! becomes, what is kept, what is counted. The same over real mTLS against
//! a stand-in Mitz is `tests/mitz_closed.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::fhir::Limits;
use crate::fhir::xml::{self, Element, Node};

const PERMIT_PATIENT: &str = "900203638";
const BASE: &str = "https://mitz.test/tst-us/mitz/";

/// What the fake answers one call with.
#[derive(Debug, Clone)]
enum Script {
    Reply(u16, String),
    /// A transport error after this long.
    Fail(Duration),
}

/// One call as the fake saw it.
#[derive(Debug, Clone)]
struct Call {
    partner: String,
    url: String,
    content_type: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Script>>,
    calls: Mutex<Vec<Call>>,
}

impl Fake {
    fn push(&self, s: Script) {
        self.script.lock().unwrap().push_back(s);
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl PartnerHttp for Fake {
    fn get(&self, _: &str, url: &str, _: &[(&str, &str)]) -> Result<HttpReply, String> {
        Err(format!("unexpected GET {url}"))
    }

    fn send(
        &self,
        _: &str,
        _: &str,
        url: &str,
        _: &str,
        _: &[u8],
        _: &[(&str, &str)],
    ) -> Result<HttpReply, String> {
        Err(format!("send without a timeout to {url}"))
    }

    fn send_within(
        &self,
        partner: &str,
        request: &Outgoing<'_>,
        timeout: Duration,
    ) -> Result<HttpReply, String> {
        self.calls.lock().unwrap().push(Call {
            partner: partner.to_string(),
            url: request.url.to_string(),
            content_type: request.content_type.to_string(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: request.body.to_vec(),
            timeout: Some(timeout),
        });
        match self.script.lock().unwrap().pop_front() {
            Some(Script::Reply(status, body)) => Ok(HttpReply {
                status,
                body: body.into_bytes(),
                content_type: Some("application/soap+xml; charset=utf-8".into()),
                cache_control: None,
                retry_after: None,
                location: None,
            }),
            Some(Script::Fail(after)) => {
                std::thread::sleep(after);
                Err("connection refused".into())
            }
            None => Err("nothing scripted".into()),
        }
    }
}

/// A SOAP answer with one result for GGC002, relating to the message of `call`.
fn answer(decision: &str, call_id: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header><a:RelatesTo>urn:uuid:{call_id}</a:RelatesTo></s:Header><s:Body><Response xmlns="urn:oasis:names:tc:xacml:3.0:core:schema:wd-17"><Result><Decision>{decision}</Decision><Attributes Category="urn:oasis:names:tc:xacml:3.0:attribute-category:action"><Attribute AttributeId="urn:ihe:iti:appc:2016:document-entry:event-code" IncludeInResult="true"><AttributeValue DataType="urn:hl7-org:v3#CV"><CodedValue xmlns="urn:hl7-org:v3" code="GGC002" codeSystem="2.16.840.1.113883.2.4.3.111.5.10.1"/></AttributeValue></Attribute></Attributes></Result></Response></s:Body></s:Envelope>"#
    )
}

/// An answer that does not name the message (Mitz need not send RelatesTo).
fn plain(decision: &str) -> String {
    answer(decision, "x").replace(
        "<s:Header><a:RelatesTo>urn:uuid:x</a:RelatesTo></s:Header>",
        "",
    )
}

fn fault() -> String {
    r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value></s:Code><s:Reason><s:Text xml:lang="en">patient 900203638 broke it</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#.into()
}

struct Rig {
    fake: Arc<Fake>,
    metrics: Arc<Metrics>,
    cq: ClosedQuestion,
}

fn rig_with(timeout: Duration) -> Rig {
    let fake = Arc::new(Fake::default());
    let metrics = Arc::new(Metrics::new());
    let settings = Settings {
        timeout,
        ..Settings::new("mitz", BASE, "Z3", Duration::from_secs(60))
    };
    let cq = ClosedQuestion::new(settings, fake.clone(), metrics.clone());
    Rig { fake, metrics, cq }
}

fn rig() -> Rig {
    rig_with(DEFAULT_TIMEOUT)
}

fn question(patient: &Bsn) -> Question<'_> {
    Question {
        patient,
        holder_ura: "00000659",
        data_category: "GGC002",
        provider_category: "V6",
        requester_category: None,
        requester: "2.16.528.1.1007.3.3.00000666",
        requester_ura: None,
        requester_role: Some("01.015"),
        requester_user: Some("000095254"),
        request_id: None,
    }
}

fn bsn(s: &str) -> Bsn {
    Bsn::parse(s).unwrap()
}

impl Rig {
    fn ask(&self, q: &Question<'_>, now: i64) -> Answer {
        let (answer, source) = self.cq.ask(q, now);
        assert_eq!(source, Source::ClosedQuestion);
        answer
    }

    fn counted(&self, decision: &'static str) -> u64 {
        self.metrics
            .get(metrics::MITZ_DECISIONS, &[("decision", decision)])
    }
}

#[test]
fn only_a_permit_releases() {
    let p = bsn(PERMIT_PATIENT);
    for (decision, expected, label) in [
        ("Permit", Answer::Permit, "permit"),
        ("Deny", Answer::Deny, "deny"),
        ("NotApplicable", Answer::NotApplicable, "not-applicable"),
    ] {
        let r = rig();
        r.fake.push(Script::Reply(200, plain(decision)));
        assert_eq!(r.ask(&question(&p), 1000), expected, "{decision}");
        assert_eq!(r.counted(label), 1);
        assert_eq!(r.cq.cached(), 1, "{decision} is kept");
    }
    let r = rig();
    r.fake.push(Script::Reply(200, plain("Indeterminate")));
    let a = r.ask(&question(&p), 1000);
    assert!(
        matches!(&a, Answer::Unavailable(w) if w.contains("Indeterminate")),
        "{a:?}"
    );
    assert!(!a.permits());
    assert_eq!(r.counted("indeterminate"), 1);
    assert_eq!(r.cq.cached(), 0, "indeterminate asks again");
}

#[test]
fn the_question_goes_to_the_endpoint_with_the_request_context() {
    let r = rig();
    let p = bsn(PERMIT_PATIENT);
    r.fake.push(Script::Reply(200, plain("Permit")));
    r.ask(&question(&p), 1000);
    let calls = r.fake.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.partner, "mitz");
    assert_eq!(
        c.url,
        "https://mitz.test/tst-us/mitz/geslotenautorisatievraag/xacml3"
    );
    assert_eq!(c.content_type, "application/soap+xml; charset=UTF-8");
    assert_eq!(c.timeout, Some(DEFAULT_TIMEOUT));
    let rid = &c
        .headers
        .iter()
        .find(|(k, _)| k == "X-Request-Id")
        .unwrap()
        .1;
    assert!(random::is_uuid(rid), "{rid}");

    let (envelope, _) = xml::parse(&c.body, &Limits::default()).unwrap();
    let mut ids = Vec::new();
    let mut values = Vec::new();
    walk(&envelope, &mut ids, &mut values);
    assert!(
        ids.contains(&format!("urn:uuid:{rid}")),
        "MessageID is the X-Request-Id"
    );
    for (root, ext) in [
        ("2.16.840.1.113883.2.4.6.3", PERMIT_PATIENT),
        ("2.16.528.1.1007.3.3", "00000659"),
        ("2.16.528.1.1007.3.3", "00000666"),
        ("2.16.528.1.1007.3.1", "000095254"),
    ] {
        assert!(
            values.contains(&(root.to_string(), ext.to_string())),
            "{root} {ext}"
        );
    }
    for (system, code) in [
        ("2.16.840.1.113883.2.4.15.1060", "Z3"),
        ("2.16.840.1.113883.2.4.15.1060", "V6"),
        ("2.16.840.1.113883.2.4.3.111.5.10.1", "GGC002"),
        ("2.16.840.1.113883.2.4.15.111", "01.015"),
        ("2.16.840.1.113883.1.11.20448", "TREAT"),
    ] {
        assert!(
            values.contains(&(system.to_string(), code.to_string())),
            "{system} {code}"
        );
    }
}

/// Collects element texts, and (root, extension) / (codeSystem, code) pairs.
fn walk(el: &Element, texts: &mut Vec<String>, values: &mut Vec<(String, String)>) {
    if let (Some(r), Some(e)) = (el.attr("root"), el.attr("extension")) {
        values.push((r.to_string(), e.to_string()));
    }
    if let (Some(s), Some(c)) = (el.attr("codeSystem"), el.attr("code")) {
        values.push((s.to_string(), c.to_string()));
    }
    for n in &el.children {
        match n {
            Node::Element(e) => walk(e, texts, values),
            Node::Text(t) => texts.push(t.clone()),
        }
    }
}

#[test]
fn a_relates_to_must_name_our_message() {
    let r = rig();
    let p = bsn(PERMIT_PATIENT);
    r.fake.push(Script::Reply(
        200,
        answer("Permit", "00000000-0000-4000-8000-000000000000"),
    ));
    let a = r.ask(&question(&p), 1000);
    assert!(matches!(a, Answer::Unavailable(_)), "{a:?}");
    assert_eq!(r.counted("invalid-answer"), 1);
}

#[test]
fn failures_withhold_and_name_their_cause_never_the_patient() {
    let p = bsn(PERMIT_PATIENT);
    let cases: Vec<(Script, &str, &str)> = vec![
        (
            Script::Reply(500, fault()),
            "fault",
            "soap fault s:Receiver",
        ),
        (
            Script::Reply(200, fault()),
            "fault",
            "soap fault s:Receiver",
        ),
        (
            Script::Reply(503, "busy".into()),
            "http-error",
            "answered 503",
        ),
        (
            Script::Reply(202, String::new()),
            "http-error",
            "answered 202",
        ),
        (
            Script::Reply(200, "garbage".into()),
            "invalid-answer",
            "not acceptable xml",
        ),
        (
            Script::Fail(Duration::ZERO),
            "unreachable",
            "connection refused",
        ),
    ];
    for (script, label, why) in cases {
        let r = rig();
        r.fake.push(script.clone());
        let a = r.ask(&question(&p), 1000);
        let Answer::Unavailable(reason) = &a else {
            panic!("{script:?}: {a:?}")
        };
        assert!(reason.contains(why), "{script:?}: {reason}");
        assert!(reason.contains("mitz partner mitz"), "{reason}");
        assert!(!reason.contains(PERMIT_PATIENT), "{reason}");
        assert_eq!(r.counted(label), 1, "{script:?}");
        assert_eq!(r.cq.cached(), 0, "{script:?} is not kept");
    }
}

#[test]
fn a_transport_error_at_the_timeout_is_a_timeout() {
    let r = rig_with(Duration::from_millis(100));
    let p = bsn(PERMIT_PATIENT);
    r.fake.push(Script::Fail(Duration::from_millis(100)));
    let a = r.ask(&question(&p), 1000);
    assert!(
        matches!(&a, Answer::Unavailable(w) if w.contains("no answer within 100 ms")),
        "{a:?}"
    );
    assert_eq!(r.counted("timeout"), 1);
    assert_eq!(r.fake.calls()[0].timeout, Some(Duration::from_millis(100)));
}

#[test]
fn a_question_that_cannot_be_written_is_not_sent() {
    let r = rig();
    let p = bsn(PERMIT_PATIENT);
    let q = Question {
        provider_category: "V6\r\nX-Evil: 1",
        requester_category: None,
        ..question(&p)
    };
    let a = r.ask(&q, 1000);
    assert!(
        matches!(&a, Answer::Unavailable(w) if w.contains("PROVIDER_CATEGORY")),
        "{a:?}"
    );
    assert!(r.fake.calls().is_empty());
    assert_eq!(r.counted("invalid-question"), 1);
}

#[test]
fn decisions_are_kept_for_the_ttl_per_question() {
    let r = rig();
    let p = bsn(PERMIT_PATIENT);
    r.fake.push(Script::Reply(200, plain("Permit")));
    assert_eq!(r.ask(&question(&p), 1000), Answer::Permit);
    assert_eq!(r.ask(&question(&p), 1059), Answer::Permit);
    assert_eq!(r.fake.calls().len(), 1, "the second ask is a cache hit");
    assert_eq!(r.metrics.get(metrics::MITZ_DECISION_CACHE_HITS, &[]), 1);
    // Another requester is another question.
    r.fake.push(Script::Reply(200, plain("Deny")));
    let other = Question {
        requester: "2.16.528.1.1007.3.3.00000777",
        ..question(&p)
    };
    assert_eq!(r.ask(&other, 1001), Answer::Deny);
    assert_eq!(r.fake.calls().len(), 2);
    // Expired: asked again.
    r.fake.push(Script::Reply(200, plain("Deny")));
    assert_eq!(r.ask(&question(&p), 1060), Answer::Deny);
    assert_eq!(r.fake.calls().len(), 3);
}

#[test]
fn invalidation_asks_again() {
    let r = rig();
    let p = bsn(PERMIT_PATIENT);
    r.fake.push(Script::Reply(200, plain("Deny")));
    assert_eq!(r.ask(&question(&p), 1000), Answer::Deny);
    r.cq.invalidate_patient(&p);
    r.fake.push(Script::Reply(200, plain("Permit")));
    assert_eq!(r.ask(&question(&p), 1001), Answer::Permit);
    assert_eq!(r.fake.calls().len(), 2);
}

#[test]
fn the_requester_ura_comes_from_the_context_or_the_oid() {
    let p = bsn(PERMIT_PATIENT);
    for (requester, ura, expected) in [
        ("2.16.528.1.1007.3.3.15123", None, Some("00015123")),
        (
            "2.16.840.1.113883.2.4.3.8",
            Some("00000666"),
            Some("00000666"),
        ),
        ("2.16.840.1.113883.2.4.3.8", None, None),
    ] {
        let r = rig();
        r.fake.push(Script::Reply(200, plain("Permit")));
        let q = Question {
            requester,
            requester_ura: ura,
            requester_role: Some("huisarts"),
            requester_user: Some("larts"),
            request_id: None,
            ..question(&p)
        };
        r.ask(&q, 1000);
        let (envelope, _) = xml::parse(&r.fake.calls()[0].body, &Limits::default()).unwrap();
        let mut values = Vec::new();
        walk(&envelope, &mut Vec::new(), &mut values);
        let uras: Vec<&str> = values
            .iter()
            .filter(|(root, ext)| root == "2.16.528.1.1007.3.3" && ext != "00000659")
            .map(|(_, ext)| ext.as_str())
            .collect();
        assert_eq!(
            uras,
            expected.into_iter().collect::<Vec<_>>(),
            "{requester}"
        );
        assert!(
            !values
                .iter()
                .any(|(s, _)| s == "2.16.528.1.1007.3.1" || s == request::ROLE_CODE_NL_SYSTEM),
            "no role or user id that is not a code"
        );
    }
}

#[test]
fn the_endpoint_joins_the_base_with_or_without_a_slash() {
    for base in ["https://m.test/mitz", "https://m.test/mitz/"] {
        let cq = ClosedQuestion::new(
            Settings::new("mitz", base, "Z3", Duration::from_secs(60)),
            Arc::new(Fake::default()),
            Arc::new(Metrics::new()),
        );
        assert_eq!(
            cq.endpoint(),
            "https://m.test/mitz/geslotenautorisatievraag/xacml3"
        );
    }
}

#[test]
fn an_open_circuit_withholds_at_once_without_asking() {
    let fake = Arc::new(Fake::default());
    let metrics = Arc::new(Metrics::new());
    let circuits = Arc::new(crate::circuit::Circuits::new(
        crate::circuit::Policy {
            failures: 1,
            cooldown_secs: 30,
        },
        metrics.clone(),
    ));
    let cq = ClosedQuestion::new(
        Settings::new("mitz", BASE, "Z3", Duration::from_secs(60)),
        fake.clone(),
        metrics.clone(),
    )
    .with_circuits(circuits.clone());
    circuits.record("mitz", true, 1_000);
    let patient = bsn("900203638");
    let mut q = question(&patient);
    q.request_id = Some("rid-7");
    let (answer, _) = cq.ask(&q, 1_001);
    let Answer::Unavailable(why) = answer else {
        panic!("{answer:?}");
    };
    assert!(why.contains("circuit is open"), "{why}");
    assert!(fake.calls().is_empty(), "Mitz was not asked");
    assert_eq!(
        metrics.get(metrics::MITZ_DECISIONS, &[("decision", "circuit-open")]),
        1
    );
}
