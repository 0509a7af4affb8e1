//! `application/x-www-form-urlencoded` bodies, strictly: bad percent-encoding,
//! a repeated parameter (RFC 6749 §3.2: parameters MUST NOT be included more
//! than once) or too many parameters are errors, not guesses.

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
            FormError::BadEncoding => f.write_str("the form body is not valid urlencoded UTF-8"),
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
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in body.split(|b| *b == b'&') {
            if pair.is_empty() {
                continue;
            }
            if params.len() == MAX_PARAMS {
                return Err(FormError::TooManyParameters);
            }
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let k = decode(k).ok_or(FormError::BadEncoding)?;
            let v = decode(v).ok_or(FormError::BadEncoding)?;
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

/// Percent-decodes one form component (`+` is a space).
pub fn decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (*raw.get(i + 1)? as char).to_digit(16)?;
                let lo = (*raw.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a form component (unreserved characters kept).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            Form::parse(many.join("&").as_bytes()).unwrap_err(),
            FormError::TooManyParameters
        );
    }

    #[test]
    fn encode_round_trips() {
        let v = "urn:ietf:params:oauth:grant-type:jwt-bearer a+b/é";
        assert_eq!(decode(encode(v).as_bytes()).unwrap(), v);
        assert_eq!(encode("a.b-c_d~"), "a.b-c_d~");
    }
}
