//! The EHR's side of the folders in tests: writing exports the way an EHR
//! must (temp name, then rename) and waiting for inbox files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::agent::AgentProcess;

/// Writes an export the way an EHR must: a temp name, then rename.
pub fn export(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Files under `dir` (recursively) ending in `suffix`, sorted; `.json` leaves
/// out `.cancelled.json`, and names starting with `.` are never listed.
pub fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                out.extend(files(&p, suffix));
            } else if !name.starts_with('.')
                && name.ends_with(suffix)
                && (suffix != ".json" || !name.ends_with(".cancelled.json"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Waits (up to 60 s) until `dir` holds at least `n` files ending in
/// `suffix`; on timeout panics with the agents' logs.
pub fn wait_files(dir: &Path, suffix: &str, n: usize, agents: &[&AgentProcess]) -> Vec<PathBuf> {
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    loop {
        let found = files(dir, suffix);
        if found.len() >= n {
            return found;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = agents.iter().map(|a| a.log()).collect();
            panic!(
                "no {n} {suffix} file(s) in {} within {limit:?}:\n{}",
                dir.display(),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
