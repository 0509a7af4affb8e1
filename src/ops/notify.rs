//! systemd notifications (`sd_notify`): a datagram to `$NOTIFY_SOCKET`.
//! No unsafe code and no libsystemd: it is one Unix datagram.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`, `WATCHDOG=1`, `STOPPING=1`,
/// `STATUS=…`) when running under systemd; a no-op otherwise. Abstract socket
/// names (`@…`) are not supported by std and are skipped with a debug line.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if path.to_string_lossy().starts_with('@') {
        log::debug!("event=sd_notify.skipped reason=abstract_socket");
        return;
    }
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(state.as_bytes(), &path));
    if let Err(e) = sent {
        log::warn!(
            "event=sd_notify.failed state={} error={}",
            super::logging::Q(state),
            super::logging::Q(&e.to_string())
        );
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any and if
/// meant for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}
