//! `gearmq-bench emulate DIR`: every host enrolled under `DIR` (one `agent.toml`
//! per subdirectory, as `gearmq init --hosts-count N` writes them) served by one
//! process, to measure what a fleet of N hosts costs the orchestrator and the broker.
//!
//! Each virtual host is a whole agent minus its own process: its own key, credential,
//! trusted issuers, revocation list, replay store, audit log, counters and broker
//! queue, and the very [`Handler`] a real agent runs, so every request is decoded,
//! verified (signature and credential chain, by each virtual host for itself),
//! screened, authorized, replay-checked, executed, signed, audit-logged (durably),
//! stored, published with a confirm and acked.
//!
//! What differs from N real agents, and is said at start:
//! - virtual hosts share broker connections (one per `hosts_per_connection` hosts,
//!   one consuming and one publishing channel each), all under the login of the
//!   first host's URL, so the reply `user_id` cannot name each host: the fleet must
//!   run with the orchestrator's `require_user_id = false` (a development fleet made
//!   without `--provision`);
//! - there is no systemd behind them: every virtual host has the no-op unit backend
//!   ([`crate::noop_units::NoopUnits`]): unit files are written below its state
//!   dir as a real agent writes them, and start, stop, restart and delete succeed at
//!   once, changing only the state the backend keeps (no process runs, no output);
//! - a broken broker session ends the emulator (no reconnect; restart it).
//!
//! Queues and bindings are declared for every host unless `broker.provisioned`.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use gearmq_agent::actions::Services;
use gearmq_agent::config::AgentConfig;
use gearmq_agent::fault::Fault;
use gearmq_agent::handler::Handler;
use gearmq_agent::identity::{HostIdentity, load_host_key};
use gearmq_agent::replay::ReplayStore;
use gearmq_agent::revocation::Revocations;
use gearmq_agent::session::ReplyPublisher;
use gearmq_agent::verifier::now_ms;
use gearmq_io::topology::{self, host_queue};
use gearmq_schemas::Name;
use gearmq_schemas::audit::{AuditOptions, AuditSink, AuditWriters};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Audit writer threads shared by all virtual hosts (each host's log is written by one
/// of them, one fsync per log per batch): a thread per host costs its stack, and
/// thousands of them only queue on the same disk.
const AUDIT_WRITER_THREADS: usize = 8;
/// Jobs queued per audit writer thread (slots allocated up front); a handler finding
/// it full waits on a blocking thread.
const AUDIT_WRITER_QUEUE: usize = 2048;

/// How many virtual hosts are loaded at once (loading is file reads and fsyncs).
const LOAD_CONCURRENCY: usize = 64;
/// How long connecting to the broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of the emulator.
#[derive(Debug, Clone)]
pub struct EmulateOptions {
    /// The directory with one subdirectory (holding `agent.toml`) per host.
    pub hosts_dir: PathBuf,
    /// Virtual hosts per broker connection.
    pub hosts_per_connection: usize,
    /// `Some((k, n))`: serve only the hosts whose place in name order is k modulo n,
    /// so n emulator processes share a fleet larger than one process's descriptors hold.
    pub shard: Option<(usize, usize)>,
}

/// One virtual host, ready to serve.
struct VirtualHost {
    name: Name,
    handler: Arc<Handler>,
    audit: Arc<AuditSink>,
    prefetch: u16,
    provisioned: bool,
}

/// The `agent.toml` files under `dir`, in name order.
pub fn find_hosts(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let config = entry.path().join("agent.toml");
        if config.is_file() {
            found.push(config);
        }
    }
    found.sort();
    if found.is_empty() {
        bail!(
            "no host found in {}: expected DIR/<host>/agent.toml (gearmq init --hosts-count N writes them)",
            dir.display()
        );
    }
    Ok(found)
}

/// Loads one host as `gearmq-agent --config` would, with a unit backend that has no
/// systemd behind it.
fn load_host(config: &Path, writers: &AuditWriters) -> anyhow::Result<VirtualHost> {
    let cfg = AgentConfig::load(config)?;
    let identity = HostIdentity::load(&cfg)?;
    let (store, _) = ReplayStore::open(&cfg.state_dir, cfg.limits.max_stored_reply_bytes, now_ms())
        .with_context(|| format!("replay store in {}", cfg.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&cfg.state_dir)
        .with_context(|| format!("cannot resolve {}", cfg.state_dir.display()))?;
    let (revocations, _) = Revocations::load(
        cfg.revocation_file.as_deref(),
        &state_dir,
        identity.anchors.issuers(),
    )?;
    let revocations = Arc::new(revocations);
    // The no-op unit backend: unit files go below the state dir, jobs succeed at once
    // and only change the state the backend keeps; no systemd, no process.
    let systemd =
        gearmq_agent::config::SystemdSettings::user(state_dir.join("emulated-units"), None);
    let (sd, dir, revs) = (&systemd, &state_dir, revocations.clone());
    let mut services = Services::for_agent(&cfg, sd, dir, &identity, revs);
    services.systemd = Arc::new(crate::noop_units::NoopUnits::new(&systemd.unit_dir));
    let services = Arc::new(services);
    let audit_path = cfg.audit.path(&state_dir);
    // Its own log, written by one of the emulator's shared writer threads.
    let audit = Arc::new(
        writers
            .open(
                &audit_path,
                load_host_key(&cfg.key_file)?,
                &identity.credential_bytes,
                AuditOptions {
                    max_bytes: cfg.audit.max_bytes(),
                    ..AuditOptions::default()
                },
                Some(Arc::new(|e| error!(error = %e, "audit log: cannot write"))),
            )
            .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?,
    );
    // Same path as a real agent, tokens sealed to this virtual host included.
    let handler = Arc::new(Handler::for_host(
        identity,
        store,
        services,
        audit.clone(),
        &cfg.limits,
        Fault::None,
    ));
    Ok(VirtualHost {
        name: cfg.name,
        handler,
        audit,
        prefetch: cfg.broker.prefetch(),
        provisioned: cfg.broker.provisioned,
    })
}

/// Loads every host under `configs`, `LOAD_CONCURRENCY` at a time.
async fn load_all(
    configs: Vec<PathBuf>,
    writers: Arc<AuditWriters>,
) -> anyhow::Result<Vec<VirtualHost>> {
    let gate = Arc::new(Semaphore::new(LOAD_CONCURRENCY));
    let mut tasks = Vec::with_capacity(configs.len());
    for config in configs {
        let gate = gate.clone();
        let writers = writers.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let shown = config.display().to_string();
            tokio::task::spawn_blocking(move || load_host(&config, &writers))
                .await
                .context("loading a host failed")?
                .with_context(|| format!("host {shown}"))
        }));
    }
    let mut hosts = Vec::with_capacity(tasks.len());
    for t in tasks {
        hosts.push(t.await.context("loading a host failed")??);
    }
    Ok(hosts)
}

async fn timed<T>(
    what: &str,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, fut).await {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: timed out"),
    }
}

/// One shared broker connection and the virtual hosts it serves.
struct Group {
    conn: Connection,
    consume: Channel,
    publisher: ReplyPublisher,
}

async fn open_group(
    cfg: &AgentConfig,
    index: usize,
    broken: CancellationToken,
) -> anyhow::Result<Group> {
    let files = cfg.broker.files();
    let raw_url = cfg
        .broker
        .urls
        .first()
        .context("the first host's broker.urls is empty")?;
    let url = files.connect_url(raw_url)?;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("gearmq-agent emulator #{index}")));
    let runtime = lapin::runtime::default_runtime()?;
    let conn = timed(
        "connecting to the broker",
        Connection::connect_with_config(&url, props, files.tls_config()?, runtime),
    )
    .await?;
    let consume = timed("opening a channel", conn.create_channel()).await?;
    let publish = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "confirm.select",
        publish.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let user_id = cfg
        .broker
        .user_id
        .clone()
        .unwrap_or_else(|| url_user(raw_url));
    Ok(Group {
        conn,
        consume,
        publisher: ReplyPublisher::new(publish, user_id, broken),
    })
}

fn url_user(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|u| u.authority.userinfo.username)
        .unwrap_or_default()
}

/// Declares (or, provisioned, checks) host `host`'s queue and bindings, sets its
/// prefetch and starts consuming it.
async fn attach(ch: &Channel, vh: &VirtualHost) -> anyhow::Result<Consumer> {
    let queue = host_queue(&vh.name);
    topology::declare_host_queue(ch, &vh.name, vh.provisioned, CONNECT_TIMEOUT * 2).await?;
    // Per consumer (global = false): applies to the consumer started next.
    timed(
        "basic.qos",
        ch.basic_qos(vh.prefetch, BasicQosOptions::default()),
    )
    .await?;
    timed(
        &format!("consuming {queue}"),
        ch.basic_consume(
            queue.as_str().into(),
            ShortString::from(format!("gearmq-agent-{}", vh.name)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// Serves one virtual host's deliveries, at most `prefetch` at once, as the real
/// server loop does.
async fn serve(
    vh: Arc<VirtualHost>,
    mut consumer: Consumer,
    publisher: ReplyPublisher,
    shutdown: CancellationToken,
    broken: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(usize::from(vh.prefetch)));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = broken.cancelled() => return,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let handler = vh.handler.clone();
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        handler.handle(delivery, &publisher).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    error!(host = %vh.name, error = %e, "consumer failed");
                    broken.cancel();
                    return;
                }
                None => {
                    error!(host = %vh.name, "the broker cancelled the consumer");
                    broken.cancel();
                    return;
                }
            },
        }
    }
}

/// The process's resident memory in KiB (from /proc), if known.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs every host under `opts.hosts_dir` until `shutdown`; an error when they
/// cannot be loaded or the broker session breaks.
pub async fn run(opts: EmulateOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut configs = find_hosts(&opts.hosts_dir)?;
    if let Some((k, n)) = opts.shard {
        configs = configs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k)
            .map(|(_, c)| c)
            .collect();
        if configs.is_empty() {
            bail!("shard {k}/{n} holds no host");
        }
    }
    let first = AgentConfig::load(&configs[0])?;
    info!(hosts = configs.len(), dir = %opts.hosts_dir.display(), "emulator: loading hosts");
    let writers = Arc::new(
        AuditWriters::start(AUDIT_WRITER_THREADS, AUDIT_WRITER_QUEUE, 1024)
            .context("cannot start the audit writer threads")?,
    );
    let hosts = load_all(configs, writers).await?;
    let rss_loaded = rss_kib();
    info!(hosts = hosts.len(), secs = started.elapsed().as_secs_f64(), rss_kib = ?rss_loaded, "emulator: hosts loaded");
    warn!(
        "emulator: virtual hosts share broker connections under one login, so the reply user_id cannot name each host: the orchestrator must run with require_user_id = false (the user_id check is off)"
    );
    warn!(
        "emulator: no systemd behind the virtual hosts: unit actions run on a no-op backend (jobs succeed at once, nothing runs)"
    );
    let per = opts.hosts_per_connection.max(1);
    let broken = CancellationToken::new();
    let mut groups = Vec::new();
    let mut servers = Vec::new();
    let hosts: Vec<Arc<VirtualHost>> = hosts.into_iter().map(Arc::new).collect();
    let mut attaching = Vec::new();
    for (index, chunk) in hosts.chunks(per).enumerate() {
        let group = open_group(&first, index, broken.clone()).await?;
        if index == 0 && !first.broker.provisioned {
            topology::declare_shared(&group.consume, false, CONNECT_TIMEOUT * 2).await?;
        }
        let chunk: Vec<Arc<VirtualHost>> = chunk.to_vec();
        let consume = group.consume.clone();
        attaching.push(tokio::spawn(async move {
            let mut consumers = Vec::with_capacity(chunk.len());
            for vh in chunk {
                let c = attach(&consume, &vh).await?;
                consumers.push((vh, c));
            }
            anyhow::Ok(consumers)
        }));
        groups.push(group);
    }
    for (group, attached) in groups.iter().zip(attaching) {
        for (vh, consumer) in attached.await.context("attaching hosts failed")?? {
            servers.push(tokio::spawn(serve(
                vh,
                consumer,
                group.publisher.clone(),
                shutdown.clone(),
                broken.clone(),
            )));
        }
    }
    let rss = rss_kib();
    let per_host = match (rss, hosts.len()) {
        (Some(r), n) if n > 0 => Some(r as f64 / n as f64),
        _ => None,
    };
    info!(
        hosts = hosts.len(),
        connections = groups.len(),
        secs = started.elapsed().as_secs_f64(),
        rss_kib = ?rss,
        rss_kib_per_host = ?per_host,
        "emulator ready"
    );
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = broken.cancelled() => {}
    }
    for s in &servers {
        s.abort();
    }
    for g in &groups {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            g.conn.close(200, "emulator stopping".into()),
        )
        .await;
    }
    let audits: Vec<Arc<AuditSink>> = hosts.iter().map(|h| h.audit.clone()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for a in audits {
            let _ = a.flush();
        }
    })
    .await;
    if broken.is_cancelled() && !shutdown.is_cancelled() {
        bail!("a broker session broke; the emulator does not reconnect (restart it)");
    }
    Ok(())
}
