//! FHIR JSON in: never panics; whatever is accepted and converts to XML reads
//! back, and the JSON writer's output parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::fhir::{self, FhirVersion, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = fhir::parse_json(data, &Limits::default()) else {
        return;
    };
    let text = fhir::to_json_string(&v);
    let again = fhir::parse_json(text.as_bytes(), &Limits::default());
    assert_eq!(again.as_ref().ok(), Some(&v), "json writer output differs");
    let relaxed = Limits {
        max_bytes: 1 << 24,
        max_depth: 512,
    };
    for version in [FhirVersion::Stu3, FhirVersion::R4] {
        if let Ok(xml) = fhir::json_to_xml(&v, version) {
            if let Err(e) = fhir::xml_to_json(xml.as_bytes(), version, &relaxed) {
                panic!("written xml does not read back: {e}");
            }
        }
    }
});
