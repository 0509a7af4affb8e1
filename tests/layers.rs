//! `src/lib.rs` lists the modules in layers; this holds the code to it: no
//! module's non-test code names a module listed below it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Modules that share one table and may name each other.
const PAIRS: &[(&str, &str)] = &[("cli", "manpage")];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `pub mod` lines of lib.rs, in order.
fn layers() -> Vec<String> {
    std::fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.split(';').next().unwrap().trim().to_string())
        .collect()
}

/// The files of a module, test files left out: `tests.rs` and files of
/// submodules declared under `#[cfg(test)]`.
fn files(module: &str, out: &mut Vec<PathBuf>) {
    let single = src().join(format!("{module}.rs"));
    if single.is_file() {
        out.push(single);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let test_only = test_only_submodules(&dir);
        for e in entries {
            let p = e.unwrap().path();
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            if test_only.contains(&stem) || stem == "tests" {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
}

/// Names of the submodules of the module in `dir` declared as
/// `#[cfg(test)] mod name;` (in `dir/mod.rs` or `dir.rs`).
fn test_only_submodules(dir: &Path) -> Vec<String> {
    let parent = [dir.join("mod.rs"), dir.with_extension("rs")]
        .into_iter()
        .find(|p| p.is_file());
    let Some(parent) = parent else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(parent).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod "))
        .map(|rest| rest.trim_end_matches(';').trim().to_string())
        .collect()
}

/// The code of a file before its first `#[cfg(test)]` (unit tests sit at the
/// bottom; a test-only submodule is declared with that attribute too).
fn non_test_code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("#[cfg(test)]").next().unwrap().to_string()
}

#[test]
fn no_module_names_a_module_below_it() {
    let layers = layers();
    assert!(layers.len() > 20, "{layers:?}");
    let mut wrong = Vec::new();
    for (i, module) in layers.iter().enumerate() {
        let mut paths = Vec::new();
        files(module, &mut paths);
        assert!(!paths.is_empty(), "no files for module {module}");
        for path in paths {
            let code = non_test_code(&path);
            for below in &layers[i + 1..] {
                let paired = PAIRS
                    .iter()
                    .any(|(a, b)| (a == module && b == below) || (b == module && a == below));
                if !paired && code.contains(&format!("crate::{below}::")) {
                    wrong.push(format!(
                        "{} names crate::{below}, which lib.rs lists below {module}",
                        path.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
