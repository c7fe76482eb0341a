//! Test harness: a private vhost on the real RabbitMQ, a generated PKI, the real agent
//! binary, and an orchestrator played with lapin directly.
#![allow(dead_code)]

use futures_util::StreamExt;
use gearmq_schemas::actions::PingArgs;
use gearmq_schemas::envelope::{self, Opened};
use gearmq_schemas::keys::der_to_pem;
use gearmq_schemas::request::reply_queue_name;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{
    ActionName, Credential, CredentialVerifier, Name, Reply, Request, Role, Signed, SigningKey,
    Targets, TrustAnchors, codec,
};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long "no reply" is waited for.
pub const QUIET: Duration = Duration::from_secs(1);

pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of its own for one test, deleted on drop (also when the test fails).
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Vhost {
        let name = format!("gearmq-t-{:016x}", rand::random::<u64>());
        rabbitmqctl(&["add_vhost", &name]);
        let v = Vhost { name };
        rabbitmqctl(&["set_permissions", "-p", &v.name, "guest", ".*", ".*", ".*"]);
        v
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// Messages (ready + unacked) in `queue`, from the broker itself.
    pub fn queue_messages(&self, queue: &str) -> u64 {
        let out = rabbitmqctl(&["list_queues", "-p", &self.name, "name", "messages"]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                match (it.next(), it.next()) {
                    (Some(n), Some(c)) if n == queue => c.parse().ok(),
                    _ => None,
                }
            })
            .next()
            .unwrap_or_else(|| panic!("queue {queue} not found in {out}"))
    }

    /// Messages ready and unacknowledged in `queue`, from the broker itself.
    pub fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let out = rabbitmqctl(&[
            "list_queues",
            "-p",
            &self.name,
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                match (it.next(), it.next(), it.next()) {
                    (Some(n), Some(r), Some(u)) if n == queue => {
                        Some((r.parse().ok()?, u.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .next()
            .unwrap_or_else(|| panic!("queue {queue} not found in {out}"))
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// Someone holding a key and an issued credential.
pub struct Party {
    pub name: Name,
    pub key: SigningKey,
    pub key_der: Vec<u8>,
    pub cred: Vec<u8>,
}

/// An issuer and the parties it issued credentials to.
pub struct Pki {
    pub issuer: SigningKey,
    serial: std::cell::Cell<u64>,
}

impl Pki {
    pub fn new() -> Pki {
        let (issuer, _) = SigningKey::generate().unwrap();
        Pki {
            issuer,
            serial: std::cell::Cell::new(1),
        }
    }

    pub fn party(&self, name: &str, role: Role, actions: &[&str]) -> Party {
        let (key, key_der) = SigningKey::generate().unwrap();
        let now = now_ms();
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        let mut c = Credential::new(
            serial,
            Name::new(name).unwrap(),
            role,
            key.public_key(),
            now - 3_600_000,
            now + 30 * 86_400_000,
        );
        c.actions = actions
            .iter()
            .map(|a| ActionName::new(*a).unwrap())
            .collect();
        Party {
            name: c.name.clone(),
            key,
            key_der,
            cred: c.issue(&self.issuer),
        }
    }

    pub fn verifier(&self) -> CredentialVerifier {
        CredentialVerifier::new(TrustAnchors::new(vec![self.issuer.public_key()]), 16)
    }
}

/// The files an agent is configured with.
pub struct AgentFiles {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

pub fn write_agent_files(vhost: &Vhost, pki: &Pki, host: &Party, extra: &str) -> AgentFiles {
    write_agent_files_with(vhost, pki, host, extra, "")
}

/// Like [`write_agent_files`], with `systemd` as the body of a `[systemd]` section.
pub fn write_agent_files_with(
    vhost: &Vhost,
    pki: &Pki,
    host: &Party,
    extra: &str,
    systemd: &str,
) -> AgentFiles {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_file = d.join("host.key");
    let cred_file = d.join("host.cred");
    let issuer_file = d.join("issuer.pub");
    let state_dir = d.join("state");
    std::fs::write(&key_file, der_to_pem(&host.key_der)).unwrap();
    std::fs::write(&cred_file, &host.cred).unwrap();
    std::fs::write(
        &issuer_file,
        format!("{}\n", pki.issuer.public_key().to_hex()),
    )
    .unwrap();
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"name = "{name}"
key_file = "{key}"
credential_file = "{cred}"
trusted_issuers = ["{issuer}"]
state_dir = "{state}"

[broker]
urls = ["{url}"]

[limits]
{extra}

[systemd]
{systemd}
"#,
            name = host.name,
            key = key_file.display(),
            cred = cred_file.display(),
            issuer = issuer_file.display(),
            state = state_dir.display(),
            url = vhost.url(),
        ),
    )
    .unwrap();
    AgentFiles {
        dir,
        config,
        state_dir,
    }
}

/// A running agent process, killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    /// Spawns the agent with `config` and waits for `agent ready`.
    pub async fn start(config: &Path) -> AgentProcess {
        Self::start_with_args(config, &[]).await
    }

    /// Like [`AgentProcess::start`] with extra command-line arguments.
    pub async fn start_with_args(config: &Path, args: &[&str]) -> AgentProcess {
        Self::start_with(config, args, &[]).await
    }

    /// Like [`AgentProcess::start`] with extra arguments and environment variables.
    pub async fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> AgentProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gearmq-agent"))
            .arg("--config")
            .arg(config)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gearmq-agent");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut rd = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = rd.next_line().await {
                eprintln!("[agent] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let agent = AgentProcess { child, lines };
        agent.wait_for_log("agent ready", READY_TIMEOUT).await;
        agent
    }

    pub fn log_contains(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub async fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.log_contains(text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent did not log {text:?} within {timeout:?}; log:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("agent still running");
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("agent exits in time")
            .unwrap()
    }
}

/// An orchestrator of our own: a reply queue for `caller` and a publishing channel
/// with confirms.
pub struct Orch {
    pub conn: Connection,
    pub ch: Channel,
    pub reply_queue: String,
    consumer: Consumer,
}

impl Orch {
    pub async fn connect(vhost: &Vhost, caller: &Name) -> Orch {
        let conn = Connection::connect(&vhost.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let inst = format!("t{:08x}", rand::random::<u32>());
        let reply_queue = reply_queue_name(caller, &inst);
        ch.queue_declare(
            reply_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            reply_queue.as_str().into(),
            "gearmq.replies".into(),
            reply_queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let consume_ch = conn.create_channel().await.unwrap();
        let consumer = consume_ch
            .basic_consume(
                reply_queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Orch {
            conn,
            ch,
            reply_queue,
            consumer,
        }
    }

    /// Publishes `bytes` on `gearmq.requests` with `routing_key` and waits for the
    /// broker's confirm.
    pub async fn publish(&self, routing_key: &str, bytes: &[u8]) {
        let confirm = self
            .ch
            .basic_publish(
                "gearmq.requests".into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                bytes,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "request routed: {confirm:?}"
        );
    }

    pub async fn next_reply(&mut self, timeout: Duration) -> Option<Delivery> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Ok(Some(Ok(d))) => Some(d),
            Ok(other) => panic!("reply consumer ended: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn reply(&mut self) -> Delivery {
        self.next_reply(REPLY_TIMEOUT)
            .await
            .expect("a reply within the timeout")
    }

    /// Polls the dead-letter queue for one message.
    pub async fn dead_letter(&self, timeout: Duration) -> Option<BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self
                .ch
                .basic_get("gearmq.dead".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            if got.is_some() || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A ping from `caller` to `targets`, valid for a minute from now.
pub fn ping_request(caller: &Name, reply_queue: &str, targets: Targets) -> Request {
    let now = now_ms();
    Request::new(
        caller.clone(),
        now,
        now + 60_000,
        targets,
        reply_queue.to_string(),
        ActionName::new("ping").unwrap(),
        codec::encode(&PingArgs {}),
    )
}

pub fn sign(req: &Request, signer: &Party) -> Vec<u8> {
    Signed::seal(req, &signer.key, &signer.cred)
}

/// Opens a reply with the test's trust anchors (signature, host credential).
pub fn open_reply(pki: &Pki, bytes: &[u8]) -> Opened<Reply> {
    envelope::open::<Reply>(bytes, 1 << 20, &pki.verifier()).expect("reply opens")
}

/// SHA-256 of a request's body bytes, as the agent computes it.
pub fn digest_of(req: &Request) -> [u8; 32] {
    gearmq_schemas::sha256(&codec::encode(req))
}

/// One running test setup: vhost, PKI, a host agent `web1`, an operator `ops`.
pub struct World {
    pub pki: Pki,
    pub host: Party,
    pub ops: Party,
    pub files: AgentFiles,
    pub agent: AgentProcess,
    pub orch: Orch,
    // Last, so the vhost outlives the connections during drop.
    pub vhost: Vhost,
}

impl World {
    pub async fn start() -> World {
        Self::start_with("").await
    }

    /// Starts with extra `[limits]` lines in the agent config.
    pub async fn start_with(limits: &str) -> World {
        let vhost = Vhost::create();
        let pki = Pki::new();
        let host = pki.party("web1", Role::Host, &[]);
        let ops = pki.party("ops", Role::Operator, &["ping"]);
        let files = write_agent_files(&vhost, &pki, &host, limits);
        let agent = AgentProcess::start(&files.config).await;
        let orch = Orch::connect(&vhost, &ops.name).await;
        World {
            pki,
            host,
            ops,
            files,
            agent,
            orch,
            vhost,
        }
    }

    pub fn host_key(&self) -> String {
        format!("host.{}", self.host.name)
    }

    pub fn ping(&self) -> Request {
        ping_request(
            &self.ops.name,
            &self.orch.reply_queue,
            Targets::Hosts(vec![self.host.name.clone()]),
        )
    }

    /// Sends a valid ping and checks the agent answers it with status ok.
    pub async fn assert_ping_ok(&mut self) {
        let req = self.ping();
        self.orch
            .publish(&self.host_key(), &sign(&req, &self.ops))
            .await;
        let d = self.orch.reply().await;
        let reply = open_reply(&self.pki, &d.data);
        assert_eq!(reply.body().request_id, req.id);
        assert_eq!(
            reply.body().status,
            gearmq_schemas::Status::Ok,
            "{:?}",
            reply.body().error
        );
    }
}

/// A request from `caller` to `host` for `action` with `args`, valid for `ttl`.
pub fn request<A: serde::Serialize>(
    caller: &Name,
    reply_queue: &str,
    host: &Name,
    action: &str,
    args: &A,
    ttl: Duration,
) -> Request {
    let now = now_ms();
    Request::new(
        caller.clone(),
        now,
        now + ttl.as_millis() as u64,
        Targets::Hosts(vec![host.clone()]),
        reply_queue.to_string(),
        ActionName::new(action).unwrap(),
        codec::encode(args),
    )
}

/// Run by `sh` inside `unshare -m`: moves itself into a control group of its own in
/// the systemd-named (v1) and the unified (v2) hierarchies, so that units of parallel
/// test managers with equal names never share a cgroup (stopping one would kill the
/// other's processes), then makes /run/systemd/system exist in this mount namespace
/// only and becomes the user manager. The cgroups made are listed in
/// $GEARMQ_TEST_CGROUPS for removal on drop.
const ISOLATE_AND_EXEC_MANAGER: &str = r#"set -e
: > "$GEARMQ_TEST_CGROUPS"
join() {
  d="$1$2/gearmq-test-$$"
  mkdir -p "$d" && echo "$d" >> "$GEARMQ_TEST_CGROUPS" && echo $$ > "$d/cgroup.procs"
}
mp=$(awk '$3 == "cgroup" && $4 ~ /name=systemd/ { print $2; exit }' /proc/self/mounts)
own=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
if [ -n "$mp" ]; then join "$mp" "${own%/}"; fi
mp2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
own2=$(sed -n 's/^0:://p' /proc/self/cgroup)
if [ -n "$mp2" ]; then join "$mp2" "${own2%/}" || true; fi
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir /run/systemd/system
exec /usr/lib/systemd/systemd --user
"#;

/// A real `systemd --user` in a private mount namespace (it runs only where
/// /run/systemd/system exists, which must not be created for the whole machine), with
/// its own HOME, XDG_CONFIG_HOME and XDG_RUNTIME_DIR. SIGTERMed on drop.
pub struct UserManager {
    pub dir: tempfile::TempDir,
    pub config_home: PathBuf,
    pub runtime_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub bus_address: String,
    child: std::process::Child,
}

impl UserManager {
    pub fn start() -> UserManager {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let config_home = home.join(".config");
        let runtime_dir = dir.path().join("run");
        let unit_dir = config_home.join("systemd/user");
        std::fs::create_dir_all(&unit_dir).unwrap();
        std::fs::create_dir_all(&runtime_dir).unwrap();
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = std::fs::File::create(dir.path().join("systemd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", ISOLATE_AND_EXEC_MANAGER])
            .env("GEARMQ_TEST_CGROUPS", dir.path().join("cgroups"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", &config_home)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn systemd --user");
        let bus_address = format!("unix:path={}/bus", runtime_dir.display());
        let mut m = UserManager {
            dir,
            config_home,
            runtime_dir,
            unit_dir,
            bus_address,
            child,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("busctl")
                .args([
                    "--address",
                    &m.bus_address,
                    "status",
                    "org.freedesktop.systemd1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!(
                    "systemd --user exited ({st}): {}",
                    std::fs::read_to_string(m.dir.path().join("systemd.log")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "systemd --user bus did not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// The `[systemd]` section of an agent managing units in this manager.
    pub fn agent_section(&self) -> String {
        format!(
            "bus = \"user\"\naddress = \"{}\"\nunit_dir = \"{}\"\n",
            self.bus_address,
            self.unit_dir.display()
        )
    }

    /// Writes an executable `#!/bin/sh` script named `name` in this manager's dir.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.remove_cgroups();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.remove_cgroups();
    }
}

impl UserManager {
    /// Removes the (now empty) cgroups the manager ran in, deepest first.
    fn remove_cgroups(&self) {
        let list = std::fs::read_to_string(self.dir.path().join("cgroups")).unwrap_or_default();
        for top in list.lines().filter(|l| l.contains("/gearmq-test-")) {
            let mut dirs = Vec::new();
            let mut stack = vec![PathBuf::from(top)];
            while let Some(d) = stack.pop() {
                if let Ok(entries) = std::fs::read_dir(&d) {
                    for e in entries.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            stack.push(e.path());
                        }
                    }
                }
                dirs.push(d);
            }
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
