//! The `snapsync` binary: argument parsing, output and exit codes only; the
//! work is done by the library.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
