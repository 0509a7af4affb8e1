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
pub mod zorgviewer;
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
use crate::audit::{AuditLog, ConsentDecision, ConsentSource, Event, ResourceList};
use crate::cases::{Case, CaseStatus, CaseStore};
use crate::fhir::{FhirVersion, Refusal};
use crate::http::Response;
use crate::oauth::grants::Grant;
use crate::ops::logging::{Q, Rid};
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

/// The key page links are sealed with: made once per process (`None` when
/// the system has no randomness to make it).
pub fn page_key() -> Option<&'static PageKey> {
    static KEY: OnceLock<PageKey> = OnceLock::new();
    match KEY.get() {
        Some(k) => Some(k),
        None => PageKey::generate().ok().map(|k| KEY.get_or_init(|| k)),
    }
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
    serve(cases, grant, req, audit, base_url, now, page_key())
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
    let pre = Prepared::new(req);
    let mut cx = Cx::new(Who::of_grant(grant), req, audit, pre.action(), &pre);
    if let Err(r) = method_allowed(req) {
        return cx.refuse(r);
    }
    let case = match check_grant(cases, grant, now) {
        Ok(c) => c,
        Err(r) => return cx.refuse(r),
    };
    let checked = match pre.check() {
        Ok(c) => c,
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
            Rid(req.request_id),
            Q(&case.partner),
            Q(&case.case_id),
            case.version,
            view.hidden
        );
    }
    let scope = Scope {
        bound: Bound {
            partner: &case.partner,
            case_id: &case.case_id,
            authorization_base: &case.authorization_base,
        },
        bsn: &case.patient,
        version: case.version,
    };
    let served = Served {
        view: &view,
        scope: &scope,
        key,
        base_url,
        now,
        format_param: pre.format_param.as_deref(),
        decorate: None,
        may_include: None,
        outside: "not in the case this authorization covers",
    };
    served.answer(&mut cx, checked)
}

/// What every request is parsed into before any check answers it.
struct Prepared {
    route: Result<Route, Refusal>,
    params: Result<Vec<Param>, Refusal>,
    /// `_format` when given once.
    format_param: Option<String>,
    negotiated: Option<Format>,
    /// Whether the client asks for FHIR: `_format`, no `Accept`, or an
    /// `Accept` that names a FHIR format. A `Binary` read answers its raw
    /// content otherwise (`Accept: application/pdf`, `*/*`).
    names_fhir: bool,
}

/// A request that passed the query checks: what to answer, and how.
pub(crate) struct Checked {
    route: Route,
    params: Vec<Param>,
    delivery: Delivery,
}

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Fhir(Format),
    /// A `Binary` read for a client that asked for no FHIR format: its
    /// content as the bytes of its `contentType`.
    RawBinary,
}

impl Prepared {
    fn new(req: &ServeRequest<'_>) -> Prepared {
        let route = parse_route(req.path);
        let params = query::decode_query(req.query);
        // `_format` decides when given once; given twice it is refused in
        // `check`, in the format `Accept` asks for.
        let format_param = params.as_ref().ok().and_then(|p| {
            let mut formats = p.iter().filter(|(n, _)| n == "_format");
            match (formats.next(), formats.next()) {
                (Some((_, v)), None) => Some(v.clone()),
                _ => None,
            }
        });
        let negotiated = wire::negotiate(format_param.as_deref(), req.accept);
        let names_fhir = format_param.is_some()
            || req.accept.is_none_or(|a| a.trim().is_empty())
            || crate::fhir::accept_names_fhir(req.accept);
        Prepared {
            route,
            params,
            format_param,
            negotiated,
            names_fhir,
        }
    }

    fn action(&self) -> Action {
        match &self.route {
            Ok(Route::Read { .. }) => Action::Read,
            Ok(Route::Search { .. }) => Action::Search,
            Err(_) => Action::Request,
        }
    }

    /// The format refusals are written in.
    fn format(&self) -> Format {
        self.negotiated.unwrap_or(Format::Json)
    }

    /// Query, `_format`, acceptable format, path (the first failure answers).
    fn check(&self) -> Result<Checked, Refusal> {
        let mut params = self.params.clone()?;
        if params.iter().filter(|(n, _)| n == "_format").count() > 1 {
            return Err(Refusal::new(
                400,
                IssueType::Invalid,
                "_format is given more than once",
            ));
        }
        params.retain(|(n, _)| n != "_format");
        let raw_binary = matches!(&self.route, Ok(Route::Read { resource_type, .. }) if resource_type == "Binary")
            && !self.names_fhir;
        let delivery = match (self.negotiated, raw_binary) {
            (_, true) => Delivery::RawBinary,
            (Some(f), false) => Delivery::Fhir(f),
            (None, false) => {
                return Err(Refusal::new(
                    406,
                    IssueType::NotSupported,
                    "no acceptable format: this server writes application/fhir+json and application/fhir+xml",
                ));
            }
        };
        Ok(Checked {
            route: self.route.clone()?,
            params,
            delivery,
        })
    }
}

/// `GET` and `HEAD` only.
fn method_allowed(req: &ServeRequest<'_>) -> Result<(), Refusal> {
    if req.method == "GET" || req.method == "HEAD" {
        Ok(())
    } else {
        Err(Refusal::method_not_allowed(
            "GET, HEAD",
            "only GET and HEAD are served here",
        ))
    }
}

/// The data one request sees: one patient's, and what page links are sealed to.
pub(crate) struct Scope<'a> {
    pub bound: Bound<'a>,
    pub bsn: &'a str,
    /// The data version page links are cut from.
    pub version: u32,
}

/// Everything a read or a search is answered from.
pub(crate) struct Served<'a> {
    pub view: &'a CaseView<'a>,
    pub scope: &'a Scope<'a>,
    pub key: Option<&'a PageKey>,
    pub base_url: &'a str,
    pub now: i64,
    pub format_param: Option<&'a str>,
    /// Applied to every resource served (Zorgviewer: `Meta.source`).
    pub decorate: Option<&'a dyn Fn(&mut Value)>,
    /// The resource types an `_include` may add (Zorgviewer: those the
    /// token's scope covers); `None`: any.
    pub may_include: Option<&'a dyn Fn(&str) -> bool>,
    /// The diagnostics of a read outside the scope (404).
    pub outside: &'static str,
}

impl Served<'_> {
    /// The read or search of a checked request.
    fn answer(&self, cx: &mut Cx<'_>, checked: Checked) -> Response {
        let Checked {
            route,
            params,
            delivery,
        } = checked;
        match route {
            Route::Read { resource_type, id } => {
                if !params.is_empty() {
                    return cx.refuse(Refusal::new(
                        400,
                        IssueType::NotSupported,
                        "a read takes no parameters besides _format",
                    ));
                }
                let Some(e) = self.view.get(&resource_type, &id) else {
                    return cx.refuse(
                        Refusal::new(404, IssueType::NotFound, self.outside)
                            .about(format!("{resource_type}/{id}")),
                    );
                };
                cx.returned(&[(e.resource_type, e.id)]);
                match delivery {
                    Delivery::RawBinary => cx.raw_binary(e.resource),
                    // Written from the case's data as it is: a copy only
                    // when a decoration changes it.
                    Delivery::Fhir(_) => match self.decorate {
                        Some(d) => {
                            let mut resource = e.resource.clone();
                            d(&mut resource);
                            cx.success(&resource, 1)
                        }
                        None => cx.success(e.resource, 1),
                    },
                }
            }
            Route::Search { resource_type, op } => {
                let s = SearchCall {
                    served: self,
                    resource_type: &resource_type,
                    op,
                };
                s.run(cx, params)
            }
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
    served: &'a Served<'a>,
    resource_type: &'a str,
    op: Op,
}

impl SearchCall<'_> {
    fn path(&self) -> String {
        match self.op {
            Op::Search => format!("/{}", self.resource_type),
            Op::LastN => format!("/{}/$lastn", self.resource_type),
        }
    }

    fn bound(&self) -> Bound<'_> {
        self.served.scope.bound
    }

    /// A link to this search's path with `query` (and the request's `_format`).
    fn link(&self, mut query: Vec<Param>) -> String {
        if let Some(f) = self.served.format_param {
            query.push(("_format".into(), f.into()));
        }
        let mut url = format!("{}{}", self.served.base_url, self.path());
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
            let opened = match self.served.key {
                Some(key) => page::open(key, &self.bound(), token, self.served.now),
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
            if state.v != self.served.scope.version {
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

        let view = self.served.view;
        let binding = Binding {
            patient_id: view.patient().id,
            bsn: self.served.scope.bsn,
            base_url: self.served.base_url,
        };
        let search = match query::parse_search(self.resource_type, self.op, &q, &binding) {
            Ok(s) => s,
            Err(r) => return cx.refuse(r),
        };
        let matches = search::run(view, &search);
        let total = matches.len();
        let start = offset.min(total);
        let end = start.saturating_add(search.count).min(total);
        let page = &matches[start..end];
        let mut included = search::included(view, page, &search.includes);
        if let Some(may) = self.served.may_include {
            included.retain(|i| may(view.entries()[*i].resource_type));
        }

        let mut links = vec![json!({"relation": "self", "url": self_url})];
        if end < total && search.count > 0 {
            let state = PageState {
                t: self.resource_type.to_string(),
                op: self.op.name().to_string(),
                q,
                o: end,
                v: self.served.scope.version,
                e: self.served.now.saturating_add(PAGE_LINK_LIFETIME),
            };
            let sealed = match self.served.key {
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
            let e = view.entries()[i];
            let mut resource = e.resource.clone();
            if let Some(d) = self.served.decorate {
                d(&mut resource);
            }
            json!({
                "fullUrl": format!("{}/{}/{}", self.served.base_url, e.resource_type, e.id),
                "resource": resource,
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
        let returned: Vec<(&str, &str)> = page
            .iter()
            .chain(included.iter())
            .map(|i| (view.entries()[*i].resource_type, view.entries()[*i].id))
            .collect();
        cx.returned(&returned);
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

/// Which exchange a request belongs to: decides its audit actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Twiin,
    Zorgviewer,
}

/// What a request is, as far as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Read,
    Search,
    /// Refused before it was known as a read or a search.
    Request,
}

impl Action {
    fn name(self, family: Family) -> &'static str {
        match (family, self) {
            (Family::Twiin, Action::Read) => "fhir.read",
            (Family::Twiin, Action::Search) => "fhir.search",
            (Family::Twiin, Action::Request) => "fhir.request",
            (Family::Zorgviewer, Action::Read) => crate::audit::ZORGVIEWER_READ,
            (Family::Zorgviewer, Action::Search) => crate::audit::ZORGVIEWER_SEARCH,
            (Family::Zorgviewer, Action::Request) => crate::audit::ZORGVIEWER_REQUEST,
        }
    }
}

/// Who asks, as the audit trail and the log name them.
pub(crate) struct Who<'a> {
    pub family: Family,
    pub partner: &'a str,
    /// The requesting organisation in claim form.
    pub org: String,
    pub system: &'a str,
    /// The patient's BSN, once known.
    pub patient: Option<String>,
    /// The case for the log (`-` when there is none).
    pub label: String,
    /// What a Zorgviewer request adds (request context, certificate).
    pub context: Option<&'a RequestFacts<'a>>,
}

impl Who<'_> {
    fn of_grant(grant: &Grant) -> Who<'_> {
        Who {
            family: Family::Twiin,
            partner: grant.partner(),
            org: grant.requesting_org_claim(),
            system: grant.client_id(),
            patient: grant.patient().map(|b| b.as_str().to_string()),
            label: grant.case_id().unwrap_or("-").to_string(),
            context: None,
        }
    }
}

/// The request context of a Zorgviewer request, for its audit record.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub correlation_id: Option<&'a str>,
    pub aorta_id: Option<String>,
    /// SHA-256 of the partner's TLS certificate.
    pub cert_sha256: Option<String>,
    pub organization_ura: Option<&'a str>,
    pub user: Option<&'a str>,
    pub role: Option<&'a str>,
    pub verified: bool,
    /// The path and query as sent (the audit trail may hold a BSN; the log never).
    pub query: String,
}

/// The request being answered: what the audit trail and the log need.
pub(crate) struct Cx<'a> {
    who: Who<'a>,
    req: &'a ServeRequest<'a>,
    audit: &'a AuditLog,
    action: Action,
    object: String,
    format: Format,
    consent: Option<(ConsentDecision, ConsentSource)>,
    /// The partner's consent is `mitz`: a request that never asked records no decision.
    consent_expected: bool,
    returned: ResourceList,
}

impl<'a> Cx<'a> {
    fn new(
        who: Who<'a>,
        req: &'a ServeRequest<'a>,
        audit: &'a AuditLog,
        action: Action,
        pre: &Prepared,
    ) -> Cx<'a> {
        Cx {
            who,
            req,
            audit,
            action,
            object: match (&pre.route, &pre.params) {
                (Ok(Route::Read { resource_type, id }), _) => format!("{resource_type}/{id}"),
                (Ok(Route::Search { .. }), Ok(params)) => truncate(
                    &format!(
                        "{}?{}",
                        req.path.trim_start_matches('/'),
                        encode_query(params)
                    ),
                    MAX_AUDIT_OBJECT,
                ),
                _ => truncate(req.path, MAX_AUDIT_OBJECT),
            },
            format: pre.format(),
            consent: None,
            consent_expected: false,
            returned: ResourceList::new(),
        }
    }

    /// The patient the request turned out to be about.
    fn who_patient(&mut self, bsn: &crate::ids::Bsn) {
        self.who.patient = Some(bsn.as_str().to_string());
    }

    /// The `Type/id` of every resource an answer discloses.
    fn returned(&mut self, resources: &[(&str, &str)]) {
        for (t, id) in resources {
            self.returned.push(t, id);
        }
    }

    /// Writes the audit event; false (and an error line) when it could not be written.
    fn record(&self, outcome: &str, reason: Option<&str>, status: u16) -> bool {
        let action = self.action.name(self.who.family);
        let disclosed = outcome == "success";
        let mut event = Event {
            action,
            outcome,
            partner: Some(self.who.partner),
            who_org: Some(&self.who.org),
            who_system: Some(self.who.system),
            patient: self.who.patient.as_deref(),
            object: Some(&self.object),
            reason,
            request_id: Some(self.req.request_id),
            results: disclosed.then(|| self.returned.total()),
            ..Event::default()
        };
        if let Some(c) = self.who.context {
            event.correlation_id = c.correlation_id;
            event.aorta_id = c.aorta_id.as_deref();
            event.cert_sha256 = c.cert_sha256.as_deref();
            event.who_ura = c.organization_ura;
            event.who_user = c.user;
            event.who_role = c.role;
            event.context_verified = Some(c.verified);
            event.query = Some(&c.query);
            event.status = Some(status);
            // Not asked although the partner's consent is `mitz` (no record of
            // the patient, a refusal before): no decision to record.
            event.consent = match self.consent {
                Some((decision, _)) => Some(decision),
                None if self.consent_expected => None,
                None => Some(ConsentDecision::NotChecked),
            };
            event.consent_source = self.consent.map(|c| c.1);
            event.results = Some(if disclosed { self.returned.total() } else { 0 });
            if disclosed {
                event.resources = Some(&self.returned);
            }
        }
        self.audit.record_or_log(event)
    }

    /// A refusal: audited, logged (the fixed reason only), answered with an OperationOutcome.
    fn refuse(&self, r: Refusal) -> Response {
        let diagnostics = r.diagnostics();
        self.record("refused", Some(&diagnostics), r.status);
        log::info!(
            "event=fhir.refused rid={} partner={} case={} action={} status={} reason={}",
            Rid(self.req.request_id),
            Q(self.who.partner),
            Q(&self.who.label),
            self.action.name(self.who.family),
            r.status,
            Q(r.reason())
        );
        outcome(&r, self.format)
    }

    /// Our failure: `detail` goes to the log only (it names files, not content).
    fn fail(&self, r: Refusal, detail: &str) -> Response {
        log::error!(
            "event=fhir.failed rid={} partner={} case={} status={} error={}",
            Rid(self.req.request_id),
            Q(self.who.partner),
            Q(&self.who.label),
            r.status,
            Q(detail)
        );
        self.record("error", Some(&r.diagnostics()), r.status);
        outcome(&r, self.format)
    }

    /// 200 with `body`, once the disclosure is in the audit trail.
    fn success(&self, body: &Value, results: usize) -> Response {
        let (content_type, bytes) = match wire::render(body, self.format) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "event=fhir.render_failed rid={} case={} error={}",
                    Rid(self.req.request_id),
                    Q(&self.who.label),
                    Q(&e)
                );
                let r = Refusal::not_acceptable(
                    "this content cannot be written in the requested format; ask for application/fhir+json",
                );
                self.record("refused", Some(&r.diagnostics()), r.status);
                return outcome(&r, Format::Json);
            }
        };
        self.disclose(content_type, bytes, results)
    }

    /// A `Binary`'s content as its own media type.
    fn raw_binary(&self, binary: &Value) -> Response {
        match crate::fhir::binary_content(binary) {
            Ok((content_type, bytes)) => self
                .disclose(&content_type, bytes, 1)
                .header("X-Content-Type-Options", "nosniff"),
            Err(e) => self.fail(
                Refusal::exception("the document content cannot be served"),
                &e,
            ),
        }
    }

    /// The answer, once its audit record is written.
    fn disclose(&self, content_type: &str, bytes: Vec<u8>, results: usize) -> Response {
        if !self.record("success", None, 200) {
            let r = Refusal::exception("the audit trail cannot be written; nothing is served");
            return outcome(&r, self.format);
        }
        log::debug!(
            "event=fhir.served rid={} partner={} case={} action={} results={results}",
            Rid(self.req.request_id),
            Q(self.who.partner),
            Q(&self.who.label),
            self.action.name(self.who.family)
        );
        Response::new(200)
            .header("Cache-Control", "no-store")
            .body(content_type, bytes)
    }

    /// 200 with an empty answer for a patient whose data is withheld or
    /// absent (a read: 404), indistinguishable from a patient with nothing.
    fn nothing(&self, search_self_url: Option<String>, reason: &str, route: &Route) -> Response {
        match route {
            Route::Read { resource_type, id } => {
                if !self.record("refused", Some(reason), 404) {
                    let r =
                        Refusal::exception("the audit trail cannot be written; nothing is served");
                    return outcome(&r, self.format);
                }
                let r = Refusal::new(404, IssueType::NotFound, "not found")
                    .about(format!("{resource_type}/{id}"));
                outcome(&r, self.format)
            }
            Route::Search { .. } => {
                let mut bundle = Map::new();
                bundle.insert("resourceType".into(), "Bundle".into());
                bundle.insert("type".into(), "searchset".into());
                bundle.insert("total".into(), 0.into());
                if let Some(url) = search_self_url {
                    bundle.insert("link".into(), json!([{"relation": "self", "url": url}]));
                }
                let (content_type, bytes) = match wire::render(&Value::Object(bundle), self.format)
                {
                    Ok(r) => r,
                    Err(e) => return self.fail(Refusal::exception("cannot answer"), &e),
                };
                if !self.record("refused", Some(reason), 200) {
                    let r =
                        Refusal::exception("the audit trail cannot be written; nothing is served");
                    return outcome(&r, self.format);
                }
                Response::new(200)
                    .header("Cache-Control", "no-store")
                    .body(content_type, bytes)
            }
        }
    }
}

/// The OperationOutcome response of a refusal (STU3), never cached.
fn outcome(r: &Refusal, format: Format) -> Response {
    r.response(format, FhirVersion::Stu3)
        .header("Cache-Control", "no-store")
}

#[cfg(test)]
mod tests;
