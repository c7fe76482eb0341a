//! Why a token was refused, each reason with a stable label.

use crate::codec::DecodeError;
use crate::names::{ActionName, Name};
use crate::time::Millis;
use uuid::Uuid;

/// Why a token was refused. Each variant has a stable [`TokenError::reason`] label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Over [`MAX_TOKEN_BYTES`](super::MAX_TOKEN_BYTES).
    #[error("token is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The sealed form or its header does not decode.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// Sealed for another host.
    #[error("token is for host {audience}, not {host}")]
    WrongAudience {
        /// Who it is for.
        audience: Name,
        /// Who was asked.
        host: Name,
    },
    /// Sealed to another sealing key of this host (rotated or re-enrolled).
    #[error("token is sealed to sealing key {got}, not this host's {have}")]
    WrongRecipient {
        /// The key in the header (hex).
        got: String,
        /// This host's key (hex).
        have: String,
    },
    /// HPKE open failed: altered bytes or a different key.
    #[error("token does not open with this host's sealing key (altered or not sealed to it)")]
    CannotOpen,
    /// Opened, but the signature layer or the claims do not decode.
    #[error("token contents are malformed: {0}")]
    MalformedClaims(String),
    /// Signed by a key that is not a trusted issuer.
    #[error("token is signed by {0}, which is not a trusted issuer")]
    UntrustedIssuer(String),
    /// The minter's credential is not valid or not from a trusted issuer.
    #[error("token minter credential: {0}")]
    MinterCredential(String),
    /// The signature does not match.
    #[error("token signature invalid")]
    BadSignature,
    /// Minted by a credential without `may_delegate` (or not an operator).
    #[error("token was minted by {minter}, whose credential may not delegate")]
    NotDelegator {
        /// The minter's name.
        minter: Name,
    },
    /// The minter's credential was not valid at the time of the check.
    #[error("token minter {minter}: {reason}")]
    MinterNotValid {
        /// The minter's name.
        minter: Name,
        /// Expired or not yet valid, with times.
        reason: String,
    },
    /// The claims name an issuer key other than the one that signed them.
    #[error("token claims issuer {claimed} but was signed by {signed}")]
    IssuerMismatch {
        /// The claimed key (hex).
        claimed: String,
        /// The signing key (hex).
        signed: String,
    },
    /// The claims grant more than the minter may do itself.
    #[error("token grants action {action}, which its minter {minter} may not do itself")]
    WiderThanMinter {
        /// The minter's name.
        minter: Name,
        /// The first action beyond its rights.
        action: ActionName,
    },
    /// Presented in a request signed by someone else than its subject.
    #[error("token is for subject {subject}, but the request is signed by {signer}")]
    WrongSubject {
        /// Who may present it.
        subject: Name,
        /// Who presented it.
        signer: Name,
    },
    /// The action is not among the token's actions.
    #[error("token does not allow action {action} (it allows {allowed})")]
    ActionNotAllowed {
        /// What was asked.
        action: ActionName,
        /// What it allows, comma-separated.
        allowed: String,
    },
    /// The unit is not in the token's unit scope (or none was named).
    #[error("token is limited to units {allowed}; the request names {asked}")]
    UnitNotAllowed {
        /// What the request names (or "no unit").
        asked: String,
        /// The scope, comma-separated.
        allowed: String,
    },
    /// Before `not_before` (beyond the skew).
    #[error(
        "token is not valid before {not_before} ms, now {now} ms (allowed clock skew {skew_ms} ms)"
    )]
    NotYetValid {
        /// Start of validity.
        not_before: Millis,
        /// Time of the check.
        now: Millis,
        /// Skew allowed.
        skew_ms: Millis,
    },
    /// After `not_after` (beyond the skew).
    #[error("token expired at {not_after} ms, now {now} ms (allowed clock skew {skew_ms} ms)")]
    Expired {
        /// End of validity.
        not_after: Millis,
        /// Time of the check.
        now: Millis,
        /// Skew allowed.
        skew_ms: Millis,
    },
    /// Its validity is longer than the receiver accepts.
    #[error("token is valid for {ttl_ms} ms, over this host's cap of {max_ms} ms")]
    TtlTooLong {
        /// `not_after - not_before`.
        ttl_ms: Millis,
        /// The cap.
        max_ms: Millis,
    },
    /// Every use was spent.
    #[error("token {id} is used up ({uses} of {uses} uses spent)")]
    UsedUp {
        /// The token id.
        id: Uuid,
        /// How many it had.
        uses: u32,
    },
    /// The minter's credential is revoked.
    #[error("token minter is revoked: {0}")]
    MinterRevoked(String),
    /// This host has no sealing key, so it accepts no token.
    #[error("this host has no sealing key configured; it accepts no delegation token")]
    NoSealingKey,
    /// Minting could not seal (bad recipient key).
    #[error("cannot seal the token: {0}")]
    Seal(String),
}

impl TokenError {
    /// A short stable label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "token_oversize",
            TokenError::Malformed(_) | TokenError::MalformedClaims(_) => "token_malformed",
            TokenError::WrongAudience { .. } => "token_wrong_audience",
            TokenError::WrongRecipient { .. } => "token_wrong_recipient",
            TokenError::CannotOpen => "token_cannot_open",
            TokenError::UntrustedIssuer(_) | TokenError::MinterCredential(_) => {
                "token_untrusted_minter"
            }
            TokenError::BadSignature | TokenError::IssuerMismatch { .. } => "token_bad_signature",
            TokenError::NotDelegator { .. } => "token_not_delegator",
            TokenError::MinterNotValid { .. } => "token_minter_not_valid",
            TokenError::WiderThanMinter { .. } => "token_wider_than_minter",
            TokenError::WrongSubject { .. } => "token_wrong_subject",
            TokenError::ActionNotAllowed { .. } => "token_action_not_allowed",
            TokenError::UnitNotAllowed { .. } => "token_unit_not_allowed",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::Expired { .. } => "token_expired",
            TokenError::TtlTooLong { .. } => "token_ttl_too_long",
            TokenError::UsedUp { .. } => "token_used_up",
            TokenError::MinterRevoked(_) => "token_minter_revoked",
            TokenError::NoSealingKey => "token_no_sealing_key",
            TokenError::Seal(_) => "token_seal",
        }
    }
}

impl From<DecodeError> for TokenError {
    fn from(e: DecodeError) -> Self {
        TokenError::Malformed(e.to_string())
    }
}
