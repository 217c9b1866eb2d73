//! `snapsync completions SHELL`: a completion script for bash, zsh or fish,
//! generated from the same definitions the parser uses ([`args::command`]),
//! so it offers exactly the subcommands and options that parse.

use super::args::{self, CompletionsArgs};
use super::{write_stdout, Failure};

pub fn completions(completions: &CompletionsArgs) -> Result<i32, Failure> {
    write_stdout(&script(completions.shell.into()), "the completion script")
}

/// The script for `shell`, for a program called `snapsync`.
pub fn script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cli = args::command();
    // Rendered into memory: clap_complete panics when it cannot write, and
    // stdout may be a pipe its reader has closed.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, "snapsync", &mut script);
    script
}
