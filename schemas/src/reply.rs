//! Replies: what a host answers.

use crate::envelope::{Body, Context};
use crate::names::Name;
use crate::status::Status;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The body of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// Always `"reply"`.
    pub kind: String,
    /// Protocol version.
    pub version: u16,
    /// The id of the request answered.
    pub request_id: Uuid,
    /// SHA-256 of the request's body bytes: binds the reply to the exact request.
    pub request_digest: serde_bytes::ByteArray<32>,
    /// The answering host; must equal the signer credential's name.
    pub host: Name,
    /// 0 for the first reply to a request, rising by one for each further one.
    pub seq: u32,
    /// Whether this reply ends the host's answer to the request.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The outcome.
    pub status: Status,
    /// The action's result, MessagePack-encoded (see [`crate::actions`]); when ok.
    pub data: Option<serde_bytes::ByteBuf>,
    /// A message for people; when not ok.
    pub error: Option<String>,
    /// When the host started on the request (ms since epoch).
    pub started_at: Millis,
    /// When the host finished (ms since epoch).
    pub finished_at: Millis,
}

impl Body for Reply {
    const CONTEXT: Context = Context::Reply;
    fn kind(&self) -> &str {
        &self.kind
    }
    fn version(&self) -> u16 {
        self.version
    }
    fn validate(&self) -> Result<(), String> {
        if self.finished_at < self.started_at {
            return Err("finished_at is before started_at".into());
        }
        if self.error.as_ref().is_some_and(|e| e.len() > 4096) {
            return Err("error message over 4096 bytes".into());
        }
        Ok(())
    }
}

impl Reply {
    /// A final reply answering the request with `digest`.
    pub fn new(
        request_id: Uuid,
        request_digest: [u8; 32],
        host: Name,
        status: Status,
        started_at: Millis,
        finished_at: Millis,
    ) -> Self {
        Reply {
            kind: Context::Reply.kind().to_string(),
            version: crate::VERSION,
            request_id,
            request_digest: serde_bytes::ByteArray::new(request_digest),
            host,
            seq: 0,
            is_final: true,
            status,
            data: None,
            error: None,
            started_at,
            finished_at,
        }
    }
}
