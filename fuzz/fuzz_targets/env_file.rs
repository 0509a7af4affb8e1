//! The env file (systemd `EnvironmentFile=` syntax) and the configuration
//! read from it: never panics; every assignment written back in double quotes
//! parses to the same value, and the configuration check answers with a
//! `Config` or with its problems, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::config::{Vars, envfile, from_vars};

/// A value in double quotes, escaped as the env file reads it.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (vars, errors) = envfile::parse(text);
    let lines = text.split('\n').count();
    for e in &errors {
        assert!(e.line >= 1 && e.line <= lines, "{e} of {lines} lines");
    }
    let mut written = String::new();
    for (key, assignment) in &vars {
        assert!(assignment.line >= 1 && assignment.line <= lines);
        written.push_str(&format!("{key}={}\n", quoted(&assignment.value)));
    }
    let (again, errors) = envfile::parse(&written);
    assert!(errors.is_empty(), "{errors:?} in {written:?}");
    let values = |m: &std::collections::BTreeMap<String, envfile::Assignment>| {
        m.iter()
            .map(|(k, a)| (k.clone(), a.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&again), values(&vars), "{written:?}");
    let config: Vars = vars
        .into_iter()
        .map(|(k, a)| (k, (a.value, Some(a.line))))
        .collect();
    if let Err(problems) = from_vars(&config) {
        assert!(!problems.is_empty());
    }
});
