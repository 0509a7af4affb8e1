//! The partner listener, the admin listener and the mTLS client over real sockets on
//! 127.0.0.1 with real TLS (certificates generated per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_common::*;
use np_agent::http::admin::AdminServer;
use np_agent::http::client::{self, BodyError, ClientTimeouts};
use np_agent::ops::metrics::{CONNECTIONS_ACCEPTED, HTTP_REQUESTS, TLS_HANDSHAKE_FAILURES};

fn is_hex_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn keep_alive_round_trips_with_request_ids() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();

    let r = c.request(&get("/hello", "")).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    assert!(is_hex_id(r.header("x-request-id").unwrap()), "{r:?}");
    assert!(r.header("date").is_some() && r.header("server").is_none());
    assert_eq!(r.header("connection"), None);

    let r = c
        .request(&get("/hello", "X-Request-Id: partner-req-42\r\n"))
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("partner-req-42"));
    let r = c
        .request(&get("/hello", "X-Request-Id: has space\r\n"))
        .unwrap();
    assert!(is_hex_id(r.header("x-request-id").unwrap()));

    let r = c
        .request(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    let r = c
        .request(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.body, b"abcde");

    let r = c.request(&get("/peer?bsn=123", "")).unwrap();
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "TLSv1.3 certs=1 query=bsn=123"
    );

    // HEAD: the length of the GET body, no body bytes; the next response parses cleanly.
    let r = c
        .request(b"HEAD /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    assert!(r.body.is_empty());
    let r = c.request(&get("/missing", "")).unwrap();
    assert_eq!(r.status, 404);

    // The handler may ask to close.
    let r = c.request(&get("/close", "")).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    assert_eq!(srv.metrics.get(CONNECTIONS_ACCEPTED, &[]), 1);
    assert_eq!(
        srv.metrics
            .get(HTTP_REQUESTS, &[("endpoint", "/hello"), ("status", "200")]),
        4
    );
}

#[test]
fn pipelined_requests_answered_in_order() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    let mut burst = Vec::new();
    burst.extend(get("/hello", "X-Request-Id: one\r\n"));
    burst.extend(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: two\r\nContent-Length: 3\r\n\r\nabc");
    burst.extend(get("/peer", "X-Request-Id: three\r\n"));
    c.send(&burst).unwrap();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            c.read_response(false)
                .unwrap()
                .header("x-request-id")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["one", "two", "three"]);
}

#[test]
fn oversized_content_length_is_413_without_reading_the_body() {
    let world = World::new();
    // A long read timeout: were the server to wait for the body, the client's 5 s read
    // timeout would expire first.
    let limits = http_common::test_limits();
    let limits = np_agent::http::Limits {
        read_timeout: Duration::from_secs(30),
        body_timeout: Duration::from_secs(30),
        ..limits
    };
    let srv = TestServer::start(world.server_config(), limits);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
        c.set_read_timeout(Duration::from_secs(5));
        let head = format!(
            "POST /oauth/token HTTP/1.1\r\nHost: localhost\r\n{expect}Content-Length: 1000000000\r\n\r\n"
        );
        let r = c.request(head.as_bytes()).unwrap();
        assert_eq!(r.status, 413, "{r:?}");
        assert_eq!(r.header("x-error-shape"), Some("oauth"));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(is_hex_id(r.header("x-request-id").unwrap()));
        assert!(c.closed_by_server());
    }
    assert_eq!(
        srv.metrics.get(
            HTTP_REQUESTS,
            &[("endpoint", "/oauth/token"), ("status", "413")]
        ),
        2
    );
}

#[test]
fn expect_100_continue_when_the_length_is_acceptable() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    c.send(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .unwrap();
    let interim = c.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    let r = c.request(b"body").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
}

#[test]
fn limits_and_framing_errors_close_the_connection() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let huge_header = get("/hello", &format!("X-Big: {}\r\n", "a".repeat(5000)));
    let long_target = get(&format!("/{}", "p".repeat(2000)), "");
    let mut many = String::new();
    for i in 0..40 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    let many_headers = get("/hello", &many);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (huge_header, 431),
        (many_headers, 431),
        (long_target, 414),
        (
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n".to_vec(),
            413,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
        (b"GET /hello HTTP/1.1\nHost: localhost\n\n".to_vec(), 400),
    ];
    for (request, status) in cases {
        let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
        // A valid request first: errors after keep-alive requests close too.
        assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
        let r = c.request(&request).unwrap();
        assert_eq!(
            r.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&request[..40.min(request.len())])
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r.header("x-request-id").is_some());
        assert!(c.closed_by_server(), "status {status}");
    }
}

#[test]
fn invalid_handler_header_becomes_500() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    let r = c.request(&get("/split", "")).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.header("injected").is_none());
    assert!(c.closed_by_server());
}

#[test]
fn http_1_0_closes_after_the_response() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    let r = c.request(b"GET /hello HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.closed_by_server());
}

#[test]
fn idle_connection_closed_after_idle_timeout() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
    c.set_read_timeout(Duration::from_secs(10));
    let start = Instant::now();
    assert!(c.closed_by_server());
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(eventually(Duration::from_secs(5), || srv
        .server
        .open_connections()
        == 0));
}

#[test]
fn slow_header_sender_is_cut_off_with_408() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        header_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_secs(2),
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    c.send(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    c.set_read_timeout(Duration::from_millis(100));
    let start = Instant::now();
    // One header byte every 100 ms: each read is quick, the whole head never arrives.
    while c.buffered().is_empty() && start.elapsed() < Duration::from_secs(10) {
        if c.send(b"X").is_err() {
            break;
        }
        if let Ok(0) = c.fill() {
            break;
        }
    }
    c.set_read_timeout(Duration::from_secs(5));
    let r = c.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (408, Some("close")));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn slow_tls_handshake_is_cut_off() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        handshake_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).unwrap(); // the start of a record, then silence
    let mut buf = [0u8; 64];
    let start = Instant::now();
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "server closes without a response");
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(eventually(Duration::from_secs(5), || {
        srv.metrics
            .get(TLS_HANDSHAKE_FAILURES, &[("reason", "timeout")])
            == 1
    }));
}

#[test]
fn no_client_certificate_is_refused_and_counted() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let anonymous = client_config(&world.ca, None);
    // TLS 1.3: the client finishes its side first; the refusal arrives as an alert.
    let refused = match RawClient::connect(srv.addr(), anonymous) {
        Err(_) => true,
        Ok(mut c) => c.request(&get("/hello", "")).is_err(),
    };
    assert!(refused);
    let other_ca = Ca::new("stranger CA");
    let stranger = client_config(&world.ca, Some(&other_ca.leaf("stranger")));
    let refused = match RawClient::connect(srv.addr(), stranger) {
        Err(_) => true,
        Ok(mut c) => c.request(&get("/hello", "")).is_err(),
    };
    assert!(refused);
    assert!(eventually(Duration::from_secs(5), || {
        srv.metrics
            .get(TLS_HANDSHAKE_FAILURES, &[("reason", "no_client_cert")])
            == 1
            && srv
                .metrics
                .get(TLS_HANDSHAKE_FAILURES, &[("reason", "unknown_ca")])
                == 1
    }));
    assert!(
        srv.metrics
            .render()
            .contains("np_tls_handshake_failures_total{reason=\"no_client_cert\"} 1")
    );
}

#[test]
fn max_requests_per_connection_honoured() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        max_requests_per_connection: 3,
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    for i in 1..=3 {
        let r = c.request(&get("/hello", "")).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection"),
            (i == 3).then_some("close"),
            "request {i}"
        );
    }
    assert!(c.closed_by_server());
}

#[test]
fn connection_older_than_max_age_is_closed_between_requests() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        max_connection_age: Duration::from_millis(400),
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
    // The idle wait is bounded by the age (5 s idle timeout would be longer).
    let start = Instant::now();
    assert!(c.closed_by_server());
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn handler_panic_does_not_leak_the_slot() {
    let world = World::new();
    let limits = np_agent::http::Limits {
        max_connections: 1,
        ..test_limits()
    };
    let srv = TestServer::start(world.server_config(), limits);
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert!(c.request(&get("/panic", "")).is_err());
    assert!(eventually(Duration::from_secs(5), || srv
        .server
        .open_connections()
        == 0));
    assert_eq!(srv.metrics.open_connections(), 0);
    // The only slot is free again.
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
}

#[test]
fn tls_config_swap_applies_to_new_connections() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut old = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert_eq!(old.request(&get("/hello", "")).unwrap().status, 200);

    let new_ca = Ca::new("rotated CA");
    let new_leaf = new_ca.leaf("server-2");
    srv.tls.set(server_config(&new_leaf, &world.ca));
    // Clients trusting only the old CA now fail; the rotated one works; the old
    // connection keeps its session.
    let old_trust = RawClient::connect(srv.addr(), world.client_config());
    assert!(old_trust.is_err());
    let mut fresh =
        RawClient::connect(srv.addr(), client_config(&new_ca, Some(&world.client_leaf))).unwrap();
    assert_eq!(fresh.request(&get("/hello", "")).unwrap().status, 200);
    assert_eq!(old.request(&get("/hello", "")).unwrap().status, 200);
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let addr = srv.addr();
    let mut idle = RawClient::connect(addr, world.client_config()).unwrap();
    assert_eq!(idle.request(&get("/hello", "")).unwrap().status, 200);
    let mut busy = RawClient::connect(addr, world.client_config()).unwrap();
    busy.send(&get("/sleep", "")).unwrap();
    assert!(eventually(Duration::from_secs(10), || SLEEPERS
        .load(Ordering::SeqCst)
        == 1));
    let TestServer { server, .. } = srv;
    let stopper = std::thread::spawn(move || server.shutdown(Duration::from_secs(5)));
    let r = busy.read_response(false).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(idle.closed_by_server());
    stopper.join().unwrap();
    assert!(TcpStream::connect(addr).is_err(), "listener closed");
}

#[test]
fn admin_endpoints_report_the_server() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let ready = Arc::new(AtomicBool::new(false));
    let admin = AdminServer::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::clone(&srv.metrics),
        Arc::clone(&ready),
    )
    .unwrap();
    let plain = |path: &str| {
        let mut s = TcpStream::connect(admin.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(plain("/healthz").starts_with("HTTP/1.1 200 "));
    assert!(plain("/readyz").starts_with("HTTP/1.1 503 "));
    ready.store(true, Ordering::SeqCst);
    assert!(plain("/readyz").starts_with("HTTP/1.1 200 "));

    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    assert_eq!(c.request(&get("/hello", "")).unwrap().status, 200);
    let _ = RawClient::connect(srv.addr(), client_config(&world.ca, None))
        .and_then(|mut c| c.request(&get("/hello", "")));
    srv.metrics.token_issued("notify");
    assert!(eventually(Duration::from_secs(5), || {
        srv.metrics
            .get(TLS_HANDSHAKE_FAILURES, &[("reason", "no_client_cert")])
            == 1
    }));
    let m = plain("/metrics");
    for needle in [
        "text/plain; version=0.0.4",
        "# TYPE np_http_requests_total counter",
        "np_http_requests_total{endpoint=\"/hello\",status=\"200\"} 1\n",
        "np_tls_handshake_failures_total{reason=\"no_client_cert\"} 1\n",
        "np_connections_refused_total 0\n",
        "# TYPE np_open_connections gauge",
        "np_tokens_issued_total{kind=\"notify\"} 1\n",
    ] {
        assert!(m.contains(needle), "{needle:?} missing in\n{m}");
    }
    admin.shutdown();
}

fn test_timeouts() -> ClientTimeouts {
    ClientTimeouts {
        global: Duration::from_secs(20),
        ..ClientTimeouts::default()
    }
}

#[test]
fn client_connector_mtls_and_connection_reuse() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let agent = client::agent(world.client_config(), test_timeouts());
    let base = format!("https://localhost:{}", srv.addr().port());

    let mut r = agent.get(format!("{base}/peer?x=1")).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = client::read_body_limited(&mut r, 1024).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "TLSv1.3 certs=1 query=x=1"
    );

    // Statuses are not errors.
    let mut r = agent.get(format!("{base}/missing")).call().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let _ = client::read_body_limited(&mut r, 1024).unwrap();

    let mut r = agent
        .post(format!("{base}/echo"))
        .send(&b"0123456789"[..])
        .unwrap();
    assert!(matches!(
        client::read_body_limited(&mut r, 4),
        Err(BodyError::TooLarge { max: 4 })
    ));

    // The first two requests shared one TCP connection (the third's body was not drained,
    // so its connection may not be reused).
    assert_eq!(srv.metrics.get(CONNECTIONS_ACCEPTED, &[]), 1);

    // IP-address URLs verify against the IP SAN.
    let mut r = agent
        .get(format!("https://127.0.0.1:{}/hello", srv.addr().port()))
        .call()
        .unwrap();
    assert_eq!(client::read_body_limited(&mut r, 1024).unwrap(), b"hello");
}

#[test]
fn client_refuses_untrusted_server_and_plain_http() {
    let world = World::new();
    let rogue_ca = Ca::new("rogue CA");
    let rogue = TestServer::start(
        server_config(&rogue_ca.leaf("rogue"), &world.ca),
        test_limits(),
    );
    let agent = client::agent(world.client_config(), test_timeouts());
    let err = agent
        .get(format!("https://localhost:{}/hello", rogue.addr().port()))
        .call()
        .unwrap_err();
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("certificate"),
        "{err}"
    );
    assert_eq!(
        rogue
            .metrics
            .get(HTTP_REQUESTS, &[("endpoint", "/hello"), ("status", "200")]),
        0
    );

    let err = agent
        .get(format!("http://localhost:{}/hello", rogue.addr().port()))
        .call()
        .unwrap_err();
    assert!(matches!(err, ureq::Error::RequireHttpsOnly(_)), "{err}");
}

#[test]
fn tls12_peer_is_reported() {
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let roots = world.ca.roots();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        world.client_leaf.chain.clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(world.client_leaf.key.clone_key()),
    )
    .unwrap();
    let mut c = RawClient::connect(srv.addr(), Arc::new(config)).unwrap();
    let r = c.request(&get("/peer", "")).unwrap();
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "TLSv1.2 certs=1 query=-"
    );
}

/// Collects log lines of the whole test process.
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "level={} {}",
            record.level().as_str().to_lowercase(),
            record.args()
        );
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

fn captured(needle: &str) -> Vec<String> {
    CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn access_log_holds_no_query_headers_or_body() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Debug);
    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut c = RawClient::connect(srv.addr(), world.client_config()).unwrap();
    let r = c
        .request(&get(
            "/peer?patient=999999990",
            "X-Request-Id: log-check-1\r\nAuthorization: Bearer SECRET-TOKEN\r\n",
        ))
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c
        .request(b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: log-check-2\r\nContent-Length: 99999\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 413);
    let _ = RawClient::connect(srv.addr(), client_config(&world.ca, None))
        .and_then(|mut c| c.request(&get("/hello", "")));

    assert!(eventually(Duration::from_secs(5), || !captured(
        "event=tls.handshake_failed"
    )
    .is_empty()));
    // The client's request id, marked as the client's.
    let lines = captured("rid=p:log-check-1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.starts_with(
            "level=info event=http.request rid=p:log-check-1 method=GET endpoint=/peer status=200 ms="
        ),
        "{line}"
    );
    assert!(
        line.contains(" bytes=") && line.contains(" peer=127.0.0.1:"),
        "{line}"
    );
    let line = &captured("rid=p:log-check-2")[0];
    assert!(
        line.contains("method=POST endpoint=/oauth/token status=413")
            && line.contains("reason=\"request body too large\""),
        "{line}"
    );
    let all = CAPTURE.0.lock().unwrap().join("\n");
    for secret in [
        "999999990",
        "SECRET",
        "patient",
        "Authorization",
        "authorization",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into logs");
    }
    assert!(
        all.contains("event=tls.handshake_failed peer=127.0.0.1:")
            && all.contains("reason=no_client_cert")
    );
}

/// Headers and body leave in one plaintext write: a small response is exactly one TLS
/// record (two writes would make two).
#[test]
fn small_response_is_one_tls_record() {
    use rustls::ClientConnection;
    use rustls::pki_types::ServerName;

    let world = World::new();
    let srv = TestServer::start(world.server_config(), test_limits());
    let mut tcp = TcpStream::connect(srv.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(world.client_config(), name).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    let mut exchange = |tls: &mut ClientConnection| -> (Vec<u8>, Vec<u8>) {
        tls.writer().write_all(&get("/hello", "")).unwrap();
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        let (mut raw, mut plain) = (Vec::new(), Vec::new());
        while !plain.ends_with(b"\r\n\r\nhello") {
            let mut chunk = [0u8; 16384];
            let n = tcp.read(&mut chunk).unwrap();
            assert!(n > 0, "server closed");
            raw.extend_from_slice(&chunk[..n]);
            tls.read_tls(&mut &chunk[..n]).unwrap();
            tls.process_new_packets().unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = tls.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
        }
        (raw, plain)
    };
    // The first exchange also carries the session tickets sent after the handshake.
    let _ = exchange(&mut tls);
    let (raw, plain) = exchange(&mut tls);
    assert!(plain.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut records = 0;
    let mut at = 0;
    while at + 5 <= raw.len() {
        let len = usize::from(u16::from_be_bytes([raw[at + 3], raw[at + 4]]));
        at += 5 + len;
        records += 1;
    }
    assert_eq!((records, at), (1, raw.len()));
}
