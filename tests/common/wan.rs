//! The WAN test bed for integration tests: two network namespaces joined
//! through `examples/wan_router.rs` (delay, rate limit, drop-tail queue,
//! seeded random loss, optionally every UDP packet dropped), with a private
//! sshd in the far namespace.
//!
//! ```ignore
//! let Some(bed) = WanBed::start(WanSpec { loss: 0.01, ..WanSpec::default() }) else {
//!     return; // skipped, and said so on stderr
//! };
//! let out = bed.snapsync("push", &local, &remote, &["--json"]);
//! ```
//!
//! Needs root, `/dev/net/tun` and `ip` (iproute2); where any is missing,
//! [`WanBed::start`] prints `SKIPPED: <test>: <why>` and returns `None`.
//! The far address is reachable from the near namespace only: run anything
//! that talks to it through [`WanBed::near`], [`WanBed::in_near`] or
//! [`WanBed::rsh`] (which enters the near namespace itself), never from the
//! test process as it is (that would send it to the host's network).
//!
//! Dropping the bed stops the sshd and the router, which ends whatever still
//! runs in its namespaces and deletes them (with their tun devices). The
//! router also stops when the thread that started the bed ends, so a test
//! process that dies leaves nothing behind either.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::sshd::*;
use super::{bin, example, find_program, run_bounded};

/// The longest one snapsync run through the bed may take.
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// The router's exit code when this machine cannot host a bed.
const EXIT_UNSUPPORTED: i32 = 77;
/// The far sshd's port (the namespace is private, so always free).
pub const SSH_PORT: u16 = 22;

/// The link between the namespaces.
#[derive(Debug, Clone)]
pub struct WanSpec {
    /// Rate of each direction, Mbit/s (0 = unlimited).
    pub rate_mbit: f64,
    /// Round-trip time, ms (half each way).
    pub rtt_ms: f64,
    /// Random loss probability, both directions.
    pub loss: f64,
    /// Overrides `loss` from near to far.
    pub loss_to_far: Option<f64>,
    /// Overrides `loss` from far to near.
    pub loss_to_near: Option<f64>,
    /// Drop-tail queue in bytes; default 1.5 × the bandwidth-delay product.
    pub queue_bytes: Option<u64>,
    /// Drop every UDP packet (both ways); TCP passes.
    pub drop_udp: bool,
    /// Seed of the loss generators.
    pub seed: u64,
    /// TCP congestion control in both namespaces (default: the kernel's).
    pub tcp_congestion: Option<String>,
}

impl Default for WanSpec {
    fn default() -> Self {
        WanSpec {
            rate_mbit: 100.0,
            rtt_ms: 40.0,
            loss: 0.0,
            loss_to_far: None,
            loss_to_near: None,
            queue_bytes: None,
            drop_udp: false,
            seed: 1,
            tcp_congestion: None,
        }
    }
}

impl WanSpec {
    fn router_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--rate-mbit={}", self.rate_mbit),
            format!("--rtt-ms={}", self.rtt_ms),
            format!("--loss={}", self.loss),
            format!("--seed={}", self.seed),
        ];
        if let Some(p) = self.loss_to_far {
            args.push(format!("--loss-to-far={p}"));
        }
        if let Some(p) = self.loss_to_near {
            args.push(format!("--loss-to-near={p}"));
        }
        if let Some(bytes) = self.queue_bytes {
            args.push(format!("--queue-bytes={bytes}"));
        }
        if self.drop_udp {
            args.push("--drop-udp".into());
        }
        if let Some(cc) = &self.tcp_congestion {
            args.push(format!("--tcp-congestion={cc}"));
        }
        args
    }
}

/// A running test bed; torn down when dropped.
pub struct WanBed {
    dir: tempfile::TempDir,
    ip: PathBuf,
    router: Child,
    sshd: Option<Child>,
    near_ns: String,
    far_ns: String,
    near_tun: String,
    far_tun: String,
    near_ip: Ipv4Addr,
    far_ip: Ipv4Addr,
    queue_bytes: u64,
    user: String,
}

/// Why this machine cannot host a bed, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and tun devices need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if find_program("ip", &["/usr/sbin", "/sbin"]).is_none() {
        return Some("no `ip` command (install iproute2)".into());
    }
    None
}

/// Says on stderr, past the test harness's capture, that a test is skipped.
fn say_skipped(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a WAN test");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

impl WanBed {
    /// Brings a bed up, or says why it cannot and returns `None`.
    pub fn start(spec: WanSpec) -> Option<WanBed> {
        if let Some(why) = unsupported() {
            say_skipped(&format!("the WAN test bed cannot run here: {why}"));
            return None;
        }
        let sshd = require_ssh_programs();
        let ip = find_program("ip", &["/usr/sbin", "/sbin"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let router_log = dir.path().join("router.log");
        let mut router = Command::new(example("wan_router"))
            .args(spec.router_args())
            .arg("--stats")
            .arg(dir.path().join("stats.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&router_log).unwrap())
            .spawn()
            .expect("start wan_router");
        let ready = match read_ready(&mut router) {
            Some(ready) => ready,
            None => {
                let _ = router.kill();
                let status = router.wait().unwrap();
                let log = fs::read_to_string(&router_log).unwrap_or_default();
                if status.code() == Some(EXIT_UNSUPPORTED) {
                    say_skipped(&format!("the WAN test bed cannot run here: {}", log.trim()));
                    return None;
                }
                panic!("wan_router did not come up ({status}); its log:\n{log}");
            }
        };
        let field = |key: &str| {
            ready
                .get(key)
                .unwrap_or_else(|| panic!("wan_router's ready line lacks {key}: {ready:?}"))
                .clone()
        };
        let mut bed = WanBed {
            ip,
            router,
            sshd: None,
            near_ns: field("near_ns"),
            far_ns: field("far_ns"),
            near_tun: field("near_tun"),
            far_tun: field("far_tun"),
            near_ip: field("near_ip").parse().unwrap(),
            far_ip: field("far_ip").parse().unwrap(),
            queue_bytes: field("queue_bytes").parse().unwrap(),
            user: current_user(),
            dir,
        };
        bed.start_sshd(&sshd);
        Some(bed)
    }

    /// Starts the far namespace's sshd and waits until the near side reaches it.
    fn start_sshd(&mut self, sshd: &Path) {
        let dir = self.dir.path().to_path_buf();
        make_ssh_keys(&dir);
        let config = dir.join("sshd_config");
        let far_ip = self.far_ip.to_string();
        fs::write(&config, sshd_config(&dir, &far_ip, SSH_PORT)).unwrap();
        let log = dir.join("sshd.log");
        let child = self
            .far(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sshd in the far namespace");
        self.sshd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.far_addr(SSH_PORT);
        loop {
            if let Some(status) = self.sshd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the far sshd exited ({status}); its log:\n{}",
                    self.sshd_log()
                );
            }
            if sshd_listening(&log, &far_ip, SSH_PORT)
                && self
                    .in_near(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the far sshd is not reachable from the near namespace within 20 s; its log:\n{}",
                self.sshd_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn near_ip(&self) -> Ipv4Addr {
        self.near_ip
    }

    pub fn far_ip(&self) -> Ipv4Addr {
        self.far_ip
    }

    /// `far_ip:port`, to reach from the near namespace.
    pub fn far_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.far_ip, port))
    }

    pub fn near_ns(&self) -> &str {
        &self.near_ns
    }

    pub fn far_ns(&self) -> &str {
        &self.far_ns
    }

    /// The tun devices (near, far).
    pub fn tuns(&self) -> (&str, &str) {
        (&self.near_tun, &self.far_tun)
    }

    /// The drop-tail queue's size in bytes (each direction).
    pub fn queue_bytes(&self) -> u64 {
        self.queue_bytes
    }

    pub fn router_pid(&self) -> u32 {
        self.router.id()
    }

    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(Child::id)
    }

    /// `program` as a command run in the near namespace.
    pub fn near(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.in_namespace_command(&self.near_ns, program)
    }

    /// `program` as a command run in the far namespace.
    pub fn far(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.in_namespace_command(&self.far_ns, program)
    }

    fn in_namespace_command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Runs `f` on a thread in the near namespace: sockets it creates stay
    /// there, wherever they are used afterwards.
    pub fn in_near<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.near_ns, f)
    }

    /// Runs `f` on a thread in the far namespace.
    pub fn in_far<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.far_ns, f)
    }

    /// The `--rsh` command reaching the far sshd; it enters the near
    /// namespace itself, so it works from anywhere on this machine.
    pub fn rsh(&self) -> String {
        let mut words = vec![
            self.ip.to_str().unwrap().to_string(),
            "netns".into(),
            "exec".into(),
            self.near_ns.clone(),
        ];
        words.extend(ssh_words(SSH_PORT, &self.dir.path().join("client_key")));
        shell_words::join(words)
    }

    /// `user@far_ip`, the login the far sshd accepts.
    pub fn user_host(&self) -> String {
        format!("{}@{}", self.user, self.far_ip)
    }

    /// `user@far_ip:/abs/path`.
    pub fn remote(&self, path: &Path) -> String {
        assert!(path.is_absolute(), "remote roots are absolute here");
        format!("{}:{}", self.user_host(), path.display())
    }

    /// Runs `snapsync VERB --rsh ... EXTRA LOCAL user@far_ip:REMOTE` in the
    /// near namespace (the far end is this build's binary too), bounded in
    /// time; on failure prints the far sshd's log and the router's counters.
    pub fn snapsync(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Output {
        let cmd = super::sshd::sync_over_ssh(
            self.near(bin()),
            verb,
            &self.rsh(),
            extra,
            local,
            &self.remote(remote),
        );
        let out = run_bounded(cmd, RUN_LIMIT);
        if out.status.code() != Some(0) {
            eprintln!("far sshd log:\n{}", self.sshd_log());
            eprintln!("router counters: {}", self.stats());
        }
        out
    }

    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The router's counters now (see `examples/wan_router.rs`): `to_far`
    /// and `to_near`, each with `packets_in`, `packets_forwarded`,
    /// `dropped_loss`, `dropped_queue`, `dropped_udp`, `queue_peak_bytes`...
    pub fn stats(&self) -> serde_json::Value {
        let path = self.dir.path().join("stats.json");
        let read = || -> Option<serde_json::Value> {
            serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()
        };
        let seq = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v["seq"].as_u64());
        let before = seq(&read());
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.router.id() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = read();
            if seq(&now) > before || Instant::now() > deadline {
                return now.unwrap_or(serde_json::Value::Null);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WanBed {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        // The router ends what runs in its namespaces and deletes them.
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.router.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.router.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.router.kill();
        let _ = self.router.wait();
        for ns in [&self.near_ns, &self.far_ns] {
            let _ = Command::new(&self.ip).args(["netns", "del", ns]).status();
        }
    }
}

/// Reads the router's `ready k=v ...` line (None if it ends or takes over 30 s).
fn read_ready(router: &mut Child) -> Option<HashMap<String, String>> {
    let stdout = router.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).ok()?;
    let fields = line.trim().strip_prefix("ready ")?;
    Some(
        fields
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Runs `f` on a new thread that has entered network namespace `ns`.
fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open network namespace {ns}: {e}"));
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: setns on this thread only, to a namespace fd we hold.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                entered,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
