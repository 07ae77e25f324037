//! Wall-clock time as the services store and compare it: Unix milliseconds (order deadlines,
//! webhook `next_attempt_at`, the notifier's WebSocket silence check).

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
