//! `snapsync man`: the manual page, in roff, made from the same definitions
//! the parser uses ([`args::command`]): one page with a section per
//! subcommand listing all its options, so a flag cannot exist without
//! being documented there. The prose around them (description, exit
//! status, files) is written here.

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

use super::args;
use super::{
    write_stdout, Failure, EXIT_CONFLICTS, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL,
    EXIT_USAGE,
};

pub fn man() -> Result<i32, Failure> {
    let page = page(args::command())
        .map_err(|e| Failure::error(format!("cannot render the man page: {e}")))?;
    write_stdout(page.as_bytes(), "the man page")
}

/// The whole page for `cli`.
pub fn page(mut cli: clap::Command) -> std::io::Result<String> {
    // Built once here, so that each subcommand knows its full name
    // (`snapsync push`) and has its `--help`.
    cli = cli.disable_help_subcommand(true);
    cli.build();
    let man = Man::new(cli.clone());

    // roff's preamble (an empty rendering is nothing else), then the title,
    // written here: clap_mangen drops an empty date, shifting the fields.
    let mut page = Roff::new().render();
    page.push_str(&format!(
        ".TH SNAPSYNC 1 \"{}\" \"snapsync {}\" \"User Commands\"\n",
        env!("SNAPSYNC_COMMIT_DATE"),
        env!("CARGO_PKG_VERSION")
    ));
    // Option names are not to be hyphenated or stretched.
    page.push_str(".nh\n.ad l\n");
    page.push_str(&piece(|w| man.render_name_section(w), Heading::Keep)?);
    page.push_str(&synopsis(&cli));
    page.push_str(&description());
    page.push_str(&piece(|w| man.render_options_section(w), Heading::Keep)?);
    page.push_str(&section("COMMANDS", |roff| {
        roff.text([roman(
            "Each command with its options. Options may come before, between or after the arguments.",
        )]);
    }));
    for sub in subcommands(&cli) {
        page.push_str(&command_section(sub)?);
    }
    page.push_str(&exit_status());
    page.push_str(&files());
    page.push_str(&examples());
    page.push_str(&section("SEE ALSO", |roff| {
        roff.text([
            bold("ssh"),
            roman("(1), "),
            bold("rsync"),
            roman("(1), "),
            bold("systemctl"),
            roman("(1); /usr/share/doc/snapsync/README.md"),
        ]);
    }));
    page.push_str(&piece(|w| man.render_version_section(w), Heading::Keep)?);
    Ok(page)
}

/// One subcommand: its usage, what it does, every option (all under one
/// list: `run`'s borrowed session options included), and its closing notes.
fn command_section(sub: &clap::Command) -> std::io::Result<String> {
    let name = full_name(sub);
    let mut out = String::new();
    let mut roff = Roff::new();
    roff.control("SS", [name.as_str()]);
    usage_lines(&mut roff, sub);
    roff.control("PP", []);
    out.push_str(&render(&roff));

    let sub = sub.clone().mut_args(|arg| arg.help_heading(None));
    let man = Man::new(sub.clone());
    out.push_str(&piece(
        |w| man.render_description_section(w),
        Heading::Drop,
    )?);
    if sub.get_arguments().any(|arg| !arg.is_hide_set()) {
        out.push_str(&piece(|w| man.render_options_section(w), Heading::Drop)?);
    }
    if sub.get_after_help().is_some() || sub.get_after_long_help().is_some() {
        out.push_str(".PP\n");
        // The notes are laid out in lines (a config file example): kept so.
        out.push_str(".nf\n");
        out.push_str(&piece(|w| man.render_extra_section(w), Heading::Drop)?);
        out.push_str(".fi\n");
    }
    Ok(out)
}

fn synopsis(cli: &clap::Command) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    let mut first = true;
    for sub in subcommands(cli) {
        if !std::mem::take(&mut first) {
            roff.control("br", []);
        }
        usage_lines(&mut roff, sub);
    }
    for flags in ["-V | --version", "-h | --help"] {
        roff.control("br", []);
        roff.text([bold("snapsync"), roman(" "), roman(flags)]);
    }
    render(&roff)
}

/// `snapsync push [OPTIONS] <LOCAL> <REMOTE>`, as `--help` shows it (one
/// line per form), the command's name in bold.
fn usage_lines(roff: &mut Roff, sub: &clap::Command) {
    let name = full_name(sub);
    let usage = sub.clone().render_usage().to_string();
    let mut first = true;
    for line in usage.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let line = line.strip_prefix("Usage:").unwrap_or(line).trim();
        if !std::mem::take(&mut first) {
            roff.control("br", []);
        }
        match line.strip_prefix(name.as_str()) {
            Some(rest) => roff.text([bold(name.as_str()), roman(rest)]),
            None => roff.text([roman(line)]),
        };
    }
}

/// In the order `--help` lists them.
fn subcommands(cli: &clap::Command) -> Vec<&clap::Command> {
    let mut subs: Vec<&clap::Command> =
        cli.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    subs.sort_by_key(|sub| sub.get_display_order());
    subs
}

fn full_name(sub: &clap::Command) -> String {
    sub.get_bin_name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("snapsync {}", sub.get_name()))
}

fn description() -> String {
    section("DESCRIPTION", |roff| {
        roff.text([
            roman(
                "snapsync keeps directory trees in sync between two roots, on this machine or on \
             another host reached through ssh: once, or continuously (",
            ),
            bold("-C"),
            roman(
                "); one way (push, pull) or both ways (bidi, where edits made on both sides that \
             cannot be merged become conflicts). After the first run each side keeps a snapshot \
             of its own tree, so later runs find what changed by comparing the tree with that \
             snapshot, locally and stat-only, and only the changes cross the wire: renames and \
             moves are replayed as renames, and content the target already holds is copied \
             there instead of being sent again.",
            ),
        ]);
        roff.control("PP", []);
        roff.text([
            italic("REMOTE"),
            roman(" is a directory, or "),
            italic("[user@]host:path"),
            roman(": the far end is started by running "),
            bold("ssh [user@]host snapsync serve"),
            roman(" ("),
            bold("--rsh"),
            roman(" and "),
            bold("--remote-command"),
            roman(
                " change that), so snapsync must be installed on both hosts, in versions that \
                 speak the same protocol (",
            ),
            bold("snapsync --version"),
            roman(" shows it). A target root that is missing is created."),
        ]);
        roff.control("PP", []);
        roff.text([
            bold("status"),
            roman(", "),
            bold("conflicts"),
            roman(", "),
            bold("resolve"),
            roman(" and "),
            bold("ls"),
            roman(
                " find their root the way git finds a repository: from the directory or path \
                 given (default: the working directory), walking up to the nearest directory \
                 that holds ",
            ),
            italic(".snapsync/"),
            roman(" (give "),
            bold("--root"),
            roman(" when the state is kept elsewhere)."),
        ]);
        roff.control("PP", []);
        roff.text([
            roman(
                "Before touching anything, a run refuses (exit 1) a missing source root, a root \
                 that lost its snapshot while the other kept it, another tree at a root's path, \
                 an emptied root whose snapshot still holds entries, and roots nested in each \
                 other; ",
            ),
            bold("-x"),
            roman(" ("),
            bold("--reset"),
            roman(
                ") is the deliberate way past all but the first. Files are written under \
                 temporary names and renamed into place once verified, and a run that is \
                 interrupted resumes where it stopped.",
            ),
        ]);
    })
}

fn exit_status() -> String {
    let codes = [
        (EXIT_OK, "Done."),
        (
            EXIT_ERROR,
            "Error; the message on standard error says what happened and what to do. Also a run \
             refused by a safety check or by --max-delete, before anything was changed.",
        ),
        (
            EXIT_USAGE,
            "Usage: an unknown option, a wrong value, or a mistake in the config file.",
        ),
        (
            EXIT_PARTIAL,
            "Finished, but some paths failed: each is listed on standard error, all others \
             were synced. The next run tries them again.",
        ),
        (
            EXIT_CONFLICTS,
            "Finished, but unresolved conflicts remain (bidi; also conflicts when it lists any).",
        ),
        (
            EXIT_INTERRUPTED,
            "A one-time run stopped by SIGINT or SIGTERM, after finishing the file in flight and \
             saving what was done. With -C, SIGINT and SIGTERM end the session with 0.",
        ),
    ];
    section("EXIT STATUS", |roff| {
        for (code, meaning) in codes {
            roff.control("TP", []);
            roff.text([bold(code.to_string())]);
            roff.text([roman(meaning)]);
        }
        roff.control("PP", []);
        roff.text([roman(
            "snapsync run exits with the worst code of its sessions: 1, then 2, 130, 3, 4, 0.",
        )]);
    })
}

fn files() -> String {
    let entries: [(Vec<Inline>, &str); 3] = [
        (
            vec![italic("ROOT"), roman("/.snapsync/")],
            "This root's state, never synced (--state-dir puts it elsewhere): the root's id, \
             one SQLite database per session holding its snapshot and per-path records, the \
             session locks, and the session logs (logs/SESSION.log).",
        ),
        (
            vec![roman("$XDG_CONFIG_HOME/snapsync/config.toml")],
            "The sessions that snapsync run knows by name (without XDG_CONFIG_HOME: \
             ~/.config/snapsync/config.toml); see snapsync run --help.",
        ),
        (
            vec![roman("/lib/systemd/system/snapsync@.service")],
            "A systemd template unit (installed by the Debian package): snapsync@NAME runs \
             session NAME of /etc/snapsync/config.toml continuously.",
        ),
    ];
    section("FILES", |roff| {
        for (name, meaning) in entries {
            roff.control("TP", []);
            roff.text(name);
            roff.text([roman(meaning)]);
        }
    })
}

fn examples() -> String {
    let examples = [
        (
            "snapsync push ~/docs /srv/docs",
            "Make /srv/docs a replica of ~/docs; run it again to send only what changed.",
        ),
        (
            "snapsync push -n ./site web1:/srv/site",
            "Show what a push to another host over ssh would do, changing nothing.",
        ),
        (
            "snapsync bidi -C ~/notes nas:/data/notes",
            "Keep two trees in step both ways, syncing changes as they happen.",
        ),
        (
            "snapsync conflicts ~/notes; snapsync resolve --keep newer ~/notes/todo.txt",
            "List the conflicts, and settle one: the next run keeps the newer version.",
        ),
        (
            "snapsync completions bash > ~/.local/share/bash-completion/completions/snapsync",
            "Install completions for bash (the Debian package does it for bash, zsh and fish).",
        ),
    ];
    section("EXAMPLES", |roff| {
        for (command, meaning) in examples {
            roff.control("TP", []);
            roff.text([bold(command)]);
            roff.text([roman(meaning)]);
        }
    })
}

/// A `.SH` section written here.
fn section(heading: &str, body: impl FnOnce(&mut Roff)) -> String {
    let mut roff = Roff::new();
    roff.control("SH", [heading]);
    body(&mut roff);
    render(&roff)
}

/// Roff text without the preamble, which the page has once, at the top.
fn render(roff: &Roff) -> String {
    without_preamble(&roff.render())
}

#[derive(Clone, Copy, PartialEq)]
enum Heading {
    Keep,
    Drop,
}

/// A section rendered by clap_mangen, without roff's preamble and, with
/// [`Heading::Drop`], without its `.SH` line (its body goes under a
/// subcommand's heading).
fn piece(
    render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    heading: Heading,
) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    render(&mut bytes)?;
    let text = without_preamble(&String::from_utf8_lossy(&bytes));
    if heading == Heading::Keep {
        return Ok(text);
    }
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with(".SH") => Ok(rest.to_string()),
        _ => Err(std::io::Error::other(format!(
            "a section from the man page generator does not start with a heading: {text:.60}"
        ))),
    }
}

/// Drops the lines that define the apostrophe string (`.ie \n(.g .ds Aq
/// ...` and `.el .ds Aq ...`) with which roff starts every rendering.
fn without_preamble(text: &str) -> String {
    text.lines()
        .filter(|line| !(line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq")))
        .flat_map(|line| [line, "\n"])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_one_preamble_and_a_section_per_subcommand() {
        let page = page(args::command()).unwrap();
        assert_eq!(page.matches(".ds Aq").count(), 2, "{page}");
        assert!(page.starts_with(".ie \\n(.g .ds Aq"));
        for sub in args::command().get_subcommands() {
            let heading = format!(".SS \"snapsync {}\"", sub.get_name());
            assert!(page.contains(&heading), "no {heading}");
        }
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "\"EXIT STATUS\"",
            "FILES",
        ] {
            assert!(page.contains(&format!("\n.SH {heading}\n")), "no {heading}");
        }
    }
}
