//! Writing: flushing a slice of the connections with output each turn, poll
//! interest for queues that cannot drain, receipts and skip notices.

use log::{debug, warn};
use mio::Interest;

use super::out_queue::Flushed;
use super::session::{CloseCause, Phase};
use super::{Server, Source};
use crate::chat::{ClientId, ReceiptTag};

impl Server {
    /// Flushes this turn's slice of the flush list (see `flush_list`); the
    /// rest keeps its order for the next turns, which start at once.
    ///
    /// Flushing reports receipts and skip counts to the chat, which answers
    /// by queueing notices, and those put their connection back on the flush
    /// list, behind the others. That ends: what the chat queues from
    /// `on_written`, `on_lines_skipped` and `on_disconnect` carries no
    /// receipt tag (notices, leave lines, a welcome), so writing it reports
    /// nothing further.
    pub(super) fn flush_connections(&mut self) {
        let mut written = Vec::new();
        while let Some(key) = self.conns.next_to_flush() {
            self.flush_connection(key, &mut written);
            for tag in written.drain(..) {
                self.chat.on_written(&mut self.conns, tag);
            }
            self.arm_timer(key);
        }
    }

    /// Writes what one connection's socket takes, within the per-turn write
    /// budget; sets poll interest, reports skipped lines, and closes a
    /// closing connection once drained.
    pub(super) fn flush_connection(&mut self, key: usize, written: &mut Vec<ReceiptTag>) {
        let phase = match self.conns.get(key) {
            Some(conn) => conn.session.phase(),
            None => return,
        };
        if phase == Phase::Dead {
            return;
        }
        let flushed = match self.conns.write(key, written) {
            None => return,
            Some(Ok(flushed)) => flushed,
            Some(Err(err)) => {
                debug!("client {key}: write failed: {err}");
                self.end_connection(key, Phase::Dead, CloseCause::Reset);
                return;
            }
        };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Over budget, the socket is not known to be full: the connection is
        // written again next turn whatever its interest.
        let wants_writable = match flushed {
            Flushed::Drained => false,
            Flushed::Blocked => true,
            Flushed::OverBudget => conn.wants_writable,
        };
        if wants_writable != conn.wants_writable {
            let interest = if wants_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Source::client_token(key);
            if let Err(err) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
            {
                warn!("client {key}: cannot change poll interest: {err}");
                self.end_connection(key, Phase::Dead, CloseCause::Reset);
                return;
            }
            conn.wants_writable = wants_writable;
        }
        if flushed == Flushed::Drained && phase == Phase::Closing {
            self.conns.schedule_close(key);
        } else if let Some(skipped) = self.conns.take_skipped_to_report(key) {
            self.chat
                .on_lines_skipped(&mut self.conns, ClientId(key), skipped);
        }
    }
}
