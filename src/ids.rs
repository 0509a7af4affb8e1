//! Dutch identifiers: BSN (11-test), URA and AGB organisation ids in their
//! OID, `urn:oid:` and plain forms, and the patient OID.

use crate::config::{AGB_OID_ROOT, IdScheme, OrgId, URA_OID_ROOT};

/// OID root of the BSN.
pub const BSN_OID_ROOT: &str = "2.16.840.1.113883.2.4.6.3";
/// FHIR identifier system of the BSN.
pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
/// FHIR identifier system of the URA.
pub const URA_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/ura";
/// FHIR identifier system for URIs (`urn:uuid:`, `urn:oid:`).
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

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

impl std::fmt::Debug for Bsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bsn(***)")
    }
}

/// Parses an organisation as partners write it in claims: bare OID,
/// `urn:oid:` OID (URA or AGB root), or the plain 8-digit number, which is read
/// in `plain_scheme`.
pub fn parse_org(text: &str, plain_scheme: IdScheme) -> Option<OrgId> {
    let t = text.trim();
    let oid = t.strip_prefix("urn:oid:").unwrap_or(t);
    let digits8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit());
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

#[cfg(test)]
mod tests {
    use super::*;

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
