//! The installed package, configured the way the README's install steps do it
//! and started the way its unit starts it, without systemd as PID 1: the
//! unit's `ExecStart=` as its `User=`/`Group=` with its `UMask=`, no new
//! privileges and no capabilities (setpriv), a clean environment, a notify
//! socket and a watchdog interval, and stderr standing in for the journal.
//!
//! Run by `.ci/packaging` after `dpkg -i` (needs root and the package):
//!
//! ```sh
//! cargo test --test installed_package -- --ignored --nocapture
//! ```
//!
//! It leaves the configuration in place: the script goes on to check that an
//! upgrade keeps the edited env file, and what remove and purge do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{Party, World, free_ports, key_pem_for};
use np_agent::jose::Alg;
use np_agent::pki::throwaway::{LeafSpec, UziOtherName};
use np_agent::util::percent::encode_form as encode;
use np_agent::util::{random, time::now_unix};
use serde_json::{Value, json};

const UNIT: &str = "/usr/lib/systemd/system/np-agent.service";
const OUR_URA: &str = "12345678";
const PARTNER_URA: &str = "87654321";
const BSN: &str = "999999151";
const RUN_DIR: &str = "/run/np-agent-smoke";

/// The value of `Key=` in the unit (the last one wins, as in systemd).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("{UNIT} has no {key}="))
        .trim()
        .to_string()
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `setpriv` as the unit's user, with no new privileges and no capabilities.
fn as_service(user: &str, group: &str, umask: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={user}"),
        &format!("--regid={group}"),
        "--init-groups",
        "--no-new-privs",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
        "/bin/sh",
        "-c",
        &format!("umask {umask} && exec \"$@\""),
        "sh",
    ]);
    c.args(argv);
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/var/lib/np-agent")
        .env("USER", user)
        .env("LOGNAME", user);
    c
}

fn write_file(path: &Path, text: &str, mode: u32, owner: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let (code, out) = run(Command::new("chown").arg(owner).arg(path));
    assert_eq!(code, 0, "chown {owner} {}: {out}", path.display());
}

/// Sets `key=value` in the env file the way an administrator edits it:
/// uncomment the shipped line when there is one, else append.
fn set_keys(env_file: &str, settings: &[(String, String)]) -> String {
    let mut lines: Vec<String> = env_file.lines().map(String::from).collect();
    for (k, v) in settings {
        let commented = format!("#{k}=");
        match lines.iter().position(|l| l.starts_with(&commented)) {
            Some(i) => lines[i] = format!("{k}={v}"),
            None => lines.push(format!("{k}={v}")),
        }
    }
    lines.join("\n") + "\n"
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
#[ignore = "needs root and the installed package; run by .ci/packaging"]
fn installed_package_serves_a_token_as_the_service_user() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let exec = unit_value(&unit, "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let env_path = argv
        .iter()
        .position(|a| *a == "--env-file")
        .map(|i| argv[i + 1])
        .expect("ExecStart names --env-file");
    let (user, group, umask) = (
        unit_value(&unit, "User"),
        unit_value(&unit, "Group"),
        unit_value(&unit, "UMask"),
    );
    let service_owner = format!("{user}:{group}");

    // Key material beside the env file, as the README's install steps do it.
    let tmp = TempDir::new("installed");
    let world = World::new();
    let etc = Path::new(env_path).parent().unwrap().to_path_buf();
    // 20 days left: the daemon must log the expiry warning, doctor a WARN.
    let ours = world
        .ca
        .issue(&LeafSpec {
            uzi: Some(UziOtherName::server(OUR_URA, "12345678")),
            not_after: now_unix() + 20 * 86_400,
            ..LeafSpec::localhost("localhost")
        })
        .unwrap();
    let file = |name: &str| etc.join(name);
    write_file(&file("tls.crt"), &ours.chain_pem, 0o644, "root:root");
    write_file(&file("trust.pem"), &world.ca.cert_pem(), 0o644, "root:root");
    write_file(&file("tls.key"), &ours.key_pem, 0o600, &service_owner);
    write_file(
        &file("signing.pem"),
        &key_pem_for(Alg::Es256),
        0o600,
        &service_owner,
    );

    // A partner with its own certificate and a JWKS published over mTLS.
    let party = Party::new(&world, tmp.path(), "vip", PARTNER_URA, &[Alg::Es256]);
    let jwks = party.serve_jwks();

    let [port, admin_port] = free_ports();
    let public = format!("https://localhost:{port}");
    let path_of = |name: &str| file(name).display().to_string();
    let settings: Vec<(String, String)> = [
        ("NP_PUBLIC_URL", public.clone()),
        ("NP_TLS_CERT", path_of("tls.crt")),
        ("NP_TLS_KEY", path_of("tls.key")),
        ("NP_TLS_TRUST", path_of("trust.pem")),
        ("NP_SIGNING_KEY", path_of("signing.pem")),
        ("NP_SIGNING_ALG", "ES256".into()),
        ("NP_ORG_URA", OUR_URA.into()),
        ("NP_LISTEN", format!("127.0.0.1:{port}")),
        ("NP_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
        ("NP_PARTNERS", "vip".into()),
        ("NP_PARTNER_VIP_FHIR_BASE", format!("{}/fhir", jwks.base())),
        ("NP_PARTNER_VIP_JWKS_URL", format!("{}/jwks", jwks.base())),
        ("NP_PARTNER_VIP_ISSUER", jwks.base()),
        ("NP_PARTNER_VIP_CLIENT_ID", "vip-client".into()),
        ("NP_PARTNER_VIP_ORG", format!("ura:{PARTNER_URA}")),
        ("NP_PARTNER_VIP_CERT", format!("ura:{PARTNER_URA}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let shipped = std::fs::read_to_string(env_path).unwrap();
    // Rewrite in place: the conffile keeps its inode, owner and mode.
    std::fs::write(env_path, set_keys(&shipped, &settings)).unwrap();
    let meta = std::fs::metadata(env_path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "{env_path} mode");

    // check-config as the service user.
    let (code, out) = run(&mut as_service(
        &user,
        &group,
        &umask,
        &["/usr/bin/np-agent", "check-config", "--env-file", env_path],
    ));
    assert_eq!(code, 0, "check-config as {user}: {out}");

    // doctor as root: nothing fails; partner reached, JWKS fetched.
    let (code, out) =
        run(Command::new("/usr/bin/np-agent").args(["doctor", "--env-file", env_path]));
    println!("--- np-agent doctor\n{out}---");
    assert_eq!(code, 0, "doctor: {out}");
    for needle in [
        "WARN expiry: our certificate",
        "OK   tls.chain",
        "OK   signing",
        "OK   folder.state",
        "OK   file (NP_TLS_KEY)",
        "OK   partner.vip.tls",
        "OK   partner.vip.discovery",
        "OK   partner.vip.jwks",
    ] {
        assert!(out.contains(needle), "no {needle:?} in doctor output");
    }

    // Start it as the unit does.
    std::fs::create_dir_all(RUN_DIR).unwrap();
    std::fs::set_permissions(RUN_DIR, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock_path = PathBuf::from(RUN_DIR).join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log_path = PathBuf::from(RUN_DIR).join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let log_meta = log.metadata().unwrap();
    let mut cmd = as_service(&user, &group, &umask, &argv);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env(
            "JOURNAL_STREAM",
            format!("{}:{}", log_meta.dev(), log_meta.ino()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("np-agent exited ({status}):\n{}", read_log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no READY=1 and WATCHDOG=1 within 60 s (got {seen:?}):\n{}",
            read_log()
        );
    }
    println!(
        "READY=1 after {} ms; notifications {seen:?}",
        started.elapsed().as_millis()
    );

    // Running as the service user, with no capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let uid = std::fs::metadata("/var/lib/np-agent").unwrap().uid();
    assert_eq!(field("Uid:")[0], uid.to_string(), "{status}");
    assert_eq!(field("CapEff:"), vec!["0000000000000000"]);
    assert_eq!(field("CapBnd:"), vec!["0000000000000000"]);
    assert_eq!(field("NoNewPrivs:"), vec!["1"]);

    // Admin endpoint.
    let ready = http_get(admin_port, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // The partner gets a token.
    let endpoint = format!("{public}/oauth/token");
    let now = now_unix();
    let client_claims = json!({
        "iss": jwks.base(), "sub": "vip-client", "aud": endpoint,
        "iat": now, "exp": now + 60, "jti": random::uuid_v4().unwrap(),
    });
    let authz_claims = json!({
        "iss": jwks.base(),
        "sub": format!("urn:oid:2.16.528.1.1007.3.3.{PARTNER_URA}"),
        "authorizer": format!("urn:oid:2.16.528.1.1007.3.3.{OUR_URA}"),
        "patient": format!("urn:oid:2.16.840.1.113883.2.4.6.3.{BSN}"),
        "aud": endpoint, "iat": now, "exp": now + 60, "jti": random::uuid_v4().unwrap(),
    });
    let key = party.key(Alg::Es256);
    let sign = |c: &Value| key.sign_jwt(c.to_string().as_bytes()).unwrap();
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
        ),
        ("assertion", sign(&authz_claims)),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
        ),
        ("client_assertion", sign(&client_claims)),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let resp = party
        .client()
        .post(&endpoint)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form.as_bytes())
        .unwrap();
    let status_code = resp.status().as_u16();
    let body: Value = serde_json::from_slice(&resp.into_body().read_to_vec().unwrap()).unwrap();
    assert_eq!(status_code, 200, "token: {body}\n{}", read_log());
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    // Idle memory.
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or_default()
        .trim();
    println!("idle RSS after one token: {rss}");

    // SIGHUP reloads; SIGTERM stops cleanly.
    let kill = |sig: &str| {
        let (code, out) = run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string()));
        assert_eq!(code, 0, "kill -{sig}: {out}");
    };
    kill("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read_log().contains("event=reload.done") {
        assert!(Instant::now() < deadline, "no reload.done:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    kill("TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}:\n{}", read_log());

    // Journal-style lines: priority prefix, no timestamp, logfmt.
    let text = read_log();
    let startup = text
        .lines()
        .find(|l| l.contains("event=startup "))
        .unwrap_or_else(|| panic!("no startup line:\n{text}"));
    println!("{startup}");
    assert!(
        startup.starts_with("<6>level=info event=startup version="),
        "{startup}"
    );
    for field in [
        "config=",
        "listen=",
        "admin=",
        "partners=vip",
        "cert_days_left=",
    ] {
        assert!(startup.contains(field), "{field} missing: {startup}");
    }
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    assert!(text.contains("<4>level=warn event=cert.expiring"), "{text}");
    let _ = std::fs::remove_dir_all(RUN_DIR);
}
