//! `Retry-After` (RFC 9110 §10.2.3): how long a partner asks us to wait,
//! read one way for every caller, at a `now` the caller passes in.

use super::time;

/// Seconds to wait, at most `max`, from a `Retry-After` value received at
/// `now`: delta-seconds (`120`) or an HTTP-date in any of its three forms
/// ([`time::parse_http_date`]). A date in the past is 0; a longer wait (a
/// far date, a number of any size) is `max`. `None` for anything else (a
/// sign, a fraction, a unit, a malformed date), and the caller's own
/// back-off applies.
pub fn parse(value: &str, now: i64, max: u64) -> Option<u64> {
    let v = value.trim_matches([' ', '\t']);
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: a parse error can only be an overflow.
        return Some(v.parse::<u64>().unwrap_or(u64::MAX).min(max));
    }
    let at = time::parse_http_date(v, now)?;
    Some(u64::try_from(at.saturating_sub(now)).unwrap_or(0).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Sun, 06 Nov 1994 08:49:37 GMT`.
    const AT: i64 = 784_111_777;

    #[test]
    fn delta_seconds() {
        assert_eq!(parse("120", 0, 300), Some(120));
        assert_eq!(parse(" 7\t", 0, 300), Some(7));
        assert_eq!(parse("0", 0, 300), Some(0));
        assert_eq!(parse("007", 0, 300), Some(7));
        assert_eq!(parse("301", 0, 300), Some(300));
        assert_eq!(parse("99999999999", 0, 900), Some(900));
        assert_eq!(parse(&"9".repeat(10_000), 0, 900), Some(900));
    }

    #[test]
    fn http_dates_in_every_form() {
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse(form, AT - 30, 300), Some(30), "{form}");
            assert_eq!(parse(form, AT, 300), Some(0), "{form}");
            assert_eq!(parse(form, AT + 30, 300), Some(0), "past: {form}");
            assert_eq!(parse(form, AT - 3_600, 300), Some(300), "far: {form}");
        }
        assert_eq!(
            parse("Fri, 31 Dec 9999 23:59:59 GMT", AT, 900),
            Some(900),
            "far future is the cap"
        );
        assert_eq!(
            parse("Mon, 01 Jan 0001 00:00:00 GMT", AT, 900),
            Some(0),
            "far past is now"
        );
    }

    #[test]
    fn garbage_is_none() {
        for bad in [
            "",
            " ",
            "-1",
            "+5",
            "1.5",
            "5s",
            "1e3",
            "0x10",
            "١٢٠",
            "１２０",
            "120\u{a0}",
            "soon",
            "%00",
            "Sun, 06 Nov 1994 08:49:37 GMT\u{0}",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(parse(bad, AT, 300), None, "{bad:?}");
        }
    }
}
