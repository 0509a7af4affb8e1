//! The driver of `bench/run`: np-agent's figures beside the limits of the
//! same machine, each ratio taken inside one run, each figure the median of
//! several runs with its minimum and maximum.
//!
//! `bench/run` builds the release binary and this driver, checks the tools
//! (nginx, oha, strace, find) and runs `cargo bench --bench run -- <options>`
//! with `NP_BENCH_AGENT_BIN` naming the binary under test. The driver writes
//! `results.json` and `results.md` into `--out` and prints the table.
//! Without `--bench` (as `cargo test --all-targets` runs benches) it only
//! says how to run it: it needs tools the tests do not.
//!
//! Sections (`--only` picks some, comma-separated): `fhir`, `token`,
//! `cycles`, `intake`, `scan`, `mitz`, `memory`, `overload`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../support/mod.rs"]
mod support;

mod exchange;
mod fhir;
mod memory;
mod mitz;
mod report;
mod token;
mod tools;

use std::path::PathBuf;
use std::time::Duration;

use report::{Results, Run};

/// What the command line asked for.
pub struct Options {
    /// Repetitions of every section.
    pub runs: usize,
    /// Length of each timed load (oha, token clients).
    pub load: Duration,
    /// Notify + pull cycles per run (also the count "RSS after cycles" means).
    pub cycles: usize,
    /// Export files for intake and the scan comparison.
    pub files: usize,
    /// Mitz notifications per run.
    pub notifications: usize,
    /// Connection attempts in the overload test.
    pub flood: usize,
    pub only: Option<Vec<String>>,
    pub out: PathBuf,
    pub tools: tools::Tools,
}

const SECTIONS: &[&str] = &[
    "fhir", "token", "cycles", "intake", "scan", "mitz", "memory", "overload",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "bench/run drives this benchmark (it needs nginx, oha and strace); see docs/benchmarks.md"
        );
        return;
    }
    let opts = parse(&args);
    let mut results = Results::new(&opts);
    eprintln!(
        "bench: {} run(s) of {:?}; agent {}",
        opts.runs,
        opts.only.as_deref().unwrap_or(&[]),
        opts.tools.agent.display()
    );
    for section in SECTIONS {
        if !opts
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
        {
            continue;
        }
        eprintln!("bench: {section}");
        let started = std::time::Instant::now();
        let runs: Vec<Run> = match *section {
            "fhir" => fhir::measure(&opts),
            "token" => token::measure(&opts),
            "cycles" => exchange::cycles(&opts),
            "intake" => exchange::intake(&opts),
            "scan" => exchange::scan(&opts),
            "mitz" => mitz::measure(&opts),
            "memory" => memory::measure(&opts),
            "overload" => memory::overload(&opts),
            _ => unreachable!(),
        };
        for run in runs {
            results.add(run);
        }
        eprintln!(
            "bench: {section} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    results.finish();
    let table = results.table();
    println!("{table}");
    std::fs::create_dir_all(&opts.out).unwrap();
    std::fs::write(opts.out.join("results.md"), &table).unwrap();
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&results.json()).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("bench: wrote {}/results.{{json,md}}", opts.out.display());
}

fn parse(args: &[String]) -> Options {
    let mut opts = Options {
        runs: 3,
        load: Duration::from_secs(5),
        cycles: 10_000,
        files: 10_000,
        notifications: 1_000,
        flood: 2_000,
        only: None,
        out: PathBuf::from("bench"),
        tools: tools::Tools::from_env(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        };
        let number = |s: String, name: &str| -> usize {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: expected a whole number, got {s:?}"))
        };
        match a.as_str() {
            "--bench" => {}
            "--runs" => opts.runs = number(value(a), a).max(1),
            "--secs" => opts.load = Duration::from_secs(number(value(a), a).max(1) as u64),
            "--cycles" => opts.cycles = number(value(a), a).max(1),
            "--files" => opts.files = number(value(a), a).max(1),
            "--notifications" => opts.notifications = number(value(a), a).max(4),
            "--flood" => opts.flood = number(value(a), a),
            "--only" => {
                let list: Vec<String> = value(a).split(',').map(str::to_string).collect();
                for s in &list {
                    assert!(
                        SECTIONS.contains(&s.as_str()),
                        "--only: unknown section {s:?}; known: {}",
                        SECTIONS.join(",")
                    );
                }
                opts.only = Some(list);
            }
            "--out" => opts.out = PathBuf::from(value(a)),
            "--quick" => {
                opts.runs = 1;
                opts.load = Duration::from_secs(2);
                opts.cycles = 200;
                opts.files = 1_000;
                opts.notifications = 200;
            }
            other => panic!("unknown option {other:?}"),
        }
    }
    opts
}
