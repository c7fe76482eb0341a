//! [`BrokerAdmin`] through `rabbitmqctl` on the broker's own machine (or wherever its
//! Erlang cookie is): no management plugin needed, but the rights of the broker's
//! operating-system user (root, in practice).

use crate::broker_admin::{
    AdminError, BindingRow, BrokerAdmin, Deleted, NodeDescriptors, PermissionRow,
    TopicPermissionRow, UserRow, rows, tags, text,
};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// `rabbitmqctl [-n NODE]`.
#[derive(Debug, Clone, Default)]
pub struct Rabbitmqctl {
    /// The node (`rabbit@host`); `None`: the local default node.
    pub node: Option<String>,
}

/// How a run of rabbitmqctl ended when it did not succeed.
struct Refusal {
    stderr: String,
}

impl Rabbitmqctl {
    /// rabbitmqctl against `node` (the local default node if `None`).
    pub fn new(node: Option<String>) -> Rabbitmqctl {
        Rabbitmqctl { node }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("rabbitmqctl");
        if let Some(n) = &self.node {
            cmd.args(["-n", n]);
        }
        cmd
    }

    /// Runs `rabbitmqctl -q ARGS` with `stdin` as its standard input: its standard
    /// output, or its standard error when it fails (never its standard output then,
    /// which may hold secrets).
    fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Result<String, Refusal>, AdminError> {
        let unreachable = |e: std::io::Error| AdminError::Unreachable {
            via: self.via(),
            reason: format!(
                "cannot run it (is RabbitMQ installed here?): {}",
                crate::io_reason(&e)
            ),
        };
        let mut child = self
            .command()
            .arg("-q")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(unreachable)?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).map_err(unreachable)?;
        }
        let out = child.wait_with_output().map_err(unreachable)?;
        if out.status.success() {
            Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            Ok(Err(Refusal {
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("Error:")
                    .trim()
                    .to_string(),
            }))
        }
    }

    /// Runs `rabbitmqctl -q ARGS`; its output, or an error naming the command.
    fn output(&self, args: &[&str]) -> Result<String, AdminError> {
        self.run(args, None)?.map_err(|r| self.failed(args, r))
    }

    fn failed(&self, args: &[&str], r: Refusal) -> AdminError {
        AdminError::Failed {
            via: self.via(),
            what: args
                .iter()
                .find(|a| !a.starts_with('-') && !a.is_empty())
                .copied()
                .unwrap_or_default()
                .to_string(),
            reason: r.stderr,
        }
    }

    /// `rabbitmqctl -q [-p VHOST] COMMAND … --formatter json`, as JSON rows.
    fn json_rows(&self, args: &[&str]) -> Result<Vec<Value>, AdminError> {
        let mut all = args.to_vec();
        all.extend(["--formatter", "json"]);
        let out = self.output(&all)?;
        rows(&out).map_err(|reason| AdminError::BadAnswer {
            via: self.via(),
            what: args
                .iter()
                .find(|a| !a.starts_with('-'))
                .copied()
                .unwrap_or_default()
                .to_string(),
            reason,
        })
    }

    fn delete(&self, args: &[&str]) -> Result<Deleted, AdminError> {
        match self.run(args, None)? {
            Ok(_) => Ok(Deleted::Deleted),
            // rabbitmqctl says "Queue not found" / "User \"x\" does not exist".
            Err(r) if r.stderr.contains("not found") || r.stderr.contains("does not exist") => {
                Ok(Deleted::Absent)
            }
            Err(r) => Err(self.failed(args, r)),
        }
    }
}

/// Erlang that answers `[{Node, Limit}, …]` for the node rabbitmqctl talks to and every
/// node it is connected to (the cluster): the limit the node read from the operating
/// system at start (what the management API's `fd_total` shows), `0` if unknown.
const DESCRIPTOR_LIMITS: &str = "[{N, case rpc:call(N, file_handle_cache, ulimit, [], 10000) of \
     L when is_integer(L) -> L; _ -> 0 end} || N <- [node() | nodes()]].";

/// Parses what `rabbitmqctl eval` printed for [`DESCRIPTOR_LIMITS`]:
/// `[{rabbit@a,1024},{'rabbit@b-c',65536}]` (a long list wraps over lines).
fn parse_descriptor_limits(out: &str) -> Result<Vec<NodeDescriptors>, String> {
    let flat: String = out.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = flat
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list, got {flat:?}"))?;
    let mut nodes = Vec::new();
    for pair in inner.split("},").filter(|p| !p.is_empty()) {
        let pair = pair.trim_start_matches('{').trim_end_matches('}');
        let (node, limit) = pair
            .rsplit_once(',')
            .ok_or_else(|| format!("expected {{Node,Limit}}, got {pair:?}"))?;
        let limit: u64 = limit
            .parse()
            .map_err(|_| format!("limit {limit:?} of {node} is not a number"))?;
        nodes.push(NodeDescriptors {
            node: node.trim_matches('\'').to_string(),
            limit: (limit > 0).then_some(limit),
        });
    }
    if nodes.is_empty() {
        return Err("no node answered".into());
    }
    Ok(nodes)
}

impl BrokerAdmin for Rabbitmqctl {
    fn via(&self) -> String {
        match &self.node {
            Some(n) => format!("rabbitmqctl -n {n}"),
            None => "rabbitmqctl".into(),
        }
    }

    /// The definitions go through standard input: they hold password hashes, and
    /// rabbitmqctl runs as the broker's own user, which could not read a root-only
    /// file anyway.
    fn import_definitions(&self, definitions: &Value) -> Result<(), AdminError> {
        let args = ["import_definitions", "--format", "json"];
        self.run(&args, Some(definitions.to_string().as_bytes()))?
            .map(|_| ())
            .map_err(|r| self.failed(&args, r))
    }

    fn users(&self) -> Result<Vec<UserRow>, AdminError> {
        Ok(self
            .json_rows(&["list_users"])?
            .iter()
            .map(|u| UserRow {
                name: text(u, "user"),
                tags: tags(&u["tags"]),
            })
            .collect())
    }

    fn permissions(&self, vhost: &str) -> Result<Vec<PermissionRow>, AdminError> {
        Ok(self
            .json_rows(&["-p", vhost, "list_permissions"])?
            .iter()
            .map(|p| PermissionRow {
                user: text(p, "user"),
                configure: text(p, "configure"),
                write: text(p, "write"),
                read: text(p, "read"),
            })
            .collect())
    }

    fn topic_permissions(&self, vhost: &str) -> Result<Vec<TopicPermissionRow>, AdminError> {
        Ok(self
            .json_rows(&["-p", vhost, "list_topic_permissions"])?
            .iter()
            .map(|t| TopicPermissionRow {
                user: text(t, "user"),
                exchange: text(t, "exchange"),
                write: text(t, "write"),
                read: text(t, "read"),
            })
            .collect())
    }

    fn queues(&self, vhost: &str) -> Result<Vec<String>, AdminError> {
        Ok(self
            .json_rows(&["-p", vhost, "list_queues", "name"])?
            .iter()
            .map(|q| text(q, "name"))
            .collect())
    }

    fn bindings(&self, vhost: &str) -> Result<Vec<BindingRow>, AdminError> {
        Ok(self
            .json_rows(&[
                "-p",
                vhost,
                "list_bindings",
                "source_name",
                "destination_name",
                "routing_key",
            ])?
            .iter()
            .map(|b| BindingRow {
                source: text(b, "source_name"),
                destination: text(b, "destination_name"),
                routing_key: text(b, "routing_key"),
            })
            .collect())
    }

    fn descriptor_limits(&self) -> Result<Vec<NodeDescriptors>, AdminError> {
        let out = self.output(&["eval", DESCRIPTOR_LIMITS])?;
        parse_descriptor_limits(&out).map_err(|reason| AdminError::BadAnswer {
            via: self.via(),
            what: "eval (the nodes' descriptor limits)".into(),
            reason,
        })
    }

    fn delete_queue(&self, vhost: &str, queue: &str) -> Result<Deleted, AdminError> {
        self.delete(&["-p", vhost, "delete_queue", queue])
    }

    fn delete_user(&self, user: &str) -> Result<Deleted, AdminError> {
        self.delete(&["delete_user", user])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_limits_parse_plain_quoted_and_wrapped_node_names() {
        let out = "[{rabbit@localhost,1024},\n {'rabbit@web-1',65536},{'x@y',0}]\n";
        let nodes = parse_descriptor_limits(out).unwrap();
        assert_eq!(
            nodes,
            [
                NodeDescriptors {
                    node: "rabbit@localhost".into(),
                    limit: Some(1024)
                },
                NodeDescriptors {
                    node: "rabbit@web-1".into(),
                    limit: Some(65536)
                },
                NodeDescriptors {
                    node: "x@y".into(),
                    limit: None
                },
            ]
        );
    }

    #[test]
    fn descriptor_limits_refuse_what_is_not_the_list() {
        assert!(parse_descriptor_limits("{badrpc,nodedown}").is_err());
        assert!(parse_descriptor_limits("[]").is_err());
        assert!(parse_descriptor_limits("[{a@b,lots}]").is_err());
    }
}
