//! Change sets: what changed in one root since its snapshot, found by
//! comparing a fresh scan with the snapshot rows. Pure.
//!
//! Renames and moves are recognised here, on the endpoint that owns the
//! inode numbers: same device and inode (and, for files, the same size and
//! mtime), or failing that the same content hash.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use crate::filter::Filters;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::scan::{LinkMode, Scanned};

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
    /// Number of entries the scan found.
    pub files_scanned: u64,
    /// Paths the scan skipped on purpose, for the user to see.
    pub warnings: Vec<String>,
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
                let covered = options.filters.includes(&before.path, before.kind)
                    && !(before.kind == Kind::Symlink && options.links == LinkMode::Skip);
                let under_unreadable = || {
                    set.unreadable
                        .iter()
                        .any(|(dir, _)| before.path.starts_with(dir))
                };
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
                set.files_scanned += 1;
                if unchanged(&before, &after, options) {
                    continue;
                }
                if after.hash.is_none() && after.same_stat(&before) && !before.racy {
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
    set
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
        let kinds: Vec<(String, ChangeKind)> = set
            .changes
            .iter()
            .map(|c| (c.path.to_string(), c.kind(Preserve::default())))
            .collect();
        assert_eq!(
            kinds,
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

    /// The merge against a plain map-based comparison, on trees whose names
    /// sort differently by bytes and depth first (`a.b` < `a/b` < `a0`),
    /// with creates, deletes and type changes at every depth.
    #[test]
    fn merge_agrees_with_a_map_comparison() {
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone, Copy)]
        enum Node {
            File(u64),
            Dir,
            Link,
        }
        fn node() -> impl Strategy<Value = Node> {
            prop_oneof![
                (1u64..4).prop_map(Node::File),
                Just(Node::Dir),
                Just(Node::Link)
            ]
        }
        fn entry(path: &str, node: Node) -> Entry {
            match node {
                Node::File(size) => file(path, 100 + size, size, None),
                Node::Dir => dir(path, 1),
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
                let mut ancestor = relpath.parent();
                let mut blocked = false;
                while let Some(a) = ancestor {
                    if a.is_root() {
                        break;
                    }
                    let existing = out
                        .entry(a.clone())
                        .or_insert_with(|| entry(&a.to_string(), Node::Dir));
                    blocked |= existing.kind != Kind::Dir;
                    ancestor = a.parent();
                }
                if !blocked && !out.contains_key(&relpath) {
                    out.insert(relpath, entry(&path, node));
                }
            }
            out
        }
        let side = || {
            proptest::collection::btree_map(proptest::collection::vec(0u8..6, 1..4), node(), 0..24)
        };
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
}
