//! Sans-IO HTTP/1.1 request reader: bytes in, one decision out.
//!
//! [`RequestReader::advance`] is fed the bytes received so far and answers with how many it
//! consumed and a [`Step`]: read more, send `100 Continue`, a complete request, or a
//! [`Reject`] carrying the status to answer before closing. It never reads past the end of
//! the current request, so bytes left over belong to the next (pipelined) request.
//!
//! Policy (strict where a lenient reading could let two parsers disagree on framing):
//! - Every line ends in CRLF. A bare LF, a bare CR or a NUL anywhere in the head is a 400.
//!   Up to four empty lines before the request line are skipped (RFC 9112 §2.2).
//! - Obsolete line folding, whitespace before a field colon, and invalid field-name bytes
//!   are a 400 (httparse refuses them in requests).
//! - The request-target must be visible ASCII; origin-form (`/path?query`) and absolute-form
//!   (`https://host/path`, read by [`crate::util::url`]) are accepted, asterisk- and
//!   authority-form are a 400, a fragment is a 400. Longer than the target limit: 414.
//! - A head (request line and fields) longer than the limit, or with more fields than the
//!   limit: 431.
//! - HTTP/1.1 needs exactly one `Host`; HTTP/1.0 at most one. Versions other than 1.0 and 1.1
//!   (the HTTP/2 preface included): 505.
//! - `Transfer-Encoding` together with `Content-Length`, in HTTP/1.0, with `chunked` not last
//!   or repeated: 400. Any coding other than `chunked`: 501.
//! - `Content-Length` repeated (even with equal values), a list, a sign, anything but 1 to 19
//!   digits: 400. Above the body limit: 413 before any body byte is read.
//! - Chunked bodies: 1 to 16 hex digits per size, extensions allowed but bounded, data
//!   followed by exactly CRLF, trailers read and dropped. Decoded size above the limit: 413;
//!   framing overhead (size lines, extensions, trailers) above [`MAX_CHUNK_OVERHEAD`]: 400.
//! - `Expect: 100-continue` (HTTP/1.1 only): [`Step::SendContinue`] once the head is accepted
//!   and before any body byte has arrived; any other expectation: 417.

use std::fmt;

use crate::util::url::{Url, UrlError};

/// Leading empty lines (CRLF pairs) skipped before a request line.
const MAX_LEADING_EMPTY_LINES: usize = 4;
/// Longest method accepted; longer ones are not methods we implement.
const MAX_METHOD_LEN: usize = 32;
/// Longest chunk-size line (size, extensions) in bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// Most framing bytes (size lines, CRLFs, trailers) one chunked body may spend.
pub const MAX_CHUNK_OVERHEAD: u64 = 1 << 20;
/// Body bytes reserved ahead of arrival; the rest grows as data comes (a declared length
/// alone must not make us allocate).
const BODY_PREALLOC: u64 = 64 * 1024;

/// Size limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Largest head (request line and header fields, with their CRLFs).
    pub max_header_bytes: usize,
    /// Most header field lines.
    pub max_headers: usize,
    /// Longest request-target.
    pub max_target_bytes: usize,
    /// Largest body, declared or decoded.
    pub max_body: u64,
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: one request per connection here.
    Http10,
    /// HTTP/1.1.
    Http11,
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed and checked request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method token, as sent (case-sensitive).
    pub method: String,
    /// The raw request-target.
    pub target: String,
    /// The raw path (undecoded, without query).
    pub path: String,
    /// The raw query (undecoded, without `?`).
    pub query: Option<String>,
    /// HTTP version.
    pub version: Version,
    /// Header fields in arrival order; names lower-cased, values with surrounding
    /// whitespace removed.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client asked to close after this request (`Connection: close`, or HTTP/1.0).
    pub close: bool,
    /// Body delimitation.
    pub framing: Framing,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// A complete request: head and decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The head.
    pub head: Head,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// The request cannot be served; answer `status` and close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// The status code to answer with.
    pub status: u16,
    /// What was wrong, in a few words that hold no request data.
    pub reason: &'static str,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for Reject {}

/// What the I/O layer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Read more bytes and call [`RequestReader::advance`] again.
    NeedMore,
    /// Write `HTTP/1.1 100 Continue` and call again.
    SendContinue,
    /// A whole request.
    Complete(ParsedRequest),
    /// Answer the status and close.
    Reject(Reject),
}

/// Reads one request from a byte stream. Make a new one for each request.
#[derive(Debug)]
pub struct RequestReader {
    limits: ReaderLimits,
    state: State,
    scan: Scan,
    head: Option<Head>,
    line_path: Option<String>,
    body: Vec<u8>,
}

#[derive(Debug)]
enum State {
    Head,
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    Finished,
}

/// Incremental scan for the end of the head, so a slow sender costs O(n), not O(n²).
#[derive(Debug, Default)]
struct Scan {
    /// Next byte to examine.
    pos: usize,
    /// Where the request line starts (after skipped empty lines), once known.
    start: Option<usize>,
    /// Where the request line's CRLF is, once seen.
    line_end: Option<usize>,
}

impl RequestReader {
    /// A reader for the next request.
    pub fn new(limits: ReaderLimits) -> Self {
        RequestReader {
            limits,
            state: State::Head,
            scan: Scan::default(),
            head: None,
            line_path: None,
            body: Vec::new(),
        }
    }

    /// True until the whole head has been received.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// The head, once parsed (also after a rejection that came after the head).
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// The request path when it is known: from the parsed head, or from a complete and
    /// well-formed request line when the fields were the problem. For choosing the shape of
    /// an error body only.
    pub fn path_hint(&self) -> Option<&str> {
        self.head
            .as_ref()
            .map(|h| h.path.as_str())
            .or(self.line_path.as_deref())
    }

    /// Feeds the bytes received and not yet consumed. Returns how many bytes were consumed
    /// (drop them before the next call) and what to do next. After `Complete` or `Reject`
    /// the reader is finished; leftover input belongs to the next request.
    pub fn advance(&mut self, input: &[u8]) -> (usize, Step) {
        let mut consumed = 0;
        loop {
            match &mut self.state {
                State::Head => {
                    let end = match self.scan_head(input) {
                        Ok(Some(end)) => end,
                        Ok(None) => return (0, Step::NeedMore),
                        Err(r) => return (0, self.fail(r)),
                    };
                    let head = match parse_head(&input[..end], &self.limits) {
                        Ok(head) => head,
                        Err(r) => return (0, self.fail(r)),
                    };
                    consumed = end;
                    let framing = framing(&head, self.limits.max_body);
                    let expect = expectation(&head);
                    let mut head = head;
                    match (framing, expect) {
                        (Err(r), _) | (Ok(_), Err(r)) => {
                            self.head = Some(head);
                            return (consumed, self.fail(r));
                        }
                        (Ok(framing), Ok(expect)) => {
                            head.framing = framing;
                            head.expect_continue = expect && framing != Framing::Empty;
                        }
                    }
                    let wants_continue = head.expect_continue && consumed == input.len();
                    self.state = match head.framing {
                        Framing::Empty => State::Length { remaining: 0 },
                        Framing::Length(n) => {
                            self.body.reserve(n.min(BODY_PREALLOC) as usize);
                            State::Length { remaining: n }
                        }
                        Framing::Chunked => State::Chunked(ChunkedDecoder::new(
                            self.limits.max_body,
                            self.limits.max_header_bytes,
                        )),
                    };
                    self.head = Some(head);
                    if wants_continue {
                        return (consumed, Step::SendContinue);
                    }
                }
                State::Length { remaining } => {
                    let rest = &input[consumed..];
                    let take =
                        usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    self.body.extend_from_slice(&rest[..take]);
                    consumed += take;
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return (consumed, Step::NeedMore);
                    }
                    return (consumed, self.complete());
                }
                State::Chunked(decoder) => match decoder.feed(&input[consumed..], &mut self.body) {
                    Ok((n, done)) => {
                        consumed += n;
                        if !done {
                            return (consumed, Step::NeedMore);
                        }
                        return (consumed, self.complete());
                    }
                    Err(r) => return (consumed, self.fail(r)),
                },
                State::Finished => {
                    return (
                        0,
                        Step::Reject(Reject {
                            status: 500,
                            reason: "request reader used after the end of its request",
                        }),
                    );
                }
            }
        }
    }

    fn fail(&mut self, r: Reject) -> Step {
        self.state = State::Finished;
        Step::Reject(r)
    }

    fn complete(&mut self) -> Step {
        self.state = State::Finished;
        match self.head.take() {
            Some(head) => Step::Complete(ParsedRequest {
                head,
                body: std::mem::take(&mut self.body),
            }),
            None => Step::Reject(Reject {
                status: 500,
                reason: "request reader lost its head",
            }),
        }
    }

    /// Looks for the CRLF CRLF ending the head, checking line endings and limits on the
    /// way. `Ok(Some(end))` is the length of the head including its final CRLF.
    fn scan_head(&mut self, buf: &[u8]) -> Result<Option<usize>, Reject> {
        let mut i = self.scan.pos;
        let start = match self.scan.start {
            Some(s) => s,
            None => loop {
                match buf.get(i) {
                    None => {
                        self.scan.pos = i;
                        return Ok(None);
                    }
                    Some(b'\r') => match buf.get(i + 1) {
                        None => {
                            self.scan.pos = i;
                            return Ok(None);
                        }
                        Some(b'\n') => {
                            i += 2;
                            if i > 2 * MAX_LEADING_EMPTY_LINES {
                                return Err(bad("too many empty lines before the request line"));
                            }
                        }
                        Some(_) => return Err(bad("bare CR in request head")),
                    },
                    Some(b'\n') => return Err(bad("bare LF in request head")),
                    Some(_) => {
                        self.scan.start = Some(i);
                        break i;
                    }
                }
            },
        };
        while i < buf.len() {
            match buf[i] {
                b'\r' => {
                    match buf.get(i + 1) {
                        None => break,
                        Some(b'\n') => {}
                        Some(_) => return Err(bad("bare CR in request head")),
                    }
                    if self.scan.line_end.is_none() {
                        self.scan.line_end = Some(i);
                        self.check_request_line(&buf[start..i], true)?;
                    } else if i >= start + 2 && &buf[i - 2..i] == b"\r\n" {
                        let end = i + 2;
                        if end - start > self.limits.max_header_bytes {
                            return Err(too_large_head());
                        }
                        return Ok(Some(end));
                    }
                    i += 2;
                }
                b'\n' => return Err(bad("bare LF in request head")),
                0 => return Err(bad("NUL in request head")),
                _ => i += 1,
            }
        }
        self.scan.pos = i;
        if self.scan.line_end.is_none() {
            // Up to `i`: a CR at the very end may be the first half of the line's CRLF.
            self.check_request_line(&buf[start..i], false)?;
        }
        if buf.len() - start > self.limits.max_header_bytes {
            return Err(too_large_head());
        }
        Ok(None)
    }

    /// Early checks on the request line, complete or not: method length and target length
    /// (a 414 must not wait for a CRLF that an attacker never sends).
    fn check_request_line(&mut self, line: &[u8], complete: bool) -> Result<(), Reject> {
        let method_len = line.iter().position(|b| *b == b' ');
        let method_len = match method_len {
            Some(n) => n,
            None if complete || line.len() > MAX_METHOD_LEN => {
                return Err(bad("malformed request line"));
            }
            None => return Ok(()),
        };
        if method_len > MAX_METHOD_LEN {
            return Err(Reject {
                status: 501,
                reason: "method not implemented",
            });
        }
        let rest = &line[method_len + 1..];
        let target_len = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
        if target_len > self.limits.max_target_bytes {
            return Err(Reject {
                status: 414,
                reason: "request-target too long",
            });
        }
        if complete {
            self.line_path = std::str::from_utf8(&rest[..target_len])
                .ok()
                .and_then(|t| split_target(t).ok())
                .map(|(path, _)| path);
        }
        Ok(())
    }
}

fn bad(reason: &'static str) -> Reject {
    Reject {
        status: 400,
        reason,
    }
}

fn too_large_head() -> Reject {
    Reject {
        status: 431,
        reason: "request header section too large",
    }
}

/// Parses a complete head (`buf` ends with CRLF CRLF) with httparse and applies the
/// field-level rules. Framing is decided separately by [`framing`].
fn parse_head(buf: &[u8], limits: &ReaderLimits) -> Result<Head, Reject> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject {
                status: 431,
                reason: "too many header fields",
            });
        }
        Err(httparse::Error::Version) => return Err(version_reject(buf)),
        Err(httparse::Error::HeaderName) => return Err(bad("invalid header field name")),
        Err(httparse::Error::HeaderValue) => return Err(bad("invalid header field value")),
        Err(_) => return Err(bad("malformed request line")),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("malformed request line"));
    };
    let version = match minor {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(version_reject(buf)),
    };
    if method.len() > MAX_METHOD_LEN {
        return Err(Reject {
            status: 501,
            reason: "method not implemented",
        });
    }
    let (path, query) = split_target(target)?;
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();

    let hosts: Vec<&[u8]> = values(&headers, "host").collect();
    match (version, hosts.len()) {
        (Version::Http11, 1) | (Version::Http10, 0 | 1) => {}
        (Version::Http11, 0) => return Err(bad("missing Host header")),
        _ => return Err(bad("more than one Host header")),
    }
    if hosts
        .iter()
        .any(|h| !h.iter().all(|b| (0x21..=0x7e).contains(b)))
    {
        return Err(bad("invalid Host header"));
    }
    let close = version == Version::Http10
        || values(&headers, "connection")
            .flat_map(list_elements)
            .any(|t| t.eq_ignore_ascii_case(b"close"));
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        path,
        query,
        version,
        headers,
        close,
        framing: Framing::Empty,
        expect_continue: false,
    })
}

/// A version error: 505 for a well-formed `HTTP/x.y` we do not speak, else 400.
fn version_reject(head: &[u8]) -> Reject {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = head[..line_end].trim_ascii_start();
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or_default();
    let well_formed = version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    if well_formed {
        Reject {
            status: 505,
            reason: "HTTP version not supported",
        }
    } else {
        bad("malformed request line")
    }
}

/// Splits a request-target into raw path and raw query, accepting origin-form and
/// absolute-form (read by the one URL parser, [`Url::parse`]).
fn split_target(target: &str) -> Result<(String, Option<String>), Reject> {
    if target.is_empty() || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad("invalid request-target"));
    }
    if target.contains('#') {
        return Err(bad("fragment in request-target"));
    }
    if target.starts_with('/') {
        return Ok(match target.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (target.to_string(), None),
        });
    }
    let url = Url::parse(target).map_err(|e| match e {
        UrlError::NotAbsolute | UrlError::Scheme => bad("unsupported request-target form"),
        _ => bad("invalid request-target"),
    })?;
    let path = match url.path() {
        "" => "/",
        p => p,
    };
    Ok((path.to_string(), url.query().map(str::to_string)))
}

/// All values of the field `name` (lower-case).
fn values<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// The elements of a comma-separated list value, trimmed of optional whitespace.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|e| e.trim_ascii())
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// Decides the body framing (RFC 9112 §6.3, strictly).
fn framing(head: &Head, max_body: u64) -> Result<Framing, Reject> {
    let te: Vec<&[u8]> = values(&head.headers, "transfer-encoding").collect();
    let cl: Vec<&[u8]> = values(&head.headers, "content-length").collect();
    if !te.is_empty() {
        if head.version == Version::Http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !cl.is_empty() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        let codings: Vec<&[u8]> = te.iter().flat_map(|v| list_elements(v)).collect();
        if codings.iter().any(|c| !is_token(c)) {
            return Err(bad("malformed Transfer-Encoding"));
        }
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        let chunked_count = codings.iter().filter(|c| chunked(c)).count();
        let last_is_chunked = codings.last().is_some_and(|c| chunked(c));
        if chunked_count != 1 || !last_is_chunked {
            return Err(bad("chunked is not the final transfer-coding exactly once"));
        }
        if codings.len() > 1 {
            return Err(Reject {
                status: 501,
                reason: "transfer-coding not implemented",
            });
        }
        return Ok(Framing::Chunked);
    }
    match cl.as_slice() {
        [] => Ok(Framing::Empty),
        [value] => {
            let n = parse_content_length(value)?;
            if n > max_body {
                Err(Reject {
                    status: 413,
                    reason: "request body too large",
                })
            } else if n == 0 {
                Ok(Framing::Empty)
            } else {
                Ok(Framing::Length(n))
            }
        }
        _ => Err(bad("more than one Content-Length")),
    }
}

/// `1*DIGIT`, at most 19 digits so it fits in a u64 without wrapping.
fn parse_content_length(value: &[u8]) -> Result<u64, Reject> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad("invalid Content-Length"));
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `Ok(true)` for `Expect: 100-continue` in HTTP/1.1; 417 for any other expectation.
fn expectation(head: &Head) -> Result<bool, Reject> {
    if head.version == Version::Http10 {
        return Ok(false);
    }
    let mut expect = false;
    for e in values(&head.headers, "expect").flat_map(list_elements) {
        if e.eq_ignore_ascii_case(b"100-continue") {
            expect = true;
        } else {
            return Err(Reject {
                status: 417,
                reason: "unsupported expectation",
            });
        }
    }
    Ok(expect)
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    max_body: u64,
    max_trailer: usize,
    decoded: u64,
    overhead: u64,
    line: usize,
    trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size { value: u64, digits: u32 },
    /// Whitespace after the size; only `;` may follow.
    SizeSpace { value: u64 },
    /// Chunk extensions up to CR.
    Ext { value: u64 },
    /// CR seen after the size line.
    SizeLf { value: u64 },
    /// Chunk data.
    Data { remaining: u64 },
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// In a trailer line (or at the start of the final empty line when `len == 0`).
    Trailer { len: usize },
    /// CR seen in the trailer section.
    TrailerLf { len: usize },
    /// Done.
    Done,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `max_body` (413) and trailer sections over
    /// `max_trailer` bytes (431).
    pub fn new(max_body: u64, max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            max_body,
            max_trailer,
            decoded: 0,
            overhead: 0,
            line: 0,
            trailer: 0,
        }
    }

    /// Decodes from `input`, appending data to `out`. Returns the bytes consumed and whether
    /// the body (with its trailers) is complete; on completion nothing after the final CRLF
    /// is consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), Reject> {
        let mut i = 0;
        while i < input.len() {
            if let ChunkState::Data { remaining } = self.state {
                let avail = input.len() - i;
                let take = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data { remaining }
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.overhead += 1;
            if self.overhead > MAX_CHUNK_OVERHEAD {
                return Err(bad("chunked framing overhead too large"));
            }
            self.state = self.step(b)?;
            if self.state == ChunkState::Done {
                return Ok((i, true));
            }
        }
        Ok((i, false))
    }

    fn step(&mut self, b: u8) -> Result<ChunkState, Reject> {
        use ChunkState::*;
        if matches!(self.state, Size { .. } | SizeSpace { .. } | Ext { .. }) {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(bad("chunk size line too long"));
            }
        }
        Ok(match self.state {
            Size { value, digits } => match (b as char).to_digit(16) {
                Some(d) => {
                    if digits >= 16 {
                        return Err(bad("chunk size too long"));
                    }
                    Size {
                        value: (value << 4) | u64::from(d),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(bad("missing chunk size")),
                None => match b {
                    b'\r' => SizeLf { value },
                    b';' => Ext { value },
                    b' ' | b'\t' => SizeSpace { value },
                    _ => return Err(bad("invalid chunk size")),
                },
            },
            SizeSpace { value } => match b {
                b' ' | b'\t' => SizeSpace { value },
                b';' => Ext { value },
                _ => return Err(bad("invalid chunk size")),
            },
            Ext { value } => match b {
                b'\r' => SizeLf { value },
                b'\t' | b' '..=0x7e | 0x80..=0xff => Ext { value },
                _ => return Err(bad("invalid chunk extension")),
            },
            SizeLf { value } => {
                if b != b'\n' {
                    return Err(bad("bare CR in chunk size line"));
                }
                self.line = 0;
                if value == 0 {
                    Trailer { len: 0 }
                } else {
                    match self.decoded.checked_add(value) {
                        Some(total) if total <= self.max_body => {
                            self.decoded = total;
                            Data { remaining: value }
                        }
                        _ => {
                            return Err(Reject {
                                status: 413,
                                reason: "request body too large",
                            });
                        }
                    }
                }
            }
            DataCr if b == b'\r' => DataLf,
            DataLf if b == b'\n' => Size {
                value: 0,
                digits: 0,
            },
            DataCr | DataLf => return Err(bad("chunk data not followed by CRLF")),
            Trailer { len } => {
                self.trailer += 1;
                if self.trailer > self.max_trailer {
                    return Err(too_large_head());
                }
                match b {
                    b'\r' => TrailerLf { len },
                    b'\t' | b' '..=0x7e | 0x80..=0xff => Trailer { len: len + 1 },
                    _ => return Err(bad("invalid byte in chunked trailer")),
                }
            }
            TrailerLf { len } => {
                if b != b'\n' {
                    return Err(bad("bare CR in chunked trailer"));
                }
                if len == 0 { Done } else { Trailer { len: 0 } }
            }
            Data { .. } | Done => return Err(bad("chunked decoder out of step")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReaderLimits = ReaderLimits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_target_bytes: 256,
        max_body: 64,
    };

    fn run(input: &[u8]) -> (usize, Step) {
        RequestReader::new(LIMITS).advance(input)
    }

    fn complete(input: &[u8]) -> (usize, ParsedRequest) {
        match run(input) {
            (n, Step::Complete(r)) => (n, r),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn rejected(input: &[u8]) -> Reject {
        let mut reader = RequestReader::new(LIMITS);
        let mut buf = input.to_vec();
        loop {
            match reader.advance(&buf) {
                (_, Step::Reject(r)) => return r,
                (n, Step::SendContinue) => {
                    buf.drain(..n);
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
    }

    const GET: &[u8] =
        b"GET /fhir/Patient?identifier=x%7C1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n";
    const POST_CL: &[u8] =
        b"POST /oauth/token HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    const POST_CHUNKED: &[u8] = b"POST /fhir/Task HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn parses_get_with_query() {
        let (n, r) = complete(GET);
        assert_eq!(n, GET.len());
        assert_eq!(r.head.method, "GET");
        assert_eq!(r.head.target, "/fhir/Patient?identifier=x%7C1");
        assert_eq!(r.head.path, "/fhir/Patient");
        assert_eq!(r.head.query.as_deref(), Some("identifier=x%7C1"));
        assert_eq!(r.head.version, Version::Http11);
        assert_eq!(r.head.headers[1], ("x-request-id".into(), b"abc".to_vec()));
        assert!(!r.head.close);
        assert!(r.body.is_empty());
    }

    #[test]
    fn parses_bodies() {
        let (n, r) = complete(POST_CL);
        assert_eq!((n, r.body.as_slice()), (POST_CL.len(), &b"hello world"[..]));
        let (n, r) = complete(POST_CHUNKED);
        assert_eq!(n, POST_CHUNKED.len());
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.head.framing, Framing::Chunked);
    }

    /// Every truncated prefix asks for more and never panics; the whole message completes.
    #[test]
    fn every_truncated_prefix_needs_more() {
        for msg in [GET, POST_CL, POST_CHUNKED] {
            for k in 0..msg.len() {
                let mut reader = RequestReader::new(LIMITS);
                let (used, step) = reader.advance(&msg[..k]);
                assert_eq!(
                    step,
                    Step::NeedMore,
                    "prefix {k} of {:?}",
                    String::from_utf8_lossy(msg)
                );
                assert!(used <= k);
            }
            assert!(matches!(run(msg).1, Step::Complete(_)));
        }
    }

    /// Fed one byte at a time through a single reader, the result is the same.
    #[test]
    fn byte_by_byte_feeding() {
        for msg in [GET, POST_CL, POST_CHUNKED] {
            let mut reader = RequestReader::new(LIMITS);
            let mut buf = Vec::new();
            let mut result = None;
            for (k, b) in msg.iter().enumerate() {
                buf.push(*b);
                let (used, step) = reader.advance(&buf);
                buf.drain(..used);
                match step {
                    Step::NeedMore => assert!(k + 1 < msg.len()),
                    Step::Complete(r) => {
                        assert_eq!(k + 1, msg.len());
                        result = Some(r);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(result.map(|r| r.body), Some(complete(msg).1.body));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn pipelined_requests_leave_the_rest() {
        let mut stream = Vec::new();
        stream.extend_from_slice(POST_CHUNKED);
        stream.extend_from_slice(POST_CL);
        stream.extend_from_slice(GET);
        let mut bodies = Vec::new();
        while !stream.is_empty() {
            let (n, r) = complete(&stream);
            bodies.push(r.body);
            stream.drain(..n);
        }
        assert_eq!(
            bodies,
            vec![b"hello world".to_vec(), b"hello world".to_vec(), vec![]]
        );
    }

    #[test]
    fn leading_empty_lines_and_limits_on_them() {
        let (n, r) = complete(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((n, r.head.path.as_str()), (31, "/"));
        assert_eq!(
            rejected(b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n").status,
            400
        );
    }

    #[test]
    fn line_ending_policy() {
        for (input, why) in [
            (
                &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
                "bare LF after request line",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF after field"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\n",
                "bare LF as the empty line",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare CR"),
            (b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", "NUL in value"),
            (b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", "NUL in target"),
            (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "leading bare LF"),
        ] {
            assert_eq!(rejected(input).status, 400, "{why}");
        }
    }

    #[test]
    fn field_syntax_policy() {
        for (input, why) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"[..],
                "obs-fold",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                "leading space on first field",
            ),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "space before colon"),
            (b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", "bad name byte"),
            (
                b"GET / HTTP/1.1\r\nX: \x01\r\nHost: a\r\n\r\n",
                "control byte in value",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", "no Host in 1.1"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Hosts"),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "space in Host"),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "double space"),
            (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", "fragment"),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "asterisk-form"),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
                "authority-form",
            ),
            (
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                "non-ASCII target",
            ),
            (b"GET / FOO/1.1\r\nHost: a\r\n\r\n", "garbage version"),
            (b"G\"T / HTTP/1.1\r\nHost: a\r\n\r\n", "bad method byte"),
            (b"GET\r\nHost: a\r\n\r\n", "no target"),
        ] {
            assert_eq!(rejected(input).status, 400, "{why}");
        }
        // HTTP/1.0 needs no Host; obs-text in values is kept as bytes.
        let (_, r) = complete(b"GET / HTTP/1.0\r\nX: caf\xe9\r\n\r\n");
        assert!(r.head.close);
        assert_eq!(r.head.headers[0].1, b"caf\xe9");
    }

    #[test]
    fn absolute_form_is_accepted() {
        let (_, r) = complete(
            b"GET HTTPS://np.example:8443/fhir/metadata?x=1 HTTP/1.1\r\nHost: np.example\r\n\r\n",
        );
        assert_eq!(r.head.path, "/fhir/metadata");
        assert_eq!(r.head.query.as_deref(), Some("x=1"));
        let (_, r) = complete(b"GET http://np.example HTTP/1.1\r\nHost: np.example\r\n\r\n");
        assert_eq!(r.head.path, "/");
        let (_, r) = complete(b"GET http://np.example?x HTTP/1.1\r\nHost: np.example\r\n\r\n");
        assert_eq!(
            (r.head.path.as_str(), r.head.query.as_deref()),
            ("/", Some("x"))
        );
        for target in [
            "https://user@np.example/fhir",
            "https://np.example:99999/fhir",
            "https://np.example/fhir/../admin",
            "https://np.example/fhir/a%2Fb",
            "https://np_example/fhir",
            "https:///fhir",
        ] {
            let line = format!("GET {target} HTTP/1.1\r\nHost: np.example\r\n\r\n");
            assert_eq!(
                rejected(line.as_bytes()).reason,
                "invalid request-target",
                "{target}"
            );
        }
    }

    #[test]
    fn versions() {
        assert_eq!(rejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").status, 505);
        assert_eq!(rejected(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").status, 505);
        assert_eq!(rejected(b"GET / HTTP/3.0\r\nHost: a\r\n\r\n").status, 505);
        assert_eq!(rejected(b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n").status, 400);
    }

    #[test]
    fn connection_close() {
        let (_, r) =
            complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(r.head.close);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
        assert!(!r.head.close);
    }

    #[test]
    fn smuggling_defences() {
        for (input, status, why) in [
            (&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..], 400, "CL+TE"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, "TE+CL"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, "double CL, equal"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400, "double CL"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400, "CL list"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400, "CL sign"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400, "CL hex"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\nabc", 400, "CL inner space"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "CL empty"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400, "CL overflow"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, "CL very long"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400, "chunked twice"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "chunked twice in two lines"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, "chunked not last"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "no chunked"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", 400, "coding with parameter"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 400, "empty list element"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400, "not chunked"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "TE in 1.0"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "unknown coding"),
        ] {
            assert_eq!(rejected(input).status, status, "{why}");
        }
        let (_, r) =
            complete(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n");
        assert!(r.body.is_empty());
    }

    #[test]
    fn bad_chunks() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, status, why) in [
            (&b"x\r\n"[..], 400, "not hex"),
            (b"\r\n", 400, "empty size"),
            (b"-1\r\n", 400, "negative"),
            (b"+1\r\na\r\n0\r\n\r\n", 400, "plus sign"),
            (b"0x1\r\na\r\n0\r\n\r\n", 400, "0x prefix"),
            (b"1 2\r\n", 400, "space between digits"),
            (b"1\na\r\n", 400, "bare LF after size"),
            (b"1\r\na\n0\r\n\r\n", 400, "bare LF after data"),
            (b"1\r\nab\r\n", 400, "data longer than size"),
            (b"1;a\nb\r\n", 400, "LF inside extension"),
            (b"1;a\x01\r\n", 400, "control inside extension"),
            (b"00000000000000001\r\n", 400, "17 digits"),
            (b"ffffffffffffffff\r\n", 413, "u64::MAX"),
            (b"41\r\n", 413, "one over the body limit"),
            (
                b"20\r\n0123456789abcdef0123456789abcdef\r\n21\r\n",
                413,
                "sum over the limit",
            ),
            (b"0\r\nX: a\nb\r\n\r\n", 400, "bare LF in trailer"),
            (b"0\r\n\r\r\n", 400, "bare CR at end"),
        ] {
            let mut msg = head.to_vec();
            msg.extend_from_slice(body);
            assert_eq!(rejected(&msg).status, status, "{why}");
        }
        // Sixteen digits with leading zeros and spaces before an extension are fine.
        let mut msg = head.to_vec();
        msg.extend_from_slice(b"0000000000000003 \t;x\r\nabc\r\n0\r\n\r\n");
        assert_eq!(complete(&msg).1.body, b"abc");
    }

    #[test]
    fn chunked_overhead_is_bounded() {
        let mut d = ChunkedDecoder::new(u64::MAX, 1024);
        let mut out = Vec::new();
        let chunk = b"1\r\na\r\n";
        let mut result = Ok((0, false));
        for _ in 0..(MAX_CHUNK_OVERHEAD / 5 + 2) {
            result = d.feed(chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.map_err(|r| r.status), Err(400));
        let mut d = ChunkedDecoder::new(64, 16);
        assert_eq!(
            d.feed(b"0\r\nX-Long-Trailer: 0123456789\r\n\r\n", &mut out)
                .map_err(|r| r.status),
            Err(431)
        );
    }

    #[test]
    fn size_limits() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(300));
        assert_eq!(rejected(long_target.as_bytes()).status, 414);
        // 414 comes before the line ends: no waiting for a CRLF that never arrives.
        let open_line = format!("GET /{}", "a".repeat(300));
        assert_eq!(rejected(open_line.as_bytes()).status, 414);
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(1100)
        );
        assert_eq!(rejected(huge.as_bytes()).status, 431);
        // Also without the end of the head in sight.
        assert_eq!(rejected(&huge.as_bytes()[..1050]).status, 431);
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..16 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(rejected(many.as_bytes()).status, 431);
        assert_eq!(
            rejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n").status,
            413
        );
        let (_, r) = complete(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 64\r\n\r\n{}",
                "c".repeat(64)
            )
            .as_bytes(),
        );
        assert_eq!(r.body.len(), 64);
        let long_method = format!("{} / HTTP/1.1\r\nHost: a\r\n\r\n", "M".repeat(40));
        assert_eq!(rejected(long_method.as_bytes()).status, 501);
        assert_eq!(rejected("M".repeat(40).as_bytes()).status, 400);
    }

    #[test]
    fn path_hint_for_error_bodies() {
        let mut reader = RequestReader::new(LIMITS);
        let huge = format!(
            "POST /oauth/token HTTP/1.1\r\nHost: a\r\nX: {}\r\n",
            "b".repeat(1100)
        );
        assert!(matches!(
            reader.advance(huge.as_bytes()).1,
            Step::Reject(Reject { status: 431, .. })
        ));
        assert_eq!(reader.path_hint(), Some("/oauth/token"));
        let mut reader = RequestReader::new(LIMITS);
        let big = b"POST /fhir/Task HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n";
        assert!(matches!(
            reader.advance(big).1,
            Step::Reject(Reject { status: 413, .. })
        ));
        assert_eq!(reader.path_hint(), Some("/fhir/Task"));
        let mut reader = RequestReader::new(LIMITS);
        assert!(matches!(
            reader.advance(&[0x16, 0x03, 0x01, b'\n']).1,
            Step::Reject(_)
        ));
        assert_eq!(reader.path_hint(), None);
    }

    #[test]
    fn expect_100_continue() {
        let head =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        let mut reader = RequestReader::new(LIMITS);
        let (n, step) = reader.advance(head);
        assert_eq!((n, step), (head.len(), Step::SendContinue));
        assert_eq!(reader.advance(b"").1, Step::NeedMore);
        assert!(matches!(reader.advance(b"abc").1, Step::Complete(r) if r.body == b"abc"));

        // Body already there: no 100.
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(b"abc");
        assert!(matches!(run(&with_body).1, Step::Complete(_)));

        // Too large: 413 without 100.
        let big =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 65\r\n\r\n";
        assert!(matches!(
            run(big).1,
            Step::Reject(Reject { status: 413, .. })
        ));

        // No body: no 100. Chunked: 100.
        let empty =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(run(empty).1, Step::Complete(_)));
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(chunked).1, Step::SendContinue);

        // HTTP/1.0 ignores it; other expectations are 417.
        let old = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(run(old).1, Step::NeedMore);
        let other = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(rejected(other).status, 417);
    }

    /// A CR that ends the bytes received so far may be the first half of the request line's
    /// CRLF: it is not part of the request-target, so a target of the longest length is not
    /// refused for how its line arrived.
    #[test]
    fn a_cr_still_waiting_for_its_lf_is_not_part_of_the_target() {
        let target = format!("/{}", "a".repeat(LIMITS.max_target_bytes - 1));
        let line = format!("T {target}\r");
        assert_eq!(
            RequestReader::new(LIMITS).advance(line.as_bytes()).1,
            Step::NeedMore
        );
        let mut reader = RequestReader::new(LIMITS);
        let mut buf = Vec::new();
        for piece in line.as_bytes().chunks(37) {
            buf.extend_from_slice(piece);
            let (used, step) = reader.advance(&buf);
            buf.drain(..used);
            assert_eq!(step, Step::NeedMore, "after {} bytes", buf.len());
        }
        let longer = format!("T {target}a\r");
        assert_eq!(
            RequestReader::new(LIMITS).advance(longer.as_bytes()).1,
            Step::Reject(Reject {
                status: 414,
                reason: "request-target too long",
            })
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: mutate valid messages byte by byte.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for msg in [GET, POST_CL, POST_CHUNKED] {
            for _ in 0..2000 {
                let mut m = msg.to_vec();
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let at = (seed as usize) % m.len();
                    m[at] = (seed >> 32) as u8;
                }
                let mut reader = RequestReader::new(LIMITS);
                let (n, _) = reader.advance(&m);
                assert!(n <= m.len());
            }
        }
    }
}
