//! Bidirectional reconciliation: both sides' change sets since the common
//! snapshot become two replica plans, one per direction, and the
//! conflicts. Pure.
//!
//! Every changed path gets a verdict: one side's version stands and is
//! carried to the other side; both sides already agree; or it is a conflict
//! and stays as it is on both sides, its snapshot rows untouched, so that
//! the next run finds it again. Each direction's plan is then made by the
//! replica planner from the part of the change sets that direction carries.

use std::collections::{BTreeMap, HashMap};

use crate::changes::{Change, ChangeKind, ChangeSet, Rename};
use crate::model::{Difference, Entry, Hash, Kind, Preserve, RelPath};
use crate::plan::Plan;
use crate::reconcile::{plan_replica, ReplicaInput, ReplicaOptions};

/// One of the two roots of a bidi session, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Local => Side::Remote,
            Side::Remote => Side::Local,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// What the planner knows of both roots.
pub struct BidiInput<'a> {
    pub local: &'a ChangeSet,
    pub remote: &'a ChangeSet,
    /// Each side's current entries for paths the other side changed.
    pub local_now: &'a HashMap<RelPath, Entry>,
    pub remote_now: &'a HashMap<RelPath, Entry>,
    /// Paths on each side that hold content the other side's changes want.
    pub local_content: &'a HashMap<Hash, Vec<RelPath>>,
    pub remote_content: &'a HashMap<Hash, Vec<RelPath>>,
    /// Conflicts the user resolved: whose version stands.
    pub decisions: &'a HashMap<RelPath, Side>,
    pub preserve: Preserve,
}

/// A path changed on both sides in ways that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: RelPath,
    pub local: ChangeKind,
    pub remote: ChangeKind,
}

#[derive(Debug, Default)]
pub struct BidiPlan {
    /// Operations on the remote root, with data from the local one.
    pub to_remote: Plan,
    /// Operations on the local root, with data from the remote one.
    pub to_local: Plan,
    /// Sorted by path.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// This side's version is carried to the other.
    Stands(Side),
    /// Both sides hold the same thing: only the snapshots are brought up to date.
    Agree,
    Conflict {
        local: ChangeKind,
        remote: ChangeKind,
    },
    /// A directory one side deleted, kept on the other because it holds
    /// conflicting entries; neither side changes and no row is written.
    Held,
}

/// Both change sets, by side.
struct Sides<'a> {
    input: &'a BidiInput<'a>,
}

impl<'a> Sides<'a> {
    fn set(&self, side: Side) -> &'a ChangeSet {
        match side {
            Side::Local => self.input.local,
            Side::Remote => self.input.remote,
        }
    }

    fn change(&self, side: Side, path: &RelPath) -> Option<&'a Change> {
        self.set(side).get(path)
    }

    /// True when `side` really changed `path` (not merely re-checked it).
    fn changed(&self, side: Side, path: &RelPath) -> bool {
        self.change(side, path)
            .is_some_and(|c| really_changed(c, self.input.preserve))
    }

    fn now(&self, side: Side) -> &'a HashMap<RelPath, Entry> {
        match side {
            Side::Local => self.input.local_now,
            Side::Remote => self.input.remote_now,
        }
    }

    /// What `side` holds at `path` now: its change, else what it was asked,
    /// else (not asked, and unchanged there) what the snapshot recorded.
    fn state(&self, side: Side, path: &RelPath) -> Option<Entry> {
        if let Some(change) = self.change(side, path) {
            return change.after.clone();
        }
        if let Some(entry) = self.now(side).get(path) {
            return Some(entry.clone());
        }
        self.change(side.other(), path)
            .and_then(|c| c.before.clone())
    }

    /// What `side` did at `path`, in the words `conflicts` prints; a path
    /// it did not touch itself went with a deleted or replaced parent.
    fn kind(&self, side: Side, path: &RelPath) -> ChangeKind {
        match self.change(side, path) {
            Some(change) => change.kind(self.input.preserve),
            None => ChangeKind::Deleted,
        }
    }
}

/// Files changed on both sides whose content can only be compared by hash
/// (equal sizes, a hash missing on one side or the other), and files that
/// one side deleted while the other's change may have left the content
/// as it was: `side`'s paths to hash.
pub fn paths_to_hash(side: &ChangeSet, other: &ChangeSet) -> Vec<RelPath> {
    let unhashed = |c: &Change| {
        c.after
            .as_ref()
            .is_some_and(|e| e.kind == Kind::File && e.hash.is_none())
    };
    side.changes
        .iter()
        .filter(|c| unhashed(c))
        .filter(|c| match other.get(&c.path) {
            None => false,
            Some(o) => match (&c.after, &o.after) {
                (Some(mine), Some(theirs)) => theirs.kind == Kind::File && theirs.size == mine.size,
                (Some(_), None) => c.before.as_ref().is_some_and(|b| b.hash.is_some()),
                _ => false,
            },
        })
        .map(|c| c.path.clone())
        .collect()
}

/// Plans a bidi run.
pub fn plan_bidi(input: &BidiInput) -> BidiPlan {
    let sides = Sides { input };
    let mut verdicts: BTreeMap<TreeKey, Verdict> = BTreeMap::new();
    for change in input.local.changes.iter().chain(&input.remote.changes) {
        let path = &change.path;
        if verdicts.contains_key(&TreeKey(path.clone())) {
            continue;
        }
        let verdict = match input.decisions.get(path) {
            Some(&side) => Verdict::Stands(side),
            None => judge(
                sides.change(Side::Local, path),
                sides.change(Side::Remote, path),
                input.preserve,
            ),
        };
        verdicts.insert(TreeKey(path.clone()), verdict);
    }
    clear_away_under_removed_directories(&sides, &mut verdicts);
    hold_what_lies_under_conflicts(&mut verdicts);

    let renames = |side: Side| -> Vec<Rename> {
        sides
            .set(side)
            .renames
            .iter()
            .filter(|r| {
                [&r.from, &r.to].into_iter().all(|top| {
                    subtree(&verdicts, top).all(|(path, v)| {
                        *v == Verdict::Stands(side) && !sides.changed(side.other(), path)
                    })
                })
            })
            .cloned()
            .collect()
    };
    let carried = |set: &ChangeSet, to: Side| -> ChangeSet {
        let from = to.other();
        ChangeSet {
            changes: set
                .changes
                .iter()
                .filter(|c| match verdicts.get(&TreeKey(c.path.clone())) {
                    Some(Verdict::Stands(side)) => *side == from,
                    // Agreement is recorded once, by the local → remote plan.
                    Some(Verdict::Agree) => to == Side::Remote,
                    _ => false,
                })
                .cloned()
                .collect(),
            ..ChangeSet::default()
        }
    };
    // Paths inside a directory one side renamed (at either place) are not
    // asked of the other side (see `target_paths_to_look_up`): it holds
    // them as the snapshot recorded, unless its own change set says
    // otherwise. The planner must know, as the rename may not be replayed.
    let now_with_renamed = |side: Side| -> HashMap<RelPath, Entry> {
        let mut now = sides.now(side).clone();
        let other = sides.set(side.other());
        for rename in other.renames.iter().filter(|r| r.kind == Kind::Dir) {
            let inside = |c: &&Change| {
                [&rename.from, &rename.to]
                    .iter()
                    .any(|top| c.path.starts_with(top) && c.path != **top)
            };
            for change in other.changes.iter().filter(inside) {
                if let (None, Some(before)) = (sides.change(side, &change.path), &change.before) {
                    now.entry(change.path.clone())
                        .or_insert_with(|| before.clone());
                }
            }
        }
        now
    };
    let local_now = now_with_renamed(Side::Local);
    let remote_now = now_with_renamed(Side::Remote);
    let now = |side: Side| match side {
        Side::Local => &local_now,
        Side::Remote => &remote_now,
    };
    let plan_to = |to: Side| -> Plan {
        let from = to.other();
        let mut source = carried(sides.set(from), to);
        source.renames = renames(from);
        let target = carried(sides.set(to), to);
        let restore_as = directory_times(&sides, &verdicts, to);
        let content = match to {
            Side::Remote => input.remote_content,
            Side::Local => input.local_content,
        };
        plan_replica(
            &ReplicaInput {
                source: &source,
                target: &target,
                source_now: now(from),
                target_now: now(to),
                target_content: content,
                restore_as: &restore_as,
                // bidi does not carry hard links (`-H` is refused).
                source_links: &[],
                target_links: &[],
            },
            &ReplicaOptions {
                preserve: input.preserve,
                ..ReplicaOptions::default()
            },
        )
    };
    let mut conflicts: Vec<Conflict> = verdicts
        .iter()
        .filter_map(|(path, v)| match *v {
            Verdict::Conflict { local, remote } => Some(Conflict {
                path: path.0.clone(),
                local,
                remote,
            }),
            _ => None,
        })
        .collect();
    conflicts.sort_by(|a, b| a.path.cmp(&b.path));
    BidiPlan {
        to_remote: plan_to(Side::Remote),
        to_local: plan_to(Side::Local),
        conflicts,
    }
}

/// False for a row the scan re-checked (by content) that turned out the same.
fn really_changed(change: &Change, preserve: Preserve) -> bool {
    match (&change.before, &change.after) {
        (Some(before), Some(after)) => after.compare(before, preserve) != Difference::Same,
        _ => true,
    }
}

/// The verdict for a path one or both sides changed.
fn judge(local: Option<&Change>, remote: Option<&Change>, preserve: Preserve) -> Verdict {
    let changed = |c: &&Change| really_changed(c, preserve);
    let (local, remote) = (local.filter(changed), remote.filter(changed));
    let (local, remote) = match (local, remote) {
        (Some(_), None) => return Verdict::Stands(Side::Local),
        (None, Some(_)) => return Verdict::Stands(Side::Remote),
        (None, None) => return Verdict::Agree,
        (Some(l), Some(r)) => (l, r),
    };
    let (lk, rk) = (local.kind(preserve), remote.kind(preserve));
    let conflict = Verdict::Conflict {
        local: lk,
        remote: rk,
    };
    match (&local.after, &remote.after) {
        (None, None) => Verdict::Agree,
        (Some(l), Some(r)) => match l.compare(r, preserve) {
            Difference::Same => Verdict::Agree,
            // Equal content: the later mtime's metadata goes to both.
            Difference::Metadata if r.mtime > l.mtime => Verdict::Stands(Side::Remote),
            Difference::Metadata => Verdict::Stands(Side::Local),
            // New content beats a change of metadata alone.
            _ if lk == ChangeKind::Metadata => Verdict::Stands(Side::Remote),
            _ if rk == ChangeKind::Metadata => Verdict::Stands(Side::Local),
            _ => conflict,
        },
        // A deletion beats a change of metadata alone: no content is lost.
        (None, Some(_)) if rk == ChangeKind::Metadata => Verdict::Stands(Side::Local),
        (Some(_), None) if lk == ChangeKind::Metadata => Verdict::Stands(Side::Remote),
        _ => conflict,
    }
}

/// A directory one side deleted (or replaced by a file or link) while the
/// other side changed something under it: the changed entries conflict,
/// the rest is deleted, and the directory stays where it holds conflicts.
fn clear_away_under_removed_directories(sides: &Sides, verdicts: &mut BTreeMap<TreeKey, Verdict>) {
    let is_dir = |e: &Option<Entry>| e.as_ref().is_some_and(|e| e.kind == Kind::Dir);
    // Directories whose removal a verdict carries to the side holding them.
    let removed: Vec<(RelPath, Side)> = verdicts
        .iter()
        .filter_map(|(path, v)| match *v {
            Verdict::Stands(winner) => {
                let gone = !is_dir(&sides.state(winner, &path.0))
                    && is_dir(&sides.state(winner.other(), &path.0));
                gone.then(|| (path.0.clone(), winner))
            }
            _ => None,
        })
        .collect();
    let removed_at: HashMap<&RelPath, Side> = removed.iter().map(|(p, s)| (p, *s)).collect();

    // What the losing side changed under such a directory conflicts,
    // unless the user decided for the directory's winner.
    let under: Vec<(RelPath, Side)> = verdicts
        .iter()
        .filter_map(|(path, v)| match *v {
            Verdict::Stands(side) if sides.state(side, &path.0).is_some() => {
                let mut up = path.0.parent();
                while let Some(dir) = up {
                    if let Some(&winner) = removed_at.get(&dir) {
                        return (winner != side).then(|| (path.0.clone(), dir));
                    }
                    up = dir.parent();
                }
                None
            }
            _ => None,
        })
        .map(|(path, dir)| (path, removed_at[&dir]))
        .collect();
    for (path, winner) in under {
        let key = TreeKey(path.clone());
        if sides.input.decisions.contains_key(&path) {
            continue;
        }
        let decided_above = path
            .parent()
            .into_iter()
            .flat_map(|p| std::iter::successors(Some(p), |p| p.parent()))
            .any(|dir| sides.input.decisions.get(&dir) == Some(&winner));
        let verdict = if decided_above {
            Verdict::Stands(winner)
        } else {
            Verdict::Conflict {
                local: sides.kind(Side::Local, &path),
                remote: sides.kind(Side::Remote, &path),
            }
        };
        verdicts.insert(key, verdict);
    }

    // Deepest first: a directory that still holds something after its
    // removal cannot be removed.
    let mut removed = removed;
    removed.sort_by_key(|(path, _)| std::cmp::Reverse(path.depth()));
    for (dir, winner) in removed {
        let key = TreeKey(dir.clone());
        if verdicts.get(&key) != Some(&Verdict::Stands(winner)) {
            continue;
        }
        let loser = winner.other();
        let mut blocked = false;
        let mut comes_back = false;
        for (path, v) in subtree(verdicts, &dir).filter(|(p, _)| **p != dir) {
            match *v {
                Verdict::Conflict { .. } | Verdict::Held => blocked = true,
                Verdict::Stands(side) if side == loser && sides.state(loser, path).is_some() => {
                    comes_back = true
                }
                _ => {}
            }
        }
        if !blocked && !comes_back {
            continue;
        }
        let verdict = if sides.state(winner, &dir).is_some() {
            // Replaced by a file or link on one side, still a directory
            // with changes on the other.
            Verdict::Conflict {
                local: sides.kind(Side::Local, &dir),
                remote: sides.kind(Side::Remote, &dir),
            }
        } else if comes_back {
            Verdict::Stands(loser)
        } else {
            Verdict::Held
        };
        verdicts.insert(key, verdict);
    }
}

/// Nothing under a conflicted path changes on either side: a conflict is
/// left as it is, whole.
fn hold_what_lies_under_conflicts(verdicts: &mut BTreeMap<TreeKey, Verdict>) {
    let mut held = Vec::new();
    let mut conflict: Option<&RelPath> = None;
    for (path, verdict) in verdicts.iter() {
        if let Some(top) = conflict {
            if path.0.starts_with(top) {
                if !matches!(verdict, Verdict::Conflict { .. }) {
                    held.push(path.clone());
                }
                continue;
            }
        }
        conflict = matches!(verdict, Verdict::Conflict { .. }).then_some(&path.0);
    }
    for key in held {
        verdicts.insert(key, Verdict::Held);
    }
}

/// The times and permissions each directory `to` holds must end with:
/// those of the side whose version stands, else its own.
fn directory_times(
    sides: &Sides,
    verdicts: &BTreeMap<TreeKey, Verdict>,
    to: Side,
) -> HashMap<RelPath, Entry> {
    verdicts
        .iter()
        .filter_map(|(path, v)| {
            let side = match *v {
                Verdict::Stands(side) => side,
                _ => to,
            };
            sides
                .state(side, &path.0)
                .filter(|e| e.kind == Kind::Dir)
                .map(|e| (path.0.clone(), e))
        })
        .collect()
}

/// Paths in tree order, so that a directory and everything under it are
/// neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeKey(RelPath);

impl Ord for TreeKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp_tree(&other.0)
    }
}

impl PartialOrd for TreeKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `top` and everything under it.
fn subtree<'m>(
    verdicts: &'m BTreeMap<TreeKey, Verdict>,
    top: &'m RelPath,
) -> impl Iterator<Item = (&'m RelPath, &'m Verdict)> {
    verdicts
        .range(TreeKey(top.clone())..)
        .map(|(k, v)| (&k.0, v))
        .take_while(move |(path, _)| path.starts_with(top))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{detect_renames, diff, DiffOptions};
    use crate::model::Mtime;
    use crate::plan::{Op, Phase};

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    fn file(path: &str, content: u8, ino: u64) -> Entry {
        Entry {
            path: p(path),
            kind: Kind::File,
            size: 10,
            mtime: Mtime {
                sec: 1000 + content as i64,
                nsec: 0,
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

    type Tree = BTreeMap<RelPath, Entry>;

    fn tree(entries: Vec<Entry>) -> Tree {
        entries.into_iter().map(|e| (e.path.clone(), e)).collect()
    }

    /// A side's change set and its whole tree, as lookups.
    fn side(base: &Tree, now: &Tree) -> (ChangeSet, HashMap<RelPath, Entry>) {
        let (mut set, current) = diff(
            base.values().cloned().collect(),
            now.values().cloned().collect(),
            vec![],
            &DiffOptions::default(),
        );
        detect_renames(&mut set);
        (
            set,
            current.into_iter().map(|e| (e.path.clone(), e)).collect(),
        )
    }

    fn content_index(tree: &Tree) -> HashMap<Hash, Vec<RelPath>> {
        let mut index: HashMap<Hash, Vec<RelPath>> = HashMap::new();
        for entry in tree.values() {
            if let Some(hash) = entry.hash {
                index.entry(hash).or_default().push(entry.path.clone());
            }
        }
        index
    }

    /// Carries out a plan on an in-memory tree, in the driver's phase
    /// order, as the real target would (a directory must be empty to go).
    fn apply(tree: &mut Tree, plan: &Plan) -> Result<(), String> {
        let mut items: Vec<&crate::plan::Item> = plan.items.iter().collect();
        items.sort_by_key(|i| {
            let phase = i.op.phase();
            let depth = i.path.depth() as i64;
            let order = match phase {
                Phase::Deletes | Phase::DirMeta => -depth,
                Phase::Mkdirs => depth,
                _ => 0,
            };
            (phase, order)
        });
        for item in items {
            let parent_ok = |tree: &Tree, path: &RelPath| match path.parent() {
                Some(parent) if !parent.is_root() => {
                    tree.get(&parent).is_some_and(|e| e.kind == Kind::Dir)
                }
                _ => true,
            };
            match &item.op {
                Op::Rename { from, to } => {
                    let moved: Vec<RelPath> = tree
                        .keys()
                        .filter(|k| k.starts_with(from))
                        .cloned()
                        .collect();
                    if moved.is_empty() || tree.contains_key(to) {
                        return Err(format!("cannot rename {from} -> {to}"));
                    }
                    for path in moved {
                        let mut entry = tree.remove(&path).unwrap();
                        entry.path = path.rebase(from, to).unwrap();
                        tree.insert(entry.path.clone(), entry);
                    }
                }
                Op::RenameContent { from, entry } => {
                    let old = tree.remove(from).ok_or(format!("no {from} to move"))?;
                    if old.hash != entry.hash {
                        return Err(format!("{from} does not hold {}'s content", entry.path));
                    }
                    tree.insert(entry.path.clone(), entry.clone());
                }
                Op::Delete { entry } => {
                    if tree
                        .keys()
                        .any(|k| k.starts_with(&entry.path) && *k != entry.path)
                    {
                        return Err(format!("{} is not empty", entry.path));
                    }
                    tree.remove(&entry.path);
                }
                Op::DeleteTree { entry, within } => {
                    for inner in within {
                        tree.remove(&inner.path);
                    }
                    if tree
                        .keys()
                        .any(|k| k.starts_with(&entry.path) && *k != entry.path)
                    {
                        return Err(format!("{} still holds what the plan missed", entry.path));
                    }
                    tree.remove(&entry.path);
                }
                Op::Mkdir { entry }
                | Op::Transfer { entry }
                | Op::LocalCopy { entry, .. }
                | Op::Symlink { entry } => {
                    if !parent_ok(tree, &entry.path) {
                        return Err(format!("no directory for {}", entry.path));
                    }
                    if let Op::LocalCopy { from, .. } = &item.op {
                        if tree.get(from).map(|e| e.hash) != Some(entry.hash) {
                            return Err(format!("{from} does not hold {}'s content", entry.path));
                        }
                    }
                    if entry.kind == Kind::Dir
                        && tree.get(&entry.path).is_some_and(|e| e.kind == Kind::Dir)
                    {
                        continue;
                    }
                    tree.insert(entry.path.clone(), entry.clone());
                }
                Op::SetMeta { entry, .. } => {
                    let have = tree
                        .get_mut(&entry.path)
                        .ok_or(format!("no {} to set metadata on", entry.path))?;
                    if have.kind != entry.kind {
                        return Err(format!("{} changed kind", entry.path));
                    }
                    have.mode = entry.mode;
                    have.mtime = entry.mtime;
                }
                Op::HardLink { to, entry } => {
                    if tree.get(to).map(|e| (e.size, e.mtime)) != Some((entry.size, entry.mtime)) {
                        return Err(format!("{to} is not in place for {}", entry.path));
                    }
                    tree.insert(entry.path.clone(), entry.clone());
                }
                Op::Record | Op::Keep => {}
            }
        }
        Ok(())
    }

    /// What users compare: kind, content, link, permissions, times.
    fn visible(tree: &Tree) -> Vec<(RelPath, Kind, Option<Hash>, u32, Mtime)> {
        tree.values()
            .map(|e| (e.path.clone(), e.kind, e.hash, e.mode, e.mtime))
            .collect()
    }

    /// Runs one bidi reconciliation and carries out both plans.
    fn run(base: &Tree, local: &Tree, remote: &Tree) -> (Tree, Tree, Vec<Conflict>) {
        run_deciding(base, local, remote, &HashMap::new())
    }

    fn run_deciding(
        base: &Tree,
        local: &Tree,
        remote: &Tree,
        decisions: &HashMap<RelPath, Side>,
    ) -> (Tree, Tree, Vec<Conflict>) {
        let (l_set, l_now) = side(base, local);
        let (r_set, r_now) = side(base, remote);
        let plan = plan_bidi(&BidiInput {
            local: &l_set,
            remote: &r_set,
            local_now: &l_now,
            remote_now: &r_now,
            local_content: &content_index(local),
            remote_content: &content_index(remote),
            decisions,
            preserve: Preserve::default(),
        });
        let (mut l, mut r) = (local.clone(), remote.clone());
        apply(&mut r, &plan.to_remote).unwrap_or_else(|e| panic!("to remote: {e}\n{plan:#?}"));
        apply(&mut l, &plan.to_local).unwrap_or_else(|e| panic!("to local: {e}\n{plan:#?}"));
        (l, r, plan.conflicts)
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Act {
        Unchanged,
        Created,
        Modified,
        Metadata,
        Deleted,
        RenamedAway,
        RenamedHere,
        TypeChanged,
    }

    const ACTS: [Act; 8] = [
        Act::Unchanged,
        Act::Created,
        Act::Modified,
        Act::Metadata,
        Act::Deleted,
        Act::RenamedAway,
        Act::RenamedHere,
        Act::TypeChanged,
    ];

    fn needs_absent(act: Act) -> bool {
        matches!(act, Act::Created | Act::RenamedHere)
    }

    /// The file case: `x` in the base (unless created), and the files
    /// `yl`, `yr` each side may rename onto `x`.
    fn file_case(act: Act, side: Side, absent: bool) -> (Tree, Tree) {
        let n = |l: u8, r: u8| if side == Side::Local { l } else { r };
        let mut base = vec![file("yl", 7, 70), file("yr", 8, 80)];
        if !absent {
            base.push(file("x", 1, 10));
        }
        let base = tree(base);
        let mut now = base.clone();
        let x = p("x");
        match act {
            Act::Unchanged => {}
            Act::Created => {
                now.insert(x.clone(), file("x", n(5, 6), 11));
            }
            Act::Modified => {
                now.insert(x.clone(), file("x", n(2, 3), 10));
            }
            Act::Metadata => now.get_mut(&x).unwrap().mode = 0o600,
            Act::Deleted => {
                now.remove(&x);
            }
            Act::RenamedAway => {
                let mut e = now.remove(&x).unwrap();
                e.path = p(if side == Side::Local { "zl" } else { "zr" });
                now.insert(e.path.clone(), e);
            }
            Act::RenamedHere => {
                let from = p(if side == Side::Local { "yl" } else { "yr" });
                let mut e = now.remove(&from).unwrap();
                e.path = x.clone();
                now.insert(x.clone(), e);
            }
            Act::TypeChanged => {
                now.insert(x.clone(), dir("x", 12));
            }
        }
        (base, now)
    }

    /// The directory case: `d` holding `d/f` in the base (unless created).
    fn dir_case(act: Act, side: Side, absent: bool) -> (Tree, Tree) {
        let n = |l: u8, r: u8| if side == Side::Local { l } else { r };
        let mut base = vec![
            dir("yl", 70),
            file("yl/f", 7, 71),
            dir("yr", 80),
            file("yr/f", 8, 81),
        ];
        if !absent {
            base.extend([dir("d", 10), file("d/f", 1, 11)]);
        }
        let base = tree(base);
        let mut now = base.clone();
        let moved = |now: &mut Tree, from: &str, to: &str| {
            let (from, to) = (p(from), p(to));
            let paths: Vec<RelPath> = now
                .keys()
                .filter(|k| k.starts_with(&from))
                .cloned()
                .collect();
            for path in paths {
                let mut e = now.remove(&path).unwrap();
                e.path = path.rebase(&from, &to).unwrap();
                now.insert(e.path.clone(), e);
            }
        };
        match act {
            Act::Unchanged => {}
            Act::Created => {
                now.insert(p("d"), dir("d", 12));
                now.insert(p("d/f"), file("d/f", n(5, 6), 13));
            }
            Act::Modified => {
                now.insert(p("d/f"), file("d/f", n(2, 3), 11));
            }
            Act::Metadata => now.get_mut(&p("d")).unwrap().mode = 0o700,
            Act::Deleted => {
                now.remove(&p("d/f"));
                now.remove(&p("d"));
            }
            Act::RenamedAway => moved(&mut now, "d", if side == Side::Local { "el" } else { "er" }),
            Act::RenamedHere => moved(&mut now, if side == Side::Local { "yl" } else { "yr" }, "d"),
            Act::TypeChanged => {
                now.remove(&p("d/f"));
                now.insert(p("d"), file("d", n(4, 5), 14));
            }
        }
        (base, now)
    }

    /// Expected conflicts, rows local, columns remote, in `ACTS` order:
    /// `C` conflict, `.` none, `-` cannot happen (one side needs the path
    /// the other created).
    const FILE_TABLE: [&str; 8] = [
        "........", //
        ".C----C-", // created
        ".-C.CC-C", // modified
        ".-....-.", // metadata only
        ".-C...-C", // deleted
        ".-C...-C", // renamed away
        ".C----C-", // renamed here
        ".-C.CC-.", // type changed
    ];
    const DIR_TABLE: [&str; 8] = [
        "........", //
        ".C----C-", // created
        ".-C.CC-C", // modified (a file inside)
        ".-....-.", // metadata only
        ".-C...-C", // deleted
        ".-C...-C", // renamed away
        ".C----C-", // renamed here
        ".-C.CC-C", // replaced by a file
    ];

    fn check_table(table: [&str; 8], case: fn(Act, Side, bool) -> (Tree, Tree), what: &str) {
        for (i, &la) in ACTS.iter().enumerate() {
            for (j, &ra) in ACTS.iter().enumerate() {
                let expected = table[i].as_bytes()[j];
                let absent = needs_absent(la) || needs_absent(ra);
                let possible = !(absent
                    && [la, ra]
                        .iter()
                        .any(|a| !needs_absent(*a) && *a != Act::Unchanged));
                assert_eq!(possible, expected != b'-', "{what} {la:?} × {ra:?}: table");
                if !possible {
                    continue;
                }
                let (base, local) = case(la, Side::Local, absent);
                let (_, remote) = case(ra, Side::Remote, absent);
                let (l, r, conflicts) = run(&base, &local, &remote);
                let label = format!("{what}: local {la:?} × remote {ra:?}");
                assert_eq!(
                    !conflicts.is_empty(),
                    expected == b'C',
                    "{label}: conflicts {conflicts:?}"
                );
                if conflicts.is_empty() {
                    assert_eq!(visible(&l), visible(&r), "{label}: trees differ");
                }
                for c in &conflicts {
                    // A conflict leaves both sides as they were.
                    for (before, after) in [(&local, &l), (&remote, &r)] {
                        let under = |t: &Tree| -> Vec<Entry> {
                            t.values()
                                .filter(|e| e.path.starts_with(&c.path))
                                .cloned()
                                .collect()
                        };
                        assert_eq!(under(before), under(after), "{label}: {} touched", c.path);
                    }
                }
                // No new content is lost: what either side wrote survives.
                for (mine, theirs) in [(&local, &remote), (&remote, &local)] {
                    for e in mine.values().filter(|e| e.kind == Kind::File) {
                        let old = base.get(&e.path).is_some_and(|b| b.hash == e.hash)
                            || base.values().any(|b| b.hash == e.hash);
                        let deleted_there = !theirs.values().any(|t| t.hash == e.hash);
                        if old && deleted_there {
                            continue; // an unmodified file whose deletion was carried over
                        }
                        let survives = l.values().chain(r.values()).any(|x| x.hash == e.hash);
                        assert!(survives, "{label}: content of {} lost", e.path);
                    }
                }
            }
        }
    }

    #[test]
    fn every_pair_of_file_changes() {
        check_table(FILE_TABLE, file_case, "file");
    }

    #[test]
    fn every_pair_of_directory_changes() {
        check_table(DIR_TABLE, dir_case, "directory");
    }

    #[test]
    fn same_change_on_both_sides_is_no_conflict() {
        let base = tree(vec![file("a", 1, 1)]);
        let now = tree(vec![file("a", 2, 1), file("new", 3, 2)]);
        let (l, r, conflicts) = run(&base, &now, &now);
        assert!(conflicts.is_empty());
        assert_eq!(visible(&l), visible(&now));
        assert_eq!(visible(&r), visible(&now));
    }

    #[test]
    fn equal_content_different_metadata_takes_the_later_mtime() {
        let base = tree(vec![]);
        let mut older = file("a", 1, 1);
        older.mode = 0o600;
        let mut newer = file("a", 1, 5);
        newer.mtime.sec += 100;
        let (l, r, conflicts) = run(&base, &tree(vec![older]), &tree(vec![newer.clone()]));
        assert!(conflicts.is_empty());
        for t in [&l, &r] {
            assert_eq!(t[&p("a")].mtime, newer.mtime);
            assert_eq!(t[&p("a")].mode, 0o644);
        }
    }

    #[test]
    fn deleted_directory_keeps_what_changed_under_it() {
        let base = tree(vec![
            dir("d", 1),
            file("d/keep", 1, 2),
            file("d/gone", 2, 3),
        ]);
        let local = tree(vec![]);
        let remote = tree(vec![
            dir("d", 1),
            file("d/keep", 9, 2),
            file("d/gone", 2, 3),
        ]);
        let (l, r, conflicts) = run(&base, &local, &remote);
        assert_eq!(
            conflicts,
            vec![Conflict {
                path: p("d/keep"),
                local: ChangeKind::Deleted,
                remote: ChangeKind::Modified,
            }]
        );
        assert!(l.is_empty());
        assert_eq!(
            r.keys().cloned().collect::<Vec<_>>(),
            vec![p("d"), p("d/keep")]
        );
    }

    #[test]
    fn renames_on_both_sides_are_replayed_as_renames() {
        let base = tree(vec![
            dir("a", 1),
            file("a/1", 1, 2),
            dir("b", 3),
            file("b/2", 2, 4),
        ]);
        let local = tree(vec![
            dir("a2", 1),
            file("a2/1", 1, 2),
            dir("b", 3),
            file("b/2", 2, 4),
            file("new", 3, 5),
        ]);
        let remote = tree(vec![
            dir("a", 1),
            file("a/1", 1, 2),
            dir("b2", 3),
            file("b2/2", 2, 4),
        ]);
        let (l_set, l_now) = side(&base, &local);
        let (r_set, r_now) = side(&base, &remote);
        let plan = plan_bidi(&BidiInput {
            local: &l_set,
            remote: &r_set,
            local_now: &l_now,
            remote_now: &r_now,
            local_content: &content_index(&local),
            remote_content: &content_index(&remote),
            decisions: &HashMap::new(),
            preserve: Preserve::default(),
        });
        let ops = |plan: &Plan| -> Vec<String> {
            plan.items
                .iter()
                .filter(|i| !matches!(i.op, Op::Record | Op::SetMeta { .. }))
                .map(|i| {
                    i.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(ops(&plan.to_remote), vec!["rename a -> a2", "create new"]);
        assert_eq!(ops(&plan.to_local), vec!["rename b -> b2"]);
    }

    #[test]
    fn a_decision_settles_a_conflict() {
        let base = tree(vec![file("a", 1, 1)]);
        let local = tree(vec![file("a", 2, 1)]);
        let remote = tree(vec![file("a", 3, 1)]);
        for (side, winner) in [(Side::Local, &local), (Side::Remote, &remote)] {
            let decisions = HashMap::from([(p("a"), side)]);
            let (l, r, conflicts) = run_deciding(&base, &local, &remote, &decisions);
            assert!(conflicts.is_empty());
            assert_eq!(visible(&l), visible(winner));
            assert_eq!(visible(&r), visible(winner));
        }
    }

    #[test]
    fn deciding_for_a_deleted_directory_deletes_what_changed_under_it() {
        let base = tree(vec![dir("d", 1), file("d/f", 1, 2)]);
        let local = tree(vec![]);
        let remote = tree(vec![dir("d", 1), file("d/f", 2, 2), file("d/new", 3, 3)]);
        let decisions = HashMap::from([(p("d/f"), Side::Local), (p("d/new"), Side::Local)]);
        let (l, r, conflicts) = run_deciding(&base, &local, &remote, &decisions);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert!(l.is_empty() && r.is_empty(), "{l:?} {r:?}");
        // Deciding for the remote side brings the directory back.
        let decisions = HashMap::from([(p("d/f"), Side::Remote), (p("d/new"), Side::Remote)]);
        let (l, r, conflicts) = run_deciding(&base, &local, &remote, &decisions);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        assert_eq!(visible(&l), visible(&remote));
        assert_eq!(visible(&r), visible(&remote));
    }
}
