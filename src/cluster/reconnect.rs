//! When to try Redis again, and when to say so in the log.
//!
//! Sans-IO: `now` comes from the caller, so the policy is tested on a
//! virtual clock. No jitter: a handful of servers reconnecting to one Redis
//! is no thundering herd, and determinism keeps the tests and the logs
//! exact.

use std::time::{Duration, Instant};

/// Capped exponential backoff between connection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// Failures since the last success.
    failures: u32,
}

impl Backoff {
    /// Waits `first` after the first failure, doubling up to `cap`. A zero
    /// `first` is taken as 1 ms, so no setting makes a busy loop.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.max(Duration::from_millis(1));
        Backoff {
            first,
            cap: cap.max(first),
            failures: 0,
        }
    }

    /// The delays SPEC §4 asks for: quick to notice Redis is back (well
    /// within its 2 s), never a busy loop.
    pub fn for_redis() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// An attempt failed at `now` (or a working link was lost): returns
    /// when to try next.
    pub fn next_attempt(&mut self, now: Instant) -> Instant {
        let delay = self.delay();
        self.failures = self.failures.saturating_add(1);
        now + delay
    }

    /// The delay the next failure will get.
    pub fn delay(&self) -> Duration {
        // 2^failures overflows nothing: it stops growing once past the cap.
        let shift = self.failures.min(31);
        self.first
            .checked_mul(1u32 << shift)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The link is up again: the next loss starts from the first delay.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// At most one warning per interval; the ones held back are counted and
/// reported with the next warning that goes out.
#[derive(Debug, Clone)]
pub struct WarnThrottle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnThrottle {
    pub fn new(interval: Duration) -> WarnThrottle {
        WarnThrottle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// One warning per 10 s, as SPEC §4 allows.
    pub fn for_redis() -> WarnThrottle {
        WarnThrottle::new(Duration::from_secs(10))
    }

    /// `Some(n)` when a warning may be logged now, `n` being how many were
    /// held back since the last one; `None` when this one is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// After recovery the next trouble is news: let its first warning out.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap_and_restart_after_success() {
        let start = Instant::now();
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let at = backoff.next_attempt(now);
            delays.push(at - now);
            now = at;
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000, 1000].map(ms).to_vec()
        );
        assert_eq!(backoff.failures(), 7);
        backoff.succeeded();
        assert_eq!(backoff.next_attempt(now) - now, ms(100));
    }

    #[test]
    fn never_a_busy_loop_and_never_overflows() {
        let now = Instant::now();
        let mut backoff = Backoff::new(ms(0), ms(0));
        assert_eq!(backoff.next_attempt(now), now + ms(1));
        let mut backoff = Backoff::new(ms(100), Duration::from_secs(3600));
        for _ in 0..1000 {
            backoff.next_attempt(now);
        }
        assert_eq!(backoff.delay(), Duration::from_secs(3600));
        let redis = Backoff::for_redis();
        assert!(redis.delay() >= ms(50));
    }

    #[test]
    fn redis_policy_notices_a_return_within_a_second() {
        let mut backoff = Backoff::for_redis();
        let mut now = Instant::now();
        for _ in 0..100 {
            let at = backoff.next_attempt(now);
            assert!(at - now <= Duration::from_secs(1));
            assert!(at > now);
            now = at;
        }
    }

    #[test]
    fn one_warning_per_interval_with_the_count_held_back() {
        let start = Instant::now();
        let mut throttle = WarnThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.allow(start), Some(0));
        for s in 1..10 {
            assert_eq!(throttle.allow(start + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.allow(start + ms(9_999)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(10)), Some(10));
        assert_eq!(throttle.allow(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn reset_lets_the_next_warning_out_at_once() {
        let start = Instant::now();
        let mut throttle = WarnThrottle::for_redis();
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start + ms(1)), None);
        throttle.reset();
        assert_eq!(throttle.allow(start + ms(2)), Some(0));
    }
}
