//! The selector regex language: a small set of regular expressions whose syntax and
//! meaning PROTOCOL.md defines in full ("Selector regexes"), so that every
//! implementation agrees on which hosts a signed selector names.
//!
//! [`parse`] accepts exactly the grammar and bounds of the protocol; [`Pattern::regex`]
//! renders the parsed pattern into `regex`-crate syntax in which every character is
//! written as `\x{…}`, so no feature of that engine beyond the grammar can take part.

use std::fmt::Write as _;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Largest count in `{n}`, `{n,}`, `{n,m}`.
pub const MAX_COUNT: u32 = 128;
/// Largest weight (PROTOCOL.md: characters, multiplied out by counted repetition).
pub const MAX_WEIGHT: u64 = 256;

/// Characters that must be escaped outside a class (`\` followed by it).
const META: &[char] = &[
    '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
];
/// Characters `\` may escape: the metacharacters and `# & - ~`.
const ESCAPABLE: &[char] = &[
    '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$', '#', '&', '-', '~',
];
/// Characters that must be escaped inside a class.
const CLASS_META: &[char] = &['\\', '[', ']', '^', '-'];

/// A parsed selector pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    node: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// One of these characters (ranges inclusive, by code point), or, negated, any
    /// character outside them. `.` is the negation of nothing.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Concat(Vec<Node>),
    Alternation(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

impl Pattern {
    /// The pattern in `regex`-crate syntax, anchored to the whole value.
    pub fn regex(&self) -> String {
        let mut out = String::from(r"\A(?:");
        render(&self.node, &mut out);
        out.push_str(r")\z");
        out
    }
}

fn render(node: &Node, out: &mut String) {
    match node {
        Node::Class { negated, ranges } => {
            if !negated && ranges.len() == 1 && ranges[0].0 == ranges[0].1 {
                hex_char(ranges[0].0, out);
            } else if *negated && ranges.is_empty() {
                out.push_str("(?s:.)");
            } else {
                out.push('[');
                if *negated {
                    out.push('^');
                }
                for (lo, hi) in ranges {
                    hex_char(*lo, out);
                    if lo != hi {
                        out.push('-');
                        hex_char(*hi, out);
                    }
                }
                out.push(']');
            }
        }
        Node::Concat(nodes) => {
            for n in nodes {
                render(n, out);
            }
        }
        Node::Alternation(branches) => {
            out.push_str("(?:");
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                render(b, out);
            }
            out.push(')');
        }
        Node::Repeat { node, min, max } => {
            out.push_str("(?:");
            render(node, out);
            out.push(')');
            // Writing to a String cannot fail.
            let _ = match max {
                None => write!(out, "{{{min},}}"),
                Some(max) => write!(out, "{{{min},{max}}}"),
            };
        }
    }
}

fn hex_char(c: char, out: &mut String) {
    let _ = write!(out, r"\x{{{:x}}}", u32::from(c));
}

/// Parses `pattern` under the protocol's grammar and bounds.
pub fn parse(pattern: &str) -> Result<Pattern, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "selector regex is {} bytes, over the limit of {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    if let Some(c) = pattern.chars().find(|c| c.is_control()) {
        return Err(format!("selector regex holds the control character {c:?}"));
    }
    let mut p = Parser {
        chars: pattern.char_indices().collect(),
        at: 0,
        len: pattern.len(),
    };
    let node = p.alternation()?;
    if let Some(&(pos, c)) = p.chars.get(p.at) {
        // Only a `)` without its `(` stops the top-level alternation early.
        return Err(format!(
            "selector regex: {c:?} at byte {pos} closes no group"
        ));
    }
    let w = weight(&node);
    if w > MAX_WEIGHT {
        return Err(format!(
            "selector regex weighs {w} (characters, multiplied out by counted repetition), over the limit of {MAX_WEIGHT}"
        ));
    }
    Ok(Pattern { node })
}

/// The protocol's weight: 1 per character, class or `.`, summed, and multiplied under a
/// quantifier by the largest count written in it (`{n}`, `{n,}`: n; `{n,m}`: m), or by 1
/// when that is 0 or there is none (`*`, `+`, `?`).
fn weight(node: &Node) -> u64 {
    match node {
        Node::Class { .. } => 1,
        Node::Concat(nodes) | Node::Alternation(nodes) => {
            nodes.iter().map(weight).fold(0, u64::saturating_add)
        }
        Node::Repeat { node, min, max } => {
            let times = u64::from(max.unwrap_or(*min).max(1));
            weight(node).saturating_mul(times)
        }
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    at: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).map(|(_, c)| *c)
    }

    fn pos(&self) -> usize {
        self.chars.get(self.at).map_or(self.len, |(p, _)| *p)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn error<T>(&self, what: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("selector regex: {what} at byte {}", self.pos()))
    }

    fn alternation(&mut self) -> Result<Node, String> {
        let mut branches = vec![self.branch()?];
        while self.peek() == Some('|') {
            self.next();
            branches.push(self.branch()?);
        }
        Ok(if branches.len() == 1 {
            branches.remove(0)
        } else {
            Node::Alternation(branches)
        })
    }

    fn branch(&mut self) -> Result<Node, String> {
        let mut pieces = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            pieces.push(self.piece()?);
        }
        Ok(Node::Concat(pieces))
    }

    fn piece(&mut self) -> Result<Node, String> {
        let atom = self.atom()?;
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.next();
                let bounds = self.counts()?;
                return self.no_second_quantifier(Node::Repeat {
                    node: Box::new(atom),
                    min: bounds.0,
                    max: bounds.1,
                });
            }
            _ => return Ok(atom),
        };
        self.next();
        self.no_second_quantifier(Node::Repeat {
            node: Box::new(atom),
            min,
            max,
        })
    }

    fn no_second_quantifier(&self, node: Node) -> Result<Node, String> {
        match self.peek() {
            Some(c @ ('*' | '+' | '?' | '{')) => self.error(format!(
                "{c:?} repeats a repetition (one quantifier per atom)"
            )),
            _ => Ok(node),
        }
    }

    /// After `{`: `n}`, `n,}` or `n,m}`.
    fn counts(&mut self) -> Result<(u32, Option<u32>), String> {
        let min = self.count()?;
        match self.next() {
            Some('}') => Ok((min, Some(min))),
            Some(',') if self.peek() == Some('}') => {
                self.next();
                Ok((min, None))
            }
            Some(',') => {
                let max = self.count()?;
                if self.next() != Some('}') {
                    return self.error("a counted repetition must end with '}'");
                }
                if max < min {
                    return self.error(format!("{{{min},{max}}} counts down"));
                }
                Ok((min, Some(max)))
            }
            _ => self.error("a counted repetition is {n}, {n,} or {n,m}"),
        }
    }

    fn count(&mut self) -> Result<u32, String> {
        let mut digits = String::new();
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            digits.push(c);
            self.next();
        }
        if digits.is_empty() || digits.len() > 3 || (digits.len() > 1 && digits.starts_with('0')) {
            return self.error("a count is a number from 0 to 128, without leading zeros");
        }
        match digits.parse::<u32>() {
            Ok(n) if n <= MAX_COUNT => Ok(n),
            _ => self.error(format!("count {digits} is over {MAX_COUNT}")),
        }
    }

    fn atom(&mut self) -> Result<Node, String> {
        let Some(c) = self.peek() else {
            return self.error("a quantifier needs something to repeat");
        };
        match c {
            '(' => {
                self.next();
                let inner = self.alternation()?;
                if self.next() != Some(')') {
                    return self.error("a group opened with '(' is not closed");
                }
                Ok(inner)
            }
            '[' => {
                self.next();
                self.class()
            }
            '.' => {
                self.next();
                Ok(Node::Class {
                    negated: true,
                    ranges: Vec::new(),
                })
            }
            '\\' => {
                let c = self.escape()?;
                Ok(single(c))
            }
            '*' | '+' | '?' | '{' => self.error(format!("{c:?} has nothing to repeat")),
            c if META.contains(&c) => self.error(format!("{c:?} must be escaped as \\{c}")),
            c => {
                self.next();
                Ok(single(c))
            }
        }
    }

    /// At `\`: the escaped character.
    fn escape(&mut self) -> Result<char, String> {
        self.next();
        match self.next() {
            Some(c) if ESCAPABLE.contains(&c) => Ok(c),
            Some(c) => {
                self.at -= 1;
                self.error(format!(
                    "\\{c} is not an escape (only \\ before one of \\.+*?()|[]{{}}^$#&-~)"
                ))
            }
            None => self.error("the pattern ends with '\\'"),
        }
    }

    /// After `[`: items, then `]`.
    fn class(&mut self) -> Result<Node, String> {
        let negated = self.peek() == Some('^');
        if negated {
            self.next();
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                Some(']') if !ranges.is_empty() => {
                    self.next();
                    return Ok(Node::Class { negated, ranges });
                }
                Some(']') => return self.error("an empty class"),
                None => return self.error("a class opened with '[' is not closed"),
                Some(_) => {
                    let lo = self.class_char()?;
                    let hi = if self.peek() == Some('-') {
                        self.next();
                        self.class_char()?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return self.error(format!("the range {lo}-{hi} runs backwards"));
                    }
                    ranges.push((lo, hi));
                }
            }
        }
    }

    fn class_char(&mut self) -> Result<char, String> {
        match self.peek() {
            Some('\\') => self.escape(),
            Some(c) if CLASS_META.contains(&c) => {
                self.error(format!("{c:?} must be escaped in a class as \\{c}"))
            }
            Some(c) => {
                self.next();
                Ok(c)
            }
            None => self.error("a class opened with '[' is not closed"),
        }
    }
}

fn single(c: char) -> Node {
    Node::Class {
        negated: false,
        ranges: vec![(c, c)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_edges() {
        for ok in [
            "",
            "eu",
            "eu-[0-9]+",
            "web|db|",
            "(eu|us)-west-[0-9]",
            ".*",
            "a{0}",
            "a{3,}",
            "a{2,5}",
            "[\\-a]",
            "[^a-z]",
            "\\.\\*",
            "()",
            "a#&~-",
            "é.",
        ] {
            assert!(parse(ok).is_ok(), "{ok}: {:?}", parse(ok));
        }
        for bad in [
            "(",
            ")",
            "eu)|(x",
            "[",
            "[]",
            "[a-]",
            "[z-a]",
            "a**",
            "a*?",
            "*a",
            "a{",
            "a{1",
            "a{2,1}",
            "a{129}",
            "a{01}",
            "^eu",
            "eu$",
            "\\d",
            "(?i)eu",
            "[[:alpha:]]",
            "a]",
            "a}",
            "\\",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weight_multiplies_out_counted_repetition() {
        let w = |p: &str| weight(&parse(p).unwrap().node);
        assert_eq!(w("abc"), 3);
        assert_eq!(w("a|bc"), 3);
        assert_eq!(w("[a-z]+"), 1);
        assert_eq!(w("(ab){3}"), 6);
        assert_eq!(w("(ab){3,}"), 6);
        assert_eq!(w("a{0}b?c*"), 3);
        assert_eq!(w("a{2,7}"), 7);
        assert_eq!(w("(a{4}){4}"), 16);
        assert!(parse("((a{16}){16})").is_ok());
        assert!(parse("((a{16}){16})a").is_err());
    }
}
