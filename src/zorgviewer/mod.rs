//! Zorgviewer source access (spec zorgviewer.md): the pure cores of the
//! requests a `zorgviewer` partner makes.
//!
//! - [`context`]: the request context on every FHIR request of such a
//!   partner (`X-Request-Id`, `X-Correlation-Id`, the `X-ZV-*` headers, the
//!   signed `X-ZV-Context`, Epic's `AORTA-ID`), checked into a
//!   [`context::RequestContext`] for the audit trail, or refused with a
//!   [`context::ContextRefusal`] (400 or 403 with an OperationOutcome).
//! - [`aorta`]: the two Epic forms of `AORTA-ID`.
//!
//! Nothing here does I/O: the caller passes the headers, the partner's key
//! set and accepted algorithms, the organisation of the bearer token and
//! `now`; it answers, logs and audits.

pub mod aorta;
pub mod context;
mod fields;
