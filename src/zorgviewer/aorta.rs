//! The Epic forms of `AORTA-ID` a Zorgviewer partner may send (spec
//! zorgviewer.md §4):
//!
//! - `rid:<request id>;cid:<correlation id>;usr:<user>;rol:<role>;org:<org OID>`
//!   ([`Form::Rid`]), and
//! - the older `req=<uuid>; usr=<user>; rol=<role>; org=<org OID>`
//!   ([`Form::Req`]).
//!
//! These are an Epic convention, not the AORTA-on-FHIR
//! `initialRequestID=…; requestID=…` form the Mitz intake reads
//! (`mitz::aorta`): each parser refuses the other's form.
//!
//! Parsed strictly, because the members go into the audit trail: at most
//! [`MAX_LEN`] characters (DESIGN.md), `;`-separated members with spaces
//! around them allowed, names case-insensitive, each at most once, only the
//! names of the form (the first member's separator, `:` or `=`, decides
//! it), the request id (`rid`/`req`) required, and every value checked:
//! `rid`/`cid` as ids (1 to 64 of `A-Za-z0-9_-`), `req` a UUID, `usr` and
//! `rol` bounded visible ASCII, `org` an OID (bare or `urn:oid:`). Errors
//! name the member, never its value.

use std::fmt;

use super::fields;
use crate::util::random::is_uuid;

/// Longest `AORTA-ID` accepted (DESIGN.md "Zorgviewer"; Epic's own limit).
pub const MAX_LEN: usize = 128;

/// Which Epic form an `AORTA-ID` was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `rid:…;cid:…;usr:…;rol:…;org:…`.
    Rid,
    /// `req=<uuid>; usr=…; rol=…; org=…` (an earlier IG revision).
    Req,
}

/// Why an `AORTA-ID` was refused. Both are a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AortaIdError {
    /// Over [`MAX_LEN`] characters.
    TooLong,
    /// Not one of the Epic forms; the text names the rule, never the value.
    Malformed(&'static str),
}

impl fmt::Display for AortaIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AortaIdError::TooLong => write!(f, "AORTA-ID is longer than {MAX_LEN} characters"),
            AortaIdError::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AortaIdError {}

/// A parsed Epic `AORTA-ID`. `Debug` does not print the user.
#[derive(Clone, PartialEq, Eq)]
pub struct EpicAortaId {
    form: Form,
    request: String,
    correlation: Option<String>,
    user: Option<String>,
    role: Option<String>,
    org: Option<String>,
}

impl EpicAortaId {
    /// The form it was written in.
    pub fn form(&self) -> Form {
        self.form
    }

    /// `rid`, or `req` (lower-cased UUID).
    pub fn request_id(&self) -> &str {
        &self.request
    }

    /// `cid` (the `req=` form has none).
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation.as_deref()
    }

    /// `usr`: the user id. Personal data: for the audit trail, not the log.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// `rol`: the user's role (a SNOMED code).
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// `org`: the requesting organisation's OID, bare (`urn:oid:` stripped).
    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    /// The value written back in its own form, members in the documented
    /// order, names in lower case: what the audit trail records. It parses
    /// back to the same value.
    pub fn audit_form(&self) -> String {
        let (names, sep, join): (&[&str; 5], char, &str) = match self.form {
            Form::Rid => (&["rid", "cid", "usr", "rol", "org"], ':', ";"),
            Form::Req => (&["req", "cid", "usr", "rol", "org"], '=', "; "),
        };
        let values = [
            Some(self.request.as_str()),
            self.correlation.as_deref(),
            self.user.as_deref(),
            self.role.as_deref(),
            self.org.as_deref(),
        ];
        let members: Vec<String> = names
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.map(|v| format!("{name}{sep}{v}")))
            .collect();
        members.join(join)
    }
}

impl fmt::Debug for EpicAortaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpicAortaId")
            .field("form", &self.form)
            .field("request", &self.request)
            .field("correlation", &self.correlation)
            .field("user", &self.user.as_ref().map(|_| "***"))
            .field("role", &self.role)
            .field("org", &self.org)
            .finish()
    }
}

/// Parses an `AORTA-ID` in either Epic form (see the module docs).
pub fn parse(value: &str) -> Result<EpicAortaId, AortaIdError> {
    use AortaIdError::Malformed;
    if value.len() > MAX_LEN {
        return Err(AortaIdError::TooLong);
    }
    let mut form = None;
    let mut slots: [Option<&str>; 5] = [None; 5];
    for member in value.split(';').map(str::trim).filter(|m| !m.is_empty()) {
        let at = member.find([':', '=']).ok_or(Malformed(
            "AORTA-ID members must be name:value or name=value",
        ))?;
        let this = if member.as_bytes()[at] == b':' {
            Form::Rid
        } else {
            Form::Req
        };
        if *form.get_or_insert(this) != this {
            return Err(Malformed("AORTA-ID mixes the rid:… and req=… forms"));
        }
        let name = member[..at].trim().to_ascii_lowercase();
        let slot = match (this, name.as_str()) {
            (Form::Rid, "rid") | (Form::Req, "req") => 0,
            (Form::Rid, "cid") => 1,
            (_, "usr") => 2,
            (_, "rol") => 3,
            (_, "org") => 4,
            (Form::Rid, _) => {
                return Err(Malformed(
                    "AORTA-ID names a member other than rid, cid, usr, rol and org",
                ));
            }
            (Form::Req, _) => {
                return Err(Malformed(
                    "AORTA-ID names a member other than req, usr, rol and org",
                ));
            }
        };
        if slots[slot].replace(member[at + 1..].trim()).is_some() {
            return Err(Malformed("AORTA-ID names a member twice"));
        }
    }
    let form = form.ok_or(Malformed("AORTA-ID is empty"))?;
    let [request, correlation, user, role, org] = slots;
    let request = match (form, request) {
        (_, None) => return Err(Malformed("AORTA-ID has no request id (rid or req)")),
        (Form::Rid, Some(rid)) if fields::is_id(rid) => rid.to_owned(),
        (Form::Rid, Some(_)) => {
            return Err(Malformed(
                "AORTA-ID rid must be 1 to 64 characters of A-Za-z0-9_-",
            ));
        }
        (Form::Req, Some(req)) if is_uuid(req) => req.to_ascii_lowercase(),
        (Form::Req, Some(_)) => return Err(Malformed("AORTA-ID req must be a UUID")),
    };
    let checked = |value: Option<&str>, ok: fn(&str) -> bool, why| match value {
        Some(v) if !ok(v) => Err(Malformed(why)),
        _ => Ok(value.map(str::to_owned)),
    };
    Ok(EpicAortaId {
        form,
        request,
        correlation: checked(
            correlation,
            fields::is_id,
            "AORTA-ID cid must be 1 to 64 characters of A-Za-z0-9_-",
        )?,
        user: checked(
            user,
            fields::is_subject_id,
            "AORTA-ID usr must be 1 to 128 visible ASCII characters",
        )?,
        role: checked(
            role,
            fields::is_role,
            "AORTA-ID rol must be 1 to 64 visible ASCII characters",
        )?,
        org: match org {
            None => None,
            Some(o) => Some(
                fields::bare_oid(o)
                    .ok_or(Malformed("AORTA-ID org must be an OID"))?
                    .to_owned(),
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IG's example: "L. Arts uit Tjongerschans".
    const SAMPLE: &str =
        "rid:1b9d6bCd-bBf;cid:yA8UM8fHmhde;usr:larts;rol:62247001;org:2.16.528.1.1007.3.3.15123";
    const UUID: &str = "6f1c1b52-0a43-4b8e-9d0e-2f7f3b0f5a11";

    #[test]
    fn reads_the_ig_example() {
        let id = parse(SAMPLE).unwrap();
        assert_eq!(id.form(), Form::Rid);
        assert_eq!(id.request_id(), "1b9d6bCd-bBf");
        assert_eq!(id.correlation_id(), Some("yA8UM8fHmhde"));
        assert_eq!(id.user(), Some("larts"));
        assert_eq!(id.role(), Some("62247001"));
        assert_eq!(id.org(), Some("2.16.528.1.1007.3.3.15123"));
        assert_eq!(id.audit_form(), SAMPLE);
        assert!(!format!("{id:?}").contains("larts"));
    }

    #[test]
    fn reads_the_older_req_form_with_spaces_and_any_case() {
        let value = format!(
            "req={}; usr=larts; rol=62247001; ORG = urn:oid:2.16.528.1.1007.3.3.15123;",
            UUID.to_uppercase()
        );
        let id = parse(&value).unwrap();
        assert_eq!(id.form(), Form::Req);
        assert_eq!(id.request_id(), UUID);
        assert_eq!(id.correlation_id(), None);
        assert_eq!(id.user(), Some("larts"));
        assert_eq!(id.org(), Some("2.16.528.1.1007.3.3.15123"));
        assert_eq!(
            id.audit_form(),
            format!("req={UUID}; usr=larts; rol=62247001; org=2.16.528.1.1007.3.3.15123")
        );
        let id = parse(&format!(" RID : abc ; Usr:{} ", "u".repeat(100))).unwrap();
        assert_eq!(
            (id.request_id(), id.user().map(str::len)),
            ("abc", Some(100))
        );
    }

    #[test]
    fn what_it_writes_for_the_audit_parses_back_to_the_same() {
        for value in [
            SAMPLE,
            "rid:a",
            "org:1.2;rid:b",
            &format!("req={UUID}"),
            &format!("usr=x;req={UUID};rol=1"),
        ] {
            let id = parse(value).unwrap();
            assert_eq!(parse(&id.audit_form()).unwrap(), id, "{value}");
        }
    }

    #[test]
    fn is_at_most_128_characters() {
        let at_limit = format!("rid:{};usr:{}", "r".repeat(60), "u".repeat(128 - 69));
        assert_eq!(at_limit.len(), 128);
        assert!(parse(&at_limit).is_ok());
        let over = format!("{at_limit}u");
        assert_eq!(parse(&over), Err(AortaIdError::TooLong));
        assert_eq!(
            AortaIdError::TooLong.to_string(),
            "AORTA-ID is longer than 128 characters"
        );
    }

    #[test]
    fn refuses_everything_else_without_quoting_it() {
        for bad in [
            String::new(),
            " ; ;".into(),
            "larts".into(),
            "usr:larts".into(),
            format!("req={UUID}; cid:abc"),
            "rid:a;rid:b".into(),
            "rid:a;RID:a".into(),
            "rid:a;foo:b".into(),
            format!("req={UUID}; cid=abc"),
            "rid:a;usr=b".into(),
            format!("initialRequestID={UUID}; requestID={UUID}"),
            format!("requestID={UUID}"),
            "rid:".into(),
            "rid:a.b".into(),
            "rid:a;cid:".into(),
            "rid:a;cid:c c".into(),
            "req=not-a-uuid".into(),
            "rid:a;usr:".into(),
            "rid:a;rol:a b".into(),
            "rid:a;org:2.16.x".into(),
            "rid:a;org:urn:oid:".into(),
        ] {
            let e = parse(&bad).expect_err(&bad);
            let shown = e.to_string();
            assert!(shown.starts_with("AORTA-ID "), "{shown}");
            for secret in ["larts", "not-a-uuid", "foo", "a.b", "c c"] {
                assert!(!shown.contains(secret), "{shown} quotes {secret}");
            }
        }
    }

    #[test]
    fn every_truncated_prefix_is_parsed_or_refused_without_panic() {
        let older = format!("req={UUID}; usr=larts; rol=62247001; org=2.16.528.1.1007.3.3.15123");
        for value in [SAMPLE, older.as_str()] {
            for end in 0..=value.len() {
                let _ = parse(&value[..end]);
            }
        }
        assert!(parse(&older[..older.len() - 1]).is_ok());
    }
}
