//! Action dispatch: a [`VerifiedRequest`] to a typed [`Call`], then to an [`Outcome`].
//!
//! `parse` is step 9 of the checks (unknown action → status 2, arguments that do not
//! decode strictly → status 4 naming the problem); `execute` runs the call under the
//! action timeout. To add an action: a file in `actions/`, a [`Call`] variant, and an
//! arm in `parse` and in `execute`.

use crate::actions::cancel::Cancel;
use crate::actions::delete::Delete;
use crate::actions::enable::{Disable, Enable};
use crate::actions::facts::Facts;
use crate::actions::install::Install;
use crate::actions::list::List;
use crate::actions::logs::{self, FollowStart, Logs};
use crate::actions::ping::Ping;
use crate::actions::reload::Reload;
use crate::actions::restart::Restart;
use crate::actions::revocation::Revocation;
use crate::actions::start::Start;
use crate::actions::stats::Stats;
use crate::actions::status::UnitStatus;
use crate::actions::stop::Stop;
use crate::actions::{Action, ActionContext};
use crate::stats::Reason;
use crate::verifier::{Refusal, VerifiedRequest};
use gearmq_schemas::actions::{
    CancelArgs, FactsArgs, InstallArgs, ListArgs, LogsArgs, MAX_ARGS_BYTES, PingArgs,
    RevocationArgs, StatsArgs, StatusArgs, UnitArgs,
};
use gearmq_schemas::{Status, codec};
use std::time::Duration;

/// Longest error message put in a reply (schemas refuses replies over 4096 bytes).
const MAX_ERROR_BYTES: usize = 4000;

/// The actions this agent knows, for "unknown action" messages.
pub const KNOWN_ACTIONS: &[&str] = &[
    Ping::NAME,
    Install::NAME,
    Start::NAME,
    Stop::NAME,
    Restart::NAME,
    Reload::NAME,
    Delete::NAME,
    Enable::NAME,
    Disable::NAME,
    UnitStatus::NAME,
    List::NAME,
    Logs::NAME,
    Facts::NAME,
    Cancel::NAME,
    Stats::NAME,
    Revocation::NAME,
];

/// A request's action with its decoded arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ping`.
    Ping(PingArgs),
    /// `install`.
    Install(Box<InstallArgs>),
    /// `start`.
    Start(UnitArgs),
    /// `stop`.
    Stop(UnitArgs),
    /// `restart`.
    Restart(UnitArgs),
    /// `reload`.
    Reload(UnitArgs),
    /// `delete`.
    Delete(UnitArgs),
    /// `enable`.
    Enable(UnitArgs),
    /// `disable`.
    Disable(UnitArgs),
    /// `status`.
    Status(StatusArgs),
    /// `list`.
    List(ListArgs),
    /// `logs`, with or without `follow`.
    Logs(LogsArgs),
    /// `facts`.
    Facts(FactsArgs),
    /// `cancel`.
    Cancel(CancelArgs),
    /// `stats`.
    Stats(StatsArgs),
    /// `revocation`.
    Revocation(RevocationArgs),
}

impl Call {
    /// The unit the call names, if any: what a delegation token's unit scope judges.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Call::Install(a) => Some(&a.spec.unit),
            Call::Start(a)
            | Call::Stop(a)
            | Call::Restart(a)
            | Call::Reload(a)
            | Call::Delete(a)
            | Call::Enable(a)
            | Call::Disable(a) => Some(&a.unit),
            Call::Status(a) => a.unit.as_deref(),
            Call::Logs(a) => Some(&a.unit),
            Call::Ping(_)
            | Call::List(_)
            | Call::Facts(_)
            | Call::Cancel(_)
            | Call::Stats(_)
            | Call::Revocation(_) => None,
        }
    }
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

/// What running a call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// One reply.
    Done(Outcome),
    /// A `logs --follow` stream to run: the handler answers with its first lines and
    /// keeps streaming.
    Stream(Box<FollowStart>),
}

/// Step 9: the action must be known and its arguments must decode strictly.
pub fn parse(request: &VerifiedRequest) -> Result<Call, Refusal> {
    let r = request.request();
    let args = &r.args;
    match r.action.as_str() {
        Ping::NAME => decode_args::<Ping>(args).map(Call::Ping),
        Install::NAME => decode_args::<Install>(args).map(|a| Call::Install(Box::new(a))),
        Start::NAME => decode_args::<Start>(args).map(Call::Start),
        Stop::NAME => decode_args::<Stop>(args).map(Call::Stop),
        Restart::NAME => decode_args::<Restart>(args).map(Call::Restart),
        Reload::NAME => decode_args::<Reload>(args).map(Call::Reload),
        Delete::NAME => decode_args::<Delete>(args).map(Call::Delete),
        Enable::NAME => decode_args::<Enable>(args).map(Call::Enable),
        Disable::NAME => decode_args::<Disable>(args).map(Call::Disable),
        UnitStatus::NAME => decode_args::<UnitStatus>(args).map(Call::Status),
        List::NAME => decode_args::<List>(args).map(Call::List),
        Logs::NAME => decode_args::<Logs>(args).map(Call::Logs),
        Facts::NAME => decode_args::<Facts>(args).map(Call::Facts),
        Cancel::NAME => decode_args::<Cancel>(args).map(Call::Cancel),
        Stats::NAME => decode_args::<Stats>(args).map(Call::Stats),
        Revocation::NAME => decode_args::<Revocation>(args).map(Call::Revocation),
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
pub async fn execute(call: Call, ctx: &ActionContext, timeout: Duration) -> Execution {
    let outcome = match call {
        Call::Ping(a) => run::<Ping>(a, ctx, timeout).await,
        Call::Install(a) => run::<Install>(*a, ctx, timeout).await,
        Call::Start(a) => run::<Start>(a, ctx, timeout).await,
        Call::Stop(a) => run::<Stop>(a, ctx, timeout).await,
        Call::Restart(a) => run::<Restart>(a, ctx, timeout).await,
        Call::Reload(a) => run::<Reload>(a, ctx, timeout).await,
        Call::Delete(a) => run::<Delete>(a, ctx, timeout).await,
        Call::Enable(a) => run::<Enable>(a, ctx, timeout).await,
        Call::Disable(a) => run::<Disable>(a, ctx, timeout).await,
        Call::Status(a) => run::<UnitStatus>(a, ctx, timeout).await,
        Call::List(a) => run::<List>(a, ctx, timeout).await,
        Call::Logs(a) if a.follow => {
            return match tokio::time::timeout(timeout, logs::open(a, ctx)).await {
                Ok(Ok(start)) => Execution::Stream(Box::new(start)),
                Ok(Err(e)) => Execution::Done(Outcome::error(e.status, e.message)),
                Err(_) => Execution::Done(timed_out(Logs::NAME, timeout)),
            };
        }
        Call::Logs(a) => run::<Logs>(a, ctx, timeout).await,
        Call::Facts(a) => run::<Facts>(a, ctx, timeout).await,
        Call::Cancel(a) => run::<Cancel>(a, ctx, timeout).await,
        Call::Stats(a) => run::<Stats>(a, ctx, timeout).await,
        Call::Revocation(a) => run::<Revocation>(a, ctx, timeout).await,
    };
    Execution::Done(outcome)
}

fn timed_out(action: &str, timeout: Duration) -> Outcome {
    Outcome::error(
        Status::TimedOut,
        format!(
            "action {action} did not finish within {}",
            humantime::format_duration(timeout)
        ),
    )
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
        Err(_) => timed_out(A::NAME, timeout),
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
    use crate::actions::testing;
    use gearmq_schemas::actions::PingResult;

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
        let dir = tempfile::tempdir().unwrap();
        let ctx = testing::context(testing::services(dir.path()), "ping");
        let Execution::Done(o) =
            execute(Call::Ping(PingArgs {}), &ctx, Duration::from_secs(1)).await
        else {
            panic!("ping is not a stream")
        };
        assert_eq!(o.status, Status::Ok);
        let r: PingResult = codec::decode("data", &o.data.unwrap(), 1024).unwrap();
        assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
    }

    #[tokio::test]
    async fn stats_reports_the_counters_the_handler_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let services = testing::services(dir.path());
        services.stats.received();
        services.stats.verified();
        services.stats.dead_lettered();
        services.stats.refused(Reason::Expired);
        let ctx = testing::context(services, "stats");
        let Execution::Done(o) =
            execute(Call::Stats(StatsArgs {}), &ctx, Duration::from_secs(1)).await
        else {
            panic!("stats is not a stream")
        };
        assert_eq!(o.status, Status::Ok);
        let r: gearmq_schemas::actions::StatsResult =
            codec::decode("data", &o.data.unwrap(), 4096).unwrap();
        assert_eq!((r.received, r.verified, r.dead_lettered), (1, 1, 1));
        assert_eq!(r.executed, 0);
        assert_eq!(r.refused.get("expired"), Some(&1));
    }

    #[tokio::test]
    async fn unit_actions_without_systemd_fail_with_status_5_naming_the_bus() {
        let dir = tempfile::tempdir().unwrap();
        let services = testing::services(dir.path());
        let mut spec = gearmq_schemas::units::UnitSpec::new("web", "/bin/sleep");
        spec.args = vec!["600".into()];
        let ctx = testing::context(services.clone(), "install");
        let call = Call::Install(Box::new(InstallArgs {
            spec,
            start: true,
            enable: true,
            artifact: None,
        }));
        let Execution::Done(o) = execute(call, &ctx, Duration::from_secs(5)).await else {
            panic!("not a stream")
        };
        assert_eq!(o.status, Status::UnknownError);
        let e = o.error.unwrap();
        assert!(
            e.contains("systemd is not reachable on the user bus"),
            "{e}"
        );
        // Nothing was written.
        assert!(!services.units.path("web").exists());
        assert!(!ctx.intent_written());
    }

    #[tokio::test]
    async fn bad_unit_names_are_invalid_data_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let services = testing::services(dir.path());
        for unit in ["../etc/x", "a/b", ""] {
            let ctx = testing::context(services.clone(), "start");
            let call = Call::Start(UnitArgs { unit: unit.into() });
            let Execution::Done(o) = execute(call, &ctx, Duration::from_secs(5)).await else {
                panic!("not a stream")
            };
            assert_eq!(o.status, Status::InvalidData, "{unit}");
            assert!(o.error.unwrap().contains("invalid unit"), "{unit}");
        }
    }

    #[tokio::test]
    async fn cancel_of_an_unknown_stream_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = testing::context(testing::services(dir.path()), "cancel");
        let call = Call::Cancel(CancelArgs {
            request_id: uuid::Uuid::now_v7(),
        });
        let Execution::Done(o) = execute(call, &ctx, Duration::from_secs(5)).await else {
            panic!("not a stream")
        };
        assert_eq!(o.status, Status::NotFound);
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let o = Outcome::error(Status::UnknownError, "é".repeat(3000));
        let e = o.error.unwrap();
        assert!(e.len() <= MAX_ERROR_BYTES + 3);
    }
}
