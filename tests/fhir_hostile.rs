//! Hostile and broken input through the public FHIR API: every case must end
//! in the right error, never in a panic, and no error may echo content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use np_agent::fhir::{self, FhirError, FhirVersion, Format, Limits};

const BSN: &str = "999999990";

/// A small Mitz-style R4 consent notification (transaction Bundle), XML.
fn mitz_xml() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="transaction"/>
  <entry>
    <fullUrl value="urn:uuid:2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a01"/>
    <resource>
      <Consent>
        <id value="2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a01"/>
        <meta><profile value="http://vzvz.nl/fhir/StructureDefinition/Consent-Mitz-Notify|3.8.0"/></meta>
        <extension url="http://fhir.nl/StructureDefinition/OTV-ProviderCategory">
          <valueCodeableConcept><coding><system value="http://fhir.nl/otv/CodeSystem/raadplegende-zorgaanbiedercategorie"/><version value="3960100"/><code value="RPZAC005"/></coding></valueCodeableConcept>
        </extension>
        <status value="active"/>
        <scope><coding><system value="http://terminology.hl7.org/CodeSystem/consentscope"/><code value="patient-privacy"/></coding></scope>
        <category><coding><system value="http://fhir.nl/otv/CodeSystem/gegevenscategorie"/><code value="GGC002"/></coding></category>
        <patient><reference value="urn:uuid:2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a02"/></patient>
        <dateTime value="2024-11-18T10:51:16.8967927Z"/>
        <provision>
          <type value="permit"/>
          <actor><role><coding><system value="http://terminology.hl7.org/CodeSystem/v3-ParticipationType"/><code value="CST"/></coding></role><reference><reference value="urn:uuid:2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a03"/></reference></actor>
          <purpose><system value="http://hl7.org/fhir/v3/ActReason"/><code value="TREAT"/></purpose>
        </provision>
      </Consent>
    </resource>
    <request><method value="POST"/><url value="Consent"/></request>
  </entry>
  <entry>
    <fullUrl value="urn:uuid:2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a02"/>
    <resource>
      <Patient>
        <id value="2d3e1a6b-6c8e-4d53-9a11-0d6f6f0a7a02"/>
        <identifier><system value="http://fhir.nl/fhir/NamingSystem/bsn"/><value value="{BSN}"/></identifier>
      </Patient>
    </resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
</Bundle>"#
    )
}

fn r4(xml: &[u8]) -> Result<serde_json::Value, FhirError> {
    fhir::xml_to_json(xml, FhirVersion::R4, &Limits::default())
}

fn json(bytes: &[u8]) -> Result<serde_json::Value, FhirError> {
    fhir::parse_json(bytes, &Limits::default())
}

#[test]
fn a_mitz_notification_reads_and_round_trips() {
    let v = r4(mitz_xml().as_bytes()).unwrap();
    assert_eq!(v["entry"][0]["resource"]["resourceType"], "Consent");
    assert_eq!(
        v["entry"][0]["resource"]["dateTime"],
        "2024-11-18T10:51:16.8967927Z"
    );
    assert_eq!(v["entry"][1]["resource"]["identifier"][0]["value"], BSN);
    let xml = fhir::json_to_xml(&v, FhirVersion::R4).unwrap();
    assert_eq!(r4(xml.as_bytes()).unwrap(), v);
    let text = fhir::to_json_string(&v);
    assert_eq!(json(text.as_bytes()).unwrap(), v);
}

#[test]
fn billion_laughs_is_refused_before_any_expansion() {
    let mut doc =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        doc.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    doc.push_str("]>\n<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"&lol9;\"/></Patient>");
    match r4(doc.as_bytes()) {
        Err(FhirError::Forbidden { what, at }) => {
            assert_eq!(what, "doctype declaration");
            assert_eq!(at.line, 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn external_entities_and_references_are_refused() {
    for doc in [
        "<!DOCTYPE Patient [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><Patient xmlns=\"http://hl7.org/fhir\"><id value=\"&xxe;\"/></Patient>",
        "<!DOCTYPE Patient SYSTEM \"http://attacker.example/evil.dtd\"><Patient xmlns=\"http://hl7.org/fhir\"/>",
        "<!DOCTYPE Patient PUBLIC \"-//x//y\" \"http://attacker.example/evil.dtd\"><Patient xmlns=\"http://hl7.org/fhir\"/>",
    ] {
        assert!(
            matches!(r4(doc.as_bytes()), Err(FhirError::Forbidden { .. })),
            "{doc}"
        );
    }
    // An entity used without a DOCTYPE is refused, not silently dropped.
    let doc = "<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"&xxe;\"/></Patient>";
    assert!(matches!(
        r4(doc.as_bytes()),
        Err(FhirError::Forbidden {
            what: "entity reference",
            ..
        })
    ));
    // XInclude is an element in a foreign namespace: unknown, refused.
    let doc = "<Patient xmlns=\"http://hl7.org/fhir\" xmlns:xi=\"http://www.w3.org/2001/XInclude\"><xi:include href=\"file:///etc/passwd\"/></Patient>";
    assert!(r4(doc.as_bytes()).is_err());
}

#[test]
fn processing_instructions_are_refused() {
    for doc in [
        "<?xml-stylesheet type=\"text/xsl\" href=\"http://x/y.xsl\"?><Patient xmlns=\"http://hl7.org/fhir\"/>",
        "<Patient xmlns=\"http://hl7.org/fhir\"><?evil?></Patient>",
        "<Patient xmlns=\"http://hl7.org/fhir\"/><?after?>",
    ] {
        assert!(
            matches!(
                r4(doc.as_bytes()),
                Err(FhirError::Forbidden {
                    what: "processing instruction",
                    ..
                })
            ),
            "{doc}"
        );
    }
    // The XML declaration itself is fine.
    r4(b"<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?><Patient xmlns=\"http://hl7.org/fhir\"/>").unwrap();
}

#[test]
fn deep_nesting_is_refused() {
    let deep_json = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}{}}}",
        "[{\"extension\":".repeat(40),
        "[]}]".repeat(40)
    );
    assert!(matches!(
        json(deep_json.as_bytes()),
        Err(FhirError::TooDeep { limit: 32, .. })
    ));
    let deep_xml = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<extension url=\"u\">".repeat(40),
        "</extension>".repeat(40)
    );
    assert!(matches!(
        r4(deep_xml.as_bytes()),
        Err(FhirError::TooDeep { limit: 32, .. })
    ));
    // Far beyond any stack: still a clean error.
    let abyss = "<a>".repeat(500_000);
    assert!(matches!(
        r4(abyss.as_bytes()),
        Err(FhirError::TooDeep { .. })
    ));
    let abyss = "[".repeat(500_000);
    assert!(matches!(
        json(abyss.as_bytes()),
        Err(FhirError::TooDeep { .. })
    ));
}

#[test]
fn oversize_documents_are_refused() {
    let limits = Limits::with_max_bytes(1000);
    let big_json = format!(
        "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}",
        "a".repeat(1000)
    );
    assert_eq!(
        fhir::parse_json(big_json.as_bytes(), &limits),
        Err(FhirError::TooLarge { limit: 1000 })
    );
    let big_xml = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"{}\"/></Patient>",
        "a".repeat(1000)
    );
    assert_eq!(
        fhir::xml_to_json(big_xml.as_bytes(), FhirVersion::R4, &limits),
        Err(FhirError::TooLarge { limit: 1000 })
    );
    assert_eq!(
        fhir::FhirError::TooLarge { limit: 1000 }.issue_code(),
        fhir::IssueType::TooLong
    );
}

#[test]
fn invalid_utf8_is_refused() {
    let mut doc = b"{\"resourceType\":\"Patient\",\"id\":\"".to_vec();
    doc.extend_from_slice(b"\xED\xA0\x80"); // an encoded surrogate
    doc.extend_from_slice(b"\"}");
    assert!(matches!(
        json(&doc),
        Err(FhirError::InvalidUtf8 { offset: 32 })
    ));
    let xml = b"<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"\xC0\xAF\"/></Patient>";
    assert!(matches!(r4(xml), Err(FhirError::InvalidUtf8 { .. })));
    // UTF-16 is not UTF-8.
    let utf16: Vec<u8> = "\u{FEFF}<Patient/>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert!(matches!(r4(&utf16), Err(FhirError::InvalidUtf8 { .. })));
}

#[test]
fn duplicate_json_keys_are_refused() {
    let doc = format!(
        "{{\"resourceType\":\"Patient\",\"identifier\":[{{\"system\":\"http://fhir.nl/fhir/NamingSystem/bsn\",\"value\":\"{BSN}\",\"value\":\"123456782\"}}]}}"
    );
    match json(doc.as_bytes()) {
        Err(e @ FhirError::DuplicateKey { .. }) => {
            assert!(!e.to_string().contains(BSN));
            assert!(e.to_string().contains("$.identifier[0].value"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let doc = br#"{"resourceType":"Patient","resourceType":"Organization"}"#;
    assert!(matches!(json(doc), Err(FhirError::DuplicateKey { .. })));
}

#[test]
fn unknown_elements_are_refused_with_their_path() {
    let doc = "<Bundle xmlns=\"http://hl7.org/fhir\"><type value=\"collection\"/><entry><resource><Patient><foo value=\"1\"/></Patient></resource></entry></Bundle>";
    match r4(doc.as_bytes()) {
        Err(FhirError::UnknownElement { at }) => {
            assert_eq!(at.path, "Bundle.entry[0].resource.foo");
            assert_eq!(at.line, 1);
        }
        other => panic!("{other:?}"),
    }
    let doc =
        br#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","foo":1}}]}"#;
    let v = json(doc).unwrap();
    match fhir::json_to_xml(&v, FhirVersion::R4) {
        Err(FhirError::UnknownElement { at }) => {
            assert_eq!(at.path, "Bundle.entry[0].resource.foo")
        }
        other => panic!("{other:?}"),
    }
    // An unknown resource type.
    assert!(matches!(
        r4(b"<Evil xmlns=\"http://hl7.org/fhir\"/>"),
        Err(FhirError::NotAResource { .. })
    ));
}

#[test]
fn wrong_namespaces_are_refused() {
    for doc in [
        "<Patient/>",
        "<Patient xmlns=\"http://hl7.org/fhir/STU3\"/>",
        "<Patient xmlns=\"http://www.w3.org/1999/xhtml\"/>",
    ] {
        assert!(
            matches!(r4(doc.as_bytes()), Err(FhirError::NotAResource { .. })),
            "{doc}"
        );
    }
    let doc = "<Patient xmlns=\"http://hl7.org/fhir\"><active xmlns=\"urn:evil\" value=\"true\"/></Patient>";
    assert!(matches!(r4(doc.as_bytes()), Err(FhirError::Invalid { .. })));
}

#[test]
fn scripts_in_narratives_are_refused_in_both_formats() {
    let xml = "<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"x\" onerror=\"alert(1)\"/></div></text></Patient>";
    assert!(matches!(
        r4(xml.as_bytes()),
        Err(FhirError::UnsafeNarrative { .. })
    ));
    let json_doc = br#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script></div>"}}"#;
    assert!(matches!(
        json(json_doc),
        Err(FhirError::UnsafeNarrative { .. })
    ));
    assert!(fhir::check_narrative("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:alert(1)\">x</a></div>").is_err());
    assert!(
        fhir::check_narrative("<div xmlns=\"http://www.w3.org/1999/xhtml\"><b>ok</b></div>")
            .is_ok()
    );
}

#[test]
fn every_truncated_prefix_is_an_error_never_a_panic() {
    let xml = mitz_xml();
    let xml = xml.trim_end();
    r4(xml.as_bytes()).unwrap();
    for end in 0..xml.len() {
        let r = r4(&xml.as_bytes()[..end]);
        assert!(r.is_err(), "xml prefix of {end} bytes accepted");
    }
    let v = r4(xml.as_bytes()).unwrap();
    let text = fhir::to_json_string(&v);
    for end in 0..text.len() {
        let r = json(&text.as_bytes()[..end]);
        assert!(r.is_err(), "json prefix of {end} bytes accepted");
    }
}

#[test]
fn single_byte_corruption_never_panics() {
    let xml = mitz_xml();
    let v = r4(xml.as_bytes()).unwrap();
    let json_text = fhir::to_json_string(&v);
    for (doc, format) in [
        (xml.as_bytes(), Format::Xml),
        (json_text.as_bytes(), Format::Json),
    ] {
        for i in (0..doc.len()).step_by(3) {
            for b in [
                b'<', b'>', b'&', b'"', b'{', b'}', b'[', b'\\', 0, 0xFF, b'x',
            ] {
                let mut m = doc.to_vec();
                m[i] = b;
                // Either outcome is fine; a panic fails the test.
                if let Ok(v) = fhir::parse(&m, format, FhirVersion::R4, &Limits::default()) {
                    let _ = fhir::json_to_xml(&v, FhirVersion::R4);
                }
            }
        }
    }
}

#[test]
fn errors_do_not_echo_content() {
    let xml_cases = [
        format!(
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"{BSN}\"><x/></birthDate></Patient>"
        ),
        format!("<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"{BSN}\"/></Patient>"),
        format!("<Patient xmlns=\"http://hl7.org/fhir\"><{BSN}/></Patient>"),
        format!("<Patient xmlns=\"http://hl7.org/fhir\" a{BSN}=\"1\"/>"),
        format!("<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"&a{BSN};\"/></Patient>"),
        format!("<Patient xmlns=\"http://hl7.org/fhir\">{BSN}</Patient>"),
        format!("<{BSN}/>"),
    ];
    for doc in &xml_cases {
        let e = r4(doc.as_bytes()).unwrap_err();
        assert!(!e.to_string().contains(BSN), "{doc}: {e}");
    }
    let json_cases = [
        format!("{{\"resourceType\":\"Patient\",\"{BSN}\":1}}"),
        format!("{{\"resourceType\":\"Patient\",\"active\":\"{BSN}\"}}"),
        format!("{{\"resourceType\":\"{BSN}\"}}"),
    ];
    for doc in &json_cases {
        let e = match json(doc.as_bytes()) {
            Err(e) => e,
            Ok(v) => fhir::json_to_xml(&v, FhirVersion::R4).unwrap_err(),
        };
        assert!(!e.to_string().contains(BSN), "{doc}: {e}");
    }
}

#[test]
fn outcomes_for_errors_render_in_the_negotiated_format() {
    let e = r4(b"<!DOCTYPE x><x/>").unwrap_err();
    let oo = fhir::outcome_for(&e);
    assert_eq!(oo["issue"][0]["code"], "security");
    let format = fhir::negotiate(
        None,
        Some("application/fhir+xml;q=0.9, application/json;q=0.8"),
        Format::Json,
    )
    .unwrap();
    assert_eq!(format, Format::Xml);
    let body = fhir::render(&oo, format, FhirVersion::R4).unwrap();
    assert_eq!(body.content_type, "application/fhir+xml; charset=utf-8");
    assert_eq!(r4(&body.body).unwrap(), oo);
}

/// Random mutations of real documents (a poor man's fuzzer, for machines
/// without cargo-fuzz): no panic, and whatever json_to_xml writes,
/// xml_to_json reads back. `FHIR_MUTATIONS=n cargo test --release --test
/// fhir_hostile -- --ignored`.
#[test]
#[ignore = "long; run on demand"]
fn random_mutations() {
    let rounds: usize = std::env::var("FHIR_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fhir/r4");
    let mut seeds: Vec<(Vec<u8>, Format)> = vec![(mitz_xml().into_bytes(), Format::Xml)];
    for name in [
        "Patient-example.json",
        "Observation-decimal.json",
        "Consent-consent-example-pkb.json",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let v = json(&bytes).unwrap();
        seeds.push((
            fhir::json_to_xml(&v, FhirVersion::R4).unwrap().into_bytes(),
            Format::Xml,
        ));
        seeds.push((bytes, Format::Json));
    }
    let tokens: &[&[u8]] = &[
        b"<",
        b">",
        b"</",
        b"/>",
        b"&",
        b"&amp;",
        b"&#0;",
        b"&#x10FFFF;",
        b"\"",
        b"'",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b"\\u0000",
        b"\\ud800",
        b"<!DOCTYPE a>",
        b"<?pi?>",
        b"<![CDATA[x]]>",
        b"<!--c-->",
        b"xmlns=\"urn:x\"",
        b"<extension url=\"u\">",
        b"</extension>",
        b"\"_given\":[null]",
        b"<div xmlns=\"http://www.w3.org/1999/xhtml\">",
        b"\xFF",
        b"\xC3",
        b"1e999",
        b"-0",
        b" ",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let relaxed = Limits {
        max_bytes: 1 << 24,
        max_depth: 512,
    };
    let mut accepted = 0usize;
    for _ in 0..rounds {
        let (seed, format) = &seeds[(next() % seeds.len() as u64) as usize];
        let mut doc = seed.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % (doc.len() as u64 + 1)) as usize;
            match next() % 3 {
                0 => {
                    let t = tokens[(next() % tokens.len() as u64) as usize];
                    doc.splice(at..at, t.iter().copied());
                }
                1 => {
                    let end = (at + (next() % 16) as usize).min(doc.len());
                    doc.drain(at..end);
                }
                _ => {
                    if at < doc.len() {
                        doc[at] = next() as u8;
                    }
                }
            }
        }
        for version in [FhirVersion::Stu3, FhirVersion::R4] {
            if let Ok(v) = fhir::parse(&doc, *format, version, &Limits::default()) {
                accepted += 1;
                if let Ok(xml) = fhir::json_to_xml(&v, version) {
                    if let Err(e) = fhir::xml_to_json(xml.as_bytes(), version, &relaxed) {
                        panic!("wrote xml that does not read back: {e}\n{xml}");
                    }
                }
            }
        }
    }
    eprintln!("{rounds} mutations, {accepted} parses accepted");
}
