//! The command line as an operator meets it: help and version everywhere,
//! configuration problems named one per line with exit 78, a key that does
//! not match its certificate refusing start-up, keygen and jwks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::TempDir;
use common::agent::{AgentSetup, World};

fn np(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_np-agent"))
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_on_every_command() {
    let version = format!("np-agent {}", env!("CARGO_PKG_VERSION"));
    let o = np(&["--version"]);
    assert_eq!(
        (o.status.code(), text(&o).0.trim()),
        (Some(0), version.as_str())
    );
    let o = np(&["--help"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    for c in np_agent::cli::COMMANDS {
        assert!(out.contains(c.name), "{out}");
        for flag in ["--help", "-h"] {
            let o = np(&[c.name, flag]);
            assert_eq!(o.status.code(), Some(0), "{} {flag}", c.name);
            assert!(text(&o).0.starts_with(&format!("usage: {}", c.usage)));
        }
        let o = np(&[c.name, "--version"]);
        assert_eq!(text(&o).0.trim(), version);
    }
    let o = np(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).1.contains("unknown command \"frobnicate\""));
    let o = np(&["run", "--bogus"]);
    assert_eq!(o.status.code(), Some(64));
    let o = np(&[]);
    assert_eq!(o.status.code(), Some(64));
}

#[test]
fn check_config_names_every_problem_and_exits_78() {
    let tmp = TempDir::new("cli-config");
    let env = tmp.join("np-agent.env");
    let key = tmp.join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(
        &env,
        format!(
            "# a broken configuration\nNP_LISTN=0.0.0.0:8443\nNP_PUBLIC_URL=http://np.example\nNP_TLS_KEY={}\n\
             NP_MAX_BODY=lots\nNP_PARTNERS=b\nNP_PARTNER_B_KIND=nuts\n",
            key.display()
        ),
    )
    .unwrap();
    let o = np(&["check-config", "--env-file", env.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    for needle in [
        "NP_LISTN: unknown key (did you mean NP_LISTEN?) (line 2)",
        "NP_PUBLIC_URL: \"http://np.example\" must start with https:// (line 3)",
        "NP_TLS_KEY: private key",
        "chmod 600",
        "NP_MAX_BODY: \"lots\" does not start with a number (line 5)",
        "NP_PARTNER_B_KIND: \"nuts\" must be twiin, mitz, zorgviewer, prs or nvi (line 7)",
        "NP_TLS_CERT: required but not set",
        "NP_TLS_TRUST: required but not set",
        "NP_SIGNING_KEY: required but not set",
        "NP_ORG_URA: required but not set",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // An unknown kind is the partner's one problem: which keys it needs
    // follows from its kind.
    assert!(!err.contains("NP_PARTNER_B_CERT"), "{err}");
    // One problem a line, each naming its key.
    for line in err.lines() {
        assert!(line.starts_with("config error: NP_"), "{line}");
    }
    // `run` refuses the same file with 78 and says why on stderr.
    let o = np(&["run", "--env-file", env.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        text(&o)
            .1
            .contains("event=startup.failed reason=configuration")
    );
    // A missing env file is a configuration error too.
    let o = np(&["check-config", "--env-file", "/nonexistent/np-agent.env"]);
    assert_eq!(o.status.code(), Some(78));
}

#[test]
fn a_valid_configuration_passes_and_a_mismatched_key_refuses_to_start() {
    let tmp = TempDir::new("cli-valid");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup.env.write(&setup.env_file());
    let env = setup.env_file();
    let o = np(&["check-config", "--env-file", env.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.starts_with("configuration OK"), "{out}");

    // jwks prints our public key set: parseable, public only.
    let o = np(&["jwks", "--env-file", env.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let jwks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert!(key.get("d").is_none(), "private part published");

    // Swap in the key of another certificate: start-up refuses with 78.
    let other = world.uzi_leaf("other", "11111111");
    let key_path = std::path::PathBuf::from(&setup.env.vars["NP_TLS_KEY"]);
    np_agent::util::durable::write_atomic(&key_path, other.key_pem.as_bytes()).unwrap();
    let o = np(&["check-config", "--env-file", env.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    assert!(text(&o).1.contains("NP_TLS_KEY:"), "{}", text(&o).1);
    let o = np(&["run", "--env-file", env.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("event=startup.failed exit=78") && err.contains("NP_TLS_KEY"),
        "{err}"
    );
}

#[test]
fn keygen_writes_a_private_pkcs8_key_and_never_overwrites() {
    let tmp = TempDir::new("cli-keygen");
    for alg in ["PS256", "ES256", "ES384", "ES512"] {
        let out = tmp.join(format!("{alg}.pem"));
        let o = np(&["keygen", "--alg", alg, "--out", out.to_str().unwrap()]);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{alg}: {stderr}");
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let pem = std::fs::read_to_string(&out).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let alg_v = np_agent::jose::Alg::from_name(alg).unwrap();
        let key = np_agent::jose::SigningKey::from_pkcs8_pem(&pem, alg_v, None).unwrap();
        assert!(stdout.contains(key.kid()), "{stdout}");
        assert!(!stdout.contains("PRIVATE"), "key material printed");
        let again = np(&["keygen", "--alg", alg, "--out", out.to_str().unwrap()]);
        assert_eq!(again.status.code(), Some(1));
        assert!(text(&again).1.contains("refusing to overwrite"));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), pem, "untouched");
    }
    let o = np(&[
        "keygen",
        "--alg",
        "HS256",
        "--out",
        tmp.join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(64));
    let o = np(&["keygen", "--alg", "ES256"]);
    assert_eq!(o.status.code(), Some(64));
}

/// On a fresh install the daemon has never run: no state folder, or an
/// empty one. `status` reports an empty spool (all six counts 0, exit 0)
/// and creates nothing.
#[test]
fn status_on_a_fresh_install_reports_zeros_and_creates_nothing() {
    let tmp = TempDir::new("cli-status-fresh");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    let env = setup.env_file();
    setup.env.write(&env);
    let env = env.to_str().unwrap();
    let state = setup.dir.join("state");
    let zeros = r#"{"queued":0,"in_flight":0,"retry":0,"done":0,"dead":0,"oldest_age_s":0}"#;
    let plain = "queued      0\nin flight   0\nretry       0\ndelivered   0\ndead        0\noldest      0 s";
    for (what, empty_state_folder) in [("no state folder", false), ("empty state folder", true)] {
        if empty_state_folder {
            std::fs::create_dir(&state).unwrap();
        }
        assert_eq!(state.exists(), empty_state_folder, "{what}");
        let o = np(&["status", "--env-file", env, "--json"]);
        assert_eq!(
            (o.status.code(), text(&o).0.trim()),
            (Some(0), zeros),
            "{what}: {}",
            text(&o).1
        );
        let o = np(&["status", "--env-file", env]);
        assert_eq!(
            (o.status.code(), text(&o).0.trim()),
            (Some(0), plain),
            "{what}: {}",
            text(&o).1
        );
        assert_eq!(
            state.exists(),
            empty_state_folder,
            "{what}: status created it"
        );
        if empty_state_folder {
            let inside: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
            assert!(inside.is_empty(), "{what}: status wrote {inside:?}");
        }
    }
}

#[test]
fn status_and_retry_dead_report_and_requeue_spool_work() {
    let tmp = TempDir::new("cli-status");
    let world = World::new();
    let setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    let agent = setup.start();
    assert!(agent.stop().success());
    let env = setup.env_file();
    let o = np(&["status", "--env-file", env.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    assert_eq!(
        text(&o).0.trim(),
        r#"{"queued":0,"in_flight":0,"retry":0,"done":0,"dead":0,"oldest_age_s":0}"#
    );
    // A dead item, as the daemon leaves one after giving up.
    let dead = setup.dir.join("state/spool/dead/notify-1.json");
    let now = np_agent::util::time::now_unix();
    let item = serde_json::json!({"id": "notify-1", "kind": "notify", "partner": "hospb",
        "created_at": now - 100, "attempts": 9, "not_before": now, "last_error": "gave up", "body": {}});
    std::fs::write(&dead, item.to_string()).unwrap();
    let o = np(&["status", "--env-file", env.to_str().unwrap()]);
    assert!(text(&o).0.contains("dead        1"), "{}", text(&o).0);
    let o = np(&[
        "retry-dead",
        "--env-file",
        env.to_str().unwrap(),
        "--partner",
        "nobody",
    ]);
    assert_eq!(o.status.code(), Some(64));
    let o = np(&["retry-dead", "--env-file", env.to_str().unwrap()]);
    assert_eq!(
        (o.status.code(), text(&o).0.trim()),
        (Some(0), "requeued 1 item(s)")
    );
    let o = np(&["status", "--env-file", env.to_str().unwrap(), "--json"]);
    let counts: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (counts["queued"].as_i64(), counts["dead"].as_i64()),
        (Some(1), Some(0))
    );
    assert!(counts["oldest_age_s"].as_i64().unwrap() >= 100);
}
