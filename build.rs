//! Records the git commit the binary is built from, and that commit's date,
//! for `--version` and the man page (`SNAPSYNC_COMMIT`,
//! `SNAPSYNC_COMMIT_DATE`).
//!
//! Built from a source tree that is not a git checkout of its own (a
//! release tarball, or a copy unpacked inside some other repository), the
//! commit is "unknown" and the date empty, unless the builder sets both
//! variables in the environment (a packager who knows them).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SNAPSYNC_COMMIT");
    println!("cargo:rerun-if-env-changed=SNAPSYNC_COMMIT_DATE");
    println!("cargo:rerun-if-changed=build.rs");
    let (commit, date) = match std::env::var("SNAPSYNC_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => (
            commit.trim().to_string(),
            std::env::var("SNAPSYNC_COMMIT_DATE").unwrap_or_default(),
        ),
        _ => from_git().unwrap_or_else(|| ("unknown".to_string(), String::new())),
    };
    println!("cargo:rustc-env=SNAPSYNC_COMMIT={commit}");
    println!("cargo:rustc-env=SNAPSYNC_COMMIT_DATE={}", date.trim());
}

/// The commit and date of HEAD, when this source tree is the top of a git
/// work tree; `None` when git is missing or the tree is not one.
fn from_git() -> Option<(String, String)> {
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = PathBuf::from(git(&here, &["rev-parse", "--show-toplevel"])?);
    // A tarball unpacked inside another repository must not take its commit.
    if top.canonicalize().ok()? != here.canonicalize().ok()? {
        return None;
    }
    let commit = git(&here, &["rev-parse", "--short=12", "HEAD"])?;
    let date = git(&here, &["log", "-1", "--format=%cs", "HEAD"]).unwrap_or_default();
    // Build again when HEAD moves: a commit on its branch, a checkout. Only
    // that branch's ref is watched, not all of refs/heads/, which work on
    // other branches (and other work trees) touches. In a linked work tree
    // HEAD lives in its own git dir, the branches in the common one.
    let git_dir = here.join(git(&here, &["rev-parse", "--git-dir"])?);
    let common_dir = here.join(git(&here, &["rev-parse", "--git-common-dir"])?);
    let mut watched = vec![git_dir.join("HEAD"), common_dir.join("packed-refs")];
    if let Some(branch) = git(&here, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = common_dir.join(&branch);
        // A packed ref gets a loose file at its next commit, in this directory.
        let watch = if loose.exists() {
            loose
        } else {
            loose.parent()?.to_path_buf()
        };
        watched.push(watch);
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some((commit, date))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_string()).filter(|text| !text.is_empty())
}
