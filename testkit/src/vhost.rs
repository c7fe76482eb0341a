//! A vhost of a test's own: on the shared development broker (127.0.0.1:5672) or on a
//! [`BrokerNode`] of the tests' own, deleted on drop, pass or fail.

use crate::node::BrokerNode;
use anyhow::{Context, Result, bail};
use std::process::Command;
use std::sync::Arc;

/// Address of the shared development broker.
pub const BROKER: &str = "127.0.0.1:5672";

/// Runs `rabbitmqctl -q <args>` against the shared broker and returns its output;
/// panics with its stderr if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    try_rabbitmqctl(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `rabbitmqctl -q <args>` against the shared broker; its output, or why it failed.
pub fn try_rabbitmqctl(args: &[&str]) -> Result<String> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("cannot run rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node's definitions (`export_definitions - --format json`, run by `ctl` with these
/// arguments), parsed. Twice in full CI runs, on the shared broker and on a node of a
/// test's own, RabbitMQ 3.10's rabbitmqctl exited 0 having printed something that is
/// not JSON (`{` and then no string key); alone or under vhost churn it did not happen
/// again. It is asked again (three tries, 500 ms apart); what it printed goes to stderr,
/// and into the panic if it never answers JSON.
pub fn export_definitions(ctl: &dyn Fn(&[&str]) -> Result<String>) -> serde_json::Value {
    let mut printed = Vec::new();
    loop {
        let out = ctl(&["export_definitions", "-", "--format", "json"])
            .unwrap_or_else(|e| panic!("export_definitions: {e:#}"));
        match serde_json::from_str(out.trim()) {
            Ok(v) => {
                if !printed.is_empty() {
                    eprintln!("export_definitions answered JSON after: {printed:?}");
                }
                return v;
            }
            Err(e) if printed.len() < 2 => {
                let head: String = out.chars().take(300).collect();
                eprintln!("export_definitions printed no JSON ({e}): {head}");
                printed.push(format!("{e}: {head}"));
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => {
                let head: String = out.chars().take(300).collect();
                panic!("export_definitions gives no JSON: {e}: {head}; earlier: {printed:?}")
            }
        }
    }
}

/// A vhost of its own, deleted on drop.
pub struct Vhost {
    /// Its name.
    pub name: String,
    /// The node it lives on; `None`: the shared broker.
    node: Option<Arc<BrokerNode>>,
}

impl Vhost {
    /// Creates `gearmq-t-<tag>-<random>` on the shared broker and lets guest use it.
    pub fn new(tag: &str) -> Vhost {
        let v = Vhost {
            name: format!("gearmq-t-{tag}-{:08x}", crate::rand_u32()),
            node: None,
        };
        v.ctl(&["add_vhost", &v.name]);
        v.ctl(&["set_permissions", "-p", &v.name, "guest", ".*", ".*", ".*"]);
        v
    }

    /// Creates `gearmq-t-<tag>-<random>` on a plain `node` (on a cluster, once is
    /// enough) and lets guest use it.
    pub fn on(node: &Arc<BrokerNode>, tag: &str) -> Vhost {
        let v = Vhost::adopt(node, format!("gearmq-t-{tag}-{:08x}", crate::rand_u32()));
        v.ctl(&["add_vhost", &v.name]);
        v.ctl(&["set_permissions", "-p", &v.name, "guest", ".*", ".*", ".*"]);
        v
    }

    /// A vhost `name` on `node` that someone else creates (`gearmq init --provision`),
    /// deleted on drop all the same.
    pub(crate) fn adopt(node: &Arc<BrokerNode>, name: String) -> Vhost {
        Vhost {
            name,
            node: Some(node.clone()),
        }
    }

    /// The node it lives on; `None`: the shared broker.
    pub fn node(&self) -> Option<&Arc<BrokerNode>> {
        self.node.as_ref()
    }

    /// Its AMQP URL: as guest on the shared broker or a plain node, TLS + EXTERNAL on a
    /// TLS node.
    pub fn url(&self) -> String {
        match &self.node {
            None => format!("amqp://guest:guest@{BROKER}/{}", self.name),
            Some(n) if n.is_tls() => n.amqps_url(&self.name),
            Some(n) => n.url(&self.name),
        }
    }

    /// Runs `rabbitmqctl -q <args>` against its broker; panics if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        match &self.node {
            None => rabbitmqctl(args),
            Some(n) => {
                let mut all = vec!["-q"];
                all.extend_from_slice(args);
                n.ctl(&all).unwrap_or_else(|e| panic!("{e:#}"))
            }
        }
    }

    /// Every queue of the vhost with its ready and unacknowledged messages.
    pub fn queues(&self) -> Vec<QueueCounts> {
        let out = self.ctl(&[
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some(QueueCounts {
                    name: it.next()?.to_string(),
                    ready: it.next()?.parse().ok()?,
                    unacked: it.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// `queue`'s counts; `None` if it does not exist.
    pub fn queue(&self, queue: &str) -> Option<QueueCounts> {
        self.queues().into_iter().find(|q| q.name == queue)
    }

    /// Messages (ready + unacked) in `queue`; panics if it does not exist.
    pub fn queue_messages(&self, queue: &str) -> u64 {
        let (ready, unacked) = self.queue_counts(queue);
        ready + unacked
    }

    /// Messages ready and unacknowledged in `queue`; panics if it does not exist.
    pub fn queue_counts(&self, queue: &str) -> (u64, u64) {
        match self.queue(queue) {
            Some(q) => (q.ready, q.unacked),
            None => panic!("queue {queue} not found in {:?}", self.queues()),
        }
    }

    /// Closes every client connection to the vhost (a dropped network, as the broker
    /// does it).
    pub fn close_connections(&self, reason: &str) {
        self.ctl(&["close_all_connections", "--vhost", &self.name, reason]);
    }
}

/// A queue and its messages, as the broker counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCounts {
    /// The queue's name.
    pub name: String,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
}

impl QueueCounts {
    /// Ready and unacknowledged together.
    pub fn messages(&self) -> u64 {
        self.ready + self.unacked
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        // A stopped node has nothing left to delete: the error is expected then.
        let _ = match &self.node {
            None => try_rabbitmqctl(&["delete_vhost", &self.name]),
            Some(n) => n.ctl(&["delete_vhost", &self.name]),
        };
    }
}

/// Broker users are shared by every vhost of the node: a test's names carry a random
/// prefix of its own, and the users are deleted on drop, pass or fail.
pub struct BrokerUsers {
    prefix: String,
    made: Vec<String>,
}

impl BrokerUsers {
    /// Names with a random prefix of their own.
    pub fn new() -> BrokerUsers {
        BrokerUsers {
            prefix: format!("pv{:06x}", crate::rand_u32() & 0xff_ffff),
            made: Vec::new(),
        }
    }

    /// `<prefix>-<name>`, deleted from the broker at the end.
    pub fn name(&mut self, name: &str) -> String {
        let n = format!("{}-{name}", self.prefix);
        self.made.push(n.clone());
        n
    }

    /// Whether any broker user carries this test's prefix.
    pub fn any_on_broker(&self) -> Vec<String> {
        rabbitmqctl(&["list_users", "--formatter", "json"])
            .lines()
            .flat_map(|l| l.split('"'))
            .filter(|w| w.starts_with(&format!("{}-", self.prefix)))
            .map(String::from)
            .collect()
    }
}

impl Default for BrokerUsers {
    fn default() -> Self {
        BrokerUsers::new()
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        for u in &self.made {
            // Not every name was made a broker user: a missing one is no failure.
            let _ = try_rabbitmqctl(&["delete_user", u]);
        }
    }
}
