//! A PKI on disk for integration tests: agents' TLS files from the library's
//! throwaway generator, CRLs, and an RSA-PSS chain from the `openssl` CLI
//! (rcgen cannot sign RSA-PSS; PKIoverheid G4 does).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use np_agent::pki::throwaway::{Ca, Issued, LeafSpec, write_crl, write_files};
use np_agent::pki::{TlsFiles, TlsMaterial};
use np_agent::util::time::now_unix;

/// Issues a leaf from `ca` per `spec` and writes `cert.pem`, `key.pem` (0600)
/// and `trust.pem` (the certificates of `trust`) into `dir`.
pub fn agent(dir: &Path, ca: &Ca, spec: &LeafSpec, trust: &[&Ca]) -> (TlsFiles, Issued) {
    let issued = ca.issue(spec).unwrap();
    let files = write_files(dir, &issued, trust).unwrap();
    (files, issued)
}

/// Writes an agent's files from PEM text: `cert.pem`, `key.pem` (0600), `trust.pem`.
pub fn agent_from_pem(dir: &Path, chain_pem: &str, key_pem: &str, trust_pem: &str) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        trust: dir.join("trust.pem"),
        crl_dir: None,
    };
    std::fs::write(&files.cert, chain_pem).unwrap();
    std::fs::write(&files.trust, trust_pem).unwrap();
    std::fs::write(&files.key, key_pem).unwrap();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

/// A CRL from `ca` revoking `revoked`, issued an hour ago, next update in a day.
pub fn current_crl(ca: &Ca, revoked: &[&Issued]) -> String {
    let now = now_unix();
    let serials: Vec<&[u8]> = revoked.iter().map(|i| i.serial.as_slice()).collect();
    ca.crl(&serials, now - 3_600, now + 86_400).unwrap()
}

/// A CRL from `ca` revoking nothing whose nextUpdate was yesterday.
pub fn expired_crl(ca: &Ca) -> String {
    let now = now_unix();
    ca.crl(&[], now - 2 * 86_400, now - 86_400).unwrap()
}

/// Writes `crls` (file name, PEM) into `dir` and points `files.crl_dir` at it.
pub fn with_crls(mut files: TlsFiles, dir: &Path, crls: &[(&str, String)]) -> TlsFiles {
    for (name, pem) in crls {
        write_crl(dir, name, pem).unwrap();
    }
    files.crl_dir = Some(dir.to_path_buf());
    files
}

/// Loads material, panicking with the library's message on failure.
pub fn load(files: &TlsFiles) -> TlsMaterial {
    TlsMaterial::load(files).unwrap_or_else(|e| panic!("load: {e}"))
}

/// An RSA CA and an RSA leaf (2048-bit keys), both certificates signed with
/// RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) by `openssl`.
#[derive(Debug, Clone)]
pub struct RsaPss {
    /// The self-signed CA certificate, PEM (trust anchor).
    pub ca_pem: String,
    /// The leaf certificate, PEM; SAN DNS:localhost, IP:127.0.0.1; EKU server+client.
    pub leaf_pem: String,
    /// The leaf key, PKCS#8 PEM.
    pub key_pkcs8_pem: String,
    /// The same leaf key, PKCS#1 PEM (`RSA PRIVATE KEY`).
    pub key_pkcs1_pem: String,
}

/// The RSA-PSS chain, generated once per test binary (RSA key generation is slow).
/// Panics if `openssl` is missing: CI installs it, and a skipped PSS test
/// would hide a broken PKIoverheid G4 path.
pub fn rsa_pss() -> &'static RsaPss {
    static PKI: OnceLock<RsaPss> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = super::TempDir::new("rsa-pss");
        openssl_rsa_pss(dir.path())
    })
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Runs the openssl commands for [`RsaPss`] inside `dir`.
pub fn openssl_rsa_pss(dir: &Path) -> RsaPss {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).unwrap();
    const PSS: &str = "-sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest";
    const CONF: &str = "-config openssl.cnf";
    let serial = np_agent::util::b64::hex(&np_agent::util::random::bytes::<8>().unwrap());
    openssl(
        dir,
        "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key",
    );
    openssl(
        dir,
        "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.key",
    );
    openssl(
        dir,
        &format!(
            "req -x509 -new -key ca.key -days 2 {CONF} -extensions v3_ca \
             -subj /O=np-agent-test/CN=RSA-PSS-test-CA -out ca.pem {PSS}"
        ),
    );
    openssl(
        dir,
        &format!("req -new -key leaf.key {CONF} -subj /O=np-agent-test/CN=localhost -out leaf.csr"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 0x{serial} -days 2 \
             -extfile openssl.cnf -extensions v3_leaf -out leaf.pem {PSS}"
        ),
    );
    openssl(dir, "pkey -in leaf.key -traditional -out leaf.pkcs1.key");

    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pki = RsaPss {
        ca_pem: read("ca.pem"),
        leaf_pem: read("leaf.pem"),
        key_pkcs8_pem: read("leaf.key"),
        key_pkcs1_pem: read("leaf.pkcs1.key"),
    };
    assert!(pki.key_pkcs1_pem.contains("BEGIN RSA PRIVATE KEY"));
    // Both certificates really carry the RSASSA-PSS signature algorithm.
    for name in ["ca.pem", "leaf.pem"] {
        let text = openssl(dir, &format!("x509 -in {name} -noout -text"));
        assert!(
            text.contains("rsassaPss"),
            "{name} is not PSS-signed:\n{text}"
        );
        assert!(
            text.contains("Salt Length: 0x20"),
            "{name}: salt is not 32:\n{text}"
        );
    }
    pki
}

/// Runs `openssl <command line>` in `dir` (arguments split on whitespace) and
/// returns its standard output; panics with openssl's stderr on failure.
fn openssl(dir: &Path, command_line: &str) -> String {
    let args: Vec<&str> = command_line.split_whitespace().collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the openssl CLI is required for the RSA-PSS tests (install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {command_line}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
