//! The WAN test bed (`tests/common/wan.rs`, `examples/wan_router.rs`): it
//! comes up and goes away without leftovers, delays, loses packets at the
//! configured rate, drops UDP on request while TCP passes, and a real push
//! over ssh through a lossy link arrives complete.
//!
//! Needs root, `/dev/net/tun`, `ip` (iproute2) and openssh; each test says
//! `SKIPPED: ...` on stderr and passes where the bed cannot be set up.

mod common;

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::wan::{WanBed, WanSpec, SSH_PORT};
use common::*;

/// `ip netns list` as text.
fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether network device `dev` exists in namespace `ns` (None: this one).
fn device_exists(ns: Option<&str>, dev: &str) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["link", "show", "dev", dev])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Sends `count` datagrams of 200 bytes from the near namespace to the far
/// one, paced well below the link rate, and returns how many arrived.
fn udp_blast(bed: &WanBed, count: usize) -> usize {
    let far_ip = bed.far_ip();
    let far = bed.in_far(|| UdpSocket::bind((far_ip, 0)).unwrap());
    let near = bed.in_near(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap());
    // Room for the whole blast, so a receiver that is slow to be scheduled
    // loses nothing the router did not drop (root may exceed rmem_max).
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a pointer to a live c_int of the given size.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&far),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        set,
        0,
        "SO_RCVBUFFORCE: {}",
        std::io::Error::last_os_error()
    );
    let to = far.local_addr().unwrap();
    far.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while far.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let payload = [0x5a; 200];
    for i in 0..count {
        near.send_to(&payload, to).unwrap();
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    receiver.join().unwrap()
}

#[test]
fn bed_comes_up_and_goes_down_leaving_nothing_behind() {
    let Some(bed) = WanBed::start(WanSpec::default()) else {
        return;
    };
    let (near_ns, far_ns) = (bed.near_ns().to_string(), bed.far_ns().to_string());
    let (near_tun, far_tun) = (bed.tuns().0.to_string(), bed.tuns().1.to_string());
    let router = bed.router_pid();
    let sshd = bed.sshd_pid().unwrap();
    let listed = namespaces();
    assert!(
        listed.contains(&near_ns) && listed.contains(&far_ns),
        "{listed}"
    );
    assert!(device_exists(Some(&near_ns), &near_tun));
    assert!(device_exists(Some(&far_ns), &far_tun));
    assert!(
        !device_exists(None, &near_tun),
        "the near tun is still in the host's namespace"
    );
    // A login through the link lands in the far namespace.
    let mut login = Command::new("sh");
    login.arg("-c").arg(format!(
        "{} {} ip -4 -o addr show",
        bed.rsh(),
        bed.user_host()
    ));
    let out = run_bounded(login, Duration::from_secs(60));
    assert_code(&out, 0);
    let far_side = format!("inet {} peer {}", bed.far_ip(), bed.near_ip());
    assert!(stdout(&out).contains(&far_side), "{}", stdout(&out));

    drop(bed);
    let listed = namespaces();
    assert!(
        !listed.contains(&near_ns) && !listed.contains(&far_ns),
        "{listed}"
    );
    for tun in [&near_tun, &far_tun] {
        assert!(!device_exists(None, tun), "{tun} is left behind");
    }
    for pid in [router, sshd] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is left behind"
        );
    }
}

#[test]
fn the_configured_round_trip_is_observed() {
    let spec = WanSpec {
        rate_mbit: 50.0,
        rtt_ms: 100.0,
        ..WanSpec::default()
    };
    let Some(bed) = WanBed::start(spec) else {
        return;
    };
    // A TCP connect takes one round trip (SYN, SYN-ACK).
    let addr = bed.far_addr(SSH_PORT);
    let times: Vec<Duration> = bed.in_near(|| {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                start.elapsed()
            })
            .collect()
    });
    let fastest = times.iter().min().unwrap();
    assert!(
        *fastest >= Duration::from_millis(90),
        "a connect took {fastest:?}, less than 90% of the 100 ms round trip: {times:?}"
    );
}

#[test]
fn random_loss_drops_about_the_configured_share() {
    let spec = WanSpec {
        rate_mbit: 50.0,
        rtt_ms: 20.0,
        loss_to_far: Some(0.2),
        seed: 7,
        ..WanSpec::default()
    };
    let Some(bed) = WanBed::start(spec) else {
        return;
    };
    let sent = 2000;
    let before = bed.stats();
    let got = udp_blast(&bed, sent);
    let stats = bed.stats();
    let lost = (sent - got) as f64 / sent as f64;
    assert!(
        (0.15..=0.25).contains(&lost),
        "{got} of {sent} arrived: {stats}"
    );
    let dropped = stats["to_far"]["dropped_loss"].as_u64().unwrap()
        - before["to_far"]["dropped_loss"].as_u64().unwrap();
    let share = dropped as f64 / sent as f64;
    assert!(
        (0.15..=0.25).contains(&share),
        "router dropped {dropped}: {stats}"
    );
    assert_eq!(stats["to_far"]["dropped_queue"], 0, "{stats}");
}

#[test]
fn drop_udp_drops_udp_but_tcp_passes() {
    let spec = WanSpec {
        drop_udp: true,
        ..WanSpec::default()
    };
    let Some(bed) = WanBed::start(spec) else {
        return;
    };
    assert_eq!(udp_blast(&bed, 100), 0);
    let stats = bed.stats();
    assert!(
        stats["to_far"]["dropped_udp"].as_u64().unwrap() >= 100,
        "{stats}"
    );
    // TCP gets through: the far sshd's banner arrives.
    let addr = bed.far_addr(SSH_PORT);
    let banner = bed.in_near(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&banner, b"SSH-2.0");
}

/// The bed, with an empty local root and a remote path in a temp dir.
fn bed_and_roots(
    spec: WanSpec,
) -> Option<(
    WanBed,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let bed = WanBed::start(spec)?;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let remote = tmp.path().join("remote");
    fs::create_dir(&local).unwrap();
    Some((bed, tmp, local, remote))
}

/// A push over `transport` through a 50 Mbit/s, 40 ms link losing 1% of
/// its packets arrives complete, and the link did lose some.
fn lossy_push_arrives_complete(transport: &str, seed: u64) {
    let spec = WanSpec {
        rate_mbit: 50.0,
        rtt_ms: 40.0,
        loss: 0.01,
        seed,
        ..WanSpec::default()
    };
    let Some((bed, _tmp, local, remote)) = bed_and_roots(spec) else {
        return;
    };
    generate_tree(&local, seed + 4, 200, 0, 20_000);
    write(&local, "big/blob.bin", &Rng::new(seed + 6).bytes(3 << 20));

    let out = bed.snapsync(
        "push",
        &local,
        &remote,
        &["--json", "--transport", transport],
    );
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(s["transport"], transport, "{s}");
    assert_eq!(count(&s, "errors"), 0, "{s}");
    assert_same_tree(&local, &remote);
    let stats = bed.stats();
    assert!(
        stats["to_far"]["dropped_loss"].as_u64().unwrap() > 0,
        "the link lost nothing: {stats}"
    );
}

#[test]
fn push_over_ssh_through_a_lossy_link_arrives_complete() {
    lossy_push_arrives_complete("ssh", 3);
}

#[test]
fn push_over_quic_through_a_lossy_link_arrives_complete() {
    lossy_push_arrives_complete("quic", 5);
}

#[test]
fn with_udp_dropped_auto_falls_back_to_ssh_and_quic_says_why() {
    let spec = WanSpec {
        rate_mbit: 50.0,
        rtt_ms: 40.0,
        drop_udp: true,
        ..WanSpec::default()
    };
    let Some((bed, _tmp, local, remote)) = bed_and_roots(spec) else {
        return;
    };
    generate_tree(&local, 17, 50, 0, 5_000);

    // quic only: a clear refusal, nothing synced.
    let out = bed.snapsync("push", &local, &remote, &["--transport", "quic"]);
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("UDP"), "{err}");
    assert!(!remote.join(".snapsync").exists() || tree(&remote).len() <= 1);

    // auto: the round trip is long, QUIC is tried, UDP does not get
    // through, and the run goes on over ssh with one warning.
    let clock = Instant::now();
    let out = bed.snapsync("push", &local, &remote, &["--json"]);
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(s["transport"], "ssh", "{s}");
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_same_tree(&local, &remote);
    eprintln!("auto with UDP dropped: {:?} in all", clock.elapsed());
}
