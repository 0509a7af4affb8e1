//! The demo's localisation step (`np-agent demo --with-localisation`), and
//! the stand-in OAuth server, PRS and NVI it runs against ([`standin`],
//! shared with the integration tests).
//!
//! After the other steps, the Ministry's services are stood in for on
//! loopback, with certificates from a CA of their own that hospital B is
//! told to trust. B gets `prs` and `nvi` partners (and its OIN and source
//! id) in its env file and reloads on SIGHUP; `np-agent nvi register`
//! back-fills the demo patient, whose record B published before the
//! services were configured. B evaluates a pseudonym at the PRS (which sees
//! only a blinded point) and registers it at the NVI (which unblinds it and
//! never sees the BSN); then `np-agent nvi localize` finds B's URA for the
//! patient under a fresh pseudonym that the NVI unblinds to the same point.

pub mod standin;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use self::standin::{Service, StandIns};
use super::{B_URA, Context, Demo, DemoError, MITZ_BSN, STEP_TIMEOUT, fail, wait_until};
use crate::pki::throwaway::{Ca, LeafSpec, write_files};
use crate::pki::{TlsFiles, TlsMaterial};
use crate::util::durable;

/// B's OIN in the demo.
const B_OIN: &str = "00000001876543210000";
/// B's source system in the demo.
const B_SOURCE_ID: &str = "2.16.528.1.1007.3.3.87654321.1";

impl Demo<'_> {
    /// Registers the demo patient at the stand-in NVI and localises it.
    pub(super) fn localisation(&mut self) -> Result<(), DemoError> {
        let root = self
            .b
            .dir
            .parent()
            .ok_or_else(|| DemoError("demo folder".into()))?
            .join("gf");
        let services = start_services(&root, &self.b.dir)?;
        self.report.step(&format!(
            "Started stand-ins for the Ministry's localisation services, with a CA of their own: an OAuth server ({}) issuing certificate-bound tokens, a PRS ({}) with an OPRF key, an NVI ({}) with an RSA key registered at the PRS",
            services.origin(Service::OAuth),
            services.origin(Service::Prs),
            services.origin(Service::Nvi)
        ));
        let env_file = self.b.dir.join("np-agent.env");
        let mut env = std::fs::read_to_string(&env_file).ctx("read B's env file")?;
        let mut partners = String::new();
        for line in env.lines() {
            if let Some(names) = line.strip_prefix("NP_PARTNERS=") {
                partners = names.to_string();
            }
        }
        env = env
            .lines()
            .filter(|l| !l.starts_with("NP_PARTNERS="))
            .map(|l| format!("{l}\n"))
            .collect();
        env.push_str(&format!("NP_PARTNERS={partners},prs,nvi\n"));
        for (k, v) in services.env("fhir", B_OIN, B_SOURCE_ID) {
            env.push_str(&format!("{k}={v}\n"));
        }
        durable::write_atomic(&env_file, env.as_bytes()).ctx("write B's env file")?;
        let reloads = count(&self.b.log, "event=reload.done");
        let pid = self
            .b
            .child
            .as_ref()
            .map(std::process::Child::id)
            .ok_or_else(|| DemoError("B is not running".into()))?;
        Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .ctx("SIGHUP B")?;
        let log = self.b.log.clone();
        wait_until(
            STEP_TIMEOUT,
            || count(&log, "event=reload.done") > reloads,
            "B reloading its configuration",
        )?;
        self.report.step("B got partners prs and nvi (NP_ORG_OIN, NP_SOURCE_ID, the stand-ins' CA in its trust bundle) and reloaded on SIGHUP");

        let out = self.np(&["nvi", "register", "--bsn", MITZ_BSN])?;
        self.report.step(&format!(
            "np-agent nvi register --bsn <the demo patient> (B published the patient's record before the services were configured): {}",
            out.trim()
        ));
        wait_until(
            STEP_TIMEOUT,
            || !services.held().is_empty(),
            "the registration at the NVI",
        )?;
        let held = services.held();
        let Some(referral) = held.first() else {
            return fail("the NVI holds no referral");
        };
        if held.len() != 1 || referral.ura != B_URA {
            return fail(format!("the NVI holds {held:?}"));
        }
        let prs_saw: usize = services.requests_to(Service::Prs).len();
        self.report.step(&format!(
            "B blinded the patient's identifier, got a token (bound to its certificate) and POST /oprf/eval at the PRS ({prs_saw} request: a blinded point, no BSN), and POSTed a FHIR List with the PRS's JWE and its blind factor to the NVI, which decrypted and unblinded it: one referral, URA {}, source {}",
            referral.ura, referral.source_id
        ));

        let out = self.np(&["nvi", "localize", "--bsn", MITZ_BSN, "--json"])?;
        let found: Value = serde_json::from_str(&out).ctx("nvi localize output")?;
        let ours = found
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["ura"] == B_URA);
        if !ours {
            return fail(format!("nvi localize printed {out}"));
        }
        let derived = services.pseudonyms();
        let same = derived.len() == 2 && derived[0].0 == derived[1].0;
        if !same {
            return fail("the NVI derived different pseudonyms for one patient");
        }
        self.report.step(&format!(
            "np-agent nvi localize --bsn <the demo patient> asked the NVI under a fresh blind: the NVI unblinded it to the same pseudonym and answered B's URA {B_URA}"
        ));
        Ok(())
    }

    /// `np-agent <args> --env-file <B's>`: its standard output.
    fn np(&self, args: &[&str]) -> Result<String, DemoError> {
        let exe = std::env::current_exe().ctx("locate np-agent")?;
        let o = Command::new(exe)
            .args(args)
            .arg("--env-file")
            .arg(self.b.dir.join("np-agent.env"))
            .output()
            .ctx("run np-agent")?;
        if !o.status.success() {
            return fail(format!(
                "np-agent {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

/// The stand-ins with a certificate from a CA of their own, accepting
/// clients of the demo CA (B's trust bundle); that CA is added to B's trust.
fn start_services(root: &Path, b_dir: &Path) -> Result<StandIns, DemoError> {
    let b_trust = b_dir.join("tls").join("trust.pem");
    let demo_ca = std::fs::read(&b_trust).ctx("read B's trust bundle")?;
    let ca = Ca::new("np-agent demo localisation CA (throwaway)").ctx("create the services' CA")?;
    let leaf = ca
        .issue(&LeafSpec::localhost("gf.demo.invalid"))
        .ctx("issue the services' certificate")?;
    let files =
        write_files(&root.join("tls"), &leaf, &[&ca]).ctx("write the services' certificate")?;
    let peers = root.join("tls").join("clients.pem");
    durable::write_atomic(&peers, &demo_ca).ctx("write the services' client trust")?;
    let material = TlsMaterial::load(&TlsFiles {
        trust: peers,
        ..files
    })
    .ctx("load the services' certificate")?;
    let mut trust = demo_ca;
    trust.extend_from_slice(ca.cert_pem().as_bytes());
    durable::write_atomic(&b_trust, &trust).ctx("add the services' CA to B's trust")?;
    StandIns::start(&material).map_err(|e| DemoError(format!("start the services: {e}")))
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}
