//! What the reactor tells the outside: the counters behind `/metrics` and
//! the stats line, the systemd notifications, and the log lines the chat
//! reports as events (renames, nicknames of those who left) and the
//! throttled skip warnings.
//!
//! Each counter is counted in one place, by the part that sees the event:
//! the acceptor (connections accepted), admission (refusals), closing
//! (disconnects), input (lines in), the connections (line copies queued,
//! lines skipped, bytes written), the chat (direct messages), and the loop
//! itself (turns and their duration). This module only gathers them.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::session::CloseCause;
use super::status_report::StatusReport;
use super::Server;
use crate::chat::{ChatEvent, ClientId, Close, Refusal};
use crate::metrics::{
    render, Counters, DisconnectCause, Gauges, Histogram, RefuseReason, Snapshot, StatsLine, Tally,
};
use crate::systemd::{self, Notifier};

/// The counters the reactor keeps itself, and the periodic reports.
pub struct Telemetry {
    pub refused: Tally<RefuseReason>,
    pub disconnects: Tally<DisconnectCause>,
    pub lines_received: u64,
    /// Work time of each loop turn, without the time blocked in `poll`.
    pub turns: Histogram,
    stats_line: Option<StatsLine>,
    notifier: Option<Notifier>,
    status: StatusReport,
}

impl Telemetry {
    pub fn new(stats_interval: Duration, now: Instant) -> Self {
        Telemetry {
            refused: Tally::default(),
            disconnects: Tally::default(),
            lines_received: 0,
            turns: Histogram::new(),
            stats_line: StatsLine::new(stats_interval, now),
            notifier: None,
            status: StatusReport::default(),
        }
    }

    pub fn set_notifier(&mut self, notifier: Notifier) {
        self.notifier = Some(notifier);
    }

    /// Sends a state to systemd, if it asked for notifications.
    pub fn notify(&self, state: &str) {
        if let Some(notifier) = &self.notifier {
            if let Err(err) = notifier.notify(state) {
                warn!("cannot notify systemd ({state}): {err}");
            }
        }
    }
}

pub fn refuse_reason(why: Refusal) -> RefuseReason {
    match why {
        Refusal::ServerFull => RefuseReason::ServerFull,
        Refusal::TooManyFromAddress => RefuseReason::TooManyFromAddress,
        Refusal::ShuttingDown => RefuseReason::ShuttingDown,
    }
}

/// The disconnect series a close cause counts in; `None` for refusals,
/// which are counted as such when they happen.
pub fn disconnect_cause(cause: Option<CloseCause>) -> Option<DisconnectCause> {
    Some(match cause {
        Some(CloseCause::Chat(Close::Refused(_))) => return None,
        Some(CloseCause::Chat(Close::Quit)) => DisconnectCause::Quit,
        Some(CloseCause::Chat(Close::HttpRequest)) => DisconnectCause::HttpRequest,
        Some(CloseCause::Chat(Close::Idle)) => DisconnectCause::Idle,
        Some(CloseCause::Chat(Close::Shutdown)) => DisconnectCause::Shutdown,
        Some(CloseCause::HungUp) => DisconnectCause::HungUp,
        Some(CloseCause::TooSlow) => DisconnectCause::TooSlow,
        Some(CloseCause::Reset) => DisconnectCause::Reset,
        None => DisconnectCause::ClosedByServer,
    })
}

impl Server {
    pub(super) fn counters(&self) -> Counters {
        Counters {
            connections_accepted: self.acceptor.accepted(),
            connections_refused: self.telemetry.refused,
            disconnects: self.telemetry.disconnects,
            lines_received: self.telemetry.lines_received,
            lines_delivered: self.conns.lines_delivered(),
            lines_skipped: self.conns.lines_skipped(),
            direct_messages: self.chat.direct_messages(),
            bytes_written: self.conns.bytes_written(),
        }
    }

    pub(super) fn gauges(&self) -> Gauges {
        let chat = self.chat.stats();
        Gauges {
            clients_chatting: chat.chatting as u64,
            clients_waiting: chat.waiting as u64,
            rooms: chat.rooms as u64,
            output_queued_bytes: self.conns.queued_bytes() as u64,
        }
    }

    /// Serves the metrics port's sockets for this turn.
    pub(super) fn serve_metrics(&mut self, now: Instant) {
        let due = self.metrics.as_ref().is_some_and(|endpoint| {
            endpoint.has_work() || endpoint.next_deadline().is_some_and(|at| at <= now)
        });
        if !due {
            return;
        }
        let (gauges, counters) = (self.gauges(), self.counters());
        let turns = &self.telemetry.turns;
        let Some(endpoint) = self.metrics.as_mut() else {
            return;
        };
        endpoint.serve(now, self.poll.registry(), || {
            render(&Snapshot {
                gauges,
                counters: &counters,
                loop_turns: turns,
            })
        });
    }

    /// Logs what the chat reported this turn, and keeps the nickname of
    /// each client that left for its disconnect line. Runs before closing,
    /// while every id still names the connection it was reported for.
    pub(super) fn log_chat_events(&mut self) {
        for event in self.chat.take_events() {
            match event {
                ChatEvent::Renamed { id, old, new } => info!("client {} {old} is now {new}", id.0),
                ChatEvent::Left { id, nick } => self.conns.note_departed(id.0, nick),
            }
        }
    }

    /// At most one warning per client per interval about lines skipped for
    /// it.
    pub(super) fn warn_about_skips(&mut self, now: Instant) {
        for key in self.conns.take_skip_list() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let Some(count) = conn
                .skip_warnings
                .as_mut()
                .and_then(|warnings| warnings.take_due(now))
            else {
                continue;
            };
            let peer = conn.peer;
            let nick = self.chat.nick(ClientId(key)).unwrap_or("(left)");
            warn!(
                "client {key} from {peer} ({nick}): {count} lines skipped, it reads too slowly (--max-outbuf)"
            );
        }
    }

    /// The end of a loop turn's work: its duration, the stats line and the
    /// systemd status when they are due.
    pub(super) fn finish_turn(&mut self, started: Instant) {
        let now = Instant::now();
        if self.telemetry.stats_line.is_some() {
            let (gauges, counters) = (self.gauges(), self.counters());
            if let Some(line) = self
                .telemetry
                .stats_line
                .as_mut()
                .and_then(|stats| stats.poll(now, &gauges, &counters))
            {
                info!("{line}");
            }
        }
        if self.telemetry.notifier.is_some() {
            let chat = self.chat.stats();
            if let Some(text) = self.telemetry.status.poll(now, chat.chatting, chat.waiting) {
                self.telemetry.notify(&systemd::status(&text));
            }
        }
        self.telemetry
            .turns
            .observe(now.saturating_duration_since(started));
    }

    /// The earliest of the reports' deadlines.
    pub(super) fn telemetry_deadline(&self) -> Option<Instant> {
        let stats = self.telemetry.stats_line.as_ref().map(StatsLine::deadline);
        let status = self.telemetry.notifier.as_ref().and_then(|_| {
            let chat = self.chat.stats();
            self.telemetry.status.deadline(chat.chatting, chat.waiting)
        });
        let metrics = self.metrics.as_ref().and_then(|m| m.next_deadline());
        [stats, status, metrics].into_iter().flatten().min()
    }
}
