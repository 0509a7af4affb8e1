//! Mitz consent notifications (a FHIR R4 transaction Bundle, JSON or XML):
//! never panics; an accepted notification is for our URA, names a valid
//! BSN, and has one consent state per Consent with ordering keys that match
//! its `dateTime`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::fhir::FhirVersion;
use np_agent::fhir::wire::{Release, read_body};
use np_agent::ids::Bsn;
use np_agent::mitz::notification::{order_key, validate};

const OUR_URA: &str = "12345678";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((secs, nanos)) = order_key(text) {
            assert!(nanos < 1_000_000_000, "{text:?}: {secs} {nanos}");
        }
    }
    let Ok(body) = read_body(data, None, 1 << 20, Release::Only(FhirVersion::R4)) else {
        return;
    };
    let Ok(n) = validate(&body.value, OUR_URA) else {
        return;
    };
    assert_eq!(n.holder, OUR_URA);
    assert!(Bsn::parse(n.bsn.as_str()).is_some());
    assert!(n.entries >= 1);
    for c in &n.consents {
        assert_eq!(order_key(&c.date_time), Some(c.order), "{}", c.date_time);
    }
});
