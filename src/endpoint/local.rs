//! A root on this machine: scanned with [`crate::scan`], changed with
//! [`crate::apply`], remembered with [`crate::state`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use rayon::prelude::*;

use super::{
    Applied, Done, Endpoint, EndpointError, FileJob, FileSink, FileWriter, OpFailure, ReportSink,
    Role, RunEnd, SessionRequest, SourceEnd, WatchReport, WatchTiming,
};
use crate::apply::{remove_stale_temps, ApplyError, IncomingFile, LocalTree, Xattrs};
use crate::backup::{BackupDir, RunBackup};
use crate::changes::{
    covers, detect_renames, diff_dirty, diff_stream, ChangeSet, DiffOptions, SizesWorthHashing,
    SnapshotRows,
};
use crate::delta::{delta, signature, DeltaOp, Signature, LITERAL_CHUNK};
use crate::filter::STATE_DIR_NAME;
use crate::lineage::Edge;
use crate::log::SessionLog;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::plan::Op;
use crate::rate_limit::RateLimit;
use crate::scan::{
    hash_file, read_xattrs, scan_root, DiskTree, LinkMode, ScanOptions, ScanReport, TreeNow,
};
use crate::state::{
    root_id, RootState, SessionDb, SessionFacts, SessionLock, SnapshotUpdate, StateError,
};
use crate::watch::Watch;

pub struct LocalEndpoint {
    root: PathBuf,
    state_dir: PathBuf,
    tree: LocalTree,
    session: Mutex<Option<OpenSession>>,
    /// The paths this run's scan found changed, sorted, each as it was found
    /// (`None`: gone). Every other path is as its snapshot row records it
    /// (the scan checked), so the rest of the tree is never held: lookups
    /// ask the snapshot.
    changed: RwLock<Vec<(RelPath, Option<Entry>)>>,
    /// Entries `find_content` offered as holding some content: what a
    /// `RenameContent` expects to find there.
    offered: Mutex<HashMap<RelPath, Entry>>,
    /// `--links follow`: files are read, and re-checked, through links.
    follow_links: AtomicBool,
    /// Set when the endpoint goes: its watch thread (continuous mode) ends.
    unwatch: Arc<AtomicBool>,
    root_id: Mutex<Option<String>>,
    /// `--log-file`: where this side's session log goes instead of the
    /// state directory.
    log_file: Option<PathBuf>,
    /// `--bwlimit`, as the open session asked: paces the file data this
    /// root sends.
    pace: Mutex<Option<Arc<RateLimit>>>,
}

struct OpenSession {
    /// What this open made (the root, the state directory), as long as
    /// no run has started: taken away again when the session closes, so a
    /// first run refused after opening (`--max-delete`, a loop) or failing
    /// before its plan leaves no trace.
    made: Option<Made>,
    request: SessionRequest,
    db: Option<SessionDb>,
    _lock: Option<SessionLock>,
    /// The root does not exist (a target in a dry run): it scans as empty.
    missing_root: bool,
    /// `-x` in a dry run: the snapshot is ignored rather than dropped.
    ignore_snapshot: bool,
    forgotten: Vec<RelPath>,
    filters_line: String,
    /// What the scan compared with, once it has: which snapshot rows it
    /// covered, and whether there were any.
    scanned: Option<ScannedWith>,
    /// The sizes of the snapshot's files with known content (perhaps a few
    /// more), kept from the full scan and the commits since, so that a scan
    /// of dirty paths hashes what a full scan would without reading every row.
    sizes: Option<SizesWorthHashing>,
    /// This side's session log (none in a dry run).
    log: Option<SessionLog>,
    /// Where this root keeps what a run deletes or replaces on it
    /// (`--backup-dir`, on a root that receives).
    backup: Option<BackupDir>,
    /// Backup directories inside the root this session ever used: never
    /// synced (recorded in `meta` as `backup_dirs`).
    backup_dirs: Vec<RelPath>,
}

/// What an open made.
struct Made {
    /// Directories, top first (the state directory last, when made).
    dirs: Vec<PathBuf>,
    /// The session's files that were not there before.
    files: Vec<PathBuf>,
    state_dir: PathBuf,
    /// The database `-x` set aside, and its place: put back.
    aside: Option<(PathBuf, PathBuf)>,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        let Some(made) = self.made.take() else {
            return;
        };
        // Closed first: the database, the lock, the log.
        self.db.take();
        self._lock.take();
        self.log.take();
        for file in &made.files {
            let _ = fs::remove_file(file);
        }
        let _ = fs::remove_dir(made.state_dir.join("logs"));
        if let Some((aside, place)) = &made.aside {
            let _ = fs::rename(aside, place);
        }
        // What every session of the root shares goes only when no other
        // session has come meanwhile.
        let shared = ["id", "lineage", "lineage.lock"];
        let others = fs::read_dir(&made.state_dir).map_or(true, |listing| {
            listing
                .flatten()
                .any(|item| !shared.iter().any(|name| item.file_name() == *name))
        });
        if !others && made.dirs.last() == Some(&made.state_dir) {
            for name in shared {
                let _ = fs::remove_file(made.state_dir.join(name));
            }
        }
        for dir in made.dirs.iter().rev() {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

struct ScannedWith {
    options: DiffOptions,
    has_rows: bool,
}

impl OpenSession {
    /// The snapshot the scan compared with, when it had rows.
    fn snapshot(&self) -> Option<(&SessionDb, &ScannedWith)> {
        match (&self.db, &self.scanned) {
            (Some(db), Some(scanned)) if !self.ignore_snapshot && scanned.has_rows => {
                Some((db, scanned))
            }
            _ => None,
        }
    }

    /// The entry at `path` as of the scan: as found where it changed, else
    /// as its snapshot row records it (the scan found it so), if the scan
    /// covered that row.
    fn as_scanned(
        &self,
        changed: &[(RelPath, Option<Entry>)],
        path: &RelPath,
    ) -> Result<Option<Entry>, EndpointError> {
        if let Ok(i) = changed.binary_search_by(|(p, _)| p.cmp(path)) {
            return Ok(changed[i].1.clone());
        }
        let Some((db, scanned)) = self.snapshot() else {
            return Ok(None);
        };
        Ok(db.entry(path)?.filter(|row| scanned.covers(row)))
    }
}

impl ScannedWith {
    /// The row is one the scan compared (not one the filters or link mode
    /// now leave out).
    fn covers(&self, row: &Entry) -> bool {
        covers(row, &self.options)
    }
}

/// This session's snapshot as a scan of dirty paths reads it (none when
/// there is no database or `-x` ignores it in a dry run).
struct SnapshotView<'a>(Option<&'a SessionDb>);

impl SnapshotRows for SnapshotView<'_> {
    type Error = StateError;

    fn row(&self, path: &RelPath) -> Result<Option<Entry>, StateError> {
        self.0.map_or(Ok(None), |db| db.entry(path))
    }

    fn rows_under(&self, dir: &RelPath) -> Result<Vec<Entry>, StateError> {
        self.0.map_or(Ok(Vec::new()), |db| db.entries_under(dir))
    }
}

impl LocalEndpoint {
    /// `state_dir` defaults to `ROOT/.snapsync`.
    pub fn new(root: PathBuf, state_dir: Option<PathBuf>, preserve: Preserve) -> Self {
        let state_dir = state_dir.unwrap_or_else(|| root.join(STATE_DIR_NAME));
        LocalEndpoint {
            tree: LocalTree::new(root.clone(), preserve),
            root,
            state_dir,
            session: Mutex::new(None),
            changed: RwLock::new(Vec::new()),
            offered: Mutex::new(HashMap::new()),
            follow_links: AtomicBool::new(false),
            unwatch: Arc::new(AtomicBool::new(false)),
            root_id: Mutex::new(None),
            log_file: None,
            pace: Mutex::new(None),
        }
    }

    /// Sends this side's session log to `path` instead of
    /// `<state dir>/logs/<session>.log`.
    pub fn with_log_file(mut self, path: Option<PathBuf>) -> Self {
        self.log_file = path;
        self
    }

    /// Appends a line to the session log, when there is one.
    fn log(&self, text: impl FnOnce() -> String) {
        let _ = self.with_session(|s| {
            if let Some(log) = &s.log {
                log.line(&text());
            }
        });
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lets go of the open session: its database, lock and log are closed
    /// (a one-time run's far end, after its last `Finish`).
    pub fn end_session(&self) {
        self.session.lock().unwrap().take();
    }

    fn with_session<T>(&self, f: impl FnOnce(&mut OpenSession) -> T) -> Result<T, EndpointError> {
        let mut guard = self.session.lock().unwrap();
        match guard.as_mut() {
            Some(session) => Ok(f(session)),
            None => Err(EndpointError::Refused(format!(
                "{}: no session is open",
                self.describe()
            ))),
        }
    }

    /// The state directory, relative to the root, when it lives inside it
    /// somewhere other than the default place (then it must not be synced).
    /// The state directory no longer holds the root id the session opened
    /// with: it was removed, or the root was replaced under a running
    /// session (a disk unmounted, another mounted).
    fn state_gone(&self) -> bool {
        let Some(id) = self.root_id() else {
            return false;
        };
        fs::read_to_string(self.state_dir.join("id")).map_or(true, |found| found.trim() != id)
    }

    /// Whether the root holds anything a scan would hand out (what cannot
    /// be told counts as held).
    fn holds_an_entry(&self, tree: &mut DiskTree) -> bool {
        let Ok(listing) = fs::read_dir(&self.root) else {
            return true;
        };
        listing.flatten().any(|item| {
            let name = item.file_name();
            match RelPath::new(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str())) {
                Ok(path) => !matches!(tree.entry(&path), crate::scan::Found::Absent),
                Err(_) => true,
            }
        })
    }

    fn state_dir_inside_root(&self) -> Option<RelPath> {
        let rel = self.state_dir.strip_prefix(&self.root).ok()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str());
        RelPath::new(bytes).ok().filter(|p| !p.is_root())
    }

    fn hash_entries(&self, entries: Vec<&mut Entry>) {
        entries.into_par_iter().for_each(|entry| {
            entry.hash = hash_file(&entry.path.under(&self.root)).ok();
        });
    }

    fn apply_one(&self, op: &Op, xattrs: Option<&Xattrs>) -> Result<Applied, OpFailure> {
        let done = |update: Option<SnapshotUpdate>, bytes: u64| Applied {
            updates: update.into_iter().collect(),
            bytes,
        };
        let tree = &self.tree;
        match op {
            Op::Rename { from, to } => tree
                .rename(from, to)
                .map(|()| {
                    done(
                        Some(SnapshotUpdate::Move {
                            from: from.clone(),
                            to: to.clone(),
                        }),
                        0,
                    )
                })
                .map_err(|e| Self::failure(to, e)),
            Op::RenameContent { from, entry } => {
                let expected = self.offered_entry(from);
                let Some(expected) = expected else {
                    return Err(Self::failure(&entry.path, ApplyError::Stale(from.clone())));
                };
                let new = tree
                    .rename_content(from, &expected, entry, xattrs)
                    .map_err(|e| Self::failure(&entry.path, e))?;
                Ok(Applied {
                    updates: vec![
                        SnapshotUpdate::Remove(from.clone()),
                        SnapshotUpdate::Upsert(new),
                    ],
                    bytes: 0,
                })
            }
            Op::DeleteTree { entry, within } => {
                // With a backup, a directory that holds nothing the plan
                // does not know of moves there whole.
                if tree.backs_up() && holds_only(&self.root, entry, within) {
                    return tree
                        .move_to_backup(&entry.path)
                        .map(|_| done(Some(SnapshotUpdate::Remove(entry.path.clone())), 0))
                        .map_err(|e| Self::failure(&entry.path, e));
                }
                // Deepest first; a path already gone is fine. A directory
                // that still holds entries the session does not sync stays
                // (and so does every directory above it), but the rest of
                // the tree still goes: the source's rows are settled either
                // way, so a sibling left here would never be looked at
                // again. Any other failure ends it (the rest stays for the
                // next run). Each path that went leaves the snapshot; when
                // the whole tree went, its one row removal covers them all.
                let mut order: Vec<&Entry> = within.iter().chain([entry]).collect();
                order.sort_by_key(|e| std::cmp::Reverse(e.path.depth()));
                let mut updates = Vec::new();
                for inner in order {
                    match tree.delete(inner) {
                        Ok(()) => updates.push(SnapshotUpdate::Remove(inner.path.clone())),
                        Err(ApplyError::NotEmpty(_)) => {}
                        Err(e) => return Err(Self::failure(&inner.path, e)),
                    }
                }
                if matches!(updates.last(), Some(SnapshotUpdate::Remove(top)) if top == &entry.path)
                {
                    updates = vec![SnapshotUpdate::Remove(entry.path.clone())];
                }
                Ok(Applied { updates, bytes: 0 })
            }
            Op::Delete { entry } => tree
                .delete(entry)
                .map(|()| done(Some(SnapshotUpdate::Remove(entry.path.clone())), 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::Mkdir { entry } => tree
                .mkdir(entry)
                .map(|()| done(None, 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::LocalCopy { from, entry } => tree
                .local_copy(from, entry, xattrs)
                .map(|(new, bytes)| done(Some(SnapshotUpdate::Upsert(new)), bytes))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::Symlink { entry } => tree
                .symlink(entry, xattrs)
                .map(|new| done(Some(SnapshotUpdate::Upsert(new)), 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::HardLink { to, entry } => tree
                .hard_link(to, entry)
                .map(|new| done(Some(SnapshotUpdate::Upsert(new)), 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::SetMeta { entry, .. } => {
                let hash = self
                    .scanned_entry(&entry.path)
                    .ok()
                    .flatten()
                    .and_then(|e| e.hash)
                    .or(entry.hash);
                tree.set_metadata(entry, xattrs, hash)
                    .map(|new| done(Some(SnapshotUpdate::Upsert(new)), 0))
                    .map_err(|e| Self::failure(&entry.path, e))
            }
            Op::Transfer { entry } => Err(OpFailure {
                path: entry.path.clone(),
                message: "a transfer needs data from the source".into(),
                stale: false,
                warning_only: false,
            }),
            Op::Record | Op::Keep => Ok(done(None, 0)),
        }
    }

    /// Reads one job's file into `writer` (as a delta when the job has a
    /// signature) and says how it ended: complete with the hash of all that
    /// was read, or failed when the file could not be read or changed meanwhile.
    fn stream_file(&self, job: &FileJob, writer: &mut dyn FileWriter, xattrs: bool) -> SourceEnd {
        let entry = &job.entry;
        let path = entry.path.under(&self.root);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => return SourceEnd::Failed(format!("cannot read {}: {e}", entry.path)),
        };
        // Only literal data is paced: a copy from the target's older
        // version sends no file data.
        let pace = self.pace.lock().unwrap().clone();
        let paced = |bytes: usize| {
            if let Some(pace) = &pace {
                pace.take(bytes);
            }
        };
        let sent = match &job.basis {
            Some(sig) => delta(&mut file, sig, &mut |op| match op {
                DeltaOp::Literal(data) => {
                    paced(data.len());
                    writer.literal(data)
                }
                DeltaOp::Copy { offset, len } => writer.copy(offset, len),
            }),
            None => copy_literal(&mut file, &mut |data| {
                paced(data.len());
                writer.literal(data)
            }),
        };
        let hash = match sent {
            Ok(hash) => hash,
            Err(e) => return SourceEnd::Failed(format!("cannot send {}: {e}", entry.path)),
        };
        let changed = || {
            SourceEnd::Failed(format!(
                "{} changed while it was being copied; it will be synced on the next run",
                entry.path
            ))
        };
        if entry.hash.is_some_and(|expected| expected != hash) {
            return changed();
        }
        match self.unchanged_since_scan(entry) {
            Ok(true) => {}
            Ok(false) => return changed(),
            Err(e) => {
                return SourceEnd::Failed(format!(
                    "{} vanished while being copied: {e}",
                    entry.path
                ))
            }
        }
        let xattrs = if xattrs {
            read_xattrs(&path, entry.kind, self.tree.preserve()).ok()
        } else {
            None
        };
        SourceEnd::Complete { hash, xattrs }
    }

    /// True when the file still has the size, mtime and inode it was scanned with.
    fn unchanged_since_scan(&self, entry: &Entry) -> io::Result<bool> {
        let path = entry.path.under(&self.root);
        let meta = if self.follow_links.load(Ordering::Relaxed) {
            fs::metadata(path)?
        } else {
            fs::symlink_metadata(path)?
        };
        Ok(meta.size() == entry.size
            && meta.mtime() == entry.mtime.sec
            && meta.mtime_nsec() as u32 == entry.mtime.nsec
            && meta.ino() == entry.ino)
    }

    /// The entry at `path` as of the scan.
    fn scanned_entry(&self, path: &RelPath) -> Result<Option<Entry>, EndpointError> {
        let changed = self.changed.read().unwrap();
        self.with_session(|s| s.as_scanned(&changed, path))?
    }

    /// The entry at `path` that the plan was given as holding some content:
    /// changed, or offered by `find_content`. Deliberately not the snapshot,
    /// which this run's commits may have moved on since.
    fn offered_entry(&self, path: &RelPath) -> Option<Entry> {
        let changed = self.changed.read().unwrap();
        match changed.binary_search_by(|(p, _)| p.cmp(path)) {
            Ok(i) => changed[i].1.clone(),
            Err(_) => self.offered.lock().unwrap().get(path).cloned(),
        }
    }

    /// The options this root scans with: a state directory inside the root
    /// is never synced; with `--links follow`, files are read (and
    /// re-checked) through links.
    fn scan_setup(&self, options: &DiffOptions) -> DiffOptions {
        let mut options = options.clone();
        self.follow_links
            .store(options.links == LinkMode::Follow, Ordering::Relaxed);
        if let Some(inside) = self.state_dir_inside_root() {
            options.filters.exclude_fixed(inside);
        }
        // A scan starts a run: what the run deletes or replaces goes to a
        // backup directory named after this moment.
        let backup = self
            .with_session(|s| {
                for dir in &s.backup_dirs {
                    options.filters.exclude_fixed(dir.clone());
                }
                s.backup.clone()
            })
            .ok()
            .flatten();
        self.tree
            .set_backup(backup.map(|dir| RunBackup::new(dir, crate::state::compact_utc_now())));
        options
    }

    /// The directories this root never syncs: a state directory inside it
    /// (elsewhere than `.snapsync`) and the session's backup directories.
    fn never_synced(&self) -> Vec<RelPath> {
        let mut dirs: Vec<RelPath> = self.state_dir_inside_root().into_iter().collect();
        if let Ok(backups) = self.with_session(|s| s.backup_dirs.clone()) {
            dirs.extend(backups);
        }
        dirs
    }

    /// Completes a scan's change set as every scan does (hashes the new and
    /// changed files worth hashing and the racy ones, pairs renames) and
    /// keeps it: later `lookup` and `find_content` answer as of this scan.
    /// `worth`: the sizes of the snapshot's files with known content.
    fn settle_scan(
        &self,
        mut set: ChangeSet,
        report: ScanReport,
        worth: SizesWorthHashing,
        options: DiffOptions,
        has_rows: bool,
    ) -> Result<ChangeSet, EndpointError> {
        let dry_run = self.with_session(|s| s.request.dry_run)?;
        if !dry_run {
            remove_stale_temps(&report.temps);
        }
        if !options.checksum {
            self.hash_entries(
                set.changes
                    .iter_mut()
                    .filter_map(|c| c.after.as_mut())
                    .filter(|e| e.kind == Kind::File && e.hash.is_none() && worth.contains(e.size))
                    .collect(),
            );
        }
        // A file whose recorded stat could not vouch for its content is
        // compared by content.
        {
            let racy: Vec<&mut Entry> = set
                .changes
                .iter_mut()
                .filter(|c| c.before.as_ref().is_some_and(|b| b.racy))
                .filter_map(|c| c.after.as_mut())
                .filter(|e| e.kind == Kind::File && e.hash.is_none())
                .collect();
            self.hash_entries(racy);
        }
        detect_renames(&mut set);
        *self.changed.write().unwrap() = set
            .changes
            .iter()
            .map(|c| (c.path.clone(), c.after.clone()))
            .collect();
        self.offered.lock().unwrap().clear();
        let filters_line = options.filters.describe();
        let forgotten = set.forgotten.clone();
        self.with_session(|s| {
            s.forgotten = forgotten;
            s.filters_line = filters_line;
            s.scanned = Some(ScannedWith { options, has_rows });
            s.sizes = Some(worth);
        })?;
        set.warnings.extend(report.warnings);
        Ok(set)
    }

    /// This root's backup directory (`--backup-dir`, where this root
    /// receives) and every backup directory inside the root the session
    /// ever used, which it never syncs: recorded in `meta` before any run
    /// can put a backup there, so a later run without the option, or
    /// killed, still leaves them alone.
    fn backup_setup(
        &self,
        request: &SessionRequest,
        db: Option<&SessionDb>,
    ) -> Result<(Option<BackupDir>, Vec<RelPath>), EndpointError> {
        let given = match &request.backup_dir {
            Some(text) => Some(
                BackupDir::parse(text)
                    .and_then(|dir| dir.seen_from(&self.root))
                    .map_err(|e| EndpointError::Refused(format!("{}: {e}", self.describe())))?,
            ),
            None => None,
        };
        let recorded = match db {
            Some(db) => db.fact(BACKUP_DIRS_FACT)?.unwrap_or_default(),
            None => String::new(),
        };
        let mut dirs: Vec<RelPath> = recorded
            .lines()
            .filter_map(|line| RelPath::new(&crate::model::unescape_bytes(line.as_bytes())).ok())
            .filter(|dir| !dir.is_root())
            .collect();
        if let Some(BackupDir::InRoot(dir)) = &given {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
                if let (Some(db), false) = (db, request.dry_run) {
                    let lines: Vec<String> = dirs.iter().map(ToString::to_string).collect();
                    db.set_fact(BACKUP_DIRS_FACT, &lines.join("\n"))?;
                }
            }
        }
        let receives = matches!(request.role, Role::Target | Role::Both);
        Ok((given.filter(|_| receives), dirs))
    }

    /// Removes one file the target confirmed, if it is still the version
    /// that was sent; else says why it stays.
    fn remove_sent(&self, entry: &Entry) -> Result<(), String> {
        let kept = |why: String| Err(format!("{why}; kept on the source"));
        let abs = match self.tree.checked_path(&entry.path) {
            Ok(abs) => abs,
            Err(e) => return kept(e.to_string()),
        };
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            // Gone already: its copy is on the target, nothing to keep.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return kept(format!("cannot inspect {}: {e}", entry.path)),
        };
        let same_kind = match entry.kind {
            Kind::File => meta.is_file(),
            Kind::Symlink => meta.file_type().is_symlink(),
            Kind::Dir => false,
        };
        if !same_kind {
            return kept(format!(
                "{} is not the {} that was sent (directories always stay)",
                entry.path,
                entry.kind.as_str()
            ));
        }
        let same_link = entry.kind != Kind::Symlink
            || fs::read_link(&abs).is_ok_and(|target| {
                Some(target.as_os_str().as_bytes()) == entry.link_target.as_deref()
            });
        // Entries record a size for files only.
        let same_size = entry.kind != Kind::File || meta.size() == entry.size;
        let same_version = same_size
            && meta.mtime() == entry.mtime.sec
            && meta.mtime_nsec() as u32 == entry.mtime.nsec
            && meta.ino() == entry.ino
            && same_link;
        // A file written within the scan's racy window may have been
        // written again since without a change to its stat: its content
        // must still be what the target holds.
        let same_content = || {
            entry.kind != Kind::File
                || !entry.racy
                || entry
                    .hash
                    .is_some_and(|sent| hash_file(&abs).ok() == Some(sent))
        };
        if !same_version || !same_content() {
            return kept(format!(
                "{} changed since it was sent; the next run sends it again",
                entry.path
            ));
        }
        match fs::remove_file(&abs) {
            Ok(()) => {
                self.log(|| format!("removed source file {}", entry.path));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => kept(format!("cannot remove {}: {e}", entry.path)),
        }
    }

    /// `-H`, scanning dirty paths: the other names the snapshot records
    /// for the files now at `paths` that have several. A write through one
    /// name is reported for that name only, yet changes them all.
    fn other_names(&self, paths: &[RelPath], db: &SessionDb) -> Result<Vec<RelPath>, StateError> {
        let follow = self.follow_links.load(Ordering::Relaxed);
        let inodes: HashSet<(u64, u64)> = paths
            .iter()
            .filter_map(|path| {
                let abs = path.under(&self.root);
                let meta = if follow {
                    fs::metadata(abs)
                } else {
                    fs::symlink_metadata(abs)
                };
                meta.ok()
                    .filter(|m| m.is_file() && m.nlink() > 1)
                    .map(|m| (m.dev(), m.ino()))
            })
            .collect();
        if inodes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(db
            .files_with_inodes(&inodes)?
            .into_iter()
            .map(|row| row.path)
            .collect())
    }

    /// What the guards need to know of this root before the session opens
    /// on it, found without writing anything: no root made, no lock taken,
    /// no state directory, id or database created. (The database, when
    /// there is one, is opened to be read and closed again.)
    fn probe(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError> {
        let root = match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => RootState::Dir,
            Ok(_) => RootState::NotDir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RootState::Missing,
            Err(e) => {
                return Err(EndpointError::Root(format!(
                    "cannot read {}: {e}",
                    self.describe()
                )))
            }
        };
        let root_id = fs::read_to_string(self.state_dir.join("id"))
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        let has_snapshot = SessionDb::path_for(&self.state_dir, &request.session).exists();
        // Opened writable (never created): the last connection to close
        // removes the write-ahead files, where a reader would leave them.
        // With -x the snapshot goes: whatever it holds (corrupt, even) is
        // not asked.
        let recorded = if has_snapshot && !request.reset {
            SessionDb::open_existing(&self.state_dir, &request.session, true)?
                .map(|db| db.facts())
                .transpose()?
        } else {
            None
        };
        let facts = SessionFacts {
            root,
            root_id,
            has_snapshot,
            ..recorded.unwrap_or_default()
        };
        // Said first, by the root that holds the record, as when opening.
        refuse_another_direction(&facts, request)?;
        Ok(facts)
    }

    fn failure(path: &RelPath, error: ApplyError) -> OpFailure {
        OpFailure {
            path: path.clone(),
            stale: matches!(error, ApplyError::Stale(_)),
            warning_only: matches!(error, ApplyError::NotEmpty(_)),
            message: error.to_string(),
        }
    }
}

impl Endpoint for LocalEndpoint {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn root_id(&self) -> Option<String> {
        self.root_id.lock().unwrap().clone()
    }

    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError> {
        if request.probe {
            return self.probe(request);
        }
        let mut missing_root = false;
        // Directories this open makes, for a run that never starts to take
        // away again: the root's missing ancestors, top first.
        let mut made_dirs: Vec<PathBuf> = Vec::new();
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(EndpointError::Root(format!(
                    "{} is not a directory; give the directory to sync",
                    self.describe()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && request.role != Role::Source => {
                if request.dry_run {
                    missing_root = true;
                } else {
                    made_dirs = self
                        .root
                        .ancestors()
                        .take_while(|dir| !dir.exists())
                        .map(Path::to_path_buf)
                        .collect();
                    made_dirs.reverse();
                    fs::create_dir_all(&self.root).map_err(|e| {
                        EndpointError::Root(format!(
                            "cannot create target directory {}: {e}",
                            self.describe()
                        ))
                    })?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(EndpointError::Root(format!(
                    "source directory {} does not exist; check the path",
                    self.describe()
                )))
            }
            Err(e) => {
                return Err(EndpointError::Root(format!(
                    "cannot read {}: {e}",
                    self.describe()
                )))
            }
        }
        // Opened again (continuous mode, after reconnecting to the peer):
        // the old hold on the session goes first.
        self.session.lock().unwrap().take();
        let has_state = self.state_dir.is_dir();
        if !has_state && !request.dry_run {
            made_dirs.push(self.state_dir.clone());
        }
        // The session's own files this open may make: the database (with
        // SQLite's companions), the lock, the log.
        let db_path = SessionDb::path_for(&self.state_dir, &request.session);
        let mut own_files: Vec<PathBuf> = ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", db_path.display())))
            .chain([
                self.state_dir.join(format!("{}.lock", request.session)),
                crate::log::default_path(&self.state_dir, &request.session),
            ])
            .filter(|file| !file.exists())
            .collect();
        let mut aside = None;
        let (db, lock) = if request.dry_run && !has_state {
            (None, None)
        } else {
            let lock = SessionLock::acquire(&self.state_dir, &request.session)?;
            if !request.dry_run {
                *self.root_id.lock().unwrap() = Some(root_id(&self.state_dir)?);
            } else if let Ok(id) = fs::read_to_string(self.state_dir.join("id")) {
                *self.root_id.lock().unwrap() = Some(id.trim().to_string());
            }
            let db_exists = SessionDb::path_for(&self.state_dir, &request.session).exists();
            if request.dry_run && !db_exists {
                (None, Some(lock))
            } else {
                // `-x` starts the snapshot afresh, not the backups: the
                // directories holding them stay out of the sync.
                let mut backups = None;
                if request.reset && !request.dry_run {
                    backups = SessionDb::open_existing(&self.state_dir, &request.session, false)
                        .ok()
                        .flatten()
                        .and_then(|old| old.fact(BACKUP_DIRS_FACT).ok().flatten());
                    aside = SessionDb::set_aside(&self.state_dir, &request.session)?;
                    if aside.is_some() {
                        own_files.push(db_path.clone());
                    }
                }
                let db = SessionDb::open_or_make(&self.state_dir, &request.session)?;
                if let Some(lines) = backups {
                    db.set_fact(BACKUP_DIRS_FACT, &lines)?;
                }
                (Some(db), Some(lock))
            }
        };
        let mut facts = match &db {
            Some(db) => db.facts()?,
            None => SessionFacts::default(),
        };
        if has_state {
            facts.lineage = crate::state::read_lineage(&self.state_dir)?;
        }
        facts.root = if missing_root {
            RootState::Missing
        } else {
            RootState::Dir
        };
        facts.root_id = self.root_id();
        facts.has_snapshot = db.is_some();
        if let Some(pid) = lock.as_ref().and_then(|l| l.stale_from.clone()) {
            facts.warnings.push(format!(
                "session `{}` in {} was left locked by process {pid}, which is gone (killed?); taking it over",
                request.session,
                self.describe()
            ));
        }
        refuse_another_direction(&facts, request)?;
        let (backup, backup_dirs) = self.backup_setup(request, db.as_ref())?;
        let log = if db.is_some() && !request.dry_run {
            let path = self
                .log_file
                .clone()
                .unwrap_or_else(|| crate::log::default_path(&self.state_dir, &request.session));
            match SessionLog::open(path.clone(), request.log_max, request.log_verbose) {
                Ok(log) => {
                    log.line(&format!(
                        "session `{}` opened: {}, this root ({}) is the {} (process {})",
                        request.session,
                        request.direction,
                        self.describe(),
                        request.role.as_str(),
                        std::process::id()
                    ));
                    Some(log)
                }
                Err(e) => {
                    facts.warnings.push(format!(
                        "cannot open the session log {}: {e}; the run goes on without it",
                        path.display()
                    ));
                    None
                }
            }
        } else {
            None
        };
        *self.pace.lock().unwrap() = request.bwlimit.map(|rate| Arc::new(RateLimit::new(rate)));
        *self.session.lock().unwrap() = Some(OpenSession {
            log,
            request: request.clone(),
            db,
            _lock: lock,
            missing_root,
            ignore_snapshot: request.reset && request.dry_run,
            made: (!request.dry_run).then(|| Made {
                dirs: made_dirs,
                files: own_files,
                state_dir: self.state_dir.clone(),
                aside: aside.map(|aside| (aside, db_path)),
            }),
            forgotten: Vec::new(),
            filters_line: String::new(),
            scanned: None,
            sizes: None,
            backup,
            backup_dirs,
        });
        Ok(facts)
    }

    fn scan(&self, options: &DiffOptions) -> Result<ChangeSet, EndpointError> {
        if self.state_gone() {
            // Nothing to compare with: the driver refuses the run.
            return Ok(ChangeSet {
                state_gone: true,
                ..ChangeSet::default()
            });
        }
        self.log(|| "run started: scanning the whole tree".to_string());
        // Snapshot rows stream in from the database while the tree is walked,
        // both in byte order of path; only what differs is kept.
        let (missing_root, snapshot) = self.with_session(|s| {
            let snapshot = match (&s.db, s.ignore_snapshot) {
                (Some(db), false) => Some(db.stream_entries()),
                _ => None,
            };
            (s.missing_root, snapshot)
        })?;
        let options = self.scan_setup(options);
        let mut worth = SizesWorthHashing::default();
        let mut snapshot_rows = 0u64;
        let mut read_error = None;
        let rows = snapshot
            .iter()
            .flat_map(|rx| rx.iter())
            .map_while(|row| match row {
                Ok(entry) => Some(entry),
                Err(e) => {
                    read_error = Some(e);
                    None
                }
            })
            .inspect(|row| {
                snapshot_rows += 1;
                worth.note(row);
            });
        let (set, report) = if missing_root {
            (
                diff_stream(rows, std::iter::empty(), &options),
                ScanReport::default(),
            )
        } else {
            scan_root(&self.root, &scan_options(&options), |walk| {
                diff_stream(rows, walk, &options)
            })
            .map_err(|e| EndpointError::Root(format!("cannot read {}: {e}", self.describe())))?
        };
        if let Some(error) = read_error {
            return Err(error.into());
        }
        self.settle_scan(set, report, worth, options, snapshot_rows > 0)
    }

    fn scan_dirty(
        &self,
        paths: &[RelPath],
        trees: &[RelPath],
        options: &DiffOptions,
    ) -> Result<ChangeSet, EndpointError> {
        if trees.iter().any(RelPath::is_root) {
            // The whole tree: streamed, as a full scan does, not held.
            return self.scan(options);
        }
        self.log(|| {
            format!(
                "run started: scanning {} changed paths and {} new directories",
                paths.len(),
                trees.len()
            )
        });
        // Point queries on the session's own connection: a handful of rows,
        // not a stream of them all.
        let options = self.scan_setup(options);
        let found = scan_options(&options);
        let (set, report, worth, has_rows) = self.with_session(|s| {
            let db = s.db.as_ref().filter(|_| !s.ignore_snapshot);
            let mut tree = if s.missing_root {
                DiskTree::missing(&self.root, &found)
            } else {
                DiskTree::new(&self.root, &found).map_err(|e| {
                    EndpointError::Root(format!("cannot read {}: {e}", self.describe()))
                })?
            };
            let partners = match db {
                Some(db) if options.preserve.hard_links => self.other_names(paths, db)?,
                _ => Vec::new(),
            };
            let paths: Vec<RelPath> = paths.iter().cloned().chain(partners).collect();
            let mut set = diff_dirty(&paths, trees, &SnapshotView(db), &mut tree, &options)?;
            let worth = match (s.sizes.take(), db) {
                (Some(worth), _) => worth,
                (None, Some(db)) => SizesWorthHashing::from_sizes(db.file_sizes_with_hashes()?),
                (None, None) => SizesWorthHashing::default(),
            };
            let has_rows = db.map(SessionDb::has_entries).transpose()?.unwrap_or(false);
            // Only a deletion can have emptied the root: then one listing
            // of its top says whether anything it syncs is left.
            let deleted = set.changes.iter().any(|c| c.after.is_none());
            set.emptied = has_rows && deleted && !self.holds_an_entry(&mut tree);
            if let Some(db) = db.filter(|_| set.emptied || s.request.count_rows) {
                set.snapshot_rows = Some(db.count_entries()?);
            }
            Ok::<_, EndpointError>((set, tree.finish(), worth, has_rows))
        })??;
        self.settle_scan(set, report, worth, options, has_rows)
    }

    fn lookup(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Entry>, EndpointError> {
        let changed = self.changed.read().unwrap();
        self.with_session(|s| {
            let mut found = HashMap::new();
            for path in paths {
                if let Some(entry) = s.as_scanned(&changed, path)? {
                    found.insert(path.clone(), entry);
                }
            }
            Ok(found)
        })?
    }

    fn hard_links(&self, paths: &[RelPath]) -> Result<Vec<Vec<RelPath>>, EndpointError> {
        let follow = self.follow_links.load(Ordering::Relaxed);
        let changed = self.changed.read().unwrap();
        self.with_session(|s| {
            // Files with other names: those whose link count says so, where
            // the disk still holds the file the scan found. Most files have
            // one name, and then the snapshot is not read at all.
            let mut inodes: HashSet<(u64, u64)> = HashSet::new();
            for path in paths {
                let Some(entry) = s.as_scanned(&changed, path)? else {
                    continue;
                };
                if entry.kind != Kind::File {
                    continue;
                }
                let abs = path.under(&self.root);
                let meta = if follow {
                    fs::metadata(&abs)
                } else {
                    fs::symlink_metadata(&abs)
                };
                if meta.is_ok_and(|m| m.nlink() > 1 && m.dev() == entry.dev && m.ino() == entry.ino)
                {
                    inodes.insert((entry.dev, entry.ino));
                }
            }
            if inodes.is_empty() {
                return Ok(Vec::new());
            }
            // Their names: where the scan found them changed, else as their
            // rows record them (the scan found those so).
            let mut names: HashMap<(u64, u64), Vec<RelPath>> = HashMap::new();
            for (path, now) in changed.iter() {
                if let Some(e) = now.as_ref().filter(|e| e.kind == Kind::File) {
                    if inodes.contains(&(e.dev, e.ino)) {
                        names.entry((e.dev, e.ino)).or_default().push(path.clone());
                    }
                }
            }
            if let Some((db, scanned)) = s.snapshot() {
                for row in db.files_with_inodes(&inodes)? {
                    let is_changed = changed.binary_search_by(|(p, _)| p.cmp(&row.path)).is_ok();
                    if !is_changed && scanned.covers(&row) {
                        names.entry((row.dev, row.ino)).or_default().push(row.path);
                    }
                }
            }
            let mut groups: Vec<Vec<RelPath>> = names
                .into_values()
                .map(|mut group| {
                    group.sort();
                    group.dedup();
                    group
                })
                .filter(|group| group.len() > 1)
                .collect();
            groups.sort();
            Ok(groups)
        })?
    }

    fn find_content(&self, hashes: &[Hash]) -> Result<HashMap<Hash, Vec<RelPath>>, EndpointError> {
        let wanted: HashSet<Hash> = hashes.iter().copied().collect();
        let mut found: HashMap<Hash, Vec<RelPath>> = HashMap::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        let changed = self.changed.read().unwrap();
        let mut offered: Vec<Entry> = changed
            .iter()
            .filter_map(|(_, now)| now.as_ref())
            .filter(|e| e.kind == Kind::File && e.hash.is_some_and(|h| wanted.contains(&h)))
            .cloned()
            .collect();
        // Every other file holds what its row records.
        self.with_session(|s| -> Result<(), EndpointError> {
            let Some((db, scanned)) = s.snapshot() else {
                return Ok(());
            };
            for row in db.files_with_hashes(&wanted)? {
                let is_changed = changed.binary_search_by(|(p, _)| p.cmp(&row.path)).is_ok();
                if !is_changed && scanned.covers(&row) {
                    offered.push(row);
                }
            }
            Ok(())
        })??;
        drop(changed);
        offered.sort_by(|a, b| a.path.cmp(&b.path));
        let mut remembered = self.offered.lock().unwrap();
        for entry in offered {
            if let Some(hash) = entry.hash {
                found.entry(hash).or_default().push(entry.path.clone());
            }
            remembered.insert(entry.path.clone(), entry);
        }
        Ok(found)
    }

    fn watch(&self, timing: WatchTiming, sink: ReportSink) -> Result<(), EndpointError> {
        let root = self.root.clone();
        let never = self.never_synced();
        let ignore = move |path: &RelPath| never.iter().any(|dir| path.starts_with(dir));
        let start = {
            let (root, ignore) = (root.clone(), ignore.clone());
            move || Watch::start(&root, ignore.clone())
        };
        let mut watch = start().map_err(|e| EndpointError::Root(e.to_string()))?;
        let stop = Arc::clone(&self.unwatch);
        let describe = self.describe();
        std::thread::Builder::new()
            .name("snapsync-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let batch = watch.wait(
                        timing.cooloff,
                        timing.max_wait,
                        Duration::from_secs(1),
                        &stop,
                    );
                    if batch.is_empty() {
                        continue;
                    }
                    let rewatch = batch.rewatch;
                    let report = WatchReport {
                        paths: batch.paths.into_iter().collect(),
                        trees: batch.trees.into_iter().collect(),
                        rescan: batch.rescan.map(|why| format!("{describe}: {why}")),
                    };
                    if !sink(report) {
                        return;
                    }
                    if rewatch {
                        // The watch no longer covers the tree: a new one, or
                        // (failing that) the caller's safety rescans only.
                        match start() {
                            Ok(again) => watch = again,
                            Err(e) => {
                                sink(WatchReport {
                                    rescan: Some(format!("{describe}: watching stopped: {e}")),
                                    ..Default::default()
                                });
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| {
                EndpointError::Root(format!(
                    "cannot start a thread: {e}; the system is short of memory or processes"
                ))
            })?;
        Ok(())
    }

    fn decisions(&self) -> Result<Vec<crate::state::Decision>, EndpointError> {
        self.with_session(|s| match &s.db {
            Some(db) => Ok(db.facts()?.decisions),
            None => Ok(Vec::new()),
        })?
    }

    fn record_lineage(&self, edges: &[Edge]) -> Result<(), EndpointError> {
        let dry_run = self.with_session(|s| s.request.dry_run)?;
        if !dry_run {
            crate::state::add_lineage(&self.state_dir, edges)?;
        }
        Ok(())
    }

    fn hash_files(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Hash>, EndpointError> {
        Ok(paths
            .par_iter()
            .filter_map(|path| {
                let abs = self.tree.checked_path(path).ok()?;
                Some((path.clone(), crate::scan::hash_file(&abs).ok()?))
            })
            .collect())
    }

    fn signatures(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Signature>, EndpointError> {
        Ok(paths
            .par_iter()
            .filter_map(|path| {
                let abs = self.tree.checked_path(path).ok()?;
                let mut file = File::open(abs).ok()?;
                let size = file.metadata().ok()?.len();
                let sig = signature(&mut file, size).ok()?;
                Some((path.clone(), sig))
            })
            .collect())
    }

    fn read_xattrs(&self, entries: &[Entry]) -> Result<Vec<Option<Xattrs>>, EndpointError> {
        Ok(entries
            .iter()
            .map(|e| read_xattrs(&e.path.under(&self.root), e.kind, self.tree.preserve()).ok())
            .collect())
    }

    fn send_files(
        &self,
        jobs: Vec<FileJob>,
        sink: &dyn FileSink,
        xattrs: bool,
        stop: &AtomicBool,
    ) -> Result<(), EndpointError> {
        let pool = file_pool();
        pool.install(|| {
            jobs.par_iter().for_each(|job| {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(mut writer) = sink.open(job) {
                    let end = self.stream_file(job, writer.as_mut(), xattrs);
                    writer.finish(end);
                }
            })
        });
        Ok(())
    }

    fn receive_files<'a>(&'a self, done: Done<'a>) -> Box<dyn FileSink + 'a> {
        Box::new(LocalSink {
            tree: &self.tree,
            done,
        })
    }

    fn apply(
        &self,
        ops: &[(Op, Option<Xattrs>)],
        parallel: bool,
    ) -> Result<Vec<Result<Applied, OpFailure>>, EndpointError> {
        if parallel {
            Ok(file_pool().install(|| {
                ops.par_iter()
                    .map(|(op, xattrs)| self.apply_one(op, xattrs.as_ref()))
                    .collect()
            }))
        } else {
            Ok(ops
                .iter()
                .map(|(op, xattrs)| self.apply_one(op, xattrs.as_ref()))
                .collect())
        }
    }

    fn record_pending(
        &self,
        pending: &[crate::state::Pending],
        replace: bool,
    ) -> Result<(), EndpointError> {
        let mut guard = self.session.lock().unwrap();
        let Some(session) = guard.as_mut() else {
            return Ok(());
        };
        if session.request.dry_run {
            return Ok(());
        }
        // The run starts: what the open made stays.
        session.made = None;
        if let Some(db) = session.db.as_mut() {
            db.record_pending(pending, replace)?;
        }
        Ok(())
    }

    fn remove_sent_files(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<(), String>>, EndpointError> {
        let allowed = self.with_session(|s| {
            s.request.role == Role::Source && s.request.remove_source_files && !s.request.dry_run
        })?;
        if !allowed {
            return Err(EndpointError::Refused(format!(
                "{}: the session was not opened as a source with --remove-source-files; nothing removed",
                self.describe()
            )));
        }
        Ok(entries
            .iter()
            .map(|entry| self.remove_sent(entry))
            .collect())
    }

    fn commit(&self, updates: &[SnapshotUpdate]) -> Result<(), EndpointError> {
        let mut guard = self.session.lock().unwrap();
        let Some(session) = guard.as_mut() else {
            return Ok(());
        };
        if let Some(db) = session.db.as_mut() {
            db.apply_updates(updates)?;
        }
        if let Some(log) = session.log.as_ref().filter(|log| log.verbose()) {
            for update in updates {
                log.line(&match update {
                    SnapshotUpdate::Upsert(entry) => {
                        format!("synced {} {}", entry.kind.as_str(), entry.path)
                    }
                    SnapshotUpdate::Remove(path) => format!("removed {path}"),
                    SnapshotUpdate::Move { from, to } => format!("moved {from} -> {to}"),
                });
            }
        }
        if let Some(sizes) = session.sizes.as_mut() {
            for update in updates {
                if let SnapshotUpdate::Upsert(entry) = update {
                    sizes.note(entry);
                }
            }
        }
        Ok(())
    }

    fn finish(&self, rows: &[SnapshotUpdate], end: &RunEnd) -> Result<(), EndpointError> {
        self.commit(rows)?;
        let mut guard = self.session.lock().unwrap();
        let Some(session) = guard.as_mut() else {
            return Ok(());
        };
        if session.request.dry_run {
            return Ok(());
        }
        session.made = None;
        let Some(db) = session.db.as_mut() else {
            return Ok(());
        };
        let forgotten: Vec<SnapshotUpdate> = session
            .forgotten
            .iter()
            .cloned()
            .map(SnapshotUpdate::Remove)
            .collect();
        db.apply_updates(&forgotten)?;
        db.record_errors(&end.failures, end.complete && end.examined.is_none())?;
        // A run that ran to its end leaves nothing pending: what it did not
        // settle failed, and is an error now (its plan kept for `ls`).
        if end.complete {
            db.clear_pending()?;
        }
        let failed: Vec<RelPath> = end.failures.iter().map(|(p, _)| p.clone()).collect();
        db.record_conflicts(&end.conflicts, &failed, end.examined.as_deref())?;
        if let Some(log) = &session.log {
            for (path, message) in &end.failures {
                log.line(&format!("error {path}: {message}"));
            }
            for conflict in &end.conflicts {
                log.line(&format!(
                    "conflict {}: {} here, {} on the peer; left as it is on both sides",
                    conflict.path, conflict.here, conflict.peer
                ));
            }
            log.line(&run_end_line(end));
            // By its absolute path: a root given relative to where this
            // process runs (a far end's login directory) is not where
            // `status` runs.
            let path = std::path::absolute(log.path()).unwrap_or_else(|_| log.path().to_path_buf());
            db.set_fact("log", &path.display().to_string())?;
        }
        db.set_fact("direction", &session.request.direction)?;
        db.set_fact("filters", &session.filters_line)?;
        if let Some(peer) = &end.peer_root_id {
            db.set_fact("peer_root_id", peer)?;
        }
        db.set_fact("peer", &end.peer)?;
        if end.complete {
            db.set_fact("established", "1")?;
        }
        db.record_run(
            &end.started,
            if end.complete {
                "complete"
            } else {
                "interrupted"
            },
            &end.summary,
        )?;
        Ok(())
    }
}

/// A session recorded with another direction is refused, unless `-x`
/// starts it afresh.
fn refuse_another_direction(
    facts: &SessionFacts,
    request: &SessionRequest,
) -> Result<(), EndpointError> {
    match &facts.direction {
        Some(recorded) if recorded != &request.direction && !request.reset => {
            Err(EndpointError::Refused(format!(
                "session `{}` was recorded as {recorded}, not {}; use another session name (-N) or -x to start it afresh",
                request.session, request.direction
            )))
        }
        _ => Ok(()),
    }
}

/// The session log's line for the end of a run: how it ended, and its counts.
fn run_end_line(end: &RunEnd) -> String {
    let summary: serde_json::Value = serde_json::from_str(&end.summary).unwrap_or_default();
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    format!(
        "run {} (started {}): created {}, updated {}, deleted {}, renamed {}, copied {}, conflicts {}, errors {}; sent {} B, received {} B; {:.2}s; peer {}",
        if end.complete { "complete" } else { "interrupted" },
        end.started,
        count("created"),
        count("updated"),
        count("deleted"),
        count("renamed"),
        count("copied"),
        count("conflicts"),
        count("errors"),
        count("bytes_sent"),
        count("bytes_received"),
        summary["seconds"].as_f64().unwrap_or(0.0),
        end.peer,
    )
}

/// The `meta` key listing the backup directories inside the root that the
/// session ever used, one per line.
const BACKUP_DIRS_FACT: &str = "backup_dirs";

/// True when the directory `top` holds nothing but what `within` lists
/// (so moving it whole takes nothing the session does not know of).
fn holds_only(root: &Path, top: &Entry, within: &[Entry]) -> bool {
    let known: HashSet<&RelPath> = within.iter().map(|e| &e.path).collect();
    let mut dirs = vec![top.path.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = fs::read_dir(dir.under(root)) else {
            return false;
        };
        for child in listing {
            let Ok(child) = child else {
                return false;
            };
            let Ok(path) = dir.join(child.file_name().as_bytes()) else {
                return false;
            };
            if !known.contains(&path) {
                return false;
            }
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            }
        }
    }
    true
}

/// What the walk needs of the diff options.
fn scan_options(options: &DiffOptions) -> ScanOptions {
    ScanOptions {
        filters: options.filters.clone(),
        links: options.links,
        preserve: options.preserve,
        hash_files: options.checksum,
    }
}

/// The pool that file work runs on: I/O-bound, so more threads than cores.
fn file_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = (2 * std::thread::available_parallelism().map_or(2, |n| n.get())).max(4);
        rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("snapsync-file-{i}"))
            .build()
            .expect("a thread pool")
    })
}

fn copy_literal(
    file: &mut File,
    literal: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Hash> {
    thread_local! {
        // One read buffer per pool thread: a fresh zeroed 256 KiB per file
        // would cost more than copying a small file.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; LITERAL_CHUNK]);
    }
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        let mut hasher = blake3::Hasher::new();
        loop {
            let n = match file.read(&mut buf[..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            literal(&buf[..n])?;
        }
        Ok(*hasher.finalize().as_bytes())
    })
}

/// Installs files arriving from a source into a local root.
struct LocalSink<'a> {
    tree: &'a LocalTree,
    done: Done<'a>,
}

impl FileSink for LocalSink<'_> {
    fn open(&self, job: &FileJob) -> Option<Box<dyn FileWriter + '_>> {
        match self.tree.begin_file(&job.entry, job.basis.is_some()) {
            Ok(incoming) => Some(Box::new(LocalWriter {
                id: job.id,
                incoming: Some(incoming),
                error: None,
                done: Arc::clone(&self.done),
            })),
            Err(e) => {
                (self.done)(job.id, Err(LocalEndpoint::failure(&job.entry.path, e)));
                None
            }
        }
    }

    fn wait(&self) -> Result<(), EndpointError> {
        Ok(())
    }
}

struct LocalWriter<'a> {
    id: u64,
    incoming: Option<IncomingFile<'a>>,
    /// The first write error; later data is ignored and the file fails.
    error: Option<ApplyError>,
    done: Done<'a>,
}

impl FileWriter for LocalWriter<'_> {
    fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(|incoming| incoming.literal(data))
    }

    fn copy(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write(|incoming| incoming.copy(offset, len))
    }

    fn finish(mut self: Box<Self>, end: SourceEnd) {
        let incoming = self.incoming.take().expect("finished once");
        let path = incoming.path().clone();
        let result = match (self.error.take(), end) {
            (Some(error), _) => Err(LocalEndpoint::failure(&path, error)),
            (None, SourceEnd::Failed(message)) => Err(OpFailure {
                path,
                message,
                stale: false,
                warning_only: false,
            }),
            (None, SourceEnd::Complete { hash, xattrs }) => incoming
                .finish(&hash, xattrs.as_ref())
                .map(|(entry, bytes)| Applied {
                    updates: vec![SnapshotUpdate::Upsert(entry)],
                    bytes,
                })
                .map_err(|e| LocalEndpoint::failure(&path, e)),
        };
        (self.done)(self.id, result);
    }
}

impl LocalWriter<'_> {
    fn write(
        &mut self,
        step: impl FnOnce(&mut IncomingFile) -> Result<(), ApplyError>,
    ) -> io::Result<()> {
        if self.error.is_some() {
            return Err(io::Error::other("the target could not write this file"));
        }
        let incoming = self.incoming.as_mut().expect("open until finished");
        step(incoming).map_err(|e| {
            let message = e.to_string();
            self.error = Some(e);
            io::Error::other(message)
        })
    }
}

impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        self.unwatch.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    fn write(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, rel).unwrap();
    }

    fn delete_tree(root: &Path, top: &str, within: &[(&str, Kind)]) -> Result<Applied, OpFailure> {
        let endpoint = LocalEndpoint::new(root.to_path_buf(), None, Preserve::default());
        let op = Op::DeleteTree {
            entry: Entry::bare(p(top), Kind::Dir),
            within: within
                .iter()
                .map(|(path, kind)| Entry::bare(p(path), *kind))
                .collect(),
        };
        let mut results = endpoint.apply(&[(op, None)], false).unwrap();
        results.pop().unwrap()
    }

    fn removed(applied: &Applied) -> Vec<String> {
        applied
            .updates
            .iter()
            .map(|u| match u {
                SnapshotUpdate::Remove(path) => path.to_string(),
                other => panic!("only removals: {other:?}"),
            })
            .collect()
    }

    fn source_request(remove_source_files: bool) -> SessionRequest {
        SessionRequest {
            remove_source_files,
            ..request(Role::Source)
        }
    }

    #[test]
    fn a_source_removes_only_the_version_it_sent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sent");
        write(root, "edited");
        write(root, "sub/other");
        let endpoint = LocalEndpoint::new(root.to_path_buf(), None, Preserve::default());
        endpoint.open_session(&source_request(true)).unwrap();
        let sent = endpoint.tree.stat(&p("sent"), None).unwrap();
        let edited = endpoint.tree.stat(&p("edited"), None).unwrap();
        let sub = endpoint.tree.stat(&p("sub"), None).unwrap();
        fs::write(root.join("edited"), "a later version, longer").unwrap();
        let results = endpoint.remove_sent_files(&[sent, edited, sub]).unwrap();
        assert!(results[0].is_ok());
        assert!(!root.join("sent").exists());
        let kept = results[1].as_ref().unwrap_err();
        assert!(kept.contains("changed since it was sent"), "{kept}");
        assert_eq!(
            fs::read(root.join("edited")).unwrap(),
            b"a later version, longer"
        );
        assert!(results[2].is_err(), "a directory stays");
        assert!(root.join("sub/other").exists());
    }

    #[test]
    fn a_racy_source_file_goes_only_with_the_content_sent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "racy");
        let endpoint = LocalEndpoint::new(root.to_path_buf(), None, Preserve::default());
        endpoint.open_session(&source_request(true)).unwrap();
        let mut entry = endpoint.tree.stat(&p("racy"), None).unwrap();
        entry.racy = true;
        // Sent as other bytes of the same size, within the same mtime tick.
        entry.hash = Some(*blake3::hash(b"ybca").as_bytes());
        let results = endpoint.remove_sent_files(&[entry.clone()]).unwrap();
        assert!(results[0].is_err());
        assert!(root.join("racy").exists());
        entry.hash = Some(*blake3::hash(b"racy").as_bytes());
        let results = endpoint.remove_sent_files(&[entry]).unwrap();
        assert!(results[0].is_ok());
        assert!(!root.join("racy").exists());
    }

    #[test]
    fn a_source_without_the_option_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sent");
        let endpoint = LocalEndpoint::new(dir.path().to_path_buf(), None, Preserve::default());
        endpoint.open_session(&source_request(false)).unwrap();
        let sent = endpoint.tree.stat(&p("sent"), None).unwrap();
        assert!(endpoint.remove_sent_files(&[sent]).is_err());
        assert!(dir.path().join("sent").exists());
    }

    #[test]
    fn with_a_backup_a_tree_moves_whole_unless_it_holds_unknown_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in ["whole/a", "whole/sub/b", "part/a", "part/x.log"] {
            write(root, path);
        }
        let endpoint = LocalEndpoint::new(root.to_path_buf(), None, Preserve::default());
        let backup = BackupDir::InRoot(p(".bak"));
        endpoint
            .tree
            .set_backup(Some(RunBackup::new(backup, "R".into())));
        let ino = |path: &Path| fs::symlink_metadata(path).unwrap().ino();
        let whole_ino = ino(&root.join("whole"));
        let op = Op::DeleteTree {
            entry: Entry::bare(p("whole"), Kind::Dir),
            within: vec![
                Entry::bare(p("whole/a"), Kind::File),
                Entry::bare(p("whole/sub"), Kind::Dir),
                Entry::bare(p("whole/sub/b"), Kind::File),
            ],
        };
        let applied = endpoint.apply(&[(op, None)], false).unwrap().pop().unwrap();
        assert_eq!(removed(&applied.unwrap()), ["whole"]);
        assert_eq!(
            ino(&root.join(".bak/R/whole")),
            whole_ino,
            "moved, not copied"
        );
        assert!(root.join(".bak/R/whole/sub/b").exists());
        // `part/x.log` is not the session's: it stays, and so does `part`.
        let op = Op::DeleteTree {
            entry: Entry::bare(p("part"), Kind::Dir),
            within: vec![Entry::bare(p("part/a"), Kind::File)],
        };
        let applied = endpoint.apply(&[(op, None)], false).unwrap().pop().unwrap();
        assert_eq!(removed(&applied.unwrap()), ["part/a"]);
        assert!(root.join(".bak/R/part/a").exists());
        assert!(root.join("part/x.log").exists());
        assert!(!root.join(".bak/R/part/x.log").exists());
    }

    #[test]
    fn a_tree_delete_goes_whole_with_one_row_removal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "gone/a");
        write(root, "gone/sub/b");
        let applied = delete_tree(
            root,
            "gone",
            &[
                ("gone/a", Kind::File),
                ("gone/sub", Kind::Dir),
                ("gone/sub/b", Kind::File),
            ],
        )
        .unwrap();
        assert_eq!(removed(&applied), ["gone"]);
        assert!(!root.join("gone").exists());
    }

    #[test]
    fn a_tree_delete_keeps_only_the_directories_that_hold_excluded_entries() {
        // `gone/sub/x.log` is not the session's: `gone/sub` and `gone`
        // stay for it, and everything else in the tree still goes.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in [
            "gone/a",
            "gone/sub/b",
            "gone/sub/x.log",
            "gone/z",
            "gone/other/c",
        ] {
            write(root, path);
        }
        let within = [
            ("gone/a", Kind::File),
            ("gone/other", Kind::Dir),
            ("gone/other/c", Kind::File),
            ("gone/sub", Kind::Dir),
            ("gone/sub/b", Kind::File),
            ("gone/z", Kind::File),
        ];
        let applied = delete_tree(root, "gone", &within).unwrap();
        let mut went = removed(&applied);
        went.sort();
        assert_eq!(
            went,
            [
                "gone/a",
                "gone/other",
                "gone/other/c",
                "gone/sub/b",
                "gone/z"
            ]
        );
        assert!(root.join("gone/sub/x.log").exists());
        for path in ["gone/a", "gone/other", "gone/sub/b", "gone/z"] {
            assert!(!root.join(path).exists(), "{path}");
        }
    }

    fn request(role: Role) -> SessionRequest {
        SessionRequest {
            session: "s".into(),
            direction: "push".into(),
            role,
            reset: false,
            dry_run: false,
            log_max: crate::log::DEFAULT_MAX,
            log_verbose: false,
            backup_dir: None,
            remove_source_files: false,
            probe: false,
            count_rows: false,
            bwlimit: None,
        }
    }

    #[test]
    fn a_session_that_never_starts_a_run_takes_away_what_its_open_made() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("new/target");
        let endpoint = LocalEndpoint::new(root.clone(), None, Preserve::default());
        endpoint.open_session(&request(Role::Target)).unwrap();
        assert!(root.join(".snapsync/s.db").exists() && root.join(".snapsync/id").exists());
        drop(endpoint);
        assert!(
            !dir.path().join("new").exists(),
            "the made directories stayed"
        );

        // Once a run starts, what the open made stays.
        let endpoint = LocalEndpoint::new(root.clone(), None, Preserve::default());
        endpoint.open_session(&request(Role::Target)).unwrap();
        endpoint.record_pending(&[], true).unwrap();
        drop(endpoint);
        assert!(root.join(".snapsync/s.db").exists());
    }

    #[test]
    fn a_probe_makes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("target");
        let endpoint = LocalEndpoint::new(root.clone(), None, Preserve::default());
        let probe = SessionRequest {
            probe: true,
            ..request(Role::Target)
        };
        let facts = endpoint.open_session(&probe).unwrap();
        assert_eq!(facts.root, RootState::Missing);
        assert!(!facts.has_snapshot && facts.root_id.is_none());
        assert!(!root.exists());
        // A root in use: what the probe reports, and the state untouched.
        fs::create_dir(&root).unwrap();
        endpoint.open_session(&request(Role::Target)).unwrap();
        endpoint.record_pending(&[], true).unwrap();
        drop(endpoint);
        let listing = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = listing(&root.join(".snapsync"));
        let endpoint = LocalEndpoint::new(root.clone(), None, Preserve::default());
        let facts = endpoint.open_session(&probe).unwrap();
        assert_eq!(facts.root, RootState::Dir);
        assert!(facts.has_snapshot && facts.root_id.is_some());
        assert_eq!(listing(&root.join(".snapsync")), before);
    }
}
