//! The kill schedule: what is SIGKILLed when, and how long it stays down.
//!
//! Written as `target@at+down`, seconds from the start of the load, comma-separated, e.g.
//! `broker@8+3,orders@18+2,redis@24+1,broker@30+3,products@42+2`. Targets: `broker` (the single
//! node), `redis`, the services by binary name, and on a cluster (`--cluster`) one node:
//! `node1`…`node3`, `gateway-node` (the node the gateway is connected to when the kill is due)
//! or `leader-node` (the node leading `orders_queue` then). Actions run one after the other: one
//! that is due while the previous is still restarting (a broker takes 7–10 s) runs right after it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::services::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The single broker node.
    Broker,
    /// One node of the cluster.
    Node(NodePick),
    Redis,
    /// The run's private PostgreSQL (`--postgres`): stopped immediately (`pg_ctl stop -m
    /// immediate`, as a crash), started again after `down` on the same data.
    Postgres,
    /// The first instance of a service (with `--instances 2` the others keep running).
    Service(Service),
}

/// Which cluster node a kill hits, decided when the kill is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePick {
    /// By position, 0-based (`node1` is 0).
    Index(usize),
    /// The node the gateway's connection is on.
    OfGateway,
    /// The node leading `orders_queue`.
    Leader,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Broker => f.write_str("broker"),
            Target::Node(NodePick::Index(i)) => write!(f, "node{}", i + 1),
            Target::Node(NodePick::OfGateway) => f.write_str("gateway-node"),
            Target::Node(NodePick::Leader) => f.write_str("leader-node"),
            Target::Redis => f.write_str("redis"),
            Target::Postgres => f.write_str("postgres"),
            Target::Service(s) => f.write_str(s.name()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Action {
    pub target: Target,
    /// Since the start of the load.
    pub at: Duration,
    /// How long it stays down before it is started again.
    pub down: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "kill {0:?} is not target@seconds+seconds (targets: broker, redis, postgres, gateway, orders, products, webhook-publisher, notifier; on a cluster node1, node2, node3, gateway-node, leader-node)"
)]
pub struct ParseActionError(String);

impl FromStr for Action {
    type Err = ParseActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseActionError(s.to_owned());
        let (target, times) = s.trim().split_once('@').ok_or_else(err)?;
        let (at, down) = times.split_once('+').ok_or_else(err)?;
        let target = match target {
            "broker" => Target::Broker,
            "redis" => Target::Redis,
            "postgres" => Target::Postgres,
            "gateway-node" => Target::Node(NodePick::OfGateway),
            "leader-node" => Target::Node(NodePick::Leader),
            node if node.starts_with("node") => {
                let n: usize = node["node".len()..].parse().map_err(|_| err())?;
                if !(1..=testkit::broker_cluster::SIZE).contains(&n) {
                    return Err(err());
                }
                Target::Node(NodePick::Index(n - 1))
            }
            other => Target::Service(Service::parse(other).ok_or_else(err)?),
        };
        let secs = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x < 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(err)
        };
        Ok(Action {
            target,
            at: secs(at)?,
            down: secs(down)?,
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}+{}",
            self.target,
            self.at.as_secs_f64(),
            self.down.as_secs_f64()
        )
    }
}

/// The schedule of the CI run: the broker twice, Redis once, orders, products and the webhook
/// publisher (while deliveries wait for a retry) once each.
pub const CI_SCHEDULE: &str =
    "broker@8+3,orders@18+2,redis@24+1,broker@30+3,products@42+2,webhook-publisher@50+2";
/// The same without the webhook services (`--no-webhooks`).
pub const SAGA_SCHEDULE: &str = "broker@8+3,orders@18+2,redis@24+1,broker@30+3,products@42+2";
/// The CI schedule on a cluster (`--cluster`): the node the gateway is on, then the node leading
/// the intake queue, instead of the whole broker; the same Redis and service kills.
pub const CLUSTER_SCHEDULE: &str =
    "gateway-node@8+3,orders@18+2,redis@24+1,leader-node@30+3,products@42+2,webhook-publisher@50+2";
/// The cluster schedule without the webhook services.
pub const CLUSTER_SAGA_SCHEDULE: &str =
    "gateway-node@8+3,orders@18+2,redis@24+1,leader-node@30+3,products@42+2";

/// The schedule of the multi-instance run on PostgreSQL (`--instances 2 --postgres`): one
/// orders and one products instance (the other of each keeps running), PostgreSQL itself
/// (immediate stop, down 4 s), the broker, Redis, and one webhook publisher while deliveries
/// wait for a retry.
pub const INSTANCES_SCHEDULE: &str =
    "orders@8+2,products@14+2,postgres@20+4,broker@28+3,redis@36+1,webhook-publisher@40+2";
/// The same without the webhook services.
pub const INSTANCES_SAGA_SCHEDULE: &str =
    "orders@8+2,products@14+2,postgres@20+4,broker@28+3,redis@36+1";

pub fn parse(schedule: &str) -> Result<Vec<Action>, ParseActionError> {
    let mut actions: Vec<Action> = schedule
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    actions.sort_by_key(|a| a.at);
    Ok(actions)
}

/// What one action did, for the report.
#[derive(Debug, Clone)]
pub struct Done {
    pub action: Action,
    /// Seconds since the start of the load.
    pub killed_at: f64,
    pub restarted_at: f64,
    /// For the broker: when it accepted connections again.
    pub up_again: Option<SystemTime>,
    /// For a cluster node: the node that was killed.
    pub node: Option<String>,
    /// What the target was doing when it was killed (e.g. deliveries waiting for a retry).
    pub note: Option<String>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ci_schedule_parses() {
        let actions = parse(CI_SCHEDULE).unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(
            actions[5].target,
            Target::Service(Service::WebhookPublisher)
        );
        assert_eq!(actions[0].target, Target::Broker);
        assert_eq!(actions[0].at, Duration::from_secs(8));
        assert_eq!(actions[0].down, Duration::from_secs(3));
        assert_eq!(actions[1].target, Target::Service(Service::Orders));
    }

    #[test]
    fn the_cluster_schedule_parses() {
        let actions = parse(CLUSTER_SCHEDULE).unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[0].target, Target::Node(NodePick::OfGateway));
        assert_eq!(actions[3].target, Target::Node(NodePick::Leader));
        assert_eq!(
            "node2@5+1".parse::<Action>().unwrap().target,
            Target::Node(NodePick::Index(1))
        );
        for action in parse(CLUSTER_SAGA_SCHEDULE).unwrap() {
            assert!(actions.contains(&action), "{action}");
        }
        // Display and parse agree.
        for action in actions {
            assert_eq!(action.to_string().parse::<Action>().unwrap(), action);
        }
    }

    #[test]
    fn the_instances_schedule_parses() {
        let actions = parse(INSTANCES_SCHEDULE).unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[2].target, Target::Postgres);
        assert_eq!(actions[2].down, Duration::from_secs(4));
        for action in parse(INSTANCES_SAGA_SCHEDULE).unwrap() {
            assert!(actions.contains(&action), "{action}");
        }
        assert_eq!(
            "postgres@1+2".parse::<Action>().unwrap().to_string(),
            "postgres@1+2"
        );
    }

    #[test]
    fn bad_actions_are_refused() {
        for bad in [
            "broker",
            "broker@",
            "broker@1",
            "mongo@1+1",
            "broker@x+1",
            "redis@-1+1",
            "node0@1+1",
            "node4@1+1",
            "nodex@1+1",
            "leader@1+1",
        ] {
            assert!(bad.parse::<Action>().is_err(), "{bad}");
        }
    }
}
