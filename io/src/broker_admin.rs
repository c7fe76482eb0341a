//! The broker's administration, one seam for two transports: what `gearmq broker
//! provision|check|deprovision` asks of RabbitMQ, answered by `rabbitmqctl` on the node
//! ([`crate::rabbitmqctl::Rabbitmqctl`]) or by the management HTTP API from anywhere
//! ([`crate::management::Management`]).
//!
//! The plan, the comparison and the descriptor rule are decided once, above this seam
//! (`gearmq_orchestrator::provision`); an implementation only moves rows.

use serde_json::Value;

/// A broker user and its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The user name.
    pub name: String,
    /// Its tags (`administrator`, `monitoring`, …).
    pub tags: Vec<String>,
}

/// A user's permissions on one vhost: configure, write, read regexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRow {
    /// The user.
    pub user: String,
    /// Configure regex.
    pub configure: String,
    /// Write regex.
    pub write: String,
    /// Read regex.
    pub read: String,
}

/// A user's topic permission on one exchange of a vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermissionRow {
    /// The user.
    pub user: String,
    /// The exchange.
    pub exchange: String,
    /// Write regex (routing keys published).
    pub write: String,
    /// Read regex (binding keys).
    pub read: String,
}

/// A binding of a vhost (the default exchange's implicit ones included, source `""`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    /// The exchange.
    pub source: String,
    /// The queue or exchange bound.
    pub destination: String,
    /// The routing key.
    pub routing_key: String,
}

/// A running node's open-file limit as the operating system set it (`ulimit -n`), which
/// RabbitMQ shares between sockets and the files of its queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDescriptors {
    /// The Erlang node name, `rabbit@host`.
    pub node: String,
    /// The limit; `None` if the node does not say.
    pub limit: Option<u64>,
}

/// What deleting an object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// It existed and is gone.
    Deleted,
    /// There was none.
    Absent,
}

/// Why the broker could not be administered.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The tool could not be run or the API not reached.
    #[error("cannot reach {via}: {reason}")]
    Unreachable {
        /// `rabbitmqctl` or the (redacted) management URL.
        via: String,
        /// Why.
        reason: String,
    },
    /// The management API refused the credentials.
    #[error(
        "{via} refused the login of user {user} (HTTP 401): wrong user or password, or \
         the user lacks the administrator tag the management API needs"
    )]
    Unauthorized {
        /// The (redacted) management URL.
        via: String,
        /// The user that tried.
        user: String,
    },
    /// The broker refused or failed a request.
    #[error("{via}: {what} failed: {reason}")]
    Failed {
        /// `rabbitmqctl` or the (redacted) management URL.
        via: String,
        /// The command or request.
        what: String,
        /// What the broker said.
        reason: String,
    },
    /// The broker answered something this program does not understand.
    #[error("{via}: {what} gave an answer that does not parse: {reason}")]
    BadAnswer {
        /// `rabbitmqctl` or the (redacted) management URL.
        via: String,
        /// The command or request.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The way to the broker is configured wrongly (URL, password, CA file).
    #[error("{0}")]
    Setup(String),
}

/// What `gearmq broker` needs of a broker, per transport. Reads cover what
/// provisioning controls; writes are the definitions import and two deletions.
pub trait BrokerAdmin {
    /// Where the answers come from, for messages (`rabbitmqctl`, the redacted URL).
    fn via(&self) -> String;
    /// Imports a definitions document (the format `rabbitmqctl import_definitions`
    /// and the management API's `POST /api/definitions` both read).
    fn import_definitions(&self, definitions: &Value) -> Result<(), AdminError>;
    /// Every user of the broker with its tags.
    fn users(&self) -> Result<Vec<UserRow>, AdminError>;
    /// Every user's permissions on `vhost`.
    fn permissions(&self, vhost: &str) -> Result<Vec<PermissionRow>, AdminError>;
    /// Every topic permission on `vhost`.
    fn topic_permissions(&self, vhost: &str) -> Result<Vec<TopicPermissionRow>, AdminError>;
    /// The names of the queues of `vhost`.
    fn queues(&self, vhost: &str) -> Result<Vec<String>, AdminError>;
    /// The bindings of `vhost`.
    fn bindings(&self, vhost: &str) -> Result<Vec<BindingRow>, AdminError>;
    /// The descriptor limit of every running node of the cluster.
    fn descriptor_limits(&self) -> Result<Vec<NodeDescriptors>, AdminError>;
    /// Deletes queue `queue` of `vhost`, messages and all.
    fn delete_queue(&self, vhost: &str, queue: &str) -> Result<Deleted, AdminError>;
    /// Deletes broker user `user` (its permissions on every vhost go with it).
    fn delete_user(&self, user: &str) -> Result<Deleted, AdminError>;
}

/// `v[key]` as a string (`""` when absent or not a string).
pub(crate) fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

/// A JSON array's rows, or why the text is not one.
pub(crate) fn rows(text: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(text.trim()).map_err(|e| e.to_string())?;
    match v {
        Value::Array(rows) => Ok(rows),
        other => Err(format!("expected a JSON array, got {}", kind(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A user's tags: a JSON array (RabbitMQ 3.9 and later) or a comma-separated string
/// (older management APIs).
pub(crate) fn tags(v: &Value) -> Vec<String> {
    match v {
        Value::Array(t) => t
            .iter()
            .filter_map(|x| x.as_str())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tags_come_as_an_array_or_a_comma_separated_string() {
        assert_eq!(tags(&json!(["administrator", "monitoring"])).len(), 2);
        assert_eq!(
            tags(&json!("administrator, monitoring")),
            ["administrator", "monitoring"]
        );
        assert!(tags(&json!("")).is_empty());
        assert!(tags(&json!(null)).is_empty());
    }

    #[test]
    fn rows_refuse_what_is_not_an_array() {
        assert_eq!(rows("[{\"a\":1}]").map(|r| r.len()), Ok(1));
        assert!(rows("{\"error\":\"x\"}").unwrap_err().contains("an object"));
        assert!(rows("not json").is_err());
    }
}
