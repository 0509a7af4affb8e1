//! The Mitz subscription (sans-IO, spec §8): the `mitz-Subscription` we
//! `POST` to `<URL>/abonnementen/fhir/Subscription` so that Mitz notifies us
//! about a patient's consent, what Mitz's answer means, and the spool item
//! that carries the work. [`super::subscribe`] does the I/O.
//!
//! The Subscription (FHIR R4, profile [`PROFILE`]):
//!
//! | element | value |
//! |---|---|
//! | `status` | `requested` |
//! | `reason` | `OTV` |
//! | `criteria` | `Consent?_query=otv&patientid=<BSN>&providerid=<NP_ORG_URA>&providertype=<NP_ORG_CATEGORY>` |
//! | `channel` | `type` `rest-hook`, `endpoint` `NP_MITZ_NOTIFY_URL`, `payload` `application/fhir+json` |
//! | `extension` | [`GATEWAY_SYSTEM`] `valueOid` `urn:oid:<NP_HOME_COMMUNITY_ID>`, [`SOURCE_SYSTEM`] `valueOid` `urn:oid:<NP_SOURCE_ID>`; each left out when its key is unset |
//!
//! Mitz answers `201` with the new id in `Location`, or `202` when this
//! connector already subscribed the patient (with its id); both end the
//! work ([`Verdict::Subscribed`]). `400`, `401`, `404`, `422` (and any other
//! 3xx/4xx) end it as refused; `408`, `429`, `5xx` are tried again, after
//! `Retry-After` when Mitz sends one. Reasons name the partner, the endpoint,
//! the status and the OperationOutcome's text with every long number
//! withheld, so no BSN reaches a log.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;
use crate::ids::{Bsn, Oid};
use crate::util::{b64, percent, retry_after};

/// Where Subscriptions go, under the partner's `URL`.
pub const PATH: &str = "/abonnementen/fhir/Subscription";
/// The profile of the Subscription Mitz accepts.
pub const PROFILE: &str = "http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription";
/// Extension naming our gateway (home community).
pub const GATEWAY_SYSTEM: &str = "http://fhir.nl/StructureDefinition/GatewaySystem";
/// Extension naming our source system.
pub const SOURCE_SYSTEM: &str = "http://fhir.nl/StructureDefinition/SourceSystem";
/// `Subscription.reason`: the "opvragen en tonen van gegevens" use case.
pub const REASON: &str = "OTV";
/// The format we ask notifications in (and send the Subscription in).
pub const FHIR_JSON: &str = "application/fhir+json";
/// The spool item kind of one subscription to make.
pub const KIND_SUBSCRIBE: &str = "mitz-subscribe";

/// Why a subscription was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The hospital published a record of the patient to a Zorgviewer partner.
    Published,
    /// `np-agent mitz subscribe`.
    Backfill,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Published => "published",
            Origin::Backfill => "backfill",
        }
    }
}

/// What a `mitz-subscribe` spool item carries; the item's partner is the
/// Mitz partner to subscribe at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeBody {
    /// The BSN (the spool is state, not a log).
    pub patient: String,
    pub origin: Origin,
}

impl SubscribeBody {
    /// The item body: `{"patient": "<BSN>", "origin": "published"|"backfill"}`.
    pub fn to_value(&self) -> Value {
        json!({"patient": self.patient, "origin": self.origin.label()})
    }
}

/// The spool item id of subscribing `patient` at Mitz partner `partner`:
/// `mitz-sub-<32 hex>`, the same for the same pair whoever queues it (the
/// outbox, again after a crash, or `np-agent mitz subscribe`), so the work
/// is queued once. The hash keeps the BSN out of the name.
pub fn item_id(partner: &str, patient: &Bsn) -> String {
    format!("mitz-sub-{}", pair_hash(partner, patient))
}

/// The name-safe hash of a (partner, patient) pair, also the file name of
/// its recorded subscription.
pub fn pair_hash(partner: &str, patient: &Bsn) -> String {
    b64::sha256_hex32(format!("{partner}|{}", patient.as_str()).as_bytes())
}

/// Our side of every Subscription, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber<'a> {
    /// `NP_ORG_URA`: the `providerid`.
    pub ura: &'a str,
    /// `NP_ORG_CATEGORY`: the `providertype`.
    pub category: &'a str,
    /// `NP_MITZ_NOTIFY_URL`: the channel endpoint.
    pub endpoint: &'a str,
    /// `NP_HOME_COMMUNITY_ID`.
    pub gateway: Option<&'a Oid>,
    /// `NP_SOURCE_ID`.
    pub source: Option<&'a Oid>,
}

impl<'a> Subscriber<'a> {
    /// Our side from `config`; `None` without `NP_ORG_CATEGORY` (which the
    /// configuration requires as soon as a Mitz partner has a `URL`).
    pub fn of(config: &'a Config) -> Option<Subscriber<'a>> {
        Some(Subscriber {
            ura: &config.org_ura,
            category: config.org_category.as_deref()?,
            endpoint: &config.mitz_notify_url,
            gateway: config.home_community_id.as_ref(),
            source: config.source_id.as_ref(),
        })
    }

    /// `Consent?_query=otv&patientid=<BSN>&providerid=<URA>&providertype=<category>`,
    /// each value percent-encoded as a query value.
    pub fn criteria(&self, patient: &Bsn) -> String {
        let q = percent::encode_query;
        format!(
            "Consent?_query=otv&patientid={}&providerid={}&providertype={}",
            q(patient.as_str()),
            q(self.ura),
            q(self.category)
        )
    }

    /// The `mitz-Subscription` for `patient`.
    pub fn subscription(&self, patient: &Bsn) -> Value {
        let extension: Vec<Value> = [(GATEWAY_SYSTEM, self.gateway), (SOURCE_SYSTEM, self.source)]
            .into_iter()
            .filter_map(|(url, oid)| Some(json!({"url": url, "valueOid": oid?.urn()})))
            .collect();
        let mut s = json!({
            "resourceType": "Subscription",
            "meta": {"profile": [PROFILE]},
            "status": "requested",
            "reason": REASON,
            "criteria": self.criteria(patient),
            "channel": {
                "type": "rest-hook",
                "endpoint": self.endpoint,
                "payload": FHIR_JSON,
            },
        });
        if !extension.is_empty() {
            s["extension"] = Value::Array(extension);
        }
        s
    }
}

/// Mitz's answer, as far as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub location: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Subscribed: `201` (new), `202` (already subscribed) or another 2xx,
    /// with the id Mitz gave when it gave one.
    Subscribed { status: u16, id: Option<String> },
    /// Refused: trying again will not help.
    Refused { reason: String },
    /// Not now: try again, after `retry_after` seconds when Mitz asked.
    Retry {
        reason: String,
        retry_after: Option<u64>,
    },
}

/// What `POST <url>` to partner `partner` answered means, at `now`, a
/// `Retry-After` honoured up to `cap_secs` (`NP_RETRY_CAP`).
pub fn judge(partner: &str, url: &str, answer: &Answer<'_>, now: i64, cap_secs: u64) -> Verdict {
    let status = answer.status;
    if (200..300).contains(&status) {
        let from_location = || answer.location.and_then(id_from_location);
        let from_body = || id_from_body(answer.body);
        let id = if status == 202 {
            from_body().or_else(from_location)
        } else {
            from_location().or_else(from_body)
        };
        return Verdict::Subscribed { status, id };
    }
    let mut reason = format!("partner {partner}: POST {url} answered {status}");
    if let Some(outcome) = outcome_text(answer.body) {
        reason.push_str(&format!(" ({outcome})"));
    }
    if matches!(status, 408 | 429) || (500..600).contains(&status) {
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

/// The Subscription id in a `Location`: the path segment after
/// `Subscription` (`…/Subscription/<id>` or `…/Subscription/<id>/_history/<v>`,
/// absolute or relative).
pub fn id_from_location(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().rposition(|s| *s == "Subscription")?;
    let id = segments.get(at + 1)?;
    is_fhir_id(id).then(|| id.to_string())
}

/// The `id` of a Subscription in an answer body.
fn id_from_body(body: &[u8]) -> Option<String> {
    if body.is_empty() || body.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "Subscription" {
        return None;
    }
    let id = v.get("id")?.as_str()?;
    is_fhir_id(id).then(|| id.to_string())
}

/// FHIR `id`: 1–64 of `A-Z a-z 0-9 - .`.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `OperationOutcome <code>: <text>` of an error body: the first issue's
/// code when it is a plain code, and the issues' `diagnostics` (or
/// `details.text`) joined, control characters blanked, every run of eight
/// or more digits withheld (a BSN, or an OID that ends in one), at most 300
/// characters. `None` when the body is not an OperationOutcome.
pub fn outcome_text(body: &[u8]) -> Option<String> {
    if body.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let issues = v.get("issue")?.as_array()?;
    let code = issues
        .first()
        .and_then(|i| i.get("code"))
        .and_then(Value::as_str)
        .filter(|c| {
            !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    let texts: Vec<&str> = issues
        .iter()
        .filter_map(|i| {
            i.get("diagnostics")
                .or_else(|| i.get("details").and_then(|d| d.get("text")))
                .and_then(Value::as_str)
        })
        .filter(|t| !t.trim().is_empty())
        .collect();
    let mut out = String::from("OperationOutcome");
    if let Some(code) = code {
        out.push(' ');
        out.push_str(code);
    }
    if !texts.is_empty() {
        out.push_str(": ");
        out.push_str(&withhold_numbers(&texts.join("; ")));
    }
    const MAX: usize = 300;
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect::<String>() + "…";
    }
    Some(out)
}

/// `text` with control characters as spaces and every run of eight or more
/// digits replaced by `<number>`.
fn withhold_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 8 {
            out.push_str("<number>");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out);
        out.push(if c.is_control() { ' ' } else { c });
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BSN: &str = "999911120";
    const NOW: i64 = 1_800_000_000;

    fn oid(s: &str) -> Oid {
        Oid::parse(s).unwrap()
    }

    fn bsn() -> Bsn {
        Bsn::parse(BSN).unwrap()
    }

    #[test]
    fn the_subscription_has_every_element_of_the_profile() {
        let (gateway, source) = (
            oid("2.16.840.1.113883.2.4.6.6.1"),
            oid("2.16.528.1.1007.3.3.87654321.2"),
        );
        let who = Subscriber {
            ura: "87654321",
            category: "Z3",
            endpoint: "https://np.hospital.example:8443/mitz/fhir",
            gateway: Some(&gateway),
            source: Some(&source),
        };
        // As sent: compact JSON, parsed back.
        let text = crate::fhir::to_json_string(&who.subscription(&bsn()));
        assert!(
            text.starts_with(r#"{"resourceType":"Subscription""#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "channel",
                "criteria",
                "extension",
                "meta",
                "reason",
                "resourceType",
                "status"
            ],
            "nothing else"
        );
        assert_eq!(v["resourceType"], "Subscription");
        assert_eq!(v["meta"], json!({"profile": [PROFILE]}));
        assert_eq!(
            PROFILE,
            "http://vzvz.nl/fhir/otv/StructureDefinition/mitz-Subscription"
        );
        assert_eq!(v["status"], "requested");
        assert_eq!(v["reason"], "OTV");
        assert_eq!(
            v["criteria"],
            "Consent?_query=otv&patientid=999911120&providerid=87654321&providertype=Z3"
        );
        assert_eq!(
            v["channel"],
            json!({
                "type": "rest-hook",
                "endpoint": "https://np.hospital.example:8443/mitz/fhir",
                "payload": "application/fhir+json"
            })
        );
        assert_eq!(
            v["extension"],
            json!([
                {"url": "http://fhir.nl/StructureDefinition/GatewaySystem",
                 "valueOid": "urn:oid:2.16.840.1.113883.2.4.6.6.1"},
                {"url": "http://fhir.nl/StructureDefinition/SourceSystem",
                 "valueOid": "urn:oid:2.16.528.1.1007.3.3.87654321.2"}
            ])
        );
        // Every element is an R4 Subscription element: it converts to R4
        // XML (by the element table) and back unchanged.
        let r4 = crate::fhir::FhirVersion::R4;
        let xml = crate::fhir::json_to_xml(&v, r4).unwrap();
        let back =
            crate::fhir::xml_to_json(xml.as_bytes(), r4, &crate::fhir::Limits::DEFAULT).unwrap();
        assert_eq!(back, v, "{xml}");
    }

    #[test]
    fn an_unset_identity_leaves_its_extension_out() {
        let source = oid("2.16.528.1.1007.3.3.87654321.2");
        let mut who = Subscriber {
            ura: "87654321",
            category: "Z3",
            endpoint: "https://np.example/mitz/fhir",
            gateway: None,
            source: Some(&source),
        };
        let v = who.subscription(&bsn());
        assert_eq!(
            v["extension"],
            json!([{"url": SOURCE_SYSTEM, "valueOid": "urn:oid:2.16.528.1.1007.3.3.87654321.2"}])
        );
        who.source = None;
        let v = who.subscription(&bsn());
        assert!(v.get("extension").is_none(), "no empty extension array");
    }

    #[test]
    fn our_side_comes_from_the_configuration() {
        let mut config = crate::config::tests_support::config();
        assert!(
            Subscriber::of(&config).is_none(),
            "no category, no subscriber"
        );
        config.org_category = Some("Z3".into());
        config.source_id = Some(oid("2.16.528.1.1007.3.3.12345678.1"));
        let who = Subscriber::of(&config).unwrap();
        assert_eq!(
            (who.ura, who.category, who.endpoint),
            (
                "12345678",
                "Z3",
                "https://np.hospital-a.example:8443/mitz/fhir"
            )
        );
        assert!(who.gateway.is_none());
        assert_eq!(
            who.source.unwrap().as_str(),
            "2.16.528.1.1007.3.3.12345678.1"
        );
    }

    #[test]
    fn item_ids_are_fixed_per_pair_and_hold_no_bsn() {
        let a = item_id("mitz", &bsn());
        assert_eq!(a, item_id("mitz", &bsn()));
        assert!(a.starts_with("mitz-sub-") && a.len() == "mitz-sub-".len() + 32);
        assert!(!a.contains(BSN));
        assert!(crate::spool::valid_id(&a));
        assert_ne!(a, item_id("mitz2", &bsn()));
        assert_ne!(a, item_id("mitz", &Bsn::parse("999999151").unwrap()));
        assert_eq!(a, format!("mitz-sub-{}", pair_hash("mitz", &bsn())));
    }

    fn answer<'a>(status: u16, location: Option<&'a str>, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status,
            location,
            retry_after: None,
            body,
        }
    }

    const URL: &str = "https://mitz.example/mitz/abonnementen/fhir/Subscription";

    fn judged(a: &Answer<'_>) -> Verdict {
        judge("mitz", URL, a, NOW, 900)
    }

    #[test]
    fn created_and_already_subscribed_both_end_it_with_the_id() {
        let loc = "https://mitz.example/mitz/abonnementen/fhir/Subscription/abc-1";
        assert_eq!(
            judged(&answer(201, Some(loc), b"")),
            Verdict::Subscribed {
                status: 201,
                id: Some("abc-1".into())
            }
        );
        // 202: the existing subscription's id from the body, else Location.
        let body = br#"{"resourceType":"Subscription","id":"old-7","status":"active"}"#;
        assert_eq!(
            judged(&answer(202, Some(loc), body)),
            Verdict::Subscribed {
                status: 202,
                id: Some("old-7".into())
            }
        );
        assert_eq!(
            judged(&answer(202, Some("Subscription/old-8/_history/2"), b"")),
            Verdict::Subscribed {
                status: 202,
                id: Some("old-8".into())
            }
        );
        // 201 without Location: the body's id; neither: subscribed, id unknown.
        assert_eq!(
            judged(&answer(201, None, body)),
            Verdict::Subscribed {
                status: 201,
                id: Some("old-7".into())
            }
        );
        assert_eq!(
            judged(&answer(201, None, b"<html/>")),
            Verdict::Subscribed {
                status: 201,
                id: None
            }
        );
        assert_eq!(
            judged(&answer(200, Some(loc), b"")),
            Verdict::Subscribed {
                status: 200,
                id: Some("abc-1".into())
            }
        );
    }

    #[test]
    fn ids_from_location() {
        for (location, id) in [
            ("https://m.example/x/Subscription/42", Some("42")),
            ("https://m.example/x/Subscription/42/", Some("42")),
            ("https://m.example/x/Subscription/42/_history/3", Some("42")),
            ("Subscription/a.b-C?x=1", Some("a.b-C")),
            ("https://m.example/x/Subscription/", None),
            ("https://m.example/x/Subscription", None),
            ("https://m.example/x/Task/42", None),
            ("https://m.example/x/Subscription/has%20space", None),
            ("", None),
        ] {
            assert_eq!(id_from_location(location).as_deref(), id, "{location}");
        }
        let long = format!("Subscription/{}", "a".repeat(65));
        assert_eq!(id_from_location(&long), None);
    }

    #[test]
    fn refusals_end_it_naming_partner_endpoint_status_and_outcome_without_a_bsn() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"patientid 999911120 unknown (urn:oid:2.16.840.1.113883.2.4.6.3.999911120)"},{"severity":"error","code":"value","details":{"text":"providertype\tZ3 not allowed"}}]}"#;
        for status in [400, 401, 403, 404, 409, 410, 422, 301] {
            let Verdict::Refused { reason } = judged(&answer(status, None, body)) else {
                panic!("{status} must be refused");
            };
            assert_eq!(
                reason,
                format!(
                    "partner mitz: POST {URL} answered {status} (OperationOutcome invalid: patientid <number> unknown (urn:oid:2.16.840.1.113883.2.4.6.3.<number>); providertype Z3 not allowed)"
                )
            );
            assert!(!reason.contains(BSN));
        }
        // A body that is no OperationOutcome adds nothing.
        assert_eq!(
            judged(&answer(404, None, b"<html>not found 999911120</html>")),
            Verdict::Refused {
                reason: format!("partner mitz: POST {URL} answered 404")
            }
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried_after_retry_after() {
        for status in [408, 429, 500, 502, 503, 504] {
            let mut a = answer(status, None, b"");
            a.retry_after = Some("7");
            assert_eq!(
                judged(&a),
                Verdict::Retry {
                    reason: format!("partner mitz: POST {URL} answered {status}"),
                    retry_after: Some(7)
                }
            );
        }
        let mut a = answer(503, None, b"");
        a.retry_after = Some("99999");
        assert!(matches!(
            judged(&a),
            Verdict::Retry {
                retry_after: Some(900),
                ..
            }
        ));
        a.retry_after = Some("soon");
        assert!(matches!(
            judged(&a),
            Verdict::Retry {
                retry_after: None,
                ..
            }
        ));
        let date = crate::util::time::http_date(NOW + 30);
        a.retry_after = Some(&date);
        assert!(matches!(
            judged(&a),
            Verdict::Retry {
                retry_after: Some(30),
                ..
            }
        ));
    }

    #[test]
    fn outcome_texts_are_bounded_and_plain() {
        assert_eq!(outcome_text(b"{}"), None);
        assert_eq!(outcome_text(br#"{"resourceType":"Subscription"}"#), None);
        assert_eq!(
            outcome_text(br#"{"resourceType":"OperationOutcome","issue":[{"code":"Not A Code"}]}"#),
            Some("OperationOutcome".into())
        );
        let long = format!(
            r#"{{"resourceType":"OperationOutcome","issue":[{{"code":"invalid","diagnostics":"{}"}}]}}"#,
            "x".repeat(1000)
        );
        let text = outcome_text(long.as_bytes()).unwrap();
        assert_eq!(text.chars().count(), 301, "{text}");
        // Seven digits stay (not a BSN); eight or more do not.
        assert_eq!(
            withhold_numbers("a 1234567 b 12345678 c"),
            "a 1234567 b <number> c"
        );
        assert_eq!(withhold_numbers("999911120"), "<number>");
        assert_eq!(withhold_numbers("x\r\ny"), "x  y");
    }

    #[test]
    fn the_spool_body_round_trips() {
        let body = SubscribeBody {
            patient: BSN.into(),
            origin: Origin::Backfill,
        };
        let v = body.to_value();
        assert_eq!(v, json!({"patient": BSN, "origin": "backfill"}));
        assert_eq!(
            v,
            serde_json::to_value(&body).unwrap(),
            "as serde writes it"
        );
        assert_eq!(serde_json::from_value::<SubscribeBody>(v).unwrap(), body);
        let published = SubscribeBody {
            origin: Origin::Published,
            ..body
        };
        assert_eq!(
            serde_json::from_value::<SubscribeBody>(published.to_value()).unwrap(),
            published
        );
    }
}
