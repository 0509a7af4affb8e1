//! `NP_PARTNER_<NAME>_ALLOW_FROM`: the source addresses a partner's
//! certificate is accepted from, as a list of CIDR prefixes.
//!
//! Parsing is strict: `a.b.c.d/n` (n ≤ 32), an IPv6 prefix `x::y/n`
//! (n ≤ 128), or a single address (a host prefix). The address of a prefix
//! must have no bits set past the prefix (`10.0.0.1/8` is a typo, not a
//! network), the length is plain decimal, and zone ids, leading zeros and
//! white space inside an entry are refused. [`AllowFrom::allows`] is the one
//! check; an IPv4 peer seen by a dual-stack listener as `::ffff:a.b.c.d`
//! matches IPv4 prefixes as the IPv4 address it is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most prefixes one partner may list.
pub const MAX_PREFIXES: usize = 64;

/// Where a partner may connect from; the default (unset) is anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowFrom {
    /// `None`: any address; otherwise at least one prefix.
    prefixes: Option<Vec<Cidr>>,
}

/// One CIDR prefix, its address masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl AllowFrom {
    /// Any address: the partner's certificate is the whole check.
    pub fn any() -> AllowFrom {
        AllowFrom::default()
    }

    /// Parses a comma-separated list of prefixes (white space around each
    /// entry is ignored). An empty list is an error: unset the key for "any".
    pub fn parse(text: &str) -> Result<AllowFrom, String> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        if entries.iter().all(|e| e.is_empty()) {
            return Err(
                "must list at least one CIDR prefix (unset it to allow any address)".into(),
            );
        }
        if entries.len() > MAX_PREFIXES {
            return Err(format!(
                "lists {} prefixes, at most {MAX_PREFIXES}",
                entries.len()
            ));
        }
        let prefixes = entries
            .iter()
            .map(|e| Cidr::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowFrom {
            prefixes: Some(prefixes),
        })
    }

    /// True when a connection from `peer` may use the partner's certificate.
    pub fn allows(&self, peer: IpAddr) -> bool {
        match &self.prefixes {
            None => true,
            Some(list) => list.iter().any(|c| c.contains(peer)),
        }
    }

    /// True when no prefix is configured (any address).
    pub fn is_any(&self) -> bool {
        self.prefixes.is_none()
    }
}

impl fmt::Display for AllowFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.prefixes {
            None => f.write_str("any"),
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

impl Cidr {
    /// One prefix or address, strictly (see the module doc).
    pub fn parse(entry: &str) -> Result<Cidr, String> {
        let shown = || format!("{entry:?}");
        if entry.is_empty() {
            return Err("has an empty entry".into());
        }
        let (addr_text, len_text) = match entry.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (entry, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{} is not an IPv4 or IPv6 address or prefix", shown()))?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let len = match len_text {
            None => max,
            Some(l) => {
                let plain = !l.is_empty()
                    && l.len() <= 3
                    && l.bytes().all(|b| b.is_ascii_digit())
                    && (l == "0" || !l.starts_with('0'));
                match l.parse::<u8>() {
                    Ok(n) if plain && n <= max => n,
                    _ => {
                        return Err(format!(
                            "{}: the prefix length must be a number from 0 to {max}",
                            shown()
                        ));
                    }
                }
            }
        };
        let cidr = Cidr { addr, len };
        if cidr.masked() != addr {
            return Err(format!(
                "{} has address bits set past /{len} (did you mean {}?)",
                shown(),
                Cidr {
                    addr: cidr.masked(),
                    len
                }
            ));
        }
        Ok(cidr)
    }

    /// True when `peer` is inside this prefix; an IPv4 address and its
    /// IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are the same peer.
    pub fn contains(&self, peer: IpAddr) -> bool {
        match (self.addr, peer) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => v4_in(net, self.len, ip),
            (IpAddr::V4(net), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| v4_in(net, self.len, ip)),
            (IpAddr::V6(net), IpAddr::V6(ip)) => v6_in(net, self.len, ip),
            (IpAddr::V6(net), IpAddr::V4(ip)) => v6_in(net, self.len, ip.to_ipv6_mapped()),
        }
    }

    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(self.len))),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn v4_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn v6_mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

fn v4_in(net: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    u32::from(ip) & v4_mask(len) == u32::from(net)
}

fn v6_in(net: Ipv6Addr, len: u8, ip: Ipv6Addr) -> bool {
    u128::from(ip) & v6_mask(len) == u128::from(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn allows(list: &str, peer: &str) -> bool {
        AllowFrom::parse(list).unwrap().allows(ip(peer))
    }

    #[test]
    fn unset_allows_any_address() {
        let any = AllowFrom::any();
        assert!(any.is_any());
        for peer in [
            "127.0.0.1",
            "10.1.2.3",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(any.allows(ip(peer)), "{peer}");
        }
        assert_eq!(any.to_string(), "any");
    }

    #[test]
    fn ipv4_prefixes() {
        // Zorgviewer's published egress addresses.
        let zv = "20.160.170.124/31";
        assert!(allows(zv, "20.160.170.124"));
        assert!(allows(zv, "20.160.170.125"));
        assert!(!allows(zv, "20.160.170.123"));
        assert!(!allows(zv, "20.160.170.126"));
        assert!(allows("10.0.0.0/8", "10.255.255.255"));
        assert!(!allows("10.0.0.0/8", "11.0.0.0"));
        assert!(!allows("10.0.0.0/8", "127.0.0.1"));
        assert!(allows("127.0.0.0/8", "127.0.0.1"));
        // /32 and a bare address: exactly one host.
        assert!(allows("192.0.2.7/32", "192.0.2.7"));
        assert!(!allows("192.0.2.7/32", "192.0.2.6"));
        assert!(allows("192.0.2.7", "192.0.2.7"));
        assert!(!allows("192.0.2.7", "192.0.2.8"));
        // /0: every IPv4 address, and no IPv6 one that is not IPv4-mapped.
        assert!(allows("0.0.0.0/0", "203.0.113.9"));
        assert!(allows("0.0.0.0/0", "::ffff:203.0.113.9"));
        assert!(!allows("0.0.0.0/0", "2001:db8::1"));
        // A list: any entry may match.
        assert!(allows("10.0.0.0/8, 192.168.1.0/24", "192.168.1.200"));
        assert!(!allows("10.0.0.0/8, 192.168.1.0/24", "192.168.2.1"));
    }

    #[test]
    fn ipv6_prefixes() {
        assert!(allows("2001:db8::/32", "2001:db8:ffff::1"));
        assert!(!allows("2001:db8::/32", "2001:db9::1"));
        assert!(allows("2001:db8::1/128", "2001:db8::1"));
        assert!(!allows("2001:db8::1/128", "2001:db8::2"));
        assert!(allows("::1", "::1"));
        assert!(!allows("::1", "127.0.0.1"));
        assert!(allows("::/0", "2001:db8::1"));
        // An IPv4 peer is also its mapped IPv6 form.
        assert!(allows("::/0", "127.0.0.1"));
        assert!(allows("::ffff:10.0.0.0/104", "10.9.8.7"));
        assert!(!allows("::ffff:10.0.0.0/104", "11.9.8.7"));
        assert!(!allows("2001:db8::/32", "10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_prefixes() {
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        assert!(allows("127.0.0.0/8", "::ffff:127.0.0.1"));
        assert!(!allows("10.0.0.0/8", "::ffff:127.0.0.1"));
        assert!(allows("20.160.170.124/31", "::ffff:20.160.170.125"));
        assert!(!allows("20.160.170.124/31", "::ffff:20.160.170.126"));
        // The deprecated IPv4-compatible form ::a.b.c.d is not IPv4.
        assert!(!allows("127.0.0.0/8", "::127.0.0.1"));
    }

    #[test]
    fn bad_input_is_refused_naming_the_entry() {
        for (text, why) in [
            ("", "must list at least one CIDR prefix"),
            (" , ", "must list at least one CIDR prefix"),
            ("10.0.0.0/8,", "has an empty entry"),
            ("10.0.0.0/8,,127.0.0.1", "has an empty entry"),
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\": the prefix length must be a number from 0 to 32",
            ),
            (
                "2001:db8::/129",
                "the prefix length must be a number from 0 to 128",
            ),
            ("10.0.0.0/", "the prefix length must be a number"),
            ("10.0.0.0/08", "the prefix length must be a number"),
            ("10.0.0.0/+8", "the prefix length must be a number"),
            ("10.0.0.0/-1", "the prefix length must be a number"),
            ("10.0.0.0/8/8", "the prefix length must be a number"),
            ("10.0.0.0/ 8", "the prefix length must be a number"),
            (
                "10.0.0.0 /8",
                "\"10.0.0.0 /8\" is not an IPv4 or IPv6 address",
            ),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" has address bits set past /8 (did you mean 10.0.0.0/8?)",
            ),
            (
                "2001:db8::1/32",
                "has address bits set past /32 (did you mean 2001:db8::/32?)",
            ),
            ("010.0.0.0/8", "is not an IPv4 or IPv6 address"),
            ("10.0.0/8", "is not an IPv4 or IPv6 address"),
            ("10.0.0.256", "is not an IPv4 or IPv6 address"),
            ("fe80::1%eth0", "is not an IPv4 or IPv6 address"),
            ("[::1]/128", "is not an IPv4 or IPv6 address"),
            ("localhost", "is not an IPv4 or IPv6 address"),
            ("any", "is not an IPv4 or IPv6 address"),
            ("*", "is not an IPv4 or IPv6 address"),
        ] {
            let e = AllowFrom::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let many = vec!["10.0.0.0/8"; MAX_PREFIXES + 1].join(",");
        assert_eq!(
            AllowFrom::parse(&many).unwrap_err(),
            format!(
                "lists {} prefixes, at most {MAX_PREFIXES}",
                MAX_PREFIXES + 1
            )
        );
        assert!(AllowFrom::parse(&vec!["10.0.0.0/8"; MAX_PREFIXES].join(",")).is_ok());
    }

    #[test]
    fn prefixes_display_as_parsed() {
        let a = AllowFrom::parse(" 20.160.170.124/31 ,2001:db8::/32, 192.0.2.1").unwrap();
        assert!(!a.is_any());
        assert_eq!(
            a.to_string(),
            "20.160.170.124/31,2001:db8::/32,192.0.2.1/32"
        );
        assert_eq!(AllowFrom::parse(&a.to_string()).unwrap(), a);
    }
}
