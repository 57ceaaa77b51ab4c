//! The slab of live connections, seen by the chat as its `Outbox`.

use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use super::connection::{CloseCause, Connection, Phase};
use crate::chat::{split_lines, ClientId, Outbox, ReceiptTag, Sent};

/// All connections, keyed by slab index (which is also the `ClientId` and,
/// plus an offset, the poll token), and the work queued on them this turn.
pub struct Connections {
    pub slab: Slab<Connection>,
    /// Connections with output queued this turn; flushed once at its end.
    pub flush_list: Vec<usize>,
    /// Connections to close at the end of this turn.
    pub close_list: Vec<usize>,
    max_outbuf: usize,
    /// Set during shutdown, so the shutdown notice reaches even a client
    /// whose queue is full.
    pub ignore_cap: bool,
    /// The current loop turn's time, for output-progress stamps.
    pub now: Instant,
    /// Bytes queued on all connections together.
    pub queued_bytes: usize,
    /// The most bytes any one connection has had queued.
    pub peak_queue: usize,
}

impl Connections {
    pub fn new(max_outbuf: usize) -> Self {
        Connections {
            slab: Slab::new(),
            flush_list: Vec::new(),
            close_list: Vec::new(),
            max_outbuf,
            ignore_cap: false,
            now: Instant::now(),
            queued_bytes: 0,
            peak_queue: 0,
        }
    }

    /// Queues `data` on one connection, honouring its cap, and keeps the
    /// byte accounting.
    fn enqueue(
        &mut self,
        key: usize,
        data: Bytes,
        receipt: Option<ReceiptTag>,
        ignore_cap: bool,
    ) -> Sent {
        let Some(conn) = self.slab.get_mut(key) else {
            return Sent::Skipped;
        };
        if conn.phase == Phase::Dead {
            return Sent::Skipped;
        }
        let was_empty = conn.out.is_empty();
        let len = data.len();
        if !conn.out.push(data, receipt, self.max_outbuf, ignore_cap) {
            return Sent::Skipped;
        }
        if was_empty {
            conn.last_output_progress = self.now;
        }
        self.queued_bytes += len;
        self.peak_queue = self.peak_queue.max(conn.out.pending());
        Self::mark_for_flush(&mut self.flush_list, key, conn);
        Sent::Queued
    }

    pub fn max_outbuf(&self) -> usize {
        self.max_outbuf
    }

    /// Queues raw bytes that are not a chat line (telnet replies).
    pub fn send_raw(&mut self, key: usize, data: Bytes) {
        self.enqueue(key, data, None, false);
    }

    pub fn schedule_flush(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            Self::mark_for_flush(&mut self.flush_list, key, conn);
        }
    }

    /// Ends a connection now: it is closed at the end of this turn.
    pub fn kill(&mut self, key: usize, cause: CloseCause) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.end(Phase::Dead, cause);
            self.close_list.push(key);
        }
    }

    /// Ends a connection once its output has drained.
    pub fn close_after_flush(&mut self, key: usize, cause: CloseCause) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.end(Phase::Closing, cause);
            Self::mark_for_flush(&mut self.flush_list, key, conn);
        }
    }

    fn mark_for_flush(flush_list: &mut Vec<usize>, key: usize, conn: &mut Connection) {
        if !conn.in_flush_list {
            conn.in_flush_list = true;
            flush_list.push(key);
        }
    }
}

impl Outbox for Connections {
    fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
        self.enqueue(to.0, line, receipt, self.ignore_cap)
    }

    fn send_lines(&mut self, to: ClientId, lines: Bytes) {
        let fits = self.slab.get(to.0).is_some_and(|conn| {
            self.ignore_cap || conn.out.has_room_for(lines.len(), self.max_outbuf)
        });
        if fits {
            self.enqueue(to.0, lines, None, self.ignore_cap);
            return;
        }
        // Too much for what is left under the cap: as many whole lines as
        // fit, each line that does not is counted as skipped. A line that
        // fits is copied: as a slice it would keep the whole chunk, and the
        // room's turn behind it, alive for a few bytes (see chat::batch).
        for line in split_lines(lines) {
            let fits = self
                .slab
                .get(to.0)
                .is_some_and(|conn| conn.out.has_room_for(line.len(), self.max_outbuf));
            let line = if fits {
                Bytes::copy_from_slice(&line)
            } else {
                line
            };
            self.enqueue(to.0, line, None, self.ignore_cap);
        }
    }

    fn close(&mut self, to: ClientId) {
        self.close_after_flush(to.0, CloseCause::ClosedByChat);
    }
}
