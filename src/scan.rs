//! Walking a root: a parallel directory walk that stats every entry the
//! filters include and reads no file content (only `--checksum` hashes files
//! as it goes; otherwise hashing is separate and only done for the files that
//! need it). Never writes anything.
//!
//! The walk hands out its entries one at a time, in byte order of path: the
//! order the snapshot's rows come in, so a scan is merged with the snapshot
//! without either being held whole. Byte order is not depth-first order:
//! `a.b` sorts before `a/b` (`.` is below `/`), so the contents of a
//! directory `a` come after its siblings `a!` … `a.z` and before `a0`. Each
//! directory's listing is sorted with the contents of a subdirectory `x`
//! standing at the key `x/`, which is exactly where byte order puts them;
//! the snapshot keeps its plain byte order (no second sort key, no schema
//! change).
//!
//! Directories are listed on a few threads, lowest key first, at most about
//! [`LOOKAHEAD`] entries ahead of the consumer; when the consumer needs a
//! listing no thread has started, it lists the directory itself. Memory is
//! so bounded by the lookahead and the depth of the tree (plus the largest
//! single directory), not by the size of the tree.
//!
//! [`DiskTree`] answers what the walk would hand out at a few given paths
//! (and below a few given directories) without walking anything else: the
//! disk side of a scan of the dirty paths only.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::filter::Filters;
use crate::model::{Entry, Hash, Kind, Mtime, Preserve, RelPath};

/// What to do with symbolic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LinkMode {
    /// Replicate links as links.
    #[default]
    Keep,
    /// Sync what the link points to, as if it were there.
    Follow,
    /// Leave links out entirely, on both sides.
    Skip,
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub filters: Filters,
    pub links: LinkMode,
    pub preserve: Preserve,
    /// Hash every file as it is found (`--checksum`: content decides).
    pub hash_files: bool,
}

/// One item of a walk, in byte order of path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    Entry(Entry),
    /// A directory that could not be listed (at all, or only in part): what
    /// lies below it is unknown, so nothing there may be taken as deleted.
    /// It comes where the directory's contents would start (`dir/`).
    Unreadable {
        dir: RelPath,
        reason: String,
    },
}

impl Scanned {
    /// Where this item stands against `path` in the walk's order.
    pub fn cmp_path(&self, path: &RelPath) -> Ordering {
        match self {
            Scanned::Entry(entry) => entry.path.cmp(path),
            // Before the path it equals (only the root's marker can).
            Scanned::Unreadable { dir, .. } => {
                cmp_keys(dir.as_bytes(), true, path.as_bytes(), false).then(Ordering::Less)
            }
        }
    }

    /// Where this item stands against `other` in the walk's order.
    pub fn cmp_item(&self, other: &Scanned) -> Ordering {
        let ((a, a_below), (b, b_below)) = (self.key(), other.key());
        cmp_keys(a, a_below, b, b_below)
    }

    fn key(&self) -> (&[u8], bool) {
        match self {
            Scanned::Entry(entry) => (entry.path.as_bytes(), false),
            Scanned::Unreadable { dir, .. } => (dir.as_bytes(), true),
        }
    }
}

/// Byte order of two walk keys: a path, or with `below` the place where
/// the contents of a directory start (its path and `/`; for the root,
/// before everything).
fn cmp_keys(a: &[u8], a_below: bool, b: &[u8], b_below: bool) -> Ordering {
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then_with(|| {
        let slash = |path: &[u8], below: bool| (below && !path.is_empty()).then_some(&b'/');
        let rest_a = a[n..].iter().chain(slash(a, a_below));
        let rest_b = b[n..].iter().chain(slash(b, b_below));
        rest_a.cmp(rest_b)
    })
}

/// What a walk found besides its entries.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Paths skipped on purpose (special files, dangling links followed).
    pub warnings: Vec<String>,
    /// Temporary files (`.snapsync-tmp-*`) found, perhaps left by a killed run.
    pub temps: Vec<PathBuf>,
}

/// How close to the moment of its scan a file's mtime makes its stat
/// untrustworthy: file times come from a clock that ticks every few
/// milliseconds, so two writes within one tick look alike.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// About how many entries the listing threads may hold that the consumer
/// has not taken yet: enough to keep them busy, small beside a tree of
/// millions (an entry with its path is about 200 bytes).
pub const LOOKAHEAD: usize = 32 * 1024;

/// Walks `root` (which must be a readable directory) and hands `consume`
/// its entries, in byte order of path, as an iterator; returns what
/// `consume` returned and what the walk found besides.
pub fn scan_root<R>(
    root: &Path,
    options: &ScanOptions,
    consume: impl FnOnce(&mut Walk) -> R,
) -> std::io::Result<(R, ScanReport)> {
    scan_with_lookahead(root, options, LOOKAHEAD, consume)
}

fn scan_with_lookahead<R>(
    root: &Path,
    options: &ScanOptions,
    lookahead: usize,
    consume: impl FnOnce(&mut Walk) -> R,
) -> std::io::Result<(R, ScanReport)> {
    let started = std::time::SystemTime::now();
    let meta = fs::metadata(root)?;
    fs::read_dir(root)?;
    let start = Start {
        dir: RelPath::root(),
        ancestors: vec![(meta.dev(), meta.ino())],
    };
    Ok(walk_below(
        root,
        vec![start],
        options,
        racy_cutoff(started),
        lookahead,
        consume,
    ))
}

/// A directory a walk starts from, with the device and inode of it and of
/// every directory above it up to the root.
struct Start {
    dir: RelPath,
    ancestors: Vec<(u64, u64)>,
}

/// Walks below each of `starts` (disjoint directories: none below another)
/// at once, handing `consume` what lies below them (not the directories
/// themselves) in byte order of path.
fn walk_below<R>(
    root: &Path,
    mut starts: Vec<Start>,
    options: &ScanOptions,
    racy_cutoff: Mtime,
    lookahead: usize,
    consume: impl FnOnce(&mut Walk) -> R,
) -> (R, ScanReport) {
    starts.sort_by(|a, b| cmp_keys(a.dir.as_bytes(), true, b.dir.as_bytes(), true));
    let lister = Lister {
        options,
        racy_cutoff,
        lookahead,
        next_id: AtomicU64::new(starts.len() as u64),
        queue: Mutex::new(Queue::default()),
        more_work: Condvar::new(),
        listed: Condvar::new(),
        warnings: Mutex::new(Vec::new()),
        temps: Mutex::new(Vec::new()),
    };
    let mut contents = Vec::with_capacity(starts.len());
    for (id, start) in (0u64..).zip(starts) {
        contents.push(Event::Contents {
            path: start.dir.clone(),
            id,
        });
        lister.queue().pending.push(Job {
            id,
            abs: start.dir.under(root),
            rel: start.dir,
            ancestors: start.ancestors,
        });
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let result = std::thread::scope(|scope| {
        for _ in 0..threads {
            std::thread::Builder::new()
                .name("snapsync-scan".into())
                .spawn_scoped(scope, || lister.work())
                .expect("a scan thread");
        }
        // The listing threads stop when the consumer is done, even early
        // (or panicking).
        let _stop = StopOnDrop(&lister);
        let mut walk = Walk {
            lister: &lister,
            open: vec![contents.into_iter()],
        };
        consume(&mut walk)
    });
    let mut warnings = lister.warnings.into_inner().unwrap_or_default();
    warnings.sort();
    let report = ScanReport {
        warnings,
        temps: lister.temps.into_inner().unwrap_or_default(),
    };
    (result, report)
}

/// The entries of a walk, in byte order of path.
pub struct Walk<'w> {
    lister: &'w Lister<'w>,
    /// The listings being handed out, outermost first.
    open: Vec<std::vec::IntoIter<Event>>,
}

impl Walk<'_> {
    /// Opens the listing of directory `id`; says whether it could not be
    /// listed (in full).
    fn descend(&mut self, id: u64) -> Option<(RelPath, String)> {
        let listing = self.lister.take(id);
        self.open.push(listing.events.into_iter());
        listing.error
    }
}

struct StopOnDrop<'a>(&'a Lister<'a>);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Iterator for Walk<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        loop {
            let events = self.open.last_mut()?;
            match events.next() {
                None => {
                    self.open.pop();
                }
                Some(Event::Entry(entry)) => return Some(Scanned::Entry(entry)),
                Some(Event::Contents { id, .. }) => {
                    if let Some((dir, reason)) = self.descend(id) {
                        return Some(Scanned::Unreadable { dir, reason });
                    }
                }
            }
        }
    }
}

/// One directory to list.
struct Job {
    id: u64,
    abs: PathBuf,
    rel: RelPath,
    /// Device and inode of this directory and those above it: a followed
    /// link leading back to one of them would never end.
    ancestors: Vec<(u64, u64)>,
}

/// Jobs are taken lowest key first (a max-heap, so reversed): the consumer
/// needs directories in that order.
impl Ord for Job {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_keys(other.rel.as_bytes(), true, self.rel.as_bytes(), true)
    }
}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        self.rel == other.rel
    }
}

impl Eq for Job {}

/// One directory's listing, sorted by walk key.
struct Listing {
    events: Vec<Event>,
    /// The directory could not be listed (in full), and why.
    error: Option<(RelPath, String)>,
}

enum Event {
    Entry(Entry),
    /// The contents of subdirectory `path`: listing `id`.
    Contents {
        path: RelPath,
        id: u64,
    },
}

impl Event {
    fn cmp_key(&self, other: &Event) -> Ordering {
        fn key(event: &Event) -> (&[u8], bool) {
            match event {
                Event::Entry(entry) => (entry.path.as_bytes(), false),
                Event::Contents { path, .. } => (path.as_bytes(), true),
            }
        }
        let ((a, a_below), (b, b_below)) = (key(self), key(other));
        cmp_keys(a, a_below, b, b_below)
    }
}

#[derive(Default)]
struct Queue {
    /// Directories found and not yet being listed.
    pending: BinaryHeap<Job>,
    /// Listings done and not yet taken by the consumer.
    done: HashMap<u64, Listing>,
    /// Entries in `done`.
    held: usize,
    /// Listings in progress.
    running: usize,
    /// The consumer waits for a listing: list regardless of the lookahead.
    consumer_waiting: bool,
    stopped: bool,
}

/// The walk's shared state: the listing threads and the consumer meet here.
struct Lister<'a> {
    options: &'a ScanOptions,
    /// Files with an mtime from here on are racy.
    racy_cutoff: Mtime,
    lookahead: usize,
    next_id: AtomicU64,
    queue: Mutex<Queue>,
    /// Signalled when there may be a job a listing thread can take.
    more_work: Condvar,
    /// Signalled when a listing is done.
    listed: Condvar,
    warnings: Mutex<Vec<String>>,
    temps: Mutex<Vec<PathBuf>>,
}

impl Lister<'_> {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap()
    }

    /// A listing thread: takes the lowest pending directory while the
    /// consumer is not too far behind, until nothing is left to list.
    fn work(&self) {
        let mut queue = self.queue();
        loop {
            if queue.stopped || (queue.pending.is_empty() && queue.running == 0) {
                self.more_work.notify_all();
                return;
            }
            let may_list = queue.held < self.lookahead || queue.consumer_waiting;
            match may_list.then(|| queue.pending.pop()).flatten() {
                Some(job) => {
                    queue.running += 1;
                    drop(queue);
                    let (listing, found) = self.list(&job);
                    queue = self.queue();
                    queue.held += listing.events.len();
                    queue.done.insert(job.id, listing);
                    self.finished(&mut queue, found);
                    self.listed.notify_one();
                }
                None => queue = self.more_work.wait(queue).unwrap(),
            }
        }
    }

    /// Ends a listing: its subdirectories become jobs.
    fn finished(&self, queue: &mut Queue, found: Vec<Job>) {
        queue.running -= 1;
        let wake = !found.is_empty() || (queue.pending.is_empty() && queue.running == 0);
        queue.pending.extend(found);
        if wake {
            self.more_work.notify_all();
        }
    }

    /// The listing of directory `id`, for the consumer: taken when done,
    /// listed here when no thread has started it, else waited for.
    fn take(&self, id: u64) -> Listing {
        let mut queue = self.queue();
        loop {
            if let Some(listing) = queue.done.remove(&id) {
                let was_full = queue.held >= self.lookahead;
                queue.held -= listing.events.len();
                queue.consumer_waiting = false;
                if was_full && queue.held < self.lookahead {
                    self.more_work.notify_all();
                }
                return listing;
            }
            if queue.pending.peek().is_some_and(|job| job.id == id) {
                let job = queue.pending.pop().expect("peeked");
                queue.running += 1;
                drop(queue);
                let (listing, found) = self.list(&job);
                let mut queue = self.queue();
                queue.consumer_waiting = false;
                self.finished(&mut queue, found);
                return listing;
            }
            queue.consumer_waiting = true;
            self.more_work.notify_all();
            queue = self.listed.wait(queue).unwrap();
        }
    }

    fn stop(&self) {
        self.queue().stopped = true;
        self.more_work.notify_all();
    }

    fn warn(&self, message: String) {
        self.warnings.lock().unwrap().push(message);
    }

    /// Lists and stats one directory. Returns its listing, sorted by walk
    /// key, and its subdirectories to list.
    fn list(&self, job: &Job) -> (Listing, Vec<Job>) {
        let mut events = Vec::new();
        let mut found = Vec::new();
        let mut error = None;
        match fs::read_dir(&job.abs) {
            Err(e) => error = Some(e.to_string()),
            Ok(reader) => {
                for item in reader {
                    let item = match item {
                        Ok(item) => item,
                        Err(e) => {
                            error = Some(e.to_string());
                            break;
                        }
                    };
                    let name = item.file_name();
                    if name.as_bytes().starts_with(crate::filter::TEMP_PREFIX) {
                        self.temps.lock().unwrap().push(item.path());
                        continue;
                    }
                    let path = match job.rel.join(name.as_bytes()) {
                        Ok(path) => path,
                        Err(e) => {
                            self.warn(format!("skipping {e}"));
                            continue;
                        }
                    };
                    let abs = item.path();
                    let Some(entry) = self.stat_entry(&item, &abs, path) else {
                        continue;
                    };
                    if !self.options.filters.includes_entry(&entry.path, entry.kind) {
                        continue;
                    }
                    if entry.kind == Kind::Dir {
                        let id = (entry.dev, entry.ino);
                        if job.ancestors.contains(&id) {
                            self.warn(format!(
                                "skipping {}: a followed link leads back to a directory above it",
                                entry.path
                            ));
                            continue;
                        }
                        let mut ancestors = job.ancestors.clone();
                        ancestors.push(id);
                        let child = Job {
                            id: self.next_id.fetch_add(1, AtomicOrdering::Relaxed),
                            abs,
                            rel: entry.path.clone(),
                            ancestors,
                        };
                        events.push(Event::Contents {
                            path: child.rel.clone(),
                            id: child.id,
                        });
                        found.push(child);
                    }
                    events.push(Event::Entry(entry));
                }
            }
        }
        events.sort_unstable_by(Event::cmp_key);
        let listing = Listing {
            events,
            error: error.map(|reason| (job.rel.clone(), reason)),
        };
        (listing, found)
    }

    fn stat_entry(&self, item: &fs::DirEntry, abs: &Path, path: RelPath) -> Option<Entry> {
        // Stat relative to the open directory (no walk of the whole path),
        // not following a link.
        let meta = match item.metadata() {
            Ok(meta) => meta,
            // Vanished between the listing and the stat: not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.warn(format!("skipping {path}: {e}"));
                return None;
            }
        };
        entry_from_stat(path, abs, meta, self.options, self.racy_cutoff, &mut |w| {
            self.warn(w)
        })
    }
}

/// The entry a walk hands out for `path` (at `abs`), given its own
/// metadata (not following a link): links followed or kept as the options
/// say, special files skipped, racy files flagged, files hashed with
/// `--checksum`. `None` (after a warning) when it cannot be synced.
fn entry_from_stat(
    path: RelPath,
    abs: &Path,
    mut meta: fs::Metadata,
    options: &ScanOptions,
    racy_cutoff: Mtime,
    warn: &mut dyn FnMut(String),
) -> Option<Entry> {
    if meta.file_type().is_symlink() {
        match options.links {
            LinkMode::Skip => return None,
            LinkMode::Keep => {}
            LinkMode::Follow => match fs::metadata(abs) {
                Ok(target) => meta = target,
                Err(e) => {
                    warn(format!("skipping {path}: link cannot be followed ({e})"));
                    return None;
                }
            },
        }
    }
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        Kind::File
    } else if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        warn(format!("skipping {path}: {what} cannot be synced"));
        return None;
    };
    let link_target = if kind == Kind::Symlink {
        match fs::read_link(abs) {
            Ok(target) => Some(target.as_os_str().as_bytes().to_vec()),
            Err(e) => {
                warn(format!("skipping {path}: {e}"));
                return None;
            }
        }
    } else {
        None
    };
    let xattr_hash = if options.preserve.any_xattrs() {
        match xattrs_hash(abs, kind, options.preserve) {
            Ok(hash) => Some(hash),
            Err(e) => {
                warn(format!("cannot read extended attributes of {path}: {e}"));
                None
            }
        }
    } else {
        None
    };
    let mut entry = entry_from_metadata(path, kind, &meta, link_target, xattr_hash);
    if kind == Kind::File {
        entry.racy = entry.mtime >= racy_cutoff;
        if options.hash_files {
            entry.hash = hash_file(abs).ok();
        }
    }
    Some(entry)
}

/// What the walk would hand out at one path, asked about by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Entry(Entry),
    /// The walk would not hand out anything there: nothing is there, or a
    /// directory above it is missing, is not a directory the walk enters
    /// (a kept link, say) or is excluded.
    Absent,
    /// A directory above it cannot be listed: what lies there is unknown.
    Unknown {
        dir: RelPath,
        reason: String,
    },
}

/// A tree asked about path by path, as a scan of only the dirty paths does
/// (see [`crate::changes::diff_dirty`]): it answers exactly what a full
/// walk would hand out at those paths, without walking anything else.
pub trait TreeNow {
    /// What the walk would hand out at `path` (never the root itself).
    fn entry(&mut self, path: &RelPath) -> Found;
    /// What the walk would hand out below each of `dirs` (disjoint
    /// directories, each handed out by [`TreeNow::entry`]), in byte order
    /// of path.
    fn walk(&mut self, dirs: &[RelPath]) -> Vec<Scanned>;
}

/// Whether the walk reaches into a directory, and if so the device and
/// inode of it and of every directory above it.
#[derive(Debug, Clone)]
enum Reach {
    Listed(Vec<(u64, u64)>),
    Absent,
    Unknown { dir: RelPath, reason: String },
}

/// [`TreeNow`] on disk: stats each path asked about, checking each
/// directory above it (once per `DiskTree`) as the walk would have reached
/// it: a directory, included, not a link leading back up, listable. Make
/// a fresh one for each scan: it remembers what it found.
pub struct DiskTree<'a> {
    root: &'a Path,
    options: &'a ScanOptions,
    racy_cutoff: Mtime,
    reach: HashMap<RelPath, Reach>,
    report: ScanReport,
}

impl<'a> DiskTree<'a> {
    /// `root` must be a readable directory, as for [`scan_root`].
    pub fn new(root: &'a Path, options: &'a ScanOptions) -> std::io::Result<Self> {
        let racy_cutoff = racy_cutoff(std::time::SystemTime::now());
        let meta = fs::metadata(root)?;
        fs::read_dir(root)?;
        let mut tree = DiskTree::missing(root, options);
        tree.racy_cutoff = racy_cutoff;
        tree.reach.insert(
            RelPath::root(),
            Reach::Listed(vec![(meta.dev(), meta.ino())]),
        );
        Ok(tree)
    }

    /// A root that does not exist (a target in a dry run): nothing is there.
    pub fn missing(root: &'a Path, options: &'a ScanOptions) -> Self {
        DiskTree {
            root,
            options,
            racy_cutoff: Mtime::default(),
            reach: HashMap::from([(RelPath::root(), Reach::Absent)]),
            report: ScanReport::default(),
        }
    }

    /// What the walks and stats found besides their entries.
    pub fn finish(mut self) -> ScanReport {
        self.report.warnings.sort();
        self.report.warnings.dedup();
        self.report
    }

    /// How the walk reaches `dir` (cached).
    fn reach(&mut self, dir: &RelPath) -> Reach {
        if let Some(known) = self.reach.get(dir) {
            return known.clone();
        }
        let parent = dir.parent().expect("the root is always known");
        let reach = match self.entry(dir) {
            Found::Entry(entry) if entry.kind == Kind::Dir => {
                match fs::read_dir(dir.under(self.root)) {
                    Ok(_) => {
                        let Reach::Listed(mut ancestors) = self.reach(&parent) else {
                            unreachable!("an entry was found in it")
                        };
                        ancestors.push((entry.dev, entry.ino));
                        Reach::Listed(ancestors)
                    }
                    Err(e) => Reach::Unknown {
                        dir: dir.clone(),
                        reason: e.to_string(),
                    },
                }
            }
            Found::Entry(_) | Found::Absent => Reach::Absent,
            Found::Unknown { dir, reason } => Reach::Unknown { dir, reason },
        };
        self.reach.insert(dir.clone(), reach.clone());
        reach
    }
}

impl TreeNow for DiskTree<'_> {
    fn entry(&mut self, path: &RelPath) -> Found {
        let Some(parent) = path.parent() else {
            return Found::Absent;
        };
        let ancestors = match self.reach(&parent) {
            Reach::Listed(ancestors) => ancestors,
            Reach::Absent => return Found::Absent,
            Reach::Unknown { dir, reason } => return Found::Unknown { dir, reason },
        };
        let abs = path.under(self.root);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Found::Absent
            }
            Err(e) => {
                self.report.warnings.push(format!("skipping {path}: {e}"));
                return Found::Absent;
            }
        };
        let warnings = &mut self.report.warnings;
        let entry = entry_from_stat(
            path.clone(),
            &abs,
            meta,
            self.options,
            self.racy_cutoff,
            &mut |w| warnings.push(w),
        );
        let Some(entry) = entry else {
            return Found::Absent;
        };
        if !self.options.filters.includes_entry(&entry.path, entry.kind) {
            return Found::Absent;
        }
        if entry.kind == Kind::Dir && ancestors.contains(&(entry.dev, entry.ino)) {
            self.report.warnings.push(format!(
                "skipping {path}: a followed link leads back to a directory above it"
            ));
            return Found::Absent;
        }
        Found::Entry(entry)
    }

    fn walk(&mut self, dirs: &[RelPath]) -> Vec<Scanned> {
        let mut starts = Vec::new();
        let mut items = Vec::new();
        for dir in dirs {
            match self.reach(dir) {
                Reach::Listed(ancestors) => starts.push(Start {
                    dir: dir.clone(),
                    ancestors,
                }),
                Reach::Absent => {}
                Reach::Unknown { dir, reason } => items.push(Scanned::Unreadable { dir, reason }),
            }
        }
        if starts.is_empty() {
            return items;
        }
        let (walked, report) = walk_below(
            self.root,
            starts,
            self.options,
            self.racy_cutoff,
            LOOKAHEAD,
            |walk| walk.collect::<Vec<_>>(),
        );
        self.report.warnings.extend(report.warnings);
        self.report.temps.extend(report.temps);
        items.extend(walked);
        items.sort_by(Scanned::cmp_item);
        items
    }
}

/// Files whose mtime is within [`RACY_WINDOW`] of the scan's start, or
/// after it, are racy.
fn racy_cutoff(started: std::time::SystemTime) -> Mtime {
    let cutoff = started
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    Mtime {
        sec: cutoff.as_secs() as i64,
        nsec: cutoff.subsec_nanos(),
    }
}

pub fn entry_from_metadata(
    path: RelPath,
    kind: Kind,
    meta: &fs::Metadata,
    link_target: Option<Vec<u8>>,
    xattr_hash: Option<Hash>,
) -> Entry {
    Entry {
        path,
        kind,
        size: if kind == Kind::File { meta.size() } else { 0 },
        mtime: Mtime {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec() as u32,
        },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        dev: meta.dev(),
        ino: meta.ino(),
        hash: None,
        link_target: link_target.map(Vec::into_boxed_slice),
        xattr_hash: xattr_hash.map(Box::new),
        racy: false,
    }
}

/// Reads the extended attributes of `path` that `preserve` carries (see
/// [`Preserve::carries_xattr`]; a link's own, a file's or directory's
/// through links), sorted by name.
pub fn read_xattrs(
    path: &Path,
    kind: Kind,
    preserve: Preserve,
) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut pairs = Vec::new();
    let names: Vec<_> = if kind == Kind::Symlink {
        xattr::list(path)?.collect()
    } else {
        xattr::list_deref(path)?.collect()
    };
    for name in names {
        if !preserve.carries_xattr(name.as_bytes()) {
            continue;
        }
        let value = if kind == Kind::Symlink {
            xattr::get(path, &name)?
        } else {
            xattr::get_deref(path, &name)?
        };
        if let Some(value) = value {
            pairs.push((name.as_bytes().to_vec(), value));
        }
    }
    pairs.sort();
    Ok(pairs)
}

fn xattrs_hash(path: &Path, kind: Kind, preserve: Preserve) -> std::io::Result<Hash> {
    Ok(crate::apply::xattr_pairs_hash(&read_xattrs(
        path, kind, preserve,
    )?))
}

/// BLAKE3 of a file's content.
pub fn hash_file(path: &Path) -> std::io::Result<Hash> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 128 * 1024]);
    }
    let mut file = fs::File::open(path)?;
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        let mut hasher = blake3::Hasher::new();
        loop {
            let n = file.read(&mut buf[..])?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(*hasher.finalize().as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(items: &[Scanned]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Scanned::Entry(entry) => entry.path.to_string(),
                Scanned::Unreadable { dir, .. } => format!("unreadable {dir}"),
            })
            .collect()
    }

    /// A tree whose names sort differently by bytes and depth first.
    fn tricky_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "a.b", "a-/x", "a0", "ab/a/b.c"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for f in [
            "a/b.c", "a/b/c/d", "a/b/c.d", "a/b-", "a!", "a.b/a", "a.b.c", "a-/x/y", "a0/z",
            "ab/a.b", "b",
        ] {
            fs::write(dir.path().join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("a", dir.path().join("a.link")).unwrap();
        dir
    }

    fn walk_all(root: &Path, lookahead: usize) -> Vec<Scanned> {
        let (items, _) = scan_with_lookahead(root, &ScanOptions::default(), lookahead, |walk| {
            walk.collect::<Vec<_>>()
        })
        .unwrap();
        items
    }

    #[test]
    fn walk_comes_in_byte_order_of_path() {
        let dir = tricky_tree();
        for lookahead in [0, 1, 3, LOOKAHEAD] {
            let got = paths(&walk_all(dir.path(), lookahead));
            let mut expected: Vec<Vec<u8>> = got.iter().map(|p| p.as_bytes().to_vec()).collect();
            expected.sort();
            let expected: Vec<String> = expected
                .into_iter()
                .map(|p| String::from_utf8(p).unwrap())
                .collect();
            assert_eq!(got, expected, "lookahead {lookahead}");
            assert_eq!(got.len(), 22, "{got:?}");
            // `a.b` and `a.b.c` come before the contents of `a`, `a0` after.
            let at = |p: &str| got.iter().position(|g| g == p).unwrap();
            assert!(at("a.b.c") < at("a/b") && at("a/b/c/d") < at("a0"));
        }
    }

    #[test]
    fn key_order_puts_directory_contents_after_dotted_siblings() {
        let order = |a: &str, a_below, b: &str, b_below| {
            cmp_keys(a.as_bytes(), a_below, b.as_bytes(), b_below)
        };
        assert_eq!(order("a", true, "a.b", false), Ordering::Greater);
        assert_eq!(order("a", true, "a/b", false), Ordering::Less);
        assert_eq!(order("a", true, "a0", false), Ordering::Less);
        assert_eq!(order("a", true, "a", false), Ordering::Greater);
        assert_eq!(order("a", true, "a.b", true), Ordering::Greater);
        assert_eq!(order("", true, "a", false), Ordering::Less);
        let marker = Scanned::Unreadable {
            dir: RelPath::root(),
            reason: String::new(),
        };
        assert_eq!(marker.cmp_path(&RelPath::root()), Ordering::Less);
    }

    #[test]
    fn directory_that_cannot_be_listed_is_marked_where_its_contents_start() {
        // With no lookahead the walk lists each directory only when it gets
        // there, so one removed after its entry was handed out cannot be
        // listed: it is reported unreadable, in order, and the walk goes on.
        let dir = tricky_tree();
        let (items, _) = scan_with_lookahead(dir.path(), &ScanOptions::default(), 0, |walk| {
            let mut items = Vec::new();
            for item in walk {
                if matches!(&item, Scanned::Entry(e) if e.path.to_string() == "a") {
                    fs::remove_dir_all(dir.path().join("a")).unwrap();
                }
                items.push(item);
            }
            items
        })
        .unwrap();
        let got = paths(&items);
        let at = |p: &str| got.iter().position(|g| g == p).unwrap();
        assert!(at("a.b.c") < at("unreadable a") && at("unreadable a") < at("a0"));
        assert!(!got.iter().any(|p| p.starts_with("a/")), "{got:?}");
    }

    #[test]
    fn consumer_that_stops_early_ends_the_walk() {
        let dir = tricky_tree();
        let (first, _) = scan_root(dir.path(), &ScanOptions::default(), |walk| {
            walk.take(2).count()
        })
        .unwrap();
        assert_eq!(first, 2);
    }

    #[test]
    fn racy_files_and_checksums_are_marked_as_found() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("new"), b"x").unwrap();
        let options = ScanOptions {
            hash_files: true,
            ..ScanOptions::default()
        };
        let (items, _) = scan_root(dir.path(), &options, |walk| walk.collect::<Vec<_>>()).unwrap();
        let [Scanned::Entry(entry)] = &items[..] else {
            panic!("{items:?}")
        };
        assert!(entry.racy);
        assert_eq!(entry.hash, Some(*blake3::hash(b"x").as_bytes()));
    }

    fn without_racy(items: Vec<Scanned>) -> Vec<Scanned> {
        items
            .into_iter()
            .map(|item| match item {
                Scanned::Entry(entry) => Scanned::Entry(Entry {
                    racy: false,
                    ..entry
                }),
                marker => marker,
            })
            .collect()
    }

    #[test]
    fn disk_tree_answers_what_the_walk_hands_out() {
        let dir = tricky_tree();
        fs::write(dir.path().join("a/.snapsync-tmp-1-2"), b"t").unwrap();
        for links in [LinkMode::Keep, LinkMode::Follow, LinkMode::Skip] {
            let options = ScanOptions {
                links,
                ..ScanOptions::default()
            };
            let (walked, _) =
                scan_root(dir.path(), &options, |walk| walk.collect::<Vec<_>>()).unwrap();
            let walked = without_racy(walked);
            let mut tree = DiskTree::new(dir.path(), &options).unwrap();
            for item in &walked {
                let Scanned::Entry(entry) = item else {
                    panic!("nothing is unreadable here")
                };
                let Found::Entry(found) = tree.entry(&entry.path) else {
                    panic!("{} not found with {links:?}", entry.path)
                };
                assert_eq!(
                    Entry {
                        racy: false,
                        ..found
                    },
                    *entry
                );
            }
            // Not handed out: missing, below a file or a kept link, a
            // temporary file.
            for absent in ["zz", "b/c", "a.link/b.c", "a/.snapsync-tmp-1-2"] {
                let found = tree.entry(&RelPath::new(absent.as_bytes()).unwrap());
                let expected = if links == LinkMode::Follow && absent == "a.link/b.c" {
                    "found"
                } else {
                    "absent"
                };
                let got = if found == Found::Absent {
                    "absent"
                } else {
                    "found"
                };
                assert_eq!(got, expected, "{absent} with {links:?}");
            }
            // Walking below two directories hands out what the whole walk
            // has below them, in the walk's order.
            let dirs = [RelPath::new(b"a").unwrap(), RelPath::new(b"a-").unwrap()];
            let below: Vec<Scanned> = walked
                .iter()
                .filter(|item| {
                    let Scanned::Entry(e) = item else {
                        return false;
                    };
                    dirs.iter().any(|d| e.path.starts_with(d) && &e.path != d)
                })
                .cloned()
                .collect();
            assert_eq!(without_racy(tree.walk(&dirs)), below, "{links:?}");
        }
    }

    #[test]
    fn disk_tree_reports_what_it_cannot_list() {
        let dir = tricky_tree();
        let options = ScanOptions::default();
        let mut tree = DiskTree::new(dir.path(), &options).unwrap();
        // As if `a/b` could not be listed (running as root, permissions
        // would not stop us).
        tree.reach.insert(
            RelPath::new(b"a/b").unwrap(),
            Reach::Unknown {
                dir: RelPath::new(b"a/b").unwrap(),
                reason: "denied".into(),
            },
        );
        let below = tree.entry(&RelPath::new(b"a/b/c/d").unwrap());
        assert!(matches!(below, Found::Unknown { dir, .. } if dir.to_string() == "a/b"));
        let walked = tree.walk(&[RelPath::new(b"a/b").unwrap()]);
        assert!(
            matches!(&walked[..], [Scanned::Unreadable { .. }]),
            "{walked:?}"
        );
    }
}
