//! Closing connections at the end of a loop turn.

use super::*;

impl Server {
    /// Ends a connection for `cause` and lets the chat tell the room why.
    /// `Dead` closes it at the end of this turn, whatever is queued;
    /// `Closing` once its output has drained.
    pub(super) fn end_connection(&mut self, key: usize, phase: Phase, cause: CloseCause) {
        if phase == Phase::Dead {
            self.conns.kill(key, cause);
        } else {
            self.conns.close_after_flush(key, cause);
        }
        self.chat
            .on_disconnect(&mut self.conns, ClientId(key), cause.leave_reason());
    }

    pub(super) fn close_connections(&mut self) {
        for key in std::mem::take(&mut self.conns.close_list) {
            let Some(conn) = self.conns.slab.get(key) else {
                continue;
            };
            let finished =
                conn.phase == Phase::Dead || (conn.phase == Phase::Closing && conn.out.is_empty());
            if !finished {
                continue;
            }
            let mut conn = self.conns.slab.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.conns.queued_bytes -= conn.out.pending();
            // A descriptor is free again: connections waiting in the backlog
            // raise no new event, so try accepting now.
            self.accept_paused = false;
            if conn.phase == Phase::Closing {
                close_gracefully(&mut conn.stream, &mut self.scratch);
            }
            let cause = conn.cause.unwrap_or(CloseCause::ClosedByChat);
            // Usually the chat let the client go when the close began; this
            // catches any path that did not, so no client outlives its socket.
            self.chat
                .on_disconnect(&mut self.conns, ClientId(key), cause.leave_reason());
            for tag in conn.out.discard() {
                self.chat.on_dropped(&mut self.conns, tag);
            }
            info!(
                "client {key} from {} disconnected: {}",
                conn.peer,
                cause.describe()
            );
        }
        self.prune_timers();
    }

    /// Under churn, timers of closed connections pile up until they come
    /// due (an idle timeout can be hours away); drop them once they
    /// outnumber the live ones.
    pub(super) fn prune_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.slab.len() + 1024 {
            return;
        }
        let slab = &self.conns.slab;
        self.timers.retain(|timer| match timer.kind {
            TimerKind::AcceptRetry | TimerKind::ShutdownGrace => true,
            _ => slab
                .get(timer.key)
                .is_some_and(|conn| conn.serial == timer.serial),
        });
    }
}

/// Sends FIN after the last byte, and reads what the client still sent, so
/// the close does not turn into a reset that could destroy output the client
/// has not read yet.
fn close_gracefully(stream: &mut TcpStream, scratch: &mut [u8]) {
    let _ = stream.shutdown(Shutdown::Write);
    for _ in 0..4 {
        match stream.read(scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}
