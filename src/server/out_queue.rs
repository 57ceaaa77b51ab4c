//! A connection's pending output: shared `Bytes` chunks written with
//! vectored writes, with receipts reported as their lines leave.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use crate::chat::ReceiptTag;

/// Chunks handed to one `write_vectored` call (Linux accepts up to 1024).
/// A busy room queues hundreds of lines per recipient per turn; a few writes
/// carry them all.
const MAX_SLICES_PER_WRITE: usize = 256;

struct Entry {
    data: Bytes,
    receipt: Option<ReceiptTag>,
    /// Whole server lines in `data`, credited once the entry is written.
    lines: u32,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket took what it could; wait for writable readiness.
    Blocked,
    /// The write budget was spent with output still queued and the socket
    /// not known to be full: write again on the next turn, as no readiness
    /// event will come for it.
    OverBudget,
}

/// Pending output of one connection.
///
/// Invariants: `pending` is the sum of the entries' lengths minus
/// `front_written`; `front_written` is less than the front entry's length
/// (a fully written entry is popped at once); an empty queue owns no heap
/// memory, because most connections are idle most of the time.
pub struct OutQueue {
    entries: VecDeque<Entry>,
    /// Bytes the queue may hold before lines are skipped.
    limit: usize,
    front_written: usize,
    pending: usize,
    /// Lines refused by `push` since the client was last told about them.
    skipped: u64,
}

impl OutQueue {
    /// An empty queue holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        OutQueue {
            entries: VecDeque::new(),
            limit,
            front_written: 0,
            pending: 0,
            skipped: 0,
        }
    }

    /// Queues one line unless that would take the queue past its limit; a
    /// refused line is counted as skipped. `force` bypasses the limit for
    /// the few lines that must arrive (the shutdown notice).
    pub fn push(&mut self, data: Bytes, receipt: Option<ReceiptTag>, force: bool) -> bool {
        self.push_lines(data, 1, receipt, force)
    }

    /// As `push`, for `data` holding `lines` whole lines (several for a
    /// room's turn, none for telnet negotiation bytes).
    pub fn push_lines(
        &mut self,
        data: Bytes,
        lines: u32,
        receipt: Option<ReceiptTag>,
        force: bool,
    ) -> bool {
        if !force && !self.has_room_for(data.len()) {
            self.skipped += 1;
            return false;
        }
        self.pending += data.len();
        self.entries.push_back(Entry {
            data,
            receipt,
            lines,
        });
        true
    }

    /// Whether `len` more bytes stay within the limit.
    pub fn has_room_for(&self, len: usize) -> bool {
        self.pending.saturating_add(len) <= self.limit
    }

    /// Whether the queue has drained far enough below its limit that the
    /// client can be told about skipped lines without the notice itself
    /// being skipped.
    pub fn has_drained_below_half(&self) -> bool {
        self.pending < self.limit / 2
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Takes the count of skipped lines, to be reported to the client.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Writes as much as `sink` takes, appending the receipt of every line
    /// that left whole to `written`. Errors other than `WouldBlock` and
    /// `Interrupted` are returned; the queue then stays as it was after the
    /// last successful write.
    pub fn write_to(
        &mut self,
        sink: &mut impl Write,
        written: &mut Vec<ReceiptTag>,
    ) -> io::Result<Flushed> {
        self.write_within(sink, written, &mut 0, usize::MAX)
    }

    /// As `write_to`, but stops once `budget` bytes have been written (the
    /// write that passes it is not cut short), and adds the lines of every
    /// entry the socket took whole to `lines_written`.
    pub fn write_within(
        &mut self,
        sink: &mut impl Write,
        written: &mut Vec<ReceiptTag>,
        lines_written: &mut u64,
        budget: usize,
    ) -> io::Result<Flushed> {
        let mut taken = 0usize;
        while self.pending > 0 {
            if taken >= budget {
                return Ok(Flushed::OverBudget);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES_PER_WRITE];
            let mut count = 0;
            for (index, entry) in self.entries.iter().take(MAX_SLICES_PER_WRITE).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                slices[index] = IoSlice::new(&entry.data[skip..]);
                count += 1;
            }
            match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    taken = taken.saturating_add(n);
                    *lines_written += self.advance(n, written);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Flushed::Drained)
    }

    /// Drops `count` written bytes from the front; returns the lines of the
    /// entries that left whole.
    fn advance(&mut self, mut count: usize, written: &mut Vec<ReceiptTag>) -> u64 {
        self.pending -= count;
        let mut lines = 0;
        while count > 0 {
            let Some(front) = self.entries.front() else {
                break;
            };
            let remaining = front.data.len() - self.front_written;
            if count < remaining {
                self.front_written += count;
                break;
            }
            count -= remaining;
            self.front_written = 0;
            if let Some(entry) = self.entries.pop_front() {
                written.extend(entry.receipt);
                lines += u64::from(entry.lines);
            }
        }
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
        lines
    }

    /// Empties the queue, returning the receipts of lines that will now never
    /// be written.
    pub fn discard(&mut self) -> Vec<ReceiptTag> {
        self.pending = 0;
        self.front_written = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|entry| entry.receipt)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 1 << 20;

    /// A socket stand-in that takes at most `budget` bytes, then blocks.
    struct Trickle {
        taken: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.budget - n);
                self.taken.extend_from_slice(&buf[..take]);
                n += take;
            }
            self.budget -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn trickle(budget: usize) -> Trickle {
        Trickle {
            taken: Vec::new(),
            budget,
            calls: 0,
        }
    }

    #[test]
    fn many_lines_leave_in_one_write() {
        let mut queue = OutQueue::new(LIMIT);
        for i in 0..10 {
            assert!(queue.push(Bytes::from(format!("line {i}\r\n")), None, false));
        }
        let mut sink = trickle(usize::MAX);
        assert_eq!(
            queue.write_to(&mut sink, &mut Vec::new()).unwrap(),
            Flushed::Drained
        );
        assert_eq!(sink.calls, 1);
        assert!(sink.taken.starts_with(b"line 0\r\nline 1\r\n"));
        assert!(queue.is_empty());
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_and_report_whole_lines_only() {
        let mut queue = OutQueue::new(LIMIT);
        queue.push(Bytes::from_static(b"abc\r\n"), Some(ReceiptTag(1)), false);
        queue.push(Bytes::from_static(b"def\r\n"), Some(ReceiptTag(2)), false);
        let mut written = Vec::new();
        let mut sink = trickle(7);
        assert_eq!(
            queue.write_to(&mut sink, &mut written).unwrap(),
            Flushed::Blocked
        );
        assert_eq!(written, vec![ReceiptTag(1)]);
        assert_eq!(queue.pending(), 3);
        sink.budget = 100;
        assert_eq!(
            queue.write_to(&mut sink, &mut written).unwrap(),
            Flushed::Drained
        );
        assert_eq!(written, vec![ReceiptTag(1), ReceiptTag(2)]);
        assert_eq!(sink.taken, b"abc\r\ndef\r\n");
    }

    #[test]
    fn the_cap_skips_and_counts_lines_but_force_gets_through() {
        let mut queue = OutQueue::new(8);
        assert!(queue.push(Bytes::from_static(b"12345"), None, false));
        assert!(!queue.push(Bytes::from_static(b"6789"), None, false));
        assert!(queue.push(Bytes::from_static(b"abc"), None, false));
        assert!(queue.push(Bytes::from_static(b"forced"), None, true));
        assert_eq!(queue.skipped(), 1);
        assert_eq!(queue.take_skipped(), 1);
        assert_eq!(queue.skipped(), 0);
        assert_eq!(queue.pending(), 14);
    }

    #[test]
    fn discard_returns_unwritten_receipts() {
        let mut queue = OutQueue::new(LIMIT);
        queue.push(Bytes::from_static(b"a\r\n"), Some(ReceiptTag(7)), false);
        queue.push(Bytes::from_static(b"b\r\n"), None, false);
        queue.push(Bytes::from_static(b"c\r\n"), Some(ReceiptTag(9)), false);
        let mut sink = trickle(2);
        let mut written = Vec::new();
        queue.write_to(&mut sink, &mut written).unwrap();
        assert!(
            written.is_empty(),
            "a line written in part is not delivered"
        );
        assert_eq!(queue.discard(), vec![ReceiptTag(7), ReceiptTag(9)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn more_lines_than_one_write_takes_are_all_written() {
        let mut queue = OutQueue::new(LIMIT);
        for _ in 0..(MAX_SLICES_PER_WRITE * 3 + 5) {
            queue.push(Bytes::from_static(b"x\r\n"), None, false);
        }
        let mut sink = trickle(usize::MAX);
        assert_eq!(
            queue.write_to(&mut sink, &mut Vec::new()).unwrap(),
            Flushed::Drained
        );
        assert_eq!(sink.taken.len(), (MAX_SLICES_PER_WRITE * 3 + 5) * 3);
        assert_eq!(sink.calls, 4);
    }

    #[test]
    fn a_write_budget_stops_between_writes_and_resumes_in_order() {
        let mut queue = OutQueue::new(LIMIT);
        for i in 0..(MAX_SLICES_PER_WRITE * 4) {
            queue.push(Bytes::from(format!("{i:06}\r\n")), None, false);
        }
        let total = queue.pending();
        let mut sink = trickle(usize::MAX);
        let mut written = Vec::new();
        // One write carries MAX_SLICES_PER_WRITE lines of 8 bytes.
        let per_write = MAX_SLICES_PER_WRITE * 8;
        let mut lines = 0;
        let flushed = queue.write_within(&mut sink, &mut written, &mut lines, per_write + 1);
        assert_eq!(flushed.unwrap(), Flushed::OverBudget);
        assert_eq!(sink.taken.len(), 2 * per_write);
        assert_eq!(lines, 2 * MAX_SLICES_PER_WRITE as u64);
        let flushed = queue.write_within(&mut sink, &mut written, &mut lines, usize::MAX);
        assert_eq!(flushed.unwrap(), Flushed::Drained);
        assert_eq!(lines, MAX_SLICES_PER_WRITE as u64 * 4);
        assert_eq!(sink.taken.len(), total);
        assert!(sink.taken.starts_with(b"000000\r\n000001\r\n"));
        assert!(sink
            .taken
            .ends_with(format!("{:06}\r\n", MAX_SLICES_PER_WRITE * 4 - 1).as_bytes()));
    }

    /// One step of the model test.
    #[derive(Debug, Clone)]
    enum Step {
        /// Queue this many bytes, with a receipt tag or not.
        Push { len: usize, tagged: bool },
        /// Let the socket take at most this many bytes, then block.
        Write(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1..300usize, any::<bool>()).prop_map(|(len, tagged)| Step::Push { len, tagged }),
            (0..700usize).prop_map(Step::Write),
        ]
    }

    proptest! {
        /// Against a plain byte vector: whatever the pushes and however the
        /// socket splits the writes, the bytes come out in order, the queue
        /// never holds more than its limit unless forced, and every tag of a
        /// queued line is reported exactly once, written or discarded.
        #[test]
        fn the_queue_matches_a_byte_vector_model(
            steps in proptest::collection::vec(step(), 0..60),
            limit in 1..2000usize,
        ) {
            let mut queue = OutQueue::new(limit);
            let mut model_pending: Vec<u8> = Vec::new();
            let mut model_out: Vec<u8> = Vec::new();
            let mut sink = trickle(0);
            let mut written = Vec::new();
            let mut queued_tags = Vec::new();
            let mut next_byte = 0u8;
            for (index, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Push { len, tagged } => {
                        let data: Vec<u8> = (0..len)
                            .map(|_| {
                                next_byte = next_byte.wrapping_add(1);
                                next_byte
                            })
                            .collect();
                        let tag = tagged.then_some(ReceiptTag(index));
                        let fits = model_pending.len() + len <= limit;
                        prop_assert_eq!(queue.push(Bytes::from(data.clone()), tag, false), fits);
                        if fits {
                            model_pending.extend_from_slice(&data);
                            queued_tags.extend(tag);
                        }
                    }
                    Step::Write(budget) => {
                        sink.budget = budget;
                        let before = sink.taken.len();
                        let flushed = queue.write_to(&mut sink, &mut written).unwrap();
                        let took = sink.taken.len() - before;
                        model_out.extend(model_pending.drain(..took));
                        let expected = if model_pending.is_empty() {
                            Flushed::Drained
                        } else {
                            Flushed::Blocked
                        };
                        prop_assert_eq!(flushed, expected);
                    }
                }
                prop_assert_eq!(queue.pending(), model_pending.len());
                prop_assert!(queue.pending() <= limit);
                prop_assert_eq!(&sink.taken, &model_out);
            }
            let mut reported = written.clone();
            reported.extend(queue.discard());
            reported.sort_by_key(|tag| tag.0);
            queued_tags.sort_by_key(|tag| tag.0);
            prop_assert_eq!(reported, queued_tags);
            prop_assert!(queue.is_empty());
        }
    }
}
