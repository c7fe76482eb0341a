//! `gearmq-bench run`: how fast gearmq reaches hosts and what it costs, beside a raw AMQP
//! request/reply baseline measured in the same run on the same broker.
//!
//! One run: `gearmq init --hosts-count MAX` into a work directory (on its own vhost),
//! then
//! 1. one real `gearmq-agent` for the first host: its idle RSS, single-host round
//!    trips with one request in flight, throughput with `--in-flight` requests, its
//!    peak RSS under that load;
//! 2. `gearmq-bench emulate` with every host (several processes when one's open-file
//!    limit cannot hold them): fan-out pings to a fleet of the first N hosts (an
//!    inventory of those N, so the request is signed for `all` as on a fleet of N) for
//!    each `--sizes` N, `--rounds` times (time until every reply is verified), with
//!    CPU per reply of this process (the orchestrator), the emulator and the broker;
//!    RSS per virtual host idle and under load; then the whole fleet once more, the
//!    request published once on the `all` route (`defaults.broadcast_min_hosts`);
//! 3. the same shapes over raw AMQP (lapin; durable classic queues with the same
//!    arguments, persistent messages of the same sizes, publisher confirms and manual
//!    acks on the responder side as the agent does; no signing, no verification, no
//!    audit log, no replay store; the whole fleet also with one publish on a key
//!    every queue is bound to) served by a separate responder process
//!    (`gearmq-bench run --serve-raw`, which this command starts);
//! 4. per-stage CPU of the cryptographic steps, timed here on real messages.
//!
//! Prints a table and writes the same as JSON (`--out`).

mod meters;
mod process;
mod raw;
mod report;
mod stages;

use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_orchestrator::{HostStatus, Orchestrator, OrchestratorConfig, Selection};
use gearmq_schemas::{ActionName, Name, actions::PingArgs, codec};
use meters::{Meters, find_broker_pid, per_reply, rss_kib};
pub(crate) use process::BenchVhost;
use process::{Proc, sibling};
use raw::{RawClient, RawMode, raw_throughput, serve_raw};
use report::{
    FanOutRow, Memory, Report, RoundTripRow, ThroughputRow, load, machine, percentiles, print_table,
};
use stages::{message_sizes, stages};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long one fan-out may take before the benchmark gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct BenchArgs {
    /// Fan-out sizes, comma-separated (hosts are emulated: `gearmq-bench emulate`).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,5000")]
    sizes: Vec<usize>,
    /// Fan-out rounds per size (plus one warm-up round not counted).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Single-host round trips with one request in flight.
    #[arg(long, default_value_t = 300)]
    rtt_count: usize,
    /// Requests sent in the throughput test.
    #[arg(long, default_value_t = 3000)]
    throughput_count: usize,
    /// Requests in flight in the throughput test.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Broker URL (amqp://user:pass@host:port/vhost). Default: a new vhost on the local
    /// broker, made and removed with rabbitmqctl (needs its rights, i.e. root).
    #[arg(long)]
    broker: Option<String>,
    /// Work directory for the fleet (default: a temporary one, removed after).
    /// Its disk matters: every answered request is fsync'd to the agent's audit log
    /// and replay store, as in production.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "gearmq-bench.json")]
    out: PathBuf,
    /// Virtual hosts per broker connection in the emulator.
    #[arg(long, default_value_t = 250)]
    hosts_per_connection: usize,
    /// PID of the broker process, for its CPU time (default: the oldest beam.smp).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Publish gearmq's requests as persistent messages, as before reads became
    /// transient (`defaults.persistent_reads`): to measure what durability costs.
    #[arg(long)]
    persistent_reads: bool,
    /// Internal: serve the raw baseline's N queues (started by the benchmark itself).
    #[arg(long, hide = true, value_name = "N")]
    serve_raw: Option<usize>,
    /// Internal: the raw responder's reply size.
    #[arg(long, hide = true, default_value_t = 512)]
    raw_reply_bytes: usize,
    /// Internal: which raw baseline the responder serves.
    #[arg(long, hide = true, value_enum, default_value = "durable")]
    raw_mode: RawMode,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(n) = a.serve_raw {
        let url = a.broker.clone().context("--serve-raw needs --broker")?;
        runtime.block_on(serve_raw(&url, n, a.raw_reply_bytes, a.raw_mode))?;
        return Ok(ExitCode::SUCCESS);
    }
    // On a worker thread, as `gearmq` runs its calls: the replies then reach the call
    // without waking a thread outside the runtime.
    let out = a.out.clone();
    let report = gearmq_io::runtime::block_on_worker(&runtime, async move { bench(&a).await })
        .map_err(|e| anyhow::anyhow!("the benchmark's task failed: {e}"))??;
    print_table(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&out, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nJSON report: {}", out.display());
    Ok(if report.all_replies_verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn bench(a: &BenchArgs) -> Result<Report> {
    let load_before = load();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let max = a.sizes.iter().copied().max().unwrap_or(1).max(1);
    if a.rounds == 0 || a.rtt_count == 0 || a.throughput_count == 0 || a.in_flight == 0 {
        bail!("--rounds, --rtt-count, --throughput-count and --in-flight must be above 0");
    }
    let (_vhost, url) = match &a.broker {
        Some(u) => (None, u.clone()),
        None => {
            let v = BenchVhost::new()
                .context("cannot make a vhost for the benchmark (pass --broker URL)")?;
            let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", v.name);
            (Some(v), url)
        }
    };
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("gearmq-bench-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bench = std::env::current_exe()?;
    let gearmq = sibling("gearmq")?;
    let agent_bin = sibling("gearmq-agent")?;
    let broker_pid = a.broker_pid.or_else(find_broker_pid);
    let mut notes = vec![
        "every reply is verified (signature, credential chain, digest) before it counts".to_string(),
        "durability as in production: each answered request is fsync'd to the agent's audit log and replay store; the orchestrator audit log is synced at the end of every call".to_string(),
        if a.persistent_reads {
            "gearmq's pings are persistent messages (--persistent-reads)".to_string()
        } else {
            "gearmq's pings are transient messages, as every read by default (defaults.persistent_reads = false)".to_string()
        },
        "the emulator shares broker connections under one login, so the reply user_id check is off".to_string(),
        format!("work dir {} (its disk's fsync time is in every gearmq number)", dir.display()),
    ];
    if broker_pid.is_none() {
        notes.push("broker process not found: broker CPU not measured".into());
    }

    progress(format!(
        "gearmq init --hosts-count {max} in {}",
        dir.display()
    ));
    let t = Instant::now();
    let out = Command::new(&gearmq)
        .args(["init", "--force", "--dir"])
        .arg(&dir)
        .args([
            "--hosts-count",
            &max.to_string(),
            "--name-prefix",
            "emu",
            "--broker",
            &url,
        ])
        .output()
        .context("cannot run gearmq init")?;
    if !out.status.success() {
        bail!(
            "gearmq init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    progress(format!(
        "  {max} hosts enrolled in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let mut config = OrchestratorConfig::load(&dir.join("orchestrator.toml"))?;
    config.defaults.persistent_reads = a.persistent_reads;
    // Rows by size: one publish per host. The whole fleet once more below, published
    // once on the `all` route (`defaults.broadcast_min_hosts`), beside the same shape
    // over raw AMQP.
    config.defaults.broadcast_min_hosts = 0;
    let names: Vec<Name> = (1..=max)
        .map(|i| Name::new(format!("emu-{i:05}").as_str()))
        .collect::<Result<_, _>>()?;
    let logs = dir.join("bench-logs");
    std::fs::create_dir_all(&logs)?;

    // 1. One real agent.
    progress("starting one real gearmq-agent (emu-00001)");
    let mut agent = Proc::start(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(dir.join("hosts/emu-00001/agent.toml"))
            .env("RUST_LOG", "warn,gearmq_agent::server=info"),
        logs.join("agent.log"),
    )?;
    agent.wait_for("agent ready", Duration::from_secs(60))?;
    let orch = Orchestrator::connect(&config).await?;
    // Let the agent settle before reading its idle RSS.
    ping_hosts(&orch, &names[..1]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let real_idle = rss_kib(agent.pid(), "VmRSS:");
    let meters = Meters {
        agent_pids: vec![agent.pid()],
        broker_pid,
    };
    progress(format!(
        "single-host round trips: {} with 1 in flight",
        a.rtt_count
    ));
    let mut rtts = Vec::with_capacity(a.rtt_count);
    let mut verified_rtt = 0;
    for _ in 0..a.rtt_count {
        let t = Instant::now();
        verified_rtt += ping_hosts(&orch, &names[..1]).await?;
        rtts.push(t.elapsed());
    }
    progress(format!(
        "throughput: {} requests, {} in flight",
        a.throughput_count, a.in_flight
    ));
    let orch = Arc::new(orch);
    let before = meters.read();
    let (tp_secs, tp_verified) =
        gearmq_throughput(&orch, &names[0], a.throughput_count, a.in_flight).await?;
    let tp_cpu = per_reply(before, meters.read(), tp_verified);
    let real_peak = rss_kib(agent.pid(), "VmHWM:");
    let orch = Arc::try_unwrap(orch).map_err(|_| anyhow::anyhow!("orchestrator still shared"))?;
    orch.close().await;
    agent.stop();

    // 2. The emulator.
    let shards = emulator_shards(max);
    progress(format!(
        "starting gearmq-bench emulate with {max} hosts{}",
        if shards > 1 {
            format!(" in {shards} processes (open files: 3 per virtual host)")
        } else {
            String::new()
        }
    ));
    if shards > 1 {
        notes.push(format!(
            "emulator: {shards} processes sharing the {max} hosts (each virtual host keeps 3 \
             files open: state lock, replay journal, audit log; one process's limit holds \
             {})",
            hosts_per_emulator()
        ));
    }
    let t = Instant::now();
    let mut emus = Vec::with_capacity(shards);
    for k in 0..shards {
        let mut cmd = Command::new(&bench);
        cmd.arg("emulate")
            .arg(dir.join("hosts"))
            .arg("--hosts-per-connection")
            .arg(a.hosts_per_connection.to_string());
        let log = if shards > 1 {
            cmd.arg("--shard").arg(format!("{k}/{shards}"));
            logs.join(format!("emulator-{k}.log"))
        } else {
            logs.join("emulator.log")
        };
        emus.push(Proc::start(&mut cmd, log)?);
    }
    for emu in &mut emus {
        emu.wait_for("emulator ready", Duration::from_secs(600))?;
    }
    progress(format!(
        "  emulator ready in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let emu_pids: Vec<u32> = emus.iter().map(|e| e.pid()).collect();
    let emu_rss =
        |field: &str| -> Option<u64> { emu_pids.iter().map(|&p| rss_kib(p, field)).sum() };
    let orch = Orchestrator::connect(&config).await?;
    ping_hosts(&orch, &names[..max.min(10)]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emu_idle = emu_rss("VmRSS:");
    let meters = Meters {
        agent_pids: emu_pids.clone(),
        broker_pid,
    };
    let mut fan_gearmq = Vec::new();
    for &n in &a.sizes {
        let n = n.max(1);
        progress(format!(
            "fan-out ping to {n} emulated hosts: {} rounds",
            a.rounds
        ));
        // A fleet of n hosts: an inventory of the first n, so the request is signed for
        // `all` as `ping --all` on such a fleet signs it (pinging n hosts of the larger
        // inventory would sign a list of n names: an n-fold request to each host).
        let sized = if n < max {
            let fleet = fleet_of(&dir, &config, &names[..n])?;
            Some(Orchestrator::connect(&fleet).await?)
        } else {
            None
        };
        let o = sized.as_ref().unwrap_or(&orch);
        let (times, verified, cpu) = fan_rounds(o, &names[..n], a.rounds, &meters).await?;
        fan_gearmq.push((n, times, verified, cpu));
        if let Some(o) = sized {
            o.close().await;
        }
    }
    orch.close().await;
    let mut once_gearmq = None;
    if max >= 2 {
        progress(format!(
            "fan-out ping to all {max} emulated hosts, one publish on the all route: {} rounds",
            a.rounds
        ));
        let mut once = config.clone();
        once.defaults.broadcast_min_hosts = 1;
        let orch = Orchestrator::connect(&once).await?;
        once_gearmq = Some(fan_rounds(&orch, &names, a.rounds, &meters).await?);
        orch.close().await;
    }
    let emu_peak = emu_rss("VmHWM:");
    for emu in &mut emus {
        emu.stop();
    }

    // 3. The raw baselines: the transport's limit (transient) and gearmq's durability.
    let (request_bytes, reply_bytes) = message_sizes(&dir)?;
    let raw_shape = RawShape {
        url: &url,
        bench: &bench,
        logs: &logs,
        max,
        request_bytes,
        reply_bytes,
        broker_pid,
        sizes: fan_gearmq.iter().map(|f| f.0).collect(),
    };
    let durable = raw_baseline(&raw_shape, a, RawMode::Durable).await?;
    let transient = raw_baseline(&raw_shape, a, RawMode::Transient).await?;
    let descriptors = broker_descriptors(max, a.hosts_per_connection);
    if let Some(d) = &descriptors {
        notes.push(d.note.clone());
    }
    let row = |n: usize,
               one_publish: bool,
               times: Vec<Duration>,
               verified: usize,
               cpu: report::CpuPerReply,
               durable: &(Vec<Duration>, report::CpuPerReply),
               transient: &(Vec<Duration>, report::CpuPerReply)| {
        let g = percentiles(times);
        let r = percentiles(durable.0.clone());
        let t = percentiles(transient.0.clone());
        FanOutRow {
            hosts: n,
            one_publish,
            rounds: a.rounds,
            ratio_p50: g.p50_ms / r.p50_ms.max(1e-9),
            ratio_p99: g.p99_ms / r.p99_ms.max(1e-9),
            ratio_transient_p50: g.p50_ms / t.p50_ms.max(1e-9),
            ratio_transient_p99: g.p99_ms / t.p99_ms.max(1e-9),
            gearmq: g,
            raw: r,
            raw_transient: t,
            replies_verified: verified,
            replies_expected: n * a.rounds,
            gearmq_cpu_per_reply: cpu,
            raw_cpu_per_reply: durable.1,
            raw_transient_cpu_per_reply: transient.1,
            broker_bound: descriptors.as_ref().is_some_and(|d| d.bound(n)),
        }
    };
    let mut fan_out = Vec::new();
    for (i, (n, times, verified, cpu)) in fan_gearmq.into_iter().enumerate() {
        let d = (durable.fan[i].1.clone(), durable.fan[i].2);
        let t = (transient.fan[i].1.clone(), transient.fan[i].2);
        fan_out.push(row(n, false, times, verified, cpu, &d, &t));
    }
    if let (Some((times, verified, cpu)), Some(d), Some(t)) =
        (once_gearmq, &durable.once, &transient.once)
    {
        fan_out.push(row(max, true, times, verified, cpu, d, t));
    }

    progress("timing the cryptographic stages on real messages");
    let stages = stages(&dir)?;
    let g = percentiles(rtts);
    let r = percentiles(durable.rtts);
    let t = percentiles(transient.rtts);
    let single = RoundTripRow {
        ratio_p50: g.p50_ms / r.p50_ms.max(1e-9),
        ratio_p99: g.p99_ms / r.p99_ms.max(1e-9),
        ratio_transient_p50: g.p50_ms / t.p50_ms.max(1e-9),
        ratio_transient_p99: g.p99_ms / t.p99_ms.max(1e-9),
        gearmq: g,
        raw: r,
        raw_transient: t,
        replies_verified: verified_rtt,
    };
    let gearmq_per_sec = tp_verified as f64 / tp_secs.max(1e-9);
    let raw_per_sec = a.throughput_count as f64 / durable.tp_secs.max(1e-9);
    let raw_transient_per_sec = a.throughput_count as f64 / transient.tp_secs.max(1e-9);
    let throughput = ThroughputRow {
        in_flight: a.in_flight,
        requests: a.throughput_count,
        gearmq_per_sec,
        raw_per_sec,
        raw_transient_per_sec,
        ratio: gearmq_per_sec / raw_per_sec.max(1e-9),
        ratio_transient: gearmq_per_sec / raw_transient_per_sec.max(1e-9),
        replies_verified: tp_verified,
        gearmq_cpu_per_reply: tp_cpu,
    };
    let per_host = |k: Option<u64>| k.map(|k| k as f64 / max as f64);
    let memory = Memory {
        real_agent_idle_kib: real_idle,
        real_agent_peak_kib: real_peak,
        emulator_hosts: max,
        emulator_idle_kib: emu_idle,
        emulator_peak_kib: emu_peak,
        emulator_idle_kib_per_host: per_host(emu_idle),
        emulator_peak_kib_per_host: per_host(emu_peak),
    };
    let all_replies_verified = single.replies_verified == a.rtt_count
        && throughput.replies_verified == a.throughput_count
        && fan_out
            .iter()
            .all(|f| f.replies_verified == f.replies_expected);
    Ok(Report {
        broker_descriptors: descriptors.map(|d| d.limit),
        version: env!("CARGO_PKG_VERSION"),
        started_at,
        machine: machine(load_before),
        notes,
        request_bytes,
        reply_bytes,
        single_host_round_trip: single,
        throughput,
        fan_out,
        memory,
        stages,
        all_replies_verified,
    })
}

/// What the raw baselines need to run: the same shapes as the gearmq measures.
struct RawShape<'a> {
    url: &'a str,
    bench: &'a std::path::Path,
    logs: &'a std::path::Path,
    max: usize,
    request_bytes: usize,
    reply_bytes: usize,
    broker_pid: Option<u32>,
    sizes: Vec<usize>,
}

/// One raw baseline's measures: round trips, throughput time, and per fan-out size its
/// times and CPU per reply.
struct RawResults {
    rtts: Vec<Duration>,
    tp_secs: f64,
    fan: Vec<(usize, Vec<Duration>, report::CpuPerReply)>,
    /// The whole fleet, one publish on the `all` key: its times and CPU per reply.
    once: Option<(Vec<Duration>, report::CpuPerReply)>,
}

/// Runs one raw baseline against a responder process of its own.
async fn raw_baseline(s: &RawShape<'_>, a: &BenchArgs, mode: RawMode) -> Result<RawResults> {
    progress(format!(
        "raw AMQP baseline, {}: {} queues, responder process (request {} B, reply {} B)",
        mode.name(),
        s.max,
        s.request_bytes,
        s.reply_bytes
    ));
    let mut raw_proc = Proc::start(
        Command::new(s.bench)
            .args(["run", "--serve-raw", &s.max.to_string(), "--broker", s.url])
            .args(["--raw-reply-bytes", &s.reply_bytes.to_string()])
            .args(["--raw-mode", mode.name()]),
        s.logs.join(format!("raw-{}.log", mode.name())),
    )?;
    raw_proc.wait_for("raw responder ready", Duration::from_secs(600))?;
    let raw = RawClient::connect(s.url, s.request_bytes, mode).await?;
    let meters = Meters {
        agent_pids: vec![raw_proc.pid()],
        broker_pid: s.broker_pid,
    };
    raw.fan_out(1).await?;
    let mut rtts = Vec::with_capacity(a.rtt_count);
    for _ in 0..a.rtt_count {
        let t = Instant::now();
        raw.fan_out(1).await?;
        rtts.push(t.elapsed());
    }
    let raw = Arc::new(raw);
    let tp_secs = raw_throughput(&raw, a.throughput_count, a.in_flight).await?;
    let mut fan = Vec::new();
    for &n in &s.sizes {
        progress(format!(
            "raw fan-out, {}, to {n} queues: {} rounds",
            mode.name(),
            a.rounds
        ));
        raw.fan_out(n).await?;
        let before = meters.read();
        let mut times = Vec::with_capacity(a.rounds);
        for _ in 0..a.rounds {
            let t = Instant::now();
            raw.fan_out(n).await?;
            times.push(t.elapsed());
        }
        fan.push((n, times, per_reply(before, meters.read(), n * a.rounds)));
    }
    let mut once = None;
    if s.max >= 2 {
        progress(format!(
            "raw fan-out, {}, to all {} queues, one publish: {} rounds",
            mode.name(),
            s.max,
            a.rounds
        ));
        raw.fan_out_once(s.max).await?;
        let before = meters.read();
        let mut times = Vec::with_capacity(a.rounds);
        for _ in 0..a.rounds {
            let t = Instant::now();
            raw.fan_out_once(s.max).await?;
            times.push(t.elapsed());
        }
        once = Some((times, per_reply(before, meters.read(), s.max * a.rounds)));
    }
    raw_proc.stop();
    Ok(RawResults {
        rtts,
        tp_secs,
        fan,
        once,
    })
}

/// The orchestrator's configuration for a fleet of only `hosts`: an inventory directory
/// of links to their enrolled directories.
fn fleet_of(dir: &Path, config: &OrchestratorConfig, hosts: &[Name]) -> Result<OrchestratorConfig> {
    let inventory = dir.join("fleets").join(hosts.len().to_string());
    if !inventory.exists() {
        std::fs::create_dir_all(&inventory)
            .with_context(|| format!("cannot create {}", inventory.display()))?;
        for h in hosts {
            let target = std::fs::canonicalize(config.inventory_dir.join(h.as_str()))
                .with_context(|| format!("host {h} is not in the inventory"))?;
            std::os::unix::fs::symlink(&target, inventory.join(h.as_str()))
                .with_context(|| format!("cannot link {h} into {}", inventory.display()))?;
        }
    }
    let mut sized = config.clone();
    sized.inventory_dir = inventory;
    Ok(sized)
}

/// Files each virtual host keeps open (state lock, replay journal, audit log), and
/// what an emulator process keeps beside them (connections, runtime, logs).
const FILES_PER_VIRTUAL_HOST: u64 = 3;
const FILES_PER_EMULATOR: u64 = 512;

/// Virtual hosts one emulator process can hold under this process's open-file limit
/// (which it inherits).
fn hosts_per_emulator() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(1024);
    (limit.saturating_sub(FILES_PER_EMULATOR) / FILES_PER_VIRTUAL_HOST).max(1) as usize
}

/// Emulator processes for a fleet of `max` hosts.
fn emulator_shards(max: usize) -> usize {
    max.div_ceil(hosts_per_emulator()).max(1)
}

/// The local broker node's descriptor limit against what a fan-out to n hosts asks of
/// it (the rule `broker check` applies: `provision::descriptors`).
struct BrokerDescriptors {
    limit: u64,
    connections: u64,
    note: String,
}

impl BrokerDescriptors {
    /// Whether a fan-out to `n` hosts needs more descriptors than the node has: its
    /// numbers are then the broker's file-handle cache, not gearmq or the transport.
    fn bound(&self, n: usize) -> bool {
        let need = gearmq_orchestrator::provision::descriptors::DescriptorNeed {
            durable_queues: n as u64 + 1,
            connections: self.connections,
        };
        need.needed() > self.limit
    }
}

fn broker_descriptors(max: usize, hosts_per_connection: usize) -> Option<BrokerDescriptors> {
    use gearmq_io::broker_admin::BrokerAdmin;
    let nodes = gearmq_io::rabbitmqctl::Rabbitmqctl::new(None)
        .descriptor_limits()
        .ok()?;
    let limit = nodes.iter().filter_map(|n| n.limit).min()?;
    // The emulator's connections, the orchestrator's and the raw responder's.
    let connections = max.div_ceil(hosts_per_connection.max(1)) as u64 + 2;
    let d = BrokerDescriptors {
        limit,
        connections,
        note: String::new(),
    };
    let first_bound = (1..=max).find(|&n| d.bound(n));
    let note = match first_bound {
        None => {
            format!("broker descriptor limit {limit}: enough for every fan-out size of this run")
        }
        Some(n) => format!(
            "BROKER-BOUND: the broker's descriptor limit is {limit}, below what a fan-out to \
             {n} or more hosts needs (2 per durable queue + 1 per connection + 256): those \
             rows measure the broker's file-handle cache, not gearmq or the transport; start \
             the broker with a higher `ulimit -n` (deploy/ensure-rabbitmq.sh)"
        ),
    };
    Some(BrokerDescriptors { note, ..d })
}

/// A warm-up ping, then `rounds` timed pings of `hosts`: the round times, the replies
/// verified, and CPU per reply over the timed rounds.
async fn fan_rounds(
    orch: &Orchestrator,
    hosts: &[Name],
    rounds: usize,
    meters: &Meters,
) -> Result<(Vec<Duration>, usize, report::CpuPerReply)> {
    ping_hosts(orch, hosts).await?;
    let before = meters.read();
    let mut times = Vec::with_capacity(rounds);
    let mut verified = 0;
    for r in 0..rounds {
        let t = Instant::now();
        verified += ping_hosts(orch, hosts).await?;
        times.push(t.elapsed());
        if hosts.len() >= 1000 {
            progress(format!(
                "  round {}/{rounds}: {:.1} ms",
                r + 1,
                times[r].as_secs_f64() * 1000.0
            ));
        }
    }
    Ok((times, verified, per_reply(before, meters.read(), verified)))
}

/// Pings `hosts` (one signed request published to each) and waits for every verified
/// reply; returns how many were verified ok.
async fn ping_hosts(orch: &Orchestrator, hosts: &[Name]) -> Result<usize> {
    let resolved = if hosts.len() < orch.inventory().len() {
        // As `gearmq ping h1 h2 …` resolves it: the named hosts, without a walk over
        // the whole inventory for each call.
        orch.resolve(&Selection::Hosts(hosts.to_vec()))?
    } else {
        // As `ping --all` signs it (targets: all), published to these hosts only.
        orch.resolve(&Selection::All)?.subset(hosts.to_vec())
    };
    let call = orch
        .start_resolved(
            &resolved,
            ActionName::new("ping")?,
            codec::encode(&PingArgs {}),
            CALL_TIMEOUT,
        )
        .await?;
    let result = call.finish().await;
    let ok = result
        .results
        .iter()
        .filter(|r| r.status == HostStatus::Ok)
        .count();
    if ok != hosts.len() {
        let bad: Vec<String> = result
            .results
            .iter()
            .filter(|r| r.status != HostStatus::Ok)
            .take(3)
            .map(|r| {
                format!(
                    "{}: {:?} {}",
                    r.host,
                    r.status,
                    r.message.clone().unwrap_or_default()
                )
            })
            .collect();
        bail!(
            "{} of {} hosts answered ok; for example {bad:?}",
            ok,
            hosts.len()
        );
    }
    Ok(ok)
}

async fn gearmq_throughput(
    orch: &Arc<Orchestrator>,
    host: &Name,
    count: usize,
    in_flight: usize,
) -> Result<(f64, usize)> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        let orch = orch.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let r = ping_hosts(&orch, std::slice::from_ref(&host)).await;
            drop(permit);
            r
        }));
    }
    let mut verified = 0;
    for t in tasks {
        verified += t.await??;
    }
    Ok((started.elapsed().as_secs_f64(), verified))
}
