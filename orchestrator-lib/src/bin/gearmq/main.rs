//! `gearmq`: the operator's command line.
//!
//! Exit codes: 0 every target ok (or the command succeeded); 1 a target failed or did
//! not reply; 2 usage, configuration or connection error (one line on stderr).
#![forbid(unsafe_code)]

mod audit;
mod bench;
mod broker;
mod call;
mod dead;
mod enroll;
mod init;
mod observe;
mod pki;
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
    /// A delegation token to carry (a host calling another host as itself, with the
    /// host's client.toml as --config): every request of the command carries it, and
    /// it may name only the token's audience host.
    #[arg(long, global = true, value_name = "FILE")]
    token: Option<PathBuf>,
    /// Log level for diagnostics on stderr (error, warn, info, debug).
    #[arg(long, global = true, default_value = "warn", env = "GEARMQ_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes:\n  0  every target answered ok (or the command succeeded)\n  1  at least one target failed or did not reply\n  2  usage, configuration or connection error";

#[derive(Subcommand)]
enum Command {
    /// Bootstrap a local fleet: issuer, operator, host keys, credentials and configs.
    Init(init::InitArgs),
    /// Manage the issuer (the fleet's root of trust).
    #[command(subcommand)]
    Issuer(enroll::IssuerCommand),
    /// Make an Ed25519 key pair for a host or an operator.
    Keygen(enroll::KeygenArgs),
    /// Issue a credential for a host or an operator.
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
    /// Stop a unit and remove it with its state.
    Delete(units::UnitCmd),
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
    /// Delegation tokens: let host A call named actions on host B, briefly.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Measure fan-out, round trip, throughput, CPU and memory against emulated hosts,
    /// beside a raw AMQP baseline on the same broker; prints a table, writes JSON.
    Bench(bench::BenchArgs),
    /// Inspect or empty gearmq.dead, where agents dead-letter what they could not
    /// verify (needs a broker user with read rights on it).
    #[command(subcommand)]
    Dead(dead::DeadCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    if let Some(path) = &cli.token
        && let Err(e) = call::set_token(path)
    {
        eprintln!("gearmq: error: {e:#}");
        return ExitCode::from(2);
    }
    let outcome = match cli.command {
        Command::Init(a) => init::run(a).map(|()| ExitCode::SUCCESS),
        Command::Issuer(c) => enroll::issuer(c).map(|()| ExitCode::SUCCESS),
        Command::Keygen(a) => enroll::keygen(a).map(|()| ExitCode::SUCCESS),
        Command::Enroll(c) => enroll::enroll(c).map(|()| ExitCode::SUCCESS),
        Command::Audit(c) => audit::run(c),
        Command::Broker(c) => broker::run(&cli.config, c),
        Command::Pki(c) => pki::run(c).map(|()| ExitCode::SUCCESS),
        Command::Revoke(a) => revoke::revoke(a).map(|()| ExitCode::SUCCESS),
        Command::Renew(a) => revoke::renew(a).map(|()| ExitCode::SUCCESS),
        Command::Revocations(revoke::RevocationsCommand::Push(a)) => revoke::push(&cli.config, a),
        Command::Ping(a) => call::ping(&cli.config, a),
        Command::Install(a) => units::install(&cli.config, a),
        Command::Start(a) => units::unit_action(&cli.config, "start", a),
        Command::Stop(a) => units::unit_action(&cli.config, "stop", a),
        Command::Restart(a) => units::unit_action(&cli.config, "restart", a),
        Command::Delete(a) => units::unit_action(&cli.config, "delete", a),
        Command::Status(a) => units::status(&cli.config, a),
        Command::List(a) => units::list(&cli.config, a),
        Command::Logs(a) => units::logs(&cli.config, a),
        Command::Facts(a) => units::facts(&cli.config, a),
        Command::Stats(a) => observe::stats(&cli.config, a),
        Command::Dead(c) => dead::run(&cli.config, c),
        Command::Token(c) => token::run(&cli.config, c),
        Command::Bench(a) => bench::run(a),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gearmq: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
