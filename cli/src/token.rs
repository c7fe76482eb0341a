//! `gearmq token mint|show`: delegation tokens.
//!
//! A token lets host A (the subject) call named actions on host B (the audience) for
//! a short time, a limited number of times, signing its requests as itself. It is
//! signed by this config's operator (whose credential must have `may_delegate`, and
//! which can grant no action it lacks) or by the issuer key, then sealed to B's
//! sealing key: A carries it but can neither read nor change it.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gearmq_io::files::{load_credential, load_signing_key, load_trusted_issuers, write_file};
use gearmq_orchestrator::OrchestratorConfig;
use gearmq_orchestrator::inventory::Inventory;
use gearmq_schemas::time::{Millis, duration_ms, now_ms};
use gearmq_schemas::token::{self, DEFAULT_MAX_TOKEN_TTL, MAX_TOKEN_USES, Minter, Token};
use gearmq_schemas::{Name, Role};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token: host SUBJECT may call ACTIONs on host AUDIENCE, briefly.
    ///
    /// Example: gearmq token mint --subject a --audience b --action status --unit web
    /// --ttl 5m --uses 1 --out a-to-b.token; then, on host a: gearmq --config
    /// DIR/hosts/a/client.toml status b web --token a-to-b.token
    Mint(MintArgs),
    /// Show what a carrier can see of a token: its audience and seal, never its claims.
    Show {
        /// The token file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct MintArgs {
    /// The host that will present the token (it signs the requests).
    #[arg(long)]
    subject: String,
    /// The host that will accept it.
    #[arg(long)]
    audience: String,
    /// Actions it allows, comma-separated: --action status,logs.
    #[arg(long = "action", value_delimiter = ',', required = true)]
    actions: Vec<String>,
    /// Limit it to these units (repeatable); the request must then name one of them.
    #[arg(long = "unit", value_name = "NAME")]
    units: Vec<String>,
    /// How long it is valid, from --not-before (at most 1h).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How many requests it allows.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// Valid from this time (RFC 3339, e.g. 2026-11-25T18:00:00Z); default now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    not_before: Option<std::time::SystemTime>,
    /// Sign with the issuer key instead of this config's operator.
    #[arg(long, value_name = "FILE")]
    issuer_key: Option<PathBuf>,
    /// Token file to write (mode 0600).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    /// Print the minted claims as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &crate::context::Context, cmd: TokenCommand) -> Result<ExitCode> {
    let config = ctx.config.as_path();
    match cmd {
        TokenCommand::Mint(a) => mint(config, a),
        TokenCommand::Show { file, json } => show(&file, json),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn mint(config_path: &Path, a: MintArgs) -> Result<()> {
    let config = OrchestratorConfig::load(config_path)?;
    let issuers = load_trusted_issuers(&config.trusted_issuers)?;
    let subject = Name::new(a.subject.as_str()).context("in --subject")?;
    let audience = Name::new(a.audience.as_str()).context("in --audience")?;
    if subject == audience {
        bail!("--subject and --audience are the same host; a host needs no token for itself");
    }
    let actions = crate::enroll::parse_actions(&a.actions)?;
    for u in &a.units {
        gearmq_schemas::units::UnitName::parse(u).with_context(|| format!("--unit {u:?}"))?;
    }
    if a.ttl.is_zero() || a.ttl > DEFAULT_MAX_TOKEN_TTL {
        bail!(
            "--ttl {} is out of range: a token lives at most {}",
            humantime::format_duration(a.ttl),
            humantime::format_duration(DEFAULT_MAX_TOKEN_TTL)
        );
    }
    if a.uses == 0 || a.uses > MAX_TOKEN_USES {
        bail!("--uses must be 1 to {MAX_TOKEN_USES}");
    }
    let now = now_ms();
    let not_before = match a.not_before {
        Some(t) => t
            .duration_since(UNIX_EPOCH)
            .map(duration_ms)
            .context("--not-before is before 1970")?,
        None => now,
    };
    let not_after = not_before.saturating_add(duration_ms(a.ttl));
    if not_after <= now {
        bail!(
            "the token would be expired already (valid until {})",
            rfc3339(not_after)
        );
    }

    let inventory = Inventory::load(&config.inventory_dir, &issuers).with_context(|| {
        format!(
            "cannot read the inventory {}",
            config.inventory_dir.display()
        )
    })?;
    if inventory.get(&subject).is_none() {
        bail!(
            "subject {subject} is not an enrolled host in {}",
            config.inventory_dir.display()
        );
    }
    let target = inventory.get(&audience).with_context(|| {
        format!(
            "audience {audience} is not an enrolled host in {}",
            config.inventory_dir.display()
        )
    })?;
    let Some(recipient) = target.credential.sealing_key else {
        bail!(
            "host {audience}'s credential has no sealing key, so it accepts no token; \
             re-enroll it with `gearmq enroll host --sealing-pubkey` (from `gearmq keygen --sealing`)"
        );
    };
    let recipient = recipient.into_array();

    // Sign as the issuer, or as this config's operator within its own rights.
    let (issuer_key, operator) = match &a.issuer_key {
        Some(path) => {
            let k = load_signing_key(path)?;
            if !issuers.contains(&k.public_key()) {
                bail!(
                    "{} is not one of the trusted issuers in {}",
                    path.display(),
                    config_path.display()
                );
            }
            (Some(k), None)
        }
        None => {
            let key = load_signing_key(&config.key_file)?;
            let (cred, bytes) = load_credential(&config.credential_file, &issuers)?;
            if cred.role != Role::Operator || !cred.may_delegate {
                bail!(
                    "{} {} may not delegate: its credential lacks may_delegate \
                     (gearmq enroll operator ... --may-delegate), or use --issuer-key",
                    cred.role,
                    cred.name
                );
            }
            if cred.public_key != key.public_key() {
                bail!(
                    "{} does not hold the key of credential {}",
                    config.key_file.display(),
                    config.credential_file.display()
                );
            }
            if let Some(x) = actions.iter().find(|x| !cred.allows(x)) {
                bail!(
                    "the token would grant action {x}, which operator {} may not do itself",
                    cred.name
                );
            }
            cred.check_window(now, 0).with_context(|| {
                format!("operator credential {}", config.credential_file.display())
            })?;
            if cred.not_after < not_after {
                bail!(
                    "the token would outlive the operator's own credential (valid until {})",
                    rfc3339(cred.not_after)
                );
            }
            (None, Some((key, bytes)))
        }
    };
    let signer_public = match (&issuer_key, &operator) {
        (Some(k), _) => k.public_key(),
        (None, Some((k, _))) => k.public_key(),
        (None, None) => unreachable!("one of the two minters is set above"),
    };
    let claims = Token::new(
        signer_public,
        subject.clone(),
        audience.clone(),
        actions,
        a.units.clone(),
        not_before,
        not_after,
        a.uses,
    );
    let minter = match (&issuer_key, &operator) {
        (Some(k), _) => Minter::Issuer(k),
        (None, Some((key, credential))) => Minter::Operator { key, credential },
        (None, None) => unreachable!("one of the two minters is set above"),
    };
    let sealed = token::seal(&claims, minter, &recipient)?;
    write_file(&a.out, &sealed, 0o600, a.force)?;
    let minted_by = match &operator {
        Some(_) => config.name.clone(),
        None => "issuer".to_string(),
    };
    if a.json {
        let doc = serde_json::json!({
            "id": claims.id.to_string(),
            "file": a.out.display().to_string(),
            "minted_by": minted_by,
            "subject": subject.as_str(),
            "audience": audience.as_str(),
            "actions": claims.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "units": claims.units,
            "not_before": rfc3339(not_before),
            "not_after": rfc3339(not_after),
            "uses": claims.uses,
            "bytes": sealed.len(),
        });
        println!("{doc:#}");
    } else {
        let units = if claims.units.is_empty() {
            "any unit".to_string()
        } else {
            format!("units {}", claims.units.join(","))
        };
        println!(
            "token {} -> {}\n  {subject} may call {} on {audience} ({units}), {} use{}, \
             valid {} to {}; minted by {minted_by}, sealed to {audience}",
            claims.id,
            a.out.display(),
            claims
                .actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(","),
            claims.uses,
            if claims.uses == 1 { "" } else { "s" },
            rfc3339(not_before),
            rfc3339(not_after),
        );
        println!(
            "  on {subject}: gearmq --config <{subject}'s client.toml> <action> {audience} ... --token {}",
            a.out.display()
        );
    }
    Ok(())
}

fn show(file: &Path, json: bool) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (sealed, header) = token::peek(&bytes)
        .with_context(|| format!("{} is not a delegation token", file.display()))?;
    let recipient = hex::encode(header.recipient.as_slice());
    if json {
        let doc = serde_json::json!({
            "audience": header.audience.as_str(),
            "recipient": recipient,
            "suite": header.suite,
            "bytes": bytes.len(),
            "ciphertext_bytes": sealed.ciphertext.len(),
        });
        println!("{doc:#}");
    } else {
        println!("delegation token for host {}", header.audience);
        println!("  sealed to   {recipient}");
        println!("  suite       {}", header.suite);
        println!(
            "  size        {} bytes; its claims are readable only by {}",
            bytes.len(),
            header.audience
        );
    }
    Ok(())
}
