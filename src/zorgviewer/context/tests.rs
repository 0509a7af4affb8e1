use std::sync::OnceLock;

use super::*;
use crate::fhir::{FhirVersion, Format, Limits, parse_json};
use crate::jose::test_keys::{self, dangerous_sign_with_header};
use crate::jose::{DEFAULT_ACCEPTED, SigningKey, generate_pkcs8_pem};
use crate::util::b64;

const NOW: i64 = 1_796_191_098;
/// The token's `subject_organization_id`, as the token JWT writes it.
const TOKEN_ORG: &str = "urn:oid:2.16.840.1.113883.2.4.3.8";
const ORG: &str = "2.16.840.1.113883.2.4.3.8";
const OTHER_ORG: &str = "2.16.528.1.1007.3.3.15123";
const USR: &str = "smart-Practitioner-71614502";
const ROL: &str = "223366009";
const RID: &str = "1b9d6bCd-bBf";
const CID: &str = "H54f_8b9d6bC";
const UUID: &str = "6f1c1b52-0a43-4b8e-9d0e-2f7f3b0f5a11";
/// What the server made of a request without `X-Request-Id`.
const GENERATED: &str = "0f3c9a6d2b8e4f17a5c0d9e2b7f4a130";
/// The IG's `X-ZV-Context` example: HS256 over the claims below.
const IG_SAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJqZWN0X29yZ2FuaXphdGlvbl9pZCI6IjIuMTYuODQwLjEuMTEzODgzLjIuNC4zLjgiLCJzdWJqZWN0X2lkIjoic21hcnQtUHJhY3RpdGlvbmVyLTcxNjE0NTAyIiwic3ViamVjdF9yb2xlIjoiMjIzMzY2MDA5In0.luhI3cpGGpoEIAtDi8d-Bhf0h2wdEO1f_Jt1xHFe1Xc";
/// The claims of the IG's example, byte for byte.
const IG_CLAIMS: &str = r#"{"subject_organization_id":"2.16.840.1.113883.2.4.3.8","subject_id":"smart-Practitioner-71614502","subject_role":"223366009"}"#;

/// The partner's key set: ES256, PS256 and ES384 keys.
fn keys() -> &'static Jwks {
    static KEYS: OnceLock<Jwks> = OnceLock::new();
    KEYS.get_or_init(|| {
        Jwks::new(
            [Alg::Es256, Alg::Ps256, Alg::Es384]
                .into_iter()
                .map(|alg| test_keys::key(alg).public_jwk())
                .collect(),
        )
        .unwrap()
    })
}

fn expect(request_id: &str) -> Expect<'_> {
    Expect {
        request_id,
        keys: keys(),
        algs: DEFAULT_ACCEPTED,
        token_org: TOKEN_ORG,
        now: NOW,
    }
}

/// `claims` signed by the partner's `alg` key.
fn signed(alg: Alg, claims: &str) -> String {
    test_keys::key(alg).sign_jwt(claims.as_bytes()).unwrap()
}

/// The IG's claims plus `extra` members (`"exp":1`), signed with ES256.
fn with_claims(extra: &str) -> String {
    let claims = format!("{},{extra}}}", IG_CLAIMS.trim_end_matches('}'));
    signed(Alg::Es256, &claims)
}

/// Claims with these values, signed with ES256.
fn context_of(org: &str, usr: Option<&str>, rol: Option<&str>) -> String {
    let mut claims = format!(r#"{{"subject_organization_id":"{org}""#);
    for (name, value) in [("subject_id", usr), ("subject_role", rol)] {
        if let Some(v) = value {
            claims.push_str(&format!(r#","{name}":"{v}""#));
        }
    }
    claims.push('}');
    signed(Alg::Es256, &claims)
}

type Fields = Vec<(String, Vec<u8>)>;

/// The headers Zorgviewer sends with every request, without a context.
fn base() -> Fields {
    fields(&[
        ("X-Request-Id", RID),
        ("X-Correlation-Id", CID),
        ("X-ZV-Subject-Organization-Id", ORG),
        ("X-ZV-Subject-Id", USR),
        ("X-ZV-Subject-Role", ROL),
    ])
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// `headers` with `name` set to `value` (replacing a field of that name in
/// any case, else added).
fn set(mut headers: Fields, name: &str, value: &str) -> Fields {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), value.as_bytes().to_vec()));
    headers
}

/// `headers` without `name` (any case).
fn without(mut headers: Fields, name: &str) -> Fields {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers
}

/// `headers` with one more field, even when one of that name is there.
fn plus(mut headers: Fields, name: &str, value: &[u8]) -> Fields {
    headers.push((name.to_string(), value.to_vec()));
    headers
}

fn with_context(token: &str) -> Fields {
    set(base(), "X-ZV-Context", token)
}

/// The request id as the server would have it: the partner's when it is
/// 1–128 visible ASCII characters, else generated.
fn request_id_of(headers: &Fields) -> &str {
    let sent = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    match sent {
        Some(id) if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) => id,
        _ => GENERATED,
    }
}

/// `claims` signed with ES256 as given, even when our signer would refuse
/// them (a duplicate member).
fn raw_signed(header: &str, claims: &str) -> String {
    dangerous_sign_with_header(
        &test_keys::key(Alg::Es256),
        header.as_bytes(),
        claims.as_bytes(),
    )
}

fn es256_header(typ: &str) -> String {
    format!(
        r#"{{"alg":"ES256","typ":"{typ}","kid":"{}"}}"#,
        test_keys::key(Alg::Es256).kid()
    )
}

fn run(headers: &Fields) -> Result<RequestContext, ContextRefusal> {
    RequestContext::from_headers(headers, &expect(request_id_of(headers)))
}

/// What a row checks of an accepted context:
/// `verified|sent|correlation|user|role`.
fn summary(ctx: &RequestContext) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        if ctx.verified() {
            "verified"
        } else {
            "unverified"
        },
        if ctx.request_id_sent() {
            "sent"
        } else {
            "generated"
        },
        ctx.correlation_id().unwrap_or("-"),
        ctx.subject_id().unwrap_or("-"),
        ctx.subject_role().unwrap_or("-"),
    )
}

type Want = Result<String, (u16, &'static str)>;

fn ok(s: &str) -> Want {
    Ok(s.to_string())
}

fn table() -> Vec<(&'static str, Fields, Want)> {
    let full_v = format!("verified|sent|{CID}|{USR}|{ROL}");
    let full_u = format!("unverified|sent|{CID}|{USR}|{ROL}");
    let malformed = Err((400, "zv_header_malformed"));
    let disagrees = Err((403, "zv_subject_disagrees"));
    let lower: Fields = base()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    let upper: Fields = base()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_uppercase(), v))
        .collect();
    let rid_form = format!("rid:{RID};cid:{CID};usr:{USR};rol:{ROL};org:{ORG}");
    let req_form = format!("req={UUID}; usr={USR}; rol={ROL}; org=urn:oid:{ORG}");
    // 128 and 129 characters, the user only in AORTA-ID.
    let head = format!("rid:{RID};org:{ORG};usr:");
    let aorta_of = |len: usize| format!("{head}{}", "u".repeat(len - head.len()));
    let aorta_only = without(base(), "X-ZV-Subject-Id");
    let foreign =
        SigningKey::from_pkcs8_pem(&generate_pkcs8_pem(Alg::Es256).unwrap(), Alg::Es256, None)
            .unwrap();
    let impostor = SigningKey::from_pkcs8_pem(
        &generate_pkcs8_pem(Alg::Es256).unwrap(),
        Alg::Es256,
        Some(test_keys::key(Alg::Es256).kid().to_string()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64::encode(IG_CLAIMS.as_bytes())
    );
    vec![
        // The headers alone, and with a verified context.
        ("headers without a context", base(), ok(&full_u)),
        (
            "ES256 context over the IG's claims",
            with_context(&signed(Alg::Es256, IG_CLAIMS)),
            ok(&full_v),
        ),
        (
            "PS256 context",
            with_context(&signed(Alg::Ps256, IG_CLAIMS)),
            ok(&full_v),
        ),
        (
            "ES384 context",
            with_context(&signed(Alg::Es384, IG_CLAIMS)),
            ok(&full_v),
        ),
        (
            "a context without the individual headers",
            fields(&[
                ("X-Request-Id", RID),
                ("X-ZV-Context", &signed(Alg::Es256, IG_CLAIMS)),
            ]),
            ok(&format!("verified|sent|-|{USR}|{ROL}")),
        ),
        (
            "no headers at all",
            Vec::new(),
            ok("unverified|generated|-|-|-"),
        ),
        // Ids.
        (
            "no X-Request-Id",
            without(base(), "X-Request-Id"),
            ok(&format!("unverified|generated|{CID}|{USR}|{ROL}")),
        ),
        (
            "no X-Correlation-Id",
            without(base(), "X-Correlation-Id"),
            ok(&format!("unverified|sent|-|{USR}|{ROL}")),
        ),
        (
            "X-Request-Id of 64 characters",
            set(base(), "X-Request-Id", &"r".repeat(64)),
            ok(&full_u),
        ),
        (
            "X-Request-Id as a UUID",
            set(base(), "X-Request-Id", UUID),
            ok(&full_u),
        ),
        (
            "X-Request-Id of 65 characters",
            set(base(), "X-Request-Id", &"r".repeat(65)),
            malformed.clone(),
        ),
        (
            "X-Request-Id with a dot",
            set(base(), "X-Request-Id", "1b9d6bCd.bBf"),
            malformed.clone(),
        ),
        (
            "X-Correlation-Id with a space",
            set(base(), "X-Correlation-Id", "H54f 8b9d6bC"),
            malformed.clone(),
        ),
        (
            "X-Correlation-Id sent twice",
            plus(base(), "x-correlation-id", CID.as_bytes()),
            Err((400, "zv_header_repeated")),
        ),
        // Names in any case; empty values.
        ("lower-case names", lower, ok(&full_u)),
        ("upper-case names", upper, ok(&full_u)),
        (
            "the IG's spelling X-ZV-Subject-role",
            set(base(), "X-ZV-Subject-role", ROL),
            ok(&full_u),
        ),
        (
            "an empty X-ZV-Subject-Role is none",
            set(base(), "X-ZV-Subject-Role", ""),
            ok(&format!("unverified|sent|{CID}|{USR}|-")),
        ),
        (
            "X-ZV-Subject-Id twice, in two spellings",
            plus(base(), "x-zv-subject-id", USR.as_bytes()),
            Err((400, "zv_header_repeated")),
        ),
        (
            "X-ZV-Subject-Id with a byte outside ASCII",
            plus(
                without(base(), "X-ZV-Subject-Id"),
                "X-ZV-Subject-Id",
                b"caf\xe9",
            ),
            Err((400, "zv_header_not_text")),
        ),
        // Value rules.
        (
            "organisation in urn:oid: form",
            set(base(), "X-ZV-Subject-Organization-Id", TOKEN_ORG),
            ok(&full_u),
        ),
        (
            "organisation that is not an OID",
            set(base(), "X-ZV-Subject-Organization-Id", "UMCG"),
            malformed.clone(),
        ),
        (
            "URA beside an organisation OID outside the URA root",
            set(base(), "X-ZV-Subject-Organization-Ura", "12345678"),
            ok(&full_u),
        ),
        (
            "URA of 7 digits",
            set(base(), "X-ZV-Subject-Organization-Ura", "1234567"),
            malformed.clone(),
        ),
        (
            "user id of 129 characters",
            set(base(), "X-ZV-Subject-Id", &"u".repeat(129)),
            malformed.clone(),
        ),
        (
            "role with a space",
            set(base(), "X-ZV-Subject-Role", "223366009 arts"),
            malformed.clone(),
        ),
        // AORTA-ID.
        (
            "AORTA-ID rid form agreeing with the headers",
            set(base(), "AORTA-ID", &rid_form),
            ok(&full_u),
        ),
        (
            "AORTA-ID req form agreeing with the headers",
            set(base(), "AORTA-ID", &req_form),
            ok(&full_u),
        ),
        (
            "aorta-id in lower case",
            set(base(), "aorta-id", &rid_form),
            ok(&full_u),
        ),
        (
            "AORTA-ID of 128 characters",
            set(aorta_only.clone(), "AORTA-ID", &aorta_of(128)),
            ok(&format!(
                "unverified|sent|{CID}|{}|{ROL}",
                "u".repeat(128 - head.len())
            )),
        ),
        (
            "AORTA-ID of 129 characters",
            set(aorta_only, "AORTA-ID", &aorta_of(129)),
            Err((400, "aorta_id_too_long")),
        ),
        (
            "AORTA-ID in the AORTA-on-FHIR form",
            set(
                base(),
                "AORTA-ID",
                &format!("initialRequestID={UUID}; requestID={UUID}"),
            ),
            Err((400, "aorta_id_malformed")),
        ),
        (
            "AORTA-ID mixing both forms",
            set(base(), "AORTA-ID", &format!("rid:{RID}; usr={USR}")),
            Err((400, "aorta_id_malformed")),
        ),
        (
            "AORTA-ID usr disagreeing with X-ZV-Subject-Id",
            set(base(), "AORTA-ID", &format!("rid:{RID};usr:larts")),
            disagrees.clone(),
        ),
        (
            "AORTA-ID rol disagreeing with X-ZV-Subject-Role",
            set(base(), "AORTA-ID", &format!("rid:{RID};rol:62247001")),
            disagrees.clone(),
        ),
        (
            "AORTA-ID org of another organisation",
            set(base(), "AORTA-ID", &format!("rid:{RID};org:{OTHER_ORG}")),
            disagrees.clone(),
        ),
        (
            "X-ZV-Subject-Organization-Id of another organisation",
            set(base(), "X-ZV-Subject-Organization-Id", OTHER_ORG),
            disagrees.clone(),
        ),
        // The context's signature.
        (
            "HS256 context: the IG's sample",
            with_context(IG_SAMPLE),
            Err((403, "zv_context_alg_hmac")),
        ),
        (
            "alg none",
            with_context(&none),
            Err((403, "zv_context_alg_none")),
        ),
        (
            "RS256, not accepted by default",
            with_context(&signed(Alg::Rs256, IG_CLAIMS)),
            Err((403, "zv_context_alg_not_accepted")),
        ),
        (
            "a key outside the partner's set",
            with_context(&foreign.sign_jwt(IG_CLAIMS.as_bytes()).unwrap()),
            Err((403, "zv_context_unknown_kid")),
        ),
        (
            "the partner's kid on another key",
            with_context(&impostor.sign_jwt(IG_CLAIMS.as_bytes()).unwrap()),
            Err((403, "zv_context_signature")),
        ),
        (
            "a context that is not a JWS",
            with_context("not-a-jws"),
            Err((403, "zv_context_malformed")),
        ),
        (
            "a context with typ other than JWT",
            with_context(&raw_signed(&es256_header("at+jwt"), IG_CLAIMS)),
            Err((403, "zv_context_malformed")),
        ),
        // The context's time window.
        (
            "exp passed",
            with_context(&with_claims(&format!(r#""exp":{}"#, NOW - 61))),
            Err((403, "zv_context_expired")),
        ),
        (
            "exp passed within the skew",
            with_context(&with_claims(&format!(r#""exp":{}"#, NOW - 59))),
            ok(&full_v),
        ),
        (
            "exp an hour ahead",
            with_context(&with_claims(&format!(r#""exp":{}"#, NOW + 3600))),
            Err((403, "zv_context_exp_too_late")),
        ),
        (
            "iat 6 minutes ago",
            with_context(&with_claims(&format!(r#""iat":{}"#, NOW - 360))),
            Err((403, "zv_context_too_old")),
        ),
        (
            "iat 5 minutes ago, exp in a minute",
            with_context(&with_claims(&format!(
                r#""iat":{},"exp":{}"#,
                NOW - 300,
                NOW + 60
            ))),
            ok(&full_v),
        ),
        (
            "iat in the future",
            with_context(&with_claims(&format!(r#""iat":{}"#, NOW + 61))),
            Err((403, "zv_context_not_yet_valid")),
        ),
        (
            "exp as a string",
            with_context(&with_claims(&format!(r#""exp":"{}""#, NOW + 60))),
            Err((403, "zv_context_claims")),
        ),
        // The context's claims.
        (
            "a context without subject_id",
            with_context(&context_of(ORG, None, Some(ROL))),
            Err((403, "zv_context_claims")),
        ),
        (
            "subject_role as a number",
            with_context(&signed(
                Alg::Es256,
                &format!(
                    r#"{{"subject_organization_id":"{ORG}","subject_id":"{USR}","subject_role":{ROL}}}"#
                ),
            )),
            Err((403, "zv_context_claims")),
        ),
        (
            "subject_id twice",
            with_context(&raw_signed(
                &es256_header("JWT"),
                &format!(
                    r#"{},"subject_id":"other"}}"#,
                    IG_CLAIMS.trim_end_matches('}')
                ),
            )),
            Err((403, "zv_context_claims")),
        ),
        // Agreement with a verified context.
        (
            "context subject_id disagreeing with X-ZV-Subject-Id",
            with_context(&context_of(ORG, Some("larts"), Some(ROL))),
            disagrees.clone(),
        ),
        (
            "context subject_role disagreeing with X-ZV-Subject-Role",
            with_context(&context_of(ORG, Some(USR), Some("62247001"))),
            disagrees.clone(),
        ),
        (
            "context organisation disagreeing with the token",
            with_context(&context_of(OTHER_ORG, Some(USR), Some(ROL))),
            disagrees.clone(),
        ),
        (
            "context organisation in urn:oid: form",
            with_context(&context_of(TOKEN_ORG, Some(USR), Some(ROL))),
            ok(&full_v),
        ),
        (
            "context without role, X-ZV-Subject-Role sent",
            with_context(&context_of(ORG, Some(USR), None)),
            Err((403, "zv_subject_not_in_context")),
        ),
        (
            "context without role, no role sent",
            set(
                without(base(), "X-ZV-Subject-Role"),
                "X-ZV-Context",
                &context_of(ORG, Some(USR), None),
            ),
            ok(&format!("verified|sent|{CID}|{USR}|-")),
        ),
        (
            "AORTA-ID usr disagreeing with the context",
            set(
                with_context(&signed(Alg::Es256, IG_CLAIMS)),
                "AORTA-ID",
                &format!("rid:{RID};usr:larts"),
            ),
            disagrees,
        ),
        (
            "AORTA-ID agreeing with the context",
            set(
                with_context(&signed(Alg::Es384, IG_CLAIMS)),
                "AORTA-ID",
                &rid_form,
            ),
            ok(&full_v),
        ),
    ]
}

#[test]
fn every_header_case() {
    let rows = table();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    for (name, headers, want) in rows {
        let got = run(&headers)
            .map(|ctx| summary(&ctx))
            .map_err(|r| (r.status(), r.label()));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn refusals_never_quote_what_was_sent() {
    for (name, headers, _) in table() {
        let Err(refused) = run(&headers) else {
            continue;
        };
        let refusal = refused.refusal();
        assert_eq!(refusal.status, refused.status(), "{name}");
        assert_eq!(refusal.reason(), refused.reason(), "{name}");
        let shown = format!("{} {}", refusal.diagnostics(), refused);
        for (field, value) in &headers {
            let value = String::from_utf8_lossy(value);
            // Values short enough to be words of a rule ("JWT") are not
            // distinctive; everything Zorgviewer sends is longer.
            if value.len() >= 8 {
                assert!(!shown.contains(&*value), "{name}: {shown} quotes {field}");
            }
        }
        for secret in ["larts", "UMCG"] {
            assert!(!shown.contains(secret), "{name}: {shown}");
        }
    }
}

#[test]
fn an_hmac_context_is_refused_as_not_asymmetric() {
    let refused = run(&with_context(IG_SAMPLE)).unwrap_err();
    assert_eq!(
        refused.problem(),
        Problem::Signature(SignatureFault::AlgHmac)
    );
    let response = refused.refusal().response(Format::Json, FhirVersion::Stu3);
    assert_eq!(response.status, 403);
    let outcome = parse_json(&response.body, &Limits::default()).unwrap();
    assert_eq!(outcome["issue"][0]["code"], "security");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("hmac") && diagnostics.contains("asymmetric"),
        "{diagnostics}"
    );
    let none = run(&with_context(&format!(
        "{}.{}.",
        b64::encode(br#"{"alg":"none"}"#),
        b64::encode(IG_CLAIMS.as_bytes())
    )))
    .unwrap_err();
    assert!(none.reason().contains("\"none\" is never accepted"));
    assert!(none.reason().contains("asymmetric"));
}

#[test]
fn disagreements_are_403_forbidden_naming_both_sources() {
    for (headers, reason) in [
        (
            with_context(&context_of(ORG, Some("larts"), Some(ROL))),
            "X-ZV-Subject-Id disagrees with X-ZV-Context subject_id",
        ),
        (
            with_context(&context_of(OTHER_ORG, Some(USR), Some(ROL))),
            "X-ZV-Context subject_organization_id disagrees with the token's subject_organization_id",
        ),
        (
            set(base(), "AORTA-ID", &format!("rid:{RID};usr:larts")),
            "AORTA-ID usr disagrees with X-ZV-Subject-Id",
        ),
        (
            with_context(&context_of(ORG, Some(USR), None)),
            "X-ZV-Subject-Role is sent but the verified X-ZV-Context subject_role is absent",
        ),
    ] {
        let refused = run(&headers).unwrap_err();
        assert_eq!(refused.reason(), reason);
        let refusal = refused.refusal();
        assert_eq!((refusal.status, refusal.code), (403, IssueType::Forbidden));
    }
}

#[test]
fn the_token_org_is_compared_without_urn_oid_in_either_form() {
    for token_org in [ORG, TOKEN_ORG, "URN:OID:2.16.840.1.113883.2.4.3.8"] {
        for headers in [
            base(),
            set(base(), "X-ZV-Subject-Organization-Id", TOKEN_ORG),
            with_context(&context_of(TOKEN_ORG, Some(USR), Some(ROL))),
            with_context(&context_of(ORG, Some(USR), Some(ROL))),
        ] {
            let ctx = RequestContext::from_headers(
                &headers,
                &Expect {
                    token_org,
                    ..expect(RID)
                },
            )
            .unwrap();
            assert_eq!(ctx.organization_oid(), ORG, "{token_org}");
        }
    }
    let other = Expect {
        token_org: &format!("urn:oid:{OTHER_ORG}"),
        ..expect(RID)
    };
    let refused = RequestContext::from_headers(&base(), &other).unwrap_err();
    assert_eq!(
        refused.problem(),
        Problem::Disagrees(Source::Header(Header::OrganizationId), Source::Token)
    );
    // Without any organisation header the token's is the context's.
    let ctx = RequestContext::from_headers(&[], &other).unwrap();
    assert_eq!(ctx.organization_oid(), OTHER_ORG);
}

#[test]
fn the_ig_aorta_id_of_tjongerschans_is_read_whole() {
    let sample =
        "rid:1b9d6bCd-bBf;cid:yA8UM8fHmhde;usr:larts;rol:62247001;org:2.16.528.1.1007.3.3.15123";
    let headers = fields(&[
        ("AORTA-ID", sample),
        ("X-ZV-Subject-Organization-Ura", "00015123"),
    ]);
    let tjongerschans = Expect {
        token_org: "urn:oid:2.16.528.1.1007.3.3.15123",
        ..expect(GENERATED)
    };
    let ctx = RequestContext::from_headers(&headers, &tjongerschans).unwrap();
    assert_eq!(ctx.request_id(), GENERATED);
    assert!(!ctx.request_id_sent());
    let aorta = ctx.aorta_id().unwrap();
    assert_eq!(aorta.request_id(), "1b9d6bCd-bBf");
    assert_eq!(aorta.correlation_id(), Some("yA8UM8fHmhde"));
    assert_eq!(aorta.audit_form(), sample);
    assert_eq!(ctx.subject_id(), Some("larts"));
    assert_eq!(ctx.subject_role(), Some("62247001"));
    assert_eq!(ctx.organization_oid(), OTHER_ORG);
    assert_eq!(ctx.organization_ura(), Some("00015123"));
    assert!(!ctx.verified());
    // The URA header must be the number of a URA OID.
    let wrong_ura = set(headers, "X-ZV-Subject-Organization-Ura", "00015124");
    let refused = RequestContext::from_headers(&wrong_ura, &tjongerschans).unwrap_err();
    assert_eq!(
        refused.problem(),
        Problem::Disagrees(Source::Header(Header::OrganizationUra), Source::Token)
    );
}

#[test]
fn the_request_id_is_the_servers_and_sent_says_whose() {
    let ctx = run(&base()).unwrap();
    assert_eq!((ctx.request_id(), ctx.request_id_sent()), (RID, true));
    let ctx = run(&without(base(), "X-Request-Id")).unwrap();
    assert_eq!(
        (ctx.request_id(), ctx.request_id_sent()),
        (GENERATED, false)
    );
}

#[test]
fn the_correlation_id_is_echoed_on_answers_and_refusals() {
    let ctx = run(&base()).unwrap();
    assert_eq!(
        echo_headers(&ctx),
        vec![("X-Correlation-Id", CID.to_string())]
    );
    let ctx = run(&without(base(), "X-Correlation-Id")).unwrap();
    assert!(echo_headers(&ctx).is_empty());
    let refusal = run(&with_context(IG_SAMPLE)).unwrap_err().refusal();
    assert_eq!(
        refusal.headers(),
        [("X-Correlation-Id", CID.to_string())].as_slice()
    );
    // One that is itself refused is not echoed.
    let bad = set(base(), "X-Correlation-Id", "H54f 8b9d6bC");
    assert!(run(&bad).unwrap_err().refusal().headers().is_empty());
    let twice = plus(base(), "X-Correlation-Id", CID.as_bytes());
    assert!(run(&twice).unwrap_err().refusal().headers().is_empty());
}

#[test]
fn an_unknown_kid_may_be_retried_after_a_refetch() {
    let foreign = SigningKey::from_pkcs8_pem(
        &generate_pkcs8_pem(Alg::Es256).unwrap(),
        Alg::Es256,
        Some("zv-2027".into()),
    )
    .unwrap();
    let headers = with_context(&foreign.sign_jwt(IG_CLAIMS.as_bytes()).unwrap());
    let refused = run(&headers).unwrap_err();
    assert!(refused.is_unknown_key());
    assert!(!refused.reason().contains("zv-2027"));
    // The refetched set holds the new key: the same request passes.
    let refetched = Jwks::new(vec![foreign.public_jwk()]).unwrap();
    let ctx = RequestContext::from_headers(
        &headers,
        &Expect {
            keys: &refetched,
            ..expect(RID)
        },
    )
    .unwrap();
    assert!(ctx.verified());
    assert!(!run(&with_context(IG_SAMPLE)).unwrap_err().is_unknown_key());
}

#[test]
fn the_accepted_algorithms_are_the_callers() {
    let headers = with_context(&signed(Alg::Es384, IG_CLAIMS));
    let es256_only = Expect {
        algs: &[Alg::Es256],
        ..expect(RID)
    };
    let refused = RequestContext::from_headers(&headers, &es256_only).unwrap_err();
    assert_eq!(
        refused.reason(),
        "X-ZV-Context alg ES384 is not accepted from this partner"
    );
}

#[test]
fn debug_hides_the_user() {
    let headers = set(
        with_context(&signed(Alg::Es256, IG_CLAIMS)),
        "AORTA-ID",
        &format!("rid:{RID};usr:{USR}"),
    );
    let ctx = run(&headers).unwrap();
    let shown = format!("{ctx:?}");
    assert!(!shown.contains(USR), "{shown}");
    assert!(shown.contains(RID) && shown.contains(ORG), "{shown}");
}

#[test]
fn every_label_is_a_bounded_key() {
    for (_, headers, _) in table() {
        if let Err(refused) = run(&headers) {
            let label = refused.label();
            assert!(
                label.len() <= 32 && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }
}

#[test]
fn every_truncated_header_value_is_read_or_refused() {
    let full = set(
        set(
            with_context(&signed(Alg::Es256, IG_CLAIMS)),
            "AORTA-ID",
            &format!("rid:{RID};cid:{CID};usr:{USR};rol:{ROL};org:{ORG}"),
        ),
        "X-ZV-Subject-Organization-Ura",
        "12345678",
    );
    let older = set(
        base(),
        "AORTA-ID",
        &format!("req={UUID}; usr={USR}; rol={ROL}; org={ORG}"),
    );
    let mut accepted = 0;
    for headers in [full, older] {
        for (index, (_, value)) in headers.iter().enumerate() {
            for end in 0..value.len() {
                let mut cut = headers.clone();
                cut[index].1.truncate(end);
                match run(&cut) {
                    Ok(ctx) => {
                        accepted += 1;
                        assert_eq!(ctx.organization_oid(), ORG);
                    }
                    Err(refused) => assert!(matches!(refused.status(), 400 | 403), "{refused}"),
                }
            }
        }
    }
    // Shorter ids, users and roles are still values; a value cut to nothing is absent.
    assert!(accepted > 50, "{accepted}");
}
