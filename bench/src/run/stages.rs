//! Per-stage CPU of the signed path (decode, open, sign, correlate, audit), timed on
//! real messages of the run's fleet.

use super::report::Stage;
use anyhow::Result;
use gearmq_orchestrator::correlate::Correlator;
use gearmq_schemas::envelope::{Signed, open};
use gearmq_schemas::{
    ActionName, CredentialVerifier, Name, Reply, Request, Status, Targets, TrustAnchors,
    actions::PingArgs, codec,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// The sizes of a signed ping request to one host and of its signed reply.
pub(super) fn message_sizes(dir: &Path) -> Result<(usize, usize)> {
    let (request, reply, _, _) = sample_messages(dir)?;
    Ok((request.len(), reply.len()))
}

/// A signed ping request from the operator to emu-00001 and that host's signed reply,
/// and the trust anchors.
fn sample_messages(dir: &Path) -> Result<(Vec<u8>, Vec<u8>, TrustAnchors, Name)> {
    use gearmq_io::files::{load_public_key, load_signing_key};
    let op_key = load_signing_key(&dir.join("operator.key"))?;
    let op_cred = std::fs::read(dir.join("operator.cred"))?;
    let host = Name::new("emu-00001")?;
    let host_dir = dir.join("hosts/emu-00001");
    let host_key = load_signing_key(&host_dir.join("host.key"))?;
    let host_cred = std::fs::read(host_dir.join("host.cred"))?;
    let issuer = load_public_key(&dir.join("issuer.pub"))?;
    let now = gearmq_schemas::time::now_ms();
    let request = Request::new(
        Name::new("ops")?,
        now,
        now + 60_000,
        Targets::All,
        format!("gearmq.reply.ops.{:08x}", 0u32),
        ActionName::new("ping")?,
        codec::encode(&PingArgs {}),
    );
    let body = codec::encode(&request);
    let digest = gearmq_schemas::sha256(&body);
    let request_bytes =
        Signed::seal_bytes(gearmq_schemas::Context::Request, body, &op_key, &op_cred);
    let mut reply = Reply::new(request.id, digest, host.clone(), Status::Ok, now, now);
    reply.data = Some(serde_bytes::ByteBuf::from(vec![0u8; 64]));
    let reply_bytes = Signed::seal(&reply, &host_key, &host_cred);
    Ok((
        request_bytes,
        reply_bytes,
        TrustAnchors::new(vec![issuer]),
        host,
    ))
}

/// Per-stage CPU of the signed path, timed on this thread on real messages.
pub(super) fn stages(dir: &Path) -> Result<Vec<Stage>> {
    let (request, reply_bytes, anchors, host) = sample_messages(dir)?;
    let host_key = gearmq_io::files::load_signing_key(&dir.join("hosts/emu-00001/host.key"))?;
    let host_cred = std::fs::read(dir.join("hosts/emu-00001/host.cred"))?;
    let verifier = CredentialVerifier::new(anchors.clone(), 1024);
    let max = gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES;
    let time = |n: usize, f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let n = 300;
    let mut out = Vec::new();
    let decode = time(n, &mut || {
        let _ = Signed::decode(&request, max);
    });
    out.push(Stage {
        stage: "agent: decode request envelope",
        us_per_op: decode,
    });
    let open_cached = time(n, &mut || {
        let _ = open::<Request>(&request, max, &verifier);
    });
    out.push(Stage {
        stage: "agent: open request (decode, cached credential, verify signature, decode body)",
        us_per_op: open_cached,
    });
    let cold = time(n / 3, &mut || {
        let v = CredentialVerifier::new(anchors.clone(), 16);
        let _ = open::<Request>(&request, max, &v);
    });
    out.push(Stage {
        stage: "agent: open request, credential not cached (two signature checks)",
        us_per_op: cold,
    });
    let opened = open::<Request>(&request, max, &verifier)?;
    let now = gearmq_schemas::time::now_ms();
    let sign = time(n, &mut || {
        let mut r = Reply::new(
            opened.body().id,
            *opened.digest(),
            host.clone(),
            Status::Ok,
            now,
            now,
        );
        r.data = Some(serde_bytes::ByteBuf::from(vec![0u8; 64]));
        let _ = Signed::seal(&r, &host_key, &host_cred);
    });
    out.push(Stage {
        stage: "agent: encode and sign reply",
        us_per_op: sign,
    });
    let verify_reply = time(n, &mut || {
        let _ = open::<Reply>(&reply_bytes, max, &verifier);
    });
    out.push(Stage {
        stage: "orchestrator: open reply (decode, cached credential, verify signature)",
        us_per_op: verify_reply,
    });
    // Correlation: a verified reply judged against the call it answers (target,
    // digest, duplicate and revocation checks), on a table holding that one call.
    let reply = open::<Reply>(&reply_bytes, max, &verifier)?;
    let targets: std::collections::BTreeSet<Name> = [host.clone()].into();
    let correlate = time(n, &mut || {
        let mut c = Correlator::new(Duration::from_secs(60), false, Duration::from_secs(30));
        c.register(
            reply.body().request_id,
            reply.body().request_digest.into_array(),
            targets.clone(),
        );
        let _ = c.judge(Ok(reply.clone()), None, now, Instant::now());
    });
    out.push(Stage {
        stage: "orchestrator: correlate a verified reply with its call",
        us_per_op: correlate,
    });
    // The audit record each side writes per message: encode, sign, hash, frame and
    // write, without the fsync (the disk's time, shared by a batch).
    let scratch = tempfile::tempdir()?;
    let mut log = gearmq_schemas::audit::AuditLog::open(
        scratch.path().join("audit.log"),
        gearmq_io::files::load_signing_key(&dir.join("hosts/emu-00001/host.key"))?,
        &host_cred,
        gearmq_schemas::audit::AuditOptions {
            sync_on_append: false,
            ..Default::default()
        },
    )?;
    let audit = time(n, &mut || {
        let _ = log.append(gearmq_schemas::audit::Entry::request_handled(
            &request,
            Some(&reply_bytes),
        ));
    });
    out.push(Stage {
        stage: "agent and orchestrator: audit record (sign, hash, write; no fsync)",
        us_per_op: audit,
    });
    Ok(out)
}
