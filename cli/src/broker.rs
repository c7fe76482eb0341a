//! `gearmq broker provision|check|deprovision`: the broker's users, permissions and
//! topology, derived from the inventory.

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use gearmq_io::broker_admin::{BrokerAdmin, Deleted};
use gearmq_io::files::{load_broker_password, load_trusted_issuers};
use gearmq_io::management::{Management, redact_management_url};
use gearmq_io::rabbitmqctl::Rabbitmqctl;
use gearmq_orchestrator::provision::descriptors::{self, DescriptorNeed, Verdict};
use gearmq_orchestrator::provision::{self, DriftKind, Plan, QueueType};
use gearmq_orchestrator::{Inventory, OrchestratorConfig};
use gearmq_schemas::Name;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The longest one management API request may take (importing the definitions of a
/// large fleet is the slow one).
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(300);

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
    #[arg(long, conflicts_with = "management")]
    node: Option<String>,
    /// The vhost (default: the one in the orchestrator's first broker URL).
    #[arg(long)]
    vhost: Option<String>,
    /// Work through the RabbitMQ management HTTP API at URL instead of rabbitmqctl, so
    /// this runs away from the node: http[s]://USER@HOST:15672, USER an administrator.
    /// The password: --management-password-file, else the URL's, else
    /// GEARMQ_MANAGEMENT_PASSWORD; never shown.
    #[arg(long, value_name = "URL")]
    management: Option<String>,
    /// The management user's password, from this file (mode 0600).
    #[arg(long, value_name = "FILE", requires = "management")]
    management_password_file: Option<PathBuf>,
    /// The CA an https:// management URL must chain to (default: broker.ca_file of the
    /// config); system roots are never trusted.
    #[arg(long, value_name = "FILE", requires = "management")]
    management_ca: Option<PathBuf>,
}

impl BrokerTarget {
    /// The broker's administration: the management API if `--management` is given,
    /// else rabbitmqctl (against `--node`).
    fn admin(&self, config: &OrchestratorConfig) -> Result<Box<dyn BrokerAdmin>> {
        let Some(url) = &self.management else {
            return Ok(Box::new(Rabbitmqctl::new(self.node.clone())));
        };
        let from_file = match &self.management_password_file {
            Some(f) => {
                if url_has_password(url) {
                    bail!(
                        "the management URL {} holds a password and                          --management-password-file gives one too: give only the file",
                        redact_management_url(url)
                    );
                }
                Some(load_broker_password(f).context("cannot read the management password")?)
            }
            None => None,
        };
        let password = from_file.or_else(|| std::env::var("GEARMQ_MANAGEMENT_PASSWORD").ok());
        let ca = self
            .management_ca
            .as_deref()
            .or(config.broker.ca_file.as_deref());
        Ok(Box::new(Management::new(
            url,
            password.filter(|p| !p.is_empty()),
            ca,
            MANAGEMENT_TIMEOUT,
        )?))
    }
}

/// Whether `url`'s userinfo holds a password (`user:password@`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
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
    /// Let hosts enroll over the broker (`gearmq-agent enroll`): make the bootstrap
    /// user `gearmq.bootstrap` with the password in FILE. It may publish enrollment
    /// requests and read the answer to its own, nothing else; hosts use it in the
    /// broker URL they enroll with.
    #[arg(long, value_name = "FILE")]
    bootstrap_password_file: Option<PathBuf>,
}

impl PlanArgs {
    /// The plan arguments `gearmq init --provision` uses.
    pub fn for_init(delegators: Vec<String>, node: Option<String>) -> PlanArgs {
        PlanArgs {
            target: BrokerTarget {
                node,
                vhost: None,
                management: None,
                management_password_file: None,
                management_ca: None,
            },
            queue_type: QueueKind::Classic,
            delegators,
            operators: Vec::new(),
            bootstrap_password_file: None,
        }
    }
}

#[derive(Subcommand)]
pub enum BrokerCommand {
    /// Print or import the definitions: exchanges, host queues (dead-lettering, bounds
    /// as policies), bindings, one user per host and operator, least-privilege
    /// permissions and topic permissions. Idempotent.
    ///
    /// Refuses a host named like an operator: both would be one broker user.
    Provision {
        #[command(flatten)]
        plan: PlanArgs,
        /// Write the definitions JSON here (default: standard output).
        #[arg(long)]
        definitions_out: Option<PathBuf>,
        /// Import them into the broker (rabbitmqctl import_definitions, or POST
        /// /api/definitions with --management).
        #[arg(long)]
        apply: bool,
    },
    /// Compare the broker with what provisioning would make, both ways; list every
    /// difference.
    ///
    /// Missing or changed: users, permissions, topic permissions, queues and bindings
    /// of the plan. Extra: any tag on a fleet user; any user outside the fleet holding
    /// permissions or topic permissions on the vhost (see --allow-user); any topic
    /// permission or binding on the vhost the plan does not name, except the default
    /// exchange's bindings and the reply-queue binding a running call makes. Users with
    /// rights on other vhosts only are not looked at.
    ///
    /// Also compares every running node's descriptor limit (`ulimit -n`) with what the
    /// fleet needs: 2 per durable queue + 1 per connection + 256 (docs/PRODUCTION.md);
    /// one `descriptors:` line per node.
    ///
    /// Exit codes: 0 the broker matches and every limit is enough; 1 it differs (one
    /// `drift:` line each, then a count) or a limit is too low (the line names the fix);
    /// 2 the check could not run (configuration, rabbitmqctl or the management API, a
    /// node that does not report its limit, or a host named like an operator).
    Check {
        #[command(flatten)]
        plan: PlanArgs,
        /// A broker user outside the fleet that may hold permissions on the vhost, such
        /// as the broker's own administrator (guest on a development broker); its
        /// permissions are not checked (repeatable). A fleet user stays checked.
        #[arg(long = "allow-user", value_name = "USER")]
        allow_users: Vec<String>,
        /// Judge the descriptor limit for a fleet of N hosts instead of the enrolled
        /// ones (before the fleet grows to N).
        #[arg(long, value_name = "N")]
        fleet_size: Option<u64>,
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
    if let Err(e) = provision::check_names(&inventory.names(), &operators) {
        let provision::PlanError::NameClash { name } = &e;
        bail!(
            "{e}: enroll the host under another name (and remove {}), or give the \
             operator another name (`name` in the orchestrator config, or --operator)",
            config.inventory_dir.join(name.as_str()).display()
        );
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
    if let Some(f) = &a.bootstrap_password_file {
        let p = load_broker_password(f).context("cannot read the bootstrap password")?;
        passwords.insert(gearmq_io::topology::ENROLL_USER.to_string(), p);
    }
    Ok(Plan {
        bootstrap: a.bootstrap_password_file.is_some(),
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

/// Imports definitions into the node through rabbitmqctl (`gearmq init --provision`).
pub fn apply(node: Option<&str>, definitions: &Value) -> Result<()> {
    Ok(Rabbitmqctl::new(node.map(String::from)).import_definitions(definitions)?)
}

pub fn run(ctx: &crate::context::Context, cmd: BrokerCommand) -> Result<ExitCode> {
    let config_path = ctx.config.as_path();
    let config = OrchestratorConfig::load(config_path)?;
    match cmd {
        BrokerCommand::Provision {
            plan,
            definitions_out,
            apply: do_apply,
        } => {
            let p = plan_from(&config, &plan)?;
            // Before anything is written: a wrong URL or password stops here.
            let admin = if do_apply {
                Some(plan.target.admin(&config)?)
            } else {
                None
            };
            let defs = provision::definitions(&p);
            match &definitions_out {
                Some(f) => gearmq_io::files::write_file(
                    f,
                    serde_json::to_string_pretty(&defs)?.as_bytes(),
                    0o600,
                    true,
                )?,
                None if !do_apply => println!("{}", serde_json::to_string_pretty(&defs)?),
                None => {}
            }
            if let Some(admin) = admin {
                admin
                    .import_definitions(&defs)
                    .with_context(|| format!("cannot provision vhost {}", p.vhost))?;
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
        BrokerCommand::Check {
            plan,
            allow_users,
            fleet_size,
        } => {
            let p = plan_from(&config, &plan)?;
            let admin = plan.target.admin(&config)?;
            let state = provision::read_state(admin.as_ref(), &p.vhost)
                .with_context(|| format!("cannot read vhost {}", p.vhost))?;
            let limits = admin
                .descriptor_limits()
                .context("cannot read the nodes' descriptor limits")?;
            let need = DescriptorNeed::for_plan(&p, fleet_size);
            let verdicts = descriptors::judge(&need, &limits);
            let drift = provision::compare(&p, &state, &allow_users);
            if drift.is_empty() {
                let allowed: Vec<&str> = allow_users
                    .iter()
                    .filter(|u| state.permissions.contains_key(*u))
                    .map(String::as_str)
                    .collect();
                if allowed.is_empty() {
                    println!("broker matches the plan for vhost {}", p.vhost);
                } else {
                    println!(
                        "broker matches the plan for vhost {} (also holding permissions \
                         there, as allowed: {})",
                        p.vhost,
                        allowed.join(", ")
                    );
                }
            } else {
                for d in &drift {
                    println!("drift: {d}");
                }
                let count = |k| drift.iter().filter(|d| d.kind == k).count();
                println!(
                    "{} differences ({} missing, {} extra, {} changed)",
                    drift.len(),
                    count(DriftKind::Missing),
                    count(DriftKind::Extra),
                    count(DriftKind::Changed)
                );
            }
            for v in &verdicts {
                println!("{}", v.line);
            }
            let worst = verdicts.iter().map(|v| v.verdict).max();
            Ok(if !drift.is_empty() || worst == Some(Verdict::TooLow) {
                ExitCode::from(1)
            } else if worst != Some(Verdict::Enough) {
                // A node that did not say, or none at all: not checked.
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        BrokerCommand::Deprovision { host, target } => {
            let host = Name::new(host.as_str())?;
            let vhost = vhost_of(&config, &target)?;
            let admin = target.admin(&config)?;
            let q = gearmq_io::topology::host_queue(&host);
            let gone = |d: Deleted| match d {
                Deleted::Deleted => "",
                Deleted::Absent => " (there was none)",
            };
            // The queue first: a user cannot consume what no longer exists.
            let queue = admin
                .delete_queue(&vhost, &q)
                .with_context(|| format!("cannot delete queue {q} of vhost {vhost}"))?;
            let user = admin
                .delete_user(host.as_str())
                .with_context(|| format!("cannot delete broker user {host}"))?;
            println!(
                "deprovisioned {host} (queue {q}{}, broker user {host}{})",
                gone(queue),
                gone(user)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
