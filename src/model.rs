//! The vocabulary of a sync: validated relative paths, tree entries and the
//! comparisons between them. Pure: nothing here touches the filesystem.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A path relative to a root: `/`-separated components, each non-empty and
/// neither `.` nor `..`, no NUL byte. Names are bytes; they need not be UTF-8.
///
/// The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Box<[u8]>);

/// Why a peer-supplied or user-supplied path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0} is absolute; paths must be relative to the root")]
    Absolute(String),
    #[error("path {0} has an empty component")]
    EmptyComponent(String),
    #[error("path {0} has a `.` or `..` component")]
    DotComponent(String),
    #[error("path {0} contains a NUL byte")]
    Nul(String),
}

impl RelPath {
    pub fn root() -> Self {
        RelPath(Box::new([]))
    }

    /// Validates `bytes` as a relative path. This is the single gate every
    /// path from the disk, the user or a peer goes through.
    pub fn new(bytes: &[u8]) -> Result<Self, PathError> {
        if bytes.is_empty() {
            return Ok(Self::root());
        }
        let shown = || escape_bytes(bytes);
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b"" => return Err(PathError::EmptyComponent(shown())),
                b"." | b".." => return Err(PathError::DotComponent(shown())),
                _ => {}
            }
        }
        Ok(RelPath(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `self/name`; `name` must be a single valid component.
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        if name.contains(&b'/') || name.is_empty() {
            return Err(PathError::EmptyComponent(escape_bytes(name)));
        }
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        RelPath::new(&bytes)
    }

    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some(RelPath(self.0[..i].into())),
            None => Some(RelPath::root()),
        }
    }

    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            1 + self.0.iter().filter(|&&b| b == b'/').count()
        }
    }

    /// True when `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &RelPath) -> bool {
        if ancestor.is_root() {
            return true;
        }
        self.0.len() >= ancestor.0.len()
            && self.0[..ancestor.0.len()] == *ancestor.0
            && (self.0.len() == ancestor.0.len() || self.0[ancestor.0.len()] == b'/')
    }

    /// Moves `self` from under `from` to under `to`; `None` if it is not under `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        if rest.is_empty() {
            return Some(to.clone());
        }
        if to.is_root() {
            return Some(RelPath(rest.into()));
        }
        let mut bytes = to.0.to_vec();
        bytes.push(b'/');
        bytes.extend_from_slice(rest);
        Some(RelPath(bytes.into()))
    }

    /// The absolute filesystem path of this relative path under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.is_root() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&self.0))
        }
    }

    /// Orders paths so that a directory comes right before its contents
    /// (a depth-first order), unlike plain byte order where `a.txt < a/b`.
    pub fn cmp_tree(&self, other: &RelPath) -> Ordering {
        let a = self.0.iter().map(|&b| if b == b'/' { 0 } else { b });
        let b = other.0.iter().map(|&b| if b == b'/' { 0 } else { b });
        a.cmp(b)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            f.write_str(&escape_bytes(&self.0))
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

/// A path from a peer goes through [`RelPath::new`]: one that would leave
/// the root fails to decode.
impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes_buf::ByteBuf = Deserialize::deserialize(deserializer)?;
        RelPath::new(&bytes.0).map_err(serde::de::Error::custom)
    }
}

mod serde_bytes_buf {
    /// Bytes, decoded from either a byte string or a sequence.
    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            deserializer.deserialize_byte_buf(Visitor)
        }
    }
}

/// Shows bytes as text: valid UTF-8 as is, every other byte (and every
/// control character) as `\xHH`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        // Control characters are shown escaped too: a name must never
        // move the cursor or end a line in what is printed.
        for c in chunk.valid().chars() {
            if c.is_ascii_control() {
                out.push_str(&format!("\\x{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape_bytes`]: `\xHH` becomes the byte 0xHH, so users can type
/// a name exactly as snapsync printed it.
pub fn unescape_bytes(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && i + 4 <= text.len() && text[i + 1] == b'x' {
            let hex = std::str::from_utf8(&text[i + 2..i + 4]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// What a path is. Special files (FIFOs, sockets, devices) never become
/// entries: the scanner skips them with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
        }
    }

    pub fn from_code(code: i64) -> Option<Kind> {
        match code {
            0 => Some(Kind::File),
            1 => Some(Kind::Dir),
            2 => Some(Kind::Symlink),
            _ => None,
        }
    }
}

pub type Hash = [u8; 32];

pub fn hash_hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Modification time with nanoseconds, as the filesystem reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

/// One path of a tree as one endpoint sees it: what a snapshot row holds.
///
/// `dev` and `ino` are meaningful only on the endpoint that produced the
/// entry; they are never compared across endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    pub size: u64,
    pub mtime: Mtime,
    /// Permission bits, `mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    /// BLAKE3 of the content, for files; `None` until something needed it.
    pub hash: Option<Hash>,
    /// Symlink target, as bytes.
    pub link_target: Option<Box<[u8]>>,
    /// BLAKE3 over the sorted extended attributes a run carries (`--xattrs`,
    /// `-A`: see [`Preserve::carries_xattr`]).
    /// (Boxed: most entries have none, and every entry's size counts when a
    /// tree of millions is held.)
    pub xattr_hash: Option<Box<Hash>>,
    /// The file's mtime was so close to the moment it was scanned that a
    /// second write in the same clock tick would not show in its stat: the
    /// next scan re-reads its content instead of trusting size and mtime.
    #[serde(default)]
    pub racy: bool,
}

/// Which metadata a run preserves, beyond content, times and permission bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preserve {
    pub owner: bool,
    pub group: bool,
    /// `--xattrs`: every extended attribute but the POSIX ACLs.
    pub xattrs: bool,
    /// `-H`: files sharing an inode in the source tree share one on the target.
    pub hard_links: bool,
    /// `-A`: POSIX ACLs, the extended attributes [`ACL_XATTRS`].
    pub acls: bool,
}

/// The extended attributes Linux keeps POSIX ACLs in: the access ACL (files
/// and directories) and the default ACL (directories). `-A` carries them,
/// `--xattrs` every other name.
pub const ACL_XATTRS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

impl Preserve {
    /// True when extended attributes are read, compared and written at all.
    pub fn any_xattrs(&self) -> bool {
        self.xattrs || self.acls
    }

    /// Whether the extended attribute `name` is carried: an ACL with `-A`,
    /// any other with `--xattrs`. Names not carried are neither read nor
    /// compared, and never removed from the target.
    pub fn carries_xattr(&self, name: &[u8]) -> bool {
        if ACL_XATTRS.contains(&name) {
            self.acls
        } else {
            self.xattrs
        }
    }
}

/// How two entries for the same path differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    Same,
    /// Same content; times, permissions, owner or xattrs differ.
    Metadata,
    /// Different content (or a different symlink target).
    Content,
    /// File, directory and symlink differ.
    Kind,
}

impl Entry {
    /// An entry with only a path and a kind (everything else zero): for an
    /// operation that needs nothing more, such as deleting a path.
    pub fn bare(path: RelPath, kind: Kind) -> Entry {
        Entry {
            path,
            kind,
            size: 0,
            mtime: Mtime::default(),
            mode: 0,
            uid: 0,
            gid: 0,
            dev: 0,
            ino: 0,
            hash: None,
            link_target: None,
            xattr_hash: None,
            racy: false,
        }
    }

    /// True when this entry is, by its stat alone, the same file as `older`
    /// (the snapshot row): the scanner then reuses the recorded hash.
    pub fn same_stat(&self, older: &Entry) -> bool {
        self.kind == older.kind
            && self.size == older.size
            && self.mtime == older.mtime
            && self.ino == older.ino
            && self.dev == older.dev
    }

    /// This entry as the target's row of a path a run left as it was
    /// (`--no-delete`, `--newer`): as found, without its device and inode.
    /// No file has device 0 and inode 0, so every scan reports the path
    /// again and every run judges the kept difference again; and while
    /// the path stays as it was kept, the scan reports it as a change of
    /// metadata only, never as written since the run (see
    /// [`Entry::is_kept`]).
    pub fn kept(mut self) -> Entry {
        self.dev = 0;
        self.ino = 0;
        self
    }

    /// A row written by [`Entry::kept`].
    pub fn is_kept(&self) -> bool {
        self.dev == 0 && self.ino == 0
    }

    /// True when this entry, by its stat alone, holds the content `older`
    /// (the snapshot row) records: it is the same file, or the row is a
    /// kept one (no identity to compare) of the same kind, size and mtime.
    pub fn same_content_stat(&self, older: &Entry) -> bool {
        self.same_stat(older)
            || (older.is_kept()
                && self.kind == older.kind
                && self.size == older.size
                && self.mtime == older.mtime)
    }

    /// Compares two entries of the same path, possibly from different
    /// endpoints. Content is compared by hash when both are known, else by
    /// size and mtime (the quick check rsync uses).
    pub fn compare(&self, other: &Entry, preserve: Preserve) -> Difference {
        if self.kind != other.kind {
            return Difference::Kind;
        }
        let content_same = match self.kind {
            Kind::Dir => true,
            Kind::Symlink => self.link_target == other.link_target,
            Kind::File => match (&self.hash, &other.hash) {
                (Some(a), Some(b)) => a == b,
                _ => self.size == other.size && self.mtime == other.mtime,
            },
        };
        if !content_same {
            return Difference::Content;
        }
        if self.same_metadata(other, preserve) {
            Difference::Same
        } else {
            Difference::Metadata
        }
    }

    pub fn same_metadata(&self, other: &Entry, preserve: Preserve) -> bool {
        // Symlink permission bits mean nothing on Linux and cannot be set.
        let mode_same = self.kind == Kind::Symlink || self.mode == other.mode;
        mode_same
            && self.mtime == other.mtime
            && (!preserve.owner || self.uid == other.uid)
            && (!preserve.group || self.gid == other.gid)
            && (!preserve.any_xattrs() || self.xattr_hash == other.xattr_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_compact() {
        // A tree of millions is held as entries: keep them small.
        assert!(
            std::mem::size_of::<Entry>() <= 128,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn relpath_refuses_escapes() {
        assert!(matches!(RelPath::new(b"/etc"), Err(PathError::Absolute(_))));
        assert!(matches!(
            RelPath::new(b"a/../b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b".."),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b"a/./b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b"a//b"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            RelPath::new(b"a/"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(RelPath::new(b"a\0b"), Err(PathError::Nul(_))));
        assert!(RelPath::new(b"a/b\xffc/..d").is_ok());
    }

    #[test]
    fn relpath_navigation() {
        let path = p("a/b/c");
        assert_eq!(path.parent(), Some(p("a/b")));
        assert_eq!(p("a").parent(), Some(RelPath::root()));
        assert_eq!(path.file_name(), b"c");
        assert_eq!(path.depth(), 3);
        assert!(path.starts_with(&p("a/b")));
        assert!(!p("a/bc").starts_with(&p("a/b")));
        assert_eq!(path.rebase(&p("a"), &p("x/y")), Some(p("x/y/b/c")));
        assert_eq!(p("a").rebase(&p("a"), &p("z")), Some(p("z")));
        assert_eq!(p("q").rebase(&p("a"), &p("z")), None);
        assert_eq!(p("a").join(b"b").unwrap(), p("a/b"));
        assert_eq!(RelPath::root().join(b"b").unwrap(), p("b"));
    }

    #[test]
    fn tree_order_puts_directory_contents_right_after_it() {
        let mut paths = vec![p("a.txt"), p("a/b"), p("a"), p("a-b")];
        paths.sort_by(|x, y| x.cmp_tree(y));
        assert_eq!(paths, vec![p("a"), p("a/b"), p("a-b"), p("a.txt")]);
    }

    #[test]
    fn escaping_round_trips_non_utf8() {
        let raw = b"caf\xe9/na\\me\n";
        let shown = escape_bytes(raw);
        assert_eq!(shown, "caf\\xE9/na\\me\\x0A");
        assert_eq!(unescape_bytes(shown.as_bytes()), raw);
    }
}
