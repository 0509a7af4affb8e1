//! Query strings: percent-decoding, and the validated search a request asks for.
//!
//! Everything here is strict: an unknown parameter, a modifier, a chain, a
//! malformed value, a `_sort` key that is not a date parameter of the type or
//! an `_include` we do not serve is refused with 400, and a parameter that
//! names a patient other than the case's with 403. A search is parsed the same
//! way whether it comes from the partner's query or back out of one of our
//! page links, so a page link can never widen what it reads, and its pages
//! keep the order of the first one.

use super::params::{self, DateDef, ParamDef, ParamKind};
use super::wire::IssueType;
use crate::fhir::Refusal;
use crate::ids::BSN_SYSTEM;
use crate::util::percent;

/// Longest raw query we read.
const MAX_QUERY: usize = 16 * 1024;
/// Most parameters in one query.
const MAX_PARAMS: usize = 64;
/// Most comma-separated values in one parameter.
const MAX_VALUES: usize = 64;
/// Most values in all parameters together (bounds the work of one search).
const MAX_TOTAL_VALUES: usize = 256;
/// Most `_include` parameters.
const MAX_INCLUDES: usize = 16;
/// Longest parameter name.
const MAX_NAME: usize = 64;
/// `_count` when none is given, and the most we return on one page.
pub(crate) const DEFAULT_COUNT: usize = 50;
pub(crate) const MAX_COUNT: usize = 200;
/// Largest `max` of `$lastn`.
const MAX_LASTN: usize = 1000;

/// One decoded `name=value` pair.
pub(crate) type Param = (String, String);

/// Splits and percent-decodes a raw query by the form rules
/// ([`percent::decode_form`]: `+` is a space, as servlet containers read
/// FHIR searches). A malformed escape, text that is not UTF-8 and control
/// characters are refused with 400.
pub(crate) fn decode_query(raw: Option<&str>) -> Result<Vec<Param>, Refusal> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    if raw.len() > MAX_QUERY {
        return Err(bad("the query is too long"));
    }
    let mut out = Vec::new();
    for (name, value) in percent::split_pairs(raw) {
        if out.len() == MAX_PARAMS {
            return Err(bad("too many query parameters"));
        }
        let name = percent::decode_form(name)
            .ok()
            .filter(|n| is_param_name(n))
            .ok_or_else(|| bad("a parameter name is not valid"))?;
        let value = percent::decode_form(value)
            .map_err(|_| bad("the value is not validly encoded").about(&name))?;
        if value.is_empty() {
            return Err(bad("the parameter has no value").about(&name));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// What a search request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `GET [base]/<Type>?…`
    Search,
    /// `GET [base]/Observation/$lastn?…`
    LastN,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Search => "search",
            Op::LastN => "lastn",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        match name {
            "search" => Some(Op::Search),
            "lastn" => Some(Op::LastN),
            _ => None,
        }
    }
}

/// A validated search.
#[derive(Debug, Clone)]
pub(crate) struct Search {
    pub resource_type: String,
    pub op: Op,
    /// Every filter must match (AND); inside one, any value (OR).
    pub filters: Vec<Filter>,
    pub includes: Vec<Include>,
    /// Page size (`_count`, capped at [`MAX_COUNT`]).
    pub count: usize,
    /// `$lastn` `max`: results per code.
    pub max: usize,
    /// `_sort` keys, most significant first (empty: Bundle order).
    pub sort: Vec<SortKey>,
}

/// One `_sort` key: a date parameter, ascending or (`-name`) descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SortKey {
    pub def: &'static DateDef,
    pub descending: bool,
}

/// One search parameter with its values.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    Id(Vec<String>),
    /// `_profile`: `meta.profile` is one of these.
    Profile(Vec<Canonical>),
    Token(&'static ParamDef, Vec<TokenValue>),
    Reference(&'static ParamDef, Vec<RefValue>),
}

/// Which system a token value asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SystemSel {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    Absent,
    /// `system|code` or `system|`.
    Is(String),
}

/// A token search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenValue {
    pub system: SystemSel,
    /// `None` for `system|` (any code in the system).
    pub code: Option<String>,
}

/// A `_profile` value: a canonical URL, with `|version` or without (then
/// any version of it matches, as FHIR compares canonicals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Canonical {
    pub url: String,
    pub version: Option<String>,
}

impl Canonical {
    /// A canonical as written in a resource (`url` or `url|version`).
    pub fn parse(text: &str) -> Canonical {
        match text.split_once('|') {
            Some((url, version)) => Canonical {
                url: url.to_string(),
                version: Some(version.to_string()),
            },
            None => Canonical {
                url: text.to_string(),
                version: None,
            },
        }
    }

    /// True when this search value matches the canonical `declared`.
    pub fn matches(&self, declared: &Canonical) -> bool {
        self.url == declared.url
            && self
                .version
                .as_ref()
                .is_none_or(|v| declared.version.as_ref() == Some(v))
    }
}

/// A reference search value: `Type/id` or a bare `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefValue {
    pub resource_type: Option<String>,
    pub id: String,
}

/// An `_include` (`Type:param` or `Type:param:Target`).
#[derive(Debug, Clone)]
pub(crate) struct Include {
    pub def: &'static ParamDef,
    pub target: Option<String>,
}

/// What a search must stay within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The case's Patient id.
    pub patient_id: &'a str,
    /// The grant's BSN.
    pub bsn: &'a str,
    /// Our FHIR base (absolute references into it are read as relative).
    pub base_url: &'a str,
}

/// Validates the parameters of a search of `resource_type` (`_format` and
/// `_page` already taken out by the caller).
pub(crate) fn parse_search(
    resource_type: &str,
    op: Op,
    params: &[Param],
    binding: &Binding<'_>,
) -> Result<Search, Refusal> {
    let mut search = Search {
        resource_type: resource_type.to_string(),
        op,
        filters: Vec::new(),
        includes: Vec::new(),
        count: DEFAULT_COUNT,
        max: 1,
        sort: Vec::new(),
    };
    let mut total_values = 0usize;
    let mut seen_count = false;
    let mut seen_max = false;
    let mut seen_sort = false;
    for (name, value) in params {
        match name.as_str() {
            "_count" => {
                if std::mem::replace(&mut seen_count, true) {
                    return Err(bad("given more than once").about(name));
                }
                search.count = parse_number(name, value)?.min(MAX_COUNT);
            }
            "max" if op == Op::LastN => {
                if std::mem::replace(&mut seen_max, true) {
                    return Err(bad("given more than once").about(name));
                }
                let max = parse_number(name, value)?;
                if !(1..=MAX_LASTN).contains(&max) {
                    return Err(bad("must be a whole number from 1 to 1000").about(name));
                }
                search.max = max;
            }
            "_include" => {
                if search.includes.len() == MAX_INCLUDES {
                    return Err(bad("too many _include parameters"));
                }
                search.includes.push(parse_include(resource_type, value)?);
            }
            "_revinclude" => {
                return Err(unsupported("_revinclude is not supported"));
            }
            "_sort" => {
                if std::mem::replace(&mut seen_sort, true) {
                    return Err(bad("given more than once").about(name));
                }
                if op == Op::LastN {
                    return Err(
                        unsupported("$lastn has its own order and takes no _sort").about(name)
                    );
                }
                search.sort = split_values(name, value)?
                    .iter()
                    .map(|key| parse_sort_key(resource_type, key))
                    .collect::<Result<_, _>>()?;
            }
            "_profile" => {
                let values = split_values(name, value)?;
                total_values += values.len();
                if total_values > MAX_TOTAL_VALUES {
                    return Err(bad("too many search values in one request"));
                }
                let profiles = values
                    .iter()
                    .map(|v| parse_canonical(name, v))
                    .collect::<Result<Vec<_>, _>>()?;
                if search.filters.len() == MAX_PARAMS {
                    return Err(bad("too many search parameters"));
                }
                search.filters.push(Filter::Profile(profiles));
            }
            "_id" => {
                let ids = split_values(name, value)?
                    .into_iter()
                    .map(|v| unescape(&v))
                    .collect::<Vec<_>>();
                if ids.iter().any(|i| !is_id(i)) {
                    return Err(bad("a value is not a valid id").about(name));
                }
                if resource_type == "Patient" && ids.iter().any(|i| i != binding.patient_id) {
                    return Err(other_patient("_id"));
                }
                search.filters.push(Filter::Id(ids));
            }
            _ if name.contains(':') => {
                return Err(unsupported("modifiers are not supported").about(name));
            }
            _ if name.contains('.') => {
                return Err(unsupported("chained parameters are not supported").about(name));
            }
            _ if params::date_param(resource_type, name).is_some() => {
                return Err(unsupported(
                    "date parameters are served as _sort keys only, not as filters",
                )
                .about(name));
            }
            _ => {
                let def = params::param(resource_type, name).ok_or_else(|| {
                    bad("not a search parameter served for this resource type").about(name)
                })?;
                let values = split_values(name, value)?;
                total_values += values.len();
                if total_values > MAX_TOTAL_VALUES {
                    return Err(bad("too many search values in one request"));
                }
                let filter = match def.kind {
                    ParamKind::Token => {
                        let values = values
                            .iter()
                            .map(|v| parse_token(name, v))
                            .collect::<Result<Vec<_>, _>>()?;
                        if resource_type == "Patient" && name == "identifier" {
                            check_patient_identifiers(&values, binding)?;
                        }
                        Filter::Token(def, values)
                    }
                    ParamKind::Reference { .. } => {
                        let values = values
                            .iter()
                            .map(|v| parse_reference(def, v, binding))
                            .collect::<Result<Vec<_>, _>>()?;
                        Filter::Reference(def, values)
                    }
                };
                if search.filters.len() == MAX_PARAMS {
                    return Err(bad("too many search parameters"));
                }
                search.filters.push(filter);
            }
        }
    }
    Ok(search)
}

fn parse_number(name: &str, value: &str) -> Result<usize, Refusal> {
    if value.is_empty() || value.len() > 6 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be a whole number").about(name));
    }
    value
        .parse()
        .map_err(|_| bad("must be a whole number").about(name))
}

/// `name` or `-name`, a date parameter of `resource_type`. The key is not
/// echoed: it is a value, and values may hold a BSN.
fn parse_sort_key(resource_type: &str, key: &str) -> Result<SortKey, Refusal> {
    let (name, descending) = match key.strip_prefix('-') {
        Some(name) => (name, true),
        None => (key, false),
    };
    let def = params::date_param(resource_type, name).ok_or_else(|| {
        bad("a sort key is not a date parameter served for this resource type").about("_sort")
    })?;
    Ok(SortKey { def, descending })
}

/// A `_profile` value: an absolute URL (no spaces), then `|version` or nothing.
fn parse_canonical(name: &str, value: &str) -> Result<Canonical, Refusal> {
    let (url, version) = match split_unescaped(value, '|').as_slice() {
        [url] => (unescape(url), None),
        [url, version] if !version.is_empty() => (unescape(url), Some(unescape(version))),
        _ => return Err(bad("a value is not a canonical URL[|version]").about(name)),
    };
    let absolute = url
        .split_once(':')
        .is_some_and(|(scheme, rest)| is_scheme(scheme) && !rest.is_empty());
    let clean = |t: &str| !t.chars().any(|c| c.is_whitespace() || c.is_control());
    if !absolute || !clean(&url) || version.as_deref().is_some_and(|v| !clean(v)) {
        return Err(bad("a value is not a canonical URL[|version]").about(name));
    }
    Ok(Canonical { url, version })
}

/// A URI scheme (RFC 3986): a letter, then letters, digits, `+ - .`.
fn is_scheme(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn parse_include(resource_type: &str, value: &str) -> Result<Include, Refusal> {
    if let Some(def) = params::include_alias(resource_type, value) {
        return Ok(Include { def, target: None });
    }
    let mut parts = value.split(':');
    let (source, name, target) = (parts.next(), parts.next(), parts.next());
    let (Some(source), Some(name)) = (source, name) else {
        return Err(bad("must be Type:parameter or Type:parameter:Target").about("_include"));
    };
    if parts.next().is_some() || !is_known_type(source) {
        return Err(bad("must be Type:parameter or Type:parameter:Target").about("_include"));
    }
    if source != resource_type {
        return Err(bad("must start with the searched resource type").about("_include"));
    }
    let def = params::param(resource_type, name)
        .filter(|d| matches!(d.kind, ParamKind::Reference { .. }))
        .ok_or_else(|| {
            let refusal =
                bad("names no reference parameter of the searched type that can be included");
            if is_param_name(name) {
                refusal.about(format!("_include={resource_type}:{name}"))
            } else {
                refusal.about("_include")
            }
        })?;
    let target = match target {
        None => None,
        Some(t) if is_known_type(t) && (def.targets().is_empty() || def.targets().contains(&t)) => {
            Some(t.to_string())
        }
        Some(_) => {
            return Err(bad("the target type is not allowed").about("_include"));
        }
    };
    Ok(Include { def, target })
}

fn parse_token(name: &str, value: &str) -> Result<TokenValue, Refusal> {
    let (system, code) = match split_unescaped(value, '|').as_slice() {
        [code] => (SystemSel::Any, Some(unescape(code))),
        [system, code] => {
            let system = if system.is_empty() {
                SystemSel::Absent
            } else {
                SystemSel::Is(unescape(system))
            };
            let code = (!code.is_empty()).then(|| unescape(code));
            (system, code)
        }
        _ => return Err(bad("a value has more than one |").about(name)),
    };
    if system == SystemSel::Absent && code.is_none() {
        return Err(bad("a value is only |").about(name));
    }
    Ok(TokenValue { system, code })
}

fn parse_reference(
    def: &ParamDef,
    value: &str,
    binding: &Binding<'_>,
) -> Result<RefValue, Refusal> {
    let name = def.name;
    let value = unescape(value);
    // The Nuts convention `patient=<bsn system>|<BSN>` (spec §9.2).
    if let Some((system, id_value)) = value.split_once('|') {
        if !def.can_name_patient() || system != BSN_SYSTEM {
            return Err(
                unsupported("only Patient references and BSN identifiers are supported")
                    .about(name),
            );
        }
        if id_value != binding.bsn {
            return Err(other_patient(name));
        }
        return Ok(RefValue {
            resource_type: Some("Patient".into()),
            id: binding.patient_id.to_string(),
        });
    }
    let relative = match value.find("://") {
        Some(_) => value
            .strip_prefix(binding.base_url)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                unsupported("references to other servers are not supported").about(name)
            })?,
        None => value.as_str(),
    };
    let parsed = match relative.split('/').collect::<Vec<_>>().as_slice() {
        [id] if is_id(id) => RefValue {
            resource_type: None,
            id: id.to_string(),
        },
        [t, id] if is_known_type(t) && is_id(id) => RefValue {
            resource_type: Some(t.to_string()),
            id: id.to_string(),
        },
        _ => return Err(bad("a value is not a valid reference").about(name)),
    };
    if let Some(t) = &parsed.resource_type {
        let targets = def.targets();
        if !targets.is_empty() && !targets.contains(&t.as_str()) {
            return Err(
                bad("the reference points to a type this parameter cannot refer to").about(name),
            );
        }
    }
    let names_patient = match &parsed.resource_type {
        Some(t) => t == "Patient",
        None => def.bare_id_is_patient(),
    };
    if def.can_name_patient() && names_patient && parsed.id != binding.patient_id {
        return Err(other_patient(name));
    }
    Ok(parsed)
}

/// `Patient?identifier=…` naming a BSN other than the grant's: 403.
fn check_patient_identifiers(values: &[TokenValue], binding: &Binding<'_>) -> Result<(), Refusal> {
    for v in values {
        let Some(code) = &v.code else {
            continue;
        };
        let names_bsn = match &v.system {
            SystemSel::Is(s) => s == BSN_SYSTEM,
            SystemSel::Any | SystemSel::Absent => crate::ids::Bsn::parse(code).is_some(),
        };
        if names_bsn && code != binding.bsn {
            return Err(other_patient("identifier"));
        }
    }
    Ok(())
}

fn other_patient(name: &str) -> Refusal {
    Refusal::new(
        403,
        IssueType::Forbidden,
        "this authorization only covers the patient of its case",
    )
    .about(name)
}

fn bad(reason: &'static str) -> Refusal {
    Refusal::new(400, IssueType::Invalid, reason)
}

fn unsupported(reason: &'static str) -> Refusal {
    Refusal::new(400, IssueType::NotSupported, reason)
}

/// The comma-separated values of a parameter (escapes kept; `\,` is not a separator).
fn split_values(name: &str, value: &str) -> Result<Vec<String>, Refusal> {
    let parts = split_unescaped(value, ',');
    if parts.len() > MAX_VALUES {
        return Err(bad("too many values").about(name));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty value").about(name));
    }
    Ok(parts)
}

/// Splits on `sep` where it is not escaped by `\`; the parts keep their escapes.
fn split_unescaped(value: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in value.chars() {
        let current = parts.len() - 1;
        if escaped {
            parts[current].push('\\');
            parts[current].push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts[current].push(c);
        }
    }
    if escaped {
        let current = parts.len() - 1;
        parts[current].push('\\');
    }
    parts
}

/// Removes FHIR search escapes (`\,` `\|` `\$` `\\`).
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A query string from decoded pairs.
pub(crate) fn encode_query(params: &[Param]) -> String {
    params
        .iter()
        .map(|(n, v)| format!("{}={}", percent::encode_query(n), percent::encode_query(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A parameter name we read: letters, digits, `_ - : . $`.
pub(crate) fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:.$".contains(&b))
}

/// A FHIR logical id: `[A-Za-z0-9-.]{1,64}`.
pub(crate) fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An STU3 resource type.
fn is_known_type(t: &str) -> bool {
    is_type(t) && super::wire::is_resource_type(t)
}

/// A resource type name: an upper-case letter, then letters.
pub(crate) fn is_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.as_bytes()[0].is_ascii_uppercase()
        && t.bytes().all(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING: Binding<'static> = Binding {
        patient_id: "pat-1",
        bsn: "999999151",
        base_url: "https://np.example:8443/fhir",
    };

    fn params(q: &str) -> Vec<Param> {
        decode_query(Some(q)).unwrap()
    }

    fn search(t: &str, q: &str) -> Result<Search, Refusal> {
        parse_search(t, Op::Search, &params(q), &BINDING)
    }

    #[test]
    fn decoding() {
        assert_eq!(
            params("code=http%3A%2F%2Floinc.org%7C85354-9&_count=2&&x=a+b"),
            vec![
                ("code".into(), "http://loinc.org|85354-9".into()),
                ("_count".into(), "2".into()),
                ("x".into(), "a b".into()),
            ]
        );
        assert_eq!(decode_query(None).unwrap(), vec![]);
        for hostile in [
            "a=%00",
            "a=%0a",
            "a=%ff",
            "a",
            "a=",
            "%3D=1",
            "a b=1",
            "class=http://%hl7.org/fhir|IMP",
            "a=%4",
            "a=%+1",
            "a%zz=1",
        ] {
            assert_eq!(
                decode_query(Some(hostile)).unwrap_err().status,
                400,
                "{hostile}"
            );
        }
        let values = vec!["x"; MAX_VALUES].join(",");
        let q = vec![format!("code={values}"); MAX_TOTAL_VALUES / MAX_VALUES + 1].join("&");
        assert_eq!(
            search("Observation", &q).unwrap_err().reason(),
            "too many search values in one request"
        );
        let many = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert!(decode_query(Some(&many)).is_err());
        assert!(decode_query(Some(&"a".repeat(MAX_QUERY + 1))).is_err());
    }

    #[test]
    fn encoding_round_trips() {
        let p = vec![
            (
                "code".to_string(),
                "http://loinc.org|8302-2,x\\,y".to_string(),
            ),
            ("_format".to_string(), "application/fhir+xml".to_string()),
        ];
        let q = encode_query(&p);
        assert!(!q.contains('|') && !q.contains('+'), "{q}");
        assert_eq!(decode_query(Some(&q)).unwrap(), p);
    }

    #[test]
    fn tokens() {
        let s = search(
            "Observation",
            "code=http://loinc.org|8302-2,8306-3,|x,http://snomed.info/sct|,a\\|b",
        )
        .unwrap();
        let Filter::Token(def, values) = &s.filters[0] else {
            panic!()
        };
        assert_eq!(def.name, "code");
        assert_eq!(
            values,
            &vec![
                TokenValue {
                    system: SystemSel::Is("http://loinc.org".into()),
                    code: Some("8302-2".into())
                },
                TokenValue {
                    system: SystemSel::Any,
                    code: Some("8306-3".into())
                },
                TokenValue {
                    system: SystemSel::Absent,
                    code: Some("x".into())
                },
                TokenValue {
                    system: SystemSel::Is("http://snomed.info/sct".into()),
                    code: None
                },
                TokenValue {
                    system: SystemSel::Any,
                    code: Some("a|b".into())
                },
            ]
        );
        assert_eq!(search("Observation", "code=a|b|c").unwrap_err().status, 400);
        assert_eq!(search("Observation", "code=|").unwrap_err().status, 400);
        assert_eq!(search("Observation", "code=a,,b").unwrap_err().status, 400);
    }

    #[test]
    fn count_and_max() {
        assert_eq!(search("Condition", "").unwrap().count, DEFAULT_COUNT);
        assert_eq!(search("Condition", "_count=7").unwrap().count, 7);
        assert_eq!(
            search("Condition", "_count=100000").unwrap().count,
            MAX_COUNT
        );
        assert_eq!(search("Condition", "_count=0").unwrap().count, 0);
        for q in [
            "_count=-1",
            "_count=x",
            "_count=1&_count=2",
            "_count=9999999",
        ] {
            assert_eq!(search("Condition", q).unwrap_err().status, 400, "{q}");
        }
        let l = parse_search("Observation", Op::LastN, &params("max=3"), &BINDING).unwrap();
        assert_eq!(l.max, 3);
        assert!(parse_search("Observation", Op::LastN, &params("max=0"), &BINDING).is_err());
        assert_eq!(
            search("Observation", "max=3").unwrap_err().status,
            400,
            "max only on $lastn"
        );
    }

    #[test]
    fn strictness() {
        for (t, q) in [
            ("Observation", "foo=1"),
            ("Observation", "_sort=code"),
            ("Observation", "_summary=count"),
            ("Observation", "code:text=x"),
            ("Observation", "subject.identifier=x"),
            ("Observation", "_include:iterate=Observation:specimen"),
            ("Condition", "class=x"),
            ("Binary", "code=x"),
            ("Observation", "_id=a/b"),
        ] {
            let r = search(t, q).unwrap_err();
            assert_eq!(r.status, 400, "{t}?{q}");
        }
        let r = search("Observation", "_revinclude=Provenance:target").unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::NotSupported));
        assert!(
            search("Observation", "foo=999999151")
                .unwrap_err()
                .diagnostics()
                .contains("foo"),
            "names the parameter"
        );
        assert!(
            !search("Observation", "code=a|b|999999151")
                .unwrap_err()
                .diagnostics()
                .contains("999999151"),
            "never echoes a value"
        );
    }

    #[test]
    fn sort_keys_are_the_date_parameters_of_the_type() {
        let s = search("Observation", "_sort=-date&_count=5").unwrap();
        assert_eq!(s.sort.len(), 1);
        assert_eq!(s.sort[0].def, &params::OBSERVATION_DATE);
        assert!(s.sort[0].descending);
        assert!(s.filters.is_empty(), "a sort filters nothing");
        let s = search("DocumentReference", "_sort=indexed,-created").unwrap();
        let keys: Vec<_> = s.sort.iter().map(|k| (k.def.name, k.descending)).collect();
        assert_eq!(keys, [("indexed", false), ("created", true)]);
        assert_eq!(
            search("Condition", "_sort=-onset-date").unwrap().sort[0]
                .def
                .name,
            "onset-date"
        );
        for (t, q) in [
            ("Observation", "_sort=code"),
            ("Observation", "_sort=-"),
            ("Observation", "_sort=--date"),
            ("Observation", "_sort=date,"),
            ("Observation", "_sort=date&_sort=-date"),
            ("Observation", "_sort=_lastUpdated"),
            ("Observation", "_sort=999999151"),
            ("Condition", "_sort=date"),
            ("Coverage", "_sort=date"),
            ("Binary", "_sort=date"),
        ] {
            let r = search(t, q).unwrap_err();
            assert_eq!(r.status, 400, "{t}?{q}");
            assert!(!r.diagnostics().contains("999999151"));
        }
        let r = search("Observation", "_sort:desc=date").unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::NotSupported));
        let r =
            parse_search("Observation", Op::LastN, &params("_sort=-date"), &BINDING).unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::NotSupported));
        let r = search("Observation", "date=ge2024").unwrap_err();
        assert_eq!((r.status, r.code), (400, IssueType::NotSupported));
        assert!(r.diagnostics().contains("_sort"), "{}", r.diagnostics());
    }

    #[test]
    fn profiles_are_canonical_urls_with_an_optional_version() {
        let s = search(
            "Observation",
            "_profile=http://nictiz.nl/fhir/StructureDefinition/zib-BloodPressure,urn:oid:1.2.3|2.0",
        )
        .unwrap();
        let Filter::Profile(values) = &s.filters[0] else {
            panic!()
        };
        assert_eq!(
            values,
            &vec![
                Canonical {
                    url: "http://nictiz.nl/fhir/StructureDefinition/zib-BloodPressure".into(),
                    version: None
                },
                Canonical {
                    url: "urn:oid:1.2.3".into(),
                    version: Some("2.0".into())
                },
            ]
        );
        for q in [
            "_profile=zib-BloodPressure",
            "_profile=http://x.example/a|",
            "_profile=http://x.example/a|1|2",
            "_profile=|1.0",
            "_profile=http://x.example/a%20b",
            "_profile=1http://x.example/a",
            "_profile=http:",
            "_profile=http://x.example/a,,http://x.example/b",
            "_profile:below=http://x.example/",
        ] {
            assert_eq!(search("Observation", q).unwrap_err().status, 400, "{q}");
        }
        let versioned = Canonical::parse("http://x.example/p|3");
        let bare = Canonical::parse("http://x.example/p");
        assert!(bare.matches(&versioned) && bare.matches(&bare));
        assert!(versioned.matches(&versioned) && !versioned.matches(&bare));
        assert!(!Canonical::parse("http://x.example/p|4").matches(&versioned));
        assert!(!Canonical::parse("http://x.example/q").matches(&bare));
    }

    #[test]
    fn includes() {
        let s = search(
            "MedicationStatement",
            "_include=MedicationStatement:medication&_include=MedicationStatement:subject:Patient",
        )
        .unwrap();
        assert_eq!(s.includes.len(), 2);
        assert_eq!(s.includes[0].def.name, "medication");
        assert_eq!(s.includes[1].target.as_deref(), Some("Patient"));
        for q in [
            "_include=Observation:specimen",
            "_include=MedicationStatement:code",
            "_include=MedicationStatement:nope",
            "_include=MedicationStatement:medication:Patient",
            "_include=*",
            "_include=MedicationStatement:*",
            "_include=MedicationStatement",
            "_include=MedicationStatement:medication:Medication:x",
            "_include=Condition:diagnosis",
        ] {
            assert_eq!(
                search("MedicationStatement", q).unwrap_err().status,
                400,
                "{q}"
            );
        }
        for q in [
            "_include=EpisodeOfCare:condition",
            "_include=Condition:diagnosis",
        ] {
            let s = search("EpisodeOfCare", q).unwrap();
            assert_eq!(s.includes[0].def.name, "condition", "{q}");
            assert_eq!(s.includes[0].def.paths, ["diagnosis.condition"]);
        }
        for q in [
            "_include=Condition:diagnosis:Condition",
            "_include=Condition:subject",
            "_include=EpisodeOfCare:diagnosis",
        ] {
            assert_eq!(search("EpisodeOfCare", q).unwrap_err().status, 400, "{q}");
        }
    }

    #[test]
    fn patient_binding() {
        for q in [
            "patient=Patient/pat-1",
            "patient=pat-1",
            "subject=Patient/pat-1",
            "subject=https://np.example:8443/fhir/Patient/pat-1",
            "patient=http://fhir.nl/fhir/NamingSystem/bsn|999999151",
            "specimen=Specimen/s-1",
        ] {
            let s = search("Observation", q).unwrap();
            assert_eq!(s.filters.len(), 1, "{q}");
        }
        let s = search(
            "Observation",
            "patient=http://fhir.nl/fhir/NamingSystem/bsn|999999151",
        )
        .unwrap();
        let Filter::Reference(_, v) = &s.filters[0] else {
            panic!()
        };
        assert_eq!(v[0].id, "pat-1", "a BSN becomes the case's Patient");
        for (t, q) in [
            ("Observation", "patient=Patient/pat-2"),
            ("Observation", "patient=pat-2"),
            ("Observation", "subject=Patient/pat-2"),
            ("Observation", "subject=pat-2"),
            ("Observation", "patient=pat-1,pat-2"),
            (
                "Observation",
                "patient=http://fhir.nl/fhir/NamingSystem/bsn|999999163",
            ),
            ("Coverage", "payor=Patient/pat-2"),
            ("Coverage", "beneficiary=pat-2"),
            (
                "Patient",
                "identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999163",
            ),
            ("Patient", "identifier=999999163"),
            ("Patient", "_id=pat-2"),
        ] {
            let r = search(t, q).unwrap_err();
            assert_eq!((r.status, r.code), (403, IssueType::Forbidden), "{t}?{q}");
            assert!(!r.diagnostics().contains("999999163"));
        }
        assert!(
            search(
                "Patient",
                "identifier=http://fhir.nl/fhir/NamingSystem/bsn|999999151"
            )
            .is_ok()
        );
        assert!(search("Patient", "identifier=http://example.org/mrn|12345").is_ok());
        for q in [
            "patient=https://elsewhere.example/fhir/Patient/pat-1",
            "patient=http://example.org/mrn|1",
            "patient=Practitioner/x",
            "patient=a/b/c",
            "specimen=http://fhir.nl/fhir/NamingSystem/bsn|999999151",
        ] {
            assert_eq!(search("Observation", q).unwrap_err().status, 400, "{q}");
        }
    }
}
