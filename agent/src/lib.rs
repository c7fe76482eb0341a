//! gearmq-agent: the host daemon. It consumes signed requests from its broker queue,
//! verifies them in DESIGN.md's order, runs the action, and publishes a signed reply.
//!
//! Flow of one message: [`server`] (consume, concurrency, reconnect) → [`handler`]
//! (one delivery) → [`verifier`] (signature, target, windows, policy) → [`replay`]
//! (redelivery and replay) → [`dispatch`] → [`actions`] → [`session`] (publish with
//! confirms) → ack, each answered request recorded in the audit log before its reply
//! goes out. Unit actions go through [`systemd`] (D-Bus), [`unit_files`],
//! [`unit_output`] and [`records`]; `logs --follow` streams are tracked in [`streams`].
//! Revocation lists are held in [`revocation`]; TLS and password files are read by
//! [`broker_conn`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod broker_conn;
pub mod config;
pub mod dispatch;
pub mod emulate;
pub mod fault;
pub mod handler;
pub mod housekeeping;
pub mod identity;
pub mod records;
pub mod replay;
pub mod revocation;
pub mod server;
pub mod session;
pub mod stats;
pub mod streams;
pub mod systemd;
pub mod unit_files;
pub mod unit_output;
pub mod verifier;
