//! `gearmq audit verify` and `gearmq audit show`: offline checks of audit logs.
//!
//! An auditor needs nothing but the log files, the issuer public key(s) and this
//! binary: no config, no broker, no private key.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gearmq_io::files::load_trusted_issuers;
use gearmq_schemas::audit::{
    self, Broken, Entry, MAX_RECORD_BYTES, RecordView, RevokedUse, Summary, VerifyOptions, frames,
    peek_signed, read_record,
};
use gearmq_schemas::event::{Event, What};
use gearmq_schemas::request::Targets;
use gearmq_schemas::revocation::{RevocationList, verify_revocation};
use gearmq_schemas::time::{Millis, duration_ms};
use gearmq_schemas::{Name, Reply, Request, TrustAnchors};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;

/// `gearmq audit …`
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check audit logs offline: the hash chain, every record's writer signature and
    /// every embedded request, reply and event, with credentials judged at each
    /// record's time; that every request a host answered other than by a refusal was one its
    /// signer could make, in its window, and executed once.
    ///
    /// Exit codes: 0 the log holds (a summary is printed); 1 a record is broken (the
    /// first one is named); 3 the log holds but records used a credential after a
    /// --revocations list revoked it (they are listed); 2 the check could not run
    /// (unreadable file, bad argument or revocation list).
    ///
    /// Records cut off the end of a log leave a valid shorter chain: only
    /// --expect-head, with a head noted elsewhere, detects that, and without it the
    /// output says so.
    Verify {
        /// The log's files. A rotated family (audit.log.1 audit.log.2 audit.log, in any
        /// order) is put in chain order; otherwise give them oldest first.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A trusted issuer public key file (repeatable, for a rotated issuer).
        #[arg(long = "issuer", value_name = "PUBKEY_FILE", required = true)]
        issuers: Vec<PathBuf>,
        /// The hash the last record must have (hex), as noted from an earlier run:
        /// catches records cut off the end.
        #[arg(long, value_name = "HEX")]
        expect_head: Option<String>,
        /// The name the log's writer must have (an operator or a host).
        #[arg(long, value_name = "NAME")]
        writer: Option<String>,
        /// A revocation list signed by a trusted issuer (repeatable): list the records
        /// that used a credential it revokes from the moment of revocation on, and exit
        /// 3 if there are any. A revoked name counts from its `before` time; a list
        /// keeps no time per revoked serial, so a serial counts from the issue time of
        /// the oldest list given that names it: give older lists too to narrow it.
        #[arg(long = "revocations", value_name = "FILE")]
        revocations: Vec<PathBuf>,
        /// Clock skew allowed when judging a credential at a record's time.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        skew: Duration,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a log's records readably (nothing is verified: use `audit verify`).
    Show {
        /// The log's files, as for `verify`.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Only records about this request id.
        #[arg(long, value_name = "ID")]
        request: Option<Uuid>,
        /// Only records about this host (writer, reply host, event host, named target,
        /// broker user).
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit command: exit 0 clean / shown, 1 a broken log; errors (unreadable
/// files, bad arguments) are returned for the caller's exit 2.
pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            files,
            issuers,
            expect_head,
            writer,
            revocations,
            skew,
            json,
        } => verify(
            files,
            &issuers,
            expect_head,
            writer,
            &revocations,
            skew,
            json,
        ),
        AuditCommand::Show {
            files,
            request,
            host,
            json,
        } => show(files, request, host, json),
    }
}

/// What `verify` says when no head was given to compare the last record with.
const CUT_TAIL_NOTICE: &str = "records cut off the end of the log cannot be detected without --expect-head: note the head above somewhere else and pass it next time";

/// Exit code of a log that holds but used revoked credentials.
const EXIT_REVOKED: u8 = 3;

fn verify(
    files: Vec<PathBuf>,
    issuers: &[PathBuf],
    expect_head: Option<String>,
    writer: Option<String>,
    revocations: &[PathBuf],
    skew: Duration,
    json: bool,
) -> Result<ExitCode> {
    let anchors = TrustAnchors::new(load_trusted_issuers(issuers)?);
    let expect_head = expect_head
        .map(|h| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out)
                .map(|()| out)
                .with_context(|| format!("--expect-head {h:?} is not 64 hex characters"))
        })
        .transpose()?;
    let writer = writer
        .map(|w| Name::new(w.clone()).with_context(|| format!("--writer {w:?}")))
        .transpose()?;
    let revocations = revocations
        .iter()
        .map(|p| load_revocations(p, &anchors))
        .collect::<Result<Vec<_>>>()?;
    let lists = revocations.len();
    let tail_checked = expect_head.is_some();
    let options = VerifyOptions {
        skew_ms: duration_ms(skew),
        expect_head,
        writer,
        revocations,
    };
    let files = read_files(chain_order(files))?;
    match audit::verify_log(&files, &anchors, &options) {
        Ok(summary) => {
            if json {
                println!("{}", summary_json(&files, &summary, tail_checked, lists));
            } else {
                print_summary(&summary, tail_checked, lists);
            }
            Ok(if summary.revoked_uses > 0 {
                ExitCode::from(EXIT_REVOKED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(broken) => {
            if json {
                println!("{}", broken_json(&broken));
            } else {
                println!("{broken}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Puts each rotated family (`X.1`, `X.2`, …, `X`) in chain order, families in the
/// order they were first named; other files keep their place.
fn chain_order(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let key = |p: &Path| -> (PathBuf, u64) {
        let s = p.to_string_lossy();
        if let Some((base, n)) = s.rsplit_once('.')
            && !n.is_empty()
            && n.bytes().all(|c| c.is_ascii_digit())
            && let Ok(n) = n.parse::<u64>()
        {
            return (PathBuf::from(base), n);
        }
        (p.to_path_buf(), u64::MAX)
    };
    let mut bases: Vec<PathBuf> = Vec::new();
    let mut keyed: Vec<(usize, u64, PathBuf)> = files
        .into_iter()
        .map(|p| {
            let (base, n) = key(&p);
            let family = bases.iter().position(|b| *b == base).unwrap_or_else(|| {
                bases.push(base);
                bases.len() - 1
            });
            (family, n, p)
        })
        .collect();
    keyed.sort_by_key(|(family, n, _)| (*family, *n));
    keyed.into_iter().map(|(_, _, p)| p).collect()
}

fn load_revocations(path: &Path, anchors: &TrustAnchors) -> Result<RevocationList> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read revocation list {}", path.display()))?;
    verify_revocation(&bytes, anchors.issuers()).with_context(|| {
        format!(
            "{} is not a revocation list signed by a trusted issuer (--issuer)",
            path.display()
        )
    })
}

fn read_files(paths: Vec<PathBuf>) -> Result<Vec<(String, Vec<u8>)>> {
    paths
        .into_iter()
        .map(|p| {
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            Ok((p.display().to_string(), bytes))
        })
        .collect()
}

fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn print_summary(s: &Summary, tail_checked: bool, lists: usize) {
    println!(
        "ok: {} records in {} file{}, written by {} ({}), {} .. {}",
        s.records,
        s.files,
        if s.files == 1 { "" } else { "s" },
        s.writer,
        s.writer_role,
        rfc3339(s.first_time),
        rfc3339(s.last_time),
    );
    println!(
        "requests: {}  replies: {}  rejected: {} (+{} summarised in {} record{})  handled: {} ({} not ok)  repeated: {}  events: {}",
        s.requests_sent,
        s.replies_accepted,
        s.replies_rejected,
        s.replies_summarised,
        s.rejection_summaries,
        if s.rejection_summaries == 1 { "" } else { "s" },
        s.requests_handled,
        s.handled_not_ok,
        s.requests_repeated,
        s.events_accepted,
    );
    println!("head: {}", hex::encode(s.head));
    if !tail_checked {
        println!("note: {CUT_TAIL_NOTICE}");
    }
    if lists > 0 {
        if s.revoked_uses == 0 {
            println!(
                "revocations: no record used a revoked credential ({lists} list{})",
                if lists == 1 { "" } else { "s" }
            );
        } else {
            println!(
                "REVOKED: {} use{} of a revoked credential:",
                s.revoked_uses,
                if s.revoked_uses == 1 { "" } else { "s" }
            );
            for u in &s.revoked {
                println!("  {}", revoked_line(u));
            }
            let unlisted = s.revoked_uses - s.revoked.len() as u64;
            if unlisted > 0 {
                println!("  … and {unlisted} more");
            }
        }
    }
}

fn revoked_line(u: &RevokedUse) -> String {
    let what = match u.what {
        "writer" => "written",
        "request" => "holds a request signed",
        "event" => "holds an event signed",
        _ => "holds a reply signed",
    };
    format!(
        "{}: record {} at {} {what} by {} ({}, serial {}), revoked since {}",
        u.file,
        u.record,
        rfc3339(u.time),
        u.name,
        u.role,
        u.serial,
        rfc3339(u.revoked_since)
    )
}

fn summary_json(
    files: &[(String, Vec<u8>)],
    s: &Summary,
    tail_checked: bool,
    lists: usize,
) -> Value {
    json!({
        "ok": s.revoked_uses == 0,
        "chain_ok": true,
        "files": files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "records": s.records,
        "requests": s.requests_sent,
        "replies": s.replies_accepted,
        "rejected": s.replies_rejected,
        "rejected_summarised": s.replies_summarised,
        "rejection_summaries": s.rejection_summaries,
        "handled": s.requests_handled,
        "handled_not_ok": s.handled_not_ok,
        "repeated": s.requests_repeated,
        "events": s.events_accepted,
        "head": hex::encode(s.head),
        "tail_checked": tail_checked,
        "notice": (!tail_checked).then_some(CUT_TAIL_NOTICE),
        "log_id": hex::encode(s.log_id),
        "writer": s.writer.as_str(),
        "writer_role": s.writer_role.to_string(),
        "first_time": rfc3339(s.first_time),
        "last_time": rfc3339(s.last_time),
        "revocation_lists": lists,
        "revoked_uses": s.revoked_uses,
        "revoked": s.revoked.iter().map(|u| json!({
            "file": u.file,
            "record": u.record,
            "time": rfc3339(u.time),
            "what": u.what,
            "name": u.name.as_str(),
            "role": u.role.to_string(),
            "serial": u.serial,
            "revoked_since": rfc3339(u.revoked_since),
        })).collect::<Vec<_>>(),
    })
}

fn broken_json(b: &Broken) -> Value {
    json!({
        "ok": false,
        "chain_ok": false,
        "file": b.file,
        "record": b.record,
        "offset": b.offset,
        "reason": b.problem.to_string(),
    })
}

fn show(
    files: Vec<PathBuf>,
    request: Option<Uuid>,
    host: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let host = host
        .map(|h| Name::new(h.clone()).with_context(|| format!("--host {h:?}")))
        .transpose()?;
    let mut shown = Vec::new();
    let mut problems = 0usize;
    for (file, bytes) in read_files(chain_order(files))? {
        for frame in frames(&bytes) {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    problems += 1;
                    eprintln!("{file}: {e}");
                    break;
                }
            };
            let view = match read_record(frame.bytes) {
                Ok(v) => v,
                Err(e) => {
                    problems += 1;
                    eprintln!(
                        "{file}: record at byte {}: does not decode: {e}",
                        frame.offset
                    );
                    continue;
                }
            };
            let shown_record = describe(&file, &view);
            if shown_record.matches(request, host.as_ref()) {
                shown.push(shown_record);
            }
        }
    }
    // Piped into head or less: stop quietly when the reader goes away.
    let mut out = std::io::stdout().lock();
    let written = if json {
        let records: Vec<Value> = shown.iter().map(Shown::to_json).collect();
        writeln!(out, "{}", json!({ "records": records }))
    } else {
        shown.iter().try_for_each(|s| writeln!(out, "{}", s.line()))
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other.context("cannot write to stdout")?,
    }
    if problems > 0 {
        bail!(
            "{problems} part(s) of the log could not be read (see above); run gearmq audit verify"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A request as shown (decoded, not verified).
struct ShownRequest {
    id: Uuid,
    action: String,
    caller: String,
    targets: String,
    target_hosts: Vec<Name>,
    delegated: bool,
}

/// A reply as shown (decoded, not verified).
struct ShownReply {
    request_id: Uuid,
    host: Name,
    status: String,
    seq: u32,
    is_final: bool,
    error: Option<String>,
}

/// An event as shown (decoded, not verified).
struct ShownEvent {
    host: Name,
    boot: [u8; 16],
    seq: u64,
    /// When the host signed it (ms since epoch).
    time: Millis,
    what: What,
}

impl ShownEvent {
    /// The boot id's first 4 bytes in hex: enough to tell a host's boots apart.
    fn boot_prefix(&self) -> String {
        hex::encode(&self.boot[..4])
    }
}

struct Shown {
    file: String,
    view: RecordView,
    request: Option<Result<ShownRequest, String>>,
    reply: Option<Result<ShownReply, String>>,
    event: Option<Result<ShownEvent, String>>,
}

fn describe(file: &str, view: &RecordView) -> Shown {
    let event = match &view.record.entry {
        Entry::EventAccepted { event } => Some(shown_event(event)),
        _ => None,
    };
    let (request, reply) = match &view.record.entry {
        Entry::RequestSent { request } => (Some(shown_request(request)), None),
        Entry::ReplyAccepted { reply } => (None, Some(shown_reply(reply))),
        Entry::RequestHandled { request, reply } => (
            Some(shown_request(request)),
            reply.as_ref().map(|r| shown_reply(r)),
        ),
        _ => (None, None),
    };
    Shown {
        file: file.to_string(),
        view: view.clone(),
        request,
        reply,
        event,
    }
}

fn shown_request(bytes: &[u8]) -> Result<ShownRequest, String> {
    let (r, _) = peek_signed::<Request>(bytes, MAX_RECORD_BYTES).map_err(|e| e.to_string())?;
    let (targets, target_hosts) = match &r.targets {
        Targets::Hosts(h) => (
            format!(
                "hosts {}",
                h.iter().map(Name::as_str).collect::<Vec<_>>().join(",")
            ),
            h.clone(),
        ),
        Targets::All => ("all".to_string(), Vec::new()),
        Targets::Selector(clauses) => (
            format!(
                "where {}",
                clauses
                    .iter()
                    .map(|c| {
                        let op = match c.op {
                            gearmq_schemas::MatchOp::Eq => "=",
                            gearmq_schemas::MatchOp::Ne => "!=",
                            gearmq_schemas::MatchOp::Regex => "~",
                        };
                        format!("{}{op}{}", c.key, c.value)
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Vec::new(),
        ),
    };
    Ok(ShownRequest {
        id: r.id,
        action: r.action.as_str().to_string(),
        caller: r.caller.to_string(),
        targets,
        target_hosts,
        delegated: r.token.is_some(),
    })
}

fn shown_reply(bytes: &[u8]) -> Result<ShownReply, String> {
    let (r, _) = peek_signed::<Reply>(bytes, MAX_RECORD_BYTES).map_err(|e| e.to_string())?;
    Ok(ShownReply {
        request_id: r.request_id,
        host: r.host,
        status: r.status.to_string(),
        seq: r.seq,
        is_final: r.is_final,
        error: r.error,
    })
}

fn shown_event(bytes: &[u8]) -> Result<ShownEvent, String> {
    let (e, _) = peek_signed::<Event>(bytes, MAX_RECORD_BYTES).map_err(|e| e.to_string())?;
    Ok(ShownEvent {
        host: e.host,
        boot: e.boot.into_array(),
        seq: e.seq,
        time: e.time,
        what: e.what,
    })
}

impl Shown {
    fn matches(&self, request: Option<Uuid>, host: Option<&Name>) -> bool {
        let req = self.request.as_ref().and_then(|r| r.as_ref().ok());
        let rep = self.reply.as_ref().and_then(|r| r.as_ref().ok());
        let ev = self.event.as_ref().and_then(|e| e.as_ref().ok());
        let summarised_for = match &self.view.record.entry {
            Entry::RepliesRejected { request_id, .. } => *request_id,
            _ => None,
        };
        if let Some(id) = request
            && req.is_none_or(|r| r.id != id)
            && rep.is_none_or(|r| r.request_id != id)
            && summarised_for != Some(id)
        {
            return false;
        }
        if let Some(h) = host {
            let rejected_from = match &self.view.record.entry {
                Entry::ReplyRejected { broker_user, .. } => broker_user.as_deref(),
                _ => None,
            };
            let about = self.view.writer.name == *h
                || req.is_some_and(|r| r.target_hosts.contains(h))
                || rep.is_some_and(|r| r.host == *h)
                || ev.is_some_and(|e| e.host == *h)
                || rejected_from == Some(h.as_str());
            if !about {
                return false;
            }
        }
        true
    }

    fn line(&self) -> String {
        let r = &self.view.record;
        let mut out = format!(
            "#{} {} {} {}",
            r.index,
            rfc3339(r.time),
            self.view.writer.name,
            r.entry.name()
        );
        match &self.request {
            Some(Ok(q)) => out.push_str(&format!(
                " request {} {} {} by {}{}",
                q.id,
                q.action,
                q.targets,
                q.caller,
                if q.delegated { " (delegated)" } else { "" }
            )),
            Some(Err(e)) => out.push_str(&format!(" request undecodable: {e}")),
            None => {}
        }
        match &self.reply {
            Some(Ok(p)) => {
                if self.request.is_none() {
                    out.push_str(&format!(" request {}", p.request_id));
                }
                out.push_str(&format!(" reply from {}: {}", p.host, p.status));
                if p.seq > 0 || !p.is_final {
                    out.push_str(&format!(
                        " (seq {}{})",
                        p.seq,
                        if p.is_final { ", final" } else { "" }
                    ));
                }
                if let Some(e) = &p.error {
                    out.push_str(&format!(": {e}"));
                }
            }
            Some(Err(e)) => out.push_str(&format!(" reply undecodable: {e}")),
            None => {}
        }
        match &self.event {
            Some(Ok(e)) => {
                out.push_str(&format!(
                    " {} from {} boot {} seq {}",
                    e.what.name(),
                    e.host,
                    e.boot_prefix(),
                    e.seq
                ));
                if let What::Unit {
                    unit,
                    change,
                    active_state,
                    sub_state,
                    result,
                    restarts,
                } = &e.what
                {
                    out.push_str(&format!(
                        ": {unit} {} ({active_state}/{sub_state}, result {result}, {restarts} restart{})",
                        change.as_str(),
                        if *restarts == 1 { "" } else { "s" }
                    ));
                }
            }
            Some(Err(e)) => out.push_str(&format!(" event undecodable: {e}")),
            None => {}
        }
        if let Some(x) = r.entry.as_rejected_reply() {
            out.push_str(&format!(
                " {}: {} bytes from broker user {}, sha256 {}",
                x.reason,
                x.size,
                x.broker_user.unwrap_or("(none)"),
                hex::encode(x.digest)
            ));
        }
        if let Some(x) = r.entry.as_summary() {
            out.push_str(&format!(
                " {}: {} messages, {} bytes, {} .. {}: {}",
                x.request_id
                    .map_or_else(|| "no request".to_string(), |id| format!("request {id}")),
                x.messages,
                x.bytes,
                rfc3339(x.first_time),
                rfc3339(x.last_time),
                x.counts
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match &r.entry {
            Entry::RequestHandled { reply: None, .. } => out.push_str(" (no reply sent)"),
            Entry::RequestRepeated { request, reply } => out.push_str(&format!(
                " request sha256 {} answered again with reply sha256 {}",
                hex::encode(**request),
                hex::encode(**reply)
            )),
            Entry::Genesis {} => out.push_str(&format!(" log {}", hex::encode(*r.log_id))),
            Entry::Rotation { previous_file_head } => out.push_str(&format!(
                " continues from {}",
                hex::encode(**previous_file_head)
            )),
            _ => {}
        }
        out
    }

    fn to_json(&self) -> Value {
        let r = &self.view.record;
        let mut v = json!({
            "file": self.file,
            "index": r.index,
            "time": rfc3339(r.time),
            "time_ms": r.time,
            "writer": self.view.writer.name.as_str(),
            "writer_role": self.view.writer.role.to_string(),
            "entry": r.entry.name(),
            "hash": hex::encode(self.view.hash),
            "log_id": hex::encode(*r.log_id),
            // false: left unsigned by its writer, sealed by the next signed record
            // (gearmq audit verify checks that one exists).
            "signed": self.view.signed,
        });
        match &self.request {
            Some(Ok(q)) => {
                v["request"] = json!({
                    "id": q.id.to_string(),
                    "action": q.action,
                    "caller": q.caller,
                    "targets": q.targets,
                    "delegated": q.delegated,
                });
            }
            Some(Err(e)) => v["request"] = json!({ "error": e }),
            None => {}
        }
        match &self.reply {
            Some(Ok(p)) => {
                v["reply"] = json!({
                    "request_id": p.request_id.to_string(),
                    "host": p.host.as_str(),
                    "status": p.status,
                    "seq": p.seq,
                    "final": p.is_final,
                    "error": p.error,
                });
            }
            Some(Err(e)) => v["reply"] = json!({ "error": e }),
            None => {}
        }
        match &self.event {
            Some(Ok(e)) => v["event"] = event_json(e),
            Some(Err(e)) => v["event"] = json!({ "error": e }),
            None => {}
        }
        if let Some(x) = r.entry.as_rejected_reply() {
            v["rejected"] = json!({
                "reason": x.reason,
                "broker_user": x.broker_user,
                "size": x.size,
                "digest": hex::encode(x.digest),
                "excerpt_hex": hex::encode(x.excerpt),
            });
        }
        if let Entry::RequestRepeated { request, reply } = &r.entry {
            v["repeated"] = json!({
                "request_sha256": hex::encode(**request),
                "reply_sha256": hex::encode(**reply),
            });
        }
        if let Some(x) = r.entry.as_summary() {
            v["summarised"] = json!({
                "request_id": x.request_id.map(|id| id.to_string()),
                "counts": x.counts,
                "messages": x.messages,
                "bytes": x.bytes,
                "first_time": rfc3339(x.first_time),
                "last_time": rfc3339(x.last_time),
            });
        }
        v
    }
}

fn event_json(e: &ShownEvent) -> Value {
    let mut v = json!({
        "host": e.host.as_str(),
        "event": e.what.name(),
        "boot": hex::encode(e.boot),
        "boot_prefix": e.boot_prefix(),
        "seq": e.seq,
        "time": rfc3339(e.time),
        "time_ms": e.time,
    });
    match &e.what {
        What::Started {
            agent_version,
            labels,
            credential_not_after,
            interval_ms,
        } => {
            v["agent_version"] = json!(agent_version);
            v["labels"] = json!(labels);
            v["credential_not_after"] = json!(rfc3339(*credential_not_after));
            v["interval_ms"] = json!(interval_ms);
        }
        What::Alive {
            agent_version,
            interval_ms,
        } => {
            v["agent_version"] = json!(agent_version);
            v["interval_ms"] = json!(interval_ms);
        }
        What::Stopping {} => {}
        What::Unit {
            unit,
            change,
            active_state,
            sub_state,
            result,
            restarts,
        } => {
            v["unit"] = json!(unit);
            v["change"] = json!(change.as_str());
            v["active_state"] = json!(active_state);
            v["sub_state"] = json!(sub_state);
            v["result"] = json!(result);
            v["restarts"] = json!(restarts);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::audit::AuditRecord;
    use gearmq_schemas::event::UnitChange;
    use gearmq_schemas::{Credential, Role, Signed, SigningKey};

    /// An `event_accepted` record by operator `ops` holding `what` of host `web1`.
    fn event_record(what: What) -> Shown {
        let issuer = SigningKey::from_seed(&[1; 32]);
        let cred = |seed: u8, name: &str, role| {
            let key = SigningKey::from_seed(&[seed; 32]);
            let c = Credential::new(1, Name::new(name).unwrap(), role, key.public_key(), 0, 1);
            (key, c.issue(&issuer))
        };
        let (web1_key, web1) = cred(2, "web1", Role::Host);
        let (ops_key, ops) = cred(3, "ops", Role::Operator);
        let mut boot = [0xee; 16];
        boot[..4].copy_from_slice(&[0x01, 0x23, 0x45, 0x67]);
        let ev = Event::new(Name::new("web1").unwrap(), boot, 7, 1_000, what);
        let entry = Entry::event_accepted(&Signed::seal(&ev, &web1_key, &web1));
        let record = AuditRecord::new([0; 16], 3, [0; 32], 1_000, entry);
        let view = read_record(&Signed::seal(&record, &ops_key, &ops)).unwrap();
        describe("audit.log", &view)
    }

    #[test]
    fn an_accepted_event_shows_its_host_boot_seq_and_unit() {
        let shown = event_record(What::Unit {
            unit: "web".into(),
            change: UnitChange::Restarted,
            active_state: "activating".into(),
            sub_state: "auto-restart".into(),
            result: "exit-code".into(),
            restarts: 2,
        });
        let line = shown.line();
        assert!(
            line.ends_with(
                " ops event_accepted unit from web1 boot 01234567 seq 7: web restarted (activating/auto-restart, result exit-code, 2 restarts)"
            ),
            "{line}"
        );
        let v = shown.to_json();
        assert_eq!(v["event"]["host"], "web1");
        assert_eq!(v["event"]["event"], "unit");
        assert_eq!(v["event"]["boot_prefix"], "01234567");
        assert_eq!(v["event"]["seq"], 7);
        assert_eq!(v["event"]["unit"], "web");
        assert_eq!(v["event"]["change"], "restarted");
        // --host matches the event's host as well as the writer; --request never.
        assert!(shown.matches(None, Some(&Name::new("web1").unwrap())));
        assert!(shown.matches(None, Some(&Name::new("ops").unwrap())));
        assert!(!shown.matches(None, Some(&Name::new("db1").unwrap())));
        assert!(!shown.matches(Some(Uuid::nil()), None));

        let alive = event_record(What::Alive {
            agent_version: "0.1.0".into(),
            interval_ms: 10_000,
        });
        assert!(
            alive
                .line()
                .ends_with(" event_accepted alive from web1 boot 01234567 seq 7"),
            "{}",
            alive.line()
        );
        assert_eq!(alive.to_json()["event"]["interval_ms"], 10_000);
    }

    #[test]
    fn rotated_families_are_put_in_chain_order() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            chain_order(vec![
                p("a/audit.log"),
                p("other.log"),
                p("a/audit.log.10"),
                p("a/audit.log.2"),
            ]),
            vec![
                p("a/audit.log.2"),
                p("a/audit.log.10"),
                p("a/audit.log"),
                p("other.log"),
            ]
        );
    }
}
