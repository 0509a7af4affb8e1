//! The shared codecs on any text: never panic; what decodes re-encodes and
//! decodes to the same text, a parsed URL written out parses to the same
//! URL and stays under itself, an HTTP-date written out reads back, and a
//! `Retry-After` wait never exceeds its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::util::url::{self, Url};
use np_agent::util::{percent, retry_after, time};

const NOW: i64 = 1_796_191_098;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Encoding at most triples a text; both limits leave room for that.
    if text.len() > percent::MAX_INPUT / 3 || text.len() > url::MAX_LEN / 3 {
        return;
    }
    if let Ok(d) = percent::decode_form(&text) {
        assert_eq!(percent::decode_form(&percent::encode_form(&d)), Ok(d));
    }
    if let Ok(d) = percent::decode_query(&text) {
        assert_eq!(percent::decode_query(&percent::encode_query(&d)), Ok(d));
    }
    if let Ok(d) = percent::decode_segment(&text) {
        assert!(!d.contains(['/', '\\']), "{text:?}");
    }
    let _ = percent::split_pairs(&text).count();
    if let Ok(u) = Url::parse(&text) {
        let written = u.to_string();
        assert_eq!(Url::parse(&written).as_ref(), Ok(&u), "{written}");
        assert!(u.is_under(&u), "{written}");
        assert!(Url::parse(&u.origin()).is_ok(), "{written}");
    }
    if url::check_relative_path(&text).is_ok() {
        let joined = url::join("https://sender.example:8443/fhir/stu3", &text);
        assert!(
            url::is_under("https://sender.example:8443/fhir/stu3", &joined),
            "{joined}"
        );
    }
    if let Some(at) = time::parse_http_date(&text, NOW) {
        assert_eq!(time::parse_http_date(&time::http_date(at), NOW), Some(at));
    }
    if let Some(wait) = retry_after::parse(&text, NOW, 300) {
        assert!(wait <= 300);
    }
});
