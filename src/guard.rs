//! The guards against losing data through deletes: the checks that stop a
//! run before it changes anything on either side, when a root does not
//! look like the one the session synced (missing, its state gone, another
//! tree, emptied), or when the plan deletes more than `--max-delete`
//! allows. Pure: the session driver gathers the facts (both roots as they
//! open, both scans, the plan) and acts on the verdict; nothing here reads
//! a file. `-x` is the deliberate way past the root checks (the driver
//! does not ask them then); a higher `--max-delete` is the way past the
//! limit.

use std::fmt;
use std::str::FromStr;

use crate::state::{RootState, SessionFacts};

/// `--max-delete`: how many paths one run may delete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    /// At most this many paths, over both sides together.
    Count(u64),
    /// At most this share (0–100) of each side's paths: of its snapshot,
    /// or of its scanned tree when the snapshot is empty.
    Percent(f64),
}

impl FromStr for MaxDelete {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(number) => match number.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(MaxDelete::Percent(p)),
                _ => Err(format!(
                    "`{text}`: give a percentage from 0% to 100%, or a number of paths"
                )),
            },
            None => text
                .parse::<u64>()
                .map(MaxDelete::Count)
                .map_err(|_| format!("`{text}` is not a number of paths (N) or a percentage (P%)")),
        }
    }
}

impl fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One root as it opened, for [`check_roots`].
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    /// How messages name it: `local root /a`, `remote root host:/b`.
    pub name: &'a str,
    /// Data only flows out of it (push's local root, pull's remote one):
    /// such a root is never created when missing.
    pub source_only: bool,
    pub facts: &'a SessionFacts,
}

/// One root as the scan found it, for [`check_scans`].
#[derive(Debug, Clone, Copy)]
pub struct Scanned<'a> {
    pub name: &'a str,
    /// The root holds nothing the session syncs, while its snapshot holds
    /// entries.
    pub emptied: bool,
    /// The snapshot's rows, when counted.
    pub snapshot_rows: Option<u64>,
    /// Its state directory went away while the session ran.
    pub state_gone: bool,
}

/// What the plan deletes on one root, for [`check_deletes`].
#[derive(Debug, Clone, Copy)]
pub struct Deletes<'a> {
    pub name: &'a str,
    /// Paths the plan deletes there (a directory deleted whole counts as
    /// every path it removes).
    pub planned: u64,
    /// What a percentage is of: the rows of that root's snapshot, or the
    /// entries of its scanned tree when the snapshot has none.
    pub base: u64,
}

/// Why a run was refused. Each message says what was found, that nothing
/// was changed, and the way past.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the {root} is not a directory; give the directory to sync. Nothing was changed")]
    NotADirectory { root: String },
    #[error("the {root} is the source and does not exist; check the path. Nothing was changed")]
    SourceMissing { root: String },
    #[error(
        "the {root} does not exist, but this session has synced it before. An unmounted disk, a vanished network mount, a wrong path? Nothing was changed. {way}",
        way = if *is_source {
            "Mount it or correct the path: a source must exist, even with -x"
        } else {
            "Mount it or correct the path; to start afresh with an empty directory there, run again with -x"
        }
    )]
    RootMissing { root: String, is_source: bool },
    #[error(
        "the {root} is another tree than the one this session synced: its root id is {found}, the {recorder} recorded {recorded}. Another disk mounted there, or a wrong path? Nothing was changed. If this is the right tree, run again with -x to compare both trees in full"
    )]
    AnotherTree {
        root: String,
        found: String,
        recorded: String,
        recorder: String,
    },
    #[error(
        "the {root} holds no snapshot of this session ({what}), while the {peer} holds one: the session has synced these roots before. An unmounted disk, a vanished network mount, a wrong path, or a restore without .snapsync/? Nothing was changed. If this is the right tree, run again with -x to compare both trees in full",
        what = if *has_state { "its state directory has no database for it" } else { "it has no state directory" }
    )]
    SnapshotOnOneSide {
        root: String,
        peer: String,
        has_state: bool,
    },
    #[error(
        "the state directory of the {root} is gone since the session opened: the root was replaced (an unmounted disk, a vanished network mount?) or its .snapsync/ removed. Nothing was changed. Once the root is back, run again; if this is the right tree, run again with -x to compare both trees in full"
    )]
    StateGone { root: String },
    #[error(
        "the {root} is empty, but its snapshot holds {rows}; syncing now would take them all as deleted. An unmounted disk or a vanished network mount? Nothing was changed. If the root is meant to be empty, run again with -x to compare both trees in full",
        rows = match snapshot_rows {
            Some(1) => "1 entry".to_string(),
            Some(n) => format!("{n} entries"),
            None => "entries".to_string(),
        }
    )]
    Emptied {
        root: String,
        snapshot_rows: Option<u64>,
    },
    #[error(
        "the plan deletes {what}, more than --max-delete {limit} allows. Nothing was changed. Check what would go (-n shows the plan); to let it go, run again with a higher --max-delete"
    )]
    TooManyDeletes { what: String, limit: MaxDelete },
}

/// The session counts as established when it has completed a run on
/// every root that still holds its snapshot, and one does.
pub fn established(a: &SessionFacts, b: &SessionFacts) -> bool {
    (a.has_snapshot || b.has_snapshot)
        && (!a.has_snapshot || a.established)
        && (!b.has_snapshot || b.established)
}

/// A session that never completed a run, whose snapshot one root holds
/// while the other holds none: that root, then the other. What its
/// snapshot records as synced came from a run that stopped midway, and the
/// other root has lost it since (deleted with the tree, or with its
/// `.snapsync/`), so comparing against it would take files the other root
/// no longer holds as already there. The driver drops it and compares both
/// trees in full, as `-x` does. (Once established, the same finding is the
/// [`Refusal::SnapshotOnOneSide`] of [`check_roots`].)
pub fn unfinished_on_one_side<'a>(a: Root<'a>, b: Root<'a>) -> Option<(Root<'a>, Root<'a>)> {
    if established(a.facts, b.facts) {
        return None;
    }
    match (a.facts.has_snapshot, b.facts.has_snapshot) {
        (true, false) => Some((a, b)),
        (false, true) => Some((b, a)),
        _ => None,
    }
}

/// The checks on both roots as they were found before the session opened
/// on them: a root that is not a directory, a missing source, and, once
/// the session is established, a missing root, another tree at a root's
/// path, or a root that lost its snapshot while the other kept its own.
/// A first run, one whose first pass never completed, and one with `-x`
/// (`reset`) meet only the first two, which nothing gets past.
pub fn check_roots(a: Root, b: Root, reset: bool) -> Result<(), Refusal> {
    let established = !reset && established(a.facts, b.facts);
    for root in [a, b] {
        if root.facts.root == RootState::NotDir {
            return Err(Refusal::NotADirectory {
                root: root.name.to_string(),
            });
        }
    }
    for root in [a, b] {
        if root.facts.root != RootState::Missing {
            continue;
        }
        if established {
            return Err(Refusal::RootMissing {
                root: root.name.to_string(),
                is_source: root.source_only,
            });
        }
        if root.source_only {
            return Err(Refusal::SourceMissing {
                root: root.name.to_string(),
            });
        }
    }
    if !established {
        return Ok(());
    }
    for (root, other) in [(a, b), (b, a)] {
        if !other.facts.has_snapshot {
            continue;
        }
        if let (Some(found), Some(recorded)) = (&root.facts.root_id, &other.facts.peer_root_id) {
            if found != recorded {
                return Err(Refusal::AnotherTree {
                    root: root.name.to_string(),
                    found: found.clone(),
                    recorded: recorded.clone(),
                    recorder: other.name.to_string(),
                });
            }
        }
    }
    for (root, other) in [(a, b), (b, a)] {
        if !root.facts.has_snapshot && other.facts.has_snapshot {
            return Err(Refusal::SnapshotOnOneSide {
                root: root.name.to_string(),
                peer: other.name.to_string(),
                has_state: root.facts.root_id.is_some(),
            });
        }
    }
    Ok(())
}

/// The checks on both scans: a root whose state went away while the
/// session ran; a root found empty while its snapshot holds entries (once
/// the session is established).
pub fn check_scans(established: bool, scans: &[Scanned]) -> Result<(), Refusal> {
    if let Some(scan) = scans.iter().find(|scan| scan.state_gone) {
        return Err(Refusal::StateGone {
            root: scan.name.to_string(),
        });
    }
    if !established {
        return Ok(());
    }
    match scans.iter().find(|scan| scan.emptied) {
        Some(scan) => Err(Refusal::Emptied {
            root: scan.name.to_string(),
            snapshot_rows: scan.snapshot_rows,
        }),
        None => Ok(()),
    }
}

/// `--max-delete`: a count limits the paths deleted on all roots
/// together; a percentage, those deleted on each root, against its base.
pub fn check_deletes(limit: Option<MaxDelete>, sides: &[Deletes]) -> Result<(), Refusal> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let paths = |n: u64| if n == 1 { "path" } else { "paths" };
    match limit {
        MaxDelete::Count(most) => {
            let total: u64 = sides.iter().map(|s| s.planned).sum();
            if total <= most {
                return Ok(());
            }
            let each: Vec<String> = sides
                .iter()
                .filter(|s| s.planned > 0)
                .map(|s| format!("{} on the {}", s.planned, s.name))
                .collect();
            let what = match each.as_slice() {
                [_] => format!("{total} {} on the {}", paths(total), one_name(sides)),
                _ => format!("{total} {} ({})", paths(total), each.join(", ")),
            };
            Err(Refusal::TooManyDeletes { what, limit })
        }
        MaxDelete::Percent(share) => {
            for side in sides.iter().filter(|s| s.planned > 0) {
                let percent = if side.base == 0 {
                    100.0
                } else {
                    side.planned as f64 * 100.0 / side.base as f64
                };
                if percent > share {
                    return Err(Refusal::TooManyDeletes {
                        what: format!(
                            "{} of the {} {} of the {} ({percent:.0}%)",
                            side.planned,
                            side.base,
                            paths(side.base),
                            side.name
                        ),
                        limit,
                    });
                }
            }
            Ok(())
        }
    }
}

/// The name of the one side that deletes anything.
fn one_name<'a>(sides: &[Deletes<'a>]) -> &'a str {
    sides.iter().find(|s| s.planned > 0).map_or("", |s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root's facts: `state` is what `.snapsync/` holds for the session.
    #[derive(Clone, Copy)]
    enum State {
        /// No state directory at all.
        None,
        /// A root id, but no database for this session.
        IdOnly,
        /// The session's database; completed a run when `established`.
        Db { established: bool },
    }

    fn facts(root: RootState, id: &str, state: State, peer_id: &str) -> SessionFacts {
        let mut facts = SessionFacts {
            root,
            ..SessionFacts::default()
        };
        match state {
            State::None => {}
            State::IdOnly => facts.root_id = Some(id.into()),
            State::Db { established } => {
                facts.root_id = Some(id.into());
                facts.has_snapshot = true;
                facts.established = established;
                facts.peer_root_id = established.then(|| peer_id.to_string());
            }
        }
        facts
    }

    const EST: State = State::Db { established: true };
    const FRESH: State = State::Db { established: false };

    #[derive(Debug, PartialEq)]
    enum Verdict {
        Ok,
        NotADirectory(&'static str),
        SourceMissing(&'static str),
        RootMissing(&'static str),
        AnotherTree(&'static str),
        OneSide(&'static str),
    }

    fn verdict(result: Result<(), Refusal>) -> Verdict {
        let side = |name: &str| if name == "A" { "A" } else { "B" };
        match result {
            Ok(()) => Verdict::Ok,
            Err(Refusal::NotADirectory { root }) => Verdict::NotADirectory(side(&root)),
            Err(Refusal::SourceMissing { root }) => Verdict::SourceMissing(side(&root)),
            Err(Refusal::RootMissing { root, .. }) => Verdict::RootMissing(side(&root)),
            Err(Refusal::AnotherTree { root, .. }) => Verdict::AnotherTree(side(&root)),
            Err(Refusal::SnapshotOnOneSide { root, .. }) => Verdict::OneSide(side(&root)),
            Err(other) => panic!("not a root check: {other}"),
        }
    }

    #[test]
    fn root_checks_as_a_table() {
        use RootState::{Dir, Missing, NotDir};
        use State::{IdOnly, None as NoState};
        use Verdict::*;
        // (what, A is the source, A, B, verdict); A's id is "a", B's "b",
        // and each records the other's unless a case says otherwise.
        let cases: Vec<(&str, bool, SessionFacts, SessionFacts, Verdict)> = vec![
            (
                "first run, both roots fresh",
                true,
                facts(Dir, "a", NoState, ""),
                facts(Missing, "b", NoState, ""),
                Ok,
            ),
            (
                "established, both as recorded",
                true,
                facts(Dir, "a", EST, "b"),
                facts(Dir, "b", EST, "a"),
                Ok,
            ),
            (
                "a root that is a file",
                true,
                facts(Dir, "a", NoState, ""),
                facts(NotDir, "b", NoState, ""),
                NotADirectory("B"),
            ),
            (
                "a missing source, never synced",
                true,
                facts(Missing, "a", NoState, ""),
                facts(Dir, "b", NoState, ""),
                SourceMissing("A"),
            ),
            (
                "a missing target, never synced: created",
                true,
                facts(Dir, "a", NoState, ""),
                facts(Missing, "b", NoState, ""),
                Ok,
            ),
            (
                "a missing bidi root, never synced: created",
                false,
                facts(Missing, "a", NoState, ""),
                facts(Dir, "b", NoState, ""),
                Ok,
            ),
            (
                "an established target gone with its state",
                true,
                facts(Dir, "a", EST, "b"),
                facts(Missing, "b", NoState, ""),
                RootMissing("B"),
            ),
            (
                "an established source gone with its state",
                true,
                facts(Missing, "a", NoState, ""),
                facts(Dir, "b", EST, "a"),
                RootMissing("A"),
            ),
            (
                "a missing root whose state lives elsewhere",
                false,
                facts(Missing, "a", EST, "b"),
                facts(Dir, "b", EST, "a"),
                RootMissing("A"),
            ),
            (
                "an emptied mount point: no state",
                true,
                facts(Dir, "a", NoState, ""),
                facts(Dir, "b", EST, "a"),
                OneSide("A"),
            ),
            (
                "a target restored without its state",
                true,
                facts(Dir, "a", EST, "b"),
                facts(Dir, "b", NoState, ""),
                OneSide("B"),
            ),
            (
                "the session's database deleted, the id kept",
                false,
                facts(Dir, "a", IdOnly, ""),
                facts(Dir, "b", EST, "a"),
                OneSide("A"),
            ),
            (
                "another tree with state of its own at B's path",
                true,
                facts(Dir, "a", EST, "b"),
                facts(Dir, "c", IdOnly, ""),
                AnotherTree("B"),
            ),
            (
                "another disk holding this session too",
                true,
                facts(Dir, "a", EST, "b"),
                facts(Dir, "c", EST, "a"),
                AnotherTree("B"),
            ),
            (
                "A is another tree, as B recorded",
                false,
                facts(Dir, "c", EST, "b"),
                facts(Dir, "b", EST, "a"),
                AnotherTree("A"),
            ),
            (
                "first pass killed: B lost nothing that counts",
                true,
                facts(Dir, "a", FRESH, ""),
                facts(Dir, "b", NoState, ""),
                Ok,
            ),
            (
                "first pass killed, target gone: created again",
                true,
                facts(Dir, "a", FRESH, ""),
                facts(Missing, "b", NoState, ""),
                Ok,
            ),
            (
                "established on one side only (killed between the two)",
                true,
                facts(Dir, "a", FRESH, ""),
                facts(Dir, "c", EST, "x"),
                Ok,
            ),
            (
                "neither side has the session, but state of others",
                true,
                facts(Dir, "a", IdOnly, ""),
                facts(Dir, "b", IdOnly, ""),
                Ok,
            ),
        ];
        for (what, a_source, a, b, expected) in cases {
            let got = verdict(check_roots(
                Root {
                    name: "A",
                    source_only: a_source,
                    facts: &a,
                },
                Root {
                    name: "B",
                    source_only: false,
                    facts: &b,
                },
                false,
            ));
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn a_snapshot_of_a_first_run_that_never_completed_alone_on_one_root() {
        use RootState::{Dir, Missing};
        use State::{IdOnly, None as NoState};
        // (what, A, B, the root whose snapshot is dropped)
        let cases: Vec<(&str, SessionFacts, SessionFacts, Option<&str>)> = vec![
            (
                "first run, both roots fresh",
                facts(Dir, "a", NoState, ""),
                facts(Dir, "b", NoState, ""),
                None,
            ),
            (
                "first pass stopped, the target deleted",
                facts(Dir, "a", FRESH, ""),
                facts(Missing, "b", NoState, ""),
                Some("A"),
            ),
            (
                "first pass stopped, the target's state removed",
                facts(Dir, "a", FRESH, ""),
                facts(Dir, "b", NoState, ""),
                Some("A"),
            ),
            (
                "first pass stopped, the source's database removed",
                facts(Dir, "a", IdOnly, ""),
                facts(Dir, "b", FRESH, ""),
                Some("B"),
            ),
            (
                "first pass stopped, both snapshots kept",
                facts(Dir, "a", FRESH, ""),
                facts(Dir, "b", FRESH, ""),
                None,
            ),
            (
                "established on one side only, both kept",
                facts(Dir, "a", FRESH, ""),
                facts(Dir, "b", EST, "a"),
                None,
            ),
            (
                "established, one root lost its state: refused instead",
                facts(Dir, "a", EST, "b"),
                facts(Dir, "b", NoState, ""),
                None,
            ),
        ];
        for (what, a, b, expected) in cases {
            let root = |name, facts| Root {
                name,
                source_only: false,
                facts,
            };
            let found = unfinished_on_one_side(root("A", &a), root("B", &b));
            assert_eq!(found.map(|(lone, _)| lone.name), expected, "{what}");
            if let Some((lone, other)) = found {
                assert_ne!(lone.name, other.name, "{what}");
            }
        }
    }

    #[test]
    fn x_gets_past_every_root_check_but_a_file_and_a_missing_source() {
        let est = facts(RootState::Dir, "a", EST, "b");
        fn root<'a>(name: &'a str, source_only: bool, facts: &'a SessionFacts) -> Root<'a> {
            Root {
                name,
                source_only,
                facts,
            }
        }
        let cases = [
            (facts(RootState::Missing, "b", State::None, ""), false, true),
            (facts(RootState::Dir, "b", State::None, ""), false, true),
            (facts(RootState::Dir, "c", State::IdOnly, ""), false, true),
            (facts(RootState::NotDir, "b", State::None, ""), false, false),
            (facts(RootState::Missing, "b", State::None, ""), true, false),
        ];
        for (other, source_only, passes) in cases {
            let checked = check_roots(
                root("A", false, &est),
                root("B", source_only, &other),
                false,
            );
            assert!(checked.is_err(), "{other:?} is refused without -x");
            let reset = check_roots(root("A", false, &est), root("B", source_only, &other), true);
            assert_eq!(reset.is_ok(), passes, "{other:?} with -x: {reset:?}");
        }
    }

    #[test]
    fn messages_say_what_was_found_and_the_way_past() {
        let a = facts(RootState::Dir, "a", State::None, "");
        let b = facts(RootState::Dir, "b", EST, "a");
        let refusal = check_roots(
            Root {
                name: "local root /mnt/disk",
                source_only: true,
                facts: &a,
            },
            Root {
                name: "remote root far:/backup",
                source_only: false,
                facts: &b,
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(refusal.contains("local root /mnt/disk"), "{refusal}");
        assert!(refusal.contains("no state directory"), "{refusal}");
        assert!(refusal.contains("Nothing was changed"), "{refusal}");
        assert!(refusal.contains("-x"), "{refusal}");

        let gone = Refusal::RootMissing {
            root: "local root /a".into(),
            is_source: true,
        }
        .to_string();
        assert!(gone.contains("even with -x"), "{gone}");
        let emptied = check_scans(
            true,
            &[Scanned {
                name: "local root /a",
                emptied: true,
                snapshot_rows: Some(12),
                state_gone: false,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(emptied.contains("is empty"), "{emptied}");
        assert!(emptied.contains("12 entries"), "{emptied}");
        assert!(emptied.contains("-x"), "{emptied}");
    }

    #[test]
    fn an_emptied_root_stops_an_established_session_only() {
        let empty = Scanned {
            name: "A",
            emptied: true,
            snapshot_rows: Some(3),
            state_gone: false,
        };
        let full = Scanned {
            name: "B",
            emptied: false,
            snapshot_rows: Some(3),
            state_gone: false,
        };
        assert!(check_scans(true, &[full, empty]).is_err());
        assert!(check_scans(false, &[full, empty]).is_ok());
        assert!(check_scans(true, &[full, full]).is_ok());
    }

    #[test]
    fn state_gone_under_a_running_session_always_stops_it() {
        let gone = Scanned {
            name: "A",
            emptied: false,
            snapshot_rows: None,
            state_gone: true,
        };
        for established in [true, false] {
            assert!(matches!(
                check_scans(established, &[gone]),
                Err(Refusal::StateGone { .. })
            ));
        }
    }

    #[test]
    fn max_delete_parses_counts_and_percentages() {
        assert_eq!("10".parse(), Ok(MaxDelete::Count(10)));
        assert_eq!("0".parse(), Ok(MaxDelete::Count(0)));
        assert_eq!("50%".parse(), Ok(MaxDelete::Percent(50.0)));
        assert_eq!("2.5%".parse(), Ok(MaxDelete::Percent(2.5)));
        for bad in ["", "-1", "x", "101%", "-5%", "%", "1e3", "NaN%"] {
            assert!(bad.parse::<MaxDelete>().is_err(), "{bad}");
        }
        assert_eq!(MaxDelete::Percent(2.5).to_string(), "2.5%");
        assert_eq!(MaxDelete::Count(7).to_string(), "7");
    }

    #[test]
    fn max_delete_as_a_table() {
        let side = |name, planned, base| Deletes {
            name,
            planned,
            base,
        };
        let count = |n| Some(MaxDelete::Count(n));
        let percent = |p| Some(MaxDelete::Percent(p));
        // (limit, sides, refused)
        let cases = vec![
            (None, vec![side("B", 1000, 1000)], false),
            (count(10), vec![side("B", 10, 100)], false),
            (count(10), vec![side("B", 11, 100)], true),
            (count(0), vec![side("B", 0, 100)], false),
            (count(0), vec![side("B", 1, 100)], true),
            // Counted over both sides together.
            (count(10), vec![side("A", 6, 100), side("B", 5, 100)], true),
            (count(11), vec![side("A", 6, 100), side("B", 5, 100)], false),
            (percent(50.0), vec![side("B", 5, 10)], false),
            (percent(50.0), vec![side("B", 6, 10)], true),
            // A percentage is per side, each of its own base.
            (
                percent(50.0),
                vec![side("A", 5, 10), side("B", 40, 100)],
                false,
            ),
            (
                percent(50.0),
                vec![side("A", 2, 100), side("B", 6, 10)],
                true,
            ),
            (percent(100.0), vec![side("B", 10, 10)], false),
            (percent(0.0), vec![side("B", 1, 1000)], true),
            (percent(10.0), vec![side("B", 0, 0)], false),
            // Nothing to measure against: any delete is all of it.
            (percent(99.0), vec![side("B", 1, 0)], true),
        ];
        for (limit, sides, refused) in cases {
            let result = check_deletes(limit, &sides);
            assert_eq!(result.is_err(), refused, "{limit:?} {sides:?}: {result:?}");
        }
    }

    #[test]
    fn the_refusal_gives_the_planned_count_the_limit_and_the_side() {
        let too_many = check_deletes(
            Some(MaxDelete::Count(3)),
            &[
                Deletes {
                    name: "local root /a",
                    planned: 2,
                    base: 10,
                },
                Deletes {
                    name: "remote root h:/b",
                    planned: 4,
                    base: 10,
                },
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(too_many.contains("deletes 6 paths"), "{too_many}");
        assert!(too_many.contains("2 on the local root /a"), "{too_many}");
        assert!(too_many.contains("4 on the remote root h:/b"), "{too_many}");
        assert!(too_many.contains("--max-delete 3"), "{too_many}");

        let share = check_deletes(
            Some(MaxDelete::Percent(25.0)),
            &[Deletes {
                name: "remote root /b",
                planned: 3,
                base: 4,
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            share.contains("3 of the 4 paths of the remote root /b (75%)"),
            "{share}"
        );
        assert!(share.contains("--max-delete 25%"), "{share}");
    }
}
