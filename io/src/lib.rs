//! gearmq-io: what gearmq's programs (the agent, the orchestrator library and its CLI,
//! the benchmark) do with the broker alike, in one place: the `[broker]` config section
//! and its one validator, the TLS and password files, connecting and backoff
//! ([`broker`]), the broker objects' names and arguments ([`topology`]), and the
//! broker's administration through `rabbitmqctl` or the management HTTP API behind one
//! seam ([`broker_admin`], [`rabbitmqctl`](mod@rabbitmqctl), [`management`]); and what
//! both do with files ([`files`]): key, credential and secret loading with their
//! permission checks, and atomic writes; and running a program's main future on the
//! runtime's workers ([`runtime`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod artifact_stream;
pub mod broker;
pub mod broker_admin;
#[cfg(feature = "docs")]
pub mod docs;
pub mod files;
pub mod management;
pub mod rabbitmqctl;
pub mod runtime;
pub mod topology;

/// Runs `rabbitmqctl [-n NODE] ARGS` on this machine and returns what it printed, or
/// a sentence saying why it failed (never the broker's own stdout, which may hold
/// secrets).
pub fn rabbitmqctl(node: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut cmd = std::process::Command::new("rabbitmqctl");
    if let Some(n) = node {
        cmd.args(["-n", n]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl (is RabbitMQ installed here?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The system's message for an I/O error without the trailing `(os error N)`.
pub fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
