//! Delivery under partner faults: a real `np-agent run` sending to
//! a partner that answers 500, 503 with `Retry-After`, 401 for a fresh token,
//! resets connections, hangs, and is down for a while. Everything arrives
//! once the partner recovers; the log times show the back-off growing and
//! `Retry-After` honoured; the agent uses almost no CPU while it waits; a
//! partner down for longer than `NP_RETRY_MAX_AGE` gets its work given up
//! with a warn line and a metric; and one dead partner's open circuit does
//! not delay the exchange with a healthy one (two real agents).
//!
//! The faulty partner is scripted on `np_agent::http::Server` over mTLS
//! (`common::partner`) only because a real np-agent never answers 500 or a
//! 401 for a token it just issued; transport faults come from
//! `common::proxy` in front of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TempDir;
use common::agent::{AgentSetup, Party, World};
use common::observe::{self, Line, events, wait_until};
use common::partner::{Answer, ScriptedPartner};
use common::proxy::{Mode, Proxy};

const LIMIT: Duration = Duration::from_secs(90);

fn sample() -> String {
    np_agent::demo::SAMPLE.to_string()
}

/// Writes an export the way an EHR must: temp name, then rename.
fn export(dir: &Path, case: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{case}.json.part"));
    std::fs::write(&tmp, sample()).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{case}.json"))).unwrap();
}

/// Agent "hospa" sending to the scripted partner "vip" behind a proxy.
struct Rig {
    tmp: TempDir,
    world: World,
    setup: AgentSetup,
    partner: ScriptedPartner,
    proxy: Proxy,
}

fn rig(label: &str, extra: &[(&str, &str)]) -> Rig {
    let tmp = TempDir::new(label);
    let world = World::new();
    let vip = Party::new(&world, tmp.path(), "vip", "11112222", &[]);
    let partner = ScriptedPartner::start(&vip);
    let proxy = Proxy::start(partner.addr.port());
    let mut setup = AgentSetup::new(&world, tmp.path(), "hospa", "12345678");
    setup
        .env
        .set("NP_PARTNERS", "vip")
        .set(
            "NP_PARTNER_VIP_FHIR_BASE",
            format!("https://localhost:{}/fhir", proxy.port),
        )
        .set("NP_PARTNER_VIP_ORG", "ura:11112222")
        .set("NP_PARTNER_VIP_CERT", "ura:11112222")
        .set("NP_POLL_INTERVAL", "1s")
        .set("NP_LOG", "info");
    for (k, v) in extra {
        setup.env.set(k, *v);
    }
    Rig {
        tmp,
        world,
        setup,
        partner,
        proxy,
    }
}

/// The times (ms) of every attempt at `case`'s notification: its failures
/// and its success, in order.
fn attempts(log: &str, case: &str) -> Vec<i64> {
    let mut t: Vec<i64> = events(log, "notify.failed", &[("case", case)])
        .iter()
        .chain(events(log, "notify.sent", &[("case", case)]).iter())
        .map(|l: &Line| l.ts_ms)
        .collect();
    t.sort_unstable();
    t
}

fn gaps(times: &[i64]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1000.0)
        .collect()
}

#[test]
fn a_flaky_partner_gets_everything_with_growing_backoff_retry_after_and_a_fresh_token() {
    // Back-off shortened so the test takes a minute, not hours: the n-th
    // wait is random in [1, min(8, 2^(n-1))] s. The circuit stays out of the
    // way here (its own test is below).
    let r = rig(
        "faults-flaky",
        &[
            ("NP_RETRY_FIRST", "1s"),
            ("NP_RETRY_CAP", "8s"),
            ("NP_CIRCUIT_FAILURES", "1000"),
        ],
    );
    let a = r.setup.start();
    let outbox = r.setup.outbox("vip");
    let log = || a.log();

    // 1. A 401 for a token the partner just issued: one fresh token, the
    //    same attempt, no failure.
    r.partner.push(&[Answer::Status(401)]);
    export(&outbox, "auth");
    wait_until(LIMIT, || r.partner.accepted().len() == 1, log);
    let hits = r.partner.hits();
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![401, 201]
    );
    assert_ne!(hits[0].token, hits[1].token, "a fresh token after the 401");
    assert_eq!(r.partner.tokens_issued(), 2);
    assert_eq!(
        events(&log(), "notify.unauthorized", &[("case", "auth")]).len(),
        1
    );
    assert!(events(&log(), "notify.failed", &[("case", "auth")]).is_empty());

    // 2. 503 with Retry-After: 3 — longer than the first back-off (1 s).
    r.partner.push(&[Answer::RetryAfter(3)]);
    export(&outbox, "ra");
    wait_until(LIMIT, || r.partner.accepted().len() == 2, log);
    let hits: Vec<_> = r.partner.hits().into_iter().skip(2).collect();
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![503, 201]
    );
    let waited = hits[1].at - hits[0].at;
    assert!(
        waited >= Duration::from_millis(2_900),
        "Retry-After: 3 honoured, waited {waited:?}"
    );
    let retry = events(&log(), "work.retry", &[("partner", "vip")]);
    // `in_s` counts from the log line's second; the wait runs from the next one.
    assert!(
        retry
            .iter()
            .any(|l| matches!(l.get("in_s"), Some("3" | "4"))),
        "{retry:?}"
    );
    let g = gaps(&attempts(&log(), "ra"));
    assert!(g.len() == 1 && g[0] >= 2.95 && g[0] < 10.0, "{g:?}");

    // 3. 500 on every request for a while, six cases at once.
    r.partner.set_default(Answer::Status(500));
    let cases: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    for c in &cases {
        export(&outbox, c);
    }
    wait_until(
        LIMIT,
        || {
            let l = log();
            cases
                .iter()
                .all(|c| events(&l, "notify.failed", &[("case", c)]).len() >= 5)
        },
        log,
    );
    r.partner.set_default(Answer::Accept);
    wait_until(LIMIT, || r.partner.accepted().len() == 8, log);
    let l = log();
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for c in &cases {
        let g = gaps(&attempts(&l, c));
        assert!(g.len() >= 5, "{c}: {g:?}");
        for (n, gap) in g.iter().enumerate() {
            // Wait n+1 is at most min(8, 2^n) s, plus the scheduler's tick
            // and a loaded machine; never a busy loop under the 1 s floor.
            let ceiling = f64::from(1u32 << n.min(3));
            assert!(*gap >= 0.95, "{c}: gap {n} is {gap} s: {g:?}");
            assert!(*gap <= ceiling + 3.0, "{c}: gap {n} is {gap} s: {g:?}");
        }
        first.push(g[0]);
        later.extend(g[3..].iter().copied());
    }
    // The first wait is exactly the 1 s floor; from the fourth the ceiling is
    // 8 s, so across 6 cases some waits are longer (all ≤ 2 s: p < 1e-5).
    let max_first = first.iter().copied().fold(0.0, f64::max);
    let max_later = later.iter().copied().fold(0.0, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        max_later >= 2.5 && mean(&later) > mean(&first),
        "back-off grows: first {first:?}, later {later:?}"
    );
    assert!(max_first < 3.5, "{first:?}");

    // 4. Transport faults: connection reset, a partner that never answers,
    //    then one that is down. The agent waits without burning CPU.
    r.proxy.set_mode(Mode::Reset);
    export(&outbox, "net");
    wait_until(
        LIMIT,
        || events(&log(), "notify.failed", &[("case", "net")]).len() >= 2,
        log,
    );
    r.proxy.set_mode(Mode::Blackhole);
    let before = events(&log(), "notify.failed", &[("case", "net")]).len();
    let blackholed = r.proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    wait_until(
        Duration::from_secs(150),
        || events(&log(), "notify.failed", &[("case", "net")]).len() > before,
        log,
    );
    assert!(r.proxy.refused.load(std::sync::atomic::Ordering::SeqCst) > blackholed);
    r.proxy.set_mode(Mode::Down);
    let share = observe::cpu_share(a.pid, Duration::from_secs(8));
    assert!(
        share < 0.05,
        "the agent used {:.1} % of a core while waiting for a down partner",
        share * 100.0
    );
    r.proxy.set_mode(Mode::Up);
    wait_until(LIMIT, || r.partner.accepted().len() == 9, log);
    let failed = events(&log(), "notify.failed", &[("case", "net")]);
    assert!(failed.len() >= 3, "{failed:?}");
    assert!(
        failed.iter().all(|l| l.get("retry") == Some("true")),
        "{failed:?}"
    );
    let reasons: Vec<&str> = failed.iter().filter_map(|l| l.get("reason")).collect();
    assert!(
        reasons.iter().any(|r| r.contains("reset"))
            && reasons.iter().any(|r| r.contains("timeout")),
        "a reset and a timeout among {reasons:?}"
    );

    // Every notification arrived; none twice.
    std::thread::sleep(Duration::from_secs(1));
    let hits = r.partner.hits();
    let accepted: Vec<_> = hits.iter().filter(|h| h.status == 201).collect();
    assert_eq!(accepted.len(), 9, "{hits:?}");
    assert!(events(&log(), "work.dead", &[]).is_empty(), "{}", log());
    let m = observe::metrics(r.setup.admin_port);
    assert!(
        observe::sample(&m, "np_work_retries_total{kind=\"notify\"}").unwrap() >= 30.0,
        "{m}"
    );
    assert_eq!(
        observe::sample(&m, "np_work_done_total{kind=\"notify\"}"),
        Some(9.0),
        "{m}"
    );
    assert_eq!(
        observe::sample(&m, "np_spool_items{state=\"retry\"}"),
        Some(0.0)
    );
    assert_eq!(a.stop().code(), Some(0));
}

#[test]
fn work_older_than_the_retry_age_is_given_up_with_a_warn_line_and_a_metric() {
    let r = rig(
        "faults-giveup",
        &[
            ("NP_RETRY_FIRST", "1s"),
            ("NP_RETRY_CAP", "2s"),
            ("NP_RETRY_MAX_AGE", "6s"),
        ],
    );
    r.partner.set_default(Answer::Status(503));
    let a = r.setup.start();
    export(&r.setup.outbox("vip"), "lost");
    wait_until(
        LIMIT,
        || !events(&a.log(), "work.dead", &[]).is_empty(),
        || a.log(),
    );
    let log = a.log();
    let dead = &events(&log, "work.dead", &[])[0];
    assert!(dead.raw.contains("level=warn"), "{}", dead.raw);
    assert_eq!(dead.get("kind"), Some("notify"));
    assert_eq!(dead.get("partner"), Some("vip"));
    let reason = dead.get("reason").unwrap();
    assert!(
        reason.starts_with("gave up after") && reason.contains("answered 503"),
        "{reason}"
    );
    let m = observe::metrics(r.setup.admin_port);
    assert_eq!(
        observe::sample(&m, "np_work_dead_total{kind=\"notify\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(observe::sample(&m, "np_work_retries_total{kind=\"notify\"}").unwrap() >= 1.0);
    assert_eq!(
        observe::sample(&m, "np_spool_items{state=\"dead\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        observe::sample(&m, "np_spool_items{state=\"queued\"}"),
        Some(0.0),
        "{m}"
    );
    // Nothing of the patient or the token in the log.
    assert!(!log.contains("scripted-token"), "{log}");
    assert_eq!(a.stop().code(), Some(0));
}

#[test]
fn a_dead_partner_opens_its_circuit_and_does_not_delay_a_healthy_one() {
    // A sends to a real agent B (healthy) and to the scripted partner "vip"
    // behind a proxy that drops every connection.
    let r = rig(
        "faults-circuit",
        &[
            ("NP_CIRCUIT_FAILURES", "3"),
            ("NP_CIRCUIT_COOLDOWN", "4s"),
            ("NP_RETRY_FIRST", "1s"),
            ("NP_RETRY_CAP", "2s"),
        ],
    );
    let mut a_setup = r.setup;
    let mut b_setup = AgentSetup::new(&r.world, r.tmp.path(), "hospb", "87654321");
    a_setup.add_agent(&b_setup);
    b_setup.add_agent(&a_setup);
    b_setup.env.set("NP_LOG", "info");
    r.proxy.set_mode(Mode::Down);
    let a = a_setup.start();
    let b = b_setup.start();
    let logs = || format!("{}\n----\n{}", a.log(), b.log());

    for i in 0..6 {
        export(&a_setup.outbox("vip"), &format!("v{i}"));
    }
    wait_until(
        LIMIT,
        || !events(&a.log(), "circuit.open", &[("partner", "vip")]).is_empty(),
        logs,
    );
    let open = events(&a.log(), "circuit.open", &[("partner", "vip")])[0].clone();
    assert_eq!(open.get("failures"), Some("3"), "{}", open.raw);
    assert!(open.raw.contains("level=warn") && open.get("retry_in_s") == Some("4"));

    // While vip's circuit is open, an export for B goes through at once.
    let started = Instant::now();
    export(&a_setup.outbox("hospb"), "healthy");
    let inbox = b_setup.inbox("hospa");
    wait_until(Duration::from_secs(30), || count_json(&inbox) == 1, logs);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "B's exchange took {took:?}");

    // Open: vip gets at most one probe per cool-down, not a try per item;
    // and the agent is idle meanwhile.
    let tried = r.proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let share = observe::cpu_share(a.pid, Duration::from_secs(8));
    let probes = r.proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) - tried;
    assert!(
        probes <= 8,
        "{probes} connections in 8 s with a 4 s (doubling) cool-down"
    );
    assert!(share < 0.05, "A used {:.1} % of a core", share * 100.0);
    let m = observe::metrics(a_setup.admin_port);
    assert_eq!(
        observe::sample(&m, "np_circuit_open{partner=\"vip\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(observe::sample(&m, "np_circuit_opened_total{partner=\"vip\"}").unwrap() >= 1.0);
    assert!(!events(&a.log(), "circuit.probe", &[("partner", "vip")]).is_empty());
    // The probe failed: open again for twice the cool-down.
    let reopened = events(&a.log(), "circuit.open", &[("probe", "failed")]);
    assert_eq!(
        reopened.first().and_then(|l| l.get("retry_in_s")),
        Some("8"),
        "{reopened:?}"
    );

    // vip recovers: the next probe closes the circuit and everything arrives.
    r.proxy.set_mode(Mode::Up);
    wait_until(
        LIMIT,
        || !events(&a.log(), "circuit.closed", &[("partner", "vip")]).is_empty(),
        logs,
    );
    wait_until(LIMIT, || r.partner.accepted().len() == 6, logs);
    let m = observe::metrics(a_setup.admin_port);
    assert_eq!(
        observe::sample(&m, "np_circuit_open{partner=\"vip\"}"),
        Some(0.0)
    );
    assert_eq!(a.stop().code(), Some(0));
    assert_eq!(b.stop().code(), Some(0));
}

fn count_json(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_json(&p);
            } else if p.extension().is_some_and(|x| x == "json")
                && !p.to_string_lossy().ends_with(".cancelled.json")
            {
                n += 1;
            }
        }
    }
    n
}
