//! One file per action, each with typed arguments and a typed result.
//!
//! An action implements [`Action`]; the dispatcher decodes its arguments strictly,
//! runs it under the action timeout and encodes its result. Adding an action is a new
//! file here plus one variant and two match arms in `dispatch.rs`.

pub mod ping;

use gearmq_schemas::Status;
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::time::Instant;

/// What an action may read about the agent running it.
#[derive(Debug, Clone)]
pub struct ActionContext {
    /// When the agent process started (for uptime).
    pub agent_started: Instant,
}

/// An action that ran but did not succeed: the reply's status and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// The reply status (never `Ok`).
    pub status: Status,
    /// For people; names what failed.
    pub message: String,
}

/// An action the agent can run.
pub trait Action {
    /// The action name in requests and operator credentials.
    const NAME: &'static str;
    /// Its arguments (`gearmq_schemas::actions`), decoded strictly from `args`.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// Its result, encoded into the reply's `data`.
    type Output: Serialize + Send + 'static;

    /// Runs the action.
    fn apply(
        args: Self::Args,
        ctx: &ActionContext,
    ) -> impl Future<Output = Result<Self::Output, ActionError>> + Send;
}
