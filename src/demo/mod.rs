//! `np-agent demo`: the whole Notified Pull exchange on loopback with a
//! throwaway PKI. Two real agents (this binary, `np-agent run`, twice: hospital
//! A sends, hospital B receives), a sample BgZ export dropped into A's outbox,
//! B's inbox checked resource for resource against it, then an update and a
//! cancellation, then a Mitz consent notification (XML, as Mitz sends
//! it) posted to B by a stand-in Mitz in its broker role, stored byte for
//! byte and stored once when the broker resends it, and last a stand-in
//! Zorgviewer reading the record B publishes to it (`demo/zorgviewer.rs`):
//! B subscribes the patient at the stand-in Mitz, asks it the closed
//! question before it answers, refuses on its `Deny`, and serves once a
//! consent notification made it ask again and Mitz answered `Permit`
//! (`demo/mitz.rs`). Every step is printed as it happens; the exit code is
//! 0 only if everything arrived intact.

pub mod localisation;
mod mitz;
mod zorgviewer;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jose::{self, Alg};
use crate::pki::throwaway::{Ca, LeafSpec, UziOtherName, write_files};
use crate::util::{b64, durable, random};

/// The sample export: a small BgZ for a made-up patient with a test BSN.
pub const SAMPLE: &str = include_str!("sample-bgz.json");
/// The sample Mitz consent notification (for B, URA 87654321).
pub const MITZ_SAMPLE: &str = include_str!("../mitz/sample-notification.json");

const A_URA: &str = "12345678";
const B_URA: &str = "87654321";
const CASE: &str = "demo-case-1";
/// The patient of [`MITZ_SAMPLE`] (and of [`SAMPLE`]).
const MITZ_BSN: &str = "999999151";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A demo failure: which step, and why.
#[derive(Debug)]
pub struct DemoError(pub String);

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, DemoError> {
    Err(DemoError(msg.into()))
}

trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, DemoError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, DemoError> {
        self.map_err(|e| DemoError(format!("{what}: {e}")))
    }
}

/// Runs the demo; returns the process exit code.
pub fn run(dir: Option<PathBuf>, keep: bool, with_localisation: bool) -> i32 {
    let started = Instant::now();
    let root = match prepare_dir(dir.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("np-agent demo: {e}");
            return 1;
        }
    };
    let mut report = Report { started };
    let result = Demo::new(&root, &mut report).and_then(|mut d| {
        let mut r = d.exchange();
        if r.is_ok() && with_localisation {
            r = d.localisation();
        }
        d.stop_all();
        r
    });
    let code = match result {
        Ok(()) => {
            report.step("Done: every exported resource arrived unchanged, the update arrived, the cancellation stopped the pull, the consent notification was stored once, byte for byte, the published record's patient was subscribed at Mitz, and the Zorgviewer saw that record only once Mitz's closed question permitted it, every read in the audit trail.");
            0
        }
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e}");
            eprintln!("Logs and files are kept in {}", root.display());
            return 1;
        }
    };
    if keep || dir.is_some() {
        println!("Files kept in {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    code
}

fn prepare_dir(dir: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    let root = match dir {
        Some(d) => d,
        None => {
            let suffix = random::bytes::<6>().map(|b| b64::hex(&b)).ctx("random")?;
            std::env::temp_dir().join(format!("np-agent-demo-{suffix}"))
        }
    };
    if root.exists()
        && std::fs::read_dir(&root)
            .ctx("read demo dir")?
            .next()
            .is_some()
    {
        return fail(format!(
            "{} is not empty; give an empty or new directory",
            root.display()
        ));
    }
    durable::create_dir_all(&root).ctx("create demo dir")?;
    Ok(root)
}

struct Report {
    started: Instant,
}

impl Report {
    fn step(&mut self, text: &str) {
        println!("[{:>6.2}s] {text}", self.started.elapsed().as_secs_f64());
    }
}

struct Agent {
    name: &'static str,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

struct Demo<'r> {
    report: &'r mut Report,
    a: Agent,
    b: Agent,
    /// The stand-in Mitz: its API (a partner of B) and its broker.
    mitz: mitz::StandIn,
    /// The stand-in Zorgviewer, a partner of B.
    zv: zorgviewer::StandIn,
}

fn free_port() -> Result<u16, DemoError> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .ctx("find a free port")?
        .local_addr()
        .ctx("find a free port")?
        .port())
}

impl<'r> Demo<'r> {
    fn new(root: &Path, report: &'r mut Report) -> Result<Demo<'r>, DemoError> {
        report.step(&format!("Working in {}", root.display()));
        let ca = Ca::new("np-agent demo CA (throwaway)").ctx("create demo CA")?;
        let mut agents = Vec::new();
        let mitz = mitz::StandIn::new(&ca, &root.join("mitz"))?;
        let zv = zorgviewer::StandIn::new(&ca, &root.join("zorgviewer"))?;
        let ports = [free_port()?, free_port()?];
        let admin = [free_port()?, free_port()?];
        for (i, (name, ura, partner, partner_ura)) in [
            ("hospa", A_URA, "hospb", B_URA),
            ("hospb", B_URA, "hospa", A_URA),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = root.join(name);
            let leaf = ca
                .issue(&LeafSpec {
                    uzi: Some(UziOtherName::server(ura, "12345678")),
                    ..LeafSpec::localhost(&format!("{name}.demo.invalid"))
                })
                .ctx("issue demo certificate")?;
            let tls = write_files(&dir.join("tls"), &leaf, &[&ca]).ctx("write demo certificate")?;
            let signing = dir.join("signing.pem");
            let pem = jose::generate_pkcs8_pem(Alg::Es256).ctx("generate signing key")?;
            durable::write_atomic(&signing, pem.as_bytes()).ctx("write signing key")?;
            let other_port = ports[1 - i];
            let upper = partner.to_ascii_uppercase();
            let env: BTreeMap<String, String> = [
                ("NP_LISTEN".to_string(), format!("127.0.0.1:{}", ports[i])),
                ("NP_ADMIN_LISTEN".into(), format!("127.0.0.1:{}", admin[i])),
                (
                    "NP_PUBLIC_URL".into(),
                    format!("https://localhost:{}", ports[i]),
                ),
                ("NP_TLS_CERT".into(), tls.cert.display().to_string()),
                ("NP_TLS_KEY".into(), tls.key.display().to_string()),
                ("NP_TLS_TRUST".into(), tls.trust.display().to_string()),
                ("NP_SIGNING_KEY".into(), signing.display().to_string()),
                ("NP_SIGNING_ALG".into(), "ES256".into()),
                ("NP_ORG_URA".into(), ura.into()),
                (
                    "NP_ORG_NAME".into(),
                    format!("Demo hospital {}", &name[4..].to_uppercase()),
                ),
                (
                    "NP_STATE_DIR".into(),
                    dir.join("state").display().to_string(),
                ),
                ("NP_OUTBOX".into(), dir.join("outbox").display().to_string()),
                ("NP_INBOX".into(), dir.join("inbox").display().to_string()),
                ("NP_POLL_INTERVAL".into(), "1s".into()),
                ("NP_PARTNERS".into(), partner.into()),
                (
                    format!("NP_PARTNER_{upper}_FHIR_BASE"),
                    format!("https://localhost:{other_port}/fhir"),
                ),
                (
                    format!("NP_PARTNER_{upper}_ORG"),
                    format!("ura:{partner_ura}"),
                ),
                (
                    format!("NP_PARTNER_{upper}_CERT"),
                    format!("ura:{partner_ura}"),
                ),
            ]
            .into_iter()
            .collect();
            let mut env = env;
            if name == "hospb" {
                env.insert(
                    "NP_PARTNERS".into(),
                    format!("{partner},{},{}", mitz::PARTNER, zorgviewer::PARTNER),
                );
                env.extend(mitz.env());
                env.extend(zv.partner_env());
            }
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            durable::write_atomic(&dir.join("np-agent.env"), text.as_bytes())
                .ctx("write env file")?;
            agents.push(Agent {
                name,
                dir,
                port: ports[i],
                child: None,
                log: root.join(format!("{name}.log")),
            });
        }
        report.step("Created a throwaway PKI: one demo CA, a UZI-style certificate for each hospital (URA in the SAN), an ES256 signing key each, and certificates for the stand-ins of Mitz and the Zorgviewer");
        report.step(&format!(
            "The stand-in Mitz serves its API over mutual TLS on {}: B's configuration names it as its Mitz partner (NP_PARTNER_MITZ_URL), with B's own identity at Mitz (NP_ORG_CATEGORY={}, NP_HOME_COMMUNITY_ID, NP_SOURCE_ID)",
            mitz.base(),
            mitz::ORG_CATEGORY
        ));
        let b = agents.pop().ok_or_else(|| DemoError("internal".into()))?;
        let a = agents.pop().ok_or_else(|| DemoError("internal".into()))?;
        let mut demo = Demo {
            report,
            a,
            b,
            mitz,
            zv,
        };
        for which in [0, 1] {
            let agent = if which == 0 { &mut demo.a } else { &mut demo.b };
            start(agent)?;
            let text = format!(
                "Started hospital {} (np-agent run, pid {}) on https://localhost:{} (log: {})",
                &agent.name[4..].to_uppercase(),
                agent.child.as_ref().map_or(0, |c| c.id()),
                agent.port,
                agent.log.display()
            );
            demo.report.step(&text);
        }
        Ok(demo)
    }

    fn exchange(&mut self) -> Result<(), DemoError> {
        let export: Value = serde_json::from_str(SAMPLE).ctx("sample export")?;
        let outbox = self.a.dir.join("outbox/hospb");
        durable::create_dir_all(&outbox).ctx("create outbox")?;
        drop_file(&outbox, &format!("{CASE}.json"), SAMPLE.as_bytes())?;
        self.report.step(&format!(
            "Hospital A's EHR exported a BgZ for the demo patient into outbox/hospb/{CASE}.json ({} resources: Patient, Condition, AllergyIntolerance, Medication, MedicationStatement, 2 Observations incl. blood pressure, DocumentReference + Binary)",
            resources(&export).len()
        ));
        wait_until(
            STEP_TIMEOUT,
            || !outbox.join(format!("{CASE}.json")).exists(),
            "A accepting the export",
        )?;
        self.report.step("A accepted it: stored durably, authorization base issued, notification Task queued for B");
        let inbox = self.b.dir.join("inbox/hospa");
        let first = wait_for_files(&inbox, 1, ".json", STEP_TIMEOUT, "B's inbox file")?;
        let group = first[0]
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.report.step(&format!(
            "A got a token at B's token endpoint and POSTed the notification Task; B stored it, got a pull token at A's token endpoint with the authorization base, and pulled the data into inbox/hospa/{group}/"
        ));
        let pulled = read_json(&first[0])?;
        check_same(&export, &pulled)?;
        self.report.step(&format!(
            "Checked B's inbox: the first entry is the notification Task and all {} exported resources are there, each identical to the export",
            resources(&export).len()
        ));

        // An update: a new weight measurement replaces the old data.
        let mut updated = export.clone();
        if let Some(entries) = updated["entry"].as_array_mut() {
            for e in entries.iter_mut() {
                if e["resource"]["id"] == "weight-1" {
                    e["resource"]["valueQuantity"]["value"] = serde_json::json!(70.9);
                    e["resource"]["effectiveDateTime"] =
                        serde_json::json!("2026-11-28T10:00:00+01:00");
                }
            }
        }
        let bytes = serde_json::to_vec_pretty(&updated).ctx("updated export")?;
        drop_file(&outbox, &format!("{CASE}.json"), &bytes)?;
        self.report
            .step("The EHR exported an update of the same case (a new body weight)");
        let both = wait_for_files(
            &inbox.join(&group),
            2,
            ".json",
            STEP_TIMEOUT,
            "the update in B's inbox",
        )?;
        let newest = both
            .iter()
            .find(|p| **p != first[0])
            .ok_or_else(|| DemoError("no second inbox file".into()))?;
        check_same(&updated, &read_json(newest)?)?;
        self.report.step("B received a new Task in the same group (same groupIdentifier) and pulled the updated data: identical to the update");

        // A cancellation.
        drop_file(
            &outbox,
            &format!("{CASE}.cancel"),
            b"cancelled by the demo\n",
        )?;
        self.report.step(&format!(
            "The EHR cancelled the case (outbox/hospb/{CASE}.cancel)"
        ));
        wait_for_files(
            &inbox.join(&group),
            1,
            ".cancelled.json",
            STEP_TIMEOUT,
            "the cancellation in B's inbox",
        )?;
        self.report.step("A revoked the authorization base at once and sent the cancellation; B wrote the cancellation Task to its inbox");
        self.mitz()?;
        self.zorgviewer()
    }

    /// A consent notification from the broker to B, sent twice.
    fn mitz(&mut self) -> Result<(), DemoError> {
        let value: Value = serde_json::from_str(MITZ_SAMPLE).ctx("sample notification")?;
        let xml = crate::fhir::json_to_xml(&value, crate::fhir::FhirVersion::R4)
            .ctx("sample notification as XML")?;
        let inbox = self.b.dir.join("inbox/mitz");
        for attempt in ["sent", "resent"] {
            self.post_notification(&xml)?;
            if attempt == "sent" {
                self.report.step("Mitz's notification broker (the stand-in Mitz, with its own certificate) POSTed a consent notification for the demo patient to B's /fhir/R4, in XML; B checked it, stored it durably and answered 200 with a transaction-response");
                let files = wait_for_files(
                    &inbox,
                    1,
                    ".xml",
                    STEP_TIMEOUT,
                    "the consent notification in B's inbox",
                )?;
                let stored = std::fs::read(&files[0]).ctx("read the stored notification")?;
                if stored != xml.as_bytes() {
                    return fail("the stored consent notification differs from what was sent");
                }
                let view = crate::mitz::consent::ConsentView::reader(&self.b.dir.join("state"));
                let bsn = crate::ids::Bsn::parse(MITZ_BSN)
                    .ok_or_else(|| DemoError("the sample BSN".into()))?;
                wait_until(
                    STEP_TIMEOUT,
                    || {
                        view.load(B_URA, &bsn).is_ok_and(|v| {
                            v.permits("GGC002", "RPZAC104") && !v.permits("GGC002", "RPZAC005")
                        })
                    },
                    "B's consent view",
                )?;
                self.report.step(&format!(
                    "B wrote it to inbox/mitz/{} byte for byte, and its consent view now says: hospitals (RPZAC104) may see treatment data (GGC002), pharmacies (RPZAC005) may not",
                    files[0].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let files = find_files(&inbox, ".xml");
        if files.len() != 1 {
            return fail(format!(
                "the resent notification was stored {} times",
                files.len()
            ));
        }
        self.report.step("The broker resent the same notification (guaranteed delivery does): B answered 200 again and kept the single file");
        Ok(())
    }

    /// The stand-in Mitz, as broker, POSTs a consent notification (XML)
    /// to B's FHIR base.
    fn post_notification(&self, xml: &str) -> Result<(), DemoError> {
        let url = format!("https://localhost:{}/fhir/R4", self.b.port);
        self.mitz
            .notify(&url, "application/fhir+xml", xml.as_bytes())
    }

    fn stop_all(&mut self) {
        for agent in [&mut self.a, &mut self.b] {
            if let Some(mut child) = agent.child.take() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            println!(
                                "[stopped] hospital {} exited with {}",
                                &agent.name[4..].to_uppercase(),
                                status.code().map_or("a signal".into(), |c| c.to_string())
                            );
                            break;
                        }
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Demo<'_> {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn start(agent: &mut Agent) -> Result<(), DemoError> {
    let exe = std::env::current_exe().ctx("locate np-agent")?;
    let sock_path = agent.dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).ctx("bind notify socket")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .ctx("notify socket")?;
    let log = std::fs::File::create(&agent.log).ctx("create log file")?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--env-file")
        .arg(agent.dir.join("np-agent.env"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ctx("start np-agent run")?;
    agent.child = Some(child);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            if buf[..n].windows(7).any(|w| w == b"READY=1") {
                let _ = std::fs::remove_file(&sock_path);
                return Ok(());
            }
        }
        if let Some(child) = agent.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut text = String::new();
                let _ =
                    std::fs::File::open(&agent.log).and_then(|mut f| f.read_to_string(&mut text));
                return fail(format!(
                    "{} exited before it was ready ({status}):\n{text}",
                    agent.name
                ));
            }
        }
        if Instant::now() > deadline {
            return fail(format!(
                "{} was not ready within {STEP_TIMEOUT:?}",
                agent.name
            ));
        }
    }
}

/// Writes a file the way an EHR must: under a temp name, then renamed.
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DemoError> {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).ctx("write export")?;
    std::fs::rename(&tmp, dir.join(name)).ctx("rename export")
}

fn wait_until(limit: Duration, done: impl Fn() -> bool, what: &str) -> Result<(), DemoError> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return fail(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until `dir` (searched one level deep) holds at least `n` files
/// ending in `suffix` (`.json` excludes `.cancelled.json`).
fn wait_for_files(
    dir: &Path,
    n: usize,
    suffix: &str,
    limit: Duration,
    what: &str,
) -> Result<Vec<PathBuf>, DemoError> {
    let deadline = Instant::now() + limit;
    loop {
        let found = find_files(dir, suffix);
        if found.len() >= n {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return fail(format!("timed out waiting for {what} in {}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find_files(&p, suffix));
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let wanted = if suffix == ".json" {
            name.ends_with(".json") && !name.ends_with(".cancelled.json")
        } else {
            name.ends_with(suffix)
        };
        if wanted && !name.starts_with('.') {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn read_json(path: &Path) -> Result<Value, DemoError> {
    let bytes = std::fs::read(path).ctx("read inbox file")?;
    serde_json::from_slice(&bytes).ctx("parse inbox file")
}

/// The resources of a Bundle by `Type/id`.
fn resources(bundle: &Value) -> BTreeMap<String, Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let r = &e["resource"];
                    Some((
                        format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?),
                        r.clone(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The inbox Bundle holds the Task first, then every exported resource unchanged.
pub fn check_same(export: &Value, inbox: &Value) -> Result<(), DemoError> {
    if inbox["type"] != "collection" {
        return fail("the inbox Bundle is not of type collection");
    }
    if inbox["entry"][0]["resource"]["resourceType"] != "Task" {
        return fail("the first inbox entry is not the notification Task");
    }
    let want = resources(export);
    let mut got = resources(inbox);
    got.retain(|k, _| !k.starts_with("Task/"));
    for (key, resource) in &want {
        match got.get(key) {
            None => return fail(format!("{key} is missing from the inbox")),
            Some(r) if r != resource => return fail(format!("{key} differs from the export")),
            Some(_) => {}
        }
    }
    if let Some(extra) = got.keys().find(|k| !want.contains_key(*k)) {
        return fail(format!("{extra} is in the inbox but was not exported"));
    }
    Ok(())
}
