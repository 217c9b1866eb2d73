//! What the tests that go through a real sshd share (`tests/ssh.rs` on
//! loopback, `wan.rs` across the WAN test bed): the programs, host and
//! client keys, a private sshd configuration, and the ssh command given as
//! `--rsh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require_program, run_tool};

/// sshd's path, once ssh and ssh-keygen are known to be there too.
#[track_caller]
pub fn require_ssh_programs() -> PathBuf {
    require_program("ssh", "openssh-client", &[]);
    require_program("ssh-keygen", "openssh-client", &[]);
    require_program("sshd", "openssh-server", &["/usr/sbin", "/usr/local/sbin"])
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

fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Starts a private sshd on 127.0.0.1 with the configuration `config`
/// gives for a free port (written to `dir/sshd_config`, logging to
/// `dir/sshd.log`), and waits until it listens. Another test may take the
/// port between the probe and sshd's bind: sshd then exits at once and
/// another port is tried.
pub fn start_sshd(dir: &Path, config: impl Fn(u16) -> String) -> (std::process::Child, u16) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let sshd = require_ssh_programs();
    let log_path = dir.join("sshd.log");
    for _ in 0..5 {
        let port = free_port();
        fs::write(dir.join("sshd_config"), config(port)).unwrap();
        let log = fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sshd.display()));
        // Listening on `port` by its own log (a port shared by accident
        // with another test's sshd would accept connections too), and
        // accepting connections.
        let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if sshd_listening(&log_path, "127.0.0.1", port)
                && std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                    .is_ok()
            {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        if !log.contains("Address already in use") {
            panic!("sshd did not start on port {port}; its log:\n{log}");
        }
    }
    panic!("sshd found no free port in 5 tries");
}

/// `cmd` (this build's binary, or what runs it) given
/// `VERB --rsh RSH --remote-command <this build> EXTRA LOCAL REMOTE`, with
/// no session log redirected from the environment.
pub fn sync_over_ssh(
    mut cmd: Command,
    verb: &str,
    rsh: &str,
    extra: &[&str],
    local: &Path,
    remote: &str,
) -> Command {
    cmd.arg(verb)
        .arg("--rsh")
        .arg(rsh)
        .arg("--remote-command")
        .arg(super::bin())
        .args(extra)
        .arg(local)
        .arg(remote)
        .env_remove("SNAPSYNC_LOG");
    cmd
}
