//! gearmq end to end, as an operator meets it: a real RabbitMQ (the development broker
//! on 127.0.0.1:5672, and nodes of the tests' own), fleets made by the real
//! `gearmq init`, real `gearmq-agent` processes (each with a real `systemd --user`
//! where units are involved) and the real CLI and library. One test binary, a module
//! per area; the fixtures are gearmq-testkit's.
//!
//! The three-node cluster test is ignored here and run on its own (it boots three
//! nodes): `cargo test -p gearmq-tests --test e2e -- --ignored cluster::`.

mod artifacts;
mod attacks;
mod audit;
mod cluster;
mod delegation;
mod emulate;
mod enrollment;
mod events;
mod faults;
mod json_shape;
mod local;
mod observe;
mod packages;
mod ping;
mod production;
mod provisioning;
mod quickstart;
mod targeting;
mod topology;
mod units;
