//! The connection cap under a flood, alone in its test binary so the process's thread
//! count belongs to this test only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use http_common::*;
use np_agent::ops::metrics::CONNECTIONS_REFUSED;

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn connection_cap_refuses_at_once_and_recovers_after_idle_timeout() {
    const CAP: usize = 4;
    let idle_timeout = Duration::from_secs(3);
    let world = World::new();
    let baseline = threads();
    let limits = np_agent::http::Limits {
        max_connections: CAP,
        idle_timeout,
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);

    // Fill every slot with an idle keep-alive client.
    let mut holders: Vec<RawClient> = (0..CAP)
        .map(|_| {
            let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
            assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
            c
        })
        .collect();
    let filled_at = Instant::now();
    assert_eq!(srv.server.open_connections(), CAP);

    // A flood of new connections: each is closed at once (no TLS bytes, end of stream),
    // long before any server timeout could explain it.
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(srv.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 16];
        let n = tcp.read(&mut buf);
        assert!(
            matches!(n, Ok(0))
                || n.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "refused connection got {n:?}"
        );
        assert!(
            threads() <= baseline + CAP + 2,
            "threads {} > {} + {CAP} + 2",
            threads(),
            baseline
        );
    }
    assert!(
        filled_at.elapsed() < idle_timeout,
        "flood too slow for this check to mean anything"
    );
    assert_eq!(srv.metrics.get(CONNECTIONS_REFUSED, &[]), 50);
    assert_eq!(srv.server.open_connections(), CAP);

    // Once the idle timeout frees the slots, a legitimate client is served within the idle
    // timeout (plus a generous margin for a loaded machine).
    let start = Instant::now();
    let served = loop {
        if let Ok(mut c) = RawClient::connect(srv.addr(), world.client_config()) {
            if c.request(&get("/hello", "")).is_ok_and(|r| r.status == 200) {
                break true;
            }
        }
        if start.elapsed() > idle_timeout + Duration::from_secs(5) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(served, "no slot came free after the idle timeout");
    assert!(threads() <= baseline + CAP + 2);

    // The holders were closed by the server.
    for c in &mut holders {
        assert!(c.closed_by_server());
    }
    assert!(eventually(Duration::from_secs(5), || srv
        .server
        .open_connections()
        == 0));
    assert_eq!(srv.metrics.open_connections(), 0);
}
