//! The operator documentation keeps up with the code: every command in the
//! README's command table, every `event=` name logged by `src/` in the table
//! of `docs/log-events.md`, every test and fuzz target the threat model and
//! the README's attack table name.
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

/// The code spans of a document (a span never crosses a line here).
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
}

/// The `` `file.rs::function` `` references in a document.
fn test_references(text: &str) -> Vec<(String, String)> {
    code_spans(text)
        .filter_map(|span| {
            let (file, function) = span.split_once("::")?;
            let is_source =
                (file.starts_with("src/") || file.starts_with("tests/")) && file.ends_with(".rs");
            let is_name = function
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            (is_source && is_name && !function.is_empty())
                .then(|| (file.to_string(), function.to_string()))
        })
        .collect()
}

/// True when `source` defines `function` as a `#[test]`.
fn defines_test(source: &str, function: &str) -> bool {
    source
        .match_indices(&format!("fn {function}("))
        .any(|(at, _)| {
            // The lines above the one `fn` is on.
            let above = &source[..source[..at].rfind('\n').unwrap_or(0)];
            above
                .lines()
                .rev()
                .map(str::trim)
                .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
                .any(|l| l == "#[test]")
        })
}

#[test]
fn every_test_the_threat_model_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz_manifest = doc("fuzz/Cargo.toml");
    let threat_model = doc("docs/threat-model.md");
    for (path, text) in [
        ("docs/threat-model.md", &threat_model),
        ("README.md", &readme()),
    ] {
        let named = test_references(text);
        for (file, function) in &named {
            let source = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{path} names {file}::{function}: {e}"));
            assert!(
                defines_test(&source, function),
                "{path} names {file}::{function}, which is not a test in {file}"
            );
        }
        assert!(!named.is_empty(), "{path} names no test");
    }
    // Every fuzz target is listed under "Parsers", and every one listed exists.
    for line in fuzz_manifest.lines() {
        if let Some(target) = line.strip_prefix("path = \"fuzz_targets/") {
            let listed = format!("`fuzz/fuzz_targets/{}`", target.trim_end_matches('"'));
            assert!(
                threat_model.contains(&listed),
                "docs/threat-model.md does not list {listed}"
            );
        }
    }
    for span in code_spans(&threat_model) {
        if let Some(target) = span.strip_prefix("fuzz/fuzz_targets/") {
            assert!(root.join(span).is_file(), "{span} does not exist");
            assert!(
                fuzz_manifest.contains(&format!("path = \"fuzz_targets/{target}\"")),
                "{span} is not a target in fuzz/Cargo.toml"
            );
        }
    }
}
