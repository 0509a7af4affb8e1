//! The token request (`POST /oauth/token`): the form body, then the checks
//! of steps 1–2 for a Twiin and a Zorgviewer partner. Never panics; a form
//! that parses reads back the same from its own encoding, and an admitted
//! request carries exactly the assertions the form held.
//!
//! Input: the body; the first line break splits off a `Content-Type`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use np_agent::config::{Config, Partner, Vars, from_vars};
use np_agent::oauth::decide::{GrantRequest, admit};
use np_agent::oauth::form::Form;
use np_agent::util::percent;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

/// A configuration with a Twiin and a Zorgviewer partner; its key files are
/// placeholders (only their presence and modes are checked).
fn config() -> &'static Option<Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("np-fuzz-token-form-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut vars = Vars::new();
        let mut set = |k: &str, v: String| {
            vars.insert(k.to_string(), (v, None));
        };
        for (key, name, mode) in [
            ("NP_TLS_CERT", "cert.pem", 0o644),
            ("NP_TLS_KEY", "key.pem", 0o600),
            ("NP_TLS_TRUST", "trust.pem", 0o644),
            ("NP_SIGNING_KEY", "signing.pem", 0o600),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, "x").ok()?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).ok()?;
            set(key, path.display().to_string());
        }
        set("NP_PUBLIC_URL", "https://np.hospital-a.example:8443".into());
        set("NP_ORG_URA", "12345678".into());
        set("NP_PARTNERS", "hospb,viewer".into());
        set("NP_PARTNER_HOSPB_KIND", "twiin".into());
        set("NP_PARTNER_HOSPB_CERT", "ura:87654321".into());
        set(
            "NP_PARTNER_HOSPB_FHIR_BASE",
            "https://np.hospital-b.example:8443/fhir".into(),
        );
        set("NP_PARTNER_HOSPB_ORG", "ura:87654321".into());
        set("NP_PARTNER_VIEWER_KIND", "zorgviewer".into());
        set("NP_PARTNER_VIEWER_CERT", "dns:viewer.example".into());
        set(
            "NP_PARTNER_VIEWER_JWKS_URL",
            "https://viewer.example/jwks".into(),
        );
        set("NP_PARTNER_VIEWER_CLIENT_ID", "zorgviewer-client".into());
        set("NP_PARTNER_VIEWER_CONSENT", "none".into());
        let config = from_vars(&vars);
        // The files are looked at only while the configuration is checked.
        let _ = std::fs::remove_dir_all(&dir);
        match config {
            Ok(config) => Some(config),
            Err(errors) => panic!("fuzz configuration: {errors:?}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => ("application/x-www-form-urlencoded".to_string(), data),
    };
    let form = Form::parse(body);
    if let Ok(form) = &form {
        // Re-encoding each known parameter and parsing again gives it back.
        for name in [
            "grant_type",
            "assertion",
            "client_assertion",
            "scope",
            "client_id",
        ] {
            if let Some(value) = form.get(name) {
                let again = format!("{name}={}", percent::encode_form(value));
                let reparsed = Form::parse(again.as_bytes());
                assert_eq!(
                    reparsed.ok().as_ref().and_then(|f| f.get(name)),
                    Some(value)
                );
            }
        }
    }
    let Some(config) = config() else {
        return;
    };
    let partners: Vec<&Partner> = config.partners.iter().collect();
    for partner in partners {
        let Ok(admitted) = admit(Some(partner), PEER, Some(&content_type), body) else {
            continue;
        };
        let Ok(form) = &form else {
            panic!("admitted a body that is not a form");
        };
        match admitted.request {
            GrantRequest::JwtBearer {
                client_assertion,
                assertion,
                ..
            } => {
                assert_eq!(
                    form.get("client_assertion"),
                    Some(client_assertion.as_str())
                );
                assert_eq!(form.get("assertion"), Some(assertion.as_str()));
            }
            GrantRequest::ClientCredentials {
                client_assertion,
                scope,
                ..
            } => {
                assert_eq!(
                    form.get("client_assertion"),
                    Some(client_assertion.as_str())
                );
                assert_eq!(form.get("scope"), scope.as_deref());
            }
        }
    }
});
