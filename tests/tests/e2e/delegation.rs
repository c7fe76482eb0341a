//! Delegation tokens end to end: host a calls host b as itself, carrying a token an
//! operator minted, over the real broker, with real agents (b with a real
//! `systemd --user`). Every refusal comes back as a signed status-6 reply naming the
//! token's own reason, and nothing happens on b.

use gearmq_io::files::{load_sealing_public_key, load_signing_key};
use gearmq_orchestrator::{CallSpec, HostStatus, Orchestrator, OrchestratorConfig};
use gearmq_schemas::actions::{StatusArgs, UnitArgs};
use gearmq_schemas::request::reply_queue_name;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::token::{self, Minter, Token};
use gearmq_schemas::{ActionName, Request, Targets, codec};
use gearmq_testkit::{CliOutput, Fleet, UserSystemd, hosts, name, run_cli};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `gearmq --config DIR/hosts/<host>/client.toml <args> --token FILE --json`.
fn as_host(fleet: &Fleet, host: &str, token: &Path, args: &[&str]) -> CliOutput {
    let cfg = fleet.host_dir(host).join("client.toml");
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["--token", token.to_str().unwrap(), "--json"]);
    run_cli(&all)
}

/// `gearmq --config CFG token mint --out OUT ARGS…`, whatever its outcome.
fn try_mint(cfg: &Path, out: &Path, args: &[&str]) -> CliOutput {
    let mut all = vec![
        "--config",
        cfg.to_str().unwrap(),
        "token",
        "mint",
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    run_cli(&all)
}

/// Mints with the fleet's operator: `gearmq token mint ... --out DIR/<file>`.
fn mint(fleet: &Fleet, file: &str, args: &[&str]) -> PathBuf {
    let out = fleet.path().join(file);
    let o = try_mint(&fleet.orchestrator_toml(), &out, args);
    assert_eq!(o.code, 0, "mint failed: {}", o.stderr);
    out
}

/// The single result of a `--json` call.
fn only_result(o: &CliOutput) -> Value {
    let doc = o.json();
    let r = doc["results"].as_array().expect("results");
    assert_eq!(r.len(), 1, "{doc}");
    r[0].clone()
}

/// Asserts a call was answered with status 6 and a message naming `reason`.
fn assert_refused(o: &CliOutput, reason: &str) {
    assert_eq!(o.code, 1, "stdout {}\nstderr {}", o.stdout, o.stderr);
    let r = only_result(o);
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["code"], 6, "{r}");
    let msg = r["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("({reason})")),
        "expected {reason}: {msg}"
    );
}

/// Claims for a → b, made directly (for windows and minters the CLI refuses to mint).
fn claims(
    issuer: gearmq_schemas::PublicKey,
    actions: &[&str],
    not_before: u64,
    not_after: u64,
) -> Token {
    Token::new(
        issuer,
        name("a"),
        name("b"),
        actions
            .iter()
            .map(|a| ActionName::new(*a).unwrap())
            .collect(),
        vec![],
        not_before,
        not_after,
        1,
    )
}

/// Seals `claims` as operator (key file, credential file) to b, writes DIR/<file>.
fn seal_as(fleet: &Fleet, key: &Path, cred: &Path, c: &Token, file: &str) -> PathBuf {
    let key = load_signing_key(key).unwrap();
    let cred = std::fs::read(cred).unwrap();
    let recipient = load_sealing_public_key(&fleet.host_dir("b").join("sealing.pub")).unwrap();
    let bytes = token::seal(
        c,
        Minter::Operator {
            key: &key,
            credential: &cred,
        },
        &recipient,
    )
    .unwrap();
    let out = fleet.path().join(file);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// A second operator `name` enrolled by the fleet's issuer, with its own config copied
/// from orchestrator.toml. Returns (key, cred, config).
fn operator(fleet: &Fleet, op: &str, extra: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let d = fleet.path();
    let key = d.join(format!("{op}.key"));
    let cred = d.join(format!("{op}.cred"));
    let o = run_cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let pubkey = d.join(format!("{op}.pub"));
    let issuer_key = d.join("issuer.key");
    let mut args = vec![
        "enroll",
        "operator",
        op,
        "--pubkey",
        pubkey.to_str().unwrap(),
        "--issuer-key",
        issuer_key.to_str().unwrap(),
        "--out",
        cred.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = run_cli(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text = std::fs::read_to_string(fleet.orchestrator_toml())
        .unwrap()
        .replace("name = \"ops\"", &format!("name = \"{op}\""))
        .replace("operator.key", &format!("{op}.key"))
        .replace("operator.cred", &format!("{op}.cred"))
        .replace("audit.log", &format!("{op}-audit.log"));
    let config = d.join(format!("{op}.toml"));
    std::fs::write(&config, text).unwrap();
    (key, cred, config)
}

/// Sends `action` to `to` as host `from` (its client.toml) through the library, with
/// `token` as given: for what the CLI itself refuses to send.
async fn send_raw(
    fleet: &Fleet,
    from: &str,
    token: Option<Vec<u8>>,
    to: &str,
    action: &str,
    args: Vec<u8>,
) -> gearmq_orchestrator::HostResult {
    let cfg = OrchestratorConfig::load(&fleet.host_dir(from).join("client.toml")).unwrap();
    let mut orch = Orchestrator::connect(&cfg).await.unwrap();
    if let Some(t) = token {
        orch.set_token(t);
    }
    let r = orch
        .request(CallSpec {
            selection: hosts(&[to]),
            action: ActionName::new(action).unwrap(),
            args,
            timeout: Duration::from_secs(10),
        })
        .await
        .unwrap();
    orch.close().await;
    r.results.into_iter().next().expect("one result")
}

fn assert_raw_refused(r: &gearmq_orchestrator::HostResult, reason: &str) {
    assert_eq!(r.status, HostStatus::Error, "{r:?}");
    assert_eq!(r.code.map(|c| c.code()), Some(6), "{r:?}");
    let msg = r.message.as_deref().unwrap_or_default();
    assert!(msg.contains(reason), "expected {reason}: {msg}");
}

#[test]
fn delegated_status_works_and_stays_inside_its_token() {
    let fleet = Fleet::builder("dlg", &["a", "b", "c", "d"])
        .delegators(&["a", "c"])
        .init();
    assert!(fleet.host_dir("a").join("client.toml").is_file());
    assert!(fleet.host_dir("c").join("client.toml").is_file());
    assert!(!fleet.host_dir("b").join("client.toml").exists());
    let sd_b = UserSystemd::start();
    let mut agent_b = fleet.start_agent_on("b", &sd_b);
    let _agent_d = fleet.start_agent("d");

    // A token for status on b (any unit), five uses.
    let t = mint(
        &fleet,
        "status.token",
        &[
            "--subject",
            "a",
            "--audience",
            "b",
            "--action",
            "status",
            "--uses",
            "5",
        ],
    );
    // The carrier sees the audience, never the claims.
    let shown = run_cli(&["token", "show", t.to_str().unwrap(), "--json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert_eq!(shown.json()["audience"], "b");

    // a → status b: works, signed by a, answered by b.
    let o = as_host(&fleet, "a", &t, &["status", "b"]);
    assert_eq!(o.code, 0, "stdout {}\nstderr {}", o.stdout, o.stderr);
    let r = only_result(&o);
    assert_eq!(r["host"], "b");
    assert_eq!(r["status"], "ok", "{r}");

    // Same token, stop: not in the token.
    let o = as_host(&fleet, "a", &t, &["stop", "b", "web"]);
    assert_refused(&o, "token_action_not_allowed");

    // c presents a's token, signing its own request: not the subject.
    let o = as_host(&fleet, "c", &t, &["status", "b"]);
    assert_refused(&o, "token_wrong_subject");

    // The CLI will not send a token anywhere but its audience…
    let o = as_host(&fleet, "a", &t, &["status", "d"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("token is for host b"), "{}", o.stderr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = std::fs::read(&t).unwrap();
    let status_args = codec::encode(&StatusArgs { unit: None });
    // …and d, sent it anyway, refuses it: the audience is b.
    let r = rt.block_on(send_raw(
        &fleet,
        "a",
        Some(bytes.clone()),
        "d",
        "status",
        status_args.clone(),
    ));
    assert_raw_refused(&r, "token_wrong_audience");

    // One use only: the second is refused, and still after b restarts.
    let once = mint(
        &fleet,
        "once.token",
        &[
            "--subject",
            "a",
            "--audience",
            "b",
            "--action",
            "status",
            "--unit",
            "web",
            "--uses",
            "1",
        ],
    );
    let o = as_host(&fleet, "a", &once, &["status", "b", "web"]);
    // "web" is not installed: b answers not_found, which is still a spent use.
    let r = only_result(&o);
    assert_ne!(r["code"], 6, "{r}");
    let o = as_host(&fleet, "a", &once, &["status", "b", "web"]);
    assert_refused(&o, "token_used_up");
    agent_b.restart();
    let o = as_host(&fleet, "a", &once, &["status", "b", "web"]);
    assert_refused(&o, "token_used_up");
    // A unit-scoped token does not stretch to other units or to none; a refused
    // attempt spends nothing.
    let scoped = mint(
        &fleet,
        "scoped.token",
        &[
            "--subject",
            "a",
            "--audience",
            "b",
            "--action",
            "status",
            "--unit",
            "web",
        ],
    );
    let o = as_host(&fleet, "a", &scoped, &["status", "b", "db"]);
    assert_refused(&o, "token_unit_not_allowed");
    let o = as_host(&fleet, "a", &scoped, &["status", "b"]);
    assert_refused(&o, "token_unit_not_allowed");
    let o = as_host(&fleet, "a", &scoped, &["status", "b", "web"]);
    assert_ne!(
        only_result(&o)["code"],
        6,
        "the refused attempts spent no use: {}",
        o.stdout
    );
}

/// Every token b must refuse, each with its own reason, and a host request without a
/// token. Nothing here reaches an action, so b needs no systemd.
#[test]
fn tokens_outside_their_window_altered_or_from_the_wrong_minter_are_refused() {
    let fleet = Fleet::builder("dlg2", &["a", "b"])
        .delegators(&["a"])
        .init();
    let _agent_b = fleet.start_agent("b");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status_args = codec::encode(&StatusArgs { unit: None });
    let t = mint(
        &fleet,
        "status.token",
        &["--subject", "a", "--audience", "b", "--action", "status"],
    );

    // Windows: expired, not yet valid (made directly; the CLI mints neither).
    let (op_key, op_cred) = (
        fleet.path().join("operator.key"),
        fleet.path().join("operator.cred"),
    );
    let op_pub = load_signing_key(&op_key).unwrap().public_key();
    let now = now_ms();
    let expired = seal_as(
        &fleet,
        &op_key,
        &op_cred,
        &claims(op_pub, &["status"], now - 600_000, now - 300_000),
        "expired.token",
    );
    assert_refused(
        &as_host(&fleet, "a", &expired, &["status", "b"]),
        "token_expired",
    );
    let future = seal_as(
        &fleet,
        &op_key,
        &op_cred,
        &claims(op_pub, &["status"], now + 600_000, now + 900_000),
        "future.token",
    );
    assert_refused(
        &as_host(&fleet, "a", &future, &["status", "b"]),
        "token_not_yet_valid",
    );
    // Longer than b's cap (1 h by default).
    let long = seal_as(
        &fleet,
        &op_key,
        &op_cred,
        &claims(op_pub, &["status"], now - 1000, now + 7_200_000),
        "long.token",
    );
    assert_refused(
        &as_host(&fleet, "a", &long, &["status", "b"]),
        "token_ttl_too_long",
    );

    // A flipped ciphertext byte.
    let mut flipped = std::fs::read(&t).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let flipped_file = fleet.path().join("flipped.token");
    std::fs::write(&flipped_file, &flipped).unwrap();
    assert_refused(
        &as_host(&fleet, "a", &flipped_file, &["status", "b"]),
        "token_cannot_open",
    );

    // An operator without may_delegate, and one allowed only status granting stop
    // too: the CLI refuses to mint either; b refuses a hand-made one with its reason.
    for (op, enroll, actions, cli_says, reason) in [
        (
            "ops2",
            &[][..],
            &["status"][..],
            "may not delegate",
            "token_not_delegator",
        ),
        (
            "ops3",
            &["--actions", "status", "--may-delegate"][..],
            &["status", "stop"][..],
            "may not do itself",
            "token_wider_than_minter",
        ),
    ] {
        let (key, cred, cfg) = operator(&fleet, op, enroll);
        let out = fleet.path().join(format!("{op}-cli.token"));
        let o = try_mint(
            &cfg,
            &out,
            &[
                "--subject",
                "a",
                "--audience",
                "b",
                "--action",
                &actions.join(","),
            ],
        );
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains(cli_says), "{}", o.stderr);
        let public = load_signing_key(&key).unwrap().public_key();
        let made = seal_as(
            &fleet,
            &key,
            &cred,
            &claims(public, actions, now - 1000, now + 300_000),
            &format!("{op}.token"),
        );
        assert_refused(&as_host(&fleet, "a", &made, &["status", "b"]), reason);
    }

    // A minter revoked after minting: its token worked before the revocation reached
    // b, and a new one is refused afterwards.
    let cfg3 = fleet.path().join("ops3.toml");
    let mint3 = |file: &str| {
        let out = fleet.path().join(file);
        let o = try_mint(
            &cfg3,
            &out,
            &["--subject", "a", "--audience", "b", "--action", "status"],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        out
    };
    let before = mint3("ops3-before.token");
    let o = as_host(&fleet, "a", &before, &["status", "b"]);
    assert_ne!(only_result(&o)["code"], 6, "not yet revoked: {}", o.stdout);
    let o = run_cli(&[
        "revoke",
        "--name",
        "ops3",
        "--issuer-key",
        fleet.path().join("issuer.key").to_str().unwrap(),
        "--list",
        fleet.path().join("revocations.bin").to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = fleet.cli(&["revocations", "push", "--host", "b"]);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let after = mint3("ops3-after.token");
    assert_refused(
        &as_host(&fleet, "a", &after, &["status", "b"]),
        "token_minter_revoked",
    );

    // Random bytes as a token: the CLI will not carry them; b refuses them, no panic.
    let junk = fleet.path().join("junk.token");
    std::fs::write(&junk, b"\x93\x01\x02\x03not a token").unwrap();
    let o = as_host(&fleet, "a", &junk, &["status", "b"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let r = rt.block_on(send_raw(
        &fleet,
        "a",
        Some(vec![0xc4, 0x03, 1, 2, 3]),
        "b",
        "status",
        status_args.clone(),
    ));
    assert_raw_refused(&r, "token_malformed");

    // Without a token a host cannot make b do anything: the CLI says so, and b refuses
    // a host-signed request that carries none.
    let cfg_a = fleet.host_dir("a").join("client.toml");
    let o = run_cli(&["--config", cfg_a.to_str().unwrap(), "status", "b"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--token"), "{}", o.stderr);
    // The library will not sign one either; published by hand, b refuses it
    // (unauthorized: a host credential without a token) and logs the refusal.
    let cfg = OrchestratorConfig::load(&cfg_a).unwrap();
    let refused = rt.block_on(async {
        let orch = Orchestrator::connect(&cfg).await.unwrap();
        let r = orch
            .request(CallSpec {
                selection: hosts(&["b"]),
                action: ActionName::new("ping").unwrap(),
                args: vec![0x80],
                timeout: Duration::from_secs(5),
            })
            .await;
        orch.close().await;
        r
    });
    assert!(
        refused.is_err(),
        "a host-signed request without a token was sent"
    );
    let stop_args = codec::encode(&UnitArgs { unit: "web".into() });
    let a = fleet.host_identity("a");
    let now = now_ms();
    let req = Request::new(
        name("a"),
        now,
        now + 60_000,
        Targets::Hosts(vec![name("b")]),
        reply_queue_name(&name("a"), "byhand"),
        ActionName::new("stop").unwrap(),
        stop_args,
    );
    let bytes = a.seal(&req);
    rt.block_on(fleet.forward_request(&bytes, "b"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = fleet.cli(&["stats", "--host", "b", "--json"]);
        let doc = o.json();
        if doc["results"][0]["data"]["refused"]["unauthorized"].as_u64() == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b did not refuse it: {doc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // a's own audit log of its delegated calls verifies, and so does b's, which holds
    // every delegated request with the reply b sent.
    for log in [
        fleet.host_dir("a").join("client-audit.log"),
        fleet.host_dir("b").join("state").join("audit.log"),
    ] {
        let o = fleet.verify_audit(&log);
        assert_eq!(o.code, 0, "{}: {}\n{}", log.display(), o.stdout, o.stderr);
    }

    // b counted each refusal, and the agent is still up and answering.
    // Every token refusal above, and only those, counted as `token`: expired, not yet
    // valid, over the TTL cap, flipped byte, not a delegator, wider than its minter,
    // minter revoked, random bytes.
    let o = fleet.cli(&["stats", "--host", "b", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let doc = o.json();
    assert_eq!(doc["results"][0]["data"]["refused"]["token"], 8, "{doc}");
}
