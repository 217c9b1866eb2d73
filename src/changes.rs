//! Change sets: what changed in one root since its snapshot, found by
//! comparing a fresh scan with the snapshot rows. Pure.
//!
//! Renames and moves are recognised here, on the endpoint that owns the
//! inode numbers: same device and inode (and, for files, the same size and
//! mtime), or failing that the same content hash.

use std::collections::{HashMap, HashSet};

use crate::filter::Filters;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::scan::LinkMode;

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

/// Compares `scan` (sorted, current) with `snapshot` (sorted rows). Returns the
/// change set and the current tree, in which unchanged entries carry the
/// hash the snapshot recorded.
pub fn diff(
    snapshot: impl IntoIterator<Item = Entry>,
    mut scan: Vec<Entry>,
    unreadable: Vec<(RelPath, String)>,
    options: &DiffOptions,
) -> (ChangeSet, Vec<Entry>) {
    let mut set = ChangeSet {
        files_scanned: scan.len() as u64,
        ..ChangeSet::default()
    };
    let under_unreadable = |path: &RelPath| unreadable.iter().any(|(dir, _)| path.starts_with(dir));
    let mut carried = Vec::new();
    let mut snap = snapshot.into_iter().peekable();
    let mut i = 0;
    loop {
        let next_snap = snap.peek().map(|e| &e.path);
        let next_scan = scan.get(i).map(|e| &e.path);
        let order = match (next_snap, next_scan) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        };
        match order {
            std::cmp::Ordering::Less => {
                let before = snap.next().expect("peeked");
                let covered = options.filters.includes(&before.path, before.kind)
                    && !(before.kind == Kind::Symlink && options.links == LinkMode::Skip);
                if !covered {
                    set.forgotten.push(before.path);
                } else if under_unreadable(&before.path) {
                    carried.push(before);
                } else {
                    set.changes.push(Change {
                        path: before.path.clone(),
                        before: Some(before),
                        after: None,
                    });
                }
            }
            std::cmp::Ordering::Greater => {
                let after = scan[i].clone();
                i += 1;
                set.changes.push(Change {
                    path: after.path.clone(),
                    before: None,
                    after: Some(after),
                });
            }
            std::cmp::Ordering::Equal => {
                let before = snap.next().expect("peeked");
                let after = &mut scan[i];
                i += 1;
                if unchanged(&before, after, options) {
                    if after.hash.is_none() {
                        after.hash = before.hash;
                    }
                    continue;
                }
                if after.hash.is_none() && after.same_stat(&before) && !before.racy {
                    // Only metadata changed: the content is the recorded one.
                    after.hash = before.hash;
                }
                set.changes.push(Change {
                    path: after.path.clone(),
                    before: Some(before),
                    after: Some(after.clone()),
                });
            }
        }
    }
    set.unreadable = unreadable;
    if !carried.is_empty() {
        scan.extend(carried);
        scan.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }
    (set, scan)
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
    content_same
        && before.kind == after.kind
        && before.mtime == after.mtime
        && after.same_metadata(before, options.preserve)
}

/// The sizes of files whose content a new file might repeat: created or
/// modified files of these sizes are worth hashing, to recognise renames and
/// copies instead of sending data.
pub fn sizes_worth_hashing(snapshot_files: impl Iterator<Item = (u64, bool)>) -> HashSet<u64> {
    snapshot_files
        .filter(|(_, has_hash)| *has_hash)
        .map(|(size, _)| size)
        .filter(|&size| size > 0)
        .collect()
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

    #[test]
    fn unchanged_tree_has_no_changes_and_keeps_hashes() {
        let snap = vec![file("a", 1, 3, Some(7))];
        let scan = vec![file("a", 1, 3, None)];
        let (set, now) = diff(snap, scan, vec![], &DiffOptions::default());
        assert!(set.changes.is_empty());
        assert_eq!(now[0].hash, Some([7; 32]));
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
        let scan = sorted(vec![file("new", 4, 3, None), modified, meta]);
        let (set, _) = diff(snap, scan, vec![], &DiffOptions::default());
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
        let scan = sorted(vec![
            dir("e", 10),
            file("e/x", 11, 5, None),
            file("e/y", 12, 5, None),
        ]);
        let (mut set, _) = diff(snap, scan, vec![], &DiffOptions::default());
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
        let scan = vec![file("new", 2, 5, Some(9))];
        let (mut set, _) = diff(snap, scan, vec![], &DiffOptions::default());
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
        let (set, _) = diff(snap, vec![], vec![], &options);
        assert!(set.changes.is_empty());
        assert_eq!(set.forgotten.len(), 1);
    }

    #[test]
    fn unreadable_directory_hides_no_deletions() {
        let snap = sorted(vec![dir("d", 1), file("d/x", 2, 1, None)]);
        let scan = vec![dir("d", 1)];
        let unreadable = vec![(RelPath::new(b"d").unwrap(), "denied".to_string())];
        let (set, now) = diff(snap, scan, unreadable, &DiffOptions::default());
        assert!(set.changes.is_empty());
        assert_eq!(now.len(), 2);
    }
}
