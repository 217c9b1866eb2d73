//! The session log: what one side of a session did, a line per event, in
//! `<state dir>/logs/<session>.log` unless `--log-file` says otherwise.
//! Each side writes its own (the far end into its own state dir). When the
//! file reaches its size limit it becomes `NAME.1` (the older ones move up
//! to `NAME.KEEP`, the oldest goes), and a new one starts.
//!
//! Written by hand rather than through a logging framework: a process may
//! run several sessions at once (`snapsync run a b`), each with a log of
//! its own, so there is no one global logger to configure.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How many rotated files are kept beside the live one.
pub const KEEP: usize = 5;

/// The default size a log grows to before it is rotated (`--log-max`).
pub const DEFAULT_MAX: u64 = 10 * 1024 * 1024;

/// Where a session's log goes when `--log-file` does not say.
pub fn default_path(state_dir: &Path, session: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{session}.log"))
}

/// The rotated files of the log at `path` that exist, newest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    (1..=KEEP)
        .map(|n| numbered(path, n))
        .filter(|p| p.exists())
        .collect()
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

pub struct SessionLog {
    path: PathBuf,
    max: u64,
    verbose: bool,
    file: Mutex<Option<File>>,
    /// A write failed once and was said on stderr; later ones are quiet.
    warned: AtomicBool,
}

impl SessionLog {
    /// Opens (appends to) the log at `path`, making its directory.
    pub fn open(path: PathBuf, max: u64, verbose: bool) -> io::Result<SessionLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = append(&path)?;
        Ok(SessionLog {
            path,
            max: max.max(1),
            verbose,
            file: Mutex::new(Some(file)),
            warned: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Per-file lines are wanted (`-v`).
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// Appends one line, stamped with the time; rotates once the file has
    /// reached its limit. A log that cannot be written never stops a run:
    /// the first failure is said on stderr.
    pub fn line(&self, text: &str) {
        let stamped = format!("{} {text}\n", crate::state::chrono_like_now());
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| -> io::Result<()> {
            if file.is_none() {
                *file = Some(append(&self.path)?);
            }
            let f = file.as_mut().expect("opened above");
            f.write_all(stamped.as_bytes())?;
            if f.metadata()?.len() >= self.max {
                *file = None;
                self.rotate()?;
                *file = Some(append(&self.path)?);
            }
            Ok(())
        })();
        if let Err(e) = result {
            if !self.warned.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "snapsync: warning: cannot write the session log {}: {e}; the run goes on without it",
                    self.path.display()
                );
            }
        }
    }

    /// `NAME.(KEEP-1)` → `NAME.KEEP`, …, `NAME` → `NAME.1`.
    fn rotate(&self) -> io::Result<()> {
        for n in (1..KEEP).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, numbered(&self.path, 1))
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("s.log");
        let log = SessionLog::open(path.clone(), 100, false).unwrap();
        for i in 0..200 {
            log.line(&format!("line {i}"));
        }
        assert!(fs::metadata(&path).unwrap().len() < 100 + 40);
        let old = rotated(&path);
        assert_eq!(old.len(), KEEP);
        assert_eq!(old[0], dir.path().join("logs").join("s.log.1"));
        assert!(!numbered(&path, KEEP + 1).exists());
        // The newest lines are in the live file, the one before in `.1`.
        let live = fs::read_to_string(&path).unwrap();
        let one = fs::read_to_string(&old[0]).unwrap();
        assert!(live.ends_with("line 199\n") || live.is_empty(), "{live}");
        assert!(one.contains("line 19"), "{one}");
        for line in one.lines() {
            assert!(line.ends_with(|c: char| c.is_ascii_digit()), "{line}");
            assert!(line.starts_with("20"), "stamped: {line}");
        }
    }
}
