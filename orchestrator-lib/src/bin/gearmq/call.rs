//! Running one call from the command line: targets, options, connect, print, exit code.

use crate::render;
use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_orchestrator::{
    CallResult, HostResult, HostStatus, Orchestrator, OrchestratorConfig, Progress, Selection,
};
use gearmq_schemas::actions::{self, PingResult};
use gearmq_schemas::{ActionName, Name, codec};
use gearmq_schemas::{LabelMatch, MatchOp};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Which hosts a command is for, and how to roll through them.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Hosts by name, comma-separated: --host web1,web2.
    #[arg(
        long = "host",
        value_delimiter = ',',
        value_name = "NAME",
        group = "target"
    )]
    hosts: Vec<String>,
    /// Every host in the inventory.
    #[arg(long, group = "target")]
    all: bool,
    /// Hosts whose labels match (repeatable; all must hold): KEY=VALUE, KEY!=VALUE,
    /// KEY~REGEX (whole value).
    #[arg(long = "where", value_name = "EXPR", group = "target")]
    wheres: Vec<String>,
    /// Whoever answers a broadcast (for fleets without an inventory here).
    #[arg(long, group = "target")]
    discover: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// Limits and batches for acting on many hosts.
#[derive(Args, Debug, Clone, Default)]
pub struct RolloutArgs {
    /// Only N of the selected hosts: the first N by name, or N at random with --seed.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Seed for a random --limit (the same seed picks the same hosts).
    #[arg(long, requires = "limit")]
    pub seed: Option<u64>,
    /// Act on N hosts at a time, in name order (a rolling change).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Pause between batches.
    #[arg(long, value_parser = humantime::parse_duration, requires = "batch")]
    pub batch_sleep: Option<Duration>,
    /// Stop after the first batch with a failed or silent host.
    #[arg(long, requires = "batch")]
    pub fail_fast: bool,
}

/// Parses `KEY=VALUE`, `KEY!=VALUE` or `KEY~REGEX`.
pub fn parse_where(e: &str) -> Result<LabelMatch> {
    let at = e
        .find(['=', '!', '~'])
        .with_context(|| format!("--where {e:?} is not KEY=VALUE, KEY!=VALUE or KEY~REGEX"))?;
    let (key, rest) = e.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix("!=") {
        (MatchOp::Ne, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (MatchOp::Eq, v)
    } else if let Some(v) = rest.strip_prefix('~') {
        (MatchOp::Regex, v)
    } else {
        bail!("--where {e:?} is not KEY=VALUE, KEY!=VALUE or KEY~REGEX");
    };
    gearmq_schemas::names::check_label_key(key)?;
    if op == MatchOp::Regex {
        gearmq_schemas::request::compile_selector_regex(value).map_err(anyhow::Error::msg)?;
    } else {
        gearmq_schemas::names::check_label_value(value)?;
    }
    Ok(LabelMatch {
        key: key.to_string(),
        op,
        value: value.to_string(),
    })
}

impl TargetArgs {
    /// The selection these flags make.
    pub fn selection(&self) -> Result<Selection> {
        if self.all {
            return Ok(Selection::All);
        }
        if self.discover {
            return Ok(Selection::Discover);
        }
        if !self.wheres.is_empty() {
            let clauses = self
                .wheres
                .iter()
                .map(|w| parse_where(w))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Selection::Where(clauses));
        }
        if self.hosts.is_empty() {
            bail!("say which hosts: --host a,b, --all, --where KEY=VALUE or --discover");
        }
        hosts_selection(&self.hosts.join(","))
    }
}

/// Parses the HOSTS argument of unit commands: host names (`web1,web2`), `@all` for
/// every enrolled host, or label clauses (`role=web,zone~eu-.*`). Host names can hold
/// none of `@ = ! ~`, so the forms never collide.
pub fn hosts_selection(list: &str) -> Result<Selection> {
    let items: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        bail!("no host named");
    }
    if items == ["@all"] {
        return Ok(Selection::All);
    }
    if items.iter().all(|i| i.contains(['=', '!', '~'])) {
        let clauses = items
            .iter()
            .map(|w| parse_where(w))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Selection::Where(clauses));
    }
    let names = items
        .iter()
        .map(|h| Name::new(*h).with_context(|| "in the host list".to_string()))
        .collect::<Result<Vec<_>>>()?;
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
    /// Which hosts the table shows (the summary always counts all).
    #[arg(long, value_enum, default_value = "all")]
    pub display: Display,
}

/// `--display`, as in Choria.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Display {
    /// Only hosts that answered ok.
    Ok,
    /// Only hosts that failed or did not reply.
    Failed,
    /// Every host.
    All,
    /// No rows, only the summary.
    None,
}

impl Display {
    /// Whether a row for `r` is shown.
    pub fn shows(self, r: &HostResult) -> bool {
        match self {
            Display::All => true,
            Display::None => false,
            Display::Ok => r.status == HostStatus::Ok,
            Display::Failed => r.status != HostStatus::Ok,
        }
    }
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
    fn print_human(&self, result: &CallResult, display: Display) {
        render::print_human(result, display, |r| self.detail(r));
    }
}

/// A ready-to-send call.
pub struct Invocation {
    pub selection: Selection,
    pub action: &'static str,
    pub args: Vec<u8>,
    pub opts: CallOpts,
    pub rollout: RolloutArgs,
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The delegation token given with `--token`, read once at start.
static TOKEN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Reads the `--token` file (checking its outer form) for every call of this process.
pub fn set_token(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    gearmq_schemas::token::peek(&bytes)
        .with_context(|| format!("{} is not a delegation token", path.display()))?;
    let _ = TOKEN.set(bytes);
    Ok(())
}

/// Connects to the broker as the configured identity; with `--token`, every request
/// carries the token and may go only to the token's audience.
pub async fn connect(config: &OrchestratorConfig, selection: &Selection) -> Result<Orchestrator> {
    let mut orch = Orchestrator::connect(config).await?;
    match TOKEN.get() {
        Some(token) => {
            let (_, header) = gearmq_schemas::token::peek(token)?;
            if *selection != Selection::Hosts(vec![header.audience.clone()]) {
                bail!(
                    "the token is for host {} only: name exactly that host",
                    header.audience
                );
            }
            orch.set_token(token.clone());
        }
        None if orch.role() == gearmq_schemas::Role::Host => bail!(
            "{} signs as host {}: a host may only make delegated requests, with --token FILE \
             (an operator mints one with `gearmq token mint`)",
            config.credential_file.display(),
            orch.name()
        ),
        None => {}
    }
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
        let have = if reason == gearmq_orchestrator::Rejection::Duplicate.as_str() {
            result.summary.duplicates
        } else {
            result.summary.rejected.get(reason).copied().unwrap_or(0)
        };
        if n > have {
            result.summary.count_rejected(reason, n - have);
        }
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

/// Picks `n` of `hosts`: the first n, or n at random from `seed`.
pub fn limit_hosts(mut hosts: Vec<Name>, n: usize, seed: Option<u64>) -> Vec<Name> {
    if let Some(seed) = seed {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        hosts.shuffle(&mut rng);
        hosts.truncate(n);
        hosts.sort();
    } else {
        hosts.truncate(n);
    }
    hosts
}

/// Connects, runs the call (in batches if asked), prints it, and maps the outcome to
/// an exit code.
pub fn run(config_path: &Path, inv: Invocation, view: &dyn View) -> Result<ExitCode> {
    let config = OrchestratorConfig::load(config_path)?;
    let timeout = inv.opts.timeout.unwrap_or(config.defaults.timeout);
    let show_progress = !inv.opts.json && std::io::stderr().is_terminal();
    let rt = runtime()?;
    let result: CallResult = rt.block_on(async {
        let orch = connect(&config, &inv.selection).await?;
        let mut resolved = orch.resolve(&inv.selection)?;
        if let Some(n) = inv.rollout.limit {
            resolved = resolved.subset(limit_hosts(resolved.hosts.clone(), n, inv.rollout.seed));
        }
        if resolved.hosts.is_empty() && resolved.unknown.is_empty() {
            bail!("no enrolled host matches the selection");
        }
        let batch = inv.rollout.batch.unwrap_or(usize::MAX).max(1);
        let chunks: Vec<Vec<Name>> = if resolved.discover {
            vec![resolved.hosts.clone()]
        } else {
            resolved.hosts.chunks(batch).map(|c| c.to_vec()).collect()
        };
        let action = ActionName::new(inv.action)?;
        let mut merged: Option<CallResult> = None;
        let total = resolved.hosts.len() + resolved.unknown.len();
        let bar = show_progress.then(|| progress_bar(total as u64, inv.action));
        for (i, hosts) in chunks.iter().enumerate() {
            if let (true, Some(pause)) = (i > 0, inv.rollout.batch_sleep) {
                tokio::time::sleep(pause).await;
            }
            let mut part = resolved.subset(hosts.clone());
            if i == 0 {
                part.unknown = resolved.unknown.clone();
            }
            let mut call = orch
                .start_resolved(&part, action.clone(), inv.args.clone(), timeout)
                .await?;
            if let Some(b) = &bar {
                b.inc(call.results().count() as u64);
            }
            while let Some(p) = call.next().await {
                if let (Some(b), Progress::Host(_)) = (&bar, &p) {
                    b.inc(1);
                }
            }
            let r = call.finish().await;
            let failed = !r.all_ok();
            if inv.rollout.batch.is_some() {
                tracing::info!(
                    batch = i + 1,
                    of = chunks.len(),
                    ok = r.summary.ok,
                    "batch done"
                );
            }
            merged = Some(match merged.take() {
                None => r,
                Some(m) => m.merge(r),
            });
            if failed && inv.rollout.fail_fast && i + 1 < chunks.len() {
                let skipped: Vec<Name> = chunks[i + 1..].iter().flatten().cloned().collect();
                if let Some(m) = merged.as_mut() {
                    m.skip(skipped, "not run: an earlier batch failed (--fail-fast)");
                }
                break;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut result = merged.context("no batch ran")?;
        merge_rejections(&mut result, &orch);
        orch.close().await;
        Ok::<_, anyhow::Error>(result)
    })?;
    if inv.opts.json {
        render::print_json(&result);
    } else {
        view.print_human(&result, inv.opts.display);
    }
    Ok(exit_code(&result))
}

fn progress_bar(total: u64, action: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} replies {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(action.to_string());
    bar
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
            rollout: a.targets.rollout.clone(),
        },
        &PingView,
    )
}
