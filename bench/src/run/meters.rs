//! What a run costs: CPU time of this process, the agent side and the broker from
//! /proc, and resident memory.

use super::report::CpuPerReply;

/// Linux clock ticks per second for /proc CPU times (USER_HZ is 100 on every
/// mainstream architecture).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time used, in microseconds, of this process, the agent side and the broker.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cpu {
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

pub(super) fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The oldest beam.smp process: the main broker node.
pub(super) fn find_broker_pid() -> Option<u32> {
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

pub(super) struct Meters {
    /// The agent side: one real agent, or every emulator process.
    pub(super) agent_pids: Vec<u32>,
    pub(super) broker_pid: Option<u32>,
}

impl Meters {
    pub(super) fn read(&self) -> Cpu {
        Cpu {
            orchestrator_us: proc_cpu_us(None),
            agent_us: self.agent_pids.iter().map(|&p| proc_cpu_us(Some(p))).sum(),
            broker_us: self.broker_pid.map(|p| proc_cpu_us(Some(p))).unwrap_or(0.0),
        }
    }
}

pub(super) fn per_reply(before: Cpu, after: Cpu, replies: usize) -> CpuPerReply {
    let n = replies.max(1) as f64;
    CpuPerReply {
        orchestrator_us: (after.orchestrator_us - before.orchestrator_us) / n,
        agent_us: (after.agent_us - before.agent_us) / n,
        broker_us: (after.broker_us - before.broker_us) / n,
    }
}
