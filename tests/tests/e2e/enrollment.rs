//! Enrollment over the broker (`gearmq-agent enroll`, `gearmq enroll
//! secret|pending|approve|reject`) on a TLS node set up as docs/PRODUCTION.md says:
//! certificates for the fleet, a password only for the bootstrap user.
//!
//! Three hosts join from nothing but the issuer's public key, the broker's CA, the
//! bootstrap URL and a one-time secret; they are approved, provisioned, and answer a
//! ping over TLS with the certificates they got. A rejected host, a reused secret and an
//! expired one get nothing; no private key of a host exists outside its directory.

use gearmq_orchestrator::Orchestrator;
use gearmq_testkit::{Agent, BrokerNode, Fleet, bin, hosts};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host with only what it is given to enroll: its own empty directory.
struct Joiner {
    name: String,
    dir: tempfile::TempDir,
}

impl Joiner {
    fn new(name: &str) -> Joiner {
        Joiner {
            name: name.into(),
            dir: tempfile::Builder::new()
                .prefix(&format!("gearmq-joiner-{name}-"))
                .tempdir()
                .unwrap(),
        }
    }
    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }
}

/// What every joining host is handed: the issuer's public key, the broker's CA and the
/// bootstrap password, copied into a directory of their own.
struct Handout {
    dir: tempfile::TempDir,
    url: String,
}

impl Handout {
    fn issuer_pub(&self) -> PathBuf {
        self.dir.path().join("issuer.pub")
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("broker-ca.pem")
    }
    fn password(&self) -> PathBuf {
        self.dir.path().join("bootstrap.password")
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    gearmq_testkit::set_mode(path, 0o600);
}

/// Starts `gearmq-agent enroll` for `j`, with `secret` (a file) if given.
fn start_enroll(h: &Handout, j: &Joiner, secret: Option<&Path>, wait: &str) -> Child {
    let mut cmd = Command::new(bin("gearmq-agent"));
    cmd.args(["enroll", "--name", &j.name, "--dir"])
        .arg(j.keys())
        .arg("--issuer-pub")
        .arg(h.issuer_pub())
        .args(["--broker", &h.url, "--broker-password-file"])
        .arg(h.password())
        .arg("--broker-ca")
        .arg(h.ca())
        .args(["--wait", wait])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(s) = secret {
        cmd.arg("--secret-file").arg(s);
    }
    cmd.spawn().expect("gearmq-agent enroll")
}

/// Waits for `child` (at most 120 s): (exit code, stdout, stderr).
fn finish(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gearmq-agent enroll did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `gearmq enroll pending --json` until `want` requests are listed (read them all from
/// the broker first): the listed requests.
fn pending(fleet: &Fleet, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = fleet.cli(&["enroll", "pending", "--json"]);
        assert_eq!(out.code, 0, "enroll pending: {}", out.stderr);
        let rows: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if rows.len() >= want || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn secret_for(fleet: &Fleet, j: &Joiner, valid_for: &str) -> PathBuf {
    let f = j.dir.path().join("secret");
    let out = fleet.cli(&[
        "enroll",
        "secret",
        &j.name,
        "--valid-for",
        valid_for,
        "--out",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "enroll secret: {}", out.stderr);
    f
}

/// An agent config for an enrolled host: TLS + EXTERNAL with the certificate it got.
fn agent_toml(fleet: &Fleet, node: &BrokerNode, j: &Joiner) -> PathBuf {
    let k = j.keys();
    let p = |f: &str| format!("{:?}", k.join(f).display().to_string());
    let text = format!(
        "name = {name:?}\nkey_file = {key}\ncredential_file = {cred}\n\
         sealing_key_file = {sealing}\ntrusted_issuers = [{issuer:?}]\nstate_dir = {state}\n\n\
         [broker]\nurls = [{url:?}]\nprovisioned = true\nuser_id = {name:?}\n\
         ca_file = {ca}\ncert_file = {cert}\nkey_file = {tls}\n",
        name = j.name,
        key = p("host.key"),
        cred = p("host.cred"),
        sealing = p("sealing.key"),
        issuer = fleet.path().join("issuer.pub").display().to_string(),
        state = p("state"),
        url = format!(
            "amqps://127.0.0.1:{}/{}?auth_mechanism=external",
            node.amqps_port(),
            fleet.vhost.name
        ),
        ca = p("ca.pem"),
        cert = p("tls.pem"),
        tls = p("tls.key"),
    );
    let f = j.dir.path().join("agent.toml");
    std::fs::write(&f, text).unwrap();
    f
}

/// Every regular file under `dir`.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_enroll_over_the_broker_and_answer_a_tls_ping() {
    let node = Arc::new(BrokerNode::tls_enrolling());
    let fleet = Fleet::builder("enroll", &["enr-seed"])
        .operator("enr-ops")
        .tls(node.clone())
        .init();
    // The bootstrap user, and the enrollment exchange and queue.
    let handout = Handout {
        dir: tempfile::tempdir().unwrap(),
        url: format!(
            "amqps://{}@127.0.0.1:{}/{}",
            "gearmq.bootstrap",
            node.amqps_port(),
            fleet.vhost.name
        ),
    };
    write_private(&handout.password(), "bootstrap-pw\n");
    std::fs::copy(fleet.path().join("issuer.pub"), handout.issuer_pub()).unwrap();
    std::fs::copy(node.ca_file(), handout.ca()).unwrap();
    let pw = handout.password().display().to_string();
    let out = fleet.cli(&[
        "broker",
        "provision",
        "--apply",
        "--node",
        &node.node,
        "--bootstrap-password-file",
        &pw,
    ]);
    assert_eq!(out.code, 0, "provision: {}", out.stderr);

    // Three hosts, each with a secret of its own.
    let joiners: Vec<Joiner> = ["enr-a", "enr-b", "enr-c"]
        .iter()
        .map(|n| Joiner::new(n))
        .collect();
    let mut children = Vec::new();
    for j in &joiners {
        let s = secret_for(&fleet, j, "10m");
        children.push(start_enroll(&handout, j, Some(&s), "90s"));
    }
    // A host with no secret, to be rejected; one reusing enr-a's secret; one whose
    // secret expired before it asked.
    let rejected = Joiner::new("enr-rej");
    let rej_child = start_enroll(&handout, &rejected, None, "90s");
    let reuser = Joiner::new("enr-a");
    let late = Joiner::new("enr-late");
    let late_secret = secret_for(&fleet, &late, "1s");

    let rows = pending(&fleet, 4);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for j in &joiners {
        let r = rows.iter().find(|r| r["host"] == j.name.as_str()).unwrap();
        assert_eq!(r["secret"], "valid", "{r}");
        assert_eq!(r["tls"], true);
        // The key listed is the one the host made.
        let public = std::fs::read_to_string(j.keys().join("host.pub")).unwrap();
        assert!(
            public.contains(r["key"].as_str().unwrap()),
            "{public} / {r}"
        );
    }
    let issuer_key = fleet.path().join("issuer.key").display().to_string();
    let ca = node.pki_dir().display().to_string();
    for j in &joiners {
        let out = fleet.cli(&[
            "enroll",
            "approve",
            &j.name,
            "--issuer-key",
            &issuer_key,
            "--ca",
            &ca,
        ]);
        assert_eq!(out.code, 0, "approve {}: {}", j.name, out.stderr);
    }
    let out = fleet.cli(&["enroll", "reject", "enr-rej", "--issuer-key", &issuer_key]);
    assert_eq!(out.code, 0, "reject: {}", out.stderr);
    for (j, c) in joiners.iter().zip(children) {
        let (code, stdout, stderr) = finish(c);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", j.name);
        assert!(stdout.contains("enrolled as"), "{stdout}");
        for f in ["host.cred", "tls.pem", "ca.pem"] {
            assert!(j.keys().join(f).is_file(), "{} has no {f}", j.name);
        }
    }
    let (code, _, stderr) = finish(rej_child);
    assert_eq!(code, 1, "the rejected host: {stderr}");
    assert!(stderr.contains("rejected"), "{stderr}");
    assert!(!rejected.keys().join("host.cred").exists());
    assert!(!fleet.path().join("hosts/enr-rej/host.cred").exists());

    // A reused secret and an expired one: refused when read, never approvable.
    let a_secret = joiners[0].dir.path().join("secret");
    let reuse_child = start_enroll(&handout, &reuser, Some(&a_secret), "5s");
    std::thread::sleep(Duration::from_millis(1500));
    let late_child = start_enroll(&handout, &late, Some(&late_secret), "5s");
    let rows = pending(&fleet, 2);
    let verdict = |host: &str| {
        rows.iter()
            .filter(|r| r["host"] == host)
            .map(|r| r["secret"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        verdict("enr-a"),
        ["refused: the secret was used already"],
        "{rows:?}"
    );
    assert_eq!(
        verdict("enr-late"),
        ["refused: the secret expired"],
        "{rows:?}"
    );
    for (name, key) in [("enr-a", None), ("enr-late", None::<&str>)] {
        let mut args = vec!["enroll", "approve", name, "--issuer-key", &issuer_key];
        args.extend(["--ca", &ca]);
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        let out = fleet.cli(&args);
        assert_ne!(out.code, 0, "{name} was approved: {}", out.stdout);
    }
    for (c, j) in [(reuse_child, &reuser), (late_child, &late)] {
        let (code, _, stderr) = finish(c);
        assert_eq!(code, 3, "{}: {stderr}", j.name);
        assert!(!j.keys().join("host.cred").exists());
    }

    // Provisioned, the enrolled hosts answer over TLS with what they got.
    let out = fleet.cli(&[
        "broker",
        "provision",
        "--apply",
        "--node",
        &node.node,
        "--bootstrap-password-file",
        &pw,
    ]);
    assert_eq!(out.code, 0, "provision: {}", out.stderr);
    let _agents: Vec<Agent> = joiners
        .iter()
        .map(|j| Agent::start(&agent_toml(&fleet, &node, j)))
        .collect();
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .unwrap();
    let r = orch
        .request(gearmq_testkit::ping_spec(
            hosts(&["enr-a", "enr-b", "enr-c"]),
            Duration::from_secs(20),
        ))
        .await
        .unwrap();
    assert_eq!(r.summary.ok, 3, "{:?}", r.results);

    // No host's private key exists anywhere but in its own directory.
    let mut elsewhere = Vec::new();
    files_under(fleet.path(), &mut elsewhere);
    files_under(handout.dir.path(), &mut elsewhere);
    for j in joiners.iter().chain([&rejected]) {
        for key in ["host.key", "sealing.key", "tls.key"] {
            let secret = std::fs::read(j.keys().join(key)).unwrap();
            assert!(secret.len() > 32);
            for f in &elsewhere {
                let bytes = std::fs::read(f).unwrap_or_default();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                    "{}'s {key} is in {}",
                    j.name,
                    f.display()
                );
            }
        }
    }
    for j in &joiners {
        let _ = node.ctl(&["delete_user", &j.name]);
    }
    let _ = node.ctl(&["delete_user", "gearmq.bootstrap"]);
}
