//! The live connections, seen by the chat as its `Outbox`, and the work
//! queued on them within one loop turn: which to read, flush and close.
//!
//! The queued-bytes figure is kept here and only here: bytes enter through
//! `enqueue`, leave through `write` or `remove`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mio::net::TcpStream;
use slab::Slab;

use super::flush_list::FlushList;
use super::out_queue::{Flushed, OutQueue};
use super::session::{CloseCause, Phase, Session};
use super::skip_warning::SkipWarnings;
use super::socket_tuning::kernel_send_queue;
use crate::chat::{split_lines, ClientId, Close, Outbox, ReceiptTag, Sent};

pub struct Connection {
    /// Tells this connection apart from later ones that reuse its slab key,
    /// so timers left behind by a closed connection are recognised as stale.
    pub serial: u64,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub session: Session,
    out: OutQueue,
    /// Readiness not yet used up: edge-triggered polling will not report it
    /// again, so the reactor must come back on its own.
    pub read_ready: bool,
    in_read_list: bool,
    in_flush_list: bool,
    /// Spent this turn's write budget with output left: written again next
    /// turn (the socket is not full, so no readiness event will come).
    write_deferred: bool,
    /// WRITABLE is registered; only while output is stuck in the queue.
    pub wants_writable: bool,
    /// The earliest deadline a timer is scheduled for; a later deadline
    /// needs no new timer, as the earlier one re-arms when it fires.
    pub timer_at: Option<Instant>,
    /// Boxed on the first skip: most clients never have one, and every
    /// byte here is paid by every idle connection.
    pub skip_warnings: Option<Box<SkipWarnings>>,
}

impl Connection {
    /// On this turn's flush list: its flush will settle whether output is
    /// still pending.
    pub fn flush_pending(&self) -> bool {
        self.in_flush_list
    }

    pub fn new(
        serial: u64,
        stream: TcpStream,
        peer: SocketAddr,
        session: Session,
        max_outbuf: usize,
    ) -> Self {
        Connection {
            serial,
            stream,
            peer,
            session,
            out: OutQueue::new(max_outbuf),
            // Registration reports data that is already there.
            read_ready: false,
            in_read_list: false,
            in_flush_list: false,
            write_deferred: false,
            wants_writable: false,
            timer_at: None,
            skip_warnings: None,
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.pending()
    }
}

/// All connections, keyed by slab index (which is also the `ClientId`, and
/// the poll token's client number).
pub struct Connections {
    slab: Slab<Connection>,
    /// Connections whose readiness has not been used up.
    read_list: Vec<usize>,
    /// Connections with output queued, flushed in that order, a slice
    /// per turn.
    flush_list: FlushList,
    /// Connections that spent their write budget: flushed first next turn.
    deferred_flush: Vec<usize>,
    /// Connections to close at the end of this turn.
    close_list: Vec<usize>,
    /// Set during shutdown, so the shutdown notice reaches even a client
    /// whose queue is full.
    ignore_cap: bool,
    /// The current loop turn's time, for output-progress stamps.
    now: Instant,
    /// Bytes written to one connection per turn at most.
    write_budget: usize,
    /// Bytes queued on all connections together.
    queued_bytes: usize,
    /// The most bytes any one connection has had queued.
    peak_queue: usize,
    /// Line copies the clients' sockets took whole since start (a line to
    /// ten people is ten).
    lines_delivered: u64,
    /// Lines not queued because the client's queue was full.
    lines_skipped: u64,
    /// Bytes the kernel took from us, on all connections, since start.
    bytes_written: u64,
    /// Connections with skips not yet looked at for a warning.
    skip_list: Vec<usize>,
    /// The nickname each connection the chat has let go last chatted under,
    /// for its disconnect line. Kept here rather than on every connection:
    /// only the ones closing have one.
    departed_nicks: HashMap<usize, Box<str>>,
}

impl Connections {
    pub fn new(now: Instant, write_budget: usize) -> Self {
        Connections {
            slab: Slab::new(),
            read_list: Vec::new(),
            flush_list: FlushList::default(),
            deferred_flush: Vec::new(),
            close_list: Vec::new(),
            ignore_cap: false,
            now,
            write_budget,
            queued_bytes: 0,
            peak_queue: 0,
            lines_delivered: 0,
            lines_skipped: 0,
            bytes_written: 0,
            skip_list: Vec::new(),
            departed_nicks: HashMap::new(),
        }
    }

    pub fn start_turn(&mut self, now: Instant) {
        self.now = now;
        self.flush_list.start_turn();
        for key in std::mem::take(&mut self.deferred_flush) {
            if let Some(conn) = self.slab.get_mut(key) {
                conn.write_deferred = false;
                Self::mark_for_flush(&mut self.flush_list, key, conn);
            }
        }
    }

    /// Whether this turn began a new pass over the connections with output
    /// (see `flush_list`).
    pub fn flush_pass_began(&self) -> bool {
        self.flush_list.pass_began()
    }

    pub fn lines_delivered(&self) -> u64 {
        self.lines_delivered
    }

    pub fn lines_skipped(&self) -> u64 {
        self.lines_skipped
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Connections that had lines skipped since the last call.
    pub fn take_skip_list(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.skip_list)
    }

    /// The key the next `insert` will use, for registering its socket first.
    pub fn vacant_key(&self) -> usize {
        self.slab.vacant_key()
    }

    pub fn insert(&mut self, conn: Connection) -> usize {
        self.slab.insert(conn)
    }

    /// Takes a connection out for good, with its unsent bytes off the count.
    /// Takes a connection out, with the nickname it left under, if any.
    pub fn remove(&mut self, key: usize) -> Option<(Connection, Option<Box<str>>)> {
        let conn = self.slab.try_remove(key)?;
        self.queued_bytes -= conn.out.pending();
        Some((conn, self.departed_nicks.remove(&key)))
    }

    /// The chat let the client go under `nick`.
    pub fn note_departed(&mut self, key: usize, nick: String) {
        if self.slab.contains(key) {
            self.departed_nicks.insert(key, nick.into_boxed_str());
        }
    }

    pub fn get(&self, key: usize) -> Option<&Connection> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Connection> {
        self.slab.get_mut(key)
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(key, _)| key).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Connection)> {
        self.slab.iter()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn peak_queue(&self) -> usize {
        self.peak_queue
    }

    /// Whether any list holds work for this turn.
    pub fn has_work(&self) -> bool {
        !self.read_list.is_empty()
            || !self.flush_list.is_empty()
            || !self.deferred_flush.is_empty()
            || !self.close_list.is_empty()
    }

    /// From now on the cap no longer applies (the shutdown notice).
    pub fn ignore_cap(&mut self) {
        self.ignore_cap = true;
    }

    /// Puts a connection on the list to read this turn, once.
    pub fn schedule_read(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            if !conn.in_read_list {
                conn.in_read_list = true;
                self.read_list.push(key);
            }
        }
    }

    /// The connections to read this turn; each is off the list from now on.
    pub fn take_read_list(&mut self) -> Vec<usize> {
        let list = std::mem::take(&mut self.read_list);
        for &key in &list {
            if let Some(conn) = self.slab.get_mut(key) {
                conn.in_read_list = false;
            }
        }
        list
    }

    pub fn schedule_flush(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            Self::mark_for_flush(&mut self.flush_list, key, conn);
        }
    }

    /// The next connection to flush this turn; it is off the list from now
    /// on, so output queued for it later puts it back, behind the others.
    pub fn next_to_flush(&mut self) -> Option<usize> {
        let slab = &mut self.slab;
        self.flush_list.next(|key| {
            // A key whose connection closed while listed is stale; if a new
            // connection took the key, it is listed in its own place.
            slab.get_mut(key)
                .is_some_and(|conn| std::mem::replace(&mut conn.in_flush_list, false))
        })
    }

    pub fn schedule_close(&mut self, key: usize) {
        self.close_list.push(key);
    }

    pub fn take_close_list(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.close_list)
    }

    /// Writes what the socket takes of one connection's queue, within the
    /// per-turn write budget, appending the receipts of lines that left
    /// whole to `written`. A connection over budget is deferred to the next
    /// turn and not written again in this one.
    pub fn write(
        &mut self,
        key: usize,
        written: &mut Vec<ReceiptTag>,
    ) -> Option<io::Result<Flushed>> {
        let conn = self.slab.get_mut(key)?;
        if conn.write_deferred {
            return Some(Ok(Flushed::OverBudget));
        }
        let before = conn.out.pending();
        let result = conn.out.write_within(
            &mut conn.stream,
            written,
            &mut self.lines_delivered,
            self.write_budget,
        );
        let sent = before - conn.out.pending();
        self.queued_bytes -= sent;
        self.bytes_written += sent as u64;
        conn.session
            .output_written(sent, conn.out.is_empty(), self.now);
        match result {
            // The stall check compares later looks at the kernel's queue
            // with this one (see `Session::kernel_queue_seen`).
            Ok(Flushed::Blocked) if conn.session.wants_kernel_queue() => {
                if let Ok(queued) = kernel_send_queue(&conn.stream) {
                    conn.session.kernel_queue_seen(queued, self.now);
                }
            }
            Ok(Flushed::OverBudget) => {
                conn.write_deferred = true;
                self.deferred_flush.push(key);
            }
            _ => {}
        }
        Some(result)
    }

    /// Looks at the kernel's send queue for the session's stall check.
    pub fn look_at_kernel_queue(&mut self, key: usize) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        if let Ok(queued) = kernel_send_queue(&conn.stream) {
            conn.session.kernel_queue_seen(queued, self.now);
        }
    }

    /// Lines refused for a full queue since the client was last told, once
    /// the queue has drained enough for the notice to get through.
    pub fn take_skipped_to_report(&mut self, key: usize) -> Option<u64> {
        let conn = self.slab.get_mut(key)?;
        let ready = conn.session.phase() == Phase::Open
            && conn.out.skipped() > 0
            && conn.out.has_drained_below_half();
        ready.then(|| conn.out.take_skipped())
    }

    /// The receipts of lines that will now never be written.
    pub fn discard_output(&mut self, key: usize) -> Vec<ReceiptTag> {
        let Some(conn) = self.slab.get_mut(key) else {
            return Vec::new();
        };
        self.queued_bytes -= conn.out.pending();
        conn.out.discard()
    }

    /// Queues `data` on one connection, honouring its cap, and keeps the
    /// byte accounting. Whatever is refused is one line (a chunk of several
    /// is split first when it does not fit).
    fn enqueue(
        &mut self,
        key: usize,
        data: Bytes,
        lines: u32,
        receipt: Option<ReceiptTag>,
    ) -> Sent {
        let Some(conn) = self.slab.get_mut(key) else {
            return Sent::Skipped;
        };
        if conn.session.phase() == Phase::Dead {
            return Sent::Skipped;
        }
        let was_empty = conn.out.is_empty();
        let len = data.len();
        if !conn.out.push_lines(data, lines, receipt, self.ignore_cap) {
            self.lines_skipped += 1;
            if conn.skip_warnings.get_or_insert_default().skipped() {
                self.skip_list.push(key);
            }
            return Sent::Skipped;
        }
        conn.session.output_queued(was_empty, self.now);
        self.queued_bytes += len;
        self.peak_queue = self.peak_queue.max(conn.out.pending());
        Self::mark_for_flush(&mut self.flush_list, key, conn);
        Sent::Queued
    }

    /// Queues raw bytes that are not a chat line (telnet replies).
    pub fn send_raw(&mut self, key: usize, data: Bytes) {
        self.enqueue(key, data, 0, None);
    }

    /// Ends a connection now: it is closed at the end of this turn.
    pub fn kill(&mut self, key: usize, cause: CloseCause) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.session.end(Phase::Dead, cause);
            self.close_list.push(key);
        }
    }

    /// Ends a connection once its output has drained.
    pub fn close_after_flush(&mut self, key: usize, cause: CloseCause) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.session.end(Phase::Closing, cause);
            Self::mark_for_flush(&mut self.flush_list, key, conn);
        }
    }

    fn mark_for_flush(flush_list: &mut FlushList, key: usize, conn: &mut Connection) {
        if !conn.in_flush_list {
            conn.in_flush_list = true;
            flush_list.push(key);
        }
    }
}

impl Outbox for Connections {
    fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
        self.enqueue(to.0, line, 1, receipt)
    }

    fn send_lines(&mut self, to: ClientId, lines: Bytes, count: u32) {
        let fits = self
            .slab
            .get(to.0)
            .is_some_and(|conn| self.ignore_cap || conn.out.has_room_for(lines.len()));
        if fits {
            self.enqueue(to.0, lines, count, None);
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
                .is_some_and(|conn| conn.out.has_room_for(line.len()));
            let line = if fits {
                Bytes::copy_from_slice(&line)
            } else {
                line
            };
            self.enqueue(to.0, line, 1, None);
        }
    }

    fn close(&mut self, to: ClientId, why: Close) {
        self.close_after_flush(to.0, CloseCause::Chat(why));
    }

    fn hold_input(&mut self, to: ClientId) {
        if let Some(conn) = self.slab.get_mut(to.0) {
            conn.session.hold(true);
        }
    }

    fn release_input(&mut self, to: ClientId) {
        if let Some(conn) = self.slab.get_mut(to.0) {
            conn.session.hold(false);
            self.schedule_read(to.0);
        }
    }
}
#[cfg(test)]
mod tests {
    /// Every idle connection pays for this struct (the README promises at
    /// most about 520 bytes of RSS per idle connection, measured with
    /// `loadgen --idle`): state only some connections need (skip warnings,
    /// a departed nickname, refused telnet options) lives outside it or
    /// behind a box.
    #[test]
    fn a_connection_stays_small() {
        assert!(std::mem::size_of::<super::Connection>() <= 304);
    }
}
