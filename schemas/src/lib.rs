//! The gearmq protocol: wire types, MessagePack encoding, signed envelopes,
//! credentials and the checks every receiver makes.
//!
//! Everything that crosses the broker or lands in a shared file is defined here, so the
//! agent and the orchestrator never depend on each other. Decoders take untrusted bytes:
//! they are bounded, strict (canonical encoding only) and never panic.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod audit;
pub mod codec;
pub mod credential;
pub mod enroll;
pub mod envelope;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod names;
pub mod reply;
pub mod request;
pub mod revocation;
pub mod status;
pub mod time;
pub mod token;
pub mod trust;
pub mod units;

pub use codec::DecodeError;
pub use credential::{Credential, CredentialError, Role};
pub use envelope::{Context, Kind, OpenError, Opened, Signed};
pub use keys::{KeyError, PublicKey, SigningKey};
pub use names::{ActionName, Name, NameError};
pub use reply::Reply;
pub use request::{LabelMatch, MatchOp, Request, Targets};
pub use status::Status;
pub use trust::{CredentialVerifier, TrustAnchors};

/// The protocol version every body carries; a receiver refuses any other.
pub const VERSION: u16 = 1;

/// Default cap on a whole message (envelope, credential and body) in bytes.
///
/// Checked before any decoding; agents and orchestrators may configure a lower or higher
/// cap, but never an unbounded one.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// SHA-256 of `bytes`, the digest used for request binding, credential caching and
/// audit chains.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
