//! Broker provisioning: the RabbitMQ definitions that give every host and operator
//! exactly the rights docs/DESIGN.md, Broker topology, lists, and nothing more.
//!
//! Pure: builds a definitions document (the format `rabbitmqctl import_definitions`
//! reads) and compares a broker's state with it. Names are regex-escaped, never
//! `{username}`-expanded; no user gets the `impersonator` tag.

pub mod descriptors;

use base64::Engine;
use gearmq_io::broker_admin::{AdminError, BrokerAdmin};
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
    /// Make the enrollment bootstrap user (`gearmq.bootstrap`, its password in
    /// `passwords`): hosts that hold its password may ask to enroll, nothing else.
    pub bootstrap: bool,
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

/// The broker regex of artifact streams (`gearmq.artifact.<sha256 hex>`), without
/// anchors: hosts read them, operators make and fill them.
pub const ARTIFACT_STREAMS: &str = "gearmq\\.artifact\\.[0-9a-f]{64}";

/// The permissions (configure, write, read) of a host: its own queue and the artifact
/// streams to read, `gearmq.replies` and `gearmq.events` to publish to (the latter
/// only under its own name: [`host_event_topic`]).
pub fn host_permissions(host: &Name) -> (String, String, String) {
    (
        "^$".into(),
        "^(gearmq\\.replies|gearmq\\.events)$".into(),
        format!(
            "^(gearmq\\.host\\.{}|{ARTIFACT_STREAMS})$",
            escape(host.as_str())
        ),
    )
}

/// The permissions of a delegating host: a host's, plus publishing requests and its own
/// reply queues.
pub fn delegator_permissions(host: &Name) -> (String, String, String) {
    let h = escape(host.as_str());
    (
        format!("^gearmq\\.reply\\.{h}\\."),
        format!("^(gearmq\\.replies|gearmq\\.events|gearmq\\.requests|gearmq\\.reply\\.{h}\\..*)$"),
        format!(
            "^(gearmq\\.host\\.{h}|gearmq\\.replies|gearmq\\.reply\\.{h}\\..*|{ARTIFACT_STREAMS})$"
        ),
    )
}

/// The permissions of an operator / orchestrator: its own reply queues; requests to
/// publish; artifact streams to declare, bind to `gearmq.artifacts` and fill;
/// enrollment requests to read and answers to publish; the events stream to read.
pub fn operator_permissions(op: &Name) -> (String, String, String) {
    let o = escape(op.as_str());
    (
        format!("^(gearmq\\.reply\\.{o}\\..*|{ARTIFACT_STREAMS})$"),
        format!(
            "^(gearmq\\.requests|gearmq\\.artifacts|gearmq\\.enroll\\.replies|gearmq\\.reply\\.{o}\\..*|{ARTIFACT_STREAMS})$"
        ),
        format!(
            "^(gearmq\\.replies|gearmq\\.events|gearmq\\.artifacts|gearmq\\.enroll\\.requests|gearmq\\.reply\\.{o}\\..*)$"
        ),
    )
}

/// The topic permission (write, read) of host `host` on `gearmq.events`: routing keys
/// `<host>.…` only, so no host can publish an event under another's name.
pub fn host_event_topic(host: &Name) -> (String, String) {
    (format!("^{}\\.", escape(host.as_str())), "^$".into())
}

/// The broker regex of enrollment reply queues, without anchors.
pub const ENROLL_REPLY_QUEUES: &str = "gearmq\\.enroll\\.reply\\.[0-9a-f]{32}";

/// The permissions of the enrollment bootstrap user: publish to `gearmq.enroll`;
/// declare, bind (to `gearmq.enroll.replies`) and read a reply queue whose name holds
/// 128 random bits. It cannot read the request queue, another host's queue or anything
/// of the fleet's traffic; a reply queue it did not make it can find only by guessing.
pub fn bootstrap_permissions() -> (String, String, String) {
    (
        format!("^{ENROLL_REPLY_QUEUES}$"),
        format!("^(gearmq\\.enroll|{ENROLL_REPLY_QUEUES})$"),
        format!("^(gearmq\\.enroll\\.replies|{ENROLL_REPLY_QUEUES})$"),
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
        let (ew, er) = host_event_topic(h);
        topic_permissions.push(topic(h.as_str(), v, "gearmq.events", &ew, &er));
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
    if plan.bootstrap {
        let b = gearmq_io::topology::ENROLL_USER;
        users.push(user(b));
        permissions.push(perm(b, v, bootstrap_permissions()));
    }
    let exchange = |name: &str, kind: &str| {
        json!({"name": name, "vhost": v, "type": kind, "durable": true,
               "auto_delete": false, "internal": false, "arguments": {}})
    };
    let mut queues = vec![json!({"name": "gearmq.dead", "vhost": v, "durable": true,
        "auto_delete": false, "arguments": {"x-queue-type": plan.queue_type.as_str()}})];
    // Enrollment: requests wait in a bounded queue only operators read.
    queues.push(
        json!({"name": "gearmq.enroll.requests", "vhost": v, "durable": true,
        "auto_delete": false, "arguments": {
            "x-max-length": gearmq_io::topology::ENROLL_QUEUE_MAX_LENGTH,
            "x-overflow": "reject-publish"}}),
    );
    // Events: one stream fed by the events exchange, read by operators.
    queues.push(json!({"name": "gearmq.events", "vhost": v, "durable": true,
        "auto_delete": false, "arguments": {
            "x-queue-type": "stream",
            "x-max-age": gearmq_io::topology::EVENTS_MAX_AGE,
            "x-max-length-bytes": gearmq_io::topology::EVENTS_MAX_BYTES,
            "x-stream-max-segment-size-bytes": gearmq_io::topology::EVENTS_SEGMENT_BYTES}}));
    let mut bindings = vec![
        json!({"source": "gearmq.events", "vhost": v,
        "destination": "gearmq.events", "destination_type": "queue", "routing_key": "#",
        "arguments": {}}),
        json!({"source": "gearmq.dead", "vhost": v,
        "destination": "gearmq.dead", "destination_type": "queue", "routing_key": "",
        "arguments": {}}),
        json!({"source": "gearmq.enroll", "vhost": v,
        "destination": "gearmq.enroll.requests", "destination_type": "queue",
        "routing_key": gearmq_io::topology::ENROLL_ROUTE, "arguments": {}}),
    ];
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
    // A full host queue refuses new requests (the publisher's confirm is a nack, so
    // the sender hears of it) instead of dropping the oldest: a flood cannot push out
    // requests already queued.
    let mut host_policy = json!({
        "dead-letter-exchange": "gearmq.dead",
        "max-length": plan.host_queue_max_length,
        "overflow": "reject-publish",
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
                      exchange("gearmq.dead", "fanout"), exchange("gearmq.artifacts", "direct"),
                      exchange("gearmq.enroll", "direct"), exchange("gearmq.enroll.replies", "direct"),
                      exchange("gearmq.events", "topic")],
        "queues": queues,
        "bindings": bindings,
        "policies": policies,
    })
}

/// Why a plan cannot be provisioned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A host and an operator with the same name would be one broker user: whichever
    /// permissions were imported last would be the other's too, and a reply's validated
    /// `user_id` would no longer say which of the two sent it.
    #[error(
        "host {name} and operator {name} share a name; a host and an operator may not, \
         as each logs in to the broker as the user of its name"
    )]
    NameClash {
        /// The shared name.
        name: Name,
    },
}

/// Refuses a name given both to a host and to an operator (`gearmq init`, `enroll`
/// and `broker provision` all ask this before writing anything).
pub fn check_names(hosts: &[Name], operators: &[Name]) -> Result<(), PlanError> {
    match operators.iter().find(|o| hosts.contains(o)) {
        Some(name) => Err(PlanError::NameClash { name: name.clone() }),
        None => Ok(()),
    }
}

/// Which way the broker differs from the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftKind {
    /// The plan has it, the broker does not.
    Missing,
    /// The broker has it, the plan does not: a right nobody provisioned.
    Extra,
    /// Both have it, with other values.
    Changed,
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriftKind::Missing => "missing",
            DriftKind::Extra => "extra",
            DriftKind::Changed => "changed",
        })
    }
}

/// One difference between the broker and the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Missing, extra or changed.
    pub kind: DriftKind,
    /// The object and its values, for a person: `user spy: not in the fleet, …`.
    pub what: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.what)
    }
}

/// A regex as it is typed to rabbitmqctl (single-quoted, backslashes as they are).
fn re(s: &str) -> String {
    format!("'{s}'")
}

fn show_permissions(p: &(String, String, String)) -> String {
    format!(
        "configure {} write {} read {}",
        re(&p.0),
        re(&p.1),
        re(&p.2)
    )
}

fn show_topic(p: &(String, String)) -> String {
    format!("write {} read {}", re(&p.0), re(&p.1))
}

/// Compares what the broker reports with what provisioning `plan` makes, both ways:
/// users, tags, permissions, topic permissions and bindings the plan names but the
/// broker lacks or holds otherwise, and — on the plan's vhost — users, tags, topic
/// permissions and bindings the plan does not name. Queues are checked for presence.
///
/// "Extra" is scoped to what can touch the fleet: a user outside the plan counts once
/// it holds permissions or topic permissions on the vhost (a broker's other users, such
/// as its administrator on other vhosts, are none of the fleet's business), unless it
/// is in `allowed_users` (the broker's own administrator, on purpose). The bindings of
/// the default exchange and each caller's reply-queue binding (`gearmq.replies` →
/// `gearmq.reply.<caller>.<instance>`, made at run time) are not extra.
pub fn compare(plan: &Plan, actual: &BrokerState, allowed_users: &[String]) -> Vec<Drift> {
    let expected = definitions(plan);
    let vhost = plan.vhost.as_str();
    let mut out = Vec::new();
    let mut push = |kind, what: String| out.push(Drift { kind, what });
    let rows = |key: &str| expected[key].as_array().cloned().unwrap_or_default();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();

    let wanted_users: std::collections::BTreeSet<String> =
        rows("users").iter().map(|u| text(u, "name")).collect();
    let allowed = |u: &str| !wanted_users.contains(u) && allowed_users.iter().any(|a| a == u);
    for u in &wanted_users {
        match actual.users.get(u) {
            None => push(DriftKind::Missing, format!("user {u}")),
            Some(tags) => {
                for t in tags {
                    push(
                        DriftKind::Extra,
                        format!("tag {t} on user {u} (fleet users have no tags)"),
                    )
                }
            }
        }
    }

    let wanted_permissions: BTreeMap<String, (String, String, String)> = rows("permissions")
        .iter()
        .map(|p| {
            (
                text(p, "user"),
                (text(p, "configure"), text(p, "write"), text(p, "read")),
            )
        })
        .collect();
    for (u, want) in &wanted_permissions {
        match actual.permissions.get(u) {
            None => push(
                DriftKind::Missing,
                format!("permissions of {u} on vhost {vhost}"),
            ),
            Some(have) if have != want => push(
                DriftKind::Changed,
                format!(
                    "permissions of {u}: {} (expected {})",
                    show_permissions(have),
                    show_permissions(want)
                ),
            ),
            Some(_) => {}
        }
    }
    for (u, have) in &actual.permissions {
        if wanted_permissions.contains_key(u) || allowed(u) {
            continue;
        }
        let tags = match actual.users.get(u) {
            Some(t) if !t.is_empty() => format!(" (tags {})", t.join(", ")),
            _ => String::new(),
        };
        push(
            DriftKind::Extra,
            format!(
                "user {u}{tags}: not in the fleet, holds permissions on vhost {vhost}: {}",
                show_permissions(have)
            ),
        );
    }

    let wanted_topic: BTreeMap<(String, String), (String, String)> = rows("topic_permissions")
        .iter()
        .map(|t| {
            (
                (text(t, "user"), text(t, "exchange")),
                (text(t, "write"), text(t, "read")),
            )
        })
        .collect();
    for ((u, x), want) in &wanted_topic {
        match actual.topic_permissions.get(&(u.clone(), x.clone())) {
            None => push(
                DriftKind::Missing,
                format!("topic permission of {u} on exchange {x}"),
            ),
            Some(have) if have != want => push(
                DriftKind::Changed,
                format!(
                    "topic permission of {u} on exchange {x}: {} (expected {})",
                    show_topic(have),
                    show_topic(want)
                ),
            ),
            Some(_) => {}
        }
    }
    for ((u, x), have) in &actual.topic_permissions {
        if wanted_topic.contains_key(&(u.clone(), x.clone())) || allowed(u) {
            continue;
        }
        let whose = if wanted_users.contains(u) {
            ""
        } else {
            ", a user not in the fleet"
        };
        push(
            DriftKind::Extra,
            format!(
                "topic permission of {u} on exchange {x}{whose}: {}",
                show_topic(have)
            ),
        );
    }

    for q in rows("queues") {
        let name = text(&q, "name");
        if !actual.queues.contains(&name) {
            push(DriftKind::Missing, format!("queue {name}"));
        }
    }

    let wanted_bindings: Vec<(String, String, String)> = rows("bindings")
        .iter()
        .map(|b| {
            (
                text(b, "source"),
                text(b, "destination"),
                text(b, "routing_key"),
            )
        })
        .collect();
    for (src, dst, key) in &wanted_bindings {
        if !actual
            .bindings
            .iter()
            .any(|b| (&b.0, &b.1, &b.2) == (src, dst, key))
        {
            push(
                DriftKind::Missing,
                format!("binding {src} -> {dst} (routing key {key:?})"),
            );
        }
    }
    let callers: Vec<&Name> = plan.operators.iter().chain(&plan.delegators).collect();
    let reply_binding = |src: &str, dst: &str, key: &str| {
        src == "gearmq.replies"
            && dst == key
            && callers
                .iter()
                .any(|c| gearmq_schemas::request::is_reply_queue_of(c, dst))
    };
    // An artifact stream an operator shipped, bound by its own digest.
    let artifact_binding = |src: &str, dst: &str, key: &str| {
        src == gearmq_io::artifact_stream::ARTIFACTS_EXCHANGE
            && key.len() == 64
            && key
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && dst == gearmq_schemas::actions::artifact_stream(key)
    };
    // An enrolling host's reply queue, bound by its own name.
    let enroll_binding = |src: &str, dst: &str, key: &str| {
        src == gearmq_io::topology::ENROLL_REPLIES_EXCHANGE
            && dst == key
            && dst.strip_prefix("gearmq.enroll.reply.").is_some_and(|id| {
                id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
    };
    for (src, dst, key) in &actual.bindings {
        // The default exchange binds every queue to its own name, implicitly.
        if src.is_empty()
            || wanted_bindings.contains(&(src.clone(), dst.clone(), key.clone()))
            || reply_binding(src, dst, key)
            || artifact_binding(src, dst, key)
            || enroll_binding(src, dst, key)
        {
            continue;
        }
        push(
            DriftKind::Extra,
            format!("binding {src} -> {dst} (routing key {key:?})"),
        );
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

/// Reads what the broker holds for `vhost` through `admin` (rabbitmqctl or the
/// management API: the same rows either way, so the same comparison).
pub fn read_state(admin: &dyn BrokerAdmin, vhost: &str) -> Result<BrokerState, AdminError> {
    let mut st = BrokerState::default();
    for u in admin.users()? {
        st.users.insert(u.name, u.tags);
    }
    for p in admin.permissions(vhost)? {
        st.permissions
            .insert(p.user, (p.configure, p.write, p.read));
    }
    for t in admin.topic_permissions(vhost)? {
        st.topic_permissions
            .insert((t.user, t.exchange), (t.write, t.read));
    }
    st.queues = admin.queues(vhost)?;
    st.bindings = admin
        .bindings(vhost)?
        .into_iter()
        .map(|b| (b.source, b.destination, b.routing_key))
        .collect();
    Ok(st)
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
            bootstrap: false,
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
        assert_eq!(web1["write"], "^(gearmq\\.replies|gearmq\\.events)$");
        assert_eq!(
            web1["read"],
            "^(gearmq\\.host\\.web1|gearmq\\.artifact\\.[0-9a-f]{64})$"
        );
        // Reads its own queue and artifact streams, nothing else.
        let read = regex::Regex::new(web1["read"].as_str().unwrap()).unwrap();
        assert!(read.is_match("gearmq.host.web1"));
        assert!(read.is_match(&format!("gearmq.artifact.{}", "ab".repeat(32))));
        for other in [
            "gearmq.host.web2",
            "gearmq.host.web1x",
            "gearmq.artifact.x",
            "gearmq.artifacts",
            "gearmq.reply.ops.1",
        ] {
            assert!(!read.is_match(other), "{other}");
        }
        let text = d.to_string();
        assert!(!text.contains("{username}"));
        assert!(!text.contains("impersonator"));
    }

    #[test]
    fn hosts_publish_events_under_their_own_name_only() {
        let d = definitions(&plan());
        let t = d["topic_permissions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["user"] == "web1" && t["exchange"] == "gearmq.events")
            .unwrap();
        let write = regex::Regex::new(t["write"].as_str().unwrap()).unwrap();
        assert!(write.is_match("web1.alive"));
        for other in ["web2.alive", "web1x.alive", "a.alive", "alive"] {
            assert!(!write.is_match(other), "{other}");
        }
        assert_eq!(t["read"], "^$");
        let stream = d["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "gearmq.events")
            .unwrap();
        assert_eq!(stream["arguments"]["x-queue-type"], "stream");
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

    /// The broker state provisioning `plan` leaves: exactly its definitions.
    fn provisioned(plan: &Plan) -> BrokerState {
        let d = definitions(plan);
        let mut state = BrokerState::default();
        for u in d["users"].as_array().unwrap() {
            state
                .users
                .insert(u["name"].as_str().unwrap().into(), vec![]);
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
        state
    }

    fn binding(src: &str, dst: &str, key: &str) -> (String, String, String) {
        (src.into(), dst.into(), key.into())
    }

    #[test]
    fn compare_reports_a_hand_edited_permission() {
        let mut state = provisioned(&plan());
        assert!(compare(&plan(), &state, &[]).is_empty());
        state.permissions.get_mut("web1").unwrap().2 = ".*".into();
        let drift = compare(&plan(), &state, &[]);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].kind, DriftKind::Changed);
        assert!(drift[0].what.contains("web1"), "{drift:?}");
        assert!(drift[0].what.contains("read '.*'"), "{drift:?}");
    }

    #[test]
    fn compare_reports_what_the_plan_does_not_name() {
        let mut state = provisioned(&plan());
        state
            .users
            .insert("spy".into(), vec!["administrator".into()]);
        state
            .permissions
            .insert("spy".into(), (".*".into(), ".*".into(), ".*".into()));
        state
            .users
            .get_mut("web1")
            .unwrap()
            .push("monitoring".into());
        state.topic_permissions.insert(
            ("web1".into(), "amq.topic".into()),
            (".*".into(), ".*".into()),
        );
        state.topic_permissions.insert(
            ("eve".into(), "gearmq.requests".into()),
            (".*".into(), "".into()),
        );
        state
            .bindings
            .push(binding("gearmq.requests", "spy.queue", "#"));
        let drift = compare(&plan(), &state, &[]);
        let lines: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
        assert_eq!(drift.len(), 5, "{lines:#?}");
        assert!(
            drift.iter().all(|d| d.kind == DriftKind::Extra),
            "{lines:#?}"
        );
        let has = |words: &[&str]| lines.iter().any(|l| words.iter().all(|w| l.contains(w)));
        assert!(
            has(&["extra user spy", "administrator", "not in the fleet"]),
            "{lines:#?}"
        );
        assert!(has(&["extra tag monitoring on user web1"]), "{lines:#?}");
        assert!(
            has(&["topic permission of web1 on exchange amq.topic"]),
            "{lines:#?}"
        );
        assert!(
            has(&["topic permission of eve", "not in the fleet"]),
            "{lines:#?}"
        );
        assert!(
            has(&["extra binding gearmq.requests -> spy.queue", "\"#\""]),
            "{lines:#?}"
        );
    }

    #[test]
    fn allowed_admins_default_bindings_and_reply_queues_are_not_drift() {
        let mut state = provisioned(&plan());
        state
            .users
            .insert("guest".into(), vec!["administrator".into()]);
        state
            .permissions
            .insert("guest".into(), (".*".into(), ".*".into(), ".*".into()));
        // The default exchange's implicit binding, an operator's and a delegator's
        // reply queue as a running call binds it.
        state
            .bindings
            .push(binding("", "gearmq.host.web1", "gearmq.host.web1"));
        for q in ["gearmq.reply.ops.0a1b2c3d", "gearmq.reply.a.ffff0000"] {
            state.bindings.push(binding("gearmq.replies", q, q));
        }
        let allowed = vec!["guest".to_string()];
        assert_eq!(compare(&plan(), &state, &allowed), vec![]);
        // Not allowed, guest is drift; a reply queue of a plain host is too, and so is
        // a reply queue bound to more than its own name.
        let drift = compare(&plan(), &state, &[]);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert!(drift[0].what.starts_with("user guest"), "{drift:?}");
        state.bindings.push(binding(
            "gearmq.replies",
            "gearmq.reply.web1.00000000",
            "gearmq.reply.web1.00000000",
        ));
        state.bindings.push(binding(
            "gearmq.replies",
            "gearmq.reply.ops.0a1b2c3d",
            "gearmq.reply.#",
        ));
        assert_eq!(compare(&plan(), &state, &allowed).len(), 2);
        // Allowing a fleet user does not excuse its permissions.
        state.permissions.get_mut("web1").unwrap().2 = ".*".into();
        assert_eq!(
            compare(&plan(), &state, &["web1".to_string()]).len(),
            4,
            "a fleet user is checked whatever --allow-user says"
        );
    }

    #[test]
    fn missing_objects_are_reported_as_missing() {
        let mut state = provisioned(&plan());
        state.users.remove("ops");
        state.permissions.remove("ops");
        state.bindings.retain(|b| b.2 != "all");
        let drift = compare(&plan(), &state, &[]);
        assert!(
            drift.iter().all(|d| d.kind == DriftKind::Missing),
            "{drift:?}"
        );
        // The user, its permissions, and the two hosts' `all` bindings.
        assert_eq!(drift.len(), 4, "{drift:?}");
    }

    #[test]
    fn a_host_named_like_an_operator_is_refused() {
        let n = |s: &str| Name::new(s).unwrap();
        assert_eq!(check_names(&[n("web1"), n("a")], &[n("ops")]), Ok(()));
        let err = check_names(&[n("web1"), n("ops")], &[n("ops")]).unwrap_err();
        assert_eq!(err, PlanError::NameClash { name: n("ops") });
        let text = err.to_string();
        assert!(text.contains("host ops and operator ops"), "{text}");
    }
}
