//! `gearmq-bench`: the benchmark (`run`) and the scale emulator (`emulate`) that serves
//! thousands of virtual hosts from one process. Neither is part of a production
//! program: the agent and the CLI do not carry them.
//!
//! Exit codes: 0 done; 1 a measurement or the emulator failed; 2 usage or set-up error.
#![forbid(unsafe_code)]

mod artifacts;
mod emulate;
mod noop_units;
mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Blocking threads of the emulator's runtime (journal writes and other file work):
/// without a bound a 1,000-host fan-out starts hundreds of threads, each with its stack
/// and malloc arena, for no more disk throughput.
const EMULATOR_BLOCKING_THREADS: usize = 32;

/// gearmq benchmark and scale emulator.
#[derive(Parser)]
#[command(name = "gearmq-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// How a shipped program's bytes reach N hosts: one copy in its broker stream read
    /// by every host, against pushing the bytes to each host's transient queue.
    Artifacts(artifacts::ArtifactArgs),
    /// Measure fan-out, round trip, throughput, CPU and memory against emulated hosts,
    /// beside a raw AMQP baseline on the same broker; prints a table, writes JSON.
    Run(run::BenchArgs),
    /// Serve every host under DIR (DIR/<host>/agent.toml, as `gearmq init --hosts-count
    /// N` writes them) from this one process: each with its own key, credential, queue
    /// and request handling; shared broker connections (so the orchestrator's user_id
    /// check must be off) and no systemd: a no-op unit backend on which unit jobs
    /// succeed at once and nothing runs.
    Emulate {
        /// The hosts directory.
        #[arg(value_name = "DIR")]
        hosts_dir: PathBuf,
        /// Virtual hosts per broker connection.
        #[arg(long, value_name = "N", default_value_t = 250)]
        hosts_per_connection: usize,
        /// Serve only shard K of N: the hosts whose place in name order is K modulo N
        /// (N processes share a fleet larger than one process's open-file limit holds:
        /// each virtual host keeps 3 files open).
        #[arg(long, value_name = "K/N", value_parser = parse_shard)]
        shard: Option<(usize, usize)>,
    },
}

/// `K/N` with K < N.
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not K/N (e.g. 0/2)"))?;
    let k: usize = k.parse().map_err(|_| format!("{k:?} is not a number"))?;
    let n: usize = n.parse().map_err(|_| format!("{n:?} is not a number"))?;
    if n == 0 || k >= n {
        return Err(format!("shard {k}/{n}: K must be below N, N at least 1"));
    }
    Ok((k, n))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Artifacts(a) => artifacts::run(a),
        Command::Run(a) => match run::run(a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gearmq-bench: error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Emulate {
            hosts_dir,
            hosts_per_connection,
            shard,
        } => emulate(hosts_dir, hosts_per_connection, shard),
    }
}

fn emulate(
    hosts_dir: PathBuf,
    hosts_per_connection: usize,
    shard: Option<(usize, usize)>,
) -> ExitCode {
    // The emulator logs its own progress and problems: a line per request of thousands
    // of hosts would be most of what it does.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,gearmq_bench::emulate=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(EMULATOR_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gearmq-bench emulate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = emulate::EmulateOptions {
        hosts_dir,
        hosts_per_connection,
        shard,
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            on_signal.cancel();
        });
        emulate::run(opts, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gearmq-bench emulate: {e:#}");
            ExitCode::from(1)
        }
    }
}
