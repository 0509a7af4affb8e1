//! A throwaway PKI for `np-agent demo` and the integration tests: CAs,
//! PKIoverheid/UZI-shaped leaf certificates, CRLs, and the PEM files an agent
//! loads. Keys are ECDSA (or Ed25519) generated in memory by rcgen on ring.
//!
//! Nothing here is for production use: there is no key protection beyond
//! mode 0600 files, and CA keys live only as long as the [`Ca`] value.
//!
//! ```no_run
//! # fn main() -> Result<(), np_agent::pki::PkiError> {
//! use np_agent::pki::throwaway::{Ca, LeafSpec, UziOtherName, write_files};
//! let ca = Ca::new("demo ca")?;
//! let leaf = ca.issue(&LeafSpec {
//!     uzi: Some(UziOtherName::server("90000123", "12345678")),
//!     ..LeafSpec::localhost("hospital a")
//! })?;
//! let files = write_files(std::path::Path::new("/tmp/demo/a"), &leaf, &[&ca])?;
//! # let _ = files; Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::{Add, Sub};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    CustomExtension, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, OtherNameValue, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use x509_cert::der::asn1::{Any, Ia5String};
use x509_cert::der::{Encode, Tag};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};

use super::identity::UZI_OTHER_NAME_OID;
use super::{PkiError, TlsFiles};
use crate::util::{durable, random, time};

/// OID of the subjectAltName extension.
const SAN_OID: &[u64] = &[2, 5, 29, 17];
/// OID of the X.520 serialNumber attribute.
const SERIAL_NUMBER_OID: &[u64] = &[2, 5, 4, 5];
/// OID arc of the UZI server CA, the first field of a UZI server name.
const UZI_SERVER_CA_OID: &str = "2.16.528.1.1003.1.3.5.5.5";
/// Organisation written into every throwaway certificate, so none is mistaken for a real one.
const ORGANISATION: &str = "np-agent throwaway PKI";
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// A certificate authority with its key in memory: a root ([`Ca::new`]) or an
/// intermediate ([`Ca::intermediate`]).
pub struct Ca {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// PEM of the certificates between a leaf issued here and the root, this
    /// CA's first; empty for a root.
    intermediates_pem: String,
}

/// What to put into a leaf certificate. Start from [`LeafSpec::localhost`]
/// and override fields with struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject CN.
    pub common_name: String,
    /// Subject O, when set.
    pub organization: Option<String>,
    /// Subject serialNumber (PKIoverheid OIN/HRN style, e.g. 20 digits), when set.
    pub subject_serial_number: Option<String>,
    /// DNS names in the SAN.
    pub dns_names: Vec<String>,
    /// IP addresses in the SAN.
    pub ip_addresses: Vec<IpAddr>,
    /// UZI-register otherName (2.5.5.5) in the SAN, when set.
    pub uzi: Option<UziOtherName>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Key algorithm of the leaf.
    pub key: LeafKey,
}

/// Key algorithm of a generated leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeafKey {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

/// The SAN otherName 2.5.5.5 of a UZI certificate, with the ASN.1 string type
/// to write it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UziOtherName {
    pub value: String,
    pub encoding: OtherNameEncoding,
}

/// ASN.1 type of the otherName value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtherNameEncoding {
    /// IA5String, as real UZI certificates use (SAN built by hand).
    #[default]
    Ia5String,
    /// UTF8String, as rcgen writes otherNames.
    Utf8String,
    /// PrintableString (SAN built by hand).
    PrintableString,
    /// The value's bytes under an INTEGER tag: a malformed name, for tests.
    MalformedInteger,
}

/// A generated leaf certificate and its key.
#[derive(Clone)]
pub struct Issued {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf followed by the issuing intermediates, PEM: what `NP_TLS_CERT` holds.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf certificate, DER.
    pub der: CertificateDer<'static>,
    /// The certificate serial number (DER INTEGER content), for [`Ca::crl`].
    pub serial: Vec<u8>,
}

impl UziOtherName {
    /// A UZI server certificate name as issued by the UZI-register:
    /// `2.16.528.1.1003.1.3.5.5.5-1-<uzi_number>-S-<ura>-00.000-00000000`, IA5String.
    pub fn server(ura: &str, uzi_number: &str) -> Self {
        UziOtherName {
            value: format!("{UZI_SERVER_CA_OID}-1-{uzi_number}-S-{ura}-00.000-00000000"),
            encoding: OtherNameEncoding::Ia5String,
        }
    }

    /// The same name written as another ASN.1 string type.
    pub fn with_encoding(self, encoding: OtherNameEncoding) -> Self {
        UziOtherName { encoding, ..self }
    }
}

impl LeafSpec {
    /// CN `common_name`, O "np-agent throwaway PKI", SAN `DNS:localhost` and
    /// `IP:127.0.0.1`, an ECDSA P-256 key, valid from an hour ago for 90 days
    /// (beyond the 30 days before expiry in which doctor and the daemon warn).
    pub fn localhost(common_name: &str) -> Self {
        let now = time::now_unix();
        LeafSpec {
            common_name: common_name.to_string(),
            organization: Some(ORGANISATION.to_string()),
            subject_serial_number: None,
            dns_names: vec!["localhost".to_string()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            uzi: None,
            not_before: now - HOUR,
            not_after: now + 90 * DAY,
            key: LeafKey::EcdsaP256,
        }
    }
}

impl Ca {
    /// A new self-signed root CA with an ECDSA P-256 key, valid from an hour
    /// ago for two years.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generate ca key"))?;
        let params = ca_params(name, BasicConstraints::Unconstrained)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rcgen_error("sign ca"))?;
        Ok(Ca {
            name: name.to_string(),
            issuer,
            intermediates_pem: String::new(),
        })
    }

    /// A new intermediate CA below this one (path length 0: it issues leaves only).
    pub fn intermediate(&self, name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generate intermediate key"))?;
        let params = ca_params(name, BasicConstraints::Constrained(0))?;
        let issuer = CertifiedIssuer::signed_by(params, key, &*self.issuer)
            .map_err(rcgen_error("sign intermediate"))?;
        let intermediates_pem = format!("{}{}", issuer.pem(), self.intermediates_pem);
        Ok(Ca {
            name: name.to_string(),
            issuer,
            intermediates_pem,
        })
    }

    /// The CA's name (its CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// The CA certificate, PEM: what goes into a trust bundle (for a root).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a leaf certificate for TLS server and client use (EKU serverAuth
    /// and clientAuth, key usage digitalSignature) with a fresh key and a
    /// random 128-bit serial number.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let alg = match spec.key {
            LeafKey::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            LeafKey::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            LeafKey::Ed25519 => &rcgen::PKCS_ED25519,
        };
        let key = KeyPair::generate_for(alg).map_err(rcgen_error("generate leaf key"))?;
        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        if let Some(org) = &spec.organization {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        if let Some(serial_number) = &spec.subject_serial_number {
            let value = PrintableString::try_from(serial_number.as_str())
                .map_err(rcgen_error("subject serialNumber"))?;
            dn.push(
                DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
                DnValue::PrintableString(value),
            );
        }
        params.distinguished_name = dn;
        match &spec.uzi {
            Some(uzi) if uzi.encoding != OtherNameEncoding::Utf8String => {
                // rcgen writes otherNames only as UTF8String: build the whole
                // SAN extension ourselves so there is exactly one.
                let der = san_der(spec, uzi)?;
                params
                    .custom_extensions
                    .push(CustomExtension::from_oid_content(SAN_OID, der));
            }
            uzi => {
                params.subject_alt_names = rcgen_sans(spec)?;
                if let Some(uzi) = uzi {
                    params.subject_alt_names.push(SanType::OtherName((
                        oid_arcs(UZI_OTHER_NAME_OID),
                        OtherNameValue::Utf8String(uzi.value.clone()),
                    )));
                }
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = from_unix(rcgen::date_time_ymd(1970, 1, 1), spec.not_before);
        params.not_after = from_unix(rcgen::date_time_ymd(1970, 1, 1), spec.not_after);

        let cert = params
            .signed_by(&key, &*self.issuer)
            .map_err(rcgen_error("sign leaf"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        })
    }

    /// A CRL from this CA revoking `revoked_serials` (see [`Issued::serial`]),
    /// with the given `thisUpdate` and `nextUpdate` (Unix seconds), PEM.
    pub fn crl(
        &self,
        revoked_serials: &[&[u8]],
        this_update: i64,
        next_update: i64,
    ) -> Result<String, PkiError> {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let params = CertificateRevocationListParams {
            this_update: from_unix(epoch, this_update),
            next_update: from_unix(epoch, next_update),
            crl_number: SerialNumber::from(u64::try_from(this_update.max(1)).unwrap_or(1)),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: from_unix(epoch, this_update),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(rcgen_error("sign crl"))
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("name", &self.name)
            .field("intermediate", &!self.intermediates_pem.is_empty())
            .field("key", &"[secret]")
            .finish()
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &crate::util::b64::hex(&self.serial))
            .field("key_pem", &"[secret]")
            .finish_non_exhaustive()
    }
}

/// Writes an agent's TLS files into `dir` (created with mode 0700 when
/// missing): `cert.pem` (the chain), `key.pem` (mode 0600) and `trust.pem`
/// (the certificates of `trust`). Returns their paths, without a CRL directory.
pub fn write_files(dir: &Path, issued: &Issued, trust: &[&Ca]) -> Result<TlsFiles, PkiError> {
    durable::create_dir_all(dir).map_err(write_error)?;
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        trust: dir.join("trust.pem"),
        crl_dir: None,
    };
    let trust_pem: String = trust.iter().map(|ca| ca.cert_pem()).collect();
    // write_atomic creates every file with mode 0600.
    durable::write_atomic(&files.key, issued.key_pem.as_bytes()).map_err(write_error)?;
    durable::write_atomic(&files.cert, issued.chain_pem.as_bytes()).map_err(write_error)?;
    durable::write_atomic(&files.trust, trust_pem.as_bytes()).map_err(write_error)?;
    Ok(files)
}

/// Writes a CRL as `crl_dir/file_name` (the directory is created when
/// missing) and returns its path.
pub fn write_crl(crl_dir: &Path, file_name: &str, crl_pem: &str) -> Result<PathBuf, PkiError> {
    if file_name.is_empty() || file_name.contains('/') || file_name.starts_with('.') {
        return Err(PkiError::Throwaway {
            step: "write crl".into(),
            reason: format!("{file_name:?} is not a plain file name"),
        });
    }
    durable::create_dir_all(crl_dir).map_err(write_error)?;
    let path = crl_dir.join(file_name);
    durable::write_atomic(&path, crl_pem.as_bytes()).map_err(write_error)?;
    Ok(path)
}

fn ca_params(name: &str, constraints: BasicConstraints) -> Result<CertificateParams, PkiError> {
    let now = time::now_unix();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, ORGANISATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = from_unix(epoch, now - HOUR);
    params.not_after = from_unix(epoch, now + 2 * 365 * DAY);
    Ok(params)
}

fn rcgen_sans(spec: &LeafSpec) -> Result<Vec<SanType>, PkiError> {
    let mut sans = Vec::new();
    for dns in &spec.dns_names {
        let name =
            rcgen::string::Ia5String::try_from(dns.as_str()).map_err(rcgen_error("dns name"))?;
        sans.push(SanType::DnsName(name));
    }
    sans.extend(spec.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(sans)
}

/// The DER of a subjectAltName holding the spec's DNS names and IP addresses
/// and the UZI otherName written with its chosen tag.
fn san_der(spec: &LeafSpec, uzi: &UziOtherName) -> Result<Vec<u8>, PkiError> {
    let der_error = |e: x509_cert::der::Error| PkiError::Throwaway {
        step: "encode subjectAltName".into(),
        reason: e.to_string(),
    };
    let mut names = Vec::new();
    for dns in &spec.dns_names {
        names.push(GeneralName::DnsName(
            Ia5String::new(dns).map_err(der_error)?,
        ));
    }
    names.extend(spec.ip_addresses.iter().map(|ip| GeneralName::from(*ip)));
    let tag = match uzi.encoding {
        OtherNameEncoding::Ia5String => Tag::Ia5String,
        OtherNameEncoding::Utf8String => Tag::Utf8String,
        OtherNameEncoding::PrintableString => Tag::PrintableString,
        OtherNameEncoding::MalformedInteger => Tag::Integer,
    };
    names.push(GeneralName::OtherName(OtherName {
        type_id: UZI_OTHER_NAME_OID,
        value: Any::new(tag, uzi.value.as_bytes()).map_err(der_error)?,
    }));
    SubjectAltName(names).to_der().map_err(der_error)
}

fn oid_arcs(oid: x509_cert::der::asn1::ObjectIdentifier) -> Vec<u64> {
    oid.arcs().map(u64::from).collect()
}

/// 16 random bytes, positive and without a leading zero byte, so the DER
/// INTEGER content is exactly these bytes (CRLs compare serials bytewise).
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = random::bytes::<16>().map_err(|e| PkiError::Throwaway {
        step: "serial number".into(),
        reason: e.to_string(),
    })?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial.to_vec())
}

/// `epoch` (1970-01-01T00:00:00Z in rcgen's date type, from the `time` crate
/// we do not depend on directly) plus `unix` seconds, clamped to years
/// 1970..=9999 so the addition cannot overflow.
fn from_unix<T: Add<Duration, Output = T> + Sub<Duration, Output = T>>(epoch: T, unix: i64) -> T {
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    epoch + Duration::from_secs(unix.clamp(0, MAX).unsigned_abs())
}

fn rcgen_error(step: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |e| PkiError::Throwaway {
        step: step.into(),
        reason: e.to_string(),
    }
}

fn write_error(e: durable::DurableError) -> PkiError {
    PkiError::Throwaway {
        step: "write".into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::TlsMaterial;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_loadable_files_with_a_private_key_file() {
        let dir = std::env::temp_dir().join(format!("np-throwaway-{}", random::uuid_v4().unwrap()));
        let root = Ca::new("root").unwrap();
        let sub = root.intermediate("issuing").unwrap();
        let leaf = sub.issue(&LeafSpec::localhost("agent")).unwrap();
        let files = write_files(&dir, &leaf, &[&root]).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let m = TlsMaterial::load(&files).unwrap();
        assert_eq!(m.chain.len(), 2, "leaf and intermediate");
        assert_eq!(m.chain[1], *sub.cert_der());
        assert!(write_crl(&dir, "../x.crl", "").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let ca = Ca::new("ca").unwrap();
        let a = ca.issue(&LeafSpec::localhost("a")).unwrap();
        let b = ca.issue(&LeafSpec::localhost("b")).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_eq!(a.serial.len(), 16);
        assert!(a.serial[0] & 0x80 == 0 && a.serial[0] != 0);
        let dbg = format!("{a:?} {ca:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    }

    #[test]
    fn other_key_types_and_validity() {
        let ca = Ca::new("ca").unwrap();
        for key in [LeafKey::EcdsaP384, LeafKey::Ed25519] {
            let spec = LeafSpec {
                key,
                not_after: 4_102_444_800, // 2100-01-01
                ..LeafSpec::localhost("k")
            };
            let leaf = ca.issue(&spec).unwrap();
            assert_eq!(
                crate::pki::material::not_after(&leaf.der).unwrap(),
                4_102_444_800
            );
        }
    }

    #[test]
    fn crl_refuses_next_update_before_this_update() {
        let ca = Ca::new("ca").unwrap();
        assert!(ca.crl(&[], 1_000, 500).is_err());
        assert!(ca.crl(&[], 1_000, 2_000).unwrap().contains("X509 CRL"));
    }
}
