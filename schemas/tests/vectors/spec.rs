//! PROTOCOL.md is normative, so it must not drift from the crate and the vectors: every
//! vector file is listed, every label the code gives is in the document's tables (and
//! no other), every limit the document states is the code's, and every in-page link
//! lands on a heading.

use super::{read_vector, sha256, vectors_dir};
use gearmq_schemas::audit::{MAX_EXCERPT_BYTES, MAX_RECORD_BYTES, MAX_SUMMARY_REASONS};
use gearmq_schemas::credential::MAX_CREDENTIAL_BYTES;
use gearmq_schemas::envelope::Context;
use gearmq_schemas::event::{
    MAX_AGENT_VERSION, MAX_EVENT_LABELS, MAX_INTERVAL_MS, MAX_STATE_WORD, MIN_INTERVAL_MS,
};
use gearmq_schemas::request::{
    MAX_SELECTOR_COUNT, MAX_SELECTOR_REGEX, MAX_SELECTOR_WEIGHT, MAX_TARGET_HOSTS,
};
use gearmq_schemas::revocation::MAX_REVOCATION_BYTES;
use gearmq_schemas::token::{
    HPKE_INFO, MAX_TOKEN_ACTIONS, MAX_TOKEN_BYTES, MAX_TOKEN_UNITS, MAX_TOKEN_USES, SUITE,
    TokenError,
};
use gearmq_schemas::{DEFAULT_MAX_MESSAGE_BYTES, DecodeError, Name};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the section that starts with `heading` (up to the next heading of the
/// same or a higher level).
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no heading {heading:?}"))
        + 1;
    let level = heading.chars().take_while(|c| *c == '#').count();
    let rest = &doc[start + heading.len()..];
    let end = rest
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = rest[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level && rest[i + 1 + hashes..].starts_with(' ')
        })
        .map_or(rest.len(), |(i, _)| i);
    &doc[start..start + heading.len() + end]
}

/// Every `` `word` `` in `text` whose word starts with `prefix` and is made of
/// `[a-z0-9_./-]`.
fn code_words(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            w.starts_with(prefix)
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_./-".contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_vector_file_is_listed_and_every_listed_file_exists() {
    let doc = doc();
    let listed = section(&doc, "## Test vectors");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            listed.contains(&format!("`{name}`")),
            "vectors/{name} is not in PROTOCOL.md's Test vectors tables"
        );
        on_disk.insert(name);
    }
    for name in code_words(listed, "")
        .into_iter()
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphanumeric()))
        .filter(|w| w.ends_with(".bin") || w.ends_with(".json") || w.contains(".log"))
    {
        assert!(
            on_disk.contains(&name),
            "PROTOCOL.md lists {name}, which is not in vectors/"
        );
    }
    // The walk-through names the request vector's digest.
    let digest = hex::encode(sha256(&read_vector("request-ping.bin")));
    assert!(
        listed.contains(&digest),
        "the walk-through does not name {digest}"
    );
}

#[test]
fn decoding_labels_are_the_codes() {
    let doc = doc();
    let table = section(&doc, "### Decoding and its labels");
    let documented: BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .flat_map(|l| code_words(l.split('|').nth(2).unwrap(), ""))
        .collect();
    let what = "x";
    let code: BTreeSet<String> = [
        DecodeError::TooLarge {
            what,
            size: 2,
            max: 1,
        },
        DecodeError::Malformed {
            what,
            reason: String::new(),
        },
        DecodeError::TrailingBytes { what, extra: 1 },
        DecodeError::NotCanonical { what },
        DecodeError::WrongKind {
            expected: what,
            got: String::new(),
        },
        DecodeError::UnsupportedVersion {
            got: 2,
            supported: 1,
        },
    ]
    .iter()
    .map(|e| e.label().to_string())
    .collect();
    assert_eq!(documented, code);
}

#[test]
fn token_labels_are_the_codes() {
    let doc = doc();
    let documented = code_words(section(&doc, "## Delegation tokens"), "token_");
    let n = || Name::new("a").unwrap();
    let a = || gearmq_schemas::ActionName::new("a").unwrap();
    let s = String::new;
    let code: BTreeSet<String> = [
        TokenError::TooLarge { size: 0, max: 0 },
        TokenError::Malformed(s()),
        TokenError::WrongAudience {
            audience: n(),
            host: n(),
        },
        TokenError::WrongRecipient {
            got: s(),
            have: s(),
        },
        TokenError::CannotOpen,
        TokenError::MalformedClaims(s()),
        TokenError::UntrustedIssuer(s()),
        TokenError::MinterCredential(s()),
        TokenError::BadSignature,
        TokenError::NotDelegator { minter: n() },
        TokenError::MinterNotValid {
            minter: n(),
            reason: s(),
        },
        TokenError::IssuerMismatch {
            claimed: s(),
            signed: s(),
        },
        TokenError::WiderThanMinter {
            minter: n(),
            action: a(),
        },
        TokenError::WrongSubject {
            subject: n(),
            signer: n(),
        },
        TokenError::ActionNotAllowed {
            action: a(),
            allowed: s(),
        },
        TokenError::UnitNotAllowed {
            asked: s(),
            allowed: s(),
        },
        TokenError::NotYetValid {
            not_before: 0,
            now: 0,
            skew_ms: 0,
        },
        TokenError::Expired {
            not_after: 0,
            now: 0,
            skew_ms: 0,
        },
        TokenError::TtlTooLong {
            ttl_ms: 0,
            max_ms: 0,
        },
        TokenError::UsedUp {
            id: uuid::Uuid::nil(),
            uses: 1,
        },
        TokenError::MinterRevoked(s()),
        TokenError::NoSealingKey,
        TokenError::Seal(s()),
    ]
    .iter()
    .map(|e| e.reason().to_string())
    .collect();
    assert_eq!(documented, code);
}

/// The labels `Problem::label` returns, read from its source: the one place that lists
/// them all (a new variant cannot be added without a label there, the match being
/// exhaustive).
fn problem_labels_in_code() -> BTreeSet<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/audit/verify.rs");
    let src = std::fs::read_to_string(path).unwrap();
    let start = src.find("impl Problem {").expect("impl Problem");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").unwrap()];
    body.split("=> \"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect()
}

#[test]
fn audit_problem_labels_are_the_codes() {
    let doc = doc();
    let verifying = section(
        &doc,
        "### Verifying (`audit::verify_log`, `gearmq audit verify`)",
    );
    // Labels are written [`label`]; links [`text`](…) are not labels.
    let documented: BTreeSet<String> = verifying
        .split("[`")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find('`').unwrap();
            (!rest[end..].starts_with("`](")).then(|| rest[..end].to_string())
        })
        .collect();
    assert_eq!(documented, problem_labels_in_code());
}

#[test]
fn the_document_states_the_codes_limits_and_constants() {
    let doc = doc();
    let kib = |n: usize| format!("{} KiB", n / 1024);
    let expected = [
        format!("{} by default", kib(DEFAULT_MAX_MESSAGE_BYTES)),
        format!(
            "| signer credential (`IssuerSigned` bytes) | {} |",
            kib(MAX_CREDENTIAL_BYTES)
        ),
        format!("at most 8 KiB ({MAX_TOKEN_BYTES})"),
        format!("at most 1 MiB ({MAX_REVOCATION_BYTES})"),
        format!("(1 to 1 MiB = {MAX_RECORD_BYTES})"),
        format!("`min(size, {MAX_EXCERPT_BYTES})`"),
        format!("`counts` has 1 to {MAX_SUMMARY_REASONS} entries"),
        format!(
            "1 to {},{:03}, **strictly ascending**",
            MAX_TARGET_HOSTS / 1000,
            MAX_TARGET_HOSTS % 1000
        ),
        format!("a pattern is at most {MAX_SELECTOR_REGEX} bytes"),
        format!("every count is at most {MAX_SELECTOR_COUNT}"),
        format!("its **weight** is at most {MAX_SELECTOR_WEIGHT}"),
        format!("1 to {MAX_TOKEN_ACTIONS}, no action twice"),
        format!("0 to {MAX_TOKEN_UNITS}, no unit twice"),
        format!("1 to {MAX_TOKEN_USES} |"),
        format!("`suite` (str,\n`\"{SUITE}\"`)"),
        format!("`{}`", String::from_utf8_lossy(HPKE_INFO)),
        format!("1 to {MAX_AGENT_VERSION} bytes of `A-Z a-z 0-9 . - + _`"),
        format!("from {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS} (1 s to"),
        format!("each 1 to {MAX_STATE_WORD} bytes of `a-z 0-9 -`"),
        format!("| labels in a `started` event | {MAX_EVENT_LABELS} |"),
    ];
    for phrase in expected {
        assert!(doc.contains(&phrase), "PROTOCOL.md does not say {phrase:?}");
    }
    for ctx in [
        Context::Credential,
        Context::Request,
        Context::Reply,
        Context::Token,
        Context::Revocation,
        Context::Audit,
        Context::Event,
    ] {
        let tag = String::from_utf8_lossy(ctx.tag());
        assert!(
            doc.contains(&format!("| `{}` | `{tag}` |", ctx.kind())),
            "the context tag table lacks {tag}"
        );
    }
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, only letters, digits,
/// `-` and `_` kept.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_in_page_link_lands_on_a_heading() {
    let doc = doc();
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for link in doc.split("](#").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        assert!(
            anchors.contains(target),
            "PROTOCOL.md links to #{target}, no such heading"
        );
    }
}
