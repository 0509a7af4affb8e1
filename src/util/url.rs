//! Absolute `http`/`https` URLs, parsed one way for every caller: the
//! configured public and partner URLs, discovered endpoints, `next` links,
//! the doctor's probes and the absolute-form request-target. Also joining a
//! base and a relative value received verbatim, and deciding whether a URL
//! stays under a base.
//!
//! A URL is `scheme://host[:port][path][?query]`:
//! - scheme `http` or `https` in any case (kept in lower case); a caller
//!   that needs `https` says so ([`Url::parse_https`]);
//! - host a DNS name (letters, digits and `-` in dot-separated labels; kept
//!   in lower case), a dotted-decimal IPv4 address, or a bracketed IPv6
//!   address (kept in its canonical form). A name whose last label is a
//!   number must be an IPv4 address: `2130706433`, `0x7f.1`, `1.2.3` and
//!   `010.0.0.1` are refused, never read as addresses;
//! - a port, when written, from 1 to 65535;
//! - a path of URL path characters whose escapes are valid, without empty
//!   (`//`), `.` or `..` segments (also encoded, `%2e%2E`) and without an
//!   escape standing for `/`, `\` or a control character, so no segment can
//!   address another path; one trailing `/` is allowed;
//! - a query of URL characters, kept as written: its escapes are not
//!   checked, because a query received verbatim goes out as received.
//!
//! User information (`user@`), a fragment (`#`), white space, control and
//! non-ASCII characters, and URLs longer than [`MAX_LEN`] are refused.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::percent;

/// Longest URL we parse.
pub const MAX_LEN: usize = 16 * 1024;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed absolute URL; see the module documentation for what passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: Scheme,
    /// Lower case; an IPv6 address canonical and in brackets.
    host: String,
    /// As written.
    port: Option<u16>,
    /// Empty or starting with `/`.
    path: String,
    query: Option<String>,
}

/// Why a text is not a URL we accept. Its `Display` completes a sentence
/// that starts with the URL: `"http://x" must start with https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    TooLong,
    NotAbsolute,
    Scheme,
    NotHttps,
    BadCharacter,
    Fragment,
    UserInfo,
    Host,
    Port,
    Path(PathError),
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    BadCharacter,
    BadEscape,
    EncodedSeparator,
    EncodedControl,
    EmptySegment,
    DotSegment,
}

impl PathError {
    /// Completes a sentence about the path's owner: `… has a . or .. path segment`.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::BadCharacter => "has characters not allowed in a URL path",
            PathError::BadEscape => "has a % not followed by two hex digits in its path",
            PathError::EncodedSeparator => "has an encoded / or \\ in its path",
            PathError::EncodedControl => "has an encoded control character in its path",
            PathError::EmptySegment => "has an empty path segment (//)",
            PathError::DotSegment => "has a . or .. path segment",
        }
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::TooLong => write!(f, "is longer than {MAX_LEN} bytes"),
            UrlError::NotAbsolute => f.write_str("is not an absolute URL (scheme://host/…)"),
            UrlError::Scheme => f.write_str("must start with https:// or http://"),
            UrlError::NotHttps => f.write_str("must start with https://"),
            UrlError::BadCharacter => f.write_str(
                "has white space, a control or non-ASCII character, or another character not allowed in a URL",
            ),
            UrlError::Fragment => f.write_str("must not have a fragment (#)"),
            UrlError::UserInfo => f.write_str("must not have user information (user@host)"),
            UrlError::Host => f.write_str("has no valid host"),
            UrlError::Port => f.write_str("has an invalid port (1 to 65535)"),
            UrlError::Path(p) => f.write_str(p.reason()),
        }
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Parses an absolute `http` or `https` URL.
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        if text.len() > MAX_LEN {
            return Err(UrlError::TooLong);
        }
        let (scheme, rest) = text.split_once("://").ok_or(UrlError::NotAbsolute)?;
        let scheme = if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else {
            return Err(UrlError::Scheme);
        };
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError::BadCharacter);
        }
        if text.contains('#') {
            return Err(UrlError::Fragment);
        }
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = parse_authority(authority)?;
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        check_path(path, PathForm::Absolute).map_err(UrlError::Path)?;
        if query.is_some_and(|q| !q.bytes().all(percent::is_url_byte)) {
            return Err(UrlError::BadCharacter);
        }
        Ok(Url {
            scheme,
            host,
            port,
            path: path.to_string(),
            query: query.map(str::to_string),
        })
    }

    /// Parses an absolute `https` URL.
    pub fn parse_https(text: &str) -> Result<Url, UrlError> {
        let url = Url::parse(text).map_err(|e| match e {
            UrlError::Scheme | UrlError::NotAbsolute => UrlError::NotHttps,
            e => e,
        })?;
        if url.scheme != Scheme::Https {
            return Err(UrlError::NotHttps);
        }
        Ok(url)
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host in lower case; an IPv6 address in brackets (`[::1]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host without brackets, for name resolution and TLS server names.
    pub fn host_bare(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// The port, the scheme's default when none is written.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// `https://host[:port]`, the port only when it is not the scheme's
    /// default (RFC 6454 §6.2).
    pub fn origin(&self) -> String {
        match self.port() {
            p if p == self.scheme.default_port() => {
                format!("{}://{}", self.scheme.as_str(), self.host)
            }
            p => format!("{}://{}:{p}", self.scheme.as_str(), self.host),
        }
    }

    /// `host:port`, the port always written.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port())
    }

    /// The path as written: empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query as written, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// `/path?query` as a request-target (`/` for an empty path).
    pub fn path_and_query(&self) -> String {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    }

    /// Whether this URL has the scheme, host and port of `base` and a path
    /// that is the base path or below it (a trailing `/` on either does not
    /// count).
    pub fn is_under(&self, base: &Url) -> bool {
        if self.scheme != base.scheme || self.host != base.host || self.port() != base.port() {
            return false;
        }
        let base_path = base.path.strip_suffix('/').unwrap_or(&base.path);
        let path = self.path.strip_suffix('/').unwrap_or(&self.path);
        path == base_path
            || path
                .strip_prefix(base_path)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Scheme and host in lower case, the port as written, path and query as
/// written.
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// `<base>/<relative>`, with the characters of `relative` that may not
/// appear in a URL encoded ([`percent::encode_illegal`]) and everything
/// else, existing escapes included, as received. `base` may end in `/`.
pub fn join(base: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        percent::encode_illegal(relative)
    )
}

/// Whether `link` parses and stays under `base` ([`Url::is_under`]); false
/// when either does not parse.
pub fn is_under(base: &str, link: &str) -> bool {
    match (Url::parse(base), Url::parse(link)) {
        (Ok(base), Ok(link)) => link.is_under(&base),
        _ => false,
    }
}

/// Checks a path relative to a base (`Patient/1`, no leading `/`) by the
/// rules of a URL's path; here every segment must be non-empty. A relative
/// path that passes, joined to a base that parses, gives a URL under that
/// base.
pub fn check_relative_path(path: &str) -> Result<(), PathError> {
    check_path(path, PathForm::Relative)
}

// ---- helpers ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathForm {
    /// Empty or `/…`, one trailing `/` allowed.
    Absolute,
    /// `segment/segment`, every segment non-empty.
    Relative,
}

fn check_path(path: &str, form: PathForm) -> Result<(), PathError> {
    let b = path.as_bytes();
    if !b.iter().all(|c| percent::is_path_byte(*c)) {
        return Err(PathError::BadCharacter);
    }
    for i in (0..b.len()).filter(|i| b[*i] == b'%') {
        match percent::escaped_byte(b, i) {
            None => return Err(PathError::BadEscape),
            Some(b'/' | b'\\') => return Err(PathError::EncodedSeparator),
            Some(c) if c.is_ascii_control() => return Err(PathError::EncodedControl),
            Some(_) => {}
        }
    }
    let segments = match form {
        PathForm::Relative => path,
        PathForm::Absolute => {
            let Some(rest) = path.strip_prefix('/') else {
                // After the authority a path is empty or starts with `/`.
                return Ok(());
            };
            if rest.is_empty() {
                return Ok(());
            }
            rest.strip_suffix('/').unwrap_or(rest)
        }
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let plain = segment.to_ascii_lowercase().replace("%2e", ".");
        if plain == "." || plain == ".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

fn parse_authority(authority: &str) -> Result<(String, Option<u16>), UrlError> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or(UrlError::Host)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| UrlError::Host)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UrlError::Host)?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (parse_host(host)?, port)
    };
    Ok((host, port.map(parse_port).transpose()?))
}

fn parse_host(host: &str) -> Result<String, UrlError> {
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return Err(UrlError::Host);
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        // Looks like a number: only a dotted-decimal IPv4 address will do.
        let ip: Ipv4Addr = host.parse().map_err(|_| UrlError::Host)?;
        return Ok(ip.to_string());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(label_ok) {
        return Err(UrlError::Host);
    }
    Ok(host)
}

fn parse_port(port: &str) -> Result<u16, UrlError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::Port);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(UrlError::Port),
        Ok(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (Scheme, String, u16, String, Option<String>) {
        let u = Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (
            u.scheme(),
            u.host().to_string(),
            u.port(),
            u.path().to_string(),
            u.query().map(str::to_string),
        )
    }

    #[test]
    fn parts_of_a_url() {
        assert_eq!(
            parts("https://fhir.example.nl:8443/fhir/stu3?_getpages=abc&_offset=10"),
            (
                Scheme::Https,
                "fhir.example.nl".into(),
                8443,
                "/fhir/stu3".into(),
                Some("_getpages=abc&_offset=10".into())
            )
        );
        let u = Url::parse("https://fhir.example.nl/fhir").unwrap();
        assert_eq!(u.port(), 443);
        assert_eq!(u.origin(), "https://fhir.example.nl");
        assert_eq!(u.host_port(), "fhir.example.nl:443");
        assert_eq!(u.path_and_query(), "/fhir");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.host(), u.port(), u.path()), ("127.0.0.1", 8080, ""));
        assert_eq!(u.path_and_query(), "/");
        assert_eq!(u.origin(), "http://127.0.0.1:8080");
        assert_eq!(Url::parse("https://h?x").unwrap().path_and_query(), "/?x");
    }

    #[test]
    fn scheme_and_host_are_case_insensitive_and_kept_in_lower_case() {
        let u = Url::parse("HTTPS://Fhir.EXAMPLE.nl:443/Fhir/Stu3").unwrap();
        assert_eq!(u.to_string(), "https://fhir.example.nl:443/Fhir/Stu3");
        assert_eq!(u.origin(), "https://fhir.example.nl");
        assert_eq!(
            Url::parse_https("hTTpS://h").unwrap().scheme(),
            Scheme::Https
        );
    }

    #[test]
    fn ipv6_literals() {
        let u = Url::parse("https://[::1]:8443/fhir").unwrap();
        assert_eq!((u.host(), u.host_bare(), u.port()), ("[::1]", "::1", 8443));
        assert_eq!(u.origin(), "https://[::1]:8443");
        assert_eq!(
            Url::parse("https://[2001:DB8:0:0::1]").unwrap().host(),
            "[2001:db8::1]",
            "canonical form, so two spellings compare equal"
        );
        assert_eq!(
            Url::parse("https://[::ffff:192.0.2.1]/")
                .unwrap()
                .host_bare(),
            "::ffff:192.0.2.1"
        );
        for bad in [
            "https://[::1",
            "https://::1/x",
            "https://[::1]x",
            "https://[::1]:",
            "https://[fe80::1%25eth0]/",
            "https://[v1.x]/",
            "https://[12345::]/",
            "https://[]/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(Url::parse("https://h:1").unwrap().port(), 1);
        assert_eq!(Url::parse("https://h:65535").unwrap().port(), 65535);
        assert_eq!(Url::parse("https://h:08443").unwrap().port(), 8443);
        for bad in [
            "https://h:0",
            "https://h:65536",
            "https://h:99999",
            "https://h:999999",
            "https://h:",
            "https://h:port",
            "https://h:+443",
            "https://h:-1",
            "https://h:443:1",
            "https://h: 443",
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert!(
                matches!(e, UrlError::Port | UrlError::BadCharacter),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn hosts() {
        for ok in ["localhost", "a-b.example", "x1.example.nl", "192.0.2.1"] {
            assert_eq!(Url::parse(&format!("https://{ok}/")).unwrap().host(), ok);
        }
        for bad in [
            "https:///fhir",
            "https://?x",
            "https://h..example",
            "https://.h.example",
            "https://h.example.",
            "https://-h.example",
            "https://h-.example",
            "https://h_x.example",
            "https://h%2Ex",
            "https://2130706433",
            "https://0x7f.1",
            "https://1.2.3",
            "https://010.0.0.1",
            "https://256.0.0.1",
            "https://example.123",
            "https://h*.example",
        ] {
            assert_eq!(Url::parse(bad), Err(UrlError::Host), "{bad}");
        }
        let long = format!("https://{}.example", "a".repeat(64));
        assert_eq!(Url::parse(&long), Err(UrlError::Host));
    }

    #[test]
    fn userinfo_fragments_and_characters_are_refused() {
        for (bad, why) in [
            ("https://user@h/x", UrlError::UserInfo),
            ("https://user:pw@h/x", UrlError::UserInfo),
            ("https://@h/x", UrlError::UserInfo),
            ("https://h/x#top", UrlError::Fragment),
            ("https://h/x?y#", UrlError::Fragment),
            ("https://h/a b", UrlError::BadCharacter),
            ("https://h/a\tb", UrlError::BadCharacter),
            ("https://h/a\nb", UrlError::BadCharacter),
            (" https://h", UrlError::Scheme),
            ("https://h/ ", UrlError::BadCharacter),
            ("https://h/é", UrlError::BadCharacter),
            ("https://h/x?a=|", UrlError::BadCharacter),
            ("https://h/x?a={}", UrlError::BadCharacter),
            ("https://h/[x]", UrlError::Path(PathError::BadCharacter)),
            ("https://h/a\\b", UrlError::Path(PathError::BadCharacter)),
            ("ftp://h/x", UrlError::Scheme),
            ("javascript:alert(1)", UrlError::NotAbsolute),
            ("//h/x", UrlError::NotAbsolute),
            ("/fhir/stu3?page=2", UrlError::NotAbsolute),
            ("", UrlError::NotAbsolute),
        ] {
            assert_eq!(Url::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            Url::parse(&format!("https://h/{}", "a".repeat(MAX_LEN))),
            Err(UrlError::TooLong)
        );
        assert_eq!(Url::parse_https("http://h"), Err(UrlError::NotHttps));
        assert_eq!(Url::parse_https("h.example"), Err(UrlError::NotHttps));
    }

    #[test]
    fn paths() {
        for (ok, path) in [
            ("https://h", ""),
            ("https://h/", "/"),
            ("https://h/fhir/", "/fhir/"),
            (
                "https://h/fhir/stu3/Observation/$lastn",
                "/fhir/stu3/Observation/$lastn",
            ),
            ("https://h/a%20b/c.d/..e/%2e%2ex", "/a%20b/c.d/..e/%2e%2ex"),
            ("https://h/x?a=%zz&b=/../", "/x"),
        ] {
            assert_eq!(Url::parse(ok).unwrap().path(), path, "{ok}");
        }
        for (bad, why) in [
            ("https://h//x", PathError::EmptySegment),
            ("https://h/fhir//", PathError::EmptySegment),
            ("https://h/fhir//x", PathError::EmptySegment),
            ("https://h/./x", PathError::DotSegment),
            ("https://h/fhir/..", PathError::DotSegment),
            ("https://h/fhir/../", PathError::DotSegment),
            ("https://h/fhir/%2e%2E/admin", PathError::DotSegment),
            ("https://h/fhir/.%2e/admin", PathError::DotSegment),
            ("https://h/fhir/%2E", PathError::DotSegment),
            ("https://h/Patient/a%2Fb", PathError::EncodedSeparator),
            ("https://h/Patient/a%5cb", PathError::EncodedSeparator),
            ("https://h/Patient/a%00", PathError::EncodedControl),
            ("https://h/Patient/a%0A", PathError::EncodedControl),
            ("https://h/Patient/a%7f", PathError::EncodedControl),
            ("https://h/Patient/%zz", PathError::BadEscape),
            ("https://h/Patient/%4", PathError::BadEscape),
            ("https://h/%", PathError::BadEscape),
        ] {
            assert_eq!(Url::parse(bad), Err(UrlError::Path(why)), "{bad}");
        }
    }

    /// On pseudo-random texts over the characters that matter: a parsed URL
    /// written out parses to the same URL, and a relative path that passes,
    /// joined to a base, stays under it.
    #[test]
    fn written_urls_parse_back_and_joined_paths_stay_under() {
        const ALPHABET: &[u8] = b"hH:/[]1.%2eEfF5c@?#a-_ 0";
        let base = Url::parse("https://h/a").unwrap();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut parsed, mut relative) = (0, 0);
        for i in 0..200_000 {
            let mut s = String::from(if i % 2 == 0 { "https://" } else { "" });
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for _ in 0..1 + state % 14 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(char::from(
                    ALPHABET[(state % ALPHABET.len() as u64) as usize],
                ));
            }
            if let Ok(u) = Url::parse(&s) {
                parsed += 1;
                assert_eq!(Url::parse(&u.to_string()), Ok(u.clone()), "{s}");
                assert!(u.is_under(&u), "{s}");
            }
            if check_relative_path(&s).is_ok() {
                relative += 1;
                let joined = join("https://h/a", &s);
                let u = Url::parse(&joined).unwrap_or_else(|e| panic!("{s:?}: {e}"));
                assert!(u.is_under(&base), "{s:?} → {joined}");
            }
        }
        assert!(parsed > 1_000 && relative > 1_000, "{parsed} {relative}");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(check_relative_path("Patient/1"), Ok(()));
        assert_eq!(check_relative_path("Observation/$lastn"), Ok(()));
        for (bad, why) in [
            ("", PathError::EmptySegment),
            ("/Patient", PathError::EmptySegment),
            ("Patient/", PathError::EmptySegment),
            ("Patient//1", PathError::EmptySegment),
            ("Patient/..", PathError::DotSegment),
            ("%2E", PathError::DotSegment),
            ("Patient%2F..", PathError::EncodedSeparator),
            ("Pa tient", PathError::BadCharacter),
            ("Patient|1", PathError::BadCharacter),
        ] {
            assert_eq!(check_relative_path(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn joined_values_keep_their_encodings() {
        assert_eq!(
            join("https://h/fhir/", "Condition"),
            "https://h/fhir/Condition"
        );
        assert_eq!(
            join("https://h/fhir", "Encounter?class=x%hl7.org|IMP"),
            "https://h/fhir/Encounter?class=x%hl7.org%7CIMP"
        );
        assert!(Url::parse(&join("https://h/fhir", "Encounter?class=x%hl7.org|IMP")).is_ok());
    }

    #[test]
    fn links_stay_under_the_base() {
        let base = "https://sender.example:8443/fhir/stu3";
        for ok in [
            "https://sender.example:8443/fhir/stu3",
            "https://sender.example:8443/fhir/stu3/",
            "https://sender.example:8443/fhir/stu3?_getpages=abc&_offset=10",
            "https://SENDER.example:8443/fhir/stu3/Condition?page=2",
            "HTTPS://sender.example:8443/fhir/stu3/",
        ] {
            assert!(is_under(base, ok), "{ok}");
        }
        assert!(is_under("https://h/fhir", "https://h:443/fhir/x"));
        assert!(is_under("https://h/fhir/", "https://h/fhir"));
        assert!(is_under("https://h", "https://h/anything"));
        assert!(is_under("https://[::1]:8443/f", "https://[0::1]:8443/f/x"));
        for bad in [
            "https://other.example:8443/fhir/stu3?page=2",
            "https://sender.example:8444/fhir/stu3?page=2",
            "https://sender.example/fhir/stu3?page=2",
            "http://sender.example:8443/fhir/stu3?page=2",
            "https://sender.example:8443/fhir/stu3x?page=2",
            "https://sender.example:8443/fhir?page=2",
            "https://sender.example:8443/FHIR/stu3",
            "https://sender.example:8443/fhir/stu3/../admin",
            "https://sender.example:8443/fhir/stu3/%2e%2e/admin",
            "https://sender.example:8443/fhir/stu3/x%2F..%2F..%2Fadmin",
            "https://sender.example:8443/fhir/stu3//x",
            "https://user@sender.example:8443/fhir/stu3",
            "https://sender.example:8443/fhir/stu3#x",
            "/fhir/stu3?page=2",
            "Condition?page=2",
            "https://sender.example:8443/fhir/stu3?x=a b",
        ] {
            assert!(!is_under(base, bad), "{bad}");
        }
        assert!(!is_under("not a url", "https://h/x"));
    }
}
