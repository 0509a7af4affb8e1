//! What the EHR leaves in the outbox: a file name (any bytes the file system
//! allows) and its content. Never panics; a name is read as data, cancel or
//! ignored only when its case id is safe as a path segment; the name as
//! written into a one-line reason holds no control character and no more
//! than 200 characters; an accepted export names one patient with a valid
//! BSN and only resources with FHIR ids.
//!
//! Input: the file name up to the first NUL (a name never holds one), the
//! content after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::ids::Bsn;
use np_agent::sender::export::{
    self, GENERATED_PREFIX, Kind, MAX_KEPT_NAME, Name, RejectedName, Rules, classify, display_name,
    is_fhir_id, log_name,
};

fuzz_target!(|data: &[u8]| {
    let (name, content) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let shown = display_name(name);
    assert!(shown.chars().count() <= 200);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    let kept = RejectedName::for_file(name);
    let kept = kept.as_str();
    assert!(!kept.is_empty() && kept.len() <= MAX_KEPT_NAME.max(GENERATED_PREFIX.len() + 16));
    assert!(!kept.starts_with('.') && !kept.contains('/'), "{kept:?}");
    assert!(!kept.chars().any(char::is_control), "{kept:?}");
    let logged = log_name(name);
    assert!(!logged.contains(['\n', '\r', ' ', '=', '"']), "{logged:?}");
    match classify(name) {
        Ok(Name::Data { case_id, .. } | Name::Cancel { case_id }) => {
            let id = case_id.as_str();
            assert!(!id.is_empty() && !id.starts_with('.'));
            assert!(!id.contains(['/', '\\', '\0']) && id != "..", "{id:?}");
            assert!(!export::is_ignored(name));
        }
        Ok(Name::Ignored) => assert!(export::is_ignored(name)),
        Err(_) => {}
    }
    let rules = Rules {
        max_bytes: 1 << 20,
        twiin_partners: vec!["hospb".into()],
        zorgviewer_partners: vec![],
    };
    let Ok(accepted) = export::validate(name, content, "hospb", &rules) else {
        return;
    };
    if let Kind::Data(data) = accepted.kind() {
        assert!(Bsn::parse(data.patient().as_str()).is_some());
        assert!(is_fhir_id(data.patient_id()));
    }
});
