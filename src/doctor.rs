//! `np-agent doctor`: everything `check-config` does, plus the checks an
//! operator would otherwise do by hand — key matches certificate, chain valid
//! against trust and for `NP_PUBLIC_URL`, days to expiry, signing key and
//! `kid`, owners and modes of the env file, key files and folders, and each
//! partner reached over mutual TLS with its discovery document and JWKS.
//!
//! One line per check: `OK`, `WARN` or `FAIL`, and every `FAIL` (and most
//! `WARN`s) says the exact fix. [`diagnose`] does the work and returns the
//! checks; [`run`] prints them. Exit 0 when nothing failed.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection};

use crate::certwatch::{self, CertInfo, Role};
use crate::config::{self, Config, ConfigError, Partner, PartnerKind, Source, TlsVersion};
use crate::http::client::ClientTimeouts;
use crate::http::partners::{PartnerHttp, Partners};
use crate::jose::{self, Jwks};
use crate::oauth::messages::parse_discovery;
use crate::pki::{self, MinVersion, PkiError, TlsFiles, TlsMaterial};
use crate::util::url::{Url, UrlError};

/// The user the packaged service runs as.
pub const SERVICE_USER: &str = "np-agent";
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

/// Who must own the key files and folders: the service user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group the user is in (primary and supplementary).
    pub groups: Vec<u32>,
}

impl Owner {
    /// The service user `np-agent` when it exists (an installed package);
    /// otherwise whoever runs `doctor` (a development or test setup).
    pub fn service_or_self() -> Owner {
        Owner::lookup(SERVICE_USER).unwrap_or_else(Owner::current)
    }

    /// A user from `/etc/passwd` and `/etc/group`.
    pub fn lookup(name: &str) -> Option<Owner> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        let (uid, gid) = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })?;
        let mut groups = vec![gid];
        if let Ok(group) = std::fs::read_to_string("/etc/group") {
            for l in group.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                    if let Ok(g) = f[2].parse() {
                        groups.push(g);
                    }
                }
            }
        }
        Some(Owner {
            name: name.to_string(),
            uid,
            gid,
            groups,
        })
    }

    /// The user running this process (the owner of `/proc/self`).
    pub fn current() -> Owner {
        let (uid, gid) = std::fs::metadata("/proc/self")
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or((0, 0));
        Owner {
            name: uid.to_string(),
            uid,
            gid,
            groups: vec![gid],
        }
    }

    /// `user:group` for chown, by name when this is the service user.
    fn chown_spec(&self) -> String {
        if self.name.parse::<u32>().is_ok() {
            format!("{}:{}", self.uid, self.gid)
        } else {
            format!("{0}:{0}", self.name)
        }
    }

    /// Whether this user may access `meta` with the permission bits `want`
    /// (4 read, 2 write, 1 search/execute), by the classic owner/group/other
    /// rules; root may do anything.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            (mode >> 6) & 7
        } else if self.groups.contains(&meta.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        bits & want == want
    }

    /// The first directory above `path` this user cannot search, if any.
    fn blocked_ancestor(&self, path: &Path) -> Option<PathBuf> {
        let mut dir = path.parent();
        let mut blocked = None;
        while let Some(d) = dir {
            if let Ok(m) = std::fs::metadata(d) {
                if !self.may(&m, 1) {
                    blocked = Some(d.to_path_buf());
                }
            }
            dir = d.parent();
        }
        blocked
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
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let failed = count(Status::Fail);
    println!(
        "doctor: {} OK, {} WARN, {failed} FAIL",
        count(Status::Ok),
        count(Status::Warn)
    );
    if failed == 0 { 0 } else { 1 }
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
        match pki::client_config(&tls, min_version(&cfg)) {
            Ok(client) => {
                let http = Partners::new(client.clone(), ctx.timeouts);
                for p in &cfg.partners {
                    partner_checks(p, &client, &http, ctx, &mut checks);
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

fn source_name(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::Process => "process environment".into(),
    }
}

fn min_version(cfg: &Config) -> MinVersion {
    match cfg.tls_min_version {
        TlsVersion::V12 => MinVersion::Tls12,
        TlsVersion::V13 => MinVersion::Tls13,
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

/// The env file: readable by the service user, not by others.
fn env_file_check(path: &Path, owner: &Owner) -> Check {
    let name = "env-file";
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                name,
                format!("{shown}: cannot read: {e}"),
                format!("install the package's default or create {shown} (see np-agent.env(5))"),
            );
        }
    };
    let modefix = format!("chown root:{0} {shown} && chmod 640 {shown}", owner.name);
    if !owner.may(&meta, 4) {
        return fail(
            name,
            format!(
                "{shown}: the service user {} cannot read it (mode {:04o}, uid {} gid {})",
                owner.name,
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ),
            modefix,
        );
    }
    if let Some(dir) = owner.blocked_ancestor(path) {
        return fail(
            name,
            format!(
                "{shown}: the service user {} cannot reach it: {} is not searchable for it",
                owner.name,
                dir.display()
            ),
            format!(
                "chown root:{} {1} && chmod 750 {1}",
                owner.name,
                dir.display()
            ),
        );
    }
    if meta.mode() & 0o007 != 0 {
        return warn(
            name,
            format!(
                "{shown}: others may read it (mode {:04o})",
                meta.mode() & 0o7777
            ),
            modefix,
        );
    }
    ok(
        name,
        format!(
            "{shown}: mode {:04o}, readable by {}",
            meta.mode() & 0o7777,
            owner.name
        ),
    )
}

/// TLS material: loads, key matches, chain valid for our name against our
/// trust, expiry of every certificate we see and of the CRLs.
fn tls_checks(cfg: &Config, ctx: &Context, checks: &mut Vec<Check>) -> Option<TlsMaterial> {
    let files = TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        trust: cfg.tls_trust.clone(),
        crl_dir: cfg.tls_crl_dir.clone(),
    };
    let tls = match TlsMaterial::load(&files) {
        Ok(t) => t,
        Err(e) => {
            checks.push(fail(
                format!("tls ({})", e.config_key()),
                e.to_string(),
                pki_fix(&e, &files),
            ));
            return None;
        }
    };
    checks.push(ok(
        "tls.key",
        format!(
            "{} matches the first certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
    ));
    checks.push(chain_check(cfg, &tls));
    match certwatch::inventory(&tls) {
        Ok(certs) => checks.extend(expiry_checks(&certs, ctx.now)),
        Err(e) => checks.push(fail(
            "expiry",
            e,
            format!("make {} readable", files.trust.display()),
        )),
    }
    if let (Some(next), Some(dir)) = (tls.crl_next_update, &files.crl_dir) {
        let hours = (next - ctx.now) / 3_600;
        let when = crate::util::time::rfc3339(next);
        if next <= ctx.now {
            checks.push(fail(
                "crl",
                format!("a CRL in {} is past its nextUpdate ({when}): every handshake fails closed", dir.display()),
                format!(
                    "put each CA's current CRL in {} (your CRL download job), then systemctl reload np-agent",
                    dir.display()
                ),
            ));
        } else if hours < 24 {
            checks.push(warn(
                "crl",
                format!("the earliest CRL nextUpdate is in {hours} h ({when})"),
                format!(
                    "check that the CRL download job refreshes {}",
                    dir.display()
                ),
            ));
        } else {
            checks.push(ok(
                "crl",
                format!("{} CRL(s), earliest nextUpdate {when}", tls.crls.len()),
            ));
        }
    }
    Some(tls)
}

fn pki_fix(e: &PkiError, files: &TlsFiles) -> String {
    match e {
        PkiError::KeyPermissions { path, .. } => format!("chmod 600 {}", path.display()),
        PkiError::KeyMismatch { cert, key } => format!(
            "NP_TLS_KEY must be the key of the first certificate in NP_TLS_CERT; compare \
             'openssl x509 -noout -pubkey -in {}' with 'openssl pkey -pubout -in {}' and install the matching pair",
            cert.display(),
            key.display()
        ),
        PkiError::Read { path, .. } => format!(
            "check the path in {} and that {} exists and is readable",
            e.config_key(),
            path.display()
        ),
        _ => format!(
            "replace the file named by {} with a valid PEM file (certificate chain: ours first, \
             then intermediates; key: one unencrypted PKCS#8/PKCS#1/SEC1 key; trust: CA certificates); \
             files: {}, {}, {}",
            e.config_key(),
            files.cert.display(),
            files.key.display(),
            files.trust.display()
        ),
    }
}

/// Our chain against our own trust bundle (and CRLs), as partners will see
/// it: as a server certificate for the host of `NP_PUBLIC_URL`, and as a
/// client certificate.
fn chain_check(cfg: &Config, tls: &TlsMaterial) -> Check {
    let name = "tls.chain";
    let host = match Url::parse(&cfg.public_url) {
        Ok(url) => url.host_bare().to_string(),
        Err(e) => {
            return fail(
                name,
                format!("NP_PUBLIC_URL {:?} {e}", cfg.public_url),
                "correct NP_PUBLIC_URL",
            );
        }
    };
    let (Some(leaf), intermediates) = (tls.chain.first(), tls.chain.get(1..).unwrap_or_default())
    else {
        return fail(name, "no certificate", "put our chain in NP_TLS_CERT");
    };
    let now = UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
        tls.roots.clone(),
        pki::provider(),
    )
    .with_crls(tls.crls.iter().cloned())
    .build()
    .map_err(|e| e.to_string())
    .and_then(|v| {
        let sn = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        v.verify_server_cert(leaf, intermediates, &sn, &[], now)
            .map_err(|e| tls_error_text(&e))
    });
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        tls.roots.clone(),
        pki::provider(),
    )
    .with_crls(tls.crls.iter().cloned())
    .build()
    .map_err(|e| e.to_string())
    .and_then(|v| {
        v.verify_client_cert(leaf, intermediates, now)
            .map_err(|e| tls_error_text(&e))
    });
    let cert = cfg.tls_cert.display();
    let trust = cfg.tls_trust.display();
    match (server, client) {
        (Ok(_), Ok(_)) => ok(
            name,
            format!("{cert} chains to {trust} and is valid for {host} as server and as client"),
        ),
        (Err(e), _) if e.contains("name_mismatch") => fail(
            name,
            format!("{cert} is not valid for {host}, the host of NP_PUBLIC_URL ({e})"),
            format!(
                "use a certificate whose subjectAltName holds {host}, or set NP_PUBLIC_URL to a name it holds"
            ),
        ),
        (Err(e), _) | (Ok(_), Err(e)) if e.contains("unknown_ca") => fail(
            name,
            format!("{cert} does not chain to a CA in {trust} ({e})"),
            format!(
                "append the intermediate CA certificates after ours in {cert}, and the root CA of our \
                 certificate to {trust}; partners need the same root"
            ),
        ),
        (Err(e), _) | (Ok(_), Err(e)) if e.contains("wrong_purpose") => fail(
            name,
            format!("{cert} is not valid for both TLS server and client authentication ({e})"),
            "request a certificate with extendedKeyUsage serverAuth and clientAuth (UZI server certificate)",
        ),
        (Err(e), _) | (Ok(_), Err(e)) => fail(
            name,
            format!("{cert}: {e}"),
            format!("replace the certificate in {cert} with a current one that chains to {trust}"),
        ),
    }
}

fn tls_error_text(e: &rustls::Error) -> String {
    format!("{}: {e}", pki::classify_tls_error(e))
}

/// One line per certificate that expires within 30 days (or has), and one
/// summary line for the rest.
fn expiry_checks(certs: &[CertInfo], now: i64) -> Vec<Check> {
    let mut out = Vec::new();
    for c in certs {
        let days = c.days_left(now);
        let date = crate::util::time::date(c.not_after);
        let what = format!("{} {} in {}", c.role.label(), c.subject, c.file.display());
        let renew = match c.role {
            Role::Ours | Role::Intermediate => format!(
                "renew it: install the new chain in {} and its key in NP_TLS_KEY, then systemctl reload np-agent",
                c.file.display()
            ),
            Role::TrustAnchor => format!(
                "replace it in {} with the CA's current certificate, then systemctl reload np-agent",
                c.file.display()
            ),
            Role::Partner => "ask the partner to renew it".into(),
        };
        if days < 0 {
            let status_fail = c.role != Role::TrustAnchor;
            let msg = format!("{what} expired on {date}");
            out.push(if status_fail {
                fail("expiry", msg, renew)
            } else {
                warn("expiry", msg + ": peers chaining to it are refused", renew)
            });
        } else if days < certwatch::WARN_DAYS {
            out.push(warn(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
                renew,
            ));
        } else if c.role == Role::Ours {
            out.push(ok(
                "expiry",
                format!("{what} expires in {days} days ({date})"),
            ));
        }
    }
    let others: Vec<&CertInfo> = certs
        .iter()
        .filter(|c| c.role != Role::Ours && c.days_left(now) >= certwatch::WARN_DAYS)
        .collect();
    if let Some(first) = others.iter().min_by_key(|c| c.not_after) {
        out.push(ok(
            "expiry",
            format!(
                "{} CA certificate(s) valid for at least {} days; the first to expire is {} in {} days",
                others.len(),
                certwatch::WARN_DAYS,
                first.subject,
                first.days_left(now)
            ),
        ));
    }
    out
}

/// The signing key loads, signs, and verifies against the JWKS we publish
/// under its `kid`.
fn signing_check(cfg: &Config) -> Check {
    let name = "signing";
    let path = cfg.signing_key.display();
    let key = match crate::daemon::load_signing_key(cfg) {
        Ok(k) => k,
        Err(e) => {
            return fail(
                name,
                e,
                format!(
                    "NP_SIGNING_KEY must be an unencrypted PKCS#8 PEM key of type NP_SIGNING_ALG={0}; \
                     make one with 'np-agent keygen --alg {0} --out {1}.new', move it into place, \
                     chown it to np-agent, and give partners the new 'np-agent jwks'",
                    cfg.signing_alg.name(),
                    path
                ),
            );
        }
    };
    let verified = Jwks::new(vec![key.public_jwk()])
        .map_err(|e| e.to_string())
        .and_then(|set| {
            let jwt = key
                .sign_jwt(br#"{"iss":"np-agent doctor"}"#)
                .map_err(|e| e.to_string())?;
            jose::verify_compact(&jwt, &set, &[key.alg()]).map_err(|e| e.to_string())
        });
    match verified {
        Ok(v) if v.kid() == Some(key.kid()) => {
            let thumb = key.public_jwk().thumbprint();
            let kid_note = if key.kid() == thumb {
                "the RFC 7638 thumbprint".to_string()
            } else {
                format!("set by NP_SIGNING_KID; the thumbprint is {thumb}")
            };
            ok(
                name,
                format!(
                    "{path} ({}) signs, and verifies against our JWKS under kid {} ({kid_note})",
                    key.alg().name(),
                    key.kid()
                ),
            )
        }
        Ok(_) => fail(
            name,
            format!("{path}: the signed header does not carry kid {}", key.kid()),
            "report this as a bug in np-agent",
        ),
        Err(e) => fail(
            name,
            format!("{path}: signing and verifying failed: {e}"),
            format!(
                "make a new key with 'np-agent keygen --alg {} --out {path}.new' and move it into place",
                cfg.signing_alg.name()
            ),
        ),
    }
}

/// A certificate or trust file the service user must be able to read.
fn readable_check(key: &str, path: &Path, owner: &Owner) -> Check {
    let name = format!("file ({key})");
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => fail(
            name,
            format!("{shown}: {e}"),
            format!("check the path in {key}"),
        ),
        Ok(m) if !owner.may(&m, 4) => fail(
            name,
            format!("{shown}: the service user {} cannot read it", owner.name),
            format!("chmod 644 {shown}"),
        ),
        Ok(_) => match owner.blocked_ancestor(path) {
            Some(dir) => fail(
                name,
                format!(
                    "{shown}: {} is not searchable for {}",
                    dir.display(),
                    owner.name
                ),
                format!(
                    "chown root:{} {1} && chmod 750 {1}",
                    owner.name,
                    dir.display()
                ),
            ),
            None => ok(name, format!("{shown}: readable by {}", owner.name)),
        },
    }
}

/// A private key file: owned by the service user, mode 0600 or stricter.
fn key_owner_check(key: &str, path: &Path, owner: &Owner) -> Check {
    let name = format!("file ({key})");
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                name,
                format!("{shown}: {e}"),
                format!("check the path in {key}"),
            );
        }
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return fail(
            name,
            format!("key file {shown} is accessible to group or others (mode {mode:04o})"),
            format!("chmod 600 {shown}"),
        );
    }
    if meta.uid() != owner.uid {
        return fail(
            name,
            format!(
                "key file {shown} belongs to uid {}, so the service user {} cannot read it",
                meta.uid(),
                owner.name
            ),
            format!("chown {} {shown}", owner.chown_spec()),
        );
    }
    if let Some(dir) = owner.blocked_ancestor(path) {
        return fail(
            name,
            format!(
                "key file {shown}: {} is not searchable for {}",
                dir.display(),
                owner.name
            ),
            format!(
                "chown root:{} {1} && chmod 750 {1}",
                owner.name,
                dir.display()
            ),
        );
    }
    ok(
        name,
        format!("key file {shown}: mode {mode:04o}, owner {}", owner.name),
    )
}

/// A folder: exists, is a directory, belongs to the service user, which may
/// read, write and search it; others get nothing.
fn folder_check(name: &str, key: &str, path: &Path, mode: u32, owner: &Owner) -> Check {
    let check = format!("folder.{name}");
    let shown = path.display();
    let create = format!(
        "install -d -o {} -g {} -m {mode:o} {shown}",
        owner.name,
        owner.chown_spec().split(':').nth(1).unwrap_or("0")
    );
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(check, format!("{shown} ({key}) does not exist"), create);
        }
        Err(e) => return fail(check, format!("{shown}: {e}"), create),
    };
    if !meta.is_dir() {
        return fail(
            check,
            format!("{shown} ({key}) is not a directory"),
            format!("move it away, then {create}"),
        );
    }
    let have = meta.mode() & 0o7777;
    if meta.uid() != owner.uid {
        return fail(
            check,
            format!(
                "{shown} belongs to uid {}, not to the service user {}",
                meta.uid(),
                owner.name
            ),
            format!("chown {} {shown}", owner.chown_spec()),
        );
    }
    if have & 0o700 != 0o700 {
        return fail(
            check,
            format!("{shown}: the owner lacks read, write or search (mode {have:04o})"),
            format!("chmod u+rwx {shown}"),
        );
    }
    if let Some(dir) = owner.blocked_ancestor(path) {
        return fail(
            check,
            format!(
                "{shown}: {} is not searchable for {}",
                dir.display(),
                owner.name
            ),
            format!(
                "chmod o+x {} (or give {} access)",
                dir.display(),
                owner.name
            ),
        );
    }
    if have & 0o007 != 0 {
        return warn(
            check,
            format!("{shown}: others have access to patient data (mode {have:04o})"),
            format!("chmod o-rwx {shown}"),
        );
    }
    if mode == 0o700 && have & 0o070 != 0 {
        return warn(
            check,
            format!("{shown}: the group has access to the state (mode {have:04o})"),
            format!("chmod 700 {shown}"),
        );
    }
    ok(
        check,
        format!("{shown}: mode {have:04o}, owner {}", owner.name),
    )
}

/// One partner: TLS handshake both ways (their certificate and its expiry,
/// whether they accept ours), then discovery and JWKS where we need them.
fn partner_checks(
    p: &Partner,
    client: &Arc<ClientConfig>,
    http: &Partners,
    ctx: &Context,
    checks: &mut Vec<Check>,
) {
    let upper = p.name.to_ascii_uppercase();
    let base = format!("partner.{}", p.name);
    let key = |f: &str| format!("NP_PARTNER_{upper}_{f}");
    // Where we reach them first: the FHIR base of a Twiin partner, the
    // published keys of a Zorgviewer; a Mitz broker only connects to us.
    let (target, target_key) = match &p.kind {
        PartnerKind::Twiin(t) => (t.fhir_base.clone(), key("FHIR_BASE")),
        PartnerKind::Zorgviewer(z) => match &z.assertions.jwks_url {
            Some(url) => (url.clone(), key("JWKS_URL")),
            None => {
                checks.push(fail(
                    base,
                    "no JWKS_URL: their assertions cannot be verified",
                    format!("set {} to the partner's published JWKS", key("JWKS_URL")),
                ));
                return;
            }
        },
        PartnerKind::Mitz(_) => {
            checks.push(ok(
                base,
                "kind mitz: nothing to reach (the broker connects to us)",
            ));
            return;
        }
    };
    let (host, port) = match host_port(&target) {
        Ok(hp) => hp,
        Err(e) => {
            checks.push(fail(
                format!("{base}.tls"),
                format!("{target:?} {e}"),
                format!(
                    "correct {}, {} or {}",
                    key("FHIR_BASE"),
                    key("TOKEN_URL"),
                    key("JWKS_URL")
                ),
            ));
            return;
        }
    };
    match handshake(client, &host, port, ctx) {
        Ok(certs) => {
            let mut c = ok(
                format!("{base}.tls"),
                format!("{host}:{port}: mutual TLS handshake OK, they accept our certificate"),
            );
            if let Some(info) = certs
                .first()
                .and_then(|d| certwatch::describe(d, Role::Partner, PathBuf::new()).ok())
            {
                let days = info.days_left(ctx.now);
                c.message.push_str(&format!(
                    "; their certificate {} expires in {days} days",
                    info.subject
                ));
                if days < certwatch::WARN_DAYS {
                    c.status = Status::Warn;
                    c.fix = Some(format!(
                        "ask partner {} to renew their certificate before {}",
                        p.name,
                        crate::util::time::date(info.not_after)
                    ));
                }
            }
            checks.push(c);
        }
        Err((label, detail)) => {
            let (message, fix) = transport_fix(&label, &detail, &host, port, &target_key, p);
            checks.push(fail(format!("{base}.tls"), message, fix));
            return;
        }
    }

    let mut discovered_jwks = None;
    let discover = p
        .as_twiin()
        .filter(|t| t.token_url.is_none() || t.assertions.jwks_url.is_none());
    if let Some(twiin) = discover {
        let url = crate::oauth::client::discovery_url(twiin);
        match fetch(http, &p.name, &url) {
            Ok(body) => match parse_discovery(&body) {
                Ok(d) => {
                    checks.push(ok(
                        format!("{base}.discovery"),
                        format!(
                            "{url}: token endpoint {}, jwks_uri {}",
                            d.token_endpoint,
                            d.jwks_uri.as_deref().unwrap_or("(none)")
                        ),
                    ));
                    discovered_jwks = d.jwks_uri;
                }
                Err(e) => checks.push(fail(
                    format!("{base}.discovery"),
                    format!("{url}: {e}"),
                    format!(
                        "ask partner {} to fix their discovery document, or set {} and {}",
                        p.name,
                        key("TOKEN_URL"),
                        key("JWKS_URL")
                    ),
                )),
            },
            Err(e) => checks.push(fail(
                format!("{base}.discovery"),
                format!("{url}: {e}"),
                format!(
                    "check {} with partner {}, or set {} and {}",
                    key("FHIR_BASE"),
                    p.name,
                    key("TOKEN_URL"),
                    key("JWKS_URL")
                ),
            )),
        }
    }

    let configured_jwks = p.assertions().and_then(|a| a.jwks_url.clone());
    let Some(jwks_url) = configured_jwks.or(discovered_jwks) else {
        checks.push(fail(
            format!("{base}.jwks"),
            "no JWKS_URL configured and discovery named no jwks_uri: their assertions cannot be verified",
            format!("set {} to the partner's published JWKS", key("JWKS_URL")),
        ));
        return;
    };
    match fetch(http, &p.name, &jwks_url).and_then(|b| Jwks::parse(&b).map_err(|e| e.to_string())) {
        Ok(set) => checks.push(ok(
            format!("{base}.jwks"),
            format!(
                "{jwks_url}: {} usable key(s), {} skipped",
                set.keys.len(),
                set.skipped
            ),
        )),
        Err(e) => checks.push(fail(
            format!("{base}.jwks"),
            format!("{jwks_url}: {e}"),
            format!(
                "check {} with partner {} (the URL where they publish their signing keys)",
                key("JWKS_URL"),
                p.name
            ),
        )),
    }
}

/// GET over mTLS; anything but 200 is an error naming the status.
fn fetch(http: &Partners, partner: &str, url: &str) -> Result<Vec<u8>, String> {
    let reply = http.get(partner, url, &[("Accept", "application/json")])?;
    if reply.status != 200 {
        return Err(format!("answered HTTP {}", reply.status));
    }
    Ok(reply.body)
}

/// `https://host[:port]/…` → host (an IPv6 address without brackets) and
/// port (443 when absent).
fn host_port(url: &str) -> Result<(String, u16), UrlError> {
    let url = Url::parse(url)?;
    Ok((url.host_bare().to_string(), url.port()))
}

/// A full TLS handshake with our client configuration, then one HTTP
/// request so that a server refusing our certificate (which in TLS 1.3
/// shows only after the handshake) is seen. Returns the partner's chain, or
/// a failure label from [`pki::classify_tls_error`] (`dns`, `connect`,
/// `timeout`, …) with detail.
fn handshake(
    client: &Arc<ClientConfig>,
    host: &str,
    port: u16,
    ctx: &Context,
) -> Result<Vec<CertificateDer<'static>>, (String, String)> {
    let err = |label: &str, e: &dyn fmt::Display| (label.to_string(), e.to_string());
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| err("dns", &e))?
        .next()
        .ok_or_else(|| err("dns", &"no address"))?;
    let mut sock = TcpStream::connect_timeout(&addr, ctx.timeouts.connect).map_err(|e| {
        let label = match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::ConnectionRefused => "refused",
            _ => "connect",
        };
        err(label, &e)
    })?;
    let io_timeout = Some(ctx.timeouts.connect * 2);
    sock.set_read_timeout(io_timeout)
        .and_then(|()| sock.set_write_timeout(io_timeout))
        .map_err(|e| err("io", &e))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| err("dns", &e))?;
    let mut conn = ClientConnection::new(client.clone(), name).map_err(|e| err("other", &e))?;
    let io_err = |e: std::io::Error| (pki::classify_io_error(&e).to_string(), e.to_string());
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(io_err)?;
    }
    let certs = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let request = format!(
        "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: np-agent-doctor\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).map_err(io_err)?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(_) => Ok(certs),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(certs),
        Err(e) => Err(io_err(e)),
    }
}

/// The message and exact fix for a failed partner connection.
fn transport_fix(
    label: &str,
    detail: &str,
    host: &str,
    port: u16,
    base_key: &str,
    p: &Partner,
) -> (String, String) {
    let at = format!("{host}:{port}");
    let partner = &p.name;
    let (what, fix) = match label {
        "dns" => (
            format!("cannot resolve {host}"),
            format!("check the host in {base_key} and DNS on this server: getent hosts {host}"),
        ),
        "refused" => (
            format!("{at} refused the connection"),
            format!("check the port in {base_key} with partner {partner}; is their service up?"),
        ),
        "timeout" => (
            format!("no answer from {at}"),
            format!("allow outgoing TCP from this server to {at} in the firewall or proxy"),
        ),
        "unknown_ca" => (
            format!("{at}: their certificate does not chain to NP_TLS_TRUST"),
            format!("add partner {partner}'s root and intermediate CA certificates to NP_TLS_TRUST, then systemctl reload np-agent"),
        ),
        "bad_cert" => (
            format!("{at}: their certificate does not verify against NP_TLS_TRUST"),
            format!("replace partner {partner}'s CA certificates in NP_TLS_TRUST with their current ones (a CA of the same name but another key is there), then systemctl reload np-agent"),
        ),
        "name_mismatch" => (
            format!("{at}: their certificate is not valid for {host}"),
            format!("check the host name in {base_key} with partner {partner}"),
        ),
        "expired" | "not_yet_valid" => (
            format!("{at}: their certificate is outside its validity period"),
            format!("ask partner {partner} to renew their certificate (and check this server's clock)"),
        ),
        "revoked" => (
            format!("{at}: their certificate is revoked"),
            format!("ask partner {partner} for their new certificate"),
        ),
        "revocation_unknown" | "crl_expired" | "crl_invalid" => (
            format!("{at}: no current CRL for their CA in NP_TLS_CRL_DIR"),
            "put the current CRL of the partner's CA in NP_TLS_CRL_DIR, then systemctl reload np-agent".to_string(),
        ),
        "no_client_cert" | "peer_unknown_ca" | "peer_bad_cert" | "peer_revoked" | "peer_expired" => (
            format!("{at} refused our certificate"),
            format!("send partner {partner} our chain (NP_TLS_CERT) and ask them to trust our CA and register our certificate"),
        ),
        "protocol_version" | "peer_protocol_version" => (
            format!("{at}: no common TLS version"),
            "set NP_TLS_MIN_VERSION=1.2 if the partner only speaks TLS 1.2".to_string(),
        ),
        "no_shared_cipher" | "peer_handshake_failure" => (
            format!("{at}: no common cipher suite or group (we offer NCSC \"Goed\" only)"),
            format!("ask partner {partner} to enable TLS 1.3, or ECDHE with AES-GCM for TLS 1.2"),
        ),
        _ => (
            format!("{at}: connection failed"),
            format!("check {base_key} and the network path to {at}"),
        ),
    };
    (format!("{what} ({label}: {detail})"), fix)
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
    fn permission_rules() {
        let dir = std::env::temp_dir().join(format!(
            "np-doctor-{}",
            crate::util::b64::hex(&crate::util::random::bytes::<6>().unwrap())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let me = Owner::current();
        let f = dir.join("k.pem");
        std::fs::write(&f, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = key_owner_check("NP_TLS_KEY", &f, &me);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.fix, Some(format!("chmod 600 {}", f.display())));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_owner_check("NP_TLS_KEY", &f, &me).status, Status::Ok);
        let other = Owner {
            uid: me.uid + 1,
            ..me.clone()
        };
        let c = key_owner_check("NP_TLS_KEY", &f, &other);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().starts_with("chown "));

        let missing = dir.join("outbox");
        let c = folder_check("outbox", "NP_OUTBOX", &missing, 0o2770, &me);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().starts_with("install -d -o "));
        std::fs::create_dir(&missing).unwrap();
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let c = folder_check("outbox", "NP_OUTBOX", &missing, 0o2770, &me);
        assert_eq!(
            (c.status, c.fix),
            (
                Status::Warn,
                Some(format!("chmod o-rwx {}", missing.display()))
            )
        );
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let c = folder_check("outbox", "NP_OUTBOX", &missing, 0o2770, &me);
        assert_eq!(c.status, Status::Ok, "{c}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn expiry_lines() {
        let now = 1_800_000_000;
        let cert = |role, days: i64| CertInfo {
            role,
            subject: "CN=x".into(),
            not_after: now + days * 86_400 + 60,
            file: "/etc/np-agent/tls.crt".into(),
        };
        let checks = expiry_checks(
            &[
                cert(Role::Ours, 20),
                cert(Role::TrustAnchor, -2),
                cert(Role::TrustAnchor, 400),
            ],
            now,
        );
        let statuses: Vec<Status> = checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, vec![Status::Warn, Status::Warn, Status::Ok]);
        assert!(
            checks[0].message.contains("expires in 20 days"),
            "{}",
            checks[0]
        );
        assert!(checks[1].message.contains("expired"), "{}", checks[1]);
        let checks = expiry_checks(&[cert(Role::Ours, -1)], now);
        assert_eq!(checks[0].status, Status::Fail);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("https://fhir.example.nl:8443/fhir"),
            Ok(("fhir.example.nl".into(), 8443))
        );
        assert_eq!(
            host_port("https://fhir.example.nl/fhir"),
            Ok(("fhir.example.nl".into(), 443))
        );
        assert_eq!(host_port("https://[::1]:8443"), Ok(("::1".into(), 8443)));
        assert_eq!(host_port("https://h:99999"), Err(UrlError::Port));
    }
}
