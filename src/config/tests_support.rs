//! A throwaway site for unit tests that need a [`Config`]: a temp folder with
//! the four key files (contents are never read by [`from_vars`], only their
//! presence and modes), and the six keys every configuration needs.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{Config, Vars, from_vars};

/// A temp folder with placeholder key files; removed when dropped.
pub(crate) struct TestSite {
    pub dir: PathBuf,
}

impl TestSite {
    pub fn new(label: &str) -> TestSite {
        let dir = std::env::temp_dir().join(format!(
            "np-{label}-{}",
            crate::util::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(dir.join("crl")).unwrap();
        for (name, mode) in [
            ("cert.pem", 0o644),
            ("key.pem", 0o600),
            ("trust.pem", 0o644),
            ("signing.pem", 0o600),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        TestSite { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The required keys: our origin and URA, and the key files.
    pub fn vars(&self, public_url: &str, ura: &str) -> Vars {
        let mut v = Vars::new();
        for (k, val) in [
            ("NP_PUBLIC_URL", public_url.to_string()),
            ("NP_TLS_CERT", self.path("cert.pem")),
            ("NP_TLS_KEY", self.path("key.pem")),
            ("NP_TLS_TRUST", self.path("trust.pem")),
            ("NP_SIGNING_KEY", self.path("signing.pem")),
            ("NP_ORG_URA", ura.to_string()),
        ] {
            set(&mut v, k, &val);
        }
        v
    }
}

impl Drop for TestSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn set(v: &mut Vars, k: &str, val: &str) {
    v.insert(k.to_string(), (val.to_string(), None));
}

/// A configuration with only the required keys (hospital A, URA 12345678).
pub(crate) fn config() -> Config {
    let site = TestSite::new("config");
    from_vars(&site.vars("https://np.hospital-a.example:8443", "12345678")).unwrap()
}
