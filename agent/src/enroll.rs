//! `gearmq-agent enroll`: a host joins the fleet without any private key leaving it.
//!
//! It makes its own keys in `--dir` (the Ed25519 signing key, the X25519 sealing key,
//! a TLS key and a certificate request for it), sends an [`EnrollRequest`] signed by the
//! new signing key to `gearmq.enroll` as the bootstrap user, and waits on its own reply
//! queue for the issuer-signed answer. An approval's credential, TLS certificate and CA
//! certificate are checked against the issuer key given and the request sent, then
//! written beside the keys. Run again after an interruption, it sends the same request
//! (same keys, same reply queue) and keeps waiting.

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use gearmq_io::broker::BrokerFiles;
use gearmq_io::files::{
    load_public_key, load_signing_key, make_sealing_key_pair, read_private_file, write_file,
    write_signing_key,
};
use gearmq_io::topology;
use gearmq_schemas::enroll::{EnrollOutcome, EnrollReply, EnrollRequest, open_reply, open_request};
use gearmq_schemas::{Name, SigningKey};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The files `enroll` keeps in `--dir`.
pub struct EnrollFiles {
    /// Ed25519 signing key (0600) and its public half.
    pub key: PathBuf,
    /// X25519 sealing key (0600).
    pub sealing_key: PathBuf,
    /// TLS private key (0600).
    pub tls_key: PathBuf,
    /// The request as sent (an `IssuerSigned` envelope).
    pub request: PathBuf,
    /// The credential, once approved.
    pub credential: PathBuf,
    /// The TLS client certificate, once approved.
    pub tls_cert: PathBuf,
    /// The CA certificate that signed it.
    pub ca_cert: PathBuf,
}

impl EnrollFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> EnrollFiles {
        EnrollFiles {
            key: dir.join("host.key"),
            sealing_key: dir.join("sealing.key"),
            tls_key: dir.join("tls.key"),
            request: dir.join("enroll.request"),
            credential: dir.join("host.cred"),
            tls_cert: dir.join("tls.pem"),
            ca_cert: dir.join("ca.pem"),
        }
    }
}

/// What `enroll` was asked.
pub struct EnrollOptions {
    /// The name to ask for.
    pub name: Name,
    /// Where keys and answers go.
    pub dir: PathBuf,
    /// The issuer's public key file.
    pub issuer_pub: PathBuf,
    /// The bootstrap user's broker URL.
    pub broker: String,
    /// Broker files: the bootstrap password, the broker's CA.
    pub files: BrokerFiles,
    /// `ID.SECRET` from `gearmq enroll secret`, if the operator gave one.
    pub secret: Option<(String, Vec<u8>)>,
    /// Labels to propose.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Ask for no TLS certificate.
    pub no_tls: bool,
    /// How long to wait for the answer.
    pub wait: Duration,
}

/// How an enrollment ended.
pub enum Ended {
    /// Approved: the credential is written.
    Approved {
        /// Its serial.
        serial: u64,
        /// Valid until (ms).
        not_after: u64,
    },
    /// Rejected, with the operator's reason.
    Rejected(String),
    /// No answer within `wait`: run again to keep waiting.
    Pending,
}

/// Reads a bootstrap secret file: `ID.SECRET`, ID 16 lowercase hex, SECRET 64 hex.
pub fn read_secret(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = read_private_file("bootstrap secret", path)?;
    let text = String::from_utf8(bytes).unwrap_or_default();
    let text = text.trim();
    let parsed = text.split_once('.').and_then(|(id, s)| {
        let id_ok = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let secret = hex::decode(s).ok().filter(|s| s.len() == 32);
        id_ok.then_some(()).and(secret).map(|s| (id.to_string(), s))
    });
    parsed.with_context(|| {
        format!(
            "{} is not a bootstrap secret (ID.SECRET, as `gearmq enroll secret` writes it)",
            path.display()
        )
    })
}

/// Makes (or, on a second run, reloads) the host's keys and the request, returning the
/// request and the exact bytes sent.
fn request(o: &EnrollOptions, f: &EnrollFiles) -> Result<(EnrollRequest, Vec<u8>)> {
    if f.request.is_file() {
        let bytes = std::fs::read(&f.request)
            .with_context(|| format!("cannot read {}", f.request.display()))?;
        let req =
            open_request(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", f.request.display()))?;
        if req.host != o.name {
            bail!(
                "{} asks for {}, not {}: enroll into another --dir",
                f.request.display(),
                req.host,
                o.name
            );
        }
        return Ok((req, bytes));
    }
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("cannot create {}", o.dir.display()))?;
    let (key, der) = SigningKey::generate()?;
    write_signing_key(&f.key, &der, false)?;
    gearmq_io::files::write_public_key(&f.key.with_extension("pub"), &key.public_key(), false)?;
    let sealing =
        make_sealing_key_pair(&f.sealing_key, &f.sealing_key.with_extension("pub"), false)?;
    let csr = if o.no_tls {
        Vec::new()
    } else {
        let tls = rcgen::KeyPair::generate().context("cannot make a TLS key")?;
        write_file(&f.tls_key, tls.serialize_pem().as_bytes(), 0o600, false)?;
        let mut p = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, o.name.as_str());
        p.distinguished_name = dn;
        p.serialize_request(&tls)
            .context("cannot make a certificate request")?
            .der()
            .to_vec()
    };
    let reply_id = {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        hex::encode(b)
    };
    let mut req = EnrollRequest::new(
        o.name.clone(),
        key.public_key(),
        sealing,
        csr,
        reply_id,
        crate::verifier::now_ms(),
    );
    req.labels = o.labels.clone();
    if let Some((id, secret)) = &o.secret {
        req.prove_secret(id, secret);
    }
    let bytes = req.seal(&key);
    write_file(&f.request, &bytes, 0o644, false)?;
    Ok((req, bytes))
}

/// Runs the enrollment: request, wait, check, write.
pub async fn enroll(o: EnrollOptions) -> Result<Ended> {
    let f = EnrollFiles::in_dir(&o.dir);
    if f.credential.exists() {
        bail!(
            "{} exists: this host is enrolled already (remove --dir's files to enroll anew)",
            f.credential.display()
        );
    }
    let issuer = load_public_key(&o.issuer_pub)?;
    let (req, sent) = request(&o, &f)?;
    // The key on disk must be the one asked for (a half-written earlier run).
    let key = load_signing_key(&f.key)?;
    if key.public_key() != req.signing_key {
        bail!(
            "{} does not hold the key {} asks a credential for",
            f.key.display(),
            f.request.display()
        );
    }
    let conn = gearmq_io::broker::connect(
        &o.broker,
        &o.files,
        None,
        ConnectionProperties::default(),
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {} as the bootstrap user: {e}",
            gearmq_io::broker::redact_url(&o.broker)
        )
    })?;
    let ch = conn.create_channel().await?;
    let queue = topology::enroll_reply_queue(&req.reply_id);
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        topology::enroll_reply_queue_arguments(),
    )
    .await
    .with_context(|| format!("cannot declare the reply queue {queue}"))?;
    ch.queue_bind(
        queue.as_str().into(),
        topology::ENROLL_REPLIES_EXCHANGE.into(),
        queue.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot bind {queue} to {}: is the vhost provisioned for enrollment \
             (`gearmq broker provision --bootstrap-password-file`)?",
            topology::ENROLL_REPLIES_EXCHANGE
        )
    })?;
    let pch = conn.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = pch
        .basic_publish(
            topology::ENROLL_EXCHANGE.into(),
            topology::ENROLL_ROUTE.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &sent,
            BasicProperties::default().with_content_type(topology::CONTENT_TYPE.into()),
        )
        .await
        .with_context(|| format!("cannot publish to {}", topology::ENROLL_EXCHANGE))?
        .await
        .context("the broker did not confirm the request")?;
    match confirm {
        lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested => {}
        lapin::Confirmation::Ack(Some(_)) => bail!(
            "the broker has nowhere to put the request: no {} queue (provision the vhost \
             with `gearmq broker provision --bootstrap-password-file`)",
            topology::ENROLL_QUEUE
        ),
        lapin::Confirmation::Nack(_) => {
            bail!("the broker refused the request (the enrollment queue is full?)")
        }
    }
    eprintln!(
        "asked to enroll as {} (key {}); waiting up to {} for the operator \
         (`gearmq enroll pending`, `gearmq enroll approve {}`)",
        req.host,
        req.signing_key,
        humantime::format_duration(o.wait),
        req.host
    );
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "enroll".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = Instant::now() + o.wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = match tokio::time::timeout(left, consumer.next()).await {
            Err(_) => return Ok(Ended::Pending),
            Ok(None) => bail!("the broker closed the reply queue's consumer"),
            Ok(Some(d)) => d.context("the reply queue's consumer failed")?,
        };
        delivery.ack(BasicAckOptions::default()).await?;
        match open_reply(
            &delivery.data,
            &issuer,
            &sent,
            &req,
            crate::verifier::now_ms(),
        ) {
            Err(e) => {
                tracing::warn!(refused = %e.label(), "an answer on the reply queue was refused: {e}");
                continue;
            }
            Ok(reply) => return finish(&f, &req, reply, &issuer),
        }
    }
}

/// Writes what an answer gave.
fn finish(
    f: &EnrollFiles,
    req: &EnrollRequest,
    reply: EnrollReply,
    issuer: &gearmq_schemas::PublicKey,
) -> Result<Ended> {
    if reply.outcome == EnrollOutcome::Rejected {
        return Ok(Ended::Rejected(reply.reason));
    }
    if !req.csr.is_empty() {
        if reply.certificate.is_empty() {
            bail!("the approval carries no TLS certificate for the request sent");
        }
        write_file(&f.tls_cert, reply.certificate.as_bytes(), 0o644, true)?;
        write_file(&f.ca_cert, reply.ca_certificate.as_bytes(), 0o644, true)?;
    }
    // open_reply checked it already; decoded again for what to print.
    let c = gearmq_schemas::credential::verify_credential(&reply.credential, &[*issuer])?;
    write_file(&f.credential, &reply.credential, 0o644, false)?;
    Ok(Ended::Approved {
        serial: c.serial,
        not_after: c.not_after,
    })
}
