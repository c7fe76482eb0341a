//! gearmq's end-to-end test fixtures, one of each, shared by every end-to-end test (the
//! agent's and the workspace's): a private vhost on the real RabbitMQ, broker nodes of
//! the tests' own (plain, TLS-only, a three-node cluster), a real `systemd --user` in a
//! private mount namespace, real `gearmq-agent` processes, fleets made by the real
//! `gearmq init` (with TLS, provisioning and delegators as options), a hand-made PKI
//! and agent config for tests that play the issuer, and raw broker access for messages
//! the CLI would never send.
//!
//! Every fixture cleans up in `Drop` (vhosts and broker users deleted, processes
//! stopped, cgroups and temp dirs removed), so tests run in parallel and leave nothing
//! behind, pass or fail.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_files;
pub mod agent_world;
pub mod cli;
pub mod fleet;
pub mod node;
pub mod observe;
pub mod pki;
pub mod raw;
pub mod systemd;
pub mod vhost;

pub use agent::Agent;
pub use agent_files::AgentFiles;
pub use agent_world::AgentWorld;
pub use cli::{CliOutput, Streaming, bin, run_cli, run_cli_env, run_program};
pub use fleet::{Fleet, FleetBuilder, stat};
pub use node::{BrokerNode, Cluster};
pub use observe::observe;
pub use pki::{Identity, Pki};
pub use raw::RawCaller;
pub use systemd::UserSystemd;
pub use vhost::{BrokerUsers, Vhost, export_definitions, rabbitmqctl, try_rabbitmqctl};

use gearmq_orchestrator::{CallSpec, Selection};
use gearmq_schemas::actions::PingArgs;
use gearmq_schemas::{ActionName, Name, codec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A random u32 from the OS.
pub fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_be_bytes(b)
}

/// `n` random bytes (junk for floods and decoders).
pub fn random_bytes(n: usize) -> Vec<u8> {
    (0..n.div_ceil(4))
        .flat_map(|_| rand_u32().to_be_bytes())
        .take(n)
        .collect()
}

/// `s` as a [`Name`]; panics on a name the protocol refuses.
pub fn name(s: &str) -> Name {
    Name::new(s).unwrap_or_else(|e| panic!("{s:?} is not a name: {e}"))
}

/// A selection of the hosts `names`.
pub fn hosts(names: &[&str]) -> Selection {
    Selection::Hosts(names.iter().map(|h| name(h)).collect())
}

/// A ping of `selection` that waits at most `timeout`.
pub fn ping_spec(selection: Selection, timeout: Duration) -> CallSpec {
    CallSpec {
        selection,
        action: ActionName::new("ping").unwrap_or_else(|e| unreachable!("ping: {e}")),
        args: codec::encode(&PingArgs {}),
        timeout,
    }
}

/// Polls `done` every 20 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes an executable `#!/bin/sh` program `dir/name` with `body` and returns its path.
pub fn write_program(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    set_mode(&p, 0o755);
    p
}

/// How many lines `path` holds (0 if it does not exist): programs count their starts so.
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Sets `path`'s permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Sends `sig` (`TERM`, `KILL`, `STOP`, …) to process `pid`; panics if it cannot.
pub fn signal(pid: u32, sig: &str) {
    assert!(send_signal(pid, sig), "kill -{sig} {pid}");
}

/// Sends `sig` to process `pid`; whether it was delivered (for `Drop`, which must not
/// panic).
pub(crate) fn send_signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
