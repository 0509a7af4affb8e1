//! The sender's FHIR serving: what a partner pulls with a pull token, scoped
//! strictly to the one case the token's authorization base is bound to
//! (DESIGN.md "Serving", spec §8 and §9).
//!
//! The daemon's router authenticates the bearer token and calls [`handle`]
//! with the token's [`Grant`]. This module does no I/O of its own besides
//! reading the case data through the [`CaseStore`] and appending to the
//! [`AuditLog`]; time comes in as `now`.
//!
//! # What is served
//! - `GET [base]/<Type>/<id>`: a resource of the case's current data version.
//! - `GET [base]/<Type>?<params>`: a `searchset` Bundle over that version.
//! - `GET [base]/Observation/$lastn?<params>`: the newest Observations per code.
//!
//! "The case" is the entry resources of the current data version, less what
//! the [`view`] hides (other patients' resources; a `Binary` that no
//! `DocumentReference` of the case refers to). The notification Tasks we sent
//! are not data: `Task/<id>` finds only Tasks inside the exported data.
//!
//! # Order of checks (the first failure answers)
//! 1. method: `GET`/`HEAD`, else 405 with `Allow`;
//! 2. grant: a pull grant whose case exists for that partner with the same
//!    authorization base and patient, is live and not past its end, else 403
//!    (a grant already past its own expiry: 401);
//! 3. query: malformed → 400; `_format`/`Accept` nothing we write → 406;
//! 4. path: not a read, search or `$lastn` → 400;
//! 5. parameters: unknown, modifiers, chains, `_revinclude`, an `_include`
//!    we do not serve → 400 (strict: an ignored parameter would widen the
//!    result); a `patient`/`subject`/Patient `identifier`/Patient `_id` that
//!    names another patient → 403;
//! 6. a read of something outside the case → 404, whether or not it exists
//!    elsewhere.
//!
//! Page links (`next`) carry `_page=<token>` sealed by [`PageKey`] and bound
//! to the authorization base; a page request takes no other parameters than
//! `_format`. A link that does not open → 400; one that expired, or whose data
//! version was replaced by an update → 410 (repeat the search).
//!
//! Every answer, served or refused, is audited (`fhir.read`, `fhir.search`,
//! or `fhir.request` when the path is not understood) with partner,
//! requesting organisation, system, patient, object, result count, outcome
//! and request id; nothing is served unless its audit event was written. The
//! log gets one line per refusal with the request id, partner, case, status
//! and a fixed reason: never request text, which may hold a BSN.

pub mod capability;
mod page;
mod params;
pub(crate) mod query;
mod search;
mod view;
mod wire;

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

pub use page::PageKey;

use self::page::{Bound, PAGE_LINK_LIFETIME, PageError, PageState};
use self::query::{Binding, Op, Param, encode_query};
use self::view::CaseView;
use self::wire::{Format, IssueType};
use crate::audit::{AuditLog, Event};
use crate::cases::{Case, CaseStatus, CaseStore};
use crate::fhir::{FhirVersion, Refusal};
use crate::http::Response;
use crate::oauth::grants::Grant;
use crate::ops::logging::Q;
use crate::util::percent;

/// One FHIR data request, as the router saw it.
#[derive(Debug, Clone, Copy)]
pub struct ServeRequest<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The raw (percent-encoded) path after `/fhir`, e.g. `/Observation`.
    pub path: &'a str,
    /// The raw query without `?`.
    pub query: Option<&'a str>,
    /// The `Accept` header.
    pub accept: Option<&'a str>,
    /// Our request id (audit trail and log).
    pub request_id: &'a str,
}

/// Answers one FHIR data request for `grant`. `base_url` is our public FHIR
/// base (e.g. `https://np.hospital-a.example:8443/fhir`), used for
/// `fullUrl` and the `self`/`next` links. Page links are sealed with a key
/// made once per process.
pub fn handle(
    cases: &CaseStore,
    grant: &Grant,
    req: &ServeRequest<'_>,
    audit: &AuditLog,
    base_url: &str,
    now: i64,
) -> Response {
    static KEY: OnceLock<PageKey> = OnceLock::new();
    let key = match KEY.get() {
        Some(k) => Some(k),
        None => PageKey::generate().ok().map(|k| KEY.get_or_init(|| k)),
    };
    serve(cases, grant, req, audit, base_url, now, key)
}

/// [`handle`] with a caller-held page key (tests; a key that outlives the process).
pub fn handle_with_key(
    cases: &CaseStore,
    grant: &Grant,
    req: &ServeRequest<'_>,
    audit: &AuditLog,
    base_url: &str,
    now: i64,
    key: &PageKey,
) -> Response {
    serve(cases, grant, req, audit, base_url, now, Some(key))
}

/// Longest `object` written to the audit trail.
const MAX_AUDIT_OBJECT: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Read { resource_type: String, id: String },
    Search { resource_type: String, op: Op },
}

fn serve(
    cases: &CaseStore,
    grant: &Grant,
    req: &ServeRequest<'_>,
    audit: &AuditLog,
    base_url: &str,
    now: i64,
    key: Option<&PageKey>,
) -> Response {
    let base_url = base_url.trim_end_matches('/');
    let route = parse_route(req.path);
    let params = query::decode_query(req.query);
    // `_format` decides when given once; given twice it is refused below,
    // in the format `Accept` asks for.
    let format_param = params.as_ref().ok().and_then(|p| {
        let mut formats = p.iter().filter(|(n, _)| n == "_format");
        match (formats.next(), formats.next()) {
            (Some((_, v)), None) => Some(v.clone()),
            _ => None,
        }
    });
    let negotiated = wire::negotiate(format_param.as_deref(), req.accept);
    let mut cx = Cx {
        grant,
        req,
        audit,
        action: match &route {
            Ok(Route::Read { .. }) => "fhir.read",
            Ok(Route::Search { .. }) => "fhir.search",
            Err(_) => "fhir.request",
        },
        object: match &route {
            Ok(Route::Read { resource_type, id }) => format!("{resource_type}/{id}"),
            _ => truncate(req.path, MAX_AUDIT_OBJECT),
        },
        format: negotiated.unwrap_or(Format::Json),
    };

    if req.method != "GET" && req.method != "HEAD" {
        return cx.refuse(Refusal::method_not_allowed(
            "GET, HEAD",
            "only GET and HEAD are served here",
        ));
    }
    let case = match check_grant(cases, grant, now) {
        Ok(c) => c,
        Err(r) => return cx.refuse(r),
    };
    let mut params = match params {
        Ok(p) => p,
        Err(r) => return cx.refuse(r),
    };
    if params.iter().filter(|(n, _)| n == "_format").count() > 1 {
        return cx.refuse(Refusal::new(
            400,
            IssueType::Invalid,
            "_format is given more than once",
        ));
    }
    params.retain(|(n, _)| n != "_format");
    if negotiated.is_none() {
        return cx.refuse(Refusal::new(
            406,
            IssueType::NotSupported,
            "no acceptable format: this server writes application/fhir+json and application/fhir+xml",
        ));
    }
    let route = match route {
        Ok(r) => r,
        Err(r) => return cx.refuse(r),
    };

    let data = match cases.data(&case.partner, &case.case_id, case.version) {
        Ok(d) => d,
        Err(e) => {
            return cx.fail(
                Refusal::exception("the case data cannot be read"),
                &e.to_string(),
            );
        }
    };
    let view = match CaseView::build(&data, &case.patient) {
        Ok(v) => v,
        Err(e) => {
            return cx.fail(
                Refusal::exception("the case data cannot be served"),
                &e.to_string(),
            );
        }
    };
    if view.hidden > 0 {
        log::debug!(
            "event=fhir.hidden rid={} partner={} case={} version={} hidden={}",
            Q(req.request_id),
            Q(&case.partner),
            Q(&case.case_id),
            case.version,
            view.hidden
        );
    }

    match route {
        Route::Read { resource_type, id } => {
            if !params.is_empty() {
                return cx.refuse(Refusal::new(
                    400,
                    IssueType::NotSupported,
                    "a read takes no parameters besides _format",
                ));
            }
            match view.get(&resource_type, &id) {
                Some(e) => cx.success(e.resource, 1),
                None => cx.refuse(
                    Refusal::new(
                        404,
                        IssueType::NotFound,
                        "not in the case this authorization covers",
                    )
                    .about(format!("{resource_type}/{id}")),
                ),
            }
        }
        Route::Search { resource_type, op } => {
            let s = SearchCall {
                view: &view,
                case: &case,
                key,
                base_url,
                now,
                resource_type: &resource_type,
                op,
                format_param: format_param.as_deref(),
            };
            s.run(&mut cx, params)
        }
    }
}

/// The case a grant may read, or why not.
fn check_grant(cases: &CaseStore, grant: &Grant, now: i64) -> Result<Case, Refusal> {
    let forbidden = |reason| Refusal::new(403, IssueType::Forbidden, reason);
    let (Some(binding), Some(bsn)) = (grant.case(), grant.patient()) else {
        return Err(forbidden(
            "a notify token reads nothing; request a token with the notification's authorization_base",
        ));
    };
    if grant.expires_at() <= now {
        return Err(
            Refusal::new(401, IssueType::Security, "the access token has expired")
                .header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
        );
    }
    let case = cases
        .get(grant.partner(), &binding.case_id)
        .filter(|c| c.authorization_base == binding.authorization_base && c.patient == bsn.as_str())
        .ok_or_else(|| forbidden("the access token is not bound to a case of this partner"))?;
    if case.status == CaseStatus::Cancelled {
        return Err(forbidden("the notification was cancelled"));
    }
    if now >= case.expires_at {
        return Err(forbidden("the notification has expired"));
    }
    Ok(case)
}

/// `/<Type>`, `/<Type>/<id>` or `/Observation/$lastn`, each segment
/// percent-decoded on its own ([`percent::decode_segment`]: `%2F` never
/// becomes a separator).
pub(crate) fn parse_route(path: &str) -> Result<Route, Refusal> {
    let bad = |reason| Refusal::new(400, IssueType::Invalid, reason);
    let unsupported = |reason| Refusal::new(400, IssueType::NotSupported, reason);
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("not a FHIR read or search path"))?;
    let segs = rest
        .split('/')
        .map(percent::decode_segment)
        .collect::<Result<Vec<String>, _>>()
        .map_err(|_| bad("the path is not validly encoded"))?;
    let check_type = |t: &str| -> Result<String, Refusal> {
        if !query::is_type(t) {
            Err(bad("the path does not start with a resource type"))
        } else if !wire::is_resource_type(t) {
            Err(bad("not an STU3 resource type").about(t))
        } else {
            Ok(t.to_string())
        }
    };
    match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [""] => Err(unsupported(
            "searching across all resource types is not supported",
        )),
        [t] => Ok(Route::Search {
            resource_type: check_type(t)?,
            op: Op::Search,
        }),
        ["Observation", "$lastn"] => Ok(Route::Search {
            resource_type: "Observation".into(),
            op: Op::LastN,
        }),
        [t, op] if op.starts_with('$') || op.starts_with('_') => {
            check_type(t)?;
            if op.len() <= 64
                && op
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"$_-".contains(&b))
            {
                Err(unsupported("this operation is not supported").about(format!("{t}/{op}")))
            } else {
                Err(unsupported("this operation is not supported"))
            }
        }
        [t, id] => {
            let resource_type = check_type(t)?;
            if !query::is_id(id) {
                return Err(bad("the path does not hold a valid resource id"));
            }
            Ok(Route::Read {
                resource_type,
                id: id.to_string(),
            })
        }
        [t, _, "_history", ..] => {
            check_type(t)?;
            Err(unsupported("version history is not served"))
        }
        _ => Err(bad("not a FHIR read or search path")),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// One search request over a built view.
struct SearchCall<'a> {
    view: &'a CaseView<'a>,
    case: &'a Case,
    key: Option<&'a PageKey>,
    base_url: &'a str,
    now: i64,
    resource_type: &'a str,
    op: Op,
    format_param: Option<&'a str>,
}

impl SearchCall<'_> {
    fn path(&self) -> String {
        match self.op {
            Op::Search => format!("/{}", self.resource_type),
            Op::LastN => format!("/{}/$lastn", self.resource_type),
        }
    }

    fn bound(&self) -> Bound<'_> {
        Bound {
            partner: &self.case.partner,
            case_id: &self.case.case_id,
            authorization_base: &self.case.authorization_base,
        }
    }

    /// A link to this search's path with `query` (and the request's `_format`).
    fn link(&self, mut query: Vec<Param>) -> String {
        if let Some(f) = self.format_param {
            query.push(("_format".into(), f.into()));
        }
        let mut url = format!("{}{}", self.base_url, self.path());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&encode_query(&query));
        }
        url
    }

    fn run(&self, cx: &mut Cx<'_>, params: Vec<Param>) -> Response {
        // A page request: the search comes back out of the sealed link.
        let (q, offset, self_url) = if params.iter().any(|(n, _)| n == "_page") {
            let token = match params.as_slice() {
                [(_, token)] => token.as_str(),
                _ => {
                    return cx.refuse(Refusal::new(
                        400,
                        IssueType::Invalid,
                        "a page link takes no parameters besides _format",
                    ));
                }
            };
            let opened = match self.key {
                Some(key) => page::open(key, &self.bound(), token, self.now),
                None => Err(PageError::Unavailable),
            };
            let state = match opened {
                Ok(s) => s,
                Err(e) => return cx.refuse(page_refusal(e)),
            };
            if state.t != self.resource_type || Op::from_name(&state.op) != Some(self.op) {
                return cx.refuse(Refusal::new(
                    400,
                    IssueType::Invalid,
                    "the page link belongs to another search",
                ));
            }
            if state.v != self.case.version {
                return cx.refuse(Refusal::new(
                    410,
                    IssueType::Processing,
                    "the case data was updated since this page link was made; repeat the search",
                ));
            }
            let self_url = self.link(vec![("_page".into(), token.to_string())]);
            (state.q, state.o, self_url)
        } else {
            let self_url = self.link(params.clone());
            (params, 0, self_url)
        };
        let path = self.path();
        cx.object = truncate(
            &match offset {
                0 => format!("{}?{}", &path[1..], encode_query(&q)),
                o => format!("{}?{} (page at {o})", &path[1..], encode_query(&q)),
            },
            MAX_AUDIT_OBJECT,
        );

        let binding = Binding {
            patient_id: self.view.patient().id,
            bsn: &self.case.patient,
            base_url: self.base_url,
        };
        let search = match query::parse_search(self.resource_type, self.op, &q, &binding) {
            Ok(s) => s,
            Err(r) => return cx.refuse(r),
        };
        let matches = search::run(self.view, &search);
        let total = matches.len();
        let start = offset.min(total);
        let end = start.saturating_add(search.count).min(total);
        let page = &matches[start..end];
        let included = search::included(self.view, page, &search.includes);

        let mut links = vec![json!({"relation": "self", "url": self_url})];
        if end < total && search.count > 0 {
            let state = PageState {
                t: self.resource_type.to_string(),
                op: self.op.name().to_string(),
                q,
                o: end,
                v: self.case.version,
                e: self.now.saturating_add(PAGE_LINK_LIFETIME),
            };
            let sealed = match self.key {
                Some(key) => page::seal(key, &self.bound(), &state),
                None => Err(PageError::Unavailable),
            };
            match sealed {
                Ok(token) => links.push(json!({
                    "relation": "next",
                    "url": self.link(vec![("_page".into(), token)]),
                })),
                Err(_) => {
                    return cx.fail(
                        Refusal::new(
                            503,
                            IssueType::Transient,
                            "page links cannot be made at the moment",
                        ),
                        "no page key (system randomness unavailable)",
                    );
                }
            }
        }

        let entry_of = |i: usize, mode: &str| {
            let e = self.view.entries()[i];
            json!({
                "fullUrl": format!("{}/{}/{}", self.base_url, e.resource_type, e.id),
                "resource": e.resource,
                "search": {"mode": mode},
            })
        };
        let entries: Vec<Value> = page
            .iter()
            .map(|i| entry_of(*i, "match"))
            .chain(included.iter().map(|i| entry_of(*i, "include")))
            .collect();
        let mut bundle = Map::new();
        bundle.insert("resourceType".into(), "Bundle".into());
        bundle.insert("type".into(), "searchset".into());
        bundle.insert("total".into(), total.into());
        bundle.insert("link".into(), Value::Array(links));
        let disclosed = entries.len();
        if !entries.is_empty() {
            bundle.insert("entry".into(), Value::Array(entries));
        }
        cx.success(&Value::Object(bundle), disclosed)
    }
}

fn page_refusal(e: PageError) -> Refusal {
    match e {
        PageError::Invalid => Refusal::new(
            400,
            IssueType::Invalid,
            "the page link is not valid for this authorization (altered, or made before a restart); repeat the search",
        ),
        PageError::Expired => Refusal::new(
            410,
            IssueType::Processing,
            "the page link has expired; repeat the search",
        ),
        PageError::Unavailable => Refusal::new(
            503,
            IssueType::Transient,
            "page links cannot be read at the moment",
        ),
    }
}

/// The request being answered: what the audit trail and the log need.
struct Cx<'a> {
    grant: &'a Grant,
    req: &'a ServeRequest<'a>,
    audit: &'a AuditLog,
    action: &'static str,
    object: String,
    format: Format,
}

impl Cx<'_> {
    /// Writes the audit event; false (and an error line) when it could not be written.
    fn record(&self, outcome: &str, reason: Option<&str>, results: Option<usize>) -> bool {
        let event = Event {
            action: self.action,
            outcome,
            partner: Some(self.grant.partner()),
            who_org: Some(&self.grant.requesting_org_claim()),
            who_system: Some(self.grant.client_id()),
            patient: self.grant.patient().map(crate::ids::Bsn::as_str),
            object: Some(&self.object),
            reason,
            request_id: Some(self.req.request_id),
            results,
            ..Event::default()
        };
        self.audit.record_or_log(event)
    }

    fn case_label(&self) -> &str {
        self.grant.case_id().unwrap_or("-")
    }

    /// A refusal: audited, logged (the fixed reason only), answered with an OperationOutcome.
    fn refuse(&self, r: Refusal) -> Response {
        let diagnostics = r.diagnostics();
        self.record("refused", Some(&diagnostics), None);
        log::info!(
            "event=fhir.refused rid={} partner={} case={} action={} status={} reason={}",
            Q(self.req.request_id),
            Q(self.grant.partner()),
            Q(self.case_label()),
            self.action,
            r.status,
            Q(r.reason())
        );
        outcome(&r, self.format)
    }

    /// Our failure: `detail` goes to the log only (it names files, not content).
    fn fail(&self, r: Refusal, detail: &str) -> Response {
        log::error!(
            "event=fhir.failed rid={} partner={} case={} status={} error={}",
            Q(self.req.request_id),
            Q(self.grant.partner()),
            Q(self.case_label()),
            r.status,
            Q(detail)
        );
        self.record("error", Some(&r.diagnostics()), None);
        outcome(&r, self.format)
    }

    /// 200 with `body`, once the disclosure is in the audit trail.
    fn success(&self, body: &Value, results: usize) -> Response {
        let (content_type, bytes) = match wire::render(body, self.format) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "event=fhir.render_failed rid={} case={} error={}",
                    Q(self.req.request_id),
                    Q(self.case_label()),
                    Q(&e)
                );
                let r = Refusal::not_acceptable(
                    "this content cannot be written in the requested format; ask for application/fhir+json",
                );
                self.record("refused", Some(&r.diagnostics()), None);
                return outcome(&r, Format::Json);
            }
        };
        if !self.record("success", None, Some(results)) {
            let r = Refusal::exception("the audit trail cannot be written; nothing is served");
            return outcome(&r, self.format);
        }
        log::debug!(
            "event=fhir.served rid={} partner={} case={} action={} results={results}",
            Q(self.req.request_id),
            Q(self.grant.partner()),
            Q(self.case_label()),
            self.action
        );
        Response::new(200)
            .header("Cache-Control", "no-store")
            .body(content_type, bytes)
    }
}

/// The OperationOutcome response of a refusal (STU3), never cached.
fn outcome(r: &Refusal, format: Format) -> Response {
    r.response(format, FhirVersion::Stu3)
        .header("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests;
