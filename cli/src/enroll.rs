//! `gearmq issuer init`, `gearmq keygen`, `gearmq enroll host|operator`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gearmq_io::files::{
    load_public_key, load_signing_key, write_file, write_public_key, write_signing_key,
};
use gearmq_schemas::actions::{ALL_ACTIONS, READ_ONLY_ACTIONS};
use gearmq_schemas::time::{duration_ms, now_ms};
use gearmq_schemas::{ActionName, Credential, Name, PublicKey, Role, SigningKey};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum IssuerCommand {
    /// Make the issuer key pair: DIR/issuer.key (mode 0600) and DIR/issuer.pub.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Private key file to write (mode 0600); the public key goes beside it as .pub.
    #[arg(long)]
    pub out: PathBuf,
    /// Make an X25519 sealing key pair instead of an Ed25519 signing key: the key
    /// delegation tokens for a host are sealed to (`gearmq enroll host
    /// --sealing-pubkey FILE.pub`; the agent's `sealing_key_file`).
    #[arg(long)]
    pub sealing: bool,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Enrolling checks the name against the fleet of the orchestrator config (--config):
/// a host may not take its operator's name, nor an operator an enrolled host's
/// (`inventory_dir/<name>/host.cred`), as both would be one broker user. Without that
/// config the name is not checked here; `gearmq broker provision` checks again.
#[derive(Subcommand)]
pub enum EnrollCommand {
    /// Issue a host credential (default validity 365 days); refused for the name of the
    /// orchestrator config's operator.
    Host {
        /// Host name: [a-z0-9][a-z0-9-]{0,62}.
        name: String,
        #[command(flatten)]
        common: EnrollCommon,
        /// A label, matched by --where selectors (repeatable): --label role=web.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The host's sealing public key (from `gearmq keygen --sealing`): lets the
        /// host accept delegation tokens. Without it, tokens cannot be minted for it.
        #[arg(long, value_name = "FILE")]
        sealing_pubkey: Option<PathBuf>,
        /// How long it is valid.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        valid_for: Duration,
    },
    /// Issue an operator credential (default validity 30 days); refused for the name of
    /// a host in the orchestrator config's inventory.
    Operator {
        /// Operator name: [a-z0-9][a-z0-9-]{0,62}.
        name: String,
        #[command(flatten)]
        common: EnrollCommon,
        /// Actions it may request, comma-separated (default: all).
        #[arg(long, value_delimiter = ',', conflicts_with = "read_only")]
        actions: Vec<String>,
        /// Only the actions that observe: ping, status, list, logs, facts, cancel, stats.
        #[arg(long)]
        read_only: bool,
        /// May mint delegation tokens.
        #[arg(long)]
        may_delegate: bool,
        /// How long it is valid.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        valid_for: Duration,
    },
    /// Make a one-time bootstrap secret for a host that will enroll over the broker
    /// (`gearmq-agent enroll --secret-file`); it expires after --valid-for.
    Secret(crate::join::SecretArgs),
    /// Read the hosts' enrollment requests from the broker and list those waiting:
    /// name, key, whether a TLS certificate is asked, and the bootstrap secret's
    /// verdict (valid, none, or refused and why).
    Pending(crate::join::PendingArgs),
    /// Approve a host's request: issue its credential into the inventory, sign its TLS
    /// certificate request with --ca, and send both back to that host (like
    /// `salt-key -a`). Then `gearmq broker provision --apply` makes its broker user.
    Approve(crate::join::ApproveArgs),
    /// Reject a host's request: the host is told, and gets nothing.
    Reject(crate::join::RejectArgs),
}

/// Runs an enroll subcommand.
pub fn run(ctx: &crate::context::Context, cmd: EnrollCommand) -> Result<std::process::ExitCode> {
    match cmd {
        EnrollCommand::Secret(a) => crate::join::secret(ctx, a),
        EnrollCommand::Pending(a) => crate::join::pending(ctx, a),
        EnrollCommand::Approve(a) => crate::join::approve(ctx, a),
        EnrollCommand::Reject(a) => crate::join::reject(ctx, a),
        other => enroll(other).map(|()| std::process::ExitCode::SUCCESS),
    }
}

#[derive(Args)]
pub struct EnrollCommon {
    /// The holder's public key file (from `gearmq keygen`).
    #[arg(long)]
    pubkey: PathBuf,
    /// The issuer's private key file.
    #[arg(long)]
    issuer_key: PathBuf,
    /// Credential file to write.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    /// The global --config: the fleet the name is checked against.
    #[arg(from_global)]
    config: PathBuf,
}

pub fn issuer(cmd: IssuerCommand) -> Result<()> {
    let IssuerCommand::Init { out, force } = cmd;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = out.join("issuer.key");
    let public = make_key_pair(&key, &out.join("issuer.pub"), force)?;
    println!("issuer key  {}", key.display());
    println!(
        "issuer pub  {}  {}",
        out.join("issuer.pub").display(),
        public
    );
    Ok(())
}

/// Where the public half of the key at `key` goes: `x.key` → `x.pub`, else `x.pub` added.
pub fn pub_path(key: &Path) -> PathBuf {
    if key.extension().is_some_and(|e| e == "key") {
        key.with_extension("pub")
    } else {
        let mut s = key.as_os_str().to_owned();
        s.push(".pub");
        PathBuf::from(s)
    }
}

/// Generates a key pair into `key` (0600) and `public`; returns the public key.
pub fn make_key_pair(key: &Path, public: &Path, force: bool) -> Result<PublicKey> {
    let (k, der) = SigningKey::generate()?;
    write_signing_key(key, &der, force)?;
    write_public_key(public, &k.public_key(), force)?;
    Ok(k.public_key())
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
    let public = pub_path(&a.out);
    if a.sealing {
        let k = gearmq_io::files::make_sealing_key_pair(&a.out, &public, a.force)?;
        println!("sealing key {}", a.out.display());
        println!("sealing pub {}  {}", public.display(), hex::encode(k));
        return Ok(());
    }
    let k = make_key_pair(&a.out, &public, a.force)?;
    println!("private key {}", a.out.display());
    println!("public key  {}  {}", public.display(), k);
    Ok(())
}

/// A random credential serial.
pub fn new_serial() -> Result<u64> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(u64::from_be_bytes(b) >> 1)
}

/// Parses action names, checking each is known.
pub fn parse_actions(actions: &[String]) -> Result<Vec<ActionName>> {
    actions
        .iter()
        .map(|a| {
            if !ALL_ACTIONS.contains(&a.as_str()) {
                bail!(
                    "unknown action {a:?}; known actions: {}",
                    ALL_ACTIONS.join(", ")
                );
            }
            Ok(ActionName::new(a.as_str())?)
        })
        .collect()
}

/// Builds and signs a credential.
pub struct Enrollment {
    pub name: Name,
    pub role: Role,
    pub public_key: PublicKey,
    pub valid_for: Duration,
    pub labels: std::collections::BTreeMap<String, String>,
    pub actions: Vec<ActionName>,
    pub may_delegate: bool,
    /// X25519 public key delegation tokens for the host are sealed to.
    pub sealing_key: Option<[u8; 32]>,
}

impl Enrollment {
    pub fn issue(self, issuer: &SigningKey) -> Result<(Credential, Vec<u8>)> {
        let now = now_ms();
        let mut c = Credential::new(
            new_serial()?,
            self.name,
            self.role,
            self.public_key,
            now,
            now.saturating_add(duration_ms(self.valid_for)),
        );
        c.labels = self.labels;
        c.actions = self.actions;
        c.may_delegate = self.may_delegate;
        c.sealing_key = self.sealing_key.map(serde_bytes::ByteArray::new);
        let bytes = c.issue(issuer);
        Ok((c, bytes))
    }
}

pub fn enroll(cmd: EnrollCommand) -> Result<()> {
    let (e, common) = match cmd {
        EnrollCommand::Host {
            name,
            common,
            labels,
            valid_for,
            sealing_pubkey,
        } => (
            Enrollment {
                name: Name::new(name)?,
                role: Role::Host,
                public_key: load_public_key(&common.pubkey)?,
                valid_for,
                labels: gearmq_schemas::names::parse_labels(&labels)?,
                actions: Vec::new(),
                may_delegate: false,
                sealing_key: sealing_pubkey
                    .as_deref()
                    .map(gearmq_io::files::load_sealing_public_key)
                    .transpose()?,
            },
            common,
        ),
        EnrollCommand::Secret(_)
        | EnrollCommand::Pending(_)
        | EnrollCommand::Approve(_)
        | EnrollCommand::Reject(_) => bail!("enroll() issues host and operator credentials only"),
        EnrollCommand::Operator {
            name,
            common,
            actions,
            read_only,
            may_delegate,
            valid_for,
        } => {
            let actions = if read_only {
                READ_ONLY_ACTIONS.iter().map(|a| a.to_string()).collect()
            } else if actions.is_empty() {
                ALL_ACTIONS.iter().map(|a| a.to_string()).collect()
            } else {
                actions
            };
            (
                Enrollment {
                    name: Name::new(name)?,
                    role: Role::Operator,
                    public_key: load_public_key(&common.pubkey)?,
                    valid_for,
                    labels: Default::default(),
                    actions: parse_actions(&actions)?,
                    may_delegate,
                    sealing_key: None,
                },
                common,
            )
        }
    };
    check_name_is_free(&common.config, &e.name, e.role)?;
    let issuer = load_signing_key(&common.issuer_key)?;
    let (cred, bytes) = e.issue(&issuer)?;
    write_file(&common.out, &bytes, 0o644, common.force)?;
    println!(
        "{} credential for {} (serial {}) valid until {} -> {}",
        cred.role,
        cred.name,
        cred.serial,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(cred.not_after)
        ),
        common.out.display()
    );
    Ok(())
}

/// Refuses `name` for `role` when the fleet of the orchestrator config at `config`
/// already has it in the other role: its operator for a host, an enrolled host for an
/// operator.
pub(crate) fn check_name_is_free(config: &Path, name: &Name, role: Role) -> Result<()> {
    if !config.is_file() {
        eprintln!(
            "note: no orchestrator config at {}, so {name} was not checked against the \
             fleet's operator and hosts (`gearmq broker provision` checks again)",
            config.display()
        );
        return Ok(());
    }
    let cfg = gearmq_orchestrator::OrchestratorConfig::load(config)
        .with_context(|| format!("cannot check {name} against the fleet"))?;
    let operator =
        Name::new(cfg.name.as_str()).with_context(|| format!("in {}", config.display()))?;
    let host_cred = cfg.inventory_dir.join(name.as_str()).join("host.cred");
    let (hosts, operators, fix) = match role {
        Role::Host => (
            vec![name.clone()],
            vec![operator],
            format!(
                "enroll the host under another name, or rename the operator (`name` in {})",
                config.display()
            ),
        ),
        Role::Operator => (
            if host_cred.is_file() {
                vec![name.clone()]
            } else {
                Vec::new()
            },
            vec![name.clone()],
            format!(
                "enroll the operator under another name ({} is the host's credential)",
                host_cred.display()
            ),
        ),
    };
    gearmq_orchestrator::provision::check_names(&hosts, &operators)
        .map_err(|e| anyhow::anyhow!("{e}: {fix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_path_replaces_key_extension() {
        assert_eq!(
            pub_path(Path::new("a/host.key")),
            PathBuf::from("a/host.pub")
        );
        assert_eq!(pub_path(Path::new("a/host")), PathBuf::from("a/host.pub"));
    }

    #[test]
    fn labels_and_actions_are_checked() {
        use gearmq_schemas::names::parse_labels;
        assert!(parse_labels(&["role=web"]).is_ok());
        assert!(parse_labels(&["role"]).is_err());
        assert!(parse_labels(&["Role=web"]).is_err());
        assert!(parse_actions(&["ping".into()]).is_ok());
        assert!(parse_actions(&["reboot".into()]).is_err());
    }
}
