//! Dutch identifiers: BSN (11-test), URA and AGB organisation ids in their
//! OID, `urn:oid:` and plain forms, and the patient OID.

use std::fmt;

/// OID root of the BSN.
pub const BSN_OID_ROOT: &str = "2.16.840.1.113883.2.4.6.3";
/// FHIR identifier system of the BSN.
pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// FHIR identifier system of the URA.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// FHIR identifier system for URIs (`urn:uuid:`, `urn:oid:`).
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

/// OID root of URA numbers.
pub const URA_OID_ROOT: &str = "2.16.528.1.1007.3.3";
/// OID root of AGB codes (VIPLive style).
pub const AGB_OID_ROOT: &str = "2.16.840.1.113883.2.4.6.1";

/// How organisations are written for a partner (`NP_PARTNER_<NAME>_ID_SCHEME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdScheme {
    Ura,
    Agb,
}

/// An organisation identifier: a URA or an AGB code, 8 digits each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrgId {
    Ura(String),
    Agb(String),
}

/// Why a configured organisation (`ura:<8 digits>` / `agb:<8 digits>`) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgIdError {
    /// No `scheme:` prefix at all.
    NoScheme(String),
    /// A prefix other than `ura:` or `agb:`.
    UnknownScheme(String),
    /// The number is not 8 digits.
    NotEightDigits { text: String, number: String },
}

impl fmt::Display for OrgIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrgIdError::NoScheme(t) => write!(f, "{t:?} must be ura:<8 digits> or agb:<8 digits>"),
            OrgIdError::UnknownScheme(t) => write!(f, "{t:?} must start with ura: or agb:"),
            OrgIdError::NotEightDigits { text, number } => {
                write!(f, "{text:?}: {number:?} is not 8 digits")
            }
        }
    }
}

impl std::error::Error for OrgIdError {}

impl OrgId {
    /// Parses `ura:<8 digits>` or `agb:<8 digits>` (the configuration form).
    pub fn parse(text: &str) -> Result<OrgId, OrgIdError> {
        let (scheme, number) = text
            .split_once(':')
            .ok_or_else(|| OrgIdError::NoScheme(text.into()))?;
        if !is_digits(number, 8) {
            return Err(OrgIdError::NotEightDigits {
                text: text.into(),
                number: number.into(),
            });
        }
        match scheme {
            "ura" => Ok(OrgId::Ura(number.into())),
            "agb" => Ok(OrgId::Agb(number.into())),
            _ => Err(OrgIdError::UnknownScheme(text.into())),
        }
    }

    /// The bare number.
    pub fn number(&self) -> &str {
        match self {
            OrgId::Ura(n) | OrgId::Agb(n) => n,
        }
    }

    /// The scheme this identifier is written in.
    pub fn scheme(&self) -> IdScheme {
        match self {
            OrgId::Ura(_) => IdScheme::Ura,
            OrgId::Agb(_) => IdScheme::Agb,
        }
    }

    /// The bare OID: `2.16.528.1.1007.3.3.<URA>` or `2.16.840.1.113883.2.4.6.1.<AGB>`.
    pub fn oid(&self) -> String {
        match self {
            OrgId::Ura(n) => format!("{URA_OID_ROOT}.{n}"),
            OrgId::Agb(n) => format!("{AGB_OID_ROOT}.{n}"),
        }
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrgId::Ura(n) => write!(f, "ura:{n}"),
            OrgId::Agb(n) => write!(f, "agb:{n}"),
        }
    }
}

/// `n` ASCII digits exactly.
pub fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// A BSN that passed the 11-test. Its `Debug` does not print the number, so a
/// stray `{:?}` cannot leak it into a log.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bsn(String);

impl Bsn {
    /// Accepts 9 digits (8 with a leading zero dropped is also seen in the
    /// wild: padded back to 9) that pass the 11-test.
    pub fn parse(text: &str) -> Option<Bsn> {
        let t = text.trim();
        if !(8..=9).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{t:0>9}");
        let digits: Vec<i64> = padded.bytes().map(|b| i64::from(b - b'0')).collect();
        let sum: i64 = digits[..8]
            .iter()
            .zip((2..=9).rev())
            .map(|(d, w)| d * w)
            .sum::<i64>()
            - digits[8];
        (sum % 11 == 0 && padded != "000000000").then_some(Bsn(padded))
    }

    /// The 9 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `urn:oid:2.16.840.1.113883.2.4.6.3.<BSN>`, the JWT `patient` form.
    pub fn urn_oid(&self) -> String {
        format!("urn:oid:{BSN_OID_ROOT}.{}", self.0)
    }

    /// Parses the JWT `patient` claim: `urn:oid:<root>.<BSN>` or the bare OID.
    pub fn from_patient_claim(claim: &str) -> Option<Bsn> {
        let oid = claim.strip_prefix("urn:oid:").unwrap_or(claim);
        Bsn::parse(oid.strip_prefix(BSN_OID_ROOT)?.strip_prefix('.')?)
    }
}

impl fmt::Debug for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bsn(***)")
    }
}

/// Stored as its 9 digits.
impl serde::Serialize for Bsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Read back only when it passes the 11-test. The error never repeats the
/// value (serde's own would, for a number).
impl<'de> serde::Deserialize<'de> for Bsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bsn, D::Error> {
        let refused = || serde::de::Error::custom("not a BSN that passes the 11-test");
        let text = String::deserialize(d).map_err(|_| refused())?;
        Bsn::parse(&text).ok_or_else(refused)
    }
}

/// Parses an organisation as partners write it in claims: bare OID,
/// `urn:oid:` OID (URA or AGB root), or the plain 8-digit number, which is read
/// in `plain_scheme`.
pub fn parse_org(text: &str, plain_scheme: IdScheme) -> Option<OrgId> {
    let t = text.trim();
    let oid = t.strip_prefix("urn:oid:").unwrap_or(t);
    let digits8 = |s: &str| is_digits(s, 8);
    if let Some(n) = oid
        .strip_prefix(URA_OID_ROOT)
        .and_then(|r| r.strip_prefix('.'))
    {
        return digits8(n).then(|| OrgId::Ura(n.into()));
    }
    if let Some(n) = oid
        .strip_prefix(AGB_OID_ROOT)
        .and_then(|r| r.strip_prefix('.'))
    {
        return digits8(n).then(|| OrgId::Agb(n.into()));
    }
    if t == oid && digits8(t) {
        return Some(match plain_scheme {
            IdScheme::Ura => OrgId::Ura(t.into()),
            IdScheme::Agb => OrgId::Agb(t.into()),
        });
    }
    None
}

/// How we write an organisation in JWT claims (DESIGN.md "Our assertions"):
/// URA → `urn:oid:2.16.528.1.1007.3.3.<URA>`, AGB → bare `2.16.840.1.113883.2.4.6.1.<AGB>`.
pub fn org_claim(org: &OrgId) -> String {
    match org {
        OrgId::Ura(_) => format!("urn:oid:{}", org.oid()),
        OrgId::Agb(_) => org.oid(),
    }
}

/// An ISO object identifier in dotted decimal (`2.16.840.1.113883.2.4.3.8`),
/// such as the organisation OIDs of IHE IUA's `subject_organization_id`.
/// Parsed from the bare form or `urn:oid:<oid>`; kept bare.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Oid(String);

impl Oid {
    /// Longest OID accepted, in characters (bare form).
    pub const MAX_LEN: usize = 128;

    /// `urn:oid:<oid>` or a bare OID: at least two arcs of decimal digits
    /// without leading zeros, the first 0, 1 or 2, at most [`Oid::MAX_LEN`]
    /// characters.
    pub fn parse(text: &str) -> Option<Oid> {
        let bare = text.strip_prefix("urn:oid:").unwrap_or(text);
        let arcs: Vec<&str> = bare.split('.').collect();
        let arc_ok = |a: &&str| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (*a == "0" || !a.starts_with('0'))
        };
        let ok = bare.len() <= Oid::MAX_LEN
            && arcs.len() >= 2
            && arcs.iter().all(arc_ok)
            && matches!(arcs.first(), Some(&("0" | "1" | "2")));
        ok.then(|| Oid(bare.to_string()))
    }

    /// The bare dotted form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `urn:oid:<oid>`.
    pub fn urn(&self) -> String {
        format!("urn:oid:{}", self.0)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_bare_and_as_urn() {
        let umcg = Oid::parse("urn:oid:2.16.840.1.113883.2.4.3.8").unwrap();
        assert_eq!(umcg.as_str(), "2.16.840.1.113883.2.4.3.8");
        assert_eq!(umcg.urn(), "urn:oid:2.16.840.1.113883.2.4.3.8");
        assert_eq!(Oid::parse("2.16.840.1.113883.2.4.3.8"), Some(umcg.clone()));
        assert_eq!(umcg.to_string(), "2.16.840.1.113883.2.4.3.8");
        assert!(Oid::parse("0.0").is_some());
        assert!(Oid::parse(&format!("2.{}", "1".repeat(Oid::MAX_LEN - 2))).is_some());
        for bad in [
            "",
            "urn:oid:",
            "2",
            "3.16.840",
            "2.16..840",
            "2.16.840.",
            ".2.16",
            "2.016.840",
            "2.16.840.1a",
            " 2.16.840",
            "2.16.840 ",
            "URN:OID:2.16.840",
            "urn:oid:urn:oid:2.16",
            "2.-16",
            "2.+16",
            "UMCG",
        ] {
            assert_eq!(Oid::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            Oid::parse(&format!("2.{}", "1".repeat(Oid::MAX_LEN - 1))),
            None
        );
    }

    #[test]
    fn bsn_eleven_test() {
        for good in ["999999990", "999999151", "123456782", "111222333"] {
            assert!(Bsn::parse(good).is_some(), "{good}");
        }
        for bad in [
            "999999991",
            "12345678x",
            "1234567890",
            "",
            "000000000",
            " 99999999 0",
        ] {
            assert!(Bsn::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", Bsn::parse("999999990").unwrap()),
            "Bsn(***)"
        );
    }

    #[test]
    fn a_stored_bsn_is_read_back_only_when_it_passes_the_eleven_test() {
        let b = Bsn::parse("999999151").unwrap();
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(text, "\"999999151\"");
        assert_eq!(serde_json::from_str::<Bsn>(&text).unwrap(), b);
        for bad in ["\"999999152\"", "\"\"", "999999151"] {
            let err = serde_json::from_str::<Bsn>(bad).unwrap_err().to_string();
            assert!(!err.contains("999999"), "no number in the error: {err}");
        }
    }

    #[test]
    fn patient_claim_forms() {
        let b = Bsn::parse("999999151").unwrap();
        assert_eq!(b.urn_oid(), "urn:oid:2.16.840.1.113883.2.4.6.3.999999151");
        assert_eq!(Bsn::from_patient_claim(&b.urn_oid()), Some(b.clone()));
        assert_eq!(
            Bsn::from_patient_claim("2.16.840.1.113883.2.4.6.3.999999151"),
            Some(b)
        );
        assert_eq!(
            Bsn::from_patient_claim("urn:oid:2.16.840.1.113883.2.4.6.3.999999152"),
            None
        );
        assert_eq!(Bsn::from_patient_claim("999999151"), None);
    }

    #[test]
    fn organisation_forms() {
        let ura = OrgId::Ura("12345678".into());
        let agb = OrgId::Agb("44446666".into());
        assert_eq!(
            parse_org("urn:oid:2.16.528.1.1007.3.3.12345678", IdScheme::Agb),
            Some(ura.clone())
        );
        assert_eq!(
            parse_org("2.16.528.1.1007.3.3.12345678", IdScheme::Agb),
            Some(ura.clone())
        );
        assert_eq!(parse_org("12345678", IdScheme::Ura), Some(ura.clone()));
        assert_eq!(
            parse_org("2.16.840.1.113883.2.4.6.1.44446666", IdScheme::Ura),
            Some(agb.clone())
        );
        assert_eq!(parse_org("44446666", IdScheme::Agb), Some(agb.clone()));
        assert_eq!(parse_org("urn:oid:44446666", IdScheme::Agb), None);
        assert_eq!(
            parse_org("2.16.528.1.1007.3.3.1234567", IdScheme::Ura),
            None
        );
        assert_eq!(
            parse_org("2.16.528.1.1007.3.3.12345678.1", IdScheme::Ura),
            None
        );
        assert_eq!(org_claim(&ura), "urn:oid:2.16.528.1.1007.3.3.12345678");
        assert_eq!(org_claim(&agb), "2.16.840.1.113883.2.4.6.1.44446666");
    }
}
