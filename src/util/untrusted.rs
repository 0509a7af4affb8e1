//! Text chosen outside np-agent — a partner's request id, a JWS `kid`, an
//! AORTA-ID, a file name an EHR wrote — reduced before a log line or an
//! error message carries it, so that it can neither look like one of our
//! own fields nor carry a patient number.
//!
//! [`reduced`] keeps `A-Z a-z 0-9 . _ : -` and writes `_` for anything else
//! (a space, `=`, `"`, a control character, any non-ASCII character); writes
//! `#` for each run of [`MIN_DIGIT_RUN`] or more digits (a BSN is 9 digits,
//! 8 without its leading zero); and keeps at most [`MAX_CHARS`] characters,
//! ending a cut value with `~`. A value with nothing to change comes back as
//! it was, so a sane request id still matches the partner's own log.

use std::borrow::Cow;

/// The longest reduced value, before the `~` that marks a cut.
pub const MAX_CHARS: usize = 64;
/// Runs of this many digits or more are written as `#`.
pub const MIN_DIGIT_RUN: usize = 8;
/// Input beyond this many characters is not looked at (the value is cut anyway).
const MAX_SCAN: usize = 1024;

/// `value` reduced to the safe alphabet, without digit runs, at most
/// [`MAX_CHARS`] characters (`~` after a cut); `-` for an empty value.
pub fn reduced(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("-");
    }
    if value.len() <= MAX_CHARS
        && value.bytes().all(safe)
        && longest_digit_run(value) < MIN_DIGIT_RUN
    {
        return Cow::Borrowed(value);
    }
    let mapped: Vec<u8> = value
        .chars()
        .take(MAX_SCAN)
        .map(|c| {
            if c.is_ascii() && safe(c as u8) {
                c as u8
            } else {
                b'_'
            }
        })
        .collect();
    let mut out = String::with_capacity(MAX_CHARS + 1);
    let mut rest = mapped.as_slice();
    while let Some(&b) = rest.first() {
        let run = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if run >= MIN_DIGIT_RUN {
            out.push('#');
            rest = &rest[run..];
        } else if run > 0 {
            out.extend(rest[..run].iter().map(|&d| d as char));
            rest = &rest[run..];
        } else {
            out.push(b as char);
            rest = &rest[1..];
        }
    }
    let cut = out.len() > MAX_CHARS || value.chars().nth(MAX_SCAN).is_some();
    if cut {
        out.truncate(MAX_CHARS);
        out.push('~');
    }
    Cow::Owned(out)
}

fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn longest_digit_run(value: &str) -> usize {
    value
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_values_are_kept_as_they_are() {
        for v in [
            "abc-123",
            "2ca8f0e1b7c94c3d",
            "5f1d6c1e-3c2a-4b7e-9a51-0d2f3e4a5b6c",
            "kid_1.2:x",
            "1234567",
            &"a".repeat(64),
        ] {
            assert!(matches!(reduced(v), Cow::Borrowed(_)), "{v}");
            assert_eq!(reduced(v), v);
        }
    }

    #[test]
    fn hostile_values_cannot_forge_fields_or_carry_a_bsn() {
        let cases = [
            ("level=error event=x", "level_error_event_x"),
            ("a\"b\\c\nd\re\tf", "a_b_c_d_e_f"),
            ("x\" level=error", "x__level_error"),
            ("999999151", "#"),
            ("bsn-999999151-x", "bsn-#-x"),
            ("12345678", "#"),
            ("1234567-1234567", "1234567-1234567"),
            ("a 99999915 b 123456789012", "a_#_b_#"),
            ("café ☃", "caf___"),
            ("", "-"),
            ("\u{1b}[31m", "__31m"),
        ];
        for (input, want) in cases {
            assert_eq!(reduced(input), want, "{input:?}");
        }
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "a".repeat(65);
        assert_eq!(reduced(&long), format!("{}~", "a".repeat(64)));
        // The digit run is masked before the cut, so no tail of it survives.
        let tail = format!("{}{}", "a".repeat(60), "999999151");
        assert_eq!(reduced(&tail), format!("{}#", "a".repeat(60)));
        let edge = format!("{}{}", "a".repeat(58), "9".repeat(20));
        assert_eq!(reduced(&edge), format!("{}#", "a".repeat(58)));
        let huge = "b".repeat(100_000);
        assert_eq!(reduced(&huge).len(), 65);
        // Every output is short, safe and free of digit runs.
        for input in [
            &long,
            &tail,
            &edge,
            &huge,
            &"é".repeat(100),
            &"1=".repeat(80),
        ] {
            let out = reduced(input);
            assert!(out.chars().count() <= MAX_CHARS + 1, "{out}");
            assert!(
                out.bytes().all(|b| safe(b) || b == b'#' || b == b'~'),
                "{out}"
            );
            assert!(longest_digit_run(&out) < MIN_DIGIT_RUN, "{out}");
        }
    }
}
