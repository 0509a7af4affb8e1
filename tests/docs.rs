//! The operator documentation keeps up with the code: every command in the
//! README's command table, every `event=` name logged by `src/` in the table
//! of `docs/log-events.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

fn doc(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn readme() -> String {
    doc("README.md")
}

/// Every `event=<name>` written by non-test code under `dir`.
fn events_in(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            events_in(&path, out);
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".rs") || name == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests live at the bottom, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, _) in code.match_indices("event=") {
            let rest = &code[i + "event=".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == '.')
                .collect();
            // `event={what}.done` and the like are listed under their expansions.
            if !name.is_empty() && !rest.starts_with('{') {
                out.insert(name.trim_end_matches('.').to_string());
            }
        }
    }
}

#[test]
fn every_log_event_is_documented() {
    let table: String = doc("docs/log-events.md")
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut events = BTreeSet::new();
    events_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut events,
    );
    assert!(events.contains("startup") && events.contains("cert.expiring"));
    let missing: Vec<&String> = events
        .iter()
        .filter(|e| !table.contains(&format!("`{e}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/log-events.md has no row for {missing:?}: add each with its level, meaning and what to do"
    );
    for dynamic in ["reload.done", "reload.refused", "tls.done", "tls.refused"] {
        assert!(table.contains(&format!("`{dynamic}`")), "{dynamic}");
    }
}

#[test]
fn readme_lists_every_command() {
    let readme = readme();
    for c in np_agent::cli::COMMANDS {
        let name = format!("| `np-agent {}", c.name);
        assert!(readme.contains(&name), "README has no row for {}", c.name);
    }
}
