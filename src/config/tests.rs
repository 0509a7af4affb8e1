use super::tests_support::{TestSite, set};
use super::*;
use std::os::unix::fs::PermissionsExt;

/// The site of these tests: hospital A.
struct Files(TestSite);

impl Files {
    fn new() -> Files {
        Files(TestSite::new("config"))
    }

    fn path(&self, name: &str) -> String {
        self.0.path(name)
    }

    fn base(&self) -> Vars {
        self.0
            .vars("https://np.hospital-a.example:8443/", "12345678")
    }
}

fn errors(v: &Vars) -> Vec<String> {
    match from_vars(v) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn minimal_config_gets_every_default() {
    let f = Files::new();
    let c = from_vars(&f.base()).unwrap();
    assert_eq!(c.public_url, "https://np.hospital-a.example:8443");
    assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.tls_min_version, TlsVersion::Tls13);
    assert_eq!(c.signing_alg, Alg::Ps256);
    assert_eq!(c.signing_kid, None);
    assert_eq!(c.client_id, "np.hospital-a.example");
    assert_eq!(c.system_id, "https://np.hospital-a.example:8443");
    assert_eq!(c.org_oid, "2.16.528.1.1007.3.3.12345678");
    assert_eq!(c.outbox, PathBuf::from("/var/lib/np-agent/outbox"));
    assert_eq!(c.inbox, PathBuf::from("/var/lib/np-agent/inbox"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/np-agent/state"));
    assert_eq!(c.poll_interval, Duration::from_secs(2));
    assert_eq!(c.notification_ttl, Duration::from_secs(7 * 86_400));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.max_body, 16 << 20);
    assert_eq!(c.max_connections, 256);
    assert_eq!(c.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.max_handshakes_per_address, 16);
    assert_eq!(c.retry_max_age, Duration::from_secs(72 * 3_600));
    assert_eq!(c.min_free_disk, 512 << 20);
    assert_eq!(c.retry_first, Duration::from_secs(5));
    assert_eq!(c.retry_cap, Duration::from_secs(900));
    assert_eq!(c.circuit_failures, 5);
    assert_eq!(c.circuit_cooldown, Duration::from_secs(30));
    assert_eq!(c.org_category, None);
    assert_eq!(
        (c.home_community_id.clone(), c.source_id.clone()),
        (None, None)
    );
    assert_eq!(
        c.mitz_notify_url,
        "https://np.hospital-a.example:8443/mitz/fhir"
    );
    assert_eq!(c.mitz_decision_ttl, Duration::from_secs(60));
    assert_eq!(c.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.dedupe_retention, Duration::from_secs(90 * 86_400));
    assert!(c.partners.is_empty());
    assert_eq!(
        c.token_endpoint(),
        "https://np.hospital-a.example:8443/oauth/token"
    );
    assert_eq!(
        c.jwks_uri(),
        "https://np.hospital-a.example:8443/.well-known/jwks.json"
    );
}

#[test]
fn every_missing_required_key_is_reported_at_once() {
    let errs = errors(&Vars::new());
    for k in required_keys() {
        assert!(
            has(&errs, &format!("{k}: required but not set")),
            "{k}: {errs:?}"
        );
    }
    assert_eq!(errs.len(), required_keys().count(), "{errs:?}");
}

#[test]
fn unknown_keys_are_named_with_the_closest_known_key() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_LISTN", "0.0.0.0:1");
    set(&mut v, "NP_TOTALLY_UNRELATED_THING", "1");
    let errs = errors(&v);
    assert!(
        has(&errs, "NP_LISTN: unknown key (did you mean NP_LISTEN?)"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "NP_TOTALLY_UNRELATED_THING: unknown key"),
        "{errs:?}"
    );
}

#[test]
fn bad_values_name_the_key_and_the_reason() {
    let f = Files::new();
    let mut v = f.base();
    for (k, val, needle) in [
        ("NP_LISTEN", "8443", "NP_LISTEN: invalid socket address"),
        (
            "NP_TLS_MIN_VERSION",
            "1.1",
            "NP_TLS_MIN_VERSION: \"1.1\" must be 1.3 or 1.2",
        ),
        (
            "NP_SIGNING_ALG",
            "HS256",
            "NP_SIGNING_ALG: \"HS256\" must be one of",
        ),
        (
            "NP_LOG",
            "trace",
            "NP_LOG: \"trace\" must be error, warn, info or debug",
        ),
        (
            "NP_MAX_BODY",
            "16MB",
            "NP_MAX_BODY: \"16MB\" has unit \"MB\"",
        ),
        (
            "NP_MAX_CONNECTIONS",
            "0",
            "NP_MAX_CONNECTIONS: \"0\" must be a whole number",
        ),
        (
            "NP_HANDSHAKE_TIMEOUT",
            "2m",
            "NP_HANDSHAKE_TIMEOUT: \"2m\" must be from 1s to 60s",
        ),
        (
            "NP_MAX_HANDSHAKES_PER_ADDRESS",
            "0",
            "NP_MAX_HANDSHAKES_PER_ADDRESS: \"0\" must be a whole number",
        ),
        (
            "NP_POLL_INTERVAL",
            "0s",
            "NP_POLL_INTERVAL: \"0s\" must be longer than zero",
        ),
        (
            "NP_CIRCUIT_FAILURES",
            "0",
            "NP_CIRCUIT_FAILURES: \"0\" must be a whole number from 1 to 1000",
        ),
        (
            "NP_CIRCUIT_COOLDOWN",
            "1h",
            "NP_CIRCUIT_COOLDOWN: \"1h\" must be at most 15m",
        ),
        (
            "NP_RETRY_CAP",
            "2d",
            "NP_RETRY_CAP: \"2d\" must be from 1s to 1d",
        ),
        (
            "NP_RETRY_FIRST",
            "0s",
            "NP_RETRY_FIRST: \"0s\" must be longer than zero",
        ),
        ("NP_NOTIFICATION_TTL", "7 days", "NP_NOTIFICATION_TTL:"),
        (
            "NP_RETENTION",
            "0d",
            "NP_RETENTION: \"0d\" must be longer than zero",
        ),
        (
            "NP_RETENTION",
            "91d",
            "NP_DEDUPE_RETENTION: must not be shorter than NP_RETENTION",
        ),
        (
            "NP_DEDUPE_RETENTION",
            "29d",
            "NP_DEDUPE_RETENTION: must not be shorter than NP_RETENTION",
        ),
        (
            "NP_ORG_AGB",
            "1234",
            "NP_ORG_AGB: \"1234\" is not an 8-digit AGB code",
        ),
        (
            "NP_ORG_OID",
            "2.16.x",
            "NP_ORG_OID: \"2.16.x\" is not a dotted OID",
        ),
        (
            "NP_OUTBOX",
            "relative/outbox",
            "NP_OUTBOX: relative/outbox must be an absolute path",
        ),
        (
            "NP_PARTNERS",
            "good,Bad_name",
            "NP_PARTNERS: \"Bad_name\" is not a valid partner name",
        ),
    ] {
        set(&mut v, k, val);
        let errs = errors(&v);
        assert!(has(&errs, needle), "{k}={val}: {errs:?}");
        v = f.base();
    }
}

#[test]
fn public_url_must_be_an_https_origin() {
    let f = Files::new();
    for bad in [
        "http://np.example",
        "https://",
        "https://np.example/fhir",
        "https://np.example:port",
        "https://np.example?x=1",
        "https://np example",
    ] {
        let mut v = f.base();
        set(&mut v, "NP_PUBLIC_URL", bad);
        let errs = errors(&v);
        assert!(has(&errs, "NP_PUBLIC_URL:"), "{bad}: {errs:?}");
    }
    let mut v = f.base();
    set(&mut v, "NP_PUBLIC_URL", "https://[::1]:8443");
    let c = from_vars(&v).unwrap();
    assert_eq!(c.client_id, "[::1]");
}

#[test]
fn key_files_must_not_be_readable_by_group_or_others() {
    let f = Files::new();
    let key = f.0.dir.join("key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let errs = errors(&f.base());
    assert!(
        has(
            &errs,
            &format!(
                "NP_TLS_KEY: private key {}: group or others have access (mode 0640); \
                 the key must be private to the service user: chmod 600 {}",
                key.display(),
                key.display()
            )
        ),
        "{errs:?}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(has(&errors(&f.base()), "(mode 0604)"));
}

#[test]
fn missing_files_and_directories_are_named() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_TLS_TRUST", "/nonexistent/trust.pem");
    set(&mut v, "NP_TLS_CRL_DIR", &f.path("cert.pem"));
    let errs = errors(&v);
    assert!(
        has(&errs, "NP_TLS_TRUST: cannot read /nonexistent/trust.pem"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "NP_TLS_CRL_DIR:") && has(&errs, "is not a directory"),
        "{errs:?}"
    );
    let mut v = f.base();
    set(&mut v, "NP_TLS_CRL_DIR", &f.path("crl"));
    assert_eq!(
        from_vars(&v).unwrap().tls_crl_dir,
        Some(f.0.dir.join("crl"))
    );
}

fn with_partner(f: &Files) -> Vars {
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "hospb, vip");
    set(&mut v, "NP_ORG_AGB", "01234567");
    set(
        &mut v,
        "NP_PARTNER_HOSPB_FHIR_BASE",
        "https://np.hospital-b.example:9443/fhir/",
    );
    set(&mut v, "NP_PARTNER_HOSPB_ORG", "ura:87654321");
    set(&mut v, "NP_PARTNER_HOSPB_CERT", "ura:87654321");
    set(
        &mut v,
        "NP_PARTNER_VIP_FHIR_BASE",
        "https://fhir.test-datakluis.shared.topicuszorg.nl/fhir/stu3",
    );
    set(&mut v, "NP_PARTNER_VIP_ORG", "agb:44446666");
    set(&mut v, "NP_PARTNER_VIP_ID_SCHEME", "agb");
    set(&mut v, "NP_PARTNER_VIP_CERT", "serial:00000001234567890000");
    set(&mut v, "NP_PARTNER_VIP_CLIENT_ID", "viplive-databroker");
    set(&mut v, "NP_PARTNER_VIP_OUR_CLIENT_ID", "hospital-a");
    set(&mut v, "NP_PARTNER_VIP_SEND_BSN", "true");
    set(
        &mut v,
        "NP_PARTNER_VIP_AUDIENCES",
        "ontvanger.nl/token, https://alias.example/token",
    );
    set(&mut v, "NP_PARTNER_VIP_ACCEPT_ALGS", "PS256,RS256");
    v
}

#[test]
fn partners_with_defaults_and_overrides() {
    let f = Files::new();
    let c = from_vars(&with_partner(&f)).unwrap();
    let b = c.twiin_partner("hospb").unwrap();
    assert_eq!(b.partner.kind_tag(), Kind::Twiin);
    assert_eq!(b.fhir_base, "https://np.hospital-b.example:9443/fhir");
    assert_eq!(b.assertions.issuer, "https://np.hospital-b.example:9443");
    assert_eq!(b.assertions.client_id, "np.hospital-b.example");
    assert_eq!(b.our_client_id, "np.hospital-a.example");
    assert_eq!(b.org, OrgId::Ura("87654321".into()));
    assert_eq!(b.id_scheme, IdScheme::Ura);
    assert_eq!(b.partner.cert, Some(CertSelector::Ura("87654321".into())));
    assert!(!b.send_bsn && !b.address_system);
    assert_eq!(b.assertions.accept_algs, crate::jose::DEFAULT_ACCEPTED);
    let vip = c.twiin_partner("vip").unwrap();
    assert_eq!(vip.assertions.client_id, "viplive-databroker");
    assert_eq!(vip.our_client_id, "hospital-a");
    assert_eq!(vip.id_scheme, IdScheme::Agb);
    assert!(vip.send_bsn);
    assert_eq!(
        vip.assertions.audiences,
        ["ontvanger.nl/token", "https://alias.example/token"]
    );
    assert_eq!(vip.assertions.accept_algs, [Alg::Ps256, Alg::Rs256]);
    assert_eq!(vip.org.oid(), "2.16.840.1.113883.2.4.6.1.44446666");
    // A selector may pin the issuing CA.
    let mut v = with_partner(&f);
    let pin = "ab".repeat(32);
    set(
        &mut v,
        "NP_PARTNER_HOSPB_CERT",
        &format!("ura:87654321@sha256:{pin}"),
    );
    let c2 = from_vars(&v).unwrap();
    let cert = c2
        .twiin_partner("hospb")
        .unwrap()
        .partner
        .cert
        .clone()
        .unwrap();
    assert_eq!(cert.ca_sha256(), Some(&[0xab; 32]));
    assert_eq!(cert.to_string(), format!("ura:87654321@sha256:{pin}"));
    assert_eq!(
        c.our_org(IdScheme::Agb),
        Some(OrgId::Agb("01234567".into()))
    );
}

#[test]
fn partner_problems_are_each_named() {
    let f = Files::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "NP_PARTNER_HOSPB_KIND",
            "nuts",
            "NP_PARTNER_HOSPB_KIND: \"nuts\" must be twiin, mitz, zorgviewer, prs or nvi",
        ),
        (
            "NP_PARTNER_HOSPB_CERT",
            "ura:123",
            "NP_PARTNER_HOSPB_CERT: certificate selector \"ura:123\": expected ura:<8 digits>",
        ),
        (
            "NP_PARTNER_HOSPB_CERT",
            "sha256:abcd",
            "NP_PARTNER_HOSPB_CERT: certificate selector \"sha256:abcd\": expected sha256:<64 hex digits>",
        ),
        (
            "NP_PARTNER_HOSPB_CERT",
            "ura:87654321@sha256:abcd",
            "NP_PARTNER_HOSPB_CERT: certificate selector \"ura:87654321@sha256:abcd\": the issuing CA is pinned as @sha256:<64 hex digits",
        ),
        (
            "NP_PARTNER_HOSPB_CERT",
            "cn:foo",
            "NP_PARTNER_HOSPB_CERT: certificate selector \"cn:foo\": expected ura:<8 digits>, serial:",
        ),
        (
            "NP_PARTNER_HOSPB_CERT",
            "serial:00000001234567890000",
            "NP_PARTNER_VIP_CERT: the same certificate rule as partner \"hospb\"",
        ),
        (
            "NP_PARTNER_HOSPB_ORG",
            "kvk:12345678",
            "NP_PARTNER_HOSPB_ORG: \"kvk:12345678\" must start with ura: or agb:",
        ),
        (
            "NP_PARTNER_HOSPB_FHIR_BASE",
            "http://b.example/fhir",
            "NP_PARTNER_HOSPB_FHIR_BASE: \"http://b.example/fhir\" must start with https://",
        ),
        (
            "NP_PARTNER_HOSPB_SEND_BSN",
            "yes",
            "NP_PARTNER_HOSPB_SEND_BSN: \"yes\" is not true or false",
        ),
        (
            "NP_PARTNER_HOSPB_ACCEPT_ALGS",
            "PS256,HS256",
            "NP_PARTNER_HOSPB_ACCEPT_ALGS: must be a comma-separated list",
        ),
        (
            "NP_PARTNER_HOSPB_ACCEPT_ALGS",
            "none",
            "NP_PARTNER_HOSPB_ACCEPT_ALGS: must be a comma-separated list",
        ),
        (
            "NP_PARTNER_HOSPB_FHIR_BAS",
            "https://x",
            "NP_PARTNER_HOSPB_FHIR_BAS: unknown partner key (did you mean NP_PARTNER_HOSPB_FHIR_BASE?)",
        ),
        (
            "NP_PARTNER_OTHER_CERT",
            "ura:11111111",
            "NP_PARTNER_OTHER_CERT: partner \"other\" is not listed in NP_PARTNERS",
        ),
        (
            "NP_PARTNER_hospb_CERT",
            "ura:11111111",
            "written in upper case",
        ),
        (
            "NP_PARTNER_HOSPB",
            "x",
            "expected NP_PARTNER_<NAME>_<FIELD>",
        ),
    ];
    for (k, val, needle) in cases {
        let mut v = with_partner(&f);
        set(&mut v, k, val);
        let errs = errors(&v);
        assert!(has(&errs, needle), "{k}={val}: {errs:?}");
    }
    let mut v = with_partner(&f);
    v.remove("NP_PARTNER_HOSPB_FHIR_BASE");
    v.remove("NP_PARTNER_HOSPB_ORG");
    v.remove("NP_PARTNER_HOSPB_CERT");
    v.remove("NP_ORG_AGB");
    let errs = errors(&v);
    assert!(
        has(
            &errs,
            "NP_PARTNER_HOSPB_FHIR_BASE: required for a twiin partner"
        ),
        "{errs:?}"
    );
    assert!(
        has(&errs, "NP_PARTNER_HOSPB_ORG: required for a twiin partner"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "NP_PARTNER_HOSPB_CERT: required but not set"),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "NP_PARTNER_VIP_ID_SCHEME: agb needs our own AGB code in NP_ORG_AGB"
        ),
        "{errs:?}"
    );
}

#[test]
fn an_empty_required_partner_value_is_as_missing() {
    let f = Files::new();
    let mut v = with_partner(&f);
    set(&mut v, "NP_PARTNER_HOSPB_FHIR_BASE", "");
    set(&mut v, "NP_PARTNER_HOSPB_ORG", "");
    let errs = errors(&v);
    for needle in [
        "NP_PARTNER_HOSPB_FHIR_BASE: required for a twiin partner",
        "NP_PARTNER_HOSPB_ORG: required for a twiin partner",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
}

#[test]
fn a_key_of_another_kind_is_named_with_the_kinds_that_use_it() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "mitz,zv,hospb");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:broker.vzvz.example");
    set(
        &mut v,
        "NP_PARTNER_MITZ_FHIR_BASE",
        "https://broker.example/fhir",
    );
    set(&mut v, "NP_PARTNER_MITZ_ACCEPT_ALGS", "PS256");
    set(&mut v, "NP_PARTNER_ZV_KIND", "zorgviewer");
    set(&mut v, "NP_PARTNER_ZV_CERT", "dns:zv.example");
    set(&mut v, "NP_PARTNER_ZV_CLIENT_ID", "zorgviewer");
    set(
        &mut v,
        "NP_PARTNER_ZV_JWKS_URL",
        "https://auth.zv.example/jwks",
    );
    set(&mut v, "NP_PARTNER_ZV_SEND_BSN", "true");
    set(&mut v, "NP_PARTNER_HOSPB_CERT", "ura:87654321");
    set(
        &mut v,
        "NP_PARTNER_HOSPB_FHIR_BASE",
        "https://b.example/fhir",
    );
    set(&mut v, "NP_PARTNER_HOSPB_ORG", "ura:87654321");
    set(&mut v, "NP_PARTNER_HOSPB_CONSENT", "none");
    let errs = errors(&v);
    for needle in [
        "NP_PARTNER_MITZ_FHIR_BASE: not used by a mitz partner (only by twiin)",
        "NP_PARTNER_MITZ_ACCEPT_ALGS: not used by a mitz partner (only by twiin, zorgviewer)",
        "NP_PARTNER_ZV_SEND_BSN: not used by a zorgviewer partner (only by twiin)",
        "NP_PARTNER_HOSPB_CONSENT: not used by a twiin partner (only by zorgviewer)",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn zorgviewer_partner_needs_its_client_id_and_keys() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "zv");
    set(&mut v, "NP_PARTNER_ZV_KIND", "zorgviewer");
    set(&mut v, "NP_PARTNER_ZV_CERT", "dns:zv.example");
    let errs = errors(&v);
    for needle in [
        "NP_PARTNER_ZV_CLIENT_ID: required for a zorgviewer partner",
        "NP_PARTNER_ZV_JWKS_URL: required for a zorgviewer partner",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
    set(&mut v, "NP_PARTNER_ZV_CLIENT_ID", "zorgviewer-client");
    set(
        &mut v,
        "NP_PARTNER_ZV_JWKS_URL",
        "https://auth.zv.example/.well-known/jwks",
    );
    set(&mut v, "NP_PARTNER_ZV_CONSENT", "none");
    let c = from_vars(&v).unwrap();
    let PartnerKind::Zorgviewer(zv) = &c.partners[0].kind else {
        panic!("{:?}", c.partners[0]);
    };
    assert_eq!(zv.assertions.client_id, "zorgviewer-client");
    assert_eq!(zv.assertions.issuer, "zorgviewer-client", "iss = sub");
    assert_eq!(
        zv.assertions.jwks_url.as_deref(),
        Some("https://auth.zv.example/.well-known/jwks")
    );
    assert_eq!(zv.consent, Consent::None);
    assert_eq!(zv.provider_category, "RPZAC104");
    assert!(c.partners[0].twiin().is_none() && c.partners[0].assertions().is_some());
    // SMART backend services: RS384 besides the PSS and ECDSA algorithms.
    let mut algs = crate::jose::DEFAULT_ACCEPTED.to_vec();
    algs.push(Alg::Rs384);
    assert_eq!(zv.assertions.accept_algs, algs);
    assert!(!zv.assertions.accept_algs.contains(&Alg::Rs256));
    // Set explicitly, the list is exactly what is written.
    set(&mut v, "NP_PARTNER_ZV_ACCEPT_ALGS", "ES384");
    let c = from_vars(&v).unwrap();
    assert_eq!(
        c.partners[0].assertions().unwrap().accept_algs,
        [Alg::Es384]
    );
}

#[test]
fn default_accept_algs_depend_on_the_kind() {
    assert_eq!(
        default_accept_algs(Kind::Twiin),
        crate::jose::DEFAULT_ACCEPTED
    );
    assert!(
        !default_accept_algs(Kind::Twiin)
            .iter()
            .any(|a| a.is_pkcs1())
    );
    let zv = default_accept_algs(Kind::Zorgviewer);
    for alg in [
        "RS384", "ES384", "PS256", "PS384", "PS512", "ES256", "ES512",
    ] {
        assert!(zv.contains(&Alg::from_name(alg).unwrap()), "{alg}");
    }
    assert!(!zv.contains(&Alg::Rs256));
    assert!(default_accept_algs(Kind::Mitz).is_empty());
}

#[test]
fn allow_from_applies_to_every_kind_and_names_its_key() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "mitz,zv,hospb");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:broker.vzvz.example");
    set(&mut v, "NP_PARTNER_MITZ_ALLOW_FROM", "192.0.2.0/24");
    set(&mut v, "NP_PARTNER_ZV_KIND", "zorgviewer");
    set(&mut v, "NP_PARTNER_ZV_CERT", "dns:zv.example");
    set(&mut v, "NP_PARTNER_ZV_CLIENT_ID", "zorgviewer");
    set(
        &mut v,
        "NP_PARTNER_ZV_JWKS_URL",
        "https://auth.zv.example/jwks",
    );
    set(
        &mut v,
        "NP_PARTNER_ZV_ALLOW_FROM",
        "20.160.170.124/31, 2001:db8::/32",
    );
    set(&mut v, "NP_PARTNER_HOSPB_CERT", "ura:87654321");
    set(
        &mut v,
        "NP_PARTNER_HOSPB_FHIR_BASE",
        "https://b.example/fhir",
    );
    set(&mut v, "NP_PARTNER_HOSPB_ORG", "ura:87654321");
    let c = from_vars(&v).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let mitz = c.partner("mitz").unwrap();
    assert!(mitz.allows_peer(ip("192.0.2.9")) && !mitz.allows_peer(ip("198.51.100.1")));
    let zv = c.partner("zv").unwrap();
    assert!(zv.allows_peer(ip("20.160.170.125")) && zv.allows_peer(ip("2001:db8::7")));
    assert!(!zv.allows_peer(ip("127.0.0.1")));
    let hospb = c.partner("hospb").unwrap();
    assert!(hospb.allow_from.is_any() && hospb.allows_peer(ip("203.0.113.1")));

    set(&mut v, "NP_PARTNER_ZV_ALLOW_FROM", "20.160.170.125/31");
    set(&mut v, "NP_PARTNER_HOSPB_ALLOW_FROM", "10.0.0.0/8,");
    set(&mut v, "NP_PARTNER_MITZ_ALLOW_FROM", "broker.example");
    let errs = errors(&v);
    for needle in [
        "NP_PARTNER_ZV_ALLOW_FROM: \"20.160.170.125/31\" has address bits set past /31",
        "NP_PARTNER_HOSPB_ALLOW_FROM: has an empty entry",
        "NP_PARTNER_MITZ_ALLOW_FROM: \"broker.example\" is not an IPv4 or IPv6 address",
    ] {
        assert!(has(&errs, needle), "{needle}: {errs:?}");
    }
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn mitz_partner_needs_only_a_certificate() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:broker.vzvz.example");
    let c = from_vars(&v).unwrap();
    assert_eq!(c.partners[0].kind_tag(), Kind::Mitz);
    assert!(c.partners[0].as_mitz().is_some() && c.partners[0].twiin().is_none());
    assert_eq!(
        c.partners[0].cert,
        Some(CertSelector::Dns("broker.vzvz.example".into()))
    );
}

#[test]
fn a_mitz_partner_with_a_url_and_our_mitz_identity() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "mitz,broker");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:api.mitz.example");
    set(
        &mut v,
        "NP_PARTNER_MITZ_URL",
        "https://TST-API.mijn-mitz.nl/tst-us/mitz/",
    );
    set(&mut v, "NP_PARTNER_BROKER_KIND", "mitz");
    set(&mut v, "NP_PARTNER_BROKER_CERT", "dns:broker.vzvz.example");
    set(&mut v, "NP_ORG_CATEGORY", "Z3");
    set(
        &mut v,
        "NP_HOME_COMMUNITY_ID",
        "2.16.840.1.113883.2.4.6.6.1",
    );
    set(&mut v, "NP_SOURCE_ID", "2.16.528.1.1007.3.3.12345678.1");
    let c = from_vars(&v).unwrap();
    assert_eq!(
        c.partners[0].as_mitz().unwrap().url.as_deref(),
        Some("https://tst-api.mijn-mitz.nl/tst-us/mitz")
    );
    assert_eq!(c.partners[1].as_mitz().unwrap().url, None);
    let apis: Vec<&str> = c.mitz_apis().map(|a| a.name).collect();
    assert_eq!(apis, ["mitz"], "only a partner with a URL is an API");
    let api = c.mitz_api("mitz").unwrap();
    assert_eq!(
        api.endpoint("/abonnementen/fhir/Subscription"),
        "https://tst-api.mijn-mitz.nl/tst-us/mitz/abonnementen/fhir/Subscription"
    );
    assert!(c.mitz_api("broker").is_none() && c.mitz_api("nobody").is_none());
    assert_eq!(c.org_category.as_deref(), Some("Z3"));
    assert_eq!(
        c.home_community_id.as_ref().map(|o| o.urn()),
        Some("urn:oid:2.16.840.1.113883.2.4.6.6.1".to_string())
    );
    assert_eq!(
        c.source_id.as_ref().map(|o| o.as_str()),
        Some("2.16.528.1.1007.3.3.12345678.1")
    );
    // Defaults: the notification intake on our public URL, a minute of reuse.
    assert_eq!(
        c.mitz_notify_url,
        "https://np.hospital-a.example:8443/mitz/fhir"
    );
    assert_eq!(c.mitz_decision_ttl, Duration::from_secs(60));

    set(
        &mut v,
        "NP_MITZ_NOTIFY_URL",
        "https://broker.example/fhir/R4/",
    );
    set(&mut v, "NP_MITZ_DECISION_TTL", "5m");
    let c = from_vars(&v).unwrap();
    assert_eq!(c.mitz_notify_url, "https://broker.example/fhir/R4");
    assert_eq!(c.mitz_decision_ttl, Duration::from_secs(300));
}

#[test]
fn mitz_settings_are_checked_naming_the_key() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:api.mitz.example");
    set(
        &mut v,
        "NP_PARTNER_MITZ_URL",
        "https://api.mitz.example/mitz",
    );
    // A URL without our category: the Subscription cannot be written.
    let errs = errors(&v);
    assert_eq!(
        errs,
        [
            "NP_ORG_CATEGORY: required when a mitz partner has a URL (NP_PARTNER_MITZ_URL): our zorgaanbiedercategorie, e.g. Z3"
        ]
    );
    for (key, value, why) in [
        (
            "NP_PARTNER_MITZ_URL",
            "http://api.mitz.example",
            "must start with https://",
        ),
        (
            "NP_PARTNER_MITZ_URL",
            "https://api.mitz.example/?x=1",
            "must not have a query",
        ),
        (
            "NP_ORG_CATEGORY",
            "Z3&providerid=1",
            "is not a zorgaanbiedercategorie code",
        ),
        (
            "NP_ORG_CATEGORY",
            "Z 3",
            "is not a zorgaanbiedercategorie code",
        ),
        (
            "NP_HOME_COMMUNITY_ID",
            "urn:oid:2.16.840.1.113883.2.4.6.6.1",
            "configure the bare OID (2.16.840.1.113883.2.4.6.6.1)",
        ),
        ("NP_SOURCE_ID", "2.16.abc", "is not a dotted OID"),
        (
            "NP_MITZ_NOTIFY_URL",
            "http://np.example/mitz/fhir",
            "must start with https://",
        ),
        ("NP_MITZ_DECISION_TTL", "0s", "must be longer than zero"),
        ("NP_MITZ_DECISION_TTL", "2d", "must be from 1s to 1d"),
    ] {
        let mut bad = v.clone();
        set(&mut bad, "NP_ORG_CATEGORY", "Z3");
        set(&mut bad, key, value);
        let errs = errors(&bad);
        assert_eq!(errs.len(), 1, "{key}={value}: {errs:?}");
        assert!(
            errs[0].starts_with(&format!("{key}: ")) && errs[0].contains(why),
            "{key}={value}: {errs:?}"
        );
    }
    // URL is a mitz key only.
    set(&mut v, "NP_ORG_CATEGORY", "Z3");
    set(&mut v, "NP_PARTNERS", "mitz,hospb");
    set(
        &mut v,
        "NP_PARTNER_HOSPB_FHIR_BASE",
        "https://hospb.example/fhir",
    );
    set(&mut v, "NP_PARTNER_HOSPB_ORG", "ura:22222222");
    set(&mut v, "NP_PARTNER_HOSPB_CERT", "ura:22222222");
    set(&mut v, "NP_PARTNER_HOSPB_URL", "https://hospb.example/mitz");
    assert_eq!(
        errors(&v),
        ["NP_PARTNER_HOSPB_URL: not used by a twiin partner (only by mitz, prs, nvi)"]
    );
}

#[test]
fn env_file_errors_carry_the_line() {
    let f = Files::new();
    let path = f.0.dir.join("np-agent.env");
    std::fs::write(
        &path,
        format!(
            "# np-agent\nNP_PUBLIC_URL=https://a.example\nNP_TLS_CERT={}\nNP_TLS_KEY={}\nNP_TLS_TRUST={}\n\
             NP_SIGNING_KEY={}\nNP_ORG_URA=1234\nNP_POLL_INTERVAL=\"5s\"\nOTHER_VAR=ignored\n",
            f.path("cert.pem"),
            f.path("key.pem"),
            f.path("trust.pem"),
            f.path("signing.pem")
        ),
    )
    .unwrap();
    let errs = load(&Source::File(path.clone())).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].to_string(),
        "NP_ORG_URA: \"1234\" is not an 8-digit URA (line 7)"
    );
    std::fs::write(&path, "NP_A=\"open\n").unwrap();
    let errs = load(&Source::File(path.clone())).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("unterminated double quote (line 1)"),
        "{errs:?}"
    );
    let errs = load(&Source::File(f.0.dir.join("missing.env"))).unwrap_err();
    assert!(
        errs[0].to_string().starts_with("--env-file: cannot read"),
        "{errs:?}"
    );
}

#[test]
fn org_ids() {
    assert_eq!(
        OrgId::parse("ura:12345678").unwrap().oid(),
        "2.16.528.1.1007.3.3.12345678"
    );
    assert!(OrgId::parse("ura:1234567x").is_err());
    assert!(OrgId::parse("12345678").is_err());
    assert_eq!(OrgId::Agb("01234567".into()).to_string(), "agb:01234567");
}

#[test]
fn url_helpers() {
    assert_eq!(
        origin_of("https://h.example:8443/fhir/stu3"),
        "https://h.example:8443"
    );
    assert_eq!(host_of("https://h.example:8443/fhir/stu3"), "h.example");
    assert_eq!(host_of("https://h.example"), "h.example");
    assert_eq!(host_of("https://[::1]:8443/x"), "[::1]");
    assert_eq!(
        parse_https_url("https://h.example/fhir/").unwrap(),
        "https://h.example/fhir"
    );
    assert!(parse_https_url("https://h.example:99999999/").is_err());
    assert!(parse_https_url("https://h.example/a#b").is_err());
    assert_eq!(
        parse_https_url(" HTTPS://H.Example:8443/Fhir/ ").unwrap(),
        "https://h.example:8443/Fhir"
    );
    assert_eq!(origin_of("https://h.example:443/fhir"), "https://h.example");
    assert_eq!(host_of("https://[::1]:8443/x"), "[::1]");
    for (bad, why) in [
        ("https://h.example:99999/fhir", "has an invalid port"),
        ("https://h.example:0/fhir", "has an invalid port"),
        (
            "https://user@h.example/fhir",
            "must not have user information",
        ),
        ("https://h.example/fhir?x=1", "must not have a query"),
        (
            "https://h.example/fhir/../admin",
            "has a . or .. path segment",
        ),
        (
            "https://h.example/a%2Fb",
            "has an encoded / or \\ in its path",
        ),
        (
            "https://h.example/a%zz",
            "has a % not followed by two hex digits",
        ),
        ("https://h_x.example/", "has no valid host"),
        ("http://h.example/", "must start with https://"),
    ] {
        let e = parse_https_url(bad).unwrap_err();
        assert!(e.starts_with(&format!("{bad:?} {why}")), "{e}");
    }
}

#[test]
fn readme_documents_every_key_with_its_default() {
    let readme = include_str!("../../README.md");
    for k in KEYS {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
            .unwrap_or_else(|| panic!("README has no row for {}", k.name));
        match (k.required, k.default) {
            (true, _) => assert!(row.contains("| required |"), "{row}"),
            (false, Some(d)) if !d.is_empty() && !d.contains(' ') => {
                assert!(
                    row.contains(&format!("`{d}`")),
                    "README default of {}: {row}",
                    k.name
                )
            }
            _ => {}
        }
    }
    for k in PARTNER_KEYS {
        assert!(
            readme.contains(&format!("| `NP_PARTNER_<NAME>_{}` |", k.name)),
            "README has no row for NP_PARTNER_<NAME>_{}",
            k.name
        );
    }
}

/// `prs` and `nvi` partners with our localisation identity.
fn with_localisation(f: &Files) -> Vars {
    let mut v = f.base();
    for (k, val) in [
        ("NP_PARTNERS", "prs,nvi"),
        ("NP_ORG_OIN", "00000001234567890000"),
        ("NP_SOURCE_ID", "2.16.528.1.1007.3.3.12345678.1"),
        ("NP_PARTNER_PRS_KIND", "prs"),
        ("NP_PARTNER_PRS_URL", "https://prs.example/"),
        ("NP_PARTNER_PRS_TOKEN_URL", "https://auth.example/token"),
        ("NP_PARTNER_NVI_KIND", "nvi"),
        ("NP_PARTNER_NVI_URL", "https://nvi.example/api"),
        ("NP_PARTNER_NVI_TOKEN_URL", "https://auth.example/token"),
        ("NP_PARTNER_NVI_OIN", "00000099000000001000"),
    ] {
        set(&mut v, k, val);
    }
    v
}

#[test]
fn prs_and_nvi_partners_with_their_defaults() {
    let f = Files::new();
    let c = from_vars(&with_localisation(&f)).unwrap();
    assert_eq!(c.org_oin.as_deref(), Some("00000001234567890000"));
    let prs = c.prs().unwrap();
    assert_eq!(prs.name, "prs");
    assert_eq!(prs.url, "https://prs.example");
    assert_eq!(prs.scope, "prs:read");
    assert_eq!(
        prs.audience, "https://prs.example",
        "the audience defaults to the URL"
    );
    assert!(
        prs.partner.cert.is_none(),
        "a service we only call has no certificate rule"
    );
    let nvi = c.nvi_partner("nvi").unwrap();
    assert_eq!(
        nvi.service.scope,
        "nvi:create nvi:read nvi:delete nvi:localize"
    );
    assert_eq!(nvi.oin, "00000099000000001000");
    assert_eq!(nvi.pseudonym_scope, "nvi");
    assert_eq!(nvi.api, NviApi::Fhir);
    assert_eq!(c.nvi_partners().count(), 1);
    let mut v = with_localisation(&f);
    set(&mut v, "NP_PARTNER_NVI_API", "json");
    set(&mut v, "NP_PARTNER_NVI_SCOPE", " nvi:create  nvi:delete ");
    set(&mut v, "NP_PARTNER_NVI_AUDIENCE", "nvi-gateway");
    set(&mut v, "NP_PARTNER_NVI_PSEUDONYM_SCOPE", "localisation");
    let c = from_vars(&v).unwrap();
    let nvi = c.nvi_partner("nvi").unwrap();
    assert_eq!(nvi.api, NviApi::Json);
    assert_eq!(nvi.service.scope, "nvi:create nvi:delete");
    assert_eq!(nvi.service.audience, "nvi-gateway");
    assert_eq!(nvi.pseudonym_scope, "localisation");
}

#[test]
fn localisation_needs_its_identity_and_names_each_missing_piece() {
    let f = Files::new();
    let mut v = with_localisation(&f);
    v.remove("NP_ORG_OIN");
    v.remove("NP_SOURCE_ID");
    let errs = errors(&v);
    assert!(
        has(&errs, "NP_ORG_OIN: required with a prs partner (prs)"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "NP_SOURCE_ID: required with an nvi partner (nvi)"),
        "{errs:?}"
    );
    let mut v = with_localisation(&f);
    set(&mut v, "NP_PARTNERS", "nvi");
    for k in ["KIND", "URL", "TOKEN_URL"] {
        v.remove(&format!("NP_PARTNER_PRS_{k}"));
    }
    let errs = errors(&v);
    assert!(
        has(&errs, "NP_PARTNERS: nvi partner(s) nvi need a prs partner"),
        "{errs:?}"
    );
    for (key, value, why) in [
        (
            "NP_ORG_OIN",
            "oin:00000001234567890000",
            "configure the 20 digits",
        ),
        ("NP_ORG_OIN", "123", "is not a 20-digit OIN"),
        ("NP_PARTNER_NVI_OIN", "1234", "is not a 20-digit OIN"),
        ("NP_PARTNER_NVI_API", "soap", "must be fhir or json"),
        ("NP_PARTNER_NVI_PSEUDONYM_SCOPE", "a|b", "without |"),
        ("NP_PARTNER_NVI_SCOPE", "nvi:\"x\"", "scope tokens"),
        ("NP_PARTNER_PRS_URL", "http://prs.example", "https://"),
        (
            "NP_PARTNER_PRS_CERT",
            "ura:12345678",
            "not used by a prs partner",
        ),
        (
            "NP_PARTNER_NVI_ALLOW_FROM",
            "10.0.0.0/8",
            "not used by a nvi partner",
        ),
        (
            "NP_PARTNER_PRS_OIN",
            "00000099000000001000",
            "not used by a prs partner (only by nvi)",
        ),
    ] {
        let mut bad = with_localisation(&f);
        set(&mut bad, key, value);
        let errs = errors(&bad);
        assert_eq!(errs.len(), 1, "{key}={value}: {errs:?}");
        assert!(
            errs[0].starts_with(&format!("{key}: ")) && errs[0].contains(why),
            "{key}={value}: {errs:?}"
        );
    }
    let mut v = with_localisation(&f);
    v.remove("NP_PARTNER_NVI_OIN");
    v.remove("NP_PARTNER_NVI_TOKEN_URL");
    let errs = errors(&v);
    assert!(
        has(&errs, "NP_PARTNER_NVI_OIN: required for a nvi partner"),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "NP_PARTNER_NVI_TOKEN_URL: required for a nvi partner"
        ),
        "{errs:?}"
    );
}

/// Off by default: nothing of localisation is configured without its partners.
#[test]
fn without_prs_and_nvi_partners_nothing_of_localisation_exists() {
    let f = Files::new();
    let c = from_vars(&f.base()).unwrap();
    assert!(c.prs().is_none());
    assert_eq!(c.nvi_partners().count(), 0);
    assert_eq!(c.org_oin, None);
}

#[test]
fn the_closed_question_needs_the_requesters_category() {
    let f = Files::new();
    let mut v = f.base();
    set(&mut v, "NP_PARTNERS", "zv,mitz");
    set(&mut v, "NP_PARTNER_ZV_KIND", "zorgviewer");
    set(&mut v, "NP_PARTNER_ZV_CERT", "dns:zv.example");
    set(&mut v, "NP_PARTNER_ZV_CLIENT_ID", "zv");
    set(&mut v, "NP_PARTNER_ZV_JWKS_URL", "https://zv.example/jwks");
    set(&mut v, "NP_PARTNER_MITZ_KIND", "mitz");
    set(&mut v, "NP_PARTNER_MITZ_CERT", "dns:mitz.example");
    // Notifications only: no closed question, no category needed.
    assert!(from_vars(&v).is_ok());
    set(
        &mut v,
        "NP_PARTNER_MITZ_URL",
        "https://mitz.example/tst-us/mitz",
    );
    set(&mut v, "NP_ORG_CATEGORY", "V4");
    let errs = errors(&v);
    assert!(
        has(
            &errs,
            "NP_PARTNER_ZV_REQUESTER_CATEGORY: required while a mitz partner has a URL"
        ),
        "{errs:?}"
    );
    set(&mut v, "NP_PARTNER_ZV_REQUESTER_CATEGORY", "Z3 x");
    assert!(has(
        &errors(&v),
        "NP_PARTNER_ZV_REQUESTER_CATEGORY: \"Z3 x\" is not a zorgaanbiedercategorie code"
    ));
    set(&mut v, "NP_PARTNER_ZV_REQUESTER_CATEGORY", "Z3");
    let c = from_vars(&v).unwrap();
    let PartnerKind::Zorgviewer(zv) = &c.partners[0].kind else {
        panic!()
    };
    assert_eq!(zv.requester_category.as_deref(), Some("Z3"));
    // A partner served without consent needs none.
    v.remove("NP_PARTNER_ZV_REQUESTER_CATEGORY");
    set(&mut v, "NP_PARTNER_ZV_CONSENT", "none");
    assert!(from_vars(&v).is_ok());
}
