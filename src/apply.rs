//! Changing a local root: atomic file writes, renames, deletes, directories,
//! symlinks and metadata.
//!
//! `apply` never writes outside its root: every path is a validated
//! [`RelPath`], and no operation goes through a symlink on the way to its
//! target. A file is written under a temporary name in its target
//! directory, given its metadata, verified, and only then renamed into place,
//! so no partial file ever appears under a real name.
//!
//! With a backup (`--backup-dir`), nothing is discarded: a deleted file or
//! link moves into the run's backup directory, and one about to be replaced
//! is linked (or copied) there before the new version is renamed over it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use filetime::FileTime;

use crate::backup::{self, BackupDir, RunBackup};
use crate::filter::TEMP_PREFIX;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::scan::entry_from_metadata;

/// Extended attributes to give a path, read from the source.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("refusing to write through symlink {0}: it could lead outside the root")]
    SymlinkInPath(RelPath),
    #[error("{0} is not a directory")]
    NotADirectory(RelPath),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Verify(String),
    /// A directory to delete still holds entries the session does not sync.
    #[error("directory {0} still holds excluded entries; it was kept")]
    NotEmpty(RelPath),
    /// Content the plan meant to reuse is no longer what the plan expected.
    #[error("{0} is no longer what the plan expected")]
    Stale(RelPath),
    /// The old version could not be put in the backup; it was left as it was.
    #[error("cannot back up {path} into {dir}: {source}; it was left as it was")]
    Backup {
        path: RelPath,
        dir: String,
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Io { what, source }
}

/// A local root that operations are applied to.
pub struct LocalTree {
    root: PathBuf,
    preserve: Preserve,
    /// Directories checked to be real directories (not links) this run.
    checked_dirs: Mutex<HashSet<RelPath>>,
    temp_counter: AtomicU64,
    /// This run's backup (`--backup-dir`), if any.
    backup: RwLock<Option<Arc<RunBackup>>>,
}

impl LocalTree {
    pub fn new(root: PathBuf, preserve: Preserve) -> Self {
        LocalTree {
            root,
            preserve,
            checked_dirs: Mutex::new(HashSet::new()),
            temp_counter: AtomicU64::new(0),
            backup: RwLock::new(None),
        }
    }

    /// Where what this run deletes or replaces goes (`None`: discarded).
    pub fn set_backup(&self, backup: Option<RunBackup>) {
        *self.backup.write().unwrap() = backup.map(Arc::new);
    }

    /// True when deletes and replacements go to a backup.
    pub fn backs_up(&self) -> bool {
        self.backup.read().unwrap().is_some()
    }

    /// Where the old version of `path` goes in this run's backup, with the
    /// directories above it made (the run's directory first, the first
    /// time); a free name, never an earlier backup. `None` without a backup.
    fn backup_path(&self, path: &RelPath) -> Result<Option<PathBuf>, ApplyError> {
        let Some(run) = self.backup.read().unwrap().clone() else {
            return Ok(None);
        };
        let failed = |source: io::Error| ApplyError::Backup {
            path: path.clone(),
            dir: match &run.dir {
                BackupDir::InRoot(dir) => dir.to_string(),
                BackupDir::Elsewhere(dir) => dir.display().to_string(),
            },
            source,
        };
        let dest = match &run.dir {
            BackupDir::InRoot(dir) => {
                // Inside the root: checked like every write, never through a link.
                let name = run
                    .run_dir_name(|name| {
                        let rel = backup::in_root(dir, name, &RelPath::root());
                        let abs = self
                            .safe_path(&rel, true)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        fs::DirBuilder::new().mode(0o700).create(abs)
                    })
                    .map_err(failed)?;
                self.safe_path(&backup::in_root(dir, &name, path), true)
                    .map_err(|e| failed(io::Error::other(e.to_string())))?
            }
            BackupDir::Elsewhere(dir) => {
                let name = run
                    .run_dir_name(|name| {
                        fs::DirBuilder::new().recursive(true).create(dir)?;
                        fs::DirBuilder::new().mode(0o700).create(dir.join(name))
                    })
                    .map_err(failed)?;
                let dest = backup::elsewhere(dir, &name, path);
                if let Some(parent) = dest.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(failed)?;
                }
                dest
            }
        };
        Ok(Some(backup::free_name(dest)))
    }

    /// Moves `path` (a file, link or whole directory) into the backup.
    /// False without a backup (nothing was done).
    pub fn move_to_backup(&self, path: &RelPath) -> Result<bool, ApplyError> {
        let abs = self.safe_path(path, false)?;
        let Some(dest) = self.backup_path(path)? else {
            return Ok(false);
        };
        match backup::move_to(&abs, &dest) {
            // Gone meanwhile: nothing left to keep.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ApplyError::Backup {
                    path: path.clone(),
                    dir: dest.display().to_string(),
                    source,
                })
            }
            Ok(()) => {}
        }
        self.forget_checked(path);
        Ok(true)
    }

    /// Before `path` is replaced: its old version (a file or link; a
    /// directory is never replaced, it is deleted first) is linked or copied
    /// into the backup, so it stays where it is until the new version is
    /// renamed over it, and no moment passes without either. Where neither
    /// works it is moved there: a run killed before the new version is in
    /// place then leaves the real name missing, which the next run fills.
    fn keep_replaced(&self, abs: &Path, path: &RelPath) -> Result<(), ApplyError> {
        match fs::symlink_metadata(abs) {
            Ok(meta) if !meta.is_dir() => {}
            _ => return Ok(()),
        }
        let Some(dest) = self.backup_path(path)? else {
            return Ok(());
        };
        backup::keep_beside(abs, &dest)
            .or_else(|_| backup::move_to(abs, &dest))
            .map_err(|source| ApplyError::Backup {
                path: path.clone(),
                dir: dest.display().to_string(),
                source,
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata this root is given beyond content, times and mode.
    pub fn preserve(&self) -> Preserve {
        self.preserve
    }

    /// The absolute path of `path`, after checking that each directory above
    /// it inside the root is a real directory. Missing ones are created
    /// (owner-only; their final mode is set later) when `create` is set.
    fn safe_path(&self, path: &RelPath, create: bool) -> Result<PathBuf, ApplyError> {
        let mut ancestors = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d.is_root() {
                break;
            }
            if self.checked_dirs.lock().unwrap().contains(&d) {
                break;
            }
            dir = d.parent();
            ancestors.push(d);
        }
        for d in ancestors.into_iter().rev() {
            let abs = d.under(&self.root);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ApplyError::SymlinkInPath(d));
                }
                Ok(meta) if !meta.is_dir() => return Err(ApplyError::NotADirectory(d)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&abs)
                        .or_else(|e| {
                            if e.kind() == io::ErrorKind::AlreadyExists && abs.is_dir() {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(io_error(format!("cannot create directory {d}")))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(ApplyError::Io {
                        what: format!("directory {d} is missing"),
                        source: e,
                    })
                }
                Err(e) => return Err(io_error(format!("cannot inspect {d}"))(e)),
            }
            self.checked_dirs.lock().unwrap().insert(d);
        }
        Ok(path.under(&self.root))
    }

    /// The absolute path of an existing `path`, checked like every write.
    pub fn checked_path(&self, path: &RelPath) -> Result<PathBuf, ApplyError> {
        self.safe_path(path, false)
    }

    fn forget_checked(&self, path: &RelPath) {
        self.checked_dirs
            .lock()
            .unwrap()
            .retain(|d| !d.starts_with(path));
    }

    fn temp_path(&self, path: &RelPath) -> Result<PathBuf, ApplyError> {
        let dest = self.safe_path(path, true)?;
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let mut name = TEMP_PREFIX.to_vec();
        name.extend_from_slice(format!("{}-{n}", std::process::id()).as_bytes());
        Ok(dest.with_file_name(std::ffi::OsStr::from_bytes(&name)))
    }

    /// Reads the entry at `path` as it is now, with `hash` as its content hash.
    pub fn stat(&self, path: &RelPath, hash: Option<Hash>) -> Result<Entry, ApplyError> {
        let abs = path.under(&self.root);
        let meta = fs::symlink_metadata(&abs).map_err(io_error(format!("cannot stat {path}")))?;
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        let link_target = if kind == Kind::Symlink {
            Some(
                fs::read_link(&abs)
                    .map_err(io_error(format!("cannot read link {path}")))?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else {
            None
        };
        let mut entry = entry_from_metadata(path.clone(), kind, &meta, link_target, None);
        entry.hash = hash;
        if self.preserve.any_xattrs() {
            entry.xattr_hash = crate::scan::read_xattrs(&abs, kind, self.preserve)
                .ok()
                .map(|pairs| Box::new(xattr_pairs_hash(&pairs)));
        }
        Ok(entry)
    }

    /// Starts writing `entry` under a temporary name in its directory. With
    /// `basis`, ranges of the file now at that path can be copied in (delta).
    pub fn begin_file(&self, entry: &Entry, basis: bool) -> Result<IncomingFile<'_>, ApplyError> {
        let tmp = self.temp_path(&entry.path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error(format!(
                "cannot create a temporary file for {}",
                entry.path
            )))?;
        let basis = if basis {
            Some(
                File::open(entry.path.under(&self.root))
                    .map_err(io_error(format!("cannot open {} for a delta", entry.path)))?,
            )
        } else {
            None
        };
        Ok(IncomingFile {
            tree: self,
            entry: entry.clone(),
            tmp,
            // Small files are written in one go; large ones in 256 KiB runs.
            file: Some(io::BufWriter::with_capacity(
                (entry.size as usize).clamp(4096, 256 * 1024),
                file,
            )),
            basis,
            hasher: blake3::Hasher::new(),
            literal_bytes: 0,
        })
    }

    /// Writes a file from `data` under a temporary name, hashing what it
    /// writes; `verify` sees the hash and may refuse, and only then is the
    /// file given its metadata and renamed into place.
    pub fn write_file(
        &self,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        data: &mut dyn Read,
        verify: &dyn Fn(&Hash) -> Result<(), String>,
    ) -> Result<(Entry, u64), ApplyError> {
        let mut incoming = self.begin_file(entry, false)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(format!("cannot copy {}", entry.path))(e)),
            };
            incoming.literal(&buf[..n])?;
        }
        let hash = incoming.hash();
        verify(&hash).map_err(ApplyError::Verify)?;
        incoming.finish(&hash, xattrs)
    }

    /// Copies content this root already holds at `from` to `entry.path`,
    /// checking it is still the content `entry.hash` names.
    pub fn local_copy(
        &self,
        from: &RelPath,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> Result<(Entry, u64), ApplyError> {
        let source = self.safe_path(from, false)?;
        let mut file = File::open(&source).map_err(|_| ApplyError::Stale(from.clone()))?;
        let expected = entry.hash;
        self.write_file(entry, xattrs, &mut file, &|hash| {
            if Some(*hash) == expected {
                Ok(())
            } else {
                Err(format!("{from} changed; its content cannot be reused"))
            }
        })
    }

    /// Moves `from` (a file holding `entry`'s content, as `expected` recorded
    /// it) onto `entry.path` and gives it `entry`'s metadata.
    pub fn rename_content(
        &self,
        from: &RelPath,
        expected: &Entry,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> Result<Entry, ApplyError> {
        let now = self
            .stat(from, None)
            .map_err(|_| ApplyError::Stale(from.clone()))?;
        if !now.same_stat(expected) {
            return Err(ApplyError::Stale(from.clone()));
        }
        self.rename(from, &entry.path)?;
        self.set_metadata(entry, xattrs, expected.hash.or(entry.hash))
    }

    /// Renames a file, link or directory within the root.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), ApplyError> {
        let src = self.safe_path(from, false)?;
        let dst = self.safe_path(to, true)?;
        self.keep_replaced(&dst, to)?;
        fs::rename(&src, &dst).map_err(io_error(format!("cannot rename {from} to {to}")))?;
        self.forget_checked(from);
        self.forget_checked(to);
        Ok(())
    }

    /// Deletes a file, link or empty directory (a file or link goes into
    /// the backup, when there is one). Gone already is success.
    pub fn delete(&self, entry: &Entry) -> Result<(), ApplyError> {
        let abs = self.safe_path(&entry.path, false)?;
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(format!("cannot delete {}", entry.path))(e)),
        };
        if !meta.is_dir() && self.move_to_backup(&entry.path)? {
            return Ok(());
        }
        let result = if meta.is_dir() {
            self.forget_checked(&entry.path);
            fs::remove_dir(&abs)
        } else {
            fs::remove_file(&abs)
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                Err(ApplyError::NotEmpty(entry.path.clone()))
            }
            Err(e) => Err(io_error(format!("cannot delete {}", entry.path))(e)),
        }
    }

    /// Creates a directory (owner-only until its metadata is set, after its
    /// contents). An existing directory is fine.
    pub fn mkdir(&self, entry: &Entry) -> Result<(), ApplyError> {
        let abs = self.safe_path(&entry.path, true)?;
        match fs::DirBuilder::new().mode(0o700).create(&abs) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&abs)
                    .map_err(io_error(format!("cannot inspect {}", entry.path)))?;
                if meta.is_dir() {
                    Ok(())
                } else {
                    Err(ApplyError::NotADirectory(entry.path.clone()))
                }
            }
            Err(e) => Err(io_error(format!("cannot create directory {}", entry.path))(
                e,
            )),
        }
    }

    /// Creates (or replaces) a symlink, atomically.
    pub fn symlink(&self, entry: &Entry, xattrs: Option<&Xattrs>) -> Result<Entry, ApplyError> {
        let target = entry.link_target.as_deref().unwrap_or_default();
        let tmp = self.temp_path(&entry.path)?;
        let result = (|| {
            symlink(std::ffi::OsStr::from_bytes(target), &tmp)
                .map_err(io_error(format!("cannot create link {}", entry.path)))?;
            self.set_path_metadata(&tmp, entry, xattrs)?;
            self.place(&tmp, &entry.path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.stat(&entry.path, None)
    }

    /// Makes `entry.path` another name of the file at `to` (`-H`), replacing
    /// whatever file or link stands there, atomically. `to` must hold what
    /// the plan put there: a regular file with `entry`'s size and mtime (the
    /// names of one file share them); anything else is stale.
    pub fn hard_link(&self, to: &RelPath, entry: &Entry) -> Result<Entry, ApplyError> {
        use std::os::unix::fs::MetadataExt;
        let existing = self.safe_path(to, false)?;
        let meta = fs::symlink_metadata(&existing).map_err(|_| ApplyError::Stale(to.clone()))?;
        let as_planned = meta.is_file()
            && meta.size() == entry.size
            && meta.mtime() == entry.mtime.sec
            && meta.mtime_nsec() == i64::from(entry.mtime.nsec);
        if !as_planned {
            return Err(ApplyError::Stale(to.clone()));
        }
        let dest = self.safe_path(&entry.path, true)?;
        let already = fs::symlink_metadata(&dest)
            .is_ok_and(|now| now.dev() == meta.dev() && now.ino() == meta.ino());
        if !already {
            // rename(2) between two names of one file does nothing and
            // leaves both: the temporary name is made only when needed.
            let tmp = self.temp_path(&entry.path)?;
            fs::hard_link(&existing, &tmp)
                .map_err(io_error(format!("cannot link {} to {to}", entry.path)))?;
            if let Err(e) = self.place(&tmp, &entry.path) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        self.stat(&entry.path, entry.hash)
    }

    /// Gives an existing path `entry`'s metadata.
    pub fn set_metadata(
        &self,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        hash: Option<Hash>,
    ) -> Result<Entry, ApplyError> {
        let abs = self.safe_path(&entry.path, false)?;
        self.set_path_metadata(&abs, entry, xattrs)?;
        self.stat(&entry.path, hash)
    }

    fn place(&self, tmp: &Path, path: &RelPath) -> Result<(), ApplyError> {
        let dest = path.under(&self.root);
        self.keep_replaced(&dest, path)?;
        fs::rename(tmp, &dest).map_err(io_error(format!("cannot move {path} into place")))
    }

    fn set_file_metadata(
        &self,
        file: &File,
        path: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> Result<(), ApplyError> {
        let what = || format!("cannot set metadata of {}", entry.path);
        self.set_owner(path, entry, false)?;
        if let Some(pairs) = xattrs {
            set_xattrs(path, pairs, false, self.preserve).map_err(io_error(what()))?;
        }
        file.set_permissions(fs::Permissions::from_mode(entry.mode))
            .map_err(io_error(what()))?;
        filetime::set_file_handle_times(file, None, Some(mtime_of(entry))).map_err(io_error(what()))
    }

    fn set_path_metadata(
        &self,
        path: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> Result<(), ApplyError> {
        let what = || format!("cannot set metadata of {}", entry.path);
        let is_link = entry.kind == Kind::Symlink;
        self.set_owner(path, entry, is_link)?;
        if let Some(pairs) = xattrs {
            set_xattrs(path, pairs, is_link, self.preserve).map_err(io_error(what()))?;
        }
        if is_link {
            filetime::set_symlink_file_times(path, FileTime::now(), mtime_of(entry))
                .map_err(io_error(what()))
        } else {
            fs::set_permissions(path, fs::Permissions::from_mode(entry.mode))
                .map_err(io_error(what()))?;
            filetime::set_file_mtime(path, mtime_of(entry)).map_err(io_error(what()))
        }
    }

    fn set_owner(&self, path: &Path, entry: &Entry, _is_link: bool) -> Result<(), ApplyError> {
        if !self.preserve.owner && !self.preserve.group {
            return Ok(());
        }
        let uid = self.preserve.owner.then_some(entry.uid);
        let gid = self.preserve.group.then_some(entry.gid);
        std::os::unix::fs::lchown(path, uid, gid)
            .map_err(io_error(format!("cannot set owner of {}", entry.path)))
    }
}

/// A file being received: written under a temporary name, hashed as it
/// grows, placed under its real name only by [`IncomingFile::finish`].
/// Dropped unfinished, it removes its temporary file.
pub struct IncomingFile<'a> {
    tree: &'a LocalTree,
    entry: Entry,
    tmp: PathBuf,
    file: Option<io::BufWriter<File>>,
    basis: Option<File>,
    hasher: blake3::Hasher,
    literal_bytes: u64,
}

impl IncomingFile<'_> {
    pub fn path(&self) -> &RelPath {
        &self.entry.path
    }

    /// Appends data that travelled from the source.
    pub fn literal(&mut self, data: &[u8]) -> Result<(), ApplyError> {
        self.append(data)?;
        self.literal_bytes += data.len() as u64;
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> Result<(), ApplyError> {
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(data)
            .map_err(io_error(format!("cannot write {}", self.entry.path)))?;
        self.hasher.update(data);
        Ok(())
    }

    /// Copies a range of the file the target held before (the delta basis).
    pub fn copy(&mut self, offset: u64, len: u64) -> Result<(), ApplyError> {
        use std::os::unix::fs::FileExt;
        let path = self.entry.path.clone();
        let Some(basis) = self.basis.take() else {
            return Err(ApplyError::Verify(format!(
                "{path}: the sender referred to a previous version that was not offered"
            )));
        };
        // A run of blocks may be long: copy it a chunk at a time.
        let chunk = crate::delta::LITERAL_CHUNK as u64;
        let mut buf = vec![0u8; len.min(chunk) as usize];
        let mut done = 0u64;
        let mut result = Ok(());
        while done < len {
            let n = (len - done).min(chunk) as usize;
            result = basis
                .read_exact_at(&mut buf[..n], offset + done)
                .map_err(io_error(format!(
                    "cannot read the previous version of {path}"
                )))
                .and_then(|()| self.append(&buf[..n]));
            if result.is_err() {
                break;
            }
            done += n as u64;
        }
        self.basis = Some(basis);
        result
    }

    /// The hash of what was written so far.
    pub fn hash(&self) -> Hash {
        *self.hasher.finalize().as_bytes()
    }

    /// Checks the content against `expected`, sets the metadata, and renames
    /// the file into place. Returns the new entry and the bytes written.
    pub fn finish(
        mut self,
        expected: &Hash,
        xattrs: Option<&Xattrs>,
    ) -> Result<(Entry, u64), ApplyError> {
        let hash = self.hash();
        if hash != *expected {
            return Err(ApplyError::Verify(format!(
                "{}: content hash does not match the sender's; not installed",
                self.entry.path
            )));
        }
        let writer = self.file.take().expect("open until finished");
        let file = writer
            .into_inner()
            .map_err(|e| io_error(format!("cannot write {}", self.entry.path))(e.into_error()))?;
        self.tree
            .set_file_metadata(&file, &self.tmp, &self.entry, xattrs)?;
        drop(file);
        self.tree.place(&self.tmp, &self.entry.path)?;
        self.tmp = PathBuf::new();
        let entry = self.tree.stat(&self.entry.path, Some(hash))?;
        Ok((entry, self.literal_bytes))
    }
}

impl Drop for IncomingFile<'_> {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn mtime_of(entry: &Entry) -> FileTime {
    FileTime::from_unix_time(entry.mtime.sec, entry.mtime.nsec)
}

/// Gives `path` exactly the source's attributes among the names `preserve`
/// carries; names it does not carry are left as they are (`-A` alone never
/// touches other extended attributes, `--xattrs` alone never an ACL).
fn set_xattrs(path: &Path, pairs: &Xattrs, is_link: bool, preserve: Preserve) -> io::Result<()> {
    use std::ffi::OsStr;
    let pairs: Vec<&(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .filter(|(name, _)| preserve.carries_xattr(name))
        .collect();
    let wanted: HashSet<&[u8]> = pairs.iter().map(|(n, _)| n.as_slice()).collect();
    let existing: Vec<_> = if is_link {
        xattr::list(path)?.collect()
    } else {
        xattr::list_deref(path)?.collect()
    };
    for name in existing {
        if preserve.carries_xattr(name.as_bytes()) && !wanted.contains(name.as_bytes()) {
            if is_link {
                xattr::remove(path, &name)?;
            } else {
                xattr::remove_deref(path, &name)?;
            }
        }
    }
    for (name, value) in pairs {
        let name = OsStr::from_bytes(name);
        if is_link {
            xattr::set(path, name, value)?;
        } else {
            xattr::set_deref(path, name, value)?;
        }
    }
    Ok(())
}

/// The hash the scanner computes over a path's extended attributes.
pub fn xattr_pairs_hash(pairs: &Xattrs) -> Hash {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in pairs {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    *hasher.finalize().as_bytes()
}

/// Removes temporary files left in `paths` by processes that are gone.
pub fn remove_stale_temps(paths: &[PathBuf]) {
    for path in paths {
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let rest = &name[TEMP_PREFIX.len().min(name.len())..];
        let pid: Option<i32> = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse().ok());
        let alive = match pid {
            // SAFETY: kill with signal 0 only checks that the process exists.
            Some(pid) if pid > 0 => unsafe {
                libc::kill(pid, 0) == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            },
            _ => false,
        };
        if !alive {
            let _ = fs::remove_file(path);
        }
    }
}
