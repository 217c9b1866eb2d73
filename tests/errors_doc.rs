//! `docs/errors.md` lists every error message a user can meet; these tests
//! keep that list and the code in step, and run the real binary into a few
//! of the listed errors.
//!
//! How the code side is read: `src/**/*.rs` (test modules left out) is cut
//! into tokens, and the format string of each *error constructor* is a
//! message: `#[error("…")]`, `bail!`, `anyhow!`, `ensure!`, `.context(…)`,
//! `.with_context(…)`, `Failure::error` / `Failure::usage` and the config
//! file's `.error(…)` helpers, `EndpointError::{Root, Refused, Lost}`,
//! `eprintln!("… snapsync: error: …")`, and the `String` errors of value
//! parsers (`Err(…)`, `.map_err(…)`, `.ok_or_else(…)`). Within such a call
//! the message is a string literal given as an argument, or the format
//! string of a `format!` that is an argument or a closure's body (one nested
//! deeper builds a detail, not the message). A message made only of placeholders
//! (`"{0}"`, `"{what}: {source}"`) passes another message on and is not one
//! itself.
//!
//! How the doc side is read: each line of a ```` ```text ```` block in
//! `docs/errors.md` is a message, with `{name}` for what varies; a leading
//! `snapsync: error: ` is dropped. Lines starting with `error: ` are clap's
//! usage errors, which come from the library, not from our code. The
//! paragraph after a block starts with `Exit N.`: the exit code.
//!
//! Both sides are compared with every `{…}` placeholder written `{}`: the
//! sets must be equal.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_code, assert_stderr_says, snapsync, stderr, write};

/// Messages an error constructor holds that no user meets, each with the
/// reason. Keep this short: a message a user can see belongs in the doc.
const INTERNAL: &[(&str, &str)] = &[
    // Details of a corrupt snapshot row, shown inside the documented
    // "state database {path} is unreadable or corrupt ({detail})".
    ("an unknown kind", "detail of a corrupt-database message"),
    ("a malformed hash", "detail of a corrupt-database message"),
    // `auto`'s data channel attempt runs on a thread of its own; it
    // panicking is a bug, not something a user can bring about.
    (
        "the connecting thread panicked",
        "a bug's detail inside the documented data channel warning",
    ),
];

// ---------------------------------------------------------------------
// Reading Rust source.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// A string literal, escapes decoded (byte and C strings are `Other`).
    Str(String),
    Punct(char),
    /// Numbers, char literals, lifetimes, byte strings.
    Other,
}

/// Cuts Rust source into tokens, each with its line, dropping comments.
/// Handles escapes, `\` line continuations, raw strings (`r#"…"#`), byte
/// strings, char literals and lifetimes.
fn tokenize(src: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            let (text, next, lines) = quoted(&chars, i + 1);
            tokens.push((Token::Str(text), start_line));
            line += lines;
            i = next;
        } else if let Some((prefix, hashes)) = raw_start(&chars, i) {
            // r"…", r#"…"#, br"…", cr#"…"#
            let body = i + prefix + hashes + 1;
            let mut j = body;
            let close = |j: usize| chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#');
            while j < chars.len() && !close(j) {
                j += 1;
            }
            let text: String = chars[body..j.min(chars.len())].iter().collect();
            line += text.matches('\n').count();
            let byte_or_c = prefix == 2;
            tokens.push((
                if byte_or_c {
                    Token::Other
                } else {
                    Token::Str(text)
                },
                start_line,
            ));
            i = j + 1 + hashes;
        } else if (c == 'b' || c == 'c') && at(i + 1) == '"' {
            let (_, next, lines) = quoted(&chars, i + 2);
            tokens.push((Token::Other, start_line));
            line += lines;
            i = next;
        } else if c == 'b' && at(i + 1) == '\'' {
            i = char_literal_end(&chars, i + 1);
            tokens.push((Token::Other, start_line));
        } else if c == '\'' {
            if at(i + 1) == '\\' || at(i + 2) == '\'' {
                i = char_literal_end(&chars, i);
            } else {
                // A lifetime or label.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            tokens.push((Token::Other, start_line));
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            // r#ident
            if word == "r" && at(j) == '#' && (at(j + 1).is_alphabetic() || at(j + 1) == '_') {
                let mut k = j + 1;
                while k < chars.len() && (chars[k].is_alphanumeric() || chars[k] == '_') {
                    k += 1;
                }
                tokens.push((Token::Ident(chars[j + 1..k].iter().collect()), start_line));
                i = k;
            } else {
                tokens.push((Token::Ident(word), start_line));
                i = j;
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push((Token::Other, start_line));
        } else {
            tokens.push((Token::Punct(c), start_line));
            i += 1;
        }
    }
    tokens
}

/// `r`, `br` or `cr` followed by `#`s and `"`: (prefix length, hashes).
fn raw_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let prefix = match (chars.get(i), chars.get(i + 1)) {
        (Some('r'), _) => 1,
        (Some('b' | 'c'), Some('r')) => 2,
        _ => return None,
    };
    // Not the end of an identifier such as `for`.
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    let mut j = i + prefix;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((prefix, j - i - prefix))
}

/// Reads a `"…"` body from `start` (after the quote): the decoded text, the
/// index after the closing quote, and the newlines crossed.
fn quoted(chars: &[char], start: usize) -> (String, usize, usize) {
    let mut out = String::new();
    let mut i = start;
    let mut lines = 0;
    while i < chars.len() {
        match chars[i] {
            '"' => return (out, i + 1, lines),
            '\\' => {
                let next = chars.get(i + 1).copied().unwrap_or('\0');
                i += 2;
                match next {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '\\' | '"' | '\'' => out.push(next),
                    'x' => {
                        let hex: String = chars[i..i + 2].iter().collect();
                        out.push(u8::from_str_radix(&hex, 16).unwrap_or(b'?') as char);
                        i += 2;
                    }
                    'u' => {
                        let close = (i..chars.len()).find(|&k| chars[k] == '}').unwrap_or(i);
                        let hex: String = chars[i + 1..close].iter().collect();
                        out.push(
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('?'),
                        );
                        i = close + 1;
                    }
                    '\n' => {
                        // A line continuation: the newline and the next
                        // line's leading whitespace are not in the string.
                        lines += 1;
                        while i < chars.len() && chars[i].is_whitespace() {
                            if chars[i] == '\n' {
                                lines += 1;
                            }
                            i += 1;
                        }
                    }
                    other => out.push(other),
                }
            }
            c => {
                if c == '\n' {
                    lines += 1;
                }
                out.push(c);
                i += 1;
            }
        }
    }
    (out, i, lines)
}

/// The index after a char literal starting at the quote `start`.
fn char_literal_end(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if chars.get(i) == Some(&'\\') {
        i += 2;
    } else {
        i += 1;
    }
    while i < chars.len() && chars[i] != '\'' {
        i += 1;
    }
    i + 1
}

/// The tokens without `#[cfg(test)]` items (test modules and helpers).
fn without_tests(tokens: Vec<(Token, usize)>) -> Vec<(Token, usize)> {
    let pattern = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let is_cfg_test = tokens.len() - i >= pattern.len()
            && tokens[i..i + pattern.len()]
                .iter()
                .map(|(t, _)| t)
                .eq(pattern.iter());
        if !is_cfg_test {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        // Skip the item: up to its `;`, or its `{ … }` block.
        i += pattern.len();
        let mut depth = 0i32;
        while i < tokens.len() {
            match tokens[i].0 {
                Token::Punct('(' | '[') => depth += 1,
                Token::Punct(')' | ']') => depth -= 1,
                Token::Punct(';') if depth == 0 => {
                    i += 1;
                    break;
                }
                Token::Punct('{') if depth == 0 => {
                    i = matching(&tokens, i) + 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// The index of the bracket closing the one at `open`.
fn matching(tokens: &[(Token, usize)], open: usize) -> usize {
    let mut depth = 0;
    for (i, (token, _)) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len() - 1
}

fn ident(tokens: &[(Token, usize)], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some((Token::Ident(name), _)) => Some(name),
        _ => None,
    }
}

fn punct(tokens: &[(Token, usize)], i: usize, c: char) -> bool {
    matches!(tokens.get(i), Some((Token::Punct(p), _)) if *p == c)
}

/// If an error constructor starts at `i`, the index of its opening
/// bracket and whether it is an `eprintln!`.
fn constructor(tokens: &[(Token, usize)], i: usize) -> Option<(usize, bool)> {
    let name = ident(tokens, i)?;
    let after_path = i > 0 && (punct(tokens, i - 1, ':') || punct(tokens, i - 1, '.'));
    let after_dot = i > 0 && punct(tokens, i - 1, '.');
    // Macros: bail!(…), anyhow!(…), ensure!(…), eprintln!(…).
    if matches!(name, "bail" | "anyhow" | "ensure" | "eprintln") && punct(tokens, i + 1, '!') {
        return Some((i + 2, name == "eprintln"));
    }
    if !punct(tokens, i + 1, '(') {
        return None;
    }
    let call = Some((i + 1, false));
    match name {
        // #[error("…")]
        "error" if i >= 2 && punct(tokens, i - 1, '[') && punct(tokens, i - 2, '#') => call,
        // Failure::error / Failure::usage, config.error(…), file.error(line, …)
        "error" | "usage" if after_path => call,
        "context" | "with_context" if after_dot => call,
        "Root" | "Refused" | "Lost" if i >= 3 && ident(tokens, i - 3) == Some("EndpointError") => {
            call
        }
        // String errors (value parsers turn them into usage errors).
        "Err" if !after_path => call,
        "map_err" | "ok_or_else" | "ok_or" if after_dot => call,
        _ => None,
    }
}

/// A message found in the code, and where.
#[derive(Debug, Clone)]
struct Found {
    text: String,
    place: String,
}

/// Every error message in `src` but the internal ones, keyed by its
/// normalised form.
fn code_messages() -> BTreeMap<String, Found> {
    let mut found = scanned_messages();
    found.retain(|key, _| !INTERNAL.iter().any(|(m, _)| normalise(m) == *key));
    found
}

/// Every message the error constructors in `src` hold, keyed by its
/// normalised form; those made only of placeholders left out.
fn scanned_messages() -> BTreeMap<String, Found> {
    let mut found = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in rust_files(&root.join("src")) {
        let src = fs::read_to_string(&file).expect("read source");
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (text, line) in messages_in(&src) {
            let key = normalise(&text);
            if only_placeholders(&key) {
                continue;
            }
            found.entry(key).or_insert(Found {
                text,
                place: format!("{rel}:{line}"),
            });
        }
    }
    found
}

/// The messages of the error constructors in one source file.
fn messages_in(src: &str) -> Vec<(String, usize)> {
    let tokens = without_tests(tokenize(src));
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        let Some((open, eprint)) = constructor(&tokens, i) else {
            continue;
        };
        let close = matching(&tokens, open);
        let args = &tokens[open..=close];
        let mut literals = Vec::new();
        for (k, (token, line)) in args.iter().enumerate() {
            let Token::Str(text) = token else { continue };
            // An argument of the constructor itself: after its bracket
            // or a comma at its own level.
            let direct = k > 0 && {
                let before = &args[k - 1].0;
                let depth = depth_at(args, k);
                depth == 1 && matches!(before, Token::Punct('(' | ','))
            };
            // The format string of a format! that is an argument, or a
            // closure's body (`|e| format!(…)`, `|e| { format!(…) }`), not
            // one nested deeper.
            let formatted = k >= 3
                && matches!(&args[k - 1].0, Token::Punct('(' | '[' | '{'))
                && args[k - 2].0 == Token::Punct('!')
                && matches!(&args[k - 3].0, Token::Ident(m) if m == "format")
                && match depth_at(args, k - 3) {
                    1 => true,
                    2 => {
                        k >= 5
                            && args[k - 4].0 == Token::Punct('{')
                            && args[k - 5].0 == Token::Punct('|')
                    }
                    _ => false,
                };
            if direct || formatted {
                literals.push((text.clone(), *line));
            }
        }
        for (text, line) in literals {
            if eprint {
                // Only what is printed as an error; the prefix is not
                // part of the message.
                if let Some((_, message)) = text.split_once("snapsync: error: ") {
                    out.push((message.to_string(), line));
                }
            } else {
                out.push((text, line));
            }
        }
    }
    out
}

/// How deep in brackets token `k` of `args` sits (the opening is 1).
fn depth_at(args: &[(Token, usize)], k: usize) -> i32 {
    let mut depth = 0;
    for (token, _) in &args[..k] {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every `{…}` placeholder written `{}` (`{{` and `}}` are braces).
fn normalise(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                out.push_str("{}");
            }
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

/// True when a message has no words of its own (it passes others on).
fn only_placeholders(normalised: &str) -> bool {
    !normalised
        .replace("{}", "")
        .chars()
        .any(char::is_alphabetic)
}

// ---------------------------------------------------------------------
// Reading docs/errors.md.

const PREFIX: &str = "snapsync: error: ";

/// A message as the doc lists it.
#[derive(Debug, Clone)]
struct Documented {
    text: String,
    exit: i32,
    line: usize,
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md")
}

/// Every message of the doc's ```text blocks, our own and clap's.
fn doc_messages() -> Vec<Documented> {
    let doc = fs::read_to_string(doc_path()).expect("docs/errors.md");
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let is_text = fence == "```text";
        let start = i + 1;
        i = start;
        while i < lines.len() && !lines[i].starts_with("```") {
            i += 1;
        }
        let block = &lines[start..i.min(lines.len())];
        i += 1;
        if !is_text {
            continue;
        }
        // The exit code: the next paragraph starts with `Exit N.`
        let exit = lines[i.min(lines.len())..]
            .iter()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.strip_prefix("Exit "))
            .and_then(|l| {
                let digits: String = l.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "docs/errors.md:{}: a ```text block must be followed by `Exit N.`",
                    start
                )
            });
        for (k, text) in block.iter().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            out.push(Documented {
                text: text.trim().to_string(),
                exit,
                line: start + k + 1,
            });
        }
    }
    out
}

/// Our own messages (not clap's), keyed by normalised form.
fn own_doc_messages() -> BTreeMap<String, Documented> {
    doc_messages()
        .into_iter()
        .filter(|d| !d.text.starts_with("error: "))
        .map(|d| {
            let text = d.text.strip_prefix(PREFIX).unwrap_or(&d.text).to_string();
            (normalise(&text), Documented { text, ..d })
        })
        .collect()
}

// ---------------------------------------------------------------------
// The list and the code agree.

#[test]
fn every_error_message_in_the_code_is_in_docs_errors_md() {
    let doc = own_doc_messages();
    let missing: Vec<String> = code_messages()
        .into_iter()
        .filter(|(key, _)| !doc.contains_key(key))
        .map(|(_, f)| format!("  {}: {}", f.place, f.text))
        .collect();
    assert!(
        missing.is_empty(),
        "{} error message(s) in the code are not in docs/errors.md; add each (message, \
         cause, fix, exit code), or list it in INTERNAL in tests/errors_doc.rs if no user \
         can meet it:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn every_message_in_docs_errors_md_is_in_the_code() {
    let code = code_messages();
    let stale: Vec<String> = own_doc_messages()
        .into_iter()
        .filter(|(key, _)| !code.contains_key(key))
        .map(|(_, d)| format!("  docs/errors.md:{}: {}", d.line, d.text))
        .collect();
    assert!(
        stale.is_empty(),
        "{} message(s) in docs/errors.md are no longer in the code; correct or remove them:\n{}",
        stale.len(),
        stale.join("\n")
    );
}

#[test]
fn every_internal_message_is_still_in_the_code() {
    let scanned = scanned_messages();
    for (message, _) in INTERNAL {
        assert!(
            scanned.contains_key(&normalise(message)),
            "INTERNAL in tests/errors_doc.rs lists {message:?}, which the code no longer holds; remove it"
        );
    }
}

#[test]
fn documented_exit_codes_are_known() {
    // 0 for the warnings that come from error types.
    for d in doc_messages() {
        assert!(
            [0, 1, 2, 3].contains(&d.exit),
            "docs/errors.md:{}: exit {} for {}",
            d.line,
            d.exit,
            d.text
        );
    }
}

#[test]
fn the_scanner_reads_every_way_of_writing_a_message() {
    let src = r####"
        fn f() -> Result<(), Failure> {
            // bail!("a comment is not a message");
            let c = '"'; let d = '\''; let l: &'static str = "";
            bail!(
                "multi-line {} \
                 continued",
                x
            );
            Err(Failure::usage(format!(r#"raw "quoted" {name}"#)))?;
            Err(EndpointError::Refused("plain {0}".into()))?;
            let _ = x.map_err(|e| Failure::error(format!("with {e}: {}", format!("nested {inner}"))));
            let _ = x.with_context(|| format!("closure {path}"));
            let _ = x.map_err(|e| {
                format!("block {e}")
            });
            Err(format!("`{text}`: value"))
        }
        #[derive(Debug, thiserror::Error)]
        enum E {
            #[error("typed {path}; do this")]
            A { path: String },
            #[error("{0}")]
            B(String),
            #[error(
                "the {root} is gone. {way}",
                way = if *s { "inner, not a message" } else { "nor this" }
            )]
            C { root: String, s: bool },
        }
        fn g() { eprintln!("[{}] snapsync: error: printed {e}", name); eprintln!("a warning"); }
        #[cfg(test)]
        mod tests { fn t() { bail!("in a test"); } }
        fn h() { let _ = b"bytes"; let _ = br#"raw bytes"#; bail!("after the tests"); }
    "####;
    let got: BTreeSet<String> = messages_in(src)
        .into_iter()
        .map(|(m, _)| normalise(&m))
        .filter(|m| !only_placeholders(m))
        .collect();
    let want: BTreeSet<String> = [
        "multi-line {} continued",
        "raw \"quoted\" {}",
        "plain {}",
        "with {}: {}",
        "closure {}",
        "block {}",
        "`{}`: value",
        "typed {}; do this",
        "the {} is gone. {}",
        "printed {}",
        "after the tests",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------
// The real binary prints what the doc says, with its exit code.

/// Finds `template` (as written in the doc) in the doc, and asserts that
/// `out` printed it, with the doc's exit code.
#[track_caller]
fn assert_documented_error(out: &Output, template: &str) {
    let doc = doc_messages();
    let entry = doc
        .iter()
        .find(|d| {
            let text = d.text.strip_prefix(PREFIX).unwrap_or(&d.text);
            normalise(text) == normalise(template)
        })
        .unwrap_or_else(|| panic!("not in docs/errors.md: {template}"));
    assert_code(out, entry.exit);
    let err = stderr(out);
    assert!(
        err.lines().any(|line| matches_template(line, template)),
        "stderr does not show the documented message\n  doc: {template}\n  stderr: {err}"
    );
}

/// True when `line` holds `template`, each `{…}` standing for any text;
/// the template may sit inside a longer message (after a wrapper such as
/// `refusing session `NAME`: `), but ends where the line ends.
fn matches_template(line: &str, template: &str) -> bool {
    let normal = normalise(template);
    let parts: Vec<&str> = normal.split("{}").collect();
    let Some(mut at) = line.find(parts[0]) else {
        return false;
    };
    at += parts[0].len();
    for (k, part) in parts.iter().enumerate().skip(1) {
        let last = k == parts.len() - 1;
        if last && !part.is_empty() {
            return line[at..].ends_with(part);
        }
        match line[at..].find(part) {
            Some(found) => at += found + part.len(),
            None => return false,
        }
    }
    parts.len() > 1 || at == line.len()
}

#[test]
fn template_matching() {
    assert!(matches_template(
        "snapsync: error: refusing session `s`: source directory /a does not exist; check the path. Nothing was changed",
        "source directory {root} does not exist; check the path. Nothing was changed"
    ));
    assert!(!matches_template(
        "snapsync: error: source directory /a does not exist; check the path",
        "source directory {root} does not exist; check the path. Nothing was changed"
    ));
    assert!(matches_template("error: x y z", "error: {a} y {b}"));
}

#[test]
fn missing_source_root_is_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::push(&tmp.path().join("nowhere"), &tmp.path().join("b"), &[]);
    assert_documented_error(&out, "refusing session `{session}`: {refusal}");
    assert_documented_error(
        &out,
        "the {root} is the source and does not exist; check the path. Nothing was changed",
    );
}

#[test]
fn a_root_that_is_a_file_is_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "file", b"x");
    write(tmp.path(), "a/f", b"x");
    let out = common::push(&tmp.path().join("a"), &tmp.path().join("file"), &[]);
    assert_documented_error(
        &out,
        "the {root} is not a directory; give the directory to sync. Nothing was changed",
    );
}

#[test]
fn a_held_lock_is_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a, "f", b"x");
    assert_code(&common::push(&a, &b, &["-N", "held"]), 0);
    // Hold the session's lock the way a running session does.
    let mut lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.join(".snapsync/held.lock"))
        .expect("the lock file");
    // SAFETY: flock on a descriptor this test owns; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "take the lock");
    write!(lock, "{}", std::process::id()).unwrap();
    let out = common::push(&a, &b, &["-N", "held"]);
    assert_documented_error(
        &out,
        "session `{session}` is already running (process {pid}, lock {path}); wait for it to finish or stop it",
    );
    assert!(
        stderr(&out).contains(&format!("(process {}, lock", std::process::id())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_max_delete_value_is_a_documented_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::push(
        &tmp.path().join("a"),
        &tmp.path().join("b"),
        &["--max-delete", "lots"],
    );
    assert_documented_error(
        &out,
        "error: invalid value '{value}' for '{option}': {reason}",
    );
    assert_documented_error(
        &out,
        "`{text}` is not a number of paths (N) or a percentage (P%)",
    );
}

#[test]
fn continuous_mode_timings_that_are_not_whole_numbers_are_documented_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out = common::push(&a, &b, &["-C", "--cooloff", "soon"]);
    assert_code(&out, 2);
    assert_documented_error(&out, "`{text}` is not a whole number of {unit}");
    assert_stderr_says(&out, "`soon` is not a whole number of milliseconds");
    let out = common::push(&a, &b, &["-C", "--scan-interval", "0"]);
    assert_code(&out, 2);
    assert_documented_error(&out, "`{text}`: the interval is 1 second at least");
}

#[test]
fn a_config_file_key_error_is_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    fs::write(
        &config,
        "[site]\ndirection = \"push\"\nlocal = \"a\"\nremote = \"b\"\nexclud = [\"x\"]\n",
    )
    .unwrap();
    let out = snapsync(&["run", "--config", config.to_str().unwrap(), "site"]);
    assert_documented_error(&out, "unknown key \"{key}\" in session [{name}]{hint}");
    // The file and the line come first.
    assert_stderr_says(&out, "config.toml:5: unknown key \"exclud\"");
}

#[test]
fn a_missing_config_file_is_a_documented_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nowhere.toml");
    let out = snapsync(&["run", "--config", config.to_str().unwrap(), "site"]);
    assert_documented_error(
        &out,
        "config file {path} not found; write it (see `snapsync run --help`) or give --config FILE",
    );
}

#[test]
fn an_unknown_option_is_a_documented_usage_error() {
    let out = snapsync(&["push", "--frobnicate", "a", "b"]);
    assert_documented_error(&out, "error: unexpected argument '{argument}' found");
}

#[test]
fn conflicting_options_are_a_documented_usage_error() {
    let out = snapsync(&["push", "-C", "-n", "a", "b"]);
    assert_documented_error(
        &out,
        "error: the argument '{option}' cannot be used with '{other}'",
    );
}

#[test]
fn bidi_with_hard_links_is_a_documented_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::bidi(&tmp.path().join("a"), &tmp.path().join("b"), &["-H"]);
    assert_documented_error(
        &out,
        "-H/--hard-links applies to push and pull only: bidi would have to merge two sides' links into one structure, which it does not do; sync the linked tree one way, or run bidi without -H (each name then syncs as a file of its own)",
    );
}

#[test]
fn roots_inside_each_other_are_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a/f", b"x");
    let out = common::push(&tmp.path().join("a"), &tmp.path().join("a/sub"), &[]);
    assert_documented_error(
        &out,
        "{inner} is inside {outer}; a root cannot hold the other (it would sync into itself)",
    );
}

#[test]
fn a_corrupt_state_database_is_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write(&a, "f", b"x");
    assert_code(&common::push(&a, &b, &["-N", "s"]), 0);
    for entry in fs::read_dir(a.join(".snapsync")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("s.db-") {
            fs::remove_file(path).unwrap();
        }
    }
    fs::write(a.join(".snapsync/s.db"), b"not a database, not at all").unwrap();
    let out = common::push(&a, &b, &["-N", "s"]);
    assert_documented_error(
        &out,
        "state database {path} is unreadable or corrupt ({detail}); nothing was changed. Run again with -x (--reset) to rebuild this session's snapshot from both trees",
    );
}

#[test]
fn ls_outside_any_root_is_refused_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let out = snapsync(&["ls", tmp.path().to_str().unwrap()]);
    assert_documented_error(
        &out,
        "no snapsync root holds {dir}: no .snapsync/ directory here or above; give --root DIR when the state is kept elsewhere",
    );
}
