//! Who a certificate names: URA from a UZI server certificate, Subject
//! serialNumber from a PKIoverheid certificate, DNS names, and the SHA-256 of
//! the DER; plus the selectors (`NP_PARTNER_<NAME>_CERT`) that map a
//! certificate to a configured partner, optionally only when a pinned CA
//! certificate issued it ([`super::issuer`]).
//!
//! Only call [`peer_identity`] on a certificate the TLS layer has verified:
//! these fields are as trustworthy as the CA that signed them. Every CA in
//! the trust bundle can therefore assert any URA or serialNumber, which is
//! why `NP_TLS_TRUST` should hold only the UZI and PKIoverheid hierarchies.

use std::fmt;
use std::str::FromStr;

use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::PkiError;
use super::issuer::IssuerCheck;
use crate::util::b64;

/// `otherName` type-id of the UZI-register name in the SAN (spec §11.2).
pub const UZI_OTHER_NAME_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.5.5");
/// X.520 `serialNumber` attribute (PKIoverheid OIN/HRN, spec §11.3).
pub const SERIAL_NUMBER_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");

/// Longest UZI otherName value or Subject serialNumber we look at.
const MAX_NAME_LEN: usize = 256;

/// Identity fields of an end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the certificate's DER.
    pub sha256: [u8; 32],
    /// The URA (UZI abonneenummer, 8 digits) from a well-formed UZI otherName.
    pub ura: Option<String>,
    /// The Subject `serialNumber` (OIN or HRN for PKIoverheid), when exactly one is present.
    pub serial_number: Option<String>,
    /// DNS names from the SAN, as written (printable ASCII only).
    pub dns_names: Vec<String>,
    /// All fields of the UZI otherName, when well formed.
    pub uzi: Option<UziName>,
}

impl PeerIdentity {
    /// Lower-case hex of [`PeerIdentity::sha256`], for logs and `sha256:` selectors.
    pub fn fingerprint(&self) -> String {
        b64::hex(&self.sha256)
    }
}

/// The UZI-register name from SAN `otherName` 2.5.5.5:
/// `<CA OID>-<version>-<UZI number>-<pass type>-<URA>-<role>-<AGB>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UziName {
    /// OID of the issuing UZI CA, e.g. `2.16.528.1.1003.1.3.5.5.5` (server certificates).
    pub ca_oid: String,
    pub version: String,
    pub uzi_number: String,
    /// `S` for server certificates.
    pub pass_type: String,
    /// Abonneenummer: always 8 digits here.
    pub ura: String,
    pub role: String,
    pub agb: String,
}

impl UziName {
    /// Parses the otherName value. The first separator may be `-` or `:`
    /// (both occur in published material); the rest are `-`. Exactly seven
    /// non-empty fields, a dotted numeric CA OID and an 8-digit URA are
    /// required; anything else yields `None` rather than a guess.
    pub fn parse(value: &str) -> Option<Self> {
        if value.len() > MAX_NAME_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let first = value.find(['-', ':'])?;
        let ca_oid = &value[..first];
        let rest: Vec<&str> = value[first + 1..].split('-').collect();
        let [version, uzi_number, pass_type, ura, role, agb] = rest.as_slice() else {
            return None;
        };
        let oid_ok = ca_oid
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
            && ca_oid.contains('.');
        let fields = [version, uzi_number, pass_type, ura, role, agb];
        if !oid_ok || fields.iter().any(|f| f.is_empty()) || !is_ura(ura) {
            return None;
        }
        Some(UziName {
            ca_oid: ca_oid.to_string(),
            version: version.to_string(),
            uzi_number: uzi_number.to_string(),
            pass_type: pass_type.to_string(),
            ura: ura.to_string(),
            role: role.to_string(),
            agb: agb.to_string(),
        })
    }
}

/// Reads the identity fields of an end-entity certificate (DER).
///
/// Fails only when the certificate or its SAN extension does not decode. A
/// malformed UZI otherName, a URA that is not 8 digits, or two UZI names
/// with different URAs give `ura: None`; several Subject serialNumbers give
/// `serial_number: None`.
pub fn peer_identity(end_entity_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let sha256 = certificate_sha256(end_entity_der);
    let cert = x509_cert::Certificate::from_der(end_entity_der).map_err(|e| {
        PkiError::PeerCertificate {
            reason: format!("does not decode: {e}"),
        }
    })?;
    let tbs = cert.tbs_certificate();

    let mut dns_names = Vec::new();
    let mut uzi_names: Vec<Option<UziName>> = Vec::new();
    let san = tbs
        .get_extension::<SubjectAltName>()
        .map_err(|e| PkiError::PeerCertificate {
            reason: format!("subjectAltName does not decode: {e}"),
        })?;
    if let Some((_, SubjectAltName(names))) = san {
        for name in names {
            match name {
                GeneralName::DnsName(dns) => {
                    let dns = dns.as_str();
                    if !dns.is_empty() && dns.bytes().all(|b| b.is_ascii_graphic()) {
                        dns_names.push(dns.to_string());
                    }
                }
                GeneralName::OtherName(other) if other.type_id == UZI_OTHER_NAME_OID => {
                    let value = directory_string(other.value.tag(), other.value.value());
                    uzi_names.push(value.and_then(|v| UziName::parse(&v)));
                }
                _ => {}
            }
        }
    }
    // Several UZI names are accepted only when they agree.
    let uzi = match uzi_names.split_first() {
        Some((first @ Some(_), rest)) if rest.iter().all(|u| u == first) => first.clone(),
        _ => None,
    };

    let mut serials = tbs
        .subject()
        .iter()
        .filter(|atv| atv.oid == SERIAL_NUMBER_OID)
        .map(|atv| directory_string(atv.value.tag(), atv.value.value()));
    let serial_number = match (serials.next(), serials.next()) {
        (Some(Some(s)), None) if !s.is_empty() => Some(s),
        _ => None,
    };

    Ok(PeerIdentity {
        sha256,
        ura: uzi.as_ref().map(|u| u.ura.clone()),
        serial_number,
        dns_names,
        uzi,
    })
}

/// Which client certificate belongs to a partner (`NP_PARTNER_<NAME>_CERT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSelector {
    /// `ura:<8 digits>`: the URA in a UZI server certificate's SAN.
    Ura(String),
    /// `serial:<value>`: the Subject serialNumber, compared exactly.
    Serial(String),
    /// `dns:<name>`: a DNS name in the SAN, compared case-insensitively and
    /// literally (`dns:*.example.nl` matches only the wildcard entry itself).
    Dns(String),
    /// `sha256:<64 hex digits>` (`:` separators allowed): the whole certificate.
    Sha256([u8; 32]),
    /// `<selector>@sha256:<64 hex digits>`: what `subject` selects, and only
    /// when issued directly by the CA certificate with that SHA-256 (of its
    /// DER), sent by the peer in its chain or held in the trust bundle.
    IssuedBy {
        subject: Box<CertSelector>,
        ca_sha256: [u8; 32],
    },
}

const SELECTOR_FORMS: &str = "expected ura:<8 digits>, serial:<Subject serialNumber>, \
                              dns:<name> or sha256:<64 hex digits>, optionally followed by \
                              @sha256:<64 hex digits of the issuing CA certificate>";

/// What separates a selector from the pin of its issuing CA.
const CA_PIN: &str = "@sha256:";

impl FromStr for CertSelector {
    type Err = PkiError;

    /// A selector, with the issuing CA pinned when it ends in
    /// `@sha256:<hex>` (a Subject serialNumber may itself hold `@`: only the
    /// last `@sha256:` counts).
    fn from_str(input: &str) -> Result<Self, PkiError> {
        let Some(at) = input.rfind(CA_PIN) else {
            return subject_selector(input, input);
        };
        let fail = |reason: &str| PkiError::Selector {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let subject = subject_selector(&input[..at], input)?;
        let ca_sha256 = b64::parse_hex(&input[at + CA_PIN.len()..])
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                fail("the issuing CA is pinned as @sha256:<64 hex digits of its certificate's DER>")
            })?;
        Ok(CertSelector::IssuedBy {
            subject: Box::new(subject),
            ca_sha256,
        })
    }
}

/// A selector without a CA pin; errors name the whole `input`.
fn subject_selector(selector: &str, input: &str) -> Result<CertSelector, PkiError> {
    let fail = |reason: &str| PkiError::Selector {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let Some((kind, value)) = selector.split_once(':') else {
        return Err(fail(SELECTOR_FORMS));
    };
    match kind {
        "ura" if is_ura(value) => Ok(CertSelector::Ura(value.to_string())),
        "ura" => Err(fail("expected ura:<8 digits>, e.g. ura:90000123")),
        "serial"
            if !value.is_empty()
                && value.len() <= MAX_NAME_LEN
                && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
                && value.trim() == value =>
        {
            Ok(CertSelector::Serial(value.to_string()))
        }
        "serial" => Err(fail(
            "expected serial:<Subject serialNumber>: 1 to 256 printable ASCII characters",
        )),
        "dns" if is_dns_name(value) => Ok(CertSelector::Dns(
            value.trim_end_matches('.').to_ascii_lowercase(),
        )),
        "dns" => Err(fail(
            "expected dns:<name>: letters, digits, '-', '.', '_' or a leading '*.'",
        )),
        "sha256" => match b64::parse_hex(value) {
            Some(bytes) => <[u8; 32]>::try_from(bytes)
                .map(CertSelector::Sha256)
                .map_err(|_| fail("expected sha256:<64 hex digits> (':' separators allowed)")),
            None => Err(fail(
                "expected sha256:<64 hex digits> (':' separators allowed)",
            )),
        },
        _ => Err(fail(SELECTOR_FORMS)),
    }
}

impl fmt::Display for CertSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertSelector::Ura(u) => write!(f, "ura:{u}"),
            CertSelector::Serial(s) => write!(f, "serial:{s}"),
            CertSelector::Dns(d) => write!(f, "dns:{d}"),
            CertSelector::Sha256(h) => write!(f, "sha256:{}", b64::hex(h)),
            CertSelector::IssuedBy { subject, ca_sha256 } => {
                write!(f, "{subject}{CA_PIN}{}", b64::hex(ca_sha256))
            }
        }
    }
}

impl CertSelector {
    /// True when the certificate described by `id` is the one selected;
    /// `issuer` answers for a pinned CA (see [`IssuerCheck::issued_by`]).
    pub fn matches(&self, id: &PeerIdentity, issuer: &IssuerCheck<'_>) -> bool {
        match self {
            CertSelector::Ura(u) => id.ura.as_deref() == Some(u.as_str()),
            CertSelector::Serial(s) => id.serial_number.as_deref() == Some(s.as_str()),
            CertSelector::Dns(d) => id
                .dns_names
                .iter()
                .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(d)),
            CertSelector::Sha256(h) => &id.sha256 == h,
            CertSelector::IssuedBy { subject, ca_sha256 } => {
                subject.matches(id, issuer) && issuer.issued_by(ca_sha256)
            }
        }
    }

    /// The SHA-256 of the pinned issuing CA certificate, when there is a pin.
    pub fn ca_sha256(&self) -> Option<&[u8; 32]> {
        match self {
            CertSelector::IssuedBy { ca_sha256, .. } => Some(ca_sha256),
            _ => None,
        }
    }
}

/// SHA-256 of a certificate's DER: what `sha256:` selectors, CA pins and
/// certificate-bound tokens compare.
pub fn certificate_sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn is_ura(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_dns_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    let body = s.strip_prefix("*.").unwrap_or(s);
    !body.is_empty()
        && s.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The text of an IA5String, UTF8String or PrintableString whose characters
/// are all printable ASCII or space; `None` for any other type or content.
fn directory_string(tag: Tag, value: &[u8]) -> Option<String> {
    if !matches!(tag, Tag::Ia5String | Tag::Utf8String | Tag::PrintableString)
        || value.len() > MAX_NAME_LEN
        || !value.iter().all(|b| *b == b' ' || b.is_ascii_graphic())
    {
        return None;
    }
    String::from_utf8(value.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::issuer::CaCerts;
    use crate::pki::throwaway::{Ca, LeafSpec, OtherNameEncoding, UziOtherName};

    const URA: &str = "90000123";

    fn identity(spec: LeafSpec) -> PeerIdentity {
        let ca = Ca::new("identity test ca").unwrap();
        let leaf = ca.issue(&spec).unwrap();
        peer_identity(&leaf.der).unwrap()
    }

    fn with_uzi(value: &str, encoding: OtherNameEncoding) -> PeerIdentity {
        identity(LeafSpec {
            uzi: Some(UziOtherName {
                value: value.to_string(),
                encoding,
            }),
            ..LeafSpec::localhost("uzi")
        })
    }

    #[test]
    fn ura_from_uzi_other_name_in_every_string_type() {
        for encoding in [
            OtherNameEncoding::Ia5String,
            OtherNameEncoding::Utf8String,
            OtherNameEncoding::PrintableString,
        ] {
            let name = UziOtherName::server(URA, "12345678").with_encoding(encoding);
            let ca = Ca::new("identity test ca").unwrap();
            let leaf = ca
                .issue(&LeafSpec {
                    uzi: Some(name.clone()),
                    ..LeafSpec::localhost("uzi")
                })
                .unwrap();
            // The value really is written with the intended string tag.
            let tag = match encoding {
                OtherNameEncoding::Ia5String => 0x16,
                OtherNameEncoding::Utf8String => 0x0c,
                _ => 0x13,
            };
            let mut tlv = vec![tag, name.value.len() as u8];
            tlv.extend_from_slice(name.value.as_bytes());
            assert!(
                leaf.der.windows(tlv.len()).any(|w| w == tlv),
                "{encoding:?}"
            );
            let id = peer_identity(&leaf.der).unwrap();
            assert_eq!(id.ura.as_deref(), Some(URA), "{encoding:?}");
            let uzi = id.uzi.unwrap();
            assert_eq!(uzi.ca_oid, "2.16.528.1.1003.1.3.5.5.5");
            assert_eq!(uzi.uzi_number, "12345678");
            assert_eq!(uzi.pass_type, "S");
            assert_eq!(uzi.role, "00.000");
            assert_eq!(uzi.agb, "00000000");
            // The SAN built by hand for IA5/Printable still carries the DNS name.
            assert_eq!(id.dns_names, vec!["localhost".to_string()], "{encoding:?}");
        }
    }

    #[test]
    fn colon_as_first_separator() {
        let id = with_uzi(
            "2.16.528.1.1003.1.3.5.5.2:1-12345678-S-90000123-00.000-00000000",
            OtherNameEncoding::Ia5String,
        );
        assert_eq!(id.ura.as_deref(), Some(URA));
    }

    #[test]
    fn malformed_uzi_values_give_no_ura() {
        for bad in [
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-9000012-00.000-00000000", // 7-digit URA
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-900001234-00.000-00000000", // 9 digits
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-9000012x-00.000-00000000",
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-90000123-00.000", // 6 fields
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-90000123-00.000-00000000-x", // 8 fields
            "2.16.528.1.1003.1.3.5.5.5-1-12345678--90000123-00.000-00000000", // empty field
            "uzi-1-12345678-S-90000123-00.000-00000000",              // not an OID
            "2.16.528.1.1003.1.3.5.5.5:1:12345678:S:90000123:00.000:00000000", // ':' throughout
            "2.16.528.1.1003.1.3.5.5.5-1-12345678-S-90000123-00.000-0000 0000",
            "",
        ] {
            let id = with_uzi(bad, OtherNameEncoding::Ia5String);
            assert_eq!(id.ura, None, "{bad}");
            assert_eq!(id.uzi, None, "{bad}");
        }
    }

    #[test]
    fn other_name_with_a_non_string_value_gives_no_ura() {
        let id = with_uzi("90000123", OtherNameEncoding::MalformedInteger);
        assert_eq!(id.ura, None);
        // The certificate is still usable by its other fields.
        assert_eq!(id.dns_names, vec!["localhost".to_string()]);
    }

    #[test]
    fn uzi_name_parser_edges() {
        assert!(UziName::parse("2.16.528-1-1-S-12345678-00.000-00000000").is_some());
        assert!(UziName::parse("2-1-1-S-12345678-00.000-00000000").is_none());
        assert!(UziName::parse("2..5-1-1-S-12345678-00.000-00000000").is_none());
        assert!(UziName::parse(&"1".repeat(300)).is_none());
        assert!(UziName::parse("2.5-1-1-S-１２３４５６７８-00.000-00000000").is_none());
    }

    #[test]
    fn serial_number_dns_and_fingerprint() {
        let ca = Ca::new("identity test ca").unwrap();
        let leaf = ca
            .issue(&LeafSpec {
                subject_serial_number: Some("00000001003214345000".into()),
                dns_names: vec!["np.hospital.example".into(), "localhost".into()],
                ..LeafSpec::localhost("pkio")
            })
            .unwrap();
        let id = peer_identity(&leaf.der).unwrap();
        assert_eq!(id.serial_number.as_deref(), Some("00000001003214345000"));
        assert_eq!(id.dns_names, vec!["np.hospital.example", "localhost"]);
        assert_eq!(id.ura, None);
        let expected = ring::digest::digest(&ring::digest::SHA256, &leaf.der);
        assert_eq!(&id.sha256[..], expected.as_ref());
        assert_eq!(id.fingerprint().len(), 64);

        let plain = peer_identity(&ca.issue(&LeafSpec::localhost("p")).unwrap().der).unwrap();
        assert_eq!(plain.serial_number, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ca = Ca::new("identity test ca").unwrap();
        let der = ca.issue(&LeafSpec::localhost("t")).unwrap().der.to_vec();
        for len in 0..der.len() {
            assert!(peer_identity(&der[..len]).is_err(), "prefix {len}");
        }
        let err = peer_identity(b"\x30\x03\x02\x01\x00")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("peer certificate: does not decode"),
            "{err}"
        );
    }

    #[test]
    fn selector_parsing() {
        let hex = "ab".repeat(32);
        let colons = ["AB"; 32].join(":");
        assert_eq!(
            "ura:90000123".parse::<CertSelector>().unwrap(),
            CertSelector::Ura(URA.into())
        );
        assert_eq!(
            "serial:00000001003214345000"
                .parse::<CertSelector>()
                .unwrap(),
            CertSelector::Serial("00000001003214345000".into())
        );
        assert_eq!(
            "dns:NP.Hospital.Example.".parse::<CertSelector>().unwrap(),
            CertSelector::Dns("np.hospital.example".into())
        );
        assert_eq!(
            format!("sha256:{hex}").parse::<CertSelector>().unwrap(),
            CertSelector::Sha256([0xab; 32])
        );
        assert_eq!(
            format!("sha256:{colons}").parse::<CertSelector>().unwrap(),
            CertSelector::Sha256([0xab; 32])
        );
        for s in ["ura:90000123", "serial:X 1", "dns:*.example.nl"] {
            assert_eq!(s.parse::<CertSelector>().unwrap().to_string(), s);
        }
        assert_eq!(
            CertSelector::Sha256([0xab; 32]).to_string(),
            format!("sha256:{hex}")
        );
    }

    #[test]
    fn selector_errors_say_what_is_expected() {
        let cases = [
            ("", "expected ura:<8 digits>, serial:"),
            ("90000123", "expected ura:<8 digits>, serial:"),
            ("urn:90000123", "expected ura:<8 digits>, serial:"),
            ("URA:90000123", "expected ura:<8 digits>, serial:"),
            ("ura:9000012", "expected ura:<8 digits>"),
            ("ura:900001234", "expected ura:<8 digits>"),
            ("ura:9000012a", "expected ura:<8 digits>"),
            ("serial:", "expected serial:"),
            ("serial: 123", "expected serial:"),
            ("serial:12\n3", "expected serial:"),
            ("dns:", "expected dns:"),
            ("dns:a..b", "expected dns:"),
            ("dns:a b", "expected dns:"),
            ("dns:*", "expected dns:"),
            ("sha256:abcd", "expected sha256:<64 hex digits>"),
            ("sha256:", "expected sha256:<64 hex digits>"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<CertSelector>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expected), "{input}: {msg}");
            assert!(msg.starts_with("certificate selector "), "{msg}");
        }
        let bad_hex = format!("sha256:{}", "zz".repeat(32));
        assert!(bad_hex.parse::<CertSelector>().is_err());
    }

    #[test]
    fn selector_matching() {
        let id = PeerIdentity {
            sha256: [7; 32],
            ura: Some(URA.into()),
            serial_number: Some("00000001003214345000".into()),
            dns_names: vec!["NP.hospital.example".into(), "*.wild.example".into()],
            uzi: None,
        };
        let trusted = CaCerts::default();
        let no_chain = IssuerCheck::new(&[], &trusted);
        let yes = |s: &str| s.parse::<CertSelector>().unwrap().matches(&id, &no_chain);
        assert!(yes("ura:90000123"));
        assert!(!yes("ura:90000124"));
        assert!(yes("serial:00000001003214345000"));
        assert!(!yes("serial:0000000100321434500"));
        assert!(yes("dns:np.hospital.example"));
        assert!(yes("dns:np.hospital.example."));
        assert!(!yes("dns:hospital.example"));
        assert!(!yes("dns:a.wild.example"));
        assert!(yes("dns:*.wild.example"));
        assert!(yes(&format!("sha256:{}", "07".repeat(32))));
        assert!(!yes(&format!("sha256:{}", "08".repeat(32))));
        let none = PeerIdentity {
            ura: None,
            serial_number: None,
            ..id.clone()
        };
        assert!(
            !"ura:90000123"
                .parse::<CertSelector>()
                .unwrap()
                .matches(&none, &no_chain)
        );
        assert!(
            !"serial:x"
                .parse::<CertSelector>()
                .unwrap()
                .matches(&none, &no_chain)
        );
        // A pinned CA that is nowhere to be found: no match.
        assert!(!yes(&format!("ura:90000123@sha256:{}", "07".repeat(32))));
    }

    #[test]
    fn selector_with_a_pinned_ca() {
        let hex = "ab".repeat(32);
        let pinned = |s: CertSelector| CertSelector::IssuedBy {
            subject: Box::new(s),
            ca_sha256: [0xab; 32],
        };
        let cases = [
            (
                format!("ura:90000123@sha256:{hex}"),
                pinned(CertSelector::Ura(URA.into())),
            ),
            (
                format!(
                    "serial:00000001003214345000@sha256:{}",
                    ["AB"; 32].join(":")
                ),
                pinned(CertSelector::Serial("00000001003214345000".into())),
            ),
            (
                format!("dns:np.hospital.example@sha256:{hex}"),
                pinned(CertSelector::Dns("np.hospital.example".into())),
            ),
            (
                format!("sha256:{}@sha256:{hex}", "cd".repeat(32)),
                pinned(CertSelector::Sha256([0xcd; 32])),
            ),
            // Only the last @sha256: is the pin; a serialNumber may hold '@'.
            (
                format!("serial:a@b@sha256:{hex}"),
                pinned(CertSelector::Serial("a@b".into())),
            ),
            ("serial:a@b".into(), CertSelector::Serial("a@b".into())),
        ];
        for (input, want) in cases {
            let got = input.parse::<CertSelector>().unwrap();
            assert_eq!(got, want, "{input}");
            assert_eq!(got.ca_sha256().is_some(), input.contains("@sha256:"));
            // Display round-trips.
            assert_eq!(got.to_string().parse::<CertSelector>().unwrap(), got);
        }
        assert_eq!(
            format!("ura:90000123@sha256:{hex}")
                .parse::<CertSelector>()
                .unwrap()
                .to_string(),
            format!("ura:90000123@sha256:{hex}")
        );
        assert_eq!(CertSelector::Ura(URA.into()).ca_sha256(), None);
        for (input, expected) in [
            (
                format!("ura:90000123@sha256:{}", "ab".repeat(31)),
                "@sha256:<64 hex digits",
            ),
            ("ura:90000123@sha256:".to_string(), "@sha256:<64 hex digits"),
            (
                format!("ura:90000123@sha256:{}", "zz".repeat(32)),
                "@sha256:<64 hex digits",
            ),
            (
                format!("ura:9000012@sha256:{hex}"),
                "expected ura:<8 digits>",
            ),
            (format!("@sha256:{hex}"), "expected ura:<8 digits>, serial:"),
            (
                format!("ura:90000123@sha256:{hex}@sha256:{hex}"),
                "expected ura:<8 digits>",
            ),
            ("ura:90000123@x".to_string(), "expected ura:<8 digits>"),
        ] {
            let msg = input.parse::<CertSelector>().unwrap_err().to_string();
            assert!(msg.contains(expected), "{input}: {msg}");
            assert!(msg.contains(&input), "the whole selector is named: {msg}");
        }
    }

    #[test]
    fn a_pinned_selector_matches_only_certificates_of_that_ca() {
        let uzi_ca = Ca::new("uzi server ca").unwrap();
        let other_ca = Ca::new("another trusted ca").unwrap();
        let spec = LeafSpec {
            uzi: Some(UziOtherName::server(URA, "12345678")),
            ..LeafSpec::localhost("uzi")
        };
        let ours = uzi_ca.issue(&spec).unwrap();
        let theirs = other_ca.issue(&spec).unwrap();
        let trusted = CaCerts::new(vec![uzi_ca.cert_der().clone(), other_ca.cert_der().clone()]);
        let pin = b64::hex(&certificate_sha256(uzi_ca.cert_der()));
        let plain: CertSelector = "ura:90000123".parse().unwrap();
        let pinned: CertSelector = format!("ura:90000123@sha256:{pin}").parse().unwrap();
        let wrong_ura: CertSelector = format!("ura:90000124@sha256:{pin}").parse().unwrap();
        let matches = |sel: &CertSelector, leaf: &crate::pki::throwaway::Issued| {
            let chain = [leaf.der.clone()];
            sel.matches(
                &peer_identity(&leaf.der).unwrap(),
                &IssuerCheck::new(&chain, &trusted),
            )
        };
        assert!(matches(&plain, &ours) && matches(&plain, &theirs));
        assert!(matches(&pinned, &ours));
        assert!(!matches(&pinned, &theirs), "same URA, another CA");
        assert!(!matches(&wrong_ura, &ours));
    }
}
