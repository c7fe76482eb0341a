//! Broker provisioning: the RabbitMQ definitions that give every host and operator
//! exactly the rights DESIGN.md's broker section lists, and nothing more.
//!
//! Pure: builds a definitions document (the format `rabbitmqctl import_definitions`
//! reads) and compares a broker's state with it. Names are regex-escaped, never
//! `{username}`-expanded; no user gets the `impersonator` tag.

use base64::Engine;
use gearmq_schemas::Name;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Queue type of the per-host queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// One node.
    Classic,
    /// A cluster: replicated, always durable.
    Quorum,
}

impl QueueType {
    fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// What to provision.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The vhost.
    pub vhost: String,
    /// Enrolled hosts.
    pub hosts: Vec<Name>,
    /// Operators / orchestrators.
    pub operators: Vec<Name>,
    /// Hosts that may originate delegated requests.
    pub delegators: Vec<Name>,
    /// Queue type for host queues.
    pub queue_type: QueueType,
    /// Password per user (hosts and operators), for brokers that log in with passwords;
    /// users without one can only log in by certificate (EXTERNAL).
    pub passwords: BTreeMap<String, String>,
    /// Most messages a host queue holds.
    pub host_queue_max_length: u64,
    /// Deliveries before a poison request is dead-lettered (quorum queues).
    pub delivery_limit: u64,
}

/// `regex::escape` for the broker's regexes (Erlang re, PCRE-like).
pub fn escape(s: &str) -> String {
    regex::escape(s)
}

/// RabbitMQ's `rabbit_password_hashing_sha256` hash:
/// base64(salt ‖ SHA-256(salt ‖ password)). The salt is derived from the user and the
/// password, so the same password gives the same definitions (provisioning twice
/// changes nothing) while equal passwords of two users still hash apart.
pub fn password_hash(user: &str, password: &str) -> String {
    let seed = gearmq_schemas::sha256(format!("gearmq-salt\0{user}\0{password}").as_bytes());
    let salt = &seed[..4];
    let mut input = salt.to_vec();
    input.extend_from_slice(password.as_bytes());
    let digest = gearmq_schemas::sha256(&input);
    let mut out = salt.to_vec();
    out.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The permissions (configure, write, read) of a host.
pub fn host_permissions(host: &Name) -> (String, String, String) {
    (
        "^$".into(),
        "^gearmq\\.replies$".into(),
        format!("^gearmq\\.host\\.{}$", escape(host.as_str())),
    )
}

/// The permissions of a delegating host: a host's, plus publishing requests and its own
/// reply queues.
pub fn delegator_permissions(host: &Name) -> (String, String, String) {
    let h = escape(host.as_str());
    (
        format!("^gearmq\\.reply\\.{h}\\."),
        format!("^(gearmq\\.replies|gearmq\\.requests|gearmq\\.reply\\.{h}\\..*)$"),
        format!("^(gearmq\\.host\\.{h}|gearmq\\.replies|gearmq\\.reply\\.{h}\\..*)$"),
    )
}

/// The permissions of an operator / orchestrator.
pub fn operator_permissions(op: &Name) -> (String, String, String) {
    let o = escape(op.as_str());
    (
        format!("^gearmq\\.reply\\.{o}\\."),
        format!("^(gearmq\\.requests|gearmq\\.reply\\.{o}\\..*)$"),
        format!("^(gearmq\\.replies|gearmq\\.reply\\.{o}\\..*)$"),
    )
}

fn perm(user: &str, vhost: &str, p: (String, String, String)) -> Value {
    json!({"user": user, "vhost": vhost, "configure": p.0, "write": p.1, "read": p.2})
}

fn topic(user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> Value {
    json!({"user": user, "vhost": vhost, "exchange": exchange, "write": write, "read": read})
}

/// The definitions document for `plan`.
pub fn definitions(plan: &Plan) -> Value {
    let v = plan.vhost.as_str();
    let mut users = Vec::new();
    let mut permissions = Vec::new();
    let mut topic_permissions = Vec::new();
    let user = |name: &str| {
        json!({
            "name": name,
            "password_hash": plan.passwords.get(name).map(|p| password_hash(name, p)).unwrap_or_default(),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
            "limits": {},
        })
    };
    for h in &plan.hosts {
        users.push(user(h.as_str()));
        let delegator = plan.delegators.contains(h);
        let hq = escape(h.as_str());
        if delegator {
            permissions.push(perm(h.as_str(), v, delegator_permissions(h)));
            // Requests only to single hosts, never the `all` route.
            topic_permissions.push(topic(h.as_str(), v, "gearmq.requests", "^host\\.", "^$"));
            topic_permissions.push(topic(
                h.as_str(),
                v,
                "gearmq.replies",
                "^gearmq\\.reply\\.",
                &format!("^gearmq\\.reply\\.{hq}\\."),
            ));
        } else {
            permissions.push(perm(h.as_str(), v, host_permissions(h)));
            topic_permissions.push(topic(
                h.as_str(),
                v,
                "gearmq.replies",
                "^gearmq\\.reply\\.",
                "^$",
            ));
        }
    }
    for o in &plan.operators {
        users.push(user(o.as_str()));
        permissions.push(perm(o.as_str(), v, operator_permissions(o)));
        let oq = escape(o.as_str());
        topic_permissions.push(topic(
            o.as_str(),
            v,
            "gearmq.requests",
            "^(host\\..+|all)$",
            "^$",
        ));
        topic_permissions.push(topic(
            o.as_str(),
            v,
            "gearmq.replies",
            "^$",
            &format!("^gearmq\\.reply\\.{oq}\\."),
        ));
    }
    let exchange = |name: &str, kind: &str| {
        json!({"name": name, "vhost": v, "type": kind, "durable": true,
               "auto_delete": false, "internal": false, "arguments": {}})
    };
    let mut queues = vec![json!({"name": "gearmq.dead", "vhost": v, "durable": true,
        "auto_delete": false, "arguments": {"x-queue-type": plan.queue_type.as_str()}})];
    let mut bindings = vec![json!({"source": "gearmq.dead", "vhost": v,
        "destination": "gearmq.dead", "destination_type": "queue", "routing_key": "",
        "arguments": {}})];
    for h in &plan.hosts {
        let q = format!("gearmq.host.{h}");
        queues.push(
            json!({"name": q, "vhost": v, "durable": true, "auto_delete": false,
            "arguments": {"x-queue-type": plan.queue_type.as_str()}}),
        );
        for key in [format!("host.{h}"), "all".to_string()] {
            bindings.push(
                json!({"source": "gearmq.requests", "vhost": v, "destination": q,
                "destination_type": "queue", "routing_key": key, "arguments": {}}),
            );
        }
    }
    let mut host_policy = json!({
        "dead-letter-exchange": "gearmq.dead",
        "max-length": plan.host_queue_max_length,
    });
    if plan.queue_type == QueueType::Quorum {
        host_policy["delivery-limit"] = json!(plan.delivery_limit);
    }
    let policies = vec![
        json!({"vhost": v, "name": "gearmq-host-queues", "pattern": "^gearmq\\.host\\.",
               "apply-to": "queues", "priority": 10, "definition": host_policy}),
        json!({"vhost": v, "name": "gearmq-dead", "pattern": "^gearmq\\.dead$",
               "apply-to": "queues", "priority": 10,
               "definition": {"max-length": 10000, "message-ttl": 604_800_000u64}}),
    ];
    json!({
        "users": users,
        "vhosts": [{"name": v}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": [exchange("gearmq.requests", "topic"), exchange("gearmq.replies", "topic"),
                      exchange("gearmq.dead", "fanout")],
        "queues": queues,
        "bindings": bindings,
        "policies": policies,
    })
}

/// One difference between the broker and the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift(pub String);

/// Compares what the broker reports (`rabbitmqctl ... --formatter json` outputs) with
/// the definitions: users, tags, permissions, topic permissions, queues, bindings.
pub fn compare(expected: &Value, actual: &BrokerState) -> Vec<Drift> {
    let mut out = Vec::new();
    let wanted_users: Vec<&str> = expected["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    for u in &wanted_users {
        match actual.users.get(*u) {
            None => out.push(Drift(format!("user {u} is missing"))),
            Some(tags) if !tags.is_empty() => {
                out.push(Drift(format!("user {u} has tags {tags:?} (expected none)")))
            }
            _ => {}
        }
    }
    for p in expected["permissions"].as_array().into_iter().flatten() {
        let u = p["user"].as_str().unwrap_or_default();
        let want = (
            p["configure"].as_str().unwrap_or_default().to_string(),
            p["write"].as_str().unwrap_or_default().to_string(),
            p["read"].as_str().unwrap_or_default().to_string(),
        );
        match actual.permissions.get(u) {
            None => out.push(Drift(format!("user {u} has no permissions on the vhost"))),
            Some(have) if *have != want => out.push(Drift(format!(
                "permissions of {u} are {have:?}, expected {want:?}"
            ))),
            _ => {}
        }
    }
    for t in expected["topic_permissions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = (
            t["user"].as_str().unwrap_or_default().to_string(),
            t["exchange"].as_str().unwrap_or_default().to_string(),
        );
        let want = (
            t["write"].as_str().unwrap_or_default().to_string(),
            t["read"].as_str().unwrap_or_default().to_string(),
        );
        match actual.topic_permissions.get(&key) {
            None => out.push(Drift(format!(
                "topic permission of {} on {} is missing",
                key.0, key.1
            ))),
            Some(have) if *have != want => out.push(Drift(format!(
                "topic permission of {} on {} is {have:?}, expected {want:?}",
                key.0, key.1
            ))),
            _ => {}
        }
    }
    for q in expected["queues"].as_array().into_iter().flatten() {
        let name = q["name"].as_str().unwrap_or_default();
        if !actual.queues.iter().any(|x| x == name) {
            out.push(Drift(format!("queue {name} is missing")));
        }
    }
    for b in expected["bindings"].as_array().into_iter().flatten() {
        let key = (
            b["source"].as_str().unwrap_or_default().to_string(),
            b["destination"].as_str().unwrap_or_default().to_string(),
            b["routing_key"].as_str().unwrap_or_default().to_string(),
        );
        if !actual.bindings.contains(&key) {
            out.push(Drift(format!(
                "binding {} -> {} ({}) is missing",
                key.0, key.1, key.2
            )));
        }
    }
    out
}

/// What a broker reports, reduced to what provisioning controls.
#[derive(Debug, Clone, Default)]
pub struct BrokerState {
    /// User → tags.
    pub users: BTreeMap<String, Vec<String>>,
    /// User → (configure, write, read) on the vhost.
    pub permissions: BTreeMap<String, (String, String, String)>,
    /// (user, exchange) → (write, read).
    pub topic_permissions: BTreeMap<(String, String), (String, String)>,
    /// Queue names.
    pub queues: Vec<String>,
    /// (source, destination, routing key).
    pub bindings: Vec<(String, String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            vhost: "/".into(),
            hosts: vec![Name::new("web1").unwrap(), Name::new("a").unwrap()],
            operators: vec![Name::new("ops").unwrap()],
            delegators: vec![Name::new("a").unwrap()],
            queue_type: QueueType::Classic,
            passwords: BTreeMap::new(),
            host_queue_max_length: 10_000,
            delivery_limit: 5,
        }
    }

    #[test]
    fn hosts_get_only_their_own_queue_and_reply_publishing() {
        let d = definitions(&plan());
        let web1 = d["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == "web1")
            .unwrap();
        assert_eq!(web1["configure"], "^$");
        assert_eq!(web1["write"], "^gearmq\\.replies$");
        assert_eq!(web1["read"], "^gearmq\\.host\\.web1$");
        let text = d.to_string();
        assert!(!text.contains("{username}"));
        assert!(!text.contains("impersonator"));
    }

    #[test]
    fn delegators_may_request_single_hosts_only() {
        let d = definitions(&plan());
        let t = d["topic_permissions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["user"] == "a" && t["exchange"] == "gearmq.requests")
            .unwrap();
        assert_eq!(t["write"], "^host\\.");
        assert!(
            !regex::Regex::new(t["write"].as_str().unwrap())
                .unwrap()
                .is_match("all")
        );
    }

    #[test]
    fn password_hash_matches_rabbitmq_format_and_is_stable() {
        let h = password_hash("web1", "secret");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&h)
            .unwrap();
        assert_eq!(raw.len(), 36);
        let mut input = raw[..4].to_vec();
        input.extend_from_slice(b"secret");
        assert_eq!(&raw[4..], &gearmq_schemas::sha256(&input));
        assert_eq!(h, password_hash("web1", "secret"));
        assert_ne!(h, password_hash("web2", "secret"));
    }

    #[test]
    fn compare_reports_a_hand_edited_permission() {
        let d = definitions(&plan());
        let mut state = BrokerState::default();
        for u in ["web1", "a", "ops"] {
            state.users.insert(u.into(), vec![]);
        }
        for p in d["permissions"].as_array().unwrap() {
            state.permissions.insert(
                p["user"].as_str().unwrap().into(),
                (
                    p["configure"].as_str().unwrap().into(),
                    p["write"].as_str().unwrap().into(),
                    p["read"].as_str().unwrap().into(),
                ),
            );
        }
        for t in d["topic_permissions"].as_array().unwrap() {
            state.topic_permissions.insert(
                (
                    t["user"].as_str().unwrap().into(),
                    t["exchange"].as_str().unwrap().into(),
                ),
                (
                    t["write"].as_str().unwrap().into(),
                    t["read"].as_str().unwrap().into(),
                ),
            );
        }
        for q in d["queues"].as_array().unwrap() {
            state.queues.push(q["name"].as_str().unwrap().into());
        }
        for b in d["bindings"].as_array().unwrap() {
            state.bindings.push((
                b["source"].as_str().unwrap().into(),
                b["destination"].as_str().unwrap().into(),
                b["routing_key"].as_str().unwrap().into(),
            ));
        }
        assert!(compare(&d, &state).is_empty());
        state.permissions.get_mut("web1").unwrap().2 = ".*".into();
        let drift = compare(&d, &state);
        assert_eq!(drift.len(), 1);
        assert!(drift[0].0.contains("web1"), "{drift:?}");
    }
}
