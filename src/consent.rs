//! The release decision: may this partner see this patient's data?
//! (DESIGN.md "Consent at release").
//!
//! One interface, [`ConsentCheck`], asked before anything of a patient is
//! served to a partner whose consent is `mitz`. Two implementations: the
//! Mitz consent view (`mitz::consent`, fed by consent notifications), and
//! the Mitz closed question (`mitz::closed`), the authority when a Mitz
//! partner has a `URL`.
//! Only [`Answer::Permit`] releases data: deny, not applicable, and a check
//! that could not be made all withhold it.

use crate::ids::Bsn;

/// Mitz data category of everything we serve until a finer mapping is
/// configured (DESIGN.md: `GGC002`, Behandelgegevens).
pub const DATA_CATEGORY: &str = "GGC002";

/// What is asked: may organisations of `provider_category` see
/// `data_category` data of `patient` held by `holder_ura` (us)?
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub patient: &'a Bsn,
    /// Our URA: the organisation holding the data.
    pub holder_ura: &'a str,
    pub data_category: &'a str,
    /// Mitz provider category of the requesting organisation (`RPZAC…`):
    /// what the consent view is keyed on.
    pub provider_category: &'a str,
    /// Its zorgaanbiedercategorie (`V4`, …): what the closed question names.
    pub requester_category: Option<&'a str>,
    /// The requesting organisation (bare OID), for a question that names it.
    pub requester: &'a str,
    /// The requesting organisation's URA (8 digits) when the request context
    /// names one (`X-ZV-Subject-Organization-Ura`); the closed question also
    /// reads it from a URA OID in `requester`.
    pub requester_ura: Option<&'a str>,
    /// The user's role as the request context gives it (`X-ZV-Subject-Role`).
    pub requester_role: Option<&'a str>,
    /// The user's id as the request context gives it (`X-ZV-Subject-Id`).
    pub requester_user: Option<&'a str>,
    /// Our id of the request that needs the answer (logs, to match its audit record).
    pub request_id: Option<&'a str>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Permit,
    Deny,
    /// Nothing known for this patient and category: no consent (opt-in).
    NotApplicable,
    /// The check could not be made (a file, a service): fail closed. The
    /// text names what failed, never the patient.
    Unavailable(String),
}

impl Answer {
    pub fn permits(&self) -> bool {
        *self == Answer::Permit
    }

    /// The audit trail's name of the decision.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Permit => "permit",
            Answer::Deny => "deny",
            Answer::NotApplicable => "not-applicable",
            Answer::Unavailable(_) => "unavailable",
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local consent view kept by Mitz notifications.
    View,
    /// Mitz's closed question (XACML).
    ClosedQuestion,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::View => "view",
            Source::ClosedQuestion => "closed-question",
        }
    }
}

/// The release decision, asked once per request that would disclose data.
pub trait ConsentCheck: Send + Sync {
    fn ask(&self, question: &Question<'_>, now: i64) -> (Answer, Source);

    /// A newer consent notification changed what is known of `patient`:
    /// forget any answer kept for it.
    fn forget_patient(&self, _patient: &Bsn) {}
}
