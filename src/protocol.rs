//! The wire protocol between `snapsync` and `snapsync serve`: frames and
//! messages. It knows nothing of files, only of what travels.
//!
//! A frame is a 4-byte big-endian length, a 1-byte flag and a payload of at
//! most [`MAX_FRAME`] bytes. A message is the bincode encoding of an
//! [`Envelope`], carried by one frame, or split over several when large
//! (flag [`MORE`] on all but the last), up to [`MAX_MESSAGE`] bytes. A
//! message of [`PACK_MIN`] bytes or more that is not file data travels
//! zstd-compressed (flag [`PACKED`] on each of its frames): lists of paths
//! and entries (scans, pending rows, commits) shrink several times, and on
//! a long link every round trip's worth of bytes saved is time. Anything
//! else from the peer (a longer frame, an unknown flag, a message that does
//! not decode or unpacks past the limit, a path that would leave the root)
//! ends the session with an error, never a panic.

use std::io::{self, Read, Write};

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::apply::Xattrs;
use crate::changes::{ChangeSet, DiffOptions};
use crate::data_channel::{Offer, PortRange};
use crate::delta::Signature;
use crate::endpoint::{Applied, FileJob, OpFailure, RunEnd, SessionRequest, SourceEnd};
use crate::model::{Entry, Hash, Preserve, RelPath};
use crate::plan::Op;
use crate::state::{SessionFacts, SnapshotUpdate};

/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest message accepted (a change set of a very large tree).
pub const MAX_MESSAGE: usize = 1 << 30;
/// Flag: more frames of this message follow.
pub const MORE: u8 = 1;
/// Flag: the last (or only) frame of a message.
pub const LAST: u8 = 0;
/// Flag, on every frame of a message, beside [`MORE`] or [`LAST`]: the
/// message's bytes are zstd-compressed.
pub const PACKED: u8 = 2;
/// Messages this long or longer are compressed (file data aside).
pub const PACK_MIN: usize = 8 << 10;
/// zstd's fastest level: control messages are lists with much repeated,
/// and the link is what is slow.
const PACK_LEVEL: i32 = 1;
/// What this build offers beyond the protocol's core: delta transfer, zstd
/// compression (`-z`), extended attributes (`--xattrs`), hard links (`-H`),
/// POSIX ACLs (`-A`).
pub const CAPABILITIES: &[&str] = &["delta", "zstd", "xattrs", "hard-links", "acls"];

/// Every message names the call it belongs to; 0 is for messages that
/// answer no call (file results, and file data a near end pushes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub call: u64,
    pub body: Body,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Body {
    /// First message each way: who speaks which protocol.
    Hello {
        protocol: u32,
        version: String,
        /// Optional features this end speaks (see [`CAPABILITIES`]).
        capabilities: Vec<String>,
    },

    // Requests, near end to far end.
    Open {
        #[serde(with = "serde_bytes")]
        root: Vec<u8>,
        request: SessionRequest,
        preserve: Preserve,
    },
    Scan(DiffOptions),
    Lookup(Vec<RelPath>),
    FindContent(Vec<Hash>),
    Signatures(Vec<RelPath>),
    HashFiles(Vec<RelPath>),
    RecordLineage(Vec<crate::lineage::Edge>),
    /// Continuous mode: watch the root; reports follow as [`Body::Changes`]
    /// tagged with this call, for as long as the connection lasts.
    Watch(crate::endpoint::WatchTiming),
    /// The decisions `resolve` recorded since the session opened.
    Decisions,
    ReadXattrs(Vec<Entry>),
    Apply {
        ops: Vec<(Op, Option<Xattrs>)>,
        parallel: bool,
    },
    /// What the run is about to do, kept as pending records until done.
    RecordPending {
        pending: Vec<crate::state::Pending>,
        replace: bool,
    },
    Commit(Vec<SnapshotUpdate>),
    /// The run's last rows (committed first) and how it ended. With
    /// `last` (a one-time run), the session ends there: the far end lets
    /// go of it (its lock, database and log) before it answers, so the
    /// near end need not wait for ssh to end.
    Finish {
        rows: Vec<SnapshotUpdate>,
        end: RunEnd,
        last: bool,
    },
    /// The far end is the source: stream these files back, tagged with
    /// this call, then [`Body::FilesDone`].
    SendFiles {
        jobs: Vec<FileJob>,
        xattrs: bool,
        compress: bool,
    },
    /// The far end is the target: answer once every file sent so far has
    /// its [`Body::FileResult`].
    SinkWait,

    // Replies.
    Opened {
        facts: SessionFacts,
        /// The far root's stable id (`.snapsync/id`), once it has one.
        root_id: Option<String>,
    },
    Scanned(ChangeSet),
    Entries(Vec<Entry>),
    Content(Vec<(Hash, Vec<RelPath>)>),
    Signed(Vec<(RelPath, Signature)>),
    Hashes(Vec<(RelPath, Hash)>),
    Changes(crate::endpoint::WatchReport),
    DecisionList(Vec<crate::state::Decision>),
    Xattrs(Vec<Option<Xattrs>>),
    Applied(Vec<Result<Applied, OpFailure>>),
    Done,
    /// The request failed as a whole; the text says why.
    Failed(String),

    // A file stream, either way.
    FileOpen(FileJob),
    FileData {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// zstd-compressed (`-z`).
        compressed: bool,
    },
    FileCopy {
        id: u64,
        offset: u64,
        len: u64,
    },
    FileEnd {
        id: u64,
        end: SourceEnd,
    },
    /// A small file in one message: open, all its data, and the verdict.
    FileWhole {
        job: FileJob,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        compressed: bool,
        end: SourceEnd,
    },
    FileResult {
        id: u64,
        result: Result<Applied, OpFailure>,
    },
    FilesDone,

    // Added after protocol 2 was fixed: at the end, so that every other
    // message keeps its encoding (a far end without it refuses the message).
    /// Scans only these paths (answered with [`Body::Scanned`]).
    ScanDirty {
        paths: Vec<RelPath>,
        trees: Vec<RelPath>,
        options: DiffOptions,
    },
    /// `--remove-source-files`: the far end is the source; remove these
    /// files, whose copies the target confirmed, if each is still the
    /// version sent (answered with [`Body::Removed`]).
    RemoveSentFiles(Vec<Entry>),
    /// One result per file asked: removed, or why it was kept.
    Removed(Vec<Result<(), String>>),

    // Added in protocol 4 (with `Preserve`'s `hard_links` and `acls`).
    /// `-H`: the names of the files at these paths (answered with
    /// [`Body::LinkGroups`]).
    HardLinks(Vec<RelPath>),
    LinkGroups(Vec<Vec<RelPath>>),

    // Added in protocol 5 (with `SessionRequest`'s `bwlimit`).
    /// Answered at once with [`Body::Done`]: the near end times the round
    /// trip of the ssh channel.
    Ping,
    /// Before `Open`: listen for a QUIC data channel on a UDP port of this
    /// range (any free port when `None`); answered with
    /// [`Body::DataChannelOffer`], or [`Body::Failed`] when it cannot.
    OpenDataChannel(Option<PortRange>),
    DataChannelOffer(Offer),
    /// The near end's word on the offered channel, not answered: from the
    /// next message on, both ends speak on the data channel (`true`), or
    /// everything stays on ssh and the far end stops listening (`false`).
    UseDataChannel(bool),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the connection closed")]
    Closed,
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the peer sent a frame of {0} bytes (the limit is {MAX_FRAME})")]
    FrameTooLarge(usize),
    #[error("the peer sent a message larger than {MAX_MESSAGE} bytes")]
    MessageTooLarge,
    #[error("the peer sent a frame with unknown flag {0}")]
    BadFlag(u8),
    #[error("the peer sent a message that does not decode: {0}")]
    Malformed(String),
}

/// File data as it travels: zstd-compressed when `compress` (`-z`), and
/// whether it was.
pub fn encode_data(data: &[u8], compress: bool) -> io::Result<(Vec<u8>, bool)> {
    if compress {
        Ok((zstd::bulk::compress(data, 3)?, true))
    } else {
        Ok((data.to_vec(), false))
    }
}

/// The bytes a [`Body::FileData`] or [`Body::FileWhole`] carries;
/// compressed data may not expand past a frame.
pub fn file_data_bytes(data: Vec<u8>, compressed: bool) -> Result<Vec<u8>, ProtocolError> {
    if !compressed {
        return Ok(data);
    }
    zstd::bulk::decompress(&data, MAX_FRAME)
        .map_err(|e| ProtocolError::Malformed(format!("undecodable compressed data: {e}")))
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_MESSAGE as u64)
}

/// Whether a message of this kind is compressed when long: not file data,
/// which is compressed or not as the user chose (`-z`).
fn packable(body: &Body) -> bool {
    !matches!(body, Body::FileData { .. } | Body::FileWhole { .. })
}

/// Encodes an envelope into frames and writes them.
pub fn write_message(out: &mut dyn Write, envelope: &Envelope) -> Result<u64, ProtocolError> {
    let mut bytes = codec()
        .serialize(envelope)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(ProtocolError::MessageTooLarge);
    }
    let mut packed = 0;
    if bytes.len() >= PACK_MIN && packable(&envelope.body) {
        let smaller = zstd::bulk::compress(&bytes, PACK_LEVEL)?;
        if smaller.len() < bytes.len() {
            bytes = smaller;
            packed = PACKED;
        }
    }
    let mut chunks = bytes.chunks(MAX_FRAME).peekable();
    let mut written = 0u64;
    if bytes.is_empty() {
        out.write_all(&[0, 0, 0, 0, LAST])?;
        return Ok(5);
    }
    while let Some(chunk) = chunks.next() {
        let flag = packed | if chunks.peek().is_some() { MORE } else { LAST };
        out.write_all(&(chunk.len() as u32).to_be_bytes())?;
        out.write_all(&[flag])?;
        out.write_all(chunk)?;
        written += 5 + chunk.len() as u64;
    }
    Ok(written)
}

/// Reads the frames of one message and decodes it.
pub fn read_message(input: &mut dyn Read) -> Result<(Envelope, u64), ProtocolError> {
    let mut message = Vec::new();
    let mut read = 0u64;
    // Whether the message is packed, as its first frame says.
    let mut packed = None;
    loop {
        let mut header = [0u8; 5];
        if let Err(e) = input.read_exact(&mut header) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                ProtocolError::Closed
            } else {
                ProtocolError::Io(e)
            });
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge(len));
        }
        if message.len() + len > MAX_MESSAGE {
            return Err(ProtocolError::MessageTooLarge);
        }
        let start = message.len();
        message.resize(start + len, 0);
        input.read_exact(&mut message[start..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ProtocolError::Malformed("the connection closed inside a frame".into())
            } else {
                ProtocolError::Io(e)
            }
        })?;
        read += 5 + len as u64;
        let flag = header[4];
        if flag & !(MORE | PACKED) != 0 || *packed.get_or_insert(flag & PACKED) != flag & PACKED {
            return Err(ProtocolError::BadFlag(flag));
        }
        if flag & MORE == LAST {
            break;
        }
    }
    if packed == Some(PACKED) {
        message = unpack(&message, MAX_MESSAGE)?;
    }
    let envelope = decode(&message)?;
    Ok((envelope, read))
}

/// A packed message's bytes, which may not unpack past `limit`.
fn unpack(packed: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let undecodable = |e: io::Error| {
        ProtocolError::Malformed(format!("a compressed message does not decompress: {e}"))
    };
    let decoder = zstd::stream::read::Decoder::new(packed).map_err(undecodable)?;
    let mut message = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut message)
        .map_err(undecodable)?;
    if message.len() > limit {
        return Err(ProtocolError::MessageTooLarge);
    }
    Ok(message)
}

/// Decodes one message's bytes. Exposed for the fuzz target.
pub fn decode(message: &[u8]) -> Result<Envelope, ProtocolError> {
    codec()
        .deserialize(message)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Reads messages from a byte stream, however the frames are cut. Exposed
/// for the fuzz target: any input gives messages or an error, never a panic.
pub fn decode_stream(mut bytes: &[u8]) -> Vec<Result<Envelope, ProtocolError>> {
    let mut out = Vec::new();
    loop {
        if bytes.is_empty() {
            return out;
        }
        let result = read_message(&mut bytes).map(|(envelope, _)| envelope);
        let stop = result.is_err();
        out.push(result);
        if stop {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) {
        let envelope = Envelope { call: 7, body };
        let mut wire = Vec::new();
        write_message(&mut wire, &envelope).unwrap();
        let (back, read) = read_message(&mut &wire[..]).unwrap();
        assert_eq!(format!("{back:?}"), format!("{envelope:?}"));
        assert_eq!(read as usize, wire.len());
    }

    #[test]
    fn messages_round_trip() {
        round_trip(Body::Hello {
            protocol: 1,
            version: "x".into(),
            capabilities: vec!["zstd".into()],
        });
        round_trip(Body::Lookup(vec![RelPath::new(b"a/b\xff").unwrap()]));
        round_trip(Body::FileData {
            id: 3,
            data: vec![1, 2, 3],
            compressed: false,
        });
        round_trip(Body::Failed("no".into()));
        round_trip(Body::HardLinks(vec![RelPath::new(b"a").unwrap()]));
        round_trip(Body::LinkGroups(vec![vec![
            RelPath::new(b"a").unwrap(),
            RelPath::new(b"b/c").unwrap(),
        ]]));
        round_trip(Body::ScanDirty {
            paths: vec![RelPath::new(b"a/b").unwrap()],
            trees: vec![RelPath::new(b"c").unwrap()],
            options: DiffOptions::default(),
        });
        round_trip(Body::RemoveSentFiles(vec![Entry::bare(
            RelPath::new(b"a/b").unwrap(),
            crate::model::Kind::File,
        )]));
        round_trip(Body::Removed(vec![Ok(()), Err("changed".into())]));
        round_trip(Body::Ping);
        round_trip(Body::OpenDataChannel(Some(PortRange {
            first: 40000,
            last: 40010,
        })));
        round_trip(Body::DataChannelOffer(Offer {
            port: 40001,
            fingerprint: vec![1; 32],
            token: vec![2; 32],
        }));
        round_trip(Body::UseDataChannel(true));
    }

    #[test]
    fn large_messages_span_frames() {
        round_trip(Body::FileData {
            id: 1,
            data: vec![7u8; MAX_FRAME * 2 + 5],
            compressed: false,
        });
    }

    /// The flag bytes of the frames `envelope` is written in.
    fn flags(envelope: &Envelope) -> Vec<u8> {
        let mut wire = Vec::new();
        write_message(&mut wire, envelope).unwrap();
        let mut flags = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            flags.push(rest[4]);
            rest = &rest[5 + len..];
        }
        flags
    }

    fn many_paths(count: usize) -> Body {
        Body::Lookup(
            (0..count)
                .map(|i| RelPath::new(format!("dir{}/file{i:06}", i % 10).as_bytes()).unwrap())
                .collect(),
        )
    }

    #[test]
    fn long_lists_travel_packed_and_come_back_the_same() {
        let long = Envelope {
            call: 3,
            body: many_paths(20_000),
        };
        let plain = codec().serialize(&long).unwrap().len();
        let mut wire = Vec::new();
        let written = write_message(&mut wire, &long).unwrap();
        assert!(written as usize * 4 < plain, "{written} of {plain}");
        assert_eq!(flags(&long), [PACKED | LAST]);
        round_trip(many_paths(20_000));
        // Short messages, and file data whatever its length, go as they are.
        let short = Envelope {
            call: 3,
            body: many_paths(3),
        };
        assert_eq!(flags(&short), [LAST]);
        let data = Envelope {
            call: 0,
            body: Body::FileData {
                id: 1,
                data: vec![0u8; MAX_FRAME + 1],
                compressed: false,
            },
        };
        assert_eq!(flags(&data), [MORE, LAST]);
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = (payload.len() as u32).to_be_bytes().to_vec();
        wire.push(flag);
        wire.extend_from_slice(payload);
        wire
    }

    #[test]
    fn packed_input_that_lies_is_an_error() {
        // Not zstd at all.
        let garbage = frame(PACKED | LAST, b"not compressed");
        assert!(matches!(
            read_message(&mut &garbage[..]),
            Err(ProtocolError::Malformed(_))
        ));
        // Frames of one message that disagree on whether it is packed.
        let done = codec()
            .serialize(&Envelope {
                call: 1,
                body: Body::Done,
            })
            .unwrap();
        let mut mixed = frame(MORE, &done[..2]);
        mixed.extend(frame(PACKED | LAST, &done[2..]));
        assert!(matches!(
            read_message(&mut &mixed[..]),
            Err(ProtocolError::BadFlag(_))
        ));
        // A few bytes that would unpack past the limit stop there.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
        assert!(bomb.len() < 1 << 10);
        assert!(matches!(
            unpack(&bomb, 1 << 16),
            Err(ProtocolError::MessageTooLarge)
        ));
        assert_eq!(unpack(&bomb, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn oversized_frame_is_refused_before_reading_it() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        wire.push(LAST);
        assert!(matches!(
            read_message(&mut &wire[..]),
            Err(ProtocolError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        let mut wire = Vec::new();
        write_message(
            &mut wire,
            &Envelope {
                call: 1,
                body: Body::Done,
            },
        )
        .unwrap();
        for cut in 0..wire.len() {
            assert!(read_message(&mut &wire[..cut]).is_err());
        }
        let garbage = [0u8, 0, 0, 4, LAST, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut &garbage[..]),
            Err(ProtocolError::Malformed(_))
        ));
        let bad_flag = [0u8, 0, 0, 0, 9];
        assert!(matches!(
            read_message(&mut &bad_flag[..]),
            Err(ProtocolError::BadFlag(9))
        ));
    }

    #[test]
    fn paths_leaving_the_root_do_not_decode() {
        for bad in [&b"../etc/passwd"[..], b"/etc/passwd", b"a/\0b", b"a//b"] {
            // A Lookup of one path, with the path's bytes replaced by `bad`.
            let good = codec()
                .serialize(&Envelope {
                    call: 1,
                    body: Body::Lookup(vec![RelPath::new(b"x").unwrap()]),
                })
                .unwrap();
            // Same message with the one-byte path replaced by `bad`.
            let prefix = &good[..good.len() - 9];
            let mut message = prefix.to_vec();
            message.extend_from_slice(&(bad.len() as u64).to_le_bytes());
            message.extend_from_slice(bad);
            assert!(decode(&message).is_err(), "{bad:?} decoded");
        }
    }
}
