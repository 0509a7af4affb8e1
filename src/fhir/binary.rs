//! A `Binary` resource's content as its own media type (FHIR STU3 http:
//! a `Binary` read answers the raw content unless a FHIR format is asked for).

use base64::Engine;
use serde_json::Value;

/// The largest `contentType` accepted.
const MAX_MEDIA_TYPE: usize = 127;

/// `contentType` and the decoded `content` of a `Binary`. The error names
/// the element, never content.
pub fn binary_content(binary: &Value) -> Result<(String, Vec<u8>), String> {
    let content_type = binary
        .get("contentType")
        .and_then(Value::as_str)
        .ok_or("Binary.contentType is missing")?;
    if !is_media_type(content_type) {
        return Err("Binary.contentType is not a media type".into());
    }
    let content = match binary.get("content") {
        None => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("Binary.content is not a string".into()),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(content.as_bytes())
        .map_err(|_| "Binary.content is not base64".to_string())?;
    Ok((content_type.to_ascii_lowercase(), bytes))
}

/// `type/subtype` of RFC 9110 token characters, without parameters (a
/// parameter could smuggle a charset the content does not have).
fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    value.len() <= MAX_MEDIA_TYPE
        && value
            .split_once('/')
            .is_some_and(|(t, sub)| token(t) && token(sub))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_and_type() {
        let pdf = json!({"resourceType": "Binary", "id": "b1", "contentType": "application/pdf", "content": "JVBERi0xLjQK"});
        assert_eq!(
            binary_content(&pdf).unwrap(),
            ("application/pdf".to_string(), b"%PDF-1.4\n".to_vec())
        );
        let empty = json!({"resourceType": "Binary", "contentType": "Text/Plain"});
        assert_eq!(
            binary_content(&empty).unwrap(),
            ("text/plain".into(), vec![])
        );
    }

    #[test]
    fn refusals_name_the_element() {
        for (binary, why) in [
            (json!({"content": "AA=="}), "Binary.contentType is missing"),
            (
                json!({"contentType": "application/pdf; charset=x", "content": "AA=="}),
                "Binary.contentType is not a media type",
            ),
            (
                json!({"contentType": "text/html\r\nX: y", "content": "AA=="}),
                "Binary.contentType is not a media type",
            ),
            (
                json!({"contentType": "pdf", "content": "AA=="}),
                "Binary.contentType is not a media type",
            ),
            (
                json!({"contentType": "application/pdf", "content": "%%%"}),
                "Binary.content is not base64",
            ),
            (
                json!({"contentType": "application/pdf", "content": 7}),
                "Binary.content is not a string",
            ),
        ] {
            assert_eq!(binary_content(&binary).unwrap_err(), why, "{binary}");
        }
    }
}
