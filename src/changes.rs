//! Change sets: what changed in one root since its snapshot, found by
//! comparing a fresh scan with the snapshot rows, or only the paths a
//! watcher reported ([`diff_dirty`], through the [`TreeNow`] and
//! [`SnapshotRows`] it is given). Pure.
//!
//! Renames and moves are recognised here, on the endpoint that owns the
//! inode numbers: same device and inode (and, for files, the same size and
//! mtime), or failing that the same content hash.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use crate::filter::Filters;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::scan::{Found, LinkMode, Scanned, TreeNow};

/// One path whose state differs from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub path: RelPath,
    /// The snapshot row (`None`: the path is new).
    pub before: Option<Entry>,
    /// The path now (`None`: it is gone).
    pub after: Option<Entry>,
}

/// What a change did, in the words users see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Deleted,
    Modified,
    Metadata,
    TypeChanged,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Modified => "modified",
            ChangeKind::Metadata => "metadata",
            ChangeKind::TypeChanged => "type-changed",
        }
    }
}

impl Change {
    pub fn kind(&self, preserve: Preserve) -> ChangeKind {
        match (&self.before, &self.after) {
            (None, _) => ChangeKind::Created,
            (_, None) => ChangeKind::Deleted,
            (Some(b), Some(a)) => match a.compare(b, preserve) {
                crate::model::Difference::Kind => ChangeKind::TypeChanged,
                crate::model::Difference::Metadata | crate::model::Difference::Same => {
                    ChangeKind::Metadata
                }
                crate::model::Difference::Content => ChangeKind::Modified,
            },
        }
    }
}

/// A path that moved within the root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rename {
    pub from: RelPath,
    pub to: RelPath,
    pub kind: Kind,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangeSet {
    /// Sorted by path bytes.
    pub changes: Vec<Change>,
    /// Top-most renames only (a renamed directory implies its contents),
    /// shallowest source first.
    pub renames: Vec<Rename>,
    /// Snapshot rows the current filters or link mode no longer cover: they
    /// leave the snapshot and are never taken as deleted.
    pub forgotten: Vec<RelPath>,
    /// Directories that could not be read, with the reason.
    pub unreadable: Vec<(RelPath, String)>,
    /// Number of entries the scan found (a scan of dirty paths: at and
    /// below those paths, the directories above them aside).
    pub files_scanned: u64,
    /// Paths the scan skipped on purpose, for the user to see.
    pub warnings: Vec<String>,
    /// Rows of the snapshot the scan compared with: after a full scan,
    /// those the filters cover; after a scan of dirty paths, all of them,
    /// counted only when asked for (`--max-delete P%`) or when the root
    /// was found emptied.
    pub snapshot_rows: Option<u64>,
    /// The root holds no entry the session syncs, while its snapshot holds
    /// some (a scan of dirty paths looks only when it found a deletion).
    pub emptied: bool,
    /// The root's state directory no longer holds the root id the session
    /// opened with (removed, or the root replaced under a running session):
    /// nothing was scanned.
    pub state_gone: bool,
}

impl ChangeSet {
    pub fn get(&self, path: &RelPath) -> Option<&Change> {
        self.changes
            .binary_search_by(|c| c.path.cmp(path))
            .ok()
            .map(|i| &self.changes[i])
    }
}

/// How to compare a scan with its snapshot.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DiffOptions {
    pub filters: Filters,
    pub links: LinkMode,
    pub preserve: Preserve,
    /// Content decides: both sides' hashes are known and compared.
    pub checksum: bool,
}

/// Compares a scan with the snapshot, both in byte order of path, and keeps
/// only what differs: unchanged entries are dropped as they pass, so neither
/// side is ever held whole. A path that is not in the change set is, as far
/// as the scan can tell, exactly as its snapshot row records it (same kind,
/// identity, size, times, mode and, when preserved, owner and xattrs; below
/// an unreadable directory, assumed so): an endpoint answers later questions
/// about such paths from the snapshot.
pub fn diff_stream(
    snapshot: impl IntoIterator<Item = Entry>,
    scan: impl IntoIterator<Item = Scanned>,
    options: &DiffOptions,
) -> ChangeSet {
    let mut set = ChangeSet::default();
    let mut rows = 0u64;
    let mut snap = snapshot.into_iter().peekable();
    let mut scan = scan.into_iter().peekable();
    loop {
        let order = match (snap.peek(), scan.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(row), Some(item)) => item.cmp_path(&row.path).reverse(),
        };
        match order {
            Ordering::Less => {
                let before = snap.next().expect("peeked");
                let covered = covers(&before, options);
                let under_unreadable = || {
                    set.unreadable
                        .iter()
                        .any(|(dir, _)| before.path.starts_with(dir))
                };
                rows += u64::from(covered);
                if !covered {
                    set.forgotten.push(before.path);
                } else if !under_unreadable() {
                    set.changes.push(Change {
                        path: before.path.clone(),
                        before: Some(before),
                        after: None,
                    });
                }
                // Below an unreadable directory the row stands as recorded.
            }
            Ordering::Greater => match scan.next().expect("peeked") {
                Scanned::Entry(after) => {
                    set.files_scanned += 1;
                    set.changes.push(Change {
                        path: after.path.clone(),
                        before: None,
                        after: Some(after),
                    });
                }
                Scanned::Unreadable { dir, reason } => set.unreadable.push((dir, reason)),
            },
            Ordering::Equal => {
                let before = snap.next().expect("peeked");
                let Some(Scanned::Entry(mut after)) = scan.next() else {
                    unreachable!("only an entry stands at a path")
                };
                rows += 1;
                set.files_scanned += 1;
                if unchanged(&before, &after, options) {
                    continue;
                }
                if after.hash.is_none() && after.same_content_stat(&before) && !before.racy {
                    // Only metadata changed: the content is the recorded one.
                    after.hash = before.hash;
                }
                set.changes.push(Change {
                    path: after.path.clone(),
                    before: Some(before),
                    after: Some(after),
                });
            }
        }
    }
    set.snapshot_rows = Some(rows);
    set.emptied = rows > 0 && set.files_scanned == 0 && set.unreadable.is_empty();
    set
}

/// Read access to the snapshot, as a scan of only the dirty paths needs it.
pub trait SnapshotRows {
    type Error;
    /// The row at `path`, if any.
    fn row(&self, path: &RelPath) -> Result<Option<Entry>, Self::Error>;
    /// Every row strictly below `dir` (all rows, for the root).
    fn rows_under(&self, dir: &RelPath) -> Result<Vec<Entry>, Self::Error>;
}

/// The change set a full scan would give for these paths only: `paths`
/// whose own entry may have changed, and `trees`, directories that
/// appeared, whose whole subtree is compared; and the directory holding
/// each of them (whose mtime changes when an entry is made or removed in
/// it). Every other path is taken to be as its snapshot row records it.
///
/// A path that is, or was, a directory other than the one the snapshot
/// records (a directory deleted, replaced, or made where a file was) is
/// compared whole, like a tree: the rows below it with what is below it
/// now. Paths below such a directory or a tree are covered by it. Rows the
/// filters or link mode do not cover are left out (`forgotten` stays
/// empty: the full scan that came first forgot them). Below a directory
/// that cannot be listed nothing is known, so nothing there changes.
/// Hashing and renames are the caller's, as after [`diff_stream`].
pub fn diff_dirty<S: SnapshotRows>(
    paths: &[RelPath],
    trees: &[RelPath],
    snapshot: &S,
    tree: &mut dyn TreeNow,
    options: &DiffOptions,
) -> Result<ChangeSet, S::Error> {
    // An entry made, removed or renamed changes its directory's mtime,
    // which no watcher reports as a change of that directory's own.
    let parents: Vec<RelPath> = paths
        .iter()
        .chain(trees)
        .filter_map(RelPath::parent)
        .filter(|parent| !parent.is_root())
        .collect();
    // Depth-first, so that what lies below a path comes right after it;
    // a path that is also a tree is taken as the tree.
    let mut dirty: Vec<(&RelPath, bool)> = trees
        .iter()
        .map(|t| (t, true))
        .chain(paths.iter().chain(&parents).map(|p| (p, false)))
        .collect();
    dirty.sort_by(|a, b| a.0.cmp_tree(b.0).then(b.1.cmp(&a.1)));
    dirty.dedup_by(|later, earlier| later.0 == earlier.0);

    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut walks = Vec::new();
    // The last path compared whole: the paths below it are done with it.
    let mut whole: Option<&RelPath> = None;
    for (path, is_tree) in dirty {
        if whole.is_some_and(|dir| path.starts_with(dir)) {
            continue;
        }
        if path.is_root() {
            // Only a tree: the root is no entry of its own.
            if is_tree {
                rows.extend(snapshot.rows_under(path)?);
                walks.push(path.clone());
                whole = Some(path);
            }
            continue;
        }
        let after = match tree.entry(path) {
            Found::Entry(entry) => Some(entry),
            Found::Absent => None,
            Found::Unknown { dir, reason } => {
                items.push(Scanned::Unreadable { dir, reason });
                continue;
            }
        };
        let before = snapshot.row(path)?;
        if is_tree || spans_subtree(before.as_ref(), after.as_ref()) {
            rows.extend(snapshot.rows_under(path)?);
            if after.as_ref().is_some_and(|e| e.kind == Kind::Dir) {
                walks.push(path.clone());
            }
            whole = Some(path);
        }
        rows.extend(before);
        items.extend(after.map(Scanned::Entry));
    }
    items.extend(tree.walk(&walks));

    rows.retain(|row| covers(row, options));
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    rows.dedup_by(|a, b| a.path == b.path);
    items.sort_by(Scanned::cmp_item);
    items.dedup_by(|a, b| a.cmp_item(b) == Ordering::Equal);
    let mut set = diff_stream(rows, items, options);
    // Counted over the dirty paths only, they say nothing of the whole.
    set.snapshot_rows = None;
    set.emptied = false;
    Ok(set)
}

/// True when what stands at a path now and what its row records are not
/// one and the same directory while either is a directory: what lies below
/// it must be compared too.
fn spans_subtree(before: Option<&Entry>, after: Option<&Entry>) -> bool {
    let is_dir = |e: Option<&Entry>| e.is_some_and(|e| e.kind == Kind::Dir);
    let same_dir = match (before, after) {
        (Some(b), Some(a)) => is_dir(before) && is_dir(after) && b.dev == a.dev && b.ino == a.ino,
        _ => false,
    };
    (is_dir(before) || is_dir(after)) && !same_dir
}

/// The row is one a scan with these options compares (not one the filters
/// or link mode leave out).
pub fn covers(row: &Entry, options: &DiffOptions) -> bool {
    options.filters.includes(&row.path, row.kind)
        && !(row.kind == Kind::Symlink && options.links == LinkMode::Skip)
}

/// [`diff_stream`] for tests that hold both trees whole (sorted): also
/// returns the tree now as an endpoint answers for it, unchanged entries
/// carrying their recorded hash, rows below an unreadable directory as
/// recorded.
#[cfg(test)]
pub fn diff(
    snapshot: Vec<Entry>,
    scan: Vec<Entry>,
    unreadable: Vec<(RelPath, String)>,
    options: &DiffOptions,
) -> (ChangeSet, Vec<Entry>) {
    let mut items: Vec<Scanned> = scan.iter().cloned().map(Scanned::Entry).collect();
    items.extend(
        unreadable
            .into_iter()
            .map(|(dir, reason)| Scanned::Unreadable { dir, reason }),
    );
    items.sort_by(|a, b| match (a, b) {
        (Scanned::Entry(a), b) => b.cmp_path(&a.path).reverse(),
        (a, Scanned::Entry(b)) => a.cmp_path(&b.path),
        _ => Ordering::Equal,
    });
    let set = diff_stream(snapshot.clone(), items, options);
    // A path outside the change set is as its row records it.
    let mut now: Vec<Entry> = snapshot
        .into_iter()
        .filter(|row| set.get(&row.path).is_none() && !set.forgotten.contains(&row.path))
        .collect();
    now.extend(set.changes.iter().filter_map(|c| c.after.clone()));
    now.sort_by(|a, b| a.path.cmp(&b.path));
    (set, now)
}

fn unchanged(before: &Entry, after: &Entry, options: &DiffOptions) -> bool {
    if before.racy && after.kind == Kind::File {
        // Its stat cannot vouch for its content: look again.
        return false;
    }
    let content_same = if options.checksum && after.kind == Kind::File {
        match (&before.hash, &after.hash) {
            (Some(a), Some(b)) => a == b && before.size == after.size,
            _ => after.same_stat(before),
        }
    } else {
        after.same_stat(before) && before.link_target == after.link_target
    };
    // The same inode too (content alone may decide with --checksum): the
    // row stands in for the entry afterwards, and a copy is checked against
    // the inode it records.
    let same_identity = before.dev == after.dev && before.ino == after.ino;
    content_same
        && same_identity
        && before.kind == after.kind
        && before.mtime == after.mtime
        && after.same_metadata(before, options.preserve)
}

/// Remembers the sizes of snapshot files whose content is known: created or
/// modified files of these sizes are worth hashing, to recognise renames and
/// copies instead of sending data.
#[derive(Debug, Default)]
pub struct SizesWorthHashing(HashSet<u64>);

impl SizesWorthHashing {
    /// Notes one snapshot row.
    pub fn note(&mut self, row: &Entry) {
        if row.kind == Kind::File && row.hash.is_some() && row.size > 0 {
            self.0.insert(row.size);
        }
    }

    pub fn contains(&self, size: u64) -> bool {
        self.0.contains(&size)
    }

    /// The sizes of snapshot files read some other way (see
    /// [`SizesWorthHashing::note`]).
    pub fn from_sizes(sizes: impl IntoIterator<Item = u64>) -> Self {
        SizesWorthHashing(sizes.into_iter().filter(|&size| size > 0).collect())
    }
}

/// Pairs deleted paths with created ones: by inode, then by content hash.
/// Call after the hashes of created files that are worth hashing are known.
pub fn detect_renames(set: &mut ChangeSet) {
    let deleted: Vec<usize> = (0..set.changes.len())
        .filter(|&i| set.changes[i].after.is_none())
        .collect();
    if deleted.is_empty() {
        return;
    }
    let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
    let mut by_hash: HashMap<Hash, Vec<usize>> = HashMap::new();
    for &i in &deleted {
        let before = set.changes[i].before.as_ref().expect("deleted has before");
        by_inode.insert((before.dev, before.ino), i);
        if let (Kind::File, Some(hash)) = (before.kind, before.hash) {
            by_hash.entry(hash).or_default().push(i);
        }
    }
    let mut used: HashSet<usize> = HashSet::new();
    let mut renames = Vec::new();
    for j in 0..set.changes.len() {
        let Some(after) = set.changes[j].after.clone() else {
            continue;
        };
        // A rename may land on a new path or replace an existing one.
        if let Some(before) = &set.changes[j].before {
            if before.kind == after.kind && before.dev == after.dev && before.ino == after.ino {
                continue;
            }
        }
        let mut source = by_inode.get(&(after.dev, after.ino)).copied().filter(|&i| {
            let old = set.changes[i].before.as_ref().expect("deleted has before");
            !used.contains(&i)
                && old.kind == after.kind
                && (after.kind != Kind::File
                    || (old.size == after.size && old.mtime == after.mtime))
        });
        if source.is_none() && after.kind == Kind::File {
            if let Some(hash) = after.hash {
                source = by_hash
                    .get(&hash)
                    .and_then(|list| list.iter().copied().find(|i| !used.contains(i)));
            }
        }
        let Some(i) = source else { continue };
        used.insert(i);
        let old = set.changes[i].before.clone().expect("deleted has before");
        if after.kind == Kind::File && set.changes[j].after.as_ref().unwrap().hash.is_none() {
            set.changes[j].after.as_mut().unwrap().hash = old.hash;
        }
        renames.push(Rename {
            from: old.path,
            to: after.path,
            kind: after.kind,
        });
    }
    // Keep only top-most renames: a child that moved along with its
    // renamed directory is implied by it.
    let dir_moves: Vec<(RelPath, RelPath)> = renames
        .iter()
        .filter(|r| r.kind == Kind::Dir)
        .map(|r| (r.from.clone(), r.to.clone()))
        .collect();
    renames.retain(|r| {
        !dir_moves
            .iter()
            .any(|(from, to)| from != &r.from && r.from.rebase(from, to).as_ref() == Some(&r.to))
    });
    renames.sort_by(|a, b| {
        a.from
            .depth()
            .cmp(&b.from.depth())
            .then(a.from.cmp(&b.from))
    });
    set.renames = renames;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mtime;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    pub(crate) fn file(path: &str, ino: u64, size: u64, hash: Option<u8>) -> Entry {
        Entry {
            path: RelPath::new(path.as_bytes()).unwrap(),
            kind: Kind::File,
            size,
            mtime: Mtime { sec: 100, nsec: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            dev: 1,
            ino,
            hash: hash.map(|h| [h; 32]),
            link_target: None,
            xattr_hash: None,
            racy: false,
        }
    }

    fn dir(path: &str, ino: u64) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            ..file(path, ino, 0, None)
        }
    }

    fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    fn scanned(entries: Vec<Entry>) -> Vec<Scanned> {
        sorted(entries).into_iter().map(Scanned::Entry).collect()
    }

    #[test]
    fn unchanged_tree_has_no_changes() {
        let snap = vec![file("a", 1, 3, Some(7))];
        let scan = scanned(vec![file("a", 1, 3, None)]);
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert!(set.changes.is_empty());
        assert_eq!(set.files_scanned, 1);
    }

    #[test]
    fn created_modified_deleted_and_metadata() {
        let snap = sorted(vec![
            file("del", 1, 3, Some(1)),
            file("mod", 2, 3, Some(2)),
            file("meta", 3, 3, Some(3)),
        ]);
        let mut meta = file("meta", 3, 3, None);
        meta.mode = 0o600;
        let mut modified = file("mod", 2, 4, None);
        modified.mtime.sec = 200;
        let scan = scanned(vec![file("new", 4, 3, None), modified, meta]);
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert_eq!(
            kinds(&set),
            vec![
                ("del".into(), ChangeKind::Deleted),
                ("meta".into(), ChangeKind::Metadata),
                ("mod".into(), ChangeKind::Modified),
                ("new".into(), ChangeKind::Created),
            ]
        );
        // A metadata-only change keeps the recorded content hash.
        assert_eq!(
            set.get(&RelPath::new(b"meta").unwrap())
                .unwrap()
                .after
                .as_ref()
                .unwrap()
                .hash,
            Some([3; 32])
        );
    }

    /// Each change's path and kind.
    fn kinds(set: &ChangeSet) -> Vec<(String, ChangeKind)> {
        set.changes
            .iter()
            .map(|c| (c.path.to_string(), c.kind(Preserve::default())))
            .collect()
    }

    #[test]
    fn a_kept_row_is_reported_again_as_metadata_with_its_content_known() {
        let snap = sorted(vec![
            file("kept", 1, 3, Some(7)).kept(),
            dir("kept-dir", 2).kept(),
            file("edited", 3, 3, Some(8)).kept(),
        ]);
        let mut edited = file("edited", 3, 4, None);
        edited.mtime.sec = 200;
        let scan = scanned(vec![file("kept", 1, 3, None), dir("kept-dir", 2), edited]);
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert_eq!(
            kinds(&set),
            vec![
                ("edited".into(), ChangeKind::Modified),
                ("kept".into(), ChangeKind::Metadata),
                ("kept-dir".into(), ChangeKind::Metadata),
            ]
        );
        // Same size and mtime: its content is the recorded one, not read
        // again each run.
        let kept = set.get(&RelPath::new(b"kept").unwrap()).unwrap();
        assert_eq!(kept.after.as_ref().unwrap().hash, Some([7; 32]));
    }

    #[test]
    fn directory_rename_is_one_rename() {
        let snap = sorted(vec![
            dir("d", 10),
            file("d/x", 11, 5, Some(1)),
            file("d/y", 12, 5, Some(2)),
        ]);
        let scan = scanned(vec![
            dir("e", 10),
            file("e/x", 11, 5, None),
            file("e/y", 12, 5, None),
        ]);
        let mut set = diff_stream(snap, scan, &DiffOptions::default());
        detect_renames(&mut set);
        assert_eq!(set.renames.len(), 1);
        assert_eq!(set.renames[0].from.to_string(), "d");
        assert_eq!(set.renames[0].to.to_string(), "e");
        // Moved files carry their recorded hash.
        let moved = set.get(&RelPath::new(b"e/x").unwrap()).unwrap();
        assert_eq!(moved.after.as_ref().unwrap().hash, Some([1; 32]));
    }

    #[test]
    fn rename_by_content_when_inode_differs() {
        let snap = vec![file("old", 1, 5, Some(9))];
        let scan = scanned(vec![file("new", 2, 5, Some(9))]);
        let mut set = diff_stream(snap, scan, &DiffOptions::default());
        detect_renames(&mut set);
        assert_eq!(set.renames.len(), 1);
        assert_eq!(set.renames[0].to.to_string(), "new");
    }

    #[test]
    fn newly_excluded_rows_are_forgotten_not_deleted() {
        let filters = Filters::new(&[crate::filter::RuleSpec {
            kind: crate::filter::RuleKind::Exclude,
            pattern: "*.log".into(),
        }])
        .unwrap();
        let snap = vec![file("a.log", 1, 1, None)];
        let options = DiffOptions {
            filters,
            ..DiffOptions::default()
        };
        let set = diff_stream(snap, vec![], &options);
        assert!(set.changes.is_empty());
        assert_eq!(set.forgotten.len(), 1);
    }

    #[test]
    fn a_scan_measures_the_snapshot_and_sees_an_emptied_root() {
        let filters = Filters::new(&[crate::filter::RuleSpec {
            kind: crate::filter::RuleKind::Exclude,
            pattern: "*.log".into(),
        }])
        .unwrap();
        let options = DiffOptions {
            filters,
            ..DiffOptions::default()
        };
        let snap = || sorted(vec![file("a", 1, 1, None), file("b.log", 2, 1, None)]);
        // Only the rows the filters cover count.
        let emptied = diff_stream(snap(), vec![], &options);
        assert_eq!(emptied.snapshot_rows, Some(1));
        assert!(emptied.emptied);
        let kept = diff_stream(snap(), scanned(vec![file("a", 1, 1, None)]), &options);
        assert_eq!(kept.snapshot_rows, Some(1));
        assert!(!kept.emptied);
        // Nothing recorded: an empty root is just empty.
        assert!(!diff_stream(vec![], vec![], &options).emptied);
        // A root that cannot be listed is not empty.
        let unreadable = vec![Scanned::Unreadable {
            dir: RelPath::root(),
            reason: "denied".into(),
        }];
        assert!(!diff_stream(snap(), unreadable, &options).emptied);
    }

    #[test]
    fn unreadable_directory_hides_no_deletions() {
        let snap = sorted(vec![dir("d", 1), file("d/x", 2, 1, None)]);
        let scan = vec![
            Scanned::Entry(dir("d", 1)),
            Scanned::Unreadable {
                dir: p("d"),
                reason: "denied".into(),
            },
        ];
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert!(set.changes.is_empty());
        assert_eq!(set.unreadable, vec![(p("d"), "denied".to_string())]);
    }

    fn p(path: &str) -> RelPath {
        RelPath::new(path.as_bytes()).unwrap()
    }

    fn paths_of(set: &ChangeSet, kind: ChangeKind) -> Vec<String> {
        set.changes
            .iter()
            .filter(|c| c.kind(Preserve::default()) == kind)
            .map(|c| c.path.to_string())
            .collect()
    }

    #[test]
    fn unreadable_marker_stands_where_the_directory_contents_start() {
        // Byte order: d, d.txt, d/x, d/y/z, d0. The marker for d comes after
        // d.txt (which is gone, so deleted) and covers only what is below d.
        let snap = sorted(vec![
            dir("d", 1),
            file("d.txt", 2, 1, None),
            file("d/x", 3, 1, None),
            dir("d/y", 4),
            file("d/y/z", 5, 1, None),
            file("d0", 6, 1, None),
        ]);
        let scan = vec![
            Scanned::Entry(dir("d", 1)),
            Scanned::Unreadable {
                dir: p("d"),
                reason: "denied".into(),
            },
            Scanned::Entry(file("d/new", 7, 1, None)),
        ];
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert_eq!(paths_of(&set, ChangeKind::Deleted), ["d.txt", "d0"]);
        assert_eq!(paths_of(&set, ChangeKind::Created), ["d/new"]);
        assert_eq!(set.changes.len(), 3);
    }

    #[test]
    fn unreadable_root_hides_every_deletion() {
        let snap = sorted(vec![file("a", 1, 1, None), file("b/c", 2, 1, None)]);
        let scan = vec![
            Scanned::Unreadable {
                dir: RelPath::root(),
                reason: "i/o error".into(),
            },
            Scanned::Entry(file("a", 1, 1, None)),
        ];
        let set = diff_stream(snap, scan, &DiffOptions::default());
        assert!(set.changes.is_empty(), "{:?}", set.changes);
        assert_eq!(set.unreadable.len(), 1);
    }

    #[test]
    fn checksum_counts_a_new_inode_as_a_change() {
        // Content decides, but the row must record the inode on disk: lookups
        // answer from it and copies are checked against it.
        let snap = vec![file("a", 1, 3, Some(7))];
        let scan = scanned(vec![file("a", 2, 3, Some(7))]);
        let options = DiffOptions {
            checksum: true,
            ..DiffOptions::default()
        };
        let set = diff_stream(snap, scan, &options);
        assert_eq!(paths_of(&set, ChangeKind::Metadata), ["a"]);
    }

    // Random trees for the property tests: paths from a small alphabet
    // whose names sort differently by bytes and depth first.

    #[derive(Debug, Clone, Copy)]
    enum Node {
        File(u64),
        /// A directory: which one (its inode) of two.
        Dir(u64),
        Link,
    }
    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            (1u64..4).prop_map(Node::File),
            (0u64..2).prop_map(Node::Dir),
            Just(Node::Link)
        ]
    }
    fn entry(path: &str, node: Node) -> Entry {
        match node {
            Node::File(size) => file(path, 100 + size, size, None),
            Node::Dir(id) => dir(path, 10 + id),
            Node::Link => Entry {
                kind: Kind::Symlink,
                link_target: Some(b"t".to_vec().into_boxed_slice()),
                ..file(path, 2, 0, None)
            },
        }
    }
    // Paths from a small alphabet, made consistent: every ancestor of a
    // path is a directory.
    fn tree(raw: BTreeMap<Vec<u8>, Node>) -> BTreeMap<RelPath, Entry> {
        let mut out = BTreeMap::new();
        for (segments, node) in raw {
            let text: Vec<&str> = segments
                .iter()
                .map(|&s| ["a", "a.b", "a-", "a0", "b", "ab"][s as usize % 6])
                .collect();
            let path = text.join("/");
            let relpath = p(&path);
            let mut above = Vec::new();
            let mut ancestor = relpath.parent();
            while let Some(a) = ancestor.filter(|a| !a.is_root()) {
                ancestor = a.parent();
                above.push(a);
            }
            let blocked = above
                .iter()
                .any(|a| out.get(a).is_some_and(|e: &Entry| e.kind != Kind::Dir));
            if blocked || out.contains_key(&relpath) {
                continue;
            }
            for a in above {
                out.entry(a.clone())
                    .or_insert_with(|| entry(&a.to_string(), Node::Dir(0)));
            }
            out.insert(relpath, entry(&path, node));
        }
        out
    }
    fn side() -> impl Strategy<Value = BTreeMap<Vec<u8>, Node>> {
        proptest::collection::btree_map(proptest::collection::vec(0u8..6, 1..4), node(), 0..24)
    }
    /// The merge against a plain map-based comparison, on trees whose names
    /// sort differently by bytes and depth first (`a.b` < `a/b` < `a0`),
    /// with creates, deletes and type changes at every depth.
    #[test]
    fn merge_agrees_with_a_map_comparison() {
        proptest!(|(old in side(), new in side())| {
            let (old, new) = (tree(old), tree(new));
            // Byte order of paths, as the snapshot and the walk give them.
            let snap: Vec<Entry> = old.values().cloned().collect();
            let scan: Vec<Scanned> = new.values().cloned().map(Scanned::Entry).collect();
            let set = diff_stream(snap, scan, &DiffOptions::default());
            let mut expected = Vec::new();
            let paths: std::collections::BTreeSet<&RelPath> = old.keys().chain(new.keys()).collect();
            for path in paths {
                let (before, after) = (old.get(path), new.get(path));
                let same = match (before, after) {
                    (Some(b), Some(a)) => unchanged(b, a, &DiffOptions::default()),
                    _ => false,
                };
                if !same {
                    expected.push((path.clone(), before.is_some(), after.is_some()));
                }
            }
            let got: Vec<(RelPath, bool, bool)> = set
                .changes
                .iter()
                .map(|c| (c.path.clone(), c.before.is_some(), c.after.is_some()))
                .collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(set.files_scanned, new.len() as u64);
        });
    }

    /// A tree held whole, answering as the walk would: a path is there when
    /// every directory above it is, and nothing below an unlistable
    /// directory is known.
    struct TreeInMemory {
        now: BTreeMap<RelPath, Entry>,
        unlistable: BTreeSet<RelPath>,
    }

    impl TreeInMemory {
        fn new(entries: Vec<Entry>) -> Self {
            TreeInMemory {
                now: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
                unlistable: BTreeSet::new(),
            }
        }
    }

    impl TreeNow for TreeInMemory {
        fn entry(&mut self, path: &RelPath) -> Found {
            let mut above = Vec::new();
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| !d.is_root()) {
                dir = d.parent();
                above.push(d);
            }
            for dir in above.into_iter().rev() {
                match self.now.get(&dir) {
                    Some(e) if e.kind == Kind::Dir => {}
                    _ => return Found::Absent,
                }
                if self.unlistable.contains(&dir) {
                    let reason = "denied".to_string();
                    return Found::Unknown { dir, reason };
                }
            }
            self.now
                .get(path)
                .cloned()
                .map_or(Found::Absent, Found::Entry)
        }

        fn walk(&mut self, dirs: &[RelPath]) -> Vec<Scanned> {
            let mut items = Vec::new();
            for dir in dirs {
                let hidden = |path: &RelPath| {
                    self.unlistable
                        .iter()
                        .any(|u| path.starts_with(u) && path != u)
                };
                for (path, entry) in &self.now {
                    if path.starts_with(dir) && path != dir && !hidden(path) {
                        items.push(Scanned::Entry(entry.clone()));
                    }
                }
                for u in &self.unlistable {
                    if u.starts_with(dir) && !hidden(u) {
                        let reason = "denied".to_string();
                        items.push(Scanned::Unreadable {
                            dir: u.clone(),
                            reason,
                        });
                    }
                }
            }
            items.sort_by(Scanned::cmp_item);
            items
        }
    }

    struct SnapshotInMemory(BTreeMap<RelPath, Entry>);

    impl SnapshotInMemory {
        fn new(rows: Vec<Entry>) -> Self {
            SnapshotInMemory(rows.into_iter().map(|e| (e.path.clone(), e)).collect())
        }
    }

    impl SnapshotRows for SnapshotInMemory {
        type Error = std::convert::Infallible;

        fn row(&self, path: &RelPath) -> Result<Option<Entry>, Self::Error> {
            Ok(self.0.get(path).cloned())
        }

        fn rows_under(&self, dir: &RelPath) -> Result<Vec<Entry>, Self::Error> {
            Ok(self
                .0
                .values()
                .filter(|e| e.path.starts_with(dir) && &e.path != dir)
                .cloned()
                .collect())
        }
    }

    fn dirty(
        snapshot: Vec<Entry>,
        now: &mut TreeInMemory,
        paths: &[&str],
        trees: &[&str],
        options: &DiffOptions,
    ) -> ChangeSet {
        let paths: Vec<RelPath> = paths.iter().map(|s| p(s)).collect();
        let trees: Vec<RelPath> = trees.iter().map(|s| p(s)).collect();
        let snapshot = SnapshotInMemory::new(snapshot);
        let Ok(set) = diff_dirty(&paths, &trees, &snapshot, now, options);
        set
    }

    fn changed_paths(set: &ChangeSet) -> Vec<(String, ChangeKind)> {
        set.changes
            .iter()
            .map(|c| (c.path.to_string(), c.kind(Preserve::default())))
            .collect()
    }

    #[test]
    fn dirty_path_that_did_not_change_gives_no_change() {
        let rows = vec![dir("d", 10), file("d/x", 1, 3, Some(1))];
        let mut now = TreeInMemory::new(rows.clone());
        let set = dirty(rows, &mut now, &["d/x", "d"], &[], &DiffOptions::default());
        assert!(set.changes.is_empty(), "{:?}", set.changes);
        assert_eq!(set.files_scanned, 2);
    }

    #[test]
    fn only_dirty_paths_are_compared() {
        // `b` changed too, but nobody said so: it is taken as recorded.
        let rows = vec![file("a", 1, 3, Some(1)), file("b", 2, 3, Some(2))];
        let mut now = TreeInMemory::new(vec![file("a", 1, 4, None), file("c", 3, 1, None)]);
        let set = dirty(rows, &mut now, &["a", "c"], &[], &DiffOptions::default());
        assert_eq!(
            changed_paths(&set),
            [
                ("a".into(), ChangeKind::Modified),
                ("c".into(), ChangeKind::Created)
            ]
        );
        assert_eq!(set.files_scanned, 2);
    }

    #[test]
    fn deleted_directory_deletes_every_row_below_it() {
        let rows = sorted(vec![
            dir("d", 10),
            file("d.txt", 1, 1, None),
            file("d/x", 2, 1, None),
            dir("d/y", 11),
            file("d/y/z", 3, 1, None),
            file("d0", 4, 1, None),
        ]);
        let mut now = TreeInMemory::new(vec![file("d.txt", 1, 1, None), file("d0", 4, 1, None)]);
        let set = dirty(rows, &mut now, &["d"], &[], &DiffOptions::default());
        assert_eq!(
            paths_of(&set, ChangeKind::Deleted),
            ["d", "d/x", "d/y", "d/y/z"]
        );
        assert_eq!(set.changes.len(), 4);
        assert_eq!(set.files_scanned, 0);
    }

    #[test]
    fn file_replaced_by_a_directory_is_walked() {
        let rows = vec![file("f", 1, 3, Some(1))];
        let mut now = TreeInMemory::new(vec![
            dir("f", 10),
            file("f/a", 2, 1, None),
            dir("f/b", 11),
            file("f/b/c", 3, 1, None),
        ]);
        let set = dirty(
            rows,
            &mut now,
            &["f", "f/b/c"],
            &[],
            &DiffOptions::default(),
        );
        assert_eq!(
            changed_paths(&set),
            [
                ("f".into(), ChangeKind::TypeChanged),
                ("f/a".into(), ChangeKind::Created),
                ("f/b".into(), ChangeKind::Created),
                ("f/b/c".into(), ChangeKind::Created),
            ]
        );
        assert_eq!(set.files_scanned, 4);
    }

    #[test]
    fn directory_replaced_by_a_file_deletes_what_was_below() {
        let rows = vec![dir("f", 10), file("f/a", 2, 1, None)];
        let mut now = TreeInMemory::new(vec![file("f", 1, 3, None)]);
        let set = dirty(rows, &mut now, &["f"], &[], &DiffOptions::default());
        assert_eq!(
            changed_paths(&set),
            [
                ("f".into(), ChangeKind::TypeChanged),
                ("f/a".into(), ChangeKind::Deleted),
            ]
        );
    }

    #[test]
    fn paths_below_a_tree_are_taken_with_it_once() {
        let mut now = TreeInMemory::new(vec![
            dir("t", 10),
            file("t/a", 1, 1, None),
            dir("t/u", 11),
            file("t/u/b", 2, 1, None),
        ]);
        let set = dirty(
            vec![],
            &mut now,
            &["t/u/b", "t", "t/a", "t/a"],
            &["t/u", "t"],
            &DiffOptions::default(),
        );
        assert_eq!(
            paths_of(&set, ChangeKind::Created),
            ["t", "t/a", "t/u", "t/u/b"]
        );
        assert_eq!(set.files_scanned, 4);
    }

    #[test]
    fn path_whose_directory_is_gone_is_deleted_with_it() {
        let rows = vec![dir("a", 10), file("a/b", 1, 1, None), file("c", 2, 1, None)];
        let mut now = TreeInMemory::new(vec![file("c", 2, 1, None)]);
        // Only the file was reported; its directory is looked at too.
        let set = dirty(
            rows,
            &mut now,
            &["a/b", "x/y"],
            &[],
            &DiffOptions::default(),
        );
        assert_eq!(paths_of(&set, ChangeKind::Deleted), ["a", "a/b"]);
        assert_eq!(set.changes.len(), 2);
    }

    #[test]
    fn directory_of_a_dirty_path_is_compared_too() {
        let rows = vec![dir("d", 10), file("d/old", 1, 1, None)];
        let mut now = TreeInMemory::new(vec![dir("d", 10), file("d/new", 2, 1, None)]);
        now.now.get_mut(&p("d")).unwrap().mtime.sec = 200;
        let set = dirty(
            rows,
            &mut now,
            &["d/old", "d/new"],
            &[],
            &DiffOptions::default(),
        );
        assert_eq!(
            changed_paths(&set),
            [
                ("d".into(), ChangeKind::Metadata),
                ("d/new".into(), ChangeKind::Created),
                ("d/old".into(), ChangeKind::Deleted),
            ]
        );
        assert_eq!(set.files_scanned, 2);
    }

    #[test]
    fn below_an_unlistable_directory_nothing_changes() {
        let rows = vec![dir("d", 10), file("d/x", 1, 1, None), dir("d/e", 11)];
        let mut now = TreeInMemory::new(vec![dir("d", 10)]);
        now.unlistable.insert(p("d"));
        let set = dirty(
            rows,
            &mut now,
            &["d/x", "d/e/f"],
            &[],
            &DiffOptions::default(),
        );
        assert!(set.changes.is_empty(), "{:?}", set.changes);
        assert_eq!(set.unreadable, vec![(p("d"), "denied".to_string())]);
    }

    #[test]
    fn uncovered_rows_are_neither_deleted_nor_forgotten() {
        let filters = Filters::new(&[crate::filter::RuleSpec {
            kind: crate::filter::RuleKind::Exclude,
            pattern: "*.log".into(),
        }])
        .unwrap();
        let options = DiffOptions {
            filters,
            ..DiffOptions::default()
        };
        let rows = vec![file("a.log", 1, 1, None)];
        let mut now = TreeInMemory::new(vec![]);
        let set = dirty(rows, &mut now, &["a.log"], &[], &options);
        assert!(set.changes.is_empty() && set.forgotten.is_empty());
    }

    #[test]
    fn renamed_directory_among_dirty_paths_is_one_rename() {
        let rows = sorted(vec![
            dir("d", 10),
            file("d/x", 11, 5, Some(1)),
            file("d/y", 12, 5, Some(2)),
        ]);
        let now = vec![
            dir("e", 10),
            file("e/x", 11, 5, None),
            file("e/y", 12, 5, None),
        ];
        for (paths, trees) in [(&["d", "e"][..], &[][..]), (&["d"][..], &["e"][..])] {
            let mut tree = TreeInMemory::new(now.clone());
            let mut set = dirty(
                rows.clone(),
                &mut tree,
                paths,
                trees,
                &DiffOptions::default(),
            );
            detect_renames(&mut set);
            assert_eq!(set.renames.len(), 1, "{:?}", set.renames);
            assert_eq!(
                (
                    set.renames[0].from.to_string(),
                    set.renames[0].to.to_string()
                ),
                ("d".into(), "e".into())
            );
            assert_eq!(set.changes.len(), 6);
        }
    }

    /// When every changed path is reported (a path below a directory that
    /// was replaced or removed may go unreported, and a directory that
    /// appeared may come as a tree), the dirty scan finds exactly what the
    /// full merge finds, whatever unchanged paths come along.
    #[test]
    fn dirty_scan_agrees_with_the_full_merge() {
        let coins = || proptest::collection::vec(any::<bool>(), 64);
        let noise = || proptest::collection::vec(proptest::collection::vec(0u8..6, 1..4), 0..4);
        proptest!(|(old in side(), new in side(), coins in coins(), noise in noise())| {
            let (old, new) = (tree(old), tree(new));
            let options = DiffOptions::default();
            let full = diff_stream(
                old.values().cloned().collect::<Vec<_>>(),
                new.values().cloned().map(Scanned::Entry).collect::<Vec<_>>(),
                &options,
            );
            let whole: Vec<&Change> = full
                .changes
                .iter()
                .filter(|c| spans_subtree(c.before.as_ref(), c.after.as_ref()))
                .collect();
            let mut coin = coins.into_iter().cycle();
            let (mut paths, mut trees) = (Vec::new(), Vec::new());
            for change in &full.changes {
                let below_whole = whole
                    .iter()
                    .any(|w| change.path.starts_with(&w.path) && change.path != w.path);
                let appeared = whole.iter().any(|w| {
                    w.path == change.path && w.after.as_ref().is_some_and(|a| a.kind == Kind::Dir)
                });
                if appeared && coin.next().unwrap() {
                    trees.push(change.path.clone());
                } else if !(below_whole && coin.next().unwrap()) {
                    paths.push(change.path.clone());
                }
            }
            let names = ["a", "a.b", "a-", "a0", "b", "ab"];
            for segments in noise {
                let text: Vec<&str> = segments.iter().map(|&s| names[s as usize]).collect();
                paths.push(p(&text.join("/")));
            }
            let snapshot = SnapshotInMemory(old.clone());
            let mut now = TreeInMemory {
                now: new.clone(),
                unlistable: BTreeSet::new(),
            };
            let Ok(set) = diff_dirty(&paths, &trees, &snapshot, &mut now, &options);
            prop_assert_eq!(&set.changes, &full.changes);
            prop_assert!(set.files_scanned <= full.files_scanned);
        });
    }
}
