//! One host under test: a real agent `web1` on a vhost of its own, configured by hand
//! from a [`Pki`] the test plays the issuer of, optionally managing units in a real
//! `systemd --user` of its own, and an operator `ops` playing the orchestrator with
//! raw broker access.

use crate::agent::Agent;
use crate::agent_files::AgentFiles;
use crate::pki::{Identity, Pki};
use crate::raw::RawCaller;
use crate::systemd::UserSystemd;
use crate::vhost::Vhost;
use gearmq_schemas::{Reply, Request, Role, Status};

/// How an [`AgentWorld`] is set up: [`AgentWorld::builder`], then
/// [`AgentWorldBuilder::start`].
#[derive(Default)]
pub struct AgentWorldBuilder {
    limits: String,
    systemd: Option<String>,
    section: String,
    ops_actions: Vec<String>,
    env: Vec<(String, String)>,
    tail: String,
    journal: bool,
}

impl AgentWorldBuilder {
    /// Lines of the agent config's `[limits]`.
    pub fn limits(mut self, lines: &str) -> Self {
        self.limits = lines.to_string();
        self
    }

    /// A `systemd --user` of the world's own for the agent's units, with `extra` lines
    /// in its `[systemd]` section (and `action_timeout = "20s"` in `[limits]` unless
    /// limits are given).
    pub fn systemd(mut self, extra: &str) -> Self {
        self.systemd = Some(extra.to_string());
        self
    }

    /// Like [`systemd`](Self::systemd), with a journald of the manager's own and the
    /// agent set to `output = "journal"` reading it.
    pub fn systemd_with_journal(mut self, extra: &str) -> Self {
        self.systemd = Some(extra.to_string());
        self.journal = true;
        self
    }

    /// `body` as the `[systemd]` section, no manager started (a bus that is not there).
    pub fn systemd_section(mut self, body: &str) -> Self {
        self.section = body.to_string();
        self
    }

    /// The actions `ops` may request (default: ping).
    pub fn ops_actions(mut self, actions: &[&str]) -> Self {
        self.ops_actions = actions.iter().map(|a| a.to_string()).collect();
        self
    }

    /// TOML appended to the agent config's end (tables such as `[[existing]]`).
    pub fn config_tail(mut self, toml: &str) -> Self {
        self.tail = toml.to_string();
        self
    }

    /// Extra environment of the agent (config overrides, fault seams).
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Writes the files, starts the agent (ready) and connects `ops`.
    pub async fn start(self) -> AgentWorld {
        let systemd = self.systemd.as_ref().map(|_| match self.journal {
            true => UserSystemd::start_with_journal(),
            false => UserSystemd::start(),
        });
        let vhost = Vhost::new("agent");
        let pki = Pki::new();
        let host = pki.identity("web1", Role::Host, &[]);
        let actions: Vec<&str> = match self.ops_actions.is_empty() {
            true => vec!["ping"],
            false => self.ops_actions.iter().map(String::as_str).collect(),
        };
        let ops = pki.identity("ops", Role::Operator, &actions);
        let (limits, section) = match (&systemd, &self.systemd) {
            (Some(sd), Some(extra)) => {
                let limits = match self.limits.is_empty() {
                    true => "action_timeout = \"20s\"".to_string(),
                    false => self.limits.clone(),
                };
                let journal = match self.journal {
                    true => format!(
                        "output = \"journal\"\njournal_dir = \"{}\"\n",
                        sd.journal_dir().display()
                    ),
                    false => String::new(),
                };
                (limits, format!("{}{journal}{extra}\n", sd.agent_section()))
            }
            _ => (self.limits.clone(), self.section.clone()),
        };
        let files = AgentFiles::write(&vhost.url(), &pki, &host, &limits, &section);
        if !self.tail.is_empty() {
            files.edit_config(|t| format!("{t}\n{}\n", self.tail));
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let agent = Agent::start_with(&files.config, &[], &env);
        let ops = RawCaller::connect(&vhost.url(), ops).await;
        AgentWorld {
            pki,
            host,
            ops,
            files,
            agent,
            systemd,
            vhost,
        }
    }
}

/// One running host under test.
pub struct AgentWorld {
    /// The issuer the test plays.
    pub pki: Pki,
    /// The host `web1`.
    pub host: Identity,
    /// The operator `ops`, playing the orchestrator.
    pub ops: RawCaller,
    /// The agent's files.
    pub files: AgentFiles,
    /// The agent.
    pub agent: Agent,
    /// The user manager of the agent's units, if asked for.
    pub systemd: Option<UserSystemd>,
    /// The vhost (last, so that it outlives the connections during drop).
    pub vhost: Vhost,
}

impl AgentWorld {
    /// An agent with default limits, no systemd, and `ops` allowed ping.
    pub async fn start() -> AgentWorld {
        AgentWorld::builder().start().await
    }

    /// A world to set up.
    pub fn builder() -> AgentWorldBuilder {
        AgentWorldBuilder::default()
    }

    /// The host's name, as in its routing key `host.<name>`.
    pub fn host_name(&self) -> &str {
        self.host.name.as_str()
    }

    /// The world's user manager; panics if it was set up without one.
    pub fn systemd(&self) -> &UserSystemd {
        self.systemd.as_ref().expect("a world with systemd")
    }

    /// A ping from `ops` to the host, valid for a minute (unsigned).
    pub fn ping(&self) -> Request {
        self.ops.ping(&[&self.host.name])
    }

    /// `req` signed by `ops` and sent to the host (routed and confirmed).
    pub async fn send(&self, req: &Request) {
        self.ops.send(&self.ops.seal(req), self.host_name()).await;
    }

    /// The next reply on `ops`' queue, opened against the world's issuer.
    pub async fn reply(&mut self) -> Reply {
        let d = self.ops.delivery().await;
        self.pki.open_reply(&d.data).body().clone()
    }

    /// A caller `name` as `role` allowed `actions`, issued by the world's issuer, with
    /// a reply queue of its own.
    pub async fn caller(&self, name: &str, role: Role, actions: &[&str]) -> RawCaller {
        let id = self.pki.identity(name, role, actions);
        RawCaller::connect(&self.vhost.url(), id).await
    }

    /// `action` with `args` from `ops`, and its final reply (verified).
    pub async fn call<A: serde::Serialize>(&mut self, action: &str, args: &A) -> Reply {
        let args = gearmq_schemas::codec::encode(args);
        self.ops
            .call_verified(&self.pki, &self.host.name, action, args)
            .await
    }

    /// Sends a valid ping and checks the agent answers it with status ok.
    pub async fn assert_ping_ok(&mut self) {
        let req = self.ping();
        self.send(&req).await;
        let reply = self.reply().await;
        assert_eq!(reply.request_id, req.id);
        assert_eq!(reply.status, Status::Ok, "{:?}", reply.error);
    }

    /// Starts the agent again on the same files (after a kill or an exit), with `env`.
    pub fn start_agent(&mut self, env: &[(&str, &str)]) {
        self.agent.kill();
        self.agent = Agent::start_with(&self.files.config, &[], env);
    }
}
