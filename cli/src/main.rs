//! `gearmq`: the operator's command line.
//!
//! Exit codes: 0 every target ok (or the command succeeded); 1 a target failed or did
//! not reply; 2 usage, configuration or connection error (one line on stderr); 3 the
//! audit log could not take some of the call's records.
#![forbid(unsafe_code)]

mod audit;
mod broker;
mod call;
mod context;
mod dead;
mod docs;
mod enroll;
mod init;
mod join;
mod local;
mod observe;
mod pki;
mod presence;
mod render;
mod revoke;
mod token;
mod units;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage systemd services on a fleet of hosts over RabbitMQ, with every request and
/// every reply signed.
#[derive(Parser)]
#[command(name = "gearmq", version, after_help = EXIT_CODES)]
struct Cli {
    /// Orchestrator config file.
    #[arg(
        long,
        global = true,
        env = "GEARMQ_CONFIG",
        default_value = "/etc/gearmq/orchestrator.toml"
    )]
    config: PathBuf,
    /// Log level for diagnostics on stderr (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn", env = "GEARMQ_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes:\n  0  every target answered ok (or the command succeeded)\n  1  at least one target failed or did not reply\n  2  usage, configuration or connection error\n  3  the results are shown, but the audit log could not take some of the call's records (summary.audit_missing); `gearmq audit verify` says what the log holds";

#[derive(Subcommand)]
enum Command {
    /// Bootstrap a local fleet: issuer, operator, host keys, credentials and configs.
    Init(init::InitArgs),
    /// Manage the issuer (the fleet's root of trust).
    #[command(subcommand)]
    Issuer(enroll::IssuerCommand),
    /// Make an Ed25519 key pair for a host or an operator.
    Keygen(enroll::KeygenArgs),
    /// Issue a credential for a host or an operator, or enroll hosts that ask over the
    /// broker (secret, pending, approve, reject).
    #[command(subcommand)]
    Enroll(enroll::EnrollCommand),
    /// Check and read audit logs offline (auditors need only the logs, the issuer
    /// public key and this binary).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Provision the broker from the inventory, check it for drift, remove a host.
    #[command(subcommand)]
    Broker(broker::BrokerCommand),
    /// A small CA and TLS certificates for the broker and its clients.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Revoke credentials: a new issuer-signed revocation list.
    Revoke(revoke::RevokeArgs),
    /// Re-issue a credential with a new serial and validity.
    Renew(revoke::RenewArgs),
    /// Distribute the revocation list to running agents.
    #[command(subcommand)]
    Revocations(revoke::RevocationsCommand),
    /// Check that hosts are alive and answer with verified replies.
    Ping(call::PingCmd),
    /// Install a service on hosts (argv, never a shell string); --start to run it.
    Install(units::InstallCmd),
    /// Start a unit (waits for systemd's job to finish).
    Start(units::UnitCmd),
    /// Stop a unit.
    Stop(units::UnitCmd),
    /// Restart a unit (a new main process).
    Restart(units::UnitCmd),
    /// Reload a running unit's configuration (its ExecReload=; gearmq's own units get
    /// SIGHUP), keeping its main process.
    Reload(units::UnitCmd),
    /// Stop a unit, disable it, and remove it with its state.
    Delete(units::UnitCmd),
    /// Start a unit at boot from now on (install enables by default; --no-enable not).
    Enable(units::UnitCmd),
    /// No longer start a unit at boot (it keeps running until stopped).
    Disable(units::UnitCmd),
    /// State of one unit or of every unit gearmq manages on hosts.
    Status(units::StatusCmd),
    /// The units gearmq manages on hosts, with their states.
    List(units::ListCmd),
    /// The last lines a unit wrote; --follow streams new ones until Ctrl-C.
    Logs(units::LogsCmd),
    /// Hostname, OS, kernel, CPUs, memory, uptime, labels and unit counts of hosts.
    Facts(units::ListCmd),
    /// Agents' counters: verified, executed, refused by reason, dead-lettered,
    /// reconnects, uptime.
    Stats(observe::StatsCmd),
    /// The inventory with each host's presence from its signed events: up, down (no
    /// event for three of its intervals), stopped, never seen. Exit 1 if a selected
    /// host is not up.
    Hosts(presence::HostsCmd),
    /// A live stream of the fleet's verified events (started, alive, stopping, unit
    /// failed/exited/restarted) and of hosts going down or coming up; --json for one
    /// object a line. Accepted events go to the audit log; routine alives one per host
    /// per --record-alive-every (5m).
    Watch(presence::WatchCmd),
    /// Delegation tokens: let host A call named actions on host B, briefly.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The unit commands on this host, in-process: no broker, no issuer, no running
    /// agent (`gearmq local install web --exec /srv/web`). Same flags and output as the
    /// remote commands, without HOSTS.
    Local(local::LocalArgs),
    /// Inspect or empty gearmq.dead, where agents dead-letter what they could not
    /// verify (needs a broker user with read rights on it).
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    /// Write man pages and shell completions to DIR (for packaging: deploy/package.sh).
    #[command(hide = true)]
    GenerateDocs(docs::GenerateDocsArgs),
}

/// Commands that never read the orchestrator config: `--config` is accepted (it is
/// global) but not shown in their help.
const WITHOUT_CONFIG: &[&str] = &[
    "init",
    "issuer",
    "keygen",
    "audit",
    "pki",
    "revoke",
    "renew",
    "local",
    "generate-docs",
];

/// The clap command, with `--config` hidden where it means nothing: those commands get
/// a hidden copy of the global argument, which clap then does not propagate over.
pub fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let hidden = cmd
        .get_arguments()
        .find(|a| a.get_id() == "config")
        .cloned()
        .map(|a| a.hide(true));
    if let Some(hidden) = hidden {
        for name in WITHOUT_CONFIG {
            let arg = hidden.clone();
            cmd = cmd.mut_subcommand(name, move |c| c.arg(arg));
        }
    }
    cmd
}

fn main() -> ExitCode {
    use clap::FromArgMatches;
    let cli = match Cli::from_arg_matches(&cli_command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // lapin logs every returned (unroutable) message at warn; gearmq reports those as
    // results itself, so lapin is quiet unless asked for by name.
    let directives = if cli.log.contains("lapin") {
        cli.log.clone()
    } else {
        format!("{},lapin=error", cli.log)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let ctx = context::Context::new(cli.config);
    let outcome = match cli.command {
        Command::Init(a) => init::run(a).map(|()| ExitCode::SUCCESS),
        Command::Issuer(c) => enroll::issuer(c).map(|()| ExitCode::SUCCESS),
        Command::Keygen(a) => enroll::keygen(a).map(|()| ExitCode::SUCCESS),
        Command::Enroll(c) => enroll::run(&ctx, c),
        Command::Audit(c) => audit::run(c),
        Command::Broker(c) => broker::run(&ctx, c),
        Command::Pki(c) => pki::run(c).map(|()| ExitCode::SUCCESS),
        Command::Revoke(a) => revoke::revoke(a).map(|()| ExitCode::SUCCESS),
        Command::Renew(a) => revoke::renew(a).map(|()| ExitCode::SUCCESS),
        Command::Revocations(revoke::RevocationsCommand::Push(a)) => revoke::push(&ctx, a),
        Command::Ping(a) => call::ping(&ctx, a),
        Command::Install(a) => units::install(&ctx, a),
        Command::Start(a) => units::unit_action(&ctx, "start", a),
        Command::Stop(a) => units::unit_action(&ctx, "stop", a),
        Command::Restart(a) => units::unit_action(&ctx, "restart", a),
        Command::Reload(a) => units::unit_action(&ctx, "reload", a),
        Command::Delete(a) => units::unit_action(&ctx, "delete", a),
        Command::Enable(a) => units::unit_action(&ctx, "enable", a),
        Command::Disable(a) => units::unit_action(&ctx, "disable", a),
        Command::Status(a) => units::status(&ctx, a),
        Command::List(a) => units::list(&ctx, a),
        Command::Logs(a) => units::logs(&ctx, a),
        Command::Facts(a) => units::facts(&ctx, a),
        Command::Stats(a) => observe::stats(&ctx, a),
        Command::Hosts(a) => presence::hosts(&ctx, a),
        Command::Watch(a) => presence::watch(&ctx, a),
        Command::Dead(c) => dead::run(&ctx, c),
        Command::Local(a) => local::run(a),
        Command::Token(c) => token::run(&ctx, c),
        Command::GenerateDocs(a) => docs::generate(a).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gearmq: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn token_is_an_option_of_broker_calls_only() {
        let cli = Cli::command();
        let has = |path: &[&str]| {
            let mut c = &cli;
            for p in path {
                c = c.find_subcommand(p).unwrap_or_else(|| panic!("no {p}"));
            }
            c.get_arguments().any(|a| a.get_id() == "token")
        };
        for call in [
            &["ping"][..],
            &["status"],
            &["install"],
            &["logs"],
            &["restart"],
        ] {
            assert!(has(call), "{call:?}");
        }
        for other in [
            &["init"][..],
            &["keygen"],
            &["local", "status"],
            &["audit", "verify"],
        ] {
            assert!(!has(other), "{other:?}");
        }
    }

    #[test]
    fn config_shows_only_in_the_help_of_commands_that_read_it() {
        let mut cmd = cli_command();
        cmd.build();
        let shown = |path: &[&str]| {
            let mut c = &cmd;
            for p in path {
                c = c.find_subcommand(p).unwrap_or_else(|| panic!("no {p}"));
            }
            c.get_arguments()
                .any(|a| a.get_id() == "config" && !a.is_hide_set())
        };
        for reads in [
            &["ping"][..],
            &["install"],
            &["broker", "check"],
            &["enroll", "host"],
            &["enroll", "approve"],
        ] {
            assert!(shown(reads), "{reads:?}");
        }
        for not in [
            &["init"][..],
            &["issuer", "init"],
            &["keygen"],
            &["pki", "issue"],
            &["audit", "verify"],
            &["local", "status"],
        ] {
            assert!(!shown(not), "{not:?}");
        }
        // Still accepted anywhere, before or after the command.
        use clap::FromArgMatches;
        for args in [
            &[
                "gearmq", "--config", "/c.toml", "init", "--dir", "/d", "--hosts", "a",
            ][..],
            &[
                "gearmq", "init", "--config", "/c.toml", "--dir", "/d", "--hosts", "a",
            ],
            &["gearmq", "ping", "--config", "/c.toml", "--all"],
        ] {
            let m = cli_command().try_get_matches_from(args).unwrap();
            let cli = Cli::from_arg_matches(&m).unwrap();
            assert_eq!(cli.config, PathBuf::from("/c.toml"), "{args:?}");
        }
    }
}
