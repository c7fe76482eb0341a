//! Action dispatch: a [`VerifiedRequest`] to a typed [`Call`], then to an [`Outcome`].
//!
//! `parse` is step 9 of the checks (unknown action → status 2, arguments that do not
//! decode strictly → status 4 naming the problem); `execute` runs the call under the
//! action timeout. To add an action: a file in `actions/`, a [`Call`] variant, and an
//! arm in `parse` and in `execute`.

use crate::actions::ping::Ping;
use crate::actions::{Action, ActionContext};
use crate::stats::Reason;
use crate::verifier::{Refusal, VerifiedRequest};
use gearmq_schemas::actions::{MAX_ARGS_BYTES, PingArgs};
use gearmq_schemas::{Status, codec};
use std::time::Duration;

/// Longest error message put in a reply (schemas refuses replies over 4096 bytes).
const MAX_ERROR_BYTES: usize = 4000;

/// The actions this agent knows, for "unknown action" messages.
pub const KNOWN_ACTIONS: &[&str] = &[Ping::NAME];

/// A request's action with its decoded arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ping`.
    Ping(PingArgs),
}

/// What an action came to: the reply's status and its data or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply status.
    pub status: Status,
    /// The encoded result, when ok.
    pub data: Option<Vec<u8>>,
    /// The message, when not ok.
    pub error: Option<String>,
}

impl Outcome {
    /// Success with encoded `data`.
    pub fn ok(data: Vec<u8>) -> Self {
        Outcome {
            status: Status::Ok,
            data: Some(data),
            error: None,
        }
    }

    /// Failure with `status` and a message (cut to fit a reply).
    pub fn error(status: Status, message: impl Into<String>) -> Self {
        Outcome {
            status,
            data: None,
            error: Some(truncate(message.into(), MAX_ERROR_BYTES)),
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Self {
        Outcome::error(r.status, r.message)
    }
}

/// Step 9: the action must be known and its arguments must decode strictly.
pub fn parse(request: &VerifiedRequest) -> Result<Call, Refusal> {
    let r = request.request();
    match r.action.as_str() {
        Ping::NAME => decode_args::<Ping>(&r.args).map(Call::Ping),
        other => Err(Refusal::new(
            Status::UnknownAction,
            Reason::UnknownAction,
            format!(
                "unknown action {other} (this agent knows: {})",
                KNOWN_ACTIONS.join(", ")
            ),
        )),
    }
}

/// Runs `call`, giving up after `timeout` (status "timed out").
pub async fn execute(call: Call, ctx: &ActionContext, timeout: Duration) -> Outcome {
    match call {
        Call::Ping(args) => run::<Ping>(args, ctx, timeout).await,
    }
}

fn decode_args<A: Action>(args: &[u8]) -> Result<A::Args, Refusal> {
    codec::decode::<A::Args>("args", args, MAX_ARGS_BYTES).map_err(|e| {
        Refusal::new(
            Status::InvalidData,
            Reason::InvalidArgs,
            format!("invalid arguments for {}: {e}", A::NAME),
        )
    })
}

async fn run<A: Action>(args: A::Args, ctx: &ActionContext, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, A::apply(args, ctx)).await {
        Ok(Ok(output)) => Outcome::ok(codec::encode(&output)),
        Ok(Err(e)) => Outcome::error(e.status, e.message),
        Err(_) => Outcome::error(
            Status::TimedOut,
            format!(
                "action {} did not finish within {}",
                A::NAME,
                humantime::format_duration(timeout)
            ),
        ),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearmq_schemas::actions::PingResult;
    use std::time::Instant;

    #[test]
    fn ping_args_decode_strictly() {
        assert_eq!(
            decode_args::<Ping>(&codec::encode(&PingArgs {})).unwrap(),
            PingArgs {}
        );
        for bad in [&b""[..], &[0xc0], &[0x81, 0xa1, b'x', 0x01], &[0x80, 0x80]] {
            let r = decode_args::<Ping>(bad).unwrap_err();
            assert_eq!(r.status, Status::InvalidData);
            assert!(
                r.message.contains("invalid arguments for ping"),
                "{}",
                r.message
            );
        }
    }

    #[tokio::test]
    async fn ping_reports_version_and_uptime() {
        let ctx = ActionContext {
            agent_started: Instant::now(),
        };
        let o = execute(Call::Ping(PingArgs {}), &ctx, Duration::from_secs(1)).await;
        assert_eq!(o.status, Status::Ok);
        let r: PingResult = codec::decode("data", &o.data.unwrap(), 1024).unwrap();
        assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let o = Outcome::error(Status::UnknownError, "é".repeat(3000));
        let e = o.error.unwrap();
        assert!(e.len() <= MAX_ERROR_BYTES + 3);
    }
}
