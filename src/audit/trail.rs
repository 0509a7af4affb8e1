//! Reading the audit trail back: the day files of `<state>/audit` a
//! [`Query`] covers, line by line, keeping only the records it selects.
//! The files are streamed: memory holds one line and the matches.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::query::{self, Query};

/// A line longer than this is not an audit record (ours are at most a few
/// hundred KiB, with a full resource list); it is skipped, not buffered.
pub const MAX_LINE: usize = 4 << 20;

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The selected records, sorted by time; those of one second in the
    /// order they were written.
    pub matches: Vec<Match>,
    /// Day files read.
    pub files: usize,
    /// Per day file, how many lines were not audit records (not JSON, not
    /// a JSON object, or over [`MAX_LINE`]) and were skipped.
    pub skipped: Vec<(String, usize)>,
    /// Day files that could not be read; the others were still read.
    pub failed: Vec<TrailError>,
}

/// A selected record.
#[derive(Debug, Clone)]
pub struct Match {
    /// The line as written (valid JSON, without its newline).
    pub line: String,
    /// The line parsed.
    pub record: Value,
}

/// The audit folder or one of its files could not be read.
#[derive(Debug)]
pub struct TrailError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for TrailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for TrailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Reads the day files of `<state_dir>/audit` the query covers, oldest
/// first. `Err` only when the folder itself cannot be listed.
pub fn scan(state_dir: &Path, query: &Query) -> Result<Scan, TrailError> {
    let dir = state_dir.join("audit");
    let failed = |source| TrailError {
        path: dir.clone(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        // Only regular files: a link in the trail is not part of it.
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        match entry.file_name().into_string() {
            Ok(name) if regular && query.covers_file(&name) => names.push(name),
            _ => {}
        }
    }
    names.sort();
    let mut scan = Scan::default();
    for name in names {
        let path = dir.join(&name);
        match File::open(&path).and_then(|f| read_day(BufReader::new(f), query, &mut scan)) {
            Ok(0) => {}
            Ok(skipped) => scan.skipped.push((name, skipped)),
            Err(source) => scan.failed.push(TrailError { path, source }),
        }
        scan.files += 1;
    }
    scan.matches
        .sort_by(|a, b| query::when(&a.record).cmp(query::when(&b.record)));
    Ok(scan)
}

/// Adds the selected records of one day file to `scan.matches`; returns how
/// many lines were skipped. A read error keeps what was found before it.
fn read_day(mut reader: impl BufRead, query: &Query, scan: &mut Scan) -> io::Result<usize> {
    let mut skipped = 0;
    let mut line = Vec::new();
    while let Some(read) = next_line(&mut reader, &mut line, MAX_LINE)? {
        if read == Read::TooLong {
            skipped += 1;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            skipped += 1;
            continue;
        };
        match serde_json::from_str::<Value>(text) {
            Ok(record) if record.is_object() => {
                if query.selects(&record) {
                    scan.matches.push(Match {
                        line: text.to_string(),
                        record,
                    });
                }
            }
            _ => skipped += 1,
        }
    }
    Ok(skipped)
}

#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// `buf` holds the line, without its newline.
    Line,
    /// The line was longer than the limit; `buf` is empty and the line was
    /// consumed.
    TooLong,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes
/// of it; `None` at the end of input. A last line without a newline (a
/// write cut short) is returned too.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<Read>> {
    buf.clear();
    let mut started = false;
    let mut too_long = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(started.then_some(if too_long { Read::TooLong } else { Read::Line }));
        }
        started = true;
        let (part, used, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        reader.consume(used);
        if end {
            return Ok(Some(if too_long { Read::TooLong } else { Read::Line }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BSN: &str = "999999151";

    fn lines(input: &[u8], max: usize, capacity: usize) -> Vec<Result<String, ()>> {
        let mut r = BufReader::with_capacity(capacity, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(read) = next_line(&mut r, &mut buf, max).unwrap() {
            out.push(match read {
                Read::Line => Ok(String::from_utf8(buf.clone()).unwrap()),
                Read::TooLong => Err(()),
            });
        }
        out
    }

    #[test]
    fn lines_are_bounded_and_a_cut_last_line_is_kept() {
        for capacity in [1, 2, 3, 7, 64] {
            assert_eq!(
                lines(b"ab\n\nabcdefgh\nabcd\nxyz", 4, capacity),
                [
                    Ok("ab".into()),
                    Ok("".into()),
                    Err(()),
                    Ok("abcd".into()),
                    Ok("xyz".into())
                ],
                "capacity {capacity}"
            );
            assert!(lines(b"", 4, capacity).is_empty());
            assert_eq!(lines(b"\n", 4, capacity), [Ok("".into())]);
        }
    }

    #[test]
    fn a_day_keeps_the_selected_records_and_counts_the_unreadable_lines() {
        let query = Query::new(BSN, None, None).unwrap();
        let day = format!(
            "{{\"when\":\"2026-03-01T10:00:00Z\",\"action\":\"fhir.read\",\"outcome\":\"success\",\"patient\":\"{BSN}\"}}\n\
             not json\n\
             \n\
             [\"{BSN}\"]\n\
             {{\"when\":\"2026-03-01T10:00:01Z\",\"action\":\"fhir.read\",\"outcome\":\"success\",\"patient\":\"999998286\"}}\n\
             {{\"when\":\"2026-03-01T10:00:02Z\",\"action\":\"zorgviewer.read\",\"outcome\":\"success\",\"patient\":\"{BSN}\"}}\n\
             {{\"when\":\"2026-03-01T10:00:03Z\",\"action\":\"fhir.read\",\"pat"
        );
        let mut scan = Scan::default();
        let skipped = read_day(day.as_bytes(), &query, &mut scan).unwrap();
        // "not json", the array and the cut last line.
        assert_eq!(skipped, 3);
        let actions: Vec<&str> = scan
            .matches
            .iter()
            .map(|m| m.record["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["fhir.read", "zorgviewer.read"]);
        assert!(
            scan.matches[1]
                .line
                .starts_with("{\"when\":\"2026-03-01T10:00:02Z\"")
        );
    }
}
