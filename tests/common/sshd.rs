//! What the tests that go through a real sshd share: finding the programs,
//! host and client keys, a private sshd configuration, the ssh command given
//! as `--rsh`, running a command with a time limit, and building an example
//! program (`tests/ssh.rs` on loopback, `wan.rs` across the WAN test bed,
//! `tests/hostile_peer.rs` for its fake peer).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The absolute path of a program, searching `PATH` and then `extra`.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .filter(|candidate| candidate.is_absolute())
}

/// Like [`find_program`], failing the test with what to install.
#[track_caller]
pub fn require_program(name: &str, package: &str, extra: &[&str]) -> PathBuf {
    find_program(name, extra).unwrap_or_else(|| {
        panic!(
            "`{name}` is missing, so this test cannot run: run ./scripts/test.sh as root \
             (it installs {package}), or `apt-get install {package}`"
        )
    })
}

/// sshd's path, once ssh and ssh-keygen are known to be there too.
#[track_caller]
pub fn require_ssh_programs() -> PathBuf {
    require_program("ssh", "openssh-client", &[]);
    require_program("ssh-keygen", "openssh-client", &[]);
    require_program("sshd", "openssh-server", &["/usr/sbin", "/usr/local/sbin"])
}

/// Runs a command that must succeed.
#[track_caller]
pub fn run_tool(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Makes `host_key`, `client_key` and `authorized_keys` (the client key) in
/// `dir`, and the privilege separation directory sshd insists on as root.
pub fn make_ssh_keys(dir: &Path) {
    let keygen = require_program("ssh-keygen", "openssh-client", &[]);
    for (key, comment) in [
        ("host_key", "snapsync-test-host"),
        ("client_key", "snapsync-test"),
    ] {
        run_tool(
            Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(dir.join(key)),
        );
    }
    fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    if current_user() == "root" {
        // The package makes it only at boot.
        let _ = fs::create_dir_all("/run/sshd");
    }
}

/// A private sshd's configuration, with the keys [`make_ssh_keys`] made in `dir`.
pub fn sshd_config(dir: &Path, address: &str, port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"ListenAddress {address}
Port {port}
HostKey "{dir}/host_key"
AuthorizedKeysFile "{dir}/authorized_keys"
PidFile "{dir}/sshd.pid"
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTTY no
MaxStartups 64
LogLevel INFO
"#
    )
}

/// Whether sshd's log says it listens on `address:port`.
pub fn sshd_listening(log: &Path, address: &str, port: u16) -> bool {
    let line = format!("Server listening on {address} port {port}");
    fs::read_to_string(log).is_ok_and(|log| log.contains(&line))
}

/// The words of an ssh command that logs in with `key` (made by
/// [`make_ssh_keys`]) without asking or remembering anything.
pub fn ssh_words(port: u16, key: &Path) -> Vec<String> {
    [
        "ssh",
        "-F",
        "/dev/null",
        "-p",
        &port.to_string(),
        "-i",
        key.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs a command with its output captured, killing it after `limit` so a
/// stuck connection fails the test instead of hanging.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "did not finish within {limit:?}: {cmd:?}\nstderr so far: {}",
                String::from_utf8_lossy(&err_reader.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// The path of example program `name`, built once per test process.
/// `cargo test` builds examples, but `cargo test --test NAME` does not (and
/// would leave a stale one), so it is built here; cargo makes that a no-op
/// when it is fresh.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    // This test runs from target/<profile>/deps/; examples land in
    // target/<profile>/examples/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let fallback = profile_dir.join("examples").join(name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = Command::new(cargo);
    build
        .args(["build", "--example", name, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // `debug` is the directory of the dev (and test) profile.
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let out = build.output();
    let path = out
        .as_ref()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        });
    let why = || match &out {
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => format!("cannot run cargo: {e}"),
    };
    let path = match path {
        Some(path) => path,
        None if fallback.exists() => {
            eprintln!(
                "warning: cannot build the {name} example, using {}:\n{}",
                fallback.display(),
                why()
            );
            fallback
        }
        None => panic!("cannot build the {name} example:\n{}", why()),
    };
    built.insert(name.to_string(), path.clone());
    path
}
