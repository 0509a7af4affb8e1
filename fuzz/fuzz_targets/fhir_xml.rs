//! FHIR XML in: never panics; whatever is accepted converts back to XML that
//! reads again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::fhir::{self, FhirVersion, Limits};

fuzz_target!(|data: &[u8]| {
    let relaxed = Limits {
        max_bytes: 1 << 24,
        max_depth: 512,
    };
    for version in [FhirVersion::Stu3, FhirVersion::R4] {
        if let Ok(v) = fhir::xml_to_json(data, version, &Limits::default()) {
            if let Ok(xml) = fhir::json_to_xml(&v, version) {
                if let Err(e) = fhir::xml_to_json(xml.as_bytes(), version, &relaxed) {
                    panic!("written xml does not read back: {e}");
                }
            }
        }
    }
});
