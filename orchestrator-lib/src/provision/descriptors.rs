//! Whether a broker node may open enough files for the fleet: the rule `broker check`
//! applies to every running node's descriptor limit (the `ulimit -n` it was started
//! with), stated once here and in docs/PRODUCTION.md.
//!
//! **needed = 2 × durable queues + 1 × connections + 256.**
//!
//! Why: RabbitMQ keeps about 100 of the limit for itself and shares the rest between
//! sockets and queue files; a classic durable queue keeps its index journal and a
//! segment open, and recovering it at boot needs both. A node with the common soft
//! limit of 1,024 (927 handles left to RabbitMQ) and 1,011 durable queues — about one
//! handle per queue — sat in queue recovery for over ten minutes at 0 % CPU and never
//! finished restarting (checked on RabbitMQ 3.10.8). Two per queue is the least that
//! covers that recovery; each agent and each running orchestrator holds one connection
//! (one socket); 256 more cover RabbitMQ's own reserve, its message stores, Mnesia,
//! logs, the management listener and the short-lived CLI connections. By this rule a
//! 1,024 limit takes a fleet of at most 255 hosts (and one operator), and a fleet of
//! 1,010 hosts — 1,011 durable queues with `gearmq.dead`, like the node above — needs
//! 3,289.
//!
//! Queues a running call makes (reply queues) are exclusive and not durable: they
//! are not recovered at boot and are left out.

use super::Plan;
use gearmq_io::broker_admin::NodeDescriptors;

/// Descriptors a node needs per durable queue of the fleet.
pub const PER_DURABLE_QUEUE: u64 = 2;
/// Descriptors a node needs per client connection of the fleet.
pub const PER_CONNECTION: u64 = 1;
/// Descriptors a node needs beyond the fleet's queues and connections.
pub const HEADROOM: u64 = 256;

/// What the fleet asks of each node's descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorNeed {
    /// Durable queues the fleet declares: one per host and `gearmq.dead`.
    pub durable_queues: u64,
    /// Connections: one per host's agent, per operator, and per delegator's client.
    pub connections: u64,
}

impl DescriptorNeed {
    /// The need of `plan`'s fleet, or of a fleet of `hosts` hosts with `plan`'s
    /// operators and delegators (a fleet about to grow).
    pub fn for_plan(plan: &Plan, hosts: Option<u64>) -> DescriptorNeed {
        let hosts = hosts.unwrap_or(plan.hosts.len() as u64);
        DescriptorNeed {
            durable_queues: hosts + 1,
            connections: hosts + plan.operators.len() as u64 + plan.delegators.len() as u64,
        }
    }

    /// The least descriptor limit that fits.
    pub fn needed(&self) -> u64 {
        PER_DURABLE_QUEUE * self.durable_queues + PER_CONNECTION * self.connections + HEADROOM
    }

    /// The rule applied: `2 x 3 durable queues + 1 x 4 connections + 256`.
    pub fn explain(&self) -> String {
        format!(
            "{PER_DURABLE_QUEUE} x {} durable queues + {PER_CONNECTION} x {} connections + \
             {HEADROOM}",
            self.durable_queues, self.connections
        )
    }
}

/// How a node's limit compares with the need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// At least what the fleet needs.
    Enough,
    /// Below it: the node may not restart with the fleet's queues.
    TooLow,
    /// The node did not say.
    Unknown,
}

/// One node's limit against the need, as `broker check` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerdict {
    /// The node and its limit.
    pub node: NodeDescriptors,
    /// The comparison.
    pub verdict: Verdict,
    /// The line for a person: the limit, the need and the rule, and the fix if any.
    pub line: String,
}

/// Judges every node's limit against `need`.
pub fn judge(need: &DescriptorNeed, nodes: &[NodeDescriptors]) -> Vec<NodeVerdict> {
    let needed = need.needed();
    let rule = need.explain();
    nodes
        .iter()
        .map(|n| {
            let (verdict, line) = match n.limit {
                Some(limit) if limit >= needed => (
                    Verdict::Enough,
                    format!(
                        "descriptors: node {} allows {limit} open files; the fleet needs \
                         {needed} ({rule})",
                        n.node
                    ),
                ),
                Some(limit) => (
                    Verdict::TooLow,
                    format!(
                        "descriptors: node {} allows {limit} open files; the fleet needs \
                         {needed} ({rule}): too low, it may not finish restarting with the \
                         fleet's queues. Restart it with a limit of at least {needed}: \
                         `ulimit -n {needed}` in the shell that starts rabbitmq-server \
                         (not through su, which resets it; see docs/PRODUCTION.md), or \
                         LimitNOFILE={needed} in its systemd unit",
                        n.node
                    ),
                ),
                None => (
                    Verdict::Unknown,
                    format!(
                        "descriptors: node {} did not report its limit; the fleet needs \
                         {needed} ({rule}): check `ulimit -n` of its process",
                        n.node
                    ),
                ),
            };
            NodeVerdict {
                node: n.clone(),
                verdict,
                line,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::QueueType;
    use gearmq_schemas::Name;
    use std::collections::BTreeMap;

    fn plan(hosts: usize) -> Plan {
        Plan {
            vhost: "/".into(),
            hosts: (0..hosts)
                .map(|i| Name::new(format!("h{i}")).unwrap())
                .collect(),
            operators: vec![Name::new("ops").unwrap()],
            delegators: vec![],
            queue_type: QueueType::Classic,
            passwords: BTreeMap::new(),
            host_queue_max_length: 10_000,
            delivery_limit: 5,
            bootstrap: false,
        }
    }

    fn node(limit: Option<u64>) -> NodeDescriptors {
        NodeDescriptors {
            node: "rabbit@a".into(),
            limit,
        }
    }

    #[test]
    fn the_node_that_wedged_fails_and_a_small_fleet_passes_on_1024() {
        // 1,011 durable queues on a 1,024 limit did not finish restarting.
        let wedged = DescriptorNeed {
            durable_queues: 1_011,
            connections: 0,
        };
        assert_eq!(wedged.needed(), 2_278);
        assert_eq!(
            judge(&wedged, &[node(Some(1024))])[0].verdict,
            Verdict::TooLow
        );

        let small = DescriptorNeed::for_plan(&plan(3), None);
        assert_eq!(small.durable_queues, 4);
        assert_eq!(small.connections, 4);
        assert_eq!(small.needed(), 8 + 4 + 256);
        let v = &judge(&small, &[node(Some(1024))])[0];
        assert_eq!(v.verdict, Verdict::Enough);
        assert_eq!(
            v.line,
            "descriptors: node rabbit@a allows 1024 open files; the fleet needs 268 \
             (2 x 4 durable queues + 1 x 4 connections + 256)"
        );
    }

    #[test]
    fn a_1024_limit_takes_at_most_255_hosts() {
        let p = plan(0);
        let fits = |h| DescriptorNeed::for_plan(&p, Some(h)).needed() <= 1024;
        assert!(fits(255));
        assert!(!fits(256));
    }

    #[test]
    fn too_low_names_the_fix_and_unknown_is_not_enough() {
        let need = DescriptorNeed::for_plan(&plan(500), None);
        let v = &judge(&need, &[node(Some(1024)), node(None)]);
        assert_eq!(v[0].verdict, Verdict::TooLow);
        assert!(v[0].line.contains("ulimit -n 1759"), "{}", v[0].line);
        assert!(v[0].line.contains("LimitNOFILE=1759"), "{}", v[0].line);
        assert_eq!(v[1].verdict, Verdict::Unknown);
    }
}
