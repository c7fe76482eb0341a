//! The run's result: latency percentiles, rows per measure, the machine it ran on,
//! printed as a table and serialized as the JSON report.

use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// Latency percentiles of one measure, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Percentiles {
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) mean_ms: f64,
    pub(super) samples: usize,
}

pub(super) fn percentiles(mut v: Vec<Duration>) -> Percentiles {
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

/// CPU per reply, µs (10 ms /proc resolution, summed over every round).
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct CpuPerReply {
    pub(super) orchestrator_us: f64,
    pub(super) agent_us: f64,
    pub(super) broker_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct FanOutRow {
    pub(super) hosts: usize,
    /// One publish on the `all` route reaching every host (gearmq and both raw
    /// baselines alike), not one per host.
    pub(super) one_publish: bool,
    pub(super) rounds: usize,
    pub(super) gearmq: Percentiles,
    /// The durable raw baseline (gearmq's durability).
    pub(super) raw: Percentiles,
    /// The transient raw baseline (the transport's limit).
    pub(super) raw_transient: Percentiles,
    pub(super) ratio_p50: f64,
    pub(super) ratio_p99: f64,
    pub(super) ratio_transient_p50: f64,
    pub(super) ratio_transient_p99: f64,
    pub(super) replies_verified: usize,
    pub(super) replies_expected: usize,
    pub(super) gearmq_cpu_per_reply: CpuPerReply,
    pub(super) raw_cpu_per_reply: CpuPerReply,
    pub(super) raw_transient_cpu_per_reply: CpuPerReply,
    /// The broker's descriptor limit is below what this many hosts' queues need.
    pub(super) broker_bound: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RoundTripRow {
    pub(super) gearmq: Percentiles,
    pub(super) raw: Percentiles,
    pub(super) raw_transient: Percentiles,
    pub(super) ratio_p50: f64,
    pub(super) ratio_p99: f64,
    pub(super) ratio_transient_p50: f64,
    pub(super) ratio_transient_p99: f64,
    pub(super) replies_verified: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct ThroughputRow {
    pub(super) in_flight: usize,
    pub(super) requests: usize,
    pub(super) gearmq_per_sec: f64,
    pub(super) raw_per_sec: f64,
    pub(super) raw_transient_per_sec: f64,
    pub(super) ratio: f64,
    pub(super) ratio_transient: f64,
    pub(super) replies_verified: usize,
    pub(super) gearmq_cpu_per_reply: CpuPerReply,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Memory {
    pub(super) real_agent_idle_kib: Option<u64>,
    pub(super) real_agent_peak_kib: Option<u64>,
    pub(super) emulator_hosts: usize,
    pub(super) emulator_idle_kib: Option<u64>,
    pub(super) emulator_peak_kib: Option<u64>,
    pub(super) emulator_idle_kib_per_host: Option<f64>,
    pub(super) emulator_peak_kib_per_host: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Stage {
    pub(super) stage: &'static str,
    pub(super) us_per_op: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) cpu_model: String,
    pub(super) load_before: String,
    pub(super) load_after: String,
    pub(super) kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    /// The broker node's open-file limit, when rabbitmqctl could tell.
    pub(super) broker_descriptors: Option<u64>,
    pub(super) version: &'static str,
    pub(super) started_at: String,
    pub(super) machine: Machine,
    pub(super) notes: Vec<String>,
    pub(super) request_bytes: usize,
    pub(super) reply_bytes: usize,
    pub(super) single_host_round_trip: RoundTripRow,
    pub(super) throughput: ThroughputRow,
    pub(super) fan_out: Vec<FanOutRow>,
    pub(super) memory: Memory,
    pub(super) stages: Vec<Stage>,
    pub(super) all_replies_verified: bool,
}

pub(super) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn machine(load_before: String) -> Machine {
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

fn fan_label(what: &str, f: &FanOutRow) -> String {
    if f.one_publish {
        format!("{what}, {} hosts, 1 publish", f.hosts)
    } else {
        format!("{what}, {} hosts", f.hosts)
    }
}

pub(super) fn print_table(r: &Report) {
    let m = &r.machine;
    println!();
    println!("gearmq-bench {} — {}", r.version, r.started_at);
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
        "{:<38} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "measure (p50)", "gearmq", "transient", "durable", "gearmq p99", "x transnt", "x durable"
    );
    let s = &r.single_host_round_trip;
    println!(
        "{:<38} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>9.2} {:>9.2}",
        "single host round trip, 1 in flight",
        s.gearmq.p50_ms,
        s.raw_transient.p50_ms,
        s.raw.p50_ms,
        s.gearmq.p99_ms,
        s.ratio_transient_p50,
        s.ratio_p50
    );
    for f in &r.fan_out {
        println!(
            "{:<38} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>9.2} {:>9.2}{}",
            fan_label("fan-out ping", f),
            f.gearmq.p50_ms,
            f.raw_transient.p50_ms,
            f.raw.p50_ms,
            f.gearmq.p99_ms,
            f.ratio_transient_p50,
            f.ratio_p50,
            if f.broker_bound { "  BROKER-BOUND" } else { "" }
        );
    }
    let t = &r.throughput;
    println!();
    println!(
        "throughput, one host, {} in flight: gearmq {:.0}/s, raw transient {:.0}/s (x {:.2}), raw durable {:.0}/s (x {:.2})",
        t.in_flight,
        t.gearmq_per_sec,
        t.raw_transient_per_sec,
        t.ratio_transient,
        t.raw_per_sec,
        t.ratio
    );
    match r.broker_descriptors {
        Some(l) => println!("broker open-file limit: {l}"),
        None => println!("broker open-file limit: unknown (rabbitmqctl could not tell)"),
    }
    println!();
    println!(
        "{:<38} {:>13} {:>13} {:>13} {:>13}",
        "CPU per reply (µs)", "orchestrator", "agent side", "broker", "raw broker"
    );
    for f in &r.fan_out {
        println!(
            "{:<38} {:>13.1} {:>13.1} {:>13.1} {:>13.1}",
            fan_label("fan-out", f),
            f.gearmq_cpu_per_reply.orchestrator_us,
            f.gearmq_cpu_per_reply.agent_us,
            f.gearmq_cpu_per_reply.broker_us,
            f.raw_cpu_per_reply.broker_us
        );
    }
    println!(
        "{:<38} {:>13.1} {:>13.1} {:>13.1}",
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
