//! Reading: draining a socket within its per-turn budget, and handing what
//! the session decodes to the chat.

use std::io::{self, Read};
use std::time::Instant;

use bytes::Bytes;
use log::debug;

use super::session::{CloseCause, Input, Phase};
use super::{Server, READ_BUDGET};
use crate::chat::ClientId;
use crate::line::Decoded;

impl Server {
    pub(super) fn read_connections(&mut self, now: Instant) {
        for key in self.conns.take_read_list() {
            self.read_connection(key, now);
            self.arm_timer(key);
        }
    }

    /// Reads and handles input from one connection until the socket is
    /// drained, the session takes no more, or the turn's budget is spent.
    fn read_connection(&mut self, key: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.handle_input(key, now) {
                return;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.read_ready {
                return;
            }
            if budget == 0 {
                self.conns.schedule_read(key);
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Text after the last line end is a line; a rate pause
                    // defers the hang-up to the next read, which sees EOF
                    // again. Output still queued is flushed: a client that
                    // half-closes (`nc` after end of input) still reads.
                    conn.session.input_ended();
                    if self.handle_input(key, now) {
                        self.end_connection(key, Phase::Closing, CloseCause::HungUp);
                    }
                    return;
                }
                Ok(n) => {
                    conn.session.received(&self.scratch[..n], now);
                    budget = budget.saturating_sub(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("client {key}: read failed: {err}");
                    self.end_connection(key, Phase::Dead, CloseCause::Reset);
                    return;
                }
            }
        }
    }

    /// Hands decoded input to the chat. Returns false once the connection
    /// takes no more input for now: closing, or paused by its rate limit
    /// (then the rest stays in the decoder, and the socket unread, so TCP
    /// pushes back).
    fn handle_input(&mut self, key: usize, now: Instant) -> bool {
        let id = ClientId(key);
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return false;
            };
            let event = match conn.session.next_input(&self.rules, now) {
                Input::Event(event) => event,
                Input::NeedMore => return true,
                Input::Paused | Input::Stopped => return false,
            };
            match event {
                Decoded::Line(line) => {
                    self.telemetry.lines_received += 1;
                    self.chat.on_line(&mut self.conns, id, &line);
                }
                Decoded::TooLong => self.chat.on_line_too_long(&mut self.conns, id),
                Decoded::HttpRequest => self.chat.on_http_request(&mut self.conns, id),
                Decoded::TelnetReply(reply) => {
                    self.conns.send_raw(key, Bytes::copy_from_slice(&reply));
                }
            }
        }
    }
}
