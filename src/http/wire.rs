//! Response serialization and the small wire rules shared by the partner and admin
//! listeners: request ids, dates, reason phrases, log-safe values.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Response;
use crate::util::{b64, random, time};

/// The interim response to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Longest client-supplied request id we echo.
const MAX_REQUEST_ID: usize = 128;

/// Headers the server owns; a handler's values for them are dropped.
const SERVER_OWNED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "date",
    "server",
    "x-request-id",
    "proxy-connection",
];

/// How the server frames one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing<'a> {
    /// Echoed as `X-Request-Id`.
    pub request_id: &'a str,
    /// Send `Connection: close`.
    pub close: bool,
    /// The request was `HEAD`: headers only.
    pub head_only: bool,
    /// Unix seconds for `Date`.
    pub now: i64,
}

/// A serialized response: the bytes to write and how many of them are body.
#[derive(Debug)]
pub(crate) struct Wire {
    pub bytes: Vec<u8>,
    pub body_len: usize,
}

/// Serializes `resp` into one buffer. Fails when the status or a header could corrupt the
/// framing (the caller then answers 500).
pub(crate) fn serialize(resp: &Response, f: Framing<'_>) -> Result<Wire, &'static str> {
    if !(200..=599).contains(&resp.status) {
        return Err("status code out of range");
    }
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nDate: {}\r\n",
        resp.status,
        reason_phrase(resp.status),
        time::http_date(f.now)
    );
    for (name, value) in &resp.headers {
        if !is_token(name) {
            return Err("invalid response header name");
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
        {
            return Err("invalid response header value");
        }
        if SERVER_OWNED.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        let _ = write!(head, "{name}: {}\r\n", value.trim_matches([' ', '\t']));
    }
    let _ = write!(head, "X-Request-Id: {}\r\n", f.request_id);
    let bodyless = matches!(resp.status, 204 | 304);
    if !bodyless {
        let _ = write!(head, "Content-Length: {}\r\n", resp.body.len());
    }
    if f.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let body: &[u8] = if bodyless || f.head_only {
        &[]
    } else {
        &resp.body
    };
    let mut bytes = Vec::with_capacity(head.len() + body.len());
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(body);
    Ok(Wire {
        bytes,
        body_len: body.len(),
    })
}

/// True when the handler asked to close the connection (`Connection: close`).
pub(crate) fn wants_close(resp: &Response) -> bool {
    resp.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("connection")
            && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
    })
}

/// A last-resort 500 when even the handler's error response cannot be serialized.
pub(crate) fn fallback_500(request_id: &str, now: i64) -> Wire {
    let bytes = format!(
        "HTTP/1.1 500 Internal Server Error\r\nDate: {}\r\nX-Request-Id: {request_id}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        time::http_date(now)
    )
    .into_bytes();
    Wire { bytes, body_len: 0 }
}

/// The request id for a request: the client's single `X-Request-Id` when it is 1–128
/// visible ASCII characters, else a fresh random one.
pub(crate) fn request_id(headers: &[(String, Vec<u8>)]) -> String {
    let mut ids = headers.iter().filter(|(n, _)| n == "x-request-id");
    match (ids.next(), ids.next()) {
        (Some((_, id)), None) if valid_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => new_request_id(),
    }
}

/// 1–128 bytes of visible ASCII (no spaces, no controls).
pub(crate) fn valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// 32 random hex digits, drawn again while they hold a run of digits the log would mask
/// as a possible BSN ([`crate::util::untrusted`]), so our own ids are logged as sent.
/// Should the system RNG fail, a process-unique counter keeps ids unique (they are
/// correlation ids, not secrets).
pub(crate) fn new_request_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let drawn = (0..16)
        .map_while(|_| random::bytes::<16>().ok().map(|b| b64::hex(&b)))
        .find(|id| crate::util::untrusted::reduced(id) == id.as_str());
    drawn.unwrap_or_else(|| {
        format!(
            "{:016x}{:016x}",
            time::now_unix_ms() as u64,
            FALLBACK.fetch_add(1, Ordering::Relaxed)
        )
    })
}

/// A value for a logfmt line: as is when it is plain, else quoted with `\` and `"` escaped
/// and anything outside visible ASCII written as `\xNN`.
pub(crate) fn log_value(v: &str) -> Cow<'_, str> {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+*{}[]".contains(&b));
    if plain {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for b in v.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// The method for logs: one of the standard methods, else `other`.
pub(crate) fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// The reason phrase for a status (empty for codes without one; RFC 9112 allows that).
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(close: bool, head_only: bool) -> Framing<'static> {
        Framing {
            request_id: "rid-1",
            close,
            head_only,
            now: 784_111_777,
        }
    }

    #[test]
    fn serializes_one_buffer_with_server_headers() {
        let resp = Response::text(201, "made")
            .header("Location", "/fhir/Task/1")
            .header("Content-Length", "999")
            .header("Server", "leaky/1.0")
            .header("X-Request-Id", "spoof");
        let w = serialize(&resp, framing(true, false)).unwrap();
        let text = String::from_utf8(w.bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 201 Created\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nLocation: /fhir/Task/1\r\n\
             X-Request-Id: rid-1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nmade"
        );
        assert_eq!(w.body_len, 4);
    }

    #[test]
    fn head_and_bodyless_statuses() {
        let resp = Response::text(200, "hello");
        let w = serialize(&resp, framing(false, true)).unwrap();
        let text = String::from_utf8(w.bytes).unwrap();
        assert!(text.ends_with("Content-Length: 5\r\n\r\n"), "{text}");
        assert_eq!(w.body_len, 0);
        let w = serialize(&Response::text(204, "x"), framing(false, false)).unwrap();
        let text = String::from_utf8(w.bytes).unwrap();
        assert!(
            !text.contains("Content-Length") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn refuses_response_splitting() {
        for resp in [
            Response::new(200).header("X", "a\r\nSet-Cookie: x"),
            Response::new(200).header("X", "a\nb"),
            Response::new(200).header("X", "caf\u{e9}"),
            Response::new(200).header("X Y", "a"),
            Response::new(200).header("", "a"),
            Response::new(101),
            Response::new(600),
        ] {
            assert!(serialize(&resp, framing(false, false)).is_err(), "{resp:?}");
        }
    }

    #[test]
    fn request_ids() {
        let h = |v: &[u8]| vec![("x-request-id".to_string(), v.to_vec())];
        assert_eq!(request_id(&h(b"abc-123")), "abc-123");
        let long = vec![b'a'; 128];
        assert_eq!(request_id(&h(&long)).len(), 128);
        for bad in [&b""[..], b"a b", b"caf\xe9", &[b'a'; 129]] {
            let id = request_id(&h(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let mut two = h(b"a");
        two.extend(h(b"b"));
        assert_eq!(request_id(&two).len(), 32);
        assert_ne!(new_request_id(), new_request_id());
        // Our own ids are logged as they are sent.
        for _ in 0..200 {
            let id = new_request_id();
            assert_eq!(crate::util::untrusted::reduced(&id), id.as_str());
        }
    }

    #[test]
    fn log_values_cannot_forge_fields() {
        assert_eq!(log_value("abc-1.2"), "abc-1.2");
        assert_eq!(log_value("/fhir/{type}"), "/fhir/{type}");
        assert_eq!(log_value("a status=200"), "\"a status=200\"");
        assert_eq!(log_value("q\"\\"), "\"q\\\"\\\\\"");
        assert_eq!(log_value("a\nb"), "\"a\\x0ab\"");
        assert_eq!(log_value(""), "\"\"");
    }

    #[test]
    fn labels() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), "other");
        assert!(wants_close(
            &Response::new(200).header("connection", "Close")
        ));
        assert_eq!(reason_phrase(299), "");
    }
}
