//! `--backup-dir`: what a run deletes or replaces on a root is kept under
//! `DIR/<run start, UTC, YYYYmmdd-HHMMSS[-N]>/<relative path>` instead of
//! being discarded.
//!
//! This module knows where a backup goes and how a path gets there: moved
//! (a rename on the same filesystem; a copy, then the removal, across
//! filesystems), or, for a version about to be replaced, linked (or copied)
//! there first. It never removes anything it has not first put in the
//! backup; [`crate::apply`] decides what to back up.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use filetime::FileTime;

use crate::model::RelPath;

/// Where a root keeps its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupDir {
    /// Relative to the root: inside it, and never synced.
    InRoot(RelPath),
    /// Absolute, on the root's host, outside the root.
    Elsewhere(PathBuf),
}

impl BackupDir {
    /// Reads `--backup-dir` as the user gave it: an absolute path, or one
    /// relative to the root (`./` and trailing slashes are dropped; `..`
    /// and the root itself are refused).
    pub fn parse(text: &str) -> Result<BackupDir, String> {
        if text.starts_with('/') {
            return Ok(BackupDir::Elsewhere(PathBuf::from(text)));
        }
        let parts: Vec<&str> = text
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
            .collect();
        if parts.is_empty() {
            return Err(format!(
                "--backup-dir `{text}` is the root itself; name a directory in it, or an absolute path"
            ));
        }
        RelPath::new(parts.join("/").as_bytes())
            .map(BackupDir::InRoot)
            .map_err(|e| {
                format!("--backup-dir `{text}`: {e}; give a directory inside the root, or an absolute path")
            })
    }

    /// The same place, seen from `root`: an absolute path inside the root
    /// is the relative one (so it is excluded from the sync too).
    pub fn seen_from(self, root: &Path) -> Result<BackupDir, String> {
        let BackupDir::Elsewhere(dir) = &self else {
            return Ok(self);
        };
        let real = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (root, dir) = (real(root), real(dir));
        match dir.strip_prefix(&root) {
            Ok(rest) if rest.as_os_str().is_empty() => Err(format!(
                "--backup-dir {} is the root itself; name a directory in it, or one outside",
                dir.display()
            )),
            Ok(rest) => RelPath::new(rest.as_os_str().as_bytes())
                .map(BackupDir::InRoot)
                .map_err(|e| format!("--backup-dir {}: {e}", dir.display())),
            Err(_) if root.starts_with(&dir) => Err(format!(
                "--backup-dir {} holds the root {}; name a directory beside it or inside it",
                dir.display(),
                root.display()
            )),
            Err(_) => Ok(self),
        }
    }
}

/// One run's backup directory: `DIR/<stamp>`, or `DIR/<stamp>-N` when that
/// exists already (two runs in one second). Made when the run first backs
/// something up; a run that deletes and replaces nothing leaves no trace.
pub struct RunBackup {
    pub dir: BackupDir,
    stamp: String,
    made: Mutex<Option<String>>,
}

impl RunBackup {
    /// `stamp`: the run's start, `YYYYmmdd-HHMMSS` UTC.
    pub fn new(dir: BackupDir, stamp: String) -> RunBackup {
        RunBackup {
            dir,
            stamp,
            made: Mutex::new(None),
        }
    }

    /// The name of this run's directory in `DIR`, made by `make` (which
    /// must fail with `AlreadyExists` when the name is taken) the first time.
    pub fn run_dir_name(&self, make: impl Fn(&str) -> io::Result<()>) -> io::Result<String> {
        let mut made = self.made.lock().unwrap();
        if let Some(name) = made.as_ref() {
            return Ok(name.clone());
        }
        for n in 0..10_000u32 {
            let name = if n == 0 {
                self.stamp.clone()
            } else {
                format!("{}-{n}", self.stamp)
            };
            match make(&name) {
                Ok(()) => {
                    *made = Some(name.clone());
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "every name from {} to {}-9999 is taken",
            self.stamp, self.stamp
        )))
    }
}

/// `dest`, or when something is there already (the same path kept twice in
/// one run), `dest~1`, `dest~2`, ...: a backup never replaces a backup.
pub fn free_name(dest: PathBuf) -> PathBuf {
    if fs::symlink_metadata(&dest).is_err() {
        return dest;
    }
    (1u32..)
        .map(|n| {
            let mut name = dest.file_name().unwrap_or_default().to_os_string();
            name.push(format!("~{n}"));
            dest.with_file_name(name)
        })
        .find(|candidate| fs::symlink_metadata(candidate).is_err())
        .expect("a free name")
}

fn crosses_filesystems(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
}

/// Moves `from` (a file, link or whole directory) to `to`: a rename on the
/// same filesystem; across filesystems a copy (content, mode, times), then
/// the removal of the original, which stays where it was if the copy fails.
pub fn move_to(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if crosses_filesystems(&e) => {}
        other => return other,
    }
    if let Err(e) = copy_tree(from, to) {
        let _ = remove_tree(to);
        return Err(e);
    }
    remove_tree(from)
}

/// Keeps a copy of the file or link `from` at `to` while `from` stays: a
/// hard link (the same inode, so nothing is copied) on the same filesystem,
/// a copy across filesystems. An error when neither works (a filesystem
/// without hard links, say): the caller then moves it instead.
pub fn keep_beside(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if crosses_filesystems(&e) => {}
        other => return other,
    }
    if let Err(e) = copy_tree(from, to) {
        let _ = remove_tree(to);
        return Err(e);
    }
    Ok(())
}

fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Copies a file, link or directory tree, keeping content, permission bits
/// and modification times (owners and extended attributes are not copied).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let mtime = FileTime::from_unix_time(meta.mtime(), meta.mtime_nsec() as u32);
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(from)?, to)?;
        return filetime::set_symlink_file_times(to, FileTime::now(), mtime);
    }
    if meta.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(to)?;
        for child in fs::read_dir(from)? {
            let name = child?.file_name();
            copy_tree(&from.join(&name), &to.join(&name))?;
        }
    } else if meta.is_file() {
        let mut source = fs::File::open(from)?;
        let mut dest = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)?;
        io::copy(&mut source, &mut dest)?;
    } else {
        return Err(io::Error::other(format!(
            "{} is a special file; it cannot be copied",
            from.display()
        )));
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    filetime::set_file_mtime(to, mtime)
}

/// `DIR/<run>/<path>` for a backup outside the root.
pub fn elsewhere(dir: &Path, run: &str, path: &RelPath) -> PathBuf {
    path.under(&dir.join(OsStr::new(run)))
}

/// `DIR/<run>/<path>` for a backup inside the root.
pub fn in_root(dir: &RelPath, run: &str, path: &RelPath) -> RelPath {
    let mut bytes = dir.as_bytes().to_vec();
    bytes.push(b'/');
    bytes.extend_from_slice(run.as_bytes());
    if !path.is_root() {
        bytes.push(b'/');
        bytes.extend_from_slice(path.as_bytes());
    }
    RelPath::new(&bytes).expect("valid parts make a valid path")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn relative_and_absolute_dirs_are_told_apart() {
        assert_eq!(BackupDir::parse(".bak"), Ok(BackupDir::InRoot(p(".bak"))));
        assert_eq!(
            BackupDir::parse("./old/kept/"),
            Ok(BackupDir::InRoot(p("old/kept")))
        );
        assert_eq!(
            BackupDir::parse("/var/backups/site"),
            Ok(BackupDir::Elsewhere(PathBuf::from("/var/backups/site")))
        );
        assert!(BackupDir::parse("../outside").is_err());
        assert!(BackupDir::parse("a/../b").is_err());
        assert!(BackupDir::parse(".").is_err());
        assert!(BackupDir::parse("./").is_err());
    }

    #[test]
    fn an_absolute_dir_inside_the_root_is_the_relative_one() {
        let root = tempfile::tempdir().unwrap();
        let inside = BackupDir::Elsewhere(root.path().join("keep/old"));
        assert_eq!(
            inside.seen_from(root.path()),
            Ok(BackupDir::InRoot(p("keep/old")))
        );
        let itself = BackupDir::Elsewhere(root.path().to_path_buf());
        assert!(itself.seen_from(root.path()).is_err());
        let above = BackupDir::Elsewhere(root.path().parent().unwrap().to_path_buf());
        assert!(above.seen_from(root.path()).is_err());
        let beside = BackupDir::Elsewhere(PathBuf::from("/nonexistent/backups"));
        assert_eq!(beside.clone().seen_from(root.path()), Ok(beside));
    }

    #[test]
    fn a_taken_run_directory_gets_the_next_suffix_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("20260101-120000")).unwrap();
        fs::create_dir(dir.path().join("20260101-120000-1")).unwrap();
        let run = RunBackup::new(
            BackupDir::Elsewhere(dir.path().to_path_buf()),
            "20260101-120000".into(),
        );
        let make = |name: &str| fs::create_dir(dir.path().join(name));
        assert_eq!(run.run_dir_name(make).unwrap(), "20260101-120000-2");
        // Made once: later backups of the run go to the same place.
        assert_eq!(run.run_dir_name(make).unwrap(), "20260101-120000-2");
    }

    #[test]
    fn paths_in_the_backup() {
        assert_eq!(in_root(&p(".bak"), "R", &p("a/b")), p(".bak/R/a/b"));
        assert_eq!(
            elsewhere(Path::new("/x"), "R", &p("a/b")),
            PathBuf::from("/x/R/a/b")
        );
    }

    #[test]
    fn a_backup_never_replaces_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        assert_eq!(free_name(dest.clone()), dest);
        fs::write(&dest, "one").unwrap();
        assert_eq!(free_name(dest.clone()), dir.path().join("f~1"));
    }

    #[test]
    fn copies_keep_content_mode_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("tree");
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::write(from.join("sub/f"), "data").unwrap();
        fs::set_permissions(from.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        filetime::set_file_mtime(from.join("sub/f"), FileTime::from_unix_time(1_000_000, 5))
            .unwrap();
        symlink("sub/f", from.join("link")).unwrap();
        let to = dir.path().join("copy");
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("sub/f")).unwrap(), b"data");
        let meta = fs::metadata(to.join("sub/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000, 5));
        assert_eq!(fs::read_link(to.join("link")).unwrap(), Path::new("sub/f"));
    }
}
