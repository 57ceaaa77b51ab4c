//! The slab of live connections, seen by the chat as its `Outbox`.

use bytes::Bytes;
use slab::Slab;

use super::connection::{CloseCause, Connection, Phase};
use crate::chat::{ClientId, Outbox, ReceiptTag, Sent};

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
}

impl Connections {
    pub fn new(max_outbuf: usize) -> Self {
        Connections {
            slab: Slab::new(),
            flush_list: Vec::new(),
            close_list: Vec::new(),
            max_outbuf,
            ignore_cap: false,
        }
    }

    pub fn max_outbuf(&self) -> usize {
        self.max_outbuf
    }

    /// Queues raw bytes that are not a chat line (telnet replies).
    pub fn send_raw(&mut self, key: usize, data: Bytes) {
        if let Some(conn) = self.slab.get_mut(key) {
            if conn.phase != Phase::Dead && conn.out.push(data, None, self.max_outbuf, false) {
                Self::mark_for_flush(&mut self.flush_list, key, conn);
            }
        }
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
        let Some(conn) = self.slab.get_mut(to.0) else {
            return Sent::Skipped;
        };
        if conn.phase == Phase::Dead
            || !conn
                .out
                .push(line, receipt, self.max_outbuf, self.ignore_cap)
        {
            return Sent::Skipped;
        }
        Self::mark_for_flush(&mut self.flush_list, to.0, conn);
        Sent::Queued
    }

    fn close(&mut self, to: ClientId) {
        self.close_after_flush(to.0, CloseCause::ClosedByChat);
    }
}
