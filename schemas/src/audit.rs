//! Audit logs: hash-chained, writer-signed records of every request, reply and event.
//!
//! A log is a chain of [`AuditRecord`]s, each a [`Signed`](crate::Signed) envelope
//! (context `gearmq/v1/audit`) by the log's writer: the orchestrator's operator key or
//! a host key. Each record carries the SHA-256 of the previous record's envelope bytes,
//! so a record cannot be edited, inserted, removed or reordered without the writer's
//! key; the embedded requests and replies are the signed bytes as they crossed the
//! wire, so an auditor re-checks every signature offline.
//!
//! On disk a file is a sequence of frames, each a `u32` big-endian length followed by
//! that many envelope bytes (at most [`MAX_RECORD_BYTES`]). The first file of a chain
//! starts with a [`Entry::Genesis`] record, each later file with an
//! [`Entry::Rotation`] record chained to the last record of the file before it; the
//! index keeps counting across files.
//!
//! [`AuditLog`] appends (locking, rotation, crash recovery); [`AuditSink`] shares one
//! between threads with a batching writer thread; [`verify_log`] checks a chain
//! offline; [`read_record`] decodes a record for display without judging it.

mod sink;
mod verify;
mod writer;

pub use sink::{AuditSink, AuditWriters, Done, OnError, QueueFull, SinkError, SinkOptions};
pub use verify::{
    Broken, MAX_REVOKED_LISTED, Problem, RevokedUse, Summary, VerifyOptions, is_unsigned,
    verify_log,
};
pub use writer::{Appended, AuditError, AuditLog, AuditOptions, OnRepair, Repair, log_files};

use crate::codec::{self, DecodeError};
use crate::credential::{Credential, MAX_CREDENTIAL_BYTES};
use crate::envelope::{Body, Context, IssuerSigned, Signed, decode_body};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Largest record (one `Signed` envelope, without its length prefix) in bytes.
///
/// Room for a writer credential and a request and its reply at the default message cap
/// (256 KiB each), with margin; a writer refuses a bigger record, a verifier a bigger
/// frame.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Most bytes of a rejected reply kept in its record, so a flood cannot fill the disk.
pub const MAX_EXCERPT_BYTES: usize = 1024;

/// Longest rejection reason (a stable label such as `forged`).
pub const MAX_REASON_BYTES: usize = 64;

/// Longest broker user name kept for a rejected reply.
pub const MAX_BROKER_USER_BYTES: usize = 255;

/// Most reasons in one [`Entry::RepliesRejected`] summary.
pub const MAX_SUMMARY_REASONS: usize = 16;

/// The reason under which [`Entry::replies_rejected`] sums the reasons past
/// [`MAX_SUMMARY_REASONS`].
pub const OTHER_REASON: &str = "other";

/// The body of an audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Always `"audit"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// Random, chosen at genesis and kept by every record of the chain (across files),
    /// so records of two logs cannot be spliced together.
    pub log_id: serde_bytes::ByteArray<16>,
    /// Position in the chain: 0 for genesis, +1 per record, continuing across files.
    pub index: u64,
    /// SHA-256 of the previous record's envelope bytes; zeros for genesis.
    pub prev: serde_bytes::ByteArray<32>,
    /// When the record was written (ms since epoch, the writer's clock).
    pub time: Millis,
    /// What happened.
    pub entry: Entry,
}

/// What an audit record says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// The first record of a new chain (index 0, `prev` zeros).
    Genesis {},
    /// The first record of a continuation file after rotation.
    Rotation {
        /// SHA-256 of the last record of the previous file; equals the record's `prev`.
        previous_file_head: serde_bytes::ByteArray<32>,
    },
    /// The orchestrator signed and published this request (logged before publishing).
    RequestSent {
        /// The signed request, exactly as published.
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
    },
    /// The orchestrator accepted this reply as a result.
    ReplyAccepted {
        /// The signed reply, exactly as received.
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
    },
    /// The orchestrator received a reply and refused it.
    ReplyRejected {
        /// SHA-256 of the whole message as received.
        digest: serde_bytes::ByteArray<32>,
        /// The size of the whole message as received.
        size: u64,
        /// Why it was refused: a stable label (`forged`, `unknown_request`, …).
        reason: String,
        /// The AMQP `user_id` it carried (the broker-validated sender), if any.
        broker_user: Option<String>,
        /// The first bytes of the message, at most [`MAX_EXCERPT_BYTES`].
        #[serde(with = "serde_bytes")]
        excerpt: Vec<u8>,
    },
    /// An agent verified this request and executed or refused it, sending this reply.
    RequestHandled {
        /// The signed request, exactly as received.
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
        /// The signed reply sent for it, if one was sent.
        reply: Option<serde_bytes::ByteBuf>,
    },
    /// An agent received the exact request bytes of an earlier `request_handled`
    /// record of its chain again and answered them with the exact reply bytes logged
    /// there (a redelivery answered from the replay store, a repeated refusal): digests
    /// instead of a second full copy, so repetition cannot fill the disk.
    RequestRepeated {
        /// SHA-256 of the whole signed request message as received.
        request: serde_bytes::ByteArray<32>,
        /// SHA-256 of the whole signed reply sent.
        reply: serde_bytes::ByteArray<32>,
    },
    /// The orchestrator refused further replies past the number it records one by one,
    /// and only counted them: for one call (`request_id`), or for none (nil).
    RepliesRejected {
        /// The call they were sent to, or nil for messages not tied to any call.
        request_id: Option<Uuid>,
        /// How many per reason label (`[a-z0-9_]{1,64}`), 1 to [`MAX_SUMMARY_REASONS`]
        /// labels, each count at least 1.
        counts: BTreeMap<String, u64>,
        /// The number of messages: the sum of `counts`.
        messages: u64,
        /// Their total size in bytes.
        bytes: u64,
        /// When the first of them was refused (ms since epoch).
        first_time: Millis,
        /// When the last of them was refused (ms since epoch), not before `first_time`.
        last_time: Millis,
    },
    /// The orchestrator accepted this event of a host (PROTOCOL.md, "Events").
    EventAccepted {
        /// The signed event, exactly as received.
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
}

/// A [`Entry::ReplyRejected`]'s fields, borrowed ([`Entry::as_rejected_reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectedReply<'a> {
    /// SHA-256 of the whole message as received.
    pub digest: &'a [u8; 32],
    /// The size of the whole message as received.
    pub size: u64,
    /// Why it was refused (a label).
    pub reason: &'a str,
    /// The AMQP `user_id` it carried, if any.
    pub broker_user: Option<&'a str>,
    /// The first bytes of the message.
    pub excerpt: &'a [u8],
}

/// A [`Entry::RepliesRejected`] summary's fields, borrowed ([`Entry::as_summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectedSummary<'a> {
    /// The call they were sent to, if any.
    pub request_id: Option<Uuid>,
    /// How many per reason label.
    pub counts: &'a BTreeMap<String, u64>,
    /// The number of messages (the sum of `counts`).
    pub messages: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// When the first was refused (ms since epoch).
    pub first_time: Millis,
    /// When the last was refused (ms since epoch).
    pub last_time: Millis,
}

impl Entry {
    /// A [`Entry::RequestSent`] for the signed request bytes.
    pub fn request_sent(request: &[u8]) -> Entry {
        Entry::RequestSent {
            request: request.to_vec(),
        }
    }

    /// A [`Entry::ReplyAccepted`] for the signed reply bytes.
    pub fn reply_accepted(reply: &[u8]) -> Entry {
        Entry::ReplyAccepted {
            reply: reply.to_vec(),
        }
    }

    /// A [`Entry::EventAccepted`] for the signed event bytes.
    pub fn event_accepted(event: &[u8]) -> Entry {
        Entry::EventAccepted {
            event: event.to_vec(),
        }
    }

    /// A [`Entry::ReplyRejected`] for a refused message: keeps its digest, size and at
    /// most [`MAX_EXCERPT_BYTES`] of it. `reason` is made a label (lower case, other
    /// characters as `_`, `unknown` if empty); over-long `reason` and `broker_user` are
    /// cut to their limits, so the entry is always valid.
    pub fn reply_rejected(message: &[u8], reason: &str, broker_user: Option<&str>) -> Entry {
        Entry::ReplyRejected {
            digest: serde_bytes::ByteArray::new(crate::sha256(message)),
            size: message.len() as u64,
            reason: reason_label(reason),
            broker_user: broker_user.map(|u| cut(u, MAX_BROKER_USER_BYTES).to_string()),
            excerpt: message[..message.len().min(MAX_EXCERPT_BYTES)].to_vec(),
        }
    }

    /// A [`Entry::RequestHandled`] for the signed request and the signed reply sent.
    pub fn request_handled(request: &[u8], reply: Option<&[u8]>) -> Entry {
        Entry::RequestHandled {
            request: request.to_vec(),
            reply: reply.map(|r| serde_bytes::ByteBuf::from(r.to_vec())),
        }
    }

    /// A [`Entry::RequestRepeated`] for a request message received again and answered
    /// again with the same reply: `request_message` is the whole signed request as
    /// received (what a `request_handled` record holds), `reply` the whole signed reply
    /// sent. Write it only when an earlier `request_handled` record of the same chain
    /// holds exactly these request and reply bytes (the verifier checks that).
    pub fn request_repeated(request_message: &[u8], reply: &[u8]) -> Entry {
        Entry::RequestRepeated {
            request: serde_bytes::ByteArray::new(crate::sha256(request_message)),
            reply: serde_bytes::ByteArray::new(crate::sha256(reply)),
        }
    }

    /// A [`Entry::RepliesRejected`] summing refused replies that were only counted:
    /// `counts` per reason, `bytes` their total size, `first_time`..`last_time` when
    /// they were refused; `request_id` the call, or `None` for messages tied to no
    /// call. `messages` is the sum of `counts`. Reasons are made labels as in
    /// [`Entry::reply_rejected`] (equal labels summed), zero counts dropped, reasons past
    /// the first [`MAX_SUMMARY_REASONS`]` - 1` summed under [`OTHER_REASON`], and the
    /// times put in order, so the entry is always valid. `None` if every count is 0:
    /// there is nothing to record.
    pub fn replies_rejected(
        request_id: Option<Uuid>,
        counts: &BTreeMap<String, u64>,
        bytes: u64,
        first_time: Millis,
        last_time: Millis,
    ) -> Option<Entry> {
        let mut labelled: BTreeMap<String, u64> = BTreeMap::new();
        for (reason, n) in counts.iter().filter(|(_, n)| **n > 0) {
            let c = labelled.entry(reason_label(reason)).or_default();
            *c = c.saturating_add(*n);
        }
        if labelled.len() > MAX_SUMMARY_REASONS {
            let mut kept: BTreeMap<String, u64> = BTreeMap::new();
            let mut other = labelled.remove(OTHER_REASON).unwrap_or(0);
            for (i, (reason, n)) in labelled.into_iter().enumerate() {
                if i < MAX_SUMMARY_REASONS - 1 {
                    kept.insert(reason, n);
                } else {
                    other = other.saturating_add(n);
                }
            }
            kept.insert(OTHER_REASON.to_string(), other);
            labelled = kept;
        }
        if labelled.is_empty() {
            return None;
        }
        let messages = labelled.values().fold(0u64, |a, n| a.saturating_add(*n));
        Some(Entry::RepliesRejected {
            request_id,
            counts: labelled,
            messages,
            bytes,
            first_time: first_time.min(last_time),
            last_time: first_time.max(last_time),
        })
    }

    /// The fields of a [`Entry::ReplyRejected`], borrowed; `None` for other entries.
    pub fn as_rejected_reply(&self) -> Option<RejectedReply<'_>> {
        match self {
            Entry::ReplyRejected {
                digest,
                size,
                reason,
                broker_user,
                excerpt,
            } => Some(RejectedReply {
                digest,
                size: *size,
                reason,
                broker_user: broker_user.as_deref(),
                excerpt,
            }),
            _ => None,
        }
    }

    /// The fields of a [`Entry::RepliesRejected`] summary, borrowed; `None` for other
    /// entries.
    pub fn as_summary(&self) -> Option<RejectedSummary<'_>> {
        match self {
            Entry::RepliesRejected {
                request_id,
                counts,
                messages,
                bytes,
                first_time,
                last_time,
            } => Some(RejectedSummary {
                request_id: *request_id,
                counts,
                messages: *messages,
                bytes: *bytes,
                first_time: *first_time,
                last_time: *last_time,
            }),
            _ => None,
        }
    }

    /// The entry's name on the wire (`genesis`, `request_sent`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Entry::Genesis {} => "genesis",
            Entry::Rotation { .. } => "rotation",
            Entry::RequestSent { .. } => "request_sent",
            Entry::ReplyAccepted { .. } => "reply_accepted",
            Entry::ReplyRejected { .. } => "reply_rejected",
            Entry::RequestHandled { .. } => "request_handled",
            Entry::RequestRepeated { .. } => "request_repeated",
            Entry::RepliesRejected { .. } => "replies_rejected",
            Entry::EventAccepted { .. } => "event_accepted",
        }
    }

    /// Checks the rules a verifier holds the entry to (bounds of a rejected reply's
    /// fields, the sums of a summary); writers check before signing.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(RejectedSummary {
            counts,
            messages,
            first_time,
            last_time,
            ..
        }) = self.as_summary()
        {
            if counts.is_empty() || counts.len() > MAX_SUMMARY_REASONS {
                return Err(format!(
                    "rejected replies summary has {} reasons, not 1 to {MAX_SUMMARY_REASONS}",
                    counts.len()
                ));
            }
            let mut sum = 0u64;
            for (reason, n) in counts {
                check_reason(reason)?;
                if *n == 0 {
                    return Err(format!("rejected replies summary counts 0 for {reason:?}"));
                }
                sum = sum
                    .checked_add(*n)
                    .ok_or("rejected replies summary counts overflow")?;
            }
            if sum != messages {
                return Err(format!(
                    "rejected replies summary says {messages} messages, its counts sum to {sum}"
                ));
            }
            if first_time > last_time {
                return Err("rejected replies summary ends before it starts".into());
            }
        }
        if let Some(r) = self.as_rejected_reply() {
            let excerpt = r.excerpt.len();
            if excerpt > MAX_EXCERPT_BYTES {
                return Err(format!(
                    "rejected reply excerpt is {excerpt} bytes, over the limit of {MAX_EXCERPT_BYTES}"
                ));
            }
            if (excerpt as u64) > r.size {
                return Err("rejected reply excerpt is longer than the message".into());
            }
            if (excerpt as u64) < r.size && excerpt < MAX_EXCERPT_BYTES {
                return Err("rejected reply excerpt is shorter than it should be".into());
            }
            if (excerpt as u64) == r.size && crate::sha256(r.excerpt) != *r.digest {
                return Err("rejected reply digest does not match the whole message".into());
            }
            check_reason(r.reason)?;
            if r.broker_user
                .is_some_and(|u| u.len() > MAX_BROKER_USER_BYTES)
            {
                return Err(format!("broker user is over {MAX_BROKER_USER_BYTES} bytes"));
            }
        }
        Ok(())
    }
}

/// `reason` as a label: lower case, other characters as `_`, at most
/// [`MAX_REASON_BYTES`], `unknown` if empty.
fn reason_label(reason: &str) -> String {
    let label: String = reason
        .chars()
        .take(MAX_REASON_BYTES)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if label.is_empty() {
        "unknown".into()
    } else {
        label
    }
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.is_empty()
        || reason.len() > MAX_REASON_BYTES
        || !reason
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return Err(format!(
            "rejection reason {reason:?} is not a label of [a-z0-9_]{{1,{MAX_REASON_BYTES}}}"
        ));
    }
    Ok(())
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Body for AuditRecord {
    const CONTEXT: Context = Context::Audit;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        self.entry.validate()
    }
}

impl AuditRecord {
    /// A record with protocol fields filled in.
    pub fn new(log_id: [u8; 16], index: u64, prev: [u8; 32], time: Millis, entry: Entry) -> Self {
        AuditRecord {
            kind: Context::Audit.kind().to_string(),
            version: crate::VERSION,
            log_id: serde_bytes::ByteArray::new(log_id),
            index,
            prev: serde_bytes::ByteArray::new(prev),
            time,
            entry,
        }
    }
}

/// A frame could not be read at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The file ends inside a frame (a cut-off or torn tail).
    #[error("the file ends inside a record at byte {offset} ({available} of {needed} bytes)")]
    Truncated {
        /// Where the frame starts.
        offset: usize,
        /// Bytes the frame needs (length prefix included).
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The length prefix is 0 or over [`MAX_RECORD_BYTES`].
    #[error("record length {len} at byte {offset} is not in 1..={MAX_RECORD_BYTES}")]
    BadLength {
        /// Where the frame starts.
        offset: usize,
        /// The length read.
        len: usize,
    },
}

/// One length-prefixed record in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Offset of the length prefix in the file.
    pub offset: usize,
    /// The record's envelope bytes.
    pub bytes: &'a [u8],
}

/// Iterates over the frames of a log file; stops after the first error.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
    done: bool,
}

/// The frames of a log file's bytes.
pub fn frames(bytes: &[u8]) -> Frames<'_> {
    Frames {
        bytes,
        pos: 0,
        done: false,
    }
}

impl<'a> Frames<'a> {
    /// The offset just past the last frame returned.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.bytes.len() {
            return None;
        }
        let offset = self.pos;
        let rest = &self.bytes[offset..];
        let fail = |this: &mut Self, e| {
            this.done = true;
            Some(Err(e))
        };
        let Some(prefix) = rest.first_chunk::<4>() else {
            return fail(
                self,
                FrameError::Truncated {
                    offset,
                    needed: 4,
                    available: rest.len(),
                },
            );
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len == 0 || len > MAX_RECORD_BYTES {
            return fail(self, FrameError::BadLength { offset, len });
        }
        let Some(bytes) = rest.get(4..4 + len) else {
            return fail(
                self,
                FrameError::Truncated {
                    offset,
                    needed: 4 + len,
                    available: rest.len(),
                },
            );
        };
        self.pos = offset + 4 + len;
        Some(Ok(Frame { offset, bytes }))
    }
}

/// The length prefix and bytes of one record, as appended to a file.
pub fn frame(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + record.len());
    // Records are bounded by MAX_RECORD_BYTES (< 4 GiB) before they get here.
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(record);
    out
}

/// A record decoded for display, without any signature or chain checked.
#[derive(Debug, Clone)]
pub struct RecordView {
    /// The record body.
    pub record: AuditRecord,
    /// The writer's credential as it claims to be (issuer signature not checked).
    pub writer: Credential,
    /// SHA-256 of the envelope bytes (what the next record's `prev` holds).
    pub hash: [u8; 32],
    /// Whether the writer signed it; if not, a later signed record of its batch seals
    /// it ([`is_unsigned`]).
    pub signed: bool,
}

/// Decodes a record's envelope, writer credential and body, checking none of the
/// signatures: for `gearmq audit show` and for writers finding their tail. Only
/// [`verify_log`] says whether a record is genuine.
pub fn read_record(envelope: &[u8]) -> Result<RecordView, DecodeError> {
    let env = Signed::decode(envelope, MAX_RECORD_BYTES)?;
    let (record, writer) = peek_envelope::<AuditRecord>(&env, MAX_RECORD_BYTES)?;
    Ok(RecordView {
        record,
        writer,
        hash: crate::sha256(envelope),
        signed: !is_unsigned(&env),
    })
}

/// Decodes a signed message's body and its signer's credential, checking no
/// signature: for displaying embedded requests and replies.
pub fn peek_signed<B: Body>(bytes: &[u8], max: usize) -> Result<(B, Credential), DecodeError> {
    peek_envelope(&Signed::decode(bytes, max)?, max)
}

fn peek_envelope<B: Body>(env: &Signed, max: usize) -> Result<(B, Credential), DecodeError> {
    let cred_env: IssuerSigned =
        codec::decode("credential envelope", &env.signer, MAX_CREDENTIAL_BYTES)?;
    let writer = decode_body::<Credential>(&cred_env.body, MAX_CREDENTIAL_BYTES)?;
    let body = decode_body::<B>(&env.body, max)?;
    Ok((body, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_canonically() {
        let entries = [
            Entry::Genesis {},
            Entry::Rotation {
                previous_file_head: serde_bytes::ByteArray::new([7; 32]),
            },
            Entry::request_sent(b"req"),
            Entry::reply_accepted(b"rep"),
            Entry::event_accepted(b"ev"),
            Entry::reply_rejected(&[1; 2000], "forged", Some("web1")),
            Entry::reply_rejected(b"short", "malformed", None),
            Entry::request_handled(b"req", Some(b"rep")),
            Entry::request_handled(b"req", None),
            Entry::request_repeated(b"req", b"rep"),
            Entry::replies_rejected(
                Some(Uuid::from_bytes([5; 16])),
                &BTreeMap::from([("forged".into(), 2), ("malformed".into(), 3)]),
                900,
                10,
                20,
            )
            .unwrap(),
            Entry::replies_rejected(None, &BTreeMap::from([("late".into(), 1)]), 0, 7, 7).unwrap(),
        ];
        for e in entries {
            let r = AuditRecord::new([1; 16], 3, [2; 32], 1000, e);
            let bytes = codec::encode(&r);
            assert_eq!(
                decode_body::<AuditRecord>(&bytes, MAX_RECORD_BYTES).unwrap(),
                r
            );
        }
    }

    #[test]
    fn genesis_is_a_one_entry_map_with_an_empty_map() {
        let mut want = vec![0x81, 0xa7];
        want.extend_from_slice(b"genesis");
        want.push(0x80);
        assert_eq!(codec::encode(&Entry::Genesis {}), want);
    }

    #[test]
    fn request_repeated_is_two_digests_in_field_order() {
        let e = Entry::request_repeated(b"req", b"rep");
        let mut want = vec![0x81, 0xb0];
        want.extend_from_slice(b"request_repeated");
        want.extend_from_slice(&[0x82, 0xa7]);
        want.extend_from_slice(b"request");
        want.extend_from_slice(&[0xc4, 32]);
        want.extend_from_slice(&crate::sha256(b"req"));
        want.extend_from_slice(&[0xa5]);
        want.extend_from_slice(b"reply");
        want.extend_from_slice(&[0xc4, 32]);
        want.extend_from_slice(&crate::sha256(b"rep"));
        assert_eq!(codec::encode(&e), want);
        assert_eq!(e.name(), "request_repeated");
        assert!(e.validate().is_ok());
    }

    #[test]
    fn replies_rejected_sums_and_labels_are_enforced() {
        let counts = BTreeMap::from([
            ("Forged!".to_string(), 2),
            ("forged_".to_string(), 1),
            ("late".to_string(), 0),
        ]);
        let e = Entry::replies_rejected(None, &counts, 300, 50, 40).unwrap();
        let Entry::RepliesRejected {
            counts,
            messages,
            first_time,
            last_time,
            ..
        } = &e
        else {
            unreachable!()
        };
        // "Forged!" and "forged_" are one label; the zero count is dropped.
        assert_eq!(counts, &BTreeMap::from([("forged_".to_string(), 3)]));
        assert_eq!((*messages, *first_time, *last_time), (3, 40, 50));
        assert!(e.validate().is_ok());
        assert_eq!(e.name(), "replies_rejected");
        assert_eq!(
            Entry::replies_rejected(None, &BTreeMap::new(), 0, 1, 1),
            None
        );
        let zeros = BTreeMap::from([("late".to_string(), 0)]);
        assert_eq!(Entry::replies_rejected(None, &zeros, 0, 1, 1), None);

        // Past the limit, the rest is summed under "other".
        let many: BTreeMap<String, u64> = (0..40).map(|i| (format!("r{i:02}"), 1)).collect();
        let e = Entry::replies_rejected(None, &many, 0, 1, 1).unwrap();
        let Entry::RepliesRejected {
            counts, messages, ..
        } = &e
        else {
            unreachable!()
        };
        assert_eq!(counts.len(), MAX_SUMMARY_REASONS);
        assert_eq!(counts[OTHER_REASON], 40 - (MAX_SUMMARY_REASONS as u64 - 1));
        assert_eq!(*messages, 40);
        assert!(e.validate().is_ok());

        // A decoder holds every rule, whoever wrote the entry.
        let valid = Entry::RepliesRejected {
            request_id: None,
            counts: BTreeMap::from([("forged".into(), 2), ("late".into(), 1)]),
            messages: 3,
            bytes: 10,
            first_time: 1,
            last_time: 2,
        };
        assert!(valid.validate().is_ok());
        let broken: [fn(&mut Entry); 6] = [
            |e| set(e, |_, m, _| *m = 4),
            |e| set(e, |c, _, _| c.clear()),
            |e| set(e, |c, _, _| *c.get_mut("late").unwrap() = 0),
            |e| {
                set(e, |c, m, _| {
                    c.insert("Forged".into(), 1);
                    *m = 4;
                })
            },
            |e| set(e, |_, _, t| *t = (3, 2)),
            |e| {
                set(e, |c, m, _| {
                    *c = (0..17).map(|i| (format!("r{i}"), 1)).collect();
                    *m = 17;
                })
            },
        ];
        fn set(
            e: &mut Entry,
            f: impl FnOnce(&mut BTreeMap<String, u64>, &mut u64, &mut (Millis, Millis)),
        ) {
            if let Entry::RepliesRejected {
                counts,
                messages,
                first_time,
                last_time,
                ..
            } = e
            {
                let mut t = (*first_time, *last_time);
                f(counts, messages, &mut t);
                (*first_time, *last_time) = t;
            }
        }
        for (i, b) in broken.iter().enumerate() {
            let mut e = valid.clone();
            b(&mut e);
            assert!(e.validate().is_err(), "case {i}: {e:?}");
        }
    }

    #[test]
    fn rejected_excerpt_is_bounded_and_bound_to_its_digest() {
        let Entry::ReplyRejected { excerpt, size, .. } =
            Entry::reply_rejected(&[1; 2000], "forged", None)
        else {
            unreachable!()
        };
        assert_eq!((excerpt.len(), size), (MAX_EXCERPT_BYTES, 2000));
        let bad = Entry::ReplyRejected {
            digest: serde_bytes::ByteArray::new([0; 32]),
            size: 3,
            reason: "forged".into(),
            broker_user: None,
            excerpt: b"abc".to_vec(),
        };
        assert!(bad.validate().is_err());
        let Entry::ReplyRejected { reason, .. } = Entry::reply_rejected(b"x", "Not A-Label", None)
        else {
            unreachable!()
        };
        assert_eq!(reason, "not_a_label");
        let mut e = Entry::reply_rejected(b"x", "", None);
        assert!(e.validate().is_ok());
        if let Entry::ReplyRejected { reason, .. } = &mut e {
            *reason = "Forged".into();
        }
        assert!(e.validate().is_err());
    }

    #[test]
    fn frames_stop_at_a_torn_tail() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        bytes.extend(&frame(b"three")[..5]);
        let got: Vec<_> = frames(&bytes).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].as_ref().unwrap().bytes, b"two");
        assert!(matches!(
            got[2],
            Err(FrameError::Truncated { offset, .. }) if offset == whole
        ));
        assert!(matches!(
            frames(&[0, 0, 0, 0]).next(),
            Some(Err(FrameError::BadLength { len: 0, .. }))
        ));
    }
}
