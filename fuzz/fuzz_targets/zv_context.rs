//! Zorgviewer request headers in: never panics; an accepted context names
//! the token's organisation, echoes only ids that are safe header values, and
//! its `AORTA-ID` audit form reads back to the same; a refusal is a 400 or
//! 403 whose OperationOutcome can be written.
//!
//! Input: header lines `name:value` separated by `\n`; after a NUL byte,
//! claims that are signed with the partner's key and sent as `X-ZV-Context`,
//! so the claim and agreement checks behind the signature are reached too.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use np_agent::fhir::{FhirVersion, Format};
use np_agent::jose::{Alg, DEFAULT_ACCEPTED, Jwks, SigningKey, generate_pkcs8_pem};
use np_agent::zorgviewer::aorta;
use np_agent::zorgviewer::context::{Expect, RequestContext, echo_headers};

const NOW: i64 = 1_796_191_098;
const ORG: &str = "2.16.840.1.113883.2.4.3.8";

fn partner() -> &'static (SigningKey, Jwks) {
    static PARTNER: OnceLock<(SigningKey, Jwks)> = OnceLock::new();
    PARTNER.get_or_init(|| {
        let pem = generate_pkcs8_pem(Alg::Es256).expect("key generation");
        let key = SigningKey::from_pkcs8_pem(&pem, Alg::Es256, None).expect("key");
        let keys = Jwks::new(vec![key.public_jwk()]).expect("key set");
        (key, keys)
    })
}

fuzz_target!(|data: &[u8]| {
    let (key, keys) = partner();
    let (lines, claims) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let mut headers: Vec<(String, Vec<u8>)> = lines
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..at]).into_owned();
            Some((name, line[at + 1..].to_vec()))
        })
        .collect();
    if let Some(token) = claims.and_then(|c| key.sign_jwt(c).ok()) {
        headers.push(("X-ZV-Context".into(), token.into_bytes()));
    }
    let expect = Expect {
        request_id: "generated",
        keys,
        algs: DEFAULT_ACCEPTED,
        token_org: "urn:oid:2.16.840.1.113883.2.4.3.8",
        now: NOW,
    };
    match RequestContext::from_headers(&headers, &expect) {
        Ok(ctx) => {
            assert_eq!(ctx.organization_oid(), ORG);
            for (_, value) in echo_headers(&ctx) {
                assert!(
                    !value.is_empty()
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                    "{value:?}"
                );
            }
            if let Some(id) = ctx.aorta_id() {
                let written = id.audit_form();
                assert_eq!(aorta::parse(&written).as_ref(), Ok(id), "{written}");
            }
        }
        Err(refused) => {
            assert!(matches!(refused.status(), 400 | 403), "{refused}");
            let response = refused
                .refusal()
                .response(Format::Json, FhirVersion::Stu3);
            assert_eq!(response.status, refused.status());
            assert!(!refused.label().is_empty());
        }
    }
});
