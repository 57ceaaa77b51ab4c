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
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket took what it could; wait for writable readiness.
    Blocked,
}

/// Pending output of one connection.
///
/// Invariants: `pending` is the sum of the entries' lengths minus
/// `front_written`; `front_written` is less than the front entry's length
/// (a fully written entry is popped at once); an empty queue owns no heap
/// memory, because most connections are idle most of the time.
#[derive(Default)]
pub struct OutQueue {
    entries: VecDeque<Entry>,
    front_written: usize,
    pending: usize,
    /// Lines refused by `push` since the client was last told about them.
    skipped: u64,
}

impl OutQueue {
    /// Queues `data` unless that would take the queue past `cap` bytes; a
    /// refused line is counted as skipped. `force` bypasses the cap for the
    /// few lines that must arrive (the shutdown notice).
    pub fn push(
        &mut self,
        data: Bytes,
        receipt: Option<ReceiptTag>,
        cap: usize,
        force: bool,
    ) -> bool {
        if !force && !self.has_room_for(data.len(), cap) {
            self.skipped += 1;
            return false;
        }
        self.pending += data.len();
        self.entries.push_back(Entry { data, receipt });
        true
    }

    /// Whether `len` more bytes stay within `cap`.
    pub fn has_room_for(&self, len: usize, cap: usize) -> bool {
        self.pending + len <= cap
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
        while self.pending > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES_PER_WRITE];
            let mut count = 0;
            for (index, entry) in self.entries.iter().take(MAX_SLICES_PER_WRITE).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                slices[index] = IoSlice::new(&entry.data[skip..]);
                count += 1;
            }
            match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n, written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Flushed::Drained)
    }

    fn advance(&mut self, mut count: usize, written: &mut Vec<ReceiptTag>) {
        self.pending -= count;
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
            }
        }
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
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
    use super::*;

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
        let mut queue = OutQueue::default();
        for i in 0..10 {
            assert!(queue.push(Bytes::from(format!("line {i}\r\n")), None, 1000, false));
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
        let mut queue = OutQueue::default();
        queue.push(
            Bytes::from_static(b"abc\r\n"),
            Some(ReceiptTag(1)),
            100,
            false,
        );
        queue.push(
            Bytes::from_static(b"def\r\n"),
            Some(ReceiptTag(2)),
            100,
            false,
        );
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
        let mut queue = OutQueue::default();
        assert!(queue.push(Bytes::from_static(b"12345"), None, 8, false));
        assert!(!queue.push(Bytes::from_static(b"6789"), None, 8, false));
        assert!(queue.push(Bytes::from_static(b"abc"), None, 8, false));
        assert!(queue.push(Bytes::from_static(b"forced"), None, 8, true));
        assert_eq!(queue.skipped(), 1);
        assert_eq!(queue.take_skipped(), 1);
        assert_eq!(queue.skipped(), 0);
        assert_eq!(queue.pending(), 14);
    }

    #[test]
    fn discard_returns_unwritten_receipts() {
        let mut queue = OutQueue::default();
        queue.push(
            Bytes::from_static(b"a\r\n"),
            Some(ReceiptTag(7)),
            100,
            false,
        );
        queue.push(Bytes::from_static(b"b\r\n"), None, 100, false);
        queue.push(
            Bytes::from_static(b"c\r\n"),
            Some(ReceiptTag(9)),
            100,
            false,
        );
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
        let mut queue = OutQueue::default();
        for _ in 0..(MAX_SLICES_PER_WRITE * 3 + 5) {
            queue.push(Bytes::from_static(b"x\r\n"), None, usize::MAX, false);
        }
        let mut sink = trickle(usize::MAX);
        assert_eq!(
            queue.write_to(&mut sink, &mut Vec::new()).unwrap(),
            Flushed::Drained
        );
        assert_eq!(sink.taken.len(), (MAX_SLICES_PER_WRITE * 3 + 5) * 3);
        assert_eq!(sink.calls, 4);
    }
}
