//! The retry schedule: how long to wait after a failed attempt.
//!
//! The schedule is an explicit list (`WEBHOOK_RETRY_SCHEDULE_MS`, default 1 s, 2 s, 4 s, 8 s,
//! 16 s): the first attempt goes at once, the n-th retry waits the n-th delay, and after the last
//! one the delivery fails — six attempts in all by default. Each delay is jittered by ±
//! `jitter` (default 20 %) so that many deliveries failing together do not retry in lockstep.
//! A `Retry-After` from a 429 or 503 lengthens the wait, but never beyond the schedule's longest
//! delay: a receiver cannot park a delivery for hours.
//!
//! This is a fixed list rather than a `backon` builder because operators set it as a list and
//! `backon`'s jitter adds up to 100 % of the delay, which would make the documented 16 s up to 32 s.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("{0:?} is not a comma-separated list of milliseconds")]
    NotANumber(String),
    #[error("the schedule needs at least one delay")]
    Empty,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    /// Fraction of each delay to jitter by, in [0, 1).
    jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::new(
            [1_000, 2_000, 4_000, 8_000, 16_000]
                .map(Duration::from_millis)
                .to_vec(),
            0.2,
        )
    }
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Self {
        Self {
            delays,
            jitter: jitter.clamp(0.0, 0.99),
        }
    }

    /// Parses `1000,2000,4000`.
    pub fn parse_ms(text: &str, jitter: f64) -> Result<Self, ScheduleError> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ScheduleError::NotANumber(s.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err(ScheduleError::Empty);
        }
        Ok(Self::new(delays, jitter))
    }

    /// Scheduled attempts in all: the first one and one per delay.
    pub fn max_attempts(&self) -> i64 {
        self.delays.len() as i64 + 1
    }

    fn longest(&self) -> Duration {
        self.delays.iter().max().copied().unwrap_or_default()
    }

    /// How long to wait after the `failed`-th scheduled attempt failed (1-based), or `None` when
    /// that was the last one.
    pub fn delay_after(&self, failed: i64, retry_after: Option<Duration>) -> Option<Duration> {
        let index = usize::try_from(failed.checked_sub(1)?).ok()?;
        let base = *self.delays.get(index)?;
        let factor = if self.jitter > 0.0 {
            rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        let jittered = base.mul_f64(factor);
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(self.longest())),
            None => jittered,
        })
    }
}

/// Reads `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_six_attempts_with_jittered_doubling_delays() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.max_attempts(), 6);
        for (failed, base) in [
            (1, 1_000u64),
            (2, 2_000),
            (3, 4_000),
            (4, 8_000),
            (5, 16_000),
        ] {
            let delay = schedule.delay_after(failed, None).unwrap().as_millis() as u64;
            assert!(
                (base * 8 / 10..=base * 12 / 10).contains(&delay),
                "retry {failed}: {delay} ms is not {base} ms ± 20 %"
            );
        }
        assert_eq!(schedule.delay_after(6, None), None);
        assert_eq!(schedule.delay_after(0, None), None);
    }

    #[test]
    fn retry_after_lengthens_the_wait_up_to_the_longest_delay() {
        let schedule = RetrySchedule::parse_ms("100,200", 0.0).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(schedule.delay_after(1, Some(ms(150))), Some(ms(150)));
        assert_eq!(schedule.delay_after(1, Some(ms(10))), Some(ms(100)));
        assert_eq!(
            schedule.delay_after(1, Some(Duration::from_secs(3600))),
            Some(ms(200))
        );
    }

    #[test]
    fn parses_schedules_and_retry_after() {
        assert_eq!(
            RetrySchedule::parse_ms("1000, 2000", 0.2)
                .unwrap()
                .max_attempts(),
            3
        );
        assert_eq!(RetrySchedule::parse_ms("", 0.2), Err(ScheduleError::Empty));
        assert!(matches!(
            RetrySchedule::parse_ms("1s,2s", 0.2),
            Err(ScheduleError::NotANumber(_))
        ));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
