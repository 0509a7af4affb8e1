//! The value rules shared by the request-context headers, the `AORTA-ID`
//! members and the `X-ZV-Context` claims. Each accepted value is printable
//! ASCII without spaces, so it can go into a header, the audit trail and a
//! log line as it is.

/// Longest request or correlation id. Zorgviewer sends 12-character NanoIDs
/// (spec §4); ids are validated leniently: 1 to 64 characters of
/// `A-Za-z0-9_-`.
pub const MAX_ID_LEN: usize = 64;
/// Longest user id (`X-ZV-Subject-Id`, `usr`, `subject_id`).
pub const MAX_SUBJECT_ID_LEN: usize = 128;
/// Longest role (`X-ZV-Subject-Role`, `rol`, `subject_role`), a SNOMED code
/// in practice.
pub const MAX_ROLE_LEN: usize = 64;
/// Longest organisation OID, without `urn:oid:`.
pub const MAX_OID_LEN: usize = 128;

/// A request or correlation id: 1 to 64 characters of `A-Za-z0-9_-`.
pub fn is_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A user id: 1 to 128 visible ASCII characters.
pub fn is_subject_id(s: &str) -> bool {
    (1..=MAX_SUBJECT_ID_LEN).contains(&s.len()) && visible(s)
}

/// A role: 1 to 64 visible ASCII characters.
pub fn is_role(s: &str) -> bool {
    (1..=MAX_ROLE_LEN).contains(&s.len()) && visible(s)
}

/// A URA: 8 digits.
pub fn is_ura(s: &str) -> bool {
    crate::ids::is_digits(s, 8)
}

/// `s` without a leading `urn:oid:` (any case).
pub fn strip_urn_oid(s: &str) -> &str {
    const PREFIX: &str = "urn:oid:";
    match s.get(..PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
        _ => s,
    }
}

/// The bare OID of `s` (`urn:oid:` stripped), when it is one: at most 128
/// characters, at least two arcs, each arc digits without a leading zero
/// (so two equal OIDs are equal strings).
pub fn bare_oid(s: &str) -> Option<&str> {
    let oid = strip_urn_oid(s);
    let well_formed = oid.len() <= MAX_OID_LEN
        && oid.split('.').count() >= 2
        && oid.split('.').all(|arc| {
            !arc.is_empty()
                && arc.bytes().all(|b| b.is_ascii_digit())
                && (arc == "0" || !arc.starts_with('0'))
        });
    well_formed.then_some(oid)
}

fn visible(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nanoid_like_and_at_most_64_characters() {
        for good in ["1b9d6bCd-bBf", "H54f_8b9d6bC", "a", &"x".repeat(64)] {
            assert!(is_id(good), "{good:?}");
        }
        let too_long = "x".repeat(65);
        for bad in ["", "a.b", "a b", "a/b", "é", "a;b", too_long.as_str()] {
            assert!(!is_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn subject_ids_and_roles_are_bounded_visible_ascii() {
        assert!(is_subject_id("smart-Practitioner-71614502"));
        assert!(is_subject_id(&"u".repeat(128)));
        assert!(!is_subject_id(&"u".repeat(129)));
        assert!(is_role("223366009"));
        assert!(!is_role(&"1".repeat(65)));
        for bad in ["", "a b", "a\tb", "\u{7f}", "é"] {
            assert!(!is_subject_id(bad) && !is_role(bad), "{bad:?}");
        }
    }

    #[test]
    fn oids_lose_their_urn_prefix_and_must_be_canonical() {
        for (given, bare) in [
            ("2.16.840.1.113883.2.4.3.8", "2.16.840.1.113883.2.4.3.8"),
            (
                "urn:oid:2.16.840.1.113883.2.4.3.8",
                "2.16.840.1.113883.2.4.3.8",
            ),
            (
                "URN:OID:2.16.528.1.1007.3.3.15123",
                "2.16.528.1.1007.3.3.15123",
            ),
            ("0.0", "0.0"),
        ] {
            assert_eq!(bare_oid(given), Some(bare), "{given:?}");
        }
        let long = format!("1.{}", "2".repeat(127));
        for bad in [
            "",
            "2",
            "urn:oid:",
            "2..16",
            "2.16.",
            ".2.16",
            "2.016",
            "2.16.a",
            "urn:uuid:2.16",
            "2.16 ",
            long.as_str(),
        ] {
            assert_eq!(bare_oid(bad), None, "{bad:?}");
        }
        assert_eq!(strip_urn_oid("urn:oid:x"), "x");
        assert_eq!(strip_urn_oid("urn:oi"), "urn:oi");
        assert_eq!(strip_urn_oid("é"), "é");
    }

    #[test]
    fn uras_are_eight_digits() {
        assert!(is_ura("12345678"));
        for bad in ["1234567", "123456789", "1234567a", ""] {
            assert!(!is_ura(bad), "{bad:?}");
        }
    }
}
