//! `--bwlimit RATE` caps the rate of file data a source sends, whatever
//! carries it: a copy between local trees, the ssh stream, the QUIC data
//! channel, and a far end that is the source (pull). Only a lower bound on
//! the time is checked (size / rate, less the bucket's burst), generously:
//! this machine is shared, so nothing is asserted about how fast it may be.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// 2 MiB at 1 MiB/s: at least about 2 s.
const SIZE: usize = 2 << 20;
const RATE: &str = "1M";
const AT_LEAST: Duration = Duration::from_millis(1700);

fn tree(root: &Path) {
    // A few large files and many small ones: both are paced.
    for i in 0..3 {
        write(root, &format!("big{i}.bin"), &vec![i as u8 + 1; SIZE / 4]);
    }
    generate_tree(root, 9, 64, 4096, 12288);
}

fn total(root: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with(".snapsync"))
            .map(|p| {
                let meta = fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    walk(&p)
                } else {
                    meta.len()
                }
            })
            .sum()
    }
    walk(root)
}

fn shim(dir: &Path) -> PathBuf {
    let shim = dir.join("rsh.sh");
    fs::write(&shim, "#!/bin/sh\nshift\nexec \"$@\"\n").unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

/// Runs `snapsync VERB --bwlimit RATE ...` and checks it took at least
/// size / rate.
#[track_caller]
fn paced(verb: &str, args: &[&str], local: &Path, remote: &str, source: &Path) {
    let bytes = total(source);
    assert!(bytes as usize >= SIZE, "the tree holds {bytes} bytes");
    let started = Instant::now();
    let out = Command::new(bin())
        .arg(verb)
        .args(["--json", "--bwlimit", RATE])
        .args(args)
        .arg(local)
        .arg(remote)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_code(&out, 0);
    let s = summary(&out);
    assert_eq!(
        s["bytes_sent"].as_u64().unwrap() + s["bytes_received"].as_u64().unwrap(),
        bytes
    );
    assert!(
        took >= AT_LEAST,
        "{verb} {args:?} of {bytes} bytes at {RATE}/s took only {took:?}"
    );
}

#[test]
fn bwlimit_paces_a_local_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree(&src);
    paced("push", &[], &src, dst.to_str().unwrap(), &src);
    assert_same_tree(&src, &dst);
}

#[test]
fn bwlimit_paces_a_push_over_quic() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    tree(&src);
    let shim = shim(tmp.path());
    let bin = bin();
    let args = [
        "--transport",
        "quic",
        "--rsh",
        shim.to_str().unwrap(),
        "--remote-command",
        bin.to_str().unwrap(),
    ];
    paced(
        "push",
        &args,
        &src,
        &format!("localhost:{}", dst.display()),
        &src,
    );
    assert_same_tree(&src, &dst);
}

#[test]
fn bwlimit_paces_a_far_source_over_ssh() {
    let tmp = tempfile::tempdir().unwrap();
    let (far, near) = (tmp.path().join("far"), tmp.path().join("near"));
    tree(&far);
    let shim = shim(tmp.path());
    let bin = bin();
    let args = [
        "--transport",
        "ssh",
        "--rsh",
        shim.to_str().unwrap(),
        "--remote-command",
        bin.to_str().unwrap(),
    ];
    paced(
        "pull",
        &args,
        &near,
        &format!("localhost:{}", far.display()),
        &far,
    );
    assert_same_tree(&far, &near);
}

#[test]
fn bwlimit_takes_sizes_with_units() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src, "a", b"x");
    let out = push(&src, &dst, &["--bwlimit", "nonsense"]);
    assert_code(&out, 2);
    assert_stderr_says(&out, "--bwlimit");
    let out = push(&src, &dst, &["--bwlimit", "50M"]);
    assert_code(&out, 0);
}
