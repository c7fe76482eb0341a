//! `gearmq bench`: how fast gearmq reaches hosts and what it costs, beside a raw AMQP
//! request/reply baseline measured in the same run on the same broker.
//!
//! One run: `gearmq init --hosts-count MAX` into a work directory (on its own vhost),
//! then
//! 1. one real `gearmq-agent` for the first host: its idle RSS, single-host round
//!    trips with one request in flight, throughput with `--in-flight` requests, its
//!    peak RSS under that load;
//! 2. `gearmq-agent --emulate` with every host: fan-out pings to the first N hosts for
//!    each `--sizes` N, `--rounds` times (time until every reply is verified), with
//!    CPU per reply of this process (the orchestrator), the emulator and the broker;
//!    RSS per virtual host idle and under load;
//! 3. the same shapes over raw AMQP (lapin; durable classic queues with the same
//!    arguments, persistent messages of the same sizes, publisher confirms and manual
//!    acks on the responder side as the agent does; no signing, no verification, no
//!    audit log, no replay store) served by a separate responder process
//!    (`gearmq bench --serve-raw`, which this command starts);
//! 4. per-stage CPU of the cryptographic steps, timed here on real messages.
//!
//! Prints a table and writes the same as JSON (`--out`).

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use gearmq_orchestrator::correlate::Correlator;
use gearmq_orchestrator::{HostStatus, Orchestrator, OrchestratorConfig, Selection};
use gearmq_schemas::envelope::{Signed, open};
use gearmq_schemas::{
    ActionName, CredentialVerifier, Name, Reply, Request, Status, Targets, TrustAnchors,
    actions::PingArgs, codec,
};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// The exchange and queue prefix of the raw baseline.
const RAW_EXCHANGE: &str = "bench.raw.requests";
const RAW_REPLIES: &str = "bench.raw.replies";
/// How long one fan-out may take before the benchmark gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Linux clock ticks per second for /proc CPU times (USER_HZ is 100 on every
/// mainstream architecture).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Args)]
pub struct BenchArgs {
    /// Fan-out sizes, comma-separated (hosts are emulated: `gearmq-agent --emulate`).
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
    /// Internal: serve the raw baseline's N queues (started by the benchmark itself).
    #[arg(long, hide = true, value_name = "N")]
    serve_raw: Option<usize>,
    /// Internal: the raw responder's reply size.
    #[arg(long, hide = true, default_value_t = 512)]
    raw_reply_bytes: usize,
}

/// Latency percentiles of one measure, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    samples: usize,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        ms(v[i.min(v.len() - 1)])
    };
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64
    };
    Percentiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        mean_ms: mean,
        samples: v.len(),
    }
}

/// CPU time used, in microseconds, of this process, the agent side and the broker.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    orchestrator_us: f64,
    agent_us: f64,
    broker_us: f64,
}

fn proc_cpu_us(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here at 11 and 12.
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SEC * 1e6
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The oldest beam.smp process: the main broker node.
fn find_broker_pid() -> Option<u32> {
    let mut found: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "beam.smp")
                .unwrap_or(false)
        })
        .collect();
    found.sort();
    found.first().copied()
}

struct Meters {
    agent_pid: Option<u32>,
    broker_pid: Option<u32>,
}

impl Meters {
    fn read(&self) -> Cpu {
        Cpu {
            orchestrator_us: proc_cpu_us(None),
            agent_us: self.agent_pid.map(|p| proc_cpu_us(Some(p))).unwrap_or(0.0),
            broker_us: self.broker_pid.map(|p| proc_cpu_us(Some(p))).unwrap_or(0.0),
        }
    }
}

fn per_reply(before: Cpu, after: Cpu, replies: usize) -> CpuPerReply {
    let n = replies.max(1) as f64;
    CpuPerReply {
        orchestrator_us: (after.orchestrator_us - before.orchestrator_us) / n,
        agent_us: (after.agent_us - before.agent_us) / n,
        broker_us: (after.broker_us - before.broker_us) / n,
    }
}

/// CPU per reply, µs (10 ms /proc resolution, summed over every round).
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuPerReply {
    orchestrator_us: f64,
    agent_us: f64,
    broker_us: f64,
}

#[derive(Debug, Clone, Serialize)]
struct FanOutRow {
    hosts: usize,
    rounds: usize,
    gearmq: Percentiles,
    raw: Percentiles,
    ratio_p50: f64,
    ratio_p99: f64,
    replies_verified: usize,
    replies_expected: usize,
    gearmq_cpu_per_reply: CpuPerReply,
    raw_cpu_per_reply: CpuPerReply,
}

#[derive(Debug, Clone, Serialize)]
struct RoundTripRow {
    gearmq: Percentiles,
    raw: Percentiles,
    ratio_p50: f64,
    ratio_p99: f64,
    replies_verified: usize,
}

#[derive(Debug, Clone, Serialize)]
struct ThroughputRow {
    in_flight: usize,
    requests: usize,
    gearmq_per_sec: f64,
    raw_per_sec: f64,
    ratio: f64,
    replies_verified: usize,
    gearmq_cpu_per_reply: CpuPerReply,
}

#[derive(Debug, Clone, Serialize)]
struct Memory {
    real_agent_idle_kib: Option<u64>,
    real_agent_peak_kib: Option<u64>,
    emulator_hosts: usize,
    emulator_idle_kib: Option<u64>,
    emulator_peak_kib: Option<u64>,
    emulator_idle_kib_per_host: Option<f64>,
    emulator_peak_kib_per_host: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Stage {
    stage: &'static str,
    us_per_op: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    load_before: String,
    load_after: String,
    kernel: String,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    version: &'static str,
    started_at: String,
    machine: Machine,
    notes: Vec<String>,
    request_bytes: usize,
    reply_bytes: usize,
    single_host_round_trip: RoundTripRow,
    throughput: ThroughputRow,
    fan_out: Vec<FanOutRow>,
    memory: Memory,
    stages: Vec<Stage>,
    all_replies_verified: bool,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let p = exe.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} is missing (build the workspace: cargo build --release)",
            p.display()
        );
    }
    Ok(p)
}

/// A child process killed on drop, whose stderr goes to a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(cmd: &mut Command, log: PathBuf) -> Result<Proc> {
        let f = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .context("cannot start a process")?;
        Ok(Proc { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for(&mut self, text: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(text) {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("process exited ({st}) before {text:?}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("no {text:?} after {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A vhost made for the run and deleted after.
struct BenchVhost {
    name: String,
}

impl BenchVhost {
    fn new() -> Result<BenchVhost> {
        let name = format!("gearmq-bench-{:08x}", rand::random::<u32>());
        crate::broker::rabbitmqctl(None, &["add_vhost", &name])?;
        crate::broker::rabbitmqctl(
            None,
            &["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"],
        )?;
        Ok(BenchVhost { name })
    }
}

impl Drop for BenchVhost {
    fn drop(&mut self) {
        let _ = crate::broker::rabbitmqctl(None, &["delete_vhost", &self.name]);
    }
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(n) = a.serve_raw {
        let url = a.broker.clone().context("--serve-raw needs --broker")?;
        runtime.block_on(serve_raw(&url, n, a.raw_reply_bytes))?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = runtime.block_on(bench(&a))?;
    print_table(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&a.out, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("\nJSON report: {}", a.out.display());
    Ok(if report.all_replies_verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(load_before: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        load_before,
        load_after: load(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
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
    let gearmq = std::env::current_exe()?;
    let agent_bin = sibling("gearmq-agent")?;
    let broker_pid = a.broker_pid.or_else(find_broker_pid);
    let mut notes = vec![
        "every reply is verified (signature, credential chain, digest) before it counts".to_string(),
        "durability as in production: each answered request is fsync'd to the agent's audit log and replay store; the orchestrator audit log is synced at the end of every call".to_string(),
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
    let config = OrchestratorConfig::load(&dir.join("orchestrator.toml"))?;
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
        agent_pid: Some(agent.pid()),
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
    progress(format!("starting gearmq-agent --emulate with {max} hosts"));
    let t = Instant::now();
    let mut emu = Proc::start(
        Command::new(&agent_bin)
            .arg("--emulate")
            .arg(dir.join("hosts"))
            .arg("--hosts-per-connection")
            .arg(a.hosts_per_connection.to_string()),
        logs.join("emulator.log"),
    )?;
    emu.wait_for("emulator ready", Duration::from_secs(600))?;
    progress(format!(
        "  emulator ready in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let orch = Orchestrator::connect(&config).await?;
    ping_hosts(&orch, &names[..max.min(10)]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emu_idle = rss_kib(emu.pid(), "VmRSS:");
    let meters = Meters {
        agent_pid: Some(emu.pid()),
        broker_pid,
    };
    let mut fan_gearmq = Vec::new();
    for &n in &a.sizes {
        let n = n.max(1);
        progress(format!(
            "fan-out ping to {n} emulated hosts: {} rounds",
            a.rounds
        ));
        ping_hosts(&orch, &names[..n]).await?; // warm-up
        let before = meters.read();
        let mut times = Vec::with_capacity(a.rounds);
        let mut verified = 0;
        for r in 0..a.rounds {
            let t = Instant::now();
            verified += ping_hosts(&orch, &names[..n]).await?;
            times.push(t.elapsed());
            if n >= 1000 {
                progress(format!(
                    "  round {}/{}: {:.1} ms",
                    r + 1,
                    a.rounds,
                    times[r].as_secs_f64() * 1000.0
                ));
            }
        }
        let cpu = per_reply(before, meters.read(), verified);
        fan_gearmq.push((n, times, verified, cpu));
    }
    let emu_peak = rss_kib(emu.pid(), "VmHWM:");
    orch.close().await;
    emu.stop();

    // 3. The raw baseline.
    let (request_bytes, reply_bytes) = message_sizes(&dir)?;
    progress(format!(
        "raw AMQP baseline: {max} queues, responder process (request {request_bytes} B, reply {reply_bytes} B)"
    ));
    let mut raw_proc = Proc::start(
        Command::new(&gearmq)
            .args(["bench", "--serve-raw", &max.to_string(), "--broker", &url])
            .args(["--raw-reply-bytes", &reply_bytes.to_string()]),
        logs.join("raw.log"),
    )?;
    raw_proc.wait_for("raw responder ready", Duration::from_secs(600))?;
    let raw = RawClient::connect(&url, request_bytes).await?;
    let meters = Meters {
        agent_pid: Some(raw_proc.pid()),
        broker_pid,
    };
    raw.fan_out(1).await?;
    let mut raw_rtts = Vec::with_capacity(a.rtt_count);
    for _ in 0..a.rtt_count {
        let t = Instant::now();
        raw.fan_out(1).await?;
        raw_rtts.push(t.elapsed());
    }
    let raw = Arc::new(raw);
    let raw_tp_secs = raw_throughput(&raw, a.throughput_count, a.in_flight).await?;
    let mut fan_out = Vec::new();
    for (n, times, verified, cpu) in fan_gearmq {
        progress(format!("raw fan-out to {n} queues: {} rounds", a.rounds));
        raw.fan_out(n).await?;
        let before = meters.read();
        let mut raw_times = Vec::with_capacity(a.rounds);
        for _ in 0..a.rounds {
            let t = Instant::now();
            raw.fan_out(n).await?;
            raw_times.push(t.elapsed());
        }
        let raw_cpu = per_reply(before, meters.read(), n * a.rounds);
        let g = percentiles(times);
        let r = percentiles(raw_times);
        fan_out.push(FanOutRow {
            hosts: n,
            rounds: a.rounds,
            ratio_p50: g.p50_ms / r.p50_ms.max(1e-9),
            ratio_p99: g.p99_ms / r.p99_ms.max(1e-9),
            gearmq: g,
            raw: r,
            replies_verified: verified,
            replies_expected: n * a.rounds,
            gearmq_cpu_per_reply: cpu,
            raw_cpu_per_reply: raw_cpu,
        });
    }
    raw_proc.stop();

    progress("timing the cryptographic stages on real messages");
    let stages = stages(&dir)?;
    let g = percentiles(rtts);
    let r = percentiles(raw_rtts);
    let single = RoundTripRow {
        ratio_p50: g.p50_ms / r.p50_ms.max(1e-9),
        ratio_p99: g.p99_ms / r.p99_ms.max(1e-9),
        gearmq: g,
        raw: r,
        replies_verified: verified_rtt,
    };
    let gearmq_per_sec = tp_verified as f64 / tp_secs.max(1e-9);
    let raw_per_sec = a.throughput_count as f64 / raw_tp_secs.max(1e-9);
    let throughput = ThroughputRow {
        in_flight: a.in_flight,
        requests: a.throughput_count,
        gearmq_per_sec,
        raw_per_sec,
        ratio: gearmq_per_sec / raw_per_sec.max(1e-9),
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

/// Pings `hosts` (one signed request published to each) and waits for every verified
/// reply; returns how many were verified ok.
async fn ping_hosts(orch: &Orchestrator, hosts: &[Name]) -> Result<usize> {
    // As `ping --all` signs it (targets: all), published to these hosts only.
    let resolved = orch.resolve(&Selection::All)?.subset(hosts.to_vec());
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

/// The sizes of a signed ping request to one host and of its signed reply.
fn message_sizes(dir: &Path) -> Result<(usize, usize)> {
    let (request, reply, _, _) = sample_messages(dir)?;
    Ok((request.len(), reply.len()))
}

/// A signed ping request from the operator to emu-00001 and that host's signed reply,
/// and the trust anchors.
fn sample_messages(dir: &Path) -> Result<(Vec<u8>, Vec<u8>, TrustAnchors, Name)> {
    use gearmq_schemas::files::{load_public_key, load_signing_key};
    let op_key = load_signing_key(&dir.join("operator.key"))?;
    let op_cred = std::fs::read(dir.join("operator.cred"))?;
    let host = Name::new("emu-00001")?;
    let host_dir = dir.join("hosts/emu-00001");
    let host_key = load_signing_key(&host_dir.join("host.key"))?;
    let host_cred = std::fs::read(host_dir.join("host.cred"))?;
    let issuer = load_public_key(&dir.join("issuer.pub"))?;
    let now = gearmq_schemas::time::now_ms();
    let request = Request::new(
        Name::new("ops")?,
        now,
        now + 60_000,
        Targets::All,
        format!("gearmq.reply.ops.{:08x}", 0u32),
        ActionName::new("ping")?,
        codec::encode(&PingArgs {}),
    );
    let body = codec::encode(&request);
    let digest = gearmq_schemas::sha256(&body);
    let request_bytes =
        Signed::seal_bytes(gearmq_schemas::Context::Request, body, &op_key, &op_cred);
    let mut reply = Reply::new(request.id, digest, host.clone(), Status::Ok, now, now);
    reply.data = Some(serde_bytes::ByteBuf::from(vec![0u8; 64]));
    let reply_bytes = Signed::seal(&reply, &host_key, &host_cred);
    Ok((
        request_bytes,
        reply_bytes,
        TrustAnchors::new(vec![issuer]),
        host,
    ))
}

/// Per-stage CPU of the signed path, timed on this thread on real messages.
fn stages(dir: &Path) -> Result<Vec<Stage>> {
    let (request, reply_bytes, anchors, host) = sample_messages(dir)?;
    let host_key = gearmq_schemas::files::load_signing_key(&dir.join("hosts/emu-00001/host.key"))?;
    let host_cred = std::fs::read(dir.join("hosts/emu-00001/host.cred"))?;
    let verifier = CredentialVerifier::new(anchors.clone(), 1024);
    let max = gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES;
    let time = |n: usize, f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let n = 300;
    let mut out = Vec::new();
    let decode = time(n, &mut || {
        let _ = Signed::decode(&request, max);
    });
    out.push(Stage {
        stage: "agent: decode request envelope",
        us_per_op: decode,
    });
    let open_cached = time(n, &mut || {
        let _ = open::<Request>(&request, max, &verifier);
    });
    out.push(Stage {
        stage: "agent: open request (decode, cached credential, verify signature, decode body)",
        us_per_op: open_cached,
    });
    let cold = time(n / 3, &mut || {
        let v = CredentialVerifier::new(anchors.clone(), 16);
        let _ = open::<Request>(&request, max, &v);
    });
    out.push(Stage {
        stage: "agent: open request, credential not cached (two signature checks)",
        us_per_op: cold,
    });
    let opened = open::<Request>(&request, max, &verifier)?;
    let now = gearmq_schemas::time::now_ms();
    let sign = time(n, &mut || {
        let mut r = Reply::new(
            opened.body().id,
            *opened.digest(),
            host.clone(),
            Status::Ok,
            now,
            now,
        );
        r.data = Some(serde_bytes::ByteBuf::from(vec![0u8; 64]));
        let _ = Signed::seal(&r, &host_key, &host_cred);
    });
    out.push(Stage {
        stage: "agent: encode and sign reply",
        us_per_op: sign,
    });
    let verify_reply = time(n, &mut || {
        let _ = open::<Reply>(&reply_bytes, max, &verifier);
    });
    out.push(Stage {
        stage: "orchestrator: open reply (decode, cached credential, verify signature)",
        us_per_op: verify_reply,
    });
    // Correlation: a verified reply judged against the call it answers (target,
    // digest, duplicate and revocation checks), on a table holding that one call.
    let reply = open::<Reply>(&reply_bytes, max, &verifier)?;
    let targets: std::collections::BTreeSet<Name> = [host.clone()].into();
    let correlate = time(n, &mut || {
        let mut c = Correlator::new(Duration::from_secs(60), false, Duration::from_secs(30));
        c.register(
            reply.body().request_id,
            reply.body().request_digest.into_array(),
            targets.clone(),
        );
        let _ = c.judge(Ok(reply.clone()), None, now, Instant::now());
    });
    out.push(Stage {
        stage: "orchestrator: correlate a verified reply with its call",
        us_per_op: correlate,
    });
    // The audit record each side writes per message: encode, sign, hash, frame and
    // write, without the fsync (the disk's time, shared by a batch).
    let scratch = tempfile::tempdir()?;
    let mut log = gearmq_schemas::audit::AuditLog::open(
        scratch.path().join("audit.log"),
        gearmq_schemas::files::load_signing_key(&dir.join("hosts/emu-00001/host.key"))?,
        &host_cred,
        gearmq_schemas::audit::AuditOptions {
            sync_on_append: false,
            ..Default::default()
        },
    )?;
    let audit = time(n, &mut || {
        let _ = log.append(gearmq_schemas::audit::Entry::request_handled(
            &request,
            Some(&reply_bytes),
        ));
    });
    out.push(Stage {
        stage: "agent and orchestrator: audit record (sign, hash, write; no fsync)",
        us_per_op: audit,
    });
    Ok(out)
}

/// The orchestrator side of the raw baseline: publishes persistent requests with
/// confirms and waits for replies on an exclusive queue, matched by correlation id.
struct RawClient {
    _conn: Connection,
    channel: Channel,
    reply_queue: String,
    payload: Vec<u8>,
    waiting: Waiting,
    next: std::sync::atomic::AtomicU64,
}

/// Raw calls in flight: replies still awaited, and who to tell when none are left.
type Waiting = Arc<Mutex<HashMap<u64, (usize, Option<oneshot::Sender<()>>)>>>;

impl RawClient {
    async fn connect(url: &str, request_bytes: usize) -> Result<RawClient> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = conn.create_channel().await?;
        let reply_queue = format!("bench.raw.reply.{:08x}", rand::random::<u32>());
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(100_000));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        consume
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        consume
            .queue_bind(
                reply_queue.as_str().into(),
                RAW_REPLIES.into(),
                reply_queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = consume
            .basic_consume(
                reply_queue.as_str().into(),
                "bench-raw-client".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let waiting: Waiting = Arc::new(Mutex::new(HashMap::new()));
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let Some(id) = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<u64>().ok())
                else {
                    continue;
                };
                let mut map = w.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((left, tx)) = map.get_mut(&id) {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                        map.remove(&id);
                    }
                }
            }
        });
        Ok(RawClient {
            _conn: conn,
            channel,
            reply_queue,
            payload: vec![0x5a; request_bytes],
            waiting,
            next: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// One request to each of the first `n` raw queues; returns when all `n` replied.
    async fn fan_out(&self, n: usize) -> Result<()> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (n, Some(tx)));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id(id.to_string().into())
            .with_reply_to(self.reply_queue.as_str().into());
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let key = raw_key(i);
            let c = self
                .channel
                .basic_publish(
                    RAW_EXCHANGE.into(),
                    key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &self.payload,
                    props.clone(),
                )
                .await?;
            confirms.push(c);
        }
        for c in confirms {
            c.await?;
        }
        tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .context("raw baseline: replies missing")?
            .context("raw baseline: reply consumer stopped")?;
        Ok(())
    }
}

async fn raw_throughput(raw: &Arc<RawClient>, count: usize, in_flight: usize) -> Result<f64> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let r = raw.fan_out(1).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn raw_key(i: usize) -> String {
    format!("raw.{i:05}")
}

/// `gearmq bench --serve-raw N`: the raw baseline's responder. N durable queues with
/// the host queues' arguments, prefetch 32 each (the agent's default), manual acks; a
/// reply of the gearmq reply's size published with a confirm before the ack.
async fn serve_raw(url: &str, n: usize, reply_bytes: usize) -> Result<()> {
    let reply_payload = Arc::new(vec![0xa5u8; reply_bytes]);
    let per_conn = 250;
    let mut conns = Vec::new();
    let mut started = 0;
    for chunk_start in (0..n).step_by(per_conn) {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let consume = conn.create_channel().await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for (ex, kind) in [
            (RAW_EXCHANGE, lapin::ExchangeKind::Topic),
            (RAW_REPLIES, lapin::ExchangeKind::Topic),
        ] {
            consume
                .exchange_declare(
                    ex.into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        for i in chunk_start..(chunk_start + per_conn).min(n) {
            let queue = format!("bench.raw.{i:05}");
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("gearmq.dead".into()),
            );
            consume
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            consume
                .queue_bind(
                    queue.as_str().into(),
                    RAW_EXCHANGE.into(),
                    raw_key(i).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consume.basic_qos(32, BasicQosOptions::default()).await?;
            let mut consumer = consume
                .basic_consume(
                    queue.as_str().into(),
                    ShortString::from(format!("raw-{i}")),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let publish = publish.clone();
            let payload = reply_payload.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = consumer.next().await {
                    let publish = publish.clone();
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        let Some(reply_to) = d.properties.reply_to().clone() else {
                            return;
                        };
                        let mut props = BasicProperties::default();
                        if let Some(c) = d.properties.correlation_id() {
                            props = props.with_correlation_id(c.clone());
                        }
                        let confirm = publish
                            .basic_publish(
                                RAW_REPLIES.into(),
                                reply_to.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                &payload,
                                props,
                            )
                            .await;
                        if let Ok(c) = confirm {
                            let _ = c.await;
                        }
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                    });
                }
            });
            started += 1;
        }
        conns.push(conn);
    }
    eprintln!("raw responder ready: {started} queues");
    let _ = std::io::stderr().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(conns);
    Ok(())
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!();
    println!("gearmq bench {} — {}", r.version, r.started_at);
    println!(
        "machine: {} CPUs, {}, kernel {}; load average {} before, {} after",
        m.cpus, m.cpu_model, m.kernel, m.load_before, m.load_after
    );
    println!(
        "messages: request {} B, reply {} B",
        r.request_bytes, r.reply_bytes
    );
    println!();
    println!(
        "{:<34} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7}",
        "measure", "gearmq p50", "gearmq p99", "raw p50", "raw p99", "x p50", "x p99"
    );
    let s = &r.single_host_round_trip;
    println!(
        "{:<34} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>7.2} {:>7.2}",
        "single host round trip, 1 in flight",
        s.gearmq.p50_ms,
        s.gearmq.p99_ms,
        s.raw.p50_ms,
        s.raw.p99_ms,
        s.ratio_p50,
        s.ratio_p99
    );
    for f in &r.fan_out {
        println!(
            "{:<34} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>7.2} {:>7.2}",
            format!("fan-out ping, {} hosts", f.hosts),
            f.gearmq.p50_ms,
            f.gearmq.p99_ms,
            f.raw.p50_ms,
            f.raw.p99_ms,
            f.ratio_p50,
            f.ratio_p99
        );
    }
    let t = &r.throughput;
    println!();
    println!(
        "throughput, one host, {} in flight: gearmq {:.0}/s, raw {:.0}/s, ratio {:.2}",
        t.in_flight, t.gearmq_per_sec, t.raw_per_sec, t.ratio
    );
    println!();
    println!(
        "{:<34} {:>13} {:>13} {:>13} {:>13}",
        "CPU per reply (µs)", "orchestrator", "agent side", "broker", "raw broker"
    );
    for f in &r.fan_out {
        println!(
            "{:<34} {:>13.1} {:>13.1} {:>13.1} {:>13.1}",
            format!("fan-out, {} hosts", f.hosts),
            f.gearmq_cpu_per_reply.orchestrator_us,
            f.gearmq_cpu_per_reply.agent_us,
            f.gearmq_cpu_per_reply.broker_us,
            f.raw_cpu_per_reply.broker_us
        );
    }
    println!(
        "{:<34} {:>13.1} {:>13.1} {:>13.1}",
        "throughput, one real agent",
        t.gearmq_cpu_per_reply.orchestrator_us,
        t.gearmq_cpu_per_reply.agent_us,
        t.gearmq_cpu_per_reply.broker_us
    );
    println!();
    println!("per-stage CPU (µs per operation, one core):");
    for s in &r.stages {
        println!("  {:>8.1}  {}", s.us_per_op, s.stage);
    }
    let mem = &r.memory;
    let kib = |k: Option<u64>| {
        k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("-".into())
    };
    let per = |k: Option<f64>| k.map(|k| format!("{k:.1} KiB")).unwrap_or("-".into());
    println!();
    println!(
        "memory: one real agent {} idle, {} peak; emulator ({} hosts) {} idle ({} per host), {} peak ({} per host)",
        kib(mem.real_agent_idle_kib),
        kib(mem.real_agent_peak_kib),
        mem.emulator_hosts,
        kib(mem.emulator_idle_kib),
        per(mem.emulator_idle_kib_per_host),
        kib(mem.emulator_peak_kib),
        per(mem.emulator_peak_kib_per_host)
    );
    println!();
    for n in &r.notes {
        println!("note: {n}");
    }
    println!(
        "every reply verified: {}",
        if r.all_replies_verified { "yes" } else { "NO" }
    );
    let _ = std::io::stdout().lock().flush();
}
