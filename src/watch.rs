//! Watching one root for changes: the first half of continuous mode (`-C`).
//!
//! [`Watch`] keeps a recursive watch on a root (inotify on Linux, the native
//! API elsewhere, through `notify`) and hands out a [`Batch`] of dirty paths
//! once the tree has been quiet for a cooloff. It only names places to look:
//! the caller stats them and compares them with the snapshot. It never reads
//! file content and never writes.
//!
//! Events are folded into the batch being gathered as they arrive, on
//! notify's own thread, so what a watch holds grows with the number of
//! distinct dirty paths (capped: past the cap the batch asks for a rescan
//! instead), never with the number of events. The kernel's queue in front of
//! that thread is bounded too; when it overflows, the batch asks for a rescan.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventHandler, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::filter::TEMP_PREFIX;
use crate::model::RelPath;

/// Most dirty paths (`paths` and `trees` together) a batch holds; past this
/// the batch is dropped and asks for a rescan, which costs one walk instead
/// of memory that grows with the changes.
pub const MAX_DIRTY_PATHS: usize = 100_000;

/// How often [`Watch::wait`] looks at its stop flag. The flag is set by a
/// signal handler, which cannot wake a waiting thread, so it is looked at on
/// a timer; ten wake-ups a second cost nothing measurable while idle.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What changed since the last batch, relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Paths whose own entry may have changed (created, modified, deleted,
    /// metadata, renamed from or to, and the directory holding an entry that
    /// was added, removed or renamed, whose mtime changed): stat them. Where
    /// one is no longer there, or no longer a directory, everything the
    /// snapshot holds below it is gone too: events below a deleted or
    /// renamed-away directory are not listed.
    pub paths: BTreeSet<RelPath>,
    /// Directories that appeared (created, renamed within the root or moved
    /// in from elsewhere): stat each and walk its whole subtree. Nothing
    /// below one of these is listed in `paths`.
    pub trees: BTreeSet<RelPath>,
    /// Set when the events cannot be trusted to be complete (the kernel's
    /// queue overflowed, a watch was lost, the root itself was moved or
    /// deleted, more than [`MAX_DIRTY_PATHS`] paths changed): rescan the
    /// whole tree against the snapshot. Says why. `paths` and `trees` are
    /// then empty.
    pub rescan: Option<String>,
    /// Set with `rescan` when the watch no longer covers the tree (the root
    /// was moved or deleted, the watch limit was reached for new
    /// directories): drop this [`Watch`] and start a new one (or poll, if
    /// that fails) before rescanning, or later changes will go unseen.
    pub rewatch: bool,
}

impl Batch {
    /// True when nothing changed (`wait` timed out, or was stopped before
    /// anything changed).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.trees.is_empty() && self.rescan.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// This tree cannot be watched here; the caller polls instead.
    #[error("cannot watch {root} for changes: {reason}")]
    Unsupported { root: PathBuf, reason: String },
    /// The root itself cannot be read.
    #[error("cannot watch {root}: {source}")]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
}

/// A recursive watch on one root. Dropping it stops the watch (notify's
/// thread removes its watches and ends on its own; the drop does not wait).
pub struct Watch {
    _watcher: RecommendedWatcher,
    shared: Arc<Shared>,
}

impl Watch {
    /// Starts watching `root` recursively; returns once every directory
    /// below it is watched (one walk of the tree). `ignore` says which
    /// relative paths to drop: it is asked about every path an event names,
    /// so it must match whole subtrees itself (the caller passes the state
    /// dir inside the root, `.snapsync`). snapsync's temporaries
    /// (`.snapsync-tmp-*`) are always dropped.
    ///
    /// Changes made before `start` returns may be missed: start the watch
    /// before the scan it is meant to follow.
    pub fn start(
        root: &Path,
        ignore: impl Fn(&RelPath) -> bool + Send + 'static,
    ) -> Result<Watch, WatchError> {
        Watch::start_with_limit(root, ignore, MAX_DIRTY_PATHS)
    }

    fn start_with_limit(
        root: &Path,
        ignore: impl Fn(&RelPath) -> bool + Send + 'static,
        limit: usize,
    ) -> Result<Watch, WatchError> {
        // Events name paths under the path that was watched; a canonical one
        // makes them strip cleanly, whatever `..` or symlink `root` holds.
        let root = root.canonicalize().map_err(|source| WatchError::Root {
            root: root.to_path_buf(),
            source,
        })?;
        let unsupported = |reason: String| WatchError::Unsupported {
            root: root.clone(),
            reason,
        };
        if let Some(kind) = remote_filesystem(&root) {
            return Err(unsupported(format!(
                "it is on a {kind} filesystem, where changes made on other machines are not reported"
            )));
        }
        let shared = Arc::new(Shared {
            gathering: Mutex::new(Gathering::new(limit)),
            changed: Condvar::new(),
        });
        let recorder = Recorder {
            root: root.clone(),
            ignore: Box::new(ignore),
            shared: Arc::clone(&shared),
        };
        // Symlinks are synced as links: a linked directory is not part of the tree.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = RecommendedWatcher::new(recorder, config)
            .map_err(|error| unsupported(describe_error(&error)))?;
        // notify 8 fails the whole walk when a directory is removed between
        // being listed and being watched: that tree is busy, not unwatchable.
        let mut walks = 1;
        loop {
            match watcher.watch(&root, RecursiveMode::Recursive) {
                Ok(()) => break,
                Err(error) if walks < 3 && is_not_found(&error) && root.is_dir() => walks += 1,
                Err(error) => return Err(unsupported(describe_error(&error))),
            }
        }
        Ok(Watch {
            _watcher: watcher,
            shared,
        })
    }

    /// Blocks until something changed and the tree then stayed quiet for
    /// `cooloff`, but returns at most `max_wait` after the first change of
    /// the batch (counted from when it happened, even if that was before this
    /// call), so a file rewritten constantly still gets synced. Returns early,
    /// with what was gathered so far (possibly nothing), when `stop` is set
    /// (looked at every 100 ms), or empty when `timeout` passed with nothing
    /// changed. One caller at a time: two waiting at once would split the
    /// changes between them.
    pub fn wait(
        &self,
        cooloff: Duration,
        max_wait: Duration,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Batch {
        // Longer than anyone waits, short enough to add to an `Instant`.
        let at_most_a_year = |duration: Duration| duration.min(Duration::from_secs(365 * 86_400));
        let (cooloff, max_wait) = (at_most_a_year(cooloff), at_most_a_year(max_wait));
        let gives_up = Instant::now() + at_most_a_year(timeout);
        let mut gathering = self.shared.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return gathering.take();
            }
            let now = Instant::now();
            let until = match gathering.closes_at(cooloff, max_wait) {
                Some(closes) if now >= closes => return gathering.take(),
                Some(closes) => closes,
                None if now >= gives_up => return Batch::default(),
                None => gives_up,
            };
            let nap = (until - now).min(STOP_CHECK);
            gathering = self
                .shared
                .changed
                .wait_timeout(gathering, nap)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Dirty paths held right now, for tests of the bounds.
    #[cfg(test)]
    fn held(&self) -> usize {
        let gathering = self.shared.lock();
        gathering.paths.len() + gathering.trees.len()
    }
}

/// The batch being gathered, shared between notify's thread (which records
/// into it) and the caller of [`Watch::wait`] (which takes it).
struct Shared {
    gathering: Mutex<Gathering>,
    /// Signalled when a batch starts, so a waiter starts counting its cooloff.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Gathering> {
        // A panic in the caller's `ignore` on notify's thread must not take
        // the caller down too: the sets stay consistent between operations.
        self.gathering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one event says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The path's own entry may differ.
    Entry,
    /// The entry is gone (deleted, renamed away), with all that was below it.
    Gone,
    /// A directory appeared: its whole subtree is new here.
    Tree,
}

struct Gathering {
    /// Dirty paths, `true` where the entry is [`Change::Gone`]; a gone path
    /// covers everything below it.
    paths: BTreeMap<RelPath, bool>,
    /// New directories; each covers everything below it.
    trees: BTreeSet<RelPath>,
    rescan: Option<String>,
    rewatch: bool,
    first_change: Option<Instant>,
    last_change: Option<Instant>,
    limit: usize,
}

impl Gathering {
    fn new(limit: usize) -> Gathering {
        Gathering {
            paths: BTreeMap::new(),
            trees: BTreeSet::new(),
            rescan: None,
            rewatch: false,
            first_change: None,
            last_change: None,
            limit,
        }
    }

    /// When the batch is complete, if it has begun: after `cooloff` of
    /// quiet, or `max_wait` after its first change, whichever comes first.
    fn closes_at(&self, cooloff: Duration, max_wait: Duration) -> Option<Instant> {
        let (first, last) = (self.first_change?, self.last_change?);
        Some((last + cooloff).min(first + max_wait))
    }

    /// Notes that something changed now; true when that starts a batch.
    fn touch(&mut self, now: Instant) -> bool {
        let starts = self.first_change.is_none();
        self.first_change.get_or_insert(now);
        self.last_change = Some(now);
        starts
    }

    fn record(&mut self, path: RelPath, change: Change) {
        if self.rescan.is_some() || self.is_covered(&path, change) {
            return;
        }
        match change {
            Change::Entry => {
                self.paths.entry(path).or_insert(false);
            }
            Change::Gone => {
                self.drop_below(&path);
                self.paths.insert(path, true);
            }
            Change::Tree => {
                self.drop_below(&path);
                self.trees.insert(path);
            }
        }
        if self.paths.len() + self.trees.len() > self.limit {
            let reason = format!(
                "more than {} paths changed before they could be synced",
                self.limit
            );
            self.give_up(reason, false);
        }
    }

    /// True when what `change` says about `path` is already known: an
    /// ancestor is to be walked or is gone, or (for a mere entry change)
    /// the path itself is to be walked.
    fn is_covered(&self, path: &RelPath, change: Change) -> bool {
        if change == Change::Entry && self.trees.contains(path) {
            return true;
        }
        let mut above = path.parent();
        while let Some(ancestor) = above.filter(|a| !a.is_root()) {
            if self.trees.contains(&ancestor) || self.paths.get(&ancestor) == Some(&true) {
                return true;
            }
            above = ancestor.parent();
        }
        false
    }

    /// Forgets every path strictly below `path`, now covered by it.
    fn drop_below(&mut self, path: &RelPath) {
        // `path/\x01` is the least path below `path` (names hold no NUL) and
        // `path0` the least above all of them (`0` follows `/`).
        let bytes = path.as_bytes();
        let (Ok(low), Ok(high)) = (
            RelPath::new(&[bytes, b"/\x01"].concat()),
            RelPath::new(&[bytes, b"0"].concat()),
        ) else {
            return;
        };
        let below: Vec<RelPath> = self
            .paths
            .range(&low..&high)
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            self.paths.remove(&p);
        }
        let below: Vec<RelPath> = self.trees.range(&low..&high).cloned().collect();
        for p in below {
            self.trees.remove(&p);
        }
    }

    /// Drops what was gathered: the caller will rescan the whole tree.
    fn give_up(&mut self, reason: String, rewatch: bool) {
        self.paths.clear();
        self.trees.clear();
        self.rescan.get_or_insert(reason);
        self.rewatch |= rewatch;
    }

    fn take(&mut self) -> Batch {
        self.first_change = None;
        self.last_change = None;
        let paths = std::mem::take(&mut self.paths);
        Batch {
            paths: paths.into_keys().collect(),
            trees: std::mem::take(&mut self.trees),
            rescan: self.rescan.take(),
            rewatch: std::mem::take(&mut self.rewatch),
        }
    }
}

/// notify's event handler: turns events into changes of relative paths, on
/// notify's thread.
struct Recorder {
    root: PathBuf,
    ignore: Box<dyn Fn(&RelPath) -> bool + Send>,
    shared: Arc<Shared>,
}

impl EventHandler for Recorder {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // Adding a watch for a new directory failed (the watch limit),
                // or reading events did: parts of the tree are unwatched now.
                let reason = describe_error(&error);
                return self.give_up(
                    format!("watching stopped covering the tree: {reason}"),
                    true,
                );
            }
        };
        if event.need_rescan() {
            return self.give_up(queue_overflow_reason(), false);
        }
        let Some(changes) = changes_of(&event) else {
            return;
        };
        let listing_changed = changes_listing(&event.kind);
        let mut relative = Vec::new();
        for (change, path) in changes {
            let Some(rel) = self.relative(path) else {
                continue;
            };
            if rel.is_root() {
                if change == Change::Gone {
                    let reason = format!("the root {} was moved or deleted", self.root.display());
                    return self.give_up(reason, true);
                }
                // The root's own metadata is not synced.
                continue;
            }
            if is_temporary(&rel) || (self.ignore)(&rel) {
                continue;
            }
            if listing_changed {
                if let Some(parent) = rel.parent().filter(|parent| !parent.is_root()) {
                    relative.push((parent, Change::Entry));
                }
            }
            relative.push((rel, change));
        }
        if relative.is_empty() {
            return;
        }
        let mut gathering = self.shared.lock();
        let starts_batch = gathering.touch(Instant::now());
        for (rel, change) in relative {
            gathering.record(rel, change);
        }
        drop(gathering);
        if starts_batch {
            self.shared.changed.notify_all();
        }
    }
}

impl Recorder {
    fn give_up(&self, reason: String, rewatch: bool) {
        let mut gathering = self.shared.lock();
        let starts_batch = gathering.touch(Instant::now());
        gathering.give_up(reason, rewatch);
        drop(gathering);
        if starts_batch {
            self.shared.changed.notify_all();
        }
    }

    /// The path relative to the root; `None` for one outside it.
    fn relative(&self, path: &Path) -> Option<RelPath> {
        let rest = path.strip_prefix(&self.root).ok()?;
        RelPath::new(rest.as_os_str().as_bytes()).ok()
    }
}

/// What `event` says about each path it names; `None` when it changes nothing.
fn changes_of(event: &Event) -> Option<Vec<(Change, &Path)>> {
    let all = |change: Change| -> Vec<(Change, &Path)> {
        event
            .paths
            .iter()
            .map(|path| (change, path.as_path()))
            .collect()
    };
    let changes = match event.kind {
        // Opening and reading change nothing; a close after writing ends a
        // write, which the cooloff should wait for.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => all(Change::Entry),
        EventKind::Access(_) => return None,
        EventKind::Create(CreateKind::Folder) => all(Change::Tree),
        EventKind::Create(CreateKind::File) => all(Change::Entry),
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            all(Change::Gone)
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if event.paths.len() == 2 => {
            // inotify also reports both halves on their own; other backends
            // may not.
            let (from, to) = (&event.paths[0], &event.paths[1]);
            vec![(Change::Gone, from.as_path()), (by_lstat(to), to.as_path())]
        }
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Create(_) | EventKind::Any => {
            // A rename's new name, or a backend that does not say which side
            // or what kind: what is there now decides.
            event
                .paths
                .iter()
                .map(|path| (by_lstat(path), path.as_path()))
                .collect()
        }
        EventKind::Modify(_) | EventKind::Other => all(Change::Entry),
    };
    Some(changes)
}

/// Whether an event of `kind` adds, removes or renames an entry, which
/// changes the listing, and so the mtime, of the directory holding it:
/// no event names that directory.
fn changes_listing(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Any
    )
}

/// What is at `path` now: a directory is a tree to walk, anything else an
/// entry to stat; nothing there, gone.
fn by_lstat(path: &Path) -> Change {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Change::Tree,
        Ok(_) => Change::Entry,
        Err(_) => Change::Gone,
    }
}

fn is_not_found(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn is_temporary(path: &RelPath) -> bool {
    path.file_name().starts_with(TEMP_PREFIX)
}

/// What went wrong, in words that say what to do about it.
fn describe_error(error: &notify::Error) -> String {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "the limit of inotify watches{} was reached (one is needed per directory); \
             raise it with `sysctl fs.inotify.max_user_watches=N`",
            proc_setting("max_user_watches")
        ),
        notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            let paths: Vec<String> = error
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!(
                "no permission to watch {} (a directory must be readable to be watched)",
                paths.join(", ")
            )
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => format!(
            "no inotify instance left{}; \
             raise it with `sysctl fs.inotify.max_user_instances=N` or stop other watchers",
            proc_setting("max_user_instances")
        ),
        _ => error.to_string(),
    }
}

fn queue_overflow_reason() -> String {
    format!(
        "the kernel's queue of change events overflowed{}",
        proc_setting("max_queued_events")
    )
}

/// ` (fs.inotify.NAME = VALUE)`, or nothing where it cannot be read.
fn proc_setting(name: &str) -> String {
    match std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}")) {
        Ok(value) => format!(" (fs.inotify.{name} = {})", value.trim()),
        Err(_) => String::new(),
    }
}

/// The kind of network filesystem `root` is on, where inotify sees only the
/// changes made through this machine's kernel: a watch would silently miss
/// the rest, so polling is the honest answer there.
#[cfg(target_os = "linux")]
fn remote_filesystem(root: &Path) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root).ok()?;
    // SAFETY: `statfs` is plain data, and fstatfs only writes into it.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut info) } != 0 {
        return None;
    }
    // Magic numbers from statfs(2); `f_type`'s width differs between targets.
    match info.f_type as u32 {
        0x6969 => Some("NFS"),
        0xFF53_4D42 | 0xFE53_4D42 | 0x517B => Some("SMB"),
        0x0102_1997 => Some("9P"),
        0x6573_5546 => Some("FUSE"),
        0x00C3_6400 => Some("Ceph"),
        0x5346_414F | 0x6B41_4653 => Some("AFS"),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn remote_filesystem(_root: &Path) -> Option<&'static str> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::thread;

    /// Generous: the machine is shared and noisy, so the tests gather
    /// batches until what they expect is there, and assert on contents and
    /// order, never on how long something took.
    const COOLOFF: Duration = Duration::from_millis(100);
    const MAX_WAIT: Duration = Duration::from_secs(10);
    const PATIENCE: Duration = Duration::from_secs(30);

    fn p(path: &str) -> RelPath {
        RelPath::new(path.as_bytes()).unwrap()
    }

    fn paths(list: &[&str]) -> BTreeSet<RelPath> {
        list.iter().map(|path| p(path)).collect()
    }

    fn watch(root: &Path) -> Watch {
        Watch::start(root, |_| false).unwrap()
    }

    /// Batches (each after `cooloff` of quiet), merged, until `enough` holds
    /// for them or patience runs out.
    fn gather_with(watch: &Watch, cooloff: Duration, enough: impl Fn(&Batch) -> bool) -> Batch {
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + PATIENCE;
        let mut all = Batch::default();
        while !enough(&all) && Instant::now() < deadline {
            let batch = watch.wait(cooloff, MAX_WAIT, Duration::from_secs(1), &stop);
            all.paths.extend(batch.paths);
            all.trees.extend(batch.trees);
            all.rescan = all.rescan.or(batch.rescan);
            all.rewatch |= batch.rewatch;
        }
        all
    }

    fn gather(watch: &Watch, enough: impl Fn(&Batch) -> bool) -> Batch {
        gather_with(watch, COOLOFF, enough)
    }

    fn has_paths(list: &'static [&'static str]) -> impl Fn(&Batch) -> bool {
        move |batch| list.iter().all(|path| batch.paths.contains(&p(path)))
    }

    fn has_tree(path: &'static str) -> impl Fn(&Batch) -> bool {
        move |batch| batch.trees.contains(&p(path))
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
    }

    #[test]
    fn created_modified_and_deleted_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("keep"), "1");
        write(&root.join("old"), "1");
        fs::create_dir(root.join("d")).unwrap();
        let watch = watch(root);

        write(&root.join("new"), "1");
        write(&root.join("keep"), "2");
        fs::remove_file(root.join("old")).unwrap();
        write(&root.join("d/inner"), "1");

        let batch = gather(&watch, has_paths(&["new", "keep", "old", "d/inner"]));
        // `d` holds a new entry: its mtime changed.
        assert_eq!(batch.paths, paths(&["d", "d/inner", "keep", "new", "old"]));
        assert!(
            batch.trees.is_empty() && batch.rescan.is_none(),
            "{batch:?}"
        );
    }

    #[test]
    fn names_that_are_not_utf8_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watch(dir.path());
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
        write(&dir.path().join(name), "1");

        let wanted = RelPath::new(b"caf\xe9").unwrap();
        let batch = gather(&watch, |batch| batch.paths.contains(&wanted));
        assert_eq!(batch.paths, BTreeSet::from([wanted]));
    }

    #[test]
    fn a_new_directory_is_a_tree_and_what_follows_inside_it_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let watch = watch(root);

        // Files made right after the mkdir may come before notify watches
        // the new directory: the tree to walk covers them.
        fs::create_dir_all(root.join("fresh/sub/deeper")).unwrap();
        for i in 0..20 {
            write(&root.join(format!("fresh/f{i}")), "1");
        }
        write(&root.join("fresh/sub/deeper/x"), "1");
        let batch = gather(&watch, has_tree("fresh"));
        assert_eq!(batch.trees, paths(&["fresh"]));
        assert!(batch.paths.is_empty(), "{batch:?}");

        // From then on the new directories are watched.
        write(&root.join("fresh/sub/deeper/later"), "1");
        let batch = gather(&watch, has_paths(&["fresh/sub/deeper/later"]));
        assert_eq!(
            batch.paths,
            paths(&["fresh/sub/deeper", "fresh/sub/deeper/later"])
        );
        assert!(batch.trees.is_empty(), "{batch:?}");
    }

    #[test]
    fn a_renamed_file_reports_both_names() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a"), "1");
        let watch = watch(dir.path());
        fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();

        let batch = gather(&watch, has_paths(&["a", "b"]));
        assert_eq!(batch.paths, paths(&["a", "b"]));
        assert!(batch.trees.is_empty(), "{batch:?}");
    }

    #[test]
    fn a_renamed_directory_is_old_path_and_new_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("old/sub")).unwrap();
        for i in 0..10 {
            write(&root.join(format!("old/f{i}")), "1");
        }
        let watch = watch(root);
        fs::rename(root.join("old"), root.join("new")).unwrap();

        let batch = gather(&watch, |b| has_paths(&["old"])(b) && has_tree("new")(b));
        assert_eq!(batch.paths, paths(&["old"]));
        assert_eq!(batch.trees, paths(&["new"]));

        // Later events inside name the new place.
        write(&root.join("new/sub/after"), "1");
        let batch = gather(&watch, has_paths(&["new/sub/after"]));
        assert_eq!(batch.paths, paths(&["new/sub", "new/sub/after"]));
    }

    #[test]
    fn directories_moved_in_are_trees_and_moved_out_are_paths() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir_all(root.join("leaving")).unwrap();
        fs::create_dir_all(outside.join("arriving/sub")).unwrap();
        write(&outside.join("arriving/sub/f"), "1");
        let watch = watch(&root);

        fs::rename(outside.join("arriving"), root.join("arriving")).unwrap();
        fs::rename(root.join("leaving"), outside.join("leaving")).unwrap();
        let batch = gather(&watch, |b| {
            has_tree("arriving")(b) && has_paths(&["leaving"])(b)
        });
        assert_eq!(batch.trees, paths(&["arriving"]));
        assert_eq!(batch.paths, paths(&["leaving"]));

        // What arrived is watched now; what left is not.
        write(&outside.join("leaving/gone"), "1");
        write(&root.join("arriving/sub/g"), "1");
        let batch = gather(&watch, has_paths(&["arriving/sub/g"]));
        assert_eq!(batch.paths, paths(&["arriving/sub", "arriving/sub/g"]));
    }

    #[test]
    fn removing_a_directory_of_1000_files_is_one_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("big/sub")).unwrap();
        for i in 0..1000 {
            write(&root.join(format!("big/f{i}")), "1");
        }
        write(&root.join("big/sub/f"), "1");
        let watch = watch(root);
        fs::remove_dir_all(root.join("big")).unwrap();

        // A long cooloff keeps the whole removal in one batch even on a
        // stalling machine; the children are dropped when the directory's
        // own delete arrives.
        let batch = gather_with(&watch, Duration::from_secs(1), has_paths(&["big"]));
        assert_eq!(batch.paths, paths(&["big"]));
        assert!(
            batch.trees.is_empty() && batch.rescan.is_none(),
            "{batch:?}"
        );
    }

    #[test]
    fn an_editor_save_reports_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("doc.txt"), "1");
        write(&root.join("data"), "1");
        let watch = watch(root);

        write(&root.join(".doc.txt.swx"), "2");
        fs::rename(root.join(".doc.txt.swx"), root.join("doc.txt")).unwrap();
        // snapsync's own way: its temporaries are never reported.
        write(&root.join(".snapsync-tmp-1-1"), "2");
        fs::rename(root.join(".snapsync-tmp-1-1"), root.join("data")).unwrap();

        let batch = gather(&watch, has_paths(&["doc.txt", "data"]));
        assert_eq!(batch.paths, paths(&[".doc.txt.swx", "data", "doc.txt"]));
    }

    #[test]
    fn ignored_paths_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(".snapsync")).unwrap();
        fs::create_dir_all(root.join("d")).unwrap();
        let state = p(".snapsync");
        let watch = Watch::start(root, move |path| path.starts_with(&state)).unwrap();

        write(&root.join(".snapsync/session.db"), "1");
        fs::create_dir(root.join(".snapsync/sub")).unwrap();
        write(&root.join(".snapsync/sub/x"), "1");
        write(&root.join("d/.snapsync-tmp-7-1"), "1");
        fs::remove_file(root.join("d/.snapsync-tmp-7-1")).unwrap();
        // Events come in order: once this is seen, the others were too.
        write(&root.join("visible"), "1");

        let batch = gather(&watch, has_paths(&["visible"]));
        assert_eq!(batch.paths, paths(&["visible"]));
        assert!(batch.trees.is_empty(), "{batch:?}");
    }

    #[test]
    fn the_batch_waits_for_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let watch = watch(&root);

        // Writes 10 ms apart: a cooloff of 2 s must not close the batch
        // between them, so it holds the last one and returns after it.
        let writer = thread::spawn(move || {
            for i in 0..30 {
                write(&root.join(format!("w{i}")), "1");
                thread::sleep(Duration::from_millis(10));
            }
            Instant::now()
        });
        let stop = AtomicBool::new(false);
        let batch = watch.wait(Duration::from_secs(2), PATIENCE, PATIENCE, &stop);
        let returned = Instant::now();
        let last_written = writer.join().unwrap();
        assert!(batch.paths.contains(&p("w29")), "{batch:?}");
        assert!(returned > last_written);
    }

    #[test]
    fn max_wait_bounds_a_batch_that_never_goes_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let watch = watch(&root);
        let done = Arc::new(AtomicBool::new(false));

        // Rewrites one file until told to stop (at most for the patience).
        let writing = Arc::clone(&done);
        let writer = thread::spawn(move || {
            let started = Instant::now();
            while !writing.load(Ordering::SeqCst) && started.elapsed() < PATIENCE {
                write(&root.join("busy"), "1");
                thread::sleep(Duration::from_millis(5));
            }
        });
        // A cooloff that never passes: only `max_wait` can end the batch.
        let stop = AtomicBool::new(false);
        let batch = watch.wait(
            Duration::from_secs(3600),
            Duration::from_millis(300),
            PATIENCE,
            &stop,
        );
        let still_writing = !writer.is_finished();
        done.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        assert_eq!(batch.paths, paths(&["busy"]));
        assert!(still_writing, "the batch waited for the writer to stop");
    }

    #[test]
    fn stop_and_timeout_return_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let watch = watch(dir.path());

        let stop = AtomicBool::new(false);
        let batch = watch.wait(COOLOFF, MAX_WAIT, Duration::from_millis(200), &stop);
        assert!(batch.is_empty());

        // Stopped from another thread while waiting for an hour.
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::SeqCst);
            })
        };
        let started = Instant::now();
        let batch = watch.wait(COOLOFF, MAX_WAIT, Duration::from_secs(3600), &stop);
        stopper.join().unwrap();
        assert!(batch.is_empty());
        assert!(started.elapsed() < PATIENCE);

        // A stop while changes wait hands them out at once.
        write(&dir.path().join("f"), "1");
        while watch.held() == 0 {
            thread::sleep(Duration::from_millis(10));
        }
        let batch = watch.wait(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            &stop,
        );
        assert_eq!(batch.paths, paths(&["f"]));
    }

    #[test]
    fn twenty_thousand_events_hold_only_the_paths_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let watch = watch(root);
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();

        // Each write is several events (create or modify, open, close).
        for round in 0..2000 {
            for name in &names {
                write(&root.join(name), &round.to_string());
            }
            if round % 100 == 0 {
                assert!(watch.held() <= names.len());
            }
        }
        let expected: BTreeSet<RelPath> = names.iter().map(|name| p(name)).collect();
        let batch = gather(&watch, |batch| batch.paths == expected);
        assert_eq!(batch.paths, expected);
        assert_eq!(watch.held(), 0);
    }

    #[test]
    fn too_many_dirty_paths_turn_into_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        let watch = Watch::start_with_limit(root, |_| false, 50).unwrap();
        for i in 0..100 {
            write(&root.join(format!("d/f{i}")), "1");
        }
        let batch = gather(&watch, |batch| batch.rescan.is_some());
        let reason = batch.rescan.unwrap();
        assert!(reason.contains("more than 50 paths"), "{reason}");
        assert!(batch.paths.is_empty() && batch.trees.is_empty() && !batch.rewatch);

        // The next batch starts afresh.
        while !watch
            .wait(COOLOFF, MAX_WAIT, COOLOFF, &AtomicBool::new(false))
            .is_empty()
        {}
        write(&root.join("after"), "1");
        let batch = gather(&watch, has_paths(&["after"]));
        assert_eq!(batch.paths, paths(&["after"]));
        assert!(batch.rescan.is_none());
    }

    #[test]
    fn a_kernel_queue_overflow_turns_into_a_rescan() {
        let limit: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(usize::MAX);
        if limit > 100_000 {
            eprintln!("skipped: max_queued_events is {limit}, too many files to make");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let watch = watch(root);

        // Holding the batch blocks notify's thread in the handler, so the
        // kernel's queue fills: each new file is at least three events
        // (create, open, close).
        let held = watch.shared.lock();
        for i in 0..limit / 2 + 1000 {
            write(&root.join(format!("f{i}")), "");
        }
        drop(held);

        let batch = gather(&watch, |batch| batch.rescan.is_some());
        let reason = batch.rescan.unwrap();
        assert!(
            reason.contains("queue of change events overflowed"),
            "{reason}"
        );
        assert!(!batch.rewatch);
    }

    #[test]
    fn the_root_moved_or_deleted_turns_into_a_rescan_and_rewatch() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let watch = watch(&root);
        fs::rename(&root, dir.path().join("elsewhere")).unwrap();
        let batch = gather(&watch, |batch| batch.rescan.is_some());
        assert!(batch.rescan.unwrap().contains("was moved or deleted"));
        assert!(batch.rewatch);

        fs::create_dir(&root).unwrap();
        let watch = super::tests::watch(&root);
        fs::remove_dir(&root).unwrap();
        let batch = gather(&watch, |batch| batch.rescan.is_some());
        assert!(batch.rescan.unwrap().contains("was moved or deleted"));
        assert!(batch.rewatch);
    }

    #[test]
    fn a_missing_root_cannot_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let error = Watch::start(&dir.path().join("missing"), |_| false)
            .err()
            .unwrap();
        assert!(matches!(error, WatchError::Root { .. }), "{error}");
    }

    #[test]
    fn a_lost_watch_asks_for_a_rescan_and_a_new_watch() {
        let shared = Arc::new(Shared {
            gathering: Mutex::new(Gathering::new(MAX_DIRTY_PATHS)),
            changed: Condvar::new(),
        });
        let mut recorder = Recorder {
            root: PathBuf::from("/nowhere"),
            ignore: Box::new(|_| false),
            shared: Arc::clone(&shared),
        };
        recorder.handle_event(Ok(
            Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ));
        let batch = shared.lock().take();
        assert!(batch.rescan.unwrap().contains("overflowed") && !batch.rewatch);

        // What notify reports when the watch limit stops it from watching
        // a new directory.
        let error = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        recorder.handle_event(Err(error));
        let batch = shared.lock().take();
        let reason = batch.rescan.unwrap();
        assert!(reason.contains("fs.inotify.max_user_watches"), "{reason}");
        assert!(batch.rewatch);
    }

    // The folding rules on their own, without a filesystem.

    fn gathered(changes: &[(&str, Change)]) -> Batch {
        let mut gathering = Gathering::new(MAX_DIRTY_PATHS);
        for (path, change) in changes {
            gathering.touch(Instant::now());
            gathering.record(p(path), *change);
        }
        gathering.take()
    }

    #[test]
    fn a_gone_directory_covers_what_was_below_it() {
        use Change::*;
        let batch = gathered(&[
            ("a/x", Gone),
            ("a/sub/y", Entry),
            ("a/new", Tree),
            ("a.txt", Entry),
            ("a", Gone),
            ("a/late", Entry),
            ("ab", Entry),
        ]);
        assert_eq!(batch.paths, paths(&["a", "a.txt", "ab"]));
        assert!(batch.trees.is_empty());
    }

    #[test]
    fn a_new_tree_covers_what_is_below_it_but_not_a_later_delete_of_itself() {
        use Change::*;
        let batch = gathered(&[("t/x", Entry), ("t", Tree), ("t/y", Entry), ("t", Entry)]);
        assert_eq!(batch.trees, paths(&["t"]));
        assert!(batch.paths.is_empty());

        let batch = gathered(&[("t", Tree), ("t", Gone), ("t", Tree), ("t/z", Gone)]);
        assert_eq!(batch.trees, paths(&["t"]));
        assert_eq!(batch.paths, paths(&["t"]));
    }

    #[test]
    fn a_batch_closes_after_the_cooloff_or_the_max_wait() {
        let mut gathering = Gathering::new(MAX_DIRTY_PATHS);
        assert_eq!(gathering.closes_at(COOLOFF, MAX_WAIT), None);
        let first = Instant::now();
        assert!(gathering.touch(first));
        let last = first + Duration::from_secs(1);
        assert!(!gathering.touch(last));
        let second = Duration::from_secs(1);
        assert_eq!(
            gathering.closes_at(second, 10 * second),
            Some(last + second)
        );
        assert_eq!(
            gathering.closes_at(second, second / 2),
            Some(first + second / 2)
        );
        gathering.take();
        assert_eq!(gathering.closes_at(second, second), None);
    }
}
