//! Values a partner or the EHR chooses never shape a log line: a real
//! `np-agent run` at `NP_LOG=debug` gets hostile text in every field it logs
//! from outside — `X-Request-Id` on every kind of endpoint (the admin
//! listener too), a JWS `kid`, an `AORTA-ID` carrying a BSN-shaped digit run,
//! outbox file and folder names, the OAuth error a partner's token endpoint
//! answers and the Subscription id Mitz gives — and its log is searched: one
//! `level=` and one `event=` per line, no BSN, and each value marked `p:` and
//! reduced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentProcess, AgentSetup, Party, World};
use common::folders::export;
use common::mitz::{Fault, SUBSCRIPTION_PATH, StandInMitz};
use np_agent::http::{self, Handler, Request, Response};
use np_agent::jose::Alg;
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion};
use np_agent::util::b64;
use np_agent::util::percent::encode_form;
use serde_json::{Value, json};

/// Our URA: the Organization of the Mitz fixture.
const OUR_URA: &str = "87654321";
const B_URA: &str = "11112222";
const BROKER_URA: &str = "22223333";
const NOTIFICATION: &[u8] = include_bytes!("fixtures/mitz/notification.json");
/// A BSN that passes the 11-test: it must not appear in the log at all.
const BSN: &str = "999999151";
/// An `X-Request-Id` that tries to add fields, quote its way out and carry a BSN.
const HOSTILE_RID: &str = "x\"level=error,event=forged,bsn=999999151\\";
const HOSTILE_RID_LOGGED: &str = "rid=p:x_level_error_event_forged_bsn_#_";

/// A partner's token endpoint that refuses with hostile OAuth error text.
struct HostileTokenEndpoint;

impl Handler for HostileTokenEndpoint {
    fn handle(&self, _req: &Request) -> Response {
        let body = json!({
            "error": "invalid_grant",
            "error_description": format!("level=error event=forged {BSN}"),
        });
        Response::new(400).body("application/json", body.to_string())
    }
    fn endpoint_label(&self, _path: &str) -> &'static str {
        "token"
    }
    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

/// The sample export with the patient's BSN set to `bsn`.
fn case(bsn: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(np_agent::demo::SAMPLE).unwrap();
    for e in v["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "Patient" {
            e["resource"]["identifier"][0]["value"] = json!(bsn);
        }
    }
    v.to_string().into_bytes()
}

/// Every line of the log, waiting until one contains `needle`.
fn wait_for(agent: &AgentProcess, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = agent.log();
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn partner_values_are_logged_marked_and_reduced() {
    let tmp = TempDir::new("log-hygiene");
    let world = World::new();
    let b = Party::new(&world, tmp.path(), "hospb", B_URA, &[Alg::Es256]);
    let broker = Party::new(&world, tmp.path(), "broker", BROKER_URA, &[]);
    let jwks = b.serve_jwks();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let token_endpoint = http::Server::start(
        listener,
        Arc::new(http::TlsSlot::new(
            pki::server_config(&b.material, MinVersion::Tls13).unwrap(),
        )),
        Arc::new(HostileTokenEndpoint),
        http::Limits::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mitz = StandInMitz::start(&broker);
    mitz.fault(
        SUBSCRIPTION_PATH,
        &[Fault::Raw {
            status: 201,
            body: format!(r#"{{"resourceType":"Subscription","id":"sub.{BSN}"}}"#).into_bytes(),
        }],
    );
    let mut a = AgentSetup::new(&world, tmp.path(), "hospa", OUR_URA);
    a.add_partner(&b, &jwks);
    a.env.set(
        "NP_PARTNER_HOSPB_TOKEN_URL",
        format!("https://localhost:{token_port}/oauth/token"),
    );
    mitz.configure(&mut a, "broker");
    a.env.set("NP_POLL_INTERVAL", "1s");
    let agent = a.start();
    let status = |resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        resp.unwrap().status().as_u16()
    };

    // The request id on discovery, FHIR data and the admin listener.
    let client = b.client();
    for (id, path) in [
        (HOSTILE_RID, "/fhir/metadata"),
        (HOSTILE_RID, "/fhir/Patient?identifier=x"),
        (BSN, "/fhir/Condition"),
    ] {
        let s = status(client.get(&a.url(path)).header("X-Request-Id", id).call());
        assert!(s == 200 || s == 401, "{path}: {s}");
    }
    let admin = ureq::get(&format!("http://127.0.0.1:{}/healthz", a.admin_port))
        .header("X-Request-Id", HOSTILE_RID)
        .call();
    assert_eq!(status(admin), 200);

    // A client assertion whose `kid` tries the same, at the token endpoint.
    let header = b64::encode(
        br#"{"alg":"ES256","typ":"JWT","kid":"k\" level=error event=forged 999999151"}"#,
    );
    let assertion = format!("{header}.{}.{}", b64::encode(b"{}"), b64::encode(b"sig"));
    let form = format!(
        "grant_type={}&client_assertion_type={}&client_assertion={assertion}&assertion={assertion}",
        encode_form("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        encode_form("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
    );
    let s = status(
        client
            .post(&a.token_endpoint())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Request-Id", HOSTILE_RID)
            .send(form.as_bytes()),
    );
    assert_eq!(s, 401);

    // A Mitz notification whose AORTA-ID request id holds a BSN-shaped run.
    let s = status(
        broker
            .client()
            .post(&a.url("/mitz/fhir"))
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json")
            .header(
                "AORTA-ID",
                "initialRequestID=0f6f2d0c-3c1e-4a8b-9d57-6f1b2a3c4d5e; \
                 requestID=7b1e9a44-2f0d-4c6a-8e3b-000999999151",
            )
            .header("X-Request-Id", HOSTILE_RID)
            .send(NOTIFICATION),
    );
    assert_eq!(s, 200);

    // A case for B, whose token endpoint refuses; the patient subscribed at Mitz.
    export(&a.outbox("hospb"), "c-2.json", &case(BSN));
    let queued = std::process::Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["mitz", "subscribe", "--bsn", BSN, "--env-file"])
        .arg(a.env_file())
        .output()
        .unwrap();
    assert!(queued.status.success(), "{queued:?}");

    // Outbox names an EHR (or whoever can write there) chose.
    let hostile_name = format!("level=error event=forged {BSN}.json");
    export(&a.outbox("hospb"), &hostile_name, b"{}");
    export(
        &a.dir.join("outbox").join(format!("x level=error {BSN}")),
        "c-1.json",
        b"{}",
    );

    wait_for(&agent, "event=mitz.subscribed");
    wait_for(&agent, "event=notify.failed");
    wait_for(&agent, "folder=p:x_level_error_#");
    wait_for(&agent, "file=p:level_error_event_forged_#.json");
    let log = wait_for(&agent, "event=mitz.received");

    // Each hostile value is there, marked and reduced, on the lines of its request.
    for (event, needle) in [
        ("event=http.request", HOSTILE_RID_LOGGED),
        ("event=http.request", "rid=p:# "),
        ("event=admin.request", HOSTILE_RID_LOGGED),
        ("event=token.refused", HOSTILE_RID_LOGGED),
        (
            "event=token.refused",
            "jws kid \\\"k__level_error_event_forged_#\\\"",
        ),
        ("event=mitz.received", HOSTILE_RID_LOGGED),
        (
            "event=mitz.received",
            "aorta_request=p:7b1e9a44-2f0d-4c6a-8e3b-# ",
        ),
        (
            "event=mitz.received",
            "aorta_initial=p:0f6f2d0c-3c1e-4a8b-9d57-6f1b2a3c4d5e ",
        ),
        ("event=mitz.subscribed", "subscription=p:sub.# "),
        (
            "event=notify.failed",
            "answered 400 invalid_grant (p:level_error_event_forged_#)",
        ),
    ] {
        assert!(
            log.lines().any(|l| l.contains(event) && l.contains(needle)),
            "no {event} line with {needle:?} in:\n{log}"
        );
    }
    // Whatever came in, a line has one level and one event, and no BSN.
    for line in log.lines() {
        assert_eq!(line.matches("level=").count(), 1, "{line}");
        assert_eq!(line.matches("event=").count(), 1, "{line}");
        assert!(!line.contains(BSN), "{line}");
    }
    drop(agent);
    token_endpoint.shutdown(Duration::from_millis(100));
}
