//! Signals and the orderly shutdown.
//!
//! `ShutdownState` is the policy, on a clock it is given: the first signal
//! starts an orderly shutdown with a grace period, a second one ends it at
//! once. The `Server` methods below do what it decides.

use std::time::{Duration, Instant};

use log::info;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::session::CloseCause;
use super::Server;
use crate::chat::Close;

/// The signals that ask for an orderly shutdown.
pub const SHUTDOWN_SIGNALS: [libc::c_int; 3] = [SIGINT, SIGTERM, SIGHUP];

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// What to do about signals just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    Nothing,
    /// Begin the orderly shutdown.
    Shutdown,
    /// A signal during the shutdown (or two at once): stop now.
    ExitNow,
}

#[derive(Debug)]
pub struct ShutdownState {
    grace: Duration,
    /// When the grace ends; set once the shutdown has begun.
    deadline: Option<Instant>,
    started: Option<Instant>,
    expired: bool,
}

impl ShutdownState {
    pub fn new(grace: Duration) -> Self {
        ShutdownState {
            grace,
            deadline: None,
            started: None,
            expired: false,
        }
    }

    pub fn on_signals(&self, count: usize) -> SignalAction {
        match count {
            0 => SignalAction::Nothing,
            1 if self.started.is_none() => SignalAction::Shutdown,
            _ => SignalAction::ExitNow,
        }
    }

    /// Starts the shutdown; false if it had already started.
    pub fn begin(&mut self, now: Instant) -> bool {
        if self.started.is_some() {
            return false;
        }
        self.started = Some(now);
        // A grace beyond the clock's range never ends on its own.
        self.deadline = now.checked_add(self.grace);
        true
    }

    pub fn started(&self) -> Option<Instant> {
        self.started
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| !self.expired)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|at| at <= now) {
            self.expired = true;
        }
    }

    /// Whether the server may stop, with `open` connections left.
    pub fn finished(&self, open: usize) -> bool {
        self.started.is_some() && (open == 0 || self.expired)
    }
}

impl Server {
    pub(super) fn on_signals(&mut self, now: Instant) {
        let received: Vec<libc::c_int> = self.signals.pending().collect();
        match self.shutdown.on_signals(received.len()) {
            SignalAction::Nothing => {}
            SignalAction::Shutdown => {
                info!("received {}, shutting down", signal_name(received[0]));
                self.begin_shutdown(now);
            }
            SignalAction::ExitNow => {
                let unsent: usize = self.conns.iter().map(|(_, conn)| conn.pending()).sum();
                let name = received.last().map_or("a signal", |&sig| signal_name(sig));
                info!(
                    "received {name} during shutdown: exiting at once, leaving {unsent} bytes unsent on {} connections",
                    self.conns.len()
                );
                self.exit_now = true;
            }
        }
    }

    /// Stops accepting, tells everyone, and gives output `--shutdown-grace`
    /// to drain.
    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        if !self.shutdown.begin(now) {
            return;
        }
        self.telemetry.notify(crate::systemd::STOPPING);
        self.acceptor.close(self.poll.registry());
        // Lines said this turn are ordinary output, under the usual cap;
        // only the shutdown notice itself must get through regardless.
        self.chat.end_turn(&mut self.conns);
        self.conns.ignore_cap();
        let departures = self.chat.peers().as_ref().map(|c| c.departures());
        self.chat.on_shutdown(&mut self.conns);
        if let (Some(cluster), Some(departures)) = (self.chat.peers_mut(), departures) {
            cluster.shutting_down(departures);
        }
        // The chat closed every client it knew; the rest were closing
        // already and keep their own cause.
        for key in self.conns.keys() {
            self.conns
                .close_after_flush(key, CloseCause::Chat(Close::Shutdown));
        }
    }

    pub(super) fn shutdown_finished(&mut self, now: Instant) -> bool {
        if !self.shutdown.finished(self.conns.len()) {
            return false;
        }
        let started = self.shutdown.started().unwrap_or(now);
        let unsent: usize = self.conns.iter().map(|(_, conn)| conn.pending()).sum();
        info!(
            "shutdown complete after {} ms: {} connections served, {} closed before their output drained ({} bytes unsent)",
            now.duration_since(started).as_millis(),
            self.acceptor.accepted(),
            self.conns.len(),
            unsent
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_ends_the_shutdown_exactly_on_time_with_clients_left() {
        let grace = Duration::from_secs(5);
        let start = Instant::now();
        let mut state = ShutdownState::new(grace);
        assert!(!state.finished(0), "not before it has begun");
        assert_eq!(state.poll_timeout(), None);
        assert!(state.begin(start));
        assert!(!state.begin(start + grace), "begins once");
        assert_eq!(state.poll_timeout(), Some(start + grace));
        state.handle_timeout(start + grace - Duration::from_millis(1));
        assert!(!state.finished(3));
        state.handle_timeout(start + grace);
        assert!(state.finished(3));
        assert_eq!(state.poll_timeout(), None);
    }

    #[test]
    fn a_drained_server_finishes_before_the_grace() {
        let start = Instant::now();
        let mut state = ShutdownState::new(Duration::from_secs(60));
        state.begin(start);
        assert!(!state.finished(1));
        assert!(state.finished(0));
    }

    #[test]
    fn a_second_signal_exits_at_once() {
        let mut state = ShutdownState::new(Duration::from_secs(5));
        assert_eq!(state.on_signals(0), SignalAction::Nothing);
        assert_eq!(state.on_signals(2), SignalAction::ExitNow);
        assert_eq!(state.on_signals(1), SignalAction::Shutdown);
        state.begin(Instant::now());
        assert_eq!(state.on_signals(1), SignalAction::ExitNow);
    }

    #[test]
    fn a_grace_beyond_the_clock_never_expires_and_does_not_panic() {
        let mut state = ShutdownState::new(Duration::MAX);
        let start = Instant::now();
        state.begin(start);
        assert_eq!(state.poll_timeout(), None);
        state.handle_timeout(start + Duration::from_secs(3600));
        assert!(!state.finished(1));
    }
}
