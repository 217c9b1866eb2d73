//! Walking a root: a parallel directory walk that stats every entry the
//! filters include and reads no file content (hashing is separate and only
//! done for the files that need it). Never writes anything.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
}

/// The result of walking a root.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every included entry below the root, sorted by path bytes.
    pub entries: Vec<Entry>,
    /// Paths skipped on purpose (special files, dangling links followed).
    pub warnings: Vec<String>,
    /// Directories that could not be read: what lies below them is unknown,
    /// so nothing there may be taken as deleted.
    pub unreadable: Vec<(RelPath, String)>,
    /// Temporary files (`.snapsync-tmp-*`) found, perhaps left by a killed run.
    pub temps: Vec<PathBuf>,
}

struct Walk<'a> {
    options: &'a ScanOptions,
    entries: Mutex<Vec<Vec<Entry>>>,
    warnings: Mutex<Vec<String>>,
    unreadable: Mutex<Vec<(RelPath, String)>>,
    temps: Mutex<Vec<PathBuf>>,
}

/// How close to the moment of its scan a file's mtime makes its stat
/// untrustworthy: file times come from a clock that ticks every few
/// milliseconds, so two writes within one tick look alike.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// Walks `root` in parallel. The root itself must be a readable directory.
pub fn scan_root(root: &Path, options: &ScanOptions) -> std::io::Result<Scan> {
    let started = std::time::SystemTime::now();
    let meta = fs::metadata(root)?;
    let walk = Walk {
        options,
        entries: Mutex::new(Vec::new()),
        warnings: Mutex::new(Vec::new()),
        unreadable: Mutex::new(Vec::new()),
        temps: Mutex::new(Vec::new()),
    };
    fs::read_dir(root)?;
    rayon::scope(|scope| {
        walk_dir(
            scope,
            &walk,
            root.to_path_buf(),
            RelPath::root(),
            vec![(meta.dev(), meta.ino())],
        )
    });
    let mut entries: Vec<Entry> = walk
        .entries
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    mark_racy(&mut entries, started);
    let mut warnings = walk.warnings.into_inner().unwrap_or_default();
    warnings.sort();
    Ok(Scan {
        entries,
        warnings,
        unreadable: walk.unreadable.into_inner().unwrap_or_default(),
        temps: walk.temps.into_inner().unwrap_or_default(),
    })
}

fn walk_dir<'s>(
    scope: &rayon::Scope<'s>,
    walk: &'s Walk<'s>,
    dir: PathBuf,
    rel: RelPath,
    ancestors: Vec<(u64, u64)>,
) {
    let reader = match fs::read_dir(&dir) {
        Ok(reader) => reader,
        Err(e) => {
            walk.unreadable.lock().unwrap().push((rel, e.to_string()));
            return;
        }
    };
    let mut found = Vec::new();
    for item in reader {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                walk.unreadable
                    .lock()
                    .unwrap()
                    .push((rel.clone(), e.to_string()));
                break;
            }
        };
        let name = item.file_name();
        if name.as_bytes().starts_with(crate::filter::TEMP_PREFIX) {
            walk.temps.lock().unwrap().push(item.path());
            continue;
        }
        let path = match rel.join(name.as_bytes()) {
            Ok(path) => path,
            Err(e) => {
                walk.warnings.lock().unwrap().push(format!("skipping {e}"));
                continue;
            }
        };
        let abs = item.path();
        let Some(entry) = stat_entry(walk, &item, &abs, path) else {
            continue;
        };
        if !walk.options.filters.includes_entry(&entry.path, entry.kind) {
            continue;
        }
        if entry.kind == Kind::Dir {
            let id = (entry.dev, entry.ino);
            if ancestors.contains(&id) {
                walk.warnings.lock().unwrap().push(format!(
                    "skipping {}: a followed link leads back to a directory above it",
                    entry.path
                ));
                continue;
            }
            let mut below = ancestors.clone();
            below.push(id);
            let child = entry.path.clone();
            scope.spawn(move |scope| walk_dir(scope, walk, abs, child, below));
        }
        found.push(entry);
    }
    if !found.is_empty() {
        walk.entries.lock().unwrap().push(found);
    }
}

fn stat_entry(walk: &Walk, item: &fs::DirEntry, abs: &Path, path: RelPath) -> Option<Entry> {
    let options = walk.options;
    let warn = |message: String| walk.warnings.lock().unwrap().push(message);
    // Stat relative to the open directory (no walk of the whole path), not
    // following a link.
    let mut meta = match item.metadata() {
        Ok(meta) => meta,
        // Vanished between the listing and the stat: not there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn(format!("skipping {path}: {e}"));
            return None;
        }
    };
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
    let xattr_hash = if options.preserve.xattrs {
        match xattrs_hash(abs, kind) {
            Ok(hash) => Some(hash),
            Err(e) => {
                warn(format!("cannot read extended attributes of {path}: {e}"));
                None
            }
        }
    } else {
        None
    };
    Some(entry_from_metadata(
        path,
        kind,
        &meta,
        link_target,
        xattr_hash,
    ))
}

/// Flags files whose mtime is within [`RACY_WINDOW`] of the scan's start,
/// or after it.
fn mark_racy(entries: &mut [Entry], started: std::time::SystemTime) {
    let cutoff = started
        .checked_sub(RACY_WINDOW)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let cutoff = Mtime {
        sec: cutoff.as_secs() as i64,
        nsec: cutoff.subsec_nanos(),
    };
    for entry in entries.iter_mut().filter(|e| e.kind == Kind::File) {
        entry.racy = entry.mtime >= cutoff;
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

/// Reads the extended attributes of `path` (not following links), sorted by name.
pub fn read_xattrs(path: &Path, kind: Kind) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut pairs = Vec::new();
    let names: Vec<_> = if kind == Kind::Symlink {
        xattr::list(path)?.collect()
    } else {
        xattr::list_deref(path)?.collect()
    };
    for name in names {
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

fn xattrs_hash(path: &Path, kind: Kind) -> std::io::Result<Hash> {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in read_xattrs(path, kind)? {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(&name);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(*hasher.finalize().as_bytes())
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
