//! The AORTA headers of the intake (spec §5).
//!
//! - `AORTA-ID` in its AORTA-on-FHIR form, `initialRequestID=<UUID>;
//!   requestID=<UUID>`. Parsed strictly, because both values end up in the
//!   log and the audit trail: only UUIDs get through.
//! - `AORTA-Version`, `contentVersion=<semver>; acceptVersion=<range>` on the
//!   request, `contentVersion=<version processed>` on the 200. The version
//!   processed is the request's `contentVersion` when it names one: the
//!   intake takes every notification it can parse and dispatches on the
//!   Consents' `meta.profile`, not on this header, so it processed what the
//!   sender says it sent. Without one (or with one that is not a version) it
//!   is [`CONTENT_VERSION`], the profile the intake interprets.

use crate::util::random::is_uuid;

/// Longest `AORTA-ID` value considered.
pub const MAX_LEN: usize = 256;
/// The content version answered when the request names none: the consent
/// notification profile the intake interprets (Consent-Mitz-Notify 3.8.0).
pub const CONTENT_VERSION: &str = "3.8.0";
/// Longest `contentVersion` value echoed.
const MAX_VERSION_LEN: usize = 64;

/// The `AORTA-Version` value of the answer to a request that carried
/// `request` (see the module docs).
pub fn response_version(request: Option<&str>) -> String {
    let version = request.and_then(content_version).unwrap_or(CONTENT_VERSION);
    format!("contentVersion={version}")
}

/// The `contentVersion` of an `AORTA-Version` value, when it names exactly
/// one and it is a version: a digit first, then only ASCII letters, digits,
/// `.`, `-` and `+` (semver with pre-release and build), at most 64
/// characters. Other members (`acceptVersion`) are not looked at.
pub fn content_version(value: &str) -> Option<&str> {
    let mut found = None;
    for part in value.split(';') {
        let Some((name, val)) = part.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("contentVersion") {
            continue;
        }
        if found.replace(val.trim()).is_some() {
            return None;
        }
    }
    found.filter(|v| {
        v.len() <= MAX_VERSION_LEN
            && v.starts_with(|c: char| c.is_ascii_digit())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    })
}

/// A parsed `AORTA-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AortaId {
    /// The first request of the whole chain (lower-cased UUID).
    pub initial: Option<String>,
    /// This message (lower-cased UUID).
    pub request: String,
}

impl AortaId {
    /// `initial|request` for the audit trail's request ids.
    pub fn audit_form(&self) -> String {
        match &self.initial {
            Some(i) => format!("{i}|{}", self.request),
            None => self.request.clone(),
        }
    }
}

/// Parses `initialRequestID=<uuid>; requestID=<uuid>`: `;`-separated
/// `name=value` pairs, names case-insensitive, in any order, spaces around
/// the separators allowed. `requestID` is required, `initialRequestID`
/// optional (the first request of a chain may omit it; it then is its own
/// initial request). Unknown names, repeated names, and values that are not
/// UUIDs are refused with the reason.
pub fn parse(value: &str) -> Result<AortaId, &'static str> {
    if value.len() > MAX_LEN {
        return Err("AORTA-ID is longer than 256 characters");
    }
    let mut initial = None;
    let mut request = None;
    for part in value.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (name, val) = part
            .split_once('=')
            .ok_or("AORTA-ID must be initialRequestID=<uuid>; requestID=<uuid>")?;
        let val = val.trim().to_ascii_lowercase();
        if !is_uuid(&val) {
            return Err("AORTA-ID values must be UUIDs (RFC 4122)");
        }
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "initialrequestid" => &mut initial,
            "requestid" => &mut request,
            _ => return Err("AORTA-ID names only initialRequestID and requestID"),
        };
        if slot.replace(val).is_some() {
            return Err("AORTA-ID names a field twice");
        }
    }
    let request = request.ok_or("AORTA-ID has no requestID")?;
    Ok(AortaId { initial, request })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c1b52-0a43-4b8e-9d0e-2f7f3b0f5a11";
    const B: &str = "0e4c9d3a-7c0b-4c51-8a39-5d7d1c1b2e22";

    #[test]
    fn accepts_the_aof_form_in_any_order_and_spacing() {
        let id = parse(&format!("initialRequestID={A}; requestID={B}")).unwrap();
        assert_eq!(id.initial.as_deref(), Some(A));
        assert_eq!(id.request, B);
        let id = parse(&format!("requestid={B};INITIALREQUESTID={A};")).unwrap();
        assert_eq!((id.initial.as_deref(), id.request.as_str()), (Some(A), B));
        let id = parse(&format!("requestID={}", B.to_uppercase())).unwrap();
        assert_eq!((id.initial, id.request.as_str()), (None, B));
        assert_eq!(
            parse(&format!("initialRequestID={A}; requestID={B}"))
                .unwrap()
                .audit_form(),
            format!("{A}|{B}")
        );
    }

    #[test]
    fn the_answered_version_is_the_requested_one_else_ours() {
        for (request, answered) in [
            (
                Some("contentVersion=3.8.0; acceptVersion=3.x"),
                "contentVersion=3.8.0",
            ),
            (
                Some("acceptVersion=3.x;contentversion= 3.8.1 "),
                "contentVersion=3.8.1",
            ),
            (Some("contentVersion=2.0"), "contentVersion=2.0"),
            (
                Some("contentVersion=4.0.0-beta.1+b7"),
                "contentVersion=4.0.0-beta.1+b7",
            ),
            (None, "contentVersion=3.8.0"),
            (Some(""), "contentVersion=3.8.0"),
            (Some("acceptVersion=3.x"), "contentVersion=3.8.0"),
            (Some("contentVersion="), "contentVersion=3.8.0"),
            (Some("contentVersion=v3"), "contentVersion=3.8.0"),
            (Some("contentVersion=3.8 3.9"), "contentVersion=3.8.0"),
            (Some("contentVersion=3.8,3.9"), "contentVersion=3.8.0"),
            (
                Some("contentVersion=3.8\r\nX-Evil: 1"),
                "contentVersion=3.8.0",
            ),
            (
                Some("contentVersion=3.8.0; contentVersion=3.9.0"),
                "contentVersion=3.8.0",
            ),
            (Some("contentVersion 3.8.0"), "contentVersion=3.8.0"),
        ] {
            assert_eq!(response_version(request), answered, "{request:?}");
        }
        let long = format!("contentVersion=3.{}", "1".repeat(MAX_VERSION_LEN));
        assert_eq!(response_version(Some(&long)), "contentVersion=3.8.0");
        let longest = format!("contentVersion=3.{}", "1".repeat(MAX_VERSION_LEN - 2));
        assert_eq!(response_version(Some(&longest)), longest);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            String::new(),
            "   ".into(),
            format!("initialRequestID={A}"),
            "requestID=not-a-uuid".into(),
            format!("requestID={B}; requestID={A}"),
            format!("requestID={B}; user=jan"),
            format!("rid:{B};cid:{A}"),
            format!("requestID {B}"),
            format!("requestID={B}; initialRequestID={A}\u{7f}"),
            format!("requestID={B};{}", " ".repeat(300)),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} was accepted");
        }
    }
}
