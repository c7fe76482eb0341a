//! Arguments and results of each action, MessagePack-encoded inside requests and replies.
//!
//! A request's `args` and a reply's `data` are encoded separately from the envelope so
//! an agent can refuse an unknown action (status 2) before it tries to read arguments,
//! and decode known ones strictly (status 4 naming the problem).

use serde::{Deserialize, Serialize};

/// Largest `args` accepted, in bytes.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;

/// `ping`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingArgs {}

/// `ping`'s result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingResult {
    /// The agent's version.
    pub agent_version: String,
    /// How long the agent has run, in ms.
    pub uptime_ms: u64,
}

/// `stats`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsArgs {}

/// `stats`' result: the agent's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsResult {
    /// How long the agent has run, in ms.
    pub uptime_ms: u64,
    /// Deliveries received from the host queue.
    pub received: u64,
    /// Requests whose signature verified.
    pub verified: u64,
    /// Actions run.
    pub executed: u64,
    /// Verified requests not addressed to this host.
    pub not_target: u64,
    /// Deliveries dead-lettered (failed before the signature was proven).
    pub dead_lettered: u64,
    /// Broker sessions re-established after a loss.
    pub reconnects: u64,
    /// Refusals by reason label (only non-zero ones).
    pub refused: BTreeMap<String, u64>,
    /// Requests recorded in the audit log with their reply.
    pub audited: u64,
}

/// Every action this protocol version defines, in the order `--help` lists them.
pub const ALL_ACTIONS: &[&str] = &[
    "ping",
    "install",
    "start",
    "stop",
    "restart",
    "delete",
    "status",
    "list",
    "logs",
    "facts",
    "cancel",
    "stats",
    "revocation",
];

/// The actions of a read-only operator: they observe and never change a host.
pub const READ_ONLY_ACTIONS: &[&str] =
    &["ping", "status", "list", "logs", "facts", "cancel", "stats"];

use crate::units::UnitSpec;
use std::collections::BTreeMap;

/// `install`: write the unit file (atomically), reload, optionally start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallArgs {
    /// What to install.
    pub spec: UnitSpec,
    /// Start (or, if it was updated while running, restart) it afterwards.
    pub start: bool,
}

/// `start`, `stop`, `restart`, `delete`: one unit by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitArgs {
    /// The unit name (without `gearmq-` and `.service`).
    pub unit: String,
}

/// `status`: one unit, or every managed unit when `unit` is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    /// The unit name, or none for all.
    pub unit: Option<String>,
}

/// `list`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {}

/// `facts`: no arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsArgs {}

/// `logs`: the last lines of a unit's output, optionally followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The unit name.
    pub unit: String,
    /// How many of the last lines (capped by the agent's config).
    pub lines: u32,
    /// Keep streaming new lines as replies with rising `seq`.
    pub follow: bool,
}

/// `cancel`: end a stream (`logs --follow`) the same caller started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelArgs {
    /// The id of the request whose stream to end.
    pub request_id: uuid::Uuid,
}

/// `cancel`'s result: the stream of `request_id` was told to end; its own final reply
/// follows on the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelResult {
    /// The request whose stream is ending.
    pub request_id: uuid::Uuid,
}

/// `revocation`: a newer issuer-signed revocation list for the agent to take (and
/// keep across restarts). Not a read-only action: it changes whom the host trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationArgs {
    /// The list exactly as `gearmq revoke` wrote it (an issuer-signed envelope).
    pub list: serde_bytes::ByteBuf,
}

/// `revocation`'s result: the list the agent holds afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationResult {
    /// The sequence of the list held now: the pushed one's if it was taken, else the
    /// (equal or newer) one the agent already held.
    pub sequence: u64,
    /// Whether the pushed list was taken (it was newer than the one held).
    pub changed: bool,
}

/// What an action changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new unit was written.
    Created,
    /// The same spec was already installed.
    Unchanged,
    /// A different spec replaced the installed one.
    Updated,
    /// The unit was started.
    Started,
    /// The unit was already running.
    AlreadyRunning,
    /// The unit was stopped.
    Stopped,
    /// The unit was already stopped.
    AlreadyStopped,
    /// The unit was restarted.
    Restarted,
    /// The unit was removed.
    Deleted,
    /// There was nothing to remove.
    Absent,
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitState {
    /// The unit name.
    pub unit: String,
    /// LoadState (loaded, not-found, …).
    pub load_state: String,
    /// ActiveState (active, inactive, failed, …).
    pub active_state: String,
    /// SubState (running, dead, exited, …).
    pub sub_state: String,
    /// MainPID, 0 when none.
    pub main_pid: u32,
    /// When it entered the current active state (ms since epoch), when known.
    pub since_ms: Option<u64>,
    /// Memory in use, in bytes, when the cgroup reports it.
    pub memory_bytes: Option<u64>,
    /// How many times systemd restarted it.
    pub restarts: u32,
    /// Whether MemoryMax/CPUQuota are enforced on this host (cgroup controllers
    /// available); `None` when the unit sets no limits.
    pub limits_enforced: Option<bool>,
}

/// Result of install/start/stop/restart/delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitChangeResult {
    /// What changed (for install with `start`, the install change).
    pub change: Change,
    /// Further change made (install with `start`: started / restarted / already running).
    pub then: Option<Change>,
    /// The unit's state afterwards (absent after delete).
    pub state: Option<UnitState>,
}

/// Result of status and list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsResult {
    /// One per unit, in name order.
    pub units: Vec<UnitState>,
}

/// One reply's worth of log lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsResult {
    /// The lines, oldest first, without newlines.
    pub lines: Vec<String>,
    /// Whether lines were left out to respect the byte cap.
    pub truncated: bool,
}

/// Result of facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsResult {
    /// The kernel's host name.
    pub hostname: String,
    /// PRETTY_NAME from os-release.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Host uptime in ms.
    pub uptime_ms: u64,
    /// The agent's credential labels.
    pub labels: BTreeMap<String, String>,
    /// Units gearmq manages here.
    pub managed_units: u32,
    /// Of those, how many are active.
    pub active_units: u32,
    /// Whether resource limits are enforced (cgroup controllers available).
    pub limits_enforced: bool,
    /// When the host's credential expires (ms since epoch).
    pub credential_expires_at: u64,
    /// The agent's version.
    pub agent_version: String,
}
