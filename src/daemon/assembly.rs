//! Assembly: configuration, TLS material, keys and stores become the parts
//! of a running agent. [`Stores`] live for the whole process; [`Shared`] is
//! everything a reload replaces at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::assertion::ReplayCache;
use crate::audit::AuditLog;
use crate::cases::CaseStore;
use crate::config::{self, Config};
use crate::http;
use crate::jose::{Jwks, SigningKey};
use crate::oauth::TokenStore;
use crate::oauth::client::{JwksFetcher, TokenClient};
use crate::oauth::endpoint::TokenService;
use crate::oauth::keycache::KeyCache;
use crate::ops::metrics::Metrics;
use crate::pki::{self, TlsFiles, TlsMaterial};
use crate::records::RecordStore;
use crate::spool::Spool;
use crate::util::time::now_unix;

use super::router::Router;

/// A start-up failure and the exit code it maps to.
#[derive(Debug)]
pub struct StartupError {
    pub exit: i32,
    pub message: String,
}

pub(super) fn config_error(message: impl Into<String>) -> StartupError {
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

pub(super) fn tls_files(cfg: &Config) -> TlsFiles {
    TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        trust: cfg.tls_trust.clone(),
        crl_dir: cfg.tls_crl_dir.clone(),
    }
}

/// Loads everything key-shaped the configuration names, reporting every
/// problem (for `check-config` and start-up).
pub fn check_material(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    match TlsMaterial::load(&tls_files(cfg)) {
        Ok(m) => {
            if let Err(e) = pki::server_config(&m, cfg.tls_min_version) {
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
    /// The release decision for partners whose consent is `mitz`.
    pub consent: Arc<dyn crate::consent::ConsentCheck>,
    /// Mitz subscriptions: the sender's after-publish step and the worker.
    pub subscriptions: Arc<crate::mitz::subscribe::Subscriptions>,
    /// Our referrals in the national referral index: the sender's
    /// publication hook (with `nvi` partners) and the worker.
    pub localisation: Arc<crate::nvi::Localisation>,
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
    /// Records published to Zorgviewer partners, indexed by patient.
    pub records: Arc<RecordStore>,
    /// The receiver's folders and locks; each configuration gets a
    /// `reconfigured` copy sharing them.
    pub receiver: crate::receiver::Receiver,
    /// The Mitz intake's consent view and lock; reconfigured like the receiver.
    pub mitz: crate::mitz::Mitz,
    /// The Mitz subscriptions made (`NP_STATE_DIR/mitz/subscriptions`).
    pub subscriptions: Arc<crate::mitz::subscribe::SubscriptionStore>,
    /// Our referrals in the national index (`NP_STATE_DIR/nvi`).
    pub registrations: Arc<crate::nvi::store::RegistrationStore>,
    /// Tokens of the `prs` and `nvi` partners; kept across reloads.
    pub service_tokens: Arc<crate::nvi::token::ServiceTokens>,
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
        let subscriptions = crate::mitz::subscribe::SubscriptionStore::open(state)
            .map_err(|e| io(format!("NP_STATE_DIR: {e}")))?;
        let registrations = crate::nvi::store::RegistrationStore::open(state)
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
            subscriptions: Arc::new(subscriptions),
            registrations: Arc::new(registrations),
            service_tokens: Arc::new(crate::nvi::token::ServiceTokens::new()),
            spool,
            cases: Arc::new(CaseStore::open(state).map_err(|e| io(e.to_string()))?),
            records: Arc::new(RecordStore::open(state).map_err(|e| io(e.to_string()))?),
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
    let client_tls = pki::client_config(&tls, config.tls_min_version)
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
    // The release decision: Mitz's closed question when a Mitz partner has
    // a URL (the first one), else the consent view notifications keep.
    let consent: Arc<dyn crate::consent::ConsentCheck> = match config.mitz_apis().next() {
        Some(api) => Arc::new(
            crate::mitz::closed::ClosedQuestion::new(
                crate::mitz::closed::Settings::new(
                    api.name,
                    api.url,
                    config.org_category.as_deref().unwrap_or_default(),
                    config.mitz_decision_ttl,
                ),
                http_client.clone(),
                stores.metrics.clone(),
            )
            .with_circuits(stores.circuits.clone()),
        ),
        None => stores.mitz.consent_view_shared(),
    };
    let mitz = Arc::new(
        stores
            .mitz
            .reconfigured(config.clone())
            .with_listener(consent.clone()),
    );
    let subscriptions = Arc::new(crate::mitz::subscribe::Subscriptions::new(
        config.clone(),
        stores.spool.clone(),
        stores.audit.clone(),
        stores.subscriptions.clone(),
    ));
    let localisation = Arc::new(crate::nvi::Localisation::new(
        config.clone(),
        crate::nvi::Stores {
            spool: stores.spool.clone(),
            audit: stores.audit.clone(),
            registrations: stores.registrations.clone(),
            cases: stores.cases.clone(),
            records: stores.records.clone(),
            tokens: stores.service_tokens.clone(),
        },
    ));
    let mut sender = crate::sender::Sender::new(
        config.clone(),
        stores.cases.clone(),
        stores.records.clone(),
        stores.spool.clone(),
        stores.tokens.clone(),
        stores.audit.clone(),
    )
    .with_after_publish(subscriptions.clone());
    // Off unless configured: without an nvi partner publishing sets off nothing.
    if config.nvi_partners().next().is_some() {
        sender = sender.with_publication(localisation.clone());
    }
    let sender = Arc::new(sender);
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
        discovery_json: crate::oauth::discovery::document(&config).into_bytes(),
        metadata_json: crate::serve::capability::statement(&config, now_unix()).into_bytes(),
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
        subscriptions,
        localisation,
        consent,
    })
}

/// The spool work handlers; each runs with the state current at that moment,
/// so a reload applies to the next attempt.
pub(super) fn handlers(router: &Arc<Router>) -> HashMap<String, Arc<dyn crate::worker::Handler>> {
    let mut map: HashMap<String, Arc<dyn crate::worker::Handler>> =
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
    map.insert(
        crate::mitz::subscription::KIND_SUBSCRIBE.to_string(),
        Arc::new(SubscribeWork(router.clone())),
    );
    let localise: Arc<dyn crate::worker::Handler> = Arc::new(LocaliseWork(router.clone()));
    for kind in crate::nvi::KINDS {
        map.insert(kind.to_string(), localise.clone());
    }
    map
}

struct LocaliseWork(Arc<Router>);

impl crate::worker::Handler for LocaliseWork {
    fn run(&self, item: &crate::spool::Item, now: i64) -> crate::spool::Outcome {
        let shared = self.0.current();
        shared.localisation.run(item, shared.http.as_ref(), now)
    }
}

struct SubscribeWork(Arc<Router>);

impl crate::worker::Handler for SubscribeWork {
    fn run(&self, item: &crate::spool::Item, now: i64) -> crate::spool::Outcome {
        let shared = self.0.current();
        shared.subscriptions.run(item, shared.http.as_ref(), now)
    }
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
