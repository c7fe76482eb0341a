//! What a call produced: a result per host and a summary, for people and programs.

use gearmq_schemas::{ActionName, Name, Status};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// How one host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// A verified reply with status ok.
    Ok,
    /// A verified reply with another status.
    Error,
    /// No verified reply (not enrolled, not routable, or silent until the deadline).
    NoReply,
}

/// One host's result.
#[derive(Debug, Clone)]
pub struct HostResult {
    /// The host.
    pub host: Name,
    /// How it ended.
    pub status: HostStatus,
    /// The reply's status code (ok and error).
    pub code: Option<Status>,
    /// The error message, or why there was no reply.
    pub message: Option<String>,
    /// The action's result (MessagePack), when ok.
    pub data: Option<Vec<u8>>,
    /// Time from publishing to the verified final reply.
    pub elapsed: Option<Duration>,
}

impl HostResult {
    /// A host's result from its verified final `reply`, `elapsed` after the request.
    pub fn from_reply(reply: &gearmq_schemas::Reply, elapsed: Duration) -> Self {
        HostResult {
            host: reply.host.clone(),
            status: if reply.status == Status::Ok {
                HostStatus::Ok
            } else {
                HostStatus::Error
            },
            code: Some(reply.status),
            message: reply.error.clone(),
            data: reply.data.as_ref().map(|d| d.to_vec()),
            elapsed: Some(elapsed),
        }
    }

    /// A host that gave no verified reply, and why.
    pub fn no_reply(host: Name, reason: impl Into<String>) -> Self {
        HostResult {
            host,
            status: HostStatus::NoReply,
            code: None,
            message: Some(reason.into()),
            data: None,
            elapsed: None,
        }
    }
}

/// Counts over a call.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Hosts asked.
    pub targets: usize,
    /// Hosts that answered ok.
    pub ok: usize,
    /// Hosts that answered with an error.
    pub failed: usize,
    /// Hosts that gave no verified reply.
    pub no_reply: usize,
    /// Replies rejected, by reason (security rejections and stragglers).
    pub rejected: BTreeMap<String, u64>,
    /// Repeats of replies already accepted: not a security event, counted apart.
    pub duplicates: u64,
    /// Records of this call the audit log could not take (a write failed): the
    /// results stand, but the log does not prove them all. The CLI exits 3.
    pub audit_missing: u64,
    /// Wall time of the call, in ms.
    pub elapsed_ms: f64,
}

impl Summary {
    /// Counts `n` rejected replies with `reason`, keeping duplicates apart.
    pub fn count_rejected(&mut self, reason: &str, n: u64) {
        if reason == crate::Rejection::Duplicate.as_str() {
            self.duplicates += n;
        } else {
            *self.rejected.entry(reason.to_string()).or_default() += n;
        }
    }
}

/// Everything a call produced.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// The request's id.
    pub request_id: Uuid,
    /// The action asked.
    pub action: ActionName,
    /// One per target, in host order.
    pub results: Vec<HostResult>,
    /// Counts.
    pub summary: Summary,
    /// The requests this result gathers, in the order they were sent (one per batch).
    pub batches: Vec<Batch>,
}

/// One request of a (possibly batched) call.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    /// Its id.
    pub request_id: Uuid,
    /// The hosts it was published to, in name order.
    pub hosts: Vec<String>,
}

impl CallResult {
    /// Builds the summary from results and rejection counts.
    pub fn new(
        request_id: Uuid,
        action: ActionName,
        mut results: Vec<HostResult>,
        rejected: BTreeMap<String, u64>,
        elapsed: Duration,
    ) -> Self {
        results.sort_by(|a, b| a.host.cmp(&b.host));
        let count = |s: HostStatus| results.iter().filter(|r| r.status == s).count();
        let mut summary = Summary {
            targets: results.len(),
            ok: count(HostStatus::Ok),
            failed: count(HostStatus::Error),
            no_reply: count(HostStatus::NoReply),
            rejected: BTreeMap::new(),
            duplicates: 0,
            audit_missing: 0,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        };
        for (reason, n) in rejected {
            summary.count_rejected(&reason, n);
        }
        let batches = vec![Batch {
            request_id,
            hosts: results.iter().map(|r| r.host.to_string()).collect(),
        }];
        CallResult {
            request_id,
            action,
            results,
            summary,
            batches,
        }
    }

    /// Whether every target answered ok.
    pub fn all_ok(&self) -> bool {
        self.summary.ok == self.summary.targets
    }

    /// The documented JSON document:
    /// `{"request_id","action","results":[{"host","status","code","message","data",
    /// "elapsed_ms"}],"summary":{"targets","ok","failed","no_reply","rejected","duplicates",
    /// "audit_missing","elapsed_ms"},
    /// "batches":[{"request_id","hosts"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let results: Vec<_> = self
            .results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "host": r.host.as_str(),
                    "status": r.status,
                    "code": r.code.map(|c| c.code()),
                    "message": r.message,
                    "data": r.data.as_deref().map(data_to_json),
                    "elapsed_ms": r.elapsed.map(|d| d.as_secs_f64() * 1000.0),
                })
            })
            .collect();
        serde_json::json!({
            "request_id": self.request_id.to_string(),
            "action": self.action.as_str(),
            "results": results,
            "summary": self.summary,
            "batches": self.batches,
        })
    }
}

/// An action's MessagePack result as JSON (hex string if it is not representable).
pub fn data_to_json(data: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice::<serde_json::Value>(data)
        .unwrap_or_else(|_| serde_json::Value::String(hex::encode(data)))
}

impl CallResult {
    /// Joins the result of a later batch into this one (results, counts, time).
    pub fn merge(mut self, other: CallResult) -> CallResult {
        let elapsed = self.summary.elapsed_ms + other.summary.elapsed_ms;
        let mut rejected = std::mem::take(&mut self.summary.rejected);
        for (k, v) in other.summary.rejected {
            *rejected.entry(k).or_default() += v;
        }
        let duplicates = self.summary.duplicates + other.summary.duplicates;
        let audit_missing = self.summary.audit_missing + other.summary.audit_missing;
        self.results.extend(other.results);
        let mut batches = std::mem::take(&mut self.batches);
        batches.extend(other.batches);
        let mut merged = CallResult::new(
            self.request_id,
            self.action,
            self.results,
            rejected,
            Duration::ZERO,
        );
        merged.summary.elapsed_ms = elapsed;
        merged.summary.duplicates = duplicates;
        merged.summary.audit_missing = audit_missing;
        merged.batches = batches;
        merged
    }

    /// Lists `hosts` as not asked (`no_reply` with `reason`), e.g. batches skipped
    /// after a failure.
    pub fn skip(&mut self, hosts: Vec<Name>, reason: &str) {
        let rejected = std::mem::take(&mut self.summary.rejected);
        let duplicates = self.summary.duplicates;
        let audit_missing = self.summary.audit_missing;
        let elapsed = self.summary.elapsed_ms;
        let mut results = std::mem::take(&mut self.results);
        let batches = std::mem::take(&mut self.batches);
        results.extend(hosts.into_iter().map(|h| HostResult::no_reply(h, reason)));
        *self = CallResult::new(
            self.request_id,
            self.action.clone(),
            results,
            rejected,
            Duration::ZERO,
        );
        self.summary.elapsed_ms = elapsed;
        self.summary.duplicates = duplicates;
        self.summary.audit_missing = audit_missing;
        self.batches = batches;
    }
}
