//! Fixed-shape OAuth messages, parsed with serde-json-core into bounded types:
//! SMART discovery documents, token responses and OAuth error bodies.

use heapless::String as HString;
use serde::{Deserialize, Serialize};

use crate::util::url::{Url, UrlError};

/// Largest discovery document or token response we read.
pub const MAX_DOCUMENT: usize = 64 * 1024;

/// Why a partner's message could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    TooLarge,
    Malformed(&'static str),
    Missing(&'static str),
    /// A member that must be an `https` URL ([`Url::parse_https`]) is not.
    BadUrl(&'static str, UrlError),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::TooLarge => write!(f, "document larger than {MAX_DOCUMENT} bytes"),
            MessageError::Malformed(what) => write!(f, "malformed JSON: {what}"),
            MessageError::Missing(what) => write!(f, "{what} is missing"),
            MessageError::BadUrl(what, why) => write!(f, "{what} {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// What we use of a partner's `.well-known/smart-configuration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub token_endpoint: String,
    pub jwks_uri: Option<String>,
}

#[derive(Deserialize)]
struct RawDiscovery {
    token_endpoint: Option<HString<1024>>,
    token_url: Option<HString<1024>>,
    jwks_uri: Option<HString<1024>>,
}

/// Parses a discovery document: `token_endpoint`, falling back to `token_url`
/// (VIPLive), and `jwks_uri` when present. Both must be https URLs that
/// [`Url::parse_https`] accepts (no user information, fragment or white
/// space).
pub fn parse_discovery(bytes: &[u8]) -> Result<Discovery, MessageError> {
    let raw: RawDiscovery = parse_object(bytes)?;
    let token_endpoint = raw
        .token_endpoint
        .or(raw.token_url)
        .map(|s| s.as_str().to_string())
        .ok_or(MessageError::Missing("token_endpoint (and token_url)"))?;
    Url::parse_https(&token_endpoint).map_err(|e| MessageError::BadUrl("token_endpoint", e))?;
    let jwks_uri = raw.jwks_uri.map(|s| s.as_str().to_string());
    if let Some(u) = &jwks_uri {
        Url::parse_https(u).map_err(|e| MessageError::BadUrl("jwks_uri", e))?;
    }
    Ok(Discovery {
        token_endpoint,
        jwks_uri,
    })
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: Option<i64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawToken {
    access_token: Option<HString<4096>>,
    token_type: Option<HString<32>>,
    expires_in: Option<f64>,
}

/// Parses a token response; `token_type` must be `Bearer` (any case).
pub fn parse_token_response(bytes: &[u8]) -> Result<TokenResponse, MessageError> {
    let raw: RawToken = parse_object(bytes)?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or(MessageError::Missing("access_token"))?;
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MessageError::Malformed(
            "access_token has characters a header cannot carry",
        ));
    }
    match raw.token_type {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(MessageError::Malformed("token_type is not Bearer")),
        None => return Err(MessageError::Missing("token_type")),
    }
    let expires_in = match raw.expires_in {
        None => None,
        Some(x) if x.is_finite() && (0.0..=31_536_000.0).contains(&x) => Some(x as i64),
        Some(_) => return Err(MessageError::Malformed("expires_in out of range")),
    };
    Ok(TokenResponse {
        access_token: access_token.as_str().to_string(),
        expires_in,
    })
}

/// An OAuth error body (RFC 6749 §5.2), as far as it can be read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OAuthErrorBody {
    pub error: Option<String>,
    pub description: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<HString<64>>,
    error_description: Option<HString<512>>,
}

/// Reads `error`/`error_description` from an error response; anything
/// unreadable yields an empty body rather than an error.
pub fn parse_error_body(bytes: &[u8]) -> OAuthErrorBody {
    match parse_object::<RawError>(bytes) {
        Ok(raw) => OAuthErrorBody {
            error: raw
                .error
                .map(|s| s.as_str().to_string())
                .filter(|s| s.bytes().all(|b| b.is_ascii_graphic())),
            description: raw.error_description.map(|s| {
                s.as_str()
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            }),
        },
        Err(_) => OAuthErrorBody::default(),
    }
}

/// The body of our successful token response.
#[derive(Serialize)]
pub struct TokenResponseOut<'a> {
    pub access_token: &'a str,
    pub token_type: &'a str,
    pub expires_in: i64,
    /// The granted scope (RFC 6749 §5.1), for grants that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    /// The certificate the token is bound to (RFC 8705 §3.1, RFC 7800), as
    /// an introspection answer would carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation<'a>>,
}

/// RFC 8705's confirmation claim: `x5t#S256`, the base64url (no padding)
/// SHA-256 of the DER of the client certificate.
#[derive(Serialize)]
pub struct Confirmation<'a> {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: &'a str,
}

/// The body of our OAuth error responses.
#[derive(Serialize)]
pub struct ErrorOut<'a> {
    pub error: &'a str,
    pub error_description: &'a str,
}

/// Largest message [`to_json`] writes: room for a token response with the
/// most scope tokens of the longest kind (see the tests).
pub const MAX_OUT: usize = 4096;

/// Serialises a small fixed-shape message.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = [0u8; MAX_OUT];
    match serde_json_core::to_slice(value, &mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => br#"{"error":"server_error"}"#.to_vec(),
    }
}

fn parse_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MessageError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(MessageError::TooLarge);
    }
    // serde-json-core skips unknown members leniently: check the whole document first.
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| MessageError::Malformed("invalid JSON"))?;
    if !doc.is_object() {
        return Err(MessageError::Malformed("not an object"));
    }
    let mut scratch = vec![0u8; bytes.len()];
    serde_json_core::from_slice_escaped::<T>(bytes, &mut scratch)
        .map(|(v, _)| v)
        .map_err(|e| match e {
            serde_json_core::de::Error::InvalidType => {
                MessageError::Malformed("a member has the wrong type")
            }
            serde_json_core::de::Error::CustomError => {
                MessageError::Malformed("a member is duplicated or too long")
            }
            _ => MessageError::Malformed("unexpected structure"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_prefers_token_endpoint_and_falls_back_to_token_url() {
        let d = parse_discovery(
            br#"{"token_endpoint":"https:\/\/b.example\/oauth\/token","token_url":"https://x/other",
                 "jwks_uri":"https://b.example/.well-known/jwks.json","capabilities":[],"grant_types_supported":["a"]}"#,
        )
        .unwrap();
        assert_eq!(d.token_endpoint, "https://b.example/oauth/token");
        assert_eq!(
            d.jwks_uri.as_deref(),
            Some("https://b.example/.well-known/jwks.json")
        );
        let viplive = parse_discovery(
            br#"{"token_url":"https://fhir.test-datakluis.shared.topicuszorg.nl/token"}"#,
        )
        .unwrap();
        assert_eq!(
            viplive.token_endpoint,
            "https://fhir.test-datakluis.shared.topicuszorg.nl/token"
        );
        assert_eq!(viplive.jwks_uri, None);
    }

    #[test]
    fn discovery_refusals() {
        assert_eq!(
            parse_discovery(b"{}").unwrap_err(),
            MessageError::Missing("token_endpoint (and token_url)")
        );
        assert_eq!(
            parse_discovery(br#"{"token_endpoint":"http://b/t"}"#).unwrap_err(),
            MessageError::BadUrl("token_endpoint", UrlError::NotHttps)
        );
        assert_eq!(
            parse_discovery(br#"{"token_endpoint":"https://b/t","jwks_uri":"file:///etc/x"}"#)
                .unwrap_err(),
            MessageError::BadUrl("jwks_uri", UrlError::NotHttps)
        );
        assert_eq!(
            parse_discovery(br#"{"token_endpoint":"https://evil@b/t"}"#)
                .unwrap_err()
                .to_string(),
            "token_endpoint must not have user information (user@host)"
        );
        assert_eq!(
            parse_discovery(br#"{"token_endpoint":"https://b/t#x"}"#).unwrap_err(),
            MessageError::BadUrl("token_endpoint", UrlError::Fragment)
        );
        assert_eq!(
            parse_discovery(br#"{"token_endpoint":7}"#).unwrap_err(),
            MessageError::Malformed("a member has the wrong type")
        );
        assert_eq!(
            parse_discovery(b"[1]").unwrap_err(),
            MessageError::Malformed("not an object")
        );
        assert_eq!(
            parse_discovery(b"{\"token_endpoint\":\"https://b/t\"").unwrap_err(),
            MessageError::Malformed("invalid JSON")
        );
        let huge = format!(r#"{{"token_endpoint":"https://{}"}}"#, "a".repeat(2000));
        assert!(parse_discovery(huge.as_bytes()).is_err());
        assert_eq!(
            parse_discovery(&vec![b' '; MAX_DOCUMENT + 1]).unwrap_err(),
            MessageError::TooLarge
        );
    }

    #[test]
    fn token_responses() {
        let t = parse_token_response(
            br#"{"access_token":"q8G0b","token_type":"Bearer","expires_in":300}"#,
        )
        .unwrap();
        assert_eq!(t.access_token, "q8G0b");
        assert_eq!(t.expires_in, Some(300));
        assert!(!format!("{t:?}").contains("q8G0b"));
        assert_eq!(
            parse_token_response(br#"{"access_token":"x","token_type":"bearer"}"#)
                .unwrap()
                .expires_in,
            None
        );
        for (body, err) in [
            (
                &br#"{"token_type":"Bearer"}"#[..],
                MessageError::Missing("access_token"),
            ),
            (
                br#"{"access_token":"","token_type":"Bearer"}"#,
                MessageError::Missing("access_token"),
            ),
            (
                br#"{"access_token":"x"}"#,
                MessageError::Missing("token_type"),
            ),
            (
                br#"{"access_token":"x","token_type":"mac"}"#,
                MessageError::Malformed("token_type is not Bearer"),
            ),
            (
                br#"{"access_token":"a b","token_type":"Bearer"}"#,
                MessageError::Malformed("access_token has characters a header cannot carry"),
            ),
            (
                br#"{"access_token":"x","token_type":"Bearer","expires_in":-1}"#,
                MessageError::Malformed("expires_in out of range"),
            ),
        ] {
            assert_eq!(
                parse_token_response(body).unwrap_err(),
                err,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_largest_grant_fits_a_token_response() {
        use crate::oauth::scope::{MAX_SCOPE_TOKENS, Scopes};
        // Distinct tokens of the longest STU3 type names, as many as a request may hold.
        let types = [
            "ImmunizationRecommendation",
            "MedicationAdministration",
            "DeviceUseStatement",
            "MedicationStatement",
            "QuestionnaireResponse",
            "ExplanationOfBenefit",
            "CoverageEligibilityResponse",
            "EligibilityResponse",
            "ProcessResponse",
            "EnrollmentResponse",
            "MedicationRequest",
        ];
        let mut tokens = Vec::new();
        'all: for t in types {
            for context in ["system", "user"] {
                for permission in ["search", "read", "*"] {
                    if tokens.len() == MAX_SCOPE_TOKENS {
                        break 'all;
                    }
                    tokens.push(format!("{context}/{t}.{permission}"));
                }
            }
        }
        let requested: Vec<String> = tokens
            .into_iter()
            .filter(|t| Scopes::grant(Some(t)).is_ok())
            .collect();
        let scopes = Scopes::grant(Some(&requested.join(" "))).unwrap();
        let scope = scopes.to_string();
        assert!(scope.len() > 1_500, "{}", scope.len());
        let token = "a".repeat(43);
        let out = to_json(&TokenResponseOut {
            access_token: &token,
            token_type: "Bearer",
            expires_in: 300,
            scope: Some(&scope),
            cnf: Some(Confirmation {
                x5t_s256: &"A".repeat(43),
            }),
        });
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["scope"], scope.as_str());
    }

    #[test]
    fn error_bodies_and_our_output() {
        let e = parse_error_body(br#"{"error":"invalid_grant","error_description":"authorization_base unknown\nor expired"}"#);
        assert_eq!(e.error.as_deref(), Some("invalid_grant"));
        assert_eq!(
            e.description.as_deref(),
            Some("authorization_base unknownor expired")
        );
        assert_eq!(parse_error_body(b"<html>"), OAuthErrorBody::default());
        let out = to_json(&TokenResponseOut {
            access_token: "abc",
            token_type: "Bearer",
            expires_in: 300,
            scope: None,
            cnf: None,
        });
        assert_eq!(
            out,
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":300}"#
        );
        let out = to_json(&TokenResponseOut {
            access_token: "abc",
            token_type: "Bearer",
            expires_in: 300,
            scope: Some("user/Patient.read user/Binary.read"),
            cnf: Some(Confirmation { x5t_s256: "x5t" }),
        });
        assert_eq!(
            out,
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":300,"scope":"user/Patient.read user/Binary.read","cnf":{"x5t#S256":"x5t"}}"#
        );
        // Our own client reads such an answer (the `cnf` member is skipped).
        let back = parse_token_response(&out).unwrap();
        assert_eq!(
            (back.access_token.as_str(), back.expires_in),
            ("abc", Some(300))
        );
        let err = to_json(&ErrorOut {
            error: "invalid_client",
            error_description: "say \"why\"",
        });
        assert_eq!(
            err,
            br#"{"error":"invalid_client","error_description":"say \"why\""}"#
        );
    }
}
