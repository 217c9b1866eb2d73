//! Lineage: which roots feed which. Every session adds an edge for each
//! direction data flows in it (a bidi session adds two); each root keeps
//! the edges it has learned, and both sides of a session exchange theirs at
//! the start of every run, so what one root knows spreads along the
//! sessions. A new session whose data would flow back into one of its
//! upstream roots is refused. Pure.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Data flows from root `from` to root `to` in `session`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub session: String,
}

impl Edge {
    /// One line of the lineage file: `FROM TO SESSION`.
    pub fn to_line(&self) -> String {
        format!("{} {} {}", self.from, self.to, self.session)
    }

    pub fn from_line(line: &str) -> Option<Edge> {
        let mut words = line.split_whitespace();
        let edge = Edge {
            from: words.next()?.to_string(),
            to: words.next()?.to_string(),
            session: words.next()?.to_string(),
        };
        words.next().is_none().then_some(edge)
    }
}

/// A session that would close a loop, and the path data would take back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// The new edge, then the known edges leading back to its source.
    pub edges: Vec<Edge>,
}

impl Loop {
    /// `A → B (session s1), B → C (s2), C → A (s3)`, roots by the first 8
    /// hex digits of their ids, with `names` for the roots of this session.
    pub fn describe(&self, names: &HashMap<String, String>) -> String {
        let root = |id: &String| match names.get(id) {
            Some(name) => format!("{name} ({})", short(id)),
            None => short(id).to_string(),
        };
        self.edges
            .iter()
            .map(|e| {
                format!(
                    "{} → {} (session {})",
                    root(&e.from),
                    root(&e.to),
                    e.session
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// Checks the edges `new` (one session's) against the `known` ones. The
/// session's own earlier edges are ignored, and the two edges of one bidi
/// session between the same pair of roots are no loop.
pub fn check(known: &BTreeSet<Edge>, new: &[Edge]) -> Result<(), Loop> {
    // This session's earlier runs: the same name between the same roots.
    let own = |e: &Edge| {
        new.iter().any(|n| {
            n.session == e.session
                && [&n.from, &n.to].contains(&&e.from)
                && [&n.from, &n.to].contains(&&e.to)
        })
    };
    let others: Vec<&Edge> = known.iter().filter(|e| !own(e)).collect();
    for edge in new {
        // Data arriving at `to` must never find its way back to `from`.
        if let Some(path) = path_between(&others, &edge.to, &edge.from) {
            let mut edges = vec![edge.clone()];
            edges.extend(path.into_iter().cloned());
            return Err(Loop { edges });
        }
    }
    Ok(())
}

/// The edges of a shortest path from `start` to `goal`, if there is one.
fn path_between<'e>(edges: &[&'e Edge], start: &str, goal: &str) -> Option<Vec<&'e Edge>> {
    let mut came_by: HashMap<&str, &'e Edge> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(at) = queue.pop_front() {
        if at == goal {
            let mut path = Vec::new();
            let mut node = goal;
            while node != start {
                let edge = came_by[node];
                path.push(edge);
                node = edge.from.as_str();
            }
            path.reverse();
            return Some(path);
        }
        for edge in edges.iter().filter(|e| e.from == at) {
            if seen.insert(edge.to.as_str()) {
                came_by.insert(edge.to.as_str(), edge);
                queue.push_back(edge.to.as_str());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(from: &str, to: &str, session: &str) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            session: session.into(),
        }
    }

    fn known(edges: &[Edge]) -> BTreeSet<Edge> {
        edges.iter().cloned().collect()
    }

    #[test]
    fn direct_reverse_session_is_a_loop() {
        let err = check(&known(&[e("A", "B", "s1")]), &[e("B", "A", "s2")]).unwrap_err();
        assert_eq!(err.edges, vec![e("B", "A", "s2"), e("A", "B", "s1")]);
    }

    #[test]
    fn a_chain_closed_back_is_a_loop() {
        let chain = known(&[e("A", "B", "s1"), e("B", "C", "s2")]);
        assert!(check(&chain, &[e("C", "A", "s3")]).is_err());
        // Further down the chain, or fanning out, is fine.
        assert!(check(&chain, &[e("C", "D", "s3")]).is_ok());
        assert!(check(&chain, &[e("A", "C", "s3")]).is_ok());
        assert!(check(&chain, &[e("B", "D", "s3")]).is_ok());
    }

    #[test]
    fn one_bidi_session_is_no_loop_but_a_second_path_back_is() {
        let bidi = [e("A", "B", "b"), e("B", "A", "b")];
        assert!(check(&known(&[]), &bidi).is_ok());
        // Running it again: its own edges do not count against it.
        assert!(check(&known(&bidi), &bidi).is_ok());
        // Another session between the same roots, either way, is a loop;
        // so is the same name reused between other roots.
        assert!(check(&known(&bidi), &[e("A", "B", "push")]).is_err());
        let reused = known(&[e("A", "B", "s"), e("B", "C", "t")]);
        assert!(check(&reused, &[e("C", "A", "s")]).is_err());
        // A bidi pair fed by a third root is fine; feeding back is not.
        assert!(check(&known(&bidi), &[e("C", "A", "in")]).is_ok());
        assert!(check(&known(&bidi), &[e("B", "C", "out")]).is_ok());
        let fed = known(&[e("A", "B", "b"), e("B", "A", "b"), e("B", "C", "out")]);
        assert!(check(&fed, &[e("C", "A", "back")]).is_err());
    }

    #[test]
    fn lines_round_trip() {
        let edge = e("0123abcd", "ffee0011", "push-1234");
        assert_eq!(Edge::from_line(&edge.to_line()), Some(edge));
        assert_eq!(Edge::from_line("a b"), None);
        assert_eq!(Edge::from_line("a b c d"), None);
    }
}
