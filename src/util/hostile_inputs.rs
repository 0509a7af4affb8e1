//! One table of hostile inputs for the codecs in [`super::percent`],
//! [`super::url`] and [`super::retry_after`], and every place that reads
//! such text: each row is run through the codec, and through each caller's
//! own entry point, which must give the codec's answer or its documented
//! refusal. A caller that grows its own decoding again fails here.

use std::time::Duration;

use super::percent::{self, DecodeError};
use super::url::{self, Url};
use super::{retry_after, time};
use crate::http::Request;
use crate::oauth::form::{Form, FormError};
use crate::oauth::messages::{self, MessageError};
use crate::receiver::{self, Target, pull, task, wire};
use crate::sender::deliver;
use crate::serve::{self, Route, query};

/// The codec's answer for one input, in each form.
struct Row {
    input: String,
    form: Result<String, DecodeError>,
    query: Result<String, DecodeError>,
    segment: Result<String, DecodeError>,
}

fn row(
    input: &str,
    form: Result<&str, DecodeError>,
    query: Result<&str, DecodeError>,
    segment: Result<&str, DecodeError>,
) -> Row {
    Row {
        input: input.to_string(),
        form: form.map(str::to_string),
        query: query.map(str::to_string),
        segment: segment.map(str::to_string),
    }
}

/// The hostile inputs with the answers the codec must give.
fn table() -> Vec<Row> {
    use DecodeError::*;
    let esc = |at| Err(BadEscape { at });
    vec![
        row("+", Ok(" "), Ok("+"), Ok("+")),
        row("%2B", Ok("+"), Ok("+"), Ok("+")),
        row("a+b%2Bc", Ok("a b+c"), Ok("a+b+c"), Ok("a+b+c")),
        row("%00", Err(Control), Err(Control), Err(Control)),
        row("%0A", Err(Control), Err(Control), Err(Control)),
        row("%7F", Err(Control), Err(Control), Err(Control)),
        row("%C2%85", Err(Control), Err(Control), Err(Control)),
        row("%zz", esc(0), esc(0), esc(0)),
        row("%4", esc(0), esc(0), esc(0)),
        row("%", esc(0), esc(0), esc(0)),
        row("a%", esc(1), esc(1), esc(1)),
        row("%+1", esc(0), esc(0), esc(0)),
        row("%hl7.org", esc(0), esc(0), esc(0)),
        row("%C0%AF", Err(NotUtf8), Err(NotUtf8), Err(NotUtf8)),
        row("%E0%80%AF", Err(NotUtf8), Err(NotUtf8), Err(NotUtf8)),
        row("%ED%A0%80", Err(NotUtf8), Err(NotUtf8), Err(NotUtf8)),
        row("%FF", Err(NotUtf8), Err(NotUtf8), Err(NotUtf8)),
        row("a%2Fb", Ok("a/b"), Ok("a/b"), Err(EncodedSeparator)),
        row("a%2fb", Ok("a/b"), Ok("a/b"), Err(EncodedSeparator)),
        row("a%5Cb", Ok("a\\b"), Ok("a\\b"), Err(EncodedSeparator)),
        row("%2E%2E", Ok(".."), Ok(".."), Ok("..")),
        row("..", Ok(".."), Ok(".."), Ok("..")),
        row("caf%C3%A9", Ok("café"), Ok("café"), Ok("café")),
        row("Pat-1.x", Ok("Pat-1.x"), Ok("Pat-1.x"), Ok("Pat-1.x")),
        row("", Ok(""), Ok(""), Ok("")),
    ]
}

/// A 10 KB value: plain, and as escapes.
fn long_values() -> Vec<String> {
    vec!["x".repeat(10 * 1024), "%41".repeat(10 * 1024 / 3)]
}

/// The table, and the 10 KB values with the codec's answers.
fn every_input() -> Vec<Row> {
    let mut all = table();
    for long in long_values() {
        all.push(Row {
            form: percent::decode_form(&long),
            query: percent::decode_query(&long),
            segment: percent::decode_segment(&long),
            input: long,
        });
    }
    all
}

#[test]
fn the_codec_gives_the_table_answers() {
    for r in table() {
        let input = r.input.as_str();
        assert_eq!(percent::decode_form(input), r.form, "form {input:?}");
        assert_eq!(percent::decode_query(input), r.query, "query {input:?}");
        assert_eq!(
            percent::decode_segment(input),
            r.segment,
            "segment {input:?}"
        );
    }
    for long in long_values() {
        let decoded = percent::decode_query(&long).unwrap();
        assert!(decoded.len() >= 3_000 && decoded.bytes().all(|b| b == b'x' || b == b'A'));
        assert_eq!(percent::decode_form(&long).unwrap(), decoded);
    }
}

#[test]
fn the_token_form_parser_decodes_by_the_form_rules() {
    for Row { input, form, .. } in every_input() {
        let body = format!("grant_type=x&v={input}");
        match (Form::parse(body.as_bytes()), form) {
            (Ok(parsed), Ok(expected)) => assert_eq!(parsed.get("v"), Some(expected.as_str())),
            (Err(e), Err(_)) => assert_eq!(e, FormError::BadEncoding, "{input:?}"),
            (got, want) => panic!("{input:?}: form parser {got:?}, codec {want:?}"),
        }
    }
}

#[test]
fn the_served_search_decodes_by_the_form_rules() {
    for Row { input, form, .. } in every_input() {
        let raw = format!("code={input}");
        let got = query::decode_query(Some(&raw));
        match form {
            Ok(v) if !v.is_empty() => {
                assert_eq!(got, Ok(vec![("code".to_string(), v)]), "{input:?}");
            }
            // Refused: not validly encoded, or no value.
            _ => assert_eq!(got.map_err(|r| r.status), Err(400), "{input:?}"),
        }
        let got = query::decode_query(Some(&format!("{input}=1")));
        match percent::decode_form(&input) {
            Ok(name) if query::is_param_name(&name) => {
                assert_eq!(got, Ok(vec![(name, "1".to_string())]), "{input:?}");
            }
            _ => assert_eq!(got.map_err(|r| r.status), Err(400), "name {input:?}"),
        }
    }
}

#[test]
fn the_served_path_decodes_each_segment_on_its_own() {
    for Row { input, segment, .. } in every_input() {
        let got = serve::parse_route(&format!("/Patient/{input}"));
        match segment {
            Ok(id) if query::is_id(&id) => assert_eq!(
                got,
                Ok(Route::Read {
                    resource_type: "Patient".into(),
                    id,
                }),
                "{input:?}"
            ),
            // Not validly encoded, or not a FHIR id: never another path.
            _ => assert_eq!(got.map_err(|r| r.status), Err(400), "{input:?}"),
        }
    }
}

fn request(path: &str, query: &str) -> Request {
    let mut req = Request::insecure_test(&[]);
    req.method = "PUT".into();
    req.target = format!("{path}?{query}");
    req.path = path.into();
    req.query = Some(query.into());
    req
}

#[test]
fn the_receiver_reads_its_parameters_by_the_query_rules() {
    for Row { input, query, .. } in every_input() {
        let req = request("/fhir/Task", &format!("identifier=sys%7C{input}"));
        let got = receiver::cancel_target(&req);
        let expected = percent::decode_query(&format!("sys%7C{input}"));
        assert_eq!(expected.is_ok(), query.is_ok(), "{input:?}");
        match expected.ok().as_deref().and_then(task::search_token) {
            Some((system, value)) => {
                assert_eq!(got, Ok(Target::Identifier(system, value)), "{input:?}");
            }
            None => assert_eq!(got.map_err(|r| r.status), Err(400), "{input:?}"),
        }
        let req = request("/fhir/Task", &format!("_format={input}"));
        assert_eq!(wire::format_param(&req), query.ok(), "{input:?}");
    }
}

const BASE: &str = "https://sender.example:8443/fhir/stu3";

#[test]
fn the_receiver_builds_and_follows_urls_by_the_url_rules() {
    for Row { input, .. } in every_input() {
        let rel = format!("Patient/{input}");
        let path_rule = url::check_relative_path(&rel);
        match (task::relative_query_problem(&rel), path_rule) {
            (None, Ok(())) => {
                let joined = url::join(BASE, &rel);
                assert!(url::is_under(BASE, &joined), "{input:?} → {joined}");
            }
            (Some(problem), Err(e)) => assert_eq!(problem, e.reason(), "{input:?}"),
            // Refused for a reason of its own (the length cap).
            (Some(problem), Ok(())) => {
                assert_eq!(problem, "is too long", "{input:?}");
                assert!(rel.len() > task::MAX_QUERY_LEN);
            }
            (None, Err(e)) => panic!("{input:?}: accepted, but the URL rules say {e:?}"),
        }
        let link = format!("{BASE}/Patient/{input}");
        let followed = pull::next_link(BASE, &link);
        let expected = percent::encode_illegal(&link);
        match Url::parse(&expected) {
            Ok(u) if u.is_under(&Url::parse(BASE).unwrap()) => {
                assert_eq!(followed, Some(expected), "{input:?}");
            }
            _ => assert_eq!(followed, None, "{input:?}"),
        }
    }
}

#[test]
fn configured_and_discovered_urls_use_the_url_rules() {
    for Row { input, .. } in every_input() {
        let text = format!("https://h.example/fhir/{input}");
        let parsed = Url::parse_https(&text);
        match (crate::config::parse_https_url(&text), parsed) {
            (Ok(got), Ok(u)) => {
                assert_eq!(got, u.to_string().trim_end_matches('/'), "{input:?}");
            }
            (Err(got), Err(e)) => assert_eq!(got, format!("{text:?} {e}"), "{input:?}"),
            (got, want) => panic!("{input:?}: config {got:?}, URL parser {want:?}"),
        }
        let doc = serde_json::json!({ "token_endpoint": text }).to_string();
        match (
            messages::parse_discovery(doc.as_bytes()),
            Url::parse_https(&text),
        ) {
            (Ok(d), Ok(_)) => assert_eq!(d.token_endpoint, text),
            (Err(MessageError::BadUrl(_, got)), Err(e)) => assert_eq!(got, e, "{input:?}"),
            // A discovery member is at most 1024 bytes.
            (Err(MessageError::Malformed(_)), _) => assert!(text.len() > 1024),
            (got, want) => panic!("{input:?}: discovery {got:?}, URL parser {want:?}"),
        }
    }
}

#[test]
fn retry_after_is_read_alike_by_sender_and_receiver() {
    const NOW: i64 = 1_796_191_098;
    let cap = Duration::from_secs(900);
    let mut values: Vec<(String, Option<u64>)> = vec![
        ("120".into(), Some(120)),
        (" 7 ".into(), Some(7)),
        ("0".into(), Some(0)),
        ("99999999999".into(), Some(900)),
        ("-1".into(), None),
        ("1.5".into(), None),
        ("١٢٠".into(), None),
        (time::http_date(NOW + 60), Some(60)),
        (time::http_date(NOW - 60), Some(0)),
        (time::http_date(NOW + 86_400), Some(900)),
        ("Wednesday, 02-Dec-26 05:59:18 GMT".into(), Some(60)),
        ("Wed Dec  2 06:00:18 2026".into(), Some(120)),
    ];
    for Row { input, .. } in every_input() {
        values.push((input, None));
    }
    for (value, want) in values {
        assert_eq!(
            retry_after::parse(&value, NOW, cap.as_secs()),
            want,
            "{value:?}"
        );
        assert_eq!(
            deliver::asked_wait(Some(&value), NOW, cap),
            want,
            "sender {value:?}"
        );
        assert_eq!(
            pull::asked_wait(Some(&value), NOW),
            want.map(|w| w.min(pull::MAX_RETRY_AFTER_SECS)),
            "receiver {value:?}"
        );
    }
    assert_eq!(deliver::asked_wait(None, NOW, cap), None);
    assert_eq!(pull::asked_wait(None, NOW), None);
}
