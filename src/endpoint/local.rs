//! A root on this machine: scanned with [`crate::scan`], changed with
//! [`crate::apply`], remembered with [`crate::state`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use rayon::prelude::*;

use super::{Applied, Endpoint, EndpointError, OpFailure, Role, SessionRequest};
use crate::apply::{remove_stale_temps, ApplyError, LocalTree, Xattrs};
use crate::changes::{detect_renames, diff, sizes_worth_hashing, ChangeSet, DiffOptions};
use crate::filter::STATE_DIR_NAME;
use crate::model::{Entry, Hash, Kind, Preserve, RelPath};
use crate::plan::Op;
use crate::scan::{hash_file, read_xattrs, scan_root, LinkMode, ScanOptions};
use crate::state::{root_id, SessionDb, SessionFacts, SessionLock, SnapshotUpdate};

pub struct LocalEndpoint {
    root: PathBuf,
    state_dir: PathBuf,
    tree: LocalTree,
    session: Mutex<Option<OpenSession>>,
    /// The tree as scanned, with known hashes.
    current: RwLock<HashMap<RelPath, Entry>>,
    content: OnceLock<HashMap<Hash, Vec<RelPath>>>,
    /// `--links follow`: files are read, and re-checked, through links.
    follow_links: AtomicBool,
}

struct OpenSession {
    request: SessionRequest,
    db: Option<SessionDb>,
    _lock: Option<SessionLock>,
    /// The root does not exist (a target in a dry run): it scans as empty.
    missing_root: bool,
    /// `-x` in a dry run: the snapshot is ignored rather than dropped.
    ignore_snapshot: bool,
    forgotten: Vec<RelPath>,
    filters_line: String,
}

impl LocalEndpoint {
    /// `state_dir` defaults to `ROOT/.snapsync`.
    pub fn new(root: PathBuf, state_dir: Option<PathBuf>, preserve: Preserve) -> Self {
        let state_dir = state_dir.unwrap_or_else(|| root.join(STATE_DIR_NAME));
        LocalEndpoint {
            tree: LocalTree::new(root.clone(), preserve),
            root,
            state_dir,
            session: Mutex::new(None),
            current: RwLock::new(HashMap::new()),
            content: OnceLock::new(),
            follow_links: AtomicBool::new(false),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn with_session<T>(&self, f: impl FnOnce(&mut OpenSession) -> T) -> Result<T, EndpointError> {
        let mut guard = self.session.lock().unwrap();
        match guard.as_mut() {
            Some(session) => Ok(f(session)),
            None => Err(EndpointError::Refused(format!(
                "{}: no session is open",
                self.describe()
            ))),
        }
    }

    /// The state directory, relative to the root, when it lives inside it
    /// somewhere other than the default place (then it must not be synced).
    fn state_dir_inside_root(&self) -> Option<RelPath> {
        let rel = self.state_dir.strip_prefix(&self.root).ok()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str());
        RelPath::new(bytes).ok().filter(|p| !p.is_root())
    }

    fn hash_entries(&self, entries: Vec<&mut Entry>) {
        entries.into_par_iter().for_each(|entry| {
            entry.hash = hash_file(&entry.path.under(&self.root)).ok();
        });
    }

    fn failure(path: &RelPath, error: ApplyError) -> OpFailure {
        OpFailure {
            path: path.clone(),
            stale: matches!(error, ApplyError::Stale(_)),
            warning_only: matches!(error, ApplyError::NotEmpty(_)),
            message: error.to_string(),
        }
    }
}

impl Endpoint for LocalEndpoint {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError> {
        let mut missing_root = false;
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(EndpointError::Root(format!(
                    "{} is not a directory; give the directory to sync",
                    self.describe()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && request.role == Role::Target => {
                if request.dry_run {
                    missing_root = true;
                } else {
                    fs::create_dir_all(&self.root).map_err(|e| {
                        EndpointError::Root(format!(
                            "cannot create target directory {}: {e}",
                            self.describe()
                        ))
                    })?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(EndpointError::Root(format!(
                    "source directory {} does not exist; check the path",
                    self.describe()
                )))
            }
            Err(e) => {
                return Err(EndpointError::Root(format!(
                    "cannot read {}: {e}",
                    self.describe()
                )))
            }
        }
        let has_state = self.state_dir.is_dir();
        let (db, lock) = if request.dry_run && !has_state {
            (None, None)
        } else {
            let lock = SessionLock::acquire(&self.state_dir, &request.session)?;
            if !request.dry_run {
                root_id(&self.state_dir)?;
            }
            let db_exists = SessionDb::path_for(&self.state_dir, &request.session).exists();
            if request.dry_run && !db_exists {
                (None, Some(lock))
            } else {
                let reset = request.reset && !request.dry_run;
                (
                    Some(SessionDb::open(&self.state_dir, &request.session, reset)?),
                    Some(lock),
                )
            }
        };
        let facts = match &db {
            Some(db) => db.facts()?,
            None => SessionFacts::default(),
        };
        if let Some(recorded) = &facts.direction {
            if recorded != &request.direction && !request.reset {
                return Err(EndpointError::Refused(format!(
                    "session `{}` was recorded as {recorded}, not {}; use another session name (-N) or -x to start it afresh",
                    request.session, request.direction
                )));
            }
        }
        *self.session.lock().unwrap() = Some(OpenSession {
            request: request.clone(),
            db,
            _lock: lock,
            missing_root,
            ignore_snapshot: request.reset && request.dry_run,
            forgotten: Vec::new(),
            filters_line: String::new(),
        });
        Ok(facts)
    }

    fn scan(&self, options: &DiffOptions) -> Result<ChangeSet, EndpointError> {
        let (missing_root, dry_run, snapshot) = self.with_session(|s| {
            let snapshot = match (&s.db, s.ignore_snapshot) {
                (Some(db), false) => db.load_entries(),
                _ => Ok(Vec::new()),
            };
            (s.missing_root, s.request.dry_run, snapshot)
        })?;
        let snapshot = snapshot?;
        let mut options = options.clone();
        self.follow_links
            .store(options.links == LinkMode::Follow, Ordering::Relaxed);
        if let Some(inside) = self.state_dir_inside_root() {
            options.filters.exclude_fixed(inside);
        }
        let mut scanned = if missing_root {
            crate::scan::Scan::default()
        } else {
            scan_root(
                &self.root,
                &ScanOptions {
                    filters: options.filters.clone(),
                    links: options.links,
                    preserve: options.preserve,
                },
            )
            .map_err(|e| EndpointError::Root(format!("cannot read {}: {e}", self.describe())))?
        };
        if !dry_run {
            remove_stale_temps(&scanned.temps);
        }
        if options.checksum {
            self.hash_entries(
                scanned
                    .entries
                    .iter_mut()
                    .filter(|e| e.kind == Kind::File)
                    .collect(),
            );
        }
        let worth = sizes_worth_hashing(
            snapshot
                .iter()
                .filter(|e| e.kind == Kind::File)
                .map(|e| (e.size, e.hash.is_some())),
        );
        let (mut set, current) = diff(snapshot, scanned.entries, scanned.unreadable, &options);
        if !options.checksum {
            self.hash_entries(
                set.changes
                    .iter_mut()
                    .filter_map(|c| c.after.as_mut())
                    .filter(|e| e.kind == Kind::File && e.hash.is_none() && worth.contains(&e.size))
                    .collect(),
            );
        }
        detect_renames(&mut set);
        let mut current: HashMap<RelPath, Entry> =
            current.into_iter().map(|e| (e.path.clone(), e)).collect();
        for change in &set.changes {
            if let Some(after) = &change.after {
                current.insert(after.path.clone(), after.clone());
            }
        }
        *self.current.write().unwrap() = current;
        let filters_line = options.filters.describe();
        self.with_session(|s| {
            s.forgotten = set.forgotten.clone();
            s.filters_line = filters_line;
        })?;
        for warning in scanned.warnings {
            set.warnings.push(warning);
        }
        Ok(set)
    }

    fn lookup(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Entry>, EndpointError> {
        let current = self.current.read().unwrap();
        Ok(paths
            .iter()
            .filter_map(|p| current.get(p).map(|e| (p.clone(), e.clone())))
            .collect())
    }

    fn find_content(&self, hashes: &[Hash]) -> Result<HashMap<Hash, Vec<RelPath>>, EndpointError> {
        let index = self.content.get_or_init(|| {
            let mut index: HashMap<Hash, Vec<RelPath>> = HashMap::new();
            for entry in self.current.read().unwrap().values() {
                if let (Kind::File, Some(hash)) = (entry.kind, entry.hash) {
                    index.entry(hash).or_default().push(entry.path.clone());
                }
            }
            for paths in index.values_mut() {
                paths.sort();
            }
            index
        });
        let wanted: HashSet<&Hash> = hashes.iter().collect();
        Ok(index
            .iter()
            .filter(|(hash, _)| wanted.contains(hash))
            .map(|(hash, paths)| (*hash, paths.clone()))
            .collect())
    }

    fn open_file(&self, entry: &Entry) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(entry.path.under(&self.root))?))
    }

    fn unchanged_since_scan(&self, entry: &Entry) -> io::Result<bool> {
        let path = entry.path.under(&self.root);
        let meta = if self.follow_links.load(Ordering::Relaxed) {
            fs::metadata(path)?
        } else {
            fs::symlink_metadata(path)?
        };
        Ok(meta.size() == entry.size
            && meta.mtime() == entry.mtime.sec
            && meta.mtime_nsec() as u32 == entry.mtime.nsec
            && meta.ino() == entry.ino)
    }

    fn read_xattrs(&self, entry: &Entry) -> io::Result<Xattrs> {
        read_xattrs(&entry.path.under(&self.root), entry.kind)
    }

    fn apply(&self, op: &Op, xattrs: Option<&Xattrs>) -> Result<Applied, OpFailure> {
        let done = |update: Option<SnapshotUpdate>, bytes: u64| Applied {
            updates: update.into_iter().collect(),
            bytes,
        };
        let tree = &self.tree;
        match op {
            Op::Rename { from, to } => tree
                .rename(from, to)
                .map(|()| {
                    done(
                        Some(SnapshotUpdate::Move {
                            from: from.clone(),
                            to: to.clone(),
                        }),
                        0,
                    )
                })
                .map_err(|e| Self::failure(to, e)),
            Op::RenameContent { from, entry } => {
                let expected = self.current.read().unwrap().get(from).cloned();
                let Some(expected) = expected else {
                    return Err(Self::failure(&entry.path, ApplyError::Stale(from.clone())));
                };
                let new = tree
                    .rename_content(from, &expected, entry, xattrs)
                    .map_err(|e| Self::failure(&entry.path, e))?;
                Ok(Applied {
                    updates: vec![
                        SnapshotUpdate::Remove(from.clone()),
                        SnapshotUpdate::Upsert(new),
                    ],
                    bytes: 0,
                })
            }
            Op::Delete { entry } => tree
                .delete(entry)
                .map(|()| done(Some(SnapshotUpdate::Remove(entry.path.clone())), 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::Mkdir { entry } => tree
                .mkdir(entry)
                .map(|()| done(None, 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::LocalCopy { from, entry } => tree
                .local_copy(from, entry, xattrs)
                .map(|(new, bytes)| done(Some(SnapshotUpdate::Upsert(new)), bytes))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::Symlink { entry } => tree
                .symlink(entry, xattrs)
                .map(|new| done(Some(SnapshotUpdate::Upsert(new)), 0))
                .map_err(|e| Self::failure(&entry.path, e)),
            Op::SetMeta { entry, .. } => {
                let hash = self
                    .current
                    .read()
                    .unwrap()
                    .get(&entry.path)
                    .and_then(|e| e.hash)
                    .or(entry.hash);
                tree.set_metadata(entry, xattrs, hash)
                    .map(|new| done(Some(SnapshotUpdate::Upsert(new)), 0))
                    .map_err(|e| Self::failure(&entry.path, e))
            }
            Op::Transfer { entry } => Err(OpFailure {
                path: entry.path.clone(),
                message: "a transfer needs data from the source".into(),
                stale: false,
                warning_only: false,
            }),
            Op::Record | Op::Keep => Ok(done(None, 0)),
        }
    }

    fn write_file(
        &self,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        data: &mut dyn Read,
        verify: &dyn Fn(&Hash) -> Result<(), String>,
    ) -> Result<Applied, OpFailure> {
        self.tree
            .write_file(entry, xattrs, data, verify)
            .map(|(new, bytes)| Applied {
                updates: vec![SnapshotUpdate::Upsert(new)],
                bytes,
            })
            .map_err(|e| Self::failure(&entry.path, e))
    }

    fn commit(&self, updates: &[SnapshotUpdate]) -> Result<(), EndpointError> {
        let mut guard = self.session.lock().unwrap();
        if let Some(db) = guard.as_mut().and_then(|s| s.db.as_mut()) {
            db.apply_updates(updates)?;
        }
        Ok(())
    }

    fn finish(
        &self,
        complete: bool,
        failures: &[(RelPath, String)],
        started: &str,
        summary: &str,
    ) -> Result<(), EndpointError> {
        let mut guard = self.session.lock().unwrap();
        let Some(session) = guard.as_mut() else {
            return Ok(());
        };
        if session.request.dry_run {
            return Ok(());
        }
        let Some(db) = session.db.as_mut() else {
            return Ok(());
        };
        let forgotten: Vec<SnapshotUpdate> = session
            .forgotten
            .iter()
            .cloned()
            .map(SnapshotUpdate::Remove)
            .collect();
        db.apply_updates(&forgotten)?;
        db.record_errors(failures)?;
        db.set_fact("direction", &session.request.direction)?;
        db.set_fact("filters", &session.filters_line)?;
        if complete {
            db.set_fact("established", "1")?;
        }
        db.record_run(
            started,
            if complete { "complete" } else { "interrupted" },
            summary,
        )?;
        Ok(())
    }
}
