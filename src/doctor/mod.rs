//! `np-agent doctor`: everything `check-config` does, plus the checks an
//! operator would otherwise do by hand — key matches certificate, chain valid
//! against trust and for `NP_PUBLIC_URL`, days to expiry, signing key and
//! `kid`, owners and modes of the env file, key files and folders, and each
//! partner reached over mutual TLS with its discovery document and JWKS.
//!
//! One line per check: `OK`, `WARN` or `FAIL`, and every `FAIL` (and most
//! `WARN`s) says the exact fix. [`diagnose`] does the work and returns the
//! checks; [`run`] prints them. Exit 0 when nothing failed.
//!
//! | file | checks |
//! |---|---|
//! | `mod.rs` | the configuration loads; running the checks, printing, exit code |
//! | `files.rs` | env file, certificate, trust and key files, folders: owner and mode |
//! | `passwd.rs` | the service user's ids and groups from `/etc/passwd` and `/etc/group` |
//! | `tls.rs` | key matches certificate, chain against trust, expiry, CRLs; the handshake probe |
//! | `signing.rs` | the signing key signs and verifies under its `kid` |
//! | `partners.rs` | each partner: mutual TLS, discovery, JWKS |

mod files;
mod partners;
mod passwd;
mod signing;
mod tls;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ConfigError, Source};
use crate::http::client::ClientTimeouts;
use crate::http::partners::Partners;
use crate::pki;

pub use files::{Owner, SERVICE_USER};
use files::{env_file_check, folder_check, key_owner_check, readable_check};
use partners::partner_checks;
use signing::signing_check;
use tls::tls_checks;

/// How long one partner check may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check: what was checked, what was found, and the fix when not OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// Short name of the check, e.g. `tls.key`, `folder.outbox`, `partner.vip.jwks`.
    pub name: String,
    pub message: String,
    /// The exact command or edit that fixes it.
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.status.label(),
            self.name,
            self.message
        )?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

fn ok(name: impl Into<String>, message: impl Into<String>) -> Check {
    Check {
        status: Status::Ok,
        name: name.into(),
        message: message.into(),
        fix: None,
    }
}

fn warn(name: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Warn,
        name: name.into(),
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Fail,
        name: name.into(),
        message: message.into(),
        fix: Some(fix.into()),
    }
}

/// What [`diagnose`] needs besides the configuration.
#[derive(Debug, Clone)]
pub struct Context {
    /// Who must be able to read the key files and own the folders.
    pub owner: Owner,
    /// Unix seconds.
    pub now: i64,
    /// Timeouts of the partner calls.
    pub timeouts: ClientTimeouts,
}

impl Context {
    pub fn system() -> Context {
        Context {
            owner: Owner::service_or_self(),
            now: crate::util::time::now_unix(),
            timeouts: ClientTimeouts {
                connect: CONNECT_TIMEOUT,
                recv_response: Duration::from_secs(15),
                recv_body: Duration::from_secs(15),
                per_io: Duration::from_secs(15),
                global: Duration::from_secs(20),
                ..ClientTimeouts::default()
            },
        }
    }
}

/// `np-agent doctor [--env-file F]`: prints one line per check and returns
/// the exit code (0 when nothing failed).
pub fn run(env_file: Option<PathBuf>) -> i32 {
    let source = match env_file {
        Some(f) => Source::File(f),
        None => Source::Process,
    };
    let checks = diagnose(&source, &Context::system());
    for c in &checks {
        println!("{c}");
    }
    println!("{}", summary(&checks));
    exit_code(&checks)
}

/// Runs every check in order; stops after the configuration checks when the
/// configuration does not load (nothing after them could be trusted).
pub fn diagnose(source: &Source, ctx: &Context) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Source::File(path) = source {
        checks.push(env_file_check(path, &ctx.owner));
    }
    let cfg = match config::load(source) {
        Ok(cfg) => cfg,
        Err(errors) => {
            checks.extend(errors.iter().map(|e| config_failure(e, source)));
            return checks;
        }
    };
    checks.push(ok(
        "config",
        format!(
            "{}: {} partner(s), listening on {}, public URL {}",
            source_name(source),
            cfg.partners.len(),
            cfg.listen,
            cfg.public_url
        ),
    ));
    let tls = tls_checks(&cfg, ctx, &mut checks);
    checks.push(signing_check(&cfg));
    for (key, path) in [
        ("NP_TLS_CERT", &cfg.tls_cert),
        ("NP_TLS_TRUST", &cfg.tls_trust),
    ] {
        checks.push(readable_check(key, path, &ctx.owner));
    }
    for (key, path) in [
        ("NP_TLS_KEY", &cfg.tls_key),
        ("NP_SIGNING_KEY", &cfg.signing_key),
    ] {
        checks.push(key_owner_check(key, path, &ctx.owner));
    }
    for (name, key, path, mode) in [
        ("outbox", "NP_OUTBOX", &cfg.outbox, 0o2770),
        ("inbox", "NP_INBOX", &cfg.inbox, 0o2770),
        ("state", "NP_STATE_DIR", &cfg.state_dir, 0o700),
    ] {
        checks.push(folder_check(name, key, path, mode, &ctx.owner));
    }
    if let Some(tls) = tls {
        match pki::client_config(&tls, cfg.tls_min_version) {
            Ok(client) => {
                let http = Partners::new(client.clone(), ctx.timeouts);
                for p in &cfg.partners {
                    partner_checks(&cfg, p, &client, &http, ctx, &mut checks);
                }
            }
            Err(e) => checks.push(fail(
                "partners",
                format!("cannot build the TLS client: {e}"),
                "correct NP_TLS_CERT and NP_TLS_KEY (see the tls checks above)",
            )),
        }
    }
    checks
}

/// The last line: how many checks ended in each status.
fn summary(checks: &[Check]) -> String {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    format!(
        "doctor: {} OK, {} WARN, {} FAIL",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    )
}

/// 0 when no check failed (warnings do not count), else 1.
fn exit_code(checks: &[Check]) -> i32 {
    if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    }
}

fn source_name(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::Process => "process environment".into(),
    }
}

/// A configuration problem as a FAIL line with its fix.
fn config_failure(e: &ConfigError, source: &Source) -> Check {
    let file = source_name(source);
    let at = e.line.map(|l| format!(" (line {l})")).unwrap_or_default();
    let fix = if let Some(cmd) = e.reason.split("; ").find_map(|part| {
        let p = part.strip_prefix("the key must be private to the service user: ")?;
        Some(p.to_string())
    }) {
        cmd
    } else if e.reason.starts_with("required but not set") {
        format!("set {} in {file} (see np-agent.env(5))", e.key)
    } else if e.reason.starts_with("unknown") {
        format!("remove or rename {} in {file}{at}", e.key)
    } else if e.key == "--env-file" {
        format!(
            "create {} from the packaged default, or name the right file with --env-file",
            e.reason
                .strip_prefix("cannot read ")
                .and_then(|r| r.split(": ").next())
                .unwrap_or("it")
        )
    } else {
        format!("correct {} in {file}{at}", e.key)
    };
    fail("config", e.to_string(), fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_status_name_message_and_fix() {
        let c = fail(
            "file (NP_SIGNING_KEY)",
            "key file /etc/np-agent/signing.pem is accessible to group or others (mode 0640)",
            "chmod 600 /etc/np-agent/signing.pem",
        );
        assert_eq!(
            c.to_string(),
            "FAIL file (NP_SIGNING_KEY): key file /etc/np-agent/signing.pem is accessible to group or others (mode 0640); fix: chmod 600 /etc/np-agent/signing.pem"
        );
        assert_eq!(ok("config", "fine").to_string(), "OK   config: fine");
    }

    #[test]
    fn config_failures_carry_their_fix() {
        let src = Source::File("/etc/np-agent/np-agent.env".into());
        let e = |key: &str, reason: &str| ConfigError {
            key: key.into(),
            reason: reason.into(),
            line: Some(3),
        };
        let c = config_failure(
            &e(
                "NP_TLS_KEY",
                "private key /k: group or others have access (mode 0640); the key must be private to the service user: chmod 600 /k",
            ),
            &src,
        );
        assert_eq!(c.fix.as_deref(), Some("chmod 600 /k"));
        let c = config_failure(&e("NP_ORG_URA", "required but not set"), &src);
        assert_eq!(
            c.fix.as_deref(),
            Some("set NP_ORG_URA in /etc/np-agent/np-agent.env (see np-agent.env(5))")
        );
        let c = config_failure(
            &e("NP_LISTN", "unknown key (did you mean NP_LISTEN?)"),
            &src,
        );
        assert!(c.fix.unwrap().starts_with("remove or rename NP_LISTN"));
    }

    #[test]
    fn warnings_count_but_only_failures_fail() {
        let none: [Check; 0] = [];
        assert_eq!(
            (summary(&none), exit_code(&none)),
            ("doctor: 0 OK, 0 WARN, 0 FAIL".into(), 0)
        );
        let mut checks = vec![
            ok("config", "fine"),
            warn("expiry", "soon", "renew"),
            ok("signing", "fine"),
        ];
        assert_eq!(
            (summary(&checks), exit_code(&checks)),
            ("doctor: 2 OK, 1 WARN, 0 FAIL".into(), 0)
        );
        checks.push(fail("folder.state", "missing", "install -d"));
        assert_eq!(
            (summary(&checks), exit_code(&checks)),
            ("doctor: 2 OK, 1 WARN, 1 FAIL".into(), 1)
        );
    }

    #[test]
    fn config_failures_name_the_file_to_create_or_the_key_to_correct() {
        let src = Source::File("/etc/np-agent/np-agent.env".into());
        let c = config_failure(
            &ConfigError {
                key: "--env-file".into(),
                reason:
                    "cannot read /etc/np-agent/np-agent.env: No such file or directory (os error 2)"
                        .into(),
                line: None,
            },
            &src,
        );
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "create /etc/np-agent/np-agent.env from the packaged default, or name the right file with --env-file"
            )
        );
        let c = config_failure(
            &ConfigError {
                key: "NP_LISTEN".into(),
                reason: "not an address".into(),
                line: Some(7),
            },
            &src,
        );
        assert_eq!(
            c.fix.as_deref(),
            Some("correct NP_LISTEN in /etc/np-agent/np-agent.env (line 7)")
        );
        let c = config_failure(
            &ConfigError {
                key: "NP_ORG_URA".into(),
                reason: "required but not set".into(),
                line: None,
            },
            &Source::Process,
        );
        assert_eq!(
            c.fix.as_deref(),
            Some("set NP_ORG_URA in process environment (see np-agent.env(5))")
        );
    }
}
