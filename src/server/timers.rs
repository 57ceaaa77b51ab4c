//! The one deadline structure behind `poll`'s timeout.
//!
//! A min-heap of deadlines, cancelled lazily: an entry names a connection by
//! slab key *and* the connection's serial, so an entry left behind by a
//! closed connection is recognised as stale and skipped when it comes due,
//! instead of being searched for and removed at close time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// A connection's session asked to be called back (idle, write stall,
    /// rate limit); it decides what, if anything, is due.
    Session,
    /// Accepting paused for lack of descriptors; try again.
    AcceptRetry,
}

/// A due timer. `key` and `serial` are meaningless for `AcceptRetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub kind: TimerKind,
    pub key: usize,
    pub serial: u64,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// How long `poll` may sleep before the next deadline.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// The next timer due at `now`, if any, with its deadline. The caller
    /// checks whether it is stale.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops entries that `is_live` rejects; keeps the heap from growing
    /// with stale entries under heavy churn.
    pub fn retain(&mut self, mut is_live: impl FnMut(&Timer) -> bool) {
        self.heap.retain(|Reverse((_, timer))| is_live(timer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(kind: TimerKind, key: usize) -> Timer {
        Timer {
            kind,
            key,
            serial: 1,
        }
    }

    #[test]
    fn timers_come_due_in_deadline_order() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(start + Duration::from_secs(3), timer(TimerKind::Session, 3));
        timers.schedule(start + Duration::from_secs(1), timer(TimerKind::Session, 1));
        timers.schedule(
            start + Duration::from_secs(2),
            timer(TimerKind::AcceptRetry, 2),
        );
        assert_eq!(timers.timeout(start), Some(Duration::from_secs(1)));
        assert_eq!(timers.pop_due(start), None);
        let later = start + Duration::from_secs(2);
        assert_eq!(timers.pop_due(later).map(|(_, t)| t.key), Some(1));
        assert_eq!(timers.pop_due(later).map(|(_, t)| t.key), Some(2));
        assert_eq!(timers.pop_due(later), None);
        assert_eq!(timers.timeout(later), Some(Duration::from_secs(1)));
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn an_empty_heap_lets_poll_sleep_forever() {
        assert_eq!(Timers::default().timeout(Instant::now()), None);
    }

    #[test]
    fn retain_drops_stale_entries() {
        let now = Instant::now();
        let mut timers = Timers::default();
        for key in 0..10 {
            timers.schedule(now, timer(TimerKind::Session, key));
        }
        timers.retain(|timer| timer.key % 2 == 0);
        assert_eq!(timers.len(), 5);
    }
}
