//! Per-connection input rate limit: a token bucket kept as one instant.
//!
//! Rather than a token count plus a refill time, the bucket stores the
//! moment at which it would be full again ("theoretical arrival time", as in
//! GCRA). A line is allowed when taking one more token would not push that
//! moment more than a full bucket into the future. Same behaviour, one field,
//! no floating point.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Time one token takes to refill; `None` means unlimited.
    interval: Option<Duration>,
    /// How far ahead of now the full-again moment may run: a full burst.
    tolerance: Duration,
}

impl RateLimit {
    pub fn new(lines_per_second: u32, burst: u32) -> Self {
        if lines_per_second == 0 {
            return RateLimit {
                interval: None,
                tolerance: Duration::ZERO,
            };
        }
        let interval = Duration::from_secs(1) / lines_per_second;
        RateLimit {
            interval: Some(interval),
            tolerance: interval * burst.max(1),
        }
    }
}

/// One connection's bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// When the bucket will be full again; in the past means full now.
    full_at: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Self {
        Bucket { full_at: now }
    }

    /// Takes a token if one is there. Otherwise returns the instant when one
    /// will be.
    pub fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Instant> {
        let Some(interval) = limit.interval else {
            return Ok(());
        };
        let full_at = self.full_at.max(now) + interval;
        // A burst longer than the clock has run (`--burst` in the billions)
        // has no earliest instant: the token is there.
        if let Some(earliest) = full_at.checked_sub(limit.tolerance) {
            if earliest > now {
                return Err(earliest);
            }
        }
        self.full_at = full_at;
        Ok(())
    }

    /// When the next token comes, as `take` said when it refused one: the
    /// bucket is not changed by a refusal, so this needs no field of its
    /// own. `None` when the rate is unlimited or a token is there at any
    /// instant.
    pub fn next_token_at(&self, limit: &RateLimit) -> Option<Instant> {
        (self.full_at + limit.interval?).checked_sub(limit.tolerance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_the_rate() {
        let limit = RateLimit::new(10, 5);
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        for _ in 0..5 {
            assert_eq!(bucket.take(&limit, start), Ok(()));
        }
        let resume = bucket.take(&limit, start).unwrap_err();
        assert_eq!(resume, start + Duration::from_millis(100));
        assert_eq!(bucket.take(&limit, resume), Ok(()));
        assert!(bucket.take(&limit, resume).is_err());
    }

    #[test]
    fn a_quiet_client_gets_its_burst_back_but_no_more() {
        let limit = RateLimit::new(10, 3);
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        for _ in 0..3 {
            bucket.take(&limit, start).unwrap();
        }
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(&limit, later), Ok(()));
        }
        assert!(bucket.take(&limit, later).is_err());
    }

    #[test]
    fn sustained_rate_matches_the_limit() {
        let limit = RateLimit::new(20, 1);
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        let mut now = start;
        let mut taken = 0;
        while now < start + Duration::from_secs(10) {
            match bucket.take(&limit, now) {
                Ok(()) => taken += 1,
                Err(resume) => now = resume,
            }
        }
        assert!((200..=201).contains(&taken), "{taken}");
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let limit = RateLimit::new(0, 0);
        let now = Instant::now();
        let mut bucket = Bucket::new(now);
        for _ in 0..10_000 {
            assert_eq!(bucket.take(&limit, now), Ok(()));
        }
    }

    #[test]
    fn the_next_token_is_where_a_refusal_said() {
        let limit = RateLimit::new(10, 2);
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        assert_eq!(bucket.take(&limit, start), Ok(()));
        assert_eq!(bucket.take(&limit, start), Ok(()));
        let resume = bucket.take(&limit, start).unwrap_err();
        assert_eq!(bucket.next_token_at(&limit), Some(resume));
        assert_eq!(RateLimit::new(0, 0).interval, None);
        assert_eq!(
            Bucket::new(start).next_token_at(&RateLimit::new(0, 0)),
            None
        );
    }

    #[test]
    fn a_burst_longer_than_the_clock_has_run_never_panics() {
        let limit = RateLimit::new(1, u32::MAX);
        let start = Instant::now();
        let mut bucket = Bucket::new(start);
        for _ in 0..1000 {
            assert_eq!(bucket.take(&limit, start), Ok(()));
        }
        let _ = bucket.next_token_at(&limit);
    }
}
