//! One client socket and everything the reactor keeps for it.

use std::net::SocketAddr;

use mio::net::TcpStream;

use super::out_queue::OutQueue;
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
    Reset,
    HttpRequest,
    Refused,
    ClosedByChat,
    Shutdown,
}

impl CloseCause {
    pub fn describe(self) -> &'static str {
        match self {
            CloseCause::Quit => "quit",
            CloseCause::HungUp => "hung up",
            CloseCause::Reset => "connection error",
            CloseCause::HttpRequest => "sent an HTTP request",
            CloseCause::Refused => "refused",
            CloseCause::ClosedByChat => "closed by the server",
            CloseCause::Shutdown => "server shutdown",
        }
    }
}

pub struct Connection {
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
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr, max_line: usize) -> Self {
        Connection {
            stream,
            peer,
            decoder: LineDecoder::new(max_line),
            out: OutQueue::default(),
            phase: Phase::Open,
            cause: None,
            read_ready: true,
            in_read_list: false,
            in_flush_list: false,
            wants_writable: false,
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
