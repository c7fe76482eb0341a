//! Running one call from the command line: targets, options, connect, print, exit code.

use crate::context::Context;
use crate::render;
use anyhow::{Context as _, Result, bail};
use clap::Args;
use gearmq_orchestrator::{CallResult, HostResult, HostStatus, Orchestrator, Progress, Selection};
use gearmq_schemas::actions::{self, PingResult};
use gearmq_schemas::{ActionName, Name, codec};
use gearmq_schemas::{LabelMatch, MatchOp};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

/// Which hosts a command is for, and how to roll through them.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Targets, as every command takes them: host names (web1,web2), @all (every
    /// enrolled host), or label clauses (role=web,zone~eu-.*). --host, --all and
    /// --where are the same as flags.
    #[arg(value_name = "TARGETS", group = "target")]
    targets: Option<String>,
    /// Hosts by name, comma-separated: --host web1,web2 (the same as TARGETS web1,web2).
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
    /// Whoever answers a broadcast (for fleets without an inventory here). It reaches
    /// every host, so it takes no --limit or --batch.
    #[arg(long, group = "target", conflicts_with_all = ["limit", "batch"])]
    discover: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
}

/// Limits and batches for acting on many hosts.
#[derive(Args, Debug, Clone, Default)]
pub struct RolloutArgs {
    /// Only N of the selected hosts: the first N by name, or N at random with --seed.
    /// The request then names exactly those hosts in its signature, so a copy of it
    /// forwarded to another host is ignored there.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Seed for a random --limit (the same seed picks the same hosts).
    #[arg(long, requires = "limit")]
    pub seed: Option<u64>,
    /// Act on N hosts at a time, in name order (a rolling change). Each batch is its own
    /// request, signed for exactly that batch's hosts.
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
        if let Some(t) = &self.targets {
            return hosts_selection(t);
        }
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
            bail!(
                "say which hosts: TARGETS (web1,web2 | @all | role=web), or --host a,b, --all, \
                 --where KEY=VALUE, --discover"
            );
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

/// Options every call over the broker shares.
#[derive(Args, Debug, Clone)]
pub struct CallOpts {
    #[command(flatten)]
    pub out: OutputOpts,
    /// A delegation token to carry (a host calling another host as itself, with the
    /// host's client.toml as --config): every request of the command carries it, and
    /// it may name only the token's audience host.
    #[arg(long, value_name = "FILE")]
    pub token: Option<std::path::PathBuf>,
}

/// How a command waits and shows its results (remote calls and `gearmq local`).
#[derive(Args, Debug, Clone)]
pub struct OutputOpts {
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
    /// An artifact to publish into its broker stream before the first request.
    pub ship: Option<Shipment>,
}

/// A program shipped through the broker: the local file and what the request signs.
pub struct Shipment {
    pub path: std::path::PathBuf,
    pub artifact: gearmq_schemas::actions::Artifact,
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a command's `work` on `rt`'s worker threads
/// ([`gearmq_io::runtime::block_on_worker`]): a call's replies then reach it without
/// waking a thread outside the runtime.
pub fn on_workers<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    gearmq_io::runtime::block_on_worker(rt, work)
        .map_err(|e| anyhow::anyhow!("the command's task failed: {e}"))?
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

/// 3 if the audit log could not take some of the call's records (whatever the
/// results: they are not all proven), else 0 if every target answered ok, else 1.
pub fn exit_code(result: &CallResult) -> ExitCode {
    if result.summary.audit_missing > 0 {
        eprintln!(
            "gearmq: the audit log could not take {} record(s) of this call: see the errors above",
            result.summary.audit_missing
        );
        ExitCode::from(3)
    } else if result.all_ok() {
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
pub fn run(ctx: &Context, inv: Invocation, view: &dyn View) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let timeout = inv.opts.out.timeout.unwrap_or(config.defaults.timeout);
    let show_progress = !inv.opts.out.json && std::io::stderr().is_terminal();
    let (json, display) = (inv.opts.out.json, inv.opts.out.display);
    let rt = runtime()?;
    let ctx = ctx.clone();
    let result: CallResult = on_workers(&rt, async move {
        let orch = ctx
            .connect(&config, &inv.selection, inv.opts.token.as_deref())
            .await?;
        let mut resolved = orch.resolve(&inv.selection)?;
        if let Some(n) = inv.rollout.limit {
            resolved = resolved.subset(limit_hosts(resolved.hosts.clone(), n, inv.rollout.seed));
        }
        if resolved.hosts.is_empty() && resolved.unknown.is_empty() {
            bail!("no enrolled host matches the selection");
        }
        if let Some(s) = &inv.ship {
            ship(&orch, s, show_progress).await?;
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
    if json {
        render::print_json(&result);
    } else {
        view.print_human(&result, display);
    }
    Ok(exit_code(&result))
}

/// Publishes `s` into its broker stream, with a byte progress bar on a terminal, and
/// says how it went (on stderr, with or without --json: stdout stays the call's result).
async fn ship(orch: &Orchestrator, s: &Shipment, show_progress: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let bar = show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(s.artifact.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "shipping {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    orch.ship_artifact(&s.path, &s.artifact, |done| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "shipped {} ({} bytes, sha256 {}) into broker stream {} in {:.1} s",
        s.path.display(),
        s.artifact.size,
        s.artifact.hex(),
        gearmq_schemas::actions::artifact_stream(&s.artifact.hex()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
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

pub fn ping(ctx: &Context, a: PingCmd) -> Result<ExitCode> {
    run(
        ctx,
        Invocation {
            selection: a.targets.selection()?,
            action: "ping",
            args: codec::encode(&actions::PingArgs {}),
            opts: a.opts,
            rollout: a.targets.rollout.clone(),
            ship: None,
        },
        &PingView,
    )
}
