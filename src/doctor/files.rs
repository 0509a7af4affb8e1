//! Files and folders `doctor` checks: the env file, the certificate, trust
//! and key files, and the outbox, inbox and state folders — each with the
//! owner and mode the service user needs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// The env file: readable by the service user, not by others.
pub(super) fn env_file_check(path: &Path, owner: &Owner) -> Check {
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

/// A certificate or trust file the service user must be able to read.
pub(super) fn readable_check(key: &str, path: &Path, owner: &Owner) -> Check {
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
pub(super) fn key_owner_check(key: &str, path: &Path, owner: &Owner) -> Check {
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
pub(super) fn folder_check(name: &str, key: &str, path: &Path, mode: u32, owner: &Owner) -> Check {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

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
