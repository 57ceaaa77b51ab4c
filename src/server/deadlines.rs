//! What happens when a timer comes due: idle and write-stall checks,
//! rate-limit resumption, accept retry, the end of the shutdown grace.

use super::*;

impl Server {
    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer.kind {
                TimerKind::ShutdownGrace => self.shutdown_expired = true,
                TimerKind::AcceptRetry => self.accept_paused = false,
                TimerKind::Idle => self.check_idle(timer, now),
                TimerKind::WriteStall => self.check_write_stall(timer, now),
                TimerKind::RateResume => {
                    if let Some(conn) = self.live_connection(timer) {
                        conn.rate_paused = false;
                        if !conn.in_read_list {
                            conn.in_read_list = true;
                            self.read_list.push(timer.key);
                        }
                    }
                }
            }
        }
    }

    /// The connection a timer was set for, unless it has closed since.
    pub(super) fn live_connection(&mut self, timer: Timer) -> Option<&mut Connection> {
        self.conns
            .slab
            .get_mut(timer.key)
            .filter(|conn| conn.serial == timer.serial && conn.phase != Phase::Dead)
    }

    pub(super) fn check_idle(&mut self, timer: Timer, now: Instant) {
        let idle_timeout = self.config.idle_timeout;
        let Some(conn) = self.live_connection(timer) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        let deadline = conn.last_input + idle_timeout;
        if deadline > now {
            self.timers.schedule(deadline, timer);
            return;
        }
        warn!(
            "client {} from {}: sent nothing for {} s, disconnecting",
            timer.key,
            conn.peer,
            idle_timeout.as_secs()
        );
        self.end_connection(timer.key, Phase::Closing, CloseCause::Idle);
    }

    pub(super) fn check_write_stall(&mut self, timer: Timer, now: Instant) {
        let write_timeout = self.config.write_timeout;
        let Some(conn) = self.live_connection(timer) else {
            return;
        };
        conn.stall_timer_armed = false;
        if conn.out.is_empty() {
            return;
        }
        let deadline = conn.last_output_progress + write_timeout;
        if deadline > now {
            conn.stall_timer_armed = true;
            self.timers.schedule(deadline, timer);
            return;
        }
        warn!(
            "client {} from {}: no output taken for {} s, disconnecting",
            timer.key,
            conn.peer,
            write_timeout.as_secs()
        );
        self.end_connection(timer.key, Phase::Dead, CloseCause::TooSlow);
    }
}
