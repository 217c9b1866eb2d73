//! Every flag, defined once, with its help text. The parser, the shell
//! completion scripts and the man page are all made from [`command`].
//!
//! `tests/ship.rs` compiles this file too, to check the man page against
//! these definitions: it may use clap, clap_complete and the library,
//! nothing else of the binary.

use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};

use snapsync::data_channel::PortRange;
use snapsync::endpoint::Transport;
use snapsync::guard::MaxDelete;
use snapsync::scan::LinkMode;

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SNAPSYNC_COMMIT"),
    ", protocol 7)"
);

#[derive(Parser)]
#[command(
    name = "snapsync",
    version = VERSION,
    about = "Keep directory trees in sync, sending only what changed since the last run",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The whole command line: the derived definition, with every option of
/// `push` (but its roots and `--session`) copied onto `run`, which passes
/// them on to the sessions it runs. Copied, not restated, so an option
/// added to [`SyncArgs`] is at once a `run` option and a config file key.
pub fn command() -> clap::Command {
    let cli = Cli::command();
    let options: Vec<clap::Arg> = sync_options(&cli)
        .map(|arg| {
            arg.clone()
                .help_heading("Session options (replace the file's)")
        })
        .collect();
    cli.mut_subcommand("run", |run| run.args(options))
}

/// The `push` subcommand's definition (push, pull and bidi share it).
pub fn push_command(cli: &clap::Command) -> &clap::Command {
    cli.find_subcommand("push").expect("push is a subcommand")
}

/// The options of push / pull / bidi that a config file may set: all but
/// the roots (the file's `local` and `remote`) and `--session` (the
/// table's name).
pub fn sync_options(cli: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    push_command(cli).get_arguments().filter(|arg| {
        !arg.is_positional()
            && arg.get_long().is_some()
            && arg.get_id() != "session"
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

#[derive(Subcommand)]
pub enum Command {
    /// Make REMOTE a replica of LOCAL (LOCAL -> REMOTE)
    Push(SyncArgs),
    /// Make LOCAL a replica of REMOTE (REMOTE -> LOCAL)
    Pull(SyncArgs),
    /// Sync both ways; what changed on both sides in ways that cannot be merged is a conflict
    Bidi(SyncArgs),
    /// The sessions recorded for the root holding DIR: peer, direction, last run, counts
    Status(StatusArgs),
    /// List the conflicts recorded for the root holding DIR
    Conflicts(ConflictsArgs),
    /// Settle conflicts: whose version the next run keeps
    Resolve(ResolveArgs),
    /// Per-path records under PATH: synced, pending, error or conflict
    Ls(LsArgs),
    /// Run sessions defined in the config file, several at once
    #[command(
        after_help = RUN_EXAMPLE,
        override_usage = "snapsync run [--config FILE] [OPTIONS] <NAME>...\n       snapsync run [--config FILE] [OPTIONS] --all"
    )]
    Run(RunArgs),
    /// The far end: speaks the protocol on stdin/stdout (started through --rsh)
    Serve,
    /// Print a shell completion script on stdout
    #[command(after_help = COMPLETIONS_EXAMPLE)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout
    #[command(after_help = "To read it: snapsync man | man -l -")]
    Man,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Links {
    /// Replicate symlinks as symlinks
    Keep,
    /// Copy what symlinks point to
    Follow,
    /// Ignore symlinks on both sides
    Skip,
}

impl From<Links> for LinkMode {
    fn from(links: Links) -> Self {
        match links {
            Links::Keep => LinkMode::Keep,
            Links::Follow => LinkMode::Follow,
            Links::Skip => LinkMode::Skip,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TransportArg {
    /// QUIC on long links (round trip above 5 ms) when UDP gets through, else ssh
    Auto,
    /// The ssh stream only
    Ssh,
    /// The QUIC data channel, or an error when UDP does not get through
    Quic,
}

impl From<TransportArg> for Transport {
    fn from(transport: TransportArg) -> Self {
        match transport {
            TransportArg::Auto => Transport::Auto,
            TransportArg::Ssh => Transport::Ssh,
            TransportArg::Quic => Transport::Quic,
        }
    }
}

fn parse_port_range(text: &str) -> Result<PortRange, String> {
    PortRange::parse(text)
}

#[derive(Args)]
pub struct SyncArgs {
    /// The local root (a directory)
    pub local: PathBuf,
    /// The other root: a directory, or [user@]host:path (created if missing when it is the target)
    #[arg(value_hint = ValueHint::AnyPath)]
    pub remote: String,

    /// Session name; by default derived from both roots and the direction
    #[arg(short = 'N', long, value_name = "NAME")]
    pub session: Option<String>,
    /// Drop this session's snapshots, rescan both trees and compare them in full
    #[arg(short = 'x', long)]
    pub reset: bool,
    /// Print the plan; change nothing, snapshots included
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// After the first sync keep running, syncing changes as they happen
    #[arg(short = 'C', long, conflicts_with = "dry_run")]
    pub continuous: bool,
    /// Continuous mode: quiet time before a burst of changes is synced
    #[arg(long, value_name = "MS", default_value_t = 10, value_parser = parse_cooloff)]
    pub cooloff: u64,
    /// Continuous mode: period of safety rescans (and of polling where watching is impossible)
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = parse_scan_interval)]
    pub scan_interval: u64,

    /// Exclude paths matching PAT (rules apply in order, first match wins)
    #[arg(long, value_name = "PAT")]
    pub exclude: Vec<String>,
    /// Include paths matching PAT (rules apply in order, first match wins)
    #[arg(long, value_name = "PAT")]
    pub include: Vec<String>,
    /// Read rules from FILE: `+ PAT` or `- PAT` per line; `#` comments
    #[arg(long, value_name = "FILE")]
    pub filter_from: Vec<PathBuf>,

    /// Never replace a target file whose mtime is newer than the source's (push and pull)
    #[arg(long)]
    pub newer: bool,
    /// Do not propagate deletions (push and pull)
    #[arg(long)]
    pub no_delete: bool,
    /// Move what a run deletes or replaces on a receiving root into
    /// DIR/<run start, UTC>/ there, instead of discarding it (DIR relative
    /// to that root, and then never synced, or absolute on its host)
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub backup_dir: Option<String>,
    /// Push and pull: remove each source file once its copy is verified on
    /// the target (directories stay); implies --no-delete
    #[arg(long)]
    pub remove_source_files: bool,
    /// Refuse a run whose plan deletes more than N paths, or more than P% of a side's paths
    #[arg(long, value_name = "N|P%", value_parser = parse_max_delete)]
    pub max_delete: Option<MaxDelete>,
    /// Symlinks: replicate as links, copy what they point to, or ignore
    #[arg(long, value_enum, default_value = "keep", value_name = "MODE")]
    pub links: Links,
    /// Also preserve the owner (uid)
    #[arg(long)]
    pub owner: bool,
    /// Also preserve the group (gid)
    #[arg(long)]
    pub group: bool,
    /// Also preserve extended attributes (POSIX ACLs: with -A)
    #[arg(long)]
    pub xattrs: bool,
    /// Also preserve hard links: names sharing a file in the tree share one on the target (push and pull)
    #[arg(short = 'H', long)]
    pub hard_links: bool,
    /// Also preserve POSIX ACLs (access ACLs, and default ACLs of directories)
    #[arg(short = 'A', long)]
    pub acls: bool,
    /// Decide "changed" by content hash, not size+mtime+inode
    #[arg(long)]
    pub checksum: bool,

    /// Compress file data on the wire (zstd)
    #[arg(short = 'z', long)]
    pub compress: bool,
    /// How to start the far end: COMMAND [ARGS], run as `CMD [user@]host <remote-command> serve`
    #[arg(long, value_name = "CMD", default_value = "ssh", value_hint = ValueHint::CommandString)]
    pub rsh: String,
    /// The snapsync program on the far host
    #[arg(long, value_name = "PATH", default_value = "snapsync", value_hint = ValueHint::CommandName)]
    pub remote_command: String,
    /// What carries the session to a remote root after ssh started it: a
    /// QUIC data channel, for long or lossy links (auto: when the round trip
    /// exceeds 5 ms and UDP gets through within 2 s), or the ssh stream
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub transport: TransportArg,
    /// The far host's UDP port for the QUIC data channel, or a range
    /// FIRST-LAST (for firewalls; default: any free port)
    #[arg(long, value_name = "PORT[-PORT]", value_parser = parse_port_range)]
    pub udp_port: Option<PortRange>,
    /// Cap the rate of file data sent, in bytes per second (or with K, M, G)
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub bwlimit: Option<u64>,

    /// Where this side keeps its state (default LOCAL/.snapsync)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where this side's session log goes (default <state dir>/logs/<session>.log)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Rotate the session log at SIZE (bytes, or with K, M, G); 5 old files are kept
    #[arg(long, value_name = "SIZE", default_value = "10M", value_parser = parse_size)]
    pub log_max: u64,

    /// Show each operation on stderr
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Print errors only
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// Show a progress bar on stderr (when it is a terminal)
    #[arg(long)]
    pub progress: bool,
}

/// Where `conflicts` and `resolve` find a root and its state.
#[derive(Args)]
pub struct RootArgs {
    /// The root, when it keeps its state elsewhere (--state-dir); else found
    /// by walking up to the directory that holds `.snapsync/`
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Where the root keeps its state (default ROOT/.snapsync)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Only this session
    #[arg(short = 'N', long, value_name = "NAME")]
    pub session: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A directory in the root (default: the working directory)
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print a JSON array, one object per session
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Synced,
    Pending,
    Error,
    Conflict,
}

#[derive(Args)]
pub struct LsArgs {
    /// A path in the root: what is at and under it (default: the working directory's root, whole)
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub root: RootArgs,
    /// Only paths in this state
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateArg>,
    /// Print a JSON array of records
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConflictsArgs {
    /// A directory in the root (default: the working directory)
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Keep {
    /// This root's version
    Local,
    /// The peer's version
    Remote,
    /// The version with the later mtime (one that still exists beats a deletion)
    Newer,
    /// This root's version, and the peer's beside it as NAME.conflict-<peer>-<time>.EXT
    Both,
}

impl Keep {
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Local => "local",
            Keep::Remote => "remote",
            Keep::Newer => "newer",
            Keep::Both => "both",
        }
    }
}

#[derive(Args)]
pub struct ResolveArgs {
    /// Whose version stands
    #[arg(long, value_enum, value_name = "SIDE")]
    pub keep: Keep,
    /// Conflicted paths (as they are named on this host)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub root: RootArgs,
}

const RUN_EXAMPLE: &str = "\
The config file holds one table per session, named as the session:

  [site]
  direction = \"push\"            # push, pull or bidi
  local = \"/srv/site\"           # relative to the file's directory; ~/ is home
  remote = \"web1:/srv/site\"
  exclude = [\"*.tmp\", \"cache/\"]  # any long option, spelled as on the command line
  no-delete = true
  rsh = \"ssh -p 2222\"

An option given on the command line replaces the file's value for that key.";

#[derive(Args)]
pub struct RunArgs {
    /// The config file [default: $XDG_CONFIG_HOME/snapsync/config.toml, else
    /// ~/.config/snapsync/config.toml]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run every session the file defines
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    /// Sessions to run: names of tables in the config file
    #[arg(value_name = "NAME", required_unless_present = "all")]
    pub names: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

const COMPLETIONS_EXAMPLE: &str = "\
Install the script where your shell looks for completions, e.g.:

  snapsync completions bash > ~/.local/share/bash-completion/completions/snapsync
  snapsync completions zsh > ~/.zfunc/_snapsync    # with fpath+=(~/.zfunc) before compinit
  snapsync completions fish > ~/.config/fish/completions/snapsync.fish

The Debian package installs all three.";

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell the script is for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// A size: bytes, or a number with `K`, `M` or `G` (powers of 1024; a
/// trailing `B` or `iB` is allowed).
/// A whole number of `unit`.
fn parse_whole(text: &str, unit: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{text}` is not a whole number of {unit}"))
}

/// `--cooloff`: milliseconds.
fn parse_cooloff(text: &str) -> Result<u64, String> {
    parse_whole(text, "milliseconds")
}

/// `--scan-interval`: seconds, one at least.
fn parse_scan_interval(text: &str) -> Result<u64, String> {
    match parse_whole(text, "seconds")? {
        0 => Err(format!("`{text}`: the interval is 1 second at least")),
        seconds => Ok(seconds),
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let number = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, unit) = match number.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&number[..i], Some(c)),
        _ => (number, None),
    };
    let shift = match unit {
        None => 0,
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some(_) => return Err(format!("`{text}`: the unit must be K, M or G")),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (bytes, or a number with K, M or G)"))?;
    value
        .checked_mul(1u64 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}`: give a size above zero and below 16 EiB"))
}

/// `--max-delete`: a number of paths, or a percentage.
fn parse_max_delete(text: &str) -> Result<MaxDelete, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3KB"), Ok(3072));
        assert!(parse_size("0").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("M").is_err());
    }
}
