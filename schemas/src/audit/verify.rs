//! Offline verification of an audit log: what `gearmq audit verify` runs.
//!
//! Pure: bytes in, a summary or the first broken record out. Every credential is judged
//! as of the record's time, so a log still verifies after its credentials expire.

use super::{AuditRecord, Entry, FrameError, MAX_RECORD_BYTES, frames};
use crate::codec::DecodeError;
use crate::credential::{Credential, CredentialError, Role};
use crate::envelope::{Body, Context, OpenError, Opened, Signed, decode_body, open};
use crate::names::Name;
use crate::reply::Reply;
use crate::request::{Request, Targets};
use crate::status::Status;
use crate::time::Millis;
use crate::trust::{CredentialVerifier, TrustAnchors};
use std::collections::{HashMap, HashSet};
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
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            skew_ms: 5 * 60 * 1000,
            expect_head: None,
            writer: None,
        }
    }
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
    /// An embedded request or reply does not open.
    #[error("embedded {what} does not open: {error}")]
    Embedded {
        /// `request` or `reply`.
        what: &'static str,
        /// Why.
        error: OpenError,
    },
    /// An embedded message signed by a role that may not sign it.
    #[error("embedded {what} is signed by {name}, a {role}, which may not sign it")]
    WrongRole {
        /// `request` or `reply`.
        what: &'static str,
        /// The signer.
        name: Name,
        /// Its role.
        role: Role,
    },
    /// An embedded message whose `caller`/`host` is not its signer.
    #[error("embedded {what} names {claimed} but is signed by {signer}")]
    NotSigner {
        /// `request` or `reply`.
        what: &'static str,
        /// The name in the body.
        claimed: Name,
        /// The signer's name.
        signer: Name,
    },
    /// An embedded message's credential was not valid at the record's time.
    #[error("embedded {what}: signer credential not valid at the record's time: {error}")]
    EmbeddedWindow {
        /// `request` or `reply`.
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
    /// A `request_handled` record by a writer that is not a host.
    #[error("request_handled records are written by hosts, this one by {writer} ({role})")]
    HandledByNonHost {
        /// The writer.
        writer: Name,
        /// Its role.
        role: Role,
    },
    /// A handled request executed although its credential was out of its window.
    #[error(
        "request {id} was handled with a credential not valid at the time ({error}) and not refused as expired"
    )]
    ExpiredNotRefused {
        /// The request id.
        id: Uuid,
        /// Why the credential was not valid.
        error: CredentialError,
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
    /// The last record's hash is not the one expected.
    #[error("the log ends with head {got}, expected {expected} (records were cut off or differ)")]
    HeadMismatch {
        /// The expected head (hex).
        expected: String,
        /// The actual head (hex).
        got: String,
    },
}

struct SentRequest {
    digest: [u8; 32],
    targets: Targets,
}

struct Chain<'a> {
    options: &'a VerifyOptions,
    verifier: CredentialVerifier,
    writer: Option<(Name, Role)>,
    log_id: Option<[u8; 16]>,
    next_index: u64,
    prev: [u8; 32],
    requests: HashMap<Uuid, SentRequest>,
    accepted: HashSet<(Uuid, Name, u32)>,
    summary: Summary,
}

/// Verifies a chain given as files, oldest first, against the trusted issuers: the
/// framing, every record's writer signature and credential (at the record's time), the
/// hash chain and index across files, genesis and rotation placement, every embedded
/// request and reply (signature, role, credential at the record's time), and that
/// every accepted reply answers a logged request. Returns the first broken record.
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
        verifier: CredentialVerifier::new(anchors.clone(), 256),
        writer: None,
        log_id: None,
        next_index: 0,
        prev: [0; 32],
        requests: HashMap::new(),
        accepted: HashSet::new(),
        summary: Summary {
            files: files.len(),
            records: 0,
            requests_sent: 0,
            replies_accepted: 0,
            replies_rejected: 0,
            requests_handled: 0,
            handled_not_ok: 0,
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
                .record(file_no, pos, frame.bytes)
                .map_err(|p| broken(&chain, frame.offset, p))?;
        }
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

impl Chain<'_> {
    fn record(&mut self, file_no: usize, pos: usize, bytes: &[u8]) -> Result<(), Problem> {
        let env = Signed::decode(bytes, MAX_RECORD_BYTES).map_err(Problem::Envelope)?;
        let writer = self
            .verifier
            .verify(&env.signer)
            .map_err(Problem::WriterCredential)?;
        writer
            .public_key
            .verify(Context::Audit, &env.body, env.sig.as_slice())
            .map_err(|_| Problem::WriterSignature {
                writer: writer.name.clone(),
            })?;
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
        self.entry(&record, &writer)?;
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
                if !self.accepted.insert((id, host.clone(), body.seq)) {
                    return Err(Problem::DuplicateReply {
                        id,
                        host,
                        seq: body.seq,
                    });
                }
                self.summary.replies_accepted += 1;
            }
            Entry::ReplyRejected { .. } => {
                // Only the digest and an excerpt are kept (the rules on them are
                // checked when the body decodes): nothing in it was trusted.
                self.summary.replies_rejected += 1;
            }
            Entry::RequestHandled { request, reply } => {
                if writer.role != Role::Host {
                    return Err(Problem::HandledByNonHost {
                        writer: writer.name.clone(),
                        role: writer.role,
                    });
                }
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
                let mut status = None;
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
                    status = Some(rep.body().status);
                }
                // An agent logs the requests it refused too (wrong role, caller not the
                // signer, expired or revoked credential): refusing them is correct, only
                // executing them is not. A record without a reply is judged strictly.
                let executed = status.is_none_or(|s| s == Status::Ok);
                if executed {
                    check_request_signer(&req)?;
                    if let Err(error) = req.signer().check_window(time, self.options.skew_ms) {
                        return Err(Problem::ExpiredNotRefused { id: body.id, error });
                    }
                }
                self.summary.requests_handled += 1;
                if status != Some(Status::Ok) {
                    self.summary.handled_not_ok += 1;
                }
            }
        }
        Ok(())
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

    fn in_window<B>(&self, what: &'static str, m: &Opened<B>, time: Millis) -> Result<(), Problem> {
        m.signer()
            .check_window(time, self.options.skew_ms)
            .map_err(|error| Problem::EmbeddedWindow { what, error })
    }
}

fn open_embedded<B: Body>(
    what: &'static str,
    bytes: &[u8],
    verifier: &CredentialVerifier,
) -> Result<Opened<B>, Problem> {
    open::<B>(bytes, MAX_RECORD_BYTES, verifier).map_err(|error| Problem::Embedded { what, error })
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
