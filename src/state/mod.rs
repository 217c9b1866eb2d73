//! What an endpoint remembers between runs, in its state directory
//! (`ROOT/.snapsync/` unless `--state-dir`): the root id, one SQLite database
//! per session (snapshot rows, per-path errors, run history, session facts)
//! and one lock file per session.
//!
//! A corrupt or unreadable database is an error that says so; it is never
//! silently replaced. Only `-x` (reset) moves it aside and starts afresh.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::model::{Entry, Hash, Kind, Mtime, RelPath};

mod records;
pub use records::{PathRecord, PathState, Pending, PlannedOp, StateCounts};

/// Schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path} is unreadable or corrupt ({detail}); nothing was changed. Run again with -x (--reset) to rebuild this session's snapshot from both trees")]
    Corrupt { path: PathBuf, detail: String },
    #[error("state database {path} was written by a newer snapsync (schema {found}, this binary knows {known}); upgrade snapsync, or run with -x to rebuild the snapshot")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("session `{session}` is already running (process {pid}, lock {path}); wait for it to finish or stop it")]
    Locked {
        session: String,
        pid: String,
        path: PathBuf,
    },
    #[error("state directory: cannot use {path}: {source}; check its permissions and free space")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("root id file {path} is damaged ({detail}); restore it or remove it together with the state directory's databases and run with -x")]
    BadRootId { path: PathBuf, detail: String },
    #[error("lineage file {path} is damaged ({detail}); fix or remove the line (the next runs learn the edges again)")]
    BadLineage { path: PathBuf, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the root's stable id from `STATE/id`, creating it when missing.
pub fn root_id(state_dir: &Path) -> Result<String, StateError> {
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let path = state_dir.join("id");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(id.to_string())
            } else {
                Err(StateError::BadRootId {
                    path,
                    detail: "expected 32 hex digits".into(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: String = (0..16)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            let tmp = state_dir.join(format!(".id.{}", std::process::id()));
            fs::write(&tmp, format!("{id}\n")).map_err(io_err(&tmp))?;
            // Two processes racing to create the id must agree on one.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                    Ok(id)
                }
                Err(_) => {
                    let _ = fs::remove_file(&tmp);
                    root_id(state_dir)
                }
            }
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// An exclusive hold on one session in one state directory, released when
/// dropped or when the process dies (it is an `flock`). The file holds the
/// holder's pid while held, and is emptied when released normally: a pid
/// found in a lock nobody holds was left by a process that died.
pub struct SessionLock {
    file: File,
    /// Set when this lock was taken over from a process that died holding it.
    pub stale_from: Option<String>,
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

impl SessionLock {
    /// The pid of the process running `session` now, if one is.
    pub fn holder(state_dir: &Path, session: &str) -> Option<String> {
        let path = state_dir.join(format!("{session}.lock"));
        let mut file = File::open(&path).ok()?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            return None;
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        Some(pid.trim().to_string())
    }

    pub fn acquire(state_dir: &Path, session: &str) -> Result<Self, StateError> {
        fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let path = state_dir.join(format!("{session}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(StateError::Locked {
                session: session.to_string(),
                pid: pid.trim().to_string(),
                path,
            });
        }
        let mut left = String::new();
        let _ = file.read_to_string(&mut left);
        let left = left.trim().to_string();
        file.set_len(0).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        write!(file, "{}", std::process::id()).map_err(io_err(&path))?;
        Ok(SessionLock {
            file,
            stale_from: (!left.is_empty()).then_some(left),
        })
    }
}

/// The lineage edges this root has learned (`STATE/lineage`, one `FROM TO
/// SESSION` line each).
pub fn read_lineage(state_dir: &Path) -> Result<Vec<crate::lineage::Edge>, StateError> {
    let path = state_dir.join("lineage");
    match fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                crate::lineage::Edge::from_line(line).ok_or_else(|| StateError::BadLineage {
                    path: path.clone(),
                    detail: format!("line `{line}` is not `FROM TO SESSION`"),
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Adds edges to this root's lineage (under a lock, written whole to a
/// temporary file and renamed, so concurrent sessions never lose each
/// other's edges or leave half a file).
pub fn add_lineage(state_dir: &Path, edges: &[crate::lineage::Edge]) -> Result<(), StateError> {
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let lock_path = state_dir.join("lineage.lock");
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let mut all: std::collections::BTreeSet<crate::lineage::Edge> =
        read_lineage(state_dir)?.into_iter().collect();
    let before = all.len();
    all.extend(edges.iter().cloned());
    if all.len() == before {
        return Ok(());
    }
    let path = state_dir.join("lineage");
    let temp = state_dir.join(format!("lineage.tmp-{}", std::process::id()));
    let text: String = all.iter().map(|e| e.to_line() + "\n").collect();
    fs::write(&temp, text).map_err(io_err(&temp))?;
    fs::rename(&temp, &path).map_err(io_err(&path))?;
    drop(lock);
    Ok(())
}

/// A change to one snapshot row, written in batches after the operation it
/// records has succeeded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SnapshotUpdate {
    Upsert(Entry),
    /// Removes the row and every row below it.
    Remove(RelPath),
    /// Moves the row and every row below it.
    Move {
        from: RelPath,
        to: RelPath,
    },
}

/// One session's database on one endpoint.
pub struct SessionDb {
    conn: Connection,
    path: PathBuf,
}

/// What a session records about itself on each side.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionFacts {
    /// The other root, as this side's last run named it.
    pub peer: Option<String>,
    pub direction: Option<String>,
    pub peer_root_id: Option<String>,
    /// Set once a run has completed on this side.
    pub established: bool,
    pub filters: Option<String>,
    /// Conflicts the user resolved on this side, not yet carried out.
    pub decisions: Vec<Decision>,
    /// Which roots feed which, as this root knows it.
    pub lineage: Vec<crate::lineage::Edge>,
    /// Things the user should hear about from opening the session.
    pub warnings: Vec<String>,
    /// What stands at the root's path.
    pub root: RootState,
    /// This root's id (`.snapsync/id`), when it has one.
    pub root_id: Option<String>,
    /// This root holds the session's database (its snapshot).
    pub has_snapshot: bool,
}

/// What stands at a root's path when the session opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RootState {
    #[default]
    Dir,
    Missing,
    /// Something other than a directory.
    NotDir,
}

/// A conflict as one side records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConflictRecord {
    pub path: RelPath,
    /// What this side did (`created`, `modified`, `deleted`, `type-changed`, ...).
    pub here: String,
    /// What the peer did.
    pub peer: String,
}

/// `snapsync resolve`'s choice for one conflicted path, in this side's
/// words: `local` is this root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub path: RelPath,
    /// `local`, `remote`, `newer` or `both`.
    pub keep: String,
    /// When it was decided, `YYYYmmdd-HHMMSS` UTC (names the copy `both` keeps).
    pub decided: String,
}

/// A conflict as `snapsync conflicts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRow {
    pub record: ConflictRecord,
    /// When it was first found (RFC 3339, UTC).
    pub detected: String,
    pub decision: Option<Decision>,
}

impl SessionDb {
    pub fn path_for(state_dir: &Path, session: &str) -> PathBuf {
        state_dir.join(format!("{session}.db"))
    }

    /// Opens (or creates) the session database. With `reset`, an existing
    /// database is moved aside first (see [`Self::set_aside`]).
    pub fn open(state_dir: &Path, session: &str, reset: bool) -> Result<Self, StateError> {
        if reset {
            Self::set_aside(state_dir, session)?;
        }
        Self::open_or_make(state_dir, session)
    }

    /// `-x`: moves the session's database aside as
    /// `<session>.db.reset-<time>` (so a corrupt one is kept for
    /// inspection), returning where it went, if there was one.
    pub fn set_aside(state_dir: &Path, session: &str) -> Result<Option<PathBuf>, StateError> {
        let path = Self::path_for(state_dir, session);
        if !path.exists() {
            return Ok(None);
        }
        let aside = state_dir.join(format!(
            "{session}.db.reset-{}",
            chrono_like_now().replace(':', "")
        ));
        fs::rename(&path, &aside).map_err(io_err(&path))?;
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(state_dir.join(format!("{session}.db{suffix}")));
        }
        Ok(Some(aside))
    }

    /// Opens the session database, making it if there is none.
    pub fn open_or_make(state_dir: &Path, session: &str) -> Result<Self, StateError> {
        fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let path = Self::path_for(state_dir, session);
        let corrupt = |e: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(corrupt)?;
        // Made or upgraded under the database's write lock, so that two
        // processes opening a new database at once (two runs, or `status`
        // beside a run) never both make its tables.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(corrupt)?;
        let made = Self::make_schema(&conn).map_err(corrupt);
        let ended = match &made {
            Ok(()) => conn.execute_batch("COMMIT"),
            Err(_) => conn.execute_batch("ROLLBACK"),
        };
        made?;
        ended.map_err(corrupt)?;
        // Touch every table once so a damaged file fails here, before any
        // run has changed anything.
        conn.query_row(
            "SELECT (SELECT count(*) FROM meta), (SELECT count(*) FROM runs)",
            [],
            |_| Ok(()),
        )
        .map_err(corrupt)?;
        Ok(SessionDb { conn, path })
    }

    /// Inside a write transaction: makes the tables of a new database,
    /// migrates an older one.
    fn make_schema(conn: &Connection) -> Result<(), rusqlite::Error> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version == 0 {
            let tables: i64 =
                conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
            if tables > 0 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some("it has tables but no schema version".into()),
                ));
            }
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(PENDING_TABLE)?;
        } else if version < SCHEMA_VERSION {
            migrate(conn, version)?;
        }
        conn.execute_batch(CONFLICTS_TABLE)
    }

    /// Opens a session's database to read it (`writable` to record
    /// decisions too), never making one: `None` when there is none yet, it
    /// is still being made, or it is of another schema version (the next
    /// run migrates it, or says why it cannot). A reader never blocks a
    /// running session (WAL mode), and never writes.
    pub fn open_existing(
        state_dir: &Path,
        session: &str,
        writable: bool,
    ) -> Result<Option<Self>, StateError> {
        let path = Self::path_for(state_dir, session);
        let corrupt = |e: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let flags = if writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        };
        let conn = match Connection::open_with_flags(&path, flags) {
            Ok(conn) => conn,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(corrupt(e)),
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(corrupt)?;
        if version == 0 {
            return Ok(None);
        }
        if version != SCHEMA_VERSION {
            // Older or newer: the next run migrates it or says so.
            return Ok(None);
        }
        Ok(Some(SessionDb { conn, path }))
    }

    fn corrupt(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |e| StateError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// [`Self::corrupt`] that does not hold on to `self` (for use while a
    /// transaction borrows the connection).
    fn corrupt_owned(&self) -> impl Fn(rusqlite::Error) -> StateError {
        let path = self.path.clone();
        move |e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        }
    }

    pub fn facts(&self) -> Result<SessionFacts, StateError> {
        let get = |key: &str| -> Result<Option<String>, StateError> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(self.corrupt())
        };
        Ok(SessionFacts {
            peer: get("peer")?,
            direction: get("direction")?,
            peer_root_id: get("peer_root_id")?,
            established: get("established")?.as_deref() == Some("1"),
            filters: get("filters")?,
            lineage: Vec::new(),
            warnings: Vec::new(),
            root: RootState::Dir,
            root_id: None,
            has_snapshot: true,
            decisions: self
                .conflicts()?
                .into_iter()
                .filter_map(|row| row.decision)
                .collect(),
        })
    }

    /// The conflicts the last run left, by path.
    pub fn conflicts(&self) -> Result<Vec<ConflictRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT path, here, peer, detected, keep, decided FROM conflicts ORDER BY path",
            )
            .map_err(self.corrupt())?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(self.corrupt())?;
        let mut out = Vec::new();
        for row in rows {
            let (path, here, peer, detected, keep, decided) = row.map_err(self.corrupt())?;
            let path = RelPath::new(&path).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                detail: format!("conflict row has a bad path: {e}"),
            })?;
            let decision = keep.map(|keep| Decision {
                path: path.clone(),
                keep,
                decided: decided.unwrap_or_default(),
            });
            out.push(ConflictRow {
                record: ConflictRecord { path, here, peer },
                detected,
                decision,
            });
        }
        Ok(out)
    }

    /// Replaces the recorded conflicts with those a run found. A conflict
    /// already known keeps when it was found; one that is gone is dropped
    /// with its decision, except where carrying the decision out failed
    /// (`failed`), so that it is tried again.
    pub fn record_conflicts(
        &mut self,
        conflicts: &[ConflictRecord],
        failed: &[RelPath],
        examined: Option<&[RelPath]>,
    ) -> Result<(), StateError> {
        let now = chrono_like_now();
        let path = self.path.clone();
        let corrupt = move |e: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&corrupt)?;
        tx.execute(
            "CREATE TEMP TABLE IF NOT EXISTS still(path BLOB PRIMARY KEY)",
            [],
        )
        .map_err(&corrupt)?;
        tx.execute("DELETE FROM still", []).map_err(&corrupt)?;
        for path in conflicts.iter().map(|c| &c.path).chain(failed) {
            tx.execute(
                "INSERT OR IGNORE INTO still(path) VALUES (?1)",
                [path.as_bytes()],
            )
            .map_err(&corrupt)?;
        }
        if let Some(examined) = examined {
            // A partial run says nothing of the conflicts it did not look at.
            let known: Vec<Vec<u8>> = {
                let mut stmt = tx.prepare("SELECT path FROM conflicts").map_err(&corrupt)?;
                let rows = stmt
                    .query_map([], |row| row.get::<_, Vec<u8>>(0))
                    .map_err(&corrupt)?;
                rows.collect::<Result<_, _>>().map_err(&corrupt)?
            };
            let looked: std::collections::HashSet<&[u8]> =
                examined.iter().map(|p| p.as_bytes()).collect();
            for path in known.iter().filter(|p| !looked.contains(p.as_slice())) {
                tx.execute("INSERT OR IGNORE INTO still(path) VALUES (?1)", [path])
                    .map_err(&corrupt)?;
            }
        }
        tx.execute(
            "DELETE FROM conflicts WHERE path NOT IN (SELECT path FROM still)",
            [],
        )
        .map_err(&corrupt)?;
        for c in conflicts {
            tx.execute(
                "INSERT INTO conflicts(path, here, peer, detected) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(path) DO UPDATE SET here = excluded.here, peer = excluded.peer",
                params![c.path.as_bytes(), c.here, c.peer, now],
            )
            .map_err(&corrupt)?;
        }
        tx.commit().map_err(&corrupt)?;
        Ok(())
    }

    /// Records `resolve`'s choice for a conflicted path; false when the
    /// path is not in conflict in this session.
    pub fn decide(&self, path: &RelPath, keep: &str, decided: &str) -> Result<bool, StateError> {
        let changed = self
            .conn
            .execute(
                "UPDATE conflicts SET keep = ?2, decided = ?3 WHERE path = ?1",
                params![path.as_bytes(), keep, decided],
            )
            .map_err(self.corrupt())?;
        Ok(changed > 0)
    }

    /// One fact of the session's `meta` table (`log`: where the log goes).
    pub fn fact(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.corrupt())
    }

    pub fn set_fact(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(self.corrupt())?;
        Ok(())
    }

    /// Every snapshot row, in byte order of path.
    pub fn load_entries(&self) -> Result<Vec<Entry>, StateError> {
        let mut entries = Vec::new();
        read_entries(&self.conn, &self.path, &mut |entry| {
            entries.push(entry);
            true
        })?;
        Ok(entries)
    }

    /// Streams every snapshot row, in byte order of path, from a second
    /// (read-only) connection on a thread of its own, so the rows are never
    /// all in memory at once. A read error arrives as the last item.
    pub fn stream_entries(&self) -> crossbeam_channel::Receiver<Result<Entry, StateError>> {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let path = self.path.clone();
        std::thread::spawn(move || {
            let conn = match Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = tx.send(Err(StateError::Corrupt {
                        path,
                        detail: e.to_string(),
                    }));
                    return;
                }
            };
            let result = read_entries(&conn, &path, &mut |entry| tx.send(Ok(entry)).is_ok());
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        rx
    }

    /// The last run recorded: started, finished, result, summary (JSON).
    pub fn last_run(&self) -> Result<Option<[String; 4]>, StateError> {
        self.conn
            .query_row(
                "SELECT started, finished, result, summary FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |row| Ok([row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?]),
            )
            .optional()
            .map_err(self.corrupt())
    }

    /// Rows in a table of this database (`entries`, `errors`, `conflicts`).
    pub fn count(&self, table: &str) -> Result<u64, StateError> {
        debug_assert!(["entries", "errors", "conflicts", "pending"].contains(&table));
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.corrupt())
    }

    /// The snapshot row at `path`, if any.
    pub fn entry(&self, path: &RelPath) -> Result<Option<Entry>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE path = ?1"
            ))
            .map_err(self.corrupt())?;
        let mut rows = stmt.query([path.as_bytes()]).map_err(self.corrupt())?;
        match rows.next().map_err(self.corrupt())? {
            None => Ok(None),
            Some(row) => {
                let entry = row_to_entry(row).map_err(self.corrupt())?;
                entry.map(Some).map_err(|what| StateError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("snapshot row has {what}"),
                })
            }
        }
    }

    /// Every row strictly below `dir`, in byte order of path: the range
    /// `dir/` … `dir0` (for the root, every row).
    pub fn entries_under(&self, dir: &RelPath) -> Result<Vec<Entry>, StateError> {
        if dir.is_root() {
            return self.load_entries();
        }
        let (lo, hi) = subtree_bounds(dir);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE path > ?1 AND path < ?2 ORDER BY path"
            ))
            .map_err(self.corrupt())?;
        let mut rows = stmt.query(params![lo, hi]).map_err(self.corrupt())?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next().map_err(self.corrupt())? {
            let entry = row_to_entry(row).map_err(self.corrupt())?;
            entries.push(entry.map_err(|what| StateError::Corrupt {
                path: self.path.clone(),
                detail: format!("snapshot row has {what}"),
            })?);
        }
        Ok(entries)
    }

    /// True when the snapshot has any row.
    /// How many rows the snapshot holds.
    pub fn count_entries(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
            .map_err(self.corrupt())
    }

    pub fn has_entries(&self) -> Result<bool, StateError> {
        self.conn
            .query_row("SELECT EXISTS(SELECT 1 FROM entries)", [], |row| row.get(0))
            .map_err(self.corrupt())
    }

    /// The sizes of the non-empty files whose content is known (once each):
    /// what [`crate::changes::SizesWorthHashing`] notes during a full scan.
    pub fn file_sizes_with_hashes(&self) -> Result<Vec<u64>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT size FROM entries WHERE kind = ?1 AND hash IS NOT NULL AND size > 0",
            )
            .map_err(self.corrupt())?;
        let sizes = stmt
            .query_map([Kind::File.code()], |row| row.get::<_, i64>(0))
            .map_err(self.corrupt())?
            .map(|size| size.map(|s| s as u64))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(self.corrupt())?;
        Ok(sizes)
    }

    /// The file rows whose content hash is one of `wanted`. Reads every
    /// row's path and hash (no index on hashes: it would cost every write
    /// of every run, for a question asked only when files were added or
    /// changed).
    pub fn files_with_hashes(&self, wanted: &HashSet<Hash>) -> Result<Vec<Entry>, StateError> {
        let mut paths = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT path, hash FROM entries WHERE kind = ?1 AND hash IS NOT NULL",
                )
                .map_err(self.corrupt())?;
            let mut rows = stmt.query([Kind::File.code()]).map_err(self.corrupt())?;
            while let Some(row) = rows.next().map_err(self.corrupt())? {
                let hash = row.get_ref(1).map_err(self.corrupt())?;
                let matches = hash
                    .as_blob()
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .is_some_and(|hash| wanted.contains(&hash));
                if matches {
                    paths.push(row.get::<_, Vec<u8>>(0).map_err(self.corrupt())?);
                }
            }
        }
        self.entries_at(paths)
    }

    /// The file rows recording one of these inodes (device, inode): the
    /// other names of a file (`-H`). One pass over three columns, like
    /// [`SessionDb::files_with_hashes`], for the same reason (no index).
    pub fn files_with_inodes(
        &self,
        wanted: &HashSet<(u64, u64)>,
    ) -> Result<Vec<Entry>, StateError> {
        let mut paths = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT path, dev, ino FROM entries WHERE kind = ?1")
                .map_err(self.corrupt())?;
            let mut rows = stmt.query([Kind::File.code()]).map_err(self.corrupt())?;
            while let Some(row) = rows.next().map_err(self.corrupt())? {
                let dev = row.get::<_, i64>(1).map_err(self.corrupt())? as u64;
                let ino = row.get::<_, i64>(2).map_err(self.corrupt())? as u64;
                if wanted.contains(&(dev, ino)) {
                    paths.push(row.get::<_, Vec<u8>>(0).map_err(self.corrupt())?);
                }
            }
        }
        self.entries_at(paths)
    }

    /// The rows at these paths (as read from the table, in its bytes).
    fn entries_at(&self, paths: Vec<Vec<u8>>) -> Result<Vec<Entry>, StateError> {
        let mut entries = Vec::with_capacity(paths.len());
        for path in paths {
            let path = RelPath::new(&path).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                detail: format!("snapshot row has {e}"),
            })?;
            entries.extend(self.entry(&path)?);
        }
        Ok(entries)
    }

    pub fn entry_count(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT count(*) FROM entries", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.corrupt())
    }

    /// Writes a batch of updates in one transaction.
    pub fn apply_updates(&mut self, updates: &[SnapshotUpdate]) -> Result<(), StateError> {
        if updates.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let corrupt = move |e: rusqlite::Error| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&corrupt)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO entries(path, kind, size, mtime_sec, mtime_nsec,
                        mode, uid, gid, dev, ino, hash, link_target, xattr_hash, racy, since)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(&corrupt)?;
            let mut remove = tx
                .prepare_cached("DELETE FROM entries WHERE path = ?1 OR (path > ?2 AND path < ?3)")
                .map_err(&corrupt)?;
            // A settled path is neither failed nor still to do.
            let mut errors_clear = tx
                .prepare_cached("DELETE FROM errors WHERE path = ?1")
                .map_err(&corrupt)?;
            let mut pending_clear = tx
                .prepare_cached("DELETE FROM pending WHERE path = ?1")
                .map_err(&corrupt)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for update in updates {
                match update {
                    SnapshotUpdate::Upsert(e) => {
                        upsert
                            .execute(params![
                                e.path.as_bytes(),
                                e.kind.code(),
                                e.size as i64,
                                e.mtime.sec,
                                e.mtime.nsec as i64,
                                e.mode as i64,
                                e.uid as i64,
                                e.gid as i64,
                                e.dev as i64,
                                e.ino as i64,
                                e.hash.as_ref().map(|h| &h[..]),
                                e.link_target.as_deref(),
                                e.xattr_hash.as_ref().map(|h| &h[..]),
                                e.racy,
                                now,
                            ])
                            .map_err(&corrupt)?;
                        errors_clear
                            .execute([e.path.as_bytes()])
                            .map_err(&corrupt)?;
                        pending_clear
                            .execute([e.path.as_bytes()])
                            .map_err(&corrupt)?;
                    }
                    SnapshotUpdate::Remove(path) => {
                        let (lo, hi) = subtree_bounds(path);
                        remove
                            .execute(params![path.as_bytes(), lo, hi])
                            .map_err(&corrupt)?;
                        errors_clear.execute([path.as_bytes()]).map_err(&corrupt)?;
                        pending_clear.execute([path.as_bytes()]).map_err(&corrupt)?;
                    }
                    SnapshotUpdate::Move { from, to } => {
                        let (lo, hi) = subtree_bounds(from);
                        let cut = from.as_bytes().len() as i64 + 1;
                        // Remove whatever the destination held, then move.
                        let (to_lo, to_hi) = subtree_bounds(to);
                        remove
                            .execute(params![to.as_bytes(), to_lo, to_hi])
                            .map_err(&corrupt)?;
                        for path in [from, to] {
                            pending_clear.execute([path.as_bytes()]).map_err(&corrupt)?;
                        }
                        tx.execute(
                            "UPDATE entries SET path = ?1 WHERE path = ?2",
                            params![to.as_bytes(), from.as_bytes()],
                        )
                        .map_err(&corrupt)?;
                        tx.execute(
                            "UPDATE entries SET path = CAST(?1 || substr(path, ?2) AS BLOB)
                             WHERE path > ?3 AND path < ?4",
                            params![to.as_bytes(), cut, lo, hi],
                        )
                        .map_err(&corrupt)?;
                    }
                }
            }
        }
        tx.commit().map_err(&corrupt)?;
        Ok(())
    }

    /// Records that these paths failed, each with the OS message; retried
    /// next run. After a run that looked at the whole tree (`whole`), an
    /// error it did not meet again is gone (the path was settled, removed
    /// or excluded meanwhile).
    pub fn record_errors(
        &mut self,
        failures: &[(RelPath, String)],
        whole: bool,
    ) -> Result<(), StateError> {
        let now = chrono_like_now();
        let corrupt = self.corrupt_owned();
        let tx = self.conn.transaction().map_err(&corrupt)?;
        if whole {
            tx.execute(
                "CREATE TEMP TABLE IF NOT EXISTS failed(path BLOB PRIMARY KEY)",
                [],
            )
            .map_err(&corrupt)?;
            tx.execute("DELETE FROM failed", []).map_err(&corrupt)?;
            for (path, _) in failures {
                tx.execute(
                    "INSERT OR IGNORE INTO failed(path) VALUES (?1)",
                    [path.as_bytes()],
                )
                .map_err(&corrupt)?;
            }
            tx.execute(
                "DELETE FROM errors WHERE path NOT IN (SELECT path FROM failed)",
                [],
            )
            .map_err(&corrupt)?;
        }
        for (path, message) in failures {
            tx.execute(
                "INSERT INTO errors(path, message, first_seen, last_seen, attempts)
                 VALUES (?1, ?2, ?3, ?3, 1)
                 ON CONFLICT(path) DO UPDATE SET message = excluded.message,
                    last_seen = excluded.last_seen, attempts = attempts + 1",
                params![path.as_bytes(), message, now],
            )
            .map_err(&corrupt)?;
        }
        tx.commit().map_err(&corrupt)?;
        Ok(())
    }

    pub fn record_run(&self, started: &str, result: &str, summary: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO runs(started, finished, result, summary) VALUES (?1, ?2, ?3, ?4)",
                params![started, chrono_like_now(), result, summary],
            )
            .map_err(self.corrupt())?;
        Ok(())
    }
}

/// Reads snapshot rows in path order, handing each to `each` until it
/// returns false.
fn read_entries(
    conn: &Connection,
    db_path: &Path,
    each: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), StateError> {
    let corrupt = |e: rusqlite::Error| StateError::Corrupt {
        path: db_path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries ORDER BY path"
        ))
        .map_err(corrupt)?;
    let mut rows = stmt.query([]).map_err(corrupt)?;
    while let Some(row) = rows.next().map_err(corrupt)? {
        let entry = row_to_entry(row).map_err(corrupt)?;
        let bad = |what: String| StateError::Corrupt {
            path: db_path.to_path_buf(),
            detail: format!("snapshot row has {what}"),
        };
        let entry = entry.map_err(bad)?;
        if !each(entry) {
            break;
        }
    }
    Ok(())
}

/// The columns [`row_to_entry`] reads, in its order.
const ENTRY_COLUMNS: &str = "path, kind, size, mtime_sec, mtime_nsec, mode, uid, gid, dev, ino,
    hash, link_target, xattr_hash, racy";

type RowResult = Result<Entry, String>;

fn row_to_entry(row: &rusqlite::Row) -> Result<RowResult, rusqlite::Error> {
    let path: Vec<u8> = row.get(0)?;
    let kind: i64 = row.get(1)?;
    let raw = RawEntry {
        size: row.get::<_, i64>(2)? as u64,
        sec: row.get(3)?,
        nsec: row.get::<_, i64>(4)? as u32,
        mode: row.get::<_, i64>(5)? as u32,
        uid: row.get::<_, i64>(6)? as u32,
        gid: row.get::<_, i64>(7)? as u32,
        dev: row.get::<_, i64>(8)? as u64,
        ino: row.get::<_, i64>(9)? as u64,
        hash: row.get(10)?,
        link_target: row.get(11)?,
        xattr_hash: row.get(12)?,
    };
    let racy: bool = row.get(13)?;
    let path = match RelPath::new(&path) {
        Ok(path) => path,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some(kind) = Kind::from_code(kind) else {
        return Ok(Err("an unknown kind".into()));
    };
    let (Ok(hash), Ok(xattr_hash)) = (to_hash(raw.hash), to_hash(raw.xattr_hash)) else {
        return Ok(Err("a malformed hash".into()));
    };
    Ok(Ok(Entry {
        path,
        kind,
        size: raw.size,
        mtime: Mtime {
            sec: raw.sec,
            nsec: raw.nsec,
        },
        mode: raw.mode,
        uid: raw.uid,
        gid: raw.gid,
        dev: raw.dev,
        ino: raw.ino,
        hash,
        link_target: raw.link_target.map(Vec::into_boxed_slice),
        xattr_hash: xattr_hash.map(Box::new),
        racy,
    }))
}

/// Brings an older schema up to this one, in one transaction.
fn migrate(conn: &Connection, from: i64) -> Result<(), rusqlite::Error> {
    let mut steps = String::new();
    if from < 2 {
        steps.push_str("ALTER TABLE entries ADD COLUMN racy INTEGER NOT NULL DEFAULT 0;");
    }
    if from < 3 {
        steps.push_str("ALTER TABLE entries ADD COLUMN since INTEGER;");
        steps.push_str(PENDING_TABLE);
    }
    steps.push_str(&format!("PRAGMA user_version = {SCHEMA_VERSION};"));
    conn.execute_batch(&steps)
}

struct RawEntry {
    size: u64,
    sec: i64,
    nsec: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    dev: u64,
    ino: u64,
    hash: Option<Vec<u8>>,
    link_target: Option<Vec<u8>>,
    xattr_hash: Option<Vec<u8>>,
}

fn to_hash(bytes: Option<Vec<u8>>) -> Result<Option<Hash>, ()> {
    match bytes {
        None => Ok(None),
        Some(b) => b.try_into().map(Some).map_err(|_| ()),
    }
}

/// The byte range holding everything strictly below `path`: `path/` up to
/// `path0` (`0` is the byte after `/`).
fn subtree_bounds(path: &RelPath) -> (Vec<u8>, Vec<u8>) {
    let mut lo = path.as_bytes().to_vec();
    let mut hi = lo.clone();
    lo.push(b'/');
    hi.push(b'/' + 1);
    (lo, hi)
}

/// Conflicts came after schema version 2 without changing what older
/// binaries read, so the table is made where missing, in any version.
const CONFLICTS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS conflicts(
    path BLOB PRIMARY KEY,
    here TEXT NOT NULL,
    peer TEXT NOT NULL,
    detected TEXT NOT NULL,
    keep TEXT,
    decided TEXT
) WITHOUT ROWID;
";

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries(
    path BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_sec INTEGER NOT NULL,
    mtime_nsec INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    hash BLOB,
    link_target BLOB,
    xattr_hash BLOB,
    racy INTEGER NOT NULL DEFAULT 0,
    since INTEGER
) WITHOUT ROWID;
CREATE TABLE errors(
    path BLOB PRIMARY KEY,
    message TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    attempts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE runs(
    id INTEGER PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT NOT NULL,
    result TEXT NOT NULL,
    summary TEXT NOT NULL
);
PRAGMA user_version = 3;
";

/// Paths a run planned and has not settled yet (schema 3).
const PENDING_TABLE: &str = "
CREATE TABLE pending(
    path BLOB PRIMARY KEY,
    op TEXT NOT NULL,
    kind INTEGER,
    size INTEGER NOT NULL,
    since TEXT NOT NULL
) WITHOUT ROWID;
";

/// The current time as an RFC 3339 UTC string, second precision.
pub fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    format_utc(now)
}

/// Now as `YYYYmmdd-HHMMSS` UTC, the form names carry (backup run
/// directories, the copy `resolve --keep both` makes).
pub fn compact_utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    compact_utc(now)
}

/// Formats Unix seconds as `YYYYmmdd-HHMMSS` (UTC).
pub fn compact_utc(secs: i64) -> String {
    let digits: String = format_utc(secs)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{}-{}", &digits[..8], &digits[8..14])
}

/// Formats Unix seconds as `YYYY-mm-ddTHH:MM:SSZ` (civil-from-days algorithm).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: RelPath::new(path.as_bytes()).unwrap(),
            kind: Kind::File,
            size: 3,
            mtime: Mtime { sec: 5, nsec: 7 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            dev: 1,
            ino: u64::MAX,
            hash: Some([9; 32]),
            link_target: None,
            xattr_hash: None,
            racy: false,
        }
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(compact_utc(1_700_000_000), "20231114-221320");
    }

    #[test]
    fn rows_round_trip_and_move_with_their_subtree() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = SessionDb::open(dir.path(), "s", false).unwrap();
        db.apply_updates(&[
            SnapshotUpdate::Upsert(entry("a")),
            SnapshotUpdate::Upsert(entry("a/x")),
            SnapshotUpdate::Upsert(entry("a/y/z")),
            SnapshotUpdate::Upsert(entry("a.txt")),
            SnapshotUpdate::Upsert(entry("ab")),
        ])
        .unwrap();
        db.apply_updates(&[SnapshotUpdate::Move {
            from: RelPath::new(b"a").unwrap(),
            to: RelPath::new(b"b/c").unwrap(),
        }])
        .unwrap();
        let paths: Vec<String> = db
            .load_entries()
            .unwrap()
            .iter()
            .map(|e| e.path.to_string())
            .collect();
        assert_eq!(paths, ["a.txt", "ab", "b/c", "b/c/x", "b/c/y/z"]);
        assert_eq!(db.load_entries().unwrap()[2], {
            let mut e = entry("b/c");
            e.path = RelPath::new(b"b/c").unwrap();
            e
        });
        db.apply_updates(&[SnapshotUpdate::Remove(RelPath::new(b"b").unwrap())])
            .unwrap();
        assert_eq!(db.entry_count().unwrap(), 2);
    }

    #[test]
    fn rows_under_a_directory_are_its_subtree_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = SessionDb::open(dir.path(), "s", false).unwrap();
        assert!(!db.has_entries().unwrap());
        let ups: Vec<SnapshotUpdate> = ["a", "a!", "a.b", "a/x", "a/y/z", "a0", "ab", "b"]
            .into_iter()
            .map(|p| SnapshotUpdate::Upsert(entry(p)))
            .collect();
        db.apply_updates(&ups).unwrap();
        assert!(db.has_entries().unwrap());
        let under = |p: &str| -> Vec<String> {
            db.entries_under(&RelPath::new(p.as_bytes()).unwrap())
                .unwrap()
                .iter()
                .map(|e| e.path.to_string())
                .collect()
        };
        assert_eq!(under("a"), ["a/x", "a/y/z"]);
        assert_eq!(under("a/y"), ["a/y/z"]);
        assert!(under("b").is_empty());
        assert_eq!(under("").len(), 8);
        assert_eq!(db.file_sizes_with_hashes().unwrap(), [3]);
    }

    #[test]
    fn rows_are_found_by_path_and_by_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = SessionDb::open(dir.path(), "s", false).unwrap();
        let mut other = entry("b");
        other.hash = Some([1; 32]);
        let mut unhashed = entry("c");
        unhashed.hash = None;
        let mut folder = entry("d");
        folder.kind = Kind::Dir;
        db.apply_updates(&[
            SnapshotUpdate::Upsert(entry("a")),
            SnapshotUpdate::Upsert(other),
            SnapshotUpdate::Upsert(unhashed),
            SnapshotUpdate::Upsert(folder),
            SnapshotUpdate::Upsert(entry("e/f")),
        ])
        .unwrap();
        let path = |p: &str| RelPath::new(p.as_bytes()).unwrap();
        assert_eq!(db.entry(&path("a")).unwrap(), Some(entry("a")));
        assert_eq!(db.entry(&path("zz")).unwrap(), None);
        let wanted: HashSet<Hash> = [[9; 32], [7; 32]].into_iter().collect();
        let found: Vec<String> = db
            .files_with_hashes(&wanted)
            .unwrap()
            .iter()
            .map(|e| e.path.to_string())
            .collect();
        assert_eq!(found, ["a", "e/f"]);
    }

    #[test]
    fn garbage_database_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = SessionDb::path_for(dir.path(), "s");
        fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SessionDb::open(dir.path(), "s", false).err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), vec![0x42u8; 8192]);
    }

    #[test]
    fn version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = SessionDb::path_for(dir.path(), "s");
        let conn = Connection::open(&path).unwrap();
        let v1 = SCHEMA
            .replace(
                ",\n    racy INTEGER NOT NULL DEFAULT 0,\n    since INTEGER",
                "",
            )
            .replace("PRAGMA user_version = 3;", "PRAGMA user_version = 1;");
        conn.execute_batch(&v1).unwrap();
        conn.execute(
            "INSERT INTO entries VALUES (x'61', 0, 1, 2, 3, 420, 0, 0, 1, 2, NULL, NULL, NULL)",
            [],
        )
        .unwrap();
        drop(conn);
        let db = SessionDb::open(dir.path(), "s", false).unwrap();
        let rows = db.load_entries().unwrap();
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].racy);
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = SessionDb::path_for(dir.path(), "s");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE meta(k); PRAGMA user_version = 99;")
            .unwrap();
        drop(conn);
        let err = SessionDb::open(dir.path(), "s", false).err().unwrap();
        assert!(
            matches!(err, StateError::NewerSchema { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn second_lock_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SessionLock::acquire(dir.path(), "s").unwrap();
        let err = SessionLock::acquire(dir.path(), "s").err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
    }
}
