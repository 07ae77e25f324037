//! The kill schedule: what is SIGKILLed when, and how long it stays down.
//!
//! Written as `target@at+down`, seconds from the start of the load, comma-separated, e.g.
//! `broker@8+3,orders@18+2,redis@24+1,broker@30+3,products@42+2`. Targets: `broker`, `redis`,
//! and the services by binary name. Actions run one after the other: one that is due while the
//! previous is still restarting (a broker takes 7–8 s) runs right after it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::services::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Broker,
    Redis,
    Service(Service),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Broker => f.write_str("broker"),
            Target::Redis => f.write_str("redis"),
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
    "kill {0:?} is not target@seconds+seconds (targets: broker, redis, gateway, orders, products)"
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
    fn bad_actions_are_refused() {
        for bad in [
            "broker",
            "broker@",
            "broker@1",
            "mongo@1+1",
            "broker@x+1",
            "redis@-1+1",
        ] {
            assert!(bad.parse::<Action>().is_err(), "{bad}");
        }
    }
}
