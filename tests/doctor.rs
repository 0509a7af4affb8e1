//! `np-agent doctor` against real files and a real partner on loopback: all
//! OK when everything is right; a FAIL with the exact fix when a key file is
//! group-readable, when a partner is down, and when a partner does not trust
//! us. The owner checks run against the user running the test (the packaged
//! service user is checked by tests/installed_package.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::TempDir;
use common::agent::{AgentSetup, Party, World, free_port};
use np_agent::config::Source;
use np_agent::doctor::{Check, Context, Owner, Status, diagnose};
use np_agent::jose::Alg;

fn context() -> Context {
    Context {
        owner: Owner::current(),
        ..Context::system()
    }
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

fn folders(setup: &mut AgentSetup) {
    for (key, dir, mode) in [
        ("NP_OUTBOX", "outbox", 0o2770),
        ("NP_INBOX", "inbox", 0o2770),
        ("NP_STATE_DIR", "state", 0o700),
    ] {
        let path = setup.dir.join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        setup.env.set(key, path.display().to_string());
    }
}

#[test]
fn doctor_reports_ok_and_names_the_fix_for_each_failure() {
    let tmp = TempDir::new("doctor");
    let world = World::new();
    let vip = Party::new(&world, tmp.path(), "vip", "87654321", &[Alg::Es256]);
    let jwks = vip.serve_jwks();
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.add_partner(&vip, &jwks);
    folders(&mut setup);
    let env = setup.env_file();
    setup.env.write(&env);
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o640)).unwrap();
    let source = Source::File(env.clone());

    let checks = diagnose(&source, &context());
    let text: Vec<String> = checks.iter().map(|c| c.to_string()).collect();
    let failed: Vec<&String> = text.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "{text:#?}");
    for name in [
        "config",
        "tls.key",
        "tls.chain",
        "signing",
        "folder.outbox",
        "folder.state",
        "partner.vip.tls",
        "partner.vip.discovery",
        "partner.vip.jwks",
    ] {
        assert_eq!(find(&checks, name).status, Status::Ok, "{text:#?}");
    }
    // Every line: status, name, message; every non-OK line a fix.
    for c in &checks {
        assert!(c.status == Status::Ok || c.fix.is_some(), "{c}");
    }

    // The binary prints the same lines and exits 0.
    let out = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["doctor", "--env-file"])
        .arg(&env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK   partner.vip.jwks: "), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("doctor: "),
        "{stdout}"
    );

    // A partner that is down: FAIL naming the address and what to check.
    let dead = free_port();
    setup.env.set(
        "NP_PARTNER_VIP_FHIR_BASE",
        format!("https://localhost:{dead}/fhir"),
    );
    setup.env.write(&env);
    let checks = diagnose(&source, &context());
    let tls = find(&checks, "partner.vip.tls");
    assert_eq!(tls.status, Status::Fail, "{tls}");
    assert!(tls.message.contains(&format!("localhost:{dead}")), "{tls}");
    assert!(
        tls.fix
            .as_deref()
            .unwrap()
            .contains("NP_PARTNER_VIP_FHIR_BASE"),
        "{tls}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(["doctor", "--env-file"])
        .arg(&env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // A partner whose CA we do not trust (and who does not trust ours).
    let foreign = World {
        ca: np_agent::pki::throwaway::Ca::new("stranger ca").unwrap(),
        foreign: np_agent::pki::throwaway::Ca::new("unused ca").unwrap(),
    };
    let stranger = Party::new(&foreign, tmp.path(), "stranger", "11223344", &[Alg::Es256]);
    let stranger_jwks = stranger.serve_jwks();
    setup.env.set(
        "NP_PARTNER_VIP_FHIR_BASE",
        format!("{}/fhir", stranger_jwks.base()),
    );
    setup.env.write(&env);
    let checks = diagnose(&source, &context());
    let tls = find(&checks, "partner.vip.tls");
    assert_eq!(tls.status, Status::Fail, "{tls}");
    assert!(tls.message.contains("unknown_ca"), "{tls}");
    assert!(
        tls.fix
            .as_deref()
            .unwrap()
            .starts_with("add partner vip's root and intermediate CA"),
        "{tls}"
    );

    // A group-readable signing key: the configuration refuses it, with chmod.
    let key = setup.dir.join("signing.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let checks = diagnose(&source, &context());
    let c = checks
        .iter()
        .find(|c| c.status == Status::Fail && c.message.starts_with("NP_SIGNING_KEY"))
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert_eq!(
        c.fix.as_deref(),
        Some(format!("chmod 600 {}", key.display()).as_str())
    );
}
