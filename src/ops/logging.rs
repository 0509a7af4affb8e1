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
//! may contain spaces go through [`Q`]. A value a partner (or an EHR export)
//! chose — AORTA-ID, Mitz's subscription id, an outbox file name — goes
//! through [`P`] and a request id through [`Rid`]: marked `p:` and reduced to
//! `A-Z a-z 0-9 . _ : -`, digit runs that could be a BSN written as `#`, at
//! most 64 characters (`~` after a cut), see [`crate::util::untrusted`]; a
//! JWS `kid` in an error is reduced by the same function. And whatever a value holds, a line
//! has one `level=` and one `event=`: any later `level=` or `event=` (inside
//! a quoted reason, say) is written `level_`/`event_`, so a grep for
//! `level=error` or `event=…` finds only our own fields.

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
    let message = if record.target().starts_with("np_agent") {
        message
    } else {
        // A dependency's free text: keep it on one line and quoted.
        format!(
            "event=lib target={} msg={}",
            Q(record.target()),
            Q(&message)
        )
    };
    line.push_str(&one_level_one_event(&message));
    // Never let a value break the one-line-per-event rule.
    let mut line = line.replace(['\n', '\r'], " ");
    line.push('\n');
    line
}

/// `message` with every `level=` and every `event=` after its own leading
/// `event=` written as `level_`/`event_`: a value cannot add a field the
/// README tells operators to alert on.
fn one_level_one_event(message: &str) -> String {
    let (head, tail) = match message.strip_prefix("event=") {
        Some(rest) => ("event=", rest),
        None => ("", message),
    };
    let mut out = String::with_capacity(message.len());
    out.push_str(head);
    out.push_str(&tail.replace("level=", "level_").replace("event=", "event_"));
    out
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

/// A value a partner or an EHR export chose, for a log line: marked `p:`
/// (partner-supplied) and reduced by [`crate::util::untrusted::reduced`]
/// (safe alphabet, digit runs of 8 or more as `#`, at most 64 characters),
/// so always one bare logfmt token that no value of our own looks like.
pub struct P<'a>(pub &'a str);

impl fmt::Display for P<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PARTNER_MARK)?;
        f.write_str(&crate::util::untrusted::reduced(self.0))
    }
}

/// What [`P`] and [`Rid`] write before a value chosen outside the agent.
pub const PARTNER_MARK: &str = "p:";

/// A request id for a log line: one in the form the agent generates (32
/// lowercase hex digits) as it is, any other — a partner's `X-Request-Id` —
/// as [`P`] writes it. Either way a run of 8 or more digits is `#`.
pub struct Rid<'a>(pub &'a str);

impl fmt::Display for Rid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let generated = self.0.len() == 32
            && self
                .0
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if generated {
            f.write_str(&crate::util::untrusted::reduced(self.0))
        } else {
            P(self.0).fmt(f)
        }
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
    fn a_value_cannot_add_a_level_or_an_event() {
        let hostile = "x level=error event=forged";
        let ours = line(
            Level::Info,
            "np_agent::x",
            format_args!("event=token.refused detail={}", Q(hostile)),
            true,
        );
        assert_eq!(
            ours,
            "<6>level=info event=token.refused detail=\"x level_error event_forged\"\n"
        );
        let lib = line(
            Level::Warn,
            "rustls::server",
            format_args!("peer said level=error event=x"),
            false,
        );
        assert_eq!(lib.matches("level=").count(), 1, "{lib}");
        assert_eq!(lib.matches("event=").count(), 1, "{lib}");
        assert!(lib.contains("event=lib "), "{lib}");
    }

    #[test]
    fn partner_values() {
        assert_eq!(P("abc-123").to_string(), "p:abc-123");
        assert_eq!(
            P("level=error event=x").to_string(),
            "p:level_error_event_x"
        );
        assert_eq!(P("999999151").to_string(), "p:#");
        assert_eq!(P("").to_string(), "p:-");
        assert_eq!(P("p:x").to_string(), "p:p:x");
        let line = line(
            Level::Info,
            "np_agent::x",
            format_args!("event=x rid={}", P("a\"\nlevel=error 999999151")),
            true,
        );
        assert_eq!(line, "<6>level=info event=x rid=p:a__level_error_#\n");
    }

    #[test]
    fn request_ids() {
        // Ours as they are; a BSN-shaped digit run is masked even so.
        let ours = "2ca8f0e1b7c94c3d5f1d6c1e3c2a4b7e";
        assert_eq!(Rid(ours).to_string(), ours);
        assert_eq!(
            Rid("0000018c2a4b7e000000000000000001").to_string(),
            "0000018c2a4b7e#"
        );
        // Anything else is the partner's: marked and reduced.
        for (sent, logged) in [
            ("abc-123", "p:abc-123"),
            ("999999151", "p:#"),
            (
                "2CA8F0E1B7C94C3D5F1D6C1E3C2A4B7E",
                "p:2CA8F0E1B7C94C3D5F1D6C1E3C2A4B7E",
            ),
            (
                "2ca8f0e1b7c94c3d5f1d6c1e3c2a4b7",
                "p:2ca8f0e1b7c94c3d5f1d6c1e3c2a4b7",
            ),
            (
                "a\"level=error,event=forged",
                "p:a_level_error_event_forged",
            ),
        ] {
            assert_eq!(Rid(sent).to_string(), logged, "{sent}");
        }
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
