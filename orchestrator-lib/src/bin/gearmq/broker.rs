//! `gearmq broker provision|check|deprovision`: the broker's users, permissions and
//! topology, derived from the inventory.

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use gearmq_orchestrator::provision::{self, BrokerState, Plan, QueueType};
use gearmq_orchestrator::{Inventory, OrchestratorConfig};
use gearmq_schemas::Name;
use gearmq_schemas::files::load_trusted_issuers;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Clone, Copy, ValueEnum)]
pub enum QueueKind {
    /// One broker node.
    Classic,
    /// A cluster (replicated).
    Quorum,
}

#[derive(clap::Args, Clone)]
pub struct BrokerTarget {
    /// The RabbitMQ node rabbitmqctl talks to (default: the local node).
    #[arg(long)]
    node: Option<String>,
    /// The vhost (default: the one in the orchestrator's first broker URL).
    #[arg(long)]
    vhost: Option<String>,
}

#[derive(clap::Args, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    target: BrokerTarget,
    /// Queue type of the host queues.
    #[arg(long, value_enum, default_value = "classic")]
    queue_type: QueueKind,
    /// A host that may send delegated requests to single hosts (repeatable).
    #[arg(long = "delegator", value_name = "HOST")]
    delegators: Vec<String>,
    /// A further operator user (repeatable); the configured operator is always one.
    #[arg(long = "operator", value_name = "NAME")]
    operators: Vec<String>,
}

impl PlanArgs {
    /// The plan arguments `gearmq init --provision` uses.
    pub fn for_init(delegators: Vec<String>, node: Option<String>) -> PlanArgs {
        PlanArgs {
            target: BrokerTarget { node, vhost: None },
            queue_type: QueueKind::Classic,
            delegators,
            operators: Vec::new(),
        }
    }
}

#[derive(Subcommand)]
pub enum BrokerCommand {
    /// Print or import the definitions: exchanges, host queues (dead-lettering, bounds
    /// as policies), bindings, one user per host and operator, least-privilege
    /// permissions and topic permissions. Idempotent.
    Provision {
        #[command(flatten)]
        plan: PlanArgs,
        /// Write the definitions JSON here (default: standard output).
        #[arg(long)]
        definitions_out: Option<PathBuf>,
        /// Import them into the broker (rabbitmqctl import_definitions).
        #[arg(long)]
        apply: bool,
    },
    /// Compare the broker with what provisioning would make; list every drift (exit 1).
    Check {
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Remove a host's broker user and queue.
    Deprovision {
        /// The host.
        host: String,
        #[command(flatten)]
        target: BrokerTarget,
    },
}

fn vhost_of(config: &OrchestratorConfig, target: &BrokerTarget) -> Result<String> {
    if let Some(v) = &target.vhost {
        return Ok(v.clone());
    }
    let url = config.broker.urls.first().context("broker.urls is empty")?;
    let uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("broker URL does not parse: {e}"))?;
    Ok(uri.vhost)
}

/// Builds the plan from the config and inventory.
pub fn plan_from(config: &OrchestratorConfig, a: &PlanArgs) -> Result<Plan> {
    let issuers = load_trusted_issuers(&config.trusted_issuers)?;
    let inventory = Inventory::load(&config.inventory_dir, &issuers)
        .with_context(|| format!("cannot read {}", config.inventory_dir.display()))?;
    let mut operators = vec![Name::new(config.name.as_str())?];
    for o in &a.operators {
        operators.push(Name::new(o.as_str())?);
    }
    let mut named: Vec<&String> = config.delegators.iter().chain(&a.delegators).collect();
    named.sort();
    named.dedup();
    let delegators = named
        .into_iter()
        .map(|d| Name::new(d.as_str()).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    for d in &delegators {
        if inventory.get(d).is_none() {
            bail!("delegator {d} is not an enrolled host");
        }
    }
    let mut passwords = BTreeMap::new();
    for (name, _) in inventory.hosts() {
        let f = config
            .inventory_dir
            .join(name.as_str())
            .join("broker.password");
        if f.is_file() {
            let p = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            passwords.insert(name.to_string(), p.trim().to_string());
        }
    }
    for url in config.broker.urls.iter().take(1) {
        if let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() {
            let u = uri.authority.userinfo;
            if u.username == config.name && !u.password.is_empty() {
                passwords.insert(u.username, u.password);
            }
        }
    }
    Ok(Plan {
        vhost: vhost_of(config, &a.target)?,
        hosts: inventory.names(),
        operators,
        delegators,
        queue_type: match a.queue_type {
            QueueKind::Classic => QueueType::Classic,
            QueueKind::Quorum => QueueType::Quorum,
        },
        passwords,
        host_queue_max_length: 10_000,
        delivery_limit: 5,
    })
}

/// Runs rabbitmqctl with `args` (against `node` if given) and returns stdout.
pub fn rabbitmqctl(node: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(n) = node {
        cmd.args(["-n", n]);
    }
    let out = cmd
        .args(args)
        .output()
        .context("cannot run rabbitmqctl (is RabbitMQ installed here?)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Imports definitions into the broker. They go through standard input: they hold
/// password hashes, and rabbitmqctl runs as the broker's own user, which could not
/// read a root-only file anyway.
pub fn apply(node: Option<&str>, definitions: &Value) -> Result<()> {
    use std::io::Write;
    let mut cmd = Command::new("rabbitmqctl");
    if let Some(n) = node {
        cmd.args(["-n", n]);
    }
    let mut child = cmd
        .args(["-q", "import_definitions", "--format", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run rabbitmqctl (is RabbitMQ installed here?)")?;
    child
        .stdin
        .take()
        .context("rabbitmqctl has no stdin")?
        .write_all(definitions.to_string().as_bytes())
        .context("cannot write definitions to rabbitmqctl")?;
    let out = child
        .wait_with_output()
        .context("rabbitmqctl did not finish")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl import_definitions failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn json_rows(text: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(text.trim()).context("rabbitmqctl gave no JSON")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Reads the broker's state for `vhost`.
pub fn read_state(node: Option<&str>, vhost: &str) -> Result<BrokerState> {
    let mut st = BrokerState::default();
    for u in json_rows(&rabbitmqctl(
        node,
        &["-q", "list_users", "--formatter", "json"],
    )?)? {
        let tags = u["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        st.users.insert(s(&u, "user"), tags);
    }
    let q = ["-q", "-p", vhost];
    for p in json_rows(&rabbitmqctl(
        node,
        &[&q[..], &["list_permissions", "--formatter", "json"]].concat(),
    )?)? {
        st.permissions.insert(
            s(&p, "user"),
            (s(&p, "configure"), s(&p, "write"), s(&p, "read")),
        );
    }
    for t in json_rows(&rabbitmqctl(
        node,
        &[&q[..], &["list_topic_permissions", "--formatter", "json"]].concat(),
    )?)? {
        st.topic_permissions.insert(
            (s(&t, "user"), s(&t, "exchange")),
            (s(&t, "write"), s(&t, "read")),
        );
    }
    for qu in json_rows(&rabbitmqctl(
        node,
        &[&q[..], &["list_queues", "name", "--formatter", "json"]].concat(),
    )?)? {
        st.queues.push(s(&qu, "name"));
    }
    for b in json_rows(&rabbitmqctl(
        node,
        &[
            &q[..],
            &[
                "list_bindings",
                "source_name",
                "destination_name",
                "routing_key",
                "--formatter",
                "json",
            ],
        ]
        .concat(),
    )?)? {
        st.bindings.push((
            s(&b, "source_name"),
            s(&b, "destination_name"),
            s(&b, "routing_key"),
        ));
    }
    Ok(st)
}

pub fn run(config_path: &Path, cmd: BrokerCommand) -> Result<ExitCode> {
    let config = OrchestratorConfig::load(config_path)?;
    match cmd {
        BrokerCommand::Provision {
            plan,
            definitions_out,
            apply: do_apply,
        } => {
            let p = plan_from(&config, &plan)?;
            let defs = provision::definitions(&p);
            match &definitions_out {
                Some(f) => gearmq_schemas::files::write_file(
                    f,
                    serde_json::to_string_pretty(&defs)?.as_bytes(),
                    0o600,
                    true,
                )?,
                None if !do_apply => println!("{}", serde_json::to_string_pretty(&defs)?),
                None => {}
            }
            if do_apply {
                apply(plan.target.node.as_deref(), &defs)?;
                eprintln!(
                    "provisioned vhost {}: {} hosts, {} operators, {} delegators",
                    p.vhost,
                    p.hosts.len(),
                    p.operators.len(),
                    p.delegators.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BrokerCommand::Check { plan } => {
            let p = plan_from(&config, &plan)?;
            let defs = provision::definitions(&p);
            let state = read_state(plan.target.node.as_deref(), &p.vhost)?;
            let drift = provision::compare(&defs, &state);
            if drift.is_empty() {
                println!("broker matches the plan for vhost {}", p.vhost);
                Ok(ExitCode::SUCCESS)
            } else {
                for d in &drift {
                    println!("drift: {}", d.0);
                }
                println!("{} differences", drift.len());
                Ok(ExitCode::from(1))
            }
        }
        BrokerCommand::Deprovision { host, target } => {
            let host = Name::new(host.as_str())?;
            let vhost = vhost_of(&config, &target)?;
            let node = target.node.as_deref();
            let q = format!("gearmq.host.{host}");
            // The queue first: a user cannot consume what no longer exists.
            let r1 = rabbitmqctl(node, &["-q", "-p", &vhost, "delete_queue", &q]);
            let r2 = rabbitmqctl(node, &["-q", "delete_user", host.as_str()]);
            for (what, r) in [("queue", &r1), ("user", &r2)] {
                if let Err(e) = r {
                    eprintln!("{what}: {e:#}");
                }
            }
            println!("deprovisioned {host} (queue {q}, broker user {host})");
            Ok(ExitCode::SUCCESS)
        }
    }
}
