//! Wall-clock time as Unix seconds, and the few calendar formats we write.
//!
//! Protocol code takes `now` as a parameter; only the I/O layer calls [`now_unix`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Converts Unix seconds to a UTC calendar time (proleptic Gregorian).
pub fn civil(unix: i64) -> Civil {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (secs / 3_600) as u32,
        minute: (secs % 3_600 / 60) as u32,
        second: (secs % 60) as u32,
    }
}

/// Converts a UTC calendar date and time to Unix seconds.
pub fn unix_from_civil(c: Civil) -> i64 {
    let y = c.year - i64::from(c.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(c.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(c.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(c.hour) * 3_600 + i64::from(c.minute) * 60 + i64::from(c.second)
}

/// `2026-12-02T05:58:18Z`
pub fn rfc3339(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2026-12-02`
pub fn date(unix: i64) -> String {
    let c = civil(unix);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

/// `20261202T055818Z`
pub fn compact(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// IMF-fixdate, the HTTP-date we write: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix: i64) -> String {
    let c = civil(unix);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[weekday(unix)],
        c.day,
        MONTHS[(c.month as usize).saturating_sub(1).min(11)],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) in any of its three forms, as a
/// recipient must: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the
/// obsolete RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`, its two-digit
/// year read relative to `now`) and asctime (`Sun Nov  6 08:49:37 1994`).
/// The day name must be the date's. Returns Unix seconds.
pub fn parse_http_date(text: &str, now: i64) -> Option<i64> {
    if !text.is_ascii() {
        return None;
    }
    let (day_name, day, month, year, time) = if text.len() == 24 && text.as_bytes()[3] == b' ' {
        // asctime: `Sun Nov  6 08:49:37 1994`
        let day = text[8..10].strip_prefix(' ').unwrap_or(&text[8..10]);
        if !matches!((&text[7..8], &text[10..11], &text[19..20]), (" ", " ", " ")) {
            return None;
        }
        (
            &text[..3],
            day,
            &text[4..7],
            year4(&text[20..])?,
            &text[11..19],
        )
    } else {
        let (name, rest) = text.split_once(", ")?;
        let rest = rest.strip_suffix(" GMT")?;
        let b = rest.as_bytes();
        if name.len() == 3 && b.len() == 20 && (b[2], b[6], b[11]) == (b' ', b' ', b' ') {
            // IMF-fixdate: `06 Nov 1994 08:49:37`
            (
                name,
                &rest[..2],
                &rest[3..6],
                year4(&rest[7..11])?,
                &rest[12..],
            )
        } else if b.len() == 18 && (b[2], b[6], b[9]) == (b'-', b'-', b' ') {
            // RFC 850: `06-Nov-94 08:49:37`
            let short = DAYS_LONG.iter().position(|d| *d == name).map(|i| DAYS[i])?;
            let year = century_of(digits(&rest[7..9])?, now);
            (short, &rest[..2], &rest[3..6], year, &rest[10..])
        } else {
            return None;
        }
    };
    let day = digits(day)?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let t = time.as_bytes();
    if t.len() != 8 || t[2] != b':' || t[5] != b':' {
        return None;
    }
    let (hour, minute, second) = (
        digits(&time[..2])?,
        digits(&time[3..5])?,
        digits(&time[6..])?,
    );
    if !(1..=days_in_month(year, month)).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let unix = unix_from_civil(Civil {
        year,
        month,
        day,
        hour,
        minute,
        second: second.min(59),
    });
    (DAYS[weekday(unix)] == day_name).then_some(unix)
}

/// Parses an RFC 3339 / FHIR `dateTime` or `instant` with seconds and a zone
/// (`2026-12-06T10:00:00+01:00`, `…Z`, optional fraction), or a bare date
/// (`2026-12-06`, taken as the start of that day in UTC). Returns Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = text.get(from..from + len)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month as u32) as i64).contains(&day)
    {
        return None;
    }
    let mut c = Civil {
        year,
        month: month as u32,
        day: day as u32,
        hour: 0,
        minute: 0,
        second: 0,
    };
    if b.len() == 10 {
        return Some(unix_from_civil(c));
    }
    if b.len() < 20 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    c.hour = hour as u32;
    c.minute = minute as u32;
    c.second = second.min(59) as u32;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3_600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    Some(unix_from_civil(c) - offset)
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAYS_LONG: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// 0 for Monday; 1970-01-01 was a Thursday.
fn weekday(unix: i64) -> usize {
    (unix.div_euclid(86_400) + 3).rem_euclid(7) as usize
}

/// A number written with ASCII digits only (no sign, no space).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn year4(s: &str) -> Option<i64> {
    (s.len() == 4).then(|| digits(s)).flatten().map(i64::from)
}

/// The year of a two-digit year (RFC 9110 §5.6.7): the one with these last
/// two digits that is at most 50 years after `now`'s.
fn century_of(two_digits: u32, now: i64) -> i64 {
    let this_year = civil(now).year;
    let year = this_year - this_year.rem_euclid(100) + i64::from(two_digits);
    if year > this_year + 50 {
        year - 100
    } else if year + 100 <= this_year + 50 {
        year + 100
    } else {
        year
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_734_619_249), "2024-12-19T14:40:49Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(date(1_796_191_098), "2026-12-02");
        assert_eq!(compact(1_796_191_098), "20261202T055818Z");
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        let mut t = -2_208_988_800; // 1900-01-01
        while t < 7_258_118_400 {
            // 2200-01-01
            assert_eq!(unix_from_civil(civil(t)), t);
            t += 86_400 * 37 + 3_601;
        }
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_734_619_249), "Thu, 19 Dec 2024 14:40:49 GMT");
        const NOW: i64 = 1_796_191_098; // 2026-12-02
        const RFC_EXAMPLE: i64 = 784_111_777; // 1994-11-06T08:49:37Z
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun Nov 06 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(form, NOW), Some(RFC_EXAMPLE), "{form}");
        }
        let mut t = -2_208_988_800; // 1900-01-01, round trips over three centuries
        while t < 7_258_118_400 {
            assert_eq!(parse_http_date(&http_date(t), NOW), Some(t));
            t += 86_400 * 29 + 3_607;
        }
        assert_eq!(
            parse_http_date("Mon, 31 Dec 2012 23:59:60 GMT", NOW),
            parse_http_date("Mon, 31 Dec 2012 23:59:59 GMT", NOW),
            "a leap second is read as :59"
        );
        assert_eq!(
            parse_http_date("Monday, 31-Dec-12 23:59:59 GMT", NOW),
            parse_http_date("Mon, 31 Dec 2012 23:59:59 GMT", NOW)
        );
    }

    #[test]
    fn two_digit_years_are_at_most_fifty_years_ahead() {
        let now = unix_from_civil(Civil {
            year: 2026,
            month: 6,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        });
        let year = |text: &str| parse_http_date(text, now).map(|t| civil(t).year);
        assert_eq!(year("Wednesday, 01-Jan-76 00:00:00 GMT"), Some(2076));
        assert_eq!(year("Saturday, 01-Jan-77 00:00:00 GMT"), Some(1977));
        assert_eq!(year("Friday, 01-Jan-27 00:00:00 GMT"), Some(2027));
        let late = unix_from_civil(Civil {
            year: 2099,
            ..civil(now)
        });
        assert_eq!(
            parse_http_date("Saturday, 01-Jan-01 00:00:00 GMT", late).map(|t| civil(t).year),
            Some(2101)
        );
    }

    #[test]
    fn malformed_http_dates_are_refused() {
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:+7 GMT",
            "Sun, 06 Nov +994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT ",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov 6  08:49:37 1994",
            "Sun, ０6 Nov 1994 08:49:37 GMT",
            "Sün, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_fhir_date_times() {
        assert_eq!(parse_rfc3339("2024-12-19T14:40:49Z"), Some(1_734_619_249));
        assert_eq!(
            parse_rfc3339("2024-12-19T15:40:49+01:00"),
            Some(1_734_619_249)
        );
        assert_eq!(
            parse_rfc3339("2024-12-19T14:40:49.123Z"),
            Some(1_734_619_249)
        );
        assert_eq!(parse_rfc3339("1970-01-02"), Some(86_400));
        for bad in [
            "",
            "2024-13-01",
            "2023-02-29",
            "2024-12-19T14:40:49",
            "2024-12-19T14:40Z",
            "2024-12-19T24:00:00Z",
            "2024-12-19T14:40:49+0100",
            "2024-12-19T14:40:49.Z",
            "2024-12-19T14:40:49Zjunk",
            "２０２４-12-19",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
