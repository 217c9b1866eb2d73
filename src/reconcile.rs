//! Reconciliation: from the two sides' change sets to a [`Plan`]. Pure.
//!
//! For a replica (push or pull) the target must end equal to the source for
//! every path either side changed: the desired state of a path is the
//! source's, the actual state the target's. Renames the source made are
//! replayed as renames when the target still holds what was renamed; content
//! the target already holds is moved or copied there instead of being sent.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::changes::{ChangeSet, Rename};
use crate::model::{Difference, Entry, Hash, Kind, Preserve, RelPath};
use crate::plan::{Item, Op, Plan};
use crate::state::SnapshotUpdate;

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaOptions {
    pub no_delete: bool,
    /// Never replace a target file whose mtime is newer than the source's.
    pub newer: bool,
    pub preserve: Preserve,
}

/// What the planner knows of both roots.
pub struct ReplicaInput<'a> {
    pub source: &'a ChangeSet,
    pub target: &'a ChangeSet,
    /// The source's current entries for paths outside its change set
    /// (absent key: no such path).
    pub source_now: &'a HashMap<RelPath, Entry>,
    pub target_now: &'a HashMap<RelPath, Entry>,
    /// Target paths that hold a given content, as the target knows it.
    pub target_content: &'a HashMap<Hash, Vec<RelPath>>,
    /// Directories whose times and permissions the target must end with,
    /// where that is not the source's entry (bidi: a directory whose own
    /// change the other direction carries). Empty for a replica.
    pub restore_as: &'a HashMap<RelPath, Entry>,
    /// `-H`: the names of each file with several in the source tree, for
    /// the files at the paths either side changed (see
    /// [`Endpoint::hard_links`](crate::endpoint::Endpoint::hard_links)).
    /// Empty without `-H`.
    pub source_links: &'a [Vec<RelPath>],
    /// The same on the target, at its paths before the plan's renames.
    pub target_links: &'a [Vec<RelPath>],
}

/// True when `path` lies strictly inside a directory the source renamed
/// (at its old place).
fn under_source_rename(path: &RelPath, source: &ChangeSet) -> bool {
    source
        .renames
        .iter()
        .any(|r| r.kind == Kind::Dir && path.starts_with(&r.from) && *path != r.from)
}

/// True when `path` lies strictly inside a directory the source renamed
/// (at its new place).
fn inside_renamed_directory(path: &RelPath, source: &ChangeSet) -> bool {
    source
        .renames
        .iter()
        .any(|r| r.kind == Kind::Dir && path.starts_with(&r.to) && *path != r.to)
}

/// Paths whose current state the planner needs from the target: every path
/// either side changed, and their parent directories, except those the
/// target's own change set describes, and those inside a directory the
/// source renamed: at the old place the target still holds them as both
/// snapshots recorded them (else its change set would say so), so the
/// source's record stands in for them; at the new place the target holds
/// nothing yet (the rename brings them). A renamed directory so costs a few
/// bytes, not a round of entries per file.
pub fn target_paths_to_look_up(source: &ChangeSet, target: &ChangeSet) -> Vec<RelPath> {
    paths_to_look_up(target, source)
        .into_iter()
        .filter(|p| !under_source_rename(p, source) && !inside_renamed_directory(p, source))
        .collect()
}

/// Paths whose current state the planner needs from `side`: every path
/// either side changed, and their parent directories, except those `side`'s
/// own change set already describes.
pub fn paths_to_look_up(side: &ChangeSet, other: &ChangeSet) -> Vec<RelPath> {
    let mut paths = BTreeSet::new();
    for change in side.changes.iter().chain(&other.changes) {
        let mut path = Some(change.path.clone());
        while let Some(p) = path {
            if p.is_root() || !paths.insert(p.clone()) {
                break;
            }
            path = p.parent();
        }
    }
    paths
        .into_iter()
        .filter(|p| side.get(p).is_none())
        .collect()
}

/// A full scan (`full`) found nothing on this root: it has no entry to look
/// up and no content to reuse (its snapshot's rows, if any, are deletions
/// in its change set), so it need not be asked; a first copy to a far end
/// so does not wait for two answers it knows.
pub fn found_empty(set: &ChangeSet, full: bool) -> bool {
    full && set.files_scanned == 0 && set.unreadable.is_empty()
}

/// Content hashes of the files the source created or changed: the target is
/// asked where it already holds them. Files that moved along with a renamed
/// directory are left out: the rename brings them.
pub fn hashes_wanted(source: &ChangeSet) -> Vec<Hash> {
    let moved_into: Vec<&RelPath> = source
        .renames
        .iter()
        .filter(|r| r.kind == Kind::Dir)
        .map(|r| &r.to)
        .collect();
    let mut hashes: Vec<Hash> = source
        .changes
        .iter()
        .filter(|c| !moved_into.iter().any(|to| c.path.starts_with(to)))
        .filter_map(|c| c.after.as_ref())
        .filter(|e| e.kind == Kind::File)
        .filter_map(|e| e.hash)
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

enum Decision {
    Same,
    Keep,
    Delete(Entry),
    Create(Entry),
    Replace {
        old: Entry,
        new: Entry,
    },
    Update(Entry),
    Meta(Entry),
    /// `-H`: another name of the file the plan puts (or keeps) at `to`.
    Link {
        to: RelPath,
        entry: Entry,
    },
}

/// Plans a push or pull.
pub fn plan_replica(input: &ReplicaInput, options: &ReplicaOptions) -> Plan {
    let desired = |path: &RelPath| -> Option<Entry> {
        match input.source.get(path) {
            Some(change) => change.after.clone(),
            None => input.source_now.get(path).cloned(),
        }
    };
    let mut affected: BTreeSet<RelPath> = input
        .source
        .changes
        .iter()
        .chain(&input.target.changes)
        .map(|c| c.path.clone())
        .collect();
    // Every name of a file whose names are planned, changed or not.
    affected.extend(input.source_links.iter().flatten().cloned());
    // What the target holds, path by path, as the plan's renames change it.
    let mut actual: HashMap<RelPath, Option<Entry>> = affected
        .iter()
        .map(|path| {
            let now = match input.target.get(path) {
                Some(change) => change.after.clone(),
                None => input.target_now.get(path).cloned().or_else(|| {
                    // Not asked of the target (see `paths_to_look_up`): it
                    // holds, unchanged, what the source's snapshot recorded.
                    (under_source_rename(path, input.source)
                        || inside_renamed_directory(path, input.source))
                    .then(|| input.source.get(path).and_then(|c| c.before.clone()))
                    .flatten()
                }),
            };
            (path.clone(), now)
        })
        .collect();
    let mut items = Vec::new();
    let mut moves: Vec<(RelPath, RelPath)> = Vec::new();
    // Paths whose target rows the rename's own snapshot move already settles.
    let mut settled_by_move: HashSet<RelPath> = HashSet::new();

    // A path whose parent the target still holds as a file or link cannot
    // be written before the deletes phase has made room.
    let blocked = |actual: &HashMap<RelPath, Option<Entry>>, path: &RelPath| {
        std::iter::successors(path.parent(), |p| p.parent())
            .take_while(|p| !p.is_root())
            .any(|p| matches!(actual.get(&p), Some(Some(e)) if e.kind != Kind::Dir))
    };
    // A rename into a directory that another rename brings runs after it
    // (writing below a missing directory would make an empty one first).
    let mut renames: Vec<&Rename> = input.source.renames.iter().collect();
    renames.sort_by_key(|r| r.to.depth());
    // Directories a rename made on the way to its destination.
    let mut made_on_the_way: HashSet<RelPath> = HashSet::new();
    for rename in renames {
        let from = translate(&rename.from, &moves);
        let Some(Some(there)) = actual.get(&from) else {
            continue;
        };
        let Some(wanted) = desired(&rename.to) else {
            continue;
        };
        let fits = there.kind == rename.kind
            && wanted.kind == rename.kind
            && (rename.kind != Kind::File
                || wanted.compare(there, options.preserve) != Difference::Content)
            && matches!(actual.get(&rename.to), None | Some(None))
            && !blocked(&actual, &rename.to)
            && !made_on_the_way.contains(&rename.to)
            && !rename.to.starts_with(&from)
            && !from.is_root();
        if !fits {
            continue;
        }
        let moved: Vec<RelPath> = actual
            .keys()
            .filter(|p| p.starts_with(&from))
            .cloned()
            .collect();
        for path in moved {
            let entry = actual.insert(path.clone(), None).flatten();
            let new_path = path.rebase(&from, &rename.to).expect("under from");
            if input.target.get(&path).is_none() {
                settled_by_move.insert(path.clone());
                settled_by_move.insert(new_path.clone());
            }
            let entry = entry.map(|mut e| {
                e.path = new_path.clone();
                e
            });
            affected.insert(new_path.clone());
            actual.insert(new_path, entry);
        }
        items.push(Item {
            path: rename.to.clone(),
            op: Op::Rename {
                from: from.clone(),
                to: rename.to.clone(),
            },
            replaces: false,
            source_update: None,
            target_update: None,
        });
        made_on_the_way.extend(
            std::iter::successors(rename.to.parent(), |p| p.parent())
                .take_while(|p| !p.is_root())
                .filter(|p| matches!(actual.get(p), None | Some(None))),
        );
        moves.push((from, rename.to.clone()));
    }

    let mut ordered: Vec<RelPath> = affected.into_iter().collect();
    ordered.sort_by(|a, b| a.cmp_tree(b));
    let mut decisions: Vec<(RelPath, Decision)> = Vec::with_capacity(ordered.len());
    for path in ordered {
        let want = desired(&path);
        let have = actual.get(&path).cloned().flatten();
        let decision = match (want, have) {
            (None, None) => Decision::Same,
            (None, Some(have)) if options.no_delete => {
                let _ = have;
                Decision::Keep
            }
            (None, Some(have)) => Decision::Delete(have),
            (Some(want), None) => Decision::Create(want),
            (Some(want), Some(have)) => match want.compare(&have, options.preserve) {
                Difference::Same => Decision::Same,
                _ if options.newer
                    && want.kind == Kind::File
                    && have.kind == Kind::File
                    && have.mtime > want.mtime =>
                {
                    Decision::Keep
                }
                Difference::Metadata => Decision::Meta(want),
                Difference::Content => Decision::Update(want),
                Difference::Kind => Decision::Replace {
                    old: have,
                    new: want,
                },
            },
        };
        decisions.push((path, decision));
    }

    // The target's names of one file, where the renames put them.
    let target_links: Vec<Vec<RelPath>> = input
        .target_links
        .iter()
        .map(|names| names.iter().map(|p| translate(p, &moves)).collect())
        .collect();
    if options.preserve.hard_links {
        plan_links(
            &mut decisions,
            &actual,
            &desired,
            input.source_links,
            &target_links,
        );
    }

    // Content the target holds that a new or changed file can reuse: a path
    // about to be deleted is moved instead; a path left as it is, copied.
    // (Not moved when other names share that file on the target: they
    // would come along.)
    let shared: HashSet<&RelPath> = target_links.iter().flatten().collect();
    let deleting: HashSet<RelPath> = decisions
        .iter()
        .filter_map(|(path, d)| match d {
            Decision::Delete(e) if e.kind == Kind::File && !shared.contains(path) => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect();
    let busy: HashSet<RelPath> = decisions
        .iter()
        .filter(|(_, d)| !matches!(d, Decision::Same))
        .map(|(path, _)| path.clone())
        .collect();
    let mut consumed: HashSet<RelPath> = HashSet::new();
    let mut content_source = |entry: &Entry, here_is_dir: bool| -> Option<(RelPath, bool)> {
        let hash = entry.hash?;
        let candidates = input.target_content.get(&hash)?;
        let candidates: Vec<RelPath> = candidates
            .iter()
            .map(|c| translate(c, &moves))
            .filter(|c| c != &entry.path)
            .collect();
        if !here_is_dir && !blocked(&actual, &entry.path) {
            if let Some(c) = candidates
                .iter()
                .find(|c| deleting.contains(*c) && !consumed.contains(*c))
            {
                consumed.insert(c.clone());
                return Some((c.clone(), true));
            }
        }
        candidates
            .into_iter()
            .find(|c| !busy.contains(c) && !moves.iter().any(|(from, _)| c.starts_with(from)))
            .map(|c| (c, false))
    };

    let mut file_ops: Vec<(RelPath, Op, bool)> = Vec::new();
    let mut plain: Vec<(RelPath, Decision)> = Vec::new();
    for (path, decision) in decisions {
        if let Decision::Link { to, entry } = decision {
            let have = actual.get(&path).cloned().flatten();
            if let Some(old) = have.clone().filter(|old| old.kind == Kind::Dir) {
                plain.push((path.clone(), Decision::Delete(old)));
            }
            file_ops.push((path, Op::HardLink { to, entry }, have.is_some()));
            continue;
        }
        let (entry, replaces, old_is_dir) = match &decision {
            Decision::Create(e) => (e, false, false),
            Decision::Update(e) => (e, true, false),
            Decision::Replace { old, new } => (new, true, old.kind == Kind::Dir),
            _ => {
                plain.push((path, decision));
                continue;
            }
        };
        if entry.kind != Kind::File {
            plain.push((path, decision));
            continue;
        }
        let op = match content_source(entry, old_is_dir) {
            Some((from, true)) => Op::RenameContent {
                from,
                entry: entry.clone(),
            },
            Some((from, false)) => Op::LocalCopy {
                from,
                entry: entry.clone(),
            },
            None => Op::Transfer {
                entry: entry.clone(),
            },
        };
        if let Decision::Replace { old, .. } = &decision {
            // A file is renamed over a file or link; a directory must go first.
            if old.kind == Kind::Dir {
                plain.push((path.clone(), Decision::Delete(old.clone())));
            }
        }
        file_ops.push((path, op, replaces));
    }

    let source_update = |path: &RelPath| -> Option<SnapshotUpdate> {
        input.source.get(path).map(|change| match &change.after {
            Some(after) => SnapshotUpdate::Upsert(after.clone()),
            None => SnapshotUpdate::Remove(path.clone()),
        })
    };
    let target_now_update = |path: &RelPath, have: Option<Entry>| -> Option<SnapshotUpdate> {
        Some(match have {
            Some(entry) => SnapshotUpdate::Upsert(entry),
            None => SnapshotUpdate::Remove(path.clone()),
        })
    };

    for (path, decision) in plain {
        let have = actual.get(&path).cloned().flatten();
        let item = |op: Op, replaces: bool, source_update, target_update| Item {
            path: path.clone(),
            op,
            replaces,
            source_update,
            target_update,
        };
        match decision {
            Decision::Same => {
                let target_update = if settled_by_move.contains(&path) {
                    None
                } else {
                    target_now_update(&path, have)
                };
                items.push(item(Op::Record, false, source_update(&path), target_update));
            }
            Decision::Keep => {
                // The target's row records the path as kept, so the kept
                // difference shows as a target change next run and is
                // judged again (a run without --newer / --no-delete then
                // settles it), yet as the session's own, not as drift.
                let target_update = match have {
                    Some(entry) => SnapshotUpdate::Upsert(entry.kept()),
                    None => SnapshotUpdate::Remove(path.clone()),
                };
                items.push(item(
                    Op::Keep,
                    false,
                    source_update(&path),
                    Some(target_update),
                ));
            }
            Decision::Delete(entry) if consumed.contains(&path) => {
                let _ = entry;
                // Its content moves to where it is wanted.
                items.push(item(Op::Record, false, source_update(&path), None));
            }
            Decision::Delete(entry) => {
                // The source's row settles with the delete unless a new
                // entry replaces the path (then that item settles it).
                let replaced = desired(&path).is_some();
                let update = if replaced { None } else { source_update(&path) };
                items.push(item(Op::Delete { entry }, true, update, None));
            }
            Decision::Create(entry) | Decision::Replace { new: entry, .. } => {
                let replaces = have.is_some();
                if let Some(old) =
                    have.filter(|old| old.kind == Kind::Dir || entry.kind == Kind::Dir)
                {
                    items.push(item(Op::Delete { entry: old }, true, None, None));
                }
                let op = match entry.kind {
                    Kind::Dir => Op::Mkdir { entry },
                    _ => Op::Symlink { entry },
                };
                items.push(item(op, replaces, source_update(&path), None));
            }
            Decision::Update(entry) => {
                // Symlink with another target.
                items.push(item(
                    Op::Symlink { entry },
                    true,
                    source_update(&path),
                    None,
                ));
            }
            Decision::Meta(entry) => {
                items.push(item(
                    Op::SetMeta {
                        entry,
                        restore: false,
                    },
                    true,
                    source_update(&path),
                    None,
                ));
            }
            Decision::Link { .. } => unreachable!("links are file operations"),
        }
    }
    for (path, op, replaces) in file_ops {
        let update = source_update(&path);
        items.push(Item {
            path,
            op,
            replaces,
            source_update: update,
            target_update: None,
        });
    }

    let restored = |path: &RelPath| {
        input
            .restore_as
            .get(path)
            .cloned()
            .or_else(|| desired(path))
    };
    collapse_tree_deletes(&mut items);
    restore_touched_directories(&mut items, &restored);
    Plan { items }
}

/// `-H`: makes the target's names of each file the source's. Of each
/// source file with several names, one name (the leader) holds the file on
/// the target: a name where the target already holds it, as it is or with
/// other metadata, and shares it with no name outside the group; else one
/// the plan writes anyway. Every other name becomes a link to the leader,
/// unless it already is one. A name whose target file is shared with names
/// that are not the source's (a link the source broke, or one made on the
/// target) is written afresh, as a file of its own.
///
/// The names of one file share its stat: a group whose names disagree
/// (a row a scan of dirty paths did not look at again, lagging behind the
/// file) is left as separate files this time.
fn plan_links(
    decisions: &mut [(RelPath, Decision)],
    actual: &HashMap<RelPath, Option<Entry>>,
    desired: &dyn Fn(&RelPath) -> Option<Entry>,
    source_links: &[Vec<RelPath>],
    target_links: &[Vec<RelPath>],
) {
    let index: HashMap<RelPath, usize> = decisions
        .iter()
        .enumerate()
        .map(|(i, (path, _))| (path.clone(), i))
        .collect();
    let target_group: HashMap<&RelPath, usize> = target_links
        .iter()
        .enumerate()
        .flat_map(|(group, names)| names.iter().map(move |name| (name, group)))
        .collect();
    let file_now = |path: &RelPath| {
        actual
            .get(path)
            .cloned()
            .flatten()
            .filter(|e| e.kind == Kind::File)
    };
    // The target's file at `path` stays there through the plan.
    let stays = |decisions: &[(RelPath, Decision)], path: &RelPath| match index.get(path) {
        Some(&i) => matches!(
            decisions[i].1,
            Decision::Same | Decision::Meta(_) | Decision::Keep
        ),
        None => true,
    };
    // The target already holds the source's file at `path` (perhaps with
    // other metadata), and keeps it.
    let in_place = |decisions: &[(RelPath, Decision)], path: &RelPath| {
        index
            .get(path)
            .is_some_and(|&i| matches!(decisions[i].1, Decision::Same | Decision::Meta(_)))
            && file_now(path).is_some()
    };
    // The other names the target's file at `path` keeps after the plan.
    let other_names = |decisions: &[(RelPath, Decision)], path: &RelPath| -> Vec<RelPath> {
        target_group.get(path).map_or_else(Vec::new, |&group| {
            target_links[group]
                .iter()
                .filter(|name| *name != path && stays(decisions, name))
                .cloned()
                .collect()
        })
    };

    // Files of one name on the source that share their file on the target.
    let grouped: HashSet<&RelPath> = source_links.iter().flatten().collect();
    for i in 0..decisions.len() {
        let path = decisions[i].0.clone();
        if grouped.contains(&path) || !in_place(decisions, &path) {
            continue;
        }
        if !other_names(decisions, &path).is_empty() {
            if let Some(want) = desired(&path) {
                decisions[i].1 = Decision::Update(want);
            }
        }
    }

    for group in source_links {
        let members: Vec<(RelPath, Entry)> = group
            .iter()
            .filter(|name| {
                index
                    .get(*name)
                    .is_some_and(|&i| !matches!(decisions[i].1, Decision::Keep))
            })
            .filter_map(|name| Some((name.clone(), desired(name)?)))
            .filter(|(_, want)| want.kind == Kind::File)
            .collect();
        let Some((_, first)) = members.first() else {
            continue;
        };
        let agree = members
            .iter()
            .all(|(_, want)| want.size == first.size && want.mtime == first.mtime);
        if members.len() < 2 || !agree {
            continue;
        }
        let clean = |decisions: &[(RelPath, Decision)], name: &RelPath| {
            other_names(decisions, name)
                .iter()
                .all(|other| group.contains(other))
        };
        let leader = members
            .iter()
            .find(|(name, _)| in_place(decisions, name) && clean(decisions, name))
            .or_else(|| members.iter().find(|(name, _)| !in_place(decisions, name)))
            .unwrap_or(&members[0])
            .0
            .clone();
        let leader_stays = in_place(decisions, &leader) && clean(decisions, &leader);
        if in_place(decisions, &leader) && !leader_stays {
            let want = desired(&leader).expect("a member is wanted");
            decisions[index[&leader]].1 = Decision::Update(want);
        }
        let leader_file = file_now(&leader).map(|e| (e.dev, e.ino));
        for (name, want) in &members {
            if *name == leader {
                continue;
            }
            let linked = leader_stays
                && in_place(decisions, name)
                && file_now(name).map(|e| (e.dev, e.ino)) == leader_file;
            if !linked {
                decisions[index[name]].1 = Decision::Link {
                    to: leader.clone(),
                    entry: want.clone(),
                };
            }
        }
    }
}

/// The paths an item reads or changes.
fn touched_paths(item: &Item) -> Vec<&RelPath> {
    let mut paths = vec![&item.path];
    match &item.op {
        Op::Rename { from, to } => paths.extend([from, to]),
        Op::HardLink { to, entry } => paths.extend([to, &entry.path]),
        Op::RenameContent { from, entry } | Op::LocalCopy { from, entry } => {
            paths.extend([from, &entry.path])
        }
        _ => {}
    }
    paths
}

/// A directory deleted whole becomes one operation: every item under a
/// deleted directory is a delete of what it held, nothing else touches a
/// path there, and the directory's own row removal covers theirs.
fn collapse_tree_deletes(items: &mut Vec<Item>) {
    let mut dirs: Vec<RelPath> = items
        .iter()
        .filter_map(|item| match &item.op {
            Op::Delete { entry } if entry.kind == Kind::Dir => Some(entry.path.clone()),
            _ => None,
        })
        .collect();
    // Outer directories first: they take in the inner ones.
    dirs.sort_by_key(|d| d.depth());
    let under = |path: &RelPath, dir: &RelPath| path.starts_with(dir) && path != dir;
    for dir in dirs {
        let Some(top) = items
            .iter()
            .position(|item| matches!(&item.op, Op::Delete { entry } if entry.path == dir))
        else {
            continue; // taken in by an outer directory
        };
        let only_deletes = items.iter().enumerate().all(|(i, item)| {
            i == top
                || !touched_paths(item).iter().any(|p| under(p, &dir))
                || matches!(&item.op, Op::Delete { .. } | Op::DeleteTree { .. })
        });
        let has_inside = items
            .iter()
            .any(|item| under(&item.path, &dir) && matches!(item.op, Op::Delete { .. }));
        if !only_deletes || !has_inside {
            continue;
        }
        let mut within = Vec::new();
        items.retain(|item| {
            if !under(&item.path, &dir) {
                return true;
            }
            match &item.op {
                Op::Delete { entry } => within.push(entry.clone()),
                Op::DeleteTree {
                    entry,
                    within: inner,
                } => {
                    within.push(entry.clone());
                    within.extend(inner.iter().cloned());
                }
                _ => return true,
            }
            false
        });
        let top = items
            .iter()
            .position(|item| matches!(&item.op, Op::Delete { entry } if entry.path == dir))
            .expect("the directory's own delete stays");
        let Op::Delete { entry } = items[top].op.clone() else {
            unreachable!("found as a delete")
        };
        items[top].op = Op::DeleteTree { entry, within };
    }
}

/// Every directory whose listing the plan changes gets its times put back
/// to the source's afterwards (writing into a directory changes its mtime).
fn restore_touched_directories(items: &mut Vec<Item>, desired: &dyn Fn(&RelPath) -> Option<Entry>) {
    let mut touched: BTreeSet<RelPath> = BTreeSet::new();
    let mut note = |path: &RelPath| {
        if let Some(parent) = path.parent() {
            if !parent.is_root() {
                touched.insert(parent);
            }
        }
    };
    for item in items.iter() {
        match &item.op {
            Op::Rename { from, to } => {
                note(from);
                note(to);
            }
            Op::RenameContent { from, entry } => {
                note(from);
                note(&entry.path);
            }
            Op::Delete { entry }
            | Op::DeleteTree { entry, .. }
            | Op::Mkdir { entry }
            | Op::Transfer { entry }
            | Op::LocalCopy { entry, .. }
            | Op::Symlink { entry }
            | Op::HardLink { entry, .. } => note(&entry.path),
            Op::SetMeta { .. } | Op::Record | Op::Keep => {}
        }
    }
    let mut index: HashMap<RelPath, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if matches!(item.op, Op::Record | Op::Mkdir { .. } | Op::SetMeta { .. }) {
            index.insert(item.path.clone(), i);
        }
    }
    for dir in touched {
        let Some(entry) = desired(&dir).filter(|e| e.kind == Kind::Dir) else {
            continue;
        };
        match index.get(&dir) {
            Some(&i) if items[i].op == Op::Record => {
                items[i].op = Op::SetMeta {
                    entry,
                    restore: true,
                };
                items[i].target_update = None;
            }
            Some(_) => {}
            None => items.push(Item {
                path: dir,
                op: Op::SetMeta {
                    entry,
                    restore: true,
                },
                replaces: true,
                source_update: None,
                target_update: None,
            }),
        }
    }
}

/// Where `path` is after the renames so far.
fn translate(path: &RelPath, moves: &[(RelPath, RelPath)]) -> RelPath {
    let mut path = path.clone();
    for (from, to) in moves {
        if let Some(moved) = path.rebase(from, to) {
            path = moved;
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{detect_renames, diff, Change, DiffOptions};
    use crate::model::Mtime;

    fn file(path: &str, content: u8, ino: u64) -> Entry {
        Entry {
            path: RelPath::new(path.as_bytes()).unwrap(),
            kind: Kind::File,
            size: 10,
            mtime: Mtime {
                sec: 1000 + content as i64,
                nsec: 5,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            dev: 1,
            ino,
            hash: Some([content; 32]),
            link_target: None,
            xattr_hash: None,
            racy: false,
        }
    }

    fn dir(path: &str, ino: u64) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            hash: None,
            mode: 0o755,
            mtime: Mtime { sec: 50, nsec: 0 },
            ..file(path, 0, ino)
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    /// A side: its snapshot and its tree now.
    fn side(snapshot: Vec<Entry>, now: Vec<Entry>) -> (ChangeSet, HashMap<RelPath, Entry>) {
        let mut snapshot = snapshot;
        let mut now = now;
        snapshot.sort_by(|a, b| a.path.cmp(&b.path));
        now.sort_by(|a, b| a.path.cmp(&b.path));
        let (mut set, current) = diff(snapshot, now, vec![], &DiffOptions::default());
        detect_renames(&mut set);
        let map = current.into_iter().map(|e| (e.path.clone(), e)).collect();
        (set, map)
    }

    fn plan(
        source: (ChangeSet, HashMap<RelPath, Entry>),
        target: (ChangeSet, HashMap<RelPath, Entry>),
        options: ReplicaOptions,
    ) -> Vec<String> {
        plan_lines(&planned(source, target, options))
    }

    /// The plan's operations (records aside) as sorted one-line texts.
    fn plan_lines(plan: &Plan) -> Vec<String> {
        let mut lines: Vec<String> = plan
            .items
            .iter()
            .filter(|i| !matches!(i.op, Op::Record))
            .map(|i| {
                i.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        lines.sort();
        lines
    }

    fn planned(
        source: (ChangeSet, HashMap<RelPath, Entry>),
        target: (ChangeSet, HashMap<RelPath, Entry>),
        options: ReplicaOptions,
    ) -> Plan {
        let mut content: HashMap<Hash, Vec<RelPath>> = HashMap::new();
        for entry in target.1.values() {
            if let Some(hash) = entry.hash {
                content.entry(hash).or_default().push(entry.path.clone());
            }
        }
        let input = ReplicaInput {
            source: &source.0,
            target: &target.0,
            source_now: &source.1,
            target_now: &target.1,
            target_content: &content,
            restore_as: &HashMap::new(),
            source_links: &[],
            target_links: &[],
        };
        plan_replica(&input, &options)
    }

    /// The names of each file with several in a side's tree now, as its
    /// endpoint answers `hard_links`.
    fn names_by_inode(now: &HashMap<RelPath, Entry>) -> Vec<Vec<RelPath>> {
        let mut by_inode: HashMap<(u64, u64), Vec<RelPath>> = HashMap::new();
        for entry in now.values().filter(|e| e.kind == Kind::File) {
            by_inode
                .entry((entry.dev, entry.ino))
                .or_default()
                .push(entry.path.clone());
        }
        let mut groups: Vec<Vec<RelPath>> = by_inode
            .into_values()
            .filter(|names| names.len() > 1)
            .map(|mut names| {
                names.sort();
                names
            })
            .collect();
        groups.sort();
        groups
    }

    /// [`plan`] with `-H`, each side's links told by its inode numbers.
    fn plan_linked(
        source: (ChangeSet, HashMap<RelPath, Entry>),
        target: (ChangeSet, HashMap<RelPath, Entry>),
    ) -> Vec<String> {
        let mut content: HashMap<Hash, Vec<RelPath>> = HashMap::new();
        for entry in target.1.values() {
            if let Some(hash) = entry.hash {
                content.entry(hash).or_default().push(entry.path.clone());
            }
        }
        let (source_links, target_links) = (names_by_inode(&source.1), names_by_inode(&target.1));
        let input = ReplicaInput {
            source: &source.0,
            target: &target.0,
            source_now: &source.1,
            target_now: &target.1,
            target_content: &content,
            restore_as: &HashMap::new(),
            source_links: &source_links,
            target_links: &target_links,
        };
        let options = ReplicaOptions {
            preserve: Preserve {
                hard_links: true,
                ..Preserve::default()
            },
            ..ReplicaOptions::default()
        };
        plan_lines(&plan_replica(&input, &options))
    }

    #[test]
    fn only_a_full_scan_that_found_nothing_finds_a_root_empty() {
        let (empty, _) = side(vec![file("gone", 3, 3)], vec![]);
        let (holding, _) = side(vec![], vec![file("c", 1, 4)]);
        assert!(found_empty(&empty, true));
        assert!(!found_empty(&holding, true));
        // A scan of dirty paths sees only those: the rest may hold content.
        assert!(!found_empty(&empty, false));
        // Rows below an unreadable directory stand as recorded.
        let mut unreadable = empty.clone();
        unreadable.unreadable.push((p("d"), "denied".into()));
        assert!(!found_empty(&unreadable, true));
    }

    #[test]
    fn names_of_one_file_become_links_to_one_of_them() {
        let now = vec![file("a", 1, 1), file("b", 1, 1), file("c", 2, 2)];
        let lines = plan_linked(side(vec![], now), side(vec![], vec![]));
        assert_eq!(lines, vec!["create a", "create c", "hlink b => a"]);
    }

    #[test]
    fn a_new_name_of_a_synced_file_is_linked_not_copied() {
        let base = vec![file("a", 1, 1)];
        let now = vec![file("a", 1, 1), file("b", 1, 1)];
        let target = vec![file("a", 1, 11)];
        let lines = plan_linked(side(base, now), side(target.clone(), target));
        assert_eq!(lines, vec!["hlink b => a"]);
    }

    #[test]
    fn names_already_linked_on_the_target_are_left_alone() {
        let base = vec![file("a", 1, 1), file("b", 1, 1)];
        let now = vec![file("a", 1, 1), file("b", 1, 1), file("c", 1, 1)];
        let target = vec![file("a", 1, 11), file("b", 1, 11)];
        let lines = plan_linked(side(base, now), side(target.clone(), target));
        assert_eq!(lines, vec!["hlink c => a"]);
    }

    #[test]
    fn a_name_split_from_its_file_is_written_afresh() {
        // `b` became a file of its own on the source, same content and
        // times: on the target it still shares `a`'s file, so it is
        // copied, not left (or given metadata through the shared file).
        let base = vec![file("a", 1, 1), file("b", 1, 1)];
        let now = vec![file("a", 1, 1), file("b", 1, 5)];
        let target = vec![file("a", 1, 11), file("b", 1, 11)];
        let lines = plan_linked(side(base, now), side(target.clone(), target));
        assert_eq!(lines, vec!["copy a -> b"]);
    }

    #[test]
    fn names_whose_stats_disagree_are_not_linked() {
        // A write through `a` that a scan of dirty paths saw for `a` only:
        // `b`'s row lags behind. Nothing is linked to the stale name.
        let base = vec![file("a", 1, 1), file("b", 1, 1)];
        let now = vec![file("a", 2, 1), file("b", 1, 1)];
        let target = vec![file("a", 1, 11), file("b", 1, 11)];
        let lines = plan_linked(side(base, now), side(target.clone(), target));
        assert_eq!(lines, vec!["update a"]);
    }

    #[test]
    fn a_leader_shared_with_a_stranger_on_the_target_is_not_kept() {
        // The target's `a` shares its file with `x`, which the source keeps
        // apart: `a` cannot hold the group, the new name does.
        let base = vec![file("a", 1, 1), file("x", 1, 3)];
        let now = vec![file("a", 1, 1), file("b", 1, 1), file("x", 1, 3)];
        let target = vec![file("a", 1, 11), file("x", 1, 11)];
        let lines = plan_linked(side(base, now), side(target.clone(), target));
        assert_eq!(lines, vec!["copy x -> b", "hlink a => b"]);
    }

    #[test]
    fn nothing_changed_plans_nothing() {
        let tree = vec![dir("d", 1), file("d/a", 1, 2)];
        let lines = plan(
            side(tree.clone(), tree.clone()),
            side(tree.clone(), tree),
            ReplicaOptions::default(),
        );
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn new_modified_and_deleted_files() {
        let base = vec![file("keep", 1, 1), file("gone", 2, 2), file("mod", 3, 3)];
        let now = vec![file("keep", 1, 1), file("mod", 4, 3), file("new", 5, 4)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["create new", "delete gone", "update mod"]);
    }

    #[test]
    fn directory_rename_is_replayed_as_one_rename() {
        let base = vec![dir("d", 1), file("d/a", 1, 2), file("d/b", 2, 3)];
        let now = vec![dir("e", 1), file("e/a", 1, 2), file("e/b", 2, 3)];
        let target = vec![dir("d", 11), file("d/a", 1, 12), file("d/b", 2, 13)];
        let lines = plan(
            side(base, now),
            side(target.clone(), target),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["rename d -> e"]);
    }

    #[test]
    fn copied_file_is_copied_on_the_target_not_sent() {
        let base = vec![file("a", 1, 1)];
        let now = vec![file("a", 1, 1), file("b", 1, 2)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["copy a -> b"]);
    }

    #[test]
    fn target_drift_is_repaired_from_the_source() {
        let base = vec![file("a", 1, 1), file("b", 2, 2)];
        let drifted = vec![file("a", 9, 1), file("extra", 3, 3)];
        let lines = plan(
            side(base.clone(), base.clone()),
            side(base, drifted),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["create b", "delete extra", "update a"]);
    }

    #[test]
    fn no_delete_keeps_target_paths() {
        let base = vec![file("a", 1, 1)];
        let lines = plan(
            side(base.clone(), vec![]),
            side(base.clone(), base),
            ReplicaOptions {
                no_delete: true,
                ..ReplicaOptions::default()
            },
        );
        assert_eq!(lines, vec!["keep a"]);
    }

    #[test]
    fn a_kept_path_is_recorded_as_kept_and_judged_again_as_the_sessions_own() {
        let base = vec![file("a", 1, 1), file("b", 2, 2)];
        let no_delete = ReplicaOptions {
            no_delete: true,
            ..ReplicaOptions::default()
        };
        let first = planned(
            side(base.clone(), vec![file("b", 2, 2)]),
            side(base.clone(), base.clone()),
            no_delete,
        );
        let kept = first
            .items
            .iter()
            .find(|item| matches!(item.op, Op::Keep))
            .expect("a is kept");
        assert_eq!(kept.source_update, Some(SnapshotUpdate::Remove(p("a"))));
        let Some(SnapshotUpdate::Upsert(row)) = &kept.target_update else {
            panic!("the target records the kept path: {:?}", kept.target_update);
        };
        assert!(row.is_kept());
        assert_eq!(row.clone(), file("a", 1, 1).kept());
        // The next run: the target's scan reports the path again, as a
        // change of metadata only while it stays as kept.
        let target_rows = vec![row.clone(), file("b", 2, 2)];
        let (target, now) = side(target_rows.clone(), base.clone());
        let change = target.get(&p("a")).expect("reported again");
        assert_eq!(
            change.kind(Preserve::default()),
            crate::changes::ChangeKind::Metadata
        );
        assert_eq!(change.after.as_ref().and_then(|e| e.hash), Some([1; 32]));
        let source = || side(vec![file("b", 2, 2)], vec![file("b", 2, 2)]);
        assert_eq!(
            plan(source(), (target.clone(), now.clone()), no_delete),
            vec!["keep a"]
        );
        assert_eq!(
            plan(source(), (target, now), ReplicaOptions::default()),
            vec!["delete a"]
        );
        // Written after it was kept: a change of content.
        let mut edited = file("a", 9, 1);
        edited.hash = None;
        let (target, _) = side(target_rows, vec![edited, file("b", 2, 2)]);
        assert_eq!(
            target.get(&p("a")).unwrap().kind(Preserve::default()),
            crate::changes::ChangeKind::Modified
        );
    }

    #[test]
    fn newer_keeps_a_newer_target_file() {
        let base = vec![file("a", 1, 1)];
        let source_now = vec![file("a", 2, 1)];
        let target_now = vec![file("a", 3, 1)];
        let lines = plan(
            side(base.clone(), source_now),
            side(base, target_now),
            ReplicaOptions {
                newer: true,
                ..ReplicaOptions::default()
            },
        );
        assert_eq!(lines, vec!["keep a"]);
    }

    #[test]
    fn file_becoming_directory_is_deleted_then_created() {
        let base = vec![file("x", 1, 1)];
        let now = vec![dir("x", 2), file("x/in", 2, 3)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["create x/in", "delete x", "mkdir x/"]);
    }

    #[test]
    fn nothing_moves_under_a_file_that_is_about_to_become_a_directory() {
        // f moved into x, which was a file and is now a directory: the
        // move cannot run before x the file is deleted.
        let base = vec![file("x", 1, 1), file("f", 2, 2)];
        let mut moved = file("x/f", 2, 2);
        moved.path = p("x/f");
        let now = vec![dir("x", 3), moved];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert!(!lines.iter().any(|l| l.starts_with("rename")), "{lines:?}");
        assert!(lines.contains(&"delete x".to_string()), "{lines:?}");
        assert!(lines.contains(&"create x/f".to_string()), "{lines:?}");
    }

    #[test]
    fn a_directory_deleted_whole_is_one_operation() {
        let base = vec![
            dir("d", 1),
            file("d/a", 1, 2),
            dir("d/e", 3),
            file("d/e/b", 2, 4),
            file("keep", 3, 5),
        ];
        let now = vec![file("keep", 3, 5)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["delete d/ (and the 3 entries under it)"]);
    }

    #[test]
    fn a_directory_partly_kept_is_deleted_entry_by_entry() {
        // Something under it moves elsewhere: not one delete of the whole.
        let base = vec![dir("d", 1), file("d/a", 1, 2), file("d/b", 2, 3)];
        let now = vec![file("moved", 1, 2)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert!(lines.contains(&"delete d/".to_string()), "{lines:?}");
        assert!(
            lines.contains(&"rename d/a -> moved".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn rename_over_deleted_content_moves_it() {
        // Renamed with a new inode (e.g. copied then deleted): matched by hash.
        let base = vec![file("old", 7, 1)];
        let now = vec![file("new", 7, 99)];
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["rename old -> new"]);
    }

    #[test]
    fn writing_into_a_directory_restores_its_times() {
        let base = vec![dir("d", 1), file("d/a", 1, 2)];
        let mut now = vec![dir("d", 1), file("d/a", 2, 2)];
        now[1].size = 11;
        let lines = plan(
            side(base.clone(), now),
            side(base.clone(), base),
            ReplicaOptions::default(),
        );
        assert_eq!(lines, vec!["meta d/", "update d/a"]);
    }

    #[test]
    fn change_without_hash_is_compared_by_size_and_mtime() {
        let mut a = file("a", 1, 1);
        a.hash = None;
        let change = Change {
            path: p("a"),
            before: None,
            after: Some(a.clone()),
        };
        let source = ChangeSet {
            changes: vec![change.clone()],
            ..ChangeSet::default()
        };
        let target = ChangeSet {
            changes: vec![change],
            ..ChangeSet::default()
        };
        let empty = HashMap::new();
        let input = ReplicaInput {
            source: &source,
            target: &target,
            source_now: &empty,
            target_now: &empty,
            target_content: &HashMap::new(),
            restore_as: &HashMap::new(),
            source_links: &[],
            target_links: &[],
        };
        let plan = plan_replica(&input, &ReplicaOptions::default());
        assert!(plan.touches_nothing());
    }
}
