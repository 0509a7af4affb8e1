//! Stand-ins for the localisation services, for the demo and the tests
//! (which use this same code): an OAuth server, a PRS and an NVI, each an
//! `http::Server` over mutual TLS on its own loopback port, behaving as the
//! MinVWS proofs of concept answer (spec vad-prs-nvi.md section 0).
//!
//! - **OAuth** `POST /oauth/token`: the `client_credentials` form with
//!   `scope`, `target_audience`, `organization_id`, `source_id`; issues an
//!   opaque token bound to the client certificate it was asked over
//!   (`cnf.x5t#S256`, RFC 8705). The PRS and the NVI accept a token only
//!   over that certificate (else `401`), with the scope they need (else
//!   `403`), as the gateway in front of them does.
//! - **PRS** `POST /oprf/eval`: evaluates the blinded element with a real
//!   OPRF key (`Z = k·B`, voprf's server side) and answers `200
//!   {"jwe":…}`, an `RSA-OAEP`/`A256GCM` JWE to the recipient's registered
//!   RSA key with the claims of the PoC (`subject` `pseudonym:eval:<Z>`,
//!   `aud`, `scope`, `version`, `iat`, `exp` = `iat` + 300). An
//!   organisation without `oin:` is `400`; one without a key for the scope
//!   `404`. The NVI's key is registered for scope `nvi`, and for more
//!   scopes on demand ([`StandIns::register_scope`]).
//! - **NVI**: decrypts the JWE with its private key, checks `aud` and
//!   `exp`, unblinds (`N = r⁻¹·Z`) and keeps referrals by `N`: `POST
//!   /fhir/List` (`201`; the custodian must be the token's URA, else `403`),
//!   `GET /fhir/List?subject:identifier=` (a `searchset` of every
//!   organisation's List), `DELETE /fhir/List?…` (`201` + OperationOutcome),
//!   `POST /registrations` (`200`), `DELETE /registrations?…` (`204`),
//!   `POST /localize`. A duplicate (`N`, URA, source) is `409` on both
//!   forms, as the PoC's create refuses it.
//!
//! Faults on demand per service ([`Service`], [`Fault`]), every request
//! recorded ([`Seen`]); the PRS can be stopped and started again on its
//! port ([`StandIns::stop`], [`StandIns::restart`]). The NVI's pseudonyms
//! ([`StandIns::pseudonyms`]) show what the OPRF promises: one BSN, however
//! often blinded, is one `N`; two BSNs are two.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use voprf::{BlindedElement, OprfServer, Ristretto255};

use crate::http::{self, Handler, Request, Response};
use crate::nvi::oprf::{self, BlindFactor};
use crate::nvi::register::{CUSTODIAN_EXTENSION, NVI_IDENTIFIER};
use crate::ops::metrics::Metrics;
use crate::pki::{self, MinVersion, TlsMaterial};
use crate::util::{b64, percent, random, time};

/// The token endpoint's path on the OAuth stand-in.
pub const TOKEN_PATH: &str = "/oauth/token";
/// The NVI stand-in's OIN (the recipient of the pseudonyms).
pub const NVI_OIN: &str = "00000099000000001000";
/// The recipient scope the NVI's key is registered for.
pub const PSEUDONYM_SCOPE: &str = "nvi";
/// The kid of the NVI's key at the PRS.
pub const NVI_KID: &str = "nvi-standin-1";

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    OAuth,
    Prs,
    Nvi,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::OAuth => "oauth",
            Service::Prs => "prs",
            Service::Nvi => "nvi",
        }
    }
}

/// A fault for the next request to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This status with an error body (OAuth error JSON, an
    /// OperationOutcome on `/fhir/`, else `{"detail": …}`).
    Status(u16),
    /// `503` with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// No answer for this long, then the request is served normally.
    Delay(Duration),
}

/// One request as it arrived and what it was answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub service: Service,
    pub method: String,
    pub path: String,
    /// The raw query (it holds the pseudonym: a test's to look at).
    pub query: Option<String>,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
    pub status: u16,
}

/// A token the OAuth stand-in issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub scope: Vec<String>,
    pub audience: String,
    pub organization_id: String,
    pub source_id: Option<String>,
    /// `cnf.x5t#S256`: base64url SHA-256 of the client certificate.
    pub x5t_s256: String,
    pub expires_at: i64,
}

/// One referral the NVI holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `N`, hex: the pseudonym only the NVI sees.
    pub pseudonym: String,
    pub ura: String,
    pub source_id: String,
    pub created_at: i64,
    pub id: String,
}

#[derive(Default)]
struct State {
    faults: HashMap<Service, VecDeque<Fault>>,
    /// Requests that reached each service, counted before any fault or
    /// delay (a request answered late is counted at once).
    arrived: HashMap<Service, usize>,
    seen: Vec<Seen>,
    tokens: HashMap<String, Issued>,
    held: Vec<Held>,
    /// Every pseudonym the NVI derived, in order, with the call that did.
    derived: Vec<(String, String)>,
    next_id: u64,
    /// The recipient scopes the NVI's key is registered for at the PRS.
    scopes: BTreeSet<String>,
}

struct Shared {
    state: Mutex<State>,
    oprf_key: OprfServer<Ristretto255>,
    nvi_key: rsa::PrivateKey,
}

/// The three stand-ins, serving until dropped.
pub struct StandIns {
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    servers: BTreeMap<Service, (SocketAddr, Option<http::Server>)>,
}

impl StandIns {
    /// Starts the three services with `material`'s certificate (whose
    /// trust bundle decides which clients they accept) on free loopback
    /// ports.
    pub fn start(material: &TlsMaterial) -> Result<StandIns, String> {
        let seed = random::bytes::<32>().map_err(|e| e.to_string())?;
        let oprf_key = OprfServer::<Ristretto255>::new_from_seed(&seed, b"np-agent stand-in PRS")
            .map_err(|_| "OPRF key".to_string())?;
        StandIns::start_with(material, oprf_key)
    }

    /// As [`StandIns::start`], with the PRS's OPRF key `k` fixed (32
    /// little-endian bytes of a canonical non-zero scalar): the pseudonyms
    /// the NVI derives are then fixed vectors.
    pub fn start_with_oprf_key(material: &TlsMaterial, key: &[u8; 32]) -> Result<StandIns, String> {
        let oprf_key = OprfServer::<Ristretto255>::new_with_key(key)
            .map_err(|_| "OPRF key: not a canonical non-zero scalar".to_string())?;
        StandIns::start_with(material, oprf_key)
    }

    fn start_with(
        material: &TlsMaterial,
        oprf_key: OprfServer<Ristretto255>,
    ) -> Result<StandIns, String> {
        let nvi_key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
            .map_err(|e| format!("NVI key: {e}"))?;
        let state = State {
            scopes: BTreeSet::from([PSEUDONYM_SCOPE.to_string()]),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            oprf_key,
            nvi_key,
        });
        let tls = pki::server_config(material, MinVersion::Tls13).map_err(|e| e.to_string())?;
        let mut standins = StandIns {
            shared,
            tls,
            servers: BTreeMap::new(),
        };
        for service in [Service::OAuth, Service::Prs, Service::Nvi] {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let server = standins.serve(service, listener)?;
            standins.servers.insert(service, (addr, Some(server)));
        }
        Ok(standins)
    }

    fn serve(&self, service: Service, listener: TcpListener) -> Result<http::Server, String> {
        http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(self.tls.clone())),
            Arc::new(Api {
                service,
                shared: self.shared.clone(),
            }),
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .map_err(|e| e.to_string())
    }

    /// `https://localhost:<port>` of a service.
    pub fn origin(&self, service: Service) -> String {
        let port = self.servers.get(&service).map_or(0, |(a, _)| a.port());
        format!("https://localhost:{port}")
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.origin(Service::OAuth))
    }

    /// The configuration an agent needs for these services as partners
    /// `prs` and `nvi` (`api`: `fhir` or `json`), and our identity towards
    /// them.
    pub fn env(&self, api: &str, org_oin: &str, source_id: &str) -> Vec<(String, String)> {
        [
            ("NP_PARTNER_PRS_KIND", "prs".to_string()),
            ("NP_PARTNER_PRS_URL", self.origin(Service::Prs)),
            ("NP_PARTNER_PRS_TOKEN_URL", self.token_url()),
            ("NP_PARTNER_NVI_KIND", "nvi".to_string()),
            ("NP_PARTNER_NVI_URL", self.origin(Service::Nvi)),
            ("NP_PARTNER_NVI_TOKEN_URL", self.token_url()),
            ("NP_PARTNER_NVI_OIN", NVI_OIN.to_string()),
            ("NP_PARTNER_NVI_API", api.to_string()),
            ("NP_ORG_OIN", org_oin.to_string()),
            ("NP_SOURCE_ID", source_id.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Registers the NVI's key at the PRS for one more recipient scope, as
    /// `POST /administration/register/certificate` does: the PRS then
    /// evaluates for `oin:<NVI_OIN>` and `scope`.
    pub fn register_scope(&self, scope: &str) {
        self.state().scopes.insert(scope.to_string());
    }

    /// Answers the next requests to `service` with `faults`, in order.
    pub fn fault(&self, service: Service, faults: &[Fault]) {
        self.state()
            .faults
            .entry(service)
            .or_default()
            .extend(faults.iter().cloned());
    }

    /// Stops a service: connections to its port are refused.
    pub fn stop(&mut self, service: Service) {
        if let Some((_, server)) = self.servers.get_mut(&service) {
            if let Some(s) = server.take() {
                s.shutdown(Duration::from_millis(100));
            }
        }
    }

    /// Starts a stopped service again on its port.
    pub fn restart(&mut self, service: Service) -> Result<(), String> {
        let Some(addr) = self.servers.get(&service).map(|(a, _)| *a) else {
            return Err("unknown service".into());
        };
        let listener = TcpListener::bind(addr).map_err(|e| format!("rebind {addr}: {e}"))?;
        let server = self.serve(service, listener)?;
        self.servers.insert(service, (addr, Some(server)));
        Ok(())
    }

    /// How many requests reached `service` (also those still being
    /// answered).
    pub fn arrived(&self, service: Service) -> usize {
        self.state().arrived.get(&service).copied().unwrap_or(0)
    }

    /// Every request so far, once answered.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// The requests to one service.
    pub fn requests_to(&self, service: Service) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.service == service)
            .collect()
    }

    /// Every token issued.
    pub fn tokens(&self) -> Vec<(String, Issued)> {
        self.state()
            .tokens
            .iter()
            .map(|(t, i)| (t.clone(), i.clone()))
            .collect()
    }

    /// The referrals the NVI holds.
    pub fn held(&self) -> Vec<Held> {
        self.state().held.clone()
    }

    /// Every pseudonym (`N`, hex) the NVI derived, in order, with the call
    /// (`POST /fhir/List`, …) that derived it.
    pub fn pseudonyms(&self) -> Vec<(String, String)> {
        self.state().derived.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for (_, (_, server)) in std::mem::take(&mut self.servers) {
            if let Some(s) = server {
                s.shutdown(Duration::from_millis(100));
            }
        }
    }
}

struct Api {
    service: Service,
    shared: Arc<Shared>,
}

impl Handler for Api {
    fn handle(&self, req: &Request) -> Response {
        let fault = {
            let mut s = self.state();
            *s.arrived.entry(self.service).or_default() += 1;
            s.faults
                .get_mut(&self.service)
                .and_then(VecDeque::pop_front)
        };
        let resp = match fault {
            Some(Fault::Status(status)) => self.error(req, status, "stand-in fault"),
            Some(Fault::RetryAfter(secs)) => self
                .error(req, 503, "stand-in fault")
                .header("Retry-After", secs.to_string()),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.answer(req)
            }
            None => self.answer(req),
        };
        self.state().seen.push(Seen {
            service: self.service,
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            body: req.body.clone(),
            authorization: req.header("authorization").map(str::to_string),
            status: resp.status,
        });
        resp
    }

    fn endpoint_label(&self, _path: &str) -> &'static str {
        self.service.name()
    }

    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

impl Api {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answer(&self, req: &Request) -> Response {
        match self.service {
            Service::OAuth => self.token(req),
            Service::Prs => self.prs(req),
            Service::Nvi => self.nvi(req),
        }
    }

    /// An error in the form of the service and path.
    fn error(&self, req: &Request, status: u16, text: &str) -> Response {
        if self.service == Service::OAuth {
            let code = if status >= 500 {
                "temporarily_unavailable"
            } else {
                "invalid_request"
            };
            return Response::new(status)
                .header("Cache-Control", "no-store")
                .body(
                    "application/json",
                    json!({"error": code, "error_description": text}).to_string(),
                );
        }
        if req.path.starts_with("/fhir/") {
            let code = match status {
                401 | 403 => "security",
                409 => "conflict",
                s if s >= 500 => "transient",
                _ => "invalid",
            };
            return Response::new(status).body(
                "application/fhir+json",
                json!({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
                .to_string(),
            );
        }
        Response::new(status).body("application/json", json!({"detail": text}).to_string())
    }

    // ---- OAuth ----

    fn token(&self, req: &Request) -> Response {
        if (req.method.as_str(), req.path.as_str()) != ("POST", TOKEN_PATH) {
            return self.error(req, 404, "not found");
        }
        let Ok(form) = crate::oauth::form::Form::parse(&req.body) else {
            return self.error(req, 400, "not a form");
        };
        if form.get("grant_type") != Some("client_credentials") {
            return self.error(req, 400, "grant_type must be client_credentials");
        }
        let (Some(scope), Some(audience), Some(org)) = (
            form.get("scope"),
            form.get("target_audience"),
            form.get("organization_id"),
        ) else {
            return self.error(
                req,
                400,
                "scope, target_audience and organization_id are required",
            );
        };
        let Some(cert) = req.peer.certs.first() else {
            return self.error(req, 401, "no client certificate");
        };
        let Ok(token) = random::bytes::<24>().map(|b| b64::encode(&b)) else {
            return self.error(req, 500, "no randomness");
        };
        let issued = Issued {
            scope: scope.split_whitespace().map(str::to_string).collect(),
            audience: audience.to_string(),
            organization_id: org.to_string(),
            source_id: form.get("source_id").map(str::to_string),
            x5t_s256: thumbprint(cert.as_ref()),
            expires_at: time::now_unix() + 300,
        };
        self.state().tokens.insert(token.clone(), issued);
        Response::new(200).header("Cache-Control", "no-store").body(
            "application/json",
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": scope})
                .to_string(),
        )
    }

    /// The gateway's check: a token we issued, unexpired, presented over
    /// the certificate it is bound to, with `scope`.
    fn authorise(&self, req: &Request, scope: &str) -> Result<Issued, Response> {
        let token = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let issued = self.state().tokens.get(token).cloned();
        let bound = req.peer.certs.first().map(|c| thumbprint(c.as_ref()));
        match issued {
            Some(t) if t.expires_at > time::now_unix() && Some(&t.x5t_s256) == bound.as_ref() => {
                if t.scope.iter().any(|s| s == scope) {
                    Ok(t)
                } else {
                    Err(self.error(req, 403, &format!("scope {scope} required")))
                }
            }
            _ => Err(self
                .error(req, 401, "invalid or unbound token")
                .header("WWW-Authenticate", "Bearer")),
        }
    }

    // ---- PRS ----

    fn prs(&self, req: &Request) -> Response {
        if (req.method.as_str(), req.path.as_str()) != ("POST", "/oprf/eval") {
            return self.error(req, 404, "not found");
        }
        if let Err(r) = self.authorise(req, "prs:read") {
            return r;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
            return self.error(req, 400, "not JSON");
        };
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (element, org, scope) = (
            field("encryptedPersonalId"),
            field("recipientOrganization"),
            field("recipientScope"),
        );
        if !org.starts_with("oin:") {
            return self.error(req, 400, "recipientOrganization must be oin:<OIN>");
        }
        let known = self.state().scopes.contains(&scope);
        if org != format!("oin:{NVI_OIN}") || !known {
            return Response::new(404).body(
                "application/json",
                json!({"error": "No public key found for this organization and/or scope"})
                    .to_string(),
            );
        }
        // As the PRS decodes it: padded base64url.
        let Ok(bytes) = URL_SAFE.decode(&element) else {
            return Response::new(400).body(
                "application/json",
                json!({"error": "Unable to evaluate blind"}).to_string(),
            );
        };
        let Ok(blinded) = BlindedElement::<Ristretto255>::deserialize(&bytes) else {
            return Response::new(400).body(
                "application/json",
                json!({"error": "Unable to evaluate blind"}).to_string(),
            );
        };
        let z = self.shared.oprf_key.blind_evaluate(&blinded).serialize();
        let now = time::now_unix();
        let claims = json!({
            "subject": format!("pseudonym:eval:{}", URL_SAFE.encode(z)),
            "aud": org,
            "scope": scope,
            "version": "1.1",
            "iat": now,
            "exp": now + 300,
            "extra_versions": {},
        });
        match encrypt_jwe(&self.shared.nvi_key.to_public_key(), &claims.to_string()) {
            Ok(jwe) => Response::new(200).body("application/json", json!({"jwe": jwe}).to_string()),
            Err(e) => self.error(req, 500, &e),
        }
    }

    // ---- NVI ----

    fn nvi(&self, req: &Request) -> Response {
        let route = (req.method.as_str(), req.path.as_str());
        let scope = match route {
            ("POST", "/fhir/List") | ("POST", "/registrations") => "nvi:create",
            ("GET", "/fhir/List") | ("POST", "/localize") => "nvi:localize",
            ("DELETE", "/fhir/List") | ("DELETE", "/registrations") => "nvi:delete",
            _ => return self.error(req, 404, "not found"),
        };
        let token = match self.authorise(req, scope) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let call = format!("{} {}", req.method, req.path);
        match route {
            ("POST", "/fhir/List") => self.create_list(req, &token, &call),
            ("GET", "/fhir/List") => {
                let Some(subject) = query_value(req, "subject:identifier") else {
                    return self.error(req, 400, "subject:identifier required");
                };
                match self.subject(&subject, &call) {
                    Ok(n) => self.localized_bundle(&n),
                    Err(e) => self.error(req, 400, &e),
                }
            }
            ("DELETE", "/fhir/List") => {
                let Some(subject) = query_value(req, "subject:identifier") else {
                    return self.error(req, 400, "subject:identifier required");
                };
                let source = query_value(req, "source:identifier")
                    .and_then(|s| s.split_once('|').map(|(_, v)| v.to_string()));
                match self.subject(&subject, &call) {
                    Ok(n) => {
                        self.delete(&n, &token.organization_id, source.as_deref());
                        Response::new(201).body(
                            "application/fhir+json",
                            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": "Resources have been deleted successfully"}]}).to_string(),
                        )
                    }
                    Err(e) => self.error(req, 400, &e),
                }
            }
            ("POST", "/registrations") => {
                let Some(source) = token.source_id.clone() else {
                    return self.error(req, 400, "source_id is required to complete transaction");
                };
                match self.json_pseudonym(req, &call) {
                    Ok(n) => match self.add(&n, &token.organization_id, &source) {
                        Some(h) => Response::new(200).body(
                            "application/json",
                            json!({"ura_number": h.ura, "source_id": h.source_id, "created_at": time::rfc3339(h.created_at)}).to_string(),
                        ),
                        None => self.error(req, 409, "Record already exists"),
                    },
                    Err(e) => self.error(req, 422, &e),
                }
            }
            ("DELETE", "/registrations") => {
                let (Some(p), Some(k)) =
                    (query_value(req, "pseudonym"), query_value(req, "oprf_key"))
                else {
                    return self.error(req, 422, "pseudonym and oprf_key required");
                };
                match self.unblind(&p, &k, &call) {
                    Ok(n) => {
                        self.delete(&n, &token.organization_id, token.source_id.as_deref());
                        Response::new(204)
                    }
                    Err(e) => self.error(req, 400, &e),
                }
            }
            ("POST", "/localize") => match self.json_pseudonym(req, &call) {
                Ok(n) => {
                    let rows: Vec<Value> = self
                        .state()
                        .held
                        .iter()
                        .filter(|h| h.pseudonym == n)
                        .map(|h| json!({"ura_number": h.ura, "source_id": h.source_id, "created_at": time::rfc3339(h.created_at)}))
                        .collect();
                    Response::new(200).body("application/json", Value::Array(rows).to_string())
                }
                Err(e) => self.error(req, 422, &e),
            },
            _ => self.error(req, 404, "not found"),
        }
    }

    fn create_list(&self, req: &Request, token: &Issued, call: &str) -> Response {
        let Ok(list) = serde_json::from_slice::<Value>(&req.body) else {
            return self.error(req, 400, "not JSON");
        };
        if list.get("resourceType").and_then(Value::as_str) != Some("List") {
            return self.error(req, 400, "not a List");
        }
        let ura = list
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|x| x.get("url").and_then(Value::as_str) == Some(CUSTODIAN_EXTENSION))
            .find_map(|x| {
                x.pointer("/valueReference/identifier/value")
                    .and_then(Value::as_str)
            })
            .unwrap_or_default()
            .to_string();
        if ura != token.organization_id {
            return self.error(req, 403, "Registration not linked to the authorized URA");
        }
        if token.source_id.is_none() {
            return self.error(req, 403, "Unauthorized managing request, missing source_id");
        }
        if list
            .pointer("/subject/identifier/system")
            .and_then(Value::as_str)
            != Some(NVI_IDENTIFIER)
        {
            return self.error(req, 400, "List.subject.identifier.system");
        }
        let subject = list
            .pointer("/subject/identifier/value")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(source) = list
            .pointer("/source/identifier")
            .filter(|i| i.get("system").and_then(Value::as_str) == Some("urn:ietf:rfc:3986"))
            .and_then(|i| i.get("value"))
            .and_then(Value::as_str)
        else {
            return self.error(
                req,
                400,
                "List.source.identifier should include system urn:ietf:rfc:3986",
            );
        };
        let n = match self.token_value(subject, call) {
            Ok(n) => n,
            Err(e) => return self.error(req, 400, &e),
        };
        match self.add(&n, &ura, source) {
            Some(h) => Response::new(201).body("application/fhir+json", list_of(&h).to_string()),
            None => self.error(req, 409, "Record already exists"),
        }
    }

    fn localized_bundle(&self, n: &str) -> Response {
        let entries: Vec<Value> = self
            .state()
            .held
            .iter()
            .filter(|h| h.pseudonym == n)
            .map(|h| json!({"resource": list_of(h)}))
            .collect();
        Response::new(200).body(
            "application/fhir+json",
            json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
                .to_string(),
        )
    }

    fn add(&self, n: &str, ura: &str, source: &str) -> Option<Held> {
        let mut s = self.state();
        if s.held
            .iter()
            .any(|h| h.pseudonym == n && h.ura == ura && h.source_id == source)
        {
            return None;
        }
        s.next_id += 1;
        let h = Held {
            pseudonym: n.to_string(),
            ura: ura.to_string(),
            source_id: source.to_string(),
            created_at: time::now_unix(),
            id: format!("{:08x}-0000-4000-8000-{:012x}", s.next_id, s.next_id),
        };
        s.held.push(h.clone());
        Some(h)
    }

    fn delete(&self, n: &str, ura: &str, source: Option<&str>) {
        self.state().held.retain(|h| {
            !(h.pseudonym == n && h.ura == ura && source.is_none_or(|s| h.source_id == s))
        });
    }

    /// `subject:identifier` as `<system>|<value>`.
    fn subject(&self, query: &str, call: &str) -> Result<String, String> {
        let Some((system, value)) = query.split_once('|') else {
            return Err("subject:identifier must be <system>|<value>".into());
        };
        if system != NVI_IDENTIFIER {
            return Err("unknown subject system".into());
        }
        self.token_value(value, call)
    }

    /// The List subject's value: base64url of
    /// `{"evaluated_output","blind_factor"}`, padded or not.
    fn token_value(&self, value: &str, call: &str) -> Result<String, String> {
        let raw = URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| "Invalid pseudonym in subject:identifier".to_string())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| "Invalid pseudonym".to_string())?;
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        self.unblind(&get("evaluated_output"), &get("blind_factor"), call)
    }

    fn json_pseudonym(&self, req: &Request, call: &str) -> Result<String, String> {
        let v: Value = serde_json::from_slice(&req.body).map_err(|_| "not JSON".to_string())?;
        let get = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        self.unblind(&get("pseudonym"), &get("oprf_key"), call)
            .map_err(|_| "Invalid pseudonym or oprf_key".to_string())
    }

    /// Decrypts the PRS's JWE, checks it is for us and current, and
    /// unblinds: `N` as hex.
    fn unblind(&self, jwe: &str, factor: &str, call: &str) -> Result<String, String> {
        let claims = decrypt_jwe(&self.shared.nvi_key, jwe)?;
        if claims.get("aud").and_then(Value::as_str) != Some(&format!("oin:{NVI_OIN}")) {
            return Err("the pseudonym is not for us".into());
        }
        if claims.get("exp").and_then(Value::as_i64).unwrap_or(0) <= time::now_unix() {
            return Err("the pseudonym has expired".into());
        }
        let z = claims
            .get("subject")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("pseudonym:eval:"))
            .ok_or("no pseudonym:eval: subject")?;
        let factor = BlindFactor::from_wire(factor).map_err(|e| e.to_string())?;
        let n = b64::hex(&oprf::unblind(&factor, z).map_err(|e| e.to_string())?);
        self.state().derived.push((n.clone(), call.to_string()));
        Ok(n)
    }
}

/// The List the NVI answers for a referral (with `date`, which the PoC
/// leaves out).
fn list_of(h: &Held) -> Value {
    json!({
        "resourceType": "List",
        "id": h.id,
        "extension": [{"url": CUSTODIAN_EXTENSION,
            "valueReference": {"identifier": {"system": crate::ids::URA_SYSTEM, "value": h.ura}}}],
        "status": "current",
        "mode": "working",
        "date": time::rfc3339(h.created_at),
        "source": {"identifier": {"system": "urn:ietf:rfc:3986", "value": h.source_id}, "type": "Device"},
        "emptyReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "withheld"}]},
    })
}

/// A query parameter, decoded.
fn query_value(req: &Request, name: &str) -> Option<String> {
    let q = req.query.as_deref()?;
    percent::split_pairs(q)
        .find(|(k, _)| percent::decode_query(k).ok().as_deref() == Some(name))
        .and_then(|(_, v)| percent::decode_query(v).ok())
}

/// base64url SHA-256 of a certificate (RFC 8705 `x5t#S256`).
pub fn thumbprint(der: &[u8]) -> String {
    b64::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A compact JWE: `RSA-OAEP` (SHA-1) key wrapping, `A256GCM` content.
pub fn encrypt_jwe(key: &rsa::PublicKey, plaintext: &str) -> Result<String, String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let header = b64::encode(
        json!({"alg": "RSA-OAEP", "enc": "A256GCM", "cty": "application/json", "kid": NVI_KID})
            .to_string()
            .as_bytes(),
    );
    let cek = random::bytes::<32>().map_err(|e| e.to_string())?;
    let iv = random::bytes::<12>().map_err(|e| e.to_string())?;
    let wrapped = key
        .encrypt(&mut getrandom::SysRng, rsa::Oaep::<sha1::Sha1>::new(), &cek)
        .map_err(|e| format!("RSA-OAEP: {e}"))?;
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| "AES key")?);
    let mut data = plaintext.as_bytes().to_vec();
    let tag = sealing
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header.as_bytes()),
            &mut data,
        )
        .map_err(|_| "AES-GCM")?;
    Ok(format!(
        "{header}.{}.{}.{}.{}",
        b64::encode(&wrapped),
        b64::encode(&iv),
        b64::encode(&data),
        b64::encode(tag.as_ref())
    ))
}

/// Opens a compact `RSA-OAEP`/`A256GCM` JWE: its claims.
pub fn decrypt_jwe(key: &rsa::PrivateKey, jwe: &str) -> Result<Value, String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let parts: Vec<&str> = jwe.split('.').collect();
    let [header, wrapped, iv, ciphertext, tag] = parts.as_slice() else {
        return Err("not a compact JWE".into());
    };
    let h: Value = b64::decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWE header")?;
    if h.get("alg").and_then(Value::as_str) != Some("RSA-OAEP")
        || h.get("enc").and_then(Value::as_str) != Some("A256GCM")
    {
        return Err("JWE must be RSA-OAEP / A256GCM".into());
    }
    let d = |s: &str| b64::decode(s).map_err(|_| "JWE part".to_string());
    let cek = key
        .decrypt(rsa::Oaep::<sha1::Sha1>::new(), &d(wrapped)?)
        .map_err(|_| "JWE key unwrap")?;
    let iv: [u8; 12] = d(iv)?.try_into().map_err(|_| "JWE iv")?;
    let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| "AES key")?);
    let mut data = d(ciphertext)?;
    data.extend_from_slice(&d(tag)?);
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header.as_bytes()),
            &mut data,
        )
        .map_err(|_| "JWE decryption")?;
    serde_json::from_slice(plain).map_err(|_| "JWE payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwe_round_trips_and_a_changed_byte_is_refused() {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let jwe = encrypt_jwe(&key.to_public_key(), r#"{"subject":"x"}"#).unwrap();
        assert_eq!(decrypt_jwe(&key, &jwe).unwrap()["subject"], "x");
        let mut broken: Vec<String> = jwe.split('.').map(String::from).collect();
        broken[3] = b64::encode(b"other bytes");
        assert!(decrypt_jwe(&key, &broken.join(".")).is_err());
    }
}
