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

/// Every action this protocol version defines, in the order `--help` lists them.
pub const ALL_ACTIONS: &[&str] = &[
    "ping", "install", "start", "stop", "restart", "delete", "status", "list", "logs", "facts",
    "cancel", "stats",
];

/// The actions of a read-only operator: they observe and never change a host.
pub const READ_ONLY_ACTIONS: &[&str] =
    &["ping", "status", "list", "logs", "facts", "cancel", "stats"];
