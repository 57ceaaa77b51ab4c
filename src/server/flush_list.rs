//! The order connections with queued output are written in, and how many one
//! loop turn writes.
//!
//! Writing to a socket costs a few microseconds of kernel time whatever the
//! size, so a pass over a thousand readers takes milliseconds. If a turn
//! wrote every connection before polling again, a line arriving just after
//! the pass began would wait for the whole pass, and then for its own place
//! in the next one: up to two passes. Ending the turn after a slice of
//! connections lets the next turn read that line and queue it at once: the
//! connections still waiting in this pass take it with what they already
//! had, and only those already written go to the back. No reader then waits
//! more than one pass, and each is still written once per pass with all it
//! has, so batching is unchanged.
//!
//! The input budget follows passes, not turns (see `input`): what the chat
//! may queue between two writes of one reader must stay under its cap, and
//! a reader is written once per pass.

use std::collections::VecDeque;

/// Connections written per loop turn before the loop polls and reads again.
/// Small enough that new input is read every few hundred microseconds
/// during a long pass; large enough that the turn's fixed work (one
/// `epoll_wait`, timers, the fan-out of whatever arrived) stays a small
/// fraction of the writes.
pub const FLUSH_SLICE: usize = 64;

/// Keys in the order they got output; each at most once while it is live
/// (the caller keeps the "already listed" flag, on the connection).
#[derive(Default)]
pub struct FlushList {
    queue: VecDeque<usize>,
    /// Connections this turn may still write.
    allowance: usize,
    /// Entries left of the current pass: those listed when it began.
    pass_left: usize,
    /// This turn began a new pass.
    pass_began: bool,
}

impl FlushList {
    pub fn push(&mut self, key: usize) {
        self.queue.push_back(key);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A new loop turn: another slice may be written. When the last pass
    /// is done, a new one begins with what is listed now (an empty list
    /// makes every turn a pass of its own).
    pub fn start_turn(&mut self) {
        self.allowance = FLUSH_SLICE;
        self.pass_began = self.pass_left == 0;
        if self.pass_began {
            self.pass_left = self.queue.len();
        }
    }

    /// Whether this turn began a pass: every connection listed before it
    /// has been written since the previous one began.
    pub fn pass_began(&self) -> bool {
        self.pass_began
    }

    /// The next key to write this turn, skipping keys `live` rejects (their
    /// connection closed, or a later one reuses the key and is listed in its
    /// own place); `None` once the list is empty or the turn's slice is
    /// spent, the rest waiting for the next turn in the same order.
    pub fn next(&mut self, mut live: impl FnMut(usize) -> bool) -> Option<usize> {
        if self.allowance == 0 {
            return None;
        }
        while let Some(key) = self.queue.pop_front() {
            self.pass_left = self.pass_left.saturating_sub(1);
            if live(key) {
                self.allowance -= 1;
                return Some(key);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_turn(list: &mut FlushList) -> Vec<usize> {
        list.start_turn();
        std::iter::from_fn(|| list.next(|_| true)).collect()
    }

    #[test]
    fn a_turn_writes_one_slice_and_the_rest_waits_in_order() {
        let mut list = FlushList::default();
        let keys = 3 * FLUSH_SLICE + 5;
        for key in 0..keys {
            list.push(key);
        }
        let mut written = Vec::new();
        let mut turns = 0;
        while !list.is_empty() {
            let turn = drain_turn(&mut list);
            assert!(turn.len() <= FLUSH_SLICE);
            written.extend(turn);
            turns += 1;
        }
        assert_eq!(turns, 4);
        assert_eq!(written, (0..keys).collect::<Vec<_>>());
    }

    #[test]
    fn output_queued_mid_pass_goes_out_in_the_same_pass_for_those_not_yet_written() {
        let mut list = FlushList::default();
        for key in 0..2 * FLUSH_SLICE {
            list.push(key);
        }
        let first = drain_turn(&mut list);
        // A line arrives: everybody gets it. Those still listed keep their
        // place; those already written go to the back.
        for key in first {
            list.push(key);
        }
        let second = drain_turn(&mut list);
        assert_eq!(second, (FLUSH_SLICE..2 * FLUSH_SLICE).collect::<Vec<_>>());
        let third = drain_turn(&mut list);
        assert_eq!(third, (0..FLUSH_SLICE).collect::<Vec<_>>());
        assert!(list.is_empty());
    }

    #[test]
    fn rejected_keys_are_dropped_without_spending_the_slice() {
        let mut list = FlushList::default();
        for key in 0..FLUSH_SLICE + 10 {
            list.push(key);
        }
        list.start_turn();
        let live: Vec<usize> = std::iter::from_fn(|| list.next(|key| key % 2 == 0)).collect();
        assert_eq!(live.len(), (FLUSH_SLICE + 10).div_ceil(2));
        assert!(live.iter().all(|key| key % 2 == 0));
        assert!(list.is_empty());
    }

    #[test]
    fn a_pass_ends_when_everything_listed_at_its_start_is_written() {
        let mut list = FlushList::default();
        list.start_turn();
        assert!(list.pass_began(), "an empty list: every turn is a pass");
        list.start_turn();
        assert!(list.pass_began());
        for key in 0..FLUSH_SLICE + 1 {
            list.push(key);
        }
        let first = drain_turn(&mut list);
        assert!(list.pass_began());
        // Output for those written goes to the back, into the next pass.
        for key in first {
            list.push(key);
        }
        let second = drain_turn(&mut list);
        assert!(!list.pass_began(), "one key of the pass was left");
        assert_eq!(second[0], FLUSH_SLICE, "the pass's last key first");
        drain_turn(&mut list);
        assert!(list.pass_began());
    }

    #[test]
    fn nothing_is_written_before_the_first_turn_starts() {
        let mut list = FlushList::default();
        list.push(1);
        assert_eq!(list.next(|_| true), None);
        assert_eq!(drain_turn(&mut list), [1]);
    }
}
