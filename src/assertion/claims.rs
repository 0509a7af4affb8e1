//! JWT claim sets of TA Notified Pull assertions: bounded parsing, the time and
//! audience rules, and building our own.
//!
//! Claims are parsed with serde-json-core into fixed-capacity types, so a
//! hostile payload cannot make us allocate more than the caps below. The JSON
//! is first checked to be well-formed as a whole (serde-json-core skips unknown
//! members leniently), and duplicate members of the claims we read are refused.
//!
//! The IHE IUA claims of a Zorgviewer client assertion have shapes
//! serde-json-core cannot express (a role is a code, a Coding or an array of
//! either): [`parse_iua`] reads them from the same size-capped payload with
//! serde_json, and caps every value it keeps.

use heapless::String as HString;
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

/// Largest claims payload we look at.
pub const MAX_PAYLOAD: usize = 8 * 1024;
/// Allowed clock skew (spec §5).
pub const SKEW_SECS: i64 = 60;
/// Largest accepted `exp - iat` (spec §5).
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Lifetime of the assertions we sign (DESIGN.md: 60 s).
pub const OUR_LIFETIME_SECS: i64 = 60;

type Text = HString<256>;

/// The claims of an incoming assertion, after parsing (not yet checked against
/// a partner; see [`check`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: Option<i64>,
    pub jti: String,
    pub authorization_base: Option<String>,
    pub authorizer: Option<String>,
    pub patient: Option<String>,
    pub user_id: Option<String>,
    pub user_role: Option<String>,
}

impl std::fmt::Debug for Claims {
    /// Prints no values that could identify a patient or be replayed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("iss", &self.iss)
            .field("sub", &self.sub)
            .field("aud", &self.aud)
            .field("exp", &self.exp)
            .field("iat", &self.iat)
            .field("patient", &self.patient.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Why a claim set was refused. Messages never contain claim values other
/// than the issuer/audience names a partner chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    Malformed(&'static str),
    Missing(&'static str),
    NotANumber(&'static str),
    TooLong(&'static str),
    WrongIssuer,
    WrongSubject,
    WrongAudience,
    Expired,
    IssuedInFuture,
    NotYetValid,
    ExpBeforeIat,
    LifetimeTooLong(i64),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Malformed(what) => write!(f, "claims are not a valid JSON object: {what}"),
            ClaimError::Missing(c) => write!(f, "claim {c} is missing"),
            ClaimError::NotANumber(c) => write!(f, "claim {c} must be a NumericDate number"),
            ClaimError::TooLong(c) => write!(f, "claim {c} is too long"),
            ClaimError::WrongIssuer => {
                f.write_str("iss is not the issuer registered for this partner")
            }
            ClaimError::WrongSubject => {
                f.write_str("sub is not the client id registered for this partner")
            }
            ClaimError::WrongAudience => f.write_str("aud is not this token endpoint"),
            ClaimError::Expired => f.write_str("the assertion has expired"),
            ClaimError::IssuedInFuture => f.write_str("iat is in the future"),
            ClaimError::NotYetValid => f.write_str("nbf is in the future"),
            ClaimError::ExpBeforeIat => f.write_str("exp is not after iat"),
            ClaimError::LifetimeTooLong(s) => {
                write!(
                    f,
                    "lifetime exp - iat of {s} s exceeds {MAX_LIFETIME_SECS} s"
                )
            }
        }
    }
}

impl std::error::Error for ClaimError {}

#[derive(Deserialize)]
struct Raw<A> {
    iss: Option<Text>,
    sub: Option<Text>,
    aud: Option<A>,
    exp: Option<f64>,
    iat: Option<f64>,
    nbf: Option<f64>,
    jti: Option<HString<128>>,
    authorization_base: Option<Text>,
    authorizer: Option<Text>,
    patient: Option<HString<128>>,
    user_id: Option<HString<128>>,
    user_role: Option<HString<128>>,
}

/// Parses a claims payload (the JWS payload bytes).
pub fn parse(payload: &[u8]) -> Result<Claims, ClaimError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ClaimError::TooLong("payload"));
    }
    // Whole-document well-formedness (serde-json-core is lenient in members it skips).
    let doc: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| ClaimError::Malformed("invalid JSON"))?;
    if !doc.is_object() {
        return Err(ClaimError::Malformed("not an object"));
    }
    // Numbers as strings ("exp":"123") must be refused, not coerced.
    for c in ["exp", "iat", "nbf"] {
        match doc.get(c) {
            None | Some(serde_json::Value::Number(_)) => {}
            Some(_) => {
                return Err(ClaimError::NotANumber(match c {
                    "exp" => "exp",
                    "iat" => "iat",
                    _ => "nbf",
                }));
            }
        }
    }
    let mut scratch = [0u8; MAX_PAYLOAD];
    // `aud` is a string or an array of strings (RFC 7519 §4.1.3); serde-json-core
    // cannot peek at the type, so try the string form first.
    let (raw, aud) = match serde_json_core::from_slice_escaped::<Raw<Text>>(payload, &mut scratch) {
        Ok((raw, _)) => {
            let aud = raw.aud.as_ref().map(|a| vec![a.as_str().to_string()]);
            (strip_aud(raw), aud)
        }
        Err(serde_json_core::de::Error::InvalidType)
            if doc.get("aud").is_some_and(|a| a.is_array()) =>
        {
            let (raw, _) =
                serde_json_core::from_slice_escaped::<Raw<HVec<Text, 8>>>(payload, &mut scratch)
                    .map_err(map_de_error)?;
            let aud = raw
                .aud
                .as_ref()
                .map(|list| list.iter().map(|a| a.as_str().to_string()).collect());
            (strip_aud(raw), aud)
        }
        Err(e) => return Err(map_de_error(e)),
    };
    let text = |v: Option<String>, name: &'static str| -> Result<String, ClaimError> {
        v.filter(|s| !s.is_empty()).ok_or(ClaimError::Missing(name))
    };
    let date = |v: Option<f64>, name: &'static str| -> Result<Option<i64>, ClaimError> {
        match v {
            None => Ok(None),
            Some(x) if x.is_finite() && (0.0..9.0e15).contains(&x) => Ok(Some(x.floor() as i64)),
            Some(_) => Err(ClaimError::NotANumber(name)),
        }
    };
    let aud = aud
        .filter(|a: &Vec<String>| !a.is_empty())
        .ok_or(ClaimError::Missing("aud"))?;
    Ok(Claims {
        iss: text(raw.iss, "iss")?,
        sub: text(raw.sub, "sub")?,
        aud,
        exp: date(raw.exp, "exp")?.ok_or(ClaimError::Missing("exp"))?,
        iat: date(raw.iat, "iat")?.ok_or(ClaimError::Missing("iat"))?,
        nbf: date(raw.nbf, "nbf")?,
        jti: text(raw.jti, "jti")?,
        authorization_base: raw.authorization_base.filter(|s| !s.is_empty()),
        authorizer: raw.authorizer.filter(|s| !s.is_empty()),
        patient: raw.patient.filter(|s| !s.is_empty()),
        user_id: raw.user_id.filter(|s| !s.is_empty()),
        user_role: raw.user_role.filter(|s| !s.is_empty()),
    })
}

/// The fields of a raw claim set as owned strings; `aud` is handled by the caller.
struct Plain {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    nbf: Option<f64>,
    jti: Option<String>,
    authorization_base: Option<String>,
    authorizer: Option<String>,
    patient: Option<String>,
    user_id: Option<String>,
    user_role: Option<String>,
}

fn strip_aud<A>(raw: Raw<A>) -> Plain {
    fn s<const N: usize>(v: Option<HString<N>>) -> Option<String> {
        v.map(|x| x.as_str().to_string())
    }
    Plain {
        iss: s(raw.iss),
        sub: s(raw.sub),
        exp: raw.exp,
        iat: raw.iat,
        nbf: raw.nbf,
        jti: s(raw.jti),
        authorization_base: s(raw.authorization_base),
        authorizer: s(raw.authorizer),
        patient: s(raw.patient),
        user_id: s(raw.user_id),
        user_role: s(raw.user_role),
    }
}

fn map_de_error(e: serde_json_core::de::Error) -> ClaimError {
    use serde_json_core::de::Error as E;
    match e {
        E::InvalidType => ClaimError::Malformed("a claim has the wrong type"),
        E::InvalidNumber => ClaimError::Malformed("invalid number"),
        E::EscapedStringIsTooLong => ClaimError::TooLong("a string claim"),
        E::CustomError => ClaimError::Malformed("a claim is duplicated or too long"),
        _ => ClaimError::Malformed("unexpected structure"),
    }
}

/// What the token endpoint expects of every assertion, whoever sent it.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    /// `None` for authorization assertions, whose `sub` is an organisation.
    pub subject: Option<&'a str>,
    /// Our token endpoint URL and the partner's configured aliases.
    pub audiences: &'a [String],
}

/// Checks `iss`, `sub` (when expected), `aud` and the time rules of spec §5:
/// `exp > now - skew`, `iat < now + skew`, `nbf < now + skew`, `exp > iat`,
/// `exp - iat <= 300 s`. Together the last three keep `exp` at most
/// 300 s + skew ahead of `now`, the "no more than five minutes in the future"
/// of SMART backend services (a test below holds that bound).
pub fn check(claims: &Claims, want: &Expectations<'_>, now: i64) -> Result<(), ClaimError> {
    if claims.iss != want.issuer {
        return Err(ClaimError::WrongIssuer);
    }
    if let Some(sub) = want.subject {
        if claims.sub != sub {
            return Err(ClaimError::WrongSubject);
        }
    }
    if !claims
        .aud
        .iter()
        .any(|a| want.audiences.iter().any(|w| w == a))
    {
        return Err(ClaimError::WrongAudience);
    }
    if claims.exp <= now - SKEW_SECS {
        return Err(ClaimError::Expired);
    }
    if claims.iat >= now + SKEW_SECS {
        return Err(ClaimError::IssuedInFuture);
    }
    if claims.nbf.is_some_and(|nbf| nbf >= now + SKEW_SECS) {
        return Err(ClaimError::NotYetValid);
    }
    if claims.exp <= claims.iat {
        return Err(ClaimError::ExpBeforeIat);
    }
    let lifetime = claims.exp - claims.iat;
    if lifetime > MAX_LIFETIME_SECS {
        return Err(ClaimError::LifetimeTooLong(lifetime));
    }
    Ok(())
}

/// Longest `subject_organization_id` we read (an OID, with `urn:oid:`).
pub const MAX_IUA_ORG_ID: usize = 160;
/// Longest `subject_organization` or `subject_name` we read.
pub const MAX_IUA_TEXT: usize = 256;
/// Most `subject_role` entries we read.
pub const MAX_IUA_ROLES: usize = 8;
/// Longest role code we read.
pub const MAX_IUA_ROLE_CODE: usize = 64;

/// The IHE IUA (JWT option) claims of a Zorgviewer client assertion: who
/// asks on whose behalf. Read from the top level of the claims, or from
/// `extensions.ihe_iua` where IUA 2.0 puts them; each value is checked for
/// type and size here, `subject_organization_id`'s form by the caller.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IuaClaims {
    /// As sent (`urn:oid:…` or a bare OID); `None` when absent or `null`.
    pub subject_organization_id: Option<String>,
    pub subject_organization: Option<String>,
    pub subject_name: Option<String>,
    /// Role codes: from strings, from Codings (`code`), or from
    /// CodeableConcepts (every `coding[].code`); a single value or an array.
    pub subject_role: Vec<String>,
}

impl std::fmt::Debug for IuaClaims {
    /// Prints no person's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IuaClaims")
            .field("subject_organization_id", &self.subject_organization_id)
            .field("subject_organization", &self.subject_organization)
            .field("subject_role", &self.subject_role)
            .finish_non_exhaustive()
    }
}

/// Parses the IUA claims of a claims payload (the JWS payload bytes).
pub fn parse_iua(payload: &[u8]) -> Result<IuaClaims, ClaimError> {
    use serde_json::Value;
    if payload.len() > MAX_PAYLOAD {
        return Err(ClaimError::TooLong("payload"));
    }
    let doc: Value =
        serde_json::from_slice(payload).map_err(|_| ClaimError::Malformed("invalid JSON"))?;
    let Value::Object(top) = &doc else {
        return Err(ClaimError::Malformed("not an object"));
    };
    let nested = match top.get("extensions").and_then(|e| e.get("ihe_iua")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => return Err(ClaimError::Malformed("extensions.ihe_iua is not an object")),
    };
    let claim = |name: &str| -> Option<&Value> {
        match top.get(name) {
            None | Some(Value::Null) => nested.and_then(|n| n.get(name)),
            found => found,
        }
        .filter(|v| !v.is_null())
    };
    let text = |name: &'static str, max: usize| -> Result<Option<String>, ClaimError> {
        match claim(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => Err(ClaimError::TooLong(name)),
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                Err(ClaimError::Malformed("an IUA claim has control characters"))
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(_) => Err(ClaimError::Malformed("an IUA claim has the wrong type")),
        }
    };
    let mut roles = Vec::new();
    if let Some(role) = claim("subject_role") {
        match role {
            Value::Array(list) if list.len() > MAX_IUA_ROLES => {
                return Err(ClaimError::TooLong("subject_role"));
            }
            Value::Array(list) => {
                for r in list {
                    role_codes(r, &mut roles)?;
                }
            }
            one => role_codes(one, &mut roles)?,
        }
        if roles.len() > MAX_IUA_ROLES {
            return Err(ClaimError::TooLong("subject_role"));
        }
    }
    Ok(IuaClaims {
        subject_organization_id: text("subject_organization_id", MAX_IUA_ORG_ID)?,
        subject_organization: text("subject_organization", MAX_IUA_TEXT)?,
        subject_name: text("subject_name", MAX_IUA_TEXT)?,
        subject_role: roles,
    })
}

/// The codes of one `subject_role` entry: a code string, a Coding, or a
/// CodeableConcept.
fn role_codes(value: &serde_json::Value, out: &mut Vec<String>) -> Result<(), ClaimError> {
    use serde_json::Value;
    let code = |v: Option<&Value>| -> Result<String, ClaimError> {
        match v {
            Some(Value::String(c)) if c.len() > MAX_IUA_ROLE_CODE => {
                Err(ClaimError::TooLong("subject_role"))
            }
            Some(Value::String(c)) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(c.clone())
            }
            _ => Err(ClaimError::Malformed(
                "subject_role must hold codes, Codings or CodeableConcepts",
            )),
        }
    };
    match value {
        Value::String(_) => out.push(code(Some(value))?),
        Value::Object(o) => match o.get("coding") {
            Some(Value::Array(codings)) if codings.len() <= MAX_IUA_ROLES => {
                for c in codings {
                    out.push(code(c.get("code"))?);
                }
            }
            Some(Value::Array(_)) => return Err(ClaimError::TooLong("subject_role")),
            Some(_) => {
                return Err(ClaimError::Malformed(
                    "subject_role must hold codes, Codings or CodeableConcepts",
                ));
            }
            None => out.push(code(o.get("code"))?),
        },
        _ => {
            return Err(ClaimError::Malformed(
                "subject_role must hold codes, Codings or CodeableConcepts",
            ));
        }
    }
    Ok(())
}

/// When a replay-cache entry for these claims may be forgotten.
pub fn replay_horizon(claims: &Claims) -> i64 {
    claims.exp + SKEW_SECS
}

/// Claims of an assertion we sign. Absent optionals are not written.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_base: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorizer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<&'a str>,
}

impl Outgoing<'_> {
    /// Serialises into a bounded buffer.
    pub fn to_json(&self) -> Result<Vec<u8>, ClaimError> {
        let mut buf = [0u8; 4096];
        let n = serde_json_core::to_slice(self, &mut buf)
            .map_err(|_| ClaimError::TooLong("outgoing claims"))?;
        Ok(buf[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_734_619_244;

    fn viplive() -> &'static [u8] {
        // The VIPLive example authorization assertion from the seed document.
        br#"{"aud":"ontvanger.nl/token","sub":"2.16.840.1.113883.2.4.6.1.12345678",
  "authorization_base":"5754d12a-bfb0-4e3f-847a-9460b45f3a92",
  "authorizer":"2.16.840.1.113883.2.4.6.1.44446666",
  "patient":"urn:oid:2.16.840.1.113883.2.4.6.3.999999151",
  "iss":"https://fhir.test-datakluis.shared.topicuszorg.nl",
  "exp":1734619249,"iat":1734619244,"jti":"b7f219b7-baae-4af5-8501-f027f32843bd"}"#
    }

    fn aud() -> Vec<String> {
        vec!["ontvanger.nl/token".to_string()]
    }

    fn want(a: &[String]) -> Expectations<'_> {
        Expectations {
            issuer: "https://fhir.test-datakluis.shared.topicuszorg.nl",
            subject: None,
            audiences: a,
        }
    }

    #[test]
    fn parses_the_viplive_example() {
        let c = parse(viplive()).unwrap();
        assert_eq!(c.sub, "2.16.840.1.113883.2.4.6.1.12345678");
        assert_eq!(c.aud, ["ontvanger.nl/token"]);
        assert_eq!(c.exp - c.iat, 5);
        assert_eq!(
            c.authorization_base.as_deref(),
            Some("5754d12a-bfb0-4e3f-847a-9460b45f3a92")
        );
        assert_eq!(
            c.authorizer.as_deref(),
            Some("2.16.840.1.113883.2.4.6.1.44446666")
        );
        assert!(c.patient.is_some());
        assert!(
            !format!("{c:?}").contains("999999151"),
            "Debug hides the patient"
        );
        check(&c, &want(&aud()), NOW).unwrap();
    }

    #[test]
    fn aud_as_array_and_escaped_strings() {
        let c = parse(
            br#"{"iss":"https:\/\/a.example","sub":"s","aud":["x","https:\/\/b.example\/oauth\/token"],
                "exp":1734619249.9,"iat":1734619244,"jti":"j","extra":{"nested":[1,{"a":null}]},"user_id":null}"#,
        )
        .unwrap();
        assert_eq!(c.iss, "https://a.example");
        assert_eq!(c.aud, ["x", "https://b.example/oauth/token"]);
        assert_eq!(c.exp, 1_734_619_249);
        assert_eq!(c.user_id, None);
    }

    #[test]
    fn refuses_malformed_claims() {
        let cases: &[(&[u8], ClaimError)] = &[
            (b"[]", ClaimError::Malformed("not an object")),
            (b"{", ClaimError::Malformed("invalid JSON")),
            (br#"{"iss":"a"} x"#, ClaimError::Malformed("invalid JSON")),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":"1734619249","iat":1,"jti":"j"}"#,
                ClaimError::NotANumber("exp"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":1734619249,"iat":true,"jti":"j"}"#,
                ClaimError::NotANumber("iat"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":1e300,"iat":1,"jti":"j"}"#,
                ClaimError::NotANumber("exp"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":-5,"iat":1,"jti":"j"}"#,
                ClaimError::NotANumber("exp"),
            ),
            (
                br#"{"sub":"s","aud":"x","exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Missing("iss"),
            ),
            (
                br#"{"iss":"a","aud":"x","exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Missing("sub"),
            ),
            (
                br#"{"iss":"a","sub":"s","exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Missing("aud"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":[],"exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Missing("aud"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","iat":1,"jti":"j"}"#,
                ClaimError::Missing("exp"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":1,"jti":"j"}"#,
                ClaimError::Missing("iat"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":1,"iat":1}"#,
                ClaimError::Missing("jti"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":"x","exp":1,"iat":1,"jti":""}"#,
                ClaimError::Missing("jti"),
            ),
            (
                br#"{"iss":"a","iss":"b","sub":"s","aud":"x","exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Malformed("a claim is duplicated or too long"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":7,"exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Malformed("a claim has the wrong type"),
            ),
            (
                br#"{"iss":"a","sub":"s","aud":[7],"exp":1,"iat":1,"jti":"j"}"#,
                ClaimError::Malformed("a claim has the wrong type"),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                parse(payload).unwrap_err(),
                *expected,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let long = format!(
            r#"{{"iss":"{}","sub":"s","aud":"x","exp":1,"iat":1,"jti":"j"}}"#,
            "a".repeat(300)
        );
        assert!(parse(long.as_bytes()).is_err());
        assert_eq!(
            parse(&vec![b' '; MAX_PAYLOAD + 1]).unwrap_err(),
            ClaimError::TooLong("payload")
        );
    }

    #[test]
    fn time_and_audience_rules() {
        let base = parse(viplive()).unwrap();
        let a = aud();
        let w = want(&a);
        let with = |f: &dyn Fn(&mut Claims)| {
            let mut c = base.clone();
            f(&mut c);
            check(&c, &w, NOW)
        };
        assert_eq!(
            with(&|c| c.iss = "https://other".into()),
            Err(ClaimError::WrongIssuer)
        );
        assert_eq!(
            with(&|c| c.aud = vec!["https://elsewhere/token".into()]),
            Err(ClaimError::WrongAudience)
        );
        assert_eq!(
            with(&|c| c.aud = vec!["a".into(), "ontvanger.nl/token".into()]),
            Ok(())
        );
        // Expired: exp at or before now - skew.
        assert_eq!(
            with(&|c| {
                c.iat = NOW - 100;
                c.exp = NOW - 60
            }),
            Err(ClaimError::Expired)
        );
        assert_eq!(
            with(&|c| {
                c.iat = NOW - 100;
                c.exp = NOW - 59
            }),
            Ok(())
        );
        // iat in the future beyond skew.
        assert_eq!(
            with(&|c| {
                c.iat = NOW + 60;
                c.exp = NOW + 65
            }),
            Err(ClaimError::IssuedInFuture)
        );
        assert_eq!(
            with(&|c| {
                c.iat = NOW + 59;
                c.exp = NOW + 65
            }),
            Ok(())
        );
        assert_eq!(
            with(&|c| c.nbf = Some(NOW + 61)),
            Err(ClaimError::NotYetValid)
        );
        assert_eq!(with(&|c| c.exp = c.iat), Err(ClaimError::ExpBeforeIat));
        assert_eq!(
            with(&|c| c.exp = c.iat + 301),
            Err(ClaimError::LifetimeTooLong(301))
        );
        assert_eq!(with(&|c| c.exp = c.iat + 300), Ok(()));
        let w2 = Expectations {
            subject: Some("viplive-databroker"),
            ..w.clone()
        };
        assert_eq!(check(&base, &w2, NOW), Err(ClaimError::WrongSubject));
        assert_eq!(replay_horizon(&base), base.exp + 60);
    }

    #[test]
    fn exp_is_never_more_than_five_minutes_and_the_skew_ahead() {
        let base = parse(viplive()).unwrap();
        let a = aud();
        let w = want(&a);
        let mut accepted = 0;
        for iat in (NOW - 400..NOW + 100).step_by(7) {
            for exp in (NOW - 100..NOW + 800).step_by(11) {
                let mut c = base.clone();
                c.iat = iat;
                c.exp = exp;
                if check(&c, &w, NOW).is_ok() {
                    accepted += 1;
                    assert!(
                        exp - NOW <= MAX_LIFETIME_SECS + SKEW_SECS,
                        "iat {iat} exp {exp}"
                    );
                }
            }
        }
        assert!(accepted > 100, "{accepted}");
        // The edge: iat just inside the skew and the longest lifetime.
        let mut c = base.clone();
        c.iat = NOW + SKEW_SECS - 1;
        c.exp = c.iat + MAX_LIFETIME_SECS;
        assert_eq!(check(&c, &w, NOW), Ok(()));
        c.exp += 1;
        assert_eq!(check(&c, &w, NOW), Err(ClaimError::LifetimeTooLong(301)));
    }

    #[test]
    fn iua_claims_top_level_and_nested() {
        let top = br#"{"iss":"zv","sub":"zv","subject_organization_id":"urn:oid:2.16.840.1.113883.2.4.3.8",
            "subject_organization":"UMCG","subject_name":"J. Jansen",
            "subject_role":[{"system":"http://snomed.info/sct","code":"309343006","display":"Arts"}]}"#;
        let c = parse_iua(top).unwrap();
        assert_eq!(
            c.subject_organization_id.as_deref(),
            Some("urn:oid:2.16.840.1.113883.2.4.3.8")
        );
        assert_eq!(c.subject_organization.as_deref(), Some("UMCG"));
        assert_eq!(c.subject_name.as_deref(), Some("J. Jansen"));
        assert_eq!(c.subject_role, ["309343006"]);
        assert!(!format!("{c:?}").contains("Jansen"));
        let nested =
            br#"{"extensions":{"ihe_iua":{"subject_organization_id":"2.16.840.1.113883.2.4.3.8",
            "subject_role":{"coding":[{"code":"62247001"},{"code":"309343006"}]}}}}"#;
        let c = parse_iua(nested).unwrap();
        assert_eq!(
            c.subject_organization_id.as_deref(),
            Some("2.16.840.1.113883.2.4.3.8")
        );
        assert_eq!(c.subject_role, ["62247001", "309343006"]);
        // The top level wins; null is absent.
        let both = br#"{"subject_organization_id":"1.2","subject_name":null,
            "extensions":{"ihe_iua":{"subject_organization_id":"3.4","subject_name":"x"}}}"#;
        let c = parse_iua(both).unwrap();
        assert_eq!(c.subject_organization_id.as_deref(), Some("1.2"));
        assert_eq!(c.subject_name.as_deref(), Some("x"));
        // Strings, single values, nothing at all.
        assert_eq!(
            parse_iua(br#"{"subject_role":"223366009"}"#)
                .unwrap()
                .subject_role,
            ["223366009"]
        );
        assert_eq!(
            parse_iua(br#"{"subject_role":["223366009",{"code":"62247001"}]}"#)
                .unwrap()
                .subject_role,
            ["223366009", "62247001"]
        );
        assert_eq!(parse_iua(b"{}").unwrap(), IuaClaims::default());
        assert_eq!(
            parse_iua(br#"{"subject_organization":"  "}"#)
                .unwrap()
                .subject_organization,
            None
        );
    }

    #[test]
    fn iua_claims_are_typed_and_bounded() {
        let roles = |n: usize| format!(r#"{{"subject_role":[{}]}}"#, vec![r#""1""#; n].join(","));
        assert!(parse_iua(roles(MAX_IUA_ROLES).as_bytes()).is_ok());
        let long_org = format!(
            r#"{{"subject_organization_id":"{}"}}"#,
            "1".repeat(MAX_IUA_ORG_ID + 1)
        );
        let long_name = format!(r#"{{"subject_name":"{}"}}"#, "é".repeat(MAX_IUA_TEXT + 1));
        let long_code = format!(
            r#"{{"subject_role":"{}"}}"#,
            "1".repeat(MAX_IUA_ROLE_CODE + 1)
        );
        let many_codings = format!(
            r#"{{"subject_role":[{{"coding":[{}]}}, {{"coding":[{}]}}]}}"#,
            [r#"{"code":"1"}"#; 5].join(","),
            [r#"{"code":"2"}"#; 5].join(",")
        );
        let cases: Vec<(String, ClaimError)> = vec![
            (
                roles(MAX_IUA_ROLES + 1),
                ClaimError::TooLong("subject_role"),
            ),
            (long_org, ClaimError::TooLong("subject_organization_id")),
            (long_name, ClaimError::TooLong("subject_name")),
            (long_code, ClaimError::TooLong("subject_role")),
            (many_codings, ClaimError::TooLong("subject_role")),
            (
                r#"{"subject_organization_id":7}"#.into(),
                ClaimError::Malformed("an IUA claim has the wrong type"),
            ),
            (
                r#"{"subject_name":["a"]}"#.into(),
                ClaimError::Malformed("an IUA claim has the wrong type"),
            ),
            (
                r#"{"subject_name":"a\nb"}"#.into(),
                ClaimError::Malformed("an IUA claim has control characters"),
            ),
            (
                r#"{"subject_role":7}"#.into(),
                ClaimError::Malformed("subject_role must hold codes, Codings or CodeableConcepts"),
            ),
            (
                r#"{"subject_role":[{"display":"Arts"}]}"#.into(),
                ClaimError::Malformed("subject_role must hold codes, Codings or CodeableConcepts"),
            ),
            (
                r#"{"subject_role":[""]}"#.into(),
                ClaimError::Malformed("subject_role must hold codes, Codings or CodeableConcepts"),
            ),
            (
                r#"{"subject_role":[[ "1" ]]}"#.into(),
                ClaimError::Malformed("subject_role must hold codes, Codings or CodeableConcepts"),
            ),
            (
                r#"{"extensions":{"ihe_iua":[]}}"#.into(),
                ClaimError::Malformed("extensions.ihe_iua is not an object"),
            ),
            ("[]".into(), ClaimError::Malformed("not an object")),
            ("{".into(), ClaimError::Malformed("invalid JSON")),
        ];
        for (payload, want) in cases {
            assert_eq!(
                parse_iua(payload.as_bytes()).unwrap_err(),
                want,
                "{payload}"
            );
        }
        assert_eq!(
            parse_iua(&vec![b' '; MAX_PAYLOAD + 1]).unwrap_err(),
            ClaimError::TooLong("payload")
        );
    }

    #[test]
    fn outgoing_round_trip() {
        let out = Outgoing {
            iss: "https://a.example",
            sub: "urn:oid:2.16.528.1.1007.3.3.12345678",
            aud: "https://b.example/oauth/token",
            iat: NOW,
            exp: NOW + OUR_LIFETIME_SECS,
            jti: "46dfde7c-5e8c-4838-abd7-220bd38c2fd8",
            authorization_base: None,
            authorizer: Some("urn:oid:2.16.528.1.1007.3.3.87654321"),
            patient: Some("urn:oid:2.16.840.1.113883.2.4.6.3.999999151"),
        };
        let json = out.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.contains("authorization_base"), "{text}");
        let back = parse(&json).unwrap();
        assert_eq!(back.aud, ["https://b.example/oauth/token"]);
        assert_eq!(back.exp - back.iat, 60);
        assert_eq!(back.authorizer.as_deref(), out.authorizer);
    }
}
