//! `gearmq install|start|stop|restart|delete|status|list|logs|facts`: units on hosts.

use crate::call::{
    self, CallOpts, Display, Invocation, RolloutArgs, Shipment, TargetArgs, View, hosts_selection,
};
use crate::context::Context;
use crate::render;
use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use gearmq_orchestrator::{CallResult, CallSpec, HostResult, HostStatus, Progress, Selection};
use gearmq_schemas::actions::{
    ARTIFACT_EXEC, Artifact, CancelArgs, Change, FactsArgs, FactsResult, InstallArgs, ListArgs,
    LogsArgs, LogsResult, StatusArgs, UnitArgs, UnitChangeResult, UnitState, UnitsResult,
};
use gearmq_schemas::units::{RestartPolicy, UnitName, UnitSpec};
use gearmq_schemas::{ActionName, codec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Largest result decoded for display.
const MAX_DATA: usize = 1 << 20;

#[derive(Clone, Copy, ValueEnum)]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

#[derive(Args)]
pub struct InstallCmd {
    /// Hosts: web1,web2 | @all | label clauses like role=web,zone~eu-.*
    hosts: String,
    #[command(flatten)]
    unit: InstallUnit,
    #[command(flatten)]
    opts: CallOpts,
    #[command(flatten)]
    rollout: RolloutArgs,
}

/// What `install` puts on a host (remote or `gearmq local`).
#[derive(Args)]
pub struct InstallUnit {
    /// Unit name: [a-z0-9][a-z0-9_.-]{0,62}; the file is gearmq-<unit>.service.
    unit: String,
    /// Absolute path of the program (argv[0]; never a shell string). With --artifact
    /// or --artifact-url it is {artifact}, the shipped file (the default then), or
    /// '{artifact}/bin/app' when the shipped file is a .tar.gz tree: each host unpacks
    /// it once beside the file and runs bin/app in it.
    #[arg(long, required_unless_present_any = ["artifact_url", "artifact", "sha256"])]
    exec: Option<String>,
    /// Ship the program with the request, through the broker: its SHA-256 and size go
    /// into the signed request, its bytes once into the broker stream
    /// gearmq.artifact.<sha256> (kept 1 h) for every host; each host reads the stream,
    /// keeps the bytes only if they match, stores them by digest (a file already there
    /// is not read again) and runs them. Read a chunk at a time, never held in memory.
    /// With --artifact-url, the local copy of the bytes at that URL instead (only its
    /// digest and size are taken).
    #[arg(long, value_name = "PATH", conflicts_with = "sha256")]
    artifact: Option<std::path::PathBuf>,
    /// Ship the program with the request by URL: each host fetches it from this
    /// http(s) URL and checks it against the SHA-256 and size signed in the request
    /// (from --artifact PATH, or --sha256 and --size).
    #[arg(long, value_name = "URL")]
    artifact_url: Option<String>,
    /// The SHA-256 (hex) of the program, instead of --artifact: of the bytes at
    /// --artifact-url, or, without it, of bytes already in their broker stream (shipped
    /// by an earlier install within the hour).
    #[arg(long, value_name = "HEX", requires = "size")]
    sha256: Option<String>,
    /// Their size in bytes, with --sha256.
    #[arg(long, value_name = "BYTES", requires = "sha256")]
    size: Option<u64>,
    /// An argument, passed exactly as given (repeatable, in order).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// An environment variable (repeatable): --env KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory (absolute).
    #[arg(long)]
    workdir: Option<String>,
    /// When systemd restarts the program.
    #[arg(long, value_enum, default_value = "no")]
    restart: Restart,
    /// Memory limit: bytes or with K, M, G, T suffix (512M).
    #[arg(long, value_parser = parse_size)]
    memory_max: Option<u64>,
    /// CPU limit in percent of one CPU (50%; 200% is two CPUs).
    #[arg(long, value_parser = parse_percent)]
    cpu_quota: Option<u32>,
    /// Description shown by systemd.
    #[arg(long)]
    description: Option<String>,
    /// Start it (restart it if the install changed a running unit).
    #[arg(long)]
    start: bool,
    /// Do not enable it: its manager will not start it at boot (by default an
    /// installed unit is enabled, and a unit installed again with --no-enable is
    /// disabled).
    #[arg(long)]
    no_enable: bool,
}

#[derive(Args)]
pub struct UnitCmd {
    /// Hosts: web1,web2 | @all | label clauses like role=web,zone~eu-.*
    hosts: String,
    /// Unit: a gearmq unit's name (web), or an existing unit's full name
    /// (nginx.service) that the hosts' [[existing]] allowlists open to the action.
    unit: String,
    #[command(flatten)]
    opts: CallOpts,
    #[command(flatten)]
    rollout: RolloutArgs,
}

#[derive(Args)]
pub struct StatusCmd {
    /// Hosts: web1,web2 | @all | label clauses like role=web,zone~eu-.*
    hosts: String,
    /// Unit (web, or an allowlisted existing unit: nginx.service); every unit gearmq
    /// manages if omitted.
    unit: Option<String>,
    #[command(flatten)]
    opts: CallOpts,
    #[command(flatten)]
    rollout: RolloutArgs,
}

#[derive(Args)]
pub struct ListCmd {
    #[command(flatten)]
    targets: TargetArgs,
    #[command(flatten)]
    opts: CallOpts,
}

#[derive(Args)]
pub struct LogsCmd {
    /// The host.
    host: String,
    /// Unit name.
    unit: String,
    /// How many of the last lines (the agent caps it, 1000 by default).
    #[arg(long, default_value_t = 50)]
    lines: u32,
    /// Keep printing new lines until Ctrl-C or the timeout (default 10m for --follow).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    opts: CallOpts,
}

/// Parses `512M`, `1G`, `4096`: bytes, with binary K/M/G/T suffixes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 512M, 2G, 1048576)"))
}

/// Parses `50%` or `50`.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    s.trim()
        .trim_end_matches('%')
        .parse::<u32>()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 50%)"))
}

/// A unit as a command names it: one of gearmq's own by its name (`web`), or an
/// existing unit of the hosts by its full systemd name (`nginx.service`), which each
/// host's `[[existing]]` allowlist must open to the action.
pub fn unit_arg(unit: &str) -> Result<String> {
    UnitName::parse(unit)?;
    Ok(unit.to_string())
}

pub fn decode<T: serde::Serialize + serde::de::DeserializeOwned>(r: &HostResult) -> Option<T> {
    r.data
        .as_deref()
        .and_then(|d| codec::decode::<T>("result", d, MAX_DATA).ok())
}

fn change_word(c: Change) -> &'static str {
    match c {
        Change::Created => "created",
        Change::Unchanged => "unchanged",
        Change::Updated => "updated",
        Change::Started => "started",
        Change::AlreadyRunning => "already running",
        Change::Stopped => "stopped",
        Change::AlreadyStopped => "already stopped",
        Change::Restarted => "restarted",
        Change::Deleted => "deleted",
        Change::Absent => "absent",
        Change::Enabled => "enabled",
        Change::AlreadyEnabled => "already enabled",
        Change::Disabled => "disabled",
        Change::AlreadyDisabled => "already disabled",
        Change::Reloaded => "reloaded",
    }
}

fn state_words(s: &UnitState) -> String {
    let mut t = format!("{}/{}", s.active_state, s.sub_state);
    if s.main_pid != 0 {
        t.push_str(&format!(" pid {}", s.main_pid));
    }
    t
}

pub struct ChangeView;

impl View for ChangeView {
    fn detail(&self, r: &HostResult) -> String {
        match decode::<UnitChangeResult>(r) {
            Some(c) => {
                let mut t = change_word(c.change).to_string();
                if let Some(then) = c.then {
                    t.push_str(", ");
                    t.push_str(change_word(then));
                }
                if let Some(s) = &c.state {
                    t.push_str(": ");
                    t.push_str(&state_words(s));
                }
                t
            }
            None => String::new(),
        }
    }
}

fn spec_from(a: &InstallUnit) -> Result<UnitSpec> {
    let shipped = a.artifact_url.is_some() || a.artifact.is_some() || a.sha256.is_some();
    let exec = match (&a.exec, shipped) {
        (Some(e), _) => e.clone(),
        (None, true) => ARTIFACT_EXEC.to_string(),
        (None, false) => bail!("say what runs: --exec PATH, --artifact PATH or --artifact-url URL"),
    };
    let mut spec = UnitSpec::new(a.unit.clone(), exec);
    spec.args = a.args.clone();
    for e in &a.env {
        let Some((k, v)) = e.split_once('=') else {
            bail!("--env {e:?} is not KEY=VALUE");
        };
        spec.env.insert(k.to_string(), v.to_string());
    }
    spec.workdir = a.workdir.clone();
    spec.restart = match a.restart {
        Restart::No => RestartPolicy::No,
        Restart::OnFailure => RestartPolicy::OnFailure,
        Restart::Always => RestartPolicy::Always,
    };
    spec.memory_max = a.memory_max;
    spec.cpu_quota = a.cpu_quota;
    spec.description = a.description.clone();
    Ok(spec)
}

/// The artifact `a` ships — digest and size from the local copy (read as a stream) or
/// as given — and, when it travels through the broker, the file to publish.
fn artifact_from(a: &InstallUnit) -> Result<Option<(Artifact, Option<PathBuf>)>> {
    let (sha256, size) = match (&a.artifact, &a.sha256, a.size) {
        (Some(path), _, _) => digest_file(path)?,
        (None, Some(hex_digest), Some(size)) => {
            let mut sha = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut sha)
                .with_context(|| format!("--sha256 {hex_digest:?} is not 64 hex digits"))?;
            (sha, size)
        }
        (None, None, _) if a.artifact_url.is_none() => return Ok(None),
        _ => bail!(
            "with --artifact-url, give --artifact PATH (a local copy) or --sha256 HEX --size BYTES"
        ),
    };
    let artifact = Artifact {
        sha256: serde_bytes::ByteArray::new(sha256),
        size,
        url: a.artifact_url.clone(),
    };
    let ship = match (&a.artifact_url, &a.artifact) {
        (None, Some(path)) => Some(path.clone()),
        _ => None,
    };
    Ok(Some((artifact, ship)))
}

/// The SHA-256 and size of `path`, read a MiB at a time.
fn digest_file(path: &Path) -> Result<([u8; 32], u64)> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read --artifact {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    loop {
        let buf = std::io::BufRead::fill_buf(&mut reader)
            .with_context(|| format!("cannot read --artifact {}", path.display()))?;
        if buf.is_empty() {
            break;
        }
        ctx.update(buf);
        let n = buf.len();
        size += n as u64;
        std::io::BufRead::consume(&mut reader, n);
    }
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok((sha, size))
}

/// `install`'s arguments, checked before they are signed (every agent checks them
/// again on arrival), and the artifact to ship through the broker first, if any.
pub fn install_args(a: &InstallUnit) -> Result<(UnitSpec, Vec<u8>, Option<Shipment>)> {
    let spec = spec_from(a)?;
    let (artifact, ship) = match artifact_from(a)? {
        Some((artifact, ship)) => (Some(artifact), ship),
        None => (None, None),
    };
    let install = InstallArgs {
        spec: spec.clone(),
        start: a.start,
        enable: !a.no_enable,
        artifact: artifact.clone(),
    };
    install.validate()?;
    let ship = ship
        .zip(artifact)
        .map(|(path, artifact)| Shipment { path, artifact });
    Ok((spec, codec::encode(&install), ship))
}

pub fn install(ctx: &Context, a: InstallCmd) -> Result<ExitCode> {
    let (_, args, ship) = install_args(&a.unit)?;
    let inv = Invocation {
        selection: hosts_selection(&a.hosts)?,
        action: "install",
        args,
        opts: a.opts,
        rollout: a.rollout,
        ship,
    };
    call::run(ctx, inv, &ChangeView)
}

pub fn unit_action(ctx: &Context, action: &'static str, a: UnitCmd) -> Result<ExitCode> {
    let args = codec::encode(&UnitArgs {
        unit: unit_arg(&a.unit)?,
    });
    let inv = Invocation {
        selection: hosts_selection(&a.hosts)?,
        action,
        args,
        opts: a.opts,
        rollout: a.rollout,
        ship: None,
    };
    call::run(ctx, inv, &ChangeView)
}

fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

fn fmt_since(ms: Option<u64>) -> String {
    ms.filter(|m| *m > 0)
        .map(|m| {
            let ago = gearmq_schemas::time::now_ms().saturating_sub(m);
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(ago / 1000))
            )
        })
        .unwrap_or_else(|| "-".into())
}

/// status and list: a row per unit per host, hosts that failed first.
pub struct UnitsView;

impl View for UnitsView {
    fn print_human(&self, result: &CallResult, display: Display) {
        let mut rows: Vec<[String; 10]> = Vec::new();
        let mut problems: Vec<&HostResult> = Vec::new();
        for r in result.results.iter().filter(|r| display.shows(r)) {
            if r.status != HostStatus::Ok {
                problems.push(r);
                continue;
            }
            let units = decode::<UnitsResult>(r).unwrap_or_default();
            if units.units.is_empty() {
                rows.push([
                    r.host.to_string(),
                    "(no units)".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for u in units.units {
                rows.push([
                    r.host.to_string(),
                    u.unit.clone(),
                    u.active_state.clone(),
                    u.sub_state.clone(),
                    if u.main_pid == 0 {
                        "-".into()
                    } else {
                        u.main_pid.to_string()
                    },
                    fmt_since(u.since_ms),
                    u.memory_bytes.map(fmt_bytes).unwrap_or_else(|| "-".into()),
                    u.restarts.to_string(),
                    if u.unit_file_state.is_empty() {
                        "-".into()
                    } else {
                        u.unit_file_state.clone()
                    },
                    match u.limits_enforced {
                        None => "-".into(),
                        Some(true) => "enforced".into(),
                        Some(false) => "not enforced".into(),
                    },
                ]);
            }
        }
        for p in &problems {
            render::print_problem(p);
        }
        render::print_table(
            &[
                "HOST", "UNIT", "ACTIVE", "SUB", "PID", "SINCE", "MEMORY", "RESTARTS", "BOOT",
                "LIMITS",
            ],
            &rows,
        );
        render::print_summary(result);
    }
}

pub fn status(ctx: &Context, a: StatusCmd) -> Result<ExitCode> {
    let unit = a.unit.as_deref().map(unit_arg).transpose()?;
    let inv = Invocation {
        selection: hosts_selection(&a.hosts)?,
        action: "status",
        args: codec::encode(&StatusArgs { unit }),
        opts: a.opts,
        rollout: a.rollout,
        ship: None,
    };
    call::run(ctx, inv, &UnitsView)
}

pub fn list(ctx: &Context, a: ListCmd) -> Result<ExitCode> {
    let inv = Invocation {
        selection: a.targets.selection()?,
        action: "list",
        args: codec::encode(&ListArgs {}),
        rollout: a.targets.rollout.clone(),
        opts: a.opts,
        ship: None,
    };
    call::run(ctx, inv, &UnitsView)
}

pub struct FactsView;

impl View for FactsView {
    fn print_human(&self, result: &CallResult, display: Display) {
        let mut rows = Vec::new();
        for r in result.results.iter().filter(|r| display.shows(r)) {
            if r.status != HostStatus::Ok {
                render::print_problem(r);
                continue;
            }
            let Some(f) = decode::<FactsResult>(r) else {
                continue;
            };
            rows.push([
                r.host.to_string(),
                f.os.clone(),
                f.kernel.clone(),
                f.cpus.to_string(),
                fmt_bytes(f.memory_bytes),
                humantime::format_duration(Duration::from_secs(f.uptime_ms / 1000)).to_string(),
                format!("{}/{}", f.active_units, f.managed_units),
                if f.limits_enforced {
                    "enforced".into()
                } else {
                    "not enforced".into()
                },
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(f.credential_expires_at),
                )
                .to_string(),
            ]);
        }
        render::print_table(
            &[
                "HOST",
                "OS",
                "KERNEL",
                "CPUS",
                "MEMORY",
                "UPTIME",
                "UNITS",
                "LIMITS",
                "CREDENTIAL EXPIRES",
            ],
            &rows,
        );
        render::print_summary(result);
    }
}

pub fn facts(ctx: &Context, a: ListCmd) -> Result<ExitCode> {
    let inv = Invocation {
        selection: a.targets.selection()?,
        action: "facts",
        args: codec::encode(&FactsArgs {}),
        rollout: a.targets.rollout.clone(),
        opts: a.opts,
        ship: None,
    };
    call::run(ctx, inv, &FactsView)
}

pub fn print_lines(lines: &[String], json: bool, host: &str, seq: u32) {
    if json {
        println!(
            "{}",
            serde_json::json!({"host": host, "seq": seq, "lines": lines})
        );
    } else {
        for l in lines {
            println!("{l}");
        }
    }
}

/// `logs`: the last lines, or (with --follow) a stream until Ctrl-C or the deadline;
/// Ctrl-C sends a signed `cancel` so the agent ends the stream with a final reply.
pub fn logs(ctx: &Context, a: LogsCmd) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let selection = hosts_selection(&a.host)?;
    if matches!(&selection, Selection::Hosts(h) if h.len() != 1) {
        bail!("logs reads one host at a time");
    }
    let args = codec::encode(&LogsArgs {
        unit: unit_arg(&a.unit)?,
        lines: a.lines,
        follow: a.follow,
    });
    let timeout = a.opts.out.timeout.unwrap_or(if a.follow {
        Duration::from_secs(600)
    } else {
        config.defaults.timeout
    });
    let json = a.opts.out.json;
    let rt = call::runtime()?;
    let ctx = ctx.clone();
    let token = a.opts.token.clone();
    let result = call::on_workers(&rt, async move {
        let orch = ctx.connect(&config, &selection, token.as_deref()).await?;
        let mut c = orch
            .start(CallSpec {
                selection: selection.clone(),
                action: ActionName::new("logs")?,
                args,
                timeout,
            })
            .await?;
        let id = c.request_id();
        let mut cancelled = false;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                p = c.next() => match p {
                    Some(Progress::Partial { host, seq, data }) => {
                        if let Some(l) = data.as_deref().and_then(|d| codec::decode::<LogsResult>("logs", d, MAX_DATA).ok()) {
                            print_lines(&l.lines, json, host.as_str(), seq);
                        }
                    }
                    Some(Progress::Host(r)) => {
                        if let Some(l) = decode::<LogsResult>(&r) {
                            print_lines(&l.lines, json, r.host.as_str(), u32::MAX);
                            if l.truncated && !json {
                                eprintln!("(output truncated to the agent's byte limit)");
                            }
                        }
                    }
                    Some(Progress::Rejected(_)) => {}
                    None => break,
                },
                _ = &mut ctrl_c, if a.follow && !cancelled => {
                    cancelled = true;
                    let cancel = orch.request(CallSpec {
                        selection: selection.clone(),
                        action: ActionName::new("cancel")?,
                        args: codec::encode(&CancelArgs { request_id: id }),
                        timeout: Duration::from_secs(5),
                    }).await?;
                    if !cancel.all_ok() && !json {
                        eprintln!("cancel was not confirmed by the host");
                    }
                }
            }
        }
        let mut result = c.finish().await;
        call::merge_rejections(&mut result, &orch);
        orch.close().await;
        Ok::<_, anyhow::Error>(result)
    })?;
    if json {
        // The lines were streamed; the document summarises the call.
        render::print_json(&result);
    } else {
        for r in result.results.iter().filter(|r| r.status != HostStatus::Ok) {
            render::print_problem(r);
        }
    }
    Ok(call::exit_code(&result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_percent("50%"), Ok(50));
        assert!(parse_percent("half").is_err());
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(fmt_bytes(512), "512B");
        assert_eq!(fmt_bytes(3 << 20), "3.0M");
    }
}
