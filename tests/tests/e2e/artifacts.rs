//! The program travels with the request: `gearmq install --artifact-url URL --artifact
//! PATH` signs the file's SHA-256 and size; each host fetches the bytes from the URL
//! (a real HTTP server on loopback), stores them by digest only when they match, and
//! runs the stored file. Real agents, each with a real `systemd --user`.

use gearmq_testkit::{Fleet, UserSystemd, wait_until};
use serde_json::Value;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Python's http.server on a free loopback port, serving `dir`; its request log in
/// `dir/../http.log`. Stopped on drop.
struct HttpServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.parent().unwrap().join("http.log");
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 -m http.server");
        wait_until("the HTTP server listens", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HttpServer { child, port, log }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// How many GETs of `name` it served.
    fn gets(&self, name: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /{name} ")))
            .count()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program of `size` bytes that prints `running <version>` and waits: a short
/// script, then comment lines up to the size.
fn program(path: &Path, version: &str, size: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let head = format!("#!/bin/sh\necho \"running {version}\"\nexec sleep 600\n");
    f.write_all(head.as_bytes()).unwrap();
    let line = format!("#{}\n", "x".repeat(1022));
    let mut left = size - head.len();
    while left >= line.len() {
        f.write_all(line.as_bytes()).unwrap();
        left -= line.len();
    }
    f.write_all(&vec![b'#'; left]).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn artifact_files(fleet: &Fleet, host: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fleet.host_dir(host).join("state/artifacts"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn results(doc: &Value) -> Vec<Value> {
    doc["results"].as_array().cloned().unwrap_or_default()
}

const MIB: usize = 1024 * 1024;

/// A `systemd --user` manager and an agent on it for each of `hosts`.
fn start_agents(fleet: &Fleet, hosts: &[&str]) -> (Vec<UserSystemd>, Vec<gearmq_testkit::Agent>) {
    let managers: Vec<UserSystemd> = hosts.iter().map(|_| UserSystemd::start()).collect();
    let agents = hosts
        .iter()
        .zip(&managers)
        .map(|(h, sd)| fleet.start_agent_on(h, sd))
        .collect();
    (managers, agents)
}

#[test]
fn a_64_mib_program_ships_with_the_request_to_three_hosts_and_a_bad_one_runs_nowhere() {
    let hosts = ["art-a", "art-b", "art-c"];
    let fleet = Fleet::init("art3", &hosts);
    let (managers, _agents) = start_agents(&fleet, &hosts);
    let work = tempfile::tempdir().unwrap();
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let server = HttpServer::serve(&www);
    program(&www.join("app-v1.sh"), "v1", 64 * MIB);
    let v1_digest = sha256_hex(&www.join("app-v1.sh"));

    let install = |file: &str, local: &Path| {
        let url = server.url(file);
        let local = local.to_str().unwrap().to_string();
        fleet.cli(&[
            "install",
            "art-a,art-b,art-c",
            "app",
            "--artifact-url",
            &url,
            "--artifact",
            &local,
            "--start",
            "--json",
            "--timeout",
            "120s",
        ])
    };

    // v1 on three hosts: fetched, checked, stored by digest, running.
    let out = install("app-v1.sh", &www.join("app-v1.sh"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["data"]["change"], "created", "{r}");
        assert_eq!(r["data"]["then"], "started", "{r}");
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        assert_eq!(artifact_files(&fleet, h), std::slice::from_ref(&v1_digest));
        let stored = fleet.host_dir(h).join("state/artifacts").join(&v1_digest);
        assert_eq!(std::fs::metadata(&stored).unwrap().len(), 64 * MIB as u64);
        let unit = std::fs::read_to_string(sd.unit_dir().join("gearmq-app.service")).unwrap();
        assert!(unit.contains(&v1_digest), "{unit}");
        wait_until("v1 runs", Duration::from_secs(10), || {
            let l = fleet.cli(&["logs", h, "app", "--json"]);
            l.stdout.contains("running v1")
        });
    }
    assert_eq!(server.gets("app-v1.sh"), 3, "one fetch per host");

    // The same install again: nothing fetched, nothing changed.
    let out = install("app-v1.sh", &www.join("app-v1.sh"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["data"]["change"], "unchanged", "{r}");
    }
    assert_eq!(
        server.gets("app-v1.sh"),
        3,
        "an artifact on the host is not sent again"
    );

    // The URL serves other bytes than the signed digest: refused everywhere, nothing
    // installed, nothing stored.
    program(&work.path().join("bad-local.sh"), "good", MIB);
    program(&www.join("bad.sh"), "evil", MIB);
    let url = server.url("bad.sh");
    let out = fleet.cli(&[
        "install",
        "art-a,art-b,art-c",
        "other",
        "--artifact-url",
        &url,
        "--artifact",
        work.path().join("bad-local.sh").to_str().unwrap(),
        "--start",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    for r in results(&out.json()) {
        assert_eq!(r["code"], 4, "{r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap_or_default()
                .contains("SHA-256"),
            "{r}"
        );
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        assert!(!sd.unit_dir().join("gearmq-other.service").exists());
        assert_eq!(
            artifact_files(&fleet, h),
            std::slice::from_ref(&v1_digest),
            "no partial file left"
        );
    }

    // A URL that serves nothing: a signed 5 naming it, nothing installed or stored.
    let missing = server.url("missing.sh");
    let out = fleet.cli(&[
        "install",
        "art-a,art-b,art-c",
        "other",
        "--artifact-url",
        &missing,
        "--sha256",
        &"0".repeat(64),
        "--size",
        "10",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    for r in results(&out.json()) {
        assert_eq!(r["code"], 5, "{r}");
        let m = r["message"].as_str().unwrap_or_default();
        assert!(m.contains("missing.sh") && m.contains("404"), "{r}");
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        assert!(!sd.unit_dir().join("gearmq-other.service").exists());
        assert_eq!(artifact_files(&fleet, h), std::slice::from_ref(&v1_digest));
    }

    // An upgrade to v2: stored beside v1, the unit file swapped atomically to it,
    // `updated` and restarted, v2 runs.
    program(&www.join("app-v2.sh"), "v2", 2 * MIB);
    let v2_digest = sha256_hex(&www.join("app-v2.sh"));
    let out = install("app-v2.sh", &www.join("app-v2.sh"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["data"]["change"], "updated", "{r}");
        assert_eq!(r["data"]["then"], "restarted", "{r}");
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        let unit = std::fs::read_to_string(sd.unit_dir().join("gearmq-app.service")).unwrap();
        assert!(
            unit.contains(&v2_digest) && !unit.contains(&v1_digest),
            "{unit}"
        );
        wait_until("v2 runs", Duration::from_secs(10), || {
            fleet
                .cli(&["logs", h, "app", "--json"])
                .stdout
                .contains("running v2")
        });
    }
}

/// How many times `agent` read an artifact from its broker stream.
fn stream_reads(agent: &gearmq_testkit::Agent) -> usize {
    agent
        .log_text()
        .matches("artifact read from its broker stream")
        .count()
}

#[test]
fn a_64_mib_program_shipped_through_the_broker_is_sent_once_and_a_corrupted_copy_runs_nowhere() {
    // A provisioned fleet: hosts may only read artifact streams, the operator makes and
    // fills them; the broker users are this test's own.
    let mut users = gearmq_testkit::BrokerUsers::new();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|h| users.name(&format!("ship-{h}")))
        .collect();
    let hosts: Vec<&str> = names.iter().map(String::as_str).collect();
    let op = users.name("ops");
    let fleet = Fleet::builder("artbus", &hosts)
        .operator(&op)
        .provision()
        .init();
    let (managers, agents) = start_agents(&fleet, &hosts);
    let work = tempfile::tempdir().unwrap();
    let v1 = work.path().join("app-v1.sh");
    program(&v1, "v1", 64 * MIB);
    let v1_digest = sha256_hex(&v1);
    let stream = format!("gearmq.artifact.{v1_digest}");
    let all = hosts.join(",");
    let install = |path: &Path| {
        fleet.cli(&[
            "install",
            &all,
            "app",
            "--artifact",
            path.to_str().unwrap(),
            "--start",
            "--json",
            "--timeout",
            "120s",
        ])
    };

    // Shipped once through the broker, read by each host, stored by digest, running.
    let shipped = std::time::Instant::now();
    let out = install(&v1);
    let ship_secs = shipped.elapsed().as_secs_f64();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // Sent once, whatever the number of hosts.
    assert_eq!(
        out.stderr
            .matches(&format!("into broker stream {stream}"))
            .count(),
        1,
        "{}",
        out.stderr
    );
    for r in results(&out.json()) {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["data"]["change"], "created", "{r}");
        assert_eq!(r["data"]["then"], "started", "{r}");
    }
    for ((h, sd), agent) in hosts.iter().zip(&managers).zip(&agents) {
        assert_eq!(artifact_files(&fleet, h), std::slice::from_ref(&v1_digest));
        let unit = std::fs::read_to_string(sd.unit_dir().join("gearmq-app.service")).unwrap();
        assert!(unit.contains(&v1_digest), "{unit}");
        assert_eq!(stream_reads(agent), 1, "{h}");
        wait_until("v1 runs", Duration::from_secs(10), || {
            fleet
                .cli(&["logs", h, "app", "--json"])
                .stdout
                .contains("running v1")
        });
    }
    // The stream and its binding are what provisioning allows, not drift.
    let check = fleet.cli(&["broker", "check", "--allow-user", "guest"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);

    // Installed again: on every host already, so no host reads it again.
    let out = install(&v1);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["data"]["change"], "unchanged", "{r}");
    }
    for (h, agent) in hosts.iter().zip(&agents) {
        assert_eq!(stream_reads(agent), 1, "{h} read the stream again");
    }

    // A digest never shipped: no stream to read; every host answers a signed 5 naming
    // the stream, nothing installed.
    let never = "ab".repeat(32);
    let out = fleet.cli(&[
        "install", &all, "never", "--sha256", &never, "--size", "10", "--json",
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["code"], 5, "{r}");
        let m = r["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(&format!("gearmq.artifact.{never}")) && m.contains("never shipped"),
            "{r}"
        );
    }
    for sd in &managers {
        assert!(!sd.unit_dir().join("gearmq-never.service").exists());
    }

    // A stream whose only copy has one corrupted chunk (byte 3 MiB + 7 flipped,
    // published under the good digest by a broker user allowed to write there): the
    // request names the good digest; every host refuses with a signed 4, nothing is
    // installed or stored, no partial file is left.
    let good = work.path().join("other.sh");
    program(&good, "other", 4 * MIB);
    let good_digest = sha256_hex(&good);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[3 * MIB + 7] ^= 0xff;
    let corrupt = work.path().join("corrupt.sh");
    std::fs::write(&corrupt, &bytes).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = gearmq_testkit::raw::connect(&fleet.vhost.url()).await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        gearmq_io::artifact_stream::publish(
            &ch,
            &corrupt,
            &good_digest,
            bytes.len() as u64,
            true,
            Duration::from_secs(30),
            |_| {},
        )
        .await
        .unwrap();
        let _ = conn.close(200, "done".into()).await;
    });
    let size = bytes.len().to_string();
    let by_digest = |unit: &str| {
        fleet.cli(&[
            "install",
            &all,
            unit,
            "--sha256",
            &good_digest,
            "--size",
            &size,
            "--start",
            "--json",
            "--timeout",
            "60s",
        ])
    };
    let out = by_digest("other");
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["code"], 4, "{r}");
        let m = r["message"].as_str().unwrap_or_default();
        assert!(m.contains("SHA-256") && m.contains(&good_digest), "{r}");
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        assert!(!sd.unit_dir().join("gearmq-other.service").exists());
        assert_eq!(
            artifact_files(&fleet, h),
            std::slice::from_ref(&v1_digest),
            "nothing stored, no partial file"
        );
    }

    // The good bytes shipped after it: each host skips the bad copy and takes the good
    // one.
    let out = install_other(&fleet, &all, &good);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for (h, _) in hosts.iter().zip(&managers) {
        let mut want = vec![v1_digest.clone(), good_digest.clone()];
        want.sort();
        assert_eq!(artifact_files(&fleet, h), want);
    }
    drop(agents);
    gearmq_testkit::observe(
        "a_64_mib_program_shipped_through_the_broker_is_sent_once_and_a_corrupted_copy_runs_nowhere",
        "64 MiB program shipped with --artifact through the broker to 3 provisioned hosts, each with a real systemd --user",
        serde_json::json!({"hosts": hosts.len(), "artifact_mib": 64,
                           "install_with_shipping_secs": (ship_secs * 10.0).round() / 10.0,
                           "broker_copies": 1}),
    );
}

fn install_other(fleet: &Fleet, hosts: &str, path: &Path) -> gearmq_testkit::CliOutput {
    fleet.cli(&[
        "install",
        hosts,
        "other",
        "--artifact",
        path.to_str().unwrap(),
        "--start",
        "--json",
        "--timeout",
        "60s",
    ])
}

/// The peak resident set of process `pid` so far (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_200_mib_program_crosses_the_broker_without_either_side_holding_it_in_memory() {
    let fleet = Fleet::init("art200", &["big-a"]);
    let sd = UserSystemd::start();
    let agent = fleet.start_agent_on("big-a", &sd);
    let agent_pid = agent.pid().expect("agent runs");
    let agent_before = peak_rss_kib(agent_pid).unwrap_or(0);
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.sh");
    program(&big, "big", 200 * MIB);
    let digest = sha256_hex(&big);

    // The CLI as a child of its own, its peak resident set sampled while it runs.
    let cfg = fleet.orchestrator_toml();
    let started = std::time::Instant::now();
    let mut cli = Command::new(gearmq_testkit::bin("gearmq"))
        .arg("--config")
        .arg(&cfg)
        .args(["install", "big-a", "big", "--artifact"])
        .arg(&big)
        .args(["--start", "--json", "--timeout", "300s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cli_peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(cli.id()) {
            cli_peak = cli_peak.max(kib);
        }
        if let Some(s) = cli.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the install hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    let out = cli.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"created\""), "{stdout}");
    let stored = fleet
        .host_dir("big-a")
        .join("state/artifacts")
        .join(&digest);
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), 200 * MIB as u64);
    let agent_peak = peak_rss_kib(agent_pid).unwrap_or(0);
    // Neither side held the 200 MiB: each peak stays far below it.
    assert!(
        cli_peak > 0 && cli_peak < 100 * 1024,
        "CLI peak {cli_peak} KiB"
    );
    assert!(agent_peak < 100 * 1024, "agent peak {agent_peak} KiB");
    gearmq_testkit::observe(
        "a_200_mib_program_crosses_the_broker_without_either_side_holding_it_in_memory",
        "200 MiB program shipped with --artifact through the broker to one host (real systemd --user); peak RSS sampled from /proc",
        serde_json::json!({"artifact_mib": 200,
                           "cli_peak_rss_mib": cli_peak / 1024,
                           "agent_peak_rss_mib_before": agent_before / 1024,
                           "agent_peak_rss_mib_after": agent_peak / 1024,
                           "install_secs": (secs * 10.0).round() / 10.0}),
    );
}

#[test]
fn a_tar_gz_tree_ships_through_the_broker_and_its_program_runs_from_the_unpacked_tree() {
    let hosts = ["tree-a", "tree-b"];
    let fleet = Fleet::init("arttree", &hosts);
    let (managers, _agents) = start_agents(&fleet, &hosts);
    // app/bin/app reads app/share/msg next to it: it runs only from a whole tree.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("app");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share")).unwrap();
    std::fs::write(root.join("share/msg"), "tree-v1").unwrap();
    let app = root.join("bin/app");
    std::fs::write(
        &app,
        "#!/bin/sh\nd=$(dirname \"$0\")\necho \"running $(cat \"$d/../share/msg\")\"\nexec sleep 600\n",
    )
    .unwrap();
    gearmq_testkit::set_mode(&app, 0o755);
    let archive = work.path().join("app.tar.gz");
    let tar = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .args(["bin", "share"])
        .status()
        .unwrap();
    assert!(tar.success());
    let digest = sha256_hex(&archive);

    let out = fleet.cli(&[
        "install",
        "tree-a,tree-b",
        "tree",
        "--artifact",
        archive.to_str().unwrap(),
        "--exec",
        "{artifact}/bin/app",
        "--start",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for r in results(&out.json()) {
        assert_eq!(r["data"]["change"], "created", "{r}");
    }
    for (h, sd) in hosts.iter().zip(&managers) {
        let tree = fleet
            .host_dir(h)
            .join("state/artifacts")
            .join(format!("{digest}.d"));
        assert!(tree.join("bin/app").is_file(), "{h}: {}", tree.display());
        let unit = std::fs::read_to_string(sd.unit_dir().join("gearmq-tree.service")).unwrap();
        assert!(
            unit.contains(&format!("{}/bin/app", tree.display())),
            "{unit}"
        );
        wait_until("the tree's program runs", Duration::from_secs(10), || {
            fleet
                .cli(&["logs", h, "tree", "--json"])
                .stdout
                .contains("running tree-v1")
        });
    }

    // A path that climbs out of the tree is refused before anything is signed.
    let out = fleet.cli(&[
        "install",
        "tree-a",
        "tree2",
        "--artifact",
        archive.to_str().unwrap(),
        "--exec",
        "{artifact}/../bin/sh",
    ]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("exec"), "{}", out.stderr);
}
