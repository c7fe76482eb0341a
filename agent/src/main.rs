//! `gearmq-agent --config FILE [--log-format human|json]`: the host daemon.
//! `gearmq-agent enroll …`: join the fleet (keys made here, credential approved there).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for configuration errors
//! (bad file, unreadable key, credential that does not fit), 1 for anything else.
//! `enroll`: 0 approved, 1 rejected or failed, 2 bad arguments or files, 3 no answer
//! yet (run it again to keep waiting).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, ValueEnum};
use gearmq_agent::actions::Services;
use gearmq_agent::config::AgentConfig;
use gearmq_agent::events::{
    EventIdentity, EventSource, forward_unit_changes, unit_filter, watched_patterns,
};
use gearmq_agent::fault::Fault;
use gearmq_agent::handler::Handler;
use gearmq_agent::identity::{Expiry, HostIdentity, expiry, load_host_key};
use gearmq_agent::metrics::Health;
use gearmq_agent::replay::ReplayStore;
use gearmq_agent::revocation::{Revocations, Update};
use gearmq_agent::server::{Server, ServerSettings};
use gearmq_agent::session::Endpoint;
use gearmq_agent::unit_watch::WatchSettings;
use gearmq_agent::verifier::{now_ms, rfc3339};
use gearmq_schemas::audit::{AuditOptions, AuditSink, SinkOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Extra time beyond the action timeout that shutdown waits for in-flight requests.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// gearmq host agent: executes signed requests from the broker and signs its replies.
#[derive(Debug, Parser)]
#[command(name = "gearmq-agent", version, subcommand_negates_reqs = true)]
struct Args {
    /// The agent configuration file (TOML).
    #[arg(long, value_name = "FILE", required_unless_present = "generate_docs")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Write the man page and shell completions to DIR and exit (for packaging:
    /// deploy/package.sh).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    generate_docs: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Join the fleet over the broker; this host's private keys never leave it.
    ///
    /// Makes the keys in --dir (signing, sealing, TLS with a certificate request), sends
    /// the public halves to the operator, and waits for the issuer-signed credential
    /// and certificate (host.cred, tls.pem, ca.pem in --dir).
    ///
    /// Needs only the issuer's public key, the broker URL of the bootstrap user
    /// (`gearmq.bootstrap`) and, if the operator made one, a one-time bootstrap secret
    /// (`gearmq enroll secret`); without a secret the operator checks the key shown here
    /// before approving. Interrupted, run it again: it resends the same request.
    ///
    /// Example: gearmq-agent enroll --name web1 --dir /etc/gearmq
    ///   --issuer-pub /etc/gearmq/issuer.pub --secret-file /root/web1.secret
    ///   --broker 'amqps://gearmq.bootstrap@broker:5671/gearmq'
    ///   --broker-password-file /root/bootstrap.password --broker-ca /etc/gearmq/broker-ca.pem
    Enroll(EnrollArgs),
}

#[derive(Debug, clap::Args)]
struct EnrollArgs {
    /// The host name to ask for: [a-z0-9][a-z0-9-]{0,62}.
    #[arg(long)]
    name: String,
    /// Directory for the keys and, once approved, host.cred, tls.pem and ca.pem.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The issuer's public key (issuer.pub): the answer must be signed by it.
    #[arg(long, value_name = "FILE")]
    issuer_pub: PathBuf,
    /// The bootstrap user's broker URL (amqp:// or amqps://, user gearmq.bootstrap).
    #[arg(long, value_name = "URL")]
    broker: String,
    /// The bootstrap user's password (mode 0600), if the URL holds none.
    #[arg(long, value_name = "FILE")]
    broker_password_file: Option<PathBuf>,
    /// The CA certificate the broker's TLS certificate is checked against (amqps).
    #[arg(long, value_name = "FILE")]
    broker_ca: Option<PathBuf>,
    /// The bootstrap secret from `gearmq enroll secret` (mode 0600).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// A label to propose (repeatable): --label role=web. The operator decides.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Ask for no TLS certificate (a broker with password logins).
    #[arg(long)]
    no_tls: bool,
    /// How long to wait for the operator's answer.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// A failure that ends the process, with its exit code.
enum Failure {
    /// Configuration: exit 2.
    Config(anyhow::Error),
    /// Anything else: exit 1.
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate_docs {
        return match write_docs(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gearmq-agent: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    init_logging(args.log_format, "info");
    if let Some(AgentCommand::Enroll(e)) = args.command {
        return enroll_main(e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gearmq-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // On the runtime's workers, not on this thread: a delivery then reaches the consumer
    // loop without waking a thread outside the runtime.
    let outcome = gearmq_io::runtime::block_on_worker(&runtime, run(args)).unwrap_or_else(|e| {
        Err(Failure::Runtime(anyhow::anyhow!(
            "the agent's task failed: {e}"
        )))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("gearmq-agent: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("gearmq-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn enroll_main(a: EnrollArgs) -> ExitCode {
    use gearmq_agent::enroll::{Ended, EnrollOptions, enroll, read_secret};
    let options = (|| -> anyhow::Result<EnrollOptions> {
        let labels = gearmq_schemas::names::parse_labels(&a.labels)?;
        Ok(EnrollOptions {
            name: gearmq_schemas::Name::new(a.name.as_str())?,
            dir: a.dir.clone(),
            issuer_pub: a.issuer_pub.clone(),
            broker: a.broker.clone(),
            files: gearmq_io::broker::BrokerFiles {
                password_file: a.broker_password_file.clone(),
                ca_file: a.broker_ca.clone(),
                client: None,
            },
            secret: a.secret_file.as_deref().map(read_secret).transpose()?,
            labels,
            no_tls: a.no_tls,
            wait: a.wait,
        })
    })();
    let options = match options {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gearmq-agent enroll: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gearmq-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let dir = a.dir.display().to_string();
    match runtime.block_on(enroll(options)) {
        Ok(Ended::Approved { serial, not_after }) => {
            println!(
                "enrolled as {} (credential serial {serial}, valid until {}): {dir}/host.cred{}",
                a.name,
                rfc3339(not_after),
                if a.no_tls {
                    String::new()
                } else {
                    format!(", TLS certificate {dir}/tls.pem (key {dir}/tls.key, CA {dir}/ca.pem)")
                }
            );
            ExitCode::SUCCESS
        }
        Ok(Ended::Rejected(reason)) => {
            eprintln!(
                "gearmq-agent enroll: the operator rejected {}: {reason}",
                a.name
            );
            ExitCode::from(1)
        }
        Ok(Ended::Pending) => {
            eprintln!(
                "gearmq-agent enroll: no answer within {}; the request stays queued: run \
                 the same command again to keep waiting",
                humantime::format_duration(a.wait)
            );
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("gearmq-agent enroll: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: under systemd stderr goes to the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `DIR/man/gearmq-agent.1` and `DIR/completions/` for bash, zsh and fish, from the
/// clap definition above (the .deb package ships them).
fn write_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    Ok(gearmq_io::docs::write_docs(
        Args::command(),
        "gearmq-agent",
        dir,
    )?)
}

async fn run(args: Args) -> Result<(), Failure> {
    // clap requires --config unless --generate-docs, which returned before.
    let Some(config) = args.config else {
        return Err(Failure::Config(anyhow::anyhow!(
            "--config FILE is required"
        )));
    };
    let cfg = AgentConfig::load(&config).map_err(|e| Failure::Config(e.into()))?;
    let systemd = cfg
        .systemd_settings(|k| std::env::var(k).ok())
        .map_err(|e| Failure::Config(anyhow::anyhow!("config file {}: {e}", config.display())))?;
    let fault = Fault::from_env().map_err(|e| Failure::Config(anyhow::anyhow!(e)))?;
    if fault != Fault::None {
        warn!(fault = ?fault, "fault injection is on (a test seam); never set GEARMQ_AGENT_FAULT in production");
    }
    let identity = HostIdentity::load(&cfg).map_err(|e| Failure::Config(e.into()))?;
    let now = now_ms();
    if expiry(identity.credential.not_after, now) == Expiry::Expired {
        return Err(Failure::Config(anyhow::anyhow!(
            "host credential {} expired at {}; renew it (gearmq renew) before starting the agent",
            cfg.credential_file.display(),
            rfc3339(identity.credential.not_after)
        )));
    }
    if let Err(r) = gearmq_agent::verifier::check_credential_window(
        &identity.credential,
        now,
        cfg.limits.clock_skew,
    ) {
        warn!(
            "host credential is outside its validity window; orchestrators will refuse replies: {}",
            r.message
        );
    }
    let files = cfg.broker.files();
    files.check().map_err(|e| Failure::Config(e.into()))?;
    let endpoints = cfg
        .broker
        .urls
        .iter()
        .map(|u| Endpoint::new(u, cfg.broker.user_id.as_deref(), files.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Config(e.into()))?;
    // One owner per state dir: never two agents, nor an agent and `gearmq local`.
    gearmq_agent::replay::ensure_state_dir(&cfg.state_dir)
        .map_err(|e| Failure::Config(e.into()))?;
    let _state_lock = gearmq_agent::state_lock::StateLock::acquire(&cfg.state_dir)
        .map_err(|e| Failure::Config(e.into()))?;
    let (store, report) =
        ReplayStore::open(&cfg.state_dir, cfg.limits.max_stored_reply_bytes, now_ms())
            .with_context(|| {
                format!(
                    "cannot open the replay store in {}",
                    cfg.state_dir.display()
                )
            })
            .map_err(Failure::Config)?;
    info!(
        state_dir = %cfg.state_dir.display(),
        since = %rfc3339(report.created_at),
        resumed = report.resumed,
        loaded = report.loaded,
        expired = report.expired,
        damaged = report.damaged,
        "replay store open"
    );
    if report.damaged {
        warn!("the replay journal ended in a damaged record; entries after it were ignored");
    }
    // Unit files name the output file by absolute path.
    let state_dir = std::fs::canonicalize(&cfg.state_dir)
        .with_context(|| format!("cannot resolve state_dir {}", cfg.state_dir.display()))
        .map_err(Failure::Config)?;
    let (revocations, loaded) = Revocations::load(
        cfg.revocation_file.as_deref(),
        &state_dir,
        identity.anchors.issuers(),
    )
    .map_err(|e| Failure::Config(e.into()))?;
    for why in &loaded.ignored {
        warn!("revocation list ignored: {why}");
    }
    match revocations.sequence() {
        Some(sequence) => info!(
            sequence,
            from_file = ?loaded.file,
            from_state = ?loaded.state,
            "revocation list loaded"
        ),
        None => warn!(
            "no revocation list (revocation_file is not set and none was pushed): revoked credentials are not refused"
        ),
    }
    let revocations = Arc::new(revocations);
    if let Err(r) = revocations.check(&identity.credential) {
        warn!("this host's own credential is revoked; orchestrators will reject its replies: {r}");
    }
    let (sd, dir, revs) = (&systemd, &state_dir, revocations.clone());
    let services = Arc::new(Services::for_agent(&cfg, sd, dir, &identity, revs));
    info!(
        bus = %services.systemd.describe(),
        unit_dir = %systemd.unit_dir.display(),
        "units are managed through systemd over D-Bus (connected on first use)"
    );
    let audit_path = cfg.audit.path(&state_dir);
    let audit = open_audit_log(&cfg, &identity, &audit_path).map_err(Failure::Config)?;
    info!(file = %audit_path.display(), max_bytes = cfg.audit.max_bytes(), "audit log open");
    match (&identity.sealing, &cfg.sealing_key_file) {
        (Some(_), _) => info!(
            max_token_ttl = %humantime::format_duration(cfg.limits.max_token_ttl),
            "delegation tokens sealed to this host are accepted"
        ),
        (None, Some(_)) => warn!(
            "sealing_key_file is set, but the host credential publishes no sealing key (enrolled without --sealing-pubkey): delegation tokens are refused"
        ),
        (None, None) => info!("no sealing_key_file: delegation tokens are refused"),
    }
    let stats = services.stats.clone();
    let health = Arc::new(Health::new(
        stats.clone(),
        cfg.name.clone(),
        now,
        identity.credential.not_after,
    ));
    // Bound before connecting to the broker: a port in use is a configuration error.
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => {
            let l = gearmq_agent::metrics::bind(addr)
                .await
                .map_err(Failure::Config)?;
            info!(listen = %addr, "metrics: serving GET /metrics");
            Some(l)
        }
        None => None,
    };
    let status_path = cfg.metrics.status_path(&state_dir);
    let credential_bytes = identity.credential_bytes.clone();
    let credential_labels = identity.credential.labels.clone();
    let credential_not_after = identity.credential.not_after;
    let handler = Arc::new(Handler::for_host(
        identity,
        store,
        services.clone(),
        audit.clone(),
        &cfg.limits,
        fault,
    ));
    let server = Server::new(
        handler,
        ServerSettings {
            host: cfg.name.clone(),
            endpoints,
            provisioned: cfg.broker.provisioned,
            prefetch: cfg.broker.prefetch(),
            drain_timeout: cfg.limits.action_timeout + DRAIN_GRACE,
            reconnect_initial: cfg.broker.reconnect_initial,
            reconnect_max: cfg.broker.reconnect_max,
        },
    );
    let events = if cfg.events.enabled {
        let source = EventSource::new(
            EventIdentity {
                host: cfg.name.clone(),
                key: load_host_key(&cfg.key_file).map_err(|e| Failure::Config(e.into()))?,
                credential: credential_bytes.clone(),
                labels: credential_labels.clone(),
                not_after: credential_not_after,
            },
            cfg.events.interval,
        );
        info!(
            interval = %humantime::format_duration(cfg.events.interval),
            boot = %hex::encode(source.boot()),
            "events: publishing started, alive and stopping to gearmq.events"
        );
        Some(Arc::new(source))
    } else {
        info!("events are off ([events] enabled = false)");
        None
    };
    let server = match &events {
        Some(ev) => server.with_events(ev.clone()),
        None => server,
    };
    let shutdown = CancellationToken::new();
    spawn_signal_watch(shutdown.clone()).map_err(Failure::Runtime)?;
    spawn_reload_on_hangup(revocations).map_err(Failure::Runtime)?;
    let watch_dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let unit_watch = match &events {
        Some(source) if cfg.events.units => {
            let settings = WatchSettings {
                quiet: services.quiet.clone(),
                ..WatchSettings::new(
                    systemd.bus,
                    systemd.address.clone(),
                    watched_patterns(&services.policy.existing),
                )
            };
            info!(bus = %settings.describe(), patterns = ?settings.patterns,
                "events: watching units for failed, exited and restarted");
            let filter = unit_filter(systemd.unit_dir.clone(), services.policy.existing.clone());
            let (tx, rx) = tokio::sync::mpsc::channel(gearmq_agent::events::UNIT_QUEUE);
            tokio::spawn(forward_unit_changes(source.clone(), rx));
            Some(tokio::spawn(gearmq_agent::unit_watch::run(
                settings,
                filter,
                tx,
                watch_dropped.clone(),
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    let upkeep = tokio::spawn(gearmq_agent::housekeeping::run(
        services.clone(),
        shutdown.clone(),
    ));
    if let Some(listener) = metrics_listener {
        tokio::spawn(gearmq_agent::metrics::serve(
            listener,
            health.clone(),
            shutdown.clone(),
        ));
    }
    // Stopped after the server, so the last write says "not connected".
    let status_stop = CancellationToken::new();
    let status = tokio::spawn(gearmq_agent::metrics::write_status_file(
        status_path,
        health,
        status_stop.clone(),
    ));
    server.run(shutdown).await;
    stats.broker_disconnected();
    status_stop.cancel();
    let _ = status.await;
    let _ = upkeep.await;
    if let Some(w) = unit_watch {
        let _ = w.await;
    }
    let flushed = tokio::task::spawn_blocking(move || audit.flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        warn!(result = ?flushed, "audit log: final flush failed");
    }
    let s = stats.snapshot();
    info!(
        received = s.received,
        verified = s.verified,
        executed = s.executed,
        not_target = s.not_target,
        resent = s.resent,
        dead_lettered = s.dead_lettered,
        unroutable_replies = s.unroutable_replies,
        reconnects = s.reconnects,
        audited = s.audited,
        not_audited = s.not_audited,
        audit_failures = s.audit_failures,
        refused = ?s.refused,
        "agent stopped"
    );
    if let Some(ev) = &events {
        let c = ev.counts();
        info!(
            published = c.published.load(std::sync::atomic::Ordering::Relaxed),
            failed = c.failed.load(std::sync::atomic::Ordering::Relaxed),
            dropped = c.dropped.load(std::sync::atomic::Ordering::Relaxed)
                + watch_dropped.load(std::sync::atomic::Ordering::Relaxed),
            "events"
        );
    }
    Ok(())
}

/// Opens the audit log, written with the host key and credential: the first records
/// of a new log, or the chain found, continued.
fn open_audit_log(
    cfg: &AgentConfig,
    identity: &HostIdentity,
    path: &std::path::Path,
) -> anyhow::Result<Arc<AuditSink>> {
    let key = load_host_key(&cfg.key_file)?;
    let log_options = AuditOptions {
        max_bytes: cfg.audit.max_bytes(),
        on_repair: Some(Arc::new(
            |r| warn!(repair = ?r, "audit log: a torn tail was cut off"),
        )),
        ..AuditOptions::default()
    };
    let sink_options = SinkOptions {
        // Bounded by prefetch and open streams anyway: every handler waits for its own
        // record (a full queue makes it wait on a blocking thread). The queue's slots
        // are allocated up front, so it is kept small.
        queue: 512,
        on_error: Some(Arc::new(
            |e| tracing::error!(error = %e, "audit log: cannot write"),
        )),
        ..SinkOptions::default()
    };
    let sink = AuditSink::open(
        path,
        key,
        &identity.credential_bytes,
        log_options,
        sink_options,
    )
    .with_context(|| format!("cannot open the audit log {}", path.display()))?;
    Ok(Arc::new(sink))
}

/// Reads `revocation_file` again on every SIGHUP; only a newer list is taken.
fn spawn_reload_on_hangup(revocations: Arc<Revocations>) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let r = revocations.clone();
            let reloaded = tokio::task::spawn_blocking(move || r.reload_file()).await;
            match reloaded {
                Ok(None) => info!("SIGHUP: no revocation_file is configured; nothing to reload"),
                Ok(Some(Ok(Update::Taken { sequence }))) => {
                    info!(sequence, "SIGHUP: revocation list reloaded")
                }
                Ok(Some(Ok(Update::NotNewer { offered, held }))) => warn!(
                    offered,
                    held, "SIGHUP: revocation_file is not newer than the list held; ignored"
                ),
                Ok(Some(Err(e))) => {
                    warn!(error = %e, "SIGHUP: revocation_file ignored; the list held stays")
                }
                Err(e) => warn!(error = %e, "SIGHUP: reloading the revocation list failed"),
            }
        }
    });
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
fn spawn_signal_watch(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down: finishing in-flight requests");
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    Ok(())
}
