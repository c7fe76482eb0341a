//! Reply status codes: MCollective's, extended.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The status of a reply. Numbering is part of the wire format and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[repr(u8)]
pub enum Status {
    /// The action ran and succeeded.
    Ok = 0,
    /// The action was started but aborted.
    Aborted = 1,
    /// The agent does not know the action.
    UnknownAction = 2,
    /// A required argument is missing.
    MissingData = 3,
    /// An argument is invalid; the error names the field.
    InvalidData = 4,
    /// Anything else that went wrong on the host.
    UnknownError = 5,
    /// The caller may not do this (role, policy, revoked credential, token).
    Unauthorized = 6,
    /// The thing acted on does not exist (or is not managed by gearmq).
    NotFound = 7,
    /// The action conflicts with the current state.
    Conflict = 8,
    /// The action did not finish within its timeout.
    TimedOut = 9,
    /// The request (or a credential) is outside its validity window.
    Expired = 10,
    /// The request id was seen before with different bytes.
    Replayed = 11,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::Aborted,
        Status::UnknownAction,
        Status::MissingData,
        Status::InvalidData,
        Status::UnknownError,
        Status::Unauthorized,
        Status::NotFound,
        Status::Conflict,
        Status::TimedOut,
        Status::Expired,
        Status::Replayed,
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A short lower-case name (`ok`, `unauthorized`, …) for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Aborted => "aborted",
            Status::UnknownAction => "unknown_action",
            Status::MissingData => "missing_data",
            Status::InvalidData => "invalid_data",
            Status::UnknownError => "unknown_error",
            Status::Unauthorized => "unauthorized",
            Status::NotFound => "not_found",
            Status::Conflict => "conflict",
            Status::TimedOut => "timed_out",
            Status::Expired => "expired",
            Status::Replayed => "replayed",
        }
    }
}

/// A status code outside the known range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status code {0}")]
pub struct UnknownStatus(pub u8);

impl TryFrom<u8> for Status {
    type Error = UnknownStatus;
    fn try_from(v: u8) -> Result<Self, UnknownStatus> {
        Status::ALL
            .get(usize::from(v))
            .copied()
            .ok_or(UnknownStatus(v))
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        s.code()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_fixed() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Status::try_from(s.code()), Ok(*s));
        }
        assert_eq!(Status::Replayed.code(), 11);
        assert!(Status::try_from(12).is_err());
    }
}
