//! The far end: `snapsync serve` exposes one local root to a peer over its
//! stdin and stdout. It answers requests in the order they come, installs
//! files the peer pushes, and streams files the peer pulls. It exits, and
//! its locks go with it, when its input closes.
//!
//! Before the session opens, the peer may time the round trip (`Ping`) and
//! ask for a QUIC data channel (`OpenDataChannel`): the listener is opened
//! then, for this session only, and its offer answered; once the peer says
//! `UseDataChannel(true)`, every later message travels on the channel, and
//! the ssh input is only watched for its end, which closes the channel.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::data_channel::Listener;
use crate::endpoint::wire::{write_whole, WireFileWriter};
use crate::endpoint::{
    Done, Endpoint, FileJob, FileSink, FileWriter, LocalEndpoint, OpFailure, ReportSink,
};
use crate::protocol::{
    file_data_bytes, read_message, write_message, Body, Envelope, ProtocolError, CAPABILITIES,
};
use crate::PROTOCOL_VERSION;

type Output = Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>;

/// The buffers on the protocol's stream, each way.
const BUFFER: usize = 256 * 1024;
/// The peer says it has the channel once it presented its token (over QUIC
/// while this word goes over ssh); this is slack for the two to meet.
const CLAIM_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

fn send(out: &Output, call: u64, body: Body, flush: bool) -> Result<(), ProtocolError> {
    let mut writer = out.lock().unwrap();
    write_message(&mut *writer, &Envelope { call, body })?;
    if flush {
        writer.flush()?;
    }
    Ok(())
}

/// Serves one session on `input`/`output` until the input ends.
pub fn serve(
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
) -> Result<(), ProtocolError> {
    let mut input = BufReader::with_capacity(BUFFER, input);
    let out: Output = Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER, output)));

    // Handshake: answer with our protocol whatever the peer speaks; it
    // compares and reports a mismatch naming both.
    let first = match read_message(&mut input) {
        // Closed before a word: nothing to do.
        Err(ProtocolError::Closed) => return Ok(()),
        other => other?,
    };
    match first.0.body {
        Body::Hello { .. } => send(
            &out,
            0,
            Body::Hello {
                protocol: PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").to_string(),
                capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            },
            true,
        )?,
        _ => return Err(ProtocolError::Malformed("expected a hello".into())),
    }

    // Until a session is opened: the round trip, the data channel, `Open`.
    let mut listener: Option<Listener> = None;
    // With a data channel: what keeps it open, and ssh's output, which
    // stays open until the end (the peer takes its end for ours).
    let mut _channel = None;
    let mut _ssh_output = None;
    let endpoint = loop {
        let (envelope, _) = match read_message(&mut input) {
            Err(ProtocolError::Closed) => return Ok(()),
            other => other?,
        };
        match envelope.body {
            Body::Ping => send(&out, envelope.call, Body::Done, true)?,
            Body::OpenDataChannel(ports) => {
                let reply = match Listener::open(ports) {
                    Ok(opened) => {
                        let offer = opened.offer().clone();
                        listener = Some(opened);
                        Body::DataChannelOffer(offer)
                    }
                    Err(e) => Body::Failed(e.to_string()),
                };
                send(&out, envelope.call, reply, true)?;
            }
            Body::UseDataChannel(false) => listener = None,
            Body::UseDataChannel(true) => {
                let opened = listener.take().ok_or_else(|| {
                    ProtocolError::Malformed("the peer chose a data channel never offered".into())
                })?;
                let channel = opened.accepted(CLAIM_LIMIT).map_err(|e| {
                    ProtocolError::Malformed(format!(
                        "the peer chose the data channel, but no client presented the token: {e}"
                    ))
                })?;
                let (reader, writer, mut guard) = channel.split();
                // The session ends when the peer closes ssh, and it closes
                // the channel first: there is nobody to linger for.
                guard.linger(false);
                let writer: Box<dyn Write + Send> = Box::new(writer);
                let reader: Box<dyn Read + Send> = Box::new(reader);
                let ssh = std::mem::replace(
                    &mut *out.lock().unwrap(),
                    BufWriter::with_capacity(BUFFER, writer),
                );
                _ssh_output = Some(ssh);
                let mut ssh_input =
                    std::mem::replace(&mut input, BufReader::with_capacity(BUFFER, reader))
                        .into_inner();
                // The peer closes ssh when it is done, or is gone.
                let closer = guard.closer();
                std::thread::Builder::new()
                    .name("snapsync-ssh-watch".into())
                    .spawn(move || {
                        let _ = std::io::copy(&mut ssh_input, &mut std::io::sink());
                        closer.close();
                    })
                    .map_err(ProtocolError::Io)?;
                _channel = Some(guard);
            }
            Body::Open {
                root,
                request,
                preserve,
            } => {
                let endpoint =
                    LocalEndpoint::new(PathBuf::from(OsStr::from_bytes(&root)), None, preserve);
                match endpoint.open_session(&request) {
                    // A probe only looks: the session is opened next.
                    Ok(facts) if request.probe => {
                        let root_id = facts.root_id.clone();
                        send(&out, envelope.call, Body::Opened { facts, root_id }, true)?;
                    }
                    Ok(facts) => {
                        let root_id = endpoint.root_id();
                        send(&out, envelope.call, Body::Opened { facts, root_id }, true)?;
                        break endpoint;
                    }
                    Err(e) => send(&out, envelope.call, Body::Failed(e.to_string()), true)?,
                }
            }
            _ => send(
                &out,
                envelope.call,
                Body::Failed("no session is open".into()),
                true,
            )?,
        }
    };
    serve_session(&endpoint, &mut input, &out)
}

fn serve_session(
    endpoint: &LocalEndpoint,
    input: &mut BufReader<Box<dyn Read + Send>>,
    out: &Output,
) -> Result<(), ProtocolError> {
    let results = Arc::clone(out);
    let done: Done = Arc::new(move |id, result| {
        let _ = send(&results, 0, Body::FileResult { id, result }, false);
    });
    let sink = endpoint.receive_files(Arc::clone(&done));
    let mut incoming: HashMap<u64, Box<dyn FileWriter + '_>> = HashMap::new();
    let never = AtomicBool::new(false);
    // The peer does not wait for `RecordPending`'s answer before it sends
    // what the records announce: once they could not be written, nothing
    // more is changed here (the peer learns why with its next answer).
    let mut unrecorded: Option<String> = None;
    loop {
        // Files' results go out unflushed, many to a write; before waiting
        // for more input they go, so that the peer settles files as they
        // arrive rather than all at the end of a stream.
        if input.buffer().is_empty() {
            out.lock().unwrap().flush()?;
        }
        let (envelope, _) = match read_message(input) {
            Err(ProtocolError::Closed) => return Ok(()),
            other => other?,
        };
        let call = envelope.call;
        let failed = |e: crate::endpoint::EndpointError| Body::Failed(e.to_string());
        if let Some(why) = &unrecorded {
            if let Some(reply) = refuse_change(&envelope.body, why, &done) {
                if let Some(reply) = reply {
                    send(out, call, reply, true)?;
                }
                continue;
            }
        }
        let reply = match envelope.body {
            Body::Scan(options) => Some(endpoint.scan(&options).map_or_else(failed, Body::Scanned)),
            Body::ScanDirty {
                paths,
                trees,
                options,
            } => Some(
                endpoint
                    .scan_dirty(&paths, &trees, &options)
                    .map_or_else(failed, Body::Scanned),
            ),
            Body::Lookup(paths) => Some(
                endpoint
                    .lookup(&paths)
                    .map_or_else(failed, |map| Body::Entries(map.into_values().collect())),
            ),
            Body::HardLinks(paths) => Some(
                endpoint
                    .hard_links(&paths)
                    .map_or_else(failed, Body::LinkGroups),
            ),
            Body::FindContent(hashes) => Some(
                endpoint
                    .find_content(&hashes)
                    .map_or_else(failed, |map| Body::Content(map.into_iter().collect())),
            ),
            Body::Signatures(paths) => Some(
                endpoint
                    .signatures(&paths)
                    .map_or_else(failed, |map| Body::Signed(map.into_iter().collect())),
            ),
            Body::RecordLineage(edges) => Some(
                endpoint
                    .record_lineage(&edges)
                    .map_or_else(failed, |()| Body::Done),
            ),
            Body::HashFiles(paths) => Some(
                endpoint
                    .hash_files(&paths)
                    .map_or_else(failed, |map| Body::Hashes(map.into_iter().collect())),
            ),
            Body::ReadXattrs(entries) => Some(
                endpoint
                    .read_xattrs(&entries)
                    .map_or_else(failed, Body::Xattrs),
            ),
            Body::Apply { ops, parallel } => Some(
                endpoint
                    .apply(&ops, parallel)
                    .map_or_else(failed, Body::Applied),
            ),
            Body::RecordPending { pending, replace } => {
                Some(match endpoint.record_pending(&pending, replace) {
                    Ok(()) => Body::Done,
                    Err(e) => {
                        let why = e.to_string();
                        unrecorded = Some(why.clone());
                        Body::Failed(why)
                    }
                })
            }
            Body::Commit(updates) => Some(
                endpoint
                    .commit(&updates)
                    .map_or_else(failed, |()| Body::Done),
            ),
            Body::Finish { rows, end, last } => Some(match endpoint.finish(&rows, &end) {
                Ok(()) => {
                    // The session's last message: let go of it before
                    // answering, so that the peer, once answered, need
                    // not wait for this process to end (which it does
                    // when the peer closes ssh).
                    if last {
                        endpoint.end_session();
                    }
                    Body::Done
                }
                Err(e) => failed(e),
            }),
            Body::Decisions => Some(endpoint.decisions().map_or_else(failed, Body::DecisionList)),
            Body::RemoveSentFiles(entries) => Some(
                endpoint
                    .remove_sent_files(&entries)
                    .map_or_else(failed, Body::Removed),
            ),
            Body::Watch(timing) => {
                // Answered at once (done, or why the root cannot be
                // watched); reports follow, tagged with this call, from the
                // watch's own thread.
                let reports = Arc::clone(out);
                let sink: ReportSink = Box::new(move |report| {
                    send(&reports, call, Body::Changes(report), true).is_ok()
                });
                Some(
                    endpoint
                        .watch(timing, sink)
                        .map_or_else(failed, |()| Body::Done),
                )
            }
            Body::SendFiles {
                jobs,
                xattrs,
                compress,
            } => {
                let wire = WireSink {
                    out: Arc::clone(out),
                    call,
                    compress,
                };
                let sent = endpoint.send_files(jobs, &wire, xattrs, &never);
                Some(sent.map_or_else(failed, |()| Body::FilesDone))
            }
            Body::FileOpen(job) => {
                if let Some(writer) = sink.open(&job) {
                    incoming.insert(job.id, writer);
                }
                None
            }
            Body::FileData {
                id,
                data,
                compressed,
            } => {
                if let Some(writer) = incoming.get_mut(&id) {
                    let data = file_data_bytes(data, compressed)?;
                    let _ = writer.literal(&data);
                }
                None
            }
            Body::FileCopy { id, offset, len } => {
                if let Some(writer) = incoming.get_mut(&id) {
                    let _ = writer.copy(offset, len);
                }
                None
            }
            Body::FileEnd { id, end } => {
                if let Some(writer) = incoming.remove(&id) {
                    writer.finish(end);
                }
                None
            }
            Body::FileWhole {
                job,
                data,
                compressed,
                end,
            } => {
                let data = file_data_bytes(data, compressed)?;
                write_whole(sink.as_ref(), &job, &data, end);
                None
            }
            Body::SinkWait => Some(Body::Done),
            Body::Open { .. } => Some(Body::Failed("a session is already open".into())),
            other => {
                return Err(ProtocolError::Malformed(format!(
                    "unexpected message {}",
                    format!("{other:?}").chars().take(60).collect::<String>()
                )))
            }
        };
        if let Some(reply) = reply {
            send(out, call, reply, true)?;
        }
    }
}

/// How a session whose pending records could not be written (`why`)
/// answers a request that would change the root: `None` for any other
/// (served as usual); `Some(None)` for a message without an answer (a file
/// is reported failed through `report` instead).
fn refuse_change(body: &Body, why: &str, report: &Done) -> Option<Option<Body>> {
    let refusal =
        format!("nothing is changed after the run's pending records could not be written: {why}");
    match body {
        Body::Apply { .. } | Body::Commit(_) | Body::RemoveSentFiles(_) => {
            Some(Some(Body::Failed(refusal)))
        }
        Body::Finish { rows, .. } if !rows.is_empty() => Some(Some(Body::Failed(refusal))),
        Body::FileOpen(job) | Body::FileWhole { job, .. } => {
            let failure = OpFailure {
                path: job.entry.path.clone(),
                message: refusal,
                stale: false,
                warning_only: false,
            };
            report(job.id, Err(failure));
            Some(None)
        }
        _ => None,
    }
}

/// Streams files to the peer, tagged with the call that asked for them.
struct WireSink {
    out: Output,
    call: u64,
    compress: bool,
}

impl FileSink for WireSink {
    fn open(&self, job: &FileJob) -> Option<Box<dyn FileWriter + '_>> {
        let (out, call) = (Arc::clone(&self.out), self.call);
        Some(Box::new(WireFileWriter::new(
            job,
            self.compress,
            move |body| send(&out, call, body, false).map_err(std::io::Error::other),
        )))
    }

    fn wait(&self) -> Result<(), crate::endpoint::EndpointError> {
        Ok(())
    }
}
