//! One attempt at the PRS and the NVI (I/O): a fresh blind, a token and
//! `POST /oprf/eval` at the PRS, then the call to the index. Every request
//! carries a bearer token from the service's token endpoint (over the same
//! client certificate, so certificate-bound tokens work), and the attempt's
//! request id as `X-Request-Id` and `X-GF-Correlation-ID`. A `401` forgets
//! the token and tries once more with a new one; a second `401` is a
//! refusal.

use super::oprf::{self, Recipient};
use super::register::{self, Answer, Call, Localized, Op, Pseudonym, Referral, Verdict};
use super::token::{ServiceTokens, TokenClientError};
use crate::config::{Config, NviPartner, Partner};
use crate::http::partners::{HttpReply, PartnerHttp};
use crate::ids::Bsn;
use crate::util::random;

/// A call that came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// The attempt's request id.
    pub rid: String,
}

/// Why an attempt did not come through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try again later.
    Retry {
        reason: String,
        retry_after: Option<u64>,
        rid: String,
        /// `token`, `evaluate` or `index`.
        step: &'static str,
    },
    /// Trying again will not help.
    Refused {
        reason: String,
        rid: String,
        step: &'static str,
    },
    /// Our own randomness or arithmetic failed.
    Local(String),
}

impl Failure {
    /// The reason, whatever the kind.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry { reason, .. } | Failure::Refused { reason, .. } => reason,
            Failure::Local(reason) => reason,
        }
    }
}

/// One attempt's context.
pub struct Attempt<'a> {
    pub config: &'a Config,
    pub tokens: &'a ServiceTokens,
    pub http: &'a dyn PartnerHttp,
    pub nvi: NviPartner<'a>,
    /// For logs: the spool item, or the command.
    pub item: &'a str,
    pub now: i64,
}

impl Attempt<'_> {
    /// Registers (`Op::Register`) or removes (`Op::Deregister`) our
    /// referral of `patient`.
    pub fn change(&self, patient: &Bsn, op: Op) -> Result<Done, Failure> {
        let rid = new_rid()?;
        let Some(source) = self.config.source_id.as_ref() else {
            return Err(Failure::Refused {
                reason: format!(
                    "partner {}: NP_SOURCE_ID is not set; the index records our source with each referral",
                    self.nvi.name
                ),
                rid,
                step: "index",
            });
        };
        let pseudonym = self.pseudonym(patient, &rid)?;
        let who = Referral {
            ura: &self.config.org_ura,
            source,
        };
        let base = &self.nvi.service.url;
        let call = match op {
            Op::Deregister => register::deregister(self.nvi.api, base, &who, &pseudonym),
            _ => register::register(self.nvi.api, base, &who, &pseudonym),
        };
        drop(pseudonym);
        let reply = self.index(&call, op, &rid)?;
        Ok(Done {
            status: reply.status,
            rid,
        })
    }

    /// The organisations the index knows for `patient`.
    pub fn localize(&self, patient: &Bsn) -> Result<Vec<Localized>, Failure> {
        let rid = new_rid()?;
        let pseudonym = self.pseudonym(patient, &rid)?;
        let call = register::localize(self.nvi.api, &self.nvi.service.url, &pseudonym);
        drop(pseudonym);
        let reply = self.index(&call, Op::Localize, &rid)?;
        register::read_localized(self.nvi.api, &reply.body).map_err(|detail| Failure::Retry {
            reason: format!(
                "partner {}: {} {} answered {} with {detail}",
                self.nvi.name, call.method, call.endpoint, reply.status
            ),
            retry_after: None,
            rid: rid.clone(),
            step: "index",
        })
    }

    /// A fresh pseudonym of `patient` for the index: blind, evaluate at
    /// the PRS, keep the JWE and the blind factor (in memory only).
    pub fn pseudonym(&self, patient: &Bsn, rid: &str) -> Result<Pseudonym, Failure> {
        let Some(prs) = self.config.prs() else {
            return Err(Failure::Refused {
                reason: format!(
                    "partner {}: no prs partner to evaluate the pseudonym",
                    self.nvi.name
                ),
                rid: rid.to_string(),
                step: "evaluate",
            });
        };
        let recipient = Recipient::oin(&self.nvi.oin, &self.nvi.pseudonym_scope);
        let input = oprf::input(patient, &recipient).map_err(|e| Failure::Local(e.to_string()))?;
        let seed = random::bytes::<64>().map_err(|e| Failure::Local(e.to_string()))?;
        let blinded = oprf::blind(&input, seed).map_err(|e| Failure::Local(e.to_string()))?;
        drop(input);
        let url = format!("{}{}", prs.url, register::EVAL_PATH);
        let body = register::eval_body(&blinded.element_wire(), &recipient);
        let call = Call {
            method: "POST",
            url: url.clone(),
            endpoint: url,
            body: Some((register::JSON, body)),
        };
        let reply = self.authorised(prs.partner, &call, Op::Evaluate, rid, "evaluate")?;
        let Some(jwe) = register::read_eval(&reply.body) else {
            return Err(Failure::Retry {
                reason: format!(
                    "partner {}: POST {} answered {} without a compact JWE",
                    prs.name, call.endpoint, reply.status
                ),
                retry_after: None,
                rid: rid.to_string(),
                step: "evaluate",
            });
        };
        Ok(Pseudonym {
            jwe,
            factor: blinded.factor,
        })
    }

    fn index(&self, call: &Call, op: Op, rid: &str) -> Result<HttpReply, Failure> {
        self.authorised(self.nvi.partner, call, op, rid, "index")
    }

    /// `call` to `partner` with its token; a `401` refreshes the token
    /// once. Returns the answer when the call came through.
    fn authorised(
        &self,
        partner: &Partner,
        call: &Call,
        op: Op,
        rid: &str,
        step: &'static str,
    ) -> Result<HttpReply, Failure> {
        let mut refreshed = false;
        loop {
            let token = self
                .tokens
                .token(self.config, partner, self.http, self.now)
                .map_err(|e| token_failure(&e, rid, self.now, self.config))?;
            let reply = self
                .send(&partner.name, call, &token.token, rid)
                .map_err(|detail| Failure::Retry {
                    // The URL's query holds the pseudonym: never in a reason.
                    reason: format!(
                        "partner {}: {} {} failed: {}",
                        partner.name,
                        call.method,
                        call.endpoint,
                        detail.replace(&call.url, &call.endpoint)
                    ),
                    retry_after: None,
                    rid: rid.to_string(),
                    step,
                })?;
            let answer = Answer {
                status: reply.status,
                retry_after: reply.retry_after.as_deref(),
                body: &reply.body,
            };
            let verdict = register::judge(
                op,
                &partner.name,
                call.method,
                &call.endpoint,
                &answer,
                self.now,
                self.config.retry_cap.as_secs(),
            );
            match verdict {
                Verdict::Done { .. } => return Ok(reply),
                Verdict::Unauthorized { .. } if !refreshed => {
                    refreshed = true;
                    self.tokens.invalidate(&partner.name);
                    log::info!(
                        "event=nvi.token_refreshed partner={} item={} rid={rid}",
                        partner.name,
                        self.item
                    );
                }
                Verdict::Unauthorized { reason } | Verdict::Refused { reason } => {
                    return Err(Failure::Refused {
                        reason,
                        rid: rid.to_string(),
                        step,
                    });
                }
                Verdict::Retry {
                    reason,
                    retry_after,
                } => {
                    return Err(Failure::Retry {
                        reason,
                        retry_after,
                        rid: rid.to_string(),
                        step,
                    });
                }
            }
        }
    }

    fn send(
        &self,
        partner: &str,
        call: &Call,
        token: &str,
        rid: &str,
    ) -> Result<HttpReply, String> {
        let auth = format!("Bearer {token}");
        let accept = match call.body {
            Some((media, _)) => media,
            None if call.endpoint.ends_with(register::LIST_PATH) => register::FHIR_JSON,
            None => register::JSON,
        };
        let headers = [
            ("Authorization", auth.as_str()),
            ("Accept", accept),
            ("X-Request-Id", rid),
            ("X-GF-Correlation-ID", rid),
        ];
        match (&call.body, call.method) {
            (None, "GET") => self.http.get(partner, &call.url, &headers),
            (Some((media, body)), method) => self
                .http
                .send(partner, method, &call.url, media, body, &headers),
            (None, method) => {
                self.http
                    .send(partner, method, &call.url, register::JSON, &[], &headers)
            }
        }
    }
}

/// No token: every refusal is tried again (the OAuth registration may be
/// put right meanwhile), after `Retry-After` when sent, until
/// `NP_RETRY_MAX_AGE`.
fn token_failure(e: &TokenClientError, rid: &str, now: i64, config: &Config) -> Failure {
    let retry_after = match e {
        TokenClientError::Refused {
            retry_after: Some(v),
            ..
        } => crate::util::retry_after::parse(v, now, config.retry_cap.as_secs()),
        _ => None,
    };
    Failure::Retry {
        reason: e.to_string(),
        retry_after,
        rid: rid.to_string(),
        step: "token",
    }
}

fn new_rid() -> Result<String, Failure> {
    random::uuid_v4().map_err(|e| Failure::Local(format!("no randomness for a request id: {e}")))
}
