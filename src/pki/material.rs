//! Loading our TLS material from disk: certificate chain, private key, trust
//! bundle and CRLs, with every check that can be made before a handshake.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::sign::CertifiedKey;
use x509_cert::certificate::Rfc5280;
use x509_cert::der::Decode;

use super::identity::{PeerIdentity, peer_identity};
use super::issuer::CaCerts;
use super::{FileRole, PkiError};

/// Largest certificate chain, key or trust bundle file we read.
const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;
/// Largest single CRL file we read (PKIoverheid CRLs run to a few MiB).
const MAX_CRL_FILE: u64 = 64 * 1024 * 1024;

/// Where our TLS material lives (`NP_TLS_CERT`, `NP_TLS_KEY`, `NP_TLS_TRUST`,
/// `NP_TLS_CRL_DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM chain: our end-entity certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), mode 0600 or stricter.
    pub key: PathBuf,
    /// PEM bundle of the CA certificates we accept for peers, as server and as client.
    pub trust: PathBuf,
    /// Directory of CRLs (PEM or DER). When set, every certificate below a
    /// trust anchor in a peer's chain must be covered by a CRL from here.
    pub crl_dir: Option<PathBuf>,
}

/// Our loaded and checked TLS material; the input of [`super::server_config`]
/// and [`super::client_config`]. Reload by loading again (SIGHUP, hourly CRL refresh).
pub struct TlsMaterial {
    /// Our chain, end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key; known to match `chain[0]`.
    pub key: PrivateKeyDer<'static>,
    /// The trust anchors for peers.
    pub roots: Arc<RootCertStore>,
    /// The same certificates whole, for selectors that pin the issuing CA.
    pub trust_certs: CaCerts,
    /// Every CRL found in the CRL directory (empty when none is configured).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// `notAfter` of our end-entity certificate, Unix seconds.
    pub leaf_not_after: i64,
    /// The earliest `nextUpdate` of the loaded CRLs, Unix seconds: after it
    /// handshakes fail closed until fresh CRLs are loaded.
    pub crl_next_update: Option<i64>,
    /// Identity fields of our own end-entity certificate (URA, serialNumber, DNS names).
    pub identity: PeerIdentity,
    /// The files this was loaded from.
    pub files: TlsFiles,
}

impl TlsMaterial {
    /// Loads the PEM chain, key and trust bundle, and every CRL (PEM or DER) in
    /// `crl_dir`, refusing anything that would fail later or weaken security:
    /// unreadable files, a key file accessible to group or others, an empty
    /// chain or trust bundle, a chain file that also holds a private key, a key
    /// that does not match the end-entity certificate, malformed PEM, a
    /// certificate, trust anchor or CRL that does not parse, a CRL without
    /// `nextUpdate`, and a configured CRL directory without CRLs.
    ///
    /// A CRL past its `nextUpdate` is loaded: handshakes then fail closed, and
    /// [`TlsMaterial::crl_next_update`] lets operators see why.
    pub fn load(files: &TlsFiles) -> Result<Self, PkiError> {
        let chain = load_chain(&files.cert)?;
        let key = load_key(&files.key)?;
        check_key_matches(&chain, &key, files)?;
        let leaf = chain.first().ok_or_else(|| PkiError::Content {
            role: FileRole::Chain,
            path: files.cert.clone(),
            reason: "holds no CERTIFICATE section".into(),
        })?;
        let leaf_not_after = not_after(leaf).map_err(|reason| PkiError::Content {
            role: FileRole::Chain,
            path: files.cert.clone(),
            reason: format!("first certificate: {reason}"),
        })?;
        let identity = peer_identity(leaf).map_err(|e| PkiError::Content {
            role: FileRole::Chain,
            path: files.cert.clone(),
            reason: format!("first certificate: {e}"),
        })?;
        let (roots, trust_certs) = load_trust(&files.trust)?;
        let roots = Arc::new(roots);
        let (crls, crl_next_update) = match &files.crl_dir {
            Some(dir) => {
                let crls = load_crl_dir(dir, &roots)?;
                let earliest = crls.iter().map(|c| c.next_update).min();
                (crls.into_iter().map(|c| c.der).collect(), earliest)
            }
            None => (Vec::new(), None),
        };
        Ok(TlsMaterial {
            chain,
            key,
            roots,
            trust_certs,
            crls,
            leaf_not_after,
            crl_next_update,
            identity,
            files: files.clone(),
        })
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("chain_len", &self.chain.len())
            .field("key", &"[secret]")
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .field("leaf_not_after", &self.leaf_not_after)
            .field("crl_next_update", &self.crl_next_update)
            .field("identity", &self.identity)
            .field("files", &self.files)
            .finish()
    }
}

/// Refuses a private key file that group or others may read or write
/// (any of the mode bits 0o077). Symlinks are followed: the mode of the file
/// the key is read from is what counts.
pub fn check_key_file_permissions(path: &Path) -> Result<(), PkiError> {
    let meta = fs::metadata(path).map_err(|source| PkiError::Read {
        role: FileRole::Key,
        path: path.to_path_buf(),
        source,
    })?;
    check_key_mode(path, &meta)
}

fn check_key_mode(path: &Path, meta: &fs::Metadata) -> Result<(), PkiError> {
    if !meta.is_file() {
        return Err(PkiError::Content {
            role: FileRole::Key,
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read_file(path, FileRole::Chain, MAX_PEM_FILE)?;
    let content = |reason: String| PkiError::Content {
        role: FileRole::Chain,
        path: path.to_path_buf(),
        reason,
    };
    let mut chain = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = section.map_err(|e| content(pem_reason(&e)))?;
        match kind {
            SectionKind::Certificate => chain.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err(content(
                    "holds a private key; keep the key in its own file with mode 0600".into(),
                ));
            }
            _ => {}
        }
    }
    if chain.is_empty() {
        return Err(content("holds no CERTIFICATE section".into()));
    }
    for (i, cert) in chain.iter().enumerate() {
        x509_cert::Certificate::from_der(cert)
            .map_err(|e| content(format!("certificate {}: does not parse: {e}", i + 1)))?;
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    // Open first and inspect the opened file, so the mode we check is the
    // mode of the file we read.
    let read_err = |source| PkiError::Read {
        role: FileRole::Key,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    check_key_mode(path, &meta)?;
    let bytes = read_limited(file, MAX_PEM_FILE).map_err(read_err)?;
    let content = |reason: &str| PkiError::Content {
        role: FileRole::Key,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        // The PEM parser's messages may quote file content: not for a key file.
        let (kind, der) = section.map_err(|_| content("malformed PEM"))?;
        match kind {
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            _ => {}
        }
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 if contains(&bytes, b"ENCRYPTED PRIVATE KEY") => Err(content(
            "is encrypted; np-agent needs an unencrypted key protected by mode 0600",
        )),
        0 => Err(content(
            "holds no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section",
        )),
        n => Err(content(&format!(
            "holds {n} private keys; expected exactly one"
        ))),
    }
}

fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    files: &TlsFiles,
) -> Result<(), PkiError> {
    let signing_key = super::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| PkiError::Content {
            role: FileRole::Key,
            path: files.key.clone(),
            reason: "unsupported or malformed key (supported: ECDSA P-256/P-384, \
                     Ed25519, RSA 2048-8192 bits)"
                .into(),
        })?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(PkiError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => Err(PkiError::Content {
            role: FileRole::Key,
            path: files.key.clone(),
            reason: format!(
                "cannot confirm it belongs to the first certificate in {}: {e}",
                files.cert.display()
            ),
        }),
    }
}

fn load_trust(path: &Path) -> Result<(RootCertStore, CaCerts), PkiError> {
    let bytes = read_file(path, FileRole::Trust, MAX_PEM_FILE)?;
    let content = |reason: String| PkiError::Content {
        role: FileRole::Trust,
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let mut certs = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| content(pem_reason(&e)))?;
        certs.push(cert.clone());
        roots.add(cert).map_err(|e| {
            content(format!(
                "certificate {}: not usable as trust anchor: {e}",
                i + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(content("holds no CERTIFICATE section".into()));
    }
    Ok((roots, CaCerts::new(certs)))
}

struct LoadedCrl {
    der: CertificateRevocationListDer<'static>,
    next_update: i64,
}

fn load_crl_dir(dir: &Path, roots: &Arc<RootCertStore>) -> Result<Vec<LoadedCrl>, PkiError> {
    let read_err = |source| PkiError::Read {
        role: FileRole::CrlDir,
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Same convention as the outbox: writers use dot names or .tmp/.part and rename.
        if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
            continue;
        }
        let path = entry.path();
        // Follow symlinks (a dangling one is an error, not a silent gap);
        // skip subdirectories and other non-files.
        let meta = fs::metadata(&path).map_err(|source| PkiError::Read {
            role: FileRole::Crl,
            path: path.clone(),
            source,
        })?;
        if meta.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut crls = Vec::new();
    for path in &paths {
        let bytes = read_file(path, FileRole::Crl, MAX_CRL_FILE)?;
        let content = |reason: String| PkiError::Content {
            role: FileRole::Crl,
            path: path.clone(),
            reason,
        };
        let ders = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let ders = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| content(pem_reason(&e)))?;
            if ders.is_empty() {
                return Err(content("holds no X509 CRL section".into()));
            }
            ders
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        for der in ders {
            let next_update = crl_next_update(&der).map_err(&content)?;
            // Parse exactly as the handshake will, so a bad CRL is reported
            // here with its file name rather than later without one.
            WebPkiServerVerifier::builder_with_provider(roots.clone(), super::provider())
                .with_crls([der.clone()])
                .build()
                .map_err(|e| content(format!("not accepted by the verifier: {e}")))?;
            crls.push(LoadedCrl { der, next_update });
        }
    }
    if crls.is_empty() {
        return Err(PkiError::Content {
            role: FileRole::CrlDir,
            path: dir.to_path_buf(),
            reason: "holds no CRL files; put each issuing CA's CRL here or unset the directory"
                .into(),
        });
    }
    Ok(crls)
}

fn crl_next_update(der: &[u8]) -> Result<i64, String> {
    let crl = x509_cert::crl::CertificateList::<Rfc5280>::from_der(der)
        .map_err(|e| format!("does not parse as a CRL: {e}"))?;
    let next = crl
        .tbs_cert_list
        .next_update
        .ok_or_else(|| "has no nextUpdate, so its staleness cannot be judged".to_string())?;
    Ok(unix_seconds(next.to_unix_duration()))
}

/// `notAfter` of a certificate, Unix seconds.
pub(crate) fn not_after(der: &[u8]) -> Result<i64, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| format!("does not parse: {e}"))?;
    Ok(unix_seconds(
        cert.tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration(),
    ))
}

fn unix_seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn read_file(path: &Path, role: FileRole, limit: u64) -> Result<Vec<u8>, PkiError> {
    let read_err = |source| PkiError::Read {
        role,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    read_limited(file, limit).map_err(read_err)
}

fn read_limited(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => {
            "malformed PEM: a BEGIN line is not well formed".into()
        }
        pem::Error::Base64Decode(_) => "malformed PEM: bad base64 inside a section".into(),
        pem::Error::SectionTooLarge => "malformed PEM: a section is too large".into(),
        other => format!("malformed PEM: {other}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::throwaway::{Ca, LeafSpec, write_crl, write_files};

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "np-pki-{name}-{}",
                crate::util::random::uuid_v4().unwrap()
            ));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn agent(dir: &Path) -> (Ca, TlsFiles) {
        let ca = Ca::new("test ca").unwrap();
        let leaf = ca.issue(&LeafSpec::localhost("agent")).unwrap();
        let files = write_files(dir, &leaf, &[&ca]).unwrap();
        (ca, files)
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn loads_generated_material() {
        let s = Scratch::new("load");
        let (ca, mut files) = agent(&s.0);
        let crl_dir = s.0.join("crl");
        let now = crate::util::time::now_unix();
        write_crl(
            &crl_dir,
            "ca.crl",
            &ca.crl(&[], now - 60, now + 3_600).unwrap(),
        )
        .unwrap();
        files.crl_dir = Some(crl_dir);
        let m = TlsMaterial::load(&files).unwrap();
        assert_eq!(m.chain.len(), 1);
        assert_eq!(m.roots.len(), 1);
        assert_eq!(m.crls.len(), 1);
        assert!(m.leaf_not_after > now);
        assert!(m.crl_next_update.unwrap() > now);
        assert_eq!(m.identity.dns_names, vec!["localhost".to_string()]);
        let dbg = format!("{m:?}");
        assert!(
            dbg.contains("[secret]") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
    }

    #[test]
    fn key_file_permissions() {
        let s = Scratch::new("perm");
        let (_, files) = agent(&s.0);
        set_mode(&files.key, 0o600);
        check_key_file_permissions(&files.key).unwrap();
        set_mode(&files.key, 0o400);
        check_key_file_permissions(&files.key).unwrap();
        for mode in [0o640, 0o644, 0o604, 0o660] {
            set_mode(&files.key, mode);
            let err = check_key_file_permissions(&files.key).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, PkiError::KeyPermissions { .. }), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", files.key.display())),
                "{msg}"
            );
            let err = TlsMaterial::load(&files).unwrap_err();
            assert!(matches!(err, PkiError::KeyPermissions { .. }), "{err}");
        }
        assert!(matches!(
            check_key_file_permissions(&s.0.join("missing.pem")),
            Err(PkiError::Read { .. })
        ));
    }

    #[test]
    fn key_that_belongs_to_another_certificate_is_refused() {
        let s = Scratch::new("mismatch");
        let (ca, files) = agent(&s.0);
        let other = ca.issue(&LeafSpec::localhost("other")).unwrap();
        crate::util::durable::write_atomic(&files.key, other.key_pem.as_bytes()).unwrap();
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("does not belong"), "{msg}");
        assert!(msg.contains(&files.key.display().to_string()), "{msg}");
        assert!(msg.contains(&files.cert.display().to_string()), "{msg}");
    }

    #[test]
    fn empty_trust_and_chain_are_refused() {
        let s = Scratch::new("empty");
        let (_, files) = agent(&s.0);
        fs::write(&files.trust, b"").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(
            matches!(
                &err,
                PkiError::Content {
                    role: FileRole::Trust,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("trust bundle"), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");

        let (_, files) = agent(&s.0);
        fs::write(&files.cert, b"# nothing here\n").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err();
        assert!(
            matches!(
                &err,
                PkiError::Content {
                    role: FileRole::Chain,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_pem_and_bad_content_are_refused_with_the_file_named() {
        let s = Scratch::new("badpem");
        let (_, files) = agent(&s.0);
        fs::write(
            &files.trust,
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("malformed PEM"), "{err}");
        assert!(err.contains(&files.trust.display().to_string()), "{err}");

        let (_, files) = agent(&s.0);
        fs::write(
            &files.trust,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("not usable as trust anchor"), "{err}");

        let (_, files) = agent(&s.0);
        fs::write(&files.key, b"-----BEGIN PRIVATE KEY-----\nsecretstuff\n").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("private key {}: malformed PEM", files.key.display())
        );
        assert!(!err.contains("secretstuff"));
    }

    #[test]
    fn key_file_content_rules() {
        let s = Scratch::new("keys");
        let (_, files) = agent(&s.0);
        let key = fs::read_to_string(&files.key).unwrap();
        fs::write(&files.key, format!("{key}{key}")).unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("2 private keys"), "{err}");

        fs::write(
            &files.key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");

        fs::write(&files.key, "").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("no PRIVATE KEY"), "{err}");

        fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("unsupported or malformed key"), "{err}");
    }

    #[test]
    fn chain_file_holding_the_key_is_refused() {
        let s = Scratch::new("keyinchain");
        let (_, files) = agent(&s.0);
        let mut chain = fs::read_to_string(&files.cert).unwrap();
        chain.push_str(&fs::read_to_string(&files.key).unwrap());
        fs::write(&files.cert, chain).unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("holds a private key"), "{err}");
    }

    #[test]
    fn crl_directory_rules() {
        let s = Scratch::new("crldir");
        let (ca, mut files) = agent(&s.0);
        let dir = s.0.join("crl");
        fs::create_dir_all(dir.join("sub")).unwrap();
        files.crl_dir = Some(dir.clone());
        // Empty (only skipped names): refused, fail closed.
        fs::write(dir.join(".partial"), b"x").unwrap();
        fs::write(dir.join("next.crl.tmp"), b"x").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("holds no CRL files"), "{err}");

        // DER and PEM both accepted; the earliest nextUpdate is reported.
        let now = crate::util::time::now_unix();
        let pem = ca.crl(&[], now - 60, now + 7_200).unwrap();
        write_crl(&dir, "a.pem", &pem).unwrap();
        let der = CertificateRevocationListDer::from_pem_slice(
            ca.crl(&[], now - 60, now + 3_600).unwrap().as_bytes(),
        )
        .unwrap();
        fs::write(dir.join("b.crl"), der.as_ref()).unwrap();
        let m = TlsMaterial::load(&files).unwrap();
        assert_eq!(m.crls.len(), 2);
        let earliest = m.crl_next_update.unwrap();
        assert!(
            (now + 3_500..=now + 3_700).contains(&earliest),
            "{earliest}"
        );

        // A dangling symlink is an error naming it, not a silently missing CRL.
        std::os::unix::fs::symlink(s.0.join("gone.crl"), dir.join("c.crl")).unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(
            err.contains("c.crl") && err.contains("cannot read"),
            "{err}"
        );
        fs::remove_file(dir.join("c.crl")).unwrap();

        // Anything else in the directory is an error naming that file.
        fs::write(dir.join("README"), b"crls go here").unwrap();
        let err = TlsMaterial::load(&files).unwrap_err().to_string();
        assert!(err.contains("README"), "{err}");
        assert!(err.starts_with("crl "), "{err}");
    }
}
