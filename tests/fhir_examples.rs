//! Round trips of published FHIR examples (STU3 3.0.2 and R4 4.0.1) through
//! XML. Fixtures and their provenance: tests/fixtures/fhir/README.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use np_agent::fhir::{self, FhirVersion, Limits};
use serde_json::Value;

fn fixture_dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fhir")
        .join(version)
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            // ig-r4.json in the STU3 package is an R4 resource.
            p.is_file()
                && name.ends_with(ext)
                && !name.starts_with('.')
                && name != "package.json"
                && name != "ig-r4.json"
        })
        .collect();
    out.sort();
    out
}

/// Replaces every narrative `div` by its canonical serialisation. The same
/// XHTML has many spellings (`<td/>` or `<td></td>`, `"` or `&quot;`, literal
/// newlines in attributes that XML reads as spaces); the FHIR publisher
/// itself is not consistent, so narratives are compared as XHTML trees.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "text" {
                    if let Some(Value::String(div)) = child.get_mut("div") {
                        let tree = fhir::narrative::parse_narrative(div, "div").unwrap();
                        *div = fhir::narrative::to_string(&tree);
                    }
                }
                normalise(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn normalised(v: &Value) -> Value {
    let mut v = v.clone();
    normalise(&mut v);
    v
}

/// JSON → XML → JSON must give the original back (decimals by text,
/// narratives as trees), and XML → JSON → XML must be stable.
fn round_trip(json_bytes: &[u8], version: FhirVersion, limits: &Limits) -> Result<(), String> {
    let original = fhir::parse_json(json_bytes, limits).map_err(|e| format!("parse_json: {e}"))?;
    let xml = fhir::json_to_xml(&original, version).map_err(|e| format!("json_to_xml: {e}"))?;
    let back = fhir::xml_to_json(xml.as_bytes(), version, limits)
        .map_err(|e| format!("xml_to_json: {e}"))?;
    if normalised(&original) != normalised(&back) {
        return Err("json -> xml -> json differs from the original".into());
    }
    let xml2 = fhir::json_to_xml(&back, version).map_err(|e| format!("json_to_xml again: {e}"))?;
    if xml2 != xml {
        return Err("xml -> json -> xml is not stable".into());
    }
    let back2 = fhir::xml_to_json(xml2.as_bytes(), version, limits)
        .map_err(|e| format!("xml_to_json again: {e}"))?;
    if back2 != back {
        return Err("xml -> json -> xml -> json is not stable".into());
    }
    // The JSON writer keeps everything too.
    let text = fhir::to_json_string(&back);
    if fhir::parse_json(text.as_bytes(), limits).map_err(|e| format!("reparse: {e}"))? != back {
        return Err("json -> text -> json differs".into());
    }
    Ok(())
}

fn round_trip_dir(dir: &Path, version: FhirVersion, limits: &Limits) -> usize {
    let files = files(dir, ".json");
    let mut failures = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if let Err(e) = round_trip(&bytes, version, limits) {
            failures.push(format!("{}: {e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    files.len()
}

#[test]
fn stu3_examples_round_trip() {
    let n = round_trip_dir(&fixture_dir("stu3"), FhirVersion::Stu3, &Limits::default());
    assert!(n >= 15, "{n}");
}

#[test]
fn r4_examples_round_trip() {
    let n = round_trip_dir(&fixture_dir("r4"), FhirVersion::R4, &Limits::default());
    assert!(n >= 15, "{n}");
}

/// Where the source ships XML and JSON of the same example, XML → JSON must
/// give the published JSON.
#[test]
fn stu3_published_xml_gives_published_json() {
    let dir = fixture_dir("stu3").join("pairs");
    let xmls = files(&dir, ".xml");
    assert_eq!(xmls.len(), 3);
    let limits = Limits::default();
    for xml_path in xmls {
        let json_path = xml_path.with_extension("json");
        let xml = std::fs::read(&xml_path).unwrap();
        let published = fhir::parse_json(&std::fs::read(&json_path).unwrap(), &limits).unwrap();
        let converted = fhir::xml_to_json(&xml, FhirVersion::Stu3, &limits)
            .unwrap_or_else(|e| panic!("{}: {e}", xml_path.display()));
        let (mut a, mut b) = (converted.clone(), published);
        squeeze_narratives(&mut a);
        squeeze_narratives(&mut b);
        assert_eq!(a, b, "{}", xml_path.display());
        // And XML → JSON → XML → JSON is stable.
        let xml2 = fhir::json_to_xml(&converted, FhirVersion::Stu3).unwrap();
        let again = fhir::xml_to_json(xml2.as_bytes(), FhirVersion::Stu3, &limits).unwrap();
        assert_eq!(again, converted, "{}", xml_path.display());
    }
}

#[test]
fn decimals_keep_their_exact_text() {
    let bytes = std::fs::read(fixture_dir("r4").join("Observation-decimal.json")).unwrap();
    let v = fhir::parse_json(&bytes, &Limits::default()).unwrap();
    let xml = fhir::json_to_xml(&v, FhirVersion::R4).unwrap();
    // Digits and precision are kept exactly; serde_json spells an exponent
    // as `e` with an explicit sign (`1E-22` → `1e-22`), which changes neither
    // value nor precision.
    for text in [
        "1.0",
        "1.00",
        "1e-22",
        "1000000000000000000",
        "1.000000000000000000e-245",
        "-1.000000000000000000e+245",
    ] {
        assert!(
            xml.contains(&format!("<value value=\"{text}\"/>")),
            "{text} lost in xml"
        );
    }
    let back = fhir::xml_to_json(xml.as_bytes(), FhirVersion::R4, &Limits::default()).unwrap();
    let values: Vec<String> = back["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["valueQuantity"]["value"].to_string())
        .collect();
    assert_eq!(
        values,
        [
            "1.0",
            "1.00",
            "1.0",
            "1e-22",
            "1000000000000000000",
            "1.000000000000000000e-245",
            "-1.000000000000000000e+245"
        ]
    );
    let text = fhir::to_json_string(&back);
    assert!(text.contains("\"value\":1.00}"), "{text}");
}

#[test]
fn primitive_extensions_on_array_elements() {
    // The specification's JSON edge-case Patient: nulls aligned in _given etc.
    let bytes = std::fs::read(fixture_dir("stu3").join("Patient-null.json")).unwrap();
    let v = fhir::parse_json(&bytes, &Limits::default()).unwrap();
    assert!(has_shadow_array(&v), "fixture lost its point");
    let xml = fhir::json_to_xml(&v, FhirVersion::Stu3).unwrap();
    let back = fhir::xml_to_json(xml.as_bytes(), FhirVersion::Stu3, &Limits::default()).unwrap();
    assert_eq!(normalised(&back), normalised(&v));
}

#[test]
fn resources_nest_in_bundles_contained_and_parameters() {
    for (version, dir) in [(FhirVersion::Stu3, "stu3"), (FhirVersion::R4, "r4")] {
        let bytes = std::fs::read(fixture_dir(dir).join("Bundle-ussg-fht.json")).unwrap();
        let v = fhir::parse_json(&bytes, &Limits::default()).unwrap();
        let xml = fhir::json_to_xml(&v, version).unwrap();
        assert!(xml.contains("<entry><fullUrl"), "{dir}");
        assert!(xml.contains("<contained><"), "{dir}: no contained resource");
        assert!(
            xml.contains("<resource><"),
            "{dir}: no wrapped entry resource"
        );
    }
    let bytes = std::fs::read(fixture_dir("stu3").join("Parameters-example.json")).unwrap();
    let v = fhir::parse_json(&bytes, &Limits::default()).unwrap();
    let xml = fhir::json_to_xml(&v, FhirVersion::Stu3).unwrap();
    assert!(
        xml.contains("<resource><"),
        "Parameters.parameter.resource not wrapped"
    );
}

/// Whether any `_name` property holds an array (ids/extensions on repeating primitives).
fn has_shadow_array(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, c)| (k.starts_with('_') && c.is_array()) || has_shadow_array(c)),
        Value::Array(a) => a.iter().any(has_shadow_array),
        _ => false,
    }
}

/// Narrative comparison modulo white space: the FHIR.js XML copies were
/// pretty-printed after the JSON was made, so their narratives differ in
/// indentation only. Text is trimmed and inner runs collapsed; white-space-only
/// text disappears.
fn squeeze_narratives(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "text" {
                    if let Some(Value::String(div)) = child.get_mut("div") {
                        let mut tree = fhir::narrative::parse_narrative(div, "div").unwrap();
                        squeeze(&mut tree);
                        *div = fhir::narrative::to_string(&tree);
                    }
                }
                squeeze_narratives(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(squeeze_narratives),
        _ => {}
    }
}

fn squeeze(el: &mut fhir::xml::Element) {
    el.children.retain_mut(|c| match c {
        fhir::xml::Node::Text(t) => {
            *t = t.split_whitespace().collect::<Vec<_>>().join(" ");
            !t.is_empty()
        }
        fhir::xml::Node::Element(e) => {
            squeeze(e);
            true
        }
    });
}

/// The notification Task of the Twiin TA Notified Pull specification (§7.4),
/// STU3, through XML and back.
#[test]
fn notification_task_round_trips() {
    let task = br#"{
  "resourceType": "Task",
  "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6128cfe7-0e89-4d37-ba90-e4ca3b3fcbbe"}],
  "groupIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:484639e6-e647-464c-8722-6e8a73cda4e0"},
  "status": "requested",
  "intent": "proposal",
  "code": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskCode", "code": "pull-notification"}]},
  "for": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999999990"}},
  "authoredOn": "2026-11-22T10:00:00+01:00",
  "restriction": {"period": {"end": "2026-12-06T10:00:00+01:00"}},
  "requester": {
    "agent": {"identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.2.4.3.164.2.1"}},
    "onBehalfOf": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "12345678"}}
  },
  "owner": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "87654321"}},
  "input": [
    {"type": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskParameter", "code": "authorization-base"}]},
     "valueString": "ZGFhNDFjY2MtZGFmMi00YjZkLThiNDYtN2JlZDk1MWEyYzk2"},
    {"type": {"coding": [{"system": "http://fhir.nl/fhir/NamingSystem/TaskParameter", "code": "get-workflow-task"}]},
     "valueBoolean": false},
    {"type": {"coding": [{"system": "http://loinc.org", "code": "11450-4", "display": "Problem list - Reported"}]},
     "valueString": "Condition"}
  ]
}"#;
    round_trip(task, FhirVersion::Stu3, &Limits::default()).unwrap();
    let v = fhir::parse_json(task, &Limits::default()).unwrap();
    let xml = fhir::json_to_xml(&v, FhirVersion::Stu3).unwrap();
    assert!(xml.contains("<input><type><coding><system value=\"http://fhir.nl/fhir/NamingSystem/TaskParameter\"/><code value=\"get-workflow-task\"/></coding></type><valueBoolean value=\"false\"/></input>"));
    // STU3 requester.agent does not exist in R4.
    assert!(fhir::json_to_xml(&v, FhirVersion::R4).is_err());
}

/// Runs the round trip over every example of an unpacked HL7 examples
/// package (its `package` directory in `FHIR_EXAMPLES_STU3` /
/// `FHIR_EXAMPLES_R4`): `cargo test --release --test fhir_examples -- --ignored`.
fn whole_package(var: &str, version: FhirVersion) {
    let Ok(dir) = std::env::var(var) else {
        eprintln!("{var} not set; nothing checked");
        return;
    };
    // The packages hold a few definition Bundles of 20-35 MB.
    let n = round_trip_dir(Path::new(&dir), version, &Limits::with_max_bytes(64 << 20));
    eprintln!("{n} examples round-tripped");
}

#[test]
#[ignore = "needs an unpacked hl7.fhir.r3.examples 3.0.2 package in FHIR_EXAMPLES_STU3"]
fn whole_stu3_examples_package() {
    whole_package("FHIR_EXAMPLES_STU3", FhirVersion::Stu3);
}

#[test]
#[ignore = "needs an unpacked hl7.fhir.r4.examples 4.0.1 package in FHIR_EXAMPLES_R4"]
fn whole_r4_examples_package() {
    whole_package("FHIR_EXAMPLES_R4", FhirVersion::R4);
}
