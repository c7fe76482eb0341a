//! Offline verification of an audit log: what `gearmq audit verify` runs.
//!
//! Pure: bytes in, a summary or the first broken record out. Every credential is judged
//! as of the record's time, so a log still verifies after its credentials expire.
//! Revocation lists are not in the log: given some, the records that used a credential
//! after its revocation are listed in the summary rather than breaking the chain.

use super::{AuditRecord, Entry, FrameError, MAX_RECORD_BYTES, frames};
use crate::codec::DecodeError;
use crate::credential::{Credential, CredentialError, Role};
use crate::envelope::{Body, Context, OpenError, Opened, Signed, decode_body, open};
use crate::event::Event;
use crate::names::Name;
use crate::reply::Reply;
use crate::request::{Request, Targets};
use crate::revocation::RevocationList;
use crate::status::Status;
use crate::time::Millis;
use crate::trust::{CredentialVerifier, TrustAnchors};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use uuid::Uuid;

/// What to hold a log to beyond its own consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Clock skew allowed when judging credential windows at a record's time.
    /// Default 5 minutes.
    pub skew_ms: Millis,
    /// The hash the last record must have (noted elsewhere), to catch a cut-off tail.
    pub expect_head: Option<[u8; 32]>,
    /// The name the log's writer must have.
    pub writer: Option<Name>,
    /// Revocation lists, already verified against the trusted issuers (any number, in
    /// any order). A credential counts as revoked from the earliest moment one of
    /// them gives: for a revoked serial the list's `issued_at` (a list holds no
    /// revocation time per serial, so give older lists too to narrow it), for a
    /// revoked name its `before` (or the list's `issued_at` if that is earlier).
    /// Records that used a credential from that moment on go in
    /// [`Summary::revoked`].
    pub revocations: Vec<RevocationList>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            skew_ms: 5 * 60 * 1000,
            expect_head: None,
            writer: None,
            revocations: Vec::new(),
        }
    }
}

/// Most [`RevokedUse`]s a [`Summary`] lists; the rest are only counted.
pub const MAX_REVOKED_LISTED: usize = 1000;

/// Per (host, boot): (seq, SHA-256) of the latest distinct events accepted.
type SeenEvents = VecDeque<(u64, [u8; 32])>;

/// How many of a host boot's latest distinct events the verifier remembers to compare
/// a later one with the same sequence number against: far more than the window a watch
/// reads back when it starts again (three or four per host), at 40 bytes each.
pub const EVENTS_REMEMBERED: usize = 64;

/// A record that used a credential at or after the moment a revocation list revokes
/// it: written by it, or holding a request, reply or event it signed that was sent,
/// accepted or executed (a request the agent refused is not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedUse {
    /// The file the record is in (as named by the caller).
    pub file: String,
    /// The record's index.
    pub record: u64,
    /// The record's time (ms since epoch).
    pub time: Millis,
    /// `writer`, `request`, `reply` or `event`: what the credential signed.
    pub what: &'static str,
    /// The credential's name.
    pub name: Name,
    /// The credential's role.
    pub role: Role,
    /// The credential's serial.
    pub serial: u64,
    /// The moment from which the lists revoke it (ms since epoch).
    pub revoked_since: Millis,
}

/// What a clean log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files read.
    pub files: usize,
    /// Records in the chain.
    pub records: u64,
    /// `request_sent` records.
    pub requests_sent: u64,
    /// `reply_accepted` records.
    pub replies_accepted: u64,
    /// `reply_rejected` records.
    pub replies_rejected: u64,
    /// `request_handled` records.
    pub requests_handled: u64,
    /// `request_handled` records whose reply is not `ok` (refused or failed), or
    /// that sent no reply.
    pub handled_not_ok: u64,
    /// `request_repeated` records: requests answered again with the same reply.
    pub requests_repeated: u64,
    /// `replies_rejected` records: summaries of refused replies that were only counted.
    pub rejection_summaries: u64,
    /// Refused replies counted in those summaries (the sum of their `messages`).
    pub replies_summarised: u64,
    /// `event_accepted` records.
    pub events_accepted: u64,
    /// Records that used a revoked credential (with [`VerifyOptions::revocations`]),
    /// the first [`MAX_REVOKED_LISTED`] of them.
    pub revoked: Vec<RevokedUse>,
    /// How many such uses there are in all.
    pub revoked_uses: u64,
    /// SHA-256 of the last record: note it to check later with `expect_head`.
    pub head: [u8; 32],
    /// The chain's random id.
    pub log_id: [u8; 16],
    /// The writer's name.
    pub writer: Name,
    /// The writer's role.
    pub writer_role: Role,
    /// Time of the first record (ms since epoch).
    pub first_time: Millis,
    /// Time of the last record (ms since epoch).
    pub last_time: Millis,
}

/// The first record that does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: record {record}: {problem}")]
pub struct Broken {
    /// The file it is in (as named by the caller).
    pub file: String,
    /// Its position in the chain (the index it should have).
    pub record: u64,
    /// Byte offset of its frame in the file.
    pub offset: u64,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// No files were given.
    #[error("no audit files given")]
    NoFiles,
    /// A file has no records.
    #[error("the file is empty")]
    EmptyFile,
    /// The length-prefixed framing is broken.
    #[error("{0}")]
    Frame(FrameError),
    /// The record envelope does not decode.
    #[error("record envelope: {0}")]
    Envelope(DecodeError),
    /// The writer credential is not from a trusted issuer (or does not decode).
    #[error("writer credential: {0}")]
    WriterCredential(CredentialError),
    /// The writer's signature over the record does not hold.
    #[error("writer signature invalid (claimed writer {writer})")]
    WriterSignature {
        /// The name in the credential that did not sign.
        writer: Name,
    },
    /// A record left unsigned (sealed by a later one) and the record whose signature
    /// seals it carry different writer credentials.
    #[error("sealed by a record with another writer credential than the unsigned record {record}")]
    SealSigner {
        /// The index of the first unsigned record of the run.
        record: u64,
    },
    /// The log ends in records left unsigned that no later signed record seals (a
    /// batch cut off before its signed last record, or a stripped signature).
    #[error("the log ends in {records} unsigned record(s) that no signed record seals")]
    UnsealedTail {
        /// How many.
        records: u64,
    },
    /// The record body does not decode.
    #[error("record body: {0}")]
    Body(DecodeError),
    /// The writer credential was not valid at the record's time.
    #[error("writer credential not valid at the record's time: {0}")]
    WriterWindow(CredentialError),
    /// Another name or role than the chain's writer (or than the one expected).
    #[error("written by {got}, but the log is written by {expected}")]
    WriterChanged {
        /// The chain's writer.
        expected: String,
        /// This record's.
        got: String,
    },
    /// The writer is not the one the auditor expects (`--writer`).
    #[error("written by {got}, not by the expected writer {expected}")]
    UnexpectedWriter {
        /// The expected name.
        expected: Name,
        /// This record's writer.
        got: String,
    },
    /// A record from another chain.
    #[error("log id {got} differs from the chain's {expected} (a record from another log)")]
    LogIdChanged {
        /// The chain's id (hex).
        expected: String,
        /// This record's (hex).
        got: String,
    },
    /// The index is not the next one.
    #[error("index is {got}, expected {expected} (a record is missing, repeated or out of order)")]
    IndexMismatch {
        /// The next index.
        expected: u64,
        /// The record's.
        got: u64,
    },
    /// `prev` is not the previous record's hash.
    #[error(
        "prev does not match the previous record's hash (a record was removed, inserted, altered or reordered)"
    )]
    PrevMismatch,
    /// The chain does not start with genesis.
    #[error("the first file must start with a genesis record, found {found}")]
    NoGenesis {
        /// The entry found.
        found: &'static str,
    },
    /// A later file does not start with a rotation record.
    #[error(
        "a continuation file must start with a rotation record, found {found} (a file is missing or out of order)"
    )]
    NoRotation {
        /// The entry found.
        found: &'static str,
    },
    /// Genesis or rotation somewhere other than the start of a file.
    #[error("{found} record in the middle of a file")]
    Misplaced {
        /// The entry found.
        found: &'static str,
    },
    /// A rotation record whose `previous_file_head` is not its `prev`.
    #[error("rotation record's previous_file_head differs from its prev")]
    RotationHeadMismatch,
    /// An embedded request, reply or event does not open.
    #[error("embedded {what} does not open: {error}")]
    Embedded {
        /// `request`, `reply` or `event`.
        what: &'static str,
        /// Why.
        error: OpenError,
    },
    /// An embedded message signed by a role that may not sign it.
    #[error("embedded {what} is signed by {name}, a {role}, which may not sign it")]
    WrongRole {
        /// `request`, `reply` or `event`.
        what: &'static str,
        /// The signer.
        name: Name,
        /// Its role.
        role: Role,
    },
    /// An embedded message whose `caller`/`host` is not its signer.
    #[error("embedded {what} names {claimed} but is signed by {signer}")]
    NotSigner {
        /// `request`, `reply` or `event`.
        what: &'static str,
        /// The name in the body.
        claimed: Name,
        /// The signer's name.
        signer: Name,
    },
    /// An embedded message's credential was not valid at the record's time.
    #[error("embedded {what}: signer credential not valid at the record's time: {error}")]
    EmbeddedWindow {
        /// `request`, `reply` or `event`.
        what: &'static str,
        /// Why.
        error: CredentialError,
    },
    /// A sent request signed by someone other than the log's writer.
    #[error("request {id} was signed by {caller}, not by the log's writer {writer}")]
    RequestNotByWriter {
        /// The request.
        id: Uuid,
        /// Its caller.
        caller: Name,
        /// The log's writer.
        writer: Name,
    },
    /// One request id with two different bodies.
    #[error("request id {id} appears again with different bytes")]
    RequestIdReused {
        /// The id.
        id: Uuid,
    },
    /// An accepted reply to a request that is not in the log.
    #[error("accepted reply from {host} answers request {id}, which is not in the log")]
    UnknownRequest {
        /// The request id it names.
        id: Uuid,
        /// The host.
        host: Name,
    },
    /// An accepted reply bound to other request bytes.
    #[error(
        "accepted reply from {host} is bound to other bytes than request {id} (digest mismatch)"
    )]
    DigestMismatch {
        /// The request id.
        id: Uuid,
        /// The host.
        host: Name,
    },
    /// A host that the request did not target.
    #[error("{host} is not a target of request {id}")]
    NotATarget {
        /// The request id.
        id: Uuid,
        /// The host.
        host: Name,
    },
    /// The same reply accepted twice.
    #[error("reply {seq} from {host} to request {id} was accepted twice")]
    DuplicateReply {
        /// The request id.
        id: Uuid,
        /// The host.
        host: Name,
        /// The reply's seq.
        seq: u32,
    },
    /// A streamed reply accepted after one with a higher seq, or after the final one.
    #[error(
        "reply {seq} from {host} to request {id} was accepted after reply {after}{}: a host's replies are accepted in strictly increasing seq, none after its final one",
        if *after_final { " (its final one)" } else { "" }
    )]
    ReplyOutOfOrder {
        /// The request id.
        id: Uuid,
        /// The host.
        host: Name,
        /// The reply's seq.
        seq: u32,
        /// The seq of the reply accepted before it.
        after: u32,
        /// Whether that reply was the host's final one.
        after_final: bool,
    },
    /// Two different events signed by a host for the same place in one boot's sequence:
    /// its key signed twice where the agent signs once.
    #[error(
        "two different events from {host} are both event {seq} of boot {boot}: a host signs one event per sequence number"
    )]
    EventConflict {
        /// The host.
        host: Name,
        /// The boot id (hex).
        boot: String,
        /// The sequence number both claim.
        seq: u64,
    },
    /// A `request_handled` or `request_repeated` record by a writer that is not a host.
    #[error("{entry} records are written by hosts, this one by {writer} ({role})")]
    HandledByNonHost {
        /// The entry's name.
        entry: &'static str,
        /// The writer.
        writer: Name,
        /// Its role.
        role: Role,
    },
    /// A handled request answered other than by a refusal although its credential
    /// was out of its window.
    #[error(
        "request {id} was handled with a credential not valid at the time ({error}) and answered {answered}, not refused as expired"
    )]
    ExpiredNotRefused {
        /// The request id.
        id: Uuid,
        /// Why the credential was not valid (boxed: the rarest, largest problem).
        error: Box<CredentialError>,
        /// The reply's status (`ok`, `timed_out`, …), or `with no reply`.
        answered: &'static str,
    },
    /// A handled request answered other than by a refusal although the agent started
    /// on it outside the request's own window.
    #[error(
        "request {id} (valid {issued_at}..{expires_at} ms) was started on at {started_at} ms and answered {answered}, not refused as expired"
    )]
    OutsideRequestWindow {
        /// The request id.
        id: Uuid,
        /// The request's `issued_at`.
        issued_at: Millis,
        /// The request's `expires_at`.
        expires_at: Millis,
        /// The reply's `started_at`.
        started_at: Millis,
        /// The reply's status (`ok`, `timed_out`, …).
        answered: &'static str,
    },
    /// A handled request answered other than by a refusal although its signer may not
    /// make it (role, caller, the credential's actions).
    #[error("request {id} was answered {answered} although {reason}: the agent must refuse it")]
    UnauthorizedNotRefused {
        /// The request id.
        id: Uuid,
        /// The reply's status (`ok`, `timed_out`, …), or `with no reply`.
        answered: &'static str,
        /// What the signer may not do.
        reason: String,
    },
    /// One request (caller and id) executed twice by the writer: two `request_handled`
    /// records, neither a refusal nor a stream, whose replies are not the same bytes.
    #[error(
        "request {id} from {caller} was answered again with another reply (first at record {first_record}), not by a refusal: executed twice, where a repeat gets the stored reply"
    )]
    ExecutedTwice {
        /// The request id.
        id: Uuid,
        /// Its caller.
        caller: Name,
        /// The index of the record of the first execution.
        first_record: u64,
    },
    /// The reply logged with a handled request does not answer it.
    #[error("the reply logged with request {id} does not answer it (id or digest differs)")]
    ReplyDoesNotAnswer {
        /// The request id.
        id: Uuid,
    },
    /// The reply logged with a handled request is not the writer's.
    #[error(
        "the reply logged with request {id} is signed by {signer}, not by the log's writer {writer}"
    )]
    ReplyNotByWriter {
        /// The request id.
        id: Uuid,
        /// The reply's signer.
        signer: Name,
        /// The log's writer.
        writer: Name,
    },
    /// A `request_repeated` record whose request no earlier `request_handled` record
    /// of the chain holds.
    #[error(
        "request_repeated names request sha256 {request}, which no earlier request_handled record of this log holds"
    )]
    RepeatOfUnknownRequest {
        /// The request digest it names (hex).
        request: String,
    },
    /// A `request_repeated` record whose reply is not the one logged with its request.
    #[error(
        "request_repeated says request sha256 {request} was answered again with reply sha256 {reply}, but no earlier request_handled record holds that reply to it"
    )]
    RepeatWithOtherReply {
        /// The request digest (hex).
        request: String,
        /// The reply digest it names (hex).
        reply: String,
    },
    /// The last record's hash is not the one expected.
    #[error("the log ends with head {got}, expected {expected} (records were cut off or differ)")]
    HeadMismatch {
        /// The expected head (hex).
        expected: String,
        /// The actual head (hex).
        got: String,
    },
}

impl Problem {
    /// A stable label for the problem (`index_mismatch`, `executed_twice`, …), as
    /// PROTOCOL.md's audit log section lists them.
    pub fn label(&self) -> &'static str {
        match self {
            Problem::NoFiles => "no_files",
            Problem::EmptyFile => "empty_file",
            Problem::Frame(_) => "frame",
            Problem::Envelope(_) => "envelope",
            Problem::WriterCredential(_) => "writer_credential",
            Problem::WriterSignature { .. } => "writer_signature",
            Problem::SealSigner { .. } => "seal_signer",
            Problem::UnsealedTail { .. } => "unsealed_tail",
            Problem::Body(_) => "body",
            Problem::WriterWindow(_) => "writer_window",
            Problem::WriterChanged { .. } => "writer_changed",
            Problem::UnexpectedWriter { .. } => "unexpected_writer",
            Problem::LogIdChanged { .. } => "log_id_changed",
            Problem::IndexMismatch { .. } => "index_mismatch",
            Problem::PrevMismatch => "prev_mismatch",
            Problem::NoGenesis { .. } => "no_genesis",
            Problem::NoRotation { .. } => "no_rotation",
            Problem::Misplaced { .. } => "misplaced",
            Problem::RotationHeadMismatch => "rotation_head_mismatch",
            Problem::Embedded { .. } => "embedded",
            Problem::WrongRole { .. } => "wrong_role",
            Problem::NotSigner { .. } => "not_signer",
            Problem::EmbeddedWindow { .. } => "embedded_window",
            Problem::RequestNotByWriter { .. } => "request_not_by_writer",
            Problem::RequestIdReused { .. } => "request_id_reused",
            Problem::UnknownRequest { .. } => "unknown_request",
            Problem::DigestMismatch { .. } => "digest_mismatch",
            Problem::NotATarget { .. } => "not_a_target",
            Problem::DuplicateReply { .. } => "duplicate_reply",
            Problem::ReplyOutOfOrder { .. } => "reply_out_of_order",
            Problem::EventConflict { .. } => "event_conflict",
            Problem::HandledByNonHost { .. } => "handled_by_non_host",
            Problem::ExpiredNotRefused { .. } => "expired_not_refused",
            Problem::OutsideRequestWindow { .. } => "outside_request_window",
            Problem::UnauthorizedNotRefused { .. } => "unauthorized_not_refused",
            Problem::ExecutedTwice { .. } => "executed_twice",
            Problem::ReplyDoesNotAnswer { .. } => "reply_does_not_answer",
            Problem::ReplyNotByWriter { .. } => "reply_not_by_writer",
            Problem::RepeatOfUnknownRequest { .. } => "repeat_of_unknown_request",
            Problem::RepeatWithOtherReply { .. } => "repeat_with_other_reply",
            Problem::HeadMismatch { .. } => "head_mismatch",
        }
    }
}

struct SentRequest {
    digest: [u8; 32],
    targets: Targets,
}

/// What a `request_handled` record's reply says.
#[derive(Clone, Copy)]
struct Answer {
    status: Status,
    /// SHA-256 of the whole reply.
    digest: [u8; 32],
    started_at: Millis,
    is_final: bool,
}

/// A request a host executed, as its first record shows.
#[derive(Clone, Copy)]
struct Execution {
    /// SHA-256 of the reply logged, if one was.
    reply: Option<[u8; 32]>,
    /// The record's index.
    record: u64,
}

/// When each revoked credential stops being trusted, from the lists given.
#[derive(Default)]
struct RevokedCredentials {
    serials: HashMap<u64, Millis>,
    /// (name, credentials with `not_before` before this are revoked, from when).
    names: Vec<(Name, Millis, Millis)>,
}

impl RevokedCredentials {
    fn new(lists: &[RevocationList]) -> Self {
        let mut r = RevokedCredentials::default();
        for list in lists {
            for serial in &list.serials {
                let since = r.serials.entry(*serial).or_insert(list.issued_at);
                *since = (*since).min(list.issued_at);
            }
            for n in &list.names {
                r.names
                    .push((n.name.clone(), n.before, n.before.min(list.issued_at)));
            }
        }
        r
    }

    fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.names.is_empty()
    }

    /// From when `c` is revoked, if it is.
    fn since(&self, c: &Credential) -> Option<Millis> {
        let by_name = self
            .names
            .iter()
            .filter(|(name, before, _)| *name == c.name && c.not_before < *before)
            .map(|(_, _, since)| *since);
        self.serials
            .get(&c.serial)
            .copied()
            .into_iter()
            .chain(by_name)
            .min()
    }
}

struct Chain<'a> {
    options: &'a VerifyOptions,
    revoked: RevokedCredentials,
    /// Credentials embedded in the current record that a revocation may concern.
    used: Vec<(&'static str, Arc<Credential>)>,
    verifier: CredentialVerifier,
    writer: Option<(Name, Role)>,
    log_id: Option<[u8; 16]>,
    next_index: u64,
    prev: [u8; 32],
    requests: HashMap<Uuid, SentRequest>,
    /// Per (request, host): the last accepted reply's seq and whether it was final.
    accepted: HashMap<(Uuid, Name), (u32, bool)>,
    /// Per (host, boot): the seq and SHA-256 of its last [`EVENTS_REMEMBERED`] distinct
    /// accepted events.
    events: HashMap<(Name, [u8; 16]), SeenEvents>,
    /// (SHA-256 of the request message, SHA-256 of the reply) of every
    /// `request_handled` record with a reply: what a `request_repeated` may repeat.
    answered: HashSet<([u8; 32], [u8; 32])>,
    /// Callers of executed requests, numbered, so that `executed` keys stay small.
    callers: HashMap<Name, u32>,
    /// Executed requests by (caller number, id).
    executed: HashMap<(u32, Uuid), Execution>,
    /// The run of unsigned records since the last signed one, if any.
    unsealed: Option<Unsealed>,
    summary: Summary,
}

/// Records written unsigned, waiting for the signed record that seals them (its
/// signature covers them through `prev`).
struct Unsealed {
    /// The writer credential's bytes: the sealing record must carry the same.
    signer: Vec<u8>,
    /// Where the run starts.
    file: String,
    record: u64,
    offset: u64,
    /// How many records it holds.
    records: u64,
}

/// Verifies a chain given as files, oldest first, against the trusted issuers: the
/// framing, every record's writer signature and credential (at the record's time), the
/// hash chain and index across files, genesis and rotation placement, every embedded
/// request, reply and event (signature, role, credential at the record's time), that
/// every accepted reply answers a logged request, that no host signed two different
/// events with one sequence number of a boot, that a host refused every request its
/// signer could not make or that was out of its window (whatever status it answered
/// otherwise) and executed none twice, and that every repeat points to a logged
/// answer. Returns the first broken record; uses of credentials revoked by
/// [`VerifyOptions::revocations`] are listed in the summary. A tail cut after a whole
/// record goes unseen without [`VerifyOptions::expect_head`].
pub fn verify_log<N: AsRef<str>, B: AsRef<[u8]>>(
    files: &[(N, B)],
    anchors: &TrustAnchors,
    options: &VerifyOptions,
) -> Result<Summary, Broken> {
    let Some(last) = files.last() else {
        return Err(Broken {
            file: String::new(),
            record: 0,
            offset: 0,
            problem: Problem::NoFiles,
        });
    };
    let mut chain = Chain {
        options,
        revoked: RevokedCredentials::new(&options.revocations),
        used: Vec::new(),
        verifier: CredentialVerifier::new(anchors.clone(), 256),
        writer: None,
        log_id: None,
        next_index: 0,
        prev: [0; 32],
        requests: HashMap::new(),
        accepted: HashMap::new(),
        events: HashMap::new(),
        answered: HashSet::new(),
        callers: HashMap::new(),
        executed: HashMap::new(),
        unsealed: None,
        summary: Summary {
            files: files.len(),
            records: 0,
            requests_sent: 0,
            replies_accepted: 0,
            replies_rejected: 0,
            requests_handled: 0,
            handled_not_ok: 0,
            requests_repeated: 0,
            rejection_summaries: 0,
            replies_summarised: 0,
            events_accepted: 0,
            revoked: Vec::new(),
            revoked_uses: 0,
            head: [0; 32],
            log_id: [0; 16],
            writer: Name::new("unknown").unwrap_or_else(|_| unreachable!("a valid name")),
            writer_role: Role::Host,
            first_time: 0,
            last_time: 0,
        },
    };
    for (file_no, (name, bytes)) in files.iter().enumerate() {
        let (name, bytes) = (name.as_ref(), bytes.as_ref());
        let broken = |chain: &Chain, offset: usize, problem| Broken {
            file: name.to_string(),
            record: chain.next_index,
            offset: offset as u64,
            problem,
        };
        if bytes.is_empty() {
            return Err(broken(&chain, 0, Problem::EmptyFile));
        }
        for (pos, frame) in frames(bytes).enumerate() {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let offset = match e {
                        FrameError::Truncated { offset, .. }
                        | FrameError::BadLength { offset, .. } => offset,
                    };
                    return Err(broken(&chain, offset, Problem::Frame(e)));
                }
            };
            chain
                .record(name, file_no, pos, frame.offset, frame.bytes)
                .map_err(|p| broken(&chain, frame.offset, p))?;
        }
    }
    if let Some(u) = chain.unsealed.take() {
        return Err(Broken {
            file: u.file,
            record: u.record,
            offset: u.offset,
            problem: Problem::UnsealedTail { records: u.records },
        });
    }
    chain.summary.records = chain.next_index;
    chain.summary.head = chain.prev;
    if let Some(expected) = options.expect_head
        && expected != chain.prev
    {
        let file = last.0.as_ref().to_string();
        return Err(Broken {
            file,
            record: chain.next_index,
            offset: last.1.as_ref().len() as u64,
            problem: Problem::HeadMismatch {
                expected: hex::encode(expected),
                got: hex::encode(chain.prev),
            },
        });
    }
    Ok(chain.summary)
}

/// Whether a record envelope was left unsigned by its writer (its `sig` is 64 zero
/// bytes): the next signed record of the chain seals it.
pub fn is_unsigned(env: &Signed) -> bool {
    env.sig.iter().all(|&b| b == 0)
}

impl Chain<'_> {
    fn record(
        &mut self,
        file: &str,
        file_no: usize,
        pos: usize,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), Problem> {
        let env = Signed::decode(bytes, MAX_RECORD_BYTES).map_err(Problem::Envelope)?;
        let writer = self
            .verifier
            .verify(&env.signer)
            .map_err(Problem::WriterCredential)?;
        if is_unsigned(&env) {
            // Sealed by the next signed record, whose signature covers this one through
            // the chain; the log may not end before it.
            match &mut self.unsealed {
                None => {
                    self.unsealed = Some(Unsealed {
                        signer: env.signer.clone(),
                        file: file.to_string(),
                        record: self.next_index,
                        offset: offset as u64,
                        records: 1,
                    })
                }
                Some(u) if u.signer != env.signer => {
                    return Err(Problem::SealSigner { record: u.record });
                }
                Some(u) => u.records += 1,
            }
        } else {
            writer
                .public_key
                .verify(Context::Audit, &env.body, env.sig.as_slice())
                .map_err(|_| Problem::WriterSignature {
                    writer: writer.name.clone(),
                })?;
            if let Some(u) = self.unsealed.take()
                && u.signer != env.signer
            {
                return Err(Problem::SealSigner { record: u.record });
            }
        }
        let record =
            decode_body::<AuditRecord>(&env.body, MAX_RECORD_BYTES).map_err(Problem::Body)?;
        let who = |n: &Name, r: Role| format!("{n} ({r})");
        match &self.writer {
            None => {
                if let Some(want) = &self.options.writer
                    && *want != writer.name
                {
                    return Err(Problem::UnexpectedWriter {
                        expected: want.clone(),
                        got: who(&writer.name, writer.role),
                    });
                }
                self.writer = Some((writer.name.clone(), writer.role));
                self.summary.writer = writer.name.clone();
                self.summary.writer_role = writer.role;
                self.summary.first_time = record.time;
            }
            Some((name, role)) if *name != writer.name || *role != writer.role => {
                return Err(Problem::WriterChanged {
                    expected: who(name, *role),
                    got: who(&writer.name, writer.role),
                });
            }
            Some(_) => {}
        }
        writer
            .check_window(record.time, self.options.skew_ms)
            .map_err(Problem::WriterWindow)?;
        match self.log_id {
            None => {
                self.log_id = Some(*record.log_id);
                self.summary.log_id = *record.log_id;
            }
            Some(id) if id != *record.log_id => {
                return Err(Problem::LogIdChanged {
                    expected: hex::encode(id),
                    got: hex::encode(*record.log_id),
                });
            }
            Some(_) => {}
        }
        let found = record.entry.name();
        match (&record.entry, file_no, pos) {
            (Entry::Genesis {}, 0, 0) => {}
            (_, 0, 0) => return Err(Problem::NoGenesis { found }),
            (Entry::Rotation { previous_file_head }, _, 0)
                if **previous_file_head != *record.prev =>
            {
                return Err(Problem::RotationHeadMismatch);
            }
            (Entry::Rotation { .. }, _, 0) => {}
            (_, _, 0) => return Err(Problem::NoRotation { found }),
            (Entry::Genesis {} | Entry::Rotation { .. }, _, _) => {
                return Err(Problem::Misplaced { found });
            }
            _ => {}
        }
        if record.index != self.next_index {
            return Err(Problem::IndexMismatch {
                expected: self.next_index,
                got: record.index,
            });
        }
        if *record.prev != self.prev {
            return Err(Problem::PrevMismatch);
        }
        self.used.clear();
        self.entry(&record, &writer)?;
        if !self.revoked.is_empty() {
            self.note_revoked(file, &record, writer);
        }
        self.summary.last_time = record.time;
        self.next_index += 1;
        self.prev = crate::sha256(bytes);
        Ok(())
    }

    fn entry(&mut self, record: &AuditRecord, writer: &Arc<Credential>) -> Result<(), Problem> {
        let time = record.time;
        match &record.entry {
            Entry::Genesis {} | Entry::Rotation { .. } => {}
            Entry::RequestSent { request } => {
                let req = self.open_request(request)?;
                self.in_window("request", &req, time)?;
                self.used.push(("request", req.signer().clone()));
                let body = req.body();
                if body.caller != writer.name {
                    return Err(Problem::RequestNotByWriter {
                        id: body.id,
                        caller: body.caller.clone(),
                        writer: writer.name.clone(),
                    });
                }
                match self.requests.get(&body.id) {
                    Some(seen) if seen.digest != *req.digest() => {
                        return Err(Problem::RequestIdReused { id: body.id });
                    }
                    Some(_) => {}
                    None => {
                        self.requests.insert(
                            body.id,
                            SentRequest {
                                digest: *req.digest(),
                                targets: body.targets.clone(),
                            },
                        );
                    }
                }
                self.summary.requests_sent += 1;
            }
            Entry::ReplyAccepted { reply } => {
                let rep = self.open_reply(reply)?;
                self.in_window("reply", &rep, time)?;
                self.used.push(("reply", rep.signer().clone()));
                let body = rep.body();
                let id = body.request_id;
                let host = body.host.clone();
                let Some(sent) = self.requests.get(&id) else {
                    return Err(Problem::UnknownRequest { id, host });
                };
                if sent.digest != *body.request_digest {
                    return Err(Problem::DigestMismatch { id, host });
                }
                if !sent.targets.includes(&host, &rep.signer().labels) {
                    return Err(Problem::NotATarget { id, host });
                }
                let stream = (id, host.clone());
                if let Some(&(after, after_final)) = self.accepted.get(&stream) {
                    if body.seq == after {
                        return Err(Problem::DuplicateReply {
                            id,
                            host,
                            seq: body.seq,
                        });
                    }
                    if body.seq <= after || after_final {
                        return Err(Problem::ReplyOutOfOrder {
                            id,
                            host,
                            seq: body.seq,
                            after,
                            after_final,
                        });
                    }
                }
                self.accepted.insert(stream, (body.seq, body.is_final));
                self.summary.replies_accepted += 1;
            }
            Entry::ReplyRejected { .. } => {
                // Only the digest and an excerpt are kept (the rules on them are
                // checked when the body decodes): nothing in it was trusted.
                self.summary.replies_rejected += 1;
            }
            Entry::RequestHandled { request, reply } => {
                check_host_writer(record, writer)?;
                // Signature and credential chain always; who may sign is judged below,
                // once the reply says whether the agent executed it or refused it.
                let req = open_embedded::<Request>("request", request, &self.verifier)?;
                let body = req.body();
                if !body.targets.includes(&writer.name, &writer.labels) {
                    return Err(Problem::NotATarget {
                        id: body.id,
                        host: writer.name.clone(),
                    });
                }
                let mut answer = None;
                if let Some(reply) = reply {
                    let rep = self.open_reply(reply)?;
                    self.in_window("reply", &rep, time)?;
                    if rep.signer().name != writer.name {
                        return Err(Problem::ReplyNotByWriter {
                            id: body.id,
                            signer: rep.signer().name.clone(),
                            writer: writer.name.clone(),
                        });
                    }
                    if rep.body().request_id != body.id
                        || *rep.body().request_digest != *req.digest()
                    {
                        return Err(Problem::ReplyDoesNotAnswer { id: body.id });
                    }
                    let reply_digest = crate::sha256(reply);
                    self.answered.insert((crate::sha256(request), reply_digest));
                    answer = Some(Answer {
                        status: rep.body().status,
                        digest: reply_digest,
                        started_at: rep.body().started_at,
                        is_final: rep.body().is_final,
                    });
                }
                let status = answer.map(|a| a.status);
                self.check_handled(&req, answer, time)?;
                if status.is_none_or(|s| !is_refusal(s)) {
                    self.used.push(("request", req.signer().clone()));
                    // A stream (`logs --follow`, logged with its first, not final,
                    // reply) changes nothing and starts again after a broken session.
                    if answer.is_none_or(|a| a.is_final) {
                        self.check_executed_once(body, answer.map(|a| a.digest))?;
                    }
                }
                self.summary.requests_handled += 1;
                if status != Some(Status::Ok) {
                    self.summary.handled_not_ok += 1;
                }
            }
            Entry::RequestRepeated { request, reply } => {
                check_host_writer(record, writer)?;
                if !self.answered.contains(&(**request, **reply)) {
                    // Rare (the log is broken): a scan to say which half is wrong.
                    let known = self.answered.iter().any(|(q, _)| q == &**request);
                    return Err(if known {
                        Problem::RepeatWithOtherReply {
                            request: hex::encode(**request),
                            reply: hex::encode(**reply),
                        }
                    } else {
                        Problem::RepeatOfUnknownRequest {
                            request: hex::encode(**request),
                        }
                    });
                }
                self.summary.requests_repeated += 1;
            }
            Entry::RepliesRejected { messages, .. } => {
                // Counts only, checked when the body decoded; any writer that may log
                // a reply_rejected may log a summary of them.
                self.summary.rejection_summaries += 1;
                self.summary.replies_summarised =
                    self.summary.replies_summarised.saturating_add(*messages);
            }
            Entry::EventAccepted { event } => {
                let ev = self.open_event(event)?;
                self.in_window("event", &ev, time)?;
                self.used.push(("event", ev.signer().clone()));
                let body = ev.body();
                let (seq, host) = (body.seq, body.host.clone());
                let digest = crate::sha256(event);
                let seen = self.events.entry((host.clone(), *body.boot)).or_default();
                match seen.iter().find(|(s, _)| *s == seq) {
                    // The same event again: a watch that started over reads its window
                    // back, and two watches may share a log. Not news, not a fault.
                    Some((_, d)) if *d == digest => {}
                    Some(_) => {
                        return Err(Problem::EventConflict {
                            host,
                            boot: hex::encode(*body.boot),
                            seq,
                        });
                    }
                    None => {
                        if seen.len() == EVENTS_REMEMBERED {
                            seen.pop_front();
                        }
                        seen.push_back((seq, digest));
                    }
                }
                self.summary.events_accepted += 1;
            }
        }
        Ok(())
    }

    /// The agent's checks before acting, whatever the reply says: a request failing
    /// one must have been refused with a status the agent answers at that check or an
    /// earlier one (PROTOCOL.md, "Receiver checks", steps 7 to 12). A record without a
    /// reply is judged as executed.
    fn check_handled(
        &self,
        req: &Opened<Request>,
        answer: Option<Answer>,
        time: Millis,
    ) -> Result<(), Problem> {
        let body = req.body();
        let status = answer.map(|a| a.status);
        let answered = || status.map_or("with no reply", Status::as_str);
        let skew = self.options.skew_ms;
        if let Err(error) = req.signer().check_window(time, skew)
            && !status.is_some_and(refused_at_screening)
        {
            return Err(Problem::ExpiredNotRefused {
                id: body.id,
                error: Box::new(error),
                answered: answered(),
            });
        }
        if let Some(a) = answer
            && !refused_at_screening(a.status)
            && (a.started_at.saturating_add(skew) < body.issued_at
                || a.started_at > body.expires_at.saturating_add(skew))
        {
            return Err(Problem::OutsideRequestWindow {
                id: body.id,
                issued_at: body.issued_at,
                expires_at: body.expires_at,
                started_at: a.started_at,
                answered: answered(),
            });
        }
        if let Err(reason) = agent_authorizes(req)
            && !status.is_some_and(refused_before_acting)
        {
            return Err(Problem::UnauthorizedNotRefused {
                id: body.id,
                answered: answered(),
                reason,
            });
        }
        Ok(())
    }

    /// A request runs at most once per host: a second execution record for the same
    /// caller and id must carry the very reply bytes of the first (a resend of the
    /// stored reply).
    fn check_executed_once(
        &mut self,
        body: &Request,
        reply_digest: Option<[u8; 32]>,
    ) -> Result<(), Problem> {
        let next = u32::try_from(self.callers.len()).unwrap_or(u32::MAX);
        let caller = *self.callers.entry(body.caller.clone()).or_insert(next);
        match self.executed.entry((caller, body.id)) {
            MapEntry::Occupied(first) => {
                let first = *first.get();
                if first.reply.is_none() || first.reply != reply_digest {
                    return Err(Problem::ExecutedTwice {
                        id: body.id,
                        caller: body.caller.clone(),
                        first_record: first.record,
                    });
                }
            }
            MapEntry::Vacant(v) => {
                v.insert(Execution {
                    reply: reply_digest,
                    record: self.next_index,
                });
            }
        }
        Ok(())
    }

    /// Lists the record if its writer, or a credential it holds a use of, was revoked
    /// by the record's time.
    fn note_revoked(&mut self, file: &str, record: &AuditRecord, writer: Arc<Credential>) {
        let mut seen: Vec<u64> = Vec::new();
        let used = std::mem::take(&mut self.used);
        for (what, cred) in std::iter::once(("writer", writer)).chain(used) {
            if seen.contains(&cred.serial) {
                continue;
            }
            seen.push(cred.serial);
            let Some(since) = self.revoked.since(&cred) else {
                continue;
            };
            if record.time < since {
                continue;
            }
            self.summary.revoked_uses += 1;
            if self.summary.revoked.len() < MAX_REVOKED_LISTED {
                self.summary.revoked.push(RevokedUse {
                    file: file.to_string(),
                    record: record.index,
                    time: record.time,
                    what,
                    name: cred.name.clone(),
                    role: cred.role,
                    serial: cred.serial,
                    revoked_since: since,
                });
            }
        }
    }

    fn open_request(&self, bytes: &[u8]) -> Result<Opened<Request>, Problem> {
        let req = open_embedded::<Request>("request", bytes, &self.verifier)?;
        check_request_signer(&req)?;
        Ok(req)
    }

    fn open_reply(&self, bytes: &[u8]) -> Result<Opened<Reply>, Problem> {
        let rep = open_embedded::<Reply>("reply", bytes, &self.verifier)?;
        let signer = rep.signer();
        if signer.role != Role::Host {
            return Err(Problem::WrongRole {
                what: "reply",
                name: signer.name.clone(),
                role: signer.role,
            });
        }
        if rep.body().host != signer.name {
            return Err(Problem::NotSigner {
                what: "reply",
                claimed: rep.body().host.clone(),
                signer: signer.name.clone(),
            });
        }
        Ok(rep)
    }

    /// An event, signed by a host credential of the host it names.
    fn open_event(&self, bytes: &[u8]) -> Result<Opened<Event>, Problem> {
        let ev = open_embedded::<Event>("event", bytes, &self.verifier)?;
        let signer = ev.signer();
        if signer.role != Role::Host {
            return Err(Problem::WrongRole {
                what: "event",
                name: signer.name.clone(),
                role: signer.role,
            });
        }
        if ev.body().host != signer.name {
            return Err(Problem::NotSigner {
                what: "event",
                claimed: ev.body().host.clone(),
                signer: signer.name.clone(),
            });
        }
        Ok(ev)
    }

    fn in_window<B>(&self, what: &'static str, m: &Opened<B>, time: Millis) -> Result<(), Problem> {
        m.signer()
            .check_window(time, self.options.skew_ms)
            .map_err(|error| Problem::EmbeddedWindow { what, error })
    }
}

/// Entries only an agent writes: the writer must be a host.
fn check_host_writer(record: &AuditRecord, writer: &Credential) -> Result<(), Problem> {
    if writer.role != Role::Host {
        return Err(Problem::HandledByNonHost {
            entry: record.entry.name(),
            writer: writer.name.clone(),
            role: writer.role,
        });
    }
    Ok(())
}

fn open_embedded<B: Body>(
    what: &'static str,
    bytes: &[u8],
    verifier: &CredentialVerifier,
) -> Result<Opened<B>, Problem> {
    open::<B>(bytes, MAX_RECORD_BYTES, verifier).map_err(|error| Problem::Embedded { what, error })
}

/// Statuses an agent answers, without acting, at the checks on the signer credential
/// and the request window (revoked, expired, lifetime over the cap).
fn refused_at_screening(s: Status) -> bool {
    matches!(
        s,
        Status::Unauthorized | Status::Expired | Status::InvalidData
    )
}

/// Statuses an agent answers, without acting, at any check up to role and policy
/// (those of [`refused_at_screening`], and a replayed id).
fn refused_before_acting(s: Status) -> bool {
    refused_at_screening(s) || s == Status::Replayed
}

/// Statuses that say the agent refused the request rather than executed it: those of
/// [`refused_before_acting`] and the refusals of undecodable arguments.
fn is_refusal(s: Status) -> bool {
    refused_before_acting(s) || matches!(s, Status::UnknownAction | Status::MissingData)
}

/// The agent's role and policy check on the signer, as far as a log shows it: without
/// a token an operator, as itself, with the action in its credential; with a token a
/// host, as itself (the token is sealed to the host and not judged here).
fn agent_authorizes(req: &Opened<Request>) -> Result<(), String> {
    let signer = req.signer();
    let body = req.body();
    if body.caller != signer.name {
        return Err(format!(
            "its caller {} is not its signer {}",
            body.caller, signer.name
        ));
    }
    match &body.token {
        None if signer.role != Role::Operator => Err(format!(
            "it is signed by {}, a {}, without a delegation token",
            signer.name, signer.role
        )),
        None if !signer.allows(&body.action) => Err(format!(
            "the credential of {} does not list the action {}",
            signer.name, body.action
        )),
        Some(_) if signer.role != Role::Host => Err(format!(
            "it carries a delegation token but is signed by {}, a {} (tokens are presented by hosts)",
            signer.name, signer.role
        )),
        _ => Ok(()),
    }
}

/// Operators sign requests; a host only with a delegation token (which only the
/// audience host can unseal, so it is not checked here); `caller` is the signer.
fn check_request_signer(req: &Opened<Request>) -> Result<(), Problem> {
    let signer = req.signer();
    let may_sign =
        signer.role == Role::Operator || (signer.role == Role::Host && req.body().token.is_some());
    if !may_sign {
        return Err(Problem::WrongRole {
            what: "request",
            name: signer.name.clone(),
            role: signer.role,
        });
    }
    if req.body().caller != signer.name {
        return Err(Problem::NotSigner {
            what: "request",
            claimed: req.body().caller.clone(),
            signer: signer.name.clone(),
        });
    }
    Ok(())
}
