//! The AORTA headers: Mitz's `AORTA-ID` and `AORTA-Version`, and Epic's
//! `AORTA-ID` forms on Zorgviewer requests. Never panics; an accepted id's
//! audit form parses back to the same id; a version we echo is one short
//! token of safe characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::mitz::aorta as mitz;
use np_agent::zorgviewer::aorta as epic;

fn safe_header_value(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !v.contains(['\r', '\n'])
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = mitz::parse(text) {
        let written = id.audit_form();
        assert!(safe_header_value(&written), "{written:?}");
        let again = match &id.initial {
            Some(initial) => format!("initialRequestID={initial}; requestID={}", id.request),
            None => format!("requestID={}", id.request),
        };
        assert_eq!(mitz::parse(&again).as_ref(), Ok(&id), "{again}");
    }
    let version = mitz::response_version(Some(text));
    assert!(
        version.len() <= 80 && safe_header_value(&version),
        "{version:?}"
    );
    assert!(version.starts_with("contentVersion="));
    if let Ok(id) = epic::parse(text) {
        let written = id.audit_form();
        assert!(!written.contains(['\r', '\n']), "{written:?}");
        match epic::parse(&written) {
            Ok(again) => assert_eq!(again.audit_form(), written),
            Err(e) => panic!("audit form {written:?} does not read back: {e}"),
        }
    }
});
