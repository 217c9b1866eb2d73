//! A root on another host, reached by starting `snapsync serve` there
//! through ssh (or any `--rsh` command) and speaking [`crate::protocol`] over
//! its stdin and stdout.
//!
//! Calls are numbered; a reader thread routes each reply to its caller, so
//! several threads may call at once. File data is pushed without waiting:
//! frames go into a buffered writer that is flushed only when a reply is
//! awaited, so many small files travel in few large writes, and results come
//! back as they are ready. Nothing the far end sends is trusted: every path
//! is validated as it decodes, and a file stream may only fill the files the
//! near end asked for.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::wire::{write_whole, WireFileWriter};
use super::{
    Applied, Done, Endpoint, EndpointError, FileJob, FileSink, FileWriter, OpFailure, RunEnd,
    SessionRequest, SourceEnd,
};
use crate::apply::Xattrs;
use crate::changes::{ChangeSet, DiffOptions};
use crate::delta::Signature;
use crate::model::{Entry, Hash, Preserve, RelPath};
use crate::plan::Op;
use crate::protocol::{
    file_data_bytes, read_message, write_message, Body, Envelope, ProtocolError, CAPABILITIES,
};
use crate::state::{SessionFacts, SnapshotUpdate};
use crate::PROTOCOL_VERSION;

/// `[user@]host:path`, as rsync reads it: a colon before the first slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub host: String,
    pub path: String,
}

impl RemoteSpec {
    pub fn parse(spec: &str) -> Option<RemoteSpec> {
        let colon = spec.find(':')?;
        if colon == 0 || spec[..colon].contains('/') {
            return None;
        }
        let path = &spec[colon + 1..];
        Some(RemoteSpec {
            host: spec[..colon].to_string(),
            path: if path.is_empty() {
                ".".into()
            } else {
                path.into()
            },
        })
    }
}

/// How to start the far end.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Command and arguments, split like a shell; the host and the remote
    /// command follow.
    pub rsh: String,
    /// Program to run on the far host.
    pub remote_command: String,
    /// zstd-compress file data on the wire.
    pub compress: bool,
}

/// Messages answering one call go to its caller through this.
type CallSender = Sender<Body>;

struct Connection {
    /// `None` once closed: the far end then sees its input end and exits.
    writer: Mutex<Option<BufWriter<ChildStdin>>>,
    next_call: AtomicU64,
    calls: Mutex<HashMap<u64, CallSender>>,
    results: Receiver<(u64, Result<Applied, OpFailure>)>,
    /// Why the connection ended, once it has.
    ended: Mutex<Option<String>>,
    bytes_out: AtomicU64,
    bytes_in: Arc<AtomicU64>,
    host: String,
}

impl Connection {
    fn lost(&self) -> EndpointError {
        let why = self
            .ended
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "the connection closed".into());
        EndpointError::Lost(format!(
            "lost the connection to {}: {why}; nothing partial was left under a real name, run again to finish",
            self.host
        ))
    }

    /// Queues one message (flushed with the next call, or when the buffer fills).
    fn send(&self, call: u64, body: Body, flush: bool) -> Result<(), EndpointError> {
        let mut guard = self.writer.lock().unwrap();
        let result = match guard.as_mut() {
            Some(writer) => write_message(writer, &Envelope { call, body }).and_then(|n| {
                self.bytes_out.fetch_add(n, Ordering::Relaxed);
                if flush {
                    writer.flush()?;
                }
                Ok(())
            }),
            None => Err(ProtocolError::Closed),
        };
        drop(guard);
        result.map_err(|e| {
            self.ended.lock().unwrap().get_or_insert(e.to_string());
            self.lost()
        })
    }

    /// Registers a call and sends its request; replies arrive on the receiver.
    fn start_call(&self, body: Body) -> Result<(u64, Receiver<Body>), EndpointError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(64);
        self.calls.lock().unwrap().insert(id, tx);
        // The reader may have ended (and dropped every call) just before.
        if self.ended.lock().unwrap().is_some() {
            self.calls.lock().unwrap().remove(&id);
            return Err(self.lost());
        }
        if let Err(e) = self.send(id, body, true) {
            self.calls.lock().unwrap().remove(&id);
            return Err(e);
        }
        Ok((id, rx))
    }

    /// The next message of a call; an error once the connection has ended.
    /// Waits in slices, so that a caller can never outlive the connection.
    fn next(&self, rx: &Receiver<Body>) -> Result<Body, ()> {
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(500)) {
                Ok(body) => return Ok(body),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.ended.lock().unwrap().is_some() {
                        // Whatever arrived before the end is still handed on.
                        return rx.try_recv().map_err(|_| ());
                    }
                }
            }
        }
    }

    fn call(&self, body: Body) -> Result<Body, EndpointError> {
        let (id, rx) = self.start_call(body)?;
        let reply = self.next(&rx);
        self.calls.lock().unwrap().remove(&id);
        match reply {
            Ok(Body::Failed(message)) => {
                Err(EndpointError::Refused(format!("{}: {message}", self.host)))
            }
            Ok(body) => Ok(body),
            Err(_) => Err(self.lost()),
        }
    }
}

fn unexpected(body: &Body) -> EndpointError {
    let name = format!("{body:?}");
    let name: String = name.chars().take(60).collect();
    EndpointError::Refused(format!(
        "the far end answered out of protocol ({name}); is it the same snapsync version?"
    ))
}

/// Marks the connection ended and wakes every waiting caller, however the
/// reader stops (even by a panic).
struct EndGuard(Arc<Connection>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Ok(mut ended) = self.0.ended.lock() {
            ended.get_or_insert_with(|| "the connection reader stopped".into());
        }
        if let Ok(mut calls) = self.0.calls.lock() {
            // Dropping the senders wakes every waiting caller with an error.
            calls.clear();
        }
    }
}

/// Routes everything the far end sends until the connection ends.
fn read_loop(
    conn: Arc<Connection>,
    mut input: BufReader<ChildStdout>,
    results: Sender<(u64, Result<Applied, OpFailure>)>,
) {
    let _guard = EndGuard(Arc::clone(&conn));
    let reason = loop {
        match read_message(&mut input) {
            Ok((envelope, n)) => {
                conn.bytes_in.fetch_add(n, Ordering::Relaxed);
                match (envelope.call, envelope.body) {
                    (0, Body::FileResult { id, result }) => {
                        let _ = results.send((id, result));
                    }
                    (0, other) => {
                        break format!("the far end sent {:?} outside any call", short(&other))
                    }
                    (call, body) => {
                        let sender = conn.calls.lock().unwrap().get(&call).cloned();
                        match sender {
                            Some(sender) => {
                                let _ = sender.send(body);
                            }
                            None => {
                                break format!(
                                    "the far end answered call {call}, which was never made"
                                )
                            }
                        }
                    }
                }
            }
            Err(ProtocolError::Closed) => break "the far end closed the connection".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    conn.ended.lock().unwrap().get_or_insert(reason);
}

fn short(body: &Body) -> String {
    format!("{body:?}").chars().take(60).collect()
}

pub struct RemoteEndpoint {
    spec: RemoteSpec,
    preserve: Preserve,
    compress: bool,
    conn: Arc<Connection>,
    child: Mutex<Child>,
    /// The far root's id, as its `Opened` reply gave it.
    root_id: Mutex<Option<String>>,
}

impl RemoteEndpoint {
    /// Starts the far end and shakes hands with it.
    pub fn connect(
        spec: RemoteSpec,
        options: &ConnectOptions,
        preserve: Preserve,
    ) -> Result<RemoteEndpoint, EndpointError> {
        let rsh = shell_words::split(&options.rsh).map_err(|e| {
            EndpointError::Refused(format!("cannot parse --rsh `{}`: {e}", options.rsh))
        })?;
        let remote = shell_words::split(&options.remote_command).map_err(|e| {
            EndpointError::Refused(format!(
                "cannot parse --remote-command `{}`: {e}",
                options.remote_command
            ))
        })?;
        let (program, args) = rsh
            .split_first()
            .ok_or_else(|| EndpointError::Refused("--rsh is empty".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .arg(&spec.host)
            .args(&remote)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                EndpointError::Root(format!(
                    "cannot start `{program}` to reach {}: {e}",
                    spec.host
                ))
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut writer = BufWriter::with_capacity(256 * 1024, stdin);
        let mut reader = BufReader::with_capacity(256 * 1024, stdout);

        let hello = Body::Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        };
        let sent = write_message(
            &mut writer,
            &Envelope {
                call: 0,
                body: hello,
            },
        )
        .and_then(|_| writer.flush().map_err(ProtocolError::from));
        let reply = sent.and_then(|()| read_message(&mut reader));
        let far = match reply {
            Ok((
                Envelope {
                    body:
                        Body::Hello {
                            protocol,
                            version,
                            capabilities,
                        },
                    ..
                },
                _,
            )) => (protocol, version, capabilities),
            Ok((Envelope { body, .. }, _)) => {
                let _ = child.kill();
                return Err(unexpected(&body));
            }
            Err(e) => {
                let status = wait_briefly(&mut child);
                let hint = match status {
                    Some(127) => format!(
                        " (exit 127: `{}` was not found there; install snapsync on {} or pass --remote-command PATH)",
                        options.remote_command, spec.host
                    ),
                    Some(code) => format!(" (`{program}` exited with {code})"),
                    None => String::new(),
                };
                return Err(EndpointError::Root(format!(
                    "the far end closed the connection during the handshake with {}: {e}{hint}",
                    spec.host
                )));
            }
        };
        if far.0 != PROTOCOL_VERSION {
            let _ = child.kill();
            return Err(EndpointError::Refused(format!(
                "protocol mismatch: this snapsync {} speaks protocol {PROTOCOL_VERSION}, the one on {} ({}) speaks protocol {}; install the same version on both hosts",
                env!("CARGO_PKG_VERSION"),
                spec.host,
                far.1,
                far.0
            )));
        }

        if options.compress && !far.2.iter().any(|c| c == "zstd") {
            let _ = child.kill();
            return Err(EndpointError::Refused(format!(
                "the snapsync on {} ({}) cannot decompress (-z); run without -z or upgrade it",
                spec.host, far.1
            )));
        }

        let (results_tx, results_rx) = unbounded();
        let conn = Arc::new(Connection {
            writer: Mutex::new(Some(writer)),
            next_call: AtomicU64::new(1),
            calls: Mutex::new(HashMap::new()),
            results: results_rx,
            ended: Mutex::new(None),
            bytes_out: AtomicU64::new(0),
            bytes_in: Arc::new(AtomicU64::new(0)),
            host: spec.host.clone(),
        });
        let reader_conn = Arc::clone(&conn);
        std::thread::Builder::new()
            .name("snapsync-remote-reader".into())
            .spawn(move || read_loop(reader_conn, reader, results_tx))
            .map_err(|e| EndpointError::Root(format!("cannot start a thread: {e}")))?;
        Ok(RemoteEndpoint {
            spec,
            preserve,
            compress: options.compress,
            conn,
            child: Mutex::new(child),
            root_id: Mutex::new(None),
        })
    }

    /// Asks for a scan (`Scan` or `ScanDirty`) and checks the change set
    /// that comes back.
    fn scanned(&self, request: Body) -> Result<ChangeSet, EndpointError> {
        let set = match self.conn.call(request)? {
            Body::Scanned(set) => set,
            other => return Err(unexpected(&other)),
        };
        if !set.changes.windows(2).all(|w| w[0].path < w[1].path) {
            return Err(EndpointError::Refused(
                "the far end sent a change set out of order".into(),
            ));
        }
        Ok(set)
    }
}

fn wait_briefly(child: &mut Child) -> Option<i32> {
    for _ in 0..50 {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for RemoteEndpoint {
    fn drop(&mut self) {
        // Closing its input ends `serve`, which releases its locks.
        if let Ok(mut writer) = self.conn.writer.lock() {
            if let Some(mut writer) = writer.take() {
                let _ = writer.flush();
            }
        }
        let mut child = self.child.lock().unwrap();
        if wait_briefly(&mut child).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

macro_rules! expect_reply {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => Ok($value),
            other => Err(unexpected(&other)),
        }
    };
}

impl Endpoint for RemoteEndpoint {
    fn describe(&self) -> String {
        format!("{}:{}", self.spec.host, self.spec.path)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn wire_bytes(&self) -> (u64, u64) {
        (
            self.conn.bytes_out.load(Ordering::Relaxed),
            self.conn.bytes_in.load(Ordering::Relaxed),
        )
    }

    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError> {
        let reply = self.conn.call(Body::Open {
            root: self.spec.path.as_bytes().to_vec(),
            request: request.clone(),
            preserve: self.preserve,
        })?;
        let (facts, root_id) =
            expect_reply!(reply, Body::Opened { facts, root_id } => (facts, root_id))?;
        if !request.probe {
            *self.root_id.lock().unwrap() = root_id;
        }
        Ok(facts)
    }

    fn root_id(&self) -> Option<String> {
        self.root_id.lock().unwrap().clone()
    }

    fn scan(&self, options: &DiffOptions) -> Result<ChangeSet, EndpointError> {
        self.scanned(Body::Scan(options.clone()))
    }

    fn scan_dirty(
        &self,
        paths: &[RelPath],
        trees: &[RelPath],
        options: &DiffOptions,
    ) -> Result<ChangeSet, EndpointError> {
        self.scanned(Body::ScanDirty {
            paths: paths.to_vec(),
            trees: trees.to_vec(),
            options: options.clone(),
        })
    }

    fn lookup(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Entry>, EndpointError> {
        let reply = self.conn.call(Body::Lookup(paths.to_vec()))?;
        let entries = expect_reply!(reply, Body::Entries(entries) => entries)?;
        Ok(entries.into_iter().map(|e| (e.path.clone(), e)).collect())
    }

    fn hard_links(&self, paths: &[RelPath]) -> Result<Vec<Vec<RelPath>>, EndpointError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self.conn.call(Body::HardLinks(paths.to_vec()))?;
        expect_reply!(reply, Body::LinkGroups(groups) => groups)
    }

    fn find_content(&self, hashes: &[Hash]) -> Result<HashMap<Hash, Vec<RelPath>>, EndpointError> {
        let reply = self.conn.call(Body::FindContent(hashes.to_vec()))?;
        let content = expect_reply!(reply, Body::Content(content) => content)?;
        Ok(content.into_iter().collect())
    }

    fn watch(
        &self,
        timing: crate::endpoint::WatchTiming,
        sink: crate::endpoint::ReportSink,
    ) -> Result<(), EndpointError> {
        let (call, rx) = self.conn.start_call(Body::Watch(timing))?;
        // The far end answers (done, or why not); its reports follow on
        // this call for as long as the connection lasts.
        let conn = Arc::clone(&self.conn);
        loop {
            match conn.next(&rx) {
                Ok(Body::Done) => break,
                Ok(Body::Changes(report)) => {
                    sink(report);
                }
                Ok(Body::Failed(message)) => {
                    conn.calls.lock().unwrap().remove(&call);
                    return Err(EndpointError::Root(message));
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(()) => return Err(conn.lost()),
            }
        }
        std::thread::Builder::new()
            .name("snapsync-far-watch".into())
            .spawn(move || {
                while let Ok(body) = conn.next(&rx) {
                    match body {
                        Body::Changes(report) => {
                            if !sink(report) {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                conn.calls.lock().unwrap().remove(&call);
                // A lost connection: whatever happened meanwhile is unknown.
                sink(crate::endpoint::WatchReport {
                    rescan: Some(format!("the watch on {} ended", conn.host)),
                    ..Default::default()
                });
            })
            .map_err(|e| EndpointError::Root(format!("cannot start a thread: {e}")))?;
        Ok(())
    }

    fn decisions(&self) -> Result<Vec<crate::state::Decision>, EndpointError> {
        let reply = self.conn.call(Body::Decisions)?;
        expect_reply!(reply, Body::DecisionList(list) => list)
    }

    fn record_lineage(&self, edges: &[crate::lineage::Edge]) -> Result<(), EndpointError> {
        let reply = self.conn.call(Body::RecordLineage(edges.to_vec()))?;
        expect_reply!(reply, Body::Done => ())
    }

    fn hash_files(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Hash>, EndpointError> {
        let reply = self.conn.call(Body::HashFiles(paths.to_vec()))?;
        let hashes = expect_reply!(reply, Body::Hashes(hashes) => hashes)?;
        Ok(hashes.into_iter().collect())
    }

    fn signatures(&self, paths: &[RelPath]) -> Result<HashMap<RelPath, Signature>, EndpointError> {
        let reply = self.conn.call(Body::Signatures(paths.to_vec()))?;
        let signed = expect_reply!(reply, Body::Signed(signed) => signed)?;
        Ok(signed.into_iter().collect())
    }

    fn read_xattrs(&self, entries: &[Entry]) -> Result<Vec<Option<Xattrs>>, EndpointError> {
        let reply = self.conn.call(Body::ReadXattrs(entries.to_vec()))?;
        let got = expect_reply!(reply, Body::Xattrs(got) => got)?;
        if got.len() != entries.len() {
            return Err(EndpointError::Refused(
                "the far end answered for other entries".into(),
            ));
        }
        Ok(got)
    }

    fn send_files(
        &self,
        jobs: Vec<FileJob>,
        sink: &dyn FileSink,
        xattrs: bool,
        stop: &AtomicBool,
    ) -> Result<(), EndpointError> {
        for chunk in jobs.chunks(1000) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let asked: HashMap<u64, &FileJob> = chunk.iter().map(|j| (j.id, j)).collect();
            let (call, rx) = self.conn.start_call(Body::SendFiles {
                jobs: chunk.to_vec(),
                xattrs,
                compress: self.compress,
            })?;
            let result = receive_stream(&self.conn, &rx, &asked, sink);
            self.conn.calls.lock().unwrap().remove(&call);
            match result {
                Ok(()) => {}
                Err(None) => return Err(self.conn.lost()),
                Err(Some(error)) => return Err(error),
            }
        }
        Ok(())
    }

    fn receive_files<'a>(&'a self, done: Done<'a>) -> Box<dyn FileSink + 'a> {
        Box::new(RemoteSink {
            conn: &self.conn,
            done,
            compress: self.compress,
            opened: AtomicU64::new(0),
            reported: Mutex::new(0),
        })
    }

    fn apply(
        &self,
        ops: &[(Op, Option<Xattrs>)],
        parallel: bool,
    ) -> Result<Vec<Result<Applied, OpFailure>>, EndpointError> {
        let reply = self.conn.call(Body::Apply {
            ops: ops.to_vec(),
            parallel,
        })?;
        let results = expect_reply!(reply, Body::Applied(results) => results)?;
        if results.len() != ops.len() {
            return Err(EndpointError::Refused(
                "the far end answered for other operations".into(),
            ));
        }
        Ok(results)
    }

    fn record_pending(
        &self,
        pending: &[crate::state::Pending],
        replace: bool,
    ) -> Result<(), EndpointError> {
        if pending.is_empty() && !replace {
            return Ok(());
        }
        let reply = self.conn.call(Body::RecordPending {
            pending: pending.to_vec(),
            replace,
        })?;
        expect_reply!(reply, Body::Done => ())
    }

    fn remove_sent_files(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Result<(), String>>, EndpointError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self.conn.call(Body::RemoveSentFiles(entries.to_vec()))?;
        let results = expect_reply!(reply, Body::Removed(results) => results)?;
        if results.len() != entries.len() {
            return Err(EndpointError::Refused(
                "the far end answered for other files".into(),
            ));
        }
        Ok(results)
    }

    fn commit(&self, updates: &[SnapshotUpdate]) -> Result<(), EndpointError> {
        if updates.is_empty() {
            return Ok(());
        }
        let reply = self.conn.call(Body::Commit(updates.to_vec()))?;
        expect_reply!(reply, Body::Done => ())
    }

    fn finish(&self, end: &RunEnd) -> Result<(), EndpointError> {
        let reply = self.conn.call(Body::Finish(end.clone()))?;
        expect_reply!(reply, Body::Done => ())
    }
}

/// Feeds one `SendFiles` stream into `sink`. Only files that were asked
/// for are accepted, and with the near end's own job (never the far end's
/// idea of where a file goes). `Err(None)`: the connection ended.
fn receive_stream(
    conn: &Connection,
    rx: &Receiver<Body>,
    asked: &HashMap<u64, &FileJob>,
    sink: &dyn FileSink,
) -> Result<(), Option<EndpointError>> {
    let mut open: HashMap<u64, Box<dyn FileWriter + '_>> = HashMap::new();
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let refuse = |what: String| Some(EndpointError::Refused(format!("the far end {what}")));
    loop {
        let body = conn.next(rx).map_err(|_| None)?;
        match body {
            Body::FileOpen(job) => {
                let ours = claim(asked, &mut seen, job.id)?;
                if let Some(writer) = sink.open(ours) {
                    open.insert(job.id, writer);
                }
            }
            Body::FileData {
                id,
                data,
                compressed,
            } => {
                if !seen.contains(&id) {
                    return Err(refuse(format!("sent data for file {id} before opening it")));
                }
                if let Some(writer) = open.get_mut(&id) {
                    let data = file_data_bytes(data, compressed)
                        .map_err(|e| Some(EndpointError::Refused(e.to_string())))?;
                    if writer.literal(&data).is_err() {
                        // The writer keeps its error and reports it at the end.
                    }
                }
            }
            Body::FileCopy { id, offset, len } => {
                if !seen.contains(&id) {
                    return Err(refuse(format!("sent data for file {id} before opening it")));
                }
                if let Some(writer) = open.get_mut(&id) {
                    let _ = writer.copy(offset, len);
                }
            }
            Body::FileEnd { id, end } => {
                if let Some(writer) = open.remove(&id) {
                    writer.finish(end);
                }
            }
            Body::FileWhole {
                job,
                data,
                compressed,
                end,
            } => {
                let ours = claim(asked, &mut seen, job.id)?;
                let data = file_data_bytes(data, compressed)
                    .map_err(|e| Some(EndpointError::Refused(e.to_string())))?;
                write_whole(sink, ours, &data, end);
            }
            Body::FilesDone => {
                // Files the far end never finished fail, they are not lost.
                for (_, writer) in open.drain() {
                    writer.finish(SourceEnd::Failed(
                        "the far end did not finish sending it".into(),
                    ));
                }
                return Ok(());
            }
            Body::Failed(message) => return Err(refuse(format!("failed: {message}"))),
            other => return Err(Some(unexpected(&other))),
        }
    }
}

/// A pulled file may start once, and only if it was asked for; the near
/// end's own job for it is what the sink gets.
fn claim<'j>(
    asked: &HashMap<u64, &'j FileJob>,
    seen: &mut std::collections::HashSet<u64>,
    id: u64,
) -> Result<&'j FileJob, Option<EndpointError>> {
    let refuse = |what: String| Some(EndpointError::Refused(format!("the far end {what}")));
    let ours = asked
        .get(&id)
        .copied()
        .ok_or_else(|| refuse(format!("sent file {id} that was not asked for")))?;
    if !seen.insert(id) {
        return Err(refuse(format!("sent file {id} twice")));
    }
    Ok(ours)
}

/// Sends files to a far target; its results come back on the connection.
struct RemoteSink<'a> {
    conn: &'a Connection,
    done: Done<'a>,
    compress: bool,
    opened: AtomicU64,
    reported: Mutex<u64>,
}

impl RemoteSink<'_> {
    /// Hands on the results that have arrived; with `all`, waits for every
    /// opened file's result.
    fn drain(&self, all: bool) -> Result<(), EndpointError> {
        let mut reported = self.reported.lock().unwrap();
        loop {
            let next = if all && *reported < self.opened.load(Ordering::SeqCst) {
                match self.conn.results.recv() {
                    Ok(result) => Some(result),
                    Err(_) => return Err(self.conn.lost()),
                }
            } else {
                self.conn.results.try_recv().ok()
            };
            let Some((id, result)) = next else {
                return Ok(());
            };
            *reported += 1;
            (self.done)(id, result);
        }
    }
}

impl FileSink for RemoteSink<'_> {
    fn open(&self, job: &FileJob) -> Option<Box<dyn FileWriter + '_>> {
        let _ = self.drain(false);
        self.opened.fetch_add(1, Ordering::SeqCst);
        let conn = self.conn;
        Some(Box::new(WireFileWriter::new(
            job,
            self.compress,
            move |body| conn.send(0, body, false).map_err(std::io::Error::other),
        )))
    }

    fn wait(&self) -> Result<(), EndpointError> {
        let reply = self.conn.call(Body::SinkWait)?;
        expect_reply!(reply, Body::Done => ())?;
        self.drain(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs_are_recognised_like_rsync() {
        assert_eq!(
            RemoteSpec::parse("user@host:/srv/site"),
            Some(RemoteSpec {
                host: "user@host".into(),
                path: "/srv/site".into()
            })
        );
        assert_eq!(RemoteSpec::parse("host:").unwrap().path, ".");
        assert_eq!(RemoteSpec::parse("./a:b"), None);
        assert_eq!(RemoteSpec::parse("/tmp/a:b"), None);
        assert_eq!(RemoteSpec::parse("plain"), None);
        assert_eq!(RemoteSpec::parse(":x"), None);
    }
}
