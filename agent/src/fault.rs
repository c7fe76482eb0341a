//! Fault injection for tests: a seam, not a feature.
//!
//! `GEARMQ_AGENT_FAULT=crash-after-execute` makes the agent abort right after an
//! action that wrote an intent record has acted, before the outcome record, the stored
//! reply and the ack: the crash that intent records exist for. The end-to-end tests
//! use it to prove that the redelivered request is resolved from the records and the
//! real systemd state without acting twice. Unset in production; any other value
//! stops the agent at start-up so a typo cannot silently disable a test.

/// The environment variable read at start-up.
pub const FAULT_ENV: &str = "GEARMQ_AGENT_FAULT";

/// Which fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// None (production).
    #[default]
    None,
    /// Abort after an action changed something, before its outcome is recorded.
    CrashAfterExecute,
}

impl Fault {
    /// The fault a value of [`FAULT_ENV`] asks for.
    pub fn parse(value: Option<&str>) -> Result<Fault, String> {
        match value {
            None | Some("") => Ok(Fault::None),
            Some("crash-after-execute") => Ok(Fault::CrashAfterExecute),
            Some(other) => Err(format!(
                "{FAULT_ENV}={other:?} is not a known fault (known: crash-after-execute)"
            )),
        }
    }

    /// Reads [`FAULT_ENV`] from the process environment.
    pub fn from_env() -> Result<Fault, String> {
        let v = std::env::var(FAULT_ENV).ok();
        Fault::parse(v.as_deref())
    }

    /// The point right after an action executed: aborts the process when injecting
    /// [`Fault::CrashAfterExecute`].
    pub fn after_execute(self) {
        if self == Fault::CrashAfterExecute {
            tracing::error!(
                "{FAULT_ENV}=crash-after-execute: aborting after the action, before its outcome and reply are stored"
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_faults_parse() {
        assert_eq!(Fault::parse(None), Ok(Fault::None));
        assert_eq!(Fault::parse(Some("")), Ok(Fault::None));
        assert_eq!(
            Fault::parse(Some("crash-after-execute")),
            Ok(Fault::CrashAfterExecute)
        );
        assert!(
            Fault::parse(Some("crash"))
                .unwrap_err()
                .contains("crash-after-execute")
        );
    }
}
