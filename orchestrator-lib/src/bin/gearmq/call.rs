//! Running one call from the command line: targets, options, connect, print, exit code.

use crate::render;
use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_orchestrator::{
    CallResult, CallSpec, HostResult, Orchestrator, OrchestratorConfig, Selection,
};
use gearmq_schemas::actions::{self, PingResult};
use gearmq_schemas::{ActionName, Name, codec};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Which hosts a command is for.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// Hosts by name, comma-separated: --host web1,web2.
    #[arg(long = "host", value_delimiter = ',', value_name = "NAME")]
    hosts: Vec<String>,
    /// Every host in the inventory.
    #[arg(long)]
    all: bool,
}

impl TargetArgs {
    /// The selection these flags make.
    pub fn selection(&self) -> Result<Selection> {
        if self.all {
            return Ok(Selection::All);
        }
        hosts_selection(&self.hosts.join(","))
    }
}

/// Parses a comma-separated host list (`web1,web2`) into a selection.
pub fn hosts_selection(list: &str) -> Result<Selection> {
    let names = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|h| Name::new(h).with_context(|| "in the host list".to_string()))
        .collect::<Result<Vec<_>>>()?;
    if names.is_empty() {
        bail!("no host named");
    }
    Ok(Selection::Hosts(names))
}

/// Options every call shares.
#[derive(Args, Debug, Clone)]
pub struct CallOpts {
    /// How long to wait for replies (default from the config, 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PingCmd {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    opts: CallOpts,
}

/// How a command shows its results to people.
pub trait View {
    /// One line about a host's ok result.
    fn detail(&self, _r: &HostResult) -> String {
        String::new()
    }

    /// The whole human output; by default a row per host and the summary.
    fn print_human(&self, result: &CallResult) {
        render::print_human(result, |r| self.detail(r));
    }
}

/// A ready-to-send call.
pub struct Invocation {
    pub selection: Selection,
    pub action: &'static str,
    pub args: Vec<u8>,
    pub opts: CallOpts,
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects to the broker as the configured operator.
pub async fn connect(config: &OrchestratorConfig, selection: &Selection) -> Result<Orchestrator> {
    let orch = Orchestrator::connect(config).await?;
    if *selection == Selection::All && orch.inventory().is_empty() {
        bail!(
            "the inventory {} holds no host credentials",
            config.inventory_dir.display()
        );
    }
    Ok(orch)
}

/// Adds the orchestrator's rejections that could not be tied to the call (replays,
/// forgeries with bad signatures): the operator must see them too.
pub fn merge_rejections(result: &mut CallResult, orch: &Orchestrator) {
    for (reason, n) in orch.rejections() {
        let e = result
            .summary
            .rejected
            .entry(reason.to_string())
            .or_default();
        *e = (*e).max(n);
    }
}

/// 0 if every target answered ok, else 1.
pub fn exit_code(result: &CallResult) -> ExitCode {
    if result.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Connects, runs one call, prints it, and maps the outcome to an exit code.
pub fn run(config_path: &Path, inv: Invocation, view: &dyn View) -> Result<ExitCode> {
    let config = OrchestratorConfig::load(config_path)?;
    let timeout = inv.opts.timeout.unwrap_or(config.defaults.timeout);
    let rt = runtime()?;
    let result: CallResult = rt.block_on(async {
        let orch = connect(&config, &inv.selection).await?;
        let mut result = orch
            .request(CallSpec {
                selection: inv.selection,
                action: ActionName::new(inv.action)?,
                args: inv.args,
                timeout,
            })
            .await?;
        merge_rejections(&mut result, &orch);
        orch.close().await;
        Ok::<_, anyhow::Error>(result)
    })?;
    if inv.opts.json {
        render::print_json(&result);
    } else {
        view.print_human(&result);
    }
    Ok(exit_code(&result))
}

struct PingView;

impl View for PingView {
    fn detail(&self, r: &HostResult) -> String {
        r.data
            .as_deref()
            .and_then(|d| codec::decode::<PingResult>("ping result", d, 4096).ok())
            .map(|p| {
                format!(
                    "agent {}, up {}",
                    p.agent_version,
                    humantime::format_duration(Duration::from_secs(p.uptime_ms / 1000))
                )
            })
            .unwrap_or_default()
    }
}

pub fn ping(config: &Path, a: PingCmd) -> Result<ExitCode> {
    run(
        config,
        Invocation {
            selection: a.targets.selection()?,
            action: "ping",
            args: codec::encode(&actions::PingArgs {}),
            opts: a.opts,
        },
        &PingView,
    )
}
