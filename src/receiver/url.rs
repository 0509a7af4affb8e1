//! URL rules of the pull (spec §8.2, §8.3), sans-IO: building request URLs
//! from verbatim Task values, and deciding whether a `next` link may be
//! followed.

/// `value` with every byte that may not appear in a URL (RFC 3986) written as
/// `%XX`: controls, space, `"#<>[\]^`{|}` and non-ASCII. Everything else,
/// including `%` (existing encodings, even broken ones) is kept as it is.
pub fn encode_illegal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if is_url_byte(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True when a `%` is not followed by two hex digits (spec §8.2 mentions a
/// real `%hl7.org`): sent as received, but worth a warning.
pub fn has_broken_percent(value: &str) -> bool {
    let b = value.as_bytes();
    b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// `<base>/<relative>` with illegal characters encoded; `base` may end in `/`.
pub fn join(base: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        encode_illegal(relative)
    )
}

/// The parts of an absolute `http(s)` URL that decide where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Lower case.
    pub scheme: String,
    /// Lower case; IPv6 literals keep their brackets.
    pub host: String,
    /// Explicit, or the scheme's default.
    pub port: u16,
    /// The path without query or fragment; no trailing `/`.
    pub path: String,
}

/// Splits an absolute `http`/`https` URL. `None` for anything else, and for
/// URLs with user info (`user@host`), an empty host, a bad port, or
/// characters that have no place in a URL.
pub fn parse_absolute(url: &str) -> Option<Origin> {
    if url.bytes().any(|b| !is_url_byte(b) && b != b'#') {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (format!("[{}]", inner.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, "")) => (h.to_ascii_lowercase(), default_port),
            Some((h, p)) => (h.to_ascii_lowercase(), p.parse().ok()?),
            None => (authority.to_ascii_lowercase(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return None;
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    Some(Origin {
        scheme,
        host,
        port,
        path: path.trim_end_matches('/').to_string(),
    })
}

/// Whether a `next` link may be followed (spec §8.3): an absolute URL with
/// the same scheme, host and port as the configured base, whose path is the
/// base path or below it, without `.`/`..`/empty segments (also
/// percent-encoded) or an encoded `/` or `\` that could step outside.
pub fn same_base(base: &str, link: &str) -> bool {
    let (Some(b), Some(l)) = (parse_absolute(base), parse_absolute(link)) else {
        return false;
    };
    if b.scheme != l.scheme || b.host != l.host || b.port != l.port {
        return false;
    }
    let below = l.path == b.path
        || l.path
            .strip_prefix(&b.path)
            .is_some_and(|rest| rest.starts_with('/'));
    if !below {
        return false;
    }
    let lower = l.path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    l.path.split('/').skip(1).all(|seg| {
        let d = seg.to_ascii_lowercase().replace("%2e", ".");
        !seg.is_empty() && d != "." && d != ".."
    })
}

/// RFC 3986 characters allowed in a URL outside a fragment: path characters
/// and `?`.
fn is_url_byte(b: u8) -> bool {
    is_path_byte(b) || b == b'?'
}

/// URL path characters (RFC 3986 pchar and `/`), with `%` for encodings.
pub(crate) fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'%'
        )
}

/// Seconds to wait from a `Retry-After` value (delta-seconds or an
/// IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`), at `now`.
pub fn retry_after_secs(value: &str, now: i64) -> Option<u64> {
    let v = value.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    let rest = v.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: u32 = hms.next()?.parse().ok()?;
    let minute: u32 = hms.next()?.parse().ok()?;
    let second: u32 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let at = crate::util::time::unix_from_civil(crate::util::time::Civil {
        year,
        month,
        day,
        hour,
        minute,
        second: second.min(59),
    });
    Some(u64::try_from(at - now).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_illegal_characters_are_encoded() {
        assert_eq!(
            encode_illegal("Observation/$lastn?code=http://loinc.org|85354-9"),
            "Observation/$lastn?code=http://loinc.org%7C85354-9"
        );
        assert_eq!(
            encode_illegal("MedicationStatement?category=urn%3Aoid%3A2.16%7C6&_include=x:y"),
            "MedicationStatement?category=urn%3Aoid%3A2.16%7C6&_include=x:y"
        );
        assert_eq!(encode_illegal("a b\"c{d}é#"), "a%20b%22c%7Bd%7D%C3%A9%23");
        assert_eq!(
            encode_illegal("Encounter?class=x%hl7.org|IMP"),
            "Encounter?class=x%hl7.org%7CIMP"
        );
        assert_eq!(
            join("https://h/fhir/", "Condition"),
            "https://h/fhir/Condition"
        );
    }

    #[test]
    fn broken_percent_encodings_are_noticed() {
        assert!(has_broken_percent("x%hl7.org"));
        assert!(has_broken_percent("x%7"));
        assert!(!has_broken_percent("x%7Cy%3a"));
    }

    #[test]
    fn next_links_stay_under_the_base() {
        let base = "https://sender.example:8443/fhir/stu3";
        for ok in [
            "https://sender.example:8443/fhir/stu3?_getpages=abc&_offset=10",
            "https://SENDER.example:8443/fhir/stu3/Condition?page=2",
            "HTTPS://sender.example:8443/fhir/stu3/",
        ] {
            assert!(same_base(base, ok), "{ok}");
        }
        assert!(same_base("https://h/fhir", "https://h:443/fhir/x"));
        for bad in [
            "https://other.example:8443/fhir/stu3?page=2",
            "https://sender.example:8444/fhir/stu3?page=2",
            "http://sender.example:8443/fhir/stu3?page=2",
            "https://sender.example:8443/fhir/stu3x?page=2",
            "https://sender.example:8443/fhir?page=2",
            "https://sender.example:8443/fhir/stu3/../admin",
            "https://sender.example:8443/fhir/stu3/%2e%2e/admin",
            "https://sender.example:8443/fhir/stu3//x",
            "https://user@sender.example:8443/fhir/stu3",
            "/fhir/stu3?page=2",
            "Condition?page=2",
            "https://sender.example:8443/fhir/stu3?x=a b",
        ] {
            assert!(!same_base(base, bad), "{bad}");
        }
    }

    #[test]
    fn retry_after_both_forms() {
        assert_eq!(retry_after_secs("120", 0), Some(120));
        assert_eq!(
            retry_after_secs("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777 - 30),
            Some(30)
        );
        assert_eq!(
            retry_after_secs("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777 + 30),
            Some(0)
        );
        assert_eq!(retry_after_secs("soon", 0), None);
        assert_eq!(retry_after_secs("-1", 0), None);
    }
}
