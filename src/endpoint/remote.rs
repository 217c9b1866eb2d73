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
//!
//! The ssh stream starts the far end and carries the handshake; with
//! `--transport quic` (or `auto` on a long link) every message after it
//! travels on a QUIC data channel ([`crate::data_channel`]) that the far end
//! opens for this session and announces over ssh. ssh stays open: when
//! either side of it closes, so does the channel.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::wire::{write_whole, WireFileWriter};
use super::{
    Applied, Done, Endpoint, EndpointError, FileJob, FileSink, FileWriter, LaterResults, OpFailure,
    RunEnd, SessionRequest, SourceEnd,
};
use crate::apply::Xattrs;
use crate::changes::{ChangeSet, DiffOptions};
use crate::data_channel::{self, Channel, ChannelGuard, Offer, PortRange};
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
    /// What carries the protocol after the handshake (`--transport`).
    pub transport: Transport,
    /// The UDP ports the far end may listen on for the data channel
    /// (`--udp-port`; any free port when `None`).
    pub udp_ports: Option<PortRange>,
    /// The look at the far root the session starts with (a request with
    /// `probe`): asked on ssh right behind the handshake, its answer is
    /// there when the session opens, a round trip sooner.
    pub probe: Option<SessionRequest>,
    /// The scan the run asks for first (a one-time run's full scan): asked
    /// right behind the session's `Open`, so that it is on its way while
    /// the open's answer is looked at, a round trip sooner.
    pub scan: Option<DiffOptions>,
    /// The session carries one run: its `Finish` is its last message,
    /// after which the far end lets go of the session, and ssh is not
    /// waited for (a round trip sooner).
    pub one_run: bool,
}

/// `--transport`: what carries the protocol once the far end is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The data channel when the ssh round trip exceeds [`AUTO_MIN_RTT`]
    /// and UDP gets through within [`AUTO_LIMIT`]; else ssh, with a warning
    /// when the channel was tried and failed.
    #[default]
    Auto,
    /// The ssh stream, always.
    Ssh,
    /// The data channel, or no session (within [`QUIC_LIMIT`]).
    Quic,
}

/// `auto` tries the data channel above this round trip: below it, TCP over
/// ssh recovers from a loss before it matters.
pub const AUTO_MIN_RTT: Duration = Duration::from_millis(5);
/// How long `auto` waits for the data channel before it stays on ssh.
pub const AUTO_LIMIT: Duration = Duration::from_secs(2);
/// How long `quic` waits for the data channel before it gives up.
pub const QUIC_LIMIT: Duration = Duration::from_secs(5);
/// Pings that time the ssh round trip (the least counts).
const PINGS: usize = 3;

/// The buffers on the protocol's stream, each way.
const BUFFER: usize = 256 * 1024;

/// Messages answering one call go to its caller through this.
type CallSender = Sender<Body>;

struct Connection {
    /// `None` once closed: the far end then sees its input end and exits.
    writer: Mutex<Option<BufWriter<Box<dyn Write + Send>>>>,
    next_call: AtomicU64,
    calls: Mutex<HashMap<u64, CallSender>>,
    /// Requests sent without waiting ([`Connection::call_later`]): each
    /// call's answer settles them, as the far end answers in order.
    deferred: Mutex<Vec<(u64, Receiver<Body>)>>,
    results: Receiver<(u64, Result<Applied, OpFailure>)>,
    /// Why the connection ended, once it has.
    ended: Mutex<Option<String>>,
    bytes_out: AtomicU64,
    bytes_in: Arc<AtomicU64>,
    host: String,
}

macro_rules! expect_reply {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => Ok($value),
            other => Err(unexpected(&other)),
        }
    };
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
        let reply = self.answer(id, &rx);
        // What was sent before without waiting is answered by now, and
        // its failure is the first to report.
        self.settle()?;
        reply
    }

    /// The answer to call `id`: a failure the far end reports is an error.
    fn answer(&self, id: u64, rx: &Receiver<Body>) -> Result<Body, EndpointError> {
        let reply = self.next(rx);
        self.calls.lock().unwrap().remove(&id);
        match reply {
            Ok(Body::Failed(message)) => {
                Err(EndpointError::Refused(format!("{}: {message}", self.host)))
            }
            Ok(body) => Ok(body),
            Err(_) => Err(self.lost()),
        }
    }

    /// Sends a request answered with `Done` without waiting for it: a
    /// round trip saved where nothing that follows depends on its answer
    /// (the far end, which answers in order, has acted on it before the
    /// next request). The next call's answer settles it.
    fn call_later(&self, body: Body) -> Result<(), EndpointError> {
        let (id, rx) = self.start_call(body)?;
        self.deferred.lock().unwrap().push((id, rx));
        Ok(())
    }

    /// Waits for the answers to the requests sent without waiting.
    fn settle(&self) -> Result<(), EndpointError> {
        let deferred = std::mem::take(&mut *self.deferred.lock().unwrap());
        let mut first_error = None;
        for (id, rx) in deferred {
            let settled = self
                .answer(id, &rx)
                .and_then(|reply| expect_reply!(reply, Body::Done => ()));
            if let Err(e) = settled {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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
    mut input: BufReader<Box<dyn Read + Send>>,
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
    /// With a data channel: ssh's input, which stays open until the end
    /// (closing it ends the far end), the channel, and its far address.
    ssh_input: Mutex<Option<Box<dyn Write + Send>>>,
    channel: Mutex<Option<ChannelGuard>>,
    data_address: Option<SocketAddr>,
    /// Why `auto` found no data channel, when it tried one.
    warning: Option<String>,
    /// [`ConnectOptions::probe`] and the far end's answer, until asked for.
    probed: Mutex<Option<(SessionRequest, Body)>>,
    /// [`ConnectOptions::scan`], until the session opens.
    first_scan: Mutex<Option<DiffOptions>>,
    /// The scan asked behind the open, until asked for.
    asked_scan: Mutex<Option<AskedScan>>,
    /// [`ConnectOptions::one_run`].
    one_run: bool,
    /// The far end answered the run's last `Finish`: it has let go of the
    /// session, and nothing is left to wait for.
    let_go: AtomicBool,
}

/// A scan asked before it is wanted: its options (see [`scan_key`]), its
/// call and where its answer comes.
struct AskedScan {
    key: Vec<u8>,
    call: u64,
    answer: Receiver<Body>,
}

/// Requests and answers on the ssh stream before the connection's reader
/// starts: the round trip, and the data channel's setup.
struct Setup {
    writer: BufWriter<Box<dyn Write + Send>>,
    reader: BufReader<Box<dyn Read + Send>>,
    /// Calls made so far (the connection numbers on from here).
    calls: u64,
    /// When ssh was started (see [`data_channel::first_rtt`]).
    started: Instant,
}

impl Setup {
    /// Sends a request without waiting for its answer; its call number.
    fn ask(&mut self, body: Body) -> Result<u64, ProtocolError> {
        self.calls += 1;
        self.tell(body)?;
        Ok(self.calls)
    }

    /// The answer to `call`, which must be the next to come.
    fn answer(&mut self, call: u64) -> Result<Body, ProtocolError> {
        let (reply, _) = read_message(&mut self.reader)?;
        if reply.call != call {
            return Err(ProtocolError::Malformed(format!(
                "the far end answered call {} to call {call}",
                reply.call
            )));
        }
        Ok(reply.body)
    }

    /// Sends a message that has no answer.
    fn tell(&mut self, body: Body) -> Result<(), ProtocolError> {
        write_message(
            &mut self.writer,
            &Envelope {
                call: self.calls,
                body,
            },
        )?;
        self.writer.flush()?;
        Ok(())
    }

    /// The least round trip of `pings`, sent one after the other without
    /// waiting and answered in order, each timed from its own sending: the
    /// count costs one round trip.
    fn round_trip(&mut self, pings: Vec<(u64, Instant)>) -> Result<Duration, EndpointError> {
        let mut least = Duration::MAX;
        for (call, started) in pings {
            match self.answer(call).map_err(setup_lost)? {
                Body::Done => least = least.min(started.elapsed()),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(least)
    }

    /// Connects to the data channel the far end offered in answer to
    /// `call` (an `OpenDataChannel`), and tells it whether that worked.
    /// `Ok(Err)`: no channel, and why (the session goes on over ssh);
    /// `Err`: the ssh stream itself failed.
    fn open_data_channel(
        &mut self,
        call: u64,
        host: &str,
        limit: Duration,
    ) -> Result<Result<Channel, String>, EndpointError> {
        let connected = self
            .offer(call)?
            .and_then(|offer| connect_offer(host, &offer, limit, self.started));
        self.tell(Body::UseDataChannel(connected.is_ok()))
            .map_err(setup_lost)?;
        Ok(connected)
    }

    /// Starts connecting to the data channel the far end offered in
    /// answer to `call`, on a thread of its own; the caller tells the far
    /// end whether it is used. `Ok(Err)`: no offer, and why.
    fn try_data_channel(
        &mut self,
        call: u64,
        host: &str,
        limit: Duration,
    ) -> Result<Result<std::thread::JoinHandle<Result<Channel, String>>, String>, EndpointError>
    {
        let offer = match self.offer(call)? {
            Ok(offer) => offer,
            Err(why) => return Ok(Err(why)),
        };
        let (host, started) = (host.to_string(), self.started);
        Ok(std::thread::Builder::new()
            .name("snapsync-quic-connect".into())
            .spawn(move || connect_offer(&host, &offer, limit, started))
            .map_err(|e| {
                format!("cannot start a thread: {e}; the system is short of memory or processes")
            }))
    }

    /// The far end's answer to `call` (an `OpenDataChannel`): its offer,
    /// or why it has none.
    fn offer(&mut self, call: u64) -> Result<Result<Offer, String>, EndpointError> {
        match self.answer(call) {
            Ok(Body::DataChannelOffer(offer)) => Ok(Ok(offer)),
            Ok(Body::Failed(why)) => Ok(Err(format!("the far end cannot listen: {why}"))),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(setup_lost(e)),
        }
    }
}

/// Connects to the data channel `offer` at `host`, within `limit`; its
/// first guess of the round trip is from the login that `started` (see
/// [`data_channel::first_rtt`]).
fn connect_offer(
    host: &str,
    offer: &Offer,
    limit: Duration,
    started: Instant,
) -> Result<Channel, String> {
    let first_rtt = data_channel::first_rtt(started.elapsed());
    data_addresses(host, offer.port)
        .map_err(|e| format!("cannot resolve {}: {e}", host_name(host)))
        .and_then(|addresses| {
            data_channel::connect(&addresses, offer, limit, Some(first_rtt))
                .map_err(|e| e.to_string())
        })
        .map_err(|why| format!("UDP port {}: {why}", offer.port))
}

fn setup_lost(e: ProtocolError) -> EndpointError {
    EndpointError::Root(format!(
        "the far end closed the connection while setting up the session: {e}"
    ))
}

/// `[user@]host` without the user (and an IPv6 literal without brackets).
fn host_name(host: &str) -> &str {
    let name = host.rsplit_once('@').map_or(host, |(_, name)| name);
    name.trim_start_matches('[').trim_end_matches(']')
}

/// Where the data channel listens, as this host resolves the far host's name.
fn data_addresses(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host_name(host), port).to_socket_addrs()?.collect())
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
        let (program, args) = rsh.split_first().ok_or_else(|| {
            EndpointError::Refused(
                "--rsh is empty; give the command that reaches the host (the default is ssh)"
                    .into(),
            )
        })?;
        let mut command = Command::new(program);
        // A ^C in the terminal goes to its whole foreground process group:
        // the far end must outlive it, so that this end can finish the file
        // in flight, save what was done and end the session itself (exit
        // 130). An ssh that finds SIGINT ignored keeps it ignored.
        // SAFETY: the closure only calls signal(2), which is safe between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = command
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
                    "cannot start `{program}` to reach {}: {e}; check --rsh",
                    spec.host
                ))
            })?;
        let stdin: Box<dyn Write + Send> = Box::new(child.stdin.take().expect("piped"));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let mut setup = Setup {
            writer: BufWriter::with_capacity(BUFFER, stdin),
            reader: BufReader::with_capacity(BUFFER, stdout),
            calls: 0,
            started,
        };

        let hello = Body::Hello {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        };
        // Requests go out without waiting for the answers before them (the
        // far end answers in order): with `quic` and `auto` the data
        // channel is asked for behind the hello, and the look at the root
        // behind it. `auto` then times pings (sent once the hello is
        // answered, so that the far end's start is not timed with them)
        // while it tries the channel, and turns it down on a short link.
        let probe = |setup: &mut Setup| match &options.probe {
            Some(request) => setup
                .ask(Body::Open {
                    root: spec.path.as_bytes().to_vec(),
                    request: request.clone(),
                    preserve,
                })
                .map(Some),
            None => Ok(None),
        };
        let asked = setup.tell(hello).and_then(|()| match options.transport {
            Transport::Quic | Transport::Auto => {
                let call = setup.ask(Body::OpenDataChannel(options.udp_ports))?;
                Ok((Some((Vec::new(), call)), probe(&mut setup)?))
            }
            Transport::Ssh => Ok((None, probe(&mut setup)?)),
        });
        let (asked, mut probe_call, reply) = match asked {
            Ok((asked, probe_call)) => (asked, probe_call, read_message(&mut setup.reader)),
            Err(e) => (None, None, Err(e)),
        };
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

        let asked = match (options.transport, asked) {
            (Transport::Auto, Some((_, call))) => {
                let pinged = (0..PINGS)
                    .map(|_| Ok((setup.ask(Body::Ping)?, Instant::now())))
                    .collect::<Result<Vec<_>, ProtocolError>>();
                match pinged {
                    Ok(pings) => Some((pings, call)),
                    Err(unsent) => {
                        // A far end that went may have said why first.
                        let why = read_message(&mut setup.reader).err().unwrap_or(unsent);
                        let _ = child.kill();
                        return Err(setup_lost(why));
                    }
                }
            }
            (_, asked) => asked,
        };
        // With `auto`, the look at the root is answered before the pings.
        let mut probed_early = None;
        let host = &spec.host;
        let mut warning = None;
        let channel = match (options.transport, asked) {
            (Transport::Ssh, _) | (_, None) => None,
            (Transport::Quic, Some((_, call))) => {
                match setup.open_data_channel(call, host, QUIC_LIMIT) {
                    Ok(Ok(channel)) => Some(channel),
                    Ok(Err(why)) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let name = host_name(host);
                        return Err(EndpointError::Root(format!(
                            "no QUIC data channel to {name} ({why}); UDP must get through to {name}: allow it inbound there (on the ports you give with --udp-port), or use --transport ssh"
                        )));
                    }
                    Err(e) => {
                        let _ = child.kill();
                        return Err(e);
                    }
                }
            }
            (Transport::Auto, Some((pings, call))) => {
                // The offer came with the hello's answer: the channel is
                // tried while the pings time the ssh round trip (a round
                // trip sooner than one after the other).
                let tried = setup
                    .try_data_channel(call, host, AUTO_LIMIT)
                    .inspect_err(|_| {
                        let _ = child.kill();
                    })?;
                if let Some(call) = probe_call.take() {
                    let answer = setup.answer(call).map_err(setup_lost).inspect_err(|_| {
                        let _ = child.kill();
                    })?;
                    probed_early = options.probe.clone().map(|request| (request, answer));
                }
                let rtt = setup.round_trip(pings).inspect_err(|_| {
                    let _ = child.kill();
                })?;
                let connected = match tried {
                    Ok(attempt) if rtt > AUTO_MIN_RTT => Some(
                        attempt
                            .join()
                            .unwrap_or_else(|_| Err("the connecting thread panicked".into())),
                    ),
                    Err(why) if rtt > AUTO_MIN_RTT => Some(Err(why)),
                    // On a short link the attempt ends, and a channel it
                    // made closes, on a thread of their own: closing waits
                    // briefly for the far end to hear of it.
                    Ok(attempt) => {
                        let _ = std::thread::Builder::new()
                            .name("snapsync-quic-unused".into())
                            .spawn(move || drop(attempt.join()));
                        None
                    }
                    Err(_) => None,
                };
                let used = matches!(connected, Some(Ok(_)));
                setup
                    .tell(Body::UseDataChannel(used))
                    .map_err(setup_lost)
                    .inspect_err(|_| {
                        let _ = child.kill();
                    })?;
                match connected {
                    Some(Ok(channel)) => Some(channel),
                    Some(Err(why)) => {
                        warning = Some(format!(
                            "no QUIC data channel to {} ({why}); the session goes through ssh",
                            host_name(host)
                        ));
                        None
                    }
                    None => None,
                }
            }
        };
        // The probe's answer follows the data channel's on ssh.
        let probed = match probe_call {
            None => probed_early,
            Some(call) => {
                let answer = setup.answer(call).map_err(setup_lost).inspect_err(|_| {
                    let _ = child.kill();
                })?;
                options.probe.clone().map(|request| (request, answer))
            }
        };
        let Setup {
            writer,
            reader,
            calls,
            ..
        } = setup;
        let (writer, reader, ssh_input, guard, data_address) = match channel {
            None => (writer, reader, None, None, None),
            Some(channel) => {
                let address = channel.peer();
                let (channel_reader, channel_writer, guard) = channel.split();
                // The far end writes nothing more on ssh: its end means
                // the far end is gone, and the channel with it.
                let closer = guard.closer();
                let mut ssh_output = reader.into_inner();
                std::thread::Builder::new()
                    .name("snapsync-ssh-watch".into())
                    .spawn(move || {
                        let _ = std::io::copy(&mut ssh_output, &mut std::io::sink());
                        closer.close();
                    })
                    .map_err(|e| {
                        EndpointError::Root(format!(
                "cannot start a thread: {e}; the system is short of memory or processes"
            ))
                    })?;
                let ssh_input = writer
                    .into_inner()
                    .map_err(|e| setup_lost(ProtocolError::Io(e.into_error())))?;
                let writer: Box<dyn Write + Send> = Box::new(channel_writer);
                let reader: Box<dyn Read + Send> = Box::new(channel_reader);
                (
                    BufWriter::with_capacity(BUFFER, writer),
                    BufReader::with_capacity(BUFFER, reader),
                    Some(ssh_input),
                    Some(guard),
                    Some(address),
                )
            }
        };

        let (results_tx, results_rx) = unbounded();
        let conn = Arc::new(Connection {
            writer: Mutex::new(Some(writer)),
            next_call: AtomicU64::new(calls + 1),
            calls: Mutex::new(HashMap::new()),
            deferred: Mutex::new(Vec::new()),
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
            .map_err(|e| {
                EndpointError::Root(format!(
                    "cannot start a thread: {e}; the system is short of memory or processes"
                ))
            })?;
        Ok(RemoteEndpoint {
            spec,
            preserve,
            compress: options.compress,
            conn,
            child: Mutex::new(child),
            root_id: Mutex::new(None),
            ssh_input: Mutex::new(ssh_input),
            channel: Mutex::new(guard),
            data_address,
            warning,
            probed: Mutex::new(probed),
            first_scan: Mutex::new(options.scan.clone()),
            asked_scan: Mutex::new(None),
            one_run: options.one_run,
            let_go: AtomicBool::new(false),
        })
    }

    /// Why `--transport auto` found no data channel, when it tried one:
    /// one line for the user.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Asks for a scan (`Scan` or `ScanDirty`) and checks the change set
    /// that comes back.
    fn scanned(&self, request: Body) -> Result<ChangeSet, EndpointError> {
        let reply = self.conn.call(request)?;
        self.checked_scan(reply)
    }

    /// The change set a scan's answer carries, checked.
    fn checked_scan(&self, reply: Body) -> Result<ChangeSet, EndpointError> {
        let set = match reply {
            Body::Scanned(set) => set,
            other => return Err(unexpected(&other)),
        };
        if !set.changes.windows(2).all(|w| w[0].path < w[1].path) {
            return Err(EndpointError::Refused(
                "the far end sent a change set out of order; is it the same snapsync version?"
                    .into(),
            ));
        }
        Ok(set)
    }
}

/// What tells a scan's options from others (they hold compiled filters,
/// which do not compare): their encoding.
fn scan_key(options: &DiffOptions) -> Vec<u8> {
    bincode::serialize(options).unwrap_or_default()
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
        // With a data channel, ssh's input is closed here, and the channel
        // closed at once: its closing packets travel while ssh ends.
        drop(self.ssh_input.lock().unwrap().take());
        let channel = self.channel.lock().unwrap().take();
        if let Some(channel) = &channel {
            channel.closer().close();
        }
        let mut child = self.child.lock().unwrap();
        // Once the far end has let go of the session, ssh's own end (a
        // round trip: its input's end there, the far end's exit here) is
        // not waited for; the far end ends as ssh goes.
        let let_go = self.let_go.load(Ordering::SeqCst);
        let ended = !let_go && wait_briefly(&mut child).is_some();
        if !ended {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut channel) = channel {
            if ended || let_go {
                // The far end has gone: nobody is left to hear the close.
                channel.linger(false);
            }
        }
    }
}

impl Endpoint for RemoteEndpoint {
    fn describe(&self) -> String {
        format!("{}:{}", self.spec.host, self.spec.path)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn data_channel(&self) -> Option<SocketAddr> {
        self.data_address
    }

    fn wire_bytes(&self) -> (u64, u64) {
        (
            self.conn.bytes_out.load(Ordering::Relaxed),
            self.conn.bytes_in.load(Ordering::Relaxed),
        )
    }

    fn open_session(&self, request: &SessionRequest) -> Result<SessionFacts, EndpointError> {
        let probed = self.probed.lock().unwrap().take();
        let reply = match probed.filter(|(asked, _)| asked == request) {
            Some((_, Body::Failed(message))) => {
                return Err(EndpointError::Refused(format!(
                    "{}: {message}",
                    self.spec.host
                )))
            }
            Some((_, reply)) => reply,
            None => {
                let open = Body::Open {
                    root: self.spec.path.as_bytes().to_vec(),
                    request: request.clone(),
                    preserve: self.preserve,
                };
                let scan = match request.probe {
                    true => None,
                    false => self.first_scan.lock().unwrap().take(),
                };
                match scan {
                    None => self.conn.call(open)?,
                    Some(options) => {
                        let (id, rx) = self.conn.start_call(open)?;
                        // A far end that refuses the open answers the scan
                        // `Failed`; a session that does not go on never
                        // takes the answer.
                        if let Ok((call, answer)) =
                            self.conn.start_call(Body::Scan(options.clone()))
                        {
                            *self.asked_scan.lock().unwrap() = Some(AskedScan {
                                key: scan_key(&options),
                                call,
                                answer,
                            });
                        }
                        let reply = self.conn.answer(id, &rx);
                        self.conn.settle()?;
                        reply?
                    }
                }
            }
        };
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
        let asked = self.asked_scan.lock().unwrap().take();
        match asked {
            // What was sent without waiting after it (the session's
            // lineage) is answered after it, and settled by the next call.
            Some(asked) if asked.key == scan_key(options) => {
                self.checked_scan(self.conn.answer(asked.call, &asked.answer)?)
            }
            // Asked with other options (the answer is dropped as it comes).
            _ => self.scanned(Body::Scan(options.clone())),
        }
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
        if paths.is_empty() {
            return Ok(HashMap::new());
        }
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
        if hashes.is_empty() {
            return Ok(HashMap::new());
        }
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
            .map_err(|e| {
                EndpointError::Root(format!(
                    "cannot start a thread: {e}; the system is short of memory or processes"
                ))
            })?;
        Ok(())
    }

    fn decisions(&self) -> Result<Vec<crate::state::Decision>, EndpointError> {
        let reply = self.conn.call(Body::Decisions)?;
        expect_reply!(reply, Body::DecisionList(list) => list)
    }

    /// Not waited for: the scan asked next settles it.
    fn record_lineage(&self, edges: &[crate::lineage::Edge]) -> Result<(), EndpointError> {
        self.conn.call_later(Body::RecordLineage(edges.to_vec()))
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
                "the far end answered for other entries; is it the same snapsync version?".into(),
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
        // Several chunks are asked for ahead of the one arriving, so the far
        // end goes from one to the next without waiting a round trip. They
        // are asked on a thread of their own: a request may wait for the far
        // end to read it, which it does only once it has sent what came
        // before, which is received here meanwhile. Once asked, a chunk is
        // received whole (the far end sends all of it).
        let forget = |call: u64| {
            self.conn.calls.lock().unwrap().remove(&call);
        };
        let rate = Mutex::new(PullRate {
            last: None,
            rates: std::collections::VecDeque::new(),
        });
        type Asked<'j> = Result<(u64, Receiver<Body>, &'j [FileJob], Instant), EndpointError>;
        let (asked_tx, asked_rx) = unbounded::<Asked>();
        let (permit_tx, permit_rx) = bounded::<()>(PULL_AHEAD);
        for _ in 0..PULL_AHEAD {
            let _ = permit_tx.send(());
        }
        let rate = &rate;
        let jobs = &jobs;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut start = 0;
                while start < jobs.len() {
                    if permit_rx.recv().is_err() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let bytes = pull_chunk_bytes(rate.lock().unwrap().rate());
                    let chunk = pull_chunk(jobs, start, bytes);
                    start += chunk.len();
                    let asked = self
                        .conn
                        .start_call(Body::SendFiles {
                            jobs: chunk.to_vec(),
                            xattrs,
                            compress: self.compress,
                        })
                        .map(|(call, rx)| (call, rx, chunk, Instant::now()));
                    let failed = asked.is_err();
                    if asked_tx.send(asked).is_err() || failed {
                        break;
                    }
                }
            });
            let mut permits = Some(permit_tx);
            let mut result = Ok(());
            for asked in asked_rx {
                let (call, rx, chunk, asked_at) = match asked {
                    Ok(asked) => asked,
                    Err(error) => {
                        result = result.and(Err(error));
                        continue;
                    }
                };
                if result.is_err() {
                    forget(call);
                    continue;
                }
                let wanted: HashMap<u64, &FileJob> = chunk.iter().map(|j| (j.id, j)).collect();
                let received = receive_stream(&self.conn, &rx, &wanted, sink);
                forget(call);
                match received {
                    Ok(()) => {
                        let bytes = chunk.iter().map(|j| j.entry.size).sum();
                        rate.lock().unwrap().arrived(bytes, asked_at);
                        if let Some(permits) = &permits {
                            let _ = permits.send(());
                        }
                    }
                    Err(error) => {
                        result = Err(error.unwrap_or_else(|| self.conn.lost()));
                        // No more asking; what was asked is let go.
                        permits = None;
                    }
                }
            }
            drop(permits);
            result
        })
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
        self.apply_later(ops, parallel)?()
    }

    fn apply_later(
        &self,
        ops: &[(Op, Option<Xattrs>)],
        parallel: bool,
    ) -> Result<LaterResults<'_>, EndpointError> {
        let count = ops.len();
        let (call, answer) = self.conn.start_call(Body::Apply {
            ops: ops.to_vec(),
            parallel,
        })?;
        Ok(Box::new(move || {
            let reply = self.conn.answer(call, &answer);
            self.conn.settle()?;
            let results = expect_reply!(reply?, Body::Applied(results) => results)?;
            if results.len() != count {
                return Err(EndpointError::Refused(
                    "the far end answered for other operations; is it the same snapsync version?"
                        .into(),
                ));
            }
            Ok(results)
        }))
    }

    fn record_pending(
        &self,
        pending: &[crate::state::Pending],
        replace: bool,
    ) -> Result<(), EndpointError> {
        if pending.is_empty() && !replace {
            return Ok(());
        }
        // Not waited for: files and operations follow at once. The far end
        // changes nothing after failing to record (it refuses every change
        // that follows), and the next call reports why.
        self.conn.call_later(Body::RecordPending {
            pending: pending.to_vec(),
            replace,
        })
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
                "the far end answered for other files; is it the same snapsync version?".into(),
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

    fn finish(&self, rows: &[SnapshotUpdate], end: &RunEnd) -> Result<(), EndpointError> {
        let reply = self.conn.call(Body::Finish {
            rows: rows.to_vec(),
            end: end.clone(),
            last: self.one_run,
        })?;
        expect_reply!(reply, Body::Done => ())?;
        self.let_go.store(self.one_run, Ordering::SeqCst);
        Ok(())
    }
}

/// A pull asks for at most this many files in one `SendFiles`...
const PULL_CHUNK_FILES: usize = 1000;
/// ... and for about this much data (or one file): a share of
/// [`PULL_AHEAD_TIME`] at the rate the last chunks arrived, within these
/// bounds, and [`PULL_FIRST_CHUNK`] before any has. What is asked and not
/// yet arrived (a chunk, once asked, comes whole) is then about a second's
/// worth however fast the link, and so is what a stop waits for.
const PULL_CHUNK_MIN: u64 = 1 << 20;
const PULL_CHUNK_BYTES: u64 = 16 << 20;
const PULL_FIRST_CHUNK: u64 = 2 << 20;
const PULL_AHEAD_TIME: Duration = Duration::from_secs(1);
/// Chunks asked for at once: several round trips' worth of small files.
const PULL_AHEAD: usize = 4;
/// Chunks whose rates the next chunk's size follows (the best of them).
const PULL_RATES: usize = 4;

/// The data the next chunk asks for, at `rate` (bytes per second, as the
/// last chunks arrived; `None` before one has).
fn pull_chunk_bytes(rate: Option<f64>) -> u64 {
    match rate {
        None => PULL_FIRST_CHUNK,
        Some(rate) => ((rate * PULL_AHEAD_TIME.as_secs_f64() / PULL_AHEAD as f64) as u64)
            .clamp(PULL_CHUNK_MIN, PULL_CHUNK_BYTES),
    }
}

/// The next chunk of `jobs` from `start`: at most [`PULL_CHUNK_FILES`]
/// files and `bytes` of data, or one file.
fn pull_chunk(jobs: &[FileJob], start: usize, bytes: u64) -> &[FileJob] {
    let mut total = 0u64;
    let mut end = start;
    for job in jobs.iter().skip(start).take(PULL_CHUNK_FILES) {
        total = total.saturating_add(job.entry.size);
        if end > start && total > bytes {
            break;
        }
        end += 1;
    }
    &jobs[start..end]
}

/// How fast a pull's chunks arrive: each chunk's data over the time from
/// its asking, or the last chunk's arrival if later, to its own.
struct PullRate {
    last: Option<Instant>,
    rates: std::collections::VecDeque<f64>,
}

impl PullRate {
    fn arrived(&mut self, bytes: u64, asked: Instant) {
        let now = Instant::now();
        let since = self.last.map_or(asked, |last| last.max(asked));
        self.last = Some(now);
        let took = now.saturating_duration_since(since).as_secs_f64();
        if took > 0.0 {
            if self.rates.len() == PULL_RATES {
                self.rates.pop_front();
            }
            self.rates.push_back(bytes as f64 / took);
        }
    }

    fn rate(&self) -> Option<f64> {
        self.rates.iter().copied().reduce(f64::max)
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
    let refuse = |what: String| {
        Some(EndpointError::Refused(format!(
            "the far end {what}; is it the same snapsync version?"
        )))
    };
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
    let refuse = |what: String| {
        Some(EndpointError::Refused(format!(
            "the far end {what}; is it the same snapsync version?"
        )))
    };
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
        // Once the far end is gone, no file is read for it: the source
        // moves on at once, and `wait` reports the loss.
        if self.conn.ended.lock().unwrap().is_some() {
            return None;
        }
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

    fn jobs(sizes: &[u64]) -> Vec<FileJob> {
        sizes
            .iter()
            .enumerate()
            .map(|(id, &size)| {
                let mut entry = Entry::bare(
                    RelPath::new(format!("f{id}").as_bytes()).unwrap(),
                    crate::model::Kind::File,
                );
                entry.size = size;
                FileJob {
                    id: id as u64,
                    entry,
                    basis: None,
                }
            })
            .collect()
    }

    #[test]
    fn pulls_are_asked_in_chunks_bounded_by_count_and_bytes() {
        let lens = |jobs: &[FileJob], bytes: u64| -> Vec<usize> {
            let mut lens = Vec::new();
            let mut start = 0;
            while start < jobs.len() {
                let chunk = pull_chunk(jobs, start, bytes);
                start += chunk.len();
                lens.push(chunk.len());
            }
            lens
        };
        let big = PULL_CHUNK_BYTES;
        assert_eq!(lens(&jobs(&[1; 2500]), big), [1000, 1000, 500]);
        assert_eq!(lens(&jobs(&[big, big, 1, 1]), big), [1, 1, 2]);
        assert_eq!(lens(&jobs(&[big / 2, big / 2, big / 2]), big), [2, 1]);
        assert_eq!(lens(&jobs(&[10; 6]), 25), [2, 2, 2]);
        assert!(lens(&jobs(&[]), big).is_empty());
    }

    #[test]
    fn a_pulls_chunks_are_a_share_of_a_second_at_the_rate_they_arrive() {
        assert_eq!(pull_chunk_bytes(None), PULL_FIRST_CHUNK);
        // 25 MB/s (200 Mbit/s): four chunks ahead are a second's worth.
        assert_eq!(pull_chunk_bytes(Some(25e6)), 6_250_000);
        assert_eq!(pull_chunk_bytes(Some(1e3)), PULL_CHUNK_MIN);
        assert_eq!(pull_chunk_bytes(Some(1e10)), PULL_CHUNK_BYTES);
        // The best of the last few chunks' rates: a slow chunk does not
        // shrink the next, until the fast ones are forgotten.
        let long_ago = Instant::now() - Duration::from_secs(10);
        let mut rate = PullRate {
            last: Some(long_ago),
            rates: std::collections::VecDeque::from([4e6, 1e6, 1e6, 1e6]),
        };
        assert_eq!(rate.rate(), Some(4e6));
        rate.arrived(10, long_ago);
        assert_eq!(rate.rates.len(), PULL_RATES);
        assert!(rate.rates[3] <= 1.0, "{:?}", rate.rates);
        assert_eq!(rate.rate(), Some(1e6));
    }

    #[test]
    fn the_far_host_is_named_without_user_or_brackets() {
        assert_eq!(host_name("user@host.example"), "host.example");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
