//! The plan: the operations one run performs on the target, each with the
//! snapshot rows it settles once it has succeeded. Pure data.

use std::fmt;

use crate::model::{Entry, Kind, RelPath};
use crate::state::SnapshotUpdate;

/// One operation on the target root. Paths are as they are when the
/// operation runs (after the renames before it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Move a file, link or whole directory within the target.
    Rename {
        from: RelPath,
        to: RelPath,
    },
    /// Move a file the target already holds onto `entry.path`, then give it
    /// `entry`'s metadata: content that moved, or is no longer needed where it was.
    RenameContent {
        from: RelPath,
        entry: Entry,
    },
    Delete {
        entry: Entry,
    },
    /// Delete a directory and what the plan knows under it (`within`):
    /// one operation for a directory deleted whole (`rm -rf`), however many
    /// entries it holds. What the plan does not know of (excluded entries)
    /// stays, and so does the directory then.
    DeleteTree {
        entry: Entry,
        within: Vec<Entry>,
    },
    Mkdir {
        entry: Entry,
    },
    /// Send the file's data from the source.
    Transfer {
        entry: Entry,
    },
    /// Copy content the target already holds at `from`.
    LocalCopy {
        from: RelPath,
        entry: Entry,
    },
    Symlink {
        entry: Entry,
    },
    /// `-H`: make `entry.path` another name of the file at `to`, which the
    /// plan has put in place by then (its data is sent once, for `to`).
    HardLink {
        to: RelPath,
        entry: Entry,
    },
    /// Times, permissions, owner, xattrs. `restore` marks a directory whose
    /// listing the run changed, whose times are put back afterwards.
    SetMeta {
        entry: Entry,
        restore: bool,
    },
    /// Nothing to do on disk: both sides already agree.
    Record,
    /// The target keeps its own version (`--newer`, `--no-delete`).
    Keep,
}

/// When an operation runs. Each phase finishes before the next starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Renames, in plan order (each may depend on the one before).
    Renames,
    /// Deletions, deepest first.
    Deletes,
    /// New directories, shallowest first.
    Mkdirs,
    /// File data, links, file metadata and records, in parallel.
    Files,
    /// Hard links, once the files they name are in place.
    Links,
    /// Directory metadata, deepest first, once their contents are final.
    DirMeta,
}

impl Op {
    pub fn phase(&self) -> Phase {
        match self {
            Op::Rename { .. } | Op::RenameContent { .. } => Phase::Renames,
            Op::Delete { .. } | Op::DeleteTree { .. } => Phase::Deletes,
            Op::Mkdir { .. } => Phase::Mkdirs,
            Op::HardLink { .. } => Phase::Links,
            Op::SetMeta { entry, .. } if entry.kind == Kind::Dir => Phase::DirMeta,
            _ => Phase::Files,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The path the item settles.
    pub path: RelPath,
    pub op: Op,
    /// Whether `path` existed on the target before (for counting updates).
    pub replaces: bool,
    /// What the source's snapshot records once the op succeeded.
    pub source_update: Option<SnapshotUpdate>,
    /// What the target's snapshot records, for ops that do not produce a
    /// fresh stat of their own (`Record`, `Keep`).
    pub target_update: Option<SnapshotUpdate>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub items: Vec<Item>,
}

/// Counts of what a plan does, as the summary reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCounts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub copied: u64,
    pub bytes_to_send: u64,
}

impl Plan {
    pub fn counts(&self) -> PlanCounts {
        let mut counts = PlanCounts::default();
        for item in &self.items {
            counts.add(item);
        }
        counts
    }

    /// True when carrying out the plan changes nothing on disk.
    pub fn touches_nothing(&self) -> bool {
        self.items
            .iter()
            .all(|item| matches!(item.op, Op::Record | Op::Keep))
    }
}

impl PlanCounts {
    /// Adds another plan's counts to these.
    pub fn merge(&mut self, other: &PlanCounts) {
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.renamed += other.renamed;
        self.copied += other.copied;
        self.bytes_to_send += other.bytes_to_send;
    }

    pub fn add(&mut self, item: &Item) {
        let new_or_updated = |counts: &mut PlanCounts| {
            if item.replaces {
                counts.updated += 1;
            } else {
                counts.created += 1;
            }
        };
        match &item.op {
            Op::Rename { .. } | Op::RenameContent { .. } => self.renamed += 1,
            Op::Delete { .. } => self.deleted += 1,
            Op::DeleteTree { within, .. } => self.deleted += 1 + within.len() as u64,
            Op::Mkdir { .. } | Op::Symlink { .. } | Op::HardLink { .. } => new_or_updated(self),
            Op::Transfer { entry } => {
                new_or_updated(self);
                self.bytes_to_send += entry.size;
            }
            Op::LocalCopy { .. } => {
                new_or_updated(self);
                self.copied += 1;
            }
            Op::SetMeta { restore: false, .. } => self.updated += 1,
            Op::SetMeta { restore: true, .. } | Op::Record | Op::Keep => {}
        }
    }
}

impl fmt::Display for Item {
    /// One line of `--dry-run` or `-v` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = |e: &Entry| match e.kind {
            Kind::Dir => "/",
            _ => "",
        };
        match &self.op {
            Op::Rename { from, to } => write!(f, "rename  {from} -> {to}"),
            Op::RenameContent { from, entry } => write!(f, "rename  {from} -> {}", entry.path),
            Op::Delete { entry } => write!(f, "delete  {}{}", entry.path, kind(entry)),
            Op::DeleteTree { entry, within } => write!(
                f,
                "delete  {}/ (and the {} entries under it)",
                entry.path,
                within.len()
            ),
            Op::Mkdir { entry } => write!(f, "mkdir   {}/", entry.path),
            Op::Transfer { entry } if self.replaces => write!(f, "update  {}", entry.path),
            Op::Transfer { entry } => write!(f, "create  {}", entry.path),
            Op::LocalCopy { from, entry } => write!(f, "copy    {from} -> {}", entry.path),
            Op::Symlink { entry } => write!(
                f,
                "link    {} -> {}",
                entry.path,
                crate::model::escape_bytes(entry.link_target.as_deref().unwrap_or_default())
            ),
            Op::HardLink { to, entry } => write!(f, "hlink   {} => {to}", entry.path),
            Op::SetMeta { entry, .. } => write!(f, "meta    {}{}", entry.path, kind(entry)),
            Op::Record => write!(f, "same    {}", self.path),
            Op::Keep => write!(f, "keep    {}", self.path),
        }
    }
}
