//! Label selector regexes match the whole label value, and only patterns that are
//! regexes on their own are accepted.
//!
//! `compile_selector_regex` anchors a pattern by wrapping it as `^(?:PATTERN)$`. A
//! pattern with an unbalanced `)` closes that group early, so `eu)|(x` becomes
//! `^(?:eu)|(x)$`: it compiles although `eu)|(x` is no regex, and it matches any value
//! starting with `eu`. Hosts built on another regex engine, which would refuse the
//! pattern or anchor it differently, then disagree about who is a target of the same
//! signed request, and a selector shown to a person (audit, CLI) does not mean what it
//! reads. So the pattern is parsed alone before it is wrapped, and refused if that fails.

use gearmq_schemas::codec;
use gearmq_schemas::envelope;
use gearmq_schemas::request::{
    LabelMatch, MatchOp, Request, Targets, compile_selector_regex, reply_queue_name,
};
use gearmq_schemas::{ActionName, DEFAULT_MAX_MESSAGE_BYTES, Name, VERSION};
use std::collections::BTreeMap;
use uuid::Uuid;

fn zone(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("zone".to_string(), value.to_string())])
}

fn regex_clause(pattern: &str) -> LabelMatch {
    LabelMatch {
        key: "zone".into(),
        op: MatchOp::Regex,
        value: pattern.into(),
    }
}

fn request_with(targets: Targets) -> Request {
    let caller = Name::new("ops").unwrap();
    Request {
        kind: "request".into(),
        version: VERSION,
        id: Uuid::from_u128(0x019b76db_9260_7abc_8def_0123456789ab),
        reply_to: reply_queue_name(&caller, "0001"),
        caller,
        issued_at: 1_767_225_660_000,
        expires_at: 1_767_225_960_000,
        targets,
        action: ActionName::new("ping").unwrap(),
        args: vec![0x80],
        token: None,
    }
}

#[test]
fn valid_selector_regex_matches_the_whole_value() {
    let clause = regex_clause("eu-[0-9]+");
    assert!(clause.matches(&zone("eu-1")));
    assert!(!clause.matches(&zone("eu-1b")));
    assert!(!clause.matches(&zone("xeu-1")));
}

#[test]
#[allow(clippy::invalid_regex)] // The point: the pattern is no regex by itself.
fn selector_regex_that_is_no_regex_alone_is_refused() {
    assert!(
        regex::Regex::new("eu)|(x").is_err(),
        "not a regex by itself"
    );
    assert!(compile_selector_regex("eu)|(x").is_err());
    let bytes = codec::encode(&request_with(Targets::Selector(vec![regex_clause(
        "eu)|(x",
    )])));
    assert!(
        envelope::decode_body::<Request>(&bytes, DEFAULT_MAX_MESSAGE_BYTES).is_err(),
        "a request whose selector holds an invalid regex must not decode"
    );
}

#[test]
fn selector_regex_cannot_break_out_of_its_anchors() {
    assert!(!regex_clause("eu)|(x").matches(&zone("eu-west-1")));
    // The same trick makes a clause that reads as one value match every value.
    assert!(!regex_clause("eu-1)|(?:.*").matches(&zone("prod-db")));
}
