//! Files and folders `doctor` checks: the env file, the certificate, trust
//! and key files, and the outbox, inbox and state folders — each with the
//! owner and mode the service user needs.
//!
//! Each `…_check` gathers what the file system says ([`Found`]); the
//! matching `…_verdict` decides on that without I/O, which is where the
//! order of the findings and every message and fix live.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::passwd;
use super::{Check, fail, ok, warn};

/// The user the packaged service runs as.
pub const SERVICE_USER: &str = "np-agent";

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
        let account = passwd::lookup(name)?;
        Some(Owner {
            name: name.to_string(),
            uid: account.uid,
            gid: account.gid,
            groups: account.groups,
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

    /// Whether this user is known by number only (not the service user).
    fn numeric(&self) -> bool {
        self.name.parse::<u32>().is_ok()
    }

    /// The group for chown and install: the service user's own group by
    /// name, else the primary gid.
    fn group_spec(&self) -> String {
        if self.numeric() {
            self.gid.to_string()
        } else {
            self.name.clone()
        }
    }

    /// `user:group` for chown, by name when this is the service user.
    fn chown_spec(&self) -> String {
        if self.numeric() {
            format!("{}:{}", self.uid, self.gid)
        } else {
            format!("{}:{}", self.name, self.group_spec())
        }
    }

    /// Whether this user may access a file of `stat` with the permission
    /// bits `want` (4 read, 2 write, 1 search/execute), by the classic
    /// owner/group/other rules; root may do anything.
    fn may(&self, stat: &Stat, want: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let bits = if stat.uid == self.uid {
            (stat.mode >> 6) & 7
        } else if self.groups.contains(&stat.gid) {
            (stat.mode >> 3) & 7
        } else {
            stat.mode & 7
        };
        bits & want == want
    }

    /// The directory nearest the root above `path` that this user cannot
    /// search, if any; `stat` looks a directory up (`None`: not known, so
    /// not blocking).
    fn blocked_ancestor(
        &self,
        path: &Path,
        stat: impl Fn(&Path) -> Option<Stat>,
    ) -> Option<PathBuf> {
        path.ancestors()
            .skip(1)
            .filter(|dir| stat(dir).is_some_and(|s| !self.may(&s, 1)))
            .last()
            .map(Path::to_path_buf)
    }
}

/// The env file: readable by the service user, not by others.
pub(super) fn env_file_check(path: &Path, owner: &Owner) -> Check {
    env_file_verdict(path, owner, &Found::on_disk(path, owner))
}

/// A certificate or trust file the service user must be able to read.
pub(super) fn readable_check(key: &str, path: &Path, owner: &Owner) -> Check {
    readable_verdict(key, path, owner, &Found::on_disk(path, owner))
}

/// A private key file: owned by the service user, mode 0600 or stricter.
pub(super) fn key_owner_check(key: &str, path: &Path, owner: &Owner) -> Check {
    key_owner_verdict(key, path, owner, &Found::on_disk(path, owner))
}

/// A folder: exists, is a directory, belongs to the service user, which may
/// read, write and search it; others get nothing.
pub(super) fn folder_check(name: &str, key: &str, path: &Path, mode: u32, owner: &Owner) -> Check {
    folder_verdict(name, key, path, mode, owner, &Found::on_disk(path, owner))
}

/// What `stat(2)` says about a path, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Permission bits with set-id and sticky bits (`mode & 0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    is_dir: bool,
}

impl Stat {
    fn of(path: &Path) -> std::io::Result<Stat> {
        let meta = std::fs::metadata(path)?;
        Ok(Stat {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            is_dir: meta.is_dir(),
        })
    }
}

/// A path as the checks find it: its [`Stat`] or why there is none, and the
/// directory above it the owner cannot search.
#[derive(Debug)]
struct Found {
    stat: std::io::Result<Stat>,
    blocked: Option<PathBuf>,
}

impl Found {
    fn on_disk(path: &Path, owner: &Owner) -> Found {
        Found {
            stat: Stat::of(path),
            blocked: owner.blocked_ancestor(path, |dir| Stat::of(dir).ok()),
        }
    }
}

/// Group or others may do anything with it: too open for a private key.
fn open_beyond_owner(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Others (neither the owner nor the group) may do anything with it.
fn open_to_others(mode: u32) -> bool {
    mode & 0o007 != 0
}

/// The group may do anything with it.
fn open_to_group(mode: u32) -> bool {
    mode & 0o070 != 0
}

/// The owner may read, write and search it (a folder the service works in).
fn owner_has_all(mode: u32) -> bool {
    mode & 0o700 == 0o700
}

/// Lets the service user search `dir` (and so reach a file below it)
/// without opening it to others.
fn unblock_fix(owner: &Owner, dir: &Path) -> String {
    format!(
        "chown root:{} {1} && chmod 750 {1}",
        owner.name,
        dir.display()
    )
}

fn env_file_verdict(path: &Path, owner: &Owner, found: &Found) -> Check {
    let name = "env-file";
    let shown = path.display();
    let stat = match &found.stat {
        Ok(s) => s,
        Err(e) => {
            return fail(
                name,
                format!("{shown}: cannot read: {e}"),
                format!("install the package's default or create {shown} (see np-agent.env(5))"),
            );
        }
    };
    let modefix = format!("chown root:{0} {shown} && chmod 640 {shown}", owner.name);
    if !owner.may(stat, 4) {
        return fail(
            name,
            format!(
                "{shown}: the service user {} cannot read it (mode {:04o}, uid {} gid {})",
                owner.name, stat.mode, stat.uid, stat.gid
            ),
            modefix,
        );
    }
    if let Some(dir) = &found.blocked {
        return fail(
            name,
            format!(
                "{shown}: the service user {} cannot reach it: {} is not searchable for it",
                owner.name,
                dir.display()
            ),
            unblock_fix(owner, dir),
        );
    }
    if open_to_others(stat.mode) {
        return warn(
            name,
            format!("{shown}: others may read it (mode {:04o})", stat.mode),
            modefix,
        );
    }
    ok(
        name,
        format!(
            "{shown}: mode {:04o}, readable by {}",
            stat.mode, owner.name
        ),
    )
}

fn readable_verdict(key: &str, path: &Path, owner: &Owner, found: &Found) -> Check {
    let name = format!("file ({key})");
    let shown = path.display();
    match (&found.stat, &found.blocked) {
        (Err(e), _) => fail(
            name,
            format!("{shown}: {e}"),
            format!("check the path in {key}"),
        ),
        (Ok(s), _) if !owner.may(s, 4) => fail(
            name,
            format!("{shown}: the service user {} cannot read it", owner.name),
            format!("chmod 644 {shown}"),
        ),
        (Ok(_), Some(dir)) => fail(
            name,
            format!(
                "{shown}: {} is not searchable for {}",
                dir.display(),
                owner.name
            ),
            unblock_fix(owner, dir),
        ),
        (Ok(_), None) => ok(name, format!("{shown}: readable by {}", owner.name)),
    }
}

fn key_owner_verdict(key: &str, path: &Path, owner: &Owner, found: &Found) -> Check {
    let name = format!("file ({key})");
    let shown = path.display();
    let stat = match &found.stat {
        Ok(s) => s,
        Err(e) => {
            return fail(
                name,
                format!("{shown}: {e}"),
                format!("check the path in {key}"),
            );
        }
    };
    let mode = stat.mode;
    if open_beyond_owner(mode) {
        return fail(
            name,
            format!("key file {shown} is accessible to group or others (mode {mode:04o})"),
            format!("chmod 600 {shown}"),
        );
    }
    if stat.uid != owner.uid {
        return fail(
            name,
            format!(
                "key file {shown} belongs to uid {}, so the service user {} cannot read it",
                stat.uid, owner.name
            ),
            format!("chown {} {shown}", owner.chown_spec()),
        );
    }
    if let Some(dir) = &found.blocked {
        return fail(
            name,
            format!(
                "key file {shown}: {} is not searchable for {}",
                dir.display(),
                owner.name
            ),
            unblock_fix(owner, dir),
        );
    }
    ok(
        name,
        format!("key file {shown}: mode {mode:04o}, owner {}", owner.name),
    )
}

fn folder_verdict(
    name: &str,
    key: &str,
    path: &Path,
    mode: u32,
    owner: &Owner,
    found: &Found,
) -> Check {
    let check = format!("folder.{name}");
    let shown = path.display();
    let create = format!(
        "install -d -o {} -g {} -m {mode:o} {shown}",
        owner.name,
        owner.group_spec()
    );
    let stat = match &found.stat {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(check, format!("{shown} ({key}) does not exist"), create);
        }
        Err(e) => return fail(check, format!("{shown}: {e}"), create),
    };
    if !stat.is_dir {
        return fail(
            check,
            format!("{shown} ({key}) is not a directory"),
            format!("move it away, then {create}"),
        );
    }
    let have = stat.mode;
    if stat.uid != owner.uid {
        return fail(
            check,
            format!(
                "{shown} belongs to uid {}, not to the service user {}",
                stat.uid, owner.name
            ),
            format!("chown {} {shown}", owner.chown_spec()),
        );
    }
    if !owner_has_all(have) {
        return fail(
            check,
            format!("{shown}: the owner lacks read, write or search (mode {have:04o})"),
            format!("chmod u+rwx {shown}"),
        );
    }
    if let Some(dir) = &found.blocked {
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
    if open_to_others(have) {
        return warn(
            check,
            format!("{shown}: others have access to patient data (mode {have:04o})"),
            format!("chmod o-rwx {shown}"),
        );
    }
    if mode == 0o700 && open_to_group(have) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn svc() -> Owner {
        Owner {
            name: "np-agent".into(),
            uid: 991,
            gid: 992,
            groups: vec![992, 110],
        }
    }

    fn file(mode: u32, uid: u32, gid: u32) -> Stat {
        Stat {
            mode,
            uid,
            gid,
            is_dir: false,
        }
    }

    fn dir(mode: u32, uid: u32, gid: u32) -> Stat {
        Stat {
            is_dir: true,
            ..file(mode, uid, gid)
        }
    }

    fn found(stat: Stat) -> Found {
        Found {
            stat: Ok(stat),
            blocked: None,
        }
    }

    fn missing() -> Found {
        Found {
            stat: Err(std::io::ErrorKind::NotFound.into()),
            blocked: None,
        }
    }

    fn blocked(stat: Stat, dir: &str) -> Found {
        Found {
            stat: Ok(stat),
            blocked: Some(PathBuf::from(dir)),
        }
    }

    #[test]
    fn access_by_owner_then_group_then_others() {
        let me = svc();
        // (mode, file uid, file gid, want, allowed)
        let rows = [
            (0o600, 991, 0, 4, true),
            (0o600, 991, 0, 6, true),
            (0o600, 991, 0, 1, false),
            (0o060, 991, 992, 4, false), // the owner bits decide for the owner
            (0o640, 0, 992, 4, true),    // primary group
            (0o640, 0, 110, 4, true),    // supplementary group
            (0o640, 0, 111, 4, false),
            (0o604, 0, 992, 4, false), // the group bits decide for a member
            (0o604, 0, 111, 4, true),
            (0o711, 0, 0, 1, true),
            (0o710, 0, 0, 1, false),
            (0o2770, 991, 992, 7, true),
        ];
        for (mode, uid, gid, want, allowed) in rows {
            assert_eq!(
                me.may(&file(mode, uid, gid), want),
                allowed,
                "{mode:04o} {uid}:{gid} want {want}"
            );
        }
        let root = Owner { uid: 0, ..svc() };
        assert!(root.may(&file(0o000, 5, 5), 7), "root may do anything");
    }

    #[test]
    fn the_blocked_directory_nearest_the_root_is_named() {
        let me = svc();
        let tree = |d: &Path| match d.to_str()? {
            "/" => Some(dir(0o755, 0, 0)),
            "/etc" => Some(dir(0o755, 0, 0)),
            "/etc/np-agent" => Some(dir(0o750, 0, 0)),
            "/etc/np-agent/tls" => Some(dir(0o710, 0, 0)),
            _ => None,
        };
        assert_eq!(
            me.blocked_ancestor(Path::new("/etc/np-agent/tls/key.pem"), tree),
            Some(PathBuf::from("/etc/np-agent"))
        );
        assert_eq!(
            me.blocked_ancestor(Path::new("/etc/np-agent/tls/key.pem"), |d| {
                tree(d).map(|s| Stat { gid: 992, ..s })
            }),
            None,
            "the group may search them all"
        );
        assert_eq!(
            me.blocked_ancestor(Path::new("/unknown/key.pem"), tree),
            None,
            "a directory that cannot be looked up is not named"
        );
        assert_eq!(me.blocked_ancestor(Path::new("key.pem"), tree), None);
    }

    #[test]
    fn modes_too_open() {
        assert!(!open_beyond_owner(0o600) && !open_beyond_owner(0o400));
        assert!(open_beyond_owner(0o640) && open_beyond_owner(0o601));
        assert!(!open_to_others(0o2770) && open_to_others(0o2771));
        assert!(!open_to_group(0o700) && open_to_group(0o710));
        assert!(owner_has_all(0o700) && !owner_has_all(0o600) && !owner_has_all(0o500));
    }

    #[test]
    fn chown_by_name_for_the_service_user_by_number_otherwise() {
        assert_eq!(svc().chown_spec(), "np-agent:np-agent");
        assert_eq!(svc().group_spec(), "np-agent");
        let anyone = Owner {
            name: "1000".into(),
            uid: 1000,
            gid: 1001,
            groups: vec![1001],
        };
        assert_eq!(anyone.chown_spec(), "1000:1001");
        assert_eq!(anyone.group_spec(), "1001");
    }

    #[test]
    fn env_file_verdicts() {
        let me = svc();
        let p = Path::new("/etc/np-agent/np-agent.env");
        let fix = "chown root:np-agent /etc/np-agent/np-agent.env && chmod 640 /etc/np-agent/np-agent.env";
        let c = env_file_verdict(p, &me, &found(file(0o640, 0, 992)));
        assert_eq!(
            c.to_string(),
            "OK   env-file: /etc/np-agent/np-agent.env: mode 0640, readable by np-agent"
        );
        let c = env_file_verdict(p, &me, &found(file(0o640, 0, 0)));
        assert_eq!(
            (c.status, c.message.as_str(), c.fix.as_deref()),
            (
                Status::Fail,
                "/etc/np-agent/np-agent.env: the service user np-agent cannot read it (mode 0640, uid 0 gid 0)",
                Some(fix)
            )
        );
        let c = env_file_verdict(p, &me, &found(file(0o644, 0, 0)));
        assert_eq!((c.status, c.fix.as_deref()), (Status::Warn, Some(fix)));
        assert!(c.message.ends_with("others may read it (mode 0644)"), "{c}");
        let c = env_file_verdict(p, &me, &blocked(file(0o644, 0, 992), "/etc"));
        assert_eq!(c.status, Status::Fail, "unreachable before too open");
        assert_eq!(
            c.fix.as_deref(),
            Some("chown root:np-agent /etc && chmod 750 /etc")
        );
        let c = env_file_verdict(p, &me, &missing());
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.fix
                .unwrap()
                .starts_with("install the package's default or create ")
        );
    }

    #[test]
    fn readable_verdicts() {
        let me = svc();
        let p = Path::new("/etc/np-agent/trust.pem");
        let check = |f: &Found| {
            let c = readable_verdict("NP_TLS_TRUST", p, &me, f);
            assert_eq!(c.name, "file (NP_TLS_TRUST)");
            (c.status, c.fix)
        };
        assert_eq!(check(&found(file(0o644, 0, 0))), (Status::Ok, None));
        assert_eq!(
            check(&found(file(0o640, 0, 0))),
            (
                Status::Fail,
                Some("chmod 644 /etc/np-agent/trust.pem".into())
            )
        );
        assert_eq!(
            check(&blocked(file(0o644, 0, 0), "/etc/np-agent")),
            (
                Status::Fail,
                Some("chown root:np-agent /etc/np-agent && chmod 750 /etc/np-agent".into())
            )
        );
        assert_eq!(
            check(&missing()),
            (Status::Fail, Some("check the path in NP_TLS_TRUST".into()))
        );
    }

    #[test]
    fn key_file_verdicts_in_order() {
        let me = svc();
        let p = Path::new("/etc/np-agent/tls.key");
        let check = |f: &Found| {
            let c = key_owner_verdict("NP_TLS_KEY", p, &me, f);
            (c.status, c.fix)
        };
        assert_eq!(check(&found(file(0o600, 991, 992))), (Status::Ok, None));
        assert_eq!(check(&found(file(0o400, 991, 992))), (Status::Ok, None));
        // Too open is named before the wrong owner.
        assert_eq!(
            check(&found(file(0o640, 0, 992))),
            (Status::Fail, Some("chmod 600 /etc/np-agent/tls.key".into()))
        );
        assert_eq!(
            check(&found(file(0o600, 0, 0))),
            (
                Status::Fail,
                Some("chown np-agent:np-agent /etc/np-agent/tls.key".into())
            )
        );
        assert_eq!(
            check(&blocked(file(0o600, 991, 992), "/etc/np-agent")),
            (
                Status::Fail,
                Some("chown root:np-agent /etc/np-agent && chmod 750 /etc/np-agent".into())
            )
        );
        assert_eq!(check(&missing()).0, Status::Fail);
    }

    #[test]
    fn folder_verdicts_in_order() {
        let me = svc();
        let p = Path::new("/var/lib/np-agent/outbox");
        let outbox = |f: &Found| {
            let c = folder_verdict("outbox", "NP_OUTBOX", p, 0o2770, &me, f);
            assert_eq!(c.name, "folder.outbox");
            (c.status, c.fix.unwrap_or_default())
        };
        let create = "install -d -o np-agent -g np-agent -m 2770 /var/lib/np-agent/outbox";
        assert_eq!(
            outbox(&found(dir(0o2770, 991, 992))),
            (Status::Ok, String::new())
        );
        assert_eq!(outbox(&missing()), (Status::Fail, create.to_string()));
        assert_eq!(
            outbox(&found(file(0o2770, 991, 992))),
            (Status::Fail, format!("move it away, then {create}"))
        );
        assert_eq!(
            outbox(&found(dir(0o2777, 0, 0))),
            (
                Status::Fail,
                "chown np-agent:np-agent /var/lib/np-agent/outbox".into()
            ),
            "the owner is named before the mode"
        );
        assert_eq!(
            outbox(&found(dir(0o2570, 991, 992))),
            (Status::Fail, "chmod u+rwx /var/lib/np-agent/outbox".into())
        );
        assert_eq!(
            outbox(&blocked(dir(0o2775, 991, 992), "/var/lib/np-agent")),
            (
                Status::Fail,
                "chmod o+x /var/lib/np-agent (or give np-agent access)".into()
            )
        );
        assert_eq!(
            outbox(&found(dir(0o2775, 991, 992))),
            (Status::Warn, "chmod o-rwx /var/lib/np-agent/outbox".into())
        );
        // The group may use the outbox; only the state is private.
        let state = |f: &Found| {
            let c = folder_verdict("state", "NP_STATE_DIR", p, 0o700, &me, f);
            (c.status, c.fix.unwrap_or_default())
        };
        assert_eq!(
            state(&found(dir(0o750, 991, 992))),
            (Status::Warn, "chmod 700 /var/lib/np-agent/outbox".into())
        );
        assert_eq!(state(&found(dir(0o700, 991, 992))).0, Status::Ok);
        let c = folder_verdict("outbox", "NP_OUTBOX", p, 0o2770, &me, &missing());
        assert_eq!(
            c.message,
            "/var/lib/np-agent/outbox (NP_OUTBOX) does not exist"
        );
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
}
