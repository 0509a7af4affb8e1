//! The `np-agent` binary: a thin shell over the library's command line.

fn main() {
    std::process::exit(np_agent::cli::main(std::env::args_os().collect()));
}
