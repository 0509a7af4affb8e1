//! HTTP to partners: one pooled mTLS [`ureq::Agent`] per partner behind a
//! small trait, so protocol code (token client, JWKS fetch, notify, pull)
//! stays free of I/O and can be driven by anything that speaks HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;

use super::client::{self, ClientTimeouts};

/// Largest partner response body we read (FHIR pages, JWKS, tokens).
pub const MAX_RESPONSE_BODY: u64 = 64 * 1024 * 1024;

/// A partner's answer to one HTTP request.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub retry_after: Option<String>,
    pub location: Option<String>,
}

/// A request with a body, for [`PartnerHttp::send_within`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// `POST` or `PUT`.
    pub method: &'a str,
    pub url: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub headers: &'a [(&'a str, &'a str)],
}

/// HTTP to partners over mutual TLS.
pub trait PartnerHttp: Send + Sync {
    /// `GET url`; an `Err` is a transport failure described for an operator.
    fn get(&self, partner: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String>;
    /// `method url` with a body (`POST`, `PUT`), or `DELETE url` (the body
    /// and its type are not sent).
    fn send(
        &self,
        partner: &str,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, String>;

    /// [`PartnerHttp::send`] that ends within `timeout` (connect, send and
    /// read together), for a caller someone waits on (the Mitz closed
    /// question). The default forwards to `send` under the client's own
    /// timeouts: right for test doubles, so a wrapper or a real client must
    /// override it.
    fn send_within(
        &self,
        partner: &str,
        request: &Outgoing<'_>,
        timeout: Duration,
    ) -> Result<HttpReply, String> {
        let _ = timeout;
        self.send(
            partner,
            request.method,
            request.url,
            request.content_type,
            request.body,
            request.headers,
        )
    }
}

/// The production [`PartnerHttp`]: ureq over our rustls client configuration
/// (trust bundle, CRLs, minimum TLS version, our certificate).
pub struct Partners {
    tls: Arc<ClientConfig>,
    timeouts: ClientTimeouts,
    agents: Mutex<HashMap<String, ureq::Agent>>,
}

impl Partners {
    pub fn new(tls: Arc<ClientConfig>, timeouts: ClientTimeouts) -> Partners {
        Partners {
            tls,
            timeouts,
            agents: Mutex::new(HashMap::new()),
        }
    }

    fn agent(&self, partner: &str) -> ureq::Agent {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(partner.to_string())
            .or_insert_with(|| client::agent(self.tls.clone(), self.timeouts))
            .clone()
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn reply(mut resp: ureq::http::Response<ureq::Body>) -> Result<HttpReply, String> {
    let status = resp.status().as_u16();
    let content_type = header(&resp, "content-type");
    let cache_control = header(&resp, "cache-control");
    let retry_after = header(&resp, "retry-after");
    let location = header(&resp, "location");
    let body =
        client::read_body_limited(&mut resp, MAX_RESPONSE_BODY).map_err(|e| e.to_string())?;
    Ok(HttpReply {
        status,
        body,
        content_type,
        cache_control,
        retry_after,
        location,
    })
}

impl PartnerHttp for Partners {
    fn get(&self, partner: &str, url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, String> {
        let mut req = self.agent(partner).get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call().map_err(|e| e.to_string()).and_then(reply)
    }

    fn send(
        &self,
        partner: &str,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<HttpReply, String> {
        let request = Outgoing {
            method,
            url,
            content_type,
            body,
            headers,
        };
        self.send_request(partner, &request, None)
    }

    fn send_within(
        &self,
        partner: &str,
        request: &Outgoing<'_>,
        timeout: Duration,
    ) -> Result<HttpReply, String> {
        self.send_request(partner, request, Some(timeout))
    }
}

impl Partners {
    /// Sends `request`; with `timeout`, the whole call (every phase the
    /// agent times, together) ends within it.
    fn send_request(
        &self,
        partner: &str,
        request: &Outgoing<'_>,
        timeout: Option<Duration>,
    ) -> Result<HttpReply, String> {
        let agent = self.agent(partner);
        if request.method == "DELETE" {
            // A delete by query (the NVI): no body.
            let mut req = agent.delete(request.url);
            if let Some(t) = timeout {
                req = req
                    .config()
                    .timeout_global(Some(t))
                    .timeout_per_call(Some(t))
                    .build();
            }
            for (k, v) in request.headers {
                req = req.header(*k, *v);
            }
            return req.call().map_err(|e| e.to_string()).and_then(reply);
        }
        let mut req = match request.method {
            "POST" => agent.post(request.url),
            "PUT" => agent.put(request.url),
            other => return Err(format!("unsupported method {other}")),
        };
        if let Some(t) = timeout {
            req = req
                .config()
                .timeout_global(Some(t))
                .timeout_per_call(Some(t))
                .build();
        }
        req = req.header("Content-Type", request.content_type);
        for (k, v) in request.headers {
            req = req.header(*k, *v);
        }
        req.send(request.body)
            .map_err(|e| e.to_string())
            .and_then(reply)
    }
}
