//! Log output: one event a line, logfmt, to stderr.
//!
//! `simple_logger` decides what is enabled (our level from `NP_LOG`, chatty
//! dependencies held at `warn`); this wrapper writes the line. Under journald
//! (`JOURNAL_STREAM` names our stderr) each line starts with the syslog
//! priority (`<3>` error … `<7>` debug) and carries no timestamp, since
//! journald adds one; elsewhere each line starts with `ts=`.
//!
//! What a line may hold, per level (see README "Logging"): partner names, case
//! ids, Task identifiers, request ids, statuses, durations, file names and
//! reasons. Never a BSN, a token, an assertion, key material, or resource
//! content, at any level: those go to the audit trail or nowhere.
//! Messages are written by our code as `event=<name> key=value …`; values that
//! may contain spaces go through [`Q`].

use std::fmt;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};
use simple_logger::SimpleLogger;

/// Installs the logger. Safe to call more than once (later calls only change the level).
pub fn init(level: LevelFilter) {
    let filter = SimpleLogger::new()
        .with_level(level)
        .with_module_level("rustls", LevelFilter::Warn.min(level))
        .with_module_level("ureq", LevelFilter::Warn.min(level))
        .with_module_level("ureq_proto", LevelFilter::Warn.min(level));
    let logger = Logfmt {
        filter,
        journald: stderr_is_journal(),
    };
    // A second call keeps the first logger; the level still follows the call.
    let _ = log::set_boxed_logger(Box::new(logger));
    log::set_max_level(level);
}

struct Logfmt {
    filter: SimpleLogger,
    journald: bool,
}

impl Log for Logfmt {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(record, self.journald, crate::util::time::now_unix_ms());
        // One write per line so concurrent threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn format_line(record: &Record<'_>, journald: bool, now_ms: u128) -> String {
    let level = match record.level() {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    let mut line = String::with_capacity(160);
    if journald {
        let prio = match record.level() {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        line.push_str(&format!("<{prio}>"));
    } else {
        let secs = i64::try_from(now_ms / 1000).unwrap_or(0);
        let ts = crate::util::time::rfc3339(secs);
        line.push_str(&format!(
            "ts={}.{:03}Z ",
            ts.trim_end_matches('Z'),
            now_ms % 1000
        ));
    }
    line.push_str("level=");
    line.push_str(level);
    line.push(' ');
    let message = record.args().to_string();
    if record.target().starts_with("np_agent") {
        line.push_str(&message);
    } else {
        // A dependency's free text: keep it on one line and quoted.
        line.push_str(&format!(
            "event=lib target={} msg={}",
            Q(record.target()),
            Q(&message)
        ));
    }
    // Never let a value break the one-line-per-event rule.
    let mut line = line.replace(['\n', '\r'], " ");
    line.push('\n');
    line
}

/// True when stderr is the journal stream systemd told us about.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// A logfmt value: written bare when it is a simple token, otherwise quoted
/// with `"` and `\` escaped and control characters dropped.
pub struct Q<'a>(pub &'a str);

impl fmt::Display for Q<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
        if plain {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => f.write_str(" ")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: Level, target: &str, msg: fmt::Arguments<'_>, journald: bool) -> String {
        let record = Record::builder()
            .level(level)
            .target(target)
            .args(msg)
            .build();
        format_line(&record, journald, 1_796_191_098_123)
    }

    #[test]
    fn our_lines_are_logfmt_with_timestamp_or_priority() {
        assert_eq!(
            line(
                Level::Info,
                "np_agent::x",
                format_args!("event=notify.sent partner=vip status=201"),
                false
            ),
            "ts=2026-12-02T05:58:18.123Z level=info event=notify.sent partner=vip status=201\n"
        );
        assert_eq!(
            line(
                Level::Error,
                "np_agent",
                format_args!("event=startup.failed"),
                true
            ),
            "<3>level=error event=startup.failed\n"
        );
        assert_eq!(
            line(Level::Debug, "np_agent", format_args!("event=x"), true),
            "<7>level=debug event=x\n"
        );
    }

    #[test]
    fn dependency_text_is_quoted_on_one_line() {
        assert_eq!(
            line(
                Level::Warn,
                "rustls::server",
                format_args!("Sending \"fatal\"\nalert"),
                true
            ),
            "<4>level=warn event=lib target=rustls::server msg=\"Sending \\\"fatal\\\" alert\"\n"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(Q("plain-value_1.2").to_string(), "plain-value_1.2");
        assert_eq!(Q("two words").to_string(), "\"two words\"");
        assert_eq!(Q("").to_string(), "\"\"");
        assert_eq!(Q("a=b").to_string(), "\"a=b\"");
        assert_eq!(Q("x\"y\\z").to_string(), "\"x\\\"y\\\\z\"");
    }
}
