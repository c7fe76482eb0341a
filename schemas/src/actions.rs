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
    /// Of `audited`, repeats of a request already on record, recorded by digest.
    pub audited_repeats: u64,
    /// Stored replies sent again for byte-identical redeliveries.
    pub resent: u64,
    /// Requests held in the replay store (executed requests of authorized callers,
    /// until they expire).
    pub replay_entries: u64,
    /// Bytes the replay store holds, as counted against `limits.max_stored_reply_bytes`.
    pub replay_bytes: u64,
}

/// Every action this protocol version defines, in the order `--help` lists them.
pub const ALL_ACTIONS: &[&str] = &[
    "ping",
    "install",
    "start",
    "stop",
    "restart",
    "reload",
    "delete",
    "enable",
    "disable",
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
    /// Enable it, so its manager starts it at boot (`false`: disable it).
    pub enable: bool,
    /// The program, shipped with the request: the agent fetches it, checks it against
    /// the digest and size signed here, and runs it (`spec.exec` is then
    /// [`ARTIFACT_EXEC`]). `None`: `spec.exec` is a program already on the host.
    pub artifact: Option<Artifact>,
}

/// `spec.exec` of an install that ships its program: the artifact's stored file.
pub const ARTIFACT_EXEC: &str = "{artifact}";
/// Largest artifact the protocol allows (an agent's `limits.max_artifact_bytes` may be
/// lower).
pub const MAX_ARTIFACT_BYTES: u64 = 4 << 30;
/// Longest artifact URL.
pub const MAX_ARTIFACT_URL: usize = 2048;

/// A program shipped with an `install`: what its bytes must hash to, how many there
/// are, and where the agent gets them (a URL, or the broker's artifact stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// SHA-256 of the file's bytes.
    pub sha256: serde_bytes::ByteArray<32>,
    /// Its size in bytes, 1 to [`MAX_ARTIFACT_BYTES`].
    pub size: u64,
    /// Where the agent fetches it: an `http://` or `https://` URL; `None`: from the
    /// artifact stream of this digest on the request's broker ([`artifact_stream`]),
    /// where the caller put the bytes before publishing the request.
    pub url: Option<String>,
}

/// The broker stream (a RabbitMQ stream queue) an artifact without a URL travels in,
/// published once for every host: `gearmq.artifact.<sha256 hex>`.
pub fn artifact_stream(sha256_hex: &str) -> String {
    format!("gearmq.artifact.{sha256_hex}")
}

/// The header of an artifact chunk naming its byte offset in the artifact (long-long).
pub const ARTIFACT_OFFSET_HEADER: &str = "gearmq-offset";
/// The bytes of one artifact chunk (the last may be shorter).
pub const ARTIFACT_CHUNK_BYTES: usize = 1 << 20;

impl Artifact {
    /// Checks the fields (errors name them: `artifact.url`, `artifact.size`).
    pub fn validate(&self) -> Result<(), crate::units::FieldError> {
        let err = |field: &str, reason: String| crate::units::FieldError {
            field: field.into(),
            reason,
        };
        if self.size == 0 || self.size > MAX_ARTIFACT_BYTES {
            return Err(err(
                "artifact.size",
                format!("must be 1 to {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        let Some(u) = &self.url else {
            return Ok(());
        };
        let scheme_ok = u.starts_with("http://") || u.starts_with("https://");
        if !scheme_ok
            || u.len() > MAX_ARTIFACT_URL
            || u.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(err(
                "artifact.url",
                format!(
                    "{u:?} is not an http:// or https:// URL of at most {MAX_ARTIFACT_URL} bytes without spaces"
                ),
            ));
        }
        Ok(())
    }

    /// The digest as lower-case hex (the stored file's name).
    pub fn hex(&self) -> String {
        hex::encode(self.sha256.as_slice())
    }

    /// Where the bytes come from, for messages: the URL or the stream's name.
    pub fn source(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("broker stream {}", artifact_stream(&self.hex())),
        }
    }
}

/// Where in a shipped `.tar.gz` tree the program is, when `spec.exec` is
/// `{artifact}/<path>`: `Some(path)`, a relative path of 1 to 16 components, each 1 to
/// 255 bytes of `[A-Za-z0-9._+-]` and neither `.` nor `..`. `None` when `exec` does not
/// name a path in a tree, or names one badly.
pub fn artifact_tree_path(exec: &str) -> Option<&str> {
    let rest = exec.strip_prefix(ARTIFACT_EXEC)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let ok = (1..=16).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 255
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        });
    ok.then_some(rest)
}

impl InstallArgs {
    /// Checks the spec and the artifact together: with an artifact, `spec.exec` must be
    /// [`ARTIFACT_EXEC`] (the shipped file runs) or `{artifact}/<path>` (the shipped
    /// file is a `.tar.gz` tree, unpacked, and `<path>` in it runs:
    /// [`artifact_tree_path`]); without one, an absolute path. Errors name the field.
    pub fn validate(&self) -> Result<(), crate::units::FieldError> {
        match &self.artifact {
            None => self.spec.validate(),
            Some(a) => {
                a.validate()?;
                let tree = artifact_tree_path(&self.spec.exec);
                if self.spec.exec != ARTIFACT_EXEC && tree.is_none() {
                    return Err(crate::units::FieldError {
                        field: "exec".into(),
                        reason: format!(
                            "with an artifact, exec is {ARTIFACT_EXEC} (the shipped file) or \
                             {ARTIFACT_EXEC}/PATH (PATH in the shipped .tar.gz tree: relative, \
                             components of [A-Za-z0-9._+-], no . or ..), not {:?}",
                            self.spec.exec
                        ),
                    });
                }
                let mut spec = self.spec.clone();
                spec.exec = match tree {
                    Some(p) => format!("/artifact/{p}"),
                    None => "/artifact".into(),
                };
                spec.validate()
            }
        }
    }
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
    /// The unit was enabled (started at boot from now on).
    Enabled,
    /// The unit was enabled already.
    AlreadyEnabled,
    /// The unit was disabled (no longer started at boot).
    Disabled,
    /// The unit was disabled already.
    AlreadyDisabled,
    /// The unit reloaded its configuration (its `ExecReload=`), keeping its main process.
    Reloaded,
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
    /// UnitFileState: `enabled` (started at boot), `disabled`, …; empty when unknown.
    pub unit_file_state: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::UnitSpec;

    fn shipping(exec: &str) -> InstallArgs {
        InstallArgs {
            spec: UnitSpec::new("app", exec),
            start: false,
            enable: true,
            artifact: Some(Artifact {
                sha256: serde_bytes::ByteArray::new([7; 32]),
                size: 10,
                url: None,
            }),
        }
    }

    #[test]
    fn a_shipped_program_is_the_file_or_a_path_inside_its_tree() {
        assert_eq!(artifact_tree_path("{artifact}/bin/app"), Some("bin/app"));
        assert_eq!(
            artifact_tree_path("{artifact}/a-1.2_x+y"),
            Some("a-1.2_x+y")
        );
        for bad in [
            "{artifact}",
            "{artifact}/",
            "{artifact}//app",
            "{artifact}/../bin/sh",
            "{artifact}/bin/./app",
            "{artifact}/bin/app/",
            "{artifact}/bin app",
            "{artifact}bin/app",
            "/usr/bin/{artifact}/x",
            "{artifact}/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q",
        ] {
            assert_eq!(artifact_tree_path(bad), None, "{bad}");
        }
        assert!(shipping("{artifact}").validate().is_ok());
        assert!(shipping("{artifact}/bin/app").validate().is_ok());
        for bad in ["{artifact}/../x", "/usr/bin/true", "{artifact}/"] {
            let e = shipping(bad).validate().unwrap_err();
            assert_eq!(e.field, "exec", "{bad}");
        }
    }
}
