//! Signals and the orderly shutdown.

use super::*;

impl Server {
    pub(super) fn on_signals(&mut self, now: Instant) {
        let received = self.signals.pending().count();
        if received == 0 {
            return;
        }
        if self.shutdown_started.is_some() || received > 1 {
            self.exit_now = true;
        } else {
            info!("signal received: shutting down");
            self.begin_shutdown(now);
        }
    }

    /// Stops accepting, tells everyone, and gives output `--shutdown-grace`
    /// to drain.
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(now);
        self.timers.schedule(
            now + self.config.shutdown_grace,
            Timer {
                kind: TimerKind::ShutdownGrace,
                key: 0,
                serial: 0,
            },
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.slab.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.conns.close_after_flush(key, CloseCause::Shutdown);
        }
        // Lines said this turn are ordinary output, under the usual cap;
        // only the shutdown notice itself must get through regardless.
        self.chat.end_turn(&mut self.conns);
        self.conns.ignore_cap = true;
        self.chat.on_shutdown(&mut self.conns);
    }

    pub(super) fn shutdown_finished(&mut self, now: Instant) -> bool {
        let Some(started) = self.shutdown_started else {
            return false;
        };
        if !self.conns.slab.is_empty() && !self.shutdown_expired {
            return false;
        }
        let unfinished = self.conns.slab.len();
        let unsent: usize = self
            .conns
            .slab
            .iter()
            .map(|(_, conn)| conn.out.pending())
            .sum();
        info!(
            "shutdown complete after {} ms: {} connections served, {} closed before their output drained ({} bytes unsent)",
            now.duration_since(started).as_millis(),
            self.accepted,
            unfinished,
            unsent
        );
        true
    }
}
