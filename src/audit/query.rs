//! `np-agent audit --patient`, the pure part: which audit records concern a
//! patient within a date range, and how they are printed. No files here:
//! [`super::trail`] reads the days and hands each parsed line to
//! [`Query::selects`].
//!
//! Every record that names the patient is shown, whatever its action: Twiin
//! pulls (`token.issued`, `fhir.read`, `fhir.search`, `fhir.request`,
//! `pull.completed`), Tasks (`task.received`, `task.duplicate`,
//! `task.cancelled`, `notification.sent`, `cancellation.sent`), exports
//! (`export.accepted`, `export.updated`, `case.cancelled`), Mitz
//! (`mitz.received`, `mitz.duplicate`) and Zorgviewer reads
//! (`zorgviewer.read`, `zorgviewer.search`, `zorgviewer.request`).
//! Records are read leniently: a field that is absent or of another type is
//! shown as `-`, so lines of any version print.

use std::fmt;

use serde_json::Value;

use crate::ids::Bsn;
use crate::util::time;

/// What `np-agent audit` was asked: one patient, optionally a range of days
/// (both ends included).
#[derive(Debug, Clone)]
pub struct Query {
    patient: Bsn,
    from: Option<Day>,
    to: Option<Day>,
}

/// A command line `np-agent audit` refuses (exit 64). Never quotes the
/// patient value: it may be a mistyped BSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// `--patient` is not 9 digits passing the 11-test.
    Patient,
    /// `--from`/`--to` (the flag) is not a calendar date `YYYY-MM-DD`.
    Date { flag: &'static str, value: String },
    /// `--from` is after `--to`.
    Range,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Patient => {
                f.write_str("--patient must be a BSN: 9 digits that pass the 11-test")
            }
            QueryError::Date { flag, value } => {
                write!(f, "{flag} {value:?} must be a date YYYY-MM-DD")
            }
            QueryError::Range => f.write_str("--from is after --to"),
        }
    }
}

impl std::error::Error for QueryError {}

/// A calendar day `YYYY-MM-DD` that exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(String);

impl Day {
    /// Accepts `YYYY-MM-DD` naming a real date (no 2026-02-30).
    pub fn parse(text: &str) -> Option<Day> {
        let b = text.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        if !(digits(0..4) && digits(5..7) && digits(8..10)) {
            return None;
        }
        let year: i64 = text[0..4].parse().ok()?;
        let month: u32 = text[5..7].parse().ok()?;
        let day: u32 = text[8..10].parse().ok()?;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let c = time::Civil {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
        };
        // A day past the month's end rolls over into the next month.
        (time::civil(time::unix_from_civil(c)) == c).then(|| Day(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Query {
    /// Checks the command line values: the BSN (11-test), the dates and
    /// their order.
    pub fn new(patient: &str, from: Option<&str>, to: Option<&str>) -> Result<Query, QueryError> {
        let patient = Bsn::parse(patient).ok_or(QueryError::Patient)?;
        let day = |flag: &'static str, v: Option<&str>| {
            v.map(|v| {
                Day::parse(v).ok_or_else(|| QueryError::Date {
                    flag,
                    value: v.to_string(),
                })
            })
            .transpose()
        };
        let (from, to) = (day("--from", from)?, day("--to", to)?);
        if let (Some(f), Some(t)) = (&from, &to) {
            if f > t {
                return Err(QueryError::Range);
            }
        }
        Ok(Query { patient, from, to })
    }

    /// Whether the day file `name` (`YYYY-MM-DD.jsonl`) is to be read: a
    /// trail file whose day is in range. Other names are not trail files.
    pub fn covers_file(&self, name: &str) -> bool {
        name.strip_suffix(".jsonl")
            .and_then(Day::parse)
            .is_some_and(|d| self.in_range(&d))
    }

    /// Whether a parsed audit line concerns the patient within the range.
    /// With a range, the record's own `when` must fall in it too.
    pub fn selects(&self, record: &Value) -> bool {
        let patient = record.get("patient").and_then(Value::as_str);
        if patient.and_then(Bsn::parse).as_ref() != Some(&self.patient) {
            return false;
        }
        if self.from.is_none() && self.to.is_none() {
            return true;
        }
        record
            .get("when")
            .and_then(Value::as_str)
            .and_then(|w| w.get(..10))
            .and_then(Day::parse)
            .is_some_and(|d| self.in_range(&d))
    }

    /// The range as the user gave it, for messages: `""`, ` from D`,
    /// ` to D`, ` from D to D`.
    pub fn range_label(&self) -> String {
        let mut s = String::new();
        if let Some(f) = &self.from {
            s.push_str(&format!(" from {}", f.as_str()));
        }
        if let Some(t) = &self.to {
            s.push_str(&format!(" to {}", t.as_str()));
        }
        s
    }

    fn in_range(&self, d: &Day) -> bool {
        self.from.as_ref().is_none_or(|f| d >= f) && self.to.as_ref().is_none_or(|t| d <= t)
    }
}

/// One record as printed: the fields a reader asks "who saw what, when" of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub when: String,
    pub partner: String,
    pub organisation: String,
    pub user: String,
    pub action: String,
    pub object: String,
    pub outcome: String,
    pub results: String,
    pub resources: String,
}

/// Column headings, in order; `RESOURCES` is last and not padded.
pub const HEADINGS: [&str; 9] = [
    "TIME",
    "PARTNER",
    "ORGANISATION",
    "USER/ROLE",
    "ACTION",
    "OBJECT/QUERY",
    "OUTCOME",
    "RESULTS",
    "RESOURCES",
];

/// A column wider than this is not padded further: one long query overflows
/// its own line instead of pushing every other line right.
const MAX_PAD: usize = 48;

impl Row {
    /// Reads a parsed audit line. Absent or mistyped fields show as `-`.
    pub fn of(record: &Value) -> Row {
        let text = |k: &str| record.get(k).and_then(Value::as_str).map(printable);
        let number = |k: &str| record.get(k).and_then(Value::as_u64);
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());

        let organisation = text("who_org").or_else(|| text("who_ura").map(|u| format!("ura:{u}")));
        let user = match (text("who_user"), text("who_role")) {
            (Some(u), Some(r)) => format!("{u}/{r}"),
            (Some(u), None) => u,
            (None, Some(r)) => format!("-/{r}"),
            (None, None) => "-".into(),
        };
        let mut outcome = or_dash(text("outcome"));
        if let Some(s) = number("status") {
            outcome.push_str(&format!(" {s}"));
        }
        if let Some(c) = text("consent") {
            outcome.push_str(&format!(" consent={c}"));
            if let Some(src) = text("consent_source") {
                outcome.push_str(&format!("/{src}"));
            }
        }
        let array: Option<Vec<String>> = record
            .get("resources")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(printable).collect());
        let results = number("results").or_else(|| array.as_ref().map(|a| a.len() as u64));
        let listed = array.unwrap_or_default();
        let mut resources = listed.join(" ");
        // A list cut at its bound: `results` counts them all.
        if let Some(more) = results
            .and_then(|t| t.checked_sub(listed.len() as u64))
            .filter(|m| *m > 0 && !listed.is_empty())
        {
            resources.push_str(&format!(" (+{more} more)"));
        }
        Row {
            when: or_dash(text("when")),
            partner: or_dash(text("partner")),
            organisation: or_dash(organisation),
            user,
            action: or_dash(text("action")),
            object: or_dash(text("query").or_else(|| text("object"))),
            outcome,
            results: results.map_or_else(|| "-".into(), |n| n.to_string()),
            resources: if resources.is_empty() {
                "-".into()
            } else {
                resources
            },
        }
    }

    fn cells(&self) -> [&str; 9] {
        [
            &self.when,
            &self.partner,
            &self.organisation,
            &self.user,
            &self.action,
            &self.object,
            &self.outcome,
            &self.results,
            &self.resources,
        ]
    }
}

/// The plain output: a heading and one aligned line per row, in the order
/// given (the caller sorts by time). Empty rows give an empty string.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths = HEADINGS.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(cell.chars().count().min(MAX_PAD));
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 9]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            if i + 1 < cells.len() {
                let pad = w.saturating_sub(cell.chars().count());
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(HEADINGS);
    for row in rows {
        line(row.cells());
    }
    out
}

/// The `--json` output: an array of the records as written (each a JSON
/// object on one line of the trail), one a line.
pub fn json_array<'a>(records: impl IntoIterator<Item = &'a str>) -> String {
    let lines: Vec<&str> = records.into_iter().map(str::trim).collect();
    if lines.is_empty() {
        return "[]\n".into();
    }
    format!("[\n{}\n]\n", lines.join(",\n"))
}

/// A record's `when` (RFC 3339 UTC, so text order is time order), `""`
/// when it has none.
pub fn when(record: &Value) -> &str {
    record.get("when").and_then(Value::as_str).unwrap_or("")
}

/// A value safe to put on a terminal: control characters (escape
/// sequences, newlines a partner put in a header) and the invisible
/// direction and width marks that could make a line read as another become
/// `?`.
fn printable(s: &str) -> String {
    let hidden = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
    s.chars()
        .map(|c| if c.is_control() || hidden(c) { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BSN: &str = "999999151";
    const OTHER: &str = "999998286";

    fn q(from: Option<&str>, to: Option<&str>) -> Query {
        Query::new(BSN, from, to).unwrap()
    }

    #[test]
    fn the_query_checks_the_bsn_and_the_dates() {
        assert!(Query::new(BSN, None, None).is_ok());
        // 8 digits are read with a leading zero; this one then fails the 11-test.
        assert!(Query::new("99999151", None, None).is_err());
        assert!(Query::new("12345672", None, None).is_ok());
        assert_eq!(
            Query::new("999999152", None, None).unwrap_err(),
            QueryError::Patient
        );
        for bad in ["", "abc", "9999991510", "000000000"] {
            assert_eq!(
                Query::new(bad, None, None).unwrap_err(),
                QueryError::Patient,
                "{bad}"
            );
        }
        assert!(!QueryError::Patient.to_string().contains("999"));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-01-01",
            "2026/01/01",
            "2026-01-01T00:00:00Z",
            "２０２６-01-01",
        ] {
            assert!(
                matches!(
                    Query::new(BSN, Some(bad), None),
                    Err(QueryError::Date { flag: "--from", .. })
                ),
                "{bad}"
            );
            assert!(
                matches!(
                    Query::new(BSN, None, Some(bad)),
                    Err(QueryError::Date { flag: "--to", .. })
                ),
                "{bad}"
            );
        }
        assert!(Query::new(BSN, Some("2024-02-29"), Some("2024-02-29")).is_ok());
        assert!(Query::new(BSN, Some("2025-02-29"), None).is_err());
        assert_eq!(
            Query::new(BSN, Some("2026-03-02"), Some("2026-03-01")).unwrap_err(),
            QueryError::Range
        );
    }

    #[test]
    fn day_files_are_chosen_by_name_within_the_range() {
        let all = q(None, None);
        assert!(all.covers_file("2026-03-01.jsonl"));
        for not_a_day_file in ["2026-03-01.json", "notes.txt", "2026-03-32.jsonl", ".jsonl"] {
            assert!(!all.covers_file(not_a_day_file), "{not_a_day_file}");
        }
        let march = q(Some("2026-03-01"), Some("2026-03-31"));
        assert!(march.covers_file("2026-03-01.jsonl"));
        assert!(march.covers_file("2026-03-31.jsonl"));
        assert!(!march.covers_file("2026-02-28.jsonl"));
        assert!(!march.covers_file("2026-04-01.jsonl"));
        assert!(q(Some("2026-03-01"), None).covers_file("2027-01-01.jsonl"));
        assert!(!q(None, Some("2026-03-01")).covers_file("2026-03-02.jsonl"));
    }

    #[test]
    fn records_are_selected_by_patient_and_by_their_day() {
        let at = |when: &str, patient: &str| json!({"when": when, "action": "fhir.read", "outcome": "success", "patient": patient});
        let all = q(None, None);
        assert!(all.selects(&at("2026-03-01T10:00:00Z", BSN)));
        assert!(!all.selects(&at("2026-03-01T10:00:00Z", OTHER)));
        // The trail holds 9 digits; a record with the leading zero dropped is the same patient.
        let zero = Query::new("012345672", None, None).unwrap();
        assert!(zero.selects(&at("2026-03-01T10:00:00Z", "12345672")));
        // No patient, or one of another type, is not this patient.
        assert!(!all.selects(&json!({"when": "2026-03-01T10:00:00Z", "action": "token.refused"})));
        assert!(!all.selects(&json!({"when": "2026-03-01T10:00:00Z", "patient": 999999151})));
        assert!(!all.selects(&json!([BSN])));

        let march = q(Some("2026-03-01"), Some("2026-03-02"));
        assert!(march.selects(&at("2026-03-01T00:00:00Z", BSN)));
        assert!(march.selects(&at("2026-03-02T23:59:59Z", BSN)));
        assert!(!march.selects(&at("2026-02-28T23:59:59Z", BSN)));
        assert!(!march.selects(&at("2026-03-03T00:00:00Z", BSN)));
        // Within a range a record must say when it happened.
        assert!(!march.selects(&json!({"patient": BSN})));
        assert!(all.selects(&json!({"patient": BSN})));
        assert_eq!(march.range_label(), " from 2026-03-01 to 2026-03-02");
        assert_eq!(all.range_label(), "");
    }

    #[test]
    fn an_old_line_without_the_newer_fields_prints() {
        let old: Value = serde_json::from_str(
            r#"{"when":"2026-01-05T09:00:00Z","action":"fhir.search","outcome":"success","partner":"hospb","who_org":"urn:oid:2.16.528.1.1007.3.3.12345678","who_system":"hospb-client","patient":"999999151","object":"/fhir/Condition?patient=Patient/p1","request_id":"r-1","results":3}"#,
        )
        .unwrap();
        assert!(q(None, None).selects(&old));
        assert_eq!(
            Row::of(&old),
            Row {
                when: "2026-01-05T09:00:00Z".into(),
                partner: "hospb".into(),
                organisation: "urn:oid:2.16.528.1.1007.3.3.12345678".into(),
                user: "-".into(),
                action: "fhir.search".into(),
                object: "/fhir/Condition?patient=Patient/p1".into(),
                outcome: "success".into(),
                results: "3".into(),
                resources: "-".into(),
            }
        );
    }

    #[test]
    fn a_zorgviewer_record_prints_user_role_consent_status_and_resources() {
        let mut list = crate::audit::ResourceList::new();
        list.push("Patient", "p1");
        list.push("Condition", "c1");
        let event = crate::audit::Event {
            when: "2026-03-01T10:00:00Z".into(),
            action: crate::audit::ZORGVIEWER_SEARCH,
            outcome: "success",
            partner: Some("zv"),
            who_org: Some("2.16.840.1.113883.2.4.3.8"),
            who_user: Some("u-17"),
            who_role: Some("01.015"),
            patient: Some(BSN),
            query: Some("/fhir/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151"),
            consent: Some(crate::audit::ConsentDecision::Permit),
            consent_source: Some(crate::audit::ConsentSource::View),
            status: Some(200),
            ..Default::default()
        }
        .returned(&list);
        let value = serde_json::to_value(&event).unwrap();
        let row = Row::of(&value);
        assert_eq!(row.user, "u-17/01.015");
        assert_eq!(row.object, event.query.unwrap());
        assert_eq!(row.outcome, "success 200 consent=permit/view");
        assert_eq!(row.results, "2");
        assert_eq!(row.resources, "Patient/p1 Condition/c1");

        // A refusal by consent: status 200, nothing returned.
        let refused = json!({"when": "t", "action": "zorgviewer.search", "outcome": "refused", "status": 200,
            "consent": "deny", "resources": [], "who_ura": "12345678", "who_role": "01.015"});
        let row = Row::of(&refused);
        assert_eq!(row.outcome, "refused 200 consent=deny");
        assert_eq!((row.results.as_str(), row.resources.as_str()), ("0", "-"));
        assert_eq!(row.organisation, "ura:12345678");
        assert_eq!(row.user, "-/01.015");
    }

    #[test]
    fn a_long_resource_list_shows_how_many_were_left_out() {
        let mut list = crate::audit::ResourceList::new();
        for i in 0..crate::audit::MAX_LISTED_RESOURCES + 500 {
            list.push("Observation", &format!("o{i}"));
        }
        assert_eq!(list.total(), 1500);
        assert_eq!(list.listed().len(), crate::audit::MAX_LISTED_RESOURCES);
        let event = crate::audit::Event {
            action: crate::audit::ZORGVIEWER_SEARCH,
            ..Default::default()
        }
        .returned(&list);
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["results"], 1500);
        assert_eq!(value["resources"].as_array().unwrap().len(), 1000);
        assert_eq!(value["resources"][999], "Observation/o999");
        let row = Row::of(&value);
        assert_eq!(row.results, "1500");
        assert!(row.resources.starts_with("Observation/o0 Observation/o1 "));
        assert!(
            row.resources.ends_with(" Observation/o999 (+500 more)"),
            "{}",
            &row.resources[row.resources.len() - 60..]
        );
        // A record with a count but no list (a `fhir.search` line) adds nothing.
        assert_eq!(Row::of(&json!({"results": 7})).resources, "-");
    }

    #[test]
    fn mistyped_fields_and_control_characters_are_harmless() {
        let row = Row::of(
            &json!({"when": 5, "partner": ["x"], "who_user": "eve\u{1b}[2J\nroot", "status": "200", "resources": "Patient/p1"}),
        );
        assert_eq!(row.when, "-");
        assert_eq!(row.partner, "-");
        assert_eq!(row.user, "eve?[2J?root");
        let row = Row::of(&json!({"object": "Patient/\u{202e}1p", "who_org": "é-org"}));
        assert_eq!(
            (row.object.as_str(), row.organisation.as_str()),
            ("Patient/?1p", "é-org")
        );
        assert_eq!(row.outcome, "-");
        assert_eq!((row.results.as_str(), row.resources.as_str()), ("-", "-"));
        assert_eq!(Row::of(&json!("not an object")), Row::of(&json!({})));
    }

    #[test]
    fn the_table_aligns_columns_and_lets_long_values_overflow() {
        let a = Row {
            when: "2026-03-01T10:00:00Z".into(),
            partner: "zv".into(),
            organisation: "org".into(),
            user: "u/r".into(),
            action: "zorgviewer.read".into(),
            object: "Patient/p1".into(),
            outcome: "success 200".into(),
            results: "1".into(),
            resources: "Patient/p1".into(),
        };
        let b = Row {
            partner: "hospital-b".into(),
            object: "x".repeat(100),
            resources: "-".into(),
            ..a.clone()
        };
        let out = table(&[a, b]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0]
                .starts_with("TIME                  PARTNER     ORGANISATION  USER/ROLE  ACTION"),
            "{out}"
        );
        assert!(lines[0].ends_with("RESULTS  RESOURCES"), "{out}");
        // Columns before the long one line up.
        let col = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(col(lines[0], "ACTION"), col(lines[1], "zorgviewer.read"));
        assert_eq!(
            col(lines[1], "zorgviewer.read"),
            col(lines[2], "zorgviewer.read")
        );
        assert_eq!(col(lines[0], "OBJECT/QUERY"), col(lines[2], "xxx"));
        // The long value is whole, and pushes only its own line.
        assert!(lines[2].contains(&"x".repeat(100)));
        assert_eq!(col(lines[0], "OUTCOME"), col(lines[1], "success 200"));
        assert!(col(lines[2], "success 200") > col(lines[1], "success 200"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        assert_eq!(table(&[]), "");
    }

    #[test]
    fn json_output_is_an_array_of_the_records_as_written() {
        let written = [
            r#"{"when":"2026-03-01T08:00:00Z","action":"a","patient":"999999151","extra":{"kept":true}}"#,
            "{\"when\":\"2026-03-02T08:00:00Z\",\"action\":\"b\"}\r",
        ];
        let out = json_array(written);
        assert!(out.contains(written[0]), "{out}");
        let back: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0]["extra"]["kept"], true);
        assert_eq!(back[1]["action"], "b");
        assert_eq!(out.lines().count(), 4);
        assert_eq!(json_array([]), "[]\n");
        assert_eq!(
            when(&json!({"when": "2026-03-01T08:00:00Z"})),
            "2026-03-01T08:00:00Z"
        );
        assert_eq!(when(&json!({"when": 1})), "");
    }
}
