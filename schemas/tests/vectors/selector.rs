//! `vectors/selector.json`: the selector regex language at its edges — patterns a
//! request may carry and patterns that make it undecodable, and label values each
//! pattern matches or not (PROTOCOL.md, "Selector regexes"). A pattern is parsed alone
//! under the grammar, so one that is no pattern by itself (`eu)|(x`, whose `)` would
//! close an anchoring group in a naive `^(?:…)$` wrapping) is refused and selects
//! nothing.

use super::{MAX, check_json, ping_request, read_vector};
use gearmq_schemas::codec;
use gearmq_schemas::envelope::decode_body;
use gearmq_schemas::request::{LabelMatch, MatchOp, Request, Targets, compile_selector_regex};
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn patterns() -> Vec<(String, bool, &'static str)> {
    let mut v: Vec<(String, bool, &'static str)> = [
        ("", true, "the empty pattern: matches only the empty value"),
        ("eu-[0-9]+", true, "a literal, a class, a quantifier"),
        ("web|db|cache", true, "alternation"),
        ("web|", true, "an empty branch"),
        ("()", true, "an empty group"),
        (
            "[a-z]{2}-(east|west)-[0-9]",
            true,
            "counted repetition, a group",
        ),
        (".*", true, "any value"),
        ("[^,]+", true, "a negated class"),
        ("[\\-a]", true, "an escaped '-' in a class"),
        (
            "\\\\\\.\\+\\*\\?\\(\\)\\|\\[\\]\\{\\}\\^\\$\\#\\&\\-\\~",
            true,
            "every escape",
        ),
        (
            "a#&~-/ ,",
            true,
            "'#', '&', '~', '-', '/', space and ',' are literals outside a class",
        ),
        (
            "[#&~,.*+?(){}|$]",
            true,
            "in a class only \\ [ ] ^ - need escaping",
        ),
        ("é{2}", true, "a literal is any character"),
        ("a{0}", true, "count 0"),
        ("a{128}", true, "the largest count"),
        ("a{0,128}", true, "the largest count as an upper bound"),
        ("a{3,}", true, "an open count"),
        ("(a{16}){16}", true, "weight 256, the largest"),
        ("(a{16}){16}a", false, "weight 257"),
        ("a{129}", false, "a count over 128"),
        ("a{01}", false, "a count with a leading zero"),
        ("a{2,1}", false, "a count that runs backwards"),
        ("a{", false, "an unclosed count"),
        ("a{,2}", false, "a count without its lower bound"),
        ("(", false, "an unclosed group"),
        (")", false, "a ')' that closes no group"),
        ("eu)|(x", false, "a ')' that would close an anchoring group"),
        ("[", false, "an unclosed class"),
        ("[]", false, "an empty class"),
        ("[a-]", false, "an unescaped '-' in a class"),
        ("[z-a]", false, "a range that runs backwards"),
        (
            "[[:alpha:]]",
            false,
            "an unescaped '[' in a class (no POSIX classes)",
        ),
        ("[a^]", false, "an unescaped '^' in a class, not first"),
        ("a**", false, "two quantifiers"),
        ("a*?", false, "a lazy quantifier"),
        ("*a", false, "a quantifier with nothing to repeat"),
        (
            "a|*",
            false,
            "a quantifier with nothing to repeat, after '|'",
        ),
        ("^eu", false, "an anchor ('^' must be escaped)"),
        ("eu$", false, "an anchor ('$' must be escaped)"),
        ("\\d", false, "a shorthand class"),
        ("\\w+", false, "a shorthand class"),
        (
            "\\x41",
            false,
            "an escape other than before a metacharacter or # & - ~",
        ),
        ("(?i)eu", false, "a flag"),
        (
            "(?:eu)",
            false,
            "a non-capturing group marker ('?' has nothing to repeat)",
        ),
        ("a]", false, "an unescaped ']'"),
        ("a}", false, "an unescaped '}'"),
        ("a\\", false, "a pattern ending in '\\'"),
        ("a\u{7}", false, "a control character"),
    ]
    .into_iter()
    .map(|(p, ok, why)| (p.to_string(), ok, why))
    .collect();
    v.push(("a".repeat(256), true, "256 bytes (and weight 256)"));
    v.push(("é".repeat(128) + "a", false, "257 bytes"));
    v
}

fn matches() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("", "", true),
        ("", "x", false),
        ("eu", "eu", true),
        ("eu", "eu-1", false),
        ("eu", "xeu", false),
        ("eu-[0-9]+", "eu-1", true),
        ("eu-[0-9]+", "eu-", false),
        ("eu-[0-9]+", "eu-1b", false),
        ("web|db|", "", true),
        ("web|db|", "db", true),
        ("web|db|", "webdb", false),
        ("(eu|us)-west-[0-9]", "us-west-2", true),
        ("(eu|us)-west-[0-9]", "eu-west-", false),
        (".", "é", true),
        (".", "ab", false),
        (".", "", false),
        ("[^a-z]", "é", true),
        ("[^a-z]", "A", true),
        ("[^a-z]", "m", false),
        ("[é-ë]", "ê", true),
        ("[é-ë]", "e", false),
        ("é", "e\u{301}", false),
        ("A", "a", false),
        ("a{2,3}", "a", false),
        ("a{2,3}", "aa", true),
        ("a{2,3}", "aaaa", false),
        ("a{3,}", "aaaaaaa", true),
        ("a{0}", "", true),
        ("a{0}", "a", false),
        ("[\\-a]+", "-a-", true),
        ("\\.\\*", ".*", true),
        ("\\.\\*", "xx", false),
        ("[a-z]*", "", true),
        (".*", "", true),
    ]
}

fn clause(pattern: &str) -> LabelMatch {
    LabelMatch {
        key: "zone".into(),
        op: MatchOp::Regex,
        value: pattern.into(),
    }
}

fn listing() -> Value {
    json!({
        "about": "Selector regexes (schemas/PROTOCOL.md, Selector regexes), built by schemas/tests/vectors/selector.rs. patterns: whether a request whose selector holds {\"key\": \"zone\", \"op\": \"regex\", \"value\": pattern} decodes. matches: whether a host whose label zone has the value is selected by that clause (a host without the label never is).",
        "patterns": patterns().into_iter().map(|(p, ok, why)| json!({
            "pattern": p,
            "accepted": ok,
            "why": why,
        })).collect::<Vec<_>>(),
        "matches": matches().into_iter().map(|(p, v, m)| json!({
            "pattern": p,
            "value": v,
            "matches": m,
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn selector_vectors_hold() {
    check_json("selector.json", &listing());
    let listing: Value = serde_json::from_slice(&read_vector("selector.json")).unwrap();
    for case in listing["patterns"].as_array().unwrap() {
        let pattern = case["pattern"].as_str().unwrap();
        let accepted = case["accepted"].as_bool().unwrap();
        assert_eq!(
            compile_selector_regex(pattern).is_ok(),
            accepted,
            "{pattern:?}: {}",
            case["why"]
        );
        let request = Request {
            targets: Targets::Selector(vec![clause(pattern)]),
            ..ping_request()
        };
        if !accepted {
            // A refused pattern selects nothing, whatever a value looks like.
            for value in ["eu", "eu-west-1", "a", ""] {
                let labels = BTreeMap::from([("zone".to_string(), value.to_string())]);
                assert!(
                    !clause(pattern).matches(&labels),
                    "{pattern:?} on {value:?}"
                );
            }
        }
        let decoded = decode_body::<Request>(&codec::encode(&request), MAX);
        assert_eq!(
            decoded.as_ref().map(|_| ()).map_err(|e| e.label()),
            if accepted { Ok(()) } else { Err("malformed") },
            "{pattern:?}"
        );
    }
    for case in listing["matches"].as_array().unwrap() {
        let pattern = case["pattern"].as_str().unwrap();
        let value = case["value"].as_str().unwrap();
        let labels = BTreeMap::from([("zone".to_string(), value.to_string())]);
        assert_eq!(
            clause(pattern).matches(&labels),
            case["matches"].as_bool().unwrap(),
            "{pattern:?} on {value:?}"
        );
        assert!(
            !clause(pattern).matches(&BTreeMap::new()),
            "no label, no match"
        );
    }
}
