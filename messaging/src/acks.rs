//! Ack coalescing: which acks a consumer's channel owes the broker, and how few frames can carry
//! them.
//!
//! Every `basic.ack` on a quorum queue is one Raft command in RabbitMQ; one ack with
//! `multiple=true` settles every delivery up to its tag in one command. Measured on the broker
//! alone (docs/benchmarks.md), that cuts the broker's CPU per message by about a quarter.
//!
//! Handlers finish out of order, and `multiple=true` settles *every* outstanding delivery up to
//! the tag, so a coalesced ack may only cover a prefix of the channel's deliveries that are all
//! finished. This tracker keeps each received delivery tag until it is settled:
//! - [`Acks::take_prefix`] gives the highest tag of the longest finished prefix (one
//!   `multiple=true` ack) and forgets those tags;
//! - a delivery that was rejected or nacked on its own is forgotten at once, so it never blocks
//!   the prefix and is never covered by a later multiple ack (it is no longer outstanding);
//! - acks waiting behind an unfinished delivery longer than the patience are given out one by
//!   one ([`Acks::take_stragglers`]), so one slow message (a retry) cannot hold the prefetch
//!   window shut.
//!
//! Losing an ack that was still in here (the channel dropped) means the broker redelivers the
//! message, which the handlers already deduplicate: the same as an ack lost on the wire.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where one outstanding delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its handler has not finished.
    InFlight,
    /// Its effect is durable; it waits to be acked, since `at`.
    Done { at: Instant },
}

/// The outstanding deliveries of one channel, by delivery tag.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    outstanding: BTreeMap<u64, State>,
}

/// One `multiple=true` ack: the highest tag and how many deliveries it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub up_to: u64,
    pub count: usize,
}

impl Acks {
    /// A delivery arrived (tags grow on a channel).
    pub(crate) fn received(&mut self, tag: u64) {
        self.outstanding.insert(tag, State::InFlight);
    }

    /// The delivery's handler finished and it may be acked.
    pub(crate) fn done(&mut self, tag: u64, now: Instant) {
        if let Some(state) = self.outstanding.get_mut(&tag) {
            *state = State::Done { at: now };
        }
    }

    /// The delivery was rejected or nacked on its own: it is no longer outstanding.
    pub(crate) fn settled(&mut self, tag: u64) {
        self.outstanding.remove(&tag);
    }

    /// Takes the longest prefix of finished deliveries, to be acked with `multiple=true`.
    pub(crate) fn take_prefix(&mut self) -> Option<Prefix> {
        let mut prefix: Option<Prefix> = None;
        while let Some(entry) = self.outstanding.first_entry() {
            if *entry.get() == State::InFlight {
                break;
            }
            let tag = *entry.key();
            entry.remove();
            let count = prefix.map_or(0, |p| p.count) + 1;
            prefix = Some(Prefix { up_to: tag, count });
        }
        prefix
    }

    /// Takes the finished deliveries that have waited at least `patience` behind an unfinished
    /// one, to be acked one by one.
    pub(crate) fn take_stragglers(&mut self, now: Instant, patience: Duration) -> Vec<u64> {
        let due: Vec<u64> = self
            .outstanding
            .iter()
            .filter_map(|(tag, state)| match state {
                State::Done { at } if now.duration_since(*at) >= patience => Some(*tag),
                _ => None,
            })
            .collect();
        for tag in &due {
            self.outstanding.remove(tag);
        }
        due
    }

    /// When the oldest finished delivery that still waits becomes a straggler.
    pub(crate) fn next_straggler_at(&self, patience: Duration) -> Option<Instant> {
        self.outstanding
            .values()
            .filter_map(|state| match state {
                State::Done { at } => Some(*at + patience),
                State::InFlight => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_millis(10);

    fn received(tags: std::ops::RangeInclusive<u64>) -> Acks {
        let mut acks = Acks::default();
        tags.for_each(|t| acks.received(t));
        acks
    }

    #[test]
    fn finished_prefix_becomes_one_multiple_ack() {
        let now = Instant::now();
        let mut acks = received(1..=5);
        for t in [3, 1, 2] {
            acks.done(t, now);
        }
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 3, count: 3 }));
        assert_eq!(acks.take_prefix(), None, "the prefix was taken");
        acks.done(5, now);
        assert_eq!(acks.take_prefix(), None, "4 is still in flight");
        acks.done(4, now);
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 5, count: 2 }));
    }

    #[test]
    fn a_multiple_ack_never_covers_a_delivery_in_flight() {
        let now = Instant::now();
        let mut acks = received(1..=4);
        acks.done(2, now);
        acks.done(4, now);
        assert_eq!(acks.take_prefix(), None, "1 is in flight");
        acks.done(1, now);
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 2, count: 2 }));
    }

    #[test]
    fn rejected_deliveries_leave_the_prefix_and_are_not_counted() {
        let now = Instant::now();
        let mut acks = received(1..=3);
        acks.settled(1);
        acks.done(2, now);
        acks.done(3, now);
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 3, count: 2 }));
        // A prefix that ends on a rejected tag must not name that tag.
        let mut acks = received(1..=3);
        acks.done(1, now);
        acks.settled(2);
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 1, count: 1 }));
    }

    #[test]
    fn acks_stuck_behind_a_slow_delivery_go_one_by_one_after_the_patience() {
        let t0 = Instant::now();
        let mut acks = received(1..=3);
        acks.done(2, t0);
        acks.done(3, t0 + Duration::from_millis(5));
        assert_eq!(acks.next_straggler_at(PATIENCE), Some(t0 + PATIENCE));
        assert!(
            acks.take_stragglers(t0 + Duration::from_millis(9), PATIENCE)
                .is_empty()
        );
        assert_eq!(acks.take_stragglers(t0 + PATIENCE, PATIENCE), vec![2]);
        assert_eq!(acks.take_stragglers(t0 + PATIENCE * 2, PATIENCE), vec![3]);
        assert_eq!(acks.next_straggler_at(PATIENCE), None);
        // The slow one finishes later and is acked on its own (as a prefix of one).
        acks.done(1, t0 + PATIENCE * 3);
        assert_eq!(acks.take_prefix(), Some(Prefix { up_to: 1, count: 1 }));
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let mut acks = received(1..=1);
        acks.done(7, Instant::now());
        assert_eq!(acks.take_prefix(), None);
        assert_eq!(acks.next_straggler_at(PATIENCE), None);
    }
}
