//! Delta transfer, as rsync does it: the receiver describes the file it
//! already has as a [`Signature`] (a weak rolling checksum and a strong hash
//! per block); the sender slides a window over its new version and emits
//! copies of blocks the receiver has plus the literal bytes between them.
//!
//! Streaming on both sides: memory stays bounded by the block size and the
//! literal chunk size, whatever the file size.

use std::collections::HashMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Largest literal run emitted at once.
pub const LITERAL_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSig {
    pub weak: u32,
    pub strong: [u8; 16],
}

/// What the receiver's current copy of a file looks like, block by block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub block_size: u32,
    pub file_size: u64,
    pub blocks: Vec<BlockSig>,
}

/// One step of rebuilding the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOp<'a> {
    Literal(&'a [u8]),
    /// Copy `len` bytes at `offset` of the receiver's current file.
    Copy {
        offset: u64,
        len: u64,
    },
}

/// Block size for a file of `size` bytes: about its square root (so the
/// signature and the literal data around a change both stay small), in
/// whole KiB between 2 KiB and 128 KiB.
pub fn block_size_for(size: u64) -> u32 {
    let root = (size as f64).sqrt() as u64;
    let rounded = root.div_ceil(1024) * 1024;
    rounded.clamp(2048, 128 * 1024) as u32
}

/// rsync's rolling checksum of a window.
#[derive(Debug, Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let mut a: u32 = 0;
        let mut b: u32 = 0;
        let len = window.len() as u32;
        for (i, &x) in window.iter().enumerate() {
            a = a.wrapping_add(x as u32);
            b = b.wrapping_add((len - i as u32).wrapping_mul(x as u32));
        }
        Rolling { a, b, len }
    }

    fn value(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }

    /// Slides the window one byte: `out` leaves, `incoming` enters.
    fn roll(&mut self, out: u8, incoming: u8) {
        self.a = self
            .a
            .wrapping_sub(out as u32)
            .wrapping_add(incoming as u32);
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(out as u32))
            .wrapping_add(self.a);
    }
}

fn strong(block: &[u8]) -> [u8; 16] {
    let hash = blake3::hash(block);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    out
}

/// Reads `reader` to its end and describes it block by block.
pub fn signature(reader: &mut dyn Read, file_size: u64) -> io::Result<Signature> {
    let block_size = block_size_for(file_size);
    let mut blocks = Vec::with_capacity((file_size / block_size as u64 + 1) as usize);
    let mut buf = vec![0u8; block_size as usize];
    let mut total = 0u64;
    loop {
        let n = read_full(reader, &mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        blocks.push(BlockSig {
            weak: Rolling::new(&buf[..n]).value(),
            strong: strong(&buf[..n]),
        });
        if n < buf.len() {
            break;
        }
    }
    Ok(Signature {
        block_size,
        file_size: total,
        blocks,
    })
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the new version from `reader` and emits the ops that rebuild it
/// from the file `signature` describes. Returns the BLAKE3 of the new version.
pub fn delta(
    reader: &mut dyn Read,
    signature: &Signature,
    emit: &mut dyn FnMut(DeltaOp) -> io::Result<()>,
) -> io::Result<[u8; 32]> {
    // Runs of adjacent blocks travel as one copy.
    let mut pending: Option<(u64, u64)> = None;
    let mut emit = |op: DeltaOp| -> io::Result<()> {
        match op {
            DeltaOp::Copy { offset, len } => match pending.as_mut() {
                Some((start, run)) if *start + *run == offset => {
                    *run += len;
                    Ok(())
                }
                _ => {
                    if let Some((start, run)) = pending.replace((offset, len)) {
                        emit(DeltaOp::Copy {
                            offset: start,
                            len: run,
                        })?;
                    }
                    Ok(())
                }
            },
            DeltaOp::Literal(data) => {
                if let Some((start, run)) = pending.take() {
                    emit(DeltaOp::Copy {
                        offset: start,
                        len: run,
                    })?;
                }
                if data.is_empty() {
                    Ok(())
                } else {
                    emit(DeltaOp::Literal(data))
                }
            }
        }
    };
    let bs = signature.block_size as usize;
    let mut index: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, block) in signature.blocks.iter().enumerate() {
        index.entry(block.weak).or_default().push(i as u32);
    }
    let last_len = match signature.blocks.len() {
        0 => 0,
        n => (signature.file_size - (n as u64 - 1) * bs as u64) as usize,
    };
    let mut hasher = blake3::Hasher::new();
    // buf[lit..pos] is pending literal data; buf[pos..pos+bs] the window.
    let mut buf: Vec<u8> = Vec::with_capacity(LITERAL_CHUNK + 2 * bs);
    let mut lit = 0usize;
    let mut pos = 0usize;
    let mut eof = false;
    let mut rolling: Option<Rolling> = None;
    let mut chunk = vec![0u8; 64 * 1024];

    loop {
        // Keep a full window loaded.
        while !eof && buf.len() - pos < bs {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                eof = true;
            } else {
                hasher.update(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        let available = buf.len() - pos;
        if available == 0 {
            break;
        }
        let window_len = available.min(bs);
        let window = &buf[pos..pos + window_len];
        let matched = if window_len == bs || (eof && window_len == last_len) {
            let weak = match rolling {
                Some(r) if r.len as usize == window_len => r,
                _ => Rolling::new(window),
            };
            rolling = Some(weak);
            index.get(&weak.value()).and_then(|candidates| {
                let mut strong_hash = None;
                candidates.iter().copied().find(|&i| {
                    let block_len = if i as usize == signature.blocks.len() - 1 {
                        last_len
                    } else {
                        bs
                    };
                    block_len == window_len
                        && *strong_hash.get_or_insert_with(|| strong(window))
                            == signature.blocks[i as usize].strong
                })
            })
        } else {
            None
        };
        match matched {
            Some(block) => {
                if pos > lit {
                    emit(DeltaOp::Literal(&buf[lit..pos]))?;
                }
                emit(DeltaOp::Copy {
                    offset: block as u64 * bs as u64,
                    len: window_len as u64,
                })?;
                pos += window_len;
                lit = pos;
                rolling = None;
            }
            None => {
                if window_len < bs && eof {
                    // The tail shorter than a block: literal.
                    pos = buf.len();
                } else {
                    let out = buf[pos];
                    pos += 1;
                    if buf.len() - pos >= bs {
                        if let Some(r) = rolling.as_mut() {
                            r.roll(out, buf[pos + bs - 1]);
                        }
                    } else {
                        rolling = None;
                    }
                }
            }
        }
        if pos - lit >= LITERAL_CHUNK {
            emit(DeltaOp::Literal(&buf[lit..pos]))?;
            lit = pos;
        }
        // Drop what no longer matters, keeping the buffer bounded.
        if lit > LITERAL_CHUNK {
            buf.drain(..lit);
            pos -= lit;
            lit = 0;
        }
    }
    // Flushes a pending copy, then any literal tail.
    emit(DeltaOp::Literal(&buf[lit..pos]))?;
    Ok(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rebuild(old: &[u8], new: &[u8]) -> (Vec<u8>, usize) {
        let sig = signature(&mut &old[..], old.len() as u64).unwrap();
        let mut out = Vec::new();
        let mut literal = 0;
        let hash = delta(&mut &new[..], &sig, &mut |op| {
            match op {
                DeltaOp::Literal(data) => {
                    literal += data.len();
                    out.extend_from_slice(data);
                }
                DeltaOp::Copy { offset, len } => {
                    out.extend_from_slice(&old[offset as usize..(offset + len) as usize])
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(hash, *blake3::hash(new).as_bytes());
        (out, literal)
    }

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn rolling_checksum_rolls() {
        let bytes = data(1, 100);
        let mut r = Rolling::new(&bytes[0..10]);
        for i in 0..50 {
            r.roll(bytes[i], bytes[i + 10]);
            assert_eq!(r.value(), Rolling::new(&bytes[i + 1..i + 11]).value());
        }
    }

    #[test]
    fn small_change_in_a_large_file_sends_little() {
        let old = data(2, 4 << 20);
        let mut new = old.clone();
        new[1_000_000..1_004_096].copy_from_slice(&data(3, 4096));
        let (out, literal) = rebuild(&old, &new);
        assert_eq!(out, new);
        assert!(literal < 16 * 1024, "literal {literal}");
    }

    #[test]
    fn insertions_and_deletions_shift_the_rest() {
        let old = data(4, 300_000);
        let mut new = old[..100_000].to_vec();
        new.extend_from_slice(b"inserted bytes");
        new.extend_from_slice(&old[150_000..]);
        let (out, literal) = rebuild(&old, &new);
        assert_eq!(out, new);
        assert!(literal < 10_000, "literal {literal}");
    }

    #[test]
    fn edge_cases_rebuild_exactly() {
        for (old, new) in [
            (vec![], data(5, 5000)),
            (data(6, 5000), vec![]),
            (data(7, 3000), data(7, 3000)),
            (data(8, 2048 * 3 + 17), data(8, 2048 * 3 + 17)),
            (data(9, 100), data(10, 70_000)),
        ] {
            let (out, _) = rebuild(&old, &new);
            assert_eq!(out, new);
        }
    }

    #[test]
    fn identical_file_is_all_copies() {
        let old = data(11, 1 << 20);
        let (_, literal) = rebuild(&old, &old);
        assert_eq!(literal, 0);
    }

    #[test]
    fn adjacent_blocks_travel_as_one_copy() {
        let old = data(12, 1 << 20);
        let mut new = old.clone();
        new[500_000] ^= 1;
        let sig = signature(&mut &old[..], old.len() as u64).unwrap();
        let mut ops = 0;
        delta(&mut &new[..], &sig, &mut |_| {
            ops += 1;
            Ok(())
        })
        .unwrap();
        assert!(ops <= 3, "{ops} ops for one changed byte");
    }
}
