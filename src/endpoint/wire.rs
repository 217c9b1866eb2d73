//! A file's stream as protocol messages, the same at both ends: a small
//! file travels as one `FileWhole` message (job, data and verdict
//! together), a larger one as `FileOpen`, data and copies, then `FileEnd`.

use std::io;

use super::{FileJob, FileSink, FileWriter, SourceEnd};
use crate::protocol::{encode_data, Body};

/// Files whose data fits in this many bytes travel as one message.
pub const SMALL_FILE: usize = 64 * 1024;

/// Hands a file that arrived whole (one `FileWhole` message) to `sink`.
pub fn write_whole(sink: &dyn FileSink, job: &FileJob, data: &[u8], end: SourceEnd) {
    if let Some(mut writer) = sink.open(job) {
        // A write error is kept by the writer and reported by `finish`.
        let _ = writer.literal(data);
        writer.finish(end);
    }
}

/// Turns one file's stream into messages handed to `send`.
pub struct WireFileWriter<F> {
    send: F,
    job: FileJob,
    compress: bool,
    /// Data of a file not yet opened on the wire (it may still be small).
    held: Vec<u8>,
    opened: bool,
}

impl<F: Fn(Body) -> io::Result<()> + Send> WireFileWriter<F> {
    pub fn new(job: &FileJob, compress: bool, send: F) -> Self {
        WireFileWriter {
            send,
            job: job.clone(),
            compress,
            held: Vec::new(),
            opened: false,
        }
    }

    /// Sends what a large file needs before its next piece: the open, and
    /// the data held so far.
    fn open_on_wire(&mut self) -> io::Result<()> {
        if self.opened {
            return Ok(());
        }
        self.opened = true;
        (self.send)(Body::FileOpen(self.job.clone()))?;
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.send_data(&held)?;
        }
        Ok(())
    }

    fn send_data(&self, data: &[u8]) -> io::Result<()> {
        let (data, compressed) = encode_data(data, self.compress)?;
        (self.send)(Body::FileData {
            id: self.job.id,
            data,
            compressed,
        })
    }
}

impl<F: Fn(Body) -> io::Result<()> + Send> FileWriter for WireFileWriter<F> {
    fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.opened && self.held.len() + data.len() <= SMALL_FILE {
            self.held.extend_from_slice(data);
            return Ok(());
        }
        self.open_on_wire()?;
        self.send_data(data)
    }

    fn copy(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.open_on_wire()?;
        (self.send)(Body::FileCopy {
            id: self.job.id,
            offset,
            len,
        })
    }

    fn finish(self: Box<Self>, end: SourceEnd) {
        // A failure to send shows when the receiving end's results are awaited.
        let _ = if self.opened {
            (self.send)(Body::FileEnd {
                id: self.job.id,
                end,
            })
        } else {
            encode_data(&self.held, self.compress).and_then(|(data, compressed)| {
                (self.send)(Body::FileWhole {
                    job: self.job.clone(),
                    data,
                    compressed,
                    end,
                })
            })
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Entry, Kind, RelPath};
    use std::sync::Mutex;

    fn job() -> FileJob {
        FileJob {
            id: 7,
            entry: Entry::bare(RelPath::new(b"f").unwrap(), Kind::File),
            basis: None,
        }
    }

    fn kinds(chunks: &[usize]) -> Vec<&'static str> {
        let sent = Mutex::new(Vec::new());
        let mut writer = Box::new(WireFileWriter::new(&job(), false, |body| {
            sent.lock().unwrap().push(match body {
                Body::FileWhole { .. } => "whole",
                Body::FileOpen(_) => "open",
                Body::FileData { .. } => "data",
                Body::FileEnd { .. } => "end",
                _ => "other",
            });
            Ok(())
        }));
        for &len in chunks {
            writer.literal(&vec![1u8; len]).unwrap();
        }
        writer.finish(SourceEnd::Failed("test".into()));
        sent.into_inner().unwrap()
    }

    #[test]
    fn small_file_is_one_message() {
        assert_eq!(kinds(&[100, 200]), ["whole"]);
        assert_eq!(kinds(&[]), ["whole"]);
    }

    #[test]
    fn large_file_is_opened_streamed_and_ended() {
        assert_eq!(
            kinds(&[SMALL_FILE, 10, 20]),
            ["open", "data", "data", "data", "end"]
        );
    }
}
