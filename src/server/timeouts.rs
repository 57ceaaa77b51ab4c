//! Deadlines: one timer per connection at the time its session asks for,
//! and what the reactor does when a session says a deadline has passed.

use std::time::Instant;

use log::{info, warn};

use super::session::{CloseCause, Expired, Phase};
use super::timers::{Timer, TimerKind};
use super::Server;
use crate::chat::ClientId;

impl Server {
    pub(super) fn fire_timers(&mut self, now: Instant) {
        self.shutdown.handle_timeout(now);
        while let Some((at, timer)) = self.timers.pop_due(now) {
            match timer.kind {
                TimerKind::AcceptRetry => self.acceptor.resume(),
                TimerKind::Session => self.session_timeout(at, timer, now),
            }
        }
    }

    /// Schedules a timer for the connection's next deadline, unless one is
    /// already due no later. Timers are not cancelled: one that fires early
    /// (the deadline moved) finds nothing due and re-arms.
    pub(super) fn arm_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // The flush arms it once it knows what is left: armed now, output
        // about to drain (a welcome, a reply) would leave a write-stall
        // timer in the heap for every connection until it fires.
        if conn.flush_pending() {
            return;
        }
        let Some(next) = conn.session.poll_timeout(&self.rules) else {
            return;
        };
        if conn.timer_at.is_some_and(|armed| armed <= next) {
            return;
        }
        conn.timer_at = Some(next);
        let timer = Timer {
            kind: TimerKind::Session,
            key,
            serial: conn.serial,
        };
        self.timers.schedule(next, timer);
    }

    fn session_timeout(&mut self, at: Instant, timer: Timer, now: Instant) {
        let Some(conn) = self.conns.get_mut(timer.key) else {
            return;
        };
        if conn.serial != timer.serial {
            return;
        }
        if conn.timer_at == Some(at) {
            conn.timer_at = None;
        }
        let expired = conn.session.handle_timeout(&self.rules, now);
        let key = timer.key;
        match expired {
            None => {}
            Some(Expired::RateResumed) => self.conns.schedule_read(key),
            Some(Expired::WriteStall) => self.check_write_stall(key, now),
            Some(Expired::Idle) => {
                let peer = conn.peer;
                let timeout = self.rules.idle_timeout.unwrap_or_default().as_secs();
                let id = ClientId(key);
                let nick = self.chat.nick(id).unwrap_or("(waiting)");
                info!("client {key} from {peer} ({nick}): sent nothing for {timeout} s, disconnecting as idle");
                self.chat.on_idle(&mut self.conns, id, timeout);
            }
        }
        self.arm_timer(key);
    }

    /// Pending output was not seen to move for the write timeout. Epoll
    /// says writable only once a third of the send buffer is free, so a
    /// slow reader may be taking bytes all along: try a write, look at the
    /// kernel's send queue, and let the session judge. A client that took
    /// nothing is dropped; one that drains keeps its place, and the write
    /// lets its skip notice through once its queue has room.
    fn check_write_stall(&mut self, key: usize, now: Instant) {
        let mut written = Vec::new();
        self.flush_connection(key, &mut written);
        for tag in written.drain(..) {
            self.chat.on_written(&mut self.conns, tag);
        }
        self.conns.look_at_kernel_queue(key);
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.session.phase() == Phase::Dead || !conn.session.is_stalled(&self.rules, now) {
            return;
        }
        warn!(
            "client {key} from {}: no output taken for {} s, disconnecting",
            conn.peer,
            self.rules.write_timeout.as_secs()
        );
        self.end_connection(key, Phase::Dead, CloseCause::TooSlow);
    }
}
