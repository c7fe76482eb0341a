//! `facts`: what this host is (OS, kernel, CPUs, memory, uptime, labels) and how many
//! units gearmq runs on it.

use super::status::all_units;
use super::{Action, ActionContext, ActionError};
use gearmq_schemas::actions::{FactsArgs, FactsResult};
use std::fs;

/// The `facts` action.
#[derive(Debug)]
pub struct Facts;

impl Action for Facts {
    const NAME: &'static str = "facts";
    type Args = FactsArgs;
    type Output = FactsResult;

    async fn apply(_args: FactsArgs, ctx: &ActionContext) -> Result<FactsResult, ActionError> {
        let services = &ctx.services;
        // Unit counts and limits come from systemd: without it facts are an error
        // rather than zeros that look like an empty host.
        let units = all_units(services).await?;
        let limits_enforced = services.limits_enforced().await?;
        let active = units
            .units
            .iter()
            .filter(|u| u.active_state == "active")
            .count();
        Ok(FactsResult {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            os: fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| os_release_pretty_name(&t))
                .unwrap_or_else(|| "unknown".into()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpus: fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|t| count_cpu_list(&t))
                .or_else(|| {
                    std::thread::available_parallelism()
                        .ok()
                        .and_then(|n| u32::try_from(n.get()).ok())
                })
                .unwrap_or(0),
            memory_bytes: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mem_total_bytes(&t))
                .unwrap_or(0),
            uptime_ms: fs::read_to_string("/proc/uptime")
                .ok()
                .and_then(|t| uptime_ms(&t))
                .unwrap_or(0),
            labels: services.labels.clone(),
            managed_units: u32::try_from(units.units.len()).unwrap_or(u32::MAX),
            active_units: u32::try_from(active).unwrap_or(u32::MAX),
            limits_enforced,
            credential_expires_at: services.credential_expires_at,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// PRETTY_NAME from os-release text, unquoted.
fn os_release_pretty_name(text: &str) -> Option<String> {
    let v = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v);
    Some(v.to_string())
}

/// How many CPUs a kernel CPU list (`0-3,8,10-11`) names.
fn count_cpu_list(text: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.parse::<u32>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    Some(n)
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The first number of /proc/uptime (seconds, with decimals), in ms.
fn uptime_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_and_os_release_parsing() {
        assert_eq!(
            os_release_pretty_name(
                "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            ),
            Some("Debian GNU/Linux 12 (bookworm)".into())
        );
        assert_eq!(
            os_release_pretty_name("PRETTY_NAME=Plain\n"),
            Some("Plain".into())
        );
        assert_eq!(os_release_pretty_name("NAME=x\n"), None);
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(
            mem_total_bytes("MemTotal:        8000000 kB\nMemFree: 1 kB\n"),
            Some(8_192_000_000)
        );
        assert_eq!(uptime_ms("12.34 56.78\n"), Some(12_340));
    }
}
