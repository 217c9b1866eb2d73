//! Include/exclude rules: which paths a session syncs. Pure.
//!
//! Rules are tried in order and the first that matches decides; a path no
//! rule matches is included. Patterns are globs (`*` and `?` stay inside one
//! component, `**` crosses them, `[..]` is a class). A leading `/` anchors the
//! pattern at the root, otherwise it may match at any depth; a trailing `/`
//! makes it match directories only. An excluded directory excludes all it
//! holds. `.snapsync/` at the root and temporary names are always excluded.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

use crate::model::{Kind, RelPath};

/// Prefix of every temporary name snapsync creates inside a root.
pub const TEMP_PREFIX: &[u8] = b".snapsync-tmp-";
/// The state directory's name at the top of a root.
pub const STATE_DIR_NAME: &str = ".snapsync";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RuleKind {
    Include,
    Exclude,
}

/// A rule as the user wrote it, before compiling; kept so a session can
/// record its filters and notice when they change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleSpec {
    pub kind: RuleKind,
    pub pattern: String,
}

impl RuleSpec {
    pub fn to_line(&self) -> String {
        let sign = match self.kind {
            RuleKind::Include => '+',
            RuleKind::Exclude => '-',
        };
        format!("{sign} {}", self.pattern)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid filter pattern `{pattern}`: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("{file}:{line}: expected `+ PATTERN` or `- PATTERN`, found `{text}`")]
    BadLine {
        file: String,
        line: usize,
        text: String,
    },
    #[error("cannot read filter file {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

/// Parses a filter file: one `+ PAT` or `- PAT` per line, blank and `#` lines ignored.
pub fn parse_filter_file(path: &Path) -> Result<Vec<RuleSpec>, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
        file: path.display().to_string(),
        source,
    })?;
    parse_filter_lines(&text, &path.display().to_string())
}

pub fn parse_filter_lines(text: &str, file: &str) -> Result<Vec<RuleSpec>, FilterError> {
    let mut rules = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let kind = match line.as_bytes()[0] {
            b'+' => RuleKind::Include,
            b'-' => RuleKind::Exclude,
            _ => {
                return Err(FilterError::BadLine {
                    file: file.to_string(),
                    line: index + 1,
                    text: line.to_string(),
                })
            }
        };
        let pattern = line[1..].trim_start();
        if pattern.is_empty() || !line[1..].starts_with(' ') {
            return Err(FilterError::BadLine {
                file: file.to_string(),
                line: index + 1,
                text: line.to_string(),
            });
        }
        rules.push(RuleSpec {
            kind,
            pattern: pattern.to_string(),
        });
    }
    Ok(rules)
}

#[derive(Debug, Clone)]
struct Rule {
    kind: RuleKind,
    dir_only: bool,
    matcher: GlobMatcher,
}

/// Compiled rules. Cheap to clone and share between scanning threads.
/// On the wire they travel as their rule specs and are compiled again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "FilterSpecs", into = "FilterSpecs")]
pub struct Filters {
    rules: Vec<Rule>,
    specs: Vec<RuleSpec>,
    /// Extra root-relative paths that are never synced (a state or backup
    /// directory that lives inside the root).
    fixed_excludes: Vec<RelPath>,
}

/// The wire form of [`Filters`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FilterSpecs {
    rules: Vec<RuleSpec>,
    fixed_excludes: Vec<RelPath>,
}

impl From<Filters> for FilterSpecs {
    fn from(filters: Filters) -> Self {
        FilterSpecs {
            rules: filters.specs,
            fixed_excludes: filters.fixed_excludes,
        }
    }
}

impl TryFrom<FilterSpecs> for Filters {
    type Error = FilterError;
    fn try_from(specs: FilterSpecs) -> Result<Self, FilterError> {
        let mut filters = Filters::new(&specs.rules)?;
        filters.fixed_excludes = specs.fixed_excludes;
        Ok(filters)
    }
}

/// Longest filter pattern accepted, in bytes: longer than any path, and short
/// enough that its matcher always compiles (globset panics when a pattern's
/// regex outgrows its size limit, as one of 150,000 `?` does).
pub const MAX_PATTERN: usize = 4096;

impl Filters {
    pub fn new(specs: &[RuleSpec]) -> Result<Self, FilterError> {
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.pattern.len() > MAX_PATTERN {
                let start: String = spec.pattern.chars().take(40).collect();
                return Err(FilterError::BadPattern {
                    pattern: format!("{start}..."),
                    reason: format!("longer than {MAX_PATTERN} bytes"),
                });
            }
            let mut pattern = spec.pattern.as_str();
            let dir_only = pattern.len() > 1 && pattern.ends_with('/');
            if dir_only {
                pattern = &pattern[..pattern.len() - 1];
            }
            let anchored = pattern.starts_with('/');
            let body = pattern.trim_start_matches('/');
            if body.is_empty() {
                return Err(FilterError::BadPattern {
                    pattern: spec.pattern.clone(),
                    reason: "the pattern matches nothing".into(),
                });
            }
            let glob = if anchored || body.starts_with("**/") {
                body.to_string()
            } else {
                format!("**/{body}")
            };
            let matcher = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| FilterError::BadPattern {
                    pattern: spec.pattern.clone(),
                    reason: e.kind().to_string(),
                })?
                .compile_matcher();
            rules.push(Rule {
                kind: spec.kind,
                dir_only,
                matcher,
            });
        }
        Ok(Filters {
            rules,
            specs: specs.to_vec(),
            fixed_excludes: Vec::new(),
        })
    }

    /// The rules as filter-file lines, to record with a session.
    pub fn describe(&self) -> String {
        self.specs
            .iter()
            .map(RuleSpec::to_line)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Never sync `path` (and what is under it), whatever the rules say.
    pub fn exclude_fixed(&mut self, path: RelPath) {
        if !path.is_root() && !self.fixed_excludes.contains(&path) {
            self.fixed_excludes.push(path);
        }
    }

    /// Decides `path` by itself, assuming its parent directory is included:
    /// what a walker that does not descend into excluded directories asks.
    pub fn includes_entry(&self, path: &RelPath, kind: Kind) -> bool {
        let name = path.file_name();
        if name.starts_with(TEMP_PREFIX) {
            return false;
        }
        if path.depth() == 1 && name == STATE_DIR_NAME.as_bytes() {
            return false;
        }
        if self.fixed_excludes.iter().any(|fixed| fixed == path) {
            return false;
        }
        let candidate = Path::new(OsStr::from_bytes(path.as_bytes()));
        for rule in &self.rules {
            if rule.dir_only && kind != Kind::Dir {
                continue;
            }
            if rule.matcher.is_match(candidate) {
                return rule.kind == RuleKind::Include;
            }
        }
        true
    }

    /// Decides `path` in full: it is included when it and every directory
    /// above it are.
    pub fn includes(&self, path: &RelPath, kind: Kind) -> bool {
        if path.is_root() {
            return true;
        }
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor {
            if dir.is_root() {
                break;
            }
            if !self.includes_entry(&dir, Kind::Dir) {
                return false;
            }
            ancestor = dir.parent();
        }
        self.includes_entry(path, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &str)]) -> Filters {
        let specs: Vec<RuleSpec> = list
            .iter()
            .map(|(sign, pattern)| RuleSpec {
                kind: if *sign == "+" {
                    RuleKind::Include
                } else {
                    RuleKind::Exclude
                },
                pattern: pattern.to_string(),
            })
            .collect();
        Filters::new(&specs).unwrap()
    }

    fn p(s: &[u8]) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn overlong_patterns_are_refused_not_compiled() {
        let spec = |pattern: String| RuleSpec {
            kind: RuleKind::Exclude,
            pattern,
        };
        assert!(Filters::new(&[spec("?".repeat(MAX_PATTERN))]).is_ok());
        assert!(matches!(
            Filters::new(&[spec("?".repeat(300_000))]),
            Err(FilterError::BadPattern { .. })
        ));
    }

    #[test]
    fn unanchored_pattern_matches_at_any_depth() {
        let f = rules(&[("-", "*.tmp")]);
        assert!(!f.includes(&p(b"a.tmp"), Kind::File));
        assert!(!f.includes(&p(b"x/y/a.tmp"), Kind::File));
        assert!(f.includes(&p(b"a.tmpx"), Kind::File));
    }

    #[test]
    fn leading_slash_anchors_at_root() {
        let f = rules(&[("-", "/build")]);
        assert!(!f.includes(&p(b"build"), Kind::Dir));
        assert!(!f.includes(&p(b"build/x.o"), Kind::File));
        assert!(f.includes(&p(b"src/build"), Kind::Dir));
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let f = rules(&[("-", "cache/")]);
        assert!(!f.includes(&p(b"a/cache"), Kind::Dir));
        assert!(!f.includes(&p(b"a/cache/x"), Kind::File));
        assert!(f.includes(&p(b"a/cache"), Kind::File));
    }

    #[test]
    fn star_stays_in_one_component_and_double_star_crosses() {
        let f = rules(&[("-", "/src/*.o")]);
        assert!(!f.includes(&p(b"src/a.o"), Kind::File));
        assert!(f.includes(&p(b"src/sub/a.o"), Kind::File));
        let f = rules(&[("-", "/src/**/*.o")]);
        assert!(!f.includes(&p(b"src/sub/deep/a.o"), Kind::File));
        assert!(!f.includes(&p(b"src/a.o"), Kind::File));
    }

    #[test]
    fn first_match_wins() {
        let f = rules(&[("+", "keep.log"), ("-", "*.log")]);
        assert!(f.includes(&p(b"d/keep.log"), Kind::File));
        assert!(!f.includes(&p(b"d/other.log"), Kind::File));
        let f = rules(&[("-", "*.log"), ("+", "keep.log")]);
        assert!(!f.includes(&p(b"d/keep.log"), Kind::File));
    }

    #[test]
    fn question_mark_and_classes() {
        let f = rules(&[("-", "file?.[ab]")]);
        assert!(!f.includes(&p(b"file1.a"), Kind::File));
        assert!(f.includes(&p(b"file1.c"), Kind::File));
        assert!(f.includes(&p(b"file12.a"), Kind::File));
    }

    #[test]
    fn excluded_directory_excludes_its_contents() {
        let f = rules(&[("+", "*.rs"), ("-", "target/")]);
        assert!(!f.includes(&p(b"target/x.rs"), Kind::File));
    }

    #[test]
    fn state_dir_and_temp_names_are_always_excluded() {
        let f = Filters::default();
        assert!(!f.includes(&p(b".snapsync"), Kind::Dir));
        assert!(!f.includes(&p(b".snapsync/id"), Kind::File));
        assert!(f.includes(&p(b"sub/.snapsync"), Kind::Dir));
        assert!(!f.includes(&p(b"d/.snapsync-tmp-123"), Kind::File));
    }

    #[test]
    fn non_utf8_names_are_matched() {
        let f = rules(&[("-", "*.bin")]);
        assert!(!f.includes(&p(b"caf\xe9.bin"), Kind::File));
        assert!(f.includes(&p(b"caf\xe9.txt"), Kind::File));
    }

    #[test]
    fn filter_file_lines() {
        let specs = parse_filter_lines("# comment\n\n+ *.rs\n- target/\n", "f").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].kind, RuleKind::Include);
        assert_eq!(specs[1].pattern, "target/");
        let err = parse_filter_lines("* nope\n", "rules.txt").unwrap_err();
        assert!(err.to_string().contains("rules.txt:1"), "{err}");
    }
}
