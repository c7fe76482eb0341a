//! Events: what a host says of itself without being asked (PROTOCOL.md, "Events").
//!
//! An agent publishes `started` when it has a broker session for the first time,
//! `alive` every interval, `stopping` on a clean shutdown, and `unit` when a unit it
//! manages (or an allowlisted one) failed, exited or was restarted by systemd. Each
//! travels as a [`crate::Signed`] envelope under the host credential in its own
//! context (`gearmq/v1/event`), so it cannot be read as a reply, and carries the
//! agent's boot id and a sequence number that rises by one per event of that boot:
//! a receiver takes each (host, boot, seq) once and in order.

use crate::envelope::{Body, Context};
use crate::names::{Name, check_label_key, check_label_value};
use crate::time::Millis;
use crate::units::UnitName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Shortest alive interval an event may declare (1 s).
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Longest alive interval an event may declare (1 h).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Most labels a `started` event carries (a credential's limit).
pub const MAX_EVENT_LABELS: usize = 64;
/// Longest agent version string.
pub const MAX_AGENT_VERSION: usize = 64;
/// Longest systemd state or result word (`activating`, `exit-code`, …).
pub const MAX_STATE_WORD: usize = 32;

/// The body of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Always `"event"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// The host it is about; must equal the signer credential's name.
    pub host: Name,
    /// 16 random bytes the agent draws when it starts: its events share them.
    pub boot: serde_bytes::ByteArray<16>,
    /// 0 for the first event of a boot, rising by one for each further one.
    pub seq: u64,
    /// When the agent signed it (ms since epoch).
    pub time: Millis,
    /// What happened.
    pub what: What,
}

/// What an event reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// The agent started and reached the broker.
    Started {
        /// The agent's version (`0.1.0`).
        agent_version: String,
        /// The labels of its credential.
        labels: BTreeMap<String, String>,
        /// When its credential expires (ms since epoch).
        credential_not_after: Millis,
        /// How often it sends `alive`, in ms.
        interval_ms: u64,
    },
    /// The agent is running; sent every `interval_ms`.
    Alive {
        /// The agent's version.
        agent_version: String,
        /// How often it sends `alive`, in ms.
        interval_ms: u64,
    },
    /// The agent is shutting down cleanly; nothing follows from this boot.
    Stopping {},
    /// A unit changed state on its own (not by a request of gearmq's).
    Unit {
        /// The unit as a request names it: a gearmq unit's short name (`web`) or an
        /// existing unit's full name (`nginx.service`).
        unit: String,
        /// What became of it.
        change: UnitChange,
        /// systemd's `ActiveState` after the change.
        active_state: String,
        /// systemd's `SubState` after the change.
        sub_state: String,
        /// The service's `Result` (`success`, `exit-code`, `signal`, …).
        result: String,
        /// The service's `NRestarts`: how often systemd restarted it by `Restart=`.
        restarts: u32,
    },
}

/// What became of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitChange {
    /// It entered the `failed` state.
    Failed,
    /// Its process ended and it is inactive, not failed.
    Exited,
    /// systemd started it again by its `Restart=` setting (`restarts` rose).
    Restarted,
}

impl UnitChange {
    /// The change as a word (`failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            UnitChange::Failed => "failed",
            UnitChange::Exited => "exited",
            UnitChange::Restarted => "restarted",
        }
    }
}

impl What {
    /// The event's name, also the last word of its routing key (`started`, `alive`,
    /// `stopping`, `unit`).
    pub fn name(&self) -> &'static str {
        match self {
            What::Started { .. } => "started",
            What::Alive { .. } => "alive",
            What::Stopping {} => "stopping",
            What::Unit { .. } => "unit",
        }
    }

    /// The alive interval it declares, if it declares one.
    pub fn interval_ms(&self) -> Option<u64> {
        match self {
            What::Started { interval_ms, .. } | What::Alive { interval_ms, .. } => {
                Some(*interval_ms)
            }
            _ => None,
        }
    }

    /// The agent version it carries, if it carries one.
    pub fn agent_version(&self) -> Option<&str> {
        match self {
            What::Started { agent_version, .. } | What::Alive { agent_version, .. } => {
                Some(agent_version)
            }
            _ => None,
        }
    }
}

/// The routing key of event `what` of host `host` on `gearmq.events`: `<host>.<name>`.
pub fn event_route(host: &Name, what: &What) -> String {
    format!("{host}.{}", what.name())
}

fn check_word(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_STATE_WORD
        && v.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {v:?} is not 1 to {MAX_STATE_WORD} characters of a-z, 0-9, '-'"
        ))
    }
}

fn check_interval(ms: u64) -> Result<(), String> {
    if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "interval_ms {ms} is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"
        ))
    }
}

fn check_version(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_AGENT_VERSION
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent_version {v:?} is not 1 to {MAX_AGENT_VERSION} characters of A-Z, a-z, 0-9, '.', '-', '+', '_'"
        ))
    }
}

impl Body for Event {
    const CONTEXT: Context = Context::Event;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        match &self.what {
            What::Started {
                agent_version,
                labels,
                interval_ms,
                ..
            } => {
                check_version(agent_version)?;
                check_interval(*interval_ms)?;
                if labels.len() > MAX_EVENT_LABELS {
                    return Err(format!("more than {MAX_EVENT_LABELS} labels"));
                }
                for (k, v) in labels {
                    check_label_key(k).map_err(|e| e.to_string())?;
                    check_label_value(v).map_err(|e| e.to_string())?;
                }
            }
            What::Alive {
                agent_version,
                interval_ms,
            } => {
                check_version(agent_version)?;
                check_interval(*interval_ms)?;
            }
            What::Stopping {} => {}
            What::Unit {
                unit,
                active_state,
                sub_state,
                result,
                ..
            } => {
                UnitName::parse(unit).map_err(|e| e.to_string())?;
                check_word("active_state", active_state)?;
                check_word("sub_state", sub_state)?;
                check_word("result", result)?;
            }
        }
        Ok(())
    }
}

impl Event {
    /// An event of `host`'s boot `boot`, number `seq`, signed at `time`.
    pub fn new(host: Name, boot: [u8; 16], seq: u64, time: Millis, what: What) -> Self {
        Event {
            kind: Context::Event.kind().to_string(),
            version: crate::VERSION,
            host,
            boot: serde_bytes::ByteArray::new(boot),
            seq,
            time,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::decode_body;

    fn host() -> Name {
        Name::new("web1").unwrap()
    }

    #[test]
    fn each_kind_round_trips_and_bad_fields_are_refused() {
        let whats = [
            What::Started {
                agent_version: "0.1.0".into(),
                labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
                credential_not_after: 1,
                interval_ms: 10_000,
            },
            What::Alive {
                agent_version: "0.1.0".into(),
                interval_ms: 10_000,
            },
            What::Stopping {},
            What::Unit {
                unit: "web".into(),
                change: UnitChange::Restarted,
                active_state: "activating".into(),
                sub_state: "auto-restart".into(),
                result: "exit-code".into(),
                restarts: 2,
            },
        ];
        for what in whats {
            let e = Event::new(host(), [7; 16], 3, 1_700_000_000_000, what);
            let bytes = crate::codec::encode(&e);
            assert_eq!(decode_body::<Event>(&bytes, 4096).unwrap(), e);
        }
        let bad = [
            What::Alive {
                agent_version: "0.1.0".into(),
                interval_ms: 10,
            },
            What::Alive {
                agent_version: "a b".into(),
                interval_ms: 10_000,
            },
            What::Unit {
                unit: "../etc".into(),
                change: UnitChange::Failed,
                active_state: "failed".into(),
                sub_state: "failed".into(),
                result: "exit-code".into(),
                restarts: 0,
            },
            What::Unit {
                unit: "web".into(),
                change: UnitChange::Failed,
                active_state: "Failed\n".into(),
                sub_state: "failed".into(),
                result: "exit-code".into(),
                restarts: 0,
            },
        ];
        for what in bad {
            let e = Event::new(host(), [7; 16], 3, 1, what);
            let bytes = crate::codec::encode(&e);
            assert!(decode_body::<Event>(&bytes, 4096).is_err(), "{e:?}");
        }
    }

    #[test]
    fn routes_name_the_host_then_the_event() {
        assert_eq!(event_route(&host(), &What::Stopping {}), "web1.stopping");
    }
}
