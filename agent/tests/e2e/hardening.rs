//! What an agent refuses to trust on its own host: private key files that group or
//! others can read (it does not start), and units that would load code the operator
//! did not name (loader environment variables, programs reached through a symlink
//! out of `allowed_exec_prefixes`). The real agent binary, the real RabbitMQ and, for
//! units, a real `systemd --user`.

use gearmq_schemas::actions::{ALL_ACTIONS, InstallArgs};
use gearmq_schemas::token::SealingKey;
use gearmq_schemas::units::UnitSpec;
use gearmq_schemas::{Reply, Role, Status, codec};
use gearmq_testkit::{
    Agent, AgentFiles, AgentWorld, CliOutput, Pki, Vhost, line_count, run_program, set_mode,
    write_program,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs the agent with `config` until it exits (it should refuse to start).
fn run_to_exit(config: &Path) -> CliOutput {
    run_program("gearmq-agent", &["--config", config.to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_host_key_others_can_read_refuses_to_start() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    let host = pki.identity("web1", Role::Host, &[]);
    let files = AgentFiles::write(&vhost.url(), &pki, &host, "", "");
    let key = files.key_file();
    for mode in [0o644, 0o640, 0o604] {
        set_mode(&key, mode);
        let out = run_to_exit(&files.config);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert_eq!(
            out.stderr.trim(),
            format!(
                "gearmq-agent: refusing host key {k}: mode {mode:04o} lets other users read or change it (chmod 600 {k})",
                k = key.display()
            )
        );
    }
    // The same files with the key made private: the mode was the only problem.
    set_mode(&key, 0o600);
    let _agent = Agent::start(&files.config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_sealing_key_others_can_read_refuses_to_start() {
    let vhost = Vhost::new("agent");
    let pki = Pki::new();
    // A host whose credential publishes the sealing key, as `gearmq enroll host
    // --sealing-pubkey` makes it.
    let sealing = SealingKey::generate().unwrap();
    let host = pki.identity_with("web1", Role::Host, &[], |c| {
        c.sealing_key = Some(serde_bytes::ByteArray::new(sealing.public()));
    });
    let files = AgentFiles::write(&vhost.url(), &pki, &host, "", "");
    let sealing_file = files.path("sealing.key");
    std::fs::write(&sealing_file, sealing.to_pem()).unwrap();
    files.add_top_level(&format!(
        "sealing_key_file = \"{}\"",
        sealing_file.display()
    ));
    set_mode(&sealing_file, 0o644);
    let out = run_to_exit(&files.config);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "gearmq-agent: refusing sealing key {k}: mode 0644 lets other users read or change it (chmod 600 {k})",
            k = sealing_file.display()
        )
    );
    set_mode(&sealing_file, 0o600);
    let agent = Agent::start(&files.config);
    assert!(
        agent.log_contains("delegation tokens sealed to this host are accepted"),
        "the sealing key was taken once private"
    );
}

/// A test program: counts its starts, prints the loader variables it was given, waits.
const PROGRAM: &str = r#"echo start >> "$0.starts"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-unset}"
echo "LD_PRELOAD=${LD_PRELOAD-unset}"
exec sleep 600
"#;

/// One agent `web1` managing units in its own `systemd --user` (with `systemd` lines
/// in its `[systemd]`), and an operator `ops` allowed every action.
async fn unit_host(systemd: &str) -> AgentWorld {
    AgentWorld::builder()
        .systemd(systemd)
        .ops_actions(ALL_ACTIONS)
        .start()
        .await
}

/// Sends `install` of `spec` (started) and returns the reply, its signature and the
/// host credential behind it checked against the test's issuer.
async fn install(w: &mut AgentWorld, spec: &UnitSpec) -> Reply {
    let args = codec::encode(&InstallArgs {
        spec: spec.clone(),
        start: true,
        enable: true,
        artifact: None,
    });
    let id = w
        .ops
        .send_to(&w.host.name, "install", args, Duration::from_secs(60))
        .await;
    let d = w.ops.delivery_for(id, Duration::from_secs(30)).await;
    let opened = w.pki.open_reply(&d.data);
    assert!(opened.body().is_final);
    // Signed by this host, with its host credential.
    assert_eq!(opened.signer().name, w.host.name);
    assert_eq!(opened.signer().role, Role::Host);
    assert_eq!(opened.body().host, w.host.name);
    opened.body().clone()
}

fn unit_file(w: &AgentWorld, unit: &str) -> PathBuf {
    w.systemd()
        .unit_dir()
        .join(format!("gearmq-{unit}.service"))
}

/// Asserts `install` of unit `unit` left nothing behind: no unit file, no spec, no
/// intent record.
fn assert_nothing_written(w: &AgentWorld, unit: &str) {
    assert!(!unit_file(w, unit).exists(), "unit file written");
    let specs = w.files.state_dir.join("units");
    assert!(!specs.join(format!("{unit}.spec")).exists(), "spec written");
    let intents = std::fs::read_dir(w.files.state_dir.join("requests"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".intent"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(intents, 0, "intent recorded");
}

/// Waits until unit `unit`'s output holds `line`.
async fn wait_for_output(w: &AgentWorld, unit: &str, line: &str) {
    let file = std::fs::canonicalize(&w.files.state_dir)
        .unwrap()
        .join(format!("logs/{unit}.log"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} not in the output of {unit}: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times `program` was started (it appends to `<program>.starts`).
fn starts(program: &Path) -> usize {
    line_count(Path::new(&format!("{}.starts", program.display())))
}

fn spec_with_env(unit: &str, exec: &Path, env: &[(&str, &str)]) -> UnitSpec {
    let mut s = UnitSpec::new(unit, exec.to_string_lossy());
    s.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_with_a_loader_env_variable_is_refused_signed_and_writes_nothing() {
    let mut w = unit_host("").await;
    let prog = w.systemd().script("prog.sh", PROGRAM);
    let lib = w.systemd().dir().join("evil.so");
    for key in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "LD_DEBUG_OUTPUT",
        "GCONV_PATH",
        "PYTHONPATH",
        "NODE_OPTIONS",
    ] {
        let s = spec_with_env(
            "web",
            &prog,
            &[("PATH", "/usr/bin:/bin"), (key, &lib.to_string_lossy())],
        );
        let r = install(&mut w, &s).await;
        assert_eq!(r.status, Status::Unauthorized, "{key}: {:?}", r.error);
        assert!(r.data.is_none());
        let e = r.error.as_deref().unwrap_or("");
        assert!(e.contains(key), "{key}: {e}");
        assert!(e.contains("systemd.allowed_loader_env"), "{key}: {e}");
        assert_nothing_written(&w, "web");
    }
    assert_eq!(starts(&prog), 0, "the program never ran");
    // The same spec without the loader variable installs and runs.
    let s = spec_with_env("web", &prog, &[("PATH", "/usr/bin:/bin")]);
    let r = install(&mut w, &s).await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);
    wait_for_output(&w, "web", "LD_PRELOAD=unset").await;
    assert_eq!(starts(&prog), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_env_variable_listed_in_allowed_loader_env_reaches_the_program() {
    let mut w = unit_host("allowed_loader_env = [\"LD_LIBRARY_PATH\"]").await;
    let prog = w.systemd().script("prog.sh", PROGRAM);
    let libs = w.systemd().dir().join("libs");
    std::fs::create_dir_all(&libs).unwrap();
    let libs = libs.to_string_lossy().into_owned();
    // Only the listed variable: LD_PRELOAD stays refused beside it.
    let s = spec_with_env(
        "web",
        &prog,
        &[("LD_LIBRARY_PATH", &libs), ("LD_PRELOAD", "/x.so")],
    );
    let r = install(&mut w, &s).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    assert!(r.error.as_deref().unwrap_or("").contains("LD_PRELOAD"));
    assert_nothing_written(&w, "web");

    let s = spec_with_env("web", &prog, &[("LD_LIBRARY_PATH", &libs)]);
    let r = install(&mut w, &s).await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);
    let text = std::fs::read_to_string(unit_file(&w, "web")).unwrap();
    assert!(
        text.contains(&format!("Environment=\"LD_LIBRARY_PATH={libs}\"")),
        "{text}"
    );
    wait_for_output(&w, "web", &format!("LD_LIBRARY_PATH={libs}")).await;
    assert_eq!(starts(&prog), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_inside_an_allowed_prefix_to_a_program_outside_is_refused() {
    let manager_dir = tempfile::tempdir().unwrap();
    // The prefix and the tree below it, made before the agent starts.
    let root = std::fs::canonicalize(manager_dir.path()).unwrap();
    let allowed = root.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(root.join("allowed-evil")).unwrap();
    let mut w = unit_host(&format!(
        "allowed_exec_prefixes = [\"{}\"]",
        allowed.display()
    ))
    .await;
    let outside = write_program(&root, "outside.sh", PROGRAM);
    let inside = write_program(&allowed, "app.sh", PROGRAM);
    let evil = write_program(&root.join("allowed-evil"), "app.sh", PROGRAM);
    let link_out = allowed.join("link-out.sh");
    std::os::unix::fs::symlink(&outside, &link_out).unwrap();

    // A link inside the prefix to a program outside it: refused, naming both paths.
    let r = install(&mut w, &spec_with_env("web", &link_out, &[])).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    let e = r.error.as_deref().unwrap_or("");
    assert!(e.contains("allowed_exec_prefixes"), "{e}");
    assert!(
        e.contains(&format!("resolved: {}", outside.display())),
        "{e}"
    );
    assert_nothing_written(&w, "web");
    // A directory whose name merely starts with the prefix's.
    let r = install(&mut w, &spec_with_env("web", &evil, &[])).await;
    assert_eq!(r.status, Status::Unauthorized, "{:?}", r.error);
    assert_nothing_written(&w, "web");
    // A program that is not there: said plainly.
    let missing = spec_with_env("web", &allowed.join("missing.sh"), &[]);
    let r = install(&mut w, &missing).await;
    assert_eq!(r.status, Status::NotFound, "{:?}", r.error);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("does not exist on this host"),
        "{:?}",
        r.error
    );
    assert_nothing_written(&w, "web");
    assert_eq!(starts(&outside), 0);
    assert_eq!(starts(&evil), 0);

    // The program inside the prefix installs and runs.
    let r = install(&mut w, &spec_with_env("web", &inside, &[])).await;
    assert_eq!(r.status, Status::Ok, "{:?}", r.error);
    wait_for_output(&w, "web", "LD_PRELOAD=unset").await;
    assert_eq!(starts(&inside), 1);
    drop(manager_dir);
}
