//! `gearmq revoke` and `gearmq renew`: the credential lifecycle.

use crate::enroll::new_serial;
use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_io::files::{load_signing_key, write_file};
use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::revocation::{RevocationList, RevokedName, verify_revocation};
use gearmq_schemas::time::{duration_ms, now_ms};
use gearmq_schemas::{Name, Role};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct RevokeArgs {
    /// Revoke the credential with this serial (repeatable).
    #[arg(long, required_unless_present = "name")]
    serial: Vec<u64>,
    /// Revoke every credential of this name issued until now (repeatable); the holder
    /// is trusted again once re-enrolled.
    #[arg(long)]
    name: Vec<String>,
    /// The issuer's private key.
    #[arg(long)]
    issuer_key: PathBuf,
    /// The revocation list to extend (created if missing); agents and orchestrators
    /// load it (`revocation_file`).
    #[arg(long)]
    list: PathBuf,
}

pub fn revoke(a: RevokeArgs) -> Result<()> {
    let issuer = load_signing_key(&a.issuer_key)?;
    let now = now_ms();
    let current = if a.list.exists() {
        let bytes =
            std::fs::read(&a.list).with_context(|| format!("cannot read {}", a.list.display()))?;
        verify_revocation(&bytes, &[issuer.public_key()])
            .with_context(|| format!("{} is not a list of this issuer", a.list.display()))?
    } else {
        RevocationList::empty(now)
    };
    let names = a
        .name
        .iter()
        .map(|n| {
            Ok(RevokedName {
                name: Name::new(n.as_str())?,
                before: now,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = current.with(&a.serial, &names, now);
    write_file(&a.list, &next.issue(&issuer), 0o644, true)?;
    println!(
        "revocation list {} ({} serials, {} names) -> {}",
        next.sequence,
        next.serials.len(),
        next.names.len(),
        a.list.display()
    );
    println!("agents and orchestrators reading it take it at their next start or SIGHUP");
    Ok(())
}

#[derive(Args)]
pub struct RenewArgs {
    /// The credential to renew.
    #[arg(long)]
    cred: PathBuf,
    /// The issuer's private key.
    #[arg(long)]
    issuer_key: PathBuf,
    /// New validity from now (default: 365d for hosts, 30d for operators).
    #[arg(long, value_parser = humantime::parse_duration)]
    valid_for: Option<Duration>,
    /// Where to write the renewed credential (default: replace --cred).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn renew(a: RenewArgs) -> Result<()> {
    let issuer = load_signing_key(&a.issuer_key)?;
    let bytes =
        std::fs::read(&a.cred).with_context(|| format!("cannot read {}", a.cred.display()))?;
    // Renewing needs no trust decision beyond "this issuer signed it".
    let old = verify_credential(&bytes, &[issuer.public_key()])
        .with_context(|| format!("{} was not issued by this issuer key", a.cred.display()))?;
    let valid_for = a.valid_for.unwrap_or(match old.role {
        Role::Host => Duration::from_secs(365 * 86400),
        Role::Operator => Duration::from_secs(30 * 86400),
    });
    if valid_for.is_zero() {
        bail!("--valid-for must be positive");
    }
    let now = now_ms();
    let mut new = old.clone();
    new.serial = new_serial()?;
    new.not_before = now;
    new.not_after = now.saturating_add(duration_ms(valid_for));
    let out = a.out.unwrap_or(a.cred);
    write_file(&out, &new.issue(&issuer), 0o644, true)?;
    println!(
        "renewed {} credential for {}: serial {} -> {}, valid until {} -> {}",
        new.role,
        new.name,
        old.serial,
        new.serial,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(new.not_after)
        ),
        out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    targets: crate::call::TargetArgs,
    /// The list to push (default: the orchestrator's revocation_file).
    #[arg(long)]
    list: Option<PathBuf>,
    #[command(flatten)]
    opts: crate::call::CallOpts,
}

struct PushView;

impl crate::call::View for PushView {
    fn detail(&self, r: &gearmq_orchestrator::HostResult) -> String {
        r.data
            .as_deref()
            .and_then(|d| {
                gearmq_schemas::codec::decode::<gearmq_schemas::actions::RevocationResult>(
                    "revocation result",
                    d,
                    4096,
                )
                .ok()
            })
            .map(|r| {
                if r.changed {
                    format!("took list {}", r.sequence)
                } else {
                    format!("kept list {} (not older)", r.sequence)
                }
            })
            .unwrap_or_default()
    }
}

/// `gearmq revocations push`: sends the list to running agents as a signed request, so
/// a revocation takes effect without waiting for a restart or SIGHUP.
pub fn push(ctx: &crate::context::Context, a: PushArgs) -> Result<std::process::ExitCode> {
    let config = ctx.load_config()?;
    let path = match a.list.or(config.revocation_file) {
        Some(p) => p,
        None => bail!("no --list given and no revocation_file in the config"),
    };
    let list = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let issuers = gearmq_io::files::load_trusted_issuers(&config.trusted_issuers)?;
    let held = verify_revocation(&list, &issuers)
        .with_context(|| format!("{} is not a list of a trusted issuer", path.display()))?;
    eprintln!(
        "pushing revocation list {} from {}",
        held.sequence,
        path.display()
    );
    let args = gearmq_schemas::codec::encode(&gearmq_schemas::actions::RevocationArgs {
        list: serde_bytes::ByteBuf::from(list),
    });
    crate::call::run(
        ctx,
        crate::call::Invocation {
            selection: a.targets.selection()?,
            action: "revocation",
            args,
            opts: a.opts,
            rollout: a.targets.rollout.clone(),
            ship: None,
        },
        &PushView,
    )
}

#[derive(clap::Subcommand)]
pub enum RevocationsCommand {
    /// Push the revocation list to running agents (a signed `revocation` request).
    Push(PushArgs),
}
