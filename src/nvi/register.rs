//! The calls to the PRS and the NVI (sans-IO): what we send and what each
//! answer means (spec vad-prs-nvi.md section 0). [`super::work`] does the I/O.
//!
//! | call | request | done |
//! |---|---|---|
//! | evaluate | `POST <prs>/oprf/eval` `{"encryptedPersonalId","recipientOrganization","recipientScope"}` | `200 {"jwe":…}` ([`read_eval`]) |
//! | register, `fhir` | `POST <nvi>/fhir/List` ([`Referral::list`]) | `201`, `200`, `409` |
//! | register, `json` | `POST <nvi>/registrations` `{"pseudonym","oprf_key"}` | `200`, `201`, `409` |
//! | deregister, `fhir` | `DELETE <nvi>/fhir/List?subject:identifier=…&source:identifier=…` | `201` + OperationOutcome, `200`, `204` |
//! | deregister, `json` | `DELETE <nvi>/registrations?pseudonym=…&oprf_key=…` | `204`, `200` |
//! | localise, `fhir` | `GET <nvi>/fhir/List?subject:identifier=…` | `200` Bundle of List ([`read_localized`]) |
//! | localise, `json` | `POST <nvi>/localize` `{"pseudonym","oprf_key"}` | `200 [{"ura_number","source_id","created_at"}]` |
//!
//! A duplicate registration is `409` on both forms (the index's create
//! refuses an existing (pseudonym, URA, source) whichever route it came
//! by): the referral exists, so it is done. [`judge`]: `401` asks for a
//! fresh token (the caller refreshes once); `408`, `429` and `5xx` are tried
//! again, after `Retry-After` when sent; any other status is refused.
//! Reasons name the partner, the endpoint (without its query, which holds
//! the pseudonym) and the status, and quote the service's error text only
//! with every long number and every long base64 word withheld: a service
//! may echo the request, and the request holds the JWE and the blind factor.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde_json::{Value, json};

use super::oprf::{BlindFactor, Recipient};
use crate::config::NviApi;
use crate::ids::{Oid, URA_SYSTEM, URI_SYSTEM};
use crate::util::{percent, retry_after};

/// The PRS's evaluation endpoint, under its `URL`.
pub const EVAL_PATH: &str = "/oprf/eval";
/// The index's FHIR `List` endpoint, under its `URL`.
pub const LIST_PATH: &str = "/fhir/List";
/// The index's JSON registrations, under its `URL`.
pub const REGISTRATIONS_PATH: &str = "/registrations";
/// The index's JSON localisation, under its `URL`.
pub const LOCALIZE_PATH: &str = "/localize";
/// The `List` extension naming the organisation that holds the data.
pub const CUSTODIAN_EXTENSION: &str = "http://minvws.github.io/generiekefuncties-docs/StructureDefinition/nl-gf-localization-custodian";
/// The system of `List.subject.identifier`.
pub const NVI_IDENTIFIER: &str =
    "http://minvws.github.io/generiekefuncties-docs/NamingSystem/nvi-identifier";
/// `List.emptyReason`'s code system.
pub const EMPTY_REASON: &str = "http://terminology.hl7.org/CodeSystem/list-empty-reason";
pub const FHIR_JSON: &str = "application/fhir+json";
pub const JSON: &str = "application/json";

/// The `POST /oprf/eval` body for a blinded element (its wire form).
pub fn eval_body(element_wire: &str, recipient: &Recipient) -> Vec<u8> {
    json!({
        "encryptedPersonalId": element_wire,
        "recipientOrganization": recipient.organization,
        "recipientScope": recipient.scope,
    })
    .to_string()
    .into_bytes()
}

/// The JWE in a `200` (or `201`) answer of `/oprf/eval`: five base64url
/// parts. `None` when the answer is not that.
pub fn read_eval(body: &[u8]) -> Option<String> {
    if body.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let jwe = v.get("jwe")?.as_str()?;
    let parts: Vec<&str> = jwe.split('.').collect();
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (parts.len() == 5 && parts.iter().all(|p| b64url(p)) && !parts[0].is_empty())
        .then(|| jwe.to_string())
}

/// What the index is handed about a patient: the PRS's JWE and our blind
/// factor. `Debug` withholds both.
pub struct Pseudonym {
    pub jwe: String,
    pub factor: BlindFactor,
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonym(<withheld>)")
    }
}

impl Pseudonym {
    /// `List.subject.identifier.value`: base64url (with padding, as the
    /// MinVWS registration service writes it) of
    /// `{"evaluated_output":"<JWE>","blind_factor":"<factor>"}`.
    pub fn subject_value(&self) -> String {
        let inner = json!({
            "evaluated_output": self.jwe,
            "blind_factor": self.factor.to_wire(),
        });
        URL_SAFE.encode(inner.to_string())
    }

    /// The JSON form's body: `{"pseudonym":"<JWE>","oprf_key":"<factor>"}`.
    pub fn json_body(&self) -> Vec<u8> {
        json!({"pseudonym": self.jwe, "oprf_key": self.factor.to_wire()})
            .to_string()
            .into_bytes()
    }

    /// `subject:identifier=<system>|<value>`, encoded for a query.
    fn subject_query(&self) -> String {
        format!(
            "subject:identifier={}",
            percent::encode_query(&format!("{NVI_IDENTIFIER}|{}", self.subject_value()))
        )
    }
}

/// Our side of every referral.
#[derive(Debug, Clone, Copy)]
pub struct Referral<'a> {
    /// `NP_ORG_URA`: the custodian, which must equal the token's.
    pub ura: &'a str,
    /// `NP_SOURCE_ID`: the source system.
    pub source: &'a Oid,
}

impl Referral<'_> {
    /// The FHIR `List` that registers `pseudonym`.
    pub fn list(&self, pseudonym: &Pseudonym) -> Value {
        json!({
            "resourceType": "List",
            "extension": [{
                "url": CUSTODIAN_EXTENSION,
                "valueReference": {"identifier": {"system": URA_SYSTEM, "value": self.ura}},
            }],
            "status": "current",
            "mode": "working",
            "subject": {"identifier": {"system": NVI_IDENTIFIER, "value": pseudonym.subject_value()}},
            "source": {
                "identifier": {"system": URI_SYSTEM, "value": self.source.urn()},
                "type": "Device",
            },
            "emptyReason": {"coding": [{"system": EMPTY_REASON, "code": "withheld"}]},
        })
    }

    /// `source:identifier=urn:ietf:rfc:3986|urn:oid:<source>`, encoded.
    fn source_query(&self) -> String {
        format!(
            "source:identifier={}",
            percent::encode_query(&format!("{URI_SYSTEM}|{}", self.source.urn()))
        )
    }
}

/// One call to the index: method, URL, and body with its media type.
#[derive(Debug)]
pub struct Call {
    pub method: &'static str,
    pub url: String,
    /// The URL without its query, for logs and reasons (the query holds
    /// the pseudonym).
    pub endpoint: String,
    pub body: Option<(&'static str, Vec<u8>)>,
}

/// The registration of `pseudonym` at the index at `base`.
pub fn register(api: NviApi, base: &str, who: &Referral<'_>, pseudonym: &Pseudonym) -> Call {
    match api {
        NviApi::Fhir => {
            let endpoint = format!("{base}{LIST_PATH}");
            Call {
                method: "POST",
                url: endpoint.clone(),
                endpoint,
                body: Some((
                    FHIR_JSON,
                    crate::fhir::to_json_string(&who.list(pseudonym)).into_bytes(),
                )),
            }
        }
        NviApi::Json => {
            let endpoint = format!("{base}{REGISTRATIONS_PATH}");
            Call {
                method: "POST",
                url: endpoint.clone(),
                endpoint,
                body: Some((JSON, pseudonym.json_body())),
            }
        }
    }
}

/// The removal of our referral of `pseudonym` (delete by query): ours only,
/// as the index deletes only the caller's URA and, on the FHIR form, we name
/// our source; the JSON form takes the source from the token.
pub fn deregister(api: NviApi, base: &str, who: &Referral<'_>, pseudonym: &Pseudonym) -> Call {
    match api {
        NviApi::Fhir => {
            let endpoint = format!("{base}{LIST_PATH}");
            Call {
                method: "DELETE",
                url: format!(
                    "{endpoint}?{}&{}",
                    pseudonym.subject_query(),
                    who.source_query()
                ),
                endpoint,
                body: None,
            }
        }
        NviApi::Json => {
            let endpoint = format!("{base}{REGISTRATIONS_PATH}");
            Call {
                method: "DELETE",
                url: format!(
                    "{endpoint}?pseudonym={}&oprf_key={}",
                    percent::encode_query(&pseudonym.jwe),
                    percent::encode_query(&pseudonym.factor.to_wire())
                ),
                endpoint,
                body: None,
            }
        }
    }
}

/// The question which organisations hold data on `pseudonym`.
pub fn localize(api: NviApi, base: &str, pseudonym: &Pseudonym) -> Call {
    match api {
        NviApi::Fhir => {
            let endpoint = format!("{base}{LIST_PATH}");
            Call {
                method: "GET",
                url: format!("{endpoint}?{}", pseudonym.subject_query()),
                endpoint,
                body: None,
            }
        }
        NviApi::Json => {
            let endpoint = format!("{base}{LOCALIZE_PATH}");
            Call {
                method: "POST",
                url: endpoint.clone(),
                endpoint,
                body: Some((JSON, pseudonym.json_body())),
            }
        }
    }
}

/// One organisation the index knows for a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Localized {
    pub ura: String,
    pub source_id: String,
    /// As the index wrote it; `None` when it gave none (the FHIR form has
    /// no creation time unless `List.date` is sent).
    pub created_at: Option<String>,
}

/// The organisations in a `200` answer to [`localize`]; `Err` names what
/// was wrong with it.
pub fn read_localized(api: NviApi, body: &[u8]) -> Result<Vec<Localized>, String> {
    if body.len() > 16 * 1024 * 1024 {
        return Err("answer larger than 16 MiB".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(clean);
    match api {
        NviApi::Json => {
            let rows = v.as_array().ok_or("not a JSON array")?;
            rows.iter()
                .map(|r| {
                    Ok(Localized {
                        ura: text(r.get("ura_number")).ok_or("an entry without ura_number")?,
                        source_id: text(r.get("source_id")).unwrap_or_default(),
                        created_at: text(r.get("created_at")),
                    })
                })
                .collect()
        }
        NviApi::Fhir => {
            if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
                return Err("not a Bundle".into());
            }
            let entries = v.get("entry").and_then(Value::as_array);
            entries
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("resource"))
                .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("List"))
                .map(|list| {
                    let ura = list
                        .get("extension")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|x| {
                            x.get("url").and_then(Value::as_str) == Some(CUSTODIAN_EXTENSION)
                        })
                        .find_map(|x| text(x.pointer("/valueReference/identifier/value")))
                        .ok_or("a List without its custodian's URA")?;
                    Ok(Localized {
                        ura,
                        source_id: text(list.pointer("/source/identifier/value"))
                            .unwrap_or_default(),
                        created_at: text(list.get("date"))
                            .or_else(|| text(list.pointer("/meta/lastUpdated"))),
                    })
                })
                .collect()
        }
    }
}

/// A value for one line of output: no white space or control characters,
/// at most 128 characters.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(128)
        .collect()
}

/// What a call's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done (for a registration: also a duplicate).
    Done { status: u16 },
    /// `401`: our token was not good enough; a fresh one may be.
    Unauthorized { reason: String },
    /// Trying again will not help.
    Refused { reason: String },
    /// Not now: again later, after `retry_after` seconds when asked.
    Retry {
        reason: String,
        retry_after: Option<u64>,
    },
}

/// Which call was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Evaluate,
    Register,
    Deregister,
    Localize,
}

impl Op {
    fn done(self, status: u16) -> bool {
        match self {
            Op::Evaluate | Op::Localize => matches!(status, 200 | 201),
            Op::Register => matches!(status, 200 | 201 | 409),
            Op::Deregister => matches!(status, 200 | 201 | 204),
        }
    }
}

/// The answer to one call, as far as [`judge`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// What `answer` to `op` at `method endpoint` of `partner` means at `now`,
/// a `Retry-After` honoured up to `cap_secs`.
pub fn judge(
    op: Op,
    partner: &str,
    method: &str,
    endpoint: &str,
    answer: &Answer<'_>,
    now: i64,
    cap_secs: u64,
) -> Verdict {
    let status = answer.status;
    if op.done(status) {
        return Verdict::Done { status };
    }
    let mut reason = format!("partner {partner}: {method} {endpoint} answered {status}");
    if let Some(text) = error_text(answer.body) {
        reason.push_str(&format!(" ({text})"));
    }
    if status == 401 {
        Verdict::Unauthorized { reason }
    } else if matches!(status, 408 | 429) || (500..600).contains(&status) {
        Verdict::Retry {
            reason,
            retry_after: answer
                .retry_after
                .and_then(|v| retry_after::parse(v, now, cap_secs)),
        }
    } else {
        Verdict::Refused { reason }
    }
}

/// The error text of a PRS or NVI answer, safe for a log: an
/// OperationOutcome's code and texts, FastAPI's `detail` (its messages and
/// locations, never its `input`), an `{"error": …}` or a JSON string; with
/// long numbers and long base64 words withheld, at most 200 characters.
pub fn error_text(body: &[u8]) -> Option<String> {
    if body.is_empty() || body.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut parts: Vec<String> = Vec::new();
    match &v {
        Value::String(s) => parts.push(s.clone()),
        Value::Object(o) => {
            if o.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") {
                for issue in o
                    .get("issue")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(code) = issue.get("code").and_then(Value::as_str) {
                        parts.push(code.to_string());
                    }
                    if let Some(t) = issue
                        .get("diagnostics")
                        .or_else(|| issue.pointer("/details/text"))
                        .and_then(Value::as_str)
                    {
                        parts.push(t.to_string());
                    }
                }
            }
            match o.get("detail") {
                Some(Value::String(s)) => parts.push(s.clone()),
                Some(Value::Array(items)) => {
                    for item in items {
                        let loc = item
                            .get("loc")
                            .and_then(Value::as_array)
                            .map(|l| {
                                l.iter()
                                    .map(|p| match p {
                                        Value::String(s) => s.clone(),
                                        other => other.to_string(),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(".")
                            })
                            .unwrap_or_default();
                        let msg = item.get("msg").and_then(Value::as_str).unwrap_or_default();
                        parts.push(format!("{loc}: {msg}"));
                    }
                }
                _ => {}
            }
            if let Some(e) = o.get("error").and_then(Value::as_str) {
                parts.push(e.to_string());
            }
        }
        _ => {}
    }
    let joined = parts.join("; ");
    let safe = withhold(&joined);
    if safe.trim().is_empty() {
        return None;
    }
    const MAX: usize = 200;
    Some(if safe.chars().count() > MAX {
        safe.chars().take(MAX).collect::<String>() + "…"
    } else {
        safe
    })
}

/// `text` with control characters as spaces, every run of eight or more
/// digits as `<number>` and every word of twenty or more base64url
/// characters as `<withheld>`.
fn withhold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let digits = word.bytes().all(|b| b.is_ascii_digit());
        if digits && word.len() >= 8 {
            out.push_str("<number>");
        } else if !digits && word.len() >= 20 {
            out.push_str("<withheld>");
        } else {
            // Shorter words may still end in a number that is long.
            out.push_str(&withhold_digits(word));
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut word, &mut out);
    out
}

fn withhold_digits(word: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in word.chars() {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() >= 8 { "<number>" } else { &run });
        run.clear();
        out.push(c);
    }
    out.push_str(if run.len() >= 8 { "<number>" } else { &run });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudonym() -> Pseudonym {
        let x = super::super::oprf::input(
            &crate::ids::Bsn::parse("999999151").unwrap(),
            &Recipient::oin("00000099000000001000", "nvi"),
        )
        .unwrap();
        let b = super::super::oprf::blind(&x, [5u8; 64]).unwrap();
        Pseudonym {
            jwe: "eyJhbGciOiJSU0EtT0FFUCJ9.a2V5.aXY.Y2lwaGVy.dGFn".into(),
            factor: b.factor,
        }
    }

    fn source() -> Oid {
        Oid::parse("2.16.528.1.1007.3.3.87654321.1").unwrap()
    }

    #[test]
    fn the_list_has_the_custodian_subject_and_source_of_the_poc() {
        let p = pseudonym();
        let src = source();
        let who = Referral {
            ura: "87654321",
            source: &src,
        };
        let list = who.list(&p);
        assert_eq!(list["extension"][0]["url"], CUSTODIAN_EXTENSION);
        assert_eq!(
            list["extension"][0]["valueReference"]["identifier"],
            json!({"system": URA_SYSTEM, "value": "87654321"})
        );
        assert_eq!(list["subject"]["identifier"]["system"], NVI_IDENTIFIER);
        assert_eq!(
            list["source"]["identifier"],
            json!({"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.528.1.1007.3.3.87654321.1"})
        );
        assert_eq!(list["status"], "current");
        assert_eq!(list["mode"], "working");
        assert_eq!(list["emptyReason"]["coding"][0]["code"], "withheld");
        // The subject decodes as the index decodes it.
        let value = list["subject"]["identifier"]["value"].as_str().unwrap();
        let inner: Value = serde_json::from_slice(&URL_SAFE.decode(value).unwrap()).unwrap();
        assert_eq!(inner["evaluated_output"], p.jwe);
        assert_eq!(inner["blind_factor"], p.factor.to_wire());
    }

    #[test]
    fn calls_of_both_forms() {
        let p = pseudonym();
        let src = source();
        let who = Referral {
            ura: "87654321",
            source: &src,
        };
        let c = register(NviApi::Json, "https://nvi", &who, &p);
        assert_eq!(
            (c.method, c.url.as_str()),
            ("POST", "https://nvi/registrations")
        );
        let body: Value = serde_json::from_slice(&c.body.unwrap().1).unwrap();
        assert_eq!(
            body,
            json!({"pseudonym": p.jwe, "oprf_key": p.factor.to_wire()})
        );
        let d = deregister(NviApi::Fhir, "https://nvi", &who, &p);
        assert_eq!(d.method, "DELETE");
        assert_eq!(d.endpoint, "https://nvi/fhir/List");
        assert!(d.url.starts_with("https://nvi/fhir/List?subject:identifier=http://minvws.github.io/generiekefuncties-docs/NamingSystem/nvi-identifier%7C"));
        assert!(d.url.contains(
            "&source:identifier=urn:ietf:rfc:3986%7Curn:oid:2.16.528.1.1007.3.3.87654321.1"
        ));
        let l = localize(NviApi::Fhir, "https://nvi", &p);
        assert_eq!(l.method, "GET");
        assert!(!l.url.contains("source"), "localisation asks every source");
        let l = localize(NviApi::Json, "https://nvi", &p);
        assert_eq!((l.method, l.url.as_str()), ("POST", "https://nvi/localize"));
        let dj = deregister(NviApi::Json, "https://nvi", &who, &p);
        assert!(
            dj.url
                .starts_with("https://nvi/registrations?pseudonym=eyJ")
        );
        assert!(format!("{p:?}").contains("withheld"));
    }

    #[test]
    fn answers() {
        let j = |op, status, body: &str| {
            judge(
                op,
                "nvi",
                "POST",
                "https://nvi/registrations",
                &Answer {
                    status,
                    retry_after: Some("7"),
                    body: body.as_bytes(),
                },
                0,
                900,
            )
        };
        assert_eq!(j(Op::Register, 201, ""), Verdict::Done { status: 201 });
        assert_eq!(j(Op::Register, 200, ""), Verdict::Done { status: 200 });
        assert_eq!(
            j(Op::Register, 409, "\"Record already exists\""),
            Verdict::Done { status: 409 }
        );
        assert_eq!(j(Op::Deregister, 204, ""), Verdict::Done { status: 204 });
        assert_eq!(j(Op::Deregister, 201, ""), Verdict::Done { status: 201 });
        assert!(matches!(
            j(Op::Deregister, 409, ""),
            Verdict::Refused { .. }
        ));
        assert!(matches!(
            j(Op::Register, 401, ""),
            Verdict::Unauthorized { .. }
        ));
        for s in [400, 403, 404, 422] {
            assert!(
                matches!(j(Op::Register, s, ""), Verdict::Refused { .. }),
                "{s}"
            );
        }
        for s in [408, 429, 500, 502, 503] {
            match j(Op::Register, s, "") {
                Verdict::Retry { retry_after, .. } => assert_eq!(retry_after, Some(7)),
                v => panic!("{s}: {v:?}"),
            }
        }
        match j(
            Op::Register,
            422,
            r#"{"detail":[{"loc":["body","pseudonym"],"msg":"bad value","input":"eyJhbGciOiJSU0EtT0FFUCJ9.aaaaaaaaaaaaaaaaaaaaaaa"}]}"#,
        ) {
            Verdict::Refused { reason } => {
                assert_eq!(
                    reason,
                    "partner nvi: POST https://nvi/registrations answered 422 (body.pseudonym: bad value)"
                );
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn error_texts_withhold_what_may_be_echoed() {
        let t = error_text(br#"{"resourceType":"OperationOutcome","issue":[{"code":"invalid","diagnostics":"Invalid pseudonym eyJldmFsdWF0ZWRfb3V0cHV0IjoiSldFX0ZST01 for 999999151"}]}"#).unwrap();
        assert_eq!(t, "invalid; Invalid pseudonym <withheld> for <number>");
        assert_eq!(
            error_text(br#"{"error":"No organization found for this OIN"}"#).unwrap(),
            "No organization found for this OIN"
        );
        assert_eq!(error_text(b"not json"), None);
        assert_eq!(error_text(b""), None);
        assert_eq!(withhold("a999999151b"), "a<number>b");
    }

    #[test]
    fn the_eval_answer_is_a_compact_jwe() {
        assert_eq!(
            read_eval(br#"{"jwe":"eyJh.a.b.c.d"}"#).as_deref(),
            Some("eyJh.a.b.c.d")
        );
        assert_eq!(read_eval(br#"{"jwe":"eyJh.a.b.c"}"#), None);
        assert_eq!(read_eval(br#"{"jwe":"eyJh.a.b.c.d e"}"#), None);
        assert_eq!(read_eval(br#"{"error":"x"}"#), None);
    }

    #[test]
    fn localised_organisations_of_both_forms() {
        let json = br#"[{"ura_number":"87654321","source_id":"2.16.528.1","created_at":"2026-12-01T10:00:00"}]"#;
        assert_eq!(
            read_localized(NviApi::Json, json).unwrap(),
            vec![Localized {
                ura: "87654321".into(),
                source_id: "2.16.528.1".into(),
                created_at: Some("2026-12-01T10:00:00".into())
            }]
        );
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "List", "extension": [{"url": CUSTODIAN_EXTENSION,
              "valueReference": {"identifier": {"system": URA_SYSTEM, "value": "11112222"}}}],
              "source": {"identifier": {"system": "x", "value": "urn:oid:1.2.3"}}}},
            {"resource": {"resourceType": "OperationOutcome"}}
        ]});
        let found = read_localized(NviApi::Fhir, bundle.to_string().as_bytes()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ura, "11112222");
        assert_eq!(found[0].source_id, "urn:oid:1.2.3");
        assert_eq!(found[0].created_at, None);
        assert!(read_localized(NviApi::Fhir, b"[]").is_err());
        assert!(read_localized(NviApi::Json, br#"[{"source_id":"x"}]"#).is_err());
    }
}
