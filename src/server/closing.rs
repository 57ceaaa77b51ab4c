//! Ending connections: telling the chat, and closing sockets at the end of
//! a loop turn.

use std::io::Read;
use std::net::Shutdown;

use log::info;
use mio::net::TcpStream;

use super::session::{CloseCause, Phase};
use super::timers::TimerKind;
use super::{telemetry, Server};
use crate::chat::{ClientId, LeaveReason};

impl Server {
    /// Ends a connection for a reason the reactor saw (the chat gives its
    /// own reasons through `Outbox::close`), and lets the chat tell the
    /// room. `Dead` closes it at the end of this turn, whatever is queued;
    /// `Closing` once its output has drained.
    pub(super) fn end_connection(&mut self, key: usize, phase: Phase, cause: CloseCause) {
        if phase == Phase::Dead {
            self.conns.kill(key, cause);
        } else {
            self.conns.close_after_flush(key, cause);
        }
        let reason = match cause {
            CloseCause::TooSlow => LeaveReason::TooSlow,
            _ => LeaveReason::Hangup,
        };
        self.chat
            .on_disconnect(&mut self.conns, ClientId(key), reason);
    }

    pub(super) fn close_connections(&mut self) {
        for key in self.conns.take_close_list() {
            let finished = self.conns.get(key).is_some_and(|conn| {
                let phase = conn.session.phase();
                phase == Phase::Dead || (phase == Phase::Closing && conn.pending() == 0)
            });
            if !finished {
                continue;
            }
            // The chat has let the client go when the close began (every
            // path to here ends through the chat or `end_connection`).
            for tag in self.conns.discard_output(key) {
                self.chat.on_dropped(&mut self.conns, tag);
            }
            let Some((mut conn, nick)) = self.conns.remove(key) else {
                continue;
            };
            let _ = self.poll.registry().deregister(&mut conn.stream);
            // A descriptor is free again: connections waiting in the backlog
            // raise no new event, so try accepting now.
            self.acceptor.resume();
            if conn.session.phase() == Phase::Closing {
                close_gracefully(&mut conn.stream, &mut self.scratch);
            }
            if let Some(counted) = telemetry::disconnect_cause(conn.session.cause()) {
                self.telemetry.disconnects.add(counted);
            }
            let cause = conn
                .session
                .cause()
                .map_or_else(|| "closed".to_string(), CloseCause::describe);
            match nick {
                Some(nick) => info!(
                    "client {key} from {} ({nick}) disconnected: {cause}",
                    conn.peer
                ),
                None => info!("client {key} from {} disconnected: {cause}", conn.peer),
            }
        }
        self.prune_timers();
    }

    /// Under churn, timers of closed connections pile up until they come
    /// due (an idle timeout can be hours away); drop them once they
    /// outnumber the live ones.
    fn prune_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.len() + 1024 {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|timer| match timer.kind {
            TimerKind::AcceptRetry => true,
            TimerKind::Session => conns
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
