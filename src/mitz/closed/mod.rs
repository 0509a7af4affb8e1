//! The Mitz closed question (gesloten autorisatievraag, spec
//! mitz-and-aorta.md §7): may we release data category C of patient P to
//! requester R? Asked before anything of a patient is served to a partner
//! whose consent is `mitz`, when a Mitz partner has a `URL`
//! (DESIGN.md "Consent at release"). [`ClosedQuestion`] is the
//! [`ConsentCheck`] that asks it.
//!
//! | part | file | I/O |
//! |---|---|---|
//! | the SOAP/XACML question | [`request`] | none |
//! | Mitz's answer | [`reply`] | none |
//! | decisions kept for `NP_MITZ_DECISION_TTL` | [`cache`] | none (`now` passed in) |
//! | `POST <URL>/geslotenautorisatievraag/xacml3`, the log line, the metric | this file | HTTP through [`PartnerHttp`], the clock for the elapsed time |
//!
//! Only `Permit` for the category releases. What each outcome becomes:
//!
//! | Mitz | [`Answer`] | kept | `decision` label |
//! |---|---|---|---|
//! | `Permit` | `Permit` | yes | `permit` |
//! | `Deny` | `Deny` | yes | `deny` |
//! | `NotApplicable` | `NotApplicable` | yes | `not-applicable` |
//! | `Indeterminate`, or no result for the category | `Unavailable` | no | `indeterminate` |
//! | a SOAP fault (any status) | `Unavailable` | no | `fault` |
//! | another status than 200 | `Unavailable` | no | `http-error` |
//! | no answer within the timeout (5 s) | `Unavailable` | no | `timeout` |
//! | no connection, TLS refused | `Unavailable` | no | `unreachable` |
//! | an answer we cannot read | `Unavailable` | no | `invalid-answer` |
//! | a question we cannot write (a value that is not printable text) | `Unavailable` | no | `invalid-question` |
//!
//! Every question asked (not a cache hit) counts in
//! `np_mitz_decisions_total{decision}`, and logs `event=mitz.closed_question`
//! with the partner, the `X-Request-Id`/`MessageID` we sent, the requesting
//! organisation, the category, the decision and the reason: `warn` for
//! anything but a permit, `debug` for a permit. Never the BSN, the user id
//! or a text Mitz wrote (a fault reason could repeat the BSN).
//! A cache hit counts in `np_mitz_decision_cache_hits_total`.

pub mod cache;
pub mod reply;
pub mod request;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::consent::{Answer, ConsentCheck, Question, Source};
use crate::http::partners::{HttpReply, Outgoing, PartnerHttp};
use crate::ids::Bsn;
use crate::ops::logging::{Q, Rid};
use crate::ops::metrics::{self, Metrics};
use crate::util::random;

use self::cache::{Asker, DecisionCache, Key};
use self::reply::{Asked, Decision, Reply};
use self::request::{Query, Requester};

/// Path of the closed question under the Mitz base URL.
pub const PATH: &str = "geslotenautorisatievraag/xacml3";
/// Media type of the question (SOAP 1.2).
pub const SOAP_XML: &str = "application/soap+xml; charset=UTF-8";
/// How long Mitz has to answer, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`ClosedQuestion`] is built from (the configuration's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Mitz partner's name: its HTTP client and circuit, and the logs.
    pub partner: String,
    /// `NP_PARTNER_<NAME>_URL`, the Mitz API base
    /// (`https://tst-api.mijn-mitz.nl/tst-us/mitz/` for TST).
    pub base_url: String,
    /// `NP_ORG_CATEGORY`: our zorgaanbiedercategorie (`Z3`, `V6`, …).
    pub org_category: String,
    /// `NP_MITZ_DECISION_TTL`: how long a decision answers the same
    /// question again (zero: never).
    pub decision_ttl: Duration,
    /// How long Mitz has to answer ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Most decisions kept ([`cache::DEFAULT_MAX_ENTRIES`]).
    pub max_cached: usize,
}

impl Settings {
    /// The settings with the default timeout and cache bound.
    pub fn new(
        partner: &str,
        base_url: &str,
        org_category: &str,
        decision_ttl: Duration,
    ) -> Settings {
        Settings {
            partner: partner.to_string(),
            base_url: base_url.to_string(),
            org_category: org_category.to_string(),
            decision_ttl,
            timeout: DEFAULT_TIMEOUT,
            max_cached: cache::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// The closed question as a [`ConsentCheck`].
pub struct ClosedQuestion {
    partner: String,
    /// `<URL>/geslotenautorisatievraag/xacml3`.
    endpoint: String,
    org_category: String,
    timeout: Duration,
    http: Arc<dyn PartnerHttp>,
    metrics: Arc<Metrics>,
    cache: Mutex<DecisionCache>,
    /// When set, a Mitz whose circuit is open is not asked: the answer is
    /// withheld at once instead of after a timeout per request.
    circuits: Option<Arc<crate::circuit::Circuits>>,
}

impl std::fmt::Debug for ClosedQuestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosedQuestion")
            .field("partner", &self.partner)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl ClosedQuestion {
    /// Asks at `settings.base_url` through `http` (give it the circuit-counting
    /// partner client, so a Mitz that stops answering shows in its circuit).
    pub fn new(
        settings: Settings,
        http: Arc<dyn PartnerHttp>,
        metrics: Arc<Metrics>,
    ) -> ClosedQuestion {
        let endpoint = format!("{}/{PATH}", settings.base_url.trim_end_matches('/'));
        ClosedQuestion {
            partner: settings.partner,
            endpoint,
            org_category: settings.org_category,
            timeout: settings.timeout,
            http,
            metrics,
            cache: Mutex::new(DecisionCache::new(
                settings.decision_ttl.as_secs(),
                settings.max_cached,
            )),
            circuits: None,
        }
    }

    /// The same, asking Mitz only while its circuit admits requests.
    pub fn with_circuits(mut self, circuits: Arc<crate::circuit::Circuits>) -> ClosedQuestion {
        self.circuits = Some(circuits);
        self
    }

    /// The URL questions go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Forgets every decision about `patient`: a newer consent notification
    /// arrived, so the next release asks Mitz again.
    pub fn invalidate_patient(&self, patient: &Bsn) {
        self.lock().invalidate_patient(patient.as_str());
    }

    /// Decisions kept (for `status` output and tests).
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DecisionCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The release decision for `q`: from the cache, else from Mitz.
    fn decide(&self, q: &Question<'_>, now: i64) -> Answer {
        let patient = q.patient.as_str();
        let key = Key {
            asker: Asker {
                organisation: q.requester.to_string(),
                ura: q.requester_ura.map(str::to_string),
                category: q
                    .requester_category
                    .unwrap_or(q.provider_category)
                    .to_string(),
                role: q.requester_role.map(str::to_string),
                user: q.requester_user.map(str::to_string),
            },
            data_category: q.data_category.to_string(),
        };
        let epoch = {
            let mut cache = self.lock();
            if let Some(decision) = cache.get(patient, &key, now) {
                self.metrics.inc(metrics::MITZ_DECISION_CACHE_HITS, &[]);
                return answer_of(decision, None);
            }
            cache.epoch()
        };
        if let Some(circuits) = &self.circuits {
            if let crate::circuit::Admit::No { retry_at } = circuits.admit(&self.partner, now) {
                let wait = retry_at.map_or("-".to_string(), |t| format!("{}", (t - now).max(0)));
                return self.failed(
                    q,
                    "-",
                    Failure::CircuitOpen,
                    &format!("not asked: the circuit is open (next probe in {wait} s)"),
                );
            }
        }
        let Ok(message_id) = random::uuid_v4() else {
            return self.failed(q, "-", Failure::Question, "no randomness for a message id");
        };
        let started = Instant::now();
        let outcome = self.ask_mitz(q, &message_id, now);
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok((decision, status)) => {
                self.lock().put(patient, key, decision, now, epoch);
                self.metrics
                    .inc(metrics::MITZ_DECISIONS, &[("decision", decision.label())]);
                let reason = status.as_deref().unwrap_or("-");
                if decision == Decision::Permit {
                    log::debug!(
                        "event=mitz.closed_question partner={} rid={} request_id={message_id} requester={} category={} decision=permit ms={ms}",
                        self.partner,
                        q.request_id
                            .map_or_else(|| "-".to_string(), |r| Rid(r).to_string()),
                        Q(q.requester),
                        Q(q.data_category),
                    );
                } else {
                    log::warn!(
                        "event=mitz.closed_question partner={} rid={} request_id={message_id} requester={} category={} decision={} reason={} ms={ms}",
                        self.partner,
                        q.request_id
                            .map_or_else(|| "-".to_string(), |r| Rid(r).to_string()),
                        Q(q.requester),
                        Q(q.data_category),
                        decision.label(),
                        Q(reason),
                    );
                }
                answer_of(decision, status.as_deref())
            }
            Err((failure, reason)) => {
                let failure = match failure {
                    Failure::Transport if started.elapsed() >= self.timeout * 9 / 10 => {
                        Failure::Timeout
                    }
                    other => other,
                };
                self.failed(q, &message_id, failure, &reason)
            }
        }
    }

    /// Logs, counts and answers a question that got no decision.
    fn failed(&self, q: &Question<'_>, message_id: &str, failure: Failure, reason: &str) -> Answer {
        let reason = match failure {
            Failure::Timeout => format!("no answer within {} ms", self.timeout.as_millis()),
            _ => reason.to_string(),
        };
        self.metrics
            .inc(metrics::MITZ_DECISIONS, &[("decision", failure.label())]);
        log::warn!(
            "event=mitz.closed_question partner={} rid={} request_id={message_id} requester={} category={} decision={} reason={}",
            self.partner,
            q.request_id
                .map_or_else(|| "-".to_string(), |r| Rid(r).to_string()),
            Q(q.requester),
            Q(q.data_category),
            failure.label(),
            Q(&reason),
        );
        Answer::Unavailable(format!(
            "mitz partner {}: closed question at {}: {reason}",
            self.partner, self.endpoint
        ))
    }

    /// One question to Mitz: the decision for `q.data_category`, or why
    /// there is none.
    fn ask_mitz(
        &self,
        q: &Question<'_>,
        message_id: &str,
        now: i64,
    ) -> Result<(Decision, Option<String>), (Failure, String)> {
        let ura = q
            .requester_ura
            .map(str::to_string)
            .or_else(|| request::ura_of_oid(q.requester));
        let categories = [q.data_category];
        let query = Query {
            message_id,
            to: &self.endpoint,
            now,
            patient: q.patient,
            holder_ura: q.holder_ura,
            holder_category: &self.org_category,
            data_categories: &categories,
            requester: Requester {
                ura: ura.as_deref(),
                category: q.requester_category.unwrap_or(q.provider_category),
                role: q.requester_role.and_then(request::role_code),
                uzi: q.requester_user.and_then(request::uzi_number),
            },
        };
        let body = request::build(&query).map_err(|e| (Failure::Question, e.to_string()))?;
        let headers = [
            ("X-Request-Id", message_id),
            ("Accept", "application/soap+xml"),
        ];
        let outgoing = Outgoing {
            method: "POST",
            url: &self.endpoint,
            content_type: SOAP_XML,
            body: &body,
            headers: &headers,
        };
        let reply = self
            .http
            .send_within(&self.partner, &outgoing, self.timeout)
            .map_err(|e| (Failure::Transport, e))?;
        let asked = Asked {
            message_id,
            patient: q.patient,
            categories: &categories,
        };
        read(&reply, &asked)
    }
}

impl ConsentCheck for ClosedQuestion {
    fn ask(&self, question: &Question<'_>, now: i64) -> (Answer, Source) {
        (self.decide(question, now), Source::ClosedQuestion)
    }

    fn forget_patient(&self, patient: &Bsn) {
        self.invalidate_patient(patient);
    }
}

/// Why no decision came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The question could not be written.
    Question,
    /// No answer: connection, TLS, or a read that failed.
    Transport,
    /// No answer within the timeout.
    Timeout,
    /// A status other than 200.
    Status,
    /// A SOAP fault.
    Fault,
    /// An answer we cannot read.
    Answer,
    /// Not asked: Mitz failed repeatedly and its circuit is open.
    CircuitOpen,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Question => "invalid-question",
            Failure::Transport => "unreachable",
            Failure::Timeout => "timeout",
            Failure::Status => "http-error",
            Failure::Fault => "fault",
            Failure::Answer => "invalid-answer",
            Failure::CircuitOpen => "circuit-open",
        }
    }
}

/// The decision in `reply` for the one category of `asked`.
fn read(
    reply: &HttpReply,
    asked: &Asked<'_>,
) -> Result<(Decision, Option<String>), (Failure, String)> {
    let parsed = reply::parse(&reply.body, asked);
    if reply.status != 200 {
        return Err(match parsed {
            Ok(Reply::Fault(f)) => (
                Failure::Fault,
                format!("answered {} with soap fault {f}", reply.status),
            ),
            _ => (Failure::Status, format!("answered {}", reply.status)),
        });
    }
    match parsed {
        Ok(Reply::Decided(decisions)) => decisions
            .into_iter()
            .next()
            .map(|d| (d.decision, d.status))
            .ok_or_else(|| (Failure::Answer, "no decision for the category".to_string())),
        Ok(Reply::Fault(f)) => Err((Failure::Fault, format!("answered soap fault {f}"))),
        Err(e) => Err((Failure::Answer, e.to_string())),
    }
}

/// The release answer for a decision.
fn answer_of(decision: Decision, status: Option<&str>) -> Answer {
    match decision {
        Decision::Permit => Answer::Permit,
        Decision::Deny => Answer::Deny,
        Decision::NotApplicable => Answer::NotApplicable,
        Decision::Indeterminate => Answer::Unavailable(match status {
            Some(s) => format!("mitz answered Indeterminate ({s})"),
            None => "mitz answered Indeterminate".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
