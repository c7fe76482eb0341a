//! Requests: what an operator asks of hosts.

use crate::envelope::{Body, Context};
use crate::names::{ActionName, Name, check_label_key, check_label_value};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

mod selector;

/// Longest regex accepted in a label selector, in bytes.
pub const MAX_SELECTOR_REGEX: usize = selector::MAX_PATTERN_BYTES;
/// Largest count (`{n}`, `{n,}`, `{n,m}`) in a selector regex.
pub const MAX_SELECTOR_COUNT: u32 = selector::MAX_COUNT;
/// Largest weight of a selector regex (PROTOCOL.md, "Selector regexes").
pub const MAX_SELECTOR_WEIGHT: u64 = selector::MAX_WEIGHT;
/// Most hosts a request may name explicitly.
pub const MAX_TARGET_HOSTS: usize = 10_000;

/// The body of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Always `"request"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// UUIDv7, unique per request; the replay store keys on it.
    pub id: Uuid,
    /// The signer's name; must equal the signer credential's name.
    pub caller: Name,
    /// When it was signed (ms since epoch).
    pub issued_at: Millis,
    /// When it stops being valid (ms since epoch).
    pub expires_at: Millis,
    /// Who should act on it. Inside the signature, so each host decides alone.
    pub targets: Targets,
    /// The reply queue: `gearmq.reply.<caller>.<instance>`.
    pub reply_to: String,
    /// What to do.
    pub action: ActionName,
    /// The action's arguments, MessagePack-encoded (see [`crate::actions`]).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// A sealed delegation token, when a host calls another host.
    pub token: Option<serde_bytes::ByteBuf>,
}

/// Who a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// These hosts, by name: 1 to [`MAX_TARGET_HOSTS`], strictly ascending (so each
    /// once, and an agent finds itself by binary search). Build with [`Targets::hosts`].
    Hosts(Vec<Name>),
    /// Every host (discovery pings).
    All,
    /// Hosts whose credential labels match every clause.
    Selector(Vec<LabelMatch>),
}

/// One clause of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMatch {
    /// The label key.
    pub key: String,
    /// How to compare.
    pub op: MatchOp,
    /// The value or regex.
    pub value: String,
}

/// A selector comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    /// The label is present and equal.
    Eq,
    /// The label is absent or different.
    Ne,
    /// The label is present and matches the regex (whole value).
    Regex,
}

impl LabelMatch {
    /// Whether `labels` satisfy this clause. A regex that does not compile matches
    /// nothing (it was already refused at decode time).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            MatchOp::Eq => v == Some(&self.value),
            MatchOp::Ne => v != Some(&self.value),
            MatchOp::Regex => match (v, compile_selector_regex(&self.value)) {
                (Some(v), Ok(re)) => re.is_match(v),
                _ => false,
            },
        }
    }
}

/// Compiles a selector regex: `pattern` must be in the protocol's regex language
/// (PROTOCOL.md, "Selector regexes": grammar, at most 256 bytes, counts up to 128,
/// weight up to 256); it then matches the whole label value.
pub fn compile_selector_regex(pattern: &str) -> Result<regex::Regex, String> {
    let parsed = selector::parse(pattern)?;
    // Every pattern of the language compiles within this bound (tests/vectors check the
    // heaviest); the bound only keeps the engine's own limit out of the rule.
    regex::RegexBuilder::new(&parsed.regex())
        .size_limit(64 << 20)
        .build()
        .map_err(|e| format!("selector regex {pattern:?} does not compile: {e}"))
}

impl Targets {
    /// An explicit host list, sorted and without repeats as the wire requires.
    pub fn hosts(names: impl IntoIterator<Item = Name>) -> Targets {
        let mut v: Vec<Name> = names.into_iter().collect();
        v.sort();
        v.dedup();
        Targets::Hosts(v)
    }

    /// Whether the host `name` with `labels` is a target.
    pub fn includes(&self, name: &Name, labels: &BTreeMap<String, String>) -> bool {
        match self {
            // Decoding made the list strictly ascending.
            Targets::Hosts(hosts) => hosts.binary_search(name).is_ok(),
            Targets::All => true,
            Targets::Selector(clauses) => clauses.iter().all(|c| c.matches(labels)),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Targets::Hosts(h) if h.len() > MAX_TARGET_HOSTS => Err(format!(
                "targets name {} hosts, over the limit of {MAX_TARGET_HOSTS}",
                h.len()
            )),
            Targets::Hosts(h) if h.is_empty() => Err("targets name no host".into()),
            Targets::Hosts(h) => match h.windows(2).find(|w| w[0] >= w[1]) {
                Some(w) => Err(format!(
                    "target hosts must be strictly ascending: {} then {}",
                    w[0], w[1]
                )),
                None => Ok(()),
            },
            Targets::Selector(c) => {
                if c.is_empty() || c.len() > 16 {
                    return Err("a selector has 1 to 16 clauses".into());
                }
                for m in c {
                    check_label_key(&m.key).map_err(|e| e.to_string())?;
                    // A value is bounded like the labels it is compared with.
                    match m.op {
                        MatchOp::Regex => {
                            compile_selector_regex(&m.value)?;
                        }
                        MatchOp::Eq | MatchOp::Ne => {
                            if check_label_value(&m.value).is_err() {
                                return Err(format!(
                                    "selector value for {} is over 128 characters or holds a control character",
                                    m.key
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
            Targets::All => Ok(()),
        }
    }
}

/// The reply queue name for `caller`'s process `instance`.
pub fn reply_queue_name(caller: &Name, instance: &str) -> String {
    format!("gearmq.reply.{caller}.{instance}")
}

/// Whether `reply_to` is a reply queue of `caller` (`gearmq.reply.<caller>.<instance>`,
/// instance `[a-z0-9-]{1,63}`), so a request can only direct replies to its signer's
/// own queues.
pub fn is_reply_queue_of(caller: &Name, reply_to: &str) -> bool {
    let prefix = format!("gearmq.reply.{caller}.");
    match reply_to.strip_prefix(&prefix) {
        Some(inst) => {
            !inst.is_empty()
                && inst.len() <= 63
                && inst
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        }
        None => false,
    }
}

impl Body for Request {
    const CONTEXT: Context = Context::Request;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.expires_at < self.issued_at {
            return Err("expires_at is before issued_at".into());
        }
        if !is_reply_queue_of(&self.caller, &self.reply_to) {
            return Err(format!(
                "reply_to {:?} is not a reply queue of caller {}",
                self.reply_to, self.caller
            ));
        }
        self.targets.validate()
    }
}

impl Request {
    /// A new request with protocol fields filled in and a fresh UUIDv7 id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        caller: Name,
        issued_at: Millis,
        expires_at: Millis,
        targets: Targets,
        reply_to: String,
        action: ActionName,
        args: Vec<u8>,
    ) -> Self {
        Request {
            kind: Context::Request.kind().to_string(),
            version: crate::VERSION,
            id: Uuid::now_v7(),
            caller,
            issued_at,
            expires_at,
            targets,
            reply_to,
            action,
            args,
            token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_matches_eq_ne_regex() {
        let web = labels(&[("role", "web"), ("zone", "eu-1")]);
        let db = labels(&[("role", "db")]);
        let sel = Targets::Selector(vec![
            LabelMatch {
                key: "role".into(),
                op: MatchOp::Eq,
                value: "web".into(),
            },
            LabelMatch {
                key: "zone".into(),
                op: MatchOp::Regex,
                value: "eu-[0-9]+".into(),
            },
        ]);
        let h = Name::new("h").unwrap();
        assert!(sel.includes(&h, &web));
        assert!(!sel.includes(&h, &db));
        let ne = Targets::Selector(vec![LabelMatch {
            key: "role".into(),
            op: MatchOp::Ne,
            value: "web".into(),
        }]);
        assert!(ne.includes(&h, &db));
        assert!(!ne.includes(&h, &web));
    }

    #[test]
    fn regex_is_anchored_and_bounded() {
        let re = compile_selector_regex("eu").unwrap();
        assert!(!re.is_match("eu-1"));
        assert!(compile_selector_regex(&"a".repeat(300)).is_err());
        assert!(compile_selector_regex("(").is_err());
    }

    #[test]
    fn host_lists_are_non_empty_strictly_ascending_and_found_by_search() {
        let n = |s: &str| Name::new(s).unwrap();
        let t = Targets::hosts([n("web2"), n("db1"), n("web2"), n("web10")]);
        assert_eq!(t, Targets::Hosts(vec![n("db1"), n("web10"), n("web2")]));
        assert!(t.validate().is_ok());
        assert!(t.includes(&n("web10"), &BTreeMap::new()));
        assert!(!t.includes(&n("web1"), &BTreeMap::new()));
        for bad in [
            vec![],
            vec![n("b"), n("a")],
            vec![n("a"), n("a")],
            vec![n("a"), n("c"), n("b")],
        ] {
            assert!(Targets::Hosts(bad.clone()).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selector_values_are_bounded_like_label_values() {
        let clause = |op, value: String| {
            Targets::Selector(vec![LabelMatch {
                key: "role".into(),
                op,
                value,
            }])
        };
        assert!(clause(MatchOp::Eq, "x".repeat(128)).validate().is_ok());
        assert!(clause(MatchOp::Eq, "x".repeat(129)).validate().is_err());
        assert!(clause(MatchOp::Ne, "x".repeat(100_000)).validate().is_err());
        assert!(clause(MatchOp::Ne, "a\nb".into()).validate().is_err());
    }

    #[test]
    fn reply_to_must_belong_to_caller() {
        let c = Name::new("ops").unwrap();
        assert!(is_reply_queue_of(&c, "gearmq.reply.ops.abc123"));
        assert!(!is_reply_queue_of(&c, "gearmq.reply.ops."));
        assert!(!is_reply_queue_of(&c, "gearmq.reply.other.abc"));
        assert!(!is_reply_queue_of(&c, "gearmq.reply.ops.a.b"));
        assert!(!is_reply_queue_of(&c, "gearmq.host.web1"));
    }
}
