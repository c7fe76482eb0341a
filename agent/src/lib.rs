//! gearmq-agent: the host daemon. It consumes signed requests from its broker queue,
//! verifies them in the order of docs/DESIGN.md, Request lifecycle step 2, runs the
//! action, and publishes a signed reply.
//!
//! Flow of one message: [`server`] (consume, concurrency, reconnect) → [`handler`]
//! (one delivery) → [`verifier`] (signature, target, windows, policy) → [`replay`]
//! (redelivery and replay) → [`dispatch`] → [`actions`] → [`session`] (publish with
//! confirms) → ack, each answered request recorded in the audit log before its reply
//! goes out. Unit actions go through [`systemd`] (D-Bus), [`unit_files`],
//! [`unit_output`] and [`records`]; `logs --follow` streams are tracked in [`streams`].
//! Health for the host's own tooling (a Prometheus endpoint, a status file) is in
//! [`metrics`]. Signed presence and unit events go out through [`events`]; the unit
//! changes they report come from systemd's D-Bus signals in [`unit_watch`]. Revocation
//! lists are held in [`revocation`]; the broker's config section, TLS and
//! password files and topology come from `gearmq-io`, shared with the orchestrator.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod artifacts;
pub mod config;
pub mod dispatch;
pub mod enroll;
pub mod events;
pub mod fault;
pub mod handler;
pub mod housekeeping;
pub mod identity;
pub mod journal;
pub mod local;
pub mod metrics;
pub mod records;
pub mod repeats;
pub mod replay;
pub mod revocation;
pub mod server;
pub mod session;
pub mod state_lock;
pub mod stats;
pub mod streams;
pub mod systemd;
pub mod unit_files;
pub mod unit_output;
pub mod unit_watch;
pub mod verifier;
