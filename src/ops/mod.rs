//! Operations: what the daemon exposes about itself (metrics; later logging, signals, sd_notify).

pub mod metrics;
