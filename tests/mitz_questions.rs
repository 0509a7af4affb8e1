//! Mitz's closed question at release (spec mitz-and-aorta.md §7, DESIGN
//! "Consent at release"), end to end: the real daemon with a Mitz partner
//! whose `URL` points at the stand-in Mitz of `tests/common/mitz.rs` (over
//! mTLS, behind a TCP proxy that can take it down), records published to a
//! Zorgviewer partner with consent `mitz`, and that partner's client asking
//! over mTLS as Zorgviewer does.
//!
//! - Mitz TST's permit patient is served, its deny patient gets an empty
//!   searchset and 404s; the SOAP question the daemon sent, read by an XML
//!   parser, has the XACML 3.0 / SAML profile elements and attribute ids of
//!   §7 with the requester's URA, role and user from the X-ZV headers; the
//!   published records lead to one subscription each at the same stand-in.
//! - Mitz down, slow, faulting, answering 500, garbage, `Indeterminate` or
//!   `NotApplicable`: nothing served, each audited with its decision and
//!   source `closed-question`, a `warn` line `event=mitz.closed_question`
//!   and `np_mitz_decisions_total{decision=…}` on the admin `/metrics`.
//! - A decision answers again within `NP_MITZ_DECISION_TTL` and not after;
//!   a newer consent notification for the patient makes the next request
//!   ask again at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, Party, World};
use common::folders::export;
use common::mitz::{
    CLOSED_QUESTION_PATH, DENY_BSN, Fault, ORG_CATEGORY, PERMIT_BSN, SUBSCRIPTION_PATH, Seen,
    StandInMitz, XmlElement, notification, parse_xml, xacml,
};
use common::observe::{events, metrics, sample, wait_until};
use common::proxy::{Mode, Proxy};
use common::zorgviewer::{Resp, SCOPES, USER, User, Viewer, audit_of};
use np_agent::jose::Alg;
use serde_json::{Value, json};

/// Our URA: the holder in every question.
const OUR_URA: &str = "12345678";
/// A published patient Mitz TST knows nothing of.
const OTHER_BSN: &str = "999999151";
/// The Zorgviewer partner's `REQUESTER_CATEGORY` (tests/common sets hospitals):
/// the closed question names it, not the `RPZAC…` of the consent view.
const REQUESTER_CATEGORY: &str = "V4";
/// Its `PROVIDER_CATEGORY` (the default): what consent notifications name.
const PROVIDER_CATEGORY: &str = "RPZAC104";
const LIMIT: Duration = Duration::from_secs(30);

/// A physician with a UZI number and a RoleCodeNL role, of the
/// organisation the token names.
const DOCTOR: User = User {
    org: USER.org,
    ura: USER.ura,
    id: "000095254",
    role: "01.015",
};

/// The agent, its Zorgviewer partner and the stand-in Mitz (behind a proxy).
struct Site {
    setup: AgentSetup,
    agent: AgentProcess,
    viewer: Viewer,
    token: String,
    mitz: StandInMitz,
    proxy: Proxy,
    _tmp: TempDir,
}

impl Site {
    /// An agent whose decisions are kept for `ttl`, with the three
    /// patients' records published and subscribed.
    fn new(label: &str, ttl: &str) -> Site {
        let tmp = TempDir::new(label);
        let world = World::new();
        let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", OUR_URA);
        setup
            .env
            .set("NP_POLL_INTERVAL", "1s")
            .set("NP_RETRY_FIRST", "1s")
            .set("NP_MITZ_DECISION_TTL", ttl);
        let viewer = Viewer::new(&world, tmp.path(), &mut setup, "zv", "55556666");
        let mitz = StandInMitz::start(&Party::new(&world, tmp.path(), "mitz", "90000017", &[]));
        let proxy = Proxy::start(mitz.addr.port());
        mitz.configure(&mut setup, "mitz");
        setup
            .env
            .set("NP_PARTNER_MITZ_URL", mitz.base_via(proxy.port));
        let agent = setup.start();
        let token = viewer.token(&setup, Alg::Es384, SCOPES);
        let site = Site {
            setup,
            agent,
            viewer,
            token,
            mitz,
            proxy,
            _tmp: tmp,
        };
        for (record, bsn) in [
            ("permit", PERMIT_BSN),
            ("deny", DENY_BSN),
            ("other", OTHER_BSN),
        ] {
            site.publish(record, bsn);
        }
        wait_until(
            LIMIT,
            || events(&site.agent.log(), "mitz.subscribed", &[]).len() == 3,
            || format!("three subscriptions:\n{}", site.agent.log()),
        );
        site
    }

    /// The EHR publishes record `id` of `bsn` (its Patient `p-<bsn>` and a
    /// Condition `c-<bsn>`) to `zv`; waits until it is in.
    fn publish(&self, id: &str, bsn: &str) {
        let before = events(&self.agent.log(), "record.published", &[]).len();
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": format!("p-{bsn}"),
             "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]}},
            {"resource": {"resourceType": "Condition", "id": format!("c-{bsn}"),
             "subject": {"reference": format!("Patient/p-{bsn}")}}}
        ]});
        export(
            &self.setup.outbox("zv"),
            &format!("{id}.json"),
            bundle.to_string().as_bytes(),
        );
        wait_until(
            LIMIT,
            || events(&self.agent.log(), "record.published", &[]).len() > before,
            || self.agent.log(),
        );
    }

    /// `GET path` as Zorgviewer sends it for [`DOCTOR`].
    fn get(&self, path: &str) -> Resp {
        let req = self.viewer.request_as(&DOCTOR, &self.token, path);
        self.viewer.send(&self.setup, &req)
    }

    /// The Conditions search of `bsn`'s patient.
    fn search(&self, bsn: &str) -> Resp {
        self.get(&format!("/fhir/Condition?patient=p-{bsn}"))
    }

    /// The audit record of an answer.
    fn audit_of(&self, r: &Resp) -> Value {
        audit_of(&self.setup, r.header("x-request-id").unwrap())
    }

    /// `np_mitz_decisions_total{decision}` on the admin `/metrics`.
    fn decisions(&self, decision: &str) -> f64 {
        let text = metrics(self.setup.admin_port);
        sample(
            &text,
            &format!("np_mitz_decisions_total{{decision=\"{decision}\"}}"),
        )
        .unwrap_or(0.0)
    }

    fn cache_hits(&self) -> f64 {
        sample(
            &metrics(self.setup.admin_port),
            "np_mitz_decision_cache_hits_total",
        )
        .unwrap_or(0.0)
    }

    /// The `event=mitz.closed_question` lines with `decision`.
    fn logged(&self, decision: &str) -> Vec<common::observe::Line> {
        events(
            &self.agent.log(),
            "mitz.closed_question",
            &[("decision", decision)],
        )
    }

    fn assert_no_bsn_in_log(&self) {
        let log = self.agent.log();
        for bsn in [PERMIT_BSN, DENY_BSN, OTHER_BSN] {
            if let Some(line) = log.lines().find(|l| l.contains(bsn)) {
                panic!("the log holds a BSN: {line}");
            }
        }
    }
}

/// A record served: the Condition of the patient, with consent `permit`
/// from the closed question in the audit trail.
fn assert_served(site: &Site, r: &Resp, bsn: &str) {
    assert_eq!(r.ids(), [format!("Condition/c-{bsn}")]);
    let a = site.audit_of(r);
    assert_eq!(
        (&a["outcome"], &a["consent"], &a["consent_source"]),
        (
            &json!("success"),
            &json!("permit"),
            &json!("closed-question")
        ),
        "{a}"
    );
}

#[test]
fn the_permit_patient_is_served_and_the_deny_patient_is_not() {
    let site = Site::new("mitz-q-permit", "60s");

    let r = site.search(PERMIT_BSN);
    assert_served(&site, &r, PERMIT_BSN);
    let read = site.get(&format!("/fhir/Patient/p-{PERMIT_BSN}"));
    assert_eq!(read.ids(), [format!("Patient/p-{PERMIT_BSN}")]);

    let r = site.search(DENY_BSN);
    r.assert_empty_searchset("the deny patient");
    let a = site.audit_of(&r);
    assert_eq!(
        (&a["consent"], &a["consent_source"], &a["patient"]),
        (&json!("deny"), &json!("closed-question"), &json!(DENY_BSN)),
        "{a}"
    );
    let path = format!("/fhir/Patient/p-{DENY_BSN}");
    let read = site.get(&path);
    read.assert_refused(404, "not-found", &path);
    assert_eq!(site.audit_of(&read)["consent"], "deny", "{path}");
    assert!(site.decisions("permit") >= 1.0);
    assert!(site.decisions("deny") >= 1.0);
    let denied = site.logged("deny");
    assert!(!denied.is_empty(), "{}", site.agent.log());
    assert!(denied.iter().all(|l| l.get("level") == Some("warn")));

    // The question as sent, read by a namespace-aware XML parser.
    let questions = site.mitz.questions();
    let first = questions
        .iter()
        .find(|s| s.question().is_some_and(|q| q.patient == PERMIT_BSN))
        .expect("a question about the permit patient");
    assert_question(&site, first, PERMIT_BSN);

    // One subscription per published patient, at the same stand-in that
    // answers the questions, and no more for the reads.
    let subscribed = site.mitz.requests_to(SUBSCRIPTION_PATH);
    assert_eq!(subscribed.len(), 3, "{subscribed:?}");
    let mut patients: Vec<String> = site.mitz.held().into_iter().map(|h| h.patient).collect();
    patients.sort();
    assert_eq!(patients, [PERMIT_BSN, DENY_BSN, OTHER_BSN]);
    site.assert_no_bsn_in_log();
}

/// `seen` is the closed question of spec §7 about `bsn`, asked for
/// [`DOCTOR`] of the Zorgviewer partner's organisation.
fn assert_question(site: &Site, seen: &Seen, bsn: &str) {
    use xacml::*;
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.header("content-type").map(str::to_ascii_lowercase),
        Some("application/soap+xml; charset=utf-8".to_string())
    );
    let envelope = parse_xml(&seen.body).expect("well-formed, namespaced XML");
    assert!(envelope.is(SOAP_NS, "Envelope"), "{envelope:?}");

    // WS-Addressing.
    let header = envelope.child(SOAP_NS, "Header").expect("soap:Header");
    let wsa = |name: &str| {
        header
            .child(WSA_NS, name)
            .unwrap_or_else(|| panic!("wsa:{name}"))
    };
    assert_eq!(wsa("Action").text, "XACMLAuthorizationDecisionQueryRequest");
    let rid = seen.header("x-request-id").expect("X-Request-Id");
    assert!(np_agent::util::random::is_uuid(rid), "{rid}");
    assert_eq!(wsa("MessageID").text, format!("urn:uuid:{rid}"));
    assert_eq!(
        wsa("To").text,
        format!(
            "{}{CLOSED_QUESTION_PATH}",
            site.mitz.base_via(site.proxy.port)
        )
    );
    assert_eq!(
        wsa("ReplyTo")
            .child(WSA_NS, "Address")
            .map(|a| a.text.as_str()),
        Some("http://www.w3.org/2005/08/addressing/anonymous")
    );

    // The SAML profile's query around an XACML 3.0 request.
    let body = envelope.child(SOAP_NS, "Body").expect("soap:Body");
    assert_eq!(body.children.len(), 1);
    let query = body
        .child(XACML_SAML_NS, "XACMLAuthzDecisionQuery")
        .expect("XACMLAuthzDecisionQuery of the XACML-SAML profile wd-14");
    assert_eq!(query.attr("Version"), Some("2.0"));
    assert!(query.attr("ID").is_some_and(|id| id.ends_with(rid)));
    assert!(
        query
            .attr("IssueInstant")
            .and_then(np_agent::util::time::parse_rfc3339)
            .is_some(),
        "{query:?}"
    );
    let request = query
        .child(XACML_NS, "Request")
        .expect("an XACML 3.0 core wd-17 Request");
    for block in &request.children {
        assert!(block.is(XACML_NS, "Attributes"), "{block:?}");
    }

    // Every attribute: (category, attribute id) → its HL7v3 value.
    let attributes = |category: &str| -> Vec<(String, String, &XmlElement)> {
        request
            .children(XACML_NS, "Attributes")
            .filter(|a| a.attr("Category") == Some(category))
            .flat_map(|a| a.children(XACML_NS, "Attribute"))
            .map(|a| {
                let value = a
                    .child(XACML_NS, "AttributeValue")
                    .expect("an AttributeValue");
                let hl7: Vec<&XmlElement> = value.children.iter().collect();
                assert_eq!(hl7.len(), 1, "{value:?}");
                assert_eq!(hl7[0].ns, HL7_NS, "{value:?}");
                let data_type = value.attr("DataType").unwrap().to_string();
                (
                    a.attr("AttributeId").unwrap().to_string(),
                    data_type,
                    hl7[0],
                )
            })
            .collect()
    };
    let ii = |root: &str, extension: &str| ("II", root.to_string(), extension.to_string());
    let cv = |system: &str, code: &str| ("CV", system.to_string(), code.to_string());
    let read = |(id, data_type, value): &(String, String, &XmlElement)| {
        let kind = match (data_type.as_str(), value.name.as_str()) {
            ("urn:hl7-org:v3#II", "InstanceIdentifier") => "II",
            ("urn:hl7-org:v3#CV", "CodedValue") => "CV",
            other => panic!("{id}: an HL7v3 II or CV, not {other:?}"),
        };
        let (a, b) = match kind {
            "II" => ("root", "extension"),
            _ => ("codeSystem", "code"),
        };
        (
            id.clone(),
            (
                kind,
                value.attr(a).unwrap_or_default().to_string(),
                value.attr(b).unwrap_or_default().to_string(),
            ),
        )
    };
    let of = |category: &str| -> Vec<(String, (&str, String, String))> {
        attributes(category).iter().map(read).collect()
    };
    assert_eq!(
        of(CATEGORY_RESOURCE),
        [
            (RESOURCE_ID.into(), ii("2.16.840.1.113883.2.4.6.3", bsn)),
            (
                FACILITY_TYPE.into(),
                cv("2.16.840.1.113883.2.4.15.1060", ORG_CATEGORY)
            ),
            (
                AUTHOR_INSTITUTION.into(),
                ii("2.16.528.1.1007.3.3", OUR_URA)
            ),
        ]
    );
    assert_eq!(
        of(CATEGORY_ACTION),
        [(EVENT_CODE.into(), cv(DATA_CATEGORY_SYSTEM, "GGC002"))],
        "one action block per data category"
    );
    assert_eq!(
        of(CATEGORY_SUBJECT),
        [
            (
                SUBJECT_ROLE.into(),
                cv("2.16.840.1.113883.2.4.15.111", DOCTOR.role)
            ),
            (
                PROVIDER_IDENTIFIER.into(),
                ii("2.16.528.1.1007.3.1", DOCTOR.id)
            ),
            (
                PROVIDER_INSTITUTION.into(),
                ii("2.16.528.1.1007.3.3", DOCTOR.ura)
            ),
            (
                CONSULTING_FACILITY_TYPE.into(),
                cv("2.16.840.1.113883.2.4.15.1060", REQUESTER_CATEGORY)
            ),
        ]
    );
    assert_eq!(
        of(CATEGORY_ENVIRONMENT),
        [(
            PURPOSE_OF_USE.into(),
            cv("2.16.840.1.113883.1.11.20448", "TREAT")
        )]
    );
    assert_eq!(
        request.children(XACML_NS, "Attributes").count(),
        4,
        "resource, action, subject, environment"
    );
}

/// Whatever goes wrong at Mitz, nothing is served: each case is audited,
/// logged as a warning and counted under its own decision label.
#[test]
fn anything_but_a_permit_serves_nothing() {
    let site = Site::new("mitz-q-faults", "60s");
    // (what, the patient, what Mitz does, the metric and log label, the
    // audit's decision and what its reason says)
    let cases = [
        (
            "down",
            PERMIT_BSN,
            AtMitz::Down,
            "unreachable",
            ("unavailable", "closed question at https://"),
        ),
        (
            "faulting",
            PERMIT_BSN,
            AtMitz::Fault(Fault::Soap),
            "fault",
            ("unavailable", "answered 500 with soap fault"),
        ),
        (
            "500",
            PERMIT_BSN,
            AtMitz::Fault(Fault::status(500)),
            "http-error",
            ("unavailable", "answered 500"),
        ),
        (
            "garbage",
            PERMIT_BSN,
            AtMitz::Fault(Fault::garbage()),
            "invalid-answer",
            ("unavailable", "closed question at https://"),
        ),
        (
            "Indeterminate",
            PERMIT_BSN,
            AtMitz::Fault(Fault::Decide("Indeterminate")),
            "indeterminate",
            ("unavailable", "mitz answered Indeterminate"),
        ),
        (
            "NotApplicable: a patient Mitz knows no consent of",
            OTHER_BSN,
            AtMitz::AsIs,
            "not-applicable",
            ("not-applicable", "no consent"),
        ),
    ];
    for (what, bsn, at_mitz, label, decision) in cases {
        match &at_mitz {
            AtMitz::Down => site.proxy.set_mode(Mode::Down),
            AtMitz::Fault(f) => site
                .mitz
                .fault(CLOSED_QUESTION_PATH, std::slice::from_ref(f)),
            AtMitz::AsIs => {}
        }
        let asked = site.mitz.questions().len();
        let (counted, logged) = (site.decisions(label), site.logged(label).len());
        let r = site.search(bsn);
        r.assert_empty_searchset(what);
        assert_withheld(&site, &r, what, bsn, decision);
        assert_eq!(site.decisions(label), counted + 1.0, "{what}");
        let lines = site.logged(label);
        assert_eq!(lines.len(), logged + 1, "{what}: {}", site.agent.log());
        let line = lines.last().unwrap();
        assert_eq!(line.get("level"), Some("warn"), "{what}: {}", line.raw);
        assert_eq!(line.get("partner"), Some("mitz"), "{}", line.raw);
        if let AtMitz::Down = at_mitz {
            assert_eq!(site.mitz.questions().len(), asked, "{what}: not reached");
            site.proxy.set_mode(Mode::Up);
        } else {
            assert_eq!(site.mitz.questions().len(), asked + 1, "{what}");
        }
    }
    // A read withholds the same way.
    site.mitz
        .fault(CLOSED_QUESTION_PATH, &[Fault::Decide("Indeterminate")]);
    let read = site.get(&format!("/fhir/Patient/p-{PERMIT_BSN}"));
    read.assert_refused(404, "not-found", "a read while Mitz is indeterminate");
    assert_withheld(
        &site,
        &read,
        "a read",
        PERMIT_BSN,
        ("unavailable", "mitz answered Indeterminate"),
    );

    // Slow: no answer within the 5 s the closed question has.
    site.mitz.fault(
        CLOSED_QUESTION_PATH,
        &[Fault::Delay(Duration::from_secs(7))],
    );
    let started = Instant::now();
    let r = site.search(PERMIT_BSN);
    let took = started.elapsed();
    r.assert_empty_searchset("slow");
    assert_withheld(
        &site,
        &r,
        "slow",
        PERMIT_BSN,
        ("unavailable", "no answer within 5000 ms"),
    );
    assert!(
        (Duration::from_secs(5)..Duration::from_millis(6500)).contains(&took),
        "answered after {took:?}"
    );
    assert_eq!(site.decisions("timeout"), 1.0);
    assert_eq!(site.logged("timeout").len(), 1);

    // Mitz is fine again (nothing failed was kept): served.
    let r = site.search(PERMIT_BSN);
    assert_served(&site, &r, PERMIT_BSN);
    site.assert_no_bsn_in_log();
}

/// What the stand-in Mitz does for one question.
enum AtMitz {
    /// Not reachable: the proxy in front of it closes every connection.
    Down,
    Fault(Fault),
    /// Answers as Mitz TST.
    AsIs,
}

/// `r` withheld `bsn`'s data with the audit's `decision` from the closed
/// question, and a reason that says `why` and names no patient.
fn assert_withheld(site: &Site, r: &Resp, what: &str, bsn: &str, (decision, why): (&str, &str)) {
    let a = site.audit_of(r);
    assert_eq!(
        (&a["outcome"], &a["consent"], &a["consent_source"]),
        (
            &json!("refused"),
            &json!(decision),
            &json!("closed-question")
        ),
        "{what}: {a}"
    );
    assert_eq!(a["patient"], bsn, "{what}: {a}");
    assert!(a.get("resources").is_none(), "{what}: {a}");
    let reason = a["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "{what}: {a}");
    assert!(!reason.contains(bsn), "{what}: {a}");
}

#[test]
fn a_decision_is_asked_once_within_the_ttl_and_again_after_it() {
    let site = Site::new("mitz-q-ttl", "2s");
    let asked = site.mitz.questions().len();
    let hits = site.cache_hits();
    let first = Instant::now();
    assert_served(&site, &site.search(PERMIT_BSN), PERMIT_BSN);
    assert_served(&site, &site.search(PERMIT_BSN), PERMIT_BSN);
    // Decisions are kept by the whole second: within one second of the
    // first, the second request is within the TTL whatever the clock says.
    assert!(first.elapsed() < Duration::from_secs(1), "too slow to tell");
    assert_eq!(
        site.mitz.questions().len(),
        asked + 1,
        "two requests, one question"
    );
    assert_eq!(site.cache_hits(), hits + 1.0);

    // The TTL has passed: a fresh question, which Mitz now answers otherwise.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(first.elapsed()));
    site.mitz
        .fault(CLOSED_QUESTION_PATH, &[Fault::Decide("Deny")]);
    site.search(PERMIT_BSN)
        .assert_empty_searchset("denied on the fresh question");
    assert_eq!(site.mitz.questions().len(), asked + 2);
}

#[test]
fn a_newer_consent_notification_leads_to_a_fresh_question_at_once() {
    let site = Site::new("mitz-q-notified", "1d");
    site.search(DENY_BSN).assert_empty_searchset("denied");
    assert_served(&site, &site.search(PERMIT_BSN), PERMIT_BSN);
    site.search(DENY_BSN).assert_empty_searchset("denied, kept");
    let asked = site.mitz.questions().len();

    // The patient gives consent; Mitz notifies us as the broker and will
    // permit from now on.
    let stored = events(&site.agent.log(), "mitz.stored", &[]).len();
    let bundle = notification(
        DENY_BSN,
        OUR_URA,
        &[PROVIDER_CATEGORY],
        "2026-01-02T03:04:05.1234567Z",
    );
    assert_eq!(site.mitz.notify(DENY_BSN, &bundle), 200);
    wait_until(
        LIMIT,
        || {
            events(&site.agent.log(), "mitz.stored", &[])
                .iter()
                .skip(stored)
                .any(|l| l.get("consent_changed") != Some("0"))
        },
        || site.agent.log(),
    );
    site.mitz
        .fault(CLOSED_QUESTION_PATH, &[Fault::Decide("Permit")]);
    assert_served(&site, &site.search(DENY_BSN), DENY_BSN);
    assert_eq!(
        site.mitz.questions().len(),
        asked + 1,
        "asked again at once"
    );
    // Only that patient's decisions were forgotten.
    assert_served(&site, &site.search(PERMIT_BSN), PERMIT_BSN);
    assert_eq!(site.mitz.questions().len(), asked + 1);
}
