//! Operations: logging, systemd notifications, signals, metrics, admin endpoint.

pub mod logging;
pub mod metrics;
pub mod notify;
