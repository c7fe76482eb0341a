//! `gearmq enroll secret|pending|approve|reject`: the operator's half of enrollment over
//! the broker (`gearmq-agent enroll` is the host's).
//!
//! Requests wait in `gearmq.enroll.requests` until `pending` reads them into the state
//! directory (default: `enroll/` beside the inventory), checked: signed by the key they
//! name, a valid name, and — when they carry one — a bootstrap secret that exists, is
//! bound to that name, has not expired and has not been used by another request.
//! `approve` issues the credential (and signs the TLS certificate request with the CA),
//! writes it into the inventory and sends the issuer-signed answer to the host's reply
//! queue; `reject` sends a signed refusal. An answer is kept, so the same request sent
//! again (a host that restarted) is answered again by the next `pending`.

use anyhow::{Context, Result, bail};
use clap::Args;
use gearmq_io::files::{load_signing_key, write_file};
use gearmq_io::topology;
use gearmq_orchestrator::OrchestratorConfig;
use gearmq_schemas::enroll::{EnrollReply, EnrollRequest, open_request, secret_proof_holds};
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{Name, Role};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the enrollment state lives.
#[derive(Args, Clone)]
pub struct StateArgs {
    /// The enrollment state directory (default: `enroll` beside the orchestrator
    /// config's inventory_dir).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

#[derive(Args)]
pub struct SecretArgs {
    /// The host the secret is for: only a request for this name may use it.
    host: String,
    /// How long it may be used.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    valid_for: Duration,
    /// Write it to FILE (mode 0600) instead of standard output: carry it to the host.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Args)]
pub struct PendingArgs {
    /// One JSON object per request on standard output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Args)]
pub struct DecideArgs {
    /// The host whose request is decided.
    host: String,
    /// The issuer's private key: it signs the credential and the answer.
    #[arg(long, value_name = "FILE")]
    issuer_key: PathBuf,
    /// When the host has sent more than one request, the one whose key starts with
    /// this (the key `pending` shows and the host printed).
    #[arg(long, value_name = "HEX")]
    key: Option<String>,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    decide: DecideArgs,
    /// The CA directory (`gearmq pki init`): signs the host's TLS certificate request.
    #[arg(long, value_name = "DIR")]
    ca: Option<PathBuf>,
    /// Labels of the credential (repeatable), instead of those the host proposed.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// How long the credential is valid.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    valid_for: Duration,
}

#[derive(Args)]
pub struct RejectArgs {
    #[command(flatten)]
    decide: DecideArgs,
    /// Why (sent to the host, at most 256 bytes).
    #[arg(long, default_value = "rejected by the operator")]
    reason: String,
}

/// A bootstrap secret as kept by the operator (mode 0600).
#[derive(Serialize, Deserialize)]
struct SecretRecord {
    host: String,
    secret: String,
    not_after: u64,
    /// The request (digest, hex) that used it.
    used_by: Option<String>,
}

/// What `pending` learned of one request.
#[derive(Serialize, Deserialize, Clone)]
struct RequestMeta {
    host: String,
    key: String,
    request: String,
    received_at: u64,
    labels: std::collections::BTreeMap<String, String>,
    tls: bool,
    /// `valid`, `none`, or `refused: <why>`.
    secret: String,
}

struct State {
    dir: PathBuf,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && gearmq_schemas::names::is_lower_hex(s)
}

impl State {
    fn open(config: &OrchestratorConfig, a: &StateArgs) -> Result<State> {
        let dir = match &a.state {
            Some(d) => d.clone(),
            None => config
                .inventory_dir
                .parent()
                .unwrap_or(Path::new("."))
                .join("enroll"),
        };
        for sub in ["secrets", "pending", "answered"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        // The secrets are the operator's alone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("secrets"), std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.join("secrets").display()))?;
        Ok(State { dir })
    }
    fn secret_path(&self, id: &str) -> PathBuf {
        self.dir.join("secrets").join(format!("{id}.json"))
    }
    fn host_dir(&self, host: &Name) -> PathBuf {
        self.dir.join("pending").join(host.as_str())
    }
    fn answer_path(&self, digest: &str) -> PathBuf {
        self.dir.join("answered").join(format!("{digest}.reply"))
    }
    fn load_secret(&self, id: &str) -> Option<SecretRecord> {
        let bytes = std::fs::read(self.secret_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
    fn save_secret(&self, id: &str, r: &SecretRecord) -> Result<()> {
        Ok(write_file(
            &self.secret_path(id),
            serde_json::to_string_pretty(r)?.as_bytes(),
            0o600,
            true,
        )?)
    }
    /// Every pending request of `host`: (meta, bytes).
    fn pending_of(&self, host: &Name) -> Result<Vec<(RequestMeta, Vec<u8>)>> {
        let dir = self.host_dir(host);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let meta: RequestMeta = serde_json::from_slice(&std::fs::read(&p)?)
                    .with_context(|| format!("{} is not a request record", p.display()))?;
                let bytes = std::fs::read(p.with_extension("req"))?;
                out.push((meta, bytes));
            }
        }
        out.sort_by_key(|(m, _)| m.received_at);
        Ok(out)
    }
    fn all_pending(&self) -> Result<Vec<RequestMeta>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join("pending"))?.flatten() {
            if let Some(name) = e.file_name().to_str().and_then(|n| Name::new(n).ok()) {
                out.extend(self.pending_of(&name)?.into_iter().map(|(m, _)| m));
            }
        }
        out.sort_by(|a, b| (&a.host, a.received_at).cmp(&(&b.host, b.received_at)));
        Ok(out)
    }
    fn remove_pending(&self, host: &Name, digest: &str) {
        let base = self.host_dir(host).join(digest);
        let _ = std::fs::remove_file(base.with_extension("json"));
        let _ = std::fs::remove_file(base.with_extension("req"));
        let _ = std::fs::remove_dir(self.host_dir(host));
    }
}

/// `gearmq enroll secret HOST`.
pub fn secret(ctx: &crate::context::Context, a: SecretArgs) -> Result<ExitCode> {
    use ring::rand::SecureRandom;
    let config = ctx.load_config()?;
    let host = Name::new(a.host.as_str())?;
    let state = State::open(&config, &a.state)?;
    let rng = ring::rand::SystemRandom::new();
    let (mut id, mut secret) = ([0u8; 8], [0u8; 32]);
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let id = hex::encode(id);
    let not_after = now_ms().saturating_add(a.valid_for.as_millis() as u64);
    state.save_secret(
        &id,
        &SecretRecord {
            host: host.to_string(),
            secret: hex::encode(secret),
            not_after,
            used_by: None,
        },
    )?;
    let text = format!("{id}.{}\n", hex::encode(secret));
    match &a.out {
        Some(f) => {
            write_file(f, text.as_bytes(), 0o600, false)?;
            eprintln!(
                "bootstrap secret {id} for {host}, one use, valid until {}: {} \
                 (gearmq-agent enroll --secret-file)",
                rfc3339(not_after),
                f.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

async fn connect(config: &OrchestratorConfig) -> Result<lapin::Connection> {
    let url = config.broker.urls.first().context("broker.urls is empty")?;
    gearmq_io::broker::connect(
        url,
        &config.broker.files(),
        None,
        ConnectionProperties::default(),
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {e}",
            gearmq_io::broker::redact_url(url)
        )
    })
}

/// Declares the enrollment objects on a broker the fleet declares itself (not
/// provisioned); on a provisioned one they must exist.
async fn declare(ch: &Channel, provisioned: bool) -> Result<()> {
    let passive = provisioned;
    for x in [topology::ENROLL_EXCHANGE, topology::ENROLL_REPLIES_EXCHANGE] {
        ch.exchange_declare(
            x.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                passive,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("no exchange {x}: provision the vhost (`gearmq broker provision --apply`)")
        })?;
    }
    ch.queue_declare(
        topology::ENROLL_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        },
        topology::enroll_queue_arguments(),
    )
    .await
    .with_context(|| {
        format!(
            "no queue {}: provision the vhost (`gearmq broker provision --apply`)",
            topology::ENROLL_QUEUE
        )
    })?;
    if !provisioned {
        ch.queue_bind(
            topology::ENROLL_QUEUE.into(),
            topology::ENROLL_EXCHANGE.into(),
            topology::ENROLL_ROUTE.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// Sends an answer to the host's reply queue. Ok(false): the queue is gone or full.
async fn send_answer(ch: &Channel, req: &EnrollRequest, answer: &[u8]) -> Result<bool> {
    let queue = topology::enroll_reply_queue(&req.reply_id);
    let confirm = ch
        .basic_publish(
            topology::ENROLL_REPLIES_EXCHANGE.into(),
            queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            answer,
            BasicProperties::default()
                .with_content_type(topology::CONTENT_TYPE.into())
                .with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(matches!(confirm, lapin::Confirmation::Ack(None)))
}

/// Checks a request's bootstrap secret against the state; uses it (one-time) when it
/// holds. Returns `valid`, `none` or `refused: <why>`.
fn check_secret(state: &State, req: &EnrollRequest, digest: &str) -> Result<String> {
    let (Some(id), Some(proof)) = (&req.secret_id, &req.secret_proof) else {
        return Ok("none".into());
    };
    let Some(mut rec) = state.load_secret(id) else {
        return Ok("refused: unknown secret".into());
    };
    let secret = hex::decode(&rec.secret).unwrap_or_default();
    if !secret_proof_holds(&secret, &req.proof_input(), proof) {
        return Ok("refused: the secret's proof does not hold".into());
    }
    if rec.host != req.host.as_str() {
        return Ok(format!("refused: the secret is for {}", rec.host));
    }
    match &rec.used_by {
        Some(d) if d != digest => return Ok("refused: the secret was used already".into()),
        Some(_) => return Ok("valid".into()),
        None => {}
    }
    if now_ms() >= rec.not_after {
        return Ok("refused: the secret expired".into());
    }
    rec.used_by = Some(digest.to_string());
    state.save_secret(id, &rec)?;
    Ok("valid".into())
}

/// Reads every waiting request into the state: checked, answered again when it was
/// answered before, else kept pending. Returns (new, refused, re-answered).
async fn drain(config: &OrchestratorConfig, state: &State) -> Result<(usize, usize, usize)> {
    let conn = connect(config).await?;
    let ch = conn.create_channel().await?;
    declare(&ch, config.broker.provisioned).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let (mut new, mut refused, mut again) = (0, 0, 0);
    while let Some(msg) = ch
        .basic_get(topology::ENROLL_QUEUE.into(), BasicGetOptions::default())
        .await?
    {
        let bytes = msg.delivery.data.clone();
        let digest = hex::encode(gearmq_schemas::sha256(&bytes));
        match open_request(&bytes) {
            Err(e) => {
                refused += 1;
                tracing::warn!(refused = %e.label(), "an enrollment request was refused: {e}");
                eprintln!("refused an enrollment request: {e} ({})", e.label());
            }
            Ok(req) => {
                let answer = state.answer_path(&digest);
                if answer.is_file() {
                    let a = std::fs::read(&answer)?;
                    send_answer(&ch, &req, &a).await?;
                    again += 1;
                } else {
                    let secret = check_secret(state, &req, &digest)?;
                    if secret.starts_with("refused") {
                        refused += 1;
                        eprintln!("refused the request of {}: {secret}", req.host);
                    }
                    let meta = RequestMeta {
                        host: req.host.to_string(),
                        key: req.signing_key.to_string(),
                        request: digest.clone(),
                        received_at: now_ms(),
                        labels: req.labels.clone(),
                        tls: !req.csr.is_empty(),
                        secret,
                    };
                    let dir = state.host_dir(&req.host);
                    std::fs::create_dir_all(&dir)?;
                    let base = dir.join(&digest);
                    if !base.with_extension("json").exists() {
                        new += 1;
                        write_file(&base.with_extension("req"), &bytes, 0o644, true)?;
                        write_file(
                            &base.with_extension("json"),
                            serde_json::to_string_pretty(&meta)?.as_bytes(),
                            0o644,
                            true,
                        )?;
                    }
                }
            }
        }
        msg.delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok((new, refused, again))
}

/// `gearmq enroll pending`.
pub fn pending(ctx: &crate::context::Context, a: PendingArgs) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let state = State::open(&config, &a.state)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (new, refused, again) = rt.block_on(drain(&config, &state))?;
    let all = state.all_pending()?;
    if a.json {
        for m in &all {
            println!("{}", serde_json::to_string(m)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "read {} request(s) from {}: {new} new, {refused} refused, {again} answered again",
        new + refused + again,
        topology::ENROLL_QUEUE
    );
    if all.is_empty() {
        println!("no pending requests");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<66} {:<4} {:<24} SECRET",
        "HOST", "KEY", "TLS", "RECEIVED"
    );
    for m in &all {
        println!(
            "{:<20} {:<66} {:<4} {:<24} {}",
            m.host,
            m.key,
            if m.tls { "yes" } else { "no" },
            rfc3339(m.received_at),
            m.secret
        );
    }
    println!(
        "approve: gearmq enroll approve HOST --issuer-key FILE --ca DIR; reject: gearmq \
         enroll reject HOST --issuer-key FILE (check a request without a valid secret \
         against the key the host printed)"
    );
    Ok(ExitCode::SUCCESS)
}

/// The one pending request `d` decides.
fn chosen(state: &State, d: &DecideArgs) -> Result<(Name, RequestMeta, Vec<u8>)> {
    let host = Name::new(d.host.as_str())?;
    let mut all = state.pending_of(&host)?;
    if let Some(k) = &d.key {
        if !is_hex(k) {
            bail!("--key {k:?} is not hex");
        }
        all.retain(|(m, _)| m.key.starts_with(k.as_str()));
    }
    match all.len() {
        0 => bail!(
            "no pending request of {host}{} (run `gearmq enroll pending` to read new ones)",
            d.key
                .as_ref()
                .map(|k| format!(" with a key starting {k}"))
                .unwrap_or_default()
        ),
        1 => {
            let (m, b) = all.pop().expect("one");
            Ok((host, m, b))
        }
        n => bail!(
            "{host} sent {n} requests with different keys ({}): pick one with --key, \
             after checking which key the host printed",
            all.iter()
                .map(|(m, _)| m.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Signs the host's TLS certificate request with the CA in `ca`: (cert PEM, CA PEM).
fn sign_csr(ca: &Path, host: &Name, csr: &[u8]) -> Result<(String, String)> {
    let ca_key_path = ca.join("ca.key");
    let ca_pem = gearmq_io::files::read_private_file("CA key", &ca_key_path)?;
    let ca_key = std::str::from_utf8(&ca_pem)
        .ok()
        .and_then(|pem| rcgen::KeyPair::from_pem(pem).ok())
        .with_context(|| format!("{} is not a PEM private key", ca_key_path.display()))?;
    let ca_cert = std::fs::read_to_string(ca.join("ca.pem"))
        .with_context(|| format!("cannot read {}", ca.join("ca.pem").display()))?;
    let issuer = rcgen::Issuer::new(crate::pki::ca_params(), ca_key);
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr.to_vec());
    let mut req = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| anyhow::anyhow!("the host's certificate request is invalid: {e}"))?;
    // What the certificate says is decided here, not by the request: the broker user
    // is its common name.
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, host.as_str());
    p.distinguished_name = dn;
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    req.params = p;
    let cert = req
        .signed_by(&issuer)
        .context("cannot sign the certificate")?;
    Ok((cert.pem(), ca_cert))
}

/// `gearmq enroll approve HOST`.
pub fn approve(ctx: &crate::context::Context, a: ApproveArgs) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let state = State::open(&config, &a.decide.state)?;
    let (host, meta, bytes) = chosen(&state, &a.decide)?;
    if meta.secret.starts_with("refused") {
        bail!(
            "the request of {host} was refused ({}); it cannot be approved: reject it, and \
             give the host a new secret (`gearmq enroll secret {host}`)",
            meta.secret
        );
    }
    let req = open_request(&bytes).map_err(|e| anyhow::anyhow!("stored request: {e}"))?;
    crate::enroll::check_name_is_free(&ctx.config, &host, Role::Host)?;
    let cred_path = config.inventory_dir.join(host.as_str()).join("host.cred");
    if cred_path.exists() {
        bail!(
            "{host} is enrolled already ({}): revoke it and remove that file first \
             (`gearmq revoke --name {host}`), or enroll the new host under another name",
            cred_path.display()
        );
    }
    let (certificate, ca_certificate) = match (&a.ca, req.csr.is_empty()) {
        (_, true) => (String::new(), String::new()),
        (Some(ca), false) => sign_csr(ca, &host, &req.csr)?,
        (None, false) => bail!(
            "the request of {host} carries a TLS certificate request: give --ca DIR (the \
             CA of `gearmq pki init`) to sign it"
        ),
    };
    let labels = if a.labels.is_empty() {
        req.labels.clone()
    } else {
        gearmq_schemas::names::parse_labels(&a.labels)?
    };
    let issuer = load_signing_key(&a.decide.issuer_key)?;
    let (cred, cred_bytes) = crate::enroll::Enrollment {
        name: host.clone(),
        role: Role::Host,
        public_key: req.signing_key,
        valid_for: a.valid_for,
        labels,
        actions: Vec::new(),
        may_delegate: false,
        sealing_key: Some(*req.sealing_key),
    }
    .issue(&issuer)?;
    let reply = EnrollReply::approved(
        &bytes,
        host.clone(),
        cred_bytes.clone(),
        certificate,
        ca_certificate,
        now_ms(),
    )
    .seal(&issuer);
    std::fs::create_dir_all(cred_path.parent().expect("inventory entry"))?;
    write_file(&cred_path, &cred_bytes, 0o644, false)?;
    let delivered = answer(&config, &state, &host, &meta, &req, &reply)?;
    println!(
        "approved {host} (key {}, serial {}): {}{}",
        meta.key,
        cred.serial,
        cred_path.display(),
        if delivered {
            ""
        } else {
            "; the host is not waiting now, it gets the answer when it asks again"
        }
    );
    println!("next: gearmq broker provision --apply (makes {host}'s broker user)");
    Ok(ExitCode::SUCCESS)
}

/// `gearmq enroll reject HOST`.
pub fn reject(ctx: &crate::context::Context, a: RejectArgs) -> Result<ExitCode> {
    let config = ctx.load_config()?;
    let state = State::open(&config, &a.decide.state)?;
    let (host, meta, bytes) = chosen(&state, &a.decide)?;
    let req = open_request(&bytes).map_err(|e| anyhow::anyhow!("stored request: {e}"))?;
    let issuer = load_signing_key(&a.decide.issuer_key)?;
    let reply = EnrollReply::rejected(&bytes, host.clone(), &a.reason, now_ms()).seal(&issuer);
    let delivered = answer(&config, &state, &host, &meta, &req, &reply)?;
    println!(
        "rejected {host} (key {}){}",
        meta.key,
        if delivered {
            ""
        } else {
            "; the host is not waiting now, it is told when it asks again"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Keeps the answer, sends it, and takes the request off the pending list.
fn answer(
    config: &OrchestratorConfig,
    state: &State,
    host: &Name,
    meta: &RequestMeta,
    req: &EnrollRequest,
    reply: &[u8],
) -> Result<bool> {
    write_file(&state.answer_path(&meta.request), reply, 0o644, true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let delivered = rt.block_on(async {
        let conn = connect(config).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let ok = send_answer(&ch, req, reply).await?;
        let _ = conn.close(200, "done".into()).await;
        anyhow::Ok(ok)
    })?;
    state.remove_pending(host, &meta.request);
    Ok(delivered)
}
