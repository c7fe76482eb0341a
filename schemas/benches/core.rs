//! Micro-benchmarks of the signed path's building blocks: encode, sign, verify,
//! credential check and audit append.
//!
//! Run: `cargo bench -p gearmq-schemas --bench core` (not run in CI; compiled by
//! `cargo build --all-targets`).
#![forbid(unsafe_code)]

use criterion::{Criterion, criterion_group, criterion_main};
use gearmq_schemas::audit::{AuditLog, AuditOptions, Entry};
use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::envelope::{Signed, open};
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{
    ActionName, Context, Credential, CredentialVerifier, Name, Reply, Request, Role, SigningKey,
    Status, Targets, TrustAnchors, codec,
};
use std::hint::black_box;

const MAX: usize = gearmq_schemas::DEFAULT_MAX_MESSAGE_BYTES;

struct Fixture {
    issuer: SigningKey,
    op_key: SigningKey,
    op_cred: Vec<u8>,
    host_key: SigningKey,
    host_cred: Vec<u8>,
    request: Request,
    request_bytes: Vec<u8>,
    reply_bytes: Vec<u8>,
}

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

fn credential(issuer: &SigningKey, name: &str, role: Role, key: &SigningKey) -> Vec<u8> {
    let now = now_ms();
    Credential::new(
        1,
        Name::new(name).expect("name"),
        role,
        key.public_key(),
        now - 60_000,
        now + 86_400_000,
    )
    .issue(issuer)
}

fn fixture() -> Fixture {
    let issuer = key();
    let op_key = key();
    let op_cred = credential(&issuer, "ops", Role::Operator, &op_key);
    let host_key = key();
    let host_cred = credential(&issuer, "web1", Role::Host, &host_key);
    let now = now_ms();
    let request = Request::new(
        Name::new("ops").expect("name"),
        now,
        now + 60_000,
        Targets::Hosts(vec![Name::new("web1").expect("name")]),
        "gearmq.reply.ops.00000000".into(),
        ActionName::new("ping").expect("action"),
        codec::encode(&gearmq_schemas::actions::PingArgs {}),
    );
    let body = codec::encode(&request);
    let digest = gearmq_schemas::sha256(&body);
    let request_bytes = Signed::seal_bytes(Context::Request, body, &op_key, &op_cred);
    let reply = Reply::new(
        request.id,
        digest,
        Name::new("web1").expect("name"),
        Status::Ok,
        now,
        now,
    );
    let reply_bytes = Signed::seal(&reply, &host_key, &host_cred);
    Fixture {
        issuer,
        op_key,
        op_cred,
        host_key,
        host_cred,
        request,
        request_bytes,
        reply_bytes,
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let anchors = TrustAnchors::new(vec![f.issuer.public_key()]);
    c.bench_function("encode request", |b| {
        b.iter(|| codec::encode(black_box(&f.request)))
    });
    c.bench_function("sign request (encode + seal)", |b| {
        b.iter(|| {
            let body = codec::encode(black_box(&f.request));
            Signed::seal_bytes(Context::Request, body, &f.op_key, &f.op_cred)
        })
    });
    let verifier = CredentialVerifier::new(anchors.clone(), 1024);
    c.bench_function("verify request (credential cached)", |b| {
        b.iter(|| open::<Request>(black_box(&f.request_bytes), MAX, &verifier).expect("open"))
    });
    c.bench_function("verify reply (credential cached)", |b| {
        b.iter(|| open::<Reply>(black_box(&f.reply_bytes), MAX, &verifier).expect("open"))
    });
    // A narrowed call to 5,000 of a fleet's hosts signs their names (issue: the signed
    // scope is the sent scope): what one agent pays to open it and find itself.
    let fleet: Vec<Name> = (0..5000)
        .map(|i| Name::new(format!("web{i:05}")).expect("name"))
        .collect();
    let mut wide = f.request.clone();
    wide.targets = Targets::hosts(fleet.iter().cloned());
    let wide_bytes = Signed::seal(&wide, &f.op_key, &f.op_cred);
    println!("request naming 5,000 hosts: {} bytes", wide_bytes.len());
    c.bench_function("verify request naming 5,000 hosts", |b| {
        b.iter(|| open::<Request>(black_box(&wide_bytes), MAX, &verifier).expect("open"))
    });
    let me = fleet[4321].clone();
    let none = std::collections::BTreeMap::new();
    c.bench_function("target check in 5,000 hosts", |b| {
        b.iter(|| assert!(wide.targets.includes(black_box(&me), &none)))
    });
    let issuers = [f.issuer.public_key()];
    c.bench_function("credential check (uncached)", |b| {
        b.iter(|| verify_credential(black_box(&f.host_cred), &issuers).expect("credential"))
    });
    c.bench_function("credential check (cached)", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&f.host_cred))
                .expect("credential")
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let host_key_copy = f.host_key;
    let mut log = AuditLog::open(
        dir.path().join("audit.log"),
        host_key_copy,
        &f.host_cred,
        AuditOptions {
            // Measures the record's CPU (hash chain, signature, framing), not the
            // disk: fsync is per batch in the agent and costs what the disk costs.
            sync_on_append: false,
            ..AuditOptions::default()
        },
    )
    .expect("audit log");
    c.bench_function("audit append (no fsync)", |b| {
        b.iter(|| {
            log.append(Entry::request_handled(
                &f.request_bytes,
                Some(&f.reply_bytes),
            ))
            .expect("append")
        })
    });
    // A fan-out's reply records reach the writer together: one signature seals the
    // batch. Divide by the batch size for the cost per record.
    const BATCH: usize = 64;
    c.bench_function("audit append, batch of 64 (no fsync)", |b| {
        b.iter(|| {
            log.append_batch(
                (0..BATCH)
                    .map(|_| Entry::request_handled(&f.request_bytes, Some(&f.reply_bytes)))
                    .collect(),
            )
            .expect("append")
        })
    });
}

criterion_group! {
    name = core;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(core);
