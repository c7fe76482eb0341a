//! Commands that send a request to hosts and show the verified results.

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
    fn selection(&self) -> Result<Selection> {
        if self.all {
            return Ok(Selection::All);
        }
        let names = self
            .hosts
            .iter()
            .map(|h| Name::new(h.as_str()).with_context(|| "in --host".to_string()))
            .collect::<Result<Vec<_>>>()?;
        if names.is_empty() {
            bail!("--host needs at least one name");
        }
        Ok(Selection::Hosts(names))
    }
}

/// Options every call shares.
#[derive(Args, Debug, Clone)]
pub struct CallOpts {
    /// How long to wait for replies (default from the config, 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PingCmd {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    opts: CallOpts,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects, runs one call and prints it; maps the outcome to an exit code.
fn run_call(
    config_path: &Path,
    selection: Selection,
    action: &str,
    args: Vec<u8>,
    opts: &CallOpts,
    detail: impl Fn(&HostResult) -> String,
) -> Result<ExitCode> {
    let config = OrchestratorConfig::load(config_path)?;
    let timeout = opts.timeout.unwrap_or(config.defaults.timeout);
    let rt = runtime()?;
    let result: CallResult = rt.block_on(async {
        let orch = Orchestrator::connect(&config).await?;
        if selection == Selection::All && orch.inventory().is_empty() {
            bail!(
                "the inventory {} holds no host credentials",
                config.inventory_dir.display()
            );
        }
        let result = orch
            .request(CallSpec {
                selection,
                action: ActionName::new(action)?,
                args,
                timeout,
            })
            .await?;
        // Replies rejected outside this call's id (replays, forgeries with bad
        // signatures) count too: the operator must see them.
        let mut result = result;
        for (reason, n) in orch.rejections() {
            let e = result
                .summary
                .rejected
                .entry(reason.to_string())
                .or_default();
            *e = (*e).max(n);
        }
        orch.close().await;
        Ok(result)
    })?;
    if opts.json {
        render::print_json(&result);
    } else {
        render::print_human(&result, detail);
    }
    Ok(if result.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn ping(config: &Path, a: PingCmd) -> Result<ExitCode> {
    run_call(
        config,
        a.targets.selection()?,
        "ping",
        codec::encode(&actions::PingArgs {}),
        &a.opts,
        |r| {
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
        },
    )
}
