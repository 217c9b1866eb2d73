//! The config file of `snapsync run`: one TOML table per session. Which
//! keys a session may hold, and the type each takes, is read from clap's
//! definition of `push` (a flag takes a boolean, a counted flag an
//! integer, an option a string or number, a repeatable option a list), so
//! the file never lags behind the command line. Every mistake is a usage
//! error naming the file, the line and the key. Reads the file; runs
//! nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::args::{push_command, sync_options};
use super::Failure;
use snapsync::endpoint::RemoteSpec;
use snapsync::session::Direction;

/// How an option takes its value, as clap defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// `no-delete = true`
    Flag,
    /// `verbose = 2`
    Count,
    /// `rsh = "ssh -p 2222"`, `cooloff = 50`
    Value,
    /// `exclude = ["*.tmp", "cache/"]` (or one string)
    List,
}

/// One option of push / pull / bidi, seen as a config key.
pub struct OptionSpec {
    /// The long name: the key in the file.
    pub key: String,
    /// clap's id, to look the option up in parsed matches.
    pub id: String,
    pub kind: OptionKind,
    /// Ids of the options that cannot be given with this one, whichever
    /// of the two declared it.
    pub conflicts: Vec<String>,
}

/// Every option a session table may set, from clap's definition.
pub fn option_specs(cli: &clap::Command) -> Vec<OptionSpec> {
    let push = push_command(cli);
    let options: Vec<&Arg> = sync_options(cli).collect();
    let declared = |arg: &Arg| -> Vec<String> {
        push.get_arg_conflicts_with(arg)
            .iter()
            .map(|other| other.get_id().to_string())
            .collect()
    };
    options
        .iter()
        .filter_map(|arg| {
            let kind = match arg.get_action() {
                ArgAction::SetTrue => OptionKind::Flag,
                ArgAction::Count => OptionKind::Count,
                ArgAction::Set => OptionKind::Value,
                ArgAction::Append => OptionKind::List,
                _ => return None,
            };
            let id = arg.get_id().to_string();
            let mut conflicts = declared(arg);
            for other in &options {
                if declared(other).contains(&id) {
                    conflicts.push(other.get_id().to_string());
                }
            }
            Some(OptionSpec {
                key: arg.get_long()?.to_string(),
                id,
                kind,
                conflicts,
            })
        })
        .collect()
}

/// A session as the file defines it, checked.
pub struct SessionDef {
    pub name: String,
    pub direction: Direction,
    /// Resolved against the file's directory (`~/` is the home directory).
    pub local: PathBuf,
    /// `[user@]host:path` as written, or a directory resolved like `local`.
    pub remote: OsString,
    /// The options it sets, in the order of their keys in the table (so
    /// filter rules keep the order they are written in).
    pub options: Vec<FileOption>,
}

/// One option a session sets, as command-line words.
pub struct FileOption {
    pub id: String,
    /// `--exclude=*.tmp`, `--verbose`, ...; empty for `flag = false`.
    pub words: Vec<String>,
}

/// A session table: checked when it is to run, so a mistake in one
/// session does not stop the others from running.
pub struct SessionEntry {
    pub name: String,
    pub def: Result<SessionDef, Failure>,
}

/// The config file, parsed: its sessions in the order they are written.
pub struct Config {
    pub path: PathBuf,
    pub sessions: Vec<SessionEntry>,
}

/// Where the config file is when `--config` is not given.
pub fn default_path() -> Result<PathBuf, Failure> {
    // The XDG base directory rule: an empty or relative value is ignored.
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
        if dir.is_absolute() {
            return Ok(dir.join("snapsync/config.toml"));
        }
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config/snapsync/config.toml")),
        None => Err(Failure::usage(
            "no config file: neither XDG_CONFIG_HOME nor HOME is set; give --config FILE",
        )),
    }
}

impl Config {
    /// Reads and checks the file at `path`. A missing file is a usage
    /// error; one that cannot be read, an error.
    pub fn load(
        path: &Path,
        specs: &[OptionSpec],
        push: &clap::Command,
    ) -> Result<Config, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Failure::usage(format!(
                    "config file {} not found; write it (see `snapsync run --help`) or give --config FILE",
                    path.display()
                ))
            } else {
                Failure::error(format!("cannot read config file {}: {e}", path.display()))
            }
        })?;
        Config::parse(path, &text, specs, push)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        specs: &[OptionSpec],
        push: &clap::Command,
    ) -> Result<Config, Failure> {
        let file = Source { path, text };
        let document = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |span| file.line(span.start));
            file.error(line, format!("TOML syntax error: {}", e.message().trim()))
        })?;
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let mut tables: Vec<_> = document.get_ref().iter().collect();
        tables.sort_by_key(|(name, _)| name.span().start);
        let mut sessions = Vec::new();
        for (name, value) in tables {
            let line = file.line(name.span().start);
            let DeValue::Table(table) = value.get_ref() else {
                return Err(file.error(
                    line,
                    format!(
                        "\"{}\" is not a session: each session is a table, [NAME]",
                        name.get_ref()
                    ),
                ));
            };
            let session = SessionTable {
                file: &file,
                name: name.get_ref(),
                line,
                table,
            };
            sessions.push(SessionEntry {
                name: name.get_ref().to_string(),
                def: session.check(specs, push, &base),
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            sessions,
        })
    }

    pub fn error(&self, message: impl std::fmt::Display) -> Failure {
        Failure::usage(format!("{}: {message}", self.path.display()))
    }
}

/// The file's name and text, to turn byte offsets into lines.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(&self, line: usize, message: impl std::fmt::Display) -> Failure {
        Failure::usage(format!("{}:{line}: {message}", self.path.display()))
    }
}

struct SessionTable<'a> {
    file: &'a Source<'a>,
    name: &'a str,
    /// The line of its `[NAME]` header.
    line: usize,
    table: &'a DeTable<'a>,
}

const REQUIRED: [&str; 3] = ["direction", "local", "remote"];

impl SessionTable<'_> {
    fn check(
        &self,
        specs: &[OptionSpec],
        push: &clap::Command,
        base: &Path,
    ) -> Result<SessionDef, Failure> {
        let name = super::valid_session_name(self.name).map_err(|e| {
            self.file
                .error(self.line, format!("session [{}]: {}", self.name, e.message))
        })?;
        let mut keys: Vec<_> = self.table.iter().collect();
        keys.sort_by_key(|(key, _)| key.span().start);
        let mut options = Vec::new();
        for (key, value) in keys {
            let key_line = self.file.line(key.span().start);
            let key = key.get_ref().as_ref();
            if REQUIRED.contains(&key) {
                continue;
            }
            if key == "session" {
                return Err(self.file.error(
                    key_line,
                    format!(
                        "key \"session\" in session [{}]: the table's name is the session's name",
                        self.name
                    ),
                ));
            }
            let Some(spec) = specs.iter().find(|spec| spec.key == key) else {
                return Err(self.file.error(
                    key_line,
                    format!(
                        "unknown key \"{key}\" in session [{}]{}",
                        self.name,
                        suggestion(key, specs)
                    ),
                ));
            };
            let words = self.words(spec, value)?;
            self.check_value(spec, &words, push, key_line)?;
            options.push(FileOption {
                id: spec.id.clone(),
                words,
            });
        }
        let direction = match self.string("direction")?.as_str() {
            "push" => Direction::Push,
            "pull" => Direction::Pull,
            "bidi" => Direction::Bidi,
            other => {
                return Err(self.file.error(
                    self.value_line("direction"),
                    format!(
                        "key \"direction\" in session [{}]: unknown direction \"{other}\"; use push, pull or bidi",
                        self.name
                    ),
                ))
            }
        };
        let local = resolve(base, &self.string("local")?);
        let remote = self.string("remote")?;
        let remote = match RemoteSpec::parse(&remote) {
            Some(_) => OsString::from(remote),
            None => resolve(base, &remote).into_os_string(),
        };
        Ok(SessionDef {
            name,
            direction,
            local,
            remote,
            options,
        })
    }

    /// A required string key.
    fn string(&self, key: &str) -> Result<String, Failure> {
        let Some(value) = self.table.get(key) else {
            return Err(self.file.error(
                self.line,
                format!(
                    "session [{}] has no \"{key}\" key (direction, local and remote are required)",
                    self.name
                ),
            ));
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            other => Err(self.wrong_type(key, value, "a string", other)),
        }
    }

    fn value_line(&self, key: &str) -> usize {
        self.table
            .get(key)
            .map_or(self.line, |value| self.file.line(value.span().start))
    }

    fn wrong_type(
        &self,
        key: &str,
        at: &Spanned<DeValue>,
        expected: &str,
        found: &DeValue,
    ) -> Failure {
        self.file.error(
            self.file.line(at.span().start),
            format!(
                "key \"{key}\" in session [{}] takes {expected}, not {} {}",
                self.name,
                article(found.type_str()),
                found.type_str()
            ),
        )
    }

    /// The command-line words that say what `value` says.
    fn words(&self, spec: &OptionSpec, value: &Spanned<DeValue>) -> Result<Vec<String>, Failure> {
        let flag = format!("--{}", spec.key);
        let with = |text: String| format!("--{}={text}", spec.key);
        let key = spec.key.as_str();
        match (spec.kind, value.get_ref()) {
            (OptionKind::Flag, DeValue::Boolean(on)) => Ok(if *on { vec![flag] } else { vec![] }),
            (OptionKind::Flag, other) => Err(self.wrong_type(key, value, "true or false", other)),
            (OptionKind::Count, DeValue::Integer(n)) => match integer(n) {
                Some(n @ 0..=255) => Ok(vec![flag; n as usize]),
                _ => Err(self.file.error(
                    self.file.line(value.span().start),
                    format!(
                        "key \"{key}\" in session [{}] takes a count from 0 to 255",
                        self.name
                    ),
                )),
            },
            (OptionKind::Count, other) => {
                Err(self.wrong_type(key, value, "a whole number (a count)", other))
            }
            (OptionKind::Value, other) => match scalar(other) {
                Some(text) => Ok(vec![with(text)]),
                None => Err(self.wrong_type(key, value, "a string or a number", other)),
            },
            (OptionKind::List, DeValue::Array(items)) => items
                .iter()
                .map(|item| match scalar(item.get_ref()) {
                    Some(text) => Ok(with(text)),
                    None => Err(self.wrong_type(
                        key,
                        item,
                        "a list of strings (or one string)",
                        item.get_ref(),
                    )),
                })
                .collect(),
            (OptionKind::List, other) => match scalar(other) {
                Some(text) => Ok(vec![with(text)]),
                None => {
                    Err(self.wrong_type(key, value, "a list of strings (or one string)", other))
                }
            },
        }
    }

    /// Lets clap judge the value (`links = "sideways"`, `cooloff = "soon"`)
    /// here, where the line is known.
    fn check_value(
        &self,
        spec: &OptionSpec,
        words: &[String],
        push: &clap::Command,
        line: usize,
    ) -> Result<(), Failure> {
        if !matches!(spec.kind, OptionKind::Value | OptionKind::List) {
            return Ok(());
        }
        let argv = std::iter::once("push")
            .chain(words.iter().map(String::as_str))
            .chain(["--", "local", "remote"]);
        match push.clone().try_get_matches_from(argv) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.file.error(
                line,
                format!(
                    "key \"{}\" in session [{}]: {}",
                    spec.key,
                    self.name,
                    clap_message(&e)
                ),
            )),
        }
    }
}

/// The first line of a clap error, without its `error: `.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// A string or a number, as a command-line word.
fn scalar(value: &DeValue) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(n) => integer(n).map(|n| n.to_string()),
        _ => None,
    }
}

fn integer(n: &toml::de::DeInteger) -> Option<i64> {
    i64::from_str_radix(n.as_str(), n.radix()).ok()
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// `~/x` is under the home directory; a relative path is relative to the
/// config file's directory (a service's working directory is `/`).
fn resolve(base: &Path, value: &str) -> PathBuf {
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty());
    match (value.strip_prefix('~'), home) {
        (Some(""), Some(home)) => PathBuf::from(home),
        (Some(rest), Some(home)) if rest.starts_with('/') => {
            PathBuf::from(home).join(rest.trim_start_matches('/'))
        }
        _ => base.join(value),
    }
}

/// ` (did you mean "exclude"?)` when a key is close to the one typed.
fn suggestion(key: &str, specs: &[OptionSpec]) -> String {
    let known = specs.iter().map(|spec| spec.key.as_str()).chain(REQUIRED);
    let best = known
        .map(|candidate| (edit_distance(key, candidate), candidate))
        .min();
    match best {
        Some((distance, candidate)) if distance <= 2 && distance < key.len() => {
            format!(" (did you mean \"{candidate}\"?)")
        }
        _ => String::new(),
    }
}

/// Levenshtein distance between two short words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> (Vec<OptionSpec>, clap::Command) {
        let cli = super::super::args::command();
        (option_specs(&cli), push_command(&cli).clone())
    }

    fn parse(text: &str) -> Result<Config, Failure> {
        let (specs, push) = specs();
        Config::parse(Path::new("/etc/snapsync/config.toml"), text, &specs, &push)
    }

    fn session(text: &str) -> Result<SessionDef, Failure> {
        parse(text)?.sessions.remove(0).def
    }

    fn message(result: Result<impl Sized, Failure>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(failure) => {
                assert_eq!(
                    failure.code,
                    super::super::EXIT_USAGE,
                    "{}",
                    failure.message
                );
                failure.message
            }
        }
    }

    #[test]
    fn kinds_come_from_the_clap_definition() {
        let (specs, _) = specs();
        let kind = |key: &str| specs.iter().find(|s| s.key == key).map(|s| s.kind);
        assert_eq!(kind("no-delete"), Some(OptionKind::Flag));
        assert_eq!(kind("verbose"), Some(OptionKind::Count));
        assert_eq!(kind("rsh"), Some(OptionKind::Value));
        assert_eq!(kind("exclude"), Some(OptionKind::List));
        assert_eq!(kind("session"), None, "the table name is the session");
        assert_eq!(kind("help"), None);
        let continuous = specs.iter().find(|s| s.key == "continuous").unwrap();
        let dry_run = specs.iter().find(|s| s.key == "dry-run").unwrap();
        assert!(continuous.conflicts.contains(&"dry_run".to_string()));
        assert!(dry_run.conflicts.contains(&"continuous".to_string()));
    }

    #[test]
    fn a_session_becomes_words_in_key_order() {
        let def = session(
            "# sessions\n[site]\ndirection = \"push\"\nlocal = \"src\"\nremote = \"web:/srv/site\"\n\
             include = \"keep.tmp\"\nexclude = [\"*.tmp\", \"cache/\"]\nno-delete = true\n\
             owner = false\nverbose = 2\ncooloff = 50\n",
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(def.name, "site");
        assert_eq!(def.direction, Direction::Push);
        assert_eq!(def.local, Path::new("/etc/snapsync/src"));
        assert_eq!(def.remote, "web:/srv/site");
        let words: Vec<String> = def.options.iter().flat_map(|o| o.words.clone()).collect();
        assert_eq!(
            words,
            [
                "--include=keep.tmp",
                "--exclude=*.tmp",
                "--exclude=cache/",
                "--no-delete",
                "--verbose",
                "--verbose",
                "--cooloff=50"
            ]
        );
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let head = "[site]\ndirection = \"push\"\nlocal = \"a\"\nremote = \"b\"\n";
        let m = message(session(&format!("{head}exclud = [\"x\"]\n")));
        assert!(
            m.starts_with("/etc/snapsync/config.toml:5: unknown key \"exclud\" in session [site]"),
            "{m}"
        );
        assert!(m.contains("did you mean \"exclude\""), "{m}");
        let m = message(session(&format!("{head}\nno-delete = \"yes\"\n")));
        assert!(
            m.starts_with("/etc/snapsync/config.toml:6: key \"no-delete\""),
            "{m}"
        );
        assert!(m.contains("true or false, not a string"), "{m}");
        let m = message(session(&format!("{head}exclude = [\"a\",\n  3.5]\n")));
        assert!(
            m.starts_with("/etc/snapsync/config.toml:6: key \"exclude\""),
            "{m}"
        );
        let m = message(session(&format!("{head}links = \"sideways\"\n")));
        assert!(
            m.starts_with("/etc/snapsync/config.toml:5: key \"links\""),
            "{m}"
        );
        assert!(m.contains("sideways"), "{m}");
        let m = message(session(&format!("{head}session = \"x\"\n")));
        assert!(m.contains(":5: key \"session\""), "{m}");
        let m = message(session("\n[site]\nlocal = \"a\"\nremote = \"b\"\n"));
        assert!(
            m.contains(":2: session [site] has no \"direction\" key"),
            "{m}"
        );
        let m = message(session(
            "[site]\ndirection = \"sideways\"\nlocal = \"a\"\nremote = \"b\"\n",
        ));
        assert!(m.contains(":2: key \"direction\""), "{m}");
        let m = message(parse("[site]\ndirection = \"push\"\nlocal = \"a\n"));
        assert!(
            m.starts_with("/etc/snapsync/config.toml:3: TOML syntax error"),
            "{m}"
        );
        let m = message(parse("stray = 1\n"));
        assert!(m.contains(":1: \"stray\" is not a session"), "{m}");
    }

    #[test]
    fn roots_resolve_against_the_file_and_home() {
        let base = Path::new("/cfg");
        assert_eq!(resolve(base, "/abs"), Path::new("/abs"));
        assert_eq!(resolve(base, "rel/x"), Path::new("/cfg/rel/x"));
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            assert_eq!(resolve(base, "~/x"), Path::new(&home).join("x"));
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("exclud", "exclude"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
