//! A scriptable Twiin partner on `np_agent::http::Server` over mTLS, for
//! faults a real np-agent never produces: `500`, `503` with `Retry-After`,
//! `401` for a token it just issued. It serves discovery and a token
//! endpoint that hands out numbered tokens (it checks no assertion: it is a
//! fault injector, not a partner under test), and `POST /fhir/Task`, answered
//! from a script and then by the sticky default. Every Task request is
//! recorded with its time, token and Task identifier; a Task identifier
//! accepted twice is answered `200` and counted once.

use std::collections::{BTreeSet, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use np_agent::http::{self, Handler, Request, Response};
use np_agent::ops::metrics::Metrics;
use np_agent::pki::{self, MinVersion};

use super::agent::Party;

/// How the partner answers one `POST /fhir/Task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `201`, or `200` for an identifier seen before.
    Accept,
    /// This status with an OperationOutcome.
    Status(u16),
    /// `503` with `Retry-After: <secs>`.
    RetryAfter(u64),
}

/// One `POST /fhir/Task` as it arrived.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub token: String,
    /// `Task.identifier.value`.
    pub identifier: String,
    pub status: u16,
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Answer>,
    default: Option<Answer>,
    hits: Vec<Hit>,
    accepted: BTreeSet<String>,
}

pub struct ScriptedPartner {
    server: Option<http::Server>,
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    tokens: Arc<AtomicUsize>,
}

impl ScriptedPartner {
    /// Serves with `party`'s certificate on a free loopback port.
    pub fn start(party: &Party) -> ScriptedPartner {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let tokens = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(Scripted {
            script: script.clone(),
            tokens: tokens.clone(),
        });
        let cfg = pki::server_config(&party.material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(cfg)),
            handler,
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        ScriptedPartner {
            server: Some(server),
            addr,
            script,
            tokens,
        }
    }

    /// Answers for the next Task requests, in order.
    pub fn push(&self, answers: &[Answer]) {
        self.script.lock().unwrap().queue.extend(answers);
    }

    /// The answer once the script is used up (initially [`Answer::Accept`]).
    pub fn set_default(&self, answer: Answer) {
        self.script.lock().unwrap().default = Some(answer);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.script.lock().unwrap().hits.clone()
    }

    /// Distinct Task identifiers accepted.
    pub fn accepted(&self) -> BTreeSet<String> {
        self.script.lock().unwrap().accepted.clone()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.tokens.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedPartner {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

struct Scripted {
    script: Arc<Mutex<Script>>,
    tokens: Arc<AtomicUsize>,
}

fn outcome(status: u16, code: &str) -> Response {
    Response::new(status).body(
        "application/fhir+json",
        format!(
            r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}"}}]}}"#
        ),
    )
}

impl Handler for Scripted {
    fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/fhir/.well-known/smart-configuration") => {
                let host = req.header("host").unwrap_or("localhost").to_string();
                Response::new(200).body(
                    "application/json",
                    format!(
                        r#"{{"token_endpoint":"https://{host}/oauth/token","jwks_uri":"https://{host}/jwks"}}"#
                    ),
                )
            }
            ("POST", "/oauth/token") => {
                let n = self.tokens.fetch_add(1, Ordering::SeqCst) + 1;
                Response::new(200).header("Cache-Control", "no-store").body(
                    "application/json",
                    format!(
                        r#"{{"access_token":"scripted-token-{n}","token_type":"Bearer","expires_in":300}}"#
                    ),
                )
            }
            ("POST", "/fhir/Task") => {
                let token = req
                    .header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default()
                    .to_string();
                let task: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let identifier = task["identifier"]
                    .as_array()
                    .and_then(|a| a.first())
                    .unwrap_or(&task["identifier"])["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut s = self.script.lock().unwrap();
                let answer = s.queue.pop_front().or(s.default).unwrap_or(Answer::Accept);
                let resp = match answer {
                    Answer::Accept => {
                        let status = if s.accepted.insert(identifier.clone()) {
                            201
                        } else {
                            200
                        };
                        Response::new(status)
                            .header("Location", "https://localhost/fhir/Task/1")
                            .body("application/fhir+json", req.body.clone())
                    }
                    Answer::Status(code) => outcome(code, "transient"),
                    Answer::RetryAfter(secs) => {
                        outcome(503, "transient").header("Retry-After", secs.to_string())
                    }
                };
                s.hits.push(Hit {
                    at: Instant::now(),
                    token,
                    identifier,
                    status: resp.status,
                });
                resp
            }
            _ => Response::new(404),
        }
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        "scripted"
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}
