//! A hostile far end, for tests: it stands between a near end and a real
//! `snapsync serve`, relays the protocol both ways, and tampers with what
//! goes back to the near end.
//!
//! ```text
//! fake_peer MODE REAL_SNAPSYNC_BINARY serve
//! ```
//!
//! so that it can be given as `--remote-command "fake_peer MODE BINARY"` (the
//! near end appends `serve`). It runs `REAL_SNAPSYNC_BINARY serve` with piped
//! stdin and stdout. Messages the far end sends are counted from 1 (the
//! hello). Modes:
//!
//! - `relay`: no tampering (shows the relay itself works).
//! - `other-protocol`: answers the hello claiming protocol 99, version
//!   `9.9.9` (an incompatible snapsync).
//! - `huge-frame`: answers the first call (`Open`) with a frame header
//!   claiming `u32::MAX` bytes, then exits.
//! - `truncated`: sends the first half of the first `FileData` or
//!   `FileWhole` frame, then exits (use a pull of at least one non-empty file).
//! - `garbage`: instead of the `Scanned` reply, sends a frame of random bytes
//!   that do not decode, then exits.
//! - `dotdot-path`, `absolute-path`, `nul-path`: adds to the `Scanned` reply
//!   a created file named `../escape`, `$FAKE_PEER_OUTSIDE/abs`, or
//!   `evil<NUL>nul`. `RelPath` cannot hold such names, so the file is added
//!   under a placeholder name of the same length and the placeholder is
//!   replaced in the encoded frame.
//! - `symlink-escape`: adds to the `Scanned` reply (of a pull, where the far
//!   end is the source) a symlink `link -> $FAKE_PEER_OUTSIDE` and a file
//!   `link/evil`, and when the near end asks for `link/evil`, streams its
//!   content itself (a correct hash: only the path is hostile).
//! - `wrong-hash`: in a pull, alters the hash of every `FileEnd` or
//!   `FileWhole` that says `Complete`, so no file's content matches it.
//!
//! `FAKE_PEER_OUTSIDE` names a directory outside the near root (default
//! `/tmp/snapsync-fake-peer-outside`).

use std::env;
use std::io::{self, BufReader, BufWriter, Write};
use std::process::{exit, Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use snapsync::changes::{Change, ChangeSet};
use snapsync::endpoint::{FileJob, SourceEnd};
use snapsync::model::{Entry, Kind, Mtime, RelPath};
use snapsync::protocol::{decode, read_message, write_message, Body, Envelope, LAST};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Relay,
    OtherProtocol,
    HugeFrame,
    Truncated,
    Garbage,
    DotDotPath,
    AbsolutePath,
    NulPath,
    SymlinkEscape,
    WrongHash,
}

const EVIL_PATH: &[u8] = b"link/evil";
const EVIL_CONTENT: &[u8] = b"written through a symlink that leaves the root\n";

/// The near end's side of the connection: our stdout, shared by both relays.
type Near = Arc<Mutex<BufWriter<io::Stdout>>>;

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: fake_peer MODE REAL_SNAPSYNC_BINARY serve");
        exit(2);
    }
    let mode = match args[1].as_str() {
        "relay" => Mode::Relay,
        "other-protocol" => Mode::OtherProtocol,
        "huge-frame" => Mode::HugeFrame,
        "truncated" => Mode::Truncated,
        "garbage" => Mode::Garbage,
        "dotdot-path" => Mode::DotDotPath,
        "absolute-path" => Mode::AbsolutePath,
        "nul-path" => Mode::NulPath,
        "symlink-escape" => Mode::SymlinkEscape,
        "wrong-hash" => Mode::WrongHash,
        other => {
            eprintln!("fake_peer: unknown mode {other}");
            exit(2);
        }
    };
    let mut child = Command::new(&args[2])
        .args(&args[3..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("fake_peer: cannot start {}: {e}", args[2]);
            exit(1);
        });
    let far_in = child.stdin.take().expect("piped");
    let far_out = child.stdout.take().expect("piped");
    let near: Near = Arc::new(Mutex::new(BufWriter::new(io::stdout())));

    let up_near = Arc::clone(&near);
    thread::spawn(move || near_to_far(mode, far_in, &up_near));
    far_to_near(mode, far_out, &near, &mut child);
    let _ = child.wait();
}

/// Relays requests to the real far end. In `symlink-escape` it answers the
/// near end's request for `link/evil` itself.
fn near_to_far(mode: Mode, far_in: ChildStdin, near: &Near) {
    let mut input = BufReader::new(io::stdin());
    let mut far = BufWriter::new(far_in);
    while let Ok((mut envelope, _)) = read_message(&mut input) {
        if let (Mode::SymlinkEscape, Body::SendFiles { jobs, .. }) = (mode, &mut envelope.body) {
            let (evil, rest): (Vec<FileJob>, Vec<FileJob>) = jobs
                .drain(..)
                .partition(|job| job.entry.path.as_bytes() == EVIL_PATH);
            *jobs = rest;
            for job in evil {
                feed_evil(near, envelope.call, job);
            }
        }
        if write_message(&mut far, &envelope).is_err() || far.flush().is_err() {
            break;
        }
    }
    // Dropping `far` closes the real far end's input: it exits.
}

/// Streams `EVIL_CONTENT` as the file `job` asks for, with its true hash.
fn feed_evil(near: &Near, call: u64, job: FileJob) {
    let id = job.id;
    send(near, call, Body::FileOpen(job));
    send(
        near,
        call,
        Body::FileData {
            id,
            data: EVIL_CONTENT.to_vec(),
            compressed: false,
        },
    );
    let hash = *blake3::hash(EVIL_CONTENT).as_bytes();
    let end = SourceEnd::Complete { hash, xattrs: None };
    send(near, call, Body::FileEnd { id, end });
}

/// Relays replies and file streams to the near end, tampering as `mode` says.
fn far_to_near(mode: Mode, far_out: ChildStdout, near: &Near, child: &mut Child) {
    let mut input = BufReader::new(far_out);
    let mut count = 0u64;
    while let Ok((mut envelope, _)) = read_message(&mut input) {
        count += 1;
        let call = envelope.call;
        match (mode, &mut envelope.body) {
            (
                Mode::OtherProtocol,
                Body::Hello {
                    protocol, version, ..
                },
            ) => {
                *protocol = 99;
                *version = "9.9.9".into();
            }
            (Mode::HugeFrame, _) if count == 2 => {
                let mut header = u32::MAX.to_be_bytes().to_vec();
                header.push(LAST);
                send_raw(near, &header);
                leave(near, child);
            }
            (Mode::Truncated, Body::FileData { .. } | Body::FileWhole { .. }) => {
                let frame = encode(&envelope);
                send_raw(near, &frame[..frame.len() / 2]);
                leave(near, child);
            }
            (Mode::Garbage, Body::Scanned(_)) => {
                send_raw(near, &garbage_frame());
                leave(near, child);
            }
            (Mode::DotDotPath, Body::Scanned(set)) => {
                send_raw(near, &with_bad_path(call, set, b"../escape"));
                continue;
            }
            (Mode::AbsolutePath, Body::Scanned(set)) => {
                let bad = format!("{}/abs", outside());
                send_raw(near, &with_bad_path(call, set, bad.as_bytes()));
                continue;
            }
            (Mode::NulPath, Body::Scanned(set)) => {
                send_raw(near, &with_bad_path(call, set, b"evil\0nul"));
                continue;
            }
            (Mode::SymlinkEscape, Body::Scanned(set)) => {
                let target = outside().into_bytes();
                let link = entry(
                    b"link",
                    Kind::Symlink,
                    target.len() as u64,
                    None,
                    Some(target),
                );
                let hash = *blake3::hash(EVIL_CONTENT).as_bytes();
                let size = EVIL_CONTENT.len() as u64;
                let evil = entry(EVIL_PATH, Kind::File, size, Some(hash), None);
                add_created(set, link);
                add_created(set, evil);
            }
            (
                Mode::WrongHash,
                Body::FileEnd {
                    end: SourceEnd::Complete { hash, .. },
                    ..
                }
                | Body::FileWhole {
                    end: SourceEnd::Complete { hash, .. },
                    ..
                },
            ) => hash[0] ^= 0xff,
            _ => {}
        }
        send(near, call, envelope.body);
    }
}

fn outside() -> String {
    env::var("FAKE_PEER_OUTSIDE").unwrap_or_else(|_| "/tmp/snapsync-fake-peer-outside".into())
}

fn entry(
    path: &[u8],
    kind: Kind,
    size: u64,
    hash: Option<[u8; 32]>,
    link: Option<Vec<u8>>,
) -> Entry {
    Entry {
        path: RelPath::new(path).expect("a valid placeholder"),
        kind,
        size,
        mtime: Mtime {
            sec: 1_600_000_000,
            nsec: 0,
        },
        mode: if kind == Kind::Symlink { 0o777 } else { 0o644 },
        uid: 0,
        gid: 0,
        dev: 0xfa4e,
        ino: 0xfa4e_0000 + path.len() as u64,
        hash,
        link_target: link.map(Vec::into_boxed_slice),
        xattr_hash: None,
        racy: false,
    }
}

/// Adds a created entry to a change set, keeping it sorted.
fn add_created(set: &mut ChangeSet, entry: Entry) {
    set.files_scanned += 1;
    set.changes.push(Change {
        path: entry.path.clone(),
        before: None,
        after: Some(entry),
    });
    set.changes.sort_by(|a, b| a.path.cmp(&b.path));
}

/// The frame of a `Scanned` reply holding a created file named `bad`.
fn with_bad_path(call: u64, set: &mut ChangeSet, bad: &[u8]) -> Vec<u8> {
    let placeholder = vec![b'P'; bad.len()];
    let hash = *blake3::hash(b"").as_bytes();
    add_created(set, entry(&placeholder, Kind::File, 0, Some(hash), None));
    let mut frame = encode(&Envelope {
        call,
        body: Body::Scanned(set.clone()),
    });
    // A path is encoded as its length (u64, little-endian) and its bytes.
    let mut from = (bad.len() as u64).to_le_bytes().to_vec();
    from.extend_from_slice(&placeholder);
    let mut to = (bad.len() as u64).to_le_bytes().to_vec();
    to.extend_from_slice(bad);
    let mut replaced = 0;
    for i in 0..frame.len().saturating_sub(from.len() - 1) {
        if frame[i..i + from.len()] == from[..] {
            frame[i..i + to.len()].copy_from_slice(&to);
            replaced += 1;
        }
    }
    assert!(replaced > 0, "the placeholder path is in the frame");
    frame
}

/// A well-formed frame header followed by random bytes that do not decode.
fn garbage_frame() -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    loop {
        let payload: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        if decode(&payload).is_err() {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.push(LAST);
            frame.extend_from_slice(&payload);
            return frame;
        }
    }
}

fn encode(envelope: &Envelope) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_message(&mut bytes, envelope).expect("encode");
    bytes
}

fn send(near: &Near, call: u64, body: Body) {
    let mut out = near.lock().unwrap();
    if write_message(&mut *out, &Envelope { call, body }).is_err() || out.flush().is_err() {
        // The near end is gone; the relay ends when its input does.
    }
}

fn send_raw(near: &Near, bytes: &[u8]) {
    let mut out = near.lock().unwrap();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Ends the session from this side: the real far end is stopped too.
fn leave(near: &Near, child: &mut Child) -> ! {
    let _ = near.lock().unwrap().flush();
    let _ = child.kill();
    let _ = child.wait();
    exit(0);
}
