//! One client socket and everything the reactor keeps for it.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::out_queue::OutQueue;
use super::rate::Bucket;
use crate::chat::LeaveReason;
use crate::line::LineDecoder;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading input and taking output.
    Open,
    /// No more input is taken; close once the output has drained.
    Closing,
    /// Close at the end of this loop turn, whatever is still queued.
    Dead,
}

/// Why a connection ended, for the disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    Quit,
    HungUp,
    TooSlow,
    Idle,
    Reset,
    HttpRequest,
    Refused,
    ClosedByChat,
    Shutdown,
}

impl CloseCause {
    /// What the chat tells the room about a client that went this way.
    pub fn leave_reason(self) -> LeaveReason {
        match self {
            CloseCause::TooSlow => LeaveReason::TooSlow,
            CloseCause::Idle => LeaveReason::Idle,
            _ => LeaveReason::Hangup,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            CloseCause::Quit => "quit",
            CloseCause::HungUp => "hung up",
            CloseCause::TooSlow => "too slow: took no output for the write timeout",
            CloseCause::Idle => "idle",
            CloseCause::Reset => "connection error",
            CloseCause::HttpRequest => "sent an HTTP request",
            CloseCause::Refused => "refused",
            CloseCause::ClosedByChat => "closed by the server",
            CloseCause::Shutdown => "server shutdown",
        }
    }
}

pub struct Connection {
    /// Tells this connection apart from later ones that reuse its slab key,
    /// so timers left behind by a closed connection are recognised as stale.
    pub serial: u64,
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub decoder: LineDecoder,
    pub out: OutQueue,
    pub phase: Phase,
    pub cause: Option<CloseCause>,
    /// Readiness not yet used up: edge-triggered polling will not report it
    /// again, so the reactor must come back on its own.
    pub read_ready: bool,
    /// Queued in the reactor's list of connections to read this turn.
    pub in_read_list: bool,
    /// Queued in the reactor's list of connections to flush this turn.
    pub in_flush_list: bool,
    /// WRITABLE is registered; only while output is stuck in the queue.
    pub wants_writable: bool,
    pub bucket: Bucket,
    /// Input stops being taken until the rate timer fires.
    pub rate_paused: bool,
    pub last_input: Instant,
    /// When the output queue last moved: became non-empty, or the socket
    /// took bytes from it. Drives the write timeout.
    pub last_output_progress: Instant,
    /// A write-stall timer is scheduled for this connection.
    pub stall_timer_armed: bool,
}

impl Connection {
    pub fn new(
        serial: u64,
        stream: TcpStream,
        peer: SocketAddr,
        max_line: usize,
        now: Instant,
    ) -> Self {
        Connection {
            serial,
            stream,
            peer,
            decoder: LineDecoder::new(max_line),
            out: OutQueue::default(),
            phase: Phase::Open,
            cause: None,
            // Registration reports data that is already there.
            read_ready: false,
            in_read_list: false,
            in_flush_list: false,
            wants_writable: false,
            bucket: Bucket::new(now),
            rate_paused: false,
            last_input: now,
            last_output_progress: now,
            stall_timer_armed: false,
        }
    }

    /// Moves towards closing; never back towards open, and the first cause
    /// given is the one logged.
    pub fn end(&mut self, phase: Phase, cause: CloseCause) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        if self.phase == Phase::Open || phase == Phase::Dead {
            self.phase = phase;
        }
    }
}
