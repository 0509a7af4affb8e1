//! Which CA certificate issued a peer's certificate, for selectors that pin
//! the issuing CA (`NP_PARTNER_<NAME>_CERT=ura:<URA>@sha256:<CA hash>`).
//!
//! The TLS layer has already verified the peer's chain against the trust
//! bundle; it does not say which CA certificate the path went through. A pin
//! names that CA certificate by the SHA-256 of its DER, and it holds when a
//! certificate with that hash — sent by the peer after its own, or in our
//! trust bundle — has the leaf's issuer as its subject and its key verifies
//! the leaf's signature. A peer that merely sends the pinned CA certificate
//! along gains nothing: its leaf was not signed with that key.

use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use x509_cert::der::asn1::{AnyRef, BitStringRef};
use x509_cert::der::{Decode, Encode, Reader, SliceReader};

/// The certificates of the trust bundle (`NP_TLS_TRUST`), by SHA-256 of the DER.
#[derive(Debug, Clone, Default)]
pub struct CaCerts {
    certs: Vec<([u8; 32], CertificateDer<'static>)>,
}

impl CaCerts {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> CaCerts {
        CaCerts {
            certs: certs
                .into_iter()
                .map(|c| (super::identity::certificate_sha256(c.as_ref()), c))
                .collect(),
        }
    }

    fn by_sha256(&self, sha256: &[u8; 32]) -> Option<&[u8]> {
        self.certs
            .iter()
            .find(|(h, _)| h == sha256)
            .map(|(_, c)| c.as_ref())
    }
}

/// A verified peer's leaf with the certificates that may have issued it:
/// the rest of the chain it sent and our trust bundle. Nothing is computed
/// until a pinned selector asks ([`IssuerCheck::issued_by`]).
#[derive(Debug, Clone, Copy)]
pub struct IssuerCheck<'a> {
    leaf: &'a [u8],
    presented: &'a [CertificateDer<'a>],
    trusted: &'a CaCerts,
}

impl<'a> IssuerCheck<'a> {
    /// `chain` as the TLS layer hands it over: the peer's certificate first.
    pub fn new(chain: &'a [CertificateDer<'a>], trusted: &'a CaCerts) -> IssuerCheck<'a> {
        let (leaf, presented) = match chain.split_first() {
            Some((leaf, rest)) => (leaf.as_ref(), rest),
            None => (&[][..], &[][..]),
        };
        IssuerCheck {
            leaf,
            presented,
            trusted,
        }
    }

    /// True when the CA certificate whose DER has SHA-256 `ca_sha256` issued
    /// the leaf: it is known (sent by the peer or in the trust bundle), its
    /// subject is the leaf's issuer and its key verifies the leaf's signature.
    pub fn issued_by(&self, ca_sha256: &[u8; 32]) -> bool {
        let sent = self
            .presented
            .iter()
            .map(|c| c.as_ref())
            .find(|c| super::identity::certificate_sha256(c) == *ca_sha256);
        match sent.or_else(|| self.trusted.by_sha256(ca_sha256)) {
            Some(ca) => issued(self.leaf, ca),
            None => false,
        }
    }
}

/// True when `ca` (DER) issued `leaf` (DER): names and signature. Any
/// certificate that does not decode issues nothing.
pub fn issued(leaf: &[u8], ca: &[u8]) -> bool {
    let (Some(leaf), Some(ca)) = (Signed::parse(leaf), CaKey::parse(ca)) else {
        return false;
    };
    if leaf.issuer != ca.subject {
        return false;
    }
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| {
            alg.public_key_alg_id().as_ref() == ca.key_alg.as_slice()
                && alg.signature_alg_id().as_ref() == leaf.signature_alg.as_slice()
        })
        .any(|alg: &&dyn SignatureVerificationAlgorithm| {
            alg.verify_signature(&ca.key, leaf.tbs, &leaf.signature)
                .is_ok()
        })
}

/// What a signature check needs of the signed certificate: the TBS bytes
/// exactly as signed, the signature algorithm (without its outer SEQUENCE,
/// as rustls names algorithms), the signature and the issuer name.
struct Signed<'a> {
    tbs: &'a [u8],
    signature_alg: Vec<u8>,
    signature: Vec<u8>,
    issuer: Vec<u8>,
}

impl<'a> Signed<'a> {
    fn parse(der: &'a [u8]) -> Option<Signed<'a>> {
        let mut reader = SliceReader::new(der).ok()?;
        let (tbs, alg, signature) = reader
            .sequence(|r: &mut SliceReader<'a>| {
                let tbs = r.tlv_bytes()?;
                let alg = AnyRef::decode(r)?;
                let signature = BitStringRef::decode(r)?;
                Ok::<_, x509_cert::der::Error>((tbs, alg, signature))
            })
            .ok()?;
        if !reader.is_finished() {
            return None;
        }
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        Some(Signed {
            tbs,
            signature_alg: alg.value().to_vec(),
            signature: signature.as_bytes()?.to_vec(),
            issuer: cert.tbs_certificate().issuer().to_der().ok()?,
        })
    }
}

/// What a signature check needs of the issuing certificate.
struct CaKey {
    subject: Vec<u8>,
    /// The SubjectPublicKeyInfo algorithm, without its outer SEQUENCE.
    key_alg: Vec<u8>,
    key: Vec<u8>,
}

impl CaKey {
    fn parse(der: &[u8]) -> Option<CaKey> {
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        let alg = spki.algorithm.to_der().ok()?;
        let key_alg = AnyRef::from_der(&alg).ok()?.value().to_vec();
        Some(CaKey {
            subject: tbs.subject().to_der().ok()?,
            key_alg,
            key: spki.subject_public_key.as_bytes()?.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity::certificate_sha256;
    use crate::pki::throwaway::{Ca, LeafSpec};

    #[test]
    fn the_issuing_ca_and_no_other() {
        let ca = Ca::new("issuer test ca").unwrap();
        let other = Ca::new("issuer test ca").unwrap();
        let leaf = ca.issue(&LeafSpec::localhost("p")).unwrap();
        let ca_der = ca.cert_der().clone();
        let other_der = other.cert_der().clone();
        assert!(issued(&leaf.der, &ca_der));
        // Same subject name, another key: not the issuer.
        assert!(!issued(&leaf.der, &other_der));
        // A leaf does not issue itself; garbage issues nothing.
        assert!(!issued(&leaf.der, &leaf.der));
        assert!(!issued(&leaf.der, b"\x30\x00"));
        assert!(!issued(b"", &ca_der));
        let mut flipped = leaf.der.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(!issued(&flipped, &ca_der), "a broken signature");

        let trusted = CaCerts::new(vec![ca_der.clone(), other_der.clone()]);
        let none = CaCerts::default();
        let chain = [leaf.der.clone()];
        let check = IssuerCheck::new(&chain, &trusted);
        assert!(check.issued_by(&certificate_sha256(&ca_der)));
        assert!(!check.issued_by(&certificate_sha256(&other_der)));
        assert!(!check.issued_by(&[0; 32]));
        // Sending the pinned CA along with a leaf of another CA does not help.
        let stranger = other.issue(&LeafSpec::localhost("s")).unwrap();
        let chain = [stranger.der.clone(), ca_der.clone()];
        let check = IssuerCheck::new(&chain, &none);
        assert!(!check.issued_by(&certificate_sha256(&ca_der)));
        // The issuing CA sent by the peer, not in the trust bundle: known.
        let chain = [leaf.der.clone(), ca_der.clone()];
        let check = IssuerCheck::new(&chain, &none);
        assert!(check.issued_by(&certificate_sha256(&ca_der)));
        assert!(!IssuerCheck::new(&[], &trusted).issued_by(&certificate_sha256(&ca_der)));
    }

    #[test]
    fn only_the_direct_issuer_counts() {
        let root = Ca::new("issuer test root").unwrap();
        let sub = root.intermediate("issuer test sub").unwrap();
        let leaf = sub.issue(&LeafSpec::localhost("p")).unwrap();
        let (root_der, sub_der) = (root.cert_der().clone(), sub.cert_der().clone());
        let trusted = CaCerts::new(vec![root_der.clone()]);
        let chain = [leaf.der.clone(), sub_der.clone()];
        let check = IssuerCheck::new(&chain, &trusted);
        assert!(check.issued_by(&certificate_sha256(&sub_der)));
        assert!(!check.issued_by(&certificate_sha256(&root_der)));
        // The intermediate known from the trust bundle when the peer omits it.
        let trusted = CaCerts::new(vec![root_der, sub_der.clone()]);
        let chain = [leaf.der.clone()];
        assert!(IssuerCheck::new(&chain, &trusted).issued_by(&certificate_sha256(&sub_der)));
    }
}
