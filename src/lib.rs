//! np-agent: edge agent for Dutch health data exchange (Twiin TA Notified Pull,
//! Mitz consent notifications, Zorgviewer source access).
//!
//! Data flows down this list of modules; each has one job.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod cli;
pub mod config;
pub mod fhir;
pub mod ids;
pub mod oauth;
pub mod ops;
pub mod util;
