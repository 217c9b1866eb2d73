//! The WAN test bed's router: two network namespaces joined through this
//! process, which plays a long, narrow, lossy link between them. Test and
//! benchmark tooling only (`tests/common/wan.rs`, `bench/wan.sh`); it is not
//! part of the snapsync binary.
//!
//! ```text
//! wan_router [--rate-mbit 200] [--rtt-ms 100] [--queue-bytes N] [--loss P]
//!            [--loss-to-far P] [--loss-to-near P] [--seed S] [--drop-udp]
//!            [--stats FILE] [--tcp-congestion NAME]
//! ```
//!
//! Needs root, `/dev/net/tun` and `ip` (iproute2). It creates the namespaces
//! `ssnear-<pid>` and `ssfar-<pid>` (its own pid, so parallel beds never
//! collide), opens two tun devices (`ssn<pid>`, `ssf<pid>`), moves one into
//! each namespace and gives them the point-to-point addresses 10.201.0.1
//! (near) and 10.201.0.2 (far). Nothing else is routed in either namespace:
//! the bed's traffic only ever crosses this process, from one tun to the
//! other. When all is up it prints one line on stdout:
//!
//! ```text
//! ready near_ns=ssnear-PID far_ns=ssfar-PID near_ip=10.201.0.1 far_ip=10.201.0.2 near_tun=ssnPID far_tun=ssfPID queue_bytes=N tcp_cc=NAME
//! ```
//!
//! Each direction is one thread modelling a drop-tail FIFO in front of a
//! link of the given rate, followed by a delay line of half the round trip:
//! a packet read from one tun is dropped with the direction's loss
//! probability (a seeded generator, so runs repeat), then dropped if the
//! bytes still waiting to be serialized plus its own exceed the queue size,
//! else it leaves the queue when the link has serialized everything before
//! it and itself (length / rate), and is written to the other tun one-way
//! delay later. `--drop-udp` drops every UDP packet (tests of a fallback when
//! UDP does not get through). Only IPv4 is forwarded.
//!
//! Counters (packets and bytes in and forwarded, drops by random loss, by
//! queue overflow, of UDP and of other packets, the queue's peak, and the
//! drops of each tun's kernel queue when this process reads too slowly) are
//! written as JSON to `--stats` every second, at once on SIGUSR1 (`seq`
//! grows with every write), and on exit, and printed on stderr at exit.
//!
//! It stops on SIGTERM, SIGINT or SIGHUP, and when the process that started
//! it dies (PR_SET_PDEATHSIG): it then ends every process still running in
//! its namespaces, deletes them (which removes the tun devices) and exits.
//! Namespaces left behind by a router that was killed outright are deleted
//! by the next router that starts.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{exit, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

const NEAR_IP: &str = "10.201.0.1";
const FAR_IP: &str = "10.201.0.2";
const MTU: usize = 1500;
/// Namespace names start with these, followed by the owning router's pid.
const NEAR_PREFIX: &str = "ssnear-";
const FAR_PREFIX: &str = "ssfar-";
/// Exit code when this environment cannot host the bed (not permitted),
/// as opposed to a failure of the bed itself: callers skip, not fail.
const EXIT_UNSUPPORTED: i32 = 77;
/// How long a thread waits at most before looking at the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// The shortest sleep between two rounds of reading and delivering.
const QUANTUM: Duration = Duration::from_micros(200);
/// Bound on the packets held at once in one direction when the rate is
/// unlimited (then no queue size bounds them).
const MAX_IN_FLIGHT: usize = 200_000;

#[derive(Parser, Debug, Clone)]
#[command(about = "Emulated WAN link between two network namespaces (test bed)")]
struct Args {
    /// Link rate in Mbit/s, each direction; 0 = unlimited.
    #[arg(long, default_value_t = 200.0)]
    rate_mbit: f64,
    /// Round-trip time in ms; each direction delays by half.
    #[arg(long, default_value_t = 100.0)]
    rtt_ms: f64,
    /// Queue in front of the link, bytes (drop-tail); default 1.5 × the
    /// bandwidth-delay product.
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// Random loss probability (0..1) in both directions.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Loss probability from near to far (overrides --loss).
    #[arg(long)]
    loss_to_far: Option<f64>,
    /// Loss probability from far to near (overrides --loss).
    #[arg(long)]
    loss_to_near: Option<f64>,
    /// Seed of the loss generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Drop every UDP packet, both ways.
    #[arg(long)]
    drop_udp: bool,
    /// Where to write the counters (JSON), every second and on SIGUSR1.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// TCP congestion control of both namespaces (default: the kernel's
    /// default; a namespace may only choose from
    /// net.ipv4.tcp_allowed_congestion_control).
    #[arg(long)]
    tcp_congestion: Option<String>,
}

/// What one direction does to the packets it reads.
#[derive(Debug, Clone, Copy)]
struct LinkSpec {
    /// Bits per second; 0 = unlimited.
    rate_bps: u64,
    /// One-way delay.
    delay_ns: u64,
    /// Drop-tail limit of the bytes waiting to be serialized.
    queue_bytes: u64,
    loss: f64,
    drop_udp: bool,
}

/// The rate limit and queue of one direction as a function of time: a FIFO
/// drained at `rate_bps`, described by the instant its last byte will have
/// left (`busy_until`), so no packet needs to be touched until it is due.
struct Link {
    spec: LinkSpec,
    busy_until: u64,
}

/// Why a packet was not forwarded.
#[derive(Debug, PartialEq, Eq)]
enum Drop {
    Loss,
    Queue,
    Udp,
    Other,
}

impl Link {
    fn new(spec: LinkSpec) -> Link {
        Link {
            spec,
            busy_until: 0,
        }
    }

    /// Bytes still waiting to be serialized at `now` (ns).
    fn backlog(&self, now: u64) -> u64 {
        if self.spec.rate_bps == 0 || self.busy_until <= now {
            return 0;
        }
        ((self.busy_until - now) as u128 * self.spec.rate_bps as u128 / 8_000_000_000) as u64
    }

    /// Admits a packet of `len` bytes arriving at `now` (ns): the instant it
    /// is to be delivered, or `None` when the queue has no room for it.
    fn admit(&mut self, now: u64, len: usize) -> Option<u64> {
        if self.spec.rate_bps == 0 {
            return Some(now + self.spec.delay_ns);
        }
        if self.backlog(now) + len as u64 > self.spec.queue_bytes {
            return None;
        }
        let serialize = (len as u128 * 8_000_000_000 / self.spec.rate_bps as u128) as u64;
        self.busy_until = self.busy_until.max(now) + serialize;
        Some(self.busy_until + self.spec.delay_ns)
    }
}

/// What a packet is, as far as forwarding goes: IPv4, UDP or not.
fn classify(packet: &[u8]) -> Result<(), Drop> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Err(Drop::Other);
    }
    Ok(())
}

fn is_udp(packet: &[u8]) -> bool {
    packet[9] == libc::IPPROTO_UDP as u8
}

/// Counters of one direction, shared with the stats writer.
#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_forwarded: AtomicU64,
    bytes_forwarded: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    bytes_dropped_queue: AtomicU64,
    dropped_udp: AtomicU64,
    dropped_other: AtomicU64,
    write_errors: AtomicU64,
    queue_peak_bytes: AtomicU64,
    /// Drops of the reading tun's own kernel queue (this process too slow).
    tun_tx_dropped: AtomicU64,
}

impl Counters {
    fn count_drop(&self, why: &Drop, len: usize) {
        let counter = match why {
            Drop::Loss => &self.dropped_loss,
            Drop::Queue => {
                self.bytes_dropped_queue.fetch_add(len as u64, Relaxed);
                &self.dropped_queue
            }
            Drop::Udp => &self.dropped_udp,
            Drop::Other => &self.dropped_other,
        };
        counter.fetch_add(1, Relaxed);
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "packets_in": self.packets_in.load(Relaxed),
            "bytes_in": self.bytes_in.load(Relaxed),
            "packets_forwarded": self.packets_forwarded.load(Relaxed),
            "bytes_forwarded": self.bytes_forwarded.load(Relaxed),
            "dropped_loss": self.dropped_loss.load(Relaxed),
            "dropped_queue": self.dropped_queue.load(Relaxed),
            "bytes_dropped_queue": self.bytes_dropped_queue.load(Relaxed),
            "dropped_udp": self.dropped_udp.load(Relaxed),
            "dropped_other": self.dropped_other.load(Relaxed),
            "write_errors": self.write_errors.load(Relaxed),
            "queue_peak_bytes": self.queue_peak_bytes.load(Relaxed),
            "tun_tx_dropped": self.tun_tx_dropped.load(Relaxed),
        })
    }
}

/// Nanoseconds since the router started (monotonic).
fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Moves packets from `input` to `output` through one direction's link until
/// `stop` is set.
fn forward(
    input: RawFd,
    output: RawFd,
    spec: LinkSpec,
    seed: u64,
    counters: &Counters,
    stop: &AtomicBool,
    epoch: Instant,
) {
    let mut link = Link::new(spec);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut line: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut scratch = vec![0u8; 65536];
    while !stop.load(Relaxed) {
        deliver_due(&mut line, &mut spare, output, counters, now_ns(epoch));
        // Read what is there (a bounded batch, so deliveries stay timely).
        let mut read = 0;
        while read < 256 {
            // SAFETY: reads at most scratch.len() bytes into scratch.
            let n = unsafe { libc::read(input, scratch.as_mut_ptr().cast(), scratch.len()) };
            if n <= 0 {
                break;
            }
            read += 1;
            let packet = &scratch[..n as usize];
            counters.packets_in.fetch_add(1, Relaxed);
            counters.bytes_in.fetch_add(packet.len() as u64, Relaxed);
            let now = now_ns(epoch);
            let verdict = classify(packet).and_then(|()| {
                if spec.drop_udp && is_udp(packet) {
                    Err(Drop::Udp)
                } else if spec.loss > 0.0 && rng.gen::<f64>() < spec.loss {
                    Err(Drop::Loss)
                } else if spec.rate_bps == 0 && line.len() >= MAX_IN_FLIGHT {
                    Err(Drop::Queue)
                } else {
                    link.admit(now, packet.len()).ok_or(Drop::Queue)
                }
            });
            match verdict {
                Ok(due) => {
                    counters
                        .queue_peak_bytes
                        .fetch_max(link.backlog(now), Relaxed);
                    let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(MTU));
                    buf.clear();
                    buf.extend_from_slice(packet);
                    line.push_back((due, buf));
                }
                Err(why) => counters.count_drop(&why, packet.len()),
            }
        }
        // While packets flow, sleep a quantum between rounds so that one
        // wake-up reads and delivers a batch: a wake-up per packet costs
        // most of a core at 200 Mbit/s. When quiet, block until a packet
        // arrives or the next one is due.
        let now = now_ns(epoch);
        let next_due = line.front().map(|(due, _)| due.saturating_sub(now));
        if read > 0 || next_due.is_some_and(|wait| wait < QUANTUM.as_nanos() as u64) {
            thread::sleep(QUANTUM);
        } else {
            let wait = next_due.map_or(TICK, Duration::from_nanos).min(TICK);
            wait_readable(input, wait);
        }
    }
}

/// Writes to `output` every packet of the delay line due by `now`.
fn deliver_due(
    line: &mut VecDeque<(u64, Vec<u8>)>,
    spare: &mut Vec<Vec<u8>>,
    output: RawFd,
    counters: &Counters,
    now: u64,
) {
    while line.front().is_some_and(|(due, _)| *due <= now) {
        let (_, packet) = line.pop_front().unwrap();
        // SAFETY: writes packet.len() bytes from a live buffer.
        let n = unsafe { libc::write(output, packet.as_ptr().cast(), packet.len()) };
        if n == packet.len() as isize {
            counters.packets_forwarded.fetch_add(1, Relaxed);
            counters
                .bytes_forwarded
                .fetch_add(packet.len() as u64, Relaxed);
        } else {
            counters.write_errors.fetch_add(1, Relaxed);
        }
        spare.push(packet);
    }
}

/// Waits up to `timeout` for `fd` to be readable.
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Opens a tun device named `name` (IFF_TUN | IFF_NO_PI, non-blocking) in
/// this process's namespace.
fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Runs `ip ARGS`, failing with its message.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn not_permitted(message: &str) -> bool {
    message.contains("Operation not permitted") || message.contains("Permission denied")
}

/// The pids of the processes in namespace `ns`.
fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Ends every process in namespace `ns` (SIGTERM, then SIGKILL after a
/// second) and deletes it, which destroys the devices in it.
fn remove_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut signal = libc::SIGTERM;
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            signal = libc::SIGKILL;
        }
        for pid in pids {
            // SAFETY: plain kill(2) of a process in our own namespace.
            unsafe { libc::kill(pid, signal) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Deletes the namespaces of routers that are no longer running.
fn sweep_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NEAR_PREFIX)
            .or_else(|| name.strip_prefix(FAR_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "wan_router" {
            eprintln!("wan_router: removing stale namespace {name}");
            remove_namespace(&name);
        }
    }
}

/// The two namespaces and tun devices; removed when dropped.
struct Bed {
    near_ns: String,
    far_ns: String,
    near_tun: String,
    far_tun: String,
    near_fd: Option<OwnedFd>,
    far_fd: Option<OwnedFd>,
    created: Vec<String>,
}

impl Bed {
    fn setup() -> Result<Bed, String> {
        let pid = std::process::id();
        let mut bed = Bed {
            near_ns: format!("{NEAR_PREFIX}{pid}"),
            far_ns: format!("{FAR_PREFIX}{pid}"),
            near_tun: format!("ssn{pid}"),
            far_tun: format!("ssf{pid}"),
            near_fd: None,
            far_fd: None,
            created: Vec::new(),
        };
        for ns in [bed.near_ns.clone(), bed.far_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            bed.created.push(ns);
        }
        bed.near_fd =
            Some(open_tun(&bed.near_tun).map_err(|e| format!("open tun {}: {e}", bed.near_tun))?);
        bed.far_fd =
            Some(open_tun(&bed.far_tun).map_err(|e| format!("open tun {}: {e}", bed.far_tun))?);
        for (ns, tun, local, peer) in [
            (&bed.near_ns, &bed.near_tun, NEAR_IP, FAR_IP),
            (&bed.far_ns, &bed.far_tun, FAR_IP, NEAR_IP),
        ] {
            // The fd stays attached to the device when it changes namespace.
            ip(&["link", "set", tun, "netns", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", local, "peer", peer, "dev", tun])?;
            ip(&["-n", ns, "link", "set", tun, "mtu", &MTU.to_string()])?;
            ip(&["-n", ns, "link", "set", tun, "txqueuelen", "1000", "up"])?;
        }
        Ok(bed)
    }
}

impl std::ops::Drop for Bed {
    fn drop(&mut self) {
        for ns in &self.created {
            remove_namespace(ns);
        }
        self.near_fd = None;
        self.far_fd = None;
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns`.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, String> {
    let file = fs::File::open(format!("/run/netns/{ns}"))
        .map_err(|e| format!("open namespace {ns}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        // SAFETY: setns on this thread only, to a namespace fd we opened.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = tx.send(if entered == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        });
        drop(file);
        if entered == 0 {
            Some(f())
        } else {
            None
        }
    });
    rx.recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("setns {ns}: {e}"))?;
    Ok(thread::spawn(move || handle.join().unwrap().unwrap()))
}

/// Sets (when `value` is given) and reads a /proc/sys/net setting of
/// namespace `ns` (`key` relative to /proc/sys/net).
fn net_sysctl(ns: &str, key: &str, value: Option<&str>) -> Result<String, String> {
    let path = format!("/proc/sys/net/{key}");
    let value = value.map(str::to_owned);
    in_namespace(ns, move || -> Result<String, String> {
        if let Some(value) = &value {
            fs::write(&path, value).map_err(|e| format!("set {path} to {value}: {e}"))?;
        }
        fs::read_to_string(&path)
            .map(|v| v.trim().to_string())
            .map_err(|e| format!("read {path}: {e}"))
    })?
    .join()
    .map_err(|_| "sysctl thread panicked".to_string())?
}

/// Reads the kernel's transmit drops of tun `dev` in namespace `ns` into
/// `counter` every second until `stop`: the tun's queue overflows when this
/// process reads too slowly, a loss the bed must not hide.
fn watch_tun_drops(ns: &str, dev: String, counter: Arc<Counters>, stop: Arc<AtomicBool>) {
    let watch = move || {
        while !stop.load(Relaxed) {
            // /proc/thread-self/net is this thread's namespace.
            if let Some(dropped) = fs::read_to_string("/proc/thread-self/net/dev")
                .ok()
                .and_then(|text| tx_dropped(&text, &dev))
            {
                counter.tun_tx_dropped.store(dropped, Relaxed);
            }
            thread::sleep(Duration::from_secs(1));
        }
    };
    if let Err(e) = in_namespace(ns, watch) {
        eprintln!("wan_router: cannot watch the drops of the tun in {ns}: {e}");
    }
}

/// The transmit drop count of `dev` in a /proc/net/dev listing.
fn tx_dropped(text: &str, dev: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{dev}:")))?;
    let fields: Vec<&str> = line.split(':').nth(1)?.split_whitespace().collect();
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop
    fields.get(11)?.parse().ok()
}

struct Router {
    config: serde_json::Value,
    ready: String,
    to_far: Arc<Counters>,
    to_near: Arc<Counters>,
    started: Instant,
    seq: u64,
}

impl Router {
    fn stats(&mut self) -> serde_json::Value {
        self.seq += 1;
        json!({
            "seq": self.seq,
            "elapsed_s": self.started.elapsed().as_secs_f64(),
            "bed": self.ready,
            "config": self.config,
            "to_far": self.to_far.to_json(),
            "to_near": self.to_near.to_json(),
        })
    }

    fn write_stats(&mut self, path: &Path) {
        let text = format!("{}\n", self.stats());
        let tmp = path.with_extension("tmp");
        if fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, path))
            .is_err()
        {
            eprintln!("wan_router: cannot write {}", path.display());
        }
    }
}

fn main() {
    let args = Args::parse();
    let loss_to_far = args.loss_to_far.unwrap_or(args.loss);
    let loss_to_near = args.loss_to_near.unwrap_or(args.loss);
    for (name, p) in [("loss-to-far", loss_to_far), ("loss-to-near", loss_to_near)] {
        if !(0.0..=1.0).contains(&p) {
            eprintln!("wan_router: --{name} must be a probability between 0 and 1");
            exit(2);
        }
    }
    if args.rate_mbit < 0.0 || args.rtt_ms < 0.0 {
        eprintln!("wan_router: --rate-mbit and --rtt-ms may not be negative");
        exit(2);
    }
    let rate_bps = (args.rate_mbit * 1e6) as u64;
    let bdp = (args.rate_mbit * 1e6 / 8.0 * args.rtt_ms / 1e3) as u64;
    let queue_bytes = args
        .queue_bytes
        .unwrap_or((bdp * 3 / 2).max(2 * MTU as u64));
    let spec = |loss| LinkSpec {
        rate_bps,
        delay_ns: (args.rtt_ms * 1e6 / 2.0) as u64,
        queue_bytes,
        loss,
        drop_udp: args.drop_udp,
    };

    // End with the process that started us, however it ends.
    // SAFETY: prctl with plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR1,
    ])
    .expect("install signal handlers");
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        exit(0); // the parent died before PR_SET_PDEATHSIG took effect
    }

    sweep_stale_namespaces();
    let bed = match Bed::setup() {
        Ok(bed) => bed,
        Err(message) => {
            eprintln!("wan_router: cannot set up the test bed: {message}");
            exit(if not_permitted(&message) {
                EXIT_UNSUPPORTED
            } else {
                1
            });
        }
    };
    let mut tcp_cc = String::new();
    for ns in [bed.near_ns.clone(), bed.far_ns.clone()] {
        match net_sysctl(
            &ns,
            "ipv4/tcp_congestion_control",
            args.tcp_congestion.as_deref(),
        ) {
            Ok(cc) => tcp_cc = cc,
            Err(message) => {
                eprintln!("wan_router: {message}");
                drop(bed);
                exit(1);
            }
        }
    }

    let to_far = Arc::new(Counters::default());
    let to_near = Arc::new(Counters::default());
    let epoch = Instant::now();
    let near_fd = bed.near_fd.as_ref().unwrap().as_raw_fd();
    let far_fd = bed.far_fd.as_ref().unwrap().as_raw_fd();
    let mut workers = Vec::new();
    for (input, output, loss, counters, seed) in [
        (near_fd, far_fd, loss_to_far, to_far.clone(), args.seed),
        (
            far_fd,
            near_fd,
            loss_to_near,
            to_near.clone(),
            args.seed ^ 0x5EED_F00D,
        ),
    ] {
        let stop = stop.clone();
        let spec = spec(loss);
        workers.push(thread::spawn(move || {
            forward(input, output, spec, seed, &counters, &stop, epoch)
        }));
    }
    watch_tun_drops(
        &bed.near_ns,
        bed.near_tun.clone(),
        to_far.clone(),
        stop.clone(),
    );
    watch_tun_drops(
        &bed.far_ns,
        bed.far_tun.clone(),
        to_near.clone(),
        stop.clone(),
    );

    let ready = format!(
        "near_ns={} far_ns={} near_ip={NEAR_IP} far_ip={FAR_IP} near_tun={} far_tun={} queue_bytes={queue_bytes} tcp_cc={tcp_cc}",
        bed.near_ns, bed.far_ns, bed.near_tun, bed.far_tun
    );
    let mut router = Router {
        config: json!({
            "rate_mbit": args.rate_mbit,
            "rtt_ms": args.rtt_ms,
            "one_way_delay_ms": args.rtt_ms / 2.0,
            "queue_bytes": queue_bytes,
            "bdp_bytes": bdp,
            "loss_to_far": loss_to_far,
            "loss_to_near": loss_to_near,
            "seed": args.seed,
            "drop_udp": args.drop_udp,
            "mtu": MTU,
            "tcp_congestion_control": tcp_cc,
        }),
        ready: ready.clone(),
        to_far,
        to_near,
        started: epoch,
        seq: 0,
    };
    if let Some(path) = &args.stats {
        router.write_stats(path);
    }
    println!("ready {ready}");
    let _ = io::stdout().flush();

    let mut last_write = Instant::now();
    'run: loop {
        thread::sleep(Duration::from_millis(20));
        let mut write_now = last_write.elapsed() >= Duration::from_secs(1);
        for signal in signals.pending() {
            if signal == libc::SIGUSR1 {
                write_now = true;
            } else {
                break 'run;
            }
        }
        if write_now {
            if let Some(path) = &args.stats {
                router.write_stats(path);
            }
            last_write = Instant::now();
        }
    }

    stop.store(true, Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    drop(bed);
    let stats = router.stats();
    if let Some(path) = &args.stats {
        router.write_stats(path);
    }
    eprintln!("wan_router: {stats}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rate_mbit: u64, queue_bytes: u64) -> Link {
        Link::new(LinkSpec {
            rate_bps: rate_mbit * 1_000_000,
            delay_ns: 50_000_000,
            queue_bytes,
            loss: 0.0,
            drop_udp: false,
        })
    }

    #[test]
    fn packets_leave_at_the_link_rate_after_the_delay() {
        let mut l = link(200, 1_000_000);
        // 1500 bytes at 200 Mbit/s take 60 µs on the wire.
        assert_eq!(l.admit(0, 1500), Some(60_000 + 50_000_000));
        assert_eq!(l.admit(0, 1500), Some(120_000 + 50_000_000));
        // An idle link starts afresh.
        assert_eq!(l.admit(10_000_000, 1500), Some(10_060_000 + 50_000_000));
    }

    #[test]
    fn a_full_queue_drops_the_tail_and_drains_at_the_rate() {
        let mut l = link(200, 3000);
        assert!(l.admit(0, 1500).is_some());
        assert!(l.admit(0, 1500).is_some());
        assert_eq!(l.backlog(0), 3000);
        assert_eq!(l.admit(0, 1500), None);
        // After one packet's serialization time there is room for one more.
        assert_eq!(l.backlog(60_000), 1500);
        assert!(l.admit(60_000, 1500).is_some());
        assert_eq!(l.admit(60_000, 1), None);
    }

    #[test]
    fn an_unlimited_link_only_delays() {
        let mut l = link(0, 0);
        assert_eq!(l.admit(7, 65_000), Some(50_000_007));
        assert_eq!(l.backlog(7), 0);
    }

    #[test]
    fn only_ipv4_is_forwarded_and_udp_is_recognised() {
        let mut udp = [0u8; 28];
        udp[0] = 0x45;
        udp[9] = 17;
        assert_eq!(classify(&udp), Ok(()));
        assert!(is_udp(&udp));
        let mut tcp = udp;
        tcp[9] = 6;
        assert!(!is_udp(&tcp));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        assert_eq!(classify(&v6), Err(Drop::Other));
        assert_eq!(classify(&[0x45; 10]), Err(Drop::Other));
    }

    #[test]
    fn tun_drops_are_read_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\nssn42:  100 2 0 0 0 0 0 0 3000 20 0 7 0 0 0 0\n";
        assert_eq!(tx_dropped(text, "ssn42"), Some(7));
        assert_eq!(tx_dropped(text, "ssn4"), None);
    }
}
