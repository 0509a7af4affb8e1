//! A user's ids and groups, read from `/etc/passwd` and `/etc/group`.
//!
//! Our own reader, because nothing in the dependency tree resolves a user
//! name: std has no user database, `libc::getpwnam` needs `unsafe` (which
//! this crate forbids), and rustix leaves users to the C library. The
//! packaged service user is a local system user that systemd-sysusers
//! writes to these two files, so reading them finds it; a user known only
//! through other NSS sources (LDAP, systemd-userdb) is not found, and
//! `doctor` then checks for whoever runs it.

/// A user's numeric identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Account {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// The primary group first, then every group that lists the user.
    pub groups: Vec<u32>,
}

/// `name` from `/etc/passwd` and its groups from `/etc/group`; `None` when
/// the passwd file cannot be read or does not hold the user. An unreadable
/// group file leaves the primary group only.
pub(super) fn lookup(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let group = std::fs::read_to_string("/etc/group").ok();
    account(&passwd, group.as_deref(), name)
}

/// `name`'s account from the text of a passwd file and, when there is one,
/// a group file.
pub(super) fn account(passwd: &str, group: Option<&str>, name: &str) -> Option<Account> {
    let (uid, gid) = find_user(passwd, name)?;
    let mut groups = vec![gid];
    groups.extend(group.map(|g| member_of(g, name)).unwrap_or_default());
    Some(Account { uid, gid, groups })
}

/// Uid and primary gid of the first passwd line for `name`
/// (`name:password:uid:gid:…`) whose ids are numbers.
fn find_user(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[..] {
            [user, _, uid, gid, ..] if user == name => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// The gids of the group lines (`group:password:gid:member,member`) that
/// list `name` as a member.
fn member_of(group: &str, name: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields[..] {
                [_, _, gid, members, ..]
                    if members.split(',').any(|m| !m.is_empty() && m == name) =>
                {
                    gid.parse().ok()
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
np-agent-old:x:990:990::/nonexistent:/usr/sbin/nologin
np-agent:x:bad:991::/var/lib/np-agent:/usr/sbin/nologin
np-agent:x:991:992:np-agent edge agent:/var/lib/np-agent:/usr/sbin/nologin
short:x:5
";

    const GROUP: &str = "\
root:x:0:
np-agent:x:992:
ssl-cert:x:110:postgres,np-agent
adm:x:4:syslog,np-agent-old
broken:x:zz:np-agent
audit:x:120:np-agent
";

    #[test]
    fn the_first_numeric_line_for_the_exact_name() {
        assert_eq!(find_user(PASSWD, "np-agent"), Some((991, 992)));
        assert_eq!(find_user(PASSWD, "np-agent-old"), Some((990, 990)));
        assert_eq!(find_user(PASSWD, "root"), Some((0, 0)));
        assert_eq!(find_user(PASSWD, "np"), None, "a prefix is not the name");
        assert_eq!(find_user(PASSWD, "short"), None, "too few fields");
        assert_eq!(find_user(PASSWD, ""), None);
        assert_eq!(find_user("", "root"), None);
    }

    #[test]
    fn groups_that_list_the_user_by_its_exact_name() {
        assert_eq!(member_of(GROUP, "np-agent"), vec![110, 120]);
        assert_eq!(member_of(GROUP, "np-agent-old"), vec![4]);
        assert_eq!(member_of(GROUP, "postgres"), vec![110]);
        assert_eq!(member_of(GROUP, "nobody"), Vec::<u32>::new());
        // An empty member list names no one, not the empty name.
        assert_eq!(member_of(GROUP, ""), Vec::<u32>::new());
    }

    #[test]
    fn an_account_has_its_primary_group_first() {
        assert_eq!(
            account(PASSWD, Some(GROUP), "np-agent"),
            Some(Account {
                uid: 991,
                gid: 992,
                groups: vec![992, 110, 120],
            })
        );
        assert_eq!(
            account(PASSWD, None, "np-agent").map(|a| a.groups),
            Some(vec![992])
        );
        assert_eq!(account(PASSWD, Some(GROUP), "nobody"), None);
    }

    #[test]
    fn root_is_in_this_machines_passwd() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.groups.first()), (0, Some(&root.gid)));
    }
}
