//! A fleet made by the real `gearmq init` in a temp dir, on a vhost of its own: on the
//! shared broker by default; provisioned (`--provision`), with delegators, on a TLS
//! node (every config switched to TLS + EXTERNAL with a client certificate named like
//! its broker user), or on a plain node or cluster whose URLs every config lists, as
//! its [`FleetBuilder`] says.

use crate::agent::Agent;
use crate::cli::{CliOutput, run_cli_env};
use crate::node::{BrokerNode, issue_client_cert};
use crate::pki::{Identity, Pki};
use crate::systemd::UserSystemd;
use crate::vhost::Vhost;
use gearmq_orchestrator::{Call, OrchestratorConfig};
use gearmq_schemas::{Role, SigningKey};
use lapin::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a fleet is made: [`Fleet::builder`], then [`FleetBuilder::init`].
pub struct FleetBuilder {
    tag: String,
    hosts: Vec<String>,
    operator: Option<String>,
    delegators: Vec<String>,
    provision: bool,
    tls: Option<Arc<BrokerNode>>,
    vhost: Option<Vhost>,
    urls: Vec<String>,
}

impl FleetBuilder {
    /// `--operator NAME` (default `ops`). Broker users are shared by every vhost of a
    /// broker: provisioned fleets give each test names of its own.
    pub fn operator(mut self, name: &str) -> Self {
        self.operator = Some(name.to_string());
        self
    }

    /// `--delegators a,b`: those hosts may call others, and get a `client.toml`.
    pub fn delegators(mut self, hosts: &[&str]) -> Self {
        self.delegators = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// `--provision`: init makes the broker users, permissions and topology too.
    pub fn provision(mut self) -> Self {
        self.provision = true;
        self
    }

    /// On a TLS node (`--provision --node NODE`), every config then switched to TLS +
    /// EXTERNAL; the vhost and the fleet's broker users are deleted on drop.
    pub fn tls(mut self, node: Arc<BrokerNode>) -> Self {
        self.tls = Some(node);
        self.provision = true;
        self
    }

    /// On `vhost` (of a plain node or cluster) instead of a new one on the shared
    /// broker; every config lists `urls` (tried in order) and reconnects within 1 s.
    pub fn on(mut self, vhost: Vhost, urls: &[String]) -> Self {
        self.vhost = Some(vhost);
        self.urls = urls.to_vec();
        self
    }

    /// Runs `gearmq init` and returns the fleet.
    pub fn init(self) -> Fleet {
        let operator = self.operator.clone().unwrap_or_else(|| "ops".into());
        let vhost = match (&self.tls, self.vhost) {
            (Some(node), _) => {
                Vhost::adopt(node, format!("gq-{}-{:08x}", self.tag, crate::rand_u32()))
            }
            (None, Some(v)) => v,
            (None, None) => Vhost::new(&self.tag),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("gearmq-{}-", self.tag))
            .tempdir()
            .expect("tempdir");
        let fleet = Fleet {
            dir,
            hosts: self.hosts,
            operator,
            tls: self.tls.is_some(),
            vhost,
        };
        // On a TLS node init writes user:password@ URLs (no query) that the TLS
        // rewrite below replaces.
        let broker = match &self.tls {
            Some(node) => format!(
                "amqps://127.0.0.1:{}/{}",
                node.amqps_port(),
                fleet.vhost.name
            ),
            None => self
                .urls
                .first()
                .cloned()
                .unwrap_or_else(|| fleet.vhost.url()),
        };
        let dir_arg = fleet.path().display().to_string();
        let hosts_arg = fleet.hosts.join(",");
        let delegators_arg = self.delegators.join(",");
        let mut args = vec!["init", "--dir", &dir_arg, "--hosts", &hosts_arg];
        args.extend(["--broker", &broker]);
        if self.operator.is_some() {
            args.extend(["--operator", &fleet.operator]);
        }
        if !self.delegators.is_empty() {
            args.extend(["--delegators", &delegators_arg]);
        }
        if self.provision {
            args.push("--provision");
        }
        if let Some(node) = &self.tls {
            args.extend(["--node", &node.node]);
        }
        let out = fleet.run(&args);
        assert_eq!(out.code, 0, "gearmq {}: {}", args.join(" "), out.stderr);
        if self.tls.is_some() {
            for h in &fleet.hosts {
                fleet.use_tls(&fleet.agent_toml(h), h, "user_id");
            }
            for h in &self.delegators {
                fleet.use_tls(&fleet.host_dir(h).join("client.toml"), h, "user");
            }
            fleet.use_tls(&fleet.orchestrator_toml(), &fleet.operator, "user");
        }
        if !self.urls.is_empty() {
            for h in &fleet.hosts {
                edit_file(&fleet.agent_toml(h), |t| {
                    with_urls(&t, &self.urls, "reconnect_max = \"1s\"\n")
                });
            }
            edit_file(&fleet.orchestrator_toml(), |t| {
                let fast = "reconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n";
                with_urls(&t, &self.urls, fast)
            });
        }
        fleet
    }
}

/// A fleet made by `gearmq init`: its directory, vhost, hosts and operator.
pub struct Fleet {
    /// The fleet directory.
    pub dir: tempfile::TempDir,
    /// Host names.
    pub hosts: Vec<String>,
    /// The operator's name.
    pub operator: String,
    /// Whether its configs speak TLS + EXTERNAL to a TLS node.
    tls: bool,
    /// The vhost it uses (dropped after the agents that the test holds).
    pub vhost: Vhost,
}

impl Fleet {
    /// `gearmq init --hosts <hosts>` on a new vhost of the shared broker.
    pub fn init(tag: &str, hosts: &[&str]) -> Fleet {
        Fleet::builder(tag, hosts).init()
    }

    /// A fleet of `hosts`, named after `tag` (vhost and directory), to be made as the
    /// builder says.
    pub fn builder(tag: &str, hosts: &[&str]) -> FleetBuilder {
        FleetBuilder {
            tag: tag.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            operator: None,
            delegators: Vec::new(),
            provision: false,
            tls: None,
            vhost: None,
            urls: Vec::new(),
        }
    }

    /// The fleet directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `DIR/orchestrator.toml`.
    pub fn orchestrator_toml(&self) -> PathBuf {
        self.path().join("orchestrator.toml")
    }

    /// `DIR/hosts/<host>`.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.path().join("hosts").join(host)
    }

    /// `DIR/hosts/<host>/agent.toml`.
    pub fn agent_toml(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("agent.toml")
    }

    /// `DIR/hosts/<host>/state/audit.log`: the agent's audit log.
    pub fn agent_audit_log(&self, host: &str) -> PathBuf {
        self.host_dir(host).join("state").join("audit.log")
    }

    /// `DIR/audit.log`: the orchestrator's (and the CLI's) audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.path().join("audit.log")
    }

    /// Appends `toml` (whole sections) to `host`'s agent.toml.
    pub fn append_agent_toml(&self, host: &str, toml: &str) {
        edit_file(&self.agent_toml(host), |t| format!("{t}\n{toml}\n"));
    }

    /// Rewrites the orchestrator's config with `edit`.
    pub fn edit_orchestrator_toml(&self, edit: impl FnOnce(String) -> String) {
        edit_file(&self.orchestrator_toml(), edit);
    }

    /// The node a TLS fleet lives on; panics for a fleet on the shared broker.
    pub fn node(&self) -> &Arc<BrokerNode> {
        self.vhost
            .node()
            .expect("a fleet on the shared broker has no node of its own")
    }

    /// The fleet's broker URL (TLS + EXTERNAL on a TLS node).
    pub fn url(&self) -> String {
        self.vhost.url()
    }

    /// Starts the real agent for `host` and waits until it is ready.
    pub fn start_agent(&self, host: &str) -> Agent {
        Agent::start(&self.agent_toml(host))
    }

    /// Starts the agent for `host` with extra `env` (config overrides, fault seams).
    pub fn start_agent_with(&self, host: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_with(&self.agent_toml(host), &[], env)
    }

    /// Starts the agent for `host` managing units through `systemd` (a user manager of
    /// its own, so hosts on one machine never share units).
    pub fn start_agent_on(&self, host: &str, systemd: &UserSystemd) -> Agent {
        let env = systemd.agent_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.start_agent_with(host, &env)
    }

    /// Runs the `gearmq` CLI with `args` (on a TLS node, its rabbitmqctl reaching the
    /// node).
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let env = match (self.tls, self.vhost.node()) {
            (true, Some(node)) => node.cli_env(),
            _ => Vec::new(),
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli_env(args, &env)
    }

    /// Runs `gearmq --config DIR/orchestrator.toml <args>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let cfg = self.orchestrator_toml();
        let mut all = vec!["--config", cfg.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The orchestrator config, loaded as the library does.
    pub fn orchestrator_config(&self) -> OrchestratorConfig {
        OrchestratorConfig::load(&self.orchestrator_toml()).expect("orchestrator config")
    }

    /// `gearmq stats --host HOST --json`: the agent's counters. The 60 s are a guard,
    /// not a measure: behind a flood the request waits its turn in the host's queue (a
    /// loaded CI machine once took over 10 s to drain 10,000 refusals).
    pub fn stats(&self, host: &str) -> serde_json::Value {
        let out = self.cli(&["stats", "--host", host, "--json", "--timeout", "60s"]);
        assert_eq!(out.code, 0, "stats {host}: {}{}", out.stdout, out.stderr);
        out.json()["results"][0]["data"].clone()
    }

    /// Waits (20 s at most) until `host` has counted `more` requests as `not_target`
    /// since its stats were `before`, then checks that it counted no more than that and
    /// executed nothing but the stats calls made meanwhile (each one executed request,
    /// counted after it reads the counters). Returns its stats then.
    pub fn expect_not_target(
        &self,
        host: &str,
        before: &serde_json::Value,
        more: u64,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stats_calls = 0;
        let after = loop {
            let s = self.stats(host);
            stats_calls += 1;
            if stat(&s, "not_target") >= stat(before, "not_target") + more {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{host} counted fewer than {more} requests as not_target: {before} -> {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            stat(&after, "not_target"),
            stat(before, "not_target") + more,
            "{host}: {before} -> {after}"
        );
        assert_eq!(
            stat(&after, "executed"),
            stat(before, "executed") + stats_calls,
            "{host} executed something besides the stats calls: {before} -> {after}"
        );
        after
    }

    /// `gearmq audit verify LOG… --issuer DIR/issuer.pub <extra>`: what an auditor
    /// runs on logs of this fleet (the orchestrator's or an agent's, rotated ones first).
    pub fn verify_audit_files(&self, logs: &[&Path], extra: &[&str]) -> CliOutput {
        let issuer = self.path().join("issuer.pub");
        let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
        args.extend(logs.iter().map(|f| f.display().to_string()));
        args.extend(["--issuer".into(), issuer.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::run_cli(&args)
    }

    /// `gearmq audit verify LOG --issuer DIR/issuer.pub --json`.
    pub fn verify_audit(&self, log: &Path) -> CliOutput {
        self.verify_audit_files(&[log], &["--json"])
    }

    /// Every request the orchestrator published, exactly as sent (its audit log's
    /// `request_sent` records, oldest first): what an attacker on the broker captures.
    pub fn sent_requests(&self) -> Vec<Vec<u8>> {
        use gearmq_schemas::audit::{Entry, frames, read_record};
        // No log yet: nothing sent yet.
        let bytes = std::fs::read(self.audit_log()).unwrap_or_default();
        frames(&bytes)
            .map(|f| read_record(f.expect("frame").bytes).expect("record"))
            .filter_map(|v| match v.record.entry {
                Entry::RequestSent { request } => Some(request),
                _ => None,
            })
            .collect()
    }

    /// A host's key and credential, as its agent uses them.
    pub fn host_identity(&self, host: &str) -> Identity {
        let d = self.host_dir(host);
        Identity::load(host, &d.join("host.key"), &d.join("host.cred"))
    }

    /// The fleet's operator.
    pub fn operator(&self) -> Identity {
        let d = self.path();
        Identity::load(
            &self.operator,
            &d.join("operator.key"),
            &d.join("operator.cred"),
        )
    }

    /// The fleet's issuer key (`DIR/issuer.key`).
    pub fn issuer_key(&self) -> SigningKey {
        gearmq_io::files::load_signing_key(&self.path().join("issuer.key")).expect("issuer")
    }

    /// A new operator credential `name` allowed `actions` (none: a credential with no
    /// rights), issued by the fleet's issuer, valid for a day.
    pub fn mint_operator(&self, name: &str, actions: &[&str]) -> Identity {
        // Serials of their own, far from those init gave.
        let pki = Pki::from_issuer(self.issuer_key(), u64::from(crate::rand_u32()) + 1_000_000);
        let now = gearmq_schemas::time::now_ms();
        pki.identity_with(name, Role::Operator, actions, |c| {
            (c.not_before, c.not_after) = (now - 60_000, now + 86_400_000);
        })
    }

    /// A signed `ok` reply to `call` from `signer`'s key, naming `host` (a genuine one
    /// when they are the same, a forgery otherwise).
    pub fn reply_as(&self, signer: &str, host: &str, call: &Call) -> Vec<u8> {
        self.host_identity(signer)
            .reply(call.request_id(), call.request_digest(), host)
    }

    /// Opens an AMQP connection to the fleet's vhost (plain; see
    /// [`Fleet::connect_as`] on a TLS node).
    pub async fn amqp(&self) -> Connection {
        crate::raw::connect(&self.url()).await
    }

    /// Publishes `bytes` on `exchange` with routing `key` (and AMQP `user_id`) on a
    /// connection of its own, as anyone on the vhost could, with a confirm (see
    /// [`crate::raw::publish_confirmed`]).
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        bytes: &[u8],
        user_id: Option<&str>,
    ) -> Result<bool, String> {
        let conn = self.amqp().await;
        let r = crate::raw::publish_confirmed(&conn, exchange, key, bytes, user_id).await;
        let _ = conn.close(200, "done".into()).await;
        r
    }

    /// Publishes `bytes` unchanged to `gearmq.requests` with routing key `host.HOST` (a
    /// copy forwarded by anyone allowed to publish there); panics unless acked.
    pub async fn forward_request(&self, bytes: &[u8], host: &str) {
        let key = format!("host.{host}");
        let r = self.publish("gearmq.requests", &key, bytes, None).await;
        assert_eq!(r, Ok(true), "forwarding to {key}");
    }

    /// A client certificate for broker user `name` from the node's CA, under `DIR/tls`.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        issue_client_cert(&self.node().pki_dir(), &self.path().join("tls"), name)
    }

    /// Connects to the fleet's vhost on its TLS node as broker user `name`
    /// (certificate CN = name); panics if refused.
    pub async fn connect_as(&self, name: &str) -> Connection {
        let (c, k) = self.client_cert(name);
        self.node()
            .connect_with(&self.vhost.name, Some((&c, &k)))
            .await
            .unwrap_or_else(|e| panic!("{name} cannot connect to {}: {e}", self.vhost.name))
    }

    /// Marks the broker as provisioned in every config (the test declared the
    /// topology itself): agents and orchestrator then only check it passively.
    pub fn set_provisioned(&self) {
        let mut files: Vec<PathBuf> = self.hosts.iter().map(|h| self.agent_toml(h)).collect();
        files.push(self.orchestrator_toml());
        for p in files {
            edit_file(&p, |text| {
                assert!(text.contains("provisioned = false"), "{}", p.display());
                text.replace("provisioned = false", "provisioned = true")
            });
        }
    }

    /// Rewrites a config written by init for TLS + EXTERNAL as broker user `name`.
    fn use_tls(&self, config: &Path, name: &str, user_key: &str) {
        let (cert, key) = self.client_cert(name);
        edit_file(config, |text| {
            rewrite_section(
                &text,
                "broker",
                &self.url(),
                &[
                    ("ca_file", self.node().ca_file().display().to_string()),
                    ("cert_file", cert.display().to_string()),
                    ("key_file", key.display().to_string()),
                    (user_key, name.to_string()),
                ],
            )
        });
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A provisioned fleet's broker users outlive its vhost otherwise: on a node
        // every vhost shares them.
        if let (true, Some(node)) = (self.tls, self.vhost.node()) {
            for u in self.hosts.iter().chain(std::iter::once(&self.operator)) {
                let _ = node.ctl(&["delete_user", u]);
            }
        }
    }
}

/// Rewrites the file at `path` with `edit`.
fn edit_file(path: &Path, edit: impl FnOnce(String) -> String) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    std::fs::write(path, edit(text)).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `text` with its `urls = [...]` line replaced by `urls` and `extra` lines after it.
fn with_urls(text: &str, urls: &[String], extra: &str) -> String {
    let list = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    text.lines()
        .map(|l| {
            if l.starts_with("urls = [") {
                format!("urls = [{list}]\n{extra}")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Replaces the `urls = [...]` line of `section` in a TOML text written by `gearmq
/// init` and appends `extra` lines to that section.
fn rewrite_section(text: &str, section: &str, url: &str, extra: &[(&str, String)]) -> String {
    let mut out = String::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if current == section {
                push_extra(&mut out, extra);
            }
            current = t.trim_matches(|c| c == '[' || c == ']').to_string();
        }
        if current == section && t.starts_with("urls") {
            out.push_str(&format!("urls = [{}]\n", toml_str(url)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if current == section {
        push_extra(&mut out, extra);
    }
    out
}

fn push_extra(out: &mut String, extra: &[(&str, String)]) {
    for (k, v) in extra {
        out.push_str(&format!("{k} = {}\n", toml_str(v)));
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

/// One counter of an agent's `stats` (`executed`, `not_target`, …); panics if absent.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_section_gets_tls_keys() {
        let t =
            "name = \"a\"\n[broker]\nurls = [\"amqp://x\"]\nprovisioned = true\n[limits]\nx = 1\n";
        let o = rewrite_section(t, "broker", "amqps://h/v", &[("ca_file", "/c".into())]);
        assert_eq!(
            o,
            "name = \"a\"\n[broker]\nurls = [\"amqps://h/v\"]\nprovisioned = true\nca_file = \"/c\"\n[limits]\nx = 1\n"
        );
    }

    #[test]
    fn urls_line_lists_every_url_and_the_extra_lines() {
        let t = "[broker]\nurls = [\"amqp://a\"]\nprovisioned = false\n";
        let o = with_urls(t, &["amqp://a".into(), "amqp://b".into()], "x = 1\n");
        assert_eq!(
            o,
            "[broker]\nurls = [\"amqp://a\", \"amqp://b\"]\nx = 1\nprovisioned = false\n"
        );
    }
}
