//! The QUIC data channel (`--transport`, `--udp-port`; DESIGN.md, "Data
//! channel"), through the real binary and a local `--rsh` shim (drops the
//! host, runs the rest here) with `localhost` or `127.0.0.1` as the far host:
//! push, pull and bidi arrive complete over `quic` and over `ssh`; `auto`
//! stays on ssh on a short link and takes QUIC on a long one; a client
//! with the wrong token or certificate is refused while the session goes
//! on; when UDP does not get through, `auto` falls back to ssh with one
//! warning and `quic` fails (exit 1); `--udp-port` is honoured; `-C`
//! syncs over the channel.
//!
//! Two shims make real conditions without a test bed:
//! - a long link: a relay between the shim and the far end that holds each
//!   chunk of the ssh stream for 10 ms each way (`python3`), so `auto`
//!   measures a round trip above its 5 ms threshold;
//! - UDP that does not get through: the far end runs in a network namespace
//!   of its own (`unshare -n`, root only), so the UDP port it announces
//!   exists only there and the near end's packets to it are lost, while the
//!   ssh stream (a pipe) still works. Where namespaces cannot be made, those
//!   tests say so on stderr and pass.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use snapsync::changes::DiffOptions;
use snapsync::data_channel::{self, DataChannelError, FINGERPRINT_LEN, TOKEN_LEN};
use snapsync::endpoint::Role;
use snapsync::model::Preserve;
use snapsync::protocol::{read_message, write_message, Body, Envelope};

/// Holds each chunk of a stream for DELAY seconds before passing it on,
/// both ways, between its stdio and the command it runs.
const RELAY: &str = r#"
import os, subprocess, sys, threading, time
delay = float(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def pump(src, dst, close):
    try:
        while True:
            data = os.read(src, 1 << 20)
            if not data:
                break
            time.sleep(delay)
            while data:
                data = data[os.write(dst, data):]
    except OSError:
        pass
    close()
down = threading.Thread(target=pump, args=(0, child.stdin.fileno(), child.stdin.close))
down.daemon = True
down.start()
pump(child.stdout.fileno(), 1, lambda: None)
sys.exit(child.wait())
"#;

/// The far end, reached through a shim; `host` is what the near end
/// resolves for the data channel.
struct Far {
    tmp: tempfile::TempDir,
    shim: PathBuf,
    host: &'static str,
}

impl Far {
    /// Drops the host and runs the rest here.
    fn new(host: &'static str) -> Far {
        Far::with_shim(host, "exec \"$@\"")
    }

    /// Each way, the ssh stream is held 10 ms.
    fn long_link(host: &'static str) -> Far {
        Far::with_delay(host, 0.01)
    }

    /// Each way, the ssh stream is held `seconds`.
    fn with_delay(host: &'static str, seconds: f64) -> Far {
        Far::with_shim(
            host,
            &format!("exec python3 \"$(dirname \"$0\")/relay.py\" {seconds} \"$@\""),
        )
    }

    /// The far end has a network of its own: its UDP port is unreachable.
    fn udp_dropped(long: bool) -> Option<Far> {
        if !namespaces_work() {
            eprintln!(
                "SKIPPED: cannot make a network namespace here (unshare -n needs root); the UDP-dropped test needs one"
            );
            return None;
        }
        let run = if long {
            "exec unshare -n python3 \"$(dirname \"$0\")/relay.py\" 0.01 \"$@\""
        } else {
            "exec unshare -n \"$@\""
        };
        Some(Far::with_shim("localhost", run))
    }

    fn with_shim(host: &'static str, run: &str) -> Far {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("relay.py"), RELAY).unwrap();
        let shim = tmp.path().join("rsh.sh");
        fs::write(
            &shim,
            format!(
                "#!/bin/sh\n# Drops the host; runs the rest here.\nshift\necho $$ > \"$(dirname \"$0\")/far.pid\"\n{run}\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        Far { tmp, shim, host }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn command(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg(verb)
            .arg("--rsh")
            .arg(&self.shim)
            .arg("--remote-command")
            .arg(bin())
            .args(extra)
            .arg(local)
            .arg(format!("{}:{}", self.host, remote.display()));
        cmd
    }

    fn run(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Output {
        self.command(verb, local, remote, extra)
            .output()
            .expect("run snapsync")
    }

    /// A run that must succeed: its summary.
    #[track_caller]
    fn json(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.run(verb, local, remote, &args);
        assert_code(&out, 0);
        summary(&out)
    }
}

fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn warnings(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.contains("warning"))
        .map(str::to_string)
        .collect()
}

/// Push, pull back, then bidi with changes on both sides: each arrives
/// complete (content, modes, mtimes, links) and says what carried it.
fn round_trip_over(far: &Far, transport: &str) {
    let (src, remote, back) = (far.path("src"), far.path("remote"), far.path("back"));
    generate_tree(&src, 11, 300, 0, 40_000);
    write(&src, "big/one.bin", &vec![7u8; 3 << 20]);
    link(&src, "big/link", "one.bin");
    chmod(&src, "d1/s1", 0o750);
    let options = ["--transport", transport];

    let pushed = far.json("push", &src, &remote, &options);
    assert_eq!(pushed["transport"], transport, "{pushed}");
    assert!(pushed["created"].as_u64().unwrap() > 300, "{pushed}");
    assert_same_tree(&src, &remote);

    let pulled = far.json("pull", &back, &remote, &options);
    assert_eq!(pulled["transport"], transport, "{pulled}");
    assert_same_tree(&remote, &back);

    // Both ways, on a pair of its own: each side's tree goes to the
    // other, then an edit on each side and a delete.
    let (near, far_root) = (far.path("near"), far.path("far"));
    generate_tree(&near, 12, 100, 0, 30_000);
    write(&far_root, "there/first.bin", &vec![9u8; 1 << 20]);
    let both = far.json("bidi", &near, &far_root, &options);
    assert_eq!(both["transport"], transport, "{both}");
    assert_same_tree(&near, &far_root);
    write(&near, "d2/s2/new-here.txt", b"from the near side");
    write(&far_root, "d3/s3/new-there.txt", b"from the far side");
    fs::remove_file(near.join("there/first.bin")).unwrap();
    let both = far.json("bidi", &near, &far_root, &options);
    assert_eq!(both["conflicts"], 0);
    assert_same_tree(&near, &far_root);
    assert_eq!(read(&far_root, "d2/s2/new-here.txt"), b"from the near side");
    assert_eq!(read(&near, "d3/s3/new-there.txt"), b"from the far side");
    assert!(!far_root.join("there/first.bin").exists());
}

#[test]
fn push_pull_and_bidi_arrive_complete_over_quic() {
    let far = Far::new("localhost");
    round_trip_over(&far, "quic");
}

#[test]
fn push_pull_and_bidi_arrive_complete_over_ssh() {
    let far = Far::new("localhost");
    round_trip_over(&far, "ssh");
}

#[test]
fn quic_reaches_a_far_host_named_by_address() {
    let far = Far::new("127.0.0.1");
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 3, 50, 100, 5_000);
    let s = far.json("push", &src, &remote, &["--transport", "quic"]);
    assert_eq!(s["transport"], "quic");
    assert_same_tree(&src, &remote);
}

#[test]
fn auto_stays_on_ssh_over_a_short_link_without_a_word() {
    let far = Far::new("localhost");
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 4, 20, 10, 1_000);
    let out = far.run("push", &src, &remote, &["--json"]);
    assert_code(&out, 0);
    assert_eq!(summary(&out)["transport"], "ssh");
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    assert_same_tree(&src, &remote);
}

#[test]
fn auto_takes_quic_over_a_long_link() {
    let far = Far::long_link("localhost");
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 5, 200, 10, 20_000);
    let out = far.run("push", &src, &remote, &["--json"]);
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(s["transport"], "quic", "{s}");
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    assert_same_tree(&src, &remote);
    let back = far.path("back");
    assert_eq!(far.json("pull", &back, &remote, &[])["transport"], "quic");
    assert_same_tree(&remote, &back);
}

/// Many small files cost a few round trips in all, not one each: over a
/// link with a 50 ms round trip, 2,500 files would take two minutes one
/// round trip apiece. The protocol is the same on the data channel.
#[test]
fn small_files_do_not_wait_a_round_trip_each() {
    let far = Far::with_delay("localhost", 0.025);
    let (src, remote, back) = (far.path("src"), far.path("remote"), far.path("back"));
    generate_tree(&src, 13, 2_500, 100, 2_000);
    for (verb, local) in [("push", &src), ("pull", &back)] {
        let started = Instant::now();
        let s = far.json(verb, local, &remote, &["--transport", "ssh"]);
        let took = started.elapsed();
        assert!(s["created"].as_u64().unwrap() >= 2_500, "{s}");
        assert!(took < Duration::from_secs(15), "{verb} took {took:?}");
    }
    assert_same_tree(&src, &back);
}

#[test]
fn udp_port_range_is_honoured() {
    let far = Far::new("localhost");
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 6, 30, 10, 3_000);
    let s = far.json(
        "push",
        &src,
        &remote,
        &["--transport", "quic", "--udp-port", "40000-40010"],
    );
    assert_eq!(s["transport"], "quic");
    let port = s["udp_port"].as_u64().unwrap();
    assert!((40000..=40010).contains(&port), "port {port}");
    assert_same_tree(&src, &remote);
}

#[test]
fn quic_fails_with_exit_1_when_udp_does_not_get_through() {
    let Some(far) = Far::udp_dropped(false) else {
        return;
    };
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 7, 10, 10, 1_000);
    let started = Instant::now();
    let out = far.run("push", &src, &remote, &["--transport", "quic"]);
    let took = started.elapsed();
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("no QUIC data channel to localhost") && err.contains("--transport ssh"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // Nothing was sent.
    assert!(!remote.join("d0").exists());
}

#[test]
fn auto_falls_back_to_ssh_with_one_warning_when_udp_does_not_get_through() {
    let Some(far) = Far::udp_dropped(true) else {
        return;
    };
    let (src, remote) = (far.path("src"), far.path("remote"));
    generate_tree(&src, 8, 40, 10, 5_000);
    let started = Instant::now();
    let out = far.run("push", &src, &remote, &["--json"]);
    let took = started.elapsed();
    assert_code(&out, 0);
    assert_eq!(summary(&out)["transport"], "ssh");
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{}", stderr(&out));
    assert!(warned[0].contains("no QUIC data channel"), "{}", warned[0]);
    assert_same_tree(&src, &remote);
    // The fallback costs about the 2 s wait, not the far end's 30 s.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// A `snapsync serve` spoken to directly: the test is the near end, and
/// an attacker beside it.
struct Serve {
    child: std::process::Child,
    to: BufWriter<std::process::ChildStdin>,
    from: BufReader<std::process::ChildStdout>,
}

impl Serve {
    fn start() -> Serve {
        let mut child = spawn_serve();
        let to = BufWriter::new(child.stdin.take().unwrap());
        let from = BufReader::new(child.stdout.take().unwrap());
        Serve { child, to, from }
    }
}

fn send(out: &mut dyn Write, call: u64, body: Body) {
    write_message(out, &Envelope { call, body }).unwrap();
    out.flush().unwrap();
}

fn receive(input: &mut dyn std::io::Read) -> Body {
    read_message(input).unwrap().0.body
}

#[test]
fn clients_with_a_wrong_token_or_certificate_are_refused_and_the_session_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write(&root, "kept.txt", b"still served");
    let mut far = Serve::start();
    send(
        &mut far.to,
        0,
        Body::Hello {
            protocol: snapsync::PROTOCOL_VERSION,
            version: "test".into(),
            capabilities: Vec::new(),
        },
    );
    assert!(matches!(receive(&mut far.from), Body::Hello { .. }));
    send(&mut far.to, 1, Body::OpenDataChannel(None));
    let offer = match receive(&mut far.from) {
        Body::DataChannelOffer(offer) => offer,
        other => panic!("no offer: {other:?}"),
    };
    assert_eq!(offer.fingerprint.len(), FINGERPRINT_LEN);
    assert_eq!(offer.token.len(), TOKEN_LEN);
    let at = [std::net::SocketAddr::from(([127, 0, 0, 1], offer.port))];
    let limit = Duration::from_secs(5);

    // Someone who saw the port but not the token: the far end closes the
    // connection with its refusal code, which the client reads first (it
    // does not wait for the far end's word before it writes).
    let mut guessed = offer.clone();
    guessed.token[0] ^= 1;
    let intruder =
        data_channel::connect(&at, &guessed, limit, None).expect("the handshake succeeds");
    let (mut intruder_reader, _intruder_writer, _intruder_guard) = intruder.split();
    let refused = std::io::Read::read(&mut intruder_reader, &mut [0u8; 8])
        .expect_err("a wrong token was let in");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::PermissionDenied,
        "{refused}"
    );
    assert!(refused.to_string().contains("token"), "{refused}");
    // A client pinning another certificate (as if another process
    // answered at that port) gets no channel either.
    let mut other_cert = offer.clone();
    other_cert.fingerprint = vec![0xee; FINGERPRINT_LEN];
    match data_channel::connect(&at, &other_cert, limit, None) {
        Err(DataChannelError::Refused(why)) => assert!(why.contains("certificate"), "{why}"),
        Err(other) => panic!("not refused: {other}"),
        Ok(_) => panic!("the wrong certificate was accepted"),
    }

    // The session's own client still gets in, and the session goes on
    // over the channel.
    let channel =
        data_channel::connect(&at, &offer, limit, None).expect("the right client gets in");
    send(&mut far.to, 1, Body::UseDataChannel(true));
    let (mut reader, writer, _guard) = channel.split();
    let mut writer = BufWriter::new(writer);
    let request = session_request("quic-test", "pull", Role::Source);
    send(
        &mut writer,
        2,
        Body::Open {
            root: root.to_str().unwrap().as_bytes().to_vec(),
            request,
            preserve: Preserve::default(),
        },
    );
    assert!(matches!(receive(&mut reader), Body::Opened { .. }));
    send(&mut writer, 3, Body::Scan(DiffOptions::default()));
    match receive(&mut reader) {
        Body::Scanned(set) => {
            let paths: Vec<String> = set.changes.iter().map(|c| c.path.to_string()).collect();
            assert_eq!(paths, ["kept.txt"]);
        }
        other => panic!("no scan: {other:?}"),
    }

    // A latecomer with the right token finds nobody listening for it.
    assert!(data_channel::connect(&at, &offer, Duration::from_millis(800), None).is_err());

    // Closing ssh ends the far end, and the channel with it.
    drop(far.to);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = far.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
}

/// `-C` over the data channel: changes arrive; after the far end is
/// lost, the session connects again, with a new data channel, and what
/// changed meanwhile arrives.
#[test]
fn continuous_push_syncs_over_quic_and_reconnects_with_a_new_channel() {
    let far = Far::new("localhost");
    let (src, remote) = (far.path("src"), far.path("remote"));
    write(&src, "a.txt", b"first");
    let mut child = far
        .command(
            "push",
            &src,
            &remote,
            &["-C", "--json", "--transport", "quic"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("one JSON object per line"));
        }
    });
    let deadline = Duration::from_secs(20);
    let first = lines.recv_timeout(deadline).expect("the first pass");
    assert_eq!(first["transport"], "quic", "{first}");
    assert_eq!(read(&remote, "a.txt"), b"first");
    let eventually = |what: &str, check: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    write(&src, "a.txt", b"second, longer");
    write(&src, "sub/b.txt", b"new");
    eventually("the change arrives", &|| {
        remote.join("sub/b.txt").exists() && read(&remote, "a.txt") == b"second, longer"
    });

    // The far end goes; the session starts another, with a channel of its own.
    let pidfile = far.path("far.pid");
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    write(
        &src,
        "while-down.txt",
        b"written while the far end was gone",
    );
    eventually("the change made meanwhile arrives", &|| {
        remote.join("while-down.txt").exists()
    });
    assert_ne!(fs::read_to_string(&pidfile).unwrap().trim(), pid);
    // Every cycle went over QUIC, the pass after reconnecting too (the one
    // that created the file written meanwhile, and nothing else).
    loop {
        let cycle = lines
            .recv_timeout(deadline)
            .expect("the pass after reconnecting");
        assert_eq!(cycle["transport"], "quic", "{cycle}");
        if cycle["created"] == 1 && cycle["updated"] == 0 {
            break;
        }
    }

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_same_tree(&src, &remote);
}
