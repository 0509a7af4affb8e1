//! The daemon: assembles configuration, TLS, keys and stores into a running
//! agent; routes partner requests; reloads on SIGHUP and hourly; drains on
//! SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use crate::assertion::ReplayCache;
use crate::audit::AuditLog;
use crate::cases::CaseStore;
use crate::config::{self, Config, MitzPartner, Partner, Source, TlsVersion};
use crate::fhir::{FhirVersion, Format, IssueType, Refusal};
use crate::http::{self, Handler, Request, Response};
use crate::jose::{Jwks, SigningKey};
use crate::oauth::TokenStore;
use crate::oauth::client::{JwksFetcher, TokenClient};
use crate::oauth::endpoint::{Outcome, TokenRequest, TokenService};
use crate::oauth::keycache::KeyCache;
use crate::ops::logging::Q;
use crate::ops::metrics::Metrics;
use crate::ops::notify;
use crate::pki::{self, MinVersion, TlsFiles, TlsMaterial};
use crate::spool::Spool;
use crate::util::time::now_unix;

/// How often CRLs (and the rest of the TLS material) are re-read.
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(3_600);
/// How long SIGTERM waits for in-flight requests.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A start-up failure and the exit code it maps to.
#[derive(Debug)]
pub struct StartupError {
    pub exit: i32,
    pub message: String,
}

fn config_error(message: impl Into<String>) -> StartupError {
    StartupError {
        exit: config::EXIT_CONFIG,
        message: message.into(),
    }
}

/// Loads the signing key named by the configuration.
pub fn load_signing_key(cfg: &Config) -> Result<SigningKey, String> {
    let path = &cfg.signing_key;
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("NP_SIGNING_KEY: cannot read {}: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem, cfg.signing_alg, cfg.signing_kid.clone())
        .map_err(|e| format!("NP_SIGNING_KEY: {}: {e}", path.display()))
}

fn tls_files(cfg: &Config) -> TlsFiles {
    TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        trust: cfg.tls_trust.clone(),
        crl_dir: cfg.tls_crl_dir.clone(),
    }
}

fn min_version(cfg: &Config) -> MinVersion {
    match cfg.tls_min_version {
        TlsVersion::V12 => MinVersion::Tls12,
        TlsVersion::V13 => MinVersion::Tls13,
    }
}

/// Loads everything key-shaped the configuration names, reporting every
/// problem (for `check-config` and start-up).
pub fn check_material(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    match TlsMaterial::load(&tls_files(cfg)) {
        Ok(m) => {
            if let Err(e) = pki::server_config(&m, min_version(cfg)) {
                problems.push(format!("NP_TLS_CERT: {e}"));
            }
        }
        Err(e) => problems.push(format!("{}: {e}", e.config_key())),
    }
    if let Err(e) = load_signing_key(cfg) {
        problems.push(e);
    }
    problems
}

/// Everything that a reload replaces at once.
pub struct Shared {
    pub config: Arc<Config>,
    pub tls: Arc<TlsMaterial>,
    pub signing: Arc<SigningKey>,
    pub token_service: TokenService,
    pub token_client: Arc<TokenClient>,
    pub jwks_json: Vec<u8>,
    pub discovery_json: Vec<u8>,
    pub metadata_json: Vec<u8>,
    /// HTTP to partners (mTLS with the current certificate, trust and CRLs).
    pub http: Arc<dyn crate::http::partners::PartnerHttp>,
    pub sender: Arc<crate::sender::Sender>,
    pub receiver: Arc<crate::receiver::Receiver>,
    pub mitz: Arc<crate::mitz::Mitz>,
}

/// State that lives across reloads.
pub struct Stores {
    /// One circuit breaker per partner; outlives reloads.
    pub circuits: Arc<crate::circuit::Circuits>,
    /// Free space under `NP_STATE_DIR`: the one place every intake asks.
    pub disk: Arc<crate::backpressure::DiskGuard>,
    /// Back-off and give-up of spool work; replaced on reload.
    pub retry: Arc<RwLock<crate::spool::RetryPolicy>>,
    pub tokens: Arc<TokenStore>,
    pub audit: Arc<AuditLog>,
    pub replay: ReplayCache,
    pub metrics: Arc<Metrics>,
    pub spool: Arc<Spool>,
    pub cases: Arc<CaseStore>,
    /// The receiver's folders and locks; each configuration gets a
    /// `reconfigured` copy sharing them.
    pub receiver: crate::receiver::Receiver,
    /// The Mitz intake's consent view and lock; reconfigured like the receiver.
    pub mitz: crate::mitz::Mitz,
}

impl Stores {
    pub fn open(cfg: &Config, metrics: Arc<Metrics>) -> Result<Stores, StartupError> {
        let state = &cfg.state_dir;
        crate::util::durable::create_dir_all(state).map_err(|e| StartupError {
            exit: 1,
            message: format!("NP_STATE_DIR: {e}"),
        })?;
        let io = |e: String| StartupError {
            exit: 1,
            message: e,
        };
        let (spool, recovery) = Spool::open(state).map_err(|e| io(e.to_string()))?;
        log::info!(
            "event=spool.recovered requeued={} temp_files={} duplicates={} corrupt={}",
            recovery.requeued,
            recovery.temp_files,
            recovery.duplicates,
            recovery.corrupt
        );
        let spool = Arc::new(spool);
        let audit = Arc::new(AuditLog::open(state).map_err(|e| io(e.to_string()))?);
        let receiver =
            crate::receiver::Receiver::new(Arc::new(cfg.clone()), spool.clone(), audit.clone())
                .map_err(|e| io(format!("NP_INBOX / NP_STATE_DIR: {e}")))?;
        let mitz = crate::mitz::Mitz::new(Arc::new(cfg.clone()), spool.clone(), audit.clone())
            .map_err(|e| io(format!("NP_STATE_DIR: {e}")))?;
        let circuits = Arc::new(crate::circuit::Circuits::new(
            circuit_policy(cfg),
            metrics.clone(),
        ));
        let disk = Arc::new(crate::backpressure::DiskGuard::new(
            state,
            cfg.min_free_disk,
            metrics.clone(),
        ));
        let sizes = spool.clone();
        metrics.add_collector(Box::new(move |m: &Metrics| {
            if let Ok(sizes) = sizes.sizes() {
                for (state, n) in sizes {
                    let label = match state {
                        crate::spool::State::InFlight => "in_flight",
                        s => s.dir(),
                    };
                    m.gauge(crate::ops::metrics::SPOOL_ITEMS, &[("state", label)])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }));
        Ok(Stores {
            circuits,
            disk,
            retry: Arc::new(RwLock::new(retry_policy(cfg))),
            receiver,
            mitz,
            spool,
            cases: Arc::new(CaseStore::open(state).map_err(|e| io(e.to_string()))?),
            tokens: Arc::new(TokenStore::open(state, now_unix()).map_err(|e| io(e.to_string()))?),
            audit,
            replay: ReplayCache::open(state).map_err(|e| io(e.to_string()))?,
            metrics,
        })
    }
}

/// The back-off and give-up policy of a configuration.
pub fn retry_policy(cfg: &Config) -> crate::spool::RetryPolicy {
    crate::spool::RetryPolicy {
        first_secs: cfg.retry_first.as_secs(),
        cap_secs: cfg.retry_cap.as_secs(),
        max_age_secs: i64::try_from(cfg.retry_max_age.as_secs()).unwrap_or(i64::MAX),
    }
}

/// The circuit breaker policy of a configuration.
pub fn circuit_policy(cfg: &Config) -> crate::circuit::Policy {
    crate::circuit::Policy {
        failures: cfg.circuit_failures,
        cooldown_secs: i64::try_from(cfg.circuit_cooldown.as_secs()).unwrap_or(i64::MAX),
    }
}

/// Builds the reloadable part from a configuration.
pub fn build_shared(cfg: Config, stores: &Stores) -> Result<Shared, StartupError> {
    let config = Arc::new(cfg);
    let tls = Arc::new(
        TlsMaterial::load(&tls_files(&config))
            .map_err(|e| config_error(format!("{}: {e}", e.config_key())))?,
    );
    let client_tls = pki::client_config(&tls, min_version(&config))
        .map_err(|e| config_error(format!("NP_TLS_CERT: {e}")))?;
    let signing = Arc::new(load_signing_key(&config).map_err(config_error)?);
    // Every answer from a partner feeds its circuit breaker.
    let http_client: Arc<dyn crate::oauth::client::PartnerHttp> =
        Arc::new(crate::circuit::CircuitHttp {
            inner: Arc::new(http::partners::Partners::new(
                client_tls,
                http::client::ClientTimeouts::default(),
            )),
            circuits: stores.circuits.clone(),
        });
    let token_client = Arc::new(TokenClient::new(
        config.clone(),
        signing.clone(),
        http_client.clone(),
    ));
    let keys = Arc::new(KeyCache::<Jwks>::new(Box::new(JwksFetcher {
        config: config.clone(),
        http: http_client.clone(),
        tokens: token_client.clone(),
    })));
    let receiver = Arc::new(stores.receiver.reconfigured(config.clone()));
    let mitz = Arc::new(stores.mitz.reconfigured(config.clone()));
    let sender = Arc::new(crate::sender::Sender::new(
        config.clone(),
        stores.cases.clone(),
        stores.spool.clone(),
        stores.tokens.clone(),
        stores.audit.clone(),
    ));
    let token_service = TokenService {
        config: config.clone(),
        replay: stores.replay.clone(),
        tokens: stores.tokens.clone(),
        keys,
        bases: stores.cases.clone(),
        audit: stores.audit.clone(),
    };
    let jwks_json = Jwks::new(vec![signing.public_jwk()])
        .map_err(|e| config_error(format!("NP_SIGNING_KEY: {e}")))?
        .to_json()
        .into_bytes();
    Ok(Shared {
        discovery_json: discovery_document(&config).into_bytes(),
        metadata_json: capability_statement(&config).into_bytes(),
        config,
        tls,
        signing,
        token_service,
        token_client,
        jwks_json,
        http: http_client,
        sender,
        receiver,
        mitz,
    })
}

/// Our `.well-known/smart-configuration` (spec §2.3, DESIGN.md).
pub fn discovery_document(cfg: &Config) -> String {
    serde_json::json!({
        "issuer": cfg.public_url,
        "token_endpoint": cfg.token_endpoint(),
        "token_url": cfg.token_endpoint(),
        "jwks_uri": cfg.jwks_uri(),
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["PS256", "PS384", "PS512", "ES256", "ES384", "ES512"],
        "capabilities": [],
    })
    .to_string()
}

/// Our STU3 CapabilityStatement: what this build serves.
pub fn capability_statement(cfg: &Config) -> String {
    serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::util::time::rfc3339(now_unix()),
        "kind": "instance",
        "software": {"name": "np-agent", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "np-agent edge agent", "url": format!("{}/fhir", cfg.public_url)},
        "fhirVersion": "3.0.2",
        "acceptUnknown": "no",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://hl7.org/fhir/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": cfg.token_endpoint()}]
                }]
            },
            "resource": []
        }]
    })
    .to_string()
}

/// The request router for the partner-facing listener.
pub struct Router {
    shared: RwLock<Arc<Shared>>,
    stores: Arc<Stores>,
    /// Wakes the spool workers after a notification was stored.
    waker: std::sync::OnceLock<crate::worker::Waker>,
}

impl Router {
    pub fn new(shared: Shared, stores: Arc<Stores>) -> Router {
        Router {
            shared: RwLock::new(Arc::new(shared)),
            stores,
            waker: std::sync::OnceLock::new(),
        }
    }

    /// The current shared state.
    pub fn current(&self) -> Arc<Shared> {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the shared state (reload).
    pub fn replace(&self, shared: Shared) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(shared);
    }

    /// The configured partner the peer's certificate belongs to: exactly one, or none.
    pub fn partner_of<'a>(&self, shared: &'a Shared, req: &Request) -> Option<&'a Partner> {
        let leaf = req.peer.certs.first()?;
        let id = pki::peer_identity(leaf.as_ref()).ok()?;
        let mut matches = shared
            .config
            .partners
            .iter()
            .filter(|p| p.cert.matches(&id));
        let partner = matches.next()?;
        if matches.next().is_some() {
            log::warn!(
                "event=tls.ambiguous_partner rid={} cert_sha256={}",
                Q(&req.request_id),
                id.fingerprint()
            );
            return None;
        }
        Some(partner)
    }
}

impl Router {
    /// FHIR data and Task endpoints: a partner certificate and a bearer token
    /// our token endpoint issued to that partner.
    fn fhir(&self, shared: &Shared, req: &Request) -> Response {
        let now = now_unix();
        let Some(partner) = self.partner_of(shared, req) else {
            return json_outcome(&Refusal::forbidden(
                "the TLS client certificate does not belong to a configured partner",
            ));
        };
        let Some(twiin) = partner.as_twiin() else {
            return json_outcome(&Refusal::forbidden("this endpoint is for twiin partners"));
        };
        let grant = match self.bearer(req, partner, now) {
            Ok(g) => g,
            Err(resp) => return resp,
        };
        let rest = &req.path["/fhir".len()..];
        if rest == "/Task" || rest.starts_with("/Task/") && req.method != "GET" {
            return match (grant.kind(), req.method.as_str()) {
                (crate::oauth::TokenKind::Notify, "POST") if rest == "/Task" => {
                    if let Some(busy) = self.backpressure(req, partner, "/fhir/Task", "task.refused") {
                        return busy;
                    }
                    let resp = shared.receiver.notify(twiin, &grant, req, now);
                    if resp.status == 201 {
                        if let Some(w) = self.waker.get() {
                            w.wake();
                        }
                    }
                    resp
                }
                (crate::oauth::TokenKind::Notify, "PUT") => shared.receiver.cancel(twiin, &grant, req, now),
                (crate::oauth::TokenKind::Notify, _) => json_outcome(&Refusal::method_not_allowed(
                    "POST, PUT",
                    "use POST /fhir/Task or PUT /fhir/Task?identifier=…",
                )),
                (crate::oauth::TokenKind::Pull, _) => json_outcome(
                    &Refusal::forbidden(
                        "a pull token cannot send notifications; get a token without authorization_base",
                    )
                    .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
                ),
            };
        }
        match grant.kind() {
            crate::oauth::TokenKind::Pull => crate::serve::handle(
                &self.stores.cases,
                &grant,
                &crate::serve::ServeRequest {
                    method: &req.method,
                    path: rest,
                    query: req.query.as_deref(),
                    accept: req.header("accept"),
                    request_id: &req.request_id,
                },
                &self.stores.audit,
                &format!("{}/fhir", shared.config.public_url),
                now,
            ),
            crate::oauth::TokenKind::Notify => json_outcome(
                &Refusal::forbidden(
                    "a notify token does not read data; get a token with the authorization base",
                )
                .header("WWW-Authenticate", "Bearer error=\"insufficient_scope\""),
            ),
        }
    }

    /// The 503 for new work while the disk is nearly full (counted by
    /// `endpoint`, logged as `event`), or `None` when there is room.
    fn backpressure(
        &self,
        req: &Request,
        partner: &Partner,
        endpoint: &'static str,
        event: &str,
    ) -> Option<Response> {
        let pressure = self.stores.disk.check()?;
        self.stores.metrics.inc(
            crate::ops::metrics::BACKPRESSURE_REFUSED,
            &[("endpoint", endpoint)],
        );
        log::info!(
            "event={event} rid={} partner={} status=503 reason=backpressure cause={} free={} min={}",
            Q(&req.request_id),
            partner.name,
            pressure.reason,
            pressure.free,
            pressure.min
        );
        Some(json_outcome(&pressure.refusal()))
    }

    /// Mitz consent notification intake: the certificate of a `mitz`
    /// partner is the whole authentication (DESIGN.md); no bearer token.
    fn mitz(&self, shared: &Shared, req: &Request) -> Response {
        let mitz = match self.mitz_caller(shared, req) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        if let Some(busy) = self.backpressure(req, mitz.partner, "/mitz", "mitz.refused") {
            return busy;
        }
        let intake = shared.mitz.intake(mitz, req, now_unix());
        if intake.queued {
            if let Some(w) = self.waker.get() {
                w.wake();
            }
        }
        intake.response
    }

    /// The `mitz` partner calling the intake with `POST`, or the refusal
    /// (403 certificate or partner kind, 405 method).
    fn mitz_caller<'a>(
        &self,
        shared: &'a Shared,
        req: &Request,
    ) -> Result<MitzPartner<'a>, Response> {
        let refused = |partner: &str, r: Refusal| {
            log::info!(
                "event=mitz.refused rid={} partner={partner} status={} code={} reason={}",
                Q(&req.request_id),
                r.status,
                r.code.as_str(),
                Q(r.reason())
            );
            json_outcome(&r)
        };
        let Some(partner) = self.partner_of(shared, req) else {
            return Err(refused(
                "-",
                Refusal::forbidden(
                    "the TLS client certificate does not belong to a configured partner",
                ),
            ));
        };
        let Some(mitz) = partner.as_mitz() else {
            return Err(refused(
                &partner.name,
                Refusal::forbidden("this endpoint is for mitz partners"),
            ));
        };
        if req.method != "POST" {
            return Err(refused(
                &partner.name,
                Refusal::method_not_allowed("POST", "POST a consent notification Bundle"),
            ));
        }
        Ok(mitz)
    }

    /// The grant behind `Authorization: Bearer …`, issued to `partner`.
    fn bearer(
        &self,
        req: &Request,
        partner: &Partner,
        now: i64,
    ) -> Result<crate::oauth::Grant, Response> {
        let unauthorized = |error: Option<&str>, why: &'static str| {
            let challenge = match error {
                Some(e) => format!("Bearer error=\"{e}\""),
                None => "Bearer".to_string(),
            };
            json_outcome(&Refusal::login(challenge, why))
        };
        let Some(value) = req.header("authorization") else {
            return Err(unauthorized(None, "a bearer token is required"));
        };
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => {
                return Err(unauthorized(
                    Some("invalid_request"),
                    "use Authorization: Bearer <token>",
                ));
            }
        };
        self.stores
            .tokens
            .check(token, &partner.name, now)
            .map_err(|e| unauthorized(Some("invalid_token"), e.reason()))
    }
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response::new(status).body("application/json", body)
}

/// The router's own refusals come before any format negotiation: JSON.
fn json_outcome(r: &Refusal) -> Response {
    r.response(Format::Json, FhirVersion::Stu3)
}

impl Handler for Router {
    fn handle(&self, req: &Request) -> Response {
        let shared = self.current();
        let path = req.path.as_str();
        let get = req.method == "GET" || req.method == "HEAD";
        match path {
            "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" if get => {
                json(200, shared.discovery_json.clone()).header("Cache-Control", "max-age=3600")
            }
            "/.well-known/jwks.json" | "/.well-known/jwks" | "/.well-known/openid-connect/jwks"
                if get =>
            {
                json(200, shared.jwks_json.clone()).header("Cache-Control", "max-age=3600")
            }
            "/fhir/metadata" if get => {
                Response::new(200).body("application/fhir+json", shared.metadata_json.clone())
            }
            "/oauth/token" => {
                if req.method != "POST" {
                    return self
                        .error_response(Some(path), 405, "use POST")
                        .header("Allow", "POST");
                }
                let partner = self.partner_of(&shared, req);
                let reply = shared.token_service.handle(
                    &TokenRequest {
                        partner,
                        content_type: req.header("content-type"),
                        body: &req.body,
                        request_id: &req.request_id,
                    },
                    now_unix(),
                );
                match reply.outcome {
                    Outcome::Issued(kind) => self.stores.metrics.token_issued(kind.name()),
                    Outcome::Refused(reason) => self.stores.metrics.token_refused(reason.label()),
                    Outcome::Http => self.stores.metrics.token_refused("http"),
                }
                token_response(reply)
            }
            _ if is_mitz_path(path) => self.mitz(&shared, req),
            _ if path.starts_with("/fhir/") || path == "/fhir" => self.fhir(&shared, req),
            _ => json(404, br#"{"error":"not_found"}"#.to_vec()),
        }
    }

    fn endpoint_label(&self, path: &str) -> &'static str {
        match path {
            "/oauth/token" => "/oauth/token",
            "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" => {
                "/.well-known/smart-configuration"
            }
            "/.well-known/jwks.json" | "/.well-known/jwks" | "/.well-known/openid-connect/jwks" => {
                "/.well-known/jwks"
            }
            "/fhir/metadata" => "/fhir/metadata",
            "/fhir/Task" => "/fhir/Task",
            p if is_mitz_path(p) => "/mitz",
            p if p.starts_with("/fhir/") => "/fhir/{type}",
            _ => "other",
        }
    }

    fn error_response(&self, path: Option<&str>, status: u16, reason: &str) -> Response {
        if path == Some("/oauth/token") {
            return token_response(crate::oauth::endpoint::reply_http_error(status, reason));
        }
        let code = match status {
            413 => IssueType::TooCostly,
            405 => IssueType::NotSupported,
            _ => IssueType::Invalid,
        };
        json_outcome(&Refusal::new(status, code, reason.to_string()))
    }

    /// A body over the limit on a Mitz intake path: the checks that come
    /// before size in DESIGN.md's order (caller, method, `Accept`,
    /// `Content-Type`) still answer first.
    fn refuse_by_head(&self, req: &Request) -> Option<Response> {
        if !is_mitz_path(&req.path) {
            return None;
        }
        let shared = self.current();
        match self.mitz_caller(&shared, req) {
            Ok(partner) => shared.mitz.refuse_by_head(partner, req),
            Err(resp) => Some(resp),
        }
    }
}

/// The Mitz intake paths: the R4 base (`/fhir/R4`, spec §3) and
/// `/mitz/fhir`, each also with `/Bundle`.
fn is_mitz_path(path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    matches!(
        path,
        "/fhir/R4" | "/fhir/R4/Bundle" | "/mitz/fhir" | "/mitz/fhir/Bundle"
    )
}

fn token_response(reply: crate::oauth::endpoint::TokenReply) -> Response {
    let mut resp = Response::new(reply.status);
    for (k, v) in reply.headers {
        resp = resp.header(k, v);
    }
    resp.body("application/json;charset=UTF-8", reply.body)
}

fn limits(cfg: &Config) -> http::Limits {
    http::Limits {
        max_connections: cfg.max_connections,
        handshake_timeout: cfg.idle_timeout.min(Duration::from_secs(10)),
        idle_timeout: cfg.idle_timeout,
        max_body: cfg.max_body,
        ..http::Limits::default()
    }
}

enum Signal {
    Reload,
    Stop,
}

/// Runs the daemon until SIGTERM/SIGINT. Returns the exit code.
pub fn run(cfg: Config, env_file: Option<PathBuf>) -> i32 {
    crate::ops::logging::init(cfg.log_level);
    match serve(cfg, env_file) {
        Ok(()) => 0,
        Err(e) => {
            log::error!(
                "event=startup.failed exit={} error={}",
                e.exit,
                Q(&e.message)
            );
            e.exit
        }
    }
}

fn serve(cfg: Config, env_file: Option<PathBuf>) -> Result<(), StartupError> {
    let source = match &env_file {
        Some(f) => Source::File(f.clone()),
        None => Source::Process,
    };
    let metrics = Arc::new(Metrics::new());
    let stores = Arc::new(Stores::open(&cfg, metrics.clone())?);
    let listen = cfg.listen;
    let admin_listen = cfg.admin_listen;
    let lim = limits(&cfg);
    let min = min_version(&cfg);
    let shared = build_shared(cfg, &stores)?;
    let server_tls = pki::server_config(&shared.tls, min)
        .map_err(|e| config_error(format!("NP_TLS_CERT: {e}")))?;
    startup_line(&shared, &env_file);
    let router = Arc::new(Router::new(shared, stores.clone()));

    let listener = std::net::TcpListener::bind(listen).map_err(|e| StartupError {
        exit: 1,
        message: format!("NP_LISTEN: cannot listen on {listen}: {e}"),
    })?;
    let admin = std::net::TcpListener::bind(admin_listen).map_err(|e| StartupError {
        exit: 1,
        message: format!("NP_ADMIN_LISTEN: cannot listen on {admin_listen}: {e}"),
    })?;
    let slot = Arc::new(http::TlsSlot::new(server_tls));
    let server = http::Server::start_with_classifier(
        listener,
        slot.clone(),
        router.clone(),
        lim,
        metrics.clone(),
        pki::classify_tls_error,
    )
    .map_err(|e| StartupError {
        exit: 1,
        message: format!("NP_LISTEN: {e}"),
    })?;
    let ready = Arc::new(AtomicBool::new(false));
    let admin_server = http::admin::AdminServer::start(admin, metrics.clone(), ready.clone())
        .map_err(|e| StartupError {
            exit: 1,
            message: format!("NP_ADMIN_LISTEN: {e}"),
        })?;

    let dispatcher = crate::worker::Dispatcher::start_with(
        stores.spool.clone(),
        handlers(&router),
        crate::worker::Settings::default(),
        crate::worker::Guards {
            circuits: stores.circuits.clone(),
            metrics: metrics.clone(),
            retry: stores.retry.clone(),
        },
    )
    .map_err(|e| StartupError {
        exit: 1,
        message: format!("cannot start the spool workers: {e}"),
    })?;
    let _ = router.waker.set(dispatcher.waker());
    let stop_outbox = Arc::new(AtomicBool::new(false));
    let outbox = spawn_outbox_thread(router.clone(), stop_outbox.clone(), dispatcher.waker())?;
    let (tx, rx) = mpsc::channel();
    spawn_signal_thread(tx)?;
    ready.store(true, Ordering::SeqCst);
    notify::notify("READY=1");
    log::info!(
        "event=ready listen={} admin={}",
        server.local_addr(),
        admin_server.local_addr()
    );

    let watchdog = notify::watchdog_interval().map(|d| d / 2);
    let mut last_tls_reload = Instant::now();
    let mut last_sweep = Instant::now();
    let mut expiry = crate::certwatch::ExpiryWatch::new();
    loop {
        expiry.tick(&router.current().tls);
        let tick = watchdog
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        match rx.recv_timeout(tick) {
            Ok(Signal::Stop) => break,
            Ok(Signal::Reload) => {
                notify::notify("RELOADING=1");
                reload(&router, &slot, &stores, &source);
                last_tls_reload = Instant::now();
                notify::notify("READY=1");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if watchdog.is_some() {
            notify::notify("WATCHDOG=1");
        }
        if last_tls_reload.elapsed() >= TLS_RELOAD_INTERVAL {
            reload_tls(&router, &slot, &stores);
            last_tls_reload = Instant::now();
        }
        if last_sweep.elapsed() >= Duration::from_secs(60) {
            let now = now_unix();
            let tokens = stores.tokens.sweep(now);
            let jtis = stores.replay.sweep(now).unwrap_or(0);
            log::debug!("event=sweep tokens={tokens} jtis={jtis}");
            last_sweep = Instant::now();
        }
    }
    ready.store(false, Ordering::SeqCst);
    notify::notify("STOPPING=1");
    log::info!("event=stopping grace_s={}", DRAIN_GRACE.as_secs());
    stop_outbox.store(true, Ordering::SeqCst);
    let started = Instant::now();
    server.shutdown(DRAIN_GRACE);
    dispatcher.shutdown(DRAIN_GRACE.saturating_sub(started.elapsed()));
    let _ = outbox.join();
    admin_server.shutdown();
    log::info!("event=stopped");
    Ok(())
}

/// The spool work handlers; each runs with the state current at that moment,
/// so a reload applies to the next attempt.
fn handlers(
    router: &Arc<Router>,
) -> std::collections::HashMap<String, Arc<dyn crate::worker::Handler>> {
    let mut map: std::collections::HashMap<String, Arc<dyn crate::worker::Handler>> =
        std::collections::HashMap::new();
    let send: Arc<dyn crate::worker::Handler> = Arc::new(SendWork(router.clone()));
    for kind in crate::sender::Sender::KINDS {
        map.insert(kind.to_string(), send.clone());
    }
    map.insert(
        crate::receiver::KIND_PULL.to_string(),
        Arc::new(PullWork(router.clone())),
    );
    map.insert(
        crate::mitz::KIND_MITZ.to_string(),
        Arc::new(MitzWork(router.clone())),
    );
    map
}

struct MitzWork(Arc<Router>);

impl crate::worker::Handler for MitzWork {
    fn run(&self, item: &crate::spool::Item, _now: i64) -> crate::spool::Outcome {
        self.0.current().mitz.store(item)
    }
}

struct PullWork(Arc<Router>);

impl crate::worker::Handler for PullWork {
    fn run(&self, item: &crate::spool::Item, now: i64) -> crate::spool::Outcome {
        let shared = self.0.current();
        shared
            .receiver
            .pull(item, &shared.token_client, shared.http.as_ref(), now)
    }
}

struct SendWork(Arc<Router>);

impl crate::worker::Handler for SendWork {
    fn run(&self, item: &crate::spool::Item, now: i64) -> crate::spool::Outcome {
        let shared = self.0.current();
        shared
            .sender
            .deliver(item, &shared.token_client, shared.http.as_ref(), now)
    }
}

/// Scans the outbox every `NP_POLL_INTERVAL` and wakes the workers when
/// something was queued.
fn spawn_outbox_thread(
    router: Arc<Router>,
    stop: Arc<AtomicBool>,
    wake: crate::worker::Waker,
) -> Result<std::thread::JoinHandle<()>, StartupError> {
    std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let shared = router.current();
                // Low on disk: skip the pass. The exports stay in the outbox,
                // which is safe; the guard logged why, once.
                if router.stores.disk.check().is_none() {
                    let report = shared.sender.scan(now_unix());
                    if report.accepted + report.updated + report.cancelled > 0 {
                        wake.wake();
                    }
                }
                let interval = shared.config.poll_interval;
                drop(shared);
                let until = Instant::now() + interval;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100).min(interval));
                }
            }
        })
        .map_err(|e| StartupError {
            exit: 1,
            message: format!("cannot start the outbox thread: {e}"),
        })
}

fn spawn_signal_thread(tx: mpsc::Sender<Signal>) -> Result<(), StartupError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM]).map_err(|e| {
            StartupError {
                exit: 1,
                message: format!("cannot install signal handlers: {e}"),
            }
        })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let msg = if sig == SIGHUP {
                    Signal::Reload
                } else {
                    Signal::Stop
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| StartupError {
            exit: 1,
            message: format!("cannot start the signal thread: {e}"),
        })?;
    Ok(())
}

fn startup_line(shared: &Shared, env_file: &Option<PathBuf>) {
    let cfg = &shared.config;
    let days = (shared.tls.leaf_not_after - now_unix()) / 86_400;
    let partners: Vec<&str> = cfg.partners.iter().map(|p| p.name.as_str()).collect();
    log::info!(
        "event=startup version={} config={} listen={} admin={} public_url={} partners={} cert_days_left={} signing_alg={} kid={}",
        env!("CARGO_PKG_VERSION"),
        Q(&env_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into())),
        cfg.listen,
        cfg.admin_listen,
        Q(&cfg.public_url),
        Q(&partners.join(",")),
        days,
        shared.signing.alg().name(),
        Q(shared.signing.kid())
    );
}

/// SIGHUP: re-read the configuration and everything it names; keep the old
/// state when anything is wrong.
fn reload(router: &Router, slot: &http::TlsSlot, stores: &Stores, source: &Source) {
    match config::load(source) {
        Ok(cfg) => rebuild(router, slot, stores, cfg, "reload"),
        Err(errors) => {
            for e in &errors {
                log::error!(
                    "event=reload.refused reason=config error={}",
                    Q(&e.to_string())
                );
            }
        }
    }
}

/// Hourly: re-read certificates, keys and CRLs (both the server and the
/// client side) with the current configuration.
fn reload_tls(router: &Router, slot: &http::TlsSlot, stores: &Stores) {
    let cfg = (*router.current().config).clone();
    rebuild(router, slot, stores, cfg, "tls");
}

/// Builds everything from `cfg` and swaps it in atomically, or logs why not
/// and keeps the running state. `what` names the trigger in the log.
fn rebuild(router: &Router, slot: &http::TlsSlot, stores: &Stores, cfg: Config, what: &str) {
    let min = min_version(&cfg);
    let built = build_shared(cfg, stores).and_then(|shared| {
        pki::server_config(&shared.tls, min)
            .map(|server_tls| (shared, server_tls))
            .map_err(|e| config_error(format!("NP_TLS_CERT: {e}")))
    });
    match built {
        Ok((shared, server_tls)) => {
            stores.circuits.set_policy(circuit_policy(&shared.config));
            *stores.retry.write().unwrap_or_else(|p| p.into_inner()) = retry_policy(&shared.config);
            stores.disk.set_min_free(shared.config.min_free_disk);
            slot.set(server_tls);
            router.replace(shared);
            log::info!("event={what}.done");
        }
        Err(e) => log::error!("event={what}.refused error={}", Q(&e.message)),
    }
}
