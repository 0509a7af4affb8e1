//! Operations: logging, systemd notifications, signals, metrics, admin endpoint.

pub mod metrics;
