//! `gearmq init`: a whole local fleet in one go, for trying gearmq and for tests.
//!
//! Layout (relied on by scripts and documented in the README):
//! `DIR/issuer.{key,pub}`, `DIR/operator.{key,pub,cred}`, `DIR/orchestrator.toml`, and per
//! host `DIR/hosts/<name>/{host.key,host.pub,host.cred,sealing.key,sealing.pub,agent.toml}`,
//! plus `client.toml` for hosts named with `--delegators` (the config a host uses to
//! call another host with a delegation token, as itself).

use crate::enroll::{Enrollment, make_key_pair};
use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_io::files::{load_signing_key, write_file};
use gearmq_schemas::actions::ALL_ACTIONS;
use gearmq_schemas::{Name, Role};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default development broker.
pub const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Args)]
pub struct InitArgs {
    /// Directory for the fleet (created; must be empty unless --force).
    #[arg(long)]
    dir: PathBuf,
    /// Host names, comma-separated: web1,web2,db1.
    #[arg(long, value_delimiter = ',', required_unless_present = "hosts_count")]
    hosts: Vec<String>,
    /// Enroll this many numbered hosts instead of --hosts: PREFIX-00001, PREFIX-00002…
    /// (for the emulator: `gearmq-bench emulate DIR/hosts` runs them all).
    #[arg(long, value_name = "N", conflicts_with = "hosts")]
    hosts_count: Option<u32>,
    /// Name prefix of the numbered hosts of --hosts-count.
    #[arg(long, default_value = "emu", requires = "hosts_count")]
    name_prefix: String,
    /// Broker URL written into every config.
    #[arg(long, default_value = DEFAULT_BROKER)]
    broker: String,
    /// Name of the operator identity (no host may have it: both would be one broker
    /// user).
    #[arg(long, default_value = "ops")]
    operator: String,
    /// Which systemd the agents manage units through: the system manager (production)
    /// or the user manager of the user running each agent.
    #[arg(long, value_enum, default_value = "system")]
    systemd_bus: Bus,
    /// Give every host and the operator a broker user of its own with least-privilege
    /// permissions (rabbitmqctl import_definitions on the local node), and turn the
    /// orchestrator's user_id check on. Needs rabbitmqctl rights (root).
    #[arg(long)]
    provision: bool,
    /// Hosts that may send delegated requests: each gets DIR/hosts/<name>/client.toml
    /// (its own identity and broker user), and with --provision the right to publish
    /// requests to single hosts.
    #[arg(long, value_delimiter = ',')]
    delegators: Vec<String>,
    /// The RabbitMQ node to provision (default: the local node).
    #[arg(long, requires = "provision")]
    node: Option<String>,
    /// Write into a non-empty directory, replacing files.
    #[arg(long)]
    force: bool,
}

/// A random broker password (URL-safe).
fn new_password() -> Result<String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// `url` with its user and password replaced.
fn url_as(url: &str, user: &str, password: &str) -> Result<String> {
    let u: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--broker does not parse: {e}"))?;
    let scheme = if url.starts_with("amqps") {
        "amqps"
    } else {
        "amqp"
    };
    let vhost: String = u
        .vhost
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    Ok(format!(
        "{scheme}://{user}:{password}@{}:{}/{vhost}",
        u.authority.host, u.authority.port
    ))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bus {
    System,
    User,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

pub fn run(a: InitArgs) -> Result<()> {
    let hosts = host_names(&a)?;
    let operator = Name::new(a.operator.as_str()).context("in --operator")?;
    let mut seen = std::collections::BTreeSet::new();
    for h in &hosts {
        if !seen.insert(h) {
            bail!("host {h} is named twice in --hosts");
        }
    }
    gearmq_orchestrator::provision::check_names(&hosts, std::slice::from_ref(&operator))
        .map_err(|e| anyhow::anyhow!("{e}: rename the host or pick another --operator"))?;
    if a.broker.parse::<lapin::uri::AMQPUri>().is_err() {
        bail!(
            "--broker {:?} is not an AMQP URL (amqp://user:pass@host:port/vhost)",
            a.broker
        );
    }
    if a.dir.exists()
        && std::fs::read_dir(&a.dir)
            .with_context(|| format!("cannot read {}", a.dir.display()))?
            .next()
            .is_some()
        && !a.force
    {
        bail!(
            "{} is not empty; use --force to write a new fleet over it",
            a.dir.display()
        );
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = a
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let force = a.force;

    let issuer_pub = dir.join("issuer.pub");
    make_key_pair(&dir.join("issuer.key"), &issuer_pub, force)?;
    let issuer = load_signing_key(&dir.join("issuer.key"))?;

    let op_key = dir.join("operator.key");
    let op_pub = make_key_pair(&op_key, &dir.join("operator.pub"), force)?;
    let (_, op_cred) = Enrollment {
        name: operator.clone(),
        role: Role::Operator,
        public_key: op_pub,
        valid_for: Duration::from_secs(30 * 86400),
        labels: Default::default(),
        actions: crate::enroll::parse_actions(
            &ALL_ACTIONS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?,
        may_delegate: true,
        sealing_key: None,
    }
    .issue(&issuer)?;
    write_file(&dir.join("operator.cred"), &op_cred, 0o644, force)?;

    // An empty list (sequence 0) that `gearmq revoke --list DIR/revocations.bin` extends.
    let revocations =
        gearmq_schemas::revocation::RevocationList::empty(gearmq_schemas::time::now_ms());
    write_file(
        &dir.join("revocations.bin"),
        &revocations.issue(&issuer),
        0o644,
        force,
    )?;

    let hosts_dir = dir.join("hosts");
    let provisioned = a.provision;
    for d in &a.delegators {
        if !hosts.iter().any(|h| h.as_str() == d) {
            bail!("delegator {d} is not one of --hosts");
        }
    }
    // Each host's files are fsync'd: spread over threads, thousands take seconds.
    let write_host = |h: &Name| -> Result<()> {
        let hd = hosts_dir.join(h.as_str());
        std::fs::create_dir_all(&hd).with_context(|| format!("cannot create {}", hd.display()))?;
        let public = make_key_pair(&hd.join("host.key"), &hd.join("host.pub"), force)?;
        let sealing = gearmq_io::files::make_sealing_key_pair(
            &hd.join("sealing.key"),
            &hd.join("sealing.pub"),
            force,
        )?;
        let (_, cred) = Enrollment {
            name: h.clone(),
            role: Role::Host,
            public_key: public,
            valid_for: Duration::from_secs(365 * 86400),
            labels: Default::default(),
            actions: Vec::new(),
            may_delegate: false,
            sealing_key: Some(sealing),
        }
        .issue(&issuer)?;
        write_file(&hd.join("host.cred"), &cred, 0o644, force)?;
        let url = if provisioned {
            let pw = new_password()?;
            write_file(&hd.join("broker.password"), pw.as_bytes(), 0o600, force)?;
            url_as(&a.broker, h.as_str(), &pw)?
        } else {
            a.broker.clone()
        };
        write_file(
            &hd.join("agent.toml"),
            agent_toml(h, &hd, &issuer_pub, &url, a.systemd_bus, provisioned).as_bytes(),
            0o600,
            force,
        )?;
        if a.delegators.iter().any(|d| d == h.as_str()) {
            write_file(
                &hd.join("client.toml"),
                client_toml(h, &dir, &hd, &url, provisioned).as_bytes(),
                0o600,
                force,
            )?;
        }
        Ok(())
    };
    for_each_host(&hosts, write_host)?;
    let op_url = if provisioned {
        url_as(&a.broker, operator.as_str(), &new_password()?)?
    } else {
        a.broker.clone()
    };
    write_file(
        &dir.join("orchestrator.toml"),
        orchestrator_toml(&operator, &dir, &op_url, provisioned, &a.delegators).as_bytes(),
        0o600,
        force,
    )?;
    if provisioned {
        // Provisioning goes through the node, not AMQP: a TLS URL's CA and client
        // certificate are set in the configs afterwards (docs/PRODUCTION.md).
        let config = gearmq_orchestrator::OrchestratorConfig::load_unconnected(
            &dir.join("orchestrator.toml"),
        )?;
        let plan_args = crate::broker::PlanArgs::for_init(a.delegators.clone(), a.node.clone());
        let plan = crate::broker::plan_from(&config, &plan_args)?;
        crate::broker::apply(
            a.node.as_deref(),
            &gearmq_orchestrator::provision::definitions(&plan),
        )
        .context("cannot provision the broker")?;
        println!(
            "broker provisioned: vhost {}, {} host users, operator user {operator}",
            plan.vhost,
            plan.hosts.len()
        );
    }

    println!("fleet written to {}", dir.display());
    println!("  issuer        {}", issuer_pub.display());
    println!(
        "  operator      {operator} ({})",
        dir.join("operator.cred").display()
    );
    print_hosts(&hosts, &hosts_dir);
    for d in &a.delegators {
        println!(
            "  delegator     {d} ({})",
            hosts_dir.join(d).join("client.toml").display()
        );
    }
    println!();
    println!(
        "start an agent:   gearmq-agent --config {}",
        hosts_dir.join("<name>/agent.toml").display()
    );
    println!(
        "ping them all:    gearmq --config {} ping --all",
        dir.join("orchestrator.toml").display()
    );
    Ok(())
}

/// The hosts to enroll: --hosts, or --hosts-count numbered names.
fn host_names(a: &InitArgs) -> Result<Vec<Name>> {
    match a.hosts_count {
        Some(n) => numbered_hosts(&a.name_prefix, n),
        None => a
            .hosts
            .iter()
            .map(|h| Name::new(h.as_str()).with_context(|| "in --hosts".to_string()))
            .collect(),
    }
}

/// Runs `write` for every host, on a few threads when there are many (each host's
/// files are synced to disk, so the time is in fsync, not CPU); the first error wins.
fn for_each_host(hosts: &[Name], write: impl Fn(&Name) -> Result<()> + Sync) -> Result<()> {
    const PER_THREAD: usize = 64;
    let threads = hosts.len().div_ceil(PER_THREAD).clamp(1, 16);
    if threads == 1 {
        return hosts.iter().try_for_each(&write);
    }
    let chunk = hosts.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = hosts
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().try_for_each(&write)))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a host-writing thread panicked")))
        })
    })
}

/// Most hosts --hosts-count enrolls.
const MAX_HOSTS_COUNT: u32 = 100_000;

/// `prefix-00001` … `prefix-<n>` (five digits at least, so names sort by number).
fn numbered_hosts(prefix: &str, n: u32) -> Result<Vec<Name>> {
    if n == 0 || n > MAX_HOSTS_COUNT {
        bail!("--hosts-count must be between 1 and {MAX_HOSTS_COUNT}, not {n}");
    }
    (1..=n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}");
            Name::new(name.as_str()).with_context(|| format!("--name-prefix {prefix:?}"))
        })
        .collect()
}

/// The enrolled hosts, one a line; a summary past 10.
fn print_hosts(hosts: &[Name], hosts_dir: &Path) {
    let show = if hosts.len() > 10 { 3 } else { hosts.len() };
    for h in &hosts[..show] {
        println!(
            "  host          {h} ({})",
            hosts_dir.join(h.as_str()).join("agent.toml").display()
        );
    }
    if show < hosts.len() {
        println!(
            "  …and {} more hosts in {}",
            hosts.len() - show,
            hosts_dir.display()
        );
    }
}

fn agent_toml(
    host: &Name,
    hd: &Path,
    issuer_pub: &Path,
    broker: &str,
    bus: Bus,
    provisioned: bool,
) -> String {
    // The fleet directory holds issuer.pub and the revocation list `gearmq revoke`
    // extends.
    let fleet = issuer_pub.parent().unwrap_or(Path::new("."));
    let (broker, password) = if provisioned {
        // The host's own user; its password stays in broker.password (mode 0600),
        // out of the URL, the config and any log.
        (
            url_without_password(broker),
            format!(
                "# This host's broker password (mode 0600), never in the URL.\n\
                 password_file = {}\n",
                toml_path(&hd.join("broker.password"))
            ),
        )
    } else {
        (broker.to_string(), String::new())
    };
    let provisioning = if provisioned {
        "# A provisioned broker: this host's own user; passive declares only.\n\
         provisioned = true\n"
    } else {
        "# A development broker: the agent declares its own queue and bindings.\n\
         provisioned = false\n"
    };
    let systemd = match bus {
        Bus::System => "",
        Bus::User => {
            "\n[systemd]\n\
             # Units go to the user manager of the user running the agent\n\
             # ($XDG_RUNTIME_DIR/bus, units in ~/.config/systemd/user).\n\
             bus = \"user\"\n"
        }
    };
    format!(
        "# gearmq-agent configuration for host {host}, written by `gearmq init`.\n\
         name = {name}\n\
         key_file = {key}\n\
         credential_file = {cred}\n\
         # Delegation tokens for this host are sealed to this key (public half in the\n\
         # credential); without it every token is refused.\n\
         sealing_key_file = {sealing}\n\
         trusted_issuers = [{issuer}]\n\
         # Also holds the audit log (audit.log) and the last pushed revocation list.\n\
         state_dir = {state}\n\
         # Extended by `gearmq revoke --list ...`; reloaded on SIGHUP, newer lists only.\n\
         revocation_file = {revocations}\n\
         \n\
         [broker]\n\
         urls = [{broker}]\n\
         {password}\
         {provisioning}\
         {systemd}",
        name = toml_str(host.as_str()),
        key = toml_path(&hd.join("host.key")),
        cred = toml_path(&hd.join("host.cred")),
        sealing = toml_path(&hd.join("sealing.key")),
        issuer = toml_path(issuer_pub),
        state = toml_path(&hd.join("state")),
        revocations = toml_path(&fleet.join("revocations.bin")),
        broker = toml_str(&broker),
    )
}

/// `scheme://user:password@host…` → `scheme://user@host…` (the agent reads the
/// password from its password_file); any other URL as it is.
fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The config a delegating host uses with `gearmq --config client.toml … --token FILE`:
/// its own key, credential and broker user, the fleet's inventory to check replies.
fn client_toml(host: &Name, dir: &Path, hd: &Path, broker: &str, provisioned: bool) -> String {
    let (broker, password, trust) = if provisioned {
        (
            url_without_password(broker),
            format!(
                "# This host's broker password (mode 0600), never in the URL.\n\
                 password_file = {}\n",
                toml_path(&hd.join("broker.password"))
            ),
            "provisioned = true\nrequire_user_id = true\n",
        )
    } else {
        (
            broker.to_string(),
            String::new(),
            "provisioned = false\nrequire_user_id = false\n",
        )
    };
    format!(
        "# Client configuration of host {name} for delegated calls, written by `gearmq init`.\n\
         # gearmq --config THIS_FILE status OTHER_HOST [UNIT] --token TOKEN_FILE\n\
         # Requests are signed by this host's own key; the token says what it may ask.\n\
         name = {name}\n\
         key_file = {key}\n\
         credential_file = {cred}\n\
         trusted_issuers = [{issuer}]\n\
         inventory_dir = {hosts}\n\
         revocation_file = {revocations}\n\
         \n\
         [broker]\n\
         urls = [{broker}]\n\
         {password}\
         {trust}\
         \n\
         [defaults]\n\
         timeout = \"5s\"\n\
         \n\
         [audit]\n\
         file = {audit}\n",
        name = toml_str(host.as_str()),
        key = toml_path(&hd.join("host.key")),
        cred = toml_path(&hd.join("host.cred")),
        issuer = toml_path(&dir.join("issuer.pub")),
        hosts = toml_path(&dir.join("hosts")),
        revocations = toml_path(&dir.join("revocations.bin")),
        broker = toml_str(&broker),
        audit = toml_path(&hd.join("client-audit.log")),
    )
}

fn orchestrator_toml(
    operator: &Name,
    dir: &Path,
    broker: &str,
    provisioned: bool,
    delegators: &[String],
) -> String {
    let delegators = toml::Value::Array(
        delegators
            .iter()
            .map(|d| toml::Value::String(d.clone()))
            .collect(),
    );
    let trust = if provisioned {
        "provisioned = true\n\
         # Every host logs in as itself: a reply's user_id must name the host.\n\
         require_user_id = true\n"
    } else {
        "provisioned = false\n\
         # Every agent of this development fleet logs in as the same broker user, so the\n\
         # reply user_id cannot name the host. `gearmq init --provision` turns this on.\n\
         require_user_id = false\n"
    };
    format!(
        "# gearmq orchestrator configuration, written by `gearmq init`.\n\
         name = {name}\n\
         key_file = {key}\n\
         credential_file = {cred}\n\
         trusted_issuers = [{issuer}]\n\
         # Every */host.cred below this directory is an enrolled host.\n\
         inventory_dir = {hosts}\n\
         # Extended by `gearmq revoke --list ...`; revoked hosts' replies are forged.\n\
         revocation_file = {revocations}\n\
         # Hosts that may send delegated requests (granted by `gearmq broker provision`).\n\
         delegators = {delegators}\n\
         \n\
         [broker]\n\
         urls = [{broker}]\n\
         {trust}\
         \n\
         [defaults]\n\
         timeout = \"5s\"\n\
         \n\
         [audit]\n\
         # Every request signed and every reply received, in a signed hash chain:\n\
         # gearmq audit verify {audit} --issuer {issuer}\n\
         file = {audit}\n",
        name = toml_str(operator.as_str()),
        key = toml_path(&dir.join("operator.key")),
        cred = toml_path(&dir.join("operator.cred")),
        issuer = toml_path(&dir.join("issuer.pub")),
        hosts = toml_path(&dir.join("hosts")),
        revocations = toml_path(&dir.join("revocations.bin")),
        audit = toml_path(&dir.join("audit.log")),
        broker = toml_str(broker),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_hosts_are_zero_padded_and_bounded() {
        let h = numbered_hosts("emu", 3).unwrap();
        let names: Vec<&str> = h.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["emu-00001", "emu-00002", "emu-00003"]);
        let err = numbered_hosts("e", 123_456).unwrap_err().to_string();
        assert!(err.contains("between"), "{err}");
        assert!(numbered_hosts("emu", 0).is_err());
        assert!(numbered_hosts("bad name", 2).is_err());
    }

    #[test]
    fn provisioned_agent_toml_reads_its_password_from_a_file() {
        let host = Name::new("web1").unwrap();
        let hd = Path::new("/fleet/hosts/web1");
        let url = "amqp://web1:s3cr-et_@127.0.0.1:5672/gearmq";
        let text = agent_toml(
            &host,
            hd,
            Path::new("/fleet/issuer.pub"),
            url,
            Bus::User,
            true,
        );
        assert!(!text.contains("s3cr-et_"), "{text}");
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            v["broker"]["urls"][0].as_str(),
            Some("amqp://web1@127.0.0.1:5672/gearmq")
        );
        assert_eq!(
            v["broker"]["password_file"].as_str(),
            Some("/fleet/hosts/web1/broker.password")
        );
        assert_eq!(
            v["revocation_file"].as_str(),
            Some("/fleet/revocations.bin")
        );
        let dev = agent_toml(
            &host,
            hd,
            Path::new("/fleet/issuer.pub"),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Bus::System,
            false,
        );
        let v: toml::Value = toml::from_str(&dev).unwrap();
        assert!(v["broker"].get("password_file").is_none());
        assert_eq!(
            v["revocation_file"].as_str(),
            Some("/fleet/revocations.bin")
        );
    }
}
