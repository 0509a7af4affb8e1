//! `application/x-www-form-urlencoded` bodies, strictly: bad percent-encoding
//! (see [`percent`]: malformed escapes, non-UTF-8, control characters), a
//! repeated parameter (RFC 6749 §3.2: parameters MUST NOT be included more
//! than once) or too many parameters are errors, not guesses.

use crate::util::percent;

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormError {
    BadEncoding,
    Duplicate(String),
    TooManyParameters,
}

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormError::BadEncoding => f.write_str(
                "the form body is not valid urlencoded UTF-8 without control characters",
            ),
            FormError::Duplicate(name) => write!(f, "parameter {name} is repeated"),
            FormError::TooManyParameters => f.write_str("the form has too many parameters"),
        }
    }
}

/// Parsed form parameters in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Form {
    params: Vec<(String, String)>,
}

/// At most this many parameters are accepted.
pub const MAX_PARAMS: usize = 32;

impl Form {
    /// Parses a body: `name=value` pairs split on `&`, each decoded by
    /// [`percent::decode_form`].
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let body = std::str::from_utf8(body).map_err(|_| FormError::BadEncoding)?;
        let mut params: Vec<(String, String)> = Vec::new();
        for (k, v) in percent::split_pairs(body) {
            if params.len() == MAX_PARAMS {
                return Err(FormError::TooManyParameters);
            }
            let k = percent::decode_form(k).map_err(|_| FormError::BadEncoding)?;
            let v = percent::decode_form(v).map_err(|_| FormError::BadEncoding)?;
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(FormError::Duplicate(k));
            }
            params.push((k, v));
        }
        Ok(Form { params })
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let f = Form::parse(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&a=b+c&&empty=&flag",
        )
        .unwrap();
        assert_eq!(
            f.get("grant_type"),
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        );
        assert_eq!(f.get("a"), Some("b c"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.get("flag"), Some(""));
        assert_eq!(f.get("missing"), None);
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly() {
        assert_eq!(
            Form::parse(b"a=1&a=2").unwrap_err(),
            FormError::Duplicate("a".into())
        );
        assert_eq!(
            Form::parse(b"a=1&%61=2").unwrap_err(),
            FormError::Duplicate("a".into())
        );
        assert_eq!(Form::parse(b"a=%zz").unwrap_err(), FormError::BadEncoding);
        assert_eq!(Form::parse(b"a=%4").unwrap_err(), FormError::BadEncoding);
        assert_eq!(Form::parse(b"a=%ff").unwrap_err(), FormError::BadEncoding);
        assert_eq!(Form::parse(b"a=\xff").unwrap_err(), FormError::BadEncoding);
        assert_eq!(Form::parse(b"a=%00").unwrap_err(), FormError::BadEncoding);
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            Form::parse(many.join("&").as_bytes()).unwrap_err(),
            FormError::TooManyParameters
        );
    }

    #[test]
    fn encoded_bodies_round_trip() {
        let v = "urn:ietf:params:oauth:grant-type:jwt-bearer a+b/é";
        let body = format!("x={}&y=1", percent::encode_form(v));
        let f = Form::parse(body.as_bytes()).unwrap();
        assert_eq!(f.get("x"), Some(v));
    }
}
