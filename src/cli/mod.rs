//! Command-line layer: turns flags into the library's plain option structs,
//! runs the session and maps the outcome to output and exit codes
//! (0 done, 1 error, 2 usage, 3 some paths failed, 4 conflicts remain,
//! 130 interrupted).

/// `println!` that survives a reader who went away (`snapsync status |
/// head`, or a continuous session's `--json` consumer ending): what cannot
/// be printed is dropped, the run goes on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod args;
mod completions;
mod config;
mod inspect;
mod man;
mod output;
mod run;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::FromArgMatches;

use args::{Cli, Command, SyncArgs};
use snapsync::changes::DiffOptions;
use snapsync::endpoint::{ConnectOptions, Endpoint, LocalEndpoint, RemoteEndpoint, RemoteSpec};
use snapsync::filter::{parse_filter_file, FilterError, Filters, RuleKind, RuleSpec};
use snapsync::model::Preserve;
use snapsync::reconcile::ReplicaOptions;
use snapsync::session::{
    run_continuous, run_replica, ContinuousOptions, Direction, Observer, SyncOptions,
};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_PARTIAL: i32 = 3;
pub const EXIT_CONFLICTS: i32 = 4;
pub const EXIT_INTERRUPTED: i32 = 130;

/// A failure before or instead of a run, with its exit code.
#[derive(Clone)]
pub struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn error(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

pub fn main() -> i32 {
    let matches = match args::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return EXIT_USAGE;
        }
    };
    match execute(cli, &matches) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!(
                "{} {}",
                output::label(output::Label::Error),
                failure.message
            );
            failure.code
        }
    }
}

/// Runs the command `matches` holds (`run` comes back here with each
/// session's own command line).
fn execute(cli: Cli, matches: &clap::ArgMatches) -> Result<i32, Failure> {
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .expect("the subcommand matched")
    };
    match cli.command {
        Command::Push(args) => sync(Direction::Push, &args, sub("push")),
        Command::Pull(args) => sync(Direction::Pull, &args, sub("pull")),
        Command::Bidi(args) => sync(Direction::Bidi, &args, sub("bidi")),
        Command::Status(args) => inspect::status(&args),
        Command::Conflicts(args) => inspect::conflicts(&args),
        Command::Resolve(args) => inspect::resolve(&args),
        Command::Ls(args) => inspect::ls(&args),
        Command::Run(args) => run::run(&args, sub("run")),
        Command::Serve => serve(),
        Command::Completions(args) => completions::completions(&args),
        Command::Man => man::man(),
    }
}

/// Writes a whole generated text (`man`, `completions`) to stdout; a
/// reader that went away early (`snapsync man | head`) is not an error.
fn write_stdout(bytes: &[u8], what: &str) -> Result<i32, Failure> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(EXIT_OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        Err(e) => Err(Failure::error(format!(
            "cannot write {what} to standard output: {e}"
        ))),
    }
}

fn serve() -> Result<i32, Failure> {
    // The near end decides when a run stops, and this side ends when its
    // input closes. A Ctrl-C in the near end's terminal also reaches this
    // process when a local `--rsh` starts it in the same process group;
    // dying of it would turn the near end's clean stop (finish the files
    // in flight, save, exit 130) into a lost connection. Run by hand on a
    // terminal, Ctrl-C still ends it.
    if !std::io::stdin().is_terminal() {
        let heard = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, heard)
            .map_err(|e| Failure::error(format!("cannot install signal handler: {e}")))?;
    }
    snapsync::serve::serve(Box::new(std::io::stdin()), Box::new(std::io::stdout()))
        .map(|()| EXIT_OK)
        .map_err(|e| Failure::error(format!("serve: {e}")))
}

/// What a run's options cannot say together, beyond what clap checks.
fn check_sync_args(direction: Direction, args: &SyncArgs) -> Result<(), Failure> {
    if direction == Direction::Bidi && (args.newer || args.no_delete) {
        return Err(Failure::usage(
            "--newer and --no-delete apply to push and pull only; bidi carries every change both ways and turns competing ones into conflicts",
        ));
    }
    if direction == Direction::Bidi && args.remove_source_files {
        return Err(Failure::usage(
            "--remove-source-files applies to push and pull only; in bidi both roots are sources",
        ));
    }
    if let Some(dir) = &args.backup_dir {
        snapsync::backup::BackupDir::parse(dir).map_err(Failure::usage)?;
    }
    if direction == Direction::Bidi && args.hard_links {
        return Err(Failure::usage(
            "-H/--hard-links applies to push and pull only: bidi would have to merge two sides' links into one structure, which it does not do; sync the linked tree one way, or run bidi without -H (each name then syncs as a file of its own)",
        ));
    }
    Ok(())
}

fn sync(direction: Direction, args: &SyncArgs, matches: &clap::ArgMatches) -> Result<i32, Failure> {
    check_sync_args(direction, args)?;
    let filters = filters_in_order(matches)?;
    let local = absolute(&args.local)?;
    let remote_spec = RemoteSpec::parse(&args.remote);
    let remote_path = match &remote_spec {
        Some(_) => PathBuf::from(&args.remote),
        None => {
            let remote = absolute(Path::new(&args.remote))?;
            check_roots_apart(&local, &remote)?;
            remote
        }
    };
    let session = match &args.session {
        Some(name) => valid_session_name(name)?,
        None => default_session_name(direction, &local, &remote_path),
    };
    let preserve = Preserve {
        owner: args.owner,
        group: args.group,
        xattrs: args.xattrs,
        hard_links: args.hard_links,
        acls: args.acls,
    };
    let options = SyncOptions {
        direction,
        session,
        reset: args.reset,
        dry_run: args.dry_run,
        diff: DiffOptions {
            filters,
            links: args.links.into(),
            preserve,
            checksum: args.checksum,
        },
        replica: ReplicaOptions {
            // Files the source removes must not become deletions.
            no_delete: args.no_delete || args.remove_source_files,
            newer: args.newer,
            preserve,
        },
        log_max: args.log_max,
        log_verbose: args.verbose > 0,
        backup_dir: args.backup_dir.clone(),
        remove_source_files: args.remove_source_files,
        max_delete: args.max_delete,
        bwlimit: args.bwlimit,
    };
    let log_file = args.log_file.as_deref().map(absolute).transpose()?;
    let local_end =
        LocalEndpoint::new(local, args.state_dir.clone(), preserve).with_log_file(log_file);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first asks the run to stop once the file in flight is in;
        // a second, heard once the first is, ends the process at once
        // (exit 130): the file in flight stays under its temporary name,
        // which the next run removes, and the run's pending records say
        // what it was about. Registered in this order, the shutdown looks
        // at the flag before the flag is set.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED,
            Arc::clone(&stop),
        )
        .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
        .map_err(|e| Failure::error(format!("cannot install signal handler: {e}")))?;
    }
    let printer = output::Printer::new(args, direction == Direction::Bidi, Arc::clone(&stop));
    let connect = || -> Result<Box<dyn Endpoint>, snapsync::endpoint::EndpointError> {
        Ok(match &remote_spec {
            Some(spec) => {
                let remote = RemoteEndpoint::connect(
                    spec.clone(),
                    &ConnectOptions {
                        rsh: args.rsh.clone(),
                        remote_command: args.remote_command.clone(),
                        compress: args.compress,
                        transport: args.transport.into(),
                        udp_ports: args.udp_port,
                        probe: Some(snapsync::session::remote_probe(&options)),
                        // Continuous mode may start with a scan of dirty
                        // paths (after a reconnect).
                        scan: (!args.continuous).then(|| options.diff.clone()),
                        one_run: !args.continuous,
                    },
                    preserve,
                )?;
                if let Some(warning) = remote.warning() {
                    printer.warning(warning);
                }
                Box::new(remote)
            }
            None => Box::new(LocalEndpoint::new(remote_path.clone(), None, preserve)),
        })
    };
    if args.continuous {
        let continuous = ContinuousOptions {
            cooloff: std::time::Duration::from_millis(args.cooloff),
            scan_interval: std::time::Duration::from_secs(args.scan_interval),
        };
        let mut first = true;
        run_continuous(
            &local_end,
            &connect,
            &options,
            &continuous,
            &printer,
            &stop,
            &mut |outcome| {
                // The first pass, then each cycle that did something.
                if std::mem::take(&mut first) || !quiet_cycle(outcome) {
                    printer.finish(outcome);
                } else {
                    printer.clear_progress();
                }
            },
        )
        .map_err(|e| Failure::error(e.to_string()))?;
        // SIGINT / SIGTERM end a continuous session normally.
        return Ok(EXIT_OK);
    }
    let remote_end = connect().map_err(|e| Failure::error(e.to_string()))?;
    let outcome = run_replica(&local_end, remote_end.as_ref(), &options, &printer, &stop)
        .map_err(|e| Failure::error(e.to_string()))?;
    printer.finish(&outcome);
    if let Some(why) = &outcome.refused {
        // A dry run shows the plan, and says that a run would be refused.
        return Err(Failure::error(why.clone()));
    }
    Ok(if outcome.interrupted {
        EXIT_INTERRUPTED
    } else if !outcome.failures.is_empty() {
        EXIT_PARTIAL
    } else if !outcome.conflicts.is_empty() {
        EXIT_CONFLICTS
    } else {
        EXIT_OK
    })
}

/// A continuous-mode cycle that changed nothing and found nothing to say
/// (the echo of the previous cycle's own writes, for one).
fn quiet_cycle(outcome: &snapsync::session::Outcome) -> bool {
    let s = &outcome.summary;
    s.created + s.updated + s.deleted + s.renamed + s.copied + s.conflicts + s.errors == 0
        && outcome.failures.is_empty()
}

/// The `--exclude`, `--include` and `--filter-from` rules in the order
/// they were given.
fn filters_in_order(matches: &clap::ArgMatches) -> Result<Filters, Failure> {
    let mut ordered: Vec<(usize, Vec<RuleSpec>)> = Vec::new();
    for (id, kind) in [
        ("exclude", RuleKind::Exclude),
        ("include", RuleKind::Include),
    ] {
        if let (Some(values), Some(indices)) =
            (matches.get_many::<String>(id), matches.indices_of(id))
        {
            for (pattern, index) in values.zip(indices) {
                ordered.push((
                    index,
                    vec![RuleSpec {
                        kind,
                        pattern: pattern.clone(),
                    }],
                ));
            }
        }
    }
    if let (Some(values), Some(indices)) = (
        matches.get_many::<PathBuf>("filter_from"),
        matches.indices_of("filter_from"),
    ) {
        for (file, index) in values.zip(indices) {
            let rules = parse_filter_file(file).map_err(|e| match e {
                FilterError::Read { .. } => Failure::error(e.to_string()),
                _ => Failure::usage(e.to_string()),
            })?;
            ordered.push((index, rules));
        }
    }
    ordered.sort_by_key(|(index, _)| *index);
    let specs: Vec<RuleSpec> = ordered.into_iter().flat_map(|(_, rules)| rules).collect();
    Filters::new(&specs).map_err(|e| Failure::usage(e.to_string()))
}

/// An absolute path with every existing part resolved (links, `..`), so
/// two spellings of one directory compare equal.
fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    let abs = std::path::absolute(path)
        .map_err(|e| Failure::error(format!("cannot resolve {}: {e}", path.display())))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

fn check_roots_apart(local: &Path, remote: &Path) -> Result<(), Failure> {
    if local == remote {
        return Err(Failure::error(format!(
            "{} and {} are the same directory; give two different roots",
            local.display(),
            remote.display()
        )));
    }
    for (inner, outer) in [(local, remote), (remote, local)] {
        if inner.starts_with(outer) {
            return Err(Failure::error(format!(
                "{} is inside {}; a root cannot hold the other (it would sync into itself)",
                inner.display(),
                outer.display()
            )));
        }
    }
    Ok(())
}

fn valid_session_name(name: &str) -> Result<String, Failure> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(name.to_string())
    } else {
        Err(Failure::usage(format!(
            "invalid session name `{name}`: use letters, digits, `-`, `_` and `.` (not first), at most 100"
        )))
    }
}

/// `push-<12 hex digits>`: a hash of both roots, so the same pair and
/// direction always finds its snapshots again.
fn default_session_name(direction: Direction, local: &Path, remote: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut hasher = blake3::Hasher::new();
    hasher.update(local.as_os_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(remote.as_os_str().as_bytes());
    let hex: String = hasher.finalize().as_bytes()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{hex}", direction.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_protocol() {
        assert!(args::VERSION.contains(&format!("protocol {}", snapsync::PROTOCOL_VERSION)));
    }

    #[test]
    fn session_names_are_checked() {
        assert!(valid_session_name("site-1.backup").is_ok());
        assert!(valid_session_name("../x").is_err());
        assert!(valid_session_name("").is_err());
    }
}
