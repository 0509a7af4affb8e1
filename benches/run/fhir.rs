//! FHIR reads, searches and new connections at agent A, as agent B's pulls
//! make them (a pull token for a case A notified), with oha as the load and
//! nginx serving the same bytes over the same mutual TLS as the reference.
//!
//! Per run, in this order: kept-alive reads at the agent, then at nginx;
//! kept-alive searches at the agent; a new connection per read at the agent,
//! then at nginx. Each ratio divides the agent's rate by nginx's of the same
//! run. CPU per request is the server's user + system time over the load
//! (all threads, or nginx's master and workers) divided by its requests.

use serde_json::{Value, json};

use crate::Options;
use crate::common::TempDir;
use crate::common::agent::{AgentSetup, World};
use crate::common::observe::cpu_seconds;
use crate::report::Run;
use crate::support::{PulledCase, tls_files};
use crate::tools::{Load, LoadResult, Nginx, oha};

const BSN: &str = "999999151";
const CONDITION: &str = "cond-0";
const PATIENT: &str = "pat-0";
/// Observations of the patient: what the search returns.
const OBSERVATIONS: usize = 20;
/// Concurrent connections of every load.
const CONNECTIONS: usize = 16;

pub fn measure(opts: &Options) -> Vec<Run> {
    let tmp = TempDir::new("bench-fhir");
    let world = World::new();
    let (a, b) = AgentSetup::pair(&world, tmp.path(), "warn");
    let pb = b.start();
    let pa = a.start();
    let case = PulledCase::new(&a, &b, &[&pa, &pb], export().as_bytes(), BSN);
    let client = tls_files(&b);
    let http = b_client(&b);

    // The bytes nginx serves: the agent's own answer to the read.
    let read_url = a.url(&format!("/fhir/Condition/{CONDITION}"));
    let search_url = a.url(&format!("/fhir/Observation?patient={PATIENT}"));
    let token = case.token();
    let body = get(&http, &read_url, &token);
    let found = serde_json::from_slice::<Value>(&get(&http, &search_url, &token)).unwrap()["entry"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        found, OBSERVATIONS,
        "the search must return every Observation"
    );
    let root = tmp.join("nginx-root");
    let file = root.join("fhir/Condition").join(CONDITION);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &body).unwrap();
    let nginx = Nginx::start(&opts.tools, &tmp.join("nginx"), &tls_files(&a), &root);
    let nginx_url = nginx.url(&format!("/fhir/Condition/{CONDITION}"));

    let mut runs = Vec::new();
    for i in 0..opts.runs {
        eprintln!("bench: fhir run {}/{}", i + 1, opts.runs);
        let token = case.token();
        let load = |url: &str, keepalive: bool| {
            oha(
                &opts.tools,
                &Load {
                    url,
                    connections: CONNECTIONS,
                    secs: opts.load,
                    keepalive,
                    bearer: Some(&token),
                    client: &client,
                },
            )
        };
        let at_agent = |url: &str, keepalive: bool| {
            let before = cpu_seconds(pa.pid);
            let r = load(url, keepalive);
            let cpu = cpu_seconds(pa.pid) - before;
            (r, cpu)
        };
        let at_nginx = |keepalive: bool| {
            let before = nginx.cpu_seconds();
            let r = load(&nginx_url, keepalive);
            let cpu = nginx.cpu_seconds() - before;
            (r, cpu)
        };
        let mut run = Run::default();
        let (read, read_cpu) = at_agent(&read_url, true);
        let (static_read, static_cpu) = at_nginx(true);
        let (search, search_cpu) = at_agent(&search_url, true);
        let (fresh, fresh_cpu) = at_agent(&read_url, false);
        let (static_fresh, static_fresh_cpu) = at_nginx(false);
        assert_eq!(
            read.bytes_per_request, static_read.bytes_per_request,
            "nginx must serve the same bytes"
        );
        let us_per = |cpu: f64, r: &LoadResult| cpu * 1e6 / r.requests;
        run.set("fhir_read.bytes", read.bytes_per_request);
        run.set("fhir_read.req_per_s", read.per_s);
        run.set("fhir_read.p50_ms", read.p50_ms);
        run.set("fhir_read.p99_ms", read.p99_ms);
        run.set("fhir_read.cpu_us_per_req", us_per(read_cpu, &read));
        run.set("fhir_read.nginx_req_per_s", static_read.per_s);
        run.set("fhir_read.nginx_p50_ms", static_read.p50_ms);
        run.set("fhir_read.nginx_p99_ms", static_read.p99_ms);
        run.set(
            "fhir_read.nginx_cpu_us_per_req",
            us_per(static_cpu, &static_read),
        );
        run.set("fhir_read.ratio_to_nginx", read.per_s / static_read.per_s);
        run.set("fhir_search.req_per_s", search.per_s);
        run.set("fhir_search.p50_ms", search.p50_ms);
        run.set("fhir_search.p99_ms", search.p99_ms);
        run.set("fhir_search.bytes", search.bytes_per_request);
        run.set("fhir_search.cpu_us_per_req", us_per(search_cpu, &search));
        run.set("new_connections.per_s", fresh.per_s);
        run.set("new_connections.p99_ms", fresh.p99_ms);
        run.set("new_connections.cpu_us_per_conn", us_per(fresh_cpu, &fresh));
        run.set("new_connections.nginx_per_s", static_fresh.per_s);
        run.set(
            "new_connections.nginx_cpu_us_per_conn",
            us_per(static_fresh_cpu, &static_fresh),
        );
        run.set(
            "new_connections.ratio_to_nginx",
            fresh.per_s / static_fresh.per_s,
        );
        run.set("fhir_read.agent_rss_mib", crate::tools::rss_mib(pa.pid));
        runs.push(run);
    }
    drop(nginx);
    assert!(pa.stop().success());
    assert!(pb.stop().success());
    runs
}

/// An HTTPS client with B's certificate.
fn b_client(b: &AgentSetup) -> ureq::Agent {
    let material = np_agent::pki::TlsMaterial::load(&tls_files(b)).unwrap();
    let cfg = np_agent::pki::client_config(&material, np_agent::pki::MinVersion::Tls13).unwrap();
    np_agent::http::client::agent(cfg, np_agent::http::client::ClientTimeouts::default())
}

fn get(http: &ureq::Agent, url: &str, token: &str) -> Vec<u8> {
    let resp = http
        .get(url)
        .header("Accept", "application/fhir+json")
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    resp.into_body().read_to_vec().unwrap()
}

/// The case: a Patient, one Condition of about 2 KB as served, and 20
/// Observations of the patient.
fn export() -> String {
    let note = "Patient reports intermittent chest discomfort on exertion, relieved by rest; \
        no radiation, no dyspnoea at rest. ECG at the outpatient clinic without acute \
        ischaemic changes. Exercise test stopped at 9 minutes because of typical complaints \
        with 1.5 mm horizontal ST depression in V4-V6. Started on a beta blocker and \
        sublingual nitroglycerin as needed; statin continued. Coronary angiography planned. \
        Advised to avoid heavy exertion until then and to call the emergency number if \
        complaints last longer than 15 minutes or occur at rest. Follow-up at the cardiology \
        outpatient clinic in six weeks with the results.";
    let mut entries = vec![
        json!({"resource": {"resourceType": "Patient", "id": PATIENT,
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}],
            "name": [{"family": "Jansen", "given": ["Anna"]}], "gender": "female",
            "birthDate": "1956-03-14"}}),
        json!({"resource": {"resourceType": "Condition", "id": CONDITION,
            "clinicalStatus": "active", "verificationStatus": "confirmed",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "439401001",
                "display": "Diagnosis"}]}],
            "code": {"coding": [
                {"system": "http://snomed.info/sct", "code": "194828000", "display": "Angina pectoris"},
                {"system": "urn:oid:2.16.840.1.113883.6.3.2", "code": "I20.8",
                    "display": "Other forms of angina pectoris"}],
                "text": "Stable angina pectoris"},
            "severity": {"coding": [{"system": "http://snomed.info/sct", "code": "6736007",
                "display": "Moderate"}]},
            "bodySite": [{"coding": [{"system": "http://snomed.info/sct", "code": "80891009",
                "display": "Heart structure"}]}],
            "subject": {"reference": format!("Patient/{PATIENT}"), "display": "Anna Jansen"},
            "onsetDateTime": "2026-09-02",
            "assertedDate": "2026-09-16",
            "asserter": {"display": "Cardiologist, outpatient clinic"},
            "note": [{"text": note}, {"text": note}]}}),
    ];
    for i in 0..OBSERVATIONS {
        entries.push(
            json!({"resource": {"resourceType": "Observation", "id": format!("obs-{i}"),
            "status": "final",
            "category": [{"coding": [{"system": "http://hl7.org/fhir/observation-category",
                "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7",
                "display": "Body weight"}]},
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "effectiveDateTime": format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i),
            "valueQuantity": {"value": 70 + i, "unit": "kg", "system": "http://unitsofmeasure.org",
                "code": "kg"}}}),
        );
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries}).to_string()
}
