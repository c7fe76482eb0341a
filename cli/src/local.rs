//! `gearmq local install|start|stop|restart|delete|status|list|logs|facts …`: the unit
//! commands on this host, in-process on the agent's core — no broker, no issuer, no
//! running agent. Same flags (without HOSTS) and output as the remote commands; the
//! same unit files, records and audit log as an agent, under `--state-dir`.

use crate::call::{OutputOpts, View, exit_code, runtime};
use crate::render;
use crate::units::{
    ChangeView, FactsView, InstallUnit, UnitsView, decode, install_args, print_lines, unit_arg,
};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use gearmq_agent::config::{BusKind, SystemdConfig, SystemdSettings};
use gearmq_agent::local::{LocalError, LocalHost, render_install};
use gearmq_orchestrator::{CallResult, HostResult, HostStatus};
use gearmq_schemas::actions::{FactsArgs, ListArgs, LogsArgs, LogsResult, StatusArgs, UnitArgs};
use gearmq_schemas::{ActionName, Name, codec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often `logs --follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Args)]
pub struct LocalArgs {
    /// Where unit records, unit output, the replay store, the audit log and the local
    /// identity live. An agent's state dir may be given: then that agent must not be
    /// running (the command refuses, exit 2, rather than race it).
    #[arg(
        long,
        value_name = "DIR",
        env = "GEARMQ_LOCAL_STATE_DIR",
        default_value = "/var/lib/gearmq/local"
    )]
    state_dir: PathBuf,
    /// The systemd manager: the system's (units run unprivileged unless --run-as or
    /// --allow-root) or this user's.
    #[arg(long, value_enum, default_value = "system")]
    bus: Bus,
    /// Where unit files go (default /etc/systemd/system, or ~/.config/systemd/user).
    #[arg(long, value_name = "DIR")]
    unit_dir: Option<PathBuf>,
    /// System bus: run units as this user instead of DynamicUser=yes.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// System bus: let units run as root.
    #[arg(long)]
    allow_root: bool,
    #[command(subcommand)]
    command: LocalCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bus {
    System,
    User,
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Write gearmq-UNIT.service (atomically), reload, optionally start.
    Install(Box<LocalInstall>),
    /// Start a unit gearmq manages.
    Start(LocalUnit),
    /// Stop a unit gearmq manages.
    Stop(LocalUnit),
    /// Restart a unit gearmq manages.
    Restart(LocalUnit),
    /// Reload a running unit's configuration (SIGHUP to gearmq's own units).
    Reload(LocalUnit),
    /// Stop a unit, disable it, remove its file and state.
    Delete(LocalUnit),
    /// Start a unit at boot (enabled by install unless --no-enable).
    Enable(LocalUnit),
    /// No longer start a unit at boot.
    Disable(LocalUnit),
    /// Load/active/sub state, main PID, since, memory, restarts.
    Status(LocalStatus),
    /// The units gearmq manages here.
    List(LocalOpts),
    /// The last lines a unit wrote; --follow until Ctrl-C.
    Logs(LocalLogs),
    /// OS, kernel, CPUs, memory, uptime, unit counts.
    Facts(LocalOpts),
}

#[derive(Args)]
struct LocalInstall {
    #[command(flatten)]
    unit: InstallUnit,
    /// Print the unit file it would write, and where; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    opts: OutputOpts,
}

#[derive(Args)]
struct LocalUnit {
    /// Unit name.
    unit: String,
    #[command(flatten)]
    opts: OutputOpts,
}

#[derive(Args)]
struct LocalStatus {
    /// Unit name; every managed unit if omitted.
    unit: Option<String>,
    #[command(flatten)]
    opts: OutputOpts,
}

#[derive(Args)]
struct LocalOpts {
    #[command(flatten)]
    opts: OutputOpts,
}

#[derive(Args)]
struct LocalLogs {
    /// Unit name.
    unit: String,
    /// How many of the last lines.
    #[arg(long, default_value_t = 50)]
    lines: u32,
    /// Keep printing new lines until Ctrl-C or the timeout (default 10m).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    opts: OutputOpts,
}

/// This host's name in replies and in the audit log: its hostname, made a gearmq name.
fn host_name() -> Name {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches('-').chars().take(63).collect();
    Name::new(name).unwrap_or_else(|_| Name::new("localhost").expect("a valid name"))
}

pub fn run(a: LocalArgs) -> Result<ExitCode> {
    let systemd = SystemdConfig {
        bus: match a.bus {
            Bus::System => BusKind::System,
            Bus::User => BusKind::User,
        },
        address: None,
        unit_dir: a.unit_dir.clone(),
        run_as: a.run_as.clone(),
        allow_root: a.allow_root,
        // Output to the journal where journald runs, else to files.
        ..SystemdConfig::default()
    }
    .resolve(|k| std::env::var(k).ok())
    .map_err(anyhow::Error::msg)?;
    if let LocalCommand::Install(i) = &a.command
        && i.dry_run
    {
        let (spec, _, _) = install_args(&i.unit)?;
        if spec
            .exec
            .starts_with(gearmq_schemas::actions::ARTIFACT_EXEC)
        {
            anyhow::bail!(
                "--dry-run cannot show the unit file of a shipped program: the file it runs \
                 is named by its digest once it is fetched and checked"
            );
        }
        let (path, text) = render_install(&a.state_dir, &systemd, &spec)?;
        println!("# {}", path.display());
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = runtime()?;
    rt.block_on(run_command(a, systemd))
}

async fn run_command(a: LocalArgs, systemd: SystemdSettings) -> Result<ExitCode> {
    let host = match LocalHost::open(&a.state_dir, &systemd, host_name()) {
        Ok(h) => h,
        Err(e @ LocalError::Locked(_)) => bail!("{e}"),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot use {}", a.state_dir.display()));
        }
    };
    match a.command {
        LocalCommand::Install(i) => {
            let (_, args, ship) = install_args(&i.unit)?;
            // No broker here: the program goes straight into the host's store.
            if let Some(s) = ship {
                host.import_artifact(&s.artifact, &s.path).await?;
            }
            one(&host, "install", args, &i.opts, &ChangeView).await
        }
        LocalCommand::Start(u) => unit_action(&host, "start", u).await,
        LocalCommand::Stop(u) => unit_action(&host, "stop", u).await,
        LocalCommand::Restart(u) => unit_action(&host, "restart", u).await,
        LocalCommand::Reload(u) => unit_action(&host, "reload", u).await,
        LocalCommand::Delete(u) => unit_action(&host, "delete", u).await,
        LocalCommand::Enable(u) => unit_action(&host, "enable", u).await,
        LocalCommand::Disable(u) => unit_action(&host, "disable", u).await,
        LocalCommand::Status(s) => {
            let unit = s.unit.as_deref().map(unit_arg).transpose()?;
            let args = codec::encode(&StatusArgs { unit });
            one(&host, "status", args, &s.opts, &UnitsView).await
        }
        LocalCommand::List(l) => {
            one(
                &host,
                "list",
                codec::encode(&ListArgs {}),
                &l.opts,
                &UnitsView,
            )
            .await
        }
        LocalCommand::Facts(f) => {
            one(
                &host,
                "facts",
                codec::encode(&FactsArgs {}),
                &f.opts,
                &FactsView,
            )
            .await
        }
        LocalCommand::Logs(l) => logs(&host, l).await,
    }
}

async fn unit_action(host: &LocalHost, action: &str, u: LocalUnit) -> Result<ExitCode> {
    let args = codec::encode(&UnitArgs {
        unit: unit_arg(&u.unit)?,
    });
    one(host, action, args, &u.opts, &ChangeView).await
}

/// The host's answer as a call result of one host, as the remote commands show it.
fn result_of(
    action: &str,
    request_id: uuid::Uuid,
    reply: gearmq_schemas::Reply,
    started: Instant,
) -> Result<CallResult> {
    let r = HostResult::from_reply(&reply, started.elapsed());
    Ok(CallResult::new(
        request_id,
        ActionName::new(action)?,
        vec![r],
        BTreeMap::new(),
        started.elapsed(),
    ))
}

async fn one(
    host: &LocalHost,
    action: &str,
    args: Vec<u8>,
    opts: &OutputOpts,
    view: &dyn View,
) -> Result<ExitCode> {
    let started = Instant::now();
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(60));
    let answer = host.call(action, args, timeout).await?;
    let result = result_of(action, answer.request_id, answer.reply, started)?;
    if opts.json {
        render::print_json(&result);
    } else {
        view.print_human(&result, opts.display);
    }
    Ok(exit_code(&result))
}

async fn logs(host: &LocalHost, l: LocalLogs) -> Result<ExitCode> {
    let started = Instant::now();
    let timeout = l.opts.timeout.unwrap_or(if l.follow {
        Duration::from_secs(600)
    } else {
        Duration::from_secs(60)
    });
    let args = codec::encode(&LogsArgs {
        unit: unit_arg(&l.unit)?,
        lines: l.lines,
        follow: l.follow,
    });
    let json = l.opts.json;
    let answer = host.call("logs", args, timeout).await?;
    let name = host.host().to_string();
    let first = answer
        .reply
        .data
        .as_deref()
        .and_then(|d| codec::decode::<LogsResult>("logs", d, 1 << 20).ok());
    if let Some(lines) = &first {
        print_lines(&lines.lines, json, &name, 0);
    }
    if let Some(stream) = answer.stream {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut position = stream.position().clone();
        let mut seq = 1;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            let chunk = host.read_output(&mut position).await?;
            if !chunk.lines.is_empty() {
                print_lines(&chunk.lines, json, &name, seq);
                seq += 1;
            }
        }
        host.end_stream(stream).await;
    }
    let result = result_of("logs", answer.request_id, answer.reply, started)?;
    if json {
        render::print_json(&result);
    } else {
        for r in result.results.iter().filter(|r| r.status != HostStatus::Ok) {
            render::print_problem(r);
        }
        if let Some(l) = decode::<LogsResult>(&result.results[0])
            && l.truncated
        {
            eprintln!("(output truncated to the byte limit)");
        }
    }
    Ok(exit_code(&result))
}
