//! FHIR media types and content negotiation.
//!
//! Reads: `application/fhir+json`, `application/json+fhir`,
//! `application/json` as JSON; `application/fhir+xml`,
//! `application/xml+fhir`, `application/xml` as XML; with
//! optional `charset` (UTF-8 only) and `fhirVersion` parameters. Writes
//! `application/fhir+json` / `application/fhir+xml` with `charset=utf-8`.
//! The `_format` parameter wins over `Accept` (FHIR http §2.21.0.6).

use super::error::FhirError;

/// A wire format. Serialised (in stored spool items) as `json` / `xml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `json` or `xml`: the file extension, and the name in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Xml => "xml",
        }
    }

    /// The `Content-Type` we send for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }
}

/// A parsed `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    pub format: Format,
    /// The `fhirVersion` parameter (`3.0`, `4.0`, …), if given.
    pub fhir_version: Option<String>,
}

/// Media types read as JSON (the list in DESIGN.md).
const JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json+fhir",
    "application/json",
];
/// Media types read as XML (the list in DESIGN.md).
const XML_TYPES: &[&str] = &[
    "application/fhir+xml",
    "application/xml+fhir",
    "application/xml",
];

/// The longest header value considered; longer ones are refused outright.
const MAX_HEADER: usize = 1024;

/// Parses a `Content-Type` header value. Anything that is not a FHIR JSON or
/// XML type, or that names a charset other than UTF-8, is refused (HTTP 415).
pub fn parse_content_type(value: &str) -> Result<ContentType, FhirError> {
    if value.len() > MAX_HEADER {
        return Err(FhirError::UnsupportedMediaType {
            reason: "content-type header too long",
        });
    }
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let format = format_of(&essence).ok_or(FhirError::UnsupportedMediaType {
        reason: "not a fhir json or xml media type",
    })?;
    let mut fhir_version = None;
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (name, val) = param
            .split_once('=')
            .ok_or(FhirError::UnsupportedMediaType {
                reason: "malformed media type parameter",
            })?;
        let val = unquote(val.trim());
        match name.trim().to_ascii_lowercase().as_str() {
            "charset"
                if !val.eq_ignore_ascii_case("utf-8") && !val.eq_ignore_ascii_case("utf8") =>
            {
                return Err(FhirError::UnsupportedMediaType {
                    reason: "charset other than utf-8",
                });
            }
            "fhirversion" => {
                if val.is_empty()
                    || val.len() > 16
                    || !val.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                {
                    return Err(FhirError::UnsupportedMediaType {
                        reason: "malformed fhirVersion parameter",
                    });
                }
                fhir_version = Some(val.to_owned());
            }
            _ => {}
        }
    }
    Ok(ContentType {
        format,
        fhir_version,
    })
}

/// Picks the response format from the `_format` query parameter (already
/// percent-decoded) and the `Accept` header. `default` is used when neither
/// says anything, and breaks ties (for Mitz: the request's own format).
/// `None` means nothing acceptable: answer 406.
pub fn negotiate(
    format_param: Option<&str>,
    accept: Option<&str>,
    default: Format,
) -> Option<Format> {
    if let Some(f) = format_param {
        return parse_format_param(f);
    }
    let accept = match accept {
        Some(a) if !a.trim().is_empty() => a,
        _ => return Some(default),
    };
    if accept.len() > MAX_HEADER {
        return None;
    }
    let ranges: Vec<Range> = accept.split(',').filter_map(Range::parse).collect();
    let q_json = best_q(&ranges, JSON_TYPES);
    let q_xml = best_q(&ranges, XML_TYPES);
    let (q_default, q_other, other) = match default {
        Format::Json => (q_json, q_xml, Format::Xml),
        Format::Xml => (q_xml, q_json, Format::Json),
    };
    if q_default == 0 && q_other == 0 {
        None
    } else if q_other > q_default {
        Some(other)
    } else {
        Some(default)
    }
}

/// Whether `accept` names a FHIR format itself (a JSON or XML FHIR media
/// type with a q above 0), not only through `*/*` or `application/*`: a
/// `Binary` is then answered as a resource, otherwise as its own content.
pub fn accept_names_fhir(accept: Option<&str>) -> bool {
    let Some(accept) = accept.filter(|a| a.len() <= MAX_HEADER) else {
        return false;
    };
    accept.split(',').filter_map(Range::parse).any(|r| {
        r.q > 0
            && JSON_TYPES
                .iter()
                .chain(XML_TYPES)
                .any(|t| r.specificity(t) == 3)
    })
}

/// `_format`: `json`, `xml`, or one of the media types (a `+` may have been
/// decoded to a space by form decoding).
pub fn parse_format_param(value: &str) -> Option<Format> {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .replace(' ', "+");
    match essence.to_ascii_lowercase().as_str() {
        "json" => Some(Format::Json),
        "xml" => Some(Format::Xml),
        other => format_of(other),
    }
}

fn format_of(essence: &str) -> Option<Format> {
    if JSON_TYPES.contains(&essence) {
        Some(Format::Json)
    } else if XML_TYPES.contains(&essence) {
        Some(Format::Xml)
    } else {
        None
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// One media range of an `Accept` header, q in thousandths.
struct Range {
    kind: String,
    sub: String,
    q: u16,
}

impl Range {
    fn parse(item: &str) -> Option<Range> {
        let mut parts = item.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let (kind, sub) = essence.split_once('/')?;
        if kind.is_empty() || sub.is_empty() {
            return None;
        }
        let mut q = 1000;
        for p in parts {
            if let Some((n, v)) = p.split_once('=') {
                if n.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(v.trim())?;
                }
            }
        }
        Some(Range {
            kind: kind.to_owned(),
            sub: sub.to_owned(),
            q,
        })
    }

    /// 3 for an exact match, 2 for `type/*`, 1 for `*/*`, 0 for none.
    fn specificity(&self, media: &str) -> u8 {
        let Some((kind, sub)) = media.split_once('/') else {
            return 0;
        };
        if self.kind == kind && self.sub == sub {
            3
        } else if self.kind == kind && self.sub == "*" {
            2
        } else if self.kind == "*" && self.sub == "*" {
            1
        } else {
            0
        }
    }
}

/// RFC 9110 qvalue: `0`, `1`, `0.xyz`, `1.000`; thousandths.
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        let scale = [100, 10, 1][i];
        thousandths += u16::from(b - b'0') * scale;
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The q a format gets: for each of its media types the q of the most
/// specific matching range, the best of those.
fn best_q(ranges: &[Range], types: &[&str]) -> u16 {
    types
        .iter()
        .map(|t| {
            ranges
                .iter()
                .filter(|r| r.specificity(t) > 0)
                .max_by_key(|r| r.specificity(t))
                .map_or(0, |r| r.q)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_naming_a_fhir_format() {
        for (accept, names) in [
            (Some("application/fhir+json"), true),
            (Some("application/pdf, application/fhir+xml;q=0.5"), true),
            (Some("application/json"), true),
            (Some("application/fhir+json;q=0"), false),
            (Some("*/*"), false),
            (Some("application/*"), false),
            (Some("application/pdf"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(accept_names_fhir(accept), names, "{accept:?}");
        }
    }

    #[test]
    fn content_types() {
        for (v, f) in [
            ("application/fhir+json", Format::Json),
            ("application/json+fhir", Format::Json),
            ("Application/JSON; charset=UTF-8", Format::Json),
            (
                "application/fhir+xml;charset=utf-8;fhirVersion=4.0",
                Format::Xml,
            ),
            ("application/xml+fhir", Format::Xml),
            ("application/xml ; charset=\"utf-8\"", Format::Xml),
        ] {
            assert_eq!(parse_content_type(v).unwrap().format, f, "{v}");
        }
        assert_eq!(
            parse_content_type("application/fhir+json; fhirVersion=3.0")
                .unwrap()
                .fhir_version
                .as_deref(),
            Some("3.0")
        );
        for bad in [
            "",
            "text/html",
            "application/fhir+json; charset=iso-8859-1",
            "application/fhir+json; charset",
            "application/fhir+json; fhirVersion=x",
            "application/fhir+turtle",
            "multipart/form-data",
            "text/xml",
            "text/json",
        ] {
            assert!(
                matches!(
                    parse_content_type(bad),
                    Err(FhirError::UnsupportedMediaType { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_parameter_wins() {
        let accept = Some("application/fhir+json");
        assert_eq!(
            negotiate(Some("xml"), accept, Format::Json),
            Some(Format::Xml)
        );
        assert_eq!(
            negotiate(Some("json"), None, Format::Xml),
            Some(Format::Json)
        );
        assert_eq!(
            negotiate(Some("application/fhir xml"), None, Format::Json),
            Some(Format::Xml)
        );
        assert_eq!(
            negotiate(Some("application/fhir+json"), None, Format::Xml),
            Some(Format::Json)
        );
        assert_eq!(negotiate(Some("html"), accept, Format::Json), None);
        assert_eq!(negotiate(Some("ttl"), None, Format::Json), None);
    }

    #[test]
    fn accept_header() {
        let n = |a: &str| negotiate(None, Some(a), Format::Json);
        assert_eq!(negotiate(None, None, Format::Xml), Some(Format::Xml));
        assert_eq!(n(""), Some(Format::Json));
        assert_eq!(n("*/*"), Some(Format::Json));
        assert_eq!(negotiate(None, Some("*/*"), Format::Xml), Some(Format::Xml));
        assert_eq!(n("application/fhir+xml"), Some(Format::Xml));
        assert_eq!(n("application/xml+fhir"), Some(Format::Xml));
        assert_eq!(
            n("application/xml, application/json;q=0.5"),
            Some(Format::Xml)
        );
        assert_eq!(
            n("application/xml;q=0.4, application/json;q=0.5"),
            Some(Format::Json)
        );
        assert_eq!(n("application/*"), Some(Format::Json));
        assert_eq!(n("text/html"), None);
        assert_eq!(n("text/html, */*;q=0.1"), Some(Format::Json));
        assert_eq!(
            n("application/fhir+json;q=0, application/fhir+xml"),
            Some(Format::Xml)
        );
        // Excluding every JSON type explicitly leaves XML even under */*.
        assert_eq!(
            n("*/*, application/fhir+json;q=0, application/json+fhir;q=0, application/json;q=0"),
            Some(Format::Xml)
        );
        assert_eq!(n("*/*;q=0"), None);
        assert_eq!(n("application/fhir+json;q=2"), None);
        assert_eq!(n("application/fhir+json;q=0.0001"), None);
        assert_eq!(n("garbage"), None);
        assert_eq!(n(&"a/b, ".repeat(1000)), None);
    }
}
