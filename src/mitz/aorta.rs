//! The `AORTA-ID` request header in its AORTA-on-FHIR form (spec §5):
//! `initialRequestID=<UUID>; requestID=<UUID>`. Parsed strictly, because both
//! values end up in the log and the audit trail: only UUIDs get through.

use crate::util::random::is_uuid;

/// Longest `AORTA-ID` value considered.
pub const MAX_LEN: usize = 256;

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
