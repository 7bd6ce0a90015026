//! Redis's clock as a node knows it, for the deadlines of its calls.
//!
//! Every function call carries the moment the node stops waiting for it,
//! in Redis's time (unix ms), and the function does nothing when Redis's
//! own clock (`TIME`) says it runs after that (see `begin` in
//! `prelude.lua`). The node does not assume that its clock and Redis's
//! agree: it reads Redis's clock (`TIME`) when it connects and on every
//! heartbeat, and measures the time since on its own monotonic clock.
//!
//! A reading is taken to bound Redis's time from above: Redis read its
//! clock after the node sent the `TIME`, so at the moment of sending
//! Redis's clock showed at most what it answered. Carried forward, the
//! bound grows with the time since on the node's monotonic clock, plus
//! 1 ms per second for drift between the two clocks (twice the fastest
//! rate NTP slews a clock at). So a deadline is never earlier than the
//! moment the node gives up, in Redis's time: a call the node still waits
//! for is not refused. It can be later, by as much as the reading was
//! loose (the `TIME`'s way to Redis) and the drift allowance: a call that
//! runs that little after the node gave up still runs.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A reading with a round trip longer than this (Redis slow or far) is
/// loose by up to its round trip: it replaces the held one only when it
/// bounds Redis's time more tightly than the held one does.
const SHORT_TRIP: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
struct Reading {
    /// When the node sent the `TIME` (its monotonic clock).
    sent: Instant,
    /// What Redis answered (unix ms, rounded up): at least Redis's time
    /// at `sent`.
    redis_ms: u64,
}

impl Reading {
    /// Redis's time at `when` (unix ms), at most.
    fn bound(&self, when: Instant) -> u64 {
        let since = when.saturating_duration_since(self.sent);
        let elapsed = since.as_micros().div_ceil(1000) as u64;
        // 1 ms per second (or part of one) since the reading.
        let drift = since.as_millis().div_ceil(1000) as u64;
        self.redis_ms + elapsed + drift
    }
}

/// Redis's time, in milliseconds rounded up, from a `TIME` answer.
pub(super) fn redis_ms(secs: u64, micros: u64) -> u64 {
    secs * 1000 + micros.div_ceil(1000)
}

pub(super) struct RedisClock {
    held: Mutex<Reading>,
}

impl RedisClock {
    /// From the first reading: Redis answered `redis_ms` to a `TIME` sent
    /// at `sent`.
    pub(super) fn new(sent: Instant, redis_ms: u64) -> RedisClock {
        RedisClock {
            held: Mutex::new(Reading { sent, redis_ms }),
        }
    }

    /// Redis's time at the node's moment `when` (unix ms), at most: a
    /// call's deadline when the node gives up at `when`.
    pub(super) fn deadline(&self, when: Instant) -> u64 {
        self.held.lock().bound(when)
    }

    /// A heartbeat's reading: Redis answered `redis_ms` to a `TIME` sent
    /// at `sent`, the answer arriving at `received`. It replaces the held
    /// one when it is tighter (then it is the better bound, whatever its
    /// round trip), or when its round trip was short (then it is loose by
    /// little, and it follows Redis's clock where that was set forward).
    pub(super) fn read(&self, sent: Instant, received: Instant, redis_ms: u64) {
        let mut held = self.held.lock();
        let reading = Reading { sent, redis_ms };
        if redis_ms <= held.bound(sent) || received.saturating_duration_since(sent) <= SHORT_TRIP {
            *held = reading;
        }
    }

    /// A function refused a call as late, at Redis's time `redis_ms`,
    /// while the node still waited for it (the call was sent at `sent`):
    /// Redis's clock is ahead of the held reading (it was set forward).
    /// This reading replaces it, whatever its round trip.
    pub(super) fn correct(&self, sent: Instant, redis_ms: u64) {
        *self.held.lock() = Reading { sent, redis_ms };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_deadline_bounds_redis_time_from_above() {
        let t0 = Instant::now();
        assert_eq!(redis_ms(1_000, 1), 1_000_001);
        assert_eq!(redis_ms(1_000, 999_001), 1_001_000);
        let clock = RedisClock::new(t0, 5_000);
        assert_eq!(clock.deadline(t0), 5_000);
        // 1.5 s later: the time since, and 2 ms for drift.
        assert_eq!(clock.deadline(t0 + 1500 * MS), 6_502);
        // A moment before the reading: the reading itself.
        assert_eq!(clock.deadline(t0.checked_sub(MS).unwrap_or(t0)), 5_000);
    }

    #[test]
    fn a_slow_reading_is_taken_only_when_tighter() {
        let t0 = Instant::now();
        let clock = RedisClock::new(t0, 5_000);
        let t1 = t0 + 1000 * MS;
        // Looser and slow (Redis answered 400 ms later): kept out.
        clock.read(t1, t1 + 400 * MS, 6_300);
        assert_eq!(clock.deadline(t1), 6_001);
        // Tighter, however slow: taken.
        clock.read(t1, t1 + 400 * MS, 5_999);
        assert_eq!(clock.deadline(t1), 5_999);
        // Looser but quick (Redis's clock was set forward): taken.
        clock.read(t1, t1 + 2 * MS, 9_000);
        assert_eq!(clock.deadline(t1), 9_000);
        // A late refusal moves it whatever the round trip.
        clock.correct(t1, 12_000);
        assert_eq!(clock.deadline(t1), 12_000);
    }
}
