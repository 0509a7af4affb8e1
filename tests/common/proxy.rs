//! A TCP proxy on loopback with fault modes, switched at run time:
//!
//! - [`Mode::Up`]: forwards bytes both ways (TLS passes through untouched);
//! - [`Mode::Down`]: accepts and closes at once (a partner that is down);
//! - [`Mode::Reset`]: accepts, lets the client send, then closes with the
//!   data unread, so the kernel answers with a TCP RST (connection reset);
//! - [`Mode::Blackhole`]: accepts and never answers (a hung partner or a
//!   firewall dropping packets): the client runs into its own timeout;
//! - [`Mode::Delay`]: forwards, but holds every chunk for the given time
//!   (a slow partner).
//!
//! Switching to a fault mode also cuts the forwarded connections that are
//! open (kept-alive pooled ones included), so the fault applies at once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Down,
    Reset,
    Blackhole,
    Delay(Duration),
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    /// Connections refused while down (closed, reset or blackholed).
    pub refused: Arc<AtomicUsize>,
    /// Every connection accepted, whatever the mode.
    pub accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to 127.0.0.1:<target>; starts up.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let mode = Arc::new(Mutex::new(Mode::Up));
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (m, s, r, a) = (
            mode.clone(),
            stop.clone(),
            refused.clone(),
            accepted.clone(),
        );
        let o = open.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        client.set_nonblocking(false).unwrap();
                        let mode = *m.lock().unwrap();
                        match mode {
                            Mode::Up | Mode::Delay(_) => {
                                if let Ok(server) = TcpStream::connect(("127.0.0.1", target)) {
                                    let delay = match mode {
                                        Mode::Delay(d) => d,
                                        _ => Duration::ZERO,
                                    };
                                    let mut list = o.lock().unwrap();
                                    list.retain(|c: &TcpStream| c.peer_addr().is_ok());
                                    list.push(client.try_clone().unwrap());
                                    drop(list);
                                    pipe(client, server, delay);
                                }
                            }
                            Mode::Down => {
                                r.fetch_add(1, Ordering::SeqCst);
                                let _ = client.shutdown(Shutdown::Both);
                            }
                            Mode::Reset => {
                                r.fetch_add(1, Ordering::SeqCst);
                                // Closing with the ClientHello unread makes the
                                // kernel send RST instead of FIN.
                                std::thread::spawn(move || {
                                    std::thread::sleep(Duration::from_millis(50));
                                    drop(client);
                                });
                            }
                            Mode::Blackhole => {
                                r.fetch_add(1, Ordering::SeqCst);
                                let stop = s.clone();
                                std::thread::spawn(move || {
                                    // Hold it open, unanswered, until the test ends
                                    // or the client gives up (at most 5 minutes).
                                    let _held = client;
                                    for _ in 0..3_000 {
                                        if stop.load(Ordering::SeqCst) {
                                            break;
                                        }
                                        std::thread::sleep(Duration::from_millis(100));
                                    }
                                });
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            mode,
            stop,
            refused,
            accepted,
            open,
        }
    }

    pub fn set_up(&self, up: bool) {
        self.set_mode(if up { Mode::Up } else { Mode::Down });
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        if !matches!(mode, Mode::Up | Mode::Delay(_)) {
            for c in self.open.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pipe(a: TcpStream, b: TcpStream, delay: Duration) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    std::thread::spawn(move || copy(a, b2, delay));
    std::thread::spawn(move || copy(b, a2, delay));
}

fn copy(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
