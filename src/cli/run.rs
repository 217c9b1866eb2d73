//! `snapsync run`: sessions from the config file. Each session becomes the
//! command line of its direction (the file's options, then the ones given
//! to `run`, which replace the file's for the same key, then `--session
//! NAME` and the two roots), parsed by the same parser and run by the same
//! code as `push`, `pull` or `bidi`. One session runs in this process, so
//! its output and exit code are the plain command's; several run at once,
//! each in a child process of this binary, their output relayed line by
//! line with the session's name on it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use super::args::{self, push_command, Cli, Command, RunArgs};
use super::config::{
    self, clap_message, option_specs, Config, OptionKind, OptionSpec, SessionDef, SessionEntry,
};
use super::{
    Failure, EXIT_CONFLICTS, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE,
};
use snapsync::session::Direction;

pub fn run(args: &RunArgs, matches: &ArgMatches) -> Result<i32, Failure> {
    let cli = args::command();
    let specs = option_specs(&cli);
    let path = match &args.config {
        Some(path) => path.clone(),
        None => config::default_path()?,
    };
    let config = Config::load(&path, &specs, push_command(&cli))?;
    let given = Given::from_matches(matches, &specs);
    let mut sessions = Vec::new();
    for def in sessions_to_run(&config, args)? {
        sessions.push(prepare(&config, def, &given, &specs)?);
    }
    if sessions.len() == 1 {
        let session = sessions.remove(0);
        let cli = Cli::from_arg_matches(&session.matches)
            .map_err(|e| Failure::usage(clap_message(&e)))?;
        return super::execute(cli, &session.matches);
    }
    Ok(run_children(&sessions))
}

/// The sessions named (in the order given, each once), or with `--all`
/// every session in the file's order. The first mistake in one of them
/// stops them all, before any starts.
fn sessions_to_run<'a>(config: &'a Config, args: &RunArgs) -> Result<Vec<&'a SessionDef>, Failure> {
    let entries: Vec<&SessionEntry> = if args.all {
        if config.sessions.is_empty() {
            return Err(config.error("defines no sessions; each session is a table, [NAME]"));
        }
        config.sessions.iter().collect()
    } else {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for name in args.names.iter().filter(|name| seen.insert(name.as_str())) {
            let Some(entry) = config.sessions.iter().find(|entry| &entry.name == name) else {
                let known: Vec<&str> = config.sessions.iter().map(|e| e.name.as_str()).collect();
                return Err(config.error(format!(
                    "no session named \"{name}\" (the file defines: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            entries.push(entry);
        }
        entries
    };
    entries
        .into_iter()
        .map(|entry| entry.def.as_ref().map_err(Failure::clone))
        .collect()
}

/// The session options given to `run` on the command line: which, and as
/// words in the order they were given (filter rules keep their order).
struct Given {
    ids: HashSet<String>,
    words: Vec<OsString>,
}

impl Given {
    fn from_matches(matches: &ArgMatches, specs: &[OptionSpec]) -> Given {
        let mut ids = HashSet::new();
        let mut words: Vec<(usize, OsString)> = Vec::new();
        for spec in specs {
            if matches.value_source(&spec.id) != Some(ValueSource::CommandLine) {
                continue;
            }
            ids.insert(spec.id.clone());
            let indices = matches.indices_of(&spec.id).into_iter().flatten();
            let flag = || OsString::from(format!("--{}", spec.key));
            match spec.kind {
                OptionKind::Flag => words.extend(indices.map(|index| (index, flag()))),
                OptionKind::Count => {
                    // clap keeps one index for all of `-vv -v`.
                    let first = indices.min().unwrap_or(usize::MAX);
                    let count = matches.get_count(&spec.id);
                    words.extend((0..count).map(|_| (first, flag())));
                }
                OptionKind::Value | OptionKind::List => {
                    let raw = matches.get_raw(&spec.id).into_iter().flatten();
                    words.extend(indices.zip(raw).map(|(index, value)| {
                        let mut word = OsString::from(format!("--{}=", spec.key));
                        word.push(value);
                        (index, word)
                    }));
                }
            }
        }
        words.sort_by_key(|(index, _)| *index);
        Given {
            ids,
            words: words.into_iter().map(|(_, word)| word).collect(),
        }
    }
}

/// A session ready to run: its command line, parsed.
struct Prepared {
    name: String,
    argv: Vec<OsString>,
    matches: ArgMatches,
    json: bool,
}

fn prepare(
    config: &Config,
    def: &SessionDef,
    given: &Given,
    specs: &[OptionSpec],
) -> Result<Prepared, Failure> {
    let mut argv: Vec<OsString> = vec!["snapsync".into(), def.direction.as_str().into()];
    for option in &def.options {
        // A key given on the command line, or one that cannot stand with
        // an option given there (`continuous` with `-n`), yields to it.
        let spec = specs.iter().find(|spec| spec.id == option.id);
        let overridden = given.ids.contains(&option.id)
            || spec.is_some_and(|spec| spec.conflicts.iter().any(|id| given.ids.contains(id)));
        if !overridden {
            argv.extend(option.words.iter().map(OsString::from));
        }
    }
    argv.extend(given.words.iter().cloned());
    argv.push(format!("--session={}", def.name).into());
    argv.push("--".into());
    argv.push(def.local.clone().into_os_string());
    argv.push(def.remote.clone());

    let in_session = |message: String| config.error(format!("session [{}]: {message}", def.name));
    let matches = args::command()
        .try_get_matches_from(&argv)
        .map_err(|e| in_session(clap_message(&e)))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| in_session(clap_message(&e)))?;
    let (direction, sync_args) = match &cli.command {
        Command::Push(sync_args) => (Direction::Push, sync_args),
        Command::Pull(sync_args) => (Direction::Pull, sync_args),
        Command::Bidi(sync_args) => (Direction::Bidi, sync_args),
        _ => unreachable!("a session's command line starts with its direction"),
    };
    super::check_sync_args(direction, sync_args).map_err(|f| in_session(f.message))?;
    Ok(Prepared {
        name: def.name.clone(),
        json: sync_args.json,
        argv,
        matches,
    })
}

/// The children running, and the signal that asked them to stop.
#[derive(Default)]
struct Running {
    pids: Vec<libc::pid_t>,
    signal: Option<i32>,
}

/// Runs each session in a child process of this binary, all at once;
/// SIGINT and SIGTERM are passed on to them. The combined exit code.
fn run_children(sessions: &[Prepared]) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("snapsync: error: cannot find this program to start the sessions: {e}");
            return EXIT_ERROR;
        }
    };
    let running = Arc::new(Mutex::new(Running::default()));
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("snapsync: error: cannot install signal handler: {e}");
            return EXIT_ERROR;
        }
    };
    let signal_handle = signals.handle();
    let forwarder = {
        let running = Arc::clone(&running);
        let mut signals = signals;
        std::thread::spawn(move || {
            for signal in signals.forever() {
                let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
                running.signal = Some(signal);
                for &pid in &running.pids {
                    // SAFETY: kill has no memory effects; each pid is a child
                    // not yet reaped, so it cannot have been reused.
                    unsafe { libc::kill(pid, signal) };
                }
            }
        })
    };

    let mut codes = Vec::new();
    let mut started: Vec<(&Prepared, Child, [JoinHandle<()>; 2])> = Vec::new();
    for session in sessions {
        // Held across the spawn, so a signal either stops the spawning or
        // reaches the new child.
        let mut state = running.lock().unwrap_or_else(|e| e.into_inner());
        if state.signal.is_some() {
            codes.push(EXIT_INTERRUPTED);
            continue;
        }
        match child_command(&exe, session).spawn() {
            Ok(mut child) => {
                state.pids.push(child.id() as libc::pid_t);
                drop(state);
                let stdout = child.stdout.take().expect("stdout is piped");
                let stderr = child.stderr.take().expect("stderr is piped");
                let relays = [
                    relay(
                        stdout,
                        session.name.clone(),
                        Stream::Stdout { json: session.json },
                    ),
                    relay(stderr, session.name.clone(), Stream::Stderr),
                ];
                started.push((session, child, relays));
            }
            Err(e) => {
                drop(state);
                eprintln!(
                    "[{}] snapsync: error: cannot start the session: {e}",
                    session.name
                );
                codes.push(EXIT_ERROR);
            }
        }
    }

    for (session, mut child, relays) in started {
        let pid = child.id() as libc::pid_t;
        wait_until_exited(pid);
        running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pids
            .retain(|&p| p != pid);
        let status = child.wait();
        for relay in relays {
            let _ = relay.join();
        }
        codes.push(match status {
            Ok(status) => child_code(status, &session.name),
            Err(e) => {
                eprintln!(
                    "[{}] snapsync: error: lost the session's process: {e}",
                    session.name
                );
                EXIT_ERROR
            }
        });
    }
    signal_handle.close();
    let _ = forwarder.join();
    combine(&codes)
}

fn child_command(exe: &std::path::Path, session: &Prepared) -> std::process::Command {
    let mut command = std::process::Command::new(exe);
    command
        .args(&session.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls
        // (prctl, getppid), no allocation.
        unsafe {
            command.pre_exec(move || {
                // A session must not outlive `run` (killed, say, by
                // SIGKILL): it is told to stop as by SIGTERM.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    command
}

/// Blocks until the child `pid` has exited, leaving it unreaped (so its pid
/// is not reused while the forwarder may still signal it).
fn wait_until_exited(pid: libc::pid_t) {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let result = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if result == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            return;
        }
    }
}

fn child_code(status: ExitStatus, name: &str) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal))
            if signal == signal_hook::consts::SIGINT || signal == signal_hook::consts::SIGTERM =>
        {
            EXIT_INTERRUPTED
        }
        (None, signal) => {
            eprintln!(
                "[{name}] snapsync: error: the session's process ended by signal {}; its session log may say why (`snapsync status` shows where it is)",
                signal.unwrap_or(0)
            );
            EXIT_ERROR
        }
    }
}

enum Stream {
    Stdout { json: bool },
    Stderr,
}

/// Passes a child's output on, a line at a time, naming its session: a
/// JSON summary gains a `session` key, any other line a `[NAME] ` prefix.
fn relay(from: impl Read + Send + 'static, name: String, to: Stream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).split(b'\n') {
            let Ok(line) = line else { return };
            if let Stream::Stdout { json: true } = to {
                if let Ok(serde_json::Value::Object(mut object)) =
                    serde_json::from_slice::<serde_json::Value>(&line)
                {
                    object.insert("session".into(), name.clone().into());
                    say!("{}", serde_json::Value::Object(object));
                    continue;
                }
            }
            let mut text = format!("[{name}] ").into_bytes();
            text.extend_from_slice(&line);
            text.push(b'\n');
            // As `say!`: output nobody reads any more is dropped.
            let _ = match to {
                Stream::Stdout { .. } => std::io::stdout().lock().write_all(&text),
                Stream::Stderr => std::io::stderr().lock().write_all(&text),
            };
        }
    })
}

/// The exit code of several sessions: an error wins, then a usage error,
/// an interruption, failed paths, conflicts; 0 only when all are 0.
pub fn combine(codes: &[i32]) -> i32 {
    let rank = |code: i32| match code {
        EXIT_OK => 0,
        EXIT_CONFLICTS => 1,
        EXIT_PARTIAL => 2,
        EXIT_INTERRUPTED => 3,
        EXIT_USAGE => 4,
        _ => 5,
    };
    match codes.iter().copied().max_by_key(|&code| rank(code)) {
        Some(code) if rank(code) == 5 => EXIT_ERROR,
        Some(code) => code,
        None => EXIT_OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_combine_worst_first() {
        assert_eq!(combine(&[]), 0);
        assert_eq!(combine(&[0, 0]), 0);
        assert_eq!(combine(&[0, 4]), 4);
        assert_eq!(combine(&[4, 3, 0]), 3);
        assert_eq!(combine(&[3, 130]), 130);
        assert_eq!(combine(&[130, 2]), 2);
        assert_eq!(combine(&[2, 1, 130]), 1);
        assert_eq!(combine(&[0, 101]), 1, "a panic is an error");
    }

    #[test]
    fn command_line_options_keep_their_order() {
        let cli = args::command();
        let specs = option_specs(&cli);
        let matches = cli
            .try_get_matches_from([
                "snapsync",
                "run",
                "--include",
                "a",
                "-vv",
                "--exclude=b",
                "-n",
                "--include",
                "c",
                "site",
            ])
            .unwrap();
        let run = matches.subcommand_matches("run").unwrap();
        let given = Given::from_matches(run, &specs);
        assert_eq!(
            given.words,
            [
                "--include=a",
                "--verbose",
                "--verbose",
                "--exclude=b",
                "--dry-run",
                "--include=c"
            ]
        );
        for id in ["include", "exclude", "verbose", "dry_run"] {
            assert!(given.ids.contains(id), "{id}");
        }
        assert!(!given.ids.contains("rsh"), "a default is not given");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        args::command().debug_assert();
    }
}
