//! Replays the fuzz corpus on stable: every file under `fuzz/corpus/<target>/` (and any
//! crash under `fuzz/artifacts/<target>/`) goes through its target, and a panic fails
//! the test. So the seeds, and every regression input added to them, are checked by
//! `cargo test` without nightly or libFuzzer.
//!
//! The `seed-*` files are built from `vectors/` (the audit seeds are the vector log
//! families as they are) by `GEARMQ_REGEN_FUZZ_SEEDS=1 cargo test
//! -p gearmq-schemas --test fuzz_corpus`; review the diff, then run again without it.

use gearmq_schemas::actions::{InstallArgs, MAX_ARGS_BYTES};
use gearmq_schemas::audit::{self, VerifyOptions};
use gearmq_schemas::credential::verify_credential;
use gearmq_schemas::envelope::open;
use gearmq_schemas::event::Event;
use gearmq_schemas::fuzzing::{self, ISSUER_SEED};
use gearmq_schemas::revocation::{RevocationList, RevokedName, verify_revocation};
use gearmq_schemas::time::Millis;
use gearmq_schemas::units::{RestartPolicy, UnitSpec};
use gearmq_schemas::{
    CredentialVerifier, DEFAULT_MAX_MESSAGE_BYTES, Name, Reply, Request, SigningKey, TrustAnchors,
    codec,
};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);
/// Named seed files, by file name.
type Seeds = Vec<(String, Vec<u8>)>;

const TARGETS: &[(&str, Target)] = &[
    ("request", fuzzing::request),
    ("reply", fuzzing::reply),
    ("event", fuzzing::event),
    ("credential", fuzzing::credential),
    ("revocation", fuzzing::revocation),
    ("audit_log", fuzzing::audit_log),
    ("unit_spec", fuzzing::unit_spec),
    ("envelope", fuzzing::envelope),
    ("token", fuzzing::token),
];

/// 2026-01-01T00:00:00Z, the start of the vector credentials' validity.
const T0: Millis = 1_767_225_600_000;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_crash_file_decodes_without_panic() {
    if std::env::var_os("GEARMQ_REGEN_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let fuzz = schemas_dir().join("fuzz");
    let mut panicked = Vec::new();
    for (name, target) in TARGETS {
        let corpus = files_in(&fuzz.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ is empty: the replay would prove nothing"
        );
        let crashes = files_in(&fuzz.join("artifacts").join(name));
        for path in corpus.iter().chain(&crashes) {
            let data = std::fs::read(path).unwrap();
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                panicked.push(path.display().to_string());
            }
        }
    }
    assert!(panicked.is_empty(), "targets panicked on: {panicked:#?}");
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let fuzz = schemas_dir().join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        let source = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            source.contains(&format!("gearmq_schemas::fuzzing::{name}(data)")),
            "fuzz_targets/{name}.rs does not call fuzzing::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

/// The unmutated seeds are accepted, so the fuzzer starts from inputs that reach every
/// check rather than ones refused at the first byte.
#[test]
fn base_seeds_pass_every_check() {
    let corpus = schemas_dir().join("fuzz/corpus");
    let read = |p: &str| std::fs::read(corpus.join(p)).unwrap();
    let issuer = SigningKey::from_seed(&ISSUER_SEED).public_key();
    let anchors = TrustAnchors::new(vec![issuer]);
    let verifier = CredentialVerifier::new(anchors.clone(), 4);
    let max = DEFAULT_MAX_MESSAGE_BYTES;
    open::<Request>(&read("request/seed-ping"), max, &verifier).unwrap();
    open::<Reply>(&read("reply/seed-ping"), max, &verifier).unwrap();
    open::<Event>(&read("event/seed-unit"), max, &verifier).unwrap();
    verify_credential(&read("credential/seed-host"), &[issuer]).unwrap();
    verify_credential(&read("credential/seed-operator"), &[issuer]).unwrap();
    verify_revocation(&read("revocation/seed-list"), &[issuer]).unwrap();
    // The audit seeds are the vector families: each first file verifies alone, and
    // with its live file as a rotated family.
    let verify = |files: &[(&str, Vec<u8>)]| {
        audit::verify_log(files, &anchors, &VerifyOptions::default()).unwrap()
    };
    let agent = read("audit_log/seed-agent");
    let agent_live = read("audit_log/seed-agent-live");
    assert_eq!(verify(&[("audit.log", agent.clone())]).requests_handled, 2);
    let s = verify(&[("audit.log.1", agent), ("audit.log", agent_live)]);
    assert_eq!((s.requests_handled, s.requests_repeated), (3, 2));
    let ops = read("audit_log/seed-orchestrator");
    let ops_live = read("audit_log/seed-orchestrator-live");
    assert_eq!(verify(&[("audit.log", ops.clone())]).requests_sent, 1);
    let s = verify(&[("audit.log.1", ops), ("audit.log", ops_live)]);
    assert_eq!(
        (
            s.requests_sent,
            s.replies_accepted,
            s.replies_rejected,
            s.rejection_summaries
        ),
        (1, 1, 2, 2)
    );
    assert_eq!(s.events_accepted, 1);
    let args: InstallArgs = codec::decode(
        "install args",
        &read("unit_spec/seed-install"),
        MAX_ARGS_BYTES,
    )
    .unwrap();
    args.spec.validate().unwrap();
}

/// A valid input, its first half, all but its last byte, and a copy with a middle byte
/// flipped: the fuzzer starts from both sides of every check.
fn with_mutations(base: &str, bytes: &[u8]) -> Seeds {
    let mut flipped = bytes.to_vec();
    flipped[bytes.len() / 2] ^= 0x01;
    vec![
        (base.to_string(), bytes.to_vec()),
        (format!("{base}-half"), bytes[..bytes.len() / 2].to_vec()),
        (format!("{base}-short1"), bytes[..bytes.len() - 1].to_vec()),
        (format!("{base}-flip"), flipped),
    ]
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(schemas_dir().join("vectors").join(name)).unwrap()
}

/// The whole messages `vectors.json` says a receiver must refuse.
fn must_refuse() -> Seeds {
    let json: serde_json::Value = serde_json::from_slice(&vector("vectors.json")).unwrap();
    json["must_refuse"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
            (format!("seed-refuse-{i}"), bytes)
        })
        .collect()
}

fn write_seeds() {
    let issuer = SigningKey::from_seed(&ISSUER_SEED);
    let request = vector("request-ping.bin");
    let reply = vector("reply-ping.bin");
    let event = vector("event-unit.bin");
    let host = vector("credential-host.bin");
    let operator = vector("credential-operator.bin");

    let revoked = RevocationList::empty(T0).with(
        &[7, 9],
        &[RevokedName {
            name: Name::new("web9").unwrap(),
            before: T0,
        }],
        T0 + 1,
    );
    let revocation = revoked.issue(&issuer);

    let mut spec = UnitSpec::new("web", "/usr/bin/python3");
    spec.args = vec!["-m".into(), "http.server".into()];
    spec.env.insert("PORT".into(), "8080".into());
    spec.workdir = Some("/srv/web".into());
    spec.restart = RestartPolicy::OnFailure;
    spec.memory_max = Some(64 << 20);
    spec.cpu_quota = Some(50);
    spec.description = Some("web server".into());
    let install = codec::encode(&InstallArgs {
        spec,
        start: true,
        enable: true,
        artifact: None,
    });
    let relative = codec::encode(&InstallArgs {
        spec: UnitSpec::new("web", "python3"),
        start: false,
        enable: false,
        artifact: None,
    });

    let agent_log = vector("audit-web1.log.1");
    let first_record = audit::frames(&agent_log)
        .next()
        .unwrap()
        .unwrap()
        .bytes
        .to_vec();

    let seeds: Vec<(&str, Seeds)> = vec![
        (
            "request",
            [with_mutations("seed-ping", &request), must_refuse()].concat(),
        ),
        ("reply", with_mutations("seed-ping", &reply)),
        ("event", with_mutations("seed-unit", &event)),
        (
            "credential",
            [
                with_mutations("seed-host", &host),
                vec![("seed-operator".into(), operator)],
            ]
            .concat(),
        ),
        ("revocation", with_mutations("seed-list", &revocation)),
        (
            "audit_log",
            [
                with_mutations("seed-agent", &agent_log),
                with_mutations("seed-agent-live", &vector("audit-web1.log")),
                with_mutations("seed-orchestrator", &vector("audit-ops.log.1")),
                with_mutations("seed-orchestrator-live", &vector("audit-ops.log")),
            ]
            .concat(),
        ),
        (
            "unit_spec",
            [
                with_mutations("seed-install", &install),
                vec![("seed-relative-exec".into(), relative)],
            ]
            .concat(),
        ),
        (
            "envelope",
            vec![
                ("seed-request".into(), request),
                ("seed-reply".into(), reply),
                ("seed-event".into(), event),
                ("seed-credential".into(), host),
                ("seed-audit-record".into(), first_record),
            ],
        ),
    ];
    for (target, files) in seeds {
        let dir = schemas_dir().join("fuzz/corpus").join(target);
        for old in files_in(&dir) {
            if old
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                std::fs::remove_file(old).unwrap();
            }
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
