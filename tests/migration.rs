//! A session recorded by the previous release (schema 2) goes on under
//! this one: its databases are migrated on the first run, and what they
//! held (snapshot, conflicts, run history, lineage) still counts.
//!
//! `tests/fixtures/schema-v2/` holds both roots' state as the previous
//! code wrote it (`sqlite3 .dump` of each database, the root ids and
//! lineage) for a bidi session `site` over this tree:
//! `one.txt` (changed on both sides: a conflict), `three.txt`, `dir/two.txt`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v2");
/// 2026-01-02 03:04:05 UTC, the files' mtime when the session was made.
const MADE: i64 = 1_767_323_045;

fn restore(root: &Path, side: &str) {
    let state = root.join(".snapsync");
    fs::create_dir_all(&state).unwrap();
    for name in ["id", "lineage"] {
        fs::copy(Path::new(FIXTURE).join(side).join(name), state.join(name)).unwrap();
    }
    let dump = fs::read_to_string(Path::new(FIXTURE).join(side).join("site.sql")).unwrap();
    let db = rusqlite::Connection::open(state.join("site.db")).unwrap();
    db.execute_batch(&dump).unwrap();
}

fn user_version(root: &Path) -> i64 {
    let db = rusqlite::Connection::open(root.join(".snapsync/site.db")).unwrap();
    db.query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn a_schema_2_session_is_migrated_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (root, side, one, one_mtime) in [
        (&a, "a", &b"alpha-a\n"[..], 1_767_398_400),
        (&b, "b", &b"alpha-b!\n"[..], 1_767_398_401),
    ] {
        write(root, "dir/two.txt", b"bravo\n");
        write(root, "three.txt", b"charlie\n");
        write(root, "one.txt", one);
        set_mtime(root, "dir/two.txt", MADE, 0);
        set_mtime(root, "three.txt", MADE, 0);
        set_mtime(root, "one.txt", one_mtime, 0);
        set_mtime(root, "dir", MADE, 0);
        restore(root, side);
        assert_eq!(user_version(root), 2);
    }

    // Before any run, the inspecting commands leave an old database alone.
    let out = Command::new(bin()).arg("ls").arg(&a).output().unwrap();
    assert_code(&out, 0);
    assert_eq!(user_version(&a), 2);

    // The first run migrates both, and the old conflict still stands.
    let out = bidi(&a, &b, &["-N", "site", "--json"]);
    assert_code(&out, 4);
    let s = summary(&out);
    assert_eq!(
        count(&s, "bytes_sent") + count(&s, "bytes_received"),
        0,
        "{s}"
    );
    for root in [&a, &b] {
        assert_eq!(user_version(root), 3, "{root:?}");
    }
    let listed = conflicts(&a);
    assert_eq!(
        listed,
        vec![("one.txt".into(), "modified".into(), "modified".into())]
    );
    let out = Command::new(bin())
        .args(["conflicts", "--json"])
        .arg(&a)
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows[0]["detected"], "2026-11-25T21:51:28Z",
        "when it was found is kept"
    );

    // History from before the migration is still there: two old runs and this one.
    let runs: i64 = rusqlite::Connection::open(a.join(".snapsync/site.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM runs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(runs, 3);

    // The old snapshot rows are records now.
    let out = Command::new(bin())
        .args(["ls", "--json"])
        .arg(&b)
        .output()
        .unwrap();
    assert_code(&out, 0);
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<(String, String)> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("dir".to_string(), "synced".to_string()),
            ("dir/two.txt".into(), "synced".into()),
            ("one.txt".into(), "conflict".into()),
            ("three.txt".into(), "synced".into()),
        ]
    );

    // And the session goes on: the conflict is resolved and carried out.
    let out = Command::new(bin())
        .args(["resolve", "--keep", "local"])
        .arg(a.join("one.txt"))
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_code(&bidi(&a, &b, &["-N", "site"]), 0);
    assert_eq!(read(&b, "one.txt"), b"alpha-a\n");
    assert_same_tree(&a, &b);
}
