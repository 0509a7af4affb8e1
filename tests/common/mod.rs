//! Helpers shared by integration tests. Use with `mod common;` in a test file.
//!
//! - [`TempDir`]: a fresh directory per test, removed on drop;
//! - [`pki`]: a throwaway PKI written to disk, CRLs, and an RSA-PSS
//!   (PKIoverheid G4 style) chain made with the `openssl` CLI;
//! - [`tls`]: one real TLS exchange over 127.0.0.1 with given configs;
//! - [`mitz`]: a stand-in Mitz (Subscription endpoint, closed question,
//!   faults, routes for more endpoints) that also pushes consent
//!   notifications as the broker.
//! - [`zorgviewer`]: a Zorgviewer-like client (token, X-ZV headers, signed
//!   context) and the agent's audit trail read back.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]
// Test helpers panic on setup failure; [lints.clippy] denies this in product code only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod folders;
pub mod mitz;
pub mod observe;
pub mod partner;
pub mod pki;
pub mod proxy;
pub mod tls;
pub mod zorgviewer;

use std::path::{Path, PathBuf};

/// A directory under `std::env::temp_dir()` with a random suffix, removed
/// (with everything in it) when dropped. Set `NP_TEST_KEEP=1` to keep it for
/// inspection; its path is printed then.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/np-test-<label>-<16 hex>` with mode 0700.
    pub fn new(label: &str) -> Self {
        use std::os::unix::fs::DirBuilderExt;
        let suffix = np_agent::util::b64::hex(&np_agent::util::random::bytes::<8>().unwrap());
        let path = std::env::temp_dir().join(format!("np-test-{label}-{suffix}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Keeps the directory whatever `NP_TEST_KEEP` says (a failed audit
    /// keeps its evidence) and returns its path.
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NP_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
