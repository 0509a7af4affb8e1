//! HTTP/1.1 requests in (head, `Content-Length` and chunked bodies,
//! pipelining): never panics, and a stream read all at once gives the same
//! requests, and ends in a refusal or not, as the same stream arriving in
//! pieces, so how the network splits the bytes cannot change where one
//! request ends. (The refusal's status may differ: the early checks of an
//! unfinished request line see less of it than a whole line shows.)
//!
//! Input: the first byte picks the piece size (1 to 64); the rest is the
//! byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::http::parse::{ParsedRequest, ReaderLimits, RequestReader, Step};

/// Small limits, so the fuzzer reaches every one of them.
const LIMITS: ReaderLimits = ReaderLimits {
    max_header_bytes: 1024,
    max_headers: 16,
    max_target_bytes: 256,
    max_body: 512,
};

/// What a stream turned into: the complete requests, then whether it was
/// refused (or ended mid-request or exactly between requests).
type Outcome = (Vec<ParsedRequest>, bool);

/// Feeds `stream` in pieces of `piece` bytes, as a connection would.
fn read(stream: &[u8], piece: usize) -> Outcome {
    let mut done = Vec::new();
    let mut reader = RequestReader::new(LIMITS);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunks = stream.chunks(piece);
    loop {
        let (used, step) = reader.advance(&buf);
        assert!(used <= buf.len(), "consumed more than it was given");
        buf.drain(..used);
        match step {
            Step::Complete(request) => {
                done.push(request);
                reader = RequestReader::new(LIMITS);
            }
            Step::Reject(reject) => {
                assert!(
                    (400..=505).contains(&reject.status),
                    "refusal status {}",
                    reject.status
                );
                return (done, true);
            }
            Step::SendContinue => {}
            Step::NeedMore => match chunks.next() {
                Some(more) => buf.extend_from_slice(more),
                None => return (done, false),
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let whole = read(stream, stream.len().max(1));
    let pieces = read(stream, piece);
    assert_eq!(whole, pieces, "piece size {piece}");
    for request in &whole.0 {
        assert!(request.body.len() as u64 <= LIMITS.max_body);
        assert!(request.head.headers.len() <= LIMITS.max_headers);
        assert!(request.head.target.len() <= LIMITS.max_target_bytes);
        assert!(request.head.path.starts_with('/') || request.head.target.contains("://"));
    }
});
