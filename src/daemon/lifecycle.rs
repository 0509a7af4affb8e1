//! The life of the process: start everything in order and say `READY=1`,
//! reload on SIGHUP and refresh TLS hourly (keeping the running state when
//! the new one is wrong), and drain on SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::config::{self, Config, Source};
use crate::http;
use crate::ops::logging::Q;
use crate::ops::metrics::Metrics;
use crate::ops::notify;
use crate::pki;
use crate::util::time::now_unix;

use super::assembly::{
    Shared, StartupError, Stores, build_shared, circuit_policy, config_error, handlers,
    retry_policy,
};
use super::router::Router;

/// How often CRLs (and the rest of the TLS material) are re-read.
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(3_600);
/// How long SIGTERM waits for in-flight requests.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often finished spool items are pruned (`NP_RETENTION`); also once
/// at start-up.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3_600);

fn limits(cfg: &Config) -> http::Limits {
    http::Limits {
        max_connections: cfg.max_connections,
        // A quarter of the slots only established connections (and handshakes from
        // addresses that recently completed one with a certificate) may use.
        reserved_connections: cfg.max_connections / 4,
        max_handshakes_per_source: cfg.max_handshakes_per_address,
        handshake_timeout: cfg.handshake_timeout,
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
    let min = cfg.tls_min_version;
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
    let stop_pruning = Arc::new(AtomicBool::new(false));
    let pruning = spawn_pruning_thread(router.clone(), stop_pruning.clone())?;
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
    stop_pruning.store(true, Ordering::SeqCst);
    let started = Instant::now();
    server.shutdown(DRAIN_GRACE);
    dispatcher.shutdown(DRAIN_GRACE.saturating_sub(started.elapsed()));
    let _ = outbox.join();
    let _ = pruning.join();
    admin_server.shutdown();
    log::info!("event=stopped");
    Ok(())
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
                    if report.accepted + report.updated + report.cancelled + report.subscriptions
                        > 0
                    {
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

/// Prunes the finished spool items now and every [`PRUNE_INTERVAL`], under
/// the horizons of the configuration of the moment.
fn spawn_pruning_thread(
    router: Arc<Router>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, StartupError> {
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let horizons = {
                    let shared = router.current();
                    crate::spool::retention::Horizons::new(
                        shared.config.retention,
                        shared.config.dedupe_retention,
                    )
                };
                match router.stores.spool.prune(&horizons, now_unix()) {
                    Ok(p) if p.stripped + p.removed > 0 => log::info!(
                        "event=spool.pruned stripped={} removed={} kept={}",
                        p.stripped,
                        p.removed,
                        p.kept
                    ),
                    Ok(p) => log::debug!("event=spool.pruned stripped=0 removed=0 kept={}", p.kept),
                    Err(e) => log::error!("event=spool.prune_failed error={}", Q(&e.to_string())),
                }
                let until = Instant::now() + PRUNE_INTERVAL;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| StartupError {
            exit: 1,
            message: format!("cannot start the retention thread: {e}"),
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
    let min = cfg.tls_min_version;
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
