//! np-agent: edge agent for Dutch health data exchange (Twiin TA Notified Pull,
//! Mitz consent notifications, Zorgviewer source access).
//!
//! Data flows down this list of modules; each has one job.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod backpressure;
pub mod cases;
pub mod certwatch;
pub mod circuit;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod fhir;
pub mod http;
pub mod ids;
pub mod jose;
pub mod manpage;
pub mod mitz;
pub mod oauth;
pub mod ops;
pub mod pki;
pub mod receiver;
pub mod sender;
pub mod serve;
pub mod spool;
pub mod util;
pub mod worker;
