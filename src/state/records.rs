//! Per-path records: the state every path of a session is in, as `ls` and
//! `status` report it. Four tables hold them: `entries` (synced, the
//! snapshot), `pending` (planned by a run, not yet done), `errors` and
//! `conflicts`. A path in more than one shows the most pressing state:
//! conflict, then error, then pending, then synced.

use std::collections::BTreeMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{format_utc, subtree_bounds, SessionDb, StateError};
use crate::model::{Hash, Kind, Mtime, RelPath};
use crate::plan::{Item, Op};

/// The state of one path in one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathState {
    Synced,
    Pending,
    Error,
    Conflict,
}

impl PathState {
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Synced => "synced",
            PathState::Pending => "pending",
            PathState::Error => "error",
            PathState::Conflict => "conflict",
        }
    }

    pub fn parse(text: &str) -> Option<PathState> {
        [
            PathState::Synced,
            PathState::Pending,
            PathState::Error,
            PathState::Conflict,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// What a run has planned for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlannedOp {
    Create,
    Update,
    Delete,
    Rename,
    Copy,
    Meta,
}

impl PlannedOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PlannedOp::Create => "create",
            PlannedOp::Update => "update",
            PlannedOp::Delete => "delete",
            PlannedOp::Rename => "rename",
            PlannedOp::Copy => "copy",
            PlannedOp::Meta => "meta",
        }
    }

    fn parse(text: &str) -> Option<PlannedOp> {
        [
            PlannedOp::Create,
            PlannedOp::Update,
            PlannedOp::Delete,
            PlannedOp::Rename,
            PlannedOp::Copy,
            PlannedOp::Meta,
        ]
        .into_iter()
        .find(|op| op.as_str() == text)
    }
}

/// A path a run has planned to change, recorded before the run starts
/// changing anything and dropped once the change is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub path: RelPath,
    pub op: PlannedOp,
    /// What the path will be (what it was, for a deletion), when the plan says.
    pub kind: Option<Kind>,
    pub size: u64,
}

impl Pending {
    /// The record a plan item leaves until it is done; none for items that
    /// change nothing on disk.
    pub fn of(item: &Item) -> Option<Pending> {
        let (op, entry) = match &item.op {
            Op::Rename { .. } => (PlannedOp::Rename, None),
            Op::RenameContent { entry, .. } => (PlannedOp::Rename, Some(entry)),
            Op::Delete { entry } | Op::DeleteTree { entry, .. } => (PlannedOp::Delete, Some(entry)),
            Op::Mkdir { entry }
            | Op::Transfer { entry }
            | Op::Symlink { entry }
            | Op::HardLink { entry, .. } => {
                let op = if item.replaces {
                    PlannedOp::Update
                } else {
                    PlannedOp::Create
                };
                (op, Some(entry))
            }
            Op::LocalCopy { entry, .. } => (PlannedOp::Copy, Some(entry)),
            Op::SetMeta { entry, .. } => (PlannedOp::Meta, Some(entry)),
            Op::Record | Op::Keep => return None,
        };
        Some(Pending {
            path: item.path.clone(),
            op,
            kind: entry.map(|e| e.kind),
            size: entry.map_or(0, |e| e.size),
        })
    }
}

/// One path's record, as `ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRecord {
    pub path: RelPath,
    pub state: PathState,
    pub kind: Option<Kind>,
    pub size: Option<u64>,
    pub mtime: Option<Mtime>,
    pub hash: Option<Hash>,
    /// Errors: what failed. Conflicts: what each side did.
    pub message: Option<String>,
    /// When the path came into this state (RFC 3339, UTC), when known.
    pub since: Option<String>,
    /// Errors: how many runs have tried and failed.
    pub attempts: Option<u64>,
    /// Pending: what the run planned.
    pub planned: Option<PlannedOp>,
}

/// How many paths are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub synced: u64,
    pub pending: u64,
    pub error: u64,
    pub conflict: u64,
}

/// What the non-synced tables say of one path.
#[derive(Default)]
struct Marks {
    pending: Option<(PlannedOp, Option<Kind>, u64, String)>,
    error: Option<(String, String, u64)>,
    conflict: Option<(String, String, String)>,
}

impl Marks {
    /// Puts the most pressing state on `out`.
    fn apply(self, out: &mut PathRecord) {
        if let Some((op, kind, size, since)) = self.pending {
            out.state = PathState::Pending;
            out.planned = Some(op);
            out.since = Some(since);
            if out.kind.is_none() {
                out.kind = kind;
                out.size = kind.map(|_| size);
            }
        }
        if let Some((message, first_seen, attempts)) = self.error {
            out.state = PathState::Error;
            out.message = Some(message);
            out.since = Some(first_seen);
            out.attempts = Some(attempts);
        }
        if let Some((here, peer, detected)) = self.conflict {
            out.state = PathState::Conflict;
            out.message = Some(format!("{here} here, {peer} on the peer"));
            out.since = Some(detected);
        }
    }
}

impl SessionDb {
    /// Records what a run is about to do, in one transaction; with
    /// `replace`, the records of an earlier run that never finished go
    /// first (this plan is what is left of it).
    pub fn record_pending(&mut self, pending: &[Pending], replace: bool) -> Result<(), StateError> {
        let since = super::chrono_like_now();
        let corrupt = self.corrupt_owned();
        let tx = self.conn.transaction().map_err(&corrupt)?;
        if replace {
            tx.execute("DELETE FROM pending", []).map_err(&corrupt)?;
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO pending(path, op, kind, size, since)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(&corrupt)?;
            for p in pending {
                insert
                    .execute(params![
                        p.path.as_bytes(),
                        p.op.as_str(),
                        p.kind.map(Kind::code),
                        p.size as i64,
                        since,
                    ])
                    .map_err(&corrupt)?;
            }
        }
        tx.commit().map_err(&corrupt)
    }

    /// Drops the pending records of a run that finished, but for paths
    /// that failed: an error keeps what was planned for it.
    pub fn clear_pending(&self) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE path NOT IN (SELECT path FROM errors)",
                [],
            )
            .map_err(self.corrupt())?;
        Ok(())
    }

    /// How many paths are in each state.
    pub fn state_counts(&self) -> Result<StateCounts, StateError> {
        let count = |sql: &str| -> Result<u64, StateError> {
            self.conn
                .query_row(sql, [], |row| row.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(self.corrupt())
        };
        let conflict = count("SELECT count(*) FROM conflicts")?;
        let error =
            count("SELECT count(*) FROM errors WHERE path NOT IN (SELECT path FROM conflicts)")?;
        let pending = count(
            "SELECT count(*) FROM pending WHERE path NOT IN
                (SELECT path FROM conflicts UNION SELECT path FROM errors)",
        )?;
        let synced = count(
            "SELECT count(*) FROM entries WHERE path NOT IN
                (SELECT path FROM conflicts UNION SELECT path FROM errors
                 UNION SELECT path FROM pending)",
        )?;
        Ok(StateCounts {
            synced,
            pending,
            error,
            conflict,
        })
    }

    /// Hands `each` the record of `path` and of every path under it, in
    /// byte order of path. The snapshot rows stream; only the paths in
    /// another state than synced are held at once.
    pub fn records_under(
        &self,
        path: &RelPath,
        each: &mut dyn FnMut(PathRecord),
    ) -> Result<(), StateError> {
        let (lo, hi) = subtree_bounds(path);
        let whole = path.is_root();
        let range = "(?1 OR path = ?2 OR (path > ?3 AND path < ?4))";
        let bind = params![whole, path.as_bytes(), lo, hi];
        let corrupt = self.corrupt();
        let mut marks: BTreeMap<Vec<u8>, Marks> = BTreeMap::new();
        let each_row = |sql: &str,
                        f: &mut dyn FnMut(&rusqlite::Row) -> rusqlite::Result<()>|
         -> Result<(), StateError> {
            let mut stmt = self.conn.prepare(sql).map_err(&corrupt)?;
            let mut rows = stmt.query(bind).map_err(&corrupt)?;
            while let Some(row) = rows.next().map_err(&corrupt)? {
                f(row).map_err(&corrupt)?;
            }
            Ok(())
        };
        each_row(
            &format!("SELECT path, op, kind, size, since FROM pending WHERE {range}"),
            &mut |row| {
                let op: String = row.get(1)?;
                let op = PlannedOp::parse(&op).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        format!("unknown planned operation `{op}`").into(),
                    )
                })?;
                let kind = row.get::<_, Option<i64>>(2)?.and_then(Kind::from_code);
                let size = row.get::<_, i64>(3)? as u64;
                marks.entry(row.get(0)?).or_default().pending = Some((op, kind, size, row.get(4)?));
                Ok(())
            },
        )?;
        each_row(
            &format!("SELECT path, message, first_seen, attempts FROM errors WHERE {range}"),
            &mut |row| {
                let attempts = row.get::<_, i64>(3)? as u64;
                marks.entry(row.get(0)?).or_default().error =
                    Some((row.get(1)?, row.get(2)?, attempts));
                Ok(())
            },
        )?;
        each_row(
            &format!("SELECT path, here, peer, detected FROM conflicts WHERE {range}"),
            &mut |row| {
                marks.entry(row.get(0)?).or_default().conflict =
                    Some((row.get(1)?, row.get(2)?, row.get(3)?));
                Ok(())
            },
        )?;

        let mut marked = marks.into_iter().peekable();
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT path, kind, size, mtime_sec, mtime_nsec, hash, since
                 FROM entries WHERE {range} ORDER BY path"
            ))
            .map_err(&corrupt)?;
        let mut rows = stmt.query(bind).map_err(&corrupt)?;
        while let Some(row) = rows.next().map_err(&corrupt)? {
            let raw: Vec<u8> = row.get(0).map_err(&corrupt)?;
            // Paths only the other tables know, before this one.
            while let Some((path, marks)) = marked.next_if(|(path, _)| path < &raw) {
                each(self.marked_only(&path, marks)?);
            }
            let own = marked
                .next_if(|(path, _)| path == &raw)
                .map(|(_, marks)| marks)
                .unwrap_or_default();
            let path = RelPath::new(&raw).map_err(|e| self.bad_row("path", &e))?;
            let kind = Kind::from_code(row.get(1).map_err(&corrupt)?)
                .ok_or_else(|| self.bad_row("kind", &"unknown code"))?;
            let hash = match row.get::<_, Option<Vec<u8>>>(5).map_err(&corrupt)? {
                None => None,
                Some(bytes) => Some(
                    Hash::try_from(bytes.as_slice())
                        .map_err(|_| self.bad_row("hash", &"wrong length"))?,
                ),
            };
            let since: Option<i64> = row.get(6).map_err(&corrupt)?;
            let mut out = PathRecord {
                path,
                state: PathState::Synced,
                kind: Some(kind),
                size: Some(row.get::<_, i64>(2).map_err(&corrupt)? as u64),
                mtime: Some(Mtime {
                    sec: row.get(3).map_err(&corrupt)?,
                    nsec: row.get::<_, i64>(4).map_err(&corrupt)? as u32,
                }),
                hash: kind.eq(&Kind::File).then_some(hash).flatten(),
                message: None,
                since: since.map(format_utc),
                attempts: None,
                planned: None,
            };
            own.apply(&mut out);
            each(out);
        }
        for (path, marks) in marked {
            each(self.marked_only(&path, marks)?);
        }
        Ok(())
    }

    /// The record of a path the snapshot has no row for.
    fn marked_only(&self, path: &[u8], marks: Marks) -> Result<PathRecord, StateError> {
        let path = RelPath::new(path).map_err(|e| self.bad_row("path", &e))?;
        let mut out = PathRecord {
            path,
            state: PathState::Synced,
            kind: None,
            size: None,
            mtime: None,
            hash: None,
            message: None,
            since: None,
            attempts: None,
            planned: None,
        };
        marks.apply(&mut out);
        Ok(out)
    }

    fn bad_row(&self, what: &str, detail: &dyn std::fmt::Display) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("a record has a bad {what}: {detail}"),
        }
    }
}
